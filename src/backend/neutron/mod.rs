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

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use courier_openstack::{self as os, FixedIp, Neutron, PortCreate, Query, SubnetCreate};
use ipnet::IpNet;

use super::{
    Ability, AddressPair, AddressPairs, Backend, ExistingPorts, KnownAbilities, NestedParents,
    OwnerMark, ParentQuery, PortQuery, PortRef, PortRequest, PortRole, VlanChildPorts,
};
use crate::error::{Error, Result};
use crate::model::{
    validate_network_name, Dns, ExistingPort, LogicalPort, Network, NetworkSpec, Route,
};

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

fn tag_network(name: &str) -> String {
    format!("courier:network:{name}")
}
fn tag_host(host: &str) -> String {
    format!("courier:host:{host}")
}
/// The `description` of every port Courier creates for `host`: set by the POST itself, so a
/// port whose tags never came (a PUT that failed, a daemon killed between the POST and the PUT,
/// a POST whose answer was lost) is still found as this host's by rollback and the sweep. A port
/// Courier only claims keeps its own description, so it is never taken for one it made.
pub fn owner_description(host: &str) -> String {
    tag_host(host)
}
/// The `description` of a network Courier creates (`network create --backend neutron`): in the
/// POST (Neutron 29 takes no tags there), so a network whose tags never came is still found.
fn network_description(name: &str) -> String {
    tag_network(name)
}
/// A port Courier made for `host`: by the mark its create set, or (ports made before the mark
/// was in the POST) by its tags.
fn made_for_host(p: &os::Port, host: &str) -> bool {
    p.description.as_deref() == Some(owner_description(host).as_str())
        || (p.tags.iter().any(|t| t == TAG_OWNER) && p.tags.contains(&tag_host(host)))
}
fn tag_attachment(id: &str) -> String {
    format!("courier:attachment:{id}")
}
/// On a reservation: the VM's port its addresses are pairs on, and the pairs' MAC. Neutron
/// cannot change the VM's port and delete the reservation in one step, so a sweep that finds a
/// reservation without its record reads these to take the pairs off first.
const TAG_PAIR_ON: &str = "courier:pair-on:";
const TAG_PAIR_MAC: &str = "courier:pair-mac:";

/// A trunk Courier made for a VM's vlan children (deleted with its last one): its tag, or its
/// description, which is in the trunk's POST and so there even if a crash came before the tag.
fn made_by_courier(trunk: &os::Trunk) -> bool {
    trunk.tags.iter().any(|t| t == TAG_CREATED) || trunk.description.as_deref() == Some(TAG_CREATED)
}

/// The pair target a reservation's tags name (`TAG_PAIR_ON`, `TAG_PAIR_MAC`).
fn pairs_on_from_tags(tags: &[String]) -> Option<crate::model::PairPlan> {
    let find = |prefix: &str| tags.iter().find_map(|t| t.strip_prefix(prefix));
    Some(crate::model::PairPlan {
        parent: find(TAG_PAIR_ON)?.to_string(),
        mac: find(TAG_PAIR_MAC)?.to_string(),
    })
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

/// How a nested vlan child port is made in Neutron (`[neutron] vlan_children`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VlanChildren {
    /// A trunk subport when Neutron has the `trunk` extension, else `binding:profile`.
    #[default]
    Auto,
    /// A trunk subport (`segmentation_type vlan`) on the VM port's trunk.
    Trunk,
    /// `binding:profile {parent_name, tag}` (ML2/OVN's container-in-VM form; admin only under
    /// Neutron's default policy).
    BindingProfile,
}

impl std::str::FromStr for VlanChildren {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(VlanChildren::Auto),
            "trunk" => Ok(VlanChildren::Trunk),
            "binding-profile" => Ok(VlanChildren::BindingProfile),
            other => Err(Error::InvalidInput(format!(
                "[neutron] vlan_children {other:?} (COURIER_NEUTRON_VLAN_CHILDREN) must be auto, trunk or binding-profile"
            ))),
        }
    }
}

