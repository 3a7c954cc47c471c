-- test/sql/36_row_rules.sql - the row rules of orders, order_milestones,
-- ledger_entries and events (1.0's CHECK constraints, one per rule), which
-- 1.1 evaluates in C through one CHECK constraint per table (issue 10:
-- PostgreSQL rebuilt every CHECK expression for every statement).
--
-- 1. Differential: thousands of generated rows, each judged twice: by the
--    rules written as SQL in the constraint's comment (the first false one
--    by name, as PostgreSQL applies CHECKs) and by the C function.  Every
--    row must get the same verdict, and every rule must be the verdict of
--    some row.
-- 2. Wiring: real INSERTs and UPDATEs, also with session_replication_role
--    = replica (no guard triggers), are refused by the rule's own name with
--    23514, the failing row in the DETAIL and the error's fields set.
BEGIN;
\ir ../fixtures/setup.psql
SELECT plan(25);

-- rules(constraint): the rules listed in a row-rules constraint's comment,
-- "name: SQL expression" per line, in name order (C collation).
CREATE FUNCTION pg_temp.rules(p_table text, p_constraint text)
RETURNS TABLE (name text, expr text) LANGUAGE sql AS $$
    SELECT split_part(l, ': ', 1), substr(l, length(split_part(l, ': ', 1)) + 3)
      FROM pg_constraint c,
           regexp_split_to_table(obj_description(c.oid, 'pg_constraint'), E'\n') WITH ORDINALITY AS t(l, n)
     WHERE c.conrelid = ('milestones.' || p_table)::regclass AND c.conname = p_constraint AND n > 1
     ORDER BY split_part(l, ': ', 1) COLLATE "C"
$$;
-- c_verdict(function, row): the rule the C function refuses the row by, or 'ok'.
CREATE FUNCTION pg_temp.c_verdict(p_function text, p_row anyelement) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_name text;
BEGIN
    EXECUTE format('SELECT milestones.%I($1)', p_function) USING p_row;
    RETURN 'ok';
EXCEPTION WHEN check_violation THEN
    GET STACKED DIAGNOSTICS v_name = CONSTRAINT_NAME;
    RETURN v_name;
END
$$;
-- compare(table, constraint, function, generated rows): mismatches, rows, the
-- rules some row breaks (a rule listed after another that the same rows
-- break can never be the verdict, as in 1.0: a row of an unknown state
-- always breaks orders_ended_has_completed_at or orders_placed_at_matches_state
-- first), and the first mismatch.
CREATE FUNCTION pg_temp.compare(p_table text, p_constraint text, p_function text, p_gen text,
                                OUT mismatches bigint, OUT n bigint, OUT seen text[], OUT example text)
LANGUAGE plpgsql AS $$
DECLARE
    v_case text;
    v_broken text;
BEGIN
    SELECT 'CASE ' || string_agg(format('WHEN (%s) IS FALSE THEN %L', expr, name), ' ' ORDER BY name COLLATE "C") || ' ELSE ''ok'' END',
           'ARRAY[' || string_agg(format('CASE WHEN (%s) IS FALSE THEN %L END', expr, name), ', ' ORDER BY name COLLATE "C") || ']'
      INTO v_case, v_broken FROM pg_temp.rules(p_table, p_constraint);
    EXECUTE format($q$
        WITH s AS MATERIALIZED (
            SELECT g.r, %s AS expected, %s AS broken, pg_temp.c_verdict(%L, g.r) AS actual
              FROM %s g, LATERAL (SELECT (g.r).*) x)
        SELECT count(*) FILTER (WHERE expected <> actual), count(*),
               (SELECT array_agg(b ORDER BY b COLLATE "C") FROM (SELECT DISTINCT b FROM s, unnest(s.broken) b WHERE b IS NOT NULL) d),
               min(format('%%s: expected %%s, C said %%s', r, expected, actual)) FILTER (WHERE expected <> actual)
          FROM s$q$, v_case, v_broken, p_function, p_gen)
      INTO mismatches, n, seen, example;
END
$$;
CREATE FUNCTION pg_temp.o(j jsonb) RETURNS milestones.orders LANGUAGE sql AS
    $$ SELECT jsonb_populate_record(NULL::milestones.orders, j) $$;
CREATE FUNCTION pg_temp.m(j jsonb) RETURNS milestones.order_milestones LANGUAGE sql AS
    $$ SELECT jsonb_populate_record(NULL::milestones.order_milestones, j) $$;

