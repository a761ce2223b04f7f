//! Docker's libnetwork front door against a real Docker Engine (Debian's docker.io 20.10, from
//! scripts/docker.sh) on the real OVN, and Neutron from scripts/neutron.sh.
mod common;
use std::time::Duration;

use common::docker::*;
use common::*;
use serde_json::{json, Value};

/// The Courier network Docker network `id` became (`docker-<id[:12]>`).
fn courier_name(id: &str) -> String {
    format!("docker-{}", &id[..12])
}

fn switch_exists(name: &str) -> bool {
    !nbctl(&[
        "--bare",
        "--columns=name",
        "find",
        "Logical_Switch",
        &format!("name={name}"),
    ])
    .trim()
    .is_empty()
}

/// Counts of what daemon `d` owns: (LSPs, OVS ports, host links, records).
fn counts(d: &TestDaemon) -> (usize, usize, usize, usize) {
    let o = owned(d);
    (
        o.lsps.len(),
        o.ovs_ports.len(),
        o.links.len(),
        o.records.len(),
    )
}

#[test]
fn ovn_direct_containers_talk_connect_disconnect_and_leave_nothing() {
    let t = "ovn_direct_containers_talk_connect_disconnect_and_leave_nothing";
    if !docker_ready(t) {
        return;
    }
    let d = docker_daemon("dk-ovn", &[]);
    let (plugin, _) = plugin_for("dk-ovn");
    let mut s = DockerScope::default();
    let (n1, n2) = (unique("dk-a"), unique("dk-b"));
    let id1 = s.network(&plugin, &n1, &["--subnet", &subnet_for(41)]);
    let id2 = s.network(&plugin, &n2, &["--subnet", &subnet_for(42)]);
    assert!(
        switch_exists(&courier_name(&id1)),
        "a logical switch per Docker network"
    );
    let (c1, c2, c3) = (unique("dk-c1"), unique("dk-c2"), unique("dk-c3"));
    s.run_ok(&c1, &["--network", &n1]);
    s.run_ok(&c2, &["--network", &n1]);
    s.run_ok(&c3, &["--network", &n2]);
    let ip2 = ip_of(&c2, &n1);
    assert!(ping(&c1, &ip2), "c1 reaches c2 over OVN");
    let (sent, got) = tcp_between(&c2, &c1, &ip2, 300_000);
    assert_eq!(sent, got, "TCP data crosses intact");
    assert_eq!(counts(&d), (3, 3, 3, 3), "{:?}", owned(&d));
    // A network with endpoints cannot go (Docker refuses before asking the driver): nothing
    // changes.
    let before = owned(&d);
    let err = docker_err(&["network", "rm", &n1]);
    assert!(err.contains("active endpoints"), "{err}");
    assert_eq!(owned(&d), before);
    assert!(switch_exists(&courier_name(&id1)));

    // connect: c1 gets a second interface on n2 and reaches c3 there; disconnect takes it away.
    docker_ok(&["network", "connect", &n2, &c1]);
    assert!(
        links_in(&c1).contains(&"eth1".to_string()),
        "{:?}",
        links_in(&c1)
    );
    assert!(
        ping(&c1, &ip_of(&c3, &n2)),
        "c1 reaches c3 on the second network"
    );
    assert_eq!(counts(&d).0, 4);
    docker_ok(&["network", "disconnect", &n2, &c1]);
    assert!(!links_in(&c1).contains(&"eth1".to_string()));
    assert!(
        eventually(Duration::from_secs(5), || counts(&d) == (3, 3, 3, 3)),
        "disconnect removed the port, OVS port, veth and record: {:?}",
        owned(&d)
    );
    assert!(ping(&c1, &ip2), "the first network still works");

    docker_ok(&["rm", "-f", &c1, &c2, &c3]);
    assert!(
        eventually(Duration::from_secs(5), || owned(&d).is_empty()),
        "docker rm -f leaves no LSP, OVS port, veth or record: {:?}",
        owned(&d)
    );
    docker_ok(&["network", "rm", &n1, &n2]);
    s.networks.clear();
    assert!(!switch_exists(&courier_name(&id1)) && !switch_exists(&courier_name(&id2)));
}

