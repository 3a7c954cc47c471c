#!/usr/bin/env bash
# test/shell/11_pg_cron_live.t - R9 live: the real pg_cron worker expires an
# unanswered order.  The runner's cluster preloads pg_cron with
# cron.database_name = milestones_cron, so pg_cron can only be installed
# there.  pg_cron 1.4 schedules by the minute: this test waits up to ~75 s.
#
# pg_cron's worker uses the real clock, not a session's milestones.fake_now,
# so the order is delivered at a fake time six days ago: its deadline
# (delivery + 5 days) passed one day ago by the real clock.
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

DB=milestones_cron
plan 18

made_cron=0
made_ms=0
cleanup() {
  q "$DB" "SELECT milestones.unschedule_expiry()" >/dev/null 2>&1 || true
  [ "$made_ms" = 1 ] && q "$DB" "DROP EXTENSION milestones" >/dev/null 2>&1
  [ "$made_cron" = 1 ] && q "$DB" "DROP EXTENSION pg_cron" >/dev/null 2>&1
  true
}
trap cleanup EXIT

[ "$(q postgres "SHOW cron.database_name")" = "$DB" ] || bail "cron.database_name is not $DB"
q postgres "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1 || bail "database $DB does not exist"
if [ -z "$(q "$DB" "SELECT 1 FROM pg_extension WHERE extname = 'pg_cron'")" ]; then
  q "$DB" "CREATE EXTENSION pg_cron" >/dev/null || bail "CREATE EXTENSION pg_cron failed"
  made_cron=1
fi
if [ -z "$(q "$DB" "SELECT 1 FROM pg_extension WHERE extname = 'milestones'")" ]; then
  q "$DB" "CREATE EXTENSION milestones" >/dev/null || bail "CREATE EXTENSION milestones failed"
  made_ms=1
fi
q "$DB" "SELECT milestones.set_seller_eligibility(10, true), milestones.set_category_eligibility('design', true)" >/dev/null

# --- schedule_expiry / unschedule_expiry with pg_cron -------------------------
job1=$(q "$DB" "SELECT milestones.schedule_expiry('0 3 * * *')")
[[ "$job1" =~ ^[0-9]+$ ]]
ok $? "schedule_expiry returns a pg_cron job id ($job1)"
is "$(q "$DB" "SELECT jobname || ' | ' || schedule || ' | ' || command || ' | ' || (username = current_user) FROM cron.job WHERE jobid = $job1")" \
   "milestones-expiry | 0 3 * * * | CALL milestones.run_expiry() | true" \
   "the job is milestones-expiry, running CALL milestones.run_expiry() as the caller"
job2=$(q "$DB" "SELECT milestones.schedule_expiry('* * * * *')")
is "$job2" "$job1" "calling schedule_expiry again returns the same job"
is "$(q "$DB" "SELECT count(*) || ' ' || min(schedule) FROM cron.job WHERE jobname = 'milestones-expiry'")" \
   "1 * * * * *" "still one job, with the new schedule"
err=$(psql -X -q -A -t -v VERBOSITY=sqlstate -d "$DB" -c "SELECT milestones.schedule_expiry('every minute')" 2>&1 >/dev/null)
is "$err|$(q "$DB" "SELECT schedule FROM cron.job WHERE jobname = 'milestones-expiry'")" "ERROR:  22023|* * * * *" \
   "a malformed schedule is refused (22023) and the job keeps its schedule"
is "$(q "$DB" "SELECT milestones.unschedule_expiry()")" t "unschedule_expiry returns true when there was a job"
is "$(q "$DB" "SELECT milestones.unschedule_expiry()")" f "... and false (no error) when there is none"
is "$(q "$DB" "SELECT count(*) FROM cron.job WHERE jobname = 'milestones-expiry'")" 0 "the job is gone"

# --- the live run -------------------------------------------------------------
# late: delivered six days ago (deadline one day ago); fresh: delivered now.
late=$(psql -X -q -A -t -v ON_ERROR_STOP=1 -d "$DB" <<'SQL'
SELECT set_config('milestones.fake_now', (now() - interval '6 days')::text, false) IS NULL;
SELECT milestones.create_offer(10, 20, 'design',
  '[{"name":"Storyboard","days":3,"amount":"100.00"},{"name":"Final cut","days":5,"amount":"250.00"}]') AS id \gset
SELECT (milestones.place_order(:id, 20)).state IS NULL, (milestones.deliver(:id, 10)).state IS NULL;
SELECT :id;
SQL
)
late=$(echo "$late" | tail -1)
fresh=$(q "$DB" "SELECT milestones.create_offer(10, 20, 'design', '[{\"name\":\"Logo\",\"days\":3,\"amount\":\"120.00\"}]')")
q "$DB" "SELECT milestones.place_order($fresh, 20), milestones.deliver($fresh, 10)" >/dev/null
is "$(q "$DB" "SELECT string_agg(order_id || ':' || overdue, ' ' ORDER BY overdue DESC) FROM milestones.awaiting_response")" \
   "$late:true $fresh:false" "awaiting_response shows the late delivery overdue (real clock), first"

job=$(q "$DB" "SELECT milestones.schedule_expiry('* * * * *')")
t0=$(date +%s)
state=""
while [ $(( $(date +%s) - t0 )) -lt 80 ]; do
  state=$(q "$DB" "SELECT state || '/' || COALESCE(end_reason, '') FROM milestones.orders WHERE order_id = $late")
  [ "$state" = "completed/expired" ] && break
  sleep 2
done
waited=$(( $(date +%s) - t0 ))
diag "pg_cron expired the order after $waited s"
is "$state" "completed/expired" "the pg_cron worker expired the unanswered order (within 80 s)"
# the run's row can land a moment after the order commits
for i in $(seq 1 10); do
  run=$(q "$DB" "SELECT status || ' | ' || command FROM cron.job_run_details WHERE jobid = $job AND status <> 'running' ORDER BY runid LIMIT 1")
  [ -n "$run" ] && break
  sleep 1
done
is "$run" "succeeded | CALL milestones.run_expiry()" "cron.job_run_details records a succeeded run of CALL milestones.run_expiry()"
is "$(q "$DB" "SELECT (o.completed_at = m.respond_by) || ' ' || array_to_string(ARRAY(SELECT state FROM milestones.order_milestones WHERE order_id = o.order_id ORDER BY position), ',') FROM milestones.orders o JOIN milestones.order_milestones m ON m.order_id = o.order_id AND m.position = 1 WHERE o.order_id = $late")" \
   "true completed,skipped" "completed at its deadline, not when the job ran; milestone 1 paid, milestone 2 skipped"
is "$(q "$DB" "SELECT gross || ' ' || state || ' ' || reason FROM milestones.payouts WHERE order_id = $late")" \
   "100.00 completed expired" "the seller's payout for the delivered milestone is recorded"
is "$(q "$DB" "SELECT count(*) || ' ' || min(actor_role) FROM milestones.events WHERE order_id = $late AND event = 'expired'")" \
   "1 system" "one expired event, by the system"
is "$(q "$DB" "SELECT state FROM milestones.order_milestones WHERE order_id = $fresh")" "delivered" \
   "the delivery whose window is open is left alone"
is "$(q "$DB" "SELECT count(*) FROM milestones.check_invariants()")" 0 "check_invariants() is empty"

is "$(q "$DB" "SELECT milestones.unschedule_expiry()")" t "unschedule_expiry removes the live job"
is "$(q "$DB" "SELECT count(*) FROM cron.job WHERE jobname = 'milestones-expiry'")" 0 "no job is left"

exit $(( TAP_FAILED > 0 ))
