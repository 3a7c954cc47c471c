#!/usr/bin/env bash
# test/shell/51_package.t - the Debian package postgresql-15-milestones
# (issue 9): built, installed, used and removed again.
#
# The package is built with make deb from a git clone of HEAD in a
# temporary folder (so only committed files go in, as in a release).  Its
# build runs make installcheck against the built files in a plain
# throwaway cluster (no pg_cron preloaded).  Then:
#   - its contents: the library, the control file and the scripts of every
#     version (1.0 byte for byte the released one, 1.1, 1.0--1.1), and every
#     extension file make install placed on this machine;
#   - apt-get install ./postgresql-15-milestones_*.deb, after which the
#     running test cluster creates the extension at 1.1, and at 1.0 then
#     updates it to 1.1;
#   - apt-get purge, after which the machine is as it was: every file the
#     package held that existed before (what make install had placed) is
#     back byte for byte, the others are gone, and the package is unknown
#     to dpkg.
# Needs root (apt-get; it waits up to 5 minutes for the dpkg lock).  Skips
# itself when not root, or when the package is already installed (it could
# not leave that machine as it found it).
set -uo pipefail
. "$(dirname "$0")/lib.sh"

top=$(cd "$(dirname "$0")/../.." && pwd)
pkg=postgresql-15-milestones
db=ms_pkg
db10=ms_pkg10
tmp=$(mktemp -d)

# pkg_status: dpkg's status of the package, "none" when dpkg does not know it.
pkg_status() {
  local s
  s=$(dpkg-query -W -f='${Status}' $pkg 2>/dev/null || true)
  case "$s" in ""|"unknown ok not-installed") echo none ;; *) echo "$s" ;; esac
}

if [ "$(id -u)" -ne 0 ]; then
  echo "1..0 # SKIP apt-get install needs root"; exit 0
fi
if [ "$(pkg_status)" != none ]; then
  echo "1..0 # SKIP $pkg is on this machine already ($(pkg_status)): not touching it"; exit 0
fi

