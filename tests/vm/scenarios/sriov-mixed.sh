# Guest scenario: one Courier daemon serving SR-IOV, macvlan and Docker containers side by side
# (the binding is chosen per port), then VF against veth attach times in this one guest.
# eth2 is the igb SR-IOV PF, its host side on an OVS bridge mapped to $VM_PHYSNET; the Courier
# network $VM_NET ($VM_SUBNET) has a localnet port there (VLAN $VM_VLAN); eth1 is the VM's port
# on the same network ($VM_MAC); $VM_HOST_IP is a veth container on the host. Needs the Docker
# layer (guest.sh VM_DOCKER=1). Asserts, printing a line for each:
#   on one daemon at once: a VF container by the CLI, a Docker container on a VF (a Docker
#     network with -o courier.binding=sriov: Join hands Docker the VF's netdev, Docker moves
#     it) and a macvlan container on eth1: each reaches the host container, and the VF
#     containers reach the macvlan container and each other;
#   docker rm: the VF is home, under its own name, reset, and free again;
#   the same daemon restarted with sriov and vlan-ovs (a veth into the VM's own Open vSwitch):
#     a veth container reaches the host container; then $VM_CYCLES cycles of a VF attach +
#     detach and a veth attach + detach, alternating ("__timings__ KIND-attach|plug|release
#     MS...": the daemon's total_ms, and plug_ms, the edge binding's own part of an attach);
#   at the end every VF free and reset, no container left.
# Prints "__ok__" last.
set -euo pipefail
: "${VM_NET:?}" "${VM_SUBNET:?}" "${VM_HOST_IP:?}" "${VM_PHYSNET:?}" "${VM_VLAN:?}" "${VM_MAC:?}"
CYCLES=${VM_CYCLES:-30}
sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
# macvlan containers and the VM share eth1's wire: answer ARP only for one's own address.
sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
ip link set lo up
ip link set eth1 up
. /scenario/lib.sh
sriov_pf 2
export COURIER_SRIOV_PHYSICAL_DEVICE_MAPPINGS="$VM_PHYSNET:$PF"
docker_daemon
echo "dockerd runs in the guest"
COURIER_DOCKER=1 courier_daemon sriov,macvlan
for _ in $(seq 50); do [ -S /run/docker/plugins/courier.sock ] && break; sleep 0.1; done
mkdir -p /var/run/netns
for n in c1 c2 c3; do ip netns add $n; done
attach() {  # NETNS BINDING: prints the answer (JSON)
  courier attach --netns "/var/run/netns/$1" --network "$VM_NET" --binding "$2" --json
}
held() { courier status | grep -o "VFs of $PF ($VM_PHYSNET): [0-9]* free of 2 ([0-9]* held"; }

# 1. Three containers on one daemon: a VF (CLI), a VF (Docker), a macvlan.
out=$(attach c1 sriov) || { echo "attach c1 (sriov) failed: $out"; tail -5 /tmp/courier.log; exit 1; }
ip1=$(ip_of "$out")
echo "__attached__ c1 sriov $ip1"
docker network create -d courier --ipam-driver courier --subnet "$VM_SUBNET" \
  -o courier.network="$VM_NET" -o courier.binding=sriov vfnet >/dev/null \
  || { echo "docker network create failed"; tail -5 /tmp/courier.log; exit 1; }
if ! docker run -d --name d1 --network vfnet courier-busybox sleep 3600 >/dev/null; then
  echo "docker run on the VF network failed"; grep -v '"DEBUG"' /tmp/courier.log | tail -8; tail -8 /tmp/dockerd.log; exit 1
fi
dpci=$(docker exec d1 readlink /sys/class/net/eth0/device | sed 's#.*/##')
dip=$(docker exec d1 ip -4 -o addr show eth0 | sed -n 's/.* inet \([0-9.]*\)\/.*/\1/p')
echo "__attached__ d1 docker-sriov $dip $dpci"
case $dpci in "$(vf_pci 0)"|"$(vf_pci 1)") ;; *)
  echo "UNEXPECTED: the Docker container's eth0 is not a VF of $PF: device $dpci"; docker exec d1 ip link; exit 1 ;;
esac
[ -n "$dip" ] || { echo "UNEXPECTED: the Docker container's VF has no address"; docker exec d1 ip addr; exit 1; }
echo "the Docker container's eth0 is a VF ($dpci)"
out=$(attach c2 macvlan) || { echo "attach c2 (macvlan) failed: $out"; tail -5 /tmp/courier.log; exit 1; }
ip2=$(ip_of "$out")
echo "__attached__ c2 macvlan $ip2"
[ "$(held)" = "VFs of $PF ($VM_PHYSNET): 0 free of 2 (2 held" ] \
  || { echo "UNEXPECTED: with two VF containers the pool is: $(courier status | grep 'VFs of')"; exit 1; }
