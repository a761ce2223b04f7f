//! THE attach flow, top to bottom: intent → logical port → edge → ready.
//! Detach is the same in reverse. The intent is durable in the store before any side effect,
//! and every name is derived from the attachment id, so a crash anywhere can be undone
//! (see reconcile.rs).
//!
//! Each attach and detach runs on a task of its own, to completion or rollback, whatever happens
//! to the caller: a CNI runtime that kills the plugin on its timeout drops the API request, not
//! the flow. An attach whose caller went away before it saw the result is undone (no runtime
//! knows of it, so none would DEL it).
//!
//! Teardown (rollback and detach) is best effort: every step runs even when an earlier one
//! failed, every error is reported, and the record stays until everything is gone, so
//! reconcile finishes the job.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::{Ability, Backend, OwnerMark, PortRef, PortRequest, PortRole};
use crate::binding::EdgeBinding;
use crate::error::{Error, Result};
use crate::hooks;
use crate::metrics::Metrics;
use crate::model::{
    validate_ifname, AttachRequest, Attachment, AttachmentKey, LogicalPort, Network, Phase,
};
use crate::registry::Registry;
use crate::state::Store;

pub struct Attacher {
    pub metrics: Arc<Metrics>,
    pub store: Store,
    /// Every backend and binding; each attachment uses the ones its record names.
    pub registry: Arc<Registry>,
    pub port_up_timeout: Duration,
    /// A Docker record not joined for longer than this is a leftover (see `staged.rs`).
    pub lease_timeout: Duration,
    /// This host's ownership mark; part of every attachment id.
    pub host: String,
    /// Port pools: an attach they can serve takes a pooled port (pool/flow.rs).
    pub pools: Arc<crate::pool::flow::Pools>,
    pub(crate) locks: KeyedLocks,
}

/// What a forgotten-DEL check decided about one attachment, re-made under its lock.
#[derive(Debug, PartialEq)]
pub enum Forgotten {
    Detached,
    /// The record changed since the snapshot (another generation, detached, not ready) or its
    /// netns is not certainly gone: nothing was done.
    Kept,
}

impl Attacher {
    pub fn new(
        store: Store,
        registry: Arc<Registry>,
        port_up_timeout: Duration,
        host: &str,
    ) -> Self {
        Attacher {
            metrics: Arc::new(Metrics::default()),
            store,
            registry,
            port_up_timeout,
            lease_timeout: Duration::from_secs(60),
            host: host.to_string(),
            pools: Arc::new(crate::pool::flow::Pools::new(Default::default())),
            locks: KeyedLocks::default(),
        }
    }

    /// The id an attachment key has on this host.
    pub fn id_of(&self, key: &AttachmentKey) -> String {
        key.id(&self.host)
    }

