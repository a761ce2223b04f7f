#!/usr/bin/env bash
# Re-captures tests/fixtures/docker/*.jsonl: every call the real dockerd (scripts/docker.sh) makes
# on Courier's plugin socket in the Docker tests below, with Courier's answers, one JSON line per
# call ({"method","request","status","response"}). The unit tests in src/frontdoor/docker/replay.rs
# replay them against the handlers without dockerd. Root; needs OVN (scripts/ovn.sh) and dockerd.
#
#   scripts/capture-docker-fixture.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=tests/fixtures/docker
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
scripts/ovn.sh start >/dev/null
scripts/docker.sh start >/dev/null
COURIER_CAPTURE_DIR=$tmp cargo test --locked --features test-hooks --test docker -- --test-threads=1 \
  --exact ovn_direct_containers_talk_connect_disconnect_and_leave_nothing dual_stack_network_ping6 \
  requested_ip_and_mac_are_honoured_and_bad_ones_change_nothing
mkdir -p "$out"
for f in "$tmp"/*.jsonl; do
  cp "$f" "$out/$(basename "$f")"
  echo "capture: $out/$(basename "$f"): $(wc -l < "$f") calls"
done
