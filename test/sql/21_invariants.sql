-- test/sql/21_invariants.sql - SPEC section 6: every check of
-- _order_problems() / check_invariants() fires on data corrupted on purpose
-- (as owner, with the guard switched off by session_replication_role), and
-- the guard refuses the same corruption when its triggers are on (23514).
BEGIN;
\ir ../fixtures/setup.psql
SELECT plan(45);

CREATE TEMP TABLE ids (name text PRIMARY KEY, id bigint);
CREATE FUNCTION pg_temp.id(text) RETURNS bigint LANGUAGE sql AS $$ SELECT id FROM ids WHERE name = $1 $$;
-- make(name, steps): a 3-milestone order (100 + 150 + 250) taken through API steps.
CREATE FUNCTION pg_temp.make(p_name text, p_steps text[] DEFAULT '{}') RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v bigint := pg_temp.offer3(1);
    s text;
BEGIN
    INSERT INTO ids VALUES (p_name, v);
    FOREACH s IN ARRAY p_steps LOOP
        CASE s
            WHEN 'place'   THEN PERFORM milestones.place_order(v, 20);
            WHEN 'deliver' THEN PERFORM milestones.deliver(v, 10);
            WHEN 'accept'  THEN PERFORM milestones.accept(v, 20);
            WHEN 'stop'    THEN PERFORM milestones.stop(v, 20);
            WHEN 'withdraw' THEN PERFORM milestones.withdraw_offer(v, 10);
            WHEN 'cancel'  THEN PERFORM milestones.cancel(v, 'tester', 'mutual_agreement');
        END CASE;
    END LOOP;
    RETURN v;
END
$$;
-- reported(name, pattern): check_invariants() reports this problem for the order.
CREATE FUNCTION pg_temp.reported(text, text) RETURNS boolean LANGUAGE sql AS
    $$ SELECT EXISTS (SELECT FROM milestones.check_invariants() WHERE order_id = pg_temp.id($1) AND problem LIKE $2) $$;
-- problems(name): what check_invariants() says about one order (for diagnostics).
CREATE FUNCTION pg_temp.problems(text) RETURNS text LANGUAGE sql AS
    $$ SELECT string_agg(problem, ' | ') FROM milestones.check_invariants() WHERE order_id = pg_temp.id($1) $$;
-- charge_txn(name, position): the txn_id of a milestone's charge.
CREATE FUNCTION pg_temp.charge_txn(text, integer) RETURNS bigint LANGUAGE sql AS
    $$ SELECT txn_id FROM milestones.ledger_entries WHERE order_id = pg_temp.id($1) AND kind = 'charge' AND position = $2 $$;
-- post(name, position, kind, legs): a hand-written ledger transaction (legs: account => amount).
CREATE FUNCTION pg_temp.post(p_name text, p_position integer, p_kind text, p_legs jsonb, p_currency text DEFAULT 'USD')
RETURNS void LANGUAGE sql AS $$
    INSERT INTO milestones.ledger_entries (txn_id, order_id, position, kind, account, amount, currency, created_at)
    SELECT t.txn, pg_temp.id(p_name), p_position, p_kind, l.key, l.value::numeric, p_currency, milestones.now()
      FROM (SELECT nextval('milestones.ledger_txn_id_seq') AS txn) t, jsonb_each_text(p_legs) l;
$$;

