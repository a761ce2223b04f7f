//! OpenStack Neutron (REST, through `courier-openstack`): a Courier network is a Neutron network
//! carrying the tag `courier:network:<NAME>` (so every host on the cloud sees the
//! registration), created by Courier (also tagged `courier:created`, deleted with it) or an
//! existing one registered under a Courier name (only the tag is removed). Ports are Neutron
//! ports with `device_owner = compute:courier`, `binding:host_id` = this host's OVN chassis and
//! the ownership tags `courier:owner`, `courier:host:<HOST>`, `courier:attachment:<ID>`; their
//! id (a UUID) is what the edge sets as `iface-id` (ML2/OVN names the LSP after it).
//! Nested ipvlan/macvlan: the container's address is reserved by a port nobody binds
//! (`device_owner = courier:reserved`, no `binding:host_id`, the same tags) and allowed on the
//! VM's port as an allowed address pair (revision-checked, retried on 412: never a lost pair).
//! ML2/OVN refuses a pair with a MAC of its own on a bound port, so macvlan is refused with
//! an error saying to use ipvlan.
//! Transient failures (5xx, connection errors, timeouts) are retried with backoff and jitter
//! inside a deadline, then answered "try again later" (11).
//!
//! Here: the backend, its connection, what its parts share and `impl Backend`; networks.rs
//! (networks and subnets), ports.rs (ports: create, delete, find; their marks and
//! descriptions), trunks.rs (vlan children: trunks and the per-VM lock), address_pairs.rs,
//! existing_ports.rs, vm_port.rs (finding the VM's port).

mod address_pairs;
mod existing_ports;
mod networks;
mod ports;
mod trunks;
mod vm_port;

pub use ports::owner_description;
pub use trunks::VlanChildren;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use courier_openstack::{self as os, Neutron, Query};

use super::{
    Ability, AddressPairs, Backend, ExistingPorts, KnownAbilities, PortQuery, PortRef, PortRequest,
    VlanChildPorts,
};
use crate::error::{Error, Result};
use crate::model::{LogicalPort, Network, NetworkSpec};

pub const ID: &str = "neutron";
const TAG_OWNER: &str = "courier:owner";
/// On what Courier made (networks, trunks), which goes with it: the tag (a trunk's
/// description too).
pub const TAG_CREATED: &str = "courier:created";
/// On an existing port Courier binds: claimed (not owned, so no sweep ever deletes it).
const TAG_CLAIMED: &str = "courier:claimed";
const DEVICE_OWNER: &str = "compute:courier";
/// A nested container's address reservation (ipvlan/macvlan): a port no host binds, its address
/// allowed on the VM's port as a pair. Not `compute:` (no instance behind it), not `network:`
/// (Neutron's own); `device_id` is the attachment id.
const DEVICE_OWNER_RESERVED: &str = "courier:reserved";
/// How long one logical operation may keep retrying transient failures (then 11). Short: a CNI
/// runtime's plugin timeout is tens of seconds for the whole ADD or DEL.
const RETRY_FOR: Duration = Duration::from_secs(5);

fn tag_host(host: &str) -> String {
    format!("courier:host:{host}")
}
fn tag_attachment(id: &str) -> String {
    format!("courier:attachment:{id}")
}

pub struct NeutronBackend {
    api: Neutron,
    /// `binding:host_id` of our ports: the hostname this host's ovn-controller registered.
    host_id: String,
    /// Subnets by id, so a port's addresses get their prefix, gateway, DNS and routes without
    /// a request per port. Subnets are immutable in what we read (cidr, gateway) or change
    /// rarely (dns, routes): a port created after such a change sees it on the next miss.
    subnets: Mutex<HashMap<String, os::Subnet>>,
    /// Courier networks resolved lately, by name, for `NETWORK_TTL`: an attach does not look
    /// the network up again (two requests) each time. Creating or deleting one here drops the
    /// entry; a change made elsewhere is seen within the TTL (a port on a deleted network then
    /// fails to create, cleanly).
    resolved: Mutex<HashMap<String, (Instant, Network)>>,
    /// How nested vlan child ports are made (`[neutron] vlan_children`).
    vlan_children: VlanChildren,
    /// One lock per VM port, held while its trunk is made, found, joined by a subport, left or
    /// deleted: Neutron deletes a trunk that just got a subport, so "empty, delete it" must not
    /// interleave with another child's "found it, join it" (the child would lose its port's
    /// trunk while its record says Ready).
    trunk_locks: crate::attach::KeyedLocks,
}

