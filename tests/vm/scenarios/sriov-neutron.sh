# Guest scenario: Courier in the guest with the sriov binding on the Neutron backend (the
# host's Keystone and Neutron, admin credentials: binding:host_id is an admin attribute).
# eth2 is an igb SR-IOV PF whose host side (a tap) is on an OVS bridge mapped to physical
# network $VM_PHYSNET; $VM_NET is a Neutron VLAN network there (VLAN $VM_VLAN, chosen by
# Neutron); $VM_HOST_IP is a veth container on the host on it; $VM_PORT_ID is a user's
# pre-created port with binding:vnic_type=direct (the Zun flow). Neutron's SR-IOV NIC agent
# serves host $COURIER_NEUTRON_HOST_ID for $VM_PHYSNET. Asserts, printing a line for each:
#   a Courier-made direct port on a VF: the PF set the VLAN Neutron bound it to; the VF
#     container reaches the host container and back ("__await_echo__ IP");
#   the user's direct port by id (no --binding: its vnic_type chooses sriov): reachable;
#   both detached; Docker (the Docker layer, guest.sh VM_DOCKER=1) runs a container on the
#     user's port by id (--driver-opt courier.port, its --ip and --mac-address): on a VF,
#     reachable; docker rm gives it back ("__docker_detached__"); so does CNI with
#     CNI_ARGS PORT=ID ("__cni_detached__");
#   a daemon whose binding host no SR-IOV agent serves: Neutron's
#   binding_failed is refused clearly, nothing left; every VF home and reset.
# "__bound__ WHICH PORT_OR_IP PCI" lines let the host read the port while it is bound.
# Prints "__ok__" last.
set -euo pipefail
: "${VM_NET:?}" "${VM_SUBNET:?}" "${VM_HOST_IP:?}" "${VM_PHYSNET:?}" "${VM_VLAN:?}" "${VM_PORT_ID:?}" \
  "${VM_PORT_IP:?}" "${VM_PORT_MAC:?}" "${COURIER_NEUTRON_HOST_ID:?}"
sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip link set lo up
. /scenario/lib.sh
sriov_pf 2

export COURIER_SRIOV_PHYSICAL_DEVICE_MAPPINGS="$VM_PHYSNET:$PF"
docker_daemon
COURIER_DOCKER=1 courier_daemon sriov
# The user's Neutron network, registered as a Courier network.
courier network create srnet --backend neutron --neutron-network "$VM_NET" >/dev/null \
  || { echo "registering Neutron network $VM_NET failed"; exit 1; }
mkdir -p /var/run/netns
for n in c1 c2 c3; do ip netns add $n; done
pci_with() {  # MAC: the PCI address of the VF whose admin MAC it is
  local i; for i in 0 1; do vf_line $i | grep -q "link/ether $1 " && { vf_pci $i; return; }; done
}
mac_in() { ip -n "$1" -o link show eth0 | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p'; }

# 1. A port Courier makes: vnic_type direct, bound with the VF's binding:profile.
t=$(now_ms)
out=$(courier attach --netns /var/run/netns/c1 --network srnet --binding sriov --json) \
  || { echo "attach failed: $out"; grep -v '"DEBUG"' /tmp/courier.log | tail -5; exit 1; }
echo "__timing__ attach-neutron-direct $(( $(now_ms) - t )) ms"
ip1=$(ip_of "$out")
[ -n "$ip1" ] || { echo "no address in: $out"; exit 1; }
mac1=$(mac_in c1)
echo "__bound__ made $ip1 $(pci_with "$mac1")"
vf_line 0; vf_line 1
vf_line 0 | grep -q "link/ether $mac1 .*vlan $VM_VLAN," || vf_line 1 | grep -q "link/ether $mac1 .*vlan $VM_VLAN," \
  || { echo "UNEXPECTED: no VF of $PF has MAC $mac1 and Neutron's VLAN $VM_VLAN"; exit 1; }
echo "the PF set the VLAN Neutron bound the port to"
reached c1 "$VM_HOST_IP" || { echo "UNEXPECTED: the VF container does not reach $VM_HOST_IP"; ip -n c1 neigh; exit 1; }
echo "the VF container reaches the host container through Neutron's network"
await_echo c1 "$ip1" || { echo "UNEXPECTED: the host's pings did not reach the VF container"; exit 1; }
echo "the host container reaches the VF container"

# 2. The user's own direct port, by id: its vnic_type chooses the sriov binding.
t=$(now_ms)
out=$(courier attach --netns /var/run/netns/c2 --network srnet --port "$VM_PORT_ID" --json) \
  || { echo "attach --port failed: $out"; grep -v '"DEBUG"' /tmp/courier.log | tail -5; exit 1; }
echo "__timing__ attach-neutron-existing-direct $(( $(now_ms) - t )) ms"
ip2=$(ip_of "$out")
echo "__bound__ existing $VM_PORT_ID $(pci_with "$(mac_in c2)")"
reached c2 "$VM_HOST_IP" || { echo "UNEXPECTED: the user's direct port does not reach $VM_HOST_IP"; exit 1; }
echo "the user's direct port by id: on a VF, reachable ($ip2)"

# 3. Both go: Courier's port is deleted, the user's given back.
courier detach --netns /var/run/netns/c1
courier detach --netns /var/run/netns/c2
for n in c1 c2; do [ -z "$(links_in $n)" ] || { echo "UNEXPECTED: $n keeps $(links_in $n)"; exit 1; }; done
echo "__detached__"
echo "both detached"

# 3b. Docker, the Zun flow: the user's port named by id with an endpoint option (--driver-opt
# courier.port, with its address and MAC); its vnic_type chooses sriov, Join hands Docker the
# VF's netdev and Docker moves it. docker rm gives the port back and the VF home.
docker network create -d courier --ipam-driver courier --subnet "$VM_SUBNET" \
  -o courier.network=srnet srd >/dev/null || { echo "docker network create failed"; grep -v '"DEBUG"' /tmp/courier.log | tail -5; exit 1; }
if ! docker run -d --name d1 --mac-address "$VM_PORT_MAC" \
    --network "name=srd,ip=$VM_PORT_IP,driver-opt=courier.port=$VM_PORT_ID" courier-busybox sleep 3600 >/dev/null; then
  echo "docker run on the user's direct port failed"; grep -v '"DEBUG"' /tmp/courier.log | tail -8; exit 1
fi
dpci=$(docker exec d1 readlink /sys/class/net/eth0/device | sed 's#.*/##')
echo "__bound__ docker $VM_PORT_ID $dpci"
case $dpci in "$(vf_pci 0)"|"$(vf_pci 1)") ;; *)
  echo "UNEXPECTED: the Docker container's eth0 is not a VF of $PF: device $dpci"; docker exec d1 ip link; exit 1 ;;
