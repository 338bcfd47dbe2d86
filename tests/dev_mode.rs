//! `switchyard-master dev`: the README's run command brings up a master and agents with a
//! generated PKI, prints how to reach them, stops them all on SIGTERM, and reuses its directory.
//! An agent that dies is reported and restarted (the rest keep running); a master that dies
//! takes the whole dev cluster down with a failure.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{eventually, grpcurl, master_bin, process_gone, stdout};

/// A port P such that P..P+count are free right now.
fn free_port_run(count: u16) -> u16 {
    eventually("consecutive free ports", Duration::from_secs(10), || {
        let base = TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let held: Vec<_> = (0..count)
            .map(|i| TcpListener::bind(("127.0.0.1", base.checked_add(i)?)).ok())
            .collect::<Option<_>>()?;
        drop(held);
        Some(base)
    })
}

struct Dev {
    child: Child,
    banner: Vec<String>,
    log: std::path::PathBuf,
}

impl Dev {
    /// What dev and its children wrote to stderr so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with the log) if dev has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("dev exited ({status}); log:\n{}", self.log());
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_dev(dir: &std::path::Path, port: u16, agents: u16) -> Dev {
    start_dev_with(dir, port, agents, &[])
}

fn start_dev_with(dir: &std::path::Path, port: u16, agents: u16, extra: &[&str]) -> Dev {
    let log_path = dir.join(format!("dev-{port}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(master_bin())
        .args([
            "dev",
            "--agents",
            &agents.to_string(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--dir",
        ])
        .arg(dir)
        .args(extra)
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
    Dev {
        child,
        banner,
        log: log_path,
    }
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
    let port = free_port_run(3);
    let dev = start_dev(dir.path(), port, 2);
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
    let port = free_port_run(3);
    let dev = start_dev(dir.path(), port, 2);
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

const ONLINE: &str = "NODE_STATUS_ONLINE";
const OFFLINE: &str = "NODE_STATUS_OFFLINE";

#[test]
fn dev_reports_and_restarts_a_killed_agent_and_keeps_the_rest_running() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port_run(4);
    let mut dev = start_dev(dir.path(), port, 3);
    let master = format!("127.0.0.1:{port}");
    let tls = admin_tls(dir.path());
    let names = ["node1", "node2", "node3"];
    eventually(
        "the three nodes to be ONLINE",
        Duration::from_secs(30),
        || (nodes(&tls, &master, ONLINE)? == names).then_some(()),
    );
    let dev_pid = dev.child.id();
    let pids: Vec<u32> = ["master", "node1", "node2", "node3"]
        .iter()
        .map(|name| {
            eventually(
                &format!("the {name} process"),
                Duration::from_secs(10),
                || dev_child(dev_pid, name),
            )
        })
        .collect();
    let killed = pids[2];

    signal(killed, "KILL");

    // The master sees the node go; dev says which agent died and how, and keeps running.
    eventually("node2 to go OFFLINE", Duration::from_secs(20), || {
        dev.assert_running();
        nodes(&tls, &master, OFFLINE)?
            .contains(&"node2".to_owned())
            .then_some(())
    });
    let died = eventually(
        "dev to report node2's death",
        Duration::from_secs(10),
        || {
            dev.log()
                .lines()
                .find(|l| l.contains("agent died") && l.contains("node2"))
                .map(str::to_owned)
        },
    );
    assert!(died.contains(&format!("pid={killed}")), "{died}");
    assert!(died.contains("SIGKILL"), "{died}");

    // A new agent process comes up for node2, and node2 is back online.
    let restarted = eventually("a new node2 process", Duration::from_secs(60), || {
        dev.assert_running();
        dev_child(dev_pid, "node2").filter(|pid| *pid != killed)
    });
    eventually("node2 to be ONLINE again", Duration::from_secs(30), || {
        dev.assert_running();
        (nodes(&tls, &master, ONLINE)? == names).then_some(())
    });
    let log = dev.log();
    assert!(
        log.lines().any(|l| l.contains("agent restarted")
            && l.contains("node2")
            && l.contains(&format!("pid={restarted}"))),
        "no restart line for node2 (pid {restarted}):\n{log}"
    );

    // The master and the other agents are the same processes as before.
    for (name, pid) in [("master", pids[0]), ("node1", pids[1]), ("node3", pids[3])] {
        assert_eq!(
            dev_child(dev_pid, name),
            Some(pid),
            "{name}'s process changed"
        );
    }

    // SIGTERM still stops every child, the restarted one included, and none is restarted.
    stop(dev, &[port, port + 1, port + 2, port + 3]);
    for pid in pids.iter().chain([&restarted]) {
        assert!(process_gone(*pid), "process {pid} outlived dev");
    }
    let left = processes_using(dir.path());
    assert!(left.is_empty(), "left running after dev stopped: {left:?}");
}

#[test]
fn dev_stops_everything_and_fails_when_the_master_dies() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port_run(3);
    let mut dev = start_dev(dir.path(), port, 2);
    let master = format!("127.0.0.1:{port}");
    let tls = admin_tls(dir.path());
    eventually(
        "the two nodes to be ONLINE",
        Duration::from_secs(30),
        || (nodes(&tls, &master, ONLINE)? == ["node1", "node2"]).then_some(()),
    );
    let dev_pid = dev.child.id();
    let pids: Vec<u32> = ["master", "node1", "node2"]
        .iter()
        .map(|name| dev_child(dev_pid, name).unwrap_or_else(|| panic!("no {name} process")))
        .collect();

    signal(pids[0], "KILL");

    let status = eventually("dev to exit", Duration::from_secs(20), || {
        dev.child.try_wait().unwrap()
    });
    assert!(!status.success(), "dev exited with {status}");
    let log = dev.log();
    assert!(
        log.lines().any(|l| l.contains("master died")
            && l.contains(&format!("pid={}", pids[0]))
            && l.contains("SIGKILL")),
        "{log}"
    );
    for pid in &pids {
        assert!(process_gone(*pid), "process {pid} outlived dev");
    }
    let left = processes_using(dir.path());
    assert!(left.is_empty(), "left running after dev failed: {left:?}");
}

/// The node names in `status`, from ListNodes with the admin certificate (`None`: no answer).
fn nodes(tls: &[String], master: &str, status: &str) -> Option<Vec<String>> {
    let request = format!(r#"{{"return_names": true, "filter_by_status": "{status}"}}"#);
    let out = grpcurl(
        tls,
        &[
            "-d",
            &request,
            master,
            "switchyard.master.v1.NodeService/ListNodes",
        ],
    );
    if !out.status.success() {
        return None;
    }
    let reply: serde_json::Value = serde_json::from_str(&stdout(&out)).ok()?;
    let items = reply["items"].as_array().map_or(&[][..], Vec::as_slice);
    Some(
        items
            .iter()
            .filter_map(|item| Some(item.as_str()?.to_owned()))
            .collect(),
    )
}

/// Sends `SIG<sig>` to `pid` with kill(1).
fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

/// The live processes, each with its parent pid and command line (empty for a zombie).
fn processes() -> Vec<(u32, u32, Vec<String>)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid ...`: comm may hold spaces, so split after the last ')'.
            let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
            let (state, ppid) = (rest.next()?, rest.next()?.parse().ok()?);
            if state == "Z" {
                return None;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Some((pid, ppid, args))
        })
        .collect()
}

/// The pid of dev's live child `name`: "master" (`switchyard-master serve`) or an agent's node
/// name (`switchyard-agent serve --name NAME`).
fn dev_child(dev_pid: u32, name: &str) -> Option<u32> {
    processes().into_iter().find_map(|(pid, ppid, args)| {
        let exe = std::path::Path::new(args.first()?).file_name()?.to_str()?;
        let is_it = match name {
            "master" => exe == "switchyard-master" && args.get(1)? == "serve",
            node => exe == "switchyard-agent" && args.windows(2).any(|w| w == ["--name", node]),
        };
        (ppid == dev_pid && is_it).then_some(pid)
    })
}

/// Master and agent processes whose command line names `dir` (the dev directory), whatever their
/// parent now: what a dev run would leave behind.
fn processes_using(dir: &std::path::Path) -> Vec<(u32, Vec<String>)> {
    let dir = dir.to_string_lossy();
    processes()
        .into_iter()
        .filter(|(_, _, args)| {
            let exe = args.first().map_or("", String::as_str);
            (exe.ends_with("switchyard-agent") || exe.ends_with("switchyard-master"))
                && args.iter().any(|a| a.contains(dir.as_ref()))
        })
        .map(|(pid, _, args)| (pid, args))
        .collect()
}

/// The leader's address and the number of followers as `switchyard masters` (given every
/// master) shows them.
fn leader_by_cli(dir: &std::path::Path, masters: &str) -> Option<(String, usize)> {
    let out = Command::new(common::cli_bin())
        .args(["--master", masters, "--pki-dir"])
        .arg(dir.join("pki"))
        .arg("masters")
        .output()
        .ok()?;
    let table = stdout(&out);
    let leaders: Vec<&str> = table.lines().filter(|l| l.contains("LEADER")).collect();
    let followers = table.lines().filter(|l| l.contains("FOLLOWER")).count();
    let leader = leaders.first()?.split_whitespace().nth(1)?.to_owned();
    (leaders.len() == 1).then_some((leader, followers))
}

#[test]
fn dev_runs_three_masters_on_a_local_etcd_and_a_follower_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port_run(4);
    let dev = start_dev_with(dir.path(), port, 1, &["--masters", "3"]);
    let masters: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", port + i)).collect();
    let list = masters.join(",");
    let text = dev.banner.join("\n");
    assert!(
        text.contains(&format!("export SWITCHYARD_MASTER={list}")),
        "{text}"
    );
    for m in &masters {
        assert!(
            text.contains(&format!("pkill -9 -f 'serve --listen {m} '")),
            "{text}"
        );
    }
    let leader = eventually(
        "one leader and two followers",
        Duration::from_secs(20),
        || {
            leader_by_cli(dir.path(), &list)
                .and_then(|(l, followers)| (followers == 2).then_some(l))
        },
    );
    // Killed the way the banner says, the leader is replaced by a follower.
    let killed = Command::new("pkill")
        .args(["-9", "-f", &format!("serve --listen {leader} ")])
        .status()
        .unwrap();
    assert!(killed.success());
    eventually("a follower to lead", Duration::from_secs(15), || {
        leader_by_cli(dir.path(), &list).filter(|(l, _)| *l != leader)
    });
    assert!(
        dev.log().contains("master died; restarting it"),
        "dev says the master died: {}",
        dev.log()
    );
    stop(dev, &[port, port + 1, port + 2, port + 3, port + 100]);
}
