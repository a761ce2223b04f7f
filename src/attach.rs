//! THE attach flow, top to bottom: intent → logical port → edge → ready.
//! Detach is the same in reverse. The intent is durable in the store before any side effect,
//! and every name is derived from the attachment id, so a crash anywhere can be undone
//! (see reconcile.rs).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::{Backend, PortRequest};
use crate::binding::EdgeBinding;
use crate::crash;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::model::{validate_ifname, AttachRequest, Attachment, AttachmentKey, LogicalPort, Phase};
use crate::state::Store;

pub struct Attacher {
    pub metrics: Arc<Metrics>,
    pub store: Store,
    pub backend: Arc<dyn Backend>,
    pub binding: Arc<dyn EdgeBinding>,
    pub port_up_timeout: Duration,
    pub(crate) locks: KeyedLocks,
}

impl Attacher {
    pub fn new(
        store: Store,
        backend: Arc<dyn Backend>,
        binding: Arc<dyn EdgeBinding>,
        port_up_timeout: Duration,
    ) -> Self {
        Attacher {
            metrics: Arc::new(Metrics::default()),
            store,
            backend,
            binding,
            port_up_timeout,
            locks: KeyedLocks::default(),
        }
    }

    /// Gives the container an interface on the network; returns the complete attachment.
    pub async fn attach(&self, req: &AttachRequest) -> Result<Attachment> {
        let start = std::time::Instant::now();
        let r = self.attach_flow(req).await;
        self.metrics.op("attach", outcome(&r));
        if r.is_ok() {
            self.metrics.attach_took(start.elapsed());
        }
        r
    }

