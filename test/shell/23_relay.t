#!/usr/bin/env bash
# test/shell/23_relay.t - the relay (SPEC section 5, issue 10 item 3 and its
# faults).  The test cluster preloads milestones with
# milestones.database_name = milestones_relay (test/tools/run-tests); this
# suite installs the extension there and drops it at the end.
#
#   - relay_status(): relay in the served database, fallback (and why) in
#     another;
#   - test/shell/20_notify.t passes unchanged against the relay;
#   - the API's transaction runs no NOTIFY: it can be PREPAREd, and the
#     notification arrives after COMMIT PREPARED (fallback cannot PREPARE);
#   - the relay killed with pg_terminate_backend() is restarted by the
#     postmaster and sends what committed meanwhile; a listener that stayed
#     connected gets nothing twice;
#   - a listener that never reads: above milestones.relay_max_queue_usage
#     the relay pauses with one WARNING, the API keeps working, and the
#     relay catches up when the queue drains.
# The relay's database dropped, and a crash, are in test/shell/24_relay_cluster.t.
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

DB=milestones_relay
OTHER=ms_relay_other_$$
tmp=$(mktemp -d)
pids=()
cleanup() {
  touch "$tmp/stop" "$tmp/stuck.go" "$tmp/prep.go"
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  psql -X -q -d postgres -c "ALTER SYSTEM RESET milestones.relay_max_queue_usage" -c "SELECT pg_reload_conf()" >/dev/null 2>&1
  for g in $(q postgres "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'ms_%_$$'" 2>/dev/null); do
    psql -X -q -d "$(q postgres "SELECT database FROM pg_prepared_xacts WHERE gid = '$g'")" -c "ROLLBACK PREPARED '$g'" >/dev/null 2>&1
  done
  q "$DB" "DROP EXTENSION IF EXISTS milestones CASCADE" >/dev/null 2>&1
  dropdbs "$OTHER"
  rm -rf "$tmp"
}
trap cleanup EXIT

plan 32
[ "$(q postgres "SELECT count(*) FROM pg_database WHERE datname = '$DB'")" = 1 ] || bail "database $DB missing (test/tools/run-tests makes it)"
[ "$(q postgres "SHOW milestones.database_name")" = "$DB" ] || bail "milestones.database_name is not $DB"

