# Guest scenario: Courier in the guest with the sriov binding, on the host's NB. eth2 is an igb
# SR-IOV PF whose host side (a tap) is on an OVS bridge mapped to physical network
# $VM_PHYSNET; the Courier network $VM_NET has a localnet port there (VLAN $VM_VLAN), and
# $VM_HOST_IP is a veth container on the host on that network. Two VFs (VM_NUMVFS, default 2).
# Asserts, printing a line for each:
#   an SR-IOV container reaches the host container (ping) and sends it TCP data (to
#     $VM_TCP_PORT: "courier-sriov-$VM_TOKEN"); "__await_echo__ IP": the host pings it back;
#   two SR-IOV containers at once; a third: a clear error, nothing changed;
#   DEL with the netns already deleted: the VF comes back, reset;
#   kill -9 with VFs claimed, a netns deleted meanwhile, restart: the live container keeps its
#     VF, reconcile recovers the other; none handed out twice; an ADD failed half way, then DEL;
#   $VM_CYCLES attach/detach cycles over the 2 VFs ("__timings__ attach|release MS...");
#   at the end every VF is in the host netns under its own name, MAC 0, no VLAN.
# Prints "__ok__" last.
set -euo pipefail
: "${VM_NET:?}" "${VM_HOST_IP:?}" "${VM_PHYSNET:?}" "${VM_VLAN:?}" "${VM_TCP_PORT:?}" "${VM_TOKEN:?}"
CYCLES=${VM_CYCLES:-50}
sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip link set lo up
. /scenario/lib.sh
sriov_pf "${VM_NUMVFS:-2}"

export COURIER_SRIOV_PHYSICAL_DEVICE_MAPPINGS="$VM_PHYSNET:$PF"
courier_daemon sriov
courier status | grep -q "VFs of $PF ($VM_PHYSNET): 2 free of 2 (0 held, 0 unusable)" \
  || { echo "UNEXPECTED: courier status does not show the pool: $(courier status)"; exit 1; }
echo "courier status shows the pool"
mkdir -p /var/run/netns
for n in c1 c2 c3 c4; do ip netns add $n; done
attach() { courier attach --netns "/var/run/netns/$1" --network "$VM_NET" --binding sriov --json; }

