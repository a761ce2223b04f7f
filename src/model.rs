//! Plain data: networks, logical ports, attachments. No I/O here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What an operator asks for when creating a network.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkSpec {
    pub name: String,
    /// IPv4 subnet (at least one of `subnet`, `subnet6`).
    #[serde(default)]
    pub subnet: Option<Ipv4Net>,
    /// Default route for attached containers; excluded from dynamic allocation.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// IPv6 subnet; OVN direct needs a /64 (addresses are derived from the MAC, EUI-64).
    #[serde(default)]
    pub subnet6: Option<Ipv6Net>,
    /// IPv6 default route for attached containers.
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
    /// Neutron: register this existing network (id or name) under `name` instead of creating
    /// one (then no subnet is given).
    #[serde(default)]
    pub existing: Option<String>,
    /// Addresses or `A..B` ranges the backend must not hand out.
    #[serde(default)]
    pub exclude_ips: Vec<String>,
}

/// A logical network as the backend reports it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Network {
    pub name: String,
    /// Backend's own id (OVN: the Logical_Switch row uuid).
    pub backend_id: String,
    pub backend: String,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub subnet6: Option<Ipv6Net>,
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
    pub exclude_ips: Vec<String>,
    /// The network's MTU, when the backend says (Neutron `mtu`).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The network's DNS domain, when the backend has one (Neutron `dns_domain`): the
    /// container's DNS domain and search list.
    #[serde(default)]
    pub dns_domain: Option<String>,
    /// Created by Courier (deleted with it) or registered (only the registration is removed).
    #[serde(default)]
    pub created_by_courier: bool,
    /// Number of logical ports on the network (any owner).
    pub ports: usize,
    /// The physical network the logical network reaches (OVN: its localnet port's
    /// `network_name` and `tag`; Neutron: `provider:physical_network`), when it has one: an
    /// SR-IOV VF must be on a NIC of that physical network.
    #[serde(default)]
    pub physical: Option<PhysicalNetwork>,
}

/// A physical network (Neutron's `physnet1`) and the VLAN the logical network has on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhysicalNetwork {
    pub name: String,
    /// The network's VLAN on the wire (None: flat, untagged).
    pub vlan: Option<u16>,
}

/// Where a binding's container addresses go besides its own port: nested macvlan/ipvlan put
/// them on the VM's port (`parent`, its backend id) as address pairs, with this MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairPlan {
    pub parent: String,
    pub mac: String,
}

/// A port on a logical network; its addresses come from the backend (the IPAM).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogicalPort {
    /// The backend's id of the port, and what the edge tells the virtual switch
    /// (`iface-id`): OVN direct — the LSP name; Neutron — the port UUID.
    #[serde(default)]
    pub id: String,
    pub name: String,
    pub network: String,
    pub mac: String,
    /// Addresses with the subnet's prefix length, every family.
    pub ips: Vec<IpNet>,
    /// Default route per family (at most one IPv4 and one IPv6).
    #[serde(default)]
    pub gateways: Vec<IpAddr>,
    /// More routes the network gives (Neutron subnets' `host_routes`).
    #[serde(default)]
    pub routes: Vec<Route>,
    /// DNS servers and search domains for the container (Neutron subnets' `dns_nameservers`).
    #[serde(default)]
    pub dns: Dns,
    /// Interface MTU the network asks for (Neutron `mtu`), else the host's setting.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The backend's own "up" as last read (OVN NB `up`). Readiness is not this: the attach
    /// waits for the edge (`ovn-installed` on the OVS Interface), and NB `up` may lag it.
    pub up: bool,
    /// Courier attachment that owns it, from the backend's ownership marks.
    pub attachment: Option<String>,
    /// A reservation's addresses are (or are about to be) pairs on this VM's port, with this
    /// MAC, as its marks say — reported by backends whose port delete cannot take the pairs
    /// off itself (Neutron; OVN does in the delete's transaction), so a sweep that finds the
    /// port without a record removes those pairs before it deletes the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairs_on: Option<PairPlan>,
    /// The VLAN the backend bound a direct (SR-IOV) port to, for the NIC to tag the VF's
    /// frames with: Neutron's `binding:vif_details.vlan` of a `hw_veb` binding. None where the
    /// backend does not say (OVN direct: the localnet port's tag, read with the network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
}

/// A route the network gives its ports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: IpAddr,
}

