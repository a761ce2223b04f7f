//! A backend that may not be reachable yet: it connects in the background (retrying every
//! second, logging why), and until then answers every call with "backend X is unreachable: try
//! again later" (11). So the daemon starts with whatever backends are up, serves the networks of
//! those, and picks the others up when they come — one backend down never holds up another.
//! Once connected, the inner backend's own session handles later outages (reconnects).
//! Its optional abilities (`AddressPairs`, …) are those of the kind it wraps, known from the
//! type before it connects (`KnownAbilities`): asking for one the kind lacks is answered "it
//! has none" without waiting for it; one it has answers "try again later" until connected.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::OnceCell;

use super::{
    Ability, AddressPair, AddressPairs, Backend, ExistingPorts, KnownAbilities, NestedParents,
    OwnedAddressPair, OwnerMark, ParentQuery, PortQuery, PortRef, PortRequest, PortRole,
    VlanChildPorts,
};
use crate::error::{Error, Result};
use crate::model::{ExistingPort, LogicalPort, Network, NetworkSpec};

pub struct Lazy {
    id: String,
    inner: OnceCell<Arc<dyn Backend>>,
    /// The optional abilities of the kind it wraps (`KnownAbilities`).
    abilities: &'static [Ability],
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
        B: Backend + KnownAbilities + 'static,
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<B>> + Send,
    {
        let lazy = Arc::new(Lazy {
            id: id.to_string(),
            inner: OnceCell::new(),
            abilities: B::ABILITIES,
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
                        debug_assert_eq!(
                            Ability::of(&b),
                            B::ABILITIES,
                            "backend {}: KnownAbilities says other than its accessors",
                            l.id
                        );
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
    async fn wait_applied(&self, on: Option<&str>, timeout: std::time::Duration) -> Result<bool> {
        self.get()?.wait_applied(on, timeout).await
    }
    fn address_pairs(&self) -> Option<&dyn AddressPairs> {
        self.abilities
            .contains(&Ability::AddressPairs)
            .then_some(self as &dyn AddressPairs)
    }
    fn vlan_child_ports(&self) -> Option<&dyn VlanChildPorts> {
        self.abilities
            .contains(&Ability::VlanChildPorts)
            .then_some(self as &dyn VlanChildPorts)
    }
    fn existing_ports(&self) -> Option<&dyn ExistingPorts> {
        self.abilities
            .contains(&Ability::ExistingPorts)
            .then_some(self as &dyn ExistingPorts)
    }
}

#[async_trait]
impl NestedParents for Lazy {
    async fn parent_port(&self, q: &ParentQuery) -> Result<String> {
        let inner = self.get()?;
        match (inner.address_pairs(), inner.vlan_child_ports()) {
            (Some(p), _) => p.parent_port(q).await,
            (None, Some(c)) => c.parent_port(q).await,
            (None, None) => Err(Ability::AddressPairs.missing(&self.id)),
        }
    }
}

#[async_trait]
impl AddressPairs for Lazy {
    async fn add_address_pair(&self, parent: &str, pair: &AddressPair) -> Result<()> {
        self.get()?
            .require_address_pairs()?
            .add_address_pair(parent, pair)
            .await
    }
    async fn remove_address_pair(&self, parent: &str, pair: &AddressPair) -> Result<()> {
        self.get()?
            .require_address_pairs()?
            .remove_address_pair(parent, pair)
            .await
    }
    async fn owned_address_pairs(&self, host: &str) -> Result<Vec<OwnedAddressPair>> {
        self.get()?
            .require_address_pairs()?
            .owned_address_pairs(host)
            .await
    }
    async fn remove_owned_address_pair(&self, pair: &OwnedAddressPair) -> Result<bool> {
        self.get()?
            .require_address_pairs()?
            .remove_owned_address_pair(pair)
            .await
    }
}

#[async_trait]
impl VlanChildPorts for Lazy {
    async fn child_tags(&self, parent: &str) -> Result<std::collections::BTreeSet<u16>> {
        self.get()?
            .require_vlan_child_ports()?
            .child_tags(parent)
            .await
    }
    async fn tidy_children_of(&self, parent: &str) -> Result<()> {
        self.get()?
            .require_vlan_child_ports()?
            .tidy_children_of(parent)
            .await
    }
}

#[async_trait]
impl ExistingPorts for Lazy {
    async fn network_of(&self, id: &str) -> Result<String> {
        self.get()?.require_existing_ports()?.network_of(id).await
    }
    async fn inspect_port(&self, id: &str, network: &Network) -> Result<ExistingPort> {
        self.get()?
            .require_existing_ports()?
            .inspect_port(id, network)
            .await
    }
    async fn claim_port(
        &self,
        port: &ExistingPort,
        owner: &OwnerMark,
        network: &Network,
        role: &PortRole,
    ) -> Result<LogicalPort> {
        self.get()?
            .require_existing_ports()?
            .claim_port(port, owner, network, role)
            .await
    }
    async fn release_port(&self, port: &ExistingPort, owner: &OwnerMark) -> Result<bool> {
        self.get()?
            .require_existing_ports()?
            .release_port(port, owner)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fake::FakeOvn;

    /// Before it connects, `Lazy` reports the abilities of the kind it wraps (the fake: VLAN
    /// child ports, no address pairs, no existing ports) and answers what it has "try again
    /// later"; once connected it forwards them.
    #[tokio::test]
    async fn it_reports_the_abilities_of_what_it_wraps_before_and_after_connecting() {
        let go = Arc::new(tokio::sync::Notify::new());
        let g = go.clone();
        let lazy = Lazy::spawn("ovn", move || {
            let g = g.clone();
            async move {
                g.notified().await;
                let b = FakeOvn::new();
                b.add_children("vm1", [7]);
                Ok(b)
            }
        });
        assert!(!lazy.is_connected());
        assert!(lazy.address_pairs().is_none() && lazy.existing_ports().is_none());
        assert_eq!(Ability::of(&*lazy), vec![Ability::VlanChildPorts]);
        let children = lazy.vlan_child_ports().expect("the fake has child ports");
        let e = children.child_tags("vm1").await.unwrap_err();
        assert!(matches!(e, Error::BackendDown { .. }), "{e:?}");
        let e = lazy
            .require_address_pairs()
            .err()
            .expect("no address pairs");
        assert!(e.to_string().contains("backend ovn"), "{e}");
        go.notify_one();
        lazy.wait_connected().await;
        let tags = lazy.vlan_child_ports().unwrap().child_tags("vm1").await;
        assert_eq!(tags.unwrap().into_iter().collect::<Vec<_>>(), vec![7]);
        assert_eq!(Ability::of(&*lazy), vec![Ability::VlanChildPorts]);
    }
}
