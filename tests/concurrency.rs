//! Concurrency: parallel ADD/DEL through the CNI plugin, ADD racing DEL on the same interface,
//! and reconcile sweeps running all the while. Afterwards every attachment that exists is whole
//! (CHECK passes) and, once everything is deleted, nothing is left in OVN, OVS or the kernel.
mod common;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;

#[test]
fn parallel_attach_detach_with_sweeps_leaks_nothing() {
    if !env_ready("parallel_attach_detach_with_sweeps_leaks_nothing") {
        return;
    }
    let d = TestDaemon::start("conc");
    let net = unique("conc-net");
    d.create_network(&net, &subnet_for(8));
    let conf = d.netconf(&net, "1.1.0");
    let clean = world(&d);
    let spaces: Vec<Netns> = (0..12).map(|i| Netns::new(&format!("conc{i}"))).collect();

    // Reconcile sweeps in a loop while attaches are in flight.
    let stop = Arc::new(AtomicBool::new(false));
    let sweeps = {
        let stop = stop.clone();
        let socket = d.socket.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let out = std::process::Command::new(BIN)
                    .args(["--socket", socket.to_str().unwrap(), "reconcile"])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                assert!(
                    out.status.success(),
                    "reconcile failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                // Nothing in flight may ever be taken for a leak.
                assert!(
                    text.contains("\"leaked_ports\": []")
                        && text.contains("\"leaked_links\": []")
                        && text.contains("\"leaked_bridge_ports\": []"),
                    "sweep took a live resource: {text}"
                );
                n += 1;
            }
            n
        })
    };

    // 12 containers, 6 threads: ADD all in parallel.
    std::thread::scope(|s| {
        for chunk in spaces.chunks(2) {
            let conf = &conf;
            let d = &d;
            s.spawn(move || {
                for ns in chunk {
                    let (code, out) = d.cni("ADD", &ns.name, &ns.path(), "eth0", conf);
                    assert_eq!(code, 0, "ADD {}: {out}", ns.name);
                }
            });
        }
    });
    assert_eq!(d.store().len(), 12);

    // ADD and DEL racing on the same interfaces, several rounds: whatever wins, the result is
    // whole (CHECK passes) or entirely absent.
    let racers: Vec<Netns> = (0..4).map(|i| Netns::new(&format!("race{i}"))).collect();
    for round in 0..3 {
        std::thread::scope(|s| {
            for ns in &racers {
                let (d, conf) = (&d, &conf);
                s.spawn(move || d.cni("ADD", &ns.name, &ns.path(), "eth0", conf));
                s.spawn(move || d.cni("DEL", &ns.name, &ns.path(), "eth0", conf));
            }
        });
        for ns in &racers {
            let attached = d
                .store()
                .iter()
                .any(|a| a["container_id"] == ns.name.as_str());
            if attached {
                let (code, out) = d.cni("CHECK", &ns.name, &ns.path(), "eth0", &conf);
                assert_eq!(
                    code, 0,
                    "round {round}: {} is recorded but not whole: {out}",
                    ns.name
                );
            } else {
                assert!(
                    !ns.has_link("eth0"),
                    "round {round}: {} has an interface but no record",
                    ns.name
                );
            }
            assert_eq!(d.cni("DEL", &ns.name, &ns.path(), "eth0", &conf).0, 0);
        }
    }

    // Every parallel attachment still works: CHECK, and packets cross between two of them.
    for ns in &spaces {
        let (code, out) = d.cni("CHECK", &ns.name, &ns.path(), "eth0", &conf);
        assert_eq!(code, 0, "{}: {out}", ns.name);
    }
    let ip_of = |ns: &Netns| {
        let out = ns.exec(&["ip", "-o", "-4", "addr", "show", "eth0"]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(3)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string()
    };
    assert!(spaces[0].ping(&ip_of(&spaces[11])));

    // DEL all in parallel.
    std::thread::scope(|s| {
        for chunk in spaces.chunks(2) {
            let (d, conf) = (&d, &conf);
            s.spawn(move || {
                for ns in chunk {
                    assert_eq!(d.cni("DEL", &ns.name, &ns.path(), "eth0", conf).0, 0);
                }
            });
        }
    });
    stop.store(true, Ordering::Relaxed);
    let n = sweeps.join().expect("sweeper");
    assert!(n > 0, "no sweep ran");
    assert_eq!(world(&d), clean, "leaked after parallel attach/detach");
    assert!(d.cli(&["network", "delete", &net]).status.success());
}

/// Two containers ask for the same address at the same moment: exactly one gets it, the other
/// is told the address is in use (105), and OVN never holds the address twice.
#[test]
fn same_requested_ip_in_parallel_is_given_once() {
    if !env_ready("same_requested_ip_in_parallel_is_given_once") {
        return;
    }
    let d = TestDaemon::start("sameip");
    let net = unique("sameip-net");
    let subnet = subnet_for(11);
    d.create_network(&net, &subnet);
    let clean = world(&d);
    for round in 0..5 {
        let want = subnet.replace(".0/24", &format!(".{}", 100 + round));
        let conf = serde_json::json!({"cniVersion": "1.1.0", "name": net, "type": "courier", "socket": d.socket,
            "runtimeConfig": {"ips": [format!("{want}/24")]}})
        .to_string();
        let spaces: Vec<Netns> = (0..4)
            .map(|i| Netns::new(&format!("sameip{round}{i}")))
            .collect();
        let results: Vec<(i32, serde_json::Value)> = std::thread::scope(|s| {
            let handles: Vec<_> = spaces
                .iter()
                .map(|ns| {
                    let (d, conf) = (&d, &conf);
                    s.spawn(move || d.cni("ADD", &ns.name, &ns.path(), "eth0", conf))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners = results.iter().filter(|(c, _)| *c == 0).count();
        assert_eq!(winners, 1, "round {round}: {results:?}");
        for (c, out) in &results {
            if *c != 0 {
                assert_eq!(out["code"], 105, "round {round}: {out}");
            }
        }
        // One dynamic_addresses value per port: count the ports holding the address.
        let holders = nbctl(&[
            "--bare",
            "--columns=dynamic_addresses",
            "list",
            "Logical_Switch_Port",
        ])
        .split_whitespace()
        .filter(|w| *w == want)
        .count();
        assert_eq!(
            holders, 1,
            "round {round}: OVN holds {want} {holders} times"
        );
        for ns in &spaces {
            assert_eq!(d.cni("DEL", &ns.name, &ns.path(), "eth0", &conf).0, 0);
        }
    }
    assert_eq!(world(&d), clean);
    assert!(d.cli(&["network", "delete", &net]).status.success());
}
