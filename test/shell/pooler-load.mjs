// test/shell/pooler-load.mjs - the load test/shell/71_pgbouncer.t puts on
// PgBouncer while it kills it: CLIENTS clients (default 8), each running
// LIFECYCLES full lifecycles (default 10) with the JavaScript client of
// examples/node (MilestonesClient, one connection each, as libpq's PG*
// variables say: the pooler).  Every call carries its own idempotency key,
// and the client sends it again with that key while the connection is lost
// (it cannot know whether the call committed).
//
// stdout: one line per call a client saw succeed, "order_id key state".
// stderr: one line per retry, and per client that failed.
// Exit status 1 when a client failed (a call refused, or retries used up).
import { createRequire } from 'node:module';

const require = createRequire(new URL('../../examples/node/package.json', import.meta.url));
const pg = require('pg');
const { MilestonesClient } = await import('../../examples/node/lib/client.js');

const CLIENTS = Number(process.env.CLIENTS ?? 8);
const LIFECYCLES = Number(process.env.LIFECYCLES ?? 10);
const OFFER = [
  { name: 'Storyboard', days: 3, amount: '100.00' },
  { name: 'Animation', days: 7, amount: '150.00' },
  { name: 'Final cut', days: 5, amount: '250.00' },
];

// client runs one client's lifecycles; false when a call failed.
async function client(c) {
  const pool = new pg.Pool({ max: 1, application_name: `pooler-load-${c}` });
  // Up to 10 retries, 50 ms doubling: some 50 s for the pooler to come back.
  const api = new MilestonesClient({
    pool,
    retries: 10,
    retryDelayMs: 50,
    onRetry: ({ key, attempt, error }) =>
      process.stderr.write(`retry ${key} ${attempt} ${error.code ?? ''} ${error.message}\n`),
  });
  const buyer = 5000 + c;
  const seen = (order, key, state) => process.stdout.write(`${order} ${key} ${state}\n`);
  try {
    for (let k = 1; k <= LIFECYCLES; k++) {
      const key = (s) => ({ idempotencyKey: `c${c}-${k}-${s}` });
      const order = await api.createOffer(
        { sellerId: 10, buyerId: buyer, category: 'design', milestones: OFFER, revisions: 1 }, key(0));
      seen(order, key(0).idempotencyKey, 'offered');
      const steps = [
        (o) => api.placeOrder(order, buyer, o),
        (o) => api.deliver(order, 10, null, o),
        (o) => api.accept(order, buyer, o),
        (o) => api.deliver(order, 10, null, o),
        (o) => api.accept(order, buyer, o),
        (o) => api.deliver(order, 10, 'final', o),
        (o) => api.accept(order, buyer, o),
      ];
      for (let s = 1; s <= steps.length; s++) {
        const row = await steps[s - 1](key(s));
        seen(order, key(s).idempotencyKey, row.state);
      }
    }
    return true;
  } catch (err) {
    process.stderr.write(`client ${c} failed: ${err.code ?? ''} ${err.message}\n`);
    return false;
  } finally {
    await pool.end().catch(() => {});
  }
}

const results = await Promise.all(Array.from({ length: CLIENTS }, (_, i) => client(i + 1)));
process.exitCode = results.every(Boolean) ? 0 : 1;
