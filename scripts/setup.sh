#!/usr/bin/env bash
# Command one (README): on a fresh Debian 12 machine, as root, sets everything up and shows
# Courier's main job: installs OVS/OVN and the CNI reference plugins from Debian, builds
# Courier, starts single-node OVN (userspace datapath), starts the Courier daemon, then attaches
# two "containers" (network namespaces) to one OVN logical switch and pings between them.
# Idempotent: run it again and it reuses what is there. Clean up with scripts/setup.sh clean.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SOCK=${COURIER_SOCKET:-/run/courier/courier.sock}
LOG=${COURIER_DAEMON_LOG:-/var/log/courier.log}
NET=demo
SUBNET=10.99.0.0/24

if [ "$(id -u)" != 0 ]; then echo "setup.sh: run as root (it installs packages and creates netns)" >&2; exit 1; fi

stop_daemon() {
  if [ -f /run/courier/courier.pid ] && kill -0 "$(cat /run/courier/courier.pid)" 2>/dev/null; then
    kill "$(cat /run/courier/courier.pid)"; sleep 0.5
  fi
  rm -f /run/courier/courier.pid
}

if [ "${1:-}" = clean ]; then
  for ns in demo-a demo-b; do
    courier --socket "$SOCK" detach --netns /var/run/netns/$ns >/dev/null 2>&1 || true
    ip netns del $ns 2>/dev/null || true
  done
  courier --socket "$SOCK" network delete $NET >/dev/null 2>&1 || true
  stop_daemon
  scripts/ovn.sh stop
  echo "setup.sh: cleaned up"
  exit 0
fi

echo "== 1/5 packages (Debian: openvswitch-switch, ovn-central, ovn-host, containernetworking-plugins)"
scripts/install-deps.sh
command -v cargo >/dev/null || { echo "setup.sh: cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }

echo "== 2/5 build (one static binary)"
BIN=$(scripts/build-static.sh)
install -m 0755 "$BIN" /usr/local/bin/courier
mkdir -p /opt/cni/bin && ln -sf /usr/local/bin/courier /opt/cni/bin/courier

echo "== 3/5 single-node OVN (userspace datapath)"
scripts/ovn.sh start

echo "== 4/5 courier daemon"
stop_daemon
mkdir -p /run/courier
nohup courier daemon >>"$LOG" 2>&1 &
echo $! > /run/courier/courier.pid
for _ in $(seq 100); do courier --socket "$SOCK" status >/dev/null 2>&1 && break; sleep 0.1; done
courier --socket "$SOCK" status

echo "== 5/5 two containers on one OVN network"
courier --socket "$SOCK" network show $NET >/dev/null 2>&1 || courier --socket "$SOCK" network create $NET --subnet $SUBNET
for ns in demo-a demo-b; do
  courier --socket "$SOCK" detach --netns /var/run/netns/$ns >/dev/null 2>&1 || true
  ip netns del $ns 2>/dev/null || true
  ip netns add $ns
  courier --socket "$SOCK" attach --netns /var/run/netns/$ns --network $NET
done
IP_B=$(ip netns exec demo-b ip -o -4 addr show eth0 | awk '{print $4}' | cut -d/ -f1)
courier --socket "$SOCK" port list
echo "-- ping from demo-a to demo-b ($IP_B) through OVN:"
ip netns exec demo-a ping -c 3 -i 0.2 "$IP_B"
cat <<MSG

Courier is running (log: $LOG, socket: $SOCK). Try:
  ip netns exec demo-a ping $IP_B
  courier status; courier port list; ovn-nbctl show
  CNI plugin: /opt/cni/bin/courier (netconf: {"cniVersion":"1.1.0","name":"$NET","type":"courier"})
Clean up with: scripts/setup.sh clean
MSG
