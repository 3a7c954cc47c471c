-- test/sql/20_cancel.sql - R10: support cancellation, refunds through the
-- ledger, the reasons list, and the books balanced after every path.
BEGIN;
\ir ../fixtures/setup.psql
SELECT plan(105);

-- Roles of this suite (rolled back with it): an agent in milestones_support,
-- an application login in milestones_app only, a reader.
CREATE ROLE t20_agent NOLOGIN IN ROLE milestones_support;
CREATE ROLE t20_app NOLOGIN IN ROLE milestones_app;
CREATE ROLE t20_reader NOLOGIN IN ROLE milestones_reader;

CREATE TEMP TABLE ids (name text PRIMARY KEY, id bigint);
GRANT SELECT ON ids TO PUBLIC;
CREATE FUNCTION pg_temp.id(text) RETURNS bigint LANGUAGE sql AS $$ SELECT id FROM ids WHERE name = $1 $$;
CREATE FUNCTION pg_temp.st(text) RETURNS milestones.order_status LANGUAGE sql AS
    $$ SELECT * FROM milestones.order_status WHERE order_id = pg_temp.id($1) $$;
CREATE FUNCTION pg_temp.ms(text) RETURNS text[] LANGUAGE sql AS
    $$ SELECT array_agg(state ORDER BY position) FROM milestones.order_milestones WHERE order_id = pg_temp.id($1) $$;
-- legs(name, kind): the ledger lines of one kind as 'account:amount', in entry order.
CREATE FUNCTION pg_temp.legs(text, text) RETURNS text[] LANGUAGE sql AS
    $$ SELECT array_agg(account || ':' || amount ORDER BY entry_id) FROM milestones.ledger_entries
        WHERE order_id = pg_temp.id($1) AND kind = $2 $$;
-- escrow(name): what the order still holds in escrow.
CREATE FUNCTION pg_temp.escrow(text) RETURNS numeric LANGUAGE sql AS
    $$ SELECT COALESCE(sum(amount), 0) FROM milestones.ledger_entries WHERE order_id = pg_temp.id($1) AND account = 'escrow' $$;
CREATE FUNCTION pg_temp.books_ok() RETURNS boolean LANGUAGE sql AS $$
    SELECT NOT EXISTS (SELECT FROM milestones.check_invariants())
       AND (SELECT COALESCE(sum(amount), 0) FROM milestones.ledger_entries) = 0
       AND NOT EXISTS (SELECT txn_id FROM milestones.ledger_entries GROUP BY txn_id HAVING sum(amount) <> 0)
$$;
-- cancel_sql(name, reason): the SQL text of a cancel by agent "alice".
CREATE FUNCTION pg_temp.cancel_sql(text, text DEFAULT 'mutual_agreement') RETURNS text LANGUAGE sql AS
    $$ SELECT format('SELECT milestones.cancel(%s, %L, %L, %L)', pg_temp.id($1), 'alice', $2, 'ticket 4711') $$;

-- Orders: o = offered; a = active, milestone 1 in progress; d = delivered
-- twice-completed path; e = will expire; w/x = withdrawn / finished.
INSERT INTO ids VALUES ('o', pg_temp.offer3()), ('a', pg_temp.offer3()), ('e', pg_temp.offer3()),
                       ('w', pg_temp.offer3()), ('x', pg_temp.offer3()), ('k', pg_temp.offer3());
SELECT milestones.place_order(pg_temp.id(n), 20) FROM unnest(ARRAY['a','e','x','k']) n;

-------------------------------------------------------------------------------
-- Who may cancel: members of milestones_support only (42501 for others)
-------------------------------------------------------------------------------
SET LOCAL ROLE t20_app;
SELECT throws_ok(pg_temp.cancel_sql('a'), '42501', NULL, 'an application role (milestones_app) cannot cancel');
SELECT throws_ok(format('SELECT milestones.set_cancellation_reason(%L, %L)', 'fraud', 'Fraud'), '42501', NULL,
                 'an application role cannot edit the reasons list');
