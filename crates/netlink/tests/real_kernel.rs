//! Against the real kernel, in throwaway network namespaces. Needs root; skips with a printed
//! reason otherwise (fails under COURIER_REQUIRE_ENV=1).
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use courier_netlink::*;

fn ready(test: &str) -> bool {
    let ip = ["/usr/sbin/ip", "/sbin/ip", "/bin/ip"]
        .iter()
        .any(|p| Path::new(p).exists());
    let check = courier_testenv::require_root("network namespaces").and_then(|()| {
        ip.then_some(())
            .ok_or_else(|| "iproute2's ip is needed to create test namespaces".to_string())
    });
    match check {
        Ok(()) => true,
        Err(reason) => {
            courier_testenv::skip(test, &reason);
            false
        }
    }
}

/// A netns that is deleted on drop, even when the test fails.
struct Ns(String);
impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("nlt-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        assert!(Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success());
        Ns(name)
    }
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.0))
    }
    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut a = vec!["netns", "exec", &self.0];
        a.extend_from_slice(args);
        Command::new("ip").args(&a).output().unwrap()
    }
}
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Deletes a host link on drop.
struct HostLink(String);
impl Drop for HostLink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

fn name(tag: &str) -> String {
    format!("nl{tag}{}", std::process::id() % 100000)
}

#[tokio::test]
async fn veth_into_netns_with_checksum_off_configured_and_read_back() {
    if !ready("veth_into_netns_with_checksum_off_configured_and_read_back") {
        return;
    }
    let ns = Ns::new("a");
    let host = name("h");
    let _guard = HostLink(host.clone());
    let nl = Netlink::host().unwrap();
    let f = std::fs::File::open(ns.path()).unwrap();
    let mac = [0x0a, 0x58, 0x0a, 0x55, 0x00, 0x07];
    nl.create_veth(&VethSpec {
        host_name: host.clone(),
        peer_name: "eth0".into(),
        peer_mac: Some(mac),
        mtu: Some(1400),
        peer_netns_fd: Some(f.as_raw_fd()),
    })
    .await
    .unwrap();
    let h = nl.link(&host).await.unwrap().expect("host end exists");
    assert_eq!(h.mtu, Some(1400));
    assert_eq!(h.kind.as_deref(), Some("veth"));

    set_tx_checksum(&host, false).await.unwrap();
    set_tx_checksum_in_netns(&ns.path(), "eth0", false)
        .await
        .unwrap();
    assert!(!tx_checksum(&host).await.unwrap());
    assert!(!tx_checksum_in_netns(&ns.path(), "eth0").await.unwrap());
    let k = ns.run(&["ethtool", "-k", "eth0"]);
    assert!(
        String::from_utf8_lossy(&k.stdout).contains("tx-checksumming: off"),
        "{}",
        String::from_utf8_lossy(&k.stdout)
    );
    set_tx_checksum(&host, true).await.unwrap();
    assert!(tx_checksum(&host).await.unwrap());
    set_tx_checksum(&host, false).await.unwrap();

    nl.set_up(&host).await.unwrap();
    let inside = Netlink::in_netns(&ns.path()).await.unwrap();
    inside
        .configure(&IfaceConfig {
            current_name: "eth0".into(),
            new_name: "eth0".into(),
            mac: None,
            mtu: None,
            addresses: vec![
                "10.55.0.7/24".parse().unwrap(),
                "fd55::7/64".parse().unwrap(),
            ],
            gateways: vec!["10.55.0.1".parse().unwrap(), "fd55::1".parse().unwrap()],
            routes: vec![(
                "192.168.55.0/24".parse().unwrap(),
                "10.55.0.254".parse().unwrap(),
            )],
        })
        .await
        .unwrap();
    let l = inside.link("eth0").await.unwrap().expect("eth0 in netns");
    assert_eq!(l.mac, Some(mac));
    assert!(l.up);
    let addrs = inside.addresses("eth0").await.unwrap();
    assert!(
        addrs.contains(&"10.55.0.7/24".parse::<ipnet::IpNet>().unwrap()),
        "{addrs:?}"
    );
    assert_eq!(
        addrs.iter().filter(|a| a.addr().is_ipv4()).count(),
        1,
        "{addrs:?}"
    );
    assert_eq!(
        inside.default_gateways().await.unwrap(),
        vec![
            "10.55.0.1".parse::<std::net::IpAddr>().unwrap(),
            "fd55::1".parse().unwrap()
        ]
    );
    let r = ns.run(&["ip", "-o", "route", "show", "default"]);
    assert!(String::from_utf8_lossy(&r.stdout).contains("via 10.55.0.1 dev eth0"));
    let r = ns.run(&["ip", "-o", "route", "show", "192.168.55.0/24"]);
    assert!(String::from_utf8_lossy(&r.stdout).contains("via 10.55.0.254 dev eth0"));
    // The IPv6 address is usable at once: added with NODAD, never "tentative".
    let a6 = ns.run(&[
        "ip", "-o", "-6", "addr", "show", "dev", "eth0", "scope", "global",
    ]);
    let a6 = String::from_utf8_lossy(&a6.stdout).into_owned();
    assert!(a6.contains("fd55::7/64"), "{a6}");
    assert!(!a6.contains("tentative"), "{a6}");
    let r6 = ns.run(&["ip", "-o", "-6", "route", "show", "default"]);
    assert!(String::from_utf8_lossy(&r6.stdout).contains("via fd55::1 dev eth0"));

    // Listing by prefix sees the host end; deleting it removes both ends.
    assert!(nl
        .links_with_prefix(&host)
        .await
        .unwrap()
        .iter()
        .any(|l| l.name == host));
    assert!(nl.delete_link(&host).await.unwrap());
    assert!(
        !nl.delete_link(&host).await.unwrap(),
        "second delete reports absence"
    );
    assert!(
        inside.link("eth0").await.unwrap().is_none(),
        "peer went with the host end"
    );
}

