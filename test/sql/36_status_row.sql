-- test/sql/36_status_row.sql - every action's result row is the order's
-- milestones.order_status row.  The engine builds that row in C from what
-- it holds under the order's lock (the order row and its milestones, the
-- money derived from the milestones' states) instead of querying the view;
-- here every action, in every state it can leave an order in (offers
-- withdrawn, declined, cancelled; lifecycles finished, stopped, cancelled
-- while running and after a delivery; revisions; cancel_milestone of a
-- pending, running and delivered milestone, with and without a next one,
-- ending the order), is compared with the view, column by column and as
-- to_jsonb text (so numeric scale and time zones count), with a fee rate
-- that leaves cents to round.  With an idempotency key, the stored result
-- must be to_jsonb of the view's row and a retry must return the same row.
BEGIN;
\ir ../fixtures/setup.psql
SELECT plan(110);
SET LOCAL timezone = 'America/New_York';
UPDATE milestones.settings SET seller_fee_rate = 0.12345;

CREATE TEMP TABLE ids (name text PRIMARY KEY, id bigint);
CREATE FUNCTION pg_temp.id(text) RETURNS bigint LANGUAGE sql AS $$ SELECT id FROM ids WHERE name = $1 $$;
CREATE FUNCTION pg_temp.new(p_name text, p_revisions integer DEFAULT 1) RETURNS void LANGUAGE sql AS
    $$ INSERT INTO ids VALUES (p_name, pg_temp.offer3(p_revisions)) $$;
-- view(order_id): the view's row as to_jsonb text.
CREATE FUNCTION pg_temp.view(bigint) RETURNS text LANGUAGE sql AS
    $$ SELECT pg_catalog.to_jsonb(s)::text FROM milestones.order_status s WHERE s.order_id = $1 $$;
-- same(label, result): the action's result equals the view's row, both ways.
CREATE FUNCTION pg_temp.same(p_label text, r milestones.order_status) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
    RETURN NEXT ok(r IS NOT DISTINCT FROM (SELECT s FROM milestones.order_status s WHERE s.order_id = r.order_id),
                   p_label || ': the result row is the view''s row');
    RETURN NEXT is(pg_catalog.to_jsonb(r)::text, pg_temp.view(r.order_id), p_label || ': as to_jsonb, too');
END
$$;
-- same_key(label, result, key): also the key's stored result, and a retry.
CREATE TEMP TABLE firsts (key text PRIMARY KEY, result text);
CREATE FUNCTION pg_temp.same_key(p_label text, r milestones.order_status, p_key text) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT pg_temp.same(p_label, r);
    RETURN NEXT is((SELECT k.result::text FROM milestones.idempotency_keys k WHERE k.key = p_key),
                   pg_temp.view(r.order_id), p_label || ': the key stores to_jsonb of the view''s row');
    INSERT INTO firsts VALUES (p_key, pg_catalog.to_jsonb(r)::text);
END
$$;

-- The comparison can fail: a row one cent off, or one day late, is not the view's.
CREATE FUNCTION pg_temp.off(p_id bigint, p_what text) RETURNS milestones.order_status LANGUAGE plpgsql AS $$
DECLARE r milestones.order_status;
BEGIN
    SELECT s.* INTO r FROM milestones.order_status s WHERE s.order_id = p_id;
    IF p_what = 'cent' THEN r.charged := r.charged + 0.01; ELSE r.created_at := r.created_at + interval '1 day'; END IF;
    RETURN r;
END
$$;
SELECT pg_temp.new('probe');
SELECT ok(NOT (pg_temp.off(pg_temp.id('probe'), 'cent') IS NOT DISTINCT FROM
               (SELECT s FROM milestones.order_status s WHERE s.order_id = pg_temp.id('probe'))),
          'a row one cent off is not the view''s row');
SELECT isnt(pg_catalog.to_jsonb(pg_temp.off(pg_temp.id('probe'), 'day'))::text, pg_temp.view(pg_temp.id('probe')),
            'a row one day off is not the view''s row as to_jsonb');

-- Offers that end before they are placed.
SELECT pg_temp.new('w');
SELECT pg_temp.same('withdraw_offer', milestones.withdraw_offer(pg_temp.id('w'), 10));
SELECT pg_temp.new('d');
SELECT pg_temp.same('decline_offer', milestones.decline_offer(pg_temp.id('d'), 20));
SELECT pg_temp.new('co');
SELECT pg_temp.same('cancel of an offer', milestones.cancel(pg_temp.id('co'), 'alice', 'duplicate_order', 'dup'));

