#!/usr/bin/env bash
# test/shell/50_upgrade.t - 1.0 -> 1.1 in place with ALTER EXTENSION UPDATE
# (SPEC section 9).
#
# A database is created at 1.0 from the released script and filled with
# orders in every state, idempotency keys and events; then
# ALTER EXTENSION milestones UPDATE runs and:
#   - every row of every 1.0 table reads the same as before (its 1.0
#     columns, in key order);
#   - the extension's member objects are exactly those of a fresh 1.1
#     install (test/upgrade/catalog.sql: definitions, owners, privileges,
#     SECURITY DEFINER, proconfig, columns, defaults, constraints, indexes,
#     triggers, views, sequences, pg_extension_config_dump registrations);
#   - every pgTAP suite passes on the upgraded database;
#   - an order that was mid-flight before the upgrade finishes after it.
# Bad input: an unknown target version is refused by PostgreSQL and changes
# nothing; an upgrade that fails half-way leaves the database at 1.0.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

top=$(cd "$(dirname "$0")/../.." && pwd)
old=ms_up_old
fresh=ms_up_fresh
broken=ms_up_broken
tapdb=ms_up_tap
tmp=$(mktemp -d)
trap 'dropdbs $old $fresh $broken $tapdb; rm -rf "$tmp"' EXIT

plan 21

# db_at_10 DB: a new database with milestones 1.0 and the test eligibility.
db_at_10() {
  dropdb --if-exists "$1" >/dev/null 2>&1
  createdb "$1" || bail "createdb $1 failed"
  psql -X -q -v ON_ERROR_STOP=1 -d "$1" >/dev/null <<'SQL' || bail "milestones 1.0 in $1 failed"
CREATE EXTENSION milestones VERSION '1.0';
SELECT milestones.set_seller_eligibility(10, true);
SELECT milestones.set_category_eligibility('design', true);
SQL
}
catalog() { psql -X -q -A -t -v ON_ERROR_STOP=1 -v ext=milestones -d "$1" -f "$top/test/upgrade/catalog.sql"; }
version() { q "$1" "SELECT extversion FROM pg_extension WHERE extname = 'milestones'"; }

db_at_10 $old
is "$(version $old)" "1.0" "the database starts at 1.0, from the released script"
is "$(sha256sum "$(pg_config --sharedir)/extension/milestones--1.0.sql" | cut -c1-64)" \
   "930aafd9850c5d12ea35fa484bdc5922dae9507a18260c775b95c111ac449665" \
   "the installed 1.0 script is the released one, byte for byte"
every_state_sql | psql -X -q -d $old >/dev/null 2>"$tmp/setup.err"
ok $? "orders in every state, idempotency keys and events were made at 1.0"
q $old "UPDATE milestones.settings SET seller_fee_rate = 0.1, response_window = '8 days';
        SELECT milestones.set_cancellation_reason('fraud_suspected', 'Payment flagged by the fraud team.');
        SELECT milestones.set_cancellation_reason('buyer_unresponsive', 'The buyer went silent.', false);
        SELECT milestones.set_seller_eligibility(11, false);" >/dev/null
is "$(q $old "SELECT string_agg(DISTINCT state || coalesce('/' || reason, '') || coalesce('/' || milestone_state, ''), ' ')
              FROM milestones.order_status")" \
   "active/delivered active/in_progress cancelled/duplicate_order/skipped cancelled/mutual_agreement/refunded completed/expired/completed completed/finished/completed completed/stopped/completed declined/skipped offered/pending withdrawn/skipped" \
   "1.0 holds every order state"
is "$(q $old "SELECT (SELECT count(*) > 0 FROM milestones.idempotency_keys) AND (SELECT count(*) >= 20 FROM milestones.events)")" \
   "t" "1.0 holds idempotency keys and events"

# The snapshot reads every 1.0 table through its 1.0 columns, in key order,
# so columns that 1.1 adds do not count as a change.
q $old "SELECT format('SELECT %s FROM %s ORDER BY %s;', string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum), c.oid::regclass,
               (SELECT string_agg(quote_ident(k.attname), ', ' ORDER BY k.attnum) FROM pg_attribute k
                 WHERE k.attrelid = c.oid AND k.attnum > 0 AND NOT k.attisdropped))
          FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         WHERE c.relnamespace = 'milestones'::regnamespace AND c.relkind = 'r'
         GROUP BY c.oid ORDER BY c.oid::regclass::text" > "$tmp/snapshot.sql"
for s in order_id_seq event_id_seq ledger_txn_id_seq ledger_entry_id_seq; do
  echo "SELECT last_value, is_called FROM milestones.$s;" >> "$tmp/snapshot.sql"
done
is "$(grep -c '^SELECT' "$tmp/snapshot.sql")" "13" "the snapshot covers the 9 tables and 4 sequences of 1.0"
psql -X -q -A -v ON_ERROR_STOP=1 -d $old -f "$tmp/snapshot.sql" -o "$tmp/before.out"
ok $? "snapshot before the upgrade"

# An unknown version: PostgreSQL's own error, nothing changed.
out=$(q $old "ALTER EXTENSION milestones UPDATE TO '9.9'" 2>&1)
[[ "$out" == *'has no update path from version "1.0" to version "9.9"'* ]]
ok $? "UPDATE TO '9.9' is refused by PostgreSQL"; [ $? -eq 0 ] || diag "$out"
is "$(version $old)" "1.0" "... and the database is still at 1.0"

