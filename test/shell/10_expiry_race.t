#!/usr/bin/env bash
# test/shell/10_expiry_race.t - R8, R9, SPEC 6.6: buyer calls racing the
# expiry sweep from separate sessions.  Exactly one wins for each order; the
# sweep skips rows a buyer holds (SKIP LOCKED) instead of waiting on them;
# run_expiry commits one batch at a time; check_invariants() stays empty.
#
# Every order here had milestone 1 delivered at 2030-01-01 00:00, so its
# deadline is 2030-01-06 00:00.  Buyers act at 2030-01-05 23:59:59 (one
# second before), the sweep runs with as_of 2030-01-06 00:00:01 (after).
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

DB=ms_expiry_race_$$
BUYER_NOW='2030-01-05 23:59:59+00'
AS_OF='2030-01-06 00:00:01+00'
tmp=$(mktemp -d)
trap 'dropdbs "$DB"; rm -rf "$tmp"' EXIT

plan 29
newdb "$DB"

# seed TAG COUNT [SINGLE]: COUNT orders tagged TAG, milestone 1 delivered at
# 2030-01-01; SINGLE=1 makes one-milestone orders (their accept finishes).
q "$DB" "CREATE TABLE public.race_ids (tag text, id bigint PRIMARY KEY)" >/dev/null
seed() {
  local ms=$OFFER3_MS
  [ "${3:-0}" = 1 ] && ms='[{"name":"Logo","days":3,"amount":"120.00"}]'
  psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<SQL || bail "seeding $1 failed"
SET milestones.fake_now = '2030-01-01 00:00:00+00';
INSERT INTO public.race_ids
SELECT '$1', milestones.create_offer(10, 20, 'design', '$ms', 1) FROM generate_series(1, $2);
SELECT milestones.place_order(id, 20), milestones.deliver(id, 10) FROM public.race_ids WHERE tag = '$1';
SQL
}
ids() { q "$DB" "SELECT string_agg(id::text, ' ' ORDER BY id) FROM public.race_ids WHERE tag = '$1'"; }
# wait_for APP: until a session named APP is sleeping in pg_sleep (it holds its locks by then).
wait_for() {
  local i
  for i in $(seq 1 100); do
    [ "$(q "$DB" "SELECT count(*) FROM pg_stat_activity WHERE application_name = '$1' AND state = 'active' AND query LIKE '%pg_sleep%'")" = 1 ] && return 0
    sleep 0.05
  done
  return 1
}
ms_now() { date +%s%3N; }

seed a 1          # accept, buyer holds the lock
seed s 1          # stop, buyer holds the lock
seed x 3          # plain overdue orders the sweep expires meanwhile
a1=$(ids a); s1=$(ids s)

# --- 1. The buyer holds the order lock: the sweep skips it ------------------
(PGAPPNAME=race_accept psql -X -q -A -t -v ON_ERROR_STOP=1 -d "$DB" >"$tmp/accept.out" 2>&1 <<SQL
BEGIN;
SET LOCAL milestones.fake_now = '$BUYER_NOW';
SELECT (milestones.accept($a1, 20)).state;
SELECT pg_sleep(3);
COMMIT;
SQL
) &
p_accept=$!
(PGAPPNAME=race_stop psql -X -q -A -t -v ON_ERROR_STOP=1 -d "$DB" >"$tmp/stop.out" 2>&1 <<SQL
BEGIN;
SET LOCAL milestones.fake_now = '$BUYER_NOW';
SELECT (milestones.stop($s1, 20)).reason;
SELECT pg_sleep(3);
COMMIT;
SQL
) &
p_stop=$!
wait_for race_accept && wait_for race_stop
ok $? "two buyer sessions hold their orders (accept, stop) one second before the deadline"

t0=$(ms_now)
swept=$(q "$DB" "SELECT milestones.expire_overdue('$AS_OF', 1000)")
t1=$(ms_now)
is "$swept" 3 "the sweep (as_of after the deadline) expires the 3 free overdue orders and skips the 2 locked ones"
[ $((t1 - t0)) -lt 2000 ]
ok $? "the sweep did not wait for the buyers' locks ($((t1 - t0)) ms while they sleep 3 s)"
diag "sweep beside two locked orders: $((t1 - t0)) ms"

