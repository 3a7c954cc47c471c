-- test/sql/42_earnings.sql - seller earnings (SPEC section 12, issue 21):
-- the credit at a confirmed-mode payout, clearance exact to the second,
-- holds, withdrawals and the provider's answers, the guards, the commit
-- check and the invariants.  Every refusal with its SQLSTATE.
--
-- Orders: the first section runs confirmed-mode orders through the API
-- (the engine credits the payout); the others take ended confirmed-mode
-- orders from earn_fixture.paid_order() (test/fixtures/earnings.sql),
-- credited by _credit_earning() through EarningsCredit, the same C path,
-- so that each test sets its dates and amounts in one call.
BEGIN;
\ir ../fixtures/setup.psql
\ir ../fixtures/earnings.sql
SELECT plan(166);
SET LOCAL track_functions = 'all';
SET LOCAL TimeZone = 'UTC';
-- checks(): how many times this transaction ran _seller_problems().
CREATE FUNCTION pg_temp.checks() RETURNS bigint LANGUAGE sql AS $$
    SELECT COALESCE(sum(calls), 0)::bigint FROM pg_stat_xact_user_functions
     WHERE schemaname = 'milestones' AND funcname = '_seller_problems' $$;
-- bal(seller, currency): the balances as text.
CREATE FUNCTION pg_temp.bal(s bigint, c text DEFAULT 'USD') RETURNS text LANGUAGE sql AS $$
    SELECT format('%s/%s/%s/%s', pending, available, withdrawing, withdrawn)
      FROM milestones.seller_balances WHERE seller_id = s AND currency = c $$;
-- counts(): what a repeated call must not change.
CREATE FUNCTION pg_temp.counts() RETURNS text LANGUAGE sql AS $$
    SELECT format('ledger=%s withdrawals=%s events=%s earnings_cleared=%s keys=%s',
                  (SELECT count(*) FROM milestones.seller_ledger),
                  (SELECT count(*) FROM milestones.seller_withdrawals),
                  (SELECT count(*) FROM milestones.events),
                  (SELECT count(*) FROM milestones.seller_earnings WHERE cleared_at IS NOT NULL),
                  (SELECT count(*) FROM milestones.idempotency_keys)) $$;
-- flush(): run the deferred commit checks now.
CREATE FUNCTION pg_temp.flush() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    SET CONSTRAINTS ALL IMMEDIATE;
    SET CONSTRAINTS ALL DEFERRED;
END $$;

-------------------------------------------------------------------------------
-- The engine credits every confirmed-mode payout (and nothing in recorded mode)
-------------------------------------------------------------------------------
SELECT milestones.set_seller_eligibility(30, true) \g /dev/null
SELECT milestones.set_setting('payment_mode', 'confirmed') \g /dev/null
SELECT milestones.create_offer(30, 20, 'design', '[{"name":"Logo","days":3,"amount":"120.00"}]') AS c1 \gset
SELECT milestones.create_offer(30, 20, 'design', '[{"name":"Logo","days":3,"amount":"80.00"},{"name":"Site","days":9,"amount":"90.00"}]') AS c2 \gset
\o /dev/null
SELECT milestones.place_order(id, 20) FROM unnest(ARRAY[:c1, :c2]::bigint[]) id;
SELECT milestones.record_charge(c.charge_id, 1, 'succeeded', 'ch_' || c.charge_id) FROM milestones.charges c WHERE c.order_id IN (:c1, :c2);
SELECT milestones.deliver(id, 30) FROM unnest(ARRAY[:c1, :c2]::bigint[]) id;
SELECT pg_temp.at('2030-01-02 00:00:00+00');
SELECT milestones.accept(id, 20) FROM unnest(ARRAY[:c1, :c2]::bigint[]) id;
SELECT pg_temp.at('2030-01-03 00:00:00+00');
SELECT milestones.cancel(:c2, 'agent-1', 'mutual_agreement');
\o
SELECT is((SELECT format('%s %s %s', amount, earned_at, clears_at) FROM milestones.seller_earnings WHERE order_id = :c1),
          '120.00 2030-01-02 00:00:00+00 2030-01-16 00:00:00+00',
          'a finished confirmed-mode order: its net is the seller''s earning, earned when it completed, clearing 14 days later');
SELECT is((SELECT format('%s %s', amount, earned_at) FROM milestones.seller_earnings WHERE order_id = :c2),
          '80.00 2030-01-03 00:00:00+00', 'a cancelled one: its completed milestone''s net, earned at the cancellation');
SELECT is(pg_temp.bal(30), '200.00/0.00/0.00/0.00', 'both are pending on the seller''s balance');
SELECT milestones.set_setting('payment_mode', 'recorded') \g /dev/null
SELECT milestones.place_order(pg_temp.offer3(), 20) AS r \gset
SELECT is((SELECT count(*)::int FROM milestones.seller_earnings WHERE order_id IN (SELECT order_id FROM milestones.orders WHERE payment_mode = 'recorded')),
          0, 'recorded-mode orders credit nothing (1.1 behaviour)');

