//! Test double of OVN direct (id "ovn"): networks and ports in memory, with OVN's IPAM rules —
//! the first free IPv4 host address in order (the gateway and `exclude_ips` never), requested
//! addresses and MACs honoured and refused with `AddressInUse` when another port has them, the
//! IPv6 address derived from the MAC (EUI-64) on a network with an IPv6 /64. Ports are reported
//! as `OvnBackend` reports them: id = name, ips with the subnet's prefix, the network's gateways.
//! VLAN child ports (`VlanChildPorts`: the tags `add_children` set); no address pairs and no
//! existing ports (the flows refuse them before any side effect, as they would a backend
//! without them).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;

use async_trait::async_trait;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{Backend, NestedParents, ParentQuery, PortQuery, PortRef, PortRequest, VlanChildPorts};
use crate::error::{Error, Result};
use crate::model::{parse_mac, LogicalPort, Network, NetworkSpec};

#[derive(Default)]
pub struct FakeOvn {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    networks: BTreeMap<String, Network>,
    /// Port name → (port, owning host).
    ports: BTreeMap<String, (LogicalPort, String)>,
    /// Names of every network `create_network` made, in order.
    created: Vec<String>,
    /// Next dynamic MAC (OVN: `mac_prefix` + a counter).
    next_mac: u32,
    next_switch: u32,
    /// VLAN tags of child ports someone else made under a parent (`child_tags`).
    children: BTreeMap<String, std::collections::BTreeSet<u16>>,
}

impl FakeOvn {
    pub fn new() -> FakeOvn {
        FakeOvn::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every port's name.
    pub fn port_names(&self) -> Vec<String> {
        self.state().ports.keys().cloned().collect()
    }

    /// Every network's name.
    pub fn network_names(&self) -> Vec<String> {
        self.state().networks.keys().cloned().collect()
    }

    /// Child ports with these tags exist under `parent` (made by someone else).
    pub fn add_children(&self, parent: &str, tags: impl IntoIterator<Item = u16>) {
        self.state()
            .children
            .entry(parent.to_string())
            .or_default()
            .extend(tags);
    }

    /// The networks `create_network` made, in order (deleted ones too).
    pub fn created_networks(&self) -> Vec<String> {
        self.state().created.clone()
    }
}

/// Whether `ip` is one of the `exclude_ips` entries (an address or an `A..B` range).
fn excluded(ip: Ipv4Addr, excludes: &[String]) -> bool {
    excludes.iter().any(|e| match e.split_once("..") {
        Some((a, b)) => match (a.parse::<Ipv4Addr>(), b.parse::<Ipv4Addr>()) {
            (Ok(a), Ok(b)) => a <= ip && ip <= b,
            _ => false,
        },
        None => e.parse::<Ipv4Addr>() == Ok(ip),
    })
}

/// The modified EUI-64 address of `mac` in `prefix` (what OVN gives a port on an IPv6 /64).
pub fn eui64(prefix: Ipv6Net, mac: [u8; 6]) -> Ipv6Addr {
    let iid = [
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ];
    let net = u128::from(prefix.network());
    Ipv6Addr::from(net | u128::from(u64::from_be_bytes(iid)))
}

impl State {
    fn ports_of<'a>(&'a self, network: &'a str) -> impl Iterator<Item = &'a LogicalPort> + 'a {
        self.ports
            .values()
            .map(|(p, _)| p)
            .filter(move |p| p.network == network)
    }

