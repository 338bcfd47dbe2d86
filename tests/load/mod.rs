//! A curl load loop for the end-to-end tests that replace web workers under traffic
//! (`rolling.rs`, `drain.rs`), and the kernel setting that hands a closing listener's queue to
//! the port's other sockets.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::common::system_tool;

/// `curl` requests in a loop, from a thread, until stopped: (answered 200, anything else).
pub struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<(u64, u64)>,
}

impl Load {
    /// 100 requests per curl process: on one keep-alive connection, or (`close`) each on a
    /// new connection.
    pub fn start(url: &str, dir: &Path, close: bool) -> Load {
        let config = dir.join(format!("curl-{close}.txt"));
        let mut f = std::fs::File::create(&config).unwrap();
        for _ in 0..100 {
            writeln!(f, "url = \"{url}\"\noutput = \"/dev/null\"").unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), answered.clone());
        let curl = system_tool("curl");
        let thread = std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, 0);
            while !flag.load(Ordering::SeqCst) {
                let mut cmd = Command::new(&curl);
                cmd.args([
                    "-s",
                    "--max-time",
                    "10",
                    "-w",
                    "%{http_code} %{errormsg}\\n",
                ]);
                if close {
                    cmd.args(["-H", "Connection: close"]);
                }
                let out = cmd.arg("-K").arg(&config).output().unwrap();
                for code in String::from_utf8_lossy(&out.stdout).lines() {
                    if code.starts_with("200 ") {
                        ok += 1;
                        count.fetch_add(1, Ordering::SeqCst);
                    } else {
                        eprintln!("failed request: {code}");
                        failed += 1;
                    }
                }
                if !out.status.success() {
                    failed += 1;
                }
            }
            (ok, failed)
        });
        Load {
            stop,
            answered,
            thread,
        }
    }

    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::SeqCst)
    }

    pub fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// Lets the kernel hand the connections queued on a closing listener to the port's other
/// sockets (`net.ipv4.tcp_migrate_req`, per network namespace), as docs/operations.md asks of
/// a node for zero-drop rolling restarts; the previous value is restored on drop.
pub struct MigrateReq(Option<String>);

const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

impl MigrateReq {
    pub fn enable() -> MigrateReq {
        let old = std::fs::read_to_string(MIGRATE_REQ).ok();
        if std::fs::write(MIGRATE_REQ, "1").is_err() {
            eprintln!(
                "cannot set {MIGRATE_REQ}: requests queued on a closing listener may be reset"
            );
        }
        MigrateReq(old)
    }
}

impl Drop for MigrateReq {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = std::fs::write(MIGRATE_REQ, old.trim());
        }
    }
}
