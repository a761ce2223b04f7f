//! OVN Northbound directly: networks are Logical_Switches (OVN's IPAM through
//! `other_config:subnet`), ports are Logical_Switch_Ports with `addresses: dynamic`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use async_trait::async_trait;
use courier_ovsdb::{
    self as ovsdb, CacheView, Client, Condition, Index, Monitor, Mutation, Op, OpResult, Row,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::json;

use super::{marks, Backend, PortQuery, PortRef, PortRequest, PortRole};
use crate::error::{Error, Result};
use crate::model::{validate_network_name, LogicalPort, Network, NetworkSpec};

const DB: &str = "OVN_Northbound";
const LS: &str = "Logical_Switch";
const LSP: &str = "Logical_Switch_Port";
/// How long ovn-northd may take to fill `dynamic_addresses`.
const ADDRESS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long our own committed write may take to reach the monitor cache.
const CACHE_TIMEOUT: Duration = Duration::from_secs(5);

/// Monitor cache indexes: switch by name, switch by each port uuid it holds, port by name,
/// port by host mark.
const LS_BY_NAME: Index = Index::new(LS, "name");
const LS_BY_PORT: Index = Index::new(LS, "ports");
const LSP_BY_NAME: Index = Index::new(LSP, "name");
const LSP_BY_HOST: Index = Index::map_key(LSP, "external_ids", marks::HOST);
const INDEXES: &[Index] = &[LS_BY_NAME, LS_BY_PORT, LSP_BY_NAME, LSP_BY_HOST];

pub struct OvnBackend {
    nb: Client,
    cache: Monitor,
    /// Serialises "is this requested address (IP or MAC) free? then take it": held from the check until our
    /// own port is visible in the cache, so two requests for one address cannot both pass.
    /// (Across hosts this needs the backend's help; OVN NB offers no uniqueness constraint.)
    requested_ip: tokio::sync::Mutex<()>,
    /// The Southbound DB, for "has the VM's hypervisor applied it" (`wait_applied`).
    sb: Option<super::ovn_sb::Southbound>,
    /// This machine's identity (`Config::machine_id`), marked on every port made here
    /// (`courier-machine`): a port of the same host mark with another is another machine's.
    machine: Option<String>,
}

fn nb_err(context: impl Into<String>) -> impl FnOnce(ovsdb::Error) -> Error {
    let context = context.into();
    move |source| Error::backend(context, source)
}

impl OvnBackend {
    pub async fn connect(remote: &str, options: ovsdb::ClientOptions) -> Result<OvnBackend> {
        let nb = Client::connect_with(remote, options)
            .await
            .map_err(nb_err(format!("connecting to {remote}")))?;
        let cache = nb
            .monitor_indexed(
                DB,
                &[
                    (LS, &["name", "other_config", "external_ids", "ports"][..]),
                    (
                        LSP,
                        &[
                            "name",
                            "addresses",
                            "dynamic_addresses",
                            "up",
                            "external_ids",
                            "parent_name",
                            "tag",
                            "tag_request",
                            "type",
                            "options",
                        ][..],
                    ),
                    ("NB_Global", &["nb_cfg", "hv_cfg"][..]),
                ],
                INDEXES,
            )
            .await
            .map_err(nb_err("monitoring Logical_Switch/Logical_Switch_Port"))?;
        Ok(OvnBackend {
            nb,
            cache,
            requested_ip: tokio::sync::Mutex::new(()),
            sb: None,
            machine: None,
        })
    }

    /// Marks the ports made here with `machine` and sweeps only those (and unmarked ones).
    pub fn with_machine(mut self, machine: Option<String>) -> Self {
        self.machine = machine;
        self
    }

    /// A port row marked by another machine than this one (a port without the mark, made
    /// before there was one, cannot say: it counts as this machine's).
    fn other_machines(&self, row: &Row) -> Option<String> {
        let ext = ovsdb::get_map(row, "external_ids");
        let theirs = ext.get(marks::MACHINE)?;
        (Some(theirs) != self.machine.as_ref()).then(|| theirs.clone())
    }

    /// Asks the Southbound DB at `remote` (connected on first use) which hypervisor hosts a
    /// nested edge's VM port, so `wait_applied` waits for that one only.
    pub fn with_southbound(mut self, remote: &str, options: ovsdb::ClientOptions) -> Self {
        self.sb = Some(super::ovn_sb::Southbound::new(remote, options));
        self
    }

    /// The switch row named `name`, from the monitor cache.
    fn switch(&self, name: &str) -> Result<(String, Row)> {
        let mut found: Vec<(String, Row)> = self.cache.lookup(&LS_BY_NAME, name);
        found.retain(|(_, r)| !neutron_managed(r));
        match found.len() {
            0 => Err(Error::UnknownNetwork(name.to_string())),
            1 => Ok(found.remove(0)),
            n => Err(Error::BackendState(format!(
                "{n} logical switches are named {name:?}; rename or delete the extra ones with ovn-nbctl"
            ))),
        }
    }

    fn network_from_row(&self, uuid: &str, row: &Row) -> Network {
        self.cache
            .view(|view| self.network_from_view(view, uuid, row))
    }

    /// The physical network the switch reaches: its localnet port's `network_name`, and that
    /// port's `tag` (the VLAN on the wire; none: flat).
    fn physical_of(view: &CacheView, switch: &Row) -> Option<crate::model::PhysicalNetwork> {
        ovsdb::get_set(switch, "ports")
            .iter()
            .filter_map(ovsdb::uuid_of)
            .filter_map(|u| view.row(LSP, u))
            .find(|r| ovsdb::get_str(r, "type") == Some("localnet"))
            .and_then(|r| {
                let name = ovsdb::get_map(r, "options").get("network_name")?.clone();
                let vlan = ovsdb::get_i64(r, "tag").and_then(|t| u16::try_from(t).ok());
                Some(crate::model::PhysicalNetwork { name, vlan })
            })
    }

    /// Whether the switch's localnet port takes frames for unknown MACs (`addresses` has
    /// "unknown"): OVN has no unicast lookup for an external port's MAC, so the frames of
    /// the switch's other ports for an SR-IOV VF leave through the localnet port only so.
    fn localnet_takes_unknown(&self, switch: &Row) -> bool {
        let ports = ovsdb::get_set(switch, "ports");
        self.cache.view(|view| {
            ports
                .iter()
                .filter_map(ovsdb::uuid_of)
                .filter_map(|u| view.row(LSP, u))
                .filter(|r| ovsdb::get_str(r, "type") == Some("localnet"))
                .any(|r| {
                    ovsdb::get_str_set(r, "addresses")
                        .iter()
                        .any(|a| a == "unknown")
                })
        })
    }

    fn network_from_view(&self, view: &CacheView, uuid: &str, row: &Row) -> Network {
        let other = ovsdb::get_map(row, "other_config");
        let ext = ovsdb::get_map(row, "external_ids");
        Network {
            name: ovsdb::get_str(row, "name").unwrap_or_default().to_string(),
            backend_id: uuid.to_string(),
            backend: "ovn".into(),
            subnet: other.get("subnet").and_then(|s| s.parse().ok()),
            gateway: ext.get(marks::GATEWAY).and_then(|s| s.parse().ok()),
            subnet6: other.get("ipv6_prefix").and_then(|s| parse_prefix64(s)),
            gateway6: ext.get(marks::GATEWAY6).and_then(|s| s.parse().ok()),
            exclude_ips: other
                .get("exclude_ips")
                .map(|s| s.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
            mtu: None,
            dns_domain: None,
            created_by_courier: ext.get(marks::OWNER).map(String::as_str)
                == Some(marks::OWNER_VALUE),
            ports: ovsdb::get_set(row, "ports").len(),
            physical: Self::physical_of(view, row),
        }
    }

    fn port_from_row(&self, row: &Row, network: Option<&Network>) -> Option<LogicalPort> {
        let name = ovsdb::get_str(row, "name")?.to_string();
        let ext = ovsdb::get_map(row, "external_ids");
        let addr = ovsdb::get_str(row, "dynamic_addresses")
            .filter(|s| !s.is_empty())
            .map(String::from)
            .or_else(|| {
                ovsdb::get_str_set(row, "addresses")
                    .into_iter()
                    .find(|a| !a.contains("dynamic"))
            })
            // A reservation whose address moved onto the VM's port (see `add_address_pair`).
            .or_else(|| ext.get(marks::RESERVED).cloned());
        let (mac, ips) = match addr.as_deref().map(parse_addresses) {
            Some(Some((mac, ips))) => (mac, ips),
            _ => (String::new(), Vec::new()),
        };
        let prefix = network.and_then(|n| n.subnet).map(|s| s.prefix_len());
        let ips = ips
            .into_iter()
            .map(|ip| match (ip, prefix) {
                (IpAddr::V4(v4), Some(p)) => IpNet::V4(Ipv4Net::new(v4, p).unwrap_or(v4.into())),
                // OVN's IPv6 prefixes are /64.
                (IpAddr::V6(v6), _) => IpNet::V6(Ipv6Net::new(v6, 64).unwrap_or(v6.into())),
                (ip, _) => IpNet::from(ip),
            })
            .collect();
        Some(LogicalPort {
            // OVN direct: the LSP name is the port's id and the edge's iface-id.
            id: name.clone(),
            name,
            network: network
                .map(|n| n.name.clone())
                .or_else(|| ext.get(marks::NETWORK).cloned())
                .unwrap_or_default(),
            mac,
            ips,
            gateways: network
                .map(|n| {
                    let v4 = n.gateway.map(IpAddr::V4);
                    let v6 = n.gateway6.map(IpAddr::V6);
                    v4.into_iter().chain(v6).collect()
                })
                .unwrap_or_default(),
            routes: vec![],
            dns: Default::default(),
            mtu: None,
            up: ovsdb::get_bool(row, "up").unwrap_or(false),
            attachment: ext.get(marks::ATTACHMENT).cloned(),
            // Not needed: deleting a reservation takes its pair off in the same transaction
            // (`courier-pair-on` / `courier-pair`, see `delete_owned`).
            pairs_on: None,
            vlan: None,
        })
    }

    /// The network whose switch holds port `port_uuid` (index lookup).
    fn network_of_port(&self, view: &CacheView, port_uuid: &str) -> Option<Network> {
        view.lookup(&LS_BY_PORT, port_uuid)
            .first()
            .map(|(u, r)| self.network_from_view(view, u, r))
    }

    /// The first port of `rows` that has a name, with its network.
    fn first_port<'a>(
        &self,
        view: &CacheView,
        rows: impl IntoIterator<Item = (&'a String, &'a Row)>,
    ) -> Option<LogicalPort> {
        rows.into_iter().find_map(|(u, r)| {
            let net = self.network_of_port(view, u);
            self.port_from_row(r, net.as_ref())
        })
    }

    /// Ports marked as `host`'s and Courier's, with their networks; not another machine's.
    fn owned_ports_in(&self, view: &CacheView, host: &str) -> Vec<LogicalPort> {
        view.lookup(&LSP_BY_HOST, host)
            .into_iter()
            .filter(|(_, r)| {
                let ext = ovsdb::get_map(r, "external_ids");
                ext.get(marks::OWNER).map(String::as_str) == Some(marks::OWNER_VALUE)
                    && ext.get(marks::HOST).map(String::as_str) == Some(host)
            })
            .filter(|(_, r)| self.other_machines(r).is_none())
            .filter_map(|(u, r)| {
                let net = self.network_of_port(view, u);
                self.port_from_row(r, net.as_ref())
            })
            .collect()
    }

    /// The HA_Chassis_Group of Courier's external ports (`courier-extport`), made the first
    /// time with the chassis the Southbound DB marks as external-port hosts (highest priority
    /// first, by name). Refused, saying what to set, when no chassis is marked.
    async fn extport_group(&self) -> Result<String> {
        const NAME: &str = "courier-extport";
        let find = || async {
            let res = self
                .nb
                .transact(
                    DB,
                    vec![Op::select(
                        "HA_Chassis_Group",
                        vec![Condition::eq("name", json!(NAME))],
                        Some(&["_uuid"]),
                    )],
                )
                .await
                .map_err(nb_err("reading HA_Chassis_Group courier-extport"))?;
            Ok::<_, Error>(match res.first() {
                Some(OpResult::Rows(rows)) => rows
                    .first()
                    .and_then(|r| ovsdb::get_uuid(r, "_uuid"))
                    .map(String::from),
                _ => None,
            })
        };
        if let Some(u) = find().await? {
            return Ok(u);
        }
        let sb = self.sb.as_ref().ok_or_else(|| {
            Error::InvalidInput(
                "an SR-IOV port on OVN is an external port, and which chassis hosts those is in the Southbound DB: set [ovn] sb_remote (not \"none\")".into(),
            )
        })?;
        let hosts = sb.extport_hosts(Duration::from_secs(10)).await?;
        if hosts.is_empty() {
            return Err(Error::InvalidInput(
                "no chassis hosts OVN external ports, which an SR-IOV port needs (it answers the VF's ARP and DHCP): on the chassis with the physical network's bridge mapping run ovs-vsctl set open . external_ids:ovn-cms-options=enable-chassis-as-extport-host".into(),
            ));
        }
        let mut ops = Vec::new();
        let mut members = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            let name = format!("hac{i}");
            ops.push(
                Op::insert(
                    "HA_Chassis",
                    json!({"chassis_name": h, "priority": 32767 - i as i64}),
                )
                .with_uuid_name(&name),
            );
            members.push(ovsdb::named_uuid(&name));
        }
        ops.push(Op::insert(
            "HA_Chassis_Group",
            json!({"name": NAME, "ha_chassis": ["set", members],
                   "external_ids": ovsdb::map(BTreeMap::from([(marks::OWNER, marks::OWNER_VALUE.to_string())]))}),
        ));
        if let Err(e) = self.nb.transact(DB, ops).await {
            // Another attach made it first (the name is indexed): use that one.
            if let Some(u) = find().await? {
                return Ok(u);
            }
            return Err(nb_err("creating HA_Chassis_Group courier-extport")(e));
        }
        find().await?.ok_or_else(|| {
            Error::BackendState("HA_Chassis_Group courier-extport vanished as it was made".into())
        })
    }

    /// Which port on `switch` already uses an address word (IP or MAC) for which `is` holds.
    fn address_user(&self, switch: &Row, is: impl Fn(&str) -> bool) -> Option<String> {
        let ports = ovsdb::get_set(switch, "ports");
        self.cache.view(|view| {
            ports.iter().filter_map(ovsdb::uuid_of).find_map(|u| {
                let row = view.row(LSP, u)?;
                let dynamic = ovsdb::get_str(row, "dynamic_addresses");
                ovsdb::get_str_set(row, "addresses")
                    .iter()
                    .map(String::as_str)
                    .chain(dynamic)
                    .any(|a| a.split_whitespace().any(&is))
                    .then(|| ovsdb::get_str(row, "name").unwrap_or("?").to_string())
            })
        })
    }
}

