//! veth → OVS: a veth pair whose host end is a port on the integration bridge with
//! `external_ids:iface-id = <logical port>`, and whose peer becomes the container's interface.
//!
//! Its nested form, `vlan-ovs` (OVN's container-in-VM document): inside a VM that runs OVS, the
//! host end is an *access port* (`tag` = the child port's VLAN) of the VM's own bridge, whose
//! trunk uplink is the VM's NIC on the VM's logical port; the container's port is a child of
//! that port with the tag (chosen and claimed by the attach flow, like the vlan binding's).

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use courier_netlink::{self as nl, Netlink, SubKind, SubLinkSpec, VethSpec};

use super::vm_port::VmPort;
use super::{EdgeBinding, EdgeOrphan, EdgeResource};
use crate::backend::{Backend, PortRole};
use crate::error::{Error, Result};
use crate::hooks;
use crate::model::{
    self, host_ifname, link_alias, parse_mac, peer_ifname, AttachRequest, Attachment, EdgeState,
    LogicalPort,
};
use crate::vswitch::{PortBinding, Vswitch};

pub struct VethOvs {
    host: Arc<Netlink>,
    vswitch: Arc<Vswitch>,
    mtu: Option<u32>,
    /// This host's ownership mark (config `host`), set as the host link's alias.
    host_mark: String,
    /// ovn-controller's unixctl socket ("" = from its pidfile).
    controller_ctl: String,
    /// vlan-ovs: the VM Courier runs in (its port is the parent of the containers' ports).
    nested: Option<VmPort>,
}

fn nl_err(context: impl Into<String>) -> impl FnOnce(nl::Error) -> Error {
    let context = context.into();
    move |source| Error::netlink(context, source)
}

impl VethOvs {
    pub fn new(
        host: Arc<Netlink>,
        vswitch: Arc<Vswitch>,
        mtu: Option<u32>,
        host_mark: &str,
        controller_ctl: &str,
    ) -> Self {
        VethOvs {
            host,
            vswitch,
            mtu,
            host_mark: host_mark.to_string(),
            controller_ctl: controller_ctl.to_string(),
            nested: None,
        }
    }

    /// vlan-ovs: access ports of the VM's own bridge (`vswitch`'s), one VLAN per child port of
    /// the VM's port `vm`.
    pub fn nested_vlan(
        host: Arc<Netlink>,
        vswitch: Arc<Vswitch>,
        mtu: Option<u32>,
        host_mark: &str,
        vm: VmPort,
    ) -> Self {
        VethOvs {
            nested: Some(vm),
            ..Self::new(host, vswitch, mtu, host_mark, "")
        }
    }

    /// What the host end is on the bridge: the logical port itself, or (vlan-ovs) an access
    /// port with the child port's tag.
    fn port_binding<'a>(att: &Attachment, port: &'a LogicalPort) -> Result<PortBinding<'a>> {
        match &att.edge {
            EdgeState::VlanOvs { tag, .. } if (1..=4094).contains(tag) => {
                Ok(PortBinding::AccessTag(*tag))
            }
            EdgeState::VlanOvs { .. } => Err(Error::Internal(format!(
                "attachment {} has no VLAN tag on its vlan-ovs edge",
                att.id
            ))),
            _ => Ok(PortBinding::LogicalPort {
                id: &port.id,
                mac: &port.mac,
            }),
        }
    }
}

/// The host end of the veth, from the record's edge state.
fn host_end(att: &Attachment) -> Result<&str> {
    match &att.edge {
        EdgeState::VethOvs { host_ifname, .. } | EdgeState::VlanOvs { host_ifname, .. } => {
            Ok(host_ifname)
        }
        other => Err(Error::Internal(format!(
            "attachment {} has a {} edge, not veth-ovs",
            att.id,
            other.kind()
        ))),
    }
}

/// Opens the container's netns and looks up the attachment's interface in it.
async fn container_link(att: &Attachment) -> Result<(Netlink, Option<nl::LinkInfoView>)> {
    let ns = Netlink::in_netns(Path::new(&att.netns))
        .await
        .map_err(nl_err(format!("opening netns {}", att.netns)))?;
    let link = ns.link(&att.ifname).await.map_err(nl_err(format!(
        "looking up {} in {}",
        att.ifname, att.netns
    )))?;
    Ok((ns, link))
}

