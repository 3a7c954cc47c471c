-- test/sql/31_search_path.sql - a hostile search_path cannot reach inside (issue 5).
--
-- As the application role, a schema "evil" shadows the functions and
-- operators the extension's code uses (now, lower, btrim, length,
-- jsonb_typeof, format, sum, =, <>, <, <=, ||, + ...) and the table names
-- it reads; every shadow records in evil.ran that it ran.  With evil ahead
-- of pg_catalog in search_path, the whole lifecycle runs through the API
-- (deferred checks made immediate so they run under the hostile path too),
-- and not one shadow runs.
BEGIN;
\ir ../fixtures/setup.psql
SELECT plan(19);

-- Every SECURITY DEFINER function and every plpgsql/SQL routine pins
-- search_path, except run_expiry, which COMMITs and so cannot: its source
-- must write every operator as OPERATOR(pg_catalog.x).
SELECT is(ARRAY(SELECT p.oid::regprocedure::text
                  FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
                 WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'milestones')
                   AND (p.prosecdef OR p.prolang IN (SELECT oid FROM pg_language WHERE lanname IN ('plpgsql','sql')))
                   AND NOT COALESCE('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)
                 ORDER BY 1),
          ARRAY['milestones.run_expiry(integer)'],
          'every SECURITY DEFINER, plpgsql and SQL function pins search_path = pg_catalog, pg_temp (run_expiry cannot)');
SELECT ok((SELECT prosrc FROM pg_proc WHERE oid = 'milestones.run_expiry'::regproc)
           !~ '[^)]\s(=|<>|<|>|<=|>=|\+|-|\|\|)\s',
          'run_expiry writes every operator schema-qualified');

CREATE ROLE ms_t_evil_app LOGIN IN ROLE milestones_app;
CREATE ROLE ms_t_evil_support LOGIN IN ROLE milestones_support;
DO $$ BEGIN EXECUTE format('GRANT CREATE, TEMP ON DATABASE %I TO ms_t_evil_app', current_database()); END $$;

-- The attacker's schema, made by the application role.
SET LOCAL ROLE ms_t_evil_app;
CREATE SCHEMA evil;
CREATE TABLE evil.ran (what text, at timestamptz DEFAULT pg_catalog.clock_timestamp());
GRANT USAGE ON SCHEMA evil TO PUBLIC;
GRANT INSERT, SELECT ON evil.ran TO PUBLIC;
CREATE FUNCTION evil.log(w text) RETURNS void LANGUAGE sql AS $f$ INSERT INTO evil.ran (what) VALUES (w) $f$;

