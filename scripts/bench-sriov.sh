#!/usr/bin/env bash
# SR-IOV VF attach/release against a veth attach/release, both in one QEMU guest (TCG) on one
# Courier daemon: runs the guest test guest_sriov_beside_macvlan_docker_and_veth (tests/vm.rs,
# tests/vm/scenarios/sriov-mixed.sh), whose last phase alternates VM_CYCLES (30) cycles of a VF
# container (sriov binding: the igb's VFs) and a veth container (vlan-ovs binding: a veth into
# the VM's own Open vSwitch), and prints the daemon's own figures (total_ms of each attach and
# detach, plug_ms of each attach's edge binding): n, p50, p90, p99, max, and the p50 ratios VF /
# veth. Both attaches write one logical port to the host's NB over TCP (an external port for the
# VF, a child port for the veth). A benchmark, not a test: it prints numbers and asserts
# nothing about them (the test it runs asserts the containers work); it exits non-zero when the
# run fails. Root; what scripts/vm-test.sh sets up (OVN, QEMU, the guest's kernel and initramfs,
# the static courier binary) it sets up too.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-sriov.sh: run as root" >&2; exit 1; }
scripts/install-deps.sh qemu docker >/dev/null
scripts/ovn.sh start >/dev/null
COURIER_BIN=$PWD/$(scripts/build-static.sh)
export COURIER_BIN COURIER_REQUIRE_ENV=1
tests/vm/guest.sh setup >/dev/null
out=$(mktemp); trap 'rm -f "$out"' EXIT
if ! flock /tmp/courier-guest.lock cargo test --locked --features courier/test-hooks --test vm -- \
    --test-threads=1 --include-ignored --nocapture --exact guest_sriov_beside_macvlan_docker_and_veth >"$out" 2>&1; then
  tail -n 60 "$out" >&2; echo "bench-sriov.sh: the guest run failed" >&2; exit 1
fi
grep '^guest_sriov_beside_macvlan_docker_and_veth: ' "$out" | sed 's/^guest_sriov_beside_macvlan_docker_and_veth: //'
