#!/usr/bin/env bash
# test/shell/40_bench_smoke.t - issue 6: a smoke run of the benchmark
# (`make bench`, test/bench/run) in its quick mode, so that it cannot rot.
# The numbers of a quick run mean nothing; this only checks that every part
# ran and printed them: the API/floor table, the per-call latencies, the
# live listener's counts and lag, the CPU per call, the profile, the sweep,
# the memory samples, and the targets block last.  One thing it does hold
# even at smoke sizes: every event written reaches the listener, once.
# The benchmark makes its own throwaway cluster (fsync on), next to ours.
set -u
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

out=$(mktemp)
err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT

plan 22
num='[0-9]+(\.[0-9]+)?'

BENCH_QUICK=1 BENCH_CLIENTS="1 8" "$top/test/bench/run" >"$out" 2>"$err"
rc=$?
is "$rc" 0 "test/bench/run in quick mode exits 0"
[ "$rc" -eq 0 ] || diag "$(tail -30 "$out")" "$(grep -v '^20[0-9][0-9]-' "$err" | tail -30)"

grep -qE "^machine: [0-9]+ CPUs, .+, $num GiB RAM$" "$out"
ok $? "prints the machine (CPUs, model, memory)"

grep -qE '^server: .*fsync=on, synchronous_commit=on' "$out"
ok $? "runs with durable commits (fsync=on) and says so"

# The build under test: make test's (MILESTONES_DESTDIR's) when set, not
# whatever the server's own folders hold.
lib=$(sed -n 's/^build: *milestones [0-9.]*, library \(.*\)$/\1/p' "$out")
is "$lib" "$(ms_libdir)/milestones.so" "runs the build under test (its library: ${lib:-none printed})"

rows=$(grep -cE "^  (1|8|8\*|8\*\*) +$num +$num +$num$" "$out")
is "$rows" 4 "API and floor lifecycles/s and their ratio at 1 and 8 clients (and 8 with synchronous_commit=off, and with notify off)"

lat=$(grep -cE "^  (create_offer|place_order|deliver_1|accept_1|deliver_2|accept_final)( +$num / $num){4}$" "$out")
is "$lat" 6 "p50 / p99 latency of each of the 6 calls, per client count and for the floor"

chk=$(grep -cE "^  (API, every check|without the foreign keys' checks|without the commit check|without the events trigger \(relay wake-up\)|without the row rules|without all of these and the guard) +$num +$num +[-+][0-9]+%$" "$out")
is "$chk" 6 "what each check costs: API/floor with every check and with each kind of check switched off"

# notifications: the listener got every event the API runs wrote, once
read -r written received <<<"$(sed -nE 's/^notifications: ([0-9]+) events written, ([0-9]+) notifications received.*/\1 \2/p' "$out")"
ok "$([ -n "$written" ] && [ "$written" -gt 0 ] && [ "$written" = "$received" ]; echo $?)" \
  "live listener: events written = notifications received (${written:-?} / ${received:-?})"
grep -qE '^notifications: .*\(([0-9]+) distinct; 0 missing, 0 duplicates, 0 outside the runs\)' "$out"
ok $? "live listener: nothing missing, nothing twice"
grep -qE "^lag, commit of the events row -> arrival at the listener, ms: p50 $num, p99 $num, max $num" "$out"
ok $? "notification lag p50 / p99 from commit timestamps"

cpu=$(grep -cE "^  (create_offer|place_order|deliver|accept \(next\)|deliver \(2\)|accept \(final\)) +$num +$num +$num +$num +$num$" "$out")
is "$cpu" 6 "CPU and wall us per call, API and floor, for each of the 6 lifecycle calls"
more=$(grep -cE "^  (request_revision|stop|cancel|empty call) +$num +$num$" "$out")
is "$more" 4 "CPU per call also for request_revision, stop, cancel and an empty call"

# (The API's deferred check no longer runs _order_problems() since issue 10:
# the C engine's writes are checked from the guard's facts.)
grep -qE '^ place_order +\|' "$out"
ok $? "profile: self time per function (track_functions) includes the API functions"
grep -qE '^-- SQL statements run inside the functions' "$out" &&
  awk '/^-- SQL statements run inside/ { on = 1; next } on && /^ +[0-9.]+ +\| +[0-9]+ +\|/ { found = 1 } /^-- perf/ { on = 0 } END { exit !found }' "$out"
ok $? "profile: nested SQL statements with time per call"
grep -qE '^-- perf: ' "$out"
ok $? "profile: perf part ran (samples, or says why it was skipped)"

grep -qE "^sweep: expire_overdue of 100 overdue among 1000: $num ms; among 10000: $num ms; ratio $num " "$out"
ok $? "sweep: both times and their ratio"

grep -qE "^clearance: clear_earnings of 100 due among 1000: $num ms; among 10000: $num ms; ratio $num " "$out"
ok $? "clearance: both times and their ratio (test/bench/clearance)"

grep -qE "^memory: backend RssAnon [0-9]+ kB after 600 calls -> [0-9]+ kB after 1200 calls" "$out"
ok $? "memory: RSS of one backend at the start and the end"

bl=$(grep -E '^backlog: 20000 events: ' "$out")
echo "$bl" | grep -qE "^backlog: 20000 events: relay $num s \($num us/event\), RssAnon \+[0-9]+ MB \(peak [0-9]+ kB\), VmRSS peak [0-9]+ kB; listener [0-9]+/[0-9]+, 0 duplicates; consumer $num s \($num us/event\), RssAnon \+[0-9]+ MB$"
shape=$?
read -r bl_got bl_written <<<"$(echo "$bl" | sed -nE 's/.*; listener ([0-9]+)\/([0-9]+), .*/\1 \2/p')"
ok "$([ "$shape" -eq 0 ] && [ -n "$bl_got" ] && [ "$bl_got" = "$bl_written" ]; echo $?)" \
  "backlog: the relay and the consumer caught up 20,000 events (time, memory), the listener got each once (${bl_got:-?} / ${bl_written:-?})"
grep -qE "^backlog: time per event from 5000 to 20000 events: relay $num -> $num us \(x$num\), consumer $num -> $num us \(x$num\)$" "$out"
ok $? "backlog: time per event at both sizes"

targets=$(grep -cE '^  (API/floor >= 0.6 at|p99 of every call < 5 ms|every event reaches the listener|notification lag p99 < 100 ms|backend memory flat|sweep ratio|clearance ratio|relay memory after a backlog|backlog catch-up linear).* (met|NOT met)$' "$out")
is "$targets" 10 "targets block: the 7 targets of issue 10, the 2 of issue 19 and the clearance ratio of issue 21, each met or NOT met"

# (pg_virtualenv itself prints "Dropping cluster ..." after us)
last=$(grep -vE '^(Creating new|Dropping) ' "$out" | tail -1)
[[ "$last" =~ ^targets:\ ([0-9]|10)\ of\ 10\ met$ ]]
ok $? "the count of targets met is printed last"
diag "$(sed -n '/^== targets/,$p' "$out" | grep -vE '^(Creating new|Dropping) ')"