SELECT is((SELECT count(*)::int FROM milestones.cancellation_reasons WHERE active), 6,
          'the application can read the seeded reasons list');
RESET ROLE;
SET LOCAL ROLE t20_reader;
SELECT throws_ok(pg_temp.cancel_sql('a'), '42501', NULL, 'a reader cannot cancel');
RESET ROLE;
SELECT ok(NOT has_function_privilege('public', 'milestones.cancel(bigint,text,text,text,text)', 'EXECUTE'),
          'PUBLIC has no EXECUTE on cancel');
SELECT ok(NOT has_function_privilege('milestones_app', 'milestones.cancel(bigint,text,text,text,text)', 'EXECUTE'),
          'milestones_app has no EXECUTE on cancel: buyers and sellers cannot cancel');
SELECT is(pg_temp.ms('a'), ARRAY['in_progress','pending','pending'], 'the refused calls changed nothing');

-------------------------------------------------------------------------------
-- Argument checks (22023), unknown orders (P0002)
-------------------------------------------------------------------------------
SET LOCAL ROLE t20_agent;
SELECT throws_ok(format('SELECT milestones.cancel(%s, %L, %L)', pg_temp.id('a'), 'alice', 'bored'), '22023',
                 'unknown cancellation reason ''bored''', 'an unknown reason is refused');
SELECT throws_ok(format('SELECT milestones.cancel(%s, %L, %L)', pg_temp.id('a'), 'alice', 'MUTUAL_AGREEMENT'), '22023',
                 NULL, 'reason codes are case-sensitive');
SELECT throws_ok(format('SELECT milestones.cancel(%s, NULL, %L)', pg_temp.id('a'), 'mutual_agreement'), '22023',
                 'agent must not be NULL', 'a NULL agent is refused');
SELECT throws_ok(format('SELECT milestones.cancel(%s, %L, %L)', pg_temp.id('a'), '   ', 'mutual_agreement'), '22023',
                 'agent must not be blank', 'a blank agent is refused');
SELECT throws_ok(format('SELECT milestones.cancel(%s, %L, NULL)', pg_temp.id('a'), 'alice'), '22023',
                 'reason must not be NULL', 'a NULL reason is refused');
SELECT throws_ok(format('SELECT milestones.cancel(NULL, %L, %L)', 'alice', 'mutual_agreement'), '22023',
                 'order_id must not be NULL', 'a NULL order id is refused');
SELECT throws_ok(format('SELECT milestones.cancel(%s, %L, %L, %L)', pg_temp.id('a'), 'alice', 'mutual_agreement', repeat('n', 2001)),
                 '22023', 'note is too long', 'a note over 2000 characters is refused');
SELECT throws_ok(format('SELECT milestones.cancel(%s, %L, %L)', pg_temp.id('a'), repeat('a', 201), 'mutual_agreement'),
                 '22023', 'agent is too long', 'an agent over 200 characters is refused');
SELECT throws_ok($$SELECT milestones.cancel(999999, 'alice', 'mutual_agreement')$$, 'P0002',
                 'order 999999 does not exist', 'an unknown order');
RESET ROLE;
SELECT is(pg_temp.ms('a'), ARRAY['in_progress','pending','pending'], 'refused cancels change nothing');
SELECT is((SELECT count(*)::int FROM milestones.events WHERE event = 'cancelled'), 0, 'and write no event');

-------------------------------------------------------------------------------
-- Cancel an offered order: it just ends; no money moves
-------------------------------------------------------------------------------
SET LOCAL ROLE t20_agent;
SELECT is((milestones.cancel(pg_temp.id('o'), 'alice', 'duplicate_order', 'dup of #12')).state, 'cancelled',
          'cancel of an offered order returns the cancelled status row');
RESET ROLE;
SELECT is(pg_temp.ms('o'), ARRAY['skipped','skipped','skipped'], 'its milestones are skipped');
SELECT is((SELECT count(*)::int FROM milestones.ledger_entries WHERE order_id = pg_temp.id('o')), 0,
          'no money moves for an offered order');
