#!/usr/bin/env bash
# test/shell/25_notify_fallback.t - issue 10: the events trigger's fallback
# NOTIFY (a database no relay serves) builds its payload in C where it can,
# and through _payloads() where only the statement gives the same answer.
# Each check runs in one psql session that LISTENs on channel milestones:
# PostgreSQL delivers a session's own notifications at its commit, and psql
# prints them after the statement.
#   - settings.notify off: the event is written, nothing is sent; on again:
#     sent, byte for byte what _payloads() builds;
#   - a role that is not the tables' owner inserting an event: the statement
#     decides, with that role's privileges (42501 without SELECT on orders,
#     nothing written; with it, the payload _payloads() builds);
#   - a detail that is not a JSON object: the statement's own error.
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

plan 12
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

q "$DB" "SELECT milestones.set_setting('notify', 'off')" >/dev/null
before=$(last_event)
got=$(listen "SELECT milestones.deliver($A, 10);")
is "$got" "" "settings.notify off: nothing is sent"
is "$(q "$DB" "SELECT event FROM milestones.events WHERE event_id > $before")" "delivered" "and the event is written"

q "$DB" "SELECT milestones.set_setting('notify', 'on')" >/dev/null
got=$(listen "SELECT milestones.accept($A, 20);")
is "$got" "$(built "$(last_event)")" "settings.notify on again: sent, as _payloads() builds it"

# --- A writer that is not the tables' owner: the statement decides ----------
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
RESET ROLE;"
before=$(last_event)
got=$(listen "$insert")
is "$got" "ERROR 42501" "a writer without SELECT on orders: the statement's 42501, as before"
is "$(q "$DB" "SELECT count(*) FROM milestones.events WHERE event_id > $before")" 0 "and nothing is written"

q "$DB" "GRANT SELECT ON milestones.orders TO $WRITER" >/dev/null
got=$(listen "$insert")
is "$(echo "$got" | grep -c '^{')" 1 "with SELECT on orders: one notification"
is "$got" "$(built "$(last_event)")" "built by the statement, byte for byte what _payloads() builds"
is "$(echo "$got" | jq -r '[.event, .text, .seller_id, .buyer_id] | @csv')" '"note","called the buyer",10,20' \
   "with the order's parties and the detail"

# --- A detail that is not a JSON object: the statement's own error ---------
before=$(last_event)
got=$(listen "INSERT INTO milestones.events (order_id, event, actor_role, actor_id, order_state, detail, created_at)
              VALUES ($A, 'note', 'support', 7, 'active', '[1, 2]', now());")
is "$got" "ERROR 22023" "a detail that is not an object: _payloads()'s error (22023), as before"
is "$(q "$DB" "SELECT count(*) FROM milestones.events WHERE event_id > $before")" 0 "and nothing is written"

is "$(q "$DB" "SELECT count(*) FROM milestones.check_invariants()")" 0 "check_invariants() is empty"

[ "$TAP_FAILED" -eq 0 ]
