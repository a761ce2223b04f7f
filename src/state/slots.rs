//! Pool slots (`pool::PoolSlot`) in the store: table `pool_slots`, by slot id.
//!
//! A slot is recorded (`Creating`, durably) before its port is asked of the backend, so every
//! pooled port the backend has is named by a record, or is a crash's leftover the sweep may
//! delete. A slot is *free* when it is `Ready` and no attachment's claim (`poolslot:<id>`,
//! table `claims`) holds it; `Store::create` refuses a claim of a slot that is not there or not
//! ready, in the intent's own transaction, so a take never holds a drained slot.

use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{store_err, Store, CLAIMS, META};
use crate::error::Result;
use crate::pool::{slot_claim, slot_id, PoolKey, PoolSlot, SlotState};

pub(super) const POOL_SLOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("pool_slots");
const NEXT_SLOT: &str = "next_pool_slot";

/// What a slot claim in an intent finds (checked inside `Store::create`'s transaction).
pub(super) fn slot_takeable(txn: &redb::WriteTransaction, slot: &str) -> Result<bool> {
    let t = txn
        .open_table(POOL_SLOTS)
        .map_err(|e| store_err("open", e))?;
    let found = t.get(slot).map_err(|e| store_err("read", e))?;
    Ok(found
        .and_then(|v| serde_json::from_slice::<PoolSlot>(v.value()).ok())
        .is_some_and(|s| s.state == SlotState::Ready))
}

