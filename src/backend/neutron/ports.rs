//! Ports Courier makes (bound ports, nested reservations, vlan children through trunks.rs),
//! deletes and finds, and how it marks them as its own: the `description` its POST sets
//! (`owner_description`), then the tags — `courier:owner`, `courier:host:<HOST>`,
//! `courier:attachment:<ID>`, a reservation's pair target — and `device_id` = the attachment.

use std::net::IpAddr;
use std::time::Instant;

use courier_openstack::{self as os, FixedIp, PortCreate, Query};
use ipnet::IpNet;

use super::{
    os_err, tag_attachment, tag_host, NetInfo, NeutronBackend, DEVICE_OWNER, DEVICE_OWNER_RESERVED,
    RETRY_FOR, TAG_CLAIMED, TAG_OWNER,
};
use crate::backend::{Backend, MarkClaim, PortQuery, PortRef, PortRequest, PortRole};
use crate::error::{Error, Result};
use crate::model::{Dns, LogicalPort, Route};

/// The `description` of every port Courier creates for `host`: set by the POST itself, so a
/// port whose tags never came (a PUT that failed, a daemon killed between the POST and the PUT,
/// a POST whose answer was lost) is still found as this host's by rollback and the sweep. A port
/// Courier only claims keeps its own description, so it is never taken for one it made.
pub fn owner_description(host: &str) -> String {
    tag_host(host)
}
/// A port Courier made for `host`: by the mark its create set, or (ports made before the mark
/// was in the POST) by its tags.
fn made_for_host(p: &os::Port, host: &str) -> bool {
    p.description.as_deref() == Some(owner_description(host).as_str())
        || (p.tags.iter().any(|t| t == TAG_OWNER) && p.tags.contains(&tag_host(host)))
}
/// On a reservation: the VM's port its addresses are pairs on, and the pairs' MAC. Neutron
/// cannot change the VM's port and delete the reservation in one step, so a sweep that finds a
/// reservation without its record reads these to take the pairs off first.
const TAG_PAIR_ON: &str = "courier:pair-on:";
const TAG_PAIR_MAC: &str = "courier:pair-mac:";

/// The pair target a reservation's tags name (`TAG_PAIR_ON`, `TAG_PAIR_MAC`).
fn pairs_on_from_tags(tags: &[String]) -> Option<crate::model::PairPlan> {
    let find = |prefix: &str| tags.iter().find_map(|t| t.strip_prefix(prefix));
    Some(crate::model::PairPlan {
        parent: find(TAG_PAIR_ON)?.to_string(),
        mac: find(TAG_PAIR_MAC)?.to_string(),
    })
}

