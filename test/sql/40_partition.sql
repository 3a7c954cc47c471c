-- test/sql/40_partition.sql - set_partition(k, n) and the order ids of a
-- partition behind PL/Proxy (SPEC section 10, issue 13).
BEGIN;
\ir ../fixtures/setup.psql
-- set_partition works only before the first order.  On a database that
-- already has orders (test/shell/50_upgrade.t runs every suite on an
-- upgraded one), start this suite's transaction from a fresh extension.
SELECT EXISTS (SELECT FROM milestones.orders) AS has_orders \gset
\if :has_orders
DROP EXTENSION milestones CASCADE;
CREATE EXTENSION milestones;
SELECT milestones.set_seller_eligibility(10, true);
SELECT milestones.set_category_eligibility('design', true);
\endif
SELECT plan(47);

-- err(sql): the SQLSTATE, message, DETAIL and HINT a statement raises.
CREATE FUNCTION pg_temp.err(sql text, OUT state text, OUT msg text, OUT detail text, OUT hint text)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                            detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
END
$$;

-- The objects.
SELECT has_function('milestones', 'set_partition', ARRAY['integer', 'integer'], 'set_partition(k, n) exists');
SELECT is((SELECT array_agg(p.parameter_name::text ORDER BY p.ordinal_position)
             FROM information_schema.parameters p
             JOIN information_schema.routines r USING (specific_schema, specific_name)
            WHERE r.routine_schema = 'milestones' AND r.routine_name = 'set_partition'),
          ARRAY['k', 'n'], 'its arguments are k, then n');
SELECT isnt_definer('milestones', 'set_partition', ARRAY['integer', 'integer'], 'set_partition is not SECURITY DEFINER: only the owner may call it');
SELECT has_table('milestones', 'partition_config', 'the partition numbers live in milestones.partition_config');
SELECT ok((SELECT 'milestones.partition_config'::regclass = ANY (extconfig) FROM pg_extension WHERE extname = 'milestones'),
          'partition_config is registered with pg_extension_config_dump, so pg_dump keeps it');
SELECT is((SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d
             JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
            WHERE d.adrelid = 'milestones.orders'::regclass AND a.attname = 'order_id'),
          'milestones._next_order_id()', 'orders.order_id defaults to _next_order_id()');

-- Privileges: the owner's alone.
CREATE ROLE ms_p_app LOGIN IN ROLE milestones_app;
CREATE ROLE ms_p_support LOGIN IN ROLE milestones_support;
CREATE ROLE ms_p_reader LOGIN IN ROLE milestones_reader;
SELECT function_privs_are('milestones', 'set_partition', ARRAY['integer', 'integer'], 'public', '{}'::name[], 'PUBLIC cannot call set_partition');
SELECT function_privs_are('milestones', 'set_partition', ARRAY['integer', 'integer'], r, '{}'::name[], r || ' cannot call set_partition')
  FROM unnest(ARRAY['ms_p_app', 'ms_p_support', 'ms_p_reader']) r;
SELECT function_privs_are('milestones', '_next_order_id', '{}'::name[], r, '{}'::name[], r || ' cannot call _next_order_id')
  FROM unnest(ARRAY['public', 'ms_p_app', 'ms_p_support', 'ms_p_reader']) r;
SELECT table_privs_are('milestones', 'partition_config', r, '{}'::name[], r || ' has no privilege on partition_config')
  FROM unnest(ARRAY['public', 'ms_p_app', 'ms_p_support', 'ms_p_reader']) r;
SET LOCAL ROLE ms_p_support;
SELECT throws_ok('SELECT milestones.set_partition(1, 2)', '42501', NULL, 'support gets 42501 from set_partition');
RESET ROLE;
SET LOCAL ROLE ms_p_app;
SELECT throws_ok('SELECT milestones.set_partition(1, 2)', '42501', NULL, 'the application gets 42501 from set_partition');
RESET ROLE;

