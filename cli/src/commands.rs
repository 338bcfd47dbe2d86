//! One function per command. Objects are named; names are resolved to oids here.

use std::io::Write;

use switchyard::pb::agent::v1::{
    self as apb, native_process_service_client::NativeProcessServiceClient,
};
use switchyard::pb::master::v1::{
    self as pb, event_service_client::EventServiceClient, node_service_client::NodeServiceClient,
    router_cluster_service_client::RouterClusterServiceClient,
    web_cluster_service_client::WebClusterServiceClient,
};
use tonic::transport::Channel;

use crate::Failure;
use crate::args::{
    AddService, Cli, Command, Format, ManholeCmd, NodeCmd, RouterCmd, ServiceType, WebCmd,
    WebCreate,
};
use crate::output::{
    Table, enum_name, mib, print_fields, print_json, print_json_line, print_json_list, ts,
};

type R = Result<(), Failure>;

/// Runs the command.
pub async fn run(cli: Cli) -> R {
    let channel = crate::connect::channel(&cli).await?;
    let f = cli.output;
    match cli.command {
        Command::Node(c) => node(channel, f, c).await,
        Command::Webcluster(c) => web(channel, f, c).await,
        Command::Routercluster(c) => router(channel, f, c).await,
        Command::Masters => masters(channel, f).await,
        Command::Watch { types } => watch(channel, f, types).await,
        Command::Stats {
            node,
            process,
            interval,
            count,
        } => stats(channel, f, &node, &process, interval, count).await,
        Command::Manhole(c) => manhole(channel, f, c).await,
        Command::Token(c) => crate::tokens::token(channel, f, c).await,
    }
}

fn status_name(s: i32) -> String {
    pb::ClusterStatus::try_from(s)
        .map(|s| enum_name(s.as_str_name(), "CLUSTER_STATUS_"))
        .unwrap_or_else(|_| s.to_string())
}

fn node_status(s: i32) -> String {
    pb::NodeStatus::try_from(s)
        .map(|s| enum_name(s.as_str_name(), "NODE_STATUS_"))
        .unwrap_or_else(|_| s.to_string())
}

fn worker_status(s: i32) -> String {
    apb::WorkerStatus::try_from(s)
        .map(|s| enum_name(s.as_str_name(), "WORKER_STATUS_"))
        .unwrap_or_else(|_| s.to_string())
}

// ---- nodes ----

async fn node(ch: Channel, f: Format, c: NodeCmd) -> R {
    let mut api = NodeServiceClient::new(ch);
    match c {
        NodeCmd::List => {
            let oids = api
                .list_nodes(pb::ListNodesRequest::default())
                .await?
                .into_inner()
                .items;
            let mut nodes = Vec::new();
            for oid in oids {
                if let Some(n) = api
                    .get_node(pb::GetNodeRequest { node_oid: oid })
                    .await?
                    .into_inner()
                    .node
                {
                    nodes.push(n);
                }
            }
            nodes.sort_by(|a, b| a.authid.cmp(&b.authid));
            if f == Format::Json {
                return print_json_list("switchyard.master.v1.Node", &nodes);
            }
            let mut t = Table::new(&[
                "NAME",
                "STATUS",
                "ENDPOINT",
                "WORKERS",
                "LAST HEARTBEAT",
                "OID",
            ]);
            for n in &nodes {
                t.row(vec![
                    n.authid.clone(),
                    node_status(n.status),
                    n.endpoint.clone(),
                    n.workers.to_string(),
                    ts(n.last_heartbeat.as_ref()),
                    n.oid.clone(),
                ]);
            }
            t.print();
            Ok(())
        }
        NodeCmd::Show { name } => {
            let n = api
                .get_node_by_name(pb::GetNodeByNameRequest { authid: name })
                .await?
                .into_inner()
                .node
                .unwrap_or_default();
            if f == Format::Json {
                return print_json("switchyard.master.v1.Node", &n);
            }
            print_fields(&[
                ("name", n.authid.clone()),
                ("oid", n.oid.clone()),
                ("status", node_status(n.status)),
                ("endpoint", n.endpoint.clone()),
                ("cluster ip", n.cluster_ip.clone()),
                ("cpus", n.cpu_count.to_string()),
                ("version", n.version.clone()),
                ("workers", n.workers.to_string()),
                ("registered", ts(n.registered.as_ref())),
                ("last heartbeat", ts(n.last_heartbeat.as_ref())),
            ]);
            Ok(())
        }
        NodeCmd::Remove { name } => {
            let node_oid = match looks_like_oid(&name) {
                true => name,
                false => {
                    api.get_node_by_name(pb::GetNodeByNameRequest { authid: name })
                        .await?
                        .into_inner()
                        .node
                        .unwrap_or_default()
                        .oid
                }
            };
            let n = api
                .remove_node(pb::RemoveNodeRequest { node_oid })
                .await?
                .into_inner()
                .node
                .unwrap_or_default();
            if f == Format::Json {
                return print_json("switchyard.master.v1.Node", &n);
            }
            println!(
                "removed node {} ({}); its certificates are revoked",
                n.authid, n.oid
            );
            Ok(())
        }
    }
}

