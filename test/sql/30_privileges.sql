-- test/sql/30_privileges.sql - who may do what (SPEC section 7, issue 5).
--
-- Pins, for PUBLIC, a plain login role and one login member of each
-- milestones role, the EXECUTE privilege on every function of the
-- extension and the privileges on every table, view and sequence; that
-- the API is SECURITY DEFINER with a pinned search_path; and, by trying,
-- that no role but the owner writes a table.
BEGIN;
\ir ../fixtures/setup.psql

CREATE ROLE ms_t_login LOGIN;
CREATE ROLE ms_t_app LOGIN IN ROLE milestones_app;
CREATE ROLE ms_t_support LOGIN IN ROLE milestones_support;
CREATE ROLE ms_t_reader LOGIN IN ROLE milestones_reader;
CREATE ROLE ms_t_payments LOGIN IN ROLE milestones_payments;

-- The expected grants, written out (not read from the catalog).
CREATE TEMP TABLE want_exec (fn text, roles text[]);
INSERT INTO want_exec VALUES
  ('create_offer',            '{ms_t_app,ms_t_support}'),
  ('withdraw_offer',          '{ms_t_app,ms_t_support}'),
  ('decline_offer',           '{ms_t_app,ms_t_support}'),
  ('place_order',             '{ms_t_app,ms_t_support}'),
  ('deliver',                 '{ms_t_app,ms_t_support}'),
  ('accept',                  '{ms_t_app,ms_t_support}'),
  ('request_revision',        '{ms_t_app,ms_t_support}'),
  ('stop',                    '{ms_t_app,ms_t_support}'),
  ('payout',                  '{ms_t_app,ms_t_support}'),
  ('cancel',                  '{ms_t_support}'),
  ('cancel_milestone',        '{ms_t_support}'),
  ('set_seller_eligibility',  '{ms_t_support}'),
  ('set_category_eligibility','{ms_t_support}'),
  ('set_cancellation_reason', '{ms_t_support}'),
  ('check_invariants',        '{ms_t_support}'),
  ('now',                     '{ms_t_app,ms_t_support,ms_t_reader}'),
  ('order_status',            '{ms_t_app,ms_t_support,ms_t_reader}'),
  ('register_consumer',       '{ms_t_app,ms_t_support,ms_t_payments}'),
  ('unregister_consumer',     '{ms_t_app,ms_t_support,ms_t_payments}'),
  ('next_batch',              '{ms_t_app,ms_t_support,ms_t_payments}'),
  ('batch_events',            '{ms_t_app,ms_t_support,ms_t_payments}'),
  ('finish_batch',            '{ms_t_app,ms_t_support,ms_t_payments}'),
  ('relay_status',            '{ms_t_app,ms_t_support,ms_t_reader}'),
  -- 1.2: payments confirmed by the provider, seller earnings, reconciliation
  ('record_charge',           '{ms_t_payments}'),
  ('retry_charge',            '{ms_t_app,ms_t_support}'),
  ('record_refund',           '{ms_t_payments}'),
  ('retry_refund',            '{ms_t_support}'),
  ('seller_balance',          '{ms_t_app,ms_t_support,ms_t_reader}'),
  ('request_withdrawal',      '{ms_t_app,ms_t_support}'),
  ('record_withdrawal',       '{ms_t_payments}'),
  ('hold_clearance',          '{ms_t_support}'),
  ('release_clearance',       '{ms_t_support}'),
  ('reconcile',               '{ms_t_support,ms_t_reader}');
-- Everything else (expire_overdue, run_expiry, schedule_expiry,
-- unschedule_expiry, run_audit, schedule_audit, unschedule_audit,
-- set_setting, clear_earnings, _credit_earning and every _helper) is the
-- owner's alone.

