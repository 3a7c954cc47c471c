#!/usr/bin/env bash
# test/shell/33_fuzz_smoke.t - a short bounded SQLsmith pass (issue 5).
#
# The CI share of "make fuzz": test/fuzz/run-fuzz for at most
# FUZZ_SMOKE_QUERIES queries (default 4000) or FUZZ_SMOKE_SECONDS seconds
# (default 25) in the runner's cluster; fails if the server crashed.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

plan 3
queries=${FUZZ_SMOKE_QUERIES:-4000}
seconds=${FUZZ_SMOKE_SECONDS:-25}
seed=${FUZZ_SEED:-$(date +%s)}
if ! command -v sqlsmith >/dev/null; then
  ok 1 "sqlsmith is installed (test/tools/ensure-deps installs it)"
  ok 0 "# SKIP no sqlsmith"; ok 0 "# SKIP no sqlsmith"
  exit 1
fi
ok 0 "sqlsmith is installed"
out=$(FUZZ_DB=ms_fuzz_smoke "$(dirname "$0")/../fuzz/run-fuzz" "$queries" "$seconds" "$seed" 2>&1)
status=$?
diag "$(grep -vE '^fuzz:   [0-9]+	' <<<"$out")"
ran=$(grep -oE 'queries_run=[0-9]+' <<<"$out" | tail -1 | cut -d= -f2)
ok $([ "${ran:-0}" -gt 0 ]; echo $?) "sqlsmith ran ${ran:-0} queries (seed $seed, bound $queries queries / ${seconds}s)"
ok $status "the server never crashed (no signal, no restart)"
[ $TAP_FAILED -eq 0 ]