/// A Neutron refusal of a port request, in Courier's terms.
pub(super) fn port_create_error(network: &str, e: os::Error) -> Error {
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

impl NeutronBackend {
    /// A Neutron port as Courier sees it: addresses with their subnets' prefixes, a gateway
    /// per family, the subnets' DNS servers and host routes, the network's MTU.
    pub(super) async fn to_port(&self, p: &os::Port, net: &NetInfo) -> Result<LogicalPort> {
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
            vlan: bound_vlan(p),
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
    pub(super) fn is_courier_port(p: &os::Port) -> bool {
        p.tags.iter().any(|t| t == TAG_OWNER || t == TAG_CLAIMED)
            || p.device_owner == DEVICE_OWNER_RESERVED
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
    pub(super) async fn ports_where(&self, what: &str, q: Query) -> Result<Vec<os::Port>> {
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

    /// `Backend::create_ports`.
    pub(super) async fn ports_create(&self, reqs: &[PortRequest]) -> Result<Vec<LogicalPort>> {
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
                // An SR-IOV VF on this host: Neutron's sriovnicswitch driver binds it.
                PortRole::Direct(_) => (DEVICE_OWNER, Some(self.host_id.clone())),
            };
            let (binding_vnic_type, binding_profile) = match &r.role {
                // What Nova and Zun send for a VF (binding:profile).
                PortRole::Direct(p) => (Some("direct".to_string()), Some(p.binding_profile())),
                _ => (None, None),
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
                binding_vnic_type,
                binding_profile,
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
            self.remove_new_ports(&made, reqs, "whose tags Neutron refused")
                .await;
            return Err(os_err(format!(
                "tagging the new ports on network {network} (Courier tags every port it makes: check Neutron's policy for update_port:tags)"
            ))(e));
        }
        // A direct port is bound in the POST: one Neutron could not bind (no SR-IOV agent of
        // this host serves its physical network) is refused, and the ports go.
        if let Some(e) = made
            .iter()
            .find_map(|p| refuse_failed_direct_binding(p, &self.host_id).err())
        {
            self.remove_new_ports(&made, reqs, "Neutron could not bind")
                .await;
            return Err(e);
        }
        let mut out = Vec::with_capacity(made.len());
        for (p, r) in made.iter().zip(reqs) {
            out.push(self.to_port(p, &NetInfo::from(&r.network)).await?);
        }
        Ok(out)
    }

    /// Removes ports a create just made (by id: the POST's answer is the proof) when the
    /// create fails as a whole; a port that cannot be removed is logged for the sweep.
    async fn remove_new_ports(&self, made: &[os::Port], reqs: &[PortRequest], why: &str) {
        let host = reqs
            .first()
            .map(|r| r.owner.host.clone())
            .unwrap_or_default();
        for p in made {
            let pr = PortRef {
                id: Some(p.id.clone()),
                name: p.name.clone(),
            };
            if let Err(de) = self.delete_port(&pr, &host).await {
                tracing::error!(port = %p.id, error = %de, "removing a new port {why} failed");
            }
        }
    }

    /// `Backend::delete_port`.
    pub(super) async fn port_delete(&self, port: &PortRef, host: &str) -> Result<bool> {
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

    /// `Backend::port`.
    pub(super) async fn port_lookup(&self, port: &PortRef) -> Result<Option<LogicalPort>> {
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

    /// `Backend::mark_claimed`: ports made for `host` bound to another machine.
    pub(super) async fn mark_claim(&self, host: &str) -> Result<Option<MarkClaim>> {
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
        Ok(Some(MarkClaim {
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

    /// `Backend::find_ports`.
    pub(super) async fn ports_find(&self, q: &PortQuery) -> Result<Vec<LogicalPort>> {
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
}

/// The VLAN a `hw_veb` binding (Neutron's sriovnicswitch) gives a direct port, for the PF to
/// tag the VF's frames with: its `binding:vif_details.vlan`, a string ("100") or a number.
/// None for another binding, a flat network ("0") or when Neutron does not say.
pub(super) fn bound_vlan(p: &os::Port) -> Option<u16> {
    if p.binding_vif_type.as_deref() != Some("hw_veb") {
        return None;
    }
    let vlan = match p.binding_vif_details.as_ref()?.get("vlan")? {
        serde_json::Value::String(s) => s.trim().parse::<u16>().ok()?,
        serde_json::Value::Number(n) => u16::try_from(n.as_u64()?).ok()?,
        _ => return None,
    };
    (1..4095).contains(&vlan).then_some(vlan)
}

/// A direct (SR-IOV) port Neutron could not bind to `host`, as an error that says what Neutron
/// needs for it. Any other port, or a direct port that is bound, is fine.
pub(super) fn refuse_failed_direct_binding(p: &os::Port, host: &str) -> Result<()> {
    if p.binding_vnic_type.as_deref() != Some("direct")
        || p.binding_vif_type.as_deref() != Some("binding_failed")
    {
        return Ok(());
    }
    Err(Error::NeutronRefused(format!(
        "it could not bind direct port {} to host {host:?} (binding:vif_type binding_failed): Neutron binds SR-IOV VFs with the sriovnicswitch mechanism driver and an SR-IOV NIC agent alive on host {host:?} whose physical_device_mappings name the network's physical network, on a flat or vlan network; check `openstack network agent list --host {host}` and the network's provider attributes",
        p.id
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(vif_type: &str, details: serde_json::Value) -> os::Port {
        os::Port {
            id: "p1".into(),
            binding_vnic_type: Some("direct".into()),
            binding_vif_type: Some(vif_type.into()),
            binding_vif_details: Some(details),
            ..Default::default()
        }
    }

    #[test]
    fn a_hw_veb_binding_gives_its_vlan() {
        assert_eq!(
            bound_vlan(&direct("hw_veb", serde_json::json!({"vlan": "150"}))),
            Some(150)
        );
        assert_eq!(
            bound_vlan(&direct("hw_veb", serde_json::json!({"vlan": 151}))),
            Some(151)
        );
        // A flat network: untagged.
        assert_eq!(
            bound_vlan(&direct("hw_veb", serde_json::json!({"vlan": "0"}))),
            None
        );
        assert_eq!(bound_vlan(&direct("hw_veb", serde_json::json!({}))), None);
        assert_eq!(
            bound_vlan(&direct("hw_veb", serde_json::json!({"vlan": "x"}))),
            None
        );
        // Only sriovnicswitch's binding says a VLAN for the VF.
        assert_eq!(
            bound_vlan(&direct("ovs", serde_json::json!({"vlan": "150"}))),
            None
        );
    }

    #[test]
    fn a_direct_port_neutron_could_not_bind_is_refused_with_what_it_needs() {
        let failed = direct("binding_failed", serde_json::json!({}));
        let e = refuse_failed_direct_binding(&failed, "h1")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("p1") && e.contains("sriovnicswitch") && e.contains("\"h1\""),
            "{e}"
        );
        assert!(
            refuse_failed_direct_binding(&direct("hw_veb", serde_json::json!({})), "h1").is_ok()
        );
        let normal = os::Port {
            binding_vif_type: Some("binding_failed".into()),
            ..Default::default()
        };
        assert!(refuse_failed_direct_binding(&normal, "h1").is_ok());
    }
}