impl VethOvs {
    /// Both veth ends in the host netns: the peer `cp<id>` for the runtime (Docker) to move into
    /// the sandbox, with the port's MAC and MTU; the runtime sets its addresses and routes.
    /// A pooled edge: the slot's veth is on the bridge, bound and ready; the container gets a
    /// macvlan in passthru mode on its waiting end `lower` (the port's MAC: `lower`'s), born in
    /// the netns — no move, no switch change, no wait. Docker (hands off): the macvlan is left
    /// in the host netns as the hand-off name, for Docker to move.
    async fn plug_pooled(&self, att: &Attachment, port: &LogicalPort, lower: &str) -> Result<()> {
        let mtu = port.mtu.or(self.mtu);
        if att.hands_off() {
            let name = peer_ifname(&att.id);
            return self
                .host
                .create_sub_link(
                    lower,
                    &SubLinkSpec {
                        name: name.clone(),
                        master: 0,
                        kind: SubKind::MacVlanPassthru,
                        mac: None,
                        mtu,
                        netns_fd: None,
                    },
                )
                .await
                .map_err(nl_err(format!("creating {name} on pooled {lower}")));
        }
        let netns = Path::new(&att.netns);
        let netns_file = std::fs::File::open(netns)
            .map_err(|e| Error::InvalidEnv(format!("network namespace {}: {e}", att.netns)))?;
        self.host
            .create_sub_link(
                lower,
                &SubLinkSpec {
                    name: att.ifname.clone(),
                    master: 0,
                    kind: SubKind::MacVlanPassthru,
                    mac: None,
                    mtu,
                    netns_fd: Some(netns_file.as_raw_fd()),
                },
            )
            .await
            .map_err(nl_err(format!(
                "creating {} on pooled {lower} in {}",
                att.ifname, att.netns
            )))?;
        hooks::point("after-veth").await;
        let ns = Netlink::in_netns(netns)
            .await
            .map_err(nl_err(format!("opening netns {}", att.netns)))?;
        ns.configure(&super::port_iface_config(&att.ifname, &att.ifname, port))
            .await
            .map_err(nl_err(format!(
                "configuring {} in {}",
                att.ifname, att.netns
            )))?;
        Ok(())
    }

    /// A pooled edge's teardown: only the container's macvlan goes (the slot's veth stays on
    /// the bridge for the next container). In the netns when it still exists (its deletion
    /// took the macvlan with it otherwise), and Docker's hand-off name in the host netns.
    async fn unplug_pooled(&self, att: &Attachment) -> Vec<Error> {
        let mut errors = Vec::new();
        if !att.netns.is_empty() && !att.hands_off() {
            if let crate::netns::Probe::Netns(inode) = crate::netns::probe(&att.netns) {
                // The attached namespace only (a path reused by another one is not ours).
                if att.netns_inode.is_none_or(|i| i == inode) {
                    match Netlink::in_netns(Path::new(&att.netns)).await {
                        Ok(ns) => {
                            if let Err(e) = ns.delete_link(&att.ifname).await {
                                errors.push(nl_err(format!(
                                    "deleting {} in {}",
                                    att.ifname, att.netns
                                ))(e));
                            }
                        }
                        Err(e) => errors.push(nl_err(format!("opening netns {}", att.netns))(e)),
                    }
                }
            }
        }
        let handoff = peer_ifname(&att.id);
        if let Err(e) = self.host.delete_link(&handoff).await {
            errors.push(nl_err(format!("deleting {handoff}"))(e));
        }
        errors
    }

    async fn plug_for_handoff(
        &self,
        att: &Attachment,
        port: &LogicalPort,
        host: &str,
        mac: [u8; 6],
    ) -> Result<()> {
        let peer = peer_ifname(&att.id);
        self.host
            .create_veth(&VethSpec {
                host_name: host.to_string(),
                peer_name: peer.clone(),
                peer_mac: Some(mac),
                mtu: port.mtu.or(self.mtu),
                peer_netns_fd: None,
            })
            .await
            .map_err(nl_err(format!("creating veth {host} with peer {peer}")))?;
        self.host
            .set_alias(host, &link_alias(&self.host_mark, &att.id))
            .await
            .map_err(nl_err(format!("marking {host}")))?;
        hooks::point("after-veth").await;
        // The userspace datapath drops TCP with offloaded checksums; the setting moves with the
        // peer into the sandbox.
        for end in [host, peer.as_str()] {
            nl::set_tx_checksum(end, false)
                .await
                .map_err(nl_err(format!("turning TX checksum offload off on {end}")))?;
        }
        self.host
            .set_up(host)
            .await
            .map_err(nl_err(format!("setting {host} up")))?;
        self.vswitch
            .add_port(host, Self::port_binding(att, port)?, &att.id)
            .await?;
        hooks::point("after-ovs-port").await;
        Ok(())
    }
}