/// DNS settings, as the CNI result carries them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
}

/// A request to give a container an interface on a network.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct AttachRequest {
    pub container_id: String,
    pub ifname: String,
    /// Path of the container's network namespace.
    pub netns: String,
    pub network: String,
    #[serde(default)]
    pub ip: Option<IpAddr>,
    #[serde(default)]
    pub mac: Option<String>,
    /// Edge binding kind for this port (default: the daemon's default binding).
    #[serde(default)]
    pub binding: Option<String>,
    /// Neutron security groups (names or ids) for the port; empty: the project's default.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// Bind this existing port (its backend id) instead of creating one; it is kept on detach.
    #[serde(default)]
    pub port: Option<String>,
    /// sriov: the VF to use, by PCI address (CNI `deviceID`, as Kubernetes' SR-IOV device
    /// plugin passes it); None: one from this host's pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Which front door (and CNI runtime) asks; set by the door, never by the caller's JSON.
    #[serde(skip)]
    pub made_by: Option<MadeBy>,
}

/// Which front door made an attachment, and for CNI which runtime: a CNI GC (its runtime's list
/// of valid attachments) touches only what that runtime made, never the CLI's, Docker's or
/// another runtime's on the same network.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "door", rename_all = "lowercase")]
pub enum MadeBy {
    /// A CNI runtime: the plugin's parent process (its `comm`: `podman`, `containerd`, `crio`…).
    Cni {
        runtime: String,
    },
    Cli,
    Docker,
}

/// An existing port an attachment binds (created by the user, e.g. Zun's `--nets port=ID`): what
/// it was before Courier claimed it, restored on detach; the port itself is never deleted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExistingPort {
    pub id: String,
    pub device_owner: String,
    pub device_id: String,
    pub host_id: Option<String>,
    /// The port's revision when it was inspected: the claim is conditional on it, so two
    /// attaches racing for one port cannot both win.
    #[serde(default)]
    pub revision: Option<u64>,
    /// Neutron `binding:vnic_type` ("normal", "direct", …): a direct port is an SR-IOV VF's,
    /// attached with the sriov binding.
    #[serde(default)]
    pub vnic_type: Option<String>,
}

/// Identifies an attachment: one interface of one container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

impl AttachmentKey {
    /// Deterministic id, so every host-side and backend name derived from it can be found again
    /// after a crash, even if the crash came before anything was recorded. The host mark is part
    /// of it: container ids are only unique per host (the CLI uses the netns path), and the
    /// logical port name derived from the id is visible to every host on the backend.
    pub fn id(&self, host: &str) -> String {
        short_hash(&[host, &self.container_id, &self.ifname])
    }

    /// The id records of schema 1 were written with (no host in it): only to find such a record.
    pub fn legacy_id(&self) -> String {
        short_hash(&[&self.container_id, &self.ifname])
    }
}

/// First 48 bits of sha256 over the parts, NUL-separated, in hex.
fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update([0u8]);
        }
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// The record schema this daemon writes. 1: records written before the schema was versioned
/// (no `schema` field, id without the host). 2: `schema`, `generation`, host in the id.
/// 3: `backend`, `edge` (the binding's own state, tagged by kind) instead of `host_ifname`,
/// `port.id`. 4: `docker` (attachments made through the libnetwork front door: their netns is
/// known only at Join) and the `reserved` phase; an older daemon must keep such records aside
/// rather than take their empty netns for a gone container.
/// 5: `pool_slot` (the port is a pool's: an older daemon would delete it at detach, so it
/// must keep such records aside).
/// Older records are migrated when read (`state::decode_record`).
/// A daemon reads every schema up to its own; a newer record is kept aside, never guessed at.
pub const SCHEMA_VERSION: u32 = 5;

fn schema_1() -> u32 {
    1
}

/// Where an attachment is in the attach flow. Written to the store *before* the step it names
/// has side effects, so a restart knows what may exist.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Recorded, nothing created yet (or creation of the logical port under way).
    Intent,
    /// Logical port exists (its name and addresses are recorded); edge being plugged.
    PortCreated,
    /// Edge plugged (veth + vswitch port); waiting for the edge to be ready (`ovn-installed`).
    Plugged,
    /// Complete: the container has its interface and ovn-controller installed its flows.
    Ready,
    /// Detach under way: resources are being removed.
    Detaching,
    /// At rest with its logical port only, held for a front door that plugs the edge later
    /// (Docker: an address RequestAddress leased, not or no longer an endpoint). Not a crash
    /// leftover: it ends by its release, or by reconcile when its lease expires.
    Reserved,
}

