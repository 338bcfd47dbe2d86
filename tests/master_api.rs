//! Issue 4 acceptance: the master's admin API over its durable store, through grpcurl, Python
//! grpcio stubs and tonic; events; restart and kill -9 durability; heartbeats.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Pki, Proc, channel, eventually_async, grpcurl, repo, stderr, stdout, tool};
use serde_json::{Value, json};
use switchyard::pb::master::v1::{
    self as pb, EventType, NodeStatus, event_service_client::EventServiceClient,
    node_service_client::NodeServiceClient,
    router_cluster_service_client::RouterClusterServiceClient,
    web_cluster_service_client::WebClusterServiceClient,
};
use switchyard_master::store::{Store, keys};
use tonic::Code;

/// grpcurl against the master as admin; the parsed JSON answer or the error text.
struct Admin {
    tls: Vec<String>,
    addr: String,
}

impl Admin {
    fn call(&self, method: &str, body: Value) -> Result<Value, String> {
        let body = body.to_string();
        let full = if method.contains('/') {
            method.to_owned()
        } else {
            let service = if method.contains("Router") {
                "RouterClusterService"
            } else if method.contains("Node") && !method.contains("WebCluster") {
                "NodeService"
            } else {
                "WebClusterService"
            };
            format!("switchyard.master.v1.{service}/{method}")
        };
        let out = grpcurl(&self.tls, &["-d", &body, &self.addr, &full]);
        if out.status.success() {
            Ok(serde_json::from_str(&stdout(&out)).expect("grpcurl prints JSON"))
        } else {
            Err(stderr(&out))
        }
    }

