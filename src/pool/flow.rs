//! The pools' part of the attach flow, and their upkeep: take, give back, refill, drain and
//! recovery. The store is the truth (`state/slots.rs`); `Pools` keeps only what is not worth
//! a record: the refill rule's state, the rate limits and the counters.
//!
//! - **Take** (`Attacher::take_slot`, from `create_intent`): a free slot of the attach's key
//!   is claimed (`poolslot:<pool>:<slot>`) in the intent's own transaction, which also checks
//!   the slot is still there and ready; a concurrent attach that claimed it first makes this
//!   one pick another. The intent then already names the port: no backend write.
//! - **Give back** (`Attacher::give_back`, the detach's port step, after the edge is gone):
//!   the port is checked as it was made (cleaned where a take could have changed it), and the
//!   claim goes with the attachment's record; a pool over its max, pools turned off, or a port
//!   no longer as made, deletes it instead.
//! - **Refill**: slot records (`Creating`) are written durably, then one bulk create, then the
//!   slots are made `Ready` with their ports.
//! - **Drain**: a free slot's record goes first (a take can no longer claim it), then its port.
//! - **Recovery** (per backend, before any of its slots is handed out): `Creating` slots are
//!   undone by name, ready ones are confirmed against the backend's ports by their marks.
//!
//! A crash between any two steps leaves either a slot record (recovery) or a port whose mark
//! names a slot no record has (the reconcile sweep deletes it).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{slot_claim, PoolConfig, PoolKey, PoolSlot, PoolState, RateLimit, Refill, SlotState};
use crate::attach::Attacher;
use crate::backend::{Backend, OwnerMark, PortQuery, PortRef, PortRequest, PortRole};
use crate::binding::EdgeBinding;
use crate::config::PoolSettings;
use crate::error::{Error, Result};
use crate::hooks;
use crate::model::{Attachment, Network};

/// The bindings whose ports a pool can hold (a plain port bound on this host's switch).
const POOLED_BINDINGS: &[&str] = &["veth-ovs"];
/// The backends whose pools are wired so far (Neutron: one bulk `POST /ports`, its ports made
/// with `binding:host_id` = this host, so a take writes nothing).
const POOLED_BACKENDS: &[&str] = &["ovn", "neutron"];

/// The daemon's pools: settings, and per pool what the store does not record.
pub struct Pools {
    pub settings: PoolSettings,
    inner: Mutex<Inner>,
    /// A take or a miss wakes the refill loop.
    pub wake: tokio::sync::Notify,
    /// One refill at a time (the loop's and `courier pool fill`'s), so none overfills.
    refilling: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Inner {
    pools: BTreeMap<String, Runtime>,
    rates: HashMap<String, RateLimit>,
    /// Backends whose slots were confirmed since start: only their slots are handed out.
    recovered: HashSet<String>,
    /// Networks being deleted: their pools neither refill nor serve.
    closing: HashSet<String>,
}

struct Runtime {
    key: PoolKey,
    network: String,
    refill: Refill,
    stats: PoolStats,
}

/// A pool's counters since the daemon started.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PoolStats {
    /// Attaches served from the pool.
    pub hits: u64,
    /// Attaches of the pool's key that found it empty (served cold).
    pub misses: u64,
    pub refills: u64,
    pub refill_errors: u64,
    /// Ports made by refills.
    pub made: u64,
    pub last_refill_ms: Option<f64>,
    pub last_error: Option<String>,
}

/// One pool as `courier pool list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolView {
    pub pool: String,
    pub network: String,
    pub key: PoolKey,
    pub free: usize,
    pub taken: usize,
    pub creating: usize,
    /// The refill rule's current batch (None: pools are off for this network now).
    pub batch: Option<usize>,
    pub min: Option<usize>,
    pub max: Option<usize>,
    /// False until this backend's slots were confirmed after start.
    pub recovered: bool,
    pub stats: PoolStats,
}

/// One slot as `courier pool show` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SlotView {
    pub slot: PoolSlot,
    /// The attachment that holds it (None: free, or still being made).
    pub holder: Option<String>,
}

/// What a recovery pass did for one backend.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recovery {
    /// Slots whose bulk create never finished: their ports (if any) deleted by name.
    pub undone: Vec<String>,
    /// Ready slots whose port the backend no longer has (or has otherwise): dropped.
    pub dropped: Vec<String>,
    pub confirmed: usize,
}