/// Whether `s` has the shape of an oid (a hyphenated UUID).
fn looks_like_oid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

// ---- web clusters ----

async fn web_by_name(
    api: &mut WebClusterServiceClient<Channel>,
    name: &str,
) -> Result<pb::WebCluster, Failure> {
    Ok(api
        .get_web_cluster_by_name(pb::GetWebClusterByNameRequest {
            webcluster_name: name.to_owned(),
        })
        .await?
        .into_inner()
        .webcluster
        .unwrap_or_default())
}

fn print_web(f: Format, c: &pb::WebCluster) -> R {
    if f == Format::Json {
        return print_json("switchyard.master.v1.WebCluster", c);
    }
    print_fields(&[
        ("name", c.name.clone()),
        ("oid", c.oid.clone()),
        ("status", status_name(c.status)),
        ("reason", c.status_reason.clone()),
        ("tcp port", c.tcp_port.to_string()),
        (
            "tcp interface",
            c.tcp_interface.clone().unwrap_or_else(|| "*".into()),
        ),
        ("tls", c.tls_certificate.is_some().to_string()),
    ]);
    Ok(())
}

async fn web(ch: Channel, f: Format, c: WebCmd) -> R {
    let mut api = WebClusterServiceClient::new(ch.clone());
    match c {
        WebCmd::Create(args) => {
            let c = create_web(&mut api, args).await?;
            print_web(f, &c)
        }
        WebCmd::List => {
            let oids = api
                .list_web_clusters(pb::ListWebClustersRequest::default())
                .await?
                .into_inner()
                .items;
            let mut clusters = Vec::new();
            for oid in oids {
                clusters.push(
                    api.get_web_cluster(pb::GetWebClusterRequest {
                        webcluster_oid: oid,
                    })
                    .await?
                    .into_inner()
                    .webcluster
                    .unwrap_or_default(),
                );
            }
            clusters.sort_by(|a, b| a.name.cmp(&b.name));
            if f == Format::Json {
                return print_json_list("switchyard.master.v1.WebCluster", &clusters);
            }
            let mut t = Table::new(&["NAME", "STATUS", "PORT", "OID"]);
            for c in &clusters {
                t.row(vec![
                    c.name.clone(),
                    status_name(c.status),
                    c.tcp_port.to_string(),
                    c.oid.clone(),
                ]);
            }
            t.print();
            Ok(())
        }
        WebCmd::Show { name } => print_web(f, &web_by_name(&mut api, &name).await?),
        WebCmd::Start { name } => {
            let oid = web_by_name(&mut api, &name).await?.oid;
            let c = api
                .start_web_cluster(pb::StartWebClusterRequest {
                    webcluster_oid: oid,
                })
                .await?
                .into_inner()
                .change
                .unwrap_or_default();
            print_change(f, &c)
        }
        WebCmd::Stop { name } => {
            let oid = web_by_name(&mut api, &name).await?.oid;
            let c = api
                .stop_web_cluster(pb::StopWebClusterRequest {
                    webcluster_oid: oid,
                })
                .await?
                .into_inner()
                .change
                .unwrap_or_default();
            print_change(f, &c)
        }
        WebCmd::Delete { name } => {
            let oid = web_by_name(&mut api, &name).await?.oid;
            let c = api
                .delete_web_cluster(pb::DeleteWebClusterRequest {
                    webcluster_oid: oid,
                })
                .await?
                .into_inner()
                .webcluster
                .unwrap_or_default();
            print_web(f, &c)
        }
        WebCmd::AddNode {
            name,
            node,
            parallel,
            standby,
        } => {
            let oid = web_by_name(&mut api, &name).await?.oid;
            let m = api
                .add_web_cluster_node(pb::AddWebClusterNodeRequest {
                    webcluster_oid: oid,
                    node_oid: node,
                    config: Some(pb::WebClusterNodeConfig { parallel, standby }),
                })
                .await?
                .into_inner()
                .node
                .unwrap_or_default();
            print_membership(f, &[m])
        }
        WebCmd::RemoveNode { name, node } => {
            let oid = web_by_name(&mut api, &name).await?.oid;
            let m = api
                .remove_web_cluster_node(pb::RemoveWebClusterNodeRequest {
                    webcluster_oid: oid,
                    node_oid: node,
                })
                .await?
                .into_inner()
                .node
                .unwrap_or_default();
            print_membership(f, &[m])
        }
        WebCmd::Nodes { name } => {
            let oid = web_by_name(&mut api, &name).await?.oid;
            let nodes = api
                .list_web_cluster_nodes(pb::ListWebClusterNodesRequest {
                    webcluster_oid: oid.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .items;
            let mut members = Vec::new();
            for n in nodes {
                members.push(
                    api.get_web_cluster_node(pb::GetWebClusterNodeRequest {
                        webcluster_oid: oid.clone(),
                        node_oid: n,
                    })
                    .await?
                    .into_inner()
                    .node
                    .unwrap_or_default(),
                );
            }
            members.sort_by(|a, b| a.node_authid.cmp(&b.node_authid));
            print_membership(f, &members)
        }
        WebCmd::AddService(args) => {
            // The service's flags are checked before anything is asked of the master.
            let name = args.name.clone();
            let service = web_service(ch, args).await?;
            let oid = web_by_name(&mut api, &name).await?.oid;
            let s = api
                .add_web_cluster_service(pb::AddWebClusterServiceRequest {
                    webcluster_oid: oid,
                    webservice: Some(service),
                })
                .await?
                .into_inner()
                .webservice
                .unwrap_or_default();
            print_services(f, &[s])
        }
        WebCmd::RemoveService { name, path } => {
            let oid = web_by_name(&mut api, &name).await?.oid;
            let s = api
                .get_web_cluster_service_by_path(pb::GetWebClusterServiceByPathRequest {
                    webcluster_oid: oid.clone(),
                    path,
                })
                .await?
                .into_inner()
                .webservice
                .unwrap_or_default();
            let s = api
                .remove_web_cluster_service(pb::RemoveWebClusterServiceRequest {
                    webcluster_oid: oid,
                    webservice_oid: s.oid,
                })
                .await?
                .into_inner()
                .webservice
                .unwrap_or_default();
            print_services(f, &[s])
        }
        WebCmd::Services { name } => {
            let oid = web_by_name(&mut api, &name).await?.oid;
            let paths = api
                .list_web_cluster_services(pb::ListWebClusterServicesRequest {
                    webcluster_oid: oid.clone(),
                    prefix: String::new(),
                })
                .await?
                .into_inner()
                .services;
            let mut paths: Vec<&String> = paths.keys().collect();
            paths.sort();
            let mut services = Vec::new();
            for path in paths {
                services.push(
                    api.get_web_cluster_service_by_path(pb::GetWebClusterServiceByPathRequest {
                        webcluster_oid: oid.clone(),
                        path: path.clone(),
                    })
                    .await?
                    .into_inner()
                    .webservice
                    .unwrap_or_default(),
                );
            }
            print_services(f, &services)
        }
        WebCmd::Workers { name } => {
            let oid = web_by_name(&mut api, &name).await?.oid;
            let r = api
                .list_web_cluster_workers(pb::ListWebClusterWorkersRequest {
                    webcluster_oid: oid,
                    filter_online: false,
                })
                .await?
                .into_inner();
            if f == Format::Json {
                return print_json("switchyard.master.v1.ListWebClusterWorkersResponse", &r);
            }
            let mut t = Table::new(&["NODE", "WORKER", "PID", "STATUS"]);
            for w in &r.workers {
                t.row(vec![
                    w.node_authid.clone(),
                    w.worker_id.clone(),
                    w.pid.to_string(),
                    worker_status(w.status),
                ]);
            }
            t.print();
            Ok(())
        }
        WebCmd::Stat { name } => {
            let oid = web_by_name(&mut api, &name).await?.oid;
            let s = api
                .stat_web_cluster(pb::StatWebClusterRequest {
                    webcluster_oid: oid,
                })
                .await?
                .into_inner();
            if f == Format::Json {
                return print_json("switchyard.master.v1.StatWebClusterResponse", &s);
            }
            print_fields(&[
                ("status", status_name(s.status)),
                ("reason", s.status_reason.clone()),
                (
                    "workers",
                    format!("{}/{} running", s.running_workers, s.desired_workers),
                ),
                ("requests", s.total_requests.to_string()),
                ("cpu", format!("{:.1} %", s.total_cpu_percent)),
                ("memory", mib(s.total_resident)),
            ]);
            println!();
            worker_stats_table(&s.workers).print();
            Ok(())
        }
    }
}

fn worker_stats_table(workers: &[pb::WorkerStat]) -> Table {
    let mut t = Table::new(&[
        "NODE", "WORKER", "PID", "STATUS", "CPU %", "RSS", "REQUESTS",
    ]);
    for w in workers {
        let cw = w.worker.clone().unwrap_or_default();
        let st = w.stats.clone().unwrap_or_default();
        t.row(vec![
            cw.node_authid,
            cw.worker_id,
            cw.pid.to_string(),
            worker_status(cw.status),
            format!("{:.1}", st.cpu_percent),
            mib(st.resident),
            w.requests.to_string(),
        ]);
    }
    t
}

async fn create_web(
    api: &mut WebClusterServiceClient<Channel>,
    a: WebCreate,
) -> Result<pb::WebCluster, Failure> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map_err(|e| Failure::Config(format!("cannot read {}: {e}", p.display())))
    };
    let cluster = pb::WebCluster {
        name: a.name,
        label: a.label.unwrap_or_default(),
        tcp_port: a.tcp_port,
        tcp_interface: a.tcp_interface,
        tcp_shared: match (a.tcp_shared, a.no_tcp_shared) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        tls_key: a.tls_key.as_deref().map(read).transpose()?,
        tls_certificate: a.tls_cert.as_deref().map(read).transpose()?,
        http_hsts: a.http_hsts.then_some(true),
        ..Default::default()
    };
    Ok(api
        .create_web_cluster(pb::CreateWebClusterRequest {
            webcluster: Some(cluster),
        })
        .await?
        .into_inner()
        .webcluster
        .unwrap_or_default())
}

