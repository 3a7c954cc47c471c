#!/usr/bin/env bash
# test/shell/60_proxy.t - scale-out with PL/Proxy (SPEC section 10, issue 13).
#
# Four partition clusters and a proxy cluster on free ports of this machine
# (test/tools/scaleout-lib.sh), set up as a DBA does it; the proxy logs in
# to the partitions with the USER MAPPING's password over TCP
# (scram-sha-256).  Partition 3 starts at milestones 1.0 and is upgraded to
# 1.1 before it takes orders.  Through the proxy, as the application and
# support log in: the same API as one database (signatures, result types,
# grants); lifecycle, cancellation and expiry (the sweep runs on each
# partition); every order on the partition its id names; a partition's
# SQLSTATE, DETAIL and HINT reach the client; NULL routing arguments are
# refused at the proxy; configuration on every partition and drift found by
# check_cluster(); a partition dumped and restored keeps its ids; a stopped
# partition fails only the calls routed to it, naming it.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
top=$(cd "$(dirname "$0")/../.." && pwd)
. "$top/test/tools/scaleout-lib.sh"

plan 61
trap so_cleanup EXIT
so_init || bail "initdb failed"
for k in 0 1 2 3; do
  so_cluster n$k "log_connections = on" || bail "partition cluster $k did not start"
done
so_cluster px || bail "proxy cluster did not start"
for k in 0 1 2; do so_partition n$k part$k $k 4 || bail "partition $k set-up failed"; done
# Partition 3 was made with milestones 1.0 (an older server of the fleet).
so_partition n3 part3 3 4 1.0 || bail "partition 3 set-up failed"
so_proxy px proxy n0:part0 n1:part1 n2:part2 n3:part3 || bail "proxy set-up failed"

P() { so_psql px proxy -qAt "$@"; }                 # proxy, as its owner
APP() { so_as shop_app px proxy -qAt "$@"; }        # proxy, as the application
SUP() { so_as shop_support px proxy -qAt "$@"; }    # proxy, as support
RDR() { so_as shop_reader px proxy -qAt "$@"; }     # proxy, as a reader
# err WHO SQL: "SQLSTATE|message|detail|hint" of a failing call through the proxy.
err() { errq "$1" -c "$2"; }
errq() {
  "$@" -v VERBOSITY=verbose 2>&1 >/dev/null | awk '
    /^ERROR:/   { sub(/^ERROR:  /, ""); state = substr($0, 1, 5); sub(/^[0-9A-Z][0-9A-Z][0-9A-Z][0-9A-Z][0-9A-Z]: /, ""); msg = $0 }
    /^DETAIL:/  { sub(/^DETAIL:  /, ""); det = $0 }
    /^HINT:/    { sub(/^HINT:  /, ""); hint = $0 }
    END { printf "%s|%s|%s|%s", state, msg, det, hint }'
}
MS2='[{"name":"Design","days":3,"amount":"100.00"},{"name":"Build","days":5,"amount":"150.00"}]'

# --- set-up -----------------------------------------------------------------
is "$(P -c "SELECT extname || ' ' || extversion FROM pg_extension WHERE extname IN ('plproxy','milestones_proxy') ORDER BY 1")" \
   "$(printf 'milestones_proxy 1.2\nplproxy 2.10.0')" "CREATE EXTENSION milestones_proxy CASCADE installs plproxy"
out=$(P -c "SELECT * FROM milestones.check_cluster()")
ok $([[ "$out" == *"3|error|"*"partition_config"* ]] && echo 0 || echo 1) \
   "check_cluster() reports the partition still at 1.0"
diag "$out"
so_psql n3 part3 -q -c "ALTER EXTENSION milestones UPDATE" -c "SELECT milestones.set_partition(3, 4)" >/dev/null
is "$(so_q n3 part3 "SELECT extversion FROM pg_extension WHERE extname = 'milestones'")" "1.2" "partition 3 upgraded from 1.0 to 1.2, then set_partition(3, 4)"
P -c "SELECT milestones.set_seller_eligibility(s, true) FROM generate_series(10, 41) s" \
  -c "SELECT milestones.set_category_eligibility('design', true)" >/dev/null
