#!/usr/bin/env bash
# Command two (README): runs all tests — unit tests and integration tests against the real
# OVS/OVN that scripts/ovn.sh starts, the real Neutron + Keystone that scripts/neutron.sh
# starts and the real Docker Engine that scripts/docker.sh starts, in real network namespaces
# (root). Installs what they need.
# Integration tests that cannot run print SKIP and are counted below; with
# COURIER_REQUIRE_ENV=1 (CI) they fail instead.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
  scripts/install-deps.sh neutron docker
  scripts/ovn.sh start
  # Neutron 29 + Keystone 30 from PyPI for the Neutron backend's tests (≈ 70 s the first time).
  scripts/neutron.sh start
  # dockerd of our own (not the system's) for the Docker front door's tests.
  scripts/docker.sh start
else
  echo "test.sh: not root: integration tests will be skipped (unit tests still run)"
fi
export COURIER_SKIP_LOG=$PWD/target/skipped.txt
mkdir -p target && : > "$COURIER_SKIP_LOG"
# What the run leaves behind is counted on the whole host and cloud (scripts/leak-check.sh:
# Neutron networks/ports/trunks, NB switches/ports, br-int ports, netns, links), not only by
# Courier's marks: anything new after the run fails it.
leaks=
if [ "$(id -u)" = 0 ]; then
  leaks=$(mktemp -d)
  scripts/leak-check.sh snapshot "$leaks"
fi
# Integration tests share one OVN and one host: one test at a time.
cargo test --workspace --locked --features courier/test-hooks -- --test-threads=1
if [ -n "$leaks" ]; then
  scripts/leak-check.sh compare "$leaks"
  rm -rf "$leaks"
fi
skipped=$(wc -l < "$COURIER_SKIP_LOG")
if [ "$skipped" -gt 0 ]; then
  echo "== $skipped test(s) SKIPPED:"; sed 's/^/   /' "$COURIER_SKIP_LOG"
else
  echo "== no tests skipped"
fi