-- Shadow functions: log, then behave like the original (so nothing else breaks).
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql AS $f$ SELECT evil.log('now'); SELECT pg_catalog.now() $f$;
CREATE FUNCTION evil.lower(text) RETURNS text LANGUAGE sql AS $f$ SELECT evil.log('lower'); SELECT pg_catalog.lower($1) $f$;
CREATE FUNCTION evil.btrim(text) RETURNS text LANGUAGE sql AS $f$ SELECT evil.log('btrim'); SELECT pg_catalog.btrim($1) $f$;
CREATE FUNCTION evil.length(text) RETURNS integer LANGUAGE sql AS $f$ SELECT evil.log('length'); SELECT pg_catalog.length($1) $f$;
CREATE FUNCTION evil."left"(text, integer) RETURNS text LANGUAGE sql AS $f$ SELECT evil.log('left'); SELECT pg_catalog."left"($1, $2) $f$;
CREATE FUNCTION evil.jsonb_typeof(jsonb) RETURNS text LANGUAGE sql AS $f$ SELECT evil.log('jsonb_typeof'); SELECT pg_catalog.jsonb_typeof($1) $f$;
CREATE FUNCTION evil.jsonb_array_length(jsonb) RETURNS integer LANGUAGE sql AS $f$ SELECT evil.log('jsonb_array_length'); SELECT pg_catalog.jsonb_array_length($1) $f$;
CREATE FUNCTION evil.format(text) RETURNS text LANGUAGE sql AS $f$ SELECT evil.log('format'); SELECT pg_catalog.format($1) $f$;
CREATE FUNCTION evil.format(text, VARIADIC text[]) RETURNS text LANGUAGE sql AS $f$ SELECT evil.log('format/v'); SELECT pg_catalog.format($1, VARIADIC $2) $f$;
CREATE FUNCTION evil.quote_literal(text) RETURNS text LANGUAGE sql AS $f$ SELECT evil.log('quote_literal'); SELECT pg_catalog.quote_literal($1) $f$;
CREATE FUNCTION evil.round(numeric, integer) RETURNS numeric LANGUAGE sql AS $f$ SELECT evil.log('round'); SELECT pg_catalog.round($1, $2) $f$;
CREATE FUNCTION evil.trunc(numeric) RETURNS numeric LANGUAGE sql AS $f$ SELECT evil.log('trunc'); SELECT pg_catalog.trunc($1) $f$;
CREATE FUNCTION evil.isfinite(timestamptz) RETURNS boolean LANGUAGE sql AS $f$ SELECT evil.log('isfinite'); SELECT pg_catalog.isfinite($1) $f$;
CREATE FUNCTION evil.nextval(regclass) RETURNS bigint LANGUAGE sql AS $f$ SELECT evil.log('nextval'); SELECT pg_catalog.nextval($1) $f$;
CREATE FUNCTION evil.nextval(text) RETURNS bigint LANGUAGE sql AS $f$ SELECT evil.log('nextval/text'); SELECT pg_catalog.nextval($1::regclass) $f$;
CREATE FUNCTION evil.pg_notify(text, text) RETURNS void LANGUAGE sql AS $f$ SELECT evil.log('pg_notify'); SELECT pg_catalog.pg_notify($1, $2) $f$;
CREATE FUNCTION evil.to_jsonb(bigint) RETURNS jsonb LANGUAGE sql AS $f$ SELECT evil.log('to_jsonb'); SELECT pg_catalog.to_jsonb($1) $f$;
CREATE FUNCTION evil.make_interval(years int DEFAULT 0, months int DEFAULT 0, weeks int DEFAULT 0, days int DEFAULT 0,
                                   hours int DEFAULT 0, mins int DEFAULT 0, secs double precision DEFAULT 0)
    RETURNS interval LANGUAGE sql AS $f$ SELECT evil.log('make_interval'); SELECT pg_catalog.make_interval($1, $2, $3, $4, $5, $6, $7) $f$;
CREATE FUNCTION evil.make_interval(days smallint) RETURNS interval LANGUAGE sql AS $f$ SELECT evil.log('make_interval/s'); SELECT pg_catalog.make_interval(days => $1) $f$;
CREATE FUNCTION evil."coalesce"(anyelement, anyelement) RETURNS anyelement LANGUAGE sql AS $f$ SELECT evil.log('coalesce'); SELECT COALESCE($1, $2) $f$;
CREATE FUNCTION evil.array_append(bigint[], bigint) RETURNS bigint[] LANGUAGE sql AS $f$ SELECT evil.log('array_append'); SELECT pg_catalog.array_append($1, $2) $f$;
CREATE FUNCTION evil._sum_step(numeric, numeric) RETURNS numeric LANGUAGE sql AS $f$ SELECT evil.log('sum'); SELECT COALESCE($1, 0) OPERATOR(pg_catalog.+) $2 $f$;
CREATE AGGREGATE evil.sum(numeric) (SFUNC = evil._sum_step, STYPE = numeric);