-- Sound orders in every state, built through the API.
UPDATE milestones.settings SET seller_fee_rate = 0.2;
SELECT pg_temp.make('clean_offer'), pg_temp.make('clean_active', '{place,deliver,accept}'),
       pg_temp.make('clean_done', '{place,deliver,accept,deliver,accept,deliver,accept}'),
       pg_temp.make('clean_cancel', '{place,deliver,accept,cancel}'),
       pg_temp.make('unbalanced', '{place}'), pg_temp.make('mixed_kind', '{place}'),
       pg_temp.make('mixed_currency', '{place}'), pg_temp.make('double_charge', '{place}'),
       pg_temp.make('never_started', '{place}'), pg_temp.make('missing_refund', '{place,cancel}'),
       pg_temp.make('extra_refund', '{place,deliver,accept}'),
       pg_temp.make('escrow_left', '{place,deliver,stop}'), pg_temp.make('two_payouts', '{place,deliver,stop}'),
       pg_temp.make('early_payout', '{place}'), pg_temp.make('no_payout', '{place,deliver,accept,cancel}'),
       pg_temp.make('bad_fee', '{place,deliver,accept,deliver,stop}'), pg_temp.make('bad_gross', '{place,deliver,stop}'),
       pg_temp.make('gap'), pg_temp.make('two_running', '{place}'), pg_temp.make('out_of_order', '{place}'),
       pg_temp.make('active_idle', '{place}'), pg_temp.make('withdrawn_pending', '{}'),
       pg_temp.make('offered_started', '{}'), pg_temp.make('finished_short', '{place,deliver,accept}'),
       pg_temp.make('final_flag'), pg_temp.make('no_milestones');
SET CONSTRAINTS ALL IMMEDIATE;   -- run the deferred checks of the setup now
SET CONSTRAINTS ALL DEFERRED;

SELECT is_empty('SELECT * FROM milestones.check_invariants()', 'the books are sound before the corruption');

-------------------------------------------------------------------------------
-- Corrupt each order in one way, with every user trigger off (owner only).
-------------------------------------------------------------------------------
SET LOCAL session_replication_role = replica;

-- money
UPDATE milestones.ledger_entries SET amount = 90 WHERE txn_id = pg_temp.charge_txn('unbalanced', 1) AND account = 'escrow';
UPDATE milestones.ledger_entries SET kind = 'refund' WHERE txn_id = pg_temp.charge_txn('mixed_kind', 1) AND account = 'escrow';
UPDATE milestones.ledger_entries SET currency = 'EUR' WHERE txn_id = pg_temp.charge_txn('mixed_currency', 1);
SELECT pg_temp.post('double_charge', 1, 'charge', '{"buyer": -100, "escrow": 100}');
SELECT pg_temp.post('never_started', 2, 'charge', '{"buyer": -150, "escrow": 150}');
DELETE FROM milestones.ledger_entries WHERE order_id = pg_temp.id('missing_refund') AND kind = 'refund';
SELECT pg_temp.post('extra_refund', 1, 'refund', '{"escrow": -100, "buyer": 100}');
DELETE FROM milestones.ledger_entries WHERE order_id = pg_temp.id('escrow_left') AND kind = 'payout';
SELECT pg_temp.post('two_payouts', NULL, 'payout', '{"seller": 5, "platform": -5}');
SELECT pg_temp.post('early_payout', NULL, 'payout', '{"escrow": -100, "seller": 80, "platform": 20}');
DELETE FROM milestones.ledger_entries WHERE order_id = pg_temp.id('no_payout') AND kind = 'payout';
UPDATE milestones.ledger_entries SET amount = amount + CASE account WHEN 'seller' THEN 1 ELSE -1 END
 WHERE order_id = pg_temp.id('bad_fee') AND kind = 'payout' AND account IN ('seller','platform');
-- bad_gross: a balanced payout of 250 where only 100 was completed
DELETE FROM milestones.ledger_entries WHERE order_id = pg_temp.id('bad_gross') AND kind = 'payout';
SELECT pg_temp.post('bad_gross', NULL, 'payout', '{"escrow": -250, "seller": 200, "platform": 50}');

-- structure
UPDATE milestones.order_milestones SET position = 5 WHERE order_id = pg_temp.id('gap') AND position = 3;
UPDATE milestones.order_milestones SET state = 'in_progress', started_at = milestones.now(), due_at = milestones.now() + interval '1 day'
 WHERE order_id = pg_temp.id('two_running') AND position = 2;
UPDATE milestones.order_milestones SET state = 'pending', started_at = NULL, due_at = NULL
 WHERE order_id = pg_temp.id('out_of_order') AND position = 1;
UPDATE milestones.order_milestones SET state = 'in_progress', started_at = milestones.now(), due_at = milestones.now() + interval '1 day'
 WHERE order_id = pg_temp.id('out_of_order') AND position = 2;
UPDATE milestones.order_milestones SET state = 'skipped', started_at = NULL, due_at = NULL
 WHERE order_id = pg_temp.id('active_idle') AND position = 1;
