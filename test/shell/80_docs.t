#!/usr/bin/env bash
# test/shell/80_docs.t - issue 23: docs that cannot drift.
#
# test/tools/check-docs holds the documentation to the extension:
#   - doc/milestones.md, the reference, against the catalog of a fresh
#     database: every function and view of schema milestones (but the _
#     helpers) has an entry with the catalog's signature or columns, every
#     GUC and role is listed, and every entry exists;
#   - every runnable example of README.md and doc/*.md runs, in one session
#     per file, and prints what the page shows; every event the examples
#     wrote is in the reference's events table with its detail keys;
#   - every relative link of README.md, CHANGELOG.md and doc/*.md resolves.
# Then it shows the checks can fail: a copy of the reference without an
# entry, with a changed signature or without a view's column; a copy of the
# README with a changed result or a failing example; an event key left out
# of the reference; broken links.  Each must be reported, with its file and
# line.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
cd "$top" || bail "no $top"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
check=test/tools/check-docs

# --- the docs as they are ------------------------------------------------

out=$($check reference 2>&1)
ok $? "doc/milestones.md has every function, view, GUC and role of the extension as the catalog has them, and nothing else"
diag "$out"

files=$($check list README.md doc/*.md)
grep -qx README.md <<<"$files" && grep -qx doc/milestones.md <<<"$files"
ok $? "README.md and doc/milestones.md hold runnable examples (the worked example, the reference's)"

for f in $files; do
  out=$($check examples "$f" 2>&1)
  ok $? "$f: every runnable example runs and prints what the page shows"
  diag "$out"
done

out=$($check links README.md CHANGELOG.md doc/*.md 2>&1)
ok $? "every relative link of README.md, CHANGELOG.md and doc/*.md resolves"
diag "$out"

lines=$(wc -l < README.md)
[ "$lines" -le 260 ]
ok $? "README.md stays short: $lines lines (at most 260; the rest belongs in doc/)"
grep -q 'make demo' README.md && grep -q 'make test' README.md
ok $? "README.md gives the two commands, make demo and make test"

# --- the checks can fail -------------------------------------------------

# expect_fail DESCRIPTION PATTERN COMMAND...: the command fails and says PATTERN.
expect_fail() {
  local desc=$1 pattern=$2 out rc
  shift 2
  out=$("$@" 2>&1)
  rc=$?
  [ $rc -ne 0 ] && grep -qE -- "$pattern" <<<"$out"
  ok $? "$desc"
  [ $rc -ne 0 ] && grep -qE -- "$pattern" <<<"$out" || diag "exit $rc, wanted /$pattern/ in:" "$out"
}

# An entry removed: the accept entry's signature block.
perl -0pe 's/```sql signature\nmilestones\.accept\(.*?```\n//s' doc/milestones.md > "$tmp/no-accept.md"
cmp -s doc/milestones.md "$tmp/no-accept.md" && bail "could not remove accept's entry from a copy of the reference"
expect_fail "a reference without the entry of accept fails, and prints the signature to paste" \
  'function accept has no entry.*' $check reference --reference "$tmp/no-accept.md"
expect_fail "... the printed block is the catalog's signature" \
  'milestones\.accept\(order_id bigint, buyer_id bigint, idempotency_key text DEFAULT NULL::text\) -> milestones\.order_status' \
  $check reference --reference "$tmp/no-accept.md"

# A signature that differs from the catalog's.
perl -pe 's/^milestones\.stop\(order_id bigint,/milestones.stop(order_id integer,/' doc/milestones.md > "$tmp/bad-sig.md"
expect_fail "a signature that differs from the catalog's fails, showing both" \
  'the signature of stop differs' $check reference --reference "$tmp/bad-sig.md"

# A function that does not exist.
printf '\n### frobnicate\n\n```sql signature\nmilestones.frobnicate(order_id bigint) -> void\n```\n' \
  | cat doc/milestones.md - > "$tmp/extra.md"
expect_fail "an entry for a function the extension does not have fails, with its line" \
  "extra\.md:[0-9]+: frobnicate is documented but the extension has no such function" \
  $check reference --reference "$tmp/extra.md"

# A view's column left out.
perl -ne 'print unless /^\| `respond_by` \| timestamp with time zone \| the buyer.s deadline on its delivery \|/' \
  doc/milestones.md > "$tmp/no-column.md"
cmp -s doc/milestones.md "$tmp/no-column.md" && bail "could not remove a column of order_status from a copy of the reference"
expect_fail "a view whose column list differs from the catalog's fails, with a diff" \
  'the columns of view order_status differ' $check reference --reference "$tmp/no-column.md"

# A shown result changed: the first line of the first result the README shows.
perl -e '
  my @l = <STDIN>; my ($run, $done);
  for my $i (0 .. $#l) {
    $run = 1 if $l[$i] =~ /^```sql runnable/;
    if ($run && !$done && $l[$i] =~ /^```text/ && $l[$i + 1] !~ /^```/) { $l[$i + 1] =~ s/$/ (changed)/; $done = 1 }
  }
  print @l;' < README.md > "$tmp/README.md"
cmp -s README.md "$tmp/README.md" && bail "could not change a shown result in a copy of the README"
expect_fail "a README whose shown result differs from what psql prints fails, naming the file and line" \
  'README\.md:[0-9]+: what psql prints differs from the result shown at line [0-9]+' $check examples "$tmp/README.md"
expect_fail "... and shows the difference" '^  -.*\(changed\)$' $check examples "$tmp/README.md"

# An example that fails (an order that does not exist).
perl -pe 's/milestones\.place_order\(:order_id, 201\)/milestones.place_order(:order_id + 1000, 201)/' README.md > "$tmp/README.md"
cmp -s README.md "$tmp/README.md" && bail "could not break an example in a copy of the README"
expect_fail "an example that fails is reported with its line and the error" \
  'README\.md:[0-9]+: what psql prints differs|ERROR:  order [0-9]+ does not exist' $check examples "$tmp/README.md"

# An event detail key the reference does not list.
perl -pe 's/^(\| `stopped` \| buyer \| )`payout`, `skipped`/$1`payout`/' doc/milestones.md > "$tmp/no-key.md"
cmp -s doc/milestones.md "$tmp/no-key.md" && bail "could not drop a detail key of stopped from a copy of the reference"
expect_fail "an event written by the examples with a detail key the reference does not list fails" \
  "event 'stopped' carried detail keys that .*no-key\.md:[0-9]+ does not list: skipped" \
  $check examples --reference "$tmp/no-key.md" README.md

# Broken links: a missing page, a missing heading.
printf '# Yes\n' > "$tmp/b.md"
printf 'See [b](b.md#yes), [nothing](nothing.md) and [b](b.md#no).\n' > "$tmp/a.md"
expect_fail "a link to a page that does not exist fails" 'a\.md:1: the link nothing\.md' $check links "$tmp/a.md"
expect_fail "a link to a heading that does not exist fails" 'a\.md:1: the link b\.md#no: .* no heading' $check links "$tmp/a.md"

plan "$TAP_N"
[ "$TAP_FAILED" -eq 0 ]
