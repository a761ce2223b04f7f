//! Every rtnetlink message Courier sends, built as a value by a pure function.
//! Execution is elsewhere (`Netlink::execute`); these are unit-tested as bytes without root.

use std::net::IpAddr;
use std::os::fd::RawFd;

use ipnet::IpNet;
use netlink_packet_core::{NetlinkMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, IpVlanMode, LinkAttribute, LinkExtentMask, LinkVfInfo,
    MacVlanMode, VfInfo, VfInfoLinkState, VfInfoMac, VfInfoSpoofCheck, VfInfoTrust, VfInfoVlan,
    VfLinkState,
};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::{
    AddressMessageBuilder, LinkIpVlan, LinkMacVlan, LinkMessageBuilder, LinkUnspec, LinkVeth,
    LinkVlan, RouteMessageBuilder,
};

/// A request: the message and its netlink header flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub message: RouteNetlinkMessage,
    pub flags: u16,
}

const CREATE: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
const CHANGE: u16 = NLM_F_REQUEST | NLM_F_ACK;

impl Request {
    pub fn netlink(&self) -> NetlinkMessage<RouteNetlinkMessage> {
        let mut nl = NetlinkMessage::from(self.message.clone());
        nl.header.flags = self.flags;
        nl
    }

    /// Wire bytes with the given sequence number (port id 0), for tests and debugging.
    pub fn to_bytes(&self, seq: u32) -> Vec<u8> {
        let mut nl = self.netlink();
        nl.header.sequence_number = seq;
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        buf
    }
}

/// What a veth pair should look like when created.
#[derive(Debug, Clone, PartialEq)]
pub struct VethSpec {
    pub host_name: String,
    pub peer_name: String,
    pub peer_mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    /// Create the peer directly inside the netns open at this fd. Much cheaper than creating it
    /// in the host netns and moving it (a netns move costs ~20 ms of RCU synchronisation here).
    pub peer_netns_fd: Option<RawFd>,
}

/// RTM_NEWLINK veth `host_name` with peer `peer_name` (MAC, MTU on the peer too).
pub fn veth(spec: &VethSpec) -> Request {
    let mut peer = LinkMessageBuilder::<LinkUnspec>::new().name(spec.peer_name.clone());
    if let Some(mac) = spec.peer_mac {
        peer = peer.address(mac.to_vec());
    }
    if let Some(mtu) = spec.mtu {
        peer = peer.mtu(mtu);
    }
    if let Some(fd) = spec.peer_netns_fd {
        peer = peer.setns_by_fd(fd);
    }
    let mut b = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(spec.host_name.clone())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
    if let Some(mtu) = spec.mtu {
        b = b.mtu(mtu);
    }
    Request {
        message: RouteNetlinkMessage::NewLink(b.build()),
        flags: CREATE,
    }
}

/// A link on top of a master interface (the VM's NIC, for containers nested in a VM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubKind {
    /// 802.1Q sub-interface with this VLAN id (1..=4094).
    Vlan(u16),
    /// macvlan in bridge mode: its own MAC, frames to and from the master's wire.
    MacVlan,
    /// ipvlan in L2 mode: the master's MAC, told apart by IP.
    IpVlan,
    /// macvlan in passthru mode: the master's MAC, every frame of the master (one per master);
    /// a pooled edge's container interface on its pre-plugged veth.
    MacVlanPassthru,
}

/// What a sub-interface should look like when created.
#[derive(Debug, Clone, PartialEq)]
pub struct SubLinkSpec {
    pub name: String,
    /// ifindex of the master in the netns the request is sent in.
    pub master: u32,
    pub kind: SubKind,
    /// Its MAC (VLAN, macvlan); ipvlan always has the master's.
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    /// Create it directly inside the netns open at this fd (the container's), as with veth
    /// peers: no move afterwards.
    pub netns_fd: Option<RawFd>,
}

