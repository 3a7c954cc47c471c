-------------------------------------------------------------------------------
-- The C engine after issue 11 (cancel_milestone).
--
-- 20_cancel_milestone.sql defines deliver, accept and cancel_milestone in
-- PL/pgSQL (the final delivery is that of the last milestone not
-- cancelled).  The C engine (src/actions.c) has the same behaviour; this
-- file, which runs after it, puts the C functions back in their place, so
-- that these actions too declare their writes to the commit check.  (Kept
-- apart from 10_engine.sql only because it must run after file 20; the
-- PL/pgSQL bodies above become dead code.)  SECURITY DEFINER with a pinned
-- search_path like every action; CREATE OR REPLACE keeps the privileges.
-------------------------------------------------------------------------------

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

-- EXECUTE stays granted to support only (20_cancel_milestone.sql).
CREATE OR REPLACE FUNCTION @extschema@.cancel_milestone(order_id bigint, "position" integer, agent text, reason text,
                                                       note text DEFAULT NULL, idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status
AS 'MODULE_PATHNAME', 'milestones_cancel_milestone'
LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.cancel_milestone(bigint, integer, text, text, text, text) IS
    'Support: cancels one milestone of an active order for a listed reason; a pending one is never charged, the running one is refunded and the next one starts (or the order ends as cancelled). The order goes on.';
