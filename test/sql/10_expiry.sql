-- test/sql/10_expiry.sql - R8, R9: the response window, the expiry sweep, pg_cron.
BEGIN;
\ir ../fixtures/setup.psql
SELECT plan(111);

-- err(sql): runs sql and returns its SQLSTATE ('00000' when it worked), message, DETAIL and HINT.
CREATE FUNCTION pg_temp.err(sql text, OUT e_state text, OUT e_message text, OUT e_detail text, OUT e_hint text)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    e_state := '00000';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS e_state = RETURNED_SQLSTATE, e_message = MESSAGE_TEXT,
                            e_detail = PG_EXCEPTION_DETAIL, e_hint = PG_EXCEPTION_HINT;
END
$$;
-- ms(order, position): one milestone row.
CREATE FUNCTION pg_temp.ms(o bigint, p integer) RETURNS milestones.order_milestones LANGUAGE sql AS $$
    SELECT * FROM milestones.order_milestones WHERE order_id = o AND position = p
$$;
-- delivered_order(placed, delivered, single): an order placed at `placed` whose milestone 1 was
-- delivered at `delivered`; the standard 3-milestone offer, or a 1-milestone order of 120.00.
CREATE FUNCTION pg_temp.delivered_order(placed text, delivered text, single boolean DEFAULT false)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    o bigint;
BEGIN
    PERFORM pg_temp.at(placed);
    IF single THEN
        o := milestones.create_offer(10, 20, 'design', '[{"name":"Logo","days":3,"amount":"120.00"}]');
    ELSE
        o := pg_temp.offer3();
    END IF;
    PERFORM milestones.place_order(o, 20);
    PERFORM pg_temp.at(delivered);
    PERFORM milestones.deliver(o, 10);
    RETURN o;
END
$$;
-- states(order): the milestone states of an order, in position order.
CREATE FUNCTION pg_temp.states(o bigint) RETURNS text[] LANGUAGE sql AS $$
    SELECT array_agg(state ORDER BY position) FROM milestones.order_milestones WHERE order_id = o
