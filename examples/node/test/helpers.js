// examples/node/test/helpers.js - a throwaway database for the node tests.
//
// The runner (test/tools/run-tests) starts the cluster and sets PGHOST,
// PGPORT, PGUSER (a superuser) and PGPASSWORD.  Each test file makes its own
// database with the extension, login roles for the application (milestones_app),
// support (milestones_support), the recorded-mode worker (milestones_app) and
// the payment worker (milestones_payments, nothing else of milestones), and
// the payment provider stand-in's schema, and drops all of it when it ends.

import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { PROVIDER_SCHEMA_SQL } from '../lib/provider.js';

export const OFFER3 = [
  { name: 'Storyboard', days: 3, amount: '100.00' },
  { name: 'Animation', days: 7, amount: '150.00' },
  { name: 'Final cut', days: 5, amount: '250.50' },
];

// TestDatabase: the database, its roles and pools.
export class TestDatabase {
  constructor(prefix) {
    const tag = `${process.pid}_${randomBytes(3).toString('hex')}`;
    this.name = `${prefix}_${tag}`;
    this.roles = {
      app: `${prefix}_app_${tag}`, support: `${prefix}_support_${tag}`, worker: `${prefix}_worker_${tag}`,
      payments: `${prefix}_pay_${tag}`,
    };
    this.password = process.env.PGPASSWORD ?? 'x';
    this.pools = [];
  }

  // create makes the database and roles; seller 10 and category 'design' eligible.
  async create() {
    const admin = new pg.Client({ database: 'postgres' });
    await admin.connect();
    try {
      await admin.query(`CREATE DATABASE ${this.name}`);
      for (const [kind, role] of Object.entries(this.roles)) {
        const group = { support: 'milestones_support', payments: 'milestones_payments' }[kind] ?? 'milestones_app';
        // The extension creates its group roles on first install.
        await admin.query(`CREATE ROLE ${role} LOGIN PASSWORD '${this.password}'`);
        this.grants ??= [];
        this.grants.push([role, group]);
      }
    } finally {
      await admin.end();
    }
    this.admin = this.pool({ max: 3 }, null);
    await this.admin.query('CREATE EXTENSION milestones');
    for (const [role, group] of this.grants) await this.admin.query(`GRANT ${group} TO ${role}`);
    await this.admin.query(`SELECT milestones.set_seller_eligibility(10, true),
                                   milestones.set_seller_eligibility(11, true),
                                   milestones.set_category_eligibility('design', true)`);
    // The provider stand-in's schema belongs to the application, not to the
    // extension; the workers reach it as if over HTTP (lib/provider.js).
    await this.admin.query(PROVIDER_SCHEMA_SQL);
    for (const role of [this.roles.worker, this.roles.payments]) {
      await this.admin.query(`GRANT USAGE ON SCHEMA payment_provider TO ${role};
                              GRANT SELECT, INSERT, UPDATE ON payment_provider.requests TO ${role};
                              GRANT SELECT ON payment_provider.answers TO ${role};
                              GRANT USAGE ON SEQUENCE payment_provider.requests_request_no_seq TO ${role}`);
    }
  }

  // connection: pg.Client options for a role (an in-process worker's).
  connection(role = 'payments') {
    return { database: this.name, user: this.roles[role], password: this.password };
  }

  // hasConsumers tells whether the consumer API (SPEC section 5) is installed.
  async hasConsumers() {
    const r = await this.admin.query(`SELECT to_regprocedure('milestones.next_batch(text, integer)') IS NOT NULL AS ok`);
    return r.rows[0].ok;
  }

  // pool opens a pool on the database as a role (null: the superuser).
  pool(options = {}, role = 'app') {
    const p = new pg.Pool({
      database: this.name,
      ...(role ? { user: this.roles[role], password: this.password } : {}),
      ...options,
    });
    p.on('error', () => {});
    this.pools.push(p);
    return p;
  }

  // env is the libpq environment a child process (the worker) connects with.
  env(role = 'worker') {
    return { ...process.env, PGDATABASE: this.name, PGUSER: this.roles[role], PGPASSWORD: this.password };
  }

  async drop() {
    await Promise.all(this.pools.map((p) => p.end().catch(() => {})));
    const admin = new pg.Client({ database: 'postgres' });
    await admin.connect();
    try {
      await admin.query(`DROP DATABASE IF EXISTS ${this.name} WITH (FORCE)`);
      for (const role of Object.values(this.roles)) await admin.query(`DROP ROLE IF EXISTS ${role}`);
    } finally {
      await admin.end();
    }
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// waitFor polls an async condition until it holds or the time is up.
export async function waitFor(what, cond, timeoutMs = 20000, stepMs = 50) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(stepMs);
  }
}