/// Parses an OVN address string "MAC IP [IP...]".
pub fn parse_addresses(s: &str) -> Option<(String, Vec<IpAddr>)> {
    let mut words = s.split_whitespace();
    let mac = words.next()?;
    crate::model::parse_mac(mac).ok()?;
    let ips = words.filter_map(|w| w.parse().ok()).collect();
    Some((mac.to_string(), ips))
}

/// The `addresses` entry for a port request: OVN keywords for what is left to its IPAM.
/// Whether `req` can go in one bulk transaction with `first`: plain ports (bound, OVN's
/// addresses, no groups) on the same switch.
fn bulk_ok(req: &PortRequest, first: &PortRequest) -> bool {
    req.role == PortRole::Bound
        && req.ips.is_empty()
        && req.mac.is_none()
        && req.security_groups.is_empty()
        && req.pairs_on.is_none()
        && req.network.name == first.network.name
}

pub fn addresses_entry(mac: Option<&str>, ip: Option<IpAddr>) -> String {
    match (mac, ip) {
        (None, None) => "dynamic".into(),
        (None, Some(ip)) => format!("dynamic {ip}"),
        (Some(m), None) => format!("{m} dynamic"),
        (Some(m), Some(ip)) => format!("{m} {ip}"),
    }
}

/// A switch ML2/OVN made for a Neutron network (its `external_ids` carry `neutron:` keys): it
/// belongs to Neutron, so OVN direct neither lists nor attaches to it — through Courier it is
/// reached as a Neutron network.
fn neutron_managed(row: &Row) -> bool {
    ovsdb::get_map(row, "external_ids")
        .keys()
        .any(|k| k.starts_with("neutron:"))
}

