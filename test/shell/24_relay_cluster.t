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
#     exits cleanly, says so in the log, and is not restarted; the same
#     (after a server restart) when the relay is in the middle of a
#     statement at that moment: SIGTERM is die(), a FATAL error there, and
#     the exit path sees the drop (issue 19, item 4).
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

plan 24
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

# --- ... while the relay runs a statement -------------------------------------
# A server restart brings the relay back (gave_up lives in shared memory);
# the database is created again, with a DBA's trigger that makes the
# relay's batch sleep: the drop comes in the middle of its statement, not
# between two batches, so the termination reaches it as a FATAL error.
# (A lock the relay waits for would be held by a session of the same
# database, which the drop terminates too: either may go first.)
ver=$(pg_lsclusters -h | awk '$2 == "regress" { print $1; exit }')
pg_ctlcluster "$ver" regress restart >/dev/null 2>&1
wait_for postgres "SELECT true"
pm_pid=$(q postgres "SELECT split_part(pg_read_file('postmaster.pid'), E'\n', 1)")
logfile=/proc/$pm_pid/fd/2
createdb "$DB"
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<'SQL'
CREATE EXTENSION milestones;
SELECT milestones.set_seller_eligibility(10, true);
SELECT milestones.set_category_eligibility('design', true);
SQL
wait_for "$DB" "SELECT relay_pid IS NOT NULL FROM milestones.relay_status()"
ok $? "after a server restart the relay serves $DB, created again"
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<'SQL'
CREATE FUNCTION public.slow_relay() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT backend_type FROM pg_stat_activity WHERE pid = pg_backend_pid()) = 'milestones relay' THEN
        PERFORM pg_sleep(60);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER slow_relay AFTER INSERT OR UPDATE ON milestones.consumer_ticks
    FOR EACH ROW EXECUTE FUNCTION public.slow_relay();
SQL
offer3 "$DB" 1 >/dev/null
wait_for postgres "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'milestones relay' AND wait_event = 'PgSleep'"
ok $? "the relay is in the middle of its batch (a trigger on its tick table sleeps)"
relay=$(q postgres "SELECT pid FROM pg_stat_activity WHERE backend_type = 'milestones relay'")
before=$(newlog | grep -c "milestones relay started")
dropped_before=$(newlog | grep -c "milestones relay exiting: database \"$DB\" is being dropped")
psql -X -q -d postgres -c "DROP DATABASE $DB WITH (FORCE)"
ok $? "DROP DATABASE $DB WITH (FORCE) succeeds while the relay runs its statement"
sleep 3
is "$(q postgres "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'milestones relay'")" 0 "the relay is gone"
newlog | grep -q "\[$relay\] FATAL:  terminating background worker \"milestones relay\""
ok $? "(the termination reached it in its statement: FATAL)"
is "$(( $(newlog | grep -c "milestones relay exiting: database \"$DB\" is being dropped") - dropped_before ))-$(( $(newlog | grep -c "milestones relay started") - before ))" "1-0" \
   "the log says why it exits, and it is not restarted into a database that is gone"
createdb ms_relay_other
q ms_relay_other "CREATE EXTENSION milestones" >/dev/null
is "$(q ms_relay_other "SELECT mode || ': ' || reason FROM milestones.relay_status()")" \
   "fallback: the relay stopped when its database ms_relaydb was dropped: NOTIFY at commit" \
   "relay_status() elsewhere: the relay gave up, the fallback applies"

[ "$TAP_FAILED" -eq 0 ]
