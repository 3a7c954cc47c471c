-------------------------------------------------------------------------------
-- Operations (SPEC section 13): the invariants audit job, and the views the
-- Prometheus metrics read.
--
-- check_invariants() reads every order: far too much for every scrape of a
-- metrics exporter, and it also runs on a standby, so it stays read-only.
-- The audit is its own job instead: run_audit() runs the full
-- check_invariants() and records when it ran, how long it took and what it
-- found in audit_runs; schedule_audit() registers it with pg_cron like
-- schedule_expiry() does the sweep.  The metrics read that record
-- (audit_status), never the audit itself.
--
-- The views below exist so that the exporter's role needs nothing but
-- milestones_reader: a view reads the tables with its owner's rights, and
-- each one is a single cheap statement (index-backed, or small enough for
-- the exporter to cache; prometheus/milestones-queries.yaml says which).
-- Their clock for deadlines is milestones.now(), as in awaiting_response;
-- ages of operational records (audit runs, batches) use the wall clock.
-------------------------------------------------------------------------------

-------------------------------------------------------------------------------
-- The audit record.
-------------------------------------------------------------------------------
CREATE SEQUENCE @extschema@.audit_run_id_seq;

CREATE TABLE @extschema@.audit_runs (
    run_id      bigint PRIMARY KEY DEFAULT pg_catalog.nextval('@extschema@.audit_run_id_seq'),
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    problems    bigint NOT NULL CONSTRAINT audit_runs_problems_range CHECK (problems >= 0),
    sample      jsonb NOT NULL DEFAULT '[]'
                CONSTRAINT audit_runs_sample_is_array CHECK (pg_catalog.jsonb_typeof(sample) = 'array'),
    ran_by      name NOT NULL DEFAULT CURRENT_USER,
    CONSTRAINT audit_runs_times_ordered CHECK (finished_at >= started_at)
);
COMMENT ON TABLE @extschema@.audit_runs IS
    'One row per run of the invariants audit (run_audit(), the pg_cron job of schedule_audit()): when it ran, how long it took, how many problems check_invariants() found and the first 20 of them. The newest 200 runs and the newest clean run are kept.';
COMMENT ON COLUMN @extschema@.audit_runs.started_at IS 'Wall-clock time the run started; its verdict is about the data as of then.';
COMMENT ON COLUMN @extschema@.audit_runs.finished_at IS 'Wall-clock time the run finished.';
COMMENT ON COLUMN @extschema@.audit_runs.problems IS 'How many rows check_invariants() returned: 0 means the books were sound.';
COMMENT ON COLUMN @extschema@.audit_runs.sample IS 'The first 20 problems, in check_invariants() order, as [{"order_id": ..., "problem": ...}].';
COMMENT ON COLUMN @extschema@.audit_runs.ran_by IS 'The role that ran it (the owner who scheduled the job).';
-- The audit history is kept by pg_dump: after a restore the record still
-- says when the books were last found sound (and where they were not).
SELECT pg_catalog.pg_extension_config_dump('@extschema@.audit_runs', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.audit_run_id_seq', '');

-- audit_status: the latest run and the latest clean run, one row (NULLs
-- before the first run).  The metrics read this; so does a DBA.
CREATE VIEW @extschema@.audit_status AS
SELECT l.started_at                    AS last_run_at,
       l.finished_at OPERATOR(pg_catalog.-) l.started_at AS last_run_duration,
       l.problems                      AS last_problems,
       l.sample                        AS last_sample,
       c.started_at                    AS last_clean_at,
       (SELECT pg_catalog.count(*) FROM @extschema@.audit_runs) AS runs_kept
  FROM (SELECT) one
  LEFT JOIN LATERAL (SELECT r.* FROM @extschema@.audit_runs r
                      ORDER BY r.run_id DESC LIMIT 1) l ON true
  LEFT JOIN LATERAL (SELECT r.* FROM @extschema@.audit_runs r
                      WHERE r.problems OPERATOR(pg_catalog.=) 0
                      ORDER BY r.run_id DESC LIMIT 1) c ON true;
COMMENT ON VIEW @extschema@.audit_status IS
    'The invariants audit at a glance, one row: the latest run (when, how long, problems found, a sample of them) and when the audit last found no problem. NULLs before the first run.';

-- run_audit: the job's body.  Owner only (no grant), like the sweep: it
-- writes the record the alerts trust.  Not on a standby: it would have to
-- write, and the primary's record replicates there anyway; it refuses there
-- as every writer does (_refuse_on_standby, sql/1.2/60_standby.sql).
CREATE FUNCTION @extschema@.run_audit() RETURNS @extschema@.audit_runs
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_started timestamptz;
    v_problems bigint;
    v_sample jsonb;
    r @extschema@.audit_runs;
BEGIN
    PERFORM @extschema@._refuse_on_standby('run_audit');
    v_started := pg_catalog.clock_timestamp();
    SELECT pg_catalog.count(*),
           COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('order_id', p.order_id, 'problem', p.problem)
                                         ORDER BY p.n) FILTER (WHERE p.n <= 20), '[]')
      INTO v_problems, v_sample
      FROM @extschema@.check_invariants() WITH ORDINALITY AS p(order_id, problem, n);
    INSERT INTO @extschema@.audit_runs (started_at, finished_at, problems, sample)
    VALUES (v_started, pg_catalog.clock_timestamp(), v_problems, v_sample)
    RETURNING * INTO r;
    -- Bounded: the newest 200 runs, and the newest clean one however old.
    DELETE FROM @extschema@.audit_runs a
     WHERE a.run_id < (SELECT pg_catalog.min(k.run_id)
                         FROM (SELECT x.run_id FROM @extschema@.audit_runs x ORDER BY x.run_id DESC LIMIT 200) k)
       AND a.run_id IS DISTINCT FROM (SELECT pg_catalog.max(c.run_id) FROM @extschema@.audit_runs c WHERE c.problems = 0);
    IF v_problems > 0 THEN
        RAISE WARNING 'milestones audit: check_invariants() found % problem(s)', v_problems
            USING DETAIL = pg_catalog.format('The first: %s', v_sample OPERATOR(pg_catalog.->) 0),
                  HINT = 'See SELECT * FROM milestones.audit_status, and SELECT * FROM milestones.check_invariants() for all of them.';
    END IF;
    RETURN r;
