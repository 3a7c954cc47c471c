-- test/sql/41_consumer_ranges.sql - a range ends where it reaches a batch
-- (SPEC section 5, issue 19 item 3).
--
-- A consumer that comes back after a long absence must not take one range
-- that covers everything written meanwhile: each new range ends at a tick
-- "cut" where it reaches max_events (_range_bound, _tick_cut), so every
-- range is about one batch and every finished batch moves the position.
-- Crafted transaction ids and ticks, as in 40_consumers.sql; the backlog
-- itself, with real sessions, the relay and the numbers, is in
-- test/shell/28_backlog.t.
BEGIN;
\ir ../fixtures/setup.psql
SELECT plan(40);

SELECT pg_temp.offer3() AS o \gset
SELECT milestones._cluster_id() AS here \gset

-- ---------------------------------------------------------------- _tick_cut
SELECT is(milestones._tick_cut('120:130:121,125', '126')::text, '120:126:121,125',
          'a tick cut at X keeps what it sees below X: its xip below X, xmax X');
SELECT is(milestones._tick_cut('120:130:121,125', '123')::text, '120:123:121',
          'in-progress ids at or past X are dropped: everything from X on is unseen anyway');
SELECT is(milestones._tick_cut('120:130:121,125', '115')::text, '115:115:',
          'cut below its xmin: xmin comes down to X');
SELECT is(milestones._tick_cut('120:130:121,125', '130')::text, '120:130:121,125', 'cut at its xmax: unchanged');
SELECT is(milestones._tick_cut('120:130:121,125', '140')::text, '120:130:121,125', 'cut past its xmax: unchanged');
-- visible(cut) = visible(hi) below X, for every id around the edges.
SELECT is((SELECT string_agg(x::text || '=' || pg_visible_in_snapshot(x::text::xid8, milestones._tick_cut('120:130:121,125', '126'))::text, ' ' ORDER BY x)
             FROM generate_series(118, 131) x),
          (SELECT string_agg(x::text || '=' || (pg_visible_in_snapshot(x::text::xid8, '120:130:121,125') AND x < 126)::text, ' ' ORDER BY x)
             FROM generate_series(118, 131) x),
          'the cut sees exactly what the tick sees below X');