    fn ok(&self, method: &str, body: Value) -> Value {
        self.call(method, body)
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// Asserts the call fails with `code` and ErrorInfo `reason`.
    fn fails(&self, method: &str, body: Value, code: &str, reason: &str) -> String {
        let err = self
            .call(method, body.clone())
            .expect_err(&format!("{method} {body} should fail"));
        assert!(
            err.contains(&format!("Code: {code}")),
            "{method}: expected {code}: {err}"
        );
        assert!(
            err.contains(&format!("\"reason\":\"{reason}\"")),
            "{method}: expected {reason}: {err}"
        );
        err
    }
}

async fn wait_online(pki: &Pki, master: std::net::SocketAddr, authid: &str) -> String {
    let mut nodes = NodeServiceClient::new(channel(pki, "admin", master).await);
    eventually_async("the node to be online", Duration::from_secs(10), || {
        let mut nodes = nodes.clone();
        let authid = authid.to_owned();
        async move {
            let n = nodes
                .get_node_by_name(pb::GetNodeByNameRequest { authid })
                .await
                .ok()?
                .into_inner()
                .node?;
            (n.status == NodeStatus::Online as i32).then_some(n.oid)
        }
    })
    .await;
    nodes
        .get_node_by_name(pb::GetNodeByNameRequest {
            authid: authid.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .node
        .unwrap()
        .oid
}

#[tokio::test]
async fn grpcurl_drives_both_life_cycles_and_every_error() {
    let pki = Pki::new(&["node1"]);
    let data = tempfile::tempdir().unwrap();
    let master = Proc::master(&pki, data.path());
    let _agent = Proc::agent(&pki, "node1", master.addr);
    let node_oid = wait_online(&pki, master.addr, "node1").await;
    let a = Admin {
        tls: pki.grpcurl_tls(Some("admin")),
        addr: master.addr.to_string(),
    };

    // Nodes.
    assert_eq!(
        a.ok(
            "ListNodes",
            json!({"returnNames": true, "filterByStatus": "NODE_STATUS_ONLINE"})
        )["items"],
        json!(["node1"])
    );
    assert_eq!(
        a.ok(
            "ListNodes",
            json!({"filterByStatus": "NODE_STATUS_OFFLINE"})
        ),
        json!({})
    );
    let node = &a.ok("GetNodeByName", json!({"authid": "node1"}))["node"];
    assert_eq!(node["oid"], node_oid.as_str());
    assert_eq!(node["status"], "NODE_STATUS_ONLINE");
    assert!(node["endpoint"].as_str().unwrap().starts_with("127.0.0.1:"));
    a.fails(
        "GetNode",
        json!({"nodeOid": "x"}),
        "InvalidArgument",
        "INVALID_ARGUMENT",
    );
    a.fails(
        "GetNodeByName",
        json!({"authid": "ghost"}),
        "NotFound",
        "NO_SUCH_OBJECT",
    );

    // Web cluster life cycle.
    // This cluster is started: its monitor really listens, so on a free loopback port.
    let port = common::free_port();
    let c = a.ok("CreateWebCluster", json!({"webcluster": {"name": "cluster1", "tcpPort": port, "tcpInterface": "127.0.0.1", "label": "L", "tags": ["a"],
        "tlsKey": "-----BEGIN PRIVATE KEY-----\nMC4\n-----END PRIVATE KEY-----", "tlsCertificate": "-----BEGIN CERTIFICATE-----\nMI\n-----END CERTIFICATE-----"}}))["webcluster"].clone();
    let oid = c["oid"].as_str().unwrap().to_owned();
    assert_eq!(c["status"], "CLUSTER_STATUS_STOPPED");
    assert_eq!(
        c["tlsKey"], "<redacted>",
        "the TLS key never leaves the master"
    );
    assert_eq!(
        a.ok("GetWebCluster", json!({"webclusterOid": oid}))["webcluster"]["name"],
        "cluster1"
    );
    assert_eq!(
        a.ok("GetWebClusterByName", json!({"webclusterName": "cluster1"}))["webcluster"]["oid"],
        oid.as_str()
    );
    assert_eq!(a.ok("ListWebClusters", json!({}))["items"], json!([oid]));
    assert_eq!(
        a.ok("ListWebClusters", json!({"returnNames": true}))["items"],
        json!(["cluster1"])
    );
    let m = a.ok(
        "AddWebClusterNode",
        json!({"webclusterOid": oid, "nodeOid": "node1", "config": {"parallel": 2}}),
    );
    assert_eq!(m["node"]["parallel"], 2);
    assert_eq!(
        a.ok(
            "GetWebClusterNode",
            json!({"webclusterOid": oid, "nodeOid": node_oid})
        )["node"]["nodeAuthid"],
        "node1"
    );
    assert_eq!(a.ok("ListWebClusterNodes", json!({"webclusterOid": oid, "returnNames": true, "filterByStatus": "NODE_STATUS_ONLINE"}))["items"], json!(["node1"]));
    assert_eq!(
        a.ok(
            "ListWebClusterNodes",
            json!({"webclusterOid": oid, "filterByStatus": "NODE_STATUS_OFFLINE"})
        ),
        json!({})
    );
    let st = a.ok("AddWebClusterService", json!({"webclusterOid": oid, "webservice": {"path": "/", "static": {"directory": "/srv/www", "options": {"enableDirectoryListing": true}}}}));
    let st_oid = st["webservice"]["oid"].as_str().unwrap().to_owned();
    let js = a.ok("AddWebClusterService", json!({"webclusterOid": oid, "webservice": {"path": "/settings", "json": {"value": {"a": [1, 2, 3], "b": null}}}}));
    assert_eq!(
        js["webservice"]["json"]["value"],
        json!({"a": [1, 2, 3], "b": null}),
        "any JSON value round-trips"
    );
    a.ok("AddWebClusterService", json!({"webclusterOid": oid, "webservice": {"path": "/go", "redirect": {"url": "https://example.org/"}}}));
    a.ok("AddWebClusterService", json!({"webclusterOid": oid, "webservice": {"path": "/api", "reverseproxy": {"host": "10.0.0.1", "port": 8081}}}));
    a.ok(
        "AddWebClusterService",
        json!({"webclusterOid": oid, "webservice": {"path": "info", "nodeinfo": {}}}),
    );
    a.ok("AddWebClusterService", json!({"webclusterOid": oid, "webservice": {"path": "/ws", "websocketReverseproxy": {"backend": {"host": "127.0.0.1", "port": 9000}}}}));
    assert_eq!(
        a.ok(
            "GetWebClusterServiceByPath",
            json!({"webclusterOid": oid, "path": "/"})
        )["webservice"]["oid"],
        st_oid.as_str()
    );
    assert_eq!(
        a.ok(
            "GetWebClusterService",
            json!({"webclusterOid": oid, "webserviceOid": st_oid})
        )["webservice"]["static"]["directory"],
        "/srv/www"
    );
    let listed = a.ok("ListWebClusterServices", json!({"webclusterOid": oid}))["services"].clone();
    let paths: BTreeSet<_> = listed.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        paths,
        ["/", "/api", "/go", "/info", "/settings", "/ws"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        a.ok(
            "ListWebClusterServices",
            json!({"webclusterOid": oid, "prefix": "/s"})
        )["services"]
            .as_object()
            .unwrap()
            .len(),
        1
    );

    // Every error of the web cluster API, with code and reason.
    a.fails(
        "CreateWebCluster",
        json!({"webcluster": {"name": "cluster1", "tcpPort": 80}}),
        "AlreadyExists",
        "ALREADY_EXISTS",
    );
    let e = a.fails(
        "CreateWebCluster",
        json!({"webcluster": {"name": "X", "tcpPort": 80}}),
        "InvalidArgument",
        "INVALID_ARGUMENT",
    );
    assert!(e.contains("webcluster.name"), "{e}");
    let e = a.fails(
        "CreateWebCluster",
        json!({"webcluster": {"name": "noport"}}),
        "InvalidArgument",
        "INVALID_ARGUMENT",
    );
    assert!(e.contains("webcluster.tcp_port"), "{e}");
    let e = a.fails(
        "CreateWebCluster",
        json!({"webcluster": {"name": "badtls", "tcpPort": 443, "tlsKey": "nope"}}),
        "InvalidArgument",
        "INVALID_ARGUMENT",
    );
    assert!(e.contains("tls_certificate"), "{e}");
    a.fails(
        "GetWebCluster",
        json!({"webclusterOid": "123"}),
        "InvalidArgument",
        "INVALID_ARGUMENT",
    );
    a.fails(
        "GetWebCluster",
        json!({"webclusterOid": "00000000-0000-4000-8000-000000000000"}),
        "NotFound",
        "NO_SUCH_OBJECT",
    );
    a.fails(
        "GetWebClusterByName",
        json!({"webclusterName": "ghost"}),
        "NotFound",
        "NO_SUCH_OBJECT",
    );
    a.fails(
        "AddWebClusterNode",
        json!({"webclusterOid": oid, "nodeOid": "node1"}),
        "AlreadyExists",
        "ALREADY_EXISTS",
    );
    a.fails(
        "AddWebClusterNode",
        json!({"webclusterOid": oid, "nodeOid": "ghost"}),
        "NotFound",
        "NO_SUCH_OBJECT",
    );
    a.fails(
        "AddWebClusterService",
        json!({"webclusterOid": oid, "webservice": {"path": "/", "nodeinfo": {}}}),
        "AlreadyExists",
        "ALREADY_EXISTS",
    );
    // A missing or malformed key is INVALID_ARGUMENT, a set but unusable one
    // INVALID_CONFIGURATION (README, "Errors").
    for (service, field, reason) in [
        (
            json!({"path": "/x", "static": {"directory": ""}}),
            "webservice.static.directory",
            "INVALID_ARGUMENT",
        ),
        (
            json!({"path": "/x", "static": {"directory": "relative/www"}}),
            "webservice.static.directory",
            "INVALID_CONFIGURATION",
        ),
        (
            json!({"path": "/x", "json": {}}),
            "webservice.json.value",
            "INVALID_ARGUMENT",
        ),
        (
            json!({"path": "/x", "redirect": {"url": "nope"}}),
            "webservice.redirect.url",
            "INVALID_CONFIGURATION",
        ),
        (
            json!({"path": "/x", "reverseproxy": {"host": "", "port": 80}}),
            "webservice.reverseproxy.host",
            "INVALID_ARGUMENT",
        ),
        (
            json!({"path": "/x", "reverseproxy": {"host": "h", "port": 70000}}),
            "webservice.reverseproxy.port",
            "INVALID_CONFIGURATION",
        ),
        (
            json!({"path": "/x"}),
            "webservice.service",
            "INVALID_ARGUMENT",
        ),
        (
            json!({"path": "/a/../b", "nodeinfo": {}}),
            "webservice.path",
            "INVALID_ARGUMENT",
        ),
        (
            json!({"path": "/x", "websocketReverseproxy": {}}),
            "webservice.websocket_reverseproxy",
            "INVALID_ARGUMENT",
        ),
    ] {
        let e = a.fails(
            "AddWebClusterService",
            json!({"webclusterOid": oid, "webservice": service}),
            "InvalidArgument",
            reason,
        );
        assert!(e.contains(field), "{field}: {e}");
    }
    a.fails(
        "StopWebCluster",
        json!({"webclusterOid": oid}),
        "FailedPrecondition",
        "CANNOT_STOP",
    );
    let started = a.ok("StartWebCluster", json!({"webclusterOid": oid}));
    assert_eq!(started["change"]["status"], "CLUSTER_STATUS_STARTING");
    assert_eq!(
        started["change"]["who"]["principal"],
        "spiffe://switchyard/admin/admin"
    );
    assert!(
        started["change"]["changed"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            > 0
    );
    a.fails(
        "StartWebCluster",
        json!({"webclusterOid": oid}),
        "FailedPrecondition",
        "CANNOT_START",
    );
    a.fails(
        "DeleteWebCluster",
        json!({"webclusterOid": oid}),
        "FailedPrecondition",
        "NOT_STOPPED",
    );
    assert_eq!(
        a.ok("StopWebCluster", json!({"webclusterOid": oid}))["change"]["status"],
        "CLUSTER_STATUS_STOPPING"
    );
    a.fails(
        "RemoveNode",
        json!({"nodeOid": node_oid}),
        "FailedPrecondition",
        "IN_USE",
    );

    // Removing a membership and a service.
    a.ok(
        "RemoveWebClusterNode",
        json!({"webclusterOid": oid, "nodeOid": "node1"}),
    );
    a.fails(
        "GetWebClusterNode",
        json!({"webclusterOid": oid, "nodeOid": "node1"}),
        "NotFound",
        "NO_SUCH_OBJECT",
    );
    a.ok(
        "RemoveWebClusterService",
        json!({"webclusterOid": oid, "webserviceOid": st_oid}),
    );
    a.fails(
        "GetWebClusterServiceByPath",
        json!({"webclusterOid": oid, "path": "/"}),
        "NotFound",
        "NO_SUCH_OBJECT",
    );

    // A STOPPED cluster is deleted; its name is free again (that its memberships and services go
    // with it is checked in the store: deleting_a_cluster_leaves_no_row_of_it).
    let c2 = a.ok(
        "CreateWebCluster",
        json!({"webcluster": {"name": "cluster2", "tcpPort": 8081}}),
    )["webcluster"]["oid"]
        .as_str()
        .unwrap()
        .to_owned();
    a.ok(
        "AddWebClusterNode",
        json!({"webclusterOid": c2, "nodeOid": "node1"}),
    );
    a.ok(
        "AddWebClusterService",
        json!({"webclusterOid": c2, "webservice": {"path": "/", "nodeinfo": {}}}),
    );
    a.ok("DeleteWebCluster", json!({"webclusterOid": c2}));
    a.fails(
        "GetWebCluster",
        json!({"webclusterOid": c2}),
        "NotFound",
        "NO_SUCH_OBJECT",
    );
    let c3 = a.ok(
        "CreateWebCluster",
        json!({"webcluster": {"name": "cluster2", "tcpPort": 8081}}),
    )["webcluster"]["oid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(c3, c2);

    // Router cluster life cycle.
    let r = a.ok(
        "CreateRouterCluster",
        json!({"routercluster": {"name": "router1"}}),
    )["routercluster"]["oid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        a.ok(
            "GetRouterClusterByName",
            json!({"routerclusterName": "router1"})
        )["routercluster"]["oid"],
        r.as_str()
    );
    assert_eq!(
        a.ok("ListRouterClusters", json!({"returnNames": true}))["items"],
        json!(["router1"])
    );
    a.ok("AddRouterClusterNode", json!({"routerclusterOid": r, "nodeOid": "node1", "config": {"softlimit": 1, "hardlimit": 2}}));
    assert_eq!(
        a.ok(
            "GetRouterClusterNode",
            json!({"routerclusterOid": r, "nodeOid": "node1"})
        )["node"]["hardlimit"],
        2
    );
    assert_eq!(
        a.ok(
            "ListRouterClusterNodes",
            json!({"routerclusterOid": r, "returnNames": true})
        )["items"],
        json!(["node1"])
    );
    let e = a.fails("AddRouterClusterNode", json!({"routerclusterOid": r, "nodeOid": "node1", "config": {"softlimit": 3, "hardlimit": 2}}), "InvalidArgument", "INVALID_ARGUMENT");
    assert!(e.contains("config.softlimit"), "{e}");
    let g = a.ok(
        "AddRouterClusterWorkerGroup",
        json!({"routerclusterOid": r, "workergroup": {"name": "mygroup1", "scale": 4}}),
    )["workergroup"]
        .clone();
    assert_eq!(g["scale"], 4);
    assert_eq!(g["realms"], json!(["realm1"]));
    assert_eq!(g["portRange"], json!({"start": 10000, "end": 10100}));
    let g_oid = g["oid"].as_str().unwrap().to_owned();
    let d = a.ok(
        "AddRouterClusterWorkerGroup",
        json!({"routerclusterOid": r, "workergroup": {}}),
    )["workergroup"]
        .clone();
    assert_eq!(
        d["name"].as_str().unwrap(),
        format!("cwg_{}", &d["oid"].as_str().unwrap()[..8])
    );
    a.fails(
        "AddRouterClusterWorkerGroup",
        json!({"routerclusterOid": r, "workergroup": {"name": "mygroup1"}}),
        "AlreadyExists",
        "ALREADY_EXISTS",
    );
    let e = a.fails(
        "AddRouterClusterWorkerGroup",
        json!({"routerclusterOid": r, "workergroup": {"name": "big", "scale": 129}}),
        "InvalidArgument",
        "INVALID_ARGUMENT",
    );
    assert!(e.contains("workergroup.scale"), "{e}");
    assert_eq!(
        a.ok(
            "GetRouterClusterWorkerGroup",
            json!({"routerclusterOid": r, "workergroupOid": g_oid})
        )["workergroup"]["name"],
        "mygroup1"
    );
    assert_eq!(
        a.ok(
            "GetRouterClusterWorkerGroupByName",
            json!({"routerclusterName": "router1", "workergroupName": "mygroup1"})
        )["workergroup"]["oid"],
        g_oid.as_str()
    );
    assert_eq!(
        a.ok(
            "ListRouterClusterWorkerGroups",
            json!({"routerclusterOid": r, "filterByStatus": "CLUSTER_STATUS_STOPPED"})
        )["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    a.ok(
        "RemoveRouterClusterWorkerGroup",
        json!({"routerclusterOid": r, "workergroupOid": d["oid"]}),
    );
    a.ok("StartRouterCluster", json!({"routerclusterOid": r}));
    a.fails(
        "StartRouterCluster",
        json!({"routerclusterOid": r}),
        "FailedPrecondition",
        "CANNOT_START",
    );
    a.fails(
        "DeleteRouterCluster",
        json!({"routerclusterOid": r}),
        "FailedPrecondition",
        "NOT_STOPPED",
    );
    // Groups follow their cluster's status (whatever the monitor has made of it by now).
    let now =
        a.ok("GetRouterCluster", json!({"routerclusterOid": r}))["routercluster"]["status"].clone();
    assert_ne!(now, "CLUSTER_STATUS_STOPPED");
    assert_eq!(
        a.ok(
            "ListRouterClusterWorkerGroups",
            json!({"routerclusterOid": r, "filterByStatus": now, "returnNames": true})
        )["items"],
        json!(["mygroup1"])
    );
    assert_eq!(
        a.ok(
            "ListRouterClusterWorkerGroups",
            json!({"routerclusterOid": r, "filterByStatus": "CLUSTER_STATUS_STOPPED"})
        ),
        json!({})
    );
    a.ok("StopRouterCluster", json!({"routerclusterOid": r}));
    a.fails(
        "StopRouterCluster",
        json!({"routerclusterOid": r}),
        "FailedPrecondition",
        "CANNOT_STOP",
    );
    a.ok(
        "RemoveRouterClusterNode",
        json!({"routerclusterOid": r, "nodeOid": "node1"}),
    );
    let r2 = a.ok(
        "CreateRouterCluster",
        json!({"routercluster": {"name": "router2"}}),
    )["routercluster"]["oid"]
        .as_str()
        .unwrap()
        .to_owned();
    a.ok(
        "AddRouterClusterWorkerGroup",
        json!({"routerclusterOid": r2, "workergroup": {"name": "grp"}}),
    );
    // Worker ids are `<group>_<n>` on every node: a group name taken by another cluster is
    // refused, and free again once its cluster is gone.
    let e = a.fails(
        "AddRouterClusterWorkerGroup",
        json!({"routerclusterOid": r2, "workergroup": {"name": "mygroup1"}}),
        "AlreadyExists",
        "ALREADY_EXISTS",
    );
    assert!(e.contains("another router cluster"), "{e}");
    a.ok("DeleteRouterCluster", json!({"routerclusterOid": r2}));
    let r3 = a.ok(
        "CreateRouterCluster",
        json!({"routercluster": {"name": "router3"}}),
    )["routercluster"]["oid"]
        .as_str()
        .unwrap()
        .to_owned();
    a.ok(
        "AddRouterClusterWorkerGroup",
        json!({"routerclusterOid": r3, "workergroup": {"name": "grp"}}),
    );
    a.fails(
        "GetRouterClusterWorkerGroupByName",
        json!({"routerclusterName": "router2", "workergroupName": "grp"}),
        "NotFound",
        "NO_SUCH_OBJECT",
    );
}

#[test]
fn python_stubs_drive_both_life_cycles() {
    let stubs = common::python_stubs();
    let pki = Pki::new(&["node1"]);
    let data = tempfile::tempdir().unwrap();
    let master = Proc::master(&pki, data.path());
    let _agent = Proc::agent(&pki, "node1", master.addr);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(wait_online(&pki, master.addr, "node1"));
    // The started cluster's monitor really listens: on a free loopback port.
    let free_port = common::free_port();
    let out = Command::new(tool("python"))
        .arg(repo().join("tests/python/lifecycle.py"))
        .arg(stubs.path())
        .arg(&pki.path)
        .arg(master.addr.to_string())
        .arg(free_port.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lifecycle.py failed:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(stdout(&out).trim(), "ok");
}

#[tokio::test]
async fn watch_delivers_a_scripted_sequence_in_order() {
    let pki = Pki::new(&["node1"]);
    let data = tempfile::tempdir().unwrap();
    let master = Proc::master(&pki, data.path());
    let ch = channel(&pki, "admin", master.addr).await;
    let mut events = EventServiceClient::new(ch.clone());
    // The scripted sequence's own types (monitors add worker and status events in between).
    let scripted = vec![
        EventType::OnNodeReady as i32,
        EventType::OnWebclusterCreated as i32,
        EventType::OnWebclusterNodeAdded as i32,
        EventType::OnWebserviceAdded as i32,
        EventType::OnWebclusterStarting as i32,
        EventType::OnWebclusterStopping as i32,
        EventType::OnWebserviceRemoved as i32,
        EventType::OnWebclusterNodeRemoved as i32,
    ];
    let mut all = events
        .watch(pb::WatchRequest {
            types: scripted,
            oids: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut only_started = events
        .watch(pb::WatchRequest {
            types: vec![EventType::OnWebclusterStarting as i32],
            oids: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let _agent = Proc::agent(&pki, "node1", master.addr);
    wait_online(&pki, master.addr, "node1").await;

    let mut web = WebClusterServiceClient::new(ch);
    let c = web
        .create_web_cluster(pb::CreateWebClusterRequest {
            webcluster: Some(pb::WebCluster {
                name: "evt".into(),
                // Started below: its monitor really listens, so on a free loopback port.
                tcp_port: u32::from(common::free_port()),
                tcp_interface: Some("127.0.0.1".into()),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .webcluster
        .unwrap();
    web.add_web_cluster_node(pb::AddWebClusterNodeRequest {
        webcluster_oid: c.oid.clone(),
        node_oid: "node1".into(),
        config: None,
    })
    .await
    .unwrap();
    let svc = pb::WebService {
        path: "/".into(),
        service: Some(pb::web_service::Service::Nodeinfo(Default::default())),
        ..Default::default()
    };
    let s = web
        .add_web_cluster_service(pb::AddWebClusterServiceRequest {
            webcluster_oid: c.oid.clone(),
            webservice: Some(svc),
        })
        .await
        .unwrap()
        .into_inner()
        .webservice
        .unwrap();
    web.start_web_cluster(pb::StartWebClusterRequest {
        webcluster_oid: c.oid.clone(),
    })
    .await
    .unwrap();
    web.stop_web_cluster(pb::StopWebClusterRequest {
        webcluster_oid: c.oid.clone(),
    })
    .await
    .unwrap();
    web.remove_web_cluster_service(pb::RemoveWebClusterServiceRequest {
        webcluster_oid: c.oid.clone(),
        webservice_oid: s.oid.clone(),
    })
    .await
    .unwrap();
    web.remove_web_cluster_node(pb::RemoveWebClusterNodeRequest {
        webcluster_oid: c.oid.clone(),
        node_oid: "node1".into(),
    })
    .await
    .unwrap();

    let want = [
        EventType::OnNodeReady,
        EventType::OnWebclusterCreated,
        EventType::OnWebclusterNodeAdded,
        EventType::OnWebserviceAdded,
        EventType::OnWebclusterStarting,
        EventType::OnWebclusterStopping,
        EventType::OnWebserviceRemoved,
        EventType::OnWebclusterNodeRemoved,
    ];
    let mut got = Vec::new();
    let mut last_seq = 0;
    while got.len() < want.len() {
        let e = tokio::time::timeout(Duration::from_secs(10), all.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .event
            .unwrap();
        assert!(e.seq > last_seq, "sequence numbers increase");
        last_seq = e.seq;
        got.push(EventType::try_from(e.r#type).unwrap());
        if e.r#type == EventType::OnWebclusterCreated as i32 {
            assert!(
                matches!(e.object, Some(pb::event::Object::Webcluster(ref w)) if w.name == "evt")
            );
            assert_eq!(e.who.unwrap().principal, "spiffe://switchyard/admin/admin");
        }
    }
    assert_eq!(got, want);
    let e = tokio::time::timeout(Duration::from_secs(10), only_started.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .event
        .unwrap();
    assert_eq!(e.r#type, EventType::OnWebclusterStarting as i32);
    assert_eq!(e.oid, c.oid);

    // A filter by oid; a bad filter is INVALID_ARGUMENT.
    let e = events
        .watch(pb::WatchRequest {
            types: vec![],
            oids: vec!["nope".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = events
        .watch(pb::WatchRequest {
            types: vec![999],
            oids: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_restarted_master_has_everything_statuses_included() {
    let pki = Pki::new(&["node1"]);
    let data = tempfile::tempdir().unwrap();
    let (oid, rc_oid) = {
        let master = Proc::master(&pki, data.path());
        let _agent = Proc::agent(&pki, "node1", master.addr);
        wait_online(&pki, master.addr, "node1").await;
        let a = Admin {
            tls: pki.grpcurl_tls(Some("admin")),
            addr: master.addr.to_string(),
        };
        let oid = a.ok(
            "CreateWebCluster",
            json!({"webcluster": {"name": "keep", "tcpPort": 8080}}),
        )["webcluster"]["oid"]
            .as_str()
            .unwrap()
            .to_owned();
        a.ok("AddWebClusterNode", json!({"webclusterOid": oid, "nodeOid": "node1", "config": {"parallel": 3, "standby": true}}));
        a.ok(
            "AddWebClusterService",
            json!({"webclusterOid": oid, "webservice": {"path": "/", "json": {"value": 42}}}),
        );
        a.ok("StartWebCluster", json!({"webclusterOid": oid}));
        // Let the monitor judge it (its only member is a standby: nothing can run → ERROR).
        common::eventually("the monitor's verdict", Duration::from_secs(10), || {
            let c = a.ok("GetWebCluster", json!({"webclusterOid": oid}))["webcluster"].clone();
            (c["status"] == "CLUSTER_STATUS_ERROR").then_some(())
        });
        let rc = a.ok(
            "CreateRouterCluster",
            json!({"routercluster": {"name": "keeprc"}}),
        )["routercluster"]["oid"]
            .as_str()
            .unwrap()
            .to_owned();
        a.ok(
            "AddRouterClusterWorkerGroup",
            json!({"routerclusterOid": rc, "workergroup": {"name": "grp1", "scale": 3}}),
        );
        (oid, rc)
        // the master is killed here (SIGKILL on drop)
    };
    let master = Proc::master(&pki, data.path());
    let a = Admin {
        tls: pki.grpcurl_tls(Some("admin")),
        addr: master.addr.to_string(),
    };
    let c = &a.ok("GetWebClusterByName", json!({"webclusterName": "keep"}))["webcluster"];
    assert_eq!(c["oid"], oid.as_str());
    assert_eq!(
        c["status"], "CLUSTER_STATUS_ERROR",
        "statuses survive a restart"
    );
    assert!(
        c["statusReason"]
            .as_str()
            .unwrap()
            .contains("no active member"),
        "a standby-only cluster says why it cannot run: {c}"
    );
    let m = &a.ok(
        "GetWebClusterNode",
        json!({"webclusterOid": oid, "nodeOid": "node1"}),
    )["node"];
    assert_eq!(
        (m["parallel"].clone(), m["standby"].clone()),
        (json!(3), json!(true))
    );
    assert_eq!(
        a.ok(
            "GetWebClusterServiceByPath",
            json!({"webclusterOid": oid, "path": "/"})
        )["webservice"]["json"]["value"],
        42.0
    );
    assert_eq!(
        a.ok(
            "GetRouterClusterWorkerGroupByName",
            json!({"routerclusterName": "keeprc", "workergroupName": "grp1"})
        )["workergroup"]["scale"],
        3
    );
    assert_eq!(
        a.ok("ListRouterClusters", json!({}))["items"],
        json!([rc_oid])
    );
    // The node is known (offline until its agent heartbeats again).
    assert_eq!(
        a.ok("GetNodeByName", json!({"authid": "node1"}))["node"]["status"],
        "NODE_STATUS_OFFLINE"
    );
}

#[tokio::test]
async fn kill_9_during_64_concurrent_creates_loses_no_acknowledged_write() {
    let pki = Pki::new(&[]);
    let data = tempfile::tempdir().unwrap();
    let master = Proc::master(&pki, data.path());
    let ch = channel(&pki, "admin", master.addr).await;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for client in 0..64 {
        let mut web = WebClusterServiceClient::new(ch.clone());
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("c{client}_{i}");
                let req = pb::CreateWebClusterRequest {
                    webcluster: Some(pb::WebCluster {
                        name: name.clone(),
                        tcp_port: 8080,
                        ..Default::default()
                    }),
                };
                match web.create_web_cluster(req).await {
                    Ok(_) => acked.lock().unwrap().push(name),
                    Err(_) => return,
                }
            }
        }));
    }
    eventually_async(
        "some creates to be acknowledged",
        Duration::from_secs(30),
        || {
            let n = acked.lock().unwrap().len();
            async move { (n >= 500).then_some(()) }
        },
    )
    .await;
    assert!(
        Command::new("kill")
            .args(["-KILL", &master.pid().to_string()])
            .status()
            .unwrap()
            .success()
    );
    for t in tasks {
        t.await.unwrap();
    }
    drop(master);
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();

    let master = Proc::master(&pki, data.path());
    let mut web = WebClusterServiceClient::new(channel(&pki, "admin", master.addr).await);
    let names: BTreeSet<String> = web
        .list_web_clusters(pb::ListWebClustersRequest { return_names: true })
        .await
        .unwrap()
        .into_inner()
        .items
        .into_iter()
        .collect();
    let oids = web
        .list_web_clusters(pb::ListWebClustersRequest {
            return_names: false,
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    let missing: Vec<_> = acked.difference(&names).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged creates lost: {missing:?}",
        missing.len()
    );
    println!(
        "acknowledged {} creates before kill -9; {} present after restart",
        acked.len(),
        names.len()
    );
    // Nothing half-written: every cluster is reachable by its name index and vice versa.
    assert_eq!(oids.len(), names.len());
    for name in names.iter().take(100) {
        let c = web
            .get_web_cluster_by_name(pb::GetWebClusterByNameRequest {
                webcluster_name: name.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .webcluster
            .unwrap();
        assert_eq!(&c.name, name);
    }
}

#[tokio::test]
async fn heartbeats_register_nodes_and_are_bound_to_the_certificate() {
    let pki = Pki::new(&["node1", "node2"]);
    let data = tempfile::tempdir().unwrap();
    let master = Proc::master(&pki, data.path());

    // node1's certificate heartbeating for node2: PERMISSION_DENIED.
    let mut as_node1 = NodeServiceClient::new(channel(&pki, "node1", master.addr).await);
    let beat = pb::HeartbeatRequest {
        authid: "node2".into(),
        endpoint: "127.0.0.1:1".into(),
        ..Default::default()
    };
    let e = as_node1
        .heartbeat(tokio_stream::iter(vec![beat]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert_eq!(
        switchyard::error::reason_of(&e).as_deref(),
        Some("NOT_AUTHORIZED")
    );
    // An admin may not heartbeat at all (node-facing only).
    let mut as_admin = NodeServiceClient::new(channel(&pki, "admin", master.addr).await);
    let beat = pb::HeartbeatRequest {
        authid: "node1".into(),
        ..Default::default()
    };
    let e = as_admin
        .heartbeat(tokio_stream::iter(vec![beat]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // A real agent registers and stays online; killing it makes it offline at once.
    let agent = Proc::agent(&pki, "node2", master.addr);
    let oid = wait_online(&pki, master.addr, "node2").await;
    assert!(
        Command::new("kill")
            .args(["-KILL", &agent.pid().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let started = std::time::Instant::now();
    eventually_async("node2 to be offline", Duration::from_secs(5), || {
        let mut nodes = as_admin.clone();
        let oid = oid.clone();
        async move {
            let n = nodes
                .get_node(pb::GetNodeRequest { node_oid: oid })
                .await
                .ok()?
                .into_inner()
                .node?;
            (n.status == NodeStatus::Offline as i32).then_some(())
        }
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "offline within the grace period: {:?}",
        started.elapsed()
    );
    // The same node returning keeps its oid.
    let _agent = Proc::agent(&pki, "node2", master.addr);
    assert_eq!(wait_online(&pki, master.addr, "node2").await, oid);
}

/// The keys of `store` under `prefix`, readable.
async fn keys_under(store: &dyn Store, prefix: &[u8]) -> Vec<String> {
    store
        .scan(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
        .collect()
}

/// Every row of `store` (the state; not the event history) whose key or value contains `needle`.
async fn rows_naming(store: &dyn Store, needle: &str) -> Vec<String> {
    let hit = |b: &[u8]| b.windows(needle.len()).any(|w| w == needle.as_bytes());
    store
        .scan(b"")
        .await
        .unwrap()
        .into_iter()
        // The event history (`ev/`) names deleted objects by design: it is not their state.
        .filter(|(k, _)| !k.starts_with(keys::EVENTS))
        .filter(|(k, v)| hit(k) || hit(v))
        .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
        .collect()
}

/// A web cluster named `name` with `node` as member and two services; (oid, service oids).
async fn web_cluster_with_rows(
    web: &mut WebClusterServiceClient<tonic::transport::Channel>,
    name: &str,
    node: &str,
) -> (String, Vec<String>) {
    let oid = common::create_web_cluster(web, name, 8080).await;
    web.add_web_cluster_node(pb::AddWebClusterNodeRequest {
        webcluster_oid: oid.clone(),
        node_oid: node.into(),
        config: None,
    })
    .await
    .unwrap();
    let mut services = Vec::new();
    for path in ["/", "/info"] {
        let s = web
            .add_web_cluster_service(pb::AddWebClusterServiceRequest {
                webcluster_oid: oid.clone(),
                webservice: Some(pb::WebService {
                    path: path.into(),
                    service: Some(pb::web_service::Service::Nodeinfo(Default::default())),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .webservice
            .unwrap();
        services.push(s.oid);
    }
    (oid, services)
}

/// A router cluster named `name` with `node` as member and one worker group, started and left
/// RUNNING (so its monitor has stored placements and the group's link secret); (oid, group oid).
async fn running_router_cluster(
    router: &mut RouterClusterServiceClient<tonic::transport::Channel>,
    name: &str,
    node: &str,
) -> (String, String) {
    let oid = common::create_router_cluster(router, name).await;
    common::add_router_node(router, &oid, node, None)
        .await
        .unwrap();
    let start = u32::from(common::free_port());
    let group = router
        .add_router_cluster_worker_group(pb::AddRouterClusterWorkerGroupRequest {
            routercluster_oid: oid.clone(),
            workergroup: Some(pb::RouterWorkerGroup {
                name: format!("{name}_grp"),
                port_range: Some(pb::PortRange {
                    start,
                    end: start + 20,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .workergroup
        .unwrap()
        .oid;
    router
        .start_router_cluster(pb::StartRouterClusterRequest {
            routercluster_oid: oid.clone(),
        })
        .await
        .unwrap();
    wait_router(router, &oid, pb::ClusterStatus::Running).await;
    (oid, group)
}

async fn wait_router(
    router: &RouterClusterServiceClient<tonic::transport::Channel>,
    oid: &str,
    status: pb::ClusterStatus,
) {
    eventually_async(
        &format!("router cluster {oid} {status:?}"),
        Duration::from_secs(30),
        || {
            let mut router = router.clone();
            let oid = oid.to_owned();
            async move {
                let c = router
                    .get_router_cluster(pb::GetRouterClusterRequest {
                        routercluster_oid: oid,
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .routercluster?;
                (c.status == status as i32).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn deleting_a_cluster_leaves_no_row_of_it() {
    let pki = Pki::new(&["node1", "node2"]);
    let data = tempfile::tempdir().unwrap();
    let master = Proc::master(&pki, data.path());
    let _agent1 = Proc::agent(&pki, "node1", master.addr);
    let agent2 = Proc::agent(&pki, "node2", master.addr);
    wait_online(&pki, master.addr, "node1").await;
    let node2 = wait_online(&pki, master.addr, "node2").await;
    let ch = channel(&pki, "admin", master.addr).await;
    let mut web = WebClusterServiceClient::new(ch.clone());
    let mut router = RouterClusterServiceClient::new(ch.clone());

    // The clusters deleted below are node2's only memberships; the kept ones are on node1.
    let (gone, gone_services) = web_cluster_with_rows(&mut web, "gone", "node2").await;
    let (kept, kept_services) = web_cluster_with_rows(&mut web, "kept", "node1").await;
    let (rgone, rgone_group) = running_router_cluster(&mut router, "rgone", "node2").await;
    let (rkept, rkept_group) = running_router_cluster(&mut router, "rkept", "node1").await;
    router
        .stop_router_cluster(pb::StopRouterClusterRequest {
            routercluster_oid: rgone.clone(),
        })
        .await
        .unwrap();
    wait_router(&router, &rgone, pb::ClusterStatus::Stopped).await;
    web.delete_web_cluster(pb::DeleteWebClusterRequest {
        webcluster_oid: gone.clone(),
    })
    .await
    .unwrap();
    router
        .delete_router_cluster(pb::DeleteRouterClusterRequest {
            routercluster_oid: rgone.clone(),
        })
        .await
        .unwrap();
    // What a user sees of a left-over membership: the node could not be removed (IN_USE).
    drop(agent2);
    NodeServiceClient::new(ch)
        .remove_node(pb::RemoveNodeRequest {
            node_oid: node2.clone(),
        })
        .await
        .expect("node2 is no cluster's member any more");
    drop(master);

    // The master's own data, read with its own store once it is gone.
    let (store, _etcd) = common::etcd::stopped_masters_store(data.path()).await;
    let store = &*store;
    let web_tables = |oid: &str| {
        [
            keys::webcluster(oid),
            keys::webcluster_nodes(oid),
            keys::webservices(oid),
            keys::webservice_path(oid, ""),
        ]
    };
    let router_tables = |oid: &str| {
        [
            keys::routercluster(oid),
            keys::routercluster_nodes(oid),
            keys::workergroups(oid),
            keys::workergroup_name(oid, ""),
            keys::placements(oid),
            keys::link_secrets(oid),
        ]
    };
    for prefix in web_tables(&gone).into_iter().chain(router_tables(&rgone)) {
        assert_eq!(
            keys_under(store, &prefix).await,
            Vec::<String>::new(),
            "rows left under {}",
            String::from_utf8_lossy(&prefix)
        );
    }
    assert_eq!(
        store
            .get(&keys::webcluster_node(&gone, &node2))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .get(&keys::routercluster_node(&rgone, &node2))
            .await
            .unwrap(),
        None
    );
    for oid in gone_services.iter().chain([&gone, &rgone, &rgone_group]) {
        assert_eq!(
            rows_naming(store, oid).await,
            Vec::<String>::new(),
            "rows of {oid}"
        );
    }
    for name_key in [
        keys::webcluster_name("gone"),
        keys::routercluster_name("rgone"),
        keys::workergroup_global("rgone_grp"),
    ] {
        assert_eq!(store.get(&name_key).await.unwrap(), None);
    }

    // The kept clusters have every row, in every table (so the scans above can see such rows).
    for prefix in web_tables(&kept).into_iter().chain(router_tables(&rkept)) {
        assert!(
            !keys_under(store, &prefix).await.is_empty(),
            "the kept cluster has no row under {}",
            String::from_utf8_lossy(&prefix)
        );
    }
    for s in &kept_services {
        assert!(
            store
                .get(&keys::webservice(&kept, s))
                .await
                .unwrap()
                .is_some()
        );
    }
    assert!(
        store
            .get(&keys::workergroup(&rkept, &rkept_group))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .get(&keys::workergroup_global("rkept_grp"))
            .await
            .unwrap()
            .is_some()
    );
}
