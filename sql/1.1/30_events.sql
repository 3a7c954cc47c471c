
-------------------------------------------------------------------------------
-- 30_events.sql: events out of the database (SPEC section 5, issues 10 and 12).
--
--   * one payload builder, _payload(events), used by the fallback NOTIFY and
--     by the relay, with money as strings;
--   * the events trigger: NOTIFY at commit only in fallback mode (no relay
--     serving this database); _event() no longer notifies by itself;
--   * durable consumers with PgQ's snapshot technique: every event stores
--     its transaction id; a tick is a snapshot; a batch is what became
--     visible between two ticks.  The relay (src/relay.c) reads through the
--     very same functions as the reserved consumer "_relay".
-------------------------------------------------------------------------------

-- The writing transaction of each event, and the cluster it was written in
-- (pg_control's system identifier: a restore into another cluster brings
-- transaction ids that mean nothing there).  Rows written before 1.1 get
-- the constant defaults (transaction 1, cluster 0): "committed long ago",
-- visible in every tick.  Constant defaults first, so that the upgrade of a
-- large events table rewrites nothing; then the real defaults.
ALTER TABLE @extschema@.events
    ADD COLUMN txid xid8 NOT NULL DEFAULT '1',
    ADD COLUMN txid_cluster bigint NOT NULL DEFAULT 0;

CREATE FUNCTION @extschema@._cluster_id() RETURNS bigint
    AS 'MODULE_PATHNAME', 'milestones_cluster_id' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._cluster_id() IS
    'This cluster''s system identifier (pg_control), the cluster in which a transaction id means something.';

ALTER TABLE @extschema@.events
    ALTER COLUMN txid SET DEFAULT pg_catalog.pg_current_xact_id(),
    ALTER COLUMN txid_cluster SET DEFAULT @extschema@._cluster_id();
COMMENT ON COLUMN @extschema@.events.txid IS
    'The writing transaction (pg_current_xact_id()); consumers read events in the order their transactions became visible. 1 for events written before 1.1.';
COMMENT ON COLUMN @extschema@.events.txid_cluster IS
    'System identifier of the cluster that wrote the event (txid is only meaningful there); 0 for events written before 1.1.';
CREATE INDEX events_txid_idx ON @extschema@.events (txid);

