#!/usr/bin/env bash
# test/shell/51_package.t - the Debian package postgresql-15-milestones
# (issue 9): built, installed, used and removed again.
#
# First the files make install placed (the library, its bitcode, the
# control files and scripts of milestones and its companions) are saved
# with their checksums and set aside, so that only the package can serve
# the extension.  Then:
#   - make deb builds the package from a git clone of HEAD in a temporary
#     folder (only committed files go in, as in a release); its build runs
#     make installcheck against the built files in a plain throwaway
#     cluster (no pg_cron);
#   - its contents: the library, the control file and the scripts of every
#     version (1.0 byte for byte the released one, 1.1 and 1.0--1.1 byte
#     for byte the released ones, 1.2, 1.1--1.2), and every extension file
#     make install had placed;
#   - apt-get install ./postgresql-15-milestones_*.deb, after which the
#     running test cluster creates the extension at 1.2, and at 1.0 then
#     updates it to 1.2;
#   - apt-get purge leaves none of the package's files and dpkg forgets it;
#   - what make install had placed is put back and is byte for byte what
#     it was.
# Needs root (apt-get; it waits up to 5 minutes for the dpkg lock).  Skips
# itself when not root, or when the package is already installed (it could
# not leave that machine as it found it).
set -uo pipefail
. "$(dirname "$0")/lib.sh"

top=$(cd "$(dirname "$0")/../.." && pwd)
pkg=postgresql-15-milestones
db=ms_pkg
db10=ms_pkg10
ext=$(pg_config --sharedir)/extension
lib=$(pg_config --pkglibdir)
tmp=$(mktemp -d)

