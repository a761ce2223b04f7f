#!/usr/bin/env bash
# Installs what Courier's setup and tests need on a fresh Debian 12 machine (root).
# Idempotent: packages already present are skipped by apt.
#   scripts/install-deps.sh           what setup.sh and test.sh need
#   scripts/install-deps.sh neutron   also what scripts/neutron.sh needs (MariaDB, a Python venv,
#                                     headers and a compiler for uwsgi; pip brings the rest)
#   scripts/install-deps.sh docker    also what scripts/docker.sh needs (Debian's Docker Engine)
#   scripts/install-deps.sh kuryr     also what scripts/kuryr.sh needs (a Python >= 3.11 venv:
#                                     Debian 12's python3 is 3.11; pip brings kuryr-libnetwork)
#   scripts/install-deps.sh rabbitmq  also RabbitMQ (scripts/neutron.sh sriov-agent)
#   scripts/install-deps.sh qemu      also what tests/vm/guest.sh needs on the host (QEMU itself
#                                     comes from bookworm-backports via guest.sh setup)
#   scripts/install-deps.sh neutron docker   several extras at once
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(openvswitch-switch ovn-central ovn-host containernetworking-plugins iproute2 ethtool procps iputils-ping netcat-openbsd curl jq
      podman busybox-static)
for extra in "$@"; do
  case "$extra" in
    neutron) pkgs+=(mariadb-server mariadb-client python3-venv python3-dev build-essential ca-certificates) ;;
    docker) pkgs+=(docker.io) ;;
    rabbitmq) pkgs+=(rabbitmq-server) ;;   # scripts/neutron.sh sriov-agent: the agents' RPC bus
    kuryr) pkgs+=(python3 python3-venv ca-certificates) ;;
    # guest.sh: dpkg -x/apt-get download (dpkg, apt), xz for vmlinux, strip, ethtool in the guest
    qemu) pkgs+=(xz-utils binutils debian-archive-keyring ca-certificates) ;;
    *) echo "install-deps: unknown extra '$extra' (known: neutron, docker, kuryr, qemu, rabbitmq)" >&2; exit 2 ;;
  esac
done
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  # Keep packaged services from starting under a non-systemd PID 1; our scripts start them.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "install-deps: ok"
