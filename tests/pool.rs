//! Port pools on OVN direct (issue 22), against the real OVN NB, OVS, ovn-controller and kernel:
//! a pooled attach takes a port made ahead (the NB rows are not touched: no backend write),
//! the containers talk, a detach gives the port back, a restart recovers the pool before it
//! serves, drain and network delete leave nothing; every crash point of refill, take and
//! return leaks nothing and never hands a port to two containers.
mod common;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Pools on, refilled only when asked (min 0), so a test sees exactly what it filled.
const POOL_ENV: &[(&str, &str)] = &[
    ("COURIER_POOL", "1"),
    ("COURIER_POOL_MIN", "0"),
    ("COURIER_POOL_BATCH", "3"),
];

fn with_pool<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    POOL_ENV
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .collect()
}

/// The NB rows of the switch's ports that an attach could write (not `up`, which ovn-northd
/// sets from the binding): name → (uuid, addresses, dynamic_addresses, port_security,
/// external_ids, options, enabled).
fn lsp_rows(switch: &str) -> BTreeMap<String, String> {
    let ports = nbctl(&[
        "--bare",
        "--columns=ports",
        "list",
        "Logical_Switch",
        switch,
    ]);
    let mut out = BTreeMap::new();
    for uuid in ports.split_whitespace() {
        let row = nbctl(&[
            "--bare",
            "--columns=_uuid,name,addresses,dynamic_addresses,port_security,external_ids,options,enabled,tag,parent_name,type",
            "list",
            "Logical_Switch_Port",
            uuid,
        ]);
        let name = row.lines().nth(1).unwrap_or("").trim().to_string();
        out.insert(name, row);
    }
    out
}

fn pools(d: &TestDaemon) -> Vec<Value> {
    let (code, v) = d.api("GET", "/v1/pools", None);
    assert_eq!(code, 200, "{v}");
    v.as_array().cloned().unwrap_or_default()
}

/// (free, taken, creating) of the one pool on `network`, once every pool is recovered (after
/// a restart, recovery waits for the backend to connect, which may come after the first pass).
fn counts(d: &TestDaemon, network: &str) -> (u64, u64, u64) {
    assert!(
        eventually(Duration::from_secs(10), || pools(d)
            .iter()
            .all(|p| p["recovered"] == true)),
        "pools not recovered: {:?}",
        pools(d)
    );
    let p: Vec<Value> = pools(d)
        .into_iter()
        .filter(|p| p["network"] == network)
        .collect();
    match p.as_slice() {
        [] => (0, 0, 0),
        [p] => (
            p["free"].as_u64().unwrap(),
            p["taken"].as_u64().unwrap(),
            p["creating"].as_u64().unwrap(),
        ),
        more => panic!("{} pools on {network}: {more:?}", more.len()),
    }
}

/// `courier pool fill NETWORK --count N`; "try again" (the pools' recovery after start, which
/// waits for the backend to connect) is retried for up to 10 s.
fn fill(d: &TestDaemon, network: &str, count: usize) {
    let n = count.to_string();
    let args = ["pool", "fill", network, "--count", &n];
    let mut out = d.cli(&args);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !out.status.success()
        && String::from_utf8_lossy(&out.stderr).contains("try again")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
        out = d.cli(&args);
    }
    assert!(
        out.status.success(),
        "pool fill: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip_of(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .unwrap_or_default()
        .to_string()
}