END
$$;
COMMENT ON FUNCTION @extschema@.run_audit() IS
    'Owner/pg_cron: runs the full check_invariants() and records the run in audit_runs (when, how long, how many problems, the first 20); keeps the newest 200 runs and the newest clean one. 25006 on a standby.';

-- schedule_audit: registers run_audit with pg_cron under one fixed job
-- name; calling it again updates the schedule.  pg_cron is optional.
CREATE FUNCTION @extschema@.schedule_audit(schedule text DEFAULT '17 * * * *') RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_job bigint;
BEGIN
    PERFORM @extschema@._refuse_on_standby('schedule_audit');
    PERFORM @extschema@._not_null(schedule_audit.schedule, 'schedule');
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        RAISE EXCEPTION 'pg_cron is not installed in this database'
            USING ERRCODE = '55000',
                  DETAIL = 'schedule_audit registers SELECT milestones.run_audit() as a pg_cron job.',
                  HINT = 'Add pg_cron to shared_preload_libraries, set cron.database_name to this database, restart, '
                         'run CREATE EXTENSION pg_cron here, then call schedule_audit() again. '
                         'Without pg_cron, run SELECT milestones.run_audit() from any scheduler.';
    END IF;
    EXECUTE 'SELECT cron.schedule($1, $2, $3)'
       INTO v_job
      USING 'milestones-audit', schedule_audit.schedule, 'SELECT @extschema@.run_audit()';
    RETURN v_job;
END
$$;
COMMENT ON FUNCTION @extschema@.schedule_audit(text) IS
    'Owner: registers (or reschedules) the pg_cron job "milestones-audit" that runs SELECT milestones.run_audit() (default: hourly, at minute 17). Returns the job id.';

CREATE FUNCTION @extschema@.unschedule_audit() RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_job bigint;
BEGIN
    PERFORM @extschema@._refuse_on_standby('unschedule_audit');
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT jobid FROM cron.job WHERE jobname = $1 AND username = current_user' INTO v_job
      USING 'milestones-audit';
    IF v_job IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT cron.unschedule($1)' USING v_job;
    RETURN true;
END
$$;
COMMENT ON FUNCTION @extschema@.unschedule_audit() IS
    'Owner: removes the pg_cron job "milestones-audit"; returns whether there was one.';

-------------------------------------------------------------------------------
-- What the metrics read.
-------------------------------------------------------------------------------

