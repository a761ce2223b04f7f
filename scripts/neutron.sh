#!/usr/bin/env bash
# A real OpenStack Neutron 29 (ML2/OVN) + Keystone 30 for Courier's tests and CI, on the host's
# own single-node OVN (scripts/ovn.sh), so ports Neutron creates are bound by the real
# ovn-controller. Root; idempotent.
#
#   scripts/neutron.sh start | stop | status | restart | restart-keystone
#   scripts/neutron.sh sriov-agent HOST PHYSNET:PF   Neutron's SR-IOV NIC agent for HOST (and RabbitMQ,
#                                                 a neutron-rpc-server); sriov-agent-stop
#
# What runs (all on 127.0.0.1, everything under $COURIER_NEUTRON_DIR, default /var/lib/courier-neutron):
#   MariaDB    :13306   own datadir (mysql/), database `neutron` (sqlite does not work for Neutron)
#   Keystone   :5000    30.0.0 from PyPI (venv-keystone/), sqlite, fernet, under uwsgi
#   Neutron    :9696    29.0.0 from PyPI (venv-neutron/), uwsgi processes=1 threads=1, auth_strategy=keystone
#   Neutron    :9697    a second uwsgi of the same app, auth_strategy=noauth, same DB and OVN
#                       (Courier's `noauth` lab mode; no token: admin context, project fake_project_id)
# Neutron: ML2 mechanism_drivers=ovn,sriovnicswitch, type_drivers geneve,flat,vlan (physnet1, vlan 100:200),
# tenant_network_types=geneve, service_plugins=ovn-router,trunk, extension_drivers=port_security,dns,
# tag_ports_during_bulk_creation (tags in the port POST: Courier then makes no tag PUT),
# transport_url=fake:// (the APIs; RabbitMQ only for sriov-agent), OVN NB/SB = the host's unix sockets.
#
# Credentials (Keystone, domain Default, region RegionOne):
#   admin / $COURIER_OS_ADMIN_PASSWORD (default courier-admin-secret), project admin, role admin
#   demo  / courier-demo-secret, project demo, role member
#   neutron / courier-neutron-secret, project service, role admin (Neutron's keystone_authtoken user)
# Files for clients: /etc/courier-test/clouds.yaml (clouds courier-admin, courier-demo; no
# passwords), /etc/courier-test/secure.yaml (the passwords), admin-openrc.sh, demo-openrc.sh.
#
# Env at start: KEYSTONE_TOKEN_EXPIRATION (seconds, default 3600). A running service whose config
# changed is restarted. `restart-keystone` restarts only Keystone (e.g. with a short token
# lifetime); this changes host-wide state that every user of this Keystone sees.
# Passwords are set when a user is first created (admin: whenever COURIER_OS_ADMIN_PASSWORD changes).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
D=${COURIER_NEUTRON_DIR:-/var/lib/courier-neutron}
NEUTRON_VERSION=29.0.0
KEYSTONE_VERSION=30.0.0
DB_PORT=13306
KS_PORT=5000
API_PORT=9696
NOAUTH_PORT=9697
ADMIN_PW=${COURIER_OS_ADMIN_PASSWORD:-courier-admin-secret}
DEMO_PW=courier-demo-secret
SVC_PW=courier-neutron-secret
DB_PW=courier-db-secret
TOKEN_EXP=${KEYSTONE_TOKEN_EXPIRATION:-3600}
NB=unix:/var/run/ovn/ovnnb_db.sock
SB=unix:/var/run/ovn/ovnsb_db.sock
ETC_TEST=/etc/courier-test
KS_URL=http://127.0.0.1:$KS_PORT/v3
PY=/usr/bin/python3
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