# 1. One SR-IOV container on the host's network.
t=$(now_ms)
out=$(attach c1) || { echo "attach failed: $out"; tail -20 /tmp/courier.log; exit 1; }
echo "__timing__ attach $(( $(now_ms) - t )) ms"
ip1=$(ip_of "$out")
[ -n "$ip1" ] || { echo "no address in: $out"; exit 1; }
echo "__attached__ c1 $ip1"
ip -n c1 -br link; ip -n c1 -br addr
vf_line 0; vf_line 1
mac1=$(ip -n c1 -o link show eth0 | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p')
vf_line 0 | grep -q "link/ether $mac1 .*vlan $VM_VLAN," || vf_line 1 | grep -q "link/ether $mac1 .*vlan $VM_VLAN," \
  || { echo "UNEXPECTED: no VF of $PF has MAC $mac1 and VLAN $VM_VLAN"; exit 1; }
echo "the PF set the VF's MAC and VLAN"
reached c1 "$VM_HOST_IP" || { echo "UNEXPECTED: the VF container does not reach $VM_HOST_IP"; ip -n c1 neigh; exit 1; }
ip netns exec c1 ping -c 3 -W 2 "$VM_HOST_IP" | tail -2
echo "the VF container reaches the host container"
echo "courier-sriov-$VM_TOKEN" | ip netns exec c1 nc -w 5 "$VM_HOST_IP" "$VM_TCP_PORT" || true
echo "__tcp_sent__"
await_echo c1 "$ip1" || { echo "UNEXPECTED: the host's pings did not reach the VF container"; exit 1; }
echo "the host container reaches the VF container"

# 2. A second one, and a third with no VF left: refused, nothing changed.
out=$(attach c2) || { echo "attach c2 failed: $out"; exit 1; }
echo "__attached__ c2 $(ip_of "$out")"
if out3=$(attach c3 2>&1); then echo "UNEXPECTED: a third VF container attached: $out3"; exit 1; fi
echo "__exhausted__ $out3"
echo "$out3" | grep -q "every one is in use" || { echo "UNEXPECTED: not the pool's error"; exit 1; }
[ -z "$(links_in c3)" ] || { echo "UNEXPECTED: c3 got $(links_in c3)"; exit 1; }
st=$(courier status)
echo "$st" | grep "VFs of"
echo "$st" | grep -q "VFs of $PF ($VM_PHYSNET): 0 free of 2 (2 held, 0 unusable)" \
  || { echo "UNEXPECTED: courier status does not show the pool held: $st"; exit 1; }
echo "pool exhausted: a clear error, nothing changed"

# 3. DEL after the netns is gone: the kernel gives the VF back (perhaps as devN); release
# finds it by its PCI address, renames and resets it.
ip netns del c2
t=$(now_ms)
courier detach --netns /var/run/netns/c2
echo "__timing__ detach-gone-netns $(( $(now_ms) - t )) ms"
vf_line 0; vf_line 1
echo "VF netdevs: $(vf_dev 0) $(vf_dev 1)"
[ "$(vf_dev 0)" = "$VF0" ] || [ "$(vf_dev 1)" = "$VF1" ] || { echo "UNEXPECTED: no VF is back under its name"; exit 1; }
echo "released with its netns already gone"
ip netns add c2

# 4. kill -9 with both VFs claimed (c1, and c2 attached again), c2's netns deleted while the
# daemon is down, restart: c1 keeps its VF and its network; reconcile recovers c2's VF (home,
# reset) and hands it out once more; no VF is handed out twice.
out=$(attach c2) || { echo "attach c2 again failed: $out"; exit 1; }
echo "__attached__ c2 again $(ip_of "$out")"
kill -9 "$COURIER_PID"; wait "$COURIER_PID" 2>/dev/null || true
ip netns del c2
courier_daemon sriov
courier reconcile >/dev/null
ip -n c1 -br link | grep -q '^eth0' || { echo "UNEXPECTED: c1 lost its VF"; exit 1; }
reached c1 "$VM_HOST_IP" || { echo "UNEXPECTED: c1 lost its network"; exit 1; }
courier status | grep "VFs of"
courier status | grep -q "VFs of $PF ($VM_PHYSNET): 1 free of 2 (1 held, 0 unusable)" \
  || { echo "UNEXPECTED: after restart + reconcile the pool is not 1 held, 1 free: $(courier status)"; exit 1; }
echo "reconcile recovered the VF of a netns deleted while the daemon was down"
ip netns add c2
out=$(attach c4) || { echo "attach after restart failed: $out"; exit 1; }
echo "__attached__ c4 $(ip_of "$out")"
if out3=$(attach c3 2>&1); then echo "UNEXPECTED: a VF handed out twice: $out3"; exit 1; fi
echo "after kill -9 and restart: no VF lost, none handed out twice"
courier detach --netns /var/run/netns/c1
courier detach --netns /var/run/netns/c4

# 4b. An ADD that fails half way (the VF is in the netns when its MTU is refused: the daemon
# now asks 65535, which igbvf cannot take), then DEL: the VF is home and reset, nothing left.
kill "$COURIER_PID"; wait "$COURIER_PID" 2>/dev/null || true
COURIER_MTU=65535 courier_daemon sriov
if out=$(attach c1 2>&1); then echo "UNEXPECTED: an MTU of 65535 was taken: $out"; exit 1; fi
echo "__half_way__ $out"
courier detach --netns /var/run/netns/c1 || true
[ -z "$(links_in c1)" ] || { echo "UNEXPECTED: c1 keeps $(links_in c1) after a failed ADD"; exit 1; }
for i in 0 1; do vf_line $i | grep -q "link/ether 00:00:00:00:00:00" || { echo "UNEXPECTED: VF $i not reset after a failed ADD: $(vf_line $i)"; exit 1; }; done
[ "$(vf_dev 0)" = "$VF0" ] && [ "$(vf_dev 1)" = "$VF1" ] || { echo "UNEXPECTED: after a failed ADD the VF netdevs are $(vf_dev 0) $(vf_dev 1)"; exit 1; }
left=$(courier --json attachments | tr -d ' \n')
case $left in *'"id"'*) echo "UNEXPECTED: a record is left after a failed ADD and DEL: $left"; exit 1 ;; esac
echo "an ADD failed half way, then DEL: the VF home and reset"
kill "$COURIER_PID"; wait "$COURIER_PID" 2>/dev/null || true
unset COURIER_MTU
courier_daemon sriov

