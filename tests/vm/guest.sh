#!/usr/bin/env bash
# tests/vm/guest.sh - boot a QEMU guest (stock Debian kernel, busybox initramfs, TCG) and run
# one bash scenario inside it, for the tests that need a real kernel with 802.1Q, ipvlan,
# macvlan, veth and openvswitch (this host's kernel has none of the first three + the last).
#
# Usage:
#   tests/vm/guest.sh run SCENARIO [ARGS...]  boot, run `bash SCENARIO ARGS...` in the guest as
#                                             root, print its output, exit with its status
#   tests/vm/guest.sh setup                   only the cached host setup (qemu, kernel, initramfs)
#   tests/vm/guest.sh plug | unplug           create | remove the VM port: tap $VM_TAP on br-int
#                                             with external_ids:iface-id=$VM_LSP
# Exit status of `run`: the scenario's own, or
#   124 = the guest hit VM_TIMEOUT,  125 = the guest never reported a status (boot failure,
#   crash: console tail printed),  126 = host setup failed (install/download/build),  2 = usage.
#
# Env (host):
#   VM_DIR=/var/tmp/courier-vm   cache + run dirs (idempotent: finished steps are skipped)
#   VM_TIMEOUT=300 VM_MEM=1024 VM_SMP=2
#   COURIER_BIN                  courier binary for the guest (default: scripts/build-static.sh)
#   VM_TAP VM_MAC VM_LSP         the VM port: with VM_TAP set the guest gets eth1 on that host tap
#                                (MAC VM_MAC); `run` plugs it into br-int itself (iface-id VM_LSP)
#                                and removes it afterwards unless it existed before
#   VM_SRIOV_TAP VM_SRIOV_MAC    an SR-IOV NIC: the guest gets an igb PF eth2 (MAC VM_SRIOV_MAC)
#                                on that host tap (the caller makes it and bridges it)
#   VM_DOCKER=1                  the Docker layer too: dockerd, containerd, runc, docker (see
#                                docker_layer; lib.sh docker_daemon starts it)
#   VM_*, COURIER_*              every such variable is exported to the scenario as well
#                                (e.g. VM_IP VM_PREFIX VM_GW); VM_NB_REMOTE defaults to
#                                tcp:10.0.2.2:6641 (the host's OVN NB, if it listens there)
# Guest: eth0 = QEMU user-mode net, 10.0.2.15/24 via 10.0.2.2 (host 127.0.0.1:PORT is
#   10.0.2.2:PORT); eth1 = the VM port (down, no address: the scenario configures it);
#   /usr/local/bin/courier, iproute2 ip/tc/bridge, ethtool, bash (also /bin/sh), busybox applets,
#   Open vSwitch (ovsdb-server, ovs-vswitchd, ovs-vsctl, ovsdb-tool; schema in /usr/share/openvswitch);
#   /scenario/lib.sh (tests/vm/lib.sh: courier_daemon, for scenarios to source);
#   modules ($MODULES) load on demand (modprobe, or autoload by `ip link add ... type vlan`).
# Facts behind the choices: ../../../shared/notes/environment.md ("QEMU guest", "A QEMU guest's
# NIC on the host's br-int"): KVM does not work here (TCG only); QEMU 10 from bookworm-backports;
# a persistent tap made before QEMU + vnet_hdr=off (else TCP carries bad checksums through the
# netdev datapath); bash as /bin/sh (busybox ash prefers its own minimal `ip`).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
VM_DIR=${VM_DIR:-/var/tmp/courier-vm}
VM_TIMEOUT=${VM_TIMEOUT:-300}
VM_MEM=${VM_MEM:-1024}
VM_SMP=${VM_SMP:-2}
export VM_NB_REMOTE=${VM_NB_REMOTE:-tcp:10.0.2.2:6641}
MGMT_MAC=52:54:00:12:34:56
# Modules in the initramfs (with their modules.dep closure). crc32c_*: libcrc32c (openvswitch)
# soft-depends on them and busybox modprobe ignores softdeps.
MODULES="virtio_pci virtio_net 8021q ipvlan macvlan veth openvswitch crc32c_generic crc32c_intel
 dummy bridge vxlan geneve tun igb igbvf"