/// The durable record of one attachment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attachment {
    /// Record schema (see [`SCHEMA_VERSION`]); absent in schema 1.
    #[serde(default = "schema_1")]
    pub schema: u32,
    pub id: String,
    /// Which attach this record belongs to: unique per store, assigned when the intent is
    /// written. A later attach of the same container and ifname (a restarted container) gets a
    /// new one, so a decision taken on an older snapshot is never applied to it. 0 in schema 1.
    #[serde(default)]
    pub generation: u64,
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub network: String,
    /// The backend that owns the port (`Backend::id`): detach, CHECK and reconcile use this one,
    /// whatever the configuration says later.
    pub backend: String,
    pub phase: Phase,
    /// Name of the logical port (derived from `id`).
    pub port_name: String,
    /// What the edge binding made (its kind names the binding), known before it makes it.
    pub edge: EdgeState,
    #[serde(default)]
    pub port: Option<LogicalPort>,
    /// Identity of the netns at attach time (nsfs inode): a different namespace later found at
    /// the same path means this one is gone.
    #[serde(default)]
    pub netns_inode: Option<u64>,
    #[serde(default)]
    pub requested_ip: Option<IpAddr>,
    #[serde(default)]
    pub requested_mac: Option<String>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// Set when the attachment binds an existing port (recorded, durably, before it is claimed).
    #[serde(default)]
    pub existing_port: Option<ExistingPort>,
    /// Unix seconds.
    pub created_at: u64,
    /// Set for attachments made through Docker's libnetwork front door.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerRef>,
    /// Resources this attachment holds exclusively on this host (`vlan:<parent port>:<tag>`,
    /// later `vf:<pci address>`): written in the intent's own store transaction, which fails if
    /// another record holds one, and released with the record (`state.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<String>,
    /// Address pairs this attachment put on its VM's port (nested macvlan/ipvlan), recorded
    /// before they are added, so rollback removes exactly these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pairs: Vec<PairRecord>,
    /// The pool slot whose port this attachment holds (claimed with the intent: `claims` has
    /// `poolslot:<slot>`); its detach gives the port back to the pool instead of deleting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_slot: Option<String>,
    /// Which door (and CNI runtime) made it; absent in records made before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made_by: Option<MadeBy>,
}

/// One address pair on a parent (VM) port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PairRecord {
    pub parent: String,
    pub pair: crate::backend::AddressPair,
}

/// A locally administered unicast MAC derived from an attachment id (12 hex digits), so a
/// crash before it is recorded still leaves a findable MAC.
pub fn derived_mac(id: &str) -> String {
    let hex: Vec<&str> = (0..5)
        .map(|i| id.get(i * 2..i * 2 + 2).unwrap_or("00"))
        .collect();
    format!("0a:{}", hex.join(":"))
}

/// The prefix of every VF claim.
pub const VF_CLAIM_PREFIX: &str = "vf:";

/// The claim of the SR-IOV VF at PCI address `pci` (a VF serves one container at a time).
pub fn vf_claim(pci: &str) -> String {
    format!("{VF_CLAIM_PREFIX}{pci}")
}

/// The claim of VLAN `tag` under parent port `parent` (tags are unique per VM port).
pub fn vlan_claim(parent: &str, tag: u16) -> String {
    format!("{}{tag}", vlan_claim_prefix(parent))
}

/// The prefix of every VLAN claim under `parent`.
pub fn vlan_claim_prefix(parent: &str) -> String {
    format!("vlan:{parent}:")
}

/// The tag of a VLAN claim (see [`vlan_claim`]).
pub fn vlan_claim_tag(claim: &str) -> Option<u16> {
    claim.rsplit(':').next()?.parse().ok()
}

/// The lowest VLAN tag in 1..=4094 that is in neither set: `held` (claims in this host's
/// store) nor `in_backend` (child ports the backend has under the parent, whoever made them).
/// None when all 4094 are taken.
pub fn lowest_unused_vlan_tag(
    held: &std::collections::BTreeSet<u16>,
    in_backend: &std::collections::BTreeSet<u16>,
) -> Option<u16> {
    (1..=4094u16).find(|t| !held.contains(t) && !in_backend.contains(t))
}

