-- test/sql/70_metrics.sql - SPEC section 13: the invariants audit job
-- (run_audit, schedule_audit, unschedule_audit, audit_runs, audit_status)
-- and the views the Prometheus metrics read (order_counts,
-- deadline_status, payment_status, payment_totals): what each records and counts, their refusals with
-- their SQLSTATEs, who may read and run what, and that the per-scrape view
-- is index-backed.  The real exporter reads them in test/shell/72_metrics.t;
-- the live pg_cron job is in test/shell/74_audit_job.t.
BEGIN;
\ir ../fixtures/setup.psql
SELECT plan(66);

CREATE ROLE ms_m_reader LOGIN IN ROLE milestones_reader;
CREATE ROLE ms_m_app LOGIN IN ROLE milestones_app;
CREATE ROLE ms_m_support LOGIN IN ROLE milestones_support;
CREATE ROLE ms_m_login LOGIN;

CREATE FUNCTION pg_temp.err(sql text, OUT e_state text, OUT e_message text, OUT e_detail text, OUT e_hint text)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    e_state := '00000';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS e_state = RETURNED_SQLSTATE, e_message = MESSAGE_TEXT,
                            e_detail = PG_EXCEPTION_DETAIL, e_hint = PG_EXCEPTION_HINT;
END
$$;
-- plan_of(sql): the EXPLAIN text of a statement, one string.
CREATE FUNCTION pg_temp.plan_of(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    l text;
    r text := '';
BEGIN
    FOR l IN EXECUTE 'EXPLAIN ' || sql LOOP
        r := r || l || E'\n';
    END LOOP;
    RETURN r;
END
$$;

-------------------------------------------------------------------------------
-- The functions and their signatures
-------------------------------------------------------------------------------
SELECT has_function('milestones', 'run_audit', '{}'::name[], 'run_audit()');
SELECT function_returns('milestones', 'run_audit', '{}'::name[], 'milestones.audit_runs', 'run_audit returns the audit_runs row it recorded');
SELECT is((SELECT pg_get_function_arguments('milestones.schedule_audit(text)'::regprocedure)),
          'schedule text DEFAULT ''17 * * * *''::text', 'schedule_audit(schedule text DEFAULT ''17 * * * *'')');
SELECT function_returns('milestones', 'schedule_audit', ARRAY['text'], 'bigint', 'schedule_audit returns the job id');
SELECT function_returns('milestones', 'unschedule_audit', '{}'::name[], 'boolean', 'unschedule_audit returns whether there was a job');

-------------------------------------------------------------------------------
-- Before the first run: one row of NULLs
-------------------------------------------------------------------------------
SELECT results_eq($$SELECT last_run_at IS NULL, last_run_duration IS NULL, last_problems IS NULL,
                           last_sample IS NULL, last_clean_at IS NULL, runs_kept FROM milestones.audit_status$$,
                  $$VALUES (true, true, true, true, true, 0::bigint)$$,
                  'audit_status before any run: one row, nothing known, no run kept');

-------------------------------------------------------------------------------
-- A clean run
-------------------------------------------------------------------------------
-- Orders in several states, through the API.
SELECT pg_temp.offer3() AS o_offered \gset
SELECT pg_temp.offer3() AS o_active \gset
SELECT milestones.place_order(:o_active, 20) IS NOT NULL;
SELECT pg_temp.offer3() AS o_delivered \gset
SELECT milestones.place_order(:o_delivered, 20) IS NOT NULL, milestones.deliver(:o_delivered, 10) IS NOT NULL;
SELECT pg_temp.offer3() AS o_stopped \gset
SELECT milestones.place_order(:o_stopped, 20) IS NOT NULL, milestones.deliver(:o_stopped, 10) IS NOT NULL,
       milestones.stop(:o_stopped, 20) IS NOT NULL;
SELECT pg_temp.offer3() AS o_cancelled \gset
SELECT milestones.cancel(:o_cancelled, 'agent-1', 'duplicate_order') IS NOT NULL;
SELECT milestones.withdraw_offer(pg_temp.offer3(), 10) IS NOT NULL;
SET CONSTRAINTS ALL IMMEDIATE;   -- run the deferred checks of the set-up now
SET CONSTRAINTS ALL DEFERRED;

SELECT * INTO TEMP run1 FROM milestones.run_audit();
SELECT results_eq($$SELECT problems, sample, ran_by = current_user, finished_at >= started_at,
                           started_at <= clock_timestamp() FROM run1$$,
                  $$VALUES (0::bigint, '[]'::jsonb, true, true, true)$$,
                  'run_audit on sound books records 0 problems, an empty sample, who ran it, when and how long');
SELECT is((SELECT count(*)::int FROM milestones.audit_runs), 1, 'one run is recorded');
SELECT results_eq($$SELECT last_run_at, last_run_duration, last_problems, last_sample, last_clean_at, runs_kept
                      FROM milestones.audit_status$$,
                  $$SELECT started_at, finished_at - started_at, 0::bigint, '[]'::jsonb, started_at, 1::bigint FROM run1$$,
                  'audit_status: the latest run is clean, so the last clean run is that run');
-- The wall clock, not the extension clock (milestones.fake_now is 2030 here).
SELECT ok((SELECT started_at < '2030-01-01'::timestamptz FROM run1), 'the record uses the wall clock, not milestones.fake_now');

-------------------------------------------------------------------------------
-- A run that finds problems: 25 corrupted orders, a sample of 20
-------------------------------------------------------------------------------
CREATE TEMP TABLE broken AS SELECT pg_temp.offer3() AS id FROM generate_series(1, 25);
SELECT count(milestones.place_order(id, 20)) FROM broken;
SET CONSTRAINTS ALL IMMEDIATE;
SET CONSTRAINTS ALL DEFERRED;
-- Corrupt as the owner, with every user trigger off: each escrow leg of
-- milestone 1's charge books 90 instead of 100 (an unbalanced transaction).
SET LOCAL session_replication_role = replica;
UPDATE milestones.ledger_entries SET amount = 90
 WHERE order_id IN (SELECT id FROM broken) AND kind = 'charge' AND account = 'escrow';
SET LOCAL session_replication_role = origin;
SELECT count(*) AS n_problems FROM milestones.check_invariants() \gset
SELECT cmp_ok(:n_problems::int, '>=', 25, 'check_invariants() reports at least one problem per corrupted order');

SET LOCAL client_min_messages = error;   -- run_audit warns about the problems (tested below)
SELECT * INTO TEMP run2 FROM milestones.run_audit();
SET LOCAL client_min_messages = warning;
SELECT is((SELECT problems FROM run2), :n_problems::bigint, 'run_audit counts every problem check_invariants() returns');
SELECT is((SELECT jsonb_array_length(sample) FROM run2), 20, 'the sample is bounded: the first 20 problems');
SELECT is((SELECT sample FROM run2),
          (SELECT jsonb_agg(jsonb_build_object('order_id', order_id, 'problem', problem))
             FROM (SELECT * FROM milestones.check_invariants() LIMIT 20) c),
          'the sample is the first 20 rows of check_invariants(), in its order, as {order_id, problem}');
SELECT ok((SELECT (sample -> 0 ->> 'order_id')::bigint IN (SELECT id FROM broken) FROM run2),
          'the sample names a corrupted order');
SELECT results_eq($$SELECT last_problems, last_clean_at, last_run_at FROM milestones.audit_status$$,
                  $$SELECT r2.problems, r1.started_at, r2.started_at FROM run2 r2, run1 r1$$,
                  'audit_status: the latest run found the problems; the last clean run is still the first one');

-------------------------------------------------------------------------------
-- Bounded: the newest 200 runs and the newest clean one
-------------------------------------------------------------------------------
INSERT INTO milestones.audit_runs (started_at, finished_at, problems, sample)
SELECT clock_timestamp(), clock_timestamp(), 1, '[]' FROM generate_series(1, 250);
SET LOCAL client_min_messages = error;
SELECT * INTO TEMP run3 FROM milestones.run_audit();
SET LOCAL client_min_messages = warning;
SELECT is((SELECT count(*)::int FROM milestones.audit_runs), 201, 'after a run, 201 runs are kept: the newest 200 and the newest clean one');
SELECT ok(EXISTS (SELECT FROM milestones.audit_runs WHERE run_id = (SELECT run_id FROM run1)),
          'the newest clean run is kept however old it is');
SELECT is((SELECT min(run_id) FROM milestones.audit_runs WHERE run_id <> (SELECT run_id FROM run1)),
          (SELECT run_id - 199 FROM run3), 'the other 200 are the newest ones, the one just made included');
SELECT is((SELECT last_clean_at FROM milestones.audit_status), (SELECT started_at FROM run1),
          'audit_status still knows when the books were last found sound');

-- Repaired: the next run is clean, and older clean runs go with the rest.
SET LOCAL session_replication_role = replica;
UPDATE milestones.ledger_entries SET amount = 100
 WHERE order_id IN (SELECT id FROM broken) AND kind = 'charge' AND account = 'escrow';
SET LOCAL session_replication_role = origin;
SELECT * INTO TEMP run4 FROM milestones.run_audit();
SELECT results_eq($$SELECT last_problems, last_clean_at, runs_kept FROM milestones.audit_status$$,
                  $$SELECT 0::bigint, started_at, 200::bigint FROM run4$$,
                  'once repaired, the next run is clean; the old clean run is pruned with the rest (200 kept)');

-------------------------------------------------------------------------------
-- Scheduling without pg_cron (milestones_tap has none)
-------------------------------------------------------------------------------
SELECT is((SELECT count(*)::int FROM pg_extension WHERE extname = 'pg_cron'), 0, 'this database has no pg_cron');
SELECT throws_ok($$SELECT milestones.schedule_audit()$$, '55000', 'pg_cron is not installed in this database',
                 'schedule_audit without pg_cron fails with 55000');
SELECT ok(e_hint LIKE '%shared_preload_libraries%' AND e_hint LIKE '%cron.database_name%'
          AND e_hint LIKE '%CREATE EXTENSION pg_cron%' AND e_hint LIKE '%SELECT milestones.run_audit()%',
          'its HINT names shared_preload_libraries, cron.database_name, CREATE EXTENSION pg_cron and the command to run otherwise')
  FROM pg_temp.err('SELECT milestones.schedule_audit(''17 * * * *'')');
SELECT is(milestones.unschedule_audit(), false, 'unschedule_audit without pg_cron returns false, without error');
SELECT throws_ok($$SELECT milestones.schedule_audit(NULL)$$, '22023', 'schedule must not be NULL', 'a NULL schedule is refused');

-------------------------------------------------------------------------------
-- Privileges: the owner runs the audit; every milestones role reads it
-------------------------------------------------------------------------------
SELECT ok(NOT has_function_privilege(r, 'milestones.run_audit()', 'EXECUTE')
          AND NOT has_function_privilege(r, 'milestones.schedule_audit(text)', 'EXECUTE')
          AND NOT has_function_privilege(r, 'milestones.unschedule_audit()', 'EXECUTE'),
          format('%s may not run or (un)schedule the audit', r))
  FROM unnest(ARRAY['public', 'milestones_app', 'milestones_support', 'milestones_reader']) r;
SET LOCAL ROLE ms_m_reader;
SELECT throws_ok($$SELECT milestones.run_audit()$$, '42501', NULL, 'the reader role cannot run the audit (42501)');
SELECT throws_ok($$SELECT milestones.schedule_audit()$$, '42501', NULL, 'the reader role cannot schedule it (42501)');
SELECT throws_ok($$INSERT INTO milestones.audit_runs (started_at, finished_at, problems) VALUES (now(), now(), 0)$$,
                 '42501', NULL, 'the reader role cannot forge a clean run (42501)');
SELECT is((SELECT last_problems FROM milestones.audit_status), 0::bigint, 'the reader role reads audit_status');
SELECT is((SELECT count(*)::int FROM milestones.audit_runs), 200, 'the reader role reads audit_runs');
SELECT is((SELECT count(*)::int FROM milestones.order_counts), 14, 'the reader role reads order_counts');
SELECT is((SELECT count(*)::int FROM milestones.deadline_status), 2, 'the reader role reads deadline_status');
SELECT is((SELECT count(*)::int FROM milestones.payment_status), 5, 'the reader role reads payment_status');
SELECT is((SELECT count(*)::int FROM milestones.payment_totals), 1, 'the reader role reads payment_totals');
RESET ROLE;
SET LOCAL ROLE ms_m_login;
SELECT throws_ok($$SELECT * FROM milestones.audit_status$$, '42501', NULL, 'a plain login role cannot read audit_status');
SELECT throws_ok($$SELECT * FROM milestones.order_counts$$, '42501', NULL, 'a plain login role cannot read order_counts');
RESET ROLE;

-------------------------------------------------------------------------------
-- order_counts: every state and reason, zeros included
-------------------------------------------------------------------------------
SELECT set_eq($$SELECT state, reason FROM milestones.order_counts$$,
              $$VALUES ('offered', NULL), ('active', NULL), ('withdrawn', NULL), ('declined', NULL),
                       ('completed', 'finished'), ('completed', 'stopped'), ('completed', 'expired'), ('completed', 'unpaid'),
                       ('cancelled', 'mutual_agreement'), ('cancelled', 'seller_unresponsive'),
                       ('cancelled', 'buyer_unresponsive'), ('cancelled', 'terms_violation'),
                       ('cancelled', 'payment_problem'), ('cancelled', 'duplicate_order')$$,
              'order_counts lists every state with every reason it can have');
SELECT set_eq($$SELECT state, reason, orders FROM milestones.order_counts WHERE orders > 0$$,
              $$SELECT state, COALESCE(end_reason, cancel_reason), count(*) FROM milestones.orders GROUP BY 1, 2$$,
              'its counts are those of the orders table');
SELECT results_eq($$SELECT orders FROM milestones.order_counts WHERE state = 'active'$$,
                  $$VALUES (27::bigint)$$, 'active: the 2 orders of the story and the 25 placed ones');
SELECT results_eq($$SELECT orders FROM milestones.order_counts WHERE state = 'completed' AND reason = 'stopped'$$,
                  $$VALUES (1::bigint)$$, 'completed/stopped: 1');
SELECT results_eq($$SELECT orders FROM milestones.order_counts WHERE state = 'cancelled' AND reason = 'duplicate_order'$$,
                  $$VALUES (1::bigint)$$, 'cancelled/duplicate_order: 1');
SELECT results_eq($$SELECT orders FROM milestones.order_counts WHERE state = 'declined'$$,
                  $$VALUES (0::bigint)$$, 'a state no order is in counts 0 (the series does not vanish)');
SELECT milestones.set_cancellation_reason('fraud', 'The payment was fraudulent.') IS NULL;
SELECT results_eq($$SELECT orders FROM milestones.order_counts WHERE state = 'cancelled' AND reason = 'fraud'$$,
                  $$VALUES (0::bigint)$$, 'a cancellation reason support adds is listed at once');

-------------------------------------------------------------------------------
-- deadline_status: deliveries waiting for the buyer, and the sweep's backlog
-------------------------------------------------------------------------------
-- o_delivered was delivered at 2030-01-01 00:00 (respond_by 2030-01-06).
SELECT results_eq($$SELECT kind, waiting, overdue, oldest_overdue FROM milestones.deadline_status WHERE kind = 'delivery'$$,
                  $$VALUES ('delivery', 1::bigint, 0::bigint, NULL::timestamptz)$$,
                  'one delivery waits for the buyer, none is overdue');
SELECT pg_temp.at('2030-01-03 00:00:00+00');
SELECT pg_temp.offer3() AS o_late \gset
SELECT milestones.place_order(:o_late, 20) IS NOT NULL, milestones.deliver(:o_late, 10) IS NOT NULL;
SELECT pg_temp.at('2030-01-07 12:00:00+00');
SELECT results_eq($$SELECT kind, waiting, overdue, oldest_overdue FROM milestones.deadline_status WHERE kind = 'delivery'$$,
                  $$VALUES ('delivery', 1::bigint, 1::bigint, '2030-01-06 00:00:00+00'::timestamptz)$$,
                  'after one deadline: one waits (until 2030-01-08), one is overdue since 2030-01-06, not yet swept');
SELECT pg_temp.at('2030-01-09 00:00:00+00');
SELECT results_eq($$SELECT waiting, overdue, oldest_overdue FROM milestones.deadline_status WHERE kind = 'delivery'$$,
                  $$VALUES (0::bigint, 2::bigint, '2030-01-06 00:00:00+00'::timestamptz)$$,
                  'after both: two overdue, the oldest deadline is the first one');
SELECT is(milestones.expire_overdue(), 2, 'the sweep ends both');
SELECT results_eq($$SELECT waiting, overdue, oldest_overdue FROM milestones.deadline_status WHERE kind = 'delivery'$$,
                  $$VALUES (0::bigint, 0::bigint, NULL::timestamptz)$$,
                  'after the sweep the backlog is empty');

-- Charges (confirmed payment mode): pay_by of the requested and failed ones.
SELECT results_eq($$SELECT kind, waiting, overdue, oldest_overdue FROM milestones.deadline_status WHERE kind = 'charge'$$,
                  $$VALUES ('charge', 0::bigint, 0::bigint, NULL::timestamptz)$$,
                  'in recorded mode no charge waits');
SELECT is((SELECT milestones.set_setting('payment_mode', 'confirmed')).payment_mode, 'confirmed', '(confirmed payment mode)');
SELECT pg_temp.offer3() AS c_wait \gset
SELECT milestones.place_order(:c_wait, 20) IS NULL;
SELECT pg_temp.offer3() AS c_fail \gset
SELECT milestones.place_order(:c_fail, 20) IS NULL;
SELECT milestones.record_charge(charge_id, 1, 'failed', NULL, 'card declined') IS NULL
  FROM milestones.order_charges WHERE order_id = :c_fail;
SELECT results_eq($$SELECT waiting, overdue, oldest_overdue FROM milestones.deadline_status WHERE kind = 'charge'$$,
                  $$VALUES (2::bigint, 0::bigint, NULL::timestamptz)$$,
                  'two charges wait for payment, a requested one and a failed one');
SELECT results_eq($$SELECT kind, state, items FROM milestones.payment_status$$,
                  $$VALUES ('charge', 'requested', 1::bigint), ('charge', 'failed', 1::bigint),
                           ('refund', 'requested', 0::bigint), ('refund', 'failed', 0::bigint),
                           ('withdrawal', 'requested', 0::bigint)$$,
                  'payment_status: one charge waits for the provider, one for the buyer''s retry; every pair listed');
SELECT results_eq($$SELECT charge_attempts, charge_attempts_failed, withdrawals_failed FROM milestones.payment_totals$$,
                  $$VALUES (2::bigint, 1::bigint, 0::bigint)$$, 'payment_totals: two attempts, one failed');
SELECT pg_temp.at('2030-01-13 00:00:00+00');
SELECT results_eq($$SELECT waiting, overdue, oldest_overdue FROM milestones.deadline_status WHERE kind = 'charge'$$,
                  $$VALUES (0::bigint, 2::bigint, '2030-01-12 00:00:00+00'::timestamptz)$$,
                  'after pay_by (3 days) both are unpaid, not yet voided by the sweep');
SELECT lives_ok($$SELECT milestones.expire_overdue()$$, 'the sweep runs');
SELECT results_eq($$SELECT waiting, overdue, oldest_overdue FROM milestones.deadline_status WHERE kind = 'charge'$$,
                  $$VALUES (0::bigint, 0::bigint, NULL::timestamptz)$$, 'the sweep voided both: no backlog');
SELECT results_eq($$SELECT state, items FROM milestones.payment_status WHERE kind = 'charge'$$,
                  $$VALUES ('requested', 0::bigint), ('failed', 0::bigint)$$, 'no charge is open any more');
SELECT results_eq($$SELECT charge_attempts, charge_attempts_failed FROM milestones.payment_totals$$,
                  $$VALUES (2::bigint, 1::bigint)$$, 'the totals stay');

-- Cheap on every scrape: with sequential scans made expensive, the planner
-- reads it along the sweep's partial index (no such index, and it could not).
SET LOCAL enable_seqscan = off;
SELECT ok(pg_temp.plan_of('SELECT * FROM milestones.deadline_status') LIKE '%order_milestones_awaiting_idx%'
          AND pg_temp.plan_of('SELECT * FROM milestones.deadline_status') LIKE '%order_charges_pay_by_idx%'
          AND pg_temp.plan_of('SELECT * FROM milestones.deadline_status') NOT LIKE '%Seq Scan%',
          'deadline_status reads order_milestones_awaiting_idx and order_charges_pay_by_idx, no sequential scan');
SELECT ok(pg_temp.plan_of($$SELECT * FROM milestones.payment_status WHERE kind = 'charge'$$) NOT LIKE '%Seq Scan on order_charges%',
          'payment_status counts the open charges along an index');
RESET enable_seqscan;

SELECT is_empty('SELECT * FROM milestones.check_invariants()', 'check_invariants() is empty at the end');

SELECT * FROM finish();
ROLLBACK;
