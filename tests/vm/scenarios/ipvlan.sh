# Guest scenario: Courier inside the VM with the ipvlan binding. The VM port is eth1 ($VM_MAC,
# $VM_IP/$VM_PREFIX); the backend is the host's NB at $VM_NB_REMOTE, or Neutron when
# $VM_OS_AUTH_URL is set (see tests/vm/lib.sh); $VM_NET is the Courier network and $VM_HOST_IP a
# port on it outside the VM. Asserts: an ipvlan by hand with an address the VM's port does not
# allow ($VM_FREE_IP) is dropped; `courier attach --binding ipvlan` makes it reachable (the pair
# is on the VM's port); after `courier detach` the same address by hand is dropped again (within
# 10 s: the datapath follows the backend). With VM_AWAIT_ECHO=N, while attached it prints
# "__await_echo__ <ip>" and waits (30 s) for N echo requests from outside to reach the
# container (the host pings it back). Prints "__attached__ <ip>",
# "__timing__ attach|detach|dropped <ms> ms" and "__ok__".
set -euo pipefail
: "${VM_IP:?}" "${VM_PREFIX:?}" "${VM_NET:?}" "${VM_HOST_IP:?}" "${VM_FREE_IP:?}"
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

. /scenario/lib.sh
courier_daemon ipvlan
t=$(now_ms)
if ! out=$(courier attach --netns /var/run/netns/c1 --network "$VM_NET" --binding ipvlan --json); then
  echo "attach failed: $out"; tail -20 /tmp/courier.log; exit 1
fi
ip_addr=$(echo "$out" | tr -d ' \n' | sed -n 's/.*"ips":\["\([0-9.]*\)\/.*/\1/p')
[ -n "$ip_addr" ] || { echo "no address in: $out"; exit 1; }
echo "__timing__ attach $(( $(now_ms) - t )) ms"
echo "__attached__ $ip_addr"
ip -n c1 -br addr
ip netns exec c1 ping -c 3 -W 2 "$VM_HOST_IP"
echo "reachable with the pair"
if [ -n "${VM_AWAIT_ECHO:-}" ]; then
  # The other way: the host's peer pings the container (resolving its address by ARP first).
  # Icmp InEchos of c1 from its /proc/net/snmp (the header line names the columns).
  in_echos() { ip netns exec c1 awk '/^Icmp:/ { if (!h) { for (i = 1; i <= NF; i++) c[$i] = i; h = 1 } else print $c["InEchos"] }' /proc/net/snmp; }
  base=$(in_echos)
  echo "__await_echo__ $ip_addr"
  got=''
  for _ in $(seq 300); do
    [ $(( $(in_echos) - base )) -ge "$VM_AWAIT_ECHO" ] && { got=1; break; }
    sleep 0.1
  done
  [ -n "$got" ] || { echo "UNEXPECTED: only $(( $(in_echos) - base )) of $VM_AWAIT_ECHO echo requests from the peer reached the container"; exit 1; }
  echo "the peer reaches the container"
fi
t=$(now_ms)
courier detach --netns /var/run/netns/c1
echo "__timing__ detach $(( $(now_ms) - t )) ms"
by_hand ipv1 "$ip_addr"
if ! dropped_within 10 c1 "$VM_HOST_IP"; then
  echo "UNEXPECTED: the address still got through 10 s after detach"; tail -20 /tmp/courier.log; exit 1
fi
echo "__timing__ dropped $DROPPED_MS ms after detach"
echo "dropped again after detach"
# Attach timings from the daemon's log (TCG-emulated CPU: slow in absolute terms).
echo "__timings__ $(grep '"attached"' /tmp/courier.log | grep -o '"total_ms":[0-9.]*' | cut -d: -f2 | tr '\n' ' ')"
echo "__ok__"
