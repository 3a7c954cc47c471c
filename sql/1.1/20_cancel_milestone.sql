-------------------------------------------------------------------------------
-- milestones 1.1: support cancels one milestone of an order (R10b, SPEC
-- sections 2, 3 and 8), the milestone_status view, order_status(order_id)
-- and set_setting().
--
-- Where the final delivery lives.  order_milestones.final keeps what it
-- was in 1.0: the offer's last position, fixed when the offer is made (the
-- guard keeps it immutable and _order_problems checks it).  Since 1.1 the
-- final delivery is the delivery of the last milestone that is not
-- cancelled (SPEC section 2); it is computed wherever it matters (accept,
-- deliver, the views) rather than stored, so a cancellation never rewrites
-- another row and the offer stays on record as it was made.  The views
-- (order_status.final_milestone, awaiting_response.final_delivery,
-- milestone_status.final) show the computed finality.
-------------------------------------------------------------------------------

-------------------------------------------------------------------------------
-- Schema: the cancelled milestone state and who cancelled or refunded it.
-------------------------------------------------------------------------------
ALTER TABLE @extschema@.order_milestones DROP CONSTRAINT IF EXISTS milestones_state_valid;
ALTER TABLE @extschema@.order_milestones ADD CONSTRAINT milestones_state_valid
    CHECK (state IN ('pending','in_progress','delivered','completed','skipped','refunded','cancelled'));
-- A cancelled milestone was never started: no start or due time.
ALTER TABLE @extschema@.order_milestones DROP CONSTRAINT IF EXISTS milestones_started_has_times;
ALTER TABLE @extschema@.order_milestones ADD CONSTRAINT milestones_started_has_times CHECK (
    (state IN ('pending','skipped','cancelled')) = (started_at IS NULL AND due_at IS NULL));

-- The support cancellation of this one milestone (cancel_milestone), like
-- the orders' cancel columns.  A refunded milestone of a whole-order cancel
-- (cancel, and every refund of 1.0) leaves them NULL: its reason is the
-- order's.
ALTER TABLE @extschema@.order_milestones
    ADD COLUMN IF NOT EXISTS cancel_reason text REFERENCES @extschema@.cancellation_reasons (code),
    ADD COLUMN IF NOT EXISTS cancelled_by text
        CONSTRAINT milestones_cancelled_by_length CHECK (pg_catalog.length(cancelled_by) BETWEEN 1 AND 200),
    ADD COLUMN IF NOT EXISTS cancel_note text
        CONSTRAINT milestones_cancel_note_length CHECK (pg_catalog.length(cancel_note) <= 2000);
ALTER TABLE @extschema@.order_milestones DROP CONSTRAINT IF EXISTS milestones_cancel_matches_state;
ALTER TABLE @extschema@.order_milestones ADD CONSTRAINT milestones_cancel_matches_state CHECK (
    (state = 'cancelled' AND cancel_reason IS NOT NULL AND cancelled_by IS NOT NULL) OR
    (state = 'refunded' AND (cancel_reason IS NULL) = (cancelled_by IS NULL)
                        AND (cancel_reason IS NOT NULL OR cancel_note IS NULL)) OR
    (state NOT IN ('cancelled','refunded') AND cancel_reason IS NULL AND cancelled_by IS NULL AND cancel_note IS NULL));
COMMENT ON COLUMN @extschema@.order_milestones.cancel_reason IS
    'The cancellation_reasons code when support cancelled (or refunded) this milestone alone with cancel_milestone().';
COMMENT ON COLUMN @extschema@.order_milestones.cancelled_by IS 'The support agent who cancelled this milestone alone.';
COMMENT ON COLUMN @extschema@.order_milestones.cancel_note IS 'The agent''s note on cancelling this milestone alone.';
COMMENT ON COLUMN @extschema@.order_milestones.final IS
    'True for the offer''s last milestone, fixed when offered. The final delivery (R5) is that of the last milestone not cancelled: see milestone_status.final.';

