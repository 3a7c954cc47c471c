-- test/sql/02_lifecycle.sql - R3..R7, R11 and the actor/state refusals of
-- every order action, with the ledger balanced after each path.
BEGIN;
\ir ../fixtures/setup.psql
SELECT plan(78);

CREATE TEMP TABLE ids (name text PRIMARY KEY, id bigint);
INSERT INTO ids VALUES ('a', pg_temp.offer3(1));
CREATE FUNCTION pg_temp.id(text) RETURNS bigint LANGUAGE sql AS $$ SELECT id FROM ids WHERE name = $1 $$;
CREATE FUNCTION pg_temp.st(text) RETURNS milestones.order_status LANGUAGE sql AS
    $$ SELECT * FROM milestones.order_status WHERE order_id = pg_temp.id($1) $$;
CREATE FUNCTION pg_temp.ms(text) RETURNS text[] LANGUAGE sql AS
    $$ SELECT array_agg(state ORDER BY position) FROM milestones.order_milestones WHERE order_id = pg_temp.id($1) $$;
CREATE FUNCTION pg_temp.books_ok() RETURNS boolean LANGUAGE sql AS $$
    SELECT NOT EXISTS (SELECT FROM milestones.check_invariants())
       AND (SELECT COALESCE(sum(amount), 0) FROM milestones.ledger_entries) = 0
       AND NOT EXISTS (SELECT txn_id FROM milestones.ledger_entries GROUP BY txn_id HAVING sum(amount) <> 0)
$$;

-- Offered: only place_order, decline, withdraw (and cancel) apply.
SELECT throws_ok(format('SELECT milestones.deliver(%s, 10)', pg_temp.id('a')), '55000',
                 format('deliver is not allowed: order %s is offered', pg_temp.id('a')), 'deliver before the order is placed');
SELECT throws_ok(format('SELECT milestones.accept(%s, 20)', pg_temp.id('a')), '55000', NULL, 'accept before the order is placed');
SELECT throws_ok(format('SELECT milestones.stop(%s, 20)', pg_temp.id('a')), '55000', NULL, 'stop before the order is placed');
SELECT throws_ok(format('SELECT milestones.request_revision(%s, 20)', pg_temp.id('a')), '55000', NULL, 'revision before the order is placed');

-- Actor checks (42501) and unknown orders (P0002)
SELECT throws_ok(format('SELECT milestones.place_order(%s, 21)', pg_temp.id('a')), '42501',
                 format('user 21 is not the buyer of order %s', pg_temp.id('a')), 'a stranger cannot place the order');
SELECT throws_ok(format('SELECT milestones.place_order(%s, 10)', pg_temp.id('a')), '42501', NULL, 'the seller cannot place the order');
SELECT throws_ok('SELECT milestones.place_order(999999, 20)', 'P0002', 'order 999999 does not exist', 'unknown order');
SELECT throws_ok(format('SELECT milestones.withdraw_offer(%s, 20)', pg_temp.id('a')), '42501', NULL, 'the buyer cannot withdraw the offer');
SELECT throws_ok(format('SELECT milestones.decline_offer(%s, 10)', pg_temp.id('a')), '42501', NULL, 'the seller cannot decline the offer');

-- R3: placing charges milestone 1 only and starts it
SELECT is((pg_temp.st('a')).charged, 0.00::numeric, 'nothing charged before placing');
SELECT is((milestones.place_order(pg_temp.id('a'), 20)).state, 'active', 'place_order returns the active status row');
SELECT is(pg_temp.ms('a'), ARRAY['in_progress','pending','pending'], 'milestone 1 starts, the others wait');
SELECT is((pg_temp.st('a')).charged, 100.00::numeric, 'the buyer is charged for milestone 1 only');
SELECT is((pg_temp.st('a')).due_at, '2030-01-04 00:00:00+00'::timestamptz, 'due_at = placed + 3 days');
SELECT is((pg_temp.st('a')).current_milestone, 1, 'current milestone is 1');
SELECT is((SELECT count(*)::int FROM milestones.ledger WHERE order_id = pg_temp.id('a') AND kind = 'charge'), 2,
          'one charge transaction: buyer debit and escrow credit');
