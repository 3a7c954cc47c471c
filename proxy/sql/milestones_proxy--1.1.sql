/* proxy/sql/milestones_proxy--1.1.sql - install script of milestones_proxy 1.1 */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION milestones_proxy CASCADE" to load this file. \quit

-------------------------------------------------------------------------------
-- milestones_proxy: the milestones API on a proxy database, in front of N
-- partition databases that each run the milestones extension (SPEC
-- section 10).  Every function here has the name, arguments, defaults,
-- result type and privileges of its milestones 1.1 counterpart, and is a
-- PL/Proxy function that runs that counterpart on the right partition of
-- the cluster 'milestones_cluster' (a SQL/MED server the DBA creates):
--
--   create_offer                 RUN ON hashint8(seller_id)
--   every order action, order_status(order_id), payout(order_id)
--                                RUN ON order_id: partition order_id % N
--   set_setting, eligibility, reasons, check_invariants, the order_status
--                                view: RUN ON ALL
--
-- PL/Proxy connects to the partitions as the calling role (its USER
-- MAPPING), so each partition checks the caller's privileges again.
-- Its model holds: each call commits on its partition by itself.  Per
-- partition only: LISTEN, consumers, relay_status(), expire_overdue and its
-- scheduling, the milestones.fake_now clock, and the other views.
--
-- Version 1.1, like the partition API it fronts: milestones_proxy 1.1
-- speaks to milestones 1.1 partitions.
-------------------------------------------------------------------------------

-------------------------------------------------------------------------------
-- Roles: the three roles of the milestones extension, created when
-- missing, with the same grants below.
-------------------------------------------------------------------------------
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'milestones_app') THEN
        CREATE ROLE milestones_app NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'milestones_support') THEN
        CREATE ROLE milestones_support NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'milestones_reader') THEN
        CREATE ROLE milestones_reader NOLOGIN;
    END IF;
END
$roles$;

REVOKE ALL ON SCHEMA @extschema@ FROM PUBLIC;
GRANT USAGE ON SCHEMA @extschema@ TO milestones_app, milestones_support, milestones_reader;

-------------------------------------------------------------------------------
-- Routing.  PL/Proxy runs the RUN ON function here, on the proxy, before it
-- connects to any partition, and maps its int4 result to partition
-- (hash & (N - 1)).  So these two functions are where a NULL routing
-- argument is refused with the partitions' own 22023, and nothing else can
-- call a partition with it: the API functions are the only way in.
-------------------------------------------------------------------------------

-- _order_partition: the hash of an order id is its low 31 bits, so
-- PL/Proxy's masking gives order_id % N, the partition that issued the id
-- (set_partition on the partition side).  A non-positive id goes to some
-- partition, which refuses it with 22023 like a single database would.
CREATE FUNCTION @extschema@._order_partition(order_id bigint) RETURNS integer
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF order_id IS NULL THEN
        RAISE EXCEPTION 'order_id must not be NULL'
            USING ERRCODE = '22023',
                  DETAIL = 'The argument order_id was NULL.',
                  HINT = 'Pass a value; the milestones API never treats NULL as "nothing to do".';
    END IF;
    RETURN (order_id & 2147483647)::integer;
END
$$;
COMMENT ON FUNCTION @extschema@._order_partition(bigint) IS
    'PL/Proxy routing: the hash of an order id (its low 31 bits, so the partition is order_id % N); 22023 for NULL.';

-- _seller_partition: a new offer goes to the partition of its seller,
-- PL/Proxy's usual hashint8, so a seller's offers (and a retry with the
-- same idempotency key) land on one partition.
CREATE FUNCTION @extschema@._seller_partition(seller_id bigint) RETURNS integer
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF seller_id IS NULL THEN
        RAISE EXCEPTION 'seller_id must not be NULL'
            USING ERRCODE = '22023',
                  DETAIL = 'The argument seller_id was NULL.',
                  HINT = 'Pass a value; the milestones API never treats NULL as "nothing to do".';
    END IF;
    RETURN hashint8(seller_id);
END
$$;
COMMENT ON FUNCTION @extschema@._seller_partition(bigint) IS
    'PL/Proxy routing: hashint8(seller_id), the partition of a new offer; 22023 for NULL.';

