#!/usr/bin/env bash
# test/shell/42_withdrawal_race.t - SPEC section 12 from real concurrent
# sessions: two withdrawals racing for one balance serialize on the
# seller's account and never overdraw; a storm of withdrawals from eight
# sessions takes exactly what was available; the clearance sweep never
# waits for a withdrawal (it skips the account) and a withdrawal waits for
# the sweep, then counts the cleared money once; a hold stops a waiting
# withdrawal's own clearance; a keyed retry and two payment workers
# reporting the same withdrawal race too.  check_invariants() stays empty.
#
# The orders are written by test/fixtures/earnings.sql (ended
# confirmed-mode orders) and credited by _credit_earning, the engine's C
# path; the clock is the real one.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

db=ms_withdrawal_race
tmp=$(mktemp -d)
trap 'dropdbs $db; rm -rf "$tmp"' EXIT
plan 33
newdb $db
psql -X -q -v ON_ERROR_STOP=1 -d $db -f "$(dirname "$0")/../fixtures/earnings.sql" >/dev/null || bail "the earnings fixture failed"

# earn SELLER AMOUNT AGE N: N earnings of AMOUNT for SELLER, their orders ended AGE ago.
earn() {
  q $db "SELECT count(earn_fixture.earn($1, $2, now() - interval '$3')) FROM generate_series(1, ${4:-1})" >/dev/null ||
    bail "earning for seller $1 failed"
}
# wait_for APP: until a session named APP sleeps in pg_sleep (it holds its locks by then).
wait_for() {
  local i
  for i in $(seq 1 200); do
    [ "$(q $db "SELECT count(*) FROM pg_stat_activity WHERE application_name = '$1' AND state = 'active' AND query LIKE '%pg_sleep%'")" = 1 ] && return 0
    sleep 0.05
  done
  return 1
}
# hold APP SECONDS SQL: in the background, session APP runs SQL in a transaction and sleeps before COMMIT.
hold() {
  PGAPPNAME=$1 psql -X -q -A -t -v ON_ERROR_STOP=1 -d $db > "$tmp/$1.out" 2>&1 <<SQL &
BEGIN;
$3;
SELECT pg_sleep($2) \\g /dev/null
COMMIT;
SQL
}
ms_now() { date +%s%3N; }
bal() { q $db "SELECT format('%s/%s/%s/%s', pending, available, withdrawing, withdrawn) FROM milestones.seller_balance($1, 'USD')"; }

# --- 1. Two withdrawals racing for one balance -------------------------------
earn 10 60.00 '30 days'; earn 10 40.00 '29 days'
q $db "SELECT milestones.clear_earnings()" >/dev/null
is "$(bal 10)" "0.00/100.00/0.00/0.00" "seller 10 has 100.00 available"
hold race_a 1.5 "SELECT milestones.request_withdrawal(10, 70.00, 'USD')"
pa=$!
wait_for race_a
ok $? "session A requested 70.00 and holds its transaction open"
t0=$(ms_now)
err=$(q $db "SELECT milestones.request_withdrawal(10, 70.00, 'USD')" 2>&1 >/dev/null)
t1=$(ms_now)
wait $pa; rc=$?
is "$rc $(grep -c '^[0-9]' "$tmp/race_a.out")" "0 1" "session A's withdrawal committed"
ok $([ $((t1 - t0)) -ge 700 ]; echo $?) "session B waited for A's lock on the account ($((t1 - t0)) ms)"
is "$err" "ERROR:  seller 10 cannot withdraw 70.00 USD: only 30.00 is available
DETAIL:  Seller 10 has 30.00 USD available, 0.00 pending clearance and 70.00 being withdrawn.
HINT:  Withdraw at most the available balance; pending earnings become available at their clears_at (seller_balances.next_clears_at)." \
   "then B was refused (55000) with what A left available in the DETAIL"
is "$(bal 10)" "0.00/30.00/70.00/0.00" "one withdrawal of 70.00: never overdrawn"

# --- 2. A storm: eight sessions, 120 withdrawals, 250.00 available -----------
earn 21 25.00 '20 days' 10
is "$(bal 21)" "250.00/0.00/0.00/0.00" "seller 21 has 250.00 due, not yet cleared by any sweep"
start=$(( $(ms_now) + 1500 ))
storm() {            # storm K: 15 withdrawals of 1.00 + K .. 15.00 + K cents-varied amounts
  local k=$1 j sql=""
  for j in $(seq 1 15); do
    sql+="SELECT 'ok ' || milestones.request_withdrawal(21, ${j}.$(printf '%02d' $((k * 7 % 100))), 'USD');"$'\n'
  done
  while [ "$(ms_now)" -lt "$start" ]; do :; done
  printf "\\set VERBOSITY sqlstate\n%s" "$sql" | psql -X -q -A -t -d $db >"$tmp/storm$k.out" 2>"$tmp/storm$k.err"
}
pids=()
for k in 1 2 3 4 5 6 7 8; do storm $k & pids+=($!); done
for p in "${pids[@]}"; do wait "$p"; done
wins=$(cat "$tmp"/storm?.out | grep -c '^ok ')
errs=$(cat "$tmp"/storm?.err | grep -c 'ERROR')
bad=$(cat "$tmp"/storm?.err | grep 'ERROR' | grep -vc 'ERROR:  55000')
sum=$(q $db "SELECT COALESCE(sum(amount), 0) FROM milestones.withdrawals WHERE seller_id = 21")
diag "storm: $wins withdrawals made (sum $sum), $errs refused"
is "$((wins + errs))" 120 "every withdrawal of the storm either worked or was refused"
is "$bad" 0 "every refusal was 55000 (more than is available)"
is "$(q $db "SELECT count(*) FROM milestones.withdrawals WHERE seller_id = 21")" "$wins" "one withdrawal row per success"
ok $(q $db "SELECT CASE WHEN $sum <= 250.00 AND $sum > 200.00 THEN 0 ELSE 1 END") "the storm took $sum of 250.00: never more, and refused only when too little was left"
is "$(bal 21)" "$(q $db "SELECT format('0.00/%s/%s/0.00', 250.00 - $sum, $sum::numeric(14,2))")" "the balance is what is left"
is "$(q $db "SELECT count(*) FROM milestones.seller_earnings WHERE seller_id = 21 AND cleared_at IS NOT NULL")" 10 \
   "the withdrawals cleared the ten due earnings themselves"
