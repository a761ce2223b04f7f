//! Durable local state (redb): one record per attachment, keyed by attachment id.
//!
//! Writes that recovery depends on (the intent before any side effect, "ready", "detaching") are
//! committed with immediate durability before the caller goes on; progress notes in between
//! (`note`) are not, since every unfinished phase is recovered the same way (rollback by
//! derived names). That is what lets `reconcile` finish or roll back after a crash.
//! redb is blocking, so every call runs on tokio's blocking pool.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::{Error, Result};
use crate::model::Attachment;

const ATTACHMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("attachments");

#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

fn store_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Store(format!("{what}: {e}"))
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

    pub async fn get(&self, id: &str) -> Result<Option<Attachment>> {
        let id = id.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(|e| store_err("begin", e))?;
            let t = txn
                .open_table(ATTACHMENTS)
                .map_err(|e| store_err("open", e))?;
            match t.get(id.as_str()).map_err(|e| store_err("read", e))? {
                Some(v) => serde_json::from_slice(v.value())
                    .map(Some)
                    .map_err(|e| store_err(&format!("decoding attachment {id}"), e)),
                None => Ok(None),
            }
        })
        .await
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
                removed.is_some()
            };
            txn.commit().map_err(|e| store_err("commit", e))?;
            Ok(existed)
        })
        .await
    }

    pub async fn list(&self) -> Result<Vec<Attachment>> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(|e| store_err("begin", e))?;
            let t = txn
                .open_table(ATTACHMENTS)
                .map_err(|e| store_err("open", e))?;
            let mut out = Vec::new();
            for item in t.iter().map_err(|e| store_err("iterate", e))? {
                let (k, v) = item.map_err(|e| store_err("iterate", e))?;
                let att: Attachment = serde_json::from_slice(v.value())
                    .map_err(|e| store_err(&format!("decoding attachment {}", k.value()), e))?;
                out.push(att);
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttachRequest, Phase};

    fn req(c: &str) -> AttachRequest {
        AttachRequest {
            container_id: c.into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/x".into(),
            network: "n1".into(),
            ip: None,
            mac: None,
        }
    }

    #[tokio::test]
    async fn put_get_list_delete_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let a = Attachment::new(&req("c1"));
        let mut b = Attachment::new(&req("c2"));
        {
            let s = Store::open(dir.path()).unwrap();
            s.put(&a).await.unwrap();
            s.put(&b).await.unwrap();
            b.phase = Phase::Ready;
            s.put(&b).await.unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.get(&a.id).await.unwrap(), Some(a.clone()));
        assert_eq!(s.get(&b.id).await.unwrap().unwrap().phase, Phase::Ready);
        assert_eq!(s.list().await.unwrap().len(), 2);
        assert!(s.delete(&a.id).await.unwrap());
        assert!(!s.delete(&a.id).await.unwrap());
        assert_eq!(s.list().await.unwrap().len(), 1);
    }
}
