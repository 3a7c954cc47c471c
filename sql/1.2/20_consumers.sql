
-------------------------------------------------------------------------------
-- 20_consumers.sql: durable consumers and the relay catch up in bounded
-- memory and linear time after a long absence (issue 19, item 3).
--
-- In 1.1 a consumer that comes back after a long absence takes one tick
-- that covers everything written meanwhile, and every batch of that one
-- huge range evaluated _range_events over the whole range again: the
-- catch-up of N events cost N * N / max_events rows read (quadratic), and
-- the relay's C path held the whole range in memory.
--
-- 1.2 bounds each range by a tick of its own.  A tick is a snapshot
-- (xmin, xmax, xip).  Given the consumer's tick lo and a new snapshot hi,
-- every X with lo.xmax <= X <= hi.xmax gives a valid snapshot between
-- them, "hi cut at X":
--
--     hi' = (least(hi.xmin, X), X, the ids of hi.xip below X)
--
-- It sees exactly what hi sees below X, so visible(lo) is in visible(hi'),
-- visible(hi') is in visible(hi), and a larger X sees more (monotone).
-- _range_bound chooses X so that the range (lo, hi'] holds at most
-- max_events events: it walks events_txid_idx in transaction id order
-- (first the transactions in progress at lo that hi sees, then the ids
-- from lo.xmax up) and stops before the transaction whose events would
-- overflow the batch; a single transaction larger than a batch still
-- forms a range of its own, drained in batches by after_event_id as in
-- 1.1.  So each range is about one batch, read with index probes of its
-- own transaction ids, and each finished batch moves the consumer's
-- position (consumer_status and relay_status() count down as it goes).
--
-- What is handed out does not change: the events that became visible
-- between two ticks, in batches that follow the order in which the
-- ticks saw the transactions; inside a batch in event_id order.  The
-- relay's common batch in C (src/relay_batch.c: WalkRange, CutTick)
-- applies the same rule.
-------------------------------------------------------------------------------

-- _tick_snapshot is the snapshot _take_tick() stores: the current one,
-- with the caller's own transaction (and any id between the snapshot's
-- xmax and it) counted as in progress (see _take_tick in 30_events.sql).
CREATE FUNCTION @extschema@._tick_snapshot() RETURNS pg_snapshot
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_me bigint := pg_catalog.pg_current_xact_id()::text::bigint;
    v_snap pg_snapshot := pg_catalog.pg_current_snapshot();
    v_xmin bigint := pg_catalog.pg_snapshot_xmin(v_snap)::text::bigint;
    v_xmax bigint := pg_catalog.pg_snapshot_xmax(v_snap)::text::bigint;
BEGIN
    RETURN pg_catalog.format('%s:%s:%s', LEAST(v_xmin, v_me), GREATEST(v_xmax, v_me OPERATOR(pg_catalog.+) 1),
               (SELECT pg_catalog.string_agg(u.x::text, ',' ORDER BY u.x)
                  FROM (SELECT pg_catalog.pg_snapshot_xip(v_snap)::text::bigint
                        UNION SELECT pg_catalog.generate_series(LEAST(v_xmax, v_me), v_me)) u(x)))::pg_snapshot;
END
$$;
COMMENT ON FUNCTION @extschema@._tick_snapshot() IS
    'The snapshot a new tick stores: the current one, with the caller''s own transaction (and any id between the snapshot''s xmax and it) counted as in progress.';

-- _take_tick (1.1) stores _tick_snapshot() as a new tick: the same
-- snapshot as in 1.1, written once.
CREATE OR REPLACE FUNCTION @extschema@._take_tick() RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_tick bigint;
BEGIN
    INSERT INTO @extschema@.consumer_ticks (snapshot, cluster_id)
    VALUES (@extschema@._tick_snapshot(), @extschema@._cluster_id())
    RETURNING tick_id INTO v_tick;
    RETURN v_tick;
END
$$;

-- _tick_cut is "hi cut at X": the snapshot that sees what p_snap sees
-- below p_upto, and nothing from p_upto on.  p_snap itself when p_upto is
-- at or past its xmax.
CREATE FUNCTION @extschema@._tick_cut(p_snap pg_snapshot, p_upto xid8) RETURNS pg_snapshot
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN p_upto OPERATOR(pg_catalog.>=) pg_catalog.pg_snapshot_xmax(p_snap) THEN p_snap
        ELSE pg_catalog.format('%s:%s:%s', LEAST(pg_catalog.pg_snapshot_xmin(p_snap), p_upto), p_upto,
                 (SELECT pg_catalog.string_agg(x::text, ',' ORDER BY x)
                    FROM pg_catalog.pg_snapshot_xip(p_snap) x
                   WHERE x OPERATOR(pg_catalog.<) p_upto))::pg_snapshot
    END
$$;
COMMENT ON FUNCTION @extschema@._tick_cut(pg_snapshot, xid8) IS
    'A snapshot cut at a transaction id: it sees what the given snapshot sees below that id, and nothing from it on.';

-- _range_bound chooses where the range from tick lo to the new snapshot hi
-- (both of this cluster) ends: the X at which hi is cut, so that the range
-- holds at most p_max_events events when it can.  It counts, without
-- copying anything, along events_txid_idx:
--
--   1. the events of the transactions in progress at lo (lo.xip) that hi
--      sees: they became visible since lo, whatever X is;
--   2. then, from lo.xmax up in transaction id order, the events hi sees,
--      and stops at the first event that would not fit: X is its
--      transaction id, so that its transaction comes whole in a later
--      range.  If that is the first transaction of the walk (and step 1
--      found nothing), it alone is larger than a batch: X is past it, and
--      it forms a range of its own, drained in several batches.
--
-- hi.xmax when everything fits; lo.xmax when step 1 fills the batch.  The
-- relay's C path (src/relay_batch.c, WalkRange) applies the same rule.
-- Dynamic (EXECUTE), so that each query is planned with its actual
-- bounds: an index range scan that stops after p_max_events entries.
-- enable_sort is off in here: a backlog is the rows written since the
-- table was last analyzed, so the planner estimates a few hundred rows
-- from the position up and, without it, read them all by bitmap and
-- sorted them for each batch (a catch-up of N events cost N * N /
-- max_events, x3 per event at 4 times the backlog); the walk in index
-- order reads one batch whatever the statistics say.
CREATE FUNCTION @extschema@._range_bound(p_lo pg_snapshot, p_hi pg_snapshot, p_max_events integer) RETURNS xid8
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET enable_sort = off AS $$
DECLARE
    v_here bigint := @extschema@._cluster_id();
    v_from xid8 := pg_catalog.pg_snapshot_xmax(p_lo);
    v_late bigint;
    v_budget bigint;
    v_first xid8;
    v_over xid8;
BEGIN
    EXECUTE 'SELECT pg_catalog.count(*) FROM @extschema@.events e
              WHERE e.txid OPERATOR(pg_catalog.=) ANY ($1)
                AND e.txid_cluster OPERATOR(pg_catalog.=) $2
                AND pg_catalog.pg_visible_in_snapshot(e.txid, $3)'
       INTO v_late
       USING ARRAY(SELECT pg_catalog.pg_snapshot_xip(p_lo)), v_here, p_hi;
    v_budget := p_max_events OPERATOR(pg_catalog.-) v_late;
    IF v_budget OPERATOR(pg_catalog.<=) 0 THEN
        RETURN v_from;
    END IF;
    EXECUTE 'SELECT e.txid FROM @extschema@.events e
              WHERE e.txid OPERATOR(pg_catalog.>=) $1
                AND e.txid OPERATOR(pg_catalog.<) $2
                AND e.txid_cluster OPERATOR(pg_catalog.=) $3
                AND pg_catalog.pg_visible_in_snapshot(e.txid, $4)
              ORDER BY e.txid OFFSET $5 LIMIT 1'
       INTO v_over
       USING v_from, pg_catalog.pg_snapshot_xmax(p_hi), v_here, p_hi, v_budget;
    IF v_over IS NULL THEN
        RETURN pg_catalog.pg_snapshot_xmax(p_hi);       -- everything fits
    END IF;
    IF v_late OPERATOR(pg_catalog.=) 0 THEN
        EXECUTE 'SELECT e.txid FROM @extschema@.events e
                  WHERE e.txid OPERATOR(pg_catalog.>=) $1
                    AND e.txid OPERATOR(pg_catalog.<) $2
                    AND e.txid_cluster OPERATOR(pg_catalog.=) $3
                    AND pg_catalog.pg_visible_in_snapshot(e.txid, $4)
                  ORDER BY e.txid LIMIT 1'
           INTO v_first
           USING v_from, pg_catalog.pg_snapshot_xmax(p_hi), v_here, p_hi;
        IF v_first OPERATOR(pg_catalog.=) v_over THEN
            -- One transaction larger than a batch: a range of its own.
            RETURN (v_over::text::bigint OPERATOR(pg_catalog.+) 1)::text::xid8;
        END IF;
    END IF;
    RETURN v_over;
END
$$;
COMMENT ON FUNCTION @extschema@._range_bound(pg_snapshot, pg_snapshot, integer) IS
    'Where a range from tick lo to snapshot hi ends (the transaction id hi is cut at) so that it holds at most max_events events; a transaction larger than that forms a range of its own.';

-- _take_range_tick takes the tick that ends a consumer's next range: the
-- current snapshot (as _take_tick), cut by _range_bound so that the range
-- from p_lower holds about p_max_events events.  Not cut when p_lower was
-- taken in another cluster (a restore): that range is read as in 1.1.
CREATE FUNCTION @extschema@._take_range_tick(p_lower bigint, p_max_events integer) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_snap pg_snapshot := @extschema@._tick_snapshot();
    v_here bigint := @extschema@._cluster_id();
    lo @extschema@.consumer_ticks;
    v_tick bigint;
BEGIN
    SELECT * INTO lo FROM @extschema@.consumer_ticks WHERE tick_id OPERATOR(pg_catalog.=) p_lower;
    IF FOUND AND lo.cluster_id OPERATOR(pg_catalog.=) v_here THEN
        v_snap := @extschema@._tick_cut(v_snap, @extschema@._range_bound(lo.snapshot, v_snap, p_max_events));
    END IF;
    INSERT INTO @extschema@.consumer_ticks (snapshot, cluster_id) VALUES (v_snap, v_here)
    RETURNING tick_id INTO v_tick;
    RETURN v_tick;
END
$$;
COMMENT ON FUNCTION @extschema@._take_range_tick(bigint, integer) IS
    'Takes the tick that ends a consumer''s next range: the current snapshot, cut so that the range from the given tick holds about max_events events.';

-- _range_events (1.1): the same rows, read with index probes of exactly
-- the transaction ids that can be in the range: those in progress at the
-- older tick, and those from its xmax up to the newer tick's xmax (in 1.1
-- the scan began at the older tick's xmin, so a transaction left open for
-- long made every range read everything committed since it began).
CREATE OR REPLACE FUNCTION @extschema@._range_events(p_lower bigint, p_upper bigint, p_after bigint,
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
        -- Materialized, so that the transaction ids (index
        -- events_txid_idx) drive the scan, never the event_id order; the
        -- event_id bounds apply outside (see 1.1).  Dynamic (EXECUTE):
        -- planned every time with the actual bounds.
        RETURN QUERY EXECUTE
        'WITH r AS MATERIALIZED (
            SELECT e.* FROM @extschema@.events e
             WHERE e.txid OPERATOR(pg_catalog.=) ANY ($1)
               AND e.txid_cluster OPERATOR(pg_catalog.=) $4
               AND pg_catalog.pg_visible_in_snapshot(e.txid, $5)
            UNION ALL
            SELECT e.* FROM @extschema@.events e
             WHERE e.txid OPERATOR(pg_catalog.>=) $2
               AND e.txid OPERATOR(pg_catalog.<) $3
               AND e.txid_cluster OPERATOR(pg_catalog.=) $4
               AND pg_catalog.pg_visible_in_snapshot(e.txid, $5))
        SELECT * FROM r
         WHERE r.event_id OPERATOR(pg_catalog.>) $6
           AND r.event_id OPERATOR(pg_catalog.<=) $7
         ORDER BY r.event_id LIMIT $8'
        USING ARRAY(SELECT pg_catalog.pg_snapshot_xip(lo.snapshot)),
              pg_catalog.pg_snapshot_xmax(lo.snapshot), pg_catalog.pg_snapshot_xmax(hi.snapshot),
              v_here, hi.snapshot,
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

-- _has_pending (1.1): the same answer, looked up where _range_events reads:
-- the transactions in progress at the position, and the ids from its xmax
-- up (newest first, so that a new event is found at once; enable_sort
-- off for the reason given at _range_bound).
CREATE OR REPLACE FUNCTION @extschema@._has_pending(p_consumer text) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET enable_sort = off AS $$
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
    -- Dynamic (EXECUTE): planned with the actual bounds (see 1.1).
    EXECUTE 'SELECT EXISTS (SELECT FROM @extschema@.events e
                             WHERE e.txid OPERATOR(pg_catalog.=) ANY ($1)
                               AND e.txid_cluster OPERATOR(pg_catalog.=) $3)
                OR EXISTS (SELECT FROM (SELECT e.txid FROM @extschema@.events e
                                         WHERE e.txid OPERATOR(pg_catalog.>=) $2
                                           AND e.txid_cluster OPERATOR(pg_catalog.=) $3
                                         ORDER BY e.txid DESC LIMIT 1) x)'
       INTO v_found
       USING ARRAY(SELECT pg_catalog.pg_snapshot_xip(t.snapshot)), pg_catalog.pg_snapshot_xmax(t.snapshot), v_here;
    RETURN v_found;
END
$$;

-- _next_batch (1.1): a new range ends at _take_range_tick(), so that it
-- holds about one batch; everything else as in 1.1 (a range being
-- drained, an upgraded database's open batch, are handed out as before).
CREATE OR REPLACE FUNCTION @extschema@._next_batch(p_consumer text, p_max_events integer) RETURNS bigint
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
            -- Nothing being drained: a new tick bounds the next range, at
            -- about one batch from the consumer's position.
            c.upper_tick_id := @extschema@._take_range_tick(c.tick_id, p_max_events);
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

-- The new helpers are the owner's alone, as the 1.1 ones.
REVOKE ALL ON FUNCTION
    @extschema@._tick_snapshot(),
    @extschema@._tick_cut(pg_snapshot, xid8),
    @extschema@._range_bound(pg_snapshot, pg_snapshot, integer),
    @extschema@._take_range_tick(bigint, integer)
    FROM PUBLIC;