-- order_counts: every state with every reason it can have, and how many
-- orders are in it -- zeros included, so that a metric series never
-- vanishes when its count drops to 0.  Reads the whole orders table: the
-- exporter caches it (cache_seconds).
CREATE VIEW @extschema@.order_counts AS
SELECT g.state, g.reason, COALESCE(n.orders, 0) AS orders
  FROM (VALUES ('offered', NULL::text), ('active', NULL), ('withdrawn', NULL), ('declined', NULL),
               ('completed', 'finished'), ('completed', 'stopped'), ('completed', 'expired'),
               ('completed', 'unpaid')
        UNION ALL
        SELECT 'cancelled', cr.code FROM @extschema@.cancellation_reasons cr) g (state, reason)
  LEFT JOIN (SELECT o.state, COALESCE(o.end_reason, o.cancel_reason) AS reason, pg_catalog.count(*) AS orders
               FROM @extschema@.orders o
              GROUP BY 1, 2) n
         ON n.state OPERATOR(pg_catalog.=) g.state AND n.reason IS NOT DISTINCT FROM g.reason;
COMMENT ON VIEW @extschema@.order_counts IS
    'How many orders are in each state, by reason (completed: finished/stopped/expired/unpaid; cancelled: the cancellation reason; NULL otherwise). Every pair is listed, with 0 when no order is in it. Reads every order.';

-- deadline_status: what waits on a deadline.  "delivery": deliveries
-- waiting for the buyer's answer (respond_by ahead) and the overdue ones
-- the sweep has not ended yet, with the oldest deadline among them;
-- "charge" (confirmed payment mode): open charges (requested or failed)
-- waiting to be paid before pay_by, and the unpaid ones past it that the
-- sweep has not voided yet.  Each along the sweep's own partial index
-- (order_milestones_awaiting_idx, order_charges_pay_by_idx): the cost
-- follows the deliveries and charges open now, not the tables.  A stalled
-- sweep shows first as a growing age of the oldest overdue item.
CREATE VIEW @extschema@.deadline_status AS
SELECT 'delivery'::text AS kind,
       pg_catalog.count(*) FILTER (WHERE m.respond_by OPERATOR(pg_catalog.>) @extschema@.now()) AS waiting,
       pg_catalog.count(*) FILTER (WHERE m.respond_by OPERATOR(pg_catalog.<=) @extschema@.now()) AS overdue,
       pg_catalog.min(m.respond_by) FILTER (WHERE m.respond_by OPERATOR(pg_catalog.<=) @extschema@.now()) AS oldest_overdue
  FROM @extschema@.order_milestones m
 WHERE m.state OPERATOR(pg_catalog.=) 'delivered'
UNION ALL
SELECT 'charge'::text,
       pg_catalog.count(*) FILTER (WHERE c.pay_by OPERATOR(pg_catalog.>) @extschema@.now()),
       pg_catalog.count(*) FILTER (WHERE c.pay_by OPERATOR(pg_catalog.<=) @extschema@.now()),
       pg_catalog.min(c.pay_by) FILTER (WHERE c.pay_by OPERATOR(pg_catalog.<=) @extschema@.now())
  FROM @extschema@.order_charges c
 WHERE c.state IN ('requested', 'failed');
COMMENT ON VIEW @extschema@.deadline_status IS
    'What waits on a deadline, one row per kind (delivery: the buyer''s response window; charge: a requested or failed charge''s pay_by): how many wait with the deadline ahead, how many are overdue and not yet ended by the expiry sweep, and the oldest overdue deadline (NULL when none). Index-backed.';