/// RTM_NEWLINK of a VLAN, macvlan or ipvlan link on `spec.master`.
pub fn sub_link(spec: &SubLinkSpec) -> Request {
    fn finish<T>(
        mut b: LinkMessageBuilder<T>,
        spec: &SubLinkSpec,
    ) -> netlink_packet_route::link::LinkMessage {
        if let Some(mac) = spec.mac {
            b = b.address(mac.to_vec());
        }
        if let Some(mtu) = spec.mtu {
            b = b.mtu(mtu);
        }
        if let Some(fd) = spec.netns_fd {
            b = b.setns_by_fd(fd);
        }
        b.build()
    }
    let m = match spec.kind {
        SubKind::Vlan(id) => finish(LinkVlan::new(&spec.name, spec.master, id), spec),
        SubKind::MacVlan => finish(
            LinkMacVlan::new(&spec.name, spec.master, MacVlanMode::Bridge),
            spec,
        ),
        SubKind::MacVlanPassthru => finish(
            LinkMacVlan::new(&spec.name, spec.master, MacVlanMode::Passthrough),
            spec,
        ),
        SubKind::IpVlan => finish(
            LinkIpVlan::new(&spec.name, spec.master, IpVlanMode::L2),
            spec,
        ),
    };
    Request {
        message: RouteNetlinkMessage::NewLink(m),
        flags: CREATE,
    }
}

/// RTM_SETLINK: bring link `index` up.
pub fn set_up(index: u32) -> Request {
    Request {
        message: RouteNetlinkMessage::SetLink(LinkUnspec::new_with_index(index).up().build()),
        flags: CHANGE,
    }
}

/// RTM_SETLINK: move link `index` into the netns open at `fd`.
pub fn set_netns(index: u32, fd: RawFd) -> Request {
    Request {
        message: RouteNetlinkMessage::SetLink(
            LinkUnspec::new_with_index(index).setns_by_fd(fd).build(),
        ),
        flags: CHANGE,
    }
}

/// RTM_SETLINK: rename (the link must be down), optionally set MAC and MTU, and bring it up —
/// one message; the kernel renames before it changes flags.
pub fn rename_up(index: u32, new_name: &str, mac: Option<[u8; 6]>, mtu: Option<u32>) -> Request {
    let mut b = LinkUnspec::new_with_index(index).name(new_name.to_string());
    if let Some(mac) = mac {
        b = b.address(mac.to_vec());
    }
    if let Some(mtu) = mtu {
        b = b.mtu(mtu);
    }
    Request {
        message: RouteNetlinkMessage::SetLink(b.up().build()),
        flags: CHANGE,
    }
}

/// RTM_SETLINK: bring link `index` down.
pub fn set_down(index: u32) -> Request {
    Request {
        message: RouteNetlinkMessage::SetLink(LinkUnspec::new_with_index(index).down().build()),
        flags: CHANGE,
    }
}

/// RTM_SETLINK: set link `index`'s MAC (IFLA_ADDRESS), nothing else.
pub fn set_mac(index: u32, mac: [u8; 6]) -> Request {
    Request {
        message: RouteNetlinkMessage::SetLink(
            LinkUnspec::new_with_index(index)
                .address(mac.to_vec())
                .build(),
        ),
        flags: CHANGE,
    }
}

/// RTM_SETLINK: rename link `index` (it must be down), leaving it down.
pub fn rename(index: u32, new_name: &str) -> Request {
    Request {
        message: RouteNetlinkMessage::SetLink(
            LinkUnspec::new_with_index(index)
                .name(new_name.to_string())
                .build(),
        ),
        flags: CHANGE,
    }
}

/// RTM_SETLINK: set the interface alias (IFLA_IFALIAS) — Courier's ownership mark on links.
pub fn set_alias(index: u32, alias: &str) -> Request {
    let mut m = LinkUnspec::new_with_index(index).build();
    m.attributes.push(LinkAttribute::IfAlias(alias.to_string()));
    Request {
        message: RouteNetlinkMessage::SetLink(m),
        flags: CHANGE,
    }
}

/// RTM_GETNSID: the id this netns (the socket's) gives the netns open at `fd` — what its
/// links' IFLA_LINK_NETNSID says when their lower device is there. The kernel answers with
/// RTM_NEWNSID and NETNSA_NSID (-1: none assigned).
pub fn get_nsid(fd: RawFd) -> Request {
    let mut m = netlink_packet_route::nsid::NsidMessage::default();
    m.attributes
        .push(netlink_packet_route::nsid::NsidAttribute::Fd(fd as u32));
    Request {
        message: RouteNetlinkMessage::GetNsId(m),
        flags: NLM_F_REQUEST,
    }
}

