-------------------------------------------------------------------------------
-- The upgrade's locks, taken first and in one order.
--
-- ALTER EXTENSION UPDATE may run while the application and the relay keep
-- working.  The statements below change settings, orders, order_milestones,
-- ledger_entries and events (ACCESS EXCLUSIVE for a moment each: no table is
-- rewritten or scanned).  Taken one by one as the statements come, a lock
-- held here could be awaited by a call that holds the next one: a
-- deadlock, which PostgreSQL resolves by failing one side (seen: the
-- relay's batch against the upgrade).  So they are all taken here, before
-- anything else, in the order in which the order actions take them
-- (settings and orders first, events last): an action that holds one of
-- them finishes and the upgrade goes on.  The relay takes events first; it
-- lowers its own deadlock_timeout, so that where it meets the upgrade it is
-- the side that gives up (and tries its batch again a second later).
-------------------------------------------------------------------------------
LOCK TABLE @extschema@.settings, @extschema@.orders, @extschema@.order_milestones,
           @extschema@.ledger_entries, @extschema@.events
    IN ACCESS EXCLUSIVE MODE;
