-- sql/payout.sql - payout arithmetic (C): fee = gross * rate, half-up to cents.
CREATE EXTENSION milestones;
SET timezone = 'UTC';
\set SHOW_CONTEXT never
SELECT gross, rate, milestones._fee(gross, rate) AS fee, gross - milestones._fee(gross, rate) AS net
  FROM (VALUES (100.00, 0.15), (0.05, 0.1), (0.04, 0.1), (0.15, 0.1), (33.33, 0.2), (999999999.99, 0.99999),
               (100.00, 0), (12.35, 0.1), (12.34, 0.1)) AS t(gross, rate);
SELECT milestones._fee(10, 1);
SELECT milestones._fee(10, -0.1);
SELECT milestones._fee(10, 'NaN');
SELECT milestones._fee('Infinity', 0.1);
SELECT milestones._fee(NULL, 0.1);
SELECT * FROM milestones.payout(NULL);
SELECT * FROM milestones.payout(42);

-- A stopped order with a 20 % fee: 2 of 3 milestones paid.
SET milestones.fake_now = '2030-01-01 00:00:00+00';
UPDATE milestones.settings SET seller_fee_rate = 0.2;
SELECT milestones.set_seller_eligibility(10, true);
SELECT milestones.set_category_eligibility('video', true);
SELECT milestones.create_offer(10, 20, 'video',
    '[{"name":"Storyboard","days":3,"amount":"33.33"},{"name":"Animation","days":7,"amount":"66.70"},{"name":"Final","days":5,"amount":"99.99"}]');
SELECT * FROM milestones.payout(1);
SELECT state, charged FROM milestones.place_order(1, 20);
SELECT state FROM milestones.deliver(1, 10);
SELECT state, charged FROM milestones.accept(1, 20);
SELECT * FROM milestones.payout(1);
SELECT state FROM milestones.deliver(1, 10);
SELECT state, reason, charged, paid_out, fee, net FROM milestones.stop(1, 20);
SELECT * FROM milestones.payout(1);
SELECT order_id, gross, fee, net, currency FROM milestones.payouts;
SELECT txn_id, kind, account, party_id, debit, credit FROM milestones.ledger ORDER BY entry_id;
SELECT * FROM milestones.check_invariants();
DROP EXTENSION milestones;
