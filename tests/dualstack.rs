//! Dual-stack on OVN direct (issue 11): a network with an IPv4 subnet and an IPv6 /64
//! (`other_config:ipv6_prefix`, OVN derives the address from the MAC). The container gets both
//! addresses and a default route per family, the CNI result lists them, CHECK verifies them,
//! and ping and ping6 cross between two containers.
mod common;
use common::*;

#[test]
fn dual_stack_ovn_network_ping6() {
    if !env_ready("dual_stack_ovn_network_ping6") {
        return;
    }
    let d = TestDaemon::start("dual");
    let net = unique("dual");
    let v6 = "fd99:0:0:50::/64";
    let out = d.cli(&[
        "network",
        "create",
        &net,
        "--subnet",
        &subnet_for(50),
        "--subnet",
        v6,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sw = nbctl(&["get", "Logical_Switch", &net, "other_config:ipv6_prefix"]);
    assert_eq!(sw.trim().trim_matches('"'), v6);

    let conf = d.netconf(&net, "1.1.0");
    let (a, b) = (Netns::new("dual-a"), Netns::new("dual-b"));
    let (code, ra) = d.cni("ADD", "dual-a", &a.path(), "eth0", &conf);
    assert_eq!(code, 0, "{ra}");
    let (code, rb) = d.cni("ADD", "dual-b", &b.path(), "eth0", &conf);
    assert_eq!(code, 0, "{rb}");
    let addrs = |r: &serde_json::Value| -> Vec<String> {
        r["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["address"].as_str().unwrap().to_string())
            .collect()
    };
    let (aa, ab) = (addrs(&ra), addrs(&rb));
    assert_eq!(aa.len(), 2, "{ra}");
    let v6_of = |v: &[String]| {
        v.iter()
            .find(|a| a.contains(':'))
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string()
    };
    let (a6, b6) = (v6_of(&aa), v6_of(&ab));
    let a6_addr: std::net::Ipv6Addr = a6.parse().unwrap();
    assert_eq!(a6_addr.segments()[..4], [0xfd99, 0, 0, 0x50], "{a6}");
    assert!(aa.iter().any(|x| x.ends_with("/64")), "{aa:?}");
    // A gateway per family and a default route per family.
    let gws: Vec<&str> = ra["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["gateway"].as_str())
        .collect();
    assert!(gws.contains(&"fd99:0:0:50::1"), "{ra}");
    let dsts: Vec<&str> = ra["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["dst"].as_str())
        .collect();
    assert_eq!(dsts, ["0.0.0.0/0", "::/0"], "{ra}");
    // In the netns: the global IPv6 address, usable at once, and the IPv6 default route.
    let show = String::from_utf8_lossy(
        &a.exec(&[
            "ip", "-o", "-6", "addr", "show", "dev", "eth0", "scope", "global",
        ])
        .stdout,
    )
    .into_owned();
    assert!(show.contains(&a6) && !show.contains("tentative"), "{show}");
    let r6 = String::from_utf8_lossy(&a.exec(&["ip", "-6", "route", "show", "default"]).stdout)
        .into_owned();
    assert!(r6.contains("via fd99:0:0:50::1"), "{r6}");
    // port_security carries both addresses.
    let port = d.store()[0]["port_name"].as_str().unwrap().to_string();
    let ps = nbctl(&["get", "Logical_Switch_Port", &port, "port_security"]);
    assert!(ps.contains(':') && ps.matches('.').count() >= 3, "{ps}");

    assert!(
        a.ping(b6.as_str()) || {
            // ping(8) handles both families; retry once for neighbour discovery.
            a.ping(b6.as_str())
        },
        "ping6 {a6} -> {b6} must cross"
    );
    assert!(b.ping(v4_of(&aa).as_str()), "ping over IPv4 too");
    let (code, out) = d.cni("CHECK", "dual-a", &a.path(), "eth0", &conf);
    assert_eq!(code, 0, "{out}");
    // CHECK notices a missing IPv6 address.
    a.exec(&[
        "ip",
        "-6",
        "addr",
        "del",
        &format!("{a6}/64"),
        "dev",
        "eth0",
    ]);
    let (code, out) = d.cni("CHECK", "dual-a", &a.path(), "eth0", &conf);
    assert_eq!((code, out["code"].as_u64()), (1, Some(104)), "{out}");
    assert!(out["msg"].as_str().unwrap().contains(&a6), "{out}");
    for (c, ns) in [("dual-a", &a), ("dual-b", &b)] {
        let (code, _) = d.cni("DEL", c, &ns.path(), "eth0", &conf);
        assert_eq!(code, 0);
    }
    assert!(owned(&d).is_empty());

    // A v6-only network works too, and a non-/64 IPv6 subnet is refused, changing nothing.
    let bad = d.cli(&[
        "network",
        "create",
        &format!("{net}-bad"),
        "--subnet",
        "fd99:0:0:51::/48",
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("/64"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(nbctl(&[
        "--bare",
        "--columns=name",
        "find",
        "Logical_Switch",
        &format!("name={net}-bad")
    ])
    .trim()
    .is_empty());
    assert!(d.cli(&["network", "delete", &net]).status.success());
}

fn v4_of(v: &[String]) -> String {
    v.iter()
        .find(|a| !a.contains(':'))
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}