-- ------------------------------------------------------------ _range_bound
-- lo = 110:112:110 (110 in progress; 111 committed), hi = 120:135:121.
-- Events, inserted out of transaction id order (event_id order differs):
--   110 x2 (committed late: in lo's xip), 111 (seen by lo already),
--   112 x3, 113, 114 x4, 116, 121 (in progress at hi), 124 x2, 126 x7
--   (one transaction larger than the batches below), 135 (past hi).
INSERT INTO milestones.events (order_id, event, actor_role, order_state, created_at, txid, txid_cluster)
SELECT :o, 'ranged_' || t, 'system', 'offered', now(), t::xid8, :here
  FROM unnest(ARRAY['114', '112', '110', '113', '111', '114', '112', '124', '116', '121', '110', '114',
                    '112', '124', '114', '135', '126', '126', '126', '126', '126', '126', '126']) t;
CREATE FUNCTION pg_temp.bound(lo text, hi text, n integer) RETURNS text LANGUAGE sql AS $$
    SELECT milestones._range_bound(lo::pg_snapshot, hi::pg_snapshot, n)::text
$$;
SELECT is(pg_temp.bound('110:112:110', '120:135:121', 100), '135', 'everything fits: the range ends at hi (its xmax)');
SELECT is(pg_temp.bound('110:112:110', '120:135:121', 10), '116',
          'max 10: the late 110 x2, then 112 x3, 113, 114 x4; 116 would be the 11th: the range ends before it');
SELECT is(pg_temp.bound('110:112:110', '120:135:121', 5), '113',
          'max 5: 110 x2, 112 x3; 113 would overflow');
SELECT is(pg_temp.bound('110:112:110', '120:135:121', 4), '112',
          'max 4: 110 x2, and 112''s third event would overflow: 112 comes whole in the next range');
SELECT is(pg_temp.bound('110:112:110', '120:135:121', 2), '112', 'the late transactions fill the batch: the range ends at lo''s xmax');
SELECT is(pg_temp.bound('110:112:110', '120:135:121', 1), '112',
          'they overflow it: still lo''s xmax (a transaction is never split between ranges)');
SELECT is(pg_temp.bound('112:112:', '120:135:121', 2), '113',
          'the first transaction alone is larger than a batch: it forms a range of its own');
SELECT is(pg_temp.bound('117:117:', '120:135:121', 3), '126',
          'an id in progress at hi (121) is not counted');
SELECT is(pg_temp.bound('125:125:', '120:135:121', 3), '127',
          '126 x7 alone: a range of its own');
SELECT is(pg_temp.bound('136:136:', '120:135:121', 3), '135',
          'nothing after lo: the range ends at hi, empty');

-- ------------------------------------------------ a consumer's batches
-- A consumer standing at lo = 110:112:110.  Each next_batch cuts the
-- current snapshot (which sees every crafted id: they are far below it)
-- where the range reaches max_events, so with max 5 the batches follow
-- the transactions: never more than 5, never a transaction split except
-- the one larger than a batch, each finished batch a new position.
INSERT INTO milestones.consumer_ticks (tick_id, snapshot, cluster_id) VALUES (-11, '110:112:110', :here);
SELECT milestones.register_consumer('ranged');
UPDATE milestones.consumers SET tick_id = -11 WHERE name = 'ranged';
SELECT milestones._prune_ticks();      -- the tick it registered at
CREATE FUNCTION pg_temp.batch_txids(b bigint) RETURNS text LANGUAGE sql AS $$
    SELECT string_agg(txid::text, ',' ORDER BY event_id) FROM milestones.batch_events(b)
$$;
CREATE FUNCTION pg_temp.upper_xmax() RETURNS text LANGUAGE sql AS $$
    SELECT pg_snapshot_xmax(t.snapshot)::text
      FROM milestones.consumers c JOIN milestones.consumer_ticks t ON t.tick_id = c.upper_tick_id
     WHERE c.name = 'ranged'
$$;
CREATE FUNCTION pg_temp.position_xmax() RETURNS text LANGUAGE sql AS $$
    SELECT pg_snapshot_xmax(t.snapshot)::text
      FROM milestones.consumers c JOIN milestones.consumer_ticks t ON t.tick_id = c.tick_id
     WHERE c.name = 'ranged'
$$;
SELECT pending_events AS pending0 FROM milestones.consumer_status WHERE consumer = 'ranged' \gset

SELECT milestones.next_batch('ranged', 5) AS b \gset
SELECT is(pg_temp.batch_txids(:b), '112,110,112,110,112', 'batch 1: the late 110 x2 and 112 x3, in event_id order');
SELECT is(pg_temp.upper_xmax(), '113', 'its range ends at a tick cut at 113, not at the present');
SELECT milestones.finish_batch(:b);
SELECT is(pg_temp.position_xmax(), '113', 'finished: the consumer stands at that tick');
SELECT is((SELECT pending_events FROM milestones.consumer_status WHERE consumer = 'ranged'), :pending0::bigint - 5,
              'and consumer_status counts 5 events fewer: the position moved with the batch');

SELECT milestones.next_batch('ranged', 5) AS b \gset
SELECT is(pg_temp.batch_txids(:b), '114,113,114,114,114', 'batch 2: 113 and 114 x4');
SELECT milestones.finish_batch(:b);
SELECT milestones.next_batch('ranged', 5) AS b \gset
SELECT is(pg_temp.batch_txids(:b), '124,116,121,124', 'batch 3: 116, 121 (committed since hi), 124 x2');
SELECT is(pg_temp.upper_xmax(), '126', 'ends before 126, whose events would overflow it');
SELECT milestones.finish_batch(:b);
SELECT milestones.next_batch('ranged', 5) AS b \gset
SELECT is(pg_temp.batch_txids(:b), '126,126,126,126,126', 'batch 4: the big transaction, first 5 events');
SELECT is((SELECT ends_range FROM milestones.consumer_batches WHERE batch_id = :b), false, 'its range is drained in several batches');
SELECT is(pg_temp.upper_xmax(), '127', 'a range of its own: ends right after it');
SELECT milestones.finish_batch(:b);
SELECT milestones.next_batch('ranged', 5) AS b \gset
SELECT is(pg_temp.batch_txids(:b), '126,126', 'batch 5: the rest of it (after_event_id, as in 1.1)');
SELECT milestones.finish_batch(:b);
SELECT milestones.next_batch('ranged', 5) AS b \gset
SELECT is(pg_temp.batch_txids(:b), '135', 'batch 6: what follows');
SELECT milestones.finish_batch(:b);
SELECT is(milestones.next_batch('ranged', 5), NULL, 'then nothing new (this transaction''s own events are in progress)');
SELECT is((SELECT count(*)::int FROM milestones.consumer_ticks WHERE tick_id = -11), 0, 'the ticks it left are pruned');
SELECT is((SELECT count(*)::int FROM milestones.consumer_ticks t
             WHERE NOT EXISTS (SELECT FROM milestones.consumers c WHERE t.tick_id IN (c.tick_id, c.upper_tick_id))), 0,
          'and no cut tick is left behind');

-- Everything, exactly once, against the ranges read directly.
SELECT milestones.register_consumer('whole');
INSERT INTO milestones.consumer_ticks (tick_id, snapshot, cluster_id) VALUES (-12, '110:112:110', :here);
UPDATE milestones.consumers SET tick_id = -12 WHERE name = 'whole';
CREATE TEMP TABLE got (n serial, b bigint, event_id bigint, txid xid8);
CREATE FUNCTION pg_temp.drain(c text, m integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE b bigint; k integer := 0;
BEGIN
    LOOP
        b := milestones.next_batch(c, m);
        EXIT WHEN b IS NULL;
        INSERT INTO got (b, event_id, txid) SELECT b, e.event_id, e.txid FROM milestones.batch_events(b) e ORDER BY e.event_id;
        PERFORM milestones.finish_batch(b);
        k := k + 1;
    END LOOP;
    RETURN k;
END $$;
SELECT is(pg_temp.drain('whole', 3), 11, 'max 3: 11 batches');
SELECT is((SELECT string_agg(event_id::text, ',' ORDER BY event_id) FROM got),
          (SELECT string_agg(event_id::text, ',' ORDER BY event_id) FROM milestones.events
            WHERE event LIKE 'ranged_%' AND txid <> '111'),
          'every event the ranges hold, once (111 was seen by the starting tick)');
SELECT is((SELECT count(*)::int FROM (SELECT b FROM got GROUP BY b HAVING count(*) > 3) x), 0, 'no batch above max_events');
SELECT is((SELECT count(*)::int FROM got a JOIN got z ON a.txid < z.txid AND a.b > z.b), 0,
          'the batches come in transaction id order (all these became visible at once)');
SELECT is((SELECT count(*)::int FROM (SELECT txid FROM got GROUP BY txid HAVING count(DISTINCT b) > 1 AND count(*) <= 3) x), 0,
          'no transaction is split between batches but those larger than a batch (114 x4, 126 x7)');
TRUNCATE got;
SELECT milestones.unregister_consumer('whole');
SELECT milestones.register_consumer('whole');
INSERT INTO milestones.consumer_ticks (tick_id, snapshot, cluster_id) VALUES (-13, '110:112:110', :here);
UPDATE milestones.consumers SET tick_id = -13 WHERE name = 'whole';
SELECT is(pg_temp.drain('whole', 1000), 1, 'max 1000: one batch');
SELECT is((SELECT count(*)::int FROM got), 22, 'with all 22 events');

-- _has_pending looks where the ranges are read: the late transactions of
-- the position, and the ids from its xmax up.
INSERT INTO milestones.consumer_ticks (tick_id, snapshot, cluster_id) VALUES (-14, '110:136:110', :here);
UPDATE milestones.consumers SET tick_id = -14 WHERE name = 'whole';
SELECT is(milestones._has_pending('whole'), true, 'a position whose in-progress 110 has committed has something pending');
UPDATE milestones.consumer_ticks SET snapshot = format('110:%s:', pg_current_xact_id()::text::bigint + 1)::pg_snapshot WHERE tick_id = -14;
SELECT is(milestones._has_pending('whole'), false, 'without it, and past every id written (this transaction''s too): nothing');

SELECT * FROM finish();
ROLLBACK;
