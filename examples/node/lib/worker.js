// examples/node/lib/worker.js - drains a durable milestones consumer and
// moves the money the events describe.
//
// The extension is the system of record; charging a buyer's card, paying a
// seller and telling a seller to stop working are the application's job.
// This worker learns of them from a named consumer (SPEC section 5):
//
//   next_batch(consumer)  -> a batch id, or NULL when nothing new
//   batch_events(batch)   -> its events, in commit order
//   finish_batch(batch)   -> the consumer moves past it
//
// and LISTENs on channel `milestones` only as a wake-up (a notification
// sent while the worker was away is lost; the consumer's cursor is not), with
// a periodic poll as a safety net.
//
// Two payment modes (SPEC section 11; an order keeps the mode it was
// offered in):
//
//   confirmed  the database requests each movement and waits for the
//              provider's answer: for charge_requested, refund_requested and
//              withdrawal_requested the worker calls the provider with the
//              key charge-<charge_id>-<attempt>, refund-<refund_id>-<attempt>
//              or withdrawal-<withdrawal_id> and reports the answer with
//              record_charge, record_refund or record_withdrawal.  An answer
//              that is still "processing" is reported when the provider's
//              webhook says it settled (deliverWebhooks).  The login needs
//              milestones_payments only.
//   recorded   (1.0/1.1) the database booked the money already; the worker
//              sends what the event's detail says (effectsOf) with the key
//              event-<event_id>-<kind>.  The login needs to read order_status
//              (the parties of each order): milestones_app or _reader.
//
// Behind a connection pooler in transaction mode (PgBouncer) the batches
// work as they are: each call is its own transaction and a batch is named
// by its id, so no session state is needed between them.  LISTEN is
// session state: through the pooler it would land on whichever server
// connection ran it, and the notifications with it, so the worker then
// LISTENs on a direct connection of its own (listenConnection).
//
// Guarantee: at least once + idempotency key = exactly-once effect.  A batch
// is finished only after every request of every event in it was answered
// (and, in confirmed mode, reported).  If the worker dies in between
// (SIGKILL, crash, lost connection), the batch is handed out again and
// replayed from its first event; each request carries the same key again,
// so the provider answers the replays without applying them twice, and the
// database takes a repeated report as the same report.

import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { toCents } from './money.js';

// The event columns the worker needs.  Amounts are read from the `detail`
// jsonb as text (->>), so they reach JavaScript as exact decimal strings,
// never as floats; the detail keys are the ones the extension's _event calls
// write: charged (+ next on accept), refunded, payout {gross, fee, net}.
// Confirmed mode's requests carry everything in their detail: charge_id,
// refund_id or withdrawal_id, attempt, amount, currency, buyer_id/seller_id.
const EVENTS_SQL = `
SELECT e.event_id, e.order_id, e.position, e.event, e.order_state, e.milestone_state,
       e.detail ->> 'charge_id'        AS charge_id,
       e.detail ->> 'refund_id'        AS refund_id,
       e.detail ->> 'withdrawal_id'    AS withdrawal_id,
       e.detail ->> 'attempt'          AS attempt,
       e.detail ->> 'amount'           AS amount,
       e.detail ->> 'currency'         AS request_currency,
       e.detail ->> 'buyer_id'         AS request_buyer_id,
       e.detail ->> 'seller_id'        AS request_seller_id,
       e.detail ->> 'charged'          AS charged,
       e.detail ->> 'next'             AS next_position,
       e.detail ->> 'refunded'         AS refunded,
       e.detail #>> '{payout,gross}'   AS payout_gross,
       e.detail #>> '{payout,fee}'     AS payout_fee,
       e.detail #>> '{payout,net}'     AS payout_net,
       e.detail ->> 'reason'           AS reason,
       round(extract(epoch FROM pg_catalog.clock_timestamp() - e.recorded_at) * 1000)::integer AS lag_ms
  FROM milestones.batch_events($1) AS e
 ORDER BY e.event_id`;

// The parties, currency and payment mode of the batch's orders (recorded
// mode; the event row has none).  A 1.1 database has no payment_mode.
const ORDERS_SQL = `
SELECT s.order_id, s.buyer_id, s.seller_id, s.currency,
       COALESCE(pg_catalog.to_jsonb(s) ->> 'payment_mode', 'recorded') AS payment_mode
  FROM milestones.order_status s
 WHERE s.order_id = ANY ($1::bigint[])`;

