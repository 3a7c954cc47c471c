
-------------------------------------------------------------------------------
-- 30_events.sql: events out of the database (SPEC section 5, issues 10 and 12).
--
--   * one payload builder, _payloads(events[]), used by the fallback NOTIFY and
--     by the relay, with money as strings;
--   * the events trigger: NOTIFY at commit only in fallback mode (no relay
--     serving this database); _event() no longer notifies by itself;
--   * durable consumers with PgQ's snapshot technique: every event stores
--     its transaction id; a tick is a snapshot; a batch is what became
--     visible between two ticks.  The relay (src/relay.c) reads through the
--     very same functions as the reserved consumer "_relay".
-------------------------------------------------------------------------------

-- The writing transaction of each event, and the cluster it was written in
-- (pg_control's system identifier: a restore into another cluster brings
-- transaction ids that mean nothing there).  Rows written before 1.1 get
-- the constant defaults (transaction 1, cluster 0): "committed long ago",
-- visible in every tick.  Constant defaults first, so that the upgrade of a
-- large events table rewrites nothing; then the real defaults.
ALTER TABLE @extschema@.events
    ADD COLUMN txid xid8 NOT NULL DEFAULT '1',
    ADD COLUMN txid_cluster bigint NOT NULL DEFAULT 0;

CREATE FUNCTION @extschema@._cluster_id() RETURNS bigint
    AS 'MODULE_PATHNAME', 'milestones_cluster_id' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._cluster_id() IS
    'This cluster''s system identifier (pg_control), the cluster in which a transaction id means something.';

ALTER TABLE @extschema@.events
    ALTER COLUMN txid SET DEFAULT pg_catalog.pg_current_xact_id(),
    ALTER COLUMN txid_cluster SET DEFAULT @extschema@._cluster_id();
COMMENT ON COLUMN @extschema@.events.txid IS
    'The writing transaction (pg_current_xact_id()); consumers read events in the order their transactions became visible. 1 for events written before 1.1.';
COMMENT ON COLUMN @extschema@.events.txid_cluster IS
    'System identifier of the cluster that wrote the event (txid is only meaningful there); 0 for events written before 1.1.';
CREATE INDEX events_txid_idx ON @extschema@.events (txid);

