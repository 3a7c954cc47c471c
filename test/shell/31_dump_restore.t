#!/usr/bin/env bash
# test/shell/31_dump_restore.t - pg_dump keeps every order (SPEC section 7).
#
# A database with orders in every state is dumped with pg_dump, in custom
# format (restored with pg_restore, one table per transaction, as a DBA
# would) and in plain format (restored with psql), into new databases.
# (pg_restore -j is not covered: parallel workers load the data of the
# extension's tables without waiting for the orders they reference, and
# the foreign keys refuse it; see doc/backup.md.)
# order_status, the ledger, the events, the settings, the reasons and the
# idempotency keys must come back identical, check_invariants() empty, and
# new offers must get fresh ids above the old ones.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

src=ms_dump_src
dst_c=ms_dump_custom
dst_p=ms_dump_plain
tmp=$(mktemp -d)
trap 'dropdbs $src $dst_c $dst_p; rm -rf "$tmp"' EXIT

plan 25

newdb $src
every_state_sql | psql -X -q -d $src >/dev/null 2>"$tmp/setup.err"
ok $? "orders in every state were made"
# non-default settings, a retired and a new reason, more eligibility
q $src "UPDATE milestones.settings SET seller_fee_rate = 0.1, response_window = '8 days', idempotency_ttl = '2 days';
        SELECT milestones.set_cancellation_reason('fraud_suspected', 'Payment flagged by the fraud team.');
        SELECT milestones.set_cancellation_reason('buyer_unresponsive', 'The buyer went silent.', false);
        SELECT milestones.set_seller_eligibility(11, false);" >/dev/null
# 1.1: milestones cancelled alone (cancel_milestone): a pending one cancelled,
# and a running one refunded with the next one started; both orders run on.
q $src "SELECT milestones.cancel_milestone((milestones.place_order(milestones.create_offer(10, 20, 'design', '$OFFER3_MS'), 20)).order_id,
                                           3, 'agent-9', 'fraud_suspected', 'restore me');
        SELECT milestones.cancel_milestone((milestones.place_order(milestones.create_offer(10, 20, 'design', '$OFFER3_MS'), 20)).order_id,
                                           1, 'agent-9', 'mutual_agreement');" >/dev/null
is "$(q $src "SELECT string_agg(state || '/' || cancel_reason, ' ' ORDER BY state) FROM milestones.order_milestones WHERE cancel_reason IS NOT NULL")" \
   "cancelled/fraud_suspected refunded/mutual_agreement" "the source holds milestones cancelled alone"
is "$(q $src "SELECT string_agg(DISTINCT state || coalesce('/' || reason, '') || coalesce('/' || milestone_state, ''), ' ' ORDER BY state || coalesce('/' || reason, '') || coalesce('/' || milestone_state, ''))
              FROM milestones.order_status")" \
   "active/delivered active/in_progress cancelled/duplicate_order/skipped cancelled/mutual_agreement/refunded completed/expired/completed completed/finished/completed completed/stopped/completed declined/skipped offered/pending withdrawn/skipped" \
   "the source holds every order state"

# snapshot DB FILE: everything a restore must keep, in a stable order.
snapshot() {
  psql -X -q -A -d "$1" -o "$2" <<'SQL'
SELECT * FROM milestones.order_status ORDER BY order_id;
SELECT * FROM milestones.order_milestones ORDER BY order_id, position;
SELECT * FROM milestones.ledger_entries ORDER BY entry_id;
SELECT * FROM milestones.events ORDER BY event_id;
SELECT * FROM milestones.settings;
SELECT * FROM milestones.cancellation_reasons ORDER BY code;
SELECT seller_id, eligible FROM milestones.eligible_sellers ORDER BY 1;
SELECT category, eligible FROM milestones.eligible_categories ORDER BY 1;
SELECT * FROM milestones.idempotency_keys ORDER BY key;
SQL
}
snapshot $src "$tmp/src.out"
ok $? "snapshot of the source"

# check DB LABEL FILE: the five checks every restored copy must pass.
check() {
  local db=$1 label=$2 maxid newid
  snapshot "$db" "$tmp/$label.out"
  diff -u "$tmp/src.out" "$tmp/$label.out" > "$tmp/$label.diff"
  ok $? "$label: orders, milestones, ledger, events, settings, reasons, eligibility and keys identical"
  [ -s "$tmp/$label.diff" ] && diag "$(head -40 "$tmp/$label.diff")"
  is "$(md5sum < "$tmp/$label.out")" "$(md5sum < "$tmp/src.out")" "$label: md5 of the ordered snapshot matches"
  is "$(q "$db" "SELECT count(*) FROM milestones.check_invariants()")" "0" "$label: check_invariants() is empty"
  is "$(q "$db" "SELECT count(*) FROM milestones.unchecked_orders")" "0" \
     "$label: no order is left unchecked (the ledger is restored before the milestones)"
  maxid=$(q "$db" "SELECT max(order_id) FROM milestones.orders")
  newid=$(offer3 "$db" 2>&1)
  ok $([ "$newid" -gt "$maxid" ] 2>/dev/null; echo $?) "$label: a new offer gets a fresh id ($newid > $maxid)"
  is "$(q "$db" "SELECT state FROM milestones.place_order($newid, 20)")" "active" "$label: the new order runs"
  is "$(q "$db" "SELECT state || '/' || milestone_state FROM milestones.accept((SELECT max(order_id) FROM milestones.orders o
                  WHERE EXISTS (SELECT FROM milestones.order_milestones m WHERE m.order_id = o.order_id AND m.state = 'delivered')), 20)")" \
     "active/in_progress" "$label: a restored order carries on (accept of the open delivery starts the next)"
  is "$(q "$db" "SELECT d.milestone_state FROM milestones.idempotency_keys k,
                   LATERAL milestones.deliver((k.arguments->>'order_id')::bigint, 10, NULL, 'retry-key-1') d
                  WHERE k.key = 'retry-key-1'" 2>&1)" "delivered" \
     "$label: a restored idempotency key still answers its retry with the first result"
  is "$(q "$db" "SELECT count(*) FROM milestones.check_invariants()")" "0" "$label: still sound after new activity"
}

pg_dump -Fc -f "$tmp/dump.custom" $src
ok $? "pg_dump -Fc"
createdb $dst_c
pg_restore -d $dst_c "$tmp/dump.custom" 2> "$tmp/restore.err"
ok $? "pg_restore into a new database, without errors"
[ -s "$tmp/restore.err" ] && diag "$(head -20 "$tmp/restore.err")"
check $dst_c custom

pg_dump -Fp -f "$tmp/dump.sql" $src
createdb $dst_p
psql -X -q -v ON_ERROR_STOP=1 -d $dst_p -f "$tmp/dump.sql" >/dev/null 2> "$tmp/plain.err"
ok $? "plain pg_dump replayed with psql, without errors"
[ -s "$tmp/plain.err" ] && diag "$(head -20 "$tmp/plain.err")"
check $dst_p plain

[ $TAP_FAILED -eq 0 ]
