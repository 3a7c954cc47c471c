-------------------------------------------------------------------------------
-- Seller earnings: clearance, balances, withdrawals (SPEC section 12).
--
-- Confirmed mode only (in recorded mode nothing here is written: the
-- application pays sellers from the events, as in 1.1).  At a
-- confirmed-mode order's payout the seller's net becomes an earning,
-- pending until clears_at = the order's end + settings.clearance_period
-- (captured on the earning); clear_earnings() (run by the pg_cron job of
-- schedule_expiry) and request_withdrawal() move what is due to
-- available; a withdrawal moves available -> withdrawing -> withdrawn (or
-- back to available when the provider fails it).
--
--   seller_accounts   each seller's balances per currency, the current
--                     state (the row a withdrawal locks, so two racing
--                     withdrawals serialize and never overdraw);
--   seller_ledger     the journal: every movement one balanced
--                     transaction between the accounts earnings (the
--                     source: minus what all payouts credited), pending,
--                     available, withdrawing and withdrawn;
--   seller_earnings   one row per payout's net, with its clearance;
--   seller_holds      support's holds on a seller's clearance;
--   seller_withdrawals  the withdrawals and the provider's answers.
--
-- The accounts equal the journal's sums: the commit check holds that for
-- every write (src/sellercheck.c), check_invariants() for all of them
-- (_seller_problems below).  Every writer locks the seller's account row
-- (seller_accounts) first and the earnings, withdrawals and journal after
-- it, so the writers of one seller serialize and never deadlock; the
-- engine (src/earnings.c) and doc/earnings.md explain each step.
-------------------------------------------------------------------------------

CREATE TABLE @extschema@.seller_accounts (
    seller_id   bigint NOT NULL CONSTRAINT seller_accounts_seller_id_positive CHECK (seller_id > 0),
    currency    text NOT NULL CONSTRAINT seller_accounts_currency_iso4217 CHECK (currency ~ '^[A-Z]{3}$'),
    pending     numeric(14,2) NOT NULL DEFAULT 0 CONSTRAINT seller_accounts_pending_nonnegative CHECK (pending >= 0),
    available   numeric(14,2) NOT NULL DEFAULT 0 CONSTRAINT seller_accounts_available_nonnegative CHECK (available >= 0),
    withdrawing numeric(14,2) NOT NULL DEFAULT 0 CONSTRAINT seller_accounts_withdrawing_nonnegative CHECK (withdrawing >= 0),
    withdrawn   numeric(14,2) NOT NULL DEFAULT 0 CONSTRAINT seller_accounts_withdrawn_nonnegative CHECK (withdrawn >= 0),
    opened_at   timestamptz NOT NULL,
    PRIMARY KEY (seller_id, currency)
);
COMMENT ON TABLE @extschema@.seller_accounts IS
    'Confirmed mode: each seller''s balances per currency (pending clearance, available, withdrawing, withdrawn), always equal to the sums of seller_ledger. None is ever negative: a withdrawal never overdraws.';

CREATE SEQUENCE @extschema@.seller_entry_id_seq;
CREATE SEQUENCE @extschema@.seller_txn_id_seq;
CREATE SEQUENCE @extschema@.earning_id_seq;
CREATE SEQUENCE @extschema@.withdrawal_id_seq;

CREATE TABLE @extschema@.seller_earnings (
    earning_id       bigint PRIMARY KEY DEFAULT pg_catalog.nextval('@extschema@.earning_id_seq'),
    seller_id        bigint NOT NULL,
    currency         text NOT NULL,
    order_id         bigint NOT NULL REFERENCES @extschema@.orders (order_id)
                     CONSTRAINT seller_earnings_one_per_order UNIQUE,
    amount           numeric(14,2) NOT NULL CONSTRAINT seller_earnings_amount_positive CHECK (amount > 0),
    earned_at        timestamptz NOT NULL,
    clearance_period interval NOT NULL,
    clears_at        timestamptz NOT NULL,
    cleared_at       timestamptz,
    FOREIGN KEY (seller_id, currency) REFERENCES @extschema@.seller_accounts (seller_id, currency),
    -- In UTC, as due_at is: the session's TimeZone (a daylight saving
    -- change inside the period) must not move clears_at, nor fail this
    -- check for a row a restore brings back under another TimeZone.
    CONSTRAINT seller_earnings_clears_after_end
        CHECK (clears_at = pg_catalog.timezone('UTC', pg_catalog.timezone('UTC', earned_at) + clearance_period)),
    CONSTRAINT seller_earnings_cleared_in_time CHECK (cleared_at >= clears_at)
);
COMMENT ON TABLE @extschema@.seller_earnings IS
    'Confirmed mode: one row per order payout''s net to its seller: pending until clears_at = earned_at (the order''s end) + clearance_period (captured; added in UTC), available from cleared_at (when the sweep, a withdrawal or a release cleared it; never before clears_at).';
