// examples/node/test/payment-worker.test.js - the payment worker (worker.js,
// confirmed mode, a login with only milestones_payments) killed with SIGKILL
// in the middle of a batch - after the provider answered a request and
// before the worker reported the answer - and restarted: the batch is handed
// out again, the provider answers the replayed keys without applying them
// again, the database takes each report once; then declined buyers retry
// and payments still processing settle while it runs.  At the end every
// charge attempt was sent to the provider exactly once under its key
// charge-<charge_id>-<attempt>, and the provider's answers and the
// database's record agree one to one.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { MilestonesClient } from '../lib/client.js';
import { PaymentProvider } from '../lib/provider.js';
import { OFFER3, TestDatabase, waitFor } from './helpers.js';

const here = dirname(fileURLToPath(import.meta.url));
const db = new TestDatabase('ms_node_payw');
const q = async (sql, args = []) => (await db.admin.query(sql, args)).rows;
const workers = [];
let api;
let backOffice;   // the provider's own side: how it answers, what settles

before(async () => {
  await db.create();
  await db.admin.query("SELECT milestones.set_setting('payment_mode', 'confirmed')");
  await db.pool({ max: 1 }, 'payments').query("SELECT milestones.register_consumer('payments')");
  api = new MilestonesClient({ pool: db.pool({ max: 4 }) });
  backOffice = new PaymentProvider({ pool: db.admin });
});
after(async () => {
  for (const w of workers) w.child.kill('SIGKILL');
  await db.drop();
});

// WorkerProcess: worker.js (confirmed mode, the payments login) as a child
// process, its JSON progress records collected as they arrive.
class WorkerProcess {
  constructor(args) {
    this.records = [];
    this.stderr = '';
    this.child = spawn(process.execPath, [join(here, '..', 'worker.js'), '--consumer', 'payments', '--log', 'json',
      '--poll-ms', '200', ...args], { env: db.env('payments'), stdio: ['ignore', 'pipe', 'pipe'] });
    createInterface({ input: this.child.stdout }).on('line', (l) => {
      try { this.records.push(JSON.parse(l)); } catch { this.stderr += `${l}\n`; }
    });
    this.child.stderr.on('data', (d) => { this.stderr += d; });
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => resolve({ code, signal })));
    workers.push(this);
  }

  of(type) { return this.records.filter((r) => r.type === type); }
}

// Buyers 400..411: four cards declined, two payments that stay processing.
const BUYERS = Array.from({ length: 12 }, (_, i) => 400 + i);
const DECLINED = BUYERS.slice(0, 4);
const PROCESSING = BUYERS.slice(4, 6);

