//! Port pools (issue 22): logical ports made ahead of time in bulk, so the common attach
//! makes no backend write on its path.
//!
//! - [`PoolKey`]: which ports are interchangeable. A pooled port serves any attach whose
//!   request has the same backend network, project, security groups (as a set), binding and,
//!   for nested children, VM port; its id names the pool.
//! - [`PoolConfig`]: min, max, batch, refill interval, the batch ceiling and the backend rate;
//!   with the mapping to kuryr-kubernetes' and AWS VPC CNI's knobs.
//! - [`Refill`]: how many ports to create now, given the pool's state: the adaptive batch and
//!   the rate limit.
//! - [`PoolSlot`]: one pooled port, as the store records it (durably, before the backend makes
//!   it). A slot is *free* when it is ready and no attachment claims it
//!   ([`slot_claim`], in the attachment's intent transaction: see `flow.rs`).
//!
//! The rules here do no I/O and are unit-tested on their own; `flow.rs` is the pool's part
//! of the attach flow and its refill, drain and recovery.

pub mod flow;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What makes pooled ports interchangeable: an attach may take any free port of its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PoolKey {
    /// The backend's id ("ovn", "neutron").
    pub backend: String,
    /// The network's backend id.
    pub network: String,
    /// The project (Neutron); empty on OVN direct.
    pub project: String,
    /// Security groups as a set: order in a request does not make another pool.
    pub security_groups: BTreeSet<String>,
    /// The edge binding kind ("veth-ovs", "vlan", ...): it decides how the port was made.
    pub binding: String,
    /// Nested children: the VM's port they are children of (each keeps its own tag).
    pub parent: Option<String>,
}

impl PoolKey {
    /// A short stable id (48 bits of sha256 over the fields, in hex), for slot names and marks.
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        let groups: Vec<&str> = self.security_groups.iter().map(String::as_str).collect();
        for part in [
            self.backend.as_str(),
            self.network.as_str(),
            self.project.as_str(),
            &groups.join(","),
            self.binding.as_str(),
            self.parent.as_deref().unwrap_or(""),
        ] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        h.finalize()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The prefix of every pool slot claim.
pub const SLOT_CLAIM_PREFIX: &str = "poolslot:";

/// The claim an attachment holding pooled slot `slot` writes with its intent: two attaches
/// can never hold one slot.
pub fn slot_claim(slot: &str) -> String {
    format!("{SLOT_CLAIM_PREFIX}{slot}")
}

/// A pool slot id: `p` and 11 hex digits (sha256 over the host and a store-wide counter), so
/// it never looks like an attachment id (12 hex digits) in a port's ownership mark, and its
/// port name `courier-<slot>` fits every backend.
pub fn slot_id(host: &str, counter: u64) -> String {
    let mut h = Sha256::new();
    h.update(host.as_bytes());
    h.update([0u8]);
    h.update(b"pool-slot");
    h.update([0u8]);
    h.update(counter.to_be_bytes());
    let hex: String = h.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("p{}", &hex[..11])
}

/// True when an ownership mark names a pool slot rather than an attachment.
pub fn is_slot_id(mark: &str) -> bool {
    mark.len() == 12 && mark.starts_with('p') && mark[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Where a slot is in its life.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SlotState {
    /// Recorded before the backend's bulk create: the port may or may not exist (a crash
    /// here is undone by name at recovery).
    Creating,
    /// The port exists with its addresses: free unless an attachment claims the slot.
    Ready,
}

/// One pooled port, as the store records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolSlot {
    pub id: String,
    /// The pool's key and its id ([`PoolKey::id`]).
    pub key: PoolKey,
    pub pool: String,
    /// The Courier network (name) the port is on.
    pub network: String,
    pub state: SlotState,
    /// The port's name in the backend (`courier-<slot>`).
    pub port_name: String,
    /// The port as the backend made it (Ready only).
    #[serde(default)]
    pub port: Option<crate::model::LogicalPort>,
    /// Its edge is pre-plugged too (the binding's `make_pool_edges`): bound, flows installed.
    #[serde(default)]
    pub edge: bool,
    /// Unix seconds.
    pub created_at: u64,
}

impl PoolSlot {
    /// Its key in the store and in claims: `<pool>:<slot>` (a pool's slots are one range).
    pub fn store_key(&self) -> String {
        format!("{}:{}", self.pool, self.id)
    }

    pub fn new(id: String, key: &PoolKey, network: &str) -> PoolSlot {
        PoolSlot {
            port_name: crate::model::port_name(&id),
            id,
            pool: key.id(),
            key: key.clone(),
            network: network.to_string(),
            state: SlotState::Creating,
            port: None,
            edge: false,
            created_at: crate::model::unix_now(),
        }
    }
}

/// A pool's knobs. How they map to the peers' (so an operator can carry a setting over):
///
/// | Courier | kuryr-kubernetes (`[vif_pool]`) | AWS VPC CNI |
/// |---|---|---|
/// | `min` (free ports kept ready) | `ports_pool_min` (5) | `WARM_IP_TARGET` |
/// | `max` (free + taken; 0 = no limit) | `ports_pool_max` (0) | (ENI capacity) |
/// | `batch` (ports per refill) | `ports_pool_batch` (10) | `WARM_ENI_TARGET` × IPs per ENI |
/// | `refill_interval` | `ports_pool_update_frequency` (20 s) | (reconciler period) |
/// | `min_total` (ports made even if none is taken) | — | `MINIMUM_IP_TARGET` |
///
/// kuryr-kubernetes' defaults are Courier's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub min: usize,
    /// 0: no limit.
    pub max: usize,
    pub batch: usize,
    pub min_total: usize,
    pub refill_interval: Duration,
    /// The adaptive batch never exceeds this (nor `max`).
    pub max_batch: usize,
    /// Ports per second this host may create in one backend across its pools (bulk creates
    /// that overwhelm Neutron are a known failure of kuryr-kubernetes' pools).
    pub creates_per_sec: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            min: 5,
            max: 0,
            batch: 10,
            min_total: 0,
            refill_interval: Duration::from_secs(20),
            max_batch: 80,
            creates_per_sec: 50,
        }
    }
}

