// examples/node/lib/client.js - the application side of milestones.
//
// One method per API function.  Every call that changes an order carries an
// idempotency key, generated once per logical call: when the connection is
// lost before the answer arrives, the client cannot know whether the call
// committed, so it sends the same call again with the SAME key.  The database
// then either runs it (the first attempt never committed) or returns the
// first attempt's result without doing anything again.  Either way the order
// changes once.
//
// Errors come back as MilestonesError, carrying the HTTP status an API would
// answer (SQLSTATE -> status, see HTTP_STATUS) with the server's message,
// DETAIL and HINT.  Money is passed and returned as decimal strings.

import { randomUUID } from 'node:crypto';
import { isAmount } from './money.js';

// HTTP_STATUS maps the SQLSTATEs the API raises (SPEC section 4) to the
// status an HTTP API answers; anything else is a 500.
export const HTTP_STATUS = Object.freeze({
  P0002: 404, // no_data_found: unknown order
  42501: 403, // insufficient_privilege: not this order's buyer/seller, not support
  55000: 409, // object_not_in_prerequisite_state: not allowed in the order's state
  22023: 422, // invalid_parameter_value: bad input, key reused for another call
  '0A000': 403, // feature_not_supported: seller or category not eligible
});

// MilestonesError is what every failed call throws: the server's message,
// DETAIL and HINT kept as they are, plus the SQLSTATE and the HTTP status.
export class MilestonesError extends Error {
  constructor({ status, code, message, detail, hint, cause }) {
    super(message, { cause });
    this.name = 'MilestonesError';
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.hint = hint;
  }

  // toJSON is the HTTP response body.
  toJSON() {
    return { status: this.status, code: this.code, error: this.message, detail: this.detail, hint: this.hint };
  }
}

