-------------------------------------------------------------------------------
-- Partitions (SPEC section 10): this database as partition k of N.
--
-- With PL/Proxy in front (the milestones_proxy extension), orders are spread
-- over N partition databases, N a power of two.  The proxy routes every
-- order action by its order id, so the id must name its partition:
-- partition k issues only ids with order_id % N = k.  The DBA says which
-- partition this is with set_partition(k, N), once, before the first order.
--
-- (k, N) is kept in a dumped table, not in the sequence's own parameters:
-- pg_dump saves only the value of an extension's sequence, so a restored
-- partition would forget an INCREMENT BY N and start issuing ids of other
-- partitions.  The orders.order_id default reads the table at every insert
-- (one cached primary-key read, see _next_order_id).  Without a row, the
-- database is partition 0 of 1 and ids are exactly those of 1.0.
-------------------------------------------------------------------------------
CREATE TABLE @extschema@.partition_config (
    singleton boolean PRIMARY KEY DEFAULT true
              CONSTRAINT partition_config_one_row CHECK (singleton),
    k         integer NOT NULL,
    n         integer NOT NULL
              CONSTRAINT partition_config_n_power_of_two CHECK (n >= 1 AND (n & (n - 1)) = 0),
    CONSTRAINT partition_config_k_range CHECK (k >= 0 AND k < n)
);
COMMENT ON TABLE @extschema@.partition_config IS
    'This database as partition k of n behind PL/Proxy (set by set_partition): order ids satisfy order_id % n = k. No row: partition 0 of 1.';
COMMENT ON COLUMN @extschema@.partition_config.k IS 'This partition''s number, 0 <= k < n: its position in the proxy''s cluster.';
COMMENT ON COLUMN @extschema@.partition_config.n IS 'How many partitions the cluster has, a power of two.';
-- A restore brings the row back: ids stay partition-correct afterwards.
SELECT pg_catalog.pg_extension_config_dump('@extschema@.partition_config', '');
REVOKE ALL ON TABLE @extschema@.partition_config FROM PUBLIC;

-- _next_order_id: the orders.order_id default, s * n + k where s is the next
-- value of order_id_seq.  With no row (n = 1, k = 0) it is nextval itself,
-- as in 1.0.  PL/pgSQL, so the read of (k, n) is planned once per session;
-- measured at about 4 microseconds per insert over a plain nextval default
-- (one insert per order, in create_offer).  It runs as the inserting role
-- (the API's SECURITY DEFINER functions run as the owner), which needs the
-- sequence as it did with the plain nextval default.
CREATE OR REPLACE FUNCTION @extschema@._next_order_id() RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_k integer;
    v_n integer;
BEGIN
    SELECT c.k, c.n INTO v_k, v_n FROM @extschema@.partition_config c;
    IF v_n IS NULL THEN
        RETURN nextval('@extschema@.order_id_seq'::regclass);
    END IF;
    RETURN nextval('@extschema@.order_id_seq'::regclass) * v_n + v_k;
END
$$;
COMMENT ON FUNCTION @extschema@._next_order_id() IS
    'Default of orders.order_id: the next id of this partition (order_id_seq * n + k; plain nextval when not partitioned).';
REVOKE ALL ON FUNCTION @extschema@._next_order_id() FROM PUBLIC;

ALTER TABLE @extschema@.orders ALTER COLUMN order_id SET DEFAULT @extschema@._next_order_id();

-- set_partition: makes this database partition k of n.  Owner only (no
-- grant): it decides which ids the database issues.  Allowed only before
-- the first order, because the ids already issued would not follow the
-- rule; the same (k, n) again is accepted and changes nothing, so a set-up
-- script can be re-run.
CREATE OR REPLACE FUNCTION @extschema@.set_partition(k integer, n integer) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c @extschema@.partition_config;
BEGIN
    PERFORM @extschema@._not_null(set_partition.k, 'k');
    PERFORM @extschema@._not_null(set_partition.n, 'n');
    IF set_partition.n < 1 OR (set_partition.n & (set_partition.n - 1)) <> 0 THEN
        RAISE EXCEPTION 'n must be a power of two'
            USING ERRCODE = '22023',
                  DETAIL = format('Got n = %s.', set_partition.n),
                  HINT = 'PL/Proxy maps a hash to a partition by masking, so the number of partitions is 1, 2, 4, 8, ...';
    END IF;
    IF set_partition.k < 0 OR set_partition.k >= set_partition.n THEN
        RAISE EXCEPTION 'k must be from 0 to n - 1'
            USING ERRCODE = '22023',
                  DETAIL = format('Got k = %s for n = %s.', set_partition.k, set_partition.n),
                  HINT = 'k is the partition''s position in the proxy''s cluster: p0 is 0, p1 is 1, and so on.';
    END IF;
    -- Block new orders until this transaction ends, then look for any.
    LOCK TABLE @extschema@.orders IN SHARE MODE;
    SELECT * INTO c FROM @extschema@.partition_config;
    IF c.k IS NOT DISTINCT FROM set_partition.k AND COALESCE(c.n, 1) = set_partition.n THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT FROM @extschema@.orders) THEN
        RAISE EXCEPTION 'set_partition is not allowed: this database already has orders'
            USING ERRCODE = '55000',
                  DETAIL = format('This database is partition %s of %s and holds %s orders; their ids follow that numbering.',
                                  COALESCE(c.k, 0), COALESCE(c.n, 1), (SELECT count(*) FROM @extschema@.orders)),
                  HINT = 'Set the partition right after CREATE EXTENSION milestones, before the first order; '
                         'to change the layout, move whole partition databases to other servers instead.';
    END IF;
    INSERT INTO @extschema@.partition_config (k, n) VALUES (set_partition.k, set_partition.n)
    ON CONFLICT ON CONSTRAINT partition_config_pkey DO UPDATE SET k = EXCLUDED.k, n = EXCLUDED.n;
END
$$;
COMMENT ON FUNCTION @extschema@.set_partition(integer, integer) IS
    'Owner: makes this database partition k of n (n a power of two) before its first order; order ids then satisfy order_id % n = k.';
REVOKE ALL ON FUNCTION @extschema@.set_partition(integer, integer) FROM PUBLIC;
