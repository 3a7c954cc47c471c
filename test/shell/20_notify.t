#!/usr/bin/env bash
# test/shell/20_notify.t - SPEC 5: every state change sends NOTIFY milestones
# with a JSON payload (order id, event, new states, amounts as strings),
# delivered at commit only.  One psql session LISTENs while others run order lifecycles;
# a rolled-back or failed action sends nothing.
#
# It runs in a database of its own, where PostgreSQL delivers the NOTIFY
# of the events trigger at commit (fallback), and again from
# test/shell/23_relay.t with MILESTONES_NOTIFY_DB=milestones_relay, the
# database the relay serves: the same checks hold for the relay's
# notifications.
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

DB=${MILESTONES_NOTIFY_DB:-ms_notify_$$}
tmp=$(mktemp -d)
listener_pid=
cleanup() {
  touch "$tmp/stop"
  [ -n "$listener_pid" ] && wait "$listener_pid" 2>/dev/null
  if [ -n "${MILESTONES_NOTIFY_DB:-}" ]; then
    q "$DB" "DROP EXTENSION IF EXISTS milestones CASCADE" >/dev/null 2>&1
  else
    dropdbs "$DB"
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

plan 30
if [ -n "${MILESTONES_NOTIFY_DB:-}" ]; then
  # A database that must stay (the relay's): the extension only, then dropped.
  q "$DB" "DROP EXTENSION IF EXISTS milestones CASCADE" >/dev/null 2>&1
  psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<'SQL' || bail "extension setup in $DB failed"
CREATE EXTENSION milestones;
SELECT milestones.set_seller_eligibility(10, true);
SELECT milestones.set_category_eligibility('design', true);
SQL
else
  newdb "$DB"
fi
AGENT=ms_notify_agent_$$
# A support login with the runner's password (pg_virtualenv may use password auth).
q "$DB" "CREATE ROLE $AGENT LOGIN PASSWORD '${PGPASSWORD:-x}' IN ROLE milestones_support" >/dev/null
trap 'cleanup; psql -X -q -d postgres -c "DROP ROLE IF EXISTS $AGENT" >/dev/null 2>&1' EXIT

# The listener: LISTEN, then poll with short statements (psql prints the
# notifications that arrived after each one) until told to stop.
(
  echo "LISTEN milestones;"
  echo "SELECT 'listening';"
  while [ ! -f "$tmp/stop" ]; do echo "SELECT pg_sleep(0.05);"; sleep 0.05; done
  echo "SELECT pg_sleep(0.3);"
) | psql -X -q -A -t -d "$DB" >"$tmp/listen.out" 2>&1 &
listener_pid=$!
for _ in $(seq 1 100); do grep -q '^listening$' "$tmp/listen.out" && break; sleep 0.05; done
grep -q '^listening$' "$tmp/listen.out"
ok $? "a session LISTENs on channel milestones"

# payloads: the JSON of every notification received so far, one per line.
payloads() {
  sed -n 's/^Asynchronous notification "milestones" with payload "\(.*\)" received from server process with PID [0-9]*\.$/\1/p' "$tmp/listen.out"
}
# settle: give the listener time to poll after a commit.
settle() { sleep 0.4; }
# field ORDER EVENT JQ: a jq expression over the payload of ORDER's EVENT (first one).
field() { payloads | jq -r --argjson o "$1" --arg e "$2" "select(.order_id == \$o and .event == \$e) | $3" | head -1; }
events_of() { payloads | jq -r --argjson o "$1" 'select(.order_id == $o) | .event' | paste -sd, -; }

# --- A lifecycle: offer, place, deliver, revision, deliver, accept, deliver, stop
A=$(offer3 "$DB" 1)
q "$DB" "SELECT milestones.place_order($A, 20)" >/dev/null
q "$DB" "SELECT milestones.deliver($A, 10, 'v1')" >/dev/null
q "$DB" "SELECT milestones.request_revision($A, 20, 'bigger logo')" >/dev/null
q "$DB" "SELECT milestones.deliver($A, 10, 'v2')" >/dev/null
q "$DB" "SELECT milestones.accept($A, 20)" >/dev/null
q "$DB" "SELECT milestones.deliver($A, 10)" >/dev/null
q "$DB" "SELECT milestones.stop($A, 20)" >/dev/null
settle
is "$(events_of "$A")" "offered,placed,delivered,revision_requested,delivered,accepted,delivered,stopped" \
   "one notification per state change, in commit order"
is "$(events_of "$A")" "$(q "$DB" "SELECT string_agg(event, ',' ORDER BY event_id) FROM milestones.events WHERE order_id = $A")" \
   "the notifications match the events table"
is "$(field "$A" offered '[.seller_id, .buyer_id, .order_state, .total] | @csv')" '10,20,"offered","500.00"' \
   "offered: seller, buyer, order state and total"
is "$(field "$A" placed '[.order_state, .milestone, .milestone_state, .charged, .currency] | @csv')" '"active",1,"in_progress","100.00","USD"' \
   "placed: order active, milestone 1 in progress, 100.00 charged"
is "$(field "$A" delivered '[.milestone_state, (.respond_by | type), .final, .delivery] | @csv')" '"delivered","string",false,1' \
   "delivered: the milestone state, the buyer's deadline, the final flag"
is "$(field "$A" revision_requested '[.milestone_state, .revisions_used] | @csv')" '"in_progress",1' \
   "revision_requested: back in progress, one revision used"
is "$(field "$A" accepted '[.milestone, .milestone_state, .next, .charged] | @csv')" '1,"completed",2,"150.00"' \
   "accepted: milestone 1 completed, milestone 2 charged 150.00"
is "$(field "$A" stopped '[.order_state, .milestone_state, .skipped, .payout.gross, .payout.fee, .payout.net] | @csv')" \
   '"completed","completed",1,"250.00","0.00","250.00"' "stopped: completed, one skipped, payout gross/fee/net"
# Money is sent as a string with its cents (SPEC section 5): no float can lose one.
payloads | grep '"event": "placed"' | grep -F "\"order_id\": $A," | grep -qF '"charged": "100.00"'
ok $? "amounts are sent as strings with their cents (\"charged\": \"100.00\")"
is "$(payloads | jq -s --argjson o "$A" '[.[] | select(.order_id == $o) | .event_id] | (. == sort) and (length == (unique | length))')" \
   true "event ids are unique and ascending"

# --- Support cancel with a refund and a payout (fee 20 %), and the sweep ------
q "$DB" "UPDATE milestones.settings SET seller_fee_rate = 0.2" >/dev/null
C=$(offer3 "$DB" 1)
q "$DB" "UPDATE milestones.settings SET seller_fee_rate = 0" >/dev/null
q "$DB" "SELECT milestones.place_order($C, 20), milestones.deliver($C, 10)" >/dev/null
q "$DB" "SELECT milestones.accept($C, 20)" >/dev/null
PGUSER=$AGENT q "$DB" "SELECT milestones.cancel($C, 'agent-9', 'seller_unresponsive', 'ticket 12')" >/dev/null
ok $? "a support login cancels an order (committed as a milestones_support member)"
E=$(offer3 "$DB" 1)
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<SQL
SET milestones.fake_now = '2030-01-01 00:00:00+00';
SELECT milestones.place_order($E, 20), milestones.deliver($E, 10);
SELECT milestones.expire_overdue('2030-01-06 00:00:00+00');
SQL
settle
is "$(field "$C" cancelled '[.order_state, .milestone, .milestone_state, .actor_role, .reason, .refunded] | @csv')" \
   '"cancelled",2,"refunded","support","seller_unresponsive","150.00"' "cancelled: the running milestone refunded 150.00, reason named"
is "$(field "$C" cancelled '[.payout.gross, .payout.fee, .payout.net, .note] | @csv')" '"100.00","20.00","80.00","ticket 12"' \
   "cancelled: the completed milestone paid (gross 100.00, fee 20.00, net 80.00)"
is "$(field "$E" expired '[.order_state, .actor_role, .milestone_state, .payout.gross, .respond_by] | @csv')" \
   '"completed","system","completed","100.00","2030-01-06T00:00:00+00:00"' "expired: sent by the sweep, with the payout and the deadline"

# --- Nothing is sent before commit ------------------------------------------
D=$(offer3 "$DB" 1)
settle
(psql -X -q -A -t -v ON_ERROR_STOP=1 -d "$DB" >"$tmp/slow.out" 2>&1 <<SQL
BEGIN;
SELECT (milestones.place_order($D, 20)).state;
SELECT pg_sleep(1.5);
COMMIT;
SQL
) &
slow=$!
sleep 0.8
is "$(q "$DB" "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' AND query LIKE '%pg_sleep(1.5)%' AND backend_xid IS NOT NULL")" 1 \
   "a session has placed an order and has not committed yet"
is "$(events_of "$D")" "offered" "no notification while the transaction is open"
wait "$slow"
is "$?" 0 "the transaction commits"
settle
is "$(events_of "$D")" "offered,placed" "the notification arrives after the commit"

# --- A rolled-back or failed action sends nothing ---------------------------
R=$(offer3 "$DB" 1)
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<SQL
BEGIN;
SELECT milestones.place_order($R, 20);
SELECT milestones.deliver($R, 10);
ROLLBACK;
SQL
ok $? "a session places and delivers an order, then rolls back"
q "$DB" "SELECT milestones.accept($R, 20)" >/dev/null 2>&1
[ $? -ne 0 ]
ok $? "an accept of the offered order fails (55000)"
psql -X -q -d "$DB" >/dev/null 2>&1 <<SQL
BEGIN;
SELECT milestones.place_order($R, 20);
SELECT milestones.deliver($R, 10);
SELECT milestones.accept($R, 20);
SELECT milestones.stop($R, 21);     -- 42501: not the buyer; the transaction aborts
COMMIT;
SQL
q "$DB" "SELECT 1" >/dev/null          # a marker transaction after the aborted ones
settle
is "$(events_of "$R")" "offered" "the rolled-back and aborted transactions sent nothing"
is "$(q "$DB" "SELECT count(*) FROM milestones.events WHERE order_id = $R")" 1 "and wrote no event"
is "$(q "$DB" "SELECT state FROM milestones.orders WHERE order_id = $R")" "offered" "the order is still offered"

# --- Every notification is valid JSON, every event was notified once --------
n_payloads=$(payloads | wc -l)
is "$(payloads | jq -e . >/dev/null 2>&1 && echo valid)" valid "every payload is valid JSON ($n_payloads payloads)"
is "$n_payloads" "$(q "$DB" "SELECT count(*) FROM milestones.events")" "one notification per row of the events table"
is "$(payloads | jq -r '.event_id' | sort -n | paste -sd, -)" "$(q "$DB" "SELECT string_agg(event_id::text, ',' ORDER BY event_id) FROM milestones.events")" \
   "the notified event ids are exactly the events table's"
# Byte for byte: the relay builds payloads in C, the fallback through
# _payloads(); both must send exactly what _payloads() builds.
is "$(payloads | sort | md5sum)" \
   "$(q "$DB" "SELECT p.payload FROM milestones._payloads(ARRAY(SELECT e FROM milestones.events e)) p" | sort | md5sum)" \
   "every payload is byte for byte what _payloads() builds for its event"
is "$(payloads | jq -r 'select((.order_id|type) != "number" or (.event|type) != "string" or (.order_state|type) != "string") | .event_id' | wc -l)" 0 \
   "every payload carries order_id, event and order_state"
is "$(q "$DB" "SELECT count(*) FROM milestones.check_invariants()")" 0 "check_invariants() is empty"

[ "$TAP_FAILED" -eq 0 ]
