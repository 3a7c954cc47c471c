#!/usr/bin/env bash
# test/shell/27_commit_check.t - the commit check's fast path never vouches
# for what was not checked (issue 19), across real transactions and
# sessions (the scenarios inside one transaction are in
# test/sql/35_commit_check.sql).
#
# - An order that a transaction only INSERTed (as a restore loads it) is
#   checked without the money rules; when its money does not hold, it is
#   listed in milestones.unchecked_orders, and its next engine write gets
#   the full check (1.1 passed it from the facts: a milestone delivered and
#   accepted without a charge).  A full check that passes lifts it.  The
#   list survives pg_dump and pg_restore.
# - A hand edit under session_replication_role = replica, then an API call
#   on the same order, committed: refused at COMMIT.
# - The check runs as the extension's owner; after REASSIGN OWNED and DROP
#   ROLE of that owner, a long-lived (pooled) session still commits (the
#   order check and the seller check alike).
set -uo pipefail
. "$(dirname "$0")/lib.sh"

db=ms_commit_check_$$
db2=ms_commit_check_restored_$$
old=ms27_old_$$
new=ms27_new_$$
tmp=$(mktemp -d)
cleanup() {
  exec 7>&- 2>/dev/null
  [ -n "${spid:-}" ] && kill "$spid" 2>/dev/null
  dropdbs $db $db2
  psql -X -q -d postgres -c "DROP ROLE IF EXISTS $old" -c "DROP ROLE IF EXISTS $new" >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT
plan 26

# err DB SQL: the first error line as "SQLSTATE: message", and its DETAIL.
err() {
  psql -X -q -A -t -v VERBOSITY=verbose -d "$1" -c "$2" 2>&1 >/dev/null |
    sed -n 's/^ERROR:  //p; s/^DETAIL:  //p' | sed -n '1,2p' | paste -sd '|'
}
# fullchecks DB SQL: how many times _order_problems() ran in a transaction
# that runs SQL (the API deferred, as an application calls it) and then
# the commit check (SET CONSTRAINTS ALL IMMEDIATE), and commits.
fullchecks() {
  psql -X -q -A -t -v ON_ERROR_STOP=1 -d "$1" <<SQL | tail -1
BEGIN;
SET LOCAL track_functions = 'all';
$2 \\g /dev/null
SET CONSTRAINTS ALL IMMEDIATE;
SELECT COALESCE(sum(calls), 0) FROM pg_stat_xact_user_functions
 WHERE schemaname = 'milestones' AND funcname = '_order_problems';
COMMIT;
SQL
}
# hand_order DB ID STATE1: an active order ID inserted by hand (as the
# owner) in one transaction, milestone 1 in STATE1, 2 and 3 pending, and
# no ledger rows: a state whose money was never checked.
hand_order() {
  q "$1" "BEGIN;
    INSERT INTO milestones.orders (order_id, seller_id, buyer_id, category, currency, state,
                                   revisions_allowed, fee_rate, created_at, placed_at)
    VALUES ($2, 10, 20, 'design', 'USD', 'active', 1, 0.1, now(), now());
    INSERT INTO milestones.order_milestones (order_id, position, name, days, amount, final, state, started_at, due_at)
    VALUES ($2, 1, 'One', 3, 100, false, '$3', now(), now() + interval '3 days'),
           ($2, 2, 'Two', 3, 150, false, 'pending', NULL, NULL),
           ($2, 3, 'Three', 3, 250, true, 'pending', NULL, NULL);
    COMMIT;"
}
ms1() { q "$1" "SELECT state FROM milestones.order_milestones WHERE order_id = $2 AND position = 1"; }

newdb $db

# --- an order only INSERTed: listed, and its next engine write checked ------
hand_order $db 9001 in_progress
ok $? "an active order with milestone 1 in progress and no charge, inserted by hand, commits (a restore loads rows so)"
is "$(q $db "SELECT string_agg(order_id::text, ',') FROM milestones.unchecked_orders")" "9001" \
   "its money was not checked: it is listed in milestones.unchecked_orders"
is "$(err $db "SELECT milestones.deliver(9001, 10)")" \
   "23514: order 9001 would break the milestones invariants|milestone 1 is delivered but was charged 0 times (0)." \
   "the next engine write on it gets the full check: deliver is refused (1.1 let it through)"
is "$(ms1 $db 9001)" "in_progress" "... and changed nothing"
is "$(err $db "SELECT milestones.accept(9001, 20)")" \
   "55000: accept is not allowed: milestone 1 of order 9001 is in_progress|accept needs a delivered milestone; milestone 1 (One) is in_progress." \
   "accept finds nothing to accept"
is "$(q $db "SELECT problem FROM milestones.check_invariants() WHERE order_id = 9001")" \
   "milestone 1 is in_progress but was charged 0 times (0)" "check_invariants() reports the hand-made order"
# The DBA books the missing charge by hand: a full check with money passes.
q $db "INSERT INTO milestones.ledger_entries (txn_id, order_id, position, kind, account, amount, currency, created_at)
       VALUES (nextval('milestones.ledger_txn_id_seq'), 9001, 1, 'charge', 'buyer', -100, 'USD', now()),
              (currval('milestones.ledger_txn_id_seq'), 9001, 1, 'charge', 'escrow', 100, 'USD', now())" >/dev/null
ok $? "the missing charge, booked by hand, passes the full check"
is "$(q $db "SELECT count(*) FROM milestones.unchecked_orders")" "0" "a passed full check with money lifts the listing"
is "$(fullchecks $db "SELECT milestones.deliver(9001, 10)")" "0" "the order is on the fast path again (deliver: no full check)"
is "$(q $db "SELECT state || '/' || milestone_state || '/' || current_milestone FROM milestones.accept(9001, 20)")" \
   "active/in_progress/2" "accept charges and starts milestone 2"
is "$(q $db "SELECT count(*) FROM milestones.check_invariants()")" "0" "the books are sound"

# An insert-only order whose money holds (an offer: nothing charged yet) is not listed.
q $db "BEGIN;
  INSERT INTO milestones.orders (order_id, seller_id, buyer_id, category, currency, revisions_allowed, fee_rate, created_at)
  VALUES (9002, 10, 20, 'design', 'USD', 1, 0.1, now());
  INSERT INTO milestones.order_milestones (order_id, position, name, days, amount, final)
  VALUES (9002, 1, 'One', 3, 100, false), (9002, 2, 'Two', 3, 150, true);
  COMMIT;" >/dev/null
is "$(q $db "SELECT count(*) FROM milestones.unchecked_orders")" "0" "an offer inserted by hand passes every rule: not listed"
is "$(fullchecks $db "SELECT milestones.place_order(9002, 20)")" "0" "... and its place_order is on the fast path"

# The listing survives a dump and a restore.
hand_order $db 9004 in_progress
pg_dump -Fc -f "$tmp/dump" $db && createdb $db2 && pg_restore -d $db2 "$tmp/dump" 2> "$tmp/restore.err"
ok $? "pg_dump and pg_restore of a database with a listed order"
[ -s "$tmp/restore.err" ] && diag "$(head -20 "$tmp/restore.err")"
is "$(q $db2 "SELECT string_agg(order_id::text, ',') FROM milestones.unchecked_orders")" "9004" \
   "the restored database still lists it"
is "$(err $db2 "SELECT milestones.deliver(9004, 10)")" \
   "23514: order 9004 would break the milestones invariants|milestone 1 is delivered but was charged 0 times (0)." \
   "and its next engine write there gets the full check"
is "$(fullchecks $db2 "SELECT milestones.deliver(9001, 10)")" "0" "a restored sound order runs on the fast path"

# --- a hand edit no trigger saw, then an API call, committed ----------------
o=$(offer3 $db)
q $db "SELECT milestones.place_order($o, 20)" >/dev/null
is "$(err $db "BEGIN;
    SET LOCAL session_replication_role = replica;
    UPDATE milestones.order_milestones SET state = 'skipped' WHERE order_id = $o AND position = 3;
    SET LOCAL session_replication_role = origin;
    SELECT milestones.deliver($o, 10);
    COMMIT;")" \
   "23514: order $o would break the milestones invariants|active order has skipped or refunded milestones." \
   "a hand edit under session_replication_role = replica, then deliver: refused at COMMIT"
is "$(q $db "SELECT string_agg(state, ',' ORDER BY position) FROM milestones.order_milestones WHERE order_id = $o")" \
   "in_progress,pending,pending" "... and rolled back"

# --- the extension's owner changes under a long-lived session ---------------
# A session that stays connected (as a pool keeps it) runs statements one
# at a time through a FIFO.
newdb_owned() {
  dropdbs $db
  createdb $db || bail "createdb $db failed"
  psql -X -q -v ON_ERROR_STOP=1 -d $db >/dev/null <<SQL || bail "extension setup as the old owner failed"
SET ROLE $old;
CREATE EXTENSION milestones;
SELECT milestones.set_seller_eligibility(10, true);
SELECT milestones.set_category_eligibility('design', true);
SQL
}
q postgres "CREATE ROLE $old SUPERUSER; CREATE ROLE $new SUPERUSER" >/dev/null
newdb_owned
mkfifo "$tmp/s.in"
touch "$tmp/s.out"
psql -X -q -A -t -v VERBOSITY=verbose -d $db < "$tmp/s.in" >> "$tmp/s.out" 2>&1 &
spid=$!
exec 7>"$tmp/s.in"
# sess SQL: run SQL in the long-lived session; prints what it printed.
sess() {
  local mark="--done-$(date +%s%N)--" start i
  start=$(stat -c %s "$tmp/s.out")
  printf '%s\n\\echo %s\n' "$1" "$mark" >&7
  for i in $(seq 1 200); do
    tail -c +$((start + 1)) "$tmp/s.out" | grep -q -- "^$mark\$" && break
    sleep 0.05
  done
  tail -c +$((start + 1)) "$tmp/s.out" | grep -v -- "^$mark\$"
}
o=$(offer3 $db)
# A seller with a balance (a confirmed-mode order stopped after its first
# milestone: its net is the seller's pending earning), for the seller check.
psql -X -q -v ON_ERROR_STOP=1 -d $db >/dev/null <<SQL
SELECT milestones.set_setting('payment_mode', 'confirmed');
SELECT milestones.create_offer(10, 20, 'design', '$OFFER3_MS', 1) AS so \gset
SELECT milestones.place_order(:so, 20);
SELECT milestones.record_charge(charge_id, 1, 'succeeded', 'pi_27') FROM milestones.order_status WHERE order_id = :so;
SELECT milestones.deliver(:so, 10);
SELECT milestones.stop(:so, 20);
SELECT milestones.set_setting('payment_mode', 'recorded');
SQL
is "$(sess "SELECT pg_backend_pid() > 0; UPDATE milestones.orders SET revisions_used = revisions_used WHERE order_id = $o;")" "t" \
   "the long-lived session commits a hand edit (full check, as the owner $old)"
is "$(sess "UPDATE milestones.seller_accounts SET pending = pending WHERE seller_id = 10;")" "" \
   "... and a hand edit of a seller's balance (the seller check, as $old)"
q $db "REASSIGN OWNED BY $old TO $new; DROP OWNED BY $old" >/dev/null && q postgres "DROP ROLE $old" >/dev/null
ok $? "another session reassigns the extension to $new and drops $old"
is "$(q $db "SELECT extowner::regrole FROM pg_extension WHERE extname = 'milestones'")" "$new" "the extension's owner is $new"
is "$(sess "UPDATE milestones.orders SET revisions_used = revisions_used WHERE order_id = $o;")" "" \
   "the long-lived session still commits a hand edit (the check runs as $new; 1.1 kept $old: 42501)"
is "$(sess "UPDATE milestones.seller_accounts SET pending = pending WHERE seller_id = 10;")" "" \
   "... and a hand edit of a seller's balance (the seller check runs as $new too)"
is "$(sess "SELECT state FROM milestones.place_order($o, 20); SELECT count(*) FROM milestones.check_invariants();")" "active
0" "... and API calls, the books sound"

[ $TAP_FAILED -eq 0 ]
