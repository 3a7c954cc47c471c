-------------------------------------------------------------------------------
-- Payments confirmed by the provider (SPEC section 11).
--
-- In 'recorded' mode (the default, and what an upgraded database keeps) a
-- charge is booked as captured the moment the buyer places or accepts,
-- exactly as in 1.1.  In 'confirmed' mode the database requests a charge
-- and the application's payment worker reports the provider's answer:
--
--   order_charges     one row per charge (one milestone's amount), state
--                     requested -> succeeded | failed | voided (failed ->
--                     requested again on the buyer's retry);
--   charge_attempts   one row per attempt (1, 2, ...): the provider's
--                     reference or failure text, and whether a success was
--                     wanted (booked for the milestone) or late (booked and
--                     refunded at once: no money the provider took is ever
--                     dropped);
--   charges           the view: one row per attempt.
--
-- The milestone waits in state awaiting_payment between pending and
-- in_progress; nothing is booked in the ledger while a charge is only
-- requested.  Every ledger charge and refund leg of a confirmed-mode order
-- carries its charge_id and charge_attempt.  The engine (src/payments.c,
-- src/actions.c) writes all of it; the guard triggers hold every write path
-- to the state tables of src/states.c.
-------------------------------------------------------------------------------

-- The payment worker's role: reports the provider's answers, consumes the
-- events it acts on, reads charges, refunds and withdrawals -- nothing else
-- (SPEC sections 11 and 12).  Granted by a DBA to the worker's login only:
-- the web application cannot report a payment.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'milestones_payments') THEN
        CREATE ROLE milestones_payments NOLOGIN;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA @extschema@ TO milestones_payments;

-------------------------------------------------------------------------------
-- Settings.
-------------------------------------------------------------------------------
ALTER TABLE @extschema@.settings
    ADD COLUMN payment_mode text NOT NULL DEFAULT 'recorded'
        CONSTRAINT settings_payment_mode_valid CHECK (payment_mode IN ('recorded', 'confirmed')),
    ADD COLUMN payment_window interval NOT NULL DEFAULT '3 days'
        CONSTRAINT settings_payment_window_range
        CHECK (payment_window >= interval '1 hour' AND payment_window <= interval '30 days'),
    ADD COLUMN clearance_period interval NOT NULL DEFAULT '14 days'
        CONSTRAINT settings_clearance_period_range
        CHECK (clearance_period >= interval '0' AND clearance_period <= interval '90 days');
COMMENT ON COLUMN @extschema@.settings.payment_mode IS
    'recorded (default, as 1.1): a charge is booked when the buyer places or accepts; confirmed: the charge is requested and booked when the payment worker reports the provider''s success (SPEC section 11). Captured on the order when offered.';
COMMENT ON COLUMN @extschema@.settings.payment_window IS
    'How long a requested charge may stay unpaid (1 hour to 30 days); captured on the charge: pay_by = requested_at + payment_window.';
COMMENT ON COLUMN @extschema@.settings.clearance_period IS
    'Confirmed mode: how long a seller''s net stays pending after the order ends before it is available (0 to 90 days); captured on the payout (SPEC section 12).';

-- A restore re-inserts the settings row: the upsert copies the new columns too.
CREATE OR REPLACE FUNCTION @extschema@._settings_upsert() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT FROM @extschema@.settings) THEN
        UPDATE @extschema@.settings
           SET min_order_total  = NEW.min_order_total,
               max_milestones   = NEW.max_milestones,
               response_window  = NEW.response_window,
               seller_fee_rate  = NEW.seller_fee_rate,
               idempotency_ttl  = NEW.idempotency_ttl,
               expiry_batch     = NEW.expiry_batch,
               notify           = NEW.notify,
               payment_mode     = NEW.payment_mode,
               payment_window   = NEW.payment_window,
               clearance_period = NEW.clearance_period;
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;

-------------------------------------------------------------------------------
-- Orders, milestones, ledger, events: what confirmed mode adds.
-------------------------------------------------------------------------------
-- The payment mode, captured when the offer is made (the guard keeps it
-- immutable), so changing the setting never changes an order in flight.
-- A constant default: existing orders read 'recorded' without a rewrite.
ALTER TABLE @extschema@.orders ADD COLUMN payment_mode text NOT NULL DEFAULT 'recorded';
COMMENT ON COLUMN @extschema@.orders.payment_mode IS
    'recorded or confirmed: settings.payment_mode when the offer was made (SPEC section 11).';
