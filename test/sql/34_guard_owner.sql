-- test/sql/34_guard_owner.sql - the C guard holds for the owner too (issue 5).
--
-- The tests run as the superuser who owns the extension, writing the
-- tables directly.  Transitions are checked row by row (55000, naming both
-- states); the order-level invariants (positions 1..n, one running
-- milestone, balanced ledger, payout on completion) are checked by the
-- deferred constraint trigger, surfaced here with SET CONSTRAINTS ALL
-- IMMEDIATE (23514).  The ledger and the events are append-only (23000).
BEGIN;
\ir ../fixtures/setup.psql
SELECT plan(44);

-- Orders made through the API: offered, active (1 in progress), active
-- (1 delivered), completed (finished).
SELECT pg_temp.offer3() AS off \gset
SELECT pg_temp.offer3() AS act \gset
SELECT pg_temp.offer3() AS del \gset
SELECT pg_temp.offer3() AS done \gset
\o /dev/null
SELECT milestones.place_order(id, 20) FROM unnest(ARRAY[:act, :del, :done]::bigint[]) id;
SELECT milestones.deliver(id, 10) FROM unnest(ARRAY[:del, :done]::bigint[]) id;
SELECT milestones.accept(:done, 20); SELECT milestones.deliver(:done, 10);
SELECT milestones.accept(:done, 20); SELECT milestones.deliver(:done, 10);
SELECT milestones.accept(:done, 20);
\o
SET CONSTRAINTS ALL IMMEDIATE;
SELECT is((SELECT count(*)::int FROM milestones.check_invariants()), 0, 'the API-made orders are sound');
CREATE TEMP TABLE before AS
SELECT (SELECT count(*) FROM milestones.orders) o, (SELECT count(*) FROM milestones.order_milestones) m,
       (SELECT count(*) FROM milestones.ledger_entries) l, (SELECT count(*) FROM milestones.events) e,
       (SELECT md5(string_agg(x::text, ',' ORDER BY x.order_id)) FROM milestones.orders x) oh,
       (SELECT md5(string_agg(x::text, ',' ORDER BY x.order_id, x.position)) FROM milestones.order_milestones x) mh;

-- Order transitions the state machine does not have.
SELECT throws_ok(format($$UPDATE milestones.orders SET state = 'completed', end_reason = 'finished',
                          completed_at = milestones.now() WHERE order_id = %s$$, :off),
                 '55000', format('order %s cannot go from offered to completed', :off),
                 'offered -> completed directly is refused, naming both states');
SELECT throws_ok(format($$UPDATE milestones.orders SET state = 'offered', placed_at = NULL WHERE order_id = %s$$, :act),
                 '55000', format('order %s cannot go from active to offered', :act), 'active -> offered is refused');
SELECT throws_ok(format($$UPDATE milestones.orders SET state = 'withdrawn', completed_at = milestones.now() WHERE order_id = %s$$, :act),
                 '55000', format('order %s cannot go from active to withdrawn', :act), 'active -> withdrawn is refused');
SELECT throws_ok(format($$UPDATE milestones.orders SET state = 'cancelled', end_reason = NULL, cancel_reason = 'mutual_agreement',
                          cancelled_by = 'dba' WHERE order_id = %s$$, :done),
                 '55000', format('order %s is completed and can no longer change', :done), 'a completed order never changes');
SELECT throws_ok(format($$UPDATE milestones.orders SET revisions_used = 0 WHERE order_id = %s$$, :done),
                 '55000', NULL, 'not even a column of a completed order');
SELECT throws_ok(format($$UPDATE milestones.orders SET state = 'lost' WHERE order_id = %s$$, :off),
                 '23514', 'invalid order state "lost"', 'an unknown order state');
SELECT throws_ok(format($$UPDATE milestones.orders SET buyer_id = 21 WHERE order_id = %s$$, :act),
                 '23514', format('column "buyer_id" of order %s cannot change', :act), 'the buyer of an order is immutable');

-- Milestone transitions.
SELECT throws_ok(format($$UPDATE milestones.order_milestones SET state = 'delivered', started_at = milestones.now(),
                          due_at = milestones.now(), delivered_at = milestones.now(), respond_by = milestones.now() + interval '5 days'
                          WHERE order_id = %s AND position = 2$$, :act),
                 '55000', format('milestone 2 of order %s cannot go from pending to delivered', :act),
                 'pending -> delivered directly is refused, naming both states');
SELECT throws_ok(format($$UPDATE milestones.order_milestones SET state = 'pending', started_at = NULL, due_at = NULL
                          WHERE order_id = %s AND position = 1$$, :act),
                 '55000', format('milestone 1 of order %s cannot go from in_progress to pending', :act), 'in_progress -> pending is refused');
SELECT throws_ok(format($$UPDATE milestones.order_milestones SET state = 'delivered' WHERE order_id = %s AND position = 1$$, :done),
                 '55000', format('milestone 1 of order %s is completed and can no longer change', :done), 'a completed milestone never changes');