# Host binaries copied with their shared libraries; the OVS ones (and the vswitch schema) let a
# scenario run a VM's own Open vSwitch (kernel datapath) for the vlan-ovs binding.
BINS="ip tc bridge ethtool bash ovsdb-server ovs-vswitchd ovs-vsctl ovsdb-tool"
APT=(apt-get -q -o DPkg::Lock::Timeout=600 -o Acquire::Lock::Timeout=600)

log() { echo "[vm] $*" >&2; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="${2:-$(now)}" 'BEGIN{printf "%.1f", b - a}'; }
die() { log "$*"; exit 126; }

# ---------- host setup (cached under $VM_DIR) ----------

# A private apt configuration: the host's mirror with bookworm-backports added, its own lists.
apt_private() {
  local a="$VM_DIR/apt" k=/usr/share/keyrings/debian-archive-keyring.gpg m s
  APTP=("${APT[@]}" -o Dir::Etc::sourcelist="$a/sources.list" -o Dir::Etc::sourceparts=-
        -o Dir::State::lists="$a/lists" -o Dir::Cache::archives="$a/archives"
        -o APT::Sandbox::User=root)
  [ -f "$a/lists/.updated" ] && return 0
  mkdir -p "$a/lists/partial" "$a/archives/partial"
  m=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  s=$(awk '/^URIs:/{n++; if (n==2) {print $2; exit}}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  m=${m:-http://deb.debian.org/debian}; s=${s:-http://deb.debian.org/debian-security}
  cat > "$a/sources.list" <<EOF
deb [signed-by=$k] $m bookworm main
deb [signed-by=$k] $m bookworm-updates main
deb [signed-by=$k] $s bookworm-security main
deb [signed-by=$k] $m bookworm-backports main
EOF
  "${APTP[@]}" update >/dev/null || die "apt-get update (private config in $a) failed"
  touch "$a/lists/.updated"
}

setup_qemu() {
  local v
  v=$(qemu-system-x86_64 --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -1) || true
  [ "${v:-0}" -ge 8 ] && return 0
  [ "$(id -u)" = 0 ] || die "qemu-system-x86_64 >= 8 missing and not root to install it"
  local t; t=$(now); log "installing qemu-system-x86 from bookworm-backports"
  apt_private
  DEBIAN_FRONTEND=noninteractive "${APTP[@]}" install -y --no-install-recommends --no-remove \
    -t bookworm-backports qemu-system-x86 >/dev/null || die "installing qemu-system-x86 failed"
  log "qemu installed in $(secs "$t")s: $(qemu-system-x86_64 --version | head -1)"
}

# Kernel and busybox-static .debs: downloaded and unpacked here, never installed on the host.
setup_kernel() {
  local d="$VM_DIR/dl" t kpkg
  mkdir -p "$d"
  if ! compgen -G "$d/linux-image-*-amd64_*.deb" >/dev/null || ! compgen -G "$d/busybox-static_*.deb" >/dev/null; then
    t=$(now); apt_private
    kpkg=$(apt-cache "${APTP[@]:1}" depends linux-image-amd64 2>/dev/null |
           awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    [ -n "$kpkg" ] || die "cannot resolve linux-image-amd64"
    (cd "$d" && "${APTP[@]}" download "$kpkg" busybox-static >/dev/null 2>&1) || die "apt-get download $kpkg busybox-static failed"
    log "downloaded $kpkg + busybox-static in $(secs "$t")s"
  fi
  KDEB=$(printf "%s\n" "$d"/linux-image-*-amd64_*.deb | sort -V | tail -1)
  BDEB=$(printf "%s\n" "$d"/busybox-static_*.deb | sort -V | tail -1)
  KVER=$(dpkg-deb -f "$KDEB" Package | sed 's/^linux-image-//')
  local k="$VM_DIR/kernel-$KVER"
  if [ ! -f "$k/.done" ]; then
    t=$(now); rm -rf "$k"; mkdir -p "$k"
    dpkg -x "$KDEB" "$k/pkg"; dpkg -x "$BDEB" "$k/bb"
    "$k/bb/bin/busybox" depmod -b "$k/pkg" "$KVER"
    # The uncompressed ELF vmlinux boots through QEMU's PVH entry: no real-mode path, no xz
    # decompression under TCG (≈ 4 s faster per boot). Fall back to vmlinuz if this fails.
    local off
    off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$k/pkg/boot/vmlinuz-$KVER" | head -1 | cut -d: -f1 || true)
    if [ -n "$off" ]; then
      tail -c +$((off + 1)) "$k/pkg/boot/vmlinuz-$KVER" | xz -dc > "$k/vmlinux" 2>/dev/null || true
      [ "$(head -c 4 "$k/vmlinux" | tail -c 3)" = ELF ] || rm -f "$k/vmlinux"
    fi
    touch "$k/.done"
    log "unpacked $(basename "$KDEB") in $(secs "$t")s"
  fi
  KDIR=$k
  BB=$k/bb/bin/busybox
  KERNEL=$k/vmlinux; [ -s "$KERNEL" ] || KERNEL=$k/pkg/boot/vmlinuz-$KVER
}

# The base initramfs, rebuilt when any input changes (this script: it holds /init; the kernel
# and busybox packages; the host binaries copied in).
setup_initramfs() {
  local key b p
  key=$( { sha256sum "$SELF" "$KDEB" "$BDEB"; echo "$MODULES $BINS"
           for b in $BINS; do p=$(command -v "$b") && sha256sum "$(readlink -f "$p")"; done; } |
         sha256sum | cut -c1-16)
  BASE="$VM_DIR/initrd-base-$key.cpio"
  [ -f "$BASE" ] && return 0
  local t r="$VM_DIR/rootfs" mods="lib/modules/$KVER" l f m line
  t=$(now); rm -rf "$r"
  mkdir -p "$r"/{bin,sbin,etc,proc,sys,dev,run,tmp,root,var,lib64,usr/local/bin} "$r/$mods"
  ln -s ../run "$r/var/run"
  cp "$BB" "$r/bin/busybox"
  for a in $("$BB" --list); do [ "$a" = busybox ] || ln -sf busybox "$r/bin/$a"; done
  for b in $BINS; do
    p=$(command -v "$b") || { [ "$b" = ethtool ] && continue; die "host has no $b"; }
    p=$(readlink -f "$p")
    rm -f "$r/bin/$b" "$r/sbin/$b"
    if [ "$b" = bash ]; then cp "$p" "$r/bin/bash"; else cp "$p" "$r/sbin/$b"; fi
    ldd "$p" | awk '$2 == "=>" && $3 ~ /^\//{print $3}' | while read -r l; do
      mkdir -p "$r$(dirname "$l")"; cp -Ln "$l" "$r$l"
    done
  done
  cp -L /lib64/ld-linux-x86-64.so.2 "$r/lib64/"
  mkdir -p "$r/usr/share/openvswitch" "$r/etc/openvswitch"
  cp /usr/share/openvswitch/vswitch.ovsschema "$r/usr/share/openvswitch/"
  ln -sf bash "$r/bin/sh"
  mkdir -p "$r/etc/iproute2"; cp -r /etc/iproute2/. "$r/etc/iproute2/" 2>/dev/null || true
  declare -A seen=()
  for m in $MODULES; do
    line=$(grep -E "(^|/)${m//_/[-_]}\.ko(\.xz)?:" "$KDIR/pkg/$mods/modules.dep") || die "kernel $KVER has no module $m"
    for f in ${line//:/}; do seen[$f]=1; done
  done
  for f in "${!seen[@]}"; do mkdir -p "$r/$mods/$(dirname "$f")"; cp "$KDIR/pkg/$mods/$f" "$r/$mods/$f"; done
  cp "$KDIR/pkg/$mods/modules.builtin" "$KDIR/pkg/$mods/modules.order" "$r/$mods/"
  "$BB" depmod -b "$r" "$KVER"
  echo "root:x:0:0:root:/root:/bin/sh" > "$r/etc/passwd"
  echo "root:x:0:" > "$r/etc/group"
  echo "127.0.0.1 localhost" > "$r/etc/hosts"
  write_init > "$r/init"; chmod +x "$r/init"
  rm -f "$VM_DIR"/initrd-base-*.cpio
  # Uncompressed: the guest CPU is emulated, gunzip in it would cost more than the copy.
  (cd "$r" && find . | LC_ALL=C sort | "$BB" cpio -o -H newc -R 0:0 2>/dev/null > "$BASE.tmp")
  mv "$BASE.tmp" "$BASE"; rm -rf "$r"
  log "built initramfs ($(du -h "$BASE" | cut -f1)) in $(secs "$t")s"
}

# Guest /init (bash). Output of the scenario goes to the 2nd UART (host file output.log), the
# kernel console to the 1st; the last line on the 2nd UART is __VM_EXIT__=<status>.
write_init() {
  cat <<'EOF'
#!/bin/sh
export PATH=/usr/local/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp; mount -t tmpfs tmpfs /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
ln -sf /bin/modprobe /sbin/modprobe; echo /sbin/modprobe > /proc/sys/kernel/modprobe
OUT=/dev/ttyS1
stty -F $OUT raw -echo 2>/dev/null
set -a; . /etc/vm.env; set +a
modprobe virtio_pci; modprobe virtio_net
# The SR-IOV NIC (VM_SRIOV_TAP): an igb PF; its VFs (igbvf) come with sriov_numvfs.
[ -n "${VM_SRIOV_MAC:-}" ] && { modprobe igb; modprobe igbvf; }
# Names by MAC: the management NIC is eth0, the VM port eth1, the SR-IOV PF eth2.
for n in $(ls /sys/class/net); do [ -e /sys/class/net/$n/device ] && ip link set "$n" name "x$n"; done
for n in $(ls /sys/class/net); do
  case $(cat /sys/class/net/$n/address) in
    "$VM_MGMT_MAC") ip link set "$n" name eth0 ;;
    "${VM_MAC:-none}") ip link set "$n" name eth1 ;;
    "${VM_SRIOV_MAC:-none}") ip link set "$n" name eth2 ;;
  esac
done
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
echo "nameserver 10.0.2.3" > /etc/resolv.conf
echo "__VM_READY__ $(cut -d' ' -f1 /proc/uptime)" > $OUT
cd /root
bash /scenario/run.sh > $OUT 2>&1 < /dev/null
printf '\n__VM_EXIT__=%d\n' $? > $OUT
stty -F $OUT raw 2>/dev/null       # tcsetattr(TCSADRAIN) waits until the UART has drained
poweroff -f
EOF
}

