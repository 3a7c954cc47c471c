// examples/node/lib/provider.js - a stand-in for the payment provider (and
// for the channel that tells a seller to stop working).
//
// A real provider (a card processor, a payout service) is reached over HTTP
// and deduplicates by an idempotency key: a second request with a key it has
// seen is answered with the first answer and not applied again.  This
// stand-in keeps that contract in a schema of its own, payment_provider,
// that the application (or the test) owns - not in the milestones
// extension - and is always reached through its own connection in
// autocommit, so a request is "sent" whatever the worker's session does
// next, exactly like an HTTP call.  Every request is recorded once; each
// replay only bumps its `replays` counter, which lets the tests prove that
// a replayed batch caused no second effect.
//
// Its answers (SPEC section 11: the worker reports them to the database):
//   succeeded   the money moved; provider_ref names the movement (ch_7, re_8, po_9)
//   failed      declined (a card), closed (a bank account): `failure` says why
//   processing  not final yet (an asynchronous method); settle() makes it
//               final later and queues a webhook, which the worker fetches
//               with webhooks() and acknowledges with ackWebhook()
// How it answers a party is set with answer(): by default every request
// succeeds.  settlementReport() is the day's settlement file: every success
// with its provider_ref, kind, amount and currency (reconcile() reads it).

export const PROVIDER_SCHEMA_SQL = `
CREATE SCHEMA IF NOT EXISTS payment_provider;
CREATE TABLE IF NOT EXISTS payment_provider.requests (
    idempotency_key text PRIMARY KEY,
    request_no      bigserial NOT NULL UNIQUE,
    kind            text NOT NULL CHECK (kind IN ('charge', 'refund', 'payout', 'withdrawal', 'stop_work')),
    event_id        bigint NOT NULL,
    order_id        bigint,          -- NULL for a seller's withdrawal
    position        integer,
    party           text NOT NULL CHECK (party IN ('buyer', 'seller')),
    party_id        bigint NOT NULL,
    amount          numeric(14,2),   -- charge/refund/withdrawal: the amount; payout: net to the seller
    fee             numeric(14,2),   -- payout: the platform's fee
    currency        text,
    subject_id      bigint,          -- confirmed mode: the charge, refund or withdrawal id in milestones
    attempt         integer,         -- confirmed mode: the charge's or refund's attempt
    status          text NOT NULL DEFAULT 'succeeded' CHECK (status IN ('succeeded', 'failed', 'processing')),
    provider_ref    text GENERATED ALWAYS AS (
                        CASE kind WHEN 'charge' THEN 'ch_' WHEN 'refund' THEN 're_' WHEN 'withdrawal' THEN 'po_'
                                  WHEN 'payout' THEN 'tr_' ELSE 'msg_' END || request_no) STORED,
    failure         text,
    received_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    settled_at      timestamptz,     -- when the answer became final
    webhook_pending boolean NOT NULL DEFAULT false,
    replays         integer NOT NULL DEFAULT 0,
    last_replay_at  timestamptz
);
COMMENT ON TABLE payment_provider.requests IS
    'Payment provider stand-in: one row per idempotency key with its answer; replays counts the repeated requests it answered without applying.';
CREATE TABLE IF NOT EXISTS payment_provider.answers (
    party    text NOT NULL CHECK (party IN ('buyer', 'seller')),
    party_id bigint NOT NULL,
    answer   text NOT NULL CHECK (answer IN ('fail', 'processing')),
    failure  text,
    PRIMARY KEY (party, party_id)
);
COMMENT ON TABLE payment_provider.answers IS
    'Payment provider stand-in: parties whose requests fail (a declined card, a closed bank account) or stay processing; every other request succeeds.';
`;

// ProviderError: the provider refused a request (a key reused for another
// request), as a real one answers 409/422.
export class ProviderError extends Error {
  constructor(message, key) {
    super(message);
    this.name = 'ProviderError';
    this.key = key;
  }
}

// A new key of confirmed mode (a subject id: the database waits for the
// answer) takes the party's configured answer; a recorded-mode request
// always succeeds (the database booked it already); a key seen before is
// answered as the first time (whatever the party's answer is now) if the
// request is the same, and refused otherwise.
const REQUEST_SQL = `
INSERT INTO payment_provider.requests AS r
       (idempotency_key, kind, event_id, order_id, position, party, party_id, amount, fee, currency,
        subject_id, attempt, status, failure, settled_at)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
       CASE a.answer WHEN 'fail' THEN 'failed' WHEN 'processing' THEN 'processing' ELSE 'succeeded' END,
       CASE WHEN a.answer = 'fail' THEN COALESCE(a.failure, 'declined') END,
       CASE WHEN a.answer IS DISTINCT FROM 'processing' THEN clock_timestamp() END
  FROM (SELECT 1) AS one
  LEFT JOIN payment_provider.answers a ON a.party = $6 AND a.party_id = $7 AND $11::bigint IS NOT NULL
ON CONFLICT (idempotency_key) DO UPDATE
   SET replays = r.replays + 1, last_replay_at = clock_timestamp()
 WHERE (r.kind, r.event_id, r.order_id, r.party, r.party_id, r.amount, r.fee, r.currency, r.subject_id, r.attempt)
       IS NOT DISTINCT FROM
       (EXCLUDED.kind, EXCLUDED.event_id, EXCLUDED.order_id, EXCLUDED.party, EXCLUDED.party_id,
        EXCLUDED.amount, EXCLUDED.fee, EXCLUDED.currency, EXCLUDED.subject_id, EXCLUDED.attempt)
RETURNING r.replays, r.status, r.provider_ref, r.failure`;