UPDATE milestones.orders SET state = 'withdrawn', completed_at = created_at WHERE order_id = pg_temp.id('withdrawn_pending');
UPDATE milestones.order_milestones SET state = 'in_progress', started_at = milestones.now(), due_at = milestones.now() + interval '1 day'
 WHERE order_id = pg_temp.id('offered_started') AND position = 1;
UPDATE milestones.orders SET state = 'completed', end_reason = 'finished', completed_at = milestones.now()
 WHERE order_id = pg_temp.id('finished_short');
UPDATE milestones.order_milestones SET final = false WHERE order_id = pg_temp.id('final_flag') AND position = 3;
DELETE FROM milestones.order_milestones WHERE order_id = pg_temp.id('no_milestones');

-- the whole ledger: an orphan entry of no order (invisible to the per-order checks)
INSERT INTO milestones.ledger_entries (txn_id, order_id, position, kind, account, amount, currency, created_at)
VALUES (nextval('milestones.ledger_txn_id_seq'), 999999, 1, 'charge', 'buyer', -7.00, 'USD', milestones.now());

SET LOCAL session_replication_role = origin;

-------------------------------------------------------------------------------
-- One assertion per check: check_invariants() names the order and problem.
-------------------------------------------------------------------------------
-- 1. balanced transactions; one kind and the order's currency per transaction
SELECT ok(pg_temp.reported('unbalanced', 'ledger transaction % does not balance (sums to -10.00)'), 'an unbalanced transaction is reported');
SELECT ok(pg_temp.reported('mixed_kind', 'ledger transaction % mixes kinds or currencies'), 'a transaction mixing kinds is reported');
SELECT ok(pg_temp.reported('mixed_currency', 'ledger transaction % mixes kinds or currencies'), 'a transaction in another currency than the order''s is reported');
-- 2. every started milestone charged exactly once, a never-started one never
SELECT ok(pg_temp.reported('double_charge', 'milestone 1 is in_progress but was charged 2 times (200.00)'), 'a double charge is reported');
SELECT ok(pg_temp.reported('never_started', 'milestone 2 is pending but was charged 1 times (150.00)'), 'a charge of a never-started milestone is reported');
SELECT ok(pg_temp.reported('missing_refund', 'milestone 1 is refunded but was refunded 0 times (0)'), 'a refunded milestone without its refund is reported');
SELECT ok(pg_temp.reported('extra_refund', 'milestone 1 is completed but was refunded 1 times (100.00)'), 'a refund of a milestone that was not refunded is reported');
-- 3. ended orders hold nothing in escrow
SELECT ok(pg_temp.reported('escrow_left', 'completed order holds 100.00 in escrow'), 'money left in escrow after the end is reported');
SELECT ok(pg_temp.reported('missing_refund', 'cancelled order holds 100.00 in escrow'), 'a cancelled order still holding the refund is reported');
-- 4. one payout, after the end, equal to the completed milestones and the fee
SELECT ok(pg_temp.reported('two_payouts', 'completed order has 2 payouts'), 'two payouts are reported');
SELECT ok(pg_temp.reported('early_payout', 'active order has 1 payouts'), 'a payout before the order ended is reported');
SELECT ok(pg_temp.reported('no_payout', 'cancelled order has 0 payouts'), 'an ended order with completed milestones and no payout is reported');
SELECT ok(pg_temp.reported('escrow_left', 'completed order has 0 payouts'), 'a completed order without its payout is reported');
SELECT ok(pg_temp.reported('bad_fee', 'payout gross 250.00, fee 49.00, net 201.00 do not match completed milestones 250.00 at fee rate 0.20000'),
          'a payout whose fee is not the captured rate is reported');
SELECT ok(pg_temp.reported('bad_gross', 'payout gross 250.00, fee 50.00, net 200.00 do not match completed milestones 100.00 at fee rate 0.20000'),
          'a payout that does not match the completed milestones is reported');
