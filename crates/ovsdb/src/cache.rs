//! The monitor cache's rows plus secondary indexes declared when the monitor is created, kept
//! up to date by the same code (and under the same lock) that applies the server's updates, so
//! a lookup by column value costs a hash probe plus the size of its answer instead of a scan of
//! the whole table.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use crate::client::{apply_updates, Tables};
use crate::value::Row;

/// A secondary index on one column of one table, declared with
/// [`Client::monitor_indexed`](crate::Client::monitor_indexed).
///
/// Keys are atoms rendered as strings: a string is itself, a uuid (`["uuid", U]`) is `U`,
/// anything else (integer, real, boolean) is its JSON text (`5`, `true`). A set-valued column
/// indexes each element (so `Logical_Switch.ports` answers "which switch holds this port
/// uuid"); an empty set indexes nothing. A map-valued column is indexed by the value at one of
/// its keys with [`Index::map_key`]; rows without that key are not in the index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Index {
    table: Cow<'static, str>,
    column: Cow<'static, str>,
    map_key: Option<Cow<'static, str>>,
}

impl Index {
    /// Rows of `table` by the value (or each set element) of `column`.
    pub const fn new(table: &'static str, column: &'static str) -> Index {
        Index {
            table: Cow::Borrowed(table),
            column: Cow::Borrowed(column),
            map_key: None,
        }
    }

    /// Rows of `table` by the value at `key` of the map column `column`.
    pub const fn map_key(table: &'static str, column: &'static str, key: &'static str) -> Index {
        Index {
            table: Cow::Borrowed(table),
            column: Cow::Borrowed(column),
            map_key: Some(Cow::Borrowed(key)),
        }
    }

    /// [`Index::new`] / [`Index::map_key`] with names known only at run time.
    pub fn owned(table: &str, column: &str, map_key: Option<&str>) -> Index {
        Index {
            table: Cow::Owned(table.to_string()),
            column: Cow::Owned(column.to_string()),
            map_key: map_key.map(|k| Cow::Owned(k.to_string())),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// The keys `row` is filed under (deduplicated).
    fn keys(&self, row: &Row) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let Some(v) = row.get(self.column.as_ref()) else {
            return out;
        };
        match (&self.map_key, v) {
            (Some(want), Value::Array(a)) if a.len() == 2 && a[0] == "map" => {
                for pair in a[1].as_array().into_iter().flatten() {
                    if let (Some(k), Some(v)) = (pair.get(0), pair.get(1)) {
                        if atom_key(k) == want.as_ref() {
                            out.insert(atom_key(v));
                        }
                    }
                }
            }
            (Some(_), _) => {}
            (None, Value::Array(a)) if a.len() == 2 && a[0] == "set" => {
                out.extend(a[1].as_array().into_iter().flatten().map(atom_key));
            }
            (None, Value::Array(a)) if a.len() == 2 && a[0] == "map" => {}
            (None, v) => {
                out.insert(atom_key(v));
            }
        }
        out
    }

    /// Whether `row` is filed under `key` (the scan a lookup falls back to).
    fn matches(&self, row: &Row, key: &str) -> bool {
        self.keys(row).contains(key)
    }
}

/// An atom as an index key (see [`Index`]).
fn atom_key(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) if a.len() == 2 && (a[0] == "uuid" || a[0] == "named-uuid") => a[1]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| v.to_string()),
        other => other.to_string(),
    }
}

/// key → uuids of the rows filed under it (sorted, so answers come in a stable order).
type Entries = HashMap<String, BTreeSet<String>>;

/// Rows and indexes, always changed together.
#[derive(Default)]
pub(crate) struct Cache {
    pub(crate) tables: Tables,
    /// table → its indexes
    indexes: HashMap<String, Vec<(Index, Entries)>>,
}

