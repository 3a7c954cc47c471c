#!/usr/bin/env bash
# test/shell/71_pgbouncer.t - the API through PgBouncer in transaction
# pooling (SPEC section 13, issue 22).  A cluster of the test's own
# (test/tools/scaleout-lib.sh, the build make test installed) and a
# pgbouncer started here in front of it: pool_mode = transaction, four
# server connections per database and user, clients authenticated with
# SCRAM against the server's own secrets (auth_query).
#
#   - eight pgbench clients run full lifecycles (custom script) through it
#     with zero errors, on at most four server connections; -M prepared is
#     not expected to work with PgBouncer 1.18 (prepared statements live in
#     the server session, which a transaction pooler does not keep) and is
#     shown in a diag line;
#   - idempotent retries, errors with SQLSTATE, DETAIL and HINT, and a
#     durable consumer's batches (next_batch, batch_events and finish_batch
#     in separate transactions, named by the batch id) work through it;
#   - the node example's client and worker tests pass through it, the
#     worker keeping its LISTEN on a direct connection
#     (MILESTONES_LISTEN_HOST/PORT): LISTEN needs a session;
#   - pgbouncer killed with SIGKILL under eight clients (examples/node's
#     client, test/shell/pooler-load.mjs) and started again: the clients
#     retry each call with its idempotency key; no order a client saw
#     committed is lost, no call is half done or done twice.
set -u
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
# shellcheck source=../tools/scaleout-lib.sh
. "$here/../tools/scaleout-lib.sh"

DB=shop
tmp=$(mktemp -d)
chmod 755 "$tmp"
pids=()
BOUNCER_DIR=
cleanup() {
  touch "$tmp/stop"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  bouncer_stop
  so_cleanup
  rm -rf "$tmp"
}
trap cleanup EXIT

