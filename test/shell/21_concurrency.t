#!/usr/bin/env bash
# test/shell/21_concurrency.t - SPEC 6.6 under load: separate sessions
# (pgbench clients) race accept, stop, request_revision, cancel (as a support
# login) and the expiry sweep on the same orders.  For each order exactly one
# conflicting action wins, the losers fail cleanly with 55000 (or the sweep
# finds nothing to do), no deadlock or other error escapes, the whole ledger
# sums to zero and check_invariants() is empty.
#
# The scripts are in test/concurrency/.  Every order has milestone 1
# delivered; each buyer action and cancel walks the orders 1..N through its
# own sequence (so each order gets exactly one call of each, from different
# sessions at about the same moment), while two sweepers expire overdue
# deliveries in small batches with the deadline passed.
#
# Whether every kind of call won somewhere, and whether the calls overlapped,
# is the scheduler's doing: when only those fail, the race runs again on new
# orders (tap_retry and SCHEDULER_TESTS in lib.sh).
set -u
here=$(cd "$(dirname "$0")" && pwd)
conc=$(cd "$here/../concurrency" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

N=${RACE_ORDERS:-400}        # orders (half one-milestone, half three-milestone)
C=${RACE_CLIENTS:-2}         # pgbench clients per action (5 actions)
MAX_ATTEMPTS=3               # the race again when only the scheduler's part failed (tap_retry)
AGENT=ms_race_agent_$$
tmp=$(mktemp -d)
cleanup() {
  for k in $(seq 1 "$MAX_ATTEMPTS"); do dropdbs "ms_race_$$_$k"; done
  psql -X -q -d postgres -c "DROP ROLE IF EXISTS $AGENT" >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT

plan 24
ms_now() { date +%s%3N; }

attempt() {   # attempt K: the whole race in a database of its own, 24 tests
DB=ms_race_$$_$1
[ "$1" -gt 1 ] && dropdbs "ms_race_$$_$(( $1 - 1 ))"
t_start=$(ms_now)
newdb "$DB"
# The support login (cancel) uses the runner's password, should the cluster ask for one.
[ "$1" -gt 1 ] || q "$DB" "CREATE ROLE $AGENT LOGIN PASSWORD '${PGPASSWORD:-x}' IN ROLE milestones_support" >/dev/null ||
  bail "cannot create the support login"
psql -X -q -v ON_ERROR_STOP=1 -v n="$N" -v agent="$AGENT" -d "$DB" -f "$conc/setup.sql" >/dev/null 2>"$tmp/setup.err"
ok $? "$N orders placed with milestone 1 delivered (setup in $(( $(ms_now) - t_start )) ms)"
[ -s "$tmp/setup.err" ] && diag "$(cat "$tmp/setup.err")"
is "$(q "$DB" "SELECT count(*) FROM milestones.order_milestones WHERE state = 'delivered'")" "$N" "every order awaits the buyer"

# --- The race: 5 pgbench processes of C clients each, started together ------
per_client=$(( (N + C - 1) / C ))
race() {      # race NAME SCRIPT [pgbench options...]
  local name=$1 script=$2; shift 2
  pgbench -n -f "$conc/$script" "$@" "$DB" >"$tmp/$name.out" 2>&1
  echo $? >"$tmp/$name.rc"
}
sessions=$(( 4 * C + 2 ))
q "$DB" "CALL public.race_gate($sessions)" >"$tmp/gate.out" 2>&1 &
gate=$!
for _ in $(seq 1 100); do
  [ "$(q "$DB" "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 2104 AND granted")" = 1 ] && break
  sleep 0.05
done
t0=$(ms_now)
race accept accept.sql -c "$C" -j "$C" -t "$per_client" &
race stop   stop.sql   -c "$C" -j "$C" -t "$per_client" &
race revise revise.sql -c "$C" -j "$C" -t "$per_client" &
PGUSER=$AGENT race cancel cancel.sql -c "$C" -j "$C" -t "$per_client" &
race sweep  sweep.sql  -c 2 -j 2 -t $(( N / 20 )) -D batch=3 &
wait
t1=$(ms_now)
diag "race: $N orders, $sessions sessions, $(( t1 - t0 )) ms"

for name in accept stop revise cancel sweep; do
  rc=$(cat "$tmp/$name.rc")
  if [ "$rc" = 0 ] && grep -q '^number of failed transactions: 0 ' "$tmp/$name.out" && ! grep -qiE 'error|abort' "$tmp/$name.out"; then
    ok 0 "pgbench $name: every transaction committed, no error escaped"
  else
    ok 1 "pgbench $name: every transaction committed, no error escaped"
    diag "$(tail -20 "$tmp/$name.out")"
  fi
done
is "$(q "$DB" "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")" 0 "no deadlock happened"

# --- Every call was made once and either won or was refused with 55000 ------
is "$(q "$DB" "SELECT count(*) || ' ' || count(DISTINCT (order_id, action)) FROM public.race_log")" "$((4 * N)) $((4 * N))" \
   "each order got exactly one accept, stop, request_revision and cancel"
is "$(q "$DB" "SELECT count(*) FROM public.race_log WHERE outcome NOT IN ('won', '55000')")" 0 \
   "every losing call failed with 55000"

# The outcome of each order: the events after its delivery, in order.
# Exactly one of accepted | stopped | revision_requested | cancelled | expired
# takes the delivery; a cancel may win afterwards only while the order still
# runs: after revision_requested, or after accepted on a three-milestone
# order (which started milestone 2; on a one-milestone order accept ends it).
q "$DB" "CREATE VIEW public.race_outcome AS
  SELECT r.n, r.order_id, r.grp, o.state, COALESCE(o.end_reason, o.cancel_reason) AS reason,
         (SELECT string_agg(e.event, ',' ORDER BY e.event_id) FROM milestones.events e
           WHERE e.order_id = r.order_id AND e.event NOT IN ('offered', 'placed', 'delivered')) AS outcome
    FROM public.race_orders r JOIN milestones.orders o USING (order_id)" >/dev/null
is "$(q "$DB" "SELECT count(*) FROM public.race_outcome WHERE NOT (
        outcome IN ('accepted', 'stopped', 'cancelled', 'expired', 'revision_requested', 'revision_requested,cancelled') OR
        (grp = 'step' AND outcome = 'accepted,cancelled'))")" 0 \
   "exactly one winner per order (plus a later cancel only while the order still ran)"
is "$(q "$DB" "SELECT count(*) FROM public.race_outcome WHERE outcome IS NULL")" 0 "no order was left without a winner"
is "$(q "$DB" "SELECT count(*) FROM public.race_log l
                WHERE l.outcome = 'won' AND NOT EXISTS (
                      SELECT FROM milestones.events e WHERE e.order_id = l.order_id
                         AND e.event = CASE l.action WHEN 'accept' THEN 'accepted' WHEN 'stop' THEN 'stopped'
                                                     WHEN 'revise' THEN 'revision_requested' ELSE 'cancelled' END)")" 0 \
   "every logged win has its event"
is "$(q "$DB" "SELECT (SELECT count(*) FROM public.race_log WHERE outcome = 'won') + (SELECT sum(expired) FROM public.race_sweeps)
               - (SELECT count(*) FROM milestones.events WHERE event IN ('accepted','stopped','revision_requested','cancelled','expired'))")" 0 \
   "wins logged by the callers and the sweeps = outcome events (nothing counted twice)"
is "$(q "$DB" "SELECT count(*) FROM public.race_outcome WHERE NOT (
        (outcome LIKE '%cancelled' AND state = 'cancelled' AND reason = 'mutual_agreement') OR
        (outcome = 'accepted' AND grp = 'final' AND state = 'completed' AND reason = 'finished') OR
        (outcome = 'accepted' AND grp = 'step' AND state = 'active') OR
        (outcome = 'revision_requested' AND state = 'active') OR
        (outcome = 'stopped' AND state = 'completed' AND reason = 'stopped') OR
        (outcome = 'expired' AND state = 'completed' AND reason = 'expired'))")" 0 \
   "each order's state matches its winner"
is "$(q "$DB" "SELECT count(*) FROM public.race_outcome r JOIN milestones.order_status s USING (order_id) WHERE NOT CASE
          WHEN r.outcome = 'cancelled' THEN s.refunded = s.charged AND s.paid_out = 0
          WHEN r.outcome = 'accepted,cancelled' THEN s.paid_out = 100.00 AND s.refunded = 150.00
          WHEN r.outcome = 'revision_requested,cancelled' THEN s.refunded = s.charged AND s.paid_out = 0
          WHEN r.state = 'completed' THEN s.paid_out = s.charged AND s.refunded = 0
          ELSE s.paid_out = 0 AND s.refunded = 0 END")" 0 \
   "money follows the winner: cancels refund the running milestone and pay the completed one, ends pay the seller"

# --- The books ---------------------------------------------------------------
is "$(q "$DB" "SELECT COALESCE(sum(amount), 0) FROM milestones.ledger_entries")" "0.00" "the whole ledger sums to zero"
is "$(q "$DB" "SELECT count(*) FROM (SELECT txn_id FROM milestones.ledger_entries GROUP BY txn_id HAVING sum(amount) <> 0) t")" 0 \
   "every ledger transaction balances"
is "$(q "$DB" "SELECT count(*) FROM milestones.check_invariants()")" 0 "check_invariants() is empty"

dist=$(q "$DB" "SELECT string_agg(outcome || '=' || c, ' ' ORDER BY outcome) FROM (SELECT outcome, count(*) c FROM public.race_outcome GROUP BY outcome) x")
lost=$(q "$DB" "SELECT count(*) FROM public.race_log WHERE outcome = '55000'")
diag "outcomes: $dist (cancels that took the delivery first: $(q "$DB" "SELECT count(*) FROM public.race_outcome WHERE outcome = 'cancelled'"))"
diag "refused calls (55000): $lost; sweeps: $(q "$DB" "SELECT count(*) || ' runs, ' || sum(expired) || ' expired, ' || count(*) FILTER (WHERE expired = 0) || ' found nothing' FROM public.race_sweeps")"
is "$(q "$DB" "SELECT string_agg(action, ',' ORDER BY action) FROM (SELECT DISTINCT action FROM public.race_log WHERE outcome = 'won') a")$(q "$DB" "SELECT CASE WHEN sum(expired) > 0 THEN ',expiry' END FROM public.race_sweeps")" \
   "accept,cancel,revise,stop,expiry" "every kind of call won on some orders"
spread=$(q "$DB" "SELECT count(*) FILTER (WHERE s < interval '100 ms') || ' ' || round(extract(epoch FROM percentile_cont(0.5) WITHIN GROUP (ORDER BY s)) * 1000)
                    FROM (SELECT max(at) - min(at) AS s FROM public.race_log GROUP BY order_id) x")
diag "orders whose 4 calls all ended within 100 ms of each other: ${spread% *} of $N (median spread ${spread#* } ms)"
[ "${spread% *}" -ge $(( N / 4 )) ]
ok $? "the calls really raced: on at least a quarter of the orders all four ended within 100 ms"

# --- A buyer holding the oldest overdue order does not starve the sweep -----
# Three orders delivered 2030-01-01 (deadline 2030-01-06); a session locks
# the first.  A sweep of batch 1 still expires a free one, and run_expiry
# (expiry_batch 1) does not stop at the locked head of the queue.
heads=$(psql -X -q -A -t -v ON_ERROR_STOP=1 -d "$DB" <<SQL
SET milestones.fake_now = '2030-01-01 00:00:00+00';
SELECT string_agg(id::text, ' ' ORDER BY id) FROM (
  SELECT (milestones.deliver((milestones.place_order(milestones.create_offer(10, 20, 'design',
          '[{"name":"Logo","days":3,"amount":"120.00"}]'), 20)).order_id, 10)).order_id AS id
    FROM generate_series(1, 3)) x;
SQL
)
read -r h1 h2 h3 <<<"$heads"
(psql -X -q -d "$DB" >/dev/null 2>&1 <<SQL
BEGIN;
SELECT 1 FROM milestones.orders WHERE order_id = $h1 FOR UPDATE;
SELECT pg_sleep(2);
COMMIT;
SQL
) &
holder=$!
sleep 0.5
is "$(q "$DB" "SELECT milestones.expire_overdue('2030-02-01 00:00:00+00', 1)")" 1 \
   "a sweep of batch 1 expires a free overdue order behind a locked one"
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<SQL
UPDATE milestones.settings SET expiry_batch = 1;
SET milestones.fake_now = '2030-02-01 00:00:00+00';
CALL milestones.run_expiry();
SQL
is "$(q "$DB" "SELECT string_agg(COALESCE(end_reason, state), ',' ORDER BY order_id) FROM milestones.orders WHERE order_id IN ($h1, $h2, $h3)")" \
   "active,expired,expired" "run_expiry (expiry_batch 1) expires every free order and leaves the locked one to the next run"
wait "$holder"
t_end=$(ms_now)
[ $(( t_end - t_start )) -lt 45000 ]
ok $? "the suite ran in $(( t_end - t_start )) ms (limit 45 s)"
}

tap_retry "$MAX_ATTEMPTS" "$SCHEDULER_TESTS" attempt
exit $(( TAP_FAILED > 0 ))
