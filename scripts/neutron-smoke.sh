#!/usr/bin/env bash
# Smoke test of the Neutron + Keystone that scripts/neutron.sh runs, end to end on the host's OVN:
# Keystone tokens (and a 401 for a wrong password), network + subnet + port bound to this host's
# chassis via Neutron's API, its Logical_Switch_Port in the host's NB, a veth on br-int with
# iface-id=<port id> making the port ACTIVE, the noauth API; then removes everything it made.
# Root; needs `scripts/neutron.sh start` first. Prints each check; exits non-zero on a failure.
set -euo pipefail
KS=http://127.0.0.1:5000/v3
API=http://127.0.0.1:9696
NOAUTH=http://127.0.0.1:9697
NB=unix:/var/run/ovn/ovnnb_db.sock
ADMIN_PW=${COURIER_OS_ADMIN_PASSWORD:-courier-admin-secret}
DEMO_PW=courier-demo-secret
tag=smoke$$
NS=courier-$tag
VH=cs${$}h VC=cs${$}c          # veth ends (host end on br-int, container end in $NS)
passed=0 failed=0
ok() { echo "ok:   $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); echo "$passed passed, $failed failed"; exit 1; }

token() { # USER PROJECT PASSWORD -> token (empty if none)
  curl -s -m 10 -D - -o /dev/null -X POST "$KS/auth/tokens" -H 'Content-Type: application/json' \
    -d "{\"auth\":{\"identity\":{\"methods\":[\"password\"],\"password\":{\"user\":{\"name\":\"$1\",\"domain\":{\"name\":\"Default\"},\"password\":\"$3\"}}},\"scope\":{\"project\":{\"name\":\"$2\",\"domain\":{\"name\":\"Default\"}}}}}" \
    | awk 'tolower($1)=="x-subject-token:"{print $2}' | tr -d '\r' || true
}
code() { curl -s -m 20 -o /dev/null -w '%{http_code}' "$@" || true; }
# api METHOD PATH [JSON]: Neutron call with the admin token; body to stdout, fails unless 2xx
api() {
  local out c
  out=$(curl -s -m 30 -w '\n%{http_code}' -X "$1" "$API$2" -H "X-Auth-Token: $TOK" \
        -H 'Content-Type: application/json' ${3:+-d "$3"}) || fail "$1 $2: no answer"
  c=${out##*$'\n'}; out=${out%$'\n'*}
  [ "${c:0:1}" = 2 ] || fail "$1 $2 -> HTTP $c: $out"
  printf '%s' "$out"
}

NET="" SUB="" PORT=""
cleanup() {
  set +e
  ovs-vsctl --timeout=5 --if-exists del-port br-int "$VH"
  ip link del "$VH" 2>/dev/null
  ip netns del "$NS" 2>/dev/null
  [ -n "$PORT" ] && curl -s -m 30 -o /dev/null -X DELETE "$API/v2.0/ports/$PORT" -H "X-Auth-Token: $TOK"
  [ -n "$SUB" ] && curl -s -m 30 -o /dev/null -X DELETE "$API/v2.0/subnets/$SUB" -H "X-Auth-Token: $TOK"
  [ -n "$NET" ] && curl -s -m 30 -o /dev/null -X DELETE "$API/v2.0/networks/$NET" -H "X-Auth-Token: $TOK"
}
trap cleanup EXIT

# --- Keystone
[ "$(code "$KS")" = 200 ] || fail "Keystone GET /v3 does not answer 200"
TOK=$(token admin admin "$ADMIN_PW"); [ -n "$TOK" ] || fail "no token for admin"
ok "Keystone issued a token for admin/admin"
c=$(code -X POST "$KS/auth/tokens" -H 'Content-Type: application/json' \
  -d '{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"admin","domain":{"name":"Default"},"password":"wrong-password"}}}}}')
[ "$c" = 401 ] || fail "wrong password gave HTTP $c, not 401"
ok "wrong password -> 401"
DTOK=$(token demo demo "$DEMO_PW"); [ -n "$DTOK" ] || fail "no token for demo/demo"
ok "Keystone issued a token for demo/demo"
cat_url=$(curl -s -m 10 "$KS/auth/tokens" -H "X-Auth-Token: $TOK" -H "X-Subject-Token: $TOK" \
  | jq -r '.token.catalog[] | select(.type=="network") | .endpoints[] | select(.interface=="public" and .region=="RegionOne") | .url')
[ "$cat_url" = "$API" ] || fail "catalog network/public/RegionOne is '$cat_url', not $API"
ok "catalog: network public endpoint $API in RegionOne"

# --- Neutron auth
c=$(code "$API/v2.0/networks"); [ "$c" = 401 ] || fail "Neutron without token gave $c, not 401"
ok "Neutron (keystone) without token -> 401"
c=$(code -H "X-Auth-Token: not-a-token" "$API/v2.0/networks"); [ "$c" = 401 ] || fail "bad token gave $c, not 401"
ok "Neutron (keystone) with a bad token -> 401"
c=$(code -H "X-Auth-Token: $DTOK" "$API/v2.0/networks"); [ "$c" = 200 ] || fail "demo token gave $c, not 200"
ok "Neutron (keystone) with demo's token -> 200"
c=$(code "$NOAUTH/v2.0/networks"); [ "$c" = 200 ] || fail "noauth Neutron without token gave $c, not 200"
ok "Neutron (noauth) lists networks without a token -> 200"

# --- network, subnet, bound port
NET=$(api POST /v2.0/networks "{\"network\":{\"name\":\"courier-$tag\"}}" | jq -r .network.id)
ok "network $NET created ($(api GET "/v2.0/networks/$NET" | jq -r '.network["provider:network_type"]'))"
SUB=$(api POST /v2.0/subnets "{\"subnet\":{\"network_id\":\"$NET\",\"ip_version\":4,\"cidr\":\"10.250.77.0/24\",\"name\":\"courier-$tag\"}}" | jq -r .subnet.id)
ok "subnet $SUB 10.250.77.0/24 created"
ovn-nbctl --db=$NB --timeout=5 list Logical_Switch "neutron-$NET" >/dev/null 2>&1 || fail "no Logical_Switch neutron-$NET in NB"
ok "Logical_Switch neutron-$NET in the host's NB"
[ "$(code "$NOAUTH/v2.0/networks/$NET")" = 200 ] || fail "noauth API does not see network $NET"
ok "noauth API sees the same network (same DB)"
HOST=$(ovs-vsctl --timeout=5 get open_vswitch . external_ids:hostname | tr -d '"')
[ -n "$HOST" ] || fail "no external_ids:hostname on the local Open_vSwitch row"
P=$(api POST /v2.0/ports "{\"port\":{\"network_id\":\"$NET\",\"name\":\"courier-$tag\",\"binding:host_id\":\"$HOST\",\"device_owner\":\"compute:courier\",\"device_id\":\"$tag\"}}")
PORT=$(jq -r .port.id <<<"$P"); MAC=$(jq -r .port.mac_address <<<"$P"); IP=$(jq -r '.port.fixed_ips[0].ip_address' <<<"$P")
vif=$(jq -r '.port["binding:vif_type"]' <<<"$P")
[ "$vif" = ovs ] || fail "port binding:vif_type is '$vif', not ovs (host $HOST)"
ok "port $PORT ($MAC $IP) bound to host $HOST: vif_type ovs, status $(jq -r .port.status <<<"$P")"
lsp=$(ovn-nbctl --db=$NB --timeout=5 --bare --columns=addresses list Logical_Switch_Port "$PORT" 2>/dev/null) \
  || fail "no Logical_Switch_Port $PORT in NB"
[ "$lsp" = "$MAC $IP" ] || fail "LSP addresses '$lsp', not '$MAC $IP'"
ok "Logical_Switch_Port $PORT in NB, addresses \"$lsp\""

# --- plug it: veth on br-int with iface-id=<port id>
ip netns add "$NS"
ip link add "$VH" type veth peer name "$VC"
ip link set "$VC" netns "$NS"
ip -n "$NS" link set "$VC" address "$MAC"
ip -n "$NS" addr add "$IP/24" dev "$VC"
ip -n "$NS" link set "$VC" up
ip link set "$VH" up
ethtool -K "$VH" tx off >/dev/null
ip netns exec "$NS" ethtool -K "$VC" tx off >/dev/null
ovs-vsctl --timeout=5 add-port br-int "$VH" -- set Interface "$VH" external_ids:iface-id="$PORT"
ok "veth $VH on br-int with iface-id=$PORT (peer in netns $NS, tx offload off)"
t0=$(date +%s%N) st=""
for _ in $(seq 100); do
  st=$(api GET "/v2.0/ports/$PORT" | jq -r .port.status); [ "$st" = ACTIVE ] && break; sleep 0.2
done
[ "$st" = ACTIVE ] || fail "port still $st 20 s after plugging"
ok "port ACTIVE $(( ($(date +%s%N) - t0) / 1000000 )) ms after plugging (NB up=$(ovn-nbctl --db=$NB --bare --columns=up list Logical_Switch_Port "$PORT"))"

# --- clean up, and check that it is gone
ovs-vsctl --timeout=5 del-port br-int "$VH"; ip link del "$VH"; ip netns del "$NS"
api DELETE "/v2.0/ports/$PORT" >/dev/null
ovn-nbctl --db=$NB --timeout=5 list Logical_Switch_Port "$PORT" >/dev/null 2>&1 && fail "LSP $PORT still in NB after delete"
PORT=""
api DELETE "/v2.0/subnets/$SUB" >/dev/null; SUB=""
api DELETE "/v2.0/networks/$NET" >/dev/null
[ "$(code -H "X-Auth-Token: $TOK" "$API/v2.0/networks/$NET")" = 404 ] || fail "network $NET still there after delete"
ovn-nbctl --db=$NB --timeout=5 list Logical_Switch "neutron-$NET" >/dev/null 2>&1 && fail "Logical_Switch neutron-$NET still in NB"
NET=""
ok "cleaned up: port, veth, OVS port, netns, subnet, network (LSP and Logical_Switch gone from NB)"
echo "neutron-smoke: $passed passed, $failed failed"