-------------------------------------------------------------------------------
-- The credit at the payout
-------------------------------------------------------------------------------
SELECT pg_temp.at('2030-01-05 00:00:00+00');
SELECT earn_fixture.paid_order(10, 100.00, '2030-01-01 00:00:00+00') AS o1 \gset
SELECT milestones._credit_earning(:o1) AS e1 \gset
SELECT is(pg_temp.bal(10), '100.00/0.00/0.00/0.00', 'the payout net goes to the seller''s pending balance');
SELECT is((SELECT format('%s %s %s %s', amount, earned_at, clearance_period, clears_at) FROM milestones.seller_earnings WHERE earning_id = :e1),
          '100.00 2030-01-01 00:00:00+00 14 days 2030-01-15 00:00:00+00',
          'the earning: earned at the order''s end, clearance_period captured, clears_at = end + 14 days');
SELECT is((SELECT string_agg(format('%s %s %s', kind, account, amount), ', ' ORDER BY amount) FROM milestones.seller_ledger WHERE earning_id = :e1),
          'earning earnings -100.00, earning pending 100.00', 'one journal transaction earnings -> pending');
SELECT is((SELECT next_clears_at FROM milestones.seller_balances WHERE seller_id = 10), '2030-01-15 00:00:00+00'::timestamptz,
          'seller_balances.next_clears_at is the earliest pending clearance');
SELECT is(milestones.seller_balance(10, 'USD'), (SELECT b FROM milestones.seller_balances b WHERE seller_id = 10),
          'seller_balance() returns the seller_balances row');
-- the fee: net = gross - fee
SELECT earn_fixture.earn(10, 50.00, '2030-01-03 00:00:00+00', 'USD', 0.2) AS e2 \gset
SELECT is((SELECT amount FROM milestones.seller_earnings WHERE earning_id = :e2), 40.00, 'the earning is the payout''s net (gross 50.00, 20 % fee)');
SELECT is(pg_temp.bal(10), '140.00/0.00/0.00/0.00', 'pending adds up');
-- clearance_period is captured on the payout
UPDATE milestones.settings SET clearance_period = '7 days';
SELECT earn_fixture.earn(10, 30.00, '2030-01-04 00:00:00+00') AS e3 \gset
SELECT is((SELECT clears_at FROM milestones.seller_earnings WHERE earning_id = :e3), '2030-01-11 00:00:00+00'::timestamptz,
          'a new clearance_period applies to payouts from then on');
SELECT is((SELECT clears_at FROM milestones.seller_earnings WHERE earning_id = :e1), '2030-01-15 00:00:00+00'::timestamptz,
          '... and never to earnings already credited');
UPDATE milestones.settings SET clearance_period = '14 days';
-- clears_at is computed in UTC: a daylight saving change does not move it
SET LOCAL TimeZone = 'Europe/Berlin';
SELECT earn_fixture.earn(16, 10.00, '2030-03-20 12:00:00+00') AS e_dst \gset
SELECT is((SELECT extract(epoch FROM clears_at - earned_at)::bigint FROM milestones.seller_earnings WHERE earning_id = :e_dst),
          1209600::bigint, 'clears_at is 14 x 24 hours after the end even across a DST change (TimeZone Europe/Berlin)');
SET LOCAL TimeZone = 'UTC';
-- _credit_earning refusals
SELECT throws_ok(format('SELECT milestones._credit_earning(%s)', :o1), '55000',
                 format('order %s was credited already', :o1), '_credit_earning: an order is credited once');
SELECT throws_ok('SELECT milestones._credit_earning(NULL)', '22023', 'order_id must not be NULL', '_credit_earning: NULL');
SELECT throws_ok('SELECT milestones._credit_earning(0)', '22023', 'order_id must be a positive id', '_credit_earning: 0');
SELECT throws_ok('SELECT milestones._credit_earning(999999)', 'P0002', 'order 999999 does not exist', '_credit_earning: unknown order');
SELECT throws_ok(format('SELECT milestones._credit_earning(%s)', pg_temp.offer3()), '55000', NULL,
                 '_credit_earning: a recorded-mode order has no seller balance');
SELECT throws_ok(format('SELECT milestones._credit_earning(%s)', earn_fixture.paid_order(10, 0.01, '2030-01-04', 'USD', 0.5)),
                 '55000', NULL, '_credit_earning: an order whose payout left the seller nothing');
SELECT is(pg_temp.checks(), 0::bigint, 'credits written by EarningsCredit pass the commit check without _seller_problems()')
  FROM pg_temp.flush();

-------------------------------------------------------------------------------
-- Clearance: the sweep, exactly at clears_at, once
-------------------------------------------------------------------------------
SELECT is(milestones.clear_earnings(), 0, 'nothing is due before its clears_at');
SELECT pg_temp.at('2030-01-10 23:59:59+00');
SELECT is(milestones.clear_earnings(), 0, 'one second before clears_at: nothing clears');
SELECT pg_temp.at('2030-01-11 00:00:00+00');
SELECT is(milestones.clear_earnings(), 1, 'at clears_at exactly, the earning clears');
SELECT is(pg_temp.bal(10), '140.00/30.00/0.00/0.00', 'pending -> available');
SELECT is((SELECT cleared_at FROM milestones.seller_earnings WHERE earning_id = :e3), '2030-01-11 00:00:00+00'::timestamptz,
          'cleared_at is when it cleared');
SELECT is((SELECT string_agg(format('%s %s %s', kind, account, amount), ', ' ORDER BY amount) FROM milestones.seller_ledger
            WHERE earning_id = :e3 AND kind = 'clearance'),
          'clearance pending -30.00, clearance available 30.00', 'one journal transaction pending -> available');