#[test]
fn requested_ip_and_mac_are_honoured_and_bad_ones_change_nothing() {
    let t = "requested_ip_and_mac_are_honoured_and_bad_ones_change_nothing";
    if !docker_ready(t) {
        return;
    }
    let d = docker_daemon("dk-ip", &[]);
    let (plugin, sock) = plugin_for("dk-ip");
    let mut s = DockerScope::default();
    let n = unique("dk-ip");
    let subnet = subnet_for(43);
    let base = subnet.trim_end_matches(".0/24");
    let id = s.network(&plugin, &n, &["--subnet", &subnet]);
    let (c1, c2) = (unique("dk-ip1"), unique("dk-ip2"));
    let want_ip = format!("{base}.77");
    s.run_ok(
        &c1,
        &[
            "--network",
            &n,
            "--ip",
            &want_ip,
            "--mac-address",
            "02:00:00:aa:bb:01",
        ],
    );
    assert_eq!(ip_of(&c1, &n), want_ip);
    assert_eq!(mac_of(&c1, &n), "02:00:00:aa:bb:01");
    let lsp = owned(&d).lsps.into_iter().next().expect("one LSP");
    let addrs = nbctl(&["get", "Logical_Switch_Port", &lsp, "addresses"]);
    assert!(
        addrs.contains(&want_ip) && addrs.contains("02:00:00:aa:bb:01"),
        "the LSP has the requested address and MAC: {addrs}"
    );
    let before = owned(&d);

    // An address in use: a clear error, and nothing changed.
    let out = s.run(&c2, &["--network", &n, "--ip", &want_ip]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use") || err.contains("already"), "{err}");
    assert_eq!(owned(&d), before, "a refused address changes nothing");
    docker_ok(&["rm", "-f", &c2]);
    // Outside the subnet: refused (by Docker, or by Courier), nothing changed.
    let out = s.run(&c2, &["--network", &n, "--ip", "192.0.2.7"]);
    assert!(!out.status.success());
    assert_eq!(owned(&d), before);
    docker_ok(&["rm", "-f", &c2]);

    // Straight to the socket: a malformed body, a body of the wrong shape, a method Docker never
    // sends, an unknown pool, an address outside the pool: each a clear Err, nothing changed.
    let pool = format!("courier:{subnet}");
    for (method, body, code) in [
        ("IpamDriver.RequestAddress", "{not json".to_string(), 400),
        (
            "IpamDriver.RequestAddress",
            json!({"PoolID": 7}).to_string(),
            400,
        ),
        ("NetworkDriver.Frobnicate", "{}".to_string(), 404),
        (
            "IpamDriver.RequestAddress",
            json!({"PoolID": "kuryrPool-x", "Address": ""}).to_string(),
            400,
        ),
        (
            "IpamDriver.RequestAddress",
            json!({"PoolID": pool, "Address": "192.0.2.9"}).to_string(),
            400,
        ),
        (
            "NetworkDriver.Join",
            json!({"NetworkID": id, "EndpointID": "nope", "SandboxKey": "/x"}).to_string(),
            400,
        ),
        (
            "NetworkDriver.CreateEndpoint",
            json!({"NetworkID": "0123456789abcdef", "EndpointID": "e1", "Interface": {}})
                .to_string(),
            400,
        ),
    ] {
        let (status, reply, ctype) = plugin_call(&sock, method, &body);
        assert_eq!(status, code, "{method} {body}: {reply}");
        let msg = reply["Err"].as_str().unwrap_or_default();
        assert!(!msg.is_empty(), "{method}: an Err message: {reply}");
        assert_eq!(ctype, "application/vnd.docker.plugins.v1.2+json");
        assert_eq!(owned(&d), before, "{method} {body} changed nothing");
    }
    docker_ok(&["rm", "-f", &c1]);
    assert!(
        eventually(Duration::from_secs(5), || owned(&d).is_empty()),
        "{:?}",
        owned(&d)
    );
}

#[test]
fn bad_network_options_are_refused_and_change_nothing() {
    let t = "bad_network_options_are_refused_and_change_nothing";
    if !docker_ready(t) {
        return;
    }
    let d = docker_daemon("dk-badnet", &[]);
    let (plugin, _) = plugin_for("dk-badnet");
    let switches = || nbctl(&["--bare", "--columns=name", "list", "Logical_Switch"]);
    let before = switches();
    let n = unique("dk-bad");
    for (args, says) in [
        (
            vec!["-o", "courier.network=no-such-network"],
            "no-such-network",
        ),
        (vec!["-o", "courier.netwrok=x"], "unknown option"),
        (
            vec!["-o", "courier.binding=sriov"],
            "binding \"sriov\" is not available on this host",
        ),
        (
            vec!["--ip-range", &subnet_for(44).replace(".0/24", ".0/25")],
            "--ip-range",
        ),
        (vec!["--aux-address", "x=10.0.0.1"], "aux"),
    ] {
        let mut all = vec![
            "network",
            "create",
            "-d",
            &plugin,
            "--ipam-driver",
            &plugin,
            "--subnet",
        ];
        let subnet = subnet_for(44);
        all.push(&subnet);
        all.extend(args.iter().copied());
        all.push(&n);
        let out = docker(&all);
        let _ = docker(&["network", "rm", &n]);
        assert!(!out.status.success(), "{args:?} should be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(switches(), before, "{args:?} made no logical switch");
    }
    assert!(owned(&d).is_empty());
}

#[test]
fn the_protocol_is_idempotent_and_answers_every_method() {
    let t = "the_protocol_is_idempotent_and_answers_every_method";
    if !env_ready(t) {
        return;
    }
    // No dockerd: the calls Docker makes, straight to the socket, some twice.
    let d = docker_daemon("dk-proto", &[]);
    let (_, sock) = plugin_for("dk-proto");
    let call = |m: &str, b: Value| {
        let (status, reply, _) = plugin_call(&sock, m, &b.to_string());
        assert_eq!(status, 200, "{m} {b}: {reply}");
        reply
    };
    assert_eq!(
        call("Plugin.Activate", json!({}))["Implements"],
        json!(["NetworkDriver", "IpamDriver"])
    );
    assert_eq!(
        call("NetworkDriver.GetCapabilities", json!({}))["Scope"],
        "local"
    );
    assert_eq!(
        call("IpamDriver.GetCapabilities", json!({}))["RequiresMACAddress"],
        true
    );
    let spaces = call("IpamDriver.GetDefaultAddressSpaces", json!({}));
    let subnet = subnet_for(45);
    let pool = call(
        "IpamDriver.RequestPool",
        json!({"AddressSpace": spaces["LocalDefaultAddressSpace"], "Pool": subnet, "SubPool": "", "Options": {}, "V6": false}),
    );
    let pool_id = pool["PoolID"].as_str().unwrap().to_string();
    let gw = call(
        "IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
    );
    assert!(gw["Address"].as_str().unwrap().ends_with(".1/24"), "{gw}");
    let nid = format!("{:0>64}", std::process::id());
    let create = json!({"NetworkID": nid, "Options": {"com.docker.network.enable_ipv6": false, "com.docker.network.generic": {}},
        "IPv4Data": [{"AddressSpace": "courier-local", "Pool": subnet, "Gateway": gw["Address"]}], "IPv6Data": []});
    call("NetworkDriver.CreateNetwork", create.clone());
    call("NetworkDriver.CreateNetwork", create);
    let lsname = format!("docker-{}", &nid[..12]);
    assert_eq!(
        nbctl(&[
            "--bare",
            "--columns=name",
            "find",
            "Logical_Switch",
            &format!("name={lsname}")
        ])
        .lines()
        .count(),
        1,
        "a repeated CreateNetwork makes one switch"
    );
    let addr = call(
        "IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "", "Options": {"com.docker.network.endpoint.macaddress": "02:42:0a:00:00:09"}}),
    );
    let address = addr["Address"].as_str().unwrap().to_string();
    let ep = json!({"NetworkID": nid, "EndpointID": "ep1", "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": "02:42:0a:00:00:09"}, "Options": {}});
    assert_eq!(
        call("NetworkDriver.CreateEndpoint", ep.clone()),
        json!({"Interface": {}})
    );
    call("NetworkDriver.CreateEndpoint", ep);
    assert_eq!(
        counts(&d),
        (1, 1, 1, 1),
        "a repeated CreateEndpoint makes one edge: {:?}",
        owned(&d)
    );
    let info = call(
        "NetworkDriver.EndpointOperInfo",
        json!({"NetworkID": nid, "EndpointID": "ep1"}),
    );
    assert_eq!(info["Value"]["status"], "ACTIVE", "{info}");
    let sandbox = Netns::new("dk-proto");
    let join =
        json!({"NetworkID": nid, "EndpointID": "ep1", "SandboxKey": sandbox.path(), "Options": {}});
    let j = call("NetworkDriver.Join", join.clone());
    assert_eq!(
        call("NetworkDriver.Join", join),
        j,
        "Join repeats the same answer"
    );
    let src = j["InterfaceName"]["SrcName"].as_str().unwrap().to_string();
    assert!(
        sh("ip", &["link", "show", &src]).status.success(),
        "SrcName {src} is in the host netns for Docker to move"
    );
    assert_eq!(j["InterfaceName"]["DstPrefix"], "eth");
    assert!(j["Gateway"].as_str().unwrap().ends_with(".1"), "{j}");
    for m in [
        "ProgramExternalConnectivity",
        "RevokeExternalConnectivity",
        "DiscoverNew",
        "DiscoverDelete",
    ] {
        call(
            &format!("NetworkDriver.{m}"),
            json!({"NetworkID": nid, "EndpointID": "ep1"}),
        );
    }
    call("NetworkDriver.AllocateNetwork", json!({"NetworkID": nid}));
    call("NetworkDriver.FreeNetwork", json!({"NetworkID": nid}));
    for _ in 0..2 {
        call(
            "NetworkDriver.Leave",
            json!({"NetworkID": nid, "EndpointID": "ep1"}),
        );
        call(
            "NetworkDriver.DeleteEndpoint",
            json!({"NetworkID": nid, "EndpointID": "ep1"}),
        );
    }
    assert!(
        !sh("ip", &["link", "show", &src]).status.success(),
        "DeleteEndpoint removed the veth"
    );
    assert_eq!(
        counts(&d),
        (1, 0, 0, 1),
        "the address is still leased: {:?}",
        owned(&d)
    );
    let ip = address.split('/').next().unwrap();
    for _ in 0..2 {
        call(
            "IpamDriver.ReleaseAddress",
            json!({"PoolID": pool_id, "Address": ip}),
        );
    }
    assert!(
        eventually(Duration::from_secs(5), || owned(&d).is_empty()),
        "ReleaseAddress deleted the port and the record: {:?}",
        owned(&d)
    );
    call(
        "IpamDriver.ReleaseAddress",
        json!({"PoolID": pool_id, "Address": gw["Address"].as_str().unwrap().split('/').next().unwrap()}),
    );
    call("IpamDriver.ReleasePool", json!({"PoolID": pool_id}));
    for _ in 0..2 {
        call("NetworkDriver.DeleteNetwork", json!({"NetworkID": nid}));
    }
    assert!(!switch_exists(&lsname));
}

/// A Neutron network + IPv4 subnet made straight in Neutron (as a user would); returns its id.
fn neutron_network(n: &NeutronEnv, name: &str, cidr: &str) -> String {
    let (code, v) = n.call(
        "POST",
        "/networks",
        Some(json!({"network": {"name": name}})),
    );
    assert_eq!(code, 201, "{v}");
    let id = v["network"]["id"].as_str().unwrap().to_string();
    let (code, v) = n.call(
        "POST",
        "/subnets",
        Some(json!({"subnet": {"network_id": id, "cidr": cidr, "ip_version": 4}})),
    );
    assert_eq!(code, 201, "{v}");
    id
}

fn neutron_networks_named(n: &NeutronEnv, name: &str) -> usize {
    let (_, v) = n.api("GET", &format!("/networks?name={name}"));
    v["networks"].as_array().map(Vec::len).unwrap_or(0)
}

#[test]
fn neutron_containers_talk_and_leave_nothing() {
    let t = "neutron_containers_talk_and_leave_nothing";
    let Some(n) = NeutronEnv::get(t) else { return };
    if !docker_ready(t) {
        return;
    }
    let env: Vec<(&str, String)> = n.daemon_env();
    let d = docker_daemon("dk-neu", &env);
    let (plugin, _) = plugin_for("dk-neu");
    let mut s = DockerScope::default();
    let net = unique("dk-neu");
    let id = s.network(
        &plugin,
        &net,
        &["--subnet", "10.234.0.0/24", "-o", "courier.backend=neutron"],
    );
    assert_eq!(
        neutron_networks_named(&n, &courier_name(&id)),
        1,
        "a Neutron network per Docker network"
    );
    let (c1, c2) = (unique("dk-neu1"), unique("dk-neu2"));
    s.run_ok(&c1, &["--network", &net]);
    s.run_ok(
        &c2,
        &[
            "--network",
            &net,
            "--ip",
            "10.234.0.50",
            "--mac-address",
            "02:00:00:aa:bb:02",
        ],
    );
    let ports = n.owned_ports(&d);
    assert_eq!(ports.len(), 2, "{ports:?}");
    let p2 = ports
        .iter()
        .find(|p| p["mac_address"] == "02:00:00:aa:bb:02")
        .expect("the requested MAC is the Neutron port's");
    assert_eq!(p2["fixed_ips"][0]["ip_address"], "10.234.0.50");
    assert_eq!(p2["device_owner"], "compute:courier");
    assert_eq!(p2["binding:host_id"], n.host_id.as_str());
    assert!(
        ping(&c1, "10.234.0.50"),
        "c1 reaches c2 through Neutron's OVN port"
    );
    let (sent, got) = tcp_between(&c2, &c1, "10.234.0.50", 300_000);
    assert_eq!(sent, got);
    docker_ok(&["rm", "-f", &c1, &c2]);
    assert!(
        eventually(Duration::from_secs(10), || n.owned_ports(&d).is_empty()
            && owned(&d).is_empty()),
        "no Neutron port, OVS port, veth or record left: {:?} {:?}",
        n.owned_ports(&d),
        owned(&d)
    );
    docker_ok(&["network", "rm", &net]);
    s.networks.clear();
    assert_eq!(
        neutron_networks_named(&n, &courier_name(&id)),
        0,
        "network rm deleted what Courier made"
    );
}

#[test]
fn existing_networks_are_used_and_left_on_rm() {
    let t = "existing_networks_are_used_and_left_on_rm";
    let Some(n) = NeutronEnv::get(t) else { return };
    if !docker_ready(t) {
        return;
    }
    let env: Vec<(&str, String)> = n.daemon_env();
    let d = docker_daemon("dk-exist", &env);
    let (plugin, _) = plugin_for("dk-exist");
    let mut s = DockerScope::default();
    // kuryr-libnetwork's option, unchanged: an existing Neutron network.
    let os_name = unique("dk-os-net");
    let os_id = neutron_network(&n, &os_name, "10.235.0.0/24");
    let net = unique("dk-exist");
    let wrong = docker(&[
        "network",
        "create",
        "-d",
        &plugin,
        "--ipam-driver",
        &plugin,
        "--subnet",
        "10.236.0.0/24",
        "-o",
        &format!("neutron.net.uuid={os_id}"),
        &net,
    ]);
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        err.contains("--subnet 10.235.0.0/24"),
        "says which subnet to give: {err}"
    );
    let _ = docker(&["network", "rm", &net]);
    let unknown = docker(&[
        "network",
        "create",
        "-d",
        &plugin,
        "--ipam-driver",
        &plugin,
        "--subnet",
        "10.235.0.0/24",
        "-o",
        "neutron.net.uuid=00000000-0000-0000-0000-000000000000",
        &net,
    ]);
    assert!(
        !unknown.status.success(),
        "an unknown Neutron network is refused"
    );
    let _ = docker(&["network", "rm", &net]);
    let (_, nets) = d.api("GET", "/v1/networks", None);
    assert!(
        !nets
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["backend_id"] == os_id.as_str()),
        "the refused create left no registration of {os_id}"
    );
    s.network(
        &plugin,
        &net,
        &[
            "--subnet",
            "10.235.0.0/24",
            "-o",
            &format!("neutron.net.uuid={os_id}"),
        ],
    );
    let c = unique("dk-exist1");
    s.run_ok(&c, &["--network", &net]);
    let ports = n.owned_ports(&d);
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["network_id"], os_id.as_str());
    // An OVN network made with the CLI, referred to by name.
    let ovn = unique("dk-cli-net");
    d.create_network(&ovn, &subnet_for(46));
    let net2 = unique("dk-exist2");
    s.network(
        &plugin,
        &net2,
        &[
            "--subnet",
            &subnet_for(46),
            "-o",
            &format!("courier.network={ovn}"),
        ],
    );
    let c2 = unique("dk-exist3");
    s.run_ok(&c2, &["--network", &net2]);
    docker_ok(&["rm", "-f", &c, &c2]);
    assert!(eventually(Duration::from_secs(10), || n
        .owned_ports(&d)
        .is_empty()
        && owned(&d).is_empty()));
    docker_ok(&["network", "rm", &net, &net2]);
    s.networks.clear();
    let (code, _) = n.api("GET", &format!("/networks/{os_id}"));
    assert_eq!(
        code, 200,
        "docker network rm leaves a network Courier did not create"
    );
    assert!(
        switch_exists(&ovn),
        "and leaves the Courier network it only referred to"
    );
    let (code, _) = n.api("DELETE", &format!("/networks/{os_id}"));
    assert_eq!(code, 204);
    d.cli(&["network", "delete", &ovn]);
}

