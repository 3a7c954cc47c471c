#!/usr/bin/env bash
# test/shell/43_clearance_crash.t - SPEC section 12, issue 21: the
# clearance sweep killed mid-batch under load leaves every balance
# consistent.
#
# 6,000 earnings of 600 sellers are due.  pgbench withdraws from random
# sellers among 100 of them from 4 clients (each withdrawal clears its
# seller's due earnings itself); meanwhile one session runs clear_earnings over the whole
# backlog in one batch, and is killed with SIGKILL half-way; the
# postmaster ends every session and recovers.  Then: check_invariants() is
# empty, no earning was cleared twice, the killed batch left nothing
# behind; the pg_cron job's procedure (run_expiry) clears the rest, each
# earning exactly once, and the books still agree.
# Needs to run as root or as the postgres user (to signal the backend).
set -uo pipefail
. "$(dirname "$0")/lib.sh"

db=ms_clearance_crash
tmp=$(mktemp -d)
trap 'dropdbs $db; rm -rf "$tmp"' EXIT
plan 15
newdb $db
psql -X -q -v ON_ERROR_STOP=1 -d $db -f "$(dirname "$0")/../fixtures/earnings.sql" >/dev/null || bail "the earnings fixture failed"
# sellers 1100-1599 (5,000 earnings) are the sweep's alone; sellers
# 1000-1099 (1,000 earnings, due 5 days later: the sweep reaches them last)
# are the withdrawals'.
q $db "SELECT earn_fixture.load(5000, 500, now() - interval '20 days', 1100, 10.00);
       SELECT earn_fixture.load(1000, 100, now() - interval '15 days', 1000, 10.00)" >/dev/null || bail "loading the earnings failed"
q $db "VACUUM ANALYZE" >/dev/null
is "$(q $db "SELECT count(*) FROM milestones.check_invariants()")" 0 "6,000 due earnings of 600 sellers, books sound"

cat > "$tmp/withdraw.sql" <<'SQL'
\set s random(1000, 1099)
SELECT milestones.request_withdrawal(:s, 1.00, 'USD');
SQL

pm_pid=$(q $db "SELECT pg_catalog.split_part(pg_catalog.pg_read_file('postmaster.pid'), E'\n', 1)")
# The watch for the sweep runs in the server, every 10 ms (a fresh read of
# pg_stat_activity each time), not a psql started per look: on a busy
# machine starting psql takes long enough to miss a sweep of a second or two.
q $db "CREATE FUNCTION public.sweep_after(min_s float8) RETURNS integer LANGUAGE plpgsql AS \$\$
DECLARE p integer;
BEGIN
    FOR i IN 1 .. 3000 LOOP
        PERFORM pg_stat_clear_snapshot();
        SELECT pid INTO p FROM pg_stat_activity
         WHERE application_name = 'crash_sweep' AND state = 'active'
           AND backend_xid IS NOT NULL AND clock_timestamp() - xact_start > make_interval(secs => min_s);
        IF p IS NOT NULL THEN RETURN p; END IF;
        PERFORM pg_sleep(0.01);
    END LOOP;
    RETURN NULL;
END \$\$" >/dev/null || bail "cannot create the watch function"
pgbench -n -c 4 -j 4 -T 20 -f "$tmp/withdraw.sql" $db > "$tmp/pgbench.out" 2>&1 &
bench=$!
PGAPPNAME=crash_sweep psql -X -q -A -t -d $db -c "SELECT milestones.clear_earnings(milestones.now(), 100000)" \
  > "$tmp/sweep.out" 2>&1 &
sweep=$!
victim=$(q $db "SELECT public.sweep_after(1)")
ok $([ -n "$victim" ]; echo $?) "the sweep has been clearing for 1 s beside 4 withdrawing clients (pid ${victim:-none})"
kill -9 "$victim"
ok $? "kill -9 the sweep's backend"
back=1
for i in $(seq 1 300); do
  sleep 0.1
  if [ "$(q $db "SELECT 1" 2>/dev/null)" = "1" ] && ! kill -0 "$victim" 2>/dev/null; then back=0; break; fi
done
ok $back "the server took connections again"
wait $sweep
wait $bench
grep -qE 'server closed the connection|terminating connection|connection to server' "$tmp/sweep.out"
ok $? "the sweep's session was cut off"
withdrawn=$(q $db "SELECT count(*) FROM milestones.withdrawals")
ok $([ "$withdrawn" -gt 0 ]; echo $?) "the withdrawals went on beside the sweep until the crash ($withdrawn committed)"

# What survived is whole.
is "$(q $db "SELECT count(*) FROM milestones.check_invariants()")" 0 "check_invariants() is empty after the crash"
is "$(q $db "SELECT count(*) FROM (SELECT earning_id FROM milestones.seller_ledger WHERE kind = 'clearance'
                                     GROUP BY earning_id HAVING count(*) <> 2) x")" 0 "no earning was cleared twice"
is "$(q $db "SELECT count(*) FROM milestones.seller_earnings WHERE seller_id >= 1100 AND cleared_at IS NULL")" 5000 \
   "the killed batch committed nothing: the 5,000 earnings only the sweep clears are all pending"
diag "$withdrawn withdrawals meanwhile cleared $(q $db "SELECT count(*) FROM milestones.seller_earnings WHERE cleared_at IS NOT NULL") earnings of their sellers"
is "$(q $db "SELECT count(*) FROM milestones.seller_earnings e
              LEFT JOIN (SELECT l.earning_id, count(*) AS legs FROM milestones.seller_ledger l WHERE l.kind = 'clearance'
                          GROUP BY l.earning_id) c ON c.earning_id = e.earning_id
             WHERE (e.cleared_at IS NULL) <> (c.legs IS NULL)")" 0 \
   "an earning is cleared exactly when its clearance is in the journal"

# The next run of the pg_cron job's procedure clears the rest.
q $db "UPDATE milestones.settings SET expiry_batch = 5000" >/dev/null
psql -X -q -v ON_ERROR_STOP=1 -d $db -c "CALL milestones.run_expiry()" >/dev/null 2>"$tmp/run.err"
ok $? "CALL milestones.run_expiry() ran after the recovery"
is "$(q $db "SELECT count(*) FROM milestones.seller_earnings WHERE cleared_at IS NULL")" 0 "every due earning is cleared now"
is "$(q $db "SELECT count(*) FILTER (WHERE n <> 2) || ' ' || count(*) FROM (SELECT count(*) AS n FROM milestones.seller_ledger
              WHERE kind = 'clearance' GROUP BY earning_id) x")" "0 6000" "each of the 6,000 earnings was cleared exactly once"
is "$(q $db "SELECT count(*) FROM milestones.check_invariants()")" 0 "check_invariants() is empty at the end"
is "$(q $db "SELECT sum(pending + available + withdrawing + withdrawn) || ' ' || sum(withdrawing) FROM milestones.seller_accounts")" \
   "60000.00 $(q $db "SELECT COALESCE(sum(amount), 0.00) FROM milestones.withdrawals")" "all 60,000.00 earned is still there: available, or withdrawing"
[ $TAP_FAILED -eq 0 ]
