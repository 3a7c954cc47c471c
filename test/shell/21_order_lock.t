#!/usr/bin/env bash
# test/shell/21_order_lock.t - the order lock every action takes first
# (src/direct.c: direct index and heap access under READ COMMITTED, the
# locking statement otherwise), seen from two sessions.
#
# Session A runs an action and holds its transaction open for a moment;
# session B acts on the same order meanwhile.  B must wait for A, then see
# what A committed: the order's row (its newest version) and the milestones
# A changed (read after the lock, not from before it).  A rolled back
# leaves B the order as it was.  Under REPEATABLE READ a change committed
# after B's snapshot is a serialization failure (40001).  With row-level
# security switched on, the engine takes its statements instead of the
# direct reads (the lock, eligibility, settings) and gives the same results.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

db=ms_order_lock_$$
tmp=$(mktemp -d)
trap 'dropdbs $db; rm -rf "$tmp"' EXIT
plan 17
newdb $db

# placed [delivered]: a new 3-milestone order, placed, milestone 1 delivered
# when asked; prints its id.
placed() {
  local o
  o=$(offer3 $db) && q $db "SELECT milestones.place_order($o, 20)" >/dev/null || bail "cannot place an order"
  [ "${1:-}" = delivered ] && { q $db "SELECT milestones.deliver($o, 10)" >/dev/null || bail "cannot deliver"; }
  echo "$o"
}

# hold SQL END: session A runs SQL in a transaction, sleeps 1.5 s, then
# ENDs it (COMMIT or ROLLBACK); returns once A holds its locks.
hold() {
  psql -X -q -A -t -v ON_ERROR_STOP=1 -d $db > "$tmp/a" 2>&1 <<SQL &
BEGIN;
$1;
SELECT pg_sleep(1.5) \\g /dev/null
$2;
SQL
  apid=$!
  sleep 0.5
}

# b SQL: session B's call; its output (errors as SQLSTATE: message) in
# $tmp/b, how long it took in $tmp/b.ms.
b() {
  local t0
  t0=$(date +%s%N)
  psql -X -q -A -t -v VERBOSITY=sqlstate -d $db -c "$1" > "$tmp/b" 2>&1
  echo $(( ($(date +%s%N) - t0) / 1000000 )) > "$tmp/b.ms"
}

# race A_SQL END B_SQL B_NAME A_NAME: session A runs A_SQL and holds its
# transaction (hold), B runs B_SQL meanwhile (b); checks that B waited.
race() {
  hold "$1" "$2"
  b "$3"
  wait $apid
  ok $([ "$(cat "$tmp/b.ms")" -ge 700 ]; echo $?) "$4 waited for the $5 ($(cat "$tmp/b.ms") ms)"
}

# --- the lock is taken: B cannot get it while A holds it --------------------
o=$(placed)
hold "SELECT milestones.deliver($o, 10)" COMMIT
b "SET lock_timeout = '200ms'; SELECT milestones.accept($o, 20)"
wait $apid
is "$(cat "$tmp/b")" "ERROR:  55P03" "accept waits for the order's lock a deliver holds (lock_timeout: 55P03)"
is "$(q $db "SELECT milestone_state FROM milestones.order_status WHERE order_id = $o")" "delivered" \
   "the deliver committed, the timed-out accept changed nothing"

# --- B waits, then reads the milestones A changed ---------------------------
o=$(placed)
race "SELECT milestones.deliver($o, 10)" COMMIT "SELECT current_milestone, milestone_state, charged FROM milestones.accept($o, 20)" accept deliver
is "$(cat "$tmp/b")" "2|in_progress|250.00" "accept saw milestone 1 delivered by the session it waited for, and started milestone 2"
is "$(q $db "SELECT count(*) FROM milestones.check_invariants()")" "0" "check_invariants() is empty"

# --- B waits, then reads the order's newest row -----------------------------
o=$(placed delivered)
race "SELECT milestones.stop($o, 20)" COMMIT "SELECT state FROM milestones.accept($o, 20)" accept stop
is "$(cat "$tmp/b")" "ERROR:  55000" "accept refused: the order it waited for was completed by the stop"
is "$(q $db "SELECT state || ' ' || end_reason || ' ' || (SELECT count(*) FROM milestones.events e WHERE e.order_id = o.order_id AND event = 'accepted')
             FROM milestones.orders o WHERE order_id = $o")" "completed stopped 0" "the order is stopped, not accepted"

# --- A rolls back: B acts on the order as it was ----------------------------
o=$(placed delivered)
race "SELECT milestones.accept($o, 20)" ROLLBACK "SELECT state, reason FROM milestones.stop($o, 20)" stop accept
is "$(cat "$tmp/b")" "completed|stopped" "the accept rolled back: stop ended the order from milestone 1 delivered"
is "$(q $db "SELECT paid_out || ' ' || refunded FROM milestones.order_status WHERE order_id = $o")" "100.00 0.00" \
   "the seller is paid for milestone 1 only"

