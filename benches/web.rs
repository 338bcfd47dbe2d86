//! Web worker benchmark (issue 5): wrk against a 2-worker shared-port web transport serving a
//! 1 KiB static file and a small json value, and against nginx (2 worker processes, same file)
//! in the same run: requests/s and p99 for each, and the ratio.
//!
//! `cargo bench --bench web` (needs Debian's `wrk` and `nginx`; `BENCH_SECONDS=N`, default 10).

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;

use common::{Pki, Proc, channel, eventually, system_tool};
use switchyard::pb::agent::v1::{
    self as pb, WorkerType, node_controller_service_client::NodeControllerServiceClient,
    web_service::Service,
};

/// (requests/s, p99 ms) from `wrk --latency` output.
fn wrk(url: &str, secs: u64) -> (f64, f64) {
    let out = Command::new(system_tool("wrk"))
        .args(["-t2", "-c64", &format!("-d{secs}s"), "--latency", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("wrk output: {text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| {
            let v = v.trim();
            let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap());
            let n: f64 = num.parse().unwrap();
            match unit {
                "us" => n / 1000.0,
                "ms" => n,
                "s" => n * 1000.0,
                _ => n,
            }
        })
        .unwrap();
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"));
    assert!(
        errors.is_none(),
        "wrk reported errors against {url}: {text}"
    );
    (rps, p99)
}

#[tokio::main]
async fn main() {
    let secs: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let tmp = tempfile::tempdir().unwrap();
    let www = tmp.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("file.txt"), vec![b'x'; 1024]).unwrap();

    // nginx: 2 worker processes, same file.
    let nginx_port = common::free_port();
    let conf = tmp.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 2; daemon off; pid {dir}/nginx.pid; error_log {dir}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;\n\
               client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir}; uwsgi_temp_path {dir}; scgi_temp_path {dir};\n\
               server {{ listen 127.0.0.1:{nginx_port}; root {www}; }} }}\n",
            dir = tmp.path().display(),
            www = www.display()
        ),
    )
    .unwrap();
    let mut nginx = Command::new(system_tool("nginx"))
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();

    // Switchyard: an agent, 2 web workers sharing a port.
    let pki = Pki::new(&["node1"]);
    let agent = Proc::agent(&pki, "node1", "127.0.0.1:9".parse().unwrap());
    let mut nc = NodeControllerServiceClient::new(channel(&pki, "admin", agent.addr).await);
    let port = common::free_port();
    for w in ["bench1", "bench2"] {
        nc.start_worker(pb::StartWorkerRequest {
            worker_id: w.into(),
            worker_type: WorkerType::Web as i32,
            options: None,
        })
        .await
        .unwrap();
        let transport = pb::WebTransport {
            tcp_port: u32::from(port),
            tcp_shared: Some(true),
            tcp_interface: Some("127.0.0.1".into()),
            ..Default::default()
        };
        nc.start_web_transport(pb::StartWebTransportRequest {
            worker_id: w.into(),
            transport: Some(transport),
        })
        .await
        .unwrap();
        let svc = |path: &str, service| pb::StartWebServiceRequest {
            worker_id: w.into(),
            service: Some(pb::WebService {
                path: path.into(),
                service: Some(service),
            }),
        };
        nc.start_web_service(svc(
            "/",
            Service::Static(pb::StaticService {
                directory: www.display().to_string(),
                options: None,
            }),
        ))
        .await
        .unwrap();
        let value = prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("hello".into())),
        };
        nc.start_web_service(svc(
            "/json",
            Service::Json(pb::JsonService {
                value: Some(value),
                options: None,
            }),
        ))
        .await
        .unwrap();
    }
    for p in [port, nginx_port] {
        eventually(
            "the server to listen",
            std::time::Duration::from_secs(10),
            || std::net::TcpStream::connect(("127.0.0.1", p)).ok(),
        );
    }

    let (ngx_rps, ngx_p99) = wrk(&format!("http://127.0.0.1:{nginx_port}/file.txt"), secs);
    let (sy_rps, sy_p99) = wrk(&format!("http://127.0.0.1:{port}/file.txt"), secs);
    let (json_rps, json_p99) = wrk(&format!("http://127.0.0.1:{port}/json"), secs);
    // SIGQUIT: nginx's master stops its workers and exits (SIGKILL would orphan the workers,
    // which keep the port and this benchmark's output pipe open).
    let _ = Command::new("kill")
        .args(["-QUIT", &nginx.id().to_string()])
        .status();
    let _ = nginx.wait();
    drop(agent);

    println!("web worker benchmark (wrk -t2 -c64, {secs} s each, 1 KiB static file)");
    println!("  nginx (2 workers)        {ngx_rps:>10.0} req/s  p99 {ngx_p99:>7.2} ms  (baseline)");
    println!(
        "  switchyard (2 workers)   {sy_rps:>10.0} req/s  p99 {sy_p99:>7.2} ms  ratio {:.2} (target >= 1.0)",
        sy_rps / ngx_rps
    );
    println!("  switchyard json          {json_rps:>10.0} req/s  p99 {json_p99:>7.2} ms");
}
