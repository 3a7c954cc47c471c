// examples/node/test/money.test.js - exact money: decimal strings <-> BigInt cents.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatCents, isAmount, toCents } from '../lib/money.js';

test('decimal strings parse into exact cents', () => {
  assert.equal(toCents('150'), 15000n);
  assert.equal(toCents('150.5'), 15050n);
  assert.equal(toCents('150.05'), 15005n);
  assert.equal(toCents('-12.34'), -1234n);
  assert.equal(toCents('0.10') + toCents('0.20'), toCents('0.30'), '0.1 + 0.2 is 0.3 in cents');
  assert.equal(toCents('90071992547409.93'), 9007199254740993n, 'beyond 2^53 cents, still exact');
});

test('cents print back as strings with 2 decimals', () => {
  assert.equal(formatCents(15000n), '150.00');
  assert.equal(formatCents(5n), '0.05');
  assert.equal(formatCents(-1234n), '-12.34');
  assert.equal(formatCents(toCents('250.5') + toCents('100')), '350.50');
});

test('floats and malformed amounts are refused', () => {
  assert.throws(() => toCents(150.5), TypeError, 'a JS number is never money');
  assert.throws(() => toCents('1.234'), TypeError, 'three decimals');
  assert.throws(() => toCents('1e3'), TypeError);
  assert.throws(() => toCents(''), TypeError);
  assert.throws(() => formatCents(1), TypeError);
  assert.equal(isAmount('10.00'), true);
  assert.equal(isAmount(10), false);
});
