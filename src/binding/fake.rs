//! Test double of an edge binding (kind "veth-ovs", so records look like real ones): it makes
//! nothing, validates nothing, and remembers which attachments it plugged and unplugged.

use std::sync::Mutex;

use async_trait::async_trait;

use super::{EdgeBinding, EdgeOrphan};
use crate::error::{Error, Result};
use crate::model::{host_ifname, peer_ifname, AttachRequest, Attachment, EdgeState, LogicalPort};

#[derive(Default)]
pub struct FakeEdge {
    plugged: Mutex<Vec<String>>,
    unplugged: Mutex<Vec<String>>,
    /// What a vlan test double answers for `held_tags`.
    pub held_tags: Mutex<std::collections::BTreeSet<u16>>,
}

impl FakeEdge {
    pub fn new() -> FakeEdge {
        FakeEdge::default()
    }

    /// Attachment ids `plug` was called for, in order.
    pub fn plugged(&self) -> Vec<String> {
        self.plugged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Attachment ids `unplug` was called for, in order (teardown is idempotent: repeats too).
    pub fn unplugged(&self) -> Vec<String> {
        self.unplugged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[async_trait]
impl EdgeBinding for FakeEdge {
    fn kind(&self) -> &'static str {
        "veth-ovs"
    }

    fn edge_for(&self, id: &str, _req: &AttachRequest) -> EdgeState {
        EdgeState::VethOvs {
            host_ifname: host_ifname(id),
            lower: None,
        }
    }

    async fn health(&self) -> Result<()> {
        Ok(())
    }

    async fn validate(&self, _att: &Attachment) -> Result<()> {
        Ok(())
    }

    async fn plug(&self, att: &Attachment, _port: &LogicalPort) -> Result<()> {
        self.plugged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(att.id.clone());
        Ok(())
    }

    fn handoff_ifname(&self, att: &Attachment) -> String {
        peer_ifname(&att.id)
    }

    async fn wait_ready(&self, _att: &Attachment, _timeout: std::time::Duration) -> Result<()> {
        Ok(())
    }

    async fn unplug(&self, att: &Attachment) -> Vec<Error> {
        self.unplugged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(att.id.clone());
        vec![]
    }

    async fn check(&self, _att: &Attachment, _port: &LogicalPort) -> Result<()> {
        Ok(())
    }

    async fn owned(&self) -> Result<Vec<EdgeOrphan>> {
        Ok(vec![])
    }

    async fn remove(&self, _orphan: &EdgeOrphan) -> Result<bool> {
        Ok(false)
    }
}
