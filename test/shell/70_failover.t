#!/usr/bin/env bash
# test/shell/70_failover.t - failover to a streaming standby (SPEC section
# 13, issue 22).  Two clusters of the test's own (test/tools/scaleout-lib.sh,
# the build make test installed): a primary with pg_cron and milestones
# preloaded, serving database shop (cron.database_name and
# milestones.database_name), and a hot standby made from it with
# pg_basebackup -R, streaming.
#
#   - on the standby the views and reports read, every function that
#     writes fails with 25006 and the product's message (which action, and
#     that this server is a standby) -- the list comes from the catalog, so
#     a function added later that writes is held to it too --, no relay and
#     no pg_cron launcher run, relay_status() says 'standby', and nothing
#     the API is asked there takes the server down;
#   - on the primary: orders in every state, and a durable consumer that
#     finishes three batches, takes a fourth and does not finish it;
#   - the primary is stopped hard (immediate) once the standby has replayed
#     all of it, and the standby is promoted;
#   - then the relay starts by itself within seconds (a LISTEN session gets
#     the next event's notification), pg_cron's job runs there (it expires
#     an overdue order), and the consumer resumes: the unfinished batch is
#     handed out again, no finished batch is, and no event committed before
#     the failover is lost.
# pg_cron 1.4 schedules by the minute: the test waits up to ~75 s for it.
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
# shellcheck source=../tools/scaleout-lib.sh
. "$here/../tools/scaleout-lib.sh"

DB=shop
tmp=$(mktemp -d)
pids=()
cleanup() {
  touch "$tmp/stop"
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  so_cleanup
  rm -rf "$tmp"
}
trap cleanup EXIT

plan 34

# --- The primary and its standby ---------------------------------------------
so_init || bail "initdb failed"
so_cluster primary "shared_preload_libraries = 'pg_cron,milestones'" \
  "cron.database_name = '$DB'" "milestones.database_name = '$DB'" \
  "cron.use_background_workers = on" "max_worker_processes = 16" || bail "the primary did not start"
so_psql primary postgres -q -c "CREATE DATABASE $DB" >/dev/null || bail "CREATE DATABASE failed"
so_psql primary "$DB" -q >/dev/null <<'SQL' || bail "extension setup failed"
CREATE EXTENSION pg_cron;
CREATE EXTENSION milestones;
SELECT milestones.set_seller_eligibility(10, true);
SELECT milestones.set_category_eligibility('design', true);
SELECT milestones.schedule_expiry('* * * * *');
SQL
# The application's consumer, registered before the orders: it reads all of them.
so_as shop_app primary "$DB" -qAt -c "SELECT milestones.register_consumer('billing')" >/dev/null || bail "register_consumer failed"

SP=$(so_free_port) || bail "no free port"
so_run "$SO_BIN/pg_basebackup" -h "$SO_DIR/sock" -p "${SO_PORT[primary]}" -U postgres \
  -D "$SO_DIR/standby" -R -X stream -c fast >"$tmp/basebackup.log" 2>&1 || { cat "$tmp/basebackup.log"; bail "pg_basebackup failed"; }
echo "port = $SP" | so_run tee -a "$SO_DIR/standby/postgresql.conf" >/dev/null
SO_PORT[standby]=$SP
SO_NAMES+=(standby)
so_start standby || bail "the standby did not start"
is "$(so_q standby "$DB" "SELECT pg_is_in_recovery()") $(so_q primary postgres "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")" \
   "t 1" "a hot standby made with pg_basebackup -R streams from the primary"
standby_start=$(so_q standby postgres "SELECT pg_postmaster_start_time()")

# --- Writes and a consumer on the primary ------------------------------------
every_state_sql | so_psql primary "$DB" -q >/dev/null
ok $? "the primary takes orders in every state"

