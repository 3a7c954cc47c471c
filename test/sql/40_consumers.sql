-- test/sql/40_consumers.sql - durable event consumers (SPEC section 5, issue 12).
--
-- The API's refusals (each with its SQLSTATE, each changing nothing), the
-- privileges, and the snapshot technique itself on crafted ticks: events
-- carry transaction ids, ticks carry snapshots, and a batch is exactly what
-- became visible between two ticks, so a late commit is never skipped and
-- an open transaction holds back only its own events.  Real concurrent
-- sessions are in test/shell/22_consumers.t.
BEGIN;
\ir ../fixtures/setup.psql
SELECT plan(72);

CREATE ROLE ms_c_app LOGIN IN ROLE milestones_app;
CREATE ROLE ms_c_reader LOGIN IN ROLE milestones_reader;
CREATE ROLE ms_c_login LOGIN;

-- state(): what a refused call must not change.
CREATE FUNCTION pg_temp.state() RETURNS text LANGUAGE sql AS $$
    SELECT format('consumers=%s batches=%s events=%s positions=%s',
                  (SELECT count(*) FROM milestones.consumers),
                  (SELECT count(*) FROM milestones.consumer_batches),
                  (SELECT count(*) FROM milestones.events),
                  (SELECT string_agg(format('%s@%s/%s/%s', name, tick_id, upper_tick_id, after_event_id), ' ' ORDER BY name)
                     FROM milestones.consumers))
$$;

-- ---------------------------------------------------------------- the API
SELECT has_function('milestones', 'register_consumer', ARRAY['text'], 'register_consumer(name)');
SELECT has_function('milestones', 'unregister_consumer', ARRAY['text'], 'unregister_consumer(name)');
SELECT has_function('milestones', 'next_batch', ARRAY['text', 'integer'], 'next_batch(consumer, max_events)');
SELECT has_function('milestones', 'batch_events', ARRAY['bigint', 'text'], 'batch_events(batch_id, consumer)');
SELECT has_function('milestones', 'finish_batch', ARRAY['bigint', 'text'], 'finish_batch(batch_id, consumer)');
SELECT function_returns('milestones', 'next_batch', ARRAY['text', 'integer'], 'bigint', 'next_batch returns a batch id');
SELECT function_returns('milestones', 'batch_events', ARRAY['bigint', 'text'], 'setof milestones.events', 'batch_events returns events rows');
SELECT is((SELECT pg_get_function_arguments('milestones.next_batch(text, integer)'::regprocedure)),
          'consumer text, max_events integer DEFAULT 1000', 'max_events defaults to 1000');

SELECT lives_ok($$SELECT milestones.register_consumer('payments')$$, 'a consumer registers');
SELECT is((SELECT count(*)::int FROM milestones.consumers WHERE name = 'payments'), 1, 'and is stored');
SELECT pg_temp.state() AS s0 \gset

-- ---------------------------------------------------------------- bad input
SELECT throws_ok($$SELECT milestones.register_consumer('payments')$$, '22023', 'consumer "payments" is already registered',
                 'a registered name again: 22023');
SELECT throws_ok($$SELECT milestones.register_consumer(NULL)$$, '22023', 'consumer name must not be NULL', 'register NULL: 22023');
SELECT throws_ok($$SELECT milestones.register_consumer('  ')$$, '22023', 'invalid consumer name', 'register a blank name: 22023');
SELECT throws_ok($$SELECT milestones.register_consumer(' pay')$$, '22023', 'invalid consumer name', 'register an untrimmed name: 22023');
SELECT throws_ok(format($$SELECT milestones.register_consumer(%L)$$, repeat('x', 64)), '22023', 'invalid consumer name',
                 'register a 64-character name: 22023');
SELECT throws_ok($$SELECT milestones.register_consumer('_relay')$$, '22023', 'consumer names starting with "_" are reserved',
                 'the relay''s name is reserved: 22023');
SELECT throws_ok($$SELECT milestones.unregister_consumer('nobody')$$, 'P0002', 'consumer "nobody" does not exist',
                 'unregister an unknown consumer: P0002');
