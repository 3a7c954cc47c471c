// examples/node/test/worker.test.js - the event worker against a real
// database: orders are played through the client while the worker runs;
// the worker is killed (SIGKILL) in the middle of a batch and restarted;
// at the end every charge, payout, refund and stop was sent to the
// payment-provider stand-in exactly once (replays acknowledged, not applied
// again) and the stand-in's totals equal the ledger's.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { MilestonesClient } from '../lib/client.js';
import { effectsOf } from '../lib/worker.js';
import { OFFER3, TestDatabase, waitFor } from './helpers.js';

const here = dirname(fileURLToPath(import.meta.url));
const CONSUMER = 'payments';
const db = new TestDatabase('ms_node_worker');
await db.create();
const hasConsumers = await db.hasConsumers();
const skip = hasConsumers ? false : 'the consumer API (SPEC section 5: next_batch, batch_events, finish_batch) is not installed';
const hasCancelMilestone = (await db.admin.query(
  "SELECT to_regprocedure('milestones.cancel_milestone(bigint, integer, text, text, text, text)') IS NOT NULL AS ok")).rows[0].ok;

let api;
let support;
const workers = [];

before(async () => {
  api = new MilestonesClient({ pool: db.pool({ max: 6 }) });
  support = new MilestonesClient({ pool: db.pool({ max: 2 }, 'support') });
  // A platform fee, so payouts carry gross = net + fee (captured per order).
  await db.admin.query('UPDATE milestones.settings SET seller_fee_rate = 0.1');
  if (hasConsumers) {
    const w = db.pool({ max: 1 }, 'worker');
    await w.query('SELECT milestones.register_consumer($1)', [CONSUMER]);
  }
});
after(async () => {
  for (const w of workers) w.child.kill('SIGKILL');
  await db.drop();
});

// WorkerProcess: worker.js as a child process, its JSON progress records
// collected as they arrive.
class WorkerProcess {
  constructor(args, consumer = CONSUMER) {
    this.records = [];
    this.stderr = '';
    this.child = spawn(process.execPath, [join(here, '..', 'worker.js'), '--mode', 'recorded', '--consumer', consumer, '--log', 'json',
      '--poll-ms', '300', ...args], { env: db.env('worker'), stdio: ['ignore', 'pipe', 'pipe'] });
    createInterface({ input: this.child.stdout }).on('line', (l) => {
      try { this.records.push(JSON.parse(l)); } catch { this.stderr += `${l}\n`; }
    });
    this.child.stderr.on('data', (d) => { this.stderr += d; });
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => resolve({ code, signal })));
    workers.push(this);
  }

  of(type) { return this.records.filter((r) => r.type === type); }

  // handled: the event ids this worker handled, in order.
  handled() { return this.of('event').map((r) => r.event_id); }
}

// allEventIds: every event the extension wrote.
async function allEventIds() {
  return (await db.admin.query('SELECT event_id::text FROM milestones.events ORDER BY event_id')).rows.map((r) => r.event_id);
}

// drained waits until the workers have handled every event and the last
// one is idle (its next_batch returned NULL).
async function drained(worker, previous = []) {
  await waitFor('the worker to drain every event', async () => {
    const seen = new Set([...previous.flatMap((w) => w.handled()), ...worker.handled()]);
    const ids = await allEventIds();
    return ids.every((id) => seen.has(id)) && worker.records.at(-1)?.type === 'idle';
  }, 60000, 100).catch((err) => {
    const seen = new Set([...previous.flatMap((w) => w.handled()), ...worker.handled()]);
    err.message += `\nhandled ${seen.size} events; last records: ${JSON.stringify(worker.records.slice(-3))}` +
                   `\nworker stderr: ${worker.stderr}`;
    throw err;
  });
}

