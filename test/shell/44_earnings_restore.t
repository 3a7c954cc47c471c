#!/usr/bin/env bash
# test/shell/44_earnings_restore.t - SPEC section 12: pg_dump keeps every
# seller balance, and a restore passes the seller commit check.
#
# A database with sellers in every situation (pending, cleared, held and
# released, withdrawals requested, succeeded and failed, two currencies) is
# dumped in custom format (pg_restore, each seller table in a transaction
# of its own: the accounts, earnings and withdrawals arrive before their
# journal, which the check waits for) and in plain format (psql).  Every seller table must come back
# identical, check_invariants() empty, and the copies must go on: a
# withdrawal, the provider's answer to a restored one, the sweep, with
# fresh ids.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

src=ms_earn_dump_src
dst_c=ms_earn_dump_custom
dst_p=ms_earn_dump_plain
tmp=$(mktemp -d)
trap 'dropdbs $src $dst_c $dst_p; rm -rf "$tmp"' EXIT
plan 14

newdb $src
psql -X -q -v ON_ERROR_STOP=1 -d $src -f "$(dirname "$0")/../fixtures/earnings.sql" >/dev/null || bail "the earnings fixture failed"
psql -X -q -v ON_ERROR_STOP=1 -d $src >/dev/null 2>"$tmp/setup.err" <<'SQL'
SET milestones.fake_now = '2030-01-05 00:00:00+00';
SELECT earn_fixture.earn(10, 100.00, '2030-01-01'), earn_fixture.earn(10, 40.00, '2030-01-02'),
       earn_fixture.earn(10, 25.00, '2030-01-04', 'EUR'), earn_fixture.earn(11, 60.00, '2030-01-01'),
       earn_fixture.earn(12, 30.00, '2030-01-01'), earn_fixture.earn(13, 70.00, '2030-01-02', 'USD', 0.1);
SET milestones.fake_now = '2030-01-16 00:00:00+00';
SELECT count(*) FROM milestones.hold_clearance(11, 'chargeback review');
SELECT count(*) FROM milestones.hold_clearance(12, 'identity check');
SELECT milestones.clear_earnings();
SELECT count(*) FROM milestones.release_clearance(12);
SELECT milestones.request_withdrawal(10, 50.00, 'USD', 'restore-key');
SELECT milestones.record_withdrawal(milestones.request_withdrawal(10, 20.00, 'USD'), 'succeeded', 'po_r1');
SELECT milestones.record_withdrawal(milestones.request_withdrawal(10, 10.00, 'USD'), 'failed', NULL, 'account closed');
SELECT milestones.request_withdrawal(13, 5.00, 'USD');
SQL
ok $? "sellers in every situation were made"
[ -s "$tmp/setup.err" ] && diag "$(head -5 "$tmp/setup.err")"
is "$(q $src "SELECT string_agg(format('%s %s %s/%s/%s/%s %s', seller_id, currency, pending, available, withdrawing, withdrawn, held), ', ' ORDER BY seller_id, currency) FROM milestones.seller_balances")" \
   "10 EUR 25.00/0.00/0.00/0.00 f, 10 USD 0.00/70.00/50.00/20.00 f, 11 USD 60.00/0.00/0.00/0.00 t, 12 USD 0.00/30.00/0.00/0.00 f, 13 USD 0.00/58.00/5.00/0.00 f" \
   "the source: pending, cleared, held, released, withdrawing, withdrawn, two currencies"

snapshot() {
  psql -X -q -A -d "$1" -o "$2" <<'SQL'
SELECT * FROM milestones.seller_balances ORDER BY seller_id, currency;
SELECT * FROM milestones.seller_accounts ORDER BY seller_id, currency;
SELECT * FROM milestones.seller_earnings ORDER BY earning_id;
SELECT * FROM milestones.seller_ledger ORDER BY entry_id;
SELECT * FROM milestones.seller_holds ORDER BY hold_id;
SELECT * FROM milestones.withdrawals ORDER BY withdrawal_id;
SELECT event_id, event, order_id, actor_role, actor_id, detail FROM milestones.events WHERE order_id IS NULL ORDER BY event_id;
SELECT key, function, arguments, result FROM milestones.idempotency_keys ORDER BY key;
SQL
}
snapshot $src "$tmp/src.out"