SELECT is((SELECT (cancel_reason, cancelled_by, cancel_note)::text FROM milestones.orders WHERE order_id = pg_temp.id('o')),
          '(duplicate_order,alice,"dup of #12")', 'reason, agent and note are kept on the order');
SELECT is((pg_temp.st('o')).reason, 'duplicate_order', 'order_status.reason is the cancellation reason');
SELECT is((pg_temp.st('o')).completed_at, '2030-01-01 00:00:00+00'::timestamptz, 'completed_at is the cancel time');
SELECT is((pg_temp.st('o')).placed_at, NULL, 'a cancelled offer was never placed');
SELECT is((SELECT (actor_role, agent, order_state, detail->>'reason', detail->>'note')::text FROM milestones.events
            WHERE order_id = pg_temp.id('o') AND event = 'cancelled'),
          '(support,alice,cancelled,duplicate_order,"dup of #12")', 'a cancelled event names the agent, reason and note');
SELECT is((SELECT count(*)::int FROM milestones.payouts WHERE order_id = pg_temp.id('o')), 0, 'no payout');
SELECT ok(pg_temp.books_ok(), 'books balance after cancelling an offer');
SELECT throws_ok(format('SELECT milestones.place_order(%s, 20)', pg_temp.id('o')), '55000', NULL,
                 'a cancelled offer cannot be placed');

-------------------------------------------------------------------------------
-- Cancel an active order with milestone 1 in progress: refund, nothing paid
-------------------------------------------------------------------------------
SET LOCAL ROLE t20_agent;
SELECT is((milestones.cancel(pg_temp.id('a'), 'alice', 'seller_unresponsive')).refunded, 100.00::numeric,
          'cancel returns the status row with the refund');
RESET ROLE;
SELECT is(pg_temp.ms('a'), ARRAY['refunded','skipped','skipped'], 'running milestone refunded, pending ones skipped');
SELECT is(pg_temp.legs('a', 'refund'), ARRAY['escrow:-100.00','buyer:100.00'], 'refund: escrow -> buyer, 100.00');
SELECT is((SELECT count(DISTINCT txn_id)::int FROM milestones.ledger_entries WHERE order_id = pg_temp.id('a') AND kind = 'refund'),
          1, 'the refund is one ledger transaction');
SELECT is((SELECT position::int FROM milestones.ledger_entries WHERE order_id = pg_temp.id('a') AND kind = 'refund' LIMIT 1),
          1, 'the refund names milestone 1');
SELECT is(pg_temp.escrow('a'), 0.00, 'escrow is empty');
SELECT is((SELECT count(*)::int FROM milestones.payouts WHERE order_id = pg_temp.id('a')), 0,
          'no payout when no milestone was completed');
SELECT is(ARRAY[(pg_temp.st('a')).charged, (pg_temp.st('a')).refunded, (pg_temp.st('a')).paid_out],
          ARRAY[100.00, 100.00, 0.00]::numeric[], 'order_status: charged 100, refunded 100, paid out 0');
SELECT is((SELECT (detail->>'refunded')::numeric FROM milestones.events WHERE order_id = pg_temp.id('a') AND event = 'cancelled'),
          100.00, 'the event records the refund');
SELECT is((SELECT milestone_state FROM milestones.events WHERE order_id = pg_temp.id('a') AND event = 'cancelled'),
          'refunded', 'the event carries the milestone''s new state');
SELECT ok(pg_temp.books_ok(), 'books balance after cancelling an active order');

-------------------------------------------------------------------------------
-- Ended orders cannot be cancelled (55000)
-------------------------------------------------------------------------------
SELECT milestones.withdraw_offer(pg_temp.id('w'), 10);
SELECT milestones.deliver(pg_temp.id('x'), 10);
SELECT milestones.accept(pg_temp.id('x'), 20);
SELECT milestones.deliver(pg_temp.id('x'), 10);
SELECT milestones.accept(pg_temp.id('x'), 20);
SELECT milestones.deliver(pg_temp.id('x'), 10);
SELECT milestones.accept(pg_temp.id('x'), 20);
SET LOCAL ROLE t20_agent;
SELECT throws_ok(pg_temp.cancel_sql('a'), '55000',
                 format('cancel is not allowed: order %s is cancelled (seller_unresponsive)', pg_temp.id('a')),
                 'a cancelled order cannot be cancelled again');