COMMENT ON COLUMN @extschema@.seller_earnings.earned_at IS 'The order''s end: completed_at, or the cancellation time.';
COMMENT ON COLUMN @extschema@.seller_earnings.clearance_period IS 'settings.clearance_period when the order ended (captured).';
COMMENT ON COLUMN @extschema@.seller_earnings.cleared_at IS 'When the earning became available (the clearing call''s milestones.now()); NULL while pending.';
-- The clearance sweep's work list: cost grows with the earnings due only.
CREATE INDEX seller_earnings_due_idx ON @extschema@.seller_earnings (clears_at) WHERE cleared_at IS NULL;
-- A withdrawal's or a release's own clearing: one seller's due earnings.
CREATE INDEX seller_earnings_seller_idx ON @extschema@.seller_earnings (seller_id, currency, clears_at) WHERE cleared_at IS NULL;
-- One seller's earnings (the full check, the DBA's queries) and the last
-- clearance a hold must come after.
CREATE INDEX seller_earnings_seller_cleared_idx ON @extschema@.seller_earnings (seller_id, cleared_at);

CREATE TABLE @extschema@.seller_withdrawals (
    withdrawal_id    bigint PRIMARY KEY DEFAULT pg_catalog.nextval('@extschema@.withdrawal_id_seq'),
    seller_id        bigint NOT NULL,
    currency         text NOT NULL,
    amount           numeric(14,2) NOT NULL CONSTRAINT seller_withdrawals_amount_positive CHECK (amount > 0),
    available_before numeric(14,2) NOT NULL,
    state            text NOT NULL DEFAULT 'requested'
                     CONSTRAINT seller_withdrawals_state_valid CHECK (state IN ('requested','succeeded','failed')),
    requested_at     timestamptz NOT NULL,
    reported_at      timestamptz,
    provider_ref     text CONSTRAINT seller_withdrawals_provider_ref_length CHECK (pg_catalog.length(provider_ref) BETWEEN 1 AND 255),
    failure          text CONSTRAINT seller_withdrawals_failure_length CHECK (pg_catalog.length(failure) BETWEEN 1 AND 2000),
    FOREIGN KEY (seller_id, currency) REFERENCES @extschema@.seller_accounts (seller_id, currency),
    CONSTRAINT seller_withdrawals_within_available CHECK (amount <= available_before),
    CONSTRAINT seller_withdrawals_reported_matches_state CHECK ((state = 'requested') = (reported_at IS NULL)),
    CONSTRAINT seller_withdrawals_failed_has_failure CHECK (state <> 'failed' OR failure IS NOT NULL)
);
COMMENT ON TABLE @extschema@.seller_withdrawals IS
    'Confirmed mode: withdrawals of available earnings to the seller''s bank or wallet, requested -> succeeded | failed; available_before is what was available when it was requested (after that seller''s due earnings were cleared).';
COMMENT ON COLUMN @extschema@.seller_withdrawals.reported_at IS 'When record_withdrawal recorded the provider''s answer.';
CREATE INDEX seller_withdrawals_seller_idx ON @extschema@.seller_withdrawals (seller_id, currency);
CREATE INDEX seller_withdrawals_open_idx ON @extschema@.seller_withdrawals (requested_at) WHERE state <> 'succeeded';

CREATE TABLE @extschema@.seller_ledger (
    entry_id      bigint PRIMARY KEY DEFAULT pg_catalog.nextval('@extschema@.seller_entry_id_seq'),
    txn_id        bigint NOT NULL,
    seller_id     bigint NOT NULL,
    currency      text NOT NULL,
    account       text NOT NULL
                  CONSTRAINT seller_ledger_account_valid
                  CHECK (account IN ('earnings','pending','available','withdrawing','withdrawn')),
    amount        numeric(14,2) NOT NULL CONSTRAINT seller_ledger_amount_nonzero CHECK (amount <> 0),
    kind          text NOT NULL
                  CONSTRAINT seller_ledger_kind_valid
                  CHECK (kind IN ('earning','clearance','withdrawal','withdrawal_succeeded','withdrawal_failed')),
    order_id      bigint,
    earning_id    bigint REFERENCES @extschema@.seller_earnings (earning_id),
    withdrawal_id bigint REFERENCES @extschema@.seller_withdrawals (withdrawal_id),
    created_at    timestamptz NOT NULL,
    FOREIGN KEY (seller_id, currency) REFERENCES @extschema@.seller_accounts (seller_id, currency),
    CONSTRAINT seller_ledger_reference_matches_kind CHECK (
        (kind IN ('earning','clearance')) = (earning_id IS NOT NULL) AND
        (kind LIKE 'withdrawal%') = (withdrawal_id IS NOT NULL))
);
COMMENT ON TABLE @extschema@.seller_ledger IS
    'Confirmed mode: the journal of seller balances, double-entry: each txn_id is one balanced transaction of two legs between earnings (the source), pending, available, withdrawing and withdrawn. Append-only. A seller''s transactions are numbered in the order they happened (each is written under the account''s row lock).';
