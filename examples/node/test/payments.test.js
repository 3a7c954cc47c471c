// examples/node/test/payments.test.js - the payment loop of confirmed mode
// (SPEC sections 11 and 12) against a real database: the application plays
// orders through its client (milestones_app), the payment worker runs in
// this process on a login that has only milestones_payments, the provider
// stand-in answers as the test sets it up (a declined card, a payment still
// processing that settles later, a closed bank account).  Each story runs
// the worker until nothing is left (once), then reads what the database and
// the provider hold.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { MilestonesClient } from '../lib/client.js';
import { PaymentProvider } from '../lib/provider.js';
import { EventWorker, requestOf } from '../lib/worker.js';
import { OFFER3, TestDatabase } from './helpers.js';

const db = new TestDatabase('ms_node_pay');
await db.create();
const q = async (sql, args = []) => (await db.admin.query(sql, args)).rows;

let api;          // the web application (milestones_app)
let support;      // customer support (milestones_support)
let provider;     // the provider as the worker reaches it
let backOffice;   // the provider's own side: how it answers, what settles

before(async () => {
  await db.admin.query("SELECT milestones.set_setting('payment_mode', 'confirmed')");
  await db.admin.query('UPDATE milestones.settings SET seller_fee_rate = 0.1');
  api = new MilestonesClient({ pool: db.pool({ max: 3 }) });
  support = new MilestonesClient({ pool: db.pool({ max: 2 }, 'support') });
  provider = new PaymentProvider({ pool: db.pool({ max: 2 }, 'payments') });
  backOffice = new PaymentProvider({ pool: db.admin });
  // Registered before the first order, so the worker sees every event.
  await db.pool({ max: 1 }, 'payments').query("SELECT milestones.register_consumer('payments')");
});
after(() => db.drop());

// runWorker drains the consumer and the provider's webhooks once, as the
// payments login; returns the worker's progress records.
async function runWorker() {
  const records = [];
  const worker = new EventWorker({ consumer: 'payments', provider, connection: db.connection('payments'),
                                   once: true, log: (r) => records.push(r) });
  await worker.run();
  return records;
}
const requests = (records) => records.filter((r) => r.type === 'event').flatMap((r) => r.effects)
  .map(({ key, status, failure, reported }) => ({ key, status, failure: failure ?? null, reported }));
const webhooks = (records) => records.filter((r) => r.type === 'webhook').map(({ key, status, reported }) => ({ key, status, reported }));

// rejects: awaits a call that must fail; returns its MilestonesError.
async function rejects(promise) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  assert.fail('the call succeeded');
}

// atClock runs an owner's call (a sweep) with the clock moved to the time
// the first query returns (milestones.fake_now, in that session only; the
// database reads the time as text: a JavaScript Date has no microseconds).
async function atClock(timeSql, args, callSql) {
  const c = await db.admin.connect();
  try {
    const at = Object.values((await c.query(timeSql, args)).rows[0])[0];
    await c.query("SELECT set_config('milestones.fake_now', $1, false)", [at]);
    return (await c.query(callSql)).rows[0];
  } finally {
    await c.query('RESET milestones.fake_now');
    c.release();
  }
}

// paidOrder: an order whose first milestone the provider charged.
async function paidOrder(buyer, milestones = OFFER3, seller = 10) {
  const order = await api.createOffer({ sellerId: seller, buyerId: buyer, category: 'design', milestones });
  const placed = await api.placeOrder(order, buyer);
  assert.deepEqual(requests(await runWorker()),
    [{ key: `charge-${placed.charge_id}-1`, status: 'succeeded', failure: null, reported: 'succeeded' }]);
  return order;
}

