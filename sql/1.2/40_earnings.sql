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
-- every write (src/check.c), check_invariants() for all of them.
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
    CONSTRAINT seller_earnings_clears_after_end CHECK (clears_at = earned_at + clearance_period),
    CONSTRAINT seller_earnings_cleared_in_time CHECK (cleared_at >= clears_at)
);
COMMENT ON TABLE @extschema@.seller_earnings IS
    'Confirmed mode: one row per order payout''s net to its seller: pending until clears_at = earned_at (the order''s end) + clearance_period (captured), cleared (available) at cleared_at.';
-- The clearance sweep's work list: cost grows with the earnings due only.
CREATE INDEX seller_earnings_due_idx ON @extschema@.seller_earnings (clears_at) WHERE cleared_at IS NULL;
CREATE INDEX seller_earnings_seller_idx ON @extschema@.seller_earnings (seller_id, currency, clears_at) WHERE cleared_at IS NULL;

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
    'Confirmed mode: withdrawals of available earnings to the seller''s bank or wallet, requested -> succeeded | failed; available_before is what was available when it was requested.';
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
    earning_id    bigint,
    withdrawal_id bigint,
    created_at    timestamptz NOT NULL,
    FOREIGN KEY (seller_id, currency) REFERENCES @extschema@.seller_accounts (seller_id, currency),
    CONSTRAINT seller_ledger_reference_matches_kind CHECK (
        (kind IN ('earning','clearance')) = (earning_id IS NOT NULL) AND
        (kind LIKE 'withdrawal%') = (withdrawal_id IS NOT NULL))
);
COMMENT ON TABLE @extschema@.seller_ledger IS
    'Confirmed mode: the journal of seller balances, double-entry: each txn_id is one balanced transaction between earnings (the source), pending, available, withdrawing and withdrawn. Append-only.';
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
CREATE UNIQUE INDEX seller_holds_one_open_idx ON @extschema@.seller_holds (seller_id) WHERE released_at IS NULL;

-- The guards: the journal is append-only; accounts, earnings and
-- withdrawals move only as src/states.c allows and are checked per seller
-- at commit (src/check.c).
CREATE FUNCTION @extschema@._guard_seller() RETURNS trigger
    AS 'MODULE_PATHNAME', 'milestones_guard_seller' LANGUAGE C;
COMMENT ON FUNCTION @extschema@._guard_seller() IS
    'Trigger: seller balances, earnings, withdrawals and their journal: allowed transitions, immutable columns, no DELETE/TRUNCATE; every write a fact of its seller for the commit check.';
CREATE FUNCTION @extschema@._check_seller() RETURNS trigger
    AS 'MODULE_PATHNAME', 'milestones_check_seller' LANGUAGE C;
COMMENT ON FUNCTION @extschema@._check_seller() IS
    'Deferred constraint trigger: at commit, checks each touched seller''s balances against its journal (from the writes the guard saw, else with _seller_problems()).';
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

CREATE FUNCTION @extschema@.request_withdrawal(seller_id bigint, amount numeric, currency text,
                                               idempotency_key text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'milestones_request_withdrawal'
LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.request_withdrawal(bigint, numeric, text, text) IS
    'Seller (application): withdraws an amount of the available balance (due earnings are cleared first); 55000 when more than is available. Returns the withdrawal id; event withdrawal_requested.';

CREATE FUNCTION @extschema@.record_withdrawal(withdrawal_id bigint, outcome text,
                                              provider_ref text DEFAULT NULL, failure text DEFAULT NULL)
RETURNS @extschema@.withdrawals
AS 'MODULE_PATHNAME', 'milestones_record_withdrawal'
LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.record_withdrawal(bigint, text, text, text) IS
    'Payment worker: records the provider''s answer to a withdrawal: succeeded (withdrawing -> withdrawn) or failed (back to available); idempotent. Returns the withdrawals row.';

CREATE FUNCTION @extschema@.hold_clearance(seller_id bigint, note text)
RETURNS SETOF @extschema@.seller_balances
AS 'MODULE_PATHNAME', 'milestones_hold_clearance'
LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.hold_clearance(bigint, text) IS
    'Support: holds a seller''s clearance (pending earnings do not become available until released; available funds stay withdrawable). Returns the seller''s seller_balances rows.';

CREATE FUNCTION @extschema@.release_clearance(seller_id bigint)
RETURNS SETOF @extschema@.seller_balances
AS 'MODULE_PATHNAME', 'milestones_release_clearance'
LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.release_clearance(bigint) IS
    'Support: releases a seller''s clearance hold and clears what is due at once. Returns the seller''s seller_balances rows.';

-- Owner only and not SECURITY DEFINER, like expire_overdue: an as_of chosen
-- by a caller could clear earnings early.
CREATE FUNCTION @extschema@.clear_earnings(as_of timestamptz DEFAULT @extschema@.now(), batch integer DEFAULT 1000)
RETURNS integer
AS 'MODULE_PATHNAME', 'milestones_clear_earnings'
LANGUAGE C SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.clear_earnings(timestamptz, integer) IS
    'Owner/pg_cron: moves up to batch earnings whose clears_at is at or before as_of from pending to available (held sellers skipped). Returns how many.';

REVOKE ALL ON FUNCTION
    @extschema@.seller_balance(bigint, text),
    @extschema@.request_withdrawal(bigint, numeric, text, text),
    @extschema@.record_withdrawal(bigint, text, text, text),
    @extschema@.hold_clearance(bigint, text),
    @extschema@.release_clearance(bigint),
    @extschema@.clear_earnings(timestamptz, integer)
  FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.seller_balance(bigint, text)
    TO milestones_app, milestones_support, milestones_reader;
GRANT EXECUTE ON FUNCTION @extschema@.request_withdrawal(bigint, numeric, text, text)
    TO milestones_app, milestones_support;
GRANT EXECUTE ON FUNCTION @extschema@.record_withdrawal(bigint, text, text, text) TO milestones_payments;
GRANT EXECUTE ON FUNCTION @extschema@.hold_clearance(bigint, text), @extschema@.release_clearance(bigint)
    TO milestones_support;

-- run_expiry, the pg_cron job of schedule_expiry, clears due earnings too
-- (one job to schedule): see sql/1.2/60_standby.sql, its last definition.