fn need<T>(value: Option<T>, flag: &str, kind: &str) -> Result<T, Failure> {
    value.ok_or_else(|| Failure::Config(format!("--type {kind} needs {flag}")))
}

async fn web_service(ch: Channel, a: AddService) -> Result<pb::WebService, Failure> {
    use pb::web_service::Service;
    let service = match a.kind {
        ServiceType::Static => Service::Static(apb::StaticService {
            directory: need(a.directory, "--directory", "static")?,
            options: None,
        }),
        ServiceType::Json => {
            let text = need(a.value, "--value", "json")?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Failure::Config(format!("--value is not JSON: {e}")))?;
            Service::Json(apb::JsonService {
                value: Some(to_value(v)),
                options: None,
            })
        }
        ServiceType::Redirect => Service::Redirect(apb::RedirectService {
            url: need(a.url, "--url", "redirect")?,
        }),
        ServiceType::Reverseproxy => Service::Reverseproxy(apb::ReverseProxyService {
            host: need(a.host, "--host", "reverseproxy")?,
            port: need(a.port, "--port", "reverseproxy")?,
            path: a.backend_path.unwrap_or_default(),
            ..Default::default()
        }),
        ServiceType::Nodeinfo => Service::Nodeinfo(apb::NodeInfoService {}),
        ServiceType::WebsocketReverseproxy => {
            let mut ws = apb::WebSocketReverseProxyService::default();
            if let (Some(rc), Some(group)) = (a.routercluster, a.workergroup) {
                let g = RouterClusterServiceClient::new(ch)
                    .get_router_cluster_worker_group_by_name(
                        pb::GetRouterClusterWorkerGroupByNameRequest {
                            routercluster_name: rc,
                            workergroup_name: group,
                        },
                    )
                    .await?
                    .into_inner()
                    .workergroup
                    .unwrap_or_default();
                ws.workergroup = Some(apb::WorkerGroupTarget {
                    routercluster_oid: g.cluster_oid,
                    workergroup_oid: g.oid,
                    path: a.backend_path.unwrap_or_default(),
                });
            } else {
                ws.backend = Some(apb::WebSocketBackend {
                    host: need(
                        a.host,
                        "--host (or --routercluster)",
                        "websocket-reverseproxy",
                    )?,
                    port: need(a.port, "--port", "websocket-reverseproxy")?,
                    path: a.backend_path.unwrap_or_default(),
                });
            }
            Service::WebsocketReverseproxy(ws)
        }
    };
    Ok(pb::WebService {
        path: a.path,
        service: Some(service),
        ..Default::default()
    })
}