    /// The lock that serialises every flow on one interface (the key's id on this host, also
    /// for a schema-1 record kept under its legacy id).
    pub(crate) async fn lock_for(&self, key: &AttachmentKey) -> KeyedGuard<'_> {
        self.locks.lock(&self.id_of(key)).await
    }

    /// The record for `key`: under its id, or a schema-1 record under the legacy id.
    pub async fn record(&self, key: &AttachmentKey) -> Result<Option<Attachment>> {
        if let Some(a) = self.store.get(&self.id_of(key)).await? {
            return Ok(Some(a));
        }
        Ok(self
            .store
            .get(&key.legacy_id())
            .await?
            .filter(|a| a.schema == 1 && a.key() == *key))
    }

    /// Gives the container an interface on the network; returns the complete attachment.
    /// Runs on its own task: see the module header.
    pub async fn attach(self: &Arc<Self>, req: &AttachRequest) -> Result<Attachment> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let this = self.clone();
        let req = req.clone();
        tokio::spawn(async move {
            let start = std::time::Instant::now();
            let r = this.attach_flow(&req).await;
            this.metrics.op("attach", outcome(&r));
            if r.is_ok() {
                this.metrics.attach_took(start.elapsed());
            }
            if let Err(Ok(att)) = tx.send(r) {
                tracing::warn!(attachment = %att.id, container = %att.container_id,
                    "the caller went away before it saw the attach complete; undoing it");
                this.undo_unseen(&att).await;
            }
        });
        rx.await
            .map_err(|_| Error::Internal("attach task ended without a result".into()))?
    }

    async fn attach_flow(&self, req: &AttachRequest) -> Result<Attachment> {
        let started = std::time::Instant::now();
        let named;
        let req = if req.network.is_empty() {
            named = AttachRequest {
                network: self.network_of_port(req).await?,
                ..req.clone()
            };
            &named
        } else {
            req
        };
        // 1. Validate everything we can before any side effect.
        validate_ifname(&req.ifname).map_err(Error::InvalidInput)?;
        if req.container_id.is_empty() {
            return Err(Error::InvalidEnv(
                "container id is empty (CNI_CONTAINERID)".into(),
            ));
        }
        if let Some(mac) = &req.mac {
            crate::model::parse_mac(mac).map_err(Error::InvalidInput)?;
        }
        let key = AttachmentKey {
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
        };
        let binding = self.registry.binding(req.binding.as_deref())?.clone();
        if let Some(dev) = &req.device {
            if binding.device_claim_prefix().is_none() {
                return Err(Error::InvalidInput(format!(
                    "device {dev} names an SR-IOV VF, and the {} binding takes no device: attach with the sriov binding, or drop the device",
                    binding.kind()
                )));
            }
            dev.parse::<courier_sriov::PciAddress>().map_err(|e| {
                Error::InvalidInput(format!(
                    "device {dev:?} is not a PCI address ({e}): give the VF's, e.g. 0000:01:10.0"
                ))
            })?;
        }
        let _guard = self.lock_for(&key).await;
        if let Some(existing) = self.record(&key).await? {
            if existing.phase == Phase::Ready {
                return Err(Error::AlreadyAttached {
                    container_id: existing.container_id,
                    ifname: existing.ifname,
                    id: existing.id,
                });
            }
            // Under the lock, an unfinished record is a leftover of an attach or detach whose
            // rollback failed (e.g. the backend was down): finish undoing it, then start afresh.
            tracing::info!(attachment = %existing.id, phase = ?existing.phase, "undoing a leftover before attaching again");
            self.roll_back(&existing).await?;
        }
        let (backend, network) = self.registry.network(&req.network).await?;
        // An existing port is inspected first: its vnic type may choose the binding (a direct
        // port is an SR-IOV VF's). Recorded with the intent, before the port is touched:
        // rollback gives it back.
        let mut existing = None;
        let mut binding = binding;
        if let Some(port) = &req.port {
            if req.ip.is_some() || req.mac.is_some() || !req.security_groups.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "port {port} exists already: its addresses and security groups are its own; drop the IP, MAC and security groups"
                )));
            }
            let e = backend
                .require_existing_ports()?
                .inspect_port(port, &network)
                .await?;
            binding = binding_for_vnic(&self.registry, req, port, e.vnic_type.as_deref(), binding)?;
            existing = Some(e);
        }
        let id = self.id_of(&key);
        let mut att = Attachment::new(req, id.clone(), backend.id(), binding.edge_for(&id, req));
        att.netns_inode = Some(crate::netns::identify(&att.netns)?);
        binding.validate(&att).await?;
        if let Some(port) = &req.port {
            refuse_existing_port_unless_bound(port, &att, &*binding)?;
            att.existing_port = existing;
        }
        // What the binding needs of the backend beyond `Backend`: refused before the intent.
        backend.require(&needs_of(&att, &*binding))?;

        // 2. Intent: durable before anything exists; the store gives it its generation.
        self.create_intent(&mut att, &*backend, &network, &*binding)
            .await?;
        hooks::point("after-intent").await;

        let result = self
            .attach_steps(&mut att, &*backend, &network, &*binding, started)
            .await;
        match result {
            Ok(()) => Ok(att),
            Err(e) => {
                tracing::warn!(attachment = %att.id, error = %e, "attach failed; rolling back");
                if let Err(re) = self.roll_back(&att).await {
                    tracing::error!(attachment = %att.id, error = %re, "rollback incomplete; the record is kept and reconcile will retry");
                }
                Err(e)
            }
        }
    }

    async fn attach_steps(
        &self,
        att: &mut Attachment,
        backend: &dyn Backend,
        network: &Network,
        binding: &dyn EdgeBinding,
        started: std::time::Instant,
    ) -> Result<()> {
        let t0 = std::time::Instant::now();
        // Validation, the lock, the network's resolution and the durable intent.
        let intent_ms = (t0 - started).as_secs_f64() * 1000.0;
        let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1000.0;
        // 3. Logical attachment: the backend creates the port and assigns its addresses (and,
        // for a nested binding, allows them on the VM's port).
        let plan = binding.pair_plan(att, backend).await?;
        self.create_port(att, backend, network, binding, plan.clone())
            .await?;
        self.add_pairs(att, backend, plan).await?;
        let port_ms = ms(t0);
        let t1 = std::time::Instant::now();
        // 4–5. Edge binding, and the wait until the data plane forwards for it.
        let (plug_ms, up_ms) = self.plug_edge(att, backend, binding, true).await?;
        att.phase = Phase::Ready;
        self.store.put(att).await?;
        hooks::point("after-ready").await;
        tracing::info!(attachment = %att.id, container = %att.container_id, ifname = %att.ifname,
            network = %att.network, port = %att.port_name, binding = att.edge.kind(),
            ips = ?att.port.as_ref().map(|p| &p.ips), intent_ms, port_ms, plug_ms, up_ms, edge_ms = ms(t1), total_ms = ms(t0), "attached");
        Ok(())
    }

    /// The Courier network of an attach that names an existing port and no network: the one,
    /// of the backends that bind existing ports, whose backend id is the port's network.
    /// Refused, changing nothing, when no port is named, or its network is not one of
    /// Courier's (the error says how to register it).
    async fn network_of_port(&self, req: &AttachRequest) -> Result<String> {
        let Some(port) = &req.port else {
            return Err(Error::InvalidInput(
                "no network given: name one (--network, the CNI network's name), or an existing port (--port) whose network Courier knows".into(),
            ));
        };
        let mut last = None;
        for backend in self.registry.backends() {
            let Some(existing) = backend.existing_ports() else {
                continue;
            };
            let net_id = match existing.network_of(port).await {
                Ok(id) => id,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            if let Some(n) = backend
                .networks()
                .await?
                .into_iter()
                .find(|n| n.backend_id == net_id)
            {
                return Ok(n.name);
            }
            return Err(Error::InvalidInput(format!(
                "port {port} is on {} network {net_id}, which is not a Courier network: register it (courier network create NAME --neutron-network {net_id}), or give --network",
                backend.id()
            )));
        }
        Err(last.unwrap_or_else(|| {
            Error::InvalidInput(format!(
                "port {port}: no backend of this daemon binds existing ports (Neutron does); give --network"
            ))
        }))
    }

    /// The intent, durable before anything exists. A nested vlan edge first gets its tag: the
    /// lowest one free under the VM's port — neither claimed in this store nor on a child port
    /// the backend has (whoever made it) — claimed in the same transaction as the intent; a
    /// concurrent attach that claimed it first makes this one take the next.
    pub(crate) async fn create_intent(
        &self,
        att: &mut Attachment,
        backend: &dyn Backend,
        network: &Network,
        binding: &dyn EdgeBinding,
    ) -> Result<()> {
        // A pooled port: claimed with the intent, so the port step makes no backend write.
        if self.take_slot(att, backend, network, binding).await? {
            return Ok(());
        }
        if let Some(prefix) = binding.device_claim_prefix() {
            return self.claim_device(att, network, binding, prefix).await;
        }
        let Some(parent) = binding.vlan_parent(backend).await? else {
            return self.store.create(att).await;
        };
        let mut in_backend = backend
            .require_vlan_child_ports()?
            .child_tags(&parent)
            .await?;
        // Tags held on the VM's NIC by links Courier did not make (the kernel refuses them).
        let on_nic = binding.held_tags();
        in_backend.extend(&on_nic);
        let prefix = crate::model::vlan_claim_prefix(&parent);
        loop {
            let held: std::collections::BTreeSet<u16> = self
                .store
                .claims(&prefix)
                .await?
                .iter()
                .filter_map(|(c, _)| crate::model::vlan_claim_tag(c))
                .collect();
            let tag = crate::model::lowest_unused_vlan_tag(&held, &in_backend).ok_or_else(|| {
                Error::Exhausted {
                    resource: format!("VLAN tags 1..4094 under the VM's port {parent}"),
                    what: format!(
                        "{} held by this host's containers, {} by child ports in backend {} or links on this host's NIC ({} of those); detach a container (or delete a child port) first",
                        held.len(),
                        in_backend.len(),
                        backend.id(),
                        on_nic.len()
                    ),
                }
            })?;
            if let Some((p, t)) = att.edge.vlan_mut() {
                *p = parent.clone();
                *t = tag;
            }
            att.claims = vec![crate::model::vlan_claim(&parent, tag)];
            match self.store.create(att).await {
                // Taken between our read and our write: the next free one.
                Err(Error::Claimed { .. }) => continue,
                r => return r,
            }
        }
    }

    /// The intent of an edge with a device of its own (an SR-IOV VF): the binding picks one no
    /// record of this store claims, and it is claimed in the intent's own transaction; an
    /// attach that claimed it first makes this one pick again (a VF asked for by address is
    /// not swapped for another: that is an error).
    async fn claim_device(
        &self,
        att: &mut Attachment,
        network: &Network,
        binding: &dyn EdgeBinding,
        prefix: &str,
    ) -> Result<()> {
        for _ in 0..64 {
            let held: std::collections::BTreeSet<String> = self
                .store
                .claims(prefix)
                .await?
                .into_iter()
                .map(|(c, _)| c)
                .collect();
            let Some(claim) = binding.pick_device(att, network, &held).await? else {
                return self.store.create(att).await;
            };
            att.claims = vec![claim];
            match self.store.create(att).await {
                Err(Error::Claimed { .. }) if !att.edge.device_requested() => continue,
                r => return r,
            }
        }
        Err(Error::Internal(format!(
            "attachment {}: every {prefix} device picked was claimed by another attach first, 64 times",
            att.id
        )))
    }

    /// The logical attachment: the backend creates the port (or the existing one is claimed)
    /// and assigns its addresses; recorded as `PortCreated`. `plan`: where its addresses will
    /// be pairs (nested bindings), which the backend may mark on the port.
    pub(crate) async fn create_port(
        &self,
        att: &mut Attachment,
        backend: &dyn Backend,
        network: &Network,
        binding: &dyn EdgeBinding,
        plan: Option<crate::binding::PairPlan>,
    ) -> Result<()> {
        let req = PortRequest {
            name: att.port_name.clone(),
            network: network.clone(),
            owner: OwnerMark {
                host: self.host.clone(),
                attachment: att.id.clone(),
            },
            ips: att.requested_ip.into_iter().collect(),
            mac: att.requested_mac.clone(),
            security_groups: att.security_groups.clone(),
            role: binding.port_role(att),
            pairs_on: plan,
        };
        let port = match &att.existing_port {
            // Taken from a pool with the intent: made already, nothing to ask the backend.
            None if att.pool_slot.is_some() && att.port.is_some() => {
                att.phase = Phase::PortCreated;
                self.store.note(att).await?;
                hooks::point("after-port").await;
                return Ok(());
            }
            Some(existing) => {
                backend
                    .require_existing_ports()?
                    .claim_port(existing, &req.owner, network, &req.role)
                    .await?
            }
            None => backend
                .create_ports(std::slice::from_ref(&req))
                .await?
                .pop()
                .ok_or_else(|| Error::Internal(format!("backend made no port {}", req.name)))?,
        };
        att.port = Some(port);
        att.phase = Phase::PortCreated;
        // Progress note: a crash recovers from "intent" the same way, so no fsync.
        self.store.note(att).await?;
        hooks::point("after-port").await;
        Ok(())
    }

    /// Nested bindings: the port's addresses allowed on the VM's port too, each pair recorded
    /// durably before it is added (rollback removes exactly those).
    pub(crate) async fn add_pairs(
        &self,
        att: &mut Attachment,
        backend: &dyn Backend,
        plan: Option<crate::binding::PairPlan>,
    ) -> Result<()> {
        let Some(plan) = plan else {
            return Ok(());
        };
        let ips: Vec<_> = att
            .port
            .as_ref()
            .map(|p| p.ips.iter().map(|i| i.addr()).collect())
            .unwrap_or_default();
        att.pairs = ips
            .into_iter()
            .map(|ip| crate::model::PairRecord {
                parent: plan.parent.clone(),
                pair: crate::backend::AddressPair {
                    mac: plan.mac.clone(),
                    ip,
                },
            })
            .collect();
        let pairs = backend.require_address_pairs()?;
        self.store.put(att).await?;
        for p in &att.pairs {
            pairs.add_address_pair(&p.parent, &p.pair).await?;
        }
        hooks::point("after-pair").await;
        Ok(())
    }

    /// The edge: interface made and bound to the port (`Plugged`), then the wait until the data
    /// plane forwards for it (OVS: ovn-controller set ovn-installed). With `refresh_up`, the
    /// backend's own "up" is read again for the result when that is a local read.
    /// Returns (plug, up) ms.
    pub(crate) async fn plug_edge(
        &self,
        att: &mut Attachment,
        backend: &dyn Backend,
        binding: &dyn EdgeBinding,
        refresh_up: bool,
    ) -> Result<(f64, f64)> {
        let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1000.0;
        let port = att
            .port
            .clone()
            .ok_or_else(|| Error::Internal(format!("attachment {} has no port", att.id)))?;
        let t1 = std::time::Instant::now();
        binding.plug(att, &port).await?;
        let plug_ms = ms(t1);
        att.phase = Phase::Plugged;
        self.store.note(att).await?;
        hooks::point("after-plug").await;
        let t2 = std::time::Instant::now();
        binding.wait_ready(att, self.port_up_timeout).await?;
        if binding.ready_by_backend() {
            // Nested: the VM has no switch of the backend's to ask; the backend's hypervisors
            // applying the change (the child port, the pair) is what makes it forward.
            self.wait_applied(backend, att, "attach").await;
        }
        let up_ms = ms(t2);
        hooks::point("after-up").await;
        if refresh_up && backend.reads_are_local() {
            // Report what the backend says of the port now (NB `up` may lag ovn-installed).
            let live = backend.port(&port_ref(att)).await;
            if let (Some(p), Ok(Some(live))) = (att.port.as_mut(), live) {
                p.up = live.up;
            }
        }
        Ok((plug_ms, up_ms))
    }

    /// Removes whatever an attachment may have created, found by the names in its record; then
    /// the record. Best effort: every step runs, every error is reported, and the record stays
    /// (for reconcile) unless everything went.
    pub async fn roll_back(&self, att: &Attachment) -> Result<()> {
        let binding = self.registry.binding(Some(att.edge.kind()));
        // A port Courier made for an edge of this host's switch goes first, then the edge: the
        // switch never reports the port down to its backend (Neutron would process a status
        // change for a port it is deleting: the DELETE then stalls for ≈ 0.5 s behind it).
        // An existing or pooled port is given back only once nothing here uses it, and a
        // nested edge's pairs and reservation go after the interface that used them.
        let port_first = att.existing_port.is_none()
            && att.pool_slot.is_none()
            && att.pairs.is_empty()
            && binding.as_ref().is_ok_and(|b| !b.ready_by_backend());
        let mut errors = Vec::new();
        let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1000.0;
        let mut port_ms = 0.0;
        if port_first {
            let t = std::time::Instant::now();
            errors.extend(self.remove_port(att).await);
            port_ms = ms(t);
            hooks::point("detach-after-port").await;
        }
        let t = std::time::Instant::now();
        match binding {
            Ok(b) => errors.extend(b.unplug(att).await),
            Err(e) => errors.push(e),
        }
        let edge_ms = ms(t);
        hooks::point("detach-after-unplug").await;
        if !port_first {
            let t = std::time::Instant::now();
            errors.extend(self.remove_port(att).await);
            port_ms = ms(t);
            hooks::point("detach-after-port").await;
        }
        tracing::debug!(attachment = %att.id, port_first, port_ms, edge_ms, errors = errors.len(), "torn down");
        if !errors.is_empty() {
            return Err(Error::Teardown {
                id: att.id.clone(),
                errors,
            });
        }
        self.store.delete(&att.id).await?;
        Ok(())
    }

    /// The logical side of a teardown: the pairs it put on a VM's port, then its port (a port
    /// Courier made is deleted; an existing port it bound is given back as it was). Every step
    /// runs; the errors are returned.
    async fn remove_port(&self, att: &Attachment) -> Vec<Error> {
        let backend = match self.registry.backend(&att.backend) {
            Ok(b) => b,
            Err(e) => return vec![e],
        };
        let mut errors = Vec::new();
        for p in &att.pairs {
            let removed = match backend.require_address_pairs() {
                Ok(pairs) => pairs.remove_address_pair(&p.parent, &p.pair).await,
                Err(e) => Err(e),
            };
            if let Err(e) = removed {
                errors.push(e);
            }
        }
        if !errors.is_empty() {
            // The reservation is what makes each pair this attachment's: deleted first, its
            // address could go to another container while the VM's port still allows it, and a
            // retry could take off a sibling's identical pair. It stays, with the record, for
            // the retry (reconcile).
            return errors;
        }
        let removed = match &att.existing_port {
            Some(existing) => {
                let owner = OwnerMark {
                    host: self.host.clone(),
                    attachment: att.id.clone(),
                };
                match backend.require_existing_ports() {
                    Ok(e) => e.release_port(existing, &owner).await,
                    Err(e) => Err(e),
                }
            }
            None if att.pool_slot.is_some() => self.give_back(att, &**backend).await.map(|_| true),
            None => backend.delete_port(&port_ref(att), &self.host).await,
        };
        match removed {
            // A vlan child whose port was never recorded (a crash between the backend's steps,
            // which the port's own removal may not cover: it may never have joined the trunk
            // made for it): what the backend made for the VM's children goes if no child uses it.
            Ok(_) if att.port.is_none() => {
                if let (Some((parent, _)), Some(children)) =
                    (att.edge.vlan(), backend.vlan_child_ports())
                {
                    if let Err(e) = children.tidy_children_of(parent).await {
                        errors.push(e);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
        errors
    }

    /// Removes the container's interface. Idempotent: succeeds when nothing is attached (then
    /// only the bindings' derived names on this host are looked at; no backend is asked).
    /// Runs on its own task, to the end, whatever happens to the caller.
    pub async fn detach(self: &Arc<Self>, key: &AttachmentKey) -> Result<Option<Attachment>> {
        let (this, key) = (self.clone(), key.clone());
        run_to_end(async move {
            let r = this.detach_flow(&key).await;
            this.metrics.op("detach", outcome(&r));
            r
        })
        .await
    }

    async fn detach_flow(&self, key: &AttachmentKey) -> Result<Option<Attachment>> {
        let _guard = self.lock_for(key).await;
        match self.record(key).await? {
            Some(att) => self.detach_locked(att).await.map(Some),
            None => {
                // Nothing recorded: undo what the bindings may have under this key's derived
                // names on this host (local and cheap; e.g. a store restored from a backup).
                let id = self.id_of(key);
                let req = AttachRequest {
                    container_id: key.container_id.clone(),
                    ifname: key.ifname.clone(),
                    ..Default::default()
                };
                let mut errors = Vec::new();
                for b in self.registry.bindings() {
                    let probe = Attachment::new(&req, id.clone(), "", b.edge_for(&id, &req));
                    errors.extend(b.unplug(&probe).await);
                }
                // Backends are not asked: nothing is made before its intent is durable, so
                // without a record no backend holds anything of this key (a lost store's
                // leftovers carry ownership marks, and the reconcile sweep finds them). So a
                // repeated DEL is cheap, and one backend's outage never fails another's DEL.
                if errors.is_empty() {
                    Ok(None)
                } else {
                    Err(Error::Teardown { id, errors })
                }
            }
        }
    }

    /// Detaches `att`, the record as it is now; the caller holds its lock.
    pub(crate) async fn detach_locked(&self, mut att: Attachment) -> Result<Attachment> {
        let t0 = std::time::Instant::now();
        att.phase = Phase::Detaching;
        self.store.put(&att).await?;
        hooks::point("detach-after-mark").await;
        self.roll_back(&att).await?;
        self.wait_applied_if_nested(&att).await;
        tracing::info!(attachment = %att.id, container = %att.container_id, ifname = %att.ifname,
            binding = att.edge.kind(), total_ms = t0.elapsed().as_secs_f64() * 1000.0, "detached");
        Ok(att)
    }

    /// Nested edges: waits (bounded) until the backend's hypervisors have applied what a
    /// detach removed (the pair, the child port), so traffic is cut when DEL returns. A lag
    /// only warns: the detach is done.
    async fn wait_applied_if_nested(&self, att: &Attachment) {
        let nested = self
            .registry
            .binding(Some(att.edge.kind()))
            .is_ok_and(|b| b.ready_by_backend());
        if let (true, Ok(backend)) = (nested, self.registry.backend(&att.backend)) {
            self.wait_applied(&**backend, att, "detach").await;
        }
    }

    /// `Backend::wait_applied` for the VM's port of `att` (a vlan child's parent, else the port
    /// its pairs are on), bounded by min(port_up_timeout, 5 s). A hypervisor that lags (or is
    /// down) delays nested attaches and detaches but fails neither: a warning says so.
    async fn wait_applied(&self, backend: &dyn Backend, att: &Attachment, what: &str) {
        let id = &att.id;
        let vm_port = att
            .edge
            .vlan()
            .map(|(parent, _)| parent)
            .or_else(|| att.pairs.first().map(|p| p.parent.as_str()));
        let timeout = self.port_up_timeout.min(Duration::from_secs(5));
        match backend.wait_applied(vm_port, timeout).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(attachment = %id, timeout_ms = timeout.as_millis() as u64,
                "not every hypervisor of the backend has applied the {what} yet; going on"),
            Err(e) => tracing::warn!(attachment = %id, error = %e,
                "could not wait for the hypervisors to apply the {what}"),
        }
    }

    /// A forgotten DEL: detaches `seen` (a Ready record from an unlocked snapshot) only if,
    /// under its lock, the record is still that generation, still Ready, and its netns is
    /// certainly gone (see `netns::Probe`). A restarted container (DEL, then ADD with a new
    /// netns) is a new generation and is never touched.
    pub async fn detach_forgotten(&self, seen: &Attachment) -> Result<Forgotten> {
        let _guard = self.lock_for(&seen.key()).await;
        let Some(now) = self.store.get(&seen.id).await? else {
            return Ok(Forgotten::Kept);
        };
        if now.generation != seen.generation
            || now.phase != Phase::Ready
            || crate::staged::sandbox_may_be_coming(&now, self.lease_timeout)
        {
            return Ok(Forgotten::Kept);
        }
        let probe = crate::netns::probe(&now.netns);
        if !probe.certainly_gone(now.netns_inode) {
            if let crate::netns::Probe::Unknown(e) = &probe {
                tracing::warn!(attachment = %now.id, netns = %now.netns, error = %e,
                    "cannot tell whether the netns still exists; keeping the attachment");
            }
            return Ok(Forgotten::Kept);
        }
        tracing::warn!(attachment = %now.id, netns = %now.netns, probe = ?probe, "netns is gone; detaching");
        self.detach_locked(now).await?;
        Ok(Forgotten::Detached)
    }

    /// Undoes an attach whose caller never saw it complete (same generation only).
    pub(crate) async fn undo_unseen(&self, att: &Attachment) {
        let _guard = self.lock_for(&att.key()).await;
        let r = match self.store.get(&att.id).await {
            Ok(Some(now)) if now.generation == att.generation => {
                self.detach_locked(now).await.map(|_| ())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            tracing::error!(attachment = %att.id, error = %e, "undoing an unseen attach failed; reconcile will retry");
        }
    }

    /// CNI CHECK: the attachment is complete, its logical port still exists with the same
    /// addresses, and the edge is as plugged — in `netns` when given (CNI_NETNS: the namespace
    /// the runtime asks about), else in the recorded one.
    pub async fn check(&self, key: &AttachmentKey, netns: Option<&str>) -> Result<Attachment> {
        let r = self.check_flow(key, netns).await;
        self.metrics.op("check", outcome(&r));
        r
    }

    async fn check_flow(&self, key: &AttachmentKey, netns: Option<&str>) -> Result<Attachment> {
        let att = self.record(key).await?.ok_or_else(|| Error::NotAttached {
            container_id: key.container_id.clone(),
            ifname: key.ifname.clone(),
        })?;
        let id = att.id.clone();
        let fail = |what: String| Error::CheckFailed {
            id: id.clone(),
            what,
        };
        if att.phase != Phase::Ready {
            return Err(fail(format!("attachment is {:?}, not ready", att.phase)));
        }
        let recorded = att
            .port
            .clone()
            .ok_or_else(|| fail("no logical port recorded".into()))?;
        let backend = self.registry.backend(&att.backend)?;
        let binding = self.registry.binding(Some(att.edge.kind()))?;
        let live: LogicalPort = backend
            .port(&port_ref(&att))
            .await?
            .ok_or_else(|| fail(format!("logical port {} is gone", att.port_name)))?;
        if live.mac != recorded.mac || live.ips != recorded.ips {
            return Err(fail(format!(
                "logical port {} now has {} {:?}, attached with {} {:?}",
                live.name, live.mac, live.ips, recorded.mac, recorded.ips
            )));
        }
        let mut asked = att.clone();
        if let Some(ns) = netns.filter(|n| !n.is_empty()) {
            asked.netns = ns.to_string();
        }
        binding.check(&asked, &recorded).await?;
        Ok(att)
    }

    /// CNI GC: detaches every attachment on `network` whose key is not in `valid`.
    /// CNI GC from `runtime`: detaches the attachments on `network` that runtime made and
    /// `valid` does not list. The CLI's, Docker's and other runtimes' are never touched; a
    /// record made before the maker was recorded counts as any runtime's CNI attachment.
    pub async fn gc(
        self: &Arc<Self>,
        network: &str,
        runtime: &str,
        valid: &[AttachmentKey],
    ) -> Result<Vec<Attachment>> {
        let (this, network, runtime, valid) = (
            self.clone(),
            network.to_string(),
            runtime.to_string(),
            valid.to_vec(),
        );
        run_to_end(async move {
            let r = this.gc_flow(&network, &runtime, &valid).await;
            this.metrics.op("gc", outcome(&r));
            r
        })
        .await
    }

    async fn gc_flow(
        &self,
        network: &str,
        runtime: &str,
        valid: &[AttachmentKey],
    ) -> Result<Vec<Attachment>> {
        let valid: HashSet<AttachmentKey> = valid.iter().cloned().collect();
        let mut removed = Vec::new();
        let mut errors = Vec::new();
        for att in self.store.list().await?.attachments {
            // Only what this runtime made: its list says nothing of the others'.
            let its = match &att.made_by {
                Some(crate::model::MadeBy::Cni { runtime: r }) => r == runtime,
                Some(_) => false,
                None => att.docker.is_none(),
            };
            if att.network == network && its && !valid.contains(&att.key()) {
                match self.detach_flow(&att.key()).await {
                    Ok(Some(a)) => removed.push(a),
                    Ok(None) => {}
                    Err(e) => errors.push(e),
                }
            }
        }
        if errors.is_empty() {
            Ok(removed)
        } else {
            Err(Error::Teardown {
                id: format!("GC of network {network}"),
                errors,
            })
        }
    }

    pub async fn list(&self) -> Result<crate::state::Listing> {
        self.store.list().await
    }
}

/// The optional abilities attachment `att`'s binding needs of its backend (by its port's
/// role): address pairs for a reservation (nested ipvlan/macvlan), VLAN child ports for a
/// child (nested vlan). Checked before any side effect (`Backend::require`); an existing port
/// (`--port`) is checked where it is inspected, before the intent too.
pub(crate) fn needs_of(att: &Attachment, binding: &dyn EdgeBinding) -> Vec<Ability> {
    match binding.port_role(att) {
        PortRole::Reservation => vec![Ability::AddressPairs],
        PortRole::Child { .. } => vec![Ability::VlanChildPorts],
        PortRole::Bound | PortRole::Direct(_) => vec![],
    }
}

/// The binding for an existing port of Neutron vnic type `vnic`: a direct port (an SR-IOV
/// VF's) takes the sriov binding when the request names none; a binding named against the
/// port's type is refused, saying which fits.
pub(crate) fn binding_for_vnic(
    registry: &crate::registry::Registry,
    req: &AttachRequest,
    port: &str,
    vnic: Option<&str>,
    chosen: Arc<dyn EdgeBinding>,
) -> Result<Arc<dyn EdgeBinding>> {
    let direct = vnic == Some("direct");
    match (&req.binding, direct) {
        (None, true) => registry.binding(Some("sriov")).cloned().map_err(|_| {
            Error::InvalidInput(format!(
                "port {port} has binding:vnic_type direct (an SR-IOV VF's), and this host has no sriov binding: add \"sriov\" to bindings and set [sriov] physical_device_mappings, or attach a port of vnic_type normal"
            ))
        }),
        (Some(_), true) if chosen.kind() != "sriov" => Err(Error::InvalidInput(format!(
            "port {port} has binding:vnic_type direct (an SR-IOV VF's), and the {} binding cannot serve it: attach it with the sriov binding",
            chosen.kind()
        ))),
        (Some(_), false) if chosen.kind() == "sriov" => Err(Error::InvalidInput(format!(
            "port {port} has binding:vnic_type {}, and the sriov binding serves direct ports only: attach it with another binding, or use a port of vnic_type direct",
            vnic.unwrap_or("normal")
        ))),
        _ => Ok(chosen),
    }
}

/// An existing port is bound as it is (veth-ovs): a nested binding's port is a reservation or
/// a VLAN child Courier makes itself, so it cannot take one.
pub(crate) fn refuse_existing_port_unless_bound(
    port: &str,
    att: &Attachment,
    binding: &dyn EdgeBinding,
) -> Result<()> {
    if matches!(
        binding.port_role(att),
        PortRole::Bound | PortRole::Direct(_)
    ) && !binding.ready_by_backend()
    {
        return Ok(());
    }
    Err(Error::InvalidInput(format!(
        "port {port} exists already, and the {} binding makes a port of its own (a reservation or a VLAN child of the VM's port): drop the port, or attach it with the veth-ovs binding",
        binding.kind()
    )))
}

/// The record's port: by the backend's id once known, else by the derived name.
pub(crate) fn port_ref(att: &Attachment) -> PortRef {
    PortRef {
        id: att
            .port
            .as_ref()
            .map(|p| p.id.clone())
            .filter(|i| !i.is_empty()),
        name: att.port_name.clone(),
    }
}

/// Runs `fut` on a task of its own and waits for it; if the caller is dropped, the task goes on.
pub(crate) async fn run_to_end<T: Send + 'static>(
    fut: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(fut)
        .await
        .map_err(|e| Error::Internal(format!("flow task: {e}")))?
}

pub(crate) fn outcome<T>(r: &Result<T>) -> std::result::Result<(), u32> {
    r.as_ref().map(|_| ()).map_err(Error::code)
}

/// One async mutex per attachment id, so ADD/DEL/GC for the same interface never interleave.
#[derive(Default)]
pub(crate) struct KeyedLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

pub(crate) struct KeyedGuard<'a> {
    locks: &'a KeyedLocks,
    id: String,
    _inner: tokio::sync::OwnedMutexGuard<()>,
}

impl KeyedLocks {
    pub(crate) async fn lock(&self, id: &str) -> KeyedGuard<'_> {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(id.to_string()).or_default().clone()
        };
        let inner = m.lock_owned().await;
        KeyedGuard {
            locks: self,
            id: id.to_string(),
            _inner: inner,
        }
    }
}