const NET_ERRORS = new Set(['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'ECONNABORTED', 'ENOTCONN', 'EHOSTUNREACH']);

// isConnectionLost tells whether an error means the connection went away,
// so the call may or may not have committed and must be retried with its
// key: class 08 (connection exception), 57P01..57P03 (the server terminated
// the session or is restarting), socket errors, and node-postgres's own
// "Connection terminated" errors, which carry no code.
export function isConnectionLost(err) {
  if (!err) return false;
  const code = typeof err.code === 'string' ? err.code : '';
  if (code.startsWith('08') || code === '57P01' || code === '57P02' || code === '57P03') return true;
  if (NET_ERRORS.has(code)) return true;
  return /Connection terminated|connection error|not queryable|Connection ended/i.test(err.message ?? '');
}

// toHttpError turns a PostgreSQL error into a MilestonesError.
export function toHttpError(err) {
  if (err instanceof MilestonesError) return err;
  const code = typeof err?.code === 'string' && /^[0-9A-Z]{5}$/.test(err.code) ? err.code : undefined;
  return new MilestonesError({
    status: (code && HTTP_STATUS[code]) ?? 500,
    code,
    message: err?.message ?? String(err),
    detail: err?.detail,
    hint: err?.hint,
    cause: err,
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// id renders an order or user id for a bigint parameter: node-postgres
// returns bigint as a string, and a JS number loses precision above 2^53.
function id(value, name) {
  if (typeof value === 'bigint') return value.toString();
  if (typeof value === 'string' && /^-?\d+$/.test(value)) return value;
  if (Number.isSafeInteger(value)) return String(value);
  if (value === null || value === undefined) return null; // the server answers 22023
  throw new TypeError(`${name} must be an integer id, got ${JSON.stringify(value)}`);
}

export class MilestonesClient {
  // pool: a pg.Pool (or anything with query(text, values)) whose role is
  // granted milestones_app (and milestones_support for cancel and
  // cancel_milestone).  retries: attempts after the first on a lost
  // connection; onRetry({ fn, key, attempt, error }) is told of each.
  constructor({ pool, retries = 5, retryDelayMs = 50, onRetry } = {}) {
    if (!pool) throw new TypeError('MilestonesClient needs a pool');
    this.pool = pool;
    this.retries = retries;
    this.retryDelayMs = retryDelayMs;
    this.onRetry = onRetry;
    // A session the server terminates while it sits idle in the pool makes
    // the pool emit 'error'; without a listener that would end the process.
    // The next query simply gets a new connection.
    if (typeof pool.on === 'function' && typeof pool.listenerCount === 'function' &&
        pool.listenerCount('error') === 0) {
      pool.on('error', () => {});
    }
  }

  // call runs `SELECT * FROM milestones.<fn>(<named args>)`, retrying a lost
  // connection with the same arguments - the same idempotency key included.
  async call(fn, args, { single = false } = {}) {
    const names = Object.keys(args);
    const values = names.map((n) => args[n]);
    // Quoted: "position" is a keyword where a parameter name stands.
    const list = names.map((n, i) => `"${n}" => $${i + 1}`).join(', ');
    const text = single
      ? `SELECT milestones.${fn}(${list}) AS result`
      : `SELECT * FROM milestones.${fn}(${list})`;
    for (let attempt = 0; ; attempt++) {
      try {
        const res = await this.pool.query(text, values);
        return single ? res.rows[0].result : res.rows[0];
      } catch (err) {
        if (isConnectionLost(err) && attempt < this.retries) {
          this.onRetry?.({ fn, key: args.idempotency_key, attempt: attempt + 1, error: err });
          await sleep(this.retryDelayMs * 2 ** attempt);
          continue;
        }
        throw toHttpError(err);
      }
    }
  }

  // key is the idempotency key of one logical call: the caller's, or new.
  static key(opts) {
    return opts?.idempotencyKey ?? randomUUID();
  }

  // createOffer: seller's custom offer; milestones [{ name, days, amount: "150.00" }].
  // Returns the order id (a string: bigint).
  async createOffer({ sellerId, buyerId, category, milestones, revisions = 0, currency = 'USD' }, opts) {
    if (!Array.isArray(milestones)) throw new TypeError('milestones must be an array');
    for (const m of milestones) {
      if (!isAmount(m?.amount)) {
        throw new TypeError(`milestone amount must be a decimal string like "150.00", got ${JSON.stringify(m?.amount)}`);
      }
    }
    return this.call('create_offer', {
      seller_id: id(sellerId, 'sellerId'),
      buyer_id: id(buyerId, 'buyerId'),
      category,
      milestones: JSON.stringify(milestones),
      revisions,
      currency,
      idempotency_key: MilestonesClient.key(opts),
    }, { single: true });
  }

  async withdrawOffer(orderId, sellerId, opts) {
    return this.call('withdraw_offer', {
      order_id: id(orderId, 'orderId'), seller_id: id(sellerId, 'sellerId'), idempotency_key: MilestonesClient.key(opts),
    });
  }

  async declineOffer(orderId, buyerId, opts) {
    return this.call('decline_offer', {
      order_id: id(orderId, 'orderId'), buyer_id: id(buyerId, 'buyerId'), idempotency_key: MilestonesClient.key(opts),
    });
  }

  async placeOrder(orderId, buyerId, opts) {
    return this.call('place_order', {
      order_id: id(orderId, 'orderId'), buyer_id: id(buyerId, 'buyerId'), idempotency_key: MilestonesClient.key(opts),
    });
  }

  async deliver(orderId, sellerId, note = null, opts) {
    return this.call('deliver', {
      order_id: id(orderId, 'orderId'), seller_id: id(sellerId, 'sellerId'), note, idempotency_key: MilestonesClient.key(opts),
    });
  }

  async accept(orderId, buyerId, opts) {
    return this.call('accept', {
      order_id: id(orderId, 'orderId'), buyer_id: id(buyerId, 'buyerId'), idempotency_key: MilestonesClient.key(opts),
    });
  }

  async requestRevision(orderId, buyerId, note = null, opts) {
    return this.call('request_revision', {
      order_id: id(orderId, 'orderId'), buyer_id: id(buyerId, 'buyerId'), note, idempotency_key: MilestonesClient.key(opts),
    });
  }

  async stop(orderId, buyerId, opts) {
    return this.call('stop', {
      order_id: id(orderId, 'orderId'), buyer_id: id(buyerId, 'buyerId'), idempotency_key: MilestonesClient.key(opts),
    });
  }

  // cancel: support only (the pool's role must be granted milestones_support).
  async cancel(orderId, agent, reason, note = null, opts) {
    return this.call('cancel', {
      order_id: id(orderId, 'orderId'), agent, reason, note, idempotency_key: MilestonesClient.key(opts),
    });
  }

  // cancelMilestone: support only; one milestone of an active order.
  async cancelMilestone(orderId, position, agent, reason, note = null, opts) {
    return this.call('cancel_milestone', {
      order_id: id(orderId, 'orderId'), position, agent, reason, note, idempotency_key: MilestonesClient.key(opts),
    });
  }

  // retryCharge: the buyer tries again after the provider declined a
  // charge (confirmed mode): a new attempt, the same pay_by.  Returns the
  // order_status row (charge_attempt, charge_state 'requested').
  async retryCharge(orderId, buyerId, opts) {
    return this.call('retry_charge', {
      order_id: id(orderId, 'orderId'), buyer_id: id(buyerId, 'buyerId'), idempotency_key: MilestonesClient.key(opts),
    });
  }

  // requestWithdrawal: a seller withdraws from the available balance
  // (confirmed mode); the payment worker pays it out.  Returns the
  // withdrawal id (a string: bigint).
  async requestWithdrawal(sellerId, amount, currency = 'USD', opts) {
    if (!isAmount(amount)) throw new TypeError(`amount must be a decimal string like "150.00", got ${JSON.stringify(amount)}`);
    return this.call('request_withdrawal', {
      seller_id: id(sellerId, 'sellerId'), amount, currency, idempotency_key: MilestonesClient.key(opts),
    }, { single: true });
  }

  // sellerBalance: the seller's seller_balances row in one currency
  // (pending, available, withdrawing, withdrawn, next_clears_at, held).
  async sellerBalance(sellerId, currency = 'USD') {
    return this.call('seller_balance', { seller_id: id(sellerId, 'sellerId'), currency });
  }

  // retryRefund: support only; sends a failed refund to the provider again.
  async retryRefund(refundId) {
    return this.call('retry_refund', { refund_id: id(refundId, 'refundId') });
  }

  // reconcile: support or reader; compares the provider's settlement report
  // ([{ provider_ref, kind, amount, currency }]) with what was recorded and
  // returns the differences (none when both sides agree).
  async reconcile(report, { since = null, until = null } = {}) {
    try {
      const res = await this.pool.query('SELECT * FROM milestones.reconcile($1::jsonb, $2, $3)',
        [JSON.stringify(report), since, until]);
      return res.rows;
    } catch (err) {
      throw toHttpError(err);
    }
  }

  // orderStatus reads one order's row from the order_status view (reads
  // change nothing, so no key); an unknown order is a 404 like the API's.
  async orderStatus(orderId) {
    const oid = id(orderId, 'orderId');
    for (let attempt = 0; ; attempt++) {
      try {
        const res = await this.pool.query('SELECT * FROM milestones.order_status WHERE order_id = $1', [oid]);
        if (res.rows.length === 0) {
          throw new MilestonesError({
            status: 404, code: 'P0002', message: `order ${oid} does not exist`,
            detail: `No milestone order has id ${oid}.`,
          });
        }
        return res.rows[0];
      } catch (err) {
        if (isConnectionLost(err) && attempt < this.retries) {
          this.onRetry?.({ fn: 'order_status', attempt: attempt + 1, error: err });
          await sleep(this.retryDelayMs * 2 ** attempt);
          continue;
        }
        throw toHttpError(err);
      }
    }
  }

  // payout: what the order's seller earned so far (gross, fee, net, currency).
  async payout(orderId) {
    return this.call('payout', { order_id: id(orderId, 'orderId') });
  }
}
