#!/usr/bin/env bash
# The QEMU guest tests (tests/vm.rs), a CI stage of its own: installs what they need (the
# base deps, OVN started by scripts/ovn.sh; the *_through_neutron tests start Neutron + Keystone
# with scripts/neutron.sh when they are not running (≈ 70 s cold); tests/vm/guest.sh setup
# installs QEMU 10 from bookworm-backports and caches a Debian kernel + initramfs under
# /var/tmp/courier-vm; RabbitMQ for Neutron's SR-IOV agent; Debian's docker.io, whose binaries
# the Docker guest tests copy into the guest), builds the static courier binary the guest runs,
# then runs the tests one at a time. Root.
# With COURIER_REQUIRE_ENV=1 (CI) a test that cannot run fails instead of skipping.
# Cold (fresh machine): ≈ 30 s setup + the static build; warm: ≈ 5–7 s per guest boot.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
if [ "$(id -u)" = 0 ]; then
  scripts/install-deps.sh qemu rabbitmq docker
  scripts/ovn.sh start
  COURIER_BIN=$PWD/$(scripts/build-static.sh)
  export COURIER_BIN
  tests/vm/guest.sh setup
else
  echo "vm-test.sh: not root: the guest tests will be skipped"
fi
export COURIER_SKIP_LOG=$PWD/target/skipped-vm.txt
mkdir -p target && : > "$COURIER_SKIP_LOG"
# The guest tests are #[ignore]d in the workspace run (scripts/test.sh); here they are the point.
# One guest at a time on a machine (2 TCG guests on 2 cores starve each other): the lock is
# also what interactive runs take (flock /tmp/courier-guest.lock ...). --nocapture: the guests' output
# (and the attach timings they print, "__timings__") goes to the CI log.
flock /tmp/courier-guest.lock cargo test --locked --features courier/test-hooks --test vm -- --test-threads=1 --include-ignored --nocapture
skipped=$(wc -l < "$COURIER_SKIP_LOG")
if [ "$skipped" -gt 0 ]; then
  echo "== $skipped guest test(s) SKIPPED:"; sed 's/^/   /' "$COURIER_SKIP_LOG"
fi
echo "vm-test.sh: done in $(( $(date +%s) - start )) s"
