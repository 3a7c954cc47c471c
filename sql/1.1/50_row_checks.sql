-------------------------------------------------------------------------------
-- Row rules in C: one CHECK constraint per hot table instead of one per rule.
--
-- 1.0 declared each row rule of orders (15), order_milestones (15 in 1.1),
-- ledger_entries (5) and events (1) as a CHECK constraint of its own.  PostgreSQL
-- rebuilds a table's CHECK expressions from their stored text for every
-- statement that writes the table, which cost an API call more than its
-- rules did.  Each table now has ONE CHECK constraint that calls a C
-- function (src/rowcheck.c) with the whole row (one short expression for
-- PostgreSQL to rebuild per statement); it evaluates the same
-- rules with the same SQL semantics (a rule passes when it is true or
-- NULL), in the order PostgreSQL applied them (by constraint name), and
-- refuses a row exactly as the rule's own constraint did: SQLSTATE 23514,
-- 'new row for relation "orders" violates check constraint
-- "orders_state_valid"', the failing row in the DETAIL, the constraint's
-- name in the error's constraint field.  Still a CHECK constraint, so it
-- holds for every writer, also under session_replication_role = replica.
-- The constraint comments list the rules.
--
-- Upgrade: dropping the rules is instant; adding the new constraint reads
-- every row of the four tables once (under the upgrade's ACCESS EXCLUSIVE
-- lock) and proves that 1.0's data keeps the rules.
-------------------------------------------------------------------------------
CREATE FUNCTION @extschema@._orders_row_valid(o @extschema@.orders)
RETURNS boolean AS 'MODULE_PATHNAME', 'milestones_orders_row_valid'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._orders_row_valid(@extschema@.orders) IS
    'The row rules of orders (CHECK orders_row_rules): true, or the error of the first broken rule (23514, named as 1.0''s constraint).';

CREATE FUNCTION @extschema@._milestones_row_valid(m @extschema@.order_milestones)
RETURNS boolean AS 'MODULE_PATHNAME', 'milestones_milestones_row_valid'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._milestones_row_valid(@extschema@.order_milestones) IS
    'The row rules of order_milestones (CHECK milestones_row_rules): true, or the error of the first broken rule (23514, named as 1.0''s constraint).';

CREATE FUNCTION @extschema@._ledger_row_valid(l @extschema@.ledger_entries)
RETURNS boolean AS 'MODULE_PATHNAME', 'milestones_ledger_row_valid'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._ledger_row_valid(@extschema@.ledger_entries) IS
    'The row rules of ledger_entries (CHECK ledger_row_rules): true, or the error of the first broken rule (23514, named as 1.0''s constraint).';

CREATE FUNCTION @extschema@._events_row_valid(e @extschema@.events)
RETURNS boolean AS 'MODULE_PATHNAME', 'milestones_events_row_valid'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._events_row_valid(@extschema@.events) IS
    'The row rule of events (CHECK events_row_rules): true, or the error of the broken rule (23514, named as 1.0''s constraint).';

-- Only the owner's statements (the API's SECURITY DEFINER functions, the
-- sweep, a DBA as owner) write these tables; a CHECK runs its function
-- with the writer's privileges.
REVOKE ALL ON FUNCTION
    @extschema@._orders_row_valid(@extschema@.orders),
    @extschema@._milestones_row_valid(@extschema@.order_milestones),
    @extschema@._ledger_row_valid(@extschema@.ledger_entries),
    @extschema@._events_row_valid(@extschema@.events)
  FROM PUBLIC;

ALTER TABLE @extschema@.orders
    DROP CONSTRAINT orders_seller_id_positive,
    DROP CONSTRAINT orders_buyer_id_positive,
    DROP CONSTRAINT orders_currency_iso4217,
    DROP CONSTRAINT orders_state_valid,
    DROP CONSTRAINT orders_end_reason_valid,
    DROP CONSTRAINT orders_cancelled_by_length,
    DROP CONSTRAINT orders_cancel_note_length,
    DROP CONSTRAINT orders_revisions_allowed_range,
    DROP CONSTRAINT orders_revisions_used_range,
    DROP CONSTRAINT orders_fee_rate_range,
    DROP CONSTRAINT orders_buyer_is_not_seller,
    DROP CONSTRAINT orders_reason_matches_state,
    DROP CONSTRAINT orders_ended_has_completed_at,
    DROP CONSTRAINT orders_placed_at_matches_state,
    DROP CONSTRAINT orders_times_ordered,
    ADD CONSTRAINT orders_row_rules CHECK (@extschema@._orders_row_valid(orders));
