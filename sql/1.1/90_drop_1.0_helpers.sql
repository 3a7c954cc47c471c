-------------------------------------------------------------------------------
-- The 1.0 PL/pgSQL engine's helpers, which nothing calls in 1.1.
--
-- Every order action is a C function now (10_engine.sql, src/actions.c):
-- the order lock, the state errors, the ledger postings, starting and
-- completing milestones, the payout, the events, the idempotency keys and
-- the status row are done by the C engine (src/engine.c, src/ledger.c).
-- These helpers are dropped so that no second, stale statement of a rule
-- stays behind.  The argument checks (_not_null, _check_id, _check_text),
-- _fee and _order_problems stay: PL/pgSQL functions of 1.1 and the commit
-- check still use them.
-------------------------------------------------------------------------------
DROP FUNCTION @extschema@._end_offer(bigint, bigint, text, text, text, text);
DROP FUNCTION @extschema@._complete(@extschema@.orders, smallint, text, timestamptz);
DROP FUNCTION @extschema@._settle(@extschema@.orders);
DROP FUNCTION @extschema@._start(@extschema@.orders, smallint);
DROP FUNCTION @extschema@._post(@extschema@.orders, smallint, text, text[], numeric[]);
DROP FUNCTION @extschema@._event(@extschema@.orders, smallint, text, text, bigint, text, jsonb);
DROP FUNCTION @extschema@._open_delivery(@extschema@.orders, text);
DROP FUNCTION @extschema@._current_milestone(bigint);
DROP FUNCTION @extschema@._state_error(@extschema@.orders, text, text);
DROP FUNCTION @extschema@._lock_order(bigint, bigint, text);
DROP FUNCTION @extschema@._status(bigint);
DROP FUNCTION @extschema@._idem_claim(text, text, jsonb);
DROP FUNCTION @extschema@._idem_store(text, jsonb);
