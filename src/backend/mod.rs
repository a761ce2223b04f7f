//! Logical attachment: the backend owns networks and ports and is the IPAM.
//! The attach flow talks to `dyn Backend` and never knows which one it has.

pub mod ovn;

use std::net::IpAddr;

use async_trait::async_trait;

use crate::error::Result;
use crate::model::{LogicalPort, Network, NetworkSpec};

/// What the attach flow asks of a backend when it needs a port.
#[derive(Debug, Clone)]
pub struct PortRequest {
    /// Name the port must have (derived from the attachment id, so cleanup can find it).
    pub name: String,
    pub attachment_id: String,
    pub ip: Option<IpAddr>,
    pub mac: Option<String>,
}

#[async_trait]
pub trait Backend: Send + Sync {
    /// Short name for status output ("ovn", later "neutron").
    fn kind(&self) -> &'static str;
    /// Ok when the backend answers.
    async fn health(&self) -> Result<()>;

    async fn create_network(&self, spec: &NetworkSpec) -> Result<Network>;
    async fn delete_network(&self, name: &str) -> Result<()>;
    async fn network(&self, name: &str) -> Result<Network>;
    async fn networks(&self) -> Result<Vec<Network>>;

    /// Creates a port on `network`, marked as owned by this host and attachment, and returns it
    /// with the addresses the backend assigned.
    async fn create_port(&self, network: &str, req: &PortRequest) -> Result<LogicalPort>;
    /// Deletes the port named `name` if this host owns it (its ownership marks, checked
    /// atomically with the delete); Ok(false) when no such port of ours exists. Another host's
    /// port is never deleted.
    async fn delete_port(&self, name: &str) -> Result<bool>;
    async fn port(&self, name: &str) -> Result<Option<LogicalPort>>;
    /// Every port this host's Courier owns, whatever the local store says (for leak sweeps).
    async fn owned_ports(&self) -> Result<Vec<LogicalPort>>;
}

/// Ownership marks Courier puts on backend resources.
pub mod marks {
    pub const OWNER: &str = "courier-owner";
    pub const OWNER_VALUE: &str = "courier";
    pub const HOST: &str = "courier-host";
    pub const ATTACHMENT: &str = "courier-attachment";
    pub const NETWORK: &str = "courier-network";
    pub const GATEWAY: &str = "courier-gateway";
}
