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
-- A default that calls the extension (an events row's cluster id, say)
-- would need its privileges and cost a function call: the floor writes the
-- same value as a constant, evaluated once here.  (Sequence defaults are
-- the floor's own sequences, set above.)
DO $$
DECLARE
    r record;
    v text;
BEGIN
    FOR r IN SELECT c.relname, a.attname, pg_get_expr(d.adbin, d.adrelid) AS expr,
                    format_type(a.atttypid, a.atttypmod) AS typ
               FROM pg_attrdef d
               JOIN pg_class c ON c.oid = d.adrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
              WHERE n.nspname = 'floor' AND pg_get_expr(d.adbin, d.adrelid) LIKE '%milestones.%'
                AND pg_get_expr(d.adbin, d.adrelid) NOT LIKE 'nextval(%'
    LOOP
        EXECUTE format('SELECT (%s)::text', r.expr) INTO v;
        EXECUTE format('ALTER TABLE floor.%I ALTER %I SET DEFAULT %L::%s', r.relname, r.attname, v, r.typ);
    END LOOP;
END
$$;
ALTER SCHEMA floor OWNER TO bench_app;
ALTER TABLE floor.orders OWNER TO bench_app;
ALTER TABLE floor.order_milestones OWNER TO bench_app;
ALTER TABLE floor.ledger_entries OWNER TO bench_app;
ALTER TABLE floor.events OWNER TO bench_app;
ALTER SEQUENCE floor.order_id_seq OWNER TO bench_app;
ALTER SEQUENCE floor.ledger_entry_id_seq OWNER TO bench_app;
ALTER SEQUENCE floor.ledger_txn_id_seq OWNER TO bench_app;
ALTER SEQUENCE floor.event_id_seq OWNER TO bench_app;

-- The CPU measurement (test/bench/run, "CPU per call"): one backend runs N
-- calls of each action in phases and reads its own CPU time before and
-- after each phase.  bench_cpu may call every action (cancel is support's)
-- and write the floor's tables; cpu_ns() is the superuser's, so that
-- bench_cpu can read /proc/self without being one.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bench_cpu') THEN
        CREATE ROLE bench_cpu LOGIN IN ROLE milestones_app, milestones_support, bench_app;
    END IF;
END
$$;
CREATE SCHEMA bench;
GRANT USAGE ON SCHEMA bench TO bench_app, bench_cpu;
-- cpu_ns: CPU time the calling backend has used, in nanoseconds: the
-- first field of /proc/self/schedstat (time on a CPU, exact), or, where
-- the kernel has no schedstat, utime + stime from /proc/self/stat (fields
-- 14 and 15, counted after the ")" that ends the command name) at 100
-- clock ticks per second (getconf CLK_TCK; test/bench/run checks it).
-- SECURITY DEFINER so that the benchmark's login roles may read it;
-- search_path pinned as for any definer function.
CREATE FUNCTION bench.cpu_ns() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    f text[];
BEGIN
    BEGIN
        RETURN split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint;
    EXCEPTION WHEN OTHERS THEN
        f := string_to_array(split_part(pg_read_file('/proc/self/stat'), ') ', 2), ' ');
        RETURN (f[12]::bigint + f[13]::bigint) * 10000000;
    END;
END
$$;
-- cpu_source: where cpu_ns() reads from.
CREATE FUNCTION bench.cpu_source() RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_read_file('/proc/self/schedstat');
    RETURN '/proc/self/schedstat (ns on CPU)';
EXCEPTION WHEN OTHERS THEN
    RETURN '/proc/self/stat utime+stime (10 ms ticks)';
END
$$;
-- micros: the wall clock in microseconds since the epoch.
CREATE FUNCTION bench.micros() RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint
$$;
-- last_order / last_floor_order: the highest order id so far (a phase's
-- orders are the N ids after it: one session, nothing else running).
CREATE FUNCTION bench.last_order() RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT COALESCE(max(order_id), 0) FROM milestones.orders
$$;
CREATE FUNCTION bench.last_floor_order() RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT COALESCE(max(order_id), 0) FROM floor.orders
$$;
-- check_range: the N orders after BASE exist (else the phase ids are off).
CREATE FUNCTION bench.check_range(p_base bigint, p_n integer, p_floor boolean) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_n bigint;
BEGIN
    IF p_floor THEN
        SELECT count(*) INTO v_n FROM floor.orders WHERE order_id > p_base AND order_id <= p_base + p_n;
    ELSE
        SELECT count(*) INTO v_n FROM milestones.orders WHERE order_id > p_base AND order_id <= p_base + p_n;
    END IF;
    IF v_n <> p_n THEN
        RAISE EXCEPTION 'bench: % orders after %, expected %', v_n, p_base, p_n;
    END IF;
END
$$;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA bench TO bench_app, bench_cpu;