# The Docker layer (VM_DOCKER=1): Debian's dockerd, its containerd, runc shim and runc, its
# docker CLI (/usr/bin/docker, the daemon's own version: a newer CLI refuses some flags against
# API 1.41) and docker-init, with their shared libraries, in a cpio of its own cached by the
# binaries' hashes (≈ 190 MB: only the scenarios that run Docker pay for it; give them
# VM_MEM=2048). /init mounts cgroup2 for it; the scenario starts dockerd (lib.sh docker_daemon).
DOCKER_BINS="dockerd containerd containerd-shim-runc-v2 runc /usr/bin/docker docker-init"
docker_layer() {
  DLAYER=''
  [ "${VM_DOCKER:-}" = 1 ] || return 0
  local b p key r="$VM_DIR/docker-root" l
  key=$(for b in $DOCKER_BINS; do
          p=$(command -v "$b") || die "host has no $b (scripts/install-deps.sh docker)"
          sha256sum "$(readlink -f "$p")"; done | sha256sum | cut -c1-16)
  DLAYER="$VM_DIR/docker-$key.cpio"
  [ -f "$DLAYER" ] && return 0
  rm -rf "$r" "$VM_DIR"/docker-*.cpio; mkdir -p "$r/usr/local/bin"
  for b in $DOCKER_BINS; do
    p=$(readlink -f "$(command -v "$b")")
    cp "$p" "$r/usr/local/bin/$(basename "$b")"
    { ldd "$p" 2>/dev/null || true; } | awk '$2 == "=>" && $3 ~ /^\//{print $3}' | while read -r l; do
      mkdir -p "$r$(dirname "$l")"; cp -Ln "$l" "$r$l"
    done
  done
  (cd "$r" && find . | "$BB" cpio -o -H newc -R 0:0 2>/dev/null > "$DLAYER.tmp")
  mv "$DLAYER.tmp" "$DLAYER"; rm -rf "$r"
  log "built the Docker layer ($(du -h "$DLAYER" | cut -f1))"
}