-- Shadow operators.
CREATE FUNCTION evil.t_eq(text, text) RETURNS boolean LANGUAGE sql AS $f$ SELECT evil.log('= text'); SELECT pg_catalog.texteq($1, $2) $f$;
CREATE FUNCTION evil.t_ne(text, text) RETURNS boolean LANGUAGE sql AS $f$ SELECT evil.log('<> text'); SELECT pg_catalog.textne($1, $2) $f$;
CREATE FUNCTION evil.t_cat(text, text) RETURNS text LANGUAGE sql AS $f$ SELECT evil.log('|| text'); SELECT pg_catalog.textcat($1, $2) $f$;
CREATE FUNCTION evil.t_re(text, text) RETURNS boolean LANGUAGE sql AS $f$ SELECT evil.log('~ text'); SELECT pg_catalog.textregexeq($1, $2) $f$;
CREATE FUNCTION evil.t_nre(text, text) RETURNS boolean LANGUAGE sql AS $f$ SELECT evil.log('!~ text'); SELECT pg_catalog.textregexne($1, $2) $f$;
CREATE FUNCTION evil.i8_eq(bigint, bigint) RETURNS boolean LANGUAGE sql AS $f$ SELECT evil.log('= bigint'); SELECT pg_catalog.int8eq($1, $2) $f$;
CREATE FUNCTION evil.i8_ne(bigint, bigint) RETURNS boolean LANGUAGE sql AS $f$ SELECT evil.log('<> bigint'); SELECT pg_catalog.int8ne($1, $2) $f$;
CREATE FUNCTION evil.i8_le(bigint, bigint) RETURNS boolean LANGUAGE sql AS $f$ SELECT evil.log('<= bigint'); SELECT pg_catalog.int8le($1, $2) $f$;
CREATE FUNCTION evil.i4_lt(integer, integer) RETURNS boolean LANGUAGE sql AS $f$ SELECT evil.log('< int'); SELECT pg_catalog.int4lt($1, $2) $f$;
CREATE FUNCTION evil.i4_ge(integer, integer) RETURNS boolean LANGUAGE sql AS $f$ SELECT evil.log('>= int'); SELECT pg_catalog.int4ge($1, $2) $f$;
CREATE FUNCTION evil.i4_pl(integer, integer) RETURNS integer LANGUAGE sql AS $f$ SELECT evil.log('+ int'); SELECT pg_catalog.int4pl($1, $2) $f$;
CREATE FUNCTION evil.n_le(numeric, numeric) RETURNS boolean LANGUAGE sql AS $f$ SELECT evil.log('<= numeric'); SELECT pg_catalog.numeric_le($1, $2) $f$;
CREATE FUNCTION evil.n_ne(numeric, numeric) RETURNS boolean LANGUAGE sql AS $f$ SELECT evil.log('<> numeric'); SELECT pg_catalog.numeric_ne($1, $2) $f$;
CREATE FUNCTION evil.ts_pl(timestamptz, interval) RETURNS timestamptz LANGUAGE sql AS $f$ SELECT evil.log('+ timestamptz'); SELECT pg_catalog.timestamptz_pl_interval($1, $2) $f$;
CREATE FUNCTION evil.ts_ge(timestamptz, timestamptz) RETURNS boolean LANGUAGE sql AS $f$ SELECT evil.log('>= timestamptz'); SELECT pg_catalog.timestamptz_ge($1, $2) $f$;
CREATE FUNCTION evil.j_ne(jsonb, jsonb) RETURNS boolean LANGUAGE sql AS $f$ SELECT evil.log('<> jsonb'); SELECT pg_catalog.jsonb_ne($1, $2) $f$;
CREATE OPERATOR evil.=  (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.t_eq);
CREATE OPERATOR evil.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.t_ne);
CREATE OPERATOR evil.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.t_cat);
CREATE OPERATOR evil.~  (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.t_re);
CREATE OPERATOR evil.!~ (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.t_nre);
CREATE OPERATOR evil.=  (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.i8_eq);
CREATE OPERATOR evil.<> (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.i8_ne);
CREATE OPERATOR evil.<= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.i8_le);
CREATE OPERATOR evil.<  (LEFTARG = integer, RIGHTARG = integer, FUNCTION = evil.i4_lt);
CREATE OPERATOR evil.>= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = evil.i4_ge);
CREATE OPERATOR evil.+  (LEFTARG = integer, RIGHTARG = integer, FUNCTION = evil.i4_pl);
CREATE OPERATOR evil.<= (LEFTARG = numeric, RIGHTARG = numeric, FUNCTION = evil.n_le);
CREATE OPERATOR evil.<> (LEFTARG = numeric, RIGHTARG = numeric, FUNCTION = evil.n_ne);
CREATE OPERATOR evil.+  (LEFTARG = timestamptz, RIGHTARG = interval, FUNCTION = evil.ts_pl);
CREATE OPERATOR evil.>= (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = evil.ts_ge);
CREATE OPERATOR evil.<> (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = evil.j_ne);