const NETWORK_TTL: Duration = Duration::from_secs(10);

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

    /// The Neutron network registered as `name`, if any.
    async fn find_network(&self, name: &str) -> Result<Option<os::Network>> {
        let tag = [tag_network(name)];
        let q = Query::new().tags(&tag);
        let mut nets = self
            .retry(&format!("looking up network {name}"), || {
                self.api.list_networks(&q)
            })
            .await?;
        if nets.is_empty() {
            // One Courier created whose tags never came (the PUT after the POST failed, or the
            // daemon died in between): its POST set the description.
            let q = Query::new().description(network_description(name));
            nets = self
                .retry(&format!("looking up network {name}"), || {
                    self.api.list_networks(&q)
                })
                .await?;
        }
        match nets.len() {
            0 => Ok(None),
            1 => Ok(nets.pop()),
            n => Err(Error::BackendState(format!(
                "{n} Neutron networks carry the tag {}: remove it from all but one",
                tag[0]
            ))),
        }
    }

    async fn subnets_of(&self, net: &os::Network) -> Result<Vec<os::Subnet>> {
        let q = Query::new().network_id(&net.id);
        let subs = self
            .retry(&format!("listing subnets of network {}", net.id), || {
                self.api.list_subnets(&q)
            })
            .await?;
        let mut cache = self.subnets.lock().unwrap_or_else(|p| p.into_inner());
        for s in &subs {
            cache.insert(s.id.clone(), s.clone());
        }
        Ok(subs)
    }

    async fn subnet(&self, id: &str) -> Result<os::Subnet> {
        if let Some(s) = self
            .subnets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            return Ok(s.clone());
        }
        let s = self
            .retry(&format!("reading subnet {id}"), || self.api.get_subnet(id))
            .await?;
        self.subnets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), s.clone());
        Ok(s)
    }

    /// Neutron network `net` (with its subnets `subs`) as the Courier network `name`.
    pub fn to_network(name: &str, net: &os::Network, subs: &[os::Subnet]) -> Network {
        let v4 = subs.iter().find(|s| s.ip_version == 4);
        let v6 = subs.iter().find(|s| s.ip_version == 6);
        Network {
            name: name.to_string(),
            backend_id: net.id.clone(),
            backend: ID.into(),
            subnet: v4.and_then(|s| s.cidr.parse().ok()),
            gateway: v4.and_then(|s| s.gateway_ip.as_deref()?.parse().ok()),
            subnet6: v6.and_then(|s| s.cidr.parse().ok()),
            gateway6: v6.and_then(|s| s.gateway_ip.as_deref()?.parse().ok()),
            exclude_ips: vec![],
            mtu: net.mtu,
            dns_domain: net
                .dns_domain
                .as_deref()
                .map(|d| d.trim_end_matches('.').to_string())
                .filter(|d| !d.is_empty()),
            created_by_courier: net.tags.iter().any(|t| t == TAG_CREATED),
            ports: 0,
        }
    }

    /// A Neutron port as Courier sees it: addresses with their subnets' prefixes, a gateway
    /// per family, the subnets' DNS servers and host routes, the network's MTU.
    async fn to_port(&self, p: &os::Port, net: &NetInfo) -> Result<LogicalPort> {
        let (network, mtu) = (net.name.as_str(), net.mtu);
        let mut ips = Vec::new();
        let mut gateways: Vec<IpAddr> = Vec::new();
        let mut routes = Vec::new();
        let mut dns = Dns::default();
        for f in &p.fixed_ips {
            let Some(addr) = f
                .ip_address
                .as_deref()
                .and_then(|a| a.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let sub = match &f.subnet_id {
                Some(id) => Some(self.subnet(id).await?),
                None => None,
            };
            let prefix = sub
                .as_ref()
                .and_then(|s| s.cidr.parse::<IpNet>().ok())
                .map(|n| n.prefix_len())
                .unwrap_or(if addr.is_ipv4() { 32 } else { 128 });
            ips.push(IpNet::new(addr, prefix).map_err(|e| {
                Error::BackendState(format!("port {}: address {addr}/{prefix}: {e}", p.id))
            })?);
            let Some(sub) = sub else { continue };
            if let Some(gw) = sub
                .gateway_ip
                .as_deref()
                .and_then(|g| g.parse::<IpAddr>().ok())
            {
                if !gateways.iter().any(|g| g.is_ipv4() == gw.is_ipv4()) {
                    gateways.push(gw);
                }
            }
            for r in &sub.host_routes {
                if let (Ok(dst), Ok(gw)) = (r.destination.parse(), r.nexthop.parse()) {
                    routes.push(Route { dst, gw });
                }
            }
            for ns in &sub.dns_nameservers {
                if !dns.nameservers.contains(ns) {
                    dns.nameservers.push(ns.clone());
                }
            }
        }
        if let Some(domain) = &net.dns_domain {
            dns.domain = Some(domain.clone());
            dns.search = vec![domain.clone()];
        }
        // The tag, else (its tags never came) the derived name of a port Courier's POST marked.
        let made_by_courier = p
            .description
            .as_deref()
            .is_some_and(|d| d.starts_with("courier:host:"));
        let attachment = p
            .tags
            .iter()
            .find_map(|t| t.strip_prefix("courier:attachment:"))
            .or_else(|| {
                made_by_courier
                    .then(|| p.name.strip_prefix(crate::model::PORT_NAME_PREFIX))
                    .flatten()
            })
            .map(String::from);
        Ok(LogicalPort {
            id: p.id.clone(),
            name: p.name.clone(),
            network: network.to_string(),
            mac: p.mac_address.clone(),
            ips,
            gateways,
            routes,
            dns,
            mtu,
            up: p.status.as_deref() == Some("ACTIVE"),
            attachment,
            pairs_on: pairs_on_from_tags(&p.tags),
        })
    }

    /// Our port by id, or by derived name; only if `host` owns it.
    async fn owned_port(&self, port: &PortRef, host: &str) -> Result<Vec<os::Port>> {
        let owned = |p: &os::Port| made_for_host(p, host);
        match &port.id {
            Some(id) => match self.api.get_port(id).await {
                Ok(p) => Ok(vec![p].into_iter().filter(owned).collect()),
                Err(e) if e.is_not_found() => Ok(vec![]),
                Err(e) => Err(os_err(format!("reading port {id}"))(e)),
            },
            None => {
                // By name alone (every port of that name: an earlier attach's orphan too), then
                // only those made for this host.
                let q = Query::new().name(&port.name);
                let found = self
                    .retry(&format!("looking up port {}", port.name), || {
                        self.api.list_ports(&q)
                    })
                    .await?;
                Ok(found.into_iter().filter(owned).collect())
            }
        }
    }

    fn forget(&self, name: &str) {
        self.resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// What ports of Neutron network `id` take from it, from the resolved networks if there.
    async fn network_by_id(&self, id: &str) -> Result<NetInfo> {
        let known = self
            .resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|(_, n)| n.backend_id == id)
            .map(|(_, n)| NetInfo::from(n));
        if let Some(k) = known {
            return Ok(k);
        }
        let net = self
            .api
            .get_network(id)
            .await
            .map_err(os_err(format!("reading network {id}")))?;
        let name = Self::network_name_of(&net.tags).unwrap_or(net.name.clone());
        Ok(NetInfo::from(&Self::to_network(&name, &net, &[])))
    }

    /// Security group ids for names or ids; an unknown or ambiguous one is an error naming it.
    /// The ids of security groups given by id or name: one filtered request per group (by id
    /// when it looks like one, else by name), never the project's whole list, so the cost of
    /// an attach does not grow with the number of groups.
    async fn security_group_ids(&self, wanted: &[String]) -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(wanted.len());
        for w in wanted {
            let looks_like_id = w.len() == 36 && w.matches('-').count() == 4;
            let mut found = Vec::new();
            if looks_like_id {
                let q = Query::new()
                    .id(w.as_str())
                    .eq("fields", "id")
                    .eq("fields", "name");
                found = self
                    .retry(&format!("looking up security group {w}"), || {
                        self.api.list_security_groups(&q)
                    })
                    .await?;
            }
            if found.is_empty() {
                let q = Query::new()
                    .name(w.as_str())
                    .eq("fields", "id")
                    .eq("fields", "name");
                found = self
                    .retry(&format!("looking up security group {w}"), || {
                        self.api.list_security_groups(&q)
                    })
                    .await?;
            }
            match found.as_slice() {
                [g] => out.push(g.id.clone()),
                [] => {
                    return Err(Error::InvalidInput(format!(
                        "Neutron has no security group {w:?} visible to this project: check `openstack security group list`"
                    )))
                }
                many => {
                    return Err(Error::InvalidInput(format!(
                        "{} security groups are named {w:?}: give its id",
                        many.len()
                    )))
                }
            }
        }
        Ok(out)
    }

    /// A port Courier made or claimed: never the VM's port.
    fn is_courier_port(p: &os::Port) -> bool {
        p.tags.iter().any(|t| t == TAG_OWNER || t == TAG_CLAIMED)
            || p.device_owner == DEVICE_OWNER_RESERVED
    }

    /// Could be the port of the VM Courier runs in: not Courier's, not Neutron's own
    /// (`network:*`: router, DHCP…), not a trunk subport (it shares the VM's MAC).
    fn may_be_vm_port(p: &os::Port) -> bool {
        !Self::is_courier_port(p)
            && !p.device_owner.starts_with("network:")
            && p.device_owner != "trunk:subport"
    }

    fn describe_ports(ports: &[os::Port]) -> String {
        ports
            .iter()
            .map(|p| {
                let ips: Vec<&str> = p
                    .fixed_ips
                    .iter()
                    .filter_map(|f| f.ip_address.as_deref())
                    .collect();
                format!(
                    "{} (network {}, {} {}, device_owner {:?})",
                    p.id,
                    p.network_id,
                    p.mac_address,
                    ips.join(" "),
                    p.device_owner
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The host a port Courier binds to this machine (device_owner `compute:courier`, not a
    /// child) is bound to instead, if another: another machine's port under the same host mark.
    /// Reservations and vlan children are bound to no host or to the VM's, so they cannot say.
    fn bound_elsewhere<'p>(&self, p: &'p os::Port) -> Option<&'p str> {
        let bound = p.binding_host_id.as_deref().filter(|h| !h.is_empty())?;
        let child = p
            .binding_profile
            .as_ref()
            .is_some_and(|b| b.get("parent_name").is_some());
        (p.device_owner == DEVICE_OWNER && !child && bound != self.host_id).then_some(bound)
    }

    /// Ports matching `q` (transient failures retried).
    async fn ports_where(&self, what: &str, q: Query) -> Result<Vec<os::Port>> {
        self.retry(what, || self.api.list_ports(&q)).await
    }

    /// Every port Courier made for `host`: by the mark its create set (`owner_description`),
    /// and by tags (ports made before that mark was in the POST).
    async fn made_for(&self, host: &str) -> Result<Vec<os::Port>> {
        let by_mark = Query::new().description(owner_description(host));
        let by_tags = Query::new().tags(&[TAG_OWNER.to_string(), tag_host(host)]);
        let mut ports = self.ports_where("listing ports made here", by_mark).await?;
        for p in self
            .ports_where("listing ports tagged here", by_tags)
            .await?
        {
            if !ports.iter().any(|q| q.id == p.id) {
                ports.push(p);
            }
        }
        Ok(ports)
    }

    /// A nested vlan child of the VM's port `parent`, told apart by `tag`: with the trunk
    /// extension a trunk subport (`segmentation_type vlan`) on the parent's trunk, which is
    /// created (tagged `courier:created`) if the parent has none; without it the
    /// `binding:profile {parent_name, tag}` form (ML2/OVN sets the LSP's parent_name and tag);
    /// `[neutron] vlan_children` can choose either.
    async fn create_child(
        &self,
        r: &PortRequest,
        mut body: PortCreate,
        parent: &str,
        tag: u16,
    ) -> Result<os::Port> {
        let trunks = match self.vlan_children {
            VlanChildren::Trunk => true,
            VlanChildren::BindingProfile => false,
            VlanChildren::Auto => self
                .api
                .has_extension("trunk")
                .await
                .map_err(os_err("reading Neutron's extensions"))?,
        };
        // Neutron sets device_owner trunk:subport itself; a subport is bound with its parent.
        body.device_owner = None;
        body.device_id = None;
        body.binding_host_id = None;
        if !trunks {
            body.binding_profile = Some(serde_json::json!({"parent_name": parent, "tag": tag}));
            return self
                .api
                .create_port(&body)
                .await
                .map_err(|e| port_create_error(&r.network.name, e));
        }
        // The port first, outside the VM's lock (children of one VM are made side by side);
        // then, under it, the trunk found or made and joined.
        let port = self
            .api
            .create_port(&body)
            .await
            .map_err(|e| port_create_error(&r.network.name, e))?;
        let _vm = self.trunk_locks.lock(parent).await;
        let (mut trunk, mut made_trunk) = match self.trunk_for(parent).await {
            Ok(t) => t,
            Err(e) => {
                if let Err(de) = self.api.delete_port(&port.id).await {
                    tracing::error!(port = %port.id, error = %de, "removing a child port whose VM has no trunk failed");
                }
                return Err(e);
            }
        };
        let undo_trunk = |made: bool, id: String| async move {
            if made {
                if let Err(e) = self.api.delete_trunk(&id).await {
                    tracing::warn!(trunk = %id, error = %e, "removing the trunk made for a failed child port failed");
                }
            }
        };
        let mut again = 0;
        let joined = loop {
            let e = match self
                .api
                .add_subports(&trunk.id, &[os::SubPort::vlan(port.id.clone(), tag.into())])
                .await
            {
                Ok(_) => break Ok(()),
                Err(e) => e,
            };
            // The trunk went meanwhile (another container's last child left it, or a rollback
            // tidied it away while empty): find or make it again.
            if e.is_not_found() && again < 2 {
                again += 1;
                tracing::debug!(trunk = %trunk.id, parent, "the trunk went before its subport joined; again");
                match self.trunk_for(parent).await {
                    Ok((t, made)) => (trunk, made_trunk) = (t, made),
                    Err(e) => break Err(e),
                }
                continue;
            }
            undo_trunk(made_trunk, trunk.id.clone()).await;
            break Err(match e {
                os::Error::Conflict { .. } | os::Error::BadRequest { .. } => Error::InvalidInput(format!(
                    "trunk {} of the VM's port {parent} refuses VLAN {tag} for port {} ({e}): another subport may have it",
                    trunk.id, r.name
                )),
                e => os_err(format!("adding port {} to trunk {}", port.id, trunk.id))(e),
            });
        };
        if let Err(e) = joined {
            if let Err(de) = self.api.delete_port(&port.id).await {
                tracing::error!(port = %port.id, error = %de, "removing a child port that did not join the trunk failed");
            }
            return Err(e);
        }
        // The answer's device_owner and binding are what they were before the trunk took it.
        self.api
            .get_port(&port.id)
            .await
            .map_err(os_err(format!("reading port {}", port.id)))
    }

    /// The trunk of the VM's port `parent`, made (and marked as Courier's) if it has none;
    /// true when made here.
    async fn trunk_for(&self, parent: &str) -> Result<(os::Trunk, bool)> {
        let tq = Query::new().port_id(parent);
        let found = self
            .retry(&format!("looking up the trunk of port {parent}"), || {
                self.api.list_trunks(&tq)
            })
            .await?;
        if let Some(t) = found.into_iter().next() {
            return Ok((t, false));
        }
        let t = self
            .api
            .create_trunk(&os::TrunkCreate {
                port_id: parent.to_string(),
                name: Some(format!("courier-{parent}")),
                // In the POST itself: a crash before the tags go on leaves a trunk still
                // known as Courier's (`made_by_courier`).
                description: Some(TAG_CREATED.to_string()),
                tags: vec![TAG_CREATED.to_string()],
                ..Default::default()
            })
            .await
            .map_err(|e| {
                Error::InvalidInput(format!(
                    "the VM's port {parent} cannot be a trunk parent ({e}): give the VM a port that can (`openstack network trunk create --parent-port …`), or use the ipvlan binding"
                ))
            })?;
        crate::hooks::point("after-trunk").await;
        Ok((t, true))
    }

    /// The trunk whose subport `p` is, if any: by the parent ML2/OVN names in its
    /// binding:profile, else every trunk visible.
    async fn trunk_of(&self, p: &os::Port) -> Result<Option<os::Trunk>> {
        let parent = p
            .binding_profile
            .as_ref()
            .and_then(|b| b.get("parent_name"))
            .and_then(|v| v.as_str())
            .map(String::from);
        let q = match &parent {
            Some(parent) => Query::new().port_id(parent.as_str()),
            None => Query::new(),
        };
        let trunks = self
            .retry("listing trunks", || self.api.list_trunks(&q))
            .await?;
        Ok(trunks
            .into_iter()
            .find(|t| t.sub_ports.iter().any(|s| s.port_id == p.id)))
    }

    /// Before port `p` is deleted: out of its trunk (Neutron refuses to delete a subport), and
    /// a trunk Courier made goes with its last subport. (A trunk made by someone else stays.)
    async fn leave_trunk(&self, p: &os::Port) -> Result<()> {
        if p.device_owner != "trunk:subport" {
            return Ok(());
        }
        let Some(trunk) = self.trunk_of(p).await? else {
            return Ok(());
        };
        let _vm = self.trunk_locks.lock(&trunk.port_id).await;
        let t = match self.api.remove_subports(&trunk.id, &[p.id.as_str()]).await {
            Ok(t) => t,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => {
                return Err(os_err(format!(
                    "removing port {} from trunk {}",
                    p.id, trunk.id
                ))(e))
            }
        };
        if t.sub_ports.is_empty() && made_by_courier(&trunk) {
            match self.api.delete_trunk(&trunk.id).await {
                Ok(_) => {
                    tracing::info!(trunk = %trunk.id, "deleted the trunk Courier made (its last subport left)")
                }
                // A subport added meanwhile keeps it.
                Err(e) => tracing::debug!(trunk = %trunk.id, error = %e, "trunk kept"),
            }
        }
        Ok(())
    }

    fn pair_of(pair: &AddressPair) -> os::AllowedAddressPair {
        os::AllowedAddressPair {
            ip_address: pair.ip.to_string(),
            mac_address: Some(pair.mac.to_ascii_lowercase()),
        }
    }

    fn network_name_of(tags: &[String]) -> Option<String> {
        tags.iter()
            .find_map(|t| t.strip_prefix("courier:network:"))
            .map(String::from)
    }
}

/// A Neutron refusal of a port request, in Courier's terms.
fn port_create_error(network: &str, e: os::Error) -> Error {
    match e.fault_type() {
        Some("IpAddressAlreadyAllocated") | Some("MacAddressInUse") => Error::AddressInUse {
            address: e
                .fault()
                .map(|f| f.message.clone())
                .unwrap_or_default(),
            port: "a Neutron port".into(),
            network: network.into(),
        },
        _ if matches!(e, os::Error::Forbidden { .. }) => Error::InvalidInput(format!(
            "Neutron forbids these credentials to create the port on {network:?} ({e}): binding:host_id needs an admin role under Neutron's default policy; use credentials with it"
        )),
        Some("OverQuota") => Error::InvalidInput(format!(
            "Neutron refuses another port on {network:?}: the project's port quota is used up ({e}); raise it or delete unused ports"
        )),
        _ => os_err(format!("creating a port on {network}"))(e),
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

    async fn create_network(&self, spec: &NetworkSpec) -> Result<Network> {
        validate_network_name(&spec.name).map_err(Error::InvalidInput)?;
        self.forget(&spec.name);
        if self.find_network(&spec.name).await?.is_some() {
            return Err(Error::NetworkExists(spec.name.clone()));
        }
        if let Some(existing) = &spec.existing {
            if spec.subnet.is_some() || spec.subnet6.is_some() {
                return Err(Error::InvalidInput(
                    "give either an existing Neutron network or subnets to create, not both".into(),
                ));
            }
            // By id, else by name (which must be unique).
            let net = match self.api.get_network(existing).await {
                Ok(n) => n,
                Err(e) if e.is_not_found() => {
                    let q = Query::new().name(existing);
                    let mut by_name = self
                        .retry(&format!("looking up network {existing}"), || {
                            self.api.list_networks(&q)
                        })
                        .await?;
                    match by_name.len() {
                        1 => by_name.remove(0),
                        0 => {
                            return Err(Error::InvalidInput(format!(
                                "Neutron has no network {existing:?} (by id or name): check `openstack network list`"
                            )))
                        }
                        n => {
                            return Err(Error::InvalidInput(format!(
                                "{n} Neutron networks are named {existing:?}: give its id"
                            )))
                        }
                    }
                }
                Err(e) => return Err(os_err(format!("reading network {existing}"))(e)),
            };
            if let Some(other) = Self::network_name_of(&net.tags) {
                return Err(Error::InvalidInput(format!(
                    "Neutron network {} is already registered as Courier network {other:?}",
                    net.id
                )));
            }
            self.api
                .add_tag("networks", &net.id, &tag_network(&spec.name))
                .await
                .map_err(os_err(format!("tagging network {}", net.id)))?;
            let subs = self.subnets_of(&net).await?;
            tracing::info!(network = %spec.name, neutron = %net.id, "registered Neutron network");
            return Ok(Self::to_network(&spec.name, &net, &subs));
        }
        if spec.subnet.is_none() && spec.subnet6.is_none() {
            return Err(Error::InvalidInput(
                "a Neutron network needs --subnet (IPv4 and/or IPv6), or --neutron-network to register an existing one".into(),
            ));
        }
        let create = os::NetworkCreate {
            name: Some(spec.name.clone()),
            description: Some(network_description(&spec.name)),
            tags: vec![tag_network(&spec.name), TAG_CREATED.into()],
            ..Default::default()
        };
        let mut net = self
            .api
            .create_network_untagged(&create)
            .await
            .map_err(os_err(format!("creating network {}", spec.name)))?;
        crate::hooks::point("after-network-post").await;
        self.api
            .tag_created_network(&mut net, &create)
            .await
            .map_err(os_err(format!(
                "tagging the new network {} (Courier tags the networks it makes: check Neutron's policy for update_network:tags)",
                spec.name
            )))?;
        let mut subs = Vec::new();
        let made = async {
            if let Some(v4) = spec.subnet {
                subs.push(
                    self.api
                        .create_subnet(&SubnetCreate {
                            network_id: net.id.clone(),
                            cidr: v4.to_string(),
                            ip_version: 4,
                            name: Some(format!("{}-v4", spec.name)),
                            gateway_ip: spec.gateway.map(|g| Some(g.to_string())),
                            ..Default::default()
                        })
                        .await?,
                );
            }
            if let Some(v6) = spec.subnet6 {
                subs.push(
                    self.api
                        .create_subnet(&SubnetCreate {
                            network_id: net.id.clone(),
                            cidr: v6.to_string(),
                            ip_version: 6,
                            name: Some(format!("{}-v6", spec.name)),
                            gateway_ip: spec.gateway6.map(|g| Some(g.to_string())),
                            ipv6_address_mode: Some("dhcpv6-stateful".into()),
                            ..Default::default()
                        })
                        .await?,
                );
            }
            Ok::<(), os::Error>(())
        };
        if let Err(e) = made.await {
            // Nothing half-made stays: the network goes with its subnets.
            if let Err(de) = self.api.delete_network(&net.id).await {
                tracing::error!(network = %net.id, error = %de, "removing a half-created network failed");
            }
            return Err(os_err(format!("creating subnets of {}", spec.name))(e));
        }
        let net = self
            .api
            .get_network(&net.id)
            .await
            .map_err(os_err(format!("reading network {}", net.id)))?;
        tracing::info!(network = %spec.name, neutron = %net.id, "created Neutron network");
        Ok(Self::to_network(&spec.name, &net, &subs))
    }

    async fn delete_network(&self, name: &str) -> Result<()> {
        self.forget(name);
        let Some(net) = self.find_network(name).await? else {
            return Err(Error::UnknownNetwork(name.to_string()));
        };
        let created = net.tags.iter().any(|t| t == TAG_CREATED)
            || net.description.as_deref() == Some(network_description(name).as_str());
        if created {
            // Neutron refuses while a port of anyone's is on it, and deletes its own
            // (`network:distributed` metadata, `network:dhcp`) with the network: no count first.
            match self.api.delete_network(&net.id).await {
                Ok(_) => {}
                Err(os::Error::Conflict { ref fault, .. })
                    if fault.kind.as_deref() == Some("NetworkInUse") =>
                {
                    let q = Query::new().network_id(&net.id);
                    let ports = self
                        .ports_where(&format!("listing ports of {name}"), q)
                        .await?;
                    return Err(Error::NetworkInUse {
                        name: name.into(),
                        ports: ports
                            .iter()
                            .filter(|p| !p.device_owner.starts_with("network:"))
                            .count()
                            .max(1),
                    });
                }
                Err(e) => return Err(os_err(format!("deleting network {}", net.id))(e)),
            }
        } else {
            // Registered, not created: only the registration goes, and only once no port
            // Courier made or bound (for any host) is left on it: their attachments name it.
            let q = Query::new().network_id(&net.id);
            let ours = self
                .ports_where(&format!("listing ports of {name}"), q)
                .await?
                .iter()
                .filter(|p| {
                    Self::is_courier_port(p)
                        || p.device_owner == DEVICE_OWNER
                        || p.description
                            .as_deref()
                            .is_some_and(|d| d.starts_with("courier:host:"))
                })
                .count();
            if ours > 0 {
                return Err(Error::NetworkInUse {
                    name: name.into(),
                    ports: ours,
                });
            }
            self.api
                .remove_tag("networks", &net.id, &tag_network(name))
                .await
                .map_err(os_err(format!("untagging network {}", net.id)))?;
        }
        Ok(())
    }

    async fn network(&self, name: &str) -> Result<Option<Network>> {
        if let Some((at, n)) = self
            .resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            if at.elapsed() < NETWORK_TTL {
                return Ok(Some(n.clone()));
            }
        }
        let Some(net) = self.find_network(name).await? else {
            self.forget(name);
            return Ok(None);
        };
        let subs = self.subnets_of(&net).await?;
        let n = Self::to_network(name, &net, &subs);
        self.resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), (Instant::now(), n.clone()));
        Ok(Some(n))
    }

    async fn networks(&self) -> Result<Vec<Network>> {
        let q = Query::new();
        let nets = self
            .retry("listing networks", || self.api.list_networks(&q))
            .await?;
        let mut out = Vec::new();
        for n in nets {
            if let Some(name) = Self::network_name_of(&n.tags) {
                let subs = self.subnets_of(&n).await?;
                out.push(Self::to_network(&name, &n, &subs));
            }
        }
        Ok(out)
    }

    async fn create_ports(&self, reqs: &[PortRequest]) -> Result<Vec<LogicalPort>> {
        let mut bodies = Vec::with_capacity(reqs.len());
        for r in reqs {
            let security_groups = if r.security_groups.is_empty() {
                None // the project's default group
            } else {
                Some(self.security_group_ids(&r.security_groups).await?)
            };
            let net = &r.network;
            let mut fixed_ips = Vec::new();
            for ip in &r.ips {
                fixed_ips.push(FixedIp {
                    subnet_id: None,
                    ip_address: Some(ip.to_string()),
                });
            }
            let (device_owner, binding_host_id) = match &r.role {
                PortRole::Bound => (DEVICE_OWNER, Some(self.host_id.clone())),
                // Nobody binds it: it holds the address (Neutron's IPAM) and ML2/OVN makes its
                // LSP a `virtual` port of the VM's once the address is a pair there.
                PortRole::Reservation => (DEVICE_OWNER_RESERVED, None),
                // Made one by one below (a trunk subport, or the binding:profile form).
                PortRole::Child { .. } => (DEVICE_OWNER, None),
            };
            let mut tags = vec![
                TAG_OWNER.into(),
                tag_host(&r.owner.host),
                tag_attachment(&r.owner.attachment),
            ];
            if let (PortRole::Reservation, Some(plan)) = (&r.role, &r.pairs_on) {
                tags.push(format!("{TAG_PAIR_ON}{}", plan.parent));
                tags.push(format!("{TAG_PAIR_MAC}{}", plan.mac));
            }
            bodies.push(PortCreate {
                network_id: net.backend_id.clone(),
                name: Some(r.name.clone()),
                description: Some(owner_description(&r.owner.host)),
                device_owner: Some(device_owner.into()),
                device_id: Some(r.owner.attachment.clone()),
                mac_address: r.mac.clone(),
                fixed_ips,
                binding_host_id,
                security_groups,
                tags,
                ..Default::default()
            });
        }
        if reqs
            .iter()
            .any(|r| matches!(r.role, PortRole::Child { .. }))
        {
            let mut out = Vec::with_capacity(reqs.len());
            for (r, body) in reqs.iter().zip(bodies) {
                let made = match &r.role {
                    PortRole::Child { parent, tag } => {
                        self.create_child(r, body, parent, *tag).await
                    }
                    _ => self
                        .api
                        .create_port(&body)
                        .await
                        .map_err(|e| port_create_error(&r.network.name, e)),
                };
                match made {
                    Ok(p) => out.push(self.to_port(&p, &NetInfo::from(&r.network)).await?),
                    Err(e) => {
                        // All or nothing: the ones made so far go.
                        for p in &out {
                            let pr = PortRef {
                                id: Some(p.id.clone()),
                                name: p.name.clone(),
                            };
                            if let Err(de) = self.delete_port(&pr, &r.owner.host).await {
                                tracing::error!(port = %p.id, error = %de, "removing a port of a failed bulk create failed");
                            }
                        }
                        return Err(e);
                    }
                }
            }
            return Ok(out);
        }
        // Not retried: a POST that failed in transit may have created the ports; they carry our
        // tags and derived names, so rollback (by name) and the sweep find them.
        let network = reqs
            .first()
            .map(|r| r.network.name.clone())
            .unwrap_or_default();
        let mut made = self
            .api
            .create_ports_untagged(&bodies)
            .await
            .map_err(|e| port_create_error(&network, e))?;
        crate::hooks::point("after-port-post").await;
        if let Err(e) = self.api.tag_created_ports(&mut made, &bodies).await {
            // All or nothing: the ports go (by id: the POST's answer is the proof).
            let host = reqs
                .first()
                .map(|r| r.owner.host.clone())
                .unwrap_or_default();
            for p in &made {
                let pr = PortRef {
                    id: Some(p.id.clone()),
                    name: p.name.clone(),
                };
                if let Err(de) = self.delete_port(&pr, &host).await {
                    tracing::error!(port = %p.id, error = %de, "removing a port whose tags Neutron refused failed");
                }
            }
            return Err(os_err(format!(
                "tagging the new ports on network {network} (Courier tags every port it makes: check Neutron's policy for update_port:tags)"
            ))(e));
        }
        let mut out = Vec::with_capacity(made.len());
        for (p, r) in made.iter().zip(reqs) {
            out.push(self.to_port(p, &NetInfo::from(&r.network)).await?);
        }
        Ok(out)
    }

    async fn delete_port(&self, port: &PortRef, host: &str) -> Result<bool> {
        if let Some(id) = &port.id {
            // The id came back from our own create (ids are never reused): one DELETE, no
            // GET first. A trunk subport is refused (409): it leaves its trunk first, below.
            let direct =
                os::retry_transient(Instant::now() + RETRY_FOR, os::Backoff::default(), || {
                    self.api.delete_port(id)
                })
                .await;
            match direct {
                Err(os::Error::Conflict { ref fault, .. })
                    if fault.kind.as_deref() == Some("PortInUseAsSubPort") => {}
                other => return other.map_err(os_err(format!("deleting port {id}"))),
            }
        }
        let mut deleted = false;
        for p in self.owned_port(port, host).await? {
            self.leave_trunk(&p).await?;
            deleted |= self
                .retry(&format!("deleting port {}", p.id), || {
                    self.api.delete_port(&p.id)
                })
                .await?;
        }
        Ok(deleted)
    }

    async fn port(&self, port: &PortRef) -> Result<Option<LogicalPort>> {
        let found = match &port.id {
            Some(id) => match self.api.get_port(id).await {
                Ok(p) => Some(p),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(os_err(format!("reading port {id}"))(e)),
            },
            None => {
                let q = Query::new().name(&port.name);
                self.retry(&format!("looking up port {}", port.name), || {
                    self.api.list_ports(&q)
                })
                .await?
                .into_iter()
                .next()
            }
        };
        match found {
            None => Ok(None),
            Some(p) => {
                let net = self.network_by_id(&p.network_id).await?;
                Ok(Some(self.to_port(&p, &net).await?))
            }
        }
    }

    async fn mark_claimed(&self, host: &str) -> Result<Option<super::MarkClaim>> {
        let mut theirs: Vec<(String, String)> = Vec::new();
        for p in self.made_for(host).await? {
            if let Some(h) = self.bound_elsewhere(&p) {
                theirs.push((p.id.clone(), h.to_string()));
            }
        }
        theirs.sort();
        let Some((port, bound)) = theirs.first().cloned() else {
            return Ok(None);
        };
        Ok(Some(super::MarkClaim {
            port: port.clone(),
            more: theirs.len() - 1,
            what: "binding:host_id",
            theirs: bound.clone(),
            ours: Some(self.host_id.clone()),
            same_machine: format!(
                "its [neutron] host_id changed; set [neutron] host_id (COURIER_NEUTRON_HOST_ID) back to {bound:?}, or delete those ports (openstack port delete {port} ...)"
            ),
        }))
    }

    async fn find_ports(&self, q: &PortQuery) -> Result<Vec<LogicalPort>> {
        let ports = match q {
            PortQuery::OwnedBy { host } => self.made_for(host).await?,
            PortQuery::ClaimedBy { host } => {
                let q = Query::new().tags(&[TAG_CLAIMED.to_string(), tag_host(host)]);
                self.ports_where("listing ports claimed here", q).await?
            }
            PortQuery::Holding { network, ip } => {
                let q = Query::new().network_id(network).fixed_ip(ip.to_string());
                self.ports_where("listing ports holding an address", q)
                    .await?
            }
            PortQuery::WithMac { network, mac } => {
                let q = Query::new().network_id(network).mac_address(mac.clone());
                self.ports_where("listing ports with a MAC", q).await?
            }
        };
        let mut out = Vec::with_capacity(ports.len());
        for p in &ports {
            // Another machine's under the same mark: never swept, never given back from here.
            if matches!(q, PortQuery::OwnedBy { .. } | PortQuery::ClaimedBy { .. })
                && self.bound_elsewhere(p).is_some()
            {
                continue;
            }
            out.push(self.to_port(p, &NetInfo::default()).await?);
        }
        Ok(out)
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

#[async_trait]
impl NestedParents for NeutronBackend {
    async fn parent_port(&self, q: &ParentQuery) -> Result<String> {
        if let Some(id) = &q.id {
            let p = match self.api.get_port(id).await {
                Ok(p) => p,
                Err(e) if e.is_not_found() => {
                    return Err(Error::InvalidInput(format!(
                        "Neutron has no port {id:?} ([nested] parent_port, the VM's port): set it to the id `openstack port list --server <this VM>` shows"
                    )))
                }
                Err(e) => return Err(os_err(format!("reading the VM's port {id}"))(e)),
            };
            if Self::is_courier_port(&p) {
                return Err(Error::InvalidInput(format!(
                    "port {id} ([nested] parent_port) is a port Courier made for a container, not the VM's: set [nested] parent_port to the VM's own port"
                )));
            }
            return Ok(p.id);
        }
        let mut by_ip: Vec<os::Port> = Vec::new();
        for ip in &q.ips {
            for p in self
                .ports_where(
                    &format!("looking up the VM's port by {ip}"),
                    Query::new().fixed_ip(ip.to_string()),
                )
                .await?
            {
                if Self::may_be_vm_port(&p) && !by_ip.iter().any(|b| b.id == p.id) {
                    by_ip.push(p);
                }
            }
        }
        // Overlapping networks may repeat an address: the MAC tells them apart.
        if by_ip.len() > 1 {
            if let Some(mac) = &q.mac {
                let same_mac: Vec<os::Port> = by_ip
                    .iter()
                    .filter(|p| p.mac_address.eq_ignore_ascii_case(mac))
                    .cloned()
                    .collect();
                if !same_mac.is_empty() {
                    by_ip = same_mac;
                }
            }
        }
        let found = if !by_ip.is_empty() {
            by_ip
        } else if let Some(mac) = &q.mac {
            self.ports_where(
                &format!("looking up the VM's port by {mac}"),
                Query::new().mac_address(mac.to_ascii_lowercase()),
            )
            .await?
            .into_iter()
            .filter(Self::may_be_vm_port)
            .collect()
        } else {
            vec![]
        };
        let ips: Vec<String> = q.ips.iter().map(ToString::to_string).collect();
        let wanted = format!(
            "addresses [{}], MAC {}",
            ips.join(", "),
            q.mac.as_deref().unwrap_or("-")
        );
        match found.as_slice() {
            [one] => Ok(one.id.clone()),
            [] => Err(Error::InvalidInput(format!(
                "no Neutron port visible to these credentials has the VM interface's {wanted}: set [nested] parent_port to the VM's port id"
            ))),
            many => Err(Error::InvalidInput(format!(
                "{} Neutron ports match the VM interface's {wanted}: {}; set [nested] parent_port to the VM's one",
                many.len(),
                Self::describe_ports(many)
            ))),
        }
    }
}

#[async_trait]
impl AddressPairs for NeutronBackend {
    async fn add_address_pair(&self, parent: &str, pair: &AddressPair) -> Result<()> {
        let want = Self::pair_of(pair);
        let retry = os::RevisionRetry::default();
        let r = os::retry_transient(Instant::now() + RETRY_FOR, os::Backoff::default(), || {
            self.api.add_allowed_address_pair(parent, &want, retry)
        })
        .await;
        match r {
            Ok(m) => {
                tracing::debug!(parent, ip = %pair.ip, changed = m.changed, conflicts = m.conflicts, "address pair on the VM's port");
                Ok(())
            }
            Err(e) => Err(match e.fault_type() {
                Some("InvalidVirtualMACAddress") => Error::InvalidInput(format!(
                    "Neutron refuses the address pair {} {} on the VM's port {parent}: ML2/OVN allows no MAC of a container's own on a bound port (InvalidVirtualMACAddress), so the macvlan binding cannot work through Neutron; use the ipvlan binding (the VM's MAC, an IP-only pair) or vlan (`--binding ipvlan`, CNI \"binding\": \"ipvlan\")",
                    pair.mac, pair.ip
                )),
                Some("AllowedAddressPairExhausted") => Error::InvalidInput(format!(
                    "the VM's port {parent} has as many allowed address pairs as Neutron permits ({}): raise max_allowed_address_pair in neutron.conf (10 by default), or detach containers of this VM",
                    e.fault().map(|f| f.message.as_str()).unwrap_or_default()
                )),
                _ if e.is_not_found() => Error::InvalidInput(format!(
                    "the VM's port {parent} is gone from Neutron: check [nested] parent_port"
                )),
                _ if matches!(e, os::Error::Forbidden { .. }) => Error::InvalidInput(format!(
                    "these credentials may not change the allowed address pairs of the VM's port {parent} ({e}): use the VM's project's credentials"
                )),
                _ => os_err(format!(
                    "adding the address pair {} {} to the VM's port {parent}",
                    pair.mac, pair.ip
                ))(e),
            }),
        }
    }

    async fn remove_address_pair(&self, parent: &str, pair: &AddressPair) -> Result<()> {
        let want = Self::pair_of(pair);
        let retry = os::RevisionRetry::default();
        os::retry_transient(Instant::now() + RETRY_FOR, os::Backoff::default(), || {
            self.api.remove_allowed_address_pair(parent, &want, retry)
        })
        .await
        .map(|_| ())
        .map_err(os_err(format!(
            "removing the address pair {} {} from the VM's port {parent}",
            pair.mac, pair.ip
        )))
    }
}

#[async_trait]
impl VlanChildPorts for NeutronBackend {
    async fn child_tags(&self, parent: &str) -> Result<std::collections::BTreeSet<u16>> {
        let mut tags = std::collections::BTreeSet::new();
        let tq = Query::new().port_id(parent);
        let trunks = self
            .retry(&format!("looking up the trunk of port {parent}"), || {
                self.api.list_trunks(&tq)
            })
            .await?;
        for t in &trunks {
            for s in &t.sub_ports {
                if let Ok(tag) = u16::try_from(s.segmentation_id) {
                    tags.insert(tag);
                }
            }
        }
        // The binding:profile form (no trunk): ports on the parent's network naming it.
        let vm = match self.api.get_port(parent).await {
            Ok(p) => p,
            Err(e) if e.is_not_found() => return Ok(tags),
            Err(e) => return Err(os_err(format!("reading the VM's port {parent}"))(e)),
        };
        let ports = self
            .ports_where(
                &format!("listing ports of network {}", vm.network_id),
                Query::new().network_id(vm.network_id.as_str()),
            )
            .await?;
        for p in ports {
            let Some(b) = p.binding_profile.as_ref() else {
                continue;
            };
            if b.get("parent_name").and_then(|v| v.as_str()) == Some(parent) {
                if let Some(tag) = b.get("tag").and_then(|v| v.as_u64()) {
                    if let Ok(tag) = u16::try_from(tag) {
                        tags.insert(tag);
                    }
                }
            }
        }
        Ok(tags)
    }

    async fn tidy_children_of(&self, parent: &str) -> Result<()> {
        // Under the VM's lock: no child of this daemon joins between the look and the delete.
        let _vm = self.trunk_locks.lock(parent).await;
        let tq = Query::new().port_id(parent);
        let trunks = self
            .retry(&format!("looking up the trunk of port {parent}"), || {
                self.api.list_trunks(&tq)
            })
            .await?;
        for t in trunks
            .iter()
            .filter(|t| t.sub_ports.is_empty() && made_by_courier(t))
        {
            match self.api.delete_trunk(&t.id).await {
                Ok(true) => {
                    tracing::info!(trunk = %t.id, parent, "deleted the empty trunk Courier made (its child port never came)")
                }
                Ok(false) => {}
                Err(e) => return Err(os_err(format!("deleting the empty trunk {}", t.id))(e)),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ExistingPorts for NeutronBackend {
    async fn inspect_port(&self, id: &str, network: &Network) -> Result<ExistingPort> {
        let p = match self.api.get_port(id).await {
            Ok(p) => p,
            Err(e) if e.is_not_found() => {
                return Err(Error::InvalidInput(format!(
                    "Neutron has no port {id:?}: check `openstack port show {id}`"
                )))
            }
            Err(e) => return Err(os_err(format!("reading port {id}"))(e)),
        };
        if p.network_id != network.backend_id {
            return Err(Error::InvalidInput(format!(
                "port {id} is on Neutron network {}, not on {:?} ({}): attach it to its own network",
                p.network_id, network.name, network.backend_id
            )));
        }
        if p.tags.iter().any(|t| t == TAG_OWNER || t == TAG_CLAIMED) {
            return Err(Error::InvalidInput(format!(
                "port {id} is already used by Courier ({}): detach that first",
                p.tags.join(", ")
            )));
        }
        let host = p.binding_host_id.clone().filter(|h| !h.is_empty());
        if !p.device_owner.is_empty() || !p.device_id.is_empty() || host.is_some() {
            return Err(Error::InvalidInput(format!(
                "port {id} is bound elsewhere (device_owner {:?}, device_id {:?}, host {:?}): give a port no server or container uses",
                p.device_owner, p.device_id, host.unwrap_or_default()
            )));
        }
        Ok(ExistingPort {
            id: p.id,
            device_owner: p.device_owner,
            device_id: p.device_id,
            host_id: p.binding_host_id,
            revision: p.revision_number,
        })
    }

    async fn claim_port(
        &self,
        port: &ExistingPort,
        owner: &OwnerMark,
        network: &Network,
    ) -> Result<LogicalPort> {
        let update = os::PortUpdate {
            device_owner: Some(DEVICE_OWNER.into()),
            device_id: Some(owner.attachment.clone()),
            binding_host_id: Some(self.host_id.clone()),
            ..Default::default()
        };
        let p = match self.api.update_port(&port.id, &update, port.revision).await {
            Ok(p) => p,
            Err(os::Error::RevisionConflict { .. }) => {
                return Err(Error::InvalidInput(format!(
                    "port {} changed while it was being bound (another attach or user took it): try again, or use another port",
                    port.id
                )))
            }
            Err(e) => return Err(os_err(format!("claiming port {}", port.id))(e)),
        };
        for tag in [
            TAG_CLAIMED.to_string(),
            tag_host(&owner.host),
            tag_attachment(&owner.attachment),
        ] {
            self.api
                .add_tag("ports", &port.id, &tag)
                .await
                .map_err(os_err(format!("tagging port {}", port.id)))?;
        }
        let mut lp = self.to_port(&p, &NetInfo::from(network)).await?;
        lp.attachment = Some(owner.attachment.clone());
        Ok(lp)
    }

    async fn release_port(&self, port: &ExistingPort, owner: &OwnerMark) -> Result<bool> {
        let p = match self.api.get_port(&port.id).await {
            Ok(p) => p,
            Err(e) if e.is_not_found() => return Ok(false),
            Err(e) => return Err(os_err(format!("reading port {}", port.id))(e)),
        };
        // Only our own claim: the claim's PUT set device_id to the attachment id, atomically
        // (the tags follow it). Another attach's claim — one that won a race for this port —
        // or a claim never made is left alone.
        if p.device_owner != DEVICE_OWNER || p.device_id != owner.attachment {
            return Ok(false);
        }
        let update = os::PortUpdate {
            device_owner: Some(port.device_owner.clone()),
            device_id: Some(port.device_id.clone()),
            binding_host_id: Some(port.host_id.clone().unwrap_or_default()),
            ..Default::default()
        };
        self.api
            .update_port(&port.id, &update, None)
            .await
            .map_err(os_err(format!("giving port {} back", port.id)))?;
        for tag in p.tags.iter().filter(|t| {
            t.as_str() == TAG_CLAIMED
                || t.starts_with("courier:host:")
                || t.starts_with("courier:attachment:")
        }) {
            self.api
                .remove_tag("ports", &port.id, tag)
                .await
                .map_err(os_err(format!("untagging port {}", port.id)))?;
        }
        Ok(true)
    }
}
