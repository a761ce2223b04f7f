//! Prometheus metrics (OpenMetrics text on `GET /metrics`).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// attach, detach, check, gc
    pub op: String,
    /// ok, or the CNI error code of the failure
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RepairLabels {
    /// rolled_back, detached_gone_netns, leaked_port, leaked_bridge_port, leaked_link
    pub kind: String,
}

/// One PF's VFs in one state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VfLabels {
    pub physnet: String,
    pub pf: String,
    /// total, free, held, unusable
    pub state: String,
}

/// One pool (and, for its ports, their state; for takes and refills, their result).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
    pub network: String,
    /// ports: free, taken, creating; takes: hit, miss; refills: ok, error
    pub state: String,
}

pub struct Metrics {
    registry: Registry,
    /// Ports per pool by state (set when scraped).
    pub pool_ports: Family<PoolLabels, Gauge<i64, std::sync::atomic::AtomicI64>>,
    pool_takes: Family<PoolLabels, Counter>,
    pool_refills: Family<PoolLabels, Counter>,
    pool_refill_seconds: Histogram,
    /// SR-IOV VFs per physical network and PF, by state (set when scraped).
    pub vfs: Family<VfLabels, Gauge<i64, std::sync::atomic::AtomicI64>>,
    ops: Family<OpLabels, Counter>,
    attach_seconds: Histogram,
    repairs: Family<RepairLabels, Counter>,
    pub attachments: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Records in the store this daemon cannot read (kept aside).
    pub undecodable_records: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Reconcile items that failed (the pass went on).
    reconcile_errors: Counter,
    /// Reconcile passes, finished.
    reconcile_runs: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("courier");
        let ops = Family::<OpLabels, Counter>::default();
        registry.register(
            "operations",
            "Attach/detach/check/gc requests by result",
            ops.clone(),
        );
        let attach_seconds = Histogram::new(exponential_buckets(0.002, 2.0, 12));
        registry.register(
            "attach_duration_seconds",
            "Time to complete an attach (validation to ready)",
            attach_seconds.clone(),
        );
        let repairs = Family::<RepairLabels, Counter>::default();
        registry.register(
            "reconcile_repairs",
            "Things reconciliation fixed, by kind",
            repairs.clone(),
        );
        let attachments = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register(
            "attachments",
            "Attachments in the local store",
            attachments.clone(),
        );
        let undecodable_records = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register(
            "store_undecodable_records",
            "Store records this daemon cannot read, kept aside (see courier status)",
            undecodable_records.clone(),
        );
        let reconcile_errors = Counter::default();
        registry.register(
            "reconcile_errors",
            "Reconcile items that failed; the pass went on and the next one retries",
            reconcile_errors.clone(),
        );
        let reconcile_runs = Counter::default();
        registry.register(
            "reconcile_runs",
            "Reconcile passes completed (start-up, periodic, on request)",
            reconcile_runs.clone(),
        );
        let vfs = Family::<VfLabels, Gauge<i64, std::sync::atomic::AtomicI64>>::default();
        registry.register(
            "sriov_vfs",
            "SR-IOV VFs of this host's pool per physical network and PF: total, free, held (by a container), unusable (in a netns Courier did not put it in, or no driver)",
            vfs.clone(),
        );
        let pool_ports = Family::<PoolLabels, Gauge<i64, std::sync::atomic::AtomicI64>>::default();
        registry.register(
            "pool_ports",
            "Ports of each port pool by state: free, taken (by a container), creating",
            pool_ports.clone(),
        );
        let pool_takes = Family::<PoolLabels, Counter>::default();
        registry.register(
            "pool_takes",
            "Attaches of a pool's key: hit (served from the pool) or miss (empty: served cold)",
            pool_takes.clone(),
        );
        let pool_refills = Family::<PoolLabels, Counter>::default();
        registry.register(
            "pool_refills",
            "Pool refills (one bulk create each) by result: ok or error",
            pool_refills.clone(),
        );
        let pool_refill_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register(
            "pool_refill_duration_seconds",
            "Time of one pool refill (slot records, the bulk create, ready)",
            pool_refill_seconds.clone(),
        );
        Metrics {
            registry,
            pool_ports,
            pool_takes,
            pool_refills,
            pool_refill_seconds,
            vfs,
            ops,
            attach_seconds,
            repairs,
            attachments,
            undecodable_records,
            reconcile_errors,
            reconcile_runs,
        }
    }
}