SELECT throws_ok(format($$UPDATE milestones.order_milestones SET amount = 1 WHERE order_id = %s AND position = 2$$, :off),
                 '23514', format('column "amount" of milestone 2 of order %s cannot change', :off), 'a price is immutable');

-- Order-level invariants, from the deferred check.
SELECT throws_ok(format($$INSERT INTO milestones.order_milestones (order_id, position, name, days, amount, final)
                          VALUES (%s, 5, 'Extra', 3, 50, false)$$, :off),
                 '23514', format('order %s would break the milestones invariants', :off), 'a gap in milestone positions (1,2,3,5)');
SELECT throws_ok(format($$INSERT INTO milestones.order_milestones (order_id, position, name, days, amount, final)
                          VALUES (%s, 4, 'Extra', 3, 50, true)$$, :act),
                 '23514', NULL, 'a fourth milestone with two final flags');
SELECT throws_ok(format($$UPDATE milestones.order_milestones SET state = 'in_progress', started_at = milestones.now(),
                          due_at = milestones.now() + interval '7 days' WHERE order_id = %s AND position = 2$$, :act),
                 '23514', format('order %s would break the milestones invariants', :act),
                 'a second running milestone (2 started while 1 is in progress)');
SELECT throws_ok(format($$UPDATE milestones.order_milestones SET state = 'completed', completed_at = milestones.now()
                          WHERE order_id = %s AND position = 1$$, :del),
                 '23514', NULL, 'completing a delivery without starting (and charging) the next milestone');
SELECT throws_ok(format($$WITH m AS (UPDATE milestones.order_milestones SET state = CASE position WHEN 1 THEN 'completed' ELSE 'skipped' END,
                                       completed_at = CASE position WHEN 1 THEN milestones.now() END
                                    WHERE order_id = %1$s RETURNING 1)
                          UPDATE milestones.orders SET state = 'completed', end_reason = 'stopped', completed_at = milestones.now()
                           WHERE order_id = %1$s$$, :del),
                 '23514', NULL, 'stopping an order by hand without the payout');
SELECT throws_ok(format($$INSERT INTO milestones.ledger_entries (txn_id, order_id, position, kind, account, amount, currency, created_at)
                          VALUES (nextval('milestones.ledger_txn_id_seq'), %s, 1, 'charge', 'buyer', -100, 'USD', milestones.now())$$, :act),
                 '23514', format('order %s would break the milestones invariants', :act), 'an unbalanced ledger entry');
SELECT throws_ok(format($$INSERT INTO milestones.ledger_entries (txn_id, order_id, position, kind, account, amount, currency, created_at)
                          SELECT t, %s, 2, 'charge', a, x, 'USD', milestones.now()
                            FROM nextval('milestones.ledger_txn_id_seq') t, (VALUES ('buyer', -150), ('escrow', 150)) v(a, x)$$, :act),
                 '23514', NULL, 'a balanced charge for a milestone that never started');
SELECT throws_ok(format($$INSERT INTO milestones.ledger_entries (txn_id, order_id, position, kind, account, amount, currency, created_at)
                          SELECT t, %s, NULL, 'payout', a, x, 'USD', milestones.now()
                            FROM nextval('milestones.ledger_txn_id_seq') t, (VALUES ('escrow', -500), ('seller', 500)) v(a, x)$$, :done),
                 '23505', NULL, 'a second payout of a completed order (the one-payout index)');
SELECT throws_ok($$WITH o AS (INSERT INTO milestones.orders (seller_id, buyer_id, category, currency, state, end_reason, fee_rate,
                                                          created_at, placed_at, completed_at)
                               VALUES (10, 20, 'design', 'USD', 'completed', 'finished', 0, milestones.now(), milestones.now(), milestones.now())
                               RETURNING order_id)
                   INSERT INTO milestones.order_milestones (order_id, position, name, days, amount, final)
                   SELECT order_id, 1, 'Forged', 3, 150, true FROM o$$,
                 '23514', NULL, 'an inserted completed order whose milestone is still pending');

-- Nothing is deleted: orders, milestones, ledger, events.
SELECT throws_ok(format($$DELETE FROM milestones.orders WHERE order_id = %s$$, :off), '23000',
                 'rows of orders cannot be deleted', 'an order cannot be deleted');
SELECT throws_ok(format($$DELETE FROM milestones.order_milestones WHERE order_id = %s AND position = 3$$, :off), '23000',
                 'rows of order_milestones cannot be deleted', 'a milestone cannot be deleted (no gap that way either)');
