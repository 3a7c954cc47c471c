#!/usr/bin/env bash
# test/shell/50_upgrade.t - 1.0 -> 1.2 and 1.1 -> 1.2 in place with
# ALTER EXTENSION UPDATE (SPEC section 9).
#
# For each released version (1.0, whose database PostgreSQL takes through
# 1.0 -> 1.1 -> 1.2, and 1.1): a database is created at that version from
# its released script and filled with orders in every state, idempotency
# keys and events (and, at 1.1, a durable consumer holding an unfinished
# batch); then ALTER EXTENSION milestones UPDATE runs and:
#   - every row of every table of the old version reads the same as before
#     (its old columns, in key order), and the consumer's unfinished batch
#     is handed out again, with the same events;
#   - neither events nor ledger_entries was rewritten (same relfilenode)
#     or read by a sequential scan during the upgrade;
#   - the extension's member objects are exactly those of a fresh 1.2
#     install (test/upgrade/catalog.sql: definitions, owners, privileges,
#     SECURITY DEFINER, proconfig, columns, defaults, constraints, indexes,
#     triggers, views, sequences, pg_extension_config_dump registrations);
#   - the database stays in payment_mode 'recorded' (1.1 behaviour);
#   - an order that was mid-flight before the upgrade finishes after it;
#   - every pgTAP suite passes on a database upgraded from an empty 1.0 and
#     from an empty 1.1.
# Bad input: an unknown target version is refused by PostgreSQL and changes
# nothing; an upgrade that fails half-way leaves the database where it was.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

top=$(cd "$(dirname "$0")/../.." && pwd)
fresh=ms_up_fresh
tmp=$(mktemp -d)
dbs=($fresh)
trap 'dropdbs "${dbs[@]}"; rm -rf "$tmp"' EXIT

plan 49

NEW=1.2

# db_at VERSION DB: a new database with milestones at VERSION and the test
# eligibility.
db_at() {
  dropdb --if-exists "$2" >/dev/null 2>&1
  createdb "$2" || bail "createdb $2 failed"
  dbs+=("$2")
  psql -X -q -v ON_ERROR_STOP=1 -d "$2" >/dev/null <<SQL || bail "milestones $1 in $2 failed"
CREATE EXTENSION milestones VERSION '$1';
SELECT milestones.set_seller_eligibility(10, true);
SELECT milestones.set_category_eligibility('design', true);
SQL
}
catalog() { psql -X -q -A -t -v ON_ERROR_STOP=1 -v ext=milestones -d "$1" -f "$top/test/upgrade/catalog.sql"; }
version() { q "$1" "SELECT extversion FROM pg_extension WHERE extname = 'milestones'"; }
# scans DB TABLE: sequential scans of a table so far (statistics flushed first).
scans() {
  q "$1" "SELECT pg_stat_force_next_flush()" >/dev/null
  sleep 0.6
  q "$1" "SELECT seq_scan FROM pg_stat_user_tables WHERE relid = 'milestones.$2'::regclass"
}

dropdb --if-exists $fresh >/dev/null 2>&1; createdb $fresh
q $fresh "CREATE EXTENSION milestones" >/dev/null
is "$(version $fresh)" "$NEW" "a fresh install is at $NEW"
catalog $fresh > "$tmp/fresh.cat"
is "$(sha256sum "$(ms_extdir)/milestones--1.0.sql" | cut -c1-64)" \
   "930aafd9850c5d12ea35fa484bdc5922dae9507a18260c775b95c111ac449665" \
   "the installed 1.0 script is the released one, byte for byte"
is "$(sha256sum "$(ms_extdir)/milestones--1.1.sql" "$(ms_extdir)/milestones--1.0--1.1.sql" | cut -c1-64 | tr '\n' ' ')" \
   "e58c6fe590e5c212e1a9516412f023f46bb7c462967746dc252d38077a0d2550 fdf1ae175f7514f8a7ee250def8d09782a720c1e9ea57c4f88a0387d5dbb0a3c " \
   "the installed 1.1 scripts are the released ones, byte for byte"