# consume N: one batch of at most 5 events through the app role, in three
# transactions as a worker behind a pooler does (the batch is named by its
# id); "batch:event_id" lines on stdout, the batch finished unless N is
# "open".  Nothing when nothing is new.
consume() {
  local server=$1 mode=$2 b
  b=$(so_as shop_app "$server" "$DB" -qAt -c "SELECT milestones.next_batch('billing', 5)") || return 1
  [ -n "$b" ] || return 0
  so_as shop_app "$server" "$DB" -qAt -c "SELECT $b || ':' || event_id FROM milestones.batch_events($b, 'billing') ORDER BY event_id" || return 1
  [ "$mode" = open ] && return 0
  so_as shop_app "$server" "$DB" -qAt -c "SELECT milestones.finish_batch($b, 'billing')" >/dev/null
}
for i in 1 2 3; do consume primary finish >>"$tmp/finished.out" || bail "consume failed"; done
consume primary open >"$tmp/open.out" || bail "next_batch failed"
open_batch=$(head -1 "$tmp/open.out" | cut -d: -f1)
sizes=$(cut -d: -f1 "$tmp/finished.out" "$tmp/open.out" | uniq -c | awk '{ print $1 }' | paste -sd' ' -)
ok $([[ "$sizes" =~ ^[1-5]\ [1-5]\ [1-5]\ [1-5]$ ]]; echo $?) \
   "the consumer finished 3 batches and holds a fourth ($open_batch) unfinished (events: $sizes)"
# More orders after the open batch: committed, not yet in any batch.
late1=$(so_q primary "$DB" "SELECT milestones.create_offer(10, 20, 'design', '$OFFER3_MS', 1)")
so_q primary "$DB" "SELECT milestones.place_order($late1, 20); SELECT milestones.deliver($late1, 10)" >/dev/null
offered=$(so_q primary "$DB" "SELECT min(order_id) FROM milestones.orders WHERE state = 'offered'")
active=$(so_q primary "$DB" "SELECT min(order_id) FROM milestones.orders WHERE state = 'active'")

# caught_up: the standby has replayed everything the primary wrote so far.
caught_up() {
  local lsn i
  lsn=$(so_q primary postgres "SELECT pg_current_wal_lsn()")
  for i in $(seq 1 200); do
    [ "$(so_q standby postgres "SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn")" = t ] && return 0
    sleep 0.05
  done
  return 1
}
caught_up
ok $? "the standby replays the primary's writes"

# --- The standby reads --------------------------------------------------------
view_sum="SELECT count(*) || ' ' || md5(string_agg(s::text, ',' ORDER BY s.order_id)) FROM milestones.order_status s"
is "$(so_as shop_reader standby "$DB" -qAt -c "$view_sum")" "$(so_q primary "$DB" "$view_sum")" \
   "the standby's order_status equals the primary's (read as milestones_reader)"