impl Cache {
    pub(crate) fn new(indexes: &[Index]) -> Cache {
        let mut by_table: HashMap<String, Vec<(Index, Entries)>> = HashMap::new();
        for idx in indexes {
            let list = by_table.entry(idx.table.to_string()).or_default();
            if !list.iter().any(|(i, _)| i == idx) {
                list.push((idx.clone(), Entries::new()));
            }
        }
        Cache {
            tables: Tables::new(),
            indexes: by_table,
        }
    }

    /// Replaces everything with a monitor reply (initial contents, also after a reconnect).
    pub(crate) fn replace(&mut self, updates: &Value) {
        self.tables.clear();
        for list in self.indexes.values_mut() {
            for (_, entries) in list.iter_mut() {
                entries.clear();
            }
        }
        self.apply(updates);
    }

    /// Applies <table-updates>: rows through [`apply_updates`]; for every changed row of an
    /// indexed table its keys are read before and after, and only the difference is filed
    /// (a port added to a switch's `ports` set moves one key, not the whole set).
    pub(crate) fn apply(&mut self, updates: &Value) {
        let touched = self.touched(updates);
        let before: Vec<BTreeSet<String>> = touched
            .iter()
            .map(|(table, uuid, i)| {
                let idx = &self.indexes[table][*i].0;
                self.row(table, uuid)
                    .map(|r| idx.keys(r))
                    .unwrap_or_default()
            })
            .collect();
        apply_updates(&mut self.tables, updates);
        for ((table, uuid, i), old) in touched.iter().zip(before) {
            let row = self.tables.get(table).and_then(|t| t.get(uuid));
            let (idx, entries) = &mut self.indexes.get_mut(table).expect("indexed table")[*i];
            let new = row.map(|r| idx.keys(r)).unwrap_or_default();
            for k in old.difference(&new) {
                if let Some(set) = entries.get_mut(k) {
                    set.remove(uuid);
                    if set.is_empty() {
                        entries.remove(k);
                    }
                }
            }
            for k in new.difference(&old) {
                entries.entry(k.clone()).or_default().insert(uuid.clone());
            }
        }
    }

    /// (table, row uuid, index number) for each index an update may change: every index of the
    /// table for an insert or delete, only those whose column is in "new" for a modify.
    fn touched(&self, updates: &Value) -> Vec<(String, String, usize)> {
        let mut out = Vec::new();
        let Some(obj) = updates.as_object() else {
            return out;
        };
        for (table, rows) in obj {
            let Some(list) = self.indexes.get(table) else {
                continue;
            };
            let cached = self.tables.get(table);
            for (uuid, change) in rows.as_object().into_iter().flatten() {
                let new = change.get("new").and_then(Value::as_object);
                let exists = cached.is_some_and(|t| t.contains_key(uuid));
                for (i, (idx, _)) in list.iter().enumerate() {
                    let affected = match new {
                        Some(new) if exists => new.contains_key(idx.column.as_ref()),
                        _ => true,
                    };
                    if affected {
                        out.push((table.clone(), uuid.clone(), i));
                    }
                }
            }
        }
        out
    }

    pub(crate) fn row(&self, table: &str, uuid: &str) -> Option<&Row> {
        self.tables.get(table).and_then(|t| t.get(uuid))
    }

    pub(crate) fn rows(&self, table: &str) -> impl Iterator<Item = (&String, &Row)> {
        self.tables.get(table).into_iter().flat_map(|t| t.iter())
    }

    /// The rows of `index.table()` filed under `key`, in uuid order. An index that was not
    /// declared is answered by a scan of the table (same answer, cost of the whole table).
    pub(crate) fn lookup(&self, index: &Index, key: &str) -> Vec<(&String, &Row)> {
        let Some(rows) = self.tables.get(index.table.as_ref()) else {
            return Vec::new();
        };
        let declared = self
            .indexes
            .get(index.table.as_ref())
            .and_then(|list| list.iter().find(|(i, _)| i == index));
        match declared {
            Some((_, entries)) => entries
                .get(key)
                .into_iter()
                .flatten()
                .filter_map(|u| rows.get_key_value(u))
                .collect(),
            None => {
                tracing::debug!(?index, "lookup on an undeclared index: scanning");
                let mut found: Vec<(&String, &Row)> =
                    rows.iter().filter(|(_, r)| index.matches(r, key)).collect();
                found.sort_by(|a, b| a.0.cmp(b.0));
                found
            }
        }
    }