COMMENT ON COLUMN @extschema@.orders.end_reason IS
    'Why a completed order ended: finished, stopped, expired, or unpaid (confirmed mode: a later milestone''s charge was not paid by pay_by).';
COMMENT ON CONSTRAINT orders_row_rules ON @extschema@.orders IS
$$The row rules of an order, evaluated in C; a broken rule is reported under its own name:
orders_buyer_id_positive: buyer_id > 0
orders_buyer_is_not_seller: buyer_id <> seller_id
orders_cancel_note_length: length(cancel_note) <= 2000
orders_cancelled_by_length: length(cancelled_by) BETWEEN 1 AND 200
orders_currency_iso4217: currency ~ '^[A-Z]{3}$'
orders_end_reason_valid: end_reason IN ('finished','stopped','expired','unpaid')
orders_ended_has_completed_at: (state IN ('offered','active')) = (completed_at IS NULL)
orders_fee_rate_range: fee_rate >= 0 AND fee_rate < 1
orders_payment_mode_valid: payment_mode IN ('recorded','confirmed') AND (end_reason <> 'unpaid' OR payment_mode = 'confirmed')
orders_placed_at_matches_state: (state IN ('active','completed') AND placed_at IS NOT NULL) OR (state IN ('offered','withdrawn','declined') AND placed_at IS NULL) OR state = 'cancelled'
orders_reason_matches_state: (state = 'completed' AND end_reason IS NOT NULL AND cancel_reason IS NULL) OR (state = 'cancelled' AND end_reason IS NULL AND cancel_reason IS NOT NULL AND cancelled_by IS NOT NULL) OR (state NOT IN ('completed','cancelled') AND end_reason IS NULL AND cancel_reason IS NULL)
orders_revisions_allowed_range: revisions_allowed >= 0
orders_revisions_used_range: revisions_used >= 0 AND (revisions_allowed IS NULL OR revisions_used <= revisions_allowed)
orders_seller_id_positive: seller_id > 0
orders_state_valid: state IN ('offered','active','completed','withdrawn','declined','cancelled')
orders_times_ordered: placed_at >= created_at AND completed_at >= created_at AND completed_at >= placed_at$$;

COMMENT ON CONSTRAINT milestones_row_rules ON @extschema@.order_milestones IS
$$The row rules of a milestone, evaluated in C; a broken rule is reported under its own name:
milestones_amount_positive: amount > 0
milestones_cancel_matches_state: (state = 'cancelled' AND cancel_reason IS NOT NULL AND cancelled_by IS NOT NULL) OR (state = 'refunded' AND (cancel_reason IS NULL) = (cancelled_by IS NULL) AND (cancel_reason IS NOT NULL OR cancel_note IS NULL)) OR (state NOT IN ('cancelled','refunded') AND cancel_reason IS NULL AND cancelled_by IS NULL AND cancel_note IS NULL)
milestones_cancel_note_length: length(cancel_note) <= 2000
milestones_cancelled_by_length: length(cancelled_by) BETWEEN 1 AND 200
milestones_completed_at_matches_state: (state = 'completed') = (completed_at IS NOT NULL)
milestones_completed_was_delivered: state <> 'completed' OR (delivered_at IS NOT NULL AND completed_at IS NOT NULL AND deliveries > 0)
milestones_days_range: days BETWEEN 1 AND 365
milestones_delivered_has_deadline: state <> 'delivered' OR (delivered_at IS NOT NULL AND respond_by IS NOT NULL AND respond_by > delivered_at)
milestones_deliveries_range: deliveries >= 0
milestones_delivery_note_length: length(delivery_note) <= 2000
milestones_in_progress_has_no_deadline: state <> 'in_progress' OR respond_by IS NULL
milestones_name_valid: length(name) BETWEEN 1 AND 200 AND name ~ '[^[:space:]]'
milestones_position_range: position BETWEEN 1 AND 20
milestones_started_has_times: (state IN ('pending','skipped','cancelled','awaiting_payment')) = (started_at IS NULL AND due_at IS NULL)
milestones_state_valid: state IN ('pending','awaiting_payment','in_progress','delivered','completed','skipped','refunded','cancelled')$$;