is "$(q $db "SELECT count(*) FROM milestones.seller_ledger WHERE seller_id = 21 AND kind = 'clearance'")" 20 "... each exactly once (two legs each)"
is "$(q $db "SELECT count(*) FROM milestones.check_invariants()")" 0 "check_invariants() is empty after the storm"

# --- 3. The sweep and a withdrawal -------------------------------------------
earn 22 10.00 '16 days' 3; earn 23 10.00 '16 days' 2
hold race_w 2 "SELECT milestones.request_withdrawal(22, 30.00, 'USD')"
pw=$!
wait_for race_w
ok $? "a withdrawal of seller 22 cleared its due earnings and holds the account"
t0=$(ms_now)
swept=$(q $db "SELECT milestones.clear_earnings()")
t1=$(ms_now)
is "$swept" 2 "the sweep cleared seller 23's two earnings and skipped the locked account"
ok $([ $((t1 - t0)) -lt 1500 ]; echo $?) "the sweep did not wait for the withdrawal ($((t1 - t0)) ms while it sleeps 2 s)"
wait $pw
is "$(bal 22) $(bal 23)" "0.00/0.00/30.00/0.00 0.00/20.00/0.00/0.00" "seller 22's earnings cleared once, by the withdrawal"

earn 24 10.00 '16 days' 3
hold race_s 2 "SELECT milestones.clear_earnings()"
ps=$!
wait_for race_s
ok $? "a sweep cleared seller 24's earnings and holds the account"
t0=$(ms_now)
out=$(q $db "SELECT milestones.request_withdrawal(24, 30.00, 'USD') > 0" 2>&1)
t1=$(ms_now)
wait $ps
is "$out" "t" "a withdrawal of all of it waited for the sweep, then worked"
ok $([ $((t1 - t0)) -ge 1000 ]; echo $?) "... after waiting ($((t1 - t0)) ms)"
is "$(bal 24)" "0.00/0.00/30.00/0.00" "the cleared money was counted once"

# --- 4. A hold and a withdrawal ----------------------------------------------
earn 25 10.00 '16 days' 2; earn 25 5.00 '30 days'
q $db "SELECT milestones.clear_earnings()" >/dev/null
earn 25 8.00 '15 days'
hold race_h 1.5 "SELECT count(*) FROM milestones.hold_clearance(25, 'chargeback')"
ph=$!
wait_for race_h
ok $? "support holds seller 25 (25.00 available, 8.00 due) in an open transaction"
t0=$(ms_now)
err=$(q $db "SELECT milestones.request_withdrawal(25, 33.00, 'USD')" 2>&1 >/dev/null)
t1=$(ms_now)
wait $ph
ok $([ $((t1 - t0)) -ge 700 ]; echo $?) "the withdrawal waited for the hold ($((t1 - t0)) ms)"
is "$(echo "$err" | head -1)" "ERROR:  seller 25 cannot withdraw 33.00 USD: only 25.00 is available" \
   "then it was refused: the held earning did not clear"
ok $(q $db "SELECT milestones.request_withdrawal(25, 25.00, 'USD') > 0" | grep -q t; echo $?) "what was available stays withdrawable"

# --- 5. Retries and reports racing ---------------------------------------------
earn 26 10.00 '20 days'
hold race_k 1.5 "SELECT milestones.request_withdrawal(26, 4.00, 'USD', 'race-key')"
pk=$!
wait_for race_k
b=$(q $db "SELECT milestones.request_withdrawal(26, 4.00, 'USD', 'race-key')" 2>&1)
wait $pk
is "$b" "$(cat "$tmp/race_k.out")" "a keyed retry racing the first call waited and returned its id ($b)"
is "$(q $db "SELECT count(*) FROM milestones.withdrawals WHERE seller_id = 26")" 1 "... one withdrawal"
w=$b
hold race_p 1.5 "SELECT state FROM milestones.record_withdrawal($w, 'succeeded', 'po_race')"
pp=$!
wait_for race_p
c=$(q $db "SELECT state FROM milestones.record_withdrawal($w, 'succeeded', 'po_race')" 2>&1)
d=$(q $db "SELECT state FROM milestones.record_withdrawal($w, 'failed', NULL, 'account closed')" 2>&1 >/dev/null | head -1)
wait $pp
is "$(cat "$tmp/race_p.out") $c" "succeeded succeeded" "two workers reporting the same success both get the row"
is "$d" "ERROR:  withdrawal $w succeeded already" "a failure reported meanwhile is refused (55000)"
is "$(q $db "SELECT count(*) FROM milestones.seller_ledger WHERE withdrawal_id = $w") $(q $db "SELECT count(*) FROM milestones.events WHERE event = 'withdrawal_succeeded'")" \
   "4 1" "the success was booked once, with one event"

is "$(q $db "SELECT count(*) FROM milestones.check_invariants()")" 0 "check_invariants() is empty at the end"
[ $TAP_FAILED -eq 0 ]
