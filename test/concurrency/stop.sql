-- pgbench script: the next order's stop (each order gets exactly one).
-- The shared advisory lock is the start gate: every client waits at its
-- first call until the test opens the gate, so all sessions start together.
SELECT pg_advisory_xact_lock_shared(2104);
SELECT public.race_try('stop', nextval('public.race_next_stop'));