// story plays one round of orders through the client: finished (with a
// revision), stopped, cancelled in progress, cancelled when offered,
// withdrawn, declined, a milestone cancelled (when installed), and one left
// delivered for the expiry sweep.  Returns the id of the latter.
async function story(round) {
  const buyer = 100 + round;
  const offer = (milestones = OFFER3, seller = 10) =>
    api.createOffer({ sellerId: seller, buyerId: buyer, category: 'design', milestones, revisions: 1 });
  const finished = async () => {
    const o = await offer();
    await api.placeOrder(o, buyer);
    await api.deliver(o, 10);
    await api.accept(o, buyer);
    await api.deliver(o, 10, 'first cut');
    await api.requestRevision(o, buyer, 'shorter');
    await api.deliver(o, 10, 'second cut');
    await api.accept(o, buyer);
    await api.deliver(o, 10, 'final');
    await api.accept(o, buyer);
  };
  const stopped = async () => {
    const o = await offer([{ name: 'Logo', days: 2, amount: '120.33' }, { name: 'Pack', days: 2, amount: '80.01' }], 11);
    await api.placeOrder(o, buyer);
    await api.deliver(o, 11);
    await api.stop(o, buyer);
  };
  const cancelled = async () => {
    const o = await offer();
    await api.placeOrder(o, buyer);
    await api.deliver(o, 10);
    await api.accept(o, buyer);
    await support.cancel(o, 'agent-7', 'mutual_agreement', 'both agreed');
  };
  const ended = async () => {
    await support.cancel(await offer(), 'agent-7', 'duplicate_order');
    await api.withdrawOffer(await offer(), 10);
    await api.declineOffer(await offer(), buyer);
  };
  const milestoneCancelled = async () => {
    if (!hasCancelMilestone) return;
    const o = await offer();
    await api.placeOrder(o, buyer);
    await support.cancelMilestone(o, 3, 'agent-7', 'mutual_agreement');   // pending: never charged
    await support.cancelMilestone(o, 1, 'agent-7', 'seller_unresponsive'); // running: refunded, 2 charged
    await api.deliver(o, 10);
    await api.accept(o, buyer);
  };
  const toExpire = async () => {
    const o = await offer();
    await api.placeOrder(o, buyer);
    await api.deliver(o, 10);
    return o;
  };
  const [, , , , , expiring] = await Promise.all([finished(), stopped(), cancelled(), ended(), milestoneCancelled(), toExpire()]);
  return expiring;
}

// expire runs the sweep (as the owner) as if the response windows had closed.
async function expire(orderIds) {
  const r = await db.admin.query(
    "SELECT milestones.expire_overdue(milestones.now() + interval '6 days') AS n");
  assert.equal(r.rows[0].n, orderIds.length, 'the delivered orders expired');
}

test('effectsOf reads the event detail keys', () => {
  const base = { event_id: '7', order_id: '3', position: 1, buyer_id: '20', seller_id: '10', currency: 'USD' };
  assert.deepEqual(effectsOf({ ...base, event: 'placed', charged: '100.00' }).map((e) => [e.kind, e.key, e.amount, e.partyId, e.position]),
    [['charge', 'event-7-charge', '100.00', '20', 1]]);
  assert.deepEqual(effectsOf({ ...base, event: 'accepted', charged: '150.00', next_position: '2' }).map((e) => [e.kind, e.position]),
    [['charge', 2]]);
  assert.deepEqual(effectsOf({ ...base, event: 'stopped', payout_gross: '100.00', payout_fee: '10.00', payout_net: '90.00' })
    .map((e) => [e.kind, e.amount, e.fee ?? null, e.partyId]),
    [['payout', '90.00', '10.00', '10'], ['stop_work', undefined, null, '10']]);
  assert.deepEqual(effectsOf({ ...base, event: 'cancelled', refunded: '150.00', payout_gross: '0', payout_fee: '0', payout_net: '0' })
    .map((e) => e.kind), ['refund'], 'no payout of a zero gross');
  assert.deepEqual(effectsOf({ ...base, event: 'delivered' }), []);
  // A confirmed-mode order's money moves through its requests (payments.test.js).
  assert.deepEqual(effectsOf({ ...base, payment_mode: 'confirmed', event: 'placed', charged: '100.00' }), []);
  assert.deepEqual(effectsOf({ ...base, payment_mode: 'confirmed', event: 'stopped', payout_gross: '100.00', payout_fee: '0', payout_net: '100.00' })
    .map((e) => e.kind), ['stop_work']);
  assert.throws(() => effectsOf({ ...base, event: 'placed', charged: '1.005' }), TypeError);
  assert.throws(() => effectsOf({ ...base, event: 'expired', payout_gross: '10.00', payout_fee: '1.00', payout_net: '8.00' }),
    /is not gross/);
});