test('requestOf: the key names the charge and attempt, the refund and attempt, the withdrawal', () => {
  const ev = { event_id: '9', order_id: '4', position: 2, amount: '150.00', request_currency: 'USD', attempt: '2',
               request_buyer_id: '20', request_seller_id: '10' };
  assert.deepEqual(requestOf({ ...ev, event: 'charge_requested', charge_id: '7' }),
    { kind: 'charge', eventId: '9', orderId: '4', position: 2, amount: '150.00', currency: 'USD', key: 'charge-7-2',
      subjectId: '7', attempt: 2, partyId: '20' });
  assert.equal(requestOf({ ...ev, event: 'refund_requested', refund_id: '3' }).key, 'refund-3-2');
  const w = requestOf({ ...ev, event: 'withdrawal_requested', order_id: null, position: null, withdrawal_id: '5' });
  assert.deepEqual([w.key, w.partyId, w.orderId, w.attempt], ['withdrawal-5', '10', null, null]);
  assert.equal(requestOf({ ...ev, event: 'placed' }), null, 'no request for other events');
  assert.throws(() => requestOf({ ...ev, event: 'charge_requested', charge_id: '7', amount: '1.005' }), TypeError);
  assert.throws(() => requestOf({ ...ev, event: 'charge_requested' }), /no charge_id/);
});

test('the worker\'s login has only milestones_payments; the application cannot report a payment', { timeout: 30000 }, async () => {
  const roles = await q(`SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid
                          JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = $1`, [db.roles.payments]);
  assert.deepEqual(roles, [{ rolname: 'milestones_payments' }]);
  const order = await api.createOffer({ sellerId: 10, buyerId: 300, category: 'design', milestones: OFFER3 });
  const { charge_id: charge } = await api.placeOrder(order, 300);
  const e = await rejects(api.call('record_charge', { charge_id: charge, attempt: 1, outcome: 'succeeded', provider_ref: 'ch_fake' }));
  assert.deepEqual([e.status, e.code], [403, '42501'], 'the buyer cannot declare its own payment');
  const pay = db.pool({ max: 1 }, 'payments');
  await assert.rejects(pay.query('SELECT * FROM milestones.order_status'), { code: '42501' });
  await runWorker();
  assert.equal((await api.orderStatus(order)).state, 'active');
});

test('a declined card, the buyer\'s retry, a success', { timeout: 30000 }, async () => {
  const buyer = 301;
  await backOffice.answer('buyer', buyer, 'fail', 'card_declined');
  const order = await api.createOffer({ sellerId: 10, buyerId: buyer, category: 'design', milestones: OFFER3 });
  const placed = await api.placeOrder(order, buyer);
  assert.deepEqual([placed.state, placed.milestone_state, placed.charge_state, placed.charge_attempt, placed.charged],
    ['offered', 'awaiting_payment', 'requested', 1, '0.00'], 'an offer whose checkout is not paid yet');
  const charge = placed.charge_id;

  assert.deepEqual(requests(await runWorker()),
    [{ key: `charge-${charge}-1`, status: 'failed', failure: 'card_declined', reported: 'failed' }]);
  let s = await api.orderStatus(order);
  assert.deepEqual([s.state, s.milestone_state, s.charge_state, s.charged], ['offered', 'awaiting_payment', 'failed', '0.00']);
  const early = await rejects(api.deliver(order, 10));
  assert.deepEqual([early.status, early.code], [409, '55000'], 'the seller waits for the money');

  // The buyer changes the card and tries again: attempt 2, the same pay_by.
  await backOffice.answer('buyer', buyer, null);
  const retried = await api.retryCharge(order, buyer);
  assert.deepEqual([retried.charge_id, retried.charge_attempt, retried.charge_state], [charge, 2, 'requested']);
  assert.equal(retried.pay_by.getTime(), placed.pay_by.getTime());
  assert.deepEqual(requests(await runWorker()),
    [{ key: `charge-${charge}-2`, status: 'succeeded', failure: null, reported: 'succeeded' }]);
  s = await api.orderStatus(order);
  assert.deepEqual([s.state, s.milestone_state, s.charged, s.charge_id], ['active', 'in_progress', '100.00', null]);

  const attempts = await q(`SELECT c.attempt, c.attempt_state, c.failure, c.provider_ref = p.provider_ref AS same_ref, p.replays
                              FROM milestones.charges c
                              JOIN payment_provider.requests p ON p.subject_id = c.charge_id AND p.attempt = c.attempt AND p.kind = 'charge'
                             WHERE c.charge_id = $1 ORDER BY c.attempt`, [charge]);
  assert.deepEqual(attempts, [
    { attempt: 1, attempt_state: 'failed', failure: 'card_declined', same_ref: null, replays: 0 },
    { attempt: 2, attempt_state: 'succeeded', failure: null, same_ref: true, replays: 0 },
  ]);
});