// The reports of confirmed mode (SPEC sections 11 and 12).
const REPORT_SQL = {
  charge: 'SELECT charge_id, attempt, state, attempt_state FROM milestones.record_charge($1, $2, $3, $4, $5)',
  refund: 'SELECT refund_id, attempt, state FROM milestones.record_refund($1, $2, $3, $4)',
  withdrawal: 'SELECT withdrawal_id, state FROM milestones.record_withdrawal($1, $2, $3, $4)',
};

// The events that ask the payment worker for a request (confirmed mode).
export const REQUEST_EVENTS = Object.freeze({
  charge_requested: 'charge',
  refund_requested: 'refund',
  withdrawal_requested: 'withdrawal',
});

// requestOf is the provider request of a confirmed-mode event (charge_requested,
// refund_requested, withdrawal_requested), or null for any other event.  The
// key names what the database asked for, so every replay of the event - and
// any other worker handed it - sends the same key.  A refund is sent again
// by support (retry_refund: a new attempt), so its attempt is in its key; a
// failed withdrawal is never sent again (the seller requests a new one).
// Throws on a malformed amount or id: a batch with an event the worker
// cannot read is not finished.
export function requestOf(ev) {
  const kind = REQUEST_EVENTS[ev.event];
  if (!kind) return null;
  const need = (v, name) => {
    if (typeof v !== 'string' || !/^[0-9]+$/.test(v)) throw new Error(`event ${ev.event_id} (${ev.event}): no ${name} in its detail`);
    return v;
  };
  toCents(ev.amount ?? '');
  const base = { kind, eventId: ev.event_id, orderId: ev.order_id ?? null, position: ev.position ?? null,
                 amount: ev.amount, currency: ev.request_currency };
  switch (kind) {
    case 'charge': {
      const id = need(ev.charge_id, 'charge_id');
      const attempt = need(ev.attempt, 'attempt');
      return { ...base, key: `charge-${id}-${attempt}`, subjectId: id, attempt: Number(attempt), partyId: need(ev.request_buyer_id, 'buyer_id') };
    }
    case 'refund': {
      const id = need(ev.refund_id, 'refund_id');
      const attempt = need(ev.attempt, 'attempt');
      return { ...base, key: `refund-${id}-${attempt}`, subjectId: id, attempt: Number(attempt), partyId: need(ev.request_buyer_id, 'buyer_id') };
    }
    default: {
      const id = need(ev.withdrawal_id, 'withdrawal_id');
      return { ...base, key: `withdrawal-${id}`, subjectId: id, attempt: null, partyId: need(ev.request_seller_id, 'seller_id') };
    }
  }
}

// effectsOf lists the requests one event calls for, in the order they are
// sent.  Driven by the detail keys rather than the event names, so an event
// type that moves money the same way (a cancelled milestone: refunded, and
// charged for the next one) needs no new code.  Throws on a malformed
// amount: a batch with an event the worker cannot read is not finished.
// An order in confirmed mode moves money only through requests (above):
// of its events, only `stopped` still calls for a notice to the seller.
export function effectsOf(ev) {
  const base = { eventId: ev.event_id, orderId: ev.order_id, currency: ev.currency };
  const key = (kind) => `event-${ev.event_id}-${kind}`;
  const out = [];
  if (ev.payment_mode === 'confirmed') {
    if (ev.event === 'stopped') {
      out.push({ ...base, kind: 'stop_work', key: key('stop_work'), position: ev.position, partyId: ev.seller_id });
    }
    return out;
  }
  if (ev.refunded != null && toCents(ev.refunded) > 0n) {
    out.push({ ...base, kind: 'refund', key: key('refund'), position: ev.position, partyId: ev.buyer_id, amount: ev.refunded });
  }
  if (ev.charged != null && toCents(ev.charged) > 0n) {
    const position = ev.next_position != null ? Number(ev.next_position) : ev.position;
    out.push({ ...base, kind: 'charge', key: key('charge'), position, partyId: ev.buyer_id, amount: ev.charged });
  }
  if (ev.payout_gross != null && toCents(ev.payout_gross) > 0n) {
    // Nothing is paid (or posted to the ledger) for a zero gross.
    const fee = toCents(ev.payout_fee ?? '0');
    const net = toCents(ev.payout_net ?? ev.payout_gross);
    if (fee + net !== toCents(ev.payout_gross)) {
      throw new Error(`event ${ev.event_id}: payout fee ${ev.payout_fee} + net ${ev.payout_net} is not gross ${ev.payout_gross}`);
    }
    out.push({ ...base, kind: 'payout', key: key('payout'), partyId: ev.seller_id, amount: ev.payout_net, fee: ev.payout_fee ?? '0.00' });
  }
  if (ev.event === 'stopped') {
    // The source: when the buyer stops, the seller must be told to stop working.
    out.push({ ...base, kind: 'stop_work', key: key('stop_work'), position: ev.position, partyId: ev.seller_id });
  }
  return out;
}

