#!/usr/bin/env bash
# test/shell/55_plan_costs.t - no statement of the API is costed high
# enough for JIT compilation.
#
# PostgreSQL compiles a plan whose estimated cost passes jit_above_cost
# (100,000 by default) with LLVM: some 100-500 ms per statement, for a
# statement that runs in a millisecond.  The engine's statements touch a
# handful of rows, but a careless shape can be costed in millions: a join
# of data-modifying CTEs, each estimated from a table never analyzed
# (milestones.settings holds one row; the planner guesses 490 for a table
# that was never analyzed), multiplies their guesses.  This suite plays
# the stories of every order state in recorded and confirmed payment mode
# in a fresh database (nothing analyzed: the worst case) with auto_explain
# printing every plan, nested ones included, and lists each statement
# whose estimated cost passes jit_above_cost.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

DB=ms_plan_costs_$$
tmp=$(mktemp -d)
trap 'dropdbs "$DB"; rm -rf "$tmp"' EXIT
plan 8

limit=$(q postgres "SHOW jit_above_cost")
# plans FILE SQL...: run SQL in $DB with auto_explain printing every plan as a NOTICE.
plans() {
  local out=$1; shift
  { echo "LOAD 'auto_explain';
          SET auto_explain.log_min_duration = 0;
          SET auto_explain.log_nested_statements = on;
          SET auto_explain.log_level = notice;
          SET client_min_messages = notice;"
    cat "$@" | sed 's/^SET client_min_messages = warning;$//'
  } | psql -X -d "$DB" >"$out" 2>&1
}
# costly FILE: "cost :: statement" of each plan over $limit, once per statement.
costly() {
  python3 - "$1" "$limit" <<'PY'
import re, sys
limit = float(sys.argv[2]); q = None; seen = {}
for line in open(sys.argv[1], errors='replace'):
    if 'Query Text:' in line:
        q = ' '.join(line.split('Query Text:', 1)[1].split())[:300]
        continue
    m = re.search(r'cost=[0-9.]+\.\.([0-9.]+)', line)
    if m and q is not None and float(m.group(1)) > limit and q not in seen:
        seen[q] = float(m.group(1))
for q, c in sorted(seen.items(), key=lambda x: -x[1]):
    print('%d :: %s' % (c, q))
PY
}
count_plans() { grep -c 'Query Text:' "$1"; }

newdb "$DB"
every_state_sql > "$tmp/every.sql"
confirmed_state_sql > "$tmp/confirmed.sql"
plans "$tmp/states.out" "$tmp/every.sql" "$tmp/confirmed.sql"
n=$(count_plans "$tmp/states.out")
ok "$([ "$n" -gt 200 ] && ! grep -q 'ERROR' "$tmp/states.out"; echo $?)" \
   "orders in every state, recorded and confirmed mode: $n plans printed, no error"
over=$(costly "$tmp/states.out")
is "$over" "" "... none costed over jit_above_cost ($limit)"

dropdbs "$DB"
createdb "$DB" || bail "createdb $DB failed"
top=$(cd "$(dirname "$0")/../.." && pwd)
plans "$tmp/stories.out" "$top/sql/story.sql" "$top/sql/story_confirmed.sql"
n=$(count_plans "$tmp/stories.out")
ok "$([ "$n" -gt 300 ]; echo $?)" "the demo's stories (sql/story.sql, sql/story_confirmed.sql): $n plans printed"
over=$(costly "$tmp/stories.out")
is "$over" "" "... none costed over jit_above_cost ($limit): earnings, withdrawals, reconcile, the sweep included"

# No call of a confirmed-mode lifecycle reads a table whole: among 2,000
# finished confirmed orders (6,000 charge attempts, never analyzed, as a
# busy table between two autovacuum runs), one more lifecycle with every
# plan's actual row counts; a plan node that produced or filtered away
# 1,000 rows or more is listed (every statement of an order action touches
# a handful).  A late success was once summed with a filter on the whole
# of charge_attempts, 1.4 ms an action at this size and growing.
dropdbs "$DB"
createdb "$DB" || bail "createdb $DB failed"
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<'SQL' || bail "cannot load 2,000 confirmed orders"
CREATE EXTENSION milestones;
SELECT milestones.set_category_eligibility('bench', true);
SELECT milestones.set_seller_eligibility(s, true) FROM generate_series(1, 10) s;
SELECT milestones.set_setting('payment_mode', 'confirmed');
CREATE PROCEDURE public.lifecycles(n integer) LANGUAGE plpgsql AS $$
DECLARE o bigint; r milestones.order_status;
BEGIN
  FOR i IN 1..n LOOP
    o := milestones.create_offer(1 + i % 10, 1000 + i, 'bench',
           '[{"name":"Design","days":5,"amount":"60.00"},{"name":"Build","days":10,"amount":"90.00"}]'); COMMIT;
    r := milestones.place_order(o, 1000 + i); COMMIT;
    IF i % 3 = 0 THEN             -- a declined card and the retry: more attempts
      PERFORM milestones.record_charge(r.charge_id, 1, 'failed', NULL, 'card declined'); COMMIT;
      PERFORM milestones.retry_charge(o, 1000 + i); COMMIT;
      PERFORM milestones.record_charge(r.charge_id, 2, 'succeeded', 'pi_' || r.charge_id || '_2'); COMMIT;
    ELSE
      PERFORM milestones.record_charge(r.charge_id, 1, 'succeeded', 'pi_' || r.charge_id); COMMIT;
    END IF;
    PERFORM milestones.deliver(o, 1 + i % 10); COMMIT;
    r := milestones.accept(o, 1000 + i); COMMIT;
    PERFORM milestones.record_charge(r.charge_id, 1, 'succeeded', 'pi_' || r.charge_id); COMMIT;
    PERFORM milestones.deliver(o, 1 + i % 10); COMMIT;
    PERFORM milestones.accept(o, 1000 + i); COMMIT;
  END LOOP;