-- A whole lifecycle with a revision, finished; the clock moves between calls.
SELECT pg_temp.new('life');
SELECT pg_temp.at('2030-01-02 10:00:00+00');
SELECT pg_temp.same('place_order', milestones.place_order(pg_temp.id('life'), 20));
SELECT pg_temp.at('2030-01-03 11:30:00+00');
SELECT pg_temp.same('deliver', milestones.deliver(pg_temp.id('life'), 10, 'first cut'));
SELECT pg_temp.same('request_revision', milestones.request_revision(pg_temp.id('life'), 20, 'shorter'));
SELECT pg_temp.same('request_revision: revisions_left 0', milestones.order_status(pg_temp.id('life')));
SELECT pg_temp.same('deliver again', milestones.deliver(pg_temp.id('life'), 10));
SELECT pg_temp.at('2030-01-05 00:00:00+00');
SELECT pg_temp.same('accept (next)', milestones.accept(pg_temp.id('life'), 20));
SELECT pg_temp.same('deliver 2', milestones.deliver(pg_temp.id('life'), 10));
SELECT pg_temp.same('accept 2 (next)', milestones.accept(pg_temp.id('life'), 20));
SELECT pg_temp.same('deliver 3 (final)', milestones.deliver(pg_temp.id('life'), 10));
SELECT pg_temp.same('accept (final)', milestones.accept(pg_temp.id('life'), 20));
SELECT is((SELECT state || '/' || reason || '/' || fee || '/' || net FROM milestones.order_status WHERE order_id = pg_temp.id('life')),
          'completed/finished/61.73/438.27', 'the finished order was paid out with a fee that rounds');

-- Unlimited revisions, stopped.
SELECT pg_temp.new('stop', NULL);
SELECT pg_temp.same('place_order (unlimited revisions)', milestones.place_order(pg_temp.id('stop'), 20));
SELECT pg_temp.same('deliver (unlimited revisions)', milestones.deliver(pg_temp.id('stop'), 10));
SELECT pg_temp.same('request_revision (unlimited)', milestones.request_revision(pg_temp.id('stop'), 20));
SELECT pg_temp.same('deliver after revision', milestones.deliver(pg_temp.id('stop'), 10));
SELECT pg_temp.same('accept then', milestones.accept(pg_temp.id('stop'), 20));
SELECT pg_temp.same('deliver 2 to stop', milestones.deliver(pg_temp.id('stop'), 10));
SELECT pg_temp.same('stop', milestones.stop(pg_temp.id('stop'), 20));

-- Cancel while in progress (nothing completed), and after a delivery (one completed).
SELECT pg_temp.new('c1');
SELECT milestones.place_order(pg_temp.id('c1'), 20);
SELECT pg_temp.same('cancel in progress', milestones.cancel(pg_temp.id('c1'), 'alice', 'mutual_agreement'));
SELECT pg_temp.new('c2');
SELECT milestones.place_order(pg_temp.id('c2'), 20);
SELECT milestones.deliver(pg_temp.id('c2'), 10);
SELECT milestones.accept(pg_temp.id('c2'), 20);
SELECT milestones.deliver(pg_temp.id('c2'), 10);
SELECT pg_temp.same('cancel delivered', milestones.cancel(pg_temp.id('c2'), 'alice', 'seller_unresponsive', 'note'));

-- cancel_milestone: a pending one (the order goes on; the running one becomes final).
SELECT pg_temp.new('cp');
SELECT milestones.place_order(pg_temp.id('cp'), 20);
SELECT pg_temp.same('cancel_milestone pending 3', milestones.cancel_milestone(pg_temp.id('cp'), 3, 'alice', 'mutual_agreement'));
SELECT pg_temp.same('cancel_milestone pending 2', milestones.cancel_milestone(pg_temp.id('cp'), 2, 'alice', 'mutual_agreement', 'n'));
SELECT pg_temp.same('deliver after cancelled milestones', milestones.deliver(pg_temp.id('cp'), 10));
SELECT pg_temp.same('accept (final, the rest cancelled)', milestones.accept(pg_temp.id('cp'), 20));
-- The running one, with a next: refunded, the next charged and started.
SELECT pg_temp.new('cr');
SELECT milestones.place_order(pg_temp.id('cr'), 20);
SELECT pg_temp.same('cancel_milestone running 1', milestones.cancel_milestone(pg_temp.id('cr'), 1, 'alice', 'mutual_agreement'));
SELECT pg_temp.same('deliver 2 after a refund', milestones.deliver(pg_temp.id('cr'), 10));
SELECT pg_temp.same('cancel_milestone delivered 2', milestones.cancel_milestone(pg_temp.id('cr'), 2, 'alice', 'terms_violation'));
SELECT pg_temp.same('deliver 3 after two refunds', milestones.deliver(pg_temp.id('cr'), 10));
SELECT pg_temp.same('accept 3 (final after refunds)', milestones.accept(pg_temp.id('cr'), 20));
-- The last one running: the order ends cancelled, completed milestones paid.
SELECT pg_temp.new('ce');
SELECT milestones.place_order(pg_temp.id('ce'), 20);
SELECT milestones.deliver(pg_temp.id('ce'), 10);
SELECT milestones.accept(pg_temp.id('ce'), 20);
SELECT pg_temp.same('cancel_milestone pending 3 before 2 runs out', milestones.cancel_milestone(pg_temp.id('ce'), 3, 'alice', 'mutual_agreement'));
SELECT milestones.deliver(pg_temp.id('ce'), 10);
SELECT pg_temp.same('cancel_milestone of the last one ends the order', milestones.cancel_milestone(pg_temp.id('ce'), 2, 'alice', 'payment_problem', 'chargeback'));
-- Nothing completed, the last one refunded: the order ends with no payout.
SELECT pg_temp.new('cz');
SELECT milestones.place_order(pg_temp.id('cz'), 20);
SELECT milestones.cancel_milestone(pg_temp.id('cz'), 3, 'alice', 'mutual_agreement');
SELECT milestones.cancel_milestone(pg_temp.id('cz'), 2, 'alice', 'mutual_agreement');
SELECT pg_temp.same('cancel_milestone ends an order with nothing paid', milestones.cancel_milestone(pg_temp.id('cz'), 1, 'alice', 'mutual_agreement'));