wait "$p_accept"; rc_a=$?
wait "$p_stop"; rc_s=$?
is "$rc_a $(tr -d '\n' <"$tmp/accept.out")" "0 active" "the buyer's accept committed"
is "$rc_s $(tr -d '\n' <"$tmp/stop.out")" "0 stopped" "the buyer's stop committed"
is "$(q "$DB" "SELECT array_agg(state ORDER BY position) FROM milestones.order_milestones WHERE order_id = $a1")" \
   "{completed,in_progress,pending}" "accept won: milestone 1 completed, milestone 2 charged and started"
is "$(q "$DB" "SELECT state || '/' || end_reason || ' ' || (completed_at = '$BUYER_NOW') FROM milestones.orders WHERE order_id = $s1")" \
   "completed/stopped true" "stop won: the order is completed (stopped) at the buyer's time"
is "$(q "$DB" "SELECT count(*) FROM milestones.orders o JOIN public.race_ids r ON r.id = o.order_id AND r.tag = 'x' WHERE o.end_reason = 'expired'")" \
   3 "the other overdue orders expired"
is "$(q "$DB" "SELECT milestones.expire_overdue('$AS_OF', 1000)")" 0 \
   "a second sweep finds nothing: the buyers' orders are no longer overdue"
is "$(q "$DB" "SELECT count(*) FROM milestones.events WHERE order_id IN ($a1, $s1) AND event = 'expired'")" 0 \
   "no expired event for the orders the buyers answered"
is "$(q "$DB" "SELECT count(*) FROM milestones.check_invariants()")" 0 "check_invariants() is empty after scenario 1"

# --- 2. The sweep holds the order lock: the buyer waits, then fails cleanly --
seed w 1
w1=$(ids w)
(PGAPPNAME=race_sweep psql -X -q -A -t -v ON_ERROR_STOP=1 -d "$DB" >"$tmp/sweep.out" 2>&1 <<SQL
BEGIN;
SELECT milestones.expire_overdue('$AS_OF', 1000);
SELECT pg_sleep(2);
COMMIT;
SQL
) &
p_sweep=$!
wait_for race_sweep
ok $? "a sweep session has expired the order and holds its lock"
t0=$(ms_now)
err=$(psql -X -q -A -t -v ON_ERROR_STOP=1 -v VERBOSITY=default -d "$DB" 2>&1 >/dev/null <<SQL
SET milestones.fake_now = '$BUYER_NOW';
SELECT milestones.accept($w1, 20);
SQL
)
t1=$(ms_now)
wait "$p_sweep"; rc_w=$?
is "$rc_w $(tr -d '\n' <"$tmp/sweep.out")" "0 1" "the sweep committed, expiring 1 order"
[ $((t1 - t0)) -ge 1000 ]
ok $? "the buyer's accept waited for the sweep's lock ($((t1 - t0)) ms)"
echo "$err" | grep -q "ERROR:  accept is not allowed: order $w1 is completed (expired)"
ok $? "then it failed: the order is completed (expired)"
diag "$(echo "$err" | head -1)"
is "$(q "$DB" "SELECT state || '/' || end_reason || ' ' || (completed_at = '2030-01-06 00:00+00') FROM milestones.orders WHERE order_id = $w1")" \
   "completed/expired true" "expiry won: completed at the deadline"
is "$(q "$DB" "SELECT string_agg(event, ',' ORDER BY event_id) FROM milestones.events WHERE order_id = $w1 AND event NOT IN ('offered','placed','delivered')")" \
   "expired" "exactly one outcome was recorded"
is "$(q "$DB" "SELECT count(*) FROM milestones.check_invariants()")" 0 "check_invariants() is empty after scenario 2"

