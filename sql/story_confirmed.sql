-- sql/story_confirmed.sql - confirmed payments (SPEC sections 11 and 12),
-- printed as a DBA sees them: the database requests each charge, the
-- payment worker reports the provider's answer.  The worker's reports are
-- plain calls here (record_charge, record_refund); examples/node/lib/worker.js
-- makes the same calls from its consumer.  It is both a pg_regress suite and
-- the second part of `make demo`.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS milestones;
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';
\set SHOW_CONTEXT never
\pset null '·'

\echo '== Confirmed mode: orders offered from now on wait for the provider''s answer'
SELECT milestones.set_seller_eligibility(101, true), milestones.set_seller_eligibility(102, true),
       milestones.set_category_eligibility('logo-design', true),
       milestones.set_category_eligibility('explainer-video', true) \gset
SELECT milestones.set_setting('payment_mode', 'confirmed') \gset
UPDATE milestones.settings SET seller_fee_rate = 0.10;
SELECT payment_mode, payment_window, clearance_period, seller_fee_rate FROM milestones.settings;

\echo '== Monday 15 June: two orders are placed; each first milestone awaits payment'
SET milestones.fake_now = '2026-06-15 09:00:00+00';
-- a: a logo whose buyer's card is declined at first
SELECT milestones.create_offer(101, 211, 'logo-design',
    '[{"name":"Sketches","days":3,"amount":"80.00"},{"name":"Final files","days":2,"amount":"70.00"}]') AS a \gset
-- b: a video whose buyer will not pay for its second milestone in time
SELECT milestones.create_offer(102, 212, 'explainer-video',
    '[{"name":"Storyboard","days":4,"amount":"200.00"},{"name":"Animation","days":6,"amount":"150.00"}]') AS b \gset
SELECT order_id, state, milestone_state, charge_id, charge_attempt, charge_state, pay_by, charged
  FROM milestones.place_order(:a, 211);
SELECT order_id, state, milestone_state, charge_id, charge_attempt, charge_state, pay_by, charged
  FROM milestones.place_order(:b, 212);
SELECT charge_id AS a1 FROM milestones.charges WHERE order_id = :a AND position = 1 \gset
SELECT charge_id AS b1 FROM milestones.charges WHERE order_id = :b AND position = 1 \gset

\echo '-- the payment worker reads its consumer: one provider request per charge_requested, with its idempotency key'
SELECT event_id, order_id, format('charge-%s-%s', detail ->> 'charge_id', detail ->> 'attempt') AS idempotency_key,
       detail ->> 'amount' AS amount, detail ->> 'buyer_id' AS buyer
  FROM milestones.events WHERE event = 'charge_requested' AND order_id IN (:a, :b) ORDER BY event_id;
\echo '-- ... and reports each answer: order a''s card is declined, order b''s charge succeeds'
SELECT charge_id, attempt, state, attempt_state, provider_ref, failure FROM milestones.record_charge(:a1, 1, 'failed', NULL, 'card_declined');
SELECT charge_id, attempt, state, attempt_state, provider_ref, failure FROM milestones.record_charge(:b1, 1, 'succeeded', 'ch_1001');

\echo '== 10:30: buyer 211 enters another card and retries (attempt 2, the same pay_by); it succeeds'
SET milestones.fake_now = '2026-06-15 10:30:00+00';
SELECT order_id, state, milestone_state, charge_id, charge_attempt, charge_state, pay_by FROM milestones.retry_charge(:a, 211);
SELECT charge_id, attempt, state, attempt_state, provider_ref FROM milestones.record_charge(:a1, 2, 'succeeded', 'ch_1002');
SELECT order_id, state, placed_at, current_milestone AS ms, milestone_state, due_at, charged
  FROM milestones.order_status WHERE order_id IN (:a, :b) ORDER BY order_id;

\echo '== Wednesday 17 June: order a''s second milestone is paid at once, delivered and accepted'
SET milestones.fake_now = '2026-06-17 14:00:00+00';
SELECT order_id, milestone_state FROM milestones.deliver(:a, 101, 'three sketch directions');
SELECT order_id, current_milestone AS ms, milestone_state, charge_id, charge_state FROM milestones.accept(:a, 211);
SELECT charge_id AS a2 FROM milestones.charges WHERE order_id = :a AND position = 2 \gset
-- the seller waits for the money
\echo '(refused on purpose: milestone 2 is not paid yet)'
SELECT milestones.deliver(:a, 101);
SELECT charge_id, attempt, attempt_state, provider_ref FROM milestones.record_charge(:a2, 1, 'succeeded', 'ch_1003');
SELECT order_id, milestone_state, final_milestone FROM milestones.deliver(:a, 101, 'final files');
SELECT order_id, state, reason, charged, paid_out FROM milestones.accept(:a, 211);

\echo '== Thursday 18 June: order b''s storyboard is accepted; the buyer pays the animation by bank transfer'
SET milestones.fake_now = '2026-06-18 11:00:00+00';
SELECT order_id, milestone_state FROM milestones.deliver(:b, 102, 'storyboard');
SELECT order_id, current_milestone AS ms, milestone_state, charge_id, charge_state, pay_by FROM milestones.accept(:b, 212);
SELECT charge_id AS b2 FROM milestones.charges WHERE order_id = :b AND position = 2 \gset
-- the provider answers "processing": the worker reports nothing yet

