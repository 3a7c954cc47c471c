-------------------------------------------------------------------------------
-- Invariants (SPEC sections 6, 11 and 12) with confirmed payments and
-- seller earnings.
--
-- _order_problems keeps every 1.1 rule for recorded-mode orders; for a
-- confirmed-mode order the milestone awaiting payment counts like a running
-- one, and the money is counted per charge: every ledger charge and refund
-- leg carries its charge_id and attempt; each started milestone has exactly
-- one wanted, booked success; each success not wanted is booked and refunded
-- exactly once; nothing is booked for an attempt that did not succeed;
-- every refund row matches a ledger refund.  _seller_problems checks the
-- seller balances against their journal and the payouts.  check_invariants()
-- reports both; the commit check runs them for the orders and sellers a
-- transaction touched when it cannot vouch for the writes itself.
-------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION @extschema@._order_problems(p_orders bigint[], p_money boolean)
RETURNS TABLE (order_id bigint, problem text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    -- Structure: positions 1..n, one running (or awaiting payment)
    -- milestone, k after every earlier one ended, order state consistent
    -- with its milestones, final flag on the offer's last one.  Rows of one
    -- table only: pg_restore loads each table in a transaction of its own.
    RETURN QUERY
    WITH a AS MATERIALIZED (
        SELECT x.order_id, x.state, x.end_reason, x.payment_mode, g.*
          FROM unnest(p_orders) AS q(id)
          JOIN @extschema@.orders x ON x.order_id = q.id
         CROSS JOIN LATERAL (
               SELECT count(m.position)::integer AS n,
                      COALESCE(max(m.position), 0)::integer AS maxpos,
                      count(*) FILTER (WHERE m.state IN ('in_progress','delivered'))::integer AS running,
                      count(*) FILTER (WHERE m.state = 'awaiting_payment')::integer AS awaiting,
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
    SELECT a.order_id, format('%s milestones are running or awaiting payment at once', a.running + a.awaiting)
      FROM a WHERE a.awaiting > 0 AND a.running + a.awaiting > 1
    UNION ALL
    SELECT a.order_id, 'recorded-mode order has a milestone awaiting payment'
      FROM a WHERE a.awaiting > 0 AND a.payment_mode <> 'confirmed'
    UNION ALL
    SELECT a.order_id, format('%s order has milestones that are not pending', a.state)
      FROM a WHERE a.state = 'offered' AND a.pending <> a.n
       AND NOT (a.payment_mode = 'confirmed' AND a.awaiting = 1 AND a.pending = a.n - 1
                AND a.states[1] = 'awaiting_payment')
    UNION ALL
    SELECT a.order_id, 'active order has no milestone in progress or delivered'
      FROM a WHERE a.state = 'active' AND a.running = 0 AND a.n > 0
       AND NOT (a.payment_mode = 'confirmed' AND a.awaiting = 1)
    UNION ALL
    SELECT a.order_id, 'active order has skipped or refunded milestones'
      FROM a WHERE a.state = 'active' AND a.skipped + a.refunded_whole > 0
    UNION ALL
    SELECT a.order_id, 'ended order still has pending, in-progress or delivered milestones'
      FROM a WHERE a.state IN ('completed','cancelled','withdrawn','declined') AND a.pending + a.running > 0
    UNION ALL
    SELECT a.order_id, 'ended order still has a milestone awaiting payment'
      FROM a WHERE a.state IN ('completed','cancelled','withdrawn','declined') AND a.awaiting > 0
    UNION ALL
    SELECT a.order_id, format('completed (%s) order has %s of %s milestones completed', a.end_reason, a.completed, a.n)
      FROM a WHERE a.state = 'completed' AND a.end_reason IS DISTINCT FROM 'unpaid'
       AND (a.completed = 0 OR a.refunded_whole > 0 OR a.last_state IS DISTINCT FROM 'completed'
            OR (a.end_reason = 'finished' AND a.completed + a.refunded + a.cancelled <> a.n))
    UNION ALL
    SELECT a.order_id, format('completed (unpaid) order has %s milestones refunded by an order cancellation', a.refunded_whole)
      FROM a WHERE a.state = 'completed' AND a.end_reason = 'unpaid' AND a.refunded_whole > 0
    UNION ALL
    SELECT a.order_id, format('%s order has milestones that were not skipped', a.state)
      FROM a WHERE a.state IN ('withdrawn','declined') AND a.skipped <> a.n
    UNION ALL
    SELECT a.order_id, format('milestone %s is %s but milestone %s is %s',
                              a.positions[u.k], u.st, a.positions[e.j], e.st)
      FROM a CROSS JOIN LATERAL unnest(a.states) WITH ORDINALITY AS u(st, k)
     CROSS JOIN LATERAL unnest(a.states[1:u.k - 1]) WITH ORDINALITY AS e(st, j)
     WHERE u.k > 1 AND u.st IN ('in_progress','delivered','completed','refunded','awaiting_payment')
       AND e.st NOT IN ('completed','refunded','cancelled')
    UNION ALL
    SELECT a.order_id, format('milestone %s final flag is %s', a.positions[u.k], u.final)
      FROM a CROSS JOIN LATERAL unnest(a.finals) WITH ORDINALITY AS u(final, k)
     WHERE u.final <> (a.positions[u.k] = a.n);

    IF NOT p_money THEN
        RETURN;
    END IF;

    -- Money: balanced transactions in the order's currency, escrow empty
    -- when the order ends, one payout equal to the completed milestones;
    -- recorded mode: one charge per started milestone, one refund per
    -- refunded one; confirmed mode: the charges of each milestone and, per
    -- charge attempt, what the ledger booked and refunded.  (The money
    -- rules read several tables: they run once an order's picture is
    -- complete, see src/check.c.)  Every subquery is by index on one
    -- order's rows, so the cost is linear in the orders checked.
    RETURN QUERY
    WITH o AS MATERIALIZED (
        SELECT x.order_id, x.state, x.currency, x.fee_rate, x.payment_mode
          FROM unnest(p_orders) AS q(id) JOIN @extschema@.orders x ON x.order_id = q.id
    ), txn AS (
        SELECT o.order_id, t.txn_id, t.total, t.kinds, t.wrong_currency, t.charges
          FROM o CROSS JOIN LATERAL (
               SELECT e.txn_id, sum(e.amount) AS total, count(DISTINCT e.kind) AS kinds,
                      bool_or(e.currency <> o.currency) AS wrong_currency,
                      count(DISTINCT (e.charge_id, e.charge_attempt)) AS charges
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
         WHERE o.payment_mode <> 'confirmed'
    ), ms_charges AS (
        -- Confirmed mode: each milestone with the count of its open and of
        -- its succeeded charges.
        SELECT o.order_id, o.payment_mode, m.position, m.state, c.open, c.paid
          FROM o
          JOIN @extschema@.order_milestones m ON m.order_id = o.order_id
         CROSS JOIN LATERAL (
               SELECT count(*) FILTER (WHERE x.state IN ('requested','failed')) AS open,
                      count(*) FILTER (WHERE x.state = 'succeeded') AS paid
                 FROM @extschema@.order_charges x
                WHERE x.order_id = m.order_id AND x.position = m.position) c
    ), ch AS (
        -- Each charge of the orders, with its attempts summed up and its milestone.
        SELECT o.order_id, o.payment_mode, c.charge_id, c.position, c.state, c.attempts,
               m.state AS milestone_state, t.nattempts, t.wanted, t.last_state
          FROM o
          JOIN @extschema@.order_charges c ON c.order_id = o.order_id
          LEFT JOIN @extschema@.order_milestones m ON m.order_id = c.order_id AND m.position = c.position
         CROSS JOIN LATERAL (
               SELECT count(*)::integer AS nattempts,
                      count(*) FILTER (WHERE a.wanted)::integer AS wanted,
                      (array_agg(a.state ORDER BY a.attempt DESC))[1] AS last_state
                 FROM @extschema@.charge_attempts a WHERE a.charge_id = c.charge_id) t
    ), per_attempt AS (
        -- Confirmed mode: each attempt of each charge, with what the ledger
        -- booked for it, and what it should have booked.
        SELECT o.order_id, c.charge_id, t.attempt, t.state, t.wanted, c.amount, c.position,
               m.state AS milestone_state,
               COALESCE(b.charges, 0) AS charges, b.charged,
               COALESCE(b.refunds, 0) AS refunds, b.refunded,
               (SELECT count(*) FROM @extschema@.order_refunds r
                 WHERE r.charge_id = c.charge_id AND r.charge_attempt = t.attempt) AS refund_rows
          FROM o
          JOIN @extschema@.order_charges c ON c.order_id = o.order_id
          JOIN @extschema@.charge_attempts t ON t.charge_id = c.charge_id
          JOIN @extschema@.order_milestones m ON m.order_id = c.order_id AND m.position = c.position
          LEFT JOIN LATERAL (
               SELECT count(DISTINCT e.txn_id) FILTER (WHERE e.kind = 'charge') AS charges,
                      -sum(e.amount) FILTER (WHERE e.kind = 'charge' AND e.account = 'buyer') AS charged,
                      count(DISTINCT e.txn_id) FILTER (WHERE e.kind = 'refund') AS refunds,
                      sum(e.amount) FILTER (WHERE e.kind = 'refund' AND e.account = 'buyer') AS refunded
                 FROM @extschema@.ledger_entries e
                WHERE e.order_id = c.order_id AND e.charge_id = c.charge_id AND e.charge_attempt = t.attempt) b ON true
         WHERE o.payment_mode = 'confirmed'
    ), money AS (
        SELECT o.order_id, o.state, o.fee_rate, l.*, e.earned
          FROM o
         CROSS JOIN LATERAL (
               SELECT COALESCE(sum(x.amount) FILTER (WHERE x.account = 'escrow'), 0) AS escrow,
                      count(DISTINCT x.txn_id) FILTER (WHERE x.kind = 'payout') AS payouts,
                      COALESCE(-sum(x.amount) FILTER (WHERE x.kind = 'payout' AND x.account = 'escrow'), 0) AS gross,
                      COALESCE(sum(x.amount) FILTER (WHERE x.kind = 'payout' AND x.account = 'platform'), 0) AS fee,
                      COALESCE(sum(x.amount) FILTER (WHERE x.kind = 'payout' AND x.account = 'seller'), 0) AS net,
                      count(*) FILTER (WHERE x.kind IN ('charge','refund') AND x.charge_id IS NULL
                                         AND o.payment_mode = 'confirmed') AS unlinked,
                      count(*) FILTER (WHERE x.charge_id IS NOT NULL AND o.payment_mode <> 'confirmed') AS linked
                 FROM @extschema@.ledger_entries x WHERE x.order_id = o.order_id) l
         CROSS JOIN LATERAL (
               SELECT COALESCE(sum(m.amount) FILTER (WHERE m.state = 'completed'), 0) AS earned
                 FROM @extschema@.order_milestones m WHERE m.order_id = o.order_id) e
    )
    SELECT t.order_id, format('ledger transaction %s does not balance (sums to %s)', t.txn_id, t.total)
      FROM txn t WHERE t.total <> 0
    UNION ALL
    SELECT t.order_id, format('ledger transaction %s mixes kinds or currencies', t.txn_id)
      FROM txn t WHERE t.kinds > 1 OR t.wrong_currency OR t.charges > 1
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
    -- Charges (confirmed mode).
    UNION ALL
    SELECT c.order_id, format('recorded-mode order has charge %s', c.charge_id)
      FROM ch c WHERE c.payment_mode <> 'confirmed'
    UNION ALL
    SELECT x.order_id, format('milestone %s awaits payment without an open charge', x.position)
      FROM ms_charges x WHERE x.state = 'awaiting_payment' AND x.open <> 1
    UNION ALL
    SELECT x.order_id, format('milestone %s is %s but has %s succeeded charges', x.position, x.state, x.paid)
      FROM ms_charges x
     WHERE x.payment_mode = 'confirmed'
       AND x.paid <> CASE WHEN x.state IN ('in_progress','delivered','completed','refunded') THEN 1 ELSE 0 END
    UNION ALL
    SELECT c.order_id, format('charge %s is %s but milestone %s is %s', c.charge_id, c.state, c.position, c.milestone_state)
      FROM ch c
     WHERE (c.state IN ('requested','failed') AND c.milestone_state IS DISTINCT FROM 'awaiting_payment')
        OR (c.state = 'succeeded' AND c.milestone_state NOT IN ('in_progress','delivered','completed','refunded'))
    UNION ALL
    SELECT c.order_id, format('charge %s has %s attempt rows for %s attempts', c.charge_id, c.nattempts, c.attempts)
      FROM ch c WHERE c.nattempts <> c.attempts
    UNION ALL
    SELECT c.order_id, format('charge %s is %s with %s wanted successes', c.charge_id, c.state, c.wanted)
      FROM ch c WHERE c.wanted <> CASE WHEN c.state = 'succeeded' THEN 1 ELSE 0 END
    UNION ALL
    SELECT c.order_id, format('charge %s is %s but its last attempt is %s', c.charge_id, c.state, c.last_state)
      FROM ch c WHERE c.state IN ('requested','failed') AND c.last_state IS DISTINCT FROM c.state
    UNION ALL
    SELECT x.order_id, format('charge %s attempt %s is %s but was booked %s times (%s)',
                              x.charge_id, x.attempt, x.state, x.charges, x.charged)
      FROM per_attempt x
     WHERE x.charges <> CASE WHEN x.state = 'succeeded' THEN 1 ELSE 0 END
        OR (x.charges = 1 AND x.charged IS DISTINCT FROM x.amount)
    UNION ALL
    SELECT x.order_id, format('charge %s attempt %s (%s%s) was refunded %s times (%s)',
                              x.charge_id, x.attempt, x.state,
                              CASE WHEN x.wanted THEN ', wanted' WHEN NOT x.wanted THEN ', not wanted' ELSE '' END,
                              x.refunds, x.refunded)
      FROM per_attempt x
     WHERE x.refunds <> CASE WHEN x.state = 'succeeded' AND (NOT x.wanted OR x.milestone_state = 'refunded') THEN 1 ELSE 0 END
        OR (x.refunds = 1 AND x.refunded IS DISTINCT FROM x.amount)
    UNION ALL
    SELECT x.order_id, format('charge %s attempt %s has %s refund rows for %s ledger refunds',
                              x.charge_id, x.attempt, x.refund_rows, x.refunds)
      FROM per_attempt x
     WHERE x.refund_rows <> x.refunds
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
       AND (x.gross <> x.earned OR x.fee + x.net <> x.gross OR x.fee <> @extschema@._fee(x.gross, x.fee_rate))
    UNION ALL
    SELECT x.order_id, format('%s ledger charge or refund legs of a confirmed-mode order name no charge', x.unlinked)
      FROM money x WHERE x.unlinked > 0
    UNION ALL
    SELECT x.order_id, format('%s ledger legs of a recorded-mode order name a charge', x.linked)
      FROM money x WHERE x.linked > 0
    UNION ALL
    SELECT r.order_id, format('refund %s does not match its ledger transaction %s', r.refund_id, r.ledger_txn)
      FROM o JOIN @extschema@.order_refunds r ON r.order_id = o.order_id
     WHERE NOT EXISTS (SELECT FROM @extschema@.ledger_entries e
                        WHERE e.txn_id = r.ledger_txn AND e.order_id = r.order_id AND e.kind = 'refund'
                          AND e.account = 'buyer' AND e.amount = r.amount
                          AND e.charge_id = r.charge_id AND e.charge_attempt = r.charge_attempt);
END
$$;
COMMENT ON FUNCTION @extschema@._order_problems(bigint[], boolean) IS
    'The invariants of the given orders (structure; with p_money also the money, confirmed payments'' charges, attempts, late successes and refunds included): one row per violation.';

-- _seller_problems (the seller balances' invariants) is defined with the
-- tables it reads, in 40_earnings.sql.

-- check_invariants: empty when the books are sound.  Order-level problems
-- come with their order id; ledger-wide ones and sellers' with a NULL
-- order id (a seller's problem names the seller).
CREATE OR REPLACE FUNCTION @extschema@.check_invariants() RETURNS TABLE (order_id bigint, problem text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
    SELECT p.order_id, p.problem
      FROM @extschema@._order_problems(ARRAY(SELECT x.order_id FROM @extschema@.orders x), true) p
     ORDER BY p.order_id, p.problem;
    RETURN QUERY
    SELECT NULL::bigint, format('the whole ledger sums to %s, not 0', s.total)
      FROM (SELECT COALESCE(sum(e.amount), 0) AS total FROM @extschema@.ledger_entries e) s
     WHERE s.total <> 0;
    RETURN QUERY
    SELECT NULL::bigint, format('seller %s: %s', p.seller_id, p.problem)
      FROM @extschema@._seller_problems(NULL) p
     ORDER BY p.seller_id, p.problem;
END
$$;