is "$(P -c "SELECT count(*) FROM milestones.check_cluster()")" "0" "after eligibility set through the proxy, check_cluster() finds no difference"
is "$(so_q n3 part3 "SELECT count(*) FROM milestones.eligible_sellers WHERE eligible")" "32" "the proxy's set_seller_eligibility reached every partition"

# --- the same API -------------------------------------------------------------
api="'create_offer','withdraw_offer','decline_offer','place_order','deliver','accept','request_revision','stop','cancel','cancel_milestone','order_status','payout','set_seller_eligibility','set_category_eligibility','set_cancellation_reason','set_setting','check_invariants'"
sig="SELECT string_agg(p.proname || '(' || pg_get_function_arguments(p.oid) || ') -> ' || pg_get_function_result(p.oid), E'\n' ORDER BY 1)
       FROM pg_proc p WHERE p.pronamespace = 'milestones'::regnamespace AND p.proname IN ($api)"
is "$(P -c "$sig")" "$(so_q n0 part0 "$sig")" "every proxied function has the partition's name, arguments, defaults and result type"
cols="SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
        FROM pg_attribute a WHERE a.attrelid = 'milestones.order_status'::regclass AND a.attnum > 0 AND NOT a.attisdropped"
is "$(P -c "$cols")" "$(so_q n0 part0 "$cols")" "the order_status view (the actions' row type) has the partition's columns and types"
is "$(P -c "${cols/order_status/settings}")" "$(so_q n0 part0 "${cols/order_status/settings}")" "the settings type (set_setting's result) has the columns of the partition's settings row"
grants="SELECT string_agg(r || ' ' || p.proname || ' ' || has_function_privilege(r, p.oid, 'EXECUTE'), ', ' ORDER BY r, p.proname, p.oid::regprocedure::text)
          FROM pg_proc p, unnest(ARRAY['shop_app','shop_support','shop_reader']) r
         WHERE p.pronamespace = 'milestones'::regnamespace AND p.proname IN ($api)"
is "$(P -c "$grants")" "$(so_q n0 part0 "$grants")" "the three roles may call exactly what they may call on a partition"
is "$(P -c "SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_roles WHERE rolname LIKE 'milestones\_%'")" \
   "milestones_app,milestones_reader,milestones_support" "the proxy has the three roles"
is "$(P -c "SELECT count(*) FROM pg_proc p WHERE p.pronamespace = 'milestones'::regnamespace
              AND (has_function_privilege('public', p.oid, 'EXECUTE') OR (p.proname LIKE '\_%' AND p.proname NOT IN
                   ('_order_partition','_seller_partition','_order_status_all_12','_set_seller_eligibility_all',
                    '_set_category_eligibility_all','_set_cancellation_reason_all')
                   AND has_function_privilege('milestones_support', p.oid, 'EXECUTE')))")" "0" \
   "PUBLIC may call nothing; support may call no helper but the routing and RUN ON ALL ones"

# --- lifecycle: every order on the partition its id names ----------------------
ids=$(APP -c "SELECT milestones.create_offer(s, 1000 + s, 'design', '$MS2', 1) FROM generate_series(10, 41) s")
is "$(wc -l <<<"$ids")" "32" "32 offers from 32 sellers through the proxy"
where=""
for k in 0 1 2 3; do
  where+=$(so_q n$k part$k "SELECT string_agg(order_id || ':' || $k, ' ' ORDER BY order_id) FROM milestones.orders")" "
