//! Issue 17 acceptance: nodes join with a join token and the CA pin (nothing copied to them but
//! the binary), refusals carry their reason and leave nothing behind, node certificates rotate
//! without the node ever going offline, and a removed node's certificates are refused.
//! Real processes, real TLS; every wait polls with a deadline.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{Pki, Proc, channel, cli_bin, eventually, eventually_async, master_bin, system_tool};
use switchyard::pb::master::v1::{
    self as pb, ClusterStatus, node_service_client::NodeServiceClient,
    web_cluster_service_client::WebClusterServiceClient, web_service::Service,
};

/// The CA pin of `pki`, from `switchyard-master ca pin`.
fn ca_pin(pki: &Path) -> String {
    let out = Command::new(master_bin())
        .args(["ca", "pin", "--pki-dir"])
        .arg(pki)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let pin = text.lines().last().unwrap().to_owned();
    assert!(pin.starts_with("sha256:") && pin.len() == 71, "{pin}");
    pin
}

/// `switchyard ARGS` as the admin of `pki`, against `master`.
fn cli(pki: &Pki, master: &Proc, args: &[&str]) -> Output {
    Command::new(cli_bin())
        .args(args)
        .env("SWITCHYARD_MASTER", master.addr.to_string())
        .env("SWITCHYARD_PKI_DIR", &pki.path)
        .output()
        .unwrap()
}

