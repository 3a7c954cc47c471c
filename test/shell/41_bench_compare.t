#!/usr/bin/env bash
# test/shell/41_bench_compare.t - issue 20: the side-by-side comparison of
# two builds (`make bench BENCH_BASE=<ref>`, test/bench/compare), so that it
# cannot rot.  A quick run compares the committed HEAD (built from git in a
# temporary folder) with this working tree (installed into another): each
# cluster must load its own build's library, every part must print its
# lines (the rounds interleaved base-first then head-first, per build the
# median and spread of lifecycles/s and CPU per lifecycle, the verdict at 1
# and 8 clients, the floor's control, confirmed mode or the line that says
# why it is skipped, the books).  The numbers of a quick run mean nothing;
# the verdict's rule is checked on saved rounds read back
# (BENCH_COMPARE_REPLAY): head slower in every round, faster, and two
# overlapping spreads.
# The comparison makes its own two clusters (fsync on), next to ours.
set -u
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=$tmp/out
err=$tmp/err
num='[0-9]+(\.[0-9]+)?'
spread="$num \[$num-$num\]"

plan 24

# -- a ref that is not a commit: refused before anything is built
BENCH_BASE=no-such-ref-4711 "$top/test/bench/compare" >"$tmp/bad.out" 2>&1
is "$?" 2 "a BENCH_BASE that is no commit: exit status 2"
grep -q 'no-such-ref-4711 is not a commit of this repository' "$tmp/bad.out"
ok $? "... and says which ref"

# -- the real thing, at smoke sizes
BENCH_QUICK=1 BENCH_BASE=HEAD BENCH_CLIENTS="1 8" "$top/test/bench/compare" >"$out" 2>"$err"
rc=$?
is "$rc" 0 "test/bench/compare BENCH_QUICK=1 BENCH_BASE=HEAD exits 0"
[ "$rc" -eq 0 ] || diag "$(tail -30 "$out")" "$(tail -30 "$err")"

sha=$(git -C "$top" rev-parse --short HEAD)
version=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$top/milestones.control")
grep -qE "^base: +$sha \(HEAD: .*\); milestones $version, relay mode relay, library /tmp/milestones-bench-compare\.[^/]+/base-dd/.*/milestones\.so$" "$out"
ok $? "base: HEAD built from git, its own library, the relay serving the bench database"
grep -qE "^head: +working tree at $sha.*; milestones $version, relay mode relay, library /tmp/milestones-bench-compare\.[^/]+/head-dd/.*/milestones\.so$" "$out"
ok $? "head: the working tree, its own library"
grep -qE '^clusters: one per build, the same settings: .*fsync=on.*shared_preload_libraries=pg_cron,milestones, synchronous_commit=on' "$out"
ok $? "one cluster per build, durable commits, pg_cron and milestones preloaded"

r1=$(grep -cE "^round 1/2, (1 client|8 clients), load $num: base floor $num \([0-9]+\) recorded $num \([0-9]+\)( confirmed $num \([0-9]+\))? \| head floor" "$out")
r2=$(grep -cE "^round 2/2, (1 client|8 clients), load $num: head floor $num \([0-9]+\) recorded $num \([0-9]+\)( confirmed $num \([0-9]+\))? \| base floor" "$out")
is "$r1 $r2" "2 2" "rounds interleaved: round 1 base first, round 2 head first, at 1 and 8 clients"

rows=$(grep -cE "^  (1|8) +(base|head) +(recorded|floor) +$spread +$spread$" "$out")
is "$rows" 8 "per build, mode and client count: lifecycles/s and CPU per lifecycle, median [min-max]"
cpu_zero=$(grep -cE "^  (1|8) +(base|head) +recorded +$spread +0(\.0)? \[" "$out")
is "$cpu_zero" 0 "the server's CPU per lifecycle is measured (not 0)"

verdicts=$(grep -cE "^recorded mode head vs base, (1 client|8 clients): $num lifecycles/s \(head $spread, base $spread; per round $num $num\), CPU per lifecycle $num: (within spread|slower|faster)$" "$out")
is "$verdicts" 2 "the verdict, recorded mode head vs base, at 1 and at 8 clients"
grep -qE "^floor head vs base \(.*\): 1 client $num; 8 clients $num$" "$out"
ok $? "the floor's ratio: the clusters' own difference"

