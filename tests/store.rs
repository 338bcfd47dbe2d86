//! One conformance suite for every `Store` backend (memory, sled, a real etcd): conditions,
//! atomic multi-key transactions, bounded scans, revisions, 64 concurrent writers, large values.
//! Then what only etcd has: a second master's cache sees the first's writes, and a 3-member
//! cluster that loses its quorum answers UNAVAILABLE quickly, writes nothing half, and recovers
//! by itself.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::eventually_async;
use futures::StreamExt;
use switchyard_master::store::etcd::{EtcdConfig, EtcdStore};
use switchyard_master::store::memory::MemoryStore;
use switchyard_master::store::sled::SledStore;
use switchyard_master::store::{ChangeStream, Revision, Store, StoreError, Txn};
use tokio_util::sync::CancellationToken;

fn k(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

async fn get(store: &dyn Store, key: &str) -> Option<Vec<u8>> {
    store.get(key.as_bytes()).await.unwrap()
}

async fn keys(store: &dyn Store, prefix: &str) -> Vec<String> {
    store
        .scan(prefix.as_bytes())
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| String::from_utf8(k).unwrap())
        .collect()
}

/// The suite every backend passes.
async fn conformance(store: Arc<dyn Store>) {
    let s = &*store;
    // Conditions: a failed one writes nothing, and names its key.
    let r1 = s
        .commit(Txn::new().absent(k("a/1")).put(k("a/1"), k("one")))
        .await
        .unwrap();
    let conflict = s
        .commit(Txn::new().absent(k("a/1")).put(k("a/2"), k("two")))
        .await;
    assert!(
        matches!(&conflict, Err(StoreError::Conflict(key)) if key == "a/1"),
        "{conflict:?}"
    );
    assert_eq!(get(s, "a/2").await, None, "nothing half-written");
    let stale = s
        .commit(
            Txn::new()
                .equals(k("a/1"), k("other"))
                .put(k("a/1"), k("x")),
        )
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))));
    let r2 = s
        .commit(
            Txn::new()
                .equals(k("a/1"), k("one"))
                .put(k("a/1"), k("uno")),
        )
        .await
        .unwrap();
    assert!(r2 > r1, "revisions grow: {r1} then {r2}");
    assert_eq!(
        get(s, "a/1").await.as_deref(),
        Some(&b"uno"[..]),
        "read your write at once"
    );

    // One transaction: puts and deletes together, or not at all.
    s.commit(
        Txn::new()
            .put(k("b/1"), k("1"))
            .put(k("b/2"), k("2"))
            .put(k("b/3"), k("3")),
    )
    .await
    .unwrap();
    let all_or_nothing = s
        .commit(
            Txn::new()
                .absent(k("b/2"))
                .delete(k("b/1"))
                .put(k("b/4"), k("4")),
        )
        .await;
    assert!(all_or_nothing.is_err());
    assert_eq!(keys(s, "b/").await, ["b/1", "b/2", "b/3"]);
    s.commit(
        Txn::new()
            .equals(k("b/2"), k("2"))
            .delete(k("b/1"))
            .delete(k("b/2"))
            .put(k("b/4"), k("4")),
    )
    .await
    .unwrap();
    assert_eq!(keys(s, "b/").await, ["b/3", "b/4"]);

    // Scans are bounded to their prefix.
    s.commit(
        Txn::new()
            .put(k("c/x/1"), k(""))
            .put(k("c/xy/1"), k(""))
            .put(k("c/x0"), k(""))
            .put(k("c0"), k("")),
    )
    .await
    .unwrap();
    assert_eq!(keys(s, "c/x/").await, ["c/x/1"]);
    assert_eq!(keys(s, "c/").await, ["c/x/1", "c/x0", "c/xy/1"]);

    // 64 concurrent writers: every acknowledged write is there; on one contended key exactly
    // one creation wins.
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .commit(Txn::new().put(format!("d/{i:02}").into_bytes(), vec![1]))
                .await
                .unwrap();
            store
                .commit(
                    Txn::new()
                        .absent(k("e/only"))
                        .put(k("e/only"), format!("{i}").into_bytes()),
                )
                .await
                .is_ok()
        }));
    }
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.unwrap());
    }
    assert_eq!(keys(s, "d/").await.len(), 64);
    assert_eq!(winners, 1, "one creation of a contended key wins");

    // Concurrent commits on distinct keys, every other one with a condition that fails (etcd
    // batches commits waiting together): each gets its own answer, and only the failed ones
    // are missing.
    let mut tasks = Vec::new();
    for i in 0..48 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("g/{i:02}").into_bytes();
            let txn = if i % 2 == 0 {
                Txn::new().absent(key.clone()).put(key, vec![1])
            } else {
                Txn::new().absent(k("a/1")).put(key, vec![1]) // a/1 exists
            };
            (i, store.commit(txn).await)
        }));
    }
    for t in tasks {
        let (i, result) = t.await.unwrap();
        if i % 2 == 0 {
            assert!(result.is_ok(), "commit {i}: {result:?}");
        } else {
            assert!(
                matches!(&result, Err(StoreError::Conflict(key)) if key == "a/1"),
                "commit {i}: {result:?}"
            );
        }
    }
    let written = keys(s, "g/").await;
    assert_eq!(written.len(), 24, "{written:?}");
    assert!(
        written
            .iter()
            .all(|k| k[2..].parse::<u32>().unwrap() % 2 == 0),
        "{written:?}"
    );

    watch_order_and_resume(&store).await;

    // Large values round-trip.
    let big: Vec<u8> = (0..512 * 1024).map(|i| (i % 251) as u8).collect();
    s.commit(Txn::new().put(k("f/big"), big.clone()))
        .await
        .unwrap();
    assert_eq!(get(s, "f/big").await, Some(big));
}