SELECT throws_ok(pg_temp.cancel_sql('o'), '55000', NULL, 'a cancelled offer cannot be cancelled again');
SELECT throws_ok(pg_temp.cancel_sql('w'), '55000', NULL, 'a withdrawn offer cannot be cancelled');
SELECT throws_ok(pg_temp.cancel_sql('x'), '55000',
                 format('cancel is not allowed: order %s is completed (finished)', pg_temp.id('x')),
                 'a finished order cannot be cancelled');
RESET ROLE;
SELECT is((pg_temp.st('x')).paid_out, 500.00, 'the finished order keeps its one payout');
SELECT is((SELECT count(*)::int FROM milestones.events WHERE event = 'cancelled'), 2, 'refused cancels wrote no event');

-------------------------------------------------------------------------------
-- The response window: at or after respond_by the order is in effect expired
-------------------------------------------------------------------------------
SELECT milestones.deliver(pg_temp.id('e'), 10);   -- respond_by = 2030-01-06
SELECT pg_temp.at('2030-01-06 00:00:00+00');
SET LOCAL ROLE t20_agent;
SELECT throws_ok(pg_temp.cancel_sql('e'), '55000',
                 format('cancel is not allowed: order %s has expired', pg_temp.id('e')),
                 'cancel exactly at respond_by is refused');
RESET ROLE;
SELECT pg_temp.at('2030-01-09 00:00:00+00');
SET LOCAL ROLE t20_agent;
SELECT throws_ok(pg_temp.cancel_sql('e'), '55000', NULL, 'cancel after respond_by is refused');
RESET ROLE;
SELECT is(pg_temp.ms('e'), ARRAY['delivered','pending','pending'], 'the refused cancel changed nothing');
SELECT is(milestones.expire_overdue(), 1, 'the sweep completes it as expired');
SELECT is((pg_temp.st('e')).reason, 'expired', 'and the delivered milestone is paid, not refunded');
SELECT is((pg_temp.st('e')).paid_out, 100.00, 'the seller is paid for the expired delivery');
SELECT pg_temp.at('2030-01-01 00:00:00+00');

-- One second before the deadline cancel still works (and refunds the delivery).
SELECT milestones.deliver(pg_temp.id('k'), 10);   -- respond_by = 2030-01-06
SELECT pg_temp.at('2030-01-05 23:59:59+00');
SET LOCAL ROLE t20_agent;
SELECT is((milestones.cancel(pg_temp.id('k'), 'bob', 'buyer_unresponsive')).state, 'cancelled',
          'cancel one second before respond_by is allowed');
RESET ROLE;
SELECT is(pg_temp.ms('k'), ARRAY['refunded','skipped','skipped'], 'a delivered (not accepted) milestone is refunded');
SELECT is(pg_temp.legs('k', 'refund'), ARRAY['escrow:-100.00','buyer:100.00'], 'its charge goes back to the buyer');
SELECT is((pg_temp.st('k')).completed_at, '2030-01-05 23:59:59+00'::timestamptz, 'completed_at is the cancel time');
SELECT pg_temp.at('2030-01-01 00:00:00+00');
SELECT ok(pg_temp.books_ok(), 'books balance after the window paths');

-------------------------------------------------------------------------------
-- Completed milestones are paid, with the fee rate captured at offer time
-- (15 %: 150.10 * 0.15 = 22.515 -> 22.52, half-up), the running one refunded.
-------------------------------------------------------------------------------
UPDATE milestones.settings SET seller_fee_rate = 0.15;
INSERT INTO ids VALUES ('f', milestones.create_offer(10, 20, 'design',
    '[{"name":"Sketch","days":2,"amount":"150.10"},{"name":"Ink","days":2,"amount":"200.00"},{"name":"Color","days":2,"amount":"250.00"}]'));