/// An OVN `ipv6_prefix` ("fd00:1::" or "fd00:1::/64") as a /64.
fn parse_prefix64(s: &str) -> Option<Ipv6Net> {
    let addr = s.split('/').next()?.parse::<Ipv6Addr>().ok()?;
    Ipv6Net::new(addr, 64).ok().map(|n| n.trunc())
}

/// Checks a network spec and returns the `exclude_ips` value to store (gateway included).
pub fn validate_spec(spec: &NetworkSpec) -> Result<String> {
    validate_network_name(&spec.name).map_err(Error::InvalidInput)?;
    if spec.subnet.is_none() && spec.subnet6.is_none() {
        return Err(Error::InvalidInput(
            "a network needs a subnet: give --subnet with an IPv4 CIDR, an IPv6 /64, or both"
                .into(),
        ));
    }
    if let Some(s6) = spec.subnet6 {
        if s6.prefix_len() != 64 || s6.trunc() != s6 {
            return Err(Error::InvalidInput(format!(
                "IPv6 subnet {s6} must be a /64 without host bits (OVN derives addresses from MACs), e.g. {}",
                Ipv6Net::new(s6.addr(), 64).map(|n| n.trunc()).unwrap_or(s6)
            )));
        }
        if let Some(g6) = spec.gateway6 {
            if !s6.contains(&g6) || g6 == s6.network() {
                return Err(Error::InvalidInput(format!(
                    "IPv6 gateway {g6} is not a usable address of {s6}"
                )));
            }
        }
    } else if let Some(g6) = spec.gateway6 {
        return Err(Error::InvalidInput(format!(
            "IPv6 gateway {g6} needs an IPv6 subnet"
        )));
    }
    let Some(subnet) = spec.subnet else {
        if let Some(gw) = spec.gateway {
            return Err(Error::InvalidInput(format!(
                "gateway {gw} needs an IPv4 subnet"
            )));
        }
        if let Some(e) = spec.exclude_ips.first() {
            return Err(Error::InvalidInput(format!(
                "exclude-ips {e:?} needs an IPv4 subnet (IPv6 addresses come from MACs)"
            )));
        }
        return Ok(String::new());
    };
    if subnet.trunc() != subnet {
        return Err(Error::InvalidInput(format!(
            "subnet {subnet} has host bits set: did you mean {}?",
            subnet.trunc()
        )));
    }
    if subnet.prefix_len() > 29 {
        return Err(Error::InvalidInput(format!(
            "subnet {subnet} is too small: use a prefix of /29 or shorter"
        )));
    }
    let usable =
        |ip: Ipv4Addr| subnet.contains(&ip) && ip != subnet.network() && ip != subnet.broadcast();
    let mut excludes = Vec::new();
    if let Some(gw) = spec.gateway {
        if !usable(gw) {
            return Err(Error::InvalidInput(format!(
                "gateway {gw} is not a usable address of subnet {subnet}"
            )));
        }
        excludes.push(gw.to_string());
    }
    for e in &spec.exclude_ips {
        let ok = match e.split_once("..") {
            Some((a, b)) => match (a.parse::<Ipv4Addr>(), b.parse::<Ipv4Addr>()) {
                (Ok(a), Ok(b)) => subnet.contains(&a) && subnet.contains(&b) && a <= b,
                _ => false,
            },
            None => e
                .parse::<Ipv4Addr>()
                .map(|a| subnet.contains(&a))
                .unwrap_or(false),
        };
        if !ok {
            return Err(Error::InvalidInput(format!(
                "exclude-ips entry {e:?} must be an address or A..B range inside {subnet}"
            )));
        }
        if !excludes.contains(e) {
            excludes.push(e.clone());
        }
    }
    Ok(excludes.join(" "))
}

#[async_trait]
impl Backend for OvnBackend {
    fn id(&self) -> &str {
        "ovn"
    }
    fn reads_are_local(&self) -> bool {
        true
    }

