#!/usr/bin/env bash
# test/shell/72_metrics.t - the metrics of SPEC section 13, read by the real
# prometheus-postgres-exporter (Debian's) over HTTP.
#
# A throwaway primary of its own (test/tools/scaleout-lib.sh; milestones
# preloaded, its relay serving the database) plays a story: orders in every
# state, a delivery whose deadline passed a day ago and that no sweep has
# ended, a consumer stuck on a batch it took 20 minutes ago and one that
# keeps up, in confirmed payment mode a charge the provider failed, one
# unpaid past its pay_by that no sweep has voided, one waiting, and a
# refund the provider failed; an audit that found the books sound and a
# later one that found an order corrupted on purpose.  The exporter runs with the queries file
# make install placed, logged in as a role that holds only
# milestones_reader, with its default settings otherwise; /metrics is read
# with curl on a free port.  Each series is there with the value the story
# implies (counted independently in SQL); the exporter logs no query error;
# promtool check metrics finds nothing against the naming conventions; the
# whole-table counts are cached (cache_seconds), the deadline ones are not.
# The exporter's role can neither call an action nor read what
# milestones_reader cannot.
#
# Then a streaming standby of that primary (pg_basebackup -R): run_audit()
# refuses there with 25006, and an exporter watching the standby reports the
# replicated record, no relay ("standby", so the relay-down alert cannot
# fire) and no query error.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
top=$(cd "$(dirname "$0")/../.." && pwd)
. "$top/test/tools/scaleout-lib.sh"

DB=ms_metrics
QUERIES=$(ms_extdir)/milestones/milestones-queries.yaml
command -v prometheus-postgres-exporter >/dev/null || bail "prometheus-postgres-exporter is missing (make deps)"
command -v promtool >/dev/null || bail "promtool is missing (make deps: prometheus)"

plan 53

exporters=()
cleanup() {
  local p
  for p in "${exporters[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  so_cleanup
}
trap cleanup EXIT

is "$(cmp -s "$QUERIES" "$top/prometheus/milestones-queries.yaml" && echo same)" same \
   "make install placed the queries file in share/extension/milestones/ ($QUERIES)"

so_init || bail "initdb failed"
so_cluster prim "shared_preload_libraries = 'milestones'" "milestones.database_name = '$DB'" \
  || bail "the primary did not start"
P() { so_psql prim "$DB" -qAt "$@"; }
so_psql prim postgres -q -c "CREATE DATABASE $DB" >/dev/null || bail "createdb failed"
P -c "CREATE EXTENSION milestones" >/dev/null || bail "CREATE EXTENSION failed"
P -c "SELECT milestones.set_seller_eligibility(10, true), milestones.set_category_eligibility('design', true)" >/dev/null

# The exporter's login: shop_reader, made by scaleout-lib.sh as
# CREATE ROLE shop_reader LOGIN PASSWORD ... IN ROLE milestones_reader.
is "$(P -c "SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls,
               (SELECT string_agg(g.rolname, ',') FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                 WHERE m.member = r.oid)
          FROM pg_roles r WHERE rolname = 'shop_reader'")" "f|milestones_reader" \
   "the exporter's role shop_reader holds milestones_reader and nothing else"

# --- The story ---------------------------------------------------------------
# Two consumers from the start: billing gets stuck, mailer keeps up.
P -c "SELECT milestones.register_consumer('billing'), milestones.register_consumer('mailer')" >/dev/null
every_state_sql | so_psql prim "$DB" -q >/dev/null || bail "the orders of every state failed"
# Delivered six days ago by the clock: its deadline (delivery + 5 days)
# passed a day ago, and no sweep runs in this cluster.
late=$(P <<'SQL' | tail -1
SELECT set_config('milestones.fake_now', (now() - interval '6 days')::text, false) IS NULL;
SELECT milestones.create_offer(10, 20, 'design',
  '[{"name":"Storyboard","days":3,"amount":"100.00"},{"name":"Final cut","days":5,"amount":"250.00"}]') AS id \gset
SELECT (milestones.place_order(:id, 20)).state IS NULL, (milestones.deliver(:id, 10)).state IS NULL;
SELECT :id;
SQL
)
respond_by=$(P -c "SELECT extract(epoch FROM respond_by) FROM milestones.order_milestones WHERE order_id = $late AND position = 1")
is "$(P -c "SELECT overdue, respond_by < now() - interval '23 hours' FROM milestones.awaiting_response WHERE order_id = $late")" "t|t" \
   "a delivery whose deadline passed a day ago waits for the sweep"

