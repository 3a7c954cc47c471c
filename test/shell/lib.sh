# test/shell/lib.sh - helpers for the shell/TAP suites (sourced by test/shell/*.t).
#
# The runner (test/tools/run-tests) starts the cluster and sets PGHOST,
# PGPORT, PGUSER (a superuser) and PGPASSWORD.  Each test makes its own
# databases and drops them when it ends.

TAP_N=0
TAP_FAILED=0

plan()  { echo "1..$1"; }
diag()  { local a l; for a in "$@"; do while IFS= read -r l; do echo "# $l"; done <<<"$a"; done; }
ok() {                       # ok CONDITION-EXIT-STATUS DESCRIPTION
  TAP_N=$((TAP_N + 1))
  if [ "$1" -eq 0 ]; then echo "ok $TAP_N - $2"; else echo "not ok $TAP_N - $2"; TAP_FAILED=$((TAP_FAILED + 1)); fi
}
is() {                       # is GOT WANT DESCRIPTION
  if [ "$1" == "$2" ]; then ok 0 "$3"; else ok 1 "$3"; diag "     got: $1" "    want: $2"; fi
}
bail() {
  echo "Bail out! $*"
  # Inside tap_retry the attempt's lines are held in a file: show them.
  if [ -n "${TAP_HELD:-}" ]; then cat "$TAP_HELD" >&7; rm -f "$TAP_HELD"; fi
  exit 255
}

# tap_retry MAX PATTERN FUNCTION: run FUNCTION K (a whole race, K = 1, 2,
# ...: its own database, its own tests, the same number each time) up to
# MAX times, holding its TAP lines until it ends.  An attempt whose only
# failures are tests whose description matches PATTERN (what depends on
# how the machine schedules the sessions: that every kind of call won
# somewhere, that the calls overlapped) is run again; an attempt with any
# other failure, or the last one, is the result.  So every check of the
# outcome (the books, the invariants, one winner per order) passed in every
# attempt that was run again: a bug cannot hide behind a retry, only bad
# luck with the scheduler.
# SCHEDULER_TESTS: the races' tests that only the scheduler decides (the
# pattern 21_concurrency.t and 22_cancel_milestone_race.t give tap_retry).
SCHEDULER_TESTS='^(every kind of call won on some orders|the calls really raced: )'
tap_retry() {
  local max=$1 pat=$2 fn=$3 k out failed
  out=$(mktemp)
  exec 7>&1
  for k in $(seq 1 "$max"); do
    TAP_N=0; TAP_FAILED=0; TAP_HELD=$out
    "$fn" "$k" >"$out"
    TAP_HELD=
    failed=$(sed -n 's/^not ok [0-9]* - //p' "$out")
    if [ -n "$failed" ] && [ "$k" -lt "$max" ] && ! grep -qvE "$pat" <<<"$failed"; then
      diag "attempt $k of $max: only what depends on the scheduler failed ($(paste -sd ';' <<<"$failed")); the race again on new orders"
      continue
    fi
    break
  done
  cat "$out"
  rm -f "$out"
  exec 7>&-
  [ "$k" -gt 1 ] && diag "(the result of attempt $k of $max)"
  return 0
}

# ms_extdir, ms_libdir: where make test installed the extension's scripts
# and library (the server's own folders, or under MILESTONES_DESTDIR).
ms_extdir() { echo "${MILESTONES_DESTDIR:-}$(pg_config --sharedir)/extension"; }
ms_libdir() { echo "${MILESTONES_DESTDIR:-}$(pg_config --pkglibdir)"; }

# MS_VENV_OPTS: pg_virtualenv options for a cluster of a test's own that
# must load the build make test installed (under MILESTONES_DESTDIR, when
# set, through Debian's extension_destdir and dynamic_library_path).
MS_VENV_OPTS=()
if [ -n "${MILESTONES_DESTDIR:-}" ]; then
  MS_VENV_OPTS=(-o "extension_destdir=$MILESTONES_DESTDIR"
                -o "dynamic_library_path=$MILESTONES_DESTDIR$(pg_config --pkglibdir):\$libdir")