-- Every charge and refund leg of a confirmed-mode order names its charge
-- and attempt (SPEC section 6.2).  Nullable without a default: the large
-- ledger is neither rewritten nor scanned.  No foreign key: an RI check on
-- every ledger insert would cost recorded mode too; the commit check and
-- check_invariants() hold the link instead.
ALTER TABLE @extschema@.ledger_entries
    ADD COLUMN charge_id bigint,
    ADD COLUMN charge_attempt integer;
COMMENT ON COLUMN @extschema@.ledger_entries.charge_id IS
    'Confirmed mode: the charge a charge or refund leg belongs to (order_charges.charge_id); NULL in recorded mode and for payouts.';
COMMENT ON COLUMN @extschema@.ledger_entries.charge_attempt IS
    'Confirmed mode: the attempt of that charge whose success the leg books or refunds.';
COMMENT ON CONSTRAINT ledger_row_rules ON @extschema@.ledger_entries IS
$$The row rules of a ledger entry, evaluated in C; a broken rule is reported under its own name:
ledger_account_valid: account IN ('buyer','escrow','seller','platform')
ledger_amount_nonzero: amount <> 0
ledger_charge_matches_kind: (charge_id IS NULL) = (charge_attempt IS NULL) AND (charge_id IS NULL OR (kind IN ('charge','refund') AND charge_id > 0 AND charge_attempt >= 1))
ledger_currency_iso4217: currency ~ '^[A-Z]{3}$'
ledger_kind_valid: kind IN ('charge','payout','refund')
ledger_position_matches_kind: (kind = 'payout') = (position IS NULL)$$;

-- Seller-level events (withdrawals, SPEC section 12) belong to no order:
-- order_id and order_state are NULL there, and the detail names the
-- seller.  Dropping NOT NULL changes only the catalog.
ALTER TABLE @extschema@.events
    ALTER COLUMN order_id DROP NOT NULL,
    ALTER COLUMN order_state DROP NOT NULL;
COMMENT ON CONSTRAINT events_row_rules ON @extschema@.events IS
$$The row rules of an event, evaluated in C; a broken rule is reported under its own name:
events_actor_role_valid: actor_role IN ('seller','buyer','support','system','payments')
events_order_matches_state: (order_id IS NULL) = (order_state IS NULL)$$;

-------------------------------------------------------------------------------
-- Charges and their attempts.
-------------------------------------------------------------------------------
CREATE SEQUENCE @extschema@.charge_id_seq;

CREATE TABLE @extschema@.order_charges (
    charge_id    bigint PRIMARY KEY DEFAULT pg_catalog.nextval('@extschema@.charge_id_seq'),
    order_id     bigint NOT NULL,
    position     smallint NOT NULL,
    amount       numeric(12,2) NOT NULL CONSTRAINT order_charges_amount_positive CHECK (amount > 0),
    currency     text NOT NULL CONSTRAINT order_charges_currency_iso4217 CHECK (currency ~ '^[A-Z]{3}$'),
    state        text NOT NULL DEFAULT 'requested'
                 CONSTRAINT order_charges_state_valid CHECK (state IN ('requested','succeeded','failed','voided')),
    attempts     integer NOT NULL DEFAULT 1 CONSTRAINT order_charges_attempts_range CHECK (attempts BETWEEN 1 AND 1000),
    requested_at timestamptz NOT NULL,
    pay_by       timestamptz NOT NULL,
    ended_at     timestamptz,
    void_reason  text
                 CONSTRAINT order_charges_void_reason_valid
                 CHECK (void_reason IN ('expired','withdrawn','declined','stopped','cancelled','milestone_cancelled')),
    FOREIGN KEY (order_id, position) REFERENCES @extschema@.order_milestones (order_id, position),
    CONSTRAINT order_charges_pay_by_after_request CHECK (pay_by > requested_at),
    CONSTRAINT order_charges_void_matches_state CHECK ((state = 'voided') = (void_reason IS NOT NULL)),
    CONSTRAINT order_charges_ended_matches_state CHECK ((state IN ('succeeded','voided')) = (ended_at IS NOT NULL))
);
COMMENT ON TABLE @extschema@.order_charges IS
    'Confirmed mode: one charge per milestone start the order requested (SPEC section 11), requested -> succeeded | failed | voided; failed -> requested on the buyer''s retry. Written by the engine; guarded by C triggers.';