SELECT ok(pg_temp.books_ok(), 'books balance after placing');
SELECT throws_ok(format('SELECT milestones.place_order(%s, 20)', pg_temp.id('a')), '55000',
                 format('place_order is not allowed: order %s is active', pg_temp.id('a')), 'an order is placed once');
SELECT throws_ok(format('SELECT milestones.withdraw_offer(%s, 10)', pg_temp.id('a')), '55000', NULL, 'a placed offer cannot be withdrawn');
SELECT throws_ok(format('SELECT milestones.decline_offer(%s, 20)', pg_temp.id('a')), '55000', NULL, 'a placed offer cannot be declined');

-- Buyer answers need a delivery
SELECT throws_ok(format('SELECT milestones.accept(%s, 20)', pg_temp.id('a')), '55000',
                 format('accept is not allowed: milestone 1 of order %s is in_progress', pg_temp.id('a')), 'accept before delivery');
SELECT throws_ok(format('SELECT milestones.stop(%s, 20)', pg_temp.id('a')), '55000', NULL, 'stop before delivery (R6)');
SELECT throws_ok(format('SELECT milestones.request_revision(%s, 20)', pg_temp.id('a')), '55000', NULL, 'revision before delivery');
SELECT throws_ok(format('SELECT milestones.deliver(%s, 20)', pg_temp.id('a')), '42501', NULL, 'the buyer cannot deliver');

-- Delivery opens the response window
SELECT pg_temp.at('2030-01-02 00:00:00+00');
SELECT is((milestones.deliver(pg_temp.id('a'), 10, 'storyboard v1')).milestone_state, 'delivered', 'the seller delivers milestone 1');
SELECT is((pg_temp.st('a')).respond_by, '2030-01-07 00:00:00+00'::timestamptz, 'respond_by = delivery + 5 days');
SELECT throws_ok(format('SELECT milestones.deliver(%s, 10)', pg_temp.id('a')), '55000',
                 format('deliver is not allowed: milestone 1 of order %s is delivered', pg_temp.id('a')), 'a delivered milestone is not delivered twice');

-- R11: revisions per order
SELECT is((milestones.request_revision(pg_temp.id('a'), 20, 'more colour')).milestone_state, 'in_progress', 'a revision puts the milestone back in progress');
SELECT is((pg_temp.st('a')).revisions_left, 0, 'the order''s only revision is used');
SELECT is((pg_temp.st('a')).respond_by, NULL::timestamptz, 'the revision closes the response window');
SELECT is((pg_temp.st('a')).charged, 100.00::numeric, 'a revision charges nothing');
SELECT lives_ok(format('SELECT milestones.deliver(%s, 10, %L)', pg_temp.id('a'), 'storyboard v2'), 'the seller delivers again');
SELECT is((SELECT deliveries FROM milestones.order_milestones WHERE order_id = pg_temp.id('a') AND position = 1), 2, 'two deliveries counted');
SELECT throws_ok(format('SELECT milestones.request_revision(%s, 20)', pg_temp.id('a')), '55000',
                 format('request_revision is not allowed: order %s has no revisions left', pg_temp.id('a')), 'no revisions left');

-- R4: accept completes the milestone and charges the next in the same transaction
SELECT pg_temp.at('2030-01-03 00:00:00+00');
SELECT is((milestones.accept(pg_temp.id('a'), 20)).current_milestone, 2, 'accept moves to milestone 2');
SELECT is(pg_temp.ms('a'), ARRAY['completed','in_progress','pending'], 'milestone 1 completed, 2 started');
SELECT is((pg_temp.st('a')).charged, 250.00::numeric, 'milestone 2 was charged on accept');
SELECT is((pg_temp.st('a')).paid_out, 0.00::numeric, 'nothing is paid before the order ends (R7)');
SELECT is((SELECT gross FROM milestones.payout(pg_temp.id('a'))), 100.00::numeric, 'payout() of a running order shows what it earned so far');
SELECT ok(pg_temp.books_ok(), 'books balance after accept');
SELECT throws_ok(format('SELECT milestones.accept(%s, 20)', pg_temp.id('a')), '55000', NULL, 'an accepted milestone is not accepted twice');

