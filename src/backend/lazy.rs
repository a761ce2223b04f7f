//! A backend that may not be reachable yet: it connects in the background (retrying every
//! second, logging why), and until then answers every call with "backend X is unreachable: try
//! again later" (11). So the daemon starts with whatever backends are up, serves the networks of
//! those, and picks the others up when they come — one backend down never holds up another.
//! Once connected, the inner backend's own session handles later outages (reconnects).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::OnceCell;

use super::{Backend, OwnerMark, PortQuery, PortRef, PortRequest};
use crate::error::{Error, Result};
use crate::model::{ExistingPort, LogicalPort, Network, NetworkSpec};

pub struct Lazy {
    id: String,
    inner: OnceCell<Arc<dyn Backend>>,
    /// Why the last connect attempt failed.
    last_error: Mutex<String>,
    connected: tokio::sync::watch::Sender<bool>,
    /// Why it will never connect (a refusal: `Error::MarkClaimed`); it stops trying then.
    refused: tokio::sync::watch::Sender<Option<String>>,
}

impl Lazy {
    /// Starts connecting `id` with `connect` in the background.
    pub fn spawn<B, F, Fut>(id: &str, connect: F) -> Arc<Lazy>
    where
        B: Backend + 'static,
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<B>> + Send,
    {
        let lazy = Arc::new(Lazy {
            id: id.to_string(),
            inner: OnceCell::new(),
            last_error: Mutex::new("connecting".into()),
            connected: tokio::sync::watch::channel(false).0,
            refused: tokio::sync::watch::channel(None).0,
        });
        let l = lazy.clone();
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                match connect().await {
                    Ok(b) => {
                        let _ = l.inner.set(Arc::new(b));
                        l.connected.send_replace(true);
                        if warned {
                            tracing::info!(backend = %l.id, "backend is reachable now");
                        } else {
                            tracing::info!(backend = %l.id, "backend connected");
                        }
                        return;
                    }
                    Err(e @ Error::MarkClaimed(_)) => {
                        tracing::error!(backend = %l.id, error = %e, "backend refused");
                        *l.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
                        l.refused.send_replace(Some(e.to_string()));
                        return;
                    }
                    Err(e) => {
                        if !warned {
                            tracing::warn!(backend = %l.id, error = %e,
                                "backend not reachable yet; its networks answer 'try again later' meanwhile; retrying every second");
                            warned = true;
                        }
                        *l.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        lazy
    }

    pub fn is_connected(&self) -> bool {
        self.inner.get().is_some()
    }

    /// Returns once the backend is connected.
    pub async fn wait_connected(&self) {
        let mut rx = self.connected.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Returns, with the reason, if the backend refuses for good (it then never connects).
    pub async fn wait_refused(&self) -> String {
        let mut rx = self.refused.subscribe();
        let why = rx
            .wait_for(|r| r.is_some())
            .await
            .ok()
            .and_then(|r| r.clone());
        match why {
            Some(why) => why,
            // The sender lives as long as `self`.
            None => std::future::pending().await,
        }
    }

    fn get(&self) -> Result<&Arc<dyn Backend>> {
        self.inner.get().ok_or_else(|| Error::BackendDown {
            backend: self.id.clone(),
            detail: format!(
                "not connected yet ({})",
                self.last_error.lock().unwrap_or_else(|p| p.into_inner())
            ),
        })
    }
}

#[async_trait]
impl Backend for Lazy {
    fn id(&self) -> &str {
        &self.id
    }
    fn reads_are_local(&self) -> bool {
        self.inner.get().is_some_and(|b| b.reads_are_local())
    }
    async fn health(&self) -> Result<()> {
        self.get()?.health().await
    }
    async fn create_network(&self, spec: &NetworkSpec) -> Result<Network> {
        self.get()?.create_network(spec).await
    }
    async fn delete_network(&self, name: &str) -> Result<()> {
        self.get()?.delete_network(name).await
    }
    async fn network(&self, name: &str) -> Result<Option<Network>> {
        self.get()?.network(name).await
    }
    async fn networks(&self) -> Result<Vec<Network>> {
        self.get()?.networks().await
    }
    async fn create_ports(&self, reqs: &[PortRequest]) -> Result<Vec<LogicalPort>> {
        self.get()?.create_ports(reqs).await
    }
    async fn delete_port(&self, port: &PortRef, host: &str) -> Result<bool> {
        self.get()?.delete_port(port, host).await
    }
    async fn port(&self, port: &PortRef) -> Result<Option<LogicalPort>> {
        self.get()?.port(port).await
    }
    async fn find_ports(&self, q: &PortQuery) -> Result<Vec<LogicalPort>> {
        self.get()?.find_ports(q).await
    }
    async fn mark_claimed(&self, host: &str) -> Result<Option<super::MarkClaim>> {
        self.get()?.mark_claimed(host).await
    }
    async fn inspect_port(&self, id: &str, network: &Network) -> Result<ExistingPort> {
        self.get()?.inspect_port(id, network).await
    }
    async fn claim_port(
        &self,
        port: &ExistingPort,
        owner: &OwnerMark,
        network: &Network,
    ) -> Result<LogicalPort> {
        self.get()?.claim_port(port, owner, network).await
    }
    async fn release_port(&self, port: &ExistingPort, owner: &OwnerMark) -> Result<bool> {
        self.get()?.release_port(port, owner).await
    }
    async fn parent_port(&self, q: &super::ParentQuery) -> Result<String> {
        self.get()?.parent_port(q).await
    }
    async fn wait_applied(&self, on: Option<&str>, timeout: std::time::Duration) -> Result<bool> {
        self.get()?.wait_applied(on, timeout).await
    }
    async fn child_tags(&self, parent: &str) -> Result<std::collections::BTreeSet<u16>> {
        self.get()?.child_tags(parent).await
    }
    async fn add_address_pair(&self, parent: &str, pair: &super::AddressPair) -> Result<()> {
        self.get()?.add_address_pair(parent, pair).await
    }
    async fn remove_address_pair(&self, parent: &str, pair: &super::AddressPair) -> Result<()> {
        self.get()?.remove_address_pair(parent, pair).await
    }
    async fn tidy_children_of(&self, parent: &str) -> Result<()> {
        self.get()?.tidy_children_of(parent).await
    }
    async fn owned_pairs(&self, host: &str) -> Result<Vec<super::OwnedPair>> {
        self.get()?.owned_pairs(host).await
    }
    async fn remove_owned_pair(&self, pair: &super::OwnedPair) -> Result<bool> {
        self.get()?.remove_owned_pair(pair).await
    }
}
