-- test/sql/35_commit_check.sql - the commit check in proportion to the
-- change (issue 10): an order written only by the API's C actions passes
-- the deferred check from the facts the guard triggers saw, without
-- running _order_problems(); any other write to an order gets the full
-- check, and after a full check that passed, the API's next writes are
-- again judged from the facts.  (The corruptions it must refuse are in
-- 21_invariants.sql and 34_guard_owner.sql.)
BEGIN;
\ir ../fixtures/setup.psql
SELECT plan(6);
SET LOCAL track_functions = 'all';
-- checks(): how many times this transaction ran _order_problems().
CREATE FUNCTION pg_temp.checks() RETURNS bigint LANGUAGE sql AS $$
    SELECT COALESCE(sum(calls), 0)::bigint FROM pg_stat_xact_user_functions
     WHERE schemaname = 'milestones' AND funcname = '_order_problems' $$;

SELECT pg_temp.offer3() AS a \gset
SELECT pg_temp.offer3() AS b \gset
\o /dev/null
SELECT milestones.place_order(:a, 20); SELECT milestones.deliver(:a, 10); SELECT milestones.accept(:a, 20);
SELECT milestones.place_order(:b, 20); SELECT milestones.deliver(:b, 10); SELECT milestones.stop(:b, 20);
\o
SET CONSTRAINTS ALL IMMEDIATE;
SET CONSTRAINTS ALL DEFERRED;
SELECT is(pg_temp.checks(), 0::bigint, 'orders written only by the API pass the commit check without _order_problems()');

-- A hand-written statement (harmless here) on one of them: full check of that order only.
UPDATE milestones.orders SET revisions_used = revisions_used WHERE order_id = :a;
SET CONSTRAINTS ALL IMMEDIATE;
SET CONSTRAINTS ALL DEFERRED;
SELECT is(pg_temp.checks(), 1::bigint, 'a hand-written write to an API-made order gets the full check, once');

-- The full check passed: the API's next writes on it are judged from the facts again.
\o /dev/null
SELECT milestones.deliver(:a, 10);
\o
SET CONSTRAINTS ALL IMMEDIATE;
SET CONSTRAINTS ALL DEFERRED;
SELECT is(pg_temp.checks(), 1::bigint, 'after a passed full check the API''s writes need no query again');

-- An API call and a hand edit of the same order in one statement sequence: full check, refused.
CREATE FUNCTION pg_temp.mixed(p bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM milestones.accept(p, 20);
    INSERT INTO milestones.ledger_entries (txn_id, order_id, position, kind, account, amount, currency, created_at)
    VALUES (nextval('milestones.ledger_txn_id_seq'), p, 3, 'charge', 'buyer', -250, 'USD', now()),
           (currval('milestones.ledger_txn_id_seq'), p, 3, 'charge', 'escrow', 250, 'USD', now());
    SET CONSTRAINTS ALL IMMEDIATE;
END
$$;
SELECT throws_ok(format('SELECT pg_temp.mixed(%s)', :a), '23514',
                 format('order %s would break the milestones invariants', :a),
                 'a balanced hand-written charge next to an API call is still refused (milestone 3 charged twice)');
SELECT cmp_ok(pg_temp.checks(), '>', 1::bigint, '... by the full check');
SET CONSTRAINTS ALL DEFERRED;

-- A rolled-back savepoint taints the facts: the next commit check is full.
SAVEPOINT s;
SELECT milestones.withdraw_offer(pg_temp.offer3(), 10) IS NOT NULL AS withdrawn \gset
ROLLBACK TO SAVEPOINT s;
SELECT pg_temp.checks() AS before \gset
\o /dev/null
SELECT milestones.accept(:a, 20);
\o
SET CONSTRAINTS ALL IMMEDIATE;
SELECT cmp_ok(pg_temp.checks(), '>', :before::bigint, 'after a rolled-back savepoint the touched orders get the full check');

SELECT * FROM finish();
ROLLBACK;