\echo '== Sunday 21 June 11:00: pay_by has come; the sweep ends order b as unpaid, the storyboard paid'
SET milestones.fake_now = '2026-06-21 11:00:00+00';
SELECT milestones.expire_overdue() \gset
SELECT order_id, state, reason, completed_at, charged, paid_out FROM milestones.order_status WHERE order_id = :b;
\echo '(refused on purpose: the order ended unpaid)'
SELECT milestones.retry_charge(:b, 212);

\echo '== Tuesday 23 June: the transfer settles after all; the money is booked and refunded at once'
SET milestones.fake_now = '2026-06-23 09:00:00+00';
SELECT charge_id, attempt, state, attempt_state, provider_ref, wanted, refund_id
  FROM milestones.record_charge(:b2, 1, 'succeeded', 'ch_1004');
\echo '-- the worker sends the refund (key refund-<refund_id>-<attempt>) and reports it'
SELECT refund_id AS r FROM milestones.refunds WHERE charge_id = :b2 \gset
SELECT refund_id, reason, amount, state, attempt, provider_ref FROM milestones.record_refund(:r, 'succeeded', 're_1005');

\echo '== What a DBA sees: order_status'
SELECT order_id, buyer_id AS buyer, payment_mode, state, reason, placed_at, completed_at, total, charged, paid_out, refunded
  FROM milestones.order_status WHERE order_id IN (:a, :b) ORDER BY order_id;

\echo '== milestone_status of order b'
SELECT position, name, amount, state, started_at, completed_at, charge_id, charge_state, pay_by
  FROM milestones.milestone_status WHERE order_id = :b ORDER BY position;

\echo '== charges: one row per attempt'
SELECT charge_id, attempt, order_id, position AS ms, amount, state, attempt_state, requested_at, pay_by,
       provider_ref, failure, wanted, void_reason, refund_id
  FROM milestones.charges WHERE order_id IN (:a, :b) ORDER BY charge_id, attempt;

\echo '== refunds'
SELECT refund_id, order_id, position AS ms, charge_id, buyer_id, amount, reason, state, attempt, provider_ref
  FROM milestones.refunds WHERE order_id IN (:a, :b);

\echo '== The ledger of both orders: nothing is booked until a charge succeeds'
SELECT txn_id, order_id, milestone AS ms, kind, account, party_id, debit, credit, created_at
  FROM milestones.ledger WHERE order_id IN (:a, :b) ORDER BY txn_id, entry_id;

\echo '== Event history of order b'
SELECT event_id, event, actor_role, order_state, position AS ms, milestone_state, created_at,
       pg_catalog.jsonb_strip_nulls(detail - 'pay_by' - 'buyer_id' - 'currency') AS detail
  FROM milestones.events WHERE order_id = :b ORDER BY event_id;

\echo '== The sellers'' earnings: each net is pending for 14 days after its order ended'
SELECT seller_id, currency, pending, available, withdrawing, withdrawn, next_clears_at, held
  FROM milestones.seller_balances ORDER BY seller_id;

\echo '== Thursday 2 July: seller 101''s earning has cleared (the expiry job clears earnings too)'
SET milestones.fake_now = '2026-07-02 09:00:00+00';
SELECT milestones.clear_earnings() AS cleared;
-- seller 102's net clears on 5 July: none of it is available yet
\echo '(refused on purpose: nothing has cleared yet)'
SELECT milestones.request_withdrawal(102, 50.00, 'USD');
\echo '-- seller 101 withdraws what is available; the payment worker pays it out (key withdrawal-<withdrawal_id>) and reports it'
SELECT milestones.request_withdrawal(101, 135.00, 'USD') AS w \gset
SELECT seller_id, pending, available, withdrawing, withdrawn FROM milestones.seller_balance(101, 'USD');
SELECT withdrawal_id, seller_id, amount, state, provider_ref FROM milestones.record_withdrawal(:w, 'succeeded', 'po_1006');
SELECT seller_id, currency, pending, available, withdrawing, withdrawn, next_clears_at
  FROM milestones.seller_balances ORDER BY seller_id;

\echo '== The provider''s settlement report against the books: only the line that differs'
SELECT * FROM milestones.reconcile('[
    {"provider_ref": "ch_1001", "kind": "charge",     "amount": "200.00", "currency": "USD"},
    {"provider_ref": "ch_1002", "kind": "charge",     "amount": "80.00",  "currency": "USD"},
    {"provider_ref": "ch_1003", "kind": "charge",     "amount": "70.00",  "currency": "USD"},
    {"provider_ref": "ch_1004", "kind": "charge",     "amount": "150.00", "currency": "USD"},
    {"provider_ref": "re_1005", "kind": "refund",     "amount": "150.00", "currency": "USD"},
    {"provider_ref": "po_1006", "kind": "withdrawal", "amount": "153.00", "currency": "USD"}]');

\echo '== check_invariants(): no rows means the books are sound'
SELECT * FROM milestones.check_invariants();

-- Back to the default, for whatever runs next in this database.
SELECT milestones.set_setting('payment_mode', 'recorded') \gset
RESET milestones.fake_now;
