-------------------------------------------------------------------------------
-- The upgrade's locks, all at once.
--
-- ALTER EXTENSION UPDATE runs while the application and the relay keep
-- working.  Their calls lock these tables in their own orders (an order
-- action: orders, then milestones, the ledger and events; the relay:
-- events, then the consumer tables and settings), and the statements below
-- lock several of them ACCESS EXCLUSIVE one after the other: taken one at
-- a time, a lock held here could be awaited by a call that holds the next
-- one, a deadlock that PostgreSQL resolves by failing one side (seen: the
-- relay's batch against the upgrade).  So every table the upgrade changes
-- or the relay reads is locked here in one step, without waiting while
-- holding anything: a try that finds one busy takes none and tries again
-- a little later (for up to a minute; then the upgrade fails and changes
-- nothing).  The statements that follow only hold the locks.
-------------------------------------------------------------------------------
DO $$
DECLARE
    v_tries integer := 0;
BEGIN
    LOOP
        BEGIN
            LOCK TABLE @extschema@.events, @extschema@.consumers, @extschema@.consumer_ticks,
                       @extschema@.consumer_batches, @extschema@.settings, @extschema@.orders,
                       @extschema@.order_milestones, @extschema@.ledger_entries
                IN ACCESS EXCLUSIVE MODE NOWAIT;
            EXIT;
        EXCEPTION WHEN lock_not_available THEN
            v_tries := v_tries OPERATOR(pg_catalog.+) 1;
            IF v_tries OPERATOR(pg_catalog.>=) 600 THEN
                RAISE EXCEPTION 'milestones upgrade: the extension''s tables stayed busy for a minute'
                    USING ERRCODE = '55P03',
                          DETAIL = 'A transaction held a lock on one of them throughout; the upgrade changed nothing.',
                          HINT = 'Run ALTER EXTENSION milestones UPDATE again; see pg_locks for the long transaction.';
            END IF;
            PERFORM pg_catalog.pg_sleep(0.1);
        END;
    END LOOP;
END
$$;
