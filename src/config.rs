//! Daemon configuration: TOML file, then `COURIER_*` environment overrides, then defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

pub const DEFAULT_SOCKET: &str = "/run/courier/courier.sock";
pub const DEFAULT_CONFIG: &str = "/etc/courier/courier.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Unix socket of the daemon's local API (mode 0600, root only).
    pub socket: PathBuf,
    /// Directory of the durable local store.
    pub state_dir: PathBuf,
    /// This host's name as the backend knows it (OVN: the chassis hostname). Marks ownership.
    pub host: String,
    /// This machine's identity, marked on the OVN ports it makes beside `host`, so two
    /// machines given one `host` (one hostname) are told apart: the second refuses to start,
    /// and no sweep deletes another machine's port. Unset: the local OVS `system-id` (the OVN
    /// chassis name) when a binding uses the local Open_vSwitch DB, else /etc/machine-id.
    pub machine_id: Option<String>,
    /// Seconds between periodic reconciliations (0 = only at start).
    pub reconcile_interval_secs: u64,
    /// Where `network create` puts a network that names no backend: "ovn" or "neutron".
    pub default_backend: String,
    pub ovn: OvnConfig,
    pub neutron: NeutronConfig,
    pub docker: DockerConfig,
    /// The edge bindings this host offers; the first is the default. "veth-ovs" (needs the
    /// local Open_vSwitch DB), "macvlan", "ipvlan", "vlan" (nested in a VM: need `[nested]
    /// master`).
    pub bindings: Vec<String>,
    pub nested: NestedConfig,
    pub sriov: SriovConfig,
    pub pool: PoolSettings,
}

/// Port pools (`[pool]`): logical ports made ahead in bulk, so an attach takes one with no
/// backend write. Off by default (as kuryr-kubernetes' `vif_pool_driver = noop`); the knobs'
/// defaults are kuryr-kubernetes' `[vif_pool]` ones (see `pool::PoolConfig` for the mapping
/// to kuryr-kubernetes' and AWS VPC CNI's).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolSettings {
    pub enabled: bool,
    /// Free ports kept ready per pool (kuryr `ports_pool_min`, AWS `WARM_IP_TARGET`).
    pub min: usize,
    /// Free + taken ports per pool; 0 = no limit (kuryr `ports_pool_max`).
    pub max: usize,
    /// Ports per refill, grown when a pool drains faster than it refills (kuryr
    /// `ports_pool_batch`).
    pub batch: usize,
    /// Ports a pool holds even if none is taken (AWS `MINIMUM_IP_TARGET`).
    pub min_total: usize,
    /// Seconds between refill passes (kuryr `ports_pool_update_frequency`); a take that leaves
    /// a pool below `min` starts one at once.
    pub refill_interval_secs: u64,
    /// The adaptive batch's ceiling.
    pub max_batch: usize,
    /// Ports per second this host creates in one backend for its pools.
    pub creates_per_sec: u32,
    /// Networks whose pool (default binding, no security groups) is filled from the start;
    /// other pools are made by their first attach.
    pub networks: Vec<String>,
    /// Per-network settings, e.g. `[pool.overrides.web] min = 20`.
    pub overrides: std::collections::BTreeMap<String, PoolOverride>,
}

/// One network's pool settings over `[pool]`'s.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PoolOverride {
    pub enabled: Option<bool>,
    pub min: Option<usize>,
    pub max: Option<usize>,
    pub batch: Option<usize>,
    pub min_total: Option<usize>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        let d = crate::pool::PoolConfig::default();
        PoolSettings {
            enabled: false,
            min: d.min,
            max: d.max,
            batch: d.batch,
            min_total: d.min_total,
            refill_interval_secs: d.refill_interval.as_secs(),
            max_batch: d.max_batch,
            creates_per_sec: d.creates_per_sec,
            networks: vec![],
            overrides: Default::default(),
        }
    }
}

impl PoolSettings {
    /// The pool rules of network `network`'s pools; None when pools are off for it.
    pub fn config_for(&self, network: &str) -> Option<crate::pool::PoolConfig> {
        let o = self.overrides.get(network).cloned().unwrap_or_default();
        if !o.enabled.unwrap_or(self.enabled) {
            return None;
        }
        Some(crate::pool::PoolConfig {
            min: o.min.unwrap_or(self.min),
            max: o.max.unwrap_or(self.max),
            batch: o.batch.unwrap_or(self.batch),
            min_total: o.min_total.unwrap_or(self.min_total),
            refill_interval: Duration::from_secs(self.refill_interval_secs),
            max_batch: self.max_batch.max(o.batch.unwrap_or(self.batch)),
            creates_per_sec: self.creates_per_sec,
        })
    }