UPDATE milestones.settings SET seller_fee_rate = 0.30;   -- changed later: the order keeps 0.15
SELECT milestones.place_order(pg_temp.id('f'), 20);
SELECT milestones.deliver(pg_temp.id('f'), 10);
SELECT milestones.accept(pg_temp.id('f'), 20);       -- 150.10 completed, 200.00 charged
SELECT milestones.deliver(pg_temp.id('f'), 10);      -- 200.00 delivered, awaiting the buyer
SELECT is((pg_temp.st('f')).charged, 350.10, 'before the cancel 350.10 is held in escrow');
SET LOCAL ROLE t20_agent;
SELECT lives_ok(format('SELECT milestones.cancel(%s, %L, %L, %L)', pg_temp.id('f'), 'carol', 'terms_violation', 'ticket 99'),
                'support cancels an order with a completed and a delivered milestone');
RESET ROLE;
SELECT is(pg_temp.ms('f'), ARRAY['completed','refunded','skipped'], 'completed stays, delivered is refunded, pending skipped');
SELECT is(pg_temp.legs('f', 'refund'), ARRAY['escrow:-200.00','buyer:200.00'], 'the delivered milestone''s 200.00 is refunded');
SELECT is(pg_temp.legs('f', 'payout'), ARRAY['escrow:-150.10','seller:127.58','platform:22.52'],
          'payout: escrow -> seller 127.58 net and platform 22.52 fee');
SELECT is((SELECT (gross, fee, net, currency)::text FROM milestones.payouts WHERE order_id = pg_temp.id('f')),
          '(150.10,22.52,127.58,USD)', 'the payouts view shows gross 150.10, fee 22.52 (22.515 half-up), net 127.58');
SELECT is((SELECT (gross, fee, net)::text FROM milestones.payout(pg_temp.id('f'))), '(150.10,22.52,127.58)',
          'payout() agrees with the ledger');
SELECT is(pg_temp.escrow('f'), 0.00, 'escrow is empty after the cancel');
SELECT is(ARRAY[(pg_temp.st('f')).charged, (pg_temp.st('f')).refunded, (pg_temp.st('f')).paid_out,
                (pg_temp.st('f')).fee, (pg_temp.st('f')).net],
          ARRAY[350.10, 200.00, 150.10, 22.52, 127.58]::numeric[], 'order_status money columns');
SELECT is((SELECT (detail->'payout'->>'gross')::numeric FROM milestones.events WHERE order_id = pg_temp.id('f') AND event = 'cancelled'),
          150.10, 'the cancelled event records the payout');
SELECT is((SELECT (reason, state)::text FROM milestones.order_status WHERE order_id = pg_temp.id('f')),
          '(terms_violation,cancelled)', 'the order is cancelled for terms_violation');
SELECT ok(pg_temp.books_ok(), 'books balance after a cancel with a payout');

-- Two completed milestones and one in progress, at 20 %: 0.2 * 350.05 = 70.01.
UPDATE milestones.settings SET seller_fee_rate = 0.2;
INSERT INTO ids VALUES ('g', milestones.create_offer(10, 20, 'design',
    '[{"name":"A","days":2,"amount":"100.02"},{"name":"B","days":2,"amount":"250.03"},{"name":"C","days":2,"amount":"99.95"}]', 2, 'EUR'));
SELECT milestones.place_order(pg_temp.id('g'), 20);
SELECT milestones.deliver(pg_temp.id('g'), 10);
SELECT milestones.request_revision(pg_temp.id('g'), 20);
SELECT milestones.deliver(pg_temp.id('g'), 10);
SELECT milestones.accept(pg_temp.id('g'), 20);
SELECT milestones.deliver(pg_temp.id('g'), 10);
SELECT milestones.accept(pg_temp.id('g'), 20);       -- C (99.95) in progress
SET LOCAL ROLE t20_agent;
SELECT is((milestones.cancel(pg_temp.id('g'), 'carol', 'payment_problem')).paid_out, 350.05,
          'cancel pays both completed milestones');
