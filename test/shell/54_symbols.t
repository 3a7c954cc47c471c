#!/usr/bin/env bash
# test/shell/54_symbols.t - the library exports only what PostgreSQL looks
# up by name (issue 19).
#
# PostgreSQL loads extension libraries with RTLD_GLOBAL: any global symbol
# of milestones.so (a helper named CheckInit, JsonAddKey ...) could
# interpose on, or be interposed by, another library's symbol of the same
# name.  Built with -fvisibility=hidden (Makefile, src/milestones.h), the
# dynamic symbol table holds exactly:
#   - every C function an install or upgrade script names
#     (AS 'MODULE_PATHNAME', 'milestones_...'), of every version, since the
#     library serves databases at 1.0 and 1.1 too, and its pg_finfo_ record;
#   - _PG_init, Pg_magic_func and the relay's entry point
#     milestones_relay_main (bgw_function_name).
set -uo pipefail
. "$(dirname "$0")/lib.sh"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
plan 4

so="$(ms_libdir)/milestones.so"
[ -f "$so" ]
ok $? "the installed library is at $so"

nm -D --defined-only "$so" | awk '{print $3}' | sort -u > "$tmp/exported"
cat "$(ms_extdir)"/milestones--*.sql | grep -o "'MODULE_PATHNAME', *'[a-z_0-9]*'" \
  | sed "s/.*, *'\(.*\)'/\1/" | sort -u > "$tmp/sqlnames"
{ cat "$tmp/sqlnames"; sed 's/^/pg_finfo_/' "$tmp/sqlnames"; printf '%s\n' _PG_init Pg_magic_func milestones_relay_main; } \
  | sort -u > "$tmp/expected"
[ "$(wc -l < "$tmp/sqlnames")" -ge 20 ]
ok $? "the scripts name $(wc -l < "$tmp/sqlnames") C functions"

extra=$(comm -23 "$tmp/exported" "$tmp/expected" | tr '\n' ' ')
is "$extra" "" "nothing else is exported ($(wc -l < "$tmp/exported") symbols)"
missing=$(comm -13 "$tmp/exported" "$tmp/expected" | tr '\n' ' ')
is "$missing" "" "every function a script names, its pg_finfo_ record, _PG_init, Pg_magic_func and the relay's entry point are exported"

[ $TAP_FAILED -eq 0 ]