fi

# q DB SQL: one query, unaligned tuples only, stop on error.
q() { psql -X -q -A -t -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }

# newdb DB: a fresh database with the extension, seller 10 / category
# 'design' eligible (as in test/fixtures/setup.psql).
newdb() {
  dropdb --if-exists "$1" >/dev/null 2>&1
  createdb "$1" || bail "createdb $1 failed"
  psql -X -q -v ON_ERROR_STOP=1 -d "$1" >/dev/null <<'SQL' || bail "extension setup in $1 failed"
CREATE EXTENSION milestones;
SELECT milestones.set_seller_eligibility(10, true);
SELECT milestones.set_category_eligibility('design', true);
SQL
}

# dropdbs DB...: drop databases, ending any sessions left in them.
dropdbs() {
  local d
  for d in "$@"; do dropdb --if-exists --force "$d" >/dev/null 2>&1 || true; done
}

# OFFER3: the standard 3-milestone offer (100 + 150 + 250 = 500 USD).
OFFER3_MS='[{"name":"Storyboard","days":3,"amount":"100.00"},{"name":"Animation","days":7,"amount":"150.00"},{"name":"Final cut","days":5,"amount":"250.00"}]'
offer3() { q "$1" "SELECT milestones.create_offer(10, 20, 'design', '$OFFER3_MS', ${2:-1})"; }

# confirmed_state_sql: SQL that leaves confirmed-mode orders (1.2, SPEC
# section 11) in every payment state: milestone 1 awaiting payment
# (requested; failed), an active order whose next milestone awaits
# payment, an order completed unpaid, one back to offered after its
# window, a late success booked and refunded, refunds requested, failed
# and succeeded.  Switches payment_mode back to recorded at the end.
# Needs a superuser (fake_now, record_charge) and seller 10 / category
# 'design' eligible.
confirmed_state_sql() {
  cat <<SQL
\set ON_ERROR_STOP 1
SELECT milestones.set_setting('payment_mode', 'confirmed') IS NOT NULL;
-- a: milestone 2 unpaid at pay_by (completed unpaid); b: milestone 1 unpaid (offered again)
SET milestones.fake_now = '2030-12-20 00:00:00+00';
SELECT milestones.create_offer(10, 20, 'design', '$OFFER3_MS', 1) AS oa \gset
SELECT milestones.place_order(:oa, 20);
SELECT milestones.record_charge(charge_id, 1, 'succeeded', 'pi_a') FROM milestones.order_status WHERE order_id = :oa;
SELECT milestones.deliver(:oa, 10), milestones.accept(:oa, 20);
SELECT milestones.place_order(milestones.create_offer(10, 20, 'design', '$OFFER3_MS', 1), 20);
SELECT milestones.expire_overdue('2030-12-24 00:00:00+00');
SET milestones.fake_now = '2031-01-01 00:00:00+00';
CREATE TEMP TABLE cids AS SELECT g AS n, milestones.create_offer(10, 20, 'design', '$OFFER3_MS', 1) AS id
  FROM generate_series(1, 7) g;
SELECT milestones.place_order(id, 20) FROM cids;
CREATE TEMP VIEW copen AS SELECT c.n, c.id, s.charge_id FROM cids c JOIN milestones.order_status s ON s.order_id = c.id;
-- 1 requested; 2 failed; 3 active in progress; 4 milestone 2 awaiting payment
SELECT milestones.record_charge(charge_id, 1, 'failed', NULL, 'card declined') FROM copen WHERE n = 2;
SELECT milestones.record_charge(charge_id, 1, 'succeeded', 'pi_' || charge_id) FROM copen WHERE n >= 3;
SELECT milestones.deliver(id, 10) FROM cids WHERE n >= 4;
SELECT milestones.accept(id, 20) FROM cids WHERE n >= 4;
-- 5: milestone 2 paid, then cancelled (a refund); 6: stopped while awaiting, then a late success;
-- 7: milestone 2's attempt failed
SELECT milestones.record_charge(charge_id, 1, 'succeeded', 'pi_' || charge_id) FROM copen WHERE n = 5;
CREATE TEMP TABLE c6 AS SELECT charge_id FROM copen WHERE n = 6;
SELECT milestones.stop(id, 20) FROM cids WHERE n = 6;
SELECT milestones.record_charge(charge_id, 1, 'succeeded', 'pi_late') FROM c6;
SELECT milestones.record_charge(charge_id, 1, 'failed', NULL, 'insufficient funds') FROM copen WHERE n = 7;
SELECT milestones.cancel(id, 'agent-7', 'mutual_agreement') FROM cids WHERE n = 5;
SELECT milestones.record_refund(refund_id, 'failed', NULL, 'account closed') FROM milestones.refunds WHERE reason = 'late_success';
SELECT milestones.record_refund(refund_id, 'succeeded', 're_1') FROM milestones.refunds WHERE reason = 'cancelled';
RESET milestones.fake_now;
SELECT milestones.set_setting('payment_mode', 'recorded') IS NOT NULL;
SQL
}

