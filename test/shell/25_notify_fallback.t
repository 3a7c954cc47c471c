#!/usr/bin/env bash
# test/shell/25_notify_fallback.t - issue 10: the events trigger's fallback
# NOTIFY (a database no relay serves) builds its payload in C where it can,
# and through _payloads() where only the statement gives the same answer.
# Each check runs in one psql session that LISTENs on channel milestones:
# PostgreSQL delivers a session's own notifications at its commit, and psql
# prints them after the statement.
#   - settings.notify off: the event is written, nothing is sent; on again:
#     sent, byte for byte what _payloads() builds;
#   - another role inserting an event: without the statement's privileges
#     (SELECT on orders, EXECUTE on _payloads()) the statement's 42501 and
#     nothing written; with them, the payload in C; with row-level security
#     on orders the statement decides (a policy hiding the order: nothing);
#   - a detail that is not a JSON object: the statement's own error, even
#     with notify off (the statement ran _payloads() then too);
#   - the C builder is what runs for the engine's own writes (no call of
#     _payloads()), and its bytes equal _payloads()'s in another time zone,
#     with money rounded, a payout object, and a detail key that overrides
#     a field;
#   - a seller-level event (order_id NULL, 1.2's withdrawals): built in C
#     too, its seller and currency from the detail, as _payloads() does;
#   - a column retyped by hand: the statement's error, never a crash.
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

DB=ms_notify_fb_$$
WRITER=ms_event_writer_$$
cleanup() {
  dropdbs "$DB"
  psql -X -q -d postgres -c "DROP ROLE IF EXISTS $WRITER" >/dev/null 2>&1
}
trap cleanup EXIT

plan 27
newdb "$DB"

# listen SQL: run SQL in a session that LISTENs; prints each payload the
# session received, one per line, and ERROR lines with their SQLSTATE.
listen() {
  { echo "\\set VERBOSITY sqlstate"; echo "LISTEN milestones;"; echo "$1"; echo "SELECT 'done';"; } |
    psql -X -q -A -t -d "$DB" 2>&1 |
    sed -n -e 's/^Asynchronous notification "milestones" with payload "\(.*\)" received from server process with PID [0-9]*\.$/\1/p' \
           -e 's/^.*ERROR: *\([0-9A-Z]\{5\}\).*$/ERROR \1/p'
}
# built EVENT_ID: what _payloads() builds for that event.
built() { q "$DB" "SELECT p.payload FROM milestones._payloads(ARRAY(SELECT e FROM milestones.events e WHERE e.event_id = $1)) p"; }
last_event() { q "$DB" "SELECT max(event_id) FROM milestones.events"; }

A=$(offer3 "$DB" 1)

# --- settings.notify -------------------------------------------------------
got=$(listen "SELECT milestones.place_order($A, 20);")
is "$got" "$(built "$(last_event)")" "an API call's notification is byte for byte what _payloads() builds"
# payloads_calls SQL: run SQL with function tracking on, then how often
# _payloads() ran in that transaction.
payloads_calls() {
  q "$DB" "SET track_functions = 'all'; $1; SELECT COALESCE(pg_stat_get_xact_function_calls(
             'milestones._payloads(milestones.events[])'::regprocedure), 0)" | tail -1
}
is "$(payloads_calls "SELECT milestones.deliver($A, 10)")" 0 "the engine's own writes: the payload is built in C (no call of _payloads())"
is "$(q "$DB" "SELECT count(*) FROM milestones.events WHERE event = 'delivered' AND order_id = $A")" 1 "(the event was written)"