-- With keys: the stored result, and the retry returns the first row.
SELECT pg_temp.new('k');
SELECT pg_temp.same_key('place_order with a key', milestones.place_order(pg_temp.id('k'), 20, 'k-place'), 'k-place');
SELECT pg_temp.same_key('deliver with a key', milestones.deliver(pg_temp.id('k'), 10, 'n', 'k-deliver'), 'k-deliver');
SELECT pg_temp.same_key('request_revision with a key', milestones.request_revision(pg_temp.id('k'), 20, NULL, 'k-rev'), 'k-rev');
SELECT pg_temp.same_key('deliver again with a key', milestones.deliver(pg_temp.id('k'), 10, NULL, 'k-deliver2'), 'k-deliver2');
SELECT pg_temp.same_key('accept with a key', milestones.accept(pg_temp.id('k'), 20, 'k-accept'), 'k-accept');
SELECT pg_temp.same_key('cancel_milestone with a key', milestones.cancel_milestone(pg_temp.id('k'), 3, 'alice', 'mutual_agreement', NULL, 'k-cm'), 'k-cm');
SELECT pg_temp.same_key('deliver final with a key', milestones.deliver(pg_temp.id('k'), 10, NULL, 'k-deliver3'), 'k-deliver3');
SELECT pg_temp.same_key('stop with a key', milestones.stop(pg_temp.id('k'), 20, 'k-stop'), 'k-stop');
SELECT is(pg_catalog.to_jsonb(milestones.place_order(pg_temp.id('k'), 20, 'k-place'))::text,
          (SELECT result FROM firsts WHERE key = 'k-place'), 'a place_order retry returns the first row');
SELECT is(pg_catalog.to_jsonb(milestones.deliver(pg_temp.id('k'), 10, 'n', 'k-deliver'))::text,
          (SELECT result FROM firsts WHERE key = 'k-deliver'), 'a deliver retry returns the first row');
SELECT is(pg_catalog.to_jsonb(milestones.accept(pg_temp.id('k'), 20, 'k-accept'))::text,
          (SELECT result FROM firsts WHERE key = 'k-accept'), 'an accept retry returns the first row');
SELECT is(pg_catalog.to_jsonb(milestones.stop(pg_temp.id('k'), 20, 'k-stop'))::text,
          (SELECT result FROM firsts WHERE key = 'k-stop'), 'a stop retry returns the first row');
SELECT pg_temp.new('k2');
SELECT pg_temp.same_key('withdraw_offer with a key', milestones.withdraw_offer(pg_temp.id('k2'), 10, 'k-w'), 'k-w');
SELECT pg_temp.new('k3');
SELECT pg_temp.same_key('decline_offer with a key', milestones.decline_offer(pg_temp.id('k3'), 20, 'k-d'), 'k-d');
SELECT pg_temp.new('k4');
SELECT milestones.place_order(pg_temp.id('k4'), 20);
SELECT pg_temp.same_key('cancel with a key', milestones.cancel(pg_temp.id('k4'), 'alice', 'mutual_agreement', NULL, 'k-c'), 'k-c');
SELECT is(pg_catalog.to_jsonb(milestones.cancel(pg_temp.id('k4'), 'alice', 'mutual_agreement', NULL, 'k-c'))::text,
          (SELECT result FROM firsts WHERE key = 'k-c'), 'a cancel retry returns the first row');

SELECT is((SELECT count(*)::int FROM milestones.check_invariants()), 0, 'the books hold');
SELECT * FROM finish();
ROLLBACK;
