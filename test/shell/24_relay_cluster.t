#!/usr/bin/env bash
# test/shell/24_relay_cluster.t - the relay and the consumers across a crash,
# a dropped database and a restore into another cluster (SPEC section 5,
# issue 10 "Bad input and faults", issue 12).  It runs in a second,
# throwaway cluster of its own (pg_virtualenv), because it drops the relay's
# database and crashes the server:
#
#   - after a crash of any backend the relay resumes from its saved
#     position: events committed (and not yet sent) before the crash are
#     sent after it;
#   - a restore (pg_dump / pg_restore) from the main test cluster into this
#     one, whose transaction counter is far behind: a consumer reads exactly
#     what it had not read before the dump, and events written here after
#     the restore are not held back by the future-looking restored ids;
#   - DROP DATABASE ... WITH (FORCE) of the relay's database: the worker
#     exits cleanly, says so in the log, and is not restarted.
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

if [ -z "${MS_RELAY_INNER:-}" ]; then
  # The main cluster's connection, for the dump; then this file again
  # inside a cluster of its own.
  export MS_RELAY_INNER=1 OUTER_PGHOST=${PGHOST:-} OUTER_PGPORT=${PGPORT:-} OUTER_PGUSER=${PGUSER:-} OUTER_PGPASSWORD=${PGPASSWORD:-}
  env -u PG_CLUSTER_CONF_ROOT -u PGSYSCONFDIR -u PGHOST -u PGPORT -u PGDATABASE -u PGUSER -u PGPASSWORD \
       pg_virtualenv -t "${MS_VENV_OPTS[@]}" -o shared_preload_libraries=milestones -o milestones.database_name=ms_relaydb \
       -o milestones.relay_poll_interval=100 -o fsync=off "$0" 2>&1 | grep -vE '^(Creating new PostgreSQL cluster|Dropping cluster)'
  exit "${PIPESTATUS[0]}"
fi

