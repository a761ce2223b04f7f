//! Nested VLAN: for containers inside the VM Courier runs in, each on a logical port of its
//! own — a *child* of the VM's port, told apart from the VM's own traffic and from its siblings
//! by a VLAN tag unique under that VM port (OVN `parent_name` + `tag`; Neutron a trunk
//! subport). The container's interface is an 802.1Q sub-interface (that tag) of the VM's trunk
//! interface `master`, with the child port's MAC, born in the container netns. The attach flow
//! chooses the tag before the intent and claims it with it (`Attacher::create_intent`); the
//! switch strips the tag at the VM's port. The VM needs no OVS.

use std::sync::Arc;

use async_trait::async_trait;
use courier_netlink::{Netlink, SubKind};

use super::vm_port::VmPort;
use super::{EdgeBinding, EdgeOrphan};
use crate::backend::{Backend, PortRole};
use crate::error::{Error, Result};
use crate::model::{parse_mac, peer_ifname, AttachRequest, Attachment, EdgeState, LogicalPort};

pub struct Vlan {
    vm: VmPort,
    mtu: Option<u32>,
}

impl Vlan {
    pub fn new(host: Arc<Netlink>, master: &str, parent: Option<String>, mtu: Option<u32>) -> Self {
        Vlan {
            vm: VmPort::new(host, master, parent),
            mtu,
        }
    }

    /// The recorded tag: chosen and claimed with the intent, so never 0 once plugged.
    fn tag_of(att: &Attachment) -> Result<u16> {
        match &att.edge {
            EdgeState::Vlan { tag, .. } if (1..=4094).contains(tag) => Ok(*tag),
            other => Err(Error::Internal(format!(
                "attachment {} has no VLAN tag on its {} edge",
                att.id,
                other.kind()
            ))),
        }
    }

    /// The child port's MAC (the container's interface has it).
    fn mac_of(att: &Attachment) -> Option<String> {
        att.port.as_ref().map(|p| p.mac.clone())
    }
}

#[async_trait]
impl EdgeBinding for Vlan {
    fn kind(&self) -> &'static str {
        "vlan"
    }

    fn edge_for(&self, _id: &str, _req: &AttachRequest) -> EdgeState {
        // Parent and tag are chosen by the attach flow before the intent is written.
        EdgeState::Vlan {
            master: self.vm.master.clone(),
            parent: String::new(),
            tag: 0,
        }
    }

    async fn health(&self) -> Result<()> {
        self.vm.link().await.map(|_| ())
    }

    async fn vlan_parent(&self, backend: &dyn Backend) -> Result<Option<String>> {
        self.vm.id(backend).await.map(Some)
    }

    fn port_role(&self, att: &Attachment) -> PortRole {
        match &att.edge {
            EdgeState::Vlan { parent, tag, .. } => PortRole::Child {
                parent: parent.clone(),
                tag: *tag,
            },
            _ => PortRole::Bound,
        }
    }

    async fn validate(&self, att: &Attachment) -> Result<()> {
        self.vm.validate(att).await
    }

    fn handoff_ifname(&self, att: &Attachment) -> String {
        peer_ifname(&att.id)
    }

    async fn plug(&self, att: &Attachment, port: &LogicalPort) -> Result<()> {
        let tag = Self::tag_of(att)?;
        let mac = parse_mac(&port.mac).map_err(|e| {
            Error::BackendState(format!(
                "child port {} has MAC {:?}: {e}",
                port.name, port.mac
            ))
        })?;
        self.vm
            .plug(
                att,
                port,
                SubKind::Vlan(tag),
                Some(mac),
                port.mtu.or(self.mtu),
            )
            .await
    }

    fn ready_by_backend(&self) -> bool {
        true
    }

    async fn wait_ready(&self, _att: &Attachment, _timeout: std::time::Duration) -> Result<()> {
        // Nothing local to wait for: the VM's port is bound already, and the child port rides
        // on its binding (no OVS in the VM to ask).
        Ok(())
    }

    async fn unplug(&self, att: &Attachment) -> Vec<Error> {
        self.vm.unplug(att, Self::mac_of(att)).await
    }

    async fn check(&self, att: &Attachment, port: &LogicalPort) -> Result<()> {
        self.vm.check(att, port, &port.mac).await
    }

    async fn owned(&self) -> Result<Vec<EdgeOrphan>> {
        // Like macvlan: links in container netns, or under derived names rollback removes.
        Ok(vec![])
    }

    async fn remove(&self, _orphan: &EdgeOrphan) -> Result<bool> {
        Ok(false)
    }
}