#[test]
fn killed_between_create_endpoint_and_join_leaks_nothing() {
    let t = "killed_between_create_endpoint_and_join_leaks_nothing";
    if !docker_ready(t) || !hooks_ready(t) {
        return;
    }
    let fast = [("COURIER_DOCKER_LEASE_TIMEOUT_SECS", "2".to_string())];
    let crash = [
        ("COURIER_DOCKER_LEASE_TIMEOUT_SECS", "2".to_string()),
        ("COURIER_CRASH_AT", "docker-join".to_string()),
    ];
    let mut d = docker_daemon("dk-kjoin", &crash);
    let (plugin, _) = plugin_for("dk-kjoin");
    let mut s = DockerScope::default();
    let net = unique("dk-kjoin");
    let id = s.network(&plugin, &net, &["--subnet", &subnet_for(47)]);
    let c = unique("dk-kjoin1");
    let mut run = std::process::Command::new("/usr/bin/docker")
        .env("DOCKER_HOST", DOCKER_HOST)
        .args([
            "run",
            "-d",
            "--name",
            &c,
            "--network",
            &net,
            IMAGE,
            "sleep",
            "600",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    s.containers.push(c.clone());
    d.wait_exit(Duration::from_secs(30));
    assert_eq!(
        owned(&d).lsps.len(),
        1,
        "the endpoint existed when Courier died"
    );
    let env = docker_env("dk-kjoin");
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend(fast.iter().map(|(k, v)| (*k, v.as_str())));
    d.restart(&all);
    let _ = run.wait();
    // Docker retried the call or gave up; either way the container can go, and nothing stays.
    docker_ok(&["rm", "-f", &c]);
    // A lease left by the crash is Docker's for 2 s (COURIER_DOCKER_LEASE_TIMEOUT_SECS); then a
    // reconcile removes it. Asked again until then, so a slow machine does not fail this.
    std::thread::sleep(Duration::from_secs(2));
    let mut report = Value::Null;
    assert!(
        eventually(Duration::from_secs(20), || {
            let (code, r) = d.api("POST", "/v1/reconcile", None);
            assert_eq!(code, 200, "{r}");
            report = r;
            owned(&d).is_empty()
        }),
        "{:?}\n{report}",
        owned(&d)
    );
    docker_ok(&["network", "rm", &net]);
    s.networks.clear();
    assert!(!switch_exists(&courier_name(&id)));
}

#[test]
fn killed_during_leave_leaks_nothing() {
    let t = "killed_during_leave_leaks_nothing";
    if !docker_ready(t) || !hooks_ready(t) {
        return;
    }
    let mut d = docker_daemon(
        "dk-kleave",
        &[("COURIER_CRASH_AT", "docker-leave".to_string())],
    );
    let (plugin, _) = plugin_for("dk-kleave");
    let mut s = DockerScope::default();
    let net = unique("dk-kleave");
    let id = s.network(&plugin, &net, &["--subnet", &subnet_for(48)]);
    let c = unique("dk-kleave1");
    s.run_ok(&c, &["--network", &net]);
    let mut rm = std::process::Command::new("/usr/bin/docker")
        .env("DOCKER_HOST", DOCKER_HOST)
        .args(["rm", "-f", &c])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    d.wait_exit(Duration::from_secs(30));
    let env = docker_env("dk-kleave");
    let all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    d.restart(&all);
    assert!(rm.wait().unwrap().success(), "the container can be removed");
    let (code, report) = d.api("POST", "/v1/reconcile", None);
    assert_eq!(code, 200);
    assert!(
        eventually(Duration::from_secs(5), || owned(&d).is_empty()),
        "{:?}\n{report}",
        owned(&d)
    );
    docker_ok(&["network", "rm", &net]);
    s.networks.clear();
    assert!(!switch_exists(&courier_name(&id)));
}

/// Kuryr leaks the port, the OVS port and the veth when it is down during `docker rm -f`, and
/// never tidies up. Courier's reconcile does, and `docker network rm` then removes the network.
#[test]
fn courier_down_during_docker_rm_is_reconciled() {
    let t = "courier_down_during_docker_rm_is_reconciled";
    if !docker_ready(t) {
        return;
    }
    let mut d = docker_daemon("dk-down", &[]);
    let (plugin, _) = plugin_for("dk-down");
    let mut s = DockerScope::default();
    let net = unique("dk-down");
    let id = s.network(&plugin, &net, &["--subnet", &subnet_for(49)]);
    let (c1, c2) = (unique("dk-down1"), unique("dk-down2"));
    s.run_ok(&c1, &["--network", &net]);
    s.run_ok(&c2, &["--network", &net]);
    // Courier learns each sandbox's identity once Docker has made it (after Join).
    assert!(
        eventually(Duration::from_secs(5), || d
            .store()
            .iter()
            .all(|a| a["netns_inode"].is_u64())),
        "{:?}",
        d.store()
    );
    d.kill9();
    // Docker retries each call for a while, then removes the container anyway.
    let t0 = std::time::Instant::now();
    docker_ok(&["rm", "-f", &c1]);
    eprintln!("docker rm -f with Courier down took {:?}", t0.elapsed());
    let env = docker_env("dk-down");
    let all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    d.restart(&all);
    // The restart's reconcile found c1's sandbox gone; c2 lives on and still works.
    assert!(
        eventually(Duration::from_secs(5), || counts(&d) == (1, 1, 1, 1)),
        "c1's leftovers reconciled: {:?}",
        owned(&d)
    );
    let c3 = unique("dk-down3");
    s.run_ok(&c3, &["--network", &net]);
    assert!(
        ping(&c3, &ip_of(&c2, &net)),
        "the container that lived on still talks"
    );
    docker_ok(&["rm", "-f", &c2, &c3]);
    assert!(
        eventually(Duration::from_secs(5), || owned(&d).is_empty()),
        "{:?}",
        owned(&d)
    );
    docker_ok(&["network", "rm", &net]);
    s.networks.clear();
    assert!(
        !switch_exists(&courier_name(&id)),
        "the network went with docker network rm"
    );
}

#[test]
fn dual_stack_network_ping6() {
    let t = "dual_stack_network_ping6";
    if !docker_ready(t) {
        return;
    }
    let d = docker_daemon("dk-v6", &[]);
    let (plugin, _) = plugin_for("dk-v6");
    let mut s = DockerScope::default();
    let n = unique("dk-v6");
    let v6 = format!("fd00:{:x}::/64", 0xd600 + std::process::id() % 256);
    s.network(
        &plugin,
        &n,
        &["--ipv6", "--subnet", &subnet_for(50), "--subnet", &v6],
    );
    let (c1, c2) = (unique("dk-v6a"), unique("dk-v6b"));
    s.run_ok(&c1, &["--network", &n]);
    s.run_ok(&c2, &["--network", &n]);
    let a6 = docker_ok(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{n}\").GlobalIPv6Address}}}}"),
        &c2,
    ]);
    let prefix = v6.trim_end_matches("::/64");
    assert!(a6.starts_with(prefix), "c2 has an address of {v6}: {a6:?}");
    assert!(
        docker(&["exec", &c1, "ping6", "-c", "2", "-W", "2", &a6])
            .status
            .success(),
        "ping6 crosses"
    );
    let routes = docker_ok(&["exec", &c1, "ip", "-6", "route"]);
    assert!(
        routes.contains(&format!("default via {prefix}::1")),
        "{routes}"
    );
    assert!(ping(&c1, &ip_of(&c2, &n)), "and IPv4 too");
    docker_ok(&["rm", "-f", &c1, &c2]);
    assert!(
        eventually(Duration::from_secs(5), || owned(&d).is_empty()),
        "{:?}",
        owned(&d)
    );
}