q "$DB" "SELECT milestones.set_setting('notify', 'off')" >/dev/null
before=$(last_event)
got=$(listen "SELECT milestones.request_revision($A, 20, 'more blue');")
is "$got" "" "settings.notify off: nothing is sent"
is "$(q "$DB" "SELECT event FROM milestones.events WHERE event_id > $before")" "revision_requested" "and the event is written"
before=$(last_event)
got=$(listen "INSERT INTO milestones.events (order_id, event, actor_role, actor_id, order_state, detail, created_at)
              VALUES ($A, 'note', 'support', 7, 'active', '[1, 2]', now());")
is "$got" "ERROR 22023" "notify off, a detail that is not an object: still _payloads()'s 22023, as before"
is "$(q "$DB" "SELECT count(*) FROM milestones.events WHERE event_id > $before")" 0 "and nothing is written"
q "$DB" "SELECT milestones.deliver($A, 10)" >/dev/null

q "$DB" "SELECT milestones.set_setting('notify', 'on')" >/dev/null
got=$(listen "SELECT milestones.accept($A, 20);")
is "$got" "$(built "$(last_event)")" "settings.notify on again: sent, as _payloads() builds it"

# --- Another writer: its privileges, row-level security ------------------
q "$DB" "CREATE ROLE $WRITER;
         GRANT USAGE ON SCHEMA milestones TO $WRITER;
         GRANT INSERT ON milestones.events TO $WRITER;
         GRANT USAGE ON SEQUENCE milestones.event_id_seq TO $WRITER;
         GRANT EXECUTE ON FUNCTION milestones._events_row_valid(milestones.events), milestones._cluster_id(),
                                   milestones._payloads(milestones.events[]) TO $WRITER;
         GRANT SELECT ON milestones.settings TO $WRITER;" >/dev/null
insert="SET ROLE $WRITER;
INSERT INTO milestones.events (order_id, event, actor_role, actor_id, order_state, detail, created_at)
VALUES ($A, 'note', 'support', 7, 'active', '{\"text\": \"called the buyer\"}', now());
RESET ROLE"
before=$(last_event)
got=$(listen "$insert;")
is "$got" "ERROR 42501" "a writer without SELECT on orders: the statement's 42501, as before"
is "$(q "$DB" "SELECT count(*) FROM milestones.events WHERE event_id > $before")" 0 "and nothing is written"

q "$DB" "GRANT SELECT ON milestones.orders TO $WRITER; REVOKE EXECUTE ON FUNCTION milestones._payloads(milestones.events[]) FROM $WRITER" >/dev/null
q "$DB" "SELECT milestones.set_setting('notify', 'off')" >/dev/null
got=$(listen "$insert;")
is "$got" "ERROR 42501" "notify off, a writer who may not run _payloads(): the statement's 42501, as before"
q "$DB" "SELECT milestones.set_setting('notify', 'on'); GRANT EXECUTE ON FUNCTION milestones._payloads(milestones.events[]) TO $WRITER" >/dev/null
is "$(payloads_calls "$insert")" 0 "a writer with the statement's privileges: the payload is built in C"
got=$(listen "$insert;")
is "$(echo "$got" | grep -c '^{')" 1 "one notification"
is "$got" "$(built "$(last_event)")" "byte for byte what _payloads() builds"
is "$(echo "$got" | jq -r '[.event, .text, .seller_id, .buyer_id] | @csv')" '"note","called the buyer",10,20' \
   "with the order's parties and the detail"

# Row-level security on orders hiding the order from the writer: only the
# statement applies policies, so it runs, and sends nothing.
q "$DB" "ALTER TABLE milestones.orders ENABLE ROW LEVEL SECURITY;
         CREATE POLICY hide_a ON milestones.orders FOR SELECT TO $WRITER USING (order_id <> $A)" >/dev/null
is "$(payloads_calls "$insert")" 1 "row-level security on orders: the statement builds the payload (one call of _payloads())"
before=$(last_event)
got=$(listen "$insert;")
is "$got" "" "and, the policy hiding the order, sends nothing, as before"
is "$(q "$DB" "SELECT count(*) FROM milestones.events WHERE event_id > $before")" 1 "while the event is written"
q "$DB" "DROP POLICY hide_a ON milestones.orders; ALTER TABLE milestones.orders DISABLE ROW LEVEL SECURITY" >/dev/null

# --- A detail that is not a JSON object: the statement's own error ---------
before=$(last_event)
got=$(listen "INSERT INTO milestones.events (order_id, event, actor_role, actor_id, order_state, detail, created_at)
              VALUES ($A, 'note', 'support', 7, 'active', '[1, 2]', now());")
is "$got" "ERROR 22023" "a detail that is not an object: _payloads()'s error (22023), as before"
is "$(q "$DB" "SELECT count(*) FROM milestones.events WHERE event_id > $before")" 0 "and nothing is written"

# --- Another time zone, money to round, a payout, a key that overrides -----
tzinsert="SET TimeZone = 'Asia/Kathmandu';
INSERT INTO milestones.events (order_id, event, actor_role, actor_id, order_state, detail, created_at)
VALUES ($A, 'note', 'system', NULL, 'active',
        '{\"amount\": 1.005, \"charged\": 7, \"payout\": {\"gross\": 10, \"fee\": 0.125, \"net\": 9.875, \"to\": \"seller\"}}', now()),
       ($A, 'note', 'system', NULL, 'active', '{\"at\": \"overridden\", \"order_state\": \"x\"}', now());"
before=$(last_event)
got=$(listen "$tzinsert")
want=$(q "$DB" "SET TimeZone = 'Asia/Kathmandu'; SELECT string_agg(p.payload, E'\n' ORDER BY p.event_id)
                 FROM milestones._payloads(ARRAY(SELECT e FROM milestones.events e WHERE e.event_id > $before)) p")
is "$got" "$want" "another time zone, rounded money, a payout, overriding keys: byte for byte what _payloads() builds"

# --- A seller-level event (1.2): no order, the parties from the detail ----
sellerinsert="INSERT INTO milestones.events (order_id, event, actor_role, actor_id, order_state, detail, created_at)
VALUES (NULL, 'withdrawal_requested', 'seller', 10, NULL,
        '{\"seller_id\": 10, \"currency\": \"USD\", \"amount\": 12.5, \"withdrawal_id\": 3}', now())"
is "$(payloads_calls "$sellerinsert")" 0 "a seller-level event (order_id NULL): the payload is built in C"
got=$(listen "$sellerinsert;")
is "$got" "$(built "$(last_event)")" "... byte for byte what _payloads() builds"
is "$(echo "$got" | jq -r '[.order_id, .buyer_id, .seller_id, .currency, .amount] | @csv')" ',,10,"USD","12.50"' \
   "... with no order, the seller and currency of the detail, money as a string"

is "$(q "$DB" "SELECT count(*) FROM milestones.check_invariants()")" 0 "check_invariants() is empty"

# --- A column retyped by hand: the statement's error, not a crash ----------
q "$DB" "ALTER TABLE milestones.events ALTER COLUMN detail TYPE json" >/dev/null
got=$(listen "INSERT INTO milestones.events (order_id, event, actor_role, actor_id, order_state, detail, created_at)
              VALUES ($A, 'note', 'support', 7, 'active', '{}', now());")
is "$got" "ERROR 42883" "events.detail retyped to json: the statement's error (42883), the backend lives"
is "$(q "$DB" "SELECT 'alive'")" "alive" "and the server still answers"

[ "$TAP_FAILED" -eq 0 ]
