//! Web worker benchmark (issues 5 and 19): a 1-node web cluster's workers (`parallel 2`: two web
//! workers of one agent sharing a port) against nginx with 2 worker processes configured as a
//! careful operator would (`listen … reuseport`, sendfile, tcp_nopush, keep-alive,
//! open_file_cache, an upstream keep-alive pool), measured with `wrk -t2 -c64` in alternating
//! rounds in the same run, on six cases: static files of 1 KiB, 100 KiB and 2 MiB, HTTPS 1 KiB,
//! a reverse proxy of 1 KiB from one backend both proxy to (its own nginx), and a json value.
//!
//! Per case: both req/s (median over the rounds), the ratio (median of the rounds' ratios, and
//! their range), both p99s (median) and CPU per request of both sides (the serving processes'
//! user+sys time from /proc over each round, divided by the requests of that round).
//!
//! `cargo bench --bench web` (needs Debian's `wrk` and `nginx`: `scripts/bench-tools.sh`).
//! `BENCH_ROUNDS=N` (default 3) rounds of `BENCH_SECONDS=S` (default 4) per side and case; about
//! `12 * N * S` seconds in all. `BENCH_CASES=2 MiB,proxy` runs only the cases whose names contain
//! one of the comma-separated words; `BENCH_VERBOSE=1` prints every round; `BENCH_PIN=0/1` runs
//! wrk on CPU 0 and every server on CPU 1 (see [`pinned`]).

#[path = "../tests/common/mod.rs"]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Pki, Proc, channel, eventually, system_tool};
use switchyard::pb::agent::v1::{
    self as pb, WorkerType, node_controller_service_client::NodeControllerServiceClient,
    web_service::Service,
};
use tonic::transport::Channel;

/// One wrk run: throughput, tail latency and the CPU the server spent.
#[derive(Debug, Clone, Copy)]
struct Run {
    rps: f64,
    p99_ms: f64,
    cpu_us_per_req: f64,
    /// The user-space part of `cpu_us_per_req`.
    user_us_per_req: f64,
    /// wrk's p50, p75 and p90, ms.
    p50_75_90: [f64; 3],
}

/// `wrk --latency` against `url`, with the user+sys CPU of `pids` over the run.
fn wrk(url: &str, secs: u64, pids: &[u32]) -> Run {
    let before = cpu_seconds(pids);
    let mut cmd = match pinned() {
        Some((client, _)) => {
            let mut c = Command::new("taskset");
            c.args(["-c", client]).arg(system_tool("wrk"));
            c
        }
        None => Command::new(system_tool("wrk")),
    };
    let out = cmd
        .args(["-t2", "-c64", &format!("-d{secs}s"), "--latency", url])
        .output()
        .unwrap();
    let after = cpu_seconds(pids);
    let (user, cpu) = (after.0 - before.0, after.0 + after.1 - before.0 - before.1);
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("wrk output: {text}"));
    let requests: f64 = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .map(|(n, _)| n.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("wrk output: {text}"));
    let percentile = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p))
            .map(|v| {
                let v = v.trim();
                let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap());
                let n: f64 = num.parse().unwrap();
                match unit {
                    "us" => n / 1000.0,
                    "s" => n * 1000.0,
                    _ => n,
                }
            })
            .unwrap_or_else(|| panic!("wrk output without {p}: {text}"))
    };
    let p99_ms = percentile("99%");
    let p50_75_90 = [percentile("50%"), percentile("75%"), percentile("90%")];
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"));
    assert!(
        errors.is_none(),
        "wrk reported errors against {url}: {text}"
    );
    Run {
        rps,
        p99_ms,
        cpu_us_per_req: cpu * 1e6 / requests.max(1.0),
        user_us_per_req: user * 1e6 / requests.max(1.0),
        p50_75_90,
    }
}

/// `BENCH_PIN=CLIENT/SERVERS` (CPU lists, e.g. `0/1`): wrk runs on the CPUs CLIENT, every
/// server process (both sides' workers and the backend) on SERVERS, so that the load generator
/// and the servers do not share cores.
fn pinned() -> Option<(&'static str, &'static str)> {
    static PIN: std::sync::OnceLock<Option<(String, String)>> = std::sync::OnceLock::new();
    PIN.get_or_init(|| {
        let v = std::env::var("BENCH_PIN").ok()?;
        let (c, s) = v.split_once('/')?;
        Some((c.to_owned(), s.to_owned()))
    })
    .as_ref()
    .map(|(c, s)| (c.as_str(), s.as_str()))
}

