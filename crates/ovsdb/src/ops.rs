//! Transaction operations (RFC 7047 §5.2) as values, and their results.

use serde_json::{json, Value};

use crate::value::Row;

/// One operation of a `transact`. Build with the constructors; `to_json` gives the wire form.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    json: Value,
}

/// A `where` clause element: `[column, function, value]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition(Value);

/// A `mutate` element: `[column, mutator, value]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation(Value);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitUntil {
    Equal,
    NotEqual,
}

impl Condition {
    pub fn new(column: &str, function: &str, value: Value) -> Self {
        Condition(json!([column, function, value]))
    }
    pub fn eq(column: &str, value: Value) -> Self {
        Self::new(column, "==", value)
    }
    pub fn ne(column: &str, value: Value) -> Self {
        Self::new(column, "!=", value)
    }
    pub fn includes(column: &str, value: Value) -> Self {
        Self::new(column, "includes", value)
    }
    pub fn excludes(column: &str, value: Value) -> Self {
        Self::new(column, "excludes", value)
    }
}

impl Mutation {
    pub fn new(column: &str, mutator: &str, value: Value) -> Self {
        Mutation(json!([column, mutator, value]))
    }
    /// Adds elements to a set or pairs to a map.
    pub fn insert(column: &str, value: Value) -> Self {
        Self::new(column, "insert", value)
    }
    /// Removes elements from a set, or keys / pairs from a map.
    pub fn delete(column: &str, value: Value) -> Self {
        Self::new(column, "delete", value)
    }
    /// Integer arithmetic: "+=", "-=", "*=", "/=", "%=".
    pub fn arith(column: &str, op: &str, value: i64) -> Self {
        Self::new(column, op, json!(value))
    }
}

fn conds(c: Vec<Condition>) -> Value {
    Value::Array(c.into_iter().map(|c| c.0).collect())
}

impl Op {
    pub fn insert(table: &str, row: Value) -> Op {
        Op {
            json: json!({"op": "insert", "table": table, "row": row}),
        }
    }

    /// Names the inserted row so later ops of the same transaction can refer to it with
    /// `named_uuid(name)`. Only meaningful on `insert`.
    pub fn with_uuid_name(mut self, name: &str) -> Op {
        self.json["uuid-name"] = json!(name);
        self
    }

    pub fn update(table: &str, conditions: Vec<Condition>, row: Value) -> Op {
        Op {
            json: json!({"op": "update", "table": table, "where": conds(conditions), "row": row}),
        }
    }

    pub fn mutate(table: &str, conditions: Vec<Condition>, mutations: Vec<Mutation>) -> Op {
        let m: Vec<Value> = mutations.into_iter().map(|m| m.0).collect();
        Op {
            json: json!({"op": "mutate", "table": table, "where": conds(conditions), "mutations": m}),
        }
    }

    pub fn delete(table: &str, conditions: Vec<Condition>) -> Op {
        Op {
            json: json!({"op": "delete", "table": table, "where": conds(conditions)}),
        }
    }

    pub fn select(table: &str, conditions: Vec<Condition>, columns: Option<&[&str]>) -> Op {
        let mut json = json!({"op": "select", "table": table, "where": conds(conditions)});
        if let Some(c) = columns {
            json["columns"] = json!(c);
        }
        Op { json }
    }

    /// Fails the whole transaction unless the rows matching `conditions`, projected on
    /// `columns`, are (`Equal`) or are not (`NotEqual`) exactly `rows`, within `timeout_ms`
    /// (0 = now; None = wait forever).
    pub fn wait(
        table: &str,
        conditions: Vec<Condition>,
        columns: &[&str],
        until: WaitUntil,
        rows: Vec<Value>,
        timeout_ms: Option<u64>,
    ) -> Op {
        let mut json = json!({
            "op": "wait", "table": table, "where": conds(conditions), "columns": columns,
            "until": if until == WaitUntil::Equal { "==" } else { "!=" }, "rows": rows,
        });
        if let Some(t) = timeout_ms {
            json["timeout"] = json!(t);
        }
        Op { json }
    }

    /// Fails the whole transaction unless row `uuid` of `table` exists now and matches
    /// `conditions` too (e.g. still carries an owner mark): a `wait` with timeout 0, to make a
    /// check part of the transaction that acts on it.
    pub fn assert_row(table: &str, uuid: &str, mut conditions: Vec<Condition>) -> Op {
        conditions.push(Condition::eq("_uuid", crate::value::uuid(uuid)));
        Op::wait(
            table,
            conditions,
            &["_uuid"],
            WaitUntil::Equal,
            vec![json!({"_uuid": crate::value::uuid(uuid)})],
            Some(0),
        )
    }

    pub fn comment(text: &str) -> Op {
        Op {
            json: json!({"op": "comment", "comment": text}),
        }
    }

    pub fn to_json(&self) -> &Value {
        &self.json
    }

    pub fn kind(&self) -> &str {
        self.json["op"].as_str().unwrap_or("?")
    }

