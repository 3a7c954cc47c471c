-- test/sql/32_bad_input.sql - garbage in, a clear error out (issue 5, SPEC section 4).
--
-- Table-driven: each case is a statement and the SQLSTATE it must end
-- with ('00000' = it works).  Every case is run in its own subtransaction
-- by pg_temp.run_cases(), which also checks that a refused call wrote
-- nothing (row counts and contents of every table unchanged).
--
-- What happens with ids beyond bigint: a literal too large for bigint is
-- a numeric, so milestones.accept(9223372036854775808, 20) finds no such
-- function (42883); cast to bigint it fails in the cast (22003).  Either
-- way the call never starts.  JSON that does not parse (NaN, Infinity,
-- \u0000, too deep) fails in the jsonb cast (22P02, 22P05, 54001) before
-- the call too.
BEGIN;
\ir ../fixtures/setup.psql

-- Orders in the states the calls need.
SELECT pg_temp.offer3() AS off \gset
SELECT pg_temp.offer3() AS act \gset
SELECT pg_temp.offer3() AS del \gset
\o /dev/null
SELECT milestones.place_order(:act, 20);
SELECT milestones.place_order(:del, 20);
SELECT milestones.deliver(:del, 10);
\o
CREATE TEMP TABLE big AS SELECT repeat('x', 10 * 1024 * 1024) AS s;

CREATE TEMP TABLE cases (id serial PRIMARY KEY, label text NOT NULL, sql text NOT NULL, want text NOT NULL);

