#!/usr/bin/env bash
# test/shell/81_demo.t - make demo, the README's first command, as a newcomer
# runs it: test/tools/demo makes its own throwaway cluster (pg_cron and
# milestones preloaded), plays sql/story.sql and sql/story_confirmed.sql
# (whose output pg_regress holds to expected/), drains the story's events
# with a durable consumer and drops the cluster.  Here: it exits 0, says
# what it runs, prints the tables a DBA looks at, the books are sound at the
# end of both stories, and every ERROR it prints is a refusal the story
# announces on the line before ("(refused on purpose: ...)") — no more and
# no fewer: an unannounced error is a broken demo, an announced one that no
# longer happens a rule that stopped being enforced.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
cd "$top" || bail "no $top"

out=$(mktemp)
trap 'rm -f "$out"' EXIT

plan 7

# Its own cluster, not the test run's: forget the one we are in.
env -u MILESTONES_IN_CLUSTER -u PGPORT -u PGHOST -u PGDATABASE test/tools/demo >"$out" 2>&1
rc=$?
is "$rc" 0 "test/tools/demo (make demo) exits 0"
[ "$rc" -eq 0 ] || diag "$(tail -30 "$out")"

version=$(sed -n "s/^default_version = '\(.*\)'/\1/p" milestones.control)
grep -qE "^milestones $version on 15\.[0-9]+ .*with pg_cron [0-9]" "$out"
ok $? "says what it runs: milestones $version, PostgreSQL 15, pg_cron"

missing=
for h in '== What a DBA sees: order_status' '== awaiting_response' '== The ledger: every movement a balanced transaction' \
         '== payouts: one per ended order' '== Account balances' '== Event history of the video order' \
         '== milestone_status of the brand kit' '== Production runs the expiry sweep from pg_cron' \
         '== Confirmed mode:' '== charges: one row per attempt' '== refunds' \
         "== The sellers' earnings" "== The provider's settlement report"; do
  grep -qF -- "$h" "$out" || missing="$missing [$h]"
done
is "$missing" "" "prints the tables a DBA looks at, in both stories (order_status, ledger, payouts, balances, events, charges, refunds, earnings, reconciliation)"

# Each "check_invariants(): no rows ..." heading is followed by its result.
sound=$(awk '/^== check_invariants\(\)/ { want = 1; next } want && /^\([0-9]+ rows?\)$/ { print; want = 0 }' "$out" | tr '\n' ' ')
is "$sound" "(0 rows) (0 rows) " "check_invariants() has no rows at the end of each story"

grep -qF "next_batch('payments') is NULL: the consumer has seen every event." "$out"
ok $? "a durable consumer drains every event of the story, as a payment worker does"

# Announced refusals against ERROR lines, in order.
read -r announced errors unannounced <<<"$(awk '
  /^\(two refusals on purpose/ { budget += 2; a += 2; next }
  /^\(refused on purpose/      { budget += 1; a += 1; next }
  /ERROR:/                     { e++; if (budget > 0) budget--; else u++ }
  END { print a + 0, e + 0, u + 0 }' "$out")"
is "$unannounced" 0 "every ERROR it prints is a refusal announced on the line before ($errors errors)"
[ "$unannounced" -eq 0 ] || diag "$(grep -n -B2 'ERROR:' "$out")"
ok "$([ "$announced" -ge 9 ] && [ "$errors" -eq "$announced" ]; echo $?)" \
   "every announced refusal happens: $announced announced, $errors refused"

