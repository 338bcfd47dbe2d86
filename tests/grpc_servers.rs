//! Issue 2 acceptance: real master and agent processes, real mTLS, reflection, health, role
//! checks, through grpcurl and a tonic client.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Pki, Proc, grpcurl, stderr, stdout};
use switchyard::pb::agent::v1::{
    GetStatusRequest, node_controller_service_client::NodeControllerServiceClient,
};
use switchyard::pb::master::v1::{
    ListWebClustersRequest, web_cluster_service_client::WebClusterServiceClient,
};
use switchyard::pki::Identity;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

fn services(listing: &str) -> Vec<&str> {
    let mut v: Vec<&str> = listing
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

#[test]
fn grpcurl_lists_describes_and_calls_master_and_agent() {
    let pki = Pki::new(&["node1"]);
    let data = tempfile::tempdir().unwrap();
    let master = Proc::master(&pki, data.path());
    let agent = Proc::agent(&pki, "node1", master.addr);
    let admin = pki.grpcurl_tls(Some("admin"));
    let m = master.addr.to_string();
    let a = agent.addr.to_string();

    let out = grpcurl(&admin, &[&m, "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        services(&stdout(&out)),
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "switchyard.agent.v1.NativeProcessService",
            "switchyard.agent.v1.NodeControllerService",
            "switchyard.master.v1.ControlPlaneService",
            "switchyard.master.v1.EventService",
            "switchyard.master.v1.NodeService",
            "switchyard.master.v1.RouterClusterService",
            "switchyard.master.v1.WebClusterService",
        ]
    );

    // describe shows the proto comments, of services, RPCs and fields.
    let out = grpcurl(
        &admin,
        &[&m, "describe", "switchyard.master.v1.WebClusterService"],
    );
    let text = stdout(&out);
    assert!(
        text.contains("WebClusterService manages web clusters"),
        "{text}"
    );
    assert!(
        text.contains("Creates a web cluster in status STOPPED"),
        "{text}"
    );
    let out = grpcurl(&admin, &[&m, "describe", "switchyard.master.v1.WebCluster"]);
    let text = stdout(&out);
    assert!(
        text.contains("Unique name, `^[a-z][a-z0-9_]{2,63}$`"),
        "{text}"
    );
    assert!(text.contains("tls_chain_certificates"), "{text}");

    let out = grpcurl(&admin, &[&a, "list"]);
    assert_eq!(
        services(&stdout(&out)),
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "switchyard.agent.v1.NativeProcessService",
            "switchyard.agent.v1.NodeControllerService",
        ]
    );
    let out = grpcurl(
        &admin,
        &[
            &a,
            "describe",
            "switchyard.agent.v1.NativeProcessService.SetCpuAffinity",
        ],
    );
    assert!(
        stdout(&out).contains("Pins every thread of the process"),
        "{}",
        stdout(&out)
    );

    // Health of each named service.
    for (addr, service) in [
        (&m, "switchyard.master.v1.WebClusterService"),
        (&a, "switchyard.agent.v1.NativeProcessService"),
    ] {
        let body = format!(r#"{{"service":"{service}"}}"#);
        let out = grpcurl(&admin, &["-d", &body, addr, "grpc.health.v1.Health/Check"]);
        assert!(
            stdout(&out).contains("SERVING"),
            "{}{}",
            stdout(&out),
            stderr(&out)
        );
    }

    // A real call with JSON: the agent's own uptime and start time.
    let out = grpcurl(
        &admin,
        &[
            "-d",
            r#"{"process":"controller"}"#,
            &a,
            "switchyard.agent.v1.NativeProcessService/Uptime",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    let uptime = v["uptime"].as_f64().expect("uptime");
    assert!(uptime > 0.0 && uptime < 120.0, "{v}");
    let out = grpcurl(
        &admin,
        &[
            "-d",
            "{}",
            &a,
            "switchyard.agent.v1.NodeControllerService/GetStatus",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(v["authid"], "node1");
    assert_eq!(v["pid"].as_u64(), Some(u64::from(agent.pid())));

    // Bad input: a clear INVALID_ARGUMENT naming the field.
    let out = grpcurl(
        &admin,
        &[
            "-d",
            "{}",
            &a,
            "switchyard.agent.v1.NativeProcessService/Uptime",
        ],
    );
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("InvalidArgument") && err.contains("process"),
        "{err}"
    );
}

#[test]
fn mtls_and_roles_are_enforced() {
    let pki = Pki::new(&["node1"]);
    let foreign = Pki::new(&[]);
    let data = tempfile::tempdir().unwrap();
    let master = Proc::master(&pki, data.path());
    let agent = Proc::agent(&pki, "node1", master.addr);
    let m = master.addr.to_string();
    let a = agent.addr.to_string();
    let list = "switchyard.master.v1.WebClusterService/ListWebClusters";

    // No client certificate: the master admits the connection for JoinNode only; the call is
    // UNAUTHENTICATED.
    let out = grpcurl(&pki.grpcurl_tls(None), &["-d", "{}", &m, list]);
    assert!(
        !out.status.success(),
        "a call without a client certificate succeeded"
    );
    assert!(stderr(&out).contains("Unauthenticated"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("Unimplemented"), "{}", stderr(&out));

    // A certificate from another CA: refused as well.
    let mut other = foreign.grpcurl_tls(Some("admin"));
    other[1] = pki.file("ca.pem"); // trust our server, present the foreign client cert
    let out = grpcurl(&other, &["-connect-timeout", "3", "-d", "{}", &m, list]);
    assert!(
        !out.status.success(),
        "a foreign client certificate was accepted"
    );
    assert!(!stderr(&out).contains("Unimplemented"), "{}", stderr(&out));

    // A node certificate calling the admin API: PermissionDenied, reason NOT_AUTHORIZED.
    let out = grpcurl(&pki.grpcurl_tls(Some("node1")), &["-d", "{}", &m, list]);
    let err = stderr(&out);
    assert!(err.contains("PermissionDenied"), "{err}");
    assert!(err.contains("NOT_AUTHORIZED"), "{err}");

    // An admin certificate succeeds.
    let out = grpcurl(&pki.grpcurl_tls(Some("admin")), &["-d", "{}", &m, list]);
    assert!(out.status.success(), "{}", stderr(&out));

    // On the agent: admin and master may call, a node may not.
    let uptime = "switchyard.agent.v1.NativeProcessService/Uptime";
    let body = r#"{"process":"controller"}"#;
    for (who, ok) in [("admin", true), ("master", true), ("node1", false)] {
        let out = grpcurl(&pki.grpcurl_tls(Some(who)), &["-d", body, &a, uptime]);
        assert_eq!(out.status.success(), ok, "{who}: {}", stderr(&out));
        if !ok {
            assert!(
                stderr(&out).contains("PermissionDenied"),
                "{}",
                stderr(&out)
            );
        }
    }
}

async fn channel(pki: &Pki, name: Option<&str>, addr: std::net::SocketAddr) -> Channel {
    let tls = match name {
        Some(name) => Identity::load(&pki.path, name)
            .unwrap()
            .client_tls("localhost"),
        None => ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(
                std::fs::read(pki.file("ca.pem")).unwrap(),
            ))
            .domain_name("localhost"),
    };
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect")
}

#[tokio::test]
async fn tonic_clients_over_mtls() {
    let pki = Pki::new(&["node1"]);
    let data = tempfile::tempdir().unwrap();
    let master = Proc::master(&pki, data.path());
    let agent = Proc::agent(&pki, "node1", master.addr);

    // The master calls the agent with its own certificate.
    let mut client =
        NodeControllerServiceClient::new(channel(&pki, Some("master"), agent.addr).await);
    let status = client
        .get_status(GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.authid, "node1");
    assert_eq!(status.version, switchyard::VERSION);

    // Without a client certificate the connection may open, but the first RPC fails.
    let mut anon = WebClusterServiceClient::new(channel(&pki, None, master.addr).await);
    let err = anon
        .list_web_clusters(ListWebClustersRequest::default())
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Unimplemented, "{err}");
    assert_ne!(err.code(), Code::Ok);

    // A node certificate on the admin API: PermissionDenied with ErrorInfo reason.
    let mut node = WebClusterServiceClient::new(channel(&pki, Some("node1"), master.addr).await);
    let err = node
        .list_web_clusters(ListWebClustersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        switchyard::error::reason_of(&err).as_deref(),
        Some("NOT_AUTHORIZED")
    );
}

#[test]
fn unusable_start_up_files_exit_64_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-pki");
    let out = Command::new(common::master_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--pki-dir")
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&missing.join("ca.pem").display().to_string()),
        "{}",
        stderr(&out)
    );

    let out = Command::new(common::agent_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--master",
            "127.0.0.1:1",
            "--name",
            "node9",
            "--pki-dir",
        ])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("no-such-pki"), "{}", stderr(&out));
}