fn to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

fn print_membership(f: Format, members: &[pb::WebClusterNode]) -> R {
    if f == Format::Json {
        return print_json_list("switchyard.master.v1.WebClusterNode", members);
    }
    let mut t = Table::new(&["NODE", "PARALLEL", "STANDBY"]);
    for m in members {
        t.row(vec![
            m.node_authid.clone(),
            m.parallel.to_string(),
            m.standby.to_string(),
        ]);
    }
    t.print();
    Ok(())
}

fn print_services(f: Format, services: &[pb::WebService]) -> R {
    use pb::web_service::Service;
    if f == Format::Json {
        return print_json_list("switchyard.master.v1.WebService", services);
    }
    let mut t = Table::new(&["PATH", "TYPE", "TARGET"]);
    for s in services {
        let (kind, target) = match &s.service {
            Some(Service::Static(x)) => ("static", x.directory.clone()),
            Some(Service::Json(_)) => ("json", "-".to_owned()),
            Some(Service::Redirect(x)) => ("redirect", x.url.clone()),
            Some(Service::Reverseproxy(x)) => {
                ("reverseproxy", format!("{}:{}{}", x.host, x.port, x.path))
            }
            Some(Service::Nodeinfo(_)) => ("nodeinfo", "-".to_owned()),
            Some(Service::WebsocketReverseproxy(x)) => (
                "websocket_reverseproxy",
                x.backend
                    .as_ref()
                    .map(|b| format!("{}:{}{}", b.host, b.port, b.path))
                    .or_else(|| {
                        x.workergroup
                            .as_ref()
                            .map(|g| format!("workergroup {}", g.workergroup_oid))
                    })
                    .unwrap_or_default(),
            ),
            None => ("?", String::new()),
        };
        t.row(vec![s.path.clone(), kind.to_owned(), target]);
    }
    t.print();
    Ok(())
}

