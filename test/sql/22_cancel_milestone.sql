-- test/sql/22_cancel_milestone.sql - R10b, SPEC section 8: support cancels
-- one milestone of an active order and the order goes on.  Every case of
-- section 8 with its money checked in ledger_entries (not only in the
-- views), every refusal with its SQLSTATE, retries, the final delivery
-- (the last milestone not cancelled) in accept/deliver/stop/the sweep and
-- the views, the guard against hand-written shortcuts, milestone_status,
-- order_status(order_id) and set_setting().
BEGIN;
\ir ../fixtures/setup.psql
SELECT plan(223);
SET LOCAL timezone = 'UTC';

CREATE ROLE t22_agent NOLOGIN IN ROLE milestones_support;
CREATE ROLE t22_app NOLOGIN IN ROLE milestones_app;
CREATE ROLE t22_reader NOLOGIN IN ROLE milestones_reader;

CREATE TEMP TABLE ids (name text PRIMARY KEY, id bigint);
GRANT SELECT ON ids TO PUBLIC;
CREATE FUNCTION pg_temp.id(text) RETURNS bigint LANGUAGE sql AS $$ SELECT id FROM ids WHERE name = $1 $$;
CREATE FUNCTION pg_temp.st(text) RETURNS milestones.order_status LANGUAGE sql AS
    $$ SELECT * FROM milestones.order_status WHERE order_id = pg_temp.id($1) $$;
-- ms(name): the milestone states in position order.
CREATE FUNCTION pg_temp.ms(text) RETURNS text[] LANGUAGE sql AS
    $$ SELECT array_agg(state ORDER BY position) FROM milestones.order_milestones WHERE order_id = pg_temp.id($1) $$;
-- legs(name, kind): the ledger lines of one kind as 'position/account:amount', in entry order.
CREATE FUNCTION pg_temp.legs(text, text) RETURNS text[] LANGUAGE sql AS
    $$ SELECT array_agg(COALESCE(position::text, '-') || '/' || account || ':' || amount ORDER BY entry_id)
         FROM milestones.ledger_entries WHERE order_id = pg_temp.id($1) AND kind = $2 $$;
-- txns(name): how many ledger transactions the order has.
CREATE FUNCTION pg_temp.txns(text) RETURNS integer LANGUAGE sql AS
    $$ SELECT count(DISTINCT txn_id)::int FROM milestones.ledger_entries WHERE order_id = pg_temp.id($1) $$;
-- account(name, account): the balance of one account of the order.
CREATE FUNCTION pg_temp.account(text, text) RETURNS numeric LANGUAGE sql AS
    $$ SELECT COALESCE(sum(amount), 0) FROM milestones.ledger_entries WHERE order_id = pg_temp.id($1) AND account = $2 $$;
CREATE FUNCTION pg_temp.books_ok() RETURNS boolean LANGUAGE sql AS $$
    SELECT NOT EXISTS (SELECT FROM milestones.check_invariants())
       AND (SELECT COALESCE(sum(amount), 0) FROM milestones.ledger_entries) = 0
       AND NOT EXISTS (SELECT txn_id FROM milestones.ledger_entries GROUP BY txn_id HAVING sum(amount) <> 0)
$$;
-- cm(name, position, reason, note): the SQL of a cancel_milestone by agent "alice".
CREATE FUNCTION pg_temp.cm(text, integer, text DEFAULT 'mutual_agreement', text DEFAULT 'ticket 7') RETURNS text LANGUAGE sql AS
    $$ SELECT format('SELECT milestones.cancel_milestone(%s, %s, %L, %L, %L)', pg_temp.id($1), $2, 'alice', $3, $4) $$;
-- do_cm(name, position, ...): runs it as the support agent, returns the status row.
CREATE FUNCTION pg_temp.do_cm(p_name text, p_pos integer, p_reason text DEFAULT 'mutual_agreement',
                              p_note text DEFAULT 'ticket 7', p_key text DEFAULT NULL)
RETURNS milestones.order_status LANGUAGE plpgsql AS $$
DECLARE r milestones.order_status;
BEGIN
    SET LOCAL ROLE t22_agent;
    r := milestones.cancel_milestone(pg_temp.id(p_name), p_pos, 'alice', p_reason, p_note, p_key);
    RESET ROLE;
    RETURN r;