/// What a port takes from its network.
#[derive(Debug, Clone, Default)]
struct NetInfo {
    name: String,
    mtu: Option<u32>,
    dns_domain: Option<String>,
}

impl From<&Network> for NetInfo {
    fn from(n: &Network) -> NetInfo {
        NetInfo {
            name: n.name.clone(),
            mtu: n.mtu,
            dns_domain: n.dns_domain.clone(),
        }
    }
}

/// What an OpenStack failure means for Courier.
fn os_err(context: impl Into<String>) -> impl FnOnce(os::Error) -> Error {
    let context = context.into();
    move |e| Error::OpenStack {
        context,
        source: Box::new(e),
    }
}

impl NeutronBackend {
    pub async fn connect(cfg: os::CloudConfig, host_id: &str) -> Result<NeutronBackend> {
        let api = Neutron::connect(cfg)
            .await
            .map_err(os_err("connecting to Neutron"))?;
        Ok(NeutronBackend {
            api,
            host_id: host_id.to_string(),
            subnets: Mutex::new(HashMap::new()),
            resolved: Mutex::new(HashMap::new()),
            vlan_children: VlanChildren::default(),
            trunk_locks: Default::default(),
        })
    }

    /// Makes nested vlan child ports as `mode` says.
    pub fn with_vlan_children(mut self, mode: VlanChildren) -> Self {
        self.vlan_children = mode;
        self
    }

    /// Runs `op`, retrying transient failures until the deadline.
    async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = os::Result<T>>,
    {
        os::retry_transient(Instant::now() + RETRY_FOR, os::Backoff::default(), op)
            .await
            .map_err(os_err(what.to_string()))
    }
}

#[async_trait]
impl Backend for NeutronBackend {
    fn id(&self) -> &str {
        ID
    }

    async fn health(&self) -> Result<()> {
        self.api
            .first_page_networks(&Query::new().limit(1))
            .await
            .map(|_| ())
            .map_err(os_err("listing networks"))
    }

    // The bodies live with their jobs: networks.rs, ports.rs.
    async fn create_network(&self, spec: &NetworkSpec) -> Result<Network> {
        self.network_create(spec).await
    }
    async fn delete_network(&self, name: &str) -> Result<()> {
        self.network_delete(name).await
    }
    async fn network(&self, name: &str) -> Result<Option<Network>> {
        self.network_lookup(name).await
    }
    async fn networks(&self) -> Result<Vec<Network>> {
        self.network_list().await
    }
    async fn create_ports(&self, reqs: &[PortRequest]) -> Result<Vec<LogicalPort>> {
        self.ports_create(reqs).await
    }
    async fn delete_port(&self, port: &PortRef, host: &str) -> Result<bool> {
        self.port_delete(port, host).await
    }
    async fn port(&self, port: &PortRef) -> Result<Option<LogicalPort>> {
        self.port_lookup(port).await
    }
    async fn mark_claimed(&self, host: &str) -> Result<Option<super::MarkClaim>> {
        self.mark_claim(host).await
    }
    async fn find_ports(&self, q: &PortQuery) -> Result<Vec<LogicalPort>> {
        self.ports_find(q).await
    }

    fn address_pairs(&self) -> Option<&dyn AddressPairs> {
        Some(self)
    }

    fn vlan_child_ports(&self) -> Option<&dyn VlanChildPorts> {
        Some(self)
    }

    fn existing_ports(&self) -> Option<&dyn ExistingPorts> {
        Some(self)
    }
}

/// Every optional ability: nested ipvlan (pairs) and vlan (trunk subports), existing ports.
impl KnownAbilities for NeutronBackend {
    const ABILITIES: &'static [Ability] = &[
        Ability::AddressPairs,
        Ability::VlanChildPorts,
        Ability::ExistingPorts,
    ];
}