pm_pid=$(q postgres "SELECT split_part(pg_read_file('postmaster.pid'), E'\n', 1)")
logfile=/proc/$pm_pid/fd/2
[ -r "$logfile" ] || logfile=$(ls -t "${PG_CLUSTER_CONF_ROOT:-/nonexistent}"/../log/*.log 2>/dev/null | head -1)
log_from=$( [ -r "$logfile" ] && wc -l < "$logfile" || echo 0)
newlog() { tail -n +"$((log_from + 1))" "$logfile" 2>/dev/null; }

# wait_for DB SQL: poll until SQL returns t (15 s at most).
wait_for() { local i; for i in $(seq 1 300); do [ "$(q "$1" "$2" 2>/dev/null)" = t ] && return 0; sleep 0.05; done; return 1; }
relay_pid() { q postgres "SELECT pid FROM pg_stat_activity WHERE backend_type = 'milestones relay'"; }

# --- Both modes ---------------------------------------------------------------
wait_for postgres "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'milestones relay' AND datname = '$DB'"
ok $? "the relay runs, connected to $DB"
MILESTONES_NOTIFY_DB=$DB "$here/20_notify.t" > "$tmp/notify.out" 2>&1
rc=$?
ok $rc "test/shell/20_notify.t passes against the relay ($(grep -c '^ok' "$tmp/notify.out") checks)"
[ $rc -ne 0 ] && diag "$(grep -A3 '^not ok' "$tmp/notify.out" | head -30)"

psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<'SQL'
CREATE EXTENSION milestones;
SELECT milestones.set_seller_eligibility(10, true);
SELECT milestones.set_category_eligibility('design', true);
SQL
newdb "$OTHER"
is "$(q "$DB" "SELECT mode || ' ' || (relay_pid IS NOT NULL) FROM milestones.relay_status()")" "relay true" \
   "relay_status() in $DB: relay mode, with the relay's pid"
is "$(q "$OTHER" "SELECT mode || ': ' || reason FROM milestones.relay_status()")" \
   "fallback: the relay serves database milestones_relay (milestones.database_name), not this one: NOTIFY at commit" \
   "relay_status() in another database: fallback, and why"
is "$(q "$DB" "SELECT count(*) FROM milestones.consumer_status WHERE consumer = '_relay'")" 1 \
   "the relay reads through a consumer of its own (_relay)"

# The listener: as in 20_notify.t.
(
  echo "LISTEN milestones;"
  echo "SELECT 'listening';"
  while [ ! -f "$tmp/stop" ]; do echo "SELECT pg_sleep(0.05);"; sleep 0.05; done
) | psql -X -q -A -t -d "$DB" >"$tmp/listen.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q '^listening$' "$tmp/listen.out" && break; sleep 0.05; done
payloads() {
  sed -n 's/^Asynchronous notification "milestones" with payload "\(.*\)" received from server process with PID [0-9]*\.$/\1/p' "$tmp/listen.out"
}
events_of() { payloads | jq -r --argjson o "$1" 'select(.order_id == $o) | .event' | paste -sd, -; }
# arrived ORDER EVENTS: wait (5 s at most) until ORDER's notifications are EVENTS.
arrived() { local i; for i in $(seq 1 100); do [ "$(events_of "$1")" = "$2" ] && return 0; sleep 0.05; done; return 1; }

# --- Two-phase commit: the API's transaction has no NOTIFY -------------------
P=$(offer3 "$DB" 1)
arrived "$P" offered
ok $? "an offer's notification arrives from the relay"
relay_sender=$(grep 'Asynchronous notification' "$tmp/listen.out" | tail -1 | sed -n 's/.*server process with PID \([0-9]*\)\.$/\1/p')
is "$relay_sender" "$(relay_pid)" "sent by the relay's process, not by the API's backend"
( printf '%s\n' "BEGIN;" "SELECT (milestones.place_order($P, 20)).state;" "PREPARE TRANSACTION 'ms_relay_$$';" "SELECT 'prepared';"
  while [ ! -f "$tmp/prep.go" ]; do sleep 0.05; done ) | psql -X -q -A -t -v ON_ERROR_STOP=1 -d "$DB" >"$tmp/prep.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q '^prepared$' "$tmp/prep.out" && break; sleep 0.05; done
grep -q '^prepared$' "$tmp/prep.out"
ok $? "an API call's transaction is PREPAREd for two-phase commit (it ran no NOTIFY)"
O2=$(offer3 "$OTHER" 1)
psql -X -q -A -t -d "$OTHER" -c "BEGIN" -c "SELECT milestones.place_order($O2, 20)" -c "PREPARE TRANSACTION 'ms_other_$$'" >"$tmp/prep_other.out" 2>&1
grep -q 'cannot PREPARE a transaction that has executed LISTEN, UNLISTEN, or NOTIFY' "$tmp/prep_other.out"
ok $? "(in a fallback database the same call cannot be PREPAREd: it NOTIFYs at commit)"
sleep 1.2
is "$(events_of "$P")" "offered" "nothing is sent for the prepared transaction"
q "$DB" "COMMIT PREPARED 'ms_relay_$$'" >/dev/null
start=$(date +%s%N)
arrived "$P" "offered,placed"
ok $? "its notification arrives after COMMIT PREPARED from another session"
ms=$(( ($(date +%s%N) - start) / 1000000 ))
ok $([ "$ms" -lt 1500 ]; echo $?) "within the poll interval (${ms} ms, under a second plus the listener's polling)"

# --- The relay killed: restarted, sends what committed meanwhile, once -------
old=$(relay_pid)
is "$(q postgres "SELECT pg_terminate_backend($old)")" t "pg_terminate_backend() ends the relay (pid $old)"
K=$(offer3 "$DB" 1)
q "$DB" "SELECT milestones.place_order($K, 20)" >/dev/null
q "$DB" "SELECT milestones.deliver($K, 10)" >/dev/null
wait_for postgres "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'milestones relay' AND pid <> $old"
ok $? "the postmaster starts the relay again (pid $(relay_pid))"
arrived "$K" "offered,placed,delivered"
ok $? "and it sends what committed while it was down, in order"
is "$(payloads | jq -r '.event_id' | sort -n | uniq -d | wc -l)" 0 "the listener that stayed connected got nothing twice"
is "$(payloads | jq -r '.event_id' | sort -n | paste -sd, -)" \
   "$(q "$DB" "SELECT string_agg(event_id::text, ',' ORDER BY event_id) FROM milestones.events")" \
   "and got exactly the events table"
newlog | grep -q "milestones relay terminating on request"
ok $? "the log says the relay was terminated and will resume"

# --- A listener that never reads: pause with one WARNING, then catch up ------
# One page of the queue is 1e-6 of it: pause as soon as a page fills.
psql -X -q -d postgres -c "ALTER SYSTEM SET milestones.relay_max_queue_usage = 0.0000005" -c "SELECT pg_reload_conf()" >/dev/null
sleep 0.5
( printf '%s\n' "LISTEN milestones;" "BEGIN;" "SELECT 'stuck';"
  while [ ! -f "$tmp/stuck.go" ]; do sleep 0.05; done; echo "COMMIT;" ) | psql -X -q -A -t -d "$DB" >"$tmp/stuck.out" 2>&1 &
stuck=$!
pids+=($stuck)
for _ in $(seq 1 100); do grep -q '^stuck$' "$tmp/stuck.out" && break; sleep 0.05; done
first=$(q "$DB" "SELECT max(event_id) FROM milestones.events")
for i in $(seq 1 40); do offer3 "$DB" 1 >/dev/null || break; done
wait_for "$DB" "SELECT paused FROM milestones.relay_status()"
ok $? "a session listens in an open transaction and never reads: the relay pauses"
t0=$(date +%s%N)
for i in $(seq 1 20); do offer3 "$DB" 1 >/dev/null || break; done
ok $([ "$i" -eq 20 ]; echo $?) "the API keeps working while the relay is paused (20 offers in $(( ($(date +%s%N) - t0) / 1000000 )) ms)"
q "$DB" "SELECT pending_events > 0 FROM milestones.relay_status()" | grep -q t
ok $? "relay_status() shows the pending events ($(q "$DB" "SELECT pending_events FROM milestones.relay_status()"))"
is "$(newlog | grep -c 'WARNING:  milestones relay paused')" 1 "one WARNING in the log"
touch "$tmp/stuck.go"
wait "$stuck"
wait_for "$DB" "SELECT NOT paused AND pending_events = 0 FROM milestones.relay_status()"
ok $? "the stuck listener went away: the queue drains and the relay catches up"
want=$(q "$DB" "SELECT string_agg(event_id::text, ',' ORDER BY event_id) FROM milestones.events WHERE event_id > $first")
for _ in $(seq 1 100); do
  [ "$(payloads | jq -r "select(.event_id > $first) | .event_id" | sort -n | paste -sd, -)" = "$want" ] && break; sleep 0.05
done
is "$(payloads | jq -r "select(.event_id > $first) | .event_id" | sort -n | paste -sd, -)" "$want" \
   "the live listener got every event of the pause, once"
newlog | grep -q "milestones relay resumed"
ok $? "the log says the relay resumed"
is "$(newlog | grep -c 'WARNING:  milestones relay paused')" 1 "still one WARNING"

# --- A deadlock with the relay: the relay's batch gives up ------------------
# A session holds the relay's consumer row; an offer wakes the relay, whose
# batch (holding events) waits for that row; the session then asks for
# events in ACCESS EXCLUSIVE mode (as ALTER EXTENSION UPDATE does): a
# deadlock.  The session's own deadlock check would find it 500 ms after
# it began to wait; the relay's (it waited first) ran before the cycle
# was closed and found none, but the relay waits for no lock longer than
# 200 ms: its batch gives up first, the session's LOCK is granted, and the
# batch is tried again.
wait_for "$DB" "SELECT pending_events = 0 FROM milestones.relay_status()"
( printf '%s\n' "SET deadlock_timeout = '500ms';" "BEGIN;" \
    "SELECT 'held' FROM milestones.consumers WHERE name = '_relay' FOR UPDATE;"
  while [ ! -f "$tmp/dl.go" ]; do sleep 0.02; done
  printf '%s\n' "SELECT clock_timestamp() AS t0 \\gset" \
    "LOCK TABLE milestones.events IN ACCESS EXCLUSIVE MODE;" \
    "SELECT 'locked after ' || round(extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) * 1000) || ' ms';" \
    "COMMIT;" ) | psql -X -q -A -t -d "$DB" >"$tmp/dl.out" 2>&1 &
dl=$!
pids+=($dl)
for _ in $(seq 1 100); do grep -q '^held$' "$tmp/dl.out" && break; sleep 0.05; done
D=$(offer3 "$DB" 1)
for _ in $(seq 1 500); do
  [ "$(q postgres "SELECT wait_event_type FROM pg_stat_activity WHERE backend_type = 'milestones relay'")" = Lock ] && break
  sleep 0.01
done
touch "$tmp/dl.go"
wait "$dl"
locked=$(sed -n 's/^locked after \([0-9]*\) ms$/\1/p' "$tmp/dl.out")
ok "$([ -n "$locked" ] && ! grep -q ERROR "$tmp/dl.out"; echo $?)" \
   "a deadlock between a relay batch and a session: the session's LOCK is granted (after ${locked:-?} ms), no error$(grep ERROR "$tmp/dl.out" | head -1 | sed 's/^/: /')"
arrived "$D" offered
ok $? "... the relay's batch gave up, and a later one sent the offer"
newlog | grep -qE "ERROR:  (canceling statement due to lock timeout|deadlock detected)"
ok $? "... the log shows the relay's lock timeout (or, when the session closed the cycle within 100 ms, its deadlock)"

# --- Payloads byte for byte, with text that needs escaping -------------------
# One note per kind of escape (so that none hides another), and one without.
n=0
for note in 'a \\ backslash' 'a " quote' 'a \t tab, a \n newline, a \x01' '\u00e9\u2713 {"json": [1]}'; do
  X=$(offer3 "$DB" 1)
  q "$DB" "SELECT milestones.place_order($X, 20)" >/dev/null
  q "$DB" "SELECT milestones.deliver($X, 10, E'$note')" >/dev/null && n=$((n + 1))
done
arrived "$X" "offered,placed,delivered"
ok $([ "$n" -eq 4 ]; echo $?) "four deliveries whose notes need escaping are notified"
# A seller-level event (order_id NULL, 1.2): the relay sends it too.
S=$(q "$DB" "INSERT INTO milestones.events (order_id, event, actor_role, actor_id, order_state, detail, created_at)
             VALUES (NULL, 'withdrawal_requested', 'seller', 10, NULL,
                     '{\"seller_id\": 10, \"currency\": \"USD\", \"amount\": 7, \"withdrawal_id\": 1}', now())
             RETURNING event_id" | head -1)
for _ in $(seq 1 100); do payloads | jq -r .event_id | grep -qx "$S" && break; sleep 0.05; done
is "$(payloads | jq -r "select(.event_id == $S) | [.order_id, .seller_id, .amount] | @csv")" ',10,"7.00"' \
   "a seller-level event (no order) is relayed, its seller from the detail"
is "$(payloads | sort | md5sum)" \
   "$(q "$DB" "SELECT p.payload FROM milestones._payloads(ARRAY(SELECT e FROM milestones.events e)) p" | sort | md5sum)" \
   "every payload the relay sent is byte for byte what _payloads() builds for its event"

[ "$TAP_FAILED" -eq 0 ]
