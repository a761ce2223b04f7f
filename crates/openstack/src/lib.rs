//! A small async OpenStack client for what Courier needs: Keystone v3 authentication
//! (password, application credential, or noauth), `clouds.yaml` / `secure.yaml` / `OS_*`
//! configuration, and the Neutron v2.0 API for networks, subnets, ports (bulk create,
//! pagination, revision-checked updates), security groups, trunks and tags.
//!
//! It knows nothing of Courier. HTTP is `reqwest` with rustls (ring, Mozilla roots plus an
//! optional `cacert`): no OpenSSL.
//!
//! ```no_run
//! # async fn f() -> courier_openstack::Result<()> {
//! use courier_openstack::{CloudConfig, Neutron, PortCreate, Query};
//! let cfg = CloudConfig::from_process_env(Some("courier-admin"))?;
//! let neutron = Neutron::connect(cfg).await?;
//! let ports = neutron.list_ports(&Query::new().tags(&["courier"]).limit(100)).await?;
//! # Ok(()) }
//! ```
//!
//! # Why `yaml-rust2` for clouds.yaml
//! `serde_yaml` is archived. `serde_yml` is flagged deprecated on crates.io and had soundness
//! and maintenance concerns. `serde_norway` is a maintained fork of `serde_yaml`, but it keeps
//! the C-to-Rust translated `unsafe-libyaml` underneath. `yaml-rust2` is maintained, pure safe
//! Rust, small (3 dependencies), and YAML 1.2; it has no serde layer, which we don't need:
//! clouds.yaml and secure.yaml are loaded into a JSON value, deep-merged there, and the cloud
//! is then decoded with `serde_json`. (`saphyr` is the same authors' next-generation crate,
//! still settling its API.)
//!
//! # Secrets
//! Passwords, application-credential secrets and tokens are [`Secret`]s: their `Debug` and
//! `Display` print `***`, so neither a config, a token nor an error can leak one into a log.

pub mod auth;
pub mod config;
pub mod error;
pub mod neutron;
pub mod retry;
pub mod secret;
pub mod session;

pub use auth::{select_endpoint, CatalogEndpoint, CatalogService, Token};
pub use config::{process_env, AuthType, CloudConfig, EnvLookup, Interface};
pub use error::{ApiFault, Error, RequestContext, Result};
pub use neutron::{
    AddressPair, AllocationPool, FixedIp, HostRoute, Modified, Network, NetworkCreate, Neutron,
    Port, PortCreate, PortUpdate, Query, SecurityGroup, SubPort, Subnet, SubnetCreate, Trunk,
    TrunkCreate,
};
pub use retry::{retry_transient, Backoff, RevisionRetry};
pub use secret::Secret;
pub use session::Session;
