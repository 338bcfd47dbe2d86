//! Issue 5 acceptance: web workers are real HTTP servers, driven through the agent's gRPC API,
//! checked with curl, a raw keep-alive client, Python backends and a Python WebSocket client.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{Pki, Proc, channel, eventually, grpcurl, repo, stderr, system_tool, tool};
use switchyard::pb::agent::v1::{
    self as pb, WorkerType, node_controller_service_client::NodeControllerServiceClient,
    web_service::Service,
};
use tonic::Code;
use tonic::transport::Channel;

fn curl(args: &[&str]) -> Output {
    Command::new(system_tool("curl"))
        .args(["-s", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap()
}

fn body(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A Python backend (backends.py) that reports its port through a file.
struct Backend {
    child: Child,
    port: u16,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn backend(kind: &str, dir: &Path) -> Backend {
    let port_file = dir.join(format!("{kind}.port"));
    let child = Command::new(tool("python"))
        .arg(repo().join("tests/python/backends.py"))
        .arg(kind)
        .arg(&port_file)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let port = eventually("the backend to listen", Duration::from_secs(20), || {
        std::fs::read_to_string(&port_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    Backend { child, port }
}

async fn start_web_worker(nc: &mut NodeControllerServiceClient<Channel>, id: &str) {
    nc.start_worker(pb::StartWorkerRequest {
        worker_id: id.into(),
        worker_type: WorkerType::Web as i32,
        options: None,
    })
    .await
    .unwrap();
}

async fn add(
    nc: &mut NodeControllerServiceClient<Channel>,
    worker: &str,
    path: &str,
    service: Service,
) -> Result<pb::WebService, tonic::Status> {
    nc.start_web_service(pb::StartWebServiceRequest {
        worker_id: worker.into(),
        service: Some(pb::WebService {
            path: path.into(),
            service: Some(service),
        }),
    })
    .await
    .map(|r| r.into_inner().service.unwrap())
}

fn json_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(json_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.into_iter().map(|(k, v)| (k, json_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// One HTTP/1.1 GET on an open keep-alive connection; returns (status line, body).
fn get_on(conn: &mut TcpStream, path: &str) -> (String, String) {
    write!(conn, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).unwrap();
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("content-length");
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).unwrap();
    (
        head.lines().next().unwrap().to_owned(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn two_web_workers_share_a_port_and_serve_every_service_type() {
    let pki = Pki::new(&["node1"]);
    let agent = Proc::agent(&pki, "node1", "127.0.0.1:9".parse().unwrap());
    let mut nc = NodeControllerServiceClient::new(channel(&pki, "admin", agent.addr).await);
    let tmp = tempfile::tempdir().unwrap();
    let www = tmp.path().join("www");
    std::fs::create_dir_all(www.join("sub")).unwrap();
    let file: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(www.join("data.bin"), &file).unwrap();
    std::fs::write(www.join("index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(www.join("sub/page.txt"), "sub page").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", www.join("passwd")).unwrap();
    let http_backend = backend("http", tmp.path());
    let ws_backend = backend("ws", tmp.path());

    let port = common::free_port();
    let transport = pb::WebTransport {
        tcp_port: u32::from(port),
        tcp_shared: Some(true),
        tcp_interface: Some("127.0.0.1".into()),
        ..Default::default()
    };
    for w in ["web1", "web2"] {
        start_web_worker(&mut nc, w).await;
        let t = nc
            .start_web_transport(pb::StartWebTransportRequest {
                worker_id: w.into(),
                transport: Some(transport.clone()),
            })
            .await
            .unwrap()
            .into_inner()
            .transport
            .unwrap();
        assert_eq!(t.listening, format!("127.0.0.1:{port}"));
        let static_svc = pb::StaticService {
            directory: www.display().to_string(),
            options: Some(pb::StaticOptions {
                enable_directory_listing: true,
                cache_timeout: Some(60),
                ..Default::default()
            }),
        };
        add(&mut nc, w, "/", Service::Static(static_svc))
            .await
            .unwrap();
        add(&mut nc, w, "/info", Service::Nodeinfo(Default::default()))
            .await
            .unwrap();
        let json = pb::JsonService {
            value: Some(json_value(
                serde_json::json!({"answer": 42, "list": [1, 2]}),
            )),
            options: Some(pb::JsonOptions {
                allow_cross_origin: true,
                ..Default::default()
            }),
        };
        add(&mut nc, w, "/settings", Service::Json(json))
            .await
            .unwrap();
        add(
            &mut nc,
            w,
            "/go",
            Service::Redirect(pb::RedirectService {
                url: "https://example.org/target".into(),
            }),
        )
        .await
        .unwrap();
        let proxy = pb::ReverseProxyService {
            host: "127.0.0.1".into(),
            port: u32::from(http_backend.port),
            path: "/backend".into(),
            ..Default::default()
        };
        add(&mut nc, w, "/api", Service::Reverseproxy(proxy))
            .await
            .unwrap();
        let dead = pb::ReverseProxyService {
            host: "127.0.0.1".into(),
            port: u32::from(common::free_port()),
            ..Default::default()
        };
        add(&mut nc, w, "/dead", Service::Reverseproxy(dead))
            .await
            .unwrap();
        let ws = pb::WebSocketReverseProxyService {
            backend: Some(pb::WebSocketBackend {
                host: "127.0.0.1".into(),
                port: u32::from(ws_backend.port),
                path: "/".into(),
            }),
            ..Default::default()
        };
        add(&mut nc, w, "/ws", Service::WebsocketReverseproxy(ws))
            .await
            .unwrap();
    }
    let base = format!("http://127.0.0.1:{port}");

    // Both workers accept connections on the shared port: nodeinfo shows two pids.
    let pids: BTreeSet<u64> = {
        let mut seen = BTreeSet::new();
        eventually(
            "both workers to answer on the shared port",
            Duration::from_secs(20),
            || {
                let v: serde_json::Value =
                    serde_json::from_str(&body(&curl(&[&format!("{base}/info")]))).ok()?;
                assert_eq!(v["node"], "node1");
                seen.insert(v["pid"].as_u64()?);
                (seen.len() == 2).then_some(())
            },
        );
        seen
    };
    assert_eq!(pids.len(), 2);

    // static: byte-exact, ranges, ETag, HEAD, default file, listing, 404.
    let out = curl(&[&format!("{base}/data.bin")]);
    assert!(
        out.stdout == file,
        "static file not byte-exact ({} bytes)",
        out.stdout.len()
    );
    let out = curl(&["-i", "-r", "10-19", &format!("{base}/data.bin")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 206"), "{text}");
    assert!(out.stdout.ends_with(&file[10..20]));
    let head = body(&curl(&["-I", &format!("{base}/data.bin")]));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase().contains("content-length: 100000"),
        "{head}"
    );
    assert!(head.to_lowercase().contains("last-modified:"), "{head}");
    assert!(
        head.to_lowercase().contains("cache-control: max-age=60"),
        "{head}"
    );
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("etag: ").or(l.strip_prefix("ETag: ")))
        .unwrap()
        .trim()
        .to_owned();
    let again = body(&curl(&[
        "-I",
        "-H",
        &format!("If-None-Match: {etag}"),
        &format!("{base}/data.bin"),
    ]));
    assert!(again.starts_with("HTTP/1.1 304"), "{again}");
    assert_eq!(
        body(&curl(&[&format!("{base}/")])),
        "<h1>home</h1>",
        "/ serves the directory root"
    );
    let listing = body(&curl(&[&format!("{base}/sub/")]));
    assert!(listing.contains("page.txt"), "{listing}");
    assert_eq!(body(&curl(&[&format!("{base}/sub/page.txt")])), "sub page");
    assert!(body(&curl(&["-i", &format!("{base}/nope")])).starts_with("HTTP/1.1 404"));

    // Traversal: never a file outside the directory.
    for (args, path) in [
        (vec!["--path-as-is"], "/../../../../etc/passwd"),
        (vec![], "/%2e%2e/%2e%2e/%2e%2e/etc/passwd"),
        (vec![], "/sub/..%2f..%2f..%2fetc/passwd"),
        (vec![], "/passwd"),
    ] {
        let mut a: Vec<&str> = args.clone();
        a.push("-i");
        let url = format!("{base}{path}");
        a.push(&url);
        let text = body(&curl(&a));
        assert!(
            text.starts_with("HTTP/1.1 403")
                || text.starts_with("HTTP/1.1 404")
                || text.starts_with("HTTP/1.1 400"),
            "{path}: {text}"
        );
        assert!(!text.contains("root:"), "{path} leaked /etc/passwd");
    }

    // Small files are served from memory, but never stale and never from outside after a swap:
    // warm both workers' caches (fresh connections spread over them), then change the file,
    // swap its directory for a symlink out of the root, and remove it.
    let page = format!("{base}/sub/page.txt");
    let fetch_all =
        |times: usize| -> Vec<String> { (0..times).map(|_| body(&curl(&["-i", &page]))).collect() };
    assert!(
        fetch_all(16)
            .iter()
            .all(|r| r.ends_with("\r\n\r\nsub page"))
    );
    std::fs::write(www.join("sub/page.txt"), "sub page, edited").unwrap();
    for r in fetch_all(16) {
        assert!(
            r.ends_with("\r\n\r\nsub page, edited"),
            "stale file served: {r}"
        );
    }
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("page.txt"), "outside the root").unwrap();
    std::fs::rename(www.join("sub"), www.join("sub_moved")).unwrap();
    std::os::unix::fs::symlink(&outside, www.join("sub")).unwrap();
    for r in fetch_all(16) {
        assert!(r.starts_with("HTTP/1.1 403"), "symlinked directory: {r}");
        assert!(
            !r.contains("outside the root"),
            "served a file outside the root: {r}"
        );
    }
    std::fs::remove_file(www.join("sub")).unwrap();
    std::fs::rename(www.join("sub_moved"), www.join("sub")).unwrap();
    assert!(fetch_all(4).iter().all(|r| r.ends_with("sub page, edited")));
    std::fs::remove_file(www.join("sub/page.txt")).unwrap();
    for r in fetch_all(16) {
        assert!(r.starts_with("HTTP/1.1 404"), "removed file: {r}");
    }
    std::fs::write(www.join("sub/page.txt"), "sub page").unwrap();

    // json, with CORS.
    let out = body(&curl(&["-i", &format!("{base}/settings")]));
    assert!(
        out.to_lowercase()
            .contains("content-type: application/json\r"),
        "{out}"
    );
    assert!(
        out.to_lowercase()
            .contains("access-control-allow-origin: *"),
        "{out}"
    );
    let v: serde_json::Value = serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(v, serde_json::json!({"answer": 42, "list": [1, 2]}));

    // redirect.
    let out = body(&curl(&["-i", &format!("{base}/go")]));
    assert!(out.starts_with("HTTP/1.1 307"), "{out}");
    assert!(
        out.contains("location: https://example.org/target"),
        "{out}"
    );

    // reverseproxy: the backend sees the forwarded headers and the mapped path.
    let out = body(&curl(&[&format!("{base}/api/items?x=1")]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["path"], "/backend/items?x=1");
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(v["headers"]["x-forwarded-proto"], "http");
    assert_eq!(v["headers"]["x-forwarded-port"], port.to_string());
    // An unreachable backend is a 502 at once, not a hang.
    let started = std::time::Instant::now();
    assert!(body(&curl(&["-i", &format!("{base}/dead/")])).starts_with("HTTP/1.1 502"));
    assert!(started.elapsed() < Duration::from_secs(5));

    // websocket_reverseproxy: a WebSocket client is echoed by the backend through the worker.
    let out = Command::new(tool("python"))
        .arg(repo().join("tests/python/backends.py"))
        .args(["wsclient", &format!("ws://127.0.0.1:{port}/ws"), "hello"])
        .output()
        .unwrap();
    assert_eq!(
        body(&out).trim(),
        "echo:hello",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Services change while a client stays connected to another path.
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (status, first) = get_on(&mut conn, "/info");
    assert!(status.contains("200"), "{status}");
    let worker: serde_json::Value = serde_json::from_str(&first).unwrap();
    let worker_id = worker["worker"].as_str().unwrap().to_owned();
    add(
        &mut nc,
        &worker_id,
        "/extra",
        Service::Nodeinfo(Default::default()),
    )
    .await
    .unwrap();
    let (status, _) = get_on(&mut conn, "/extra");
    assert!(
        status.contains("200"),
        "a service added while connected is served: {status}"
    );
    nc.stop_web_service(pb::StopWebServiceRequest {
        worker_id: worker_id.clone(),
        path: "/settings".into(),
    })
    .await
    .unwrap();
    let (status, again) = get_on(&mut conn, "/info");
    assert!(status.contains("200"), "{status}");
    let same: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(
        same["pid"], worker["pid"],
        "the same connection kept working"
    );
    let listed = nc
        .list_web_services(pb::ListWebServicesRequest {
            worker_id: worker_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .services;
    let paths: Vec<_> = listed.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/", "/api", "/dead", "/extra", "/go", "/info", "/ws"]
    );

    // Control errors.
    let e = add(
        &mut nc,
        "web1",
        "/info",
        Service::Nodeinfo(Default::default()),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let e = nc
        .start_web_transport(pb::StartWebTransportRequest {
            worker_id: "web1".into(),
            transport: Some(transport.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(
        switchyard::error::reason_of(&e).as_deref(),
        Some("ALREADY_STARTED")
    );
    let e = add(
        &mut nc,
        "web1",
        "/bad",
        Service::Static(pb::StaticService {
            directory: "/no/such".into(),
            options: None,
        }),
    )
    .await
    .unwrap_err();
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("static.directory"),
        "{e}"
    );
    assert_eq!(
        switchyard::error::reason_of(&e).as_deref(),
        Some("INVALID_CONFIGURATION")
    );

    // A non-shared transport on the taken port: CANNOT_LISTEN.
    start_web_worker(&mut nc, "web3").await;
    let e = nc
        .start_web_transport(pb::StartWebTransportRequest {
            worker_id: "web3".into(),
            transport: Some(pb::WebTransport {
                tcp_shared: Some(false),
                ..transport.clone()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(
        switchyard::error::reason_of(&e).as_deref(),
        Some("CANNOT_LISTEN"),
        "{e}"
    );
    let e = nc
        .get_web_transport(pb::GetWebTransportRequest {
            worker_id: "web3".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        switchyard::error::reason_of(&e).as_deref(),
        Some("NOT_STARTED")
    );

    // Stopping both transports closes the port.
    for w in ["web1", "web2"] {
        nc.stop_web_transport(pb::StopWebTransportRequest {
            worker_id: w.into(),
        })
        .await
        .unwrap();
    }
    eventually("the port to close", Duration::from_secs(5), || {
        TcpStream::connect(("127.0.0.1", port))
            .is_err()
            .then_some(())
    });
}

#[tokio::test]
async fn tls_transport_with_hsts() {
    let pki = Pki::new(&["node1"]);
    pki.issue("node", "webcert");
    let agent = Proc::agent(&pki, "node1", "127.0.0.1:9".parse().unwrap());
    let mut nc = NodeControllerServiceClient::new(channel(&pki, "admin", agent.addr).await);
    start_web_worker(&mut nc, "tls1").await;
    let port = common::free_port();
    let read = |f: &str| std::fs::read_to_string(pki.path.join(f)).unwrap();
    let transport = pb::WebTransport {
        tcp_port: u32::from(port),
        tcp_interface: Some("127.0.0.1".into()),
        tls_key: Some(read("webcert.key")),
        tls_certificate: Some(read("webcert.pem")),
        http_hsts: Some(true),
        http_hsts_max_age: Some(600),
        ..Default::default()
    };
    let t = nc
        .start_web_transport(pb::StartWebTransportRequest {
            worker_id: "tls1".into(),
            transport: Some(transport.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .transport
        .unwrap();
    assert_eq!(t.transport.unwrap().tls_key.as_deref(), Some("<redacted>"));
    add(
        &mut nc,
        "tls1",
        "/info",
        Service::Nodeinfo(Default::default()),
    )
    .await
    .unwrap();
    let out = curl(&[
        "-i",
        "--cacert",
        &pki.file("ca.pem"),
        &format!("https://localhost:{port}/info"),
    ]);
    let text = body(&out);
    assert!(
        text.starts_with("HTTP/2 200") || text.starts_with("HTTP/1.1 200"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.to_lowercase()
            .contains("strict-transport-security: max-age=600"),
        "{text}"
    );
    // Plain HTTP on the TLS port does not get a page.
    assert!(!body(&curl(&[&format!("http://127.0.0.1:{port}/info")])).contains("\"node\""));

    // Bad PEM and unknown ciphers are INVALID_CONFIGURATION naming the field.
    start_web_worker(&mut nc, "tls2").await;
    for (t, field) in [
        (
            pb::WebTransport {
                tls_key: Some("garbage".into()),
                ..transport.clone()
            },
            "tls_key",
        ),
        (
            pb::WebTransport {
                tls_ciphers: Some("TLS_NOT_A_CIPHER".into()),
                tcp_port: u32::from(common::free_port()),
                ..transport.clone()
            },
            "tls_ciphers",
        ),
    ] {
        let e = nc
            .start_web_transport(pb::StartWebTransportRequest {
                worker_id: "tls2".into(),
                transport: Some(t),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert_eq!(
            switchyard::error::reason_of(&e).as_deref(),
            Some("INVALID_CONFIGURATION")
        );
        assert!(e.message().contains(field), "{}", e.message());
    }
    let cipher = pb::WebTransport {
        tls_ciphers: Some("TLS13_CHACHA20_POLY1305_SHA256".into()),
        tcp_port: u32::from(common::free_port()),
        ..transport
    };
    nc.start_web_transport(pb::StartWebTransportRequest {
        worker_id: "tls2".into(),
        transport: Some(cipher),
    })
    .await
    .unwrap();
}

/// A web worker refuses a service or transport whose keys are set but unusable with reason
/// INVALID_CONFIGURATION, and one missing a key with INVALID_ARGUMENT; both name the field in a
/// BadRequest violation. Read from grpcurl's error details, as a user would.
#[test]
fn unusable_configuration_is_invalid_configuration_in_the_details() {
    let pki = Pki::new(&["node1"]);
    let agent = Proc::agent(&pki, "node1", "127.0.0.1:9".parse().unwrap());
    let tls = pki.grpcurl_tls(Some("admin"));
    let addr = agent.addr.to_string();
    let call = |method: &str, body: &str| {
        grpcurl(
            &tls,
            &[
                "-d",
                body,
                &addr,
                &format!("switchyard.agent.v1.NodeControllerService/{method}"),
            ],
        )
    };
    let started = call(
        "StartWorker",
        r#"{"workerId":"cfg","workerType":"WORKER_TYPE_WEB"}"#,
    );
    assert!(started.status.success(), "{}", stderr(&started));
    let service = |s: &str| format!(r#"{{"workerId":"cfg","service":{{"path":"/x",{s}}}}}"#);
    let transport = |t: &str| format!(r#"{{"workerId":"cfg","transport":{{{t}}}}}"#);
    for (method, body, reason, field) in [
        (
            "StartWebService",
            service(r#""static":{"directory":"relative/www"}"#),
            "INVALID_CONFIGURATION",
            "service.static.directory",
        ),
        (
            "StartWebService",
            service(r#""static":{"directory":"/no/such/dir"}"#),
            "INVALID_CONFIGURATION",
            "service.static.directory",
        ),
        (
            "StartWebService",
            service(r#""redirect":{"url":"not a url"}"#),
            "INVALID_CONFIGURATION",
            "service.redirect.url",
        ),
        (
            "StartWebService",
            service(r#""reverseproxy":{"host":"h","port":70000}"#),
            "INVALID_CONFIGURATION",
            "service.reverseproxy.port",
        ),
        (
            "StartWebService",
            service(r#""static":{}"#),
            "INVALID_ARGUMENT",
            "service.static.directory",
        ),
        (
            "StartWebTransport",
            transport(r#""tcpPort":8080,"tcpVersion":5"#),
            "INVALID_CONFIGURATION",
            "transport.tcp_version",
        ),
        (
            "StartWebTransport",
            transport(r#""tcpPort":8080,"tlsKey":"garbage","tlsCertificate":"garbage""#),
            "INVALID_CONFIGURATION",
            "transport.tls_key",
        ),
        (
            "StartWebTransport",
            transport(""),
            "INVALID_ARGUMENT",
            "transport.tcp_port",
        ),
    ] {
        let out = call(method, &body);
        let err = stderr(&out);
        assert!(!out.status.success(), "{method} {body} succeeded");
        assert!(err.contains("Code: InvalidArgument"), "{body}: {err}");
        assert!(
            err.contains(&format!(r#""reason":"{reason}""#)),
            "{body}: expected {reason}: {err}"
        );
        assert!(
            err.contains(&format!(r#""field":"{field}""#)),
            "{body}: expected a violation of {field}: {err}"
        );
    }
}

/// One web worker of a fresh agent serving `services` on a plaintext port (TLS with `tls`:
/// key and certificate PEM); returns the agent (keep it) and the port.
async fn one_worker(
    pki: &Pki,
    tls: Option<(String, String)>,
    services: Vec<(&str, Service)>,
) -> (Proc, u16) {
    let agent = Proc::agent(pki, "node1", "127.0.0.1:9".parse().unwrap());
    let mut nc = NodeControllerServiceClient::new(channel(pki, "admin", agent.addr).await);
    start_web_worker(&mut nc, "w1").await;
    let port = common::free_port();
    let (tls_key, tls_certificate) = tls.unzip();
    nc.start_web_transport(pb::StartWebTransportRequest {
        worker_id: "w1".into(),
        transport: Some(pb::WebTransport {
            tcp_port: u32::from(port),
            tcp_interface: Some("127.0.0.1".into()),
            tls_key,
            tls_certificate,
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    for (path, service) in services {
        add(&mut nc, "w1", path, service).await.unwrap();
    }
    (agent, port)
}

fn static_service(dir: &Path) -> Service {
    Service::Static(pb::StaticService {
        directory: dir.display().to_string(),
        options: None,
    })
}

/// Bytes that differ at every offset within a period of 251 (a prime), starting at `seed`.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| ((i + seed) * 7 % 251) as u8)
        .collect()
}

/// Reads one HTTP/1.1 response with a Content-Length: (head, body).
fn read_response(conn: &mut impl Read) -> (String, Vec<u8>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).unwrap();
    (head, body)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Large files go out by sendfile on plaintext HTTP/1.1 (and are read in chunks on HTTP/2):
/// whole, in ranges across the 1 MiB pieces they are sent in, pipelined on one connection
/// behind other answers, under the conditional headers, and as they are now after every edit.
#[tokio::test]
async fn large_static_files_are_exact_in_ranges_pipelined_and_after_edits() {
    let pki = Pki::new(&["node1"]);
    let tmp = tempfile::tempdir().unwrap();
    let www = tmp.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let big = pattern(3 * 1024 * 1024 + 123, 0);
    std::fs::write(www.join("big.bin"), &big).unwrap();
    std::fs::write(www.join("small.txt"), "small").unwrap();
    let (_agent, port) = one_worker(&pki, None, vec![("/", static_service(&www))]).await;
    let url = format!("http://127.0.0.1:{port}/big.bin");
    eventually("the worker to serve", Duration::from_secs(10), || {
        (curl(&[&url]).stdout.len() == big.len()).then_some(())
    });

    assert!(curl(&[&url]).stdout == big, "whole file not byte-exact");
    assert!(curl(&["-0", &url]).stdout == big, "HTTP/1.0");
    let out = curl(&["--http2-prior-knowledge", &url]);
    assert!(out.stdout == big, "HTTP/2 (read, not sendfile)");
    let out = curl(&["-i", "-r", "1048000-2100000", &url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 206"), "{}", &text[..200]);
    assert!(text.contains(&format!(
        "content-range: bytes 1048000-2100000/{}",
        big.len()
    )));
    assert!(out.stdout.ends_with(&big[1048000..=2100000]));
    let out = curl(&["-r", "-100", &url]);
    assert_eq!(out.stdout, &big[big.len() - 100..], "suffix range");
    let out = curl(&["--http2-prior-knowledge", "-r", "3000000-", &url]);
    assert_eq!(out.stdout, &big[3000000..], "HTTP/2 range");
    let head = body(&curl(&["-I", &url]));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        header(&head, "content-length"),
        Some(big.len().to_string().as_str())
    );
    let etag = header(&head, "etag").unwrap().to_owned();
    let not_modified = body(&curl(&[
        "-i",
        "-H",
        &format!("If-None-Match: {etag}"),
        &url,
    ]));
    assert!(not_modified.starts_with("HTTP/1.1 304"), "{not_modified}");
    let failed = body(&curl(&["-i", "-H", "If-Match: \"other\"", &url]));
    assert!(failed.starts_with("HTTP/1.1 412"), "{failed}");
    let out = curl(&["-r", "0-9", "-H", &format!("If-Range: {etag}"), &url]);
    assert_eq!(out.stdout, &big[..10], "If-Range with the current ETag");
    let out = curl(&["-r", "0-9", "-H", "If-Range: \"old\"", &url]);
    assert!(
        out.stdout == big,
        "If-Range with another ETag: the whole file"
    );

    // Pipelined: a range, the whole file, a small file from memory and the file again, asked for
    // in one write; every answer whole and in order.
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let get = |path: &str, extra: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
    let pipelined = [
        get("/big.bin", "Range: bytes=2097150-2097160\r\n"),
        get("/big.bin", ""),
        get("/small.txt", ""),
        get("/big.bin", "Range: bytes=10-\r\n"),
    ]
    .concat();
    conn.write_all(pipelined.as_bytes()).unwrap();
    let mut reader = std::io::BufReader::new(conn);
    let answers: Vec<_> = (0..4).map(|_| read_response(&mut reader)).collect();
    assert!(answers[0].0.starts_with("HTTP/1.1 206"), "{}", answers[0].0);
    assert_eq!(answers[0].1, &big[2097150..=2097160]);
    assert!(answers[1].1 == big, "the whole file, pipelined");
    assert_eq!(answers[2].1, b"small");
    assert!(answers[3].1 == big[10..], "a range after the rest");

    // Edits are seen at once: in place with the same length, replaced by a shorter file, by a
    // small one, and removed.
    let edited = pattern(big.len(), 1);
    std::fs::write(www.join("big.bin"), &edited).unwrap();
    assert!(curl(&[&url]).stdout == edited, "edited in place");
    let shorter = pattern(300 * 1024, 2);
    std::fs::write(www.join("next.bin"), &shorter).unwrap();
    std::fs::rename(www.join("next.bin"), www.join("big.bin")).unwrap();
    assert!(curl(&[&url]).stdout == shorter, "replaced");
    assert!(
        curl(&["--http2-prior-knowledge", &url]).stdout == shorter,
        "replaced, HTTP/2"
    );
    std::fs::write(www.join("big.bin"), "now small").unwrap();
    assert_eq!(body(&curl(&[&url])), "now small");
    std::fs::remove_file(www.join("big.bin")).unwrap();
    assert!(body(&curl(&["-i", &url])).starts_with("HTTP/1.1 404"));
}

/// A raw HTTP/1.1 backend speaking every framing a proxy must relay, keeping connections
/// alive; counts the connections it accepted.
struct RawBackend {
    port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl RawBackend {
    fn start() -> RawBackend {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::spawn(move || raw_serve(conn));
            }
        });
        RawBackend { port, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Serves one backend connection until the client or a `close` answer ends it.
fn raw_serve(conn: TcpStream) {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut words = line.split_whitespace();
        let method = words.next().unwrap_or("").to_owned();
        let path = words.next().unwrap_or("").to_owned();
        let (mut length, mut chunked) = (0, false);
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let Some((name, value)) = h.trim_end().split_once(':') else {
                break;
            };
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap(),
                "transfer-encoding" => chunked = value.contains("chunked"),
                _ => {}
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).unwrap();
        while chunked {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0u8; n + 2];
            reader.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..n]);
            chunked = n > 0;
        }
        let sized = |extra: &str, b: &[u8]| {
            let mut r = format!(
                "HTTP/1.1 200 OK\r\n{extra}Content-Length: {}\r\n\r\n",
                b.len()
            )
            .into_bytes();
            if method != "HEAD" {
                r.extend_from_slice(b);
            }
            r
        };
        let (reply, close) = match path.as_str() {
            "/chunked" => (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n\
                  5;x=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n"
                    .to_vec(),
                false,
            ),
            "/big" => (sized("", &pattern(1024 * 1024 + 7, 3)), false),
            "/continue" => (
                [&b"HTTP/1.1 100 Continue\r\n\r\n"[..], &sized("", b"ok")].concat(),
                false,
            ),
            "/echo" => (
                sized("", &[format!("{method} {}:", body.len()).as_bytes(), &body].concat()),
                false,
            ),
            "/close" => (sized("Connection: close\r\n", b"bye"), true),
            "/eof" => (b"HTTP/1.1 200 OK\r\n\r\nuntil eof".to_vec(), true),
            // Answers, then closes the kept-alive connection (a backend's idle timeout).
            "/closed-after" => (sized("", b"ok"), true),
            _ => (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(), false),
        };
        if out.write_all(&reply).is_err() || close {
            return;
        }
    }
}

/// The reverse proxy relays every framing a backend may use (length, chunked with trailers,
/// until close, 1xx before the answer, HEAD), request bodies by length and chunked, keeps its
/// backend connections alive and reuses them, and survives a backend closing an idle one.
#[tokio::test]
async fn reverse_proxy_relays_every_framing_and_reuses_backend_connections() {
    let pki = Pki::new(&["node1"]);
    let backend = RawBackend::start();
    let proxy = pb::ReverseProxyService {
        host: "127.0.0.1".into(),
        port: u32::from(backend.port),
        path: "/".into(),
        ..Default::default()
    };
    let (_agent, port) = one_worker(&pki, None, vec![("/p", Service::Reverseproxy(proxy))]).await;
    let base = format!("http://127.0.0.1:{port}/p");
    eventually("the proxy to answer", Duration::from_secs(10), || {
        (body(&curl(&[&format!("{base}/chunked")])) == "hello, world").then_some(())
    });
    let out = curl(&["-i", &format!("{base}/chunked")]);
    let text = body(&out);
    assert!(text.ends_with("\r\n\r\nhello, world"), "{text}");
    assert_eq!(header(&text, "content-type"), Some("text/plain"));
    assert!(curl(&[&format!("{base}/big")]).stdout == pattern(1024 * 1024 + 7, 3));
    let head = body(&curl(&["-I", &format!("{base}/big")]));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(header(&head, "content-length"), Some("1048583"), "{head}");
    assert_eq!(body(&curl(&[&format!("{base}/continue")])), "ok");
    assert_eq!(
        body(&curl(&["--data-binary", "abc", &format!("{base}/echo")])),
        "POST 3:abc"
    );
    assert_eq!(
        body(&curl(&[
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            "chunked body",
            &format!("{base}/echo")
        ])),
        "POST 12:chunked body"
    );
    assert_eq!(body(&curl(&[&format!("{base}/close")])), "bye");
    assert_eq!(body(&curl(&[&format!("{base}/eof")])), "until eof");

    // Twenty requests from twenty client connections: at most one new backend connection.
    let before = backend.accepted();
    for _ in 0..20 {
        assert_eq!(body(&curl(&[&format!("{base}/chunked")])), "hello, world");
    }
    let opened = backend.accepted() - before;
    assert!(opened <= 1, "{opened} backend connections for 20 requests");

    // A kept-alive connection the backend closed is not used again (or retried at once).
    for _ in 0..5 {
        assert_eq!(body(&curl(&[&format!("{base}/closed-after")])), "ok");
        let out = curl(&["-i", &format!("{base}/echo")]);
        let text = body(&out);
        assert!(
            text.ends_with("GET 0:"),
            "after a closed connection: {text}"
        );
    }
}

/// Over TLS a large file is read in chunks (no sendfile): exact over HTTP/2 and HTTP/1.1, in
/// ranges too.
#[tokio::test]
async fn large_static_files_over_tls_are_exact() {
    let pki = Pki::new(&["node1"]);
    pki.issue("node", "webcert");
    let read = |f: &str| std::fs::read_to_string(pki.path.join(f)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let big = pattern(2 * 1024 * 1024 + 5, 4);
    std::fs::write(tmp.path().join("big.bin"), &big).unwrap();
    let tls = Some((read("webcert.key"), read("webcert.pem")));
    let (_agent, port) = one_worker(&pki, tls, vec![("/", static_service(tmp.path()))]).await;
    let url = format!("https://localhost:{port}/big.bin");
    let ca = pki.file("ca.pem");
    let get = |extra: &[&str]| {
        let mut args = vec!["--cacert", &ca];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args).stdout
    };
    eventually("the worker to serve", Duration::from_secs(10), || {
        (get(&[]).len() == big.len()).then_some(())
    });
    assert!(get(&["--http2"]) == big, "HTTP/2 over TLS");
    assert!(get(&["--http1.1"]) == big, "HTTP/1.1 over TLS");
    assert_eq!(
        get(&["--http1.1", "-r", "1000000-1000099"]),
        &big[1000000..1000100]
    );
    assert_eq!(get(&["--http2", "-r", "-7"]), &big[big.len() - 7..]);
}

/// A FIFO in the root is not a file to serve: refused at once, and the worker (one event loop)
/// goes on serving.
#[tokio::test]
async fn a_fifo_in_the_root_is_refused_without_stalling_the_worker() {
    let pki = Pki::new(&["node1"]);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("page.txt"), "page").unwrap();
    let fifo = tmp.path().join("pipe");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let (_agent, port) = one_worker(&pki, None, vec![("/", static_service(tmp.path()))]).await;
    let base = format!("http://127.0.0.1:{port}");
    eventually("the worker to serve", Duration::from_secs(10), || {
        (body(&curl(&[&format!("{base}/page.txt")])) == "page").then_some(())
    });
    let started = std::time::Instant::now();
    let text = body(&curl(&["-i", &format!("{base}/pipe")]));
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(body(&curl(&[&format!("{base}/page.txt")])), "page");
}
