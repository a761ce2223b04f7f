#!/usr/bin/env bash
# What a test run left behind, counted on the whole host and cloud, not by Courier's marks (a
# resource that lost its mark is the leak that matters):
#
#   scripts/leak-check.sh snapshot DIR    record what exists now
#   scripts/leak-check.sh compare DIR     print what exists now and did not then; exit 1 if any
#
# Counted: Neutron networks, ports and trunks (every project, through the admin API, when
# scripts/neutron.sh runs), OVN NB logical switches and switch ports, the OVS ports of br-int,
# network namespaces, the host's links. Names (or ids) are compared, so something made and
# deleted in between is not counted. Root.
set -euo pipefail
cmd=${1:-}
dir=${2:-}
case "$cmd" in snapshot|compare) ;; *) echo "usage: $0 snapshot|compare DIR" >&2; exit 2 ;; esac
[ -n "$dir" ] || { echo "usage: $0 snapshot|compare DIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
now=$(mktemp -d)
trap 'rm -rf "$now"' EXIT

neutron() {
  "$here/neutron.sh" status >/dev/null 2>&1 || return 0
  local token
  token=$(curl -fsi -H "Content-Type: application/json" -d '{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"admin","domain":{"name":"Default"},"password":"'"${COURIER_OS_ADMIN_PASSWORD:-courier-admin-secret}"'"}}},"scope":{"project":{"name":"admin","domain":{"name":"Default"}}}}}' \
    http://127.0.0.1:5000/v3/auth/tokens 2>/dev/null | tr -d '\r' | awk 'tolower($1) == "x-subject-token:" {print $2}') || true
  [ -n "$token" ] || { echo "leak-check: no Keystone token for admin: Neutron not counted" >&2; return 0; }
  local api=http://127.0.0.1:9696/v2.0
  curl -fsS -H "X-Auth-Token: $token" "$api/networks?fields=id&fields=name" | jq -r '.networks[] | "neutron network \(.id) \(.name)"'
  # Neutron's own metadata port comes and goes with its network: counted with it.
  curl -fsS -H "X-Auth-Token: $token" "$api/ports?fields=id&fields=name&fields=device_owner" \
    | jq -r '.ports[] | select(.device_owner != "network:distributed") | "neutron port \(.id) \(.name) \(.device_owner)"'
  curl -fsS -H "X-Auth-Token: $token" "$api/trunks?fields=id&fields=name" | jq -r '.trunks[] | "neutron trunk \(.id) \(.name)"'
}

ovn() {
  command -v ovn-nbctl >/dev/null || return 0
  ovn-nbctl --timeout=10 --bare --columns=name list Logical_Switch 2>/dev/null | sed '/^$/d; s/^/nb switch /' || true
  ovn-nbctl --timeout=10 --bare --columns=name list Logical_Switch_Port 2>/dev/null | sed '/^$/d; s/^/nb port /' || true
  ovs-vsctl --timeout=10 list-ports br-int 2>/dev/null | sed 's/^/ovs port /' || true
}

host() {
  ip netns list 2>/dev/null | awk '{print "netns " $1}'
  ip -o link 2>/dev/null | awk -F': ' '{sub(/@.*/, "", $2); print "link " $2}'
}

{ neutron; ovn; host; } | sort -u > "$now/all"

case "$cmd" in
  snapshot)
    mkdir -p "$dir"
    cp "$now/all" "$dir/before"
    echo "leak-check: $(wc -l < "$dir/before") resources recorded in $dir/before"
    ;;
  compare)
    [ -f "$dir/before" ] || { echo "leak-check: no snapshot in $dir (run: $0 snapshot $dir)" >&2; exit 2; }
    comm -13 "$dir/before" "$now/all" > "$dir/left"
    if [ -s "$dir/left" ]; then
      echo "leak-check: $(wc -l < "$dir/left") resources exist now that did not before the run:"
      sed 's/^/   /' "$dir/left"
      exit 1
    fi
    echo "leak-check: nothing left behind ($(wc -l < "$now/all") resources, as before)"
    ;;
esac
