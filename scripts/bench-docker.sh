#!/usr/bin/env bash
# Side-by-side benchmark of Docker network plugins on this host: what a network adds to
# `docker run --rm --network X courier-busybox:latest true`. A benchmark, not a test: it prints
# numbers and asserts nothing about them; it exits non-zero when a run or a setup step fails.
# Root.
#
#   scripts/bench-docker.sh [N] [--only CASES] [--raw FILE] [--logs DIR]
#
# N (default 30) timed runs per case, interleaved in one loop (round i starts at case i mod k, so
# no case always follows the same one), after one untimed warm-up run per case. Cases:
#   none             --network none: the floor (no plugin is called)
#   kuryr            kuryr-libnetwork 18.0.0 (scripts/kuryr.sh) on Neutron ML2/OVN:
#                    docker network create -d kuryr --ipam-driver kuryr --subnet 10.73.0.0/24 --gateway 10.73.0.1
#   courier-neutron  Courier's Docker front door, backend Neutron (-o courier.backend=neutron), 10.74.0.0/24
#   courier-ovn      Courier's Docker front door, backend OVN direct (the default), 10.75.0.0/24
# --only takes a comma list of those (default: all four). A Courier case whose daemon has no Docker
# front door (no COURIER_DOCKER_SOCKET) or whose plugin does not answer is reported as skipped.
# --raw FILE writes every sample (case, round, ms) as TSV. --logs DIR keeps the Courier daemon's log
# (courier.log) and kuryr-server's log lines of this run (kuryr-server.log) there.
#
# Reported per case: wall time of `docker run` (p50/p90/p99/mean, ms; percentiles by nearest rank,
# so with N < 100 p99 is the maximum), the time it adds over the floor (per sample: t minus the
# floor's p50, then p50/p99 of that), the ratios Kuryr/Courier of the added p50 and p99, and the
# VmRSS of kuryr-server and of the Courier daemon (before the first and after the last run).
#
# Uses: the dockerd of scripts/docker.sh (DOCKER_HOST, default unix:///run/courier-docker/docker.sock),
# OVN (scripts/ovn.sh), Keystone + Neutron (scripts/neutron.sh) for kuryr and courier-neutron. It
# starts none of those; a kuryr-server not running is started with scripts/kuryr.sh and stopped
# again at the end. The Courier daemon is its own: COURIER_BIN (default: scripts/build-static.sh's
# binary, built if needed), API socket /run/courier-bench/api.sock, state in a temporary directory,
# Docker plugin socket /run/docker/plugins/courier-bench.sock (driver name courier-bench), its own
# COURIER_HOST (kbench-<pid>), and it is used once `courier status` finds its backends reachable.
# Everything it creates is named kbench-<pid>-* and removed on exit, also on failure or ^C
# (containers, networks, the Courier daemon, its state, a kuryr-server it started).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export DOCKER_HOST=${DOCKER_HOST:-unix:///run/courier-docker/docker.sock}
DOCKER=/usr/bin/docker
IMAGE=courier-busybox:latest
ALL_CASES=(none kuryr courier-neutron courier-ovn)
N=30
ONLY=""
RAW=""
LOGS=""
KURYR_LOG=${COURIER_KURYR_DIR:-/var/lib/courier-kuryr}/log/kuryr-server.log
KURYR_LOG_FROM=0
while [ $# -gt 0 ]; do
  case "$1" in
    --only) ONLY=${2:?--only needs a list}; shift 2 ;;
    --only=*) ONLY=${1#--only=}; shift ;;
    --raw) RAW=${2:?--raw needs a file}; shift 2 ;;
    --logs) LOGS=${2:?--logs needs a directory}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    [0-9]*) N=$1; shift ;;
    *) echo "usage: $0 [N] [--only none,kuryr,courier-neutron,courier-ovn] [--raw FILE] [--logs DIR]" >&2; exit 2 ;;
  esac
done
[ "$N" -ge 1 ] 2>/dev/null || { echo "bench-docker: N must be a positive number" >&2; exit 2; }

