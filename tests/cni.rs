//! CNI front door end to end: real OVN, real OVS (userspace datapath), real netns.
mod common;
use common::*;
use serde_json::json;

fn ip_of(result: &serde_json::Value) -> String {
    let cidr = result["ips"][0]["address"]
        .as_str()
        .expect("ips[0].address in result");
    cidr.split('/').next().unwrap().to_string()
}

#[test]
fn add_ping_tcp_check_del_gc() {
    if !env_ready("add_ping_tcp_check_del_gc") {
        return;
    }
    let d = TestDaemon::start("cni");
    let net = unique("cni-net");
    let baseline = world(&d);
    d.create_network(&net, &subnet_for(1));
    let conf = d.netconf(&net, "1.1.0");
    let a = Netns::new("cni-a");
    let b = Netns::new("cni-b");

    let (code, ra) = d.cni("ADD", "ctr-a", &a.path(), "eth0", &conf);
    assert_eq!(code, 0, "ADD a: {ra}\n{}", d.log());
    let (code, rb) = d.cni("ADD", "ctr-b", &b.path(), "eth0", &conf);
    assert_eq!(code, 0, "ADD b: {rb}\n{}", d.log());
    assert_eq!(ra["cniVersion"], "1.1.0");
    assert_eq!(ra["interfaces"][1]["name"], "eth0");
    assert_eq!(ra["interfaces"][1]["sandbox"], a.path());
    assert!(
        ra["routes"][0]["gw"].is_string(),
        "default route in result: {ra}"
    );
    let (ip_a, ip_b) = (ip_of(&ra), ip_of(&rb));
    assert_ne!(ip_a, ip_b);

    // The logical ports exist in OVN, up, with OVN-assigned addresses matching the result.
    let atts = d.store();
    assert_eq!(atts.len(), 2);
    for att in &atts {
        let port = att["port_name"].as_str().unwrap();
        let host_if = att["edge"]["host_ifname"].as_str().unwrap();
        // ADD returned only after ovn-controller installed the flows...
        let installed = sh_ok(
            "ovs-vsctl",
            &["get", "Interface", host_if, "external_ids:ovn-installed"],
        );
        assert_eq!(installed.trim().trim_matches('"'), "true");
        // ...and OVN reports the logical port up shortly after.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while nbctl(&["get", "Logical_Switch_Port", port, "up"]).trim() != "true" {
            assert!(
                std::time::Instant::now() < deadline,
                "LSP {port} never came up"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let dynamic = nbctl(&["get", "Logical_Switch_Port", port, "dynamic_addresses"]);
        assert!(
            dynamic.contains(att["port"]["mac"].as_str().unwrap()),
            "{dynamic}"
        );
        let iface_id = sh_ok(
            "ovs-vsctl",
            &["get", "Interface", host_if, "external_ids:iface-id"],
        );
        assert_eq!(iface_id.trim().trim_matches('"'), port);
    }
    // The container interface carries the port's MAC.
    let link = a.exec(&["ip", "-o", "link", "show", "eth0"]);
    assert!(String::from_utf8_lossy(&link.stdout)
        .contains(ra["interfaces"][1]["mac"].as_str().unwrap()));

    // Packets cross OVN both ways; TCP works (TX checksum offload handled by the binding).
    assert!(a.ping(&ip_b), "a cannot ping b");
    assert!(b.ping(&ip_a), "b cannot ping a");
    let (recv, sent) = tcp_transfer(&b, &a, &ip_b, 5001, 2_000_000);
    assert_eq!(sent.0, 2_000_000);
    assert_eq!(recv, sent, "TCP data did not arrive intact");

    // Port security: a container cannot send from an address it was not given.
    let port_a = atts.iter().find(|x| x["container_id"] == "ctr-a").unwrap();
    let sec = nbctl(&[
        "get",
        "Logical_Switch_Port",
        port_a["port_name"].as_str().unwrap(),
        "port_security",
    ]);
    assert!(
        sec.contains(&ip_a) && sec.contains(port_a["port"]["mac"].as_str().unwrap()),
        "{sec}"
    );
    let spoof = {
        let mut o: Vec<&str> = ip_b.split('.').collect();
        o[3] = "250";
        o.join(".")
    };
    assert!(a
        .exec(&["ip", "addr", "add", &format!("{spoof}/24"), "dev", "eth0"])
        .status
        .success());
    let spoofed = a.exec(&[
        "ping", "-c", "2", "-i", "0.2", "-W", "1", "-I", &spoof, &ip_b,
    ]);
    assert!(
        !spoofed.status.success(),
        "a spoofed source address crossed OVN"
    );
    assert!(a
        .exec(&["ip", "addr", "del", &format!("{spoof}/24"), "dev", "eth0"])
        .status
        .success());
    assert!(a.ping(&ip_b), "legit traffic still flows");

    // CHECK passes, then fails once the host end of the veth is deleted by hand.
    let with_prev = |prev: &serde_json::Value| {
        let mut c: serde_json::Value = serde_json::from_str(&conf).unwrap();
        c["prevResult"] = prev.clone();
        c.to_string()
    };
    let (code, out) = d.cni("CHECK", "ctr-a", &a.path(), "eth0", &with_prev(&ra));
    assert_eq!(code, 0, "CHECK: {out}");
    // A prevResult that does not match the attachment fails CHECK.
    let (code, out) = d.cni("CHECK", "ctr-a", &a.path(), "eth0", &with_prev(&rb));
    assert_eq!((code, out["code"].as_u64()), (1, Some(104)), "{out}");
    let host_a = atts.iter().find(|x| x["container_id"] == "ctr-a").unwrap()["edge"]["host_ifname"]
        .as_str()
        .unwrap()
        .to_string();
    sh_ok("ip", &["link", "del", &host_a]);
    let (code, out) = d.cni("CHECK", "ctr-a", &a.path(), "eth0", &conf);
    assert_eq!(code, 1);
    assert_eq!(out["code"], 104, "{out}");
    assert!(out["msg"].as_str().unwrap().contains("missing"), "{out}");

    // DEL removes the LSP, the OVS port and the veth; a second DEL succeeds.
    let port_a = atts.iter().find(|x| x["container_id"] == "ctr-a").unwrap()["port_name"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, out) = d.cni("DEL", "ctr-a", &a.path(), "eth0", &conf);
    assert_eq!(code, 0, "DEL: {out}");
    let w = world(&d);
    assert!(!w.lsps.contains(&port_a));
    assert!(!w.ovs_ports.contains(&host_a));
    assert!(!w.host_links.contains(&host_a));
    assert!(!a.has_link("eth0"));
    assert_eq!(d.cni("DEL", "ctr-a", &a.path(), "eth0", &conf).0, 0);
    assert_eq!(
        d.cni("DEL", "never-added", "", "eth0", &conf).0,
        0,
        "DEL of unknown container must succeed"
    );

    // GC with a valid list removes the others.
    let c = Netns::new("cni-c");
    assert_eq!(d.cni("ADD", "ctr-c", &c.path(), "eth0", &conf).0, 0);
    let gc_conf = json!({"cniVersion": "1.1.0", "name": net, "type": "courier", "socket": d.socket,
        "cni.dev/valid-attachments": [{"containerID": "ctr-b", "ifname": "eth0"}]})
    .to_string();
    let (code, out) = d.cni("GC", "", "", "", &gc_conf);
    assert_eq!(code, 0, "GC: {out}");
    let left: Vec<String> = d
        .store()
        .iter()
        .map(|x| x["container_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, vec!["ctr-b".to_string()]);
    assert!(!c.has_link("eth0"));
    assert!(b.has_link("eth0"));

    // Metrics reflect what happened.
    let (code, m) = d.api("GET", "/metrics", None);
    assert_eq!(code, 200);
    let m = m.as_str().unwrap_or_default().to_string();
    assert!(
        m.contains("courier_operations_total{op=\"attach\",result=\"ok\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("courier_operations_total{op=\"check\",result=\"104\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("courier_operations_total{op=\"gc\",result=\"ok\"} 1"),
        "{m}"
    );
    assert!(m.contains("courier_attach_duration_seconds_count 3"), "{m}");
    assert!(m.contains("courier_attachments 1"), "{m}");

    // STATUS and VERSION.
    assert_eq!(d.cni("STATUS", "", "", "", &conf).0, 0);
    let (code, v) = cni_exec("VERSION", "", "", "", "{}", &[]);
    assert_eq!(code, 0);
    assert_eq!(v["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));

    assert_eq!(d.cni("DEL", "ctr-b", &b.path(), "eth0", &conf).0, 0);
    assert!(d.cli(&["network", "delete", &net]).status.success());
    assert_eq!(world(&d), baseline, "something leaked");
}

#[test]
fn cni_0_4_0_result_and_requested_ip() {
    if !env_ready("cni_0_4_0_result_and_requested_ip") {
        return;
    }
    let d = TestDaemon::start("cni04");
    let net = unique("cni04");
    let subnet = subnet_for(2);
    d.create_network(&net, &subnet);
    let want = subnet.replace(".0/24", ".77");
    let conf = json!({"cniVersion": "0.4.0", "name": net, "type": "courier", "socket": d.socket,
        "runtimeConfig": {"ips": [format!("{want}/24")]}})
    .to_string();
    let a = Netns::new("cni04-a");
    let (code, r) = d.cni("ADD", "c04", &a.path(), "eth0", &conf);
    assert_eq!(code, 0, "{r}\n{}", d.log());
    assert_eq!(r["ips"][0]["version"], "4");
    assert_eq!(r["ips"][0]["address"], format!("{want}/24"));
    let addr = a.exec(&["ip", "-o", "-4", "addr", "show", "eth0"]);
    assert!(String::from_utf8_lossy(&addr.stdout).contains(&format!("{want}/24")));
    assert_eq!(d.cni("DEL", "c04", &a.path(), "eth0", &conf).0, 0);
    assert!(d.cli(&["network", "delete", &net]).status.success());
}