-------------------------------------------------------------------------------
-- Views.
-------------------------------------------------------------------------------
-- order_status: total counts the milestones not cancelled; final_milestone
-- is true when the current milestone is the last one not cancelled.  A
-- cancelled milestone is never current.
CREATE OR REPLACE VIEW @extschema@.order_status AS
SELECT o.order_id,
       o.seller_id,
       o.buyer_id,
       o.category,
       o.currency,
       o.state,
       COALESCE(o.end_reason, o.cancel_reason)              AS reason,
       o.created_at,
       o.placed_at,
       o.completed_at,
       agg.milestone_count,
       cur.position::integer                               AS current_milestone,
       cur.state                                           AS milestone_state,
       cur.due_at,
       CASE WHEN cur.state = 'delivered' THEN cur.respond_by END AS respond_by,
       o.revisions_allowed - o.revisions_used              AS revisions_left,
       agg.total,
       money.charged,
       money.paid_out,
       money.refunded,
       money.fee,
       money.net,
       o.revisions_used,
       cur.name                                            AS milestone_name,
       cur.position = agg.last_live                        AS final_milestone
  FROM @extschema@.orders o
  CROSS JOIN LATERAL (
        SELECT count(*)::integer AS milestone_count,
               COALESCE(sum(m.amount) FILTER (WHERE m.state <> 'cancelled'), 0)::numeric(14,2) AS total,
               max(m.position) FILTER (WHERE m.state <> 'cancelled') AS last_live
          FROM @extschema@.order_milestones m
         WHERE m.order_id = o.order_id) agg
  LEFT JOIN LATERAL (
        SELECT m.position, m.state, m.due_at, m.respond_by, m.name
          FROM @extschema@.order_milestones m
         WHERE m.order_id = o.order_id
         ORDER BY CASE WHEN m.state IN ('in_progress','delivered') THEN 0
                       WHEN m.state IN ('completed','refunded') THEN 1
                       WHEN m.state = 'cancelled' THEN 3 ELSE 2 END,
                  CASE WHEN m.state IN ('completed','refunded') THEN -m.position ELSE m.position END
         LIMIT 1) cur ON true
  CROSS JOIN LATERAL (
        SELECT COALESCE(sum(l.amount) FILTER (WHERE l.kind = 'charge' AND l.account = 'escrow'), 0)::numeric(14,2)   AS charged,
               COALESCE(-sum(l.amount) FILTER (WHERE l.kind = 'payout' AND l.account = 'escrow'), 0)::numeric(14,2)  AS paid_out,
               COALESCE(sum(l.amount) FILTER (WHERE l.kind = 'refund' AND l.account = 'buyer'), 0)::numeric(14,2)    AS refunded,
               COALESCE(sum(l.amount) FILTER (WHERE l.kind = 'payout' AND l.account = 'platform'), 0)::numeric(14,2) AS fee,
               COALESCE(sum(l.amount) FILTER (WHERE l.kind = 'payout' AND l.account = 'seller'), 0)::numeric(14,2)   AS net
          FROM @extschema@.ledger_entries l
         WHERE l.order_id = o.order_id) money;
COMMENT ON VIEW @extschema@.order_status IS
    'One row per order: state, reason, the current milestone and its deadlines, revisions left (NULL = unlimited), total of the milestones not cancelled, and money charged, paid out and refunded. Every action function returns this row.';

-- awaiting_response: final_delivery is the computed finality.
CREATE OR REPLACE VIEW @extschema@.awaiting_response AS
SELECT m.order_id,
       m.position                                  AS milestone,
       m.name                                      AS milestone_name,
       NOT EXISTS (SELECT FROM @extschema@.order_milestones l
                    WHERE l.order_id = m.order_id AND l.position > m.position
                      AND l.state <> 'cancelled')  AS final_delivery,
       o.buyer_id,
       o.seller_id,
       m.delivered_at,
       m.respond_by,
       m.respond_by <= @extschema@.now()           AS overdue,
       m.respond_by - @extschema@.now()            AS time_left,
       m.deliveries,
       m.amount,
       o.currency
  FROM @extschema@.order_milestones m
  JOIN @extschema@.orders o USING (order_id)
 WHERE m.state = 'delivered'
 ORDER BY (m.respond_by <= @extschema@.now()) DESC, m.respond_by, m.order_id;