#[tokio::test]
async fn rename_after_move_and_ping_between_namespaces() {
    if !ready("rename_after_move_and_ping_between_namespaces") {
        return;
    }
    let a = Ns::new("pa");
    let b = Ns::new("pb");
    let (x, y) = (name("x"), name("y"));
    let _g = (HostLink(x.clone()), HostLink(y.clone()));
    let nl = Netlink::host().unwrap();
    nl.create_veth(&VethSpec {
        host_name: x.clone(),
        peer_name: y.clone(),
        peer_mac: None,
        mtu: None,
        peer_netns_fd: None,
    })
    .await
    .unwrap();
    nl.move_to_netns(&x, &a.path()).await.unwrap();
    nl.move_to_netns(&y, &b.path()).await.unwrap();
    for (ns, old, ip) in [(&a, &x, "10.56.0.1/24"), (&b, &y, "10.56.0.2/24")] {
        let inside = Netlink::in_netns(&ns.path()).await.unwrap();
        inside
            .configure(&IfaceConfig {
                current_name: old.clone(),
                new_name: "net0".into(),
                mac: None,
                mtu: Some(1450),
                addresses: vec![ip.parse().unwrap()],
                gateways: vec![],
                routes: vec![],
            })
            .await
            .unwrap();
        assert_eq!(inside.link("net0").await.unwrap().unwrap().mtu, Some(1450));
        assert!(inside.link(old).await.unwrap().is_none());
    }
    let ping = a.run(&["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.56.0.2"]);
    assert!(
        ping.status.success(),
        "packets must cross: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
}

#[tokio::test]
async fn bad_input_names_the_thing_and_creates_nothing() {
    if !ready("bad_input_names_the_thing_and_creates_nothing") {
        return;
    }
    let nl = Netlink::host().unwrap();
    let missing = name("missing");
    let e = nl
        .move_to_netns(&missing, Path::new("/var/run/netns/does-not-exist"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("does-not-exist"), "{e}");
    let ns = Ns::new("bad");
    let e = nl.move_to_netns(&missing, &ns.path()).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    assert!(e.to_string().contains(&missing), "{e}");
    assert!(matches!(
        Netlink::in_netns(Path::new("/var/run/netns/nope-nope")).await,
        Err(Error::NotFound { .. })
    ));

    let dup = name("dup");
    let _g = HostLink(dup.clone());
    let spec = VethSpec {
        host_name: dup.clone(),
        peer_name: name("dupp"),
        peer_mac: None,
        mtu: None,
        peer_netns_fd: None,
    };
    nl.create_veth(&spec).await.unwrap();
    let before = nl.links_with_prefix("nl").await.unwrap().len();
    let e = nl.create_veth(&spec).await.unwrap_err();
    assert!(
        e.to_string().contains(&dup) && e.to_string().contains("exists"),
        "{e}"
    );
    assert_eq!(
        nl.links_with_prefix("nl").await.unwrap().len(),
        before,
        "nothing created"
    );
    let e = nl
        .create_veth(&VethSpec {
            host_name: "x".repeat(16),
            ..spec.clone()
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("15 characters"), "{e}");
    assert!(matches!(
        tx_checksum(&missing).await,
        Err(Error::NotFound { .. })
    ));
}

/// The links on a master, wherever they are: a macvlan born in another netns on master `mst`
/// (in netns M) is found from that netns by IFLA_LINK + IFLA_LINK_NETNSID (compared with the
/// id that netns gives M, RTM_GETNSID), and a macvlan there on a local device that has the
/// same ifindex as `mst` is not. (802.1Q links are the same to the kernel: this one has no
/// 8021q; the guest test covers VLANs.) Everything is in throwaway netns.
#[tokio::test]
async fn links_on_a_master_across_namespaces() {
    if !ready("links_on_a_master_across_namespaces") {
        return;
    }
    let m = Ns::new("lm");
    let c = Ns::new("lc");
    let d = Ns::new("ld");
    let ok = |o: std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    ok(m.run(&[
        "ip", "link", "add", "mst", "type", "veth", "peer", "name", "mstp",
    ]));
    ok(m.run(&["ip", "link", "set", "mst", "up"]));
    let in_m = Netlink::in_netns(&m.path()).await.unwrap();
    let mst = in_m.link("mst").await.unwrap().unwrap().index;
    // In C, a device with the master's ifindex, and a macvlan on it (its lower is local).
    let idx = mst.to_string();
    ok(c.run(&[
        "ip", "link", "add", "loc", "index", &idx, "type", "veth", "peer", "name", "locp",
    ]));
    ok(c.run(&[
        "ip", "link", "add", "onloc", "link", "loc", "type", "macvlan",
    ]));
    let c_file = std::fs::File::open(c.path()).unwrap();
    in_m.create_sub_link(
        "mst",
        &SubLinkSpec {
            name: "up0".into(),
            master: 0,
            kind: SubKind::MacVlan,
            mac: None,
            mtu: None,
            netns_fd: Some(c_file.as_raw_fd()),
        },
    )
    .await
    .unwrap();
    // And one on the master in M itself.
    ok(m.run(&[
        "ip", "link", "add", "here0", "link", "mst", "type", "macvlan",
    ]));
    ok(c.run(&["ip", "link", "set", "up0", "name", "renamed0"]));

    let m_file = std::fs::File::open(m.path()).unwrap();
    let in_c = Netlink::in_netns(&c.path()).await.unwrap();
    let found = in_c.links_on(mst, Some(&m_file)).await.unwrap();
    let names: Vec<&str> = found.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["renamed0"], "{found:?}");
    assert_eq!(found[0].kind.as_deref(), Some("macvlan"));
    assert!(found[0].link_netnsid.is_some());
    assert_eq!(found[0].vlan_id, None);
    // From C, the links on its own `loc` (same ifindex) are the local ones: the macvlan, and
    // loc's veth peer (a veth names its peer in IFLA_LINK: callers look at the kind).
    let local = in_c.links_on(mst, None).await.unwrap();
    let names: Vec<&str> = local.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["locp", "onloc"], "{local:?}");
    // In M: the macvlan born there (and mst's peer); in D (nothing linked to M): none, and
    // no id for M.
    let here = in_m.links_on(mst, None).await.unwrap();
    let names: Vec<&str> = here.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["mstp", "here0"], "{here:?}");
    let in_d = Netlink::in_netns(&d.path()).await.unwrap();
    assert!(in_d.links_on(mst, Some(&m_file)).await.unwrap().is_empty());
    assert_eq!(in_d.nsid_of(&m_file).await.unwrap(), None);
    assert!(in_c.nsid_of(&m_file).await.unwrap().is_some());
    // Deleted by its index; a second time it is gone.
    assert!(in_c
        .delete_link_index(found[0].index, "renamed0")
        .await
        .unwrap());
    assert!(!in_c
        .delete_link_index(found[0].index, "renamed0")
        .await
        .unwrap());
    assert!(in_c.links_on(mst, Some(&m_file)).await.unwrap().is_empty());
}