test('a payment window that passes: the order ends unpaid, the completed milestone paid', { timeout: 30000 }, async () => {
  const buyer = 302;
  const order = await paidOrder(buyer);
  await api.deliver(order, 10);
  const next = await api.accept(order, buyer);
  assert.deepEqual([next.current_milestone, next.milestone_state, next.charge_state], [2, 'awaiting_payment', 'requested']);
  await backOffice.answer('buyer', buyer, 'fail', 'insufficient_funds');
  assert.deepEqual(requests(await runWorker()).map((r) => r.status), ['failed']);
  // The buyer never tries again; the clock reaches pay_by and the sweep runs.
  const ended = await atClock('SELECT DISTINCT pay_by::text FROM milestones.charges WHERE charge_id = $1', [next.charge_id],
    'SELECT milestones.expire_overdue() AS n');
  assert.equal(ended.n, 1);
  const s = await api.orderStatus(order);
  assert.deepEqual([s.state, s.reason, s.charged, s.paid_out, s.refunded, s.charge_id],
    ['completed', 'unpaid', '100.00', '100.00', '0.00', null]);
  assert.deepEqual(await q(`SELECT DISTINCT o.completed_at = c.pay_by AS at_pay_by FROM milestones.order_status o
                              JOIN milestones.charges c ON c.order_id = o.order_id WHERE c.charge_id = $1`, [next.charge_id]),
    [{ at_pay_by: true }], 'ended exactly at pay_by');
  assert.deepEqual((await q('SELECT position, state FROM milestones.milestone_status WHERE order_id = $1 ORDER BY position', [order]))
    .map((m) => m.state), ['completed', 'skipped', 'skipped']);
  assert.deepEqual(await q('SELECT DISTINCT state, void_reason FROM milestones.charges WHERE charge_id = $1', [next.charge_id]),
    [{ state: 'voided', void_reason: 'expired' }]);
  const late = await rejects(api.retryCharge(order, buyer));
  assert.deepEqual([late.status, late.code], [409, '55000'], 'too late to retry');
  await backOffice.answer('buyer', buyer, null);
  assert.deepEqual(requests(await runWorker()), [], 'nothing more to send');
});

test('a success arriving after the buyer stopped is booked, then refunded', { timeout: 30000 }, async () => {
  const buyer = 303;
  const order = await paidOrder(buyer);
  await api.deliver(order, 10);
  const next = await api.accept(order, buyer);
  const key = `charge-${next.charge_id}-1`;
  // An asynchronous method: the provider answers "processing"; nothing is reported.
  await backOffice.answer('buyer', buyer, 'processing');
  assert.deepEqual(requests(await runWorker()), [{ key, status: 'processing', failure: null, reported: null }]);
  assert.equal((await api.orderStatus(order)).charge_state, 'requested');
  // The buyer stops after the accepted delivery: the charge is voided.
  const stopped = await api.stop(order, buyer);
  assert.deepEqual([stopped.state, stopped.reason, stopped.charged], ['completed', 'stopped', '100.00']);
  // Then the payment settles at the provider: its webhook reaches the worker.
  await backOffice.settle(key, 'succeeded');
  await backOffice.answer('buyer', buyer, null);
  const records = await runWorker();
  assert.deepEqual(webhooks(records), [{ key, status: 'succeeded', reported: 'succeeded' }]);
  const [charge] = await q('SELECT attempt_state, wanted, refund_id, provider_ref FROM milestones.charges WHERE charge_id = $1', [next.charge_id]);
  assert.deepEqual([charge.attempt_state, charge.wanted], ['succeeded', false], 'booked, not wanted');
  assert.deepEqual(requests(records),
    [{ key: `refund-${charge.refund_id}-1`, status: 'succeeded', failure: null, reported: 'succeeded' }], 'and refunded');
  const s = await api.orderStatus(order);
  assert.deepEqual([s.state, s.reason, s.charged, s.refunded], ['completed', 'stopped', '250.00', '150.00']);
  const [refund] = await q('SELECT reason, state, amount, attempt, provider_ref FROM milestones.refunds WHERE refund_id = $1', [charge.refund_id]);
  assert.deepEqual({ ...refund, provider_ref: /^re_\d+$/.test(refund.provider_ref) },
    { reason: 'late_success', state: 'succeeded', amount: '150.00', attempt: 1, provider_ref: true });
  assert.deepEqual(await backOffice.webhooks(), [], 'the webhook was acknowledged');
  assert.deepEqual(webhooks(await runWorker()), [], 'and is not delivered again');
});

