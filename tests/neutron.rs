//! The Neutron backend against a real Neutron 29 (ML2/OVN on this host's OVN, so its ports are
//! bound by the real ovn-controller) and Keystone 30, both from scripts/neutron.sh.
mod common;
use std::time::Duration;

use common::proxy::{Mode, Proxy};
use common::*;
use serde_json::Value;

/// Creates Courier network `name` on Neutron with one IPv4 subnet; asserts it worked. The
/// guard removes it (and its ports) if the test fails before it does.
fn neutron_net(d: &TestDaemon, name: &str, subnet: &str) -> NeutronNetGuard {
    let out = d.cli(&[
        "network",
        "create",
        name,
        "--backend",
        "neutron",
        "--subnet",
        subnet,
    ]);
    assert!(
        out.status.success(),
        "network create {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    NeutronNetGuard(name.to_string())
}

fn addr(r: &Value, v6: bool) -> String {
    r["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap())
        .find(|a| a.contains(':') == v6)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// Two containers on a dual-stack Neutron network: Neutron ports ACTIVE with Courier's tags
/// and binding:host_id, ping, ping6 and TCP cross, CHECK passes, the network's MTU reaches the
/// interface; DEL deletes the ports; `network delete` removes the network and subnets.
#[test]
fn neutron_network_containers_talk_and_leave_nothing() {
    let Some(n) = NeutronEnv::get("neutron_network_containers_talk_and_leave_nothing") else {
        return;
    };
    let d = neutron_daemon("neu-talk", &n, &[]);
    let net = unique("neu-talk");
    let out = d.cli(&[
        "network",
        "create",
        &net,
        "--backend",
        "neutron",
        "--subnet",
        "10.212.0.0/24",
        "--subnet",
        "fd00:212::/64",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = String::from_utf8_lossy(&d.cli(&["network", "list"]).stdout).into_owned();
    assert!(
        list.lines()
            .any(|l| l.starts_with(&net) && l.contains("neutron")),
        "{list}"
    );
    let (_, nets) = n.api("GET", &format!("/networks?tags=courier:network:{net}"));
    let neutron_net = nets["networks"][0].clone();
    let net_id = neutron_net["id"]
        .as_str()
        .expect("tagged network")
        .to_string();
    let mtu = neutron_net["mtu"].as_u64().unwrap();

    let conf = d.netconf(&net, "1.1.0");
    let (a, b) = (Netns::new("neu-a"), Netns::new("neu-b"));
    let (code, ra) = d.cni("ADD", "neu-a", &a.path(), "eth0", &conf);
    assert_eq!(code, 0, "{ra}\n{}", d.log());
    let (code, rb) = d.cni("ADD", "neu-b", &b.path(), "eth0", &conf);
    assert_eq!(code, 0, "{rb}");
    assert_eq!(ra["ips"].as_array().unwrap().len(), 2, "{ra}");

    let ports = n.owned_ports(&d);
    assert_eq!(ports.len(), 2, "{ports:?}");
    for p in &ports {
        let tags: Vec<&str> = p["tags"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t.as_str())
            .collect();
        assert!(tags.contains(&"courier:owner"), "{p}");
        assert!(
            tags.iter().any(|t| t.starts_with("courier:attachment:")),
            "{p}"
        );
        assert_eq!(p["binding:host_id"], n.host_id.as_str(), "{p}");
        assert_eq!(p["device_owner"], "compute:courier", "{p}");
        assert_eq!(p["network_id"], net_id.as_str());
    }
    // The ports go ACTIVE (ovn-controller bound them through iface-id = port id).
    assert!(
        eventually(Duration::from_secs(15), || n
            .owned_ports(&d)
            .iter()
            .all(|p| p["status"] == "ACTIVE")),
        "ports not ACTIVE: {:?}",
        n.owned_ports(&d)
    );
    let link =
        String::from_utf8_lossy(&a.exec(&["ip", "-o", "link", "show", "eth0"]).stdout).into_owned();
    assert!(
        link.contains(&format!("mtu {mtu}")),
        "network MTU {mtu} on the interface: {link}"
    );

    assert!(a.ping(&addr(&rb, false)), "ping over the Neutron network");
    assert!(a.ping(&addr(&rb, true)), "ping6 over the Neutron network");
    let ((n_recv, h_recv), (n_sent, h_sent)) =
        tcp_transfer(&b, &a, &addr(&rb, false), 5201, 1 << 20);
    assert_eq!((n_recv, &h_recv), (n_sent, &h_sent), "TCP data intact");
    let (code, out) = d.cni("CHECK", "neu-a", &a.path(), "eth0", &conf);
    assert_eq!(code, 0, "{out}");

    for (c, ns) in [("neu-a", &a), ("neu-b", &b)] {
        let (code, out) = d.cni("DEL", c, &ns.path(), "eth0", &conf);
        assert_eq!(code, 0, "{out}");
    }
    for p in &ports {
        let (code, _) = n.api("GET", &format!("/ports/{}", p["id"].as_str().unwrap()));
        assert_eq!(code, 404, "port {} left after DEL", p["id"]);
    }
    assert!(owned(&d).is_empty(), "{:?}", owned(&d));
    let out = d.cli(&["network", "delete", &net]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(n.api("GET", &format!("/networks/{net_id}")).0, 404);
}

/// An existing Neutron network registered under a Courier name: usable, and `network delete`
/// removes only the registration (the network stays).
#[test]
fn registered_neutron_network_is_not_deleted() {
    let Some(n) = NeutronEnv::get("registered_neutron_network_is_not_deleted") else {
        return;
    };
    let d = neutron_daemon("neu-reg", &n, &[]);
    let own = unique("neu-own");
    let out = d.cli(&[
        "network",
        "create",
        &own,
        "--backend",
        "neutron",
        "--subnet",
        "10.213.0.0/24",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, nets) = n.api("GET", &format!("/networks?tags=courier:network:{own}"));
    let id = nets["networks"][0]["id"].as_str().unwrap().to_string();
    // Unregister by deleting? No: register the same Neutron network under a second name is refused.
    let alias = unique("neu-alias");
    let out = d.cli(&["network", "create", &alias, "--neutron-network", &id]);
    assert!(!out.status.success(), "a network registered twice");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already registered"));
    // A plain Neutron network (made outside Courier) registered by name.
    let ext = unique("neu-ext");
    let (code, _) = n.api("POST", "/networks"); // refused without a body: only to see the API answers
    assert!(code >= 400);
    let made = sh_ok(
        "curl",
        &[
            "-s",
            "-X",
            "POST",
            "-H",
            &format!("X-Auth-Token: {}", token_of(&n)),
            "-H",
            "Content-Type: application/json",
            "-d",
            &format!("{{\"network\": {{\"name\": \"{ext}\"}}}}"),
            &format!("{NEUTRON_URL}/networks"),
        ],
    );
    let ext_id = serde_json::from_str::<Value>(&made).unwrap()["network"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let reg = unique("neu-reg");
    let out = d.cli(&["network", "create", &reg, "--neutron-network", &ext]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let show: Value =
        serde_json::from_slice(&d.cli(&["network", "show", &reg, "--json"]).stdout).unwrap();
    assert_eq!(show["backend_id"], ext_id.as_str(), "{show}");
    assert_eq!(show["created_by_courier"], false);
    assert!(d.cli(&["network", "delete", &reg]).status.success());
    assert_eq!(
        n.api("GET", &format!("/networks/{ext_id}")).0,
        200,
        "a registered network survives delete"
    );
    let (_, v) = n.api("GET", &format!("/networks/{ext_id}"));
    assert!(
        !v["network"]["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t.as_str().unwrap_or("").starts_with("courier:")),
        "{v}"
    );
    n.api("DELETE", &format!("/networks/{ext_id}"));
    assert!(d.cli(&["network", "delete", &own]).status.success());
    assert_eq!(n.api("GET", &format!("/networks/{id}")).0, 404);
}

fn token_of(n: &NeutronEnv) -> String {
    n.token().to_string()
}

/// One daemon serves an OVN-direct and a Neutron network at once; with Neutron unreachable
/// (its API behind a proxy the test cuts), Neutron networks answer 11 and OVN-direct ones keep
/// working; when Neutron is back, attaches work again.
#[test]
fn neutron_down_leaves_ovn_direct_working() {
    let Some(n) = NeutronEnv::get("neutron_down_leaves_ovn_direct_working") else {
        return;
    };
    let proxy = Proxy::tcp("tcp:127.0.0.1:9696");
    let dir = tempfile::tempdir().unwrap();
    let clouds = dir.path().join("clouds.yaml");
    let text = std::fs::read_to_string(&n.clouds).unwrap().replace(
        "  courier-admin:\n",
        &format!(
            "  courier-admin:\n    network_endpoint_override: http://{}\n",
            proxy.remote.trim_start_matches("tcp:")
        ),
    );
    std::fs::write(&clouds, text).unwrap();
    std::fs::copy(
        "/etc/courier-test/secure.yaml",
        dir.path().join("secure.yaml"),
    )
    .unwrap();
    let clouds_s = clouds.display().to_string();
    let d = neutron_daemon("neu-down", &n, &[("OS_CLIENT_CONFIG_FILE", &clouds_s)]);
    let (ovn_net, neu_net) = (unique("neu-down-ovn"), unique("neu-down-neu"));
    d.create_network(&ovn_net, &subnet_for(60));
    let out = d.cli(&[
        "network",
        "create",
        &neu_net,
        "--backend",
        "neutron",
        "--subnet",
        "10.214.0.0/24",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (co, cn) = (d.netconf(&ovn_net, "1.1.0"), d.netconf(&neu_net, "1.1.0"));
    let (x, y) = (Netns::new("neu-down-x"), Netns::new("neu-down-y"));
    let (code, out) = d.cni("ADD", "x", &x.path(), "eth0", &cn);
    assert_eq!(code, 0, "{out}");

    proxy.set(Mode::Cut);
    let (code, out) = d.cni("ADD", "y", &y.path(), "eth0", &cn);
    assert_eq!(
        (code, out["code"].as_u64()),
        (1, Some(11)),
        "Neutron down: {out}"
    );
    // (Another container: "y"'s failed ADD may have left a record only Neutron can clear —
    // its retry below, with Neutron back, undoes it first.)
    let z = Netns::new("neu-down-z");
    let (code, out) = d.cni("ADD", "z", &z.path(), "eth0", &co);
    assert_eq!(code, 0, "OVN direct while Neutron is down: {out}");
    let (code, out) = d.cni("DEL", "z", &z.path(), "eth0", &co);
    assert_eq!(code, 0, "{out}");
    let (code, out) = d.cni("STATUS", "", "", "", &co);
    assert_eq!(code, 0, "STATUS of an OVN network with Neutron down: {out}");
    // A DEL of something never attached (runtimes repeat DELs) succeeds too.
    let (code, out) = d.cni("DEL", "never-attached", &z.path(), "eth0", &co);
    assert_eq!(code, 0, "DEL with Neutron down: {out}");
    let (code, out) = d.cni("STATUS", "", "", "", &cn);
    assert_eq!((code, out["code"].as_u64()), (1, Some(50)), "{out}");

    proxy.set(Mode::Forward);
    let (code, out) = d.cni("ADD", "y", &y.path(), "eth0", &cn);
    assert_eq!(code, 0, "Neutron back: {out}");
    for c in ["x", "y"] {
        let ns = if c == "x" { &x } else { &y };
        let (code, out) = d.cni("DEL", c, &ns.path(), "eth0", &cn);
        assert_eq!(code, 0, "{out}");
    }
    assert!(n.owned_ports(&d).is_empty());
    assert!(d.cli(&["network", "delete", &neu_net]).status.success());
    assert!(d.cli(&["network", "delete", &ovn_net]).status.success());
}

/// Bad input against Neutron changes nothing: an address in use (105), an unknown Neutron
/// network to register; and no secret reaches the log or `courier status`.
#[test]
fn neutron_bad_input_changes_nothing_and_no_secret_is_logged() {
    let Some(n) = NeutronEnv::get("neutron_bad_input_changes_nothing_and_no_secret_is_logged")
    else {
        return;
    };
    let d = neutron_daemon("neu-bad", &n, &[("COURIER_LOG", "debug")]);
    let net = unique("neu-bad");
    let _net_guard = neutron_net(&d, &net, "10.215.0.0/24");
    let conf = d.netconf(&net, "1.1.0");
    let (a, b) = (Netns::new("neu-bad-a"), Netns::new("neu-bad-b"));
    let (code, ra) = d.cni("ADD", "a", &a.path(), "eth0", &conf);
    assert_eq!(code, 0, "{ra}");
    let before = (n.owned_ports(&d).len(), owned(&d));
    let taken = addr(&ra, false);
    let (code, out) = cni_exec(
        "ADD",
        "b",
        &b.path(),
        "eth0",
        &conf,
        &[("CNI_ARGS", &format!("IP={taken}"))],
    );
    assert_eq!((code, out["code"].as_u64()), (1, Some(105)), "{out}");
    assert_eq!(
        (n.owned_ports(&d).len(), owned(&d)),
        before,
        "an address in use changed something"
    );
    assert!(!b.has_link("eth0"));
    let out = d.cli(&[
        "network",
        "create",
        &unique("neu-none"),
        "--neutron-network",
        "no-such-network-anywhere",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("no network") && err.contains("no-such-network-anywhere"),
        "{err}"
    );

    let status = String::from_utf8_lossy(&d.cli(&["status", "--json"]).stdout).into_owned();
    for secret in [ADMIN_PASSWORD, token_of(&n).as_str()] {
        assert!(!d.log().contains(secret), "a secret in the daemon log");
        assert!(!status.contains(secret), "a secret in courier status");
    }
    let (code, _) = d.cni("DEL", "a", &a.path(), "eth0", &conf);
    assert_eq!(code, 0);
    assert!(d.cli(&["network", "delete", &net]).status.success());
}

/// A requested IP and MAC (CNI_ARGS IP=, MAC=) on a Neutron network: the Neutron port has
/// them, so has the container's interface, and traffic crosses with them; the same MAC again
/// is 105 (in use) and changes nothing; DEL deletes the port.
#[test]
fn requested_ip_and_mac_reach_the_neutron_port() {
    let Some(n) = NeutronEnv::get("requested_ip_and_mac_reach_the_neutron_port") else {
        return;
    };
    let d = neutron_daemon("neu-mac", &n, &[]);
    let net = unique("neu-mac");
    let _net_guard = neutron_net(&d, &net, "10.219.0.0/24");
    let conf = d.netconf(&net, "1.1.0");
    let (a, b, c) = (
        Netns::new("neu-mac-a"),
        Netns::new("neu-mac-b"),
        Netns::new("neu-mac-c"),
    );
    let (mac, ip) = ("fa:16:3e:21:90:0a", "10.219.0.77");
    let (code, ra) = cni_exec(
        "ADD",
        "a",
        &a.path(),
        "eth0",
        &conf,
        &[("CNI_ARGS", &format!("IP={ip};MAC={mac}"))],
    );
    assert_eq!(code, 0, "{ra}\n{}", d.log());
    assert_eq!(addr(&ra, false), ip, "{ra}");
    assert_eq!(ra["interfaces"][1]["mac"], mac, "{ra}");
    let ports = n.owned_ports(&d);
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0]["mac_address"], mac, "{}", ports[0]);
    assert_eq!(ports[0]["fixed_ips"][0]["ip_address"], ip, "{}", ports[0]);
    let link =
        String::from_utf8_lossy(&a.exec(&["ip", "-o", "link", "show", "eth0"]).stdout).into_owned();
    assert!(link.contains(mac), "requested MAC on the interface: {link}");
    let (code, rb) = d.cni("ADD", "b", &b.path(), "eth0", &conf);
    assert_eq!(code, 0, "{rb}");
    assert!(b.ping(ip), "ping to the requested address");

    let before = (n.owned_ports(&d).len(), owned(&d));
    let (code, out) = cni_exec(
        "ADD",
        "c",
        &c.path(),
        "eth0",
        &conf,
        &[("CNI_ARGS", &format!("MAC={mac}"))],
    );
    assert_eq!((code, out["code"].as_u64()), (1, Some(105)), "{out}");
    let msg = out["msg"].as_str().unwrap_or_default();
    assert!(msg.contains("in use") || msg.contains(mac), "{out}");
    assert_eq!(
        (n.owned_ports(&d).len(), owned(&d)),
        before,
        "a MAC in use changed something"
    );
    assert!(!c.has_link("eth0"));

    let id = ports[0]["id"].as_str().unwrap().to_string();
    for (k, ns) in [("a", &a), ("b", &b)] {
        let (code, out) = d.cni("DEL", k, &ns.path(), "eth0", &conf);
        assert_eq!(code, 0, "{out}");
    }
    assert_eq!(
        n.api("GET", &format!("/ports/{id}")).0,
        404,
        "port left after DEL"
    );
    assert!(n.owned_ports(&d).is_empty());
    assert!(d.cli(&["network", "delete", &net]).status.success());
}

/// kill -9 of the daemon at every step of a Neutron attach and detach: after a restart nothing
/// is left in Neutron (no port with this host's tag), in OVS, the kernel or the store.
#[test]
fn neutron_kill9_at_every_step_leaks_nothing() {
    let Some(n) = NeutronEnv::get("neutron_kill9_at_every_step_leaks_nothing") else {
        return;
    };
    if !hooks_ready("neutron_kill9_at_every_step_leaks_nothing") {
        return;
    }
    let mut d = neutron_daemon("neu-crash", &n, &[]);
    let net = unique("neu-crash");
    let _net_guard = neutron_net(&d, &net, "10.216.0.0/24");
    let conf = d.netconf(&net, "1.1.0");
    let ns = Netns::new("neu-crash");
    let env = n.daemon_env();
    let with = |extra: Option<(&'static str, &'static str)>| {
        let mut v: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        v.extend(extra);
        v
    };
    let clean = |d: &TestDaemon| {
        eventually(Duration::from_secs(20), || {
            n.owned_ports(d).is_empty() && owned(d).is_empty()
        })
    };
    for step in ATTACH_STEPS {
        d.restart(&with(Some(("COURIER_CRASH_AT", step))));
        wait_backends(&d);
        let (code, out) = d.cni("ADD", "crashy", &ns.path(), "eth0", &conf);
        assert_ne!(
            code, 0,
            "{step}: ADD should fail when the daemon dies: {out}"
        );
        d.wait_exit(Duration::from_secs(20));
        d.restart(&with(None));
        assert!(
            clean(&d),
            "{step}: leaked after restart: neutron {:?} local {:?}\n{}",
            n.owned_ports(&d),
            owned(&d),
            d.log()
        );
        assert!(!ns.has_link("eth0"), "{step}: interface left in netns");
    }
    for step in DETACH_STEPS {
        d.restart(&with(None));
        wait_backends(&d);
        let (code, out) = d.cni("ADD", "crashy", &ns.path(), "eth0", &conf);
        assert_eq!(code, 0, "{out}");
        d.restart(&with(Some(("COURIER_CRASH_AT", step))));
        wait_backends(&d);
        let (code, _) = d.cni("DEL", "crashy", &ns.path(), "eth0", &conf);
        assert_ne!(code, 0, "{step}");
        d.wait_exit(Duration::from_secs(20));
        d.restart(&with(None));
        assert!(
            clean(&d),
            "{step}: leaked after restart: neutron {:?} local {:?}\n{}",
            n.owned_ports(&d),
            owned(&d),
            d.log()
        );
    }
    assert!(d.cli(&["network", "delete", &net]).status.success());
}

/// 20 ADDs and DELs at once on one Neutron network: each attachment is whole or absent, the
/// addresses are distinct, and afterwards no Neutron port, OVS port, link or record is left.
#[test]
fn neutron_concurrent_add_del_leaks_nothing() {
    let Some(n) = NeutronEnv::get("neutron_concurrent_add_del_leaks_nothing") else {
        return;
    };
    let d = neutron_daemon("neu-conc", &n, &[]);
    let net = unique("neu-conc");
    let _net_guard = neutron_net(&d, &net, "10.217.0.0/24");
    let conf = d.netconf(&net, "1.1.0");
    let nss: Vec<Netns> = (0..20).map(|i| Netns::new(&format!("nc{i}"))).collect();
    let results: Vec<(i32, Value)> = std::thread::scope(|s| {
        let hs: Vec<_> = nss
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let conf = conf.clone();
                let p = ns.path();
                s.spawn(move || d_cni(&conf, "ADD", &format!("c{i}"), &p))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips = std::collections::BTreeSet::new();
    for (i, (code, out)) in results.iter().enumerate() {
        assert_eq!(*code, 0, "ADD c{i}: {out}");
        assert!(ips.insert(addr(out, false)), "duplicate address {out}");
        assert!(nss[i].has_link("eth0"));
    }
    assert_eq!(n.owned_ports(&d).len(), 20);
    assert_eq!(d.store().len(), 20);
    let dels: Vec<(i32, Value)> = std::thread::scope(|s| {
        let hs: Vec<_> = nss
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let conf = conf.clone();
                let p = ns.path();
                s.spawn(move || d_cni(&conf, "DEL", &format!("c{i}"), &p))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (code, out)) in dels.iter().enumerate() {
        assert_eq!(*code, 0, "DEL c{i}: {out}");
    }
    assert!(n.owned_ports(&d).is_empty(), "{:?}", n.owned_ports(&d));
    assert!(owned(&d).is_empty(), "{:?}", owned(&d));
    assert!(d.cli(&["network", "delete", &net]).status.success());
}

fn d_cni(conf: &str, cmd: &str, container: &str, netns: &str) -> (i32, Value) {
    cni_exec(cmd, container, netns, "eth0", conf, &[])
}

/// An existing Neutron port bound by id (the Zun `--nets port=UUID` flow, CNI_ARGS PORT=ID):
/// the container gets its MAC and IP, the port is bound to this host while attached, and DEL
/// gives it back as it was without deleting it. A port bound elsewhere and an unknown port are
/// refused, changing nothing. The CLI may name the port alone (its network is found); a port
/// on a network Courier does not know is refused with how to register it, changing nothing.
#[test]
fn existing_port_is_bound_and_given_back() {
    let Some(n) = NeutronEnv::get("existing_port_is_bound_and_given_back") else {
        return;
    };
    let d = neutron_daemon("neu-exist", &n, &[]);
    let net = unique("neu-exist");
    let _net_guard = neutron_net(&d, &net, "10.218.0.0/24");
    let show: Value =
        serde_json::from_slice(&d.cli(&["network", "show", &net, "--json"]).stdout).unwrap();
    let net_id = show["backend_id"].as_str().unwrap().to_string();
    let mk = |name: &str, owner: &str| {
        let (code, v) = n.call(
            "POST",
            "/ports",
            Some(serde_json::json!({"port": {"network_id": net_id, "name": name, "device_owner": owner}})),
        );
        assert_eq!(code, 201, "{v}");
        v["port"].clone()
    };
    let user_port = mk(&unique("user-port"), "");
    let vm_port = mk(&unique("vm-port"), "compute:nova");
    let pid = user_port["id"].as_str().unwrap();
    let conf = d.netconf(&net, "1.1.0");
    let ns = Netns::new("neu-exist");

    // Bound elsewhere: refused, says where, nothing changes.
    let vm_id = vm_port["id"].as_str().unwrap();
    let (code, out) = cni_exec(
        "ADD",
        "c",
        &ns.path(),
        "eth0",
        &conf,
        &[("CNI_ARGS", &format!("PORT={vm_id}"))],
    );
    assert_ne!(code, 0);
    assert!(
        out["msg"].as_str().unwrap().contains("compute:nova"),
        "{out}"
    );
    assert_eq!(
        n.api("GET", &format!("/ports/{vm_id}")).1["port"]["device_owner"],
        "compute:nova"
    );
    let (code, out) = cni_exec(
        "ADD",
        "c",
        &ns.path(),
        "eth0",
        &conf,
        &[("CNI_ARGS", "PORT=00000000-0000-0000-0000-000000000000")],
    );
    assert_ne!(code, 0);
    assert!(out["msg"].as_str().unwrap().contains("no port"), "{out}");
    assert!(d.store().is_empty() && !ns.has_link("eth0"));

    let (code, r) = cni_exec(
        "ADD",
        "c",
        &ns.path(),
        "eth0",
        &conf,
        &[("CNI_ARGS", &format!("PORT={pid}"))],
    );
    assert_eq!(code, 0, "{r}\n{}", d.log());
    assert_eq!(r["interfaces"][1]["mac"], user_port["mac_address"], "{r}");
    assert_eq!(
        addr(&r, false),
        user_port["fixed_ips"][0]["ip_address"].as_str().unwrap()
    );
    let (_, p) = n.api("GET", &format!("/ports/{pid}"));
    assert_eq!(p["port"]["device_owner"], "compute:courier", "{p}");
    assert_eq!(p["port"]["binding:host_id"], n.host_id.as_str(), "{p}");
    assert!(
        eventually(Duration::from_secs(15), || n
            .api("GET", &format!("/ports/{pid}"))
            .1["port"]["status"]
            == "ACTIVE"),
        "the bound port goes ACTIVE"
    );
    let (code, out) = d.cni("CHECK", "c", &ns.path(), "eth0", &conf);
    assert_eq!(code, 0, "{out}");
    let (code, out) = d.cni("DEL", "c", &ns.path(), "eth0", &conf);
    assert_eq!(code, 0, "{out}");
    let (code, p) = n.api("GET", &format!("/ports/{pid}"));
    assert_eq!(code, 200, "the existing port is kept on DEL");
    assert_eq!(p["port"]["device_owner"], "", "{p}");
    assert_eq!(p["port"]["binding:host_id"], "", "{p}");
    assert!(
        !p["port"]["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t.as_str().unwrap_or("").starts_with("courier:")),
        "{p}"
    );
    assert!(owned(&d).is_empty());

    // The CLI may name the port alone: its network is found (the Courier network of its
    // Neutron network).
    let out = d.cli(&["attach", "--netns", &ns.path(), "--port", pid, "--json"]);
    assert!(
        out.status.success(),
        "attach --port alone: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let a: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(a["network"], net.as_str(), "{a}");
    assert!(ns.has_link("eth0"));
    assert!(d.cli(&["detach", "--netns", &ns.path()]).status.success());
    // A port on a Neutron network Courier does not know: refused, saying how to register it,
    // and the port untouched.
    let (code, plain) = n.call(
        "POST",
        "/networks",
        Some(serde_json::json!({"network": {"name": unique("neu-plain")}})),
    );
    assert_eq!(code, 201, "{plain}");
    let plain_id = plain["network"]["id"].as_str().unwrap().to_string();
    let (code, stray) = n.call(
        "POST",
        "/ports",
        Some(serde_json::json!({"port": {"network_id": plain_id}})),
    );
    assert_eq!(code, 201, "{stray}");
    let stray_id = stray["port"]["id"].as_str().unwrap().to_string();
    let before = n.api("GET", &format!("/ports/{stray_id}")).1["port"].clone();
    let out = d.cli(&["attach", "--netns", &ns.path(), "--port", &stray_id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("not a Courier network") && err.contains("--neutron-network"),
        "{err}"
    );
    assert_eq!(
        n.api("GET", &format!("/ports/{stray_id}")).1["port"],
        before
    );
    assert!(d.store().is_empty() && !ns.has_link("eth0"));
    n.api("DELETE", &format!("/ports/{stray_id}"));
    n.api("DELETE", &format!("/networks/{plain_id}"));
    // Neither a network nor a port: the CLI says what to give.
    let out = d.cli(&["attach", "--netns", &ns.path()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--network"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for id in [pid, vm_id] {
        n.api("DELETE", &format!("/ports/{id}"));
    }
    assert!(d.cli(&["network", "delete", &net]).status.success());
}

/// Security groups by name (CNI_ARGS SECURITY_GROUPS): the port gets them; an unknown one is a
/// clear error and changes nothing.
#[test]
fn security_groups_reach_the_port() {
    let Some(n) = NeutronEnv::get("security_groups_reach_the_port") else {
        return;
    };
    let d = neutron_daemon("neu-sg", &n, &[]);
    let net = unique("neu-sg");
    let _net_guard = neutron_net(&d, &net, "10.219.0.0/24");
    let sg_name = unique("courier-sg");
    let (code, sg) = n.call(
        "POST",
        "/security-groups",
        Some(serde_json::json!({"security_group": {"name": sg_name}})),
    );
    assert_eq!(code, 201, "{sg}");
    let sg_id = sg["security_group"]["id"].as_str().unwrap().to_string();
    let conf = d.netconf(&net, "1.1.0");
    let ns = Netns::new("neu-sg");
    let (code, out) = cni_exec(
        "ADD",
        "s",
        &ns.path(),
        "eth0",
        &conf,
        &[("CNI_ARGS", "SECURITY_GROUPS=no-such-group")],
    );
    assert_ne!(code, 0);
    assert!(
        out["msg"].as_str().unwrap().contains("no-such-group"),
        "{out}"
    );
    assert!(n.owned_ports(&d).is_empty() && d.store().is_empty());
    let (code, out) = cni_exec(
        "ADD",
        "s",
        &ns.path(),
        "eth0",
        &conf,
        &[("CNI_ARGS", &format!("SECURITY_GROUPS={sg_name}"))],
    );
    assert_eq!(code, 0, "{out}");
    let ports = n.owned_ports(&d);
    assert_eq!(
        ports[0]["security_groups"],
        serde_json::json!([sg_id]),
        "{ports:?}"
    );
    let (code, _) = d.cni("DEL", "s", &ns.path(), "eth0", &conf);
    assert_eq!(code, 0);
    n.api("DELETE", &format!("/security-groups/{sg_id}"));
    assert!(d.cli(&["network", "delete", &net]).status.success());
}

/// Restores Keystone's default token lifetime when dropped (also if the test panics).
struct DefaultTokenLifetime;
impl Drop for DefaultTokenLifetime {
    fn drop(&mut self) {
        let _ = std::process::Command::new(repo().join("scripts/neutron.sh"))
            .arg("restart-keystone")
            .env_remove("KEYSTONE_TOKEN_EXPIRATION")
            .output();
    }
}

/// An expired Keystone token is renewed without a failed attach. Changes host-wide state:
/// Keystone's token lifetime is 20 s during this test (restored after).
#[test]
fn expired_token_is_renewed_without_a_failed_attach() {
    let Some(n) = NeutronEnv::get("expired_token_is_renewed_without_a_failed_attach") else {
        return;
    };
    let _restore = DefaultTokenLifetime;
    let out = std::process::Command::new(repo().join("scripts/neutron.sh"))
        .arg("restart-keystone")
        .env("KEYSTONE_TOKEN_EXPIRATION", "20")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = neutron_daemon("neu-token", &n, &[]);
    let net = unique("neu-token");
    let _net_guard = neutron_net(&d, &net, "10.220.0.0/24");
    let conf = d.netconf(&net, "1.1.0");
    let (a, b) = (Netns::new("neu-tok-a"), Netns::new("neu-tok-b"));
    let (code, out) = d.cni("ADD", "a", &a.path(), "eth0", &conf);
    assert_eq!(code, 0, "{out}");
    // Every token the daemon held has now expired in Keystone.
    std::thread::sleep(Duration::from_secs(25));
    let (code, out) = d.cni("ADD", "b", &b.path(), "eth0", &conf);
    assert_eq!(code, 0, "ADD after the token expired: {out}\n{}", d.log());
    for (c, ns) in [("a", &a), ("b", &b)] {
        let (code, out) = d.cni("DEL", c, &ns.path(), "eth0", &conf);
        assert_eq!(code, 0, "{out}");
    }
    assert!(n.owned_ports(&d).is_empty());
    assert!(d.cli(&["network", "delete", &net]).status.success());
}

/// A wrong password: the Neutron backend stays unreachable with a clear authentication error
/// (naming the URL and user, never the password), and OVN direct still serves.
#[test]
fn wrong_password_is_a_clear_error() {
    let Some(n) = NeutronEnv::get("wrong_password_is_a_clear_error") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&n.clouds, dir.path().join("clouds.yaml")).unwrap();
    let wrong = "not-the-password-4711";
    std::fs::write(
        dir.path().join("secure.yaml"),
        format!("clouds:\n  courier-admin:\n    auth:\n      password: {wrong}\n"),
    )
    .unwrap();
    let clouds = dir.path().join("clouds.yaml").display().to_string();
    let env = n.daemon_env();
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.push(("OS_CLIENT_CONFIG_FILE", &clouds));
    let d = TestDaemon::start_with("neu-wrongpw", &all);
    assert!(eventually(Duration::from_secs(10), || d
        .log()
        .contains("not reachable yet")));
    let st: Value = serde_json::from_slice(&d.cli(&["status", "--json"]).stdout).unwrap();
    let neu = st["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "neutron")
        .unwrap()
        .clone();
    assert_eq!(neu["ok"], false, "{st}");
    let err = neu["error"].as_str().unwrap();
    assert!(
        err.contains("authentication") && err.contains("admin"),
        "{err}"
    );
    let text = format!("{st}{}", d.log());
    assert!(
        !text.contains(wrong),
        "the password reached status or the log"
    );
    let net = unique("neu-wrongpw");
    d.create_network(&net, &subnet_for(61));
    let ns = Netns::new("neu-wrongpw");
    let (code, out) = d.cni("ADD", "w", &ns.path(), "eth0", &d.netconf(&net, "1.1.0"));
    assert_eq!(
        code, 0,
        "OVN direct with Neutron's credentials wrong: {out}"
    );
    let (code, _) = d.cni("DEL", "w", &ns.path(), "eth0", &d.netconf(&net, "1.1.0"));
    assert_eq!(code, 0);
    assert!(d.cli(&["network", "delete", &net]).status.success());
}

/// Neutron stops answering in the middle of an attach (after the intent, before the port POST:
/// a pause point, and the proxy in front of Neutron is cut meanwhile): ADD returns 11; once
/// Neutron is back, a reconcile leaves nothing behind.
#[test]
fn neutron_gone_mid_attach_then_reconcile_leaves_nothing() {
    let Some(n) = NeutronEnv::get("neutron_gone_mid_attach_then_reconcile_leaves_nothing") else {
        return;
    };
    if !hooks_ready("neutron_gone_mid_attach_then_reconcile_leaves_nothing") {
        return;
    }
    let proxy = Proxy::tcp("tcp:127.0.0.1:9696");
    let dir = tempfile::tempdir().unwrap();
    let clouds = n.proxied_clouds(&proxy, dir.path());
    let d = neutron_daemon(
        "neu-mid",
        &n,
        &[
            ("OS_CLIENT_CONFIG_FILE", &clouds),
            ("COURIER_PAUSE_AT", "after-intent"),
            ("COURIER_PAUSE_MS", "1500"),
        ],
    );
    let net = unique("neu-mid");
    let _net_guard = neutron_net(&d, &net, "10.221.0.0/24");
    let conf = d.netconf(&net, "1.1.0");
    let ns = Netns::new("neu-mid");
    let socket = d.socket.clone();
    let _ = socket;
    let nsp = ns.path();
    let conf2 = conf.clone();
    let add = std::thread::spawn(move || cni_exec("ADD", "mid", &nsp, "eth0", &conf2, &[]));
    assert!(eventually(Duration::from_secs(10), || pauses(&d) >= 1));
    proxy.set(Mode::Cut);
    let (code, out) = add.join().unwrap();
    assert_eq!((code, out["code"].as_u64()), (1, Some(11)), "{out}");
    proxy.set(Mode::Forward);
    assert!(
        eventually(Duration::from_secs(30), || {
            d.api("POST", "/v1/reconcile", None);
            n.owned_ports(&d).is_empty() && owned(&d).is_empty()
        }),
        "left after Neutron came back: {:?} {:?}\n{}",
        n.owned_ports(&d),
        owned(&d),
        d.log()
    );
    assert!(!ns.has_link("eth0"));
    assert!(d.cli(&["network", "delete", &net]).status.success());
}

/// The project's port quota is used up: ADD fails with an error that says so, and nothing changes.
/// (The daemon runs as the `demo` user; the quota is reset after.)
#[test]
fn port_quota_used_up_is_a_clear_error() {
    let Some(n) = NeutronEnv::get("port_quota_used_up_is_a_clear_error") else {
        return;
    };
    let d = neutron_daemon(
        "neu-quota",
        &n,
        &[("COURIER_NEUTRON_CLOUD", "courier-demo")],
    );
    let net = unique("neu-quota");
    let out = d.cli(&[
        "network",
        "create",
        &net,
        "--backend",
        "neutron",
        "--subnet",
        "10.222.0.0/24",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, nets) = n.api("GET", &format!("/networks?tags=courier:network:{net}"));
    let project = nets["networks"][0]["project_id"]
        .as_str()
        .unwrap()
        .to_string();
    struct Reset<'a>(&'a NeutronEnv, String);
    impl Drop for Reset<'_> {
        fn drop(&mut self) {
            self.0.api("DELETE", &format!("/quotas/{}", self.1));
        }
    }
    let _reset = Reset(&n, project.clone());
    // No room for one more port: the quota is what the project uses now (Neutron's own
    // metadata port of the network counts, as on any ML2/OVN cloud).
    let (_, used) = n.api("GET", &format!("/ports?project_id={project}"));
    let used = used["ports"].as_array().map_or(0, Vec::len);
    let (code, q) = n.call(
        "PUT",
        &format!("/quotas/{project}"),
        Some(serde_json::json!({"quota": {"port": used}})),
    );
    assert_eq!(code, 200, "{q}");
    let ns = Netns::new("neu-quota");
    let conf = d.netconf(&net, "1.1.0");
    let (code, out) = d.cni("ADD", "q", &ns.path(), "eth0", &conf);
    assert_ne!(code, 0, "{out}");
    assert!(out["msg"].as_str().unwrap().contains("quota"), "{out}");
    assert!(n.owned_ports(&d).is_empty() && owned(&d).is_empty() && !ns.has_link("eth0"));
    drop(_reset);
    assert!(d.cli(&["network", "delete", &net]).status.success());
}

/// Credentials from OS_* variables instead of clouds.yaml, and a subnet's DNS servers and host
/// routes reach the container (CNI result `dns`, a route in the netns).
#[test]
fn os_env_credentials_and_dns_and_routes_from_the_subnet() {
    let Some(n) = NeutronEnv::get("os_env_credentials_and_dns_and_routes_from_the_subnet") else {
        return;
    };
    let d = TestDaemon::start_with(
        "neu-osenv",
        &[
            ("COURIER_NEUTRON", "1"),
            ("COURIER_NEUTRON_HOST_ID", &n.host_id),
            ("OS_CLIENT_CONFIG_FILE", "/nonexistent/clouds.yaml"),
            ("OS_AUTH_URL", "http://127.0.0.1:5000/v3"),
            ("OS_USERNAME", "admin"),
            ("OS_PASSWORD", ADMIN_PASSWORD),
            ("OS_PROJECT_NAME", "admin"),
            ("OS_USER_DOMAIN_NAME", "Default"),
            ("OS_PROJECT_DOMAIN_NAME", "Default"),
            ("OS_REGION_NAME", "RegionOne"),
        ],
    );
    wait_backends(&d);
    let net = unique("neu-osenv");
    let _net_guard = neutron_net(&d, &net, "10.223.0.0/24");
    let (_, nets) = n.api("GET", &format!("/networks?tags=courier:network:{net}"));
    let subnet = nets["networks"][0]["subnets"][0]
        .as_str()
        .unwrap()
        .to_string();
    let (code, v) = n.call(
        "PUT",
        &format!("/subnets/{subnet}"),
        Some(
            serde_json::json!({"subnet": {"dns_nameservers": ["10.223.0.53"],
            "host_routes": [{"destination": "192.168.223.0/24", "nexthop": "10.223.0.254"}]}}),
        ),
    );
    assert_eq!(code, 200, "{v}");
    // And a DNS domain on the network (the dns-integration extension): the search domain.
    let net_id = nets["networks"][0]["id"].as_str().unwrap().to_string();
    let (code, v) = n.call(
        "PUT",
        &format!("/networks/{net_id}"),
        Some(serde_json::json!({"network": {"dns_domain": "courier.test."}})),
    );
    assert_eq!(code, 200, "{v}");
    // The daemon re-reads a network's subnets when it resolves the network (at most every 10 s);
    // this one it resolves for the first time at the ADD below.
    let conf = d.netconf(&net, "1.1.0");
    let ns = Netns::new("neu-osenv");
    let (code, r) = d.cni("ADD", "e", &ns.path(), "eth0", &conf);
    assert_eq!(code, 0, "{r}");
    assert_eq!(
        r["dns"]["nameservers"],
        serde_json::json!(["10.223.0.53"]),
        "{r}"
    );
    assert!(
        r["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["dst"] == "192.168.223.0/24" && x["gw"] == "10.223.0.254"),
        "{r}"
    );
    let route =
        String::from_utf8_lossy(&ns.exec(&["ip", "route", "show", "192.168.223.0/24"]).stdout)
            .into_owned();
    assert!(route.contains("via 10.223.0.254"), "{route}");
    let (code, _) = d.cni("DEL", "e", &ns.path(), "eth0", &conf);
    assert_eq!(code, 0);
    assert!(d.cli(&["network", "delete", &net]).status.success());
}

/// `noauth` for labs: a clouds.yaml cloud with `auth_type: noauth` and an explicit endpoint
/// (the noauth Neutron of scripts/neutron.sh, same DB and OVN): no Keystone at all.
#[test]
fn noauth_mode_with_an_explicit_endpoint() {
    let Some(n) = NeutronEnv::get("noauth_mode_with_an_explicit_endpoint") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let clouds = dir.path().join("clouds.yaml");
    std::fs::write(
        &clouds,
        "clouds:\n  lab:\n    auth_type: noauth\n    network_endpoint_override: http://127.0.0.1:9697\n",
    )
    .unwrap();
    let clouds = clouds.display().to_string();
    let d = TestDaemon::start_with(
        "neu-noauth",
        &[
            ("OS_CLIENT_CONFIG_FILE", &clouds),
            ("COURIER_NEUTRON_CLOUD", "lab"),
            ("COURIER_NEUTRON_HOST_ID", &n.host_id),
        ],
    );
    wait_backends(&d);
    let net = unique("neu-noauth");
    let _net_guard = neutron_net(&d, &net, "10.224.0.0/24");
    let (a, b) = (Netns::new("neu-na-a"), Netns::new("neu-na-b"));
    let conf = d.netconf(&net, "1.1.0");
    let (code, ra) = d.cni("ADD", "a", &a.path(), "eth0", &conf);
    assert_eq!(code, 0, "{ra}");
    let (code, rb) = d.cni("ADD", "b", &b.path(), "eth0", &conf);
    assert_eq!(code, 0, "{rb}");
    // Seen through the Keystone-authenticated API: the ports exist, in noauth's project, found
    // by Courier's tags — which the noauth Neutron drops from a port POST (no
    // tag_ports_during_bulk_creation there), so Courier's PUT after the create set them.
    let ports = n.owned_ports(&d);
    assert_eq!(ports.len(), 2, "{ports:?}");
    assert_eq!(ports[0]["project_id"], "fake_project_id", "{ports:?}");
    assert!(a.ping(&addr(&rb, false)));
    for (c, ns) in [("a", &a), ("b", &b)] {
        let (code, _) = d.cni("DEL", c, &ns.path(), "eth0", &conf);
        assert_eq!(code, 0);
    }
    assert!(n.owned_ports(&d).is_empty());
    assert!(d.cli(&["network", "delete", &net]).status.success());
}

/// A claimed existing port whose record is lost (the store wiped while the daemon was down) is
/// given back by reconcile — unbound, Courier's tags removed — and never deleted.
#[test]
fn a_claimed_port_whose_record_is_lost_is_given_back() {
    let Some(n) = NeutronEnv::get("a_claimed_port_whose_record_is_lost_is_given_back") else {
        return;
    };
    let mut d = neutron_daemon("neu-lost", &n, &[]);
    let net = unique("neu-lost");
    let _net_guard = neutron_net(&d, &net, "10.225.0.0/24");
    let show: Value =
        serde_json::from_slice(&d.cli(&["network", "show", &net, "--json"]).stdout).unwrap();
    let (code, v) = n.call(
        "POST",
        "/ports",
        Some(serde_json::json!({"port": {"network_id": show["backend_id"], "name": unique("lost-port")}})),
    );
    assert_eq!(code, 201, "{v}");
    let pid = v["port"]["id"].as_str().unwrap().to_string();
    let ns = Netns::new("neu-lost");
    let conf = d.netconf(&net, "1.1.0");
    let (code, out) = cni_exec(
        "ADD",
        "l",
        &ns.path(),
        "eth0",
        &conf,
        &[("CNI_ARGS", &format!("PORT={pid}"))],
    );
    assert_eq!(code, 0, "{out}");
    d.kill9();
    std::fs::remove_dir_all(d.state_dir()).unwrap();
    let env = n.daemon_env();
    let all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    d.restart(&all);
    wait_backends(&d);
    assert!(
        eventually(Duration::from_secs(20), || {
            d.api("POST", "/v1/reconcile", None);
            let (_, p) = n.api("GET", &format!("/ports/{pid}"));
            p["port"]["device_owner"] == ""
                && p["port"]["binding:host_id"] == ""
                && !p["port"]["tags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t.as_str().unwrap_or("").starts_with("courier:"))
        }),
        "the claimed port was not given back: {}\n{}",
        n.api("GET", &format!("/ports/{pid}")).1,
        d.log()
    );
    assert_eq!(
        n.api("GET", &format!("/ports/{pid}")).0,
        200,
        "never deleted"
    );
    assert!(owned(&d).is_empty(), "{:?}", owned(&d));
    n.api("DELETE", &format!("/ports/{pid}"));
    assert!(d.cli(&["network", "delete", &net]).status.success());
}

/// Two attaches race for one existing port: exactly one wins (the claim is conditional on the
/// port's revision), the other fails cleanly and leaves the winner's claim alone.
#[test]
fn two_attaches_race_for_one_existing_port() {
    let Some(n) = NeutronEnv::get("two_attaches_race_for_one_existing_port") else {
        return;
    };
    let d = neutron_daemon("neu-race", &n, &[]);
    let net = unique("neu-race");
    let _net_guard = neutron_net(&d, &net, "10.226.0.0/24");
    let show: Value =
        serde_json::from_slice(&d.cli(&["network", "show", &net, "--json"]).stdout).unwrap();
    let (code, v) = n.call(
        "POST",
        "/ports",
        Some(serde_json::json!({"port": {"network_id": show["backend_id"], "name": unique("race-port")}})),
    );
    assert_eq!(code, 201, "{v}");
    let pid = v["port"]["id"].as_str().unwrap().to_string();
    let conf = d.netconf(&net, "1.1.0");
    let (a, b) = (Netns::new("neu-race-a"), Netns::new("neu-race-b"));
    let args = format!("PORT={pid}");
    let (ra, rb) = std::thread::scope(|s| {
        let ha = s.spawn(|| {
            cni_exec(
                "ADD",
                "ra",
                &a.path(),
                "eth0",
                &conf,
                &[("CNI_ARGS", &args)],
            )
        });
        let hb = s.spawn(|| {
            cni_exec(
                "ADD",
                "rb",
                &b.path(),
                "eth0",
                &conf,
                &[("CNI_ARGS", &args)],
            )
        });
        (ha.join().unwrap(), hb.join().unwrap())
    });
    let wins = [&ra, &rb].iter().filter(|r| r.0 == 0).count();
    assert_eq!(wins, 1, "exactly one attach binds the port: {ra:?} {rb:?}");
    let (winner, ns) = if ra.0 == 0 { ("ra", &a) } else { ("rb", &b) };
    let (_, p) = n.api("GET", &format!("/ports/{pid}"));
    assert_eq!(p["port"]["device_owner"], "compute:courier", "{p}");
    let (code, out) = d.cni("CHECK", winner, &ns.path(), "eth0", &conf);
    assert_eq!(code, 0, "the winner is intact: {out}");
    assert_eq!(d.store().len(), 1, "{:?}", d.store());
    let (code, _) = d.cni("DEL", winner, &ns.path(), "eth0", &conf);
    assert_eq!(code, 0);
    let (code, p) = n.api("GET", &format!("/ports/{pid}"));
    assert_eq!(
        (code, p["port"]["device_owner"].as_str()),
        (200, Some("")),
        "{p}"
    );
    n.api("DELETE", &format!("/ports/{pid}"));
    assert!(owned(&d).is_empty());
    assert!(d.cli(&["network", "delete", &net]).status.success());
}

/// Keystone v3 application credentials (clouds.yaml `auth_type: v3applicationcredential`): one is
/// created for the admin user for this test and deleted after.
#[test]
fn application_credential_auth() {
    let Some(n) = NeutronEnv::get("application_credential_auth") else {
        return;
    };
    // The admin user's id, from its own token.
    let out = sh_ok(
        "curl",
        &[
            "-s",
            "-H",
            &format!("X-Auth-Token: {}", n.token()),
            "-H",
            &format!("X-Subject-Token: {}", n.token()),
            "http://127.0.0.1:5000/v3/auth/tokens",
        ],
    );
    let user_id = serde_json::from_str::<Value>(&out).unwrap()["token"]["user"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let name = unique("courier-appcred");
    let body = serde_json::json!({"application_credential": {"name": name}}).to_string();
    let out = sh_ok(
        "curl",
        &[
            "-s",
            "-X",
            "POST",
            "-H",
            &format!("X-Auth-Token: {}", n.token()),
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
            &format!("http://127.0.0.1:5000/v3/users/{user_id}/application_credentials"),
        ],
    );
    let cred: Value = serde_json::from_str(&out).unwrap();
    let (id, secret) = (
        cred["application_credential"]["id"]
            .as_str()
            .expect("an application credential")
            .to_string(),
        cred["application_credential"]["secret"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    struct DeleteCred<'a>(&'a NeutronEnv, String, String);
    impl Drop for DeleteCred<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("curl")
                .args([
                    "-s",
                    "-X",
                    "DELETE",
                    "-H",
                    &format!("X-Auth-Token: {}", self.0.token()),
                ])
                .arg(format!(
                    "http://127.0.0.1:5000/v3/users/{}/application_credentials/{}",
                    self.1, self.2
                ))
                .output();
        }
    }
    let _cleanup = DeleteCred(&n, user_id, id.clone());
    let dir = tempfile::tempdir().unwrap();
    let clouds = dir.path().join("clouds.yaml");
    std::fs::write(
        &clouds,
        format!("clouds:\n  appcred:\n    auth_type: v3applicationcredential\n    auth:\n      auth_url: http://127.0.0.1:5000/v3\n      application_credential_id: {id}\n      application_credential_secret: {secret}\n    region_name: RegionOne\n"),
    )
    .unwrap();
    let clouds = clouds.display().to_string();
    let d = TestDaemon::start_with(
        "neu-appcred",
        &[
            ("OS_CLIENT_CONFIG_FILE", &clouds),
            ("COURIER_NEUTRON_CLOUD", "appcred"),
            ("COURIER_NEUTRON_HOST_ID", &n.host_id),
        ],
    );
    wait_backends(&d);
    let net = unique("neu-appcred");
    let _net_guard = neutron_net(&d, &net, "10.227.0.0/24");
    let ns = Netns::new("neu-appcred");
    let conf = d.netconf(&net, "1.1.0");
    let (code, out) = d.cni("ADD", "ac", &ns.path(), "eth0", &conf);
    assert_eq!(code, 0, "{out}");
    assert_eq!(n.owned_ports(&d).len(), 1);
    assert!(!d.log().contains(&secret), "the secret reached the log");
    let (code, _) = d.cni("DEL", "ac", &ns.path(), "eth0", &conf);
    assert_eq!(code, 0);
    assert!(d.cli(&["network", "delete", &net]).status.success());
}

/// An existing Neutron network whose IPv6 subnet is SLAAC (Neutron derives the address from the
/// MAC) registered under a Courier name: both containers get the address Neutron assigned, and
/// ping6 crosses.
#[test]
fn registered_slaac_network_ping6() {
    let Some(n) = NeutronEnv::get("registered_slaac_network_ping6") else {
        return;
    };
    let d = neutron_daemon("neu-slaac", &n, &[]);
    let name = unique("neu-slaac-os");
    let (code, v) = n.call(
        "POST",
        "/networks",
        Some(serde_json::json!({"network": {"name": name}})),
    );
    assert_eq!(code, 201, "{v}");
    let net_id = v["network"]["id"].as_str().unwrap().to_string();
    for sub in [
        serde_json::json!({"subnet": {"network_id": net_id, "cidr": "10.228.0.0/24", "ip_version": 4}}),
        serde_json::json!({"subnet": {"network_id": net_id, "cidr": "fd00:228::/64", "ip_version": 6,
            "ipv6_address_mode": "slaac", "ipv6_ra_mode": "slaac"}}),
    ] {
        let (code, v) = n.call("POST", "/subnets", Some(sub));
        assert_eq!(code, 201, "{v}");
    }
    let net = unique("neu-slaac");
    let out = d.cli(&["network", "create", &net, "--neutron-network", &net_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conf = d.netconf(&net, "1.1.0");
    let (a, b) = (Netns::new("neu-slaac-a"), Netns::new("neu-slaac-b"));
    let (code, ra) = d.cni("ADD", "sa", &a.path(), "eth0", &conf);
    assert_eq!(code, 0, "{ra}");
    let (code, rb) = d.cni("ADD", "sb", &b.path(), "eth0", &conf);
    assert_eq!(code, 0, "{rb}");
    // The IPv6 address is Neutron's EUI-64 one.
    let p = n.owned_ports(&d);
    let b6 = addr(&rb, true);
    assert!(
        p.iter().any(|p| p["fixed_ips"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["ip_address"] == b6.as_str())),
        "{b6} is Neutron's: {p:?}"
    );
    assert!(a.ping(&b6), "ping6 on a SLAAC subnet");
    for (c, ns) in [("sa", &a), ("sb", &b)] {
        let (code, _) = d.cni("DEL", c, &ns.path(), "eth0", &conf);
        assert_eq!(code, 0);
    }
    assert!(d.cli(&["network", "delete", &net]).status.success());
    assert_eq!(
        n.api("GET", &format!("/networks/{net_id}")).0,
        200,
        "registered: kept"
    );
    n.api("DELETE", &format!("/networks/{net_id}"));
}

/// TLS to Neutron: its API behind a TLS proxy with a self-signed certificate (made here with
/// openssl). With that certificate as `cacert` attaches work; without it the certificate is
/// refused and the backend reports it; with `verify: false` it works again.
#[test]
fn tls_endpoint_with_cacert_and_verify() {
    let Some(n) = NeutronEnv::get("tls_endpoint_with_cacert_and_verify") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A CA and a server certificate it signs (rustls refuses a CA certificate as the server's).
    let p = |f: &str| dir.path().join(f).display().to_string();
    let (ca, ca_key, cert, key, csr) = (
        p("ca.pem"),
        p("ca.key"),
        p("cert.pem"),
        p("key.pem"),
        p("s.csr"),
    );
    let ssl = |args: &[&str]| sh_ok("openssl", args);
    ssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=courier test CA",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    ssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &key,
        "-out",
        &csr,
    ]);
    let ext = p("ext.cnf");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    ssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
    let proxy_py = format!(
        r#"
import socket, ssl, threading
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain({cert:?}, {key:?})
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 0)); ls.listen(64); print(ls.getsockname()[1], flush=True)
def pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d: break
            b.sendall(d)
    except Exception: pass
    for s in (a, b):
        try: s.close()
        except Exception: pass
def handle(c):
    try: s = ctx.wrap_socket(c, server_side=True)
    except Exception: c.close(); return
    u = socket.create_connection(("127.0.0.1", 9696))
    threading.Thread(target=pipe, args=(s, u), daemon=True).start()
    pipe(u, s)
while True:
    c, _ = ls.accept(); threading.Thread(target=handle, args=(c,), daemon=True).start()
"#,
        cert = cert,
        key = key
    );
    let mut proxy = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &proxy_py])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
        }
    }
    let mut line = String::new();
    {
        use std::io::BufRead;
        std::io::BufReader::new(proxy.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
    }
    let _proxy = Kill(proxy);
    let port: u16 = line.trim().parse().expect("proxy port");
    let secure = std::fs::read_to_string("/etc/courier-test/secure.yaml").unwrap();
    std::fs::write(dir.path().join("secure.yaml"), secure).unwrap();
    let base = std::fs::read_to_string(&n.clouds).unwrap();
    let run = |name: &str, extra: &str| -> (TestDaemon, Value) {
        let clouds = dir.path().join("clouds.yaml");
        std::fs::write(
            &clouds,
            base.replace(
                "  courier-admin:\n",
                &format!("  courier-admin:\n    network_endpoint_override: https://127.0.0.1:{port}\n{extra}"),
            ),
        )
        .unwrap();
        let c = clouds.display().to_string();
        let env = n.daemon_env();
        let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.push(("OS_CLIENT_CONFIG_FILE", &c));
        let d = TestDaemon::start_with(name, &all);
        std::thread::sleep(Duration::from_secs(1));
        let st: Value = serde_json::from_slice(&d.cli(&["status", "--json"]).stdout).unwrap();
        let neu = st["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == "neutron")
            .unwrap()
            .clone();
        (d, neu)
    };
    let attach_works = |d: &TestDaemon, tag: &str| {
        wait_backends(d);
        let net = unique(tag);
        let _net_guard = neutron_net(d, &net, "10.229.0.0/24");
        let ns = Netns::new(tag);
        let conf = d.netconf(&net, "1.1.0");
        let (code, out) = d.cni("ADD", "t", &ns.path(), "eth0", &conf);
        assert_eq!(code, 0, "{out}");
        let (code, _) = d.cni("DEL", "t", &ns.path(), "eth0", &conf);
        assert_eq!(code, 0);
        assert!(d.cli(&["network", "delete", &net]).status.success());
    };
    let (d, _) = run("neu-tls-ca", &format!("    cacert: {ca}\n"));
    attach_works(&d, "neu-tls-ca");
    drop(d);
    let (d, neu) = run("neu-tls-no", "");
    assert_eq!(
        neu["ok"], false,
        "an unknown certificate must be refused: {neu}"
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            let st: Value = serde_json::from_slice(&d.cli(&["status", "--json"]).stdout).unwrap();
            st["backends"].as_array().unwrap().iter().any(|b| {
                b["name"] == "neutron"
                    && b["ok"] == false
                    && b["error"]
                        .as_str()
                        .unwrap_or("")
                        .to_lowercase()
                        .contains("certificate")
            })
        }),
        "the error names the certificate: {neu}"
    );
    drop(d);
    let (d, _) = run("neu-tls-noverify", "    verify: false\n");
    attach_works(&d, "neu-tls-nv");
}

/// Credentials in the daemon's own config file (`[neutron.auth]`), no clouds.yaml, no OS_*.
#[test]
fn credentials_from_the_daemon_config_file() {
    let Some(n) = NeutronEnv::get("credentials_from_the_daemon_config_file") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("courier.toml");
    std::fs::write(
        &toml,
        format!(
            "[neutron]\nenabled = true\nhost_id = \"{}\"\n[neutron.auth]\nauth_url = \"http://127.0.0.1:5000/v3\"\nusername = \"admin\"\npassword = \"{ADMIN_PASSWORD}\"\nproject_name = \"admin\"\nuser_domain_name = \"Default\"\nproject_domain_name = \"Default\"\nregion_name = \"RegionOne\"\n",
            n.host_id
        ),
    )
    .unwrap();
    let toml = toml.display().to_string();
    let d = TestDaemon::start_with(
        "neu-toml",
        &[
            ("COURIER_CONFIG", &toml),
            ("OS_CLIENT_CONFIG_FILE", "/nonexistent/clouds.yaml"),
        ],
    );
    wait_backends(&d);
    let net = unique("neu-toml");
    let _net_guard = neutron_net(&d, &net, "10.231.0.0/24");
    let ns = Netns::new("neu-toml");
    let conf = d.netconf(&net, "1.1.0");
    let (code, out) = d.cni("ADD", "t", &ns.path(), "eth0", &conf);
    assert_eq!(code, 0, "{out}");
    assert!(!d.log().contains(ADMIN_PASSWORD));
    let (code, _) = d.cni("DEL", "t", &ns.path(), "eth0", &conf);
    assert_eq!(code, 0);
    assert!(d.cli(&["network", "delete", &net]).status.success());
}

/// A port of another project (not visible to the daemon's `demo` credentials) is refused as
/// unknown, and nothing changes.
#[test]
fn a_foreign_projects_port_is_refused() {
    let Some(n) = NeutronEnv::get("a_foreign_projects_port_is_refused") else {
        return;
    };
    let d = neutron_daemon(
        "neu-foreign",
        &n,
        &[("COURIER_NEUTRON_CLOUD", "courier-demo")],
    );
    let net = unique("neu-foreign");
    let _net_guard = neutron_net(&d, &net, "10.232.0.0/24");
    // An admin-project port on a network of the admin project.
    let (code, v) = n.call(
        "POST",
        "/networks",
        Some(serde_json::json!({"network": {"name": unique("foreign")}})),
    );
    assert_eq!(code, 201, "{v}");
    let other = v["network"]["id"].as_str().unwrap().to_string();
    let (code, v) = n.call(
        "POST",
        "/subnets",
        Some(serde_json::json!({"subnet": {"network_id": other, "cidr": "10.233.0.0/24", "ip_version": 4}})),
    );
    assert_eq!(code, 201, "{v}");
    let (code, v) = n.call(
        "POST",
        "/ports",
        Some(serde_json::json!({"port": {"network_id": other}})),
    );
    assert_eq!(code, 201, "{v}");
    let pid = v["port"]["id"].as_str().unwrap().to_string();
    let ns = Netns::new("neu-foreign");
    let conf = d.netconf(&net, "1.1.0");
    let (code, out) = cni_exec(
        "ADD",
        "f",
        &ns.path(),
        "eth0",
        &conf,
        &[("CNI_ARGS", &format!("PORT={pid}"))],
    );
    assert_ne!(code, 0);
    assert!(out["msg"].as_str().unwrap().contains("no port"), "{out}");
    let (_, p) = n.api("GET", &format!("/ports/{pid}"));
    assert_eq!(p["port"]["device_owner"], "", "unchanged: {p}");
    assert!(d.store().is_empty() && !ns.has_link("eth0"));
    n.api("DELETE", &format!("/ports/{pid}"));
    n.api("DELETE", &format!("/networks/{other}"));
    assert!(d.cli(&["network", "delete", &net]).status.success());
}

/// Credentials without the right to bind ports to a host (a `member` of the demo project; by
/// Neutron's default policy only admins may set binding:host_id): a clear 403 error, nothing
/// left behind.
#[test]
fn forbidden_port_binding_is_a_clear_error() {
    let Some(n) = NeutronEnv::get("forbidden_port_binding_is_a_clear_error") else {
        return;
    };
    let d = neutron_daemon("neu-403", &n, &[("COURIER_NEUTRON_CLOUD", "courier-demo")]);
    let net = unique("neu-403");
    let _net_guard = neutron_net(&d, &net, "10.234.0.0/24");
    let ns = Netns::new("neu-403");
    let conf = d.netconf(&net, "1.1.0");
    let (code, out) = d.cni("ADD", "f", &ns.path(), "eth0", &conf);
    assert_ne!(code, 0, "{out}");
    let msg = out["msg"].as_str().unwrap();
    assert!(
        msg.contains("forbids") && msg.contains("binding:host_id"),
        "{out}"
    );
    assert!(n.owned_ports(&d).is_empty() && owned(&d).is_empty() && !ns.has_link("eth0"));
    assert!(d.cli(&["network", "delete", &net]).status.success());
}

/// A clouds.yaml (in `dir`) whose cloud `lab` is the noauth Neutron of scripts/neutron.sh.
fn noauth_clouds(dir: &std::path::Path) -> String {
    let clouds = dir.join("clouds.yaml");
    std::fs::write(
        &clouds,
        "clouds:\n  lab:\n    auth_type: noauth\n    network_endpoint_override: http://127.0.0.1:9697\n",
    )
    .unwrap();
    clouds.display().to_string()
}

/// The noauth Neutron answers every list in pages of at most 5 (`pagination_max_limit = 5`,
/// scripts/neutron.sh's noauth.conf), whether the query has a `limit` or not. Through it the
/// daemon still sees everything: all 6 of its networks in `GET /v1/networks` (which lists
/// every Neutron network), all 7 of its ports in `GET /v1/ports`, and 6 security groups by
/// name among more than a page of groups; each DEL then leaves no port.
#[test]
fn noauth_daemon_reads_every_page() {
    let Some(n) = NeutronEnv::get("noauth_daemon_reads_every_page") else {
        return;
    };
    const PAGE: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let clouds = noauth_clouds(dir.path());
    let d = TestDaemon::start_with(
        "neu-pages",
        &[
            ("OS_CLIENT_CONFIG_FILE", &clouds),
            ("COURIER_NEUTRON_CLOUD", "lab"),
            ("COURIER_NEUTRON_HOST_ID", &n.host_id),
        ],
    );
    wait_backends(&d);
    let nets: Vec<String> = (0..=PAGE).map(|i| unique(&format!("neu-pg{i}"))).collect();
    let _net_guards: Vec<NeutronNetGuard> = nets
        .iter()
        .enumerate()
        .map(|(i, net)| neutron_net(&d, net, &format!("10.232.{i}.0/24")))
        .collect();
    // Security groups, more than a page of them in Neutron (noauth sees every project's).
    let sg_names: Vec<String> = (0..=PAGE)
        .map(|i| unique(&format!("neu-pg-sg{i}")))
        .collect();
    let mut sg_ids = Vec::new();
    for name in &sg_names {
        let (code, v) = n.call(
            "POST",
            "/security-groups",
            Some(serde_json::json!({"security_group": {"name": name}})),
        );
        assert_eq!(code, 201, "{v}");
        sg_ids.push(v["security_group"]["id"].as_str().unwrap().to_string());
    }
    let conf = d.netconf(&nets[0], "1.1.0");
    let nss: Vec<Netns> = (0..=PAGE + 1)
        .map(|i| Netns::new(&format!("neu-pg{i}")))
        .collect();
    let body = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let (code, out) = cni_exec(
            "ADD",
            "c0",
            &nss[0].path(),
            "eth0",
            &conf,
            &[(
                "CNI_ARGS",
                &format!("SECURITY_GROUPS={}", sg_names.join(",")),
            )],
        );
        assert_eq!(code, 0, "{out}");
        for (i, ns) in nss.iter().enumerate().skip(1) {
            let (code, out) = d.cni("ADD", &format!("c{i}"), &ns.path(), "eth0", &conf);
            assert_eq!(code, 0, "{out}");
        }
        // Every network, every port.
        let (code, listed) = d.api("GET", "/v1/networks", None);
        assert_eq!(code, 200, "{listed}");
        for net in &nets {
            assert!(
                listed
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|l| l["name"] == net.as_str()),
                "{net} missing from GET /v1/networks: {listed}"
            );
        }
        let (code, ports) = d.api("GET", "/v1/ports", None);
        assert_eq!(code, 200, "{ports}");
        assert_eq!(
            ports.as_array().unwrap().len(),
            nss.len(),
            "GET /v1/ports: {ports}"
        );
        assert_eq!(n.owned_ports(&d).len(), nss.len());
        // The first container's port has every group it named.
        let port = n
            .owned_ports(&d)
            .into_iter()
            .find(|p| {
                p["fixed_ips"][0]["ip_address"]
                    .as_str()
                    .is_some_and(|ip| cni_ip(&out) == ip)
            })
            .expect("c0's port");
        let mut have: Vec<String> = port["security_groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_str().unwrap().to_string())
            .collect();
        have.sort();
        let mut want = sg_ids.clone();
        want.sort();
        assert_eq!(have, want, "{port}");
        for (i, ns) in nss.iter().enumerate() {
            let (code, out) = d.cni("DEL", &format!("c{i}"), &ns.path(), "eth0", &conf);
            assert_eq!(code, 0, "{out}");
        }
        assert!(n.owned_ports(&d).is_empty(), "{:?}", n.owned_ports(&d));
    }));
    for (i, ns) in nss.iter().enumerate() {
        let _ = d.cni("DEL", &format!("c{i}"), &ns.path(), "eth0", &conf);
    }
    for net in &nets {
        let _ = d.cli(&["network", "delete", net]);
    }
    for id in &sg_ids {
        n.api("DELETE", &format!("/security-groups/{id}"));
    }
    if let Err(e) = body {
        std::panic::resume_unwind(e);
    }
    for net in &nets {
        assert!(n.networks_named(net).is_empty(), "{net} left in Neutron");
    }
}

/// The first IPv4 address of a CNI result, without its prefix.
fn cni_ip(r: &Value) -> String {
    addr(r, false)
}

/// STATUS asks the Neutron backend whether it answers with a probe of one network
/// (`limit=1`): one request, however many networks the cloud has (it read the whole
/// collection one network per request). Counted by a proxy in front of the real Neutron.
#[test]
fn the_status_probe_reads_one_page() {
    let Some(n) = NeutronEnv::get("the_status_probe_reads_one_page") else {
        return;
    };
    // More than one network in Neutron, whatever else is there.
    let name = unique("neu-probe");
    let mut made = Vec::new();
    for i in 0..3 {
        let (code, v) = n.call(
            "POST",
            "/networks",
            Some(serde_json::json!({"network": {"name": format!("{name}-{i}")}})),
        );
        assert_eq!(code, 201, "{v}");
        made.push(v["network"]["id"].as_str().unwrap().to_string());
    }
    let proxy = Proxy::tcp("tcp:127.0.0.1:9696");
    let dir = tempfile::tempdir().unwrap();
    let clouds = n.proxied_clouds(&proxy, dir.path());
    let d = TestDaemon::start_with(
        "neu-probe",
        &[
            ("OS_CLIENT_CONFIG_FILE", &clouds),
            ("COURIER_NEUTRON_CLOUD", "courier-admin"),
            ("COURIER_NEUTRON_HOST_ID", &n.host_id),
        ],
    );
    wait_backends(&d);
    let probes = || proxy.requests("GET", "/v2.0/networks?limit=1").len();
    let before = probes();
    let (code, st) = d.api("GET", "/v1/status", None);
    let during = probes() - before;
    for id in &made {
        n.api("DELETE", &format!("/networks/{id}"));
    }
    assert_eq!(code, 200, "{st}");
    assert!(
        st["backends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["name"] == "neutron" && b["ok"] == true),
        "{st}"
    );
    assert_eq!(
        during,
        1,
        "one STATUS, one probe request: {:?}",
        proxy.requests("GET", "/v2.0/networks")
    );
}

/// A Neutron backend whose cloud is bad fails its own networks only: with OVN direct beside
/// it, an OVN network still attaches (a container on it reaches another), CNI STATUS of the
/// OVN network passes, and `courier status` names the bad backend with its error. Three bad
/// clouds: a wrong password with an endpoint override (the backend connects, every call is
/// refused), an endpoint that is not Neutron (Keystone's, which answers 404), and a wrong
/// password through the catalog (it never connects).
#[test]
fn a_bad_cloud_does_not_fail_the_other_backends_networks() {
    let Some(n) = NeutronEnv::get("a_bad_cloud_does_not_fail_the_other_backends_networks") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wrong = format!("wrong-{}", std::process::id());
    let cloud = |endpoint: Option<&str>, password: &str| {
        format!(
            "    auth_type: password\n    auth:\n      auth_url: http://127.0.0.1:5000/v3\n      username: admin\n      password: {password}\n      project_name: admin\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n{}",
            endpoint
                .map(|e| format!("    network_endpoint_override: {e}\n"))
                .unwrap_or_default()
        )
    };
    let clouds = dir.path().join("clouds.yaml");
    std::fs::write(
        &clouds,
        format!(
            "clouds:\n  refused:\n{}  not-neutron:\n{}  refused-catalog:\n{}",
            cloud(Some("http://127.0.0.1:9696"), &wrong),
            cloud(Some("http://127.0.0.1:5000"), ADMIN_PASSWORD),
            cloud(None, &wrong),
        ),
    )
    .unwrap();
    let clouds = clouds.display().to_string();
    for (i, (name, says)) in [
        ("refused", "401"),
        ("not-neutron", "404"),
        ("refused-catalog", "401"),
    ]
    .into_iter()
    .enumerate()
    {
        let d = TestDaemon::start_with(
            &format!("neu-bad{i}"),
            &[
                ("OS_CLIENT_CONFIG_FILE", &clouds),
                ("COURIER_NEUTRON_CLOUD", name),
                ("COURIER_NEUTRON_HOST_ID", &n.host_id),
            ],
        );
        // OVN direct connects; the Neutron backend shows its error.
        let mut last = Value::Null;
        assert!(
            eventually(Duration::from_secs(20), || {
                last = d.api("GET", "/v1/status", None).1;
                let b = last["backends"].as_array().cloned().unwrap_or_default();
                b.iter().any(|h| h["name"] == "ovn" && h["ok"] == true)
                    && b.iter().any(|h| {
                        h["name"] == "neutron"
                            && h["ok"] == false
                            && h["error"].as_str().is_some_and(|e| e.contains(says))
                    })
            }),
            "{name}: {last}\n{}",
            d.log()
        );
        let net = unique(&format!("neu-bad{i}"));
        d.create_network(&net, &subnet_for(240 + i as u8));
        let conf = d.netconf(&net, "1.1.0");
        let (a, b) = (
            Netns::new(&format!("neu-bad{i}a")),
            Netns::new(&format!("neu-bad{i}b")),
        );
        let (code, ra) = d.cni("ADD", "a", &a.path(), "eth0", &conf);
        assert_eq!(code, 0, "{name}: ADD on the OVN network: {ra}");
        let (code, rb) = d.cni("ADD", "b", &b.path(), "eth0", &conf);
        assert_eq!(code, 0, "{name}: {rb}");
        assert!(a.ping(&addr(&rb, false)), "{name}");
        let (code, out) = d.cni("STATUS", "", "", "", &conf);
        assert_eq!(code, 0, "{name}: STATUS of the OVN network: {out}");
        // `courier status` names the bad backend and says why.
        let st = d.cli(&["status"]);
        let text = String::from_utf8_lossy(&st.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.starts_with("backend:") && l.contains("neutron"))
            .unwrap_or_else(|| panic!("{name}: no neutron line: {text}"));
        assert!(line.contains(says), "{name}: {line}");
        if name != "refused-catalog" {
            // It answers, and refuses: not a matter of waiting. (Met while connecting — the
            // host-mark check asks Neutron before the backend counts as connected — it is
            // still shown as "not connected yet": the cause named is what counts here.)
            assert!(
                line.contains("FAILING") || line.contains("not connected yet"),
                "{name}: {line}"
            );
        }
        assert!(
            text.lines()
                .any(|l| l.starts_with("backend:") && l.contains("ovn") && l.contains("reachable")),
            "{text}"
        );
        assert!(!line.contains(&wrong), "{name}: the password shown: {line}");
        for (c, ns) in [("a", &a), ("b", &b)] {
            let (code, out) = d.cni("DEL", c, &ns.path(), "eth0", &conf);
            assert_eq!(code, 0, "{name}: {out}");
        }
        let out = d.cli(&["network", "delete", &net]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(owned(&d).is_empty(), "{name}: {:?}", owned(&d));
    }
}

/// An existing port's `binding:vnic_type` decides what Courier may do with it, before anything
/// changes: a `macvtap` (or `direct-physical`, …) port is refused, saying which types Courier
/// binds; a `direct` port (an SR-IOV VF's) is one for the sriov binding, and a host without
/// it refuses it, saying what to configure. Either way the port is as it was (no device, no
/// host, no Courier tag), no record is written, no interface made.
#[test]
fn a_ports_vnic_type_chooses_or_refuses_the_binding() {
    let Some(n) = NeutronEnv::get("a_ports_vnic_type_chooses_or_refuses_the_binding") else {
        return;
    };
    let d = neutron_daemon("neu-vnic", &n, &[]);
    let net = unique("neu-vnic");
    let _net_guard = neutron_net(&d, &net, "10.234.0.0/24");
    let show: Value =
        serde_json::from_slice(&d.cli(&["network", "show", &net, "--json"]).stdout).unwrap();
    let net_id = show["backend_id"].as_str().unwrap().to_string();
    let mk = |vnic: &str| {
        let (code, v) = n.call(
            "POST",
            "/ports",
            Some(serde_json::json!({"port": {"network_id": net_id, "name": unique(&format!("vnic-{vnic}")), "binding:vnic_type": vnic}})),
        );
        assert_eq!(code, 201, "{v}");
        v["port"]["id"].as_str().unwrap().to_string()
    };
    let ns = Netns::new("neu-vnic");
    let conf = d.netconf(&net, "1.1.0");
    let mut seen = Vec::new();
    for vnic in ["macvtap", "direct"] {
        let pid = mk(vnic);
        let (code, out) = cni_exec(
            "ADD",
            &format!("vnic-{vnic}"),
            &ns.path(),
            "eth0",
            &conf,
            &[("CNI_ARGS", &format!("PORT={pid}"))],
        );
        let (_, p) = n.api("GET", &format!("/ports/{pid}"));
        n.api("DELETE", &format!("/ports/{pid}"));
        seen.push((vnic, code, out, p));
    }
    let store_empty = d.store().is_empty();
    let has_eth0 = ns.has_link("eth0");
    assert!(d.cli(&["network", "delete", &net]).status.success());
    for (vnic, code, out, p) in &seen {
        assert_ne!(*code, 0, "{vnic}: {out}");
        let msg = out["msg"].as_str().unwrap_or_default();
        match *vnic {
            "macvtap" => assert!(
                msg.contains("binding:vnic_type macvtap") && msg.contains("normal or direct"),
                "{out}"
            ),
            _ => assert!(
                msg.contains("vnic_type direct") && msg.contains("no sriov binding"),
                "{out}"
            ),
        }
        assert_eq!(p["port"]["device_owner"], "", "{vnic}: unchanged: {p}");
        assert_eq!(p["port"]["device_id"], "", "{vnic}: unchanged: {p}");
        assert_eq!(p["port"]["binding:host_id"], "", "{vnic}: unchanged: {p}");
        assert!(
            !p["port"]["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| t.as_str().unwrap_or_default().starts_with("courier")),
            "{vnic}: no Courier tag: {p}"
        );
    }
    assert!(store_empty, "no record");
    assert!(!has_eth0, "no interface");
}

/// The tests' own guard: a Courier network a failed test never deleted goes with its ports
/// (what keeps a failed run from leaking Neutron networks).
#[test]
fn a_network_guard_removes_what_a_failed_test_left() {
    let Some(n) = NeutronEnv::get("a_network_guard_removes_what_a_failed_test_left") else {
        return;
    };
    let d = neutron_daemon("neu-guard", &n, &[]);
    let net = unique("neu-guard");
    let guard = neutron_net(&d, &net, "10.236.0.0/24");
    let id = n
        .api("GET", &format!("/networks?tags=courier:network:{net}"))
        .1["networks"][0]["id"]
        .as_str()
        .expect("the network in Neutron")
        .to_string();
    let (code, port) = n.call(
        "POST",
        "/ports",
        Some(serde_json::json!({"port": {"network_id": id, "name": format!("{net}-left")}})),
    );
    assert_eq!(code, 201, "{port}");
    drop(guard);
    assert_eq!(
        n.api("GET", &format!("/networks/{id}")).0,
        404,
        "network left"
    );
    let port_id = port["port"]["id"].as_str().unwrap_or("");
    assert_eq!(
        n.api("GET", &format!("/ports/{port_id}")).0,
        404,
        "port left"
    );
}