/// What Docker knows an attachment by, and where it is in Docker's sequence: RequestAddress
/// (a lease: phase `Reserved`), CreateEndpoint (`endpoint_id`, phase `Ready`, the interface
/// left in the host netns for Docker to move), Join (`netns` = the sandbox), Leave,
/// DeleteEndpoint (back to `Reserved`), ReleaseAddress (gone).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct DockerRef {
    /// The IPAM pool the address came from (`RequestPool`'s PoolID).
    pub pool_id: String,
    /// Docker's endpoint id, once CreateEndpoint made one of it.
    #[serde(default)]
    pub endpoint_id: Option<String>,
    /// Docker's network id, known from CreateEndpoint on.
    #[serde(default)]
    pub network_id: Option<String>,
    /// Leased by Courier's IPAM (ReleaseAddress ends it); false: the endpoint's address came
    /// from another IPAM, and DeleteEndpoint ends it.
    pub leased: bool,
    /// Unix seconds of the last step. Docker goes from one step to the next at once, so a
    /// record not joined for longer than the lease timeout is a leftover (a crash or an outage
    /// in between): reconcile releases it.
    pub since: u64,
}

/// A Docker network served by the libnetwork front door: which Courier network it is and what
/// `docker network rm` may delete. Kept in the local store (`docker_networks`), by Docker's id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DockerNetwork {
    pub network_id: String,
    /// The Courier network (any backend).
    pub name: String,
    /// Its backend (`Backend::id`), so a call asks only that one.
    #[serde(default)]
    pub backend: String,
    /// CreateNetwork made the Courier network (a new one, or a registration of an existing
    /// backend network): DeleteNetwork deletes it (a registration: only the registration).
    /// False for `-o courier.network=NAME`, which only refers to one.
    pub created: bool,
    /// IPAM pool ids (`RequestPool`'s PoolID) of its IPv4 and IPv6 subnets.
    pub pool4: String,
    #[serde(default)]
    pub pool6: Option<String>,
    /// `-o courier.binding`: its endpoints' edge binding (None: the daemon's default).
    #[serde(default)]
    pub binding: Option<String>,
    /// The capability scope it was made under (`[docker] scope`: "local" or "global"; None:
    /// recorded before this field, the daemon's). Global: other hosts may use its backend
    /// network, so DeleteNetwork removes that only as the last user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Unix seconds of its CreateNetwork (0: recorded before this field). Docker lists a network
    /// only after CreateNetwork answered: reconcile leaves a younger record alone.
    #[serde(default)]
    pub since: u64,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What an edge binding made on this host for one attachment, recorded with the intent (names
/// derive from the attachment id), so that it can be undone after a crash or a restart with the
/// same binding. Later bindings add their variants (VLAN tag and parent, VF, pool slot).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum EdgeState {
    /// A veth pair whose host end `host_ifname` is a port of that name on the OVS bridge.
    /// Pooled (`lower` set): the veth is a pool slot's, pre-plugged and bound (`cv<slot>` on
    /// the bridge, `lower` = `cp<slot>` waiting in the host netns), and the container's
    /// interface is a macvlan in passthru mode on `lower`, born in its netns.
    VethOvs {
        host_ifname: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lower: Option<String>,
    },
    /// A macvlan (bridge mode) of the VM's interface `master`, with its own MAC `mac`, in the
    /// container netns; its address is a pair on the VM's port (`Attachment::pairs`).
    #[serde(rename = "macvlan")]
    MacVlan { master: String, mac: String },
    /// An ipvlan (L2) of the VM's interface `master`, sharing its MAC, in the container netns;
    /// its address is an IP-only pair (the VM's MAC) on the VM's port.
    #[serde(rename = "ipvlan")]
    IpVlan { master: String },
    /// An 802.1Q sub-interface (VLAN `tag`) of the VM's trunk interface `master`, with the child
    /// port's MAC, in the container netns; the port is a child of the VM's port `parent` with
    /// that tag (the tag is chosen before the intent and claimed with it).
    Vlan {
        master: String,
        parent: String,
        tag: u16,
    },
    /// A veth whose host end `host_ifname` is an access port (VLAN `tag`) of the VM's own OVS
    /// bridge (nested vlan-ovs); the port is a child of the VM's port `parent` with that tag.
    VlanOvs {
        host_ifname: String,
        parent: String,
        tag: u16,
    },
    /// An SR-IOV Virtual Function moved into the container netns: VF `vf` of the physical
    /// function `pf` (its host netdev), known by its PCI address `pci` (its identity: netdev
    /// names change), on physical network `physnet`. Chosen from the host's VF pool before the
    /// intent and claimed with it (`vf:<pci>`); empty until then.
    #[serde(rename = "sriov")]
    Sriov {
        physnet: String,
        pf: String,
        vf: u32,
        pci: String,
        /// PCI vendor and device id, "8086:10ca" (Neutron's `pci_vendor_info`).
        vendor_info: String,
        /// The VF's netdev name on the host when it was taken: it gets it back on release.
        host_ifname: String,
        /// The network's VLAN on the physical network, set on the VF (None: untagged).
        #[serde(default)]
        vlan: Option<u16>,
        /// A VF asked for by its PCI address (CNI `deviceID`, from a device plugin), not
        /// chosen from the pool.
        #[serde(default)]
        requested: bool,
    },
}