test('support cancels; the refund fails (a closed card) and is sent again', { timeout: 30000 }, async () => {
  const buyer = 304;
  const order = await paidOrder(buyer);
  await backOffice.answer('buyer', buyer, 'fail', 'card_closed');
  const cancelled = await support.cancel(order, 'agent-7', 'seller_unresponsive');
  assert.deepEqual([cancelled.state, cancelled.refunded], ['cancelled', '100.00']);
  const [{ refund_id: refund }] = await q('SELECT refund_id FROM milestones.refunds WHERE order_id = $1', [order]);
  assert.deepEqual(requests(await runWorker()),
    [{ key: `refund-${refund}-1`, status: 'failed', failure: 'card_closed', reported: 'failed' }]);
  const list = await support.pool.query('SELECT refund_id, state, failure FROM milestones.refunds');
  assert.deepEqual(list.rows[0], { refund_id: refund, state: 'failed', failure: 'card_closed' }, 'failed refunds first, for support');
  // The buyer gives a new card; support sends the refund again: attempt 2, a new key.
  await backOffice.answer('buyer', buyer, null);
  const again = await support.retryRefund(refund);
  assert.deepEqual([again.state, again.attempt], ['requested', 2]);
  // A replayed batch would bring attempt 1's answer again: it is not
  // reported (record_refund reports the current attempt, 2).
  const replay = new EventWorker({ consumer: 'payments', provider, connection: db.connection('payments') });
  await replay.connect();
  try {
    assert.equal(await replay.report('refund', refund, 1, { status: 'failed', failure: 'card_closed' }), 'superseded');
  } finally {
    await replay.disconnect();
  }
  assert.deepEqual(await q('SELECT state, attempt FROM milestones.refunds WHERE refund_id = $1', [refund]),
    [{ state: 'requested', attempt: 2 }]);
  assert.deepEqual(requests(await runWorker()),
    [{ key: `refund-${refund}-2`, status: 'succeeded', failure: null, reported: 'succeeded' }]);
  const [row] = await q('SELECT state, attempt FROM milestones.refunds WHERE refund_id = $1', [refund]);
  assert.deepEqual(row, { state: 'succeeded', attempt: 2 });
});

