//! Monitor-cache lookups at 10 000 ports: the old way (clone or scan the whole table, as
//! Courier's OVN backend and vswitch code did) against the new way (a declared index).
//! Prints a table; asserts only that both ways give the same answers.
//!
//! `cargo bench -p courier-ovsdb --bench cache_lookup`

use std::hint::black_box;
use std::time::{Duration, Instant};

use courier_ovsdb::{self as ovsdb, CacheView, Index, Monitor, Row};
use serde_json::{json, Map, Value};

const SWITCHES: usize = 100;
const PORTS: usize = 10_000;
const HOSTS: usize = 100;

const LS: &str = "Logical_Switch";
const LSP: &str = "Logical_Switch_Port";
const LS_BY_NAME: Index = Index::new(LS, "name");
const LS_BY_PORT: Index = Index::new(LS, "ports");
const LSP_BY_NAME: Index = Index::new(LSP, "name");
const LSP_BY_HOST: Index = Index::map_key(LSP, "external_ids", "courier-host");
const NB_INDEXES: &[Index] = &[LS_BY_NAME, LS_BY_PORT, LSP_BY_NAME, LSP_BY_HOST];
const PORT_BY_NAME: Index = Index::new("Port", "name");
const PORT_BY_HOST: Index = Index::map_key("Port", "external_ids", "courier-host");
const IFACE_BY_NAME: Index = Index::new("Interface", "name");
const OVS_INDEXES: &[Index] = &[PORT_BY_NAME, PORT_BY_HOST, IFACE_BY_NAME];

fn uuid(kind: u32, i: usize) -> String {
    format!("{kind:08x}-0000-4000-8000-{i:012x}")
}

fn mac(i: usize) -> String {
    format!("0a:00:00:00:{:02x}:{:02x}", i / 256, i % 256)
}

/// <table-updates> for 100 switches × 100 ports, each port marked with one of 100 hosts.
fn nb_updates() -> Value {
    let mut ls = Map::new();
    let mut lsp = Map::new();
    for s in 0..SWITCHES {
        let ports: Vec<Value> = (0..PORTS / SWITCHES)
            .map(|k| ovsdb::uuid(&uuid(2, s * (PORTS / SWITCHES) + k)))
            .collect();
        ls.insert(
            uuid(1, s),
            json!({"new": {
                "name": format!("net{s}"),
                "other_config": ovsdb::map([("subnet", format!("10.{s}.0.0/16"))]),
                "external_ids": ovsdb::map([("courier-owner", "courier")]),
                "ports": ovsdb::set(ports),
            }}),
        );
    }
    for p in 0..PORTS {
        let s = p / (PORTS / SWITCHES);
        lsp.insert(
            uuid(2, p),
            json!({"new": {
                "name": format!("cp-{p:05}"),
                "addresses": "dynamic",
                "dynamic_addresses": format!("{} 10.{s}.{}.{}", mac(p), p / 250, p % 250 + 2),
                "up": true,
                "external_ids": ovsdb::map([
                    ("courier-owner", "courier".to_string()),
                    ("courier-host", format!("host{}", p % HOSTS)),
                    ("courier-attachment", format!("att-{p}")),
                    ("courier-network", format!("net{s}")),
                ]),
            }}),
        );
    }
    json!({LS: ls, LSP: lsp})
}

/// <table-updates> for 10 000 OVS Port rows, each with one Interface.
fn ovs_updates() -> Value {
    let mut port = Map::new();
    let mut iface = Map::new();
    for p in 0..PORTS {
        port.insert(
            uuid(3, p),
            json!({"new": {
                "name": format!("veth{p:05}"),
                "interfaces": ovsdb::uuid(&uuid(4, p)),
                "external_ids": ovsdb::map([
                    ("courier-owner", "courier".to_string()),
                    ("courier-host", format!("host{}", p % HOSTS)),
                    ("courier-attachment", format!("att-{p}")),
                ]),
            }}),
        );
        iface.insert(
            uuid(4, p),
            json!({"new": {
                "name": format!("veth{p:05}"),
                "ofport": p as i64 + 1,
                "error": ovsdb::empty_set(),
                "external_ids": ovsdb::map([
                    ("iface-id", format!("cp-{p:05}")),
                    ("attached-mac", mac(p)),
                    ("ovn-installed", "true".to_string()),
                ]),
            }}),
        );
    }
    json!({"Port": port, "Interface": iface})
}