$$;
-- plan_of(sql): the EXPLAIN text of a query.
CREATE FUNCTION pg_temp.plan_of(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    line text;
    result text := '';
BEGIN
    FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || sql LOOP
        result := result || line || E'\n';
    END LOOP;
    RETURN result;
END
$$;

-------------------------------------------------------------------------------
-- 1. respond_by = delivered_at + the window in force at delivery
-------------------------------------------------------------------------------
SELECT pg_temp.delivered_order('2030-01-01 00:00+00', '2030-01-02 10:00+00') AS o1 \gset
SELECT is((pg_temp.ms(:o1, 1)).respond_by, '2030-01-07 10:00+00'::timestamptz,
          'a delivery sets respond_by = delivered_at + 5 days');
SELECT is((SELECT respond_by FROM milestones.order_status WHERE order_id = :o1), '2030-01-07 10:00+00'::timestamptz,
          'order_status shows the deadline');
SELECT is((SELECT (detail ->> 'respond_by')::timestamptz FROM milestones.events WHERE order_id = :o1 AND event = 'delivered'),
          '2030-01-07 10:00+00'::timestamptz, 'the delivered event carries the deadline');
SELECT is((SELECT respond_by FROM milestones.awaiting_response WHERE order_id = :o1), '2030-01-07 10:00+00'::timestamptz,
          'awaiting_response lists the delivery with its deadline');
UPDATE milestones.settings SET response_window = '8 days';
SELECT is((pg_temp.ms(:o1, 1)).respond_by, '2030-01-07 10:00+00'::timestamptz,
          'changing settings.response_window does not move a running deadline');
SELECT pg_temp.delivered_order('2030-01-01 00:00+00', '2030-01-02 10:00+00') AS o2 \gset
SELECT is((pg_temp.ms(:o2, 1)).respond_by, '2030-01-10 10:00+00'::timestamptz,
          'a delivery made after the change gets the new window (8 days)');
UPDATE milestones.settings SET response_window = '5 days';
SELECT is((pg_temp.ms(:o2, 1)).respond_by, '2030-01-10 10:00+00'::timestamptz,
          '... and keeps it when the setting changes back');

-- the window is exact whatever the seller session's TimeZone (US DST starts 2030-03-10)
SELECT current_setting('TimeZone') AS tz_saved \gset
SET LOCAL TimeZone = 'America/New_York';
SELECT pg_temp.delivered_order('2030-03-08 00:00+00', '2030-03-08 17:00+00') AS o3 \gset
SELECT is((pg_temp.ms(:o3, 1)).respond_by, '2030-03-13 17:00+00'::timestamptz,
          'a delivery from a session in America/New_York across the DST change still gets exactly 120 hours');
SET LOCAL TimeZone = :'tz_saved';
SET LOCAL milestones.fake_now = '2030-03-09 00:00+00';
SELECT lives_ok(format('SELECT milestones.stop(%s, 20)', :o3), '(that order is stopped so that it stays out of the sweeps below)');

-- a revision request clears the deadline; a redelivery opens a new one
SET LOCAL milestones.fake_now = '2030-01-03 00:00+00';
SELECT lives_ok(format('SELECT milestones.request_revision(%s, 20)', :o1), 'a revision request inside the window works');
SELECT ok((pg_temp.ms(:o1, 1)).respond_by IS NULL AND (pg_temp.ms(:o1, 1)).state = 'in_progress',
          'a revision request clears respond_by and puts the milestone back in progress');
SELECT is((SELECT respond_by FROM milestones.order_status WHERE order_id = :o1), NULL::timestamptz,
          'order_status shows no deadline during the revision');
SELECT is_empty(format('SELECT * FROM milestones.awaiting_response WHERE order_id = %s', :o1),
                'an order in revision is not awaiting a response');
SET LOCAL milestones.fake_now = '2030-01-09 12:00+00';
SELECT lives_ok(format('SELECT milestones.deliver(%s, 10)', :o1), 'the seller redelivers after the first deadline');
SELECT is((pg_temp.ms(:o1, 1)).respond_by, '2030-01-14 12:00+00'::timestamptz,
          'the redelivery opens a new 5-day window from the redelivery');
SELECT is((pg_temp.ms(:o1, 1)).delivered_at, '2030-01-09 12:00+00'::timestamptz, 'delivered_at is the redelivery time');
SELECT is((pg_temp.ms(:o1, 1)).deliveries, 2, 'deliveries counts the redelivery');
SET LOCAL milestones.fake_now = '2030-01-12 00:00+00';
SELECT is(milestones.expire_overdue('2030-01-12 00:00+00'), 1,
          'a sweep between the old and the new deadline expires only the other overdue order');
SELECT is((SELECT state FROM milestones.orders WHERE order_id = :o1), 'active', 'the first deadline no longer counts');
SELECT is((SELECT state || '/' || reason FROM milestones.order_status WHERE order_id = :o2), 'completed/expired',
          'the order delivered with the 8-day window expired after 8 days');
SET LOCAL milestones.fake_now = '2030-01-13 00:00+00';
SELECT lives_ok(format('SELECT milestones.accept(%s, 20)', :o1), 'the buyer accepts the redelivery inside the new window');
SELECT is(pg_temp.states(:o1), ARRAY['completed','in_progress','pending'], 'the accepted milestone completes, the next starts');
SELECT is_empty('SELECT * FROM milestones.check_invariants()', 'check_invariants() is empty after the window scenarios');

-------------------------------------------------------------------------------
-- 2. Boundaries: one second before works; exactly at and after fail (55000)
-------------------------------------------------------------------------------
SELECT pg_temp.delivered_order('2030-03-01 00:00+00', '2030-03-01 00:00+00') AS b1 \gset
SELECT pg_temp.delivered_order('2030-03-01 00:00+00', '2030-03-01 00:00+00') AS b2 \gset
SELECT pg_temp.delivered_order('2030-03-01 00:00+00', '2030-03-01 00:00+00') AS b3 \gset
SELECT is(ARRAY[(pg_temp.ms(:b1, 1)).respond_by, (pg_temp.ms(:b2, 1)).respond_by, (pg_temp.ms(:b3, 1)).respond_by],
          ARRAY['2030-03-06 00:00+00', '2030-03-06 00:00+00', '2030-03-06 00:00+00']::timestamptz[],
          'three deliveries due at 2030-03-06 00:00');

SET LOCAL milestones.fake_now = '2030-03-06 00:00:00+00';
SELECT throws_ok(format('SELECT milestones.accept(%s, 20)', :b1), '55000',
                 format('accept is not allowed: the response window of order %s has closed', :b1),
                 'accept exactly at respond_by fails');
SELECT throws_ok(format('SELECT milestones.request_revision(%s, 20)', :b2), '55000',
                 format('request_revision is not allowed: the response window of order %s has closed', :b2),
                 'request_revision exactly at respond_by fails');
SELECT throws_ok(format('SELECT milestones.stop(%s, 20)', :b3), '55000',
                 format('stop is not allowed: the response window of order %s has closed', :b3),
                 'stop exactly at respond_by fails');
SELECT is((SELECT e_detail FROM pg_temp.err(format('SELECT milestones.accept(%s, 20)', :b1))),
          format('Milestone 1 was delivered at %s; the buyer had until %s to respond.',
                 '2030-03-01 00:00+00'::timestamptz, '2030-03-06 00:00+00'::timestamptz),
          'accept: the DETAIL gives the delivery time and the deadline');
SELECT is((SELECT e_hint FROM pg_temp.err(format('SELECT milestones.accept(%s, 20)', :b1))),
          'The order will be completed as expired and the delivered milestone paid to the seller.',
          'accept: the HINT says the order will be completed as expired');
SELECT ok(e_state = '55000' AND e_detail LIKE '%until ' || '2030-03-06 00:00+00'::timestamptz || ' to respond.'
          AND e_hint LIKE '%completed as expired%',
          'request_revision: 55000 with the deadline in the DETAIL and expiry in the HINT')
  FROM pg_temp.err(format('SELECT milestones.request_revision(%s, 20)', :b2));
SELECT ok(e_state = '55000' AND e_detail LIKE '%until ' || '2030-03-06 00:00+00'::timestamptz || ' to respond.'
          AND e_hint LIKE '%completed as expired%',
          'stop: 55000 with the deadline in the DETAIL and expiry in the HINT')
  FROM pg_temp.err(format('SELECT milestones.stop(%s, 20)', :b3));

SET LOCAL milestones.fake_now = '2030-03-07 12:00:00+00';
SELECT throws_ok(format('SELECT milestones.accept(%s, 20)', :b1), '55000', NULL, 'accept after respond_by fails');
SELECT throws_ok(format('SELECT milestones.request_revision(%s, 20)', :b2), '55000', NULL, 'request_revision after respond_by fails');
SELECT throws_ok(format('SELECT milestones.stop(%s, 20)', :b3), '55000', NULL, 'stop after respond_by fails');
SELECT is(pg_temp.states(:b1) || pg_temp.states(:b2) || pg_temp.states(:b3),
          ARRAY['delivered','pending','pending', 'delivered','pending','pending', 'delivered','pending','pending'],
          'the refused calls changed no milestone');
SELECT is((SELECT array_agg(revisions_used ORDER BY order_id) FROM milestones.orders WHERE order_id IN (:b1, :b2, :b3)),
          ARRAY[0, 0, 0], 'the refused revision request used no revision');
SELECT is((SELECT count(*)::int FROM milestones.events WHERE order_id IN (:b1, :b2, :b3) AND event <> 'offered'
            AND event <> 'placed' AND event <> 'delivered'), 0, 'the refused calls wrote no event');

SET LOCAL milestones.fake_now = '2030-03-05 23:59:59+00';
SELECT lives_ok(format('SELECT milestones.accept(%s, 20)', :b1), 'accept one second before respond_by works');
SELECT is(pg_temp.states(:b1), ARRAY['completed','in_progress','pending'], '... the delivered milestone completes, the next starts');
SELECT lives_ok(format('SELECT milestones.request_revision(%s, 20)', :b2), 'request_revision one second before respond_by works');
SELECT is(pg_temp.states(:b2), ARRAY['in_progress','pending','pending'], '... the milestone goes back in progress');
SELECT lives_ok(format('SELECT milestones.stop(%s, 20)', :b3), 'stop one second before respond_by works');
SELECT is((SELECT state || '/' || reason FROM milestones.order_status WHERE order_id = :b3), 'completed/stopped',
          '... the order is completed (stopped)');
SELECT is((SELECT completed_at FROM milestones.orders WHERE order_id = :b3), '2030-03-05 23:59:59+00'::timestamptz,
          '... at the time of the stop');
SELECT is_empty('SELECT * FROM milestones.check_invariants()', 'check_invariants() is empty after the boundary scenarios');

-------------------------------------------------------------------------------
-- 3. The sweep: expire_overdue(as_of, batch)
-------------------------------------------------------------------------------
UPDATE milestones.settings SET seller_fee_rate = 0.2;
-- ea: milestone 1 of 3 delivered, due 04-07 (20 % fee captured on the offer)
SELECT pg_temp.delivered_order('2030-04-01 00:00+00', '2030-04-02 00:00+00') AS ea \gset
UPDATE milestones.settings SET seller_fee_rate = 0;
-- eb: milestone 1 accepted, milestone 2 delivered, due 04-08
SELECT pg_temp.delivered_order('2030-04-01 00:00+00', '2030-04-01 12:00+00') AS eb \gset
SET LOCAL milestones.fake_now = '2030-04-02 00:00+00';
SELECT (milestones.accept(:eb, 20)).state AS ignored \gset
SET LOCAL milestones.fake_now = '2030-04-03 00:00+00';
SELECT (milestones.deliver(:eb, 10)).state AS ignored \gset
-- ec: a one-milestone order whose final delivery is due 04-09
SELECT pg_temp.delivered_order('2030-04-01 00:00+00', '2030-04-04 00:00+00', true) AS ec \gset
-- ed: due exactly at the sweep's as_of (04-10 00:00)
SELECT pg_temp.delivered_order('2030-04-01 00:00+00', '2030-04-05 00:00+00') AS ed \gset
-- ee: due one second after as_of
SELECT pg_temp.delivered_order('2030-04-01 00:00+00', '2030-04-05 00:00:01+00') AS ee \gset
-- ef: in progress, nothing delivered
SET LOCAL milestones.fake_now = '2030-04-01 00:00+00';
SELECT pg_temp.offer3() AS ef \gset
SELECT (milestones.place_order(:ef, 20)).state AS ignored \gset

SET LOCAL milestones.fake_now = '2030-04-10 00:00+00';
SELECT is(ARRAY(SELECT order_id FROM milestones.awaiting_response), ARRAY[:ea, :eb, :ec, :ed, :ee]::bigint[],
          'awaiting_response lists every open delivery, overdue first');
SELECT is(ARRAY(SELECT overdue FROM milestones.awaiting_response), ARRAY[true, true, true, true, false],
          'awaiting_response marks a delivery overdue at and after its deadline');
SELECT is((SELECT time_left FROM milestones.awaiting_response WHERE order_id = :ee), interval '1 second',
          'awaiting_response shows the time left');
SELECT throws_ok(format($$SELECT milestones.cancel(%s, 'agent smith', 'mutual_agreement')$$, :ea), '55000',
                 format('cancel is not allowed: order %s has expired', :ea),
                 'support cannot cancel an order whose deadline has passed');

-- the sweep runs ten days later; its as_of is 04-10 00:00
SET LOCAL milestones.fake_now = '2030-04-20 00:00+00';
SELECT is(milestones.expire_overdue('2030-04-10 00:00+00', 1000), 4, 'expire_overdue returns how many orders it expired');
SELECT is(ARRAY(SELECT state || '/' || reason FROM milestones.order_status WHERE order_id IN (:ea, :eb, :ec, :ed) ORDER BY order_id),
          ARRAY['completed/expired', 'completed/expired', 'completed/expired', 'completed/expired'],
          'each overdue order is completed with reason expired, including one due exactly at as_of');
SELECT is(ARRAY(SELECT completed_at FROM milestones.orders WHERE order_id IN (:ea, :eb, :ec, :ed) ORDER BY order_id),
          ARRAY['2030-04-07 00:00+00', '2030-04-08 00:00+00', '2030-04-09 00:00+00', '2030-04-10 00:00+00']::timestamptz[],
          'completed_at is the deadline, not the time the sweep ran');
SELECT is(pg_temp.states(:ea), ARRAY['completed','skipped','skipped'], 'ea: the delivered milestone completed, later ones skipped');
SELECT is(pg_temp.states(:eb), ARRAY['completed','completed','skipped'], 'eb: milestone 2 completed, milestone 3 skipped');
SELECT is(pg_temp.states(:ec), ARRAY['completed'], 'ec: the final delivery completed');
SELECT is(pg_temp.states(:ed), ARRAY['completed','skipped','skipped'], 'ed: due exactly at as_of, expired');
SELECT is(ARRAY[(pg_temp.ms(:ea, 1)).completed_at, (pg_temp.ms(:eb, 2)).completed_at],
          ARRAY['2030-04-07 00:00+00', '2030-04-08 00:00+00']::timestamptz[],
          'the expired milestone is completed at the deadline');
SELECT is(ARRAY(SELECT charged FROM milestones.order_status WHERE order_id IN (:ea, :eb, :ec, :ed) ORDER BY order_id),
          ARRAY[100.00, 250.00, 120.00, 100.00]::numeric[], 'only the started milestones were ever charged');
SELECT is((SELECT count(*)::int FROM milestones.ledger_entries l
             JOIN milestones.order_milestones m USING (order_id, position)
            WHERE l.order_id IN (:ea, :eb, :ec, :ed) AND l.kind = 'charge' AND m.state = 'skipped'), 0,
          'no skipped milestone has a charge');
SELECT is(ARRAY(SELECT format('%s %s %s %s', gross, fee, net, reason) FROM milestones.payouts
                 WHERE order_id IN (:ea, :eb, :ec, :ed) ORDER BY order_id),
          ARRAY['100.00 20.00 80.00 expired', '250.00 0.00 250.00 expired', '120.00 0.00 120.00 expired', '100.00 0.00 100.00 expired'],
          'a payout is recorded for each expired order (fee at the rate captured on the offer)');
SELECT is(ARRAY(SELECT paid_out = charged FROM milestones.order_status WHERE order_id IN (:ea, :eb, :ec, :ed) ORDER BY order_id),
          ARRAY[true, true, true, true], 'nothing is left in escrow');
SELECT is(ARRAY(SELECT format('%s %s %s %s %s %s', order_id, position, actor_role, order_state, milestone_state,
                              (detail ->> 'respond_by')::timestamptz = m.respond_by)
                  FROM milestones.events e JOIN milestones.order_milestones m USING (order_id, position)
                 WHERE e.event = 'expired' AND e.order_id IN (:ea, :eb, :ec, :ed) ORDER BY order_id),
          ARRAY[format('%s 1 system completed completed t', :ea), format('%s 2 system completed completed t', :eb),
                format('%s 1 system completed completed t', :ec), format('%s 1 system completed completed t', :ed)],
          'one expired event per order, by the system, with the deadline');
SELECT is(pg_temp.states(:ee) || (SELECT state FROM milestones.orders WHERE order_id = :ee),
          ARRAY['delivered','pending','pending','active'], 'a delivery due one second after as_of is left alone');
SELECT is(pg_temp.states(:ef) || (SELECT state FROM milestones.orders WHERE order_id = :ef),
          ARRAY['in_progress','pending','pending','active'], 'a milestone in progress is left alone');
SELECT is(ARRAY(SELECT order_id FROM milestones.awaiting_response), ARRAY[:ee]::bigint[],
          'awaiting_response no longer lists the expired deliveries');

-- idempotent
SELECT is(milestones.expire_overdue('2030-04-10 00:00+00', 1000), 0, 'a second sweep with the same as_of expires nothing');
SELECT is((SELECT count(*)::int FROM milestones.events WHERE event = 'expired' AND order_id IN (:ea, :eb, :ec, :ed)), 4,
          '... and writes no event');
SELECT is((SELECT count(*)::int FROM milestones.ledger_entries WHERE kind = 'payout' AND account = 'escrow'
            AND order_id IN (:ea, :eb, :ec, :ed)), 4, '... and records no second payout');

-- buyer actions on an expired order fail
SELECT throws_ok(format('SELECT milestones.accept(%s, 20)', :ea), '55000',
                 format('accept is not allowed: order %s is completed (expired)', :ea), 'accept on an expired order fails');
SELECT throws_ok(format('SELECT milestones.stop(%s, 20)', :eb), '55000', NULL, 'stop on an expired order fails');
SELECT throws_ok(format('SELECT milestones.request_revision(%s, 20)', :ec), '55000', NULL,
                 'request_revision on an expired order fails');
SELECT throws_ok(format($$SELECT milestones.cancel(%s, 'agent smith', 'mutual_agreement')$$, :ed), '55000', NULL,
                 'cancel on an expired order fails');

-- one second later ee is due
SELECT is(milestones.expire_overdue('2030-04-10 00:00:01+00'), 1, 'one second later the last delivery is due');
SELECT is((SELECT completed_at FROM milestones.orders WHERE order_id = :ee), '2030-04-10 00:00:01+00'::timestamptz,
          '... and completes at its deadline');

-- the default as_of is the extension clock
SELECT pg_temp.delivered_order('2030-04-20 00:00+00', '2030-04-20 00:00+00') AS eg \gset
SET LOCAL milestones.fake_now = '2030-04-24 23:59:59+00';
SELECT is(milestones.expire_overdue(), 0, 'expire_overdue() one second before the deadline expires nothing');
SET LOCAL milestones.fake_now = '2030-04-25 00:00:00+00';
SELECT is(milestones.expire_overdue(), 1, 'expire_overdue() at the deadline (default as_of = milestones.now()) expires it');
SELECT is_empty('SELECT * FROM milestones.check_invariants()', 'check_invariants() is empty after the sweep scenarios');

-------------------------------------------------------------------------------
-- 4. Batches and argument checks
-------------------------------------------------------------------------------
SELECT pg_temp.delivered_order('2030-05-01 00:00+00', '2030-05-01 00:00:05+00') AS f1 \gset
SELECT pg_temp.delivered_order('2030-05-01 00:00+00', '2030-05-01 00:00:01+00') AS f2 \gset
SELECT pg_temp.delivered_order('2030-05-01 00:00+00', '2030-05-01 00:00:04+00') AS f3 \gset
SELECT pg_temp.delivered_order('2030-05-01 00:00+00', '2030-05-01 00:00:02+00') AS f4 \gset
SELECT pg_temp.delivered_order('2030-05-01 00:00+00', '2030-05-01 00:00:03+00') AS f5 \gset
SET LOCAL milestones.fake_now = '2030-05-20 00:00+00';
SELECT is(milestones.expire_overdue('2030-05-10 00:00+00', 2), 2, 'batch 2: the first call expires 2 orders');
SELECT is(ARRAY(SELECT order_id FROM milestones.orders WHERE order_id IN (:f1, :f2, :f3, :f4, :f5) AND state = 'completed' ORDER BY completed_at),
          ARRAY[:f2, :f4]::bigint[], '... those with the earliest deadlines');
SELECT is(milestones.expire_overdue('2030-05-10 00:00+00', 2), 2, 'batch 2: the second call expires 2 more');
SELECT is(milestones.expire_overdue('2030-05-10 00:00+00', 2), 1, 'batch 2: the third call expires the last one');
SELECT is(milestones.expire_overdue('2030-05-10 00:00+00', 2), 0, 'batch 2: then nothing is left');
SELECT is((SELECT count(*)::int FROM milestones.orders WHERE order_id IN (:f1, :f2, :f3, :f4, :f5) AND end_reason = 'expired'), 5,
          'all five are expired');

SELECT throws_ok($$SELECT milestones.expire_overdue(NULL, 10)$$, '22023', 'as_of must not be NULL', 'a NULL as_of is refused');
SELECT throws_ok($$SELECT milestones.expire_overdue('2030-05-10', NULL)$$, '22023', 'batch must not be NULL', 'a NULL batch is refused');
SELECT throws_ok($$SELECT milestones.expire_overdue('2030-05-10', 0)$$, '22023', 'batch must be between 1 and 100000', 'batch 0 is refused');
SELECT throws_ok($$SELECT milestones.expire_overdue('2030-05-10', -5)$$, '22023', 'batch must be between 1 and 100000', 'a negative batch is refused');
SELECT throws_ok($$SELECT milestones.expire_overdue('2030-05-10', 100001)$$, '22023', 'batch must be between 1 and 100000', 'batch 100001 is refused');
SELECT lives_ok($$SELECT milestones.expire_overdue('2030-05-10', 100000)$$, 'batch 100000 is accepted');
SELECT throws_ok($$SELECT milestones.expire_overdue('infinity', 10)$$, '22023', 'as_of must be a finite timestamp', 'as_of infinity is refused');
SELECT throws_ok($$SELECT milestones.expire_overdue('-infinity', 10)$$, '22023', 'as_of must be a finite timestamp', 'as_of -infinity is refused');
SELECT is_empty('SELECT * FROM milestones.check_invariants()', 'check_invariants() is empty after the batch scenarios');

-------------------------------------------------------------------------------
-- 5. The sweep finds its work through order_milestones_awaiting_idx
-------------------------------------------------------------------------------
-- 1,500 running orders with nothing delivered, plus 3 overdue deliveries.
SET LOCAL milestones.fake_now = '2030-06-01 00:00+00';
SELECT count(milestones.place_order(pg_temp.offer3(), 20)) AS bulk FROM generate_series(1, 1500) \gset
SELECT pg_temp.delivered_order('2030-06-01 00:00+00', '2030-06-01 00:00+00') AS g1 \gset
SELECT pg_temp.delivered_order('2030-06-01 00:00+00', '2030-06-01 00:00+00') AS g2 \gset
SELECT pg_temp.delivered_order('2030-06-01 00:00+00', '2030-06-01 00:00+00') AS g3 \gset
ANALYZE milestones.orders;
ANALYZE milestones.order_milestones;
SELECT cmp_ok((SELECT count(*)::int FROM milestones.order_milestones), '>', 4500, 'the table holds thousands of milestones');
-- The work-list query of expire_overdue: the statement of the C engine
-- (work_plan in src/actions.c; expire_overdue has no SQL source since
-- issue 10), with as_of and batch filled in.  The function itself is
-- checked below too: no sequential scan of order_milestones while it runs.
SELECT $q$SELECT ord.order_id FROM milestones.orders ord
  JOIN milestones.order_milestones w ON w.order_id OPERATOR(pg_catalog.=) ord.order_id
 WHERE w.state OPERATOR(pg_catalog.=) 'delivered' AND w.respond_by OPERATOR(pg_catalog.<=) '2030-06-10 00:00+00'::timestamptz
 ORDER BY w.respond_by LIMIT 1000 FOR UPDATE OF ord SKIP LOCKED$q$ AS sweep_query \gset
SELECT ok(length(:'sweep_query'::text) > 100, 'the sweep''s work-list query is set');
SELECT pg_temp.plan_of(:'sweep_query') AS sweep_plan \gset
SELECT diag(:'sweep_plan'::text);
SELECT matches(:'sweep_plan'::text, 'Index (Only )?Scan using order_milestones_awaiting_idx on order_milestones',
               'the sweep''s work list is read through the partial index order_milestones_awaiting_idx');
SELECT doesnt_match(:'sweep_plan'::text, 'Seq Scan on order_milestones', 'the sweep never scans all the milestones');
-- And the function itself: no sequential scan of order_milestones while it runs.
SELECT COALESCE(seq_scan, 0) AS seq_before, COALESCE(idx_scan, 0) AS idx_before
  FROM pg_stat_xact_user_tables WHERE schemaname = 'milestones' AND relname = 'order_milestones' \gset
SET LOCAL milestones.fake_now = '2030-06-10 00:00+00';
SELECT is(milestones.expire_overdue('2030-06-10 00:00+00', 1000), 3, 'the sweep expires the 3 overdue orders among 1,500 running ones');
SELECT is((SELECT COALESCE(seq_scan, 0) - :seq_before FROM pg_stat_xact_user_tables
            WHERE schemaname = 'milestones' AND relname = 'order_milestones'), 0::bigint,
          'expire_overdue did no sequential scan of order_milestones');
SELECT cmp_ok((SELECT COALESCE(idx_scan, 0) - :idx_before FROM pg_stat_xact_user_tables
                WHERE schemaname = 'milestones' AND relname = 'order_milestones'), '>', 0::bigint,
              '... it used index scans');
SELECT is_empty('SELECT * FROM milestones.check_invariants()', 'check_invariants() is empty with 1,500 more orders');
-- The deferred C guard (which runs at commit) agrees.
SELECT lives_ok('SET CONSTRAINTS ALL IMMEDIATE', 'the deferred invariant triggers accept every order written in this suite');

-------------------------------------------------------------------------------
-- 6. pg_cron is optional: milestones_tap has no pg_cron
-------------------------------------------------------------------------------
SELECT is((SELECT count(*)::int FROM pg_extension WHERE extname = 'pg_cron'), 0, 'this database has no pg_cron');
SELECT throws_ok($$SELECT milestones.schedule_expiry()$$, '55000', 'pg_cron is not installed in this database',
                 'schedule_expiry without pg_cron fails with 55000');
SELECT ok(e_hint LIKE '%shared_preload_libraries%' AND e_hint LIKE '%cron.database_name%' AND e_hint LIKE '%CREATE EXTENSION pg_cron%',
          'its HINT names shared_preload_libraries, cron.database_name and CREATE EXTENSION pg_cron')
  FROM pg_temp.err('SELECT milestones.schedule_expiry(''* * * * *'')');
SELECT is(milestones.unschedule_expiry(), false, 'unschedule_expiry without pg_cron returns false, without error');
SELECT throws_ok($$SELECT milestones.schedule_expiry(NULL)$$, '22023', 'schedule must not be NULL', 'a NULL schedule is refused');

-- owner only: an as_of chosen by a caller could expire orders early
SELECT ok(NOT has_function_privilege('milestones_app', 'milestones.expire_overdue(timestamptz, integer)', 'EXECUTE')
          AND NOT has_function_privilege('milestones_support', 'milestones.expire_overdue(timestamptz, integer)', 'EXECUTE')
          AND NOT has_function_privilege('milestones_reader', 'milestones.expire_overdue(timestamptz, integer)', 'EXECUTE'),
          'no milestones role may run expire_overdue');
SELECT ok(NOT has_function_privilege('milestones_app', 'milestones.run_expiry(integer)', 'EXECUTE')
          AND NOT has_function_privilege('milestones_support', 'milestones.run_expiry(integer)', 'EXECUTE'),
          'no milestones role may run run_expiry');
SELECT ok(NOT has_function_privilege('milestones_support', 'milestones.schedule_expiry(text)', 'EXECUTE')
          AND NOT has_function_privilege('milestones_support', 'milestones.unschedule_expiry()', 'EXECUTE')
          AND NOT has_function_privilege('milestones_app', 'milestones.schedule_expiry(text)', 'EXECUTE'),
          'no milestones role may (un)schedule the job');
SELECT ok(NOT has_function_privilege('public', 'milestones.expire_overdue(timestamptz, integer)', 'EXECUTE'),
          'PUBLIC may not run expire_overdue');
SELECT is_empty('SELECT * FROM milestones.check_invariants()', 'check_invariants() is empty at the end');

SELECT * FROM finish();
ROLLBACK;