export const MODES = Object.freeze(['confirmed', 'recorded', 'both']);

export class EventWorker {
  // consumer: the consumer's name; provider: a PaymentProvider;
  // mode: 'confirmed' (report the provider's answers; the login needs
  // milestones_payments), 'recorded' (1.1: send what the events say; the
  // login reads order_status) or 'both' (a marketplace moving from one to the
  // other); connection: pg.Client options (default: the PG* environment);
  // maxEvents: next_batch's max_events; pollMs: the safety-net poll (and
  // how often the provider's webhooks are fetched when idle);
  // concurrency: orders handled side by side within a batch;
  // eventDelayMs: a pause after each event - in confirmed mode between the
  // provider's answer and its report (tests use it to be killed there);
  // once: return when nothing is left (and throw on an error);
  // log(record): progress; listenConnection: pg.Client options of a direct
  // session for LISTEN (default: LISTEN on the connection above).
  constructor({ consumer, provider, mode = 'confirmed', connection = {}, maxEvents = 1000, pollMs = 1000,
                concurrency = 1, eventDelayMs = 0, once = false, register = true, log = () => {},
                listenConnection = null }) {
    if (!MODES.includes(mode)) throw new TypeError(`mode must be one of ${MODES.join(', ')}, got ${JSON.stringify(mode)}`);
    this.confirmed = mode !== 'recorded';
    this.recorded = mode !== 'confirmed';
    this.concurrency = Math.max(1, concurrency);
    this.consumer = consumer;
    this.provider = provider;
    this.connection = connection;
    this.listenConnection = listenConnection;
    this.maxEvents = maxEvents;
    this.pollMs = pollMs;
    this.eventDelayMs = eventDelayMs;
    this.once = once;
    this.register = register;
    this.log = log;
    this.client = null;
    this.listener = null;
    this.stopping = false;
    this.notified = false;
    this.waiter = null;
  }

  // stop asks the worker to end after the batch in hand.
  stop() {
    this.stopping = true;
    this.wake();
  }