CREATE TEMP TABLE want_rel (rel text, roles text[]);
INSERT INTO want_rel VALUES
  ('order_status',         '{ms_t_app,ms_t_support,ms_t_reader}'),
  ('awaiting_response',    '{ms_t_app,ms_t_support,ms_t_reader}'),
  ('payouts',              '{ms_t_app,ms_t_support,ms_t_reader}'),
  ('ledger',               '{ms_t_app,ms_t_support,ms_t_reader}'),
  ('milestone_status',     '{ms_t_app,ms_t_support,ms_t_reader}'),
  ('cancellation_reasons', '{ms_t_app,ms_t_support}'),
  ('eligible_sellers',     '{ms_t_support}'),
  ('eligible_categories',  '{ms_t_support}'),
  ('consumer_status',      '{ms_t_app,ms_t_support,ms_t_reader}'),
  ('audit_runs',           '{ms_t_app,ms_t_support,ms_t_reader}'),
  ('audit_status',         '{ms_t_app,ms_t_support,ms_t_reader}'),
  ('order_counts',         '{ms_t_app,ms_t_support,ms_t_reader}'),
  ('deadline_status',      '{ms_t_app,ms_t_support,ms_t_reader}'),
  ('charges',              '{ms_t_app,ms_t_support,ms_t_reader,ms_t_payments}'),
  ('refunds',              '{ms_t_support,ms_t_reader,ms_t_payments}'),
  ('withdrawals',          '{ms_t_app,ms_t_support,ms_t_reader,ms_t_payments}'),
  ('seller_balances',      '{ms_t_app,ms_t_support,ms_t_reader}'),
  ('payment_status',       '{ms_t_app,ms_t_support,ms_t_reader}'),
  ('payment_totals',       '{ms_t_app,ms_t_support,ms_t_reader}');
-- Everything else (orders, order_milestones, ledger_entries, events,
-- settings, idempotency_keys, consumers, consumer_ticks, consumer_batches,
-- the sequences): no privilege at all.

CREATE TEMP TABLE roles (r name, o integer);
INSERT INTO roles VALUES ('public', 1), ('ms_t_login', 2), ('ms_t_app', 3), ('ms_t_support', 4), ('ms_t_reader', 5),
                         ('ms_t_payments', 6);

-- Every function of the extension, from pg_depend: a new function is
-- pinned to "owner only" until this list says otherwise.
CREATE TEMP TABLE ext_funcs AS
SELECT p.oid, p.proname::text AS fn, p.prokind,
       ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY a(t, i) ORDER BY i)::name[] AS args,
       p.prosecdef, p.proconfig
  FROM pg_proc p
  JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
 WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'milestones');

CREATE TEMP TABLE ext_rels AS
SELECT c.relname::text AS rel, c.relkind
  FROM pg_class c
 WHERE c.relnamespace = 'milestones'::regnamespace AND c.relkind IN ('r', 'v', 'S');

SELECT plan(
    (SELECT count(*)::int * 6 FROM ext_funcs)          -- function_privs_are
  + (SELECT count(*)::int * 6 FROM ext_rels)           -- table/sequence privs
  + (SELECT count(*)::int FROM ext_funcs WHERE prokind = 'f')  -- is_definer / isnt_definer
  + 11                                                  -- inventory and schema
  + 49                                                  -- behaviour
);

-- Inventory: the lists above cover what the extension has.
SELECT is((SELECT count(*)::int FROM ext_funcs), 90, 'the extension has 90 functions and procedures');
SELECT is((SELECT count(*)::int FROM ext_rels), 53, 'the extension has 53 tables, views and sequences');
SELECT is((SELECT count(*)::int FROM want_exec w WHERE NOT EXISTS (SELECT FROM ext_funcs f WHERE f.fn = w.fn)), 0,
          'every function named in the expected grants exists');
SELECT is((SELECT count(*)::int FROM want_rel w WHERE NOT EXISTS (SELECT FROM ext_rels r WHERE r.rel = w.rel)), 0,
          'every relation named in the expected grants exists');