-- payment_status (confirmed payment mode): what waits on the payment
-- provider, the buyer or support now.  Charges requested (the provider's
-- answer) or failed (the buyer's retry, or pay_by); refunds requested
-- (the provider) or failed (support's retry_refund); withdrawals
-- requested (the provider).  Every pair is listed, with 0.  The charges
-- and failed refunds follow partial indexes; requested refunds read the
-- refunds table (small: one row per refund), so the exporter caches it.
CREATE VIEW @extschema@.payment_status AS
SELECT 'charge'::text AS kind, 'requested'::text AS state, pg_catalog.count(*) AS items
  FROM @extschema@.order_charges c WHERE c.state OPERATOR(pg_catalog.=) 'requested'
UNION ALL
SELECT 'charge', 'failed', pg_catalog.count(*)
  FROM @extschema@.order_charges c WHERE c.state OPERATOR(pg_catalog.=) 'failed'
UNION ALL
SELECT 'refund', 'requested', pg_catalog.count(*)
  FROM @extschema@.order_refunds r WHERE r.state OPERATOR(pg_catalog.=) 'requested'
UNION ALL
SELECT 'refund', 'failed', pg_catalog.count(*)
  FROM @extschema@.order_refunds r WHERE r.state OPERATOR(pg_catalog.=) 'failed'
UNION ALL
SELECT 'withdrawal', 'requested', pg_catalog.count(*)
  FROM @extschema@.seller_withdrawals w WHERE w.state OPERATOR(pg_catalog.=) 'requested';
COMMENT ON VIEW @extschema@.payment_status IS
    'Confirmed payment mode: what is open now, by kind and state: charges requested (waiting for the provider) or failed (waiting for the buyer''s retry or pay_by), refunds requested or failed (waiting for support''s retry_refund), withdrawals requested.';

-- payment_totals (confirmed payment mode): counts since the first charge.
-- Attempts and withdrawals are never deleted, so charge_attempts and
-- withdrawals_failed only grow (a failed withdrawal is final);
-- charge_attempts_failed can go down, when a failed attempt settles late.
-- Reads the attempts table: the exporter caches it.
CREATE VIEW @extschema@.payment_totals AS
SELECT a.charge_attempts, a.charge_attempts_failed,
       (SELECT pg_catalog.count(*) FROM @extschema@.seller_withdrawals w
         WHERE w.state OPERATOR(pg_catalog.=) 'failed') AS withdrawals_failed
  FROM (SELECT pg_catalog.count(*) AS charge_attempts,
               pg_catalog.count(*) FILTER (WHERE x.state OPERATOR(pg_catalog.=) 'failed') AS charge_attempts_failed
          FROM @extschema@.charge_attempts x) a;
COMMENT ON VIEW @extschema@.payment_totals IS
    'Confirmed payment mode, one row: charge attempts requested so far, those whose latest report is failed (a late success lowers it), and withdrawals that failed. Reads every attempt.';

-- consumer_status gains open_batch_at: when the consumer's unfinished
-- batch was first handed out (a batch handed out again keeps it), so that
-- a stuck consumer shows as an old open batch.  The rest is 1.1's view.
CREATE OR REPLACE VIEW @extschema@.consumer_status AS
SELECT c.name AS consumer,
       c.registered_at,
       t.taken_at AS position_at,
       b.batch_id AS open_batch,
       b.events AS open_batch_events,
       c.batches_done,
       c.events_done,
       c.last_finished_at,
       p.pending_events,
       COALESCE(pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) p.oldest, interval '0') AS lag,
       b.created_at AS open_batch_at
  FROM @extschema@.consumers c
  JOIN @extschema@.consumer_ticks t ON t.tick_id OPERATOR(pg_catalog.=) c.tick_id
  LEFT JOIN @extschema@.consumer_batches b ON b.consumer_id OPERATOR(pg_catalog.=) c.consumer_id
  CROSS JOIN LATERAL (
      SELECT pg_catalog.count(*) AS pending_events, pg_catalog.min(e.recorded_at) AS oldest
        FROM @extschema@.events e
       WHERE e.txid OPERATOR(pg_catalog.>=) pg_catalog.pg_snapshot_xmin(t.snapshot)
         AND e.txid_cluster OPERATOR(pg_catalog.=) t.cluster_id
         AND NOT pg_catalog.pg_visible_in_snapshot(e.txid, t.snapshot)) p;
COMMENT ON VIEW @extschema@.consumer_status IS
    'Each durable consumer: registration, position (the snapshot it has read up to), open batch and when it was first handed out, totals, events committed since its position and the age of the oldest of them (lag).';

-------------------------------------------------------------------------------
-- Privileges.  The audit's functions are the owner's (the 1.0 REVOKE ... ON
-- ALL FUNCTIONS ran before them, so revoke explicitly); every milestones
-- role reads the record and the views, as it reads the other views.
-------------------------------------------------------------------------------
REVOKE ALL ON FUNCTION
    @extschema@.run_audit(),
    @extschema@.schedule_audit(text),
    @extschema@.unschedule_audit()
    FROM PUBLIC;
REVOKE ALL ON @extschema@.audit_runs, @extschema@.audit_status, @extschema@.order_counts,
    @extschema@.deadline_status, @extschema@.payment_status, @extschema@.payment_totals FROM PUBLIC;
REVOKE ALL ON SEQUENCE @extschema@.audit_run_id_seq FROM PUBLIC;
-- The monitoring role (milestones_reader) and the DBAs' and support's
-- tools read the audit record and the counts the metrics are made of.
GRANT SELECT ON @extschema@.audit_runs, @extschema@.audit_status, @extschema@.order_counts,
    @extschema@.deadline_status, @extschema@.payment_status, @extschema@.payment_totals
    TO milestones_app, milestones_support, milestones_reader;