/// Pins every thread of `pids` to the server CPUs of `BENCH_PIN`, if set.
fn pin_servers(pids: &[u32]) {
    let Some((_, servers)) = pinned() else {
        return;
    };
    for pid in pids {
        let ok = Command::new("taskset")
            .args(["-a", "-p", "-c", servers, &pid.to_string()])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "taskset of {pid}");
    }
}

/// Clock ticks per second of /proc's times.
fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

/// (utime, stime) of the processes (all their threads, living and exited), in seconds.
fn cpu_seconds(pids: &[u32]) -> (f64, f64) {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(clock_ticks);
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let t = |i: usize| f[i].parse::<u64>().unwrap() as f64 / ticks;
            (t(11), t(12))
        })
        .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// The processes whose parent is `parent` (nginx's workers).
fn children_of(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        if rest.split_whitespace().nth(1) == Some(&parent.to_string()) {
            pids.push(pid);
        }
    }
    pids
}

/// An nginx with its own configuration; stopped (with its workers) on drop.
struct Nginx {
    master: Child,
}

impl Nginx {
    fn start(dir: &Path, name: &str, workers: u32, servers: &str) -> Nginx {
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "worker_processes {workers}; daemon off; pid {d}/{name}.pid; error_log {d}/{name}.log;\n\
                 worker_rlimit_nofile 65535;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{ access_log off; sendfile on; tcp_nopush on; tcp_nodelay on;\n\
                   keepalive_timeout 65; keepalive_requests 1000000;\n\
                   open_file_cache max=1000 inactive=20s; open_file_cache_valid 30s;\n\
                   open_file_cache_min_uses 1; open_file_cache_errors on;\n\
                   default_type application/octet-stream;\n\
                   client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
                   uwsgi_temp_path {d}; scgi_temp_path {d};\n\
                   {servers} }}\n",
                d = dir.display(),
            ),
        )
        .unwrap();
        let master = Command::new(system_tool("nginx"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let nginx = Nginx { master };
        eventually("nginx's workers", Duration::from_secs(10), || {
            (children_of(nginx.master.id()).len() == workers as usize).then_some(())
        });
        nginx
    }

    fn workers(&self) -> Vec<u32> {
        children_of(self.master.id())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: the master stops its workers and exits (SIGKILL would orphan the workers,
        // which keep the ports and this benchmark's output pipe open).
        let _ = Command::new("kill")
            .args(["-QUIT", &self.master.id().to_string()])
            .status();
        let _ = self.master.wait();
    }
}

/// Starts web worker `id` with `transport` and `services`; returns its pid.
async fn web_worker(
    nc: &mut NodeControllerServiceClient<Channel>,
    id: &str,
    transport: pb::WebTransport,
    services: &[(&str, Service)],
) -> u32 {
    let worker = nc
        .start_worker(pb::StartWorkerRequest {
            worker_id: id.into(),
            worker_type: WorkerType::Web as i32,
            options: None,
        })
        .await
        .unwrap()
        .into_inner()
        .worker
        .unwrap();
    nc.start_web_transport(pb::StartWebTransportRequest {
        worker_id: id.into(),
        transport: Some(transport),
    })
    .await
    .unwrap();
    for (path, service) in services {
        nc.start_web_service(pb::StartWebServiceRequest {
            worker_id: id.into(),
            service: Some(pb::WebService {
                path: (*path).into(),
                service: Some(service.clone()),
            }),
        })
        .await
        .unwrap();
    }
    worker.pid
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The directory tree both servers serve, readable by nginx's workers (user nobody).
fn site(dir: &Path) -> std::path::PathBuf {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    for (name, len) in [
        ("1k.bin", 1024),
        ("100k.bin", 100 * 1024),
        ("2m.bin", 2 << 20),
    ] {
        let data: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        std::fs::write(www.join(name), data).unwrap();
        std::fs::set_permissions(www.join(name), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    for d in [dir, &www] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    www
}

/// nginx with 2 workers serving `www` over HTTP (with /json and /proxy/ to `backend`) and HTTPS;
/// returns it and its two ports.
fn start_nginx(dir: &Path, www: &Path, pki: &Pki, backend: u16) -> (Nginx, u16, u16) {
    let (port, tls_port) = (common::free_port(), common::free_port());
    let nginx = Nginx::start(
        dir,
        "nginx",
        2,
        &format!(
            "upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}\n\
             server {{ listen 127.0.0.1:{port} reuseport backlog=1024; root {www};\n\
               location = /json {{ default_type application/json; return 200 '\"hello\"'; }}\n\
               location /proxy/ {{ proxy_pass http://backend/; proxy_http_version 1.1;\n\
                 proxy_set_header Connection \"\";\n\
                 proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
                 proxy_set_header X-Forwarded-Proto $scheme; }} }}\n\
             server {{ listen 127.0.0.1:{tls_port} ssl reuseport backlog=1024; root {www};\n\
               ssl_certificate {cert}; ssl_certificate_key {key};\n\
               ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:1m; }}\n",
            www = www.display(),
            cert = pki.file("webcert.pem"),
            key = pki.file("webcert.key"),
        ),
    );
    (nginx, port, tls_port)
}