-- Schema: the app roles may look up names, PUBLIC may not.
SELECT schema_privs_are('milestones', 'public', '{}'::name[], 'PUBLIC has no privilege on the schema');
SELECT schema_privs_are('milestones', 'ms_t_login', '{}'::name[], 'a plain login role has no privilege on the schema');
SELECT schema_privs_are('milestones', 'ms_t_app', '{USAGE}'::name[], 'milestones_app: USAGE on the schema, not CREATE');
SELECT schema_privs_are('milestones', 'ms_t_support', '{USAGE}'::name[], 'milestones_support: USAGE on the schema, not CREATE');
SELECT schema_privs_are('milestones', 'ms_t_reader', '{USAGE}'::name[], 'milestones_reader: USAGE on the schema, not CREATE');
SELECT schema_privs_are('milestones', 'ms_t_payments', '{USAGE}'::name[], 'milestones_payments: USAGE on the schema, not CREATE');

-- Every SECURITY DEFINER function pins search_path.
SELECT is(ARRAY(SELECT f.oid::regprocedure::text FROM ext_funcs f
                 WHERE f.prosecdef
                   AND NOT COALESCE('search_path=pg_catalog, pg_temp' = ANY (f.proconfig), false)
                 ORDER BY 1), '{}'::text[],
          'every SECURITY DEFINER function has SET search_path = pg_catalog, pg_temp');

-- EXECUTE on every function for every role.
SELECT function_privs_are('milestones', f.fn, f.args, r.r,
         CASE WHEN r.r = ANY (COALESCE(w.roles, '{}')) THEN '{EXECUTE}' ELSE '{}' END::name[],
         format('%s: %s(%s) %s', r.r, f.fn, array_to_string(f.args, ', '),
                CASE WHEN r.r = ANY (COALESCE(w.roles, '{}')) THEN 'executable' ELSE 'not executable' END))
  FROM ext_funcs f CROSS JOIN roles r LEFT JOIN want_exec w ON w.fn = f.fn
 ORDER BY f.fn, f.args::text, r.o;

-- Privileges on every table, view and sequence for every role.
SELECT CASE WHEN x.relkind = 'S'
            THEN sequence_privs_are('milestones', x.rel, r.r, '{}'::name[], format('%s: no privilege on sequence %s', r.r, x.rel))
            ELSE table_privs_are('milestones', x.rel, r.r,
                   CASE WHEN r.r = ANY (COALESCE(w.roles, '{}')) THEN '{SELECT}' ELSE '{}' END::name[],
                   format('%s: %s on %s', r.r,
                          CASE WHEN r.r = ANY (COALESCE(w.roles, '{}')) THEN 'SELECT only' ELSE 'no privilege' END, x.rel))
       END
  FROM ext_rels x CROSS JOIN roles r LEFT JOIN want_rel w ON w.rel = x.rel
 ORDER BY x.rel, r.o;

-- SECURITY DEFINER exactly where a caller without table privileges needs it:
-- the API and the support functions; the helpers, the owner-only sweep and
-- scheduling run as their caller (the owner).
SELECT CASE WHEN f.fn IN ('create_offer','withdraw_offer','decline_offer','place_order','deliver','accept',
                          'request_revision','stop','cancel','cancel_milestone','payout','set_seller_eligibility',
                          'set_category_eligibility','set_cancellation_reason','check_invariants','order_status',
                          'register_consumer','unregister_consumer','next_batch','batch_events','finish_batch',
                          'relay_status','record_charge','retry_charge','record_refund','retry_refund',
                          'seller_balance','request_withdrawal','record_withdrawal','hold_clearance',
                          'release_clearance','reconcile')
            THEN is_definer('milestones', f.fn, f.args, format('%s(%s) is SECURITY DEFINER', f.fn, array_to_string(f.args, ', ')))
            ELSE isnt_definer('milestones', f.fn, f.args, format('%s(%s) is not SECURITY DEFINER', f.fn, array_to_string(f.args, ', ')))
       END
  FROM ext_funcs f WHERE f.prokind = 'f'
 ORDER BY f.fn, f.args::text;

