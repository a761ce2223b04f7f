//! The CLI verbs against a real daemon and OVN.
mod common;
use common::*;

#[test]
fn cli_network_attach_ping_detach() {
    if !env_ready("cli_network_attach_ping_detach") {
        return;
    }
    let d = TestDaemon::start_with("cli", &[("COURIER_MTU", "1400")]);
    // The API socket is root-only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    let baseline = world(&d);
    let net = unique("cli-net");
    let subnet = subnet_for(3);
    d.create_network(&net, &subnet);

    let list = d.cli(&["network", "list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains(&net));
    let show = d.cli(&["--json", "network", "show", &net]);
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).expect("json");
    assert_eq!(v["subnet"], subnet);
    assert_eq!(v["gateway"], subnet.replace(".0/24", ".1"));
    let other = nbctl(&["get", "Logical_Switch", &net, "other_config:subnet"]);
    assert_eq!(other.trim().trim_matches('"'), subnet);

    // --exclude-ips reaches OVN together with the gateway.
    let net2 = unique("cli-ex");
    let sub2 = subnet_for(7);
    let base2 = sub2.trim_end_matches(".0/24").to_string();
    let range = format!("{base2}.2..{base2}.9");
    let out = d.cli(&[
        "network",
        "create",
        &net2,
        "--subnet",
        &sub2,
        "--exclude-ips",
        &range,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ex = nbctl(&["get", "Logical_Switch", &net2, "other_config:exclude_ips"]);
    assert_eq!(ex.trim().trim_matches('"'), format!("{base2}.1 {range}"));
    let z = Netns::new("cli-z");
    let az = d.cli(&["--json", "attach", "--netns", &z.path(), "--network", &net2]);
    assert!(
        az.status.success(),
        "{}",
        String::from_utf8_lossy(&az.stderr)
    );
    let vz: serde_json::Value = serde_json::from_slice(&az.stdout).unwrap();
    assert_eq!(
        vz["port"]["ips"][0],
        format!("{base2}.10/24"),
        "first address after the excluded range"
    );
    assert!(d.cli(&["detach", "--netns", &z.path()]).status.success());
    assert!(d.cli(&["network", "delete", &net2]).status.success());

    let x = Netns::new("cli-x");
    let y = Netns::new("cli-y");
    // A requested MAC and IP are honoured by OVN and land on the interface.
    let want_ip = subnet.replace(".0/24", ".42");
    let ax = d.cli(&[
        "--json",
        "attach",
        "--netns",
        &x.path(),
        "--network",
        &net,
        "--mac",
        "0a:00:00:c0:ff:ee",
        "--ip",
        &want_ip,
    ]);
    assert!(
        ax.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&ax.stderr),
        d.log()
    );
    let vx: serde_json::Value = serde_json::from_slice(&ax.stdout).unwrap();
    assert_eq!(vx["port"]["mac"], "0a:00:00:c0:ff:ee");
    assert_eq!(vx["port"]["ips"][0], format!("{want_ip}/24"));
    let link =
        String::from_utf8_lossy(&x.exec(&["ip", "-o", "link", "show", "eth0"]).stdout).to_string();
    assert!(link.contains("0a:00:00:c0:ff:ee"), "{link}");
    assert!(link.contains("mtu 1400"), "COURIER_MTU not applied: {link}");
    let ay = d.cli(&[
        "--json",
        "attach",
        "--netns",
        &y.path(),
        "--network",
        &net,
        "--ifname",
        "net1",
    ]);
    assert!(
        ay.status.success(),
        "{}",
        String::from_utf8_lossy(&ay.stderr)
    );
    let vy: serde_json::Value = serde_json::from_slice(&ay.stdout).unwrap();
    let ip_y = vy["port"]["ips"][0]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(y.has_link("net1"));
    assert!(x.ping(&ip_y), "x cannot reach y over OVN");

    let ports = d.cli(&["port", "list"]);
    let ports = String::from_utf8_lossy(&ports.stdout).to_string();
    assert_eq!(
        ports.lines().filter(|l| l.contains(&net)).count(),
        2,
        "{ports}"
    );

    // A network with ports cannot be deleted; nothing changes.
    let before = world(&d);
    let del = d.cli(&["network", "delete", &net]);
    assert!(!del.status.success());
    assert!(
        String::from_utf8_lossy(&del.stderr).contains("detach"),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );
    assert_eq!(world(&d), before);

    let st = d.cli(&["status"]);
    assert!(st.status.success());
    let st = String::from_utf8_lossy(&st.stdout).to_string();
    assert!(st.contains("attachments: 2"), "{st}");

    assert!(d.cli(&["detach", "--netns", &x.path()]).status.success());
    assert!(d
        .cli(&["detach", "--netns", &y.path(), "--ifname", "net1"])
        .status
        .success());
    assert!(!y.has_link("net1"));
    assert!(d.cli(&["network", "delete", &net]).status.success());
    assert_eq!(world(&d), baseline);
}

#[test]
fn help_is_accurate() {
    // No environment needed: --help of every verb renders and names its options.
    for (args, needle) in [
        (vec!["--help"], "daemon"),
        (vec!["attach", "--help"], "--netns"),
        (vec!["attach", "--help"], "--port"),
        (vec!["attach", "--help"], "--security-group"),
        (vec!["attach", "--help"], "--binding"),
        (vec!["network", "create", "--help"], "--backend"),
        (vec!["network", "create", "--help"], "--neutron-network"),
        (vec!["bench", "attach", "--help"], "--network"),
        (vec!["detach", "--help"], "--container-id"),
        (vec!["network", "create", "--help"], "--subnet"),
        (vec!["bench", "attach", "--help"], "--count"),
        (vec!["status", "--help"], "health"),
    ] {
        let out = std::process::Command::new(BIN)
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(needle),
            "{args:?} lacks {needle}"
        );
    }
}