# Confirmed payment mode (SPEC section 11): the payment worker reports
# the provider's answers (as the owner here; in production the
# milestones_payments role).
P >/dev/null <<SQL || bail "the payments story failed"
\\set ON_ERROR_STOP 1
SELECT milestones.set_setting('payment_mode', 'confirmed');
-- a charge the provider declined
SELECT milestones.create_offer(10, 20, 'design', '$OFFER3_MS') AS o \\gset
SELECT milestones.place_order(:o, 20) IS NULL;
SELECT milestones.record_charge(charge_id, 1, 'failed', NULL, 'card declined') IS NULL
  FROM milestones.order_charges WHERE order_id = :o;
-- a charge requested four days ago: its pay_by (3 days) passed a day ago
SELECT set_config('milestones.fake_now', (now() - interval '4 days')::text, false) IS NULL;
SELECT milestones.place_order(milestones.create_offer(10, 20, 'design', '$OFFER3_MS'), 20) IS NULL;
RESET milestones.fake_now;
-- a charge that waits, pay_by ahead
SELECT milestones.place_order(milestones.create_offer(10, 20, 'design', '$OFFER3_MS'), 20) IS NULL;
-- paid, then cancelled by support: the refund the provider failed
SELECT milestones.create_offer(10, 20, 'design', '$OFFER3_MS') AS r \\gset
SELECT milestones.place_order(:r, 20) IS NULL;
SELECT milestones.record_charge(charge_id, 1, 'succeeded', 'pi_r1') IS NULL
  FROM milestones.order_charges WHERE order_id = :r;
SELECT milestones.cancel(:r, 'agent-1', 'mutual_agreement') IS NULL;
SELECT milestones.record_refund(refund_id, 'failed', NULL, 'account closed') IS NULL
  FROM milestones.order_refunds WHERE order_id = :r;
SELECT milestones.set_setting('payment_mode', 'recorded');   -- the rest of the story as in 1.1
SQL
pay_by=$(P -c "SELECT extract(epoch FROM min(pay_by)) FROM milestones.order_charges WHERE state IN ('requested', 'failed')")
is "$(P -c "SELECT string_agg(state || ':' || n, ' ' ORDER BY state) FROM (SELECT state, count(*) n FROM milestones.order_charges GROUP BY 1) x")|$(P -c "SELECT string_agg(state, ' ') FROM milestones.order_refunds")" \
   "failed:1 requested:2 succeeded:1|failed" \
   "confirmed mode: one charge failed, two requested (one of them a day past its pay_by), one paid; its refund failed"

# mailer reads everything; billing takes one batch and never finishes it
# (handed out 20 minutes ago, as a worker that hangs would leave it).
P >/dev/null <<'SQL'
DO $$
DECLARE b bigint;
BEGIN
    LOOP
        b := milestones.next_batch('mailer', 7);
        EXIT WHEN b IS NULL;
        PERFORM milestones.finish_batch(b, 'mailer');
    END LOOP;
END $$;
SELECT milestones.next_batch('billing', 5);
UPDATE milestones.consumer_batches SET created_at = created_at - interval '20 minutes'
 WHERE consumer_id = (SELECT consumer_id FROM milestones.consumers WHERE name = 'billing');
SQL
is "$(P -c "SELECT consumer || ':' || (open_batch IS NOT NULL) || ':' || (pending_events > 0) || ':'
                   || COALESCE(open_batch_at < now() - interval '19 minutes', false)
              FROM milestones.consumer_status WHERE consumer IN ('billing', 'mailer') ORDER BY 1" | tr '\n' ' ')" \
   "billing:true:true:true mailer:false:false:false " \
   "consumer_status: billing has had an open batch for 20 minutes with events pending; mailer is caught up"

# The audit: a clean run, then one order corrupted on purpose (as the owner,
# the guard off) and a run that finds it.
P -c "SELECT problems FROM milestones.run_audit()" >/dev/null
sleep 1
broken=$(P -c "SELECT order_id FROM milestones.orders WHERE state = 'active' ORDER BY order_id LIMIT 1")
P >/dev/null <<SQL
SET session_replication_role = replica;
UPDATE milestones.ledger_entries SET amount = 90
 WHERE order_id = $broken AND kind = 'charge' AND position = 1 AND account = 'escrow';
