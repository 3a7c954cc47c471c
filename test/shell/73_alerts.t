#!/usr/bin/env bash
# test/shell/73_alerts.t - the Prometheus alerting rules (SPEC section 13):
# promtool check rules on the file make install placed, promtool test rules
# on test/prometheus/milestones-alerts.test.yml (every alert fires in one
# test and stays silent in another), and nothing left to drift: every
# metric an alert reads is one the queries file makes, every alert has
# both tests, and doc/operations.md names every metric and every alert.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
top=$(cd "$(dirname "$0")/../.." && pwd)

RULES=$(ms_extdir)/milestones/milestones-alerts.yml
QUERIES=$top/prometheus/milestones-queries.yaml
TESTS=$top/test/prometheus/milestones-alerts.test.yml
DOC=$top/doc/operations.md
command -v promtool >/dev/null || bail "promtool is missing (make deps: prometheus)"

plan 11

is "$(cmp -s "$RULES" "$top/prometheus/milestones-alerts.yml" && echo same)" same \
   "make install placed the alerting rules beside the queries file ($RULES)"
out=$(promtool check rules "$RULES" 2>&1); rc=$?
ok $rc "promtool check rules: $(grep -E 'SUCCESS|FAILED' <<<"$out" | head -1 | sed 's/^ *//')"
[ $rc -eq 0 ] || diag "$out"
out=$(cd "$(dirname "$TESTS")" && promtool test rules "$(basename "$TESTS")" 2>&1); rc=$?
ok $rc "promtool test rules: every unit test passes"
[ $rc -eq 0 ] || diag "$out"

# The alerts, and the metric names the queries file makes: <key>_<column>
# for every column that is not a LABEL.
alerts=$(sed -n 's/^ *- alert: *//p' "$top/prometheus/milestones-alerts.yml" | sort)
metrics=$(awk '
  /^[a-z_]+:[[:space:]]*$/ { ns = $1; sub(/:.*/, "", ns); next }
  /^    - [a-z_]+:[[:space:]]*$/ { col = $2; sub(/:.*/, "", col); next }
  /^        usage:/ { if ($2 !~ /LABEL/) print ns "_" col }
' "$QUERIES" | sort)
diag "$(wc -l <<<"$alerts") alerts, $(wc -l <<<"$metrics") metrics"
used=$(awk '/^ *expr:/ { e = 1 } /^ *(for|labels):/ { e = 0 } e' "$top/prometheus/milestones-alerts.yml" \
       | grep -oE 'milestones_[a-z_]+' | sort -u)
is "$(comm -23 <(echo "$used") <(echo "$metrics") | tr '\n' ' ')" "" \
   "every milestones_* metric an alert reads is made by the queries file"
is "$(for a in $alerts; do
        fires=$(awk -v a="$a" '$1 == "alertname:" && $2 == a { f = 1 } f && /exp_labels:/ { print "y"; exit } /^  - name:/ { f = 0 }' "$TESTS")
        silent=$(awk -v a="$a" '$1 == "alertname:" && $2 == a { getline; if ($0 ~ /exp_alerts: \[\]/) { print "y"; exit } }' "$TESTS")
        [ "$fires" = y ] && [ "$silent" = y ] || echo "$a"
      done | tr '\n' ' ')" "" \
   "every alert has a test where it fires and one where it stays silent"
is "$(grep -c '^  - name:' "$TESTS")" "$(( 2 * $(wc -l <<<"$alerts") ))" "two test cases per alert"
is "$(for m in $metrics; do grep -qF "\`$m\`" "$DOC" || echo "$m"; done | tr '\n' ' ')" "" \
   "doc/operations.md describes every metric"
is "$(for a in $alerts; do grep -qF "\`$a\`" "$DOC" || echo "$a"; done | tr '\n' ' ')" "" \
   "doc/operations.md says what to do for every alert"

named=$(grep -oE '`milestones_[^`]*`' "$DOC" | tr -d '`' | grep -v '[*]' | sed 's/[{ ].*//' \
        | grep -vE '^milestones_(app|support|reader|payments|)$' | sort -u)
is "$(comm -23 <(echo "$named") <(echo "$metrics") | tr '\n' ' ')" "" \
   "every metric doc/operations.md names exists"
is "$(comm -23 <(grep -oE 'Milestones[A-Z][A-Za-z]+' "$DOC" | sort -u) <(echo "$alerts") | tr '\n' ' ')" "" \
   "every alert doc/operations.md names exists"

# The test can fail: a rule changed on purpose makes promtool test rules fail.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/prometheus" "$tmp/test/prometheus"
sed 's/milestones_relay_up{mode="relay"} == 0/milestones_relay_up == 0/' "$top/prometheus/milestones-alerts.yml" > "$tmp/prometheus/milestones-alerts.yml"
cp "$TESTS" "$tmp/test/prometheus/"
(cd "$tmp/test/prometheus" && promtool test rules "$(basename "$TESTS")" >/dev/null 2>&1)
is $? 1 "a relay-down rule that forgets the mode fires on a standby, and the unit tests catch it"

exit $(( TAP_FAILED > 0 ))
