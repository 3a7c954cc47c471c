/* sql/milestones--1.0.sql - install script of the milestones extension */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION milestones" to load this file. \quit

-------------------------------------------------------------------------------
-- Roles.  Three NOLOGIN group roles, created when missing; a DBA grants them
-- to login roles.  Roles are cluster-wide, so DROP EXTENSION leaves them.
-------------------------------------------------------------------------------
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'milestones_app') THEN
        CREATE ROLE milestones_app NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'milestones_support') THEN
        CREATE ROLE milestones_support NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'milestones_reader') THEN
        CREATE ROLE milestones_reader NOLOGIN;
    END IF;
END
$roles$;

-- The schema is created by CREATE EXTENSION; applications reach it only
-- through the functions and views granted below.
REVOKE ALL ON SCHEMA @extschema@ FROM PUBLIC;
GRANT USAGE ON SCHEMA @extschema@ TO milestones_app, milestones_support, milestones_reader;

-------------------------------------------------------------------------------
-- Settings: one row, one column per setting, writable by the owner only.
-------------------------------------------------------------------------------
CREATE TABLE @extschema@.settings (
    singleton        boolean PRIMARY KEY DEFAULT true
                     CONSTRAINT settings_one_row CHECK (singleton),
    min_order_total  numeric(12,2) NOT NULL DEFAULT 100.00
                     CONSTRAINT settings_min_order_total_range CHECK (min_order_total >= 0),
    max_milestones   integer NOT NULL DEFAULT 3
                     CONSTRAINT settings_max_milestones_range CHECK (max_milestones BETWEEN 1 AND 20),
    response_window  interval NOT NULL DEFAULT '5 days'
                     CONSTRAINT settings_response_window_range
                     CHECK (response_window > interval '0' AND response_window <= interval '365 days'),
    seller_fee_rate  numeric(6,5) NOT NULL DEFAULT 0
                     CONSTRAINT settings_seller_fee_rate_range CHECK (seller_fee_rate >= 0 AND seller_fee_rate < 1),
    idempotency_ttl  interval NOT NULL DEFAULT '7 days'
                     CONSTRAINT settings_idempotency_ttl_range CHECK (idempotency_ttl >= interval '1 hour'),
    expiry_batch     integer NOT NULL DEFAULT 1000
                     CONSTRAINT settings_expiry_batch_range CHECK (expiry_batch BETWEEN 1 AND 100000),
    notify           boolean NOT NULL DEFAULT true
);
INSERT INTO @extschema@.settings DEFAULT VALUES;
COMMENT ON TABLE @extschema@.settings IS
    'Marketplace settings of the milestones extension: one row, changed by the extension owner with UPDATE.';
COMMENT ON COLUMN @extschema@.settings.min_order_total IS 'An offer''s total must be more than this (R1).';
COMMENT ON COLUMN @extschema@.settings.max_milestones IS 'Most milestones an offer may have (R2).';
COMMENT ON COLUMN @extschema@.settings.response_window IS 'Time a buyer has after each delivery; captured on the delivery (R8).';
COMMENT ON COLUMN @extschema@.settings.seller_fee_rate IS 'Platform fee on payouts, 0 <= rate < 1; captured on the order when offered (R7).';
COMMENT ON COLUMN @extschema@.settings.idempotency_ttl IS 'How long idempotency keys are kept before the sweep purges them.';
COMMENT ON COLUMN @extschema@.settings.expiry_batch IS 'Orders expired per transaction by run_expiry().';
COMMENT ON COLUMN @extschema@.settings.notify IS
    'Send NOTIFY milestones on every state change. PostgreSQL serializes the commits of notifying transactions cluster-wide; an application that reads the events table instead can turn it off.';

-- A restore (pg_dump) re-inserts the settings row on top of the one CREATE
-- EXTENSION made: turn that INSERT into an UPDATE so the dumped values win.
CREATE FUNCTION @extschema@._settings_upsert() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT FROM @extschema@.settings) THEN
        UPDATE @extschema@.settings
           SET min_order_total = NEW.min_order_total,
               max_milestones  = NEW.max_milestones,
               response_window = NEW.response_window,
               seller_fee_rate = NEW.seller_fee_rate,
               idempotency_ttl = NEW.idempotency_ttl,
               expiry_batch    = NEW.expiry_batch,
               notify          = NEW.notify;
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION @extschema@._settings_upsert() IS
    'Trigger: keeps settings at one row; a second INSERT (from a restore) updates it instead.';
CREATE TRIGGER settings_upsert BEFORE INSERT ON @extschema@.settings
    FOR EACH ROW EXECUTE FUNCTION @extschema@._settings_upsert();
CREATE FUNCTION @extschema@._settings_no_delete() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'milestones.settings must keep its one row'
        USING ERRCODE = '23000', HINT = 'Change settings with UPDATE.';
END
$$;
COMMENT ON FUNCTION @extschema@._settings_no_delete() IS 'Trigger: the settings row cannot be deleted.';
CREATE TRIGGER settings_no_delete BEFORE DELETE ON @extschema@.settings
    FOR EACH ROW EXECUTE FUNCTION @extschema@._settings_no_delete();
CREATE TRIGGER settings_no_truncate BEFORE TRUNCATE ON @extschema@.settings
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._settings_no_delete();