SQL
audit_err=$(P -c "SELECT problems FROM milestones.run_audit()" 2>&1 >/dev/null)
problems=$(P -c "SELECT last_problems FROM milestones.audit_status")
[ "$problems" -gt 0 ] && grep -q "WARNING:  milestones audit: check_invariants() found $problems problem(s)" <<<"$audit_err"
ok $? "run_audit finds the corrupted order ($problems problems) and warns where a DBA looks: $(head -1 <<<"$audit_err")"

# The relay has sent everything.
for _ in $(seq 1 100); do [ "$(P -c "SELECT pending_events FROM milestones.relay_status()")" = 0 ] && break; sleep 0.1; done

# What the story implies, counted directly (as the superuser), before the
# exporter reads it.
# want_orders: the milestones_orders lines the orders table implies.
want_orders() {
  P -c "SELECT format('milestones_orders{reason=\"%s\",state=\"%s\"} %s', COALESCE(g.reason, ''), g.state,
                      (SELECT count(*) FROM milestones.orders o
                        WHERE o.state = g.state AND COALESCE(o.end_reason, o.cancel_reason) IS NOT DISTINCT FROM g.reason))
          FROM milestones.order_counts g ORDER BY 1"
}
want_orders=$(want_orders)
awaiting=$(P -c "SELECT count(*) FROM milestones.order_milestones WHERE state = 'delivered' AND respond_by > now()")
events=$(P -c "SELECT count(*) FROM milestones.events")
billing_pending=$(P -c "SELECT count(*) FROM milestones.events e WHERE e.event_id > 0")   # billing registered before the first event
mailer_done=$(P -c "SELECT events_done FROM milestones.consumers WHERE name = 'mailer'")
want_balances=$(P -c "SELECT format('milestones_seller_balance{currency=\"%s\",state=\"%s\"} %s', currency, v.state, v.amount::float8)
                        FROM (SELECT currency, sum(pending) p, sum(available) a, sum(withdrawing) w
                                FROM milestones.seller_accounts GROUP BY 1) s,
                             LATERAL (VALUES ('pending', p), ('available', a), ('withdrawing', w)) v (state, amount)
                       ORDER BY 1")

# --- The exporter on the primary ---------------------------------------------
tmp=$SO_DIR
# start_exporter NAME CLUSTER: the exporter as shop_reader, its log in
# $tmp/NAME.log; sets EXPORTER_PORT.  Without the runner's PG* variables:
# its DATA_SOURCE_NAME says everything (and lib/pq panics on PGSYSCONFDIR,
# which pg_virtualenv sets).
start_exporter() {
  local name=$1 cluster=$2 i
  EXPORTER_PORT=$(so_free_port) || return 1
  env -u PGHOST -u PGPORT -u PGUSER -u PGPASSWORD -u PGDATABASE -u PGSYSCONFDIR -u PG_CLUSTER_CONF_ROOT \
  DATA_SOURCE_NAME="host=127.0.0.1 port=${SO_PORT[$cluster]} user=shop_reader password=pw-shop_reader dbname=$DB sslmode=disable" \
    prometheus-postgres-exporter --web.listen-address="127.0.0.1:$EXPORTER_PORT" \
      --extend.query-path="$QUERIES" >"$tmp/$name.log" 2>&1 &
  exporters+=($!)
  for i in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$EXPORTER_PORT/metrics" -o /dev/null && return 0
    sleep 0.1
  done
  diag "$(cat "$tmp/$name.log")"
  return 1
}
# scrape FILE: GET /metrics; the server label is dropped for comparisons.
scrape() {
  curl -sf "http://127.0.0.1:$EXPORTER_PORT/metrics" -o "$1.raw" || return 1
  sed -E 's/server="[^"]*",?//; s/,\}/}/; s/\{\}//' "$1.raw" > "$1"
}
# val FILE SERIES: the value of one series (labels as the exporter sorts them).
val() { awk -v k="$2" '$1 == k { print $2 }' "$1"; }

start_exporter prim prim
ok $? "prometheus-postgres-exporter (Debian $(prometheus-postgres-exporter --version 2>&1 | awk 'NR==1 {print $3}')) answers on 127.0.0.1:$EXPORTER_PORT, logged in as shop_reader"
t0=$(date +%s.%N)
scrape "$tmp/m1" || bail "GET /metrics failed"
diag "the first scrape took $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }') s; the exporter measured $(val "$tmp/m1" pg_exporter_last_scrape_duration_seconds) s"

is "$(val "$tmp/m1" pg_up)|$(val "$tmp/m1" pg_exporter_last_scrape_error)|$(grep -E '^pg_exporter_user_queries_load_error' "$tmp/m1" | awk '{print $2}')" \
   "1|0|0" "pg_up 1, no scrape error, the queries file loaded"
is "$(grep -E '^milestones_orders\{' "$tmp/m1" | sort)" "$want_orders" \
   "milestones_orders{state, reason}: every state and reason, with the count of the orders table"
is "$(val "$tmp/m1" 'milestones_orders{reason="",state="active"}') $(val "$tmp/m1" 'milestones_orders{reason="expired",state="completed"}') $(val "$tmp/m1" 'milestones_orders{reason="duplicate_order",state="cancelled"}') $(val "$tmp/m1" 'milestones_orders{reason="unpaid",state="completed"}')" \
   "5 1 1 0" "... active 5 (four of every_state, the late one), completed/expired 1, cancelled/duplicate_order 1, completed/unpaid 0"
is "$(val "$tmp/m1" milestones_deliveries_awaiting_buyer)" "$awaiting" \
   "milestones_deliveries_awaiting_buyer: the deliveries whose window is open ($awaiting)"
is "$(val "$tmp/m1" 'milestones_sweep_backlog{kind="delivery"}')" 1 \
   "milestones_sweep_backlog{kind=\"delivery\"}: the one overdue delivery the sweep has not ended"
age=$(val "$tmp/m1" 'milestones_sweep_backlog_age_seconds{kind="delivery"}')
now=$(date +%s.%N)
awk -v a="$age" -v n="$now" -v r="$respond_by" 'BEGIN { exit !(a > 86000 && a - (n - r) < 5 && (n - r) - a < 5) }'
ok $? "milestones_sweep_backlog_age_seconds{kind=\"delivery\"}: the time since its deadline ($age s, about a day)"
is "$(val "$tmp/m1" 'milestones_relay_up{mode="relay"}')|$(val "$tmp/m1" 'milestones_relay_paused{mode="relay"}')|$(val "$tmp/m1" 'milestones_relay_pending_events{mode="relay"}')|$(val "$tmp/m1" 'milestones_relay_lag_seconds{mode="relay"}')" \
   "1|0|0|0" "milestones_relay_*{mode=\"relay\"}: the relay runs, not paused, nothing pending, no lag"
is "$(val "$tmp/m1" 'milestones_relay_notifications_total{mode="relay"}')" "$events" \
   "milestones_relay_notifications_total: one notification per event ($events)"
is "$(grep -c '^milestones_relay_up' "$tmp/m1")" 1 "one relay series: the mode is a label of the current mode only"
is "$(val "$tmp/m1" 'milestones_consumer_pending_events{consumer="billing"}')" "$billing_pending" \
   "milestones_consumer_pending_events{consumer=\"billing\"}: its whole backlog ($billing_pending events, its open batch included)"
bage=$(val "$tmp/m1" 'milestones_consumer_open_batch_age_seconds{consumer="billing"}')
awk -v a="$bage" 'BEGIN { exit !(a >= 1200 && a < 1260) }'
ok $? "milestones_consumer_open_batch_age_seconds{consumer=\"billing\"}: the batch it took 20 minutes ago ($bage s)"
is "$(val "$tmp/m1" 'milestones_consumer_pending_events{consumer="mailer"}')|$(val "$tmp/m1" 'milestones_consumer_open_batch_age_seconds{consumer="mailer"}')|$(val "$tmp/m1" 'milestones_consumer_lag_seconds{consumer="mailer"}')|$(val "$tmp/m1" 'milestones_consumer_events_total{consumer="mailer"}')" \
   "0|0|0|$mailer_done" "mailer, caught up: no backlog, no open batch, no lag, $mailer_done events done"
lag=$(val "$tmp/m1" 'milestones_consumer_lag_seconds{consumer="billing"}')
awk -v a="$lag" 'BEGIN { exit !(a > 0 && a < 120) }'
ok $? "milestones_consumer_lag_seconds{consumer=\"billing\"}: the age of its oldest pending event ($lag s)"
is "$(grep -c '_relay' <(grep '^milestones_consumer' "$tmp/m1"))" 0 "the relay's own consumer is not listed among the consumers"
is "$(val "$tmp/m1" milestones_audit_problems)" "$problems" \
   "milestones_audit_problems: what the latest audit found ($problems)"
read -r run_age clean_age dur < <(echo "$(val "$tmp/m1" milestones_audit_last_run_age_seconds) $(val "$tmp/m1" milestones_audit_last_clean_age_seconds) $(val "$tmp/m1" milestones_audit_duration_seconds)")
awk -v r="$run_age" -v c="$clean_age" -v d="$dur" 'BEGIN { exit !(r >= 0 && r < 60 && c >= r + 1 && c < 120 && d >= 0 && d < 10) }'
ok $? "milestones_audit_last_run_age_seconds $run_age < last_clean_age_seconds $clean_age (the clean run was the one before); duration $dur s"

# Confirmed payment mode.
is "$(val "$tmp/m1" 'milestones_charges_open{state="requested"}')|$(val "$tmp/m1" 'milestones_charges_open{state="failed"}')" "2|1" \
   "milestones_charges_open: 2 requested (one unpaid past pay_by, one waiting), 1 failed"
is "$(val "$tmp/m1" milestones_charge_attempts_total)|$(val "$tmp/m1" milestones_charge_attempts_failed)" "4|1" \
   "milestones_charge_attempts_total 4, milestones_charge_attempts_failed 1 (the declined card)"
is "$(val "$tmp/m1" 'milestones_sweep_backlog{kind="charge"}')" 1 \
   "milestones_sweep_backlog{kind=\"charge\"}: the unpaid charge the sweep has not voided"
cage=$(val "$tmp/m1" 'milestones_sweep_backlog_age_seconds{kind="charge"}')
awk -v a="$cage" -v n="$(date +%s.%N)" -v r="$pay_by" 'BEGIN { exit !(a > 86000 && a - (n - r) < 5 && (n - r) - a < 5) }'
ok $? "milestones_sweep_backlog_age_seconds{kind=\"charge\"}: the time since its pay_by ($cage s, about a day)"
is "$(val "$tmp/m1" 'milestones_refunds_open{state="requested"}')|$(val "$tmp/m1" 'milestones_refunds_open{state="failed"}')" "0|1" \
   "milestones_refunds_open: the refund the provider failed waits for support"
is "$(val "$tmp/m1" 'milestones_withdrawals_open{state="requested"}')|$(val "$tmp/m1" milestones_withdrawals_failed_total)" "0|0" \
   "milestones_withdrawals_open and milestones_withdrawals_failed_total: none"
is "$(grep -E '^milestones_seller_balance\{' "$tmp/m1" | sort)" "$want_balances" \
   "milestones_seller_balance{currency, state}: the sum of the sellers' accounts${want_balances:+ ($(wc -l <<<"$want_balances") series)}"

# Nothing against Prometheus' naming conventions, no query error.
lint=$(grep -E '^(# (HELP|TYPE) )?milestones_' "$tmp/m1.raw" | promtool check metrics 2>&1)
ok $? "promtool check metrics: the milestones_* series follow the naming conventions${lint:+ ($lint)}"
n_families=$(( 23 + $([ -n "$want_balances" ] && echo 1 || echo 0) ))
is "$(grep -c '^# TYPE milestones_' "$tmp/m1")|$(grep -c '^# HELP milestones_' "$tmp/m1")" "$n_families|$n_families" \
   "$n_families milestones metrics, each with its HELP and TYPE (milestones_seller_balance only once a seller holds a balance)"
is "$(grep -E 'err=|level=(error|warn)' "$tmp/prim.log")" "" "the exporter logged no query error"

# Cached (cache_seconds) versus per scrape: a new delivery shows at once;
# the orders count, read from the whole table, keeps its value for 300 s.
o=$(P -c "SELECT milestones.create_offer(10, 20, 'design', '$OFFER3_MS', 1)")
P -c "SELECT milestones.place_order($o, 20), milestones.deliver($o, 10)" >/dev/null
scrape "$tmp/m2"
is "$(val "$tmp/m2" milestones_deliveries_awaiting_buyer)|$(val "$tmp/m2" 'milestones_orders{reason="",state="active"}')" \
   "$((awaiting + 1))|5" \
   "per scrape: the new delivery counts at once; cached: the order it belongs to waits for the next count (cache_seconds 300)"

# --- What the exporter's role cannot do --------------------------------------
R() { so_as shop_reader prim "$DB" -qAt -v VERBOSITY=sqlstate "$@"; }
for sql in "SELECT milestones.place_order($late, 20)" \
           "SELECT milestones.create_offer(10, 20, 'design', '$OFFER3_MS')" \
           "SELECT milestones.next_batch('billing')" \
           "SELECT milestones.run_audit()" \
           "SELECT milestones.expire_overdue()" \
           "SELECT count(*) FROM milestones.check_invariants()" \
           "SELECT count(*) FROM milestones.orders" \
           "SELECT count(*) FROM milestones.ledger_entries" \
           "SELECT count(*) FROM milestones.events" \
           "SELECT count(*) FROM milestones.consumer_batches" \
           "DELETE FROM milestones.audit_runs"; do
  is "$(R -c "$sql" 2>&1 | head -1)" "ERROR:  42501" "shop_reader is refused (42501): $sql"
done

# --- A streaming standby -----------------------------------------------------
port=$(so_free_port)
so_run "$SO_BIN/pg_basebackup" -D "$SO_DIR/stby" -R -X stream -c fast -h "$SO_DIR/sock" -p "${SO_PORT[prim]}" -U postgres \
  >"$tmp/basebackup.log" 2>&1 || { diag "$(cat "$tmp/basebackup.log")"; bail "pg_basebackup failed"; }
echo "port = $port" | so_run tee -a "$SO_DIR/stby/postgresql.conf" >/dev/null
so_run "$SO_BIN/pg_ctl" -D "$SO_DIR/stby" -l "$SO_DIR/stby.log" -w -t 60 start >/dev/null || { diag "$(tail -20 "$SO_DIR/stby.log")"; bail "the standby did not start"; }
SO_PORT[stby]=$port
SO_NAMES+=(stby)
S() { so_psql stby "$DB" -qAt "$@"; }
lsn=$(P -c "SELECT pg_current_wal_lsn()")
for _ in $(seq 1 100); do [ "$(S -c "SELECT pg_last_wal_replay_lsn() >= '$lsn'")" = t ] && break; sleep 0.1; done
is "$(S -c "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn() >= '$lsn'")" "t|t" "a streaming standby (pg_basebackup -R) has replayed the primary"

is "$(S -v VERBOSITY=verbose -c "SELECT milestones.run_audit()" 2>&1 | head -1)" \
   "ERROR:  25006: run_audit is not allowed: this server is a standby" \
   "run_audit() on the standby: 25006, run_audit is not allowed: this server is a standby"
is "$(S -c "SELECT count(*) FROM milestones.check_invariants()")" "$problems" \
   "check_invariants() itself still runs there (read-only) and finds the same problems"

start_exporter stby stby
ok $? "an exporter watching the standby answers, logged in as shop_reader"
scrape "$tmp/s1"
is "$(val "$tmp/s1" pg_up)|$(val "$tmp/s1" pg_exporter_last_scrape_error)|$(grep -E 'err=|level=(error|warn)' "$tmp/stby.log")" \
   "1|0|" "on the standby: pg_up 1, no scrape error, no query error logged"
is "$(grep '^milestones_relay_up' "$tmp/s1")" 'milestones_relay_up{mode="standby"} 0' \
   "milestones_relay_up{mode=\"standby\"} 0: no relay there, and the relay-down alert (mode=\"relay\") cannot fire"
is "$(val "$tmp/s1" milestones_audit_problems)|$(val "$tmp/s1" 'milestones_sweep_backlog{kind="delivery"}')" \
   "$problems|1" "the standby reports the replicated audit record and the same sweep backlog"
is "$(grep -E '^milestones_orders\{' "$tmp/s1" | sort)" "$(want_orders)" \
   "the standby's order counts are the primary's"

exit $(( TAP_FAILED > 0 ))
