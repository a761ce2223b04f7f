//! Edge binding: host plumbing that gives the container's netns an interface and tells the
//! virtual switch which logical port it is. One implementation per kind of edge, chosen per
//! attachment (the record names it, through its `EdgeState`); the `Registry` holds them.

#[cfg(test)]
pub mod fake;
pub mod macvlan;
pub mod sriov;
pub mod veth_ovs;
pub mod vlan;
pub mod vm_port;

use async_trait::async_trait;

use crate::backend::{Backend, PortRole};
use crate::error::{Error, Result};
use crate::model::{AttachRequest, Attachment, EdgeState, LogicalPort};

pub use crate::model::PairPlan;

/// Something a binding made on this host, found without the store: the leak sweep removes it
/// when no record references `attachment`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeOrphan {
    pub attachment: String,
    pub resource: EdgeResource,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeResource {
    /// A port on the virtual switch (OVS bridge).
    BridgePort,
    /// A kernel network interface in the host netns.
    Link,
}

/// A binding's pool of host devices (SR-IOV: the VFs per PF).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DevicePool {
    pub groups: Vec<sriov::pool::PfStatus>,
    /// Claims of this host's records whose device is nowhere now (a VF that vanished: its
    /// PF's sriov_numvfs lowered, the driver unbound).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vanished: Vec<String>,
}

/// How the container's interface `current` is configured for `port`: named `new`, with the
/// port's addresses, default gateways and routes (its MAC and MTU set when it was made).
pub(crate) fn port_iface_config(
    current: &str,
    new: &str,
    port: &LogicalPort,
) -> courier_netlink::IfaceConfig {
    courier_netlink::IfaceConfig {
        current_name: current.to_string(),
        new_name: new.to_string(),
        mac: None,
        mtu: None,
        addresses: port.ips.clone(),
        gateways: port.gateways.clone(),
        routes: port.routes.iter().map(|r| (r.dst, r.gw)).collect(),
    }
}