#[async_trait]
impl EdgeBinding for VethOvs {
    fn kind(&self) -> &'static str {
        if self.nested.is_some() {
            "vlan-ovs"
        } else {
            "veth-ovs"
        }
    }

    fn edge_for(&self, id: &str, _req: &AttachRequest) -> EdgeState {
        match self.nested {
            // Parent and tag are chosen by the attach flow before the intent is written.
            Some(_) => EdgeState::VlanOvs {
                host_ifname: host_ifname(id),
                parent: String::new(),
                tag: 0,
            },
            None => EdgeState::VethOvs {
                host_ifname: host_ifname(id),
                lower: None,
            },
        }
    }

    async fn health(&self) -> Result<()> {
        self.vswitch.health().await?;
        match &self.nested {
            Some(vm) => vm.link().await.map(|_| ()),
            None => crate::ovn_controller::check_connected(&self.controller_ctl).await,
        }
    }

    async fn vlan_parent(&self, backend: &dyn Backend) -> Result<Option<String>> {
        match &self.nested {
            Some(vm) => vm.id(backend.require_vlan_child_ports()?).await.map(Some),
            None => Ok(None),
        }
    }

    fn port_role(&self, att: &Attachment) -> PortRole {
        match &att.edge {
            EdgeState::VlanOvs { parent, tag, .. } => PortRole::Child {
                parent: parent.clone(),
                tag: *tag,
            },
            _ => PortRole::Bound,
        }
    }

    async fn validate(&self, att: &Attachment) -> Result<()> {
        if att.hands_off() {
            return Ok(());
        }
        crate::netns::identify(&att.netns)?;
        if container_link(att).await?.1.is_some() {
            return Err(Error::InvalidInput(format!(
                "netns {} already has an interface named {}: pick another ifname",
                att.netns, att.ifname
            )));
        }
        Ok(())
    }

    fn handoff_ifname(&self, att: &Attachment) -> String {
        peer_ifname(&att.id)
    }

    async fn plug(&self, att: &Attachment, port: &LogicalPort) -> Result<()> {
        let host = host_end(att)?;
        let mac = parse_mac(&port.mac).map_err(Error::BackendState)?;
        if let EdgeState::VethOvs {
            lower: Some(lower), ..
        } = &att.edge
        {
            return self.plug_pooled(att, port, lower).await;
        }
        if att.hands_off() {
            return self.plug_for_handoff(att, port, host, mac).await;
        }
        let netns = Path::new(&att.netns);
        let netns_file = std::fs::File::open(netns)
            .map_err(|e| Error::InvalidEnv(format!("network namespace {}: {e}", att.netns)))?;
        let ns = Netlink::in_netns(netns)
            .await
            .map_err(nl_err(format!("opening netns {}", att.netns)))?;
        // The container end is born inside the netns with its final name and the port's MAC:
        // no move between namespaces (a move costs ~20 ms of RCU synchronisation).
        self.host
            .create_veth(&VethSpec {
                host_name: host.to_string(),
                peer_name: att.ifname.clone(),
                peer_mac: Some(mac),
                mtu: port.mtu.or(self.mtu),
                peer_netns_fd: Some(netns_file.as_raw_fd()),
            })
            .await
            .map_err(nl_err(format!(
                "creating veth {host} with peer {} in {}",
                att.ifname, att.netns
            )))?;
        self.host
            .set_alias(host, &link_alias(&self.host_mark, &att.id))
            .await
            .map_err(nl_err(format!("marking {host}")))?;
        hooks::point("after-veth").await;
        // The userspace datapath drops TCP with offloaded checksums: compute them in software.
        nl::set_tx_checksum(host, false)
            .await
            .map_err(nl_err(format!("turning TX checksum offload off on {host}")))?;
        nl::set_tx_checksum_in_netns(netns, &att.ifname, false)
            .await
            .map_err(nl_err(format!(
                "turning TX checksum offload off on {} in {}",
                att.ifname, att.netns
            )))?;
        self.host
            .set_up(host)
            .await
            .map_err(nl_err(format!("setting {host} up")))?;
        self.vswitch
            .add_port(host, Self::port_binding(att, port)?, &att.id)
            .await?;
        hooks::point("after-ovs-port").await;
        ns.configure(&super::port_iface_config(&att.ifname, &att.ifname, port))
            .await
            .map_err(nl_err(format!(
                "configuring {} in {}",
                att.ifname, att.netns
            )))?;
        Ok(())
    }

    fn ready_by_backend(&self) -> bool {
        // vlan-ovs: the VM's bridge is not OVN's.
        self.nested.is_some()
    }

    async fn wait_ready(&self, att: &Attachment, timeout: std::time::Duration) -> Result<()> {
        if self.nested.is_some() {
            // The VM's bridge is a plain learning switch (no ovn-controller in the VM): it
            // forwards once the port is on it; the child port rides on the VM port's binding.
            return Ok(());
        }
        self.vswitch.wait_installed(host_end(att)?, timeout).await
    }

    async fn unplug(&self, att: &Attachment) -> Vec<Error> {
        if let EdgeState::VethOvs { lower: Some(_), .. } = &att.edge {
            return self.unplug_pooled(att).await;
        }
        let host = match host_end(att) {
            Ok(h) => h,
            Err(e) => return vec![e],
        };
        let mut errors = Vec::new();
        if let Err(e) = self.vswitch.delete_port(host, &att.id).await {
            errors.push(e);
        }
        // Deleting one end of a veth deletes the other, wherever it is.
        for link in [host.to_string(), peer_ifname(&att.id)] {
            if let Err(e) = self.host.delete_link(&link).await {
                errors.push(nl_err(format!("deleting {link}"))(e));
            }
        }
        errors
    }

    async fn check(&self, att: &Attachment, port: &LogicalPort) -> Result<()> {
        let fail = |what: String| Error::CheckFailed {
            id: att.id.clone(),
            what,
        };
        let host = host_end(att)?;
        let Some(p) = self.vswitch.port(host) else {
            return Err(fail(format!("port {host} is missing from the bridge")));
        };
        if let Some(e) = &p.error {
            return Err(fail(format!("vswitchd reports an error on {host}: {e}")));
        }
        match Self::port_binding(att, port)? {
            PortBinding::AccessTag(tag) if p.tag != Some(tag) => {
                return Err(fail(format!(
                    "port {host} has VLAN tag {:?}, expected {tag}",
                    p.tag
                )))
            }
            PortBinding::AccessTag(_) => {}
            PortBinding::LogicalPort { id, .. } if p.iface_id.as_deref() != Some(id) => {
                return Err(fail(format!(
                    "port {host} has iface-id {:?}, expected {id}",
                    p.iface_id
                )))
            }
            PortBinding::LogicalPort { .. } if !p.ovn_installed => {
                return Err(fail(format!(
                    "ovn-controller has not installed flows for {host} (no ovn-installed)"
                )))
            }
            PortBinding::LogicalPort { .. } => {}
        }
        if self
            .host
            .link(host)
            .await
            .map_err(nl_err(format!("looking up {host}")))?
            .is_none()
        {
            return Err(fail(format!("host interface {host} is missing")));
        }
        let inode = crate::netns::identify(&att.netns).map_err(|e| fail(e.to_string()))?;
        if att.netns_inode.is_some_and(|i| i != inode) {
            return Err(fail(format!(
                "{} is now a different network namespace than the one attached",
                att.netns
            )));
        }
        let (ns, link) = container_link(att).await?;
        let link =
            link.ok_or_else(|| fail(format!("{} is missing from {}", att.ifname, att.netns)))?;
        let want_mac = parse_mac(&port.mac).map_err(Error::BackendState)?;
        if link.mac != Some(want_mac) {
            return Err(fail(format!(
                "{} has MAC {:?}, expected {}",
                att.ifname,
                link.mac.map(nl::mac_to_string),
                port.mac
            )));
        }
        let addrs = ns
            .addresses(&att.ifname)
            .await
            .map_err(nl_err(format!("reading addresses of {}", att.ifname)))?;
        for ip in &port.ips {
            if !addrs.contains(ip) {
                return Err(fail(format!("{} lacks address {ip}", att.ifname)));
            }
        }
        let gws = ns
            .default_gateways()
            .await
            .map_err(nl_err(format!("reading routes in {}", att.netns)))?;
        for gw in &port.gateways {
            if !gws.contains(gw) {
                return Err(fail(format!("no default route via {gw} in {}", att.netns)));
            }
        }
        Ok(())
    }

    fn pre_plugs(&self) -> bool {
        self.nested.is_none()
    }

    async fn make_pool_edges(
        &self,
        slots: &[(String, LogicalPort)],
        timeout: std::time::Duration,
    ) -> Result<()> {
        for (slot, port) in slots {
            let (host, lower) = (host_ifname(slot), peer_ifname(slot));
            let mac = parse_mac(&port.mac).map_err(Error::BackendState)?;
            self.host
                .create_veth(&VethSpec {
                    host_name: host.clone(),
                    peer_name: lower.clone(),
                    peer_mac: Some(mac),
                    mtu: port.mtu.or(self.mtu),
                    peer_netns_fd: None,
                })
                .await
                .map_err(nl_err(format!("creating pooled veth {host}/{lower}")))?;
            for end in [&host, &lower] {
                self.host
                    .set_alias(end, &link_alias(&self.host_mark, slot))
                    .await
                    .map_err(nl_err(format!("marking {end}")))?;
                nl::set_tx_checksum(end, false)
                    .await
                    .map_err(nl_err(format!("turning TX checksum offload off on {end}")))?;
            }
            // The waiting end has no address of its own: no IPv6 link-local either.
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{lower}/disable_ipv6"), "1");
            for end in [&host, &lower] {
                self.host
                    .set_up(end)
                    .await
                    .map_err(nl_err(format!("setting {end} up")))?;
            }
            self.vswitch
                .add_port(
                    &host,
                    PortBinding::LogicalPort {
                        id: &port.id,
                        mac: &port.mac,
                    },
                    slot,
                )
                .await?;
        }
        for (slot, _) in slots {
            self.vswitch
                .wait_installed(&host_ifname(slot), timeout)
                .await?;
        }
        Ok(())
    }

    async fn remove_pool_edge(&self, slot: &str) -> Vec<Error> {
        let host = host_ifname(slot);
        let mut errors = Vec::new();
        if let Err(e) = self.vswitch.delete_port(&host, slot).await {
            errors.push(e);
        }
        for link in [host, peer_ifname(slot)] {
            if let Err(e) = self.host.delete_link(&link).await {
                errors.push(nl_err(format!("deleting {link}"))(e));
            }
        }
        errors
    }

    async fn pool_edge_ready(&self, slot: &str) -> bool {
        let host = host_ifname(slot);
        let bound = self.vswitch.port(&host).is_some_and(|p| {
            p.ovn_installed && p.error.is_none() && p.attachment.as_deref() == Some(slot)
        });
        bound
            && matches!(self.host.link(&peer_ifname(slot)).await, Ok(Some(_)))
            && matches!(self.host.link(&host).await, Ok(Some(_)))
    }

    fn pooled_edge(&self, _id: &str, slot: &str) -> Option<EdgeState> {
        self.nested.is_none().then(|| EdgeState::VethOvs {
            host_ifname: host_ifname(slot),
            lower: Some(peer_ifname(slot)),
        })
    }

    async fn owned(&self) -> Result<Vec<EdgeOrphan>> {
        let mut out: Vec<EdgeOrphan> = self
            .vswitch
            .owned_ports()
            .into_iter()
            .filter_map(|p| {
                Some(EdgeOrphan {
                    attachment: p.attachment?,
                    resource: EdgeResource::BridgePort,
                    name: p.name,
                })
            })
            .collect();
        for prefix in [model::HOST_IFNAME_PREFIX, model::PEER_IFNAME_PREFIX] {
            let links = self
                .host
                .links_with_prefix(prefix)
                .await
                .map_err(nl_err(format!("listing {prefix}* interfaces")))?;
            for link in links {
                let Some(id) = model::id_from_ifname(&link.name) else {
                    continue;
                };
                // Only links this host's Courier marked: another daemon's (or a stranger's)
                // are not ours.
                if link.alias.as_deref() == Some(link_alias(&self.host_mark, id).as_str()) {
                    out.push(EdgeOrphan {
                        attachment: id.to_string(),
                        resource: EdgeResource::Link,
                        name: link.name.clone(),
                    });
                }
            }
        }
        Ok(out)
    }

    async fn remove(&self, o: &EdgeOrphan) -> Result<bool> {
        match o.resource {
            EdgeResource::BridgePort => self.vswitch.delete_port(&o.name, &o.attachment).await,
            EdgeResource::Link => self
                .host
                .delete_link(&o.name)
                .await
                .map_err(nl_err(format!("deleting {}", o.name))),
        }
    }
}
