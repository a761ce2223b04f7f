#!/usr/bin/env bash
# What a pooled edge could save on this host (issue 22): three ways to give a container an
# interface on an OVN logical port that already exists (a pooled port: no NB write), timed
# with the command-line tools (each command's process start is in the figures, alike for all):
#   cold   a veth born with its peer in the container netns, its host end added to br-int with
#          iface-id, then the wait for ovn-controller's ovn-installed (what Courier does today);
#   swap   the port already bound on this chassis through a placeholder interface (flows
#          installed); at attach a veth born in the netns, and one OVSDB transaction that
#          deletes the placeholder and adds the new end with the same iface-id and the
#          placeholder's ofport (ofport_request), then the wait for ovn-installed;
#   move   a veth pre-plugged on br-int (bound, flows installed) whose peer waits in the host
#          netns; at attach the peer is moved into the netns, renamed, addressed, up.
#   floor  the cold path's veth and addressing alone, no switch: what the tools themselves cost.
# For each: the time to ready (the tool returned; cold/swap: ovn-installed) and the time until
# the container's first ping of a peer on the switch is answered. Prints p50/p90 per method.
# Root; OVN running (scripts/ovn.sh start). Makes and removes its own switch, netns and links.
#   scripts/measure-edge.sh [ROUNDS]   (default 20)
set -euo pipefail
R=${1:-20}
P=$$
LS=edgem-$P
now() { date +%s%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", (b - a) / 1e6}'; }
cleanup() {
  set +e
  for p in $(ovs-vsctl list-ports br-int | grep "^em[0-9a-z]*$P"); do ovs-vsctl --if-exists del-port br-int "$p"; done
  for l in $(ip -o link | awk -F': ' '{print $2}' | sed 's/@.*//' | grep "^em[0-9a-z]*$P"); do ip link del "$l" 2>/dev/null; done
  for n in $(ip netns list | awk '{print $1}' | grep "^em.*-$P$"); do ip netns del "$n"; done
  ovn-nbctl --if-exists ls-del "$LS"
}
trap cleanup EXIT
ovn-nbctl ls-add "$LS"
ovn-nbctl lsp-add "$LS" "$LS-peer" -- lsp-set-addresses "$LS-peer" "02:ee:ff:00:00:02 10.250.0.2"
ip netns add "empeer-$P"
ip link add "emp$P" type veth peer name eth0 netns "empeer-$P"
ip -n "empeer-$P" addr add 10.250.0.2/16 dev eth0; ip -n "empeer-$P" link set eth0 address 02:ee:ff:00:00:02
ip -n "empeer-$P" link set eth0 up; ip link set "emp$P" up
ethtool -K "emp$P" tx off >/dev/null 2>&1 || true
ovs-vsctl add-port br-int "emp$P" -- set interface "emp$P" external_ids:iface-id="$LS-peer"
ovs-vsctl --timeout=20 wait-until interface "emp$P" external_ids:ovn-installed=true
declare -A READY PING
i=0
lsp() {  # N: a pooled port's name, MAC and IP
  LSP="$LS-$1"; MAC=$(printf '02:ee:00:00:%02x:%02x' $(( $1 / 256 )) $(( $1 % 256 ))); IP="10.250.$(( 1 + $1 / 250 )).$(( 1 + $1 % 250 ))"
  ovn-nbctl lsp-add "$LS" "$LSP" -- lsp-set-addresses "$LSP" "$MAC $IP"
}
in_ns() {  # NETNS IFNAME: address, up, and the netns ready to ping
  ip -n "$1" link set "$2" address "$MAC" 2>/dev/null || true
  ip -n "$1" addr add "$IP/16" dev "$2"; ip -n "$1" link set "$2" up
}
first_ping() {  # NETNS T0: ms from T0 until a ping is answered (10 ms tries), or "lost"
  local k; for k in $(seq 300); do
    ip netns exec "$1" ping -c 1 -W 0.01 10.250.0.2 >/dev/null 2>&1 && { ms "$2" "$(now)"; return; }
  done; echo lost
}
for r in $(seq "$R"); do
  for m in floor cold swap move; do
    i=$(( i + 1 )); lsp "$i"; ns="em$m$i-$P"; ip netns add "$ns"; h="em$m$i$P"
    case $m in
      floor)  # the same tools' cost with no switch at all (no ping: nothing to answer)
        t0=$(now)
        ip link add "$h" type veth peer name eth0 netns "$ns"; ip link set "$h" up
        in_ns "$ns" eth0
        READY[$m]+="$(ms "$t0" "$(now)") "; continue ;;
      cold)
        t0=$(now)
        ip link add "$h" type veth peer name eth0 netns "$ns"; ip link set "$h" up
        in_ns "$ns" eth0
        ovs-vsctl --no-wait add-port br-int "$h" -- set interface "$h" external_ids:iface-id="$LSP"
        ovs-vsctl --timeout=20 wait-until interface "$h" external_ids:ovn-installed=true ;;
      swap)
        ph="emph$i$P"
        ip link add "$ph" type veth peer name "emphp$i$P"; ip link set "$ph" up
        ovs-vsctl add-port br-int "$ph" -- set interface "$ph" external_ids:iface-id="$LSP"
        ovs-vsctl --timeout=20 wait-until interface "$ph" external_ids:ovn-installed=true
        of=$(ovs-vsctl get interface "$ph" ofport)
        t0=$(now)
        ip link add "$h" type veth peer name eth0 netns "$ns"; ip link set "$h" up
        in_ns "$ns" eth0
        ovs-vsctl --no-wait del-port br-int "$ph" -- add-port br-int "$h" \
          -- set interface "$h" external_ids:iface-id="$LSP" ofport_request="$of"
        ovs-vsctl --timeout=20 wait-until interface "$h" external_ids:ovn-installed=true
        ip link del "$ph" ;;
      move)
        ip link add "$h" type veth peer name "emc$i$P"; ip link set "$h" up
        ovs-vsctl add-port br-int "$h" -- set interface "$h" external_ids:iface-id="$LSP"
        ovs-vsctl --timeout=20 wait-until interface "$h" external_ids:ovn-installed=true
        t0=$(now)
        ip link set "emc$i$P" netns "$ns"; ip -n "$ns" link set "emc$i$P" name eth0
        in_ns "$ns" eth0 ;;
    esac
    t1=$(now)
    READY[$m]+="$(ms "$t0" "$t1") "; fp=$(first_ping "$ns" "$t0"); PING[$m]+="$fp "
    [ "$fp" = lost ] && { echo "$m $i: no answer; ofport $(ovs-vsctl get interface "$h" ofport) (asked ${of:-}), $(ip netns exec "$ns" ping -c 1 -W 1 10.250.0.2 | grep -c "bytes from") answer(s) to a 1 s ping" >&2; }
  done
done
stat() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{printf "p50 %6.1f  p90 %6.1f  max %6.1f  (n=%d)", a[int((NR+1)/2)], a[int(NR*0.9+0.999)], a[NR], NR}'; }
echo "measure-edge: $R rounds each, OVN $(ovn-nbctl --version | head -1 | awk '{print $2}'), OVS $(ovs-vsctl --version | head -1 | awk '{print $4}'), $(uname -r)"
echo "floor ready:      $(echo "${READY[floor]}" | stat) ms"
for m in cold swap move; do
  echo "$m  ready:      $(echo "${READY[$m]}" | stat) ms"
  echo "$m  first ping: $(echo "${PING[$m]}" | tr ' ' '\n' | grep -v lost | stat) ms; unanswered: $(echo "${PING[$m]}" | tr ' ' '\n' | grep -c lost || true)"
done