-------------------------------------------------------------------------------
-- The notification payload.
-------------------------------------------------------------------------------
-- _money_strings turns the money of an event's detail into strings with
-- cents ("100.00"), so that JSON readers that parse numbers as floats
-- cannot lose a cent: total, charged, refunded, amount, and gross, fee, net
-- inside payout.  Other keys are kept as they are.
CREATE FUNCTION @extschema@._money_strings(detail jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT COALESCE(pg_catalog.jsonb_object_agg(d.key,
        CASE
            WHEN d.key OPERATOR(pg_catalog.=) ANY (ARRAY['total', 'charged', 'refunded', 'amount'])
                 AND pg_catalog.jsonb_typeof(d.value) OPERATOR(pg_catalog.=) 'number'
            THEN pg_catalog.to_jsonb(pg_catalog.round((d.value OPERATOR(pg_catalog.#>>) '{}')::numeric, 2)::text)
            WHEN d.key OPERATOR(pg_catalog.=) 'payout'
                 AND pg_catalog.jsonb_typeof(d.value) OPERATOR(pg_catalog.=) 'object'
            THEN (SELECT COALESCE(pg_catalog.jsonb_object_agg(p.key,
                     CASE WHEN p.key OPERATOR(pg_catalog.=) ANY (ARRAY['gross', 'fee', 'net'])
                               AND pg_catalog.jsonb_typeof(p.value) OPERATOR(pg_catalog.=) 'number'
                          THEN pg_catalog.to_jsonb(pg_catalog.round((p.value OPERATOR(pg_catalog.#>>) '{}')::numeric, 2)::text)
                          ELSE p.value END), '{}'::jsonb)
                    FROM pg_catalog.jsonb_each(d.value) p)
            ELSE d.value
        END), '{}'::jsonb)
      FROM pg_catalog.jsonb_each(COALESCE(detail, '{}'::jsonb)) d
$$;
COMMENT ON FUNCTION @extschema@._money_strings(jsonb) IS
    'An event detail with its money (total, charged, refunded, amount, payout gross/fee/net) as strings with cents.';

-- _payload is THE notification payload of an event (the one builder): the
-- 1.0 payload (event, states, actor, the order's parties and currency, the
-- time, then the detail) with money as strings.
CREATE FUNCTION @extschema@._payload(e @extschema@.events) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT (pg_catalog.jsonb_build_object(
                'event_id', e.event_id, 'order_id', e.order_id, 'event', e.event,
                'order_state', e.order_state, 'milestone', e.position,
                'milestone_state', e.milestone_state,
                'actor_role', e.actor_role, 'actor_id', e.actor_id,
                'seller_id', o.seller_id, 'buyer_id', o.buyer_id, 'currency', o.currency,
                'at', e.created_at)
            OPERATOR(pg_catalog.||) @extschema@._money_strings(e.detail))::text
      FROM @extschema@.orders o
     WHERE o.order_id OPERATOR(pg_catalog.=) e.order_id
$$;
COMMENT ON FUNCTION @extschema@._payload(@extschema@.events) IS
    'The JSON payload of NOTIFY milestones for one event (money as strings); used by the fallback trigger and the relay.';

-------------------------------------------------------------------------------
-- The events trigger and _event().
-------------------------------------------------------------------------------
-- In C (src/events.c): in a database the relay serves it only wakes the
-- relay at commit; otherwise (fallback) it sends NOTIFY milestones with
-- _payload(NEW) when settings.notify is on.  Rows a restore re-inserts (they
-- carry another transaction's id) are not notified again.
CREATE FUNCTION @extschema@._events_notify() RETURNS trigger
    AS 'MODULE_PATHNAME', 'milestones_events_notify' LANGUAGE C;
COMMENT ON FUNCTION @extschema@._events_notify() IS
    'Trigger: wakes the relay at commit, or (fallback, no relay serving this database) sends NOTIFY milestones with the event''s payload.';
DROP TRIGGER IF EXISTS events_notify ON @extschema@.events;
CREATE TRIGGER events_notify AFTER INSERT ON @extschema@.events
    FOR EACH ROW EXECUTE FUNCTION @extschema@._events_notify();

-- _event (1.0) now only appends; the trigger above does the notifying.
CREATE OR REPLACE FUNCTION @extschema@._event(o @extschema@.orders, p_position smallint, p_event text,
                                    p_actor_role text, p_actor_id bigint, p_agent text, p_detail jsonb)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- The states after the change, read with the insert.
    INSERT INTO @extschema@.events (order_id, position, event, actor_role, actor_id, agent,
                                    order_state, milestone_state, detail, created_at)
    SELECT o.order_id, p_position, p_event, p_actor_role, p_actor_id, p_agent,
           x.state, m.state, COALESCE(p_detail, '{}'), @extschema@.now()
      FROM @extschema@.orders x
      LEFT JOIN @extschema@.order_milestones m
             ON m.order_id OPERATOR(pg_catalog.=) x.order_id AND m.position OPERATOR(pg_catalog.=) p_position
     WHERE x.order_id OPERATOR(pg_catalog.=) o.order_id;
END
$$;
COMMENT ON FUNCTION @extschema@._event(@extschema@.orders, smallint, text, text, bigint, text, jsonb) IS
    'Appends an event with the order''s and milestone''s new states; the events_notify trigger sends the notification.';

-------------------------------------------------------------------------------
-- Privileges of the objects above (the 1.0 REVOKE ... ON ALL FUNCTIONS ran
-- before this file).  The helpers and the trigger are the owner's alone.
-------------------------------------------------------------------------------
REVOKE ALL ON FUNCTION
    @extschema@._cluster_id(),
    @extschema@._money_strings(jsonb),
    @extschema@._payload(@extschema@.events),
    @extschema@._events_notify()
    FROM PUBLIC;
