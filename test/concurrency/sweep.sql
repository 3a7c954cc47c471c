-- pgbench script: one expiry sweep of a small batch, deadline passed
-- (after the start gate, as in accept.sql).
SELECT pg_advisory_xact_lock_shared(2104);
SELECT public.race_sweep(:batch);