TAG=kbench-$$
KURYR_PID="" KURYR_STARTED=0
COURIER_PID="" COURIER_BIN=${COURIER_BIN:-}
COURIER_RUN=/run/courier-bench
COURIER_API=$COURIER_RUN/api.sock
COURIER_DRIVER=courier-bench
COURIER_PLUGIN_SOCK=/run/docker/plugins/$COURIER_DRIVER.sock
WORK=""
NETS_MADE=()
declare -A NET SUBNET SKIP SAMPLES FIRST RSS_BEFORE CREATE_MS FAILS

now_ns() { date +%s%N; }
ms_since() { echo $(( ($(now_ns) - $1) / 1000 )) | awk '{printf "%.1f", $1 / 1000}'; }
log() { echo "bench-docker: $*" >&2; }
die() { echo "bench-docker: FAILED: $*" >&2; exit 1; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo "?"; }
mb() { case "$1" in ''|'?') echo "?" ;; *) awk -v k="$1" 'BEGIN {printf "%.1f MB", k / 1024}' ;; esac; }

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local rc=$? c n
  trap - EXIT INT TERM
  set +e
  # containers first (a --rm run interrupted by ^C may be left), then networks, then the plugins
  for c in $(timeout 20 "$DOCKER" ps -aq --filter "name=^$TAG-" 2>/dev/null); do
    timeout 60 "$DOCKER" rm -f "$c" >/dev/null 2>&1 || log "could not remove container $c"
  done
  for n in "${NETS_MADE[@]}"; do
    timeout 90 "$DOCKER" network rm "$n" >/dev/null 2>&1 || log "could not remove network $n"
  done
  if [ -n "$COURIER_PID" ] && kill -0 "$COURIER_PID" 2>/dev/null; then
    kill -TERM "$COURIER_PID"
    for _ in $(seq 1 100); do kill -0 "$COURIER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$COURIER_PID" 2>/dev/null && { log "Courier daemon still running after 10 s: SIGKILL"; kill -KILL "$COURIER_PID"; }
  fi
  [ -n "$COURIER_PID" ] && rm -f "$COURIER_PLUGIN_SOCK" "$COURIER_API"
  [ "$KURYR_STARTED" = 1 ] && "$here/kuryr.sh" stop >/dev/null
  if [ -n "$LOGS" ] && mkdir -p "$LOGS"; then
    [ -n "$WORK" ] && [ -s "$WORK/courier.log" ] && cp "$WORK/courier.log" "$LOGS/courier.log"
    [ -n "$KURYR_PID" ] && tail -c "+$((KURYR_LOG_FROM + 1))" "$KURYR_LOG" > "$LOGS/kuryr-server.log" 2>/dev/null
  fi
  if [ -n "$WORK" ]; then
    [ "$rc" != 0 ] && [ -s "$WORK/courier.log" ] && { log "Courier daemon log (tail):"; tail -n 15 "$WORK/courier.log" >&2; }
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ which cases
CASES=()
if [ -z "$ONLY" ]; then CASES=("${ALL_CASES[@]}"); else
  IFS=, read -r -a CASES <<< "$ONLY"
  for c in "${CASES[@]}"; do
    [[ " ${ALL_CASES[*]} " == *" $c "* ]] || { echo "bench-docker: unknown case '$c' (known: ${ALL_CASES[*]})" >&2; exit 2; }
  done
fi
want() { [[ " ${CASES[*]} " == *" $1 "* ]]; }
want none || CASES=(none "${CASES[@]}")   # the floor is always measured: the other cases are relative to it

# ------------------------------------------------------------------ preflight
[ "$(id -u)" = 0 ] || die "run as root"
timeout 5 "$DOCKER" info >/dev/null 2>&1 || die "dockerd does not answer at $DOCKER_HOST (scripts/docker.sh start)"
timeout 5 "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1 || die "image $IMAGE missing (scripts/docker.sh start)"
if want kuryr || want courier-ovn || want courier-neutron; then
  ovs-vsctl br-exists br-int 2>/dev/null || die "OVN is not up (scripts/ovn.sh start)"
fi
if want kuryr || want courier-neutron; then
  [ "$(curl -s -o /dev/null -m 5 -w '%{http_code}' http://127.0.0.1:9696/ || true)" = 200 ] \
    || die "Neutron does not answer on :9696 (scripts/neutron.sh start)"
