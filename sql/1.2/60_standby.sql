-------------------------------------------------------------------------------
-- milestones 1.2: a hot standby refuses writes with the product's own error
-- (SPEC section 13).
--
-- On a streaming standby every write fails anyway, but with PostgreSQL's
-- message for whichever statement of the function happened to write first
-- ("cannot execute SELECT FOR UPDATE in a read-only transaction").  Every
-- function that writes now asks first and refuses with 25006 (the same
-- SQLSTATE), naming itself and saying that this server is a standby:
--
--   - the C actions (create_offer ... cancel_milestone, expire_overdue)
--     call EngineRefuseOnStandby() in src/engine.c before anything else;
--   - the PL/pgSQL ones below call _refuse_on_standby(), the same C code,
--     so there is one text of the refusal.  Their bodies are those of
--     sql/milestones--1.0.sql and sql/1.1/ with that call as their first
--     statement (CREATE OR REPLACE keeps their privileges and comments).
--
-- A function added later that writes calls one of the two first, in C
-- EngineRefuseOnStandby("name"), in SQL
-- PERFORM @extschema@._refuse_on_standby('name').
-- The views, order_status(), payout(), batch_events(), consumer_status
-- and check_invariants() only read and keep working on a standby;
-- relay_status() says the server is a standby (mode 'standby') instead of
-- reporting a relay that is "(re)starting" with no process.
-------------------------------------------------------------------------------

-- _refuse_on_standby: 25006 "<action> is not allowed: this server is a
-- standby" while the server is in recovery; nothing otherwise.  Owner only:
-- the functions that call it are the owner's or SECURITY DEFINER.
CREATE FUNCTION @extschema@._refuse_on_standby(action text) RETURNS void
    AS 'MODULE_PATHNAME', 'milestones_refuse_on_standby' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@._refuse_on_standby(text) IS
    'Refuses (25006, naming the action) on a server in recovery, a hot standby; every function that writes calls it first.';
REVOKE ALL ON FUNCTION @extschema@._refuse_on_standby(text) FROM PUBLIC;