COMMENT ON COLUMN @extschema@.seller_ledger.kind IS
    'earning (earnings -> pending, at the order''s payout), clearance (pending -> available), withdrawal (available -> withdrawing), withdrawal_succeeded (withdrawing -> withdrawn), withdrawal_failed (withdrawing -> available).';
CREATE INDEX seller_ledger_seller_idx ON @extschema@.seller_ledger (seller_id, currency);
CREATE INDEX seller_ledger_txn_idx ON @extschema@.seller_ledger (txn_id);

CREATE SEQUENCE @extschema@.hold_id_seq;
CREATE TABLE @extschema@.seller_holds (
    hold_id     bigint PRIMARY KEY DEFAULT pg_catalog.nextval('@extschema@.hold_id_seq'),
    seller_id   bigint NOT NULL CONSTRAINT seller_holds_seller_id_positive CHECK (seller_id > 0),
    note        text NOT NULL CONSTRAINT seller_holds_note_length CHECK (pg_catalog.length(note) BETWEEN 1 AND 2000),
    held_at     timestamptz NOT NULL,
    released_at timestamptz,
    CONSTRAINT seller_holds_released_after_held CHECK (released_at >= held_at)
);
COMMENT ON TABLE @extschema@.seller_holds IS
    'Support''s holds on a seller''s clearance (hold_clearance / release_clearance), kept as history: while a hold is not released, the seller''s earnings do not clear; what is available stays withdrawable.';
COMMENT ON COLUMN @extschema@.seller_holds.held_at IS 'When the hold took effect: milestones.now(), or the seller''s last clearance if that was later (a clearance the hold waited for).';
CREATE UNIQUE INDEX seller_holds_one_open_idx ON @extschema@.seller_holds (seller_id) WHERE released_at IS NULL;
CREATE INDEX seller_holds_seller_idx ON @extschema@.seller_holds (seller_id, held_at);

-- The guards (src/earnings.c): the journal is append-only; an earning
-- changes only once (cleared_at set); withdrawals move only as
-- src/states.c allows; a hold is released once; nothing is deleted or
-- truncated.  Every write is a fact of its seller and currency for the
-- commit check (src/sellercheck.c).
CREATE FUNCTION @extschema@._guard_seller() RETURNS trigger
    AS 'MODULE_PATHNAME', 'milestones_guard_seller' LANGUAGE C;
COMMENT ON FUNCTION @extschema@._guard_seller() IS
    'Trigger: seller balances, earnings, withdrawals and their journal: allowed transitions, immutable columns, no DELETE/TRUNCATE; every write a fact of its seller for the commit check.';
CREATE FUNCTION @extschema@._check_seller() RETURNS trigger
    AS 'MODULE_PATHNAME', 'milestones_check_seller' LANGUAGE C;
COMMENT ON FUNCTION @extschema@._check_seller() IS
    'Deferred constraint trigger: at commit, checks each touched seller''s balances against its journal (from the writes the guard saw and the API declared, else with _seller_problems()).';
REVOKE ALL ON FUNCTION @extschema@._guard_seller(), @extschema@._check_seller() FROM PUBLIC;

CREATE TRIGGER seller_accounts_guard BEFORE INSERT OR UPDATE OR DELETE ON @extschema@.seller_accounts
    FOR EACH ROW EXECUTE FUNCTION @extschema@._guard_seller();
CREATE TRIGGER seller_accounts_guard_truncate BEFORE TRUNCATE ON @extschema@.seller_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._guard_seller();
CREATE CONSTRAINT TRIGGER seller_accounts_check AFTER INSERT OR UPDATE ON @extschema@.seller_accounts
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION @extschema@._check_seller();
CREATE TRIGGER seller_ledger_guard BEFORE INSERT OR UPDATE OR DELETE ON @extschema@.seller_ledger
    FOR EACH ROW EXECUTE FUNCTION @extschema@._guard_seller();
CREATE TRIGGER seller_ledger_guard_truncate BEFORE TRUNCATE ON @extschema@.seller_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._guard_seller();
CREATE CONSTRAINT TRIGGER seller_ledger_check AFTER INSERT ON @extschema@.seller_ledger
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION @extschema@._check_seller();
CREATE TRIGGER seller_earnings_guard BEFORE INSERT OR UPDATE OR DELETE ON @extschema@.seller_earnings
    FOR EACH ROW EXECUTE FUNCTION @extschema@._guard_seller();
