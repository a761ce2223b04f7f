#!/usr/bin/env bash
# Courier's CNI ADD/DEL on a Neutron network against bare Neutron port create/delete through the
# API, in the same run (`courier bench attach --network`). A benchmark, not a test: it prints
# numbers and asserts nothing about them; it exits non-zero when a run or a setup step fails.
# Root.
#
#   scripts/bench-neutron.sh [N] [--pause-ms MS]
#
# Two runs of N (default 50) sequential calls each:
#   back to back   every call right after the previous one. A Courier port goes ACTIVE 0.2-0.5 s
#                  after its ADD returned (ovn-controller reported it up; Neutron's one worker
#                  updates it), so that work of Neutron's lands inside the next ADD's port POST;
#                  the baseline's ports are never plugged and cause none.
#   settled        MS (default 1000) of think time before each call, Courier and the baseline
#                  taking turns (ADD i, create i; then DEL i, delete i): each call meets a Neutron
#                  that has finished the previous one's work, and both meet the same machine.
# The baseline's request is Courier's: device_owner, binding:host_id (this host's chassis), tags.
# Ratio = Courier ADD / Neutron create (and DEL / delete), p50 and p99.
# Then a third: the ADDs and DELs served from a port pool (filled with N first), on this network
# and on an OVN direct one (onbench-<pid>, 10.79.0.0/16), and pooled Neutron / pooled OVN direct.
#
# Uses OVN (scripts/ovn.sh) and Keystone + Neutron (scripts/neutron.sh), which it does not start;
# credentials: cloud courier-admin of /etc/courier-test/clouds.yaml. Its Courier daemon is its
# own: COURIER_BIN (default: scripts/build-static.sh's binary, built if needed), socket and state
# in a temporary directory, COURIER_HOST nbench-<pid>. Its network (nbench-<pid>, 10.78.0.0/16) and
# the daemon are removed on exit, also on failure.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
N=50
PAUSE=1000
while [ $# -gt 0 ]; do
  case "$1" in
    --pause-ms) PAUSE=${2:?--pause-ms needs a number}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    [0-9]*) N=$1; shift ;;
    *) echo "usage: $0 [N] [--pause-ms MS]" >&2; exit 2 ;;
  esac
done
[ "$N" -ge 1 ] 2>/dev/null || { echo "bench-neutron: N must be a positive number" >&2; exit 2; }
[ "$PAUSE" -ge 1 ] 2>/dev/null || { echo "bench-neutron: --pause-ms must be a positive number" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "bench-neutron: needs root (namespaces, OVS)" >&2; exit 2; }
"$here/neutron.sh" status >/dev/null 2>&1 || { echo "bench-neutron: Neutron is not running: scripts/neutron.sh start" >&2; exit 2; }
BIN=${COURIER_BIN:-}
[ -n "$BIN" ] || BIN="$here/../$("$here/build-static.sh")"
export OS_CLIENT_CONFIG_FILE=/etc/courier-test/clouds.yaml
dir=$(mktemp -d /tmp/courier-bench-neutron.XXXXXX)
sock=$dir/api.sock
net=nbench-$$
pid=""
cleanup() {
  set +e
  if [ -n "$pid" ]; then
    "$BIN" --socket "$sock" network delete "$net" >/dev/null 2>&1
    "$BIN" --socket "$sock" network delete "o$net" >/dev/null 2>&1
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  fi
  rm -rf "$dir"
}
trap cleanup EXIT
COURIER_SOCKET=$sock COURIER_STATE_DIR=$dir/state COURIER_HOST=nbench-$$ COURIER_DOCKER=0 \
  COURIER_NEUTRON_CLOUD=courier-admin COURIER_POOL=1 COURIER_POOL_MIN=0 "$BIN" daemon > "$dir/daemon.log" 2>&1 &
pid=$!
# `courier status` succeeds once every backend and binding answers.
for _ in $(seq 300); do
  "$BIN" --socket "$sock" status >/dev/null 2>&1 && break
  sleep 0.1
done
"$BIN" --socket "$sock" status >/dev/null || { cat "$dir/daemon.log" >&2; echo "bench-neutron: the daemon's backends did not come up" >&2; exit 1; }
"$BIN" --socket "$sock" network create "$net" --backend neutron --subnet 10.78.0.0/16 >/dev/null
# One untimed call first (the daemon's caches, Neutron's first request on this network).
"$BIN" --socket "$sock" bench attach -n 1 --network "$net" --cloud courier-admin --no-reference >/dev/null
# The daemon's own phases of the ADDs of lines FROM.. of its log: the median of each.
phases() {
  tail -n +"$1" "$dir/daemon.log" | sed 's/\x1b\[[0-9;]*m//g' | grep ' attached ' | awk '{
      for (i = 1; i <= NF; i++) if (split($i, kv, "=") == 2 && kv[1] ~ /_ms$/) v[kv[1]] = v[kv[1]] " " kv[2]
    } END {
      line = "daemon, median per phase:"
      n = split("intent_ms port_ms plug_ms up_ms edge_ms total_ms", keys, " ")
      for (k = 1; k <= n; k++) {
        c = split(substr(v[keys[k]], 2), a, " "); if (!c) continue
        for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
        line = line sprintf(" %s=%.1f", keys[k], a[int((c + 1) / 2)])
      }
      print line
    }'
}
from=$(( $(wc -l < "$dir/daemon.log") + 1 ))
echo "== back to back"
"$BIN" --socket "$sock" bench attach -n "$N" --network "$net" --cloud courier-admin --no-reference
phases "$from"
from=$(( $(wc -l < "$dir/daemon.log") + 1 ))
echo "== settled (${PAUSE} ms before each call, in turns)"
"$BIN" --socket "$sock" bench attach -n "$N" --network "$net" --cloud courier-admin --no-reference --pause-ms "$PAUSE"
phases "$from"
# Port pools (issue 22): the same ADD/DEL served from a pool, on this Neutron network and on an
# OVN direct one, one after the other in this run (pooled Neutron against pooled OVN direct).
echo "== from a port pool: Neutron, then OVN direct"
"$BIN" --socket "$sock" network create "o$net" --subnet 10.79.0.0/16 >/dev/null
"$BIN" --socket "$sock" bench attach -n "$N" --network "$net" --cloud courier-admin --no-reference --pooled --output "$dir/pool-neutron.json"
"$BIN" --socket "$sock" bench attach -n "$N" --network "o$net" --no-reference --pooled --output "$dir/pool-ovn.json"
python3 - "$dir/pool-neutron.json" "$dir/pool-ovn.json" <<'PY'
import json, sys
neu, ovn = (json.load(open(f))["pooled"]["add"] for f in sys.argv[1:3])
print("ratio pooled neutron/pooled ovn: ADD p50 %.2fx, p99 %.2fx (neutron %.2f ms, ovn %.2f ms)"
      % (neu["p50_ms"] / ovn["p50_ms"], neu["p99_ms"] / ovn["p99_ms"], neu["p50_ms"], ovn["p50_ms"]))
PY
