#!/usr/bin/env bash
# test/shell/52_meta.t - the PGXN META.json (issue 9).
#
# META.json is valid by the PGXN Meta Spec 1.0.0 (test/tools/check-meta),
# and its versions agree with the rest of the tree: the distribution and
# milestones' provides entry = milestones.control's default_version =
# the Makefile's EXTVERSION = debian/changelog's upstream version (1.1 is
# 1.1.0 in PGXN's semantic versions).  Every extension in the tree (every
# *.control file, so also milestones_proxy's when it comes) must have a
# provides entry with its version.  The prereqs name PostgreSQL 15 and
# recommend pg_cron.  The validator is shown to refuse a broken copy.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

top=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$top"

# jget PATH...: a value of META.json by its keys ("" when absent).
jget() {
  perl -MJSON::PP -e 'my $m = JSON::PP->new->decode(do { local $/; <STDIN> });
    for (@ARGV) { $m = ref $m eq "HASH" ? $m->{$_} : undef } print $m // ""' "$@" < META.json
}
# semver V: an extension version (1.1) as PGXN's semantic version (1.1.0).
semver() { if [[ "$1" =~ ^[0-9]+\.[0-9]+$ ]]; then echo "$1.0"; else echo "$1"; fi; }
control_version() { sed -n "s/^default_version *= *'\(.*\)'.*/\1/p" "$1"; }

plan 10

out=$(test/tools/check-meta META.json 2>&1)
is "$out" "" "META.json is valid by the PGXN Meta Spec 1.0.0"
is "$(jget meta-spec version)" "1.0.0" "... and says so (meta-spec 1.0.0)"

ctl=$(control_version milestones.control)
is "$(jget version)" "$(semver "$ctl")" "its version is milestones.control's default_version ($ctl)"
is "$(jget provides milestones version)" "$(semver "$ctl")" "provides milestones at that version"
is "$(sed -n 's/^EXTVERSION *= *//p' Makefile)" "$ctl" "the Makefile's EXTVERSION agrees"
deb=$(dpkg-parsechangelog -l debian/changelog -S Version 2>/dev/null)
is "${deb%-*}" "$ctl" "debian/changelog's upstream version ($deb) agrees"

# Every extension of the tree is provided, at its control file's version.
bad=""
while IFS= read -r c; do
  name=$(basename "$c" .control)
  want=$(semver "$(control_version "$c")")
  got=$(jget provides "$name" version)
  [ "$got" = "$want" ] || bad="$bad $name(control $want, META '${got}')"
done < <(git ls-files '*.control' '**/*.control' | sort -u)
is "$bad" "" "every extension of the tree (every *.control) is in provides, at its version"

is "$(jget prereqs runtime requires PostgreSQL)" ">= 15.0.0, < 16.0.0" "runtime requires PostgreSQL 15"
[ -n "$(jget prereqs runtime recommends pg_cron)" ]
ok $? "runtime recommends pg_cron"

# The validator can fail: a copy with a two-part version, an unknown
# licence and a provides entry without its file.  (The copy is alone in a
# temporary folder, so the companions' entries, whose files it cannot
# find there, are left out.)
perl -MJSON::PP -e 'my $m = JSON::PP->new->decode(do { local $/; <STDIN> });
  delete $m->{provides}{$_} for grep { $_ ne "milestones" } keys %{$m->{provides}};
  $m->{version} = "1.1"; $m->{license} = "pg"; delete $m->{provides}{milestones}{file}; delete $m->{provides}{milestones}{docfile};
  print JSON::PP->new->encode($m)' < META.json > "$tmp/META.json"
out=$(test/tools/check-meta "$tmp/META.json" 2>&1)
[ $? -ne 0 ] && [ "$(grep -c . <<<"$out")" -eq 3 ]
ok $? "the validator refuses a broken copy, naming each of its 3 faults"
diag "$out"

[ $TAP_FAILED -eq 0 ]