-------------------------------------------------------------------------------
-- Eligibility and cancellation reasons (DBA / support maintained).
-------------------------------------------------------------------------------
CREATE TABLE @extschema@.eligible_sellers (
    seller_id  bigint PRIMARY KEY CONSTRAINT eligible_sellers_id_positive CHECK (seller_id > 0),
    eligible   boolean NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE @extschema@.eligible_sellers IS
    'Sellers allowed (or no longer allowed) to offer milestone orders (R12). A seller not listed is not eligible.';

CREATE TABLE @extschema@.eligible_categories (
    category   text PRIMARY KEY
               CONSTRAINT eligible_categories_name_valid
               CHECK (pg_catalog.length(category) BETWEEN 1 AND 100 AND pg_catalog.btrim(category) = category AND category <> ''),
    eligible   boolean NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE @extschema@.eligible_categories IS
    'Categories in which milestone orders are offered (R12). A category not listed is not eligible.';

CREATE TABLE @extschema@.cancellation_reasons (
    code        text PRIMARY KEY
                CONSTRAINT cancellation_reasons_code_valid CHECK (code ~ '^[a-z][a-z0-9_]{0,62}$'),
    description text NOT NULL
                CONSTRAINT cancellation_reasons_description_valid
                CHECK (pg_catalog.length(description) BETWEEN 1 AND 500),
    active      boolean NOT NULL DEFAULT true
);
COMMENT ON TABLE @extschema@.cancellation_reasons IS
    'Valid reasons for a support cancellation (R10). Retired reasons stay (active = false) because cancelled orders refer to them.';
INSERT INTO @extschema@.cancellation_reasons (code, description) VALUES
    ('mutual_agreement',     'Buyer and seller agreed to cancel the order.'),
    ('seller_unresponsive',  'The seller stopped responding or cannot deliver.'),
    ('buyer_unresponsive',   'The buyer stopped responding before placing or during the order.'),
    ('terms_violation',      'One of the parties broke the marketplace terms of service.'),
    ('payment_problem',      'The payment was disputed, reversed or failed verification.'),
    ('duplicate_order',      'The order duplicates another order of the same buyer and seller.');

-- As for settings: a restore re-inserts seeded reasons; update them instead.
CREATE FUNCTION @extschema@._reasons_upsert() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE @extschema@.cancellation_reasons
       SET description = NEW.description, active = NEW.active
     WHERE code OPERATOR(pg_catalog.=) NEW.code;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION @extschema@._reasons_upsert() IS
    'Trigger: an INSERT of an existing reason code (from a restore) updates it instead.';
CREATE TRIGGER cancellation_reasons_upsert BEFORE INSERT ON @extschema@.cancellation_reasons
    FOR EACH ROW EXECUTE FUNCTION @extschema@._reasons_upsert();

-------------------------------------------------------------------------------
-- Orders, milestones, ledger, events, idempotency keys.
-------------------------------------------------------------------------------
CREATE SEQUENCE @extschema@.order_id_seq;
CREATE SEQUENCE @extschema@.ledger_entry_id_seq;
CREATE SEQUENCE @extschema@.ledger_txn_id_seq;
CREATE SEQUENCE @extschema@.event_id_seq;

CREATE TABLE @extschema@.orders (
    order_id          bigint PRIMARY KEY DEFAULT pg_catalog.nextval('@extschema@.order_id_seq'),
    seller_id         bigint NOT NULL CONSTRAINT orders_seller_id_positive CHECK (seller_id > 0),
    buyer_id          bigint NOT NULL CONSTRAINT orders_buyer_id_positive CHECK (buyer_id > 0),
    category          text NOT NULL,
    currency          text NOT NULL CONSTRAINT orders_currency_iso4217 CHECK (currency ~ '^[A-Z]{3}$'),
    state             text NOT NULL DEFAULT 'offered'
                      CONSTRAINT orders_state_valid
                      CHECK (state IN ('offered','active','completed','withdrawn','declined','cancelled')),
    end_reason        text
                      CONSTRAINT orders_end_reason_valid CHECK (end_reason IN ('finished','stopped','expired')),
    cancel_reason     text REFERENCES @extschema@.cancellation_reasons (code),
    cancelled_by      text CONSTRAINT orders_cancelled_by_length CHECK (pg_catalog.length(cancelled_by) BETWEEN 1 AND 200),
    cancel_note       text CONSTRAINT orders_cancel_note_length CHECK (pg_catalog.length(cancel_note) <= 2000),
    revisions_allowed integer CONSTRAINT orders_revisions_allowed_range CHECK (revisions_allowed >= 0),
    revisions_used    integer NOT NULL DEFAULT 0
                      CONSTRAINT orders_revisions_used_range
                      CHECK (revisions_used >= 0 AND (revisions_allowed IS NULL OR revisions_used <= revisions_allowed)),
    fee_rate          numeric(6,5) NOT NULL CONSTRAINT orders_fee_rate_range CHECK (fee_rate >= 0 AND fee_rate < 1),
    created_at        timestamptz NOT NULL,
    placed_at         timestamptz,
    completed_at      timestamptz,
    CONSTRAINT orders_buyer_is_not_seller CHECK (buyer_id <> seller_id),
    CONSTRAINT orders_reason_matches_state CHECK (
        (state = 'completed' AND end_reason IS NOT NULL AND cancel_reason IS NULL) OR
        (state = 'cancelled' AND end_reason IS NULL AND cancel_reason IS NOT NULL AND cancelled_by IS NOT NULL) OR
        (state NOT IN ('completed','cancelled') AND end_reason IS NULL AND cancel_reason IS NULL)),
    CONSTRAINT orders_ended_has_completed_at CHECK (
        (state IN ('offered','active')) = (completed_at IS NULL)),
    CONSTRAINT orders_placed_at_matches_state CHECK (
        (state IN ('active','completed') AND placed_at IS NOT NULL) OR
        (state IN ('offered','withdrawn','declined') AND placed_at IS NULL) OR
        state = 'cancelled'),
    CONSTRAINT orders_times_ordered CHECK (
        placed_at >= created_at AND completed_at >= created_at AND completed_at >= placed_at)
);
COMMENT ON TABLE @extschema@.orders IS
    'Milestone orders: one row per offer, from offered to its end. Changed only through the API; guarded by C triggers.';
COMMENT ON COLUMN @extschema@.orders.end_reason IS 'Why a completed order ended: finished, stopped or expired.';
COMMENT ON COLUMN @extschema@.orders.cancel_reason IS 'The cancellation_reasons code of a support cancellation.';
COMMENT ON COLUMN @extschema@.orders.revisions_allowed IS 'Revisions for the whole order; NULL means unlimited (R11).';
COMMENT ON COLUMN @extschema@.orders.fee_rate IS 'Seller fee rate captured from settings when the offer was made (R7).';
CREATE INDEX orders_seller_idx ON @extschema@.orders (seller_id);
CREATE INDEX orders_buyer_idx ON @extschema@.orders (buyer_id);
CREATE INDEX orders_running_idx ON @extschema@.orders (state) WHERE state IN ('offered','active');

CREATE TABLE @extschema@.order_milestones (
    order_id     bigint NOT NULL REFERENCES @extschema@.orders (order_id),
    position     smallint NOT NULL CONSTRAINT milestones_position_range CHECK (position BETWEEN 1 AND 20),
    name         text NOT NULL
                 CONSTRAINT milestones_name_valid
                 CHECK (pg_catalog.length(name) BETWEEN 1 AND 200 AND name OPERATOR(pg_catalog.~) '[^[:space:]]'),
    days         smallint NOT NULL CONSTRAINT milestones_days_range CHECK (days BETWEEN 1 AND 365),
    amount       numeric(12,2) NOT NULL CONSTRAINT milestones_amount_positive CHECK (amount > 0),
    final        boolean NOT NULL,
    state        text NOT NULL DEFAULT 'pending'
                 CONSTRAINT milestones_state_valid
                 CHECK (state IN ('pending','in_progress','delivered','completed','skipped','refunded')),
    started_at   timestamptz,
    due_at       timestamptz,
    delivered_at timestamptz,
    respond_by   timestamptz,
    completed_at timestamptz,
    deliveries   integer NOT NULL DEFAULT 0 CONSTRAINT milestones_deliveries_range CHECK (deliveries >= 0),
    delivery_note text CONSTRAINT milestones_delivery_note_length CHECK (pg_catalog.length(delivery_note) <= 2000),
    PRIMARY KEY (order_id, position),
    CONSTRAINT milestones_started_has_times CHECK (
        (state IN ('pending','skipped')) = (started_at IS NULL AND due_at IS NULL)),
    CONSTRAINT milestones_delivered_has_deadline CHECK (
        state <> 'delivered' OR (delivered_at IS NOT NULL AND respond_by IS NOT NULL AND respond_by > delivered_at)),
    CONSTRAINT milestones_in_progress_has_no_deadline CHECK (state <> 'in_progress' OR respond_by IS NULL),
    CONSTRAINT milestones_completed_was_delivered CHECK (
        state <> 'completed' OR (delivered_at IS NOT NULL AND completed_at IS NOT NULL AND deliveries > 0)),
    CONSTRAINT milestones_completed_at_matches_state CHECK ((state = 'completed') = (completed_at IS NOT NULL))
);
COMMENT ON TABLE @extschema@.order_milestones IS
    'The 1..max_milestones paid steps of each order, in position order. Guarded by C triggers.';
COMMENT ON COLUMN @extschema@.order_milestones.final IS 'True for the last milestone: its delivery is the final delivery of the project (R5).';
COMMENT ON COLUMN @extschema@.order_milestones.respond_by IS 'Deadline of the buyer''s answer to the current delivery (R8).';
COMMENT ON COLUMN @extschema@.order_milestones.deliveries IS 'How many times this milestone was delivered (revisions add more).';
-- The expiry sweep's work list: cost grows with overdue deliveries only.
CREATE INDEX order_milestones_awaiting_idx ON @extschema@.order_milestones (respond_by)
    WHERE state = 'delivered';

CREATE TABLE @extschema@.ledger_entries (
    entry_id   bigint PRIMARY KEY DEFAULT pg_catalog.nextval('@extschema@.ledger_entry_id_seq'),
    txn_id     bigint NOT NULL,
    order_id   bigint NOT NULL REFERENCES @extschema@.orders (order_id),
    position   smallint,
    kind       text NOT NULL CONSTRAINT ledger_kind_valid CHECK (kind IN ('charge','payout','refund')),
    account    text NOT NULL CONSTRAINT ledger_account_valid CHECK (account IN ('buyer','escrow','seller','platform')),
    amount     numeric(14,2) NOT NULL CONSTRAINT ledger_amount_nonzero CHECK (amount <> 0),
    currency   text NOT NULL CONSTRAINT ledger_currency_iso4217 CHECK (currency ~ '^[A-Z]{3}$'),
    created_at timestamptz NOT NULL,
    CONSTRAINT ledger_position_matches_kind CHECK ((kind = 'payout') = (position IS NULL))
);
COMMENT ON TABLE @extschema@.ledger_entries IS
    'Double-entry ledger: each txn_id is one balanced transaction (its amounts sum to zero); positive credits the account, negative debits it. Append-only.';
CREATE INDEX ledger_entries_order_idx ON @extschema@.ledger_entries (order_id);
CREATE INDEX ledger_entries_txn_idx ON @extschema@.ledger_entries (txn_id);
-- At most one payout per order (SPEC 6.4): the escrow leg of a payout.
CREATE UNIQUE INDEX ledger_entries_one_payout_idx ON @extschema@.ledger_entries (order_id)
    WHERE kind = 'payout' AND account = 'escrow';

CREATE TABLE @extschema@.events (
    event_id        bigint PRIMARY KEY DEFAULT pg_catalog.nextval('@extschema@.event_id_seq'),
    order_id        bigint NOT NULL REFERENCES @extschema@.orders (order_id),
    position        smallint,
    event           text NOT NULL,
    actor_role      text NOT NULL CONSTRAINT events_actor_role_valid
                    CHECK (actor_role IN ('seller','buyer','support','system')),
    actor_id        bigint,
    agent           text,
    order_state     text NOT NULL,
    milestone_state text,
    detail          jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
COMMENT ON TABLE @extschema@.events IS
    'Append-only history of every state change: who, what, when (created_at on the extension clock, recorded_at on the wall clock).';
CREATE INDEX events_order_idx ON @extschema@.events (order_id);

CREATE TABLE @extschema@.idempotency_keys (
    key        text PRIMARY KEY CONSTRAINT idempotency_keys_length CHECK (pg_catalog.length(key) BETWEEN 1 AND 255),
    function   text NOT NULL,
    arguments  jsonb NOT NULL,
    result     jsonb,
    created_at timestamptz NOT NULL
);
COMMENT ON TABLE @extschema@.idempotency_keys IS
    'Retries: the first result of each call made with an idempotency key; purged after settings.idempotency_ttl by the sweep.';
CREATE INDEX idempotency_keys_created_idx ON @extschema@.idempotency_keys (created_at);

-------------------------------------------------------------------------------
-- C functions: the clock, payout arithmetic and the transition guard.
-------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.now() RETURNS timestamptz
    AS 'MODULE_PATHNAME', 'milestones_now' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.now() IS
    'The extension''s clock: the transaction timestamp, or milestones.fake_now when a superuser set it.';

CREATE FUNCTION @extschema@._fee(gross numeric, rate numeric) RETURNS numeric
    AS 'MODULE_PATHNAME', 'milestones_fee' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._fee(numeric, numeric) IS
    'Seller fee on a gross amount: gross * rate rounded half-up to cents.';

-- SECURITY DEFINER: reads orders and milestones, which callers cannot read.
CREATE FUNCTION @extschema@.payout(order_id bigint,
                                   OUT gross numeric, OUT fee numeric, OUT net numeric, OUT currency text)
    AS 'MODULE_PATHNAME', 'milestones_payout' LANGUAGE C STABLE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.payout(bigint) IS
    'What the seller earns from the order''s completed milestones: gross, fee (half-up to cents), net, currency. For a running order, what it has earned so far.';

CREATE FUNCTION @extschema@._guard_order() RETURNS trigger
    AS 'MODULE_PATHNAME', 'milestones_guard_order' LANGUAGE C;
COMMENT ON FUNCTION @extschema@._guard_order() IS
    'Trigger: allowed order state transitions, immutable columns, no DELETE/TRUNCATE.';
CREATE FUNCTION @extschema@._guard_milestone() RETURNS trigger
    AS 'MODULE_PATHNAME', 'milestones_guard_milestone' LANGUAGE C;
COMMENT ON FUNCTION @extschema@._guard_milestone() IS
    'Trigger: allowed milestone state transitions, immutable columns, no DELETE/TRUNCATE.';
CREATE FUNCTION @extschema@._guard_ledger() RETURNS trigger
    AS 'MODULE_PATHNAME', 'milestones_guard_ledger' LANGUAGE C;
COMMENT ON FUNCTION @extschema@._guard_ledger() IS
    'Trigger: the ledger is append-only; new entries get their order''s money checked at commit.';
CREATE FUNCTION @extschema@._guard_append_only() RETURNS trigger
    AS 'MODULE_PATHNAME', 'milestones_guard_append_only' LANGUAGE C;
COMMENT ON FUNCTION @extschema@._guard_append_only() IS
    'Trigger: refuses UPDATE, DELETE and TRUNCATE of a history table.';
-- The deferred check fires at COMMIT, outside the API's SECURITY DEFINER
-- functions, as the calling role, which may not execute _order_problems nor
-- read the tables: the C code switches to this function's owner (the
-- extension owner) for the check itself, and runs only schema-qualified SQL.
CREATE FUNCTION @extschema@._check_order() RETURNS trigger
    AS 'MODULE_PATHNAME', 'milestones_check_order' LANGUAGE C;
COMMENT ON FUNCTION @extschema@._check_order() IS
    'Deferred constraint trigger: at commit, checks each touched order with _order_problems().';

CREATE TRIGGER orders_guard BEFORE INSERT OR UPDATE OR DELETE ON @extschema@.orders
    FOR EACH ROW EXECUTE FUNCTION @extschema@._guard_order();
CREATE TRIGGER orders_guard_truncate BEFORE TRUNCATE ON @extschema@.orders
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._guard_order();
CREATE CONSTRAINT TRIGGER orders_check AFTER INSERT OR UPDATE ON @extschema@.orders
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION @extschema@._check_order();

CREATE TRIGGER order_milestones_guard BEFORE INSERT OR UPDATE OR DELETE ON @extschema@.order_milestones
    FOR EACH ROW EXECUTE FUNCTION @extschema@._guard_milestone();
CREATE TRIGGER order_milestones_guard_truncate BEFORE TRUNCATE ON @extschema@.order_milestones
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._guard_milestone();
CREATE CONSTRAINT TRIGGER order_milestones_check AFTER INSERT OR UPDATE ON @extschema@.order_milestones
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION @extschema@._check_order();

CREATE TRIGGER ledger_entries_guard BEFORE INSERT OR UPDATE OR DELETE ON @extschema@.ledger_entries
    FOR EACH ROW EXECUTE FUNCTION @extschema@._guard_ledger();
CREATE TRIGGER ledger_entries_guard_truncate BEFORE TRUNCATE ON @extschema@.ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._guard_ledger();
CREATE CONSTRAINT TRIGGER ledger_entries_check AFTER INSERT ON @extschema@.ledger_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION @extschema@._check_order();

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON @extschema@.events
    FOR EACH ROW EXECUTE FUNCTION @extschema@._guard_append_only();
CREATE TRIGGER events_append_only_truncate BEFORE TRUNCATE ON @extschema@.events
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._guard_append_only();

-------------------------------------------------------------------------------
-- Views for DBAs and applications.
-------------------------------------------------------------------------------
CREATE VIEW @extschema@.order_status AS
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
       cur.final                                           AS final_milestone
  FROM @extschema@.orders o
  CROSS JOIN LATERAL (
        SELECT count(*)::integer AS milestone_count, COALESCE(sum(m.amount), 0)::numeric(14,2) AS total
          FROM @extschema@.order_milestones m
         WHERE m.order_id = o.order_id) agg
  LEFT JOIN LATERAL (
        SELECT m.position, m.state, m.due_at, m.respond_by, m.name, m.final
          FROM @extschema@.order_milestones m
         WHERE m.order_id = o.order_id
         ORDER BY CASE WHEN m.state IN ('in_progress','delivered') THEN 0
                       WHEN m.state IN ('completed','refunded') THEN 1 ELSE 2 END,
                  CASE WHEN m.state IN ('completed','refunded') THEN -m.position ELSE m.position END
         LIMIT 1) cur ON true
  CROSS JOIN LATERAL (
        SELECT COALESCE(sum(l.amount) FILTER (WHERE l.kind = 'charge' AND l.account = 'escrow'), 0)::numeric(14,2)   AS charged,
               COALESCE(-sum(l.amount) FILTER (WHERE l.kind = 'payout' AND l.account = 'escrow'), 0)::numeric(14,2)  AS paid_out,
               COALESCE(sum(l.amount) FILTER (WHERE l.kind = 'refund' AND l.account = 'buyer'), 0)::numeric(14,2)    AS refunded,
               COALESCE(sum(l.amount) FILTER (WHERE l.kind = 'payout' AND l.account = 'platform'), 0)::numeric(14,2) AS fee,
               COALESCE(sum(l.amount) FILTER (WHERE l.kind = 'payout' AND l.account = 'seller'), 0)::numeric(14,2)   AS net
          FROM @extschema@.ledger_entries l
         WHERE l.order_id = o.order_id) money;
COMMENT ON VIEW @extschema@.order_status IS
    'One row per order: state, reason, the current milestone and its deadlines, revisions left (NULL = unlimited), and money charged, paid out and refunded. Every action function returns this row.';

CREATE VIEW @extschema@.awaiting_response AS
SELECT m.order_id,
       m.position                                  AS milestone,
       m.name                                      AS milestone_name,
       m.final                                     AS final_delivery,
       o.buyer_id,
       o.seller_id,
       m.delivered_at,
       m.respond_by,
       m.respond_by <= @extschema@.now()           AS overdue,
       m.respond_by - @extschema@.now()            AS time_left,
       m.deliveries,
       m.amount,
       o.currency
  FROM @extschema@.order_milestones m
  JOIN @extschema@.orders o USING (order_id)
 WHERE m.state = 'delivered'
 ORDER BY (m.respond_by <= @extschema@.now()) DESC, m.respond_by, m.order_id;
COMMENT ON VIEW @extschema@.awaiting_response IS
    'Deliveries waiting for the buyer, with their deadline; overdue ones (which the expiry sweep will complete) first.';

CREATE VIEW @extschema@.payouts AS
SELECT l.order_id,
       o.seller_id,
       -sum(l.amount) FILTER (WHERE l.account = 'escrow')                      AS gross,
       COALESCE(sum(l.amount) FILTER (WHERE l.account = 'platform'), 0)::numeric(14,2) AS fee,
       COALESCE(sum(l.amount) FILTER (WHERE l.account = 'seller'), 0)::numeric(14,2)   AS net,
       l.currency,
       o.state,
       COALESCE(o.end_reason, o.cancel_reason)                                 AS reason,
       min(l.created_at)                                                       AS paid_at,
       l.txn_id
  FROM @extschema@.ledger_entries l
  JOIN @extschema@.orders o USING (order_id)
 WHERE l.kind = 'payout'
 GROUP BY l.txn_id, l.order_id, o.seller_id, l.currency, o.state, o.end_reason, o.cancel_reason;
COMMENT ON VIEW @extschema@.payouts IS
    'One row per payout (at most one per order, recorded when the order ends): gross, platform fee and the seller''s net.';

CREATE VIEW @extschema@.ledger AS
SELECT l.txn_id,
       l.entry_id,
       l.order_id,
       l.position                                   AS milestone,
       l.kind,
       l.account,
       CASE l.account WHEN 'buyer'  THEN o.buyer_id
                      WHEN 'seller' THEN o.seller_id
                      WHEN 'escrow' THEN o.order_id END AS party_id,
       CASE WHEN l.amount < 0 THEN -l.amount END    AS debit,
       CASE WHEN l.amount > 0 THEN l.amount END     AS credit,
       l.amount,
       l.currency,
       l.created_at
  FROM @extschema@.ledger_entries l
  JOIN @extschema@.orders o USING (order_id);
COMMENT ON VIEW @extschema@.ledger IS
    'The ledger as double-entry lines: each transaction debits one account and credits others by the same total. party_id is the buyer, seller or order (escrow) the account belongs to.';

-------------------------------------------------------------------------------
-- Internal helpers.  Every one pins search_path; none is granted to anyone:
-- they run inside the SECURITY DEFINER API functions as the owner.
-------------------------------------------------------------------------------

-- _not_null refuses a NULL argument: the API is not STRICT, because a silent
-- NULL result would hide an application's bug.
CREATE FUNCTION @extschema@._not_null(value anyelement, argument text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', argument
            USING ERRCODE = '22023',
                  DETAIL = format('The argument %s was NULL.', argument),
                  HINT = 'Pass a value; the milestones API never treats NULL as "nothing to do".';
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@._not_null(anyelement, text) IS 'Raises 22023 when a required argument is NULL.';

-- _check_id refuses NULL and non-positive user ids.  Like _check_text, the
-- API calls it only when an inline test has found a bad value: a helper
-- call costs an executor run and a search_path save and restore.
CREATE FUNCTION @extschema@._check_id(value bigint, argument text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@._not_null(value, argument);
    IF value <= 0 THEN
        RAISE EXCEPTION '% must be a positive id', argument
            USING ERRCODE = '22023', DETAIL = format('%s was %s.', argument, value);
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@._check_id(bigint, text) IS 'Raises 22023 unless the id is a positive bigint.';

-- _check_text refuses over-long free text (notes, agents).
CREATE FUNCTION @extschema@._check_text(value text, argument text, max_length integer, required boolean)
RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF required THEN
        PERFORM @extschema@._not_null(value, argument);
        -- blank: no character but white space (tabs and newlines too)
        IF value !~ '[^[:space:]]' THEN
            RAISE EXCEPTION '% must not be blank', argument
                USING ERRCODE = '22023', DETAIL = format('%s holds only white space.', argument);
        END IF;
    END IF;
    IF length(value) > max_length THEN
        RAISE EXCEPTION '% is too long', argument
            USING ERRCODE = '22023',
                  DETAIL = format('%s has %s characters; at most %s are allowed.', argument, length(value), max_length);
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@._check_text(text, text, integer, boolean) IS 'Raises 22023 for missing, blank or over-long text.';

-- _idem_claim starts an idempotent call.  It returns NULL when the caller
-- must do the work (no key, or a new key now reserved by this transaction),
-- or the first call's stored result.  A racing repeat blocks on the key's
-- unique index until the first call commits, then reads its result.
CREATE FUNCTION @extschema@._idem_claim(p_key text, p_function text, p_arguments jsonb) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k @extschema@.idempotency_keys;
BEGIN
    IF p_key IS NULL THEN
        RETURN NULL;
    END IF;
    IF length(p_key) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'idempotency_key must have 1 to 255 characters'
            USING ERRCODE = '22023', DETAIL = format('The key has %s characters.', length(p_key));
    END IF;
    INSERT INTO @extschema@.idempotency_keys (key, function, arguments, created_at)
    VALUES (p_key, p_function, p_arguments, @extschema@.now())
    ON CONFLICT (key) DO NOTHING;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    SELECT * INTO k FROM @extschema@.idempotency_keys WHERE key = p_key;
    IF k.function <> p_function OR k.arguments <> p_arguments THEN
        RAISE EXCEPTION 'idempotency key % was used for another call', quote_literal(p_key)
            USING ERRCODE = '22023',
                  DETAIL = format('The key was first used for %s(%s); this call is %s(%s).',
                                  k.function, k.arguments, p_function, p_arguments),
                  HINT = 'Use a new key for every distinct call; reuse a key only to retry the same call.';
    END IF;
    RETURN k.result;
END
$$;
COMMENT ON FUNCTION @extschema@._idem_claim(text, text, jsonb) IS
    'Retries: reserves a new idempotency key, or returns the stored result of the first call with it (22023 if its arguments differ).';

CREATE FUNCTION @extschema@._idem_store(p_key text, p_result jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_key IS NOT NULL THEN
        UPDATE @extschema@.idempotency_keys SET result = p_result WHERE key = p_key;
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@._idem_store(text, jsonb) IS 'Retries: records the result of the call that reserved the key.';

-- _status is the row every action returns.  PL/pgSQL rather than SQL so
-- that its plan is cached for the session instead of made at every call.
CREATE FUNCTION @extschema@._status(p_order_id bigint) RETURNS @extschema@.order_status
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    r @extschema@.order_status;
BEGIN
    SELECT * INTO r FROM @extschema@.order_status s WHERE s.order_id = p_order_id;
    RETURN r;
END
$$;
COMMENT ON FUNCTION @extschema@._status(bigint) IS 'The order_status row of one order.';

-- _lock_order takes the order's row lock (every action's first step, so
-- that concurrent calls on one order serialize) and checks the actor.
CREATE FUNCTION @extschema@._lock_order(p_order_id bigint, p_actor_id bigint, p_role text)
RETURNS @extschema@.orders
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o @extschema@.orders;
BEGIN
    SELECT * INTO o FROM @extschema@.orders WHERE order_id = p_order_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'order % does not exist', p_order_id
            USING ERRCODE = 'P0002', DETAIL = format('No milestone order has id %s.', p_order_id);
    END IF;
    IF (p_role = 'seller' AND o.seller_id <> p_actor_id) OR (p_role = 'buyer' AND o.buyer_id <> p_actor_id) THEN
        RAISE EXCEPTION 'user % is not the % of order %', p_actor_id, p_role, p_order_id
            USING ERRCODE = '42501',
                  DETAIL = format('Only the order''s %s may do this; user %s is %s.', p_role, p_actor_id,
                                  CASE WHEN p_actor_id = o.buyer_id THEN 'its buyer'
                                       WHEN p_actor_id = o.seller_id THEN 'its seller'
                                       ELSE 'not a party to it' END);
    END IF;
    RETURN o;
END
$$;
COMMENT ON FUNCTION @extschema@._lock_order(bigint, bigint, text) IS
    'Locks an order row FOR UPDATE; P0002 when unknown, 42501 when the actor is not its buyer/seller.';

-- _state_error raises the 55000 of an action refused in the order's state.
CREATE FUNCTION @extschema@._state_error(o @extschema@.orders, p_action text, p_needs text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION '% is not allowed: order % is %', p_action, o.order_id,
                    o.state || COALESCE(' (' || COALESCE(o.end_reason, o.cancel_reason) || ')', '')
        USING ERRCODE = '55000',
              DETAIL = format('%s needs %s; order %s is %s.', p_action, p_needs, o.order_id, o.state),
              HINT = CASE WHEN o.state IN ('completed','withdrawn','declined','cancelled')
                          THEN 'An ended order never changes again.'
                          WHEN o.state = 'offered' THEN 'The buyer places the order first.'
                          ELSE 'The order is running; see milestones.order_status for its current milestone.' END;
END
$$;
COMMENT ON FUNCTION @extschema@._state_error(@extschema@.orders, text, text) IS 'Raises 55000 naming the order''s current state.';

-- _current_milestone returns the milestone in progress or delivered.
CREATE FUNCTION @extschema@._current_milestone(p_order_id bigint) RETURNS @extschema@.order_milestones
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m @extschema@.order_milestones;
BEGIN
    SELECT * INTO m FROM @extschema@.order_milestones x
     WHERE x.order_id = p_order_id AND x.state IN ('in_progress','delivered');
    RETURN m;
END
$$;
COMMENT ON FUNCTION @extschema@._current_milestone(bigint) IS 'The milestone of an order that is in progress or delivered, if any.';

-- _open_delivery returns the delivered milestone a buyer answers, refusing
-- (55000) when there is none or its response window has closed.
CREATE FUNCTION @extschema@._open_delivery(o @extschema@.orders, p_action text) RETURNS @extschema@.order_milestones
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m @extschema@.order_milestones;
BEGIN
    IF o.state <> 'active' THEN
        PERFORM @extschema@._state_error(o, p_action, 'an active order with a delivered milestone');
    END IF;
    m := @extschema@._current_milestone(o.order_id);
    IF m.state IS DISTINCT FROM 'delivered' THEN
        RAISE EXCEPTION '% is not allowed: milestone % of order % is %', p_action, m.position, o.order_id, m.state
            USING ERRCODE = '55000',
                  DETAIL = format('%s needs a delivered milestone; milestone %s (%s) is %s.',
                                  p_action, m.position, m.name, m.state),
                  HINT = 'The buyer answers after the seller delivers.';
    END IF;
    IF @extschema@.now() >= m.respond_by THEN
        RAISE EXCEPTION '% is not allowed: the response window of order % has closed', p_action, o.order_id
            USING ERRCODE = '55000',
                  DETAIL = format('Milestone %s was delivered at %s; the buyer had until %s to respond.',
                                  m.position, m.delivered_at, m.respond_by),
                  HINT = 'The order will be completed as expired and the delivered milestone paid to the seller.';
    END IF;
    RETURN m;
END
$$;
COMMENT ON FUNCTION @extschema@._open_delivery(@extschema@.orders, text) IS
    'The delivered milestone a buyer may still answer; 55000 when none or its window has closed.';

-- _event appends to the events table and notifies listeners at commit.
CREATE FUNCTION @extschema@._event(o @extschema@.orders, p_position smallint, p_event text,
                                    p_actor_role text, p_actor_id bigint, p_agent text, p_detail jsonb)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_order_state text;
    v_ms_state text;
    v_notify boolean;
    v_at timestamptz := @extschema@.now();
    v_id bigint;
BEGIN
    -- The states after the change, and whether to notify, in one read.
    SELECT x.state, m.state, s.notify INTO v_order_state, v_ms_state, v_notify
      FROM @extschema@.orders x
      CROSS JOIN @extschema@.settings s
      LEFT JOIN @extschema@.order_milestones m ON m.order_id = x.order_id AND m.position = p_position
     WHERE x.order_id = o.order_id;
    INSERT INTO @extschema@.events (order_id, position, event, actor_role, actor_id, agent,
                                    order_state, milestone_state, detail, created_at)
    VALUES (o.order_id, p_position, p_event, p_actor_role, p_actor_id, p_agent,
            v_order_state, v_ms_state, COALESCE(p_detail, '{}'), v_at)
    RETURNING event_id INTO v_id;
    IF NOT v_notify THEN
        RETURN;
    END IF;
    PERFORM pg_notify('milestones', (jsonb_build_object(
        'event_id', v_id, 'order_id', o.order_id, 'event', p_event,
        'order_state', v_order_state, 'milestone', p_position, 'milestone_state', v_ms_state,
        'actor_role', p_actor_role, 'actor_id', p_actor_id,
        'seller_id', o.seller_id, 'buyer_id', o.buyer_id, 'currency', o.currency,
        'at', v_at) || COALESCE(p_detail, '{}'))::text);
END
$$;
COMMENT ON FUNCTION @extschema@._event(@extschema@.orders, smallint, text, text, bigint, text, jsonb) IS
    'Appends an event and sends NOTIFY milestones with a JSON payload (delivered at commit).';

-- _post writes one balanced ledger transaction; legs are (account, amount).
CREATE FUNCTION @extschema@._post(o @extschema@.orders, p_position smallint, p_kind text,
                                   p_accounts text[], p_amounts numeric[]) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_txn bigint := nextval('@extschema@.ledger_txn_id_seq');
BEGIN
    INSERT INTO @extschema@.ledger_entries (txn_id, order_id, position, kind, account, amount, currency, created_at)
    SELECT v_txn, o.order_id, p_position, p_kind, a.account, a.amount, o.currency, @extschema@.now()
      FROM unnest(p_accounts, p_amounts) AS a(account, amount)
     WHERE a.amount <> 0;
    RETURN v_txn;
END
$$;
COMMENT ON FUNCTION @extschema@._post(@extschema@.orders, smallint, text, text[], numeric[]) IS
    'Writes one ledger transaction (zero legs omitted); the deferred guard checks it balances.';

-- _start starts milestone p_position and charges the buyer for it (R3, R4).
CREATE FUNCTION @extschema@._start(o @extschema@.orders, p_position smallint) RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_now timestamptz := @extschema@.now();
    m @extschema@.order_milestones;
BEGIN
    UPDATE @extschema@.order_milestones
       SET state = 'in_progress', started_at = v_now, due_at = ((v_now AT TIME ZONE 'UTC') + make_interval(days => days)) AT TIME ZONE 'UTC'
     WHERE order_id = o.order_id AND position = p_position
    RETURNING * INTO m;
    PERFORM @extschema@._post(o, p_position, 'charge', ARRAY['buyer','escrow'], ARRAY[-m.amount, m.amount]);
    RETURN m.amount;
END
$$;
COMMENT ON FUNCTION @extschema@._start(@extschema@.orders, smallint) IS 'Starts a milestone and charges the buyer for it.';

-- _settle records the payout of an ended order (R7): escrow pays the seller
-- the net and the platform the fee.  Nothing is posted for a zero gross.
CREATE FUNCTION @extschema@._settle(o @extschema@.orders) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p record;
BEGIN
    SELECT * INTO p FROM @extschema@.payout(o.order_id);
    IF p.gross > 0 THEN
        PERFORM @extschema@._post(o, NULL, 'payout', ARRAY['escrow','seller','platform'],
                                  ARRAY[-p.gross, p.net, p.fee]);
    END IF;
    RETURN jsonb_build_object('gross', p.gross, 'fee', p.fee, 'net', p.net);
END
$$;
COMMENT ON FUNCTION @extschema@._settle(@extschema@.orders) IS 'Records the one payout of an ended order.';

-- _complete ends an active order whose current milestone is delivered:
-- that milestone completes, later ones are skipped, the seller is paid.
-- accept (of the last milestone), stop and the expiry sweep all end here.
CREATE FUNCTION @extschema@._complete(o @extschema@.orders, p_position smallint, p_reason text,
                                       p_at timestamptz) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_skipped integer;
BEGIN
    UPDATE @extschema@.order_milestones SET state = 'completed', completed_at = p_at
     WHERE order_id = o.order_id AND position = p_position;
    UPDATE @extschema@.order_milestones SET state = 'skipped'
     WHERE order_id = o.order_id AND state = 'pending';
    GET DIAGNOSTICS v_skipped = ROW_COUNT;
    UPDATE @extschema@.orders SET state = 'completed', end_reason = p_reason, completed_at = p_at
     WHERE order_id = o.order_id;
    RETURN jsonb_build_object('skipped', v_skipped, 'payout', @extschema@._settle(o));
END
$$;
COMMENT ON FUNCTION @extschema@._complete(@extschema@.orders, smallint, text, timestamptz) IS
    'Completes an order (finished, stopped or expired) and records its payout.';

-------------------------------------------------------------------------------
-- The API.  Every function is SECURITY DEFINER because callers hold no
-- privilege on the tables: the function is the only way to change an order,
-- so the rules cannot be skipped.  search_path is pinned so that a caller's
-- schemas cannot replace the functions and operators they use.
-------------------------------------------------------------------------------

-- create_offer: a seller's custom offer with 1..max_milestones milestones (R1, R2, R12).
CREATE FUNCTION @extschema@.create_offer(seller_id bigint, buyer_id bigint, category text, milestones jsonb,
                                          revisions integer DEFAULT 0, currency text DEFAULT 'USD',
                                          idempotency_key text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s @extschema@.settings;
    n integer;
    i integer;
    e jsonb;
    v_name text;
    v_days numeric;
    v_amount numeric;
    v_raw text;
    v_total numeric := 0;
    v_names text[] := '{}';
    v_days_list smallint[] := '{}';
    v_amounts numeric[] := '{}';
    v_bad text;
    v_prev jsonb;
    v_order_id bigint;
    o @extschema@.orders;
BEGIN
    IF create_offer.seller_id IS NULL OR create_offer.seller_id <= 0 THEN PERFORM @extschema@._check_id(create_offer.seller_id, 'seller_id'); END IF;
    IF create_offer.buyer_id IS NULL OR create_offer.buyer_id <= 0 THEN PERFORM @extschema@._check_id(create_offer.buyer_id, 'buyer_id'); END IF;
    PERFORM @extschema@._check_text(create_offer.category, 'category', 100, true);
    PERFORM @extschema@._not_null(create_offer.milestones, 'milestones');
    PERFORM @extschema@._not_null(create_offer.currency, 'currency');
    IF create_offer.buyer_id = create_offer.seller_id THEN
        RAISE EXCEPTION 'buyer and seller must be different users'
            USING ERRCODE = '22023', DETAIL = format('Both are user %s.', create_offer.seller_id);
    END IF;
    IF create_offer.currency !~ '^[A-Z]{3}$' THEN
        RAISE EXCEPTION 'currency must be an ISO 4217 code'
            USING ERRCODE = '22023', DETAIL = format('Got %s.', quote_literal(left(create_offer.currency, 20))),
                  HINT = 'Use three capital letters, such as USD or EUR.';
    END IF;
    IF create_offer.revisions < 0 THEN
        RAISE EXCEPTION 'revisions must be 0 or more, or NULL for unlimited'
            USING ERRCODE = '22023', DETAIL = format('Got %s.', create_offer.revisions);
    END IF;

    -- A retry returns the first result even if settings changed since.
    v_prev := CASE WHEN create_offer.idempotency_key IS NOT NULL THEN @extschema@._idem_claim(create_offer.idempotency_key, 'create_offer',
        jsonb_build_object('seller_id', create_offer.seller_id, 'buyer_id', create_offer.buyer_id,
                           'category', create_offer.category, 'milestones', create_offer.milestones,
                           'revisions', create_offer.revisions, 'currency', create_offer.currency)) END;
    IF v_prev IS NOT NULL THEN
        RETURN v_prev::bigint;
    END IF;

    SELECT * INTO s FROM @extschema@.settings;
    IF jsonb_typeof(create_offer.milestones) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'milestones must be a JSON array'
            USING ERRCODE = '22023', DETAIL = format('Got a JSON %s.', jsonb_typeof(create_offer.milestones)),
                  HINT = 'Send [{"name": "Wireframes", "days": 5, "amount": "150.00"}, ...].';
    END IF;
    n := jsonb_array_length(create_offer.milestones);
    IF n < 1 OR n > s.max_milestones THEN
        RAISE EXCEPTION 'an offer needs 1 to % milestones', s.max_milestones
            USING ERRCODE = '22023', DETAIL = format('Got %s milestones.', n);
    END IF;

    FOR i IN 1..n LOOP
        e := create_offer.milestones -> (i - 1);
        IF jsonb_typeof(e) IS DISTINCT FROM 'object' THEN
            RAISE EXCEPTION 'milestone % must be a JSON object', i
                USING ERRCODE = '22023', DETAIL = format('Got a JSON %s.', jsonb_typeof(e));
        END IF;
        SELECT string_agg(k, ', ') INTO v_bad FROM jsonb_object_keys(e) AS k WHERE k NOT IN ('name','days','amount');
        IF v_bad IS NOT NULL THEN
            RAISE EXCEPTION 'milestone % has unknown keys', i
                USING ERRCODE = '22023', DETAIL = format('Unknown: %s.', left(v_bad, 200)),
                      HINT = 'Each milestone has exactly name, days and amount.';
        END IF;
        -- name: 1..200 characters, not blank
        IF jsonb_typeof(e -> 'name') IS DISTINCT FROM 'string' THEN
            RAISE EXCEPTION 'milestone % needs a name (a JSON string)', i
                USING ERRCODE = '22023', DETAIL = format('Its name is a JSON %s.', COALESCE(jsonb_typeof(e -> 'name'), 'absence')),
                      HINT = 'Each milestone is {"name": "...", "days": N, "amount": "0.00"}.';
        END IF;
        v_name := e ->> 'name';
        IF v_name !~ '[^[:space:]]' OR length(v_name) > 200 THEN
            RAISE EXCEPTION 'milestone % name must have 1 to 200 characters and not be blank', i
                USING ERRCODE = '22023', DETAIL = format('The name has %s characters.', length(v_name));
        END IF;
        -- days: a whole number 1..365
        IF jsonb_typeof(e -> 'days') IS DISTINCT FROM 'number' THEN
            RAISE EXCEPTION 'milestone % needs days (a JSON number)', i
                USING ERRCODE = '22023', DETAIL = format('Its days is a JSON %s.', COALESCE(jsonb_typeof(e -> 'days'), 'absence')),
                      HINT = 'Each milestone is {"name": "...", "days": N, "amount": "0.00"}.';
        END IF;
        v_days := (e -> 'days')::numeric;
        IF v_days <> trunc(v_days) OR v_days < 1 OR v_days > 365 THEN
            RAISE EXCEPTION 'milestone % days must be a whole number from 1 to 365', i
                USING ERRCODE = '22023', DETAIL = format('Got %s.', left(v_days::text, 40));
        END IF;
        -- amount: > 0, at most 2 decimals, never rounded
        IF jsonb_typeof(e -> 'amount') = 'number' THEN
            v_amount := (e -> 'amount')::numeric;
        ELSIF jsonb_typeof(e -> 'amount') = 'string' THEN
            v_raw := e ->> 'amount';
            IF v_raw !~ '^-?[0-9]{1,20}(\.[0-9]{1,20})?$' THEN
                RAISE EXCEPTION 'milestone % amount must be a decimal number', i
                    USING ERRCODE = '22023', DETAIL = format('Got %s.', quote_literal(left(v_raw, 40))),
                          HINT = 'Send an amount such as "150.00".';
            END IF;
            v_amount := v_raw::numeric;
        ELSE
            RAISE EXCEPTION 'milestone % needs an amount (a JSON number or string)', i
                USING ERRCODE = '22023', DETAIL = format('Its amount is a JSON %s.', COALESCE(jsonb_typeof(e -> 'amount'), 'absence')),
                      HINT = 'Send the amount as a decimal string such as "150.00".';
        END IF;
        IF v_amount <= 0 OR v_amount > 999999999.99 THEN
            RAISE EXCEPTION 'milestone % amount must be more than 0 and at most 999999999.99', i
                USING ERRCODE = '22023', DETAIL = format('Got %s.', left(v_amount::text, 40));
        END IF;
        IF v_amount <> round(v_amount, 2) THEN
            RAISE EXCEPTION 'milestone % amount has more than 2 decimals', i
                USING ERRCODE = '22023', DETAIL = format('Got %s.', v_amount),
                      HINT = 'Amounts are never rounded: send whole cents.';
        END IF;
        v_total := v_total + v_amount;
        v_names := v_names || v_name;
        v_days_list := v_days_list || v_days::smallint;
        v_amounts := v_amounts || v_amount;
    END LOOP;

    IF v_total <= s.min_order_total THEN
        RAISE EXCEPTION 'milestone orders must total more than %', s.min_order_total
            USING ERRCODE = '22023',
                  DETAIL = format('The milestones total %s %s.', v_total, create_offer.currency),
                  HINT = 'Milestones are for larger orders; send a regular offer instead.';
    END IF;

    IF NOT EXISTS (SELECT FROM @extschema@.eligible_sellers es
                    WHERE es.seller_id = create_offer.seller_id AND es.eligible) THEN
        RAISE EXCEPTION 'seller % cannot offer milestone orders', create_offer.seller_id
            USING ERRCODE = '0A000',
                  DETAIL = format('Seller %s is not eligible for milestones.', create_offer.seller_id),
                  HINT = 'Support enables sellers with milestones.set_seller_eligibility().';
    END IF;
    IF NOT EXISTS (SELECT FROM @extschema@.eligible_categories ec
                    WHERE ec.category = create_offer.category AND ec.eligible) THEN
        RAISE EXCEPTION 'category % does not offer milestone orders', quote_literal(create_offer.category)
            USING ERRCODE = '0A000',
                  DETAIL = format('Category %s is not eligible for milestones.', quote_literal(create_offer.category)),
                  HINT = 'Support enables categories with milestones.set_category_eligibility().';
    END IF;

    INSERT INTO @extschema@.orders (seller_id, buyer_id, category, currency, revisions_allowed, fee_rate, created_at)
    VALUES (create_offer.seller_id, create_offer.buyer_id, create_offer.category, create_offer.currency,
            create_offer.revisions, s.seller_fee_rate, @extschema@.now())
    RETURNING * INTO o;
    INSERT INTO @extschema@.order_milestones (order_id, position, name, days, amount, final)
    SELECT o.order_id, x.ord, x.name, x.days, x.amount, x.ord = n
      FROM unnest(v_names, v_days_list, v_amounts) WITH ORDINALITY AS x(name, days, amount, ord);
    PERFORM @extschema@._event(o, NULL, 'offered', 'seller', create_offer.seller_id, NULL,
                               jsonb_build_object('milestones', n, 'total', v_total,
                                                  'revisions', create_offer.revisions));
    IF create_offer.idempotency_key IS NOT NULL THEN PERFORM @extschema@._idem_store(create_offer.idempotency_key, to_jsonb(o.order_id)); END IF;
    RETURN o.order_id;
END
$$;
COMMENT ON FUNCTION @extschema@.create_offer(bigint, bigint, text, jsonb, integer, text, text) IS
    'Seller: offers a milestone order; milestones is [{"name","days","amount"}, ...], revisions NULL = unlimited. Returns the order id.';

-- withdraw_offer / decline_offer: an offer ends before it is placed.
CREATE FUNCTION @extschema@._end_offer(p_order_id bigint, p_actor_id bigint, p_role text, p_state text,
                                        p_function text, p_key text)
RETURNS @extschema@.order_status
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o @extschema@.orders;
    v_prev jsonb;
    r @extschema@.order_status;
BEGIN
    IF p_order_id IS NULL OR p_order_id <= 0 THEN PERFORM @extschema@._check_id(p_order_id, 'order_id'); END IF;
    IF p_actor_id IS NULL OR p_actor_id <= 0 THEN PERFORM @extschema@._check_id(p_actor_id, p_role || '_id'); END IF;
    v_prev := CASE WHEN p_key IS NOT NULL THEN @extschema@._idem_claim(p_key, p_function,
                  jsonb_build_object('order_id', p_order_id, p_role || '_id', p_actor_id)) END;
    IF v_prev IS NOT NULL THEN
        RETURN jsonb_populate_record(NULL::@extschema@.order_status, v_prev);
    END IF;
    o := @extschema@._lock_order(p_order_id, p_actor_id, p_role);
    IF o.state <> 'offered' THEN
        PERFORM @extschema@._state_error(o, p_function, 'an offered order that was not placed');
    END IF;
    UPDATE @extschema@.order_milestones SET state = 'skipped' WHERE order_id = o.order_id;
    UPDATE @extschema@.orders SET state = p_state, completed_at = @extschema@.now() WHERE order_id = o.order_id;
    PERFORM @extschema@._event(o, NULL, p_state, p_role, p_actor_id, NULL, '{}');
    r := @extschema@._status(o.order_id);
    IF p_key IS NOT NULL THEN PERFORM @extschema@._idem_store(p_key, to_jsonb(r)); END IF;
    RETURN r;
END
$$;
COMMENT ON FUNCTION @extschema@._end_offer(bigint, bigint, text, text, text, text) IS
    'Shared body of withdraw_offer and decline_offer.';

CREATE FUNCTION @extschema@.withdraw_offer(order_id bigint, seller_id bigint, idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM @extschema@._end_offer(withdraw_offer.order_id, withdraw_offer.seller_id, 'seller',
                                         'withdrawn', 'withdraw_offer', withdraw_offer.idempotency_key);
$$;
COMMENT ON FUNCTION @extschema@.withdraw_offer(bigint, bigint, text) IS 'Seller: withdraws an offer that was not placed.';

CREATE FUNCTION @extschema@.decline_offer(order_id bigint, buyer_id bigint, idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM @extschema@._end_offer(decline_offer.order_id, decline_offer.buyer_id, 'buyer',
                                         'declined', 'decline_offer', decline_offer.idempotency_key);
$$;
COMMENT ON FUNCTION @extschema@.decline_offer(bigint, bigint, text) IS 'Buyer: declines an offer instead of placing it.';

-- place_order: the buyer places the offer; milestone 1 is charged and starts (R3).
CREATE FUNCTION @extschema@.place_order(order_id bigint, buyer_id bigint, idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o @extschema@.orders;
    v_prev jsonb;
    v_charged numeric;
    r @extschema@.order_status;
BEGIN
    IF place_order.order_id IS NULL OR place_order.order_id <= 0 THEN PERFORM @extschema@._check_id(place_order.order_id, 'order_id'); END IF;
    IF place_order.buyer_id IS NULL OR place_order.buyer_id <= 0 THEN PERFORM @extschema@._check_id(place_order.buyer_id, 'buyer_id'); END IF;
    v_prev := CASE WHEN place_order.idempotency_key IS NOT NULL THEN @extschema@._idem_claim(place_order.idempotency_key, 'place_order',
                  jsonb_build_object('order_id', place_order.order_id, 'buyer_id', place_order.buyer_id)) END;
    IF v_prev IS NOT NULL THEN
        RETURN jsonb_populate_record(NULL::@extschema@.order_status, v_prev);
    END IF;
    o := @extschema@._lock_order(place_order.order_id, place_order.buyer_id, 'buyer');
    IF o.state <> 'offered' THEN
        PERFORM @extschema@._state_error(o, 'place_order', 'an offered order');
    END IF;
    -- Eligibility can be withdrawn between the offer and the order.
    IF NOT EXISTS (SELECT FROM @extschema@.eligible_sellers es WHERE es.seller_id = o.seller_id AND es.eligible)
       OR NOT EXISTS (SELECT FROM @extschema@.eligible_categories ec WHERE ec.category = o.category AND ec.eligible) THEN
        RAISE EXCEPTION 'order % can no longer be placed as a milestone order', o.order_id
            USING ERRCODE = '0A000',
                  DETAIL = format('Seller %s or category %s is no longer eligible for milestones.',
                                  o.seller_id, quote_literal(o.category));
    END IF;
    UPDATE @extschema@.orders SET state = 'active', placed_at = @extschema@.now() WHERE orders.order_id = o.order_id;
    v_charged := @extschema@._start(o, 1::smallint);
    PERFORM @extschema@._event(o, 1::smallint, 'placed', 'buyer', place_order.buyer_id, NULL,
                               jsonb_build_object('charged', v_charged));
    r := @extschema@._status(o.order_id);
    IF place_order.idempotency_key IS NOT NULL THEN PERFORM @extschema@._idem_store(place_order.idempotency_key, to_jsonb(r)); END IF;
    RETURN r;
END
$$;
COMMENT ON FUNCTION @extschema@.place_order(bigint, bigint, text) IS
    'Buyer: places the offered order; milestone 1 is charged and starts.';

-- deliver: the seller delivers the milestone in progress; the buyer's
-- response window opens (R5, R8).
CREATE FUNCTION @extschema@.deliver(order_id bigint, seller_id bigint, note text DEFAULT NULL,
                                     idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o @extschema@.orders;
    m @extschema@.order_milestones;
    v_prev jsonb;
    v_now timestamptz := @extschema@.now();
    r @extschema@.order_status;
BEGIN
    IF deliver.order_id IS NULL OR deliver.order_id <= 0 THEN PERFORM @extschema@._check_id(deliver.order_id, 'order_id'); END IF;
    IF deliver.seller_id IS NULL OR deliver.seller_id <= 0 THEN PERFORM @extschema@._check_id(deliver.seller_id, 'seller_id'); END IF;
    IF length(deliver.note) > 2000 THEN PERFORM @extschema@._check_text(deliver.note, 'note', 2000, false); END IF;
    v_prev := CASE WHEN deliver.idempotency_key IS NOT NULL THEN @extschema@._idem_claim(deliver.idempotency_key, 'deliver',
                  jsonb_build_object('order_id', deliver.order_id, 'seller_id', deliver.seller_id,
                                     'note', deliver.note)) END;
    IF v_prev IS NOT NULL THEN
        RETURN jsonb_populate_record(NULL::@extschema@.order_status, v_prev);
    END IF;
    o := @extschema@._lock_order(deliver.order_id, deliver.seller_id, 'seller');
    IF o.state <> 'active' THEN
        PERFORM @extschema@._state_error(o, 'deliver', 'an active order with a milestone in progress');
    END IF;
    m := @extschema@._current_milestone(o.order_id);
    IF m.state IS DISTINCT FROM 'in_progress' THEN
        RAISE EXCEPTION 'deliver is not allowed: milestone % of order % is %', m.position, o.order_id, m.state
            USING ERRCODE = '55000',
                  DETAIL = format('deliver needs a milestone in progress; milestone %s (%s) is %s until %s.',
                                  m.position, m.name, m.state, m.respond_by),
                  HINT = 'Wait for the buyer to accept, stop or request a revision.';
    END IF;
    UPDATE @extschema@.order_milestones
       SET state = 'delivered', delivered_at = v_now, deliveries = deliveries + 1, delivery_note = deliver.note,
           -- in UTC: the caller's TimeZone (DST) must not stretch or shrink the window
           respond_by = ((v_now AT TIME ZONE 'UTC') + (SELECT response_window FROM @extschema@.settings)) AT TIME ZONE 'UTC'
     WHERE order_milestones.order_id = o.order_id AND position = m.position
    RETURNING * INTO m;
    PERFORM @extschema@._event(o, m.position, 'delivered', 'seller', deliver.seller_id, NULL,
                               jsonb_build_object('final', m.final, 'respond_by', m.respond_by,
                                                  'delivery', m.deliveries, 'note', left(deliver.note, 200)));
    r := @extschema@._status(o.order_id);
    IF deliver.idempotency_key IS NOT NULL THEN PERFORM @extschema@._idem_store(deliver.idempotency_key, to_jsonb(r)); END IF;
    RETURN r;
END
$$;
COMMENT ON FUNCTION @extschema@.deliver(bigint, bigint, text, text) IS
    'Seller: delivers the milestone in progress (the last one is the final delivery); the buyer''s response window opens.';

-- accept: the delivered milestone completes; the next one is charged and
-- starts, or the order finishes and the seller is paid (R4, R7).
CREATE FUNCTION @extschema@.accept(order_id bigint, buyer_id bigint, idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o @extschema@.orders;
    m @extschema@.order_milestones;
    v_prev jsonb;
    v_detail jsonb;
    r @extschema@.order_status;
BEGIN
    IF accept.order_id IS NULL OR accept.order_id <= 0 THEN PERFORM @extschema@._check_id(accept.order_id, 'order_id'); END IF;
    IF accept.buyer_id IS NULL OR accept.buyer_id <= 0 THEN PERFORM @extschema@._check_id(accept.buyer_id, 'buyer_id'); END IF;
    v_prev := CASE WHEN accept.idempotency_key IS NOT NULL THEN @extschema@._idem_claim(accept.idempotency_key, 'accept',
                  jsonb_build_object('order_id', accept.order_id, 'buyer_id', accept.buyer_id)) END;
    IF v_prev IS NOT NULL THEN
        RETURN jsonb_populate_record(NULL::@extschema@.order_status, v_prev);
    END IF;
    o := @extschema@._lock_order(accept.order_id, accept.buyer_id, 'buyer');
    m := @extschema@._open_delivery(o, 'accept');
    IF m.final THEN
        v_detail := @extschema@._complete(o, m.position, 'finished', @extschema@.now());
    ELSE
        UPDATE @extschema@.order_milestones SET state = 'completed', completed_at = @extschema@.now()
         WHERE order_milestones.order_id = o.order_id AND position = m.position;
        v_detail := jsonb_build_object('next', m.position + 1,
                                       'charged', @extschema@._start(o, (m.position + 1)::smallint));
    END IF;
    PERFORM @extschema@._event(o, m.position, 'accepted', 'buyer', accept.buyer_id, NULL, v_detail);
    r := @extschema@._status(o.order_id);
    IF accept.idempotency_key IS NOT NULL THEN PERFORM @extschema@._idem_store(accept.idempotency_key, to_jsonb(r)); END IF;
    RETURN r;
END
$$;
COMMENT ON FUNCTION @extschema@.accept(bigint, bigint, text) IS
    'Buyer: accepts the delivered milestone; the next one is charged and starts, or the order finishes and the seller is paid.';

-- request_revision: uses one of the order's revisions; the milestone goes
-- back in progress and its response window closes (R11).
CREATE FUNCTION @extschema@.request_revision(order_id bigint, buyer_id bigint, note text DEFAULT NULL,
                                              idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o @extschema@.orders;
    m @extschema@.order_milestones;
    v_prev jsonb;
    r @extschema@.order_status;
BEGIN
    IF request_revision.order_id IS NULL OR request_revision.order_id <= 0 THEN PERFORM @extschema@._check_id(request_revision.order_id, 'order_id'); END IF;
    IF request_revision.buyer_id IS NULL OR request_revision.buyer_id <= 0 THEN PERFORM @extschema@._check_id(request_revision.buyer_id, 'buyer_id'); END IF;
    IF length(request_revision.note) > 2000 THEN PERFORM @extschema@._check_text(request_revision.note, 'note', 2000, false); END IF;
    v_prev := CASE WHEN request_revision.idempotency_key IS NOT NULL THEN @extschema@._idem_claim(request_revision.idempotency_key, 'request_revision',
                  jsonb_build_object('order_id', request_revision.order_id, 'buyer_id', request_revision.buyer_id,
                                     'note', request_revision.note)) END;
    IF v_prev IS NOT NULL THEN
        RETURN jsonb_populate_record(NULL::@extschema@.order_status, v_prev);
    END IF;
    o := @extschema@._lock_order(request_revision.order_id, request_revision.buyer_id, 'buyer');
    m := @extschema@._open_delivery(o, 'request_revision');
    IF o.revisions_allowed IS NOT NULL AND o.revisions_used >= o.revisions_allowed THEN
        RAISE EXCEPTION 'request_revision is not allowed: order % has no revisions left', o.order_id
            USING ERRCODE = '55000',
                  DETAIL = format('The order allows %s revisions and has used %s.', o.revisions_allowed, o.revisions_used),
                  HINT = 'Accept or stop the delivery instead.';
    END IF;
    UPDATE @extschema@.orders SET revisions_used = revisions_used + 1 WHERE orders.order_id = o.order_id;
    UPDATE @extschema@.order_milestones SET state = 'in_progress', respond_by = NULL
     WHERE order_milestones.order_id = o.order_id AND position = m.position;
    PERFORM @extschema@._event(o, m.position, 'revision_requested', 'buyer', request_revision.buyer_id, NULL,
                               jsonb_build_object('revisions_used', o.revisions_used + 1,
                                                  'note', left(request_revision.note, 200)));
    r := @extschema@._status(o.order_id);
    IF request_revision.idempotency_key IS NOT NULL THEN PERFORM @extschema@._idem_store(request_revision.idempotency_key, to_jsonb(r)); END IF;
    RETURN r;
END
$$;
COMMENT ON FUNCTION @extschema@.request_revision(bigint, bigint, text, text) IS
    'Buyer: asks for a revision of the delivered milestone, using one of the order''s revisions.';

-- stop: the buyer ends the order after a delivery; that delivery counts as
-- completed, later milestones are skipped and never charged (R6).
CREATE FUNCTION @extschema@.stop(order_id bigint, buyer_id bigint, idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o @extschema@.orders;
    m @extschema@.order_milestones;
    v_prev jsonb;
    v_detail jsonb;
    r @extschema@.order_status;
BEGIN
    IF stop.order_id IS NULL OR stop.order_id <= 0 THEN PERFORM @extschema@._check_id(stop.order_id, 'order_id'); END IF;
    IF stop.buyer_id IS NULL OR stop.buyer_id <= 0 THEN PERFORM @extschema@._check_id(stop.buyer_id, 'buyer_id'); END IF;
    v_prev := CASE WHEN stop.idempotency_key IS NOT NULL THEN @extschema@._idem_claim(stop.idempotency_key, 'stop',
                  jsonb_build_object('order_id', stop.order_id, 'buyer_id', stop.buyer_id)) END;
    IF v_prev IS NOT NULL THEN
        RETURN jsonb_populate_record(NULL::@extschema@.order_status, v_prev);
    END IF;
    o := @extschema@._lock_order(stop.order_id, stop.buyer_id, 'buyer');
    m := @extschema@._open_delivery(o, 'stop');
    v_detail := @extschema@._complete(o, m.position, 'stopped', @extschema@.now());
    PERFORM @extschema@._event(o, m.position, 'stopped', 'buyer', stop.buyer_id, NULL, v_detail);
    r := @extschema@._status(o.order_id);
    IF stop.idempotency_key IS NOT NULL THEN PERFORM @extschema@._idem_store(stop.idempotency_key, to_jsonb(r)); END IF;
    RETURN r;
END
$$;
COMMENT ON FUNCTION @extschema@.stop(bigint, bigint, text) IS
    'Buyer: stops the order after a delivery; the delivered milestone is paid, later ones skipped. Cannot be resumed.';

-- cancel: customer support ends an order for a listed reason (R10).  Held
-- funds go back to the buyer; completed milestones are still paid.
-- SECURITY DEFINER like every action; EXECUTE is granted to support only,
-- so others get 42501 from the privilege check itself.
CREATE FUNCTION @extschema@.cancel(order_id bigint, agent text, reason text, note text DEFAULT NULL,
                                    idempotency_key text DEFAULT NULL)
RETURNS @extschema@.order_status
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o @extschema@.orders;
    m @extschema@.order_milestones;
    v_prev jsonb;
    v_detail jsonb := '{}';
    v_skipped integer;
    r @extschema@.order_status;
BEGIN
    IF cancel.order_id IS NULL OR cancel.order_id <= 0 THEN PERFORM @extschema@._check_id(cancel.order_id, 'order_id'); END IF;
    PERFORM @extschema@._check_text(cancel.agent, 'agent', 200, true);
    PERFORM @extschema@._not_null(cancel.reason, 'reason');
    IF length(cancel.note) > 2000 THEN PERFORM @extschema@._check_text(cancel.note, 'note', 2000, false); END IF;
    v_prev := CASE WHEN cancel.idempotency_key IS NOT NULL THEN @extschema@._idem_claim(cancel.idempotency_key, 'cancel',
                  jsonb_build_object('order_id', cancel.order_id, 'agent', cancel.agent,
                                     'reason', cancel.reason, 'note', cancel.note)) END;
    IF v_prev IS NOT NULL THEN
        RETURN jsonb_populate_record(NULL::@extschema@.order_status, v_prev);
    END IF;
    -- After the key: a retry succeeds even if the reason was retired since.
    IF NOT EXISTS (SELECT FROM @extschema@.cancellation_reasons cr WHERE cr.code = cancel.reason AND cr.active) THEN
        RAISE EXCEPTION 'unknown cancellation reason %', quote_literal(left(cancel.reason, 100))
            USING ERRCODE = '22023',
                  DETAIL = format('Valid reasons: %s.',
                                  (SELECT string_agg(code, ', ' ORDER BY code) FROM @extschema@.cancellation_reasons WHERE active)),
                  HINT = 'Support maintains the list with milestones.set_cancellation_reason().';
    END IF;
    o := @extschema@._lock_order(cancel.order_id, NULL, 'support');
    IF o.state NOT IN ('offered','active') THEN
        PERFORM @extschema@._state_error(o, 'cancel', 'an offered or active order');
    END IF;
    m := @extschema@._current_milestone(o.order_id);
    IF m.state = 'delivered' AND @extschema@.now() >= m.respond_by THEN
        RAISE EXCEPTION 'cancel is not allowed: order % has expired', o.order_id
            USING ERRCODE = '55000',
                  DETAIL = format('Milestone %s was delivered at %s and the buyer''s window closed at %s.',
                                  m.position, m.delivered_at, m.respond_by),
                  HINT = 'The order is in effect completed as expired; the expiry sweep records it.';
    END IF;
    IF m.position IS NOT NULL THEN
        UPDATE @extschema@.order_milestones SET state = 'refunded'
         WHERE order_milestones.order_id = o.order_id AND position = m.position;
        PERFORM @extschema@._post(o, m.position, 'refund', ARRAY['escrow','buyer'], ARRAY[-m.amount, m.amount]);
        v_detail := jsonb_build_object('refunded', m.amount);
    END IF;
    UPDATE @extschema@.order_milestones SET state = 'skipped'
     WHERE order_milestones.order_id = o.order_id AND state = 'pending';
    GET DIAGNOSTICS v_skipped = ROW_COUNT;
    UPDATE @extschema@.orders
       SET state = 'cancelled', cancel_reason = cancel.reason, cancelled_by = cancel.agent,
           cancel_note = cancel.note, completed_at = @extschema@.now()
     WHERE orders.order_id = o.order_id;
    IF o.state = 'active' THEN
        v_detail := v_detail || jsonb_build_object('payout', @extschema@._settle(o));
    END IF;
    PERFORM @extschema@._event(o, m.position, 'cancelled', 'support', NULL, cancel.agent,
                               v_detail || jsonb_build_object('reason', cancel.reason, 'skipped', v_skipped,
                                                              'note', left(cancel.note, 200)));
    r := @extschema@._status(o.order_id);
    IF cancel.idempotency_key IS NOT NULL THEN PERFORM @extschema@._idem_store(cancel.idempotency_key, to_jsonb(r)); END IF;
    RETURN r;
END
$$;
COMMENT ON FUNCTION @extschema@.cancel(bigint, text, text, text, text) IS
    'Support: cancels an offered or active order for a listed reason; the running milestone is refunded, completed ones are paid.';

-------------------------------------------------------------------------------
-- Expiry (R8, R9).
-------------------------------------------------------------------------------

-- expire_overdue: completes (as expired) up to `batch` orders whose delivery
-- is at or past its deadline.  Owner only: an as_of chosen by a caller could
-- expire orders early.  Rows locked by a concurrent buyer call are skipped
-- (the next run sees them again if they are still overdue).  Also purges
-- idempotency keys older than settings.idempotency_ttl.
CREATE FUNCTION @extschema@.expire_overdue(as_of timestamptz DEFAULT @extschema@.now(),
                                            batch integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o @extschema@.orders;
    m @extschema@.order_milestones;
    v_count integer := 0;
    v_detail jsonb;
BEGIN
    PERFORM @extschema@._not_null(expire_overdue.as_of, 'as_of');
    PERFORM @extschema@._not_null(expire_overdue.batch, 'batch');
    IF expire_overdue.batch NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'batch must be between 1 and 100000'
            USING ERRCODE = '22023', DETAIL = format('Got %s.', expire_overdue.batch);
    END IF;
    IF NOT isfinite(expire_overdue.as_of) THEN
        RAISE EXCEPTION 'as_of must be a finite timestamp' USING ERRCODE = '22023';
    END IF;

    -- LIMIT above the row locks: a locked (skipped) order must not use up a
    -- place in the batch, or a few busy orders at the head of the queue
    -- would starve the free ones behind them (and stop run_expiry early).
    FOR o IN
        SELECT ord.* FROM @extschema@.orders ord
          JOIN @extschema@.order_milestones w ON w.order_id = ord.order_id
         WHERE w.state = 'delivered' AND w.respond_by <= expire_overdue.as_of
         ORDER BY w.respond_by
         LIMIT expire_overdue.batch
           FOR UPDATE OF ord SKIP LOCKED
    LOOP
        -- Re-read under the lock: a buyer may have answered in the meantime.
        SELECT * INTO m FROM @extschema@.order_milestones w
         WHERE w.order_id = o.order_id AND w.state = 'delivered' AND w.respond_by <= expire_overdue.as_of;
        CONTINUE WHEN NOT FOUND OR o.state <> 'active';
        v_detail := @extschema@._complete(o, m.position, 'expired', m.respond_by);
        PERFORM @extschema@._event(o, m.position, 'expired', 'system', NULL, NULL,
                                   v_detail || jsonb_build_object('respond_by', m.respond_by));
        v_count := v_count + 1;
    END LOOP;

    -- Purge expired keys, at most one batch per call like the orders.
    DELETE FROM @extschema@.idempotency_keys
     WHERE key IN (SELECT k.key FROM @extschema@.idempotency_keys k
                    WHERE k.created_at < expire_overdue.as_of - (SELECT idempotency_ttl FROM @extschema@.settings)
                    ORDER BY k.created_at
                    LIMIT expire_overdue.batch
                      FOR UPDATE SKIP LOCKED);
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION @extschema@.expire_overdue(timestamptz, integer) IS
    'Owner/pg_cron: completes as expired up to batch orders whose response window closed at or before as_of (completed_at = the deadline). Returns how many.';

-- run_expiry: the pg_cron job.  Expires the whole backlog one batch per
-- transaction, so a large backlog never becomes one long transaction.  A
-- procedure (for COMMIT) and SECURITY INVOKER (a SECURITY DEFINER procedure
-- cannot commit): the job runs as the owner who scheduled it.  It carries
-- no SET search_path either (that too forbids COMMIT): every name in it is
-- schema-qualified instead.
CREATE PROCEDURE @extschema@.run_expiry(max_batches integer DEFAULT 1000)
LANGUAGE plpgsql AS $$
DECLARE
    v_batch integer;
    v_done integer;
    i integer := 0;
BEGIN
    IF max_batches IS NULL OR max_batches OPERATOR(pg_catalog.<) 1 THEN
        RAISE EXCEPTION 'max_batches must be 1 or more'
            USING ERRCODE := '22023', DETAIL := pg_catalog.format('Got %s.', max_batches);
    END IF;
    SELECT expiry_batch INTO v_batch FROM @extschema@.settings;
    LOOP
        v_done := @extschema@.expire_overdue(@extschema@.now(), v_batch);
        COMMIT;
        -- Operators qualified too: without a pinned search_path, a schema
        -- ahead of pg_catalog in the caller's path could shadow them.
        i := i OPERATOR(pg_catalog.+) 1;
        EXIT WHEN v_done OPERATOR(pg_catalog.<) v_batch OR i OPERATOR(pg_catalog.>=) max_batches;
    END LOOP;
END
$$;
COMMENT ON PROCEDURE @extschema@.run_expiry(integer) IS
    'Owner/pg_cron: runs expire_overdue in batches of settings.expiry_batch, committing after each, until the backlog is gone.';

-- schedule_expiry: registers run_expiry with pg_cron under one fixed job
-- name; calling it again updates the schedule.  pg_cron is optional.
CREATE FUNCTION @extschema@.schedule_expiry(schedule text DEFAULT '*/5 * * * *') RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_job bigint;
BEGIN
    PERFORM @extschema@._not_null(schedule_expiry.schedule, 'schedule');
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        RAISE EXCEPTION 'pg_cron is not installed in this database'
            USING ERRCODE = '55000',
                  DETAIL = 'schedule_expiry registers milestones.run_expiry() as a pg_cron job.',
                  HINT = 'Add pg_cron to shared_preload_libraries, set cron.database_name to this database, restart, '
                         'run CREATE EXTENSION pg_cron here, then call schedule_expiry() again. '
                         'Without pg_cron, run CALL milestones.run_expiry() from any scheduler.';
    END IF;
    EXECUTE 'SELECT cron.schedule($1, $2, $3)'
       INTO v_job
      USING 'milestones-expiry', schedule_expiry.schedule, 'CALL milestones.run_expiry()';
    RETURN v_job;
END
$$;
COMMENT ON FUNCTION @extschema@.schedule_expiry(text) IS
    'Owner: registers (or reschedules) the pg_cron job "milestones-expiry" that runs CALL milestones.run_expiry(). Returns the job id.';

CREATE FUNCTION @extschema@.unschedule_expiry() RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_job bigint;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT jobid FROM cron.job WHERE jobname = $1 AND username = current_user' INTO v_job
      USING 'milestones-expiry';
    IF v_job IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT cron.unschedule($1)' USING v_job;
    RETURN true;
END
$$;
COMMENT ON FUNCTION @extschema@.unschedule_expiry() IS
    'Owner: removes the pg_cron job "milestones-expiry"; returns whether there was one.';

-------------------------------------------------------------------------------
-- Eligibility and reasons (support).
-------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.set_seller_eligibility(seller_id bigint, eligible boolean) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF set_seller_eligibility.seller_id IS NULL OR set_seller_eligibility.seller_id <= 0 THEN PERFORM @extschema@._check_id(set_seller_eligibility.seller_id, 'seller_id'); END IF;
    PERFORM @extschema@._not_null(set_seller_eligibility.eligible, 'eligible');
    INSERT INTO @extschema@.eligible_sellers AS es (seller_id, eligible, updated_at)
    VALUES (set_seller_eligibility.seller_id, set_seller_eligibility.eligible, @extschema@.now())
    ON CONFLICT ON CONSTRAINT eligible_sellers_pkey
    DO UPDATE SET eligible = EXCLUDED.eligible, updated_at = EXCLUDED.updated_at;
END
$$;
COMMENT ON FUNCTION @extschema@.set_seller_eligibility(bigint, boolean) IS
    'Support: allows or stops a seller offering milestone orders (existing orders are not affected).';

CREATE FUNCTION @extschema@.set_category_eligibility(category text, eligible boolean) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@._check_text(set_category_eligibility.category, 'category', 100, true);
    PERFORM @extschema@._not_null(set_category_eligibility.eligible, 'eligible');
    IF btrim(set_category_eligibility.category) <> set_category_eligibility.category THEN
        RAISE EXCEPTION 'category must not start or end with spaces'
            USING ERRCODE = '22023', DETAIL = format('Got %s.', quote_literal(left(set_category_eligibility.category, 100))),
                  HINT = 'Offers name the category exactly; trim it first.';
    END IF;
    INSERT INTO @extschema@.eligible_categories AS ec (category, eligible, updated_at)
    VALUES (set_category_eligibility.category, set_category_eligibility.eligible, @extschema@.now())
    ON CONFLICT ON CONSTRAINT eligible_categories_pkey
    DO UPDATE SET eligible = EXCLUDED.eligible, updated_at = EXCLUDED.updated_at;
END
$$;
COMMENT ON FUNCTION @extschema@.set_category_eligibility(text, boolean) IS
    'Support: opens or closes a category for milestone orders (existing orders are not affected).';

CREATE FUNCTION @extschema@.set_cancellation_reason(code text, description text, active boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@._not_null(set_cancellation_reason.code, 'code');
    PERFORM @extschema@._check_text(set_cancellation_reason.description, 'description', 500, true);
    PERFORM @extschema@._not_null(set_cancellation_reason.active, 'active');
    IF set_cancellation_reason.code !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'reason code must be lower-case letters, digits and underscores'
            USING ERRCODE = '22023', DETAIL = format('Got %s.', quote_literal(left(set_cancellation_reason.code, 80)));
    END IF;
    INSERT INTO @extschema@.cancellation_reasons AS cr (code, description, active)
    VALUES (set_cancellation_reason.code, set_cancellation_reason.description, set_cancellation_reason.active)
    ON CONFLICT ON CONSTRAINT cancellation_reasons_pkey
    DO UPDATE SET description = EXCLUDED.description, active = EXCLUDED.active;
END
$$;
COMMENT ON FUNCTION @extschema@.set_cancellation_reason(text, text, boolean) IS
    'Support: adds or edits a cancellation reason; active = false retires it (orders that used it keep it).';

-------------------------------------------------------------------------------
-- Invariants (SPEC section 6).  _order_problems is the single statement of
-- the rules: the deferred C guard runs it for each order a transaction
-- touched, and check_invariants() runs it for all orders.
-------------------------------------------------------------------------------
-- Every rule reads one order at a time (the ids unnested and joined to the
-- primary key, then LATERAL aggregates over the order_id indexes), so the
-- same generic plan serves the deferred check of one order at each commit
-- and check_invariants() over all of them in linear time; the
-- plans are generic because re-planning at every commit cost more than
-- running the queries.
CREATE FUNCTION @extschema@._order_problems(p_orders bigint[], p_money boolean)
RETURNS TABLE (order_id bigint, problem text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    -- Structure: positions 1..n, one running milestone, k after k-1, order
    -- state consistent with its milestones, final flag on the last one.
    RETURN QUERY
    WITH a AS MATERIALIZED (
        SELECT x.order_id, x.state, x.end_reason, g.*
          FROM unnest(p_orders) AS q(id)
          JOIN @extschema@.orders x ON x.order_id = q.id
         CROSS JOIN LATERAL (
               SELECT count(m.position)::integer AS n,
                      COALESCE(max(m.position), 0)::integer AS maxpos,
                      count(*) FILTER (WHERE m.state IN ('in_progress','delivered'))::integer AS running,
                      count(*) FILTER (WHERE m.state = 'pending')::integer AS pending,
                      count(*) FILTER (WHERE m.state = 'completed')::integer AS completed,
                      count(*) FILTER (WHERE m.state = 'skipped')::integer AS skipped,
                      count(*) FILTER (WHERE m.state = 'refunded')::integer AS refunded,
                      array_agg(m.position ORDER BY m.position) AS positions,
                      array_agg(m.state ORDER BY m.position) AS states,
                      array_agg(m.final ORDER BY m.position) AS finals
                 FROM @extschema@.order_milestones m
                WHERE m.order_id = x.order_id) g
    )
    SELECT a.order_id, 'order has no milestones' FROM a WHERE a.n = 0
    UNION ALL
    SELECT a.order_id, format('milestone positions are not 1..%s', a.n) FROM a WHERE a.n > 0 AND a.maxpos <> a.n
    UNION ALL
    SELECT a.order_id, format('%s milestones are in progress or delivered at once', a.running) FROM a WHERE a.running > 1
    UNION ALL
    SELECT a.order_id, format('%s order has milestones that are not pending', a.state)
      FROM a WHERE a.state = 'offered' AND a.pending <> a.n
    UNION ALL
    SELECT a.order_id, 'active order has no milestone in progress or delivered'
      FROM a WHERE a.state = 'active' AND a.running = 0 AND a.n > 0
    UNION ALL
    SELECT a.order_id, 'active order has skipped or refunded milestones'
      FROM a WHERE a.state = 'active' AND a.skipped + a.refunded > 0
    UNION ALL
    SELECT a.order_id, 'ended order still has pending, in-progress or delivered milestones'
      FROM a WHERE a.state IN ('completed','cancelled','withdrawn','declined') AND a.pending + a.running > 0
    UNION ALL
    SELECT a.order_id, format('completed (%s) order has %s of %s milestones completed', a.end_reason, a.completed, a.n)
      FROM a WHERE a.state = 'completed'
       AND (a.completed = 0 OR a.refunded > 0 OR (a.end_reason = 'finished' AND a.completed <> a.n))
    UNION ALL
    SELECT a.order_id, format('%s order has milestones that were not skipped', a.state)
      FROM a WHERE a.state IN ('withdrawn','declined') AND a.skipped <> a.n
    UNION ALL
    SELECT a.order_id, format('milestone %s is %s but milestone %s is %s',
                              a.positions[u.k], u.st, a.positions[u.k - 1], a.states[u.k - 1])
      FROM a CROSS JOIN LATERAL unnest(a.states) WITH ORDINALITY AS u(st, k)
     WHERE u.k > 1 AND u.st IN ('in_progress','delivered','completed','refunded') AND a.states[u.k - 1] <> 'completed'
    UNION ALL
    SELECT a.order_id, format('milestone %s final flag is %s', a.positions[u.k], u.final)
      FROM a CROSS JOIN LATERAL unnest(a.finals) WITH ORDINALITY AS u(final, k)
     WHERE u.final <> (a.positions[u.k] = a.n);

    IF NOT p_money THEN
        RETURN;
    END IF;

    -- Money: balanced transactions in the order's currency, one charge per
    -- started milestone, one refund per refunded one, escrow empty when the
    -- order ends, one payout equal to the completed milestones.
    RETURN QUERY
    WITH o AS MATERIALIZED (
        SELECT x.order_id, x.state, x.currency, x.fee_rate
          FROM unnest(p_orders) AS q(id) JOIN @extschema@.orders x ON x.order_id = q.id
    ), txn AS (
        SELECT o.order_id, t.txn_id, t.total, t.kinds, t.wrong_currency
          FROM o CROSS JOIN LATERAL (
               SELECT e.txn_id, sum(e.amount) AS total, count(DISTINCT e.kind) AS kinds,
                      bool_or(e.currency <> o.currency) AS wrong_currency
                 FROM @extschema@.ledger_entries e WHERE e.order_id = o.order_id GROUP BY e.txn_id) t
    ), per_ms AS (
        SELECT o.order_id, p.*
          FROM o CROSS JOIN LATERAL (
               SELECT COALESCE(m.position, x.position) AS position, COALESCE(m.state, 'missing') AS state, m.amount,
                      COALESCE(x.charges, 0) AS charges, COALESCE(x.charged, 0) AS charged,
                      COALESCE(x.refunds, 0) AS refunds, COALESCE(x.refunded, 0) AS refunded
                 FROM (SELECT m.position, m.state, m.amount FROM @extschema@.order_milestones m
                        WHERE m.order_id = o.order_id) m
                 FULL JOIN (
                      SELECT e.position,
                             count(*) FILTER (WHERE e.kind = 'charge' AND e.account = 'buyer') AS charges,
                             COALESCE(-sum(e.amount) FILTER (WHERE e.kind = 'charge' AND e.account = 'buyer'), 0) AS charged,
                             count(*) FILTER (WHERE e.kind = 'refund' AND e.account = 'buyer') AS refunds,
                             COALESCE(sum(e.amount) FILTER (WHERE e.kind = 'refund' AND e.account = 'buyer'), 0) AS refunded
                        FROM @extschema@.ledger_entries e
                       WHERE e.order_id = o.order_id AND e.position IS NOT NULL
                       GROUP BY e.position) x ON x.position = m.position) p
    ), money AS (
        SELECT o.order_id, o.state, o.fee_rate, l.*, e.earned
          FROM o
         CROSS JOIN LATERAL (
               SELECT COALESCE(sum(x.amount) FILTER (WHERE x.account = 'escrow'), 0) AS escrow,
                      count(DISTINCT x.txn_id) FILTER (WHERE x.kind = 'payout') AS payouts,
                      COALESCE(-sum(x.amount) FILTER (WHERE x.kind = 'payout' AND x.account = 'escrow'), 0) AS gross,
                      COALESCE(sum(x.amount) FILTER (WHERE x.kind = 'payout' AND x.account = 'platform'), 0) AS fee,
                      COALESCE(sum(x.amount) FILTER (WHERE x.kind = 'payout' AND x.account = 'seller'), 0) AS net
                 FROM @extschema@.ledger_entries x WHERE x.order_id = o.order_id) l
         CROSS JOIN LATERAL (
               SELECT COALESCE(sum(m.amount) FILTER (WHERE m.state = 'completed'), 0) AS earned
                 FROM @extschema@.order_milestones m WHERE m.order_id = o.order_id) e
    )
    SELECT t.order_id, format('ledger transaction %s does not balance (sums to %s)', t.txn_id, t.total)
      FROM txn t WHERE t.total <> 0
    UNION ALL
    SELECT t.order_id, format('ledger transaction %s mixes kinds or currencies', t.txn_id)
      FROM txn t WHERE t.kinds > 1 OR t.wrong_currency
    UNION ALL
    SELECT p.order_id, format('milestone %s is %s but was charged %s times (%s)', p.position, p.state, p.charges, p.charged)
      FROM per_ms p
     WHERE p.charges <> CASE WHEN p.state IN ('pending','skipped','missing') THEN 0 ELSE 1 END
        OR (p.charges = 1 AND p.charged IS DISTINCT FROM p.amount)
    UNION ALL
    SELECT p.order_id, format('milestone %s is %s but was refunded %s times (%s)', p.position, p.state, p.refunds, p.refunded)
      FROM per_ms p
     WHERE p.refunds <> CASE WHEN p.state = 'refunded' THEN 1 ELSE 0 END
        OR (p.refunds = 1 AND p.refunded IS DISTINCT FROM p.amount)
    UNION ALL
    SELECT x.order_id, format('%s order holds %s in escrow', x.state, x.escrow)
      FROM money x
     WHERE (x.state IN ('completed','cancelled','withdrawn','declined') AND x.escrow <> 0) OR x.escrow < 0
    UNION ALL
    SELECT x.order_id, format('%s order has %s payouts', x.state, x.payouts)
      FROM money x
     WHERE x.payouts > 1 OR (x.payouts > 0 AND x.state IN ('offered','active'))
        OR (x.payouts = 0 AND x.earned > 0 AND x.state IN ('completed','cancelled'))
    UNION ALL
    SELECT x.order_id, format('payout gross %s, fee %s, net %s do not match completed milestones %s at fee rate %s',
                              x.gross, x.fee, x.net, x.earned, x.fee_rate)
      FROM money x
     WHERE x.payouts = 1
       AND (x.gross <> x.earned OR x.fee + x.net <> x.gross OR x.fee <> @extschema@._fee(x.gross, x.fee_rate));
END
$$;
COMMENT ON FUNCTION @extschema@._order_problems(bigint[], boolean) IS
    'The invariants of the given orders (structure; with p_money also the money): one row per violation.';

-- check_invariants: empty when the books are sound.  Order-level problems
-- come with their order id; ledger-wide ones with a NULL order id.
CREATE FUNCTION @extschema@.check_invariants() RETURNS TABLE (order_id bigint, problem text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
    SELECT p.order_id, p.problem
      FROM @extschema@._order_problems(ARRAY(SELECT x.order_id FROM @extschema@.orders x), true) p
     ORDER BY p.order_id, p.problem;
    RETURN QUERY
    SELECT NULL::bigint, format('the whole ledger sums to %s, not 0', s.total)
      FROM (SELECT COALESCE(sum(e.amount), 0) AS total FROM @extschema@.ledger_entries e) s
     WHERE s.total <> 0;
END
$$;
COMMENT ON FUNCTION @extschema@.check_invariants() IS
    'DBA/support: every violated invariant as (order_id, problem); no rows when the data is sound.';

-------------------------------------------------------------------------------
-- pg_dump: orders and all their history are user data.
-------------------------------------------------------------------------------
SELECT pg_catalog.pg_extension_config_dump('@extschema@.settings', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.eligible_sellers', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.eligible_categories', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.cancellation_reasons', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.orders', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.order_milestones', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ledger_entries', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.events', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.idempotency_keys', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.order_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ledger_entry_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ledger_txn_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.event_id_seq', '');

-------------------------------------------------------------------------------
-- Privileges.  Nothing for PUBLIC; only the owner writes tables.
-------------------------------------------------------------------------------
REVOKE ALL ON ALL TABLES IN SCHEMA @extschema@ FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA @extschema@ FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA @extschema@ FROM PUBLIC;
REVOKE ALL ON ALL PROCEDURES IN SCHEMA @extschema@ FROM PUBLIC;

-- The clock and the views: everyone with a milestones role reads state.
GRANT EXECUTE ON FUNCTION @extschema@.now() TO milestones_app, milestones_support, milestones_reader;
GRANT SELECT ON @extschema@.order_status, @extschema@.awaiting_response, @extschema@.payouts, @extschema@.ledger
    TO milestones_app, milestones_support, milestones_reader;

-- The application: the order actions of buyers and sellers.
GRANT EXECUTE ON FUNCTION
    @extschema@.create_offer(bigint, bigint, text, jsonb, integer, text, text),
    @extschema@.withdraw_offer(bigint, bigint, text),
    @extschema@.decline_offer(bigint, bigint, text),
    @extschema@.place_order(bigint, bigint, text),
    @extschema@.deliver(bigint, bigint, text, text),
    @extschema@.accept(bigint, bigint, text),
    @extschema@.request_revision(bigint, bigint, text, text),
    @extschema@.stop(bigint, bigint, text),
    @extschema@.payout(bigint)
    TO milestones_app, milestones_support;

-- Support: also cancellation, eligibility, the reasons list and the books.
GRANT EXECUTE ON FUNCTION
    @extschema@.cancel(bigint, text, text, text, text),
    @extschema@.set_seller_eligibility(bigint, boolean),
    @extschema@.set_category_eligibility(text, boolean),
    @extschema@.set_cancellation_reason(text, text, boolean),
    @extschema@.check_invariants()
    TO milestones_support;
GRANT SELECT ON @extschema@.cancellation_reasons, @extschema@.eligible_sellers, @extschema@.eligible_categories
    TO milestones_support;
-- The application shows buyers and sellers why an order was cancelled.
-- Readers get the views only (SPEC section 7).
GRANT SELECT ON @extschema@.cancellation_reasons TO milestones_app;
