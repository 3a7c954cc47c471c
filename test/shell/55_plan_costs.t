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
plan 5

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

# The check itself sees a costly plan: a join of two guesses of settings' size.
q "$DB" "CREATE TABLE public.guess AS SELECT * FROM milestones.settings WITH NO DATA" >/dev/null
echo "SELECT count(*) FROM public.guess a, public.guess b, public.guess c;" > "$tmp/costly.sql"
plans "$tmp/costly.out" "$tmp/costly.sql"
ok "$([ -n "$(costly "$tmp/costly.out")" ]; echo $?)" "a cross join of unanalyzed tables is listed (the check can fail)"

[ $TAP_FAILED -eq 0 ]