impl Store {
    /// `n` new slots of `key` on `network`, recorded `Creating` durably in one transaction
    /// (their ids from a store-wide counter, so never reused): before their ports exist.
    pub async fn new_slots(
        &self,
        host: &str,
        key: &PoolKey,
        network: &str,
        n: usize,
    ) -> Result<Vec<PoolSlot>> {
        let (host, key, network) = (host.to_string(), key.clone(), network.to_string());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(|e| store_err("begin", e))?;
            let mut made = Vec::with_capacity(n);
            {
                let mut meta = txn.open_table(META).map_err(|e| store_err("open", e))?;
                let next = meta
                    .get(NEXT_SLOT)
                    .map_err(|e| store_err("read", e))?
                    .map(|g| g.value())
                    .unwrap_or(1);
                meta.insert(NEXT_SLOT, next + n as u64)
                    .map_err(|e| store_err("writing the slot counter", e))?;
                let mut t = txn
                    .open_table(POOL_SLOTS)
                    .map_err(|e| store_err("open", e))?;
                for i in 0..n as u64 {
                    let slot = PoolSlot::new(slot_id(&host, next + i), &key, &network);
                    let bytes = serde_json::to_vec(&slot).map_err(|e| store_err("encoding", e))?;
                    t.insert(slot.store_key().as_str(), bytes.as_slice())
                        .map_err(|e| store_err(&format!("writing pool slot {}", slot.id), e))?;
                    made.push(slot);
                }
            }
            txn.commit()
                .map_err(|e| store_err("committing new pool slots", e))?;
            Ok(made)
        })
        .await
    }

    /// Writes slots (e.g. made `Ready` with their ports) in one transaction. `durable`: fsync
    /// before returning.
    pub async fn put_slots(&self, slots: &[PoolSlot], durable: bool) -> Result<()> {
        let mut encoded = Vec::with_capacity(slots.len());
        for s in slots {
            encoded.push((
                s.store_key(),
                serde_json::to_vec(s).map_err(|e| store_err("encoding", e))?,
            ));
        }
        self.blocking(move |db| {
            let mut txn = db.begin_write().map_err(|e| store_err("begin", e))?;
            if !durable {
                txn.set_durability(Durability::None)
                    .map_err(|e| store_err("durability", e))?;
            }
            {
                let mut t = txn
                    .open_table(POOL_SLOTS)
                    .map_err(|e| store_err("open", e))?;
                for (id, bytes) in &encoded {
                    t.insert(id.as_str(), bytes.as_slice())
                        .map_err(|e| store_err(&format!("writing pool slot {id}"), e))?;
                }
            }
            txn.commit()
                .map_err(|e| store_err("committing pool slots", e))
        })
        .await
    }

    /// Every slot (of `pool`, or of every pool), with the attachment that holds it (None: not
    /// claimed). A slot record that does not decode is skipped with an error log; its id is
    /// still in `slot_ids`, so the sweep spares its port.
    pub async fn slots(&self, pool: Option<&str>) -> Result<Vec<(PoolSlot, Option<String>)>> {
        let prefix = pool.map(|p| format!("{p}:")).unwrap_or_default();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(|e| store_err("begin", e))?;
            let t = txn
                .open_table(POOL_SLOTS)
                .map_err(|e| store_err("open", e))?;
            let claims = txn.open_table(CLAIMS).map_err(|e| store_err("open", e))?;
            let mut out = Vec::new();
            for item in t
                .range(prefix.as_str()..)
                .map_err(|e| store_err("iterate", e))?
            {
                let (k, v) = item.map_err(|e| store_err("iterate", e))?;
                if !k.value().starts_with(prefix.as_str()) {
                    break;
                }
                match serde_json::from_slice::<PoolSlot>(v.value()) {
                    Ok(s) => {
                        let holder = claims
                            .get(slot_claim(&s.store_key()).as_str())
                            .map_err(|e| store_err("read", e))?
                            .map(|h| h.value().to_string());
                        out.push((s, holder));
                    }
                    Err(e) => {
                        tracing::error!(slot = k.value(), error = %e, "pool slot record cannot be read; kept aside")
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// The slot under store key `id` (`<pool>:<slot>`), if recorded (and decodable).
    pub async fn slot_record(&self, id: &str) -> Result<Option<PoolSlot>> {
        let id = id.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(|e| store_err("begin", e))?;
            let t = txn
                .open_table(POOL_SLOTS)
                .map_err(|e| store_err("open", e))?;
            let v = t.get(id.as_str()).map_err(|e| store_err("read", e))?;
            Ok(v.and_then(|v| serde_json::from_slice(v.value()).ok()))
        })
        .await
    }

    /// The slot id of every slot record, decodable or not: the sweep spares their ports.
    pub async fn slot_ids(&self) -> Result<std::collections::HashSet<String>> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(|e| store_err("begin", e))?;
            let t = txn
                .open_table(POOL_SLOTS)
                .map_err(|e| store_err("open", e))?;
            let mut out = std::collections::HashSet::new();
            for item in t.iter().map_err(|e| store_err("iterate", e))? {
                let (k, _) = item.map_err(|e| store_err("iterate", e))?;
                if let Some((_, id)) = k.value().split_once(':') {
                    out.insert(id.to_string());
                }
            }
            Ok(out)
        })
        .await
    }

    /// Removes slot `id` (its store key, `<pool>:<slot>`) durably, unless an attachment other than `holder` claims it: Ok(true)
    /// when removed or absent, Ok(false) when claimed (a drain skips a taken slot; a give-back
    /// passes its own attachment id).
    pub async fn delete_slot(&self, id: &str, holder: Option<&str>) -> Result<bool> {
        let (id, holder) = (id.to_string(), holder.map(str::to_string));
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(|e| store_err("begin", e))?;
            {
                let claims = txn.open_table(CLAIMS).map_err(|e| store_err("open", e))?;
                let held = claims
                    .get(slot_claim(&id).as_str())
                    .map_err(|e| store_err("read", e))?
                    .map(|h| h.value().to_string());
                if held.is_some() && held != holder {
                    return Ok(false);
                }
                let mut t = txn
                    .open_table(POOL_SLOTS)
                    .map_err(|e| store_err("open", e))?;
                t.remove(id.as_str())
                    .map_err(|e| store_err(&format!("deleting pool slot {id}"), e))?;
            }
            txn.commit().map_err(|e| store_err("commit", e))?;
            Ok(true)
        })
        .await
    }
}