SELECT throws_ok($$SELECT milestones.unregister_consumer(NULL)$$, '22023', NULL, 'unregister NULL: 22023');
SELECT throws_ok($$SELECT milestones.next_batch('nobody')$$, 'P0002', 'consumer "nobody" does not exist',
                 'next_batch of an unknown consumer: P0002');
SELECT throws_ok($$SELECT milestones.next_batch(NULL)$$, '22023', 'consumer name must not be NULL', 'next_batch(NULL): 22023');
SELECT throws_ok($$SELECT milestones.next_batch('payments', 0)$$, '22023', 'max_events must be between 1 and 100000',
                 'next_batch with max_events 0: 22023');
SELECT throws_ok($$SELECT milestones.next_batch('payments', NULL)$$, '22023', 'max_events must be between 1 and 100000',
                 'next_batch with max_events NULL: 22023');
SELECT throws_ok($$SELECT milestones.next_batch('_relay')$$, '22023', NULL, 'the relay''s consumer is not for applications');
SELECT throws_ok($$SELECT * FROM milestones.batch_events(424242)$$, 'P0002', 'batch 424242 does not exist',
                 'batch_events of an unknown batch: P0002');
SELECT throws_ok($$SELECT * FROM milestones.batch_events(NULL)$$, '22023', 'batch_id must not be NULL', 'batch_events(NULL): 22023');
SELECT throws_ok($$SELECT milestones.finish_batch(424242)$$, 'P0002', 'batch 424242 does not exist',
                 'finish_batch of an unknown batch: P0002');
SELECT throws_ok($$SELECT milestones.finish_batch(NULL)$$, '22023', 'batch_id must not be NULL', 'finish_batch(NULL): 22023');
SELECT is(pg_temp.state(), :'s0', 'the refused calls changed nothing');

-- ------------------------------------------- the snapshot technique, crafted
-- An order to hang events on, then events with chosen transaction ids, and
-- two ticks:  lo = 100:104:103   (103 in progress; 101 committed)
--             hi = 104:110:104,107 (103 and 105 committed; 104 and 107 open)
SELECT pg_temp.offer3() AS o \gset
SELECT milestones._cluster_id() AS here \gset
CREATE TEMP TABLE crafted (txid text, event_id bigint);
INSERT INTO milestones.events (order_id, event, actor_role, order_state, created_at, txid, txid_cluster)
SELECT :o, 'crafted_' || t, 'system', 'offered', now(), t::xid8, :here
  FROM unnest(ARRAY['103', '108', '101', '105', '104', '107']) t;
INSERT INTO crafted SELECT txid::text, event_id FROM milestones.events WHERE event LIKE 'crafted_%';
INSERT INTO milestones.consumer_ticks (tick_id, snapshot, cluster_id) VALUES
    (-1, '100:104:103', :here), (-2, '104:110:104,107', :here);
CREATE FUNCTION pg_temp.range_txids(lo bigint, hi bigint, lim integer DEFAULT 100) RETURNS text LANGUAGE sql AS $$
    SELECT string_agg(r.txid::text, ',' ORDER BY r.event_id) FROM milestones._range_events(lo, hi, NULL, NULL, lim) r
$$;
SELECT is(pg_temp.range_txids(-1, -2), '103,108,105',
          'a batch is what became visible between two ticks, in event_id order: the late commit 103, then 105 and 108');
SELECT is(pg_temp.range_txids(-1, -2, 2), '103,108', 'at most max_events of them');

-- A consumer standing at lo and draining the range up to hi.
SELECT milestones.register_consumer('crafted');
UPDATE milestones.consumers SET tick_id = -1, upper_tick_id = -2 WHERE name = 'crafted';
SELECT milestones.next_batch('crafted', 2) AS b1 \gset
SELECT is((SELECT string_agg(txid::text, ',' ORDER BY event_id) FROM milestones.batch_events(:b1)), '103,108',
          'first batch: two events of the range');
