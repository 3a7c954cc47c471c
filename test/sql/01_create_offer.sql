-- test/sql/01_create_offer.sql - R1, R2, R12: what an offer must be.
BEGIN;
\ir ../fixtures/setup.psql
SELECT plan(44);

-- A valid offer
SELECT lives_ok($$SELECT pg_temp.offer3()$$, 'a 3-milestone offer of 500.00 is accepted');
SELECT is((SELECT state FROM milestones.order_status ORDER BY order_id DESC LIMIT 1), 'offered', 'a new offer is offered');
SELECT is((SELECT array_agg(state ORDER BY position) FROM milestones.order_milestones
            WHERE order_id = (SELECT max(order_id) FROM milestones.orders)),
          ARRAY['pending','pending','pending'], 'its milestones are pending');
SELECT is((SELECT array_agg(final ORDER BY position) FROM milestones.order_milestones
            WHERE order_id = (SELECT max(order_id) FROM milestones.orders)),
          ARRAY[false,false,true], 'only the last milestone is the final delivery (R5)');
SELECT is((SELECT total FROM milestones.order_status ORDER BY order_id DESC LIMIT 1), 500.00::numeric, 'total is the sum of the milestones');
SELECT is((SELECT charged FROM milestones.order_status ORDER BY order_id DESC LIMIT 1), 0.00::numeric, 'nothing is charged at offer time');
SELECT is((SELECT count(*)::int FROM milestones.events WHERE event = 'offered'), 1, 'the offer is an event');

-- R1: total strictly more than the minimum (100.00)
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":1,"amount":"100.00"}]')$$,
                 '22023', 'milestone orders must total more than 100.00', 'a total of exactly 100.00 is refused');
SELECT lives_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":1,"amount":"100.01"}]')$$,
                'a total of 100.01 is accepted');
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":1,"amount":"60"},{"name":"B","days":1,"amount":"40"}]')$$,
                 '22023', NULL, 'the minimum applies to the total of all milestones');
UPDATE milestones.settings SET min_order_total = 500;
SELECT throws_ok($$SELECT pg_temp.offer3()$$, '22023', 'milestone orders must total more than 500.00',
                 'the minimum is a setting, read at offer time');
UPDATE milestones.settings SET min_order_total = 100;

-- R2: 1..max_milestones milestones
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design', '[]')$$, '22023', 'an offer needs 1 to 3 milestones', 'no milestones');
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design',
    '[{"name":"A","days":1,"amount":50},{"name":"B","days":1,"amount":50},{"name":"C","days":1,"amount":50},{"name":"D","days":1,"amount":50}]')$$,
    '22023', 'an offer needs 1 to 3 milestones', 'four milestones with the default maximum of 3');
UPDATE milestones.settings SET max_milestones = 6;
SELECT lives_ok($$SELECT milestones.create_offer(10, 20, 'design',
    '[{"name":"A","days":1,"amount":50},{"name":"B","days":1,"amount":50},{"name":"C","days":1,"amount":50},{"name":"D","days":1,"amount":50}]')$$,
    'four milestones when max_milestones is 6');
UPDATE milestones.settings SET max_milestones = 3;

-- R2: names
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"   ","days":1,"amount":150}]')$$,
                 '22023', 'milestone 1 name must have 1 to 200 characters and not be blank', 'blank name');
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"","days":1,"amount":150}]')$$,
                 '22023', NULL, 'empty name');
SELECT throws_ok(format($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"%s","days":1,"amount":150}]')$$, repeat('x', 201)),
                 '22023', NULL, 'a 201-character name');
SELECT lives_ok(format($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"%s","days":1,"amount":150}]')$$, repeat('é', 200)),
                'a 200-character non-ASCII name');
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":42,"days":1,"amount":150}]')$$,
                 '22023', 'milestone 1 needs a name (a JSON string)', 'a name that is not a string');

-- R2: days
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":0,"amount":150}]')$$,
                 '22023', 'milestone 1 days must be a whole number from 1 to 365', '0 days');
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":366,"amount":150}]')$$,
                 '22023', NULL, '366 days');
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":1.5,"amount":150}]')$$,
                 '22023', NULL, 'fractional days');
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":"5","amount":150}]')$$,
                 '22023', 'milestone 1 needs days (a JSON number)', 'days as a string');
SELECT lives_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":365,"amount":150}]')$$, '365 days');

-- R2: amounts, never rounded
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":1,"amount":"150.001"}]')$$,
                 '22023', 'milestone 1 amount has more than 2 decimals', 'three decimals are refused, not rounded');
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":1,"amount":150.005}]')$$,
                 '22023', 'milestone 1 amount has more than 2 decimals', 'three decimals as a JSON number');
SELECT lives_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":1,"amount":"150.000"}]')$$,
                'trailing zeros beyond cents change nothing and are accepted');
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":1,"amount":"0"},{"name":"B","days":1,"amount":"150"}]')$$,
                 '22023', 'milestone 1 amount must be more than 0 and at most 999999999.99', 'a zero amount');
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":1,"amount":"-5"},{"name":"B","days":1,"amount":"150"}]')$$,
                 '22023', NULL, 'a negative amount');
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":1,"amount":"NaN"}]')$$,
                 '22023', 'milestone 1 amount must be a decimal number', 'NaN');
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":1,"amount":"1e3"}]')$$,
                 '22023', NULL, 'exponent notation in a string');
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":1,"amount":1e400}]')$$,
                 '22023', NULL, 'a huge JSON number');
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":1,"amount":true}]')$$,
                 '22023', 'milestone 1 needs an amount (a JSON number or string)', 'a boolean amount');

-- JSON shape
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design', '{"name":"A"}')$$, '22023', 'milestones must be a JSON array', 'an object instead of an array');
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design', '[1]')$$, '22023', 'milestone 1 must be a JSON object', 'an array of numbers');
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":1,"amount":150,"amout":1}]')$$,
                 '22023', 'milestone 1 has unknown keys', 'a misspelt key is refused, not ignored');

-- parties, currency, revisions
SELECT throws_ok($$SELECT milestones.create_offer(10, 10, 'design', '[{"name":"A","days":1,"amount":150}]')$$,
                 '22023', 'buyer and seller must be different users', 'buyer = seller');
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":1,"amount":150}]', 0, 'usd')$$,
                 '22023', 'currency must be an ISO 4217 code', 'a lower-case currency');
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":1,"amount":150}]', -1)$$,
                 '22023', 'revisions must be 0 or more, or NULL for unlimited', 'negative revisions');
SELECT lives_ok($$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":1,"amount":150}]', NULL, 'EUR')$$,
                'unlimited revisions in EUR');

-- R12: eligibility
SELECT throws_ok($$SELECT milestones.create_offer(11, 20, 'design', '[{"name":"A","days":1,"amount":150}]')$$,
                 '0A000', 'seller 11 cannot offer milestone orders', 'a seller never enabled');
SELECT milestones.set_seller_eligibility(10, false);
SELECT throws_ok($$SELECT pg_temp.offer3()$$, '0A000', 'seller 10 cannot offer milestone orders', 'a seller disabled again');
SELECT milestones.set_seller_eligibility(10, true);
SELECT throws_ok($$SELECT milestones.create_offer(10, 20, 'writing', '[{"name":"A","days":1,"amount":150}]')$$,
                 '0A000', 'category ''writing'' does not offer milestone orders', 'a category never enabled');

-- a refused offer changes nothing
SELECT is((SELECT count(*)::int FROM milestones.orders), 7, 'only the accepted offers exist');

SELECT * FROM finish();
ROLLBACK;