-- 5. structure: positions 1..n, one running milestone, k after k-1, states, final flag
SELECT ok(pg_temp.reported('gap', 'milestone positions are not 1..3'), 'a gap in the positions is reported');
SELECT ok(pg_temp.reported('two_running', '2 milestones are in progress or delivered at once'), 'two running milestones are reported');
SELECT ok(pg_temp.reported('out_of_order', 'milestone 2 is in_progress but milestone 1 is pending'), 'milestone 2 started before 1 completed is reported');
SELECT ok(pg_temp.reported('active_idle', 'active order has no milestone in progress or delivered'), 'an active order with nothing running is reported');
SELECT ok(pg_temp.reported('active_idle', 'active order has skipped or refunded milestones'), 'an active order with a skipped milestone is reported');
SELECT ok(pg_temp.reported('withdrawn_pending', 'withdrawn order has milestones that were not skipped'), 'a withdrawn order with pending milestones is reported');
SELECT ok(pg_temp.reported('withdrawn_pending', 'ended order still has pending, in-progress or delivered milestones'), 'an ended order with open milestones is reported');
SELECT ok(pg_temp.reported('offered_started', 'offered order has milestones that are not pending'), 'an offered order with a started milestone is reported');
SELECT ok(pg_temp.reported('finished_short', 'completed (finished) order has 1 of 3 milestones completed'), 'a finished order with milestones left is reported');
SELECT ok(pg_temp.reported('final_flag', 'milestone 3 final flag is f'), 'a last milestone not flagged final is reported');
SELECT ok(pg_temp.reported('gap', 'milestone 5 final flag is t'), 'a final flag not on position n is reported');
SELECT ok(pg_temp.reported('no_milestones', 'order has no milestones'), 'an order without milestones is reported');
-- 1. the whole ledger sums to zero (a ledger-wide problem has no order id)
SELECT is((SELECT problem FROM milestones.check_invariants() WHERE order_id IS NULL),
          'the whole ledger sums to -17.00, not 0', 'a ledger that does not sum to zero is reported (orphan -7 and unbalanced -10)');

SELECT is((SELECT array_agg(DISTINCT order_id ORDER BY order_id) FROM milestones.check_invariants() WHERE order_id IS NOT NULL),
          (SELECT array_agg(id ORDER BY id) FROM ids WHERE name NOT LIKE 'clean%'),
          'every corrupted order is reported, and no sound one');
SELECT is((SELECT count(*)::int FROM milestones.check_invariants() c
            WHERE c.order_id IS NOT NULL AND c.order_id <> ALL (SELECT id FROM ids)), 0, 'no other order is reported');
SELECT is(pg_temp.problems('clean_cancel'), NULL, 'a sound cancelled order has no problems');
-- Support may run the report (it is SECURITY DEFINER, pinned search_path).
CREATE ROLE t21_support NOLOGIN IN ROLE milestones_support;
SET LOCAL ROLE t21_support;
SELECT cmp_ok((SELECT count(*)::int FROM milestones.check_invariants()), '>', 0, 'a support role runs check_invariants() too');
RESET ROLE;