    async fn attach_flow(&self, req: &AttachRequest) -> Result<Attachment> {
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
        let mut att = Attachment::new(req);
        let _guard = self.locks.lock(&att.id).await;
        if let Some(existing) = self.store.get(&att.id).await? {
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
        self.backend.network(&req.network).await?;
        att.netns_inode = Some(crate::netns::identify(&att.netns)?);
        self.binding.validate(&att).await?;

        // 2. Intent: durable before anything exists.
        self.store.put(&att).await?;
        crash::point("after-intent");

        let result = self.attach_steps(&mut att).await;
        match result {
            Ok(()) => Ok(att),
            Err(e) => {
                tracing::warn!(attachment = %att.id, error = %e, "attach failed; rolling back");
                if let Err(re) = self.roll_back(&att).await {
                    tracing::error!(attachment = %att.id, error = %re, "rollback incomplete; reconcile will retry");
                }
                Err(e)
            }
        }
    }

    async fn attach_steps(&self, att: &mut Attachment) -> Result<()> {
        let t0 = std::time::Instant::now();
        let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1000.0;
        // 3. Logical attachment: the backend creates the port and assigns its addresses.
        let port = self
            .backend
            .create_port(
                &att.network,
                &PortRequest {
                    name: att.port_name.clone(),
                    attachment_id: att.id.clone(),
                    ip: att.requested_ip,
                    mac: att.requested_mac.clone(),
                },
            )
            .await?;
        let port_ms = ms(t0);
        att.port = Some(port.clone());
        att.phase = Phase::PortCreated;
        // Progress note: a crash recovers from "intent" the same way, so no fsync.
        self.store.note(att).await?;
        crash::point("after-port");
        let t1 = std::time::Instant::now();

        // 4. Edge binding: interface in the netns, bound to the logical port.
        self.binding.plug(att, &port).await?;
        let plug_ms = ms(t1);
        att.phase = Phase::Plugged;
        self.store.note(att).await?;
        crash::point("after-plug");
        let t2 = std::time::Instant::now();

        // 5. Wait until the data plane forwards for it.
        self.binding.wait_ready(att, self.port_up_timeout).await?;
        let up_ms = ms(t2);
        crash::point("after-up");
        if let Some(p) = att.port.as_mut() {
            p.up = true;
        }
        att.phase = Phase::Ready;
        self.store.put(att).await?;
        crash::point("after-ready");
        tracing::info!(attachment = %att.id, container = %att.container_id, ifname = %att.ifname,
            network = %att.network, port = %port.name, ips = ?port.ips,
            port_ms, plug_ms, up_ms, total_ms = ms(t0), "attached");
        Ok(())
    }

    /// Removes whatever an attachment may have created, found by derived names; then its record.
    pub async fn roll_back(&self, att: &Attachment) -> Result<()> {
        self.binding.unplug(att).await?;
        crash::point("detach-after-unplug");
        self.backend.delete_port(&att.port_name).await?;
        crash::point("detach-after-port");
        self.store.delete(&att.id).await?;
        Ok(())
    }

    /// Removes the container's interface. Idempotent: succeeds when nothing is attached, and
    /// still sweeps derived names in case a crash left something the store never recorded.
    pub async fn detach(&self, key: &AttachmentKey) -> Result<Option<Attachment>> {
        let r = self.detach_flow(key).await;
        self.metrics.op("detach", outcome(&r));
        r
    }

    async fn detach_flow(&self, key: &AttachmentKey) -> Result<Option<Attachment>> {
        let id = key.id();
        let _guard = self.locks.lock(&id).await;
        let stored = self.store.get(&id).await?;
        let mut att = match stored.clone() {
            Some(a) => a,
            None => Attachment::new(&AttachRequest {
                container_id: key.container_id.clone(),
                ifname: key.ifname.clone(),
                netns: String::new(),
                network: String::new(),
                ip: None,
                mac: None,
            }),
        };
        if stored.is_some() {
            att.phase = Phase::Detaching;
            self.store.put(&att).await?;
            crash::point("detach-after-mark");
        }
        self.roll_back(&att).await?;
        if stored.is_some() {
            tracing::info!(attachment = %att.id, container = %att.container_id, ifname = %att.ifname, "detached");
        }
        Ok(stored)
    }

    /// CNI CHECK: the attachment is complete, its logical port still exists with the same
    /// addresses, and the edge is as plugged (the binding checks its own readiness).
    pub async fn check(&self, key: &AttachmentKey) -> Result<Attachment> {
        let r = self.check_flow(key).await;
        self.metrics.op("check", outcome(&r));
        r
    }

    async fn check_flow(&self, key: &AttachmentKey) -> Result<Attachment> {
        let id = key.id();
        let att = self
            .store
            .get(&id)
            .await?
            .ok_or_else(|| Error::NotAttached {
                container_id: key.container_id.clone(),
                ifname: key.ifname.clone(),
            })?;
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
        let live: LogicalPort = self
            .backend
            .port(&att.port_name)
            .await?
            .ok_or_else(|| fail(format!("logical port {} is gone", att.port_name)))?;
        if live.mac != recorded.mac || live.ips != recorded.ips {
            return Err(fail(format!(
                "logical port {} now has {} {:?}, attached with {} {:?}",
                live.name, live.mac, live.ips, recorded.mac, recorded.ips
            )));
        }
        self.binding.check(&att, &recorded).await?;
        Ok(att)
    }

    /// CNI GC: detaches every attachment on `network` whose key is not in `valid`.
    pub async fn gc(&self, network: &str, valid: &[AttachmentKey]) -> Result<Vec<Attachment>> {
        let r = self.gc_flow(network, valid).await;
        self.metrics.op("gc", outcome(&r));
        r
    }

    async fn gc_flow(&self, network: &str, valid: &[AttachmentKey]) -> Result<Vec<Attachment>> {
        let valid: HashSet<String> = valid.iter().map(AttachmentKey::id).collect();
        let mut removed = Vec::new();
        for att in self.store.list().await? {
            if att.network == network && !valid.contains(&att.id) {
                if let Some(a) = self.detach(&att.key()).await? {
                    removed.push(a);
                }
            }
        }
        Ok(removed)
    }

    pub async fn list(&self) -> Result<Vec<Attachment>> {
        self.store.list().await
    }
}

fn outcome<T>(r: &Result<T>) -> std::result::Result<(), u32> {
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