esac
got=''
for _ in $(seq 15); do docker exec d1 ping -c 1 -W 2 "$VM_HOST_IP" >/dev/null 2>&1 && { got=1; break; }; done
[ -n "$got" ] || { echo "UNEXPECTED: the Docker container on the user's port does not reach $VM_HOST_IP"; exit 1; }
echo "docker run on the user's direct port by id: on a VF, reachable"
docker rm -f d1 >/dev/null
docker network rm srd >/dev/null
echo "__docker_detached__"

# 3c. CNI, the user's port by id (CNI_ARGS PORT=ID): its vnic_type chooses sriov too.
conf='{"cniVersion":"1.1.0","name":"srnet","type":"courier"}'
cni() { echo "$conf" | CNI_COMMAND=$1 CNI_CONTAINERID=cni-srneu CNI_NETNS=/var/run/netns/c3 CNI_IFNAME=net1 \
  CNI_ARGS="IgnoreUnknown=1;PORT=$VM_PORT_ID" CNI_PATH=/usr/local/bin courier; }
res=$(cni ADD) || { echo "CNI ADD of the user's port failed: $res"; grep -v '"DEBUG"' /tmp/courier.log | tail -5; exit 1; }
cmac=$(ip -n c3 -o link show net1 | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p')
echo "__bound__ cni $VM_PORT_ID $(pci_with "$cmac")"
reached c3 "$VM_HOST_IP" || { echo "UNEXPECTED: the CNI container on the user's port does not reach $VM_HOST_IP"; exit 1; }
cni CHECK || { echo "UNEXPECTED: CNI CHECK failed"; exit 1; }
cni DEL || { echo "UNEXPECTED: CNI DEL failed"; exit 1; }
[ -z "$(links_in c3)" ] || { echo "UNEXPECTED: c3 keeps $(links_in c3)"; exit 1; }
echo "CNI ADD of the user's direct port by id: on a VF, reachable, given back"
echo "__cni_detached__"

# 4. A binding host no SR-IOV agent serves: Neutron answers binding_failed; refused, nothing left.
kill "$COURIER_PID"; wait "$COURIER_PID" 2>/dev/null || true
COURIER_NEUTRON_HOST_ID=courier-no-sriov-agent courier_daemon sriov
if out=$(courier attach --netns /var/run/netns/c3 --network srnet --binding sriov 2>&1); then
  echo "UNEXPECTED: attached on a host no SR-IOV agent serves: $out"; exit 1
fi
echo "__refused__ $out"
echo "$out" | grep -q "binding_failed" && echo "$out" | grep -q "sriovnicswitch" \
  || { echo "UNEXPECTED: not the binding error"; exit 1; }
[ -z "$(links_in c3)" ] || { echo "UNEXPECTED: c3 got $(links_in c3)"; exit 1; }
left=$(courier --json attachments | tr -d ' \n')
case $left in *'"id"'*) echo "UNEXPECTED: a record is left after the refused attach: $left"; exit 1 ;; esac
echo "a host no SR-IOV agent serves: refused clearly, nothing left"
courier network delete srnet
kill "$COURIER_PID"; wait "$COURIER_PID" 2>/dev/null || true

# 5. Every VF home, under its own name, reset.
vfs_home_and_reset
echo "every VF free and reset"
echo "__ok__"