-- Behaviour: try it.  An order to act on (offered by the owner).
SELECT pg_temp.offer3() AS oid \gset
GRANT SELECT ON TABLE pg_temp.ext_funcs TO PUBLIC;

-- PUBLIC / a plain login role: nothing at all.
SET LOCAL ROLE ms_t_login;
SELECT throws_ok($$SELECT * FROM milestones.order_status$$, '42501', NULL, 'a plain login role cannot read order_status');
SELECT throws_ok(format($$SELECT milestones.place_order(%s, 20)$$, :oid), '42501', NULL, 'a plain login role cannot call the API');
SELECT throws_ok($$SELECT milestones.now()$$, '42501', NULL, 'a plain login role cannot even read the clock');
SELECT throws_ok(format($$SELECT * FROM milestones.order_status(%s)$$, :oid), '42501', NULL, 'a plain login role cannot call order_status(order_id)');
SELECT throws_ok($$SELECT * FROM milestones.milestone_status$$, '42501', NULL, 'a plain login role cannot read milestone_status');
RESET ROLE;

-- milestones_app: the actions and the views, no table writes, no settings,
-- no eligibility, no reasons, no cancel, no sweep.
SET LOCAL ROLE ms_t_app;
SELECT lives_ok(format($$SELECT milestones.place_order(%s, 20)$$, :oid), 'app: place_order');
SELECT is((SELECT state FROM milestones.order_status WHERE order_id = :oid), 'active', 'app: reads order_status');
SELECT lives_ok($$SELECT count(*) FROM milestones.ledger$$, 'app: reads the ledger view');
SELECT throws_ok($$SELECT * FROM milestones.orders$$, '42501', NULL, 'app: cannot read the orders table');
SELECT throws_ok($$UPDATE milestones.settings SET min_order_total = 1$$, '42501', NULL, 'app: cannot change settings');
SELECT throws_ok($$INSERT INTO milestones.eligible_sellers VALUES (99, true)$$, '42501', NULL, 'app: cannot write eligibility');
SELECT throws_ok($$SELECT milestones.set_seller_eligibility(99, true)$$, '42501', NULL, 'app: cannot call set_seller_eligibility');
SELECT throws_ok($$SELECT milestones.set_category_eligibility('writing', true)$$, '42501', NULL, 'app: cannot call set_category_eligibility');
SELECT throws_ok($$INSERT INTO milestones.cancellation_reasons VALUES ('x', 'y')$$, '42501', NULL, 'app: cannot add a reason by INSERT');
SELECT throws_ok($$SELECT milestones.set_cancellation_reason('x', 'y')$$, '42501', NULL, 'app: cannot call set_cancellation_reason');
SELECT throws_ok(format($$SELECT milestones.cancel(%s, 'me', 'mutual_agreement')$$, :oid), '42501', NULL, 'app: cannot cancel');
SELECT throws_ok(format($$SELECT milestones.cancel_milestone(%s, 2, 'me', 'mutual_agreement')$$, :oid), '42501', NULL, 'app: cannot cancel a milestone');
SELECT is((SELECT state FROM milestones.order_status(:oid)), 'active', 'app: calls order_status(order_id)');
SELECT is((SELECT count(*)::int FROM milestones.milestone_status WHERE order_id = :oid), 3, 'app: reads milestone_status');
SELECT throws_ok($$SELECT milestones.set_setting('min_order_total', '1')$$, '42501', NULL, 'app: cannot call set_setting');
SELECT throws_ok(format($$UPDATE milestones.orders SET state = 'cancelled' WHERE order_id = %s$$, :oid), '42501', NULL, 'app: cannot update orders');
SELECT throws_ok($$DELETE FROM milestones.ledger_entries$$, '42501', NULL, 'app: cannot delete ledger entries');
SELECT throws_ok($$SELECT milestones.expire_overdue('2099-01-01')$$, '42501', NULL, 'app: cannot run the sweep with a chosen as_of');
SELECT throws_ok($$CALL milestones.run_expiry()$$, '42501', NULL, 'app: cannot call run_expiry');
SELECT throws_ok($$SELECT milestones.schedule_expiry()$$, '42501', NULL, 'app: cannot schedule the sweep');
SELECT throws_ok($$SELECT milestones.check_invariants()$$, '42501', NULL, 'app: check_invariants is for support');
SELECT throws_ok($$SELECT nextval('milestones.order_id_seq')$$, '42501', NULL, 'app: cannot draw order ids');
RESET ROLE;