# every_state_sql: SQL that leaves orders in every state (offered, active
# in_progress, active delivered, completed finished/stopped/expired,
# withdrawn, declined, cancelled with a refund).  Needs a superuser (moves
# milestones.fake_now) and seller 10 / category 'design' eligible.
every_state_sql() {
  cat <<SQL
\set ON_ERROR_STOP 1
SET milestones.fake_now = '2030-01-01 00:00:00+00';
CREATE TEMP TABLE ids AS SELECT g AS n, milestones.create_offer(10, 20, 'design', '$OFFER3_MS', 1) AS id
  FROM generate_series(1, 9) g;
-- 1 offered; 2 active in_progress; 3 active delivered
SELECT milestones.place_order(id, 20) FROM ids WHERE n BETWEEN 2 AND 9;
SELECT milestones.deliver(id, 10, 'first cut') FROM ids WHERE n IN (4, 5, 6, 9);
-- 4 completed finished (with a revision on the way)
SELECT milestones.request_revision(id, 20, 'more blue') FROM ids WHERE n = 4;
SELECT milestones.deliver(id, 10) FROM ids WHERE n = 4;
SELECT milestones.accept(id, 20) FROM ids WHERE n = 4;
SELECT milestones.deliver(id, 10) FROM ids WHERE n = 4;
SELECT milestones.accept(id, 20) FROM ids WHERE n = 4;
SELECT milestones.deliver(id, 10, 'final') FROM ids WHERE n = 4;
SELECT milestones.accept(id, 20) FROM ids WHERE n = 4;
-- 5 completed stopped
SELECT milestones.stop(id, 20) FROM ids WHERE n = 5;
-- 7 withdrawn, 8 declined (new offers, one in EUR with unlimited revisions)
SELECT milestones.withdraw_offer(milestones.create_offer(10, 20, 'design', '$OFFER3_MS'), 10);
SELECT milestones.decline_offer(milestones.create_offer(10, 20, 'design', '$OFFER3_MS', NULL, 'EUR'), 20);
-- 9: accept 1, then cancelled by support while 2 is in progress (refund)
SELECT milestones.accept(id, 20) FROM ids WHERE n = 9;
SELECT milestones.cancel(id, 'agent-7', 'mutual_agreement', 'both agreed') FROM ids WHERE n = 9;
-- cancelled straight from offered
SELECT milestones.cancel(milestones.create_offer(10, 20, 'design', '$OFFER3_MS'), 'agent-7', 'duplicate_order');
-- 6 completed expired: the sweep runs after its window closed
SELECT milestones.expire_overdue('2030-01-06 00:00:00+00');
-- 3 delivered (window open), with an idempotency key on the books
SET milestones.fake_now = '2030-01-07 00:00:00+00';
SELECT milestones.deliver(id, 10, NULL, 'retry-key-1') FROM ids WHERE n = 3;
RESET milestones.fake_now;
SQL
}
