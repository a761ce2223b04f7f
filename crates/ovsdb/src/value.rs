//! OVSDB's JSON value encoding (RFC 7047 §5.1): atoms, `["set", [...]]`, `["map", [[k, v]...]]`,
//! `["uuid", "..."]`, `["named-uuid", "..."]` — encoders and decoders for rows.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// A table row as the server sends it: column name → encoded value.
pub type Row = Map<String, Value>;

pub fn uuid(u: &str) -> Value {
    json!(["uuid", u])
}

pub fn named_uuid(name: &str) -> Value {
    json!(["named-uuid", name])
}

pub fn set<I: IntoIterator<Item = Value>>(items: I) -> Value {
    json!(["set", items.into_iter().collect::<Vec<_>>()])
}

pub fn empty_set() -> Value {
    json!(["set", []])
}

pub fn map<K: ToString, V: ToString, I: IntoIterator<Item = (K, V)>>(pairs: I) -> Value {
    let pairs: Vec<Value> = pairs
        .into_iter()
        .map(|(k, v)| json!([k.to_string(), v.to_string()]))
        .collect();
    json!(["map", pairs])
}

/// The elements of a set-typed value: a bare atom is a one-element set.
pub fn set_elements(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) if a.len() == 2 && a[0] == "set" => {
            a[1].as_array().cloned().unwrap_or_default()
        }
        Value::Null => vec![],
        other => vec![other.clone()],
    }
}

/// The uuid string of `["uuid", "..."]`.
pub fn uuid_of(v: &Value) -> Option<&str> {
    match v {
        Value::Array(a) if a.len() == 2 && a[0] == "uuid" => a[1].as_str(),
        _ => None,
    }
}

/// An optional column (`min: 0, max: 1`) is an atom or an empty set.
fn optional(v: &Value) -> Option<&Value> {
    match v {
        Value::Array(a) if a.len() == 2 && a[0] == "set" => a[1].as_array().and_then(|s| s.first()),
        other => Some(other),
    }
}

pub fn get_str<'a>(row: &'a Row, col: &str) -> Option<&'a str> {
    row.get(col).and_then(optional).and_then(Value::as_str)
}

pub fn get_bool(row: &Row, col: &str) -> Option<bool> {
    row.get(col).and_then(optional).and_then(Value::as_bool)
}

pub fn get_i64(row: &Row, col: &str) -> Option<i64> {
    row.get(col).and_then(optional).and_then(Value::as_i64)
}

pub fn get_uuid<'a>(row: &'a Row, col: &str) -> Option<&'a str> {
    row.get(col).and_then(optional).and_then(uuid_of)
}

pub fn get_set(row: &Row, col: &str) -> Vec<Value> {
    row.get(col).map(set_elements).unwrap_or_default()
}

pub fn get_str_set(row: &Row, col: &str) -> Vec<String> {
    get_set(row, col)
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect()
}

/// A map column with string keys; values that are not strings are rendered as JSON.
pub fn get_map(row: &Row, col: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(Value::Array(a)) = row.get(col) {
        if a.len() == 2 && a[0] == "map" {
            for pair in a[1].as_array().into_iter().flatten() {
                if let (Some(k), Some(v)) = (pair.get(0), pair.get(1)) {
                    let k = k
                        .as_str()
                        .map(String::from)
                        .unwrap_or_else(|| k.to_string());
                    let v = v
                        .as_str()
                        .map(String::from)
                        .unwrap_or_else(|| v.to_string());
                    out.insert(k, v);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: Value) -> Row {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn encoders() {
        assert_eq!(uuid("abc"), json!(["uuid", "abc"]));
        assert_eq!(named_uuid("n"), json!(["named-uuid", "n"]));
        assert_eq!(set([json!(1), json!(2)]), json!(["set", [1, 2]]));
        assert_eq!(empty_set(), json!(["set", []]));
        assert_eq!(
            map([("a", "1"), ("b", "2")]),
            json!(["map", [["a", "1"], ["b", "2"]]])
        );
    }

    #[test]
    fn decoders() {
        let r = row(json!({
            "name": "ls1",
            "opt_empty": ["set", []],
            "opt": ["set", ["x"]],
            "up": true,
            "up_opt": ["set", [false]],
            "ofport": 3,
            "ports": ["set", [["uuid", "u1"], ["uuid", "u2"]]],
            "one_port": ["uuid", "u3"],
            "addresses": ["set", ["dynamic", "0a:00:00:00:00:01 10.0.0.2"]],
            "addr1": "dynamic",
            "external_ids": ["map", [["k", "v"], ["n", 5]]],
        }));
        assert_eq!(get_str(&r, "name"), Some("ls1"));
        assert_eq!(get_str(&r, "opt_empty"), None);
        assert_eq!(get_str(&r, "opt"), Some("x"));
        assert_eq!(get_str(&r, "missing"), None);
        assert_eq!(get_bool(&r, "up"), Some(true));
        assert_eq!(get_bool(&r, "up_opt"), Some(false));
        assert_eq!(get_i64(&r, "ofport"), Some(3));
        assert_eq!(get_set(&r, "ports").len(), 2);
        assert_eq!(uuid_of(&get_set(&r, "ports")[1]), Some("u2"));
        assert_eq!(get_set(&r, "one_port").len(), 1);
        assert_eq!(get_uuid(&r, "one_port"), Some("u3"));
        assert_eq!(get_str_set(&r, "addresses").len(), 2);
        assert_eq!(get_str_set(&r, "addr1"), vec!["dynamic".to_string()]);
        let m = get_map(&r, "external_ids");
        assert_eq!(m.get("k").map(String::as_str), Some("v"));
        assert_eq!(m.get("n").map(String::as_str), Some("5"));
        assert!(get_map(&r, "name").is_empty());
    }
}