SELECT is(milestones.next_batch('crafted', 2), :b1::bigint, 'an unfinished batch is handed out again');
SELECT is((SELECT string_agg(txid::text, ',' ORDER BY event_id) FROM milestones.batch_events(:b1)), '103,108',
          'with the same events');
SELECT throws_ok(format($$SELECT * FROM milestones.batch_events(%s, 'payments')$$, :b1), '22023', format('batch %s belongs to another consumer', :b1),
                 'batch_events names another consumer: 22023');
SELECT throws_ok(format($$SELECT milestones.finish_batch(%s, 'payments')$$, :b1), '22023', NULL,
                 'finish_batch names another consumer: 22023');
SELECT is((SELECT count(*)::int FROM milestones.consumer_batches WHERE batch_id = :b1), 1, 'and the batch is still open');
SELECT lives_ok(format($$SELECT milestones.finish_batch(%s, 'crafted')$$, :b1), 'the batch is finished');
SELECT throws_ok(format($$SELECT milestones.finish_batch(%s)$$, :b1), 'P0002', NULL, 'finishing it again: P0002 (finished batches are gone)');
SELECT milestones.next_batch('crafted', 2) AS b2 \gset
SELECT is((SELECT string_agg(txid::text, ',' ORDER BY event_id) FROM milestones.batch_events(:b2)), '105',
          'second batch: the rest of the range');
SELECT milestones.finish_batch(:b2);
SELECT is((SELECT tick_id FROM milestones.consumers WHERE name = 'crafted'), -2::bigint, 'the consumer moved to the newer tick');
-- Now past hi: the open transactions 104 and 107 have committed since.  The
-- events this very transaction wrote are its own, in progress in the new tick.
SELECT milestones.next_batch('crafted') AS b3 \gset
SELECT is((SELECT string_agg(txid::text, ',' ORDER BY event_id) FROM milestones.batch_events(:b3)), '104,107',
          'the transactions open at hi come in the next batch: nothing skipped');
SELECT is((SELECT count(*)::int FROM milestones.batch_events(:b3) WHERE txid = pg_current_xact_id()), 0,
          'the events of a transaction still in progress are not handed out');
SELECT milestones.finish_batch(:b3);
SELECT is(milestones.next_batch('crafted'), NULL, 'NULL when nothing new');
SELECT is((SELECT count(*)::int FROM milestones.consumer_ticks WHERE tick_id IN (-1, -2)), 0, 'ticks no one uses are pruned');
SELECT is((SELECT count(*)::int FROM milestones.consumer_batches), 0, 'finished batches are pruned');
SELECT is((SELECT count(*)::int FROM milestones.events WHERE event LIKE 'crafted_%'), 6, 'events are never deleted');

-- ------------------------------------------------ another cluster's ids
-- A restore into another cluster brings events and ticks whose ids mean
-- nothing here.  Events written before 1.1 (cluster 0) are old.
SELECT ok(milestones._tick_sees('999999999', 0, '100:106:', :here, :here), 'an event written before 1.1 is old for every tick');
SELECT ok(milestones._tick_sees('999999999', 12345, '100:106:', :here, :here),
          'an event from another cluster is old for a tick of this one, however large its id');
SELECT ok(NOT milestones._tick_sees('3', :here, '100:106:', 12345, :here),
          'an event of this cluster is new for a tick brought from another, however small its id');
SELECT ok(milestones._tick_sees('101', 12345, '100:106:103', 12345, :here)
          AND NOT milestones._tick_sees('103', 12345, '100:106:103', 12345, :here),
          'event and tick of one other cluster: the snapshot decides');
INSERT INTO milestones.events (order_id, event, actor_role, order_state, created_at, txid, txid_cluster)
SELECT :o, 'restored_' || t, 'system', 'offered', now(), t::xid8, 12345
  FROM unnest(ARRAY['999999101', '999999103', '999999105']) t;