-- milestone_status: one row per milestone.  For a cancelled or refunded
-- milestone, reason/agent/note are its own (cancel_milestone) or, for a
-- refund of a whole-order cancel, the order's.
CREATE OR REPLACE VIEW @extschema@.milestone_status AS
SELECT m.order_id,
       m.position::integer                                  AS position,
       m.name,
       m.days::integer                                      AS days,
       m.amount,
       o.currency,
       m.state,
       m.state <> 'cancelled'
         AND m.position = max(m.position) FILTER (WHERE m.state <> 'cancelled')
                          OVER (PARTITION BY m.order_id)    AS final,
       m.started_at,
       m.due_at,
       m.delivered_at,
       m.respond_by,
       m.completed_at,
       m.deliveries,
       CASE WHEN m.cancel_reason IS NOT NULL THEN m.cancel_reason
            WHEN m.state = 'refunded' THEN o.cancel_reason END AS reason,
       CASE WHEN m.cancel_reason IS NOT NULL THEN m.cancelled_by
            WHEN m.state = 'refunded' THEN o.cancelled_by END  AS agent,
       CASE WHEN m.cancel_reason IS NOT NULL THEN m.cancel_note
            WHEN m.state = 'refunded' THEN o.cancel_note END   AS note
  FROM @extschema@.order_milestones m
  JOIN @extschema@.orders o ON o.order_id = m.order_id;
COMMENT ON VIEW @extschema@.milestone_status IS
    'One row per milestone: state, whether its delivery is the final one (the last milestone not cancelled), its times and deadlines, and for a cancelled or refunded milestone the reason, agent and note of the support cancellation.';
REVOKE ALL ON @extschema@.milestone_status FROM PUBLIC;
-- Like the other views: every milestones role reads state.
GRANT SELECT ON @extschema@.milestone_status TO milestones_app, milestones_support, milestones_reader;

-------------------------------------------------------------------------------
-- cancel_milestone (R10b, SPEC section 8).
-------------------------------------------------------------------------------

-- cancel_milestone: customer support ends one milestone of an active order
-- for a listed reason, and the order goes on.  A pending milestone is
-- cancelled (never charged); the running one (in progress, or delivered
-- with its window open) is refunded and the next milestone not cancelled
-- is charged and started as on accept -- or, when none is left, the order
-- ends exactly as cancel ends it.  In the C engine (src/actions.c), like
-- every action; deliver and accept, which know the final delivery (the
-- last milestone not cancelled), are in 10_engine.sql.  SECURITY DEFINER;
-- EXECUTE is granted to support only, so others get 42501 from the
-- privilege check itself.  "position" is quoted: it is a SQL keyword.
CREATE OR REPLACE FUNCTION @extschema@.cancel_milestone(order_id bigint, "position" integer, agent text, reason text,
                                                         note text DEFAULT NULL, idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status
AS 'MODULE_PATHNAME', 'milestones_cancel_milestone'
LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.cancel_milestone(bigint, integer, text, text, text, text) IS
    'Support: cancels one milestone of an active order for a listed reason; a pending one is never charged, the running one is refunded and the next one starts (or the order ends as cancelled). The order goes on.';
REVOKE ALL ON FUNCTION @extschema@.cancel_milestone(bigint, integer, text, text, text, text) FROM PUBLIC;
-- Support only, like cancel (SPEC section 8): buyers and sellers cannot cancel.
GRANT EXECUTE ON FUNCTION @extschema@.cancel_milestone(bigint, integer, text, text, text, text) TO milestones_support;

-------------------------------------------------------------------------------
-- order_status(order_id) and set_setting().
-------------------------------------------------------------------------------

-- order_status(order_id): one order's status row, with the API's refusals
-- (a view returns no row for an unknown id; this says so).  SECURITY
-- DEFINER because it uses the internal argument checks, which only the
-- owner may execute; search_path pinned like every definer function.
CREATE OR REPLACE FUNCTION @extschema@.order_status(order_id bigint) RETURNS @extschema@.order_status
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r @extschema@.order_status;
BEGIN
    IF $1 IS NULL OR $1 <= 0 THEN PERFORM @extschema@._check_id($1, 'order_id'); END IF;
    SELECT * INTO r FROM @extschema@.order_status s WHERE s.order_id = $1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'order % does not exist', $1
            USING ERRCODE = 'P0002', DETAIL = format('No milestone order has id %s.', $1);
    END IF;
    RETURN r;
END
$$;
COMMENT ON FUNCTION @extschema@.order_status(bigint) IS
    'The order_status row of one order; P0002 when the order does not exist.';
REVOKE ALL ON FUNCTION @extschema@.order_status(bigint) FROM PUBLIC;
-- Every milestones role reads state, as with the view.
GRANT EXECUTE ON FUNCTION @extschema@.order_status(bigint) TO milestones_app, milestones_support, milestones_reader;

-- set_setting: changes one column of the settings row, validated exactly
-- as the table's own CHECK constraints and types (the UPDATE itself is the
-- check; its errors become 22023 with the rule in the DETAIL).  Numbers
-- are never silently rounded to the column's scale.  Any settings column
-- but the singleton key is a name, so later columns work without change.
-- Owner only: no GRANT, and not SECURITY DEFINER (the owner owns the table).
CREATE OR REPLACE FUNCTION @extschema@.set_setting(name text, value text) RETURNS @extschema@.settings
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_type text;
    v_numeric boolean;
    v_scale integer;
    v_number numeric;
    v_constraint text;
    v_message text;
    r @extschema@.settings;
