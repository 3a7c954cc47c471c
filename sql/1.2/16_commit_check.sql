-------------------------------------------------------------------------------
-- The commit check's list of orders whose money was never checked (issue 19).
--
-- The deferred commit check (src/check.c) checks an order that a
-- transaction only INSERTed without the money rules: pg_restore loads the
-- orders, their milestones and the ledger one table per transaction, so the
-- milestones can arrive before the charges that belong to them.  When the
-- money rules do not hold for such an order yet, the check lists it here
-- instead of failing.  The engine looks the order up when it locks it
-- (src/direct.c), and a listed order gets the full check, with the money,
-- at the commit of its next engine write instead of passing from the
-- facts; a full check with the money that passes lifts the listing.
-- The table is dumped, so a restore keeps what was listed (and a restore
-- lists again what it loads without its ledger).
-------------------------------------------------------------------------------
CREATE TABLE @extschema@.unchecked_orders (
    order_id  bigint PRIMARY KEY,
    listed_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
-- Every engine write looks the order up here, and skips the index when the
-- table has no page: let autovacuum clean it, and so truncate it to no
-- page, as soon as a row was removed, not after 50.
ALTER TABLE @extschema@.unchecked_orders
    SET (autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0);
COMMENT ON TABLE @extschema@.unchecked_orders IS
    'Orders written by INSERT alone whose money rules did not hold yet (a restore in progress, or a hand-made order): their next engine write gets the full commit check. Kept by the commit check; a full check with money that passes removes the row.';
COMMENT ON COLUMN @extschema@.unchecked_orders.order_id IS 'The order (no foreign key: a restore may load this table before the orders).';
COMMENT ON COLUMN @extschema@.unchecked_orders.listed_at IS 'When the commit check listed it.';

-- A restore loads this table's dumped rows after the commit checks of the
-- restored orders may have listed some of them again: keep one row each.
CREATE FUNCTION @extschema@._unchecked_orders_once() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT FROM @extschema@.unchecked_orders u
                WHERE u.order_id OPERATOR(pg_catalog.=) NEW.order_id) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION @extschema@._unchecked_orders_once() IS
    'Trigger: an INSERT of an order that is listed already (from a restore) is skipped.';
REVOKE ALL ON FUNCTION @extschema@._unchecked_orders_once() FROM PUBLIC;
CREATE TRIGGER unchecked_orders_once BEFORE INSERT ON @extschema@.unchecked_orders
    FOR EACH ROW EXECUTE FUNCTION @extschema@._unchecked_orders_once();

-- The owner's alone: the commit check writes it as the owner, and the
-- problems of a listed order are check_invariants()'s to report.
REVOKE ALL ON @extschema@.unchecked_orders FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('@extschema@.unchecked_orders', '');

COMMENT ON FUNCTION @extschema@._check_order() IS
    'Deferred constraint trigger: at commit, checks each touched order: from the writes the guard saw when only the engine wrote it and the guard saw every write, else with _order_problems(); lists in unchecked_orders an order written by INSERT alone whose money does not hold yet.';