/// RTM_NEWADDR on link `index`. An IPv6 address is added with IFA_F_NODAD: the backend (the
/// IPAM) already made it unique, and duplicate address detection would leave it "tentative"
/// (unusable) for a second or more after the attach returns.
pub fn address(index: u32, net: IpNet) -> Request {
    let message = match net {
        IpNet::V4(n) => AddressMessageBuilder::<std::net::Ipv4Addr>::new()
            .index(index)
            .address(n.addr(), n.prefix_len())
            .build(),
        IpNet::V6(n) => {
            let mut m = AddressMessageBuilder::<std::net::Ipv6Addr>::new()
                .index(index)
                .address(n.addr(), n.prefix_len())
                .build();
            m.header.flags |= AddressHeaderFlags::Nodad;
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
            m
        }
    };
    Request {
        message: RouteNetlinkMessage::NewAddress(message),
        flags: CREATE,
    }
}

/// RTM_NEWROUTE: default route (0.0.0.0/0 or ::/0) via `gw` out of link `index`.
pub fn default_route(index: u32, gw: IpAddr) -> Request {
    let message = match gw {
        IpAddr::V4(g) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .output_interface(index)
            .gateway(g)
            .build(),
        IpAddr::V6(g) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .output_interface(index)
            .gateway(g)
            .build(),
    };
    Request {
        message: RouteNetlinkMessage::NewRoute(message),
        flags: CREATE,
    }
}

/// RTM_NEWROUTE: `dst` via `gw` out of link `index`; None when the two are of different
/// address families.
pub fn route(index: u32, dst: IpNet, gw: IpAddr) -> Option<Request> {
    let message = match (dst, gw) {
        (IpNet::V4(d), IpAddr::V4(g)) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(d.addr(), d.prefix_len())
            .output_interface(index)
            .gateway(g)
            .build(),
        (IpNet::V6(d), IpAddr::V6(g)) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(d.addr(), d.prefix_len())
            .output_interface(index)
            .gateway(g)
            .build(),
        _ => return None,
    };
    Some(Request {
        message: RouteNetlinkMessage::NewRoute(message),
        flags: CREATE,
    })
}

/// A VF's link state as its PF's driver enforces it (IFLA_VF_LINK_STATE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VfLinkStateSetting {
    /// The VF's link follows the PF's.
    Auto,
    /// Up whatever the PF's link.
    Enable,
    /// Down: the VF neither sends nor receives.
    Disable,
}

impl From<VfLinkStateSetting> for VfLinkState {
    fn from(s: VfLinkStateSetting) -> VfLinkState {
        match s {
            VfLinkStateSetting::Auto => VfLinkState::Auto,
            VfLinkStateSetting::Enable => VfLinkState::Enable,
            VfLinkStateSetting::Disable => VfLinkState::Disable,
        }
    }
}

/// What to set on VF `vf` of a PF (`ip link set PF vf N mac … vlan … spoofchk … trust …
/// state …`); None leaves that setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VfSettings {
    /// The VF index (N of the PF's `virtfnN` in sysfs).
    pub vf: u32,
    pub mac: Option<[u8; 6]>,
    /// 802.1Q VLAN the PF tags the VF's frames with (qos 0); Some(0) = untagged.
    pub vlan: Option<u16>,
    pub spoof_check: Option<bool>,
    pub trust: Option<bool>,
    pub link_state: Option<VfLinkStateSetting>,
}

impl VfSettings {
    /// True when it sets nothing (the kernel answers such a request with EINVAL).
    pub fn is_empty(&self) -> bool {
        self.mac.is_none()
            && self.vlan.is_none()
            && self.spoof_check.is_none()
            && self.trust.is_none()
            && self.link_state.is_none()
    }
}

