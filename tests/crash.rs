//! Crash safety: the daemon is killed with SIGKILL at each step of attach and detach
//! (COURIER_CRASH_AT), restarted, and the test asserts nothing leaked — no LSP, no OVS port,
//! no veth, no store entry — or, for a crash after the attachment was recorded complete,
//! that it is complete and works.
mod common;
use std::time::Duration;

use common::*;

#[test]
fn kill9_at_every_step_leaks_nothing() {
    if !hooks_ready("kill9_at_every_step_leaks_nothing") {
        return;
    }
    let mut d = TestDaemon::start("crash");
    let net = unique("crash-net");
    d.create_network(&net, &subnet_for(5));
    let conf = d.netconf(&net, "1.1.0");
    let clean = world(&d);
    let ns = Netns::new("crash-a");

    for step in ATTACH_STEPS {
        d.restart(&[("COURIER_CRASH_AT", step)]);
        let (code, out) = d.cni("ADD", "crashy", &ns.path(), "eth0", &conf);
        assert_ne!(
            code, 0,
            "{step}: ADD should fail when the daemon dies: {out}"
        );
        let st = d.wait_exit(Duration::from_secs(10));
        assert!(!st.success(), "{step}: daemon should have been killed");
        d.restart(&[]);
        assert_eq!(
            world(&d),
            clean,
            "{step}: leaked after restart\n{}",
            d.log()
        );
        assert!(!ns.has_link("eth0"), "{step}: interface left in netns");
    }

    // Crash after the attachment is recorded complete: it survives the restart intact.
    d.restart(&[("COURIER_CRASH_AT", "after-ready")]);
    let (code, _) = d.cni("ADD", "crashy", &ns.path(), "eth0", &conf);
    assert_ne!(code, 0);
    d.wait_exit(Duration::from_secs(10));
    d.restart(&[]);
    assert_eq!(
        d.cni("CHECK", "crashy", &ns.path(), "eth0", &conf).0,
        0,
        "after-ready: attachment should be complete\n{}",
        d.log()
    );
    assert_eq!(d.cni("DEL", "crashy", &ns.path(), "eth0", &conf).0, 0);
    assert_eq!(world(&d), clean);

    for step in DETACH_STEPS {
        d.restart(&[]);
        let (code, out) = d.cni("ADD", "crashy", &ns.path(), "eth0", &conf);
        assert_eq!(code, 0, "{step}: {out}");
        d.restart(&[("COURIER_CRASH_AT", step)]);
        let (code, _) = d.cni("DEL", "crashy", &ns.path(), "eth0", &conf);
        assert_ne!(code, 0, "{step}: DEL should fail when the daemon dies");
        d.wait_exit(Duration::from_secs(10));
        d.restart(&[]);
        assert_eq!(
            world(&d),
            clean,
            "{step}: leaked after restart\n{}",
            d.log()
        );
        assert!(!ns.has_link("eth0"), "{step}: interface left in netns");
    }

    // Leaks the store never saw (made behind Courier's back with its marks) are swept at start;
    // look-alikes marked for another host are left alone.
    d.kill9();
    let me = format!("it-{}", d.name);
    let id = "0123456789ab";
    let lsp = format!("courier-{id}");
    nbctl(&[
        "lsp-add",
        &net,
        &lsp,
        "--",
        "set",
        "Logical_Switch_Port",
        &lsp,
        "external_ids:courier-owner=courier",
        &format!("external_ids:courier-host={me}"),
        &format!("external_ids:courier-attachment={id}"),
    ]);
    let veth = |name: &str, alias: &str| {
        let peer = name.replacen("cv", "cp", 1);
        sh_ok(
            "ip",
            &["link", "add", name, "type", "veth", "peer", "name", &peer],
        );
        sh_ok("ip", &["link", "set", name, "alias", alias]);
    };
    veth(&format!("cv{id}"), &format!("courier:{me}:{id}"));
    let id2 = "ba9876543210";
    veth(&format!("cv{id2}"), &format!("courier:{me}:{id2}"));
    sh_ok(
        "ovs-vsctl",
        &[
            "add-port",
            "br-int",
            &format!("cv{id2}"),
            "--",
            "set",
            "Port",
            &format!("cv{id2}"),
            "external_ids:courier-owner=courier",
            &format!("external_ids:courier-host={me}"),
            &format!("external_ids:courier-attachment={id2}"),
        ],
    );
    let foreign_id = format!("{:012x}", std::process::id());
    let foreign = format!("cv{foreign_id}");
    let foreign = foreign.as_str();
    veth(foreign, &format!("courier:another-host:{foreign_id}"));
    d.restart(&[]);
    let log = d.log();
    assert!(
        sh("ip", &["link", "show", foreign]).status.success(),
        "another host's link was swept\n{log}"
    );
    sh_ok("ip", &["link", "del", foreign]);
    assert!(
        log.contains("deleted leaked logical port"),
        "LSP sweep not exercised\n{log}"
    );
    assert!(
        log.contains("deleted leaked bridge port"),
        "bridge port sweep not exercised\n{log}"
    );
    assert!(
        log.contains("deleted leaked host interface"),
        "link sweep not exercised\n{log}"
    );
    assert_eq!(world(&d), clean, "orphans not swept\n{log}");

    assert!(d.cli(&["network", "delete", &net]).status.success());
}

