-- test/sql/37_schema_changes.sql - what a DBA's ALTER of the extension's
-- tables does to the engine (issue 19 items 1 and 6, doc/engine-safety.md):
-- a column retyped, renamed or dropped, a NOT NULL dropped and a NULL
-- written, a table or the schema renamed, the settings row removed.  Each
-- is refused with a clear error and its SQLSTATE (never read as something
-- else, never XX000).  test/shell/26_schema_chaos.t does the same for
-- every column of every table, looking for crashes; here are the exact
-- messages.
BEGIN;
\ir ../fixtures/setup.psql
SELECT plan(21);

-- error_of(sql): the error's SQLSTATE, message, DETAIL and HINT.
CREATE FUNCTION pg_temp.error_of(p_sql text) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    st text; m text; d text; h text;
BEGIN
    EXECUTE p_sql;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT;
    RETURN ARRAY[st, m, d, h];
END
$$;

-- Orders: one delivered (milestone 1), one ended with its payout.
SELECT pg_temp.offer3() AS o \gset
SELECT milestones.place_order(:o, 20) \g /dev/null
SELECT milestones.deliver(:o, 10) \g /dev/null
SELECT pg_temp.offer3() AS done \gset
SELECT milestones.place_order(:done, 20) \g /dev/null
SELECT milestones.deliver(:done, 10) \g /dev/null
SELECT milestones.stop(:done, 20) \g /dev/null
-- The commit check of these, now: ALTER TABLE refuses a table with pending
-- trigger events.
SET CONSTRAINTS ALL IMMEDIATE;
SET CONSTRAINTS ALL DEFERRED;