# --- 3. Many buyers and many sweeps at the same moment ----------------------
N=60
seed r $N
seed r1 20 1
race=$(q "$DB" "SELECT string_agg(id::text, ' ' ORDER BY id) FROM public.race_ids WHERE tag IN ('r','r1')")
start=$(( $(ms_now) + 1500 ))
spin() { while [ "$(ms_now)" -lt "$start" ]; do :; done; }
buyer() {               # buyer K: acts on every 3rd order (accept, stop or accept by turns)
  local k=$1 i=0 id sql=""
  for id in $race; do
    if [ $((i % 3)) -eq "$k" ]; then
      case $(( (i / 3) % 3 )) in
        0|2) sql+="SELECT 'ok accepted ' || (milestones.accept($id, 20)).order_id;"$'\n' ;;
        1)   sql+="SELECT 'ok stopped ' || (milestones.stop($id, 20)).order_id;"$'\n' ;;
      esac
    fi
    i=$((i + 1))
  done
  spin
  printf "SET milestones.fake_now = '%s';\n\\set VERBOSITY sqlstate\n%s" "$BUYER_NOW" "$sql" |
    psql -X -q -A -t -d "$DB" >"$tmp/buyer$k.out" 2>"$tmp/buyer$k.err"
}
sweeper() {             # sweeper K: batches of 1, each its own transaction
  local k=$1 j sql=""
  for j in $(seq 1 40); do sql+="SELECT milestones.expire_overdue('$AS_OF', 1);"$'\n'; done
  spin
  printf "%s" "$sql" | psql -X -q -A -t -v ON_ERROR_STOP=1 -d "$DB" >"$tmp/sweep$k.out" 2>&1
}
pids=()
for k in 0 1 2; do buyer $k & pids+=($!); sweeper $k & pids+=($!); done
for p in "${pids[@]}"; do wait "$p"; done

total=$(( N + 20 ))
wins_buyer=$(cat "$tmp"/buyer?.out | grep -c '^ok ')
errs=$(cat "$tmp"/buyer?.err | grep -c 'ERROR')
bad_errs=$(cat "$tmp"/buyer?.err | grep 'ERROR' | grep -vc 'ERROR:  55000')
swept=$(cat "$tmp"/sweep?.out | awk '{ s += $1 } END { print s + 0 }')
diag "concurrent race: $total orders, buyers won $wins_buyer, buyers refused $errs, sweeps expired $swept"
is "$((wins_buyer + errs))" "$total" "every buyer call either worked or failed"
is "$bad_errs" 0 "every refused buyer call failed with 55000"
is "$((wins_buyer + swept))" "$total" "buyer wins + expired orders = orders: exactly one winner per order"
is "$(q "$DB" "SELECT count(*) FROM milestones.orders o JOIN public.race_ids r ON r.id = o.order_id AND r.tag IN ('r','r1') WHERE o.end_reason = 'expired'")" \
   "$swept" "the sweeps' counts match the expired orders (none counted twice)"
is "$(q "$DB" "SELECT count(*) FROM public.race_ids r WHERE r.tag IN ('r','r1') AND (SELECT count(*) FROM milestones.events e WHERE e.order_id = r.id AND e.position = 1 AND e.event IN ('accepted','stopped','expired')) <> 1")" \
   0 "every order has exactly one outcome event for its delivery"
is "$(q "$DB" "SELECT count(*) FROM public.race_ids r JOIN milestones.order_milestones m ON m.order_id = r.id AND m.position = 1 WHERE r.tag IN ('r','r1') AND m.state <> 'completed'")" \
   0 "every raced delivery ended completed (paid), whoever won"
is "$(q "$DB" "SELECT count(*) FROM milestones.check_invariants()")" 0 "check_invariants() is empty after the free-for-all"

# --- 4. run_expiry: the backlog in batches, each committed -------------------
seed b 25
q "$DB" "UPDATE milestones.settings SET expiry_batch = 10" >/dev/null
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null 2>"$tmp/run.err" <<SQL
SET milestones.fake_now = '2030-02-01 00:00:00+00';
CALL milestones.run_expiry();
SQL
ok $? "CALL milestones.run_expiry() works outside a transaction block"
is "$(q "$DB" "SELECT count(*) FILTER (WHERE o.end_reason = 'expired') || ' ' || count(DISTINCT o.xmin::text) FROM milestones.orders o JOIN public.race_ids r ON r.id = o.order_id AND r.tag = 'b'")" \
   "25 3" "run_expiry expired all 25 overdue orders in 3 transactions (expiry_batch 10)"
is "$(q "$DB" "SET milestones.fake_now = '2030-02-01 00:00:00+00'; SELECT count(*) FROM milestones.awaiting_response WHERE overdue")" \
   0 "no overdue delivery is left"
is "$(q "$DB" "SELECT count(*) FROM milestones.check_invariants()")" 0 "check_invariants() is empty at the end"

exit $(( TAP_FAILED > 0 ))