    /// Every setting's rules checked (the defaults and each override).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let all = Self {
            enabled: true,
            ..self.clone()
        };
        all.config_for("")
            .map(|c| c.validate())
            .transpose()
            .map_err(|e| format!("[pool]: {e}"))?;
        for name in self.overrides.keys() {
            if let Some(c) = all.config_for(name) {
                c.validate()
                    .map_err(|e| format!("[pool.overrides.{name}]: {e}"))?;
            }
        }
        Ok(())
    }
}

/// SR-IOV VFs for the `sriov` binding.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SriovConfig {
    /// Which PF serves which physical network, in the form of Neutron's SR-IOV agent:
    /// `["physnet1:eth1", "physnet2:eth3"]`. The VFs of these PFs make the host's VF pool.
    pub physical_device_mappings: Vec<String>,
    /// The NIC drops a VF's frames with a source MAC other than its port's (IFLA_VF_SPOOFCHK).
    pub spoof_check: bool,
    /// The container may change its VF's MAC and make it promiscuous (IFLA_VF_TRUST).
    pub trust: bool,
}

impl Default for SriovConfig {
    fn default() -> Self {
        SriovConfig {
            physical_device_mappings: vec![],
            spoof_check: true,
            trust: false,
        }
    }
}

/// Containers nested in the VM Courier runs in.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct NestedConfig {
    /// The VM's interface on its logical port (e.g. "eth0"; vlan-ovs: the interface with the
    /// VM's address, e.g. the bridge's own).
    pub master: String,
    /// vlan-ovs: the VM's own OVS bridge, whose uplink is the VM's NIC (a trunk).
    pub bridge: String,
    /// The VM's port in the backend (OVN: its LSP name; Neutron: its id). Unset: found by the
    /// master's IP, then its MAC.
    pub parent_port: Option<String>,
}

/// Docker's libnetwork remote NetworkDriver + IpamDriver (the `docker` front door).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    pub enabled: bool,
    /// The plugin socket; dockerd finds `/run/docker/plugins/NAME.sock` as driver `NAME`.
    pub socket: PathBuf,
    /// Capability scope Docker is told: "local" (each host's dockerd has its own networks) or
    /// "global" (one network across hosts, with a cluster store).
    pub scope: String,
    /// Docker goes from RequestAddress to CreateEndpoint to Join at once; an address lease or an
    /// endpoint not joined for this long is a leftover of a crash or an outage, released by
    /// reconcile.
    pub lease_timeout_secs: u64,
    /// Where a network created without `--subnet` gets its /24 (one not in use by a network
    /// Courier knows).
    pub default_pool: String,
    /// The Docker Engine API of the dockerd that uses this plugin (`unix:///PATH`, as
    /// `DOCKER_HOST` writes it): reconcile compares its network list with Courier's records of
    /// Docker networks (a `docker network rm` while Courier was down). Default: `DOCKER_HOST`
    /// if it is a unix socket, else `unix:///var/run/docker.sock`.
    pub engine: String,
}

/// The Docker Engine API's default socket.
pub const DOCKER_ENGINE_DEFAULT: &str = "unix:///var/run/docker.sock";

impl DockerConfig {
    /// The Engine API's socket path (`engine` was validated).
    pub fn engine_socket(&self) -> PathBuf {
        PathBuf::from(self.engine.strip_prefix("unix://").unwrap_or(&self.engine))
    }
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            enabled: true,
            socket: PathBuf::from("/run/docker/plugins/courier.sock"),
            scope: "local".into(),
            lease_timeout_secs: 60,
            default_pool: "10.224.0.0/12".into(),
            engine: DOCKER_ENGINE_DEFAULT.into(),
        }
    }
}