impl EdgeState {
    /// The binding kind that made it (`EdgeBinding::kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            EdgeState::VethOvs { .. } => "veth-ovs",
            EdgeState::MacVlan { .. } => "macvlan",
            EdgeState::IpVlan { .. } => "ipvlan",
            EdgeState::Vlan { .. } => "vlan",
            EdgeState::VlanOvs { .. } => "vlan-ovs",
            EdgeState::Sriov { .. } => "sriov",
        }
    }

    /// The host-side interface, if the edge has one.
    pub fn host_ifname(&self) -> Option<&str> {
        match self {
            EdgeState::VethOvs { host_ifname, .. } | EdgeState::VlanOvs { host_ifname, .. } => {
                Some(host_ifname)
            }
            EdgeState::MacVlan { .. }
            | EdgeState::IpVlan { .. }
            | EdgeState::Vlan { .. }
            | EdgeState::Sriov { .. } => None,
        }
    }

    /// A VLAN child's parent port and tag (nested vlan), to be chosen before the intent.
    /// A nested vlan edge's VM port and tag.
    pub fn vlan(&self) -> Option<(&str, u16)> {
        match self {
            EdgeState::Vlan { parent, tag, .. } | EdgeState::VlanOvs { parent, tag, .. } => {
                Some((parent, *tag))
            }
            _ => None,
        }
    }

    /// The edge's device was asked for by address (CNI `deviceID`), not picked from a pool.
    pub fn device_requested(&self) -> bool {
        matches!(
            self,
            EdgeState::Sriov {
                requested: true,
                ..
            }
        )
    }

    pub fn vlan_mut(&mut self) -> Option<(&mut String, &mut u16)> {
        match self {
            EdgeState::Vlan { parent, tag, .. } | EdgeState::VlanOvs { parent, tag, .. } => {
                Some((parent, tag))
            }
            _ => None,
        }
    }
}

impl Attachment {
    /// A new intent for `req` under attachment id `id` (see [`AttachmentKey::id`]), with a port
    /// of `backend` and the edge its binding will make (generation 0 until the store assigns
    /// one).
    pub fn new(req: &AttachRequest, id: String, backend: &str, edge: EdgeState) -> Self {
        Attachment {
            schema: SCHEMA_VERSION,
            generation: 0,
            port_name: port_name(&id),
            edge,
            backend: backend.to_string(),
            id,
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
            netns: req.netns.clone(),
            network: req.network.clone(),
            phase: Phase::Intent,
            port: None,
            netns_inode: None,
            requested_ip: req.ip,
            requested_mac: req.mac.clone(),
            security_groups: req.security_groups.clone(),
            existing_port: None,
            created_at: unix_now(),
            docker: None,
            claims: Vec::new(),
            pairs: Vec::new(),
            pool_slot: None,
            made_by: req.made_by.clone(),
        }
    }

    /// The container's netns is not known yet (Docker before Join): the edge leaves the
    /// interface in the host netns, named by `EdgeBinding::handoff_ifname`, for the runtime to
    /// move, and no netns probe applies.
    pub fn hands_off(&self) -> bool {
        self.netns.is_empty() && self.docker.is_some()
    }