END
$$;
-- err(sql): 'SQLSTATE | message | detail | hint' of the error the statement raises.
CREATE FUNCTION pg_temp.err(p_sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE s text; m text; d text; h text;
BEGIN
    EXECUTE p_sql;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS s = RETURNED_SQLSTATE, m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT;
    RETURN s || ' | ' || m || ' | ' || COALESCE(d, '') || ' | ' || COALESCE(h, '');
END
$$;
-- ev(name): the order's milestone_cancelled events' details.
CREATE FUNCTION pg_temp.ev(text) RETURNS jsonb LANGUAGE sql AS
    $$ SELECT jsonb_agg(jsonb_build_object('detail', e.detail) ORDER BY event_id) FROM milestones.events e
        WHERE order_id = pg_temp.id($1) AND event = 'milestone_cancelled' $$;
CREATE FUNCTION pg_temp.step(p_name text, p_steps text[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE s text; v bigint := pg_temp.id(p_name);
BEGIN
    FOREACH s IN ARRAY p_steps LOOP
        CASE s
            WHEN 'place'   THEN PERFORM milestones.place_order(v, 20);
            WHEN 'deliver' THEN PERFORM milestones.deliver(v, 10);
            WHEN 'accept'  THEN PERFORM milestones.accept(v, 20);
            WHEN 'revise'  THEN PERFORM milestones.request_revision(v, 20);
            WHEN 'stop'    THEN PERFORM milestones.stop(v, 20);
            WHEN 'withdraw' THEN PERFORM milestones.withdraw_offer(v, 10);
            WHEN 'decline' THEN PERFORM milestones.decline_offer(v, 20);
            WHEN 'cancel'  THEN PERFORM milestones.cancel(v, 'bob', 'terms_violation', 'whole order');
        END CASE;
    END LOOP;
END
$$;
-- Orders: every one is offer3() (100 + 150 + 250 = 500 USD, 1 revision).
INSERT INTO ids SELECT n, pg_temp.offer3() FROM unnest(ARRAY['a','b','c','d','e','f','g','k','x','off','wd','dec','fin','stp','can','exp','idem','rv','gd']) n;
INSERT INTO ids VALUES ('one', milestones.create_offer(10, 20, 'design', '[{"name":"Only","days":4,"amount":"300.00"}]'));
SELECT pg_temp.step(n, '{place}') FROM unnest(ARRAY['a','b','c','d','e','f','g','k','x','fin','stp','can','exp','idem','rv','gd','one']) n;

-------------------------------------------------------------------------------
-- Who may cancel a milestone: support only (42501)
-------------------------------------------------------------------------------
SET LOCAL ROLE t22_app;
SELECT throws_ok(pg_temp.cm('a', 2), '42501', NULL, 'an application role (milestones_app) cannot cancel a milestone');
RESET ROLE;
SET LOCAL ROLE t22_reader;
SELECT throws_ok(pg_temp.cm('a', 2), '42501', NULL, 'a reader cannot cancel a milestone');
RESET ROLE;
SELECT ok(NOT has_function_privilege('public', 'milestones.cancel_milestone(bigint,integer,text,text,text,text)', 'EXECUTE'),
          'PUBLIC has no EXECUTE on cancel_milestone');
SELECT ok(has_function_privilege('milestones_support', 'milestones.cancel_milestone(bigint,integer,text,text,text,text)', 'EXECUTE'),
          'milestones_support has EXECUTE on cancel_milestone');
SELECT is(pg_temp.ms('a'), ARRAY['in_progress','pending','pending'], 'the refused calls changed nothing');

-------------------------------------------------------------------------------
-- Argument checks (22023) and unknown orders / positions (P0002)
-------------------------------------------------------------------------------
SET LOCAL ROLE t22_agent;
SELECT throws_ok(pg_temp.cm('a', 2, 'bored'), '22023', 'unknown cancellation reason ''bored''', 'an unknown reason is refused');
SELECT throws_ok(pg_temp.cm('a', 2, 'Mutual_Agreement'), '22023', NULL, 'reason codes are case-sensitive');
SELECT throws_ok(format('SELECT milestones.cancel_milestone(NULL, 2, %L, %L)', 'alice', 'mutual_agreement'), '22023',
                 'order_id must not be NULL', 'a NULL order id is refused');
SELECT throws_ok(format('SELECT milestones.cancel_milestone(0, 2, %L, %L)', 'alice', 'mutual_agreement'), '22023',
                 'order_id must be a positive id', 'order id 0 is refused');
SELECT throws_ok(format('SELECT milestones.cancel_milestone(%s, NULL, %L, %L)', pg_temp.id('a'), 'alice', 'mutual_agreement'), '22023',
                 'position must not be NULL', 'a NULL position is refused');
SELECT throws_ok(format('SELECT milestones.cancel_milestone(%s, 0, %L, %L)', pg_temp.id('a'), 'alice', 'mutual_agreement'), '22023',
                 'position must be 1 or more', 'position 0 is refused');
SELECT throws_ok(format('SELECT milestones.cancel_milestone(%s, -1, %L, %L)', pg_temp.id('a'), 'alice', 'mutual_agreement'), '22023',
                 'position must be 1 or more', 'a negative position is refused');
SELECT throws_ok(format('SELECT milestones.cancel_milestone(%s, 2, NULL, %L)', pg_temp.id('a'), 'mutual_agreement'), '22023',
                 'agent must not be NULL', 'a NULL agent is refused');
SELECT throws_ok(format('SELECT milestones.cancel_milestone(%s, 2, %L, %L)', pg_temp.id('a'), E' \t\n', 'mutual_agreement'), '22023',
                 'agent must not be blank', 'a blank agent is refused');
SELECT throws_ok(format('SELECT milestones.cancel_milestone(%s, 2, %L, %L)', pg_temp.id('a'), repeat('a', 201), 'mutual_agreement'), '22023',
                 'agent is too long', 'an agent over 200 characters is refused');
SELECT throws_ok(format('SELECT milestones.cancel_milestone(%s, 2, %L, NULL)', pg_temp.id('a'), 'alice'), '22023',
                 'reason must not be NULL', 'a NULL reason is refused');
SELECT throws_ok(pg_temp.cm('a', 2, 'mutual_agreement', repeat('n', 2001)), '22023', 'note is too long',
                 'a note over 2000 characters is refused');
SELECT throws_ok(format('SELECT milestones.cancel_milestone(%s, 2, %L, %L, NULL, %L)', pg_temp.id('a'), 'alice', 'mutual_agreement', ''),
                 '22023', 'idempotency_key must have 1 to 255 characters', 'an empty idempotency key is refused');
SELECT throws_ok($$SELECT milestones.cancel_milestone(999999, 1, 'alice', 'mutual_agreement')$$, 'P0002',
                 'order 999999 does not exist', 'an unknown order is P0002');
SELECT throws_ok(pg_temp.cm('a', 4), 'P0002', format('milestone 4 of order %s does not exist', pg_temp.id('a')),
                 'an unknown position is P0002');
SELECT throws_ok(pg_temp.cm('a', 2147483647), 'P0002', NULL, 'the largest integer position is unknown, P0002');
RESET ROLE;
SELECT is(split_part(pg_temp.err(pg_temp.cm('a', 4)), ' | ', 3),
          format('Order %s has milestones 1 to 3.', pg_temp.id('a')), 'the P0002 DETAIL names the positions that exist');
-- a retired reason is refused like an unknown one
SELECT milestones.set_cancellation_reason('old_reason', 'No longer used.', false);
SET LOCAL ROLE t22_agent;
SELECT throws_ok(pg_temp.cm('a', 2, 'old_reason'), '22023', 'unknown cancellation reason ''old_reason''', 'a retired reason is refused');
RESET ROLE;
SELECT alike(split_part(pg_temp.err(pg_temp.cm('a', 2, 'bored')), ' | ', 3),
            'Valid reasons: %mutual_agreement%', 'the unknown-reason DETAIL lists the valid reasons');
SELECT is(pg_temp.ms('a'), ARRAY['in_progress','pending','pending'], 'refused calls change nothing');
SELECT is((SELECT count(*)::int FROM milestones.events WHERE event = 'milestone_cancelled'), 0, 'and write no event');
SELECT is((SELECT count(*)::int FROM milestones.ledger_entries WHERE order_id = pg_temp.id('a')), 2, 'nor any ledger entry');

-------------------------------------------------------------------------------
-- Only an active order (55000, the HINT names cancel, withdraw_offer, decline_offer)
-------------------------------------------------------------------------------
SELECT pg_temp.step('wd', '{withdraw}'), pg_temp.step('dec', '{decline}'),
       pg_temp.step('fin', '{deliver,accept,deliver,accept,deliver,accept}'),
       pg_temp.step('stp', '{deliver,stop}'), pg_temp.step('can', '{cancel}');
SET LOCAL ROLE t22_agent;
SELECT throws_ok(pg_temp.cm('off', 2), '55000', format('cancel_milestone is not allowed: order %s is offered', pg_temp.id('off')),
                 'an offered order is refused');
SELECT throws_ok(pg_temp.cm('wd', 2), '55000', NULL, 'a withdrawn offer is refused');
SELECT throws_ok(pg_temp.cm('dec', 2), '55000', NULL, 'a declined offer is refused');
SELECT throws_ok(pg_temp.cm('fin', 3), '55000', format('cancel_milestone is not allowed: order %s is completed (finished)', pg_temp.id('fin')),
                 'a finished order is refused');
SELECT throws_ok(pg_temp.cm('stp', 2), '55000', format('cancel_milestone is not allowed: order %s is completed (stopped)', pg_temp.id('stp')),
                 'a stopped order is refused (its skipped milestone too)');
SELECT throws_ok(pg_temp.cm('can', 1), '55000', format('cancel_milestone is not allowed: order %s is cancelled (terms_violation)', pg_temp.id('can')),
                 'a cancelled order is refused');
SELECT throws_ok(pg_temp.cm('off', 9), '55000', NULL, 'the order state is checked before the position');
RESET ROLE;
SELECT alike(pg_temp.err(pg_temp.cm('off', 2)),
            '% | %needs an active order% | %milestones.cancel()%withdraw_offer()%decline_offer()%',
            'an offer''s refusal: DETAIL says an active order is needed, HINT names cancel, withdraw_offer, decline_offer');
SELECT alike(pg_temp.err(pg_temp.cm('fin', 3)),
            '% | %milestones.cancel()%withdraw_offer()%decline_offer()%',
            'an ended order''s refusal names them too');
SELECT is(pg_temp.ms('off'), ARRAY['pending','pending','pending'], 'the offer is unchanged');
SELECT is(pg_temp.ms('fin'), ARRAY['completed','completed','completed'], 'the finished order is unchanged');

-------------------------------------------------------------------------------
-- A pending milestone in the middle: cancelled, never charged, the order goes on
-------------------------------------------------------------------------------
SELECT is((pg_temp.do_cm('a', 2, 'mutual_agreement', 'buyer no longer needs the animation')).state, 'active',
          'cancel_milestone returns the status row: the order stays active');
SELECT is(pg_temp.ms('a'), ARRAY['in_progress','cancelled','pending'], 'milestone 2 is cancelled, the others unchanged');
SELECT is(pg_temp.legs('a', 'charge'), ARRAY['1/buyer:-100.00','1/escrow:100.00'], 'ledger: only milestone 1 was ever charged');
SELECT is(pg_temp.legs('a', 'refund'), NULL, 'ledger: nothing refunded');
SELECT is(pg_temp.txns('a'), 1, 'ledger: no new transaction');
SELECT is((SELECT (cancel_reason, cancelled_by, cancel_note, started_at, due_at)::text FROM milestones.order_milestones
            WHERE order_id = pg_temp.id('a') AND position = 2),
          '(mutual_agreement,alice,"buyer no longer needs the animation",,)', 'the milestone row keeps reason, agent and note, no times');
SELECT is(ARRAY[(pg_temp.st('a')).total, (pg_temp.st('a')).charged, (pg_temp.st('a')).refunded],
          ARRAY[350.00, 100.00, 0.00]::numeric[], 'order_status: total 350 (500 less the cancelled 150), charged 100, refunded 0');
SELECT is(ARRAY[(pg_temp.st('a')).current_milestone, (pg_temp.st('a')).milestone_count], ARRAY[1, 3],
          'current milestone 1 of 3');
SELECT is((pg_temp.st('a')).final_milestone, false, 'milestone 1 is not final: milestone 3 is left');
SELECT is((SELECT array_agg(final ORDER BY position) FROM milestones.milestone_status WHERE order_id = pg_temp.id('a')),
          ARRAY[false, false, true], 'milestone_status: milestone 3 is still the final one');
SELECT is((SELECT (state, reason, agent, note)::text FROM milestones.milestone_status WHERE order_id = pg_temp.id('a') AND position = 2),
          '(cancelled,mutual_agreement,alice,"buyer no longer needs the animation")', 'milestone_status shows reason, agent and note');
SELECT is((SELECT count(*)::int FROM milestones.milestone_status WHERE order_id = pg_temp.id('a') AND reason IS NOT NULL), 1,
          'only the cancelled milestone has a reason');
SELECT is((SELECT (count(*) OVER (), position, actor_role, actor_id, agent, order_state, milestone_state)::text
             FROM milestones.events WHERE order_id = pg_temp.id('a') AND event = 'milestone_cancelled'),
          '(1,2,support,,alice,active,cancelled)',
          'one milestone_cancelled event: support, agent, the milestone''s new state');
SELECT is(pg_temp.ev('a') -> 0 -> 'detail',
          '{"next": null, "note": "buyer no longer needs the animation", "final": 3, "total": 350.00, "amount": 150.00,
            "reason": "mutual_agreement", "charged": 0, "refunded": 0}'::jsonb,
          'the event records reason, note and the amounts (nothing refunded or charged)');
SELECT ok(pg_temp.books_ok(), 'books balance after cancelling a pending milestone');
-- The order goes on: accept starts milestone 3, the next one not cancelled.
SELECT pg_temp.step('a', '{deliver}');
SELECT is((milestones.accept(pg_temp.id('a'), 20)).current_milestone, 3, 'accept skips the cancelled milestone 2 and starts 3');
SELECT is(pg_temp.ms('a'), ARRAY['completed','cancelled','in_progress'], 'milestone 2 stays cancelled');
SELECT is(pg_temp.legs('a', 'charge'), ARRAY['1/buyer:-100.00','1/escrow:100.00','3/buyer:-250.00','3/escrow:250.00'],
          'ledger: milestone 3 charged 250, milestone 2 never');
SELECT is((SELECT (detail->>'next')::int FROM milestones.events WHERE order_id = pg_temp.id('a') AND event = 'accepted'), 3,
          'the accepted event names milestone 3 as next');
SELECT pg_temp.step('a', '{deliver}');
SELECT is((SELECT (detail->>'final')::boolean FROM milestones.events WHERE order_id = pg_temp.id('a') AND event = 'delivered' AND position = 3),
          true, 'the delivery of milestone 3 is final');
SELECT is((milestones.accept(pg_temp.id('a'), 20)).state, 'completed', 'accepting milestone 3 finishes the order');
SELECT is(pg_temp.ms('a'), ARRAY['completed','cancelled','completed'], 'completed, cancelled, completed');
SELECT is(pg_temp.legs('a', 'payout'), ARRAY['-/escrow:-350.00','-/seller:350.00'], 'the payout is 350: the completed milestones');
SELECT is(pg_temp.account('a', 'escrow'), 0.00, 'escrow is empty');
SELECT is(ARRAY[(pg_temp.st('a')).total, (pg_temp.st('a')).charged, (pg_temp.st('a')).paid_out], ARRAY[350.00, 350.00, 350.00]::numeric[],
          'order_status: total, charged and paid out all 350');
SELECT is((pg_temp.st('a')).reason, 'finished', 'the order finished');
SELECT ok(pg_temp.books_ok(), 'books balance after the order finished');

-------------------------------------------------------------------------------
-- The last pending milestones: the running one becomes the final one
-------------------------------------------------------------------------------
SELECT pg_temp.do_cm('b', 3);
SELECT is((SELECT array_agg(final ORDER BY position) FROM milestones.milestone_status WHERE order_id = pg_temp.id('b')),
          ARRAY[false, true, false], 'with 3 cancelled, milestone 2 is final');
SELECT is((pg_temp.ev('b') -> 0 -> 'detail' ->> 'final')::int, 2, 'the event names the new final milestone');
SELECT is((pg_temp.do_cm('b', 2)).final_milestone, true, 'with 2 and 3 cancelled, the running milestone 1 is final');
SELECT is((SELECT array_agg(final ORDER BY position) FROM milestones.milestone_status WHERE order_id = pg_temp.id('b')),
          ARRAY[true, false, false], 'milestone_status: milestone 1 is final');
SELECT is((SELECT final FROM milestones.order_milestones WHERE order_id = pg_temp.id('b') AND position = 3), true,
          'the stored final flag keeps the offer''s last position (it never changes)');
SELECT is((pg_temp.st('b')).total, 100.00, 'total is milestone 1 alone');
SELECT pg_temp.step('b', '{deliver}');
SELECT is((SELECT (detail->>'final')::boolean FROM milestones.events WHERE order_id = pg_temp.id('b') AND event = 'delivered'), true,
          'milestone 1''s delivery is the final delivery');
SELECT is((SELECT final_delivery FROM milestones.awaiting_response WHERE order_id = pg_temp.id('b')), true,
          'awaiting_response shows it as the final delivery');
SELECT is((milestones.accept(pg_temp.id('b'), 20)).reason, 'finished', 'accepting it finishes the order');
SELECT is(pg_temp.ms('b'), ARRAY['completed','cancelled','cancelled'], 'the cancelled milestones stay cancelled (not skipped)');
SELECT is(pg_temp.legs('b', 'charge'), ARRAY['1/buyer:-100.00','1/escrow:100.00'], 'only milestone 1 was ever charged');
SELECT is(pg_temp.legs('b', 'payout'), ARRAY['-/escrow:-100.00','-/seller:100.00'], 'and paid out');
SELECT ok(pg_temp.books_ok(), 'books balance');

-- A pending milestone while the running one is delivered (window open):
-- the delivery stays open; stop then ends the order without skipping it.
SELECT pg_temp.step('c', '{deliver}');
SELECT is((pg_temp.do_cm('c', 2)).milestone_state, 'delivered', 'cancelling milestone 2 leaves milestone 1 delivered');
SELECT is((SELECT final_delivery FROM milestones.awaiting_response WHERE order_id = pg_temp.id('c')), false,
          'milestone 3 is left: the delivery is not final');
SELECT pg_temp.do_cm('c', 3);
SELECT is((SELECT final_delivery FROM milestones.awaiting_response WHERE order_id = pg_temp.id('c')), true,
          'with 2 and 3 cancelled the open delivery becomes the final delivery');
SELECT is((pg_temp.st('c')).respond_by, '2030-01-06 00:00:00+00'::timestamptz, 'the response window is unchanged');
SELECT is((milestones.stop(pg_temp.id('c'), 20)).reason, 'stopped', 'the buyer may still stop');
SELECT is(pg_temp.ms('c'), ARRAY['completed','cancelled','cancelled'], 'stop: the delivery completes, nothing is skipped');
SELECT is(pg_temp.legs('c', 'payout'), ARRAY['-/escrow:-100.00','-/seller:100.00'], 'stop pays milestone 1');
SELECT ok(pg_temp.books_ok(), 'books balance');

-- request_revision still works on the delivery after a cancellation.
SELECT pg_temp.step('rv', '{deliver}');
SELECT pg_temp.do_cm('rv', 3);
SELECT is((milestones.request_revision(pg_temp.id('rv'), 20)).milestone_state, 'in_progress', 'a revision after a cancellation');
SELECT is(pg_temp.ms('rv'), ARRAY['in_progress','pending','cancelled'], 'revision: 1 back in progress, 3 stays cancelled');

-------------------------------------------------------------------------------
-- The running milestone in progress: refunded, the next one charged and started
-------------------------------------------------------------------------------
SELECT pg_temp.at('2030-01-02 00:00:00+00');
SELECT is((pg_temp.do_cm('d', 1, 'seller_unresponsive', 'no reply for a week')).current_milestone, 2,
          'cancelling the milestone in progress starts milestone 2');
SELECT is(pg_temp.ms('d'), ARRAY['refunded','in_progress','pending'], 'milestone 1 refunded, 2 in progress');
SELECT is(pg_temp.legs('d', 'refund'), ARRAY['1/escrow:-100.00','1/buyer:100.00'], 'ledger: milestone 1''s 100 goes escrow -> buyer');
SELECT is(pg_temp.legs('d', 'charge'), ARRAY['1/buyer:-100.00','1/escrow:100.00','2/buyer:-150.00','2/escrow:150.00'],
          'ledger: milestone 2 charged 150 (buyer -> escrow)');
SELECT is(pg_temp.txns('d'), 3, 'ledger: the refund and the charge are one transaction each');
SELECT is((SELECT count(*)::int FROM (SELECT txn_id FROM milestones.ledger_entries WHERE order_id = pg_temp.id('d')
                                       GROUP BY txn_id HAVING sum(amount) = 0 AND count(DISTINCT kind) = 1) t), 3,
          'each transaction balances and has one kind');
SELECT is(pg_temp.account('d', 'escrow'), 150.00, 'escrow holds milestone 2''s 150');
SELECT is(pg_temp.account('d', 'buyer'), -150.00, 'the buyer is out 150 (100 back)');
SELECT is((SELECT (started_at, due_at)::text FROM milestones.order_milestones WHERE order_id = pg_temp.id('d') AND position = 2),
          '("2030-01-02 00:00:00+00","2030-01-09 00:00:00+00")', 'milestone 2 starts now, due in its 7 days');
SELECT is(ARRAY[(pg_temp.st('d')).total, (pg_temp.st('d')).charged, (pg_temp.st('d')).refunded, (pg_temp.st('d')).paid_out],
          ARRAY[500.00, 250.00, 100.00, 0.00]::numeric[],
          'order_status: total 500 (a refunded milestone is not cancelled), charged 250, refunded 100, nothing paid');
SELECT is((SELECT (state, reason, agent, note)::text FROM milestones.milestone_status WHERE order_id = pg_temp.id('d') AND position = 1),
          '(refunded,seller_unresponsive,alice,"no reply for a week")', 'milestone_status: the refunded milestone''s reason, agent, note');
SELECT is(pg_temp.ev('d') -> 0 -> 'detail',
          '{"next": 2, "note": "no reply for a week", "final": 3, "total": 500.00, "amount": 100.00,
            "reason": "seller_unresponsive", "charged": 150.00, "refunded": 100.00}'::jsonb,
          'the event records the refund and the next charge');
SELECT is((SELECT milestone_state || '/' || order_state FROM milestones.events WHERE order_id = pg_temp.id('d') AND event = 'milestone_cancelled'),
          'refunded/active', 'the event carries the refunded state; the order is active');
SELECT is((SELECT count(*)::int FROM milestones.events WHERE order_id = pg_temp.id('d') AND created_at = '2030-01-02 00:00:00+00'), 1,
          'one event for the whole change');
SELECT ok(pg_temp.books_ok(), 'books balance after a refund and a start');
SELECT pg_temp.step('d', '{deliver,accept,deliver,accept}');
SELECT is(pg_temp.ms('d'), ARRAY['refunded','completed','completed'], 'the order goes on and finishes');
SELECT is(pg_temp.legs('d', 'payout'), ARRAY['-/escrow:-400.00','-/seller:400.00'], 'payout: 400 for milestones 2 and 3, not the refunded 1');
SELECT is(pg_temp.account('d', 'escrow'), 0.00, 'escrow is empty');
SELECT is(ARRAY[(pg_temp.st('d')).charged, (pg_temp.st('d')).refunded, (pg_temp.st('d')).paid_out], ARRAY[500.00, 100.00, 400.00]::numeric[],
          'charged 500 = refunded 100 + paid out 400');
SELECT ok(pg_temp.books_ok(), 'a finished order with a refunded milestone is sound');
SELECT pg_temp.at('2030-01-01 00:00:00+00');

-------------------------------------------------------------------------------
-- The running milestone delivered (window open): refunded, the next starts;
-- a later whole-order cancel refunds the next one with the order's reason
-------------------------------------------------------------------------------
SELECT pg_temp.step('e', '{deliver,accept,deliver}');
SELECT pg_temp.at('2030-01-05 23:59:59+00');   -- one second before respond_by
SELECT is((pg_temp.do_cm('e', 2, 'payment_problem')).current_milestone, 3, 'a delivered milestone one second before its deadline is refunded');
SELECT is(pg_temp.ms('e'), ARRAY['completed','refunded','in_progress'], 'completed, refunded, in progress');
SELECT is(pg_temp.legs('e', 'refund'), ARRAY['2/escrow:-150.00','2/buyer:150.00'], 'ledger: the delivered milestone''s 150 refunded');
SELECT is(pg_temp.legs('e', 'charge'), ARRAY['1/buyer:-100.00','1/escrow:100.00','2/buyer:-150.00','2/escrow:150.00','3/buyer:-250.00','3/escrow:250.00'],
          'ledger: milestone 3 charged 250');
SELECT is((SELECT respond_by FROM milestones.order_milestones WHERE order_id = pg_temp.id('e') AND position = 2),
          '2030-01-06 00:00:00+00'::timestamptz, 'the refunded delivery keeps its record');
SELECT is((SELECT count(*)::int FROM milestones.awaiting_response WHERE order_id = pg_temp.id('e')), 0, 'nothing awaits the buyer any more');
SELECT is(pg_temp.legs('e', 'payout'), NULL, 'nothing is paid before the order ends');
SELECT pg_temp.step('e', '{cancel}');
SELECT is(pg_temp.ms('e'), ARRAY['completed','refunded','refunded'], 'a whole-order cancel refunds milestone 3 too');
SELECT is((SELECT array_agg(reason || '/' || agent ORDER BY position) FROM milestones.milestone_status WHERE order_id = pg_temp.id('e') AND state = 'refunded'),
          ARRAY['payment_problem/alice','terms_violation/bob'], 'milestone 2 keeps its own reason, milestone 3 shows the order''s');
SELECT is(pg_temp.legs('e', 'payout'), ARRAY['-/escrow:-100.00','-/seller:100.00'], 'the completed milestone 1 is paid');
SELECT ok(pg_temp.books_ok(), 'books balance');
SELECT pg_temp.at('2030-01-01 00:00:00+00');

-------------------------------------------------------------------------------
-- The running milestone with nothing left after it: the order ends exactly
-- as cancel ends it (cancelled, this reason/agent/note, completed ones paid)
-------------------------------------------------------------------------------
UPDATE milestones.settings SET seller_fee_rate = 0.15;
INSERT INTO ids VALUES ('fee', milestones.create_offer(10, 20, 'design',
    '[{"name":"Sketch","days":2,"amount":"150.10"},{"name":"Ink","days":2,"amount":"200.00"},{"name":"Color","days":2,"amount":"250.00"}]'));
UPDATE milestones.settings SET seller_fee_rate = 0;
SELECT pg_temp.step('fee', '{place,deliver,accept}');
SELECT pg_temp.do_cm('fee', 3);
SELECT pg_temp.step('fee', '{deliver}');
SELECT pg_temp.at('2030-01-02 00:00:00+00');
SELECT is((pg_temp.do_cm('fee', 2, 'terms_violation', 'ticket 99')).state, 'cancelled', 'refunding the last milestone left cancels the order');
SELECT is(pg_temp.ms('fee'), ARRAY['completed','refunded','cancelled'], 'completed, refunded, cancelled');
SELECT is((SELECT (state, cancel_reason, cancelled_by, cancel_note, completed_at, end_reason)::text FROM milestones.orders WHERE order_id = pg_temp.id('fee')),
          '(cancelled,terms_violation,alice,"ticket 99","2030-01-02 00:00:00+00",)', 'the order is cancelled with this reason, agent and note, now');
SELECT is(pg_temp.legs('fee', 'refund'), ARRAY['2/escrow:-200.00','2/buyer:200.00'], 'ledger: milestone 2 refunded');
SELECT is(pg_temp.legs('fee', 'payout'), ARRAY['-/escrow:-150.10','-/seller:127.58','-/platform:22.52'],
          'ledger: the completed milestone paid at the captured 15 % (22.515 -> 22.52)');
SELECT is(pg_temp.account('fee', 'escrow'), 0.00, 'escrow is empty');
SELECT is((pg_temp.st('fee')).reason, 'terms_violation', 'order_status.reason is the cancellation reason');
SELECT is(pg_temp.ev('fee') -> 1 -> 'detail' -> 'payout', '{"fee": 22.52, "net": 127.58, "gross": 150.10}'::jsonb,
          'the event records the payout');
SELECT is((SELECT order_state FROM milestones.events WHERE order_id = pg_temp.id('fee') ORDER BY event_id DESC LIMIT 1), 'cancelled',
          'the event carries the cancelled order state');
SELECT is((SELECT count(*)::int FROM milestones.events WHERE order_id = pg_temp.id('fee') AND event = 'cancelled'), 0,
          'it is one milestone_cancelled event, not a second cancelled one');
SELECT ok(pg_temp.books_ok(), 'books balance');
SELECT pg_temp.at('2030-01-01 00:00:00+00');

-- Nothing completed: all cancelled or refunded, no payout.
SELECT pg_temp.do_cm('f', 2), pg_temp.do_cm('f', 3);
SELECT is((pg_temp.do_cm('f', 1)).state, 'cancelled', 'the last running milestone refunded: cancelled order');
SELECT is(pg_temp.ms('f'), ARRAY['refunded','cancelled','cancelled'], 'refunded, cancelled, cancelled');
SELECT is(pg_temp.legs('f', 'refund'), ARRAY['1/escrow:-100.00','1/buyer:100.00'], 'the buyer gets the 100 back');
SELECT is(pg_temp.legs('f', 'payout'), NULL, 'no payout: nothing completed');
SELECT is((pg_temp.st('f')).total, 100.00, 'total counts the refunded milestone, not the cancelled ones');
SELECT ok(pg_temp.books_ok(), 'books balance');
-- A one-milestone order.
SELECT is((pg_temp.do_cm('one', 1)).state, 'cancelled', 'cancelling the only milestone cancels the order');
SELECT is(pg_temp.legs('one', 'refund'), ARRAY['1/escrow:-300.00','1/buyer:300.00'], 'its 300 is refunded');

-------------------------------------------------------------------------------
-- A milestone that has ended cannot be cancelled (55000)
-------------------------------------------------------------------------------
SELECT pg_temp.step('g', '{deliver,accept}');
SELECT pg_temp.do_cm('g', 3);
SET LOCAL ROLE t22_agent;
SELECT throws_ok(pg_temp.cm('g', 1), '55000', format('cancel_milestone is not allowed: milestone 1 of order %s is completed', pg_temp.id('g')),
                 'a completed milestone cannot be cancelled');
SELECT throws_ok(pg_temp.cm('g', 3), '55000', format('cancel_milestone is not allowed: milestone 3 of order %s is cancelled', pg_temp.id('g')),
                 'a cancelled milestone cannot be cancelled again');
SELECT throws_ok(pg_temp.cm('d', 1), '55000', NULL, 'an order that finished refuses even its refunded milestone');
RESET ROLE;
SELECT pg_temp.do_cm('k', 1);
SET LOCAL ROLE t22_agent;
SELECT throws_ok(pg_temp.cm('k', 1), '55000', format('cancel_milestone is not allowed: milestone 1 of order %s is refunded', pg_temp.id('k')),
                 'a refunded milestone cannot be cancelled again');
RESET ROLE;
SELECT alike(split_part(pg_temp.err(pg_temp.cm('g', 1)), ' | ', 3),
            'Milestone 1 (Storyboard) has ended as completed; only a pending, in-progress or delivered milestone can be cancelled.',
            'the DETAIL names the milestone and its state');
SELECT is(pg_temp.ms('g'), ARRAY['completed','in_progress','cancelled'], 'the refusals changed nothing');
SELECT is(pg_temp.txns('g'), 2, 'and moved no money');

-------------------------------------------------------------------------------
-- The response window has closed: the order is in effect expired (55000)
-------------------------------------------------------------------------------
SELECT pg_temp.step('exp', '{deliver}');         -- respond_by = 2030-01-06
SELECT pg_temp.at('2030-01-06 00:00:00+00');
SET LOCAL ROLE t22_agent;
SELECT throws_ok(pg_temp.cm('exp', 1), '55000', format('cancel_milestone is not allowed: order %s has expired', pg_temp.id('exp')),
                 'the delivered milestone at respond_by is refused');
SELECT throws_ok(pg_temp.cm('exp', 2), '55000', format('cancel_milestone is not allowed: order %s has expired', pg_temp.id('exp')),
                 'a pending milestone of an expired order is refused too');
SELECT throws_ok(pg_temp.cm('exp', 4), 'P0002', NULL, 'an unknown position is P0002 in an expired order too');
RESET ROLE;
SELECT is(pg_temp.ms('exp'), ARRAY['delivered','pending','pending'], 'the refusals changed nothing');
SELECT is(milestones.expire_overdue(), 1, 'the sweep completes the order as expired');
SELECT is(pg_temp.legs('exp', 'payout'), ARRAY['-/escrow:-100.00','-/seller:100.00'], 'and pays the delivery');
SELECT pg_temp.at('2030-01-01 00:00:00+00');
-- The sweep leaves cancelled milestones cancelled.
SELECT pg_temp.step('x', '{deliver}');
SELECT pg_temp.do_cm('x', 3);
SELECT pg_temp.at('2030-01-07 00:00:00+00');
SELECT is(milestones.expire_overdue(), 1, 'the sweep expires an order with a cancelled milestone');
SELECT is(pg_temp.ms('x'), ARRAY['completed','skipped','cancelled'], 'expired: the pending milestone skipped, the cancelled one stays');
SELECT is(pg_temp.legs('x', 'payout'), ARRAY['-/escrow:-100.00','-/seller:100.00'], 'the delivery is paid');
SELECT is((pg_temp.st('x')).total, 250.00, 'total 250: the skipped milestone counts, the cancelled one not');
SELECT pg_temp.at('2030-01-01 00:00:00+00');
SELECT ok(pg_temp.books_ok(), 'books balance after the window paths');

-------------------------------------------------------------------------------
-- Retries: idempotency keys as on every action
-------------------------------------------------------------------------------
CREATE FUNCTION pg_temp.counts() RETURNS text LANGUAGE sql AS $$
    SELECT format('milestones=%s ledger=%s events=%s keys=%s',
                  md5(string_agg(m::text, ',' ORDER BY order_id, position)),
                  (SELECT count(*) FROM milestones.ledger_entries),
                  (SELECT count(*) FROM milestones.events),
                  (SELECT count(*) FROM milestones.idempotency_keys))
      FROM milestones.order_milestones m
$$;
SELECT pg_temp.do_cm('idem', 1, 'mutual_agreement', 'n', 'cm-1') AS first \gset
SELECT pg_temp.counts() AS c \gset
SELECT is(pg_temp.do_cm('idem', 1, 'mutual_agreement', 'n', 'cm-1')::text, :'first', 'a repeat returns the first result');
SELECT is(pg_temp.counts(), :'c', 'and changes nothing (no second refund, charge or event)');
SELECT is(pg_temp.legs('idem', 'refund'), ARRAY['1/escrow:-100.00','1/buyer:100.00'], 'one refund in the ledger');
SELECT milestones.set_cancellation_reason('mutual_agreement', 'Buyer and seller agreed to cancel the order.', false);
SELECT is(pg_temp.do_cm('idem', 1, 'mutual_agreement', 'n', 'cm-1')::text, :'first', 'a repeat works even after the reason was retired');
SELECT milestones.set_cancellation_reason('mutual_agreement', 'Buyer and seller agreed to cancel the order.', true);
SET LOCAL ROLE t22_agent;
SELECT throws_ok(format('SELECT milestones.cancel_milestone(%s, 2, %L, %L, %L, %L)', pg_temp.id('idem'), 'alice', 'mutual_agreement', 'n', 'cm-1'),
                 '22023', 'idempotency key ''cm-1'' was used for another call', 'the same key for another position is refused');
SELECT throws_ok(format('SELECT milestones.cancel_milestone(%s, 1, %L, %L, %L, %L)', pg_temp.id('idem'), 'bob', 'mutual_agreement', 'n', 'cm-1'),
                 '22023', NULL, 'the same key with another agent is refused');
SELECT throws_ok(format('SELECT milestones.cancel_milestone(%s, 1, %L, %L, %L, %L)', pg_temp.id('idem'), 'alice', 'mutual_agreement', 'other', 'cm-1'),
                 '22023', NULL, 'the same key with another note is refused');
SELECT throws_ok(format('SELECT milestones.cancel(%s, %L, %L, %L, %L)', pg_temp.id('idem'), 'alice', 'mutual_agreement', 'n', 'cm-1'),
                 '22023', NULL, 'the same key for cancel is refused');
RESET ROLE;
SELECT is(pg_temp.counts(), :'c', 'refused repeats changed nothing');
SELECT is((SELECT function FROM milestones.idempotency_keys WHERE key = 'cm-1'), 'cancel_milestone', 'the key is stored for cancel_milestone');

-------------------------------------------------------------------------------
-- The guard refuses hand-written shortcuts, even the owner's
-------------------------------------------------------------------------------
-- gd: milestone 1 in progress, 2 and 3 pending.
SELECT throws_ok(format($$UPDATE milestones.order_milestones SET state = 'cancelled', cancel_reason = 'mutual_agreement', cancelled_by = 'dba'
                          WHERE order_id = %s AND position = 1$$, pg_temp.id('gd')),
                 '55000', format('milestone 1 of order %s cannot go from in_progress to cancelled', pg_temp.id('gd')),
                 'a running milestone cannot be set to cancelled (refund it through the API)');
SELECT throws_ok(format($$UPDATE milestones.order_milestones SET state = 'cancelled', cancel_reason = 'mutual_agreement', cancelled_by = 'dba'
                          WHERE order_id = %s AND position = 1$$, pg_temp.id('a')),
                 '55000', NULL, 'a completed milestone cannot be set to cancelled');
SELECT throws_ok(format($$UPDATE milestones.order_milestones SET state = 'pending', cancel_reason = NULL, cancelled_by = NULL, cancel_note = NULL
                          WHERE order_id = %s AND position = 2$$, pg_temp.id('a')),
                 '55000', format('milestone 2 of order %s is cancelled and can no longer change', pg_temp.id('a')),
                 'a cancelled milestone is final: it cannot be revived');
SELECT throws_ok(format($$UPDATE milestones.order_milestones SET state = 'skipped', cancel_reason = NULL, cancelled_by = NULL, cancel_note = NULL
                          WHERE order_id = %s AND position = 2$$, pg_temp.id('a')),
                 '55000', NULL, 'a cancelled milestone cannot become skipped');
SELECT throws_ok(format($$UPDATE milestones.order_milestones SET state = 'cancelled' WHERE order_id = %s AND position = 2$$, pg_temp.id('gd')),
                 '23514', NULL, 'a cancelled milestone needs a reason and an agent (milestones_cancel_matches_state)');
SELECT throws_ok(format($$UPDATE milestones.order_milestones SET state = 'cancelled', cancel_reason = 'nope', cancelled_by = 'dba'
                          WHERE order_id = %s AND position = 2$$, pg_temp.id('gd')),
                 '23503', NULL, 'the reason must be in cancellation_reasons');
SELECT throws_ok(format($$UPDATE milestones.order_milestones SET state = 'cancelled', cancel_reason = 'mutual_agreement', cancelled_by = 'dba',
                          started_at = now(), due_at = now() WHERE order_id = %s AND position = 2$$, pg_temp.id('gd')),
                 '23514', NULL, 'a cancelled milestone has no start time (milestones_started_has_times)');
SELECT throws_ok(format($$UPDATE milestones.order_milestones SET cancel_reason = 'mutual_agreement', cancelled_by = 'dba'
                          WHERE order_id = %s AND position = 2$$, pg_temp.id('gd')),
                 '23514', NULL, 'a pending milestone carries no cancellation');
SELECT throws_ok(format($$UPDATE milestones.order_milestones SET final = true WHERE order_id = %s AND position = 2$$, pg_temp.id('rv')),
                 '23514', NULL, 'the stored final flag never moves, not even to the last milestone not cancelled');
-- corrupt(sql): the write, then the deferred checks; 'SQLSTATE: detail' or 'no error'.
CREATE FUNCTION pg_temp.corrupt(p_sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE v_state text; v_detail text;
BEGIN
    BEGIN
        EXECUTE p_sql;
        SET CONSTRAINTS ALL IMMEDIATE;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_detail = PG_EXCEPTION_DETAIL;
        SET CONSTRAINTS ALL DEFERRED;
        RETURN v_state || ': ' || v_detail;
    END;
    SET CONSTRAINTS ALL DEFERRED;
    RETURN 'no error';
END
$$;
SET CONSTRAINTS ALL IMMEDIATE;
SET CONSTRAINTS ALL DEFERRED;
SELECT is(pg_temp.corrupt(format($$UPDATE milestones.order_milestones SET state = 'cancelled', cancel_reason = 'mutual_agreement', cancelled_by = 'dba'
                                    WHERE order_id = %s AND position = 2$$, pg_temp.id('off'))),
          '23514: offered order has milestones that are not pending.', 'a milestone of an offer cannot be cancelled by hand (commit check)');
SELECT is(pg_temp.corrupt(format($$INSERT INTO milestones.ledger_entries (txn_id, order_id, position, kind, account, amount, currency, created_at)
                                   SELECT t.txn, %s, 3, 'charge', a, x, 'USD', now()
                                     FROM (SELECT nextval('milestones.ledger_txn_id_seq') AS txn) t, (VALUES ('buyer', -250), ('escrow', 250)) v(a, x)$$, pg_temp.id('g'))),
          '23514: milestone 3 is cancelled but was charged 1 times (250.00).', 'a charge of a cancelled milestone is refused at commit');
SELECT is(pg_temp.corrupt(format($$UPDATE milestones.order_milestones SET state = 'in_progress', started_at = now(), due_at = now()
                                    WHERE order_id = %s AND position = 3$$, pg_temp.id('rv'))),
          '55000: Attempted change from cancelled to in_progress; cancelled is a final state.', 'a cancelled milestone never starts');
-- The API's result written by hand is consistent, so the guard lets it pass
-- (the states are legal; the commit check finds nothing wrong).
SELECT is(pg_temp.corrupt(format($$UPDATE milestones.order_milestones SET state = 'cancelled', cancel_reason = 'mutual_agreement', cancelled_by = 'dba'
                                    WHERE order_id = %s AND position = 3$$, pg_temp.id('gd'))),
          'no error', 'a pending milestone after the running one cancelled by hand with a reason is consistent');
SELECT ok(pg_temp.books_ok(), 'after the refused shortcuts the books are sound');

-------------------------------------------------------------------------------
-- check_invariants() knows the new rules (data corrupted with the guard off)
-------------------------------------------------------------------------------
INSERT INTO ids SELECT n, pg_temp.offer3() FROM unnest(ARRAY['inv_skip_cancel','inv_refund_bare','inv_fin_refunded']) n;
SELECT pg_temp.step(n, '{place}') FROM unnest(ARRAY['inv_skip_cancel','inv_refund_bare']) n;
SELECT pg_temp.step('inv_fin_refunded', '{place,deliver,accept}');
SET CONSTRAINTS ALL IMMEDIATE;
SET CONSTRAINTS ALL DEFERRED;
SET LOCAL session_replication_role = replica;
-- 3 started while 2 is still pending behind a cancelled... (2 pending, 3 in progress)
UPDATE milestones.order_milestones SET state = 'cancelled', started_at = NULL, due_at = NULL, cancel_reason = 'mutual_agreement', cancelled_by = 'dba'
 WHERE order_id = pg_temp.id('inv_skip_cancel') AND position = 1;
UPDATE milestones.order_milestones SET state = 'in_progress', started_at = now(), due_at = now()
 WHERE order_id = pg_temp.id('inv_skip_cancel') AND position = 3;
-- a refund without a milestone cancellation in an active order
UPDATE milestones.order_milestones SET state = 'refunded' WHERE order_id = pg_temp.id('inv_refund_bare') AND position = 1;
UPDATE milestones.order_milestones SET state = 'in_progress', started_at = now(), due_at = now()
 WHERE order_id = pg_temp.id('inv_refund_bare') AND position = 2;
-- a finished order whose last milestone not cancelled was refunded
UPDATE milestones.orders SET state = 'completed', end_reason = 'finished', completed_at = milestones.now()
 WHERE order_id = pg_temp.id('inv_fin_refunded');
UPDATE milestones.order_milestones SET state = 'refunded', cancel_reason = 'mutual_agreement', cancelled_by = 'dba'
 WHERE order_id = pg_temp.id('inv_fin_refunded') AND position = 2;
UPDATE milestones.order_milestones SET state = 'cancelled', cancel_reason = 'mutual_agreement', cancelled_by = 'dba'
 WHERE order_id = pg_temp.id('inv_fin_refunded') AND position = 3;
SET LOCAL session_replication_role = origin;
CREATE FUNCTION pg_temp.problems(text) RETURNS text[] LANGUAGE sql AS
    $$ SELECT array_agg(problem ORDER BY problem) FROM milestones.check_invariants() WHERE order_id = pg_temp.id($1) $$;
SELECT ok('milestone 3 is in_progress but milestone 2 is pending' = ANY (pg_temp.problems('inv_skip_cancel')),
          'a milestone started while an earlier one is pending is reported, whatever lies between');
SELECT ok('milestone 1 is cancelled but was charged 1 times (100.00)' = ANY (pg_temp.problems('inv_skip_cancel')),
          'a cancelled milestone that was charged is reported');
SELECT ok('active order has skipped or refunded milestones' = ANY (pg_temp.problems('inv_refund_bare')),
          'a refund in an active order that no milestone cancellation made is reported');
SELECT ok('completed (finished) order has 1 of 3 milestones completed' = ANY (pg_temp.problems('inv_fin_refunded')),
          'a finished order whose last milestone not cancelled is not completed is reported');
SELECT is((SELECT count(*)::int FROM milestones.check_invariants()
            WHERE order_id NOT IN (pg_temp.id('inv_skip_cancel'), pg_temp.id('inv_refund_bare'), pg_temp.id('inv_fin_refunded'))), 0,
          'every order cancel_milestone touched is sound');

-------------------------------------------------------------------------------
-- order_status(order_id)
-------------------------------------------------------------------------------
SELECT is(milestones.order_status(pg_temp.id('d'))::text, pg_temp.st('d')::text, 'order_status(order_id) is the view''s row');
SET LOCAL ROLE t22_reader;
SELECT is((milestones.order_status(pg_temp.id('a'))).state, 'completed', 'a reader calls it');
SELECT throws_ok('SELECT milestones.order_status(999999)', 'P0002', 'order 999999 does not exist', 'an unknown order is P0002');
SELECT throws_ok('SELECT milestones.order_status(NULL)', '22023', 'order_id must not be NULL', 'NULL is 22023');
SELECT throws_ok('SELECT milestones.order_status(-4)', '22023', 'order_id must be a positive id', 'a negative id is 22023');
RESET ROLE;

-------------------------------------------------------------------------------
-- set_setting(name, value): owner only, validated like the table's checks
-------------------------------------------------------------------------------
SELECT is((milestones.set_setting('max_milestones', '6')).max_milestones, 6, 'set_setting returns the new settings row');
SELECT is((SELECT max_milestones FROM milestones.settings), 6, 'and the setting is changed');
SELECT is((milestones.set_setting('response_window', '8 days')).response_window, '8 days'::interval, 'an interval setting');
SELECT is((milestones.set_setting('seller_fee_rate', '0.2')).seller_fee_rate, 0.2, 'a rate');
SELECT is((milestones.set_setting('min_order_total', '250.50')).min_order_total, 250.50, 'an amount');
SELECT is((milestones.set_setting('notify', 'off')).notify, false, 'a boolean');
SELECT milestones.set_setting('notify', 'on');
SELECT pg_temp.counts() AS c \gset
SELECT (SELECT s::text FROM milestones.settings s) AS settings_before \gset
SELECT throws_ok($$SELECT milestones.set_setting('max_milestone', '4')$$, '22023', 'unknown setting ''max_milestone''', 'an unknown name is 22023');
SELECT alike(split_part(pg_temp.err($$SELECT milestones.set_setting('max_milestone', '4')$$), ' | ', 3),
            'Settings: min_order_total, max_milestones, response_window, seller_fee_rate%', 'the DETAIL lists the settings');
SELECT throws_ok($$SELECT milestones.set_setting('singleton', 'false')$$, '22023', NULL, 'the key column is no setting');
SELECT throws_ok($$SELECT milestones.set_setting(NULL, '4')$$, '22023', 'name must not be NULL', 'a NULL name is 22023');
SELECT throws_ok($$SELECT milestones.set_setting('max_milestones', NULL)$$, '22023', 'value must not be NULL', 'a NULL value is 22023');
SELECT throws_ok($$SELECT milestones.set_setting('max_milestones', '21')$$, '22023', 'invalid value for setting max_milestones',
                 'max_milestones above 20 is refused');
SELECT alike(split_part(pg_temp.err($$SELECT milestones.set_setting('max_milestones', '0')$$), ' | ', 3),
            'max_milestones = 0 breaks settings_max_milestones_range: CHECK (%', 'the DETAIL names the broken rule');
SELECT throws_ok($$SELECT milestones.set_setting('max_milestones', 'three')$$, '22023', 'invalid value for setting max_milestones',
                 'a value of the wrong type is 22023');
SELECT throws_ok($$SELECT milestones.set_setting('max_milestones', '3.5')$$, '22023', NULL, 'a fraction for a count is 22023');
SELECT throws_ok($$SELECT milestones.set_setting('min_order_total', '-1')$$, '22023', NULL, 'a negative minimum is refused');
SELECT throws_ok($$SELECT milestones.set_setting('min_order_total', '100.005')$$, '22023', 'setting min_order_total takes at most 2 decimals',
                 'an amount with 3 decimals is refused, never rounded');
SELECT throws_ok($$SELECT milestones.set_setting('min_order_total', 'NaN')$$, '22023', 'setting min_order_total must be a number', 'NaN is refused');
SELECT throws_ok($$SELECT milestones.set_setting('min_order_total', '1e20')$$, '22023', NULL, 'an amount beyond the column is refused');
SELECT throws_ok($$SELECT milestones.set_setting('seller_fee_rate', '1')$$, '22023', NULL, 'a fee rate of 1 is refused');
SELECT throws_ok($$SELECT milestones.set_setting('seller_fee_rate', '0.123456')$$, '22023', NULL, 'a fee rate with 6 decimals is refused');
SELECT throws_ok($$SELECT milestones.set_setting('response_window', '0')$$, '22023', NULL, 'a zero response window is refused');
SELECT throws_ok($$SELECT milestones.set_setting('response_window', '366 days')$$, '22023', NULL, 'a window over 365 days is refused');
SELECT throws_ok($$SELECT milestones.set_setting('response_window', 'a while')$$, '22023', NULL, 'a window that is no interval is refused');
SELECT throws_ok($$SELECT milestones.set_setting('idempotency_ttl', '59 minutes')$$, '22023', NULL, 'a key ttl under an hour is refused');
SELECT throws_ok($$SELECT milestones.set_setting('expiry_batch', '0')$$, '22023', NULL, 'an expiry batch of 0 is refused');
SELECT throws_ok($$SELECT milestones.set_setting('notify', 'maybe')$$, '22023', NULL, 'a boolean that is none is refused');
SELECT is((SELECT s::text FROM milestones.settings s), :'settings_before', 'refused settings changed nothing');
SET LOCAL ROLE t22_agent;
SELECT throws_ok($$SELECT milestones.set_setting('max_milestones', '4')$$, '42501', NULL, 'support cannot call set_setting');
RESET ROLE;

-------------------------------------------------------------------------------
-- milestone_status: one row per milestone, for the three roles
-------------------------------------------------------------------------------
SELECT is((SELECT count(*)::int FROM milestones.milestone_status), (SELECT count(*)::int FROM milestones.order_milestones),
          'milestone_status has one row per milestone');
SELECT is((SELECT (position, name, days, amount, currency, state, final, started_at, due_at, delivered_at, respond_by, completed_at)::text
             FROM milestones.milestone_status WHERE order_id = pg_temp.id('fin') AND position = 2),
          '(2,Animation,7,150.00,USD,completed,f,"2030-01-01 00:00:00+00","2030-01-08 00:00:00+00","2030-01-01 00:00:00+00","2030-01-06 00:00:00+00","2030-01-01 00:00:00+00")',
          'milestone_status shows the milestone''s facts and times');
SET LOCAL ROLE t22_app;
SELECT is((SELECT count(*)::int FROM milestones.milestone_status WHERE order_id = pg_temp.id('a')), 3, 'the app reads milestone_status');
RESET ROLE;
SET LOCAL ROLE t22_reader;
SELECT is((SELECT count(*)::int FROM milestones.milestone_status WHERE order_id = pg_temp.id('a')), 3, 'a reader reads milestone_status');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
