#!/usr/bin/env bash
# test/shell/30_idempotency_race.t - two sessions race the same keyed call (issue 5).
#
# Session A makes the call with a key and holds its transaction open for a
# moment; session B repeats the call with the same key meanwhile.  B waits
# on the key, then returns A's result: exactly one executes.  Done for
# create_offer, place_order and accept, and with A rolling back (then B
# runs the call itself).
set -uo pipefail
. "$(dirname "$0")/lib.sh"

db=ms_idem_race
tmp=$(mktemp -d)
trap 'dropdbs $db; rm -rf "$tmp"' EXIT
plan 17
newdb $db

# race SQL-CALL END: A runs CALL then sleeps 1.5 s and ENDs (COMMIT or
# ROLLBACK); B starts 0.5 s later with the same CALL.  Leaves A's and B's
# outputs in $tmp/a and $tmp/b, B's wait in $tmp/b.ms.
race() {
  local call=$1 end=$2
  psql -X -q -A -t -v ON_ERROR_STOP=1 -d $db > "$tmp/a" 2>&1 <<SQL &
BEGIN;
$call;
SELECT pg_sleep(1.5) \\g /dev/null
$end;
SQL
  local apid=$!
  sleep 0.5
  local t0=$(date +%s%N)
  q $db "$call" > "$tmp/b" 2>&1
  echo $(( ($(date +%s%N) - t0) / 1000000 )) > "$tmp/b.ms"
  wait $apid
}

# create_offer
race "SELECT milestones.create_offer(10, 20, 'design', '$OFFER3_MS', 1, 'USD', 'race-offer')" COMMIT
is "$(cat "$tmp/b")" "$(cat "$tmp/a")" "create_offer: both sessions got the same order id ($(cat "$tmp/a"))"
ok $([ "$(cat "$tmp/b.ms")" -ge 700 ]; echo $?) "create_offer: the repeat waited for the first call ($(cat "$tmp/b.ms") ms)"
is "$(q $db "SELECT count(*) FROM milestones.orders")" "1" "create_offer: exactly one order exists"
is "$(q $db "SELECT count(*) FROM milestones.events WHERE event = 'offered'")" "1" "create_offer: one 'offered' event"
o=$(cat "$tmp/a")

# place_order
race "SELECT state, milestone_state, charged FROM milestones.place_order($o, 20, 'race-place')" COMMIT
is "$(cat "$tmp/b")" "$(cat "$tmp/a")" "place_order: both got the same status row ($(cat "$tmp/a"))"
is "$(q $db "SELECT count(*) FROM milestones.ledger_entries WHERE order_id = $o AND kind = 'charge'")" "2" \
   "place_order: milestone 1 was charged once (two legs)"
is "$(q $db "SELECT count(*) FROM milestones.events WHERE order_id = $o AND event = 'placed'")" "1" "place_order: one 'placed' event"

# accept (the first call starts and charges milestone 2)
q $db "SELECT milestones.deliver($o, 10)" >/dev/null
race "SELECT current_milestone, milestone_state, charged FROM milestones.accept($o, 20, 'race-accept')" COMMIT
is "$(cat "$tmp/b")" "$(cat "$tmp/a")" "accept: both got the same status row ($(cat "$tmp/a"))"
is "$(q $db "SELECT count(*) FROM milestones.events WHERE order_id = $o AND event = 'accepted'")" "1" "accept: one acceptance"
is "$(q $db "SELECT count(*) FROM milestones.ledger_entries WHERE order_id = $o AND position = 2")" "2" \
   "accept: milestone 2 charged once"

# the first call rolls back: the repeat executes it
q $db "SELECT milestones.deliver($o, 10)" >/dev/null
race "SELECT current_milestone, milestone_state FROM milestones.accept($o, 20, 'race-rollback')" ROLLBACK
is "$(cat "$tmp/b")" "3|in_progress" "rolled-back first call: the repeat ran the call itself"
ok $([ "$(cat "$tmp/b.ms")" -ge 700 ]; echo $?) "rolled-back first call: the repeat waited for it ($(cat "$tmp/b.ms") ms)"
is "$(q $db "SELECT count(*) FROM milestones.events WHERE order_id = $o AND event = 'accepted'")" "2" "two acceptances in all"

# the same key with other arguments, racing: the second fails with 22023
q $db "SELECT milestones.deliver($o, 10)" >/dev/null
race "SELECT state FROM milestones.stop($o, 20, 'race-other')" COMMIT
q $db "SELECT state FROM milestones.accept($o, 20, 'race-other')" > "$tmp/c" 2>&1
is "$(cat "$tmp/a")" "completed" "a keyed stop ran"
ok $(grep -q "idempotency key 'race-other' was used for another call" "$tmp/c"; echo $?) "the same key for accept is refused (22023)"
is "$(q $db "SELECT reason FROM milestones.order_status WHERE order_id = $o")" "stopped" "the order is stopped, not accepted"

is "$(q $db "SELECT count(*) FROM milestones.check_invariants()")" "0" "check_invariants() is empty"
[ $TAP_FAILED -eq 0 ]