-------------------------------------------------------------------------------
-- With the triggers on, the guard refuses the same corruption at commit
-- (SET CONSTRAINTS ALL IMMEDIATE brings the deferred check into the test).
-------------------------------------------------------------------------------
SELECT pg_temp.make('g1', '{place}'), pg_temp.make('g2', '{place,deliver,accept}'), pg_temp.make('g3', '{place,deliver,stop}');
SET CONSTRAINTS ALL IMMEDIATE;
SET CONSTRAINTS ALL DEFERRED;
-- corrupt(sql): runs the write, then the deferred checks, in one call;
-- returns 'SQLSTATE: message / detail' of the error, or 'no error'.
CREATE FUNCTION pg_temp.corrupt(p_sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_state text; v_msg text; v_detail text;
BEGIN
    BEGIN
        EXECUTE p_sql;
        SET CONSTRAINTS ALL IMMEDIATE;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
        SET CONSTRAINTS ALL DEFERRED;
        RETURN v_state || ': ' || v_msg || ' / ' || v_detail;
    END;
    SET CONSTRAINTS ALL DEFERRED;
    RETURN 'no error';
END
$$;
SELECT is(pg_temp.corrupt(format($$INSERT INTO milestones.ledger_entries (txn_id, order_id, position, kind, account, amount, currency, created_at)
                                   VALUES (nextval('milestones.ledger_txn_id_seq'), %s, 1, 'charge', 'escrow', 5, 'USD', now())$$, pg_temp.id('g1'))),
          format('23514: order %s would break the milestones invariants / ledger transaction %s does not balance (sums to 5.00).',
                 pg_temp.id('g1'), currval('milestones.ledger_txn_id_seq')),
          'an unbalanced ledger entry is refused at commit (23514, the problem in the DETAIL)');
SELECT alike(pg_temp.corrupt(format($$SELECT pg_temp.post(%L, 1, 'charge', '{"buyer": -100, "escrow": 100}')$$, 'g1')),
             '23514: order % would break the milestones invariants / %milestone 1 is in_progress but was charged 2 times (200.00)%',
             'a second charge of a milestone is refused at commit');
SELECT alike(pg_temp.corrupt(format($$SELECT pg_temp.post(%L, 3, 'charge', '{"buyer": -250, "escrow": 250}')$$, 'g2')),
             '23514: order % would break the milestones invariants / %milestone 3 is pending but was charged 1 times (250.00)%',
             'a charge of a never-started milestone is refused at commit');
SELECT alike(pg_temp.corrupt(format($$SELECT pg_temp.post(%L, NULL, 'payout', '{"escrow": -100, "seller": 100}')$$, 'g2')),
             '23514: % / %active order has 1 payouts%', 'a payout of an active order is refused at commit');
SELECT alike(pg_temp.corrupt(format($$SELECT pg_temp.post(%L, 1, 'refund', '{"escrow": -100, "buyer": 100}')$$, 'g3')),
             '23514: % / %milestone 1 is completed but was refunded 1 times (100.00)%', 'a refund of a completed milestone is refused at commit');
SELECT alike(pg_temp.corrupt(format($$UPDATE milestones.order_milestones SET state = 'in_progress', started_at = now(), due_at = now()
                                      WHERE order_id = %s AND position = 3$$, pg_temp.id('g2'))),
             '23514: % / %2 milestones are in progress or delivered at once%milestone 3 is in_progress but milestone 2 is in_progress%',
             'a second running milestone (k before k-1 completed) is refused at commit');
SELECT alike(pg_temp.corrupt($$WITH o AS (INSERT INTO milestones.orders (seller_id, buyer_id, category, currency, fee_rate, created_at)
                                          VALUES (10, 20, 'design', 'USD', 0, now()) RETURNING order_id)
                               INSERT INTO milestones.order_milestones (order_id, position, name, days, amount, final)
                               SELECT order_id, p, 'x', 1, 100, p = 3 FROM o, (VALUES (1), (3)) v(p)$$),
             '23514: % / milestone positions are not 1..2%', 'an inserted (restored) order with a gap in its positions is refused at commit');
-- Some corruption is refused at once, row by row.
SELECT throws_ok(format($$UPDATE milestones.order_milestones SET final = false WHERE order_id = %s AND position = 3$$, pg_temp.id('g1')),
                 '23514', NULL, 'the final flag cannot change');
SELECT throws_ok(format($$UPDATE milestones.ledger_entries SET amount = 1 WHERE order_id = %s$$, pg_temp.id('g1')),
                 '23000', NULL, 'ledger entries cannot be updated');
SELECT throws_ok(format($$DELETE FROM milestones.ledger_entries WHERE order_id = %s$$, pg_temp.id('g3')),
                 '23000', NULL, 'ledger entries cannot be deleted');
SELECT throws_ok(format($$UPDATE milestones.orders SET state = 'active', end_reason = NULL, completed_at = NULL WHERE order_id = %s$$, pg_temp.id('g3')),
                 '55000', NULL, 'an ended order cannot be reopened');
SELECT is_empty(format('SELECT * FROM milestones.check_invariants() WHERE order_id IN (%s, %s, %s)',
                       pg_temp.id('g1'), pg_temp.id('g2'), pg_temp.id('g3')),
                'the refused writes left the guarded orders sound');

SELECT * FROM finish();
ROLLBACK;