for OLD in 1.0 1.1; do
  old=ms_up_old_${OLD/./}
  db_at $OLD $old
  is "$(version $old)" "$OLD" "[$OLD] the database starts at $OLD, from the released script"
  every_state_sql | psql -X -q -d $old >/dev/null 2>"$tmp/setup.err"
  ok $? "[$OLD] orders in every state, idempotency keys and events were made at $OLD"
  q $old "UPDATE milestones.settings SET seller_fee_rate = 0.1, response_window = '8 days';
          SELECT milestones.set_cancellation_reason('fraud_suspected', 'Payment flagged by the fraud team.');
          SELECT milestones.set_cancellation_reason('buyer_unresponsive', 'The buyer went silent.', false);
          SELECT milestones.set_seller_eligibility(11, false);" >/dev/null
  is "$(q $old "SELECT string_agg(DISTINCT state || coalesce('/' || reason, '') || coalesce('/' || milestone_state, ''), ' ')
                FROM milestones.order_status")" \
     "active/delivered active/in_progress cancelled/duplicate_order/skipped cancelled/mutual_agreement/refunded completed/expired/completed completed/finished/completed completed/stopped/completed declined/skipped offered/pending withdrawn/skipped" \
     "[$OLD] the database holds every order state"

  # At 1.1: a consumer with an unfinished batch, which 1.2 hands out again.
  batch=""
  if [ $OLD = 1.1 ]; then
    q $old "SELECT milestones.register_consumer('billing')" >/dev/null
    offer3 $old 1 >/dev/null
    offer3 $old 1 >/dev/null
    batch=$(q $old "SELECT milestones.next_batch('billing', 1000)")
    q $old "SELECT string_agg(event_id::text, ',' ORDER BY event_id) FROM milestones.batch_events($batch)" > "$tmp/batch-before"
    [ -n "$batch" ] && [ "$(tr ',' '\n' < "$tmp/batch-before" | grep -c .)" -eq 2 ]
    ok $? "[$OLD] consumer billing holds batch $batch of 2 events, not finished"
  fi

  # The snapshot reads every table of the old version through its old
  # columns, in key order, so columns that later versions add do not count.
  q $old "SELECT format('SELECT %s FROM %s ORDER BY %s;', string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum), c.oid::regclass,
                 (SELECT string_agg(quote_ident(k.attname) || '::text', ', ' ORDER BY k.attnum) FROM pg_attribute k
                   WHERE k.attrelid = c.oid AND k.attnum > 0 AND NOT k.attisdropped))
            FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
           WHERE c.relnamespace = 'milestones'::regnamespace AND c.relkind = 'r'
           GROUP BY c.oid ORDER BY c.oid::regclass::text" > "$tmp/snapshot.sql"
  q $old "SELECT format('SELECT last_value, is_called FROM %s;', c.oid::regclass)
            FROM pg_class c WHERE c.relnamespace = 'milestones'::regnamespace AND c.relkind = 'S'
           ORDER BY c.oid::regclass::text" >> "$tmp/snapshot.sql"
  tables=$(q $old "SELECT count(*) FROM pg_class WHERE relnamespace = 'milestones'::regnamespace AND relkind IN ('r', 'S')")
  is "$(grep -c '^SELECT' "$tmp/snapshot.sql")" "$tables" "[$OLD] the snapshot covers its $tables tables and sequences"
  psql -X -q -A -v ON_ERROR_STOP=1 -d $old -f "$tmp/snapshot.sql" -o "$tmp/before.out"
  ok $? "[$OLD] snapshot before the upgrade"

  # An unknown version: PostgreSQL's own error, nothing changed.
  out=$(q $old "ALTER EXTENSION milestones UPDATE TO '9.9'" 2>&1)
  [[ "$out" == *"has no update path from version \"$OLD\" to version \"9.9\""* ]]
  ok $? "[$OLD] UPDATE TO '9.9' is refused by PostgreSQL"; [ $? -eq 0 ] || diag "$out"
  is "$(version $old)" "$OLD" "[$OLD] ... and the database is still at $OLD"

  # The upgrade itself, timed; the large tables are neither rewritten nor scanned.
  files_before=$(q $old "SELECT pg_relation_filenode('milestones.events') || ' ' || pg_relation_filenode('milestones.ledger_entries')")
  scans_before="$(scans $old events) $(scans $old ledger_entries)"
  t0=$(date +%s%N)
  q $old "ALTER EXTENSION milestones UPDATE" >/dev/null 2>"$tmp/upgrade.err"
  ok $? "[$OLD] ALTER EXTENSION milestones UPDATE"; [ -s "$tmp/upgrade.err" ] && diag "$(head -20 "$tmp/upgrade.err")"
  diag "[$OLD] the upgrade took $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  is "$(version $old)" "$NEW" "[$OLD] the database is at $NEW"
  if [ $OLD = 1.1 ]; then
    is "$(q $old "SELECT pg_relation_filenode('milestones.events') || ' ' || pg_relation_filenode('milestones.ledger_entries')")" \
       "$files_before" "[$OLD] events and ledger_entries were not rewritten"
    is "$(scans $old events) $(scans $old ledger_entries)" "$scans_before" \
       "[$OLD] events and ledger_entries were not read by a sequential scan"
  else
    # The released 1.0 -> 1.1 step validates 1.1's row rules over every row.
    ok 0 "# SKIP [$OLD] the released 1.0 -> 1.1 step reads every row (its row rules); 1.1 -> 1.2 is checked below"
    ok 0 "# SKIP [$OLD] as above"
  fi

  psql -X -q -A -v ON_ERROR_STOP=1 -d $old -f "$tmp/snapshot.sql" -o "$tmp/after.out"
  diff -u "$tmp/before.out" "$tmp/after.out" > "$tmp/rows.diff"
  ok $? "[$OLD] every row of every table and sequence reads the same"
  [ -s "$tmp/rows.diff" ] && diag "$(head -40 "$tmp/rows.diff")"

  if [ -n "$batch" ]; then
    is "$(q $old "SELECT milestones.next_batch('billing', 1000)")" "$batch" \
       "[$OLD] the unfinished batch is handed out again after the upgrade"
    is "$(q $old "SELECT string_agg(event_id::text, ',' ORDER BY event_id) FROM milestones.batch_events($batch)")" \
       "$(cat "$tmp/batch-before")" "[$OLD] ... with the same events"
    q $old "SELECT milestones.finish_batch($batch)" >/dev/null
    offer3 $old 1 >/dev/null
    next=$(q $old "SELECT milestones.next_batch('billing', 1000)")
    is "$(q $old "SELECT count(*) FROM milestones.batch_events($next)")" "1" \
       "[$OLD] once finished, the consumer goes on with the next event only"
  fi

  # The catalog: upgraded == fresh.
  catalog $old > "$tmp/upgraded.cat"
  ok $? "[$OLD] catalog listing of the upgraded database"
  diff -u "$tmp/fresh.cat" "$tmp/upgraded.cat" > "$tmp/catalog.diff"
  ok $? "[$OLD] the upgraded extension has exactly the objects of a fresh $NEW install ($(wc -l < "$tmp/fresh.cat") listing lines)"
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
  is "$(tail -1 <<<"$out")" "completed/finished 500.00 500.00" "[$OLD] the order delivered before the upgrade is finished after it"
  is "$(q $old "SELECT count(*) FROM milestones.check_invariants()")" "0" "[$OLD] check_invariants() is empty after the upgrade and the new actions"

  # The pgTAP suites on an upgraded database.  They expect the empty
  # database a fresh install gives (they count orders and events, and use
  # the default settings), so this one is upgraded from an empty database.
  tapdb=ms_up_tap_${OLD/./}
  db_at $OLD $tapdb
  q $tapdb "ALTER EXTENSION milestones UPDATE; CREATE EXTENSION pgtap" >/dev/null
  is "$(version $tapdb)" "$NEW" "[$OLD] a second database, upgraded from an empty $OLD"
  (cd "$top" && pg_prove -d $tapdb test/sql/*.sql) > "$tmp/tap.log" 2>&1
  ok $? "[$OLD] every pgTAP suite passes on the upgraded database"
  diag "$(grep -E '^Files=' "$tmp/tap.log")"
  grep -E '^(not ok|#   Failed|test/sql/.*(Failed|Dubious))' "$tmp/tap.log" | head -20 | while IFS= read -r l; do diag "$l"; done

  # An upgrade that fails half-way leaves the old version: a clashing object
  # makes one statement of the upgrade fail after earlier ones ran.
  broken=ms_up_broken_${OLD/./}
  db_at $OLD $broken
  catalog $broken > "$tmp/broken-before.cat"
  newfn=$(comm -13 <(q $broken "SELECT p.oid::regprocedure FROM pg_proc p WHERE pronamespace = 'milestones'::regnamespace ORDER BY 1") \
                   <(q $fresh "SELECT p.oid::regprocedure FROM pg_proc p WHERE pronamespace = 'milestones'::regnamespace ORDER BY 1") | tail -1)
  if [ -n "$newfn" ]; then
    q $broken "CREATE FUNCTION $newfn RETURNS void LANGUAGE sql AS 'SELECT NULL::void'" >/dev/null 2>&1 ||
      q $broken "CREATE FUNCTION $newfn RETURNS SETOF record LANGUAGE sql AS 'SELECT NULL::record'" >/dev/null 2>&1
    out=$(q $broken "ALTER EXTENSION milestones UPDATE" 2>&1)
    [ -n "$out" ] && [[ "$out" == *ERROR* ]]
    ok $? "[$OLD] an upgrade that meets a clashing $newfn fails"
    q $broken "DROP FUNCTION $newfn" >/dev/null
  else
    ok 0 "# SKIP [$OLD] the upgrade adds no function to clash with"
  fi
  is "$(version $broken)" "$OLD" "[$OLD] the failed upgrade left the database at $OLD"
  catalog $broken > "$tmp/broken-after.cat"
  diff -u "$tmp/broken-before.cat" "$tmp/broken-after.cat" > "$tmp/broken.diff"
  ok $? "[$OLD] ... with the catalog of $OLD, unchanged"
  [ -s "$tmp/broken.diff" ] && diag "$(head -20 "$tmp/broken.diff")"
  dropdbs $broken $tapdb
done

[ $TAP_FAILED -eq 0 ]
