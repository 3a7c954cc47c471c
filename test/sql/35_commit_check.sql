-- test/sql/35_commit_check.sql - the commit check in proportion to the
-- change (issue 10): an order written only by the API's C actions passes
-- the deferred check from the facts the guard triggers saw, without
-- running _order_problems(); any other write to an order gets the full
-- check, and after a full check that passed, the API's next writes are
-- again judged from the facts.  The fast path never vouches for what the
-- guard did not see (issue 19): ledger legs are declared from the engine's
-- own amounts, and a write the guard missed (session_replication_role =
-- replica, a disabled guard, a later BEFORE trigger that rewrites the row)
-- leads to the full check.  (The corruptions it must refuse are in
-- 21_invariants.sql and 34_guard_owner.sql; writes in other transactions,
-- such as a restore's, in test/shell/27_commit_check.t.)
BEGIN;
\ir ../fixtures/setup.psql
SELECT plan(18);
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
SET CONSTRAINTS ALL DEFERRED;

-- ... while an order first touched after the rollback is judged from the
-- facts again: the guard's row counts forget the rolled-back writes as the
-- transaction's own counts do.
SELECT pg_temp.offer3() AS c \gset
SELECT pg_temp.checks() AS before \gset
\o /dev/null
SELECT milestones.place_order(:c, 20); SELECT milestones.deliver(:c, 10);
\o
SET CONSTRAINTS ALL IMMEDIATE;
SET CONSTRAINTS ALL DEFERRED;
SELECT is(pg_temp.checks(), :before::bigint, 'an order first written after a rolled-back savepoint passes from the facts');

-------------------------------------------------------------------------------
-- Issue 19: what the guard did not see.  Each scenario runs in a function
-- (throws_ok runs it in a subtransaction, rolled back after) on an order
-- made, and settled (its commit check run), just before; the scenario's
-- own SET CONSTRAINTS ALL IMMEDIATE runs the commit check inside it.  (In
-- IMMEDIATE mode the check runs at the end of each of the engine's own
-- statements, before the engine declares them: an API call then always
-- gets the full check, so the API calls run DEFERRED.)  A scenario the
-- check lets through ends in a P0001 of its own, so that throws_ok fails
-- cleanly and the scenario is rolled back either way; 1.1's fast path let
-- every one of them through.
CREATE FUNCTION pg_temp.settle() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    SET CONSTRAINTS ALL IMMEDIATE;
    SET CONSTRAINTS ALL DEFERRED;
END $$;
CREATE FUNCTION public.ms35_double_amount() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.amount := NEW.amount * 2; RETURN NEW; END $$;
CREATE FUNCTION public.ms35_shift_position() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.position := NEW.position + 1; RETURN NEW; END $$;
CREATE FUNCTION public.ms35_noop() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RETURN NEW; END $$;

-- A BEFORE trigger that sorts before the guard doubles both legs of the
-- charge: still balanced, and the guard sees what is written, but it is
-- not what the engine computed (1.1 declared the legs from the statement's
-- RETURNING rows, so they always matched).
CREATE FUNCTION pg_temp.doubled_before(p bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    CREATE TRIGGER a_double BEFORE INSERT ON milestones.ledger_entries
        FOR EACH ROW EXECUTE FUNCTION public.ms35_double_amount();
    PERFORM milestones.place_order(p, 20);
    SET CONSTRAINTS ALL IMMEDIATE;
    RAISE EXCEPTION 'the commit check passed it';
END $$;
SELECT pg_temp.offer3() AS o \gset
SELECT pg_temp.settle();
SELECT throws_ok(format('SELECT pg_temp.doubled_before(%s)', :o), '23514',
                 format('order %s would break the milestones invariants', :o),
                 'ledger legs that are not the amounts the engine computed get the full check (doubled charge refused)');

-- A BEFORE trigger that sorts after the guard rewrites the row the guard
-- checked: the charge of milestone 1 lands on milestone 2.
CREATE FUNCTION pg_temp.shifted_after(p bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    CREATE TRIGGER zz_shift BEFORE INSERT ON milestones.ledger_entries
        FOR EACH ROW EXECUTE FUNCTION public.ms35_shift_position();
    PERFORM milestones.place_order(p, 20);
    SET CONSTRAINTS ALL IMMEDIATE;
    RAISE EXCEPTION 'the commit check passed it';
END $$;
SELECT pg_temp.offer3() AS o \gset
SELECT pg_temp.settle();
SELECT throws_ok(format('SELECT pg_temp.shifted_after(%s)', :o), '23514',
                 format('order %s would break the milestones invariants', :o),
                 'a BEFORE trigger that sorts after the guard leads to the full check (charge moved to milestone 2 refused)');

-- The guard switched off for a hand edit, and on again for an API call.
-- (ALTER TABLE needs the commit check's pending events fired: the hand
-- edit's is fired at once, and finds the order checked.)
CREATE FUNCTION pg_temp.guard_disabled(p bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    ALTER TABLE milestones.order_milestones DISABLE TRIGGER order_milestones_guard;
    SET CONSTRAINTS ALL IMMEDIATE;
    UPDATE milestones.order_milestones SET state = 'skipped' WHERE order_id = p AND position = 3;
    SET CONSTRAINTS ALL DEFERRED;
    ALTER TABLE milestones.order_milestones ENABLE TRIGGER order_milestones_guard;
    PERFORM milestones.deliver(p, 10);
    SET CONSTRAINTS ALL IMMEDIATE;
    RAISE EXCEPTION 'the commit check passed it';
END $$;
SELECT (milestones.place_order(pg_temp.offer3(), 20)).order_id AS o \gset
SELECT pg_temp.settle();
SELECT throws_ok(format('SELECT pg_temp.guard_disabled(%s)', :o), '23514',
                 format('order %s would break the milestones invariants', :o),
                 'a hand edit with the guard disabled, then an API call: full check, refused');

-- session_replication_role = replica (no trigger fires) for a hand edit,
-- origin again for the API call.
CREATE FUNCTION pg_temp.replica_edit(p bigint, api_in_replica boolean) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('session_replication_role', 'replica', true);
    UPDATE milestones.order_milestones SET state = 'skipped' WHERE order_id = p AND position = 3;
    IF NOT api_in_replica THEN
        PERFORM set_config('session_replication_role', 'origin', true);
    END IF;
    PERFORM milestones.deliver(p, 10);
    SET CONSTRAINTS ALL IMMEDIATE;
    RAISE EXCEPTION 'the commit check passed it';
END $$;
SELECT (milestones.place_order(pg_temp.offer3(), 20)).order_id AS o \gset
SELECT pg_temp.settle();
SELECT throws_ok(format('SELECT pg_temp.replica_edit(%s, false)', :o), '23514',
                 format('order %s would break the milestones invariants', :o),
                 'a hand edit under session_replication_role = replica, then an API call: full check, refused');
-- ... and with the API call still under replica, where no trigger fires at
-- all: the engine checks the order itself before it writes.
SELECT (milestones.place_order(pg_temp.offer3(), 20)).order_id AS o \gset
SELECT pg_temp.settle();
SELECT throws_ok(format('SELECT pg_temp.replica_edit(%s, true)', :o), '23514',
                 format('order %s would break the milestones invariants', :o),
                 'the same with the API call under replica too: the engine''s own full check refuses it');

-- What stays on the fast path: a BEFORE trigger that sorts before the
-- guard (the guard sees what it writes), and another order's API calls
-- under replica without hand edits (the engine counts its own writes as
-- seen; no trigger fires for them, so no check either, as in 1.0).
CREATE FUNCTION pg_temp.fast_paths(p bigint, q bigint) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n bigint := pg_temp.checks();
BEGIN
    CREATE TRIGGER a_noop BEFORE INSERT OR UPDATE ON milestones.order_milestones
        FOR EACH ROW EXECUTE FUNCTION public.ms35_noop();
    PERFORM milestones.place_order(p, 20);
    PERFORM set_config('session_replication_role', 'replica', true);
    PERFORM milestones.place_order(q, 20);
    PERFORM milestones.deliver(q, 10);
    PERFORM set_config('session_replication_role', 'origin', true);
    PERFORM milestones.deliver(p, 10);
    PERFORM pg_temp.settle();
    DROP TRIGGER a_noop ON milestones.order_milestones;
    RETURN pg_temp.checks() - n;
END $$;
SELECT pg_temp.offer3() AS o \gset
SELECT pg_temp.offer3() AS o2 \gset
SELECT pg_temp.settle();
SELECT is(pg_temp.fast_paths(:o, :o2), 0::bigint,
          'a BEFORE trigger sorting before the guard, and another order''s API calls under replica, leave the fast path alone');

-- A later BEFORE trigger that is disabled does not count; an enabled one
-- (that changes nothing) costs the full check.
CREATE FUNCTION pg_temp.after_noop(p bigint, enabled boolean) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n bigint := pg_temp.checks();
BEGIN
    CREATE TRIGGER zz_noop BEFORE INSERT OR UPDATE ON milestones.order_milestones
        FOR EACH ROW EXECUTE FUNCTION public.ms35_noop();
    IF NOT enabled THEN
        ALTER TABLE milestones.order_milestones DISABLE TRIGGER zz_noop;
    END IF;
    PERFORM milestones.place_order(p, 20);
    PERFORM pg_temp.settle();
    DROP TRIGGER zz_noop ON milestones.order_milestones;
    RETURN pg_temp.checks() - n;
END $$;
SELECT pg_temp.offer3() AS o \gset
SELECT pg_temp.settle();
SELECT is(pg_temp.after_noop(:o, false), 0::bigint,
          'a disabled BEFORE trigger sorting after the guard leaves the fast path alone');
SELECT pg_temp.offer3() AS o \gset
SELECT pg_temp.settle();
SELECT is(pg_temp.after_noop(:o, true), 1::bigint,
          'an enabled BEFORE trigger sorting after the guard costs the full check, once');

-------------------------------------------------------------------------------
-- Confirmed payment mode (1.2): the payment tables are fact tables too.  A
-- confirmed order's whole story -- a declined charge, a retry, a success,
-- a delivery, an acceptance that requests the next charge, a stop that
-- voids it -- passes from the facts; a write to order_charges the guard
-- did not see (its trigger disabled) is caught by the row balance.
SELECT milestones.set_setting('payment_mode', 'confirmed') IS NOT NULL AS confirmed \gset
SELECT pg_temp.offer3() AS p \gset
SELECT pg_temp.settle();
SELECT pg_temp.checks() AS before \gset
\o /dev/null
SELECT milestones.place_order(:p, 20);
SELECT charge_id AS pc FROM milestones.order_status WHERE order_id = :p \gset
SELECT milestones.record_charge(:pc, 1, 'failed', NULL, 'card_declined');
SELECT milestones.retry_charge(:p, 20);
SELECT milestones.record_charge(:pc, 2, 'succeeded', 'ref-35-1');
SELECT milestones.deliver(:p, 10);
SELECT milestones.accept(:p, 20);
SELECT milestones.stop(:p, 20);
\o
SELECT pg_temp.settle();
SELECT is(pg_temp.checks(), :before::bigint,
          'a confirmed-mode order written only by the API (charges, attempts, a retry, a void) passes from the facts');
SELECT is((SELECT array_agg(state ORDER BY charge_id) FROM milestones.order_charges WHERE order_id = :p),
          ARRAY['succeeded', 'voided'], '... and its story happened: milestone 1 charged, milestone 2''s charge voided by stop');

-- The guard of order_charges switched off for a hand edit (milestone 1's
-- succeeded charge marked voided, its money still in escrow), on again
-- for an API call.
CREATE FUNCTION pg_temp.charge_guard_disabled(p bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    ALTER TABLE milestones.order_charges DISABLE TRIGGER order_charges_guard;
    SET CONSTRAINTS ALL IMMEDIATE;
    UPDATE milestones.order_charges SET state = 'voided', void_reason = 'stopped' WHERE order_id = p AND position = 1;
    SET CONSTRAINTS ALL DEFERRED;
    ALTER TABLE milestones.order_charges ENABLE TRIGGER order_charges_guard;
    PERFORM milestones.deliver(p, 10);
    SET CONSTRAINTS ALL IMMEDIATE;
    RAISE EXCEPTION 'the commit check passed it';
END $$;
SELECT (milestones.place_order(pg_temp.offer3(), 20)).order_id AS q \gset
SELECT milestones.record_charge(charge_id, 1, 'succeeded', 'ref-35-2') IS NOT NULL AS paid
  FROM milestones.order_status WHERE order_id = :q \gset
SELECT pg_temp.settle();
SELECT throws_ok(format('SELECT pg_temp.charge_guard_disabled(%s)', :q), '23514',
                 format('order %s would break the milestones invariants', :q),
                 'a hand edit of a charge with its guard disabled, then an API call: full check, refused');

SELECT * FROM finish();
ROLLBACK;