impl Metrics {
    pub fn op(&self, op: &str, result: Result<(), u32>) {
        let result = match result {
            Ok(()) => "ok".to_string(),
            Err(code) => code.to_string(),
        };
        self.ops
            .get_or_create(&OpLabels {
                op: op.to_string(),
                result,
            })
            .inc();
    }

    pub fn attach_took(&self, d: Duration) {
        self.attach_seconds.observe(d.as_secs_f64());
    }

    pub fn repaired(&self, kind: &str, n: usize) {
        if n > 0 {
            self.repairs
                .get_or_create(&RepairLabels { kind: kind.into() })
                .inc_by(n as u64);
        }
    }

    /// One finished reconcile pass: its errors and what the store could not read.
    pub fn reconciled(&self, errors: usize, undecodable: usize) {
        self.reconcile_runs.inc();
        self.reconcile_errors.inc_by(errors as u64);
        self.undecodable_records.set(undecodable as i64);
    }

    /// An attach of pool `pool`'s key: served from it (hit) or not (miss).
    pub fn pool_take(&self, pool: &str, network: &str, hit: bool) {
        self.pool_takes
            .get_or_create(&PoolLabels {
                pool: pool.into(),
                network: network.into(),
                state: if hit { "hit" } else { "miss" }.into(),
            })
            .inc();
    }

    /// One refill of pool `pool` that took `ms`.
    pub fn pool_refill(&self, pool: &str, network: &str, ms: f64, ok: bool) {
        self.pool_refill_seconds.observe(ms / 1000.0);
        self.pool_refills
            .get_or_create(&PoolLabels {
                pool: pool.into(),
                network: network.into(),
                state: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
    }

    /// The pools' sizes as `courier pool list` shows them.
    pub fn set_pools(&self, pools: &[crate::pool::flow::PoolView]) {
        for p in pools {
            for (state, n) in [
                ("free", p.free),
                ("taken", p.taken),
                ("creating", p.creating),
            ] {
                self.pool_ports
                    .get_or_create(&PoolLabels {
                        pool: p.pool.clone(),
                        network: p.network.clone(),
                        state: state.into(),
                    })
                    .set(n as i64);
            }
        }
    }

    /// The VF pool as `courier status` shows it.
    pub fn set_vfs(&self, groups: &[crate::binding::sriov::pool::PfStatus]) {
        for g in groups {
            for (state, n) in [
                ("total", g.total),
                ("free", g.free),
                ("held", g.held),
                ("unusable", g.unusable),
            ] {
                self.vfs
                    .get_or_create(&VfLabels {
                        physnet: g.physnet.clone(),
                        pf: g.pf.clone(),
                        state: state.into(),
                    })
                    .set(n as i64);
            }
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vf_pool_per_pf_and_state() {
        let m = Metrics::default();
        m.set_vfs(&[crate::binding::sriov::pool::PfStatus {
            physnet: "physnet1".into(),
            pf: "eth2".into(),
            total: 7,
            held: 2,
            unusable: 1,
            free: 4,
            error: None,
        }]);
        let text = m.encode();
        for (state, n) in [("total", 7), ("free", 4), ("held", 2), ("unusable", 1)] {
            let line = format!(
                "courier_sriov_vfs{{physnet=\"physnet1\",pf=\"eth2\",state=\"{state}\"}} {n}"
            );
            assert!(text.contains(&line), "{line} in {text}");
        }
    }

    #[test]
    fn encodes_counters_and_histogram() {
        let m = Metrics::default();
        m.op("attach", Ok(()));
        m.op("attach", Err(7));
        m.attach_took(Duration::from_millis(20));
        m.repaired("leaked_port", 2);
        m.attachments.set(3);
        m.reconciled(2, 1);
        let text = m.encode();
        assert!(text.contains("courier_reconcile_errors_total 2"), "{text}");
        assert!(text.contains("courier_reconcile_runs_total 1"), "{text}");
        assert!(
            text.contains("courier_store_undecodable_records 1"),
            "{text}"
        );
        assert!(
            text.contains("courier_operations_total{op=\"attach\",result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("courier_operations_total{op=\"attach\",result=\"7\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("courier_attach_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("courier_reconcile_repairs_total{kind=\"leaked_port\"} 2"),
            "{text}"
        );
        assert!(text.contains("courier_attachments 3"), "{text}");
    }
}
