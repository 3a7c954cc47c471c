-- test/sql/03_clock.sql - milestones.now() and the superuser-only
-- milestones.fake_now setting every deadline rule reads.
BEGIN;
\ir ../fixtures/setup.psql
SELECT plan(10);

SELECT is(milestones.now(), '2030-01-01 00:00:00+00'::timestamptz, 'now() follows milestones.fake_now');
SELECT set_config('milestones.fake_now', '2031-06-15 12:30:00+02', true);
SELECT is(milestones.now(), '2031-06-15 10:30:00+00'::timestamptz, 'a new fake time, with its zone, is used at once');
SELECT set_config('milestones.fake_now', '', true);
SELECT is(milestones.now(), now(), 'an empty fake_now means the transaction timestamp');

SELECT throws_ok($$SET LOCAL milestones.fake_now = 'not a time'$$, '22023', NULL, 'a value that is not a timestamp is refused by SET');
SELECT throws_ok($$SET LOCAL milestones.fake_now = 'infinity'$$, '22023', NULL, 'infinity is refused');
SELECT throws_ok($$SET LOCAL milestones.fake_now = 'epoch'$$, '22023', NULL, 'special values are refused');
SELECT is(current_setting('milestones.fake_now'), '', 'a refused value leaves the setting as it was');

-- Only a superuser may move the clock: a role that could would expire
-- orders early or reopen closed windows.
CREATE ROLE ms_clock_app NOLOGIN IN ROLE milestones_app;
SET LOCAL ROLE ms_clock_app;
SELECT throws_ok($$SET LOCAL milestones.fake_now = '2040-01-01 00:00:00+00'$$, '42501', NULL,
                 'milestones_app cannot set milestones.fake_now');
SELECT is(milestones.now(), now(), 'and its clock is the real one');
RESET ROLE;
SELECT is((SELECT context FROM pg_settings WHERE name = 'milestones.fake_now'), 'superuser',
          'milestones.fake_now is defined by the module with the superuser context');

SELECT * FROM finish();
ROLLBACK;
