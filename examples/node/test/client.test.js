// examples/node/test/client.test.js - the application-side client against a
// real database: SQLSTATE -> HTTP status with message, DETAIL and HINT kept;
// money as strings; an idempotency key per logical call; a call whose
// connection is killed is retried with the same key and has one effect -
// whether the first attempt died before its commit or only its answer was
// lost after the commit.

import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { HTTP_STATUS, MilestonesClient, MilestonesError, isConnectionLost, toHttpError } from '../lib/client.js';
import { OFFER3, TestDatabase, waitFor } from './helpers.js';

const db = new TestDatabase('ms_node_client');
let api;       // the application (milestones_app)
let support;   // customer support (milestones_support)

before(async () => {
  await db.create();
  api = new MilestonesClient({ pool: db.pool({ max: 4 }) });
  support = new MilestonesClient({ pool: db.pool({ max: 2 }, 'support') });
});
after(() => db.drop());

// ledgerCount: the ledger transactions of an order of one kind.
async function ledgerCount(orderId, kind) {
  const r = await db.admin.query(
    'SELECT count(DISTINCT txn_id)::int AS n FROM milestones.ledger_entries WHERE order_id = $1 AND kind = $2',
    [orderId, kind]);
  return r.rows[0].n;
}

// rejects: awaits a call that must fail and returns its MilestonesError.
async function rejects(promise) {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof MilestonesError, `a MilestonesError, got ${err}`);
    return err;
  }
  assert.fail('the call succeeded');
}