CREATE TRIGGER seller_earnings_guard_truncate BEFORE TRUNCATE ON @extschema@.seller_earnings
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._guard_seller();
CREATE CONSTRAINT TRIGGER seller_earnings_check AFTER INSERT OR UPDATE ON @extschema@.seller_earnings
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION @extschema@._check_seller();
CREATE TRIGGER seller_holds_guard BEFORE UPDATE OR DELETE ON @extschema@.seller_holds
    FOR EACH ROW EXECUTE FUNCTION @extschema@._guard_seller();
CREATE TRIGGER seller_holds_guard_truncate BEFORE TRUNCATE ON @extschema@.seller_holds
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._guard_seller();
CREATE TRIGGER seller_withdrawals_guard BEFORE INSERT OR UPDATE OR DELETE ON @extschema@.seller_withdrawals
    FOR EACH ROW EXECUTE FUNCTION @extschema@._guard_seller();
CREATE TRIGGER seller_withdrawals_guard_truncate BEFORE TRUNCATE ON @extschema@.seller_withdrawals
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._guard_seller();
CREATE CONSTRAINT TRIGGER seller_withdrawals_check AFTER INSERT OR UPDATE ON @extschema@.seller_withdrawals
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION @extschema@._check_seller();

SELECT pg_catalog.pg_extension_config_dump('@extschema@.seller_accounts', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.seller_earnings', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.seller_withdrawals', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.seller_ledger', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.seller_holds', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.seller_entry_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.seller_txn_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.earning_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.withdrawal_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.hold_id_seq', '');
REVOKE ALL ON @extschema@.seller_accounts, @extschema@.seller_earnings, @extschema@.seller_withdrawals,
    @extschema@.seller_ledger, @extschema@.seller_holds FROM PUBLIC;
REVOKE ALL ON SEQUENCE @extschema@.seller_entry_id_seq, @extschema@.seller_txn_id_seq,
    @extschema@.earning_id_seq, @extschema@.withdrawal_id_seq, @extschema@.hold_id_seq FROM PUBLIC;

-------------------------------------------------------------------------------
-- Views.
-------------------------------------------------------------------------------
-- seller_balances: one row per seller and currency, what the accounts hold;
-- next_clears_at is the earliest pending earning's clearance; held says
-- whether support holds the seller's clearance.
CREATE VIEW @extschema@.seller_balances AS
SELECT a.seller_id,
       a.currency,
       a.pending,
       a.available,
       a.withdrawing,
       a.withdrawn,
       (SELECT pg_catalog.min(e.clears_at) FROM @extschema@.seller_earnings e
         WHERE e.seller_id = a.seller_id AND e.currency = a.currency AND e.cleared_at IS NULL) AS next_clears_at,
       EXISTS (SELECT FROM @extschema@.seller_holds h WHERE h.seller_id = a.seller_id AND h.released_at IS NULL) AS held
  FROM @extschema@.seller_accounts a;
COMMENT ON VIEW @extschema@.seller_balances IS
    'Confirmed mode: each seller''s balances per currency: pending (clearing at next_clears_at and later), available, withdrawing, withdrawn; held when support holds the seller''s clearance.';

-- withdrawals: every withdrawal and the provider's answer.
CREATE VIEW @extschema@.withdrawals AS
SELECT w.withdrawal_id,
       w.seller_id,
       w.currency,
       w.amount,
       w.available_before,
       w.state,
       w.requested_at,
       w.reported_at,
       w.provider_ref,
       w.failure
  FROM @extschema@.seller_withdrawals w;
COMMENT ON VIEW @extschema@.withdrawals IS
    'Confirmed mode: every withdrawal of a seller''s available earnings (requested, succeeded, failed) with the provider''s reference or failure. request_withdrawal returns its id, record_withdrawal the row.';

REVOKE ALL ON @extschema@.seller_balances, @extschema@.withdrawals FROM PUBLIC;
GRANT SELECT ON @extschema@.seller_balances TO milestones_app, milestones_support, milestones_reader;
GRANT SELECT ON @extschema@.withdrawals TO milestones_app, milestones_support, milestones_reader, milestones_payments;

-------------------------------------------------------------------------------
-- Functions (in C, src/earnings.c).
-------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.seller_balance(seller_id bigint, currency text)
RETURNS @extschema@.seller_balances
AS 'MODULE_PATHNAME', 'milestones_seller_balance'
LANGUAGE C STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.seller_balance(bigint, text) IS
    'One seller''s balances in one currency (the seller_balances row); P0002 when the seller holds no balance in it.';

-- The API's functions are SECURITY DEFINER (their callers hold no table
-- privilege) with a pinned search_path.
CREATE FUNCTION @extschema@.request_withdrawal(seller_id bigint, amount numeric, currency text,
                                               idempotency_key text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'milestones_request_withdrawal'
LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.request_withdrawal(bigint, numeric, text, text) IS
    'Seller (application): withdraws an amount of the available balance (the seller''s due earnings are cleared first, unless held); 55000 when more than is available (DETAIL: what is). Returns the withdrawal id; event withdrawal_requested. A retry with the same idempotency key and arguments returns the first id.';

CREATE FUNCTION @extschema@.record_withdrawal(withdrawal_id bigint, outcome text,
                                              provider_ref text DEFAULT NULL, failure text DEFAULT NULL)
RETURNS @extschema@.withdrawals
AS 'MODULE_PATHNAME', 'milestones_record_withdrawal'
LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.record_withdrawal(bigint, text, text, text) IS
    'Payment worker: records the provider''s answer to a withdrawal: succeeded (withdrawing -> withdrawn) or failed (back to available; failure required); idempotent (the same report again returns the same row). Returns the withdrawals row.';

CREATE FUNCTION @extschema@.hold_clearance(seller_id bigint, note text)
RETURNS SETOF @extschema@.seller_balances
AS 'MODULE_PATHNAME', 'milestones_hold_clearance'
LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.hold_clearance(bigint, text) IS
    'Support: holds a seller''s clearance (pending earnings do not become available until released; available funds stay withdrawable); 55000 when already held. Returns the seller''s seller_balances rows.';

CREATE FUNCTION @extschema@.release_clearance(seller_id bigint)
RETURNS SETOF @extschema@.seller_balances
AS 'MODULE_PATHNAME', 'milestones_release_clearance'
LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.release_clearance(bigint) IS
    'Support: releases a seller''s clearance hold and clears what is due at once; 55000 when not held. Returns the seller''s seller_balances rows.';

-- Owner only and not SECURITY DEFINER, like expire_overdue: it is the
-- pg_cron job's work (run_expiry).  as_of may not lie in the future: an
-- earning never becomes available before its clears_at.
CREATE FUNCTION @extschema@.clear_earnings(as_of timestamptz DEFAULT @extschema@.now(), batch integer DEFAULT 1000)
RETURNS integer
AS 'MODULE_PATHNAME', 'milestones_clear_earnings'
LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.clear_earnings(timestamptz, integer) IS
    'Owner/pg_cron: moves up to batch earnings whose clears_at is at or before as_of (not after milestones.now()) from pending to available, oldest first; held sellers and accounts a concurrent call holds are skipped (the next run takes them). Returns how many.';

-- Owner only: the DBA's repair for a confirmed-mode order whose payout has
-- no earning (check_invariants() reports "order N paid the seller X but
-- its earning is missing"), e.g. rows brought back by hand.  The engine
-- credits every confirmed-mode payout itself.
CREATE FUNCTION @extschema@._credit_earning(order_id bigint)
RETURNS bigint
AS 'MODULE_PATHNAME', 'milestones_credit_earning'
LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@._credit_earning(bigint) IS
    'Owner (repair): credits the payout net of an ended confirmed-mode order that has no earning to its seller''s pending balance, clearing at the order''s end + settings.clearance_period, exactly as the engine does at the payout. Returns the earning id; 55000 when the order is not an ended confirmed-mode order with a payout, or already has its earning.';

REVOKE ALL ON FUNCTION
    @extschema@.seller_balance(bigint, text),
    @extschema@.request_withdrawal(bigint, numeric, text, text),
    @extschema@.record_withdrawal(bigint, text, text, text),
    @extschema@.hold_clearance(bigint, text),
    @extschema@.release_clearance(bigint),
    @extschema@.clear_earnings(timestamptz, integer),
    @extschema@._credit_earning(bigint)
  FROM PUBLIC;
-- Balances are read by the application (a seller's page), support and readers.
GRANT EXECUTE ON FUNCTION @extschema@.seller_balance(bigint, text)
    TO milestones_app, milestones_support, milestones_reader;
-- The seller withdraws through the application.
GRANT EXECUTE ON FUNCTION @extschema@.request_withdrawal(bigint, numeric, text, text)
    TO milestones_app, milestones_support;
-- Only the payment worker reports what the provider did (the web
-- application gets PostgreSQL's own 42501).
GRANT EXECUTE ON FUNCTION @extschema@.record_withdrawal(bigint, text, text, text) TO milestones_payments;
-- Holds are support's decision.
GRANT EXECUTE ON FUNCTION @extschema@.hold_clearance(bigint, text), @extschema@.release_clearance(bigint)
    TO milestones_support;

-- run_expiry, the pg_cron job of schedule_expiry, clears due earnings too
-- (one job to schedule): see sql/1.2/60_standby.sql, its last definition.

-------------------------------------------------------------------------------
-- _seller_problems: the invariants of seller balances (SPEC section 12) for
-- the given sellers (all of them when NULL), one row per violation:
--   - each account equals its journal's sums, and the journal's earnings
--     account (the source) is minus what the four balances hold;
--   - pending is what the uncleared earnings add up to, and the journal
--     credited exactly the earnings (each earning once, its amount; each
--     cleared one cleared once, its amount; a pending one never);
--   - each journal transaction is two legs of one kind that balance;
--   - each ended confirmed-mode order's payout net is one earning of its
--     seller, earned when the order ended; no other earning exists;
--   - nothing became available before its clears_at or while the seller
--     was held;
--   - each withdrawal moved as its state says, and was no more than what
--     the journal held available just before it (available_before).
-- A seller's journal transactions are numbered in the order they happened
-- (each is written under the account's row lock), which is what "just
-- before" means.  The commit check (src/sellercheck.c) runs it for the
-- sellers a transaction wrote when it cannot vouch for the writes itself;
-- check_invariants() for all.  A custom plan per call: the NULL case reads
-- everything, the other a few sellers through their indexes; the seller
-- subsets are not materialized (each use is planned in place: a CTE read by
-- several scans spills and is slower).  No JIT: its estimates are high and
-- compiling the query cost seconds (7.5 s of 9 at 30,000 earnings).
-------------------------------------------------------------------------------
CREATE FUNCTION @extschema@._seller_problems(p_sellers bigint[])
RETURNS TABLE (seller_id bigint, problem text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_custom_plan SET jit = off AS $$
BEGIN
    RETURN QUERY
    WITH acc AS NOT MATERIALIZED (
        SELECT a.* FROM @extschema@.seller_accounts a
         WHERE p_sellers IS NULL OR a.seller_id = ANY (p_sellers)
    ), legs AS NOT MATERIALIZED (
        SELECT l.* FROM @extschema@.seller_ledger l
         WHERE p_sellers IS NULL OR l.seller_id = ANY (p_sellers)
    ), earn AS NOT MATERIALIZED (
        SELECT e.* FROM @extschema@.seller_earnings e
         WHERE p_sellers IS NULL OR e.seller_id = ANY (p_sellers)
    ), wd AS NOT MATERIALIZED (
        SELECT w.* FROM @extschema@.seller_withdrawals w
         WHERE p_sellers IS NULL OR w.seller_id = ANY (p_sellers)
    ), journal AS (
        SELECT a.seller_id, a.currency, a.pending, a.available, a.withdrawing, a.withdrawn,
               COALESCE(j.j_earnings, 0) AS j_earnings, COALESCE(j.j_pending, 0) AS j_pending,
               COALESCE(j.j_available, 0) AS j_available, COALESCE(j.j_withdrawing, 0) AS j_withdrawing,
               COALESCE(j.j_withdrawn, 0) AS j_withdrawn,
               COALESCE(x.earned, 0) AS earned, COALESCE(x.uncleared, 0) AS uncleared
          FROM acc a
          LEFT JOIN (SELECT l.seller_id, l.currency,
                            sum(l.amount) FILTER (WHERE l.account = 'earnings') AS j_earnings,
                            sum(l.amount) FILTER (WHERE l.account = 'pending') AS j_pending,
                            sum(l.amount) FILTER (WHERE l.account = 'available') AS j_available,
                            sum(l.amount) FILTER (WHERE l.account = 'withdrawing') AS j_withdrawing,
                            sum(l.amount) FILTER (WHERE l.account = 'withdrawn') AS j_withdrawn
                       FROM legs l GROUP BY l.seller_id, l.currency) j
                 ON j.seller_id = a.seller_id AND j.currency = a.currency
          LEFT JOIN (SELECT e.seller_id, e.currency, sum(e.amount) AS earned,
                            sum(e.amount) FILTER (WHERE e.cleared_at IS NULL) AS uncleared
                       FROM earn e GROUP BY e.seller_id, e.currency) x
                 ON x.seller_id = a.seller_id AND x.currency = a.currency
    ), per_earning AS (
        SELECT e.earning_id, e.seller_id, e.amount, e.cleared_at,
               COALESCE(x.credits, 0) AS credits, x.credited, COALESCE(x.clearances, 0) AS clearances, x.cleared
          FROM earn e
          LEFT JOIN (SELECT l.earning_id,
                            count(DISTINCT l.txn_id) FILTER (WHERE l.kind = 'earning') AS credits,
                            sum(l.amount) FILTER (WHERE l.kind = 'earning' AND l.account = 'pending') AS credited,
                            count(DISTINCT l.txn_id) FILTER (WHERE l.kind = 'clearance') AS clearances,
                            sum(l.amount) FILTER (WHERE l.kind = 'clearance' AND l.account = 'available') AS cleared
                       FROM legs l WHERE l.earning_id IS NOT NULL GROUP BY l.earning_id) x
                 ON x.earning_id = e.earning_id
    ), per_withdrawal AS (
        SELECT w.withdrawal_id, w.seller_id, w.amount, w.state,
               x.requested, x.paid, x.returned, COALESCE(x.txns, 0) AS txns
          FROM wd w
          LEFT JOIN (SELECT l.withdrawal_id,
                            sum(l.amount) FILTER (WHERE l.kind = 'withdrawal' AND l.account = 'withdrawing') AS requested,
                            sum(l.amount) FILTER (WHERE l.kind = 'withdrawal_succeeded' AND l.account = 'withdrawn') AS paid,
                            sum(l.amount) FILTER (WHERE l.kind = 'withdrawal_failed' AND l.account = 'available') AS returned,
                            count(DISTINCT l.txn_id) AS txns
                       FROM legs l WHERE l.withdrawal_id IS NOT NULL GROUP BY l.withdrawal_id) x
                 ON x.withdrawal_id = w.withdrawal_id
    ), available_through AS (
        -- what was available after each transaction's leg on available
        SELECT l.seller_id, l.txn_id, l.kind, l.withdrawal_id, l.amount,
               sum(l.amount) OVER (PARTITION BY l.seller_id, l.currency ORDER BY l.txn_id) AS through
          FROM legs l WHERE l.account = 'available'
    )
    SELECT j.seller_id, format('%s balances %s/%s/%s/%s (pending/available/withdrawing/withdrawn) differ from the journal''s %s/%s/%s/%s',
                               j.currency, j.pending, j.available, j.withdrawing, j.withdrawn,
                               j.j_pending, j.j_available, j.j_withdrawing, j.j_withdrawn)
      FROM journal j
     WHERE (j.pending, j.available, j.withdrawing, j.withdrawn)
           IS DISTINCT FROM (j.j_pending, j.j_available, j.j_withdrawing, j.j_withdrawn)
    UNION ALL
    SELECT j.seller_id, format('%s journal: the earnings account credited %s but the balances add up to %s',
                               j.currency, -j.j_earnings, j.j_pending + j.j_available + j.j_withdrawing + j.j_withdrawn)
      FROM journal j
     WHERE -j.j_earnings <> j.j_pending + j.j_available + j.j_withdrawing + j.j_withdrawn
    UNION ALL
    SELECT j.seller_id, format('%s pending %s but the uncleared earnings add up to %s', j.currency, j.pending, j.uncleared)
      FROM journal j WHERE j.pending <> j.uncleared
    UNION ALL
    SELECT j.seller_id, format('%s earnings add up to %s but the journal credited %s', j.currency, j.earned, -j.j_earnings)
      FROM journal j WHERE j.earned <> -j.j_earnings
    UNION ALL
    SELECT t.seller_id, format('seller journal transaction %s does not balance (sums to %s)', t.txn_id, t.total)
      FROM (SELECT l.seller_id, l.txn_id, sum(l.amount) AS total FROM legs l GROUP BY l.seller_id, l.txn_id) t
     WHERE t.total <> 0
    UNION ALL
    SELECT t.seller_id, format('seller journal transaction %s has %s legs of %s kinds in %s currencies, not two of one',
                               t.txn_id, t.n, t.kinds, t.currencies)
      FROM (SELECT l.seller_id, l.txn_id, count(*) AS n, count(DISTINCT l.kind) AS kinds,
                   count(DISTINCT l.currency) AS currencies
              FROM legs l GROUP BY l.seller_id, l.txn_id) t
     WHERE t.n <> 2 OR t.kinds <> 1 OR t.currencies <> 1
    UNION ALL
    SELECT p.seller_id, format('earning %s of %s was credited %s times (%s)', p.earning_id, p.amount, p.credits,
                               COALESCE(p.credited::text, 'nothing'))
      FROM per_earning p WHERE p.credits <> 1 OR p.credited IS DISTINCT FROM p.amount
    UNION ALL
    SELECT p.seller_id, format('earning %s of %s is %s but the journal cleared it %s times (%s)', p.earning_id, p.amount,
                               CASE WHEN p.cleared_at IS NULL THEN 'pending' ELSE 'cleared' END, p.clearances,
                               COALESCE(p.cleared::text, 'nothing'))
      FROM per_earning p
     WHERE p.clearances <> CASE WHEN p.cleared_at IS NULL THEN 0 ELSE 1 END
        OR (p.cleared_at IS NOT NULL AND p.cleared IS DISTINCT FROM p.amount)
    UNION ALL
    -- each ended confirmed-mode order's payout net is one earning of its seller
    SELECT o.seller_id, format('order %s paid the seller %s but its earning is %s', o.order_id, p.net,
                               COALESCE(e.amount::text || ' ' || e.currency || ' of seller ' || e.seller_id, 'missing'))
      FROM @extschema@.orders o
      JOIN LATERAL (SELECT sum(l.amount) AS net FROM @extschema@.ledger_entries l
                     WHERE l.order_id = o.order_id AND l.kind = 'payout' AND l.account = 'seller') p ON p.net IS NOT NULL
      LEFT JOIN @extschema@.seller_earnings e ON e.order_id = o.order_id
     WHERE o.payment_mode = 'confirmed' AND o.state IN ('completed','cancelled')
       AND (p_sellers IS NULL OR o.seller_id = ANY (p_sellers))
       AND (e.amount IS DISTINCT FROM p.net OR e.seller_id <> o.seller_id OR e.currency <> o.currency)
    UNION ALL
    SELECT e.seller_id, format('earning %s of order %s is not the payout of an ended confirmed-mode order of this seller',
                               e.earning_id, e.order_id)
      FROM earn e LEFT JOIN @extschema@.orders o ON o.order_id = e.order_id
     WHERE o.order_id IS NULL OR o.payment_mode <> 'confirmed' OR o.state NOT IN ('completed','cancelled')
        OR o.seller_id <> e.seller_id OR o.currency <> e.currency
        OR NOT EXISTS (SELECT FROM @extschema@.ledger_entries l
                        WHERE l.order_id = e.order_id AND l.kind = 'payout' AND l.account = 'seller')
    UNION ALL
    SELECT e.seller_id, format('earning %s was earned at %s but order %s ended at %s', e.earning_id, e.earned_at,
                               e.order_id, o.completed_at)
      FROM earn e JOIN @extschema@.orders o ON o.order_id = e.order_id
     WHERE e.earned_at IS DISTINCT FROM o.completed_at
    UNION ALL
    SELECT e.seller_id, format('earning %s cleared at %s, before its clears_at %s', e.earning_id, e.cleared_at, e.clears_at)
      FROM earn e WHERE e.cleared_at < e.clears_at
    UNION ALL
    SELECT e.seller_id, format('earning %s cleared at %s while the seller was held (hold %s from %s to %s)',
                               e.earning_id, e.cleared_at, h.hold_id, h.held_at, COALESCE(h.released_at::text, 'now'))
      FROM earn e
      JOIN @extschema@.seller_holds h ON h.seller_id = e.seller_id
     WHERE e.cleared_at > h.held_at AND (h.released_at IS NULL OR e.cleared_at < h.released_at)
    UNION ALL
    SELECT w.seller_id, format('withdrawal %s of %s is %s but its journal moved %s to withdrawing, %s to withdrawn and %s back to available',
                               w.withdrawal_id, w.amount, w.state, COALESCE(w.requested::text, 'nothing'),
                               COALESCE(w.paid::text, 'nothing'), COALESCE(w.returned::text, 'nothing'))
      FROM per_withdrawal w
     WHERE w.requested IS DISTINCT FROM w.amount
        OR w.paid IS DISTINCT FROM CASE WHEN w.state = 'succeeded' THEN w.amount END
        OR w.returned IS DISTINCT FROM CASE WHEN w.state = 'failed' THEN w.amount END
        OR w.txns <> CASE WHEN w.state = 'requested' THEN 1 ELSE 2 END
    UNION ALL
    SELECT w.seller_id, format('withdrawal %s of %s recorded %s available before it, but the journal held %s',
                               w.withdrawal_id, w.amount, w.available_before, v.through - v.amount)
      FROM wd w
      JOIN available_through v ON v.withdrawal_id = w.withdrawal_id AND v.kind = 'withdrawal'
     WHERE w.available_before <> v.through - v.amount OR w.amount > v.through - v.amount;
END
$$;
COMMENT ON FUNCTION @extschema@._seller_problems(bigint[]) IS
    'The invariants of seller balances (all sellers when NULL): accounts = journal, balanced two-leg transactions, earnings = ended confirmed-mode payouts'' nets, each credited and cleared once, clearance not before clears_at nor while held, withdrawals moved as recorded and never above what was available. One row per violation.';
REVOKE ALL ON FUNCTION @extschema@._seller_problems(bigint[]) FROM PUBLIC;