impl Pools {
    pub fn new(settings: PoolSettings) -> Pools {
        Pools {
            settings,
            inner: Mutex::new(Inner::default()),
            wake: tokio::sync::Notify::new(),
            refilling: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Knows pool `key` from now on (the refill loop keeps it filled while pools are on).
    fn register(&self, key: &PoolKey, network: &str, config: &PoolConfig) -> String {
        let id = key.id();
        self.lock()
            .pools
            .entry(id.clone())
            .or_insert_with(|| Runtime {
                key: key.clone(),
                network: network.to_string(),
                refill: Refill::new(config.clone(), Instant::now()),
                stats: PoolStats::default(),
            });
        id
    }

    fn count(&self, pool: &str, f: impl FnOnce(&mut Runtime)) {
        if let Some(r) = self.lock().pools.get_mut(pool) {
            f(r);
        }
    }

    pub fn is_recovered(&self, backend: &str) -> bool {
        self.lock().recovered.contains(backend)
    }

    fn is_closing(&self, network: &str) -> bool {
        self.lock().closing.contains(network)
    }

    fn set_recovered(&self, backend: &str) {
        self.lock().recovered.insert(backend.to_string());
    }

    /// The pools known (registered or found in the store), by id.
    fn known(&self) -> Vec<(String, PoolKey, String)> {
        self.lock()
            .pools
            .iter()
            .map(|(id, r)| (id.clone(), r.key.clone(), r.network.clone()))
            .collect()
    }
}

/// The pool key an attach would be served from, if any: pools on for its network, a binding
/// and backend pools serve, and nothing asked that only a port of its own can give (an
/// address, a MAC, an existing port, a device).
pub(crate) fn key_for(
    settings: &PoolSettings,
    att: &Attachment,
    backend: &dyn Backend,
    network: &Network,
    binding: &dyn EdgeBinding,
) -> Option<(PoolKey, PoolConfig)> {
    let config = settings.config_for(&network.name)?;
    let plain = att.requested_ip.is_none()
        && att.requested_mac.is_none()
        && att.existing_port.is_none()
        && !att.edge.device_requested()
        && binding.device_claim_prefix().is_none()
        && binding.port_role(att) == PortRole::Bound;
    if !plain
        || !POOLED_BINDINGS.contains(&binding.kind())
        || !POOLED_BACKENDS.contains(&backend.id())
    {
        return None;
    }
    Some((
        PoolKey {
            backend: backend.id().to_string(),
            network: network.backend_id.clone(),
            project: String::new(),
            security_groups: att.security_groups.iter().cloned().collect(),
            binding: binding.kind().to_string(),
            parent: None,
        },
        config,
    ))
}

/// A pick among `n` free slots that differs between concurrent attaches (so they do not all
/// race for the first one): by the attachment id and the attempt.
fn pick(n: usize, att: &str, attempt: usize) -> usize {
    let h = att
        .bytes()
        .fold(attempt as u64 ^ 0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    (h % n as u64) as usize
}

impl Attacher {
    /// Serves the intent from a pool when its key has one: claims a free slot in the intent's
    /// own transaction (`Store::create`) and names its port in the record. Ok(false): no pool
    /// for this attach, or none free (the caller goes the cold way; the refill is woken).
    pub(crate) async fn take_slot(
        &self,
        att: &mut Attachment,
        backend: &dyn Backend,
        network: &Network,
        binding: &dyn EdgeBinding,
    ) -> Result<bool> {
        let Some((key, config)) = key_for(&self.pools.settings, att, backend, network, binding)
        else {
            return Ok(false);
        };
        if self.pools.is_closing(&network.name) {
            return Ok(false);
        }
        let pool = self.pools.register(&key, &network.name, &config);
        if !self.pools.is_recovered(backend.id()) {
            // Its slots are not confirmed yet (start-up): none is handed out before.
            self.pools.count(&pool, |r| r.stats.misses += 1);
            self.metrics.pool_take(&pool, &network.name, false);
            return Ok(false);
        }
        for attempt in 0..64 {
            let free: Vec<PoolSlot> = self
                .store
                .slots(Some(&pool))
                .await?
                .into_iter()
                .filter(|(s, holder)| s.state == SlotState::Ready && holder.is_none())
                .map(|(s, _)| s)
                .collect();
            if free.is_empty() {
                break;
            }
            let slot = &free[pick(free.len(), &att.id, attempt)];
            let Some(port) = slot.port.clone() else {
                continue;
            };
            if backend.reads_are_local() {
                // A port deleted behind Courier's back is not handed out (a local read).
                let live = backend
                    .port(&PortRef {
                        id: Some(port.id.clone()),
                        name: port.name.clone(),
                    })
                    .await?;
                if live.is_none() {
                    tracing::warn!(pool = %pool, slot = %slot.id, port = %port.name,
                        "pooled port is gone from the backend; dropping its slot");
                    self.store.delete_slot(&slot.store_key(), None).await?;
                    continue;
                }
            }
            if slot.edge && !binding.pool_edge_ready(&slot.id).await {
                tracing::warn!(pool = %pool, slot = %slot.id, "pooled edge is not whole; dropping its slot");
                self.drop_slot(slot, None).await?;
                continue;
            }
            let (claims, name, edge) =
                (att.claims.clone(), att.port_name.clone(), att.edge.clone());
            if slot.edge {
                match binding.pooled_edge(&att.id, &slot.id) {
                    Some(e) => att.edge = e,
                    None => continue,
                }
            }
            att.claims.push(slot_claim(&slot.store_key()));
            att.pool_slot = Some(slot.store_key());
            att.port_name = slot.port_name.clone();
            att.port = Some(port);
            match self.store.create(att).await {
                Ok(()) => {
                    self.pools.count(&pool, |r| {
                        r.stats.hits += 1;
                        r.refill.took(Instant::now());
                    });
                    self.pools.wake.notify_one();
                    self.metrics.pool_take(&pool, &network.name, true);
                    tracing::debug!(attachment = %att.id, pool = %pool, slot = %slot.id, "took a pooled port");
                    return Ok(true);
                }
                Err(e) => {
                    att.claims = claims;
                    att.pool_slot = None;
                    att.port_name = name;
                    att.port = None;
                    att.edge = edge;
                    if !matches!(e, Error::Claimed { .. }) {
                        return Err(e);
                    }
                }
            }
        }
        self.pools.count(&pool, |r| r.stats.misses += 1);
        self.metrics.pool_take(&pool, &network.name, false);
        self.pools.wake.notify_one();
        Ok(false)
    }

    /// The detach's port step for a pooled port (the edge is gone by now): back to its pool
    /// as it was made, or deleted (pool over its max, pools off for the network, the slot or
    /// the port not as made). The claim goes with the attachment's record, after this.
    pub(crate) async fn give_back(&self, att: &Attachment, backend: &dyn Backend) -> Result<()> {
        let Some(key) = &att.pool_slot else {
            return Ok(());
        };
        let port = PortRef {
            id: att.port.as_ref().map(|p| p.id.clone()),
            name: att.port_name.clone(),
        };
        let slot = self.store.slot_record(key).await?;
        let keep = match &slot {
            Some(slot) => self.keeps(slot, backend).await?,
            None => false,
        };
        if keep {
            hooks::point("pool-before-return").await;
            tracing::debug!(attachment = %att.id, slot = %key, "pooled port given back");
            return Ok(());
        }
        // Deleted: the slot record first (no take can claim it), then its edge and port; a
        // crash in between leaves what the sweep deletes (their marks name a slot no record has).
        match &slot {
            Some(slot) => {
                self.drop_slot(slot, Some(&att.id)).await?;
            }
            None => {
                backend.delete_port(&port, &self.host).await?;
            }
        }
        tracing::info!(attachment = %att.id, slot = %key, port = %att.port_name, "pooled port deleted instead of given back");
        Ok(())
    }

    /// Whether `slot`'s port goes back to its pool: pools on for its network, the pool not
    /// over its max, and the port still as the pool made it.
    async fn keeps(&self, slot: &PoolSlot, backend: &dyn Backend) -> Result<bool> {
        let Some(config) = self.pools.settings.config_for(&slot.network) else {
            return Ok(false);
        };
        if config.max != 0 {
            let total = self.store.slots(Some(&slot.pool)).await?.len();
            if total > config.max {
                return Ok(false);
            }
        }
        let Some(made) = &slot.port else {
            return Ok(false);
        };
        if slot.edge {
            let whole = match self.registry.binding(Some(&slot.key.binding)) {
                Ok(b) => b.pool_edge_ready(&slot.id).await,
                Err(_) => false,
            };
            if !whole {
                return Ok(false);
            }
        }
        let live = backend
            .port(&PortRef {
                id: Some(made.id.clone()),
                name: made.name.clone(),
            })
            .await?;
        Ok(live.is_some_and(|p| p.mac == made.mac && p.ips == made.ips))
    }

    /// One refill of pool `pool`: as many ports as its rule wants now (or `count`, up to its
    /// max), made in one bulk create after their slots are recorded. Returns the ports made.
    pub async fn refill_pool(&self, pool: &str, count: Option<usize>) -> Result<usize> {
        let Some((key, network)) = self
            .pools
            .known()
            .into_iter()
            .find(|(id, _, _)| id == pool)
            .map(|(_, k, n)| (k, n))
        else {
            return Err(Error::InvalidInput(format!(
                "no pool {pool}: see `courier pool list`"
            )));
        };
        let Some(config) = self.pools.settings.config_for(&network) else {
            return Ok(0);
        };
        let _one = self.pools.refilling.lock().await;
        if self.pools.is_closing(&network) {
            return Ok(0);
        }
        let (backend, net) = self.registry.network(&network).await?;
        if !self.pools.is_recovered(backend.id()) {
            if count.is_some() {
                return Err(Error::Unavailable(format!(
                    "the {} pools are being recovered (start-up reconcile); try again in a moment",
                    backend.id()
                )));
            }
            return Ok(0);
        }
        if backend.id() != key.backend || net.backend_id != key.network {
            return Err(Error::BackendState(format!(
                "pool {pool}: network {network} is now {} {} (the pool's is {} {}); drain it",
                backend.id(),
                net.backend_id,
                key.backend,
                key.network
            )));
        }
        let slots = self.store.slots(Some(pool)).await?;
        let state = PoolState {
            free: slots
                .iter()
                .filter(|(s, h)| s.state == SlotState::Ready && h.is_none())
                .count(),
            taken: slots.iter().filter(|(_, h)| h.is_some()).count(),
            creating: slots
                .iter()
                .filter(|(s, _)| s.state == SlotState::Creating)
                .count(),
        };
        let n = {
            let mut inner = self.pools.lock();
            let now = Instant::now();
            let want = match count {
                Some(c) if config.max != 0 => c.min(config.max.saturating_sub(slots.len())),
                Some(c) => c,
                None => inner
                    .pools
                    .get_mut(pool)
                    .map(|r| r.refill.wanted(state, now))
                    .unwrap_or(0),
            };
            let rate = inner
                .rates
                .entry(key.backend.clone())
                .or_insert_with(|| RateLimit::new(config.creates_per_sec, now));
            rate.grant(want, now)
        };
        if n == 0 {
            return Ok(0);
        }
        let t0 = Instant::now();
        let r = self.make_slots(&key, &net, n).await;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        self.pools.count(pool, |rt| {
            rt.stats.refills += 1;
            rt.stats.last_refill_ms = Some(ms);
            match &r {
                Ok(made) => {
                    rt.stats.made += *made as u64;
                    rt.stats.last_error = None;
                }
                Err(e) => {
                    rt.stats.refill_errors += 1;
                    rt.stats.last_error = Some(e.to_string());
                }
            }
        });
        self.metrics.pool_refill(pool, &network, ms, r.is_ok());
        match &r {
            Ok(made) => {
                tracing::info!(pool = %pool, network = %network, made, ms, "pool refilled")
            }
            Err(e) => {
                tracing::warn!(pool = %pool, network = %network, error = %e, "pool refill failed")
            }
        }
        r
    }

    /// `courier pool fill`: `count` ports for pool `pool` (up to its max), in refills the
    /// backend's rate limit allows, waiting for its tokens (at most 60 s). Returns the ports
    /// made.
    pub async fn fill(&self, pool: &str, count: usize) -> Result<usize> {
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        let mut made = 0;
        while made < count {
            let n = self.refill_pool(pool, Some(count - made)).await?;
            made += n;
            if n == 0 {
                let full = self.pool_views().await?.into_iter().any(|v| {
                    v.pool == pool
                        && v.max
                            .is_some_and(|m| m != 0 && v.free + v.taken + v.creating >= m)
                });
                if full || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        Ok(made)
    }

    /// `n` slots recorded, their ports made in one bulk create, the slots made ready.
    async fn make_slots(&self, key: &PoolKey, net: &Network, n: usize) -> Result<usize> {
        let backend = self.registry.backend(&key.backend)?.clone();
        let mut slots = self.store.new_slots(&self.host, key, &net.name, n).await?;
        hooks::point("pool-after-slots").await;
        let reqs: Vec<PortRequest> = slots
            .iter()
            .map(|s| PortRequest {
                name: s.port_name.clone(),
                network: net.clone(),
                owner: OwnerMark {
                    host: self.host.clone(),
                    attachment: s.id.clone(),
                },
                ips: vec![],
                mac: None,
                security_groups: key.security_groups.iter().cloned().collect(),
                role: PortRole::Bound,
                pairs_on: None,
            })
            .collect();
        match backend.create_ports(&reqs).await {
            Ok(ports) => {
                hooks::point("pool-after-create").await;
                for (s, p) in slots.iter_mut().zip(ports) {
                    s.state = SlotState::Ready;
                    s.port = Some(p);
                }
                // The edges too, where the binding pre-plugs them: bound and ready.
                let binding = self.registry.binding(Some(&key.binding))?.clone();
                if binding.pre_plugs() {
                    let made: Vec<(String, crate::model::LogicalPort)> = slots
                        .iter()
                        .filter_map(|s| Some((s.id.clone(), s.port.clone()?)))
                        .collect();
                    if let Err(e) = binding.make_pool_edges(&made, self.port_up_timeout).await {
                        for s in &slots {
                            let _ = self.undo_slot(&*backend, s).await;
                        }
                        return Err(e);
                    }
                    hooks::point("pool-after-edges").await;
                    for s in &mut slots {
                        s.edge = true;
                    }
                }
                self.store.put_slots(&slots, true).await?;
                Ok(slots.len())
            }
            Err(e) => {
                // The backend undid what it made of the batch (best effort); the slots go
                // with whatever is left, by name.
                for s in &slots {
                    let _ = self.undo_slot(&*backend, s).await;
                }
                Err(e)
            }
        }
    }

    /// A slot that never became ready: its port deleted by name (if it was made), then its
    /// record.
    async fn undo_slot(&self, backend: &dyn Backend, s: &PoolSlot) -> Result<()> {
        self.remove_slot_edge(s).await?;
        backend
            .delete_port(
                &PortRef {
                    id: None,
                    name: s.port_name.clone(),
                },
                &self.host,
            )
            .await?;
        self.store.delete_slot(&s.store_key(), None).await?;
        Ok(())
    }

    /// A slot gone for good: its record first (Ok(false), nothing done, when an attachment
    /// other than `holder` claims it), then its edge, then its port.
    async fn drop_slot(&self, slot: &PoolSlot, holder: Option<&str>) -> Result<bool> {
        if !self.store.delete_slot(&slot.store_key(), holder).await? {
            return Ok(false);
        }
        self.remove_slot_edge(slot).await?;
        let backend = self.registry.backend(&slot.key.backend)?;
        backend
            .delete_port(
                &PortRef {
                    id: slot.port.as_ref().map(|p| p.id.clone()),
                    name: slot.port_name.clone(),
                },
                &self.host,
            )
            .await?;
        Ok(true)
    }

    /// Slot `slot`'s pre-plugged edge, by its derived names (whether it was recorded or not:
    /// a crash may have come while it was being made).
    async fn remove_slot_edge(&self, slot: &PoolSlot) -> Result<()> {
        let Ok(binding) = self.registry.binding(Some(&slot.key.binding)) else {
            return Ok(());
        };
        let errors = binding.remove_pool_edge(&slot.id).await;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Teardown {
                id: format!("pool slot {}", slot.id),
                errors,
            })
        }
    }

    /// Deletes the free ports of every pool on `network` (all pools when None): the slot
    /// record first, then the port. Taken slots stay (their detach gives them back, and with
    /// the pool off for the network, deletes them). Returns the ports deleted; every error is
    /// reported.
    pub async fn drain(&self, network: Option<&str>) -> Result<usize> {
        let mut done = 0;
        let mut errors = Vec::new();
        for (slot, holder) in self.store.slots(None).await? {
            if holder.is_some() || network.is_some_and(|n| n != slot.network) {
                continue;
            }
            let r = self.drop_slot(&slot, None).await;
            match r {
                Ok(true) => done += 1,
                Ok(false) => {}
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(done)
        } else {
            Err(Error::Teardown {
                id: format!("pool drain ({done} ports deleted)"),
                errors,
            })
        }
    }

    /// Deletes network `name` in `backend` after draining its pools (which neither refill nor
    /// serve meanwhile); they are forgotten once it is gone. A taken pooled port keeps the
    /// network in use, as any port does.
    pub async fn delete_network_and_pools(&self, backend: &dyn Backend, name: &str) -> Result<()> {
        self.pools.lock().closing.insert(name.to_string());
        let r = async {
            {
                let _one = self.pools.refilling.lock().await;
            }
            self.drain(Some(name)).await?;
            backend.delete_network(name).await
        }
        .await;
        let mut inner = self.pools.lock();
        inner.closing.remove(name);
        if r.is_ok() {
            inner.pools.retain(|_, rt| rt.network != name);
        }
        r
    }

    /// Recovery of `backend`'s pools, before any of its slots is handed out: every slot's
    /// pool is known again; `Creating` slots are undone by name; free ready slots are
    /// confirmed against the ports the backend has with this host's marks (gone, or not as
    /// made: dropped, and the port deleted). Then its slots may be taken.
    pub async fn recover_pools(&self, backend: &dyn Backend) -> Result<Recovery> {
        let mut rec = Recovery::default();
        let slots: Vec<(PoolSlot, Option<String>)> = self
            .store
            .slots(None)
            .await?
            .into_iter()
            .filter(|(s, _)| s.key.backend == backend.id())
            .collect();
        let marked: HashMap<String, crate::model::LogicalPort> = if slots.is_empty() {
            HashMap::new()
        } else {
            backend
                .find_ports(&PortQuery::OwnedBy {
                    host: self.host.clone(),
                })
                .await?
                .into_iter()
                .filter_map(|p| Some((p.attachment.clone()?, p)))
                .collect()
        };
        for (slot, holder) in &slots {
            if let Some(config) = self.pools.settings.config_for(&slot.network) {
                self.pools.register(&slot.key, &slot.network, &config);
            } else {
                // Known for `pool list` and drain, never refilled.
                self.pools
                    .register(&slot.key, &slot.network, &PoolConfig::default());
            }
            match slot.state {
                SlotState::Creating => {
                    self.undo_slot(backend, slot).await?;
                    rec.undone.push(slot.id.clone());
                }
                SlotState::Ready if holder.is_none() => {
                    let mut as_made = match (marked.get(&slot.id), &slot.port) {
                        (Some(live), Some(made)) => {
                            live.id == made.id && live.mac == made.mac && live.ips == made.ips
                        }
                        _ => false,
                    };
                    if as_made && slot.edge {
                        as_made = match self.registry.binding(Some(&slot.key.binding)) {
                            Ok(b) => b.pool_edge_ready(&slot.id).await,
                            Err(_) => false,
                        };
                    }
                    if as_made {
                        rec.confirmed += 1;
                    } else {
                        self.store.delete_slot(&slot.store_key(), None).await?;
                        self.remove_slot_edge(slot).await?;
                        if marked.contains_key(&slot.id) {
                            backend
                                .delete_port(
                                    &PortRef {
                                        id: None,
                                        name: slot.port_name.clone(),
                                    },
                                    &self.host,
                                )
                                .await?;
                        }
                        rec.dropped.push(slot.id.clone());
                    }
                }
                SlotState::Ready => rec.confirmed += 1,
            }
        }
        // The pools the configuration fills from the start.
        for name in &self.pools.settings.networks {
            if let Some(config) = self.pools.settings.config_for(name) {
                if let Ok((b, net)) = self.registry.network(name).await {
                    if b.id() == backend.id() {
                        let key = PoolKey {
                            backend: b.id().to_string(),
                            network: net.backend_id.clone(),
                            project: String::new(),
                            security_groups: Default::default(),
                            binding: self
                                .registry
                                .binding(None)
                                .map(|b| b.kind().to_string())
                                .unwrap_or_default(),
                            parent: None,
                        };
                        self.pools.register(&key, name, &config);
                    }
                }
            }
        }
        self.pools.set_recovered(backend.id());
        if !rec.undone.is_empty() || !rec.dropped.is_empty() {
            tracing::warn!(backend = backend.id(), undone = ?rec.undone, dropped = ?rec.dropped, confirmed = rec.confirmed, "pools recovered");
        } else {
            tracing::info!(
                backend = backend.id(),
                confirmed = rec.confirmed,
                "pools recovered"
            );
        }
        self.pools.wake.notify_one();
        Ok(rec)
    }

    /// Refills every known pool that wants ports (pools on, backend recovered); an error is
    /// one pool's only.
    pub async fn refill_all(&self) {
        for (id, _, _) in self.pools.known() {
            let _ = self.refill_pool(&id, None).await;
        }
    }

    /// The pool serving network `network` with its default binding and no security groups,
    /// made known (for `courier pool fill NETWORK`).
    pub async fn pool_of_network(&self, network: &str, binding: Option<&str>) -> Result<String> {
        let (backend, net) = self.registry.network(network).await?;
        let binding = self.registry.binding(binding)?;
        let config = self.pools.settings.config_for(network).ok_or_else(|| {
            Error::InvalidInput(format!(
                "pools are off for network {network}: set [pool] enabled = true (COURIER_POOL=1) or [pool.overrides.{network}] enabled = true"
            ))
        })?;
        if !POOLED_BINDINGS.contains(&binding.kind()) || !POOLED_BACKENDS.contains(&backend.id()) {
            return Err(Error::InvalidInput(format!(
                "network {network} ({} backend, {} binding): pools serve {} ports with the {} binding so far",
                backend.id(),
                binding.kind(),
                POOLED_BACKENDS.join(", "),
                POOLED_BINDINGS.join(", ")
            )));
        }
        let key = PoolKey {
            backend: backend.id().to_string(),
            network: net.backend_id.clone(),
            project: String::new(),
            security_groups: Default::default(),
            binding: binding.kind().to_string(),
            parent: None,
        };
        Ok(self.pools.register(&key, network, &config))
    }

    /// Every known pool, with its counts from the store.
    pub async fn pool_views(&self) -> Result<Vec<PoolView>> {
        let slots = self.store.slots(None).await?;
        let mut inner_views: Vec<(String, PoolKey, String, PoolStats, usize)> = {
            let inner = self.pools.lock();
            inner
                .pools
                .iter()
                .map(|(id, r)| {
                    (
                        id.clone(),
                        r.key.clone(),
                        r.network.clone(),
                        r.stats.clone(),
                        r.refill.batch(),
                    )
                })
                .collect()
        };
        // Pools the store has that recovery has not made known yet (a backend not connected).
        for (slot, _) in &slots {
            if !inner_views.iter().any(|(id, ..)| *id == slot.pool) {
                inner_views.push((
                    slot.pool.clone(),
                    slot.key.clone(),
                    slot.network.clone(),
                    PoolStats::default(),
                    0,
                ));
            }
        }
        let mut out = Vec::new();
        for (id, key, network, stats, batch) in inner_views {
            let mine: Vec<_> = slots.iter().filter(|(s, _)| s.pool == id).collect();
            let config = self.pools.settings.config_for(&network);
            out.push(PoolView {
                free: mine
                    .iter()
                    .filter(|(s, h)| s.state == SlotState::Ready && h.is_none())
                    .count(),
                taken: mine.iter().filter(|(_, h)| h.is_some()).count(),
                creating: mine
                    .iter()
                    .filter(|(s, _)| s.state == SlotState::Creating)
                    .count(),
                batch: config.as_ref().map(|_| batch),
                min: config.as_ref().map(|c| c.min),
                max: config.as_ref().map(|c| c.max),
                recovered: self.pools.is_recovered(&key.backend),
                pool: id,
                network,
                key,
                stats,
            });
        }
        Ok(out)
    }

    /// The slots of pool `pool`.
    pub async fn slot_views(&self, pool: &str) -> Result<Vec<SlotView>> {
        Ok(self
            .store
            .slots(Some(pool))
            .await?
            .into_iter()
            .map(|(slot, holder)| SlotView { slot, holder })
            .collect())
    }

    /// A pool named by its id or by its network (the one pool of that network; an error when
    /// it has several).
    pub async fn find_pool(&self, name: &str) -> Result<String> {
        let known = self.pools.known();
        if known.iter().any(|(id, _, _)| id == name) {
            return Ok(name.to_string());
        }
        let of_net: Vec<_> = known.iter().filter(|(_, _, n)| n == name).collect();
        match of_net.as_slice() {
            [one] => Ok(one.0.clone()),
            [] => Err(Error::InvalidInput(format!(
                "no pool {name:?} (by id or network): see `courier pool list`"
            ))),
            more => Err(Error::InvalidInput(format!(
                "network {name} has {} pools ({}): name one by id",
                more.len(),
                more.iter()
                    .map(|(id, _, _)| id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}
