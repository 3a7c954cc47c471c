#!/usr/bin/env bash
# test/shell/22_consumers.t - durable consumers with real concurrent sessions
# (SPEC section 5, issue 12): an event whose transaction commits late is
# never skipped; a transaction left open does not hold back the events of
# transactions that committed after it began; two workers of one consumer
# get the same batch or wait, never overlapping or gapped batches; under a
# concurrent writer every event is handed out exactly once when each batch
# is finished in the transaction that read it.
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

DB=ms_consumers_$$
tmp=$(mktemp -d)
pids=()
cleanup() {
  touch "$tmp/stop"
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  dropdbs "$DB"
  rm -rf "$tmp"
}
trap cleanup EXIT

plan 17
newdb "$DB"
# drain(consumer, n): one batch in one transaction: its events as
# "batch:event_id" lines, then finish_batch.  Nothing when nothing is new.
q "$DB" "CREATE FUNCTION public.drain(c text, n integer) RETURNS SETOF text LANGUAGE plpgsql AS \$\$
DECLARE b bigint;
BEGIN
    b := milestones.next_batch(c, n);
    IF b IS NULL THEN RETURN; END IF;
    RETURN QUERY SELECT b || ':' || e.event_id FROM milestones.batch_events(b) e ORDER BY e.event_id;
    PERFORM milestones.finish_batch(b);
END \$\$" >/dev/null
q "$DB" "SELECT milestones.register_consumer('billing')" >/dev/null
ok $? "a consumer registers"

# wait_for SQL: poll until SQL returns t (10 s at most).
wait_for() { local i; for i in $(seq 1 200); do [ "$(q "$DB" "$1")" = t ] && return 0; sleep 0.05; done; return 1; }
# hold NAME SQL: a session that runs SQL in an open transaction and
# commits when the file $tmp/NAME.go appears.
hold() {
  ( echo "BEGIN;"; echo "$2"; echo "SELECT 'ready';"
    while [ ! -f "$tmp/$1.go" ]; do sleep 0.05; done
    echo "COMMIT;" ) | psql -X -q -A -t -v ON_ERROR_STOP=1 -d "$DB" >"$tmp/$1.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 200); do grep -q '^ready$' "$tmp/$1.out" && return 0; sleep 0.05; done
  return 1
}

# --- Late commit and open transaction ---------------------------------------
A=$(offer3 "$DB" 1)
B=$(offer3 "$DB" 1)
q "$DB" "SELECT * FROM public.drain('billing', 1000)" >/dev/null     # the two offers
hold late "SELECT milestones.place_order($A, 20);"
ok $? "session 1 places order A and keeps its transaction open"
q "$DB" "SELECT milestones.place_order($B, 20)" >/dev/null
late_id=$(q "$DB" "SELECT event_id FROM milestones.events WHERE order_id = $A AND event = 'placed'" )
[ -z "$late_id" ]
ok $? "session 2 places order B and commits (A's event is not visible yet)"
got=$(q "$DB" "SELECT string_agg(split_part(d, ':', 2), ',') FROM public.drain('billing', 1000) d")
is "$got" "$(q "$DB" "SELECT event_id FROM milestones.events WHERE order_id = $B AND event = 'placed'")" \
   "the consumer gets B's event: the open transaction holds nothing back"
touch "$tmp/late.go"
wait_for "SELECT count(*) = 1 FROM milestones.events WHERE order_id = $A AND event = 'placed'"
late_id=$(q "$DB" "SELECT event_id FROM milestones.events WHERE order_id = $A AND event = 'placed'")
b_id=$(q "$DB" "SELECT event_id FROM milestones.events WHERE order_id = $B AND event = 'placed'")
ok $([ "$late_id" -lt "$b_id" ]; echo $?) "A's event has the lower id ($late_id < $b_id) but committed later"
is "$(q "$DB" "SELECT string_agg(split_part(d, ':', 2), ',') FROM public.drain('billing', 1000) d")" "$late_id" \
   "the late commit comes in the next batch: never skipped"
