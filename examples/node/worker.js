#!/usr/bin/env node
// examples/node/worker.js - run the milestones payment worker.
//
//   node worker.js [--mode confirmed|recorded|both] [--consumer payments]
//                  [--max-events 1000] [--poll-ms 1000] [--concurrency 4]
//                  [--once] [--log text|json] [--event-delay-ms 0]
//
// --mode confirmed (the default): charge_requested, refund_requested and
// withdrawal_requested go to the provider and its answers are reported with
// record_charge, record_refund and record_withdrawal; the login needs
// milestones_payments (and nothing else).  --mode recorded: the 1.1 loop,
// sending what each event's detail says; the login reads order_status
// (milestones_app or milestones_reader).  --mode both: a login with both.
// --concurrency: orders handled side by side within a batch (the events of
// one order always in their order); the batch is finished when all are done.
// --poll-ms: the safety-net poll, and how often the provider's webhooks (a
// processing payment that settled) are fetched while idle.
//
// The database comes from the libpq environment (PGHOST, PGPORT, PGUSER,
// PGPASSWORD, PGDATABASE).  The payment provider stand-in lives in the same
// database unless PROVIDER_DATABASE is set.  SIGTERM/SIGINT end the worker
// after the batch in hand.
//
// Behind a pooler in transaction mode (PgBouncer: PGHOST/PGPORT point at
// it), set MILESTONES_LISTEN_HOST and/or MILESTONES_LISTEN_PORT to
// PostgreSQL itself: the worker's LISTEN needs a session of its own, which
// a transaction pooler does not keep (doc/operations.md, "Connection
// poolers").  Everything else goes through the pooler.

import { parseArgs } from 'node:util';
import pg from 'pg';
import { PaymentProvider } from './lib/provider.js';
import { EventWorker } from './lib/worker.js';

const { values: opt } = parseArgs({
  options: {
    mode: { type: 'string', default: 'confirmed' },
    consumer: { type: 'string', default: 'payments' },
    'max-events': { type: 'string', default: '1000' },
    'poll-ms': { type: 'string', default: '1000' },
    concurrency: { type: 'string', default: '4' },
    'event-delay-ms': { type: 'string', default: '0' },
    once: { type: 'boolean', default: false },
    log: { type: 'string', default: 'text' },
  },
});

// textLine renders one progress record for people; json mode prints it as is.
function textLine(r) {
  switch (r.type) {
    case 'batch':
      return `batch ${r.batch_id}: ${r.events} events (${r.first_event_id ?? '-'}..${r.last_event_id ?? '-'}), oldest ${r.lag_ms} ms old`;
    case 'event': {
      const what = r.effects.map((e) => {
        const amount = e.kind === 'payout' ? `${e.amount} (fee ${e.fee})` : (e.amount ?? '');
        const answer = e.status ? ` ${e.key}: ${e.status}${e.failure ? ` (${e.failure})` : ''}` +
                                  (e.reported ? `, reported (${e.reported})` : '') : '';
        return `${e.kind} ${amount}`.trim() + answer + (e.applied ? '' : ' [replay, not applied again]');
      }).join(', ');
      const order = r.order_id === null ? '' : `  order ${r.order_id}`;
      return `  event ${r.event_id}${order}  ${r.event}${r.position ? ` m${r.position}` : ''}${what ? `  -> ${what}` : ''}`;
    }
    case 'answer': return null;        // the event's line follows
    case 'webhook':
      return `  webhook ${r.key}: ${r.status}${r.provider_ref ? ` ${r.provider_ref}` : ''}${r.reported ? ` -> reported (${r.reported})` : ''}`;
    case 'finished': return `batch ${r.batch_id} finished`;
    case 'error': return `error: ${r.message}${r.code ? ` (${r.code})` : ''}`;
    case 'idle': return null;
    default: return `${r.type}${r.pid ? ` (backend ${r.pid})` : ''}${r.consumer ? ` ${r.consumer}` : ''}`;
  }
}

const log = opt.log === 'json'
  ? (r) => process.stdout.write(`${JSON.stringify(r)}\n`)
  : (r) => { const l = textLine(r); if (l !== null) process.stdout.write(`${l}\n`); };

const providerPool = new pg.Pool({
  max: Number(opt.concurrency),
  application_name: 'payment-provider-standin',
  ...(process.env.PROVIDER_DATABASE ? { database: process.env.PROVIDER_DATABASE } : {}),
});
providerPool.on('error', () => {});   // an idle connection lost; the next request reconnects
const provider = new PaymentProvider({ pool: providerPool });

const listenHost = process.env.MILESTONES_LISTEN_HOST;
const listenPort = process.env.MILESTONES_LISTEN_PORT;
const listenConnection = listenHost || listenPort
  ? { ...(listenHost ? { host: listenHost } : {}), ...(listenPort ? { port: Number(listenPort) } : {}) }
  : null;

const worker = new EventWorker({
  mode: opt.mode,
  consumer: opt.consumer,
  listenConnection,
  provider,
  maxEvents: Number(opt['max-events']),
  pollMs: Number(opt['poll-ms']),
  concurrency: Number(opt.concurrency),
  eventDelayMs: Number(opt['event-delay-ms']),
  once: opt.once,
  log,
});
process.on('SIGTERM', () => worker.stop());
process.on('SIGINT', () => worker.stop());

try {
  await worker.run();
} catch {
  process.exitCode = 1;           // --once: the error was logged; the batch stays unfinished
} finally {
  await providerPool.end();
}