-- milestones_support: cancel, eligibility, reasons, the books; no tables.
SET LOCAL ROLE ms_t_support;
SELECT lives_ok($$SELECT milestones.set_cancellation_reason('fraud_suspected', 'Flagged by the fraud team.')$$, 'support: adds a reason');
SELECT lives_ok($$SELECT milestones.set_seller_eligibility(12, true)$$, 'support: enables a seller');
SELECT lives_ok($$SELECT milestones.set_category_eligibility('writing', true)$$, 'support: enables a category');
SELECT is((SELECT milestone_state FROM milestones.cancel_milestone(:oid, 3, 'agent-1', 'fraud_suspected')), 'in_progress',
          'support: cancels a milestone with the new reason');
SELECT is((SELECT state FROM milestones.milestone_status WHERE order_id = :oid AND position = 3), 'cancelled', 'support: reads milestone_status');
SELECT is((SELECT state FROM milestones.cancel(:oid, 'agent-1', 'fraud_suspected')), 'cancelled', 'support: cancels with the new reason');
SELECT is((SELECT state FROM milestones.order_status(:oid)), 'cancelled', 'support: calls order_status(order_id)');
SELECT throws_ok($$SELECT milestones.set_setting('min_order_total', '1')$$, '42501', NULL, 'support: cannot call set_setting');
SELECT is((SELECT count(*)::int FROM milestones.check_invariants()), 0, 'support: runs check_invariants');
SELECT throws_ok($$UPDATE milestones.settings SET min_order_total = 1$$, '42501', NULL, 'support: cannot change settings');
SELECT throws_ok($$DELETE FROM milestones.cancellation_reasons$$, '42501', NULL, 'support: cannot delete reasons directly');
SELECT throws_ok($$SELECT milestones.expire_overdue()$$, '42501', NULL, 'support: cannot run the sweep');
RESET ROLE;

-- milestones_reader: the views only.
SET LOCAL ROLE ms_t_reader;
SELECT is((SELECT state FROM milestones.order_status WHERE order_id = :oid), 'cancelled', 'reader: reads order_status');
SELECT is((SELECT state FROM milestones.order_status(:oid)), 'cancelled', 'reader: calls order_status(order_id)');
SELECT is((SELECT array_agg(state ORDER BY position) FROM milestones.milestone_status WHERE order_id = :oid),
          '{refunded,skipped,cancelled}'::text[], 'reader: reads milestone_status');
SELECT throws_ok(format($$SELECT milestones.cancel_milestone(%s, 2, 'me', 'mutual_agreement')$$, :oid), '42501', NULL, 'reader: cannot cancel a milestone');
SELECT throws_ok($$SELECT milestones.set_setting('min_order_total', '1')$$, '42501', NULL, 'reader: cannot call set_setting');
SELECT throws_ok($$SELECT pg_temp.offer3()$$, '42501', NULL, 'reader: cannot make offers');
SELECT throws_ok(format($$SELECT milestones.payout(%s)$$, :oid), '42501', NULL, 'reader: cannot call payout');
SELECT throws_ok($$SELECT * FROM milestones.eligible_sellers$$, '42501', NULL, 'reader: cannot read eligibility');
RESET ROLE;

-- Only the owner changes settings (and the change sticks).
SELECT lives_ok($$UPDATE milestones.settings SET min_order_total = 150$$, 'the owner changes settings');
SELECT is((milestones.set_setting('min_order_total', '175.50')).min_order_total, 175.50, 'the owner changes settings with set_setting');

SELECT * FROM finish();
ROLLBACK;