/// The pooled ports' IPs as the store's slots record them.
fn pooled_ips(d: &TestDaemon, network: &str) -> BTreeSet<String> {
    let (code, v) = d.api("GET", &format!("/v1/pools/{network}"), None);
    assert_eq!(code, 200, "{v}");
    v["slots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["slot"]["port"]["ips"][0].as_str())
        .map(|a| a.split('/').next().unwrap_or(a).to_string())
        .collect()
}

fn attachment_of(d: &TestDaemon, container: &str) -> Value {
    d.store()
        .into_iter()
        .find(|a| a["container_id"] == container)
        .unwrap_or(Value::Null)
}

#[test]
fn pooled_attach_makes_no_backend_write_and_the_port_goes_back() {
    if !env_ready("pooled_attach_makes_no_backend_write_and_the_port_goes_back") {
        return;
    }
    let mut d = TestDaemon::start_with("pool-a", POOL_ENV);
    let net = unique("pool-a");
    d.create_network(&net, &subnet_for(61));
    let conf = d.netconf(&net, "1.1.0");
    fill(&d, &net, 3);
    assert_eq!(counts(&d, &net), (3, 0, 0));
    let owned0 = owned(&d);
    assert_eq!(owned0.lsps.len(), 3, "three pooled LSPs: {owned0:?}");
    // Their edges pre-plugged: a veth each, its host end on br-int bound to the port (flows
    // installed), the other end waiting in the host netns.
    assert_eq!(owned0.ovs_ports.len(), 3, "{owned0:?}");
    assert_eq!(owned0.links.len(), 6, "{owned0:?}");
    for p in &owned0.ovs_ports {
        let installed = sh_ok(
            "ovs-vsctl",
            &["get", "interface", p, "external_ids:ovn-installed"],
        );
        assert_eq!(installed.trim(), "\"true\"", "{p}");
    }
    let before = lsp_rows(&net);
    let bridge_before = sh_ok("ovs-vsctl", &["list-ports", "br-int"]);
    let ips = pooled_ips(&d, &net);
    assert_eq!(ips.len(), 3);

    let (a, b) = (Netns::new("pool-a1"), Netns::new("pool-a2"));
    let (code, ra) = d.cni("ADD", "pa1", &a.path(), "eth0", &conf);
    assert_eq!(code, 0, "{ra}\n{}", d.log());
    let (code, rb) = d.cni("ADD", "pb1", &b.path(), "eth0", &conf);
    assert_eq!(code, 0, "{rb}");
    // No backend write: every NB row of the switch as it was (same ports, same uuids, same
    // addresses, marks and options).
    assert_eq!(lsp_rows(&net), before, "a pooled attach wrote to the NB");
    assert_eq!(
        sh_ok("ovs-vsctl", &["list-ports", "br-int"]),
        bridge_before,
        "a pooled attach changed the switch"
    );
    // The container's interface is a macvlan (passthru) on a pooled veth's waiting end.
    let link: Value =
        serde_json::from_slice(&a.exec(&["ip", "-d", "-j", "link", "show", "eth0"]).stdout)
            .unwrap();
    assert_eq!(link[0]["linkinfo"]["info_kind"], "macvlan", "{link}");
    assert_eq!(
        link[0]["linkinfo"]["info_data"]["mode"], "passthru",
        "{link}"
    );
    let (ipa, ipb) = (ip_of(&ra), ip_of(&rb));
    assert!(
        ips.contains(&ipa) && ips.contains(&ipb) && ipa != ipb,
        "{ipa} {ipb} of {ips:?}"
    );
    let att_a = attachment_of(&d, "pa1");
    assert!(att_a["pool_slot"].is_string(), "{att_a}");
    assert!(
        att_a["claims"][0]
            .as_str()
            .unwrap_or("")
            .starts_with("poolslot:"),
        "{att_a}"
    );
    assert_eq!(counts(&d, &net), (1, 2, 0));
    assert!(a.ping(&ipb), "pooled containers talk\n{}", d.log());
    assert!(b.ping(&ipa));
    assert!(d.log().contains("took a pooled port"));

    // DEL gives the port back: the LSP stays as it was, the edge goes.
    assert_eq!(d.cni("DEL", "pa1", &a.path(), "eth0", &conf).0, 0);
    assert_eq!(counts(&d, &net), (2, 1, 0));
    assert_eq!(lsp_rows(&net), before, "give back changed the NB");
    assert!(!a.has_link("eth0"));
    let o = owned(&d);
    assert_eq!(
        (&o.lsps, &o.ovs_ports, &o.links),
        (&owned0.lsps, &owned0.ovs_ports, &owned0.links),
        "only the pool's, edges kept"
    );

    // A restart: the pool is recovered before it serves, and serves again.
    d.restart(POOL_ENV);
    assert_eq!(counts(&d, &net), (2, 1, 0), "{}", d.log());
    let (code, ra2) = d.cni("ADD", "pa2", &a.path(), "eth0", &conf);
    assert_eq!(code, 0, "{ra2}");
    assert!(ips.contains(&ip_of(&ra2)));
    assert!(a.ping(&ipb));
    assert_eq!(counts(&d, &net), (1, 2, 0));
    assert_eq!(lsp_rows(&net), before);

    // A forgotten DEL (the netns deleted): reconcile detaches, the slot and its edge come
    // back whole, and the next attach is served from them.
    let gone = Netns::new("pool-a5");
    let (code, rg) = d.cni("ADD", "pg1", &gone.path(), "eth0", &conf);
    assert_eq!(code, 0, "{rg}");
    assert_eq!(counts(&d, &net), (0, 3, 0));
    drop(gone);
    let (code, rep) = d.api("POST", "/v1/reconcile", None);
    assert_eq!(code, 200, "{rep}");
    assert_eq!(
        rep["detached_gone_netns"].as_array().map(Vec::len),
        Some(1),
        "{rep}"
    );
    assert_eq!(counts(&d, &net), (1, 2, 0));
    let again = Netns::new("pool-a6");
    let (code, rg2) = d.cni("ADD", "pg2", &again.path(), "eth0", &conf);
    assert_eq!(code, 0, "{rg2}");
    assert_eq!(ip_of(&rg2), ip_of(&rg), "the same pooled port again");
    assert!(again.ping(&ipb));
    assert_eq!(d.cni("DEL", "pg2", &again.path(), "eth0", &conf).0, 0);

    // The pool empty: the next attach goes cold (a port of its own, deleted at DEL).
    let c = Netns::new("pool-a3");
    let (code, rc) = d.cni("ADD", "pc1", &c.path(), "eth0", &conf);
    assert_eq!(code, 0, "{rc}");
    assert!(c.ping(&ipb));
    let (code, rd) = d.cni("ADD", "pd1", &Netns::new("pool-a4").path(), "eth0", &conf);
    assert_eq!(code, 0, "{rd}");
    assert!(attachment_of(&d, "pd1")["pool_slot"].is_null());
    assert!(!ips.contains(&ip_of(&rd)), "cold port is not a pooled one");
    let p = pools(&d);
    assert!(p[0]["stats"]["hits"].as_u64().unwrap() >= 1, "{p:?}");
    assert!(p[0]["stats"]["misses"].as_u64().unwrap() >= 1, "{p:?}");
    d.cni("DEL", "pd1", &Netns::new("pool-a4").path(), "eth0", &conf);

    // Drain deletes the free ones only; network delete drains the rest once nothing is taken.
    assert_eq!(d.cni("DEL", "pc1", &c.path(), "eth0", &conf).0, 0);
    let out = d.cli(&["pool", "drain", &net]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(counts(&d, &net), (0, 2, 0));
    assert_eq!(owned(&d).lsps.len(), 2);
    for (ctr, ns) in [("pa2", &a), ("pb1", &b)] {
        assert_eq!(d.cni("DEL", ctr, &ns.path(), "eth0", &conf).0, 0);
    }
    assert_eq!(counts(&d, &net), (2, 0, 0));
    let out = d.cli(&["network", "delete", &net]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(owned(&d).is_empty(), "{:?}", owned(&d));
    assert!(nbctl(&[
        "--bare",
        "--columns=name",
        "find",
        "Logical_Switch",
        &format!("name={net}")
    ])
    .trim()
    .is_empty());
    assert!(pools(&d).is_empty(), "{:?}", pools(&d));
}

/// A pool's metrics and its `courier pool list|show` output.
#[test]
fn pool_list_show_and_metrics() {
    if !env_ready("pool_list_show_and_metrics") {
        return;
    }
    let d = TestDaemon::start_with("pool-m", POOL_ENV);
    let net = unique("pool-m");
    d.create_network(&net, &subnet_for(62));
    fill(&d, &net, 2);
    let ns = Netns::new("pool-m1");
    let conf = d.netconf(&net, "1.1.0");
    assert_eq!(d.cni("ADD", "pm1", &ns.path(), "eth0", &conf).0, 0);
    let out = d.cli(&["pool", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    let line = text
        .lines()
        .find(|l| l.contains(&net))
        .unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&cols[2..5], &["veth-ovs", "1", "1"], "{text}");
    let out = d.cli(&["pool", "show", &net]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.lines().filter(|l| l.contains("courier-p")).count(),
        2,
        "{text}"
    );
    let metrics = sh_ok(
        "curl",
        &[
            "-s",
            "--unix-socket",
            d.socket.to_str().unwrap(),
            "http://x/metrics",
        ],
    );
    for want in [
        format!(
            "courier_pool_ports{{pool=\"{}\",network=\"{net}\",state=\"free\"}} 1",
            cols[0]
        ),
        format!(
            "courier_pool_ports{{pool=\"{}\",network=\"{net}\",state=\"taken\"}} 1",
            cols[0]
        ),
        format!(
            "courier_pool_takes_total{{pool=\"{}\",network=\"{net}\",state=\"hit\"}} 1",
            cols[0]
        ),
        format!(
            "courier_pool_refills_total{{pool=\"{}\",network=\"{net}\",state=\"ok\"}} 1",
            cols[0]
        ),
    ] {
        assert!(metrics.contains(&want), "{want} in\n{metrics}");
    }
    assert_eq!(d.cni("DEL", "pm1", &ns.path(), "eth0", &conf).0, 0);
    assert!(d.cli(&["network", "delete", &net]).status.success());
    assert!(owned(&d).is_empty());
}

/// Bad pool requests are refused with what to do, and change nothing.
#[test]
fn bad_pool_requests_change_nothing() {
    if !env_ready("bad_pool_requests_change_nothing") {
        return;
    }
    let d = TestDaemon::start_with("pool-bad", POOL_ENV);
    let net = unique("pool-bad");
    d.create_network(&net, &subnet_for(63));
    let before = lsp_rows(&net);
    for (args, want) in [
        (
            vec!["pool", "fill", "no-such-net", "--count", "2"],
            "no-such-net",
        ),
        (vec!["pool", "fill", &net, "--count", "0"], "count 0"),
        (vec!["pool", "show", "nope"], "no pool"),
    ] {
        let out = d.cli(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert_eq!(lsp_rows(&net), before);
    assert!(pools(&d)
        .iter()
        .all(|p| p["free"] == 0 && p["creating"] == 0));
    // Pools off: fill says how to turn them on.
    let off = TestDaemon::start_with("pool-off", &[]);
    let out = off.cli(&["pool", "fill", &net, "--count", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("COURIER_POOL=1"),
        "{err}"
    );
    assert_eq!(lsp_rows(&net), before);
    assert!(d.cli(&["network", "delete", &net]).status.success());
}

/// kill -9 at every step of refill, take and return: after restart nothing leaked (every LSP
/// of the host's mark is a pool slot's or an attachment's), no slot is held twice, and the
/// pool serves again.
#[test]
fn pool_kill9_at_every_step_leaks_nothing() {
    if !hooks_ready("pool_kill9_at_every_step_leaks_nothing") {
        return;
    }
    let mut d = TestDaemon::start_with("pool-crash", POOL_ENV);
    let net = unique("pool-crash");
    d.create_network(&net, &subnet_for(64));
    let conf = d.netconf(&net, "1.1.0");
    let ns = Netns::new("pool-crash");
    // Refill cut short: before the bulk create, and after it before the slots are ready.
    for step in ["pool-after-slots", "pool-after-create", "pool-after-edges"] {
        d.restart(&with_pool(&[("COURIER_CRASH_AT", step)]));
        let out = d.cli(&["pool", "fill", &net, "--count", "3"]);
        assert!(
            !out.status.success(),
            "{step}: fill should fail with the daemon"
        );
        d.wait_exit(Duration::from_secs(10));
        d.restart(POOL_ENV);
        assert_eq!(counts(&d, &net), (0, 0, 0), "{step}\n{}", d.log());
        assert!(
            owned(&d).is_empty(),
            "{step}: {:?}
{}",
            owned(&d),
            d.log()
        );
    }
    // A pooled port whose slot record is gone (a lost store): the sweep deletes it.
    let system_id = sh_ok("ovs-vsctl", &["get", "open", ".", "external_ids:system-id"]);
    let machine = system_id.trim().trim_matches('"');
    let stray = format!("courier-p0123456789{}", std::process::id() % 10);
    nbctl(&[
        "lsp-add",
        &net,
        &stray,
        "--",
        "set",
        "Logical_Switch_Port",
        &stray,
        "external_ids:courier-owner=courier",
        &format!("external_ids:courier-host={}", host_mark(&d)),
        &format!(
            "external_ids:courier-attachment=p0123456789{}",
            std::process::id() % 10
        ),
        &format!("external_ids:courier-machine={machine}"),
    ]);
    let (code, rep) = d.api("POST", "/v1/reconcile", None);
    assert_eq!(code, 200, "{rep}");
    assert!(rep["leaked_ports"].to_string().contains(&stray), "{rep}");
    assert!(owned(&d).lsps.is_empty());

    // Take and return cut short at every step: the slot is free again and its port kept.
    fill(&d, &net, 2);
    let pooled = owned(&d);
    assert_eq!(
        (
            pooled.lsps.len(),
            pooled.ovs_ports.len(),
            pooled.links.len()
        ),
        (2, 2, 4)
    );
    // A pooled edge is on the switch already: no after-ovs-port step.
    let take_steps: Vec<&str> = ATTACH_STEPS
        .iter()
        .copied()
        .filter(|s| *s != "after-ovs-port")
        .collect();
    for step in &take_steps {
        d.restart(&with_pool(&[("COURIER_CRASH_AT", step)]));
        let (code, out) = d.cni("ADD", "pcr", &ns.path(), "eth0", &conf);
        assert_ne!(code, 0, "{step}: {out}");
        d.wait_exit(Duration::from_secs(10));
        d.restart(POOL_ENV);
        assert_eq!(counts(&d, &net), (2, 0, 0), "{step}\n{}", d.log());
        let o = owned(&d);
        assert_eq!(
            o, pooled,
            "{step}: the pool's ports and edges kept, nothing else"
        );
        assert!(!ns.has_link("eth0"), "{step}");
    }
    for step in DETACH_STEPS.iter().chain(&["pool-before-return"]) {
        d.restart(POOL_ENV);
        let (code, out) = d.cni("ADD", "pcr", &ns.path(), "eth0", &conf);
        assert_eq!(code, 0, "{step}: {out}");
        assert_eq!(counts(&d, &net), (1, 1, 0));
        d.restart(&with_pool(&[("COURIER_CRASH_AT", step)]));
        let (code, _) = d.cni("DEL", "pcr", &ns.path(), "eth0", &conf);
        assert_ne!(code, 0, "{step}");
        d.wait_exit(Duration::from_secs(10));
        d.restart(POOL_ENV);
        // The detach is finished by reconcile (or the next DEL), and the slot is free.
        assert_eq!(
            d.cni("DEL", "pcr", &ns.path(), "eth0", &conf).0,
            0,
            "{step}"
        );
        assert_eq!(counts(&d, &net), (2, 0, 0), "{step}\n{}", d.log());
        let o = owned(&d);
        assert_eq!(
            o, pooled,
            "{step}: the pool's ports and edges kept, nothing else"
        );
    }
    // Every step above was reached (a step that is never hit would pass vacuously).
    let crashes = d.log().matches("COURIER_CRASH_AT reached").count();
    assert_eq!(crashes, 3 + take_steps.len() + DETACH_STEPS.len() + 1);
    assert!(d.cli(&["network", "delete", &net]).status.success());
    assert!(owned(&d).is_empty());
}

/// Concurrent attaches drawing from one pool: none gets a port another holds, the pool's
/// ports are all handed out, the rest go cold, and every container reaches the others.
#[test]
fn concurrent_attaches_never_share_a_pooled_port() {
    if !env_ready("concurrent_attaches_never_share_a_pooled_port") {
        return;
    }
    const N: usize = 24;
    let d = TestDaemon::start_with("pool-conc", POOL_ENV);
    let net = unique("pool-conc");
    d.create_network(&net, &subnet_for(65));
    fill(&d, &net, N / 2);
    let conf = d.netconf(&net, "1.1.0");
    let nss: Vec<Netns> = (0..N).map(|i| Netns::new(&format!("pc{i}"))).collect();
    let results: Vec<(i32, Value)> = std::thread::scope(|s| {
        let hs: Vec<_> = nss
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let conf = &conf;
                s.spawn(move || cni_exec("ADD", &format!("pc{i}"), &ns.path(), "eth0", conf, &[]))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips = BTreeSet::new();
    for (code, r) in &results {
        assert_eq!(*code, 0, "{r}\n{}", d.log());
        assert!(ips.insert(ip_of(r)), "an address given twice: {r}");
    }
    let atts = d.store();
    let slots: Vec<&str> = atts
        .iter()
        .filter_map(|a| a["pool_slot"].as_str())
        .collect();
    let distinct: BTreeSet<&&str> = slots.iter().collect();
    assert_eq!(
        slots.len(),
        N / 2,
        "every pooled port handed out once: {slots:?}"
    );
    assert_eq!(distinct.len(), slots.len(), "a slot held twice: {slots:?}");
    assert_eq!(counts(&d, &net), (0, (N / 2) as u64, 0));
    for (i, ns) in nss.iter().enumerate() {
        let peer = &ip_of(&results[(i + 1) % N].1);
        assert!(ns.ping(peer), "pc{i} reaches {peer}");
    }
    std::thread::scope(|s| {
        for (i, ns) in nss.iter().enumerate() {
            let conf = &conf;
            s.spawn(move || {
                assert_eq!(
                    cni_exec("DEL", &format!("pc{i}"), &ns.path(), "eth0", conf, &[]).0,
                    0
                )
            });
        }
    });
    assert_eq!(counts(&d, &net), ((N / 2) as u64, 0, 0));
    let o = owned(&d);
    assert_eq!(
        (
            o.lsps.len(),
            o.ovs_ports.len(),
            o.links.len(),
            o.records.len()
        ),
        (N / 2, N / 2, N, 0),
        "only the pool's ports and edges are left: {o:?}"
    );
    assert!(d.cli(&["network", "delete", &net]).status.success());
    assert!(owned(&d).is_empty());
}

/// A Neutron network's pool: one bulk POST makes its ports (bound to this host, with their
/// edges); pooled attaches change no Neutron port (same ids, same revision numbers), the
/// containers talk, DEL gives the ports back, network delete drains them: nothing is left.
#[test]
fn neutron_pool_takes_ports_without_a_write() {
    let Some(n) = NeutronEnv::get("neutron_pool_takes_ports_without_a_write") else {
        return;
    };
    let d = neutron_daemon("pool-neu", &n, POOL_ENV);
    let net = unique("pool-neu");
    let out = d.cli(&[
        "network",
        "create",
        &net,
        "--backend",
        "neutron",
        "--subnet",
        "10.219.0.0/24",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _guard = NeutronNetGuard(net.clone());
    let show: Value =
        serde_json::from_slice(&d.cli(&["network", "show", &net, "--json"]).stdout).unwrap();
    let net_id = show["backend_id"].as_str().unwrap().to_string();
    fill(&d, &net, 2);
    assert_eq!(counts(&d, &net), (2, 0, 0));
    let revisions = || -> BTreeMap<String, (Value, Value, Value)> {
        n.ports_on(&net_id)
            .into_iter()
            .map(|p| {
                (
                    p["id"].as_str().unwrap_or("").to_string(),
                    (
                        p["revision_number"].clone(),
                        p["device_id"].clone(),
                        p["binding:host_id"].clone(),
                    ),
                )
            })
            .collect()
    };
    // The pooled ports are bound with their edges: Neutron turns them ACTIVE (and bumps their
    // revision) after the fill; the snapshot is taken once that settled.
    assert!(
        eventually(Duration::from_secs(20), || {
            let ps = n.ports_on(&net_id);
            ps.len() == 2 && ps.iter().all(|p| p["status"] == "ACTIVE")
        }),
        "pooled ports not ACTIVE: {:?}",
        n.ports_on(&net_id)
    );
    std::thread::sleep(Duration::from_secs(1));
    let before = revisions();
    assert_eq!(before.len(), 2, "{before:?}");
    for (id, (_, device, host)) in &before {
        assert!(
            device.as_str().is_some_and(|d| d.starts_with('p')),
            "{id}: {device}"
        );
        assert!(
            host.as_str().is_some_and(|h| !h.is_empty()),
            "{id}: bound to this host"
        );
    }
    let conf = d.netconf(&net, "1.1.0");
    let (a, b) = (Netns::new("pool-neu1"), Netns::new("pool-neu2"));
    let (code, ra) = d.cni("ADD", "pn1", &a.path(), "eth0", &conf);
    assert_eq!(code, 0, "{ra}\n{}", d.log());
    let (code, rb) = d.cni("ADD", "pn2", &b.path(), "eth0", &conf);
    assert_eq!(code, 0, "{rb}");
    assert_eq!(revisions(), before, "a pooled attach wrote to Neutron");
    assert_eq!(counts(&d, &net), (0, 2, 0));
    assert!(a.ping(&ip_of(&rb)), "{}", d.log());
    assert!(b.ping(&ip_of(&ra)));
    for (c, ns) in [("pn1", &a), ("pn2", &b)] {
        assert_eq!(d.cni("DEL", c, &ns.path(), "eth0", &conf).0, 0);
    }
    assert_eq!(counts(&d, &net), (2, 0, 0));
    assert_eq!(revisions(), before, "give back wrote to Neutron");
    let out = d.cli(&["network", "delete", &net]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(n.networks_named(&net).is_empty());
    assert!(n.owned_ports(&d).is_empty(), "{:?}", n.owned_ports(&d));
    assert!(owned(&d).is_empty(), "{:?}", owned(&d));
}

/// 200 containers started at once, all served from one pool of 200: every one gets its own
/// pooled port (none handed out twice, none cold), each reaches two others (the next and the
/// one halfway round), and after 200 DELs at once the pool holds its 200 ports again and
/// nothing else is left; network delete then leaves nothing at all.
#[test]
fn two_hundred_containers_at_once_from_one_pool() {
    if !env_ready("two_hundred_containers_at_once_from_one_pool") {
        return;
    }
    const N: usize = 200;
    let d = TestDaemon::start_with("pool-200", POOL_ENV);
    let net = unique("pool-200");
    d.create_network(&net, &subnet_for(66));
    fill(&d, &net, N);
    assert_eq!(counts(&d, &net), (N as u64, 0, 0));
    let conf = d.netconf(&net, "1.1.0");
    let nss: Vec<Netns> = (0..N).map(|i| Netns::new(&format!("p2h{i}"))).collect();
    let results: Vec<(i32, Value)> = std::thread::scope(|s| {
        let hs: Vec<_> = nss
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let conf = &conf;
                s.spawn(move || cni_exec("ADD", &format!("p2h{i}"), &ns.path(), "eth0", conf, &[]))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (code, r) in &results {
        assert_eq!(*code, 0, "{r}\n{}", d.log());
    }
    let ips: BTreeSet<String> = results.iter().map(|(_, r)| ip_of(r)).collect();
    assert_eq!(ips.len(), N, "an address given twice");
    let slots: BTreeSet<String> = d
        .store()
        .iter()
        .filter_map(|a| a["pool_slot"].as_str().map(String::from))
        .collect();
    assert_eq!(slots.len(), N, "every container on its own pooled port");
    assert_eq!(counts(&d, &net), (0, N as u64, 0));
    // Each pings the next and the one halfway round, 20 at a time.
    let unreachable: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..20)
            .map(|t| {
                let (nss, results) = (&nss, &results);
                s.spawn(move || {
                    let mut bad = Vec::new();
                    for i in (t..N).step_by(20) {
                        for j in [(i + 1) % N, (i + N / 2) % N] {
                            let peer = ip_of(&results[j].1);
                            if !nss[i].ping(&peer) {
                                bad.push(format!("p2h{i} -> p2h{j} ({peer})"));
                            }
                        }
                    }
                    bad
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert!(unreachable.is_empty(), "unreachable: {unreachable:?}");
    std::thread::scope(|s| {
        for (i, ns) in nss.iter().enumerate() {
            let conf = &conf;
            s.spawn(move || {
                assert_eq!(
                    cni_exec("DEL", &format!("p2h{i}"), &ns.path(), "eth0", conf, &[]).0,
                    0
                )
            });
        }
    });
    assert_eq!(counts(&d, &net), (N as u64, 0, 0));
    let o = owned(&d);
    assert_eq!(
        (
            o.lsps.len(),
            o.ovs_ports.len(),
            o.links.len(),
            o.records.len()
        ),
        (N, N, 2 * N, 0)
    );
    let out = d.cli(&["network", "delete", &net]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(owned(&d).is_empty(), "{:?}", owned(&d));
}