-- deliver 2, accept, deliver 3 (final), accept: finished
SELECT lives_ok(format('SELECT milestones.deliver(%s, 10)', pg_temp.id('a')), 'milestone 2 delivered');
SELECT lives_ok(format('SELECT milestones.accept(%s, 20)', pg_temp.id('a')), 'milestone 2 accepted');
SELECT is((SELECT final FROM milestones.order_milestones WHERE order_id = pg_temp.id('a') AND position = 3), true, 'milestone 3 is the final delivery (R5)');
SELECT is((SELECT detail->>'final' FROM milestones.events WHERE order_id = pg_temp.id('a') AND event = 'delivered' ORDER BY event_id DESC LIMIT 1),
          'false', 'the delivery of milestone 2 was not final');
SELECT lives_ok(format('SELECT milestones.deliver(%s, 10, %L)', pg_temp.id('a'), 'the full project'), 'final delivery');
SELECT is((SELECT detail->>'final' FROM milestones.events WHERE order_id = pg_temp.id('a') AND event = 'delivered' ORDER BY event_id DESC LIMIT 1),
          'true', 'the last delivery is marked final');
SELECT is((milestones.accept(pg_temp.id('a'), 20)).state, 'completed', 'accepting the last milestone completes the order');
SELECT is((pg_temp.st('a')).reason, 'finished', 'reason finished');
SELECT is((pg_temp.st('a')).completed_at, '2030-01-03 00:00:00+00'::timestamptz, 'completed_at is the accept time');
SELECT is((pg_temp.st('a')).paid_out, 500.00::numeric, 'the seller is paid for all three milestones');
SELECT is((SELECT count(*)::int FROM milestones.payouts WHERE order_id = pg_temp.id('a')), 1, 'exactly one payout');
SELECT ok(pg_temp.books_ok(), 'books balance after a finished order');
SELECT throws_ok(format('SELECT milestones.deliver(%s, 10)', pg_temp.id('a')), '55000',
                 format('deliver is not allowed: order %s is completed (finished)', pg_temp.id('a')), 'a finished order is final');

-- R6: stop after the second delivery pays two of three milestones
INSERT INTO ids VALUES ('b', pg_temp.offer3(0));
SELECT milestones.place_order(pg_temp.id('b'), 20);
SELECT milestones.deliver(pg_temp.id('b'), 10);
SELECT milestones.accept(pg_temp.id('b'), 20);
SELECT milestones.deliver(pg_temp.id('b'), 10);
SELECT throws_ok(format('SELECT milestones.request_revision(%s, 20)', pg_temp.id('b')), '55000', NULL, 'zero revisions allowed means none');
SELECT is((milestones.stop(pg_temp.id('b'), 20)).state, 'completed', 'stop completes the order');
SELECT is((pg_temp.st('b')).reason, 'stopped', 'reason stopped');
SELECT is(pg_temp.ms('b'), ARRAY['completed','completed','skipped'], 'the delivery counts as completed, the rest is skipped');
SELECT is((pg_temp.st('b')).charged, 250.00::numeric, 'the skipped milestone was never charged');
SELECT is((pg_temp.st('b')).paid_out, 250.00::numeric, 'the seller is paid for the two completed milestones');
SELECT ok(pg_temp.books_ok(), 'books balance after a stopped order');
SELECT throws_ok(format('SELECT milestones.accept(%s, 20)', pg_temp.id('b')), '55000', NULL, 'a stopped order cannot be resumed (accept)');
SELECT throws_ok(format('SELECT milestones.deliver(%s, 10)', pg_temp.id('b')), '55000', NULL, 'a stopped order cannot be resumed (deliver)');
SELECT throws_ok(format('SELECT milestones.place_order(%s, 20)', pg_temp.id('b')), '55000', NULL, 'a stopped order cannot be placed again');

