-- test/sql/33_idempotency.sql - retries with idempotency keys (SPEC section 3, issue 5).
--
-- A repeat with the same key and arguments returns the first call's
-- result and changes nothing, even after the order moved on; the same key
-- with other arguments, another function, order or actor is 22023; keys
-- are kept for settings.idempotency_ttl and purged by expire_overdue().
BEGIN;
\ir ../fixtures/setup.psql
SELECT plan(37);

-- counts(): what a repeat must not change.
CREATE FUNCTION pg_temp.counts() RETURNS text LANGUAGE sql AS $$
    SELECT format('orders=%s milestones=%s ledger=%s events=%s keys=%s',
                  (SELECT count(*) FROM milestones.orders),
                  (SELECT count(*) FROM milestones.order_milestones),
                  (SELECT count(*) FROM milestones.ledger_entries),
                  (SELECT count(*) FROM milestones.events),
                  (SELECT count(*) FROM milestones.idempotency_keys))
$$;
\set ms '''[{"name":"Storyboard","days":3,"amount":"100.00"},{"name":"Animation","days":7,"amount":"150.00"},{"name":"Final cut","days":5,"amount":"250.00"}]'''

-- create_offer
SELECT milestones.create_offer(10, 20, 'design', :ms, 1, 'USD', 'offer-1') AS o \gset
SELECT pg_temp.counts() AS c \gset
SELECT is(milestones.create_offer(10, 20, 'design', :ms, 1, 'USD', 'offer-1'), :o::bigint, 'create_offer repeated: the same order id');
SELECT is(pg_temp.counts(), :'c', 'create_offer repeated: nothing changed');
SELECT throws_ok(format($$SELECT milestones.create_offer(10, 20, 'design', %L, 2, 'USD', 'offer-1')$$, :ms), '22023',
                 $$idempotency key 'offer-1' was used for another call$$, 'create_offer: same key, other revisions');
SELECT throws_ok(format($$SELECT milestones.create_offer(10, 21, 'design', %L, 1, 'USD', 'offer-1')$$, :ms), '22023', NULL,
                 'create_offer: same key, other buyer');
SELECT throws_ok(format($$SELECT milestones.create_offer(10, 20, 'design', %L, 1, 'EUR', 'offer-1')$$, :ms), '22023', NULL,
                 'create_offer: same key, other currency');
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"Storyboard","days":3,"amount":"100.00"},{"name":"Animation","days":7,"amount":150.00},{"name":"Final cut","days":5,"amount":"250.00"}]', 1, 'USD', 'offer-1')$$,
                 '22023', NULL, 'create_offer: same key, an amount sent as a number instead of a string is another call');
SELECT lives_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"amount":"100.00","days":3,"name":"Storyboard"},{"name":"Animation","days":7,"amount":"150.00"},{"name":"Final cut","days":5,"amount":"250.00"}]', 1, 'USD', 'offer-1')$$,
                'create_offer: same key, same JSON with keys in another order and other spacing is the same call');
SELECT is(pg_temp.counts(), :'c', 'refused repeats changed nothing either');
SELECT milestones.set_seller_eligibility(10, false) \g /dev/null
SELECT is(milestones.create_offer(10, 20, 'design', :ms, 1, 'USD', 'offer-1'), :o::bigint,
          'a repeat returns the first result even when the call would now be refused (seller disabled)');
SELECT milestones.set_seller_eligibility(10, true) \g /dev/null

-- place_order, and a repeat after the order moved on
SELECT to_jsonb(s) AS placed FROM milestones.place_order(:o, 20, 'place-1') s \gset
SELECT pg_temp.counts() AS c \gset
SELECT is((SELECT to_jsonb(s) FROM milestones.place_order(:o, 20, 'place-1') s), :'placed'::jsonb, 'place_order repeated: the same status row');
SELECT is(pg_temp.counts(), :'c', 'place_order repeated: nothing changed (one charge, one event)');
SELECT is((SELECT count(*)::int FROM milestones.ledger_entries WHERE order_id = :o AND kind = 'charge'), 2, 'milestone 1 was charged once (two legs)');
SELECT milestones.deliver(:o, 10, 'v1', 'deliver-1') \g /dev/null
SELECT pg_temp.counts() AS c \gset
SELECT is((SELECT milestone_state FROM milestones.place_order(:o, 20, 'place-1')), 'in_progress',
          'a late repeat of place_order returns the first result (in progress), not the current state (delivered)');
SELECT is((SELECT milestone_state FROM milestones.deliver(:o, 10, 'v1', 'deliver-1')), 'delivered', 'deliver repeated');
SELECT is(pg_temp.counts(), :'c', 'late repeats changed nothing');
SELECT throws_ok(format($$SELECT milestones.deliver(%s, 10, 'v2', 'deliver-1')$$, :o), '22023', NULL, 'deliver: same key, other note');
SELECT throws_ok(format($$SELECT milestones.accept(%s, 20, 'deliver-1')$$, :o), '22023',
                 $$idempotency key 'deliver-1' was used for another call$$, 'same key, another function');
