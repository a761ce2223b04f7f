//! Edge binding: host plumbing that gives the container's netns an interface and tells the
//! virtual switch which logical port it is. One implementation per kind of edge.

pub mod veth_ovs;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::model::{Attachment, LogicalPort};

#[async_trait]
pub trait EdgeBinding: Send + Sync {
    /// Short name for status output and records ("veth-ovs", later "vlan", "sriov", ...).
    fn kind(&self) -> &'static str;
    /// Ok when this host can plug and ready edges of this kind now (CNI STATUS): for veth-ovs,
    /// the local Open_vSwitch DB answers, the bridge exists and ovn-controller is connected.
    async fn health(&self) -> Result<()>;
    /// Checks the request can be served before anything is created (netns exists, ...).
    async fn validate(&self, att: &Attachment) -> Result<()>;
    /// Creates the interface in the container netns with the port's MAC/IPs/routes and binds it
    /// to the logical port. Every host-side name derives from `att.id`.
    async fn plug(&self, att: &Attachment, port: &LogicalPort) -> Result<()>;
    /// Waits until the data plane forwards for this edge (OVS: ovn-controller installed its flows).
    async fn wait_ready(&self, att: &Attachment, timeout: std::time::Duration) -> Result<()>;
    /// Removes everything `plug` may have created, found by the record's names. Idempotent and
    /// best effort: every step is tried even after one failed; returns every failure (none =
    /// all gone).
    async fn unplug(&self, att: &Attachment) -> Vec<Error>;
    /// Verifies the edge is as `plug` left it; Err(CheckFailed) naming what differs.
    async fn check(&self, att: &Attachment, port: &LogicalPort) -> Result<()>;
}
