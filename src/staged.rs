//! The staged attach: the logical port first (a lease), the edge later, the netns last. This
//! is Docker's sequence — IPAM `RequestAddress` (the backend picks the address, so the port is
//! made then), `CreateEndpoint` (the edge, left in the host netns), `Join` (the sandbox, where
//! Docker moves the interface itself) — and what port pools will use (a pooled port is a
//! reserved one).
//!
//! The crash-safety rules are the attach flow's (attach.rs): the intent is durable before any
//! side effect, every name derives from the attachment id, every flow runs on its own task
//! under the attachment's lock, and teardown is best effort and keeps the record when a step
//! failed. Two resting states are added: `Reserved` (port only) and `Ready` before Join (the
//! edge in the host netns). Docker goes from one step to the next at once, so a record in
//! either state for longer than the lease timeout is a leftover of a crash or an outage in
//! between (Docker gave up on it): reconcile releases it (`release_expired`). After Join the
//! record is like any other: reconcile detaches it when its sandbox netns is certainly gone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::attach::{outcome, run_to_end, Attacher, Forgotten};
use crate::error::{Error, Result};
use crate::hooks;
use crate::model::{unix_now, AttachRequest, Attachment, AttachmentKey, DockerRef, Phase};

/// The interface name records of the staged flow carry (the runtime names it: Docker's
/// DstPrefix + a number).
pub const STAGED_IFNAME: &str = "eth";

