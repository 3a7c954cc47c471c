#!/usr/bin/env bash
# test/shell/32_crash.t - kill -9 a backend mid-transaction under load (issue 5).
#
# pgbench runs order lifecycles (each a transaction of several API calls,
# with a short sleep in the middle) from 6 clients.  One backend that is
# inside a transaction with a transaction id (it has written) is killed
# with SIGKILL; the postmaster ends every session and recovers.  Then:
# no partial order (check_invariants() empty, every order has its
# milestones and its events), and the database takes new work.
# Needs to run as root or as the postgres user (to signal the backend).
set -uo pipefail
. "$(dirname "$0")/lib.sh"

db=ms_crash
tmp=$(mktemp -d)
trap 'dropdbs $db; rm -rf "$tmp"' EXIT
plan 13
newdb $db

cat > "$tmp/life.sql" <<SQL
\set path random(1, 4)
BEGIN;
SELECT milestones.create_offer(10, 20, 'design', '$OFFER3_MS', 1) AS o \gset
SELECT 1 FROM milestones.place_order(:o, 20);
SELECT 1 FROM milestones.deliver(:o, 10);
SELECT pg_sleep(0.01 * :path);
SELECT 1 FROM milestones.accept(:o, 20);
SELECT 1 FROM milestones.deliver(:o, 10);
SELECT 1 FROM milestones.stop(:o, 20) WHERE :path = 1;
SELECT 1 FROM milestones.cancel(:o, 'crash-agent', 'mutual_agreement') WHERE :path = 2;
COMMIT;
SQL

pm_pid=$(q $db "SELECT pg_catalog.split_part(pg_catalog.pg_read_file('postmaster.pid'), E'\n', 1)")
logfile=$(readlink "/proc/$pm_pid/fd/2" 2>/dev/null || true)
pm_start=$(q $db "SELECT pg_postmaster_start_time()")
log_lines_before=$( [ -f "$logfile" ] && wc -l < "$logfile" || echo 0)

pgbench -n -c 6 -j 6 -T 8 -f "$tmp/life.sql" $db > "$tmp/pgbench.out" 2>&1 &
bench=$!
sleep 2
orders_before=$(q $db "SELECT count(*) FROM milestones.orders")
victim=""
for i in $(seq 1 100); do
  victim=$(q $db "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'pgbench'
                    AND backend_xid IS NOT NULL AND state IN ('active', 'idle in transaction') LIMIT 1")
  [ -n "$victim" ] && break
  sleep 0.02
done
ok $([ -n "$victim" ]; echo $?) "found a pgbench backend inside a writing transaction (pid ${victim:-none}; $orders_before orders so far)"
t0=$(date +%s%N)
kill -9 "$victim"
ok $? "kill -9 $victim"
# Wait until the server answers again after its crash recovery.
back=1
for i in $(seq 1 300); do
  sleep 0.1
  if [ "$(q $db "SELECT 1" 2>/dev/null)" = "1" ] && ! kill -0 "$victim" 2>/dev/null; then back=0; break; fi
done
recovery_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
ok $back "the server took connections again ${recovery_ms} ms after the kill"
wait $bench
grep -qiE 'server closed the connection|terminating connection|client [0-9]+ aborted|connection to server' "$tmp/pgbench.out"
ok $? "pgbench's sessions were cut off by the restart"
if [ -f "$logfile" ]; then
  tail -n +"$((log_lines_before + 1))" "$logfile" > "$tmp/server.log"
  grep -q "\[$pm_pid\] LOG:  server process (PID $victim) was terminated by signal 9" "$tmp/server.log"
  ok $? "the server log shows the backend killed by signal 9 and the postmaster reinitializing"
else
  ok 0 "# SKIP server log not found"
fi
is "$(q $db "SELECT pg_postmaster_start_time()")" "$pm_start" "the same postmaster (not a new server) recovered"

# What survived is whole.
is "$(q $db "SELECT count(*) FROM milestones.check_invariants()")" "0" "check_invariants() is empty after the crash"
n=$(q $db "SELECT count(*) FROM milestones.orders")
ok $([ "$n" -gt 0 ]; echo $?) "$n orders committed survived"
is "$(q $db "SELECT count(*) FROM milestones.orders o
              WHERE (SELECT count(*) FROM milestones.order_milestones m WHERE m.order_id = o.order_id) <> 3")" "0" \
   "every order has all 3 of its milestones"
is "$(q $db "SELECT count(*) FROM milestones.order_status
              WHERE NOT (state = 'active' AND current_milestone = 2 AND milestone_state = 'delivered'
                         OR state = 'completed' AND reason = 'stopped' OR state = 'cancelled')")" "0" \
   "every order is at one of the ends of a whole lifecycle transaction (none half-way)"
is "$(q $db "SELECT count(*) FROM milestones.orders o
              WHERE (SELECT count(*) FROM milestones.events e WHERE e.order_id = o.order_id)
                    <> CASE o.state WHEN 'active' THEN 5 ELSE 6 END")" "0" "every order has exactly the events of its transaction"
is "$(q $db "SELECT COALESCE(sum(amount), 0) FROM milestones.ledger_entries")" "0.00" "the ledger sums to zero"

# New work goes on.
o=$(offer3 $db)
is "$(q $db "SELECT milestones.place_order($o, 20) IS NOT NULL; SELECT state FROM milestones.deliver($o, 10)" | tail -1)" "active" \
   "new orders run after the recovery"
diag "pgbench: $(grep -E 'number of transactions actually processed|aborted' "$tmp/pgbench.out" | tr '\n' ' ')"
[ $TAP_FAILED -eq 0 ]