/// The next change of `watch` (within a deadline), as (revision, key, value).
async fn next_change(watch: &mut ChangeStream) -> (Revision, String, Option<String>) {
    let c = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a change within 10 s")
        .expect("the watch goes on")
        .expect("a change, not an error");
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (c.revision, text(c.key), c.value.map(text))
}

/// Changes come in commit order, only under the prefix, with their revisions; a watcher that
/// resumes after the last revision it saw gets exactly what followed.
async fn watch_order_and_resume(store: &Arc<dyn Store>) {
    let s = &**store;
    let mut w = s.watch(b"w/", 0);
    let r1 = s
        .commit(
            Txn::new()
                .put(k("w/1"), k("a"))
                .put(k("x/1"), k("not watched")),
        )
        .await
        .unwrap();
    let r2 = s
        .commit(Txn::new().delete(k("w/1")).put(k("w/2"), k("b")))
        .await
        .unwrap();
    assert_eq!(
        next_change(&mut w).await,
        (r1, "w/1".into(), Some("a".into()))
    );
    assert_eq!(next_change(&mut w).await, (r2, "w/1".into(), None));
    assert_eq!(
        next_change(&mut w).await,
        (r2, "w/2".into(), Some("b".into()))
    );
    drop(w);
    let r3 = s.commit(Txn::new().put(k("w/3"), k("c"))).await.unwrap();
    let mut resumed = s.watch(b"w/", r1);
    assert_eq!(
        next_change(&mut resumed).await.0,
        r2,
        "resumed right after r1"
    );
    assert_eq!(next_change(&mut resumed).await.0, r2);
    assert_eq!(
        next_change(&mut resumed).await,
        (r3, "w/3".into(), Some("c".into()))
    );
}

#[tokio::test]
async fn the_memory_store_conforms() {
    conformance(Arc::new(MemoryStore::default())).await;
}

#[tokio::test]
async fn the_sled_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance(Arc::new(SledStore::open(dir.path()).unwrap())).await;
}