SELECT is(milestones.clear_earnings(), 0, 'a second sweep clears nothing again');
SELECT pg_temp.at('2030-01-20 00:00:00+00');
SELECT is(milestones.clear_earnings(batch => 1), 1, 'batch 1: one earning');
SELECT is((SELECT cleared_at IS NOT NULL FROM milestones.seller_earnings WHERE earning_id = :e1), true, '... the oldest first');
SELECT is(milestones.clear_earnings(), 3, 'the next run takes the rest (seller 30''s two too)');
SELECT is(pg_temp.bal(10), '0.00/170.00/0.00/0.00', 'all of seller 10 is available');
SELECT is(milestones.clear_earnings('2030-01-01'), 0, 'an as_of in the past clears what was due then');
SELECT throws_ok($$SELECT milestones.clear_earnings('2030-01-20 00:00:01+00')$$, '22023', 'as_of must not be after milestones.now()',
                 'clear_earnings: as_of in the future (nothing becomes available early)');
SELECT throws_ok('SELECT milestones.clear_earnings(NULL)', '22023', 'as_of must not be NULL', 'clear_earnings: NULL as_of');
SELECT throws_ok('SELECT milestones.clear_earnings(batch => NULL)', '22023', 'batch must not be NULL', 'clear_earnings: NULL batch');
SELECT throws_ok('SELECT milestones.clear_earnings(batch => 0)', '22023', 'batch must be between 1 and 100000', 'clear_earnings: batch 0');
SELECT throws_ok($$SELECT milestones.clear_earnings('-infinity')$$, '22023', 'as_of must be a finite timestamp', 'clear_earnings: -infinity');

-------------------------------------------------------------------------------
-- Exact to the second: a withdrawal clears the seller's due funds itself
-------------------------------------------------------------------------------
SELECT earn_fixture.earn(11, 80.00, '2030-01-10 00:00:00+00') AS e11 \gset
SELECT pg_temp.at('2030-01-23 23:59:59+00');
SELECT throws_ok($$SELECT milestones.request_withdrawal(11, 80.00, 'USD')$$, '55000',
                 'seller 11 cannot withdraw 80.00 USD: only 0.00 is available', 'one second before clears_at nothing is available');
SELECT pg_temp.at('2030-01-24 00:00:00+00');
SELECT ok(milestones.request_withdrawal(11, 80.00, 'USD') > 0, 'at clears_at the withdrawal works without the sweep having run');
SELECT is(pg_temp.bal(11), '0.00/0.00/80.00/0.00', 'the earning cleared and was withdrawn');
SELECT is((SELECT cleared_at FROM milestones.seller_earnings WHERE earning_id = :e11), '2030-01-24 00:00:00+00'::timestamptz,
          'cleared by the withdrawal, at its time');
SELECT is((SELECT available_before FROM milestones.seller_withdrawals WHERE seller_id = 11), 80.00,
          'available_before is what was available after the clearance');

-------------------------------------------------------------------------------
-- Withdrawals
-------------------------------------------------------------------------------
SELECT milestones.request_withdrawal(10, 60.00, 'USD', 'wd-1') AS w1 \gset
SELECT is(pg_temp.bal(10), '0.00/110.00/60.00/0.00', 'request_withdrawal: available -> withdrawing');
SELECT is((SELECT format('%s %s %s %s %s', seller_id, currency, amount, available_before, state) FROM milestones.withdrawals WHERE withdrawal_id = :w1),
          '10 USD 60.00 170.00 requested', 'the withdrawals row');
SELECT is((SELECT string_agg(format('%s %s %s', kind, account, amount), ', ' ORDER BY amount) FROM milestones.seller_ledger WHERE withdrawal_id = :w1),
          'withdrawal available -60.00, withdrawal withdrawing 60.00', 'one journal transaction available -> withdrawing');
SELECT is((SELECT to_jsonb(e) - 'event_id' - 'recorded_at' - 'txid' - 'txid_cluster' FROM milestones.events e WHERE event = 'withdrawal_requested' AND (detail->>'withdrawal_id')::bigint = :w1),
          jsonb_build_object('order_id', NULL, 'position', NULL, 'event', 'withdrawal_requested', 'actor_role', 'seller', 'actor_id', 10,
                             'agent', NULL, 'order_state', NULL, 'milestone_state', NULL, 'created_at', '2030-01-24T00:00:00+00:00',
                             'detail', jsonb_build_object('withdrawal_id', :w1, 'seller_id', 10, 'amount', 60.00, 'currency', 'USD')),
          'event withdrawal_requested: no order, the seller as actor, withdrawal, seller, amount and currency in the detail');
SELECT pg_temp.counts() AS c \gset
SELECT is(milestones.request_withdrawal(10, 60.00, 'USD', 'wd-1'), :w1::bigint, 'a retry with the same key returns the first withdrawal');
SELECT is(milestones.request_withdrawal(10, 60, 'USD', 'wd-1'), :w1::bigint, '... the amount written as 60 is the same call');
SELECT is(pg_temp.counts(), :'c', '... and changes nothing');
SELECT throws_ok($$SELECT milestones.request_withdrawal(10, 61.00, 'USD', 'wd-1')$$, '22023',
                 $$idempotency key 'wd-1' was used for another call$$, 'the same key with another amount');
SELECT throws_ok(format($$SELECT milestones.place_order(%s, 20, 'wd-1')$$, pg_temp.offer3()), '22023', NULL,
                 'the same key for another function');
SELECT throws_ok($$SELECT milestones.request_withdrawal(10, 110.01, 'USD')$$, '55000',
                 'seller 10 cannot withdraw 110.01 USD: only 110.00 is available', 'more than is available');
