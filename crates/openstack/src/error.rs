//! The one error type of the crate.

use std::fmt;

/// Which request failed: method, path (with query) and, when known, the resource it was about
/// (e.g. `port 3f1c…` or `network courier-net`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    pub method: String,
    pub path: String,
    pub resource: Option<String>,
}

impl fmt::Display for RequestContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)?;
        if let Some(r) = &self.resource {
            write!(f, " ({r})")?;
        }
        Ok(())
    }
}

/// Neutron's error body: `{"NeutronError": {"type": "...", "message": "...", "detail": ""}}`.
/// For a body that is not of that shape, `kind` is None and `message` is the body text (cut).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiFault {
    /// `NeutronError.type`, e.g. `IpAddressAlreadyAllocated`, `MacAddressInUse`, `OverQuota`.
    pub kind: Option<String>,
    pub message: String,
}

impl ApiFault {
    /// Parse a Neutron (or Keystone) error body.
    pub fn parse(body: &str) -> ApiFault {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
            if let Some(e) = v.get("NeutronError") {
                return ApiFault {
                    kind: e.get("type").and_then(|t| t.as_str()).map(str::to_string),
                    message: e
                        .get("message")
                        .and_then(|m| m.as_str())
                        .unwrap_or_default()
                        .to_string(),
                };
            }
            // Keystone: {"error": {"code": 401, "message": "...", "title": "Unauthorized"}}
            if let Some(e) = v.get("error") {
                return ApiFault {
                    kind: e.get("title").and_then(|t| t.as_str()).map(str::to_string),
                    message: e
                        .get("message")
                        .and_then(|m| m.as_str())
                        .unwrap_or_default()
                        .to_string(),
                };
            }
        }
        let mut message: String = body.trim().chars().take(512).collect();
        if message.len() < body.trim().len() {
            message.push('…');
        }
        ApiFault {
            kind: None,
            message,
        }
    }
}

impl fmt::Display for ApiFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Some(k) if self.message.is_empty() => write!(f, "{k}"),
            Some(k) => write!(f, "{k}: {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

/// Clone: the outcome of one token request is given to every caller that waited for it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The configuration could not be resolved (no cloud, bad clouds.yaml, missing field…).
    #[error("openstack config: {0}")]
    Config(String),
    /// Authentication failed: Keystone refused the credentials, or the service still answered
    /// 401 after one token renewal. Never contains the password or token.
    #[error("authentication at {auth_url} as {user} failed: {message}")]
    Auth {
        auth_url: String,
        /// The user name / id or application credential it authenticated as.
        user: String,
        message: String,
    },
    /// 400.
    #[error("{ctx}: 400 Bad Request: {fault}")]
    BadRequest {
        ctx: RequestContext,
        fault: ApiFault,
    },
    /// 403.
    #[error("{ctx}: 403 Forbidden: {fault}")]
    Forbidden {
        ctx: RequestContext,
        fault: ApiFault,
    },
    /// 404.
    #[error("{ctx}: 404 Not Found: {fault}")]
    NotFound {
        ctx: RequestContext,
        fault: ApiFault,
    },
    /// 409, e.g. `IpAddressAlreadyAllocated`, `MacAddressInUse`, `OverQuota`,
    /// `IpAddressGenerationFailure`.
    #[error("{ctx}: 409 Conflict: {fault}")]
    Conflict {
        ctx: RequestContext,
        fault: ApiFault,
    },
    /// 412: the `If-Match: revision_number=N` precondition failed (someone changed the
    /// resource since revision N was read).
    #[error("{ctx}: 412 revision conflict: {fault}")]
    RevisionConflict {
        ctx: RequestContext,
        fault: ApiFault,
    },
    /// 5xx.
    #[error("{ctx}: {status} server error: {fault}")]
    Server {
        ctx: RequestContext,
        status: u16,
        fault: ApiFault,
    },
    /// Any other non-success status.
    #[error("{ctx}: unexpected status {status}: {fault}")]
    Status {
        ctx: RequestContext,
        status: u16,
        fault: ApiFault,
    },
    /// Could not connect, the connection broke, or the request timed out.
    #[error("{ctx}: transport error{}: {message}", if *.timeout { " (timeout)" } else if *.connect { " (connect)" } else { "" })]
    Transport {
        ctx: RequestContext,
        message: String,
        timeout: bool,
        connect: bool,
    },
    /// The server's TLS certificate was refused (unknown CA, wrong name, expired…): not worth
    /// retrying — fix `cacert` / `verify`.
    #[error("{ctx}: TLS: {message} (set cacert to the CA that signed the server's certificate, or verify: false for a lab)")]
    Tls {
        ctx: RequestContext,
        message: String,
    },
    /// The answer was not what the API reference says.
    #[error("{ctx}: cannot decode the answer: {message}")]
    Decode {
        ctx: RequestContext,
        message: String,
    },
}