fi
WORK=$(mktemp -d /tmp/kbench.XXXXXX)

# ------------------------------------------------------------------ Kuryr
if want kuryr; then
  if ! "$here/kuryr.sh" status >/dev/null 2>&1; then
    KURYR_STARTED=1
    "$here/kuryr.sh" start >&2 || die "scripts/kuryr.sh start"
  fi
  KURYR_PID=$(cat "${COURIER_KURYR_DIR:-/var/lib/courier-kuryr}/kuryr-server.pid")
  KURYR_LOG_FROM=$(stat -c %s "$KURYR_LOG" 2>/dev/null || echo 0)
  NET[kuryr]=$TAG-kuryr SUBNET[kuryr]=10.73.0.0/24
fi

# ------------------------------------------------------------------ Courier
skip_courier() {
  local c
  for c in courier-neutron courier-ovn; do want "$c" && SKIP[$c]=$1; done
  log "courier: skipped ($1)"
}
start_courier() {
  if [ -z "$COURIER_BIN" ]; then
    log "building the static courier binary (scripts/build-static.sh)"
    COURIER_BIN=$(cd "$here/.." && nice -n 10 scripts/build-static.sh) || { skip_courier "build failed"; return 0; }
    COURIER_BIN=$here/../$COURIER_BIN
  fi
  [ -x "$COURIER_BIN" ] || { skip_courier "no courier binary at $COURIER_BIN"; return 0; }
  if ! grep -aq COURIER_DOCKER_SOCKET "$COURIER_BIN"; then
    skip_courier "$COURIER_BIN has no Docker front door: it does not know COURIER_DOCKER_SOCKET"; return 0
  fi
  [ -e "$COURIER_PLUGIN_SOCK" ] && die "$COURIER_PLUGIN_SOCK exists: another bench-docker.sh running? (remove it if stale)"
  mkdir -p "$COURIER_RUN" "$(dirname "$COURIER_PLUGIN_SOCK")"
  # Defaults plus the environment below: a host's /etc/courier/courier.toml is not read.
  echo "# bench-docker.sh: defaults; COURIER_* from the environment" > "$WORK/courier.toml"
  # COURIER_HOST: its own owner mark, so its reconcile never takes another daemon's ports on this
  # host for leaks (Neutron's binding:host_id stays the chassis hostname).
  local env=(COURIER_SOCKET="$COURIER_API" COURIER_STATE_DIR="$WORK/courier-state" COURIER_HOST="$TAG"
             COURIER_DOCKER=1 COURIER_DOCKER_SOCKET="$COURIER_PLUGIN_SOCK")
  want courier-neutron && env+=(COURIER_NEUTRON=1 COURIER_NEUTRON_CLOUD=courier-admin
                                OS_CLIENT_CONFIG_FILE=/etc/courier-test/clouds.yaml)
  env "${env[@]}" setsid "$COURIER_BIN" daemon --config "$WORK/courier.toml" </dev/null >"$WORK/courier.log" 2>&1 &
  COURIER_PID=$!
  local ok=0
  for _ in $(seq 1 200); do
    kill -0 "$COURIER_PID" 2>/dev/null || break
    if [ -S "$COURIER_PLUGIN_SOCK" ] && curl -s -m 2 --unix-socket "$COURIER_PLUGIN_SOCK" -X POST \
        http://courier/Plugin.Activate 2>/dev/null | grep -q NetworkDriver; then ok=1; break; fi
    sleep 0.1
  done
  if [ "$ok" = 0 ]; then
    tail -n 10 "$WORK/courier.log" >&2
    skip_courier "the daemon did not answer Plugin.Activate on $COURIER_PLUGIN_SOCK within 20 s"
    return 0
  fi
  # Backends connect lazily: wait until `courier status` finds every one reachable (else the
  # first CreateNetwork on Neutron can fail with "not connected yet").
  ok=0
  for _ in $(seq 1 300); do
    "$COURIER_BIN" --socket "$COURIER_API" status >/dev/null 2>&1 && { ok=1; break; }
    kill -0 "$COURIER_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [ "$ok" = 0 ]; then
    "$COURIER_BIN" --socket "$COURIER_API" status >&2 || true
    skip_courier "the daemon's backends were not all reachable within 30 s"
    return 0
  fi
  log "Courier daemon up (pid $COURIER_PID, $COURIER_BIN), Docker plugin $COURIER_DRIVER at $COURIER_PLUGIN_SOCK"
}
if want courier-neutron || want courier-ovn; then start_courier; fi
want courier-neutron && NET[courier-neutron]=$TAG-cneutron SUBNET[courier-neutron]=10.74.0.0/24
want courier-ovn && NET[courier-ovn]=$TAG-covn SUBNET[courier-ovn]=10.75.0.0/24