/// Switchyard's side: one agent; 2 web workers sharing an HTTP port (static at /, json at
/// /json, reverseproxy to `backend` at /proxy), 2 sharing an HTTPS port (static).
struct Switchyard {
    _agent: Proc,
    port: u16,
    tls_port: u16,
    http_pids: Vec<u32>,
    https_pids: Vec<u32>,
}

async fn start_switchyard(pki: &Pki, www: &Path, backend: u16) -> Switchyard {
    let agent = Proc::agent(pki, "node1", "127.0.0.1:9".parse().unwrap());
    let mut nc = NodeControllerServiceClient::new(channel(pki, "admin", agent.addr).await);
    let (port, tls_port) = (common::free_port(), common::free_port());
    let services = [
        (
            "/",
            Service::Static(pb::StaticService {
                directory: www.display().to_string(),
                options: None,
            }),
        ),
        (
            "/json",
            Service::Json(pb::JsonService {
                value: Some(prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue("hello".into())),
                }),
                options: None,
            }),
        ),
        (
            "/proxy",
            Service::Reverseproxy(pb::ReverseProxyService {
                host: "127.0.0.1".into(),
                port: u32::from(backend),
                path: "/".into(),
                ..Default::default()
            }),
        ),
    ];
    let transport = |port: u16| pb::WebTransport {
        tcp_port: u32::from(port),
        tcp_shared: Some(true),
        tcp_interface: Some("127.0.0.1".into()),
        ..Default::default()
    };
    let read = |f: &str| std::fs::read_to_string(pki.path.join(f)).unwrap();
    let tls = pb::WebTransport {
        tls_key: Some(read("webcert.key")),
        tls_certificate: Some(read("webcert.pem")),
        ..transport(tls_port)
    };
    let (mut http_pids, mut https_pids) = (Vec::new(), Vec::new());
    for i in 1..=2 {
        let id = format!("web{i}");
        http_pids.push(web_worker(&mut nc, &id, transport(port), &services).await);
        let id = format!("tls{i}");
        https_pids.push(web_worker(&mut nc, &id, tls.clone(), &services[..1]).await);
    }
    Switchyard {
        _agent: agent,
        port,
        tls_port,
        http_pids,
        https_pids,
    }
}

/// `rounds` alternating rounds of `secs` against both URLs, after a warm-up of each.
fn measure(
    (ngx_url, ngx_pids): (&str, &[u32]),
    (sy_url, sy_pids): (&str, &[u32]),
    rounds: usize,
    secs: u64,
) -> (Vec<Run>, Vec<Run>) {
    // Warm both (page cache, file caches, backend pools) before measuring.
    wrk(ngx_url, 1, ngx_pids);
    wrk(sy_url, 1, sy_pids);
    let (mut ngx, mut ours) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate who goes first, so a drift in the machine's load favours neither.
        if round % 2 == 0 {
            ngx.push(wrk(ngx_url, secs, ngx_pids));
            ours.push(wrk(sy_url, secs, sy_pids));
        } else {
            ours.push(wrk(sy_url, secs, sy_pids));
            ngx.push(wrk(ngx_url, secs, ngx_pids));
        }
    }
    (ngx, ours)
}

const HEADER: &str = "case              nginx r/s    ours r/s  ratio     (range)   ngx p99   our p99  \
                      ngx CPU/r  our CPU/r";