/// RTM_SETLINK on PF `pf_index` with IFLA_VFINFO_LIST { IFLA_VF_INFO { IFLA_VF_MAC,
/// IFLA_VF_VLAN, IFLA_VF_SPOOFCHK, IFLA_VF_TRUST, IFLA_VF_LINK_STATE } }: only the settings
/// given, each struct carrying the VF index. The kernel applies them in that order and stops
/// at the first the driver refuses (the earlier ones stay applied).
pub fn set_vf(pf_index: u32, s: &VfSettings) -> Request {
    let vf = s.vf;
    let mut info = Vec::new();
    if let Some(mac) = s.mac {
        info.push(VfInfo::Mac(VfInfoMac::new(vf, &mac)));
    }
    if let Some(vlan) = s.vlan {
        info.push(VfInfo::Vlan(VfInfoVlan::new(vf, vlan.into(), 0)));
    }
    if let Some(on) = s.spoof_check {
        info.push(VfInfo::SpoofCheck(VfInfoSpoofCheck::new(vf, on)));
    }
    if let Some(on) = s.trust {
        info.push(VfInfo::Trust(VfInfoTrust::new(vf, on)));
    }
    if let Some(state) = s.link_state {
        info.push(VfInfo::LinkState(VfInfoLinkState::new(vf, state.into())));
    }
    let mut m = LinkUnspec::new_with_index(pf_index).build();
    m.attributes
        .push(LinkAttribute::VfInfoList(vec![LinkVfInfo(info)]));
    Request {
        message: RouteNetlinkMessage::SetLink(m),
        flags: CHANGE,
    }
}

/// RTM_GETLINK of link `index` with IFLA_EXT_MASK RTEXT_FILTER_VF, so the kernel includes
/// IFLA_NUM_VF and IFLA_VFINFO_LIST, and RTEXT_FILTER_SKIP_STATS: without it every VF's
/// IFLA_VF_STATS comes too, and a PF with a few hundred VFs then answers with more than the
/// 64 KiB the socket reads at once (the connection would fail to decode the reply).
pub fn get_link_with_vfs(index: u32) -> Request {
    let mut m = LinkUnspec::new_with_index(index).build();
    m.attributes.push(LinkAttribute::ExtMask(vec![
        LinkExtentMask::Vf,
        LinkExtentMask::SkipStats,
    ]));
    Request {
        message: RouteNetlinkMessage::GetLink(m),
        flags: NLM_F_REQUEST,
    }
}

