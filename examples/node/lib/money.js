// examples/node/lib/money.js - exact money for the milestones client and worker.
//
// PostgreSQL's numeric arrives from node-postgres as a string ("150.00"), and
// that is how money stays here: parsed into integer cents as a BigInt, summed
// as BigInt, printed back as a string.  A JavaScript number is a binary float
// (0.1 + 0.2 !== 0.3), so no amount ever becomes one.

const AMOUNT = /^(-?)(\d+)(?:\.(\d{1,2}))?$/;

// toCents parses a decimal string ("150", "150.5", "-12.34") into BigInt cents.
// Anything else - a JS number included - is refused: a float here is a bug.
export function toCents(amount) {
  if (typeof amount !== 'string') {
    throw new TypeError(`money must be a decimal string, got ${typeof amount} ${String(amount)}`);
  }
  const m = AMOUNT.exec(amount.trim());
  if (!m) throw new TypeError(`not an amount with at most 2 decimals: ${JSON.stringify(amount)}`);
  const cents = BigInt(m[2]) * 100n + BigInt((m[3] ?? '').padEnd(2, '0'));
  return m[1] === '-' ? -cents : cents;
}

// formatCents prints BigInt cents as a decimal string with 2 decimals.
export function formatCents(cents) {
  if (typeof cents !== 'bigint') throw new TypeError('cents must be a BigInt');
  const sign = cents < 0n ? '-' : '';
  const abs = cents < 0n ? -cents : cents;
  return `${sign}${abs / 100n}.${String(abs % 100n).padStart(2, '0')}`;
}

// isAmount tells whether a value is a decimal string with at most 2 decimals.
export function isAmount(value) {
  return typeof value === 'string' && AMOUNT.test(value.trim());
}
