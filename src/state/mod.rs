//! Durable local state (redb): one record per attachment, keyed by attachment id, and a small
//! `meta` table (the generation counter).
//!
//! Writes that recovery depends on (the intent before any side effect, "ready", "detaching") are
//! committed with immediate durability before the caller goes on; progress notes in between
//! (`note`) are not, since every unfinished phase is recovered the same way (rollback by
//! derived names). That is what lets `reconcile` finish or roll back after a crash.
//!
//! Records carry a schema version (`model::SCHEMA_VERSION`). Every older schema is read; a record
//! that does not decode — corrupt, or written by a newer Courier — is *kept aside*: it stays in
//! the store untouched, is listed separately (`Listing::undecodable`) and reported by reconcile,
//! status and metrics, and its id counts as recorded, so the leak sweep never deletes what it
//! might describe. One bad record never fails a listing.
//! Docker's calls name an endpoint, an address or a MAC, never an attachment id: the
//! `docker_index` table files every staged record under those (written in the record's own
//! transaction, rebuilt from the records at every open), so a Docker call reads its records by
//! key instead of decoding the whole store.
//! redb is blocking, so every call runs on tokio's blocking pool.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Attachment, DockerNetwork, SCHEMA_VERSION};

mod slots;

const ATTACHMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("attachments");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Exclusive resources (`Attachment::claims`) → the attachment id that holds each.
pub(crate) const CLAIMS: TableDefinition<&str, &str> = TableDefinition::new("claims");
/// Docker networks of the libnetwork front door, by Docker's network id (JSON `DockerNetwork`).
const DOCKER_NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("docker_networks");
/// Docker lookups: `<key>` (a [`DockerKey`]'s prefix) + attachment id → "", one entry per key of
/// every staged record (`Attachment::docker`).
const DOCKER_INDEX: TableDefinition<&str, &str> = TableDefinition::new("docker_index");
/// Attachment id → its `docker_index` keys (joined by [`KEYS_SEP`]), so a write replaces them
/// without decoding the record it overwrites.
const DOCKER_INDEX_OF: TableDefinition<&str, &str> = TableDefinition::new("docker_index_of");
/// IPAM pool id → the Docker network id whose pool it is.
const DOCKER_POOLS: TableDefinition<&str, &str> = TableDefinition::new("docker_pools");
const NEXT_GENERATION: &str = "next_generation";
/// Between the parts of an index key (in no id, name, address or MAC).
const SEP: char = '\u{1f}';
const KEYS_SEP: char = '\u{1e}';

/// What a Docker call looks a staged record up by.
#[derive(Debug, Clone, Copy)]
pub enum DockerKey<'a> {
    /// Docker's endpoint id.
    Endpoint(&'a str),
    /// Docker's network id (the records of one Docker network).
    Network(&'a str),
    /// An address of the record's port on Courier network `network`.
    Address {
        network: &'a str,
        ip: std::net::IpAddr,
    },
    /// The MAC of the record's port on Courier network `network` (any case).
    Mac { network: &'a str, mac: &'a str },
}

impl DockerKey<'_> {
    /// The index key without the attachment id.
    fn prefix(&self) -> String {
        match self {
            DockerKey::Endpoint(e) => format!("ep{SEP}{e}{SEP}"),
            DockerKey::Network(n) => format!("net{SEP}{n}{SEP}"),
            DockerKey::Address { network, ip } => format!("ip{SEP}{network}{SEP}{ip}{SEP}"),
            DockerKey::Mac { network, mac } => {
                format!("mac{SEP}{network}{SEP}{}{SEP}", mac.to_ascii_lowercase())
            }
        }
    }
}

