-- pgbench script: the next order's cancel_milestone by a support login
-- (each order gets exactly one; its position is the order's target), after
-- the start gate as in accept.sql.
SELECT pg_advisory_xact_lock_shared(2104);
SELECT public.race_try('cancel_milestone', nextval('public.race_next_cancel'));
