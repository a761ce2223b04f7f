#!/usr/bin/env bash
# Builds Courier as one static binary (glibc linked statically: static-pie, no shared-library
# dependencies) and prints its path. The explicit --target keeps proc-macros and build scripts
# dynamically linked, as they must be.
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked -q --target "$host" --target-dir target/static
echo "target/static/$host/release/courier"