async fn etcd_store(etcd: &Etcd, prefix: &str) -> EtcdStore {
    let config = EtcdConfig {
        prefix: prefix.to_owned(),
        request_timeout: Duration::from_secs(1),
        ..EtcdConfig::new(etcd.urls())
    };
    EtcdStore::connect(config, CancellationToken::new())
        .await
        .unwrap()
}

#[tokio::test]
async fn the_etcd_store_conforms_and_another_master_sees_its_writes() {
    let etcd = Etcd::start(1);
    let store = Arc::new(etcd_store(&etcd, "/switchyard/").await);
    conformance(store.clone()).await;

    // A second master on the same prefix: its cache starts with everything and follows.
    let other = etcd_store(&etcd, "/switchyard/").await;
    assert_eq!(keys(&other, "d/").await.len(), 64);
    store
        .commit(Txn::new().put(k("g/1"), k("from the first")))
        .await
        .unwrap();
    eventually_async(
        "the other master to see the write",
        Duration::from_secs(5),
        || async { get(&other, "g/1").await.map(|_| ()) },
    )
    .await;
    // Another installation (prefix) on the same etcd sees nothing of it.
    let foreign = etcd_store(&etcd, "/elsewhere/").await;
    assert!(keys(&foreign, "").await.is_empty());
}

/// A watch outlives a restart of etcd: the changes before and after arrive once each, in order.
#[tokio::test]
async fn an_etcd_watch_resumes_across_an_etcd_restart_without_loss_or_repeats() {
    let mut etcd = Etcd::start(1);
    let store = etcd_store(&etcd, "/switchyard/").await;
    let mut w = store.watch(b"r/", 0);
    let r1 = store
        .commit(Txn::new().put(k("r/1"), k("a")))
        .await
        .unwrap();
    assert_eq!(next_change(&mut w).await.0, r1);
    etcd.restart(0);
    etcd.wait_all_healthy();
    let r2 = eventually_async(
        "a write after the restart",
        Duration::from_secs(30),
        || async { store.commit(Txn::new().put(k("r/2"), k("b"))).await.ok() },
    )
    .await;
    let r3 = store
        .commit(Txn::new().put(k("r/3"), k("c")))
        .await
        .unwrap();
    assert_eq!(
        next_change(&mut w).await,
        (r2, "r/2".into(), Some("b".into()))
    );
    assert_eq!(
        next_change(&mut w).await,
        (r3, "r/3".into(), Some("c".into()))
    );
    // And the cache followed too.
    assert_eq!(keys(&store, "r/").await, ["r/1", "r/2", "r/3"]);
}

/// A 3-member etcd loses two members: writes fail UNAVAILABLE within a few deadlines and
/// nothing is half written; once they return, writes succeed again without a new store.
#[tokio::test]
async fn losing_the_etcd_quorum_is_unavailable_and_recovers_by_itself() {
    let mut etcd = Etcd::start(3);
    let store = etcd_store(&etcd, "/switchyard/").await;
    store
        .commit(Txn::new().put(k("q/before"), k("1")))
        .await
        .unwrap();
    etcd.kill(1);
    etcd.kill(2);
    let started = Instant::now();
    let failed = store
        .commit(
            Txn::new()
                .put(k("q/during-1"), k("1"))
                .put(k("q/during-2"), k("2")),
        )
        .await;
    let took = started.elapsed();
    assert!(
        matches!(&failed, Err(StoreError::Unavailable(m)) if m.contains("quorum")),
        "{failed:?}"
    );
    assert!(took < Duration::from_secs(5), "UNAVAILABLE after {took:?}");
    println!("write without quorum: UNAVAILABLE after {took:?}");

    etcd.restart(1);
    etcd.restart(2);
    etcd.wait_all_healthy();
    eventually_async(
        "writes to succeed again",
        Duration::from_secs(30),
        || async {
            store
                .commit(Txn::new().put(k("q/after"), k("1")))
                .await
                .ok()
        },
    )
    .await;
    // The unacknowledged write is all there or not at all (etcd may apply a proposal it had
    // accepted before the quorum went).
    let during: Vec<String> = keys(&store, "q/during").await;
    assert!(
        during.is_empty() || during.len() == 2,
        "half written: {during:?}"
    );
    assert_eq!(keys(&store, "q/before").await, ["q/before"]);
}