impl Error {
    /// Worth retrying: 5xx (502/503/504 above all), connect errors, timeouts, broken
    /// connections. A 4xx never is.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Server { .. } | Error::Transport { .. })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// The HTTP status, for the variants that come from one.
    pub fn status(&self) -> Option<u16> {
        Some(match self {
            Error::BadRequest { .. } => 400,
            Error::Forbidden { .. } => 403,
            Error::NotFound { .. } => 404,
            Error::Conflict { .. } => 409,
            Error::RevisionConflict { .. } => 412,
            Error::Server { status, .. } | Error::Status { status, .. } => *status,
            _ => return None,
        })
    }

    /// Neutron's `NeutronError.type`, e.g. `IpAddressAlreadyAllocated`.
    pub fn fault_type(&self) -> Option<&str> {
        self.fault().and_then(|f| f.kind.as_deref())
    }

    pub fn fault(&self) -> Option<&ApiFault> {
        match self {
            Error::BadRequest { fault, .. }
            | Error::Forbidden { fault, .. }
            | Error::NotFound { fault, .. }
            | Error::Conflict { fault, .. }
            | Error::RevisionConflict { fault, .. }
            | Error::Server { fault, .. }
            | Error::Status { fault, .. } => Some(fault),
            _ => None,
        }
    }

    pub fn context(&self) -> Option<&RequestContext> {
        match self {
            Error::BadRequest { ctx, .. }
            | Error::Forbidden { ctx, .. }
            | Error::NotFound { ctx, .. }
            | Error::Conflict { ctx, .. }
            | Error::RevisionConflict { ctx, .. }
            | Error::Server { ctx, .. }
            | Error::Status { ctx, .. }
            | Error::Transport { ctx, .. }
            | Error::Tls { ctx, .. }
            | Error::Decode { ctx, .. } => Some(ctx),
            _ => None,
        }
    }

    /// Build the error for a non-success status (401 is handled by the caller).
    pub(crate) fn from_status(ctx: RequestContext, status: u16, body: &str) -> Error {
        let fault = ApiFault::parse(body);
        match status {
            400 => Error::BadRequest { ctx, fault },
            403 => Error::Forbidden { ctx, fault },
            404 => Error::NotFound { ctx, fault },
            409 => Error::Conflict { ctx, fault },
            412 => Error::RevisionConflict { ctx, fault },
            500..=599 => Error::Server { ctx, status, fault },
            _ => Error::Status { ctx, status, fault },
        }
    }

    pub(crate) fn transport(ctx: RequestContext, e: &reqwest::Error) -> Error {
        // The chain of sources says more than the top-level message ("error sending request").
        let mut message = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            message.push_str(": ");
            message.push_str(&s.to_string());
            src = s.source();
        }
        // rustls says "invalid peer certificate: …" (UnknownIssuer, NotValidForName, Expired,
        // CaUsedAsEndEntity…): a configuration problem, not a transient one.
        if message.contains("invalid peer certificate") || message.contains("certificate verify") {
            return Error::Tls { ctx, message };
        }
        Error::Transport {
            ctx,
            message,
            timeout: e.is_timeout(),
            connect: e.is_connect(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RequestContext {
        RequestContext {
            method: "POST".into(),
            path: "/v2.0/ports".into(),
            resource: Some("port p1".into()),
        }
    }

    #[test]
    fn neutron_fault_parsed() {
        let body = r#"{"NeutronError": {"type": "IpAddressAlreadyAllocated", "message": "IP address 10.0.0.5 already allocated in subnet x", "detail": ""}}"#;
        let e = Error::from_status(ctx(), 409, body);
        assert!(matches!(e, Error::Conflict { .. }));
        assert_eq!(e.fault_type(), Some("IpAddressAlreadyAllocated"));
        assert_eq!(e.status(), Some(409));
        assert!(!e.is_transient());
        let s = e.to_string();
        assert!(s.contains("POST /v2.0/ports (port p1)"), "{s}");
        assert!(
            s.contains("IpAddressAlreadyAllocated: IP address 10.0.0.5"),
            "{s}"
        );
    }

    #[test]
    fn statuses_map() {
        assert!(matches!(
            Error::from_status(ctx(), 412, ""),
            Error::RevisionConflict { .. }
        ));
        assert!(Error::from_status(ctx(), 503, "<html>busy</html>").is_transient());
        assert!(Error::from_status(ctx(), 404, "{}").is_not_found());
        let e = Error::from_status(
            ctx(),
            400,
            r#"{"NeutronError":{"type":"InvalidVirtualMACAddress","message":"bad mac"}}"#,
        );
        assert_eq!(e.fault_type(), Some("InvalidVirtualMACAddress"));
        let e = Error::from_status(ctx(), 418, "teapot");
        assert_eq!(e.fault().unwrap().message, "teapot");
    }
}
