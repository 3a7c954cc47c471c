-- test/concurrency/setup.sql - the race of test/shell/21_concurrency.t.
-- psql variables: n (orders), agent (the support login role).
--
-- Orders race_orders.n = 1..:n, all with milestone 1 delivered now (real
-- clock; respond_by = now + 5 days):
--   odd n:  group 'final' - one milestone: accept finishes the order;
--   even n: group 'step'  - three milestones: accept charges and starts 2.
-- Both allow one revision, so every action can win every order.
-- Every racing call goes through public.race_try(action, seq): the order is
-- race_orders.n = seq; a win and a clean refusal (55000) are both logged in
-- race_log; any other error escapes to pgbench and aborts its client.
\set ON_ERROR_STOP 1
\set QUIET 1
CREATE TABLE public.race_orders (n integer PRIMARY KEY, order_id bigint NOT NULL UNIQUE, grp text NOT NULL);
CREATE TABLE public.race_log (order_id bigint NOT NULL, action text NOT NULL, outcome text NOT NULL,
                              at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE public.race_sweeps (expired integer NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE SEQUENCE public.race_next_accept;
CREATE SEQUENCE public.race_next_stop;
CREATE SEQUENCE public.race_next_revise;
CREATE SEQUENCE public.race_next_cancel;

INSERT INTO public.race_orders (n, order_id, grp)
SELECT g, milestones.create_offer(10, 20, 'design',
          CASE WHEN g % 2 = 1 THEN '[{"name":"Logo","days":3,"amount":"120.00"}]'::jsonb
               ELSE '[{"name":"Storyboard","days":3,"amount":"100.00"},{"name":"Animation","days":7,"amount":"150.00"},{"name":"Final cut","days":5,"amount":"250.25"}]'::jsonb END,
          1),
       CASE WHEN g % 2 = 1 THEN 'final' ELSE 'step' END
  FROM generate_series(1, :n) g;
SELECT count(*) FROM (SELECT milestones.place_order(order_id, 20), milestones.deliver(order_id, 10)
                        FROM public.race_orders ORDER BY n) x;

-- race_try: one racing call; returns and logs 'won' or '55000'.
CREATE FUNCTION public.race_try(p_action text, p_seq bigint) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
DECLARE
    v_id bigint;
BEGIN
    SELECT order_id INTO v_id FROM public.race_orders WHERE n = p_seq;
    IF v_id IS NULL THEN
        RETURN 'none';
    END IF;
    BEGIN
        CASE p_action
            WHEN 'accept' THEN PERFORM milestones.accept(v_id, 20);
            WHEN 'stop'   THEN PERFORM milestones.stop(v_id, 20);
            WHEN 'revise' THEN PERFORM milestones.request_revision(v_id, 20, 'race');
            WHEN 'cancel' THEN PERFORM milestones.cancel(v_id, 'race-agent', 'mutual_agreement', 'race');
        END CASE;
    EXCEPTION WHEN object_not_in_prerequisite_state THEN
        INSERT INTO public.race_log (order_id, action, outcome) VALUES (v_id, p_action, '55000');
        RETURN '55000';
    END;
    INSERT INTO public.race_log (order_id, action, outcome) VALUES (v_id, p_action, 'won');
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
-- many sessions wait at it (or 20 s pass), then opens it.  Run in its own
-- session before the pgbench clients start.
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