test('a notification wakes the worker; a new consumer registers itself', { skip, timeout: 60000 }, async () => {
  // The poll is a minute away: only LISTEN can bring the event in time.
  const w = new WorkerProcess(['--poll-ms', '60000'], 'wakeup');
  await waitFor('the worker to register and go idle',
    () => w.of('registered').length === 1 && w.records.at(-1)?.type === 'idle', 15000);
  const order = await api.createOffer({ sellerId: 10, buyerId: 20, category: 'design', milestones: OFFER3 });
  const started = Date.now();
  await waitFor('the worker to handle the new offer',
    () => w.of('event').some((r) => r.order_id === order && r.event === 'offered'), 10000, 10);
  assert.ok(Date.now() - started < 10000);
  w.child.kill('SIGTERM');
  assert.equal((await w.exited).code, 0);
  const admin = db.pool({ max: 1 }, 'worker');
  await admin.query("SELECT milestones.unregister_consumer('wakeup')");
});

test('a story of orders while the worker runs; the worker killed mid-batch and restarted; every effect once', { skip, timeout: 180000 }, async () => {
  // 1. The worker runs while orders are played.
  const w1 = new WorkerProcess([]);
  await waitFor('the first worker to connect', () => w1.of('connected').length > 0, 15000);
  const expiring = [await story(1), await story(2)];
  await expire(expiring);
  await drained(w1);
  assert.ok(w1.of('finished').length >= 1, 'batches finished');
  // SIGTERM: it ends after the batch in hand.
  w1.child.kill('SIGTERM');
  assert.deepEqual(await w1.exited, { code: 0, signal: null }, 'a clean exit on SIGTERM');

  // 2. A backlog builds while no worker runs; a slow worker is killed in
  //    the middle of a batch, after it sent some of the batch's requests.
  const backlog = await Promise.all([story(3), story(4), story(5)]);
  await expire(backlog);
  const w2 = new WorkerProcess(['--event-delay-ms', '40', '--max-events', '60']);
  let killed;
  await waitFor('the slow worker to be in the middle of a batch', () => {
    const b = w2.of('batch').at(-1);
    if (!b || w2.of('finished').some((f) => f.batch_id === b.batch_id)) return false;
    const done = w2.of('event').filter((r) => r.batch_id === b.batch_id);
    const sent = done.flatMap((r) => r.effects).filter((e) => e.applied);
    if (sent.length >= 2 && done.length < b.events - 2) {
      w2.child.kill('SIGKILL');
      killed = { batch: b, done };
      return true;
    }
    return false;
  }, 60000, 5);
  assert.equal((await w2.exited).signal, 'SIGKILL');
  assert.ok(!w2.of('finished').some((f) => f.batch_id === killed.batch.batch_id), 'the killed batch was never finished');

  // 3. Restarted, the worker is handed the unfinished batch again, replays
  //    it (the provider acknowledges what it has seen), and goes on while
  //    more orders are played.
  const w3 = new WorkerProcess(['--max-events', '60']);
  const more = story(6);
  await waitFor('the restarted worker to take a batch', () => w3.of('batch').length > 0, 15000);
  const again = w3.of('batch')[0];
  assert.equal(again.first_event_id, killed.batch.first_event_id, 'the unfinished batch is handed out again');
  await expire([await more]);
  await drained(w3, [w1, w2]);
  const replayed = w3.of('event').filter((r) => killed.done.some((d) => d.event_id === r.event_id));
  assert.equal(replayed.length, killed.done.length, 'every event handled before the kill was replayed');
  const replayEffects = replayed.flatMap((r) => r.effects);
  assert.ok(replayEffects.length >= 2);
  assert.ok(replayEffects.every((e) => !e.applied), 'replayed requests were acknowledged, not applied again');
  w3.child.kill('SIGTERM');
  assert.equal((await w3.exited).code, 0);

  // 4. Books: the provider's request log against the ledger, one to one.
  const q = async (sql) => (await db.admin.query(sql)).rows;
  const byRows = (rows) => rows.map((r) => Object.values(r).join(' ')).sort();
  assert.deepEqual(
    byRows(await q("SELECT order_id, position, amount FROM payment_provider.requests WHERE kind = 'charge'")),
    byRows(await q("SELECT order_id, position, amount FROM milestones.ledger_entries WHERE kind = 'charge' AND account = 'escrow'")),
    'every charge sent once');
  assert.deepEqual(
    byRows(await q("SELECT order_id, position, amount FROM payment_provider.requests WHERE kind = 'refund'")),
    byRows(await q("SELECT order_id, position, amount FROM milestones.ledger_entries WHERE kind = 'refund' AND account = 'buyer'")),
    'every refund sent once');
  assert.deepEqual(
    byRows(await q("SELECT order_id, amount AS net, fee FROM payment_provider.requests WHERE kind = 'payout'")),
    byRows(await q(`SELECT order_id, sum(amount) FILTER (WHERE account = 'seller') AS net,
                           COALESCE(sum(amount) FILTER (WHERE account = 'platform'), 0.00) AS fee
                      FROM milestones.ledger_entries WHERE kind = 'payout' GROUP BY txn_id, order_id`)),
    'every payout sent once');
  assert.deepEqual(
    byRows(await q("SELECT order_id FROM payment_provider.requests WHERE kind = 'stop_work'")),
    byRows(await q("SELECT order_id FROM milestones.events WHERE event = 'stopped'")),
    'every seller whose order was stopped was told once');
  const totals = await q(`
    WITH provider AS (
      SELECT sum(amount) FILTER (WHERE kind = 'charge') AS charged,
             sum(amount) FILTER (WHERE kind = 'refund') AS refunded,
             sum(amount + fee) FILTER (WHERE kind = 'payout') AS paid_gross,
             sum(amount) FILTER (WHERE kind = 'payout') AS paid_net,
             sum(fee) FILTER (WHERE kind = 'payout') AS fees
        FROM payment_provider.requests),
    ledger AS (
      SELECT sum(amount) FILTER (WHERE kind = 'charge' AND account = 'escrow') AS charged,
             sum(amount) FILTER (WHERE kind = 'refund' AND account = 'buyer') AS refunded,
             -sum(amount) FILTER (WHERE kind = 'payout' AND account = 'escrow') AS paid_gross,
             sum(amount) FILTER (WHERE kind = 'payout' AND account = 'seller') AS paid_net,
             sum(amount) FILTER (WHERE kind = 'payout' AND account = 'platform') AS fees
        FROM milestones.ledger_entries)
    SELECT 'provider' AS who, p.* FROM provider p UNION ALL SELECT 'ledger', l.* FROM ledger l`);
  const [provider, ledger] = totals.map(({ who, ...t }) => t);
  assert.deepEqual(provider, ledger, 'the provider\'s totals equal the ledger\'s');
  assert.ok(Number(ledger.refunded) > 0 && Number(ledger.fees) > 0, 'refunds and fees were part of the story');
  const replays = await q('SELECT count(*)::int AS keys, sum(replays)::int AS replays FROM payment_provider.requests WHERE replays > 0');
  assert.ok(replays[0].replays >= 2, 'the replayed batch reached the provider again');
  assert.deepEqual(await q('SELECT * FROM milestones.check_invariants()'), []);
  // Nothing is left for the consumer.
  const left = await db.pool({ max: 1 }, 'worker').query('SELECT milestones.next_batch($1) AS b', [CONSUMER]);
  assert.equal(left.rows[0].b, null, 'the consumer is caught up');
});