describe('SQLSTATE -> HTTP', () => {
  test('the mapping table', () => {
    assert.deepEqual({ ...HTTP_STATUS }, { P0002: 404, 42501: 403, 55000: 409, 22023: 422, '0A000': 403 });
    for (const [code, status] of [['P0002', 404], ['42501', 403], ['55000', 409], ['22023', 422], ['0A000', 403],
      ['23505', 500], ['XX000', 500], [undefined, 500]]) {
      const e = toHttpError(Object.assign(new Error('m'), { code, detail: 'D.', hint: 'H.' }));
      assert.equal(e.status, status, `${code} -> ${status}`);
      assert.deepEqual(e.toJSON(), { status, code, error: 'm', detail: 'D.', hint: 'H.' });
    }
  });

  test('P0002: unknown order is 404 (order_status too)', async () => {
    const s = await rejects(api.orderStatus('999999'));
    assert.deepEqual([s.status, s.code, s.detail], [404, 'P0002', 'No milestone order has id 999999.']);
  });

  test('P0002: unknown order is 404, with DETAIL', async () => {
    const e = await rejects(api.placeOrder('999999', 20));
    assert.equal(e.status, 404);
    assert.equal(e.code, 'P0002');
    assert.equal(e.message, 'order 999999 does not exist');
    assert.equal(e.detail, 'No milestone order has id 999999.');
  });

  test('42501: not the order\'s buyer is 403, with DETAIL', async () => {
    const order = await api.createOffer({ sellerId: 10, buyerId: 20, category: 'design', milestones: OFFER3 });
    const e = await rejects(api.placeOrder(order, 21));
    assert.equal(e.status, 403);
    assert.equal(e.code, '42501');
    assert.match(e.message, /user 21 is not the buyer of order/);
    assert.match(e.detail, /Only the order's buyer may do this/);
  });

  test('42501: cancel without the support privilege is 403', async () => {
    const order = await api.createOffer({ sellerId: 10, buyerId: 20, category: 'design', milestones: OFFER3 });
    const e = await rejects(api.cancel(order, 'agent-1', 'duplicate_order'));
    assert.equal(e.status, 403);
    assert.equal(e.code, '42501');
  });

  test('55000: not allowed in the order\'s state is 409, with DETAIL and HINT', async () => {
    const order = await api.createOffer({ sellerId: 10, buyerId: 20, category: 'design', milestones: OFFER3 });
    const e = await rejects(api.deliver(order, 10));
    assert.equal(e.status, 409);
    assert.equal(e.code, '55000');
    assert.match(e.message, /deliver is not allowed: order \d+ is offered/);
    assert.match(e.detail, /deliver needs an active order/);
    assert.equal(e.hint, 'The buyer places the order first.');
    assert.equal(e.toJSON().hint, 'The buyer places the order first.');
  });

  test('22023: bad input is 422 (a total not above the minimum)', async () => {
    const e = await rejects(api.createOffer({
      sellerId: 10, buyerId: 20, category: 'design', milestones: [{ name: 'Tiny', days: 1, amount: '50.00' }],
    }));
    assert.equal(e.status, 422);
    assert.equal(e.code, '22023');
    assert.ok(e.detail, 'a DETAIL');
  });

  test('0A000: a category without milestones is 403, with HINT', async () => {
    const e = await rejects(api.createOffer({ sellerId: 10, buyerId: 20, category: 'plumbing', milestones: OFFER3 }));
    assert.equal(e.status, 403);
    assert.equal(e.code, '0A000');
    assert.match(e.hint, /set_category_eligibility/);
  });

  test('any other SQLSTATE is 500', async () => {
    const e = await rejects(api.call('payout', { order_id: 'not-a-number' }));
    assert.equal(e.status, 500);
    assert.equal(e.code, '22P02');
  });
});

describe('support', () => {
  test('cancelMilestone: a running milestone refunded, the next one charged; unknown position 404', async (t) => {
    const has = (await db.admin.query(
      "SELECT to_regprocedure('milestones.cancel_milestone(bigint, integer, text, text, text, text)') IS NOT NULL AS ok")).rows[0].ok;
    if (!has) { t.skip('cancel_milestone is not installed'); return; }
    const order = await api.createOffer({ sellerId: 10, buyerId: 20, category: 'design', milestones: OFFER3 });
    await api.placeOrder(order, 20);
    const row = await support.cancelMilestone(order, 1, 'agent-7', 'seller_unresponsive', 'no answer for a week');
    assert.equal(row.state, 'active');
    assert.equal(row.current_milestone, 2);
    assert.deepEqual([row.total, row.charged, row.refunded], ['500.50', '250.00', '100.00']);
    const e = await rejects(support.cancelMilestone(order, 9, 'agent-7', 'seller_unresponsive'));
    assert.deepEqual([e.status, e.code], [404, 'P0002']);
    const app = await rejects(api.cancelMilestone(order, 3, 'agent-7', 'seller_unresponsive'));
    assert.equal(app.status, 403, 'the application role is not support');
  });
});

describe('money and keys', () => {
  test('amounts go out and come back as strings, never floats', async () => {
    await assert.rejects(
      api.createOffer({ sellerId: 10, buyerId: 20, category: 'design', milestones: [{ name: 'A', days: 1, amount: 150.5 }] }),
      TypeError);
    const order = await api.createOffer({ sellerId: 10, buyerId: 20, category: 'design', milestones: OFFER3 });
    assert.equal(typeof order, 'string', 'bigint order id as a string');
    const row = await api.placeOrder(order, 20);
    assert.deepEqual(await api.orderStatus(order), row);
    assert.equal(row.total, '500.50');
    assert.equal(row.charged, '100.00');
    const p = await api.payout(order);
    assert.deepEqual([p.gross, p.fee, p.net], ['0.00', '0.00', '0.00']);
  });

  test('a repeated logical call with its key changes the order once', async () => {
    const key = `checkout-${order_suffix()}`;
    const order = await api.createOffer({ sellerId: 10, buyerId: 20, category: 'design', milestones: OFFER3 });
    const first = await api.placeOrder(order, 20, { idempotencyKey: key });
    const again = await api.placeOrder(order, 20, { idempotencyKey: key });
    assert.deepEqual(again, first);
    assert.equal(await ledgerCount(order, 'charge'), 1);
    // Two logical calls (two keys): the second is refused.
    const e = await rejects(api.placeOrder(order, 20));
    assert.equal(e.status, 409);
  });
});

let suffix = 0;
function order_suffix() { suffix += 1; return `${process.pid}-${suffix}`; }

describe('retry after a lost connection', () => {
  test('the backend is terminated before the call commits: retried with the same key, charged once', async () => {
    const retries = [];
    const appName = `client-retry-${process.pid}`;
    const client = new MilestonesClient({
      pool: db.pool({ max: 1, application_name: appName }),
      onRetry: (r) => retries.push(r),
    });
    const order = await api.createOffer({ sellerId: 10, buyerId: 20, category: 'design', milestones: OFFER3 });
    // Hold the order's row lock so the call waits where we can kill it.
    const blocker = new pg.Client({ database: db.name });
    await blocker.connect();
    await blocker.query('BEGIN');
    await blocker.query('SELECT 1 FROM milestones.orders WHERE order_id = $1 FOR UPDATE', [order]);
    const key = `place-${order_suffix()}`;
    const call = client.placeOrder(order, 20, { idempotencyKey: key });
    const waiting = `SELECT pid FROM pg_stat_activity
                      WHERE application_name = $1 AND wait_event_type = 'Lock' AND datname = current_database()`;
    const pid = await waitFor('the call to wait on the lock',
      async () => (await db.admin.query(waiting, [appName])).rows[0]?.pid);
    const killed = await db.admin.query('SELECT pg_terminate_backend($1) AS ok', [pid]);
    assert.equal(killed.rows[0].ok, true);
    // The retry waits on the lock again (a new backend); let it through.
    await waitFor('the retry to wait on the lock',
      async () => (await db.admin.query(waiting, [appName])).rows.some((r) => r.pid !== pid));
    await blocker.query('COMMIT');
    await blocker.end();
    const row = await call;
    assert.equal(row.state, 'active');
    assert.equal(row.charged, '100.00');
    assert.equal(retries.length, 1, 'one retry');
    assert.equal(retries[0].key, key, 'retried with the same key');
    assert.equal(retries[0].error.code, '57P01', 'admin_shutdown');
    assert.ok(isConnectionLost(retries[0].error));
    assert.equal(await ledgerCount(order, 'charge'), 1, 'charged once');
  });

  test('the answer is lost after the commit: the retry returns the first result, charged once', async () => {
    const proxy = await startProxy();
    try {
      const retries = [];
      const pool = db.pool({ max: 1, host: '127.0.0.1', port: proxy.port });
      const client = new MilestonesClient({ pool, onRetry: (r) => retries.push(r) });
      const order = await api.createOffer({ sellerId: 10, buyerId: 20, category: 'design', milestones: OFFER3 });
      await pool.query('SELECT 1');              // a connection through the proxy, ready
      proxy.loseNextAnswer();                    // it commits, then the line breaks
      const key = `place-${order_suffix()}`;
      const row = await client.placeOrder(order, 20, { idempotencyKey: key });
      assert.equal(proxy.lost, 1, 'one answer was lost');
      assert.equal(retries.length, 1, 'one retry');
      assert.equal(retries[0].key, key, 'retried with the same key');
      assert.ok(isConnectionLost(retries[0].error), `a lost connection: ${retries[0].error.message}`);
      assert.equal(row.state, 'active');
      assert.equal(row.charged, '100.00');
      assert.equal(await ledgerCount(order, 'charge'), 1, 'charged once, by the first attempt');
      const placed = await db.admin.query(
        "SELECT count(*)::int AS n FROM milestones.events WHERE order_id = $1 AND event = 'placed'", [order]);
      assert.equal(placed.rows[0].n, 1, 'one placed event');
    } finally {
      await proxy.close();
    }
  });
});

// startProxy: a TCP proxy to the server that can lose one answer: after
// loseNextAnswer(), it swallows what the server sends back until the
// server's ReadyForQuery (so the transaction has committed), then cuts both
// connections - the client never learns the outcome.
async function startProxy() {
  const host = process.env.PGHOST ?? 'localhost';
  const port = Number(process.env.PGPORT ?? 5432);
  const upstream = host.startsWith('/') ? { path: `${host}/.s.PGSQL.${port}` } : { host, port };
  const sockets = new Set();
  const state = { armed: false, lost: 0 };
  const server = net.createServer((down) => {
    const up = net.connect(upstream);
    sockets.add(down); sockets.add(up);
    let pending = Buffer.alloc(0);
    down.on('data', (d) => up.write(d));
    up.on('data', (d) => {
      if (!state.armed) { down.write(d); return; }
      pending = Buffer.concat([pending, d]);
      // Walk the backend messages (type byte, int32 length) up to 'Z'.
      let off = 0;
      while (pending.length - off >= 5) {
        const len = pending.readInt32BE(off + 1);
        if (pending.length - off < 1 + len) break;
        if (pending[off] === 0x5a) {           // 'Z': ReadyForQuery, after the commit
          state.armed = false;
          state.lost += 1;
          down.destroy(); up.destroy();
          return;
        }
        off += 1 + len;
      }
    });
    const close = () => { down.destroy(); up.destroy(); };
    down.on('error', close); up.on('error', close);
    down.on('close', close); up.on('close', close);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: server.address().port,
    loseNextAnswer() { state.armed = true; },
    get lost() { return state.lost; },
    close: () => new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(resolve);
    }),
  };
}
