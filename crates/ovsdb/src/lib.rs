//! An async OVSDB client (RFC 7047) over unix or TCP sockets: `list_dbs`, `get_schema`,
//! `transact` (insert with named uuids, update, mutate, delete, select, wait, comment),
//! `monitor` with a live local cache, echo keep-alive, and reconnect with backoff that
//! re-establishes monitors. It knows nothing of Courier; one client type serves the OVN
//! Northbound DB and the local Open_vSwitch DB alike.
//!
//! Nothing waits unboundedly (defaults; see [`ClientOptions`]): a connect attempt fails after
//! 10 s (`connect_timeout`), a call after 30 s (`call_timeout`, [`Error::Timeout`]), and a
//! peer that goes silent is declared dead at most 15 s after the last byte received from it
//! (`echo_idle` 5 s + `echo_deadline` 10 s), however much the caller keeps sending; calls
//! waiting on it then fail with [`Error::Disconnected`] and the session reconnects.
//! [`Monitor::wait_for`] takes its own timeout.

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
