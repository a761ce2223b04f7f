#!/usr/bin/env bash
# Single-node OVN with the userspace datapath (this kernel has no openvswitch module), from
# Debian's packages. Usage: scripts/ovn.sh start|stop|status. Idempotent; root.
set -euo pipefail
OVS_CTL=/usr/share/openvswitch/scripts/ovs-ctl
OVN_CTL=/usr/share/ovn/scripts/ovn-ctl
NB_SOCK=/var/run/ovn/ovnnb_db.sock
SB_SOCK=/var/run/ovn/ovnsb_db.sock
OVS_SOCK=/var/run/openvswitch/db.sock

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
ovsdb_up() { running /var/run/openvswitch/ovsdb-server.pid; }
vswitchd_up() { running /var/run/openvswitch/ovs-vswitchd.pid; }
northd_up() { running /var/run/ovn/ovn-northd.pid && running /var/run/ovn/ovnnb_db.pid && running /var/run/ovn/ovnsb_db.pid; }
controller_up() { running /var/run/ovn/ovn-controller.pid; }

status() {
  local ok=0
  for s in ovsdb_up vswitchd_up northd_up controller_up; do
    if $s; then echo "ovn.sh: ${s%_up} running"; else echo "ovn.sh: ${s%_up} NOT running"; ok=1; fi
  done
  if [ $ok = 0 ] && ! ovs-vsctl --timeout=2 br-exists br-int 2>/dev/null; then echo "ovn.sh: br-int missing"; ok=1; fi
  return $ok
}

start() {
  if ovsdb_up && vswitchd_up && northd_up && controller_up && ovs-vsctl --timeout=2 br-exists br-int 2>/dev/null; then
    echo "ovn.sh: already running"; return 0
  fi
  mkdir -p /var/run/openvswitch /var/run/ovn /var/log/openvswitch /var/log/ovn
  ovsdb_up || $OVS_CTL --no-ovs-vswitchd --system-id=random start >/dev/null
  # Before ovn-controller starts: netdev br-int, encap settings (without them no port binds).
  ovs-vsctl --no-wait --timeout=5 set open_vswitch . \
    external_ids:ovn-remote="unix:$SB_SOCK" \
    external_ids:ovn-encap-type=geneve \
    external_ids:ovn-encap-ip=127.0.0.1 \
    external_ids:ovn-bridge-datapath-type=netdev \
    external_ids:hostname="$(hostname)"
  vswitchd_up || $OVS_CTL --no-ovsdb-server start >/dev/null 2>&1
  northd_up || $OVN_CTL start_northd >/dev/null
  controller_up || $OVN_CTL start_controller >/dev/null
  for _ in $(seq 100); do
    if ovs-vsctl --timeout=2 br-exists br-int 2>/dev/null &&
       [ -n "$(ovn-sbctl --timeout=2 --bare --columns=name list Chassis 2>/dev/null)" ]; then
      echo "ovn.sh: single-node OVN up (NB unix:$NB_SOCK, OVS unix:$OVS_SOCK, br-int netdev)"
      return 0
    fi
    sleep 0.1
  done
  echo "ovn.sh: OVN did not come up within 10 s" >&2
  status || true
  return 1
}

stop() {
  $OVN_CTL stop_controller >/dev/null 2>&1 || true
  $OVN_CTL stop_northd >/dev/null 2>&1 || true
  $OVS_CTL stop >/dev/null 2>&1 || true
  echo "ovn.sh: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  restart) stop; start ;;
  *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
esac
