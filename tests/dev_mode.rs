//! `switchyard-master dev`: the README's run command brings up a master and agents with a
//! generated PKI, prints how to reach them, stops them all on SIGTERM, and reuses its directory.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{eventually, grpcurl, master_bin, stdout};

/// A port P such that P, P+1 and P+2 are free right now.
fn free_port_run() -> u16 {
    eventually(
        "three consecutive free ports",
        Duration::from_secs(10),
        || {
            let base = TcpListener::bind("127.0.0.1:0")
                .ok()?
                .local_addr()
                .ok()?
                .port();
            let held: Vec<_> = (0..3)
                .map(|i| TcpListener::bind(("127.0.0.1", base.checked_add(i)?)).ok())
                .collect::<Option<_>>()?;
            drop(held);
            Some(base)
        },
    )
}

struct Dev {
    child: Child,
    banner: Vec<String>,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_dev(dir: &std::path::Path, port: u16) -> Dev {
    let log = std::fs::File::create(dir.join(format!("dev-{port}.log"))).unwrap();
    let mut child = Command::new(master_bin())
        .args([
            "dev",
            "--agents",
            "2",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--dir",
        ])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.contains("Press Ctrl-C to stop");
        banner.push(line);
        if done {
            break;
        }
    }
    assert!(
        banner.iter().any(|l| l.contains("Press Ctrl-C")),
        "dev did not come up: {banner:?}\n{}",
        std::fs::read_to_string(dir.join(format!("dev-{port}.log"))).unwrap_or_default()
    );
    // Keep draining stdout so the children never block on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Dev { child, banner }
}

fn admin_tls(dir: &std::path::Path) -> Vec<String> {
    let pki = dir.join("pki");
    [
        "-cacert",
        "ca.pem",
        "-cert",
        "admin.pem",
        "-key",
        "admin.key",
    ]
    .chunks(2)
    .flat_map(|kv| [kv[0].to_owned(), pki.join(kv[1]).display().to_string()])
    .collect()
}

#[test]
fn dev_runs_a_master_and_agents_and_stops_them() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port_run();
    let dev = start_dev(dir.path(), port);
    let master = format!("127.0.0.1:{port}");
    let node2 = format!("127.0.0.1:{}", port + 2);

    // The banner tells how to use it.
    let text = dev.banner.join("\n");
    assert!(
        text.contains(&format!("export SWITCHYARD_MASTER={master}")),
        "{text}"
    );
    assert!(text.contains("grpcurl -cacert"), "{text}");

    let tls = admin_tls(dir.path());
    let out = eventually("the master to answer", Duration::from_secs(20), || {
        let out = grpcurl(&tls, &[&master, "list"]);
        out.status.success().then_some(out)
    });
    assert!(stdout(&out).contains("switchyard.master.v1.WebClusterService"));
    let out = eventually("node2 to answer", Duration::from_secs(20), || {
        let out = grpcurl(
            &tls,
            &[
                "-d",
                "{}",
                &node2,
                "switchyard.agent.v1.NodeControllerService/GetStatus",
            ],
        );
        out.status.success().then_some(out)
    });
    assert!(
        stdout(&out).contains("\"authid\": \"node2\""),
        "{}",
        stdout(&out)
    );
    let ca = std::fs::read(dir.path().join("pki/ca.pem")).unwrap();

    // SIGTERM stops dev and every child: all three ports close, dev exits 0.
    stop(dev, &[port, port + 1, port + 2]);

    // Run again on the same directory: the PKI is reused, not replaced.
    let port = free_port_run();
    let dev = start_dev(dir.path(), port);
    assert_eq!(std::fs::read(dir.path().join("pki/ca.pem")).unwrap(), ca);
    let master = format!("127.0.0.1:{port}");
    eventually(
        "the restarted master to answer",
        Duration::from_secs(20),
        || {
            grpcurl(&tls, &[&master, "list"])
                .status
                .success()
                .then_some(())
        },
    );
    stop(dev, &[port, port + 1, port + 2]);
}

fn stop(mut dev: Dev, ports: &[u16]) {
    let pid = dev.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = eventually("dev to exit", Duration::from_secs(20), || {
        dev.child.try_wait().unwrap()
    });
    assert!(status.success(), "dev exited with {status}");
    for port in ports {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        eventually("the port to close", Duration::from_secs(10), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .is_err()
                .then_some(())
        });
    }
}