# ------------------------------------------------------------------ networks
RUN_CASES=()
for c in "${CASES[@]}"; do
  [ -n "${SKIP[$c]:-}" ] && continue
  RUN_CASES+=("$c")
  FAILS[$c]=0
  [ "$c" = none ] && continue
  args=()
  case "$c" in
    kuryr) args=(-d kuryr --ipam-driver kuryr --subnet "${SUBNET[$c]}" --gateway "${SUBNET[$c]%.0/24}.1") ;;
    courier-ovn) args=(-d "$COURIER_DRIVER" --ipam-driver "$COURIER_DRIVER" --subnet "${SUBNET[$c]}") ;;
    courier-neutron) args=(-d "$COURIER_DRIVER" --ipam-driver "$COURIER_DRIVER" --subnet "${SUBNET[$c]}" -o courier.backend=neutron) ;;
  esac
  t=$(now_ns)
  out=$(timeout 120 "$DOCKER" network create "${args[@]}" "${NET[$c]}" 2>&1) || die "network create for $c: $out"
  NETS_MADE+=("${NET[$c]}")
  CREATE_MS[$c]=$(ms_since "$t")
  log "network ${NET[$c]} ($c, ${SUBNET[$c]}) created in ${CREATE_MS[$c]} ms"
done
NET[none]=none

[ -n "$KURYR_PID" ] && RSS_BEFORE[kuryr]=$(rss_kb "$KURYR_PID")
[ -n "$COURIER_PID" ] && RSS_BEFORE[courier]=$(rss_kb "$COURIER_PID")

# ------------------------------------------------------------------ runs
# One run: prints the wall time in ms on success; on failure logs docker's error, returns 1.
run_one() {
  local c=$1 name=$2 t out
  t=$(now_ns)
  if out=$(timeout 120 "$DOCKER" run --rm --name "$name" --network "${NET[$c]}" "$IMAGE" true 2>&1); then
    ms_since "$t"
  else
    log "run $name ($c) failed: $out"
    timeout 60 "$DOCKER" rm -f "$name" >/dev/null 2>&1 || true
    return 1
  fi
}

failed=0
for c in "${RUN_CASES[@]}"; do
  if ! FIRST[$c]=$(run_one "$c" "$TAG-$c-warmup"); then die "warm-up run for $c failed"; fi