/// The Neutron backend. Credentials come the way every OpenStack client takes them:
/// `cloud` (or `OS_CLOUD`) from clouds.yaml (`OS_CLIENT_CONFIG_FILE`, ./clouds.yaml,
/// ~/.config/openstack/, /etc/openstack/; `secure.yaml` beside it), else the `OS_*` variables.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct NeutronConfig {
    pub enabled: bool,
    /// Credentials in this file instead of clouds.yaml / OS_* (`[neutron.auth]`: the
    /// clouds.yaml cloud fields — auth_type, auth_url, username, password, project_name,
    /// user_domain_name, project_domain_name, application_credential_id/secret, region_name,
    /// interface, network_endpoint_override, cacert, verify). Keep the file root-only.
    pub auth: Option<courier_openstack::CloudConfig>,
    /// clouds.yaml cloud name (default: `OS_CLOUD`, else the `OS_*` variables).
    pub cloud: Option<String>,
    /// `binding:host_id` of Courier's ports: the hostname this host's ovn-controller
    /// registered as its chassis (default: this machine's hostname).
    pub host_id: Option<String>,
    /// Nested vlan child ports: "auto" (a trunk subport if Neutron has the trunk extension,
    /// else `binding:profile {parent_name, tag}`), "trunk" or "binding-profile".
    pub vlan_children: crate::backend::neutron::VlanChildren,
    /// At most this many requests to Neutron in flight at once; the rest wait
    /// their turn, and their `api_timeout` starts when they are sent. Unset: 8. An API with
    /// few workers answers a burst (100 attaches at once) in turn instead of timing the tail
    /// out in its own queue.
    pub max_in_flight: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OvnConfig {
    /// OVN Northbound DB: `unix:PATH` or `tcp:HOST:PORT`; empty: no OVN-direct backend (the
    /// local OVS DB is still used by the veth-ovs binding).
    pub nb_remote: String,
    /// OVN Southbound DB, read only by nested edges, to wait for the hypervisor of the VM's
    /// port alone (its `Chassis_Private.nb_cfg`). Empty: derived from `nb_remote`
    /// (`…/ovnnb_db.sock` → `…/ovnsb_db.sock`, port 6641 → 6642); "none": not used (nested
    /// edges then wait for every hypervisor: NB_Global `hv_cfg`).
    pub sb_remote: String,
    /// The local Open_vSwitch DB.
    pub ovs_remote: String,
    /// Integration bridge that ovn-controller manages.
    pub bridge: String,
    /// How long to wait for ovn-controller to install a plugged port's flows (`ovn-installed`).
    pub port_up_timeout_ms: u64,
    /// MTU of container interfaces (both veth ends). Unset: the kernel's default (1500).
    /// Multi-node OVN over geneve needs room for the tunnel header, e.g. 1400.
    pub mtu: Option<u32>,
    /// OVSDB sessions (NB and local OVS): send an echo after this long without a byte from
    /// the server; the server is declared dead (and the session reconnects) when nothing came
    /// for twice as long again — 5 s → dead within 15 s. OVN's own default probe is 5 s.
    pub inactivity_probe_ms: u64,
    /// Longest wait for any one OVSDB reply before the call fails (try again later).
    pub call_timeout_ms: u64,
    /// ovn-controller's unixctl socket, for STATUS. Empty: found from
    /// /var/run/ovn/ovn-controller.pid, as ovn-appctl does.
    pub controller_ctl: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: PathBuf::from(DEFAULT_SOCKET),
            state_dir: PathBuf::from("/var/lib/courier"),
            host: local_hostname(),
            machine_id: None,
            reconcile_interval_secs: 60,
            default_backend: "ovn".into(),
            ovn: OvnConfig::default(),
            neutron: NeutronConfig::default(),
            docker: DockerConfig::default(),
            bindings: vec!["veth-ovs".into()],
            nested: NestedConfig::default(),
            sriov: SriovConfig::default(),
            pool: PoolSettings::default(),
        }
    }
}

impl Default for OvnConfig {
    fn default() -> Self {
        OvnConfig {
            nb_remote: "unix:/var/run/ovn/ovnnb_db.sock".into(),
            sb_remote: String::new(),
            ovs_remote: "unix:/var/run/openvswitch/db.sock".into(),
            bridge: "br-int".into(),
            port_up_timeout_ms: 10_000,
            mtu: None,
            inactivity_probe_ms: 5_000,
            call_timeout_ms: 30_000,
            controller_ctl: String::new(),
        }
    }
}

impl OvnConfig {
    /// The Southbound DB to ask (see `sb_remote`), if any.
    pub fn southbound(&self) -> Option<String> {
        match self.sb_remote.as_str() {
            "none" => None,
            "" => {
                let nb = self.nb_remote.as_str();
                if let Some(path) = nb.strip_suffix("ovnnb_db.sock") {
                    Some(format!("{path}ovnsb_db.sock"))
                } else {
                    let (host, port) = nb.rsplit_once(':')?;
                    (port == "6641" && host.starts_with("tcp:")).then(|| format!("{host}:6642"))
                }
            }
            r => Some(r.to_string()),
        }
    }

    pub fn port_up_timeout(&self) -> Duration {
        Duration::from_millis(self.port_up_timeout_ms)
    }