/// docs/security.md's CA rotation, step by step, with a master and an agent restarted one at a
/// time: trust both CAs (bundle), move every leaf to the new CA, drop the old CA. At each step an
/// admin calls the master, the agent heartbeats to it (node online), and the master calls the
/// agent (a gateway call); at the end a certificate of the old CA is refused.
#[test]
fn the_ca_rotation_procedure_keeps_the_cluster_talking() {
    let live = Pki::new(&["node1"]); // the files the processes read, rotated in place
    let next = Pki::new(&["node1"]); // the new CA and its certificates, issued elsewhere
    let old = tempfile::tempdir().unwrap(); // the old CA's admin certificate, kept aside
    for f in ["ca.pem", "admin.pem", "admin.key"] {
        std::fs::copy(live.path.join(f), old.path().join(f)).unwrap();
    }
    let data = tempfile::tempdir().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", common::stable_port())
        .parse()
        .unwrap();
    let listen = addr.to_string();
    let tls = |ca: &std::path::Path, dir: &std::path::Path| -> Vec<String> {
        let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
        vec![
            "-cacert".into(),
            ca.to_string_lossy().into_owned(),
            "-cert".into(),
            p("admin.pem"),
            "-key".into(),
            p("admin.key"),
        ]
    };
    let ca = live.path.join("ca.pem");
    // An admin call to the master, and a call the master forwards to node1 over its own mTLS.
    let cluster_works = |admin: &std::path::Path, what: &str| {
        common::eventually(what, Duration::from_secs(20), || {
            let list = grpcurl(
                &tls(&ca, admin),
                &[
                    "-d",
                    r#"{"return_names": true, "filter_by_status": "NODE_STATUS_ONLINE"}"#,
                    &listen,
                    "switchyard.master.v1.NodeService/ListNodes",
                ],
            );
            if !(list.status.success() && stdout(&list).contains("\"node1\"")) {
                return None;
            }
            let status = grpcurl(
                &tls(&ca, admin),
                &[
                    "-H",
                    "switchyard-node: node1",
                    &listen,
                    "switchyard.agent.v1.NodeControllerService/GetStatus",
                ],
            );
            (status.status.success() && stdout(&status).contains("\"authid\": \"node1\""))
                .then_some(())
        })
    };
    let restart = |master: &mut Proc, agent: &mut Proc| {
        master.kill9();
        *master = Proc::master_on(&live, data.path(), &listen);
        agent.kill9();
        *agent = Proc::agent(&live, "node1", addr);
    };
    let mut master = Proc::master_on(&live, data.path(), &listen);
    let mut agent = Proc::agent(&live, "node1", addr);
    cluster_works(old.path(), "the cluster on the old CA");
    assert!(
        !grpcurl(&tls(&ca, &next.path), &[&listen, "list"])
            .status
            .success(),
        "a certificate of the new CA is not trusted yet"
    );

    // 1. Trust both: ca.pem becomes old + new; restart one by one.
    let bundle = format!(
        "{}{}",
        std::fs::read_to_string(&ca).unwrap(),
        std::fs::read_to_string(next.path.join("ca.pem")).unwrap()
    );
    std::fs::write(&ca, bundle).unwrap();
    restart(&mut master, &mut agent);
    cluster_works(old.path(), "old certificates under the bundle");
    cluster_works(&next.path, "new certificates under the bundle");

    // 2. Every leaf from the new CA.
    for f in ["master", "node1", "admin"] {
        for ext in ["pem", "key"] {
            let name = format!("{f}.{ext}");
            std::fs::copy(next.path.join(&name), live.path.join(&name)).unwrap();
        }
    }
    restart(&mut master, &mut agent);
    cluster_works(&live.path, "new leaves under the bundle");

    // 3. Drop the old CA.
    std::fs::copy(next.path.join("ca.pem"), &ca).unwrap();
    restart(&mut master, &mut agent);
    cluster_works(&live.path, "the cluster on the new CA alone");
    let refused = grpcurl(&tls(&ca, old.path()), &[&listen, "list"]);
    assert!(
        !refused.status.success(),
        "a certificate of the removed CA was accepted: {}",
        stdout(&refused)
    );
    assert!(
        !grpcurl(
            &tls(&old.path().join("ca.pem"), old.path()),
            &[&listen, "list"]
        )
        .status
        .success(),
        "a client trusting only the old CA accepted the new master certificate"
    );
}