test('sellers withdraw their cleared earnings; a closed bank account fails the withdrawal', { timeout: 30000 }, async () => {
  const seller = 11;
  const order = await paidOrder(305, [{ name: 'Poster', days: 3, amount: '200.00' }], seller);
  await api.deliver(order, seller);
  assert.equal((await api.accept(order, 305)).state, 'completed');
  let b = await api.sellerBalance(seller);
  assert.deepEqual([b.pending, b.available], ['180.00', '0.00'], 'the net is pending clearance');
  // The clearance period passes: the sweep runs at next_clears_at.
  await atClock('SELECT next_clears_at::text FROM milestones.seller_balances WHERE seller_id = $1', [seller],
    'SELECT milestones.clear_earnings() AS n');
  b = await api.sellerBalance(seller);
  assert.deepEqual([b.pending, b.available], ['0.00', '180.00']);

  const paid = await api.requestWithdrawal(seller, '100.00');
  assert.deepEqual(requests(await runWorker()),
    [{ key: `withdrawal-${paid}`, status: 'succeeded', failure: null, reported: 'succeeded' }]);
  b = await api.sellerBalance(seller);
  assert.deepEqual([b.available, b.withdrawing, b.withdrawn], ['80.00', '0.00', '100.00']);

  await backOffice.answer('seller', seller, 'fail', 'account_closed');
  const refused = await api.requestWithdrawal(seller, '80.00');
  assert.equal((await api.sellerBalance(seller)).withdrawing, '80.00');
  assert.deepEqual(requests(await runWorker()),
    [{ key: `withdrawal-${refused}`, status: 'failed', failure: 'account_closed', reported: 'failed' }]);
  b = await api.sellerBalance(seller);
  assert.deepEqual([b.available, b.withdrawing, b.withdrawn], ['80.00', '0.00', '100.00'], 'back to available');
  await backOffice.answer('seller', seller, null);
});

test('the day\'s settlement report reconciles; one line altered is reported', { timeout: 30000 }, async () => {
  const report = await backOffice.settlementReport();
  const kinds = new Set(report.map((l) => l.kind));
  assert.ok(kinds.has('charge') && kinds.has('refund'), 'charges and refunds were settled');
  assert.ok(kinds.has('withdrawal'), 'and withdrawals');
  assert.deepEqual(await support.reconcile(report), [], 'both sides agree');

  const i = report.findIndex((l) => l.kind === 'charge' && l.amount === '100.00');
  const altered = report.map((l, j) => (j === i ? { ...l, amount: '99.00' } : l));
  assert.deepEqual(await support.reconcile(altered),
    [{ provider_ref: report[i].provider_ref, kind: 'charge', problem: 'amount differs', ours: '100.00', theirs: '99.00' }]);
  assert.deepEqual(await q('SELECT * FROM milestones.check_invariants()'), []);
});

test('mode both: a recorded-mode order is paid from its events, a confirmed-mode one through its requests', { timeout: 30000 }, async () => {
  // A login that reads order_status and reports payments: a marketplace
  // whose orders in flight move from one mode to the other.
  await db.admin.query(`GRANT milestones_payments TO ${db.roles.worker}`);
  await db.admin.query("SELECT milestones.set_setting('payment_mode', 'recorded')");
  const old = await api.createOffer({ sellerId: 10, buyerId: 306, category: 'design', milestones: OFFER3 });
  assert.equal((await api.placeOrder(old, 306)).charged, '100.00', 'recorded: charged at once');
  await db.admin.query("SELECT milestones.set_setting('payment_mode', 'confirmed')");
  const order = await api.createOffer({ sellerId: 10, buyerId: 307, category: 'design', milestones: OFFER3 });
  const { charge_id: charge } = await api.placeOrder(order, 307);
  const records = [];
  await new EventWorker({ consumer: 'payments', provider, mode: 'both', connection: db.connection('worker'),
                          once: true, log: (r) => records.push(r) }).run();
  const sent = records.filter((r) => r.type === 'event' && r.effects.length > 0)
    .map((r) => [r.order_id, r.event, r.effects.map((e) => e.key ?? e.kind).join()]);
  const [placedOld] = await q("SELECT event_id FROM milestones.events WHERE order_id = $1 AND event = 'placed'", [old]);
  assert.deepEqual(sent, [
    [old, 'placed', 'charge'],
    [order, 'charge_requested', `charge-${charge}-1`],
  ], 'the confirmed order\'s placed event asks for nothing more');
  assert.deepEqual(await q('SELECT idempotency_key FROM payment_provider.requests WHERE order_id = $1', [old]),
    [{ idempotency_key: `event-${placedOld.event_id}-charge` }]);
  assert.equal((await api.orderStatus(order)).state, 'active');
});
