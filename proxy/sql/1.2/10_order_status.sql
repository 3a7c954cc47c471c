-------------------------------------------------------------------------------
-- milestones_proxy 1.2: the proxy of milestones 1.2 partitions.
--
-- The files of proxy/sql/1.2/ build both proxy/sql/milestones_proxy--1.1--1.2.sql
-- and the 1.2 install script (the released 1.1 script followed by them;
-- see the Makefile), so an upgraded proxy and a fresh one are the same.
--
-- milestones 1.2 adds to order_status (the row every action returns) the
-- payment mode and the open charge (SPEC section 11), and to the settings
-- row payment_mode, payment_window and clearance_period: the proxy's view
-- and types follow, so an application sees the same rows through the
-- proxy.  The payment functions of sections 11 and 12 are not proxied in
-- 1.2 (SPEC section 10): the payment worker runs per partition.
-------------------------------------------------------------------------------
CREATE FUNCTION @extschema@._order_status_all_12()
RETURNS TABLE (order_id bigint, seller_id bigint, buyer_id bigint, category text, currency text,
               state text, reason text, created_at timestamptz, placed_at timestamptz,
               completed_at timestamptz, milestone_count integer, current_milestone integer,
               milestone_state text, due_at timestamptz, respond_by timestamptz, revisions_left integer,
               total numeric, charged numeric, paid_out numeric, refunded numeric, fee numeric,
               net numeric, revisions_used integer, milestone_name text, final_milestone boolean,
               payment_mode text, charge_id bigint, charge_attempt integer, charge_state text,
               pay_by timestamptz)
LANGUAGE plproxy AS $$
    CLUSTER 'milestones_cluster';
    RUN ON ALL;
    SELECT s.order_id, s.seller_id, s.buyer_id, s.category, s.currency, s.state, s.reason,
           s.created_at, s.placed_at, s.completed_at, s.milestone_count, s.current_milestone,
           s.milestone_state, s.due_at, s.respond_by, s.revisions_left, s.total, s.charged,
           s.paid_out, s.refunded, s.fee, s.net, s.revisions_used, s.milestone_name, s.final_milestone,
           s.payment_mode, s.charge_id, s.charge_attempt, s.charge_state, s.pay_by
      FROM milestones.order_status s;
$$;
COMMENT ON FUNCTION @extschema@._order_status_all_12() IS
    'PL/Proxy: the order_status rows of every partition (behind the order_status view), with 1.2''s payment columns.';
REVOKE ALL ON FUNCTION @extschema@._order_status_all_12() FROM PUBLIC;
-- The view calls it with the reader's privileges, as its 1.1 predecessor.
GRANT EXECUTE ON FUNCTION @extschema@._order_status_all_12() TO milestones_app, milestones_support, milestones_reader;

-- The view gains the columns at its end, so every function returning its
-- row type keeps working (CREATE OR REPLACE VIEW may only add columns).
CREATE OR REPLACE VIEW @extschema@.order_status AS
SELECT a.order_id, a.seller_id, a.buyer_id, a.category, a.currency, a.state, a.reason,
       a.created_at, a.placed_at, a.completed_at, a.milestone_count, a.current_milestone,
       a.milestone_state, a.due_at, a.respond_by, a.revisions_left,
       a.total::numeric(14,2) AS total, a.charged::numeric(14,2) AS charged,
       a.paid_out::numeric(14,2) AS paid_out, a.refunded::numeric(14,2) AS refunded,
       a.fee::numeric(14,2) AS fee, a.net::numeric(14,2) AS net,
       a.revisions_used, a.milestone_name, a.final_milestone,
       a.payment_mode, a.charge_id, a.charge_attempt, a.charge_state, a.pay_by
  FROM @extschema@._order_status_all_12() a;
DROP FUNCTION @extschema@._order_status_all();

ALTER TYPE @extschema@.settings
    ADD ATTRIBUTE payment_mode text,
    ADD ATTRIBUTE payment_window interval,
    ADD ATTRIBUTE clearance_period interval;