-------------------------------------------------------------------------------
-- order_status: all partitions' rows, for DBAs.  The view has the columns
-- and types of the partitions' view; its row type is what every action
-- returns.  It reads every partition: an application that knows the id
-- calls order_status(order_id), which asks one.
-------------------------------------------------------------------------------
CREATE FUNCTION @extschema@._order_status_all()
RETURNS TABLE (order_id bigint, seller_id bigint, buyer_id bigint, category text, currency text,
               state text, reason text, created_at timestamptz, placed_at timestamptz,
               completed_at timestamptz, milestone_count integer, current_milestone integer,
               milestone_state text, due_at timestamptz, respond_by timestamptz, revisions_left integer,
               total numeric, charged numeric, paid_out numeric, refunded numeric, fee numeric,
               net numeric, revisions_used integer, milestone_name text, final_milestone boolean)
LANGUAGE plproxy AS $$
    CLUSTER 'milestones_cluster';
    RUN ON ALL;
    SELECT s.order_id, s.seller_id, s.buyer_id, s.category, s.currency, s.state, s.reason,
           s.created_at, s.placed_at, s.completed_at, s.milestone_count, s.current_milestone,
           s.milestone_state, s.due_at, s.respond_by, s.revisions_left, s.total, s.charged,
           s.paid_out, s.refunded, s.fee, s.net, s.revisions_used, s.milestone_name, s.final_milestone
      FROM milestones.order_status s;
$$;
COMMENT ON FUNCTION @extschema@._order_status_all() IS
    'PL/Proxy: the order_status rows of every partition (behind the order_status view).';

CREATE VIEW @extschema@.order_status AS
SELECT a.order_id, a.seller_id, a.buyer_id, a.category, a.currency, a.state, a.reason,
       a.created_at, a.placed_at, a.completed_at, a.milestone_count, a.current_milestone,
       a.milestone_state, a.due_at, a.respond_by, a.revisions_left,
       a.total::numeric(14,2) AS total, a.charged::numeric(14,2) AS charged,
       a.paid_out::numeric(14,2) AS paid_out, a.refunded::numeric(14,2) AS refunded,
       a.fee::numeric(14,2) AS fee, a.net::numeric(14,2) AS net,
       a.revisions_used, a.milestone_name, a.final_milestone
  FROM @extschema@._order_status_all() a;
COMMENT ON VIEW @extschema@.order_status IS
    'One row per order of every partition (merged by PL/Proxy; each query reads all partitions). Every action function returns this row.';

-- The settings row type, for set_setting's result (the proxy has no
-- settings of its own: each partition has its row).
CREATE TYPE @extschema@.settings AS (
    singleton        boolean,
    min_order_total  numeric(12,2),
    max_milestones   integer,
    response_window  interval,
    seller_fee_rate  numeric(6,5),
    idempotency_ttl  interval,
    expiry_batch     integer,
    notify           boolean
);
COMMENT ON TYPE @extschema@.settings IS
    'The row type of the partitions'' milestones.settings, returned by set_setting.';

-------------------------------------------------------------------------------
-- The API: one partition per call.
-------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.create_offer(seller_id bigint, buyer_id bigint, category text, milestones jsonb,
                                          revisions integer DEFAULT 0, currency text DEFAULT 'USD',
                                          idempotency_key text DEFAULT NULL)
RETURNS bigint LANGUAGE plproxy AS $$
    CLUSTER 'milestones_cluster';
    RUN ON milestones._seller_partition(seller_id);
$$;
COMMENT ON FUNCTION @extschema@.create_offer(bigint, bigint, text, jsonb, integer, text, text) IS
    'Seller: a custom offer with milestones, made on the seller''s partition (hashint8(seller_id)); returns the order id, which names that partition.';

