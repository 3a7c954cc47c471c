#!/usr/bin/env bash
# test/shell/29_payment_races.t - SPEC section 11's races, with real
# concurrent sessions (pgbench clients started together at a gate).
#
# Four groups of confirmed-mode orders; in each, two actions race on every
# order:
#   sweep  record_charge's success of a later milestone vs the expiry sweep,
#          both at exactly pay_by: whichever takes the lock first, the
#          charge is void, the order completed unpaid at pay_by, and the
#          success booked and refunded;
#   stop   record_charge's success vs the buyer's stop while the milestone
#          awaits payment (before pay_by): exactly one wins -- the
#          milestone starts and stop is refused (55000), or the order is
#          stopped and the success is booked and refunded;
#   cm     record_charge's success vs support's cancel_milestone of that
#          milestone: both succeed in either order, and the milestone's
#          money goes back to the buyer either way (refunded after it
#          started, or a late success refunded);
#   twice  two attempts of one charge succeed at once: exactly one is
#          wanted (the milestone starts once), the other booked and
#          refunded.
# Every other error escapes to pgbench and fails the test; at the end the
# ledger sums to zero and check_invariants() reports nothing.
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

N=${RACE_ORDERS:-60}         # orders per group
C=2                          # pgbench clients per action
DB=ms_payrace_$$
tmp=$(mktemp -d)
trap 'dropdbs "$DB"; rm -rf "$tmp"' EXIT

plan 22
newdb "$DB"
psql -X -q -v ON_ERROR_STOP=1 -v n="$N" -d "$DB" >/dev/null 2>"$tmp/setup.err" <<'SQL'
SELECT milestones.set_setting('payment_mode', 'confirmed');
SET milestones.fake_now = '2030-01-01 00:00:00+00';
CREATE TABLE public.race_orders (grp text, n integer, order_id bigint, charge_id bigint, PRIMARY KEY (grp, n));
CREATE TABLE public.race_log (grp text, order_id bigint, action text, outcome text, message text);
CREATE SEQUENCE public.seq_sweep_pay; CREATE SEQUENCE public.seq_stop_pay; CREATE SEQUENCE public.seq_stop;
CREATE SEQUENCE public.seq_cm_pay; CREATE SEQUENCE public.seq_cm; CREATE SEQUENCE public.seq_twice_1;
CREATE SEQUENCE public.seq_twice_2;
-- orders with milestone 1 paid, delivered and accepted: milestone 2 awaits payment
CREATE FUNCTION public.mk(p_grp text, p_n integer, p_second boolean) RETURNS void LANGUAGE plpgsql AS $$
DECLARE o bigint; c bigint;
BEGIN
    FOR i IN 1..p_n LOOP
        o := milestones.create_offer(10, 20, 'design',
               '[{"name":"A","days":3,"amount":"100.00"},{"name":"B","days":5,"amount":"150.00"},{"name":"C","days":5,"amount":"250.00"}]', 1);
        PERFORM milestones.place_order(o, 20);
        c := (SELECT charge_id FROM milestones.order_status WHERE order_id = o);
        IF p_second THEN
            PERFORM milestones.record_charge(c, 1, 'succeeded', 'pi_' || c);
            PERFORM milestones.deliver(o, 10);
            PERFORM milestones.accept(o, 20);
            c := (SELECT charge_id FROM milestones.order_status WHERE order_id = o);
        ELSE
            -- milestone 1: attempt 1 failed, attempt 2 requested
            PERFORM milestones.record_charge(c, 1, 'failed', NULL, 'declined');
            PERFORM milestones.retry_charge(o, 20);
        END IF;
        INSERT INTO public.race_orders VALUES (p_grp, i, o, c);
    END LOOP;
