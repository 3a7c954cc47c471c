-- test/bench/setup.sql - the benchmark database: the extension, the
-- application role, eligible sellers, and the "floor": plain tables with the
-- same columns and indexes as the extension's, but no CHECK, foreign key,
-- trigger, function or lock.  Run as the superuser.
\set ON_ERROR_STOP on
SET client_min_messages = warning;
CREATE EXTENSION milestones;
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bench_app') THEN
        CREATE ROLE bench_app LOGIN IN ROLE milestones_app;
    END IF;
END
$$;
-- Sellers 1000..1063 (1000 + pgbench's client_id) may offer milestones;
-- buyers are 100000 + client_id.
SELECT count(milestones.set_seller_eligibility(s, true)) AS sellers FROM generate_series(1000, 1063) s \gset
SELECT milestones.set_category_eligibility('bench', true) \gset

-- The floor: same columns and the same indexes (index maintenance is part
-- of writing a row), nothing else.  Own sequences.
CREATE SCHEMA floor;
CREATE SEQUENCE floor.order_id_seq;
CREATE SEQUENCE floor.ledger_entry_id_seq;
CREATE SEQUENCE floor.ledger_txn_id_seq;
CREATE SEQUENCE floor.event_id_seq;
CREATE TABLE floor.orders           (LIKE milestones.orders           INCLUDING DEFAULTS INCLUDING INDEXES);
CREATE TABLE floor.order_milestones (LIKE milestones.order_milestones INCLUDING DEFAULTS INCLUDING INDEXES);
CREATE TABLE floor.ledger_entries   (LIKE milestones.ledger_entries   INCLUDING DEFAULTS INCLUDING INDEXES);
CREATE TABLE floor.events           (LIKE milestones.events           INCLUDING DEFAULTS INCLUDING INDEXES);
-- The events' cluster id default calls an owner-only helper of the
-- extension; the floor writes the same column with a constant.
ALTER TABLE floor.events ALTER COLUMN txid_cluster SET DEFAULT 0;
ALTER TABLE floor.orders         ALTER order_id SET DEFAULT nextval('floor.order_id_seq');
ALTER TABLE floor.ledger_entries ALTER entry_id SET DEFAULT nextval('floor.ledger_entry_id_seq');
ALTER TABLE floor.events         ALTER event_id SET DEFAULT nextval('floor.event_id_seq');
ALTER SCHEMA floor OWNER TO bench_app;
ALTER TABLE floor.orders OWNER TO bench_app;
ALTER TABLE floor.order_milestones OWNER TO bench_app;
ALTER TABLE floor.ledger_entries OWNER TO bench_app;
ALTER TABLE floor.events OWNER TO bench_app;
ALTER SEQUENCE floor.order_id_seq OWNER TO bench_app;
ALTER SEQUENCE floor.ledger_entry_id_seq OWNER TO bench_app;
ALTER SEQUENCE floor.ledger_txn_id_seq OWNER TO bench_app;
ALTER SEQUENCE floor.event_id_seq OWNER TO bench_app;