    /// Session timing for both OVSDB clients.
    pub fn ovsdb_options(&self) -> courier_ovsdb::ClientOptions {
        let probe = Duration::from_millis(self.inactivity_probe_ms);
        courier_ovsdb::ClientOptions {
            echo_idle: probe,
            echo_deadline: probe * 2,
            call_timeout: Duration::from_millis(self.call_timeout_ms),
            ..Default::default()
        }
    }
}

impl Config {
    /// Reads `path` (or the default path, if it exists), then applies environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let mut cfg = match path {
            Some(p) => read_file(p)?,
            None if Path::new(DEFAULT_CONFIG).exists() => read_file(Path::new(DEFAULT_CONFIG))?,
            None => Config::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        Ok(cfg)
    }

    /// Environment overrides: COURIER_SOCKET, COURIER_STATE_DIR, COURIER_HOST, COURIER_MACHINE_ID,
    /// COURIER_RECONCILE_INTERVAL_SECS, COURIER_OVN_NB_REMOTE, COURIER_OVN_SB_REMOTE,
    /// COURIER_OVS_REMOTE,
    /// COURIER_OVN_BRIDGE, COURIER_PORT_UP_TIMEOUT_MS, COURIER_MTU,
    /// COURIER_OVN_INACTIVITY_PROBE_MS, COURIER_OVN_CALL_TIMEOUT_MS, COURIER_OVN_CONTROLLER_CTL,
    /// COURIER_DEFAULT_BACKEND, COURIER_NEUTRON (1/true), COURIER_NEUTRON_CLOUD (enables it),
    /// COURIER_NEUTRON_HOST_ID, COURIER_NEUTRON_VLAN_CHILDREN, COURIER_NEUTRON_MAX_IN_FLIGHT,
    /// COURIER_DOCKER (0/1), COURIER_DOCKER_SOCKET, COURIER_DOCKER_SCOPE,
    /// COURIER_DOCKER_ENGINE (else DOCKER_HOST when it is unix://),
    /// COURIER_DOCKER_LEASE_TIMEOUT_SECS, COURIER_BINDINGS (comma list), COURIER_NESTED_MASTER, COURIER_NESTED_BRIDGE,
    /// COURIER_NESTED_PARENT_PORT, COURIER_SRIOV_PHYSICAL_DEVICE_MAPPINGS (comma list),
    /// COURIER_SRIOV_SPOOF_CHECK, COURIER_SRIOV_TRUST (0/1), COURIER_POOL (0/1),
    /// COURIER_POOL_MIN, COURIER_POOL_MAX, COURIER_POOL_BATCH, COURIER_POOL_MIN_TOTAL,
    /// COURIER_POOL_REFILL_INTERVAL_SECS, COURIER_POOL_NETWORKS (comma list).
    /// Then validates the result.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<()> {
        if let Some(v) = get("COURIER_SOCKET") {
            self.socket = v.into();
        }
        if let Some(v) = get("COURIER_STATE_DIR") {
            self.state_dir = v.into();
        }
        if let Some(v) = get("COURIER_HOST") {
            self.host = v;
        }
        if let Some(v) = get("COURIER_MACHINE_ID") {
            self.machine_id = Some(v);
        }
        if let Some(v) = get("COURIER_RECONCILE_INTERVAL_SECS") {
            self.reconcile_interval_secs = parse_num("COURIER_RECONCILE_INTERVAL_SECS", &v)?;
        }
        if let Some(v) = get("COURIER_OVN_NB_REMOTE") {
            self.ovn.nb_remote = v;
        }
        if let Some(v) = get("COURIER_OVN_SB_REMOTE") {
            self.ovn.sb_remote = v;
        }
        if let Some(v) = get("COURIER_OVS_REMOTE") {
            self.ovn.ovs_remote = v;
        }
        if let Some(v) = get("COURIER_OVN_BRIDGE") {
            self.ovn.bridge = v;
        }
        if let Some(v) = get("COURIER_PORT_UP_TIMEOUT_MS") {
            self.ovn.port_up_timeout_ms = parse_num("COURIER_PORT_UP_TIMEOUT_MS", &v)?;
        }
        if let Some(v) = get("COURIER_MTU") {
            let mtu = parse_num("COURIER_MTU", &v)?;
            self.ovn.mtu = Some(u32::try_from(mtu).unwrap_or(u32::MAX));
        }
        if let Some(v) = get("COURIER_OVN_INACTIVITY_PROBE_MS") {
            self.ovn.inactivity_probe_ms = parse_num("COURIER_OVN_INACTIVITY_PROBE_MS", &v)?;
        }
        if let Some(v) = get("COURIER_OVN_CALL_TIMEOUT_MS") {
            self.ovn.call_timeout_ms = parse_num("COURIER_OVN_CALL_TIMEOUT_MS", &v)?;
        }
        if let Some(v) = get("COURIER_DEFAULT_BACKEND") {
            self.default_backend = v;
        }
        if let Some(v) = get("COURIER_NEUTRON") {
            self.neutron.enabled = matches!(v.as_str(), "1" | "true" | "yes");
        }
        if let Some(v) = get("COURIER_NEUTRON_CLOUD") {
            self.neutron.cloud = Some(v);
            self.neutron.enabled = true;
        }
        if let Some(v) = get("COURIER_NEUTRON_VLAN_CHILDREN") {
            self.neutron.vlan_children = v.parse()?;
        }
        if let Some(v) = get("COURIER_NEUTRON_HOST_ID") {
            self.neutron.host_id = Some(v);
        }
        if let Some(v) = get("COURIER_NEUTRON_MAX_IN_FLIGHT") {
            let n = parse_num("COURIER_NEUTRON_MAX_IN_FLIGHT", &v)?;
            self.neutron.max_in_flight = Some(usize::try_from(n).unwrap_or(usize::MAX));
        }
        if let Some(v) = get("COURIER_OVN_CONTROLLER_CTL") {
            self.ovn.controller_ctl = v;
        }
        if let Some(v) = get("COURIER_DOCKER") {
            self.docker.enabled = matches!(v.as_str(), "1" | "true" | "yes");
        }
        if let Some(v) = get("COURIER_DOCKER_SOCKET") {
            self.docker.socket = v.into();
        }
        if let Some(v) = get("COURIER_DOCKER_SCOPE") {
            self.docker.scope = v;
        }
        if let Some(v) = get("COURIER_DOCKER_ENGINE") {
            self.docker.engine = v;
        } else if let Some(v) = get("DOCKER_HOST").filter(|v| v.starts_with("unix://")) {
            if self.docker.engine == DOCKER_ENGINE_DEFAULT {
                self.docker.engine = v;
            }
        }
        if let Some(v) = get("COURIER_BINDINGS") {
            self.bindings = v
                .split(',')
                .map(|b| b.trim().to_string())
                .filter(|b| !b.is_empty())
                .collect();
        }
        if let Some(v) = get("COURIER_NESTED_MASTER") {
            self.nested.master = v;
        }
        if let Some(v) = get("COURIER_NESTED_BRIDGE") {
            self.nested.bridge = v;
        }
        if let Some(v) = get("COURIER_NESTED_PARENT_PORT") {
            self.nested.parent_port = Some(v);
        }
        if let Some(v) = get("COURIER_SRIOV_PHYSICAL_DEVICE_MAPPINGS") {
            self.sriov.physical_device_mappings = v
                .split(',')
                .map(|b| b.trim().to_string())
                .filter(|b| !b.is_empty())
                .collect();
        }
        if let Some(v) = get("COURIER_SRIOV_SPOOF_CHECK") {
            self.sriov.spoof_check = parse_bool("COURIER_SRIOV_SPOOF_CHECK", &v)?;
        }
        if let Some(v) = get("COURIER_SRIOV_TRUST") {
            self.sriov.trust = parse_bool("COURIER_SRIOV_TRUST", &v)?;
        }
        if let Some(v) = get("COURIER_DOCKER_LEASE_TIMEOUT_SECS") {
            self.docker.lease_timeout_secs = parse_num("COURIER_DOCKER_LEASE_TIMEOUT_SECS", &v)?;
        }
        if let Some(v) = get("COURIER_POOL") {
            self.pool.enabled = parse_bool("COURIER_POOL", &v)?;
        }
        if let Some(v) = get("COURIER_POOL_MIN") {
            self.pool.min = parse_num("COURIER_POOL_MIN", &v)? as usize;
        }
        if let Some(v) = get("COURIER_POOL_MAX") {
            self.pool.max = parse_num("COURIER_POOL_MAX", &v)? as usize;
        }
        if let Some(v) = get("COURIER_POOL_BATCH") {
            self.pool.batch = parse_num("COURIER_POOL_BATCH", &v)? as usize;
        }
        if let Some(v) = get("COURIER_POOL_MIN_TOTAL") {
            self.pool.min_total = parse_num("COURIER_POOL_MIN_TOTAL", &v)? as usize;
        }
        if let Some(v) = get("COURIER_POOL_REFILL_INTERVAL_SECS") {
            self.pool.refill_interval_secs = parse_num("COURIER_POOL_REFILL_INTERVAL_SECS", &v)?;
        }
        if let Some(v) = get("COURIER_POOL_NETWORKS") {
            self.pool.networks = v
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect();
        }
        self.validate()
    }

    /// Checks values wherever they came from (file or environment).
    pub fn validate(&self) -> Result<()> {
        self.pool.validate().map_err(Error::InvalidInput)?;
        if let Some(mtu) = self.ovn.mtu {
            if !(576..=65535).contains(&mtu) {
                return Err(Error::InvalidInput(format!(
                    "MTU {mtu} ([ovn] mtu / COURIER_MTU) must be between 576 and 65535"
                )));
            }
        }
        if self.ovn.inactivity_probe_ms < 100 || self.ovn.call_timeout_ms < 100 {
            return Err(Error::InvalidInput(format!(
                "[ovn] inactivity_probe_ms ({}) and call_timeout_ms ({}) must be at least 100",
                self.ovn.inactivity_probe_ms, self.ovn.call_timeout_ms
            )));
        }
        if self.neutron.max_in_flight == Some(0) {
            return Err(Error::InvalidInput(
                "[neutron] max_in_flight (COURIER_NEUTRON_MAX_IN_FLIGHT) is 0: give at least 1, or leave it unset for 8".into(),
            ));
        }
        let enabled: Vec<&str> = [
            (!self.ovn.nb_remote.is_empty()).then_some("ovn"),
            self.neutron.enabled.then_some("neutron"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if enabled.is_empty() {
            return Err(Error::InvalidInput(
                "no backend configured: set [ovn] nb_remote and/or [neutron] enabled = true".into(),
            ));
        }
        if !enabled.contains(&self.default_backend.as_str()) {
            return Err(Error::InvalidInput(format!(
                "default_backend {:?} is not configured (configured: {}): set default_backend / COURIER_DEFAULT_BACKEND",
                self.default_backend,
                enabled.join(", ")
            )));
        }
        if self.bindings.is_empty() {
            return Err(Error::InvalidInput(
                "bindings (COURIER_BINDINGS) is empty: give at least one of veth-ovs, macvlan, ipvlan, vlan, vlan-ovs, sriov"
                    .into(),
            ));
        }
        for b in &self.bindings {
            if !matches!(
                b.as_str(),
                "veth-ovs" | "macvlan" | "ipvlan" | "vlan" | "vlan-ovs" | "sriov"
            ) {
                return Err(Error::InvalidInput(format!(
                    "binding {b:?} (bindings / COURIER_BINDINGS) is not one Courier has: veth-ovs, macvlan, ipvlan, vlan, vlan-ovs, sriov"
                )));
            }
        }
        if self.bindings.iter().any(|b| b == "sriov") {
            if self.sriov.physical_device_mappings.is_empty() {
                return Err(Error::InvalidInput(
                    "binding sriov needs [sriov] physical_device_mappings (COURIER_SRIOV_PHYSICAL_DEVICE_MAPPINGS), e.g. [\"physnet1:eth1\"]: which PF serves which physical network".into(),
                ));
            }
            courier_sriov::parse_device_mappings(&self.sriov.physical_device_mappings)
                .map_err(|e| Error::InvalidInput(e.to_string()))?;
        }
        if self
            .bindings
            .iter()
            .any(|b| matches!(b.as_str(), "macvlan" | "ipvlan" | "vlan" | "vlan-ovs"))
            && self.nested.master.is_empty()
        {
            return Err(Error::InvalidInput(
                "bindings macvlan, ipvlan, vlan and vlan-ovs need [nested] master (COURIER_NESTED_MASTER): the VM's interface on its port".into(),
            ));
        }
        if self.bindings.iter().any(|b| b == "vlan-ovs") && self.nested.bridge.is_empty() {
            return Err(Error::InvalidInput(
                "binding vlan-ovs needs [nested] bridge (COURIER_NESTED_BRIDGE): the VM's own OVS bridge, whose uplink is the VM's NIC".into(),
            ));
        }
        if !matches!(self.docker.scope.as_str(), "local" | "global") {
            return Err(Error::InvalidInput(format!(
                "[docker] scope {:?} (COURIER_DOCKER_SCOPE) must be \"local\" or \"global\"",
                self.docker.scope
            )));
        }
        if !self
            .docker
            .engine
            .strip_prefix("unix://")
            .is_some_and(|p| p.starts_with('/'))
        {
            return Err(Error::InvalidInput(format!(
                "[docker] engine {:?} (COURIER_DOCKER_ENGINE) must be the Docker Engine's unix socket, e.g. {DOCKER_ENGINE_DEFAULT}",
                self.docker.engine
            )));
        }
        match self.docker.default_pool.parse::<ipnet::Ipv4Net>() {
            Ok(p) if p.prefix_len() <= 24 => {}
            _ => {
                return Err(Error::InvalidInput(format!(
                    "[docker] default_pool {:?} must be an IPv4 CIDR of /24 or larger, e.g. 10.224.0.0/12",
                    self.docker.default_pool
                )))
            }
        }
        if let Some(m) = &self.machine_id {
            if m.trim().is_empty() || m.trim() != m {
                return Err(Error::InvalidInput(format!(
                    "machine_id {m:?} (machine_id / COURIER_MACHINE_ID) must be non-empty, without spaces around it; unset it to use the OVS system-id or /etc/machine-id"
                )));
            }
        }
        if self.host.is_empty() || self.host.contains(':') {
            return Err(Error::InvalidInput(format!(
                "host {:?} (host / COURIER_HOST) must be non-empty and contain no ':'",
                self.host
            )));
        }
        Ok(())
    }
}

fn parse_bool(var: &str, v: &str) -> Result<bool> {
    match v {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err(Error::InvalidInput(format!(
            "{var}={v:?} is not a yes/no: give 1 or 0"
        ))),
    }
}

fn parse_num(var: &str, v: &str) -> Result<u64> {
    v.parse()
        .map_err(|_| Error::InvalidInput(format!("{var}={v:?} is not a whole number")))
}

fn read_file(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::InvalidInput(format!("cannot read config {}: {e}", path.display())))?;
    toml::from_str(&text)
        .map_err(|e| Error::InvalidInput(format!("config {}: {e}", path.display())))
}

