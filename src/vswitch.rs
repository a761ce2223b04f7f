//! The local Open_vSwitch DB: ports on the integration bridge and the `iface-id` that tells
//! ovn-controller which logical port an interface is. Spoken through crates/ovsdb, never ovs-vsctl.

use std::collections::BTreeMap;

use courier_ovsdb::{
    self as ovsdb, CacheView, Client, Condition, Index, Monitor, Mutation, Op, OpResult, Row,
};
use serde_json::json;

use crate::backend::marks;
use crate::error::{Error, Result};

const DB: &str = "Open_vSwitch";

/// Monitor cache indexes: port and interface by name, port by host mark.
const PORT_BY_NAME: Index = Index::new("Port", "name");
const PORT_BY_HOST: Index = Index::map_key("Port", "external_ids", marks::HOST);
const IFACE_BY_NAME: Index = Index::new("Interface", "name");
const INDEXES: &[Index] = &[PORT_BY_NAME, PORT_BY_HOST, IFACE_BY_NAME];

/// What a port on the bridge is: which logical port (`iface-id`, read by ovn-controller on the
/// integration bridge), or an access port of a VLAN (the VM's own bridge of nested vlan-ovs,
/// whose trunk uplink carries the tag to the VM's logical port).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PortBinding<'a> {
    LogicalPort { id: &'a str, mac: &'a str },
    AccessTag(u16),
}

/// A port Courier finds on the bridge.
#[derive(Debug, Clone, PartialEq)]
pub struct VswitchPort {
    pub name: String,
    pub iface_id: Option<String>,
    pub attachment: Option<String>,
    /// Courier host mark (several test daemons may share one vswitch).
    pub host: Option<String>,
    /// OpenFlow port number; -1 or None while vswitchd has not opened the device.
    pub ofport: Option<i64>,
    /// vswitchd's complaint about the interface, if any.
    pub error: Option<String>,
    /// ovn-controller has installed the port's flows.
    pub ovn_installed: bool,
    /// The access VLAN of the port (`Port.tag`), if any.
    pub tag: Option<u16>,
}

pub struct Vswitch {
    db: Client,
    cache: Monitor,
    bridge: String,
    host: String,
}

fn ovs_err(context: impl Into<String>) -> impl FnOnce(ovsdb::Error) -> Error {
    let context = context.into();
    move |source| Error::vswitch(context, source)
}

impl Vswitch {
    pub async fn connect(
        remote: &str,
        bridge: &str,
        host: &str,
        options: ovsdb::ClientOptions,
    ) -> Result<Vswitch> {
        let db = Client::connect_with(remote, options)
            .await
            .map_err(ovs_err(format!("connecting to {remote}")))?;
        let cache = db
            .monitor_indexed(
                DB,
                &[
                    ("Bridge", &["name", "ports"][..]),
                    ("Port", &["name", "interfaces", "external_ids", "tag"][..]),
                    (
                        "Interface",
                        &["name", "external_ids", "ofport", "error"][..],
                    ),
                ],
                INDEXES,
            )
            .await
            .map_err(ovs_err("monitoring Bridge/Port/Interface"))?;
        let vs = Vswitch {
            db,
            cache,
            bridge: bridge.to_string(),
            host: host.to_string(),
        };
        vs.bridge_uuid()?;
        Ok(vs)
    }

    /// The `external_ids:system-id` of the Open_vSwitch row (the OVN chassis name of this
    /// machine), if set.
    pub async fn system_id(&self) -> Result<Option<String>> {
        let res = self
            .db
            .transact(
                DB,
                vec![Op::select("Open_vSwitch", vec![], Some(&["external_ids"]))],
            )
            .await
            .map_err(ovs_err("reading the Open_vSwitch row"))?;
        Ok(match res.first() {
            Some(OpResult::Rows(rows)) => rows
                .first()
                .and_then(|r| ovsdb::get_map(r, "external_ids").remove("system-id"))
                .filter(|s| !s.is_empty()),
            _ => None,
        })
    }

    /// Ok when the DB answers and the integration bridge exists.
    pub async fn health(&self) -> Result<()> {
        self.db.echo().await.map_err(ovs_err("echo"))?;
        self.bridge_uuid().map(|_| ())
    }

    fn bridge_uuid(&self) -> Result<String> {
        self.cache
            .rows("Bridge")
            .into_iter()
            .find(|(_, r)| ovsdb::get_str(r, "name") == Some(self.bridge.as_str()))
            .map(|(u, _)| u)
            .ok_or_else(|| {
                Error::BackendState(format!(
                    "bridge {} does not exist in the local Open_vSwitch DB: the integration bridge comes with ovn-controller (scripts/ovn.sh start); a VM's bridge for vlan-ovs is made with ovs-vsctl add-br",
                    self.bridge
                ))
            })
    }

