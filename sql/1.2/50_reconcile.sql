-------------------------------------------------------------------------------
-- Reconciliation against the provider's settlement report (SPEC section 12).
--
-- Payments teams compare the provider's report with what they recorded,
-- every day, line by line, and look only at the differences.  reconcile()
-- takes the report as a JSON array (load a CSV file with \copy into a
-- temporary table, then pass (SELECT jsonb_agg(r) FROM that_table r)) and
-- returns one row per difference; no rows when both sides agree.
--
-- Our side is every success recorded in [since, until) (the whole history
-- when they are NULL): every charge attempt reported succeeded (late ones
-- included: the provider took that money), every refund and withdrawal
-- reported succeeded.  A report line is matched by (provider_ref, kind)
-- against every success we ever recorded, so a line about yesterday's
-- success is not "missing here".
-------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.reconcile(report jsonb, since timestamptz DEFAULT NULL, until timestamptz DEFAULT NULL)
RETURNS TABLE (provider_ref text, kind text, problem text, ours numeric, theirs numeric)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_bad text;
    v_index integer;
BEGIN
    PERFORM @extschema@._not_null(reconcile.report, 'report');
    IF pg_catalog.jsonb_typeof(reconcile.report) OPERATOR(pg_catalog.<>) 'array' THEN
        RAISE EXCEPTION 'report must be a JSON array'
            USING ERRCODE = '22023',
                  DETAIL = pg_catalog.format('Got a JSON %s.', pg_catalog.jsonb_typeof(reconcile.report)),
                  HINT = 'Send [{"provider_ref": "...", "kind": "charge", "amount": "150.00", "currency": "USD"}, ...].';
    END IF;
    IF reconcile.since IS NOT NULL AND reconcile.until IS NOT NULL AND reconcile.since OPERATOR(pg_catalog.>=) reconcile.until THEN
        RAISE EXCEPTION 'since must be before until'
            USING ERRCODE = '22023',
                  DETAIL = pg_catalog.format('Got since %s and until %s.', reconcile.since, reconcile.until);
    END IF;
    -- The first bad element, by its position (1-based), and what is wrong.
    SELECT e.i, CASE
               WHEN pg_catalog.jsonb_typeof(e.v) OPERATOR(pg_catalog.<>) 'object'
                   THEN pg_catalog.format('it is a JSON %s, not an object', pg_catalog.jsonb_typeof(e.v))
               WHEN EXISTS (SELECT FROM pg_catalog.jsonb_object_keys(e.v) k
                             WHERE k NOT IN ('provider_ref', 'kind', 'amount', 'currency'))
                   THEN pg_catalog.format('it has unknown keys: %s',
                            (SELECT pg_catalog.string_agg(k, ', ' ORDER BY k) FROM pg_catalog.jsonb_object_keys(e.v) k
                              WHERE k NOT IN ('provider_ref', 'kind', 'amount', 'currency')))
               WHEN pg_catalog.jsonb_typeof(e.v -> 'provider_ref') IS DISTINCT FROM 'string'
                    OR pg_catalog.length(e.v ->> 'provider_ref') NOT BETWEEN 1 AND 255
                   THEN 'provider_ref must be a string of 1 to 255 characters'
               WHEN pg_catalog.jsonb_typeof(e.v -> 'kind') IS DISTINCT FROM 'string'
                    OR (e.v ->> 'kind') NOT IN ('charge', 'refund', 'withdrawal')
                   THEN 'kind must be "charge", "refund" or "withdrawal"'
               WHEN pg_catalog.jsonb_typeof(e.v -> 'amount') IS NULL
                    OR pg_catalog.jsonb_typeof(e.v -> 'amount') NOT IN ('number', 'string')
                    OR (e.v ->> 'amount') !~ '^-?[0-9]{1,12}(\.[0-9]{1,2})?$'
                   THEN 'amount must be a decimal number with at most 2 decimals (a JSON number or string)'
               WHEN pg_catalog.jsonb_typeof(e.v -> 'currency') IS DISTINCT FROM 'string'
                    OR (e.v ->> 'currency') !~ '^[A-Z]{3}$'
                   THEN 'currency must be an ISO 4217 code'
           END
      INTO v_index, v_bad
      FROM pg_catalog.jsonb_array_elements(reconcile.report) WITH ORDINALITY AS e(v, i)
     WHERE pg_catalog.jsonb_typeof(e.v) OPERATOR(pg_catalog.<>) 'object'
        OR EXISTS (SELECT FROM pg_catalog.jsonb_object_keys(e.v) k WHERE k NOT IN ('provider_ref', 'kind', 'amount', 'currency'))
        OR pg_catalog.jsonb_typeof(e.v -> 'provider_ref') IS DISTINCT FROM 'string'
        OR pg_catalog.length(e.v ->> 'provider_ref') NOT BETWEEN 1 AND 255
        OR pg_catalog.jsonb_typeof(e.v -> 'kind') IS DISTINCT FROM 'string'
        OR (e.v ->> 'kind') NOT IN ('charge', 'refund', 'withdrawal')
        OR pg_catalog.jsonb_typeof(e.v -> 'amount') IS NULL
        OR pg_catalog.jsonb_typeof(e.v -> 'amount') NOT IN ('number', 'string')
        OR (e.v ->> 'amount') !~ '^-?[0-9]{1,12}(\.[0-9]{1,2})?$'
        OR pg_catalog.jsonb_typeof(e.v -> 'currency') IS DISTINCT FROM 'string'
        OR (e.v ->> 'currency') !~ '^[A-Z]{3}$'
     ORDER BY e.i
     LIMIT 1;
    IF v_index IS NOT NULL THEN
        RAISE EXCEPTION 'report element % is not a settlement line', v_index
            USING ERRCODE = '22023',
                  DETAIL = pg_catalog.format('Element %s: %s.', v_index, v_bad),
                  HINT = 'Each element is {"provider_ref": "...", "kind": "charge"|"refund"|"withdrawal", "amount": "150.00", "currency": "USD"}.';
    END IF;

    RETURN QUERY
    WITH ours AS (
        -- Every success we recorded, with whether it lies in the window.
        SELECT a.provider_ref AS ref, 'charge'::text AS kind, c.amount, c.currency, a.reported_at AS at
          FROM @extschema@.charge_attempts a
          JOIN @extschema@.order_charges c ON c.charge_id = a.charge_id
         WHERE a.state = 'succeeded'
        UNION ALL
        SELECT r.provider_ref, 'refund', r.amount, r.currency, r.reported_at
          FROM @extschema@.order_refunds r WHERE r.state = 'succeeded'
        UNION ALL
        SELECT w.provider_ref, 'withdrawal', w.amount, w.currency, w.reported_at
          FROM @extschema@.seller_withdrawals w WHERE w.state = 'succeeded'
    ), windowed AS (
        SELECT o.* FROM ours o
         WHERE (reconcile.since IS NULL OR o.at >= reconcile.since)
           AND (reconcile.until IS NULL OR o.at < reconcile.until)
    ), theirs AS (
        SELECT e.v ->> 'provider_ref' AS ref, e.v ->> 'kind' AS kind,
               (e.v ->> 'amount')::numeric AS amount, e.v ->> 'currency' AS currency
          FROM pg_catalog.jsonb_array_elements(reconcile.report) e(v)
    )
    SELECT t.ref, t.kind, 'missing here'::text, NULL::numeric, t.amount
      FROM theirs t
     WHERE NOT EXISTS (SELECT FROM ours o WHERE o.ref = t.ref AND o.kind = t.kind)
    UNION ALL
    SELECT w.ref, w.kind, 'missing there', w.amount, NULL::numeric
      FROM windowed w
     WHERE w.ref IS NOT NULL
       AND NOT EXISTS (SELECT FROM theirs t WHERE t.ref = w.ref AND t.kind = w.kind)
    UNION ALL
    SELECT t.ref, t.kind, 'amount differs', o.amount, t.amount
      FROM theirs t JOIN ours o ON o.ref = t.ref AND o.kind = t.kind
     WHERE o.amount <> t.amount
    UNION ALL
    SELECT t.ref, t.kind, 'currency differs', o.amount, t.amount
      FROM theirs t JOIN ours o ON o.ref = t.ref AND o.kind = t.kind
     WHERE o.currency <> t.currency
    UNION ALL
    SELECT NULL::text, w.kind, 'no provider_ref', w.amount, NULL::numeric
      FROM windowed w
     WHERE w.ref IS NULL
     ORDER BY 3, 2, 1;
END
$$;
COMMENT ON FUNCTION @extschema@.reconcile(jsonb, timestamptz, timestamptz) IS
    'Support/reader: compares a provider''s settlement report (a JSON array of {provider_ref, kind, amount, currency}) with the successes recorded in [since, until): one row per difference (missing here, missing there, amount differs, currency differs, no provider_ref); no rows when both sides agree.';
REVOKE ALL ON FUNCTION @extschema@.reconcile(jsonb, timestamptz, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.reconcile(jsonb, timestamptz, timestamptz) TO milestones_support, milestones_reader;