is "$(q "$DB" "SELECT count(*) FROM public.drain('billing', 1000)")" 0 "then nothing is new"

# --- Two workers of one consumer at once ------------------------------------
C=$(offer3 "$DB" 1)
hold w1 "SELECT 'batch=' || milestones.next_batch('billing', 1000);"
ok $? "worker 1 takes a batch and has not committed"
w1=$(sed -n 's/^batch=//p' "$tmp/w1.out")
psql -X -q -A -t -d "$DB" -c "SELECT milestones.next_batch('billing', 1000)" >"$tmp/w2.out" 2>&1 &
w2pid=$!
wait_for "SELECT count(*) = 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%next_batch(''billing''%'"
ok $? "worker 2 asking at the same time waits for worker 1"
touch "$tmp/w1.go"
wait "$w2pid"
is "$(cat "$tmp/w2.out")" "$w1" "then gets the same batch ($w1): not a second, overlapping one"
q "$DB" "SELECT milestones.finish_batch($w1)" >/dev/null

# --- Many batches, two workers, a writer: each event exactly once -----------
first=$(q "$DB" "SELECT coalesce(max(event_id), 0) FROM milestones.events")
(
  for i in $(seq 1 40); do
    o=$(offer3 "$DB" 1) && q "$DB" "SELECT milestones.place_order($o, 20); SELECT milestones.deliver($o, 10)" >/dev/null
  done
  touch "$tmp/writer.done"
) &
pids+=($!)
worker() {
  local idle=0
  while :; do
    if ! psql -X -q -A -t -d "$DB" -c "SELECT * FROM public.drain('billing', 7)" >>"$tmp/worker$1.out" 2>>"$tmp/worker$1.err"; then
      sleep 0.05
    fi
    if [ -f "$tmp/writer.done" ]; then
      idle=$((idle + 1)); [ "$idle" -gt 20 ] && break
    fi
  done
}
worker 1 & pids+=($!); wp1=$!
worker 2 & pids+=($!); wp2=$!
wait "$wp1" "$wp2"
sort -t: -k2 -n "$tmp/worker1.out" "$tmp/worker2.out" | grep -v '^$' > "$tmp/all.out"
want=$(q "$DB" "SELECT count(*) FROM milestones.events WHERE event_id > $first")
is "$(wc -l < "$tmp/all.out" | tr -d ' ')" "$want" "two workers under a concurrent writer handed out $want events"
is "$(cut -d: -f2 "$tmp/all.out" | sort -n | uniq -d | wc -l)" 0 "none twice"
is "$(cut -d: -f2 "$tmp/all.out" | sort -n | paste -sd, -)" \
   "$(q "$DB" "SELECT string_agg(event_id::text, ',' ORDER BY event_id) FROM milestones.events WHERE event_id > $first")" \
   "none missing: exactly the events written"
is "$(cat "$tmp/worker1.out" "$tmp/worker2.out" | cut -d: -f1 | sort -u | while read -r b; do grep -c "^$b:" "$tmp/worker1.out"; done | grep -vc '^0$' ; true)" \
   "$(cut -d: -f1 "$tmp/worker1.out" | sort -u | wc -l | tr -d ' ')" "each batch went to one worker only"
ok $([ -s "$tmp/worker1.out" ] && [ -s "$tmp/worker2.out" ]; echo $?) \
   "both workers got batches ($(cut -d: -f1 "$tmp/worker1.out" | sort -u | wc -l) and $(cut -d: -f1 "$tmp/worker2.out" | sort -u | wc -l))"
is "$(q "$DB" "SELECT count(*) FROM milestones.consumer_batches") $(q "$DB" "SELECT count(*) <= 2 FROM milestones.consumer_ticks")" "0 t" \
   "finished batches and old ticks are pruned"
is "$(q "$DB" "SELECT pending_events FROM milestones.consumer_status WHERE consumer = 'billing'")" 0 "consumer_status: nothing pending"

[ "$TAP_FAILED" -eq 0 ]
