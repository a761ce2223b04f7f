# Guest scenario: Courier inside the VM with the ipvlan binding. The VM port is eth1 ($VM_MAC,
# $VM_IP/$VM_PREFIX); the host's NB answers at $VM_NB_REMOTE; $VM_NET is the Courier network and
# $VM_HOST_IP a port on it outside the VM. Asserts: an ipvlan by hand with an address the VM's port
# does not allow ($VM_FREE_IP) is dropped; `courier attach --binding ipvlan` makes it reachable
# (the pair is on the VM's port); after `courier detach` the same address by hand is dropped
# again. Prints "__attached__ <ip>" and "__ok__".
set -euo pipefail
: "${VM_IP:?}" "${VM_PREFIX:?}" "${VM_NET:?}" "${VM_HOST_IP:?}" "${VM_FREE_IP:?}" "${VM_NB_REMOTE:?}"
sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip link set lo up
ip link set eth1 up
ip addr add "$VM_IP/$VM_PREFIX" dev eth1
ping -c 2 -W 2 "$VM_HOST_IP" >/dev/null && echo "the VM's own port works"
mkdir -p /var/run/netns
ip netns add c1
by_hand() {  # NAME IP: an ipvlan of eth1 in c1 with IP
  ip link add "$1" link eth1 type ipvlan mode l2
  ip link set "$1" netns c1
  ip -n c1 addr add "$2/$VM_PREFIX" dev "$1"
  ip -n c1 link set "$1" up
}
by_hand ipv0 "$VM_FREE_IP"
if ip netns exec c1 ping -c 2 -W 1 "$VM_HOST_IP" >/dev/null 2>&1; then
  echo "UNEXPECTED: an address with no pair on the VM's port got through"; exit 1
fi
echo "dropped without a pair"
ip -n c1 link del ipv0

export COURIER_OVN_NB_REMOTE=$VM_NB_REMOTE COURIER_BINDINGS=ipvlan COURIER_NESTED_MASTER=eth1 \
  COURIER_DOCKER=0 COURIER_LOG_FORMAT=json COURIER_SOCKET=/run/courier.sock COURIER_STATE_DIR=/tmp/courier-state \
  COURIER_HOST=${VM_HOST_MARK:-vm-guest}
courier daemon >/tmp/courier.log 2>&1 &
for _ in $(seq 100); do courier status >/dev/null 2>&1 && break; sleep 0.1; done
if ! out=$(courier attach --netns /var/run/netns/c1 --network "$VM_NET" --binding ipvlan --json); then
  echo "attach failed: $out"; tail -20 /tmp/courier.log; exit 1
fi
ip_addr=$(echo "$out" | tr -d ' \n' | sed -n 's/.*"ips":\["\([0-9.]*\)\/.*/\1/p')
[ -n "$ip_addr" ] || { echo "no address in: $out"; exit 1; }
echo "__attached__ $ip_addr"
ip -n c1 -br addr
ip netns exec c1 ping -c 3 -W 2 "$VM_HOST_IP"
echo "reachable with the pair"
courier detach --netns /var/run/netns/c1
by_hand ipv1 "$ip_addr"
if ip netns exec c1 ping -c 2 -W 1 "$VM_HOST_IP" >/dev/null 2>&1; then
  echo "UNEXPECTED: the address still got through after detach"; tail -20 /tmp/courier.log; exit 1
fi
echo "dropped again after detach"
# Attach timings from the daemon's log (TCG-emulated CPU: slow in absolute terms).
echo "__timings__ $(grep '"attached"' /tmp/courier.log | grep -o '"total_ms":[0-9.]*' | cut -d: -f2 | tr '\n' ' ')"
echo "__ok__"