reads=$(so_as shop_reader standby "$DB" -qAt -c "SELECT (SELECT count(*) FROM milestones.milestone_status) > 0,
  (SELECT count(*) FROM milestones.awaiting_response) > 0, (SELECT count(*) FROM milestones.payouts) > 0,
  (SELECT count(*) FROM milestones.ledger) > 0, (SELECT count(*) FROM milestones.consumer_status) = 2,
  (milestones.order_status($active)).state" 2>&1)
is "$reads" "t|t|t|t|t|active" "milestone_status, awaiting_response, payouts, ledger, consumer_status and order_status() read there"
payouts="SELECT string_agg(p::text, ' ' ORDER BY o.order_id) FROM milestones.order_status o, milestones.payout(o.order_id) p"
is "$(so_as shop_support standby "$DB" -qAt -c "SELECT count(*) FROM milestones.check_invariants()" 2>&1)|$(so_as shop_app standby "$DB" -qAt -c "$payouts" 2>&1)" \
   "0|$(so_q primary "$DB" "$payouts")" "check_invariants() runs on the standby (empty), and payout() gives the primary's answers"
is "$(so_as shop_app standby "$DB" -qAt -c "SELECT string_agg($open_batch || ':' || event_id, ' ' ORDER BY event_id) FROM milestones.batch_events($open_batch, 'billing')" 2>&1)" \
   "$(paste -sd' ' "$tmp/open.out")" "batch_events() reads the open batch on the standby"

# --- The standby refuses writes, each by name ---------------------------------
# Every function of the extension's API that is VOLATILE is one that writes
# (read-only ones are STABLE); each is called with NULL arguments, which
# must not matter: the refusal comes first.  READ_ONLY_VOLATILE would list
# a volatile function that only reads (none today).
READ_ONLY_VOLATILE="''"
calls=$(so_q standby "$DB" "
  SELECT p.proname || '|' || CASE p.prokind WHEN 'p' THEN 'CALL ' ELSE 'SELECT ' END
         || p.oid::regproc::text || '(' || array_to_string(ARRAY(
              SELECT 'NULL::' || format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY a(t, i) ORDER BY i), ', ') || ')'
    FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
   WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'milestones')
     AND p.proname !~ '^_' AND p.provolatile = 'v' AND p.proname NOT IN ($READ_ONLY_VOLATILE)
   ORDER BY 1")
wrong=""
n=0
while IFS='|' read -r name call; do
  [ -n "$name" ] || continue
  n=$((n + 1))
  got=$(so_psql standby "$DB" -qAt -v VERBOSITY=verbose -c "$call" 2>&1 | head -1)
  [ "$got" = "ERROR:  25006: $name is not allowed: this server is a standby" ] || wrong+="$name: $got"$'\n'
done <<<"$calls"
is "$wrong" "" "each of the $n writing functions fails on the standby with 25006 '<function> is not allowed: this server is a standby'"
missing=""
for f in create_offer withdraw_offer decline_offer place_order deliver accept request_revision stop cancel \
         cancel_milestone expire_overdue run_expiry schedule_expiry unschedule_expiry set_setting set_partition \
         register_consumer unregister_consumer next_batch finish_batch set_seller_eligibility \
         set_category_eligibility set_cancellation_reason; do
  grep -q "^$f|" <<<"$calls" || missing+="$f "
done
is "$missing" "" "... and the API's writers are all in that list ($(cut -d'|' -f1 <<<"$calls" | paste -sd' ' -))"

got=$(so_as shop_app standby "$DB" -qAt -v VERBOSITY=verbose -c "SELECT milestones.place_order($offered, 20, 'key-1')" 2>&1 | grep -E '^(ERROR|DETAIL|HINT)')
is "$got" "ERROR:  25006: place_order is not allowed: this server is a standby
DETAIL:  A standby is read-only: it replays the primary's changes and accepts no writes.
HINT:  Send writes to the primary; the views and reports work here." \
   "an application's place_order on the standby: 25006 with the product's message, DETAIL and HINT"
for call in "SELECT milestones.deliver($active, 10)" "SELECT milestones.next_batch('billing')" "SELECT milestones.finish_batch($open_batch, 'billing')"; do
  so_as shop_app standby "$DB" -qAt -v VERBOSITY=verbose -c "$call" 2>&1 | head -1
done >"$tmp/app_refusals.out"
is "$(cat "$tmp/app_refusals.out")" "ERROR:  25006: deliver is not allowed: this server is a standby
ERROR:  25006: next_batch is not allowed: this server is a standby
ERROR:  25006: finish_batch is not allowed: this server is a standby" \
   "deliver, next_batch and finish_batch with real arguments: the same"
is "$(so_as shop_support standby "$DB" -qAt -v VERBOSITY=terse -c "SELECT milestones.cancel($active, 'agent-7', 'duplicate_order')" 2>&1)" \
   "ERROR:  cancel is not allowed: this server is a standby" "support's cancel: refused by name"
is "$(so_psql standby "$DB" -qAt -v ON_ERROR_STOP=0 -v VERBOSITY=terse -c "BEGIN" -c "SELECT 1 FROM milestones.check_invariants() LIMIT 0" -c "SAVEPOINT s" -c "SELECT milestones.set_setting('max_milestones', '4')" -c "ROLLBACK TO s" -c "SELECT (milestones.order_status($active)).state" -c "COMMIT" 2>&1 | paste -sd' ' -)" \
   "ERROR:  set_setting is not allowed: this server is a standby active" \
   "a refused call in a transaction leaves the session usable (savepoint, then a read)"

# --- Nothing runs there that would write ------------------------------------
is "$(so_q standby postgres "SELECT count(*) FILTER (WHERE backend_type = 'milestones relay') || ' ' || count(*) FILTER (WHERE backend_type = 'pg_cron launcher') FROM pg_stat_activity")" \
   "0 0" "no relay and no pg_cron launcher run on the standby (both start when recovery has finished)"
is "$(so_q primary postgres "SELECT count(*) FILTER (WHERE backend_type = 'milestones relay') || ' ' || count(*) FILTER (WHERE backend_type = 'pg_cron launcher') FROM pg_stat_activity")" \
   "1 1" "(on the primary both run)"
is "$(so_psql standby "$DB" -qAt -v VERBOSITY=terse -c "LISTEN milestones" 2>&1)" "ERROR:  cannot execute LISTEN during recovery" \
   "(nobody can listen there either: PostgreSQL refuses LISTEN during recovery)"
is "$(so_as shop_reader standby "$DB" -qAt -c "SELECT mode || ' | ' || reason || ' | ' || (relay_pid IS NULL) || ' | ' || (position_at IS NOT NULL) || ' | ' || (pending_events IS NULL) FROM milestones.relay_status()")" \
   "standby | this server is a standby: nothing commits or is notified here; the relay starts by itself when the server is promoted | true | true | true" \
   "relay_status() on the standby: mode standby, the relay starts after promotion (no pid, no lag to alert on)"
is "$(so_q standby postgres "SELECT pg_postmaster_start_time() = '$standby_start'") $(grep -cE 'terminated by signal|PANIC|server process .* exited' "$SO_DIR/standby.log")" \
   "t 0" "no call crashed the standby (same postmaster, no backend died)"

# --- Failover -----------------------------------------------------------------
# Last writes, replayed; then the primary dies.
so_q primary "$DB" "SELECT milestones.accept($late1, 20)" >/dev/null
before=$(so_q primary "$DB" "SELECT count(*) || ' ' || max(event_id) FROM milestones.events")
caught_up
ok $? "the standby has replayed everything the primary committed (${before% *} events, the last $(echo "$before" | cut -d' ' -f2))"
so_run "$SO_BIN/pg_ctl" -D "$SO_DIR/primary" -m immediate -w stop >/dev/null
ok $? "the primary is stopped hard (pg_ctl -m immediate)"
log_from=$(wc -l < "$SO_DIR/standby.log")
t0=$(date +%s%N)
so_run "$SO_BIN/pg_ctl" -D "$SO_DIR/standby" -w -t 60 promote >/dev/null
is "$?|$(so_q standby postgres "SELECT pg_is_in_recovery()")" "0|f" "the standby is promoted"
is "$(so_q standby "$DB" "SELECT count(*) || ' ' || max(event_id) FROM milestones.events")" "$before" \
   "every event the old primary committed is on the new one"

# The overdue delivery first, so that pg_cron's next minute finds it while
# the rest runs: delivered six days ago by the real clock, its window closed.
overdue=$(so_psql standby "$DB" -qAt <<SQL 2>&1 | tail -1
SELECT set_config('milestones.fake_now', (now() - interval '6 days')::text, false) IS NULL;
SELECT milestones.create_offer(10, 20, 'design', '[{"name":"Logo","days":3,"amount":"120.00"}]') AS id \gset
SELECT (milestones.place_order(:id, 20)).state IS NULL, (milestones.deliver(:id, 10)).state IS NULL;
SELECT :id;
SQL
)
[[ "$overdue" =~ ^[0-9]+$ ]]
ok $? "the new primary takes writes (an order delivered six days ago by its clock: $overdue)"

# The relay starts by itself.
relay=""
for i in $(seq 1 300); do
  relay=$(so_q standby postgres "SELECT pid FROM pg_stat_activity WHERE backend_type = 'milestones relay' AND datname = '$DB'")
  [ -n "$relay" ] && break
  sleep 0.05
done
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
ok $([ -n "$relay" ] && [ "$ms" -lt 10000 ]; echo $?) "the relay starts by itself after promotion (${ms} ms after pg_ctl promote, pid ${relay:-none})"
is "$(so_q standby "$DB" "SELECT mode || ' ' || (relay_pid = ${relay:-0}) FROM milestones.relay_status()")" "relay true" \
   "relay_status(): relay mode, with its pid"
(
  echo "LISTEN milestones;"
  echo "SELECT 'listening';"
  while [ ! -f "$tmp/stop" ]; do echo "SELECT pg_sleep(0.05);"; sleep 0.05; done
) | so_psql standby "$DB" -qAt >"$tmp/listen.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q '^listening$' "$tmp/listen.out" && break; sleep 0.05; done
fresh=$(so_q standby "$DB" "SELECT milestones.create_offer(10, 20, 'design', '$OFFER3_MS', 1)")
t1=$(date +%s%N)
# events_of ORDER: the events of ORDER the listener was notified of.
events_of() {
  sed -n 's/^Asynchronous notification "milestones" with payload "\(.*\)" received from server process with PID [0-9]*\.$/\1/p' "$tmp/listen.out" \
    | jq -r --argjson o "$1" 'select(.order_id == $o) | .event' | paste -sd, -
}
got=""
for i in $(seq 1 100); do
  got=$(events_of "$fresh")
  [ -n "$got" ] && break
  sleep 0.05
done
ms=$(( ($(date +%s%N) - t1) / 1000000 ))
is "$got" offered "a LISTEN session on the new primary gets the next event's notification (${ms} ms)"
sender=$(sed -n 's/^Asynchronous notification "milestones" with payload "\(.*\)" received from server process with PID \([0-9]*\)\.$/\2 \1/p' "$tmp/listen.out" \
  | while read -r pid json; do [ "$(jq -r .order_id <<<"$json")" = "$fresh" ] && echo "$pid"; done | sort -u)
is "$sender" "$relay" "sent by the relay"

# --- The consumer resumes on the new primary ----------------------------------
consume standby open >"$tmp/again.out"
is "$(paste -sd' ' "$tmp/again.out")" "$(paste -sd' ' "$tmp/open.out")" \
   "next_batch hands out the unfinished batch $open_batch again, with the same events"
so_as shop_app standby "$DB" -qAt -c "SELECT milestones.finish_batch($open_batch, 'billing')" >/dev/null
so_q standby "$DB" "SELECT event_id FROM milestones.events" | sort >"$tmp/committed.out"
for i in $(seq 1 100); do
  out=$(consume standby finish) || { diag "consume failed"; break; }
  [ -n "$out" ] || break
  echo "$out" >>"$tmp/after.out"
done
touch "$tmp/after.out"
is "$(cut -d: -f2 "$tmp/after.out" | sort | comm -12 - <(cut -d: -f2 "$tmp/finished.out" "$tmp/open.out" | sort) | wc -l)" 0 \
   "no batch finished before the failover is handed out again"
cut -d: -f2 "$tmp/finished.out" "$tmp/open.out" "$tmp/after.out" | sort >"$tmp/consumed.out"
is "$(uniq -d "$tmp/consumed.out" | wc -l) $(comm -23 "$tmp/committed.out" "$tmp/consumed.out" | wc -l)" "0 0" \
   "over both servers the consumer got every committed event ($(wc -l < "$tmp/committed.out"), $(echo "$before" | cut -d' ' -f1) of them from the old primary), none twice but the unfinished batch"

# --- pg_cron runs there -------------------------------------------------------
is "$(so_q standby postgres "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_cron launcher'")" 1 \
   "pg_cron's launcher runs on the new primary"
state=""
t2=$(date +%s)
while [ $(( $(date +%s) - t2 )) -lt 75 ]; do
  state=$(so_q standby "$DB" "SELECT state || '/' || COALESCE(end_reason, '') FROM milestones.orders WHERE order_id = $overdue")
  [ "$state" = "completed/expired" ] && break
  sleep 1
done
is "$state" "completed/expired" "the expiry job scheduled on the old primary expires the overdue order on the new one ($(( $(date +%s) - t2 )) s)"
is "$(so_q standby "$DB" "SELECT count(*) FROM milestones.check_invariants()")" 0 "check_invariants() is empty after the failover"

[ "$TAP_FAILED" -eq 0 ]