RESET ROLE;
SELECT is(pg_temp.ms('g'), ARRAY['completed','completed','refunded'], 'the milestone in progress is refunded');
SELECT is(pg_temp.legs('g', 'payout'), ARRAY['escrow:-350.05','seller:280.04','platform:70.01'],
          'payout at 20 %: fee 70.01 (70.010), net 280.04');
SELECT is(pg_temp.legs('g', 'refund'), ARRAY['escrow:-99.95','buyer:99.95'], 'refund of 99.95');
SELECT is((SELECT array_agg(DISTINCT currency) FROM milestones.ledger_entries WHERE order_id = pg_temp.id('g')),
          ARRAY['EUR'], 'every entry is in the order''s currency');
SELECT ok(pg_temp.books_ok(), 'books balance after a two-milestone payout');

-- Fee half-up on an exact half cent at 20 % too: gross 100.05 is not possible
-- (0.2 * cents is never a half cent), so check the 0.25 rate: 100.10 * 0.25 = 25.025 -> 25.03.
UPDATE milestones.settings SET seller_fee_rate = 0.25;
INSERT INTO ids VALUES ('h', milestones.create_offer(10, 20, 'design',
    '[{"name":"A","days":2,"amount":"100.10"},{"name":"B","days":2,"amount":"50.00"}]'));
UPDATE milestones.settings SET seller_fee_rate = 0;
SELECT milestones.place_order(pg_temp.id('h'), 20);
SELECT milestones.deliver(pg_temp.id('h'), 10);
SELECT milestones.accept(pg_temp.id('h'), 20);
SET LOCAL ROLE t20_agent;
SELECT lives_ok(format('SELECT milestones.cancel(%s, %L, %L)', pg_temp.id('h'), 'dave', 'mutual_agreement'),
                'cancel with milestone 2 in progress');
RESET ROLE;
SELECT is(pg_temp.legs('h', 'payout'), ARRAY['escrow:-100.10','seller:75.07','platform:25.03'],
          'fee 25.025 rounds half-up to 25.03, net 75.07');
SELECT ok(pg_temp.books_ok(), 'books balance');

-------------------------------------------------------------------------------
-- Later actions on a cancelled order fail
-------------------------------------------------------------------------------
SELECT throws_ok(format('SELECT milestones.deliver(%s, 10)', pg_temp.id('f')), '55000', NULL, 'no delivery after a cancel');
SELECT throws_ok(format('SELECT milestones.accept(%s, 20)', pg_temp.id('f')), '55000', NULL, 'no accept after a cancel');
SELECT throws_ok(format('SELECT milestones.stop(%s, 20)', pg_temp.id('f')), '55000', NULL, 'no stop after a cancel');
SELECT is(milestones.expire_overdue('2031-01-01'), 0, 'the sweep leaves cancelled orders alone');

-------------------------------------------------------------------------------
-- Idempotent retries of cancel
-------------------------------------------------------------------------------
INSERT INTO ids VALUES ('i', pg_temp.offer3());
SELECT milestones.place_order(pg_temp.id('i'), 20);
SET LOCAL ROLE t20_agent;
SELECT is((milestones.cancel(pg_temp.id('i'), 'erin', 'mutual_agreement', NULL, 'cx-1')).state, 'cancelled',
          'cancel with an idempotency key');
SELECT is((milestones.cancel(pg_temp.id('i'), 'erin', 'mutual_agreement', NULL, 'cx-1')).state, 'cancelled',
          'the retry returns the first result instead of 55000');
SELECT throws_ok(format('SELECT milestones.cancel(%s, %L, %L, NULL, %L)', pg_temp.id('i'), 'erin', 'payment_problem', 'cx-1'),
                 '22023', NULL, 'the same key with another reason is refused');
RESET ROLE;
SELECT is((SELECT count(*)::int FROM milestones.ledger_entries WHERE order_id = pg_temp.id('i') AND kind = 'refund'), 2,
          'the retry refunded nothing more');
