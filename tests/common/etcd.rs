//! Real etcd clusters for tests: `etcd` processes (Debian's `etcd-server`, installed by
//! `scripts/test.sh`) on free loopback ports with their data in a directory of the test, killed
//! when dropped. Members can be stopped and started again (quorum tests).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::{eventually, system_tool};

/// One etcd member.
#[derive(Debug)]
struct Member {
    name: String,
    dir: PathBuf,
    client: String,
    peer: String,
    child: Option<Child>,
}

/// An etcd cluster of one or more members.
#[derive(Debug)]
pub struct Etcd {
    members: Vec<Member>,
    initial_cluster: String,
    /// Client TLS: (CA, certificate, key) PEM files; clients must present a certificate of
    /// the CA.
    tls: Option<[PathBuf; 3]>,
    /// Another address clients may reach the members at (besides 127.0.0.1).
    also_on: Option<String>,
    _tmp: Option<tempfile::TempDir>,
}

/// Loopback ports below the ephemeral range (see below) not handed out before in this test process (members
/// restart on their ports, and a client reconnecting to an ephemeral port could take it).
fn ports(n: usize) -> Vec<u16> {
    static USED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut used = USED.lock().unwrap();
    let used = used.get_or_insert_with(HashSet::new);
    // 28000..32000: below the ephemeral range, and apart from `stable_port`'s 20000..28000 (a
    // master's port chosen before its etcd starts must not be taken by that etcd).
    let start = (std::process::id() % 4000) as u16;
    let mut out = Vec::new();
    for i in 0..4000u16 {
        let p = 28000 + (start + i * 7) % 4000;
        if !used.contains(&p) && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            used.insert(p);
            out.push(p);
            if out.len() == n {
                return out;
            }
        }
    }
    panic!("no free loopback ports for etcd");
}

impl Etcd {
    /// A cluster of `n` members with its data in a temporary directory.
    pub fn start(n: usize) -> Etcd {
        let tmp = tempfile::tempdir().unwrap();
        let mut etcd = Etcd::start_in(tmp.path(), n);
        etcd._tmp = Some(tmp);
        etcd
    }

    /// A cluster of `n` members with its data under `dir`; started again on the same `dir` (in
    /// this test process), it has the same data on the same ports.
    pub fn start_in(dir: &Path, n: usize) -> Etcd {
        Etcd::launch(dir, n, None)
    }

    /// A one-member etcd serving clients over TLS only, with `cert`/`key` (signed by `ca`), and
    /// requiring client certificates of `ca`.
    pub fn start_tls(ca: &Path, cert: &Path, key: &Path) -> Etcd {
        let tmp = tempfile::tempdir().unwrap();
        let tls = [ca.to_owned(), cert.to_owned(), key.to_owned()];
        let mut etcd = Etcd::launch(tmp.path(), 1, Some(tls));
        etcd._tmp = Some(tmp);
        etcd
    }

    /// A one-member etcd reachable at 127.0.0.1 and at `addr` too (a test's veth address).
    pub fn start_also_on(addr: &str) -> Etcd {
        let tmp = tempfile::tempdir().unwrap();
        let mut etcd = Etcd::launch_on(tmp.path(), 1, None, Some(addr.to_owned()));
        etcd._tmp = Some(tmp);
        etcd
    }

    /// The client URL of the first member at the `start_also_on` address.
    pub fn endpoint_on(&self, addr: &str) -> String {
        self.members[0].client.replace("127.0.0.1", addr)
    }

    fn launch(dir: &Path, n: usize, tls: Option<[PathBuf; 3]>) -> Etcd {
        Etcd::launch_on(dir, n, tls, None)
    }