-------------------------------------------------------------------------------
-- The notification payload.
-------------------------------------------------------------------------------
-- _payloads is THE definition of notification payloads: the relay's batches
-- and the fallback trigger build the same bytes in C (src/relay_batch.c,
-- held to it byte for byte by test/shell/20_notify.t in both modes) and run
-- this function where C cannot (see src/events.c, src/relay_batch.c).  The
-- payload is the 1.0 payload (event, states, actor, the order's parties and
-- currency, the time, then the detail) with the money of the detail as
-- strings with cents ("100.00": total, charged, refunded, amount, and gross,
-- fee, net inside payout), so that JSON readers that parse numbers as
-- floats cannot lose a cent.  In event_id order.
CREATE FUNCTION @extschema@._payloads(p_events @extschema@.events[])
RETURNS TABLE (event_id bigint, payload text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- PL/pgSQL, not SQL: a SQL function (not inlinable with its SET
    -- clause) plans this query again on every call, which cost the relay
    -- more than building the payloads; PL/pgSQL keeps the plan.
    RETURN QUERY
    SELECT e.event_id,
           (pg_catalog.jsonb_build_object(
                'event_id', e.event_id, 'order_id', e.order_id, 'event', e.event,
                'order_state', e.order_state, 'milestone', e.position,
                'milestone_state', e.milestone_state,
                'actor_role', e.actor_role, 'actor_id', e.actor_id,
                'seller_id', o.seller_id, 'buyer_id', o.buyer_id, 'currency', o.currency,
                'at', e.created_at)
            OPERATOR(pg_catalog.||) COALESCE(m.detail, '{}'::jsonb))::text
      FROM pg_catalog.unnest(p_events) e
      JOIN @extschema@.orders o ON o.order_id OPERATOR(pg_catalog.=) e.order_id
      LEFT JOIN LATERAL (
          SELECT pg_catalog.jsonb_object_agg(d.key,
              CASE
                  WHEN d.key OPERATOR(pg_catalog.=) ANY (ARRAY['total', 'charged', 'refunded', 'amount'])
                       AND pg_catalog.jsonb_typeof(d.value) OPERATOR(pg_catalog.=) 'number'
                  THEN pg_catalog.to_jsonb(pg_catalog.round((d.value OPERATOR(pg_catalog.#>>) '{}')::numeric, 2)::text)
                  WHEN d.key OPERATOR(pg_catalog.=) 'payout'
                       AND pg_catalog.jsonb_typeof(d.value) OPERATOR(pg_catalog.=) 'object'
                  THEN (SELECT COALESCE(pg_catalog.jsonb_object_agg(p.key,
                           CASE WHEN p.key OPERATOR(pg_catalog.=) ANY (ARRAY['gross', 'fee', 'net'])
                                     AND pg_catalog.jsonb_typeof(p.value) OPERATOR(pg_catalog.=) 'number'
                                THEN pg_catalog.to_jsonb(pg_catalog.round((p.value OPERATOR(pg_catalog.#>>) '{}')::numeric, 2)::text)
                                ELSE p.value END), '{}'::jsonb)
                          FROM pg_catalog.jsonb_each(d.value) p)
                  ELSE d.value
              END) AS detail
            FROM pg_catalog.jsonb_each(e.detail) d) m ON true
     ORDER BY e.event_id;
END
$$;
COMMENT ON FUNCTION @extschema@._payloads(@extschema@.events[]) IS
    'The JSON payloads of NOTIFY milestones for some events (money as strings), in event_id order; the one builder, used by the fallback trigger and the relay.';

-------------------------------------------------------------------------------
-- The events trigger and _event().
-------------------------------------------------------------------------------
-- In C (src/events.c): in a database the relay serves it only wakes the
-- relay at commit; otherwise (fallback) it sends NOTIFY milestones with
-- the payload _payloads() defines for NEW when settings.notify is on (built
-- in C where it can be).  Rows a restore re-inserts (they carry another
-- transaction's id) are not notified again.
CREATE FUNCTION @extschema@._events_notify() RETURNS trigger
    AS 'MODULE_PATHNAME', 'milestones_events_notify' LANGUAGE C;
COMMENT ON FUNCTION @extschema@._events_notify() IS
    'Trigger: wakes the relay at commit, or (fallback, no relay serving this database) sends NOTIFY milestones with the event''s payload.';
DROP TRIGGER IF EXISTS events_notify ON @extschema@.events;
CREATE TRIGGER events_notify AFTER INSERT ON @extschema@.events
    FOR EACH ROW EXECUTE FUNCTION @extschema@._events_notify();

-- _event (1.0) now only appends; the trigger above does the notifying.
CREATE OR REPLACE FUNCTION @extschema@._event(o @extschema@.orders, p_position smallint, p_event text,
                                    p_actor_role text, p_actor_id bigint, p_agent text, p_detail jsonb)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- The states after the change, read with the insert.
    INSERT INTO @extschema@.events (order_id, position, event, actor_role, actor_id, agent,
                                    order_state, milestone_state, detail, created_at)
    SELECT o.order_id, p_position, p_event, p_actor_role, p_actor_id, p_agent,
           x.state, m.state, COALESCE(p_detail, '{}'), @extschema@.now()
      FROM @extschema@.orders x
      LEFT JOIN @extschema@.order_milestones m
             ON m.order_id OPERATOR(pg_catalog.=) x.order_id AND m.position OPERATOR(pg_catalog.=) p_position
     WHERE x.order_id OPERATOR(pg_catalog.=) o.order_id;
END
$$;
COMMENT ON FUNCTION @extschema@._event(@extschema@.orders, smallint, text, text, bigint, text, jsonb) IS
    'Appends an event with the order''s and milestone''s new states; the events_notify trigger sends the notification.';

-------------------------------------------------------------------------------
-- Durable consumers (SPEC section 5, issue 12): PgQ's snapshot technique.
--
-- A tick is a snapshot (pg_current_snapshot()) with the cluster it was
-- taken in.  A consumer stands at a tick; the events it has not seen are
-- those whose transaction is visible in a newer tick but not in its own:
-- exactly what became visible between the two snapshots, so an event whose
-- transaction commits late is in a later range (it was in the older
-- snapshot's in-progress list), and a transaction left open holds back
-- only its own events.  A range is handed out in batches of at most
-- max_events, in event_id order; the consumer moves to the newer tick when
-- the last batch of the range is finished.  Nothing is ever deleted from
-- events; finished batches and unused ticks are.
-------------------------------------------------------------------------------
CREATE SEQUENCE @extschema@.consumer_tick_id_seq;
CREATE SEQUENCE @extschema@.consumer_id_seq;
CREATE SEQUENCE @extschema@.consumer_batch_id_seq;

CREATE TABLE @extschema@.consumer_ticks (
    tick_id    bigint PRIMARY KEY DEFAULT pg_catalog.nextval('@extschema@.consumer_tick_id_seq'),
    snapshot   pg_snapshot NOT NULL,
    cluster_id bigint NOT NULL,
    taken_at   timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
COMMENT ON TABLE @extschema@.consumer_ticks IS
    'Snapshots that bound the consumers'' batches (PgQ ticks), with the cluster they were taken in; pruned when no consumer or batch uses them.';

CREATE TABLE @extschema@.consumers (
    consumer_id      bigint PRIMARY KEY DEFAULT pg_catalog.nextval('@extschema@.consumer_id_seq'),
    name             text NOT NULL CONSTRAINT consumers_name_key UNIQUE,
    tick_id          bigint NOT NULL REFERENCES @extschema@.consumer_ticks (tick_id),
    upper_tick_id    bigint REFERENCES @extschema@.consumer_ticks (tick_id),
    after_event_id   bigint,
    registered_at    timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    batches_done     bigint NOT NULL DEFAULT 0,
    events_done      bigint NOT NULL DEFAULT 0,
    last_finished_at timestamptz,
    CONSTRAINT consumers_range_valid CHECK (upper_tick_id IS NOT NULL OR after_event_id IS NULL)
);
COMMENT ON TABLE @extschema@.consumers IS
    'Durable event consumers: each one''s position (tick_id: everything visible in that snapshot is done; while a range is being drained, upper_tick_id and the last event_id done in it).';

CREATE TABLE @extschema@.consumer_batches (
    batch_id       bigint PRIMARY KEY DEFAULT pg_catalog.nextval('@extschema@.consumer_batch_id_seq'),
    consumer_id    bigint NOT NULL CONSTRAINT consumer_batches_one_open UNIQUE
                   REFERENCES @extschema@.consumers (consumer_id) ON DELETE CASCADE,
    lower_tick_id  bigint NOT NULL REFERENCES @extschema@.consumer_ticks (tick_id),
    upper_tick_id  bigint NOT NULL REFERENCES @extschema@.consumer_ticks (tick_id),
    after_event_id bigint,
    last_event_id  bigint NOT NULL,
    events         integer NOT NULL,
    ends_range     boolean NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
COMMENT ON TABLE @extschema@.consumer_batches IS
    'The open (handed out, not yet finished) batch of each consumer: the events of a tick range with after_event_id < event_id <= last_event_id. Deleted when finished.';

-- _tick_sees says whether an event's transaction is visible in a tick.
-- Within one cluster it is the snapshot's answer.  Across clusters (a
-- restore): events written before 1.1 (cluster 0) and events restored from
-- another cluster into the current one are older than any tick taken here;
-- an event written here is newer than any tick brought by a restore.
CREATE FUNCTION @extschema@._tick_sees(ev_txid xid8, ev_cluster bigint, snap pg_snapshot,
                                       tick_cluster bigint, here bigint) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN ev_cluster OPERATOR(pg_catalog.=) tick_cluster THEN pg_catalog.pg_visible_in_snapshot(ev_txid, snap)
        WHEN ev_cluster OPERATOR(pg_catalog.=) 0 THEN true
        WHEN tick_cluster OPERATOR(pg_catalog.=) here THEN true
        ELSE false
    END
$$;
COMMENT ON FUNCTION @extschema@._tick_sees(xid8, bigint, pg_snapshot, bigint, bigint) IS
    'Whether an event (transaction id and cluster) is visible in a tick (snapshot and cluster); events and ticks of other clusters are ordered by the restore.';

-- _range_events returns the events that became visible between two ticks,
-- after one event_id and up to another, in event_id order.  When both ticks
-- are this cluster's, the events' transaction ids lie between the older
-- tick's xmin and the newer tick's xmax (an index range); after a restore
-- the general rule reads the whole table once.
CREATE FUNCTION @extschema@._range_events(p_lower bigint, p_upper bigint, p_after bigint,
                                          p_upto bigint, p_limit integer)
RETURNS SETOF @extschema@.events
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lo @extschema@.consumer_ticks;
    hi @extschema@.consumer_ticks;
    v_here bigint := @extschema@._cluster_id();
BEGIN
    SELECT * INTO STRICT lo FROM @extschema@.consumer_ticks WHERE tick_id OPERATOR(pg_catalog.=) p_lower;
    SELECT * INTO STRICT hi FROM @extschema@.consumer_ticks WHERE tick_id OPERATOR(pg_catalog.=) p_upper;
    IF lo.cluster_id OPERATOR(pg_catalog.=) v_here AND hi.cluster_id OPERATOR(pg_catalog.=) v_here THEN
        -- Materialized, so that the transaction id range (index
        -- events_txid_idx) drives the scan, never the event_id order.
        -- Dynamic (EXECUTE): planned every time with the actual bounds as
        -- constants, so that the plan cache never settles on a generic
        -- plan that does not know how narrow the range is (a scan of the
        -- whole table on every relay batch).  The event_id bounds apply
        -- outside the CTE: inside, the planner ANDed the (mostly
        -- unbounded) event_id range of the primary key into a bitmap
        -- scan, reading the whole index on every call.
        RETURN QUERY EXECUTE
        'WITH r AS MATERIALIZED (
            SELECT e.* FROM @extschema@.events e
             WHERE e.txid OPERATOR(pg_catalog.>=) $1
               AND e.txid OPERATOR(pg_catalog.<) $2
               AND e.txid_cluster OPERATOR(pg_catalog.=) $3
               AND NOT pg_catalog.pg_visible_in_snapshot(e.txid, $4)
               AND pg_catalog.pg_visible_in_snapshot(e.txid, $5))
        SELECT * FROM r
         WHERE r.event_id OPERATOR(pg_catalog.>) $6
           AND r.event_id OPERATOR(pg_catalog.<=) $7
         ORDER BY r.event_id LIMIT $8'
        USING pg_catalog.pg_snapshot_xmin(lo.snapshot), pg_catalog.pg_snapshot_xmax(hi.snapshot),
              v_here, lo.snapshot, hi.snapshot,
              COALESCE(p_after, 0), COALESCE(p_upto, 9223372036854775807), p_limit;
    ELSE
        RETURN QUERY
        SELECT e.* FROM @extschema@.events e
         WHERE NOT @extschema@._tick_sees(e.txid, e.txid_cluster, lo.snapshot, lo.cluster_id, v_here)
           AND @extschema@._tick_sees(e.txid, e.txid_cluster, hi.snapshot, hi.cluster_id, v_here)
           AND e.event_id OPERATOR(pg_catalog.>) COALESCE(p_after, 0)
           AND e.event_id OPERATOR(pg_catalog.<=) COALESCE(p_upto, 9223372036854775807)
         ORDER BY e.event_id
         LIMIT p_limit;
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@._range_events(bigint, bigint, bigint, bigint, integer) IS
    'Events that became visible between two ticks, with after < event_id <= upto, in event_id order, at most p_limit.';

-- _take_tick stores the current snapshot as a new tick.  PostgreSQL leaves
-- the caller's own transaction out of its snapshot's in-progress list, and
-- its xmax can be at or below the caller's own id (xmax is the newest
-- completed id + 1; ids at or above it, running or not yet assigned, are
-- simply "not visible").  The tick counts the caller's own transaction, and
-- every id from xmax up to it, as in progress and moves xmax past it, so
-- that the events this transaction writes (before or after the tick) fall
-- in the range after the tick once it has committed, and an id between
-- xmax and our own cannot pass for committed: none is skipped.
CREATE FUNCTION @extschema@._take_tick() RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_me bigint := pg_catalog.pg_current_xact_id()::text::bigint;
    v_snap pg_snapshot := pg_catalog.pg_current_snapshot();
    v_xmin bigint := pg_catalog.pg_snapshot_xmin(v_snap)::text::bigint;
    v_xmax bigint := pg_catalog.pg_snapshot_xmax(v_snap)::text::bigint;
    v_tick bigint;
BEGIN
    INSERT INTO @extschema@.consumer_ticks (snapshot, cluster_id)
    SELECT pg_catalog.format('%s:%s:%s', LEAST(v_xmin, v_me), GREATEST(v_xmax, v_me OPERATOR(pg_catalog.+) 1),
               (SELECT pg_catalog.string_agg(u.x::text, ',' ORDER BY u.x)
                  FROM (SELECT pg_catalog.pg_snapshot_xip(v_snap)::text::bigint
                        UNION SELECT pg_catalog.generate_series(LEAST(v_xmax, v_me), v_me)) u(x)))::pg_snapshot,
           @extschema@._cluster_id()
    RETURNING tick_id INTO v_tick;
    RETURN v_tick;
END
$$;
COMMENT ON FUNCTION @extschema@._take_tick() IS
    'Stores the current snapshot as a tick, with the caller''s own transaction (and any id between the snapshot''s xmax and it) counted as in progress; returns its id.';

-- _prune_ticks deletes the given ticks (all ticks when NULL) that no
-- consumer and no open batch stands on.  The hot paths name the one or two
-- ticks a consumer just left, so pruning costs index lookups, not a scan.
CREATE FUNCTION @extschema@._prune_ticks(p_ticks bigint[] DEFAULT NULL) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- PL/pgSQL, not SQL, so that the plan is kept across calls (the relay
    -- prunes after every batch).
    DELETE FROM @extschema@.consumer_ticks t
     WHERE (p_ticks IS NULL OR t.tick_id OPERATOR(pg_catalog.=) ANY (p_ticks))
       AND NOT EXISTS (SELECT FROM @extschema@.consumers c
                        WHERE c.tick_id OPERATOR(pg_catalog.=) t.tick_id
                           OR c.upper_tick_id OPERATOR(pg_catalog.=) t.tick_id)
       AND NOT EXISTS (SELECT FROM @extschema@.consumer_batches b
                        WHERE b.lower_tick_id OPERATOR(pg_catalog.=) t.tick_id
                           OR b.upper_tick_id OPERATOR(pg_catalog.=) t.tick_id);
END
$$;
COMMENT ON FUNCTION @extschema@._prune_ticks(bigint[]) IS
    'Deletes the given ticks (all when NULL) that no consumer and no open batch uses.';

-- _consumer_name_check refuses a NULL, blank, untrimmed or overlong name.
CREATE FUNCTION @extschema@._consumer_name_check(p_name text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_name IS NULL THEN
        RAISE EXCEPTION 'consumer name must not be NULL'
            USING ERRCODE = '22023', HINT = 'Pass the name the consumer was registered with.';
    END IF;
    IF pg_catalog.length(p_name) NOT BETWEEN 1 AND 63 OR p_name OPERATOR(pg_catalog.<>) pg_catalog.btrim(p_name) THEN
        RAISE EXCEPTION 'invalid consumer name'
            USING ERRCODE = '22023',
                  DETAIL = pg_catalog.format('The name %L is blank, longer than 63 characters or has surrounding spaces.', p_name),
                  HINT = 'Use a short name such as ''payments''.';
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@._consumer_name_check(text) IS
    'Refuses (22023) a consumer name that is NULL, blank, longer than 63 characters or untrimmed.';

-- _register_consumer registers a consumer standing at a new tick: it will
-- read every event whose transaction becomes visible after this one.  The
-- relay registers its reserved consumer "_relay" through it.
CREATE FUNCTION @extschema@._register_consumer(p_name text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@._consumer_name_check(p_name);
    -- Serialize registrations of one name: the second one sees the first.
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('milestones.consumer:' OPERATOR(pg_catalog.||) p_name));
    IF EXISTS (SELECT FROM @extschema@.consumers WHERE name OPERATOR(pg_catalog.=) p_name) THEN
        RAISE EXCEPTION 'consumer "%" is already registered', p_name
            USING ERRCODE = '22023',
                  DETAIL = 'Consumer names are unique; the registered consumer keeps its position.',
                  HINT = 'Use the registered consumer, or unregister_consumer() it first.';
    END IF;
    INSERT INTO @extschema@.consumers (name, tick_id) VALUES (p_name, @extschema@._take_tick());
END
$$;
COMMENT ON FUNCTION @extschema@._register_consumer(text) IS
    'Registers a consumer (reserved names included) at a new tick; 22023 when the name is taken.';

-- SECURITY DEFINER: the consumer tables are the owner's; the application
-- (milestones_app) registers through this function only.
CREATE FUNCTION @extschema@.register_consumer(name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_catalog.left(register_consumer.name, 1) OPERATOR(pg_catalog.=) '_' THEN
        RAISE EXCEPTION 'consumer names starting with "_" are reserved'
            USING ERRCODE = '22023',
                  DETAIL = pg_catalog.format('%L is reserved for the extension (the relay reads as "_relay").', register_consumer.name),
                  HINT = 'Choose a name that starts with a letter or digit.';
    END IF;
    PERFORM @extschema@._register_consumer(register_consumer.name);
END
$$;
COMMENT ON FUNCTION @extschema@.register_consumer(text) IS
    'Registers a durable event consumer: it will read, in batches and in commit order, every event committed from now on. 22023 for a taken, reserved or invalid name.';

-- _consumer_row returns the consumer's row, locked: one worker per consumer
-- at a time moves it (the others wait, then see what it did).
CREATE FUNCTION @extschema@._consumer_row(p_name text) RETURNS @extschema@.consumers
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c @extschema@.consumers;
BEGIN
    PERFORM @extschema@._consumer_name_check(p_name);
    SELECT * INTO c FROM @extschema@.consumers WHERE name OPERATOR(pg_catalog.=) p_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'consumer "%" does not exist', p_name
            USING ERRCODE = 'P0002',
                  HINT = 'Register it first with milestones.register_consumer(name).';
    END IF;
    RETURN c;
END
$$;
COMMENT ON FUNCTION @extschema@._consumer_row(text) IS
    'The named consumer''s row, locked FOR UPDATE; P0002 when there is none.';

-- SECURITY DEFINER: see register_consumer.
CREATE FUNCTION @extschema@.unregister_consumer(name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c @extschema@.consumers;
BEGIN
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
COMMENT ON FUNCTION @extschema@.unregister_consumer(text) IS
    'Removes a consumer, its position and its open batch (events are kept). P0002 when unknown.';

-- _next_batch is next_batch without the reserved-name rule (the relay uses it).
CREATE FUNCTION @extschema@._next_batch(p_consumer text, p_max_events integer) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c @extschema@.consumers;
    v_batch bigint;
    v_new_tick boolean := false;
    v_ids bigint[];
    n integer;
BEGIN
    IF p_max_events IS NULL OR p_max_events NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'max_events must be between 1 and 100000'
            USING ERRCODE = '22023',
                  DETAIL = pg_catalog.format('max_events was %s.', COALESCE(p_max_events::text, 'NULL')),
                  HINT = 'Omit it for batches of up to 1000 events.';
    END IF;
    c := @extschema@._consumer_row(p_consumer);
    -- At least once: an unfinished batch is handed out again.
    SELECT batch_id INTO v_batch FROM @extschema@.consumer_batches
     WHERE consumer_id OPERATOR(pg_catalog.=) c.consumer_id;
    IF FOUND THEN
        RETURN v_batch;
    END IF;
    LOOP
        IF c.upper_tick_id IS NULL THEN
            -- Nothing being drained: a new tick bounds the next range.
            c.upper_tick_id := @extschema@._take_tick();
            c.after_event_id := NULL;
            v_new_tick := true;
        END IF;
        SELECT pg_catalog.array_agg(r.event_id ORDER BY r.event_id) INTO v_ids
          FROM @extschema@._range_events(c.tick_id, c.upper_tick_id, c.after_event_id, NULL, p_max_events OPERATOR(pg_catalog.+) 1) r;
        n := COALESCE(pg_catalog.cardinality(v_ids), 0);
        IF n OPERATOR(pg_catalog.>) 0 THEN
            n := LEAST(n, p_max_events);
            INSERT INTO @extschema@.consumer_batches (consumer_id, lower_tick_id, upper_tick_id,
                                                      after_event_id, last_event_id, events, ends_range)
            VALUES (c.consumer_id, c.tick_id, c.upper_tick_id, c.after_event_id, v_ids[n], n,
                    pg_catalog.cardinality(v_ids) OPERATOR(pg_catalog.<=) p_max_events)
            RETURNING batch_id INTO v_batch;
            UPDATE @extschema@.consumers
               SET upper_tick_id = c.upper_tick_id, after_event_id = c.after_event_id
             WHERE consumer_id OPERATOR(pg_catalog.=) c.consumer_id;
            RETURN v_batch;
        END IF;
        -- The range is drained: the consumer moves to its newer tick.
        UPDATE @extschema@.consumers
           SET tick_id = c.upper_tick_id, upper_tick_id = NULL, after_event_id = NULL
         WHERE consumer_id OPERATOR(pg_catalog.=) c.consumer_id;
        PERFORM @extschema@._prune_ticks(ARRAY[c.tick_id]);
        c.tick_id := c.upper_tick_id;
        c.upper_tick_id := NULL;
        c.after_event_id := NULL;
        IF v_new_tick THEN
            RETURN NULL;            -- nothing new since the last tick
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@._next_batch(text, integer) IS
    'next_batch for any consumer, reserved names included (the relay reads through it).';

-- SECURITY DEFINER: see register_consumer.
CREATE FUNCTION @extschema@.next_batch(consumer text, max_events integer DEFAULT 1000) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_catalog.left(next_batch.consumer, 1) OPERATOR(pg_catalog.=) '_' THEN
        RAISE EXCEPTION 'consumer names starting with "_" are reserved'
            USING ERRCODE = '22023',
                  DETAIL = pg_catalog.format('%L belongs to the extension.', next_batch.consumer),
                  HINT = 'Register a consumer of your own with register_consumer(name).';
    END IF;
    RETURN @extschema@._next_batch(next_batch.consumer, next_batch.max_events);
END
$$;
COMMENT ON FUNCTION @extschema@.next_batch(text, integer) IS
    'The consumer''s next batch of events (commit order; at most max_events), or its unfinished batch again, or NULL when nothing new. Read it with batch_events(), then finish_batch().';

-- _batch_row returns an open batch, checked against the consumer named.
CREATE FUNCTION @extschema@._batch_row(p_batch bigint, p_consumer text) RETURNS @extschema@.consumer_batches
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    b @extschema@.consumer_batches;
    v_owner text;
BEGIN
    IF p_batch IS NULL THEN
        RAISE EXCEPTION 'batch_id must not be NULL'
            USING ERRCODE = '22023', HINT = 'Pass the id next_batch() returned; NULL from next_batch() means there is nothing to read.';
    END IF;
    SELECT * INTO b FROM @extschema@.consumer_batches WHERE batch_id OPERATOR(pg_catalog.=) p_batch;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch % does not exist', p_batch
            USING ERRCODE = 'P0002',
                  DETAIL = 'It was never handed out, or it was finished already.',
                  HINT = 'Call next_batch() for the current batch.';
    END IF;
    SELECT name INTO v_owner FROM @extschema@.consumers WHERE consumer_id OPERATOR(pg_catalog.=) b.consumer_id;
    IF p_consumer IS NOT NULL AND p_consumer OPERATOR(pg_catalog.<>) v_owner THEN
        RAISE EXCEPTION 'batch % belongs to another consumer', p_batch
            USING ERRCODE = '22023',
                  DETAIL = pg_catalog.format('The batch was handed out to %L, not to %L.', v_owner, p_consumer),
                  HINT = 'Use the batch id that next_batch() returned for this consumer.';
    END IF;
    RETURN b;
END
$$;
COMMENT ON FUNCTION @extschema@._batch_row(bigint, text) IS
    'An open batch; 22023 for NULL or (when a consumer is named) another consumer''s batch, P0002 when unknown or finished.';

-- SECURITY DEFINER: the events table is the owner's.
CREATE FUNCTION @extschema@.batch_events(batch_id bigint, consumer text DEFAULT NULL)
RETURNS SETOF @extschema@.events
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    b @extschema@.consumer_batches := @extschema@._batch_row(batch_events.batch_id, batch_events.consumer);
BEGIN
    RETURN QUERY SELECT * FROM @extschema@._range_events(b.lower_tick_id, b.upper_tick_id,
                                                          b.after_event_id, b.last_event_id, b.events);
END
$$;
COMMENT ON FUNCTION @extschema@.batch_events(bigint, text) IS
    'The events of an open batch, in event_id order (the same rows every time it is read). With consumer, 22023 if the batch is another consumer''s.';

-- _finish_batch is finish_batch for any consumer (the relay uses it).
CREATE FUNCTION @extschema@._finish_batch(p_batch bigint, p_consumer text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    b @extschema@.consumer_batches := @extschema@._batch_row(p_batch, p_consumer);
    c @extschema@.consumers;
BEGIN
    -- Lock the consumer, then look again: a concurrent finish may have won.
    SELECT * INTO c FROM @extschema@.consumers WHERE consumer_id OPERATOR(pg_catalog.=) b.consumer_id FOR UPDATE;
    b := @extschema@._batch_row(p_batch, p_consumer);
    IF b.ends_range THEN
        UPDATE @extschema@.consumers
           SET tick_id = b.upper_tick_id, upper_tick_id = NULL, after_event_id = NULL,
               batches_done = batches_done OPERATOR(pg_catalog.+) 1,
               events_done = events_done OPERATOR(pg_catalog.+) b.events,
               last_finished_at = pg_catalog.clock_timestamp()
         WHERE consumer_id OPERATOR(pg_catalog.=) b.consumer_id;
    ELSE
        UPDATE @extschema@.consumers
           SET after_event_id = b.last_event_id,
               batches_done = batches_done OPERATOR(pg_catalog.+) 1,
               events_done = events_done OPERATOR(pg_catalog.+) b.events,
               last_finished_at = pg_catalog.clock_timestamp()
         WHERE consumer_id OPERATOR(pg_catalog.=) b.consumer_id;
    END IF;
    DELETE FROM @extschema@.consumer_batches WHERE batch_id OPERATOR(pg_catalog.=) b.batch_id;
    PERFORM @extschema@._prune_ticks(ARRAY[b.lower_tick_id, b.upper_tick_id]);
END
$$;
COMMENT ON FUNCTION @extschema@._finish_batch(bigint, text) IS
    'finish_batch for any consumer, reserved names included.';

-- SECURITY DEFINER: see register_consumer.
CREATE FUNCTION @extschema@.finish_batch(batch_id bigint, consumer text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@._finish_batch(finish_batch.batch_id, finish_batch.consumer);
END
$$;
COMMENT ON FUNCTION @extschema@.finish_batch(bigint, text) IS
    'Marks a batch done: its consumer moves past it. P0002 when unknown or finished already; with consumer, 22023 if the batch is another consumer''s.';

-- consumer_status: each consumer's position and lag.  pending_events and
-- lag count the events committed after its position (its tick), and the
-- age of the oldest of them.
CREATE VIEW @extschema@.consumer_status AS
SELECT c.name AS consumer,
       c.registered_at,
       t.taken_at AS position_at,
       b.batch_id AS open_batch,
       b.events AS open_batch_events,
       c.batches_done,
       c.events_done,
       c.last_finished_at,
       p.pending_events,
       COALESCE(pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) p.oldest, interval '0') AS lag
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
    'Each durable consumer: registration, position (the snapshot it has read up to), open batch, totals, events committed since its position and the age of the oldest of them (lag).';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.consumer_ticks', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.consumers', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.consumer_batches', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.consumer_tick_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.consumer_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.consumer_batch_id_seq', '');

-------------------------------------------------------------------------------
-- The relay (src/relay.c): a background worker that sends the notifications
-- of the database named by milestones.database_name, reading the events as
-- the reserved consumer "_relay".
-------------------------------------------------------------------------------
-- _has_pending says, without writing, whether a consumer has anything to
-- read: an open batch, a range being drained, or events committed since its
-- position.  The relay asks it before taking a tick, so an idle database
-- costs it no transaction id.
CREATE FUNCTION @extschema@._has_pending(p_consumer text) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c @extschema@.consumers;
    t @extschema@.consumer_ticks;
    v_here bigint := @extschema@._cluster_id();
    v_found boolean;
BEGIN
    SELECT * INTO c FROM @extschema@.consumers WHERE name OPERATOR(pg_catalog.=) p_consumer;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF c.upper_tick_id IS NOT NULL
       OR EXISTS (SELECT FROM @extschema@.consumer_batches b WHERE b.consumer_id OPERATOR(pg_catalog.=) c.consumer_id) THEN
        RETURN true;
    END IF;
    SELECT * INTO t FROM @extschema@.consumer_ticks WHERE tick_id OPERATOR(pg_catalog.=) c.tick_id;
    IF t.cluster_id OPERATOR(pg_catalog.<>) v_here THEN
        RETURN true;                -- restored from another cluster: let next_batch sort it out
    END IF;
    -- Newest first along events_txid_idx: a new event is found at once,
    -- and without one the scan stops at the position's xmin.  Dynamic
    -- (EXECUTE), so that it is planned with the actual xmin: a cached
    -- generic plan does not know the range is narrow and reads the whole
    -- table on every look.
    EXECUTE 'SELECT EXISTS (SELECT FROM (SELECT e.txid FROM @extschema@.events e
                                 WHERE e.txid OPERATOR(pg_catalog.>=) $1
                                   AND e.txid_cluster OPERATOR(pg_catalog.=) $2
                                   AND NOT pg_catalog.pg_visible_in_snapshot(e.txid, $3)
                                 ORDER BY e.txid DESC LIMIT 1) x)'
       INTO v_found
       USING pg_catalog.pg_snapshot_xmin(t.snapshot), v_here, t.snapshot;
    RETURN v_found;
END
$$;
COMMENT ON FUNCTION @extschema@._has_pending(text) IS
    'Whether a consumer has an open batch, a range being drained, or events committed since its position (read-only).';

-- _relay_start runs when a relay worker starts: it registers the relay's
-- consumer when missing, and moves it to the present when its position is
-- older than the server's start.  Listeners do not outlive a server restart
-- (a notification is a wake-up, not a queue), and a database that ran in
-- fallback mode has had those events notified at commit already; within one
-- server life (a killed relay, a crash of any backend) the relay resumes
-- from its saved position.
CREATE FUNCTION @extschema@._relay_start() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c @extschema@.consumers;
BEGIN
    SELECT * INTO c FROM @extschema@.consumers WHERE name OPERATOR(pg_catalog.=) '_relay' FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM @extschema@._register_consumer('_relay');
        RETURN;
    END IF;
    IF (SELECT t.taken_at FROM @extschema@.consumer_ticks t WHERE t.tick_id OPERATOR(pg_catalog.=) c.tick_id)
       OPERATOR(pg_catalog.<) pg_catalog.pg_postmaster_start_time() THEN
        DELETE FROM @extschema@.consumer_batches WHERE consumer_id OPERATOR(pg_catalog.=) c.consumer_id;
        UPDATE @extschema@.consumers
           SET tick_id = @extschema@._take_tick(), upper_tick_id = NULL, after_event_id = NULL
         WHERE consumer_id OPERATOR(pg_catalog.=) c.consumer_id;
        PERFORM @extschema@._prune_ticks();
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@._relay_start() IS
    'Relay start: registers the "_relay" consumer, or moves it to the present when its position predates the server start.';

-- _relay_batch is one unit of the relay's work, in the relay's transaction:
-- the next batch of "_relay", its payloads in event order (NULL payloads
-- when settings.notify is off), and the batch finished, so that the NOTIFYs
-- the relay sends for these rows and its new position commit together.
-- No rows when nothing is new.
CREATE FUNCTION @extschema@._relay_batch(p_max_events integer)
RETURNS TABLE (event_id bigint, payload text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_batch bigint := @extschema@._next_batch('_relay', p_max_events);
    b @extschema@.consumer_batches;
BEGIN
    IF v_batch IS NULL THEN
        RETURN;
    END IF;
    SELECT * INTO STRICT b FROM @extschema@.consumer_batches WHERE batch_id OPERATOR(pg_catalog.=) v_batch;
    IF (SELECT s.notify FROM @extschema@.settings s) THEN
        RETURN QUERY
        SELECT p.event_id, p.payload
          FROM @extschema@._payloads(ARRAY(
                   SELECT e FROM @extschema@._range_events(b.lower_tick_id, b.upper_tick_id,
                                                           b.after_event_id, b.last_event_id, b.events) e)) p
         ORDER BY p.event_id;
    ELSE
        RETURN QUERY
        SELECT e.event_id, NULL::text
          FROM @extschema@._range_events(b.lower_tick_id, b.upper_tick_id,
                                         b.after_event_id, b.last_event_id, b.events) e
         ORDER BY e.event_id;
    END IF;
    PERFORM @extschema@._finish_batch(v_batch, '_relay');
END
$$;
COMMENT ON FUNCTION @extschema@._relay_batch(integer) IS
    'The relay''s unit of work: the next batch of "_relay", its payloads in event order (NULL when settings.notify is off), finished in the same transaction.';

CREATE FUNCTION @extschema@._relay_serves() RETURNS boolean
    AS 'MODULE_PATHNAME', 'milestones_relay_serves' LANGUAGE C STABLE;
COMMENT ON FUNCTION @extschema@._relay_serves() IS
    'Whether the relay sends this database''s notifications (preloaded, registered, milestones.database_name, not given up).';

-- The relay's consumer exists from the install on in the database it
-- serves, so no event of the first moments is missed.
SELECT @extschema@._register_consumer('_relay')
 WHERE @extschema@._relay_serves()
   AND NOT EXISTS (SELECT FROM @extschema@.consumers WHERE name OPERATOR(pg_catalog.=) '_relay');

CREATE FUNCTION @extschema@._relay_info(
    OUT preloaded boolean, OUT registered boolean, OUT database_name text, OUT serves_this_database boolean,
    OUT pid integer, OUT started_at timestamptz, OUT heartbeat timestamptz, OUT paused boolean,
    OUT gave_up boolean, OUT notifications bigint, OUT batches bigint, OUT last_batch_at timestamptz,
    OUT last_error text)
    AS 'MODULE_PATHNAME', 'milestones_relay_info' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@._relay_info() IS
    'The relay as this backend and the shared memory see it (for relay_status()).';

-- SECURITY DEFINER: reads the relay's consumer position, which readers
-- cannot read directly.
CREATE FUNCTION @extschema@.relay_status(
    OUT mode text, OUT reason text, OUT database_name text, OUT relay_pid integer,
    OUT relay_started_at timestamptz, OUT paused boolean, OUT position_at timestamptz,
    OUT pending_events bigint, OUT lag interval, OUT notifications_sent bigint,
    OUT batches_sent bigint, OUT last_batch_at timestamptz, OUT last_error text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    i record;
    s record;
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
    IF i.serves_this_database THEN
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
        reason := CASE
            WHEN NOT i.preloaded THEN 'milestones is not in shared_preload_libraries: NOTIFY at commit'
            WHEN NOT i.registered THEN 'no background worker slot was free at server start (max_worker_processes): NOTIFY at commit'
            WHEN i.gave_up THEN pg_catalog.format('the relay stopped when its database %I was dropped: NOTIFY at commit', i.database_name)
            ELSE pg_catalog.format('the relay serves database %I (milestones.database_name), not this one: NOTIFY at commit', i.database_name)
        END;
        relay_pid := NULL;
    END IF;
    RETURN;
END
$$;
COMMENT ON FUNCTION @extschema@.relay_status() IS
    'Which way notifications leave this database (relay or fallback NOTIFY at commit) and why; the relay''s process, position, pending events, lag and totals.';

-------------------------------------------------------------------------------
-- Privileges of the objects above (the 1.0 REVOKE ... ON ALL FUNCTIONS ran
-- before this file).  The helpers and the trigger are the owner's alone.
-------------------------------------------------------------------------------
REVOKE ALL ON FUNCTION
    @extschema@._cluster_id(),
    @extschema@._payloads(@extschema@.events[]),
    @extschema@._events_notify(),
    @extschema@._tick_sees(xid8, bigint, pg_snapshot, bigint, bigint),
    @extschema@._range_events(bigint, bigint, bigint, bigint, integer),
    @extschema@._take_tick(),
    @extschema@._prune_ticks(bigint[]),
    @extschema@._consumer_name_check(text),
    @extschema@._register_consumer(text),
    @extschema@._consumer_row(text),
    @extschema@._next_batch(text, integer),
    @extschema@._batch_row(bigint, text),
    @extschema@._finish_batch(bigint, text),
    @extschema@.register_consumer(text),
    @extschema@.unregister_consumer(text),
    @extschema@.next_batch(text, integer),
    @extschema@.batch_events(bigint, text),
    @extschema@.finish_batch(bigint, text),
    @extschema@._has_pending(text),
    @extschema@._relay_start(),
    @extschema@._relay_batch(integer),
    @extschema@._relay_serves(),
    @extschema@._relay_info(),
    @extschema@.relay_status()
    FROM PUBLIC;
REVOKE ALL ON @extschema@.consumer_ticks, @extschema@.consumers, @extschema@.consumer_batches,
    @extschema@.consumer_status FROM PUBLIC;
REVOKE ALL ON SEQUENCE @extschema@.consumer_tick_id_seq, @extschema@.consumer_id_seq,
    @extschema@.consumer_batch_id_seq FROM PUBLIC;

-- The application (and support, which holds the app's rights) consumes.
GRANT EXECUTE ON FUNCTION
    @extschema@.register_consumer(text),
    @extschema@.unregister_consumer(text),
    @extschema@.next_batch(text, integer),
    @extschema@.batch_events(bigint, text),
    @extschema@.finish_batch(bigint, text)
    TO milestones_app, milestones_support;
-- Everyone with a milestones role may see how notifications leave (SPEC 7).
GRANT EXECUTE ON FUNCTION @extschema@.relay_status() TO milestones_app, milestones_support, milestones_reader;
-- Everyone with a milestones role may watch the consumers' positions.
GRANT SELECT ON @extschema@.consumer_status TO milestones_app, milestones_support, milestones_reader;