-- 1. A retyped column: refused by name, with the type it must have.  (The
--    issue's crash: payout() and the engine read fee_rate as numeric.)
SAVEPOINT s;
ALTER TABLE milestones.orders ALTER COLUMN fee_rate TYPE real;
SELECT is(pg_temp.error_of(format('SELECT * FROM milestones.payout(%s)', :done)),
          ARRAY['42804', 'column "fee_rate" of table milestones.orders must have type numeric(6,5)',
                'It has type real.  The milestones engine reads the column as numeric(6,5) and never converts it: a conversion could round money or cut an id.',
                'Change it back: ALTER TABLE milestones.orders ALTER COLUMN fee_rate TYPE numeric(6,5) USING fee_rate::numeric(6,5).'],
          'orders.fee_rate retyped to real: payout() refuses it (42804), naming the column, its type and how to restore it');
SELECT throws_ok(format('SELECT milestones.accept(%s, 20)', :o), '42804',
                 'column "fee_rate" of table milestones.orders must have type numeric(6,5)',
                 'accept (the locking statement, after the direct read stepped aside) refuses it too');
SELECT throws_ok(format('SELECT milestones.expire_overdue(%L)', '2031-01-01'), '42804',
                 'column "fee_rate" of table milestones.orders must have type numeric(6,5)',
                 'so does the expiry sweep');
SELECT throws_ok(format($$UPDATE milestones.orders SET cancel_note = 'x' WHERE order_id = %s$$, :o), '42804',
                 'column "fee_rate" of table milestones.orders must have type numeric(6,5)',
                 'and the guard refuses a write it cannot check');
ROLLBACK TO SAVEPOINT s;

SAVEPOINT s;
ALTER TABLE milestones.settings ALTER COLUMN seller_fee_rate TYPE real;
SELECT throws_ok('SELECT pg_temp.offer3()', '42804',
                 'column "seller_fee_rate" of table milestones.settings must have type numeric(6,5)',
                 'settings.seller_fee_rate retyped: create_offer refuses it');
ROLLBACK TO SAVEPOINT s;

SAVEPOINT s;
ALTER TABLE milestones.settings ALTER COLUMN max_milestones TYPE bigint;
SELECT throws_ok('SELECT pg_temp.offer3()', '42804',
                 'column "max_milestones" of table milestones.settings must have type integer',
                 'settings.max_milestones retyped to bigint: refused too (not read as the wrong width)');
ROLLBACK TO SAVEPOINT s;

SAVEPOINT s;
SELECT pg_temp.offer3() AS w \gset
SELECT milestones.withdraw_offer(:w, 10, 'key-37') \g /dev/null
ALTER TABLE milestones.idempotency_keys ALTER COLUMN result TYPE text;
SELECT throws_ok(format($$SELECT milestones.withdraw_offer(%s, 10, 'key-37')$$, :w), '42804',
                 'column "result" of table milestones.idempotency_keys must have type jsonb',
                 'idempotency_keys.result retyped: a retry refuses to read the stored result as jsonb');
ROLLBACK TO SAVEPOINT s;

-- 2. A renamed or dropped column: PostgreSQL's own 42703 from a statement,
--    or the engine's, naming the column, where C reads it by name.
SAVEPOINT s;
ALTER TABLE milestones.order_milestones RENAME COLUMN days TO days_x;
SELECT is((pg_temp.error_of(format($$UPDATE milestones.order_milestones SET delivery_note = 'x' WHERE order_id = %s AND position = 2$$, :o)))[1:2],
          ARRAY['42703', 'column "days" of table milestones.order_milestones does not exist'],
          'the guard needs order_milestones.days (immutable): 42703 naming it, not an internal error');
SELECT is((pg_temp.error_of(format($$UPDATE milestones.order_milestones SET delivery_note = 'x' WHERE order_id = %s AND position = 2$$, :o)))[4],
          'Rename it back (ALTER TABLE milestones.order_milestones RENAME COLUMN ... TO days), or restore the table from a backup.',
          'with a HINT that says how to restore it');
ROLLBACK TO SAVEPOINT s;

SAVEPOINT s;
ALTER TABLE milestones.orders RENAME COLUMN state TO state_x;
SELECT throws_ok(format('SELECT milestones.accept(%s, 20)', :o), '42703', NULL,
                 'orders.state renamed: the locking statement fails with 42703');
ROLLBACK TO SAVEPOINT s;

SAVEPOINT s;
ALTER TABLE milestones.settings DROP COLUMN notify;
SELECT throws_ok('SELECT pg_temp.offer3()', '42703', NULL,
                 'settings.notify dropped: create_offer fails with 42703 (the fallback NOTIFY reads it)');
ROLLBACK TO SAVEPOINT s;

-- 3. A NOT NULL dropped and a NULL written: refused where a value is needed.
SAVEPOINT s;
ALTER TABLE milestones.orders ALTER COLUMN fee_rate DROP NOT NULL;
INSERT INTO milestones.orders (seller_id, buyer_id, category, currency, fee_rate, created_at)
VALUES (10, 20, 'design', 'USD', NULL, now()) RETURNING order_id AS nul \gset
SELECT is(pg_temp.error_of(format('SELECT * FROM milestones.payout(%s)', :nul)),
          ARRAY['22004', 'column "fee_rate" of table milestones.orders holds a NULL',
                'The milestones engine needs a value there; the column''s NOT NULL constraint was dropped.',
                'Set the missing values, then restore the constraint: ALTER TABLE milestones.orders ALTER COLUMN fee_rate SET NOT NULL.'],
          'a NULL fee_rate: payout() refuses it (22004)');
SELECT throws_ok(format('SELECT milestones.place_order(%s, 20)', :nul), '22004',
                 'column "fee_rate" of table milestones.orders holds a NULL',
                 'and so does the engine (the direct read steps aside for a nullable column)');
ROLLBACK TO SAVEPOINT s;

-- 4. A table or the schema renamed under the engine's direct reads.
SAVEPOINT s;
ALTER TABLE milestones.orders RENAME TO orders_x;
SELECT is(pg_temp.error_of(format('SELECT milestones.accept(%s, 20)', :o)),
          ARRAY['42P01', 'table milestones.orders does not exist',
                'The milestones engine reads and writes milestones.orders; it was renamed, moved or dropped.',
                'Rename it back (ALTER TABLE ... RENAME TO orders), or restore the extension''s tables from a backup.'],
          'orders renamed: 42P01 naming the table the engine needs');
ROLLBACK TO SAVEPOINT s;

SAVEPOINT s;
ALTER TABLE milestones.eligible_sellers RENAME TO sellers_x;
SELECT throws_ok('SELECT pg_temp.offer3()', '42P01', 'table milestones.eligible_sellers does not exist',
                 'eligible_sellers renamed: create_offer says which table is missing');
ROLLBACK TO SAVEPOINT s;

SAVEPOINT s;
ALTER SCHEMA milestones RENAME TO ms_moved;
SELECT is(pg_temp.error_of(format('SELECT ms_moved.accept(%s, 20)', :o)),
          ARRAY['3F000', 'schema "milestones" does not exist',
                'The milestones engine keeps its tables in schema milestones; the extension''s schema is now called ms_moved.',
                'The extension cannot be relocated: rename its schema back with ALTER SCHEMA ms_moved RENAME TO milestones.'],
          'the schema renamed: 3F000, with the schema''s new name and the way back');
ROLLBACK TO SAVEPOINT s;

-- 5. The settings row removed behind the guards' back.
SAVEPOINT s;
SET LOCAL session_replication_role = replica;
DELETE FROM milestones.settings;
RESET session_replication_role;
SELECT is((pg_temp.error_of('SELECT pg_temp.offer3()'))[1:3],
          ARRAY['55000', 'milestones.settings must have exactly one row', 'It has 0.'],
          'no settings row: create_offer refuses with 55000, not an internal error');
ROLLBACK TO SAVEPOINT s;

-- 6. Once restored, everything works again (the backend's caches follow).
SAVEPOINT s;
ALTER TABLE milestones.orders ALTER COLUMN fee_rate TYPE real;
SELECT throws_ok(format('SELECT * FROM milestones.payout(%s)', :done), '42804', NULL, 'retyped: refused');
ALTER TABLE milestones.orders ALTER COLUMN fee_rate TYPE numeric(6,5) USING fee_rate::numeric(6,5);
SELECT is((SELECT gross FROM milestones.payout(:done)), 100.00::numeric, 'changed back as the HINT says: payout() works');
SELECT lives_ok(format('SELECT milestones.accept(%s, 20)', :o), 'and so does the engine');
ROLLBACK TO SAVEPOINT s;

SELECT is((SELECT count(*) FROM milestones.check_invariants())::int, 0, 'the books are sound after all of this');

SELECT * FROM finish();
ROLLBACK;