    fn create_one(&mut self, req: &PortRequest) -> Result<LogicalPort> {
        let network = req.network.name.as_str();
        if !req.security_groups.is_empty() {
            return Err(Error::InvalidInput(format!(
                "security groups ({}) are a Neutron feature; network {network:?} is OVN direct",
                req.security_groups.join(", ")
            )));
        }
        if req.ips.len() > 1 {
            return Err(Error::InvalidInput(format!(
                "{} addresses requested: OVN networks give a port one address for now",
                req.ips.len()
            )));
        }
        let net = self
            .networks
            .get(network)
            .cloned()
            .ok_or_else(|| Error::UnknownNetwork(network.to_string()))?;
        if self.ports.contains_key(&req.name) {
            return Err(Error::BackendState(format!(
                "a port named {} exists already",
                req.name
            )));
        }
        let user_of = |is: &dyn Fn(&LogicalPort) -> bool| {
            self.ports_of(network)
                .find(|p| is(p))
                .map(|p| p.name.clone())
        };
        let v4 = match req.ips.first() {
            Some(IpAddr::V6(ip)) => {
                return Err(Error::InvalidInput(format!(
                    "requested address {ip}: only IPv4 is supported on OVN networks for now"
                )))
            }
            Some(IpAddr::V4(ip)) => {
                let Some(subnet) = net.subnet else {
                    return Err(Error::InvalidInput(format!(
                        "network {network:?} has no subnet, so {ip} cannot be assigned"
                    )));
                };
                if !subnet.contains(ip) || *ip == subnet.network() || *ip == subnet.broadcast() {
                    return Err(Error::InvalidInput(format!(
                        "requested address {ip} is not a usable address of {network:?} ({subnet})"
                    )));
                }
                if net.gateway == Some(*ip) {
                    return Err(Error::InvalidInput(format!(
                        "requested address {ip} is the gateway of {network:?}"
                    )));
                }
                let want = IpAddr::V4(*ip);
                if let Some(port) = user_of(&|p| p.ips.iter().any(|i| i.addr() == want)) {
                    return Err(Error::AddressInUse {
                        address: ip.to_string(),
                        port,
                        network: network.into(),
                    });
                }
                Some(*ip)
            }
            None => match net.subnet {
                Some(subnet) => {
                    let used: Vec<IpAddr> = self
                        .ports_of(network)
                        .flat_map(|p| p.ips.iter().map(|i| i.addr()))
                        .collect();
                    let free = subnet.hosts().find(|h| {
                        Some(*h) != net.gateway
                            && !excluded(*h, &net.exclude_ips)
                            && !used.contains(&IpAddr::V4(*h))
                    });
                    match free {
                        Some(h) => Some(h),
                        None => {
                            return Err(Error::BackendState(format!(
                                "OVN assigned no address to port {}: network {network:?} has no free addresses",
                                req.name
                            )))
                        }
                    }
                }
                None => None,
            },
        };
        let mac = match &req.mac {
            Some(m) => {
                let want = parse_mac(m).map_err(Error::InvalidInput)?;
                if let Some(port) = user_of(&|p| parse_mac(&p.mac).ok() == Some(want)) {
                    return Err(Error::AddressInUse {
                        address: m.clone(),
                        port,
                        network: network.into(),
                    });
                }
                m.clone()
            }
            None => loop {
                self.next_mac += 1;
                let n = self.next_mac.to_be_bytes();
                let m = format!("0a:00:00:{:02x}:{:02x}:{:02x}", n[1], n[2], n[3]);
                if !self.ports.values().any(|(p, _)| p.mac == m) {
                    break m;
                }
            },
        };
        let mac_bytes = parse_mac(&mac).map_err(Error::InvalidInput)?;
        let mut ips = Vec::new();
        if let (Some(ip), Some(subnet)) = (v4, net.subnet) {
            ips.push(IpNet::V4(
                Ipv4Net::new(ip, subnet.prefix_len())
                    .map_err(|e| Error::Internal(e.to_string()))?,
            ));
        }
        if let Some(s6) = net.subnet6 {
            ips.push(IpNet::V6(
                Ipv6Net::new(eui64(s6, mac_bytes), 64)
                    .map_err(|e| Error::Internal(e.to_string()))?,
            ));
        }
        if ips.is_empty() {
            return Err(Error::InvalidInput(format!(
                "network {network:?} has no subnet, so OVN cannot assign addresses"
            )));
        }
        let port = LogicalPort {
            id: req.name.clone(),
            name: req.name.clone(),
            network: network.to_string(),
            mac,
            ips,
            gateways: net
                .gateway
                .map(IpAddr::V4)
                .into_iter()
                .chain(net.gateway6.map(IpAddr::V6))
                .collect(),
            routes: vec![],
            dns: Default::default(),
            mtu: None,
            up: false,
            attachment: Some(req.owner.attachment.clone()),
            pairs_on: req.pairs_on.clone(),
            vlan: None,
        };
        self.ports
            .insert(req.name.clone(), (port.clone(), req.owner.host.clone()));
        Ok(port)
    }

