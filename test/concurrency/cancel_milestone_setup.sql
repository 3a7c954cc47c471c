-- test/concurrency/cancel_milestone_setup.sql - the race of
-- test/shell/22_cancel_milestone_race.t.  psql variables: n (orders), agent
-- (the support login role).
--
-- Orders race_orders.n = 1..:n, all of three milestones (100 + 150 +
-- 250.25, one revision) with milestone 1 delivered now (real clock;
-- respond_by = now + 5 days).  The support agent cancels one milestone of
-- each order, chosen by its group:
--   n % 3 = 0  'run'  - milestone 1, the delivered one: it competes with
--                       accept, stop and the sweep for the same delivery;
--   n % 3 = 1  'pend' - milestone 2, pending: every call can succeed;
--   n % 3 = 2  'last' - milestone 3, with 2 cancelled in the setup: before
--                       accept it makes milestone 1 final (accept finishes
--                       the order), after accept it refunds the running 3
--                       and, nothing being left, ends the order cancelled.
-- The buyer's accept, stop and request_revision and the expiry sweep are
-- the scripts of the whole-order race (accept.sql, stop.sql, revise.sql,
-- sweep.sql); cancel_milestone.sql is this race's own.  Every racing call
-- goes through public.race_try(action, seq); a win and a clean refusal
-- (55000) are logged in race_log; any other error escapes to pgbench.
\set ON_ERROR_STOP 1
\set QUIET 1
CREATE TABLE public.race_orders (n integer PRIMARY KEY, order_id bigint NOT NULL UNIQUE, grp text NOT NULL,
                                 target integer NOT NULL);
CREATE TABLE public.race_log (order_id bigint NOT NULL, action text NOT NULL, outcome text NOT NULL,
                              at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE public.race_sweeps (expired integer NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE public.race_start (event_id bigint NOT NULL);
CREATE SEQUENCE public.race_next_accept;
CREATE SEQUENCE public.race_next_stop;
CREATE SEQUENCE public.race_next_revise;
CREATE SEQUENCE public.race_next_cancel;

INSERT INTO public.race_orders (n, order_id, grp, target)
SELECT g, milestones.create_offer(10, 20, 'design',
          '[{"name":"Storyboard","days":3,"amount":"100.00"},{"name":"Animation","days":7,"amount":"150.00"},{"name":"Final cut","days":5,"amount":"250.25"}]',
          1),
       (ARRAY['run','pend','last'])[g % 3 + 1], (ARRAY[1, 2, 3])[g % 3 + 1]
  FROM generate_series(1, :n) g;
SELECT count(*) FROM (SELECT milestones.place_order(order_id, 20), milestones.deliver(order_id, 10)
                        FROM public.race_orders ORDER BY n) x;
SELECT count(*) FROM (SELECT milestones.cancel_milestone(order_id, 2, 'setup-agent', 'mutual_agreement')
                        FROM public.race_orders WHERE grp = 'last' ORDER BY n) x;
-- Events after this one are the race's.
INSERT INTO public.race_start SELECT COALESCE(max(event_id), 0) FROM milestones.events;

-- race_try: one racing call; returns and logs 'won' or '55000'.
CREATE FUNCTION public.race_try(p_action text, p_seq bigint) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
DECLARE
    r public.race_orders;
BEGIN
    SELECT * INTO r FROM public.race_orders WHERE n = p_seq;
    IF NOT FOUND THEN
        RETURN 'none';
    END IF;
    BEGIN
        CASE p_action
            WHEN 'accept' THEN PERFORM milestones.accept(r.order_id, 20);
            WHEN 'stop'   THEN PERFORM milestones.stop(r.order_id, 20);
            WHEN 'revise' THEN PERFORM milestones.request_revision(r.order_id, 20, 'race');
            WHEN 'cancel_milestone' THEN
                PERFORM milestones.cancel_milestone(r.order_id, r.target, 'race-agent', 'mutual_agreement', 'race');
        END CASE;
    EXCEPTION WHEN object_not_in_prerequisite_state THEN
        INSERT INTO public.race_log (order_id, action, outcome) VALUES (r.order_id, p_action, '55000');
        RETURN '55000';
    END;
    INSERT INTO public.race_log (order_id, action, outcome) VALUES (r.order_id, p_action, 'won');
    RETURN 'won';
END
$$;

-- race_sweep: one expiry sweep (owner) with the deadline passed; logs its count.
CREATE FUNCTION public.race_sweep(p_batch integer) RETURNS integer
LANGUAGE sql SET search_path = pg_catalog, public AS $$
    INSERT INTO public.race_sweeps (expired)
    SELECT milestones.expire_overdue(milestones.now() + interval '5 days 1 second', p_batch)
    RETURNING expired;
$$;

GRANT SELECT ON public.race_orders TO :"agent";
GRANT INSERT ON public.race_log TO :"agent";
GRANT USAGE ON SEQUENCE public.race_next_cancel TO :"agent";

-- race_gate(sessions): holds the start gate (advisory lock 2104) until that
-- many sessions wait at it (or 20 s pass), then opens it.
CREATE PROCEDURE public.race_gate(p_sessions integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_until timestamptz := clock_timestamp() + interval '20 seconds';
BEGIN
    PERFORM pg_advisory_lock(2104);
    WHILE (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 2104 AND NOT granted) < p_sessions
          AND clock_timestamp() < v_until LOOP
        PERFORM pg_sleep(0.01);
    END LOOP;
    PERFORM pg_advisory_unlock(2104);
END
$$;