BEGIN
    PERFORM @extschema@._not_null(set_setting.name, 'name');
    PERFORM @extschema@._not_null(set_setting.value, 'value');
    SELECT pg_catalog.format_type(a.atttypid, a.atttypmod),
           a.atttypid = 'pg_catalog.numeric'::pg_catalog.regtype,
           CASE WHEN a.atttypid = 'pg_catalog.numeric'::pg_catalog.regtype AND a.atttypmod >= 4
                THEN (a.atttypmod - 4) & 65535 END
      INTO v_type, v_numeric, v_scale
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = '@extschema@.settings'::pg_catalog.regclass
       AND a.attnum > 0 AND NOT a.attisdropped AND a.attname <> 'singleton'
       AND a.attname::text = set_setting.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown setting %', quote_literal(left(set_setting.name, 100))
            USING ERRCODE = '22023',
                  DETAIL = format('Settings: %s.',
                                  (SELECT string_agg(a.attname::text, ', ' ORDER BY a.attnum)
                                     FROM pg_catalog.pg_attribute a
                                    WHERE a.attrelid = '@extschema@.settings'::pg_catalog.regclass
                                      AND a.attnum > 0 AND NOT a.attisdropped AND a.attname <> 'singleton'));
    END IF;
    BEGIN
        IF v_numeric THEN
            v_number := set_setting.value::numeric;
            -- NaN passes the table's range checks (it sorts above every
            -- number) but is no amount or rate: refuse it here.
            IF v_number = 'NaN'::numeric THEN
                RAISE EXCEPTION 'setting % must be a number', set_setting.name
                    USING ERRCODE = '22023', DETAIL = 'Got NaN.';
            END IF;
            IF v_number <> round(v_number, v_scale) THEN
                RAISE EXCEPTION 'setting % takes at most % decimals', set_setting.name, v_scale
                    USING ERRCODE = '22023', DETAIL = format('Got %s; it is never rounded.', left(set_setting.value, 100));
            END IF;
        END IF;
        EXECUTE format('UPDATE @extschema@.settings SET %I = $1::%s RETURNING *', set_setting.name, v_type)
           INTO r USING set_setting.value;
    EXCEPTION
        WHEN check_violation THEN
            GET STACKED DIAGNOSTICS v_constraint = CONSTRAINT_NAME;
            RAISE EXCEPTION 'invalid value for setting %', set_setting.name
                USING ERRCODE = '22023',
                      DETAIL = format('%s = %s breaks %s: %s.', set_setting.name, left(set_setting.value, 100), v_constraint,
                                      (SELECT pg_catalog.pg_get_constraintdef(c.oid) FROM pg_catalog.pg_constraint c
                                        WHERE c.conrelid = '@extschema@.settings'::pg_catalog.regclass
                                          AND c.conname = v_constraint));
        WHEN data_exception THEN
            GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT;
            IF SQLSTATE = '22023' THEN
                RAISE;
            END IF;
            RAISE EXCEPTION 'invalid value for setting %', set_setting.name
                USING ERRCODE = '22023',
                      DETAIL = format('%s takes a value of type %s; %s gave: %s.', set_setting.name, v_type,
                                      quote_literal(left(set_setting.value, 100)), v_message);
    END;
    RETURN r;
