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
//! redb is blocking, so every call runs on tokio's blocking pool.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Attachment, DockerNetwork, SCHEMA_VERSION};

const ATTACHMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("attachments");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Exclusive resources (`Attachment::claims`) → the attachment id that holds each.
const CLAIMS: TableDefinition<&str, &str> = TableDefinition::new("claims");
/// Docker networks of the libnetwork front door, by Docker's network id (JSON `DockerNetwork`).
const DOCKER_NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("docker_networks");
const NEXT_GENERATION: &str = "next_generation";

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

fn store_err(what: &str, e: impl std::fmt::Display) -> Error {
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
        txn.commit().map_err(|e| store_err("commit", e))?;
        Ok(Store { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
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

    /// Claims starting with `prefix` (e.g. `vlan:<parent>:`) and who holds each.
    #[allow(dead_code)] // the nested VLAN binding's tag allocator (issue 13); tests until then
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
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(|e| store_err("begin", e))?;
            txn.open_table(DOCKER_NETWORKS)
                .map_err(|e| store_err("open", e))?
                .insert(id.as_str(), bytes.as_slice())
                .map_err(|e| store_err(&format!("writing docker network {id}"), e))?;
            txn.commit()
                .map_err(|e| store_err(&format!("committing docker network {id}"), e))
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
            let existed = txn
                .open_table(DOCKER_NETWORKS)
                .map_err(|e| store_err("open", e))?
                .remove(id.as_str())
                .map_err(|e| store_err(&format!("deleting docker network {id}"), e))?
                .is_some();
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
        assert_eq!(crate::model::free_vlan_tag(&none, &none), Some(1));
        let held: BTreeSet<u16> = [1, 2, 4].into();
        let backend: BTreeSet<u16> = [3, 5].into();
        assert_eq!(crate::model::free_vlan_tag(&held, &backend), Some(6));
        let all: BTreeSet<u16> = (1..=4094).collect();
        assert_eq!(crate::model::free_vlan_tag(&all, &none), None);
        let most: BTreeSet<u16> = (1..=4093).collect();
        assert_eq!(crate::model::free_vlan_tag(&most, &none), Some(4094));
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
