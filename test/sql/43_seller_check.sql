-- test/sql/43_seller_check.sql - the seller commit check never vouches for
-- what the guard did not see (issue 19.2 for seller balances).
--
-- The seller check (src/sellercheck.c) passes a seller written only by the
-- earnings functions from the facts its guard saw and the functions
-- declared.  It also needs the guard to have seen every row the
-- transaction wrote to seller_accounts, seller_ledger, seller_earnings and
-- seller_withdrawals (the row balance, src/rowbalance.c, shared with the
-- order check): a hand edit with the guard disabled or under
-- session_replication_role = replica, followed by an API call for the same
-- seller, gets _seller_problems() and is refused; so is a row a later
-- BEFORE trigger rewrites.  The fast path stays for what only the API
-- wrote.  Each scenario runs in a function that ends with RAISE when the
-- check let it through, inside throws_ok's subtransaction, so it is rolled
-- back either way; one seller per scenario.
BEGIN;
\ir ../fixtures/setup.psql
\ir ../fixtures/earnings.sql
SELECT plan(12);
SET LOCAL track_functions = 'all';
SET LOCAL TimeZone = 'UTC';
-- checks(): how many times this transaction ran _seller_problems().
CREATE FUNCTION pg_temp.checks() RETURNS bigint LANGUAGE sql AS $$
    SELECT COALESCE(sum(calls), 0)::bigint FROM pg_stat_xact_user_functions
     WHERE schemaname = 'milestones' AND funcname = '_seller_problems' $$;
-- flush(): run the deferred commit checks now.
CREATE FUNCTION pg_temp.flush() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    SET CONSTRAINTS ALL IMMEDIATE;
    SET CONSTRAINTS ALL DEFERRED;
END $$;
-- order1(seller, amount): a confirmed-mode one-milestone order of the
-- seller, placed, charged and delivered: accept() completes it and credits
-- the seller's earning.
CREATE FUNCTION pg_temp.order1(s bigint, amount numeric) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    o bigint;
BEGIN
    PERFORM milestones.set_seller_eligibility(s, true);
    o := milestones.create_offer(s, 20, 'design', format('[{"name":"Logo","days":3,"amount":"%s"}]', amount)::jsonb);
    PERFORM milestones.place_order(o, 20);
    PERFORM milestones.record_charge(c.charge_id, 1, 'succeeded', 'ch_' || c.charge_id)
       FROM milestones.charges c WHERE c.order_id = o;
    PERFORM milestones.deliver(o, s);
    RETURN o;
END $$;
CREATE FUNCTION public.ms43_double_amount() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.amount := NEW.amount * 2; RETURN NEW; END $$;
CREATE FUNCTION public.ms43_noop() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RETURN NEW; END $$;

SELECT milestones.set_setting('payment_mode', 'confirmed') \g /dev/null
-- Sellers 51..58: 100.00 earned on 2030-01-01, due on 2030-01-15.
SELECT earn_fixture.earn(s, 100.00, '2030-01-01 00:00:00+00') FROM generate_series(51, 58) s \g /dev/null
SELECT pg_temp.at('2030-02-01 00:00:00+00');
SELECT pg_temp.flush();