    /// "insert Logical_Switch_Port", for error messages.
    pub fn describe(&self) -> String {
        match self.json["table"].as_str() {
            Some(t) => format!("{} {t}", self.kind()),
            None => self.kind().to_string(),
        }
    }
}

/// The result of one successful operation.
#[derive(Debug, Clone, PartialEq)]
pub enum OpResult {
    /// insert: the new row's uuid.
    Insert { uuid: String },
    /// update, mutate, delete: rows matched.
    Count(u64),
    /// select: the rows.
    Rows(Vec<Row>),
    /// wait, comment.
    Empty,
}

impl OpResult {
    pub fn from_json(op: &Op, v: &Value) -> OpResult {
        match op.kind() {
            "insert" => OpResult::Insert {
                uuid: crate::value::uuid_of(&v["uuid"])
                    .unwrap_or_default()
                    .to_string(),
            },
            "select" => OpResult::Rows(
                v["rows"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r.as_object().cloned())
                    .collect(),
            ),
            "update" | "mutate" | "delete" => OpResult::Count(v["count"].as_u64().unwrap_or(0)),
            _ => OpResult::Empty,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{map, named_uuid, uuid};

    #[test]
    fn wire_forms() {
        assert_eq!(
            Op::insert("T", json!({"name": "a", "external_ids": map([("k", "v")])}))
                .with_uuid_name("n1")
                .to_json(),
            &json!({"op":"insert","table":"T","row":{"name":"a","external_ids":["map",[["k","v"]]]},"uuid-name":"n1"})
        );
        assert_eq!(
            Op::update(
                "T",
                vec![Condition::eq("name", json!("a"))],
                json!({"x": 1})
            )
            .to_json(),
            &json!({"op":"update","table":"T","where":[["name","==","a"]],"row":{"x":1}})
        );
        assert_eq!(
            Op::mutate(
                "LS",
                vec![Condition::eq("_uuid", uuid("u"))],
                vec![
                    Mutation::insert("ports", named_uuid("p")),
                    Mutation::delete("ports", uuid("old")),
                    Mutation::arith("n", "+=", 2)
                ]
            )
            .to_json(),
            &json!({"op":"mutate","table":"LS","where":[["_uuid","==",["uuid","u"]]],
                    "mutations":[["ports","insert",["named-uuid","p"]],["ports","delete",["uuid","old"]],["n","+=",2]]})
        );
        assert_eq!(
            Op::delete(
                "T",
                vec![
                    Condition::includes("s", json!("x")),
                    Condition::ne("a", json!(1)),
                    Condition::excludes("s", json!("y"))
                ]
            )
            .to_json(),
            &json!({"op":"delete","table":"T","where":[["s","includes","x"],["a","!=",1],["s","excludes","y"]]})
        );
        assert_eq!(
            Op::select("T", vec![], Some(&["_uuid", "name"])).to_json(),
            &json!({"op":"select","table":"T","where":[],"columns":["_uuid","name"]})
        );
        assert_eq!(
            Op::wait(
                "T",
                vec![Condition::eq("name", json!("a"))],
                &["name"],
                WaitUntil::Equal,
                vec![],
                Some(0)
            )
            .to_json(),
            &json!({"op":"wait","table":"T","where":[["name","==","a"]],"columns":["name"],"until":"==","rows":[],"timeout":0})
        );
        assert_eq!(
            Op::wait(
                "T",
                vec![],
                &["a"],
                WaitUntil::NotEqual,
                vec![json!({"a": 1})],
                None
            )
            .to_json()["until"],
            "!="
        );
        assert_eq!(
            Op::comment("hi").to_json(),
            &json!({"op":"comment","comment":"hi"})
        );
        assert_eq!(
            Op::assert_row("LSP", "u1", vec![Condition::eq("name", json!("p"))]).to_json(),
            &json!({"op": "wait", "table": "LSP",
                "where": [["name", "==", "p"], ["_uuid", "==", ["uuid", "u1"]]],
                "columns": ["_uuid"], "until": "==", "rows": [{"_uuid": ["uuid", "u1"]}],
                "timeout": 0})
        );
        assert_eq!(Op::insert("LSP", json!({})).describe(), "insert LSP");
        assert_eq!(Op::comment("x").describe(), "comment");
    }

    #[test]
    fn results() {
        let ins = Op::insert("T", json!({}));
        assert_eq!(
            OpResult::from_json(&ins, &json!({"uuid": ["uuid", "abc"]})),
            OpResult::Insert { uuid: "abc".into() }
        );
        let sel = Op::select("T", vec![], None);
        match OpResult::from_json(&sel, &json!({"rows": [{"name": "a"}]})) {
            OpResult::Rows(r) => assert_eq!(r[0]["name"], "a"),
            other => panic!("{other:?}"),
        }
        let m = Op::mutate("T", vec![], vec![]);
        assert_eq!(
            OpResult::from_json(&m, &json!({"count": 2})),
            OpResult::Count(2)
        );
        assert_eq!(
            OpResult::from_json(&Op::comment("c"), &json!({})),
            OpResult::Empty
        );
    }
}