impl PoolConfig {
    /// Refuses settings that cannot work, saying which and what to set.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch == 0 {
            return Err("pool batch is 0: set it to 1 or more (ports made per refill)".into());
        }
        if self.max != 0 && self.min > self.max {
            return Err(format!(
                "pool min {} is above max {}: raise max (0 = no limit) or lower min",
                self.min, self.max
            ));
        }
        if self.max != 0 && self.min_total > self.max {
            return Err(format!(
                "pool min_total {} is above max {}: raise max or lower min_total",
                self.min_total, self.max
            ));
        }
        if self.max_batch < self.batch {
            return Err(format!(
                "pool max_batch {} is below batch {}: raise max_batch",
                self.max_batch, self.batch
            ));
        }
        if self.creates_per_sec == 0 {
            return Err(
                "pool creates_per_sec is 0: no refill could ever run; set 1 or more".into(),
            );
        }
        if self.refill_interval.is_zero() {
            return Err("pool refill_interval is 0: give seconds, e.g. 20".into());
        }
        Ok(())
    }
}

/// A pool's state as the refill rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolState {
    /// Ready and not claimed.
    pub free: usize,
    /// Claimed by attachments.
    pub taken: usize,
    /// Being created (refill intents written, create not answered yet).
    pub creating: usize,
}

/// The refill rule of one pool: an adaptive batch, and a token bucket shared per backend.
///
/// **Adaptive batch.** The batch starts at `batch`. At the end of each refill interval, if
/// more ports were taken during it than the current batch (the pool drained faster than one
/// refill per interval makes up), the batch doubles, up to `max_batch` (and `max`); if fewer
/// than half the current batch were taken, it halves, never below `batch`.
///
/// **When and how many.** A refill runs when `free + creating < min`, or
/// `free + taken + creating < min_total`; it asks for the current batch, or what `max` still
/// allows, and at least what brings the pool to `min` and `min_total`. The rate limit may
/// grant fewer now: the rest waits for the next call.
#[derive(Debug, Clone)]
pub struct Refill {
    config: PoolConfig,
    batch: usize,
    taken_in_interval: usize,
    interval_started: Instant,
}

impl Refill {
    pub fn new(config: PoolConfig, now: Instant) -> Refill {
        Refill {
            batch: config.batch,
            config,
            taken_in_interval: 0,
            interval_started: now,
        }
    }

    /// The batch the next refill asks for.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// An attach took a port from the pool.
    pub fn took(&mut self, now: Instant) {
        self.roll(now);
        self.taken_in_interval += 1;
    }

    /// Ends every refill interval that passed by `now`, adapting the batch for each.
    fn roll(&mut self, now: Instant) {
        while now.duration_since(self.interval_started) >= self.config.refill_interval {
            let ceiling = match self.config.max {
                0 => self.config.max_batch,
                m => self.config.max_batch.min(m),
            }
            .max(self.config.batch);
            if self.taken_in_interval > self.batch {
                self.batch = (self.batch * 2).min(ceiling);
            } else if self.taken_in_interval * 2 < self.batch {
                self.batch = (self.batch / 2).max(self.config.batch);
            }
            self.taken_in_interval = 0;
            self.interval_started += self.config.refill_interval;
        }
    }

    /// How many ports to create now (0: none needed), before the rate limit.
    pub fn wanted(&mut self, state: PoolState, now: Instant) -> usize {
        self.roll(now);
        let c = &self.config;
        let ready_or_coming = state.free + state.creating;
        let total = ready_or_coming + state.taken;
        let short_min = c.min.saturating_sub(ready_or_coming);
        let short_total = c.min_total.saturating_sub(total);
        if short_min == 0 && short_total == 0 {
            return 0;
        }
        let want = self.batch.max(short_min).max(short_total);
        match c.max {
            0 => want,
            m => want.min(m.saturating_sub(total)),
        }
    }
}

/// A token bucket: at most `per_sec` ports per second, bursts of up to one second's worth.
#[derive(Debug, Clone)]
pub struct RateLimit {
    per_sec: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    pub fn new(per_sec: u32, now: Instant) -> RateLimit {
        RateLimit {
            per_sec: f64::from(per_sec),
            tokens: f64::from(per_sec),
            at: now,
        }
    }

