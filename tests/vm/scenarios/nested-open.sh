# Guest scenario: Courier inside the VM with the ipvlan and macvlan bindings, on a VM port
# whose port_security is empty (open: the cloud filters nothing). The VM port is eth1 ($VM_MAC,
# $VM_IP/$VM_PREFIX), the backend the host's NB at $VM_NB_REMOTE; $VM_NET is the Courier
# network and $VM_HOST_IP a port on it outside the VM. Asserts: the VM reaches $VM_HOST_IP; an
# ipvlan container (c1) attached reaches it and the VM still does (a first pair must not lock
# the VM out of its own port); after its detach the VM still does; then the same with a macvlan
# container (c2, at $VM_FREE_IP). One after the other: the kernel gives a master either ipvlan or macvlan
# links, not both at once (the second kind fails with EBUSY). For each container it prints
# "__check__ ipvlan|macvlan <ip>" and gives the host 2 s to read the NB before the detach; at
# the end "__ok__".
set -euo pipefail
: "${VM_IP:?}" "${VM_PREFIX:?}" "${VM_NET:?}" "${VM_HOST_IP:?}" "${VM_FREE_IP:?}"
sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
# The VM's own address and the macvlan's live on one wire: answer ARP only for one's own.
sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
ip link set lo up
ip link set eth1 up
ip addr add "$VM_IP/$VM_PREFIX" dev eth1
vm_reaches() {  # WHAT
  if ! ping -c 3 -W 2 "$VM_HOST_IP" >/dev/null; then
    echo "UNEXPECTED: the VM cannot reach $VM_HOST_IP $1"; tail -20 /tmp/courier.log 2>/dev/null; exit 1
  fi
  echo "the VM reaches its switch $1"
}
vm_reaches "(open port)"
mkdir -p /var/run/netns

. /scenario/lib.sh
courier_daemon ipvlan,macvlan
one() {  # NETNS BINDING [ATTACH ARGS...]
  local out ip_addr
  ip netns add "$1"
  if ! out=$(courier attach --netns "/var/run/netns/$1" --network "$VM_NET" --binding "$2" "${@:3}" --json); then
    echo "attach $2 failed: $out"; tail -20 /tmp/courier.log; exit 1
  fi
  ip_addr=$(echo "$out" | tr -d ' \n' | sed -n 's/.*"ips":\["\([0-9.]*\)\/.*/\1/p')
  [ -n "$ip_addr" ] || { echo "no address in: $out"; exit 1; }
  if ! ip netns exec "$1" ping -c 3 -W 2 "$VM_HOST_IP" >/dev/null; then
    echo "UNEXPECTED: the $2 container cannot reach $VM_HOST_IP"; tail -20 /tmp/courier.log; exit 1
  fi
  echo "the $2 container reaches the switch"
  vm_reaches "with an $2 container"
  echo "__check__ $2 $ip_addr"
  sleep 2
  courier detach --netns "/var/run/netns/$1"
  vm_reaches "after the $2 container's detach"
}
one c1 ipvlan
# Another address than the ipvlan's (the same one again, with another MAC, would meet the
# peer's ARP entry for the ipvlan: OVN answers the container's ARP itself, so the peer does not
# learn the new MAC for a few seconds).
one c2 macvlan --ip "$VM_FREE_IP"
echo "__ok__"