fn print_change(f: Format, c: &pb::StatusChange) -> R {
    if f == Format::Json {
        return print_json("switchyard.master.v1.StatusChange", c);
    }
    print_fields(&[("oid", c.oid.clone()), ("status", status_name(c.status))]);
    Ok(())
}

// ---- router clusters ----

async fn router_by_name(
    api: &mut RouterClusterServiceClient<Channel>,
    name: &str,
) -> Result<pb::RouterCluster, Failure> {
    Ok(api
        .get_router_cluster_by_name(pb::GetRouterClusterByNameRequest {
            routercluster_name: name.to_owned(),
        })
        .await?
        .into_inner()
        .routercluster
        .unwrap_or_default())
}

fn print_router(f: Format, c: &pb::RouterCluster) -> R {
    if f == Format::Json {
        return print_json("switchyard.master.v1.RouterCluster", c);
    }
    print_fields(&[
        ("name", c.name.clone()),
        ("oid", c.oid.clone()),
        ("status", status_name(c.status)),
        ("reason", c.status_reason.clone()),
    ]);
    Ok(())
}

async fn router(ch: Channel, f: Format, c: RouterCmd) -> R {
    let mut api = RouterClusterServiceClient::new(ch);
    match c {
        RouterCmd::Create { name, label } => {
            let c = api
                .create_router_cluster(pb::CreateRouterClusterRequest {
                    routercluster: Some(pb::RouterCluster {
                        name,
                        label: label.unwrap_or_default(),
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner()
                .routercluster
                .unwrap_or_default();
            print_router(f, &c)
        }
        RouterCmd::List => {
            let oids = api
                .list_router_clusters(pb::ListRouterClustersRequest::default())
                .await?
                .into_inner()
                .items;
            let mut clusters = Vec::new();
            for oid in oids {
                clusters.push(
                    api.get_router_cluster(pb::GetRouterClusterRequest {
                        routercluster_oid: oid,
                    })
                    .await?
                    .into_inner()
                    .routercluster
                    .unwrap_or_default(),
                );
            }
            clusters.sort_by(|a, b| a.name.cmp(&b.name));
            if f == Format::Json {
                return print_json_list("switchyard.master.v1.RouterCluster", &clusters);
            }
            let mut t = Table::new(&["NAME", "STATUS", "OID"]);
            for c in &clusters {
                t.row(vec![c.name.clone(), status_name(c.status), c.oid.clone()]);
            }
            t.print();
            Ok(())
        }
        RouterCmd::Show { name } => print_router(f, &router_by_name(&mut api, &name).await?),
        RouterCmd::Start { name } => {
            let oid = router_by_name(&mut api, &name).await?.oid;
            let c = api
                .start_router_cluster(pb::StartRouterClusterRequest {
                    routercluster_oid: oid,
                })
                .await?
                .into_inner()
                .change
                .unwrap_or_default();
            print_change(f, &c)
        }
        RouterCmd::Stop { name } => {
            let oid = router_by_name(&mut api, &name).await?.oid;
            let c = api
                .stop_router_cluster(pb::StopRouterClusterRequest {
                    routercluster_oid: oid,
                })
                .await?
                .into_inner()
                .change
                .unwrap_or_default();
            print_change(f, &c)
        }
        RouterCmd::Delete { name } => {
            let oid = router_by_name(&mut api, &name).await?.oid;
            let c = api
                .delete_router_cluster(pb::DeleteRouterClusterRequest {
                    routercluster_oid: oid,
                })
                .await?
                .into_inner()
                .routercluster
                .unwrap_or_default();
            print_router(f, &c)
        }
        RouterCmd::AddNode {
            name,
            node,
            softlimit,
            hardlimit,
        } => {
            let oid = router_by_name(&mut api, &name).await?.oid;
            let m = api
                .add_router_cluster_node(pb::AddRouterClusterNodeRequest {
                    routercluster_oid: oid,
                    node_oid: node,
                    config: Some(pb::RouterClusterNodeConfig {
                        softlimit,
                        hardlimit,
                    }),
                })
                .await?
                .into_inner()
                .node
                .unwrap_or_default();
            if f == Format::Json {
                return print_json("switchyard.master.v1.RouterClusterNode", &m);
            }
            let limit = |v: Option<u32>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
            print_fields(&[
                ("node", m.node_authid.clone()),
                ("softlimit", limit(m.softlimit)),
                ("hardlimit", limit(m.hardlimit)),
            ]);
            Ok(())
        }
        RouterCmd::RemoveNode { name, node } => {
            let oid = router_by_name(&mut api, &name).await?.oid;
            let m = api
                .remove_router_cluster_node(pb::RemoveRouterClusterNodeRequest {
                    routercluster_oid: oid,
                    node_oid: node,
                })
                .await?
                .into_inner()
                .node
                .unwrap_or_default();
            if f == Format::Json {
                return print_json("switchyard.master.v1.RouterClusterNode", &m);
            }
            println!("removed {}", m.node_authid);
            Ok(())
        }
        RouterCmd::AddWorkergroup {
            name,
            group,
            scale,
            realms,
        } => {
            let oid = router_by_name(&mut api, &name).await?.oid;
            let g = api
                .add_router_cluster_worker_group(pb::AddRouterClusterWorkerGroupRequest {
                    routercluster_oid: oid,
                    workergroup: Some(pb::RouterWorkerGroup {
                        name: group,
                        scale,
                        realms,
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner()
                .workergroup
                .unwrap_or_default();
            print_group(f, &g)
        }
        RouterCmd::RemoveWorkergroup { name, group } => {
            let g = api
                .get_router_cluster_worker_group_by_name(
                    pb::GetRouterClusterWorkerGroupByNameRequest {
                        routercluster_name: name,
                        workergroup_name: group,
                    },
                )
                .await?
                .into_inner()
                .workergroup
                .unwrap_or_default();
            let g = api
                .remove_router_cluster_worker_group(pb::RemoveRouterClusterWorkerGroupRequest {
                    routercluster_oid: g.cluster_oid,
                    workergroup_oid: g.oid,
                })
                .await?
                .into_inner()
                .workergroup
                .unwrap_or_default();
            print_group(f, &g)
        }
        RouterCmd::Stat { name } => {
            let oid = router_by_name(&mut api, &name).await?.oid;
            let s = api
                .stat_router_cluster(pb::StatRouterClusterRequest {
                    routercluster_oid: oid,
                })
                .await?
                .into_inner();
            if f == Format::Json {
                return print_json("switchyard.master.v1.StatRouterClusterResponse", &s);
            }
            print_fields(&[
                ("status", status_name(s.status)),
                ("reason", s.status_reason.clone()),
            ]);
            for g in &s.workergroups {
                let group = g.workergroup.clone().unwrap_or_default();
                println!(
                    "\nworker group {} ({}/{} running)",
                    group.name, g.running_workers, g.desired_workers
                );
                let mut t = Table::new(&["WORKER", "NODE", "PORT"]);
                for p in &g.placements {
                    t.row(vec![
                        p.worker_name.clone(),
                        p.node_authid.clone(),
                        p.tcp_listening_port.to_string(),
                    ]);
                }
                t.print();
            }
            Ok(())
        }
    }
}

fn print_group(f: Format, g: &pb::RouterWorkerGroup) -> R {
    if f == Format::Json {
        return print_json("switchyard.master.v1.RouterWorkerGroup", g);
    }
    print_fields(&[
        ("name", g.name.clone()),
        ("oid", g.oid.clone()),
        ("scale", g.scale.to_string()),
        ("realms", g.realms.join(", ")),
    ]);
    Ok(())
}

// ---- streams and node control through the master's gateway ----

async fn masters(ch: Channel, f: Format) -> R {
    use switchyard::pb::master::v1::control_plane_service_client::ControlPlaneServiceClient;
    let cp = ControlPlaneServiceClient::new(ch)
        .get_control_plane(pb::GetControlPlaneRequest {})
        .await?
        .into_inner();
    if f == Format::Json {
        return print_json("switchyard.master.v1.GetControlPlaneResponse", &cp);
    }
    let mut t = Table::new(&["NAME", "ADDRESS", "ROLE", "SINCE", "LAST SEEN"]);
    for m in &cp.members {
        let role = pb::MasterRole::try_from(m.role)
            .map(|r| enum_name(r.as_str_name(), "MASTER_ROLE_"))
            .unwrap_or_default();
        t.row(vec![
            m.name.clone(),
            m.address.clone(),
            role,
            ts(m.since.as_ref()),
            ts(m.last_seen.as_ref()),
        ]);
    }
    t.print();
    println!("epoch {}", cp.epoch);
    Ok(())
}

async fn watch(ch: Channel, f: Format, types: Vec<String>) -> R {
    let mut wanted = Vec::new();
    for t in &types {
        let name = format!("EVENT_TYPE_{}", t.to_ascii_uppercase());
        let ty = pb::EventType::from_str_name(&name)
            .ok_or_else(|| Failure::Config(format!("--type: unknown event type '{t}'")))?;
        wanted.push(ty as i32);
    }
    let mut stream = EventServiceClient::new(ch)
        .watch(pb::WatchRequest {
            types: wanted,
            oids: Vec::new(),
        })
        .await?
        .into_inner();
    if f == Format::Table {
        println!("{:<20}  {:<40}  {:<36}  WHO", "TIME", "TYPE", "OID");
    }
    while let Some(msg) = stream.message().await? {
        let Some(e) = msg.event else { continue };
        if f == Format::Json {
            print_json_line("switchyard.master.v1.Event", &e)?;
        } else {
            let ty = pb::EventType::try_from(e.r#type)
                .map(|t| enum_name(t.as_str_name(), "EVENT_TYPE_").to_ascii_lowercase())
                .unwrap_or_default();
            let who = e
                .who
                .as_ref()
                .map(|w| w.principal.clone())
                .unwrap_or_default();
            println!(
                "{:<20}  {:<40}  {:<36}  {who}",
                ts(e.ts.as_ref()),
                ty,
                e.oid
            );
        }
        let _ = std::io::stdout().flush();
    }
    Ok(())
}

fn on_node<T>(node: &str, msg: T) -> Result<tonic::Request<T>, Failure> {
    let mut req = tonic::Request::new(msg);
    let value = node
        .parse()
        .map_err(|_| Failure::Config(format!("'{node}' is not a node name")))?;
    req.metadata_mut().insert("switchyard-node", value);
    Ok(req)
}

async fn stats(
    ch: Channel,
    f: Format,
    node: &str,
    process: &str,
    interval: f64,
    count: Option<u64>,
) -> R {
    let mut stream = NativeProcessServiceClient::new(ch)
        .stream_process_stats(on_node(
            node,
            apb::StreamProcessStatsRequest {
                interval,
                processes: vec![process.to_owned()],
            },
        )?)
        .await?
        .into_inner();
    let mut seen = 0;
    let interactive = f == Format::Table && std::io::IsTerminal::is_terminal(&std::io::stdout());
    while let Some(s) = stream.message().await? {
        if f == Format::Json {
            print_json_line("switchyard.agent.v1.StreamProcessStatsResponse", &s)?;
        } else {
            let st = s.stats.clone().unwrap_or_default();
            let line = format!(
                "{node} {}  pid {}  cpu {:>5.1} %  rss {}  threads {}  fds {}",
                s.process,
                st.pid,
                st.cpu_percent,
                mib(st.resident),
                st.threads,
                st.fds
            );
            if interactive {
                // Refreshed in place.
                print!("\r\x1b[2K{line}");
            } else {
                println!("{line}");
            }
        }
        let _ = std::io::stdout().flush();
        seen += 1;
        if count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    if interactive {
        println!();
    }
    Ok(())
}

async fn manhole(ch: Channel, f: Format, c: ManholeCmd) -> R {
    let mut api = NativeProcessServiceClient::new(ch);
    match c {
        ManholeCmd::Start {
            node,
            process,
            port,
            user,
            password_file,
            interface,
        } => {
            let password = std::fs::read_to_string(&password_file)
                .map_err(|e| {
                    Failure::Config(format!("cannot read {}: {e}", password_file.display()))
                })?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned();
            let r = api
                .start_manhole(on_node(
                    &node,
                    apb::StartManholeRequest {
                        process,
                        config: Some(apb::ManholeConfig {
                            interface: interface.unwrap_or_default(),
                            port,
                            users: vec![apb::ManholeUser {
                                user: user.clone(),
                                password,
                                ..Default::default()
                            }],
                            host_key: String::new(),
                        }),
                    },
                )?)
                .await?
                .into_inner();
            if f == Format::Json {
                return print_json("switchyard.agent.v1.StartManholeResponse", &r);
            }
            println!("manhole started: ssh -p {port} {user}@<{node}'s address>");
            Ok(())
        }
        ManholeCmd::Stop { node, process } => {
            let r = api
                .stop_manhole(on_node(&node, apb::StopManholeRequest { process })?)
                .await?
                .into_inner();
            if f == Format::Json {
                return print_json("switchyard.agent.v1.StopManholeResponse", &r);
            }
            println!("manhole stopped");
            Ok(())
        }
    }
}