# 5. CNI, as Kubernetes' SR-IOV device plugin drives it: the VF by PCI address (deviceID),
# the sriov binding implied.
want=$(vf_pci 1)
conf='{"cniVersion":"1.1.0","name":"'"$VM_NET"'","type":"courier","deviceID":"'"$want"'"}'
cni() { echo "$conf" | CNI_COMMAND=$1 CNI_CONTAINERID=cni-sriov CNI_NETNS=/var/run/netns/c3 CNI_IFNAME=net1 CNI_PATH=/usr/local/bin courier; }
res=$(cni ADD) || { echo "CNI ADD failed: $res"; vf_line 1; ip -n c3 link; ip link; grep -v '"DEBUG"' /tmp/courier.log | tail -4; exit 1; }
echo "CNI ADD: $(echo "$res" | tr -d ' \n' | head -c 300)"
vf_line 1 | grep -q "vlan $VM_VLAN," || { echo "UNEXPECTED: CNI ADD did not take VF 1 ($want)"; vf_line 1; exit 1; }
ip -n c3 -br link | grep -q '^net1' || { echo "UNEXPECTED: no net1 in c3"; exit 1; }
reached c3 "$VM_HOST_IP" || { echo "UNEXPECTED: the CNI VF container does not reach $VM_HOST_IP"; exit 1; }
cni CHECK || { echo "UNEXPECTED: CNI CHECK failed"; exit 1; }
cni DEL || { echo "UNEXPECTED: CNI DEL failed"; exit 1; }
[ -z "$(links_in c3)" ] || { echo "UNEXPECTED: c3 keeps $(links_in c3)"; exit 1; }
echo "CNI with deviceID: that VF, reachable, released"

# 6. Cycles over the 2 VFs.
for i in $(seq "$CYCLES"); do
  attach c1 >/dev/null || { echo "cycle $i: attach c1 failed"; tail -5 /tmp/courier.log; exit 1; }
  attach c2 >/dev/null || { echo "cycle $i: attach c2 failed"; tail -5 /tmp/courier.log; exit 1; }
  courier detach --netns /var/run/netns/c1
  courier detach --netns /var/run/netns/c2
done
echo "$(( CYCLES * 2 )) attach/detach cycles on 2 VFs"
echo "__timings__ attach $(grep '"attached"' /tmp/courier.log | grep -o '"total_ms":[0-9.]*' | cut -d: -f2 | tr '\n' ' ')"
echo "__timings__ release $(grep '"detached"' /tmp/courier.log | grep -o '"total_ms":[0-9.]*' | cut -d: -f2 | tr '\n' ' ')"

# 7. Every VF home, under its own name, reset.
vfs_home_and_reset
for n in c1 c2 c3 c4; do [ -z "$(links_in $n)" ] || { echo "UNEXPECTED: $n keeps $(links_in $n)"; exit 1; }; done
echo "every VF free and reset"
echo "__ok__"