END $$;
-- The sweep group's charges fall due a week before the others': the
-- sweep's races end only them.
SET milestones.fake_now = '2029-12-25 00:00:00+00';
SELECT public.mk('sweep', :n, true);
SET milestones.fake_now = '2030-01-01 00:00:00+00';
SELECT public.mk('stop', :n, true), public.mk('cm', :n, true), public.mk('twice', :n, false);
-- race_try: one racing call on the next order of its group; a win or a
-- clean refusal (55000) is logged, any other error escapes.
CREATE FUNCTION public.race_try(p_grp text, p_action text, p_seq bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE r public.race_orders;
BEGIN
    SELECT * INTO r FROM public.race_orders WHERE grp = p_grp AND n = p_seq;
    IF NOT FOUND THEN RETURN; END IF;
    BEGIN
        CASE p_action
            WHEN 'pay'   THEN PERFORM milestones.record_charge(r.charge_id, 1, 'succeeded', 'pi_' || r.charge_id || '_race');
            WHEN 'pay2'  THEN PERFORM milestones.record_charge(r.charge_id, 2, 'succeeded', 'pi_' || r.charge_id || '_2');
            WHEN 'pay1'  THEN PERFORM milestones.record_charge(r.charge_id, 1, 'succeeded', 'pi_' || r.charge_id || '_1');
            WHEN 'stop'  THEN PERFORM milestones.stop(r.order_id, 20);
            WHEN 'cm'    THEN PERFORM milestones.cancel_milestone(r.order_id, 2, 'agent', 'mutual_agreement');
        END CASE;
        INSERT INTO public.race_log VALUES (p_grp, r.order_id, p_action, 'ok');
    EXCEPTION WHEN object_not_in_prerequisite_state THEN
        INSERT INTO public.race_log VALUES (p_grp, r.order_id, p_action, '55000', SQLERRM);
    END;
END $$;
SQL
ok $? "4 x $N confirmed-mode orders set up (sweep, stop, cm: milestone 2 awaits payment; twice: attempt 2 of milestone 1 requested)"
[ -s "$tmp/setup.err" ] && diag "$(cat "$tmp/setup.err")"

# The pgbench scripts: each waits at the gate (a shared advisory lock the
# test holds exclusively until every session is connected).
script() {   # script FILE FAKE_NOW SQL
  { echo "SET milestones.fake_now = '$2';"; echo "SELECT pg_advisory_xact_lock_shared(2911);"; echo "$3"; } > "$tmp/$1.sql"
}
PAY_BY='2029-12-28 00:00:00+00'         # the sweep group's charges: requested at 2029-12-25 + 3 days
BEFORE='2030-01-02 00:00:00+00'
script sweep_pay "$PAY_BY" "SELECT public.race_try('sweep', 'pay', nextval('public.seq_sweep_pay'));"
script sweep     "$PAY_BY" "SELECT milestones.expire_overdue('$PAY_BY', 3);"
script stop_pay  "$BEFORE" "SELECT public.race_try('stop', 'pay', nextval('public.seq_stop_pay'));"
script stop      "$BEFORE" "SELECT public.race_try('stop', 'stop', nextval('public.seq_stop'));"
script cm_pay    "$BEFORE" "SELECT public.race_try('cm', 'pay', nextval('public.seq_cm_pay'));"
script cm        "$BEFORE" "SELECT public.race_try('cm', 'cm', nextval('public.seq_cm'));"
script twice_1   "$BEFORE" "SELECT public.race_try('twice', 'pay1', nextval('public.seq_twice_1'));"
script twice_2   "$BEFORE" "SELECT public.race_try('twice', 'pay2', nextval('public.seq_twice_2'));"

per_client=$(( (N + C - 1) / C ))
race() {     # race NAME [pgbench options]
  local name=$1; shift
  pgbench -n -f "$tmp/$name.sql" "$@" "$DB" >"$tmp/$name.out" 2>&1
  echo $? >"$tmp/$name.rc"
}
# The gate: held exclusively until every client has connected and queued.
( echo "SELECT pg_advisory_lock(2911);"; echo "SELECT pg_sleep(1.5);"; echo "SELECT pg_advisory_unlock(2911);" ) |
  psql -X -q -d "$DB" >/dev/null 2>&1 &
gate=$!
sleep 0.3
for name in sweep_pay stop_pay stop cm_pay cm twice_1 twice_2; do
  race "$name" -c "$C" -j "$C" -t "$per_client" &
done
race sweep -c 1 -t $(( N / 3 + 5 )) &
wait
for name in sweep_pay sweep stop_pay stop cm_pay cm twice_1 twice_2; do
  rc=$(cat "$tmp/$name.rc")
  [ "$rc" = 0 ] && grep -q '^number of failed transactions: 0 ' "$tmp/$name.out"
  ok $? "pgbench $name: every transaction committed, no unexpected error"
  [ "$rc" = 0 ] || diag "$(tail -15 "$tmp/$name.out")"
done
diag "refusals: $(q "$DB" "SELECT string_agg(DISTINCT action || ': ' || message, '; ') FROM public.race_log WHERE outcome <> 'ok'")"
diag "race log: $(q "$DB" "SELECT string_agg(grp || ' ' || action || ' ' || outcome || ' ' || n, ', ' ORDER BY grp, action, outcome)
                          FROM (SELECT grp, action, outcome, count(*) n FROM public.race_log GROUP BY 1, 2, 3) x")"

# sweep: whoever took the lock first, the order is as the sweep leaves it.
is "$(q "$DB" "SELECT count(*) FROM public.race_orders r JOIN milestones.order_status s USING (order_id)
               WHERE r.grp = 'sweep' AND s.state = 'completed' AND s.reason = 'unpaid' AND s.completed_at = '$PAY_BY'")" "$N" \
   "sweep: every order completed unpaid at exactly pay_by"
is "$(q "$DB" "SELECT count(*) FROM public.race_orders r JOIN milestones.charges c USING (charge_id)
               WHERE r.grp = 'sweep' AND c.state = 'voided' AND c.void_reason = 'expired'
                 AND c.attempt_state = 'succeeded' AND NOT c.wanted AND c.refund_id IS NOT NULL")" "$N" \
   "sweep: every charge voided (expired), every success booked and refunded"

# stop: exactly one winner per order.
is "$(q "$DB" "SELECT count(*) FROM public.race_log l JOIN public.race_orders r USING (order_id)
                JOIN milestones.charges c ON c.charge_id = r.charge_id
               WHERE l.grp = 'stop' AND l.action = 'stop' AND l.outcome = 'ok' AND c.wanted")" "0" \
   "stop: never both a stop and a wanted success (a success after the stop is not wanted)"
is "$(q "$DB" "SELECT count(*) FROM public.race_orders r JOIN milestones.order_status s USING (order_id)
                JOIN milestones.charges c ON c.charge_id = r.charge_id
               WHERE r.grp = 'stop' AND ((s.state = 'active' AND s.milestone_state = 'in_progress' AND c.wanted)
                                      OR (s.state = 'completed' AND s.reason = 'stopped' AND NOT c.wanted AND c.refund_id IS NOT NULL))")" "$N" \
   "stop: each order either started milestone 2 (stop refused) or was stopped (success booked and refunded)"
is "$(q "$DB" "SELECT count(*) FROM public.race_log WHERE grp = 'stop' AND outcome = 'ok'")" "$(( N + $(q "$DB" "SELECT count(*) FROM public.race_orders r JOIN milestones.order_status s USING (order_id) WHERE r.grp = 'stop' AND s.state = 'completed'") ))" \
   "stop: the record_charge calls all succeeded, and the stops that won are exactly the stopped orders"
diag "stop: $(q "$DB" "SELECT count(*) FILTER (WHERE s.state = 'completed') || ' stopped first, ' || count(*) FILTER (WHERE s.state = 'active') || ' paid first'
                      FROM public.race_orders r JOIN milestones.order_status s USING (order_id) WHERE r.grp = 'stop'")"

# cm: the milestone's money goes back to the buyer either way.
is "$(q "$DB" "SELECT count(*) FROM public.race_orders r JOIN milestones.order_status s USING (order_id)
               WHERE r.grp = 'cm' AND s.state = 'active' AND s.current_milestone = 3 AND s.milestone_state = 'awaiting_payment'")" "$N" \
   "cm: every order goes on with milestone 3 awaiting payment"
is "$(q "$DB" "SELECT count(*) FROM public.race_orders r
               WHERE r.grp = 'cm' AND (SELECT COALESCE(sum(amount), 0) FROM milestones.ledger_entries l
                                        WHERE l.charge_id = r.charge_id AND l.account = 'buyer') = 0
                 AND (SELECT count(*) FROM milestones.ledger_entries l WHERE l.charge_id = r.charge_id AND l.account = 'buyer') = 2")" "$N" \
   "cm: milestone 2's charge was booked once and refunded once for every order"
is "$(q "$DB" "SELECT count(*) FROM public.race_log WHERE grp = 'cm' AND outcome = 'ok'")" "$(( 2 * N ))" \
   "cm: both calls succeed on every order, in either order"

# twice: exactly one wanted success per charge.
is "$(q "$DB" "SELECT count(*) FROM public.race_orders r
               WHERE r.grp = 'twice'
                 AND (SELECT count(*) FILTER (WHERE wanted) || '/' || count(*) FILTER (WHERE NOT wanted AND refund_id IS NOT NULL)
                        FROM milestones.charges c WHERE c.charge_id = r.charge_id) = '1/1'")" "$N" \
   "twice: one success wanted, the other booked and refunded, for every charge"
is "$(q "$DB" "SELECT count(*) FROM public.race_orders r JOIN milestones.order_status s USING (order_id)
               WHERE r.grp = 'twice' AND s.state = 'active' AND s.milestone_state = 'in_progress' AND s.charged = 200 AND s.refunded = 100")" "$N" \
   "twice: every order placed once, milestone 1 in progress, the second success refunded"

is "$(q "$DB" "SELECT COALESCE(sum(amount), 0) FROM milestones.ledger_entries")" "0.00" "the whole ledger sums to zero"
is "$(q "$DB" "SELECT count(*) FROM milestones._order_problems(ARRAY(SELECT order_id FROM milestones.orders), true)")" "0" \
   "every order's invariants hold"
is "$(q "$DB" "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")" "0" "no deadlock happened"
wait "$gate" 2>/dev/null
[ $TAP_FAILED -eq 0 ]