    fn launch_on(dir: &Path, n: usize, tls: Option<[PathBuf; 3]>, also_on: Option<String>) -> Etcd {
        static PORTS: Mutex<Vec<(PathBuf, Vec<u16>)>> = Mutex::new(Vec::new());
        let ports = {
            let mut known = PORTS.lock().unwrap();
            match known.iter().find(|(d, p)| d == dir && p.len() == 2 * n) {
                Some((_, p)) => p.clone(),
                None => {
                    let p = ports(2 * n);
                    known.push((dir.to_owned(), p.clone()));
                    p
                }
            }
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                dir: dir.join(format!("etcd-m{i}")),
                client: format!("{scheme}://127.0.0.1:{}", ports[2 * i]),
                peer: format!("http://127.0.0.1:{}", ports[2 * i + 1]),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Etcd {
            members,
            initial_cluster,
            tls,
            also_on,
            _tmp: None,
        };
        for i in 0..n {
            etcd.spawn(i);
        }
        for i in 0..n {
            etcd.wait_healthy(i);
        }
        etcd
    }

    fn spawn(&mut self, i: usize) {
        let tls: Vec<String> = match &self.tls {
            Some([ca, cert, key]) => vec![
                "--client-cert-auth".into(),
                format!("--trusted-ca-file={}", ca.display()),
                format!("--cert-file={}", cert.display()),
                format!("--key-file={}", key.display()),
            ],
            None => Vec::new(),
        };
        let also = self.also_on.clone();
        let m = &mut self.members[i];
        let listen = match &also {
            Some(addr) => format!("{},{}", m.client, m.client.replace("127.0.0.1", addr)),
            None => m.client.clone(),
        };
        // A member that ran before keeps its identity in its data dir; the initial-* flags are
        // then ignored. --max-txn-ops: a cluster delete removes every row of the cluster in one
        // transaction (docs/operations.md).
        let child = Command::new(system_tool("etcd"))
            .args(["--name", &m.name, "--data-dir"])
            .arg(&m.dir)
            .args([
                "--listen-client-urls",
                &listen,
                "--advertise-client-urls",
                &m.client,
            ])
            .args([
                "--listen-peer-urls",
                &m.peer,
                "--initial-advertise-peer-urls",
                &m.peer,
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "switchyard-test",
            ])
            .args([
                "--max-txn-ops",
                "10000",
                "--logger",
                "zap",
                "--log-level",
                "error",
            ])
            .args(&tls)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd");
        m.child = Some(child);
    }

    /// Waits until member `i` answers (a one-member cluster: is ready for requests).
    fn wait_healthy(&self, i: usize) {
        let client = self.members[i].client.clone();
        let tls: Vec<String> = match &self.tls {
            Some([ca, cert, key]) => vec![
                format!("--cacert={}", ca.display()),
                format!("--cert={}", cert.display()),
                format!("--key={}", key.display()),
            ],
            None => Vec::new(),
        };
        eventually(
            &format!("etcd {client} healthy"),
            Duration::from_secs(30),
            || {
                let ok = Command::new(system_tool("etcdctl"))
                    .args([
                        "--endpoints",
                        &client,
                        "--command-timeout",
                        "2s",
                        "endpoint",
                        "health",
                    ])
                    .args(&tls)
                    .env("ETCDCTL_API", "3")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                ok.then_some(())
            },
        );
    }

    /// The client URLs, comma-separated (for `--etcd-endpoints`).
    pub fn endpoints(&self) -> String {
        self.urls().join(",")
    }

    /// The client URLs.
    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }

    /// Stops member `i` (SIGKILL: like a machine that died).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data and ports; returns once the cluster answers.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// Waits until every running member answers.
    pub fn wait_all_healthy(&self) {
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_some() {
                self.wait_healthy(i);
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// The store the end-to-end masters of this test run use: `SWITCHYARD_TEST_STORE=etcd` runs
/// them on etcd (one single-member etcd per master data directory, alive while a master on it
/// runs), anything else on sled.
pub fn test_store_is_etcd() -> bool {
    std::env::var("SWITCHYARD_TEST_STORE").is_ok_and(|v| v == "etcd")
}

/// The store a stopped end-to-end master kept its state in (sled in `data_dir`, or its etcd,
/// started again on its data), to check what was written; keep the `Etcd` while reading.
pub async fn stopped_masters_store(
    data_dir: &Path,
) -> (
    std::sync::Arc<dyn switchyard_master::store::Store>,
    Option<Etcd>,
) {
    use switchyard_master::store::etcd::{EtcdConfig, EtcdStore};
    if !test_store_is_etcd() {
        let sled = switchyard_master::store::sled::SledStore::open(data_dir).unwrap();
        return (std::sync::Arc::new(sled), None);
    }
    let etcd = Etcd::start_in(data_dir, 1);
    let config = EtcdConfig::new(etcd.urls());
    let store = EtcdStore::connect(config, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    (std::sync::Arc::new(store), Some(etcd))
}
