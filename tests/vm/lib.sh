# tests/vm/lib.sh - sourced by the guest scenarios (guest.sh puts it at /scenario/lib.sh).
#
# courier_daemon BINDINGS: starts `courier daemon` in the guest (the VM) with the bindings
# BINDINGS, the nested master eth1 (or COURIER_NESTED_MASTER), its Docker door off (or
# COURIER_DOCKER) (log: /tmp/courier.log, JSON lines, appended; its pid in COURIER_PID), and waits until its backends are connected. The backend:
#   Neutron, when VM_OS_AUTH_URL is set: the tenant's credentials in a clouds.yaml written here
#     (/etc/openstack/clouds.yaml, mode 600, cloud "vm": VM_OS_AUTH_URL, VM_OS_USERNAME,
#     VM_OS_PASSWORD, VM_OS_PROJECT_NAME; domain Default), and network_endpoint_override
#     VM_OS_NETWORK_ENDPOINT, since Keystone's catalog names an address only the host reaches;
#   else OVN direct: the NB at VM_NB_REMOTE.
courier_daemon() {
  export COURIER_BINDINGS=$1 COURIER_NESTED_MASTER=${COURIER_NESTED_MASTER:-eth1} \
    COURIER_DOCKER=${COURIER_DOCKER:-0} COURIER_LOG_FORMAT=json \
    COURIER_SOCKET=/run/courier.sock COURIER_STATE_DIR=/tmp/courier-state \
    COURIER_HOST=${VM_HOST_MARK:-vm-guest}
  if [ -n "${VM_OS_AUTH_URL:-}" ]; then
    : "${VM_OS_USERNAME:?}" "${VM_OS_PROJECT_NAME:?}" "${VM_OS_NETWORK_ENDPOINT:?}"
    # A second start reuses the clouds.yaml of the first (the password is unset after it).
    [ -s /etc/openstack/clouds.yaml ] || : "${VM_OS_PASSWORD:?}"
    mkdir -p /etc/openstack
    [ -s /etc/openstack/clouds.yaml ] || ( umask 077
      cat > /etc/openstack/clouds.yaml <<YAML
clouds:
  vm:
    auth_type: password
    auth:
      auth_url: "$VM_OS_AUTH_URL"
      username: "$VM_OS_USERNAME"
      password: "$VM_OS_PASSWORD"
      project_name: "$VM_OS_PROJECT_NAME"
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    interface: public
    network_endpoint_override: "$VM_OS_NETWORK_ENDPOINT"
YAML
    )
    unset VM_OS_PASSWORD
    # No OVN NB in this VM: Neutron is the only backend.
    export OS_CLIENT_CONFIG_FILE=/etc/openstack/clouds.yaml COURIER_NEUTRON_CLOUD=vm \
      COURIER_DEFAULT_BACKEND=neutron COURIER_OVN_NB_REMOTE=
  else
    export COURIER_OVN_NB_REMOTE=$VM_NB_REMOTE
  fi
  courier daemon >>/tmp/courier.log 2>&1 &
  COURIER_PID=$!
  local st=''
  for _ in $(seq 200); do
    if st=$(courier --json status 2>/dev/null) && ! echo "$st" | tr -d ' \n' | grep -q '"ok":false'; then
      return 0
    fi
    sleep 0.1
  done
  echo "courier daemon not ready: $st"; tail -20 /tmp/courier.log; exit 1
}

# docker_daemon: starts Debian's dockerd in the guest (the Docker layer: guest.sh VM_DOCKER=1)
# on /var/run/docker.sock: no bridge, no iptables, vfs storage, and DOCKER_RAMDISK (the root
# is an initramfs, where runc cannot pivot_root); log /tmp/dockerd.log, pid DOCKERD_PID. Then
# imports the image courier-busybox: this guest's static busybox.
docker_daemon() {
  mkdir -p /var/lib/docker
  DOCKER_RAMDISK=true dockerd --iptables=false --ip6tables=false --ip-masq=false --bridge=none \
    --storage-driver=vfs >/tmp/dockerd.log 2>&1 &
  DOCKERD_PID=$!
  local r=/tmp/image-root a
  for _ in $(seq 600); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start"; tail -20 /tmp/dockerd.log; exit 1; }
  mkdir -p $r/bin $r/etc $r/proc $r/sys $r/dev $r/tmp $r/root
  cp /bin/busybox $r/bin/busybox
  for a in $(busybox --list); do [ "$a" = busybox ] || ln -s busybox "$r/bin/$a"; done
  echo "root:x:0:0:root:/root:/bin/sh" > $r/etc/passwd
  tar -C $r -c . | docker import --change 'ENV PATH=/bin' --change 'CMD ["sh"]' - courier-busybox >/dev/null \
    || { echo "docker import failed"; tail -20 /tmp/dockerd.log; exit 1; }
  rm -rf $r
}

# sriov_pf [NUMVFS]: the igb PF eth2 (guest.sh VM_SRIOV_TAP) up with NUMVFS (default 2) VFs;
# sets PF, D (its sysfs device) and VF0 VF1 (the first two VFs' netdevs), and defines vf_pci N,
# vf_dev N (VF N's PCI address, netdev) and vf_line N (VF N's line in `ip link show PF`).
sriov_pf() {
  PF=eth2 D=/sys/class/net/eth2/device
  ip link set "$PF" up
  for _ in $(seq 40); do [ "$(cat /sys/class/net/$PF/carrier 2>/dev/null)" = 1 ] && break; sleep 0.25; done
  echo "${1:-2}" > "$D/sriov_numvfs"
  for _ in $(seq 80); do [ -n "$(vf_dev 0)" ] && [ -n "$(vf_dev 1)" ] && break; sleep 0.25; done
  VF0=$(vf_dev 0) VF1=$(vf_dev 1)
  [ -n "$VF0" ] && [ -n "$VF1" ] || { echo "the VFs have no netdevs"; ls -l "$D"; exit 1; }
  echo "VFs: $(vf_pci 0) $VF0, $(vf_pci 1) $VF1"
}
vf_pci() { basename "$(readlink -f "$D/virtfn$1")"; }
vf_dev() { ls "$D/virtfn$1/net" 2>/dev/null | head -1; }
vf_line() { ip link show "$PF" | grep "vf $1 " || true; }