impl Drop for KeyedGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.locks.map.lock().unwrap_or_else(|p| p.into_inner());
        // Drop the entry when nobody else waits on it (ours + the map's = 2 references).
        if map.get(&self.id).is_some_and(|m| Arc::strong_count(m) <= 2) {
            map.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fake::FakeOvn;
    use crate::binding::fake::FakeEdge;

    /// A vlan binding double: the fake edge with a VM port "vm1" that needs tags.
    struct TaggedEdge(FakeEdge);

    #[async_trait::async_trait]
    impl EdgeBinding for TaggedEdge {
        fn kind(&self) -> &'static str {
            "vlan"
        }
        fn edge_for(&self, _id: &str, _req: &AttachRequest) -> crate::model::EdgeState {
            crate::model::EdgeState::Vlan {
                master: "eth0".into(),
                parent: String::new(),
                tag: 0,
            }
        }
        async fn vlan_parent(&self, _backend: &dyn Backend) -> Result<Option<String>> {
            Ok(Some("vm1".into()))
        }
        fn held_tags(&self) -> std::collections::BTreeSet<u16> {
            self.0
                .held_tags
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        }
        fn port_role(&self, _att: &Attachment) -> crate::backend::PortRole {
            crate::backend::PortRole::Child {
                parent: "vm1".into(),
                tag: 0,
            }
        }
        async fn health(&self) -> Result<()> {
            Ok(())
        }
        async fn validate(&self, _att: &Attachment) -> Result<()> {
            Ok(())
        }
        async fn plug(&self, att: &Attachment, port: &LogicalPort) -> Result<()> {
            self.0.plug(att, port).await
        }
        fn handoff_ifname(&self, att: &Attachment) -> String {
            self.0.handoff_ifname(att)
        }
        async fn wait_ready(&self, att: &Attachment, t: Duration) -> Result<()> {
            self.0.wait_ready(att, t).await
        }
        async fn unplug(&self, att: &Attachment) -> Vec<Error> {
            self.0.unplug(att).await
        }
        async fn check(&self, att: &Attachment, port: &LogicalPort) -> Result<()> {
            self.0.check(att, port).await
        }
        async fn owned(&self) -> Result<Vec<crate::binding::EdgeOrphan>> {
            Ok(vec![])
        }
        async fn remove(&self, _o: &crate::binding::EdgeOrphan) -> Result<bool> {
            Ok(false)
        }
    }

    fn intent(n: usize) -> Attachment {
        let req = AttachRequest {
            container_id: format!("c{n}"),
            ifname: "eth0".into(),
            netns: "/nonexistent".into(),
            network: "web".into(),
            ..Default::default()
        };
        let id = format!("{n:012x}");
        let edge = TaggedEdge(FakeEdge::new()).edge_for(&id, &req);
        Attachment::new(&req, id, "ovn", edge)
    }

    fn tag(a: &Attachment) -> u16 {
        match &a.edge {
            crate::model::EdgeState::Vlan { tag, .. } => *tag,
            e => panic!("{e:?}"),
        }
    }

    /// The tag allocator: skips the backend's child ports and the store's claims, gives
    /// concurrent intents distinct tags, frees a tag with its record, and refuses cleanly (no
    /// record written) when every tag is taken.
    #[tokio::test]
    async fn vlan_tags_are_the_lowest_free_claimed_with_the_intent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let backend = Arc::new(FakeOvn::new());
        backend.add_children("vm1", [1, 2, 4]);
        let binding = TaggedEdge(FakeEdge::new());
        let registry = Arc::new(Registry::new(vec![backend.clone()], vec![], None));
        let a = Arc::new(Attacher::new(
            store.clone(),
            registry,
            Duration::from_secs(1),
            "h1",
        ));
        let mut first = intent(0);
        a.create_intent(&mut first, &*backend, &Network::default(), &binding)
            .await
            .unwrap();
        assert_eq!(tag(&first), 3, "1, 2 and 4 are the backend's");
        assert_eq!(first.claims, vec![crate::model::vlan_claim("vm1", 3)]);
        // 40 at once: all distinct, none of the backend's, the lowest free ones.
        let made = futures::future::join_all((1..=40).map(|n| {
            let (a, backend) = (a.clone(), backend.clone());
            async move {
                let mut att = intent(n);
                a.create_intent(
                    &mut att,
                    &*backend,
                    &Network::default(),
                    &TaggedEdge(FakeEdge::new()),
                )
                .await
                .map(|_| tag(&att))
            }
        }))
        .await;
        let mut tags: Vec<u16> = made.into_iter().map(|r| r.unwrap()).collect();
        tags.sort();
        let want: Vec<u16> = (5..=44).collect();
        assert_eq!(tags, want);
        // A record's claim goes with it: its tag is the next one given.
        store.delete(&first.id).await.unwrap();
        let mut again = intent(100);
        a.create_intent(&mut again, &*backend, &Network::default(), &binding)
            .await
            .unwrap();
        assert_eq!(tag(&again), 3);
        // Tags held on the VM's NIC by links Courier did not make are skipped too.
        let on_nic = TaggedEdge(FakeEdge::new());
        on_nic.0.held_tags.lock().unwrap().extend([45, 46]);
        let mut skips = intent(101);
        a.create_intent(&mut skips, &*backend, &Network::default(), &on_nic)
            .await
            .unwrap();
        assert_eq!(tag(&skips), 47, "45 and 46 are held on the NIC");
        // Every tag taken: refused, nothing written.
        backend.add_children("vm1", 48..=4094);
        let before = store.list().await.unwrap().attachments.len();
        let mut full = intent(200);
        let e = a
            .create_intent(&mut full, &*backend, &Network::default(), &on_nic)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Exhausted { .. }), "{e}");
        assert!(e.to_string().contains("vm1"), "{e}");
        assert!(e.to_string().contains("(2 of those)"), "{e}");
        assert_eq!(store.list().await.unwrap().attachments.len(), before);
        assert!(store.get(&full.id).await.unwrap().is_none());
    }

    /// A nested ipvlan/macvlan double: the fake edge, its port a reservation whose address
    /// would be a pair on the VM's port "vm1".
    struct PairedEdge(FakeEdge);

    #[async_trait::async_trait]
    impl EdgeBinding for PairedEdge {
        fn kind(&self) -> &'static str {
            "macvlan"
        }
        fn edge_for(&self, id: &str, req: &AttachRequest) -> crate::model::EdgeState {
            self.0.edge_for(id, req)
        }
        fn port_role(&self, _att: &Attachment) -> PortRole {
            PortRole::Reservation
        }
        async fn pair_plan(
            &self,
            _att: &Attachment,
            backend: &dyn Backend,
        ) -> Result<Option<crate::binding::PairPlan>> {
            backend.require_address_pairs()?;
            Ok(Some(crate::binding::PairPlan {
                parent: "vm1".into(),
                mac: "02:00:00:00:00:01".into(),
            }))
        }
        async fn health(&self) -> Result<()> {
            Ok(())
        }
        async fn validate(&self, _att: &Attachment) -> Result<()> {
            Ok(())
        }
        async fn plug(&self, att: &Attachment, port: &LogicalPort) -> Result<()> {
            self.0.plug(att, port).await
        }
        fn handoff_ifname(&self, att: &Attachment) -> String {
            self.0.handoff_ifname(att)
        }
        async fn wait_ready(&self, att: &Attachment, t: Duration) -> Result<()> {
            self.0.wait_ready(att, t).await
        }
        async fn unplug(&self, att: &Attachment) -> Vec<Error> {
            self.0.unplug(att).await
        }
        async fn check(&self, att: &Attachment, port: &LogicalPort) -> Result<()> {
            self.0.check(att, port).await
        }
        async fn owned(&self) -> Result<Vec<crate::binding::EdgeOrphan>> {
            Ok(vec![])
        }
        async fn remove(&self, _o: &crate::binding::EdgeOrphan) -> Result<bool> {
            Ok(false)
        }
    }

    /// A binding that needs an ability its backend lacks (the fake has no address pairs), or
    /// an existing port on a backend without existing ports, is refused with an error naming
    /// the backend and the ability before any side effect: no record, no port, nothing
    /// plugged. What it has (VLAN child ports) it reports.
    #[tokio::test]
    async fn a_backend_without_an_ability_is_refused_before_any_side_effect() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let backend = Arc::new(FakeOvn::new());
        assert_eq!(
            Ability::of(&*backend),
            vec![Ability::VlanChildPorts],
            "the fake has VLAN child ports only"
        );
        backend
            .create_network(&crate::model::NetworkSpec {
                name: "web".into(),
                subnet: Some("10.9.0.0/24".parse().unwrap()),
                gateway: None,
                subnet6: None,
                gateway6: None,
                existing: None,
                exclude_ips: vec![],
            })
            .await
            .unwrap();
        let paired = Arc::new(PairedEdge(FakeEdge::new()));
        let plain = Arc::new(FakeEdge::new());
        let registry = Arc::new(Registry::new(
            vec![backend.clone()],
            vec![plain.clone(), paired.clone()],
            None,
        ));
        let a = Arc::new(Attacher::new(
            store.clone(),
            registry,
            Duration::from_secs(1),
            "h1",
        ));
        let req = |binding: &str, port: Option<&str>| AttachRequest {
            container_id: format!("c-{binding}"),
            ifname: "eth0".into(),
            netns: "/proc/self/ns/net".into(),
            network: "web".into(),
            binding: Some(binding.into()),
            port: port.map(String::from),
            device: None,
            ..Default::default()
        };
        let e = a.attach(&req("macvlan", None)).await.unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("backend ovn") && msg.contains("address pairs"),
            "{msg}"
        );
        let e = a.attach(&req("veth-ovs", Some("p1"))).await.unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("backend ovn") && msg.contains("has no existing ports to bind"),
            "{msg}"
        );
        assert!(store.list().await.unwrap().attachments.is_empty());
        assert!(backend.port_names().is_empty());
        assert!(paired.0.plugged().is_empty() && plain.plugged().is_empty());
        // Not even an intent to roll back: nothing was unplugged either.
        assert!(paired.0.unplugged().is_empty() && plain.unplugged().is_empty());
        // What it has goes through.
        a.attach(&req("veth-ovs", None)).await.unwrap();
        assert_eq!(backend.port_names().len(), 1);
    }

    #[test]
    fn an_existing_port_is_for_veth_ovs_only() {
        let att = intent(1);
        let e = refuse_existing_port_unless_bound("p1", &att, &TaggedEdge(FakeEdge::new()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("veth-ovs") && e.contains("p1"), "{e}");
        assert!(refuse_existing_port_unless_bound("p1", &att, &FakeEdge::new()).is_ok());
    }
}