/// A forgotten DEL: the container's netns disappears without a DEL. Periodic reconcile (here
/// triggered through the API) detaches it and leaves nothing behind.
#[test]
fn reconcile_detaches_when_netns_is_gone() {
    if !env_ready("reconcile_detaches_when_netns_is_gone") {
        return;
    }
    let d = TestDaemon::start("gone");
    let net = unique("gone-net");
    d.create_network(&net, &subnet_for(6));
    let conf = d.netconf(&net, "1.1.0");
    let clean = world(&d);
    let keep = Netns::new("gone-keep");
    assert_eq!(d.cni("ADD", "keeper", &keep.path(), "eth0", &conf).0, 0);
    let with_keeper = world(&d);
    {
        let doomed = Netns::new("gone-doomed");
        let (code, out) = d.cni("ADD", "doomed", &doomed.path(), "eth0", &conf);
        assert_eq!(code, 0, "{out}");
        assert_eq!(d.store().len(), 2);
    } // netns deleted here, no DEL
    let (code, report) = d.api("POST", "/v1/reconcile", None);
    assert_eq!(code, 200, "{report}");
    assert_eq!(
        report["detached_gone_netns"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert_eq!(
        world(&d),
        with_keeper,
        "the gone container's port, bridge port or veth leaked"
    );
    assert_eq!(
        d.cni("CHECK", "keeper", &keep.path(), "eth0", &conf).0,
        0,
        "the live one is untouched"
    );
    assert_eq!(d.cni("DEL", "keeper", &keep.path(), "eth0", &conf).0, 0);
    assert_eq!(world(&d), clean);
    assert!(d.cli(&["network", "delete", &net]).status.success());
}

/// The netns path comes back but names a *different* namespace (a runtime reusing a name, a
/// reused PID in /proc/PID/ns/net): the old attachment is as good as forgotten and is detached.
#[test]
fn reconcile_detaches_when_netns_path_is_reused() {
    if !env_ready("reconcile_detaches_when_netns_path_is_reused") {
        return;
    }
    let d = TestDaemon::start("reuse");
    let net = unique("reuse-net");
    d.create_network(&net, &subnet_for(12));
    let conf = d.netconf(&net, "1.1.0");
    let clean = world(&d);
    let ns = Netns::new("reuse-a");
    assert_eq!(d.cni("ADD", "first", &ns.path(), "eth0", &conf).0, 0);
    // Same name, new namespace: the path exists again, the old interface is gone with the old ns.
    sh_ok("ip", &["netns", "del", &ns.name]);
    sh_ok("ip", &["netns", "add", &ns.name]);
    let (code, report) = d.api("POST", "/v1/reconcile", None);
    assert_eq!(code, 200, "{report}");
    assert_eq!(
        report["detached_gone_netns"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert_eq!(
        world(&d),
        clean,
        "the replaced namespace's attachment leaked"
    );
    assert!(d.cli(&["network", "delete", &net]).status.success());
}