-- Stop right after the first delivery
INSERT INTO ids VALUES ('c', pg_temp.offer3());
SELECT milestones.place_order(pg_temp.id('c'), 20);
SELECT milestones.deliver(pg_temp.id('c'), 10);
SELECT is((milestones.stop(pg_temp.id('c'), 20)).paid_out, 100.00::numeric, 'stop after milestone 1 pays milestone 1');
SELECT is(pg_temp.ms('c'), ARRAY['completed','skipped','skipped'], 'milestones 2 and 3 skipped');

-- Unlimited revisions
INSERT INTO ids VALUES ('d', pg_temp.offer3(NULL));
SELECT milestones.place_order(pg_temp.id('d'), 20);
SELECT is((pg_temp.st('d')).revisions_left, NULL::integer, 'revisions_left is NULL when unlimited');
DO $$ BEGIN FOR i IN 1..5 LOOP
    PERFORM milestones.deliver(pg_temp.id('d'), 10);
    PERFORM milestones.request_revision(pg_temp.id('d'), 20);
END LOOP; END $$;
SELECT is((pg_temp.st('d')).revisions_used, 5, 'five revisions used on an unlimited order');

-- Withdraw and decline
INSERT INTO ids VALUES ('w', pg_temp.offer3()), ('x', pg_temp.offer3());
SELECT is((milestones.withdraw_offer(pg_temp.id('w'), 10)).state, 'withdrawn', 'the seller withdraws an offer');
SELECT is((milestones.decline_offer(pg_temp.id('x'), 20)).state, 'declined', 'the buyer declines an offer');
SELECT is(pg_temp.ms('x'), ARRAY['skipped','skipped','skipped'], 'a declined offer''s milestones are skipped');
SELECT throws_ok(format('SELECT milestones.place_order(%s, 20)', pg_temp.id('w')), '55000',
                 format('place_order is not allowed: order %s is withdrawn', pg_temp.id('w')), 'a withdrawn offer cannot be placed');
SELECT throws_ok(format('SELECT milestones.withdraw_offer(%s, 10)', pg_temp.id('x')), '55000', NULL, 'a declined offer cannot be withdrawn');
SELECT is((SELECT charged + paid_out + refunded FROM pg_temp.st('w')), 0.00::numeric, 'no money moves for withdrawn offers');

-- Eligibility is rechecked when placing
INSERT INTO ids VALUES ('e', pg_temp.offer3());
SELECT milestones.set_category_eligibility('design', false);
SELECT throws_ok(format('SELECT milestones.place_order(%s, 20)', pg_temp.id('e')), '0A000', NULL,
                 'an offer cannot be placed once its category is no longer eligible');
SELECT milestones.set_category_eligibility('design', true);

-- Fee captured on the order when offered (R7)
UPDATE milestones.settings SET seller_fee_rate = 0.15;
INSERT INTO ids VALUES ('f', pg_temp.offer3());
UPDATE milestones.settings SET seller_fee_rate = 0.30;
SELECT milestones.place_order(pg_temp.id('f'), 20);
SELECT milestones.deliver(pg_temp.id('f'), 10);
SELECT milestones.stop(pg_temp.id('f'), 20);
SELECT results_eq(format('SELECT gross, fee, net FROM milestones.payouts WHERE order_id = %s', pg_temp.id('f')),
                  $$VALUES (100.00::numeric, 15.00::numeric, 85.00::numeric)$$,
                  'the fee uses the rate captured at offer time (15 %), not the current one');

-- Every status row and event
SELECT is((SELECT count(*)::int FROM milestones.events WHERE order_id = pg_temp.id('a')), 10, 'every state change of order a is an event');
SELECT ok(pg_temp.books_ok(), 'books balance at the end');

SELECT * FROM finish();
ROLLBACK;