-------------------------------------------------------------------------------
-- The consumers (sql/1.1/30_events.sql).  batch_events() only reads: a
-- consumer may read an open batch on a standby, not take or finish one.
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION @extschema@.register_consumer(name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@._refuse_on_standby('register_consumer');
    IF pg_catalog.left(register_consumer.name, 1) OPERATOR(pg_catalog.=) '_' THEN
        RAISE EXCEPTION 'consumer names starting with "_" are reserved'
            USING ERRCODE = '22023',
                  DETAIL = pg_catalog.format('%L is reserved for the extension (the relay reads as "_relay").', register_consumer.name),
                  HINT = 'Choose a name that starts with a letter or digit.';
    END IF;
    PERFORM @extschema@._register_consumer(register_consumer.name);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.unregister_consumer(name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c @extschema@.consumers;
BEGIN
    PERFORM @extschema@._refuse_on_standby('unregister_consumer');
    IF pg_catalog.left(unregister_consumer.name, 1) OPERATOR(pg_catalog.=) '_' THEN
        RAISE EXCEPTION 'consumer names starting with "_" are reserved'
            USING ERRCODE = '22023',
                  DETAIL = pg_catalog.format('%L belongs to the extension.', unregister_consumer.name),
                  HINT = 'The relay manages its own consumer.';
    END IF;
    c := @extschema@._consumer_row(unregister_consumer.name);
    DELETE FROM @extschema@.consumers WHERE consumer_id OPERATOR(pg_catalog.=) c.consumer_id;
    PERFORM @extschema@._prune_ticks();
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.next_batch(consumer text, max_events integer DEFAULT 1000) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@._refuse_on_standby('next_batch');
    IF pg_catalog.left(next_batch.consumer, 1) OPERATOR(pg_catalog.=) '_' THEN
        RAISE EXCEPTION 'consumer names starting with "_" are reserved'
            USING ERRCODE = '22023',
                  DETAIL = pg_catalog.format('%L belongs to the extension.', next_batch.consumer),
                  HINT = 'Register a consumer of your own with register_consumer(name).';
    END IF;
    RETURN @extschema@._next_batch(next_batch.consumer, next_batch.max_events);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.finish_batch(batch_id bigint, consumer text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@._refuse_on_standby('finish_batch');
    PERFORM @extschema@._finish_batch(finish_batch.batch_id, finish_batch.consumer);
END
$$;

-------------------------------------------------------------------------------
-- Eligibility and reasons (sql/milestones--1.0.sql), settings
-- (sql/1.1/20_cancel_milestone.sql) and the partition (sql/1.1/40_partition.sql).
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION @extschema@.set_seller_eligibility(seller_id bigint, eligible boolean) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@._refuse_on_standby('set_seller_eligibility');
    IF set_seller_eligibility.seller_id IS NULL OR set_seller_eligibility.seller_id <= 0 THEN PERFORM @extschema@._check_id(set_seller_eligibility.seller_id, 'seller_id'); END IF;
    PERFORM @extschema@._not_null(set_seller_eligibility.eligible, 'eligible');
    INSERT INTO @extschema@.eligible_sellers AS es (seller_id, eligible, updated_at)
    VALUES (set_seller_eligibility.seller_id, set_seller_eligibility.eligible, @extschema@.now())
    ON CONFLICT ON CONSTRAINT eligible_sellers_pkey
    DO UPDATE SET eligible = EXCLUDED.eligible, updated_at = EXCLUDED.updated_at;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.set_category_eligibility(category text, eligible boolean) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@._refuse_on_standby('set_category_eligibility');
    PERFORM @extschema@._check_text(set_category_eligibility.category, 'category', 100, true);
    PERFORM @extschema@._not_null(set_category_eligibility.eligible, 'eligible');
    IF btrim(set_category_eligibility.category) <> set_category_eligibility.category THEN
        RAISE EXCEPTION 'category must not start or end with spaces'
            USING ERRCODE = '22023', DETAIL = format('Got %s.', quote_literal(left(set_category_eligibility.category, 100))),
                  HINT = 'Offers name the category exactly; trim it first.';
    END IF;
    INSERT INTO @extschema@.eligible_categories AS ec (category, eligible, updated_at)
    VALUES (set_category_eligibility.category, set_category_eligibility.eligible, @extschema@.now())
    ON CONFLICT ON CONSTRAINT eligible_categories_pkey
    DO UPDATE SET eligible = EXCLUDED.eligible, updated_at = EXCLUDED.updated_at;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.set_cancellation_reason(code text, description text, active boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@._refuse_on_standby('set_cancellation_reason');
    PERFORM @extschema@._not_null(set_cancellation_reason.code, 'code');
    PERFORM @extschema@._check_text(set_cancellation_reason.description, 'description', 500, true);
    PERFORM @extschema@._not_null(set_cancellation_reason.active, 'active');
    IF set_cancellation_reason.code !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'reason code must be lower-case letters, digits and underscores'
            USING ERRCODE = '22023', DETAIL = format('Got %s.', quote_literal(left(set_cancellation_reason.code, 80)));
    END IF;
    INSERT INTO @extschema@.cancellation_reasons AS cr (code, description, active)
    VALUES (set_cancellation_reason.code, set_cancellation_reason.description, set_cancellation_reason.active)
    ON CONFLICT ON CONSTRAINT cancellation_reasons_pkey
    DO UPDATE SET description = EXCLUDED.description, active = EXCLUDED.active;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.set_setting(name text, value text) RETURNS @extschema@.settings
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_type text;
    v_numeric boolean;
    v_scale integer;
    v_number numeric;
    v_constraint text;
    v_message text;
    r @extschema@.settings;
BEGIN
    PERFORM @extschema@._refuse_on_standby('set_setting');
    PERFORM @extschema@._not_null(set_setting.name, 'name');
    PERFORM @extschema@._not_null(set_setting.value, 'value');
    SELECT pg_catalog.format_type(a.atttypid, a.atttypmod),
           a.atttypid = 'pg_catalog.numeric'::pg_catalog.regtype,
           CASE WHEN a.atttypid = 'pg_catalog.numeric'::pg_catalog.regtype AND a.atttypmod >= 4
                THEN (a.atttypmod - 4) & 65535 END
      INTO v_type, v_numeric, v_scale
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = '@extschema@.settings'::pg_catalog.regclass
       AND a.attnum > 0 AND NOT a.attisdropped AND a.attname <> 'singleton'
       AND a.attname::text = set_setting.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown setting %', quote_literal(left(set_setting.name, 100))
            USING ERRCODE = '22023',
                  DETAIL = format('Settings: %s.',
                                  (SELECT string_agg(a.attname::text, ', ' ORDER BY a.attnum)
                                     FROM pg_catalog.pg_attribute a
                                    WHERE a.attrelid = '@extschema@.settings'::pg_catalog.regclass
                                      AND a.attnum > 0 AND NOT a.attisdropped AND a.attname <> 'singleton'));
    END IF;
    BEGIN
        IF v_numeric THEN
            v_number := set_setting.value::numeric;
            -- NaN passes the table's range checks (it sorts above every
            -- number) but is no amount or rate: refuse it here.
            IF v_number = 'NaN'::numeric THEN
                RAISE EXCEPTION 'setting % must be a number', set_setting.name
                    USING ERRCODE = '22023', DETAIL = 'Got NaN.';
            END IF;
            IF v_number <> round(v_number, v_scale) THEN
                RAISE EXCEPTION 'setting % takes at most % decimals', set_setting.name, v_scale
                    USING ERRCODE = '22023', DETAIL = format('Got %s; it is never rounded.', left(set_setting.value, 100));
            END IF;
        END IF;
        EXECUTE format('UPDATE @extschema@.settings SET %I = $1::%s RETURNING *', set_setting.name, v_type)
           INTO r USING set_setting.value;
    EXCEPTION
        WHEN check_violation THEN
            GET STACKED DIAGNOSTICS v_constraint = CONSTRAINT_NAME;
            RAISE EXCEPTION 'invalid value for setting %', set_setting.name
                USING ERRCODE = '22023',
                      DETAIL = format('%s = %s breaks %s: %s.', set_setting.name, left(set_setting.value, 100), v_constraint,
                                      (SELECT pg_catalog.pg_get_constraintdef(c.oid) FROM pg_catalog.pg_constraint c
                                        WHERE c.conrelid = '@extschema@.settings'::pg_catalog.regclass
                                          AND c.conname = v_constraint));
        WHEN data_exception THEN
            GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT;
            IF SQLSTATE = '22023' THEN
                RAISE;
            END IF;
            RAISE EXCEPTION 'invalid value for setting %', set_setting.name
                USING ERRCODE = '22023',
                      DETAIL = format('%s takes a value of type %s; %s gave: %s.', set_setting.name, v_type,
                                      quote_literal(left(set_setting.value, 100)), v_message);
    END;
    RETURN r;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.set_partition(k integer, n integer) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c @extschema@.partition_config;
BEGIN
    PERFORM @extschema@._refuse_on_standby('set_partition');
    PERFORM @extschema@._not_null(set_partition.k, 'k');
    PERFORM @extschema@._not_null(set_partition.n, 'n');
    IF set_partition.n < 1 OR (set_partition.n & (set_partition.n - 1)) <> 0 THEN
        RAISE EXCEPTION 'n must be a power of two'
            USING ERRCODE = '22023',
                  DETAIL = format('Got n = %s.', set_partition.n),
                  HINT = 'PL/Proxy maps a hash to a partition by masking, so the number of partitions is 1, 2, 4, 8, ...';
    END IF;
    IF set_partition.k < 0 OR set_partition.k >= set_partition.n THEN
        RAISE EXCEPTION 'k must be from 0 to n - 1'
            USING ERRCODE = '22023',
                  DETAIL = format('Got k = %s for n = %s.', set_partition.k, set_partition.n),
                  HINT = 'k is the partition''s position in the proxy''s cluster: p0 is 0, p1 is 1, and so on.';
    END IF;
    -- Block new orders until this transaction ends, then look for any.
    LOCK TABLE @extschema@.orders IN SHARE MODE;
    SELECT * INTO c FROM @extschema@.partition_config;
    IF c.k IS NOT DISTINCT FROM set_partition.k AND COALESCE(c.n, 1) = set_partition.n THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT FROM @extschema@.orders) THEN
        RAISE EXCEPTION 'set_partition is not allowed: this database already has orders'
            USING ERRCODE = '55000',
                  DETAIL = format('This database is partition %s of %s and holds %s orders; their ids follow that numbering.',
                                  COALESCE(c.k, 0), COALESCE(c.n, 1), (SELECT count(*) FROM @extschema@.orders)),
                  HINT = 'Set the partition right after CREATE EXTENSION milestones, before the first order; '
                         'to change the layout, move whole partition databases to other servers instead.';
    END IF;
    INSERT INTO @extschema@.partition_config (k, n) VALUES (set_partition.k, set_partition.n)
    ON CONFLICT ON CONSTRAINT partition_config_pkey DO UPDATE SET k = EXCLUDED.k, n = EXCLUDED.n;
END
$$;

-------------------------------------------------------------------------------
-- The expiry job (sql/milestones--1.0.sql).  pg_cron runs no job on a
-- standby (its launcher starts when recovery has finished, as the relay
-- does); a DBA's CALL run_expiry() there is refused by name, and so are
-- schedule_expiry() and unschedule_expiry(), which write pg_cron's tables.
-------------------------------------------------------------------------------

CREATE OR REPLACE PROCEDURE @extschema@.run_expiry(max_batches integer DEFAULT 1000)
LANGUAGE plpgsql AS $$
DECLARE
    v_batch integer;
    v_done integer;
    v_cleared integer;
    i integer := 0;
BEGIN
    PERFORM @extschema@._refuse_on_standby('run_expiry');
    IF max_batches IS NULL OR max_batches OPERATOR(pg_catalog.<) 1 THEN
        RAISE EXCEPTION 'max_batches must be 1 or more'
            USING ERRCODE := '22023', DETAIL := pg_catalog.format('Got %s.', max_batches);
    END IF;
    SELECT expiry_batch INTO v_batch FROM @extschema@.settings;
    LOOP
        v_done := @extschema@.expire_overdue(@extschema@.now(), v_batch);
        COMMIT;
        -- The same job clears sellers' due earnings (SPEC section 12).
        v_cleared := @extschema@.clear_earnings(@extschema@.now(), v_batch);
        COMMIT;
        -- Operators qualified too: without a pinned search_path, a schema
        -- ahead of pg_catalog in the caller's path could shadow them.
        i := i OPERATOR(pg_catalog.+) 1;
        EXIT WHEN (v_done OPERATOR(pg_catalog.<) v_batch AND v_cleared OPERATOR(pg_catalog.<) v_batch)
               OR i OPERATOR(pg_catalog.>=) max_batches;
    END LOOP;
END
$$;
COMMENT ON PROCEDURE @extschema@.run_expiry(integer) IS
    'Owner/pg_cron: runs expire_overdue (deliveries and unpaid charges) and clear_earnings in batches of settings.expiry_batch, committing after each, until both backlogs are gone.';

CREATE OR REPLACE FUNCTION @extschema@.schedule_expiry(schedule text DEFAULT '*/5 * * * *') RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_job bigint;
BEGIN
    PERFORM @extschema@._refuse_on_standby('schedule_expiry');
    PERFORM @extschema@._not_null(schedule_expiry.schedule, 'schedule');
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        RAISE EXCEPTION 'pg_cron is not installed in this database'
            USING ERRCODE = '55000',
                  DETAIL = 'schedule_expiry registers milestones.run_expiry() as a pg_cron job.',
                  HINT = 'Add pg_cron to shared_preload_libraries, set cron.database_name to this database, restart, '
                         'run CREATE EXTENSION pg_cron here, then call schedule_expiry() again. '
                         'Without pg_cron, run CALL milestones.run_expiry() from any scheduler.';
    END IF;
    EXECUTE 'SELECT cron.schedule($1, $2, $3)'
       INTO v_job
      USING 'milestones-expiry', schedule_expiry.schedule, 'CALL milestones.run_expiry()';
    RETURN v_job;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.unschedule_expiry() RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_job bigint;
BEGIN
    PERFORM @extschema@._refuse_on_standby('unschedule_expiry');
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT jobid FROM cron.job WHERE jobname = $1 AND username = current_user' INTO v_job
      USING 'milestones-expiry';
    IF v_job IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT cron.unschedule($1)' USING v_job;
    RETURN true;
END
$$;

-------------------------------------------------------------------------------
-- relay_status() (sql/1.1/30_events.sql) on a standby: mode 'standby'.  No
-- relay runs in recovery (its worker starts when recovery has finished, at
-- promotion) and nothing commits there to notify, so the 1.1 answer, "the
-- relay serves this database; it is (re)starting" with no process, was
-- wrong there and would fire a "relay down" alert on every standby.  The
-- relay's position is the one replicated from the primary; its pending
-- events and lag are the primary's to report (NULL here), so that a lag
-- alert does not fire on a standby whose primary is gone either.
-------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION @extschema@.relay_status(
    OUT mode text, OUT reason text, OUT database_name text, OUT relay_pid integer,
    OUT relay_started_at timestamptz, OUT paused boolean, OUT position_at timestamptz,
    OUT pending_events bigint, OUT lag interval, OUT notifications_sent bigint,
    OUT batches_sent bigint, OUT last_batch_at timestamptz, OUT last_error text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    i record;
    s record;
    v_fallback text;
BEGIN
    i := @extschema@._relay_info();
    database_name := i.database_name;
    relay_pid := i.pid;
    relay_started_at := i.started_at;
    paused := i.paused;
    notifications_sent := i.notifications;
    batches_sent := i.batches;
    last_batch_at := i.last_batch_at;
    last_error := i.last_error;
    v_fallback := CASE
        WHEN NOT i.preloaded THEN 'milestones is not in shared_preload_libraries: NOTIFY at commit'
        WHEN NOT i.registered THEN 'no background worker slot was free at server start (max_worker_processes): NOTIFY at commit'
        WHEN i.gave_up THEN pg_catalog.format('the relay stopped when its database %I was dropped: NOTIFY at commit', i.database_name)
        ELSE pg_catalog.format('the relay serves database %I (milestones.database_name), not this one: NOTIFY at commit', i.database_name)
    END;
    IF pg_catalog.pg_is_in_recovery() THEN
        mode := 'standby';
        reason := 'this server is a standby: nothing commits or is notified here; '
                  OPERATOR(pg_catalog.||) CASE WHEN i.serves_this_database
                      THEN 'the relay starts by itself when the server is promoted'
                      ELSE 'after promotion: ' OPERATOR(pg_catalog.||) v_fallback END;
        relay_pid := NULL;
        IF i.serves_this_database THEN
            SELECT c.taken_at INTO position_at
              FROM @extschema@.consumers r
              JOIN @extschema@.consumer_ticks c ON c.tick_id OPERATOR(pg_catalog.=) r.tick_id
             WHERE r.name OPERATOR(pg_catalog.=) '_relay';
        END IF;
    ELSIF i.serves_this_database THEN
        mode := 'relay';
        reason := CASE
            WHEN i.pid IS NULL THEN 'the relay serves this database; it is (re)starting and will send what committed meanwhile'
            WHEN i.paused THEN 'the relay serves this database; paused: the notification queue is above milestones.relay_max_queue_usage'
            ELSE 'the relay serves this database' END;
        SELECT * INTO s FROM @extschema@.consumer_status WHERE consumer OPERATOR(pg_catalog.=) '_relay';
        IF FOUND THEN
            position_at := s.position_at;
            pending_events := s.pending_events;
            lag := s.lag;
        END IF;
    ELSE
        mode := 'fallback';
        reason := v_fallback;
        relay_pid := NULL;
    END IF;
    RETURN;
END
$$;
COMMENT ON FUNCTION @extschema@.relay_status() IS
    'Which way notifications leave this database (relay, fallback NOTIFY at commit, or none on a standby) and why; the relay''s process, position, pending events, lag and totals.';