# pkg_status: dpkg's status of the package, "none" when dpkg does not know it.
pkg_status() {
  local s
  s=$(dpkg-query -W -f='${Status}' $pkg 2>/dev/null || true)
  case "$s" in ""|"unknown ok not-installed") echo none ;; *) echo "$s" ;; esac
}
apt() { DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o DPkg::Lock::Timeout=300 "$@"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "1..0 # SKIP apt-get install needs root"; exit 0
fi
if [ "$(pkg_status)" != none ]; then
  echo "1..0 # SKIP $pkg is on this machine already ($(pkg_status)): not touching it"; exit 0
fi

# The files make install placed, saved in $tmp/saved (cp -a: contents,
# modes, times) with their checksums.
(cd / && { ls -d "${ext#/}"/milestones*.control "${ext#/}"/milestones*--*.sql "${ext#/}"/milestones/* "${lib#/}"/milestones.so 2>/dev/null
           [ -d "${lib#/}/bitcode" ] && find "${lib#/}/bitcode" -path '*/bitcode/milestones*' -type f; } | sort) > "$tmp/installed"
mkdir -p "$tmp/saved"
(cd / && xargs -r cp -a --parents -t "$tmp/saved" < "$tmp/installed")
(cd "$tmp/saved" && xargs -r sha256sum < "$tmp/installed" | sort -k2) > "$tmp/before.sums"

# put_back: the package out if it is in, then make install's files back.
# Runs on every exit, so a failing step still leaves the machine as it was.
put_back() {
  dropdbs $db $db10
  [ "$(pkg_status)" = none ] || apt purge $pkg >"$tmp/purge-again.log" 2>&1
  (cd "$tmp/saved" && xargs -r cp -a --parents -t / < "$tmp/installed")
}
trap 'put_back; rm -rf "$tmp"' EXIT

plan 18

(cd / && xargs rm -f < "$tmp/installed")
ls "$ext"/milestones*.control "$lib/milestones.so" >/dev/null 2>&1
ok $((! $?)) "make install's $(wc -l < "$tmp/installed") files are saved and set aside: only the package can serve milestones now"

# Build from a clone of HEAD, as a release would be.
head=$(git -C "$top" rev-parse HEAD)
git clone -q --no-checkout "$top" "$tmp/src" && git -C "$tmp/src" checkout -q "$head"
ok $? "a clone of HEAD ($(cut -c1-12 <<<"$head")) in a temporary folder"
t0=$(date +%s)
make -C "$tmp/src" deb > "$tmp/build.log" 2>&1
rc=$?; ok $rc "make deb builds the package"; [ $rc -eq 0 ] || diag "$(tail -40 "$tmp/build.log")"
diag "make deb took $(( $(date +%s) - t0 )) s"
grep -q '^### End 15 installcheck ###' "$tmp/build.log" && grep -q 'All [0-9]* tests passed' "$tmp/build.log"
ok $? "its build ran make installcheck against the built files in a plain cluster (pg_buildext, no pg_cron) and it passed"
deb=$(ls "$tmp"/src/build-deb/${pkg}_*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || bail "no ${pkg}_*.deb in build-deb/"
is "$(git -C "$tmp/src" status --porcelain --ignored)" "!! build-deb/" \
   "the build left nothing in the tree but build-deb/"

# Contents.
dpkg-deb -c "$deb" | awk '{print $NF}' | grep -v '/$' | sed 's|^\./|/|' > "$tmp/listing"
missing=""
for f in "$lib/milestones.so" "$ext/milestones.control" "$ext/milestones--1.0.sql" \
         "$ext/milestones--1.1.sql" "$ext/milestones--1.0--1.1.sql" \
         "$ext/milestones--1.2.sql" "$ext/milestones--1.1--1.2.sql" \
         "$ext/milestones_proxy.control" "$ext/milestones_proxy--1.1.sql" \
         "$ext/milestones/milestones-queries.yaml" "$ext/milestones/milestones-alerts.yml"; do
  grep -qxF "$f" "$tmp/listing" || missing="$missing $f"
done
is "$missing" "" "the package holds the library, the control file and the scripts of 1.0, 1.1, 1.2, 1.0--1.1 and 1.1--1.2, milestones_proxy's control file and script, and the Prometheus queries and alerting rules"
mkdir -p "$tmp/unpacked" && dpkg-deb -x "$deb" "$tmp/unpacked"
is "$(sha256sum "$tmp/unpacked$ext/milestones--1.0.sql" | cut -c1-64)" \
   "930aafd9850c5d12ea35fa484bdc5922dae9507a18260c775b95c111ac449665" \
   "its 1.0 script is the released one, byte for byte"
is "$(sha256sum "$tmp/unpacked$ext/milestones--1.1.sql" "$tmp/unpacked$ext/milestones--1.0--1.1.sql" | cut -c1-64 | tr '\n' ' ')" \
   "e58c6fe590e5c212e1a9516412f023f46bb7c462967746dc252d38077a0d2550 fdf1ae175f7514f8a7ee250def8d09782a720c1e9ea57c4f88a0387d5dbb0a3c " \
   "its 1.1 scripts are the released ones, byte for byte"
is "$(grep -h default_version "$tmp/unpacked$ext/milestones.control")" "default_version = '1.2'" \
   "its control file installs 1.2 by default"
# Every file make install placed (milestones and its companions, e.g.
# milestones_proxy) is in the package too.
is "$(sed 's|^|/|' "$tmp/installed" | grep -vxF -f "$tmp/listing" | tr '\n' ' ')" "" \
   "every file make install had placed is in the package"
diag "package contents:" "$(cat "$tmp/listing")"

# Install it.
t0=$(date +%s)
apt install --no-install-recommends "$deb" > "$tmp/install.log" 2>&1
rc=$?; ok $rc "apt-get install ./$(basename "$deb")"; [ $rc -eq 0 ] || diag "$(tail -20 "$tmp/install.log")"
is "$(dpkg-query -W -f='${Status} ${Version}' $pkg 2>/dev/null)" "install ok installed 1.2-1" "$pkg 1.2-1 is installed"

# The running test cluster uses it.
dropdb --if-exists $db >/dev/null 2>&1; createdb $db
is "$(q $db "CREATE EXTENSION milestones; SELECT extversion FROM pg_extension WHERE extname = 'milestones'" 2>&1)" "1.2" \
   "CREATE EXTENSION milestones installs 1.2"
dropdb --if-exists $db10 >/dev/null 2>&1; createdb $db10
out=$(q $db10 "CREATE EXTENSION milestones VERSION '1.0';
               SELECT milestones.set_seller_eligibility(10, true);
               SELECT milestones.set_category_eligibility('design', true);
               SELECT milestones.create_offer(10, 20, 'design', '$OFFER3_MS', 1);" 2>&1)
# The upgrade in a transaction of its own, as doc/upgrading.md says: the
# order's deferred checks must have fired before ALTER TABLE may run.
out=$(q $db10 "ALTER EXTENSION milestones UPDATE;
               SELECT extversion FROM pg_extension WHERE extname = 'milestones';
               SELECT count(*) FROM milestones.check_invariants();" 2>&1)
is "$(tail -2 <<<"$out" | tr '\n' ' ')" "1.2 0 " \
   "CREATE EXTENSION milestones VERSION '1.0' with an order, then ALTER EXTENSION UPDATE: 1.2, invariants hold"
diag "install + use took $(( $(date +%s) - t0 )) s"
dropdbs $db $db10

# Remove it: nothing of it stays.
apt purge $pkg > "$tmp/purge.log" 2>&1
rc=$?; ok $rc "apt-get purge $pkg"; [ $rc -eq 0 ] || diag "$(tail -20 "$tmp/purge.log")"
is "$(pkg_status)" "none" "dpkg no longer knows the package"
left=$(while IFS= read -r f; do [ -e "$f" ] && echo "$f"; done < "$tmp/listing")
is "$left" "" "none of the package's files is left"

# Put back what make install had placed, and compare.
put_back
(cd / && xargs -r sha256sum < "$tmp/installed" | sort -k2) > "$tmp/after.sums"
diff -u "$tmp/before.sums" "$tmp/after.sums" > "$tmp/sums.diff"
ok $? "what make install had placed is back, byte for byte ($(wc -l < "$tmp/before.sums") files)"
[ -s "$tmp/sums.diff" ] && diag "$(head -20 "$tmp/sums.diff")"

[ $TAP_FAILED -eq 0 ]