check() {
  local db=$1 label=$2 maxid w
  snapshot "$db" "$tmp/$label.out"
  diff -u "$tmp/src.out" "$tmp/$label.out" > "$tmp/$label.diff"
  ok $? "$label: balances, accounts, earnings, journal, holds, withdrawals, seller events and keys identical"
  [ -s "$tmp/$label.diff" ] && diag "$(head -30 "$tmp/$label.diff")"
  is "$(q "$db" "SELECT count(*) FROM milestones.check_invariants()")" "0" "$label: check_invariants() is empty"
  maxid=$(q "$db" "SELECT max(withdrawal_id) FROM milestones.seller_withdrawals")
  is "$(q "$db" "SELECT milestones.request_withdrawal(10, 50.00, 'USD', 'restore-key')")" \
     "$(q $src "SELECT withdrawal_id FROM milestones.withdrawals WHERE amount = 50.00")" "$label: a retry with a restored key returns the first withdrawal"
  w=$(q "$db" "SET milestones.fake_now = '2030-01-17 00:00:00+00'; SELECT milestones.request_withdrawal(10, 60.00, 'USD')" | tail -1)
  ok $([ "${w:-0}" -gt "$maxid" ] 2>/dev/null; echo $?) "$label: a new withdrawal gets a fresh id ($w > $maxid)"
  is "$(q "$db" "SELECT state FROM milestones.record_withdrawal((SELECT withdrawal_id FROM milestones.withdrawals WHERE seller_id = 13), 'succeeded', 'po_r2')
                 ; SET milestones.fake_now = '2030-01-20 00:00:00+00'; SELECT milestones.clear_earnings()
                 ; SELECT count(*) FROM milestones.check_invariants()" | tr '\n' ' ')" \
     "succeeded 1 0 " "$label: the provider's answer to a restored withdrawal, the sweep (10's EUR earning), books sound"
}

# Custom format: the seller tables' data one table per transaction, in
# the dump's order (pg_dump orders the data of an extension's tables by
# their foreign keys: accounts, earnings, withdrawals, then the journal),
# as pg_restore loads them by default.  Everything else in one transaction
# before them: confirmed-mode orders do not load table by table yet
# (order_milestones arrives before order_charges, and the order check
# refuses a started milestone without its charge).
pg_dump -Fc -f "$tmp/src.dump" $src
createdb $dst_c
pg_restore -l "$tmp/src.dump" > "$tmp/toc"
grep -v 'TABLE DATA milestones seller_' "$tmp/toc" > "$tmp/toc.rest"
grep 'TABLE DATA milestones seller_' "$tmp/toc" > "$tmp/toc.seller"
rc=0
pg_restore -1 -L "$tmp/toc.rest" -d $dst_c "$tmp/src.dump" 2>"$tmp/restore.err" || rc=1
while read -r line; do
  echo "$line" > "$tmp/toc.one"
  pg_restore -L "$tmp/toc.one" -d $dst_c "$tmp/src.dump" 2>>"$tmp/restore.err" || rc=1
done < "$tmp/toc.seller"
ok $rc "pg_restore succeeded, each seller table in a transaction of its own ($(sed 's/.* seller_/seller_/; s/ .*//' "$tmp/toc.seller" | tr '\n' ' '))"
[ -s "$tmp/restore.err" ] && diag "$(head -10 "$tmp/restore.err")"
check $dst_c custom

# Plain format in one transaction (see above).
createdb $dst_p
pg_dump $src | psql -X -q -1 -v ON_ERROR_STOP=1 -d $dst_p >/dev/null 2>"$tmp/plain.err"
ok $? "pg_dump | psql --single-transaction (plain format) succeeded"
[ -s "$tmp/plain.err" ] && diag "$(head -10 "$tmp/plain.err")"
check $dst_p plain
[ $TAP_FAILED -eq 0 ]