    async fn health(&self) -> Result<()> {
        self.nb.echo().await.map_err(nb_err("echo"))
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<Network> {
        let exclude = validate_spec(spec)?;
        let mut other = BTreeMap::new();
        if let Some(subnet) = spec.subnet {
            other.insert("subnet".to_string(), subnet.to_string());
        }
        if let Some(s6) = spec.subnet6 {
            other.insert("ipv6_prefix".to_string(), s6.to_string());
        }
        if !exclude.is_empty() {
            other.insert("exclude_ips".to_string(), exclude);
        }
        let mut ext = BTreeMap::new();
        ext.insert(marks::OWNER.to_string(), marks::OWNER_VALUE.to_string());
        if let Some(gw) = spec.gateway {
            ext.insert(marks::GATEWAY.to_string(), gw.to_string());
        }
        if let Some(gw) = spec.gateway6 {
            ext.insert(marks::GATEWAY6.to_string(), gw.to_string());
        }
        let ops = vec![
            // Atomic "name is free": fails the transaction if a switch with this name exists.
            Op::wait(
                LS,
                vec![Condition::eq("name", json!(spec.name))],
                &["name"],
                ovsdb::WaitUntil::Equal,
                vec![],
                Some(0),
            ),
            Op::insert(
                LS,
                json!({
                    "name": spec.name,
                    "other_config": ovsdb::map(other),
                    "external_ids": ovsdb::map(ext),
                }),
            ),
        ];
        let res = self.nb.transact(DB, ops).await;
        let uuid = match res {
            Ok(r) => match r.get(1) {
                Some(OpResult::Insert { uuid }) => uuid.clone(),
                other => {
                    return Err(Error::BackendState(format!(
                        "unexpected reply to insert of switch {}: {other:?}",
                        spec.name
                    )))
                }
            },
            Err(ovsdb::Error::OpFailed { index: 0, .. }) => {
                return Err(Error::NetworkExists(spec.name.clone()))
            }
            Err(e) => return Err(nb_err(format!("creating switch {}", spec.name))(e)),
        };
        // Read-your-writes: callers attach right after creating.
        self.cache
            .wait_for(CACHE_TIMEOUT, |v| v.row(LS, &uuid).map(|_| ()))
            .await
            .map_err(nb_err(format!(
                "waiting to see switch {} in the monitor",
                spec.name
            )))?;
        tracing::info!(network = %spec.name, %uuid, subnet = ?spec.subnet, subnet6 = ?spec.subnet6, "created logical switch");
        Ok(Network {
            name: spec.name.clone(),
            backend_id: uuid,
            backend: "ovn".into(),
            subnet: spec.subnet,
            gateway: spec.gateway,
            subnet6: spec.subnet6,
            gateway6: spec.gateway6,
            exclude_ips: spec.exclude_ips.clone(),
            mtu: None,
            dns_domain: None,
            created_by_courier: true,
            ports: 0,
            physical: None,
        })
    }

    async fn delete_network(&self, name: &str) -> Result<()> {
        let (uuid, row) = self.switch(name)?;
        let ext = ovsdb::get_map(&row, "external_ids");
        if ext.get(marks::OWNER).map(String::as_str) != Some(marks::OWNER_VALUE) {
            return Err(Error::InvalidInput(format!(
                "logical switch {name:?} was not created by Courier; delete it with ovn-nbctl ls-del if you mean it"
            )));
        }
        let ports = ovsdb::get_set(&row, "ports").len();
        if ports > 0 {
            return Err(Error::NetworkInUse {
                name: name.into(),
                ports,
            });
        }
        let ops = vec![
            // Only if still portless at commit time.
            Op::wait(
                LS,
                vec![Condition::eq("_uuid", ovsdb::uuid(&uuid))],
                &["ports"],
                ovsdb::WaitUntil::Equal,
                vec![json!({"ports": ovsdb::empty_set()})],
                Some(0),
            ),
            Op::delete(LS, vec![Condition::eq("_uuid", ovsdb::uuid(&uuid))]),
        ];
        match self.nb.transact(DB, ops).await {
            Ok(_) => {
                self.cache
                    .wait_for(CACHE_TIMEOUT, |v| v.row(LS, &uuid).is_none().then_some(()))
                    .await
                    .map_err(nb_err(format!(
                        "waiting to see switch {name} gone from the monitor"
                    )))?;
                tracing::info!(network = %name, "deleted logical switch");
                Ok(())
            }
            Err(ovsdb::Error::OpFailed { index: 0, .. }) => Err(Error::NetworkInUse {
                name: name.into(),
                ports: 1,
            }),
            Err(e) => Err(nb_err(format!("deleting switch {name}"))(e)),
        }
    }

    async fn network(&self, name: &str) -> Result<Option<Network>> {
        match self.switch(name) {
            Ok((uuid, row)) => Ok(Some(self.network_from_row(&uuid, &row))),
            Err(Error::UnknownNetwork(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn networks(&self) -> Result<Vec<Network>> {
        let mut nets: Vec<Network> = self
            .cache
            .rows(LS)
            .iter()
            .filter(|(_, r)| !neutron_managed(r))
            .map(|(u, r)| self.network_from_row(u, r))
            .collect();
        nets.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nets)
    }

    /// One after the other: OVN's IPAM (ovn-northd) assigns each port's addresses after its
    /// insert, and requested addresses are checked-and-taken one at a time. (A pool's bulk
    /// refill can batch the inserts into one transaction; the attach path creates one port.)
    async fn create_ports(&self, reqs: &[PortRequest]) -> Result<Vec<LogicalPort>> {
        if reqs.len() > 1 && reqs.iter().all(|r| bulk_ok(r, &reqs[0])) {
            return self.create_bulk(reqs).await;
        }
        let mut made: Vec<LogicalPort> = Vec::with_capacity(reqs.len());
        for req in reqs {
            match self.create_one(req).await {
                Ok(p) => made.push(p),
                Err(e) => {
                    for (p, r) in made.iter().zip(reqs) {
                        let port = PortRef {
                            id: Some(p.id.clone()),
                            name: p.name.clone(),
                        };
                        if let Err(de) = self.delete_port(&port, &r.owner.host).await {
                            tracing::error!(port = %p.name, error = %de, "undoing a partial bulk create failed; reconcile will sweep it");
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(made)
    }

    async fn delete_port(&self, port: &PortRef, host: &str) -> Result<bool> {
        self.delete_owned(port.id.as_deref().unwrap_or(&port.name), host)
            .await
    }

    async fn port(&self, port: &PortRef) -> Result<Option<LogicalPort>> {
        let name = port.id.as_deref().unwrap_or(&port.name);
        Ok(self
            .cache
            .view(|v| self.first_port(v, v.lookup(&LSP_BY_NAME, name))))
    }

    async fn mark_claimed(&self, host: &str) -> Result<Option<super::MarkClaim>> {
        let theirs: Vec<(String, String)> = self.cache.view(|v| {
            v.lookup(&LSP_BY_HOST, host)
                .into_iter()
                .filter(|(_, r)| {
                    let ext = ovsdb::get_map(r, "external_ids");
                    ext.get(marks::OWNER).map(String::as_str) == Some(marks::OWNER_VALUE)
                        && ext.get(marks::HOST).map(String::as_str) == Some(host)
                })
                .filter_map(|(_, r)| {
                    let name = ovsdb::get_str(r, "name")?.to_string();
                    Some((name, self.other_machines(r)?))
                })
                .collect()
        });
        let Some((port, machine)) = theirs.iter().min().cloned() else {
            return Ok(None);
        };
        Ok(Some(super::MarkClaim {
            port,
            more: theirs.len() - 1,
            what: "machine id",
            theirs: machine.clone(),
            ours: self.machine.clone(),
            same_machine: format!(
                "its OVS system-id or /etc/machine-id changed; set `machine_id = \"{machine}\"` (COURIER_MACHINE_ID) to take those ports back"
            ),
        }))
    }

    async fn find_ports(&self, q: &PortQuery) -> Result<Vec<LogicalPort>> {
        match q {
            PortQuery::OwnedBy { host } => Ok(self.cache.view(|v| self.owned_ports_in(v, host))),
            // OVN direct binds no existing ports (an address in use fails the create instead).
            PortQuery::ClaimedBy { .. } | PortQuery::Holding { .. } | PortQuery::WithMac { .. } => {
                Ok(vec![])
            }
        }
    }

    async fn wait_applied(&self, on: Option<&str>, timeout: std::time::Duration) -> Result<bool> {
        let t0 = std::time::Instant::now();
        // The hypervisor of the VM's port, asked before the bump: what must apply it.
        let chassis = match (on, &self.sb) {
            (Some(port), Some(sb)) => match sb.chassis_of(port, timeout).await {
                Ok(c) if !c.is_empty() => Some((sb, port, c)),
                Ok(_) => {
                    tracing::debug!(
                        port,
                        "the VM's port is bound to no chassis; waiting for every hypervisor"
                    );
                    None
                }
                Err(e) => {
                    tracing::warn!(port, error = %e, "cannot ask the Southbound DB which hypervisor hosts the VM's port; waiting for every hypervisor");
                    None
                }
            },
            _ => None,
        };
        let ops = vec![
            Op::mutate(
                "NB_Global",
                vec![],
                vec![Mutation::arith("nb_cfg", "+=", 1)],
            ),
            Op::select("NB_Global", vec![], Some(&["nb_cfg"])),
        ];
        let res = self.nb.transact(DB, ops).await.map_err(nb_err(
            "asking the hypervisors to report (NB_Global nb_cfg)",
        ))?;
        let target = match res.get(1) {
            Some(OpResult::Rows(rows)) => rows.first().and_then(|r| ovsdb::get_i64(r, "nb_cfg")),
            _ => None,
        }
        .ok_or_else(|| Error::BackendState("the NB DB has no NB_Global row".into()))?;
        if let Some((sb, port, chassis)) = chassis {
            let left = timeout.saturating_sub(t0.elapsed());
            match sb.wait_cfg(&chassis, target, left).await {
                Ok(super::ovn_sb::Applied::By(names)) => {
                    tracing::debug!(port, chassis = ?names, nb_cfg = target,
                        ms = t0.elapsed().as_secs_f64() * 1000.0,
                        "the change was applied by the VM's hypervisor");
                    return Ok(true);
                }
                Ok(super::ovn_sb::Applied::NotYet) => return Ok(false),
                Ok(super::ovn_sb::Applied::Unknown) => {
                    tracing::debug!(port, ?chassis,
                    "the VM's hypervisor has no Chassis_Private row; waiting for every hypervisor")
                }
                Err(e) => tracing::warn!(port, error = %e,
                    "cannot read the VM's hypervisor's progress; waiting for every hypervisor"),
            }
        }
        let left = timeout.saturating_sub(t0.elapsed());
        Ok(self
            .cache
            .wait_for(left, |v| {
                v.rows("NB_Global")
                    .any(|(_, r)| ovsdb::get_i64(r, "hv_cfg").is_some_and(|h| h >= target))
                    .then_some(())
            })
            .await
            .is_ok())
    }

    fn address_pairs(&self) -> Option<&dyn crate::backend::AddressPairs> {
        Some(self)
    }

    fn vlan_child_ports(&self) -> Option<&dyn crate::backend::VlanChildPorts> {
        Some(self)
    }
}

/// Nested ipvlan/macvlan and vlan; no existing ports (an address in use fails the create).
impl crate::backend::KnownAbilities for OvnBackend {
    const ABILITIES: &'static [crate::backend::Ability] = &[
        crate::backend::Ability::AddressPairs,
        crate::backend::Ability::VlanChildPorts,
    ];
}

#[async_trait]
impl crate::backend::NestedParents for OvnBackend {
    async fn parent_port(&self, q: &crate::backend::ParentQuery) -> Result<String> {
        let found: Vec<String> = self.cache.view(|v| {
            v.rows(LSP)
                .filter(|(_, r)| {
                    let name = ovsdb::get_str(r, "name").unwrap_or("");
                    if let Some(id) = &q.id {
                        return name == id;
                    }
                    let words: Vec<String> = ovsdb::get_str_set(r, "addresses")
                        .into_iter()
                        .chain(ovsdb::get_str(r, "dynamic_addresses").map(String::from))
                        .flat_map(|a| a.split_whitespace().map(String::from).collect::<Vec<_>>())
                        .collect();
                    if !q.ips.is_empty() {
                        return q
                            .ips
                            .iter()
                            .any(|ip| words.iter().any(|w| w.parse::<IpAddr>().ok() == Some(*ip)));
                    }
                    q.mac
                        .as_ref()
                        .is_some_and(|m| words.iter().any(|w| w.eq_ignore_ascii_case(m)))
                })
                // A parent is a VM's own port, not a child or a port Courier made.
                .filter(|(_, r)| {
                    ovsdb::get_str(r, "parent_name").is_none()
                        && !ovsdb::get_map(r, "external_ids").contains_key(marks::OWNER)
                })
                .filter_map(|(_, r)| ovsdb::get_str(r, "name").map(String::from))
                .collect()
        });
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Error::InvalidInput(format!(
                "no OVN logical switch port matches the VM's port ({q:?}): set [nested] parent_port to its name"
            ))),
            many => Err(Error::InvalidInput(format!(
                "several OVN logical switch ports match the VM's port ({q:?}): {}; set [nested] parent_port to one",
                many.join(", ")
            ))),
        }
    }
}

#[async_trait]
impl crate::backend::AddressPairs for OvnBackend {
    async fn add_address_pair(
        &self,
        parent: &str,
        pair: &crate::backend::AddressPair,
    ) -> Result<()> {
        if self.mutate_pair(parent, pair, "insert", true).await? == 0 {
            return Err(Error::BackendState(format!(
                "the VM's port {parent} does not exist in OVN any more"
            )));
        }
        Ok(())
    }

    async fn remove_address_pair(
        &self,
        parent: &str,
        pair: &crate::backend::AddressPair,
    ) -> Result<()> {
        self.mutate_pair(parent, pair, "delete", false)
            .await
            .map(|_| ())
    }

    async fn owned_address_pairs(
        &self,
        host: &str,
    ) -> Result<Vec<crate::backend::OwnedAddressPair>> {
        Ok(self.marked_pairs(host))
    }

    /// One mutate whose `where` is the mark itself (exact key and value): the pair, in
    /// `addresses` and `port_security`, and its mark go only if the mark still says this host's
    /// attachment — never an entry the user added, nor one another host marked since.
    async fn remove_owned_address_pair(
        &self,
        owned: &crate::backend::OwnedAddressPair,
    ) -> Result<bool> {
        let entry = pair_entry(&owned.pair);
        let mark = ovsdb::map([(
            added_pair_key(&entry),
            format!("{}:{}", owned.host, owned.attachment),
        )]);
        let entries = ovsdb::set([json!(entry)]);
        let res = self
            .nb
            .transact(
                DB,
                vec![Op::mutate(
                    LSP,
                    vec![
                        Condition::eq("name", json!(owned.parent)),
                        Condition::includes("external_ids", mark.clone()),
                    ],
                    vec![
                        Mutation::delete("addresses", entries.clone()),
                        Mutation::delete("port_security", entries),
                        Mutation::delete("external_ids", mark),
                    ],
                )],
            )
            .await
            .map_err(nb_err(format!(
                "removing the pair {entry} left on {}",
                owned.parent
            )))?;
        Ok(matches!(res.first(), Some(OpResult::Count(n)) if *n > 0))
    }
}

#[async_trait]
impl crate::backend::VlanChildPorts for OvnBackend {
    async fn child_tags(&self, parent: &str) -> Result<std::collections::BTreeSet<u16>> {
        if self.cache.lookup(&LSP_BY_NAME, parent).is_empty() {
            return Err(Error::InvalidInput(format!(
                "the VM's port {parent} is not an OVN logical switch port: set [nested] parent_port to the VM's port"
            )));
        }
        Ok(self.cache.view(|v| {
            v.rows(LSP)
                .filter(|(_, r)| ovsdb::get_str(r, "parent_name") == Some(parent))
                .flat_map(|(_, r)| child_port_tags(r))
                .collect()
        }))
    }
}

impl OvnBackend {
    /// Courier's reservation ports that hold `ip` in OVN's IPAM now.
    fn reservations_holding(&self, ip: IpAddr) -> Vec<Holding> {
        self.cache.view(|v| {
            v.rows(LSP)
                .filter_map(|(u, r)| {
                    let ext = ovsdb::get_map(r, "external_ids");
                    if ext.get(marks::ROLE).map(String::as_str) != Some("reservation") {
                        return None;
                    }
                    let held = ovsdb::get_str(r, "dynamic_addresses")
                        .map(String::from)
                        .into_iter()
                        .chain(ovsdb::get_str_set(r, "addresses"))
                        .find(|a| parse_addresses(a).is_some_and(|(_, ips)| ips.contains(&ip)))?;
                    let owner = match (ext.get(marks::HOST), ext.get(marks::ATTACHMENT)) {
                        (Some(h), Some(a)) => Some(format!("{h}:{a}")),
                        _ => None,
                    };
                    Some(Holding {
                        uuid: u.clone(),
                        held,
                        owner,
                    })
                })
                .collect()
        })
    }

    /// The pairs marked on VM ports as `host`'s (`marks::ADDED_PAIR`).
    fn marked_pairs(&self, host: &str) -> Vec<crate::backend::OwnedAddressPair> {
        self.cache.view(|v| {
            v.rows(LSP)
                .flat_map(|(_, r)| {
                    let parent = ovsdb::get_str(r, "name").unwrap_or_default().to_string();
                    ovsdb::get_map(r, "external_ids")
                        .into_iter()
                        .filter_map(|(k, val)| {
                            let entry = k.strip_prefix(marks::ADDED_PAIR)?;
                            let (h, attachment) = val.split_once(':')?;
                            let (mac, ips) = parse_addresses(entry)?;
                            let ip = *ips.first()?;
                            (h == host && ips.len() == 1).then(|| {
                                crate::backend::OwnedAddressPair {
                                    parent: parent.clone(),
                                    pair: crate::backend::AddressPair { mac, ip },
                                    host: h.to_string(),
                                    attachment: attachment.to_string(),
                                }
                            })
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        })
    }
}

/// A reservation port holding an address: its uuid, its "MAC IP", and `<host>:<attachment>`
/// from its marks.
struct Holding {
    uuid: String,
    held: String,
    owner: Option<String>,
}

/// The key of the mark of pair `entry` on the VM's port.
fn added_pair_key(entry: &str) -> String {
    format!("{}{entry}", marks::ADDED_PAIR)
}

/// The VLAN tags a child port holds under its parent: its `tag`, and its `tag_request` when
/// that names one. `ovn-nbctl lsp-add SW PORT PARENT TAG` (and most clients) write only
/// `tag_request`; ovn-northd copies it into `tag` later — with thousands of ports, seconds
/// later — so a tag requested but not yet copied is taken all the same. (`tag_request` 0 asks
/// northd to pick one: unknown until it has, so nothing to count.)
fn child_port_tags(row: &Row) -> impl Iterator<Item = u16> + use<'_> {
    ["tag", "tag_request"]
        .into_iter()
        .filter_map(|c| ovsdb::get_i64(row, c))
        .filter_map(|t| u16::try_from(t).ok())
        .filter(|t| (1..=4094).contains(t))
}

/// The `addresses` / `port_security` entry of a nested container's address on its VM's port.
pub fn pair_entry(pair: &crate::backend::AddressPair) -> String {
    format!("{} {}", pair.mac.to_ascii_lowercase(), pair.ip)
}

impl OvnBackend {
    /// One mutate of the parent LSP's `addresses` and `port_security` (insert or delete of one
    /// element): atomic in the NB DB, so concurrent attaches on one VM port never lose a pair.
    ///
    /// An *open* VM port (empty `port_security`: OVN lets everything through) stays open: the
    /// pair goes into `addresses` only (the switch's MAC lookup and ARP for the container). A
    /// first entry in `port_security` would make it an allow-list without the VM's own address
    /// and cut the VM off. The test is part of the mutate's `where`, so it is made at commit
    /// time, and a detach's delete of an entry that was never there changes nothing: the port
    /// ends exactly as it was.
    ///
    /// With `take_over`, the same transaction empties the reservation port that held the
    /// pair's IP (its "MAC IP" kept in `external_ids:courier-reserved`): from then on the VM's
    /// port holds the address, statically, in OVN's IPAM. Otherwise two ports would claim one
    /// IP: ovn-northd moves the reservation's dynamic address to another IP (one lost per
    /// container), and its ARP responder (on for ports that are down, too) answers for the
    /// container's IP with the reservation's MAC. The VM's port is marked with the pair and the
    /// reservation's host and attachment (`marks::ADDED_PAIR`) in that transaction too; a
    /// delete takes the mark off with the pair.
    async fn mutate_pair(
        &self,
        parent: &str,
        pair: &crate::backend::AddressPair,
        mutator: &str,
        take_over: bool,
    ) -> Result<usize> {
        let entry = pair_entry(pair);
        let entries = ovsdb::set([json!(entry)]);
        let mark_key = ovsdb::set([json!(added_pair_key(&entry))]);
        let on_vm = || vec![Condition::eq("name", json!(parent))];
        let mut ops = Vec::new();
        if mutator == "insert" {
            let mut vm = vec![Mutation::insert("addresses", entries.clone())];
            let held = if take_over {
                self.reservations_holding(pair.ip)
            } else {
                Vec::new()
            };
            if let Some(owner) = held.iter().find_map(|h| h.owner.clone()) {
                // Replaces a stale mark of the same entry, if any (a map insert keeps an
                // existing key's value).
                vm.push(Mutation::delete("external_ids", mark_key.clone()));
                vm.push(Mutation::insert(
                    "external_ids",
                    ovsdb::map([(added_pair_key(&entry), owner)]),
                ));
            }
            ops.push(Op::mutate(LSP, on_vm(), vm));
            let mut locked = on_vm();
            locked.push(Condition::ne("port_security", ovsdb::empty_set()));
            ops.push(Op::mutate(
                LSP,
                locked,
                vec![Mutation::insert("port_security", entries)],
            ));
            for h in held {
                ops.push(Op::update(
                    LSP,
                    vec![Condition::eq("_uuid", ovsdb::uuid(&h.uuid))],
                    json!({"addresses": ovsdb::empty_set(), "port_security": ovsdb::empty_set()}),
                ));
                ops.push(Op::mutate(
                    LSP,
                    vec![Condition::eq("_uuid", ovsdb::uuid(&h.uuid))],
                    vec![Mutation::insert(
                        "external_ids",
                        ovsdb::map([
                            (marks::RESERVED, h.held),
                            (marks::PAIR_ON, parent.to_string()),
                            (marks::PAIR, entry.clone()),
                        ]),
                    )],
                ));
            }
        } else {
            ops.push(Op::mutate(
                LSP,
                on_vm(),
                vec![
                    Mutation::new("addresses", mutator, entries.clone()),
                    Mutation::new("port_security", mutator, entries),
                    Mutation::new("external_ids", mutator, mark_key),
                ],
            ));
        }
        let res = self
            .nb
            .transact(DB, ops)
            .await
            .map_err(nb_err(format!("changing the address pairs of {parent}")))?;
        Ok(match res.first() {
            Some(OpResult::Count(n)) => *n as usize,
            _ => 0,
        })
    }

    /// A macvlan/ipvlan container's address is a pair on the VM's port, so its reservation
    /// must be on the VM port's own switch: on another one the VM's port would carry an
    /// address of a switch it is not on (nothing there forwards it), and the address would be
    /// free again in its own switch's IPAM once the reservation gave it up (two ports, one
    /// address). Refused before anything is made.
    fn refuse_pair_off_the_vm_switch(
        &self,
        parent: &str,
        ls_uuid: &str,
        network: &str,
    ) -> Result<()> {
        let vm_switch = self.cache.view(|v| {
            let (port_uuid, _) = v.lookup(&LSP_BY_NAME, parent).into_iter().next()?;
            v.lookup(&LS_BY_PORT, port_uuid)
                .into_iter()
                .next()
                .map(|(u, r)| {
                    (
                        u.clone(),
                        ovsdb::get_str(r, "name").unwrap_or("?").to_string(),
                    )
                })
        });
        match vm_switch {
            Some((u, _)) if u == ls_uuid => Ok(()),
            Some((_, vm_net)) => Err(Error::InvalidInput(format!(
                "network {network:?} is not the network of the VM's port {parent} ({vm_net:?}): a macvlan or ipvlan container's address is allowed on the VM's port, so it can only join {vm_net:?}; attach it to {vm_net:?}, or use the vlan or vlan-ovs binding (a child port of the VM's port may join any network)"
            ))),
            // Not in the cache: the pair's own step reports the missing port.
            None => Ok(()),
        }
    }

    /// Many plain ports on one switch (a pool's refill): one NB transaction inserts them all,
    /// one wait sees ovn-northd give them their addresses, one transaction sets their port
    /// security. All or nothing: if the wait fails, the ports made are deleted again.
    async fn create_bulk(&self, reqs: &[PortRequest]) -> Result<Vec<LogicalPort>> {
        let network = reqs[0].network.name.as_str();
        let (ls_uuid, ls_row) = self.switch(network)?;
        let net = self.network_from_row(&ls_uuid, &ls_row);
        if net.subnet.is_none() && net.subnet6.is_none() {
            return Err(Error::InvalidInput(format!(
                "network {network:?} has no other_config:subnet, so OVN cannot assign addresses to pooled ports; set a subnet"
            )));
        }
        let mut ops = Vec::with_capacity(reqs.len() + 1);
        let mut names = Vec::with_capacity(reqs.len());
        for (i, req) in reqs.iter().enumerate() {
            let mut ext = BTreeMap::new();
            ext.insert(marks::OWNER, marks::OWNER_VALUE.to_string());
            ext.insert(marks::HOST, req.owner.host.clone());
            ext.insert(marks::ATTACHMENT, req.owner.attachment.clone());
            ext.insert(marks::NETWORK, network.to_string());
            if let Some(m) = &self.machine {
                ext.insert(marks::MACHINE, m.clone());
            }
            let row = json!({
                "name": req.name,
                "addresses": addresses_entry(None, None),
                "external_ids": ovsdb::map(ext),
            });
            ops.push(Op::insert(LSP, row).with_uuid_name(&format!("p{i}")));
            names.push(ovsdb::named_uuid(&format!("p{i}")));
        }
        ops.push(Op::mutate(
            LS,
            vec![Condition::eq("_uuid", ovsdb::uuid(&ls_uuid))],
            vec![Mutation::insert("ports", ovsdb::set(names))],
        ));
        let n = reqs.len();
        let res = self
            .nb
            .transact(DB, ops)
            .await
            .map_err(nb_err(format!("creating {n} ports on {network}")))?;
        if !matches!(res.get(n), Some(OpResult::Count(1))) {
            return Err(Error::BackendState(format!(
                "network {network:?} disappeared while {n} ports were being created"
            )));
        }
        let mut uuids = Vec::with_capacity(n);
        for (r, req) in res.iter().zip(reqs) {
            match r {
                OpResult::Insert { uuid } => uuids.push(uuid.clone()),
                other => {
                    return Err(Error::BackendState(format!(
                        "unexpected reply to insert of port {}: {other:?}",
                        req.name
                    )))
                }
            }
        }
        let rows = self
            .cache
            .wait_for(ADDRESS_TIMEOUT, |view| {
                uuids
                    .iter()
                    .map(|u| {
                        let row = view.row(LSP, u)?;
                        ovsdb::get_str(row, "dynamic_addresses")
                            .and_then(parse_addresses)
                            .is_some_and(|(_, ips)| !ips.is_empty())
                            .then(|| row.clone())
                    })
                    .collect::<Option<Vec<_>>>()
            })
            .await;
        let rows = match rows {
            Ok(r) => r,
            Err(_) => {
                for req in reqs {
                    let _ = self.delete_owned(&req.name, &req.owner.host).await;
                }
                return Err(Error::BackendState(format!(
                    "OVN assigned no address to {n} new ports on {network:?} within {}s: is ovn-northd running, and does the network have {n} free addresses?",
                    ADDRESS_TIMEOUT.as_secs()
                )));
            }
        };
        let mut ports = Vec::with_capacity(n);
        let mut ops = Vec::with_capacity(n);
        for (row, uuid) in rows.iter().zip(&uuids) {
            let port = self
                .port_from_row(row, Some(&net))
                .ok_or_else(|| Error::BackendState(format!("port {uuid} has no name")))?;
            let security = std::iter::once(port.mac.clone())
                .chain(port.ips.iter().map(|ip| ip.addr().to_string()))
                .collect::<Vec<_>>()
                .join(" ");
            ops.push(Op::update(
                LSP,
                vec![Condition::eq("_uuid", ovsdb::uuid(uuid))],
                json!({ "port_security": security }),
            ));
            ports.push(port);
        }
        let res = self.nb.transact(DB, ops).await.map_err(nb_err(format!(
            "setting port security on {n} ports of {network}"
        )))?;
        if res.iter().take(n).any(|r| !matches!(r, OpResult::Count(1))) || res.len() < n {
            return Err(Error::BackendState(format!(
                "a port of {n} new ones on {network:?} disappeared while they were being created"
            )));
        }
        tracing::debug!(network, n, "created logical ports in bulk");
        Ok(ports)
    }

    async fn create_one(&self, req: &PortRequest) -> Result<LogicalPort> {
        let network = req.network.name.as_str();
        if !req.security_groups.is_empty() {
            return Err(Error::InvalidInput(format!(
                "security groups ({}) are a Neutron feature; network {network:?} is OVN direct (its ports get port security only)",
                req.security_groups.join(", ")
            )));
        }
        if req.ips.len() > 1 {
            return Err(Error::InvalidInput(format!(
                "{} addresses requested: OVN networks give a port one address for now",
                req.ips.len()
            )));
        }
        let requested_ip = req.ips.first().copied();
        let requested_guard = if requested_ip.is_some() || req.mac.is_some() {
            Some(self.requested_ip.lock().await)
        } else {
            None
        };
        let (ls_uuid, ls_row) = self.switch(network)?;
        if let (PortRole::Reservation, Some(plan)) = (&req.role, &req.pairs_on) {
            self.refuse_pair_off_the_vm_switch(&plan.parent, &ls_uuid, network)?;
        }
        let net = self.network_from_row(&ls_uuid, &ls_row);
        if let Some(ip) = requested_ip {
            let IpAddr::V4(v4) = ip else {
                return Err(Error::InvalidInput(format!(
                    "requested address {ip}: only IPv4 is supported on OVN networks for now"
                )));
            };
            let Some(subnet) = net.subnet else {
                return Err(Error::InvalidInput(format!(
                    "network {network:?} has no subnet, so {ip} cannot be assigned"
                )));
            };
            if !subnet.contains(&v4) || v4 == subnet.network() || v4 == subnet.broadcast() {
                return Err(Error::InvalidInput(format!(
                    "requested address {ip} is not a usable address of {network:?} ({subnet})"
                )));
            }
            if net.gateway == Some(v4) {
                return Err(Error::InvalidInput(format!(
                    "requested address {ip} is the gateway of {network:?}"
                )));
            }
            if let Some(port) = self.address_user(&ls_row, |w| w.parse::<IpAddr>().ok() == Some(ip))
            {
                return Err(Error::AddressInUse {
                    address: ip.to_string(),
                    port,
                    network: network.into(),
                });
            }
        }
        if let Some(mac) = &req.mac {
            let want = crate::model::parse_mac(mac).map_err(Error::InvalidInput)?;
            if let Some(port) =
                self.address_user(&ls_row, |w| crate::model::parse_mac(w).ok() == Some(want))
            {
                return Err(Error::AddressInUse {
                    address: mac.clone(),
                    port,
                    network: network.into(),
                });
            }
        }
        if net.subnet.is_none()
            && net.subnet6.is_none()
            && (requested_ip.is_none() || req.mac.is_none())
        {
            return Err(Error::InvalidInput(format!(
                "network {network:?} has no other_config:subnet, so OVN cannot assign addresses; give --ip and --mac or set a subnet"
            )));
        }
        let addresses = addresses_entry(req.mac.as_deref(), requested_ip);
        let mut ext = BTreeMap::new();
        ext.insert(marks::OWNER, marks::OWNER_VALUE.to_string());
        ext.insert(marks::HOST, req.owner.host.clone());
        ext.insert(marks::ATTACHMENT, req.owner.attachment.clone());
        ext.insert(marks::NETWORK, network.to_string());
        if let Some(m) = &self.machine {
            ext.insert(marks::MACHINE, m.clone());
        }
        if req.role == PortRole::Reservation {
            ext.insert(marks::ROLE, "reservation".to_string());
        }
        if let PortRole::Direct(profile) = &req.role {
            ext.insert(marks::VF, profile.pci_slot.clone());
        }
        let mut row = json!({
            "name": req.name,
            "addresses": addresses,
            "external_ids": ovsdb::map(ext),
        });
        match &req.role {
            // A child of the VM's port (OVN's container-in-VM form): its frames arrive on the
            // parent's binding with this VLAN tag, which OVN strips.
            PortRole::Child { parent, tag } => {
                row["parent_name"] = json!(parent);
                row["tag"] = json!(tag);
            }
            // Only holds its address in OVN's IPAM until the address is a pair on the VM's
            // port (`add_address_pair` moves it there); carries no traffic.
            PortRole::Reservation => {
                row["enabled"] = json!(false);
            }
            // An SR-IOV VF: its frames reach the switch through the localnet port; OVN makes
            // the chassis that hosts external ports answer its ARP and DHCP (ML2/OVN's form).
            PortRole::Direct(_) => {
                if net.physical.is_none() {
                    return Err(Error::InvalidInput(format!(
                        "network {network:?} has no localnet port, so an SR-IOV VF cannot reach it: add one (ovn-nbctl lsp-add {network} ln -- lsp-set-type ln localnet -- lsp-set-options ln network_name=physnet1), or attach with another binding"
                    )));
                }
                if !self.localnet_takes_unknown(&ls_row) {
                    return Err(Error::InvalidInput(format!(
                        "the localnet port of network {network:?} does not take unknown addresses, so nothing on the switch could reach an SR-IOV VF (OVN forwards to a VF's MAC only through it): ovn-nbctl lsp-set-addresses <localnet port> unknown"
                    )));
                }
                row["type"] = json!("external");
                row["ha_chassis_group"] = ovsdb::uuid(&self.extport_group().await?);
            }
            PortRole::Bound => {}
        }
        let ops = vec![
            Op::insert(LSP, row).with_uuid_name("newport"),
            Op::mutate(
                LS,
                vec![Condition::eq("_uuid", ovsdb::uuid(&ls_uuid))],
                vec![Mutation::insert("ports", ovsdb::named_uuid("newport"))],
            ),
        ];
        let res = self
            .nb
            .transact(DB, ops)
            .await
            .map_err(nb_err(format!("creating port {} on {network}", req.name)))?;
        if !matches!(res.get(1), Some(OpResult::Count(1))) {
            return Err(Error::BackendState(format!(
                "network {network:?} disappeared while port {} was being created",
                req.name
            )));
        }
        let port_uuid = match res.first() {
            Some(OpResult::Insert { uuid }) => uuid.clone(),
            other => {
                return Err(Error::BackendState(format!(
                    "unexpected reply to insert of port {}: {other:?}",
                    req.name
                )))
            }
        };
        // The requested address is taken once our row is in the cache (its `addresses` names
        // it): the next check-and-take sees it, so the lock goes now, before the bounded wait
        // for ovn-northd below.
        if let Some(guard) = requested_guard {
            self.cache
                .wait_for(CACHE_TIMEOUT, |v| v.row(LSP, &port_uuid).map(|_| ()))
                .await
                .map_err(nb_err(format!(
                    "waiting to see port {} in the monitor",
                    req.name
                )))?;
            drop(guard);
        }
        // OVN's IPAM runs in ovn-northd: wait for it to fill dynamic_addresses.
        let row = self
            .cache
            .wait_for(ADDRESS_TIMEOUT, |view| {
                let row = view.row(LSP, &port_uuid)?;
                let complete = !addresses.contains("dynamic")
                    || ovsdb::get_str(row, "dynamic_addresses")
                        .and_then(parse_addresses)
                        .is_some_and(|(_, ips)| !ips.is_empty());
                complete.then(|| row.clone())
            })
            .await
            .map_err(|_| {
                Error::BackendState(format!(
                    "OVN assigned no address to port {} within {}s: is ovn-northd running, and does network {network:?} have free addresses?",
                    req.name,
                    ADDRESS_TIMEOUT.as_secs()
                ))
            })?;
        let port = self
            .port_from_row(&row, Some(&net))
            .ok_or_else(|| Error::BackendState(format!("port {} has no name", req.name)))?;
        // Port security: the container may only send from the MAC and IPs it was given.
        let security = std::iter::once(port.mac.clone())
            .chain(port.ips.iter().map(|ip| ip.addr().to_string()))
            .collect::<Vec<_>>()
            .join(" ");
        let res = self
            .nb
            .transact(
                DB,
                vec![Op::update(
                    LSP,
                    vec![Condition::eq("_uuid", ovsdb::uuid(&port_uuid))],
                    json!({ "port_security": security }),
                )],
            )
            .await
            .map_err(nb_err(format!("setting port security on {}", req.name)))?;
        if !matches!(res.first(), Some(OpResult::Count(1))) {
            return Err(Error::BackendState(format!(
                "port {} disappeared while it was being created",
                req.name
            )));
        }
        tracing::debug!(port = %port.name, mac = %port.mac, ips = ?port.ips, "created logical port");
        Ok(port)
    }

    /// Deletes LSP `name` if `host` owns it (the marks are checked again inside the deleting
    /// transaction).
    async fn delete_owned(&self, name: &str, host: &str) -> Result<bool> {
        // Only a port this host owns: name and ownership marks, asked of the server (not the
        // cache, so a port created a moment ago is found too), and checked again inside the
        // deleting transaction. Another host's port of the same name is never touched.
        let owned = || {
            vec![
                Condition::eq("name", json!(name)),
                Condition::includes(
                    "external_ids",
                    ovsdb::map([(marks::OWNER, marks::OWNER_VALUE), (marks::HOST, host)]),
                ),
            ]
        };
        let uuids = self
            .nb
            .select_uuids(DB, LSP, owned())
            .await
            .map_err(nb_err(format!("looking up port {name}")))?;
        // Another machine's port of that name under the same mark is left alone too.
        let uuids: Vec<String> = uuids
            .into_iter()
            .filter(|u| {
                self.cache
                    .view(|v| v.row(LSP, u).and_then(|r| self.other_machines(r)))
                    .is_none()
            })
            .collect();
        if uuids.is_empty() {
            return Ok(false);
        }
        let mut ops = Vec::new();
        for u in &uuids {
            ops.push(Op::assert_row(LSP, u, owned()));
            // A reservation whose address is a pair on a VM's port: the pair goes with it (a
            // no-op when the detach removed it first; what the sweep relies on otherwise).
            let pair = self.cache.view(|v| {
                v.row(LSP, u).and_then(|r| {
                    let ext = ovsdb::get_map(r, "external_ids");
                    Some((
                        ext.get(marks::PAIR_ON)?.clone(),
                        ext.get(marks::PAIR)?.clone(),
                    ))
                })
            });
            if let Some((parent, entry)) = pair {
                let mark_key = ovsdb::set([json!(added_pair_key(&entry))]);
                let entry = ovsdb::set([json!(entry)]);
                ops.push(Op::mutate(
                    LSP,
                    vec![Condition::eq("name", json!(parent))],
                    vec![
                        Mutation::delete("addresses", entry.clone()),
                        Mutation::delete("port_security", entry),
                        Mutation::delete("external_ids", mark_key),
                    ],
                ));
            }
            ops.push(Op::mutate(
                LS,
                vec![Condition::includes("ports", ovsdb::uuid(u))],
                vec![Mutation::delete("ports", ovsdb::uuid(u))],
            ));
            ops.push(Op::delete(
                LSP,
                vec![Condition::eq("_uuid", ovsdb::uuid(u))],
            ));
        }
        self.nb
            .transact(DB, ops)
            .await
            .map_err(nb_err(format!("deleting port {name}")))?;
        tracing::debug!(port = %name, "deleted logical port");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(subnet: &str) -> NetworkSpec {
        NetworkSpec {
            name: "n1".into(),
            subnet: Some(subnet.parse().unwrap()),
            subnet6: None,
            gateway6: None,
            gateway: None,
            exclude_ips: vec![],
            existing: None,
        }
    }

    #[test]
    fn a_child_ports_requested_tag_is_taken_before_northd_copies_it() {
        let tags = |row: serde_json::Value| -> Vec<u16> {
            let row: Row = serde_json::from_value(row).unwrap();
            let set: std::collections::BTreeSet<u16> = child_port_tags(&row).collect();
            set.into_iter().collect()
        };
        // Just added by `ovn-nbctl lsp-add SW P PARENT 7`: northd has not copied it yet.
        assert_eq!(tags(json!({"tag": ["set", []], "tag_request": 7})), [7]);
        // Copied.
        assert_eq!(tags(json!({"tag": 7, "tag_request": 7})), [7]);
        // Set directly (as Courier does), no request.
        assert_eq!(tags(json!({"tag": 9, "tag_request": ["set", []]})), [9]);
        // "Pick one for me", not picked yet: nothing known to count.
        assert!(tags(json!({"tag": ["set", []], "tag_request": 0})).is_empty());
        // 4095 is outside what a child port can carry.
        assert!(tags(json!({"tag_request": 4095})).is_empty());
    }

    #[test]
    fn address_entries_leave_to_ovn_what_was_not_asked() {
        assert_eq!(addresses_entry(None, None), "dynamic");
        assert_eq!(
            addresses_entry(None, Some("10.0.0.5".parse().unwrap())),
            "dynamic 10.0.0.5"
        );
        assert_eq!(
            addresses_entry(Some("0a:00:00:00:00:01"), None),
            "0a:00:00:00:00:01 dynamic"
        );
        assert_eq!(
            addresses_entry(Some("0a:00:00:00:00:01"), Some("10.0.0.5".parse().unwrap())),
            "0a:00:00:00:00:01 10.0.0.5"
        );
    }

    #[test]
    fn ipv6_specs_and_prefixes() {
        let mut s = spec("10.9.0.0/24");
        s.subnet6 = Some("fd00:9::/64".parse().unwrap());
        s.gateway6 = Some("fd00:9::1".parse().unwrap());
        assert!(validate_spec(&s).is_ok());
        s.subnet6 = Some("fd00:9::/48".parse().unwrap());
        assert!(validate_spec(&s).unwrap_err().to_string().contains("/64"));
        s.subnet6 = Some("fd00:9::5/64".parse().unwrap());
        assert!(validate_spec(&s).is_err(), "host bits");
        s.subnet6 = Some("fd00:9::/64".parse().unwrap());
        s.gateway6 = Some("fd00:8::1".parse().unwrap());
        assert!(validate_spec(&s).is_err(), "gateway outside");
        let v6only = NetworkSpec {
            subnet: None,
            subnet6: Some("fd00:9::/64".parse().unwrap()),
            ..spec("10.9.0.0/24")
        };
        assert_eq!(validate_spec(&v6only).unwrap(), "");
        let none = NetworkSpec {
            subnet: None,
            ..spec("10.9.0.0/24")
        };
        assert!(validate_spec(&none).is_err());
        assert_eq!(
            parse_prefix64("fd77:1:2:3::"),
            Some("fd77:1:2:3::/64".parse().unwrap())
        );
        assert_eq!(
            parse_prefix64("fd77:1:2:4::/64"),
            Some("fd77:1:2:4::/64".parse().unwrap())
        );
        assert_eq!(parse_prefix64("nonsense"), None);
        let (_, ips) =
            parse_addresses("ce:0f:63:4d:00:03 10.77.0.2 fd77:1:2:3:cc0f:63ff:fe4d:3").unwrap();
        assert_eq!(ips.len(), 2);
    }

    #[test]
    fn parses_ovn_address_strings() {
        let (mac, ips) = parse_addresses("0a:00:00:00:00:01 10.9.0.3").unwrap();
        assert_eq!(mac, "0a:00:00:00:00:01");
        assert_eq!(ips, vec!["10.9.0.3".parse::<IpAddr>().unwrap()]);
        assert!(parse_addresses("dynamic").is_none());
        assert!(parse_addresses("").is_none());
    }

    #[test]
    fn spec_validation() {
        let mut s = spec("10.9.0.0/24");
        s.gateway = Some("10.9.0.1".parse().unwrap());
        s.exclude_ips = vec!["10.9.0.2..10.9.0.9".into()];
        assert_eq!(validate_spec(&s).unwrap(), "10.9.0.1 10.9.0.2..10.9.0.9");
        assert!(validate_spec(&spec("10.9.0.5/24"))
            .unwrap_err()
            .to_string()
            .contains("did you mean 10.9.0.0/24"));
        assert!(validate_spec(&spec("10.9.0.0/30")).is_err());
        s.gateway = Some("10.9.1.1".parse().unwrap());
        assert!(validate_spec(&s).is_err());
        s.gateway = Some("10.9.0.255".parse().unwrap());
        assert!(validate_spec(&s).is_err());
        let mut s = spec("10.9.0.0/24");
        s.exclude_ips = vec!["10.9.1.2".into()];
        assert!(validate_spec(&s).is_err());
        s.exclude_ips = vec!["10.9.0.9..10.9.0.2".into()];
        assert!(validate_spec(&s).is_err());
    }
}