-- In the statements, {off}, {act} and {del} stand for the orders above
-- and {ms} for a valid milestones list.
CREATE TEMP TABLE vars AS SELECT :off::bigint AS off, :act::bigint AS act, :del::bigint AS del;
INSERT INTO cases (label, sql, want) VALUES
-- NULL in every argument of every function (the API is not STRICT)
('create_offer: NULL seller_id',  $$SELECT milestones.create_offer(NULL, 20, 'design', {ms})$$, '22023'),
('create_offer: NULL buyer_id',   $$SELECT milestones.create_offer(10, NULL, 'design', {ms})$$, '22023'),
('create_offer: NULL category',   $$SELECT milestones.create_offer(10, 20, NULL, {ms})$$, '22023'),
('create_offer: NULL milestones', $$SELECT milestones.create_offer(10, 20, 'design', NULL)$$, '22023'),
('create_offer: NULL revisions means unlimited', $$SELECT milestones.create_offer(10, 20, 'design', {ms}, NULL)$$, '00000'),
('create_offer: NULL currency (it has a default)', $$SELECT milestones.create_offer(10, 20, 'design', {ms}, 0, NULL)$$, '22023'),
('create_offer: NULL idempotency_key means none', $$SELECT milestones.create_offer(10, 20, 'design', {ms}, 0, 'USD', NULL)$$, '00000'),
('withdraw_offer: NULL order_id', $$SELECT milestones.withdraw_offer(NULL, 10)$$, '22023'),
('withdraw_offer: NULL seller_id', $$SELECT milestones.withdraw_offer({off}, NULL)$$, '22023'),
('decline_offer: NULL order_id',  $$SELECT milestones.decline_offer(NULL, 20)$$, '22023'),
('decline_offer: NULL buyer_id',  $$SELECT milestones.decline_offer({off}, NULL)$$, '22023'),
('place_order: NULL order_id',    $$SELECT milestones.place_order(NULL, 20)$$, '22023'),
('place_order: NULL buyer_id',    $$SELECT milestones.place_order({off}, NULL)$$, '22023'),
('deliver: NULL order_id',        $$SELECT milestones.deliver(NULL, 10)$$, '22023'),
('deliver: NULL seller_id',       $$SELECT milestones.deliver({act}, NULL)$$, '22023'),
('deliver: NULL note is no note', $$SELECT milestones.deliver({act}, 10, NULL, NULL)$$, '00000'),
('accept: NULL order_id',         $$SELECT milestones.accept(NULL, 20)$$, '22023'),
('accept: NULL buyer_id',         $$SELECT milestones.accept({del}, NULL)$$, '22023'),
('request_revision: NULL order_id', $$SELECT milestones.request_revision(NULL, 20)$$, '22023'),
('request_revision: NULL buyer_id', $$SELECT milestones.request_revision({del}, NULL)$$, '22023'),
('request_revision: NULL note is no note', $$SELECT milestones.request_revision({del}, 20, NULL, NULL)$$, '00000'),
('stop: NULL order_id',           $$SELECT milestones.stop(NULL, 20)$$, '22023'),
('stop: NULL buyer_id',           $$SELECT milestones.stop({del}, NULL)$$, '22023'),
('cancel: NULL order_id',         $$SELECT milestones.cancel(NULL, 'agent', 'mutual_agreement')$$, '22023'),
('cancel: NULL agent',            $$SELECT milestones.cancel({off}, NULL, 'mutual_agreement')$$, '22023'),
('cancel: NULL reason',           $$SELECT milestones.cancel({off}, 'agent', NULL)$$, '22023'),
('cancel: NULL note is no note',  $$SELECT milestones.cancel({off}, 'agent', 'mutual_agreement', NULL, NULL)$$, '00000'),
('expire_overdue: NULL as_of (it has a default)', $$SELECT milestones.expire_overdue(NULL)$$, '22023'),
('expire_overdue: NULL batch (it has a default)', $$SELECT milestones.expire_overdue(milestones.now(), NULL)$$, '22023'),
('schedule_expiry: NULL schedule (it has a default)', $$SELECT milestones.schedule_expiry(NULL)$$, '22023'),
('payout: NULL order_id',         $$SELECT milestones.payout(NULL)$$, '22023'),
('set_seller_eligibility: NULL seller_id', $$SELECT milestones.set_seller_eligibility(NULL, true)$$, '22023'),
('set_seller_eligibility: NULL eligible',  $$SELECT milestones.set_seller_eligibility(10, NULL)$$, '22023'),
('set_category_eligibility: NULL category', $$SELECT milestones.set_category_eligibility(NULL, true)$$, '22023'),
('set_category_eligibility: NULL eligible', $$SELECT milestones.set_category_eligibility('design', NULL)$$, '22023'),
('set_cancellation_reason: NULL code',        $$SELECT milestones.set_cancellation_reason(NULL, 'd')$$, '22023'),
('set_cancellation_reason: NULL description', $$SELECT milestones.set_cancellation_reason('x_y', NULL)$$, '22023'),
('set_cancellation_reason: NULL active (it has a default)', $$SELECT milestones.set_cancellation_reason('x_y', 'd', NULL)$$, '22023'),
-- empty and blank strings
('create_offer: empty category',  $$SELECT milestones.create_offer(10, 20, '', {ms})$$, '22023'),
('create_offer: empty currency',  $$SELECT milestones.create_offer(10, 20, 'design', {ms}, 0, '')$$, '22023'),
('create_offer: empty idempotency_key', $$SELECT milestones.create_offer(10, 20, 'design', {ms}, 0, 'USD', '')$$, '22023'),
('create_offer: empty name',      $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"","days":3,"amount":"150"}]')$$, '22023'),
('create_offer: empty amount',    $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":3,"amount":""}]')$$, '22023'),
('cancel: empty agent',           $$SELECT milestones.cancel({off}, '', 'mutual_agreement')$$, '22023'),
('cancel: blank agent',           $$SELECT milestones.cancel({off}, E' \t ', 'mutual_agreement')$$, '22023'),
('cancel: empty reason',          $$SELECT milestones.cancel({off}, 'agent', '')$$, '22023'),
('set_category_eligibility: empty category', $$SELECT milestones.set_category_eligibility('', true)$$, '22023'),
('set_cancellation_reason: empty code',      $$SELECT milestones.set_cancellation_reason('', 'd')$$, '22023'),
('set_cancellation_reason: empty description', $$SELECT milestones.set_cancellation_reason('x_y', '')$$, '22023'),
('schedule_expiry: empty schedule (no pg_cron here)', $$SELECT milestones.schedule_expiry('')$$, '55000'),
('deliver: empty note is a note', $$SELECT milestones.deliver({act}, 10, '')$$, '00000'),
-- 10 MB strings
('create_offer: 10 MB category',  $$SELECT milestones.create_offer(10, 20, (SELECT s FROM big), {ms})$$, '22023'),
('create_offer: 10 MB currency',  $$SELECT milestones.create_offer(10, 20, 'design', {ms}, 0, (SELECT s FROM big))$$, '22023'),
('create_offer: 10 MB idempotency_key', $$SELECT milestones.create_offer(10, 20, 'design', {ms}, 0, 'USD', (SELECT s FROM big))$$, '22023'),
('create_offer: 10 MB name',      $$SELECT milestones.create_offer(10, 20, 'design', jsonb_build_array(jsonb_build_object('name', (SELECT s FROM big), 'days', 3, 'amount', 150)))$$, '22023'),
('create_offer: 10 MB amount string', $$SELECT milestones.create_offer(10, 20, 'design', jsonb_build_array(jsonb_build_object('name', 'A', 'days', 3, 'amount', (SELECT s FROM big))))$$, '22023'),
('create_offer: 10 MB of digits as amount', $$SELECT milestones.create_offer(10, 20, 'design', jsonb_build_array(jsonb_build_object('name', 'A', 'days', 3, 'amount', repeat('9', 10485760))))$$, '22023'),
('create_offer: 10 MB key name',  $$SELECT milestones.create_offer(10, 20, 'design', jsonb_build_array(jsonb_build_object('name', 'A', 'days', 3, 'amount', 150, (SELECT s FROM big), 1)))$$, '22023'),
('create_offer: 100000 milestones', $$SELECT milestones.create_offer(10, 20, 'design', (SELECT jsonb_agg(jsonb_build_object('name', 'A', 'days', 3, 'amount', 150)) FROM generate_series(1, 100000)))$$, '22023'),
('deliver: 10 MB note',           $$SELECT milestones.deliver({act}, 10, (SELECT s FROM big))$$, '22023'),
('request_revision: 10 MB note',  $$SELECT milestones.request_revision({del}, 20, (SELECT s FROM big))$$, '22023'),
('cancel: 10 MB agent',           $$SELECT milestones.cancel({off}, (SELECT s FROM big), 'mutual_agreement')$$, '22023'),
('cancel: 10 MB reason',          $$SELECT milestones.cancel({off}, 'agent', (SELECT s FROM big))$$, '22023'),
('cancel: 10 MB note',            $$SELECT milestones.cancel({off}, 'agent', 'mutual_agreement', (SELECT s FROM big))$$, '22023'),
('accept: 10 MB idempotency_key', $$SELECT milestones.accept({del}, 20, (SELECT s FROM big))$$, '22023'),
('set_category_eligibility: 10 MB category', $$SELECT milestones.set_category_eligibility((SELECT s FROM big), true)$$, '22023'),
('set_cancellation_reason: 10 MB code', $$SELECT milestones.set_cancellation_reason((SELECT s FROM big), 'd')$$, '22023'),
('set_cancellation_reason: 10 MB description', $$SELECT milestones.set_cancellation_reason('x_y', (SELECT s FROM big))$$, '22023'),
-- invalid and deeply nested JSON, wrong JSON types
('create_offer: text that is not JSON', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":')$$, '22P02'),
('create_offer: NaN is not JSON', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":3,"amount":NaN}]')$$, '22P02'),
('create_offer: \u0000 in a name', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A\u0000B","days":3,"amount":150}]')$$, '22P05'),
('create_offer: JSON nested 100000 deep', $$SELECT milestones.create_offer(10, 20, 'design', (repeat('[', 100000) || repeat(']', 100000))::jsonb)$$, '54001'),
('create_offer: an array nested 1000 deep', $$SELECT milestones.create_offer(10, 20, 'design', (repeat('[', 1000) || repeat(']', 1000))::jsonb)$$, '22023'),
('create_offer: an amount nested 1000 deep', $$SELECT milestones.create_offer(10, 20, 'design', ('[{"name":"A","days":3,"amount":' || repeat('[', 1000) || '1' || repeat(']', 1000) || '}]')::jsonb)$$, '22023'),
('create_offer: a name nested in objects', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":{"name":{"name":"A"}},"days":3,"amount":150}]')$$, '22023'),
('create_offer: milestones a JSON string', $$SELECT milestones.create_offer(10, 20, 'design', '"A"')$$, '22023'),
('create_offer: milestones a JSON number', $$SELECT milestones.create_offer(10, 20, 'design', '42')$$, '22023'),
('create_offer: milestones JSON null', $$SELECT milestones.create_offer(10, 20, 'design', 'null')$$, '22023'),
('create_offer: milestones an empty object', $$SELECT milestones.create_offer(10, 20, 'design', '{}')$$, '22023'),
('create_offer: a null milestone', $$SELECT milestones.create_offer(10, 20, 'design', '[null]')$$, '22023'),
('create_offer: name null', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":null,"days":3,"amount":150}]')$$, '22023'),
('create_offer: name an array', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":["A"],"days":3,"amount":150}]')$$, '22023'),
('create_offer: days null', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":null,"amount":150}]')$$, '22023'),
('create_offer: days a boolean', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":true,"amount":150}]')$$, '22023'),
('create_offer: amount null', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":3,"amount":null}]')$$, '22023'),
('create_offer: amount an object', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":3,"amount":{"value":150}}]')$$, '22023'),
('create_offer: a missing amount', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":3}]')$$, '22023'),
('create_offer: duplicate keys (jsonb keeps the last)', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":3,"amount":1,"amount":150}]')$$, '00000'),
-- numeric extremes
('create_offer: amount 1e400', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":3,"amount":1e400}]')$$, '22023'),
('create_offer: amount -1e400', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":3,"amount":-1e400}]')$$, '22023'),
('create_offer: amount 1e-400', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":3,"amount":1e-400}]')$$, '22023'),
('create_offer: amount -0', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":3,"amount":-0},{"name":"B","days":3,"amount":150}]')$$, '22023'),
('create_offer: amount "-0.00"', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":3,"amount":"-0.00"},{"name":"B","days":3,"amount":150}]')$$, '22023'),
('create_offer: amount "NaN"', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":3,"amount":"NaN"}]')$$, '22023'),
('create_offer: amount "Infinity"', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":3,"amount":"Infinity"}]')$$, '22023'),
('create_offer: amount "-Infinity"', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":3,"amount":"-Infinity"}]')$$, '22023'),
('create_offer: amount "1e3"', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":3,"amount":"1e3"}]')$$, '22023'),
('create_offer: amount "0x10"', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":3,"amount":"0x10"}]')$$, '22023'),
('create_offer: amount " 150"', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":3,"amount":" 150"}]')$$, '22023'),
('create_offer: amount 999999999.99 (the most)', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":3,"amount":999999999.99}]')$$, '00000'),
('create_offer: amount 1000000000', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":3,"amount":1000000000}]')$$, '22023'),
('create_offer: three of the most (sum beyond one amount)', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":3,"amount":999999999.99},{"name":"B","days":3,"amount":999999999.99},{"name":"C","days":3,"amount":999999999.99}]')$$, '00000'),
('create_offer: days 1e400', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":1e400,"amount":150}]')$$, '22023'),
('create_offer: days -0', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":-0,"amount":150}]')$$, '22023'),
('create_offer: days 1.0000000000000000001', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":1.0000000000000000001,"amount":150}]')$$, '22023'),
('create_offer: days 3.0 (whole)', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"A","days":3.0,"amount":150}]')$$, '00000'),
('create_offer: revisions 2147483648', $$SELECT milestones.create_offer(10, 20, 'design', {ms}, 2147483648)$$, '42883'),
('create_offer: revisions int max', $$SELECT milestones.create_offer(10, 20, 'design', {ms}, 2147483647)$$, '00000'),
('create_offer: revisions int min', $$SELECT milestones.create_offer(10, 20, 'design', {ms}, -2147483648)$$, '22023'),
('expire_overdue: batch 0', $$SELECT milestones.expire_overdue(milestones.now(), 0)$$, '22023'),
('expire_overdue: as_of infinity', $$SELECT milestones.expire_overdue('infinity')$$, '22023'),
('expire_overdue: as_of -infinity', $$SELECT milestones.expire_overdue('-infinity')$$, '22023'),
-- ids: zero, negative, unknown, bigint's edges and beyond
('create_offer: seller 0', $$SELECT milestones.create_offer(0, 20, 'design', {ms})$$, '22023'),
('create_offer: buyer -1', $$SELECT milestones.create_offer(10, -1, 'design', {ms})$$, '22023'),
('create_offer: buyer bigint max', $$SELECT milestones.create_offer(10, 9223372036854775807, 'design', {ms})$$, '00000'),
('create_offer: seller bigint min', $$SELECT milestones.create_offer(-9223372036854775808, 20, 'design', {ms})$$, '22023'),
('place_order: order 0', $$SELECT milestones.place_order(0, 20)$$, '22023'),
('place_order: order -9223372036854775808', $$SELECT milestones.place_order(-9223372036854775808, 20)$$, '22023'),
('place_order: order bigint max (unknown)', $$SELECT milestones.place_order(9223372036854775807, 20)$$, 'P0002'),
('accept: order beyond bigint, as a literal', $$SELECT milestones.accept(9223372036854775808, 20)$$, '42883'),
('accept: order beyond bigint, cast', $$SELECT milestones.accept('9223372036854775808'::bigint, 20)$$, '22003'),
('accept: buyer beyond bigint, cast', $$SELECT milestones.accept({del}, '99999999999999999999'::bigint)$$, '22003'),
('payout: order bigint max (unknown)', $$SELECT milestones.payout(9223372036854775807)$$, 'P0002'),
('payout: order -1', $$SELECT milestones.payout(-1)$$, 'P0002'),
('set_seller_eligibility: seller 0', $$SELECT milestones.set_seller_eligibility(0, true)$$, '22023'),
('deliver: the buyer as seller', $$SELECT milestones.deliver({act}, 20)$$, '42501'),
-- very long and non-ASCII names
('create_offer: a 200-emoji name', $$SELECT milestones.create_offer(10, 20, 'design', jsonb_build_array(jsonb_build_object('name', repeat('🦄', 200), 'days', 3, 'amount', 150)))$$, '00000'),
('create_offer: a 201-emoji name', $$SELECT milestones.create_offer(10, 20, 'design', jsonb_build_array(jsonb_build_object('name', repeat('🦄', 201), 'days', 3, 'amount', 150)))$$, '22023'),
('create_offer: a name of combining marks', $$SELECT milestones.create_offer(10, 20, 'design', jsonb_build_array(jsonb_build_object('name', 'e' || repeat(U&'\0301', 150), 'days', 3, 'amount', 150)))$$, '00000'),
('create_offer: a right-to-left name', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"تصميم الشعار","days":3,"amount":150}]')$$, '00000'),
('create_offer: a name of zero-width spaces', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"\u200b\u200b","days":3,"amount":150}]')$$, '00000'),
('create_offer: a name of newlines and tabs', $$SELECT milestones.create_offer(10, 20, 'design', '[{"name":"\n\t\r","days":3,"amount":150}]')$$, '22023'),
('create_offer: a non-ASCII category not enabled', $$SELECT milestones.create_offer(10, 20, 'дизайн', {ms})$$, '0A000'),
('create_offer: a 101-character category', $$SELECT milestones.create_offer(10, 20, repeat('c', 101), {ms})$$, '22023'),
('create_offer: currency "ÜSD"', $$SELECT milestones.create_offer(10, 20, 'design', {ms}, 0, 'ÜSD')$$, '22023'),
('create_offer: currency "USDX"', $$SELECT milestones.create_offer(10, 20, 'design', {ms}, 0, 'USDX')$$, '22023'),
('set_category_eligibility: a non-ASCII category', $$SELECT milestones.set_category_eligibility('дизайн', true)$$, '00000'),
('set_category_eligibility: category with spaces around', $$SELECT milestones.set_category_eligibility(' design ', true)$$, '22023'),
('set_cancellation_reason: a non-ASCII code', $$SELECT milestones.set_cancellation_reason('причина', 'd')$$, '22023'),
('cancel: an unknown reason with quotes', $$SELECT milestones.cancel({off}, 'agent', $q$x'); DROP TABLE milestones.orders; --$q$)$$, '22023'),
('deliver: a note with SQL in it is just a note', $$SELECT milestones.deliver({act}, 10, $q$'); DELETE FROM milestones.orders; --$q$)$$, '00000'),
('create_offer: a 255-character idempotency key', $$SELECT milestones.create_offer(10, 20, 'design', {ms}, 0, 'USD', repeat('k', 255))$$, '00000'),
('create_offer: a 256-character idempotency key', $$SELECT milestones.create_offer(10, 20, 'design', {ms}, 0, 'USD', repeat('k', 256))$$, '22023'),
-- 1.1: cancel_milestone, order_status(order_id), set_setting
('cancel_milestone: NULL order_id', $$SELECT milestones.cancel_milestone(NULL, 2, 'agent', 'mutual_agreement')$$, '22023'),
('cancel_milestone: NULL position', $$SELECT milestones.cancel_milestone({act}, NULL, 'agent', 'mutual_agreement')$$, '22023'),
('cancel_milestone: NULL agent',    $$SELECT milestones.cancel_milestone({act}, 2, NULL, 'mutual_agreement')$$, '22023'),
('cancel_milestone: NULL reason',   $$SELECT milestones.cancel_milestone({act}, 2, 'agent', NULL)$$, '22023'),
('cancel_milestone: NULL note is no note', $$SELECT milestones.cancel_milestone({act}, 2, 'agent', 'mutual_agreement', NULL, NULL)$$, '00000'),
('cancel_milestone: the delivered milestone', $$SELECT milestones.cancel_milestone({del}, 1, 'agent', 'mutual_agreement')$$, '00000'),
('cancel_milestone: empty agent',   $$SELECT milestones.cancel_milestone({act}, 2, '', 'mutual_agreement')$$, '22023'),
('cancel_milestone: blank agent',   $$SELECT milestones.cancel_milestone({act}, 2, E' \t ', 'mutual_agreement')$$, '22023'),
('cancel_milestone: empty reason',  $$SELECT milestones.cancel_milestone({act}, 2, 'agent', '')$$, '22023'),
('cancel_milestone: empty idempotency_key', $$SELECT milestones.cancel_milestone({act}, 2, 'agent', 'mutual_agreement', NULL, '')$$, '22023'),
('cancel_milestone: 10 MB agent',   $$SELECT milestones.cancel_milestone({act}, 2, (SELECT s FROM big), 'mutual_agreement')$$, '22023'),
('cancel_milestone: 10 MB reason',  $$SELECT milestones.cancel_milestone({act}, 2, 'agent', (SELECT s FROM big))$$, '22023'),
('cancel_milestone: 10 MB note',    $$SELECT milestones.cancel_milestone({act}, 2, 'agent', 'mutual_agreement', (SELECT s FROM big))$$, '22023'),
('cancel_milestone: 10 MB idempotency_key', $$SELECT milestones.cancel_milestone({act}, 2, 'agent', 'mutual_agreement', NULL, (SELECT s FROM big))$$, '22023'),
('cancel_milestone: an unknown reason with quotes', $$SELECT milestones.cancel_milestone({act}, 2, 'agent', $q$x'); DROP TABLE milestones.orders; --$q$)$$, '22023'),
('cancel_milestone: a note with SQL in it is just a note', $$SELECT milestones.cancel_milestone({act}, 2, 'agent', 'mutual_agreement', $q$'); DELETE FROM milestones.orders; --$q$)$$, '00000'),
('cancel_milestone: order 0',       $$SELECT milestones.cancel_milestone(0, 2, 'agent', 'mutual_agreement')$$, '22023'),
('cancel_milestone: order bigint max (unknown)', $$SELECT milestones.cancel_milestone(9223372036854775807, 2, 'agent', 'mutual_agreement')$$, 'P0002'),
('cancel_milestone: position 0',    $$SELECT milestones.cancel_milestone({act}, 0, 'agent', 'mutual_agreement')$$, '22023'),
('cancel_milestone: position int min', $$SELECT milestones.cancel_milestone({act}, -2147483648, 'agent', 'mutual_agreement')$$, '22023'),
('cancel_milestone: position int max (unknown)', $$SELECT milestones.cancel_milestone({act}, 2147483647, 'agent', 'mutual_agreement')$$, 'P0002'),
('cancel_milestone: position beyond integer, as a literal', $$SELECT milestones.cancel_milestone({act}, 2147483648, 'agent', 'mutual_agreement')$$, '42883'),
('cancel_milestone: position 21 (beyond any offer)', $$SELECT milestones.cancel_milestone({act}, 21, 'agent', 'mutual_agreement')$$, 'P0002'),
('cancel_milestone: an offered order', $$SELECT milestones.cancel_milestone({off}, 2, 'agent', 'mutual_agreement')$$, '55000'),
('order_status: NULL order_id',     $$SELECT milestones.order_status(NULL)$$, '22023'),
('order_status: order 0',           $$SELECT milestones.order_status(0)$$, '22023'),
('order_status: order bigint min',  $$SELECT milestones.order_status(-9223372036854775808)$$, '22023'),
('order_status: order bigint max (unknown)', $$SELECT milestones.order_status(9223372036854775807)$$, 'P0002'),
('order_status: an active order',   $$SELECT milestones.order_status({act})$$, '00000'),
('set_setting: NULL name',          $$SELECT milestones.set_setting(NULL, '3')$$, '22023'),
('set_setting: NULL value',         $$SELECT milestones.set_setting('max_milestones', NULL)$$, '22023'),
('set_setting: empty name',         $$SELECT milestones.set_setting('', '3')$$, '22023'),
('set_setting: empty value',        $$SELECT milestones.set_setting('max_milestones', '')$$, '22023'),
('set_setting: unknown name',       $$SELECT milestones.set_setting('max_orders', '3')$$, '22023'),
('set_setting: the key column',     $$SELECT milestones.set_setting('singleton', 'false')$$, '22023'),
('set_setting: a quoted name',      $$SELECT milestones.set_setting('"max_milestones"', '3')$$, '22023'),
('set_setting: SQL in the name',    $$SELECT milestones.set_setting($q$max_milestones = 1, notify$q$, 'true')$$, '22023'),
('set_setting: SQL in the value',   $$SELECT milestones.set_setting('response_window', $q$5 days'; DROP TABLE milestones.orders; --$q$)$$, '22023'),
('set_setting: 10 MB name',         $$SELECT milestones.set_setting((SELECT s FROM big), '3')$$, '22023'),
('set_setting: 10 MB value',        $$SELECT milestones.set_setting('response_window', (SELECT s FROM big))$$, '22023'),
('set_setting: 10 MB of digits',    $$SELECT milestones.set_setting('min_order_total', repeat('9', 10485760))$$, '22023'),
('set_setting: max_milestones 6',   $$SELECT milestones.set_setting('max_milestones', '6')$$, '00000'),
('set_setting: max_milestones 21',  $$SELECT milestones.set_setting('max_milestones', '21')$$, '22023'),
('set_setting: max_milestones 2147483648', $$SELECT milestones.set_setting('max_milestones', '2147483648')$$, '22023'),
('set_setting: min_order_total 1e400', $$SELECT milestones.set_setting('min_order_total', '1e400')$$, '22023'),
('set_setting: min_order_total Infinity', $$SELECT milestones.set_setting('min_order_total', 'Infinity')$$, '22023'),
('set_setting: min_order_total NaN', $$SELECT milestones.set_setting('min_order_total', 'NaN')$$, '22023'),
('set_setting: min_order_total -0.01', $$SELECT milestones.set_setting('min_order_total', '-0.01')$$, '22023'),
('set_setting: min_order_total 0.001', $$SELECT milestones.set_setting('min_order_total', '0.001')$$, '22023'),
('set_setting: seller_fee_rate 0.99999', $$SELECT milestones.set_setting('seller_fee_rate', '0.99999')$$, '00000'),
('set_setting: seller_fee_rate -0.1', $$SELECT milestones.set_setting('seller_fee_rate', '-0.1')$$, '22023'),
('set_setting: response_window 8 days', $$SELECT milestones.set_setting('response_window', '8 days')$$, '00000'),
('set_setting: response_window -1 day', $$SELECT milestones.set_setting('response_window', '-1 day')$$, '22023'),
('set_setting: response_window 1000000 years', $$SELECT milestones.set_setting('response_window', '1000000 years')$$, '22023'),
('set_setting: expiry_batch 100001', $$SELECT milestones.set_setting('expiry_batch', '100001')$$, '22023'),
('set_setting: notify yes',         $$SELECT milestones.set_setting('notify', 'yes')$$, '00000'),
('set_setting: notify 2',           $$SELECT milestones.set_setting('notify', '2')$$, '22023');

-- counts(): every table's row count and a digest of its contents.
CREATE FUNCTION pg_temp.snapshot() RETURNS text LANGUAGE sql AS $$
    SELECT concat_ws(' ',
        (SELECT count(*) || ':' || md5(COALESCE(string_agg(x::text, ',' ORDER BY order_id), '')) FROM milestones.orders x),
        (SELECT count(*) || ':' || md5(COALESCE(string_agg(x::text, ',' ORDER BY order_id, position), '')) FROM milestones.order_milestones x),
        (SELECT count(*) FROM milestones.ledger_entries),
        (SELECT count(*) FROM milestones.events),
        (SELECT count(*) || ':' || md5(COALESCE(string_agg(x::text, ',' ORDER BY key), '')) FROM milestones.idempotency_keys x),
        (SELECT md5(string_agg(x::text, ',' ORDER BY seller_id)) FROM milestones.eligible_sellers x),
        (SELECT md5(string_agg(x::text, ',' ORDER BY category)) FROM milestones.eligible_categories x),
        (SELECT md5(string_agg(x::text, ',' ORDER BY code)) FROM milestones.cancellation_reasons x),
        (SELECT md5(x::text) FROM milestones.settings x))
$$;

-- run_cases(): each case in a subtransaction; a working case is rolled
-- back too (so that every case starts from the same orders).
CREATE FUNCTION pg_temp.run_cases() RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    c record;
    got text;
    msg text;
    before text;
    after text;
BEGIN
    FOR c IN SELECT x.id, x.label, x.want,
                    replace(replace(replace(replace(x.sql, '{off}', v.off::text), '{act}', v.act::text), '{del}', v.del::text),
                            '{ms}', $j$'[{"name":"A","days":3,"amount":"150.00"}]'$j$) AS sql
               FROM cases x, vars v ORDER BY x.id LOOP
        before := pg_temp.snapshot();
        got := NULL;
        msg := NULL;
        BEGIN
            EXECUTE c.sql;
            got := '00000';
            SET CONSTRAINTS ALL IMMEDIATE;   -- a working call must also pass the deferred check
            SET CONSTRAINTS ALL DEFERRED;
            RAISE SQLSTATE 'XX999';          -- undo it
        EXCEPTION WHEN SQLSTATE 'XX999' THEN
            NULL;
        WHEN OTHERS THEN
            IF got IS NULL THEN
                got := SQLSTATE;
                msg := SQLERRM;
                after := pg_temp.snapshot();
            ELSE
                got := 'deferred check ' || SQLSTATE;
                msg := SQLERRM;
            END IF;
        END;
        RETURN NEXT is(got, c.want, c.label || ' -> ' || c.want);
        IF got IS DISTINCT FROM c.want THEN
            RETURN NEXT diag(left(msg, 300));
        END IF;
        IF c.want <> '00000' THEN
            RETURN NEXT is(pg_temp.snapshot(), before, c.label || ': nothing written');
        END IF;
    END LOOP;
END
$$;

SELECT plan((SELECT count(*)::int + count(*) FILTER (WHERE want <> '00000')::int FROM cases) + 5);
SELECT * FROM pg_temp.run_cases();

-- Messages are clear, with the facts.
SELECT throws_ok($$SELECT milestones.accept(NULL, 20)$$, '22023', 'order_id must not be NULL', 'a NULL says which argument');
SELECT throws_ok(format($$SELECT milestones.deliver(%s, 10, %L)$$, :act, repeat('n', 2001)), '22023', 'note is too long',
                 'an over-long note is named');
SELECT throws_ok(format($$SELECT milestones.cancel_milestone(%s, 9, 'agent', 'mutual_agreement')$$, :act), 'P0002',
                 format('milestone 9 of order %s does not exist', :act), 'an unknown position is named');
SELECT throws_ok($$SELECT milestones.set_setting('max_milestones', 'x')$$, '22023', 'invalid value for setting max_milestones',
                 'a bad setting value names the setting');
SELECT is((SELECT count(*)::int FROM milestones.check_invariants()), 0, 'after all that, the books are sound');

SELECT * FROM finish();
ROLLBACK;