CREATE FUNCTION pg_temp.error_detail(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE d text;
BEGIN
    EXECUTE sql;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
    RETURN d;
END $$;
SELECT is(pg_temp.error_detail($$SELECT milestones.request_withdrawal(10, 500, 'USD')$$),
          'Seller 10 has 110.00 USD available, 0.00 pending clearance and 60.00 being withdrawn.',
          'the DETAIL says what is available');
SELECT is(milestones.request_withdrawal(10, 12.500, 'USD') > 0, true, 'an amount with trailing zeros is whole cents');
SELECT is((SELECT amount::text FROM milestones.withdrawals ORDER BY withdrawal_id DESC LIMIT 1), '12.50', '... and kept as 12.50');
-- bad input
SELECT throws_ok($$SELECT milestones.request_withdrawal(NULL, 1, 'USD')$$, '22023', 'seller_id must not be NULL', 'request_withdrawal: NULL seller');
SELECT throws_ok($$SELECT milestones.request_withdrawal(-1, 1, 'USD')$$, '22023', 'seller_id must be a positive id', 'request_withdrawal: seller -1');
SELECT throws_ok($$SELECT milestones.request_withdrawal(10, NULL, 'USD')$$, '22023', 'amount must not be NULL', 'request_withdrawal: NULL amount');
SELECT throws_ok($$SELECT milestones.request_withdrawal(10, 0, 'USD')$$, '22023', 'amount must be more than 0 and at most 999999999999.99', 'request_withdrawal: amount 0');
SELECT throws_ok($$SELECT milestones.request_withdrawal(10, -5, 'USD')$$, '22023', NULL, 'request_withdrawal: a negative amount');
SELECT throws_ok($$SELECT milestones.request_withdrawal(10, 1.001, 'USD')$$, '22023', 'amount has more than 2 decimals', 'request_withdrawal: 3 decimals (never rounded)');
SELECT throws_ok($$SELECT milestones.request_withdrawal(10, 'NaN', 'USD')$$, '22023', 'amount must be a decimal number', 'request_withdrawal: NaN');
SELECT throws_ok($$SELECT milestones.request_withdrawal(10, 1e12, 'USD')$$, '22023', NULL, 'request_withdrawal: too large');
SELECT throws_ok($$SELECT milestones.request_withdrawal(10, 1, NULL)$$, '22023', 'currency must not be NULL', 'request_withdrawal: NULL currency');
SELECT throws_ok($$SELECT milestones.request_withdrawal(10, 1, 'usd')$$, '22023', 'currency must be an ISO 4217 code', 'request_withdrawal: not an ISO code');
SELECT throws_ok($$SELECT milestones.request_withdrawal(10, 1, 'EUR')$$, '22023', 'seller 10 holds no balance in EUR',
                 'request_withdrawal: a currency the seller holds no balance in');
SELECT is(pg_temp.error_detail($$SELECT milestones.request_withdrawal(10, 1, 'EUR')$$), 'Seller 10 holds balances in USD.',
          '... the DETAIL names the currencies it holds');
SELECT throws_ok($$SELECT milestones.request_withdrawal(77, 1, 'USD')$$, '22023', 'seller 77 holds no balance in USD',
                 'request_withdrawal: a seller without any balance');
SELECT throws_ok($$SELECT milestones.request_withdrawal(10, 1, 'USD', '')$$, '22023', NULL, 'request_withdrawal: an empty idempotency key');

-- the provider's answers
SELECT is((SELECT format('%s %s %s', state, reported_at, provider_ref) FROM milestones.record_withdrawal(:w1, 'succeeded', 'po_1')),
          'succeeded 2030-01-24 00:00:00+00 po_1', 'record_withdrawal succeeded returns the withdrawals row');
SELECT is(pg_temp.bal(10), '0.00/97.50/12.50/60.00', 'withdrawing -> withdrawn');
SELECT is((SELECT detail FROM milestones.events WHERE event = 'withdrawal_succeeded' AND (detail->>'withdrawal_id')::bigint = :w1),
          jsonb_build_object('withdrawal_id', :w1, 'seller_id', 10, 'amount', 60.00, 'currency', 'USD', 'provider_ref', 'po_1'),
          'event withdrawal_succeeded');
SELECT is((SELECT actor_role || coalesce(actor_id::text, '/no actor id') || coalesce(order_id::text, '/no order') FROM milestones.events WHERE event = 'withdrawal_succeeded'),
          'payments/no actor id/no order', '... by the payments role, with no order');
SELECT pg_temp.counts() AS c \gset
SELECT is((SELECT state FROM milestones.record_withdrawal(:w1, 'succeeded', 'po_1')), 'succeeded', 'the same report again returns the same row');
SELECT is((SELECT state FROM milestones.record_withdrawal(:w1, 'succeeded')), 'succeeded', '... also without its provider_ref');
SELECT is(pg_temp.counts(), :'c', '... and changes nothing');
SELECT throws_ok(format($$SELECT milestones.record_withdrawal(%s, 'succeeded', 'po_2')$$, :w1), '55000',
                 format('withdrawal %s succeeded already with another provider_ref', :w1), 'a success with another provider_ref');
SELECT throws_ok(format($$SELECT milestones.record_withdrawal(%s, 'failed', NULL, 'account closed')$$, :w1), '55000',
                 format('withdrawal %s succeeded already', :w1), 'failed after succeeded');
SELECT milestones.request_withdrawal(10, 20.00, 'USD') AS w2 \gset
SELECT is((SELECT format('%s %s', state, failure) FROM milestones.record_withdrawal(:w2, 'failed', NULL, 'account closed')),
          'failed account closed', 'record_withdrawal failed');
SELECT is(pg_temp.bal(10), '0.00/97.50/12.50/60.00', 'a failed withdrawal goes back to available');
SELECT is((SELECT detail->>'failure' FROM milestones.events WHERE event = 'withdrawal_failed'), 'account closed', 'event withdrawal_failed with the failure');
SELECT is((SELECT state FROM milestones.record_withdrawal(:w2, 'failed', NULL, 'closed, again')), 'failed', 'a repeated failure returns the same row');
SELECT throws_ok(format($$SELECT milestones.record_withdrawal(%s, 'succeeded', 'po_3')$$, :w2), '55000',
                 format('withdrawal %s failed already', :w2), 'succeeded after failed (the amount went back to available)');
SELECT throws_ok($$SELECT milestones.record_withdrawal(999999, 'succeeded')$$, 'P0002', 'withdrawal 999999 does not exist', 'record_withdrawal: unknown withdrawal');
SELECT milestones.request_withdrawal(10, 1.00, 'USD') AS w3 \gset
SELECT throws_ok($$SELECT milestones.record_withdrawal(NULL, 'succeeded')$$, '22023', 'withdrawal_id must not be NULL', 'record_withdrawal: NULL id');
SELECT throws_ok(format($$SELECT milestones.record_withdrawal(%s, NULL)$$, :w3), '22023', 'outcome must not be NULL', 'record_withdrawal: NULL outcome');
SELECT throws_ok(format($$SELECT milestones.record_withdrawal(%s, 'voided')$$, :w3), '22023', 'outcome must be succeeded or failed', 'record_withdrawal: another outcome');
SELECT throws_ok(format($$SELECT milestones.record_withdrawal(%s, 'failed')$$, :w3), '22023', 'failure must not be NULL for a failed withdrawal',
                 'record_withdrawal: failed without a failure text');
SELECT throws_ok(format($$SELECT milestones.record_withdrawal(%s, 'succeeded', 'po', 'oops')$$, :w3), '22023', 'failure is only for a failed withdrawal',
                 'record_withdrawal: succeeded with a failure text');
SELECT throws_ok(format($$SELECT milestones.record_withdrawal(%s, 'succeeded', '')$$, :w3), '22023', 'provider_ref must not be blank', 'record_withdrawal: empty provider_ref');
SELECT throws_ok(format($$SELECT milestones.record_withdrawal(%s, 'succeeded', repeat('x', 256))$$, :w3), '22023', 'provider_ref is too long', 'record_withdrawal: provider_ref over 255');
SELECT throws_ok(format($$SELECT milestones.record_withdrawal(%s, 'failed', NULL, repeat('x', 2001))$$, :w3), '22023', 'failure is too long', 'record_withdrawal: failure over 2000');
SELECT throws_ok(format($$SELECT milestones.record_withdrawal(%s, 'failed', NULL, '')$$, :w3), '22023', 'failure must not be blank', 'record_withdrawal: empty failure');
SELECT is((SELECT state FROM milestones.withdrawals WHERE withdrawal_id = :w3), 'requested', 'refused reports changed nothing');

-------------------------------------------------------------------------------
-- Holds
-------------------------------------------------------------------------------
SELECT earn_fixture.earn(12, 90.00, '2030-01-01 00:00:00+00') AS e12a \gset
SELECT earn_fixture.earn(12, 10.00, '2030-01-02 00:00:00+00') AS e12b \gset
SELECT milestones.clear_earnings() \g /dev/null
SELECT earn_fixture.earn(12, 25.00, '2030-01-15 00:00:00+00') AS e12c \gset
SELECT earn_fixture.earn(12, 7.00, '2030-01-20 00:00:00+00', 'EUR') AS e12eur \gset
SELECT is((SELECT string_agg(format('%s %s %s', currency, available, held), ', ' ORDER BY currency) FROM milestones.hold_clearance(12, 'chargeback review')),
          'EUR 0.00 t, USD 100.00 t', 'hold_clearance returns the seller''s balances, held, in every currency');
SELECT pg_temp.at('2030-02-10 00:00:00+00');
SELECT is(milestones.clear_earnings(), 0, 'a held seller''s due earnings do not clear');
SELECT ok(milestones.request_withdrawal(12, 100.00, 'USD') > 0, 'available funds stay withdrawable while held');
SELECT is(pg_temp.bal(12), '25.00/0.00/100.00/0.00', '... but the withdrawal cleared nothing');
SELECT throws_ok($$SELECT milestones.request_withdrawal(12, 25.00, 'USD')$$, '55000', NULL, 'held funds cannot be withdrawn');
SELECT throws_ok($$SELECT milestones.hold_clearance(12, 'again')$$, '55000', 'seller 12 is held already', 'a second hold');
SELECT is(pg_temp.error_detail($$SELECT milestones.hold_clearance(12, 'again')$$) LIKE 'Hold % has held seller 12''s clearance since 2030-01-24 00:00:00+00: chargeback review.',
          true, '... the DETAIL names the open hold, since when and why');
SELECT pg_temp.at('2030-02-11 00:00:00+00');
SELECT is((SELECT string_agg(format('%s %s/%s %s', currency, pending, available, held), ', ' ORDER BY currency) FROM milestones.release_clearance(12)),
          'EUR 0.00/7.00 f, USD 0.00/25.00 f', 'release_clearance clears what is due at once, in every currency');
SELECT is((SELECT cleared_at FROM milestones.seller_earnings WHERE earning_id = :e12c), '2030-02-11 00:00:00+00'::timestamptz,
          '... at the release');
SELECT throws_ok($$SELECT milestones.release_clearance(12)$$, '55000', 'seller 12 is not held', 'a release without a hold');
SELECT is((SELECT count(*)::int FROM milestones.seller_holds WHERE seller_id = 12 AND released_at = '2030-02-11'), 1, 'the hold stays as history');
SELECT is((SELECT count(*)::int FROM milestones.hold_clearance(78, 'pre-emptive')), 0, 'a seller without balances can be held (no rows)');
SELECT is((SELECT count(*)::int FROM milestones.release_clearance(78)), 0, '... and released');
SELECT throws_ok($$SELECT milestones.hold_clearance(NULL, 'x')$$, '22023', 'seller_id must not be NULL', 'hold_clearance: NULL seller');
SELECT throws_ok($$SELECT milestones.hold_clearance(0, 'x')$$, '22023', 'seller_id must be a positive id', 'hold_clearance: seller 0');
SELECT throws_ok($$SELECT milestones.hold_clearance(12, NULL)$$, '22023', 'note must not be NULL', 'hold_clearance: NULL note');
SELECT throws_ok($$SELECT milestones.hold_clearance(12, '  ')$$, '22023', 'note must not be blank', 'hold_clearance: blank note');
SELECT throws_ok($$SELECT milestones.hold_clearance(12, repeat('n', 2001))$$, '22023', 'note is too long', 'hold_clearance: note over 2000');
SELECT throws_ok($$SELECT milestones.release_clearance(NULL)$$, '22023', 'seller_id must not be NULL', 'release_clearance: NULL seller');
SELECT throws_ok($$SELECT milestones.release_clearance(-3)$$, '22023', 'seller_id must be a positive id', 'release_clearance: seller -3');

-------------------------------------------------------------------------------
-- seller_balance
-------------------------------------------------------------------------------
SELECT is((milestones.seller_balance(12, 'EUR')).available, 7.00, 'seller_balance in another currency');
SELECT throws_ok($$SELECT milestones.seller_balance(12, 'GBP')$$, 'P0002', 'seller 12 holds no balance in GBP', 'seller_balance: a currency not held');
SELECT throws_ok($$SELECT milestones.seller_balance(NULL, 'USD')$$, '22023', 'seller_id must not be NULL', 'seller_balance: NULL seller');
SELECT throws_ok($$SELECT milestones.seller_balance(12, NULL)$$, '22023', 'currency must not be NULL', 'seller_balance: NULL currency');
SELECT throws_ok($$SELECT milestones.seller_balance(12, 'E')$$, '22023', 'currency must be an ISO 4217 code', 'seller_balance: a bad currency');

-------------------------------------------------------------------------------
-- Privileges
-------------------------------------------------------------------------------
SET LOCAL ROLE milestones_app;
SELECT ok(milestones.request_withdrawal(12, 1.00, 'USD') > 0, 'the application requests withdrawals');
SELECT is((milestones.seller_balance(12, 'USD')).available, 24.00, 'the application reads balances');
SELECT throws_ok(format($$SELECT milestones.record_withdrawal(%s, 'succeeded')$$, :w3), '42501', NULL,
                 'the web application cannot report a withdrawal (no EXECUTE)');
SELECT throws_ok($$SELECT milestones.hold_clearance(12, 'x')$$, '42501', NULL, 'the application cannot hold a seller');
SELECT throws_ok($$SELECT milestones.clear_earnings()$$, '42501', NULL, 'the application cannot run the sweep');
SELECT throws_ok($$SELECT milestones._credit_earning(1)$$, '42501', NULL, 'the application cannot credit earnings');
SELECT throws_ok($$UPDATE milestones.seller_accounts SET available = 1000000$$, '42501', NULL, 'the application cannot write balances');
SELECT is(pg_temp.checks(), 0::bigint, 'the application''s calls pass the commit check from their facts (run as the owner)') FROM pg_temp.flush();
RESET ROLE;
SET LOCAL ROLE milestones_payments;
SELECT is((SELECT state FROM milestones.record_withdrawal(:w3, 'succeeded', 'po_w3')), 'succeeded', 'the payment worker reports withdrawals');
SELECT is((SELECT count(*)::int FROM milestones.withdrawals WHERE withdrawal_id = :w3), 1, 'the payment worker reads withdrawals');
SELECT throws_ok($$SELECT milestones.request_withdrawal(12, 1.00, 'USD')$$, '42501', NULL, 'the payment worker cannot request withdrawals');
RESET ROLE;
SET LOCAL ROLE milestones_support;
SELECT is((SELECT count(*)::int FROM milestones.hold_clearance(13, 'support holds')), 0, 'support holds sellers');
SELECT is((SELECT count(*)::int FROM milestones.release_clearance(13)), 0, 'support releases them');
SELECT throws_ok($$SELECT milestones.record_withdrawal(1, 'succeeded')$$, '42501', NULL, 'support cannot report a withdrawal');
RESET ROLE;
SET LOCAL ROLE milestones_reader;
SELECT is((SELECT count(*)::int FROM milestones.seller_balances WHERE seller_id = 12), 2, 'readers read balances');
SELECT throws_ok($$SELECT milestones.request_withdrawal(12, 1.00, 'USD')$$, '42501', NULL, 'readers cannot withdraw');
RESET ROLE;
SELECT is(pg_temp.checks(), 0::bigint, 'every API call so far passed the commit check without a query') FROM pg_temp.flush();

-------------------------------------------------------------------------------
-- The guards
-------------------------------------------------------------------------------
SELECT throws_ok('DELETE FROM milestones.seller_accounts WHERE seller_id = 12', '23000', 'rows of seller_accounts cannot be deleted', 'accounts: no DELETE');
SELECT throws_ok('TRUNCATE milestones.seller_earnings CASCADE', '23000', NULL, 'earnings: no TRUNCATE');
SELECT throws_ok('DELETE FROM milestones.seller_withdrawals', '23000', NULL, 'withdrawals: no DELETE');
SELECT throws_ok('DELETE FROM milestones.seller_holds', '23000', NULL, 'holds: no DELETE');
SELECT throws_ok('UPDATE milestones.seller_ledger SET amount = amount', '23000', 'seller_ledger is append-only', 'the journal is append-only');
SELECT throws_ok(format('UPDATE milestones.seller_earnings SET amount = 1 WHERE earning_id = %s', :e12c), '23514',
                 format('column "amount" of earning %s cannot change', :e12c), 'an earning''s amount is fixed');
SELECT throws_ok(format($$UPDATE milestones.seller_earnings SET cleared_at = cleared_at + interval '1 day' WHERE earning_id = %s$$, :e1), '55000',
                 NULL, 'an earning clears once');
SELECT throws_ok(format($$UPDATE milestones.seller_withdrawals SET state = 'failed', failure = 'x' WHERE withdrawal_id = %s$$, :w1), '55000',
                 format('withdrawal %s is succeeded and can no longer change', :w1), 'an answered withdrawal is frozen');
SELECT throws_ok(format('UPDATE milestones.seller_withdrawals SET amount = 1 WHERE withdrawal_id = %s', :w1), '23514',
                 format('column "amount" of withdrawal %s cannot change', :w1), 'a withdrawal''s amount is fixed');
SELECT milestones.request_withdrawal(12, 1.00, 'USD') AS w4 \gset
SELECT throws_ok(format($$UPDATE milestones.seller_withdrawals SET provider_ref = 'x' WHERE withdrawal_id = %s$$, :w4), '55000',
                 format('withdrawal %s changes only with the provider''s answer', :w4), 'a requested withdrawal changes only with its answer');
SELECT throws_ok($$UPDATE milestones.seller_holds SET released_at = released_at + interval '1 day' WHERE seller_id = 12$$, '55000',
                 NULL, 'a hold is released once');
SELECT throws_ok($$UPDATE milestones.seller_holds SET note = 'edited' WHERE seller_id = 12$$, '23514', NULL, 'a hold''s note is fixed');
SELECT throws_ok($$UPDATE milestones.seller_accounts SET seller_id = 99 WHERE seller_id = 12 AND currency = 'EUR'$$, '23514',
                 NULL, 'an account''s seller is fixed');

-------------------------------------------------------------------------------
-- The commit check: API writes from their facts, anything else in full
-------------------------------------------------------------------------------
SELECT pg_temp.checks() AS before \gset
UPDATE milestones.seller_accounts SET pending = pending WHERE seller_id = 12 AND currency = 'USD';
SELECT is(pg_temp.checks(), :before::bigint, 'a hand-written UPDATE that changes nothing needs no query') FROM pg_temp.flush();
SELECT earn_fixture.earn(17, 40.00, '2030-01-01 00:00:00+00') AS e17 \gset
SELECT pg_temp.flush();
-- a complete, correct clearance written by hand
UPDATE milestones.seller_earnings SET cleared_at = milestones.now() WHERE earning_id = :e17;
INSERT INTO milestones.seller_ledger (txn_id, seller_id, currency, account, amount, kind, earning_id, created_at)
SELECT t.txn, 17, 'USD', a.account, a.amount, 'clearance', :e17, milestones.now()
  FROM (SELECT nextval('milestones.seller_txn_id_seq') AS txn) t, (VALUES ('pending', -40.00), ('available', 40.00)) a(account, amount);
UPDATE milestones.seller_accounts SET pending = pending - 40, available = available + 40 WHERE seller_id = 17;
SELECT is(pg_temp.checks(), (:before + 1)::bigint, 'a correct hand-written clearance gets the full check, once, and passes') FROM pg_temp.flush();
SELECT ok(milestones.request_withdrawal(17, 10.00, 'USD') > 0, 'the API writes to that seller again');
SELECT is(pg_temp.checks(), (:before + 1)::bigint, 'after a passed full check the API''s writes need no query again') FROM pg_temp.flush();
SAVEPOINT s;
UPDATE milestones.seller_accounts SET available = available + 5 WHERE seller_id = 12 AND currency = 'USD';
SELECT throws_ok('SELECT pg_temp.flush()', '23514', 'seller 12 would break the milestones invariants',
                 'money written by hand into an account is refused at commit');
ROLLBACK TO SAVEPOINT s;
-- a balanced hand-written clearance whose account adds up, but its earning stays pending
SELECT earn_fixture.earn(14, 40.00, '2030-01-01 00:00:00+00') AS e14 \gset
SELECT pg_temp.flush();
SAVEPOINT s;
CREATE FUNCTION pg_temp.forge() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO milestones.seller_ledger (txn_id, seller_id, currency, account, amount, kind, earning_id, created_at)
    SELECT nextval('milestones.seller_txn_id_seq'), 14, 'USD', a.account, a.amount, 'clearance', e.earning_id, now()
      FROM milestones.seller_earnings e, (VALUES ('pending', -40.00), ('available', 40.00)) a(account, amount)
     WHERE e.seller_id = 14;
    UPDATE milestones.seller_accounts SET pending = pending - 40, available = available + 40 WHERE seller_id = 14;
    SET CONSTRAINTS ALL IMMEDIATE;
END $$;
SELECT throws_ok('SELECT pg_temp.forge()', '23514', 'seller 14 would break the milestones invariants',
                 'a balanced hand-written clearance is refused: its earning was not cleared');
ROLLBACK TO SAVEPOINT s;
-- an API call mixed with a hand edit of the same seller
SAVEPOINT s;
CREATE FUNCTION pg_temp.mixed() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM milestones.clear_earnings();
    UPDATE milestones.seller_accounts SET available = available + 1 WHERE seller_id = 14;
    INSERT INTO milestones.seller_ledger (txn_id, seller_id, currency, account, amount, kind, earning_id, created_at)
    SELECT nextval('milestones.seller_txn_id_seq'), 14, 'USD', a.account, a.amount, 'earning', e.earning_id, now()
      FROM milestones.seller_earnings e, (VALUES ('earnings', -1.00), ('available', 1.00)) a(account, amount)
     WHERE e.seller_id = 14;
    SET CONSTRAINTS ALL IMMEDIATE;
END $$;
SELECT throws_ok('SELECT pg_temp.mixed()', '23514', 'seller 14 would break the milestones invariants',
                 'an API call next to a balanced hand edit is still refused (earning credited twice)');
ROLLBACK TO SAVEPOINT s;
-- a rolled-back savepoint taints the facts: the next check is full
SELECT pg_temp.checks() AS before \gset
SAVEPOINT s;
SELECT milestones.clear_earnings() \g /dev/null
ROLLBACK TO SAVEPOINT s;
SELECT ok(milestones.request_withdrawal(12, 1.00, 'USD') > 0, 'an API call after a rolled-back savepoint');
SELECT cmp_ok(pg_temp.checks(), '>', :before::bigint, '... gets the full check') FROM pg_temp.flush();

-------------------------------------------------------------------------------
-- check_invariants() over seller balances
-------------------------------------------------------------------------------
SELECT is((SELECT count(*)::int FROM milestones.check_invariants()), 0, 'check_invariants() is empty');
SAVEPOINT s;
SET LOCAL session_replication_role = replica;
UPDATE milestones.seller_accounts SET available = available + 1 WHERE seller_id = 10;
RESET session_replication_role;
SELECT is((SELECT problem FROM milestones.check_invariants() WHERE problem LIKE 'seller 10:%' LIMIT 1),
          'seller 10: USD balances 0.00/97.50/12.50/61.00 (pending/available/withdrawing/withdrawn) differ from the journal''s 0.00/96.50/12.50/61.00',
          'an account that differs from its journal is reported');
ROLLBACK TO SAVEPOINT s;
SAVEPOINT s;
INSERT INTO milestones.seller_holds (seller_id, note, held_at, released_at) VALUES (10, 'backdated', '2030-01-10', '2030-01-12');
SELECT ok((SELECT count(*) FROM milestones.check_invariants() WHERE problem LIKE format('seller 10: earning %s cleared at %% while the seller was held%%', :e3)) = 1,
          'a clearance while the seller was held is reported');
ROLLBACK TO SAVEPOINT s;
SAVEPOINT s;
SET LOCAL session_replication_role = replica;
UPDATE milestones.seller_withdrawals SET available_before = 1000 WHERE withdrawal_id = :w1;
RESET session_replication_role;
SELECT is((SELECT problem FROM milestones.check_invariants() WHERE problem LIKE 'seller 10:%' LIMIT 1),
          format('seller 10: withdrawal %s of 60.00 recorded 1000.00 available before it, but the journal held 170.00', :w1),
          'a withdrawal''s available_before is checked against the journal');
ROLLBACK TO SAVEPOINT s;
SAVEPOINT s;
SET LOCAL session_replication_role = replica;
UPDATE milestones.seller_withdrawals SET amount = 100 WHERE withdrawal_id = :w1;
RESET session_replication_role;
SELECT ok((SELECT count(*) FROM milestones.check_invariants() WHERE problem LIKE format('seller 10: withdrawal %s of 100.00 is succeeded but its journal moved%%', :w1)) = 1,
          'a withdrawal whose journal does not match it is reported');
ROLLBACK TO SAVEPOINT s;
SAVEPOINT s;
SELECT earn_fixture.paid_order(15, 33.00, '2030-01-05') AS o15 \gset
SELECT is((SELECT problem FROM milestones.check_invariants() WHERE problem LIKE 'seller 15:%'),
          format('seller 15: order %s paid the seller 33.00 but its earning is missing', :o15),
          'a confirmed-mode payout without its earning is reported');
ROLLBACK TO SAVEPOINT s;
SELECT is((SELECT count(*)::int FROM milestones.check_invariants()), 0, 'check_invariants() is empty at the end');

SELECT * FROM finish();
ROLLBACK;
