# Guest scenario: Courier inside a VM that runs Open vSwitch, with the vlan-ovs binding (OVN's
# container-in-VM form). The VM's own bridge br-vm has the VM port eth1 as its trunk uplink and
# the VM's address ($VM_IP/$VM_PREFIX, MAC $VM_MAC) on its internal port; each container is a
# veth whose VM end is an access port of br-vm tagged with its child port's VLAN. The host's NB
# answers at $VM_NB_REMOTE; $VM_NET is the Courier network, $VM_HOST_IP a port on it outside the
# VM, and tag $VM_TAKEN_TAG is a child port Courier did not make. Asserts: an access port with a
# tag no child port has reaches nothing; two containers get distinct tags (not the taken one),
# their ports on br-vm carry them, they reach the host port and each other; detach removes the
# access port and frees the tag. Prints "__attached__ NAME TAG IP" per attach and "__ok__".
set -euo pipefail
: "${VM_IP:?}" "${VM_PREFIX:?}" "${VM_MAC:?}" "${VM_NET:?}" "${VM_HOST_IP:?}" "${VM_FREE_IP:?}" \
  "${VM_NB_REMOTE:?}" "${VM_TAKEN_TAG:?}"
sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip link set lo up
. /scenario/lib.sh
vm_ovs_bridge "$VM_MAC"
ip addr add "$VM_IP/$VM_PREFIX" dev br-vm
for _ in $(seq 10); do ping -c 1 -W 1 "$VM_HOST_IP" >/dev/null 2>&1 && break; done
if ! ping -c 2 -W 2 "$VM_HOST_IP" >/dev/null; then
  echo "the VM's own port does not work through br-vm:"
  ovs-vsctl show; ip -d link show eth1; ip -d link show br-vm; ip addr; ip neigh
  grep -v "|INFO|" /tmp/ovs-vswitchd.log | tail -20; exit 1
fi
echo "the VM's own port works through br-vm"
mkdir -p /var/run/netns
for c in w c1 c2 c3; do ip netns add "$c"; done
ip link add wv0 type veth peer name eth0 netns w
ip -n w addr add "$VM_FREE_IP/$VM_PREFIX" dev eth0
ip -n w link set eth0 up
ip link set wv0 up
ovs-vsctl add-port br-vm wv0 tag=3999
if ip netns exec w ping -c 2 -W 1 "$VM_HOST_IP" >/dev/null 2>&1; then
  echo "UNEXPECTED: a tag with no child port got through"; exit 1
fi
echo "a wrong tag reaches nothing"
ovs-vsctl del-port br-vm wv0

export COURIER_OVN_NB_REMOTE=$VM_NB_REMOTE COURIER_BINDINGS=vlan-ovs COURIER_NESTED_MASTER=br-vm \
  COURIER_NESTED_BRIDGE=br-vm COURIER_OVS_REMOTE=unix:/var/run/openvswitch/db.sock \
  COURIER_DOCKER=0 COURIER_LOG_FORMAT=json COURIER_SOCKET=/run/courier.sock COURIER_STATE_DIR=/tmp/courier-state \
  COURIER_HOST=${VM_HOST_MARK:-vm-guest}
courier daemon >/tmp/courier.log 2>&1 &
for _ in $(seq 100); do courier status >/dev/null 2>&1 && break; sleep 0.1; done
attach() {  # NETNS: attach, print "__attached__ NETNS TAG IP", set TAG IPADDR HOSTIF
  local out
  if ! out=$(courier attach --netns "/var/run/netns/$1" --network "$VM_NET" --binding vlan-ovs --json); then
    echo "attach $1 failed: $out"; tail -20 /tmp/courier.log; exit 1
  fi
  out=$(echo "$out" | tr -d ' \n')
  TAG=$(echo "$out" | sed -n 's/.*"tag":\([0-9]*\).*/\1/p')
  IPADDR=$(echo "$out" | sed -n 's/.*"ips":\["\([0-9.]*\)\/.*/\1/p')
  HOSTIF=$(echo "$out" | sed -n 's/.*"host_ifname":"\([^"]*\)".*/\1/p')
  [ -n "$TAG" ] && [ -n "$IPADDR" ] && [ -n "$HOSTIF" ] || { echo "no tag, address or host_ifname in: $out"; exit 1; }
  [ "$(ovs-vsctl get port "$HOSTIF" tag)" = "$TAG" ] || { ovs-vsctl list port "$HOSTIF"; exit 1; }
  echo "__attached__ $1 $TAG $IPADDR"
}
attach c1; tag1=$TAG ip1=$IPADDR host1=$HOSTIF
attach c2; tag2=$TAG ip2=$IPADDR
[ "$tag1" != "$tag2" ] || { echo "UNEXPECTED: both containers got tag $tag1"; exit 1; }
for t in "$tag1" "$tag2"; do
  [ "$t" != "$VM_TAKEN_TAG" ] || { echo "UNEXPECTED: tag $t is the backend's child port's"; exit 1; }
done
echo "access ports carry the tags"
ip netns exec c1 ping -c 3 -W 2 "$VM_HOST_IP" >/dev/null
ip netns exec c2 ping -c 3 -W 2 "$VM_HOST_IP" >/dev/null
echo "both containers reach the switch"
ip netns exec c1 ping -c 3 -W 2 "$ip2" >/dev/null
echo "and each other"
courier detach --netns /var/run/netns/c1
ovs-vsctl list-ports br-vm | grep -qx "$host1" && { echo "UNEXPECTED: $host1 left on br-vm"; exit 1; }
attach c3
[ "$TAG" = "$tag1" ] || { echo "UNEXPECTED: the freed tag $tag1 was not given again (got $TAG)"; exit 1; }
echo "detach freed the tag"
courier detach --netns /var/run/netns/c3
courier detach --netns /var/run/netns/c2
left=$(ovs-vsctl list-ports br-vm | grep -vx eth1 || true)
[ -z "$left" ] || { echo "UNEXPECTED: ports left on br-vm: $left"; exit 1; }
ip link add wv1 type veth peer name eth1 netns w
ip -n w addr add "$ip1/$VM_PREFIX" dev eth1
ip -n w link set eth1 up
ip link set wv1 up
ovs-vsctl add-port br-vm wv1 tag="$tag1"
if ip netns exec w ping -c 2 -W 1 "$VM_HOST_IP" >/dev/null 2>&1; then
  echo "UNEXPECTED: a detached child's tag still got through"; tail -20 /tmp/courier.log; exit 1
fi
echo "a detached child's tag reaches nothing"
# Attach timings from the daemon's log (TCG-emulated CPU: slow in absolute terms).
echo "__timings__ $(grep '"attached"' /tmp/courier.log | grep -o '"total_ms":[0-9.]*' | cut -d: -f2 | tr '\n' ' ')"
echo "__ok__"