COMMENT ON CONSTRAINT orders_row_rules ON @extschema@.orders IS
$$The row rules of an order, evaluated in C; a broken rule is reported under its own name:
orders_buyer_id_positive: buyer_id > 0
orders_buyer_is_not_seller: buyer_id <> seller_id
orders_cancel_note_length: length(cancel_note) <= 2000
orders_cancelled_by_length: length(cancelled_by) BETWEEN 1 AND 200
orders_currency_iso4217: currency ~ '^[A-Z]{3}$'
orders_end_reason_valid: end_reason IN ('finished','stopped','expired')
orders_ended_has_completed_at: (state IN ('offered','active')) = (completed_at IS NULL)
orders_fee_rate_range: fee_rate >= 0 AND fee_rate < 1
orders_placed_at_matches_state: (state IN ('active','completed') AND placed_at IS NOT NULL) OR (state IN ('offered','withdrawn','declined') AND placed_at IS NULL) OR state = 'cancelled'
orders_reason_matches_state: (state = 'completed' AND end_reason IS NOT NULL AND cancel_reason IS NULL) OR (state = 'cancelled' AND end_reason IS NULL AND cancel_reason IS NOT NULL AND cancelled_by IS NOT NULL) OR (state NOT IN ('completed','cancelled') AND end_reason IS NULL AND cancel_reason IS NULL)
orders_revisions_allowed_range: revisions_allowed >= 0
orders_revisions_used_range: revisions_used >= 0 AND (revisions_allowed IS NULL OR revisions_used <= revisions_allowed)
orders_seller_id_positive: seller_id > 0
orders_state_valid: state IN ('offered','active','completed','withdrawn','declined','cancelled')
orders_times_ordered: placed_at >= created_at AND completed_at >= created_at AND completed_at >= placed_at$$;

ALTER TABLE @extschema@.order_milestones
    DROP CONSTRAINT milestones_position_range,
    DROP CONSTRAINT milestones_name_valid,
    DROP CONSTRAINT milestones_days_range,
    DROP CONSTRAINT milestones_amount_positive,
    DROP CONSTRAINT milestones_state_valid,
    DROP CONSTRAINT milestones_deliveries_range,
    DROP CONSTRAINT milestones_delivery_note_length,
    DROP CONSTRAINT milestones_started_has_times,
    DROP CONSTRAINT milestones_delivered_has_deadline,
    DROP CONSTRAINT milestones_in_progress_has_no_deadline,
    DROP CONSTRAINT milestones_completed_was_delivered,
    DROP CONSTRAINT milestones_completed_at_matches_state,
    DROP CONSTRAINT milestones_cancelled_by_length,
    DROP CONSTRAINT milestones_cancel_note_length,
    DROP CONSTRAINT milestones_cancel_matches_state,
    ADD CONSTRAINT milestones_row_rules CHECK (@extschema@._milestones_row_valid(order_milestones));
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
milestones_started_has_times: (state IN ('pending','skipped','cancelled')) = (started_at IS NULL AND due_at IS NULL)
milestones_state_valid: state IN ('pending','in_progress','delivered','completed','skipped','refunded','cancelled')$$;

ALTER TABLE @extschema@.ledger_entries
    DROP CONSTRAINT ledger_kind_valid,
    DROP CONSTRAINT ledger_account_valid,
    DROP CONSTRAINT ledger_amount_nonzero,
    DROP CONSTRAINT ledger_currency_iso4217,
    DROP CONSTRAINT ledger_position_matches_kind,
    ADD CONSTRAINT ledger_row_rules CHECK (@extschema@._ledger_row_valid(ledger_entries));
COMMENT ON CONSTRAINT ledger_row_rules ON @extschema@.ledger_entries IS
$$The row rules of a ledger entry, evaluated in C; a broken rule is reported under its own name:
ledger_account_valid: account IN ('buyer','escrow','seller','platform')
ledger_amount_nonzero: amount <> 0
ledger_currency_iso4217: currency ~ '^[A-Z]{3}$'
ledger_kind_valid: kind IN ('charge','payout','refund')
ledger_position_matches_kind: (kind = 'payout') = (position IS NULL)$$;

ALTER TABLE @extschema@.events
    DROP CONSTRAINT events_actor_role_valid,
    ADD CONSTRAINT events_row_rules CHECK (@extschema@._events_row_valid(events));
COMMENT ON CONSTRAINT events_row_rules ON @extschema@.events IS
$$The row rule of an event, evaluated in C; a broken rule is reported under its own name:
events_actor_role_valid: actor_role IN ('seller','buyer','support','system')$$;
