# tests/vm/lib.sh - sourced by the guest scenarios (guest.sh puts it at /scenario/lib.sh).
#
# courier_daemon BINDINGS: starts `courier daemon` in the guest (the VM) with the nested master
# eth1 and the bindings BINDINGS (log: /tmp/courier.log, JSON lines, appended; its pid in
# COURIER_PID), and waits until its backends are connected. The backend:
#   Neutron, when VM_OS_AUTH_URL is set: the tenant's credentials in a clouds.yaml written here
#     (/etc/openstack/clouds.yaml, mode 600, cloud "vm": VM_OS_AUTH_URL, VM_OS_USERNAME,
#     VM_OS_PASSWORD, VM_OS_PROJECT_NAME; domain Default), and network_endpoint_override
#     VM_OS_NETWORK_ENDPOINT, since Keystone's catalog names an address only the host reaches;
#   else OVN direct: the NB at VM_NB_REMOTE.
courier_daemon() {
  export COURIER_BINDINGS=$1 COURIER_NESTED_MASTER=eth1 COURIER_DOCKER=0 COURIER_LOG_FORMAT=json \
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
