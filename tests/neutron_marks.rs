//! How Courier finds its own Neutron resources when their tags never came (issue 20, item 1):
//! on a Neutron without `tag_ports_during_bulk_creation` (the noauth API of scripts/neutron.sh,
//! which also pages every list by 5) tags are set by a PUT after the POST. That PUT refused
//! (a fault proxy in front of the real Neutron answers it 403), or the daemon killed between
//! the POST and the PUT, must leave no port and no network behind — counted on the whole
//! network and by name, not by Courier's tags. An orphan port with an attachment's derived name
//! beside that attachment's live port (a POST that completed inside Neutron after the daemon
//! died) is swept, and the live one is kept.
mod common;
use std::time::Duration;

use common::proxy::Proxy;
use common::*;
use serde_json::{json, Value};

fn noauth_clouds(proxy: &Proxy, dir: &std::path::Path) -> String {
    let clouds = dir.join("clouds.yaml");
    std::fs::write(
        &clouds,
        format!(
            "clouds:\n  lab:\n    auth_type: noauth\n    network_endpoint_override: http://{}\n",
            proxy.remote.trim_start_matches("tcp:")
        ),
    )
    .unwrap();
    clouds.display().to_string()
}

fn network_create(d: &TestDaemon, name: &str, subnet: &str) -> std::process::Output {
    d.cli(&[
        "network",
        "create",
        name,
        "--backend",
        "neutron",
        "--subnet",
        subnet,
    ])
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn untagged_ports_and_networks_are_found_and_nothing_is_left() {
    let test = "untagged_ports_and_networks_are_found_and_nothing_is_left";
    let Some(n) = NeutronEnv::get(test) else {
        return;
    };
    if !hooks_ready(test) {
        return;
    }
    let proxy = Proxy::tcp("tcp:127.0.0.1:9697");
    let dir = tempfile::tempdir().unwrap();
    let clouds = noauth_clouds(&proxy, dir.path());
    let env = [
        ("OS_CLIENT_CONFIG_FILE", clouds.as_str()),
        ("COURIER_NEUTRON_CLOUD", "lab"),
        ("COURIER_NEUTRON_HOST_ID", n.host_id.as_str()),
    ];
    let with = |extra: Option<(&'static str, &'static str)>| {
        let mut v: Vec<(&str, &str)> = env.to_vec();
        v.extend(extra);
        v
    };
    let mut d = TestDaemon::start_with("neu-marks", &env);
    wait_backends(&d);
    let net = unique("neu-marks");
    let out = network_create(&d, &net, "10.226.0.0/24");
    assert!(out.status.success(), "{}", stderr(&out));
    let net_id = {
        let nets = n.networks_named(&net);
        assert_eq!(nets.len(), 1, "{nets:?}");
        nets[0]["id"].as_str().unwrap().to_string()
    };
    let conf = d.netconf(&net, "1.1.0");
    let ns = Netns::new("neu-marks");

    // 1. Neutron refuses the tags' PUT: ADD fails with an error that says what to check, and
    // no port is left on the network (by any mark or none).
    proxy.refuse("PUT", "/tags");
    let (code, out) = d.cni("ADD", "m1", &ns.path(), "eth0", &conf);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.to_string().contains("update_port:tags"),
        "the error names the policy to check: {out}"
    );
    assert!(
        n.ports_on(&net_id).is_empty(),
        "a port whose tags were refused is left: {:?}",
        n.ports_on(&net_id)
    );
    assert!(d.store().is_empty(), "{:?}", d.store());
    assert!(!ns.has_link("eth0"));

    // The same for a network: `network create` fails clearly, no network of that name is left.
    let net2 = unique("neu-marks2");
    let out = network_create(&d, &net2, "10.226.1.0/24");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("update_network:tags"),
        "{}",
        stderr(&out)
    );
    assert!(
        n.networks_named(&net2).is_empty(),
        "{:?}",
        n.networks_named(&net2)
    );
    proxy.refuse_nothing();

    // 2. kill -9 between the port POST and the tags' PUT: after the restart's reconcile no port
    // is left on the network, and the record is gone.
    d.restart(&with(Some(("COURIER_CRASH_AT", "after-port-post"))));
    wait_backends(&d);
    let (code, out) = d.cni("ADD", "m2", &ns.path(), "eth0", &conf);
    assert_ne!(code, 0, "the daemon dies at after-port-post: {out}");
    d.wait_exit(Duration::from_secs(20));
    let untagged = n.ports_on(&net_id);
    assert_eq!(untagged.len(), 1, "the POST made its port: {untagged:?}");
    assert_eq!(untagged[0]["tags"], json!([]), "{untagged:?}");
    d.restart(&with(None));
    wait_backends(&d);
    assert!(
        eventually(Duration::from_secs(20), || {
            d.api("POST", "/v1/reconcile", None);
            n.ports_on(&net_id).is_empty() && d.store().is_empty()
        }),
        "left after the restart: {:?} {:?}\n{}",
        n.ports_on(&net_id),
        d.store(),
        d.log()
    );

    // kill -9 between the network POST and its tags' PUT: the network is still Courier's
    // (found by the description its POST set), so `network delete` removes it.
    let net3 = unique("neu-marks3");
    d.restart(&with(Some(("COURIER_CRASH_AT", "after-network-post"))));
    wait_backends(&d);
    let out = network_create(&d, &net3, "10.226.2.0/24");
    assert!(!out.status.success());
    d.wait_exit(Duration::from_secs(20));
    let made = n.networks_named(&net3);
    assert_eq!(made.len(), 1, "the POST made the network: {made:?}");
    assert_eq!(made[0]["tags"], json!([]), "{made:?}");
    d.restart(&with(None));
    wait_backends(&d);
    let shown = d.cli(&["network", "show", &net3]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    let out = d.cli(&["network", "delete", &net3]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        n.networks_named(&net3).is_empty(),
        "{:?}",
        n.networks_named(&net3)
    );

    // 3. An orphan beside a live attachment: a port with the attachment's derived name and the
    // create's mark but another id (what a POST in flight when the daemon died leaves once the
    // same container is attached again). Reconcile deletes it and keeps the live one.
    let (code, out) = d.cni("ADD", "m3", &ns.path(), "eth0", &conf);
    assert_eq!(code, 0, "{out}");
    let live = n.ports_on(&net_id);
    assert_eq!(live.len(), 1, "{live:?}");
    let live_id = live[0]["id"].as_str().unwrap().to_string();
    let (code, orphan) = n.call(
        "POST",
        "/ports",
        Some(json!({"port": {
            "network_id": net_id,
            "name": live[0]["name"],
            "description": live[0]["description"],
            "device_id": live[0]["device_id"],
            "device_owner": live[0]["device_owner"],
        }})),
    );
    assert_eq!(code, 201, "{orphan}");
    let orphan_id = orphan["port"]["id"].as_str().unwrap().to_string();
    let (code, report) = d.api("POST", "/v1/reconcile", None);
    assert_eq!(code, 200, "{report}");
    let ids: Vec<Value> = n
        .ports_on(&net_id)
        .iter()
        .map(|p| p["id"].clone())
        .collect();
    assert_eq!(
        ids,
        vec![json!(live_id)],
        "the orphan {orphan_id} goes, the live port stays: {report}"
    );
    let (code, out) = d.cni("CHECK", "m3", &ns.path(), "eth0", &conf);
    assert_eq!(code, 0, "the live attachment is intact: {out}");
    let (code, out) = d.cni("DEL", "m3", &ns.path(), "eth0", &conf);
    assert_eq!(code, 0, "{out}");
    assert!(n.ports_on(&net_id).is_empty(), "{:?}", n.ports_on(&net_id));

    // The network goes too (its metadata port with it: Neutron's own), and nothing is left.
    let out = d.cli(&["network", "delete", &net]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(n.networks_named(&net).is_empty());
    let (_, v) = n.api("GET", &format!("/ports?network_id={net_id}"));
    assert_eq!(
        v["ports"],
        json!([]),
        "Neutron's own ports go with the network"
    );
}