now() { date +%s%N; }
T0=$(now)
el() { local d=$(( ($(now) - ${1:-$T0}) / 100000000 )); echo "$((d / 10)).$((d % 10))"; }
log() { echo "neutron.sh [+$(el)s] $*"; }
die() { echo "neutron.sh: FAILED: $*" >&2; exit 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
http_code() { curl -s -o /dev/null -m 5 -w '%{http_code}' "$@" || true; }

# ------------------------------------------------------------------ install (venvs, packages)
install_venvs() {
  command -v mariadbd >/dev/null && command -v gcc >/dev/null && command -v jq >/dev/null && command -v curl >/dev/null \
    && $PY -c 'import ensurepip, os, sysconfig, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' 2>/dev/null \
    || "$here/install-deps.sh" neutron
  local need_n=0 need_k=0 t pn pk
  [ -x "$D/venv-neutron/bin/uwsgi" ] && [ -f "$D/venv-neutron/.courier-$NEUTRON_VERSION" ] || need_n=1
  [ -x "$D/venv-keystone/bin/uwsgi" ] && [ -f "$D/venv-keystone/.courier-$KEYSTONE_VERSION" ] || need_k=1
  [ $need_n = 0 ] && [ $need_k = 0 ] && return 0
  t=$(now)
  # Both venvs in parallel; uwsgi (compiled, ≈ 20 s) is built once, in the Neutron venv, and the
  # Keystone venv then takes it from pip's wheel cache.
  if [ $need_n = 1 ]; then
    ( rm -rf "$D/venv-neutron" && $PY -m venv "$D/venv-neutron" &&
      "$D/venv-neutron/bin/pip" install -q -U pip setuptools wheel &&
      "$D/venv-neutron/bin/pip" install -q "neutron==$NEUTRON_VERSION" uwsgi pymysql &&
      touch "$D/venv-neutron/.courier-$NEUTRON_VERSION" ) > "$D/log/pip-neutron.log" 2>&1 &
    pn=$!
  fi
  if [ $need_k = 1 ]; then
    ( rm -rf "$D/venv-keystone" && $PY -m venv "$D/venv-keystone" &&
      "$D/venv-keystone/bin/pip" install -q -U pip setuptools wheel &&
      "$D/venv-keystone/bin/pip" install -q "keystone==$KEYSTONE_VERSION" ) > "$D/log/pip-keystone.log" 2>&1 &
    pk=$!
  fi
  if [ $need_n = 1 ]; then wait "$pn" || { tail -20 "$D/log/pip-neutron.log" >&2; die "pip install neutron (log $D/log/pip-neutron.log)"; }; fi
  if [ $need_k = 1 ]; then
    wait "$pk" || { tail -20 "$D/log/pip-keystone.log" >&2; die "pip install keystone (log $D/log/pip-keystone.log)"; }
    { "$D/venv-keystone/bin/pip" install -q uwsgi && touch "$D/venv-keystone/.courier-$KEYSTONE_VERSION"; } >> "$D/log/pip-keystone.log" 2>&1 \
      || { tail -20 "$D/log/pip-keystone.log" >&2; die "pip install uwsgi for keystone"; }
  fi
  log "venvs installed in $(el "$t")s (neutron $NEUTRON_VERSION, keystone $KEYSTONE_VERSION)"
}

# ------------------------------------------------------------------ MariaDB
start_mariadb() {
  if [ ! -d "$D/mysql/mysql" ]; then
    rm -rf "$D/mysql"
    mariadb-install-db --no-defaults --datadir="$D/mysql" --user=root \
      --auth-root-authentication-method=normal --skip-test-db > "$D/log/mariadb-install-db.log" 2>&1 \
      || { tail -20 "$D/log/mariadb-install-db.log" >&2; die "mariadb-install-db"; }
  fi
  if ! alive "$D/run/mysqld.pid"; then
    setsid mariadbd --no-defaults --datadir="$D/mysql" --socket="$D/run/mysqld.sock" \
      --port=$DB_PORT --bind-address=127.0.0.1 --user=root --pid-file="$D/run/mysqld.pid" \
      --log-error="$D/log/mysqld.log" --skip-name-resolve --skip-log-bin \
      --innodb-buffer-pool-size=256M --innodb-flush-log-at-trx-commit=2 --max-connections=500 \
      </dev/null >/dev/null 2>&1 &
    local ok=0
    for _ in $(seq 150); do
      mariadb-admin --no-defaults -S "$D/run/mysqld.sock" -uroot ping >/dev/null 2>&1 && { ok=1; break; }
      sleep 0.2
    done
    [ $ok = 1 ] || { tail -20 "$D/log/mysqld.log" >&2; die "MariaDB did not answer within 30 s"; }
  fi
  mariadb --no-defaults -S "$D/run/mysqld.sock" -uroot -e "
    CREATE DATABASE IF NOT EXISTS neutron CHARACTER SET utf8mb4;
    CREATE USER IF NOT EXISTS 'neutron'@'127.0.0.1' IDENTIFIED BY '$DB_PW';
    GRANT ALL ON neutron.* TO 'neutron'@'127.0.0.1';" || die "MariaDB: creating database neutron"
  log "MariaDB up on 127.0.0.1:$DB_PORT (pid $(cat "$D/run/mysqld.pid"))"
}

# ------------------------------------------------------------------ uwsgi helpers
# launch_uwsgi NAME: (re)start $UWSGI with $D/etc/NAME-uwsgi.ini unless it runs with the same
# config ($CONF_FILES and the ini). wait_uwsgi NAME PORT URL_PATH [curl args...]: until it answers 200.
declare -A LAUNCHED=()
launch_uwsgi() {
  local name=$1 ini="$D/etc/$1-uwsgi.ini" pidf="$D/run/$1.pid" sum
  sum=$(cat "$ini" "${CONF_FILES[@]}" | md5sum | cut -c1-32)
  if alive "$pidf" && [ "$(cat "$D/run/$name.confsum" 2>/dev/null)" != "$sum" ]; then
    stop_pid "$name"; log "$name: config changed, restarting"
  fi
  LAUNCHED[$name]=""
  alive "$pidf" && return 0
  LAUNCHED[$name]=$(now)
  : > "$D/log/$name-uwsgi.log"
  echo "$sum" > "$D/run/$name.confsum"
  "$UWSGI" --ini "$ini" --daemonize2 "$D/log/$name-uwsgi.log" >> "$D/log/$name-uwsgi.log" 2>&1 \
    || { tail -20 "$D/log/$name-uwsgi.log" >&2; die "$name: uwsgi did not start"; }
}
wait_uwsgi() {
  local name=$1 port=$2 path=$3; shift 3
  local pidf="$D/run/$name.pid" c=000 t=${LAUNCHED[$name]:-}
  if [ -z "$t" ]; then
    # Running already: one uwsgi worker busy with a slow request (a test's burst) may take a
    # while to answer; give it up to ≈ 60 s before calling it broken.
    for _ in $(seq 10); do
      c=$(http_code "$@" "http://127.0.0.1:$port$path"); [ "$c" = 200 ] && break; sleep 1
    done
    [ "$c" = 200 ] || die "$name is running (pid $(cat "$pidf")) but http://127.0.0.1:$port$path answers $c"
    log "$name already running on http://127.0.0.1:$port"; return 0
  fi
  for _ in $(seq 600); do
    c=$(http_code "$@" "http://127.0.0.1:$port$path"); [ "$c" = 200 ] && break
    if grep -q "no app loaded" "$D/log/$name-uwsgi.log" || { [ -s "$pidf" ] && ! alive "$pidf"; }; then
      tail -25 "$D/log/$name-uwsgi.log" >&2; die "$name failed to load (logs in $D/log)"; fi
    sleep 0.2
  done
  [ "$c" = 200 ] || { tail -20 "$D/log/$name-uwsgi.log" >&2; die "$name: http://127.0.0.1:$port$path answered $c, not 200, within 120 s"; }
  log "$name up on http://127.0.0.1:$port in $(el "$t")s (uwsgi pid $(cat "$pidf"))"
}

stop_pid() { # NAME: stop the process in $D/run/NAME.pid (only that one)
  local f="$D/run/$1.pid" p
  [ -s "$f" ] || return 0
  p=$(cat "$f")
  if kill -0 "$p" 2>/dev/null; then
    kill -TERM "$p"
    for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then echo "neutron.sh: $1 (pid $p) still alive after 15 s, SIGKILL"; kill -KILL "$p"; fi
    echo "neutron.sh: stopped $1 (pid $p)"
  fi
  rm -f "$f"
}

# ------------------------------------------------------------------ Keystone
ks_token() { # USER PROJECT PASSWORD -> token on stdout (empty on failure)
  curl -s -m 10 -D - -o /dev/null -X POST "$KS_URL/auth/tokens" -H 'Content-Type: application/json' \
    -d "$(jq -nc --arg u "$1" --arg p "$2" --arg pw "$3" '{auth:{identity:{methods:["password"],
         password:{user:{name:$u,domain:{name:"Default"},password:$pw}}},
         scope:{project:{name:$p,domain:{name:"Default"}}}}}')" \
    | awk 'tolower($1)=="x-subject-token:"{print $2}' | tr -d '\r' || true
}

