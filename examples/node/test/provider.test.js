// examples/node/test/provider.test.js - the payment-provider stand-in keeps
// a real provider's contracts: a key seen before is answered as the first
// time and not applied again; a key reused for another request is refused;
// a party can be declined or kept processing, and a processing request
// settles later with a webhook delivered until it is acknowledged; the
// settlement report lists the successes.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { PaymentProvider, ProviderError } from '../lib/provider.js';
import { TestDatabase } from './helpers.js';

const db = new TestDatabase('ms_node_provider');
let provider;     // as the payment worker reaches it
let backOffice;   // the provider's own side: how it answers, what settles

before(async () => {
  await db.create();
  provider = new PaymentProvider({ pool: db.pool({ max: 2 }, 'payments') });
  backOffice = new PaymentProvider({ pool: db.admin });
});
after(() => db.drop());

const charge = { key: 'event-1-charge', eventId: 1, orderId: 7, position: 1, partyId: 20, amount: '100.00', currency: 'USD' };
const pick = ({ applied, status }) => ({ applied, status });

test('the first request is applied, a replay is answered only', async () => {
  const first = await provider.charge(charge);
  assert.deepEqual(pick(first), { applied: true, status: 'succeeded' });
  assert.match(first.providerRef, /^ch_\d+$/);
  assert.deepEqual(await provider.charge(charge), { ...first, applied: false }, 'the same answer, not applied');
  assert.equal((await provider.charge({ ...charge, amount: '100' })).applied, false, 'the same amount');
  const rows = (await db.admin.query("SELECT amount, replays FROM payment_provider.requests WHERE idempotency_key = 'event-1-charge'")).rows;
  assert.deepEqual(rows, [{ amount: '100.00', replays: 2 }]);
});

test('a key reused for another request is refused and changes nothing', async () => {
  await assert.rejects(provider.charge({ ...charge, amount: '100.01' }), ProviderError);
  await assert.rejects(provider.refund(charge), ProviderError, 'another kind');
  const rows = (await db.admin.query('SELECT kind, amount, replays FROM payment_provider.requests')).rows;
  assert.deepEqual(rows, [{ kind: 'charge', amount: '100.00', replays: 2 }]);
});

test('payouts carry the fee; stop notices no amount', async () => {
  assert.equal((await provider.payout({ key: 'event-2-payout', eventId: 2, orderId: 7, partyId: 10, amount: '90.00', fee: '10.00', currency: 'USD' })).applied,
    true);
  assert.equal((await provider.tellSellerToStop({ key: 'event-2-stop_work', eventId: 2, orderId: 7, position: 1, partyId: 10 })).applied,
    true);
  const rows = (await db.admin.query("SELECT kind, party, amount, fee FROM payment_provider.requests WHERE event_id = 2 ORDER BY kind")).rows;
  assert.deepEqual(rows, [
    { kind: 'payout', party: 'seller', amount: '90.00', fee: '10.00' },
    { kind: 'stop_work', party: 'seller', amount: null, fee: null },
  ]);
});

// Confirmed mode: requests that name what the database waits for.
const confirmed = (n, partyId, attempt = 1) => ({
  key: `charge-${n}-${attempt}`, eventId: 100 + n, orderId: 50 + n, position: 1, partyId, amount: '150.00',
  currency: 'EUR', subjectId: n, attempt,
});

test('a declined buyer fails until the card is changed; the answer of a key never changes', async () => {
  await backOffice.answer('buyer', 30, 'fail', 'card_declined');
  const declined = await provider.charge(confirmed(1, 30));
  assert.deepEqual([declined.status, declined.failure, declined.applied], ['failed', 'card_declined', true]);
  await backOffice.answer('buyer', 30, null);
  assert.deepEqual(await provider.charge(confirmed(1, 30)), { ...declined, applied: false }, 'a replay: still declined');
  assert.equal((await provider.charge(confirmed(1, 30, 2))).status, 'succeeded', 'the next attempt (a new key) succeeds');
  // A recorded-mode request (no subject) is never declined: the database booked it already.
  await backOffice.answer('buyer', 30, 'fail', 'card_declined');
  assert.equal((await provider.charge({ ...charge, key: 'event-3-charge', eventId: 3, partyId: 30 })).status, 'succeeded');
  await backOffice.answer('buyer', 30, null);
});

test('processing settles later; its webhook is delivered until acknowledged', async () => {
  await backOffice.answer('buyer', 31, 'processing');
  const first = await provider.charge(confirmed(2, 31));
  assert.equal(first.status, 'processing');
  assert.deepEqual(await provider.webhooks(), [], 'no webhook before it settles');
  await assert.rejects(backOffice.settle('charge-404-1', 'succeeded'), ProviderError, 'unknown key');
  const hook = await backOffice.settle('charge-2-1', 'succeeded');
  assert.deepEqual(hook, { key: 'charge-2-1', kind: 'charge', subject_id: '2', attempt: 1, status: 'succeeded',
                           provider_ref: first.providerRef, failure: null });
  await assert.rejects(backOffice.settle('charge-2-1', 'failed'), ProviderError, 'settled once');
  assert.deepEqual(await provider.webhooks(), [hook]);
  assert.deepEqual(await provider.webhooks(), [hook], 'delivered again until acknowledged');
  assert.equal((await provider.charge(confirmed(2, 31))).status, 'succeeded', 'a replay answers the settled state');
  await provider.ackWebhook('charge-2-1');
  assert.deepEqual(await provider.webhooks(), []);
  await backOffice.answer('buyer', 31, null);
});

test('the settlement report lists the successes of charges, refunds and withdrawals', async () => {
  await backOffice.answer('seller', 12, 'fail', 'account_closed');
  assert.equal((await provider.withdrawal({ key: 'withdrawal-1', eventId: 200, partyId: 12, amount: '40.00', currency: 'EUR', subjectId: 1 })).status,
    'failed');
  const w = await provider.withdrawal({ key: 'withdrawal-2', eventId: 201, partyId: 13, amount: '41.00', currency: 'EUR', subjectId: 2 });
  const report = await provider.settlementReport();
  assert.ok(report.every((r) => Object.keys(r).join() === 'provider_ref,kind,amount,currency'));
  assert.deepEqual(report.map((r) => r.kind).sort(), ['charge', 'charge', 'charge', 'charge', 'withdrawal'],
    'no payout or notice, no failure');
  assert.deepEqual(report.at(-1), { provider_ref: w.providerRef, kind: 'withdrawal', amount: '41.00', currency: 'EUR' });
  assert.deepEqual(await provider.settlementReport({ since: new Date(Date.now() + 60000) }), [], 'a later day is empty');
});
