// examples/node/test/provider.test.js - the payment-provider stand-in keeps
// a real provider's idempotency contract: a key seen before is acknowledged
// and not applied again; a key reused for another request is refused.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { PaymentProvider, ProviderError } from '../lib/provider.js';
import { TestDatabase } from './helpers.js';

const db = new TestDatabase('ms_node_provider');
let provider;

before(async () => {
  await db.create();
  provider = new PaymentProvider({ pool: db.pool({ max: 2 }, 'worker') });
});
after(() => db.drop());

const charge = { key: 'event-1-charge', eventId: 1, orderId: 7, position: 1, partyId: 20, amount: '100.00', currency: 'USD' };

test('the first request is applied, a replay is acknowledged only', async () => {
  assert.deepEqual(await provider.charge(charge), { applied: true });
  assert.deepEqual(await provider.charge(charge), { applied: false });
  assert.deepEqual(await provider.charge({ ...charge, amount: '100' }), { applied: false }, 'the same amount');
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
  assert.deepEqual(await provider.payout({ key: 'event-2-payout', eventId: 2, orderId: 7, partyId: 10, amount: '90.00', fee: '10.00', currency: 'USD' }),
    { applied: true });
  assert.deepEqual(await provider.tellSellerToStop({ key: 'event-2-stop_work', eventId: 2, orderId: 7, position: 1, partyId: 10 }),
    { applied: true });
  const rows = (await db.admin.query("SELECT kind, party, amount, fee FROM payment_provider.requests WHERE event_id = 2 ORDER BY kind")).rows;
  assert.deepEqual(rows, [
    { kind: 'payout', party: 'seller', amount: '90.00', fee: '10.00' },
    { kind: 'stop_work', party: 'seller', amount: null, fee: null },
  ]);
});