    /// Adds `name` (an existing kernel interface) to the bridge as `binding` says (with
    /// `iface-id = logical port`, or as an access port of a VLAN), in one transaction.
    pub async fn add_port(
        &self,
        name: &str,
        binding: PortBinding<'_>,
        attachment: &str,
    ) -> Result<()> {
        let mut ext = BTreeMap::new();
        if let PortBinding::LogicalPort { id, mac } = binding {
            ext.insert("iface-id", id.to_string());
            ext.insert("attached-mac", mac.to_string());
        }
        ext.insert(marks::OWNER, marks::OWNER_VALUE.to_string());
        ext.insert(marks::ATTACHMENT, attachment.to_string());
        let mut port = json!({
            "name": name,
            "interfaces": ovsdb::named_uuid("iface"),
            "external_ids": ovsdb::map([
                (marks::OWNER, marks::OWNER_VALUE),
                (marks::HOST, self.host.as_str()),
                (marks::ATTACHMENT, attachment),
            ]),
        });
        if let PortBinding::AccessTag(tag) = binding {
            port["tag"] = json!(tag);
        }
        let ops = vec![
            Op::insert(
                "Interface",
                json!({"name": name, "type": "", "external_ids": ovsdb::map(ext.clone())}),
            )
            .with_uuid_name("iface"),
            Op::insert("Port", port).with_uuid_name("port"),
            Op::mutate(
                "Bridge",
                vec![Condition::eq("name", json!(self.bridge))],
                vec![Mutation::insert("ports", ovsdb::named_uuid("port"))],
            ),
        ];
        let res = self
            .db
            .transact(DB, ops)
            .await
            .map_err(ovs_err(format!("adding port {name} to {}", self.bridge)))?;
        if !matches!(res.get(2), Some(OpResult::Count(1))) {
            return Err(Error::BackendState(format!(
                "bridge {} vanished while adding port {name}",
                self.bridge
            )));
        }
        Ok(())
    }

    /// The ownership marks a port of `attachment` made by this host carries.
    fn owned_by(&self, attachment: &str) -> Condition {
        Condition::includes(
            "external_ids",
            ovsdb::map([
                (marks::OWNER, marks::OWNER_VALUE),
                (marks::HOST, self.host.as_str()),
                (marks::ATTACHMENT, attachment),
            ]),
        )
    }

    /// Removes the ports named `name` that this host made for `attachment` (its ownership
    /// marks); a port of that name with other marks is left alone. Ok(false) if none was ours.
    pub async fn delete_port(&self, name: &str, attachment: &str) -> Result<bool> {
        let owned = || {
            vec![
                Condition::eq("name", json!(name)),
                self.owned_by(attachment),
            ]
        };
        let uuids = self
            .db
            .select_uuids(DB, "Port", owned())
            .await
            .map_err(ovs_err(format!("looking up port {name}")))?;
        if uuids.is_empty() {
            return Ok(false);
        }
        // Port and Interface are not root tables: dropping the reference deletes them. The
        // wait makes "still ours" part of the same transaction.
        let mut ops = Vec::new();
        for u in &uuids {
            ops.push(Op::assert_row("Port", u, owned()));
            ops.push(Op::mutate(
                "Bridge",
                vec![Condition::includes("ports", ovsdb::uuid(u))],
                vec![Mutation::delete("ports", ovsdb::uuid(u))],
            ));
        }
        self.db.transact(DB, ops).await.map_err(ovs_err(format!(
            "removing port {name} from {}",
            self.bridge
        )))?;
        Ok(true)
    }

    /// Waits until ovn-controller has installed the flows for interface `name`: it then sets
    /// `external_ids:ovn-installed=true` on the Interface (what ovn-kubernetes waits for too).
    /// Local and direct; OVN's NB `up` needs a round trip through the SB and ovn-northd.
    pub async fn wait_installed(&self, name: &str, timeout: std::time::Duration) -> Result<()> {
        self.cache
            .wait_for(timeout, |v| {
                v.lookup(&IFACE_BY_NAME, name)
                    .iter()
                    .any(|(_, r)| {
                        ovsdb::get_map(r, "external_ids").get("ovn-installed").map(String::as_str)
                                == Some("true")
                    })
                    .then_some(())
            })
            .await
            .map_err(|_| {
                Error::Timeout(format!(
                    "ovn-controller did not install flows for {name} within {} ms: is ovn-controller running (scripts/ovn.sh status)?",
                    timeout.as_millis()
                ))
            })
    }

    /// The port named `name` as the cache sees it.
    pub fn port(&self, name: &str) -> Option<VswitchPort> {
        self.cache.view(|v| {
            v.lookup(&PORT_BY_NAME, name)
                .into_iter()
                .find_map(|(_, r)| port_from_row(v, r))
        })
    }

    /// Ports this host's Courier made (marked with owner, host and attachment), for leak sweeps.
    pub fn owned_ports(&self) -> Vec<VswitchPort> {
        self.cache.view(|v| {
            v.lookup(&PORT_BY_HOST, &self.host)
                .into_iter()
                .filter_map(|(_, r)| port_from_row(v, r))
                .filter(|p| p.attachment.is_some() && p.host.as_deref() == Some(self.host.as_str()))
                .collect()
        })
    }
}

/// A Port row with its first interface's details; None for a port without a name.
fn port_from_row(view: &CacheView, port: &Row) -> Option<VswitchPort> {
    let name = ovsdb::get_str(port, "name")?.to_string();
    let pext = ovsdb::get_map(port, "external_ids");
    let iface = ovsdb::get_set(port, "interfaces")
        .iter()
        .filter_map(ovsdb::uuid_of)
        .find_map(|u| view.row("Interface", u));
    let iext = iface
        .map(|r| ovsdb::get_map(r, "external_ids"))
        .unwrap_or_default();
    Some(VswitchPort {
        name,
        iface_id: iext.get("iface-id").cloned(),
        attachment: pext.get(marks::ATTACHMENT).cloned(),
        host: pext.get(marks::HOST).cloned(),
        ofport: iface.and_then(|r| ovsdb::get_i64(r, "ofport")),
        error: iface
            .and_then(|r| ovsdb::get_str(r, "error"))
            .map(String::from),
        ovn_installed: iext.get("ovn-installed").map(String::as_str) == Some("true"),
        tag: ovsdb::get_i64(port, "tag").and_then(|t| u16::try_from(t).ok()),
    })
}