/// `switchyard-master store copy` moves a stopped sled master with running web and router
/// clusters to etcd; the master started on the copy resumes them without restarting a worker.
#[tokio::test]
async fn a_sled_master_copied_to_etcd_resumes_its_clusters_without_restarting_workers() {
    use switchyard::pb::agent::v1::{
        self as apb, node_controller_service_client::NodeControllerServiceClient,
    };
    use switchyard::pb::master::v1::{
        self as pb, router_cluster_service_client::RouterClusterServiceClient,
        web_cluster_service_client::WebClusterServiceClient,
    };

    let pki = common::Pki::new(&["node1"]);
    let data = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", common::stable_port());
    let sled_master = common::Proc::master_on(&pki, data.path(), &listen);
    let agent = common::Proc::agent(&pki, "node1", sled_master.addr);
    common::nodes_online(&pki, sled_master.addr, 1, Duration::from_secs(15)).await;
    let ch = common::channel(&pki, "admin", sled_master.addr).await;
    let (mut web, mut router) = (
        WebClusterServiceClient::new(ch.clone()),
        RouterClusterServiceClient::new(ch),
    );
    let site = common::create_web_cluster(&mut web, "site", common::free_port()).await;
    web.add_web_cluster_node(pb::AddWebClusterNodeRequest {
        webcluster_oid: site.clone(),
        node_oid: "node1".into(),
        config: Some(pb::WebClusterNodeConfig {
            parallel: 2,
            standby: false,
        }),
    })
    .await
    .unwrap();
    web.add_web_cluster_service(pb::AddWebClusterServiceRequest {
        webcluster_oid: site.clone(),
        webservice: Some(pb::WebService {
            path: "/".into(),
            service: Some(pb::web_service::Service::Nodeinfo(Default::default())),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    let routers = common::create_router_cluster(&mut router, "routers").await;
    common::add_router_node(&mut router, &routers, "node1", None)
        .await
        .unwrap();
    router
        .add_router_cluster_worker_group(pb::AddRouterClusterWorkerGroupRequest {
            routercluster_oid: routers.clone(),
            workergroup: Some(pb::RouterWorkerGroup {
                name: "grp".into(),
                scale: 2,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    web.start_web_cluster(pb::StartWebClusterRequest {
        webcluster_oid: site.clone(),
    })
    .await
    .unwrap();
    router
        .start_router_cluster(pb::StartRouterClusterRequest {
            routercluster_oid: routers.clone(),
        })
        .await
        .unwrap();
    let running =
        |web: WebClusterServiceClient<tonic::transport::Channel>,
         router: RouterClusterServiceClient<tonic::transport::Channel>| {
            let (site, routers) = (site.clone(), routers.clone());
            async move {
                let (mut web, mut router) = (web, router);
                let w = web
                    .get_web_cluster(pb::GetWebClusterRequest {
                        webcluster_oid: site,
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .webcluster?;
                let r = router
                    .get_router_cluster(pb::GetRouterClusterRequest {
                        routercluster_oid: routers,
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .routercluster?;
                let up = pb::ClusterStatus::Running as i32;
                (w.status == up && r.status == up).then_some(())
            }
        };
    eventually_async(
        "both clusters RUNNING on sled",
        Duration::from_secs(20),
        || running(web.clone(), router.clone()),
    )
    .await;
    let mut nc = NodeControllerServiceClient::new(common::channel(&pki, "admin", agent.addr).await);
    let pids = |mut nc: NodeControllerServiceClient<tonic::transport::Channel>| async move {
        let list = nc
            .list_workers(apb::ListWorkersRequest::default())
            .await
            .unwrap()
            .into_inner();
        list.workers
            .into_iter()
            .filter(|w| w.status == apb::WorkerStatus::Started as i32)
            .map(|w| (w.id, w.pid))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let before = pids(nc.clone()).await;
    assert_eq!(before.len(), 4, "2 web + 2 router workers: {before:?}");
    drop(sled_master);

    let etcd = Etcd::start(1);
    let copy = |extra: &[&str]| {
        let out = std::process::Command::new(common::master_bin())
            .args(["store", "copy", "--from"])
            .arg(format!("sled:{}", data.path().display()))
            .args(["--to", &format!("etcd:{}", etcd.endpoints())])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            common::stdout(&out),
            common::stderr(&out),
        )
    };
    let (code, out, err) = copy(&[]);
    assert_eq!(code, Some(0), "{out}{err}");
    for table in [
        "  wc: 1",
        "  wcn: 1",
        "  ws: 1",
        "  rc: 1",
        "  rcn: 1",
        "  wg: 1",
        "  pl: 2",
        "  wgsecret: 1",
    ] {
        assert!(
            out.lines().any(|l| l == table),
            "no line '{table}' in:\n{out}"
        );
    }
    println!("{out}");
    // Again: the target already holds exactly these rows.
    let (code, out, err) = copy(&[]);
    assert_eq!(code, Some(0), "{out}{err}");
    // A target holding other rows is refused without --force (exit 64, naming the count).
    let other = etcd_store(&etcd, "/switchyard/").await;
    other
        .commit(Txn::new().put(k("zz/foreign"), k("x")))
        .await
        .unwrap();
    let (code, _, err) = copy(&[]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--force"), "{err}");

    let mut cmd = std::process::Command::new(common::master_bin());
    cmd.args([
        "serve",
        "--listen",
        &listen,
        "--store",
        "etcd",
        "--etcd-endpoints",
        &etcd.endpoints(),
        "--pki-dir",
    ])
    .arg(&pki.path);
    let etcd_master = common::Proc::spawn(cmd);
    common::nodes_online(&pki, etcd_master.addr, 1, Duration::from_secs(15)).await;
    let ch = common::channel(&pki, "admin", etcd_master.addr).await;
    let (web, router) = (
        WebClusterServiceClient::new(ch.clone()),
        RouterClusterServiceClient::new(ch),
    );
    eventually_async(
        "both clusters RUNNING on etcd",
        Duration::from_secs(20),
        || running(web.clone(), router.clone()),
    )
    .await;
    // The copied statuses say RUNNING from the start: make both monitors act on these very
    // workers (a new service on every web worker, a new group beside the old one), then check
    // that every worker from before still runs as the same process.
    let (mut web, mut router) = (web, router);
    web.add_web_cluster_service(pb::AddWebClusterServiceRequest {
        webcluster_oid: site.clone(),
        webservice: Some(pb::WebService {
            path: "/after".into(),
            service: Some(pb::web_service::Service::Nodeinfo(Default::default())),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    router
        .add_router_cluster_worker_group(pb::AddRouterClusterWorkerGroupRequest {
            routercluster_oid: routers.clone(),
            workergroup: Some(pb::RouterWorkerGroup {
                name: "grp2".into(),
                scale: 1,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let web_ids: Vec<String> = before
        .keys()
        .filter(|id| id.starts_with("cpw-"))
        .cloned()
        .collect();
    eventually_async(
        "the etcd master's monitors to act",
        Duration::from_secs(20),
        || {
            let (mut nc, web_ids) = (nc.clone(), web_ids.clone());
            async move {
                for id in web_ids {
                    let s = nc
                        .list_web_services(apb::ListWebServicesRequest { worker_id: id })
                        .await
                        .ok()?
                        .into_inner();
                    s.services
                        .iter()
                        .any(|s| s.path == "/after")
                        .then_some(())?;
                }
                let now = nc
                    .list_workers(apb::ListWorkersRequest::default())
                    .await
                    .ok()?
                    .into_inner();
                now.workers
                    .iter()
                    .any(|w| w.id == "grp2_0" && w.status == apb::WorkerStatus::Started as i32)
                    .then_some(())
            }
        },
    )
    .await;
    let mut after = pids(nc.clone()).await;
    after.remove("grp2_0");
    assert_eq!(after, before, "no worker was restarted");
    let _ = &mut nc;
}

/// A master reaches etcd over TLS with a client certificate (etcd requiring one); without the
/// client certificate etcd refuses it, and the master says it is waiting for etcd.
#[tokio::test]
async fn a_master_uses_etcd_over_tls_with_a_client_certificate() {
    let pki = common::Pki::new(&["etcd"]);
    let file = |f: &str| pki.path.join(f);
    let etcd = Etcd::start_tls(&file("ca.pem"), &file("etcd.pem"), &file("etcd.key"));
    let mut cmd = std::process::Command::new(common::master_bin());
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--store",
        "etcd",
        "--etcd-endpoints",
        &etcd.endpoints(),
    ])
    .args([
        "--etcd-ca",
        &pki.file("ca.pem"),
        "--etcd-cert",
        &pki.file("admin.pem"),
    ])
    .args(["--etcd-key", &pki.file("admin.key"), "--pki-dir"])
    .arg(&pki.path);
    let master = common::Proc::spawn(cmd);
    let mut web =
        switchyard::pb::master::v1::web_cluster_service_client::WebClusterServiceClient::new(
            common::channel(&pki, "admin", master.addr).await,
        );
    let oid = common::create_web_cluster(&mut web, "overtls", 8080).await;
    let store = {
        let config = EtcdConfig {
            tls: Some(switchyard_master::store::etcd::EtcdTls {
                ca: file("ca.pem"),
                cert: Some(file("admin.pem")),
                key: Some(file("admin.key")),
            }),
            ..EtcdConfig::new(etcd.urls())
        };
        EtcdStore::connect(config, CancellationToken::new())
            .await
            .unwrap()
    };
    assert!(
        get(&store, &format!("wc/{oid}")).await.is_some(),
        "written on etcd"
    );

    // Without a client certificate: refused by etcd; the master keeps waiting and says so.
    let mut cmd = std::process::Command::new(common::master_bin());
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--store",
        "etcd",
        "--etcd-endpoints",
        &etcd.endpoints(),
    ])
    .args(["--etcd-ca", &pki.file("ca.pem"), "--pki-dir"])
    .arg(&pki.path);
    let (refused, _serving) = common::Proc::start_background(cmd);
    common::eventually(
        "the master to wait for etcd",
        Duration::from_secs(15),
        || refused.logs().contains("waiting for etcd").then_some(()),
    );
}

/// A master started before its etcd waits for it (logging what it waits for), then serves.
#[tokio::test]
async fn a_master_started_before_etcd_waits_for_it() {
    let pki = common::Pki::new(&[]);
    let mut etcd = Etcd::start(1);
    etcd.kill(0); // its ports and data exist; nothing listens
    let mut cmd = std::process::Command::new(common::master_bin());
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--store",
        "etcd",
        "--etcd-endpoints",
        &etcd.endpoints(),
        "--pki-dir",
    ])
    .arg(&pki.path);
    let (starting, serving) = common::Proc::start_background(cmd);
    common::eventually(
        "the master to wait for etcd",
        Duration::from_secs(15),
        || starting.logs().contains("waiting for etcd").then_some(()),
    );
    etcd.restart(0);
    let master = starting.serving(&serving, Duration::from_secs(30));
    let mut web =
        switchyard::pb::master::v1::web_cluster_service_client::WebClusterServiceClient::new(
            common::channel(&pki, "admin", master.addr).await,
        );
    common::create_web_cluster(&mut web, "late", 8080).await;
}
