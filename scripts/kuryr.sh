#!/usr/bin/env bash
# OpenStack kuryr-libnetwork (Docker's libnetwork remote network + IPAM driver on Neutron), as
# the peer Courier's Docker front door is benchmarked against (scripts/bench-docker.sh).
# Runs against the local Keystone + Neutron of scripts/neutron.sh (ML2/OVN on scripts/ovn.sh)
# and registers itself with dockerd (e.g. scripts/docker.sh's). Root; idempotent.
#
#   scripts/kuryr.sh start | stop | status | clean
#
# start   installs kuryr-libnetwork $KURYR_VERSION (18.0.0) + kuryr-lib $KURYR_LIB_VERSION (3.5.0)
#         from PyPI into a venv (Python >= 3.11: Debian 12's python3 is 3.11), relaxes Kuryr's
#         SandboxKey pattern (see below), writes kuryr.conf, starts kuryr-server, waits until it
#         answers POST /Plugin.Activate, then writes /etc/docker/plugins/kuryr.spec
#         (http://127.0.0.1:23750). A running kuryr-server whose config changed is restarted.
#         Use it with  docker network create -d kuryr --ipam-driver kuryr --subnet CIDR --gateway IP NAME
#         (--gateway is needed: Kuryr's IPAM answers an empty address to Docker's gateway request
#         without one, and the create fails with 'failed to allocate gateway (): No address returned').
# stop    ends kuryr-server (by its pidfile) and removes the spec file.
# status  pid, VmRSS, whether it answers; exit 1 when it is not running.
# clean   deletes what Kuryr leaks when a delete path did not run (e.g. kuryr-server was down
#         during `docker rm -f`): OVS interfaces with external_ids:owner=kuryr and their veths,
#         Neutron ports of Kuryr (device_owner compute:kuryr or name kuryr-unbound-port), subnets
#         kuryr-subnet-*, networks kuryr-net-* tagged kuryr.net.uuid.*, subnet pools kuryrPool-*.
#         Nothing else is touched, but a Kuryr container still running loses its port: run it
#         when no Kuryr network is in use. It does not stop kuryr-server.
#
# State under $COURIER_KURYR_DIR (default /var/lib/courier-kuryr): venv/, kuryr.conf,
# kuryr-server.pid, log/kuryr-server.log (Kuryr's own log), log/stdout.log, log/pip.log.
# Env: KURYR_DEBUG (false; true logs every request body), KURYR_PORT (23750),
# COURIER_OS_ADMIN_PASSWORD (else the courier-admin password from /etc/courier-test/secure.yaml,
# else courier-admin-secret), DOCKER_HOST (only checked in status).
#
# Facts this relies on (verified with Neutron 29 ML2/OVN, OVN 23.03, docker.io 20.10):
# - Neutron is found only through the Keystone catalog (type network, region RegionOne,
#   interface public): [neutron] has keystoneauth password options and no endpoint override.
# - pip puts kuryr-lib's binding scripts (ovs, veth, ...) in <venv>/libexec/kuryr, not the default
#   /usr/libexec/kuryr: [DEFAULT] bindir points there (else every CreateEndpoint fails).
# - Kuryr sets binding:host_id = socket.gethostname(); it must equal the OVN chassis hostname
#   (ovs-vsctl get open . external_ids:hostname) or Neutron answers vif_type binding_failed.
# - Kuryr's Join schema only accepts SandboxKey ^/var/run/docker/netns/<12 hex>$; a dockerd with
#   another --exec-root (scripts/docker.sh: /var/lib/courier-docker/exec) sends
#   <exec-root>/netns/<12 hex>, so the installed schemata/commons.py is changed to ^/.+/netns/<12 hex>$.
# - Docker 20.10 reads NAME.spec only from /etc/docker/plugins and /usr/lib/docker/plugins
#   (/run/docker/plugins is searched for NAME.sock only).
# - kuryr-server is Flask's threaded development server; it exits ≈ 1.5 s after SIGTERM.
# - Kuryr does not turn TX checksum offload off: on the userspace OVS datapath TCP between Kuryr
#   containers times out (ping works) unless `ethtool -K eth0 tx off` runs in the container.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
D=${COURIER_KURYR_DIR:-/var/lib/courier-kuryr}
KURYR_VERSION=${KURYR_VERSION:-18.0.0}
KURYR_LIB_VERSION=${KURYR_LIB_VERSION:-3.5.0}
KURYR_PORT=${KURYR_PORT:-23750}
KURYR_DEBUG=${KURYR_DEBUG:-false}
URL=http://127.0.0.1:$KURYR_PORT
KS_URL=http://127.0.0.1:5000/v3
NEUTRON_URL=http://127.0.0.1:9696
SECURE=/etc/courier-test/secure.yaml
SPEC=/etc/docker/plugins/kuryr.spec
VENV=$D/venv
PIDFILE=$D/kuryr-server.pid
CONF=$D/kuryr.conf
MARK=$VENV/.courier-kuryr-$KURYR_VERSION-lib-$KURYR_LIB_VERSION
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