// ---- the old way, as src/backend/ovn.rs and src/vswitch.rs did it ----

fn old_port_by_name(m: &Monitor, name: &str) -> Vec<(String, Row)> {
    m.rows(LSP)
        .into_iter()
        .filter(|(_, r)| ovsdb::get_str(r, "name") == Some(name))
        .collect()
}

fn old_switch_of_port(m: &Monitor, port_uuid: &str) -> Option<String> {
    m.rows(LS).into_iter().find_map(|(u, r)| {
        ovsdb::get_set(&r, "ports")
            .iter()
            .any(|p| ovsdb::uuid_of(p) == Some(port_uuid))
            .then_some(u)
    })
}

fn owned(r: &Row, host: &str) -> bool {
    let ext = ovsdb::get_map(r, "external_ids");
    ext.get("courier-owner").map(String::as_str) == Some("courier")
        && ext.get("courier-host").map(String::as_str) == Some(host)
}

/// (port name, its switch uuid) for every port of `host`.
fn old_owned_ports(m: &Monitor, host: &str) -> Vec<(String, Option<String>)> {
    let mut out: Vec<_> = m
        .rows(LSP)
        .into_iter()
        .filter(|(_, r)| owned(r, host))
        .map(|(u, r)| {
            let name = ovsdb::get_str(&r, "name").unwrap_or_default().to_string();
            (name, old_switch_of_port(m, &u))
        })
        .collect();
    out.sort();
    out
}

fn old_installed(v: &CacheView, name: &str) -> Option<()> {
    v.rows("Interface")
        .any(|(_, r)| {
            ovsdb::get_str(r, "name") == Some(name)
                && ovsdb::get_map(r, "external_ids")
                    .get("ovn-installed")
                    .map(String::as_str)
                    == Some("true")
        })
        .then_some(())
}

/// What `Vswitch::ports()` built for every port (name, iface-id, ofport), then `port` picked one.
type OvsPort = (String, Option<String>, Option<i64>);

fn ovs_port_of(iface: Option<&Row>, port: &Row) -> Option<OvsPort> {
    let name = ovsdb::get_str(port, "name")?.to_string();
    let _pext = ovsdb::get_map(port, "external_ids");
    let iext = iface
        .map(|r| ovsdb::get_map(r, "external_ids"))
        .unwrap_or_default();
    Some((
        name,
        iext.get("iface-id").cloned(),
        iface.and_then(|r| ovsdb::get_i64(r, "ofport")),
    ))
}

fn old_ovs_port(m: &Monitor, name: &str) -> Option<OvsPort> {
    m.rows("Port")
        .into_iter()
        .filter_map(|(_, port)| {
            let iface = ovsdb::get_set(&port, "interfaces")
                .iter()
                .filter_map(ovsdb::uuid_of)
                .find_map(|u| m.row("Interface", u));
            ovs_port_of(iface.as_ref(), &port)
        })
        .find(|p| p.0 == name)
}

// ---- the new way ----

fn new_port_by_name(m: &Monitor, name: &str) -> Vec<(String, Row)> {
    m.lookup(&LSP_BY_NAME, name)
}

fn new_switch_of_port(v: &CacheView, port_uuid: &str) -> Option<String> {
    v.lookup(&LS_BY_PORT, port_uuid)
        .first()
        .map(|(u, _)| (*u).clone())
}

fn new_owned_ports(m: &Monitor, host: &str) -> Vec<(String, Option<String>)> {
    m.view(|v| {
        let mut out: Vec<_> = v
            .lookup(&LSP_BY_HOST, host)
            .into_iter()
            .filter(|(_, r)| owned(r, host))
            .map(|(u, r)| {
                let name = ovsdb::get_str(r, "name").unwrap_or_default().to_string();
                (name, new_switch_of_port(v, u))
            })
            .collect();
        out.sort();
        out
    })
}