COMMENT ON COLUMN @extschema@.order_charges.attempts IS 'How many attempts were requested (the last one is the current attempt).';
COMMENT ON COLUMN @extschema@.order_charges.pay_by IS 'requested_at + settings.payment_window: at or after it the charge is void (the milestone is unpaid).';
COMMENT ON COLUMN @extschema@.order_charges.ended_at IS 'When the charge succeeded (the wanted success was recorded) or was voided.';
COMMENT ON COLUMN @extschema@.order_charges.void_reason IS 'Why a voided charge was voided: expired (pay_by passed), withdrawn, declined, stopped, cancelled, milestone_cancelled.';
CREATE INDEX order_charges_order_idx ON @extschema@.order_charges (order_id);
-- At most one open charge per order, and one wanted success per milestone.
CREATE UNIQUE INDEX order_charges_one_open_idx ON @extschema@.order_charges (order_id)
    WHERE state IN ('requested','failed');
CREATE UNIQUE INDEX order_charges_one_success_idx ON @extschema@.order_charges (order_id, position)
    WHERE state = 'succeeded';
-- The expiry sweep's work list of unpaid charges: cost grows with open charges only.
CREATE INDEX order_charges_pay_by_idx ON @extschema@.order_charges (pay_by)
    WHERE state IN ('requested','failed');

CREATE TABLE @extschema@.charge_attempts (
    charge_id    bigint NOT NULL REFERENCES @extschema@.order_charges (charge_id),
    attempt      integer NOT NULL CONSTRAINT charge_attempts_attempt_range CHECK (attempt BETWEEN 1 AND 1000),
    order_id     bigint NOT NULL,
    state        text NOT NULL DEFAULT 'requested'
                 CONSTRAINT charge_attempts_state_valid CHECK (state IN ('requested','succeeded','failed')),
    requested_at timestamptz NOT NULL,
    reported_at  timestamptz,
    provider_ref text CONSTRAINT charge_attempts_provider_ref_length CHECK (pg_catalog.length(provider_ref) BETWEEN 1 AND 255),
    failure      text CONSTRAINT charge_attempts_failure_length CHECK (pg_catalog.length(failure) BETWEEN 1 AND 2000),
    wanted       boolean,
    PRIMARY KEY (charge_id, attempt),
    CONSTRAINT charge_attempts_reported_matches_state CHECK ((state = 'requested') = (reported_at IS NULL)),
    CONSTRAINT charge_attempts_wanted_matches_state CHECK ((state = 'succeeded') = (wanted IS NOT NULL)),
    CONSTRAINT charge_attempts_failed_has_failure CHECK (state <> 'failed' OR failure IS NOT NULL)
);
COMMENT ON TABLE @extschema@.charge_attempts IS
    'Confirmed mode: each attempt of a charge, requested -> succeeded | failed (failed -> succeeded when a payment settles late), with the provider''s reference and failure text. Written by the engine; guarded by C triggers.';
COMMENT ON COLUMN @extschema@.charge_attempts.wanted IS
    'For a success: true when it paid the milestone, false when the charge was no longer wanted (voided, or paid by another attempt): then it was booked and refunded at once.';
COMMENT ON COLUMN @extschema@.charge_attempts.reported_at IS 'When the payment worker last reported this attempt''s outcome.';
COMMENT ON COLUMN @extschema@.charge_attempts.order_id IS 'The charge''s order (the commit check and the order lock work per order).';
-- An order's late successes (booked and refunded at once), which every
-- action of a confirmed-mode order sums: rare rows, so a small index that
-- finds them whatever the table holds (without it the planner, which
-- rightly guesses "succeeded and not wanted" to be a few rows, read the
-- whole table on each action: 1.4 ms at 6,000 attempts).
CREATE INDEX charge_attempts_late_idx ON @extschema@.charge_attempts (order_id)
    WHERE state = 'succeeded' AND NOT wanted;

-- The guards: only the transitions of src/states.c, immutable identity
-- columns, no DELETE or TRUNCATE; every write is a fact of its order for
-- the commit check.
CREATE FUNCTION @extschema@._guard_payment() RETURNS trigger
    AS 'MODULE_PATHNAME', 'milestones_guard_payment' LANGUAGE C;
COMMENT ON FUNCTION @extschema@._guard_payment() IS
    'Trigger: allowed state transitions of charges, charge attempts and refunds (src/states.c), immutable columns, no DELETE/TRUNCATE.';
REVOKE ALL ON FUNCTION @extschema@._guard_payment() FROM PUBLIC;
CREATE TRIGGER order_charges_guard BEFORE INSERT OR UPDATE OR DELETE ON @extschema@.order_charges
    FOR EACH ROW EXECUTE FUNCTION @extschema@._guard_payment();