impl Attacher {
    /// A port on `req.network` with `req.ip` / `req.mac` (or what the backend picks), held as
    /// `Reserved` under a fresh lease key. Runs on its own task; undone if the caller went
    /// away before it saw the result.
    /// `backend`, when the caller knows it, is the only one asked for the network.
    pub async fn reserve(
        self: &Arc<Self>,
        req: AttachRequest,
        docker: DockerRef,
        backend: Option<String>,
    ) -> Result<Attachment> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let this = self.clone();
        tokio::spawn(async move {
            let r = this.reserve_flow(req, docker, backend).await;
            this.metrics.op("reserve", outcome(&r));
            if let Err(Ok(att)) = tx.send(r) {
                tracing::warn!(attachment = %att.id, "the caller went away before it saw the lease; undoing it");
                this.undo_unseen(&att).await;
            }
        });
        rx.await
            .map_err(|_| Error::Internal("reserve task ended without a result".into()))?
    }

    async fn reserve_flow(
        &self,
        mut req: AttachRequest,
        docker: DockerRef,
        backend: Option<String>,
    ) -> Result<Attachment> {
        if let Some(mac) = &req.mac {
            crate::model::parse_mac(mac).map_err(Error::InvalidInput)?;
        }
        req.container_id = lease_key();
        req.ifname = STAGED_IFNAME.into();
        req.made_by = Some(crate::model::MadeBy::Docker);
        req.netns = String::new();
        let key = AttachmentKey {
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
        };
        let binding = self.registry.binding(req.binding.as_deref())?.clone();
        if let Some(ip) = req.ip {
            self.wait_released(&req.network, ip).await?;
        }
        let _guard = self.lock_for(&key).await;
        let (backend, network) = match backend.filter(|b| !b.is_empty()) {
            Some(b) => self.registry.network_in(&b, &req.network).await?,
            None => self.registry.network(&req.network).await?,
        };
        let id = self.id_of(&key);
        let mut att = Attachment::new(&req, id.clone(), backend.id(), binding.edge_for(&id, &req));
        att.docker = Some(docker);
        binding.validate(&att).await?;
        if let Some(port) = &req.port {
            crate::attach::refuse_existing_port_unless_bound(port, &att, &*binding)?;
            // Recorded with the intent, before the port is touched: the release gives it back.
            att.existing_port = Some(
                backend
                    .require_existing_ports()?
                    .inspect_port(port, &network)
                    .await?,
            );
        }
        backend.require(&crate::attach::needs_of(&att, &*binding))?;
        self.create_intent(&mut att, &*backend, &network, &*binding)
            .await?;
        hooks::point("after-intent").await;
        let made = async {
            let plan = binding.pair_plan(&att, &*backend).await?;
            self.create_port(&mut att, &*backend, &network, &*binding, plan.clone())
                .await?;
            self.add_pairs(&mut att, &*backend, plan).await
        }
        .await;
        if let Err(e) = made {
            tracing::warn!(attachment = %att.id, error = %e, "reserving an address failed; rolling back");
            if let Err(re) = self.roll_back(&att).await {
                tracing::error!(attachment = %att.id, error = %re, "rollback incomplete; the record is kept and reconcile will retry");
            }
            return Err(e);
        }
        // An existing port keeps its MAC, and the runtime sets the MAC it asked for on the
        // interface: they must be the same, or the port's security drops every frame.
        let port_mac = att.port.as_ref().map(|p| p.mac.clone()).unwrap_or_default();
        if let (Some(existing), Some(want)) = (&att.existing_port, &req.mac) {
            if !port_mac.eq_ignore_ascii_case(want) {
                let e = Error::InvalidInput(format!(
                    "port {} has MAC {port_mac}, the container's interface would get {want}: run it with --mac-address {port_mac}",
                    existing.id
                ));
                if let Err(re) = self.roll_back(&att).await {
                    tracing::error!(attachment = %att.id, error = %re, "giving the port back incomplete; reconcile will retry");
                }
                return Err(e);
            }
        }
        att.phase = Phase::Reserved;
        touch(&mut att);
        self.store.put(&att).await?;
        tracing::info!(attachment = %att.id, network = %att.network, port = %att.port_name,
            ips = ?att.port.as_ref().map(|p| &p.ips), "address reserved");
        Ok(att)
    }

    /// The edge for reserved attachment `id`, left in the host netns (Docker's CreateEndpoint).
    /// Repeating it for the same endpoint returns the attachment as it is. On failure the edge
    /// is undone and the lease stays `Reserved` (Docker releases the address next).
    pub async fn plug_reserved(
        self: &Arc<Self>,
        id: &str,
        endpoint_id: &str,
        network_id: &str,
    ) -> Result<Attachment> {
        let (this, id, ep, nid) = (
            self.clone(),
            id.to_string(),
            endpoint_id.to_string(),
            network_id.to_string(),
        );
        run_to_end(async move {
            let r = this.plug_reserved_flow(&id, &ep, &nid).await;
            this.metrics.op("endpoint", outcome(&r));
            r
        })
        .await
    }

    async fn plug_reserved_flow(
        &self,
        id: &str,
        endpoint_id: &str,
        network_id: &str,
    ) -> Result<Attachment> {
        let t0 = std::time::Instant::now();
        let _guard = self.locks.lock(id).await;
        let mut att = self.staged_record(id).await?;
        let d = att.docker.clone().unwrap_or_default();
        if d.endpoint_id.as_deref() == Some(endpoint_id) && att.phase == Phase::Ready {
            return Ok(att);
        }
        if att.phase != Phase::Reserved {
            let ips = att.port.as_ref().map(|p| p.ips.clone()).unwrap_or_default();
            return Err(Error::InvalidInput(format!(
                "address {ips:?} is in use by endpoint {}: request another address",
                d.endpoint_id.unwrap_or_else(|| "(being set up)".into())
            )));
        }
        let binding = self.registry.binding(Some(att.edge.kind()))?.clone();
        let backend = self.registry.backend(&att.backend)?.clone();
        if let Some(d) = att.docker.as_mut() {
            d.endpoint_id = Some(endpoint_id.to_string());
            d.network_id = Some(network_id.to_string());
        }
        touch(&mut att);
        // Durable before the edge exists: a crash from here on is rolled back whole by reconcile.
        att.phase = Phase::PortCreated;
        self.store.put(&att).await?;
        let r = async {
            binding.validate(&att).await?;
            // Docker asks for the port's state (EndpointOperInfo) from the record: no round trip.
            self.plug_edge(&mut att, &*backend, &*binding, false).await
        }
        .await;
        match r {
            Ok((plug_ms, up_ms)) => {
                att.phase = Phase::Ready;
                touch(&mut att);
                self.store.put(&att).await?;
                hooks::point("after-ready").await;
                tracing::info!(attachment = %att.id, endpoint = %endpoint_id, port = %att.port_name,
                    plug_ms, up_ms, total_ms = t0.elapsed().as_secs_f64() * 1000.0, "endpoint plugged");
                Ok(att)
            }
            Err(e) => {
                tracing::warn!(attachment = %att.id, error = %e, "plugging the endpoint failed; undoing the edge");
                let errors = binding.unplug(&att).await;
                if errors.is_empty() {
                    att.phase = Phase::Reserved;
                    if let Some(d) = att.docker.as_mut() {
                        d.endpoint_id = None;
                    }
                    touch(&mut att);
                    self.store.put(&att).await?;
                } else {
                    tracing::error!(attachment = %att.id, errors = ?errors, "undoing the edge incomplete; reconcile will finish it");
                }
                Err(e)
            }
        }
    }

    /// Docker's Join: the sandbox the interface goes into. Docker makes that netns only after
    /// Join (runc's setkey hook), so its identity is not known yet: the record is detached when
    /// the netns is certainly gone, but a missing one counts as gone only once the lease timeout
    /// has passed since Join (`sandbox_may_be_coming`).
    pub async fn join(&self, id: &str, sandbox: &str) -> Result<Attachment> {
        let _guard = self.locks.lock(id).await;
        let mut att = self.staged_record(id).await?;
        if att.phase != Phase::Ready {
            return Err(Error::InvalidInput(format!(
                "endpoint of attachment {id} is {:?}, not ready to join: create the endpoint again",
                att.phase
            )));
        }
        if !sandbox.starts_with('/') {
            return Err(Error::InvalidInput(format!(
                "SandboxKey {sandbox:?} is not an absolute path"
            )));
        }
        att.netns = sandbox.to_string();
        att.netns_inode = None;
        touch(&mut att);
        self.store.put(&att).await?;
        Ok(att)
    }

    /// Records the identity of a joined record's sandbox netns once it exists (Docker creates it
    /// after Join): from then on a missing or different netns at that path is certainly gone.
    /// Best effort; nothing to do when not joined, already known, or not there yet.
    pub async fn note_sandbox(&self, id: &str) -> Result<()> {
        let _guard = self.locks.lock(id).await;
        let Some(mut att) = self.store.get(id).await? else {
            return Ok(());
        };
        if att.docker.is_none() || att.netns.is_empty() || att.netns_inode.is_some() {
            return Ok(());
        }
        if let crate::netns::Probe::Netns(inode) = crate::netns::probe(&att.netns) {
            att.netns_inode = Some(inode);
            self.store.put(&att).await?;
        }
        Ok(())
    }

    /// After Join: waits (in the background, up to the lease timeout) for Docker to create the
    /// sandbox netns, and records its identity as soon as it exists — so a container removed
    /// while Courier is down is certainly gone at the next start, however soon.
    pub fn watch_sandbox(self: &Arc<Self>, id: &str) {
        let (this, id) = (self.clone(), id.to_string());
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + this.lease_timeout;
            while tokio::time::Instant::now() < deadline {
                match this.store.get(&id).await {
                    Ok(Some(a)) if a.netns_inode.is_none() && !a.netns.is_empty() => {
                        if matches!(crate::netns::probe(&a.netns), crate::netns::Probe::Netns(_)) {
                            if let Err(e) = this.note_sandbox(&id).await {
                                tracing::warn!(attachment = %id, error = %e, "recording the sandbox's identity failed");
                            }
                            return;
                        }
                    }
                    _ => return,
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        });
    }

    /// Docker's Leave: the sandbox is going; the edge stays until DeleteEndpoint.
    pub async fn leave(&self, id: &str) -> Result<()> {
        let _guard = self.locks.lock(id).await;
        let mut att = self.staged_record(id).await?;
        att.netns.clear();
        att.netns_inode = None;
        touch(&mut att);
        self.store.put(&att).await
    }

    /// Docker's DeleteEndpoint: the edge goes. A lease of Courier's IPAM is `Reserved` again
    /// (ReleaseAddress ends it); an endpoint whose address came from another IPAM goes whole.
    pub async fn unplug_endpoint(self: &Arc<Self>, id: &str) -> Result<()> {
        let (this, id) = (self.clone(), id.to_string());
        run_to_end(async move {
            let r = this.unplug_endpoint_flow(&id).await;
            this.metrics.op("endpoint-delete", outcome(&r));
            r
        })
        .await
    }

    async fn unplug_endpoint_flow(&self, id: &str) -> Result<()> {
        let _guard = self.locks.lock(id).await;
        let Some(mut att) = self.store.get(id).await? else {
            return Ok(());
        };
        if att.phase == Phase::Reserved {
            return Ok(());
        }
        let leased = att.docker.as_ref().is_some_and(|d| d.leased);
        if !leased {
            self.detach_locked(att).await?;
            return Ok(());
        }
        // Durable first: if the unplug does not finish, reconcile rolls the whole record back
        // (and Docker's ReleaseAddress then finds nothing to do).
        att.phase = Phase::PortCreated;
        self.store.put(&att).await?;
        let binding = self.registry.binding(Some(att.edge.kind()))?;
        let errors = binding.unplug(&att).await;
        if !errors.is_empty() {
            return Err(Error::Teardown {
                id: att.id.clone(),
                errors,
            });
        }
        att.phase = Phase::Reserved;
        att.netns.clear();
        att.netns_inode = None;
        if let Some(d) = att.docker.as_mut() {
            d.endpoint_id = None;
        }
        touch(&mut att);
        self.store.put(&att).await?;
        tracing::info!(attachment = %att.id, "endpoint deleted; address still reserved");
        Ok(())
    }

    /// Docker's ReleaseAddress, answered once the release is durable (`Detaching`); the port
    /// and the record go in the background, under the record's lock (a crash meanwhile leaves
    /// a `Detaching` record, which reconcile rolls back). A reserve that asks for the same
    /// address waits for it (`wait_released`), so `docker run --rm --ip A` in a loop never finds
    /// A still taken.
    pub async fn release_soon(self: &Arc<Self>, id: &str) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (this, id) = (self.clone(), id.to_string());
        tokio::spawn(async move {
            let _guard = this.locks.lock(&id).await;
            let mut att = match this.store.get(&id).await {
                Ok(Some(a)) => a,
                Ok(None) => {
                    let _ = tx.send(Ok(()));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            att.phase = Phase::Detaching;
            if let Err(e) = this.store.put(&att).await {
                let _ = tx.send(Err(e));
                return;
            }
            let _ = tx.send(Ok(()));
            hooks::point("release-after-mark").await;
            let r = this.roll_back(&att).await;
            this.metrics.op("release", outcome(&r));
            match r {
                Ok(()) => tracing::info!(attachment = %att.id, "address released"),
                Err(e) => {
                    tracing::error!(attachment = %att.id, error = %e, "releasing incomplete; reconcile will finish it")
                }
            }
        });
        rx.await
            .map_err(|_| Error::Internal("release task ended without a result".into()))?
    }

    /// Waits until no release of `ip` on `network` is under way.
    async fn wait_released(&self, network: &str, ip: std::net::IpAddr) -> Result<()> {
        let releasing = self
            .staged_records(crate::state::DockerKey::Address { network, ip }, |a| {
                a.network == network
                    && a.phase == Phase::Detaching
                    && a.port
                        .as_ref()
                        .is_some_and(|p| p.ips.iter().any(|i| i.addr() == ip))
            })
            .await?;
        for a in releasing {
            drop(self.locks.lock(&a.id).await);
        }
        Ok(())
    }

    /// Every end of a staged record: everything goes, before it returns.
    pub async fn release(self: &Arc<Self>, id: &str) -> Result<()> {
        let (this, id) = (self.clone(), id.to_string());
        run_to_end(async move {
            let _guard = this.locks.lock(&id).await;
            let r = match this.store.get(&id).await? {
                Some(att) => this.detach_locked(att).await.map(|_| ()),
                None => Ok(()),
            };
            this.metrics.op("release", outcome(&r));
            r
        })
        .await
    }

    /// Reconcile: releases `seen` (a staged record not joined, from an unlocked snapshot) if,
    /// under its lock, it is still that generation, still not joined and at rest, and its last
    /// step is older than the lease timeout.
    pub async fn release_expired(&self, seen: &Attachment) -> Result<Forgotten> {
        let _guard = self.locks.lock(&seen.id).await;
        let Some(now) = self.store.get(&seen.id).await? else {
            return Ok(Forgotten::Kept);
        };
        if now.generation != seen.generation || !lease_expired(&now, self.lease_timeout) {
            return Ok(Forgotten::Kept);
        }
        tracing::warn!(attachment = %now.id, phase = ?now.phase, docker = ?now.docker,
            "a Docker lease/endpoint was never joined or released; releasing it");
        self.detach_locked(now).await?;
        Ok(Forgotten::Detached)
    }

    /// Staged records (this host's) filed under `key` that match `pred` (the index finds them;
    /// `pred` says exactly which are meant, so a lookup costs its answer, not the store).
    pub async fn staged_records(
        &self,
        key: crate::state::DockerKey<'_>,
        pred: impl Fn(&Attachment) -> bool,
    ) -> Result<Vec<Attachment>> {
        Ok(self
            .store
            .docker_records(key)
            .await?
            .into_iter()
            .filter(|a| a.docker.is_some() && pred(a))
            .collect())
    }

    async fn staged_record(&self, id: &str) -> Result<Attachment> {
        self.store
            .get(id)
            .await?
            .filter(|a| a.docker.is_some())
            .ok_or_else(|| Error::InvalidInput(format!("no Docker endpoint or lease {id}")))
    }
}

