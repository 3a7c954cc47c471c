#!/usr/bin/env bash
# test/shell/53_installcheck_plain.t - make installcheck against a server
# that is not set up for the tests (issue 9).
#
# A DBA runs make installcheck against the server they have: pg_cron not
# preloaded, pgTAP perhaps not installed.  This starts a second, plain
# cluster (pg_virtualenv with no options, in a folder of its own as
# pg_buildext runs it, on a free port of its choosing; the PG* variables
# of the test cluster are cleared) and runs the
# pg_regress suites there with the extension make install placed.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

top=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

plan 4

# The suites ask for nothing but the extension: no pgTAP, no pg_cron.
opts=$(make -s -C "$top" -n installcheck 2>/dev/null | grep pg_regress)
[ -n "$opts" ] && ! grep -qE 'load-extension|temp-config|pg_cron|pgtap' <<<"$opts"
ok $? "make installcheck loads no other extension and no configuration"; [ -n "$opts" ] || diag "no pg_regress command in make -n installcheck"

t0=$(date +%s)
env -u PGHOST -u PGPORT -u PGDATABASE -u PGUSER -u PGPASSWORD -u PGSYSCONFDIR -u PG_CLUSTER_CONF_ROOT \
  pg_virtualenv -t "${MS_VENV_OPTS[@]}" -v "$(pg_config --version | sed 's/^PostgreSQL \([0-9]*\).*/\1/')" \
  sh -c 'echo "preload=[$(psql -X -A -t -c "SHOW shared_preload_libraries")] port=$PGPORT"; make -C "$0" installcheck' "$top" \
  > "$tmp/run.log" 2>&1
rc=$?
diag "the plain cluster and the suites took $(( $(date +%s) - t0 )) s ($(grep -o 'port=[0-9]*' "$tmp/run.log"))"
is "$(grep -o 'preload=\[[^]]*\]' "$tmp/run.log")" "preload=[]" "the second cluster preloads nothing (no pg_cron)"
ok $rc "make installcheck passes there"; [ $rc -eq 0 ] || diag "$(tail -30 "$tmp/run.log")" "$(head -60 "$top/regression.diffs" 2>/dev/null)"
n=$(grep -cE '^(ok|test) .*\.\.\. ok' "$tmp/run.log")
is "$n" "$(ls "$top"/sql/*.sql | grep -vc 'milestones--')" "every pg_regress suite ran and passed ($n)"

[ $TAP_FAILED -eq 0 ]