CREATE TRIGGER order_charges_guard_truncate BEFORE TRUNCATE ON @extschema@.order_charges
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._guard_payment();
CREATE CONSTRAINT TRIGGER order_charges_check AFTER INSERT OR UPDATE ON @extschema@.order_charges
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION @extschema@._check_order();
CREATE TRIGGER charge_attempts_guard BEFORE INSERT OR UPDATE OR DELETE ON @extschema@.charge_attempts
    FOR EACH ROW EXECUTE FUNCTION @extschema@._guard_payment();
CREATE TRIGGER charge_attempts_guard_truncate BEFORE TRUNCATE ON @extschema@.charge_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._guard_payment();
CREATE CONSTRAINT TRIGGER charge_attempts_check AFTER INSERT OR UPDATE ON @extschema@.charge_attempts
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION @extschema@._check_order();

SELECT pg_catalog.pg_extension_config_dump('@extschema@.order_charges', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.charge_attempts', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.charge_id_seq', '');
REVOKE ALL ON @extschema@.order_charges, @extschema@.charge_attempts FROM PUBLIC;
REVOKE ALL ON SEQUENCE @extschema@.charge_id_seq FROM PUBLIC;

-------------------------------------------------------------------------------
-- Refunds the provider executes (SPEC section 12): every refund of a
-- confirmed-mode order -- support's cancel and cancel_milestone of a paid
-- milestone, a late success of section 11 -- is booked in the ledger
-- (escrow -> buyer) when it is decided, and tracked here until the payment
-- worker reports the provider's answer.
-------------------------------------------------------------------------------
CREATE SEQUENCE @extschema@.refund_id_seq;

CREATE TABLE @extschema@.order_refunds (
    refund_id      bigint PRIMARY KEY DEFAULT pg_catalog.nextval('@extschema@.refund_id_seq'),
    order_id       bigint NOT NULL REFERENCES @extschema@.orders (order_id),
    position       smallint NOT NULL,
    charge_id      bigint NOT NULL REFERENCES @extschema@.order_charges (charge_id),
    charge_attempt integer NOT NULL,
    buyer_id       bigint NOT NULL,
    amount         numeric(12,2) NOT NULL CONSTRAINT order_refunds_amount_positive CHECK (amount > 0),
    currency       text NOT NULL CONSTRAINT order_refunds_currency_iso4217 CHECK (currency ~ '^[A-Z]{3}$'),
    reason         text NOT NULL
                   CONSTRAINT order_refunds_reason_valid CHECK (reason IN ('cancelled','milestone_cancelled','late_success')),
    state          text NOT NULL DEFAULT 'requested'
                   CONSTRAINT order_refunds_state_valid CHECK (state IN ('requested','succeeded','failed')),
    attempts       integer NOT NULL DEFAULT 1 CONSTRAINT order_refunds_attempts_range CHECK (attempts BETWEEN 1 AND 1000),
    requested_at   timestamptz NOT NULL,
    reported_at    timestamptz,
    provider_ref   text CONSTRAINT order_refunds_provider_ref_length CHECK (pg_catalog.length(provider_ref) BETWEEN 1 AND 255),
    failure        text CONSTRAINT order_refunds_failure_length CHECK (pg_catalog.length(failure) BETWEEN 1 AND 2000),
    ledger_txn     bigint NOT NULL,
    FOREIGN KEY (charge_id, charge_attempt) REFERENCES @extschema@.charge_attempts (charge_id, attempt),
    CONSTRAINT order_refunds_one_per_success UNIQUE (charge_id, charge_attempt),
    CONSTRAINT order_refunds_reported_matches_state CHECK ((state = 'requested') = (reported_at IS NULL) OR attempts > 1),
    CONSTRAINT order_refunds_failed_has_failure CHECK (state <> 'failed' OR failure IS NOT NULL)
);
COMMENT ON TABLE @extschema@.order_refunds IS
    'Confirmed mode: every refund to a buyer, requested -> succeeded | failed (failed -> requested when support sends it again, failed -> succeeded when it settles late). The ledger booked it (ledger_txn) when it was decided. Written by the engine; guarded by C triggers.';
COMMENT ON COLUMN @extschema@.order_refunds.reason IS
    'cancelled (support cancelled the order), milestone_cancelled (support cancelled the paid milestone), late_success (a success the order no longer wanted).';
