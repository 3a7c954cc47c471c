// examples/node/lib/provider.js - a stand-in for the payment provider (and
// for the channel that tells a seller to stop working).
//
// A real provider (a card processor, a payout service) is reached over HTTP
// and deduplicates by an idempotency key: a second request with a key it has
// seen is acknowledged with the first answer and not applied again.  This
// stand-in keeps that contract in one table, payment_provider.requests, in
// a schema of its own that the application (or the test) owns - not in the
// milestones extension, and always through its own connection in
// autocommit, so a request is "sent" whatever the worker's session does
// next, exactly like an HTTP call.  Every request is recorded once; each
// replay only bumps its `replays` counter, which lets the tests prove that
// a replayed batch caused no second effect.

export const PROVIDER_SCHEMA_SQL = `
CREATE SCHEMA IF NOT EXISTS payment_provider;
CREATE TABLE IF NOT EXISTS payment_provider.requests (
    idempotency_key text PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('charge', 'refund', 'payout', 'stop_work')),
    event_id        bigint NOT NULL,
    order_id        bigint NOT NULL,
    position        integer,
    party           text NOT NULL CHECK (party IN ('buyer', 'seller')),
    party_id        bigint NOT NULL,
    amount          numeric(14,2),   -- charge/refund: the amount; payout: net to the seller
    fee             numeric(14,2),   -- payout: the platform's fee
    currency        text,
    received_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    replays         integer NOT NULL DEFAULT 0,
    last_replay_at  timestamptz
);
COMMENT ON TABLE payment_provider.requests IS
    'Payment provider stand-in: one row per idempotency key; replays counts the repeated requests it acknowledged without applying.';
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

const REQUEST_SQL = `
INSERT INTO payment_provider.requests AS r
       (idempotency_key, kind, event_id, order_id, position, party, party_id, amount, fee, currency)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (idempotency_key) DO UPDATE
   SET replays = r.replays + 1, last_replay_at = clock_timestamp()
 WHERE (r.kind, r.event_id, r.order_id, r.party, r.party_id, r.amount, r.fee, r.currency)
       IS NOT DISTINCT FROM
       (EXCLUDED.kind, EXCLUDED.event_id, EXCLUDED.order_id, EXCLUDED.party, EXCLUDED.party_id,
        EXCLUDED.amount, EXCLUDED.fee, EXCLUDED.currency)
RETURNING r.replays`;

export class PaymentProvider {
  // pool: a pg.Pool used only for the provider's requests.
  constructor({ pool }) {
    this.pool = pool;
  }

  // setup creates the provider's schema and table when missing.
  async setup() {
    await this.pool.query(PROVIDER_SCHEMA_SQL);
  }

  // request sends one request; resolves to { applied } (false: a replay of
  // a key already seen, acknowledged and not applied again).
  async request({ key, kind, eventId, orderId, position = null, party, partyId, amount = null, fee = null, currency = null }) {
    const res = await this.pool.query(REQUEST_SQL,
      [key, kind, String(eventId), String(orderId), position, party, String(partyId), amount, fee, currency]);
    if (res.rowCount === 0) {
      throw new ProviderError(`idempotency key ${key} was used for another request`, key);
    }
    return { applied: res.rows[0].replays === 0 };
  }

  charge(r) { return this.request({ ...r, kind: 'charge', party: 'buyer' }); }
  refund(r) { return this.request({ ...r, kind: 'refund', party: 'buyer' }); }
  payout(r) { return this.request({ ...r, kind: 'payout', party: 'seller' }); }
  tellSellerToStop(r) { return this.request({ ...r, kind: 'stop_work', party: 'seller' }); }
}
