-- test/sql/41_payments.sql - SPEC section 11: payments confirmed by the
-- provider.  The settings and their capture, charges with attempts,
-- awaiting_payment, record_charge and retry_charge (every outcome, every
-- refusal with its SQLSTATE), the deadline rule at pay_by with and without
-- the sweep, late successes booked and refunded, every action that voids a
-- charge, the refunds of section 12 (record_refund, retry_refund), the
-- views and events, the privileges of milestones_payments, the guard, and
-- the books (check_invariants) after each story.  Recorded mode stays 1.1
-- (every other suite runs in it).
BEGIN;
\ir ../fixtures/setup.psql
SELECT plan(177);
SET LOCAL timezone = 'UTC';

CREATE ROLE t41_app NOLOGIN IN ROLE milestones_app;
CREATE ROLE t41_pay NOLOGIN IN ROLE milestones_payments;
CREATE ROLE t41_agent NOLOGIN IN ROLE milestones_support;
CREATE ROLE t41_reader NOLOGIN IN ROLE milestones_reader;

CREATE TEMP TABLE ids (name text PRIMARY KEY, id bigint);
GRANT SELECT ON ids TO PUBLIC;
CREATE FUNCTION pg_temp.id(text) RETURNS bigint LANGUAGE sql AS $$ SELECT id FROM ids WHERE name = $1 $$;
CREATE FUNCTION pg_temp.st(text) RETURNS milestones.order_status LANGUAGE sql AS
    $$ SELECT * FROM milestones.order_status WHERE order_id = pg_temp.id($1) $$;
CREATE FUNCTION pg_temp.ms(text) RETURNS text[] LANGUAGE sql AS
    $$ SELECT array_agg(state ORDER BY position) FROM milestones.order_milestones WHERE order_id = pg_temp.id($1) $$;
-- ch(name): the order's open charge id.
CREATE FUNCTION pg_temp.ch(text) RETURNS bigint LANGUAGE sql AS
    $$ SELECT charge_id FROM milestones.order_status WHERE order_id = pg_temp.id($1) $$;
-- legs(name, kind): ledger lines of a kind as 'position/account:amount@charge.attempt'.
CREATE FUNCTION pg_temp.legs(text, text) RETURNS text[] LANGUAGE sql AS
    $$ SELECT array_agg(COALESCE(position::text, '-') || '/' || account || ':' || amount
                        || COALESCE('@' || charge_id || '.' || charge_attempt, '') ORDER BY entry_id)
         FROM milestones.ledger_entries WHERE order_id = pg_temp.id($1) AND kind = $2 $$;
-- evs(name): the order's event names in order.
CREATE FUNCTION pg_temp.evs(text) RETURNS text[] LANGUAGE sql AS
    $$ SELECT array_agg(event ORDER BY event_id) FROM milestones.events WHERE order_id = pg_temp.id($1) $$;
CREATE FUNCTION pg_temp.nevents() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM milestones.events $$;
CREATE FUNCTION pg_temp.books_ok() RETURNS boolean LANGUAGE sql AS $$
    SELECT NOT EXISTS (SELECT FROM milestones._order_problems(ARRAY(SELECT order_id FROM milestones.orders), true))
       AND (SELECT COALESCE(sum(amount), 0) FROM milestones.ledger_entries) = 0
$$;
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
-- pay(charge, attempt, outcome, ref, failure): record_charge as the payment worker.
CREATE FUNCTION pg_temp.pay(p_charge bigint, p_attempt integer, p_outcome text,
                            p_ref text DEFAULT NULL, p_failure text DEFAULT NULL)
RETURNS milestones.charges LANGUAGE plpgsql AS $$
DECLARE r milestones.charges;
BEGIN
    SET LOCAL ROLE t41_pay;
    r := milestones.record_charge(p_charge, p_attempt, p_outcome, p_ref, p_failure);
    RESET ROLE;
    RETURN r;
END
$$;
CREATE FUNCTION pg_temp.refund(p_refund bigint, p_outcome text, p_ref text DEFAULT NULL, p_failure text DEFAULT NULL)
RETURNS milestones.refunds LANGUAGE plpgsql AS $$
DECLARE r milestones.refunds;
BEGIN
    SET LOCAL ROLE t41_pay;
    r := milestones.record_refund(p_refund, p_outcome, p_ref, p_failure);
    RESET ROLE;
    RETURN r;
END
$$;
-- new_order(name, placed): a confirmed-mode 3-milestone offer, placed when asked.
CREATE FUNCTION pg_temp.new_order(p_name text, p_place boolean DEFAULT true) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE v bigint := pg_temp.offer3();
BEGIN
    INSERT INTO ids VALUES (p_name, v);
    IF p_place THEN PERFORM milestones.place_order(v, 20); END IF;
    RETURN v;