# cleanup: remove the package if it is in, put back what was there before.
# Runs on every exit, so a failing step still leaves the machine as it was.
restored=0
cleanup() {
  dropdbs $db $db10
  if [ "$(pkg_status)" != none ]; then
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq -o DPkg::Lock::Timeout=300 $pkg >"$tmp/purge.log" 2>&1
  fi
  if [ $restored -eq 0 ] && [ -f "$tmp/files" ]; then
    restore
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# restore: every package path that existed before comes back from the
# backup (with its mode and times); every other one is removed.
restore() {
  local f
  while IFS= read -r f; do
    if [ -e "$tmp/backup$f" ]; then
      mkdir -p "$(dirname "$f")" && cp -a "$tmp/backup$f" "$f"
    else
      rm -f "$f"
    fi
  done < "$tmp/files"
  restored=1
}

plan 16

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
is "$(git -C "$tmp/src" status --porcelain --ignored | grep -v '^!! build-deb/$')" "" \
   "the build left nothing in the tree but build-deb/"

# Contents.
dpkg-deb -c "$deb" | awk '{print $NF}' | sed 's|^\./|/|' > "$tmp/listing"
ext=$(pg_config --sharedir)/extension
lib=$(pg_config --pkglibdir)
missing=""
for f in "$lib/milestones.so" "$ext/milestones.control" "$ext/milestones--1.0.sql" \
         "$ext/milestones--1.1.sql" "$ext/milestones--1.0--1.1.sql"; do
  grep -qxF "$f" "$tmp/listing" || missing="$missing $f"
done
is "$missing" "" "the package holds the library, the control file and the scripts of 1.0, 1.1 and 1.0--1.1"
mkdir -p "$tmp/unpacked" && dpkg-deb -x "$deb" "$tmp/unpacked"
is "$(sha256sum "$tmp/unpacked$ext/milestones--1.0.sql" | cut -c1-64)" \
   "930aafd9850c5d12ea35fa484bdc5922dae9507a18260c775b95c111ac449665" \
   "its 1.0 script is the released one, byte for byte"
is "$(grep -h default_version "$tmp/unpacked$ext/milestones.control")" "default_version = '1.1'" \
   "its control file installs 1.1 by default"
# Every extension file make install placed here (milestones and its
# companions, e.g. milestones_proxy) is in the package too.
notin=""
for f in $(ls "$ext" | grep -E '^milestones(_[a-z]+)?(\.control|--.*\.sql)$'); do
  grep -qxF "$ext/$f" "$tmp/listing" || notin="$notin $f"
done
is "$notin" "" "every extension file make install placed in $ext is in the package"
diag "package contents:" "$(grep -v '/$' "$tmp/listing")"

# What is there now (make install's files): save it before dpkg touches it.
grep -v '/$' "$tmp/listing" > "$tmp/files"
mkdir -p "$tmp/backup"
while IFS= read -r f; do
  if [ -e "$f" ]; then mkdir -p "$tmp/backup$(dirname "$f")" && cp -a "$f" "$tmp/backup$f"; fi
done < "$tmp/files"
(cd "$tmp/backup" && find . -type f -exec sha256sum {} + | sort -k2) > "$tmp/before.sums"
diag "$(wc -l < "$tmp/before.sums") of the package's $(wc -l < "$tmp/files") files were on this machine before"

# Install it.
t0=$(date +%s)
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "$deb" > "$tmp/install.log" 2>&1
rc=$?; ok $rc "apt-get install ./$(basename "$deb")"; [ $rc -eq 0 ] || diag "$(tail -20 "$tmp/install.log")"
is "$(dpkg-query -W -f='${Status} ${Version}' $pkg 2>/dev/null)" "install ok installed 1.1-1" "$pkg 1.1-1 is installed"
is "$(dpkg -S "$ext/milestones.control" 2>/dev/null | cut -d: -f1)" "$pkg" "the control file now belongs to the package"

# The running test cluster uses it.
dropdb --if-exists $db >/dev/null 2>&1; createdb $db
is "$(q $db "CREATE EXTENSION milestones; SELECT extversion FROM pg_extension WHERE extname = 'milestones'" 2>&1)" "1.1" \
   "CREATE EXTENSION milestones installs 1.1"
dropdb --if-exists $db10 >/dev/null 2>&1; createdb $db10
out=$(q $db10 "CREATE EXTENSION milestones VERSION '1.0';
               SELECT milestones.set_seller_eligibility(10, true);
               SELECT milestones.set_category_eligibility('design', true);
               SELECT milestones.create_offer(10, 20, 'design', '$OFFER3_MS', 1);
               ALTER EXTENSION milestones UPDATE;
               SELECT extversion FROM pg_extension WHERE extname = 'milestones';
               SELECT count(*) FROM milestones.check_invariants();" 2>&1)
is "$(tail -2 <<<"$out" | tr '\n' ' ')" "1.1 0 " \
   "CREATE EXTENSION milestones VERSION '1.0' with an order, then ALTER EXTENSION UPDATE: 1.1, invariants hold"
diag "install + use took $(( $(date +%s) - t0 )) s"
dropdbs $db $db10

# Remove it and put back what was there.
DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq -o DPkg::Lock::Timeout=300 $pkg > "$tmp/purge.log" 2>&1
rc=$?; ok $rc "apt-get purge $pkg"; [ $rc -eq 0 ] || diag "$(tail -20 "$tmp/purge.log")"
is "$(pkg_status)" "none" "dpkg no longer knows the package"
restore
# Compare the live files (not the backup) with the sums taken before.
(while IFS= read -r f; do [ -e "$f" ] && sha256sum "$f" | sed "s|  /|  ./|"; done < "$tmp/files" | sort -k2) > "$tmp/after.sums"
diff -u "$tmp/before.sums" "$tmp/after.sums" > "$tmp/sums.diff"
ok $? "what make install had placed is back, byte for byte, and nothing else of the package is left"
[ -s "$tmp/sums.diff" ] && diag "$(head -20 "$tmp/sums.diff")"

[ $TAP_FAILED -eq 0 ]
