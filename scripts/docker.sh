#!/usr/bin/env bash
# A real Docker Engine (Debian's docker.io 20.10) for Courier's tests: one dockerd of our own,
# next to (not instead of) any system docker. Root; idempotent.
#
#   scripts/docker.sh start | stop | status
#
# API socket: unix:///run/courier-docker/docker.sock
#   use it with  DOCKER_HOST=unix:///run/courier-docker/docker.sock docker ...
# State under $COURIER_DOCKER_DIR (default /var/lib/courier-docker):
#   data/ (--data-root), exec/ (--exec-root; its managed containerd lives in exec/containerd),
#   dockerd.pid, dockerd.log, daemon.json (empty: /etc/docker/daemon.json is not read).
# No bridge and no iptables (--bridge=none --iptables=false --ip6tables=false; the kernel has no
# netfilter for it): containers get `--network none` or a network of a remote driver (e.g.
# Courier's, discovered from /run/docker/plugins/NAME.sock). Storage driver vfs.
# Image: courier-busybox:latest, built on start when missing (no registry): a rootfs of
# busybox-static (/bin/busybox and a symlink per applet in /bin) through `docker import`.
# `stop` kills this dockerd's running containers (dockerd would give each 10 s after SIGTERM),
# then ends only this dockerd (by its pidfile) and waits for it and its containerd.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
D=${COURIER_DOCKER_DIR:-/var/lib/courier-docker}
RUN=/run/courier-docker
SOCK=$RUN/docker.sock
export DOCKER_HOST=unix://$SOCK
IMAGE=courier-busybox:latest
PIDFILE=$D/dockerd.pid
LOG=$D/dockerd.log
DOCKER=/usr/bin/docker        # Debian's client (a different docker may come first in PATH)
DOCKERD=/usr/sbin/dockerd
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