outer() { PGHOST=$OUTER_PGHOST PGPORT=$OUTER_PGPORT PGUSER=$OUTER_PGUSER PGPASSWORD=$OUTER_PGPASSWORD "$@"; }
DB=ms_relaydb
SRC=ms_xc_src_$$
DST=ms_xc_dst
tmp=$(mktemp -d)
pids=()
cleanup() {
  touch "$tmp/stop" "$tmp/stuck.go"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  outer dropdb --if-exists --force "$SRC" >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT

plan 17
pm_pid=$(q postgres "SELECT split_part(pg_read_file('postmaster.pid'), E'\n', 1)")
logfile=/proc/$pm_pid/fd/2
newlog() { cat "$logfile" 2>/dev/null; }
wait_for() { local i; for i in $(seq 1 300); do [ "$(q "$1" "$2" 2>/dev/null)" = t ] && return 0; sleep 0.05; done; return 1; }

createdb "$DB"
wait_for postgres "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'milestones relay' AND datname = '$DB'"
ok $? "a second cluster: the relay connects to $DB once it exists"
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<'SQL'
CREATE EXTENSION milestones;
SELECT milestones.set_seller_eligibility(10, true);
SELECT milestones.set_category_eligibility('design', true);
SQL
is "$(q "$DB" "SELECT mode FROM milestones.relay_status()")" relay "relay mode"

# --- A crash: the relay resumes from its saved position ----------------------
# Hold the relay back (a listener that never reads, a tiny queue limit),
# commit events, crash the server, and see them sent afterwards.
psql -X -q -d postgres -c "ALTER SYSTEM SET milestones.relay_max_queue_usage = 0.0000005" -c "SELECT pg_reload_conf()" >/dev/null
( printf '%s\n' "LISTEN milestones;" "BEGIN;" "SELECT 'stuck';"; while [ ! -f "$tmp/stuck.go" ]; do sleep 0.05; done ) \
  | psql -X -q -A -t -d "$DB" >"$tmp/stuck.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q '^stuck$' "$tmp/stuck.out" && break; sleep 0.05; done
for i in $(seq 1 40); do offer3 "$DB" 1 >/dev/null; done
wait_for "$DB" "SELECT paused AND pending_events > 0 FROM milestones.relay_status()"
ok $? "the relay is held back with events pending ($(q "$DB" "SELECT pending_events FROM milestones.relay_status()"))"
pending=$(q "$DB" "SELECT pending_events FROM milestones.relay_status()")
psql -X -q -d postgres -c "ALTER SYSTEM RESET milestones.relay_max_queue_usage" >/dev/null   # read at the restart
victim=$(q "$DB" "SELECT pid FROM pg_stat_activity WHERE datname = '$DB' AND query LIKE 'SELECT ''stuck''%' LIMIT 1")
kill -9 "$victim"
wait_for postgres "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'milestones relay'"
ok $? "a backend killed with SIGKILL: the server reinitializes and the relay comes back"
psql -X -q -d postgres -c "SELECT pg_reload_conf()" >/dev/null
wait_for "$DB" "SELECT pending_events = 0 FROM milestones.relay_status()"
ok $? "the relay catches up after the crash"
# Its counters live in shared memory, which the crash reset: what it sent
# since is exactly what was pending, from its saved position.
is "$(q "$DB" "SELECT notifications_sent FROM milestones.relay_status()")" "$pending" \
   "it sent the $pending events committed before the crash and not sent then, and nothing else"
newlog | grep -q "all server processes terminated; reinitializing"
ok $? "(the log shows the crash recovery)"

# --- Restore into this cluster, whose transaction counter is behind ----------
outer createdb "$SRC"
# Make sure the main cluster's counter is well ahead of this new cluster's.
outer psql -X -q -d "$SRC" -c 'DO $$ BEGIN FOR i IN 1..3000 LOOP PERFORM pg_catalog.txid_current(); COMMIT; END LOOP; END $$' >/dev/null
outer psql -X -q -v ON_ERROR_STOP=1 -d "$SRC" >/dev/null <<'SQL'
CREATE EXTENSION milestones;
SELECT milestones.set_seller_eligibility(10, true);
SELECT milestones.set_category_eligibility('design', true);
SELECT milestones.register_consumer('ledger_sync');
SQL
MS='[{"name":"a","days":3,"amount":"100.00"},{"name":"b","days":3,"amount":"150.00"}]'
for i in 1 2 3; do outer psql -X -q -At -d "$SRC" -c "SELECT milestones.create_offer(10, 20, 'design', '$MS', 1)" >/dev/null; done
# ledger_sync reads the first three events and finishes; three more come after.
outer psql -X -q -At -d "$SRC" -c "SELECT milestones.finish_batch(milestones.next_batch('ledger_sync'))" >/dev/null
for i in 1 2 3; do outer psql -X -q -At -d "$SRC" -c "SELECT milestones.create_offer(10, 20, 'design', '$MS', 1)" >/dev/null; done
unread=$(outer psql -X -q -At -d "$SRC" -c "SELECT string_agg(event_id::text, ',' ORDER BY event_id) FROM milestones.events WHERE event_id > 3")
outer pg_dump -Fc -f "$tmp/src.dump" "$SRC"
ok $? "pg_dump of a database of the main cluster, with a consumer half-way"
createdb "$DST"
pg_restore -d "$DST" "$tmp/src.dump" 2>"$tmp/restore.err"
ok $? "pg_restore into this cluster"
here_x=$(q "$DST" "SELECT txid_current()")
there_x=$(q "$DST" "SELECT max(txid)::text FROM milestones.events")
ok $([ "$here_x" -lt "$there_x" ]; echo $?) "this cluster's transaction counter ($here_x) is behind the restored events' ids ($there_x)"
b=$(q "$DST" "SELECT milestones.next_batch('ledger_sync')")
is "$(q "$DST" "SELECT string_agg(event_id::text, ',' ORDER BY event_id) FROM milestones.batch_events($b)")" "$unread" \
   "the restored consumer reads exactly what it had not read before the dump"
q "$DST" "SELECT milestones.finish_batch($b)" >/dev/null
N=$(offer3 "$DST" 1)
q "$DST" "SELECT milestones.place_order($N, 20)" >/dev/null
b=$(q "$DST" "SELECT milestones.next_batch('ledger_sync')")
is "$(q "$DST" "SELECT string_agg(event || '#' || order_id, ',' ORDER BY event_id) FROM milestones.batch_events($b)")" "offered#$N,placed#$N" \
   "events written here after the restore are not held back by the future-looking restored ids"
q "$DST" "SELECT milestones.finish_batch($b)" >/dev/null
is "$(q "$DST" "SELECT milestones.next_batch('ledger_sync') IS NULL")" t "then nothing is new"
dropdb --force "$DST"

# --- The relay's database dropped ----------------------------------------------
before=$(newlog | grep -c "milestones relay started")
touch "$tmp/stop"
psql -X -q -d postgres -c "DROP DATABASE $DB WITH (FORCE)"
ok $? "DROP DATABASE $DB WITH (FORCE) succeeds while the relay is connected"
sleep 3
is "$(q postgres "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'milestones relay'")" 0 "the relay is gone"
newlog | grep -q "milestones relay exiting: database \"$DB\" is being dropped"
ok $? "the log says why it exits"
is "$(newlog | grep -c "milestones relay started")" "$before" "it is not restarted into a database that is gone"

[ "$TAP_FAILED" -eq 0 ]