/// Every index key of `a` (none unless it is a staged record).
fn docker_keys(a: &Attachment) -> Vec<String> {
    let Some(d) = &a.docker else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    if let Some(e) = &d.endpoint_id {
        keys.push(DockerKey::Endpoint(e).prefix());
    }
    if let Some(n) = &d.network_id {
        keys.push(DockerKey::Network(n).prefix());
    }
    if let Some(p) = &a.port {
        for ip in &p.ips {
            keys.push(
                DockerKey::Address {
                    network: &a.network,
                    ip: ip.addr(),
                }
                .prefix(),
            );
        }
        keys.push(
            DockerKey::Mac {
                network: &a.network,
                mac: &p.mac,
            }
            .prefix(),
        );
    }
    for k in &mut keys {
        k.push_str(&a.id);
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Files record `id` under `keys` (none: a record deleted, or not staged), in the caller's
/// transaction, replacing what it was filed under before.
fn reindex(txn: &redb::WriteTransaction, id: &str, keys: &[String]) -> Result<()> {
    let mut of = txn
        .open_table(DOCKER_INDEX_OF)
        .map_err(|e| store_err("open", e))?;
    let mut idx = txn
        .open_table(DOCKER_INDEX)
        .map_err(|e| store_err("open", e))?;
    let old: Option<String> = of
        .get(id)
        .map_err(|e| store_err("read", e))?
        .map(|v| v.value().to_string());
    for k in old.iter().flat_map(|o| o.split(KEYS_SEP)) {
        if !k.is_empty() && !keys.iter().any(|n| n == k) {
            idx.remove(k)
                .map_err(|e| store_err(&format!("unindexing {id}"), e))?;
        }
    }
    for k in keys {
        idx.insert(k.as_str(), "")
            .map_err(|e| store_err(&format!("indexing {id}"), e))?;
    }
    if keys.is_empty() {
        if old.is_some() {
            of.remove(id)
                .map_err(|e| store_err(&format!("unindexing {id}"), e))?;
        }
    } else {
        let joined = keys.join(&KEYS_SEP.to_string());
        of.insert(id, joined.as_str())
            .map_err(|e| store_err(&format!("indexing {id}"), e))?;
    }
    Ok(())
}

/// Files Docker network `new`'s pools, unfiling `old`'s first, in the caller's transaction.
fn repool(
    txn: &redb::WriteTransaction,
    old: Option<&DockerNetwork>,
    new: Option<&DockerNetwork>,
) -> Result<()> {
    let mut pools = txn
        .open_table(DOCKER_POOLS)
        .map_err(|e| store_err("open", e))?;
    if let Some(o) = old {
        for p in std::iter::once(&o.pool4).chain(o.pool6.as_ref()) {
            let mine = pools
                .get(p.as_str())
                .map_err(|e| store_err("read", e))?
                .is_some_and(|v| v.value() == o.network_id);
            if mine {
                pools
                    .remove(p.as_str())
                    .map_err(|e| store_err("unindexing a pool", e))?;
            }
        }
    }
    if let Some(n) = new {
        for p in std::iter::once(&n.pool4).chain(n.pool6.as_ref()) {
            pools
                .insert(p.as_str(), n.network_id.as_str())
                .map_err(|e| store_err("indexing a pool", e))?;
        }
    }
    Ok(())
}

/// The Docker network record `id` in an open table.
fn docker_network_in(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<DockerNetwork>> {
    Ok(match t.get(id).map_err(|e| store_err("read", e))? {
        Some(v) => match serde_json::from_slice::<DockerNetwork>(v.value()) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::error!(network = id, error = %e, "docker network record cannot be read; ignored");
                None
            }
        },
        None => None,
    })
}

#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

/// A record that is in the store but cannot be read by this daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Undecodable {
    pub id: String,
    pub error: String,
}

/// Every record, decoded where possible.
#[derive(Debug, Default)]
pub struct Listing {
    pub attachments: Vec<Attachment>,
    pub undecodable: Vec<Undecodable>,
}

/// What the store holds under one id.
#[derive(Debug)]
pub enum Slot {
    Absent,
    Record(Box<Attachment>),
    Undecodable(Undecodable),
}

pub(crate) fn store_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Store(format!("{what}: {e}"))
}

/// Decodes one stored record, whatever schema up to ours it was written with.
pub fn decode_record(id: &str, bytes: &[u8]) -> std::result::Result<Attachment, Undecodable> {
    let bad = |error: String| Undecodable {
        id: id.to_string(),
        error,
    };
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let schema = match v.get("schema") {
        None => 1,
        Some(s) => s
            .as_u64()
            .ok_or_else(|| bad(format!("schema {s} is not a number")))?,
    };
    if schema > u64::from(SCHEMA_VERSION) {
        return Err(bad(format!(
            "written by a newer Courier (record schema {schema}; this daemon reads 1 to {SCHEMA_VERSION}): upgrade this daemon"
        )));
    }
    let mut v = v;
    if schema < 3 {
        migrate_to_3(&mut v);
    }
    // Schemas 1 and 2 differ otherwise only by fields that have serde defaults.
    serde_json::from_value::<Attachment>(v)
        .map_err(|e| bad(format!("schema {schema} record does not decode: {e}")))
}

