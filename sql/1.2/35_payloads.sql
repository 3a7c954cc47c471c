-------------------------------------------------------------------------------
-- Notification payloads of seller-level events (SPEC section 12).
--
-- A withdrawal's events belong to no order (order_id NULL, seller_id in the
-- detail): the payload's order fields (seller_id, buyer_id, currency) come
-- from the order when there is one, and from the detail otherwise (the
-- detail's keys win, as before).  The relay and the fallback NOTIFY build
-- the same bytes in C (src/relay_batch.c).
-------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION @extschema@._payloads(p_events @extschema@.events[])
RETURNS TABLE (event_id bigint, payload text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- PL/pgSQL, not SQL: a SQL function (not inlinable with its SET
    -- clause) plans this query again on every call, which cost the relay
    -- more than building the payloads; PL/pgSQL keeps the plan.
    RETURN QUERY
    SELECT e.event_id,
           (pg_catalog.jsonb_build_object(
                'event_id', e.event_id, 'order_id', e.order_id, 'event', e.event,
                'order_state', e.order_state, 'milestone', e.position,
                'milestone_state', e.milestone_state,
                'actor_role', e.actor_role, 'actor_id', e.actor_id,
                'seller_id', o.seller_id, 'buyer_id', o.buyer_id, 'currency', o.currency,
                'at', e.created_at)
            OPERATOR(pg_catalog.||) COALESCE(m.detail, '{}'::jsonb))::text
      FROM pg_catalog.unnest(p_events) e
      LEFT JOIN @extschema@.orders o ON o.order_id OPERATOR(pg_catalog.=) e.order_id
      LEFT JOIN LATERAL (
          SELECT pg_catalog.jsonb_object_agg(d.key,
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
              END) AS detail
            FROM pg_catalog.jsonb_each(e.detail) d) m ON true
     WHERE e.order_id IS NULL OR o.order_id IS NOT NULL
     ORDER BY e.event_id;
END
$$;
COMMENT ON FUNCTION @extschema@._payloads(@extschema@.events[]) IS
    'The JSON payloads of NOTIFY milestones for some events (money as strings), in event_id order; the one builder, used by the fallback trigger and the relay. Seller-level events (no order) take seller_id and currency from their detail.';