    /// How many keys each index holds (tests).
    #[cfg(test)]
    fn key_count(&self, index: &Index) -> usize {
        self.indexes[index.table.as_ref()]
            .iter()
            .find(|(i, _)| i == index)
            .map(|(_, e)| e.len())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LSP_NAME: Index = Index::new("LSP", "name");
    const LSP_HOST: Index = Index::map_key("LSP", "external_ids", "host");
    const LS_PORTS: Index = Index::new("LS", "ports");
    const LS_NAME: Index = Index::new("LS", "name");
    const IF_OFPORT: Index = Index::new("If", "ofport");

    fn cache() -> Cache {
        Cache::new(&[LSP_NAME, LSP_HOST, LS_PORTS, LS_NAME, IF_OFPORT, LSP_NAME])
    }

    fn uuids(c: &Cache, idx: &Index, key: &str) -> Vec<String> {
        c.lookup(idx, key)
            .into_iter()
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// Every declared index answers exactly what a scan answers, for every key in the table.
    fn consistent(c: &Cache) {
        for (table, list) in &c.indexes {
            for (idx, entries) in list {
                let mut all: BTreeSet<String> = BTreeSet::new();
                for (_, r) in c.rows(table) {
                    all.extend(idx.keys(r));
                }
                let keys: BTreeSet<String> = entries.keys().cloned().collect();
                assert_eq!(keys, all, "{idx:?}: no stale or missing keys");
                for k in &all {
                    let mut scan: Vec<String> = c
                        .rows(table)
                        .filter(|(_, r)| idx.matches(r, k))
                        .map(|(u, _)| u.clone())
                        .collect();
                    scan.sort();
                    assert_eq!(uuids(c, idx, k), scan, "{idx:?} {k}");
                }
            }
        }
    }

    #[test]
    fn insert_modify_delete_keep_indexes() {
        let mut c = cache();
        c.apply(&json!({"LSP": {
            "u1": {"new": {"name": "p1", "external_ids": ["map", [["host", "h1"], ["x", "y"]]]}},
            "u2": {"new": {"name": "p2", "external_ids": ["map", [["host", "h1"]]]}},
            "u3": {"new": {"name": "p2", "external_ids": ["map", []]}},
        }}));
        consistent(&c);
        assert_eq!(uuids(&c, &LSP_NAME, "p1"), ["u1"]);
        assert_eq!(
            uuids(&c, &LSP_NAME, "p2"),
            ["u2", "u3"],
            "duplicates, uuid order"
        );
        assert_eq!(uuids(&c, &LSP_HOST, "h1"), ["u1", "u2"]);
        assert!(
            uuids(&c, &LSP_HOST, "y").is_empty(),
            "only the declared map key"
        );
        assert!(uuids(&c, &LSP_NAME, "nope").is_empty());

        // Modify that changes the key: the old key is gone, the new one has the row.
        c.apply(&json!({"LSP": {"u1": {"old": {"name": "p1"}, "new": {"name": "p9"}}}}));
        consistent(&c);
        assert!(uuids(&c, &LSP_NAME, "p1").is_empty());
        assert_eq!(uuids(&c, &LSP_NAME, "p9"), ["u1"]);
        assert_eq!(
            uuids(&c, &LSP_HOST, "h1"),
            ["u1", "u2"],
            "other column untouched"
        );
        assert_eq!(
            c.lookup(&LSP_NAME, "p9")[0].1["name"],
            "p9",
            "the current row"
        );

        // Modify of an unindexed column, and of the map (host moves, key removed).
        c.apply(&json!({"LSP": {
            "u1": {"old": {"up": false}, "new": {"up": true}},
            "u2": {"old": {"external_ids": ["map", [["host", "h1"]]]}, "new": {"external_ids": ["map", [["host", "h2"]]]}},
            "u3": {"old": {"external_ids": ["map", []]}, "new": {"external_ids": ["map", [["host", "h1"]]]}},
        }}));
        consistent(&c);
        assert_eq!(uuids(&c, &LSP_HOST, "h1"), ["u1", "u3"]);
        assert_eq!(uuids(&c, &LSP_HOST, "h2"), ["u2"]);
        c.apply(&json!({"LSP": {"u1": {"old": {"external_ids": ["map", [["host", "h1"], ["x", "y"]]]}, "new": {"external_ids": ["map", [["x", "y"]]]}}}}));
        consistent(&c);
        assert_eq!(uuids(&c, &LSP_HOST, "h1"), ["u3"]);

        // Delete.
        c.apply(&json!({"LSP": {"u3": {"old": {"name": "p2"}}, "u2": {"old": {"name": "p2"}}}}));
        consistent(&c);
        assert!(uuids(&c, &LSP_NAME, "p2").is_empty());
        assert!(uuids(&c, &LSP_HOST, "h1").is_empty());
        assert_eq!(c.key_count(&LSP_NAME), 1, "empty keys are dropped");
        assert_eq!(c.key_count(&LSP_HOST), 0);
        // Deleting an unknown row is harmless.
        c.apply(&json!({"LSP": {"zz": {"old": {"name": "p1"}}}}));
        consistent(&c);
    }

    #[test]
    fn set_valued_columns_index_each_element() {
        let mut c = cache();
        c.apply(&json!({"LS": {
            "s1": {"new": {"name": "n1", "ports": ["set", [["uuid", "p1"], ["uuid", "p2"]]]}},
            "s2": {"new": {"name": "n2", "ports": ["uuid", "p3"]}},
            "s3": {"new": {"name": "n3", "ports": ["set", []]}},
        }}));
        consistent(&c);
        assert_eq!(uuids(&c, &LS_PORTS, "p1"), ["s1"]);
        assert_eq!(uuids(&c, &LS_PORTS, "p2"), ["s1"]);
        assert_eq!(
            uuids(&c, &LS_PORTS, "p3"),
            ["s2"],
            "a bare atom is a one-element set"
        );
        assert_eq!(c.key_count(&LS_PORTS), 3, "an empty set files nothing");
        assert_eq!(uuids(&c, &LS_NAME, "n3"), ["s3"]);

        // A port moves from s1 to s3; s1 keeps p2.
        c.apply(&json!({"LS": {
            "s1": {"old": {"ports": ["set", [["uuid", "p1"], ["uuid", "p2"]]]}, "new": {"ports": ["uuid", "p2"]}},
            "s3": {"old": {"ports": ["set", []]}, "new": {"ports": ["uuid", "p1"]}},
        }}));
        consistent(&c);
        assert_eq!(uuids(&c, &LS_PORTS, "p1"), ["s3"]);
        assert_eq!(uuids(&c, &LS_PORTS, "p2"), ["s1"]);
        c.apply(&json!({"LS": {"s2": {"old": {}}}}));
        consistent(&c);
        assert!(uuids(&c, &LS_PORTS, "p3").is_empty());
    }

    #[test]
    fn non_string_atoms_are_keyed_by_json_text() {
        let mut c = cache();
        c.apply(&json!({"If": {
            "i1": {"new": {"ofport": 5}},
            "i2": {"new": {"ofport": ["set", [-1]]}},
            "i3": {"new": {"ofport": ["set", []]}},
        }}));
        consistent(&c);
        assert_eq!(uuids(&c, &IF_OFPORT, "5"), ["i1"]);
        assert_eq!(uuids(&c, &IF_OFPORT, "-1"), ["i2"]);
    }

    #[test]
    fn replace_rebuilds_from_scratch() {
        let mut c = cache();
        c.apply(&json!({
            "LSP": {"u1": {"new": {"name": "p1", "external_ids": ["map", [["host", "h1"]]]}}},
            "LS": {"s1": {"new": {"name": "n1", "ports": ["uuid", "u1"]}}},
        }));
        // Reconnect: the server's view now has another port, u1 is gone.
        c.replace(&json!({
            "LSP": {"u2": {"new": {"name": "p1", "external_ids": ["map", [["host", "h2"]]]}}},
            "LS": {"s1": {"new": {"name": "n1", "ports": ["uuid", "u2"]}}},
        }));
        consistent(&c);
        assert_eq!(uuids(&c, &LSP_NAME, "p1"), ["u2"]);
        assert!(uuids(&c, &LSP_HOST, "h1").is_empty());
        assert_eq!(uuids(&c, &LSP_HOST, "h2"), ["u2"]);
        assert!(uuids(&c, &LS_PORTS, "u1").is_empty());
        assert_eq!(uuids(&c, &LS_PORTS, "u2"), ["s1"]);
        c.replace(&json!({}));
        consistent(&c);
        assert_eq!(c.key_count(&LSP_NAME), 0);
    }

    #[test]
    fn undeclared_index_scans_with_the_same_answer() {
        let mut c = cache();
        c.apply(&json!({"LSP": {
            "u2": {"new": {"name": "p1", "up": true}},
            "u1": {"new": {"name": "p1", "up": false}},
        }}));
        let up = Index::owned("LSP", "up", None);
        assert_eq!(uuids(&c, &up, "true"), ["u2"]);
        let by_name = Index::owned("LSP", "name", None);
        assert_eq!(by_name, LSP_NAME, "owned and static names are one index");
        assert_eq!(uuids(&c, &by_name, "p1"), ["u1", "u2"]);
        assert!(uuids(&c, &Index::new("Nope", "name"), "p1").is_empty());
    }
}

#[cfg(test)]
mod monitor_tests {
    use super::Index;
    use crate::Monitor;
    use serde_json::json;
    use std::time::Duration;

    const IF_NAME: Index = Index::new("Interface", "name");

    /// The public face: lookups copy (Monitor) or borrow (view, wait_for), and wait_for sees
    /// an indexed row that arrives with a later update.
    #[tokio::test]
    async fn monitor_lookup_view_and_wait_for() {
        let m = Monitor::from_updates(
            &[IF_NAME],
            &json!({"Interface": {"i1": {"new": {"name": "veth1", "external_ids": ["map", []]}}}}),
        );
        assert_eq!(m.lookup(&IF_NAME, "veth1")[0].0, "i1");
        assert_eq!(m.view(|v| v.lookup(&IF_NAME, "veth1").len()), 1);
        let installed = |v: &crate::CacheView| {
            v.lookup(&IF_NAME, "veth2")
                .iter()
                .any(|(_, r)| {
                    crate::get_map(r, "external_ids")
                        .get("ovn-installed")
                        .map(String::as_str)
                        == Some("true")
                })
                .then_some(())
        };
        assert!(m
            .wait_for(Duration::from_millis(20), installed)
            .await
            .is_err());
        let later = m.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            later.apply_updates(&json!({"Interface": {"i2": {"new": {"name": "veth2", "external_ids": ["map", []]}}}}));
            later.apply_updates(&json!({"Interface": {"i2": {"old": {}, "new": {"external_ids": ["map", [["ovn-installed", "true"]]]}}}}));
        });
        m.wait_for(Duration::from_secs(5), installed).await.unwrap();
        assert_eq!(m.rows("Interface").len(), 2);
    }
}