now() { date +%s%N; }
T0=$(now)
el() { local d=$(( ($(now) - ${1:-$T0}) / 100000000 )); echo "$((d / 10)).$((d % 10))"; }
log() { echo "kuryr.sh [+$(el)s] $*"; }
die() { echo "kuryr.sh: FAILED: $*" >&2; exit 1; }
alive() { [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
answers() { curl -s -m 2 -X POST "$URL/Plugin.Activate" 2>/dev/null | grep -q '"NetworkDriver"'; }
http_code() { curl -s -o /dev/null -m 5 -w '%{http_code}' "$@" || true; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || true; }

# The first Python >= 3.11 with venv + ensurepip (Debian 12: /usr/bin/python3 is 3.11).
find_python() {
  local p
  for p in /usr/bin/python3 python3.13 python3.12 python3.11 python3; do
    command -v "$p" >/dev/null 2>&1 || continue
    "$p" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { command -v "$p"; return 0; }
  done
  return 1
}

install_venv() {
  [ -x "$VENV/bin/kuryr-server" ] && [ -f "$MARK" ] && return 0
  local py t
  py=$(find_python) || { "$here/install-deps.sh" kuryr >/dev/null; py=$(find_python); } \
    || die "no Python >= 3.11 with venv (kuryr-libnetwork $KURYR_VERSION requires it)"
  t=$(now)
  log "installing kuryr-libnetwork $KURYR_VERSION + kuryr-lib $KURYR_LIB_VERSION into $VENV ($("$py" --version); log $D/log/pip.log)"
  rm -rf "$VENV"
  { "$py" -m venv "$VENV" &&
    "$VENV/bin/pip" install -q -U pip setuptools wheel &&
    "$VENV/bin/pip" install -q "kuryr-libnetwork==$KURYR_VERSION" "kuryr-lib==$KURYR_LIB_VERSION"; } \
    > "$D/log/pip.log" 2>&1 || { tail -n 20 "$D/log/pip.log" >&2; die "pip install"; }
  touch "$MARK"
  log "installed in $(el "$t")s"
}

# Kuryr's Join schema: accept <any exec-root>/netns/<12 hex> (see header). Idempotent; fails
# when neither the original nor the relaxed pattern is found (another Kuryr version).
relax_sandbox_key() {
  "$VENV/bin/python" - <<'PY'
import os, sys, kuryr_libnetwork
f = os.path.join(os.path.dirname(kuryr_libnetwork.__file__), 'schemata', 'commons.py')
src = open(f).read()
old, new = "^(/var/run/docker/netns/[0-9a-f]{12})$", "^(/.+/netns/[0-9a-f]{12})$"
if new in src:
    sys.exit(0)
if old not in src:
    sys.exit(f"SandboxKey pattern {old!r} not found in {f}")
open(f, 'w').write(src.replace(old, new))
print(f"relaxed SandboxKey pattern in {f}")
PY
}

admin_password() {
  if [ -n "${COURIER_OS_ADMIN_PASSWORD:-}" ]; then echo "$COURIER_OS_ADMIN_PASSWORD"; return; fi
  local pw=""
  # secure.yaml (written by scripts/neutron.sh): clouds: courier-admin: auth: password: X
  [ -r "$SECURE" ] && pw=$(awk '/^  courier-admin:/ {c=1; next} /^  [^ ]/ {c=0} c && $1 == "password:" {print $2; exit}' "$SECURE")
  echo "${pw:-courier-admin-secret}"
}

write_conf() {
  local levels
  levels=$("$VENV/bin/python" -c 'from oslo_log import log; print(",".join(log.get_default_log_levels()))'),pyroute2=WARN
  cat > "$CONF.new" <<EOF
# Written by scripts/kuryr.sh.
[DEFAULT]
# where pip put kuryr-lib's binding scripts (the default is /usr/libexec/kuryr)
bindir = $VENV/libexec/kuryr
kuryr_uri = $URL
# each dockerd keeps its own network state (no swarm / libkv)
capability_scope = local
default_port_driver = kuryr_libnetwork.port_driver.drivers.veth
enabled_port_drivers = kuryr_libnetwork.port_driver.drivers.veth
debug = $KURYR_DEBUG
log_dir = $D/log
log_file = kuryr-server.log
# pyroute2 logs every netlink message at DEBUG
default_log_levels = $levels

[binding]
default_driver = kuryr.lib.binding.drivers.veth
enabled_drivers = kuryr.lib.binding.drivers.veth
veth_dst_prefix = eth

[neutron]
# keystoneauth1 password plugin; Neutron itself is found in the Keystone catalog
auth_type = password
auth_url = $KS_URL
username = admin
password = $(admin_password)
project_name = admin
user_domain_name = Default
project_domain_name = Default
region_name = RegionOne
endpoint_type = public
enable_dhcp = True
# used only when 'docker network create' has no --subnet
default_subnetpool_v4 = kuryr
default_subnetpool_v6 = kuryr6
# CreateEndpoint does not wait for the Neutron port to be ACTIVE
vif_plugging_is_fatal = false
vif_plugging_timeout = 0
EOF
  chmod 600 "$CONF.new"
}

stop() {
  if alive; then
    local pid
    pid=$(cat "$PIDFILE")
    kill -TERM "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then log "kuryr-server (pid $pid) still running after 10 s: SIGKILL"; kill -KILL "$pid"; fi
    log "kuryr-server stopped (pid $pid)"
  else
    log "kuryr-server not running"
  fi
  rm -f "$PIDFILE" "$SPEC"
}

start() {
  [ "$(id -u)" = 0 ] || die "run as root"
  command -v curl >/dev/null || "$here/install-deps.sh" kuryr >/dev/null
  mkdir -p "$D/log"
  ovs-vsctl br-exists br-int 2>/dev/null || die "OVN is not up (no br-int): scripts/ovn.sh start"
  [ "$(http_code "$KS_URL")" = 200 ] || die "Keystone does not answer at $KS_URL: scripts/neutron.sh start"
  [ "$(http_code "$NEUTRON_URL/")" = 200 ] || die "Neutron does not answer at $NEUTRON_URL: scripts/neutron.sh start"
  local chassis
  chassis=$(ovs-vsctl get open . external_ids:hostname 2>/dev/null | tr -d '"' || true)
  [ "$chassis" = "$(hostname)" ] || log "WARNING: hostname '$(hostname)' != OVN chassis hostname '$chassis': Kuryr's ports will not bind"
  install_venv
  relax_sandbox_key
  [ -x "$VENV/libexec/kuryr/ovs" ] || die "kuryr-lib's binding scripts missing in $VENV/libexec/kuryr"
  write_conf
  if alive && ! cmp -s "$CONF.new" "$CONF"; then log "config changed: restarting kuryr-server"; stop; fi
  mv "$CONF.new" "$CONF"
  if alive; then
    log "kuryr-server already running (pid $(cat "$PIDFILE"))"
  else
    answers && die "something else answers at $URL (not our pidfile $PIDFILE)"
    local t
    t=$(now)
    log "starting kuryr-server (log $D/log/kuryr-server.log)"
    # cd: kuryr-server resolves nothing relative, but keep it out of the caller's directory
    ( cd "$D" && exec setsid "$VENV/bin/kuryr-server" --config-file "$CONF" </dev/null >>"$D/log/stdout.log" 2>&1 ) &
    echo $! > "$PIDFILE"
    for _ in $(seq 1 600); do
      answers && break
      alive || { tail -n 20 "$D/log/stdout.log" "$D/log/kuryr-server.log" >&2 2>/dev/null || true; rm -f "$PIDFILE"; die "kuryr-server exited"; }
      sleep 0.1
    done
    answers || die "kuryr-server does not answer POST $URL/Plugin.Activate after 60 s"
    log "kuryr-server answers at $URL in $(el "$t")s (pid $(cat "$PIDFILE"))"
  fi
  mkdir -p "$(dirname "$SPEC")"
  [ "$(cat "$SPEC" 2>/dev/null || true)" = "$URL" ] || echo "$URL" > "$SPEC"
  log "registered for dockerd: $SPEC -> $URL (docker network create -d kuryr --ipam-driver kuryr --subnet CIDR --gateway IP NAME)"
}

status() {
  local rc=0
  if alive; then
    local pid; pid=$(cat "$PIDFILE")
    echo "kuryr-server: running (pid $pid, VmRSS $(rss_kb "$pid") kB, log $D/log/kuryr-server.log)"
  else
    echo "kuryr-server: not running"; rc=1
  fi
  if answers; then echo "API: $URL answers Plugin.Activate"; else echo "API: $URL does not answer"; rc=1; fi
  if [ -f "$SPEC" ]; then echo "spec: $SPEC -> $(cat "$SPEC")"; else echo "spec: $SPEC missing"; rc=1; fi
  if [ -f "$MARK" ]; then echo "venv: $VENV (kuryr-libnetwork $KURYR_VERSION, kuryr-lib $KURYR_LIB_VERSION)"; else echo "venv: not installed"; fi
  return "$rc"
}

clean() {
  local ifc n=0
  # Host side: OVS interfaces Kuryr's ovs binding script made, and their veth pairs.
  for ifc in $(ovs-vsctl --data=bare --no-heading --columns=name find interface external_ids:owner=kuryr 2>/dev/null); do
    ovs-vsctl --if-exists del-port br-int "$ifc"
    ip link del "$ifc" 2>/dev/null || true
    log "removed OVS port and veth $ifc"; n=$((n + 1))
  done
  [ "$n" = 0 ] && log "no OVS ports of Kuryr"
  if [ ! -f "$CONF" ] || [ ! -x "$VENV/bin/python" ]; then log "no $CONF: Neutron side not checked"; return 0; fi
  # Neutron side, with Kuryr's own config and client: only objects with Kuryr's names/owner.
  "$VENV/bin/python" -W ignore - "$CONF" <<'PY'
import logging, sys
logging.disable(logging.WARNING)
from kuryr_libnetwork import config
from kuryr.lib import utils
config.init(['--config-file', sys.argv[1]])
n = utils.get_neutron_client()
count = 0
def rm(kind, obj, fn):
    global count
    try:
        fn(obj['id']); count += 1
        print(f"kuryr.sh: deleted {kind} {obj['id']} {obj.get('name') or ''}")
    except Exception as e:
        print(f"kuryr.sh: {kind} {obj['id']}: {e}")
ports = {p['id']: p for q in ({'device_owner': 'compute:kuryr'}, {'name': 'kuryr-unbound-port'})
         for p in n.list_ports(**q)['ports']}
for p in ports.values():
    rm('port', p, n.delete_port)
for s in n.list_subnets()['subnets']:
    if (s.get('name') or '').startswith('kuryr-subnet-'):
        rm('subnet', s, n.delete_subnet)
for net in n.list_networks()['networks']:
    if (net.get('name') or '').startswith('kuryr-net-') and any(t.startswith('kuryr.net.uuid') for t in net.get('tags', [])):
        rm('network', net, n.delete_network)
for sp in n.list_subnetpools()['subnetpools']:
    if (sp.get('name') or '').startswith('kuryrPool-'):
        rm('subnetpool', sp, n.delete_subnetpool)
print(f"kuryr.sh: Neutron: {count} object(s) of Kuryr deleted")
PY
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  clean) clean ;;
  *) echo "usage: $0 start|stop|status|clean" >&2; exit 2 ;;
esac