INSERT INTO milestones.consumer_ticks (tick_id, snapshot, cluster_id) VALUES (-3, '999999100:999999104:999999103', 12345);
UPDATE milestones.consumers SET tick_id = -3 WHERE name = 'crafted';
SELECT milestones.next_batch('crafted') AS b4 \gset
SELECT is((SELECT string_agg(txid::text, ',' ORDER BY event_id) FROM milestones.batch_events(:b4) WHERE event LIKE 'restored_%'),
          '999999103,999999105',
          'a consumer restored at another cluster''s tick gets what it had not read there; the future-looking ids hold nothing back');
SELECT is((SELECT count(*)::int FROM milestones.batch_events(:b4) WHERE event LIKE 'crafted_%'), 6,
          'and the events written here since (they are newer than a restored tick)');
SELECT milestones.finish_batch(:b4);
SELECT is(milestones.next_batch('crafted'), NULL, 'then it is caught up');

-- -------------------------------------------------------- unregistering
SELECT lives_ok($$SELECT milestones.unregister_consumer('crafted')$$, 'a consumer unregisters');
SELECT throws_ok($$SELECT milestones.next_batch('crafted')$$, 'P0002', NULL, 'and is gone');
SELECT lives_ok($$SELECT milestones.register_consumer('crafted')$$, 'the name can be registered again');
SELECT is(milestones.next_batch('crafted'), NULL, 'a new consumer starts at the present: nothing old is handed out');
SELECT throws_ok($$SELECT milestones.unregister_consumer('_relay')$$, '22023', NULL, 'the relay''s consumer cannot be unregistered through the API');

-- -------------------------------------------------------- status view
-- Pending: the events not yet visible at the consumer's position; here the
-- ones this (still open) transaction wrote: the offer at the top, then one more.
SELECT results_eq($$SELECT consumer, open_batch IS NULL, pending_events FROM milestones.consumer_status WHERE consumer = 'crafted'$$,
                  $$VALUES ('crafted'::text, true, 1::bigint)$$,
                  'consumer_status: the open transaction''s event is pending');
SELECT pg_temp.offer3() AS o2 \gset
SELECT results_eq($$SELECT consumer, pending_events, lag > interval '0' FROM milestones.consumer_status WHERE consumer = 'crafted'$$,
                  $$VALUES ('crafted'::text, 2::bigint, true)$$,
                  'consumer_status: a new event is pending, with a lag');
SELECT has_column('milestones', 'consumer_status', 'lag', 'consumer_status has lag');
SELECT has_column('milestones', 'consumer_status', 'position_at', 'consumer_status has position_at');

-- -------------------------------------------------------- privileges
SELECT ok((SELECT extconfig @> ARRAY['milestones.consumers'::regclass, 'milestones.consumer_ticks'::regclass,
                                     'milestones.consumer_batches'::regclass]::oid[]
             FROM pg_extension WHERE extname = 'milestones'),
          'positions, ticks and batches are dumped by pg_dump (pg_extension_config_dump)');
SET LOCAL ROLE ms_c_app;
SELECT lives_ok($$SELECT milestones.register_consumer('app_worker')$$, 'app: registers a consumer');
SELECT lives_ok($$SELECT milestones.next_batch('app_worker')$$, 'app: asks for a batch');
SELECT lives_ok($$SELECT * FROM milestones.consumer_status$$, 'app: reads consumer_status');
SELECT throws_ok($$SELECT * FROM milestones.consumers$$, '42501', NULL, 'app: cannot read the consumers table');
SELECT throws_ok($$UPDATE milestones.consumers SET tick_id = 1$$, '42501', NULL, 'app: cannot move a consumer by hand');
SELECT throws_ok($$SELECT milestones._next_batch('_relay', 10)$$, '42501', NULL, 'app: cannot read as the relay');
RESET ROLE;
SET LOCAL ROLE ms_c_reader;
SELECT lives_ok($$SELECT * FROM milestones.consumer_status$$, 'reader: reads consumer_status');
SELECT throws_ok($$SELECT milestones.next_batch('payments')$$, '42501', NULL, 'reader: cannot consume');
RESET ROLE;
SET LOCAL ROLE ms_c_login;
SELECT throws_ok($$SELECT milestones.register_consumer('x')$$, '42501', NULL, 'a plain login role cannot register');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
