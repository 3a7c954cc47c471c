#!/usr/bin/env bash
# test/shell/29_relay_stop.t - the relay's shutdown and status (issue 19,
# item 4).  The test cluster preloads milestones with
# milestones.database_name = milestones_relay (test/tools/run-tests); this
# suite installs the extension there and drops it at the end.
#
#   - pg_terminate_backend() interrupts a relay that waits for a lock
#     another session holds: it exits within a second (SIGTERM is die(),
#     as in worker_spi), is restarted by the postmaster, and sends what
#     was pending once the lock is gone;
#   - relay_status() never shows a process that is gone: a sampler reads
#     it all along and checks each pid it reports against
#     pg_stat_activity, through the lock wait, the termination, and a run
#     of FATAL errors of the relay (a DBA's trigger on its tick table that
#     terminates the relay's own backend in the middle of its statement);
#   - the relay's database being dropped while it waits for a lock is in
#     test/shell/24_relay_cluster.t.
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

DB=milestones_relay
tmp=$(mktemp -d)
pids=()
cleanup() {
  touch "$tmp/lock.go" "$tmp/stop"
  q "$DB" "INSERT INTO public.sampler_stop VALUES (true)" >/dev/null 2>&1
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  q "$DB" "DROP EXTENSION IF EXISTS milestones CASCADE" >/dev/null 2>&1
  q "$DB" "DROP TABLE IF EXISTS public.sampler_stop; DROP FUNCTION IF EXISTS public.kill_relay()" >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT

plan 13
[ "$(q postgres "SELECT count(*) FROM pg_database WHERE datname = '$DB'")" = 1 ] || bail "database $DB missing (test/tools/run-tests makes it)"
[ "$(q postgres "SHOW milestones.database_name")" = "$DB" ] || bail "milestones.database_name is not $DB"

pm_pid=$(q postgres "SELECT split_part(pg_read_file('postmaster.pid'), E'\n', 1)")
logfile=/proc/$pm_pid/fd/2
log_from=$( [ -r "$logfile" ] && wc -l < "$logfile" || echo 0)
newlog() { tail -n +"$((log_from + 1))" "$logfile" 2>/dev/null; }
# wait_for DB SQL: poll until SQL returns t (15 s at most).
wait_for() { local i; for i in $(seq 1 300); do [ "$(q "$1" "$2" 2>/dev/null)" = t ] && return 0; sleep 0.05; done; return 1; }
relay_pid() { q postgres "SELECT pid FROM pg_stat_activity WHERE backend_type = 'milestones relay'"; }

psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<'SQL'
CREATE EXTENSION milestones;
SELECT milestones.set_seller_eligibility(10, true);
SELECT milestones.set_category_eligibility('design', true);
CREATE TABLE public.sampler_stop (stop boolean);
SQL
wait_for postgres "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'milestones relay' AND datname = '$DB'"
ok $? "the relay runs"
wait_for "$DB" "SELECT relay_pid IS NOT NULL FROM milestones.relay_status()"

# The sampler: relay_status() every 10 ms, each pid it reports checked
# against pg_stat_activity read after it (the relay clears its pid before
# it leaves pg_stat_activity, so a pid that is not there was stale); each
# sample its own transaction, so that it holds no lock in between.
psql -X -q -A -t -d "$DB" >"$tmp/samples" 2>"$tmp/sampler.err" <<'SQL' &
DO $$
DECLARE r record;
BEGIN
    LOOP
        SELECT s.relay_pid,
               s.relay_pid IS NULL OR EXISTS (SELECT FROM pg_stat_activity a WHERE a.pid = s.relay_pid) AS alive
          INTO r FROM milestones.relay_status() s;
        RAISE NOTICE 'sample % %', COALESCE(r.relay_pid::text, 'none'), CASE WHEN r.alive THEN 'alive' ELSE 'DEAD' END;
        EXIT WHEN EXISTS (SELECT FROM public.sampler_stop);
        COMMIT;                         -- no lock held between samples
        PERFORM pg_sleep(0.01);
    END LOOP;
END $$;
SQL
sampler=$!
pids+=($sampler)
samples() { sed -n 's/^.*NOTICE:  sample //p' "$tmp/sampler.err"; }

# --- A lock the relay needs, held by another session -------------------------
( echo "BEGIN;"; echo "SELECT FROM milestones.consumers WHERE name = '_relay' FOR UPDATE;"; echo "SELECT 'locked';"
  while [ ! -f "$tmp/lock.go" ]; do sleep 0.05; done; echo "COMMIT;" ) | psql -X -q -A -t -d "$DB" >"$tmp/lock.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q '^locked$' "$tmp/lock.out" && break; sleep 0.05; done
O=$(offer3 "$DB" 1)
wait_for postgres "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'milestones relay' AND wait_event_type = 'Lock'"
ok $? "a session holds the relay's consumer row locked: the relay, woken by a commit, waits for the lock"
# The relay gives up a lock wait after its own lock_timeout (200 ms), logs
# it and tries again a little later; so the signal goes out in the same
# statement that sees it waiting for the lock (retried until it does), not
# a psql start later, when on a busy machine it may be between two tries.
# pg_terminate_backend(pid, timeout) then waits inside the server until
# the process is gone (checking every 100 ms): the time is the relay's;
# 10 s is only the give-up point.
term=
for _ in $(seq 1 200); do
  term=$(q postgres "SELECT pid || ' ' || pg_terminate_backend(pid, 10000)::int || ' ' || round(extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000)
                       FROM pg_stat_activity WHERE backend_type = 'milestones relay' AND wait_event_type = 'Lock'")
  [ -n "$term" ] && break
  sleep 0.02
done
old=${term%% *}; term=${term#* }
is "${term% *}" 1 "pg_terminate_backend() of the relay while it waits for the lock (pid ${old:-none}) returns once it is gone"
ms=${term#* }
is "$(q postgres "SELECT count(*) FROM pg_stat_activity WHERE pid = ${old:-0}")" 0 "it exits while the lock is still held"
ok $([ "$ms" -lt 1000 ]; echo $?) "within a second (${ms} ms, timed in the server)"
newlog | grep -q "\[$old\] FATAL:  terminating background worker \"milestones relay\" due to administrator command"
rc=$?
ok $rc "with PostgreSQL's FATAL for a terminated background worker (die())"
[ $rc = 0 ] || diag "the log of pid $old: $(newlog | grep -F "$old" | tail -5)"
wait_for postgres "SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'milestones relay' AND pid <> ${old:-0}"
ok $? "the postmaster starts it again (pid $(relay_pid))"
touch "$tmp/lock.go"
wait_for "$DB" "SELECT pending_events = 0 FROM milestones.relay_status()"
ok $? "once the lock is released it sends what was pending (order $O's offer)"

# --- FATAL errors in the middle of the relay's statement ---------------------
# A DBA's trigger on the relay's tick table that terminates the backend it
# runs in when that is the relay: the relay fails with FATAL at its next
# batch, is restarted a second later, fails again, ...
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<'SQL'
CREATE FUNCTION public.kill_relay() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT backend_type FROM pg_stat_activity WHERE pid = pg_backend_pid()) = 'milestones relay' THEN
        PERFORM pg_terminate_backend(pg_backend_pid());
        PERFORM pg_sleep(0.1);          -- the interrupt: FATAL here
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER kill_relay AFTER INSERT OR UPDATE ON milestones.consumer_ticks
    FOR EACH ROW EXECUTE FUNCTION public.kill_relay();
SQL
before=$(newlog | grep -c 'FATAL:  terminating background worker "milestones relay"')
for i in 1 2 3; do offer3 "$DB" 1 >/dev/null; sleep 1.2; done
fatals=$(( $(newlog | grep -c 'FATAL:  terminating background worker "milestones relay"') - before ))
ok $([ "$fatals" -ge 2 ]; echo $?) "the relay fails with FATAL in the middle of its batch, again and again ($fatals times in 3.6 s)"
q "$DB" "DROP TRIGGER kill_relay ON milestones.consumer_ticks" >/dev/null
wait_for "$DB" "SELECT relay_pid IS NOT NULL AND pending_events = 0 FROM milestones.relay_status()"
ok $? "without the trigger it runs again and catches up"

q "$DB" "INSERT INTO public.sampler_stop VALUES (true)" >/dev/null
wait "$sampler"
n=$(samples | wc -l)
ok $([ "$n" -gt 100 ]; echo $?) "relay_status() was sampled all along ($n samples)"
is "$(samples | grep -c DEAD)" 0 "relay_status() never showed the pid of a process that was gone"
[ "$(samples | grep -c DEAD)" = 0 ] || diag "$(samples | grep DEAD | sort | uniq -c | head)"
ok $([ "$(samples | grep -c '^none')" -gt 0 ]; echo $?) \
   "it showed no pid while the relay was down ($(samples | grep -c '^none') samples; $(samples | cut -d' ' -f1 | grep -v none | sort -u | wc -l) relay processes seen)"

[ "$TAP_FAILED" -eq 0 ]