courier_bin() {
  local src=${COURIER_BIN:-}
  if [ -z "$src" ]; then
    src=$(cd "$REPO" && scripts/build-static.sh) || die "scripts/build-static.sh failed"
    src="$REPO/$src"
  fi
  [ -x "$src" ] || die "courier binary $src missing"
  if ! ldd "$src" 2>&1 | grep -q -e "not a dynamic executable" -e "statically linked"; then
    log "warning: $src is dynamically linked; it may not run in the guest"
  fi
  # Stripped copy in a cpio of its own, cached by the binary's hash (it changes often).
  local h; h=$(sha256sum "$src" | cut -c1-16)
  CBIN="$VM_DIR/courier-$h.cpio"
  [ -f "$CBIN" ] && return 0
  local c="$VM_DIR/courier-root"
  rm -rf "$c" "$VM_DIR"/courier-*.cpio; mkdir -p "$c/usr/local/bin"
  strip -o "$c/usr/local/bin/courier" "$src" 2>/dev/null || cp "$src" "$c/usr/local/bin/courier"
  (cd "$c" && find . | "$BB" cpio -o -H newc -R 0:0 2>/dev/null > "$CBIN.tmp")
  mv "$CBIN.tmp" "$CBIN"; rm -rf "$c"
}

# Everything cached, under a lock (concurrent runs share $VM_DIR).
setup() {
  mkdir -p "$VM_DIR/runs"
  exec 9> "$VM_DIR/setup.lock"
  flock -w 900 9 || die "timed out waiting for $VM_DIR/setup.lock"
  setup_qemu
  setup_kernel
  setup_initramfs
  courier_bin
  docker_layer
  flock -u 9; exec 9>&-
}

