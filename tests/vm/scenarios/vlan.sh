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
attach() {  # NETNS: attach, print "__attached__ NETNS TAG IP", set TAG and IPADDR
  local out t
  t=$(now_ms)
  if ! out=$(courier attach --netns "/var/run/netns/$1" --network "$VM_NET" --binding vlan --json); then
    echo "attach $1 failed: $out"; tail -20 /tmp/courier.log; exit 1
  fi
  out=$(echo "$out" | tr -d ' \n')
  TAG=$(echo "$out" | sed -n 's/.*"tag":\([0-9]*\).*/\1/p')
  IPADDR=$(echo "$out" | sed -n 's/.*"ips":\["\([0-9.]*\)\/.*/\1/p')
  [ -n "$TAG" ] && [ -n "$IPADDR" ] || { echo "no tag or address in: $out"; exit 1; }
  echo "__timing__ attach $(( $(now_ms) - t )) ms"
  echo "__attached__ $1 $TAG $IPADDR"
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
