//! Courier's one error type. Every variant says which thing failed and, where it can, what to do.

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid request: {0}")]
    InvalidInput(String),
    #[error("{0}")]
    IncompatibleVersion(String),
    #[error("invalid environment: {0}")]
    InvalidEnv(String),
    #[error("cannot decode request: {0}")]
    Decode(String),
    #[error("network {0:?} does not exist: create it with `courier network create {0} --subnet CIDR` (see `courier network list`)")]
    UnknownNetwork(String),
    #[error("network {0:?} already exists: pick another name or use the existing one (`courier network show {0}`)")]
    NetworkExists(String),
    #[error("network {name:?} still has {ports} port(s): detach its containers first (`courier port list`)")]
    NetworkInUse { name: String, ports: usize },
    #[error("container {container_id:?} already has interface {ifname:?} (attachment {id}): DEL it first or use another ifname")]
    AlreadyAttached {
        container_id: String,
        ifname: String,
        id: String,
    },
    #[error("container {container_id:?} has no interface {ifname:?} attached by Courier")]
    NotAttached {
        container_id: String,
        ifname: String,
    },
    #[error("address {address} is already used by logical port {port} on network {network:?}: request another or let the backend choose")]
    AddressInUse {
        address: String,
        port: String,
        network: String,
    },
    #[error("{resource} is held by attachment {holder}: {what}")]
    Claimed {
        resource: String,
        holder: String,
        what: String,
    },
    #[error("{resource}: every one is in use: {what}")]
    Exhausted { resource: String, what: String },
    #[error("OVN Northbound: {context}: {source}")]
    Backend {
        context: String,
        #[source]
        source: Box<courier_ovsdb::Error>,
    },
    #[error("OVN Northbound: {0}")]
    BackendState(String),
    #[error("OVN Southbound: {context}: {source}")]
    Southbound {
        context: String,
        #[source]
        source: Box<courier_ovsdb::Error>,
    },
    /// This daemon's host mark is in use by another machine (see `backend::MarkClaim`): the
    /// daemon refuses to start.
    #[error("{0}")]
    MarkClaimed(String),
    #[error("Neutron: {context}: {source}")]
    OpenStack {
        context: String,
        #[source]
        source: Box<courier_openstack::Error>,
    },
    /// Neutron answered, but not as asked: a port it could not bind.
    #[error("Neutron: {0}")]
    NeutronRefused(String),
    #[error("backend {backend} is unreachable: {detail}: try again later")]
    BackendDown { backend: String, detail: String },
    #[error("local Open_vSwitch DB: {context}: {source}")]
    Vswitch {
        context: String,
        #[source]
        source: Box<courier_ovsdb::Error>,
    },
    #[error("edge binding: {context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: Box<courier_netlink::Error>,
    },
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("local store: {0}")]
    Store(String),
    #[error("check failed for attachment {id}: {what}")]
    CheckFailed { id: String, what: String },
    /// A best-effort teardown that could not do every step: each failure, in order.
    #[error(
        "teardown of {id} incomplete ({}); the record is kept and reconcile retries",
        list(errors)
    )]
    Teardown { id: String, errors: Vec<Error> },
    #[error("daemon unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn list(errors: &[Error]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The CNI error shape; also the daemon API's error body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

/// CNI well-known error codes (spec 1.1 §"Error") and Courier's own (>= 100).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_NETCONF: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    pub const BACKEND: u32 = 100;
    pub const EDGE: u32 = 101;
    pub const ALREADY_ATTACHED: u32 = 102;
    pub const NOT_ATTACHED: u32 = 103;
    pub const CHECK_FAILED: u32 = 104;
    pub const ADDRESS_IN_USE: u32 = 105;
    pub const CONFLICT: u32 = 106;
    pub const INTERNAL: u32 = 999;
}