/// A new token from `switchyard token create ARGS` (the last line of its output).
fn token(pki: &Pki, master: &Proc, args: &[&str]) -> String {
    let mut all = vec!["token", "create"];
    all.extend(args);
    let out = cli(pki, master, &all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines().last().unwrap().to_owned()
}

/// The agent command joining as `name` with its PKI directory `dir` (nothing in it yet).
fn join_cmd(master: &Proc, name: &str, dir: &Path, token: &str, pin: &str) -> Command {
    let mut cmd = Command::new(common::agent_bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--name", name])
        .args(["--master", &master.addr.to_string(), "--pki-dir"])
        .arg(dir)
        .args(["--join-token", token, "--ca-pin", pin]);
    cmd
}

/// A join that must fail: the agent's exit code and its error line.
fn refused_join(master: &Proc, name: &str, dir: &Path, token: &str, pin: &str) -> (i32, String) {
    let out = join_cmd(master, name, dir, token, pin)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the join succeeded");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

async fn tokens(pki: &Pki, master: &Proc) -> Vec<pb::JoinToken> {
    NodeServiceClient::new(channel(pki, "admin", master.addr).await)
        .list_join_tokens(pb::ListJoinTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .join_tokens
}

fn curl(url: &str) -> String {
    let out = Command::new(system_tool("curl"))
        .args(["-s", "--max-time", "5", url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn node_oid(pki: &Pki, master: &Proc, name: &str) -> String {
    NodeServiceClient::new(channel(pki, "admin", master.addr).await)
        .get_node_by_name(pb::GetNodeByNameRequest {
            authid: name.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .node
        .unwrap()
        .oid
}

/// Starts a web cluster with one nodeinfo worker on `node`; returns its port once RUNNING.
async fn web_cluster_on(pki: &Pki, master: &Proc, name: &str, node: &str) -> u16 {
    let mut web = WebClusterServiceClient::new(channel(pki, "admin", master.addr).await);
    let port = common::free_port();
    let oid = common::create_web_cluster(&mut web, name, port).await;
    web.add_web_cluster_node(pb::AddWebClusterNodeRequest {
        webcluster_oid: oid.clone(),
        node_oid: node_oid(pki, master, node).await,
        config: Some(pb::WebClusterNodeConfig {
            parallel: 1,
            standby: false,
        }),
    })
    .await
    .unwrap();
    web.add_web_cluster_service(pb::AddWebClusterServiceRequest {
        webcluster_oid: oid.clone(),
        webservice: Some(pb::WebService {
            path: "/".into(),
            service: Some(Service::Nodeinfo(Default::default())),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    web.start_web_cluster(pb::StartWebClusterRequest {
        webcluster_oid: oid.clone(),
    })
    .await
    .unwrap();
    eventually_async("the web cluster RUNNING", Duration::from_secs(20), || {
        let (mut web, oid) = (web.clone(), oid.clone());
        async move {
            let c = web
                .get_web_cluster(pb::GetWebClusterRequest {
                    webcluster_oid: oid,
                })
                .await
                .ok()?
                .into_inner()
                .webcluster?;
            (c.status == ClusterStatus::Running as i32).then_some(())
        }
    })
    .await;
    port
}

#[tokio::test]
async fn a_node_joins_with_a_token_and_the_pin_and_runs_web_workers() {
    let pki = Pki::new(&[]);
    let data = tempfile::tempdir().unwrap();
    let master = Proc::master(&pki, data.path());
    let pin = ca_pin(&pki.path);
    let token = token(&pki, &master, &["--ttl", "1h", "--name-prefix", "node"]);
    assert!(token.starts_with("swj1."), "{token}");

    // The node: an empty machine but for the binary.
    let node = tempfile::tempdir().unwrap();
    let dir: PathBuf = node.path().join("pki");
    let agent = Proc::spawn(join_cmd(&master, "node7", &dir, &token, &pin));
    common::nodes_online(&pki, master.addr, 1, Duration::from_secs(10)).await;

    // Its key was made there, private, and never reached the master.
    assert_eq!(files(&dir), ["ca.pem", "node7.key", "node7.pem"]);
    assert_eq!(mode(&dir.join("node7.key")), 0o600);
    assert_eq!(mode(&dir), 0o700);
    assert!(!files(&pki.path).iter().any(|f| f.starts_with("node7")));
    assert_eq!(
        std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
        std::fs::read_to_string(pki.path.join("ca.pem")).unwrap()
    );

    // It runs a web cluster's worker.
    let port = web_cluster_on(&pki, &master, "joined", "node7").await;
    let info = curl(&format!("http://127.0.0.1:{port}/"));
    assert!(info.contains("node7"), "{info}");

    // The token counted its use; listing shows no secret.
    let list = tokens(&pki, &master).await;
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].uses, list[0].max_uses), (1, 1));
    assert_eq!(list[0].state, pb::JoinTokenState::Exhausted as i32);
    assert_eq!(list[0].joined, ["node7"]);
    let out = cli(&pki, &master, &["token", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("EXHAUSTED") && text.contains("node7"),
        "{text}"
    );
    assert!(!text.contains(token.rsplit('.').next().unwrap()), "{text}");

    // Restarted with the same (now used-up) token: the certificate is there, the token ignored.
    drop(agent);
    eventually("node7 offline", Duration::from_secs(10), || {
        let out = cli(&pki, &master, &["node", "show", "node7"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("OFFLINE")
            .then_some(())
    });
    let _agent = Proc::spawn(join_cmd(&master, "node7", &dir, &token, &pin));
    common::nodes_online(&pki, master.addr, 1, Duration::from_secs(10)).await;
    assert_eq!(tokens(&pki, &master).await[0].uses, 1);
}

#[tokio::test]
async fn refused_joins_say_why_and_write_nothing() {
    let pki = Pki::new(&[]);
    let data = tempfile::tempdir().unwrap();
    let master = Proc::master(&pki, data.path());
    let pin = ca_pin(&pki.path);
    let node = tempfile::tempdir().unwrap();
    let dir = node.path().join("pki");
    let check = |what: &str, (code, err): (i32, String), expect: &str| {
        assert!(err.contains(expect), "{what}: {err}");
        assert_eq!(code, 64, "{what}: {err}");
        assert!(!dir.exists(), "{what}: the node has {:?}", files(&dir));
    };

    // A wrong pin: the handshake fails before anything is sent; the token stays unused.
    let good = token(&pki, &master, &["--ttl", "1h"]);
    let foreign = Pki::new(&[]);
    let wrong_pin = ca_pin(&foreign.path);
    let refused = refused_join(&master, "n1", &dir, &good, &wrong_pin);
    check("wrong pin", refused, "not the pinned CA");
    assert_eq!(tokens(&pki, &master).await[0].uses, 0);

    // A wrong secret, and no token at all.
    let (id, _) = good.rsplit_once('.').unwrap();
    let wrong = format!("{id}.{}", "0".repeat(32));
    check(
        "wrong token",
        refused_join(&master, "n1", &dir, &wrong, &pin),
        "TOKEN_INVALID",
    );
    check(
        "garbage token",
        refused_join(&master, "n1", &dir, "nope", &pin),
        "TOKEN_INVALID",
    );

    // Expired.
    let short = token(&pki, &master, &["--ttl", "1s"]);
    eventually_async("the token expired", Duration::from_secs(10), || async {
        tokens(&pki, &master)
            .await
            .iter()
            .any(|t| t.state == pb::JoinTokenState::Expired as i32)
            .then_some(())
    })
    .await;
    check(
        "expired token",
        refused_join(&master, "n1", &dir, &short, &pin),
        "TOKEN_EXPIRED",
    );

    // Revoked.
    let revoked = token(&pki, &master, &["--ttl", "1h"]);
    let out = cli(&pki, &master, &["token", "revoke", &revoked]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check(
        "revoked token",
        refused_join(&master, "n1", &dir, &revoked, &pin),
        "TOKEN_REVOKED",
    );

    // Outside its name prefix.
    let web_only = token(&pki, &master, &["--ttl", "1h", "--name-prefix", "web-"]);
    check(
        "name outside the prefix",
        refused_join(&master, "db-1", &dir, &web_only, &pin),
        "NAME_NOT_ALLOWED",
    );

    // Exhausted: its one use went to another node.
    let other = tempfile::tempdir().unwrap();
    let _n2 = Proc::spawn(join_cmd(
        &master,
        "n2",
        &other.path().join("pki"),
        &good,
        &pin,
    ));
    check(
        "exhausted token",
        refused_join(&master, "n1", &dir, &good, &pin),
        "TOKEN_EXHAUSTED",
    );

    // A name another node holds.
    let two = token(&pki, &master, &["--ttl", "1h", "--uses", "2"]);
    check(
        "duplicate name",
        refused_join(&master, "n2", &dir, &two, &pin),
        "ALREADY_EXISTS",
    );

    // A token without a pin is a configuration error before anything happens.
    let out = Command::new(common::agent_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--name", "n1"])
        .args(["--master", &master.addr.to_string(), "--pki-dir"])
        .arg(&dir)
        .args(["--join-token", &two])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ca_pin"));
    assert!(!dir.exists());
    // None of the refused attempts used the token.
    let two_id = two.split('.').nth(1).unwrap();
    let list = tokens(&pki, &master).await;
    assert_eq!(list.iter().find(|t| t.id == two_id).unwrap().uses, 0);
}

/// Holds `(seconds since start, what)` of what a background stream saw.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(f64, String)>>>;

/// Follows the master's node events for `oid` into a list.
async fn watch_node(pki: &Pki, master: &Proc, oid: &str, start: std::time::Instant) -> Seen {
    use switchyard::pb::master::v1::event_service_client::EventServiceClient;
    let mut events = EventServiceClient::new(channel(pki, "admin", master.addr).await);
    let mut stream = events
        .watch(pb::WatchRequest {
            types: vec![],
            oids: vec![oid.to_owned()],
        })
        .await
        .unwrap()
        .into_inner();
    let seen = Seen::default();
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Ok(Some(e)) = stream.message().await {
            let t = e.event.map_or(0, |e| e.r#type);
            let name = pb::EventType::try_from(t).map_or("?", |t| t.as_str_name());
            sink.lock()
                .unwrap()
                .push((start.elapsed().as_secs_f64(), name.to_owned()));
        }
        sink.lock()
            .unwrap()
            .push((start.elapsed().as_secs_f64(), "END".into()));
    });
    seen
}

/// Follows the agent's stats through the master's gateway (`switchyard-node: node`).
async fn gateway_stats(pki: &Pki, master: &Proc, node: &str, start: std::time::Instant) -> Seen {
    use switchyard::pb::agent::v1::{
        self as apb, native_process_service_client::NativeProcessServiceClient,
    };
    let mut np = NativeProcessServiceClient::new(channel(pki, "admin", master.addr).await);
    let mut req = tonic::Request::new(apb::StreamProcessStatsRequest {
        interval: 0.5,
        processes: vec!["controller".into()],
    });
    req.metadata_mut()
        .insert("switchyard-node", node.parse().unwrap());
    let mut stream = np.stream_process_stats(req).await.unwrap().into_inner();
    let seen = Seen::default();
    let sink = seen.clone();
    tokio::spawn(async move {
        loop {
            let what = match stream.message().await {
                Ok(Some(_)) => "sample".to_owned(),
                Ok(None) => "END".to_owned(),
                Err(s) => format!("ERROR {s}"),
            };
            let end = what != "sample";
            sink.lock()
                .unwrap()
                .push((start.elapsed().as_secs_f64(), what));
            if end {
                break;
            }
        }
    });
    seen
}

/// grpcurl's health check on `addr` with the client certificate `cert`/`key` (`None`: none).
fn health(ca: &Path, cert: Option<(&Path, &Path)>, addr: std::net::SocketAddr) -> Output {
    let mut tls = vec!["-cacert".to_owned(), ca.to_string_lossy().into_owned()];
    if let Some((c, k)) = cert {
        tls.extend([
            "-cert".to_owned(),
            c.to_string_lossy().into_owned(),
            "-key".to_owned(),
            k.to_string_lossy().into_owned(),
        ]);
    }
    common::grpcurl(
        &tls,
        &[
            "-connect-timeout",
            "3",
            &addr.to_string(),
            "grpc.health.v1.Health/Check",
        ],
    )
}

/// `not_after` of the certificate in `pem`, as Unix seconds.
fn not_after(pem: &Path) -> i64 {
    let text = std::fs::read_to_string(pem).unwrap();
    let der = switchyard::issuer::pem_certificates(&text).remove(0);
    switchyard::issuer::validity(&der).unwrap().1
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_twice_without_the_node_going_offline() {
    let pki = Pki::new(&[]);
    let data = tempfile::tempdir().unwrap();
    let master = Proc::master_with(
        &pki,
        data.path(),
        "127.0.0.1:0",
        // A stream that broke at a rotation would put the node offline at once; the longer
        // grace only keeps a loaded test machine's scheduling pauses from looking like one.
        &["--node-cert-ttl", "30s", "--heartbeat-grace-ms", "5000"],
    );
    let pin = ca_pin(&pki.path);
    let token = token(&pki, &master, &["--ttl", "1h"]);
    let node = tempfile::tempdir().unwrap();
    let dir = node.path().join("pki");
    let agent = Proc::spawn(join_cmd(&master, "node7", &dir, &token, &pin));
    common::nodes_online(&pki, master.addr, 1, Duration::from_secs(10)).await;
    let start = std::time::Instant::now();
    let oid = node_oid(&pki, &master, "node7").await;
    let events = watch_node(&pki, &master, &oid, start).await;
    let stats = gateway_stats(&pki, &master, "node7", start).await;

    // Keep the first certificate aside, to try it after it expired.
    let old = tempfile::tempdir().unwrap();
    let (old_pem, old_key) = (old.path().join("old.pem"), old.path().join("old.key"));
    std::fs::copy(dir.join("node7.pem"), &old_pem).unwrap();
    std::fs::copy(dir.join("node7.key"), &old_key).unwrap();
    let ca = dir.join("ca.pem");
    assert!(
        health(&ca, Some((&old_pem, &old_key)), master.addr)
            .status
            .success(),
        "the first certificate works while it is valid"
    );

    // Two renewals, each with a new key, both written to the node's files.
    eventually_async("two renewals", Duration::from_secs(75), || async {
        (agent.logs().matches("node certificate renewed").count() >= 2).then_some(())
    })
    .await;
    let new_key = std::fs::read_to_string(dir.join("node7.key")).unwrap();
    assert_ne!(new_key, std::fs::read_to_string(&old_key).unwrap());
    assert_eq!(mode(&dir.join("node7.key")), 0o600);
    assert_eq!(files(&dir), ["ca.pem", "node7.key", "node7.pem"]);

    // The old certificate is refused once it expired; the current one works, and the agent
    // serves its current certificate to new connections.
    let expiry = not_after(&old_pem);
    eventually_async(
        "the first certificate to expire",
        Duration::from_secs(40),
        || async { (unix_now() > expiry + 1).then_some(()) },
    )
    .await;
    let out = health(&ca, Some((&old_pem, &old_key)), master.addr);
    assert!(!out.status.success(), "an expired certificate was accepted");
    let current = (dir.join("node7.pem"), dir.join("node7.key"));
    let out = health(&ca, Some((&current.0, &current.1)), master.addr);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin = (pki.path.join("admin.pem"), pki.path.join("admin.key"));
    let out = health(&ca, Some((&admin.0, &admin.1)), agent.addr);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Throughout: never offline, and the gateway stream never stopped or paused.
    let events_handle = events;
    let events = events_seen(&events_handle);
    assert!(
        !events
            .iter()
            .any(|(_, e)| e.contains("SHUTDOWN") || e == "END"),
        "{events:?}\nmaster:\n{}\nagent:\n{}",
        master.logs(),
        agent.logs()
    );
    let stats = stats.lock().unwrap().clone();
    assert!(
        stats.iter().all(|(_, s)| s == "sample"),
        "{:?}",
        stats.last()
    );
    let gaps = stats
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .fold(0.0, f64::max);
    assert!(gaps < 3.0, "the stream paused {gaps:.1} s");
    assert!(stats.last().unwrap().0 > start.elapsed().as_secs_f64() - 3.0);
    assert!(stats.len() > 40, "{} samples", stats.len());
    assert_eq!(
        agent
            .logs()
            .matches("heartbeat stream moved to the renewed certificate")
            .count(),
        2,
        "{}",
        agent.logs()
    );

    // The watcher does see a node going offline (so its silence above meant something).
    drop(agent);
    eventually_async("node7 offline", Duration::from_secs(10), || async {
        let e = events_seen(&events_handle);
        e.iter().any(|(_, e)| e.contains("SHUTDOWN")).then_some(())
    })
    .await;
}

fn events_seen(seen: &Seen) -> Vec<(f64, String)> {
    seen.lock().unwrap().clone()
}

/// Whether grpcurl was refused for a revoked certificate (its reflection query fails first, so
/// the status's message is what it prints).
fn refused_as_revoked(out: &Output) -> bool {
    let err = String::from_utf8_lossy(&out.stderr);
    !out.status.success() && err.contains("PermissionDenied") && err.contains("was revoked")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_nodes_certificate_is_refused_by_the_master_and_the_agents() {
    let pki = Pki::new(&[]);
    let data = tempfile::tempdir().unwrap();
    let master = Proc::master(&pki, data.path());
    let pin = ca_pin(&pki.path);
    let two = token(&pki, &master, &["--ttl", "1h", "--uses", "2"]);
    let (a_home, b_home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a_dir, b_dir) = (a_home.path().join("pki"), b_home.path().join("pki"));
    let agent_a = Proc::spawn(join_cmd(&master, "node-a", &a_dir, &two, &pin));
    let agent_b = Proc::spawn(join_cmd(&master, "node-b", &b_dir, &two, &pin));
    common::nodes_online(&pki, master.addr, 2, Duration::from_secs(10)).await;
    let ca = a_dir.join("ca.pem");
    let a_cert = (a_dir.join("node-a.pem"), a_dir.join("node-a.key"));
    let a_tls = Some((a_cert.0.as_path(), a_cert.1.as_path()));
    assert!(health(&ca, a_tls, master.addr).status.success());
    assert!(health(&ca, a_tls, agent_b.addr).status.success());

    let out = cli(&pki, &master, &["node", "remove", "node-a"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked"));

    // The master refuses it at once, on a new connection and on the heartbeat stream it had.
    let out = health(&ca, a_tls, master.addr);
    assert!(
        refused_as_revoked(&out),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        "node-a told its certificate is refused",
        Duration::from_secs(10),
        || agent_a.logs().contains("CERTIFICATE_REVOKED").then_some(()),
    );
    // The other agent learns it from its heartbeats.
    eventually(
        "node-b to refuse node-a's certificate",
        Duration::from_secs(10),
        || refused_as_revoked(&health(&ca, a_tls, agent_b.addr)).then_some(()),
    );
    let names = || {
        let out = cli(&pki, &master, &["node", "list"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(!names().contains("node-a"), "{}", names());

    // Back with its old certificate: still refused, not registered again.
    drop(agent_a);
    let again = Proc::spawn(join_cmd(&master, "node-a", &a_dir, &two, &pin));
    eventually(
        "the old certificate refused again",
        Duration::from_secs(10),
        || again.logs().contains("CERTIFICATE_REVOKED").then_some(()),
    );
    assert!(!names().contains("node-a"), "{}", names());
    drop(again);

    // A new token, on a machine without the old files: node-a is back, with a certificate both
    // the master and node-b accept.
    std::fs::remove_dir_all(&a_dir).unwrap();
    let fresh = token(&pki, &master, &["--ttl", "1h"]);
    let _back = Proc::spawn(join_cmd(&master, "node-a", &a_dir, &fresh, &pin));
    common::nodes_online(&pki, master.addr, 2, Duration::from_secs(10)).await;
    assert!(health(&ca, a_tls, master.addr).status.success());
    assert!(health(&ca, a_tls, agent_b.addr).status.success());
}

#[tokio::test]
async fn tokens_are_created_offline_on_a_stopped_masters_store() {
    let pki = Pki::new(&[]);
    let data = tempfile::tempdir().unwrap();
    let offline = |args: &[&str]| {
        Command::new(master_bin())
            .args(["token", "create", "--data-dir"])
            .arg(data.path())
            .args(args)
            .output()
            .unwrap()
    };
    // No store yet: a clear error, nothing created.
    let out = offline(&["--ttl", "10m"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no master store"));

    let master = Proc::master(&pki, data.path());
    // While the master runs, its store is locked: the error points to the online path.
    let out = offline(&["--ttl", "10m"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("switchyard token create"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let addr = master.addr;
    drop(master);
    let out = offline(&["--ttl", "10m", "--name-prefix", "n"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned();

    let master = Proc::master_on(&pki, data.path(), &addr.to_string());
    let node = tempfile::tempdir().unwrap();
    let _agent = Proc::spawn(join_cmd(
        &master,
        "n1",
        &node.path().join("pki"),
        &token,
        &ca_pin(&pki.path),
    ));
    common::nodes_online(&pki, master.addr, 1, Duration::from_secs(10)).await;
}