test('the payment worker killed between an answer and its report, restarted: every attempt charged once, reported once',
  { timeout: 120000 }, async () => {
    for (const b of DECLINED) await backOffice.answer('buyer', b, 'fail', 'card_declined');
    for (const b of PROCESSING) await backOffice.answer('buyer', b, 'processing');
    // 1. A backlog: every buyer places an order while no worker runs.
    const orders = await Promise.all(BUYERS.map(async (buyer) => {
      const order = await api.createOffer({ sellerId: 10, buyerId: buyer, category: 'design', milestones: OFFER3 });
      const s = await api.placeOrder(order, buyer);
      return { buyer, order, charge: s.charge_id };
    }));

    // 2. A slow worker (a pause between each answer and its report) is
    //    killed in that pause, after it reported some of the batch.
    const w1 = new WorkerProcess(['--event-delay-ms', '150', '--max-events', '8']);
    let killed;
    await waitFor('the worker to be between an answer and its report', () => {
      const b = w1.of('batch').at(-1);
      const last = w1.records.at(-1);
      if (!b || last?.type !== 'answer' || last.status === 'processing' || last.batch_id !== b.batch_id) return false;
      const reported = w1.of('event').filter((r) => r.batch_id === b.batch_id && r.effects.some((e) => e.reported));
      if (reported.length < 2) return false;
      w1.child.kill('SIGKILL');
      killed = { batch: b, answer: last, reported };
      return true;
    }, 60000, 5);
    assert.equal((await w1.exited).signal, 'SIGKILL');
    assert.ok(!w1.of('finished').some((f) => f.batch_id === killed.batch.batch_id), 'the batch was never finished');
    const [, charge, attempt] = /^charge-(\d+)-(\d+)$/.exec(killed.answer.key);
    const [unreported] = await q('SELECT attempt_state FROM milestones.charges WHERE charge_id = $1 AND attempt = $2', [charge, attempt]);
    assert.equal(unreported.attempt_state, 'requested', 'the provider answered, the database does not know yet');

    // 3. Restarted: the same batch again; declined buyers change their card
    //    and retry, processing payments settle, while it runs.
    const w2 = new WorkerProcess([]);
    await waitFor('the restarted worker to take a batch', () => w2.of('batch').length > 0, 15000);
    assert.equal(w2.of('batch')[0].first_event_id, killed.batch.first_event_id, 'the unfinished batch is handed out again');
    await waitFor('every first attempt to be answered', async () =>
      (await q("SELECT count(*)::int AS n FROM payment_provider.requests WHERE kind = 'charge'"))[0].n === orders.length, 20000);
    for (const b of DECLINED) await backOffice.answer('buyer', b, null);
    await Promise.all(orders.filter((o) => DECLINED.includes(o.buyer)).map(async (o) => {
      await waitFor(`buyer ${o.buyer}'s decline to be reported`,
        async () => (await api.orderStatus(o.order)).charge_state === 'failed', 20000);
      await api.retryCharge(o.order, o.buyer);
    }));
    const [settled, failed] = orders.filter((o) => PROCESSING.includes(o.buyer));
    await waitFor('the processing payments to be answered', async () =>
      (await q("SELECT count(*)::int AS n FROM payment_provider.requests WHERE status = 'processing'"))[0].n === 2, 20000);
    await backOffice.settle(`charge-${settled.charge}-1`, 'succeeded');
    await backOffice.settle(`charge-${failed.charge}-1`, 'failed', 'authentication_failed');
    await waitFor('every order to have its answer', async () => {
      const open = await q(`SELECT count(*)::int AS n FROM milestones.order_status
                             WHERE order_id = ANY ($1::bigint[]) AND charge_state = 'requested'`, [orders.map((o) => o.order)]);
      return open[0].n === 0 && (await backOffice.webhooks()).length === 0 && w2.records.at(-1)?.type === 'idle';
    }, 30000, 50).catch((err) => {
      err.message += `\nlast records: ${JSON.stringify(w2.records.slice(-3))}\nworker stderr: ${w2.stderr}`;
      throw err;
    });
    w2.child.kill('SIGTERM');
    assert.deepEqual(await w2.exited, { code: 0, signal: null }, 'a clean exit on SIGTERM');

    // 4. The replay: every request the killed worker had sent was answered
    //    again without being applied again.
    const sentBefore = new Set(w1.of('answer').map((r) => r.key));
    const replayed = w2.of('answer').filter((r) => sentBefore.has(r.key));
    assert.ok(replayed.length >= 3, 'the reported requests and the unreported one were replayed');
    assert.ok(replayed.some((r) => r.key === killed.answer.key));
    assert.ok(replayed.every((r) => !r.applied), 'replays answered, not applied again');

    // 5. The books: one provider request per attempt, the same answer on
    //    both sides, each report recorded once, each success booked once.
    const sides = await q(`
      SELECT c.charge_id, c.attempt, c.attempt_state, p.status, c.provider_ref IS NOT DISTINCT FROM
             CASE WHEN p.status = 'succeeded' THEN p.provider_ref END AS same_ref
        FROM milestones.charges c
        FULL JOIN payment_provider.requests p ON p.subject_id = c.charge_id AND p.attempt = c.attempt AND p.kind = 'charge'
       ORDER BY 1, 2`);
    assert.equal(sides.length, orders.length + DECLINED.length, 'one request per attempt: 12 first attempts, 4 retries');
    for (const s of sides) {
      assert.equal(s.attempt_state, s.status, `charge ${s.charge_id} attempt ${s.attempt}: the database says what the provider answered`);
      assert.equal(s.same_ref, true);
    }
    assert.deepEqual(sides.map((s) => s.status).sort(),
      [...Array(5).fill('failed'), ...Array(11).fill('succeeded')], '10 paid at once or after a retry, 1 settled; 4 declines, 1 failed settlement');
    assert.deepEqual(await q(`SELECT detail ->> 'charge_id' AS charge, detail ->> 'attempt' AS attempt, count(*)::int
                                FROM milestones.events WHERE event IN ('charge_succeeded', 'charge_failed')
                               GROUP BY 1, 2 HAVING count(*) <> 1`), [], 'each report recorded once');
    assert.equal((await q("SELECT count(*)::int AS n FROM milestones.events WHERE event IN ('charge_succeeded', 'charge_failed')"))[0].n,
      sides.length);
    assert.deepEqual(await q(`SELECT order_id FROM milestones.ledger_entries WHERE kind = 'charge' AND account = 'escrow'
                               GROUP BY order_id HAVING count(*) <> 1`), [], 'each success booked once');
    const states = await q('SELECT state, count(*)::int AS n FROM milestones.order_status GROUP BY state ORDER BY state');
    assert.deepEqual(states, [{ state: 'active', n: 11 }, { state: 'offered', n: 1 }], 'the failed settlement waits for a retry');
    assert.deepEqual(await q('SELECT * FROM milestones.check_invariants()'), []);
    const left = await db.pool({ max: 1 }, 'payments').query("SELECT milestones.next_batch('payments') AS b");
    assert.equal(left.rows[0].b, null, 'the consumer is caught up');
  });