done
log "warm-up done ($(for c in "${RUN_CASES[@]}"; do printf "%s %s ms, " "$c" "${FIRST[$c]}"; done | sed "s/, $//")); $N interleaved rounds"
k=${#RUN_CASES[@]}
for ((i = 0; i < N; i++)); do
  for ((j = 0; j < k; j++)); do
    c=${RUN_CASES[$(( (i + j) % k ))]}
    [ "${FAILS[$c]}" -ge 3 ] && continue
    if ms=$(run_one "$c" "$TAG-$c-$i"); then
      SAMPLES[$c]+="$ms "
      [ -n "$RAW" ] && printf '%s\t%d\t%s\n' "$c" "$i" "$ms" >> "$WORK/raw.tsv"
    else
      FAILS[$c]=$(( FAILS[$c] + 1 )); failed=1
      [ "${FAILS[$c]}" -ge 3 ] && log "$c: 3 failed runs, no more runs of it"
    fi
  done
  [ $(( (i + 1) % 10 )) = 0 ] && log "round $((i + 1))/$N"
done
RSS_KURYR=""; RSS_COURIER=""
[ -n "$KURYR_PID" ] && RSS_KURYR=$(rss_kb "$KURYR_PID")
[ -n "$COURIER_PID" ] && RSS_COURIER=$(rss_kb "$COURIER_PID")
if [ -n "$RAW" ]; then { printf 'case\tround\tms\n'; cat "$WORK/raw.tsv" 2>/dev/null || true; } > "$RAW"; fi

# ------------------------------------------------------------------ report
# stats "samples" [offset]: n p50 p90 p99 mean of (sample - offset), nearest rank
stats() {
  tr ' ' '\n' <<< "$1" | awk -v off="${2:-0}" 'NF {print $1 - off}' | sort -g | awk '
    { v[NR] = $1; s += $1 }
    function rank(p,  r) { r = int(p * NR + 0.999999); if (r < 1) r = 1; return v[r] }
    END { if (NR == 0) { print "0 - - - -"; exit }
          printf "%d %.1f %.1f %.1f %.1f\n", NR, rank(0.50), rank(0.90), rank(0.99), s / NR }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b <= 0) print "n/a"; else printf "%.1fx", a / b }'; }

read -r _ floor_p50 _ _ _ <<< "$(stats "${SAMPLES[none]:-}")"
declare -A ADD50 ADD99
echo
echo "docker run --rm --network X $IMAGE true: N=$N per case, interleaved; $(nproc) CPUs, load avg $(cut -d' ' -f1-3 /proc/loadavg)"
echo "(ms; p = nearest rank, so p99 = max for N < 100; added = per sample t - p50(none))"
printf '%-16s %4s %9s %9s %9s %9s %9s | %10s %10s %9s\n' case n p50 p90 p99 mean first "added p50" "added p99" "net create"
for c in "${CASES[@]}"; do
  if [ -n "${SKIP[$c]:-}" ]; then printf '%-16s skipped: %s\n' "$c" "${SKIP[$c]}"; continue; fi
  read -r n p50 p90 p99 mean <<< "$(stats "${SAMPLES[$c]:-}")"
  read -r _ a50 _ a99 _ <<< "$(stats "${SAMPLES[$c]:-}" "$floor_p50")"
  ADD50[$c]=$a50 ADD99[$c]=$a99
  [ "$c" = none ] && { a50="-"; a99="-"; }
  printf '%-16s %4s %9s %9s %9s %9s %9s | %10s %10s %9s' "$c" "$n" "$p50" "$p90" "$p99" "$mean" "${FIRST[$c]}" "$a50" "$a99" "${CREATE_MS[$c]:--}"
  [ "${FAILS[$c]}" != 0 ] && printf '   (%s failed)' "${FAILS[$c]}"
  echo
done
echo
for c in courier-neutron courier-ovn; do
  if want kuryr && [ -z "${SKIP[kuryr]:-}" ] && want "$c" && [ -z "${SKIP[$c]:-}" ]; then
    echo "ratio kuryr/$c of the added time: p50 $(ratio "${ADD50[kuryr]}" "${ADD50[$c]}"), p99 $(ratio "${ADD99[kuryr]}" "${ADD99[$c]}")"
  elif want kuryr && want "$c"; then
    echo "ratio kuryr/$c: n/a (${SKIP[kuryr]:+kuryr skipped}${SKIP[$c]:+$c skipped})"
  fi
done
[ -n "$KURYR_PID" ] && echo "kuryr-server (pid $KURYR_PID) VmRSS: $(mb "${RSS_BEFORE[kuryr]}") before the runs, $(mb "$RSS_KURYR") after"
[ -n "$COURIER_PID" ] && [ -z "${SKIP[courier-ovn]:-}${SKIP[courier-neutron]:-}" ] && echo "Courier daemon (pid $COURIER_PID) VmRSS: $(mb "${RSS_BEFORE[courier]}") before the runs, $(mb "$RSS_COURIER") after"
[ -n "$RAW" ] && echo "samples: $RAW"
if [ "$failed" = 1 ]; then log "some runs failed (see above)"; exit 1; fi
exit 0