# bouncer_start: pgbouncer (as the server's user; it refuses root) in front
# of cluster "db", daemonized; its pid in $BOUNCER_DIR/pgbouncer.pid.
bouncer_start() {
  so_run pgbouncer -d "$BOUNCER_DIR/pgbouncer.ini" >>"$BOUNCER_DIR/start.log" 2>&1 || return 1
  local i
  for i in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$BP") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}
bouncer_pid() { cat "$BOUNCER_DIR/pgbouncer.pid" 2>/dev/null; }
bouncer_stop() {
  local pid
  [ -n "$BOUNCER_DIR" ] || return 0
  pid=$(bouncer_pid)
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  true
}
# via ROLE [psql args...]: psql as a login role through pgbouncer.
via() {
  local role=$1
  shift
  PGPASSWORD="pw-$role" psql -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$BP" -U "$role" -d "$DB" "$@"
}

plan 20

# --- The cluster and the pooler ----------------------------------------------
so_init || bail "initdb failed"
so_cluster db "shared_preload_libraries = 'milestones'" "milestones.database_name = '$DB'" || bail "the cluster did not start"
so_psql db postgres -q -c "CREATE DATABASE $DB" >/dev/null || bail "CREATE DATABASE failed"
so_psql db "$DB" -q >/dev/null <<'SQL' || bail "extension setup failed"
CREATE EXTENSION milestones;
SELECT milestones.set_seller_eligibility(10, true);
SELECT milestones.set_category_eligibility('design', true);
SQL

BP=$(so_free_port) || bail "no free port"
BOUNCER_DIR=$SO_DIR/bouncer
so_run mkdir -p "$BOUNCER_DIR"
# Server connections over the cluster's socket (it trusts local logins);
# clients log in with SCRAM, checked against pg_shadow by auth_query (the
# admin console's user, postgres, is in the auth_file).
so_run tee "$BOUNCER_DIR/pgbouncer.ini" >/dev/null <<INI
[databases]
* = host=$SO_DIR/sock port=${SO_PORT[db]}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BP
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $BOUNCER_DIR/userlist.txt
auth_user = postgres
auth_query = SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = \$1
admin_users = postgres
pool_mode = transaction
default_pool_size = 4
max_client_conn = 200
logfile = $BOUNCER_DIR/pgbouncer.log
pidfile = $BOUNCER_DIR/pgbouncer.pid
INI
echo '"postgres" "pw-postgres"' | so_run tee "$BOUNCER_DIR/userlist.txt" >/dev/null
bouncer_start || { cat "$BOUNCER_DIR/start.log" "$BOUNCER_DIR/pgbouncer.log" 2>/dev/null; bail "pgbouncer did not start"; }
version=$(pgbouncer --version | head -1)
mode=$(PGPASSWORD=pw-postgres psql -X -qAt -h 127.0.0.1 -p "$BP" -U postgres -d pgbouncer -c "SHOW CONFIG" | awk -F'|' '$1 == "pool_mode" { print $2 }')
is "$mode" transaction "$version runs in front of the cluster, pool_mode = transaction"

# --- Eight clients, full lifecycles (pgbench) --------------------------------
via shop_app -qAt -c "SELECT milestones.register_consumer('ledger')" >/dev/null
cat >"$tmp/lifecycle.sql" <<SQL
\set buyer random(1000, 1000000)
SELECT milestones.create_offer(10, :buyer, 'design', '$OFFER3_MS', 1) AS id \gset
SELECT (milestones.place_order(:id, :buyer)).state;
SELECT (milestones.deliver(:id, 10)).state;
SELECT (milestones.request_revision(:id, :buyer, 'more blue')).state;
SELECT (milestones.deliver(:id, 10)).state;
SELECT (milestones.accept(:id, :buyer)).state;
SELECT (milestones.deliver(:id, 10)).state;
SELECT (milestones.accept(:id, :buyer)).state;
SELECT (milestones.deliver(:id, 10, 'final')).state;
SELECT (milestones.accept(:id, :buyer)).state;
SQL
for m in simple extended; do
  PGPASSWORD=pw-shop_app pgbench -n -h 127.0.0.1 -p "$BP" -U shop_app -c 8 -j 2 -t 6 -M "$m" -f "$tmp/lifecycle.sql" "$DB" >"$tmp/pgbench-$m.out" 2>&1
  is "$?|$(grep -E '^number of (transactions actually processed|failed transactions)' "$tmp/pgbench-$m.out" | paste -sd'|' -)" \
     "0|number of transactions actually processed: 48/48|number of failed transactions: 0 (0.000%)" \
     "pgbench -M $m: 8 clients run 48 full lifecycles (10 calls each) through pgbouncer with zero errors ($(sed -n 's/^latency average = //p' "$tmp/pgbench-$m.out") a lifecycle)"
done
is "$(so_q db "$DB" "SELECT count(*) FILTER (WHERE state = 'completed' AND end_reason = 'finished') || ' ' || count(*) FROM milestones.orders")" \
   "96 96" "the database holds the 96 orders, all finished"
is "$(so_q db postgres "SELECT count(*) <= 4 FROM pg_stat_activity WHERE usename = 'shop_app' AND datname = '$DB'")" t \
   "the eight clients shared at most four server connections (default_pool_size)"
PGPASSWORD=pw-shop_app pgbench -n -h 127.0.0.1 -p "$BP" -U shop_app -c 8 -j 2 -t 2 -M prepared -f "$tmp/lifecycle.sql" "$DB" >"$tmp/pgbench-prepared.out" 2>&1
diag "pgbench -M prepared through $version (exit $?, not supported in transaction pooling before PgBouncer 1.21):" \
     "$(grep -E 'processed' "$tmp/pgbench-prepared.out"; grep -m1 -E 'ERROR' "$tmp/pgbench-prepared.out")"
is "$(so_q db "$DB" "SELECT count(*) FROM milestones.check_invariants()")" 0 "check_invariants() is empty"

# --- Retries, errors, a consumer ----------------------------------------------
O=$(via shop_app -qAt -c "SELECT milestones.create_offer(10, 20, 'design', '$OFFER3_MS', 1)")
first=$(via shop_app -qAt -c "SELECT milestones.place_order($O, 20, 'checkout-$O')")
again=$(via shop_app -qAt -c "SELECT milestones.place_order($O, 20, 'checkout-$O')")
is "$again|$(so_q db "$DB" "SELECT count(DISTINCT txn_id) FROM milestones.ledger_entries WHERE order_id = $O AND kind = 'charge'")" "$first|1" \
   "an idempotent retry through the pooler returns the first result and charges once"
got=$(via shop_app -qAt -v VERBOSITY=verbose -c "SELECT milestones.place_order($O, 20)" 2>&1 | grep -E '^(ERROR|DETAIL|HINT)')
is "$got" "ERROR:  55000: place_order is not allowed: order $O is active
DETAIL:  place_order needs an offered order; order $O is active.
HINT:  The order is running; see milestones.order_status for its current milestone." \
   "a refusal through the pooler keeps its SQLSTATE, DETAIL and HINT"
is "$(via shop_app -qAt -v VERBOSITY=verbose -c "SELECT milestones.place_order($O, 20, 'checkout-$O')" -c "SELECT milestones.deliver($O, 10, NULL, 'checkout-$O')" 2>&1 | grep -cE '^ERROR:  22023: ')" 1 \
   "the same key with another call: 22023"

# drain: the consumer's batches through the pooler, each call its own
# transaction (so each may run on another server connection).
: >"$tmp/consumed.out"
batches=0
for i in $(seq 1 200); do
  b=$(via shop_app -qAt -c "SELECT milestones.next_batch('ledger', 250)") || break
  [ -n "$b" ] || break
  [ "$i" = 1 ] && { first_b=$b; again_b=$(via shop_app -qAt -c "SELECT milestones.next_batch('ledger', 250)"); }
  via shop_app -qAt -c "SELECT event_id FROM milestones.batch_events($b, 'ledger')" >>"$tmp/consumed.out" || break
  via shop_app -qAt -c "SELECT milestones.finish_batch($b, 'ledger')" >/dev/null || break
  batches=$((batches + 1))
done
is "${again_b:-none}" "${first_b:-}" \
   "next_batch before finish_batch hands out the same batch again"
is "$(sort -n "$tmp/consumed.out" | paste -sd, -)" "$(so_q db "$DB" "SELECT string_agg(event_id::text, ',' ORDER BY event_id) FROM milestones.events")" \
   "a durable consumer's $batches batches through the pooler: every event exactly once"

# --- The node example through the pooler --------------------------------------
if [ ! -d "$top/examples/node/node_modules" ]; then
  (cd "$top/examples/node" && npm ci --no-audit --no-fund --prefer-offline >"$tmp/npm.log" 2>&1) || diag "$(tail -5 "$tmp/npm.log")"
fi
(cd "$top/examples/node" &&
  env -u PGDATABASE PGHOST=127.0.0.1 PGPORT="$BP" PGUSER=postgres PGPASSWORD=pw-postgres \
      MILESTONES_LISTEN_HOST=127.0.0.1 MILESTONES_LISTEN_PORT="${SO_PORT[db]}" \
      node --test --test-reporter=tap test/client.test.js test/worker.test.js) >"$tmp/node.out" 2>&1
rc=$?
counts=$(grep -E '^# (pass|fail) ' "$tmp/node.out" | paste -sd' ' -)
ok $([ "$rc" -eq 0 ] && [[ "$counts" =~ ^#\ pass\ [1-9][0-9]*\ #\ fail\ 0$ ]]; echo $?) \
   "the node client's and worker's tests pass through pgbouncer, the worker LISTENing on a direct connection ($counts)"
[ "$rc" -eq 0 ] || diag "$(grep -E '^\s*not ok' -A12 "$tmp/node.out" | head -40)"

# --- pgbouncer killed under load ----------------------------------------------
# Eight clients of examples/node's MilestonesClient (test/shell/pooler-load.mjs),
# ten lifecycles each, one connection each through pgbouncer; each call the
# client saw succeed is a line "order key state" in seen.out.  When the
# pooler is gone a call may or may not have committed: the client sends it
# again with its idempotency key, so it either runs now or returns its
# first answer.
LIFECYCLES=10
CALLS=$((8 * LIFECYCLES * 8))
(cd "$top/examples/node" &&
  env PGHOST=127.0.0.1 PGPORT="$BP" PGUSER=shop_app PGPASSWORD=pw-shop_app PGDATABASE="$DB" \
      CLIENTS=8 LIFECYCLES=$LIFECYCLES node "$here/pooler-load.mjs") >"$tmp/seen.out" 2>"$tmp/load.err" &
load=$!
pids+=($load)
t0=$(date +%s)
# Kill it once the clients are well under way, start it again a moment later.
for i in $(seq 1 600); do
  [ "$(wc -l < "$tmp/seen.out")" -ge $((CALLS / 4)) ] && break
  kill -0 "$load" 2>/dev/null || break
  sleep 0.02
done
killed_at=$(wc -l < "$tmp/seen.out")
old=$(bouncer_pid)
kill_at=$(so_q db postgres "SELECT clock_timestamp()")
kill -9 "$old"
ok $? "pgbouncer (pid $old) killed with SIGKILL after $killed_at of $CALLS calls"
# Its pidfile stays behind, naming a process that is gone (a zombie until
# reaped, which pgbouncer would take for a running instance): removed, as
# a service manager would.
rm -f "$BOUNCER_DIR/pgbouncer.pid"
sleep 0.5
bouncer_start
ok $? "pgbouncer started again (pid $(bouncer_pid))"
wait "$load"
lrc=$?
retried=$(grep '^retry ' "$tmp/load.err" | cut -d' ' -f2 | sort -u)
is "$lrc|$(grep -v '^retry ' "$tmp/load.err")|$(wc -l < "$tmp/seen.out")" "0||$CALLS" \
   "all eight clients finished their lifecycles in $(( $(date +%s) - t0 )) s, no call refused ($(echo "$retried" | grep -c .) calls retried with their key)"
ok $([ -n "$retried" ]; echo $?) "(the kill did interrupt calls)"
diag "what the clients saw: $(grep '^retry ' "$tmp/load.err" | cut -d' ' -f4- | sort | uniq -c | sort -rn | head -3)"
keys=$(echo "$retried" | sed "s/.*/'&'/" | paste -sd, -)
diag "of the retried calls, $(so_q db "$DB" "SELECT count(*) FROM milestones.idempotency_keys WHERE key IN (${keys:-''}) AND created_at < '$kill_at'") had committed before the kill (their answer was lost; the retry returned it)"
orders=$(cut -d' ' -f1 "$tmp/seen.out" | sort -u | paste -sd, -)
is "$(so_q db "$DB" "SELECT count(*) FILTER (WHERE order_id IN (${orders:-0}) AND state = 'completed' AND end_reason = 'finished') || ' ' || count(*) FROM milestones.orders WHERE buyer_id BETWEEN 5001 AND 5008")" \
   "$((8 * LIFECYCLES)) $((8 * LIFECYCLES))" \
   "every order the clients saw is in the database, finished ($((8 * LIFECYCLES))), and there is no other (no offer made twice)"
# Each call the clients saw succeed is on the books once: its key is stored,
# and each order has exactly one lifecycle's events and charges.
cut -d' ' -f2 "$tmp/seen.out" | sort >"$tmp/seen.keys"
so_q db "$DB" "SELECT key FROM milestones.idempotency_keys WHERE key ~ '^c[0-9]+-'" | sort >"$tmp/stored.keys"
is "$(comm -23 "$tmp/seen.keys" "$tmp/stored.keys" | wc -l) $(wc -l < "$tmp/seen.keys")" "0 $CALLS" \
   "each of the $CALLS calls the clients saw succeed is recorded under its key"
is "$(so_q db "$DB" "SELECT string_agg(DISTINCT x.events, ' / ') FROM (SELECT string_agg(event, ',' ORDER BY event_id) AS events FROM milestones.events WHERE order_id IN (${orders:-0}) GROUP BY order_id) x")|$(so_q db "$DB" "SELECT string_agg(DISTINCT n::text, ',') FROM (SELECT count(DISTINCT txn_id) AS n FROM milestones.ledger_entries WHERE order_id IN (${orders:-0}) AND kind = 'charge' GROUP BY order_id) x")" \
   "offered,placed,delivered,accepted,delivered,accepted,delivered,accepted|3" \
   "no call was half done or done twice: every order has one lifecycle's events and three charges"
is "$(so_q db "$DB" "SELECT count(*) FROM milestones.check_invariants()")" 0 "check_invariants() is empty"

[ "$TAP_FAILED" -eq 0 ]