/// The Zun `--nets port=UUID` flow: the user made the port; named by id (`--driver-opt
/// courier.port=UUID`) with its `--ip` and `--mac-address`, it is bound; `docker rm` gives it
/// back as it was.
#[test]
fn existing_port_is_bound_and_kept() {
    let t = "existing_port_is_bound_and_kept";
    let Some(n) = NeutronEnv::get(t) else { return };
    if !docker_ready(t) {
        return;
    }
    let env: Vec<(&str, String)> = n.daemon_env();
    let d = docker_daemon("dk-port", &env);
    let (plugin, _) = plugin_for("dk-port");
    let mut s = DockerScope::default();
    let net = unique("dk-port");
    let id = s.network(
        &plugin,
        &net,
        &["--subnet", "10.237.0.0/24", "-o", "courier.backend=neutron"],
    );
    let (_, v) = n.api("GET", &format!("/networks?name={}", courier_name(&id)));
    let os_net = v["networks"][0]["id"].as_str().unwrap().to_string();
    let mk = |ip: &str, extra: Value| {
        let mut body = json!({"network_id": os_net, "fixed_ips": [{"ip_address": ip}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (code, v) = n.call("POST", "/ports", Some(json!({"port": body})));
        assert_eq!(code, 201, "{v}");
        (
            v["port"]["id"].as_str().unwrap().to_string(),
            v["port"]["mac_address"].as_str().unwrap().to_string(),
        )
    };
    let (pid, mac) = mk("10.237.0.40", json!({}));
    let (bound, _) = mk(
        "10.237.0.41",
        json!({"device_owner": "compute:nova", "device_id": "vm-1"}),
    );
    let (c1, c2, c3) = (unique("dk-port1"), unique("dk-port2"), unique("dk-port3"));

    // Named by id (`--driver-opt courier.port`) with its address.
    let named = |ip: &str, port: &str| format!("name={net},ip={ip},driver-opt=courier.port={port}");
    // Its MAC must be the container's: a clear error otherwise, and the port untouched.
    let before = port_state(&n, &pid);
    let out = s.run(
        &c1,
        &[
            "--network",
            &named("10.237.0.40", &pid),
            "--mac-address",
            "02:00:00:00:00:99",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("--mac-address {mac}")), "{err}");
    docker_ok(&["rm", "-f", &c1]);
    assert_eq!(port_state(&n, &pid), before, "the port is untouched");
    // A port bound elsewhere is refused, saying where.
    let out = s.run(&c3, &["--network", &named("10.237.0.41", &bound)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("compute:nova") && err.contains("vm-1"),
        "{err}"
    );
    docker_ok(&["rm", "-f", &c3]);

    s.run_ok(
        &c1,
        &[
            "--network",
            &named("10.237.0.40", &pid),
            "--mac-address",
            &mac,
        ],
    );
    let (_, p) = n.api("GET", &format!("/ports/{pid}"));
    assert_eq!(p["port"]["device_owner"], "compute:courier", "{p}");
    assert_eq!(p["port"]["binding:host_id"], n.host_id.as_str());
    s.run_ok(&c2, &["--network", &net]);
    assert!(
        ping(&c2, "10.237.0.40"),
        "the container on the user's port is reachable"
    );
    docker_ok(&["rm", "-f", &c1, &c2]);
    assert!(
        eventually(Duration::from_secs(10), || owned(&d).is_empty()
            && n.owned_ports(&d).is_empty()),
        "{:?}",
        owned(&d)
    );
    let (code, p) = n.api("GET", &format!("/ports/{pid}"));
    assert_eq!(code, 200, "the user's port is kept");
    assert_eq!(p["port"]["device_owner"], "", "and given back unbound: {p}");
    assert_eq!(p["port"]["device_id"], "");
    assert_eq!(p["port"]["binding:host_id"], "");
    for port in [&pid, &bound] {
        n.api("DELETE", &format!("/ports/{port}"));
    }
}

/// A daemon just started serves the plugin socket before its Neutron backend has connected;
/// Docker does not retry a failed CreateNetwork, so the call waits for the backend.
#[test]
fn network_create_right_after_start_waits_for_the_backend() {
    let t = "network_create_right_after_start_waits_for_the_backend";
    let Some(n) = NeutronEnv::get(t) else { return };
    if !docker_ready(t) {
        return;
    }
    let mut env = docker_env("dk-early");
    env.extend(n.daemon_env());
    let all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let d = TestDaemon::launch("dk-early", &all);
    let (plugin, sock) = plugin_for("dk-early");
    assert!(
        eventually(Duration::from_secs(10), || sock.exists()),
        "{}",
        d.log()
    );
    let mut s = DockerScope::default();
    let net = unique("dk-early");
    let id = s.network(
        &plugin,
        &net,
        &["--subnet", "10.238.0.0/24", "-o", "courier.backend=neutron"],
    );
    assert_eq!(neutron_networks_named(&n, &courier_name(&id)), 1);
    docker_ok(&["network", "rm", &net]);
    s.networks.clear();
    assert_eq!(neutron_networks_named(&n, &courier_name(&id)), 0);
    drop(d);
}

/// dockerd stopped and started again (host-wide: this restarts the dockerd every Docker test
/// uses). Docker releases its endpoints when it stops the containers; Courier's records follow
/// it exactly, and the containers it restarts (restart policy) talk again.
#[test]
fn dockerd_restart_leaves_nothing_stale() {
    let t = "dockerd_restart_leaves_nothing_stale";
    if !docker_ready(t) {
        return;
    }
    let d = docker_daemon("dk-dockerd", &[]);
    let (plugin, _) = plugin_for("dk-dockerd");
    let mut s = DockerScope::default();
    let net = unique("dk-dockerd");
    s.network(&plugin, &net, &["--subnet", &subnet_for(51)]);
    let (r1, r2) = (unique("dk-r1"), unique("dk-r2"));
    s.run_ok(&r1, &["--restart", "always", "--network", &net]);
    s.run_ok(&r2, &["--restart", "always", "--network", &net]);
    let docker_sh = |verb: &str| {
        let out = std::process::Command::new(repo().join("scripts/docker.sh"))
            .arg(verb)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker.sh {verb}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let talking = || {
        eventually(Duration::from_secs(20), || {
            docker(&["exec", &r1, "ping", "-c", "1", "-W", "1", &ip_of(&r2, &net)])
                .status
                .success()
        })
    };
    docker_sh("stop");
    assert!(
        owned(&d).is_empty(),
        "containers stopped: endpoints released: {:?}",
        owned(&d)
    );
    docker_sh("start");
    assert!(talking(), "restarted containers talk");
    assert!(
        eventually(Duration::from_secs(5), || counts(&d) == (2, 2, 2, 2)),
        "{:?}",
        owned(&d)
    );

    docker_ok(&["rm", "-f", &r1, &r2]);
    assert!(
        eventually(Duration::from_secs(5), || owned(&d).is_empty()),
        "{:?}",
        owned(&d)
    );
}

/// A Docker network whose endpoints are nested macvlan containers (`-o courier.binding`), on a
/// daemon that also serves veth-ovs: Docker moves the macvlan Courier left for it, the pair is
/// on the VM's port (this host's netns is the "VM"), the container reaches a port on the switch,
/// and `docker rm` takes the pair away with the rest.
#[test]
fn docker_network_with_a_nested_binding() {
    let t = "docker_network_with_a_nested_binding";
    if !docker_ready(t) {
        return;
    }
    let master = common::nested::HostVm::master_name("dkn");
    let d = docker_daemon(
        "dk-nest",
        &[
            ("COURIER_BINDINGS", "veth-ovs,macvlan".to_string()),
            ("COURIER_NESTED_MASTER", master.clone()),
        ],
    );
    let (plugin, _) = plugin_for("dk-nest");
    let mut s = DockerScope::default();
    let n = unique("dk-nest");
    let subnet = subnet_for(45);
    let base = subnet.trim_end_matches(".0/24");
    let id = s.network(
        &plugin,
        &n,
        &["--subnet", &subnet, "-o", "courier.binding=macvlan"],
    );
    let switch = courier_name(&id);
    let pid = std::process::id();
    let vm = common::nested::HostVm::new(
        &switch,
        "dkn",
        &format!("0a:00:00:{:02x}:45:01", pid % 256),
        &format!("{base}.250"),
    );
    let peer = common::nested::Plugged::new(
        "dkn-peer",
        &switch,
        &format!("dkn-peer-{pid}"),
        &format!("0a:00:00:{:02x}:45:02", pid % 256),
        &format!("{base}.251"),
        24,
    );
    let c1 = unique("dk-nest1");
    s.run_ok(&c1, &["--network", &n]);
    let ip = ip_of(&c1, &n);
    let mac = mac_of(&c1, &n);
    let entry = format!("{mac} {ip}");
    let security = common::nested::port_security(&vm.lsp);
    assert!(security.contains(&entry), "{entry} not in {security}");
    assert!(
        ping(&c1, &format!("{base}.251")),
        "the nested container reaches the switch"
    );
    assert!(peer.ns.ping(&ip), "and is reached from it");
    docker_ok(&["rm", "-f", &c1]);
    assert!(
        eventually(Duration::from_secs(5), || owned(&d).is_empty()),
        "{:?}",
        owned(&d)
    );
    assert!(!common::nested::port_security(&vm.lsp).contains(&entry));
    drop(peer);
    drop(vm);
}

/// What a user's port looks like to its user: what it is bound to, its marks and its revision.
fn port_state(n: &NeutronEnv, id: &str) -> Value {
    let (code, p) = n.api("GET", &format!("/ports/{id}"));
    assert_eq!(code, 200, "{p}");
    let p = &p["port"];
    let mut tags: Vec<String> = p["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(String::from))
        .collect();
    tags.sort();
    json!({
        "device_owner": p["device_owner"],
        "device_id": p["device_id"],
        "binding:host_id": p["binding:host_id"],
        "binding:profile": p["binding:profile"],
        "description": p["description"],
        "mac_address": p["mac_address"],
        "fixed_ips": p["fixed_ips"],
        "tags": tags,
        "revision_number": p["revision_number"],
    })
}

/// A port made straight in Neutron (as a user would), deleted when the test ends, pass or
/// fail (before the test's Docker network, declared earlier, goes).
struct UserPort<'a> {
    n: &'a NeutronEnv,
    id: String,
}

impl Drop for UserPort<'_> {
    fn drop(&mut self) {
        self.n.api("DELETE", &format!("/ports/{}", self.id));
    }
}

/// Every port on Neutron network `net` (Neutron's own included): their ids.
fn all_ports_on(n: &NeutronEnv, net: &str) -> std::collections::BTreeSet<String> {
    let (_, v) = n.api("GET", &format!("/ports?network_id={net}"));
    v["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["id"].as_str().map(String::from))
        .collect()
}

/// `--ip` of an address a port Courier did not make holds — a keepalived VIP port (unbound, no
/// device owner), Neutron's own metadata port (`network:distributed`, on every ML2/OVN
/// network) — is refused with an error naming that port and how to name it, and nothing
/// changes: the port is exactly as it was (owner, device, binding, tags, revision) and no port
/// is made. Named by id (`--driver-opt courier.port=ID`, with its address and MAC), the user's
/// port is bound, and given back as it was on `docker rm`.
#[test]
fn an_address_of_a_users_port_is_taken_only_when_the_port_is_named() {
    let t = "an_address_of_a_users_port_is_taken_only_when_the_port_is_named";
    let Some(n) = NeutronEnv::get(t) else { return };
    if !docker_ready(t) {
        return;
    }
    let env: Vec<(&str, String)> = n.daemon_env();
    let d = docker_daemon("dk-vip", &env);
    let (plugin, _) = plugin_for("dk-vip");
    let mut s = DockerScope::default();
    let net = unique("dk-vip");
    let id = s.network(
        &plugin,
        &net,
        &["--subnet", "10.239.0.0/24", "-o", "courier.backend=neutron"],
    );
    let os_net = n.networks_named(&courier_name(&id))[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // keepalived's VIP port: made by the user, bound to nothing (its address is an allowed
    // address pair of the VMs that run keepalived).
    let (code, v) = n.call(
        "POST",
        "/ports",
        Some(
            json!({"port": {"network_id": os_net, "name": unique("dk-vip-port"),
            "fixed_ips": [{"ip_address": "10.239.0.40"}]}}),
        ),
    );
    assert_eq!(code, 201, "{v}");
    let vip = v["port"]["id"].as_str().unwrap().to_string();
    let _vip_port = UserPort {
        n: &n,
        id: vip.clone(),
    };
    let vip_mac = v["port"]["mac_address"].as_str().unwrap().to_string();
    let (_, v) = n.api(
        "GET",
        &format!("/ports?network_id={os_net}&device_owner=network:distributed"),
    );
    let meta = v["ports"][0]["id"]
        .as_str()
        .expect("the test Neutron has OVN metadata on: every network has its port")
        .to_string();
    let meta_ip = v["ports"][0]["fixed_ips"][0]["ip_address"]
        .as_str()
        .unwrap()
        .to_string();
    let (vip_before, meta_before) = (port_state(&n, &vip), port_state(&n, &meta));
    let ports_before = all_ports_on(&n, &os_net);
    let c = unique("dk-vip1");
    let meta_named = format!("name={net},ip={meta_ip},driver-opt=courier.port={meta}");
    let refused: [(Vec<&str>, &str); 4] = [
        (vec!["--network", &net, "--ip", "10.239.0.40"], &vip),
        (
            vec![
                "--network",
                &net,
                "--ip",
                "10.239.0.40",
                "--mac-address",
                &vip_mac,
            ],
            &vip,
        ),
        (vec!["--network", &net, "--ip", &meta_ip], &meta),
        (vec!["--network", &meta_named], &meta),
    ];
    for (args, holder) in &refused {
        let out = s.run(&c, args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?} must be refused");
        docker_ok(&["rm", "-f", &c]);
        assert_eq!(
            port_state(&n, &vip),
            vip_before,
            "{args:?}: VIP port untouched"
        );
        assert_eq!(
            port_state(&n, &meta),
            meta_before,
            "{args:?}: metadata port untouched"
        );
        assert_eq!(
            all_ports_on(&n, &os_net),
            ports_before,
            "{args:?}: no port made or removed"
        );
        assert!(owned(&d).is_empty(), "{args:?}: {:?}", owned(&d));
        assert!(
            err.contains(*holder),
            "{args:?}: the error names the port holding the address: {err}"
        );
        if *holder == vip.as_str() && !args.iter().any(|a| a.contains("courier.port")) {
            assert!(
                err.contains(&format!("courier.port={vip}")),
                "and says how to name it: {err}"
            );
        }
    }
    // Named by id, with its address and MAC: bound, and given back as it was.
    s.run_ok(
        &c,
        &[
            "--network",
            &format!("name={net},ip=10.239.0.40,driver-opt=courier.port={vip}"),
            "--mac-address",
            &vip_mac,
        ],
    );
    let bound = port_state(&n, &vip);
    assert_eq!(bound["device_owner"], "compute:courier", "{bound}");
    assert_eq!(bound["binding:host_id"], n.host_id.as_str());
    assert_eq!(ip_of(&c, &net), "10.239.0.40");
    docker_ok(&["rm", "-f", &c]);
    assert!(
        eventually(Duration::from_secs(10), || owned(&d).is_empty()),
        "{:?}",
        owned(&d)
    );
    let mut back = port_state(&n, &vip);
    let mut was = vip_before.clone();
    for v in [&mut back, &mut was] {
        v.as_object_mut().unwrap().remove("revision_number");
    }
    assert_eq!(back, was, "given back as it was");
    assert_eq!(all_ports_on(&n, &os_net), ports_before);
}

/// A libnetwork host driven the way dockerd drives the plugin (the calls and bodies of
/// tests/fixtures/docker), straight on a test daemon's plugin socket: for what one dockerd
/// cannot show, e.g. a global-scope network on two hosts (dockerd without swarm refuses it).
struct PluginHost {
    sock: std::path::PathBuf,
}

impl PluginHost {
    fn call(&self, method: &str, body: Value) -> (u16, Value) {
        let (code, v, _) = plugin_call(&self.sock, method, &body.to_string());
        (code, v)
    }

    fn ok(&self, method: &str, body: Value) -> Value {
        let (code, v) = self.call(method, body.clone());
        assert_eq!(code, 200, "{method} {body}: {v}");
        v
    }

    /// RequestPool, the gateway's RequestAddress, CreateNetwork: returns the pool id.
    fn create_network(&self, nid: &str, subnet: &str, generic: Value) -> String {
        let pool = self.ok(
            "IpamDriver.RequestPool",
            json!({"AddressSpace": "courier-global", "Pool": subnet, "SubPool": "", "V6": false, "Options": {}}),
        )["PoolID"]
            .as_str()
            .unwrap()
            .to_string();
        let gw = self.ok(
            "IpamDriver.RequestAddress",
            json!({"PoolID": pool, "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
        )["Address"]
            .as_str()
            .unwrap()
            .to_string();
        self.ok(
            "NetworkDriver.CreateNetwork",
            json!({"NetworkID": nid, "Options": {"com.docker.network.enable_ipv6": false,
                "com.docker.network.generic": generic},
                "IPv4Data": [{"AddressSpace": "courier-global", "Pool": subnet, "Gateway": gw}],
                "IPv6Data": []}),
        );
        pool
    }

    /// RequestAddress + CreateEndpoint (the edge in the host netns, as before Join).
    fn endpoint(&self, nid: &str, pool: &str, eid: &str, mac: &str) -> Result<String, String> {
        let (code, v) = self.call(
            "IpamDriver.RequestAddress",
            json!({"PoolID": pool, "Address": "", "Options": {"com.docker.network.endpoint.macaddress": mac}}),
        );
        if code != 200 {
            return Err(v.to_string());
        }
        let addr = v["Address"].as_str().unwrap_or_default().to_string();
        let (code, v) = self.call(
            "NetworkDriver.CreateEndpoint",
            json!({"NetworkID": nid, "EndpointID": eid,
                "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": mac}, "Options": {}}),
        );
        if code != 200 {
            self.call(
                "IpamDriver.ReleaseAddress",
                json!({"PoolID": pool, "Address": addr}),
            );
            return Err(v.to_string());
        }
        Ok(addr)
    }

    fn remove_endpoint(&self, nid: &str, pool: &str, eid: &str, addr: &str) {
        self.ok(
            "NetworkDriver.DeleteEndpoint",
            json!({"NetworkID": nid, "EndpointID": eid}),
        );
        self.ok(
            "IpamDriver.ReleaseAddress",
            json!({"PoolID": pool, "Address": addr}),
        );
    }
}

/// A Docker-style id (64 hex), new per call (its first 12 digits too: they name the network).
fn docker_id(tag: u32) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let head = nanos.rotate_left(24) ^ (u64::from(tag) << 4) ^ u64::from(std::process::id());
    format!(
        "{head:016x}{nanos:016x}{tag:016x}{:016x}",
        std::process::id()
    )
}

/// At the end of a test, pass or fail: everything marked with these host marks (Neutron ports
/// by their create's description, OVS ports, host links), and these Neutron networks and OVN
/// switches, are removed, so a failed assertion leaves nothing behind on the shared services.
struct Purge<'a> {
    n: &'a NeutronEnv,
    marks: Vec<String>,
    neutron_names: Vec<String>,
    neutron_ids: Vec<String>,
    switches: Vec<String>,
}

impl Drop for Purge<'_> {
    fn drop(&mut self) {
        for m in &self.marks {
            let (_, v) = self
                .n
                .api("GET", &format!("/ports?description=courier:host:{m}"));
            for p in v["ports"].as_array().into_iter().flatten() {
                if let Some(id) = p["id"].as_str() {
                    self.n.api("DELETE", &format!("/ports/{id}"));
                }
            }
            let ports = sh(
                "ovs-vsctl",
                &[
                    "--bare",
                    "--columns=name",
                    "find",
                    "Port",
                    &format!("external_ids:courier-host={m}"),
                ],
            );
            for p in String::from_utf8_lossy(&ports.stdout).split_whitespace() {
                sh("ovs-vsctl", &["--if-exists", "del-port", p]);
            }
            let links: Value =
                serde_json::from_str(&sh_ok("ip", &["-j", "link", "show"])).unwrap_or(Value::Null);
            for l in links.as_array().into_iter().flatten() {
                if l["ifalias"]
                    .as_str()
                    .is_some_and(|a| a.starts_with(&format!("courier:{m}:")))
                {
                    if let Some(name) = l["ifname"].as_str() {
                        sh("ip", &["link", "del", name]);
                    }
                }
            }
        }
        for name in &self.neutron_names {
            for net in self.n.networks_named(name) {
                if let Some(id) = net["id"].as_str() {
                    self.n.api("DELETE", &format!("/networks/{id}"));
                }
            }
        }
        for id in &self.neutron_ids {
            self.n.api("DELETE", &format!("/networks/{id}"));
        }
        for s in &self.switches {
            sh("ovn-nbctl", &["--if-exists", "ls-del", s]);
        }
    }
}

/// `[docker] scope = "global"`: one Docker network on two hosts (two daemons, two host marks,
/// each with its own records), sharing one backend network. DeleteNetwork on the first host
/// while the second still has a container there removes only the first host's registration:
/// the backend network stays and the second host goes on attaching to it; the last host's
/// DeleteNetwork removes it (a network Courier made for Docker: deleted; a registered Neutron
/// network: unregistered, kept). Through Neutron (made, and registered) and OVN direct.
#[test]
fn global_scope_network_goes_with_its_last_host() {
    let t = "global_scope_network_goes_with_its_last_host";
    let Some(n) = NeutronEnv::get(t) else { return };
    if !docker_ready(t) {
        return;
    }
    let mut env: Vec<(&str, String)> = n.daemon_env();
    env.push(("COURIER_DOCKER_SCOPE", "global".into()));
    let a = docker_daemon("dk-glob-a", &env);
    let b = docker_daemon("dk-glob-b", &env);
    let (ha, hb) = (
        PluginHost {
            sock: plugin_for("dk-glob-a").1,
        },
        PluginHost {
            sock: plugin_for("dk-glob-b").1,
        },
    );
    let user_net = neutron_network(&n, &unique("dk-glob-user"), "10.240.3.0/24");
    let mut purge = Purge {
        n: &n,
        marks: vec![host_mark(&a), host_mark(&b)],
        neutron_names: vec![],
        neutron_ids: vec![user_net.clone()],
        switches: vec![],
    };
    let user_tagged = |name: &str| {
        let (_, v) = n.api("GET", &format!("/networks/{user_net}"));
        v["network"]["tags"].as_array().is_some_and(|t| {
            t.iter()
                .any(|t| t == &json!(format!("courier:network:{name}")))
        })
    };
    let cases: [(&str, Value, &str); 3] = [
        (
            "neutron",
            json!({"courier.backend": "neutron"}),
            "10.240.1.0/24",
        ),
        ("ovn", json!({"courier.backend": "ovn"}), "10.240.2.0/24"),
        (
            "registration",
            json!({"neutron.net.uuid": user_net}),
            "10.240.3.0/24",
        ),
    ];
    for (i, (case, generic, subnet)) in cases.iter().enumerate() {
        let nid = docker_id(0xd15 + i as u32);
        let name = courier_name(&nid);
        purge.neutron_names.push(name.clone());
        purge.switches.push(name.clone());
        let there = || match *case {
            "neutron" => n.networks_named(&name).len() == 1,
            "ovn" => switch_exists(&name),
            _ => user_tagged(&name),
        };
        let pool = ha.create_network(&nid, subnet, generic.clone());
        assert!(there(), "{case}: host A made (or registered) the network");
        assert_eq!(
            hb.create_network(&nid, subnet, generic.clone()),
            pool,
            "{case}: host B found it"
        );
        let mac = |h: u8, e: u8| format!("02:00:00:{:02x}:{h:02x}:{e:02x}", i);
        let (e1, e2, e3) = (docker_id(1), docker_id(2), docker_id(3));
        let a1 = ha.endpoint(&nid, &pool, &e1, &mac(0xa, 1)).unwrap();
        let b1 = hb.endpoint(&nid, &pool, &e2, &mac(0xb, 1)).unwrap();
        ha.remove_endpoint(&nid, &pool, &e1, &a1);
        // Host A's last container went: Docker removes the network there.
        let (code, v) = ha.call("NetworkDriver.DeleteNetwork", json!({"NetworkID": nid}));
        assert_eq!(code, 200, "{case}: host A's DeleteNetwork: {v}");
        assert!(
            there(),
            "{case}: the backend network host B uses is still there"
        );
        let (code, v) = ha.call(
            "NetworkDriver.CreateEndpoint",
            json!({"NetworkID": nid, "EndpointID": docker_id(9),
                "Interface": {"Address": "", "AddressIPv6": "", "MacAddress": mac(0xa, 9)}, "Options": {}}),
        );
        assert!(
            code != 200
                && v["Err"]
                    .as_str()
                    .unwrap_or("")
                    .contains("not a Courier network"),
            "{case}: host A's registration of the Docker network is gone: {code} {v}"
        );
        let b2 = hb
            .endpoint(&nid, &pool, &e3, &mac(0xb, 2))
            .unwrap_or_else(|e| panic!("{case}: host B still attaches to it: {e}"));
        hb.remove_endpoint(&nid, &pool, &e2, &b1);
        hb.remove_endpoint(&nid, &pool, &e3, &b2);
        hb.ok("NetworkDriver.DeleteNetwork", json!({"NetworkID": nid}));
        assert!(!there(), "{case}: the last host's DeleteNetwork removed it");
        for d in [&a, &b] {
            assert!(owned(d).is_empty(), "{case}: {:?}", owned(d));
            assert!(
                n.owned_ports(d).is_empty(),
                "{case}: {:?}",
                n.owned_ports(d)
            );
        }
    }
    assert!(
        n.ports_on(&user_net).is_empty(),
        "{:?}",
        n.ports_on(&user_net)
    );
    let (code, _) = n.api("GET", &format!("/networks/{user_net}"));
    assert_eq!(code, 200, "the user's network is kept");
}

/// `docker network rm` while Courier is down: Docker forgets the network (its DeleteNetwork to
/// a plugin that is not there fails, and Docker removes it anyway). When Courier starts, its
/// reconcile compares its records with the Docker Engine's network list and removes what Docker
/// no longer has as DeleteNetwork would: the Neutron network and the OVN switch are gone
/// (counted in Neutron and OVN NB, by name), a network Docker still has is kept. With the
/// Docker Engine unreachable nothing is removed and status says why.
#[test]
fn docker_network_rm_while_courier_is_down_is_reconciled() {
    let t = "docker_network_rm_while_courier_is_down_is_reconciled";
    let Some(n) = NeutronEnv::get(t) else { return };
    if !docker_ready(t) {
        return;
    }
    // A record is left alone for the lease timeout after CreateNetwork (Docker lists a network
    // only once CreateNetwork answered); 1 s here.
    let mut env: Vec<(&str, String)> = n.daemon_env();
    env.push(("COURIER_DOCKER_LEASE_TIMEOUT_SECS", "1".into()));
    let mut d = docker_daemon("dk-netrm", &env);
    let (plugin, _) = plugin_for("dk-netrm");
    let mut s = DockerScope::default();
    let (neu, ovn, kept) = (
        unique("dk-netrm-n"),
        unique("dk-netrm-o"),
        unique("dk-netrm-k"),
    );
    let neu_id = s.network(
        &plugin,
        &neu,
        &["--subnet", "10.241.0.0/24", "-o", "courier.backend=neutron"],
    );
    let ovn_id = s.network(&plugin, &ovn, &["--subnet", &subnet_for(52)]);
    let kept_id = s.network(&plugin, &kept, &["--subnet", &subnet_for(53)]);
    let _purge = Purge {
        n: &n,
        marks: vec![host_mark(&d)],
        neutron_names: vec![courier_name(&neu_id)],
        neutron_ids: vec![],
        switches: vec![courier_name(&ovn_id), courier_name(&kept_id)],
    };
    let c = unique("dk-netrm1");
    s.run_ok(&c, &["--network", &kept]);
    assert_eq!(n.networks_named(&courier_name(&neu_id)).len(), 1);
    assert!(switch_exists(&courier_name(&ovn_id)));

    d.kill9();
    let t0 = std::time::Instant::now();
    // Each waits out Docker's retries of the missing plugin: both at once.
    let rms: Vec<_> = [&neu, &ovn]
        .iter()
        .map(|net| {
            std::process::Command::new("/usr/bin/docker")
                .env("DOCKER_HOST", DOCKER_HOST)
                .args(["network", "rm", net.as_str()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for r in rms {
        let r = r.wait_with_output().unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    eprintln!(
        "docker network rm with Courier down took {:?}",
        t0.elapsed()
    );
    std::thread::sleep(Duration::from_secs(2));
    let mut all: Vec<(String, String)> = docker_env("dk-netrm")
        .into_iter()
        .chain(env.iter().cloned())
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    // First with the Docker Engine unreachable: nothing is removed, and status says why.
    all.push((
        "COURIER_DOCKER_ENGINE".into(),
        format!("unix://{}/no-docker.sock", d.dir.display()),
    ));
    let refs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    d.restart(&refs);
    wait_backends(&d);
    let (code, r) = d.api("POST", "/v1/reconcile", None);
    assert_eq!(code, 200, "{r}");
    assert!(
        r["removed_docker_networks"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "{r}"
    );
    let (_, st) = d.api("GET", "/v1/status", None);
    assert!(
        st["reconcile_errors"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["error"].as_str().unwrap_or("").contains("Docker Engine")),
        "status says the Docker Engine does not answer: {st}"
    );
    assert_eq!(n.networks_named(&courier_name(&neu_id)).len(), 1);
    assert!(switch_exists(&courier_name(&ovn_id)));

    // Then with it: what Docker no longer has goes, the rest stays.
    all.pop();
    let refs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    d.restart(&refs);
    wait_backends(&d);
    // The start-up pass (or the one after Neutron connected) does it; asked again until then.
    assert!(
        eventually(Duration::from_secs(20), || {
            d.api("POST", "/v1/reconcile", None);
            n.networks_named(&courier_name(&neu_id)).is_empty()
                && !switch_exists(&courier_name(&ovn_id))
        }),
        "the Neutron network and the OVN switch of the removed Docker networks are gone\n{}",
        d.log()
    );
    let log = d.log();
    for id in [&neu_id, &ovn_id] {
        assert!(
            log.lines()
                .any(|l| l.contains("Docker no longer has this network") && l.contains(id.as_str())),
            "the log says why {id} went"
        );
    }
    assert!(
        switch_exists(&courier_name(&kept_id)),
        "Docker's live one is kept"
    );
    let (_, st) = d.api("GET", "/v1/status", None);
    assert!(
        st["reconcile_errors"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "{st}"
    );
    // The kept network still works and goes the usual way.
    let c2 = unique("dk-netrm2");
    s.run_ok(&c2, &["--network", &kept]);
    assert!(ping(&c2, &ip_of(&c, &kept)));
    docker_ok(&["rm", "-f", &c, &c2]);
    assert!(
        eventually(Duration::from_secs(10), || owned(&d).is_empty()),
        "{:?}",
        owned(&d)
    );
    docker_ok(&["network", "rm", &kept]);
    s.networks.clear();
    assert!(!switch_exists(&courier_name(&kept_id)));
    assert!(n.owned_ports(&d).is_empty());
}
