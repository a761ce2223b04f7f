# Guest scenario: Courier inside the VM with the vlan binding. The VM port is eth1
# ($VM_MAC, $VM_IP/$VM_PREFIX), a trunk: its untagged frames are the VM's own, each tagged one is
# the child port with that tag. The backend is the host's NB at $VM_NB_REMOTE (child LSPs), or
# Neutron when $VM_OS_AUTH_URL is set (trunk subports; see tests/vm/lib.sh); $VM_NET is the Courier
# network, $VM_HOST_IP a port on it outside the VM, and the VM's port already has a child port
# (not Courier's) with tag $VM_TAKEN_TAG. Asserts: a sub-interface with a tag no child port has
# reaches nothing; two containers attached with `--binding vlan` get two different tags, neither
# the taken one, and reach the host port and each other; detach frees the tag (the next attach
# gets it again); after detach that tag and address by hand reach nothing (within 10 s: the
# datapath follows the backend).
# Prints "__attached__ NAME TAG IP" per attach, "__timing__ attach|detach <ms> ms" and "__ok__".
set -euo pipefail
: "${VM_IP:?}" "${VM_PREFIX:?}" "${VM_NET:?}" "${VM_HOST_IP:?}" "${VM_FREE_IP:?}" \
  "${VM_TAKEN_TAG:?}"
sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip link set lo up
ip link set eth1 up
ip addr add "$VM_IP/$VM_PREFIX" dev eth1
ping -c 2 -W 2 "$VM_HOST_IP" >/dev/null && echo "the VM's own port works"
mkdir -p /var/run/netns
for c in w c1 c2 c3; do ip netns add "$c"; done
by_hand() {  # NAME TAG IP: an 802.1Q sub-interface of eth1 in netns w
  ip link add "$1" link eth1 type vlan id "$2"
  ip link set "$1" netns w
  ip -n w addr add "$3/$VM_PREFIX" dev "$1"
  ip -n w link set "$1" up
}
by_hand wrong0 3999 "$VM_FREE_IP"
if ip netns exec w ping -c 2 -W 1 "$VM_HOST_IP" >/dev/null 2>&1; then
  echo "UNEXPECTED: a tag with no child port got through"; exit 1
fi
echo "a wrong tag reaches nothing"
ip -n w link del wrong0