# --- REPEATABLE READ: a change after B's snapshot is 40001 ------------------
o=$(placed delivered)
psql -X -q -A -t -v VERBOSITY=sqlstate -d $db > "$tmp/rr" 2>&1 <<SQL &
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT count(*) FROM milestones.orders \\g /dev/null
SELECT pg_sleep(1) \\g /dev/null
SELECT state FROM milestones.accept($o, 20);
COMMIT;
SQL
rpid=$!
sleep 0.3
q $db "SELECT milestones.request_revision($o, 20, 'more blue')" >/dev/null
wait $rpid
is "$(head -1 "$tmp/rr")" "ERROR:  40001" "REPEATABLE READ: accept after a committed request_revision fails with 40001"
is "$(q $db "SELECT milestone_state || ' ' || revisions_used FROM milestones.order_status WHERE order_id = $o")" "in_progress 1" \
   "the revision stands, nothing was accepted"

# --- a read-only transaction: the statement's 25006, before any state check --
o=$(placed)
is "$(psql -X -q -A -t -v VERBOSITY=sqlstate -d $db -c "BEGIN READ ONLY" -c "SELECT milestones.accept($o, 20)" 2>&1)" \
   "ERROR:  25006" "accept in a READ ONLY transaction fails with 25006 (not the 55000 of its order's state)"

# --- row-level security on: the statement, with the same results -------------
lifecycle() {   # the same calls on a new order; no ids or times printed
  cat <<SQL
\\set SHOW_CONTEXT never
SELECT milestones.create_offer(10, 20, 'design', '$OFFER3_MS', 1) AS o \\gset
SELECT state, milestone_state, current_milestone, charged, paid_out, refunded FROM milestones.place_order(:o, 20);
SELECT milestones.accept(:o, 20);
SELECT milestones.deliver(:o, 11);
SELECT state, milestone_state, respond_by IS NOT NULL FROM milestones.deliver(:o, 10);
SELECT state, milestone_state, current_milestone, charged FROM milestones.accept(:o, 20);
SELECT state, milestone_state, revisions_used FROM milestones.deliver(:o, 10);
SELECT state, milestone_state, revisions_used FROM milestones.request_revision(:o, 20, 'again');
SELECT state, reason, charged, paid_out, refunded FROM milestones.cancel(:o, 'agent-7', 'mutual_agreement');
SELECT milestones.stop(:o, 20);
SELECT milestones.deliver(-5, 10);
SELECT milestones.deliver(987654321, 10);
SELECT milestones.create_offer(11, 20, 'design', '$OFFER3_MS', 1);
SELECT milestones.create_offer(10, 20, 'sculpture', '$OFFER3_MS', 1);
SELECT milestones.create_offer(10, 20, 'design', '[{"name":"a","days":1,"amount":"10.00"}]', 1);
SELECT milestones.create_offer(10, 20, 'design', '$OFFER3_MS', 1) AS o2 \\gset
SELECT milestones.set_category_eligibility('design', false) IS NOT NULL;
SELECT milestones.place_order(:o2, 20);
SELECT milestones.set_category_eligibility('design', true) IS NOT NULL;
SELECT state, milestone_state, charged FROM milestones.place_order(:o2, 20);
SQL
}
lifecycle | psql -X -q -A -t -d $db 2>&1 | sed 's/^psql:[^ ]* //' > "$tmp/plain"
# rls TABLE...: the lifecycle with row-level security on these tables (the
# engine reads them by statement), rolled back; ids masked.
rls() {
  { echo "BEGIN;"
    for t in "$@"; do echo "ALTER TABLE milestones.$t ENABLE ROW LEVEL SECURITY;"; done
    lifecycle; echo "ROLLBACK;"; } |
    psql -X -q -A -t -d $db -v ON_ERROR_ROLLBACK=on 2>&1 | sed 's/^psql:[^ ]* //' | grep -v '^$' | sed 's/order [0-9]*/order N/g'
}
plain=$(grep -v '^$' "$tmp/plain" | sed 's/order [0-9]*/order N/g')   # the two runs' orders have different ids
grep -c ERROR "$tmp/plain" > "$tmp/nerr"
is "$(cat "$tmp/nerr")" "9" "the lifecycle script meets its nine refusals (wrong state twice, wrong seller, bad id, no such order, seller and category not eligible, total too small, category withdrawn)"
is "$(rls orders order_milestones eligible_sellers eligible_categories settings)" "$plain" \
   "with row-level security on every table read (all statements) every call returns the same, and refuses with the same message, DETAIL and HINT"
is "$(rls eligible_sellers eligible_categories settings)" "$plain" \
   "the same with the order lock direct and eligibility and settings by statement"
diag "$(cat "$tmp/plain")"