const WEBHOOK_COLUMNS = 'idempotency_key AS key, kind, subject_id, attempt, status, provider_ref, failure';

export class PaymentProvider {
  // pool: a pg.Pool used only for the provider's requests.
  constructor({ pool }) {
    this.pool = pool;
  }

  // setup creates the provider's schema and tables when missing.
  async setup() {
    await this.pool.query(PROVIDER_SCHEMA_SQL);
  }

  // request sends one request; resolves to { applied, status, providerRef,
  // failure } (applied false: a replay of a key already seen, answered as
  // the first time and not applied again).
  async request({ key, kind, eventId, orderId = null, position = null, party, partyId, amount = null, fee = null,
                  currency = null, subjectId = null, attempt = null }) {
    const res = await this.pool.query(REQUEST_SQL,
      [key, kind, String(eventId), orderId == null ? null : String(orderId), position, party, String(partyId),
       amount, fee, currency, subjectId == null ? null : String(subjectId), attempt]);
    if (res.rowCount === 0) {
      throw new ProviderError(`idempotency key ${key} was used for another request`, key);
    }
    const r = res.rows[0];
    return { applied: r.replays === 0, status: r.status, providerRef: r.provider_ref, failure: r.failure };
  }

  charge(r) { return this.request({ ...r, kind: 'charge', party: 'buyer' }); }
  refund(r) { return this.request({ ...r, kind: 'refund', party: 'buyer' }); }
  payout(r) { return this.request({ ...r, kind: 'payout', party: 'seller' }); }
  withdrawal(r) { return this.request({ ...r, kind: 'withdrawal', party: 'seller' }); }
  tellSellerToStop(r) { return this.request({ ...r, kind: 'stop_work', party: 'seller' }); }

  // answer sets how the provider answers a party's new requests: 'fail'
  // (with the failure text, e.g. 'card_declined', 'account_closed'),
  // 'processing', or null to succeed again.
  async answer(party, partyId, answer, failure = null) {
    if (answer === null) {
      await this.pool.query('DELETE FROM payment_provider.answers WHERE party = $1 AND party_id = $2', [party, String(partyId)]);
      return;
    }
    await this.pool.query(`
      INSERT INTO payment_provider.answers (party, party_id, answer, failure) VALUES ($1, $2, $3, $4)
      ON CONFLICT (party, party_id) DO UPDATE SET answer = EXCLUDED.answer, failure = EXCLUDED.failure`,
    [party, String(partyId), answer, failure]);
  }

  // settle makes a processing request final ('succeeded' or 'failed') and
  // queues its webhook.  Resolves to the request's webhook record.
  async settle(key, outcome, failure = null) {
    const res = await this.pool.query(`
      UPDATE payment_provider.requests
         SET status = $2, failure = CASE WHEN $2 = 'failed' THEN COALESCE($3, 'declined') END,
             settled_at = clock_timestamp(), webhook_pending = true
       WHERE idempotency_key = $1 AND status = 'processing'
      RETURNING ${WEBHOOK_COLUMNS}`, [key, outcome, failure]);
    if (res.rowCount === 0) throw new ProviderError(`no request ${key} is processing`, key);
    return res.rows[0];
  }

  // webhooks: the settled requests whose webhook was not acknowledged yet,
  // oldest first (a real provider delivers each until it gets a 2xx).
  async webhooks() {
    return (await this.pool.query(
      `SELECT ${WEBHOOK_COLUMNS} FROM payment_provider.requests WHERE webhook_pending ORDER BY settled_at, request_no`)).rows;
  }

  // ackWebhook: the receiver handled a webhook; it is not delivered again.
  async ackWebhook(key) {
    await this.pool.query('UPDATE payment_provider.requests SET webhook_pending = false WHERE idempotency_key = $1', [key]);
  }

  // settlementReport: the successes settled in [since, until) (all when
  // null), as the provider's daily file lists them; amounts as strings.
  async settlementReport({ since = null, until = null } = {}) {
    return (await this.pool.query(`
      SELECT provider_ref, kind, amount::text AS amount, currency
        FROM payment_provider.requests
       WHERE status = 'succeeded' AND kind IN ('charge', 'refund', 'withdrawal')
         AND ($1::timestamptz IS NULL OR settled_at >= $1) AND ($2::timestamptz IS NULL OR settled_at < $2)
       ORDER BY settled_at, request_no`, [since, until])).rows;
  }
}
