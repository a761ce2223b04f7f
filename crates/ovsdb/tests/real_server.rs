//! Against the real ovsdb-servers that scripts/ovn.sh starts (OVN NB and the local
//! Open_vSwitch DB). Needs root; skips with a printed reason otherwise (fails under
//! COURIER_REQUIRE_ENV=1).
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use courier_ovsdb::*;
use serde_json::json;

const NB: &str = "unix:/var/run/ovn/ovnnb_db.sock";
const OVS: &str = "unix:/var/run/openvswitch/db.sock";

fn ready(test: &str) -> bool {
    static R: OnceLock<Result<(), String>> = OnceLock::new();
    let r = R.get_or_init(|| {
        courier_testenv::require_root("to start OVN")?;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/ovn.sh");
        match Command::new(script).arg("start").output() {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(format!(
                "scripts/ovn.sh start failed: {}",
                String::from_utf8_lossy(&o.stderr)
            )),
            Err(e) => Err(format!("cannot run scripts/ovn.sh: {e}")),
        }
    });
    match r {
        Ok(()) => true,
        Err(reason) => {
            courier_testenv::skip(test, reason);
            false
        }
    }
}

fn nbctl(args: &[&str]) -> String {
    let o = Command::new("ovn-nbctl")
        .args(args)
        .output()
        .expect("ovn-nbctl");
    assert!(
        o.status.success(),
        "ovn-nbctl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn name(n: &str) -> String {
    format!("ovsdbtest-{n}-{}", std::process::id())
}

#[tokio::test]
async fn list_dbs_schema_and_echo() {
    if !ready("list_dbs_schema_and_echo") {
        return;
    }
    let c = Client::connect(NB).await.unwrap();
    assert!(c
        .list_dbs()
        .await
        .unwrap()
        .contains(&"OVN_Northbound".to_string()));
    let schema = c.get_schema("OVN_Northbound").await.unwrap();
    assert!(schema["tables"]["Logical_Switch_Port"]["columns"]["dynamic_addresses"].is_object());
    c.echo().await.unwrap();
    match c.get_schema("No_Such_DB").await {
        Err(Error::Rpc { error, .. }) => assert!(error.contains("unknown database"), "{error}"),
        other => panic!("{other:?}"),
    }
    let o = Client::connect(OVS).await.unwrap();
    assert!(o
        .list_dbs()
        .await
        .unwrap()
        .contains(&"Open_vSwitch".to_string()));
    assert!(matches!(
        Client::connect("unix:/nonexistent.sock").await,
        Err(Error::Connect { .. })
    ));
}

#[tokio::test]
async fn transact_insert_mutate_select_wait_delete() {
    if !ready("transact_insert_mutate_select_wait_delete") {
        return;
    }
    let c = Client::connect(NB).await.unwrap();
    let ls = name("ls");
    let lsp = name("lsp");
    let res = c
        .transact(
            "OVN_Northbound",
            vec![
                Op::insert(
                    "Logical_Switch",
                    json!({"name": ls, "other_config": map([("subnet", "10.77.0.0/24")])}),
                )
                .with_uuid_name("ls"),
                Op::insert(
                    "Logical_Switch_Port",
                    json!({"name": lsp, "addresses": "dynamic"}),
                )
                .with_uuid_name("p"),
                Op::mutate(
                    "Logical_Switch",
                    vec![Condition::eq("_uuid", named_uuid("ls"))],
                    vec![Mutation::insert("ports", named_uuid("p"))],
                ),
            ],
        )
        .await
        .unwrap();
    let OpResult::Insert { uuid: ls_uuid } = &res[0] else {
        panic!("{res:?}")
    };
    assert_eq!(res[2], OpResult::Count(1));
    // ovn-nbctl sees it; northd assigns the address.
    assert_eq!(
        nbctl(&["get", "Logical_Switch_Port", &lsp, "addresses"]),
        "[dynamic]"
    );
    let sel = c
        .transact(
            "OVN_Northbound",
            vec![Op::select(
                "Logical_Switch",
                vec![Condition::eq("name", json!(ls))],
                Some(&["_uuid", "ports"]),
            )],
        )
        .await
        .unwrap();
    let OpResult::Rows(rows) = &sel[0] else {
        panic!()
    };
    assert_eq!(get_uuid(&rows[0], "_uuid"), Some(ls_uuid.as_str()));
    assert_eq!(get_set(&rows[0], "ports").len(), 1);

    // A wait that does not hold fails the transaction and names the op; nothing is applied.
    let err = c
        .transact(
            "OVN_Northbound",
            vec![
                Op::wait(
                    "Logical_Switch",
                    vec![Condition::eq("name", json!(ls))],
                    &["name"],
                    WaitUntil::Equal,
                    vec![],
                    Some(0),
                ),
                Op::insert("Logical_Switch", json!({"name": ls})),
            ],
        )
        .await
        .unwrap_err();
    match &err {
        Error::OpFailed {
            index: 0,
            op,
            error,
            ..
        } => {
            assert_eq!(op, "wait Logical_Switch");
            assert!(error.contains("timed out"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("wait Logical_Switch"));
    assert_eq!(
        nbctl(&[
            "--bare",
            "--columns=_uuid",
            "find",
            "Logical_Switch",
            &format!("name={ls}")
        ])
        .lines()
        .count(),
        1
    );

    // A constraint violation: a port referenced by nobody (non-root table) is fine to insert? No:
    // a reference to a row that does not exist is a referential integrity violation at commit.
    let err = c
        .transact(
            "OVN_Northbound",
            vec![Op::mutate(
                "Logical_Switch",
                vec![Condition::eq("_uuid", uuid(ls_uuid))],
                vec![Mutation::insert(
                    "ports",
                    uuid("00000000-0000-0000-0000-000000000001"),
                )],
            )],
        )
        .await
        .unwrap_err();
    match err {
        Error::OpFailed { index, error, .. } => {
            assert!(
                error.contains("referential integrity") || error.contains("constraint"),
                "{error}"
            );
            assert!(index <= 1);
        }
        other => panic!("{other:?}"),
    }

    // Delete: dropping the reference and the switch.
    let res = c
        .transact(
            "OVN_Northbound",
            vec![Op::delete(
                "Logical_Switch",
                vec![Condition::eq("_uuid", uuid(ls_uuid))],
            )],
        )
        .await
        .unwrap();
    assert_eq!(res[0], OpResult::Count(1));
    assert_eq!(
        nbctl(&[
            "--bare",
            "--columns=name",
            "find",
            "Logical_Switch_Port",
            &format!("name={lsp}")
        ]),
        ""
    );
}

#[tokio::test]
async fn monitor_follows_changes_made_by_others() {
    if !ready("monitor_follows_changes_made_by_others") {
        return;
    }
    let c = Client::connect(NB).await.unwrap();
    let m = c
        .monitor(
            "OVN_Northbound",
            &[("Logical_Switch", &["name", "other_config"][..])],
        )
        .await
        .unwrap();
    let ls = name("mon");
    let has = |m: &Monitor, want: Option<&str>| {
        let ls = ls.clone();
        let want = want.map(String::from);
        let m = m.clone();
        async move {
            m.wait_for(Duration::from_secs(5), |v| {
                let row = v
                    .rows("Logical_Switch")
                    .find(|(_, r)| get_str(r, "name") == Some(ls.as_str()));
                match (&want, row) {
                    (None, None) => Some(()),
                    (Some(w), Some((_, r))) if get_map(r, "other_config").get("k") == Some(w) => {
                        Some(())
                    }
                    _ => None,
                }
            })
            .await
        }
    };
    nbctl(&[
        "ls-add",
        &ls,
        "--",
        "set",
        "Logical_Switch",
        &ls,
        "other_config:k=v1",
    ]);
    has(&m, Some("v1")).await.expect("insert seen");
    nbctl(&["set", "Logical_Switch", &ls, "other_config:k=v2"]);
    has(&m, Some("v2")).await.expect("modify seen");
    nbctl(&["ls-del", &ls]);
    has(&m, None).await.expect("delete seen");
    assert!(
        m.wait_for(Duration::from_millis(200), |_| None::<()>)
            .await
            .is_err(),
        "wait_for times out"
    );

    // Local Open_vSwitch DB too.
    let o = Client::connect(OVS).await.unwrap();
    let om = o
        .monitor(
            "Open_vSwitch",
            &[("Bridge", &["name"][..]), ("Interface", &[][..])],
        )
        .await
        .unwrap();
    assert!(om
        .rows("Bridge")
        .iter()
        .any(|(_, r)| get_str(r, "name") == Some("br-int")));
}

#[tokio::test]
async fn tcp_remote() {
    if !ready("tcp_remote") {
        return;
    }
    nbctl(&["set-connection", "ptcp:6641:127.0.0.1"]);
    let mut c = None;
    for _ in 0..50 {
        if let Ok(x) = Client::connect("tcp:127.0.0.1:6641").await {
            c = Some(x);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = c.expect("TCP listener up");
    assert!(c
        .list_dbs()
        .await
        .unwrap()
        .contains(&"OVN_Northbound".to_string()));
    nbctl(&["del-connection"]);
}

#[tokio::test]
async fn reconnects_and_rebuilds_monitors() {
    if !ready("reconnects_and_rebuilds_monitors") {
        return;
    }
    let c = Client::connect(NB).await.unwrap();
    let m = c
        .monitor("OVN_Northbound", &[("Logical_Switch", &["name"][..])])
        .await
        .unwrap();
    let st = Command::new("/usr/share/ovn/scripts/ovn-ctl")
        .arg("restart_nb_ovsdb")
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let ls = name("recon");
    nbctl(&["ls-add", &ls]);
    m.wait_for(Duration::from_secs(15), |v| {
        v.rows("Logical_Switch")
            .any(|(_, r)| get_str(r, "name") == Some(ls.as_str()))
            .then_some(())
    })
    .await
    .expect("monitor rebuilt after the server restarted");
    assert!(c.is_connected());
    let mut ok = false;
    for _ in 0..50 {
        if c.transact(
            "OVN_Northbound",
            vec![Op::delete(
                "Logical_Switch",
                vec![Condition::eq("name", json!(ls))],
            )],
        )
        .await
        .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "transact works again after reconnect");
    // northd reconnects by itself; make sure the stack is whole for whoever runs next.
    let _ = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/ovn.sh"))
        .arg("start")
        .output();
}

/// An indexed monitor follows inserts, a rename (key change), a map-key change, a port joining
/// a switch's `ports` set, and deletes made by someone else.
#[tokio::test]
async fn indexed_monitor_follows_changes_made_by_others() {
    if !ready("indexed_monitor_follows_changes_made_by_others") {
        return;
    }
    const LS_NAME: Index = Index::new("Logical_Switch", "name");
    const LS_PORTS: Index = Index::new("Logical_Switch", "ports");
    const LS_MARK: Index = Index::map_key("Logical_Switch", "external_ids", "ovsdbtest");
    const LSP_NAME: Index = Index::new("Logical_Switch_Port", "name");
    let c = Client::connect(NB).await.unwrap();
    let m = c
        .monitor_indexed(
            "OVN_Northbound",
            &[
                ("Logical_Switch", &["name", "ports", "external_ids"][..]),
                ("Logical_Switch_Port", &["name"][..]),
            ],
            &[LS_NAME, LS_PORTS, LS_MARK, LSP_NAME],
        )
        .await
        .unwrap();
    let (ls, ls2, lsp) = (name("idx"), name("idx2"), name("idx-p"));
    let mark = format!("m{}", std::process::id());
    let wait = |f: Box<dyn Fn(&CacheView) -> bool + Send>| {
        let m = m.clone();
        async move {
            m.wait_for(Duration::from_secs(5), |v| f(v).then_some(()))
                .await
        }
    };
    nbctl(&[
        "ls-add",
        &ls,
        "--",
        "set",
        "Logical_Switch",
        &ls,
        &format!("external_ids:ovsdbtest={mark}"),
    ]);
    let (l, mk) = (ls.clone(), mark.clone());
    wait(Box::new(move |v| {
        v.lookup(&LS_NAME, &l).len() == 1 && v.lookup(&LS_MARK, &mk).len() == 1
    }))
    .await
    .expect("insert indexed");
    let ls_uuid = m.lookup(&LS_NAME, &ls)[0].0.clone();

    nbctl(&["lsp-add", &ls, &lsp]);
    let (p, u) = (lsp.clone(), ls_uuid.clone());
    wait(Box::new(move |v| {
        v.lookup(&LSP_NAME, &p)
            .first()
            .is_some_and(|(pu, _)| v.lookup(&LS_PORTS, pu).first().map(|s| s.0) == Some(&u))
    }))
    .await
    .expect("port's switch found through the ports index");

    nbctl(&["set", "Logical_Switch", &ls, &format!("name={ls2}")]);
    nbctl(&[
        "remove",
        "Logical_Switch",
        &ls2,
        "external_ids",
        "ovsdbtest",
    ]);
    let (l, l2, mk) = (ls.clone(), ls2.clone(), mark.clone());
    wait(Box::new(move |v| {
        v.lookup(&LS_NAME, &l).is_empty()
            && v.lookup(&LS_NAME, &l2).len() == 1
            && v.lookup(&LS_MARK, &mk).is_empty()
    }))
    .await
    .expect("rename and mark removal re-filed");

    nbctl(&["ls-del", &ls2]);
    let (l2, p) = (ls2.clone(), lsp.clone());
    wait(Box::new(move |v| {
        v.lookup(&LS_NAME, &l2).is_empty() && v.lookup(&LSP_NAME, &p).is_empty()
    }))
    .await
    .expect("deletes unfiled");
}