-- Shadow tables, poisoned: read by mistake, they would change the outcome.
CREATE TABLE evil.settings (singleton boolean, min_order_total numeric, max_milestones integer);
INSERT INTO evil.settings VALUES (true, 1000000, 0);
CREATE TABLE evil.orders (order_id bigint, state text);
INSERT INTO evil.orders SELECT g, 'completed' FROM generate_series(1, 100) g;
CREATE TABLE evil.order_milestones (order_id bigint, position smallint, state text);
CREATE TABLE evil.idempotency_keys (key text, function text, arguments jsonb, result jsonb);
CREATE TABLE evil.eligible_sellers (seller_id bigint, eligible boolean);
CREATE TABLE evil.cancellation_reasons (code text, active boolean);
-- pg_temp comes after pg_catalog in the pinned path: shadow tables there too.
CREATE TEMP TABLE orders (order_id bigint, state text);
CREATE TEMP TABLE settings (singleton boolean, min_order_total numeric, max_milestones integer);
INSERT INTO settings VALUES (true, 1000000, 0);
CREATE TEMP TABLE ledger_entries (order_id bigint);
CREATE TEMP TABLE events (order_id bigint);
RESET ROLE;

-- The trap works: with evil ahead of pg_catalog, unqualified names hit it.
SET LOCAL search_path = evil, pg_catalog, public;
\o /dev/null
SELECT lower('X'), 'a'::text = 'a'::text, 1 + 1, now(), sum(x) FROM (VALUES (1.0)) v(x);
\o
RESET search_path;
SELECT is((SELECT array_agg(DISTINCT what ORDER BY what) FROM evil.ran),
          ARRAY['+ int', '= text', 'lower', 'now', 'sum'], 'the shadows do run when a query uses unqualified names');
DELETE FROM evil.ran;

-- The whole lifecycle, as the application and support roles, under the
-- hostile path.  After each call :chk runs the deferred order checks
-- (SET CONSTRAINTS ALL IMMEDIATE fires them at once) under the same path.
-- (Not IMMEDIATE for the whole run: the API's transitions span several
-- statements, and the check is meant for their end.)
\set chk 'SET CONSTRAINTS ALL IMMEDIATE; SET CONSTRAINTS ALL DEFERRED;'
SET LOCAL ROLE ms_t_evil_app;
SET LOCAL search_path = evil, pg_catalog, public;
\o /dev/null
SELECT milestones.create_offer(10, 20, 'design',
    '[{"name":"Storyboard","days":3,"amount":"100.00"},{"name":"Animation","days":7,"amount":"150.00"},{"name":"Final cut","days":5,"amount":"250.00"}]',
    1, 'USD', 'evil-key-1') AS a \gset
:chk
SELECT milestones.create_offer(10, 20, 'design',
    '[{"name":"Storyboard","days":3,"amount":"100.00"},{"name":"Animation","days":7,"amount":"150.00"},{"name":"Final cut","days":5,"amount":"250.00"}]',
    1, 'USD', 'evil-key-1') AS a_retry \gset
