//! The OVN Southbound DB, read only, for one question of nested edges: has the hypervisor that
//! hosts the VM's port applied the NB changes made so far? ovn-northd copies NB_Global
//! `nb_cfg` into the SB once it has translated every NB change before it, and each
//! ovn-controller reports the value it has installed flows for in its chassis'
//! `Chassis_Private.nb_cfg` (NB_Global `hv_cfg` is the minimum over *every* chassis, so one dead
//! hypervisor anywhere holds it back). The chassis of a port is its `Port_Binding.chassis` (and
//! `additional_chassis` while it migrates).
//!
//! Connected on first use, in the background of nothing: an SB that is unreachable only makes
//! the caller fall back to NB_Global `hv_cfg`.

use std::time::Duration;

use courier_ovsdb::{self as ovsdb, Client, ClientOptions, Condition, Monitor, Op, OpResult};
use serde_json::json;

use crate::error::{Error, Result};

const DB: &str = "OVN_Southbound";
const CHASSIS_PRIVATE: &str = "Chassis_Private";

/// What `Southbound::wait_cfg` saw.
#[derive(Debug, PartialEq)]
pub enum Applied {
    /// Every one of the chassis applied it: their names.
    By(Vec<String>),
    /// Not within the timeout.
    NotYet,
    /// A chassis has no Chassis_Private row: nothing here can tell.
    Unknown,
}

pub struct Southbound {
    remote: String,
    options: ClientOptions,
    conn: tokio::sync::OnceCell<(Client, Monitor)>,
}

fn sb_err(context: impl Into<String>) -> impl FnOnce(ovsdb::Error) -> Error {
    let context = context.into();
    move |source| Error::southbound(context, source)
}

impl Southbound {
    pub fn new(remote: &str, options: ClientOptions) -> Southbound {
        Southbound {
            remote: remote.to_string(),
            options,
            conn: tokio::sync::OnceCell::new(),
        }
    }

    /// The session and its monitor of Chassis_Private (a row per hypervisor), connecting the
    /// first time (within `timeout`; a failed connect is tried again on the next call).
    async fn conn(&self, timeout: Duration) -> Result<&(Client, Monitor)> {
        self.conn
            .get_or_try_init(|| async {
                let options = ClientOptions {
                    connect_timeout: timeout.min(self.options.connect_timeout),
                    ..self.options
                };
                let client = Client::connect_with(&self.remote, options)
                    .await
                    .map_err(sb_err(format!("connecting to {}", self.remote)))?;
                let monitor = client
                    .monitor(DB, &[(CHASSIS_PRIVATE, &["name", "chassis", "nb_cfg"][..])])
                    .await
                    .map_err(sb_err("monitoring Chassis_Private"))?;
                Ok((client, monitor))
            })
            .await
    }

    /// The chassis (uuids) that bind logical port `port` now: `chassis` and
    /// `additional_chassis` of its Port_Binding. Empty when it is bound nowhere.
    pub async fn chassis_of(&self, port: &str, timeout: Duration) -> Result<Vec<String>> {
        let (client, _) = self.conn(timeout).await?;
        let res = client
            .transact(
                DB,
                vec![Op::select(
                    "Port_Binding",
                    vec![Condition::eq("logical_port", json!(port))],
                    Some(&["chassis", "additional_chassis"]),
                )],
            )
            .await
            .map_err(sb_err(format!("reading the binding of {port}")))?;
        let mut chassis = Vec::new();
        if let Some(OpResult::Rows(rows)) = res.first() {
            for row in rows {
                for col in ["chassis", "additional_chassis"] {
                    for v in ovsdb::get_set(row, col) {
                        if let Some(u) = ovsdb::uuid_of(&v) {
                            if !chassis.iter().any(|c| c == u) {
                                chassis.push(u.to_string());
                            }
                        }
                    }
                }
            }
        }
        Ok(chassis)
    }

    /// The chassis (names) marked to host OVN external ports, as ML2/OVN marks them:
    /// `ovn-cms-options=enable-chassis-as-extport-host` (in `other_config`, or `external_ids`
    /// on older OVN), ordered by name.
    pub async fn extport_hosts(&self, timeout: Duration) -> Result<Vec<String>> {
        let (client, _) = self.conn(timeout).await?;
        let res = client
            .transact(
                DB,
                vec![Op::select(
                    "Chassis",
                    vec![],
                    Some(&["name", "other_config", "external_ids"]),
                )],
            )
            .await
            .map_err(sb_err("reading the chassis"))?;
        let mut names = Vec::new();
        if let Some(OpResult::Rows(rows)) = res.first() {
            for row in rows {
                let marked = ["other_config", "external_ids"].iter().any(|col| {
                    ovsdb::get_map(row, col)
                        .get("ovn-cms-options")
                        .is_some_and(|o| {
                            o.split(',')
                                .any(|w| w.trim() == "enable-chassis-as-extport-host")
                        })
                });
                if let (true, Some(n)) = (marked, ovsdb::get_str(row, "name")) {
                    names.push(n.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Waits until every chassis of `chassis` (uuids) reports `nb_cfg >= target` in its
    /// Chassis_Private row.
    pub async fn wait_cfg(
        &self,
        chassis: &[String],
        target: i64,
        timeout: Duration,
    ) -> Result<Applied> {
        let (_, monitor) = self.conn(timeout).await?;
        let known = monitor.view(|v| {
            chassis.iter().all(|c| {
                v.rows(CHASSIS_PRIVATE)
                    .any(|(_, r)| ovsdb::get_uuid(r, "chassis") == Some(c.as_str()))
            })
        });
        if !known {
            return Ok(Applied::Unknown);
        }
        let applied = monitor
            .wait_for(timeout, |v| {
                let rows: Vec<_> = v
                    .rows(CHASSIS_PRIVATE)
                    .filter(|(_, r)| {
                        ovsdb::get_uuid(r, "chassis")
                            .is_some_and(|u| chassis.iter().any(|c| c == u))
                    })
                    .collect();
                rows.iter()
                    .all(|(_, r)| ovsdb::get_i64(r, "nb_cfg").is_some_and(|n| n >= target))
                    .then(|| {
                        rows.iter()
                            .filter_map(|(_, r)| ovsdb::get_str(r, "name").map(String::from))
                            .collect::<Vec<_>>()
                    })
            })
            .await;
        Ok(match applied {
            Ok(names) => Applied::By(names),
            Err(_) => Applied::NotYet,
        })
    }
}