/// One case's line (and with `verbose` its rounds first).
fn report(name: &str, ngx: &[Run], ours: &[Run], verbose: bool) {
    if verbose {
        let line = |r: &Run| {
            let [p50, p75, p90] = r.p50_75_90;
            format!(
                "{:>9.0} r/s  p50/75/90/99 {p50:.2}/{p75:.2}/{p90:.2}/{:.2} ms  \
                 CPU {:>6.1} us/r (user {:>6.1})",
                r.rps, r.p99_ms, r.cpu_us_per_req, r.user_us_per_req
            )
        };
        for (n, s) in ngx.iter().zip(ours) {
            println!("  round  nginx {}\n         ours  {}", line(n), line(s));
        }
    }
    let ratios: Vec<f64> = ours.iter().zip(ngx).map(|(s, n)| s.rps / n.rps).collect();
    let (lo, hi) = (
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    let m = |runs: &[Run], f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
    println!(
        "{name:<15} {:>11.0} {:>11.0} {:>6.2} {:>11} {:>6.2} ms {:>6.2} ms {:>7.1} us {:>7.1} us",
        m(ngx, |r| r.rps),
        m(ours, |r| r.rps),
        median(ratios),
        format!("{lo:.2}-{hi:.2}"),
        m(ngx, |r| r.p99_ms),
        m(ours, |r| r.p99_ms),
        m(ngx, |r| r.cpu_us_per_req),
        m(ours, |r| r.cpu_us_per_req),
    );
}

#[tokio::main]
async fn main() {
    let rounds = env("BENCH_ROUNDS", 3).max(1) as usize;
    let secs = env("BENCH_SECONDS", 4).max(1);
    let only = std::env::var("BENCH_CASES").unwrap_or_default();
    let verbose = std::env::var_os("BENCH_VERBOSE").is_some();
    let load_before = loadavg();
    let tmp = tempfile::tempdir().unwrap();
    let www = site(tmp.path());
    let pki = Pki::new(&["node1"]);
    pki.issue("node", "webcert");

    // The common backend of both reverse proxies: its own nginx, serving the same files.
    let backend_port = common::free_port();
    let backend = Nginx::start(
        tmp.path(),
        "backend",
        1,
        &format!(
            "server {{ listen 127.0.0.1:{backend_port} reuseport; root {}; }}",
            www.display()
        ),
    );
    let (nginx, ngx_port, ngx_tls_port) = start_nginx(tmp.path(), &www, &pki, backend_port);
    let sy = start_switchyard(&pki, &www, backend_port).await;
    for p in [sy.port, sy.tls_port, ngx_port, ngx_tls_port, backend_port] {
        eventually("the servers to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", p)).ok()
        });
    }

    let cases: [(&str, &str, bool); 6] = [
        ("static 1 KiB", "/1k.bin", false),
        ("static 100 KiB", "/100k.bin", false),
        ("static 2 MiB", "/2m.bin", false),
        ("HTTPS 1 KiB", "/1k.bin", true),
        ("proxy 1 KiB", "/proxy/1k.bin", false),
        ("json", "/json", false),
    ];
    let ngx_workers = nginx.workers();
    for pids in [
        &ngx_workers,
        &backend.workers(),
        &sy.http_pids,
        &sy.https_pids,
    ] {
        pin_servers(pids);
    }
    println!(
        "web worker benchmark: wrk -t2 -c64, {rounds} alternating rounds of {secs} s per side \
         and case; load average before: {load_before}{}",
        pinned().map_or(String::new(), |(c, s)| format!(
            "; wrk on CPUs {c}, servers on {s}"
        ))
    );
    println!("{HEADER}");
    for (name, path, https) in cases {
        if !only.is_empty() && !only.split(',').any(|o| name.contains(o.trim())) {
            continue;
        }
        let (scheme, ngx, ours, pids) = if https {
            ("https", ngx_tls_port, sy.tls_port, &sy.https_pids)
        } else {
            ("http", ngx_port, sy.port, &sy.http_pids)
        };
        let ngx_url = format!("{scheme}://127.0.0.1:{ngx}{path}");
        let sy_url = format!("{scheme}://127.0.0.1:{ours}{path}");
        let (ngx, ours) = measure((&ngx_url, &ngx_workers), (&sy_url, pids), rounds, secs);
        report(name, &ngx, &ours, verbose);
    }
    println!(
        "targets: ratio >= 1.0 and our p99 <= nginx's on every case; load average after: {}",
        loadavg()
    );
}