#[async_trait]
pub trait EdgeBinding: Send + Sync {
    /// Its name in records, config and status ("veth-ovs", later "vlan", "sriov", ...).
    fn kind(&self) -> &'static str;
    /// What this binding will make for attachment `id` (asked for by `req`), recorded with the
    /// intent before anything exists (names derived from the id), so a crash at any step can
    /// be undone.
    fn edge_for(&self, id: &str, req: &AttachRequest) -> EdgeState;
    /// Ok when this host can plug and ready edges of this kind now (CNI STATUS): for veth-ovs,
    /// the local Open_vSwitch DB answers, the bridge exists and ovn-controller is connected.
    async fn health(&self) -> Result<()>;
    /// Whether the port's addresses must also be allowed on a parent port (nested bindings):
    /// asked after the port exists, before the edge is plugged. Default: no.
    async fn pair_plan(&self, att: &Attachment, backend: &dyn Backend) -> Result<Option<PairPlan>> {
        let _ = (att, backend);
        Ok(None)
    }
    /// What the attachment's logical port is for (how the backend makes it). Default: bound
    /// on this host by this edge.
    fn port_role(&self, att: &Attachment) -> PortRole {
        let _ = att;
        PortRole::Bound
    }
    /// Nested vlan: the VM's port, under which the attachment's child port needs a VLAN tag of
    /// its own; the attach flow chooses and claims it with the intent (`EdgeState::vlan_mut`).
    /// Default: None (no tag).
    async fn vlan_parent(&self, backend: &dyn Backend) -> Result<Option<String>> {
        let _ = backend;
        Ok(None)
    }
    /// Nested vlan: tags this host's kernel holds on the VM's NIC for links Courier did not
    /// make (the kernel refuses a second link with a tag there): the allocator skips them.
    /// Default: none.
    fn held_tags(&self) -> std::collections::BTreeSet<u16> {
        std::collections::BTreeSet::new()
    }
    /// A host device the edge needs for itself (an SR-IOV VF): the prefix of its claims in
    /// the store. The attach flow then asks [`EdgeBinding::pick_device`] for one before the
    /// intent and claims it with it. Default: None (no device).
    fn device_claim_prefix(&self) -> Option<&'static str> {
        None
    }
    /// Chooses the device for `att` on `network` that no claim in `held` names, writes it into
    /// `att.edge` and returns its claim. Err(Exhausted) when none is free. Default: none.
    async fn pick_device(
        &self,
        att: &mut Attachment,
        network: &crate::model::Network,
        held: &std::collections::BTreeSet<String>,
    ) -> Result<Option<String>> {
        let _ = (att, network, held);
        Ok(None)
    }
    /// The devices the binding hands out and how many are free (`courier status`, metrics),
    /// given the claims under [`EdgeBinding::device_claim_prefix`] the store holds. Default:
    /// None (no devices).
    async fn devices(&self, held: &std::collections::BTreeSet<String>) -> Option<DevicePool> {
        let _ = held;
        None
    }
    /// Checks the request can be served before anything is created (netns exists, ...).
    async fn validate(&self, att: &Attachment) -> Result<()>;
    /// Creates the interface in the container netns with the port's MAC/IPs/routes and binds it
    /// to the logical port (`port.id`), as `att.edge` says. When the attachment hands off
    /// (`Attachment::hands_off`: Docker, whose netns comes later), the interface is left in the
    /// host netns as [`EdgeBinding::handoff_ifname`], with the port's MAC and MTU and no
    /// addresses: the runtime moves it, names it and gives it its addresses and routes.
    async fn plug(&self, att: &Attachment, port: &LogicalPort) -> Result<()>;
    /// The host-netns name of the interface `plug` leaves for the runtime to move (Docker's
    /// Join `SrcName`).
    fn handoff_ifname(&self, att: &Attachment) -> String;
    /// True when this host cannot see the data plane of its edges (nested: no switch of the
    /// backend's in the VM): they are ready once the backend's hypervisors have applied the
    /// change (`Backend::wait_applied`), after `wait_ready`. Default: false.
    fn ready_by_backend(&self) -> bool {
        false
    }
    /// Waits until the data plane forwards for this edge (OVS: ovn-controller installed its flows).
    async fn wait_ready(&self, att: &Attachment, timeout: std::time::Duration) -> Result<()>;
    /// Removes everything `plug` may have made, found by the record's edge state. Idempotent and
    /// best effort: every step is tried even after one failed; returns every failure (none =
    /// all gone).
    async fn unplug(&self, att: &Attachment) -> Vec<Error>;
    /// Verifies the edge is as `plug` left it; Err(CheckFailed) naming what differs.
    async fn check(&self, att: &Attachment, port: &LogicalPort) -> Result<()>;
    /// Pools: whether this binding pre-plugs a pooled port's edge (`make_pool_edges`), so a
    /// take also skips the switch's wait. Default: no (the pool holds logical ports only).
    fn pre_plugs(&self) -> bool {
        false
    }
    /// Pools: makes the edges of new slots `(slot id, port)`, each bound to its port and ready
    /// (flows installed) before this returns; names derived from the slot id, so a crash is
    /// undone by [`EdgeBinding::remove_pool_edge`]. Default: nothing.
    async fn make_pool_edges(
        &self,
        _slots: &[(String, LogicalPort)],
        _timeout: std::time::Duration,
    ) -> Result<()> {
        Ok(())
    }
    /// Pools: removes slot `slot`'s edge (by its derived names); every failure returned.
    async fn remove_pool_edge(&self, _slot: &str) -> Vec<Error> {
        Vec::new()
    }
    /// Pools: whether slot `slot`'s edge is whole and ready to be taken (bound, flows
    /// installed, nothing on it). A local check. Default: true.
    async fn pool_edge_ready(&self, _slot: &str) -> bool {
        true
    }
    /// Pools: the edge an attachment taking slot `slot` records (its pre-plugged edge).
    fn pooled_edge(&self, _id: &str, _slot: &str) -> Option<EdgeState> {
        None
    }
    /// Everything this binding made on this host (its ownership marks), for the leak sweep.
    async fn owned(&self) -> Result<Vec<EdgeOrphan>>;
    /// Removes one orphan; Ok(false) if it was already gone.
    async fn remove(&self, orphan: &EdgeOrphan) -> Result<bool>;
}