fn new_installed(v: &CacheView, name: &str) -> Option<()> {
    v.lookup(&IFACE_BY_NAME, name)
        .iter()
        .any(|(_, r)| {
            ovsdb::get_map(r, "external_ids")
                .get("ovn-installed")
                .map(String::as_str)
                == Some("true")
        })
        .then_some(())
}

fn new_ovs_port(m: &Monitor, name: &str) -> Option<OvsPort> {
    m.view(|v| {
        v.lookup(&PORT_BY_NAME, name)
            .into_iter()
            .find_map(|(_, port)| {
                let iface = ovsdb::get_set(port, "interfaces")
                    .iter()
                    .filter_map(ovsdb::uuid_of)
                    .find_map(|u| v.row("Interface", u));
                ovs_port_of(iface, port)
            })
    })
}

// ---- timing ----

/// ns per call of `f(i)`, run for at least `budget` and 5 calls (i = 0, 1, 2, ...).
fn time<T>(budget: Duration, mut f: impl FnMut(usize) -> T) -> f64 {
    for i in 0..3 {
        black_box(f(i)); // warm-up
    }
    let start = Instant::now();
    let mut n = 0;
    while n < 5 || start.elapsed() < budget {
        black_box(f(n));
        n += 1;
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn row(what: &str, old: f64, new: f64) {
    let ratio = old / new;
    let ratio = if ratio >= 10.0 {
        format!("{ratio:.0}×")
    } else {
        format!("{ratio:.2}×")
    };
    println!(
        "| {what:<56} | {:>10} | {:>10} | {ratio:>10} |",
        fmt_ns(old),
        fmt_ns(new),
    );
}

fn main() {
    let budget = Duration::from_millis(
        std::env::var("BENCH_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(500),
    );
    let nb_up = nb_updates();
    let ovs_up = ovs_updates();
    let t = Instant::now();
    let nb_plain = Monitor::from_updates(&[], &nb_up);
    let plain_fill = t.elapsed();
    let t = Instant::now();
    let nb = Monitor::from_updates(NB_INDEXES, &nb_up);
    let indexed_fill = t.elapsed();
    let ovs = Monitor::from_updates(OVS_INDEXES, &ovs_up);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();

    // Same answers both ways.
    for p in [0, 4321, PORTS - 1] {
        let name = format!("cp-{p:05}");
        let (a, b) = (old_port_by_name(&nb, &name), new_port_by_name(&nb, &name));
        assert_eq!(a, b);
        let u = uuid(2, p);
        assert_eq!(
            old_switch_of_port(&nb, &u),
            nb.view(|v| new_switch_of_port(v, &u))
        );
        let vname = format!("veth{p:05}");
        assert_eq!(old_ovs_port(&ovs, &vname), new_ovs_port(&ovs, &vname));
        assert!(ovs.view(|v| old_installed(v, &vname) == new_installed(v, &vname)));
    }
    let (a, b) = (old_owned_ports(&nb, "host7"), new_owned_ports(&nb, "host7"));
    assert_eq!(a.len(), PORTS / HOSTS);
    assert_eq!(a, b);

    println!(
        "\n{SWITCHES} Logical_Switches, {PORTS} Logical_Switch_Ports ({} per host mark), {PORTS} OVS Port + Interface rows\n",
        PORTS / HOSTS
    );
    println!(
        "| {:<56} | {:>10} | {:>10} | {:>10} |",
        "lookup (per call)", "old", "new", "old/new"
    );
    println!("|{:-<58}|{:->12}|{:->12}|{:->12}|", "", "", "", "");
    let name = |i: usize| format!("cp-{:05}", (i * 7919) % PORTS);
    row(
        "NB port by name (ovn port / lsp_rows_named)",
        time(budget, |i| old_port_by_name(&nb, &name(i))),
        time(budget, |i| new_port_by_name(&nb, &name(i))),
    );
    let puuid = |i: usize| uuid(2, (i * 7919) % PORTS);
    row(
        "NB port's switch (network_of_port)",
        time(budget, |i| old_switch_of_port(&nb, &puuid(i))),
        time(budget, |i| nb.view(|v| new_switch_of_port(v, &puuid(i)))),
    );
    let host = |i: usize| format!("host{}", i % HOSTS);
    row(
        "NB owned ports of one host, each with its switch (100)",
        time(budget, |i| old_owned_ports(&nb, &host(i))),
        time(budget, |i| new_owned_ports(&nb, &host(i))),
    );
    let sname = |i: usize| format!("net{}", i % SWITCHES);
    row(
        "NB switch by name (ovn switch)",
        time(budget, |i| {
            nb.rows(LS)
                .into_iter()
                .filter(|(_, r)| ovsdb::get_str(r, "name") == Some(sname(i).as_str()))
                .count()
        }),
        time(budget, |i| nb.lookup(&LS_BY_NAME, &sname(i)).len()),
    );
    let vname = |i: usize| format!("veth{:05}", (i * 7919) % PORTS);
    row(
        "OVS wait_for(interface by name is ovn-installed)",
        time(budget, |i| {
            rt.block_on(ovs.wait_for(Duration::from_secs(1), |v| old_installed(v, &vname(i))))
        }),
        time(budget, |i| {
            rt.block_on(ovs.wait_for(Duration::from_secs(1), |v| new_installed(v, &vname(i))))
        }),
    );
    row(
        "OVS port by name (Vswitch::port)",
        time(budget, |i| old_ovs_port(&ovs, &vname(i))),
        time(budget, |i| new_ovs_port(&ovs, &vname(i))),
    );

    // What the indexes cost when the cache changes (old = no index, new = NB indexes).
    println!(
        "\n| {:<56} | {:>10} | {:>10} | {:>10} |",
        "cache update (per update)", "no index", "indexed", "ratio"
    );
    println!("|{:-<58}|{:->12}|{:->12}|{:->12}|", "", "", "", "");
    let flip = |i: usize| json!({LSP: {uuid(2, (i * 7919) % PORTS): {"old": {"up": i & 1 == 0}, "new": {"up": i & 1 == 1}}}});
    row(
        "LSP `up` flips (unindexed column)",
        time(budget, |i| nb_plain.apply_updates(&flip(i))),
        time(budget, |i| nb.apply_updates(&flip(i))),
    );
    // A port is added to switch 0 (insert + the switch's 101-element ports set), then removed.
    let base: Vec<Value> = (0..PORTS / SWITCHES)
        .map(|k| ovsdb::uuid(&uuid(2, k)))
        .collect();
    let add_del = |i: usize| {
        let new = uuid(5, i);
        let mut with = base.clone();
        with.push(ovsdb::uuid(&new));
        let add = json!({
            LSP: {&new: {"new": {"name": format!("extra-{i}"), "external_ids": ovsdb::map([("courier-host", "host0")])}}},
            LS: {uuid(1, 0): {"old": {"ports": ovsdb::set(base.clone())}, "new": {"ports": ovsdb::set(with.clone())}}},
        });
        let del = json!({
            LSP: {&new: {"old": {"name": format!("extra-{i}")}}},
            LS: {uuid(1, 0): {"old": {"ports": ovsdb::set(with)}, "new": {"ports": ovsdb::set(base.clone())}}},
        });
        (add, del)
    };
    row(
        "port added to a 100-port switch, then deleted (2 upd.)",
        time(budget, |i| {
            let (a, d) = add_del(i);
            nb_plain.apply_updates(&a);
            nb_plain.apply_updates(&d);
        }),
        time(budget, |i| {
            let (a, d) = add_del(i);
            nb.apply_updates(&a);
            nb.apply_updates(&d);
        }),
    );
    println!(
        "\ninitial fill of the NB cache (20 100 rows): {:.1} ms without indexes, {:.1} ms with",
        plain_fill.as_secs_f64() * 1e3,
        indexed_fill.as_secs_f64() * 1e3
    );
    assert_eq!(
        nb.rows(LSP).len(),
        PORTS,
        "updates left the cache as it was"
    );
    assert_eq!(new_owned_ports(&nb, "host0").len(), PORTS / HOSTS);
}
