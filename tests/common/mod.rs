//! The end-to-end harness: real `switchyard-master` and `switchyard-agent` processes, a real PKI
//! made by the real CLI, and the real client tools installed by `scripts/test.sh`.
//!
//! Processes listen on port 0 and report their address in their JSON start-up log line; the
//! harness reads it, so no test uses a fixed port. Nothing waits for a fixed time: [`eventually`]
//! polls a condition with a deadline.
#![allow(dead_code)]

pub mod etcd;
pub mod netns;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds every workspace binary once per test process (`cargo build --workspace --bins`, the
/// same feature resolution as `cargo test --workspace`, so nothing is rebuilt twice) and returns
/// the directory holding them (the profile directory this test binary runs from).
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // target/<profile>/deps/<test binary>: benchmarks run from target/release and measure
        // optimised binaries.
        let exe = std::env::current_exe().expect("test binary path");
        build_bins(
            exe.parent()
                .and_then(Path::parent)
                .is_some_and(|d| d.ends_with("release")),
        )
    })
}

/// `cargo build --workspace --bins [--release]` from the repository root, as a user would run
/// it (`cargo build --release` at the root resolves features the same way); panics with cargo's
/// output if the build fails. Returns the profile directory holding the binaries.
pub fn build_bins(release: bool) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // Drop what cargo set for this test process, so the nested build sees the same
    // environment as the outer one and reuses its artifacts instead of rebuilding them.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let set_for_tests = key == "OUT_DIR"
            || key == "LD_LIBRARY_PATH"
            || (key.starts_with("CARGO_")
                && !matches!(
                    &*key,
                    "CARGO_HOME" | "CARGO_TARGET_DIR" | "CARGO_BUILD_JOBS"
                ));
        if set_for_tests {
            cmd.env_remove(&*key);
        }
    }
    cmd.current_dir(repo())
        .args(["build", "--workspace", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("run cargo build");
    assert!(
        out.status.success(),
        "cargo build --workspace --bins failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exe = std::env::current_exe().expect("test binary path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("target dir: target/<profile>/deps/<test binary>")
        .to_owned();
    target.join(if release { "release" } else { "debug" })
}

/// The `switchyard-master` binary (built on first use).
pub fn master_bin() -> PathBuf {
    bin_dir().join("switchyard-master")
}

/// The `switchyard-agent` binary (built on first use).
pub fn agent_bin() -> PathBuf {
    bin_dir().join("switchyard-agent")
}

/// The `switchyard` CLI binary (built on first use).
pub fn cli_bin() -> PathBuf {
    bin_dir().join("switchyard")
}

/// A test tool installed by `scripts/test.sh` (`.venv/bin`, `.tools/node_modules/.bin`).
/// A missing tool fails the test: tests never skip.
pub fn tool(name: &str) -> PathBuf {
    for dir in [".venv/bin", ".tools/node_modules/.bin"] {
        let path = repo().join(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!("test tool `{name}` is missing: run scripts/test.sh (it installs every test tool)");
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A PKI directory made with `switchyard-master ca init` / `ca issue`.
pub struct Pki {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Pki {
    /// A CA plus `master`, `admin` and the given node certificates.
    pub fn new(nodes: &[&str]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pki");
        let pki = Pki { _dir: dir, path };
        pki.master(&["ca", "init"]);
        pki.master(&["ca", "issue", "--role", "master"]);
        pki.issue("admin", "admin");
        for node in nodes {
            pki.issue("node", node);
        }
        pki
    }

    pub fn issue(&self, role: &str, name: &str) {
        self.master(&["ca", "issue", "--role", role, "--name", name]);
    }

    fn master(&self, args: &[&str]) {
        let out = Command::new(master_bin())
            .args(args)
            .arg("--pki-dir")
            .arg(&self.path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn file(&self, name: &str) -> String {
        self.path.join(name).to_string_lossy().into_owned()
    }

    /// grpcurl TLS flags for the certificate `name` (`None`: no client certificate).
    pub fn grpcurl_tls(&self, name: Option<&str>) -> Vec<String> {
        let mut args = vec!["-cacert".to_owned(), self.file("ca.pem")];
        if let Some(name) = name {
            args.extend([
                "-cert".to_owned(),
                self.file(&format!("{name}.pem")),
                "-key".to_owned(),
                self.file(&format!("{name}.key")),
            ]);
        }
        args
    }
}

/// A running server process, killed when dropped.
pub struct Proc {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    /// The etcd a master runs on (`SWITCHYARD_TEST_STORE=etcd`), stopped after the master.
    etcd: Option<etcd::Etcd>,
}

impl Proc {
    /// Spawns `cmd` (which must log JSON) and waits for its "serving" line with `listen`.
    pub fn spawn(cmd: Command) -> Proc {
        let (mut child, logs, rx) = Proc::start(cmd);
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "server did not start; log:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        Proc {
            child,
            addr,
            logs,
            etcd: None,
        }
    }

    /// Spawns `cmd` without waiting: its logs can be read while it starts; `serving` (a
    /// receiver of its listen address) tells when it serves.
    pub fn start_background(cmd: Command) -> (Starting, mpsc::Receiver<SocketAddr>) {
        let (child, logs, rx) = Proc::start(cmd);
        (
            Starting {
                child: Some(child),
                logs,
            },
            rx,
        )
    }

    fn start(mut cmd: Command) -> (Child, Arc<Mutex<Vec<String>>>, mpsc::Receiver<SocketAddr>) {
        cmd.env("RUST_LOG", "info")
            .arg("--log-format")
            .arg("json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn server");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = listen_addr(&line) {
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push(line);
            }
        });
        (child, logs, rx)
    }

    /// A master with its own data directory.
    pub fn master(pki: &Pki, data_dir: &Path) -> Proc {
        Proc::master_on(pki, data_dir, "127.0.0.1:0")
    }

    /// A master listening on `listen` (a fixed address, for restarts agents must find again).
    pub fn master_on(pki: &Pki, data_dir: &Path, listen: &str) -> Proc {
        Proc::master_with(pki, data_dir, listen, &[])
    }

    /// A master with extra command-line arguments; on the store of this test run (sled in
    /// `data_dir`, or an etcd keeping its data in `data_dir`: see [`etcd::test_store_is_etcd`]).
    pub fn master_with(pki: &Pki, data_dir: &Path, listen: &str, extra: &[&str]) -> Proc {
        let mut cmd = Command::new(master_bin());
        cmd.args(["serve", "--listen", listen]);
        let etcd = etcd::test_store_is_etcd().then(|| etcd::Etcd::start_in(data_dir, 1));
        match &etcd {
            Some(etcd) => cmd.args(["--store", "etcd", "--etcd-endpoints", &etcd.endpoints()]),
            None => cmd.arg("--data-dir").arg(data_dir),
        };
        cmd.arg("--pki-dir").arg(&pki.path).args(extra);
        let mut master = Proc::spawn(cmd);
        master.etcd = etcd;
        master
    }

    /// An agent named `name` reporting to `master`.
    pub fn agent(pki: &Pki, name: &str, master: SocketAddr) -> Proc {
        Proc::agent_with(pki, name, master, &[])
    }

    /// An agent with extra command-line arguments.
    pub fn agent_with(pki: &Pki, name: &str, master: SocketAddr, extra: &[&str]) -> Proc {
        let mut cmd = Command::new(agent_bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--name", name])
            .args(["--master", &master.to_string(), "--pki-dir"])
            .arg(&pki.path)
            .args(extra);
        Proc::spawn(cmd)
    }

    /// The address of the metrics endpoint, once its start-up line is logged.
    pub fn metrics_addr(&self) -> SocketAddr {
        eventually("the metrics endpoint", Duration::from_secs(10), || {
            self.logs()
                .lines()
                .filter(|l| l.contains("metrics endpoint ready"))
                .find_map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).ok()?;
                    let s = v["fields"]["metrics_listen"].as_str()?;
                    s.trim_start_matches("Some(")
                        .trim_end_matches(')')
                        .parse()
                        .ok()
                })
        })
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A server started by [`Proc::start_background`] that may not serve yet.
pub struct Starting {
    child: Option<Child>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Starting {
    /// Its log so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// The server, once `serving` reported its address (within `within`).
    pub fn serving(mut self, serving: &mpsc::Receiver<SocketAddr>, within: Duration) -> Proc {
        let Ok(addr) = serving.recv_timeout(within) else {
            panic!("server did not start; log:\n{}", self.logs());
        };
        Proc {
            child: self.child.take().unwrap(),
            addr,
            logs: self.logs.clone(),
            etcd: None,
        }
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Proc {
    /// SIGKILL, and wait until the whole process (every thread, so every socket) is gone: the
    /// thread-group leader turns zombie while other threads still hold its files.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A master's etcd goes down with it (its data stays, for the next master on the dir).
        self.etcd.take();
    }
}

impl Drop for Proc {
    /// A graceful stop first (SIGINT: an agent stops its workers rather than leaving them to
    /// wait out their adoption grace), SIGKILL after 5 s.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Then its etcd, if any (dropping it kills it).
        self.etcd.take();
    }
}

fn listen_addr(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?;
    if !fields.get("message")?.as_str()?.ends_with("serving") {
        return None;
    }
    fields.get("listen")?.as_str()?.parse().ok()
}

/// Runs grpcurl with `tls` flags and `args`.
pub fn grpcurl(tls: &[String], args: &[&str]) -> Output {
    Command::new(tool("grpcurl"))
        .args(tls)
        .args(["-max-time", "20"])
        .args(args)
        .output()
        .expect("run grpcurl")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A program from a Debian package that `scripts/test.sh` installs; missing fails the test.
pub fn system_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("`{name}` is missing: run scripts/test.sh (it installs the Debian packages the tests use)")
        })
}

/// A tonic channel to `addr` with the certificate `name` of `pki`.
pub async fn channel(pki: &Pki, name: &str, addr: SocketAddr) -> tonic::transport::Channel {
    let tls = switchyard::pki::Identity::load(&pki.path, name)
        .unwrap()
        .client_tls("localhost");
    tonic::transport::Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

/// Polls an async condition with a deadline.
pub async fn eventually_async<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Whether process `pid` is gone (no /proc entry, or a zombie nobody needs to control).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Python stubs generated by grpcio-tools from every file in `proto/`.
pub fn python_stubs() -> tempfile::TempDir {
    let stubs = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for pkg in ["master", "agent"] {
        let dir = repo().join("proto/switchyard").join(pkg).join("v1");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(repo().join("proto")).unwrap();
            files.push(rel.to_string_lossy().into_owned());
        }
    }
    files.sort();
    let out = Command::new(tool("python"))
        .args(["-m", "grpc_tools.protoc", "-Iproto"])
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()))
        .args(&files)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "protoc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stubs
}

/// Waits until the master at `master` lists `n` nodes online (within `within`).
pub async fn nodes_online(pki: &Pki, master: SocketAddr, n: usize, within: Duration) {
    use switchyard::pb::master::v1::{self as pb, node_service_client::NodeServiceClient};
    let nodes = NodeServiceClient::new(channel(pki, "admin", master).await);
    eventually_async(&format!("{n} nodes online"), within, || {
        let mut nodes = nodes.clone();
        async move {
            let l = nodes
                .list_nodes(pb::ListNodesRequest {
                    return_names: true,
                    filter_by_status: pb::NodeStatus::Online as i32,
                })
                .await
                .ok()?
                .into_inner();
            (l.items.len() == n).then_some(())
        }
    })
    .await;
}

/// Creates the web cluster `name` listening on 127.0.0.1:`port`; returns its oid.
pub async fn create_web_cluster(
    web: &mut switchyard::pb::master::v1::web_cluster_service_client::WebClusterServiceClient<
        tonic::transport::Channel,
    >,
    name: &str,
    port: u16,
) -> String {
    use switchyard::pb::master::v1 as pb;
    web.create_web_cluster(pb::CreateWebClusterRequest {
        webcluster: Some(pb::WebCluster {
            name: name.to_owned(),
            tcp_port: port.into(),
            tcp_interface: Some("127.0.0.1".into()),
            ..Default::default()
        }),
    })
    .await
    .unwrap()
    .into_inner()
    .webcluster
    .unwrap()
    .oid
}

/// Creates the router cluster `name`; returns its oid.
pub async fn create_router_cluster(
    router: &mut switchyard::pb::master::v1::router_cluster_service_client::RouterClusterServiceClient<
        tonic::transport::Channel,
    >,
    name: &str,
) -> String {
    use switchyard::pb::master::v1 as pb;
    router
        .create_router_cluster(pb::CreateRouterClusterRequest {
            routercluster: Some(pb::RouterCluster {
                name: name.to_owned(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .routercluster
        .unwrap()
        .oid
}

/// Adds `node` to the router cluster `rc`, at most `hardlimit` workers on it (`None`: no limit).
pub async fn add_router_node(
    router: &mut switchyard::pb::master::v1::router_cluster_service_client::RouterClusterServiceClient<
        tonic::transport::Channel,
    >,
    rc: &str,
    node: &str,
    hardlimit: Option<u32>,
) -> Result<(), tonic::Status> {
    use switchyard::pb::master::v1 as pb;
    router
        .add_router_cluster_node(pb::AddRouterClusterNodeRequest {
            routercluster_oid: rc.to_owned(),
            node_oid: node.to_owned(),
            config: hardlimit.map(|h| pb::RouterClusterNodeConfig {
                softlimit: None,
                hardlimit: Some(h),
            }),
        })
        .await
        .map(drop)
}

/// Adds `node` (oid or name) to the web cluster `oid` with `parallel` workers, as a standby
/// member or not.
pub async fn add_web_node(
    web: &mut switchyard::pb::master::v1::web_cluster_service_client::WebClusterServiceClient<
        tonic::transport::Channel,
    >,
    oid: &str,
    node: &str,
    parallel: u32,
    standby: bool,
) {
    use switchyard::pb::master::v1 as pb;
    web.add_web_cluster_node(pb::AddWebClusterNodeRequest {
        webcluster_oid: oid.to_owned(),
        node_oid: node.to_owned(),
        config: Some(pb::WebClusterNodeConfig { parallel, standby }),
    })
    .await
    .unwrap();
}

/// A loopback port free right now (for servers started by the test, which bind it at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free loopback port outside the kernel's ephemeral range, for a server that restarts on the
/// same address: clients reconnecting to an ephemeral port while nothing listens can get that
/// very port as their source (a TCP self-connect) and keep it taken.
pub fn stable_port() -> u16 {
    let (low, _) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    // Tests of one binary run in parallel: never hand out the same port twice (the first
    // caller may not have bound it yet).
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    let start = 20000 + (std::process::id() % 8000) as u16;
    let port = (0..8000u16)
        .map(|i| 20000 + (start - 20000 + i) % 8000)
        .filter(|p| *p < low && !given.contains(p))
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below the ephemeral range");
    given.push(port);
    port
}