echo "two VF containers and a macvlan container on one daemon"
docker_reached() {  # IP: from d1, within 30 s
  for _ in $(seq 15); do docker exec d1 ping -c 1 -W 2 "$1" >/dev/null 2>&1 && return 0; done
  return 1
}
reached c1 "$VM_HOST_IP" || { echo "UNEXPECTED: the CLI VF container does not reach $VM_HOST_IP"; exit 1; }
docker_reached "$VM_HOST_IP" || { echo "UNEXPECTED: the Docker VF container does not reach $VM_HOST_IP"; docker exec d1 ip neigh; exit 1; }
reached c2 "$VM_HOST_IP" || { echo "UNEXPECTED: the macvlan container does not reach $VM_HOST_IP"; exit 1; }
echo "all three reach the host container"
reached c1 "$ip2" || { echo "UNEXPECTED: the CLI VF container does not reach the macvlan container"; exit 1; }
docker_reached "$ip2" || { echo "UNEXPECTED: the Docker VF container does not reach the macvlan container"; exit 1; }
docker_reached "$ip1" || { echo "UNEXPECTED: the Docker VF container does not reach the CLI VF container"; exit 1; }
echo "the VF containers reach the macvlan container and each other"

# 2. docker rm: Docker gives the VF back to the host netns; Courier resets and frees it.
docker rm -f d1 >/dev/null
for i in 0 1; do
  [ "$(vf_pci $i)" = "$dpci" ] || continue
  l=$(vf_line $i); echo "$l"
  echo "$l" | grep -q "link/ether 00:00:00:00:00:00" || { echo "UNEXPECTED: the Docker VF keeps a MAC: $l"; exit 1; }
  echo "$l" | grep -q "vlan" && { echo "UNEXPECTED: the Docker VF keeps a VLAN: $l"; exit 1; }
  want=VF$i
  [ "$(vf_dev $i)" = "${!want}" ] || { echo "UNEXPECTED: the Docker VF came back as $(vf_dev $i), not ${!want}"; exit 1; }
done
[ "$(held)" = "VFs of $PF ($VM_PHYSNET): 1 free of 2 (1 held" ] \
  || { echo "UNEXPECTED: after docker rm the pool is: $(courier status | grep 'VFs of')"; exit 1; }
docker network rm vfnet >/dev/null
echo "docker rm gave the VF back: home, reset, free"
courier detach --netns /var/run/netns/c1
courier detach --netns /var/run/netns/c2

# 3. VF against veth in this guest: the daemon again with sriov and vlan-ovs (a veth into the
# VM's own bridge: the VM port eth1 is its uplink now, so no macvlan on it any more).
kill "$COURIER_PID"; wait "$COURIER_PID" 2>/dev/null || true
vm_ovs_bridge "$VM_MAC"
COURIER_DOCKER=0 COURIER_NESTED_MASTER=br-vm COURIER_NESTED_BRIDGE=br-vm \
  COURIER_OVS_REMOTE=unix:/var/run/openvswitch/db.sock courier_daemon sriov,vlan-ovs
out=$(attach c3 vlan-ovs) || { echo "attach c3 (vlan-ovs) failed: $out"; tail -5 /tmp/courier.log; exit 1; }
echo "__attached__ c3 vlan-ovs $(ip_of "$out")"
reached c3 "$VM_HOST_IP" || { echo "UNEXPECTED: the veth container does not reach $VM_HOST_IP"; ovs-vsctl show; exit 1; }
echo "a veth container in this guest reaches the host container"
courier detach --netns /var/run/netns/c3
: > /tmp/courier.log
for i in $(seq "$CYCLES"); do
  attach c1 sriov >/dev/null || { echo "cycle $i: VF attach failed"; tail -5 /tmp/courier.log; exit 1; }
  courier detach --netns /var/run/netns/c1
  attach c3 vlan-ovs >/dev/null || { echo "cycle $i: veth attach failed"; tail -5 /tmp/courier.log; exit 1; }
  courier detach --netns /var/run/netns/c3
done
echo "$CYCLES cycles of a VF and a veth"
ms_of() {  # EVENT BINDING [FIELD]: the daemon's FIELD (default total_ms) of each such event
  grep "\"$1\"" /tmp/courier.log | grep "\"binding\":\"$2\"" | grep -o "\"${3:-total_ms}\":[0-9.]*" | cut -d: -f2 | tr '\n' ' '
}
echo "__timings__ vf-attach $(ms_of attached sriov)"
echo "__timings__ vf-plug $(ms_of attached sriov plug_ms)"
echo "__timings__ vf-release $(ms_of detached sriov)"
echo "__timings__ veth-attach $(ms_of attached vlan-ovs)"
echo "__timings__ veth-plug $(ms_of attached vlan-ovs plug_ms)"
echo "__timings__ veth-release $(ms_of detached vlan-ovs)"

# 4. Every VF home and reset; no container keeps a link.
vfs_home_and_reset
for n in c1 c2 c3; do [ -z "$(links_in $n)" ] || { echo "UNEXPECTED: $n keeps $(links_in $n)"; exit 1; }; done
echo "every VF free and reset"
echo "__ok__"