# The upgrade itself, timed.
t0=$(date +%s%N)
q $old "ALTER EXTENSION milestones UPDATE" >/dev/null 2>"$tmp/upgrade.err"
ok $? "ALTER EXTENSION milestones UPDATE"; [ -s "$tmp/upgrade.err" ] && diag "$(head -20 "$tmp/upgrade.err")"
diag "the upgrade took $(( ($(date +%s%N) - t0) / 1000000 )) ms"
is "$(version $old)" "1.1" "the database is at 1.1"

psql -X -q -A -v ON_ERROR_STOP=1 -d $old -f "$tmp/snapshot.sql" -o "$tmp/after.out"
diff -u "$tmp/before.out" "$tmp/after.out" > "$tmp/rows.diff"
ok $? "every row of orders, milestones, ledger, events, keys, settings and lists reads the same"
[ -s "$tmp/rows.diff" ] && diag "$(head -40 "$tmp/rows.diff")"

# The catalog: upgraded == fresh.
dropdb --if-exists $fresh >/dev/null 2>&1; createdb $fresh
q $fresh "CREATE EXTENSION milestones" >/dev/null
catalog $old > "$tmp/upgraded.cat" && catalog $fresh > "$tmp/fresh.cat"
ok $? "catalog listings of the upgraded and the fresh database"
lines=$(wc -l < "$tmp/fresh.cat")
objects=$(q $fresh "SELECT count(*) FROM pg_depend WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
                      AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'milestones')")
diag "compared $objects member objects in $lines listing lines"
diff -u "$tmp/fresh.cat" "$tmp/upgraded.cat" > "$tmp/catalog.diff"
ok $? "the upgraded extension has exactly the objects of a fresh 1.1 install"
[ -s "$tmp/catalog.diff" ] && diag "$(head -60 "$tmp/catalog.diff")"

# The mid-flight order (delivered before the upgrade) finishes after it.
mid=$(q $old "SELECT order_id FROM milestones.order_status WHERE state = 'active' AND milestone_state = 'delivered'")
out=$(psql -X -q -A -t -v ON_ERROR_STOP=1 -d $old 2>&1 <<SQL
SET milestones.fake_now = '2030-01-08 00:00:00+00';
SELECT milestones.accept($mid, 20) IS NOT NULL;
SELECT milestones.deliver($mid, 10) IS NOT NULL;
SELECT milestones.accept($mid, 20) IS NOT NULL;
SELECT milestones.deliver($mid, 10, 'final') IS NOT NULL;
SELECT state || '/' || reason || ' ' || charged || ' ' || paid_out FROM milestones.accept($mid, 20);
SQL
)
is "$(tail -1 <<<"$out")" "completed/finished 500.00 500.00" "the order delivered before the upgrade is finished after it"
is "$(q $old "SELECT count(*) FROM milestones.check_invariants()")" "0" "check_invariants() is empty after the upgrade and the new actions"

# The pgTAP suites on an upgraded database.  They expect the empty
# database a fresh install gives (they count orders and events, and use the
# default settings), so this one is upgraded from an empty 1.0.
db_at_10 $tapdb
q $tapdb "ALTER EXTENSION milestones UPDATE; CREATE EXTENSION pgtap" >/dev/null
is "$(version $tapdb)" "1.1" "a second database, upgraded from an empty 1.0"
(cd "$top" && pg_prove -d $tapdb test/sql/*.sql) > "$tmp/tap.log" 2>&1
ok $? "every pgTAP suite passes on the upgraded database"
diag "$(grep -E '^Files=' "$tmp/tap.log")"

# An upgrade that fails half-way leaves 1.0: a clashing object makes one
# statement of the upgrade fail after earlier ones ran.
db_at_10 $broken
catalog $broken > "$tmp/broken-before.cat"
newfn=$(comm -13 <(q $broken "SELECT p.oid::regprocedure FROM pg_proc p WHERE pronamespace = 'milestones'::regnamespace ORDER BY 1") \
                 <(q $fresh "SELECT p.oid::regprocedure FROM pg_proc p WHERE pronamespace = 'milestones'::regnamespace ORDER BY 1") | tail -1)
if [ -n "$newfn" ]; then
  q $broken "CREATE FUNCTION $(sed 's/(/(/' <<<"$newfn") RETURNS void LANGUAGE sql AS 'SELECT NULL::void'" >/dev/null 2>&1 ||
    q $broken "CREATE FUNCTION $newfn RETURNS SETOF record LANGUAGE sql AS 'SELECT NULL::record'" >/dev/null 2>&1
  out=$(q $broken "ALTER EXTENSION milestones UPDATE" 2>&1)
  [ -n "$out" ] && [[ "$out" == *ERROR* ]]
  ok $? "an upgrade that meets a clashing $newfn fails"
  q $broken "DROP FUNCTION $newfn" >/dev/null
else
  ok 0 "# SKIP 1.1 adds no function to clash with"
fi
is "$(version $broken)" "1.0" "the failed upgrade left the database at 1.0"
catalog $broken > "$tmp/broken-after.cat"
diff -u "$tmp/broken-before.cat" "$tmp/broken-after.cat" > "$tmp/broken.diff"
ok $? "... with the catalog of 1.0, unchanged"
[ -s "$tmp/broken.diff" ] && diag "$(head -20 "$tmp/broken.diff")"

[ $TAP_FAILED -eq 0 ]