now() { date +%s%N; }
T0=$(now)
el() { local d=$(( ($(now) - T0) / 100000000 )); echo "$((d / 10)).$((d % 10))"; }
log() { echo "docker.sh [+$(el)s] $*"; }
die() { echo "docker.sh: FAILED: $*" >&2; exit 1; }
# A pid in the file that exists and is not a zombie (a dockerd killed with -9 may not be reaped yet).
alive() {
  [ -s "$1" ] || return 1
  local pid state
  pid=$(cat "$1")
  kill -0 "$pid" 2>/dev/null || return 1
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo Z)
  [ "$state" != Z ]
}
answers() { timeout 5 "$DOCKER" info --format '{{.ServerVersion}}' >/dev/null 2>&1; }
have_image() { timeout 5 "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; }
usage_hint() { echo "docker.sh: use it with  DOCKER_HOST=unix://$SOCK docker ...  (image $IMAGE)"; }

build_image() {
  local rootfs=$D/rootfs
  [ -x /bin/busybox ] || die "/bin/busybox missing (apt-get install busybox-static)"
  log "building $IMAGE from busybox-static ($(/bin/busybox | head -1 | cut -d' ' -f1-2))"
  rm -rf "$rootfs"
  mkdir -p "$rootfs"/{bin,etc,proc,sys,dev,tmp,root,var,run}
  chmod 1777 "$rootfs/tmp"
  cp /bin/busybox "$rootfs/bin/busybox"
  local a
  for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || ln -s busybox "$rootfs/bin/$a"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$rootfs/etc/group"
  tar -C "$rootfs" --numeric-owner -c . | "$DOCKER" import \
    --change 'ENV PATH=/bin' --change 'CMD ["sh"]' - "$IMAGE" >/dev/null
  rm -rf "$rootfs"
  have_image || die "docker import did not produce $IMAGE"
  log "$IMAGE built"
}

start() {
  [ "$(id -u)" = 0 ] || die "run as root"
  [ -x "$DOCKERD" ] && [ -x "$DOCKER" ] || "$here/install-deps.sh" docker
  mkdir -p "$D/data" "$D/exec" "$RUN"
  [ -s "$D/daemon.json" ] || echo '{}' > "$D/daemon.json"
  local launched=""
  if alive "$PIDFILE"; then
    log "dockerd already running (pid $(cat "$PIDFILE"))"
  else
    rm -f "$PIDFILE" "$SOCK"
    # A dockerd killed with -9 leaves its containerd behind for a while; a new dockerd cannot
    # start its own beside it ("timeout waiting for containerd to start").
    local ctrd_pidfile=$D/exec/containerd/containerd.pid j
    if alive "$ctrd_pidfile"; then
      log "waiting for the previous dockerd's containerd (pid $(cat "$ctrd_pidfile")) to exit"
      for j in $(seq 1 100); do alive "$ctrd_pidfile" || break; sleep 0.1; done
      alive "$ctrd_pidfile" && { log "still running: SIGTERM"; kill -TERM "$(cat "$ctrd_pidfile")"; sleep 1; }
    fi
    log "starting dockerd (log $LOG)"
    setsid "$DOCKERD" --config-file "$D/daemon.json" \
      --data-root "$D/data" --exec-root "$D/exec" --pidfile "$PIDFILE" -H "unix://$SOCK" \
      --iptables=false --ip6tables=false --ip-masq=false --bridge=none --storage-driver=vfs \
      </dev/null >>"$LOG" 2>&1 &
    launched=$!
  fi
  # Usually ~2 s; longer when it restores containers (restart policies) whose network plugin
  # answers slowly or not at all (dockerd retries each plugin call ~15 s before serving its API).
  local i deadline=$(( $(date +%s) + ${COURIER_DOCKER_START_TIMEOUT:-120} ))
  for i in $(seq 1 100000); do
    answers && break
    if [ "$i" -gt 5 ] && ! alive "$PIDFILE" && { [ -z "$launched" ] || ! kill -0 "$launched" 2>/dev/null; }; then
      tail -n 30 "$LOG" >&2; die "dockerd exited"
    fi
    [ "$(date +%s)" -lt "$deadline" ] || break
    sleep 0.1
  done
  answers || { tail -n 30 "$LOG" >&2; die "dockerd does not answer on $SOCK after ${COURIER_DOCKER_START_TIMEOUT:-120} s"; }
  log "dockerd $("$DOCKER" info --format '{{.ServerVersion}}') answers on unix://$SOCK (pid $(cat "$PIDFILE"))"
  have_image || build_image
  usage_hint
}

stop() {
  if ! alive "$PIDFILE"; then
    rm -f "$PIDFILE"
    log "dockerd not running"
    return 0
  fi
  local pid i ctrd_pidfile=$D/exec/containerd/containerd.pid ctrd=""
  pid=$(cat "$PIDFILE")
  alive "$ctrd_pidfile" && ctrd=$(cat "$ctrd_pidfile")
  local running
  running=$(timeout 5 "$DOCKER" ps -q 2>/dev/null || true)
  if [ -n "$running" ]; then
    log "killing its running containers: $(echo $running)"
    # shellcheck disable=SC2086
    timeout 20 "$DOCKER" kill $running >/dev/null 2>&1 || true
  fi
  log "stopping dockerd (pid $pid)"
  kill -TERM "$pid"
  for i in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then log "dockerd still running after 30 s: SIGKILL"; kill -KILL "$pid"; sleep 0.5; fi
  if [ -n "$ctrd" ]; then    # dockerd stops the containerd it started; make sure of it
    for i in $(seq 1 50); do kill -0 "$ctrd" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$ctrd" 2>/dev/null && { log "its containerd (pid $ctrd) still running: SIGTERM"; kill -TERM "$ctrd"; }
  fi
  rm -f "$PIDFILE" "$SOCK"
  log "dockerd stopped"
}

status() {
  local rc=0
  if alive "$PIDFILE"; then echo "dockerd: running (pid $(cat "$PIDFILE"))"; else echo "dockerd: not running"; rc=1; fi
  if answers; then
    echo "API: unix://$SOCK answers (server $("$DOCKER" info --format '{{.ServerVersion}}'), storage $("$DOCKER" info --format '{{.Driver}}'))"
  else
    echo "API: unix://$SOCK does not answer"; rc=1
  fi
  if [ "$rc" = 0 ]; then
    if have_image; then echo "image: $IMAGE present"; else echo "image: $IMAGE missing (scripts/docker.sh start builds it)"; rc=1; fi
  fi
  [ "$rc" = 0 ] && usage_hint
  return "$rc"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