  wake() {
    this.notified = true;
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  // session opens one connection; if it dies while idle, the worker is
  // woken and opens it again.
  async session(options) {
    const client = new pg.Client({ application_name: 'milestones-worker', ...options });
    client.on('error', (err) => {
      this.log({ type: 'error', message: `connection lost: ${err.message}` });
      if (this.client === client) this.client = null;
      if (this.listener === client) this.listener = null;
      this.wake();
    });
    await client.connect();
    return client;
  }

  // connect opens the worker's session and LISTENs on milestones, on that
  // session or on a direct one of its own (listenConnection).  LISTEN comes
  // before the next batch is asked for, so nothing committed meanwhile is
  // waited for until the poll.
  async connect() {
    if (!this.client) {
      this.client = await this.session(this.connection);
      this.log({ type: 'connected', pid: this.client.processID });
    }
    if (!this.listener) {
      const listener = this.listenConnection ? await this.session(this.listenConnection) : this.client;
      listener.on('notification', () => this.wake());
      await listener.query('LISTEN milestones');
      this.listener = listener;
      if (listener !== this.client) this.log({ type: 'listening', pid: listener.processID });
    }
  }

  async disconnect() {
    const sessions = new Set([this.client, this.listener].filter(Boolean));
    this.client = null;
    this.listener = null;
    await Promise.all([...sessions].map((c) => c.end().catch(() => {})));
  }

  // run drains batches (and the provider's webhooks) until stop() or, with
  // once, until nothing is left.
  async run() {
    let backoff = 100;
    while (!this.stopping) {
      try {
        if (!this.client || !this.listener) await this.connect();
        this.notified = false;
        const settled = await this.deliverWebhooks();
        const handled = await this.drainOne();
        backoff = 100;
        if (handled || settled > 0) continue;
        if (this.once) break;
        this.log({ type: 'idle' });
        await this.waitForWake(this.pollMs);
      } catch (err) {
        // The batch in hand stays unfinished: next_batch hands it out again.
        this.log({ type: 'error', message: err.message, code: err.code });
        await this.disconnect();
        if (this.once) throw err;
        if (this.stopping) break;
        await sleep(backoff);
        backoff = Math.min(backoff * 2, 5000);
      }
    }
    await this.disconnect();
  }

  // waitForWake waits for a notification, stop() or the poll interval.
  async waitForWake(ms) {
    if (this.notified || this.stopping) return;
    let timer;
    await new Promise((resolve) => {
      this.waiter = resolve;
      timer = setTimeout(resolve, ms);
    });
    clearTimeout(timer);
    this.waiter = null;
  }

  // nextBatch asks for the consumer's next batch, registering the consumer
  // the first time (P0002: unknown consumer).
  async nextBatch() {
    const sql = 'SELECT milestones.next_batch($1, $2) AS batch_id';
    try {
      return (await this.client.query(sql, [this.consumer, this.maxEvents])).rows[0].batch_id;
    } catch (err) {
      if (err.code !== 'P0002' || !this.register) throw err;
      await this.client.query('SELECT milestones.register_consumer($1)', [this.consumer]);
      this.log({ type: 'registered', consumer: this.consumer });
      return (await this.client.query(sql, [this.consumer, this.maxEvents])).rows[0].batch_id;
    }
  }

  // drainOne handles one batch; false when there was none.
  async drainOne() {
    const batchId = await this.nextBatch();
    if (batchId === null) return false;
    const fetchedAt = performance.now();
    const events = (await this.client.query(EVENTS_SQL, [batchId])).rows;
    const orders = new Map();
    if (this.recorded) {
      const orderIds = [...new Set(events.filter((e) => e.order_id !== null && !REQUEST_EVENTS[e.event]).map((e) => e.order_id))];
      if (orderIds.length > 0) {
        for (const o of (await this.client.query(ORDERS_SQL, [orderIds])).rows) orders.set(o.order_id, o);
      }
    }
    // lag_ms: how old the batch's oldest event was when the batch was read.
    const lagMs = events.length ? Math.max(...events.map((e) => e.lag_ms)) : 0;
    this.log({
      type: 'batch', batch_id: batchId, events: events.length,
      first_event_id: events[0]?.event_id, last_event_id: events.at(-1)?.event_id, lag_ms: lagMs,
      read_ms: Math.round(performance.now() - fetchedAt),
    });
    // One lane per order: an order's events are handled in their order,
    // different orders side by side (at most `concurrency` at a time).
    // Seller-level events (withdrawals: no order) share one lane.
    const lanes = new Map();
    for (const ev of events) {
      if (!lanes.has(ev.order_id)) lanes.set(ev.order_id, []);
      lanes.get(ev.order_id).push(ev);
    }
    const queue = [...lanes.values()];
    let failure = null;
    const runLanes = async () => {
      for (let lane = queue.shift(); lane && !failure; lane = queue.shift()) {
        for (const ev of lane) {
          if (failure) return;
          try {
            await this.handle(ev, orders.get(ev.order_id), batchId);
          } catch (err) {
            failure ??= err;
          }
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.concurrency, queue.length) }, runLanes));
    if (failure) throw failure;
    // Only now: every request of the batch was answered (and reported).
    await this.client.query('SELECT milestones.finish_batch($1)', [batchId]);
    // lag_ms here: from the oldest event's write to the end of its batch.
    const handledMs = Math.round(performance.now() - fetchedAt);
    this.log({ type: 'finished', batch_id: batchId, events: events.length, handled_ms: handledMs, lag_ms: lagMs + handledMs });
    return true;
  }