    /// Grants up to `n` creates now; the caller creates only what it was granted.
    pub fn grant(&mut self, n: usize, now: Instant) -> usize {
        let dt = now.duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.per_sec).min(self.per_sec);
        self.at = now;
        let granted = (self.tokens.floor() as usize).min(n);
        self.tokens -= granted as f64;
        granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(groups: &[&str]) -> PoolKey {
        PoolKey {
            backend: "ovn".into(),
            network: "web".into(),
            project: String::new(),
            security_groups: groups.iter().map(|g| g.to_string()).collect(),
            binding: "veth-ovs".into(),
            parent: None,
        }
    }

    #[test]
    fn a_key_does_not_depend_on_the_order_of_its_groups() {
        assert_eq!(key(&["a", "b"]).id(), key(&["b", "a"]).id());
        assert_ne!(key(&["a"]).id(), key(&["a", "b"]).id());
        assert_eq!(key(&[]).id().len(), 12);
        let mut nested = key(&[]);
        nested.parent = Some("vm-port".into());
        assert_ne!(nested.id(), key(&[]).id());
    }

    #[test]
    fn bad_settings_are_refused_saying_what_to_set() {
        assert!(PoolConfig::default().validate().is_ok());
        for (c, says) in [
            (
                PoolConfig {
                    batch: 0,
                    ..Default::default()
                },
                "batch",
            ),
            (
                PoolConfig {
                    min: 10,
                    max: 5,
                    ..Default::default()
                },
                "raise max",
            ),
            (
                PoolConfig {
                    max_batch: 4,
                    ..Default::default()
                },
                "max_batch",
            ),
            (
                PoolConfig {
                    creates_per_sec: 0,
                    ..Default::default()
                },
                "creates_per_sec",
            ),
        ] {
            let err = c.validate().unwrap_err();
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn refills_below_min_and_only_then() {
        let t = Instant::now();
        let mut r = Refill::new(PoolConfig::default(), t);
        let st = |free, taken, creating| PoolState {
            free,
            taken,
            creating,
        };
        assert_eq!(r.wanted(st(0, 0, 0), t), 10, "an empty pool: one batch");
        assert_eq!(r.wanted(st(5, 3, 0), t), 0, "at min: nothing");
        assert_eq!(r.wanted(st(2, 0, 10), t), 0, "a refill under way counts");
        assert_eq!(r.wanted(st(4, 0, 0), t), 10);
    }

    #[test]
    fn max_and_min_total_bound_the_refill() {
        let t = Instant::now();
        let c = PoolConfig {
            max: 12,
            min_total: 8,
            ..Default::default()
        };
        let mut r = Refill::new(c, t);
        let st = |free, taken| PoolState {
            free,
            taken,
            creating: 0,
        };
        assert_eq!(r.wanted(st(0, 0), t), 10);
        assert_eq!(r.wanted(st(1, 9), t), 2, "max 12 leaves room for 2");
        assert_eq!(r.wanted(st(2, 10), t), 0, "full");
        let c = PoolConfig {
            min: 0,
            min_total: 30,
            ..Default::default()
        };
        let mut r = Refill::new(c, t);
        assert_eq!(r.wanted(st(5, 5), t), 20, "min_total wants 20 more");
    }

    #[test]
    fn the_batch_grows_while_the_pool_drains_faster_than_it_refills_and_shrinks_back() {
        let t = Instant::now();
        let c = PoolConfig {
            refill_interval: Duration::from_secs(20),
            ..Default::default()
        };
        let mut r = Refill::new(c, t);
        let s = |secs| t + Duration::from_secs(secs);
        for _ in 0..11 {
            r.took(s(1));
        }
        assert_eq!(r.batch(), 10, "within the interval nothing changes");
        r.took(s(21));
        assert_eq!(r.batch(), 20, "11 taken > batch 10: doubled");
        for _ in 0..30 {
            r.took(s(30));
        }
        r.took(s(41));
        assert_eq!(r.batch(), 40);
        for _ in 0..50 {
            r.took(s(50));
        }
        r.took(s(61));
        assert_eq!(r.batch(), 80);
        for _ in 0..100 {
            r.took(s(70));
        }
        r.took(s(81));
        assert_eq!(r.batch(), 80, "never past max_batch");
        // Quiet intervals: halves each, never below the configured batch.
        assert_eq!(r.wanted(PoolState::default(), s(101)), 40);
        assert_eq!(r.wanted(PoolState::default(), s(200)), 10);
    }

    #[test]
    fn the_rate_limit_grants_a_seconds_worth_then_refills_over_time() {
        let t = Instant::now();
        let mut rl = RateLimit::new(50, t);
        assert_eq!(rl.grant(80, t), 50);
        assert_eq!(rl.grant(10, t), 0);
        assert_eq!(rl.grant(10, t + Duration::from_millis(100)), 5);
        assert_eq!(
            rl.grant(100, t + Duration::from_secs(10)),
            50,
            "bursts cap at a second's"
        );
    }
}
