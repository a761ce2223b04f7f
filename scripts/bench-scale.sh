#!/usr/bin/env bash
# Does Courier's cost per attach grow with the cloud? A benchmark, not a test: it prints numbers
# and asserts nothing about them; it exits non-zero when a setup step fails. Root.
#
#   scripts/bench-scale.sh [SIZE ...]      (default: 10 1000 10000)
#
# For each SIZE, in increasing order, one Neutron network holds SIZE unrelated ports (made in
# bulk POSTs of 500 through the API, no device, no binding: what other tenants' VMs leave on a
# shared network), and Courier's own daemon runs M=10 CNI ADD+DEL pairs on it
# (`courier bench attach -n 10 --no-reference`) and one `courier status`. Printed per SIZE: the
# Neutron requests Courier made per ADD+DEL and for the STATUS (counted in the daemon's debug
# log of courier_openstack's requests), and the ADD/DEL p50 times. Courier's per-attach
# requests must not grow with SIZE.
#
# Uses OVN (scripts/ovn.sh) and Keystone + Neutron (scripts/neutron.sh), which it does not start;
# credentials: cloud courier-admin of /etc/courier-test/clouds.yaml. COURIER_BIN as in
# bench-neutron.sh. Its network (nscale-<pid>, 10.80.0.0/16) with every port on it and the
# daemon are removed on exit, also on failure.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(10 1000 10000)
for s in "${SIZES[@]}"; do
  [ "$s" -ge 0 ] 2>/dev/null || { echo "bench-scale: sizes are numbers, got '$s'" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "bench-scale: needs root (namespaces, OVS)" >&2; exit 2; }
"$here/neutron.sh" status >/dev/null 2>&1 || { echo "bench-scale: Neutron is not running: scripts/neutron.sh start" >&2; exit 2; }
BIN=${COURIER_BIN:-}
[ -n "$BIN" ] || BIN="$here/../$("$here/build-static.sh")"
export OS_CLIENT_CONFIG_FILE=/etc/courier-test/clouds.yaml
M=10
N_API=http://127.0.0.1:9696/v2.0
token=$(curl -fsi -H "Content-Type: application/json" -d '{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"admin","domain":{"name":"Default"},"password":"'"${COURIER_OS_ADMIN_PASSWORD:-courier-admin-secret}"'"}}},"scope":{"project":{"name":"admin","domain":{"name":"Default"}}}}}' \
  http://127.0.0.1:5000/v3/auth/tokens | tr -d '\r' | awk 'tolower($1) == "x-subject-token:" {print $2}')
[ -n "$token" ] || { echo "bench-scale: no Keystone token for admin" >&2; exit 1; }
api() { curl -fsS -H "X-Auth-Token: $token" -H "Content-Type: application/json" "$@"; }
# The admin project's port quota (Neutron's default: 500) lifted for the unrelated ports: this
# changes the test Neutron's admin project for everyone, and stays.
admin_project=$(api "$N_API/networks?limit=1&fields=project_id" >/dev/null; curl -fsS -H "X-Auth-Token: $token" http://127.0.0.1:5000/v3/auth/tokens -H "X-Subject-Token: $token" | jq -r '.token.project.id')
api -X PUT -d '{"quota": {"port": -1}}' "$N_API/quotas/$admin_project" >/dev/null
dir=$(mktemp -d /tmp/courier-bench-scale.XXXXXX)
sock=$dir/api.sock
net=nscale-$$
pid=""
net_id=""
cleanup() {
  set +e
  if [ -n "$net_id" ]; then
    for id in $(api "$N_API/ports?network_id=$net_id&device_owner=&fields=id" | jq -r '.ports[].id'); do
      api -X DELETE "$N_API/ports/$id" >/dev/null
    done
  fi
  if [ -n "$pid" ]; then
    "$BIN" --socket "$sock" network delete "$net" >/dev/null 2>&1
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  fi
  # A run stopped half way leaves Courier's own ports of the bench (its daemon's state goes with
  # $dir, so no reconcile would ever find them) and so the network: every port but Neutron's
  # own (network:*) goes, then the network.
  if [ -n "$net_id" ] && api "$N_API/networks/$net_id" >/dev/null 2>&1; then
    for id in $(api "$N_API/ports?network_id=$net_id&fields=id&fields=device_owner" | jq -r '.ports[] | select(.device_owner | startswith("network:") | not) | .id'); do
      api -X DELETE "$N_API/ports/$id" >/dev/null
    done
    api -X DELETE "$N_API/networks/$net_id" >/dev/null
  fi
  rm -rf "$dir"
}
trap cleanup EXIT
COURIER_SOCKET=$sock COURIER_STATE_DIR=$dir/state COURIER_HOST=nscale-$$ COURIER_DOCKER=0 \
  COURIER_LOG=info,courier_openstack=debug COURIER_NEUTRON_CLOUD=courier-admin "$BIN" daemon > "$dir/daemon.log" 2>&1 &
pid=$!
for _ in $(seq 300); do
  "$BIN" --socket "$sock" status >/dev/null 2>&1 && break
  sleep 0.1
done
"$BIN" --socket "$sock" status >/dev/null || { cat "$dir/daemon.log" >&2; echo "bench-scale: the daemon's backends did not come up" >&2; exit 1; }
"$BIN" --socket "$sock" network create "$net" --backend neutron --subnet 10.80.0.0/16 >/dev/null
net_id=$(api "$N_API/networks?name=$net" | jq -r '.networks[0].id')
"$BIN" --socket "$sock" bench attach -n 1 --network "$net" --cloud courier-admin --no-reference >/dev/null
requests() { sed 's/\x1b\[[0-9;]*m//g' "$dir/daemon.log" | grep -c 'openstack request' || true; }
have=0
printf '%-8s %-22s %-18s %-10s %-10s %s\n' ports "requests per ADD+DEL" "requests STATUS" "ADD p50" "DEL p50" "make ports"
for size in "${SIZES[@]}"; do
  t0=$(date +%s)
  while [ "$have" -lt "$size" ]; do
    n=$(( size - have )); [ "$n" -gt 500 ] && n=500
    body=$(jq -nc --arg net "$net_id" --argjson n "$n" --argjson from "$have" \
      '{ports: [range($n) | {network_id: $net, name: "unrelated-\($from + .)"}]}')
    api -X POST -d "$body" "$N_API/ports" >/dev/null
    have=$(( have + n ))
  done
  made_s=$(( $(date +%s) - t0 ))
  before=$(requests)
  out=$("$BIN" --socket "$sock" bench attach -n "$M" --network "$net" --cloud courier-admin --no-reference --output "$dir/run.json")
  mid=$(requests)
  "$BIN" --socket "$sock" status >/dev/null
  after=$(requests)
  add=$(jq -r '.courier.add.p50_ms | . * 10 | round / 10 | "\(.) ms"' "$dir/run.json")
  del=$(jq -r '.courier.del.p50_ms | . * 10 | round / 10 | "\(.) ms"' "$dir/run.json")
  printf '%-8s %-22s %-18s %-10s %-10s %ss\n' "$size" "$(awk -v a="$before" -v b="$mid" -v m="$M" 'BEGIN {printf "%.1f", (b - a) / m}')" \
    "$(( after - mid ))" "${add:-?}" "${del:-?}" "$made_s"
  [ -n "$add" ] || echo "$out"
done