SELECT is((SELECT count(*)::int FROM milestones.events WHERE order_id = pg_temp.id('i') AND event = 'cancelled'), 1,
          'and wrote no second event');

-------------------------------------------------------------------------------
-- The reasons list: support adds, edits and retires reasons
-------------------------------------------------------------------------------
INSERT INTO ids VALUES ('r', pg_temp.offer3()), ('s', pg_temp.offer3());
SET LOCAL ROLE t20_agent;
SELECT lives_ok($$SELECT milestones.set_cancellation_reason('fraud_review', 'Flagged by the fraud team.')$$,
                'support adds a reason');
SELECT is((SELECT (description, active)::text FROM milestones.cancellation_reasons WHERE code = 'fraud_review'),
          '("Flagged by the fraud team.",t)', 'the new reason is active');
SELECT is((milestones.cancel(pg_temp.id('r'), 'frank', 'fraud_review')).reason, 'fraud_review', 'and can be used at once');
SELECT lives_ok($$SELECT milestones.set_cancellation_reason('fraud_review', 'Confirmed fraud.')$$, 'support edits a reason');
SELECT is((SELECT description FROM milestones.cancellation_reasons WHERE code = 'fraud_review'), 'Confirmed fraud.',
          'the description changed');
SELECT lives_ok($$SELECT milestones.set_cancellation_reason('fraud_review', 'Confirmed fraud.', false)$$,
                'support retires a reason');
SELECT throws_ok(format('SELECT milestones.cancel(%s, %L, %L)', pg_temp.id('s'), 'frank', 'fraud_review'), '22023',
                 'unknown cancellation reason ''fraud_review''', 'a retired reason is refused');
SELECT is((pg_temp.st('r')).reason, 'fraud_review', 'orders cancelled with it keep the retired reason');
SELECT lives_ok($$SELECT milestones.set_cancellation_reason('fraud_review', 'Confirmed fraud.', true)$$,
                'a retired reason can be reactivated');
SELECT throws_ok($$SELECT milestones.set_cancellation_reason('Fraud-Review', 'x')$$, '22023',
                 'reason code must be lower-case letters, digits and underscores', 'a malformed code is refused');
SELECT throws_ok($$SELECT milestones.set_cancellation_reason(NULL, 'x')$$, '22023', NULL, 'a NULL code is refused');
SELECT throws_ok($$SELECT milestones.set_cancellation_reason('abc', NULL)$$, '22023', NULL, 'a NULL description is refused');
SELECT throws_ok($$SELECT milestones.set_cancellation_reason('abc', '  ')$$, '22023', NULL, 'a blank description is refused');
SELECT throws_ok($$DELETE FROM milestones.cancellation_reasons WHERE code = 'fraud_review'$$, '42501', NULL,
                 'support cannot write the reasons table directly');
RESET ROLE;

-------------------------------------------------------------------------------
-- The books after every path
-------------------------------------------------------------------------------
SELECT is_empty('SELECT * FROM milestones.check_invariants()', 'check_invariants() is empty');
SELECT is((SELECT sum(amount) FROM milestones.ledger_entries), 0.00, 'the whole ledger sums to zero');
SELECT is_empty($$SELECT order_id FROM milestones.ledger_entries l JOIN milestones.orders o USING (order_id)
                   WHERE o.state NOT IN ('offered','active') GROUP BY order_id
                  HAVING sum(amount) FILTER (WHERE account = 'escrow') <> 0$$, 'no ended order holds money in escrow');
SELECT is((SELECT sum(amount) FILTER (WHERE kind = 'charge' AND account = 'escrow')
               - sum(-amount) FILTER (WHERE kind = 'payout' AND account = 'escrow')
               - sum(-amount) FILTER (WHERE kind = 'refund' AND account = 'escrow')
             FROM milestones.ledger_entries l JOIN milestones.orders o USING (order_id)
            WHERE o.state = 'cancelled'), 0.00, 'cancelled orders: charges = payouts + refunds');

SELECT * FROM finish();
ROLLBACK;
