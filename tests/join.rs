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