# ---------- the VM port on br-int ----------

plug() {
  : "${VM_TAP:?VM_TAP unset}" "${VM_LSP:?VM_LSP unset}"
  ip link show "$VM_TAP" >/dev/null 2>&1 || ip tuntap add dev "$VM_TAP" mode tap
  ip link set "$VM_TAP" up
  ovs-vsctl --timeout=10 --may-exist add-port br-int "$VM_TAP" \
    -- set interface "$VM_TAP" external_ids:iface-id="$VM_LSP"
}

unplug() {
  : "${VM_TAP:?VM_TAP unset}"
  ovs-vsctl --timeout=10 --if-exists del-port br-int "$VM_TAP" || true
  if ip link show "$VM_TAP" >/dev/null 2>&1; then ip tuntap del dev "$VM_TAP" mode tap; fi
}

# ---------- run ----------

QPID='' RUN='' PLUGGED=''
cleanup() {
  set +e
  if [ -n "$QPID" ]; then kill "$QPID" 2>/dev/null; wait "$QPID" 2>/dev/null; fi
  [ -n "$PLUGGED" ] && unplug
  [ -n "$RUN" ] && rm -f "$RUN/initrd"
}

run() {
  if [ $# -lt 1 ] || [ ! -f "$1" ]; then echo "usage: $0 run SCENARIO [ARGS...] (a bash script)" >&2; exit 2; fi
  local scenario=$1; shift
  local t0 t1 tq tend line tready='' rc='' held=''
  t0=$(now)
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  setup
  t1=$(now)

  # Per-run cpio: the scenario, its arguments and the environment.
  { ls -1dt "$VM_DIR"/runs/run.* 2>/dev/null || true; } | tail -n +11 | xargs -r rm -rf  # keep 10
  RUN=$(mktemp -d "$VM_DIR/runs/run.XXXXXX")
  mkdir -p "$RUN/c/scenario" "$RUN/c/etc"
  cp "$scenario" "$RUN/c/scenario/scenario.sh"
  cp "$HERE/lib.sh" "$RUN/c/scenario/lib.sh"
  { printf 'exec bash /scenario/scenario.sh'; printf ' %q' "$@"; echo; } > "$RUN/c/scenario/run.sh"
  { echo "VM_MGMT_MAC=$MGMT_MAC"
    compgen -e | grep -E '^(VM|COURIER)_' | while read -r v; do printf '%s=%q\n' "$v" "${!v}"; done || true
  } > "$RUN/c/etc/vm.env"
  (cd "$RUN/c" && find . | "$BB" cpio -o -H newc -R 0:0 2>/dev/null > "$RUN/run.cpio")
  cat "$BASE" "$CBIN" ${DLAYER:+"$DLAYER"} "$RUN/run.cpio" > "$RUN/initrd"
  # The environment may hold a tenant's password (VM_OS_PASSWORD): only the initrd keeps it,
  # and cleanup removes that.
  rm -rf "$RUN/c" "$RUN/run.cpio"

  local nic=()
  if [ -n "${VM_TAP:-}" ]; then
    : "${VM_MAC:?VM_MAC must be set with VM_TAP}"
    if ! ip link show "$VM_TAP" >/dev/null 2>&1; then
      : "${VM_LSP:?VM_LSP must be set to plug VM_TAP}"
      PLUGGED=1; plug
    fi
    nic=(-netdev "tap,id=vmport,ifname=$VM_TAP,script=no,downscript=no,vnet_hdr=off"
         -device "virtio-net-pci,netdev=vmport,mac=$VM_MAC,romfile=")
  fi

  if [ -n "${VM_SRIOV_TAP:-}" ]; then
    # An SR-IOV PF (QEMU's igb: 7 VFs) on a persistent host tap the caller made (and put on a
    # bridge); its VFs' frames leave through it, 802.1Q-tagged as the PF sets them.
    : "${VM_SRIOV_MAC:?VM_SRIOV_MAC must be set with VM_SRIOV_TAP}"
    ip link show "$VM_SRIOV_TAP" >/dev/null 2>&1 || die "VM_SRIOV_TAP $VM_SRIOV_TAP does not exist"
    nic+=(-netdev "tap,id=sriov,ifname=$VM_SRIOV_TAP,script=no,downscript=no,vnet_hdr=off"
          -device "pcie-root-port,id=rp1,chassis=1,slot=1"
          -device "igb,bus=rp1,netdev=sriov,mac=$VM_SRIOV_MAC")
  fi

  : > "$RUN/output.log"
  tq=$(now)
  # -nodefaults: no VGA/floppy/CD; default SeaBIOS (qboot breaks igb VFs, see the notes).
  timeout -k 5 "$VM_TIMEOUT" qemu-system-x86_64 \
    -machine q35 -accel tcg -cpu max -smp "$VM_SMP" -m "$VM_MEM" \
    -display none -monitor none -no-reboot -nodefaults \
    -kernel "$KERNEL" -initrd "$RUN/initrd" \
    -append "console=ttyS0 panic=-1 loglevel=4 mitigations=off" \
    -serial "file:$RUN/console.log" -serial "file:$RUN/output.log" \
    -netdev user,id=mgmt -device "virtio-net-pci,netdev=mgmt,mac=$MGMT_MAC,romfile=" \
    "${nic[@]}" > "$RUN/qemu.log" 2>&1 < /dev/null &
  QPID=$!
  # Stream the scenario's output line by line as it comes (a host may act on a scenario's
  # cue); only an empty line is held back: the one /init writes before the marker is dropped.
  while IFS= read -r line; do
    case $line in
      __VM_READY__*) tready=$(now); continue ;;
      __VM_EXIT__=*) rc=${line#__VM_EXIT__=}; held=; break ;;
    esac
    [ -n "$held" ] && echo
    if [ -z "$line" ]; then held=1; else held=; printf '%s\n' "$line"; fi
  done < <(tail -s 0.1 -n +1 -f --pid=$QPID "$RUN/output.log")
  [ -n "$held" ] && echo
  tend=$(now)
  # The guest is disposable (no disk): stop QEMU now rather than wait for its poweroff.
  kill "$QPID" 2>/dev/null || true
  local qrc=0; wait "$QPID" 2>/dev/null || qrc=$?; QPID=
  if [ -z "$rc" ]; then
    log "no exit status from the guest (qemu rc=$qrc); console tail ($RUN):"
    tail -n 25 "$RUN/console.log" >&2; tail -n 10 "$RUN/qemu.log" >&2
    [ "$qrc" = 124 ] && { log "timeout after ${VM_TIMEOUT}s"; exit 124; }
    exit 125
  fi
  log "setup $(secs "$t0" "$t1")s, boot (qemu start -> scenario start) $(secs "$tq" "${tready:-$tend}")s," \
      "scenario $(secs "${tready:-$tq}" "$tend")s, total $(secs "$t0")s; status $rc"
  exit "$rc"
}

case "${1:-}" in
  run) shift; run "$@" ;;
  setup) setup; log "ready: $KERNEL, $BASE, $CBIN" ;;
  plug) plug ;;
  unplug) unplug ;;
  *) echo "usage: $0 run SCENARIO [ARGS...] | setup | plug | unplug" >&2; exit 2 ;;
esac