/// A joined Docker record whose sandbox netns may not exist yet: Docker creates it after Join,
/// so "missing" means gone only once the lease timeout has passed since Join.
pub fn sandbox_may_be_coming(att: &Attachment, timeout: Duration) -> bool {
    let Some(d) = &att.docker else { return false };
    att.netns_inode.is_none() && unix_now().saturating_sub(d.since) <= timeout.as_secs()
}

/// A staged record at rest and not joined whose last step is older than `timeout`.
pub fn lease_expired(att: &Attachment, timeout: Duration) -> bool {
    let Some(d) = &att.docker else { return false };
    att.netns.is_empty()
        && matches!(att.phase, Phase::Reserved | Phase::Ready)
        && unix_now().saturating_sub(d.since) > timeout.as_secs()
}

fn touch(att: &mut Attachment) {
    if let Some(d) = att.docker.as_mut() {
        d.since = unix_now();
    }
}

/// A key no other lease on this host has had: time, process and a counter.
fn lease_key() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "docker-lease:{nanos:x}:{}:{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(phase: Phase, netns: &str, since: u64) -> Attachment {
        let req = AttachRequest {
            container_id: "docker-lease:1".into(),
            ifname: STAGED_IFNAME.into(),
            network: "n".into(),
            ..Default::default()
        };
        let mut a = Attachment::new(
            &req,
            "0123456789ab".into(),
            "ovn",
            crate::model::EdgeState::VethOvs {
                host_ifname: "cv0123456789ab".into(),
                lower: None,
            },
        );
        a.phase = phase;
        a.netns = netns.into();
        a.docker = Some(DockerRef {
            since,
            leased: true,
            ..Default::default()
        });
        a
    }

    #[test]
    fn only_an_unjoined_record_at_rest_expires() {
        let t = Duration::from_secs(60);
        let old = unix_now() - 120;
        assert!(lease_expired(&staged(Phase::Reserved, "", old), t));
        assert!(lease_expired(&staged(Phase::Ready, "", old), t));
        // Joined: its netns decides, not the clock.
        assert!(!lease_expired(
            &staged(Phase::Ready, "/run/docker/netns/x", old),
            t
        ));
        // In flight or half done: rolled back by reconcile's leftover rule instead.
        assert!(!lease_expired(&staged(Phase::PortCreated, "", old), t));
        // Fresh.
        assert!(!lease_expired(&staged(Phase::Reserved, "", unix_now()), t));
        // Not a Docker record.
        let mut cni = staged(Phase::Ready, "", old);
        cni.docker = None;
        assert!(!lease_expired(&cni, t));
        assert_ne!(lease_key(), lease_key());
    }
}