END
$$;
-- paid(name): milestone 1 placed and paid (the order is active).
CREATE FUNCTION pg_temp.paid(p_name text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE v bigint := pg_temp.new_order(p_name);
BEGIN
    PERFORM pg_temp.pay(pg_temp.ch(p_name), 1, 'succeeded', 'pi_' || p_name || '_1');
    RETURN v;
END
$$;

-- --- Settings --------------------------------------------------------------------------------------
SELECT is((SELECT payment_mode FROM milestones.settings), 'recorded', 'payment_mode defaults to recorded (1.1 behaviour)');
SELECT is((SELECT payment_window FROM milestones.settings), interval '3 days', 'payment_window defaults to 3 days');
SELECT is((SELECT clearance_period FROM milestones.settings), interval '14 days', 'clearance_period defaults to 14 days');
SELECT is(pg_temp.offer3() > 0, true, 'an offer made in recorded mode');
INSERT INTO ids SELECT 'recorded', max(order_id) FROM milestones.orders;
SELECT throws_ok($$SELECT milestones.set_setting('payment_mode', 'paypal')$$, '22023', 'invalid value for setting payment_mode',
                 'payment_mode takes recorded or confirmed only');
SELECT throws_ok($$SELECT milestones.set_setting('payment_window', '59 minutes')$$, '22023', NULL, 'payment_window is at least 1 hour');
SELECT throws_ok($$SELECT milestones.set_setting('payment_window', '31 days')$$, '22023', NULL, 'payment_window is at most 30 days');
SELECT throws_ok($$SELECT milestones.set_setting('clearance_period', '91 days')$$, '22023', NULL, 'clearance_period is at most 90 days');
SELECT throws_ok($$SELECT milestones.set_setting('clearance_period', '-1 day')$$, '22023', NULL, 'clearance_period is not negative');
SELECT is((milestones.set_setting('payment_mode', 'confirmed')).payment_mode, 'confirmed', 'set_setting switches to confirmed mode');
SELECT is((milestones.set_setting('payment_window', '2 days')).payment_window, interval '2 days', 'set_setting changes the window');

-- Captured when the offer is made: the earlier offer stays recorded.
SELECT pg_temp.new_order('a', false);
SELECT is((pg_temp.st('a')).payment_mode, 'confirmed', 'an offer made now is confirmed-mode');
SELECT is((pg_temp.st('recorded')).payment_mode, 'recorded', 'the offer made before stays recorded-mode');
SELECT is((milestones.place_order(pg_temp.id('recorded'), 20)).state, 'active', 'a recorded-mode order is placed and charged at once, as in 1.1');
SELECT is(pg_temp.legs('recorded', 'charge'), ARRAY['1/buyer:-100.00', '1/escrow:100.00'], '... its charge booked at once, without a charge id');
SELECT is((SELECT count(*) FROM milestones.order_charges WHERE order_id = pg_temp.id('recorded')), 0::bigint, '... and it has no charge rows');

-- --- place_order requests the charge ---------------------------------------------------------------
SELECT is(ARRAY[s.state, s.milestone_state, s.charge_state, s.charge_attempt::text, s.current_milestone::text, s.charged::text],
          ARRAY['offered', 'awaiting_payment', 'requested', '1', '1', '0.00'],
          'place_order: the order stays offered, milestone 1 awaits payment, its charge is requested (attempt 1)')
  FROM milestones.place_order(pg_temp.id('a'), 20, 'place-a') s;
SELECT is((pg_temp.st('a')).pay_by, timestamptz '2030-01-03 00:00:00+00', 'pay_by = requested_at + payment_window (2 days)');
SELECT is(pg_temp.legs('a', 'charge'), NULL, 'nothing is booked while the charge is only requested');
SELECT is((SELECT placed_at FROM milestones.orders WHERE order_id = pg_temp.id('a')), NULL, 'placed_at is not set yet');
SELECT is((SELECT jsonb_build_object('charge_id', (detail->>'charge_id')::bigint = pg_temp.ch('a'), 'attempt', detail->'attempt',
                  'amount', detail->'amount', 'currency', detail->'currency', 'pay_by', detail->'pay_by', 'buyer_id', detail->'buyer_id')
             FROM milestones.events WHERE order_id = pg_temp.id('a') AND event = 'charge_requested'),
          '{"charge_id": true, "attempt": 1, "amount": 100.00, "currency": "USD", "pay_by": "2030-01-03T00:00:00+00:00", "buyer_id": 20}'::jsonb,
          'event charge_requested carries charge_id, attempt, amount, currency, pay_by and buyer_id');
SELECT is((SELECT p.payload::jsonb ->> 'amount' FROM milestones.events e,
                  milestones._payloads(ARRAY[e]) p WHERE e.order_id = pg_temp.id('a') AND e.event = 'charge_requested'),
          '100.00', 'its notification payload carries the money as a string');
SELECT is((SELECT ARRAY[state, charge_state, charge_attempt::text] FROM milestones.milestone_status WHERE order_id = pg_temp.id('a') AND position = 1),
          ARRAY['awaiting_payment', 'requested', '1'], 'milestone_status shows the milestone''s charge');
SELECT is((SELECT ARRAY[state, attempt_state, attempt::text, amount::text, buyer_id::text] FROM milestones.charges WHERE order_id = pg_temp.id('a')),
          ARRAY['requested', 'requested', '1', '100.00', '20'], 'the charges view: one row for the attempt');
SELECT is(pg_temp.err(format('SELECT milestones.place_order(%s, 20)', pg_temp.id('a'))),
          format('55000 | place_order is not allowed: milestone 1 of order %s awaits payment | Charge %s (attempt 1) is requested and must succeed by 2030-01-03 00:00:00+00. | The order is placed when the payment worker records the provider''s success; after a failed attempt the buyer calls retry_charge().',
                 pg_temp.id('a'), pg_temp.ch('a')),
          'a second place_order while milestone 1 awaits payment: 55000 with the charge in DETAIL');
SELECT is((milestones.place_order(pg_temp.id('a'), 20, 'place-a')).charge_id, pg_temp.ch('a'), 'a retry with the same key returns the first result');
SELECT is(pg_temp.err(format('SELECT milestones.deliver(%s, 10)', pg_temp.id('a'))),
          format('55000 | deliver is not allowed: milestone 1 of order %s awaits payment | Charge %s (attempt 1) is requested; it must succeed by %s. | The milestone starts when the payment worker records the provider''s success; after a failed attempt the buyer calls retry_charge().',
                 pg_temp.id('a'), pg_temp.ch('a'), (SELECT pay_by FROM milestones.order_charges WHERE charge_id = pg_temp.ch('a'))),
          'deliver before the order is paid: 55000, milestone 1 awaits payment (the seller waits for the money)');
SELECT is(pg_temp.err(format('SELECT milestones.accept(%s, 20)', pg_temp.id('a'))),
          format('55000 | accept is not allowed: order %s is offered | accept needs an active order with a delivered milestone; order %s is offered. | The buyer placed the order; its first milestone awaits payment (charge %s): the order starts when the payment provider confirms it.',
                 pg_temp.id('a'), pg_temp.id('a'), pg_temp.ch('a')),
          'accept before the order is paid: 55000, and the hint says the order waits for the payment');

-- --- A declined card, a retry, a success ----------------------------------------------------------
SELECT is(ARRAY[r.state, r.attempt_state, r.failure], ARRAY['failed', 'failed', 'card declined'],
          'record_charge failed: the charge and the attempt fail with the text')
  FROM pg_temp.pay(pg_temp.ch('a'), 1, 'failed', NULL, 'card declined') r;
SELECT is(pg_temp.ms('a'), ARRAY['awaiting_payment', 'pending', 'pending'], '... the milestone keeps waiting');
SELECT is((SELECT detail FROM milestones.events WHERE order_id = pg_temp.id('a') AND event = 'charge_failed'),
          jsonb_build_object('charge_id', pg_temp.ch('a'), 'attempt', 1, 'failure', 'card declined'), '... event charge_failed');
CREATE TEMP TABLE before AS SELECT pg_temp.nevents() AS n;
GRANT SELECT ON before TO PUBLIC;
SELECT is((pg_temp.pay(pg_temp.ch('a'), 1, 'failed', NULL, 'card declined')).attempt_state, 'failed', 'the same report again returns the same row');
SELECT is(pg_temp.nevents(), (SELECT n FROM before), '... and changes nothing (no event)');
SELECT is((pg_temp.pay(pg_temp.ch('a'), 1, 'failed', NULL, 'another text')).failure, 'card declined', '... even with another text');
SET LOCAL ROLE t41_app;
SELECT is(ARRAY[s.state, s.milestone_state, s.charge_state, s.charge_attempt::text],
          ARRAY['offered', 'awaiting_payment', 'requested', '2'], 'retry_charge (the application, for the buyer): attempt 2 is requested')
  FROM milestones.retry_charge(pg_temp.id('a'), 20, 'retry-a') s;
RESET ROLE;
SELECT is((pg_temp.st('a')).pay_by, timestamptz '2030-01-03 00:00:00+00', '... pay_by unchanged');
SELECT is((SELECT array_agg(attempt_state ORDER BY attempt) FROM milestones.charges WHERE charge_id = pg_temp.ch('a')),
          ARRAY['failed', 'requested'], '... one charges row per attempt');
SELECT is((milestones.retry_charge(pg_temp.id('a'), 20, 'retry-a')).charge_attempt, 2, 'retry_charge with the same key returns the first result');
SELECT is(pg_temp.err(format('SELECT milestones.retry_charge(%s, 20)', pg_temp.id('a'))),
          format('55000 | retry_charge is not allowed: attempt 2 of charge %s awaits the provider''s answer | Charge %s is requested; a retry needs its last attempt failed. | Wait for the payment worker to report the attempt.',
                 pg_temp.ch('a'), pg_temp.ch('a')), 'retry_charge while an attempt awaits its answer: 55000');
SELECT throws_ok(format('SELECT milestones.retry_charge(%s, 21)', pg_temp.id('a')), '42501', NULL, 'retry_charge by another user: 42501');
SET LOCAL ROLE t41_app;
SELECT throws_ok(format('SELECT milestones.record_charge(%s, 2, %L)', pg_temp.ch('a'), 'succeeded'), '42501',
                 'permission denied for function record_charge', 'the web application cannot report a payment: 42501');
RESET ROLE;
SELECT pg_temp.at('2030-01-01 10:00:00+00');
SELECT is(ARRAY[r.state, r.attempt_state, r.provider_ref, r.wanted::text], ARRAY['succeeded', 'succeeded', 'pi_a_2', 'true'],
          'record_charge succeeded: the charge succeeds with the provider''s reference')
  FROM pg_temp.pay(pg_temp.ch('a'), 2, 'succeeded', 'pi_a_2') r;
SELECT is(ARRAY[s.state, s.milestone_state, s.placed_at::text, s.due_at::text, s.charged::text, s.charge_id::text],
          ARRAY['active', 'in_progress', '2030-01-01 10:00:00+00', '2030-01-04 10:00:00+00', '100.00', NULL],
          'the order is placed when the success is recorded; milestone 1 starts then; no open charge')
  FROM pg_temp.st('a') s;
SELECT is(pg_temp.legs('a', 'charge'), ARRAY['1/buyer:-100.00@' || pg_temp.id('a') * 0 + (SELECT charge_id FROM milestones.order_charges WHERE order_id = pg_temp.id('a')) || '.2',
                                             '1/escrow:100.00@' || (SELECT charge_id FROM milestones.order_charges WHERE order_id = pg_temp.id('a')) || '.2'],
          'the success is booked buyer -> escrow with its charge and attempt');
SELECT is(pg_temp.evs('a'), ARRAY['offered', 'charge_requested', 'charge_failed', 'charge_requested', 'charge_succeeded', 'placed'],
          'events: offered, charge_requested, charge_failed, charge_requested, charge_succeeded, placed');
SELECT is((SELECT detail - 'charge_id' FROM milestones.events WHERE order_id = pg_temp.id('a') AND event = 'charge_succeeded'),
          '{"attempt": 2, "amount": 100.00, "provider_ref": "pi_a_2", "wanted": true}'::jsonb, 'event charge_succeeded');
SELECT is(pg_temp.err(format('SELECT pg_temp.pay(%s, 2, %L, NULL, %L)', (SELECT charge_id FROM milestones.order_charges WHERE order_id = pg_temp.id('a')), 'failed', 'oops')),
          format('55000 | record_charge is not allowed: attempt 2 of charge %s succeeded already | A success is final: the money was booked when it was reported. | If the provider reversed the payment, support cancels the order with a reason.',
                 (SELECT charge_id FROM milestones.order_charges WHERE order_id = pg_temp.id('a'))),
          'failed after succeeded for one attempt: 55000');
CREATE TEMP TABLE cha AS SELECT charge_id AS c FROM milestones.order_charges WHERE order_id = pg_temp.id('a');
GRANT SELECT ON cha TO PUBLIC;
SELECT is((pg_temp.pay((SELECT c FROM cha), 2, 'succeeded', 'pi_a_2')).state, 'succeeded', 'the success reported again: the same row');
SELECT is((SELECT count(*) FROM milestones.ledger_entries WHERE charge_id = (SELECT c FROM cha)), 2::bigint, '... booked once only');
SELECT ok(pg_temp.books_ok(), 'the books are sound');

-- A late success of the failed attempt 1: booked and refunded at once.
SELECT is(ARRAY[r.state, r.attempt_state, r.wanted::text, (r.refund_id IS NOT NULL)::text], ARRAY['succeeded', 'succeeded', 'false', 'true'],
          'succeeded after failed (attempt 1 settles late) is accepted: a success not wanted')
  FROM pg_temp.pay((SELECT c FROM cha), 1, 'succeeded', 'pi_a_1') r;
SELECT is(pg_temp.legs('a', 'refund'), ARRAY['1/buyer:100.00@' || (SELECT c FROM cha) || '.1', '1/escrow:-100.00@' || (SELECT c FROM cha) || '.1'],
          '... booked and refunded (escrow -> buyer) with its charge and attempt');
SELECT is(ARRAY[s.charged::text, s.refunded::text, s.state, s.milestone_state], ARRAY['200.00', '100.00', 'active', 'in_progress'],
          'order_status.charged and refunded include the late success and its refund; the order goes on')
  FROM pg_temp.st('a') s;
SELECT is((SELECT ARRAY[reason, state, amount::text, charge_attempt::text] FROM milestones.refunds WHERE order_id = pg_temp.id('a')),
          ARRAY['late_success', 'requested', '100.00', '1'], 'a refund row (late_success), requested for the payment worker');
SELECT is(pg_temp.evs('a'), ARRAY['offered', 'charge_requested', 'charge_failed', 'charge_requested', 'charge_succeeded', 'placed',
                                  'charge_succeeded', 'refund_requested', 'charge_refunded'],
          'events: charge_succeeded, refund_requested, charge_refunded');
SELECT is((SELECT (detail ? 'refund_id') AND detail->>'amount' = '100.00' FROM milestones.events WHERE order_id = pg_temp.id('a') AND event = 'charge_refunded'),
          true, 'charge_refunded carries charge_id, attempt, amount and refund_id');
SELECT ok(pg_temp.books_ok(), 'the books are sound');

-- --- Refunds the provider confirms (section 12) -------------------------------------------------------
CREATE TEMP TABLE ra AS SELECT refund_id AS r FROM milestones.order_refunds WHERE order_id = pg_temp.id('a');
GRANT SELECT ON ra TO PUBLIC;
SELECT is(ARRAY[x.state, x.failure], ARRAY['failed', 'account closed'], 'record_refund failed')
  FROM pg_temp.refund((SELECT r FROM ra), 'failed', NULL, 'account closed') x;
SELECT is((SELECT state FROM milestones.refunds LIMIT 1), 'failed', 'the refunds view lists failed refunds first');
SELECT is((pg_temp.refund((SELECT r FROM ra), 'failed', NULL, 'account closed')).attempt, 1, 'the same report again changes nothing');
SET LOCAL ROLE t41_agent;
SELECT is(ARRAY[x.state, x.attempt::text], ARRAY['requested', '2'], 'support sends it again: retry_refund, attempt 2')
  FROM milestones.retry_refund((SELECT r FROM ra)) x;
SELECT throws_ok(format('SELECT milestones.retry_refund(%s)', (SELECT r FROM ra)), '55000', NULL, 'retry_refund of a requested refund: 55000');
SELECT throws_ok('SELECT milestones.retry_refund(999999)', 'P0002', 'refund 999999 does not exist', 'retry_refund of an unknown refund: P0002');
RESET ROLE;
SELECT is((SELECT count(*) FROM milestones.events WHERE order_id = pg_temp.id('a') AND event = 'refund_requested'), 2::bigint,
          '... with event refund_requested again');
SELECT is(ARRAY[x.state, x.provider_ref], ARRAY['succeeded', 're_a_1'], 'record_refund succeeded')
  FROM pg_temp.refund((SELECT r FROM ra), 'succeeded', 're_a_1') x;
SELECT throws_ok(format('SELECT pg_temp.refund(%s, %L, NULL, %L)', (SELECT r FROM ra), 'failed', 'x'), '55000', NULL,
                 'record_refund failed after succeeded: 55000');
SELECT throws_ok('SELECT pg_temp.refund(999999, ''succeeded'')', 'P0002', 'refund 999999 does not exist', 'record_refund of an unknown refund: P0002');
SELECT throws_ok(format('SELECT pg_temp.refund(%s, %L)', (SELECT r FROM ra), 'done'), '22023', 'outcome must be succeeded or failed',
                 'record_refund with another outcome: 22023');
SET LOCAL ROLE t41_app;
SELECT throws_ok(format('SELECT milestones.record_refund(%s, %L)', (SELECT r FROM ra), 'succeeded'), '42501', NULL,
                 'the web application cannot report a refund: 42501');
SELECT throws_ok('SELECT count(*) FROM milestones.refunds', '42501', NULL, 'the web application does not read refunds');
RESET ROLE;
SELECT is((SELECT count(*) FROM milestones.events WHERE order_id = pg_temp.id('a') AND event IN ('refund_failed', 'refund_succeeded')), 2::bigint,
          'events refund_failed and refund_succeeded');

-- --- accept requests the next charge; deliver waits for it; stop while awaiting ---------------------------
SELECT is((milestones.deliver(pg_temp.id('a'), 10)).milestone_state, 'delivered', 'the paid milestone is delivered');
SELECT is(ARRAY[s.state, s.current_milestone::text, s.milestone_state, s.charge_state, s.charged::text],
          ARRAY['active', '2', 'awaiting_payment', 'requested', '200.00'], 'accept: milestone 2''s charge is requested, the order stays active')
  FROM milestones.accept(pg_temp.id('a'), 20) s;
SELECT is(pg_temp.ms('a'), ARRAY['completed', 'awaiting_payment', 'pending'], '... milestone 1 completed, 2 awaits payment');
SELECT is((SELECT detail FROM milestones.events WHERE order_id = pg_temp.id('a') AND event = 'accepted'), '{"next": 2}'::jsonb,
          'the accepted event names the next milestone (its charge has its own event)');
SELECT is(pg_temp.err(format('SELECT milestones.deliver(%s, 10)', pg_temp.id('a'))),
          format('55000 | deliver is not allowed: milestone 2 of order %s awaits payment | Charge %s (attempt 1) is requested; it must succeed by 2030-01-03 10:00:00+00. | The milestone starts when the payment worker records the provider''s success; after a failed attempt the buyer calls retry_charge().',
                 pg_temp.id('a'), pg_temp.ch('a')), 'deliver while the milestone awaits payment: 55000 (the seller waits for the money)');
SELECT throws_ok(format('SELECT milestones.accept(%s, 20)', pg_temp.id('a')), '55000', NULL, 'accept while awaiting payment: 55000');
INSERT INTO ids VALUES ('a2', pg_temp.ch('a'));
SELECT is(ARRAY[s.state, s.reason, s.paid_out::text, s.milestone_state], ARRAY['completed', 'stopped', '100.00', 'completed'],
          'the buyer may stop while the next milestone awaits payment: completed, stopped, milestone 1 paid')
  FROM milestones.stop(pg_temp.id('a'), 20) s;
SELECT is(pg_temp.ms('a'), ARRAY['completed', 'skipped', 'skipped'], '... the awaiting milestone and the rest are skipped');
SELECT is((SELECT ARRAY[state, void_reason] FROM milestones.order_charges WHERE charge_id = pg_temp.id('a2')), ARRAY['voided', 'stopped'],
          '... the charge is voided (stopped)');
SELECT is((SELECT detail FROM milestones.events WHERE order_id = pg_temp.id('a') AND event = 'charge_voided'),
          jsonb_build_object('charge_id', pg_temp.id('a2'), 'reason', 'stopped'), 'event charge_voided with the charge and reason');
-- A success after the stop: booked and refunded, never dropped.
SELECT is(ARRAY[r.state, r.attempt_state, r.wanted::text], ARRAY['voided', 'succeeded', 'false'],
          'a success arriving after the stop is recorded as not wanted')
  FROM pg_temp.pay(pg_temp.id('a2'), 1, 'succeeded', 'pi_a2_1') r;
SELECT is(ARRAY[s.state, s.reason, s.charged::text, s.refunded::text, s.paid_out::text], ARRAY['completed', 'stopped', '350.00', '250.00', '100.00'],
          '... booked and refunded: the ended order gains only those rows')
  FROM pg_temp.st('a') s;
SELECT ok(pg_temp.books_ok(), 'the books are sound');

-- --- pay_by: the sweep, exactly at the deadline ------------------------------------------------------------
SELECT pg_temp.at('2030-01-01 00:00:00+00');
SELECT pg_temp.new_order('b');
SELECT pg_temp.paid('c');
SELECT milestones.deliver(pg_temp.id('c'), 10);
SELECT milestones.accept(pg_temp.id('c'), 20);
SELECT is(milestones.expire_overdue('2030-01-02 23:59:59.999999+00'), 0, 'a microsecond before pay_by the sweep ends nothing');
SELECT is(milestones.expire_overdue('2030-01-03 00:00:00+00'), 2, 'at pay_by the sweep ends both unpaid charges');
SELECT is(ARRAY[s.state, s.milestone_state, s.charge_id::text], ARRAY['offered', 'pending', NULL],
          'milestone 1 unpaid: it goes back to pending and the order stays offered')
  FROM pg_temp.st('b') s;
SELECT is((SELECT ARRAY[state, void_reason, ended_at::text] FROM milestones.order_charges WHERE order_id = pg_temp.id('b')),
          ARRAY['voided', 'expired', '2030-01-03 00:00:00+00'], '... its charge voided (expired) at pay_by');
SELECT is(ARRAY[s.state, s.reason, s.completed_at::text, s.paid_out::text, s.charged::text],
          ARRAY['completed', 'unpaid', '2030-01-03 00:00:00+00', '100.00', '100.00'],
          'a later milestone unpaid: the order is completed as unpaid at completed_at = pay_by, the completed milestone paid')
  FROM pg_temp.st('c') s;
SELECT is(pg_temp.ms('c'), ARRAY['completed', 'skipped', 'skipped'], '... the later milestones skipped');
SELECT is((SELECT detail - 'payout' FROM milestones.events WHERE order_id = pg_temp.id('c') AND event = 'unpaid'),
          '{"skipped": 2, "pay_by": "2030-01-03T00:00:00+00:00"}'::jsonb, 'event unpaid, with the payout');
SELECT is(milestones.expire_overdue('2030-01-10 00:00:00+00'), 0, 'the sweep again: nothing left');
SELECT pg_temp.at('2030-01-05 00:00:00+00');
SELECT is(ARRAY[s.state, s.milestone_state, s.charge_state], ARRAY['offered', 'awaiting_payment', 'requested'],
          'the buyer may place the order again: a new charge')
  FROM milestones.place_order(pg_temp.id('b'), 20) s;
SELECT is((SELECT count(*) FROM milestones.order_charges WHERE order_id = pg_temp.id('b')), 2::bigint, '... the order has two charges now');
SELECT is((milestones.withdraw_offer(pg_temp.id('b'), 10)).state, 'withdrawn', '(the seller withdraws it; its charge is voided)');
SELECT ok(pg_temp.books_ok(), 'the books are sound');

-- --- pay_by without the sweep: each function decides with now() after the lock --------------------------------
SELECT pg_temp.at('2030-02-01 00:00:00+00');
SELECT pg_temp.new_order('d');
SELECT pg_temp.pay(pg_temp.ch('d'), 1, 'failed', NULL, 'insufficient funds');
SELECT pg_temp.paid('e');
SELECT milestones.deliver(pg_temp.id('e'), 10);
SELECT milestones.accept(pg_temp.id('e'), 20);
INSERT INTO ids VALUES ('e2', pg_temp.ch('e')), ('d1', pg_temp.ch('d'));
SELECT pg_temp.at('2030-02-03 00:00:00+00');
SELECT is(pg_temp.err(format('SELECT milestones.retry_charge(%s, 20)', pg_temp.id('d'))),
          format('55000 | retry_charge is not allowed: the payment window of order %s has closed | Charge %s of milestone 1 had to be paid by 2030-02-03 00:00:00+00. | The charge is void; the buyer may place the order again.',
                 pg_temp.id('d'), pg_temp.id('d1')), 'retry_charge at pay_by: 55000');
SELECT is(pg_temp.err(format('SELECT milestones.stop(%s, 20)', pg_temp.id('e'))),
          format('55000 | stop is not allowed: the payment window of order %s has closed | Charge %s of milestone 2 had to be paid by 2030-02-03 00:00:00+00. | The order is in effect completed as unpaid; the expiry sweep records it.',
                 pg_temp.id('e'), pg_temp.id('e2')), 'stop at pay_by: 55000 (the order is in effect unpaid)');
SET LOCAL ROLE t41_agent;
SELECT throws_ok(format('SELECT milestones.cancel(%s, %L, %L)', pg_temp.id('e'), 'alice', 'mutual_agreement'), '55000',
                 format('cancel is not allowed: order %s is unpaid', pg_temp.id('e')), 'cancel at pay_by of a later milestone: 55000');
SELECT throws_ok(format('SELECT milestones.cancel_milestone(%s, 3, %L, %L)', pg_temp.id('e'), 'alice', 'mutual_agreement'), '55000',
                 format('cancel_milestone is not allowed: order %s is unpaid', pg_temp.id('e')), 'cancel_milestone at pay_by: 55000');
RESET ROLE;
SELECT is(pg_temp.ms('e'), ARRAY['completed', 'awaiting_payment', 'pending'], 'refused calls changed nothing');
SELECT is(ARRAY[r.state, r.attempt_state, r.wanted::text, (r.refund_id IS NOT NULL)::text], ARRAY['voided', 'succeeded', 'false', 'true'],
          'a success reported at pay_by before the sweep ran: the charge is void, the success booked and refunded')
  FROM pg_temp.pay(pg_temp.id('e2'), 1, 'succeeded', 'pi_e2_1') r;
SELECT is(ARRAY[s.state, s.reason, s.completed_at::text, s.paid_out::text, s.refunded::text],
          ARRAY['completed', 'unpaid', '2030-02-03 00:00:00+00', '100.00', '150.00'],
          '... and the order is as the sweep leaves it: completed unpaid at pay_by')
  FROM pg_temp.st('e') s;
SELECT is(milestones.expire_overdue('2030-02-04 00:00:00+00'), 1, 'the sweep then ends only the other unpaid charge');
SELECT is(ARRAY[s.state, s.milestone_state], ARRAY['offered', 'pending'], '... milestone 1 of that offer back to pending')
  FROM pg_temp.st('d') s;
SELECT ok(pg_temp.books_ok(), 'the books are sound');

-- place_order on an offer whose charge passed pay_by voids it and requests a new one.
SELECT pg_temp.at('2030-03-01 00:00:00+00');
SELECT pg_temp.new_order('f');
INSERT INTO ids VALUES ('f1', pg_temp.ch('f'));
SELECT pg_temp.at('2030-03-04 00:00:00+00');
SELECT is(ARRAY[s.state, s.milestone_state, s.charge_state, (s.charge_id <> pg_temp.id('f1'))::text], ARRAY['offered', 'awaiting_payment', 'requested', 'true'],
          'place_order after pay_by (no sweep): the old charge is voided and a new one requested')
  FROM milestones.place_order(pg_temp.id('f'), 20) s;
SELECT is((SELECT ARRAY[state, void_reason] FROM milestones.order_charges WHERE charge_id = pg_temp.id('f1')), ARRAY['voided', 'expired'],
          '... the old one expired');
SELECT is((milestones.decline_offer(pg_temp.id('f'), 20)).state, 'declined', '(the buyer declines it; its charge is voided)');

-- --- Withdraw, decline, cancel and cancel_milestone void a requested charge ----------------------------------------
SELECT pg_temp.at('2030-04-01 00:00:00+00');
SELECT pg_temp.new_order('w');
SELECT pg_temp.new_order('x');
INSERT INTO ids VALUES ('w1', pg_temp.ch('w')), ('x1', pg_temp.ch('x'));
SELECT is((milestones.withdraw_offer(pg_temp.id('w'), 10)).state, 'withdrawn', 'withdraw_offer while milestone 1 awaits payment (an unpaid checkout is still an offer)');
SELECT is((SELECT ARRAY[state, void_reason] FROM milestones.order_charges WHERE charge_id = pg_temp.id('w1')), ARRAY['voided', 'withdrawn'], '... voids the charge (withdrawn)');
SELECT is(pg_temp.ms('w'), ARRAY['skipped', 'skipped', 'skipped'], '... every milestone skipped');
SELECT is((milestones.decline_offer(pg_temp.id('x'), 20)).state, 'declined', 'decline_offer while milestone 1 awaits payment');
SELECT is((SELECT void_reason FROM milestones.order_charges WHERE charge_id = pg_temp.id('x1')), 'declined', '... voids the charge (declined)');
SELECT is((pg_temp.pay(pg_temp.id('x1'), 1, 'succeeded', 'pi_x1')).wanted, false, 'a success after the offer was declined is not wanted');
SELECT is(ARRAY[s.state, s.charged::text, s.refunded::text], ARRAY['declined', '100.00', '100.00'], '... booked and refunded')
  FROM pg_temp.st('x') s;

SELECT pg_temp.new_order('y');
SELECT pg_temp.paid('z');
INSERT INTO ids VALUES ('y1', pg_temp.ch('y'));
SET LOCAL ROLE t41_agent;
SELECT is((milestones.cancel(pg_temp.id('y'), 'alice', 'mutual_agreement')).state, 'cancelled', 'support cancels an offer awaiting payment');
RESET ROLE;
SELECT is((SELECT void_reason FROM milestones.order_charges WHERE charge_id = pg_temp.id('y1')), 'cancelled', '... voids the charge (cancelled)');
SELECT is(pg_temp.ms('y'), ARRAY['skipped', 'skipped', 'skipped'], '... the awaiting milestone is skipped');
SET LOCAL ROLE t41_agent;
SELECT is(ARRAY[s.state, s.refunded::text, s.milestone_state], ARRAY['cancelled', '100.00', 'refunded'],
          'support cancels a paid running milestone''s order: refunded')
  FROM milestones.cancel(pg_temp.id('z'), 'alice', 'seller_unresponsive') s;
RESET ROLE;
SELECT is((SELECT ARRAY[reason, state, amount::text] FROM milestones.refunds WHERE order_id = pg_temp.id('z')), ARRAY['cancelled', 'requested', '100.00'],
          '... a refund row (cancelled) for the payment worker');
SELECT is((SELECT charge_id IS NOT NULL AND charge_attempt = 1 FROM milestones.ledger_entries WHERE order_id = pg_temp.id('z') AND kind = 'refund' AND account = 'buyer'),
          true, '... the ledger refund leg carries the charge and attempt');
SELECT ok(pg_temp.books_ok(), 'the books are sound');

-- cancel_milestone of the milestone awaiting payment: cancelled, the next one is charged.
SELECT pg_temp.paid('m');
SELECT milestones.deliver(pg_temp.id('m'), 10);
SELECT milestones.accept(pg_temp.id('m'), 20);
INSERT INTO ids VALUES ('m2', pg_temp.ch('m'));
SET LOCAL ROLE t41_agent;
SELECT is(ARRAY[s.state, s.current_milestone::text, s.milestone_state, (s.charge_id <> pg_temp.id('m2'))::text],
          ARRAY['active', '3', 'awaiting_payment', 'true'],
          'cancel_milestone of the milestone awaiting payment: it is cancelled and the next one''s charge requested')
  FROM milestones.cancel_milestone(pg_temp.id('m'), 2, 'alice', 'mutual_agreement') s;
RESET ROLE;
SELECT is(pg_temp.ms('m'), ARRAY['completed', 'cancelled', 'awaiting_payment'], '... milestones completed, cancelled, awaiting_payment');
SELECT is((SELECT void_reason FROM milestones.order_charges WHERE charge_id = pg_temp.id('m2')), 'milestone_cancelled', '... its charge voided (milestone_cancelled)');
SELECT pg_temp.pay(pg_temp.ch('m'), 1, 'succeeded', 'pi_m3');
SET LOCAL ROLE t41_agent;
SELECT is(ARRAY[s.state, s.reason, s.refunded::text, s.paid_out::text], ARRAY['cancelled', 'mutual_agreement', '250.00', '100.00'],
          'cancel_milestone of the paid last milestone: refunded, the order ends as cancel ends it')
  FROM milestones.cancel_milestone(pg_temp.id('m'), 3, 'alice', 'mutual_agreement') s;
RESET ROLE;
SELECT is((SELECT reason FROM milestones.refunds WHERE order_id = pg_temp.id('m')), 'milestone_cancelled', '... a refund row (milestone_cancelled)');
SELECT ok(pg_temp.books_ok(), 'the books are sound');

-- cancel_milestone of the running paid milestone with a next one: the next is charged (requested), not started.
SELECT pg_temp.paid('n');
SET LOCAL ROLE t41_agent;
SELECT is(ARRAY[s.state, s.current_milestone::text, s.milestone_state, s.refunded::text], ARRAY['active', '2', 'awaiting_payment', '100.00'],
          'cancel_milestone of the running milestone in confirmed mode: refunded, the next one awaits payment')
  FROM milestones.cancel_milestone(pg_temp.id('n'), 1, 'alice', 'mutual_agreement') s;
RESET ROLE;
SELECT is(pg_temp.ms('n'), ARRAY['refunded', 'awaiting_payment', 'pending'], '... milestones refunded, awaiting_payment, pending');
SELECT is(milestones.expire_overdue('2030-05-01 00:00:00+00'), 1, 'its window passes');
SELECT is(ARRAY[s.state, s.reason, s.paid_out::text], ARRAY['completed', 'unpaid', '0.00'], '... completed unpaid with nothing completed: nothing paid out')
  FROM pg_temp.st('n') s;
SELECT ok(pg_temp.books_ok(), 'the books are sound');

-- --- Bad input: 22023, P0002, and a failed call changes nothing ---------------------------------------------------
SELECT pg_temp.at('2030-06-01 00:00:00+00');
SELECT pg_temp.new_order('q');
INSERT INTO ids VALUES ('q1', pg_temp.ch('q'));
TRUNCATE before; INSERT INTO before SELECT pg_temp.nevents();
SELECT throws_ok('SELECT pg_temp.pay(987654, 1, ''succeeded'')', 'P0002', 'charge 987654 does not exist', 'an unknown charge: P0002');
SELECT throws_ok(format('SELECT pg_temp.pay(%s, 1, %L)', pg_temp.id('q1'), 'pending'), '22023', 'outcome must be succeeded or failed',
                 'an outcome other than succeeded or failed: 22023');
SELECT throws_ok(format('SELECT pg_temp.pay(%s, 1, %L)', pg_temp.id('q1'), 'SUCCEEDED'), '22023', NULL, 'outcomes are lower case');
SELECT is(pg_temp.err(format('SELECT pg_temp.pay(%s, 2, %L)', pg_temp.id('q1'), 'succeeded')),
          format('22023 | attempt 2 of charge %s was never made | Charge %s has attempts 1 to 1. | Report the attempt of the charge_requested event (the provider''s key is charge-<charge_id>-<attempt>).',
                 pg_temp.id('q1'), pg_temp.id('q1')), 'an attempt that was never made: 22023');
SELECT throws_ok(format('SELECT pg_temp.pay(%s, 0, %L)', pg_temp.id('q1'), 'succeeded'), '22023', NULL, 'attempt 0: 22023');
SELECT throws_ok('SELECT pg_temp.pay(NULL, 1, ''succeeded'')', '22023', 'charge_id must not be NULL', 'a NULL charge_id: 22023');
SELECT throws_ok(format('SELECT pg_temp.pay(%s, NULL, %L)', pg_temp.id('q1'), 'succeeded'), '22023', 'attempt must not be NULL', 'a NULL attempt: 22023');
SELECT throws_ok(format('SELECT pg_temp.pay(%s, 1, NULL)', pg_temp.id('q1')), '22023', 'outcome must not be NULL', 'a NULL outcome: 22023');
SELECT throws_ok(format('SELECT pg_temp.pay(%s, 1, %L, NULL, NULL)', pg_temp.id('q1'), 'failed'), '22023', 'failure must not be NULL',
                 'a failure without its text: 22023');
SELECT throws_ok(format('SELECT pg_temp.pay(%s, 1, %L, %L)', pg_temp.id('q1'), 'succeeded', repeat('r', 256)), '22023', 'provider_ref is too long',
                 'a provider reference over 255 characters: 22023');
SELECT throws_ok(format('SELECT pg_temp.pay(%s, 1, %L, %L)', pg_temp.id('q1'), 'succeeded', ''), '22023', 'provider_ref must have 1 to 255 characters',
                 'an empty provider reference: 22023');
SELECT throws_ok(format('SELECT pg_temp.pay(%s, 1, %L, NULL, %L)', pg_temp.id('q1'), 'failed', repeat('f', 2001)), '22023', 'failure is too long',
                 'a failure text over 2000 characters: 22023');
SELECT throws_ok('SELECT pg_temp.pay(-3, 1, ''succeeded'')', '22023', 'charge_id must be a positive id', 'a negative charge id: 22023');
SELECT throws_ok('SELECT milestones.retry_charge(NULL, 20)', '22023', 'order_id must not be NULL', 'retry_charge with a NULL order: 22023');
SELECT throws_ok('SELECT milestones.retry_charge(987654, 20)', 'P0002', 'order 987654 does not exist', 'retry_charge of an unknown order: P0002');
SELECT throws_ok(format('SELECT milestones.retry_charge(%s, 20)', pg_temp.id('recorded')), '55000', NULL,
                 'retry_charge of a recorded-mode order: 55000');
SELECT is(pg_temp.nevents(), (SELECT n FROM before), 'none of the refused calls wrote an event');
SELECT is((SELECT array_agg(state) FROM milestones.charges WHERE charge_id = pg_temp.id('q1')), ARRAY['requested'], '... nor changed the charge');

-- --- Privileges of milestones_payments ------------------------------------------------------------------------
SET LOCAL ROLE t41_pay;
SELECT is((SELECT count(*) > 0 FROM milestones.charges), true, 'the payment worker reads charges');
SELECT is((SELECT count(*) > 0 FROM milestones.refunds), true, '... and refunds');
SELECT is((SELECT count(*) >= 0 FROM milestones.withdrawals), true, '... and withdrawals');
SELECT throws_ok('SELECT count(*) FROM milestones.order_status', '42501', NULL, '... but not order_status');
SELECT throws_ok(format('SELECT milestones.place_order(%s, 20)', pg_temp.id('q')), '42501', NULL, '... and calls no order action');
SELECT throws_ok('SELECT count(*) FROM milestones.order_charges', '42501', NULL, '... nor reads the tables');
SELECT lives_ok($$SELECT milestones.register_consumer('t41_payments')$$, '... it registers a consumer');
SELECT ok(milestones.next_batch('t41_payments') IS NULL, '... and consumes');
RESET ROLE;
SET LOCAL ROLE t41_reader;
SELECT is((SELECT count(*) > 0 FROM milestones.charges), true, 'a reader reads charges');
SELECT throws_ok(format('SELECT milestones.retry_charge(%s, 20)', pg_temp.id('q')), '42501', NULL, 'a reader cannot retry a charge');
RESET ROLE;
SELECT function_privs_are('milestones', 'record_charge', ARRAY['bigint', 'integer', 'text', 'text', 'text'], 'milestones_app', ARRAY[]::text[],
                          'milestones_app has no EXECUTE on record_charge');
SELECT function_privs_are('milestones', 'record_charge', ARRAY['bigint', 'integer', 'text', 'text', 'text'], 'milestones_payments', ARRAY['EXECUTE'],
                          'milestones_payments executes record_charge');
SELECT is_definer('milestones', 'record_charge', ARRAY['bigint', 'integer', 'text', 'text', 'text'], 'record_charge is SECURITY DEFINER');

-- --- The guard: every write path --------------------------------------------------------------------------------
SELECT throws_ok(format('UPDATE milestones.order_charges SET state = %L WHERE charge_id = %s', 'requested', pg_temp.id('w1')), '55000',
                 format('charge %s is voided and can no longer change', pg_temp.id('w1')), 'a voided charge can no longer change');
SELECT throws_ok(format('UPDATE milestones.order_charges SET amount = 1 WHERE charge_id = %s', pg_temp.id('q1')), '23514',
                 format('column "amount" of charge %s cannot change', pg_temp.id('q1')), 'a charge''s amount cannot change');
SELECT throws_ok(format('DELETE FROM milestones.order_charges WHERE charge_id = %s', pg_temp.id('q1')), '23000', NULL, 'charges cannot be deleted');
SELECT throws_ok(format('UPDATE milestones.charge_attempts SET state = %L WHERE charge_id = %s', 'requested', (SELECT c FROM cha)), '55000', NULL,
                 'a succeeded attempt can no longer change');
SELECT throws_ok(format('UPDATE milestones.order_milestones SET state = %L WHERE order_id = %s AND position = 1', 'in_progress', pg_temp.id('q')), '23514',
                 NULL, 'a hand-written start of a milestone awaiting payment breaks a row rule (started_at)');
SELECT throws_ok(format($$UPDATE milestones.order_milestones SET state = 'awaiting_payment' WHERE order_id = %s AND position = 1$$, pg_temp.id('recorded')),
                 '55000', NULL, 'in_progress -> awaiting_payment is not a transition');
SAVEPOINT handwrite;
SET CONSTRAINTS ALL IMMEDIATE;
SELECT throws_ok(format($$UPDATE milestones.order_charges SET state = 'failed' WHERE charge_id = %s$$, pg_temp.id('q1')), '23514', NULL,
                 'a hand-written failure without an attempt report is caught by the commit check');
ROLLBACK TO handwrite;
SELECT is((SELECT state FROM milestones.order_charges WHERE charge_id = pg_temp.id('q1')), 'requested', '... and changes nothing');

-- --- At the end --------------------------------------------------------------------------------------------------------
SELECT is((SELECT count(*) FROM milestones.charges WHERE attempt_state = 'succeeded' AND NOT wanted AND refund_id IS NULL), 0::bigint,
          'every success not wanted has its refund');
SELECT is((SELECT count(*) FROM milestones.ledger_entries l JOIN milestones.orders o USING (order_id)
            WHERE o.payment_mode = 'confirmed' AND l.kind IN ('charge', 'refund') AND l.charge_id IS NULL), 0::bigint,
          'every charge and refund leg of a confirmed-mode order names its charge');
SELECT is((SELECT count(*) FROM milestones.ledger_entries l JOIN milestones.orders o USING (order_id)
            WHERE o.payment_mode = 'recorded' AND l.charge_id IS NOT NULL), 0::bigint, 'no recorded-mode leg names a charge');
SELECT ok(pg_temp.books_ok(), 'the books are sound at the end');
SELECT * FROM finish();
ROLLBACK;