/// RTM_DELLINK of link `index`.
pub fn delete_link(index: u32) -> Request {
    Request {
        message: RouteNetlinkMessage::DelLink(LinkUnspec::new_with_index(index).build()),
        flags: CHANGE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkPayload, NLM_F_REQUEST};
    use netlink_packet_route::address::AddressAttribute;
    use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo};
    use netlink_packet_route::route::{RouteAddress, RouteAttribute};

    fn roundtrip(r: &Request) -> RouteNetlinkMessage {
        let bytes = r.to_bytes(7);
        let nl = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes).expect("parses back");
        assert_eq!(nl.header.sequence_number, 7);
        assert_eq!(nl.header.flags, r.flags);
        assert_eq!(nl.header.length as usize, bytes.len());
        match nl.payload {
            NetlinkPayload::InnerMessage(m) => m,
            other => panic!("{other:?}"),
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn veth_message() {
        let r = veth(&VethSpec {
            host_name: "cv0123456789ab".into(),
            peer_name: "cp0123456789ab".into(),
            peer_mac: Some([0x0a, 0x58, 0x0a, 0x09, 0, 5]),
            mtu: Some(1400),
            peer_netns_fd: Some(33),
        });
        assert_eq!(
            r.flags,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
        let bytes = r.to_bytes(1);
        // nlmsghdr: type RTM_NEWLINK (16), flags 0x0605.
        assert_eq!(&bytes[4..8], &[16, 0, 0x05, 0x06]);
        let RouteNetlinkMessage::NewLink(m) = roundtrip(&r) else {
            panic!()
        };
        assert!(m
            .attributes
            .contains(&LinkAttribute::IfName("cv0123456789ab".into())));
        assert!(m.attributes.contains(&LinkAttribute::Mtu(1400)));
        let info = m
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(i) => Some(i.clone()),
                _ => None,
            })
            .expect("IFLA_LINKINFO");
        assert!(info.contains(&LinkInfo::Kind(InfoKind::Veth)));
        let peer = info
            .iter()
            .find_map(|i| match i {
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) => Some(p.clone()),
                _ => None,
            })
            .expect("veth peer");
        assert!(peer
            .attributes
            .contains(&LinkAttribute::IfName("cp0123456789ab".into())));
        assert!(peer
            .attributes
            .contains(&LinkAttribute::Address(vec![0x0a, 0x58, 0x0a, 0x09, 0, 5])));
        // The peer's name appears in the bytes as a NUL-terminated string.
        assert!(hex(&bytes).contains(&format!("{}00", hex(b"cp0123456789ab"))));
    }

    /// IFLA_LINK (5) = master, IFLA_LINKINFO with the kind and its one mode/id attribute,
    /// IFLA_NET_NS_FD: checked on the wire, as the kernel reads them.
    #[test]
    fn sub_link_messages() {
        let spec = |kind| SubLinkSpec {
            name: "eth0".into(),
            master: 3,
            kind,
            mac: Some([0x0a, 0, 0, 0, 0, 7]),
            mtu: Some(1442),
            netns_fd: Some(41),
        };
        for (kind, info_kind, data) in [
            // IFLA_VLAN_ID (1), u16 100: len 6, type 1, 0x0064 (+2 bytes padding).
            (SubKind::Vlan(100), "vlan", "060001006400"),
            // IFLA_MACVLAN_MODE (1), u32 MACVLAN_MODE_BRIDGE = 4.
            (SubKind::MacVlan, "macvlan", "0800010004000000"),
            (SubKind::MacVlanPassthru, "macvlan", "0800010008000000"),
            // IFLA_IPVLAN_MODE (1), u16 IPVLAN_MODE_L2 = 0.
            (SubKind::IpVlan, "ipvlan", "060001000000"),
        ] {
            let r = sub_link(&spec(kind));
            assert_eq!(
                r.flags,
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
            );
            let bytes = hex(&r.to_bytes(1));
            assert_eq!(&bytes[8..12], "1000", "RTM_NEWLINK");
            assert!(bytes.contains("0800050003000000"), "IFLA_LINK = 3: {bytes}");
            assert!(bytes.contains("08001c0029000000"), "IFLA_NET_NS_FD = 41");
            assert!(bytes.contains("08000400a2050000"), "IFLA_MTU = 1442");
            let kind_hex: String = info_kind.bytes().map(|b| format!("{b:02x}")).collect();
            assert!(bytes.contains(&kind_hex), "IFLA_INFO_KIND {info_kind}");
            assert!(bytes.contains(data), "{info_kind} data {data} in {bytes}");
            let RouteNetlinkMessage::NewLink(m) = roundtrip(&r) else {
                panic!()
            };
            assert!(m.attributes.contains(&LinkAttribute::IfName("eth0".into())));
            assert!(m.attributes.contains(&LinkAttribute::Link(3)));
            assert!(m
                .attributes
                .contains(&LinkAttribute::Address(vec![0x0a, 0, 0, 0, 0, 7])));
        }
        // A VLAN id is 12 bits: the builder writes what it is given; the binding validates.
        let r = sub_link(&SubLinkSpec {
            mac: None,
            mtu: None,
            netns_fd: None,
            ..spec(SubKind::Vlan(4094))
        });
        assert!(hex(&r.to_bytes(1)).contains("06000100fe0f"));
    }

    #[test]
    fn setlink_messages() {
        let RouteNetlinkMessage::SetLink(m) = roundtrip(&set_up(5)) else {
            panic!()
        };
        assert_eq!(m.header.index, 5);
        assert!(m.header.flags.contains(LinkFlags::Up));
        assert!(m.header.change_mask.contains(LinkFlags::Up));

        let RouteNetlinkMessage::SetLink(m) = roundtrip(&set_netns(9, 42)) else {
            panic!()
        };
        assert_eq!(m.header.index, 9);
        assert!(m.attributes.contains(&LinkAttribute::NetNsFd(42)));
        // IFLA_NET_NS_FD (28) = 42, as a 4-byte NLA: len 8, type 28.
        assert!(hex(&set_netns(9, 42).to_bytes(0)).contains("08001c002a000000"));

        let RouteNetlinkMessage::SetLink(m) =
            roundtrip(&rename_up(3, "eth0", Some([2, 0, 0, 0, 0, 1]), Some(1450)))
        else {
            panic!()
        };
        assert_eq!(m.header.index, 3);
        assert!(m.attributes.contains(&LinkAttribute::IfName("eth0".into())));
        assert!(m
            .attributes
            .contains(&LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1])));
        assert!(m.attributes.contains(&LinkAttribute::Mtu(1450)));
        assert!(m.header.flags.contains(LinkFlags::Up));

        let RouteNetlinkMessage::DelLink(m) = roundtrip(&delete_link(12)) else {
            panic!()
        };
        assert_eq!(m.header.index, 12);
        assert_eq!(delete_link(12).to_bytes(0)[4], 17, "RTM_DELLINK");
    }

    /// A VF's netdev is taken down before it is renamed or moved: the Up flag in the change
    /// mask, cleared in the flags; the rename carries IFLA_IFNAME and leaves the flags alone.
    #[test]
    fn set_down_and_rename_messages() {
        let RouteNetlinkMessage::SetLink(m) = roundtrip(&set_down(9)) else {
            panic!()
        };
        assert_eq!(m.header.index, 9);
        assert!(!m.header.flags.contains(LinkFlags::Up));
        assert!(m.header.change_mask.contains(LinkFlags::Up));
        let RouteNetlinkMessage::SetLink(m) = roundtrip(&set_mac(9, [2, 0, 0, 0, 0, 7])) else {
            panic!()
        };
        assert!(m
            .attributes
            .contains(&LinkAttribute::Address(vec![2, 0, 0, 0, 0, 7])));
        assert!(!m.header.change_mask.contains(LinkFlags::Up));
        let r = rename(9, "eth5");
        assert_eq!(r.flags, NLM_F_REQUEST | NLM_F_ACK);
        let RouteNetlinkMessage::SetLink(m) = roundtrip(&r) else {
            panic!()
        };
        assert!(m.attributes.contains(&LinkAttribute::IfName("eth5".into())));
        assert!(!m.header.change_mask.contains(LinkFlags::Up));
    }

    /// The alias Courier marks its links with: IFLA_IFALIAS (20), a NUL-terminated string, on
    /// an RTM_SETLINK of that index (the kernel ignores IFLA_IFALIAS in RTM_NEWLINK).
    #[test]
    fn set_alias_message() {
        let r = set_alias(7, "courier:vm1:0123456789ab");
        assert_eq!(r.flags, NLM_F_REQUEST | NLM_F_ACK);
        let bytes = r.to_bytes(0);
        assert_eq!(bytes[4], 19, "RTM_SETLINK");
        // ifinfomsg: family 0, pad, type 0, index 7.
        assert_eq!(&bytes[16..24], &[0, 0, 0, 0, 7, 0, 0, 0]);
        // len 4 + 24 + 1 = 29 (0x1d), type 20 (0x14), the string and its NUL.
        let want = format!("1d001400{}00", hex(b"courier:vm1:0123456789ab"));
        assert!(hex(&bytes).contains(&want), "{}", hex(&bytes));
        let RouteNetlinkMessage::SetLink(m) = roundtrip(&r) else {
            panic!()
        };
        assert_eq!(m.header.index, 7);
        assert!(m
            .attributes
            .contains(&LinkAttribute::IfAlias("courier:vm1:0123456789ab".into())));
    }

    /// RTM_GETNSID (90) with rtgenmsg family 0 (+3 pad) and NETNSA_FD (3) = the fd, u32.
    #[test]
    fn get_nsid_message() {
        let r = get_nsid(12);
        assert_eq!(r.flags, NLM_F_REQUEST);
        let bytes = r.to_bytes(3);
        assert_eq!(bytes.len(), 16 + 4 + 8);
        assert_eq!(&bytes[4..8], &[90, 0, 1, 0], "RTM_GETNSID, NLM_F_REQUEST");
        assert_eq!(hex(&bytes[16..]), "00000000080003000c000000");
        let RouteNetlinkMessage::GetNsId(m) = roundtrip(&r) else {
            panic!()
        };
        assert_eq!(
            m.attributes,
            vec![netlink_packet_route::nsid::NsidAttribute::Fd(12)]
        );
    }

    fn vf_info(m: &netlink_packet_route::link::LinkMessage) -> Vec<VfInfo> {
        let lists: Vec<_> = m
            .attributes
            .iter()
            .filter_map(|a| match a {
                LinkAttribute::VfInfoList(l) => Some(l.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(lists.len(), 1, "one IFLA_VFINFO_LIST");
        assert_eq!(lists[0].len(), 1, "one IFLA_VF_INFO");
        lists[0][0].0.clone()
    }

    /// IFLA_VFINFO_LIST (22) { IFLA_VF_INFO (1) { IFLA_VF_MAC (1), IFLA_VF_VLAN (2),
    /// IFLA_VF_SPOOFCHK (4), IFLA_VF_LINK_STATE (5), IFLA_VF_TRUST (9) } }, each struct
    /// starting with the VF index, as `ip link set eth1 vf 1 mac … vlan 100 …` sends it.
    #[test]
    fn set_vf_message() {
        let s = VfSettings {
            vf: 1,
            mac: Some([0xfa, 0x16, 0x3e, 0x12, 0x34, 0x56]),
            vlan: Some(100),
            spoof_check: Some(true),
            trust: Some(false),
            link_state: Some(VfLinkStateSetting::Enable),
        };
        let r = set_vf(4, &s);
        assert_eq!(r.flags, NLM_F_REQUEST | NLM_F_ACK);
        let bytes = r.to_bytes(0);
        assert_eq!(&bytes[4..8], &[19, 0, 5, 0], "RTM_SETLINK, REQUEST|ACK");
        // ifinfomsg: family 0, pad, type 0, index 4, flags 0, change 0: nothing but the VFs.
        assert_eq!(
            &bytes[16..32],
            &[0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        let h = hex(&bytes);
        // IFLA_VF_MAC: len 4 + 4 + 32 = 40, vf 1, the MAC padded to MAX_ADDR_LEN (32).
        let mac = format!("2800010001000000fa163e123456{}", "00".repeat(26));
        // IFLA_VF_VLAN: len 16, vf 1, vlan 100, qos 0.
        let vlan = "10000200010000006400000000000000";
        // IFLA_VF_SPOOFCHK: vf 1, on. IFLA_VF_TRUST: vf 1, off. IFLA_VF_LINK_STATE: vf 1, 1.
        let spoof = "0c0004000100000001000000";
        let trust = "0c0009000100000000000000";
        let state = "0c0005000100000001000000";
        let inner = format!("{mac}{vlan}{spoof}{trust}{state}");
        // IFLA_VF_INFO (1) around them; IFLA_VFINFO_LIST (22) around that; the only attribute.
        let info = format!("{:02x}000100{inner}", 4 + inner.len() / 2);
        let list = format!("{:02x}001600{info}", 4 + info.len() / 2);
        assert_eq!(&h[64..], list, "{h}");

        let RouteNetlinkMessage::SetLink(m) = roundtrip(&r) else {
            panic!()
        };
        assert_eq!(m.header.index, 4);
        assert_eq!(
            vf_info(&m),
            vec![
                VfInfo::Mac(VfInfoMac::new(1, &[0xfa, 0x16, 0x3e, 0x12, 0x34, 0x56])),
                VfInfo::Vlan(VfInfoVlan::new(1, 100, 0)),
                VfInfo::SpoofCheck(VfInfoSpoofCheck::new(1, true)),
                VfInfo::Trust(VfInfoTrust::new(1, false)),
                VfInfo::LinkState(VfInfoLinkState::new(1, VfLinkState::Enable)),
            ]
        );
    }

    #[test]
    fn set_vf_sends_only_what_is_set() {
        let s = VfSettings {
            vf: 6,
            vlan: Some(0),
            ..Default::default()
        };
        assert!(!s.is_empty());
        assert!(VfSettings::default().is_empty());
        let r = set_vf(9, &s);
        let RouteNetlinkMessage::SetLink(m) = roundtrip(&r) else {
            panic!()
        };
        assert_eq!(m.attributes.len(), 1);
        assert_eq!(vf_info(&m), vec![VfInfo::Vlan(VfInfoVlan::new(6, 0, 0))]);
        // vlan 0 (untagged) is still sent: vf 6, vlan 0, qos 0.
        assert!(hex(&r.to_bytes(0)).ends_with("10000200060000000000000000000000"));

        for (state, v) in [
            (VfLinkStateSetting::Auto, VfLinkState::Auto),
            (VfLinkStateSetting::Disable, VfLinkState::Disable),
        ] {
            let r = set_vf(
                9,
                &VfSettings {
                    vf: 0,
                    link_state: Some(state),
                    ..Default::default()
                },
            );
            let RouteNetlinkMessage::SetLink(m) = roundtrip(&r) else {
                panic!()
            };
            assert_eq!(
                vf_info(&m),
                vec![VfInfo::LinkState(VfInfoLinkState::new(0, v))]
            );
        }
    }

    /// RTM_GETLINK (18) of index 4, no DUMP, IFLA_EXT_MASK (29) = RTEXT_FILTER_VF (1) |
    /// RTEXT_FILTER_SKIP_STATS (8).
    #[test]
    fn get_link_with_vfs_message() {
        let r = get_link_with_vfs(4);
        assert_eq!(r.flags, NLM_F_REQUEST);
        let bytes = r.to_bytes(0);
        assert_eq!(&bytes[4..8], &[18, 0, 1, 0], "RTM_GETLINK, REQUEST");
        assert_eq!(bytes.len(), 16 + 16 + 8);
        assert_eq!(&bytes[20..24], &[4, 0, 0, 0]);
        assert_eq!(hex(&bytes[32..]), "08001d0009000000");
        let RouteNetlinkMessage::GetLink(m) = roundtrip(&r) else {
            panic!()
        };
        assert_eq!(m.header.index, 4);
        assert_eq!(
            m.attributes,
            vec![LinkAttribute::ExtMask(vec![
                LinkExtentMask::Vf,
                LinkExtentMask::SkipStats
            ])]
        );
    }

    #[test]
    fn address_message() {
        let r = address(4, "10.9.0.5/24".parse().unwrap());
        let bytes = r.to_bytes(0);
        assert_eq!(bytes[4], 20, "RTM_NEWADDR");
        // ifaddrmsg: family AF_INET (2), prefixlen 24, flags 0, scope 0, index 4.
        assert_eq!(&bytes[16..24], &[2, 24, 0, 0, 4, 0, 0, 0]);
        let RouteNetlinkMessage::NewAddress(m) = roundtrip(&r) else {
            panic!()
        };
        let ip: IpAddr = "10.9.0.5".parse().unwrap();
        assert!(m.attributes.contains(&AddressAttribute::Local(ip)));
        assert!(m.attributes.contains(&AddressAttribute::Address(ip)));
        // IFA_LOCAL (2) = 10.9.0.5
        assert!(hex(&bytes).contains("080002000a090005"));
        let r6 = address(4, "fd00::5/64".parse().unwrap());
        let b6 = r6.to_bytes(0);
        // ifaddrmsg: AF_INET6 (10), /64, flags IFA_F_NODAD (0x02).
        assert_eq!(b6[16..19], [10, 64, 2], "AF_INET6 /64 nodad");
        let RouteNetlinkMessage::NewAddress(m6) = roundtrip(&r6) else {
            panic!()
        };
        assert!(m6
            .attributes
            .contains(&AddressAttribute::Flags(AddressFlags::Nodad)));
        // The IPv4 message has no NODAD.
        assert_eq!(bytes[18], 0);
    }

    #[test]
    fn route_message() {
        assert!(route(
            4,
            "192.168.7.0/24".parse().unwrap(),
            "fd00::1".parse().unwrap()
        )
        .is_none());
        let r = route(
            4,
            "192.168.7.0/24".parse().unwrap(),
            "10.9.0.254".parse().unwrap(),
        )
        .unwrap();
        let bytes = r.to_bytes(0);
        assert_eq!(bytes[4], 24, "RTM_NEWROUTE");
        // rtmsg: family 2, dst_len 24
        assert_eq!(&bytes[16..18], &[2, 24]);
        let RouteNetlinkMessage::NewRoute(m) = roundtrip(&r) else {
            panic!()
        };
        assert!(m
            .attributes
            .contains(&RouteAttribute::Destination(RouteAddress::Inet(
                "192.168.7.0".parse().unwrap()
            ))));
        assert!(m
            .attributes
            .contains(&RouteAttribute::Gateway(RouteAddress::Inet(
                "10.9.0.254".parse().unwrap()
            ))));
    }

    #[test]
    fn default_route_message() {
        let r = default_route(4, "10.9.0.1".parse().unwrap());
        let bytes = r.to_bytes(0);
        assert_eq!(bytes[4], 24, "RTM_NEWROUTE");
        // rtmsg: family 2, dst_len 0 (default), src_len 0, tos 0, table MAIN (254), proto STATIC (4), scope UNIVERSE (0), type UNICAST (1)
        assert_eq!(&bytes[16..24], &[2, 0, 0, 0, 254, 4, 0, 1]);
        let RouteNetlinkMessage::NewRoute(m) = roundtrip(&r) else {
            panic!()
        };
        assert!(m
            .attributes
            .contains(&RouteAttribute::Gateway(RouteAddress::Inet(
                "10.9.0.1".parse().unwrap()
            ))));
        assert!(m.attributes.contains(&RouteAttribute::Oif(4)));
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Destination(_))));
    }
}