END
$$;
COMMENT ON FUNCTION @extschema@.set_setting(text, text) IS
    'Owner: sets one marketplace setting (a column of milestones.settings) from text, validated by the table''s checks (22023 otherwise); returns the new settings row.';
REVOKE ALL ON FUNCTION @extschema@.set_setting(text, text) FROM PUBLIC;
-- No GRANT: settings are the owner's (SPEC section 3).

-------------------------------------------------------------------------------
-- Invariants (SPEC section 6) with the cancelled milestone: it was never
-- started nor charged; a milestone starts only when every earlier one is
-- completed, refunded or cancelled; an active or completed order may hold
-- milestones refunded by cancel_milestone (they carry its reason); a
-- completed order's last milestone neither skipped nor cancelled is
-- completed, and a finished one has nothing skipped.
-------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION @extschema@._order_problems(p_orders bigint[], p_money boolean)
RETURNS TABLE (order_id bigint, problem text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    -- Structure: positions 1..n, one running milestone, k after every
    -- earlier one ended, order state consistent with its milestones, final
    -- flag on the offer's last one.
    RETURN QUERY
    WITH a AS MATERIALIZED (
        SELECT x.order_id, x.state, x.end_reason, g.*
          FROM unnest(p_orders) AS q(id)
          JOIN @extschema@.orders x ON x.order_id = q.id
         CROSS JOIN LATERAL (
               SELECT count(m.position)::integer AS n,
                      COALESCE(max(m.position), 0)::integer AS maxpos,
                      count(*) FILTER (WHERE m.state IN ('in_progress','delivered'))::integer AS running,
                      count(*) FILTER (WHERE m.state = 'pending')::integer AS pending,
                      count(*) FILTER (WHERE m.state = 'completed')::integer AS completed,
                      count(*) FILTER (WHERE m.state = 'skipped')::integer AS skipped,
                      count(*) FILTER (WHERE m.state = 'refunded')::integer AS refunded,
                      count(*) FILTER (WHERE m.state = 'cancelled')::integer AS cancelled,
                      -- refunded without a milestone cancellation: only a whole-order cancel does that
                      count(*) FILTER (WHERE m.state = 'refunded' AND m.cancel_reason IS NULL)::integer AS refunded_whole,
                      (array_agg(m.state ORDER BY m.position DESC)
                         FILTER (WHERE m.state NOT IN ('skipped','cancelled')))[1] AS last_state,
                      array_agg(m.position ORDER BY m.position) AS positions,
                      array_agg(m.state ORDER BY m.position) AS states,
                      array_agg(m.final ORDER BY m.position) AS finals
                 FROM @extschema@.order_milestones m
                WHERE m.order_id = x.order_id) g
    )
    SELECT a.order_id, 'order has no milestones' FROM a WHERE a.n = 0
    UNION ALL
    SELECT a.order_id, format('milestone positions are not 1..%s', a.n) FROM a WHERE a.n > 0 AND a.maxpos <> a.n
    UNION ALL
    SELECT a.order_id, format('%s milestones are in progress or delivered at once', a.running) FROM a WHERE a.running > 1
    UNION ALL
    SELECT a.order_id, format('%s order has milestones that are not pending', a.state)
      FROM a WHERE a.state = 'offered' AND a.pending <> a.n
    UNION ALL
    SELECT a.order_id, 'active order has no milestone in progress or delivered'
      FROM a WHERE a.state = 'active' AND a.running = 0 AND a.n > 0
    UNION ALL
    SELECT a.order_id, 'active order has skipped or refunded milestones'
      FROM a WHERE a.state = 'active' AND a.skipped + a.refunded_whole > 0
    UNION ALL
    SELECT a.order_id, 'ended order still has pending, in-progress or delivered milestones'
      FROM a WHERE a.state IN ('completed','cancelled','withdrawn','declined') AND a.pending + a.running > 0
    UNION ALL
    SELECT a.order_id, format('completed (%s) order has %s of %s milestones completed', a.end_reason, a.completed, a.n)
      FROM a WHERE a.state = 'completed'
       AND (a.completed = 0 OR a.refunded_whole > 0 OR a.last_state IS DISTINCT FROM 'completed'
            OR (a.end_reason = 'finished' AND a.completed + a.refunded + a.cancelled <> a.n))
    UNION ALL
    SELECT a.order_id, format('%s order has milestones that were not skipped', a.state)
      FROM a WHERE a.state IN ('withdrawn','declined') AND a.skipped <> a.n
    UNION ALL
    SELECT a.order_id, format('milestone %s is %s but milestone %s is %s',
                              a.positions[u.k], u.st, a.positions[e.j], e.st)
      FROM a CROSS JOIN LATERAL unnest(a.states) WITH ORDINALITY AS u(st, k)
     CROSS JOIN LATERAL unnest(a.states[1:u.k - 1]) WITH ORDINALITY AS e(st, j)
     WHERE u.k > 1 AND u.st IN ('in_progress','delivered','completed','refunded')
       AND e.st NOT IN ('completed','refunded','cancelled')
    UNION ALL
    SELECT a.order_id, format('milestone %s final flag is %s', a.positions[u.k], u.final)
      FROM a CROSS JOIN LATERAL unnest(a.finals) WITH ORDINALITY AS u(final, k)
     WHERE u.final <> (a.positions[u.k] = a.n);

    IF NOT p_money THEN
        RETURN;
    END IF;

    -- Money: balanced transactions in the order's currency, one charge per
    -- started milestone (none for a pending, skipped or cancelled one), one
    -- refund per refunded one, escrow empty when the order ends, one
    -- payout equal to the completed milestones.
    RETURN QUERY
    WITH o AS MATERIALIZED (
        SELECT x.order_id, x.state, x.currency, x.fee_rate
          FROM unnest(p_orders) AS q(id) JOIN @extschema@.orders x ON x.order_id = q.id
    ), txn AS (
        SELECT o.order_id, t.txn_id, t.total, t.kinds, t.wrong_currency
          FROM o CROSS JOIN LATERAL (
               SELECT e.txn_id, sum(e.amount) AS total, count(DISTINCT e.kind) AS kinds,
                      bool_or(e.currency <> o.currency) AS wrong_currency
                 FROM @extschema@.ledger_entries e WHERE e.order_id = o.order_id GROUP BY e.txn_id) t
    ), per_ms AS (
        SELECT o.order_id, p.*
          FROM o CROSS JOIN LATERAL (
               SELECT COALESCE(m.position, x.position) AS position, COALESCE(m.state, 'missing') AS state, m.amount,
                      COALESCE(x.charges, 0) AS charges, COALESCE(x.charged, 0) AS charged,
                      COALESCE(x.refunds, 0) AS refunds, COALESCE(x.refunded, 0) AS refunded
                 FROM (SELECT m.position, m.state, m.amount FROM @extschema@.order_milestones m
                        WHERE m.order_id = o.order_id) m
                 FULL JOIN (
                      SELECT e.position,
                             count(*) FILTER (WHERE e.kind = 'charge' AND e.account = 'buyer') AS charges,
                             COALESCE(-sum(e.amount) FILTER (WHERE e.kind = 'charge' AND e.account = 'buyer'), 0) AS charged,
                             count(*) FILTER (WHERE e.kind = 'refund' AND e.account = 'buyer') AS refunds,
                             COALESCE(sum(e.amount) FILTER (WHERE e.kind = 'refund' AND e.account = 'buyer'), 0) AS refunded
                        FROM @extschema@.ledger_entries e
                       WHERE e.order_id = o.order_id AND e.position IS NOT NULL
                       GROUP BY e.position) x ON x.position = m.position) p
    ), money AS (
        SELECT o.order_id, o.state, o.fee_rate, l.*, e.earned
          FROM o
         CROSS JOIN LATERAL (
               SELECT COALESCE(sum(x.amount) FILTER (WHERE x.account = 'escrow'), 0) AS escrow,
                      count(DISTINCT x.txn_id) FILTER (WHERE x.kind = 'payout') AS payouts,
                      COALESCE(-sum(x.amount) FILTER (WHERE x.kind = 'payout' AND x.account = 'escrow'), 0) AS gross,
                      COALESCE(sum(x.amount) FILTER (WHERE x.kind = 'payout' AND x.account = 'platform'), 0) AS fee,
                      COALESCE(sum(x.amount) FILTER (WHERE x.kind = 'payout' AND x.account = 'seller'), 0) AS net
                 FROM @extschema@.ledger_entries x WHERE x.order_id = o.order_id) l
         CROSS JOIN LATERAL (
               SELECT COALESCE(sum(m.amount) FILTER (WHERE m.state = 'completed'), 0) AS earned
                 FROM @extschema@.order_milestones m WHERE m.order_id = o.order_id) e
    )
    SELECT t.order_id, format('ledger transaction %s does not balance (sums to %s)', t.txn_id, t.total)
      FROM txn t WHERE t.total <> 0
    UNION ALL
    SELECT t.order_id, format('ledger transaction %s mixes kinds or currencies', t.txn_id)
      FROM txn t WHERE t.kinds > 1 OR t.wrong_currency
    UNION ALL
    SELECT p.order_id, format('milestone %s is %s but was charged %s times (%s)', p.position, p.state, p.charges, p.charged)
      FROM per_ms p
     WHERE p.charges <> CASE WHEN p.state IN ('pending','skipped','cancelled','missing') THEN 0 ELSE 1 END
        OR (p.charges = 1 AND p.charged IS DISTINCT FROM p.amount)
    UNION ALL
    SELECT p.order_id, format('milestone %s is %s but was refunded %s times (%s)', p.position, p.state, p.refunds, p.refunded)
      FROM per_ms p
     WHERE p.refunds <> CASE WHEN p.state = 'refunded' THEN 1 ELSE 0 END
        OR (p.refunds = 1 AND p.refunded IS DISTINCT FROM p.amount)
    UNION ALL
    SELECT x.order_id, format('%s order holds %s in escrow', x.state, x.escrow)
      FROM money x
     WHERE (x.state IN ('completed','cancelled','withdrawn','declined') AND x.escrow <> 0) OR x.escrow < 0
    UNION ALL
    SELECT x.order_id, format('%s order has %s payouts', x.state, x.payouts)
      FROM money x
     WHERE x.payouts > 1 OR (x.payouts > 0 AND x.state IN ('offered','active'))
        OR (x.payouts = 0 AND x.earned > 0 AND x.state IN ('completed','cancelled'))
    UNION ALL
    SELECT x.order_id, format('payout gross %s, fee %s, net %s do not match completed milestones %s at fee rate %s',
                              x.gross, x.fee, x.net, x.earned, x.fee_rate)
      FROM money x
     WHERE x.payouts = 1
       AND (x.gross <> x.earned OR x.fee + x.net <> x.gross OR x.fee <> @extschema@._fee(x.gross, x.fee_rate));
END
$$;
COMMENT ON FUNCTION @extschema@._order_problems(bigint[], boolean) IS
    'The invariants of the given orders (structure; with p_money also the money): one row per violation. Knows cancelled milestones (1.1).';
