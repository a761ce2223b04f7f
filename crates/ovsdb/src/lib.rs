//! An async OVSDB client (RFC 7047) over unix or TCP sockets: `list_dbs`, `get_schema`,
//! `transact` (insert with named uuids, update, mutate, delete, select, wait, comment),
//! `monitor` with a live local cache, echo keep-alive, and reconnect with backoff that
//! re-establishes monitors. It knows nothing of Courier; one client type serves the OVN
//! Northbound DB and the local Open_vSwitch DB alike.

mod cache;
mod client;
mod framing;
mod ops;
mod value;

pub use cache::Index;
pub use client::{CacheView, Client, ClientOptions, Monitor};
pub use ops::{Condition, Mutation, Op, OpResult, WaitUntil};
pub use value::{
    empty_set, get_bool, get_i64, get_map, get_set, get_str, get_str_set, get_uuid, map,
    named_uuid, set, set_elements, uuid, uuid_of, Row,
};

/// Every failure carries what was being done and, for server errors, the server's text.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {remote}: {source}")]
    Connect {
        remote: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connection to the OVSDB server was lost")]
    Disconnected,
    #[error("timed out waiting for {what}")]
    Timeout { what: String },
    #[error("server error: {error}{}", details.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Rpc {
        error: String,
        details: Option<String>,
    },
    #[error("{db}: operation {index} ({op}) failed: {error}{}", details.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    OpFailed {
        db: String,
        index: usize,
        op: String,
        error: String,
        details: Option<String>,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
}