impl Error {
    pub fn code(&self) -> u32 {
        use Error::*;
        match self {
            InvalidInput(_) => code::INVALID_NETCONF,
            IncompatibleVersion(_) => code::INCOMPATIBLE_VERSION,
            InvalidEnv(_) => code::INVALID_ENV,
            Decode(_) => code::DECODE,
            UnknownNetwork(_) => code::INVALID_NETCONF,
            NetworkExists(_) | NetworkInUse { .. } => code::CONFLICT,
            AlreadyAttached { .. } => code::ALREADY_ATTACHED,
            NotAttached { .. } => code::NOT_ATTACHED,
            AddressInUse { .. } => code::ADDRESS_IN_USE,
            Claimed { .. } | Exhausted { .. } => code::CONFLICT,
            Backend { source, .. } | Vswitch { source, .. } | Southbound { source, .. }
                if is_disconnect(source) =>
            {
                code::TRY_AGAIN_LATER
            }
            Backend { .. } | BackendState(_) | Southbound { .. } | NeutronRefused(_) => {
                code::BACKEND
            }
            MarkClaimed(_) => code::CONFLICT,
            BackendDown { .. } => code::TRY_AGAIN_LATER,
            OpenStack { source, .. } if source.is_transient() => code::TRY_AGAIN_LATER,
            OpenStack { source, .. } => match source.fault_type() {
                Some("IpAddressAlreadyAllocated") | Some("MacAddressInUse") => code::ADDRESS_IN_USE,
                _ => code::BACKEND,
            },
            Vswitch { .. } | Netlink { .. } => code::EDGE,
            Timeout(_) => code::TRY_AGAIN_LATER,
            Store(_) => code::IO_FAILURE,
            CheckFailed { .. } => code::CHECK_FAILED,
            Unavailable(_) => code::PLUGIN_NOT_AVAILABLE,
            Internal(_) => code::INTERNAL,
            // Retryable if any step was: the runtime should try the DEL again.
            Teardown { errors, .. } => {
                let codes: Vec<u32> = errors.iter().map(Error::code).collect();
                if codes.contains(&code::TRY_AGAIN_LATER) {
                    code::TRY_AGAIN_LATER
                } else {
                    codes.first().copied().unwrap_or(code::INTERNAL)
                }
            }
        }
    }

    /// HTTP status for the daemon API.
    pub fn http_status(&self) -> u16 {
        use Error::*;
        match self {
            InvalidInput(_) | IncompatibleVersion(_) | InvalidEnv(_) | Decode(_) => 400,
            UnknownNetwork(_) | NotAttached { .. } => 404,
            NetworkExists(_)
            | NetworkInUse { .. }
            | AlreadyAttached { .. }
            | AddressInUse { .. }
            | Claimed { .. }
            | Exhausted { .. }
            | MarkClaimed(_) => 409,
            CheckFailed { .. } => 412,
            Timeout(_) | Unavailable(_) | BackendDown { .. } => 503,
            OpenStack { source, .. } if source.is_transient() => 503,
            Backend { source, .. } | Vswitch { source, .. } | Southbound { source, .. }
                if is_disconnect(source) =>
            {
                503
            }
            Teardown { .. } if self.code() == code::TRY_AGAIN_LATER => 503,
            _ => 500,
        }
    }

    pub fn body(&self) -> ErrorBody {
        let details = std::error::Error::source(self)
            .map(|s| s.to_string())
            .unwrap_or_default();
        ErrorBody {
            code: self.code(),
            msg: self.to_string(),
            details,
        }
    }
}

fn is_disconnect(e: &courier_ovsdb::Error) -> bool {
    matches!(
        *e,
        courier_ovsdb::Error::Disconnected
            | courier_ovsdb::Error::Connect { .. }
            | courier_ovsdb::Error::Timeout { .. }
    )
}

impl Error {
    pub fn backend(context: impl Into<String>, source: courier_ovsdb::Error) -> Error {
        Error::Backend {
            context: context.into(),
            source: Box::new(source),
        }
    }

    pub fn southbound(context: impl Into<String>, source: courier_ovsdb::Error) -> Error {
        Error::Southbound {
            context: context.into(),
            source: Box::new(source),
        }
    }

    pub fn vswitch(context: impl Into<String>, source: courier_ovsdb::Error) -> Error {
        Error::Vswitch {
            context: context.into(),
            source: Box::new(source),
        }
    }

    pub fn netlink(context: impl Into<String>, source: courier_netlink::Error) -> Error {
        Error::Netlink {
            context: context.into(),
            source: Box::new(source),
        }
    }
}