  // handle sends the requests of one event (and reports the answers).
  async handle(ev, order, batchId) {
    const done = [];
    if (REQUEST_EVENTS[ev.event]) {
      if (this.confirmed) done.push(await this.requestAndReport(requestOf(ev), batchId));
    } else if (this.recorded && ev.order_id !== null) {
      if (!order) throw new Error(`order ${ev.order_id} of event ${ev.event_id} not found`);
      for (const eff of effectsOf({ ...ev, ...order })) {
        const { applied } = await this.send(eff);
        done.push({ kind: eff.kind, amount: eff.amount ?? null, fee: eff.fee ?? null, position: eff.position ?? null, applied });
      }
    }
    this.log({ type: 'event', batch_id: batchId, event_id: ev.event_id, order_id: ev.order_id, event: ev.event,
               position: ev.position, reason: ev.reason, effects: done });
    if (this.eventDelayMs > 0 && !REQUEST_EVENTS[ev.event]) await sleep(this.eventDelayMs);
  }

  // requestAndReport sends one confirmed-mode request and reports the
  // provider's answer; a "processing" answer is reported by its webhook.
  async requestAndReport(req, batchId) {
    const answer = await this.send(req);
    this.log({ type: 'answer', batch_id: batchId, event_id: req.eventId, key: req.key, applied: answer.applied,
               status: answer.status, provider_ref: answer.providerRef });
    if (this.eventDelayMs > 0) await sleep(this.eventDelayMs);
    let reported = null;
    if (answer.status !== 'processing') {
      reported = await this.report(req.kind, req.subjectId, req.attempt, answer);
    }
    return { kind: req.kind, key: req.key, amount: req.amount, applied: answer.applied, status: answer.status,
             provider_ref: answer.providerRef, failure: answer.failure, reported };
  }

  // report tells the database the provider's final answer to a request.
  // Every report is idempotent (a replay returns the same row) - but
  // record_refund reports the refund's current attempt, so the answer to an
  // earlier attempt (a replay after support sent the refund again) or to an
  // attempt already reported is not sent.  Returns the state the database
  // holds, or 'superseded'.
  async report(kind, subjectId, attempt, { status, providerRef, failure }) {
    if (kind === 'refund') {
      const cur = (await this.client.query('SELECT attempt, state FROM milestones.refunds WHERE refund_id = $1', [subjectId])).rows[0];
      if (!cur) throw new Error(`refund ${subjectId} is not in milestones.refunds`);
      if (cur.attempt !== attempt) return 'superseded';
      if (cur.state !== 'requested') return cur.state;
    }
    const outcome = status === 'succeeded' ? 'succeeded' : 'failed';
    const ref = providerRef ?? null;
    const why = outcome === 'failed' ? (failure ?? 'declined') : null;
    const args = kind === 'charge' ? [subjectId, attempt, outcome, ref, why] : [subjectId, outcome, ref, why];
    const row = (await this.client.query(REPORT_SQL[kind], args)).rows[0];
    return row.attempt_state ?? row.state;
  }

  // deliverWebhooks fetches the provider's webhooks (requests that were
  // processing and are final now), reports each and acknowledges it.
  // Returns how many were delivered.
  async deliverWebhooks() {
    if (!this.confirmed || typeof this.provider.webhooks !== 'function') return 0;
    const hooks = await this.provider.webhooks();
    for (const h of hooks) {
      // A request sent in recorded mode has nothing to report.
      const reported = h.subject_id === null ? null : await this.report(h.kind, h.subject_id, h.attempt,
        { status: h.status, providerRef: h.provider_ref, failure: h.failure });
      await this.provider.ackWebhook(h.key);
      this.log({ type: 'webhook', key: h.key, kind: h.kind, status: h.status, provider_ref: h.provider_ref, reported });
    }
    return hooks.length;
  }

  // send passes one request to the provider.
  send(eff) {
    switch (eff.kind) {
      case 'charge': return this.provider.charge(eff);
      case 'refund': return this.provider.refund(eff);
      case 'withdrawal': return this.provider.withdrawal(eff);
      case 'payout': return this.provider.payout(eff);
      case 'stop_work': return this.provider.tellSellerToStop(eff);
      default: throw new Error(`unknown effect ${eff.kind}`);
    }
  }
}