-- Bad input: 22023 with DETAIL and HINT, nothing changed.
SELECT throws_ok('SELECT milestones.set_partition(NULL, 4)', '22023', 'k must not be NULL', 'a NULL k is refused');
SELECT throws_ok('SELECT milestones.set_partition(1, NULL)', '22023', 'n must not be NULL', 'a NULL n is refused');
SELECT throws_ok('SELECT milestones.set_partition(0, 3)', '22023', 'n must be a power of two', 'n = 3 is refused');
SELECT throws_ok('SELECT milestones.set_partition(0, 0)', '22023', 'n must be a power of two', 'n = 0 is refused');
SELECT throws_ok('SELECT milestones.set_partition(0, -4)', '22023', 'n must be a power of two', 'a negative n is refused');
SELECT throws_ok('SELECT milestones.set_partition(4, 4)', '22023', 'k must be from 0 to n - 1', 'k = n is refused');
SELECT throws_ok('SELECT milestones.set_partition(-1, 4)', '22023', 'k must be from 0 to n - 1', 'a negative k is refused');
SELECT is((SELECT detail || ' / ' || hint FROM pg_temp.err('SELECT milestones.set_partition(0, 6)')),
          'Got n = 6. / PL/Proxy maps a hash to a partition by masking, so the number of partitions is 1, 2, 4, 8, ...',
          'the refusal of n says what was given and why');
SELECT is((SELECT detail FROM pg_temp.err('SELECT milestones.set_partition(5, 4)')),
          'Got k = 5 for n = 4.', 'the refusal of k says what was given');
SELECT is((SELECT count(*)::int FROM milestones.partition_config), 0, 'refused calls stored nothing');

-- Not partitioned (no row): ids are plain order_id_seq values, as in 1.0.
SAVEPOINT unpartitioned;
SELECT pg_temp.offer3() AS a \gset
SELECT pg_temp.offer3() AS b \gset
SELECT is(:b::bigint, :a::bigint + 1, 'without set_partition ids are consecutive');
SELECT is(:b::bigint, currval('milestones.order_id_seq'), 'and are the values of order_id_seq, as in 1.0');
ROLLBACK TO SAVEPOINT unpartitioned;

-- Partition 2 of 4: every id is 2 modulo 4.
SELECT lives_ok('SELECT milestones.set_partition(2, 4)', 'the owner sets partition 2 of 4 before the first order');
SELECT lives_ok('SELECT milestones.set_partition(1, 4)', 'and may change it while there are no orders');
SELECT lives_ok('SELECT milestones.set_partition(2, 4)', 'back to 2 of 4');
SELECT results_eq('SELECT k, n FROM milestones.partition_config', 'VALUES (2, 4)', 'one row holds k and n');
CREATE TEMP TABLE ids AS SELECT pg_temp.offer3() AS id FROM generate_series(1, 6);
SELECT is((SELECT count(*)::int FROM ids WHERE id % 4 = 2), 6, 'six orders, every id % 4 = 2');
SELECT is((SELECT count(DISTINCT id)::int FROM ids), 6, 'all different');
SELECT is((SELECT max(id) FROM ids), currval('milestones.order_id_seq') * 4 + 2, 'the id is order_id_seq * n + k');
SELECT is((SELECT order_id % 4 FROM milestones.order_status WHERE order_id = (SELECT max(id) FROM ids)), 2::bigint,
          'the orders are real orders, seen in order_status');

-- After the first order: 55000, unless nothing would change.
SELECT lives_ok('SELECT milestones.set_partition(2, 4)', 'the same k and n again is accepted (a set-up script may run twice)');
SELECT throws_ok('SELECT milestones.set_partition(1, 4)', '55000',
                 'set_partition is not allowed: this database already has orders', 'another k after the first order: 55000');
SELECT throws_ok('SELECT milestones.set_partition(2, 8)', '55000', NULL, 'another n after the first order: 55000');
SELECT is((SELECT detail || ' / ' || hint FROM pg_temp.err('SELECT milestones.set_partition(0, 1)')),
          'This database is partition 2 of 4 and holds 6 orders; their ids follow that numbering. / '
          'Set the partition right after CREATE EXTENSION milestones, before the first order; '
          'to change the layout, move whole partition databases to other servers instead.',
          'the 55000 names the current partition and what to do instead');
SELECT results_eq('SELECT k, n FROM milestones.partition_config', 'VALUES (2, 4)', 'the refused calls changed nothing');

-- The partition row cannot hold what set_partition refuses.
SELECT throws_ok('INSERT INTO milestones.partition_config (singleton, k, n) VALUES (false, 0, 1)', '23514', NULL,
                 'partition_config keeps one row');
SELECT throws_ok('UPDATE milestones.partition_config SET n = 3', '23514', NULL, 'a DBA''s UPDATE cannot make n other than a power of two');

SELECT * FROM finish();
ROLLBACK;