SELECT throws_ok(format($$SELECT milestones.place_order(%s, 21, 'place-1')$$, :o), '22023', NULL, 'same key, another actor');
SELECT throws_ok(format($$SELECT milestones.place_order(%s, 20, 'place-1')$$, :o + 1000), '22023', NULL, 'same key, another order');

-- accept, request_revision, stop, decline, withdraw, cancel: each repeat is a no-op
SELECT milestones.request_revision(:o, 20, 'again', 'rev-1') \g /dev/null
SELECT milestones.deliver(:o, 10, 'v2', 'deliver-2') \g /dev/null
SELECT milestones.accept(:o, 20, 'accept-1') \g /dev/null
SELECT pg_temp.counts() AS c \gset
SELECT is((SELECT revisions_left FROM milestones.request_revision(:o, 20, 'again', 'rev-1')), 0, 'request_revision repeated');
SELECT is((SELECT current_milestone FROM milestones.accept(:o, 20, 'accept-1')), 2, 'accept repeated: still the first result (milestone 2 started)');
SELECT is(pg_temp.counts(), :'c', 'no second revision, no second acceptance, no second charge');
SELECT milestones.deliver(:o, 10) \g /dev/null
SELECT milestones.stop(:o, 20, 'stop-1') \g /dev/null
SELECT pg_temp.counts() AS c \gset
SELECT is((SELECT state || '/' || reason FROM milestones.stop(:o, 20, 'stop-1')), 'completed/stopped', 'stop repeated on an ended order returns the first result');
SELECT is(pg_temp.counts(), :'c', 'stop repeated: no second payout');
SELECT pg_temp.offer3() AS w \gset
SELECT pg_temp.offer3() AS d \gset
SELECT pg_temp.offer3() AS x \gset
SELECT milestones.withdraw_offer(:w, 10, 'withdraw-1') \g /dev/null
SELECT milestones.decline_offer(:d, 20, 'decline-1') \g /dev/null
SELECT milestones.cancel(:x, 'agent-1', 'mutual_agreement', NULL, 'cancel-1') \g /dev/null
SELECT pg_temp.counts() AS c \gset
SELECT is((SELECT state FROM milestones.withdraw_offer(:w, 10, 'withdraw-1')), 'withdrawn', 'withdraw_offer repeated');
SELECT is((SELECT state FROM milestones.decline_offer(:d, 20, 'decline-1')), 'declined', 'decline_offer repeated');
SELECT is((SELECT state FROM milestones.cancel(:x, 'agent-1', 'mutual_agreement', NULL, 'cancel-1')), 'cancelled', 'cancel repeated');
SELECT throws_ok(format($$SELECT milestones.cancel(%s, 'agent-2', 'mutual_agreement', NULL, 'cancel-1')$$, :x), '22023', NULL,
                 'cancel: same key, another agent');
SELECT is(pg_temp.counts(), :'c', 'the repeats changed nothing');
-- A key is one call: a call without a key is never deduplicated.
SELECT isnt(pg_temp.offer3(), pg_temp.offer3(), 'calls without a key are separate calls');

-- A failed first call keeps no key: the retry runs.
SELECT throws_ok(format($$SELECT milestones.place_order(%s, 21, 'place-w')$$, :w), '42501', NULL, 'a refused call ...');
SELECT is((SELECT count(*)::int FROM milestones.idempotency_keys WHERE key = 'place-w'), 0, '... leaves no key behind');

-- TTL and purge: keys older than settings.idempotency_ttl go with the sweep.
SELECT is((SELECT idempotency_ttl FROM milestones.settings), interval '7 days', 'keys are kept 7 days by default');
UPDATE milestones.idempotency_keys SET created_at = '2029-12-20 00:00+00' WHERE key IN ('offer-1', 'place-1');
SELECT pg_temp.at('2030-01-01 00:00+00');
SELECT milestones.expire_overdue() \g /dev/null
SELECT is(ARRAY(SELECT key FROM milestones.idempotency_keys WHERE key IN ('offer-1', 'place-1', 'deliver-1') ORDER BY key),
          ARRAY['deliver-1'], 'the sweep purged the keys older than 7 days and kept the others');
UPDATE milestones.settings SET idempotency_ttl = '1 hour';
SELECT milestones.expire_overdue('2030-01-01 02:00+00') \g /dev/null
SELECT is((SELECT count(*)::int FROM milestones.idempotency_keys), 0, 'with a 1-hour TTL, the sweep 2 hours later purged every key');
SELECT isnt(milestones.create_offer(10, 20, 'design', :ms, 1, 'USD', 'offer-1'), :o::bigint,
            'after the purge, the old key makes a new order (a retry must come within the TTL)');
SELECT throws_ok($$UPDATE milestones.settings SET idempotency_ttl = '1 minute'$$, '23514', NULL, 'the TTL is at least an hour');

SELECT * FROM finish();
ROLLBACK;