# vfs_home_and_reset: both VFs have no admin MAC and no VLAN (each one's line printed) and are
# in the host netns under the names sriov_pf found; else says which is not and exits 1.
vfs_home_and_reset() {
  local i l
  for i in 0 1; do
    l=$(vf_line $i); echo "$l"
    echo "$l" | grep -q "link/ether 00:00:00:00:00:00" || { echo "UNEXPECTED: VF $i keeps a MAC: $l"; exit 1; }
    if echo "$l" | grep -q "vlan"; then echo "UNEXPECTED: VF $i keeps a VLAN: $l"; exit 1; fi
  done
  [ "$(vf_dev 0)" = "$VF0" ] && [ "$(vf_dev 1)" = "$VF1" ] \
    || { echo "UNEXPECTED: VF netdevs $(vf_dev 0) $(vf_dev 1), not $VF0 $VF1"; exit 1; }
}

# ip_of JSON: the first IPv4 address of `courier attach --json`'s answer.
ip_of() { echo "$1" | tr -d ' \n' | sed -n 's/.*"ips":\["\([0-9.]*\)\/.*/\1/p'; }
# links_in NETNS: its links but lo.
links_in() { ip -n "$1" -o link | awk -F': ' '$2 != "lo" {print $2}' | sed 's/@.*//'; }
# reached NETNS IP: ping within 30 s (the first ARP crosses the emulated NIC slowly).
reached() {
  for _ in $(seq 15); do ip netns exec "$1" ping -c 1 -W 2 "$2" >/dev/null 2>&1 && return 0; done
  return 1
}
# in_echos NETNS: the ICMP echo requests its kernel received so far.
in_echos() { ip netns exec "$1" awk '/^Icmp:/ { if (!h) { for (i = 1; i <= NF; i++) c[$i] = i; h = 1 } else print $c["InEchos"] }' /proc/net/snmp; }
# await_echo NETNS IP: prints "__await_echo__ IP" (the host pings IP on that cue) and waits up
# to 30 s for 3 more echo requests to arrive in NETNS; false if they do not.
await_echo() {
  local base; base=$(in_echos "$1")
  echo "__await_echo__ $2"
  for _ in $(seq 300); do
    [ $(( $(in_echos "$1") - base )) -ge 3 ] && return 0
    sleep 0.1
  done
  return 1
}

# vm_ovs_bridge MAC: the VM's own Open vSwitch (ovsdb-server on /var/run/openvswitch/db.sock,
# ovs-vswitchd) with bridge br-vm (hwaddr MAC), the VM port eth1 as its uplink, both up: what
# the vlan-ovs binding plugs its veths into.
vm_ovs_bridge() {
  modprobe tun   # the userspace datapath's internal ports are taps
  mkdir -p /var/run/openvswitch /var/log/openvswitch /etc/openvswitch
  ovsdb-tool create /etc/openvswitch/conf.db /usr/share/openvswitch/vswitch.ovsschema
  ovsdb-server /etc/openvswitch/conf.db --remote=punix:/var/run/openvswitch/db.sock \
    --pidfile=/run/ovsdb-server.pid --detach --log-file=/tmp/ovsdb-server.log -vconsole:off
  ovs-vsctl --no-wait init
  ovs-vswitchd --pidfile=/run/ovs-vswitchd.pid --detach --log-file=/tmp/ovs-vswitchd.log -vconsole:off
  # The userspace datapath: the kernel one loses its upcalls in this guest (ovs-vswitchd logs
  # "netlink_socket|ERR|fcntl: Protocol not supported" and ARP never completes).
  ovs-vsctl add-br br-vm -- set bridge br-vm datapath_type=netdev other-config:hwaddr="$1" \
    -- add-port br-vm eth1 || { grep -v "|INFO|" /tmp/ovs-vswitchd.log | tail -20; exit 1; }
  ip link set eth1 up
  ip link set br-vm up
}

# now_ms: milliseconds since the guest booted (/proc/uptime: no date +%N needed).
now_ms() { awk '{printf "%d\n", $1 * 1000}' /proc/uptime; }

# dropped_within SECS NETNS IP: true once NETNS reaches IP no more (a 2-ping round with no reply),
# trying for SECS seconds; sets DROPPED_MS to when the first such round began (from the call). A
# change the backend accepted is in the datapath only once the hypervisor's ovn-controller
# applied it; through Neutron the VM cannot wait for that (no NB access), so the scenarios allow
# it a bounded while and say how long it took.
dropped_within() {
  local t0 end r
  t0=$(now_ms); end=$(( t0 + $1 * 1000 ))
  while :; do
    r=$(now_ms)
    if ! ip netns exec "$2" ping -c 2 -W 1 "$3" >/dev/null 2>&1; then
      DROPPED_MS=$(( r - t0 )); return 0
    fi
    [ "$(now_ms)" -lt "$end" ] || return 1
    sleep 0.2
  done
}