-------------------------------------------------------------------------------
-- The fast path: a seller story written only by the API (first: its
-- sweep clears every seller's due earnings)
-------------------------------------------------------------------------------
SELECT pg_temp.checks() AS before \gset
\o /dev/null
-- an order completing credits seller 50 (a new account), a second one the same account
SELECT milestones.accept(pg_temp.order1(50, 120.00), 20);
SELECT milestones.accept(pg_temp.order1(50, 130.00), 20);
SELECT pg_temp.at('2030-02-16 00:00:00+00');
SELECT milestones.clear_earnings();
SELECT milestones.request_withdrawal(50, 150.00, 'USD') AS w1 \gset
SELECT milestones.record_withdrawal(:w1, 'succeeded', 'po_50_1');
SELECT milestones.request_withdrawal(50, 20.00, 'USD') AS w2 \gset
SELECT milestones.record_withdrawal(:w2, 'failed', NULL, 'account closed');
\o
SELECT is(pg_temp.checks(), :before::bigint,
          'credits at order completion (new and existing account), clearance, withdrawals and their answers pass without _seller_problems()')
  FROM pg_temp.flush();
SELECT is((milestones.seller_balance(50, 'USD')).available, 100.00, '... and the story happened (250.00 earned, 150.00 withdrawn)');

-------------------------------------------------------------------------------
-- Writes the guard did not see, then an API call for the same seller
-------------------------------------------------------------------------------
-- The guard of seller_withdrawals disabled: a requested withdrawal's amount
-- is changed by hand (its journal still moved 30.00); then an order of the
-- seller completes and the engine credits the earning.
SELECT milestones.request_withdrawal(51, 30.00, 'USD') AS w51 \gset
SELECT pg_temp.order1(51, 140.00) AS o51 \gset
SELECT pg_temp.flush();
CREATE FUNCTION pg_temp.guard_disabled(w bigint, o bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    ALTER TABLE milestones.seller_withdrawals DISABLE TRIGGER seller_withdrawals_guard;
    UPDATE milestones.seller_withdrawals SET amount = 20.00 WHERE withdrawal_id = w;
    PERFORM milestones.accept(o, 20);
    SET CONSTRAINTS ALL IMMEDIATE;
    RAISE EXCEPTION 'the commit check passed it';
END $$;
SELECT throws_ok(format('SELECT pg_temp.guard_disabled(%s, %s)', :w51, :o51), '23514',
                 'seller 51 would break the milestones invariants',
                 'a hand edit with the guard disabled, then an order completing that credits the seller: full check, refused');

-- Every trigger of seller_accounts disabled for a hand edit (money out of
-- nowhere), enabled again for a withdrawal.
CREATE FUNCTION pg_temp.triggers_disabled(s bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    ALTER TABLE milestones.seller_accounts DISABLE TRIGGER USER;
    UPDATE milestones.seller_accounts SET available = available + 5 WHERE seller_id = s;
    ALTER TABLE milestones.seller_accounts ENABLE TRIGGER USER;
    PERFORM milestones.request_withdrawal(s, 10.00, 'USD');
    SET CONSTRAINTS ALL IMMEDIATE;
    RAISE EXCEPTION 'the commit check passed it';
END $$;
SELECT throws_ok('SELECT pg_temp.triggers_disabled(52)', '23514',
                 'seller 52 would break the milestones invariants',
                 'a hand edit with the triggers disabled, then request_withdrawal: full check, refused');

-- session_replication_role = replica (no trigger fires) for a hand edit,
-- origin again for the API call (record_withdrawal) ...
SELECT milestones.request_withdrawal(53, 30.00, 'USD') AS w53 \gset
SELECT pg_temp.flush();
CREATE FUNCTION pg_temp.replica_edit(s bigint, w bigint, api_in_replica boolean) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('session_replication_role', 'replica', true);
    UPDATE milestones.seller_accounts SET available = available + 5 WHERE seller_id = s;
    IF NOT api_in_replica THEN
        PERFORM set_config('session_replication_role', 'origin', true);
        PERFORM milestones.record_withdrawal(w, 'succeeded', 'po_' || w);
    ELSE
        PERFORM milestones.request_withdrawal(s, 10.00, 'USD');
    END IF;
    SET CONSTRAINTS ALL IMMEDIATE;
    RAISE EXCEPTION 'the commit check passed it';
END $$;
SELECT throws_ok(format('SELECT pg_temp.replica_edit(53, %s, false)', :w53), '23514',
                 'seller 53 would break the milestones invariants',
                 'a hand edit under session_replication_role = replica, then record_withdrawal: full check, refused');
-- ... and with the API call (request_withdrawal) still under replica,
-- where no trigger fires at all: the earnings function checks the seller
-- itself before it writes.
SELECT throws_ok('SELECT pg_temp.replica_edit(54, NULL, true)', '23514',
                 'seller 54 would break the milestones invariants',
                 'the same with request_withdrawal under replica too: the function''s own full check refuses it');

-- A BEFORE trigger that sorts after the guard doubles the journal legs the
-- guard checked: balanced, but the account moves by half of them.
CREATE FUNCTION pg_temp.doubled_after(s bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    CREATE TRIGGER zz_double BEFORE INSERT ON milestones.seller_ledger
        FOR EACH ROW EXECUTE FUNCTION public.ms43_double_amount();
    PERFORM milestones.request_withdrawal(s, 10.00, 'USD');
    SET CONSTRAINTS ALL IMMEDIATE;
    RAISE EXCEPTION 'the commit check passed it';
END $$;
SELECT throws_ok('SELECT pg_temp.doubled_after(55)', '23514',
                 'seller 55 would break the milestones invariants',
                 'a BEFORE trigger sorting after the guard that rewrites seller_ledger amounts: full check, refused');

-------------------------------------------------------------------------------
-- What stays on the fast path
-------------------------------------------------------------------------------
-- A BEFORE trigger that sorts before the guard (the guard sees what it
-- writes), and another seller's API calls under replica without hand edits
-- (the function counts its own writes as seen; no trigger fires for them,
-- so no check either, as for orders).
CREATE FUNCTION pg_temp.fast_paths(s bigint, other bigint) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n bigint := pg_temp.checks();
BEGIN
    CREATE TRIGGER a_noop BEFORE INSERT OR UPDATE ON milestones.seller_ledger
        FOR EACH ROW EXECUTE FUNCTION public.ms43_noop();
    PERFORM milestones.request_withdrawal(s, 1.00, 'USD');
    PERFORM set_config('session_replication_role', 'replica', true);
    PERFORM milestones.request_withdrawal(other, 1.00, 'USD');
    PERFORM set_config('session_replication_role', 'origin', true);
    PERFORM milestones.request_withdrawal(s, 1.00, 'USD');
    PERFORM pg_temp.flush();
    DROP TRIGGER a_noop ON milestones.seller_ledger;
    RETURN pg_temp.checks() - n;
END $$;
SELECT is(pg_temp.fast_paths(56, 57), 0::bigint,
          'a BEFORE trigger sorting before the guard, and another seller''s API calls under replica, leave the fast path alone');

-- A later BEFORE trigger that is disabled does not count; an enabled one
-- (that changes nothing) costs the full check.
CREATE FUNCTION pg_temp.after_noop(s bigint, enabled boolean) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n bigint := pg_temp.checks();
BEGIN
    CREATE TRIGGER zz_noop BEFORE INSERT OR UPDATE ON milestones.seller_ledger
        FOR EACH ROW EXECUTE FUNCTION public.ms43_noop();
    IF NOT enabled THEN
        ALTER TABLE milestones.seller_ledger DISABLE TRIGGER zz_noop;
    END IF;
    PERFORM milestones.request_withdrawal(s, 1.00, 'USD');
    PERFORM pg_temp.flush();
    DROP TRIGGER zz_noop ON milestones.seller_ledger;
    RETURN pg_temp.checks() - n;
END $$;
SELECT is(pg_temp.after_noop(58, false), 0::bigint,
          'a disabled BEFORE trigger sorting after the guard leaves the fast path alone');
SELECT is(pg_temp.after_noop(58, true), 1::bigint,
          'an enabled BEFORE trigger sorting after the guard costs the full check, once');

-- A write the guard did not see, of one seller, sends every seller the
-- transaction touched to the full check (it cannot be traced to its
-- seller); they pass, and later API calls are judged from the facts again.
SELECT pg_temp.checks() AS before \gset
SELECT milestones.request_withdrawal(56, 1.00, 'USD') IS NOT NULL AS w \gset
SELECT milestones.request_withdrawal(58, 1.00, 'USD') IS NOT NULL AS w \gset
SET LOCAL session_replication_role = replica;
UPDATE milestones.seller_accounts SET pending = pending WHERE seller_id = 51;
SET LOCAL session_replication_role = origin;
SELECT is(pg_temp.checks(), (:before + 1)::bigint,
          'an unseen write: the touched sellers get the full check (one query for both), and pass')
  FROM pg_temp.flush();
SELECT milestones.request_withdrawal(56, 1.00, 'USD') IS NOT NULL AS w \gset
SELECT is(pg_temp.checks(), (:before + 1)::bigint, '... after it the API''s writes pass from the facts again')
  FROM pg_temp.flush();

SELECT * FROM finish();
ROLLBACK;