/// Schema 1/2 → 3: those daemons had one backend (OVN direct) and one binding (veth-ovs), the
/// edge was the `host_ifname` field, and the port's id was its name.
fn migrate_to_3(v: &mut serde_json::Value) {
    let Some(o) = v.as_object_mut() else { return };
    o.entry("backend").or_insert_with(|| "ovn".into());
    if !o.contains_key("edge") {
        if let Some(h) = o.remove("host_ifname") {
            o.insert(
                "edge".into(),
                serde_json::json!({"kind": "veth-ovs", "host_ifname": h}),
            );
        }
    }
    if let Some(port) = o.get_mut("port").and_then(|p| p.as_object_mut()) {
        if !port.contains_key("id") {
            let name = port.get("name").cloned().unwrap_or_default();
            port.insert("id".into(), name);
        }
        // One optional gateway then; one per family now.
        if let Some(gw) = port.remove("gateway") {
            let gws = if gw.is_null() { vec![] } else { vec![gw] };
            port.insert("gateways".into(), gws.into());
        }
    }
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .map_err(|e| store_err(&format!("creating {}", dir.display()), e))?;
        let path = dir.join("courier.redb");
        let db = Database::create(&path)
            .map_err(|e| store_err(&format!("opening {}", path.display()), e))?;
        let txn = db.begin_write().map_err(|e| store_err("begin", e))?;
        txn.open_table(ATTACHMENTS)
            .map_err(|e| store_err("creating table", e))?;
        txn.open_table(META)
            .map_err(|e| store_err("creating table", e))?;
        txn.open_table(DOCKER_NETWORKS)
            .map_err(|e| store_err("creating table", e))?;
        txn.open_table(CLAIMS)
            .map_err(|e| store_err("creating table", e))?;
        txn.open_table(slots::POOL_SLOTS)
            .map_err(|e| store_err("creating table", e))?;
        txn.commit().map_err(|e| store_err("commit", e))?;
        Self::rebuild_docker_index(&db)?;
        Ok(Store { db: Arc::new(db) })
    }

    /// The Docker lookup tables made again from the records (at every open: a Courier that
    /// did not keep them may have written the store since). Undecodable records are left out,
    /// as every listing leaves them.
    fn rebuild_docker_index(db: &Database) -> Result<()> {
        let txn = db.begin_write().map_err(|e| store_err("begin", e))?;
        for t in [DOCKER_INDEX, DOCKER_INDEX_OF, DOCKER_POOLS] {
            txn.delete_table(t)
                .map_err(|e| store_err("clearing the docker index", e))?;
            txn.open_table(t)
                .map_err(|e| store_err("creating table", e))?;
        }
        {
            let atts = txn
                .open_table(ATTACHMENTS)
                .map_err(|e| store_err("open", e))?;
            for item in atts.iter().map_err(|e| store_err("iterate", e))? {
                let (k, v) = item.map_err(|e| store_err("iterate", e))?;
                if let Ok(a) = decode_record(k.value(), v.value()) {
                    let keys = docker_keys(&a);
                    if !keys.is_empty() {
                        reindex(&txn, &a.id, &keys)?;
                    }
                }
            }
            let nets = txn
                .open_table(DOCKER_NETWORKS)
                .map_err(|e| store_err("open", e))?;
            for item in nets.iter().map_err(|e| store_err("iterate", e))? {
                let (_, v) = item.map_err(|e| store_err("iterate", e))?;
                if let Ok(n) = serde_json::from_slice::<DockerNetwork>(v.value()) {
                    repool(&txn, None, Some(&n))?;
                }
            }
        }
        txn.commit()
            .map_err(|e| store_err("committing the docker index", e))
    }

    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| Error::Internal(format!("store task: {e}")))?
    }

    /// Writes a new intent durably, assigning it the next generation in the same transaction.
    pub async fn create(&self, att: &mut Attachment) -> Result<()> {
        let mut rec = att.clone();
        let rec = self
            .blocking(move |db| {
                let txn = db.begin_write().map_err(|e| store_err("begin", e))?;
                {
                    let mut meta = txn.open_table(META).map_err(|e| store_err("open", e))?;
                    let next = meta
                        .get(NEXT_GENERATION)
                        .map_err(|e| store_err("read", e))?
                        .map(|g| g.value())
                        .unwrap_or(1);
                    meta.insert(NEXT_GENERATION, next + 1)
                        .map_err(|e| store_err("writing generation", e))?;
                    rec.generation = next;
                    // The attachment's exclusive resources, in the same transaction: if one is
                    // held by another record, nothing is written.
                    let mut claims = txn.open_table(CLAIMS).map_err(|e| store_err("open", e))?;
                    for c in &rec.claims {
                        // A pool slot is taken only while it is there and ready (a drain
                        // may have removed it since the attach picked it).
                        if let Some(slot) = c.strip_prefix(crate::pool::SLOT_CLAIM_PREFIX) {
                            if !slots::slot_takeable(&txn, slot)? {
                                return Err(Error::Claimed {
                                    resource: c.clone(),
                                    holder: "nothing (the slot is gone)".into(),
                                    what: "pick another".into(),
                                });
                            }
                        }
                        let holder = claims
                            .get(c.as_str())
                            .map_err(|e| store_err("read", e))?
                            .map(|h| h.value().to_string());
                        match holder {
                            Some(h) if h != rec.id => {
                                return Err(Error::Claimed {
                                    resource: c.clone(),
                                    holder: h,
                                    what: "pick another".into(),
                                })
                            }
                            _ => {
                                claims
                                    .insert(c.as_str(), rec.id.as_str())
                                    .map_err(|e| store_err(&format!("claiming {c}"), e))?;
                            }
                        }
                    }
                    drop(claims);
                    let bytes = serde_json::to_vec(&rec).map_err(|e| store_err("encoding", e))?;
                    let mut t = txn
                        .open_table(ATTACHMENTS)
                        .map_err(|e| store_err("open", e))?;
                    t.insert(rec.id.as_str(), bytes.as_slice())
                        .map_err(|e| store_err(&format!("writing attachment {}", rec.id), e))?;
                    drop(t);
                    reindex(&txn, &rec.id, &docker_keys(&rec))?;
                }
                txn.commit()
                    .map_err(|e| store_err(&format!("committing attachment {}", rec.id), e))?;
                Ok(rec)
            })
            .await?;
        att.generation = rec.generation;
        Ok(())
    }

    /// Inserts or replaces the record and makes it durable before returning (≈ 1 ms: an fsync).
    pub async fn put(&self, att: &Attachment) -> Result<()> {
        self.write(att, Durability::Immediate).await
    }

    /// Inserts or replaces the record without waiting for the disk: for progress notes whose
    /// loss in a crash changes nothing (the last durable phase leads to the same recovery).
    /// The next durable write persists it.
    pub async fn note(&self, att: &Attachment) -> Result<()> {
        self.write(att, Durability::None).await
    }

    async fn write(&self, att: &Attachment, durability: Durability) -> Result<()> {
        let id = att.id.clone();
        let bytes = serde_json::to_vec(att).map_err(|e| store_err("encoding", e))?;
        let keys = docker_keys(att);
        self.blocking(move |db| {
            let mut txn = db.begin_write().map_err(|e| store_err("begin", e))?;
            txn.set_durability(durability)
                .map_err(|e| store_err("durability", e))?;
            {
                let mut t = txn
                    .open_table(ATTACHMENTS)
                    .map_err(|e| store_err("open", e))?;
                t.insert(id.as_str(), bytes.as_slice())
                    .map_err(|e| store_err(&format!("writing attachment {id}"), e))?;
            }
            reindex(&txn, &id, &keys)?;
            txn.commit()
                .map_err(|e| store_err(&format!("committing attachment {id}"), e))
        })
        .await
    }

    /// What the store holds under `id`, undecodable records included.
    pub async fn slot(&self, id: &str) -> Result<Slot> {
        let id = id.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(|e| store_err("begin", e))?;
            let t = txn
                .open_table(ATTACHMENTS)
                .map_err(|e| store_err("open", e))?;
            Ok(
                match t.get(id.as_str()).map_err(|e| store_err("read", e))? {
                    Some(v) => match decode_record(&id, v.value()) {
                        Ok(a) => Slot::Record(Box::new(a)),
                        Err(u) => Slot::Undecodable(u),
                    },
                    None => Slot::Absent,
                },
            )
        })
        .await
    }

    /// The record under `id`. An undecodable one is an error that says so (it is kept aside).
    pub async fn get(&self, id: &str) -> Result<Option<Attachment>> {
        match self.slot(id).await? {
            Slot::Absent => Ok(None),
            Slot::Record(a) => Ok(Some(*a)),
            Slot::Undecodable(u) => Err(Error::Store(format!(
                "attachment record {} cannot be read ({}); it is kept aside untouched: see `courier status`",
                u.id, u.error
            ))),
        }
    }

    /// True when a record (decodable or not) exists under `id`: what the leak sweep must spare.
    pub async fn is_recorded(&self, id: &str) -> Result<bool> {
        Ok(!matches!(self.slot(id).await?, Slot::Absent))
    }

    /// Removes the record; Ok(false) when there was none.
    pub async fn delete(&self, id: &str) -> Result<bool> {
        let id = id.to_string();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(|e| store_err("begin", e))?;
            let existed = {
                let mut t = txn
                    .open_table(ATTACHMENTS)
                    .map_err(|e| store_err("open", e))?;
                let removed = t
                    .remove(id.as_str())
                    .map_err(|e| store_err(&format!("deleting attachment {id}"), e))?;
                // Its claims go with it (those still held by it: never another's).
                let held: Vec<String> = removed
                    .as_ref()
                    .and_then(|v| decode_record(&id, v.value()).ok())
                    .map(|a| a.claims)
                    .unwrap_or_default();
                let existed = removed.is_some();
                drop(removed);
                let mut claims = txn.open_table(CLAIMS).map_err(|e| store_err("open", e))?;
                for c in held {
                    let mine = claims
                        .get(c.as_str())
                        .map_err(|e| store_err("read", e))?
                        .is_some_and(|h| h.value() == id);
                    if mine {
                        claims
                            .remove(c.as_str())
                            .map_err(|e| store_err(&format!("releasing {c}"), e))?;
                    }
                }
                drop(claims);
                reindex(&txn, &id, &[])?;
                existed
            };
            txn.commit().map_err(|e| store_err("commit", e))?;
            Ok(existed)
        })
        .await
    }

    /// Every record; those that do not decode are listed apart, never fail the listing.
    pub async fn list(&self) -> Result<Listing> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(|e| store_err("begin", e))?;
            let t = txn
                .open_table(ATTACHMENTS)
                .map_err(|e| store_err("open", e))?;
            let mut out = Listing::default();
            for item in t.iter().map_err(|e| store_err("iterate", e))? {
                let (k, v) = item.map_err(|e| store_err("iterate", e))?;
                match decode_record(k.value(), v.value()) {
                    Ok(a) => out.attachments.push(a),
                    Err(u) => out.undecodable.push(u),
                }
            }
            Ok(out)
        })
        .await
    }

    /// The staged records filed under `key` (decodable ones: an undecodable record is in no
    /// index). Costs the records found, not the store.
    pub async fn docker_records(&self, key: DockerKey<'_>) -> Result<Vec<Attachment>> {
        let prefix = key.prefix();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(|e| store_err("begin", e))?;
            let idx = txn
                .open_table(DOCKER_INDEX)
                .map_err(|e| store_err("open", e))?;
            let atts = txn
                .open_table(ATTACHMENTS)
                .map_err(|e| store_err("open", e))?;
            let mut out = Vec::new();
            for item in idx
                .range(prefix.as_str()..)
                .map_err(|e| store_err("iterate", e))?
            {
                let (k, _) = item.map_err(|e| store_err("iterate", e))?;
                let Some(id) = k.value().strip_prefix(prefix.as_str()) else {
                    break;
                };
                if let Some(v) = atts.get(id).map_err(|e| store_err("read", e))? {
                    if let Ok(a) = decode_record(id, v.value()) {
                        if a.docker.is_some() {
                            out.push(a);
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// Claims starting with `prefix` (e.g. `vlan:<parent>:`) and who holds each.
    pub async fn claims(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let prefix = prefix.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(|e| store_err("begin", e))?;
            let t = txn.open_table(CLAIMS).map_err(|e| store_err("open", e))?;
            let mut out = Vec::new();
            for item in t
                .range(prefix.as_str()..)
                .map_err(|e| store_err("iterate", e))?
            {
                let (k, v) = item.map_err(|e| store_err("iterate", e))?;
                if !k.value().starts_with(prefix.as_str()) {
                    break;
                }
                out.push((k.value().to_string(), v.value().to_string()));
            }
            Ok(out)
        })
        .await
    }

    /// Records a Docker network durably (replacing one with the same id).
    pub async fn put_docker_network(&self, n: &DockerNetwork) -> Result<()> {
        let id = n.network_id.clone();
        let bytes = serde_json::to_vec(n).map_err(|e| store_err("encoding", e))?;
        let n = n.clone();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(|e| store_err("begin", e))?;
            let old = {
                let mut t = txn
                    .open_table(DOCKER_NETWORKS)
                    .map_err(|e| store_err("open", e))?;
                let old = docker_network_in(&t, &id)?;
                t.insert(id.as_str(), bytes.as_slice())
                    .map_err(|e| store_err(&format!("writing docker network {id}"), e))?;
                old
            };
            repool(&txn, old.as_ref(), Some(&n))?;
            txn.commit()
                .map_err(|e| store_err(&format!("committing docker network {id}"), e))
        })
        .await
    }

    /// Docker network `id`'s record.
    pub async fn docker_network(&self, id: &str) -> Result<Option<DockerNetwork>> {
        let id = id.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(|e| store_err("begin", e))?;
            let t = txn
                .open_table(DOCKER_NETWORKS)
                .map_err(|e| store_err("open", e))?;
            docker_network_in(&t, &id)
        })
        .await
    }

    /// The Docker network whose IPAM pool (IPv4 or IPv6) is `pool`.
    pub async fn docker_network_of_pool(&self, pool: &str) -> Result<Option<DockerNetwork>> {
        let pool = pool.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(|e| store_err("begin", e))?;
            let pools = txn
                .open_table(DOCKER_POOLS)
                .map_err(|e| store_err("open", e))?;
            let Some(id) = pools
                .get(pool.as_str())
                .map_err(|e| store_err("read", e))?
                .map(|v| v.value().to_string())
            else {
                return Ok(None);
            };
            let t = txn
                .open_table(DOCKER_NETWORKS)
                .map_err(|e| store_err("open", e))?;
            Ok(docker_network_in(&t, &id)?
                .filter(|n| n.pool4 == pool || n.pool6.as_deref() == Some(pool.as_str())))
        })
        .await
    }

    /// Every Docker network; one that does not decode is logged and left out.
    pub async fn docker_networks(&self) -> Result<Vec<DockerNetwork>> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(|e| store_err("begin", e))?;
            let t = txn
                .open_table(DOCKER_NETWORKS)
                .map_err(|e| store_err("open", e))?;
            let mut out = Vec::new();
            for item in t.iter().map_err(|e| store_err("iterate", e))? {
                let (k, v) = item.map_err(|e| store_err("iterate", e))?;
                match serde_json::from_slice::<DockerNetwork>(v.value()) {
                    Ok(n) => out.push(n),
                    Err(e) => {
                        tracing::error!(network = k.value(), error = %e, "docker network record cannot be read; ignored")
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn delete_docker_network(&self, id: &str) -> Result<bool> {
        let id = id.to_string();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(|e| store_err("begin", e))?;
            let old = {
                let mut t = txn
                    .open_table(DOCKER_NETWORKS)
                    .map_err(|e| store_err("open", e))?;
                let old = docker_network_in(&t, &id)?;
                t.remove(id.as_str())
                    .map_err(|e| store_err(&format!("deleting docker network {id}"), e))?;
                old
            };
            repool(&txn, old.as_ref(), None)?;
            let existed = old.is_some();
            txn.commit().map_err(|e| store_err("commit", e))?;
            Ok(existed)
        })
        .await
    }

    /// Test support: stores raw bytes under `id` (an old-schema or corrupt record).
    #[cfg(test)]
    pub async fn put_raw(&self, id: &str, bytes: &[u8]) -> Result<()> {
        let (id, bytes) = (id.to_string(), bytes.to_vec());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(|e| store_err("begin", e))?;
            txn.open_table(ATTACHMENTS)
                .map_err(|e| store_err("open", e))?
                .insert(id.as_str(), bytes.as_slice())
                .map_err(|e| store_err("write", e))?;
            let keys = decode_record(&id, &bytes)
                .map(|a| docker_keys(&a))
                .unwrap_or_default();
            reindex(&txn, &id, &keys)?;
            txn.commit().map_err(|e| store_err("commit", e))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttachRequest, Phase};

    fn att(c: &str) -> Attachment {
        let req = AttachRequest {
            container_id: c.into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/x".into(),
            network: "n1".into(),
            ..Default::default()
        };
        let key = crate::model::AttachmentKey {
            container_id: c.into(),
            ifname: "eth0".into(),
        };
        let id = key.id("h");
        let edge = crate::model::EdgeState::VethOvs {
            host_ifname: crate::model::host_ifname(&id),
            lower: None,
        };
        Attachment::new(&req, id, "ovn", edge)
    }

    /// A claim is taken with the intent, in one transaction: a second record cannot take it, a
    /// refused create writes nothing, deleting the holder frees it, and it survives a reopen.
    #[tokio::test]
    async fn claims_are_exclusive_atomic_with_the_intent_and_freed_with_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut a = att("c1");
        a.claims = vec![crate::model::vlan_claim("vm1", 1)];
        s.create(&mut a).await.unwrap();
        let mut b = att("c2");
        b.claims = vec![
            crate::model::vlan_claim("vm1", 2),
            crate::model::vlan_claim("vm1", 1),
        ];
        let e = s.create(&mut b).await.unwrap_err();
        assert!(
            matches!(&e, Error::Claimed { holder, .. } if *holder == a.id),
            "{e}"
        );
        assert!(
            s.get(&b.id).await.unwrap().is_none(),
            "the refused intent was not written"
        );
        assert_eq!(
            s.claims("vlan:vm1:").await.unwrap(),
            vec![("vlan:vm1:1".to_string(), a.id.clone())],
            "nor its other claim"
        );
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.claims("vlan:vm1:").await.unwrap().len(),
            1,
            "claims survive a reopen"
        );
        assert!(s.claims("vlan:vm2:").await.unwrap().is_empty());
        assert!(s.delete(&a.id).await.unwrap());
        assert!(
            s.claims("vlan:").await.unwrap().is_empty(),
            "freed with the record"
        );
        s.create(&mut b).await.unwrap();
        assert_eq!(s.claims("vlan:vm1:").await.unwrap().len(), 2);
    }

    #[test]
    fn the_lowest_free_tag_skips_store_and_backend_tags_and_runs_out() {
        use std::collections::BTreeSet;
        let none = BTreeSet::new();
        assert_eq!(crate::model::lowest_unused_vlan_tag(&none, &none), Some(1));
        let held: BTreeSet<u16> = [1, 2, 4].into();
        let backend: BTreeSet<u16> = [3, 5].into();
        assert_eq!(
            crate::model::lowest_unused_vlan_tag(&held, &backend),
            Some(6)
        );
        let all: BTreeSet<u16> = (1..=4094).collect();
        assert_eq!(crate::model::lowest_unused_vlan_tag(&all, &none), None);
        let most: BTreeSet<u16> = (1..=4093).collect();
        assert_eq!(
            crate::model::lowest_unused_vlan_tag(&most, &none),
            Some(4094)
        );
    }

    #[tokio::test]
    async fn put_get_list_delete_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = att("c1");
        let mut b = att("c2");
        {
            let s = Store::open(dir.path()).unwrap();
            s.create(&mut a).await.unwrap();
            s.create(&mut b).await.unwrap();
            assert!(a.generation >= 1 && b.generation > a.generation);
            b.phase = Phase::Ready;
            s.put(&b).await.unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.get(&a.id).await.unwrap(), Some(a.clone()));
        assert_eq!(s.get(&b.id).await.unwrap().unwrap().phase, Phase::Ready);
        assert_eq!(s.list().await.unwrap().attachments.len(), 2);
        assert!(s.delete(&a.id).await.unwrap());
        assert!(!s.delete(&a.id).await.unwrap());
        assert_eq!(s.list().await.unwrap().attachments.len(), 1);
        // Generations keep growing across reopen: a new attach never reuses one.
        let mut c = att("c1");
        s.create(&mut c).await.unwrap();
        assert!(c.generation > b.generation);
    }

    /// The Docker index follows every write: a key finds the record while it holds it, not
    /// after it changed or went, and is rebuilt from the records on open (a store written by a
    /// Courier that kept no index).
    #[tokio::test]
    async fn docker_lookups_follow_the_records() {
        use crate::model::{DockerNetwork, DockerRef, LogicalPort};
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut a = att("docker-lease:1");
        a.network = "dn".into();
        a.docker = Some(DockerRef {
            pool_id: "courier:10.9.0.0/24".into(),
            network_id: Some("N1".into()),
            leased: true,
            ..Default::default()
        });
        a.port = Some(LogicalPort {
            id: "p".into(),
            name: "p".into(),
            network: "dn".into(),
            mac: "0A:00:00:00:00:01".into(),
            ips: vec!["10.9.0.5/24".parse().unwrap()],
            gateways: vec![],
            routes: vec![],
            dns: Default::default(),
            mtu: None,
            up: true,
            attachment: None,
            pairs_on: None,
            vlan: None,
        });
        s.create(&mut a).await.unwrap();
        let mut cni = att("c9");
        s.create(&mut cni).await.unwrap();
        let ip = "10.9.0.5".parse().unwrap();
        let by = |k: DockerKey<'static>| {
            let s = s.clone();
            async move {
                s.docker_records(k)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|a| a.id)
                    .collect::<Vec<_>>()
            }
        };
        let addr = DockerKey::Address { network: "dn", ip };
        assert_eq!(by(addr).await, vec![a.id.clone()]);
        assert_eq!(
            by(DockerKey::Mac {
                network: "dn",
                mac: "0a:00:00:00:00:01"
            })
            .await,
            vec![a.id.clone()]
        );
        assert_eq!(by(DockerKey::Network("N1")).await, vec![a.id.clone()]);
        assert!(by(DockerKey::Endpoint("E1")).await.is_empty());
        assert!(by(DockerKey::Address {
            network: "other",
            ip
        })
        .await
        .is_empty());
        // An endpoint comes, the address changes (a note, not durable): the keys follow.
        a.docker.as_mut().unwrap().endpoint_id = Some("E1".into());
        a.port.as_mut().unwrap().ips = vec!["10.9.0.6/24".parse().unwrap()];
        s.note(&a).await.unwrap();
        assert_eq!(by(DockerKey::Endpoint("E1")).await, vec![a.id.clone()]);
        assert!(
            by(addr).await.is_empty(),
            "the old address no longer finds it"
        );
        // A store whose index is gone (written by a Courier without one) gets it back on open.
        drop(s);
        {
            let db = Database::create(dir.path().join("courier.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            txn.delete_table(DOCKER_INDEX).unwrap();
            txn.delete_table(DOCKER_INDEX_OF).unwrap();
            txn.commit().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let e1 = s.docker_records(DockerKey::Endpoint("E1")).await.unwrap();
        assert_eq!(e1.len(), 1, "rebuilt on open");
        assert!(s.delete(&a.id).await.unwrap());
        assert!(s
            .docker_records(DockerKey::Endpoint("E1"))
            .await
            .unwrap()
            .is_empty());
        // Pools find their network, and go with it.
        let net = DockerNetwork {
            network_id: "N1".into(),
            name: "dn".into(),
            backend: "ovn".into(),
            created: true,
            pool4: "courier:10.9.0.0/24".into(),
            pool6: Some("courier:fd00::/64".into()),
            binding: None,
            scope: None,
            since: 0,
        };
        s.put_docker_network(&net).await.unwrap();
        assert_eq!(
            s.docker_network_of_pool("courier:fd00::/64").await.unwrap(),
            Some(net.clone())
        );
        assert_eq!(s.docker_network("N1").await.unwrap(), Some(net.clone()));
        assert!(s.delete_docker_network("N1").await.unwrap());
        assert!(s
            .docker_network_of_pool("courier:10.9.0.0/24")
            .await
            .unwrap()
            .is_none());
    }

    /// A record exactly as the first slice (schema 1, no version field) wrote it.
    const SCHEMA_1_RECORD: &str = r#"{"id":"d887cd286879","container_id":"abc","ifname":"eth0","netns":"/var/run/netns/x","network":"n1","phase":"ready","port_name":"courier-d887cd286879","host_ifname":"cvd887cd286879","port":{"name":"courier-d887cd286879","network":"n1","mac":"0a:00:00:00:00:05","ips":["10.9.0.5/24"],"gateway":"10.9.0.1","up":true,"attachment":"d887cd286879"},"netns_inode":4026532000,"requested_ip":null,"requested_mac":null,"created_at":1764500000}"#;

    #[tokio::test]
    async fn older_schema_is_read_and_bad_records_are_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.put_raw("d887cd286879", SCHEMA_1_RECORD.as_bytes())
            .await
            .unwrap();
        s.put_raw("000000000bad", b"{not json").await.unwrap();
        s.put_raw(
            "0000000000f9",
            br#"{"schema": 99, "id": "0000000000f9", "from": "the future"}"#,
        )
        .await
        .unwrap();
        let mut good = att("c2");
        s.create(&mut good).await.unwrap();

        let l = s.list().await.unwrap();
        assert_eq!(l.attachments.len(), 2, "{l:?}");
        let old = l
            .attachments
            .iter()
            .find(|a| a.id == "d887cd286879")
            .unwrap();
        assert_eq!(old.schema, 1);
        assert_eq!(old.generation, 0);
        assert_eq!(old.phase, Phase::Ready);
        assert_eq!(old.edge.host_ifname(), Some("cvd887cd286879"));
        assert_eq!(old.edge.kind(), "veth-ovs");
        assert_eq!(old.backend, "ovn");
        assert_eq!(old.port.as_ref().unwrap().mac, "0a:00:00:00:00:05");
        assert_eq!(old.port.as_ref().unwrap().id, "courier-d887cd286879");
        assert_eq!(
            old.port.as_ref().unwrap().gateways,
            vec!["10.9.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(l.undecodable.len(), 2);
        let future = l
            .undecodable
            .iter()
            .find(|u| u.id == "0000000000f9")
            .unwrap();
        assert!(future.error.contains("newer Courier"), "{future:?}");
        // Kept, never dropped; get says what is wrong; the sweep treats them as recorded.
        assert!(s.is_recorded("000000000bad").await.unwrap());
        let e = s.get("000000000bad").await.unwrap_err().to_string();
        assert!(e.contains("kept aside"), "{e}");
        assert!(!s.is_recorded("0000000000aa").await.unwrap());
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.list().await.unwrap().undecodable.len(), 2);
    }
}