COMMENT ON COLUMN @extschema@.order_refunds.attempts IS 'How many times the refund was sent to the provider (retry_refund adds one).';
COMMENT ON COLUMN @extschema@.order_refunds.ledger_txn IS 'The ledger transaction (escrow -> buyer) that booked this refund.';
CREATE INDEX order_refunds_order_idx ON @extschema@.order_refunds (order_id);
CREATE INDEX order_refunds_failed_idx ON @extschema@.order_refunds (requested_at) WHERE state = 'failed';

CREATE TRIGGER order_refunds_guard BEFORE INSERT OR UPDATE OR DELETE ON @extschema@.order_refunds
    FOR EACH ROW EXECUTE FUNCTION @extschema@._guard_payment();
CREATE TRIGGER order_refunds_guard_truncate BEFORE TRUNCATE ON @extschema@.order_refunds
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._guard_payment();
CREATE CONSTRAINT TRIGGER order_refunds_check AFTER INSERT OR UPDATE ON @extschema@.order_refunds
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION @extschema@._check_order();

SELECT pg_catalog.pg_extension_config_dump('@extschema@.order_refunds', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.refund_id_seq', '');
REVOKE ALL ON @extschema@.order_refunds FROM PUBLIC;
REVOKE ALL ON SEQUENCE @extschema@.refund_id_seq FROM PUBLIC;

-------------------------------------------------------------------------------
-- Views.
-------------------------------------------------------------------------------
-- charges: one row per attempt.  state is the charge's, attempt_state the
-- attempt's; refund_id is the refund of a success the order no longer
-- wanted (late).
CREATE VIEW @extschema@.charges AS
SELECT c.charge_id,
       a.attempt,
       c.order_id,
       c.position::integer AS position,
       o.buyer_id,
       o.seller_id,
       c.amount,
       c.currency,
       c.state,
       a.state              AS attempt_state,
       c.attempts,
       c.pay_by,
       a.requested_at,
       a.reported_at,
       a.provider_ref,
       a.failure,
       a.wanted,
       c.void_reason,
       c.ended_at,
       r.refund_id
  FROM @extschema@.order_charges c
  JOIN @extschema@.charge_attempts a ON a.charge_id = c.charge_id
  JOIN @extschema@.orders o ON o.order_id = c.order_id
  LEFT JOIN @extschema@.order_refunds r ON r.charge_id = a.charge_id AND r.charge_attempt = a.attempt
                                       AND r.reason = 'late_success';
COMMENT ON VIEW @extschema@.charges IS
    'Confirmed mode: one row per charge attempt: the charge (state, amount, pay_by, void_reason), the attempt (attempt_state, provider_ref, failure), whether a success was wanted, and the refund of a late one. record_charge returns a row of it.';

-- refunds: failed ones first, for support (who sends one again with retry_refund).
CREATE VIEW @extschema@.refunds AS
SELECT r.refund_id,
       r.order_id,
       r.position::integer AS position,
       r.charge_id,
       r.charge_attempt,
       r.buyer_id,
       r.amount,
       r.currency,
       r.reason,
       r.state,
       r.attempts          AS attempt,
       r.requested_at,
       r.reported_at,
       r.provider_ref,
       r.failure
  FROM @extschema@.order_refunds r
 ORDER BY r.state = 'failed' DESC, r.requested_at, r.refund_id;
COMMENT ON VIEW @extschema@.refunds IS
    'Confirmed mode: every refund to a buyer and the provider''s answer; failed ones first (support sends one again with retry_refund). record_refund and retry_refund return a row of it.';

-- order_status: the 1.1 columns, then the payment mode and the open charge
-- (requested or failed; NULL when none).  A milestone awaiting payment is
-- the current one, like a running one.  charged and refunded sum the
-- ledger, so they include late successes and their refunds.
CREATE OR REPLACE VIEW @extschema@.order_status AS
SELECT o.order_id,
       o.seller_id,
       o.buyer_id,
       o.category,
       o.currency,
       o.state,
       COALESCE(o.end_reason, o.cancel_reason)              AS reason,
       o.created_at,
       o.placed_at,
       o.completed_at,
       agg.milestone_count,
       cur.position::integer                               AS current_milestone,
       cur.state                                           AS milestone_state,
       cur.due_at,
       CASE WHEN cur.state = 'delivered' THEN cur.respond_by END AS respond_by,
       o.revisions_allowed - o.revisions_used              AS revisions_left,
       agg.total,
       money.charged,
       money.paid_out,
       money.refunded,
       money.fee,
       money.net,
       o.revisions_used,
       cur.name                                            AS milestone_name,
       cur.position = agg.last_live                        AS final_milestone,
       o.payment_mode,
       ch.charge_id,
       ch.attempts                                         AS charge_attempt,
       ch.state                                            AS charge_state,
       ch.pay_by
  FROM @extschema@.orders o
  CROSS JOIN LATERAL (
        SELECT count(*)::integer AS milestone_count,
               COALESCE(sum(m.amount) FILTER (WHERE m.state <> 'cancelled'), 0)::numeric(14,2) AS total,
               max(m.position) FILTER (WHERE m.state <> 'cancelled') AS last_live
          FROM @extschema@.order_milestones m
         WHERE m.order_id = o.order_id) agg
  LEFT JOIN LATERAL (
        SELECT m.position, m.state, m.due_at, m.respond_by, m.name
          FROM @extschema@.order_milestones m
         WHERE m.order_id = o.order_id
         ORDER BY CASE WHEN m.state IN ('in_progress','delivered','awaiting_payment') THEN 0
                       WHEN m.state IN ('completed','refunded') THEN 1
                       WHEN m.state = 'cancelled' THEN 3 ELSE 2 END,
                  CASE WHEN m.state IN ('completed','refunded') THEN -m.position ELSE m.position END
         LIMIT 1) cur ON true
  CROSS JOIN LATERAL (
        SELECT COALESCE(sum(l.amount) FILTER (WHERE l.kind = 'charge' AND l.account = 'escrow'), 0)::numeric(14,2)   AS charged,
               COALESCE(-sum(l.amount) FILTER (WHERE l.kind = 'payout' AND l.account = 'escrow'), 0)::numeric(14,2)  AS paid_out,
               COALESCE(sum(l.amount) FILTER (WHERE l.kind = 'refund' AND l.account = 'buyer'), 0)::numeric(14,2)    AS refunded,
               COALESCE(sum(l.amount) FILTER (WHERE l.kind = 'payout' AND l.account = 'platform'), 0)::numeric(14,2) AS fee,
               COALESCE(sum(l.amount) FILTER (WHERE l.kind = 'payout' AND l.account = 'seller'), 0)::numeric(14,2)   AS net
          FROM @extschema@.ledger_entries l
         WHERE l.order_id = o.order_id) money
  LEFT JOIN @extschema@.order_charges ch ON ch.order_id = o.order_id AND ch.state IN ('requested','failed');
COMMENT ON VIEW @extschema@.order_status IS
    'One row per order: state, reason, the current milestone and its deadlines, revisions left (NULL = unlimited), total of the milestones not cancelled, money charged, paid out and refunded (late successes and their refunds included), the payment mode and the open charge (confirmed mode: id, attempt, state, pay_by). Every action function returns this row.';

-- milestone_status: the 1.1 columns, then each milestone's latest charge
-- (confirmed mode; NULL when it has none): its id, attempt, state, pay_by.
CREATE OR REPLACE VIEW @extschema@.milestone_status AS
SELECT m.order_id,
       m.position::integer                                  AS position,
       m.name,
       m.days::integer                                      AS days,
       m.amount,
       o.currency,
       m.state,
       m.state <> 'cancelled'
         AND m.position = max(m.position) FILTER (WHERE m.state <> 'cancelled')
                          OVER (PARTITION BY m.order_id)    AS final,
       m.started_at,
       m.due_at,
       m.delivered_at,
       m.respond_by,
       m.completed_at,
       m.deliveries,
       CASE WHEN m.cancel_reason IS NOT NULL THEN m.cancel_reason
            WHEN m.state = 'refunded' THEN o.cancel_reason END AS reason,
       CASE WHEN m.cancel_reason IS NOT NULL THEN m.cancelled_by
            WHEN m.state = 'refunded' THEN o.cancelled_by END  AS agent,
       CASE WHEN m.cancel_reason IS NOT NULL THEN m.cancel_note
            WHEN m.state = 'refunded' THEN o.cancel_note END   AS note,
       ch.charge_id,
       ch.attempts                                          AS charge_attempt,
       ch.state                                             AS charge_state,
       ch.pay_by
  FROM @extschema@.order_milestones m
  JOIN @extschema@.orders o ON o.order_id = m.order_id
  LEFT JOIN LATERAL (
        SELECT c.charge_id, c.attempts, c.state, c.pay_by
          FROM @extschema@.order_charges c
         WHERE c.order_id = m.order_id AND c.position = m.position
         ORDER BY c.charge_id DESC
         LIMIT 1) ch ON true;
COMMENT ON VIEW @extschema@.milestone_status IS
    'One row per milestone: state, whether its delivery is the final one (the last milestone not cancelled), its times and deadlines, for a cancelled or refunded milestone the reason, agent and note of the support cancellation, and (confirmed mode) its latest charge: id, attempt, state, pay_by.';

REVOKE ALL ON @extschema@.charges, @extschema@.refunds FROM PUBLIC;
-- Everyone with a milestones role reads charges (SPEC section 11); refunds
-- are support's, the readers' and the payment worker's (section 12).
GRANT SELECT ON @extschema@.charges TO milestones_app, milestones_support, milestones_reader, milestones_payments;
GRANT SELECT ON @extschema@.refunds TO milestones_support, milestones_reader, milestones_payments;

-------------------------------------------------------------------------------
-- The payment worker's reports and the buyer's retry (in C, src/payments.c).
-------------------------------------------------------------------------------
-- record_charge: the provider's answer to one attempt of a charge.
-- SECURITY DEFINER (the worker's role holds no table privilege); EXECUTE
-- for milestones_payments only, so the web application gets PostgreSQL's
-- own 42501.
CREATE FUNCTION @extschema@.record_charge(charge_id bigint, attempt integer, outcome text,
                                          provider_ref text DEFAULT NULL, failure text DEFAULT NULL)
RETURNS @extschema@.charges
AS 'MODULE_PATHNAME', 'milestones_record_charge'
LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.record_charge(bigint, integer, text, text, text) IS
    'Payment worker: records the provider''s answer (succeeded or failed) to one attempt of a charge; idempotent per (charge, attempt). A success the order still wants starts the milestone; one it no longer wants is booked and refunded. Returns the attempt''s charges row.';
REVOKE ALL ON FUNCTION @extschema@.record_charge(bigint, integer, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.record_charge(bigint, integer, text, text, text) TO milestones_payments;

-- retry_charge: the buyer tries again after a failed attempt.
CREATE FUNCTION @extschema@.retry_charge(order_id bigint, buyer_id bigint, idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status
AS 'MODULE_PATHNAME', 'milestones_retry_charge'
LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.retry_charge(bigint, bigint, text) IS
    'Buyer (confirmed mode): requests a new attempt of the open charge whose last attempt failed; pay_by is unchanged.';
REVOKE ALL ON FUNCTION @extschema@.retry_charge(bigint, bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.retry_charge(bigint, bigint, text) TO milestones_app, milestones_support;

-- record_refund: the provider's answer to a refund.
CREATE FUNCTION @extschema@.record_refund(refund_id bigint, outcome text,
                                          provider_ref text DEFAULT NULL, failure text DEFAULT NULL)
RETURNS @extschema@.refunds
AS 'MODULE_PATHNAME', 'milestones_record_refund'
LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.record_refund(bigint, text, text, text) IS
    'Payment worker: records the provider''s answer (succeeded or failed) to a refund''s current attempt; idempotent. Returns the refunds row.';
REVOKE ALL ON FUNCTION @extschema@.record_refund(bigint, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.record_refund(bigint, text, text, text) TO milestones_payments;

-- retry_refund: support sends a failed refund again.
CREATE FUNCTION @extschema@.retry_refund(refund_id bigint)
RETURNS @extschema@.refunds
AS 'MODULE_PATHNAME', 'milestones_retry_refund'
LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.retry_refund(bigint) IS
    'Support: sends a failed refund to the provider again (a new attempt, event refund_requested). Returns the refunds row.';
REVOKE ALL ON FUNCTION @extschema@.retry_refund(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.retry_refund(bigint) TO milestones_support;

-- The payment worker is a durable consumer (SPEC section 11).
GRANT EXECUTE ON FUNCTION
    @extschema@.register_consumer(text),
    @extschema@.unregister_consumer(text),
    @extschema@.next_batch(text, integer),
    @extschema@.batch_events(bigint, text),
    @extschema@.finish_batch(bigint, text)
    TO milestones_payments;