    pub fn key(&self) -> AttachmentKey {
        AttachmentKey {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

/// Prefix of every host-side interface Courier creates; the leak sweep looks for it.
pub const HOST_IFNAME_PREFIX: &str = "cv";
/// Prefix of the container end of a veth while it is still in the host netns.
pub const PEER_IFNAME_PREFIX: &str = "cp";
/// Prefix of every logical port Courier creates.
pub const PORT_NAME_PREFIX: &str = "courier-";

pub fn host_ifname(id: &str) -> String {
    format!("{HOST_IFNAME_PREFIX}{id}")
}

pub fn peer_ifname(id: &str) -> String {
    format!("{PEER_IFNAME_PREFIX}{id}")
}

pub fn port_name(id: &str) -> String {
    format!("{PORT_NAME_PREFIX}{id}")
}

/// The alias Courier sets on every host-side interface it creates: its ownership mark in the
/// kernel, so the leak sweep deletes only its own host's links.
pub fn link_alias(host: &str, id: &str) -> String {
    format!("courier:{host}:{id}")
}

/// Recovers the attachment id from a host-side name made by [`host_ifname`] or [`peer_ifname`].
pub fn id_from_ifname(name: &str) -> Option<&str> {
    name.strip_prefix(HOST_IFNAME_PREFIX)
        .or_else(|| name.strip_prefix(PEER_IFNAME_PREFIX))
        .filter(|rest| {
            rest.len() == 12 && rest.bytes().all(|b| b.is_ascii_hexdigit())
                || crate::pool::is_slot_id(rest)
        })
}

/// Linux interface names: 1..=15 bytes, no '/', no whitespace, not "." or "..".
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "interface name {name:?} must be 1 to 15 characters long"
        ));
    }
    if name == "." || name == ".." || name.contains('/') || name.chars().any(char::is_whitespace) {
        return Err(format!(
            "interface name {name:?} may not contain '/' or whitespace, nor be '.' or '..'"
        ));
    }
    Ok(())
}

/// Network names become backend names and CLI arguments: keep them simple.
pub fn validate_network_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "network name {name:?} must be 1 to 64 characters of letters, digits, '-', '_' or '.'"
        ))
    }
}

/// A unicast MAC address; the message says what a good one looks like.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let mac = courier_netlink::parse_mac(s).map_err(|e| e.to_string())?;
    if mac[0] & 1 == 1 {
        return Err(format!(
            "MAC address {s:?} is a multicast address; use a unicast one"
        ));
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_names_fit_linux() {
        let k = AttachmentKey {
            container_id: "abc".into(),
            ifname: "eth0".into(),
        };
        let id = k.id("h1");
        assert_eq!(id, k.id("h1"));
        assert_eq!(id.len(), 12);
        let other = AttachmentKey {
            container_id: "abc".into(),
            ifname: "eth1".into(),
        };
        assert_ne!(id, other.id("h1"));
        // The same container id on two hosts (e.g. the CLI's /var/run/netns/c1) never collides.
        assert_ne!(id, k.id("h2"));
        assert_ne!(port_name(&id), port_name(&k.id("h2")));
        // Schema-1 ids: sha256(container, 0, ifname), as the first slice wrote them.
        assert_eq!(k.legacy_id(), "d887cd286879"); // sha256("abc\0eth0")[..6]
        assert_ne!(k.legacy_id(), id);
        let h = host_ifname(&id);
        assert!(h.len() <= 15, "{h}");
        assert_eq!(id_from_ifname(&h), Some(id.as_str()));
        assert_eq!(id_from_ifname(&peer_ifname(&id)), Some(id.as_str()));
        assert_eq!(id_from_ifname("cvnothex00000"), None);
        assert_eq!(id_from_ifname("eth0"), None);
        assert!(peer_ifname(&id).len() <= 15);
        assert!(port_name(&id).starts_with(PORT_NAME_PREFIX));
    }

    #[test]
    fn ifname_and_network_validation() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("").is_err());
        assert!(validate_ifname("a234567890123456").is_err());
        assert!(validate_ifname("a/b").is_err());
        assert!(validate_network_name("net-1_a.b").is_ok());
        assert!(validate_network_name("bad name").is_err());
        assert!(validate_network_name("").is_err());
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("0a:58:0a:09:00:05").unwrap(),
            [0x0a, 0x58, 0x0a, 0x09, 0, 5]
        );
        assert!(parse_mac("0a:58:0a:09:00").is_err());
        assert!(parse_mac("zz:58:0a:09:00:05").is_err());
        assert!(parse_mac("01:00:5e:00:00:01").is_err());
    }
}