-- The rules listed are the 1.0 constraints, one by one (and 1.1's three for
-- cancel_milestone, 1.2's for confirmed payments).
SELECT is(ARRAY(SELECT name FROM pg_temp.rules('orders', 'orders_row_rules')),
          ARRAY['orders_buyer_id_positive','orders_buyer_is_not_seller','orders_cancel_note_length','orders_cancelled_by_length',
                'orders_currency_iso4217','orders_end_reason_valid','orders_ended_has_completed_at','orders_fee_rate_range',
                'orders_payment_mode_valid','orders_placed_at_matches_state','orders_reason_matches_state','orders_revisions_allowed_range',
                'orders_revisions_used_range','orders_seller_id_positive','orders_state_valid','orders_times_ordered'],
          'orders: the 16 rules (15 of 1.0, the payment mode of 1.2)');
SELECT is(ARRAY(SELECT name FROM pg_temp.rules('order_milestones', 'milestones_row_rules')),
          ARRAY['milestones_amount_positive','milestones_cancel_matches_state','milestones_cancel_note_length',
                'milestones_cancelled_by_length','milestones_completed_at_matches_state','milestones_completed_was_delivered',
                'milestones_days_range','milestones_delivered_has_deadline','milestones_deliveries_range',
                'milestones_delivery_note_length','milestones_in_progress_has_no_deadline','milestones_name_valid',
                'milestones_position_range','milestones_started_has_times','milestones_state_valid'],
          'order_milestones: the 15 rules (12 of 1.0, 3 of cancel_milestone)');
SELECT is(ARRAY(SELECT name FROM pg_temp.rules('ledger_entries', 'ledger_row_rules')),
          ARRAY['ledger_account_valid','ledger_amount_nonzero','ledger_charge_matches_kind','ledger_currency_iso4217','ledger_kind_valid',
                'ledger_position_matches_kind'],
          'ledger_entries: the 6 rules (5 of 1.0, the charge of 1.2)');
SELECT is(ARRAY(SELECT conname::text FROM pg_constraint
                 WHERE conrelid IN ('milestones.orders'::regclass, 'milestones.order_milestones'::regclass,
                                    'milestones.ledger_entries'::regclass, 'milestones.events'::regclass)
                   AND contype = 'c' ORDER BY 1),
          ARRAY['events_row_rules','ledger_row_rules','milestones_row_rules','orders_row_rules'],
          'one CHECK constraint per table');

-- 1. Differential.  Orders: every state with every shape of reasons and times ...
CREATE TEMP TABLE gen_orders AS
SELECT pg_temp.o(jsonb_build_object('order_id', 1, 'seller_id', 10, 'buyer_id', 20, 'category', 'design',
        'currency', 'USD', 'state', st, 'end_reason', er, 'cancel_reason', cr, 'cancelled_by', cb,
        'revisions_allowed', 1, 'revisions_used', 0, 'fee_rate', 0.1,
        'created_at', '2030-01-01 00:00+00', 'placed_at', pa, 'completed_at', ca, 'payment_mode', pm)) AS r
  FROM unnest(ARRAY['offered','active','completed','withdrawn','declined','cancelled','lost']) st,
       unnest(ARRAY[NULL,'finished','bogus','unpaid']) er,
       unnest(ARRAY['recorded','confirmed','cash']) pm,
       unnest(ARRAY[NULL,'mutual_agreement']) cr,
       unnest(ARRAY[NULL,'','agent']) cb,
       unnest(ARRAY[NULL,'2030-01-01 01:00+00','2029-12-31 23:00+00']) pa,
       unnest(ARRAY[NULL,'2030-01-01 02:00+00','2030-01-01 00:30+00','2029-12-31 22:00+00']) ca;
-- ... and every shape of ids, currency, revisions, fee and text lengths.
INSERT INTO gen_orders
SELECT pg_temp.o(jsonb_build_object('order_id', 1, 'seller_id', s, 'buyer_id', b, 'category', 'design',
        'currency', cur, 'state', 'offered', 'cancelled_by', cb, 'cancel_note', cn,
        'revisions_allowed', ra, 'revisions_used', ru, 'fee_rate', fr, 'created_at', '2030-01-01 00:00+00'))
  FROM unnest(ARRAY[10, 0, -1, 20]) s,
       unnest(ARRAY[20, 0]) b,
       unnest(ARRAY['USD','usd','US','USDX','ÜSD','U1D']) cur,
       unnest(ARRAY[NULL, -1, 0, 1]) ra,
       unnest(ARRAY[-1, 0, 1, 2]) ru,
       unnest(ARRAY['0','0.99999','1','-0.00001','NaN']::numeric[]) fr,
       unnest(ARRAY[NULL, 'a', repeat('a', 200), repeat('a', 201)]) cb,
       unnest(ARRAY[NULL, repeat('n', 2000), repeat('n', 2001)]) cn
 WHERE (cb IS NULL OR (s = 10 AND cur = 'USD' AND ra = 1 AND fr = 0))
   AND (cn IS NULL OR (s = 10 AND cur = 'USD' AND ra = 1 AND fr = 0));
SELECT results_eq($$SELECT mismatches, example FROM pg_temp.compare('orders', 'orders_row_rules', '_orders_row_valid', 'gen_orders')$$,
                  $$VALUES (0::bigint, NULL::text)$$, 'orders: the C rules give the SQL rules'' verdict on every generated row');
SELECT cmp_ok((pg_temp.compare('orders', 'orders_row_rules', '_orders_row_valid', 'gen_orders')).n, '>', 3000::bigint,
              'orders: over 3,000 rows compared');
SELECT is((pg_temp.compare('orders', 'orders_row_rules', '_orders_row_valid', 'gen_orders')).seen,
          ARRAY(SELECT name FROM pg_temp.rules('orders', 'orders_row_rules') ORDER BY name COLLATE "C"),
          'orders: some row breaks each rule');

-- Milestones: every state with every shape of times, deliveries and cancel columns ...
CREATE TEMP TABLE gen_milestones AS
SELECT pg_temp.m(jsonb_build_object('order_id', 1, 'position', 1, 'name', 'Design', 'days', 3, 'amount', 100,
        'final', false, 'state', st, 'started_at', sd[1], 'due_at', sd[2], 'delivered_at', da, 'respond_by', rb,
        'completed_at', ca, 'deliveries', d, 'cancel_reason', c[1], 'cancelled_by', c[2], 'cancel_note', c[3])) AS r
  FROM unnest(ARRAY['pending','in_progress','delivered','completed','skipped','refunded','cancelled','awaiting_payment','lost']) st,
       (VALUES (ARRAY[NULL, NULL]), (ARRAY['2030-01-01 00:00+00', NULL]), (ARRAY[NULL, '2030-01-04 00:00+00']),
               (ARRAY['2030-01-01 00:00+00', '2030-01-04 00:00+00'])) sd0(sd),
       unnest(ARRAY[NULL, '2030-01-02 00:00+00']) da,
       unnest(ARRAY[NULL, '2030-01-07 00:00+00', '2030-01-02 00:00+00', '2030-01-01 00:00+00']) rb,
       unnest(ARRAY[NULL, '2030-01-03 00:00+00']) ca,
       unnest(ARRAY[0, 1]) d,
       (VALUES (ARRAY[NULL, NULL, NULL]), (ARRAY['mutual_agreement', 'agent', NULL]), (ARRAY['mutual_agreement', 'agent', 'note']),
               (ARRAY[NULL, NULL, 'note']), (ARRAY['mutual_agreement', NULL, NULL]), (ARRAY[NULL, 'agent', NULL])) c0(c);
-- ... and every shape of position, name, days, amount, counts and text lengths.
INSERT INTO gen_milestones
SELECT pg_temp.m(jsonb_build_object('order_id', 1, 'position', p, 'name', nm, 'days', dy, 'amount', am,
        'final', true, 'state', 'pending', 'deliveries', d, 'delivery_note', dn, 'cancelled_by', cb, 'cancel_note', cn))
  FROM unnest(ARRAY[0, 1, 20, 21]::smallint[]) p,
       unnest(ARRAY['', ' ', 'x', ' a ', E'\t\n', repeat('x', 200), repeat('x', 201), E'\u00a0', E'\u3000', 'é',
                    E'\x1c', E'\x1f', E'\x1d\u00a0', E'\x7f', E'\x01 ']) nm,
       unnest(ARRAY[0, 1, 365, 366]::smallint[]) dy,
       unnest(ARRAY['0', '0.01', '-1', 'NaN']::numeric[]) am,
       unnest(ARRAY[-1, 0]) d,
       unnest(ARRAY[NULL, repeat('n', 2000), repeat('n', 2001)]) dn,
       unnest(ARRAY[NULL, '', repeat('a', 201)]) cb,
       unnest(ARRAY[NULL, repeat('n', 2001)]) cn
 WHERE (dn IS NULL OR (p = 1 AND dy = 1 AND am = 0.01 AND d = 0))
   AND (cb IS NULL OR (p = 1 AND dy = 1 AND am = 0.01 AND d = 0 AND dn IS NULL))
   AND (cn IS NULL OR (p = 1 AND dy = 1 AND am = 0.01 AND d = 0 AND dn IS NULL));
SELECT results_eq($$SELECT mismatches, example FROM pg_temp.compare('order_milestones', 'milestones_row_rules', '_milestones_row_valid', 'gen_milestones')$$,
                  $$VALUES (0::bigint, NULL::text)$$, 'order_milestones: the C rules give the SQL rules'' verdict on every generated row');
SELECT cmp_ok((pg_temp.compare('order_milestones', 'milestones_row_rules', '_milestones_row_valid', 'gen_milestones')).n, '>', 5000::bigint,
              'order_milestones: over 5,000 rows compared');
SELECT is((pg_temp.compare('order_milestones', 'milestones_row_rules', '_milestones_row_valid', 'gen_milestones')).seen,
          ARRAY(SELECT name FROM pg_temp.rules('order_milestones', 'milestones_row_rules') ORDER BY name COLLATE "C"),
          'order_milestones: some row breaks each rule');

-- Ledger entries and events.
CREATE TEMP TABLE gen_ledger AS
SELECT jsonb_populate_record(NULL::milestones.ledger_entries, jsonb_build_object('entry_id', 1, 'txn_id', 1, 'order_id', 1,
        'position', p, 'kind', k, 'account', a, 'amount', am, 'currency', cur, 'created_at', '2030-01-01 00:00+00',
        'charge_id', ch[1], 'charge_attempt', ch[2])) AS r
  FROM unnest(ARRAY[NULL, 1]) p,
       (VALUES (ARRAY[NULL, NULL]::bigint[]), (ARRAY[5, 1]), (ARRAY[5, NULL]), (ARRAY[0, 1]), (ARRAY[5, 0])) ch0(ch),
       unnest(ARRAY['charge','payout','refund','bonus']) k,
       unnest(ARRAY['buyer','escrow','seller','platform','bank']) a,
       unnest(ARRAY['0','1','-1','NaN']::numeric[]) am,
       unnest(ARRAY['USD','usd']) cur;
SELECT results_eq($$SELECT mismatches, example FROM pg_temp.compare('ledger_entries', 'ledger_row_rules', '_ledger_row_valid', 'gen_ledger')$$,
                  $$VALUES (0::bigint, NULL::text)$$, 'ledger_entries: the C rules give the SQL rules'' verdict on every generated row');
SELECT is((pg_temp.compare('ledger_entries', 'ledger_row_rules', '_ledger_row_valid', 'gen_ledger')).seen,
          ARRAY(SELECT name FROM pg_temp.rules('ledger_entries', 'ledger_row_rules') ORDER BY name COLLATE "C"),
          'ledger_entries: some row breaks each rule');
CREATE TEMP TABLE gen_events AS
SELECT jsonb_populate_record(NULL::milestones.events, jsonb_build_object('event_id', 1, 'order_id', o[1], 'event', 'x',
        'actor_role', ar, 'order_state', o[2], 'detail', '{}', 'created_at', '2030-01-01 00:00+00',
        'recorded_at', '2030-01-01 00:00+00', 'txid', 1, 'txid_cluster', 0)) AS r
  FROM unnest(ARRAY['seller','buyer','support','system','payments','robot', NULL]) ar,
       (VALUES (ARRAY['1', 'active']), (ARRAY[NULL, NULL]), (ARRAY[NULL, 'active']), (ARRAY['1', NULL])) o0(o);
SELECT results_eq($$SELECT mismatches, n, seen FROM pg_temp.compare('events', 'events_row_rules', '_events_row_valid', 'gen_events')$$,
                  $$VALUES (0::bigint, 28::bigint, ARRAY['events_actor_role_valid', 'events_order_matches_state'])$$,
                  'events: the same verdict on every actor role and order/state shape');

-- 2. Wiring: real writes, with the guard triggers switched off so that the
-- CHECK alone refuses them (a CHECK holds in replica mode too).
SELECT pg_temp.offer3() AS o \gset
SET LOCAL session_replication_role = replica;
SELECT throws_ok(format($$UPDATE milestones.orders SET end_reason = 'bogus' WHERE order_id = %s$$, :o),
                 '23514', 'new row for relation "orders" violates check constraint "orders_end_reason_valid"',
                 'an UPDATE breaking an order rule is refused by that rule, even in replica mode');
SELECT throws_ok(format($$UPDATE milestones.orders SET currency = 'usd' WHERE order_id = %s$$, :o),
                 '23514', 'new row for relation "orders" violates check constraint "orders_currency_iso4217"',
                 'the currency rule');
SELECT throws_ok(format($$INSERT INTO milestones.order_milestones (order_id, position, name, days, amount, final)
                          VALUES (%s, 4, '   ', 3, 10, false)$$, :o),
                 '23514', 'new row for relation "order_milestones" violates check constraint "milestones_name_valid"',
                 'an INSERT breaking a milestone rule is refused by that rule');
SELECT throws_ok(format($$UPDATE milestones.order_milestones SET state = 'delivered', started_at = now(), due_at = now()
                           WHERE order_id = %s AND position = 1$$, :o),
                 '23514', 'new row for relation "order_milestones" violates check constraint "milestones_delivered_has_deadline"',
                 'a delivered milestone without its deadline');
SELECT throws_ok(format($$INSERT INTO milestones.ledger_entries (txn_id, order_id, position, kind, account, amount, currency, created_at)
                          VALUES (1, %s, 1, 'charge', 'escrow', 0, 'USD', now())$$, :o),
                 '23514', 'new row for relation "ledger_entries" violates check constraint "ledger_amount_nonzero"',
                 'a ledger entry of zero');
SELECT throws_ok(format($$INSERT INTO milestones.events (order_id, event, actor_role, order_state, created_at)
                          VALUES (%s, 'x', 'robot', 'offered', now())$$, :o),
                 '23514', 'new row for relation "events" violates check constraint "events_actor_role_valid"',
                 'an event by an unknown actor role');
-- The error's fields and DETAIL, as PostgreSQL's own CHECK error has them.
CREATE FUNCTION pg_temp.error_fields(p_sql text) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    s text; t text; c text; d text;
BEGIN
    EXECUTE p_sql;
    RETURN NULL;
EXCEPTION WHEN check_violation THEN
    GET STACKED DIAGNOSTICS s = SCHEMA_NAME, t = TABLE_NAME, c = CONSTRAINT_NAME, d = PG_EXCEPTION_DETAIL;
    RETURN ARRAY[s, t, c, d];
END
$$;
SELECT is(pg_temp.error_fields(format($$UPDATE milestones.order_milestones SET days = 400 WHERE order_id = %s AND position = 2$$, :o)),
          ARRAY['milestones', 'order_milestones', 'milestones_days_range',
                format('Failing row contains (%s, 2, Animation, 400, 150.00, f, pending, null, null, null, null, null, 0, null, null, null, null).', :o)],
          'schema, table and constraint fields, and the failing row in the DETAIL');
SELECT is((pg_temp.error_fields(format($$UPDATE milestones.orders SET cancel_note = repeat('n', 2001) WHERE order_id = %s$$, :o)))[4],
          format('Failing row contains (%s, 10, 20, design, USD, offered, null, null, null, %s..., 1, 0, 0.00000, %s, null, null, recorded).',
                 :o, repeat('n', 64), (SELECT created_at FROM milestones.orders WHERE order_id = :o)),
          'long values are cut at 64 characters in the DETAIL, as PostgreSQL does');
RESET session_replication_role;
-- A column renamed by hand: the rules refuse to guess (this backend had
-- already mapped the row type above) rather than read another column.
SAVEPOINT renamed;
ALTER TABLE milestones.events RENAME COLUMN actor_role TO actor;
SELECT throws_ok(format($$INSERT INTO milestones.events (order_id, event, actor, order_state, created_at)
                          VALUES (%s, 'x', 'robot', 'offered', now())$$, :o),
                 '42703', 'column "actor_role" of table milestones.events does not exist',
                 'a renamed column: the row is refused, not checked against the wrong column');
ROLLBACK TO SAVEPOINT renamed;
-- A row that keeps the rules passes, and the API's own writes pass.
SELECT lives_ok(format($$SELECT milestones.place_order(%s, 20)$$, :o), 'the API''s writes keep every rule');
SELECT is((SELECT count(*) FROM milestones.order_milestones WHERE order_id = :o AND state = 'in_progress'), 1::bigint,
          'and were written');
-- Without EXECUTE on the check function, a role cannot write the table
-- even where it was granted INSERT: the rules run with the writer's rights.
SELECT is(has_function_privilege('milestones_app', 'milestones._orders_row_valid(milestones.orders)', 'EXECUTE'), false,
          'the row check functions are the owner''s (the API runs as the owner)');

SELECT * FROM finish();
ROLLBACK;