done
bad=$(for w in $where; do id=${w%%:*} k=${w#*:}; [ $((id % 4)) -eq "$k" ] || echo "$w"; done)
is "$bad" "" "every order is on the partition its id names (order_id % 4)"
is "$(wc -w <<<"$where")" "32" "all 32 are found, each on one partition"
is "$(for k in 0 1 2 3; do so_q n$k part$k "SELECT count(*) > 0 FROM milestones.orders"; done | sort -u)" "t" "the sellers' hashes spread the offers over all four partitions"
seller_ok=$(P -c "SELECT bool_and((hashint8(s.seller_id) & 3) = s.order_id % 4) FROM milestones.order_status s")
is "$seller_ok" "t" "each offer went to its seller's partition, hashint8(seller_id) & (N - 1)"

# One order per partition through its whole life.
for k in 0 1 2 3; do
  id=$(grep -E "^[0-9]+$" <<<"$ids" | awk -v k=$k '$1 % 4 == k' | head -1)
  seller=$(P -c "SELECT seller_id FROM milestones.order_status WHERE order_id = $id")
  buyer=$((1000 + seller))
  out=$(APP -c "SELECT (milestones.place_order($id, $buyer)).state" \
            -c "SELECT (milestones.deliver($id, $seller, 'v1')).milestone_state" \
            -c "SELECT (milestones.request_revision($id, $buyer, 'more')).revisions_left" \
            -c "SELECT (milestones.deliver($id, $seller, 'v2')).milestone_state" \
            -c "SELECT (milestones.accept($id, $buyer)).current_milestone" \
            -c "SELECT (milestones.deliver($id, $seller, 'final')).final_milestone" \
            -c "SELECT s.state || '/' || s.reason || ' ' || s.charged || ' ' || s.paid_out FROM milestones.accept($id, $buyer) s" \
            -c "SELECT gross || ' ' || currency FROM milestones.payout($id)" 2>&1 | tr '\n' ' ')
  is "$out" "active delivered 0 delivered 2 t completed/finished 250.00 250.00 250.00 USD " "order $id on partition $k: offered, placed, revised, accepted, finished and paid"
done

# Retries: the same arguments reach the same partition, which knows the key.
k1=$(APP -c "SELECT milestones.create_offer(12, 3012, 'design', '$MS2', 0, 'USD', 'offer-key-1')")
k2=$(APP -c "SELECT milestones.create_offer(12, 3012, 'design', '$MS2', 0, 'USD', 'offer-key-1')")
is "$k2" "$k1" "a create_offer retried with its idempotency key through the proxy returns the first id"
is "$(APP -c "SELECT (milestones.decline_offer($k1, 3012, 'decline-key-1')).state" -c "SELECT (milestones.decline_offer($k1, 3012, 'decline-key-1')).state" | tr '\n' ' ')" \
   "declined declined " "an order action retried with its key returns the first result again"

# --- errors: SQLSTATE unchanged, DETAIL and HINT carried ------------------------
done_id=$(P -c "SELECT order_id FROM milestones.order_status WHERE state = 'completed' ORDER BY order_id LIMIT 1")
dk=$((done_id % 4))
done_buyer=$(P -c "SELECT buyer_id FROM milestones.order_status WHERE order_id = $done_id")
direct=$(errq so_psql n$dk part$dk -qAt -c "SELECT milestones.place_order($done_id, $done_buyer)")
IFS='|' read -r dstate dmsg ddetail dhint <<<"$direct"
e=$(err APP "SELECT milestones.place_order($done_id, $done_buyer)")
is "$e" "$dstate|milestones.place_order(3): [part$dk] REMOTE ERROR: $dmsg|Remote detail: $ddetail|Remote hint: $dhint" \
   "a partition's error reaches the client: the same SQLSTATE ($dstate), message, DETAIL and HINT behind PL/Proxy's prefixes"
ok $([ "$dstate" == "55000" ] && [ -n "$ddetail" ] && [ -n "$dhint" ] && echo 0 || echo 1) "(that error is a 55000 with a DETAIL and a HINT)"
e=$(err APP "SELECT milestones.accept(4000000001, 20)")
is "${e%%|*}" "P0002" "an unknown order: P0002 from its partition"
e=$(err APP "SELECT milestones.accept($done_id, 999)")
is "${e%%|*}" "42501" "not the order's buyer: 42501 from the partition"
e=$(err APP "SELECT milestones.create_offer(10, 20, 'design', '[]')")
is "${e%%|*}" "22023" "bad input: 22023 from the partition"
e=$(err APP "SELECT milestones.create_offer(10, 20, 'toys', '$MS2')")
is "${e%%|*}" "0A000" "an ineligible category: 0A000 from the partition"

# --- privileges ------------------------------------------------------------------
some=$(grep -E "^[0-9]+$" <<<"$ids" | tail -1)
e=$(err APP "SELECT milestones.cancel($some, 'agent-1', 'mutual_agreement')")
is "${e%%|*}" "42501" "the application cannot cancel through the proxy (42501)"
e=$(err APP "SELECT milestones._set_seller_eligibility_all(99, true)")
is "${e%%|*}" "42501" "nor call the RUN ON ALL functions behind support's wrappers"
e=$(err RDR "SELECT milestones.place_order($some, 1)")
is "${e%%|*}" "42501" "a reader cannot act on orders"
is "$(RDR -c "SELECT count(*) FROM milestones.order_status")" "33" "a reader reads the merged order_status view: all 33 orders"
e=$(err APP "SELECT milestones.set_setting('max_milestones', '5')")
is "${e%%|*}" "42501" "set_setting is the owner's alone"

# --- NULL routing arguments: 22023 at the proxy -------------------------------------
e=$(err APP "SELECT milestones.place_order(NULL, 20)")
is "$e" "22023|order_id must not be NULL|The argument order_id was NULL.|Pass a value; the milestones API never treats NULL as \"nothing to do\"." \
   "a NULL order_id: the partitions' own 22023, raised by the proxy (no PL/Proxy prefix)"
e=$(err APP "SELECT milestones.create_offer(NULL, 20, 'design', '$MS2')")
is "${e%%|*}" "22023" "a NULL seller_id: 22023 at the proxy"

# --- cancellation -------------------------------------------------------------------
out=$(SUP -c "SELECT s.state || ' ' || s.reason FROM milestones.cancel($some, 'agent-1', 'mutual_agreement') s")
is "$out" "cancelled mutual_agreement" "support cancels an offer through the proxy"
act=$(grep -E "^[0-9]+$" <<<"$ids" | tail -2 | head -1)
abuyer=$(P -c "SELECT buyer_id FROM milestones.order_status WHERE order_id = $act")
APP -c "SELECT milestones.place_order($act, $abuyer)" >/dev/null
out=$(SUP -c "SELECT s.state || ' ' || s.charged || ' ' || s.refunded FROM milestones.cancel($act, 'agent-1', 'seller_unresponsive', 'gone') s")
is "$out" "cancelled 100.00 100.00" "cancelling an active order refunds the running milestone"
e=$(err SUP "SELECT milestones.cancel($act, 'agent-1', 'seller_unresponsive')")
is "${e%%|*}" "55000" "a cancelled order cannot be cancelled again (55000)"
e=$(err SUP "SELECT milestones.cancel($(grep -E '^[0-9]+$' <<<"$ids" | tail -3 | head -1), 'agent-1', 'no_such_reason')")
is "${e%%|*}" "22023" "an unknown reason: 22023"
SUP -c "SELECT milestones.set_cancellation_reason('fraud_check', 'The payment failed a fraud check.')" >/dev/null
is "$(for k in 0 1 2 3; do so_q n$k part$k "SELECT count(*) FROM milestones.cancellation_reasons WHERE code = 'fraud_check'"; done | tr -d '\n')" \
   "1111" "a reason added through the proxy is on every partition"
cm=$(grep -E "^[0-9]+$" <<<"$ids" | tail -4 | head -1)
cmb=$(P -c "SELECT buyer_id FROM milestones.order_status WHERE order_id = $cm")
APP -c "SELECT milestones.place_order($cm, $cmb)" >/dev/null
out=$(SUP -c "SELECT s.state || ' ' || s.total FROM milestones.cancel_milestone($cm, 2, 'agent-1', 'mutual_agreement') s" 2>&1)
is "$out" "active 100.00" "cancel_milestone through the proxy: milestone 2 cancelled, the order goes on"

# --- expiry: per partition -----------------------------------------------------------
ex=$(grep -E "^[0-9]+$" <<<"$ids" | tail -5 | head -1)
exk=$((ex % 4))
read -r exs exb < <(P -F ' ' -c "SELECT seller_id, buyer_id FROM milestones.order_status WHERE order_id = $ex")
APP -c "SELECT milestones.place_order($ex, $exb)" -c "SELECT milestones.deliver($ex, $exs)" >/dev/null
so_q n$exk part$exk "ALTER DATABASE part$exk SET milestones.fake_now = '$(date -u -d '+6 days' '+%Y-%m-%d %H:%M:%S+00')'" >/dev/null
e=$(err APP "SELECT milestones.accept($ex, $exb)")
is "${e%%|*}" "55000" "after the response window (the partition's clock), accept through the proxy fails with 55000"
is "$(so_q n$exk part$exk "SELECT milestones.expire_overdue()")" "1" "the sweep runs on the order's partition and expires it"
so_q n$exk part$exk "ALTER DATABASE part$exk RESET milestones.fake_now" >/dev/null
is "$(APP -c "SELECT state || '/' || reason FROM milestones.order_status($ex)")" "completed/expired" "the proxy's order_status(order_id) shows it expired"
is "$(SUP -c "SELECT count(*) FROM milestones.check_invariants()")" "0" "check_invariants() over all partitions is empty"

# --- configuration drift ---------------------------------------------------------------
P -c "SELECT (milestones.set_setting('response_window', '8 days')).response_window" >/dev/null
is "$(for k in 0 1 2 3; do so_q n$k part$k "SELECT response_window FROM milestones.settings"; done | sort -u)" "8 days" \
   "set_setting through the proxy changed every partition"
so_q n2 part2 "SELECT milestones.set_setting('max_milestones', '6')" >/dev/null
so_q n1 part1 "SELECT milestones.set_seller_eligibility(77, true)" >/dev/null
so_q n3 part3 "SELECT milestones.set_cancellation_reason('fraud_check', 'Another text.')" >/dev/null
is "$(P -c "SELECT * FROM milestones.check_cluster()")" \
   "$(printf '%s\n' '1|seller 77|eligible|not eligible' '2|setting max_milestones|6|3' '3|reason fraud_check|active: Another text.|active: The payment failed a fraud check.')" \
   "check_cluster() shows each change made on one partition only"
so_q px proxy "ALTER SERVER milestones_cluster OPTIONS (SET p1 '$(so_connstr n2 part2)', SET p2 '$(so_connstr n1 part1)')" >/dev/null
out=$(P -c "SELECT partition, item, value, expected FROM milestones.check_cluster() WHERE item = 'partition'")
is "$out" "$(printf '1|partition|2 of 4|1 of 4\n2|partition|1 of 4|2 of 4')" "check_cluster() shows partitions listed in the wrong place"
so_q px proxy "ALTER SERVER milestones_cluster OPTIONS (SET p1 '$(so_connstr n1 part1)', SET p2 '$(so_connstr n2 part2)')" >/dev/null
# (a partition left at another version: stand-in for a partition not yet upgraded)
so_q n0 part0 "UPDATE pg_extension SET extversion = '1.0' WHERE extname = 'milestones'" >/dev/null
is "$(P -c "SELECT * FROM milestones.check_cluster() WHERE item LIKE 'extension%'")" "0|extension milestones|1.0|1.2" \
   "check_cluster() shows a partition at another extension version"
so_q n0 part0 "UPDATE pg_extension SET extversion = '1.2' WHERE extname = 'milestones'" >/dev/null
P -c "SELECT milestones.set_setting('max_milestones', '3')" -c "SELECT milestones.set_seller_eligibility(77, false)" \
  -c "SELECT milestones.set_cancellation_reason('fraud_check', 'The payment failed a fraud check.')" >/dev/null
is "$(P -c "SELECT count(*) FROM milestones.check_cluster()")" "0" "repeating the changes through the proxy ends the drift"

# --- dump and restore of a partition keeps its ids ----------------------------------------
before=$(so_q n1 part1 "SELECT max(order_id) FROM milestones.orders")
so_run "$SO_BIN/pg_dump" -h "$SO_DIR/sock" -p "${SO_PORT[n1]}" -U postgres -Fc -f "$SO_DIR/part1.dump" part1
so_psql n1 postgres -q -c "DROP DATABASE part1 WITH (FORCE)" -c "CREATE DATABASE part1" >/dev/null
so_run "$SO_BIN/pg_restore" -h "$SO_DIR/sock" -p "${SO_PORT[n1]}" -U postgres -d part1 "$SO_DIR/part1.dump" 2>"$SO_DIR/restore.err"
is "$(so_q n1 part1 "SELECT k || ' of ' || n FROM milestones.partition_config")" "1 of 4" "the restored partition still knows it is partition 1 of 4"
s1=$(P -c "SELECT s FROM generate_series(100, 400) s WHERE hashint8(s::bigint) & 3 = 1 LIMIT 1")
P -c "SELECT milestones.set_seller_eligibility($s1, true)" >/dev/null
new=$(APP -c "SELECT milestones.create_offer($s1, 20, 'design', '$MS2')")
ok $([ -n "$new" ] && [ $((new % 4)) -eq 1 ] && [ "$new" -gt "$before" ] && echo 0 || echo 1) \
   "a new order on the restored partition has an id of partition 1, after the old ones ($new > $before)"
is "$(APP -c "SELECT state FROM milestones.order_status($new)")" "offered" "and the proxy finds it there"

# --- password logins over TCP -------------------------------------------------------------
is "$(so_q n2 postgres "SELECT count(*) FILTER (WHERE auth_method IN ('scram-sha-256','md5')) > 0, count(*) FILTER (WHERE auth_method NOT IN ('scram-sha-256','md5')) FROM pg_hba_file_rules WHERE type = 'host'")" \
   "t|0" "partitions accept TCP logins with a password only"
ok $(grep -q "connection authorized: user=shop_app database=part2" "$SO_DIR/n2.log"; echo $?) \
   "the proxy logged in to a partition as the calling role (its user mapping)"
so_q px proxy "ALTER USER MAPPING FOR shop_reader SERVER milestones_cluster OPTIONS (SET password 'wrong')" >/dev/null
e=$(err RDR "SELECT milestones.order_status($new)")
ok $([[ "$e" == *"password authentication failed for user \"shop_reader\""* ]] && echo 0 || echo 1) \
   "with a wrong password in the user mapping the partition refuses the login"
diag "$e"

# --- a stopped partition fails only the calls routed to it ----------------------------------
so_stop n2
id2=$(grep -E "^[0-9]+$" <<<"$ids" | awk '$1 % 4 == 2' | head -1)
e=$(err APP "SELECT milestones.order_status($id2)")
ok $([[ "$e" == *"[part2]"* && "$e" == *"port ${SO_PORT[n2]}"* ]] && echo 0 || echo 1) \
   "a call routed to the stopped partition fails, naming it (database, host and port)"
diag "$e"
fine=0
for k in 0 1 3; do
  idk=$(grep -E "^[0-9]+$" <<<"$ids" | awk -v k=$k '$1 % 4 == k' | head -1)
  [ "$(APP -c "SELECT order_id FROM milestones.order_status($idk)")" == "$idk" ] && fine=$((fine + 1))
done
is "$fine" "3" "calls routed to the three other partitions keep working"
is "$(P -c "SELECT partition || ' ' || item FROM milestones.check_cluster()")" "2 error" "check_cluster() names the unreachable partition"
so_stop n0; so_stop n1; so_stop n3
e=$(err APP "SELECT milestones.deliver(NULL, 10)")
is "${e%%|*}" "22023" "with every partition down, a NULL order_id still gets 22023: no partition was asked"
so_start n2
is "$(APP -c "SELECT order_id FROM milestones.order_status($id2)")" "$id2" "partition 2 back: its orders are reached again"

exit $((TAP_FAILED > 0))