END $$;
CALL public.lifecycles(2000);
SQL
cat > "$tmp/one.sql" <<'SQL'
SET auto_explain.log_analyze = on;
SET auto_explain.log_timing = off;
SELECT milestones.create_offer(1, 99999, 'bench', '[{"name":"Design","days":5,"amount":"60.00"},{"name":"Build","days":10,"amount":"90.00"}]') AS order_id \gset
SELECT charge_id FROM milestones.place_order(:order_id, 99999) \gset
SELECT state FROM milestones.record_charge(:charge_id, 1, 'failed', NULL, 'card declined');
SELECT state FROM milestones.retry_charge(:order_id, 99999);
SELECT state FROM milestones.record_charge(:charge_id, 2, 'succeeded', 'pi_one');
SELECT state FROM milestones.deliver(:order_id, 1);
SELECT charge_id FROM milestones.accept(:order_id, 99999) \gset
SELECT state FROM milestones.record_charge(:charge_id, 1, 'succeeded', 'pi_two');
SELECT state FROM milestones.deliver(:order_id, 1);
SELECT state, reason FROM milestones.accept(:order_id, 99999);
SQL
plans "$tmp/one.out" "$tmp/one.sql"
# wide FILE: "rows :: node :: statement" of each plan node that produced, or
# removed by a filter, 1,000 rows or more (times its loops).
wide() {
  python3 - "$1" <<'PY'
import re, sys
q = None; node = None; loops = 1; out = []
for line in open(sys.argv[1], errors='replace'):
    if 'Query Text:' in line:
        q = ' '.join(line.split('Query Text:', 1)[1].split())[:200]
        continue
    m = re.search(r'(\S[^(]*?)\s+\(cost=.*actual (?:time=\S+ )?rows=(\d+) loops=(\d+)\)', line)
    if m:
        node = m.group(1).replace('->', '').strip(); loops = int(m.group(3))
        n = int(m.group(2)) * loops
        if n >= 1000:
            out.append('%d rows :: %s :: %s' % (n, node, q))
        continue
    m = re.search(r'Rows Removed by (?:Filter|Index Recheck|Join Filter): (\d+)', line)
    if m and node is not None and int(m.group(1)) * loops >= 1000:
        out.append('%d removed :: %s :: %s' % (int(m.group(1)) * loops, node, q))
for l in dict.fromkeys(out):
    print(l)
PY
}
n=$(count_plans "$tmp/one.out")
ok "$([ "$n" -gt 30 ] && grep -q 'completed | finished' "$tmp/one.out" && ! grep -q 'ERROR' "$tmp/one.out"; echo $?)" \
   "one more confirmed lifecycle among 2,000 (a declined card, a retry, two successes): $n plans with actual rows"
is "$(wide "$tmp/one.out")" "" "... no plan node of it produced or filtered away 1,000 rows or more"

# The check itself sees a costly plan: a join of two guesses of settings' size.
q "$DB" "CREATE TABLE public.guess AS SELECT * FROM milestones.settings WITH NO DATA" >/dev/null
echo "SELECT count(*) FROM public.guess a, public.guess b, public.guess c;" > "$tmp/costly.sql"
plans "$tmp/costly.out" "$tmp/costly.sql"
ok "$([ -n "$(costly "$tmp/costly.out")" ]; echo $?)" "a cross join of unanalyzed tables is listed (the check can fail)"
echo "SELECT count(*) FROM milestones.charge_attempts WHERE provider_ref = 'none';" > "$tmp/wide.sql"
plans "$tmp/wide.out" <(echo "SET auto_explain.log_analyze = on;") "$tmp/wide.sql"
ok "$([ -n "$(wide "$tmp/wide.out")" ]; echo $?)" "a filter over the whole of charge_attempts is listed (the check can fail)"

[ $TAP_FAILED -eq 0 ]