. /scenario/lib.sh
courier_daemon vlan
attach() {  # NETNS (a name, or a path): attach, print "__attached__ NETNS TAG IP", set TAG and IPADDR
  local out t ns=$1
  [ "${ns#/}" != "$ns" ] || ns=/var/run/netns/$1
  t=$(now_ms)
  if ! out=$(courier attach --netns "$ns" --network "$VM_NET" --binding vlan --json); then
    echo "attach $1 failed: $out"; tail -20 /tmp/courier.log; exit 1
  fi
  out=$(echo "$out" | tr -d ' \n')
  TAG=$(echo "$out" | sed -n 's/.*"tag":\([0-9]*\).*/\1/p')
  IPADDR=$(echo "$out" | sed -n 's/.*"ips":\["\([0-9.]*\)\/.*/\1/p')
  [ -n "$TAG" ] && [ -n "$IPADDR" ] || { echo "no tag or address in: $out"; exit 1; }
  echo "__timing__ attach $(( $(now_ms) - t )) ms"
  echo "__attached__ $1 $TAG $IPADDR"
}
vlan_in() {  # NETNS TAG: NETNS has an 802.1Q link with TAG (here: only eth1 has any)
  ip -n "$1" -d link show 2>/dev/null | grep -Eq "vlan protocol 802.1Q id $2( |\$)"
}
# VM_LEFTOVERS: a sub-interface left in a container's netns must not keep its tag taken.
leftovers() {
  local left='' holder out t removed
  # (a) Release finds it by its tag on eth1, whatever the container made of its name and MAC.
  ip -n c2 link set eth0 down
  ip -n c2 link set eth0 name renamed0
  ip -n c2 link set renamed0 address 02:00:00:00:00:99 up
  courier detach --netns /var/run/netns/c2
  if vlan_in c2 "$tag2"; then
    left=1; echo "UNEXPECTED: detach left the renamed sub-interface (VLAN $tag2) in c2:"
    ip -n c2 -d link show
  fi
  attach c2   # the same tag again: refused by the kernel (EEXIST) while the old one holds it
  [ "$TAG" = "$tag2" ] || { echo "UNEXPECTED: c2 got tag $TAG, not its freed $tag2"; exit 1; }
  [ -z "$left" ] || exit 1
  echo "detach removed the renamed sub-interface"
  # (b) Records lost (kill -9, the state removed) while the netns live on: c3 and c2 (its
  # link renamed again), c4, and one only a process holds. Reconcile removes every one of
  # their sub-interfaces, and not someone else's VLAN link on eth1 (keep0, no Courier mark).
  ip netns add c4; ip netns add p
  ip netns exec p sleep 600 &
  holder=$!
  attach c4; tag4=$TAG
  attach "/proc/$holder/ns/net"; tag5=$TAG
  ip netns del p
  ip -n c2 link set eth0 down
  ip -n c2 link set eth0 name other0
  by_hand keep0 4000 192.0.2.40
  kill -9 "$COURIER_PID"; wait "$COURIER_PID" 2>/dev/null || true
  rm -rf /tmp/courier-state
  courier_daemon vlan
  t=$(now_ms)
  out=$(courier reconcile)
  echo "__timing__ reconcile $(( $(now_ms) - t )) ms (after the start-up pass)"
  echo "reconcile after the lost records: $(echo "$out" | tr -d ' \n')"
  removed=$(grep '"deleted leaked host interface"' /tmp/courier.log | grep '"binding":"vlan"' |
    grep -o '"name":"[^"]*"' | tr '\n' ' ')
  echo "removed by reconcile: $removed"
  [ "$(echo "$removed" | grep -o '"name"' | wc -l)" -ge 4 ] ||
    { echo "UNEXPECTED: reconcile did not say it removed the four sub-interfaces"; exit 1; }
  ip netns attach p "$holder"
  for l in "c3 $tag1" "c2 $tag2" "c4 $tag4" "p $tag5"; do
    if vlan_in $l; then
      left=1; echo "UNEXPECTED: a sub-interface of a lost record (netns/tag $l) is left:"
      ip -n "${l% *}" -d link show
    fi
  done
  vlan_in w 4000 || { echo "UNEXPECTED: reconcile removed keep0, not Courier's"; exit 1; }
  [ -z "$left" ] || { tail -20 /tmp/courier.log; exit 1; }
  # Their tags are free again: the same containers get them back, lowest first.
  for l in "c3 $tag1" "c2 $tag2" "c4 $tag4"; do
    attach "${l% *}"
    [ "$TAG" = "${l#* }" ] || { echo "UNEXPECTED: ${l% *} got tag $TAG, not the freed ${l#* }"; exit 1; }
  done
  echo "reconcile removed the sub-interfaces of lost records"
  # (c) A VLAN link someone else made on eth1 holds the next free tag: the attach that meets
  # it fails naming it, changes nothing, and the next attach skips that tag.
  by_hand hand0 "$tag5" 192.0.2.41
  ip netns add c5
  if out=$(courier attach --netns /var/run/netns/c5 --network "$VM_NET" --binding vlan --json 2>&1); then
    out=$(echo "$out" | tr -d ' \n')
    if echo "$out" | grep -q "\"tag\":$tag5[,}]"; then
      echo "UNEXPECTED: attached with tag $tag5, which hand0 holds: $out"; exit 1
    fi
    TAG=$(echo "$out" | sed -n 's/.*"tag":\([0-9]*\).*/\1/p')
    echo "the attach skipped the held tag at once: $out"
    echo "__attached__ c5 $TAG -"
  else
    echo "$out" | grep -q "hand0" && echo "$out" | grep -q "netns/w" ||
      { echo "UNEXPECTED: the error does not name hand0 in netns w: $out"; exit 1; }
    ip -n c5 link show | grep -q "eth0" && { echo "UNEXPECTED: the failed attach left eth0 in c5"; exit 1; }
    echo "a tag held by someone else's link is refused naming it: $out"
    attach c5
  fi
  [ "$TAG" != "$tag5" ] || { echo "UNEXPECTED: c5 got $tag5, held by hand0"; exit 1; }
  vlan_in w "$tag5" || { echo "UNEXPECTED: hand0 was removed"; exit 1; }
  echo "a tag held on eth1 is skipped"
  courier reconcile >/dev/null
  vlan_in w "$tag5" && vlan_in w 4000 || { echo "UNEXPECTED: reconcile removed a link not Courier's"; exit 1; }
  for c in c4 c5; do courier detach --netns "/var/run/netns/$c"; done
  ip -n w link del hand0; ip -n w link del keep0
  kill "$holder"
  echo "leftovers done"
}
attach c1; tag1=$TAG ip1=$IPADDR
attach c2; tag2=$TAG ip2=$IPADDR
[ "$tag1" != "$tag2" ] || { echo "UNEXPECTED: both containers got tag $tag1"; exit 1; }
for t in "$tag1" "$tag2"; do
  [ "$t" != "$VM_TAKEN_TAG" ] || { echo "UNEXPECTED: tag $t is the backend's child port's"; exit 1; }
done
ip -n c1 -d link show eth0 | grep -q "vlan.*id $tag1" || { ip -n c1 -d link show eth0; exit 1; }
ip netns exec c1 ping -c 3 -W 2 "$VM_HOST_IP" >/dev/null
ip netns exec c2 ping -c 3 -W 2 "$VM_HOST_IP" >/dev/null
echo "both containers reach the switch"
ip netns exec c1 ping -c 3 -W 2 "$ip2" >/dev/null
echo "and each other"
t=$(now_ms)
courier detach --netns /var/run/netns/c1
echo "__timing__ detach $(( $(now_ms) - t )) ms"
ip -n c1 link show eth0 >/dev/null 2>&1 && { echo "UNEXPECTED: eth0 left in c1"; exit 1; }
attach c3
[ "$TAG" = "$tag1" ] || { echo "UNEXPECTED: the freed tag $tag1 was not given again (got $TAG)"; exit 1; }
echo "detach freed the tag"
if [ -n "${VM_LEFTOVERS:-}" ]; then
  leftovers
fi
courier detach --netns /var/run/netns/c3
courier detach --netns /var/run/netns/c2
echo "__detached__"
by_hand gone0 "$tag1" "$ip1"
if ! dropped_within 10 w "$VM_HOST_IP"; then
  echo "UNEXPECTED: a detached child's tag still got through 10 s after detach"; tail -20 /tmp/courier.log; exit 1
fi
echo "__timing__ dropped $DROPPED_MS ms after detach"
echo "a detached child's tag reaches nothing"
# Attach timings from the daemon's log (TCG-emulated CPU: slow in absolute terms).
echo "__timings__ $(grep '"attached"' /tmp/courier.log | grep -o '"total_ms":[0-9.]*' | cut -d: -f2 | tr '\n' ' ')"
echo "__ok__"
