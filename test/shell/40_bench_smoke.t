#!/usr/bin/env bash
# test/shell/40_bench_smoke.t - issue 6: a smoke run of the benchmark
# (`make bench`, test/bench/run) in its quick mode, so that it cannot rot.
# The numbers of a quick run mean nothing; this only checks that every part
# ran and printed them: the API/floor table, the per-call latencies, the
# profile, the sweep, the memory samples, and the ratio as the last line.
# The benchmark makes its own throwaway cluster (fsync on), next to ours.
set -u
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

out=$(mktemp)
err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT

plan 9
num='[0-9]+(\.[0-9]+)?'

BENCH_QUICK=1 BENCH_CLIENTS="1 8" "$top/test/bench/run" >"$out" 2>"$err"
rc=$?
is "$rc" 0 "test/bench/run in quick mode exits 0"
[ "$rc" -eq 0 ] || diag "$(tail -30 "$out")" "$(grep -v '^20[0-9][0-9]-' "$err" | tail -30)"

grep -qE "^machine: [0-9]+ CPUs, .+, $num GiB RAM$" "$out"
ok $? "prints the machine (CPUs, model, memory)"

grep -qE '^server: .*fsync=on, synchronous_commit=on' "$out"
ok $? "runs with durable commits (fsync=on) and says so"

rows=$(grep -cE "^  (1|8|8\*|8\*\*) +$num +$num +$num$" "$out")
is "$rows" 4 "API and floor lifecycles/s and their ratio at 1 and 8 clients (and 8 with synchronous_commit=off, and with notify off)"

lat=$(grep -cE "^  (create_offer|place_order|deliver_1|accept_1|deliver_2|accept_final)( +$num / $num){4}$" "$out")
is "$lat" 6 "p50 / p99 latency of each of the 6 calls, per client count and for the floor"

# (The API's deferred check no longer runs _order_problems() since issue 10:
# the C engine's writes are checked from the guard's facts.)
grep -qE '^ place_order +\|' "$out"
ok $? "profile: self time per function (track_functions) includes the API functions"

grep -qE "^sweep: expire_overdue of 100 overdue among 1000: $num ms; among 10000: $num ms; ratio $num " "$out"
ok $? "sweep: both times and their ratio"

grep -qE "^memory: backend RssAnon [0-9]+ kB after 600 calls -> [0-9]+ kB after 1200 calls" "$out"
ok $? "memory: RSS of one backend at the start and the end"

# (pg_virtualenv itself prints "Dropping cluster ..." after us)
last=$(grep -vE '^(Creating new|Dropping) ' "$out" | tail -1)
[[ "$last" =~ ^ratio\ API/floor\ at\ 8\ clients:\ $num\  ]]
ok $? "the API/floor ratio is printed last"
diag "$last"
