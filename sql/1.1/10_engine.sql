-------------------------------------------------------------------------------
-- The order engine in C (issue 10).
--
-- Every order action is a C function of the module (src/actions.c): the
-- same signature, results, SQLSTATEs, messages, DETAILs and HINTs as the
-- 1.0 PL/pgSQL functions they replace, with SPI plans prepared once per
-- backend.  The actions declare the row writes they make to the commit
-- check (src/check.c), which then passes an order written only by them
-- without a query; any other write to an order is checked in full with
-- _order_problems() at commit, as in 1.0.  The actions send no NOTIFY.
--
-- The 1.0 PL/pgSQL helpers these functions replace (_lock_order, _start,
-- _post, _settle, _complete, _event, _idem_claim, ...) are dropped at the
-- end, in 90_drop_1.0_helpers.sql.
--
-- Every API function is SECURITY DEFINER because callers hold no privilege
-- on the tables, and pins search_path so that a caller's schemas cannot
-- replace what it uses (the C code qualifies every name as well).
-- CREATE OR REPLACE keeps each function's privileges.
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION @extschema@.create_offer(seller_id bigint, buyer_id bigint, category text, milestones jsonb,
                                                   revisions integer DEFAULT 0, currency text DEFAULT 'USD',
                                                   idempotency_key text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'milestones_create_offer'
LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.create_offer(bigint, bigint, text, jsonb, integer, text, text) IS
    'Seller: offers a milestone order; milestones is [{"name","days","amount"}, ...], revisions NULL = unlimited. Returns the order id.';

CREATE OR REPLACE FUNCTION @extschema@.withdraw_offer(order_id bigint, seller_id bigint, idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status
AS 'MODULE_PATHNAME', 'milestones_withdraw_offer'
LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.withdraw_offer(bigint, bigint, text) IS 'Seller: withdraws an offer that was not placed.';

CREATE OR REPLACE FUNCTION @extschema@.decline_offer(order_id bigint, buyer_id bigint, idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status
AS 'MODULE_PATHNAME', 'milestones_decline_offer'
LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.decline_offer(bigint, bigint, text) IS 'Buyer: declines an offer instead of placing it.';

CREATE OR REPLACE FUNCTION @extschema@.place_order(order_id bigint, buyer_id bigint, idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status
AS 'MODULE_PATHNAME', 'milestones_place_order'
LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.place_order(bigint, bigint, text) IS
    'Buyer: places the offered order; milestone 1 is charged and starts.';

CREATE OR REPLACE FUNCTION @extschema@.deliver(order_id bigint, seller_id bigint, note text DEFAULT NULL,
                                              idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status
AS 'MODULE_PATHNAME', 'milestones_deliver'
LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.deliver(bigint, bigint, text, text) IS
    'Seller: delivers the milestone in progress (the last one not cancelled is the final delivery); the buyer''s response window opens.';

CREATE OR REPLACE FUNCTION @extschema@.accept(order_id bigint, buyer_id bigint, idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status
AS 'MODULE_PATHNAME', 'milestones_accept'
LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.accept(bigint, bigint, text) IS
    'Buyer: accepts the delivered milestone; the next one not cancelled is charged and starts, or the order finishes and the seller is paid.';

CREATE OR REPLACE FUNCTION @extschema@.request_revision(order_id bigint, buyer_id bigint, note text DEFAULT NULL,
                                                       idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status
AS 'MODULE_PATHNAME', 'milestones_request_revision'
LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.request_revision(bigint, bigint, text, text) IS
    'Buyer: asks for a revision of the delivered milestone, using one of the order''s revisions.';

CREATE OR REPLACE FUNCTION @extschema@.stop(order_id bigint, buyer_id bigint, idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status
AS 'MODULE_PATHNAME', 'milestones_stop'
LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.stop(bigint, bigint, text) IS
    'Buyer: stops the order after a delivery; the delivered milestone is paid, later ones skipped. Cannot be resumed.';

-- EXECUTE is granted to support only, so others get 42501 from the
-- privilege check itself.
CREATE OR REPLACE FUNCTION @extschema@.cancel(order_id bigint, agent text, reason text, note text DEFAULT NULL,
                                             idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status
AS 'MODULE_PATHNAME', 'milestones_cancel'
LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.cancel(bigint, text, text, text, text) IS
    'Support: cancels an offered or active order for a listed reason; the running milestone is refunded, completed ones are paid.';

-- Owner only and not SECURITY DEFINER, as in 1.0: an as_of chosen by a
-- caller could expire orders early.
CREATE OR REPLACE FUNCTION @extschema@.expire_overdue(as_of timestamptz DEFAULT @extschema@.now(),
                                                     batch integer DEFAULT 1000)
RETURNS integer
AS 'MODULE_PATHNAME', 'milestones_expire_overdue'
LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.expire_overdue(timestamptz, integer) IS
    'Owner/pg_cron: completes as expired up to batch orders whose response window closed at or before as_of (completed_at = the deadline). Returns how many.';

COMMENT ON FUNCTION @extschema@._check_order() IS
    'Deferred constraint trigger: at commit, checks each touched order: from the writes the guard saw when only the engine wrote it, else with _order_problems().';