keystone_conf() {
  mkdir -p "$D/keystone"
  cat > "$D/etc/keystone.conf" <<EOF
[DEFAULT]
log_dir = $D/log
log_file = keystone.log
[database]
connection = sqlite:///$D/keystone/keystone.db
[token]
provider = fernet
expiration = $TOKEN_EXP
[fernet_tokens]
key_repository = $D/keystone/fernet-keys
[fernet_receipts]
key_repository = $D/keystone/fernet-keys
[credential]
key_repository = $D/keystone/credential-keys
[cache]
enabled = false
EOF
  cat > "$D/etc/keystone-uwsgi.ini" <<EOF
[uwsgi]
http-socket = 127.0.0.1:$KS_PORT
module = keystone.wsgi.api:application
env = OS_KEYSTONE_CONFIG_FILES=$D/etc/keystone.conf
master = true
processes = 1
threads = 2
enable-threads = true
lazy-apps = true
die-on-term = true
buffer-size = 65535
add-header = Connection: close
pidfile = $D/run/keystone.pid
EOF
}

prepare_keystone() {
  keystone_conf
  local km=("$D/venv-keystone/bin/keystone-manage" --config-file "$D/etc/keystone.conf") t
  local stamp="$D/keystone/bootstrap.stamp" want
  want="$KEYSTONE_VERSION $(printf %s "$ADMIN_PW" | sha256sum | cut -c1-16)"
  if [ ! -f "$D/keystone/keystone.db" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    t=$(now)
    "${km[@]}" db_sync > "$D/log/keystone-manage.log" 2>&1 || { tail -20 "$D/log/keystone-manage.log" >&2; die "keystone-manage db_sync"; }
    [ -d "$D/keystone/fernet-keys" ] || "${km[@]}" fernet_setup --keystone-user root --keystone-group root >> "$D/log/keystone-manage.log" 2>&1
    [ -d "$D/keystone/credential-keys" ] || "${km[@]}" credential_setup --keystone-user root --keystone-group root >> "$D/log/keystone-manage.log" 2>&1
    "${km[@]}" bootstrap --bootstrap-password "$ADMIN_PW" --bootstrap-username admin \
      --bootstrap-project-name admin --bootstrap-role-name admin --bootstrap-region-id RegionOne \
      --bootstrap-public-url "$KS_URL" --bootstrap-internal-url "$KS_URL" --bootstrap-admin-url "$KS_URL" \
      >> "$D/log/keystone-manage.log" 2>&1 || { tail -20 "$D/log/keystone-manage.log" >&2; die "keystone-manage bootstrap"; }
    echo "$want" > "$stamp"
    rm -f "$D/keystone/catalog.stamp"
    log "Keystone db_sync + fernet keys + bootstrap in $(el "$t")s"
  fi
}
launch_keystone() {
  UWSGI=$D/venv-keystone/bin/uwsgi; CONF_FILES=("$D/etc/keystone.conf")
  launch_uwsgi keystone
}

ks() { # METHOD PATH [JSON] -> body (dies on HTTP >= 400)
  local out code
  out=$(curl -s -m 10 -w '\n%{http_code}' -X "$1" "$KS_URL$2" -H "X-Auth-Token: $ADMIN_TOKEN" \
        -H 'Content-Type: application/json' ${3:+-d "$3"}) || die "Keystone $1 $2: no answer"
  code=${out##*$'\n'}; out=${out%$'\n'*}
  [ "$code" -lt 400 ] || die "Keystone $1 $2 -> $code: $out"
  printf '%s' "$out"
}
ks_ensure_project() { # NAME -> id
  local id; id=$(ks GET "/projects?name=$1" | jq -r '.projects[0].id // empty')
  [ -n "$id" ] || id=$(ks POST /projects "{\"project\":{\"name\":\"$1\",\"domain_id\":\"default\"}}" | jq -r .project.id)
  echo "$id"
}
ks_ensure_user() { # NAME PASSWORD PROJECT_ID ROLE
  local uid rid
  uid=$(ks GET "/users?name=$1" | jq -r '.users[0].id // empty')
  [ -n "$uid" ] || uid=$(ks POST /users "$(jq -nc --arg n "$1" --arg pw "$2" --arg p "$3" \
        '{user:{name:$n,password:$pw,domain_id:"default",default_project_id:$p}}')" | jq -r .user.id)
  rid=$(ks GET "/roles?name=$4" | jq -r '.roles[0].id // empty')
  [ -n "$rid" ] || die "Keystone has no role $4"
  ks PUT "/projects/$3/users/$uid/roles/$rid" >/dev/null
}
keystone_catalog() { # users, projects, the network service (once: stamp in $D/keystone)
  ADMIN_TOKEN=$(ks_token admin admin "$ADMIN_PW")
  [ -n "$ADMIN_TOKEN" ] || die "Keystone issues no token for admin (password changed by hand?)"
  [ -f "$D/keystone/catalog.stamp" ] && return 0
  local svc ep
  ks_ensure_user neutron "$SVC_PW" "$(ks_ensure_project service)" admin
  ks_ensure_user demo "$DEMO_PW" "$(ks_ensure_project demo)" member
  svc=$(ks GET "/services?type=network" | jq -r '.services[0].id // empty')
  [ -n "$svc" ] || svc=$(ks POST /services '{"service":{"type":"network","name":"neutron","enabled":true}}' | jq -r .service.id)
  for i in public internal; do
    ep=$(ks GET "/endpoints?service_id=$svc&interface=$i" | jq -r '.endpoints[0].id // empty')
    [ -n "$ep" ] || ks POST /endpoints "{\"endpoint\":{\"service_id\":\"$svc\",\"interface\":\"$i\",\"region_id\":\"RegionOne\",\"url\":\"http://127.0.0.1:$API_PORT\"}}" >/dev/null
  done
  touch "$D/keystone/catalog.stamp"
  log "Keystone catalog: network -> http://127.0.0.1:$API_PORT (RegionOne); users admin, demo, neutron"
}

# ------------------------------------------------------------------ Neutron
neutron_conf() {
  mkdir -p "$D/etc/neutron" "$D/state/lock"
  cp "$D/venv-neutron/etc/neutron/api-paste.ini" "$D/etc/neutron/api-paste.ini"
  cat > "$D/etc/neutron/neutron.conf" <<EOF
[DEFAULT]
core_plugin = ml2
service_plugins = ovn-router,trunk
auth_strategy = keystone
allow_overlapping_ips = true
# Nested ipvlan puts one allowed address pair per container on the VM's port; Neutron's default
# of 10 would cap a VM at 10 containers (the tests attach 100 at once).
max_allowed_address_pair = 1024
dns_domain = courier.test.
transport_url = fake://
rpc_workers = 0
rpc_state_report_workers = 0
notify_nova_on_port_status_changes = false
notify_nova_on_port_data_changes = false
dhcp_agent_notification = false
state_path = $D/state
log_dir = $D/log
log_file = neutron.log
api_paste_config = $D/etc/neutron/api-paste.ini
host = courier-neutron
debug = false

[database]
connection = mysql+pymysql://neutron:$DB_PW@127.0.0.1:$DB_PORT/neutron?charset=utf8mb4

[oslo_concurrency]
lock_path = $D/state/lock

[oslo_policy]
enforce_new_defaults = false
enforce_scope = false

[keystone_authtoken]
www_authenticate_uri = $KS_URL
auth_url = $KS_URL
auth_type = password
interface = public
region_name = RegionOne
project_domain_name = Default
user_domain_name = Default
project_name = service
username = neutron
password = $SVC_PW
memcached_servers =
EOF
  cat > "$D/etc/neutron/ml2_conf.ini" <<EOF
[ml2]
# sriovnicswitch binds vnic_type=direct ports (SR-IOV VFs) when an SR-IOV NIC agent on the
# port's host maps its physical network (`sriov-agent` below); ML2/OVN makes their LSPs
# `external` ports. Without such an agent a direct port's binding fails, as on any cloud.
mechanism_drivers = ovn,sriovnicswitch
type_drivers = geneve,flat,vlan
tenant_network_types = geneve
extension_drivers = port_security,dns,tag_ports_during_bulk_creation
overlay_ip_version = 4

[ml2_type_geneve]
vni_ranges = 1:65536
max_header_size = 38

[ml2_type_flat]
flat_networks = physnet1

[ml2_type_vlan]
network_vlan_ranges = physnet1:100:200

[securitygroup]
enable_security_group = true

[ovn]
ovn_nb_connection = $NB
ovn_sb_connection = $SB
# As on a real cloud: ML2/OVN gives every network a "network:distributed" metadata port (Courier's
# network delete and leak checks must live with Neutron's own ports).
ovn_metadata_enabled = true
enable_distributed_floating_ip = false
EOF
  # The noauth API: same config, last file wins. Its own `host` keeps the two processes' OVN
  # hash-ring entries apart (each removes its host's entries when it starts).
  cat > "$D/etc/neutron/noauth.conf" <<EOF
[DEFAULT]
auth_strategy = noauth
log_file = neutron-noauth.log
host = courier-neutron-noauth
# Small pages, so every list through this API runs the clients' pagination ("ports_links" next).
pagination_max_limit = 5

[ml2]
# Without tag_ports_during_bulk_creation: a port POST here drops its tags (as on a Neutron that
# lacks the driver), so the noauth tests run the clients' other path (tags PUT after the create).
extension_drivers = port_security,dns
EOF
  local n files
  for n in neutron neutron-noauth; do
    files="neutron.conf;ml2_conf.ini"; [ $n = neutron-noauth ] && files="$files;noauth.conf"
    cat > "$D/etc/$n-uwsgi.ini" <<EOF
[uwsgi]
http-socket = 127.0.0.1:$([ $n = neutron ] && echo $API_PORT || echo $NOAUTH_PORT)
module = neutron.wsgi.api:application
env = OS_NEUTRON_CONFIG_DIR=$D/etc/neutron
env = OS_NEUTRON_CONFIG_FILES=$files
env = PATH=$D/venv-neutron/bin:/usr/sbin:/usr/bin:/sbin:/bin
master = true
processes = 1
threads = 1
enable-threads = true
lazy-apps = true
buffer-size = 65535
thunder-lock = true
die-on-term = true
add-header = Connection: close
hook-master-start = unix_signal:15 gracefully_kill_them_all
worker-reload-mercy = 30
pidfile = $D/run/$n.pid
EOF
  done
}

prepare_neutron() {
  [ -S /var/run/ovn/ovnnb_db.sock ] && [ -S /var/run/ovn/ovnsb_db.sock ] \
    || die "the host's OVN is not running (no NB/SB socket): run scripts/ovn.sh start"
  command -v ovsdb-client >/dev/null || die "ovsdb-client is not on PATH (openvswitch-common)"
  neutron_conf
  local nconf=(--config-file "$D/etc/neutron/neutron.conf" --config-file "$D/etc/neutron/ml2_conf.ini") t
  local stamp="$D/mysql/courier-neutron-schema"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$NEUTRON_VERSION" ]; then
    t=$(now)
    "$D/venv-neutron/bin/neutron-db-manage" "${nconf[@]}" upgrade heads > "$D/log/neutron-db-manage.log" 2>&1 \
      || { tail -20 "$D/log/neutron-db-manage.log" >&2; die "neutron-db-manage upgrade heads"; }
    echo "$NEUTRON_VERSION" > "$stamp"
    log "neutron-db-manage upgrade heads in $(el "$t")s"
  fi
}
launch_neutron() { # NAME
  UWSGI=$D/venv-neutron/bin/uwsgi
  CONF_FILES=("$D/etc/neutron/neutron.conf" "$D/etc/neutron/ml2_conf.ini" "$D/etc/neutron/api-paste.ini")
  [ "$1" = neutron-noauth ] && CONF_FILES+=("$D/etc/neutron/noauth.conf")
  launch_uwsgi "$1"
}

# ------------------------------------------------------------------ client files
write_client_files() {
  mkdir -p "$ETC_TEST"
  local c
  {
    echo "# Written by scripts/neutron.sh. Passwords are in secure.yaml beside this file."
    echo "clouds:"
    for c in admin demo; do cat <<EOF
  courier-$c:
    auth_type: password
    auth:
      auth_url: $KS_URL
      username: $c
      project_name: $c
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    interface: public
    identity_api_version: 3
EOF
    done
  } > "$ETC_TEST/clouds.yaml"
  ( umask 077
    cat > "$ETC_TEST/secure.yaml" <<EOF
# Written by scripts/neutron.sh; merged into clouds.yaml by cloud name.
clouds:
  courier-admin:
    auth:
      password: $ADMIN_PW
  courier-demo:
    auth:
      password: $DEMO_PW
EOF
    for c in admin demo; do
      cat > "$ETC_TEST/$c-openrc.sh" <<EOF
# source me: Keystone credentials for user $c (written by scripts/neutron.sh)
export OS_AUTH_URL=$KS_URL
export OS_IDENTITY_API_VERSION=3
export OS_AUTH_TYPE=password
export OS_USERNAME=$c
export OS_PASSWORD=$([ $c = admin ] && echo "$ADMIN_PW" || echo "$DEMO_PW")
export OS_PROJECT_NAME=$c
export OS_USER_DOMAIN_NAME=Default
export OS_PROJECT_DOMAIN_NAME=Default
export OS_REGION_NAME=RegionOne
export OS_INTERFACE=public
export OS_CLOUD=courier-$c
EOF
    done )
}

# ------------------------------------------------------------------ SR-IOV (RabbitMQ + agent)
# sriov_agent HOST MAPPINGS: what Neutron needs to bind direct ports for HOST: Debian's
# RabbitMQ (127.0.0.1:5672, node rabbit@localhost), a neutron-rpc-server on it (the end of the
# agents' bus: their state reports), and Neutron's real neutron-sriov-nic-agent registered as
# HOST with physical_device_mappings MAPPINGS ("physnet1:PF"). The agent checks that each PF
# is a device (/sys/class/net/PF/device) and scans its VFs; it may have none. Idempotent: a
# running agent with the same config is kept.
RABBIT_URL=rabbit://guest:guest@127.0.0.1:5672/
# close_fds: closes every descriptor above 2 of this (sub)shell, so a daemon started from it
# holds none of its caller's (a test harness's flock on the guest lock, say).
close_fds() {
  local fd
  for fd in $(ls /proc/$BASHPID/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done
  return 0
}
rabbit() { RABBITMQ_NODENAME=rabbit@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 "$@"; }  # logs: /var/log/rabbitmq
start_rabbit() {
  command -v rabbitmq-server >/dev/null || "$here/install-deps.sh" rabbitmq
  if ! rabbit rabbitmqctl -q status >/dev/null 2>&1; then
    ( close_fds; rabbit rabbitmq-server -detached ) >> "$D/log/rabbitmq-start.log" 2>&1 </dev/null || die "rabbitmq-server did not start"
    local up=0
    for _ in $(seq 120); do
      rabbit rabbitmqctl -q --timeout 5 await_startup >> "$D/log/rabbitmq-start.log" 2>&1 && { up=1; break; }
      sleep 0.5
    done
    [ $up = 1 ] || { tail -20 "$D/log/rabbitmq-start.log" >&2; die "RabbitMQ did not start within 60 s"; }
    log "RabbitMQ up on 127.0.0.1:5672"
  fi
}
# launch_py NAME CONF_FILE...: (re)start $D/venv-neutron/bin/${NAME%%@*} with those config
# files unless it runs with the same config; its pid in $D/run/NAME.pid.
launch_py() {
  local name=$1 prog=${1%%@*} sum args=() f; shift
  for f in "$@"; do args+=(--config-file "$f"); done
  sum=$(cat "$@" | md5sum | cut -c1-32)
  if alive "$D/run/$name.pid" && [ "$(cat "$D/run/$name.confsum" 2>/dev/null)" != "$sum" ]; then
    stop_pid "$name"; log "$name: config changed, restarting"
  fi
  alive "$D/run/$name.pid" && return 0
  echo "$sum" > "$D/run/$name.confsum"
  ( close_fds; exec setsid "$D/venv-neutron/bin/$prog" "${args[@]}" ) </dev/null >> "$D/log/$name.out" 2>&1 &
  echo $! > "$D/run/$name.pid"
  log "$name started (pid $!)"
}
sriov_agent() {
  local host=$1 mappings=$2 pf id='' tok
  [ -n "$host" ] && [ -n "$mappings" ] || die "usage: $0 sriov-agent HOST PHYSNET:PF[,PHYSNET:PF]"
  for pf in $(echo "$mappings" | tr ',' '\n' | cut -d: -f2); do
    [ -d "/sys/class/net/$pf/device" ] || die "the SR-IOV agent's PF $pf is no device here (/sys/class/net/$pf/device)"
  done
  mkdir -p "$D"/{etc/neutron,run,log,state/lock}
  start_rabbit
  cat > "$D/etc/neutron/rpc.conf" <<EOF
[DEFAULT]
transport_url = $RABBIT_URL
rpc_workers = 1
rpc_state_report_workers = 1
host = courier-neutron-rpc
log_file = neutron-rpc.log
EOF
  launch_py neutron-rpc-server "$D/etc/neutron/neutron.conf" "$D/etc/neutron/ml2_conf.ini" "$D/etc/neutron/rpc.conf"
  cat > "$D/etc/neutron/sriov-agent-$host.ini" <<EOF
[DEFAULT]
host = $host
transport_url = $RABBIT_URL
state_path = $D/state
log_dir = $D/log
log_file = neutron-sriov-agent-$host.log
[agent]
polling_interval = 2
report_interval = 10
[sriov_nic]
physical_device_mappings = $mappings
[securitygroup]
firewall_driver = noop
[oslo_concurrency]
lock_path = $D/state/lock
EOF
  launch_py "neutron-sriov-nic-agent@$host" "$D/etc/neutron/sriov-agent-$host.ini"
  tok=$(ks_token admin admin "$ADMIN_PW"); [ -n "$tok" ] || die "Keystone issues no admin token (run scripts/neutron.sh start first)"
  for _ in $(seq 120); do
    id=$(curl -s -m 5 -H "X-Auth-Token: $tok" "http://127.0.0.1:$API_PORT/v2.0/agents?host=$host&agent_type=NIC%20Switch%20agent" \
      | jq -r '.agents[] | select(.alive) | .id' 2>/dev/null | head -1)
    [ -n "$id" ] && break
    alive "$D/run/neutron-sriov-nic-agent@$host.pid" \
      || { tail -20 "$D/log/neutron-sriov-agent-$host.log" "$D/log/neutron-sriov-nic-agent@$host.out" >&2 2>/dev/null; die "the SR-IOV agent of $host died"; }
    sleep 0.5
  done
  [ -n "$id" ] || { tail -20 "$D/log/neutron-rpc.log" >&2 2>/dev/null; die "no alive NIC Switch agent of host $host in Neutron within 60 s"; }
  log "SR-IOV NIC agent of host $host ($mappings) alive in Neutron: $id"
}
sriov_agent_stop() {
  local f
  for f in "$D"/run/neutron-sriov-nic-agent@*.pid; do
    [ -e "$f" ] || continue; stop_pid "$(basename "$f" .pid)"
  done
  stop_pid neutron-rpc-server
  if command -v rabbitmqctl >/dev/null && rabbit rabbitmqctl -q stop >/dev/null 2>&1; then echo "neutron.sh: stopped RabbitMQ"; fi
}

# ------------------------------------------------------------------ verbs
start() {
  mkdir -p "$D"/{etc,run,log,state}
  install_venvs
  start_mariadb
  prepare_keystone
  launch_keystone
  prepare_neutron          # (overlaps Keystone's start)
  launch_neutron neutron   # its token check waits for Keystone, so it loads meanwhile
  # The very first time, the noauth API starts only once the first is up (the first start of
  # Neutron creates its rows in the DB and the shared OVN NB); later both load together.
  local once="$D/mysql/courier-neutron-started"
  [ -f "$once" ] && launch_neutron neutron-noauth
  wait_uwsgi keystone $KS_PORT /v3
  keystone_catalog
  local tok; tok=$(ks_token neutron service "$SVC_PW"); [ -n "$tok" ] || die "Keystone issues no token for user neutron"
  wait_uwsgi neutron $API_PORT /v2.0/networks -H "X-Auth-Token: $tok"
  touch "$once"
  [ -n "${LAUNCHED[neutron-noauth]+x}" ] || launch_neutron neutron-noauth
  wait_uwsgi neutron-noauth $NOAUTH_PORT /v2.0/networks
  write_client_files
  log "ready in $(el)s. Keystone $KS_URL, Neutron http://127.0.0.1:$API_PORT (keystone), http://127.0.0.1:$NOAUTH_PORT (noauth)"
  log "clients: $ETC_TEST/clouds.yaml (+ secure.yaml), $ETC_TEST/admin-openrc.sh, $ETC_TEST/demo-openrc.sh; logs in $D/log"
}

stop() {
  sriov_agent_stop
  stop_pid neutron-noauth
  stop_pid neutron
  stop_pid keystone
  stop_pid mysqld
  echo "neutron.sh: stopped (data kept in $D)"
}

status() {
  local bad=0 tok c
  say() { echo "neutron.sh status: $*"; }
  if alive "$D/run/mysqld.pid" && mariadb-admin --no-defaults -S "$D/run/mysqld.sock" -uroot ping >/dev/null 2>&1; then
    say "MariaDB        ok (127.0.0.1:$DB_PORT, pid $(cat "$D/run/mysqld.pid"))"
  else say "MariaDB        DOWN"; bad=1; fi
  c=$(http_code "$KS_URL")
  tok=""; [ "$c" = 200 ] && tok=$(ks_token admin admin "$ADMIN_PW")
  if [ -n "$tok" ]; then say "Keystone       ok ($KS_URL answers, admin token issued)"
  elif [ "$c" = 200 ]; then say "Keystone       BROKEN (GET /v3 -> 200 but no token for admin)"; bad=1
  else say "Keystone       DOWN (GET /v3 -> $c)"; bad=1; fi
  c=$(http_code -H "X-Auth-Token: ${tok:-none}" "http://127.0.0.1:$API_PORT/v2.0/networks")
  if [ "$c" = 200 ]; then say "Neutron        ok (http://127.0.0.1:$API_PORT, GET /v2.0/networks with token -> 200)"
  else say "Neutron        DOWN (GET /v2.0/networks${tok:+ with token}${tok:-, no token to send,} -> $c)"; bad=1; fi
  c=$(http_code "http://127.0.0.1:$NOAUTH_PORT/v2.0/networks")
  if [ "$c" = 200 ]; then say "Neutron noauth ok (http://127.0.0.1:$NOAUTH_PORT, GET /v2.0/networks without token -> 200)"
  else say "Neutron noauth DOWN (GET /v2.0/networks -> $c)"; bad=1; fi
  return $bad
}

[ "$(id -u)" = 0 ] || die "run as root"
case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  restart) stop; start ;;
  sriov-agent) sriov_agent "${2:-}" "${3:-}" ;;
  sriov-agent-stop) sriov_agent_stop ;;
  restart-keystone)
    keystone_conf; stop_pid keystone
    launch_keystone
    wait_uwsgi keystone $KS_PORT /v3
    log "Keystone restarted, token expiration ${TOKEN_EXP}s (host-wide)" ;;
  *) echo "usage: $0 start|stop|status|restart|restart-keystone|sriov-agent HOST PHYSNET:PF|sriov-agent-stop" >&2; exit 2 ;;
esac