# confirmed mode: runs where the build has record_charge, else one line says why not
if grep -qs 'FUNCTION @extschema@\.record_charge' "$top"/sql/1.2/*.sql; then
  conf=$(grep -cE "^confirmed mode \(head\), (1 client|8 clients): $spread lifecycles/s, $num of recorded mode's $spread; CPU $spread us per lifecycle against recorded mode's $spread: [-+][0-9]+ us per lifecycle, [-+][0-9]+ us per milestone \(one more call each\)$" "$out")
  is "$conf" 2 "confirmed mode (this tree has record_charge): lifecycles/s and CPU next to recorded mode's"
else
  grep -qE '^confirmed mode \(head\): skipped: this build has no milestones\.record_charge\(bigint, integer, text, text, text\)' "$out"
  ok $? "confirmed mode (this tree has no record_charge): skipped, with the reason"
fi
grep -qE '^confirmed mode \(base\): (skipped: this build has no milestones\.record_charge|runs confirmed\.pgb)' "$out"
ok $? "confirmed mode of the base: runs or says why not"

books=$(grep -cE "^books \((base|head)\): [0-9]+ orders \([0-9]+ completed in confirmed mode; [0-9]+ not completed: .*\), ledger sums to 0(\.00)?, check_invariants\(\): 0 problems$" "$out")
is "$books" 2 "books of both clusters: ledger sums to 0, check_invariants() empty"

leftover=$(ls -d /tmp/milestones-bench-compare.* 2>/dev/null | while read -r d; do grep -qF "$d" "$out" && echo "$d"; done)
is "$leftover" "" "its temporary folders (builds, clusters) are removed"

# -- the verdict's rule, on saved rounds read back
replay() {   # replay NAME: the output of BENCH_COMPARE_REPLAY on $tmp/NAME
  BENCH_COMPARE_REPLAY="$tmp/$1" "$top/test/bench/compare" 2>&1
}
# head slower in every round at 1 client, faster at 8; at 4 clients the
# head's median is below the base's slowest round, but the base's median is
# within the head's spread
cat > "$tmp/slow" <<'EOF'
round 1/3, 1 client, load 0.50: base recorded 300.0 (1900) | head recorded 250.0 (2300)
round 1/3, 8 clients, load 0.50: base recorded 500.0 (1800) | head recorded 600.0 (1700)
round 1/3, 4 clients, load 0.50: base recorded 300.0 (1900) | head recorded 250.0 (2300)
round 2/3, 1 client, load 0.50: head recorded 255.0 (2250) | base recorded 310.0 (1850)
round 2/3, 8 clients, load 0.50: head recorded 610.0 (1650) | base recorded 520.0 (1790)
round 2/3, 4 clients, load 0.50: head recorded 340.0 (1800) | base recorded 310.0 (1850)
round 3/3, 1 client, load 0.50: base recorded 290.0 (1950) | head recorded 260.0 (2200)
round 3/3, 8 clients, load 0.50: base recorded 510.0 (1810) | head recorded 590.0 (1690)
round 3/3, 4 clients, load 0.50: base recorded 290.0 (1950) | head recorded 255.0 (2200)
EOF
replay slow > "$tmp/slow.out"
grep -qxF "recorded mode head vs base, 1 client: 0.85 lifecycles/s (head 255 [250-260], base 300 [290-310]; per round 0.83 0.82 0.90), CPU per lifecycle 1.18: slower" "$tmp/slow.out"
ok $? "replay: head below the base's slowest round is 'slower' (medians, spread, per-round ratios)"
grep -qE '^recorded mode head vs base, 8 clients: 1\.18 lifecycles/s .*: faster$' "$tmp/slow.out"
ok $? "replay: head above the base's fastest round is 'faster'"
grep -qE '^recorded mode head vs base, 4 clients: 0\.85 lifecycles/s \(head 255 \[250-340\], base 300 \[290-310\];.*: within spread$' "$tmp/slow.out"
ok $? "replay: one median outside the other's spread, but not both: 'within spread'"
[ "$(grep -c '^  [18] ' "$tmp/slow.out")" = 4 ] && ! grep -q '^floor head vs base' "$tmp/slow.out"
ok $? "replay: without floor runs, no floor rows or line"
# mixed: the head's median inside the base's spread; confirmed mode in the head
cat > "$tmp/mixed" <<'EOF'
round 1/2, 1 client, load 3.10: base floor 700.0 (700) recorded 300.0 (1900) | head floor 710.0 (690) recorded 320.0 (1880) confirmed 200.0 (2900)
round 2/2, 1 client, load 2.90: head floor 690.0 (710) recorded 290.0 (1920) confirmed 210.0 (2800) | base floor 705.0 (705) recorded 310.0 (1890)
EOF
replay mixed > "$tmp/mixed.out"
grep -qE '^recorded mode head vs base, 1 client: 1\.00 lifecycles/s \(head 305 \[290-320\], base 305 \[300-310\]; per round 1\.07 0\.94\), CPU per lifecycle 1\.00: within spread$' "$tmp/mixed.out"
ok $? "replay: head's median within the base's spread is 'within spread'"
grep -qxF "confirmed mode (head), 1 client: 205 [200-210] lifecycles/s, 0.67 of recorded mode's 305 [290-320]; CPU 2850 [2800-2900] us per lifecycle against recorded mode's 1900 [1880-1920]: +950 us per lifecycle, +475 us per milestone (one more call each)" "$tmp/mixed.out"
ok $? "replay: confirmed mode's lifecycles/s and CPU next to recorded mode's, the cost per milestone"
grep -qxF "confirmed mode (base): skipped: this build has no milestones.record_charge(bigint, integer, text, text, text)" "$tmp/mixed.out"
ok $? "replay: a build without confirmed runs is said to be skipped"
grep -qxF "floor head vs base (the clusters' own difference; each floor has its build's columns): 1 client 1.00" "$tmp/mixed.out"
ok $? "replay: the floor's ratio"
# nothing to read
echo "no rounds here" > "$tmp/empty"
replay empty > "$tmp/empty.out"
is "$?" 2 "replay of a file without round lines: exit status 2"

diag "$(sed -n '/^== results/,$p' "$out")"