SELECT throws_ok($$TRUNCATE milestones.orders CASCADE$$, '23000', NULL, 'orders cannot be truncated');
SELECT throws_ok($$UPDATE milestones.ledger_entries SET amount = amount * 2$$, '23000', 'ledger_entries is append-only', 'ledger entries cannot be updated');
SELECT throws_ok($$DELETE FROM milestones.ledger_entries$$, '23000', 'ledger_entries is append-only', 'ledger entries cannot be deleted');
SELECT throws_ok($$TRUNCATE milestones.ledger_entries$$, '23000', 'ledger_entries is append-only', 'the ledger cannot be truncated');
SELECT throws_ok($$UPDATE milestones.events SET actor_id = 1$$, '23000', 'events is append-only', 'events cannot be updated');
SELECT throws_ok($$DELETE FROM milestones.events$$, '23000', 'events is append-only', 'events cannot be deleted');
SELECT throws_ok($$TRUNCATE milestones.events$$, '23000', 'events is append-only', 'events cannot be truncated');
SELECT throws_ok($$DELETE FROM milestones.settings$$, '23000', 'milestones.settings must keep its one row', 'the settings row cannot be deleted');

-- Nothing above changed anything.
SELECT is((SELECT ROW(b.o, b.m, b.l, b.e, b.oh, b.mh)::text FROM before b),
          (SELECT ROW((SELECT count(*) FROM milestones.orders), (SELECT count(*) FROM milestones.order_milestones),
                      (SELECT count(*) FROM milestones.ledger_entries), (SELECT count(*) FROM milestones.events),
                      (SELECT md5(string_agg(x::text, ',' ORDER BY x.order_id)) FROM milestones.orders x),
                      (SELECT md5(string_agg(x::text, ',' ORDER BY x.order_id, x.position)) FROM milestones.order_milestones x))::text),
          'every refused write left orders, milestones, ledger and events as they were');
SELECT is((SELECT count(*)::int FROM milestones.check_invariants()), 0, 'and the books are still sound');

-- What a direct write may still do: a legal, consistent change.
SELECT lives_ok(format($$UPDATE milestones.order_milestones SET delivery_note = 'fixed a typo' WHERE order_id = %s AND position = 1$$, :del),
                'a harmless correction by the owner is allowed');

-- An order row inserted on its own (as pg_restore loads the orders table
-- before order_milestones) is checked when its milestones arrive; it can
-- never move, and check_invariants() reports it.
SELECT lives_ok($$INSERT INTO milestones.orders (order_id, seller_id, buyer_id, category, currency, fee_rate, created_at)
                  VALUES (900001, 10, 20, 'design', 'USD', 0, milestones.now())$$,
                'an order row alone can be inserted (restore order)');
SELECT is(ARRAY(SELECT problem FROM milestones.check_invariants() WHERE order_id = 900001), ARRAY['order has no milestones'],
          'check_invariants() reports the order without milestones');
SELECT throws_ok($$UPDATE milestones.orders SET state = 'withdrawn', completed_at = milestones.now() WHERE order_id = 900001$$,
                 '23514', 'order 900001 would break the milestones invariants', 'an order without milestones cannot move');
SELECT throws_ok($$INSERT INTO milestones.order_milestones (order_id, position, name, days, amount, final)
                   VALUES (900001, 2, 'B', 3, 150, true)$$,
                 '23514', NULL, 'its milestones are checked in full when they arrive (position 2 without 1)');
SELECT lives_ok($$INSERT INTO milestones.order_milestones (order_id, position, name, days, amount, final)
                  VALUES (900001, 1, 'A', 3, 150, true)$$,
                'consistent milestones complete it');
SELECT is((SELECT count(*)::int FROM milestones.check_invariants()), 0, 'after which the books are sound again');

-- A savepoint cannot launder a bad write: the order is left with a gap
-- (milestone 2 without 1), a savepoint fills the gap and runs the checks
-- (which pass), then is rolled back.  The gap is back, and the pending
-- check of the first write must still run and refuse it.
SET CONSTRAINTS ALL DEFERRED;
INSERT INTO milestones.orders (order_id, seller_id, buyer_id, category, currency, fee_rate, created_at)
VALUES (900002, 10, 20, 'design', 'USD', 0, milestones.now());
INSERT INTO milestones.order_milestones (order_id, position, name, days, amount, final) VALUES (900002, 2, 'B', 3, 150, true);
SAVEPOINT fill_the_gap;
INSERT INTO milestones.order_milestones (order_id, position, name, days, amount, final) VALUES (900002, 1, 'A', 3, 150, false);
SELECT lives_ok('SET CONSTRAINTS ALL IMMEDIATE', 'with the gap filled, the checks pass');
ROLLBACK TO SAVEPOINT fill_the_gap;
SELECT is((SELECT array_agg(position ORDER BY position) FROM milestones.order_milestones WHERE order_id = 900002), '{2}'::smallint[],
          'after the rollback to the savepoint the gap is back');
SELECT throws_ok('SET CONSTRAINTS ALL IMMEDIATE', '23514', 'order 900002 would break the milestones invariants',
                 'the first write is still checked (and refused), not taken as checked by the rolled-back savepoint');
SELECT is(ARRAY(SELECT problem FROM milestones.check_invariants() WHERE order_id = 900002), ARRAY['milestone 2 final flag is t', 'milestone positions are not 1..1'],
          'check_invariants() agrees');

SELECT * FROM finish();
ROLLBACK;