:chk
SELECT milestones.create_offer(10, 20, 'design', '[{"name":"Logo","days":2,"amount":"120.00"},{"name":"Brand book","days":9,"amount":"80.50"}]') AS b \gset
:chk
SELECT milestones.create_offer(10, 20, 'design', '[{"name":"Poster","days":2,"amount":"300"}]', NULL, 'EUR') AS c \gset
:chk
SELECT milestones.create_offer(10, 20, 'design', '[{"name":"Poster","days":2,"amount":"300"}]') AS d \gset
:chk
SELECT milestones.create_offer(10, 20, 'design', '[{"name":"Poster","days":2,"amount":"300"}]') AS e \gset
:chk
SELECT milestones.create_offer(10, 20, 'design', '[{"name":"Poster","days":2,"amount":"300"}]') AS f \gset
:chk
-- a: finished, with a revision and a retried delivery
SELECT milestones.place_order(:a, 20, 'evil-key-2'); :chk
SELECT milestones.deliver(:a, 10, 'v1'); :chk
SELECT milestones.request_revision(:a, 20, 'again'); :chk
SELECT milestones.deliver(:a, 10, 'v2', 'evil-key-3'); :chk
SELECT milestones.deliver(:a, 10, 'v2', 'evil-key-3'); :chk
SELECT milestones.accept(:a, 20); :chk
SELECT milestones.deliver(:a, 10); :chk
SELECT milestones.accept(:a, 20); :chk
SELECT milestones.deliver(:a, 10); :chk
SELECT milestones.payout(:a); :chk
SELECT milestones.accept(:a, 20); :chk
SELECT milestones.payout(:a); :chk
-- b: stopped; c: withdrawn; d: declined
SELECT milestones.place_order(:b, 20); :chk
SELECT milestones.deliver(:b, 10); :chk
SELECT milestones.stop(:b, 20); :chk
SELECT milestones.withdraw_offer(:c, 10); :chk
SELECT milestones.decline_offer(:d, 20); :chk
-- e: delivered, to be cancelled by support; f: delivered, to expire
SELECT milestones.place_order(:e, 20); :chk
SELECT milestones.deliver(:e, 10); :chk
SELECT milestones.place_order(:f, 20); :chk
SELECT milestones.deliver(:f, 10); :chk
SELECT * FROM milestones.order_status;
SELECT * FROM milestones.awaiting_response;
SELECT * FROM milestones.payouts;
SELECT * FROM milestones.ledger;
RESET ROLE;
SET LOCAL ROLE ms_t_evil_support;
SET LOCAL search_path = evil, pg_catalog, public;
SELECT milestones.cancel(:e, 'agent-9', 'mutual_agreement', 'evil path'); :chk
SELECT milestones.set_cancellation_reason('evil_reason', 'Made under a hostile path.'); :chk
SELECT milestones.set_seller_eligibility(77, true); :chk
SELECT milestones.set_category_eligibility('writing', true); :chk
SELECT * FROM milestones.check_invariants();
RESET ROLE;
-- the owner's sweep, same path
SET LOCAL search_path = evil, pg_catalog, public;
SELECT milestones.expire_overdue('2030-02-01 00:00+00'); :chk
\o
RESET search_path;

SELECT is((SELECT count(*)::int FROM evil.ran), 0, 'not one shadow function or operator ran inside the extension');
SELECT is((SELECT string_agg(DISTINCT what, ', ') FROM evil.ran), NULL, 'no shadow names in the record');
SELECT is(:a_retry::bigint, :a::bigint, 'the retried offer returned the first id');
SELECT is((SELECT state || '/' || reason FROM milestones.order_status WHERE order_id = :a), 'completed/finished', 'a finished');
SELECT is((SELECT state || '/' || reason FROM milestones.order_status WHERE order_id = :b), 'completed/stopped', 'b stopped');
SELECT is((SELECT state FROM milestones.order_status WHERE order_id = :c), 'withdrawn', 'c withdrawn');
SELECT is((SELECT state FROM milestones.order_status WHERE order_id = :d), 'declined', 'd declined');
SELECT is((SELECT state || '/' || reason FROM milestones.order_status WHERE order_id = :e), 'cancelled/mutual_agreement', 'e cancelled by support');
SELECT is((SELECT state || '/' || reason FROM milestones.order_status WHERE order_id = :f), 'completed/expired', 'f expired by the sweep');
SELECT is((SELECT paid_out FROM milestones.order_status WHERE order_id = :a), 500.00, 'a paid 500.00 out');
SELECT is((SELECT paid_out || '/' || refunded FROM milestones.order_status WHERE order_id = :e), '0.00/300.00', 'e refunded its held 300.00');
SELECT is((SELECT count(*)::int FROM milestones.events WHERE order_id = :a AND event = 'delivered'), 4, 'the retried delivery ran once');
SELECT is((SELECT count(*)::int FROM milestones.orders), 6, 'exactly six orders: the retried offer made none');
SELECT is((SELECT count(*)::int FROM milestones.check_invariants()), 0, 'check_invariants() is empty');
SELECT is((SELECT min_order_total FROM milestones.settings), 100.00, 'the real settings were used (not the poisoned shadow)');
SELECT is((SELECT count(*)::int FROM evil.orders WHERE state <> 'completed') + (SELECT count(*)::int FROM pg_temp.orders), 0,
          'the shadow tables were not written');
SELECT * FROM finish();
ROLLBACK;