    fn with_count(&self, n: &Network) -> Network {
        Network {
            ports: self.ports_of(&n.name).count(),
            ..n.clone()
        }
    }
}

#[async_trait]
impl Backend for FakeOvn {
    fn id(&self) -> &str {
        "ovn"
    }
    fn reads_are_local(&self) -> bool {
        true
    }

    async fn health(&self) -> Result<()> {
        Ok(())
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<Network> {
        let exclude = super::ovn::validate_spec(spec)?;
        let mut s = self.state();
        if s.networks.contains_key(&spec.name) {
            return Err(Error::NetworkExists(spec.name.clone()));
        }
        s.next_switch += 1;
        let n = Network {
            name: spec.name.clone(),
            backend_id: format!("fake-ls-{}", s.next_switch),
            backend: "ovn".into(),
            subnet: spec.subnet,
            gateway: spec.gateway,
            subnet6: spec.subnet6,
            gateway6: spec.gateway6,
            exclude_ips: exclude.split_whitespace().map(String::from).collect(),
            mtu: None,
            dns_domain: None,
            created_by_courier: true,
            ports: 0,
            physical: None,
        };
        s.networks.insert(spec.name.clone(), n.clone());
        s.created.push(spec.name.clone());
        Ok(n)
    }

    async fn delete_network(&self, name: &str) -> Result<()> {
        let mut s = self.state();
        if !s.networks.contains_key(name) {
            return Err(Error::UnknownNetwork(name.to_string()));
        }
        let ports = s.ports_of(name).count();
        if ports > 0 {
            return Err(Error::NetworkInUse {
                name: name.into(),
                ports,
            });
        }
        s.networks.remove(name);
        Ok(())
    }

    async fn network(&self, name: &str) -> Result<Option<Network>> {
        let s = self.state();
        Ok(s.networks.get(name).map(|n| s.with_count(n)))
    }

    async fn networks(&self) -> Result<Vec<Network>> {
        let s = self.state();
        Ok(s.networks.values().map(|n| s.with_count(n)).collect())
    }

    /// All or nothing, like OVN's one-by-one creation with its undo.
    async fn create_ports(&self, reqs: &[PortRequest]) -> Result<Vec<LogicalPort>> {
        let mut s = self.state();
        let mut made: Vec<LogicalPort> = Vec::with_capacity(reqs.len());
        for req in reqs {
            match s.create_one(req) {
                Ok(p) => made.push(p),
                Err(e) => {
                    for p in &made {
                        s.ports.remove(&p.name);
                    }
                    return Err(e);
                }
            }
        }
        Ok(made)
    }

    async fn delete_port(&self, port: &PortRef, host: &str) -> Result<bool> {
        let name = port.id.as_deref().unwrap_or(&port.name);
        let mut s = self.state();
        match s.ports.get(name) {
            Some((_, owner)) if owner == host => {
                s.ports.remove(name);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn port(&self, port: &PortRef) -> Result<Option<LogicalPort>> {
        let name = port.id.as_deref().unwrap_or(&port.name);
        Ok(self.state().ports.get(name).map(|(p, _)| p.clone()))
    }

    async fn find_ports(&self, q: &PortQuery) -> Result<Vec<LogicalPort>> {
        match q {
            PortQuery::OwnedBy { host } => Ok(self
                .state()
                .ports
                .values()
                .filter(|(_, h)| h == host)
                .map(|(p, _)| p.clone())
                .collect()),
            // OVN direct binds no existing ports.
            PortQuery::ClaimedBy { .. } | PortQuery::Holding { .. } | PortQuery::WithMac { .. } => {
                Ok(vec![])
            }
        }
    }

    fn vlan_child_ports(&self) -> Option<&dyn VlanChildPorts> {
        Some(self)
    }
}

impl super::KnownAbilities for FakeOvn {
    const ABILITIES: &'static [super::Ability] = &[super::Ability::VlanChildPorts];
}

/// The VM's port only by its name (`[nested] parent_port`): the fake has no VM ports to
/// search by address.
#[async_trait]
impl NestedParents for FakeOvn {
    async fn parent_port(&self, q: &ParentQuery) -> Result<String> {
        q.id.clone().ok_or_else(|| {
            Error::InvalidInput(
                "the fake backend finds the VM's port by [nested] parent_port only".into(),
            )
        })
    }
}

#[async_trait]
impl VlanChildPorts for FakeOvn {
    async fn child_tags(&self, parent: &str) -> Result<std::collections::BTreeSet<u16>> {
        Ok(self
            .state()
            .children
            .get(parent)
            .cloned()
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::OwnerMark;

    fn spec(name: &str) -> NetworkSpec {
        NetworkSpec {
            name: name.into(),
            subnet: Some("10.9.0.0/24".parse().unwrap()),
            gateway: Some("10.9.0.1".parse().unwrap()),
            subnet6: Some("fd00:9::/64".parse().unwrap()),
            gateway6: Some("fd00:9::1".parse().unwrap()),
            existing: None,
            exclude_ips: vec!["10.9.0.3".into()],
        }
    }

    fn req(net: &Network, name: &str, ip: Option<&str>, mac: Option<&str>) -> PortRequest {
        PortRequest {
            role: Default::default(),
            name: name.into(),
            network: net.clone(),
            owner: OwnerMark {
                host: "h1".into(),
                attachment: name.into(),
            },
            ips: ip.map(|i| i.parse().unwrap()).into_iter().collect(),
            mac: mac.map(String::from),
            security_groups: vec![],
            pairs_on: None,
        }
    }

    #[tokio::test]
    async fn assigns_like_ovn_and_refuses_what_is_taken() {
        let b = FakeOvn::new();
        let n = b.create_network(&spec("n1")).await.unwrap();
        let p = b
            .create_ports(&[req(&n, "a", None, Some("02:42:ee:65:87:d7"))])
            .await
            .unwrap()
            .remove(0);
        assert_eq!(p.ips[0].to_string(), "10.9.0.2/24");
        assert_eq!(p.ips[1].to_string(), "fd00:9::42:eeff:fe65:87d7/64");
        assert_eq!(p.gateways.len(), 2);
        // .3 is excluded: the next one is .4.
        let q = b.create_ports(&[req(&n, "b", None, None)]).await.unwrap();
        assert_eq!(q[0].ips[0].to_string(), "10.9.0.4/24");
        let e = b
            .create_ports(&[req(&n, "c", Some("10.9.0.2"), None)])
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::AddressInUse { ref port, .. } if port == "a"),
            "{e}"
        );
        let e = b
            .create_ports(&[req(&n, "c", None, Some("02:42:ee:65:87:d7"))])
            .await
            .unwrap_err();
        assert!(matches!(e, Error::AddressInUse { .. }), "{e}");
        // All or nothing.
        assert!(b
            .create_ports(&[req(&n, "d", None, None), req(&n, "a", None, None)])
            .await
            .is_err());
        assert_eq!(b.port_names(), vec!["a", "b"]);
        assert!(matches!(
            b.delete_network("n1").await,
            Err(Error::NetworkInUse { ports: 2, .. })
        ));
        let r = |n: &str| PortRef {
            id: Some(n.into()),
            name: n.into(),
        };
        assert!(
            !b.delete_port(&r("a"), "h2").await.unwrap(),
            "another host's"
        );
        assert!(b.delete_port(&r("a"), "h1").await.unwrap());
        assert!(b.delete_port(&r("b"), "h1").await.unwrap());
        assert!(!b.delete_port(&r("b"), "h1").await.unwrap());
        b.delete_network("n1").await.unwrap();
        assert!(b.network_names().is_empty());
    }
}