pub fn local_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_then_env_overrides() {
        let mut cfg: Config = toml::from_str(
            r#"
            socket = "/tmp/c.sock"
            [ovn]
            bridge = "br-x"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.socket, PathBuf::from("/tmp/c.sock"));
        assert_eq!(cfg.ovn.bridge, "br-x");
        assert_eq!(cfg.ovn.port_up_timeout_ms, 10_000);
        cfg.apply_env(|k| match k {
            "COURIER_OVN_BRIDGE" => Some("br-y".into()),
            "COURIER_PORT_UP_TIMEOUT_MS" => Some("500".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(cfg.ovn.bridge, "br-y");
        assert_eq!(cfg.ovn.port_up_timeout(), Duration::from_millis(500));
        assert!(cfg
            .apply_env(|k| (k == "COURIER_PORT_UP_TIMEOUT_MS").then(|| "soon".into()))
            .is_err());
        cfg.apply_env(|k| (k == "COURIER_MTU").then(|| "1400".into()))
            .unwrap();
        assert_eq!(cfg.ovn.mtu, Some(1400));
        assert!(cfg
            .apply_env(|k| (k == "COURIER_MTU").then(|| "100".into()))
            .is_err());
    }

    #[test]
    fn the_southbound_follows_the_northbound_unless_set() {
        let sb = |nb: &str, sb: &str| {
            OvnConfig {
                nb_remote: nb.into(),
                sb_remote: sb.into(),
                ..Default::default()
            }
            .southbound()
        };
        assert_eq!(
            sb("unix:/var/run/ovn/ovnnb_db.sock", "").as_deref(),
            Some("unix:/var/run/ovn/ovnsb_db.sock")
        );
        assert_eq!(
            sb("tcp:10.0.0.5:6641", "").as_deref(),
            Some("tcp:10.0.0.5:6642")
        );
        assert_eq!(sb("tcp:10.0.0.5:7000", ""), None);
        assert_eq!(sb("tcp:10.0.0.5:6641", "none"), None);
        assert_eq!(
            sb("tcp:10.0.0.5:6641", "tcp:10.0.0.6:6642").as_deref(),
            Some("tcp:10.0.0.6:6642")
        );
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../contrib/courier.toml.example");
        let cfg: Config = toml::from_str(text).expect("contrib/courier.toml.example is valid");
        assert_eq!(cfg.ovn.bridge, "br-int");
        assert_eq!(cfg.socket, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn mtu_from_the_file_is_validated_too() {
        let mut cfg: Config = toml::from_str("[ovn]\nmtu = 100\n").unwrap();
        let e = cfg.apply_env(|_| None).unwrap_err().to_string();
        assert!(e.contains("between 576 and 65535"), "{e}");
        let mut cfg: Config = toml::from_str("[ovn]\nmtu = 1400\n").unwrap();
        cfg.apply_env(|_| None).unwrap();
        assert_eq!(cfg.ovn.mtu, Some(1400));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[ovn]\nmtu = 70000\n").unwrap();
        assert!(Config::load(Some(&f)).is_err());
    }

    #[test]
    fn neutron_credentials_in_the_file() {
        let cfg: Config = toml::from_str(
            r#"
            [neutron]
            enabled = true
            [neutron.auth]
            auth_url = "http://keystone:5000/v3"
            username = "courier"
            password = "s3cret"
            project_name = "infra"
            user_domain_name = "Default"
            project_domain_name = "Default"
            "#,
        )
        .unwrap();
        let auth = cfg.neutron.auth.clone().unwrap();
        assert_eq!(auth.username.as_deref(), Some("courier"));
        assert!(
            !format!("{cfg:?}").contains("s3cret"),
            "the password is never printed"
        );
        assert!(toml::from_str::<Config>("[neutron.auth]\nusernme = \"x\"\n").is_err());
    }

    #[test]
    fn bindings_are_checked() {
        let mut cfg = Config::default();
        assert_eq!(cfg.bindings, vec!["veth-ovs".to_string()]);
        let e = cfg
            .apply_env(|k| (k == "COURIER_BINDINGS").then(|| "macvlan".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[nested] master"), "{e}");
        let mut cfg = Config::default();
        cfg.apply_env(|k| match k {
            "COURIER_BINDINGS" => Some("macvlan, veth-ovs".into()),
            "COURIER_NESTED_MASTER" => Some("eth0".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(cfg.bindings, vec!["macvlan".to_string(), "veth-ovs".into()]);
        let mut cfg = Config::default();
        let e = cfg
            .apply_env(|k| (k == "COURIER_BINDINGS").then(|| "vxlan".into()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("veth-ovs, macvlan, ipvlan, vlan, vlan-ovs"),
            "{e}"
        );
        // vlan-ovs needs the VM's bridge; vlan_children is one of three words.
        let mut cfg = Config::default();
        let e = cfg
            .apply_env(|k| match k {
                "COURIER_BINDINGS" => Some("vlan-ovs".into()),
                "COURIER_NESTED_MASTER" => Some("br-vm".into()),
                _ => None,
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("[nested] bridge"), "{e}");
        let mut cfg = Config::default();
        let e = cfg
            .apply_env(|k| (k == "COURIER_NEUTRON_VLAN_CHILDREN").then(|| "subport".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("auto, trunk or binding-profile"), "{e}");
        // max_in_flight: a number of at least 1.
        let mut cfg = Config::default();
        let e = cfg
            .apply_env(|k| (k == "COURIER_NEUTRON_MAX_IN_FLIGHT").then(|| "0".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 1"), "{e}");
        let mut cfg = Config::default();
        cfg.apply_env(|k| (k == "COURIER_NEUTRON_MAX_IN_FLIGHT").then(|| "3".into()))
            .unwrap();
        assert_eq!(cfg.neutron.max_in_flight, Some(3));
        let mut cfg = Config::default();
        cfg.apply_env(|k| (k == "COURIER_NEUTRON_VLAN_CHILDREN").then(|| "trunk".into()))
            .unwrap();
        assert_eq!(
            cfg.neutron.vlan_children,
            crate::backend::neutron::VlanChildren::Trunk
        );
    }

    #[test]
    fn the_docker_engine_comes_from_docker_host_or_the_setting() {
        let mut cfg = Config::default();
        cfg.apply_env(|_| None).unwrap();
        assert_eq!(
            cfg.docker.engine_socket(),
            PathBuf::from("/var/run/docker.sock")
        );
        cfg.apply_env(|k| (k == "DOCKER_HOST").then(|| "unix:///run/d/docker.sock".into()))
            .unwrap();
        assert_eq!(
            cfg.docker.engine_socket(),
            PathBuf::from("/run/d/docker.sock")
        );
        let mut cfg = Config::default();
        cfg.apply_env(|k| (k == "DOCKER_HOST").then(|| "tcp://10.0.0.1:2375".into()))
            .unwrap();
        assert_eq!(
            cfg.docker.engine, DOCKER_ENGINE_DEFAULT,
            "only a unix DOCKER_HOST"
        );
        cfg.apply_env(|k| match k {
            "COURIER_DOCKER_ENGINE" => Some("unix:///x.sock".into()),
            "DOCKER_HOST" => Some("unix:///y.sock".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(cfg.docker.engine_socket(), PathBuf::from("/x.sock"));
        let e = Config::default()
            .apply_env(|k| (k == "COURIER_DOCKER_ENGINE").then(|| "tcp://h:2375".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unix socket"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("sockt = \"/x\"").is_err());
    }
}
