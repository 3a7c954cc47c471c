#!/usr/bin/env bash
# test/shell/74_audit_job.t - the invariants audit as a pg_cron job (SPEC
# section 13): schedule_audit() / unschedule_audit() with the real pg_cron
# of the runner's cluster (cron.database_name = milestones_cron, as in
# 11_pg_cron_live.t), beside the expiry job.
#
# The job is what pg_cron stores (name, schedule, command, user); its
# command is then run exactly as stored, as the job's user, rather than
# waiting for the minute pg_cron 1.4 would run it at: 11_pg_cron_live.t
# already shows pg_cron running an owner's job in this cluster.
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

DB=milestones_cron
plan 15

made_cron=0
made_ms=0
cleanup() {
  q "$DB" "SELECT milestones.unschedule_audit(), milestones.unschedule_expiry()" >/dev/null 2>&1 || true
  [ "$made_ms" = 1 ] && q "$DB" "DROP EXTENSION milestones" >/dev/null 2>&1
  [ "$made_cron" = 1 ] && q "$DB" "DROP EXTENSION pg_cron" >/dev/null 2>&1
  true
}
trap cleanup EXIT

[ "$(q postgres "SHOW cron.database_name")" = "$DB" ] || bail "cron.database_name is not $DB"
if [ -z "$(q "$DB" "SELECT 1 FROM pg_extension WHERE extname = 'pg_cron'")" ]; then
  q "$DB" "CREATE EXTENSION pg_cron" >/dev/null || bail "CREATE EXTENSION pg_cron failed"
  made_cron=1
fi
if [ -z "$(q "$DB" "SELECT 1 FROM pg_extension WHERE extname = 'milestones'")" ]; then
  q "$DB" "CREATE EXTENSION milestones" >/dev/null || bail "CREATE EXTENSION milestones failed"
  made_ms=1
fi
q "$DB" "SELECT milestones.set_seller_eligibility(10, true), milestones.set_category_eligibility('design', true)" >/dev/null

# --- schedule_audit / unschedule_audit ---------------------------------------
job1=$(q "$DB" "SELECT milestones.schedule_audit()")
[[ "$job1" =~ ^[0-9]+$ ]]
ok $? "schedule_audit() returns a pg_cron job id ($job1)"
is "$(q "$DB" "SELECT jobname || ' | ' || schedule || ' | ' || command || ' | ' || (username = current_user) FROM cron.job WHERE jobid = $job1")" \
   "milestones-audit | 17 * * * * | SELECT milestones.run_audit() | true" \
   "the job is milestones-audit, hourly at minute 17 by default, running SELECT milestones.run_audit() as the caller"
job2=$(q "$DB" "SELECT milestones.schedule_audit('0 4 1 1 *')")
is "$job2" "$job1" "calling schedule_audit again returns the same job"
is "$(q "$DB" "SELECT count(*) || ' ' || min(schedule) FROM cron.job WHERE jobname = 'milestones-audit'")" \
   "1 0 4 1 1 *" "still one job, with the new schedule (once a year: it cannot fire while this test runs)"
err=$(psql -X -q -A -t -v VERBOSITY=sqlstate -d "$DB" -c "SELECT milestones.schedule_audit('every hour')" 2>&1 >/dev/null)
is "$err|$(q "$DB" "SELECT schedule FROM cron.job WHERE jobname = 'milestones-audit'")" "ERROR:  22023|0 4 1 1 *" \
   "a malformed schedule is refused (22023) and the job keeps its schedule"
jobx=$(q "$DB" "SELECT milestones.schedule_expiry()")
is "$(q "$DB" "SELECT string_agg(jobname, ' ' ORDER BY jobname) FROM cron.job WHERE jobname LIKE 'milestones-%'")" \
   "milestones-audit milestones-expiry" "the audit job and the expiry job are two jobs side by side"
is "$(q "$DB" "SELECT milestones.unschedule_expiry()")|$(q "$DB" "SELECT count(*) FROM cron.job WHERE jobname = 'milestones-audit'")" \
   "t|1" "unscheduling the expiry leaves the audit job alone"

# --- the job's command, as pg_cron stores it ---------------------------------
cmd=$(q "$DB" "SELECT command FROM cron.job WHERE jobname = 'milestones-audit'")
user=$(q "$DB" "SELECT username FROM cron.job WHERE jobname = 'milestones-audit'")
for i in 1 2 3; do
  o=$(offer3 "$DB")
  q "$DB" "SELECT milestones.place_order($o, 20), milestones.deliver($o, 10)" >/dev/null
done
before=$(q "$DB" "SELECT count(*) FROM milestones.audit_runs")
psql -X -q -A -t -v ON_ERROR_STOP=1 -U "$user" -d "$DB" -c "$cmd" >/dev/null
ok $? "the job's command runs as the job's user ($user): $cmd"
is "$(q "$DB" "SELECT count(*) - $before FROM milestones.audit_runs")|$(q "$DB" "SELECT last_problems || ' ' || (last_clean_at = last_run_at) || ' ' || (last_run_at > now() - interval '1 minute') FROM milestones.audit_status")" \
   "1|0 true true" "it recorded one run: no problem, so the last clean run is this one, just now"

# A problem on the books: the run records it and warns in the server log.
broken=$(q "$DB" "SELECT max(order_id) FROM milestones.orders")
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<SQL
SET session_replication_role = replica;
UPDATE milestones.ledger_entries SET amount = 90
 WHERE order_id = $broken AND kind = 'charge' AND position = 1 AND account = 'escrow';
SQL
out=$(psql -X -q -A -t -U "$user" -d "$DB" -c "$cmd" 2>&1 >/dev/null)
n=$(q "$DB" "SELECT count(*) FROM milestones.check_invariants()")
[ "$n" -gt 0 ] && grep -qF "WARNING:  milestones audit: check_invariants() found $n problem(s)" <<<"$out"
ok $? "with an order corrupted on purpose the run warns: $(head -1 <<<"$out")"
is "$(q "$DB" "SELECT last_problems = $n AND last_clean_at < last_run_at AND (last_sample -> 0 ->> 'order_id')::bigint = $broken FROM milestones.audit_status")" t \
   "audit_status: the latest run found them (its sample names the order); the last clean run is the one before"
is "$(q "$DB" "SELECT status FROM cron.job_run_details WHERE jobid = $job1 AND status = 'failed' LIMIT 1")" "" \
   "pg_cron has no failed run of the job"
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<SQL
SET session_replication_role = replica;
UPDATE milestones.ledger_entries SET amount = 100
 WHERE order_id = $broken AND kind = 'charge' AND position = 1 AND account = 'escrow';
SQL
is "$(q "$DB" "SELECT count(*) FROM milestones.check_invariants()")" 0 "(the order is put back)"

is "$(q "$DB" "SELECT milestones.unschedule_audit()")" t "unschedule_audit() returns true when there was a job"
is "$(q "$DB" "SELECT milestones.unschedule_audit()")|$(q "$DB" "SELECT count(*) FROM cron.job WHERE jobname LIKE 'milestones-%'")" \
   "f|0" "... then false (no error); no job is left"

exit $(( TAP_FAILED > 0 ))
