//! Bad input gets a clear error and changes nothing: OVN, OVS, host links and the store are
//! compared before and after each case.
mod common;
use common::*;
use serde_json::json;

#[test]
fn bad_input_changes_nothing() {
    if !env_ready("bad_input_changes_nothing") {
        return;
    }
    let d = TestDaemon::start("bad");
    let net = unique("bad-net");
    let subnet = subnet_for(4);
    d.create_network(&net, &subnet);
    let conf = d.netconf(&net, "1.1.0");
    let a = Netns::new("bad-a");

    type Case<'a> = (
        &'a str,
        Box<dyn Fn() -> (i32, serde_json::Value) + 'a>,
        u64,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            Box::new(|| {
                d.cni(
                    "ADD",
                    "c1",
                    &a.path(),
                    "eth0",
                    "{\"cniVersion\": \"1.1.0\", \"name\":",
                )
            }),
            6,
            "JSON",
        ),
        (
            "unknown network",
            Box::new(|| {
                d.cni(
                    "ADD",
                    "c1",
                    &a.path(),
                    "eth0",
                    &d.netconf("no-such-net", "1.1.0"),
                )
            }),
            7,
            "courier network create",
        ),
        (
            "missing CNI_NETNS",
            Box::new(|| d.cni("ADD", "c1", "", "eth0", &conf)),
            4,
            "CNI_NETNS",
        ),
        (
            "netns is not a netns",
            Box::new(|| d.cni("ADD", "c1", "/etc/hostname", "eth0", &conf)),
            4,
            "not a network namespace",
        ),
        (
            "netns does not exist",
            Box::new(|| d.cni("ADD", "c1", "/var/run/netns/does-not-exist", "eth0", &conf)),
            4,
            "does-not-exist",
        ),
        (
            "bad ifname",
            Box::new(|| d.cni("ADD", "c1", &a.path(), "this-name-is-too-long", &conf)),
            7,
            "15 characters",
        ),
        (
            "unsupported cniVersion",
            Box::new(|| d.cni("ADD", "c1", &a.path(), "eth0", &d.netconf(&net, "0.3.1"))),
            1,
            "cniVersion",
        ),
        (
            "IP outside subnet",
            Box::new(|| {
                let c = json!({"cniVersion": "1.1.0", "name": net, "type": "courier", "socket": d.socket, "runtimeConfig": {"ips": ["192.0.2.5/24"]}}).to_string();
                d.cni("ADD", "c1", &a.path(), "eth0", &c)
            }),
            7,
            "not a usable address",
        ),
        (
            "bad MAC",
            Box::new(|| {
                cni_exec(
                    "ADD",
                    "c1",
                    &a.path(),
                    "eth0",
                    &conf,
                    &[("CNI_ARGS", "MAC=zz:zz")],
                )
            }),
            7,
            "MAC address",
        ),
        (
            "GC without valid list",
            Box::new(|| d.cni("GC", "", "", "", &conf)),
            7,
            "valid-attachments",
        ),
    ];
    for (what, run, code, needle) in &cases {
        let before = world(&d);
        let (exit, out) = run();
        assert_eq!(exit, 1, "{what}: expected failure, got {out}");
        assert_eq!(out["code"], *code, "{what}: {out}");
        assert!(
            out["msg"].as_str().unwrap_or("").contains(needle),
            "{what}: message should mention {needle:?}: {out}"
        );
        assert!(
            out["cniVersion"].is_string(),
            "{what}: error JSON needs cniVersion: {out}"
        );
        assert_eq!(world(&d), before, "{what}: state changed");
        assert!(!a.has_link("eth0"), "{what}: interface appeared");
    }

    // A second ADD for the same container+ifname: refused, first attachment untouched.
    let (code, first) = d.cni("ADD", "dup", &a.path(), "eth0", &conf);
    assert_eq!(code, 0, "{first}\n{}", d.log());
    let before = world(&d);
    let (code, out) = d.cni("ADD", "dup", &a.path(), "eth0", &conf);
    assert_eq!(code, 1);
    assert_eq!(out["code"], 102, "{out}");
    assert!(
        out["msg"]
            .as_str()
            .unwrap()
            .contains("already has interface"),
        "{out}"
    );
    assert_eq!(world(&d), before);
    assert_eq!(
        d.cni("CHECK", "dup", &a.path(), "eth0", &conf).0,
        0,
        "first attachment must still be intact"
    );
    // The same address requested by someone else: refused, nothing changes.
    let taken = first["ips"][0]["address"].as_str().unwrap().to_string();
    let b = Netns::new("bad-b");
    let c = json!({"cniVersion": "1.1.0", "name": net, "type": "courier", "socket": d.socket, "runtimeConfig": {"ips": [taken]}}).to_string();
    let (code, out) = d.cni("ADD", "other", &b.path(), "eth0", &c);
    assert_eq!((code, out["code"].as_u64()), (1, Some(105)), "{out}");
    assert_eq!(world(&d), before);
    // The same MAC requested by someone else: refused, nothing changes.
    let taken_mac = first["interfaces"][1]["mac"].as_str().unwrap().to_string();
    let c = json!({"cniVersion": "1.1.0", "name": net, "type": "courier", "socket": d.socket, "runtimeConfig": {"mac": taken_mac}}).to_string();
    let (code, out) = d.cni("ADD", "other", &b.path(), "eth0", &c);
    assert_eq!((code, out["code"].as_u64()), (1, Some(105)), "{out}");
    assert!(out["msg"].as_str().unwrap().contains(&taken_mac), "{out}");
    assert_eq!(world(&d), before);
    assert_eq!(d.cni("DEL", "dup", &a.path(), "eth0", &conf).0, 0);

    // Networks with invalid CIDRs, through the CLI and the API.
    let before = world(&d);
    for subnet in [
        "10.1.2.0/33",
        "10.1.2.300/24",
        "not-a-cidr",
        "10.1.2.5/24",
        "10.1.2.0/30",
    ] {
        let out = d.cli(&["network", "create", &unique("badcidr"), "--subnet", subnet]);
        assert!(!out.status.success(), "{subnet} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(subnet.split('/').next().unwrap()) || err.contains("subnet"),
            "{subnet}: {err}"
        );
    }
    let (code, body) = d.api(
        "POST",
        "/v1/networks",
        Some(json!({"name": "x", "subnet": "10.1.2.0/24", "gateway": "10.9.9.1"})),
    );
    assert_eq!(code, 400, "{body}");
    let (code, body) = d.api(
        "POST",
        "/v1/networks",
        Some(json!({"name": net, "subnet": "10.1.2.0/24"})),
    );
    assert_eq!(code, 409, "duplicate network name: {body}");
    let (code, body) = d.api("POST", "/v1/attachments", Some(json!({"garbage": true})));
    assert_eq!((code, body["code"].as_u64()), (400, Some(6)), "{body}");
    assert_eq!(world(&d), before);

    // A logical switch Courier did not create is not Courier's to delete.
    let foreign = unique("foreign-ls");
    nbctl(&["ls-add", &foreign]);
    let before = world(&d);
    let out = d.cli(&["network", "delete", &foreign]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not created by Courier"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(world(&d), before);
    nbctl(&["ls-del", &foreign]);

    assert!(d.cli(&["network", "delete", &net]).status.success());
}

#[test]
fn daemon_down_gives_cni_codes() {
    // No environment needed: nothing listens on this socket.
    let sock = std::env::temp_dir().join(format!("courier-nowhere-{}.sock", std::process::id()));
    let conf =
        json!({"cniVersion": "1.0.0", "name": "n", "type": "courier", "socket": sock}).to_string();
    let (code, out) = cni_exec("ADD", "c", "/var/run/netns/x", "eth0", &conf, &[]);
    assert_eq!(code, 1);
    assert_eq!(out["code"], 11, "{out}");
    assert_eq!(out["cniVersion"], "1.0.0");
    assert!(
        out["msg"].as_str().unwrap().contains("courier daemon"),
        "{out}"
    );
    let (code, out) = cni_exec("STATUS", "", "", "", &conf, &[]);
    assert_eq!((code, out["code"].as_u64()), (1, Some(50)), "{out}");
    let (code, out) = cni_exec("ADD", "c", "/x", "eth0", "not json", &[]);
    assert_eq!((code, out["code"].as_u64()), (1, Some(6)), "{out}");
    let (code, v) = cni_exec("VERSION", "", "", "", "", &[]);
    assert_eq!(code, 0);
    assert_eq!(v["cniVersion"], "1.1.0");
}