CREATE FUNCTION @extschema@.withdraw_offer(order_id bigint, seller_id bigint, idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status LANGUAGE plproxy AS $$
    CLUSTER 'milestones_cluster';
    RUN ON milestones._order_partition(order_id);
$$;
COMMENT ON FUNCTION @extschema@.withdraw_offer(bigint, bigint, text) IS
    'Seller: withdraws an offer that was not placed (on the order''s partition).';

CREATE FUNCTION @extschema@.decline_offer(order_id bigint, buyer_id bigint, idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status LANGUAGE plproxy AS $$
    CLUSTER 'milestones_cluster';
    RUN ON milestones._order_partition(order_id);
$$;
COMMENT ON FUNCTION @extschema@.decline_offer(bigint, bigint, text) IS
    'Buyer: declines an offer (on the order''s partition).';

CREATE FUNCTION @extschema@.place_order(order_id bigint, buyer_id bigint, idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status LANGUAGE plproxy AS $$
    CLUSTER 'milestones_cluster';
    RUN ON milestones._order_partition(order_id);
$$;
COMMENT ON FUNCTION @extschema@.place_order(bigint, bigint, text) IS
    'Buyer: places the order; milestone 1 is charged and starts (on the order''s partition).';

CREATE FUNCTION @extschema@.deliver(order_id bigint, seller_id bigint, note text DEFAULT NULL,
                                     idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status LANGUAGE plproxy AS $$
    CLUSTER 'milestones_cluster';
    RUN ON milestones._order_partition(order_id);
$$;
COMMENT ON FUNCTION @extschema@.deliver(bigint, bigint, text, text) IS
    'Seller: delivers the milestone in progress; the buyer''s response window opens (on the order''s partition).';

CREATE FUNCTION @extschema@.accept(order_id bigint, buyer_id bigint, idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status LANGUAGE plproxy AS $$
    CLUSTER 'milestones_cluster';
    RUN ON milestones._order_partition(order_id);
$$;
COMMENT ON FUNCTION @extschema@.accept(bigint, bigint, text) IS
    'Buyer: accepts the delivered milestone; the next is charged and starts, or the order finishes (on the order''s partition).';

CREATE FUNCTION @extschema@.request_revision(order_id bigint, buyer_id bigint, note text DEFAULT NULL,
                                              idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status LANGUAGE plproxy AS $$
    CLUSTER 'milestones_cluster';
    RUN ON milestones._order_partition(order_id);
$$;
COMMENT ON FUNCTION @extschema@.request_revision(bigint, bigint, text, text) IS
    'Buyer: sends the delivered milestone back, using one revision (on the order''s partition).';

CREATE FUNCTION @extschema@.stop(order_id bigint, buyer_id bigint, idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status LANGUAGE plproxy AS $$
    CLUSTER 'milestones_cluster';
    RUN ON milestones._order_partition(order_id);
$$;
COMMENT ON FUNCTION @extschema@.stop(bigint, bigint, text) IS
    'Buyer: stops the order after a delivery; the delivered milestone is paid (on the order''s partition).';

CREATE FUNCTION @extschema@.cancel(order_id bigint, agent text, reason text, note text DEFAULT NULL,
                                    idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status LANGUAGE plproxy AS $$
    CLUSTER 'milestones_cluster';
    RUN ON milestones._order_partition(order_id);
$$;
COMMENT ON FUNCTION @extschema@.cancel(bigint, text, text, text, text) IS
    'Support: cancels an offered or active order for a listed reason (on the order''s partition).';

CREATE FUNCTION @extschema@.cancel_milestone(order_id bigint, "position" integer, agent text, reason text,
                                              note text DEFAULT NULL, idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status LANGUAGE plproxy AS $$
    CLUSTER 'milestones_cluster';
    RUN ON milestones._order_partition(order_id);
$$;
COMMENT ON FUNCTION @extschema@.cancel_milestone(bigint, integer, text, text, text, text) IS
    'Support: cancels one milestone of an active order for a listed reason (on the order''s partition).';

CREATE FUNCTION @extschema@.order_status(order_id bigint)
RETURNS @extschema@.order_status LANGUAGE plproxy AS $$
    CLUSTER 'milestones_cluster';
    RUN ON milestones._order_partition(order_id);
$$;
COMMENT ON FUNCTION @extschema@.order_status(bigint) IS
    'The order_status row of one order, read on its partition; P0002 when it does not exist.';

CREATE FUNCTION @extschema@.payout(order_id bigint,
                                   OUT gross numeric, OUT fee numeric, OUT net numeric, OUT currency text)
LANGUAGE plproxy AS $$
    CLUSTER 'milestones_cluster';
    RUN ON milestones._order_partition(order_id);
$$;
COMMENT ON FUNCTION @extschema@.payout(bigint) IS
    'What the seller earns from the order''s completed milestones (gross, fee, net, currency), computed on its partition.';

-------------------------------------------------------------------------------
-- Reports over every partition.
-------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.check_invariants() RETURNS TABLE (order_id bigint, problem text)
LANGUAGE plproxy AS $$
    CLUSTER 'milestones_cluster';
    RUN ON ALL;
$$;
COMMENT ON FUNCTION @extschema@.check_invariants() IS
    'DBA/support: every violated invariant of every partition as (order_id, problem); no rows when all are sound.';

-------------------------------------------------------------------------------
-- Configuration, on every partition.  PL/Proxy sends a RUN ON ALL call to
-- the partitions in parallel and each commits by itself: when one fails
-- (down, or refusing), the others have changed.  check_cluster() finds the
-- drift; repeating the call fixes it (each of these is idempotent).
-- Each API function is a PL/pgSQL wrapper with the API's result over a
-- RUN ON ALL function, which returns one row per partition.
-------------------------------------------------------------------------------
CREATE FUNCTION @extschema@._set_setting_all(name text, value text) RETURNS SETOF @extschema@.settings
LANGUAGE plproxy AS $$
    CLUSTER 'milestones_cluster';
    RUN ON ALL;
    TARGET milestones.set_setting;
$$;
COMMENT ON FUNCTION @extschema@._set_setting_all(text, text) IS
    'PL/Proxy: set_setting on every partition; one settings row per partition.';

-- set_setting: owner only, as on the partitions (no grant; the owner's
-- user mapping logs in as the partitions' owner).  Returns the settings
-- row; warns if the partitions' rows differ after the change.
CREATE FUNCTION @extschema@.set_setting(name text, value text) RETURNS @extschema@.settings
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_rows @extschema@.settings[];
BEGIN
    v_rows := ARRAY(SELECT x FROM @extschema@._set_setting_all(set_setting.name, set_setting.value) x);
    IF EXISTS (SELECT FROM unnest(v_rows) u WHERE u IS DISTINCT FROM v_rows[1]) THEN
        RAISE WARNING 'the partitions'' settings differ'
            USING DETAIL = format('After setting %s, the partitions hold %s different settings rows.',
                                  set_setting.name, (SELECT count(DISTINCT u::text) FROM unnest(v_rows) u)),
                  HINT = 'SELECT * FROM milestones.check_cluster() lists the differences.';
    END IF;
    RETURN v_rows[1];
END
$$;
COMMENT ON FUNCTION @extschema@.set_setting(text, text) IS
    'Owner: changes one setting on every partition (not atomically across them: see check_cluster); returns the settings row.';

CREATE FUNCTION @extschema@._set_seller_eligibility_all(seller_id bigint, eligible boolean) RETURNS SETOF void
LANGUAGE plproxy AS $$
    CLUSTER 'milestones_cluster';
    RUN ON ALL;
    TARGET milestones.set_seller_eligibility;
$$;
COMMENT ON FUNCTION @extschema@._set_seller_eligibility_all(bigint, boolean) IS
    'PL/Proxy: set_seller_eligibility on every partition.';
CREATE FUNCTION @extschema@.set_seller_eligibility(seller_id bigint, eligible boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@._set_seller_eligibility_all(set_seller_eligibility.seller_id, set_seller_eligibility.eligible);
END
$$;
COMMENT ON FUNCTION @extschema@.set_seller_eligibility(bigint, boolean) IS
    'Support: allows or stops a seller offering milestone orders, on every partition.';

CREATE FUNCTION @extschema@._set_category_eligibility_all(category text, eligible boolean) RETURNS SETOF void
LANGUAGE plproxy AS $$
    CLUSTER 'milestones_cluster';
    RUN ON ALL;
    TARGET milestones.set_category_eligibility;
$$;
COMMENT ON FUNCTION @extschema@._set_category_eligibility_all(text, boolean) IS
    'PL/Proxy: set_category_eligibility on every partition.';
CREATE FUNCTION @extschema@.set_category_eligibility(category text, eligible boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@._set_category_eligibility_all(set_category_eligibility.category, set_category_eligibility.eligible);
END
$$;
COMMENT ON FUNCTION @extschema@.set_category_eligibility(text, boolean) IS
    'Support: opens or closes a category for milestone orders, on every partition.';

CREATE FUNCTION @extschema@._set_cancellation_reason_all(code text, description text, active boolean) RETURNS SETOF void
LANGUAGE plproxy AS $$
    CLUSTER 'milestones_cluster';
    RUN ON ALL;
    TARGET milestones.set_cancellation_reason;
$$;
COMMENT ON FUNCTION @extschema@._set_cancellation_reason_all(text, text, boolean) IS
    'PL/Proxy: set_cancellation_reason on every partition.';
CREATE FUNCTION @extschema@.set_cancellation_reason(code text, description text, active boolean DEFAULT true) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@._set_cancellation_reason_all(set_cancellation_reason.code, set_cancellation_reason.description,
                                                     set_cancellation_reason.active);
END
$$;
COMMENT ON FUNCTION @extschema@.set_cancellation_reason(text, text, boolean) IS
    'Support: adds or edits a cancellation reason on every partition; active = false retires it.';

-------------------------------------------------------------------------------
-- check_cluster: one row per difference between the partitions.
-------------------------------------------------------------------------------

-- _cluster_items: what must agree, as (item, value) rows, read on one
-- partition (RUN ON the partition's number: p & (N - 1) = p).  Sellers and
-- categories are listed when eligible (a missing one is not eligible).
CREATE FUNCTION @extschema@._cluster_items(p_partition integer) RETURNS TABLE (item text, value text)
LANGUAGE plproxy AS $$
    CLUSTER 'milestones_cluster';
    RUN ON p_partition;
    SELECT i.item, i.value FROM (
        SELECT 'setting ' || j.key AS item, j.value AS value
          FROM milestones.settings x, pg_catalog.jsonb_each_text(pg_catalog.to_jsonb(x) - 'singleton') j
        UNION ALL
        SELECT 'seller ' || e.seller_id, 'eligible' FROM milestones.eligible_sellers e WHERE e.eligible
        UNION ALL
        SELECT 'category ' || c.category, 'eligible' FROM milestones.eligible_categories c WHERE c.eligible
        UNION ALL
        SELECT 'reason ' || r.code, CASE WHEN r.active THEN 'active' ELSE 'retired' END || ': ' || r.description
          FROM milestones.cancellation_reasons r
        UNION ALL
        SELECT 'extension milestones', e.extversion FROM pg_catalog.pg_extension e WHERE e.extname = 'milestones'
        UNION ALL
        SELECT 'partition', COALESCE((SELECT c.k || ' of ' || c.n FROM milestones.partition_config c), '0 of 1')
    ) i;
$$;
COMMENT ON FUNCTION @extschema@._cluster_items(integer) IS
    'PL/Proxy: the settings, eligible sellers and categories, reasons, extension version and partition numbers of one partition.';

-- check_cluster: owner only (it reads the partitions' settings, which only
-- their owner may read).  Compares every partition with the others: for
-- each item, the value most partitions hold (ties: the lowest partition's)
-- is expected, and each partition holding another value (or none) is one
-- row.  A partition's numbers must be its position: partition p of N.  A
-- partition that cannot be read is one row with the error.
CREATE FUNCTION @extschema@.check_cluster()
RETURNS TABLE (partition integer, item text, value text, expected text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_n integer;
    v_p integer;
    v_items text[] := '{}';
    v_values text[] := '{}';
    v_parts integer[] := '{}';
    v_bad integer[] := '{}';
    v_errors text[] := '{}';
    v_message text;
BEGIN
    SELECT count(*) INTO v_n
      FROM pg_catalog.pg_foreign_server s, unnest(s.srvoptions) o
     WHERE s.srvname = 'milestones_cluster' AND o ~ '^p[0-9]+=';
    IF v_n = 0 THEN
        RAISE EXCEPTION 'the cluster milestones_cluster has no partitions'
            USING ERRCODE = '55000',
                  DETAIL = 'There is no foreign server milestones_cluster with options p0, p1, ...',
                  HINT = 'CREATE SERVER milestones_cluster FOREIGN DATA WRAPPER plproxy OPTIONS (p0 ''host=... dbname=...'', ...).';
    END IF;
    FOR v_p IN 0 .. v_n - 1 LOOP
        BEGIN
            SELECT v_items || array_agg(c.item), v_values || array_agg(c.value),
                   v_parts || array_agg(v_p)
              INTO v_items, v_values, v_parts
              FROM @extschema@._cluster_items(v_p) c;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT;
            v_bad := v_bad || v_p;
            v_errors := v_errors || v_message;
        END;
    END LOOP;

    RETURN QUERY
    WITH raw AS (
        SELECT u.p, u.item, u.value FROM unnest(v_parts, v_items, v_values) AS u(p, item, value)
    ), parts AS (
        SELECT g.p FROM generate_series(0, v_n - 1) g(p) WHERE g.p <> ALL (v_bad)
    ), items AS (
        SELECT DISTINCT r.item FROM raw r WHERE r.item <> 'partition'
    ), grid AS (
        SELECT x.p, i.item, r.value
          FROM parts x CROSS JOIN items i
          LEFT JOIN raw r ON r.p = x.p AND r.item = i.item
    ), votes AS (
        SELECT g.item, g.value, count(*) AS n, min(g.p) AS first FROM grid g GROUP BY g.item, g.value
    ), wanted AS (
        SELECT DISTINCT ON (v.item) v.item, v.value FROM votes v ORDER BY v.item, v.n DESC, v.first
    )
    SELECT q.p, q.item, q.value, q.expected FROM (
        SELECT g.p, g.item,
               COALESCE(g.value, CASE WHEN g.item ~ '^(seller|category) ' THEN 'not eligible' ELSE 'missing' END) AS value,
               COALESCE(w.value, CASE WHEN g.item ~ '^(seller|category) ' THEN 'not eligible' ELSE 'missing' END) AS expected
          FROM grid g JOIN wanted w ON w.item = g.item
         WHERE g.value IS DISTINCT FROM w.value
        UNION ALL
        SELECT r.p, r.item, r.value, r.p || ' of ' || v_n
          FROM raw r WHERE r.item = 'partition' AND r.value <> r.p || ' of ' || v_n
        UNION ALL
        SELECT b.p, 'error', b.message, 'a readable milestones 1.1 partition'
          FROM unnest(v_bad, v_errors) AS b(p, message)
    ) q
    ORDER BY q.p, q.item;
END
$$;
COMMENT ON FUNCTION @extschema@.check_cluster() IS
    'Owner: one row per difference between the partitions (settings, eligible sellers and categories, cancellation reasons, extension version, partition numbers vs position; an error row for a partition that cannot be read); no rows when all agree.';

-------------------------------------------------------------------------------
-- Privileges: those of the milestones extension.  Nothing for PUBLIC.
-------------------------------------------------------------------------------
REVOKE ALL ON ALL TABLES IN SCHEMA @extschema@ FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA @extschema@ FROM PUBLIC;

GRANT SELECT ON @extschema@.order_status TO milestones_app, milestones_support, milestones_reader;
-- A view calls its functions with the reader's privileges; PL/Proxy runs
-- the routing functions (the RUN ON expression) as the caller too.
GRANT EXECUTE ON FUNCTION
    @extschema@._order_status_all(),
    @extschema@._order_partition(bigint),
    @extschema@.order_status(bigint)
    TO milestones_app, milestones_support, milestones_reader;

-- The application: the order actions of buyers and sellers.
GRANT EXECUTE ON FUNCTION
    @extschema@._seller_partition(bigint),
    @extschema@.create_offer(bigint, bigint, text, jsonb, integer, text, text),
    @extschema@.withdraw_offer(bigint, bigint, text),
    @extschema@.decline_offer(bigint, bigint, text),
    @extschema@.place_order(bigint, bigint, text),
    @extschema@.deliver(bigint, bigint, text, text),
    @extschema@.accept(bigint, bigint, text),
    @extschema@.request_revision(bigint, bigint, text, text),
    @extschema@.stop(bigint, bigint, text),
    @extschema@.payout(bigint)
    TO milestones_app, milestones_support;

-- Support: also cancellation, eligibility, the reasons list and the books.
-- The wrappers run as the caller, so the RUN ON ALL functions behind them
-- are granted too (they do the same thing).
GRANT EXECUTE ON FUNCTION
    @extschema@.cancel(bigint, text, text, text, text),
    @extschema@.cancel_milestone(bigint, integer, text, text, text, text),
    @extschema@.set_seller_eligibility(bigint, boolean),
    @extschema@._set_seller_eligibility_all(bigint, boolean),
    @extschema@.set_category_eligibility(text, boolean),
    @extschema@._set_category_eligibility_all(text, boolean),
    @extschema@.set_cancellation_reason(text, text, boolean),
    @extschema@._set_cancellation_reason_all(text, text, boolean),
    @extschema@.check_invariants()
    TO milestones_support;
