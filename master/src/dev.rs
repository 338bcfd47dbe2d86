//! `switchyard-master dev`: a whole local cluster for trying Switchyard out.
//!
//! Creates (or reuses) `DIR/pki` with a CA and the `master`, `admin` and `node1..N` certificates,
//! starts the master (`DIR/data`) and N agents as child processes on consecutive ports, prints how
//! to reach them, and stops them all on Ctrl-C or SIGTERM. Run again on the same DIR, it reuses
//! the PKI and the master's data.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use switchyard::auth::Role;
use switchyard::pki::{self, IssueRequest};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// Options of `dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// The directory holding `pki/` and `data/`.
    pub dir: PathBuf,
    /// Number of agents (`node1`..).
    pub agents: u16,
    /// The master's listen address; agents take the following ports.
    pub listen: SocketAddr,
    /// The agent executable (default: `switchyard-agent` next to this executable).
    pub agent_exe: Option<PathBuf>,
}

/// How long children get to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Creates what is missing of the dev PKI: the CA, `master`, `admin`, `node1..=agents`.
pub fn ensure_pki(pki_dir: &Path, agents: u16) -> anyhow::Result<()> {
    if !pki_dir.join("ca.pem").exists() {
        pki::init_ca(pki_dir)?;
    }
    let mut wanted = vec![
        (Role::Master, "master".to_owned()),
        (Role::Admin, "admin".to_owned()),
    ];
    wanted.extend((1..=agents).map(|i| (Role::Node, format!("node{i}"))));
    for (role, name) in wanted {
        if !pki_dir.join(format!("{name}.pem")).exists() {
            pki::issue(
                pki_dir,
                &IssueRequest {
                    role,
                    name,
                    sans: vec![],
                },
            )?;
        }
    }
    Ok(())
}

struct Running {
    name: String,
    child: Child,
}

/// Runs the dev cluster until `shutdown` is cancelled or a child exits.
pub async fn run(options: DevOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pki_dir = options.dir.join("pki");
    let data_dir = options.dir.join("data");
    ensure_pki(&pki_dir, options.agents).context("creating the dev PKI")?;
    let master_exe = std::env::current_exe().context("locating the master executable")?;
    let agent_exe = match options.agent_exe.clone() {
        Some(path) => path,
        None => master_exe.with_file_name("switchyard-agent"),
    };
    if !agent_exe.exists() {
        bail!(
            "agent executable {} not found (build it with `cargo build`, or pass --agent-exe)",
            agent_exe.display()
        );
    }

    let mut children = Vec::new();
    let listen = options.listen.to_string();
    let mut master = Command::new(&master_exe);
    master
        .args(["serve", "--listen", &listen, "--data-dir"])
        .arg(&data_dir)
        .arg("--pki-dir")
        .arg(&pki_dir)
        .process_group(0)
        .kill_on_drop(true);
    children.push(Running {
        name: "master".into(),
        child: master.spawn().context("starting the master")?,
    });
    if let Err(error) = wait_for_port(options.listen, &mut children).await {
        stop_all(&mut children).await;
        return Err(error);
    }

    let mut agent_addrs = Vec::new();
    for i in 1..=options.agents {
        let port = options
            .listen
            .port()
            .checked_add(i)
            .context("agent port out of range")?;
        let addr = SocketAddr::new(options.listen.ip(), port);
        let mut agent = Command::new(&agent_exe);
        agent
            .args(["serve", "--listen", &addr.to_string(), "--master", &listen])
            .args(["--name", &format!("node{i}"), "--pki-dir"])
            .arg(&pki_dir)
            .process_group(0)
            .kill_on_drop(true);
        children.push(Running {
            name: format!("node{i}"),
            child: agent
                .spawn()
                .with_context(|| format!("starting agent node{i}"))?,
        });
        agent_addrs.push(addr);
    }

    print_banner(&options, &pki_dir, &agent_addrs);

    let exited = tokio::select! {
        _ = shutdown.cancelled() => None,
        exited = first_exit(&mut children) => Some(exited),
    };
    stop_all(&mut children).await;
    match exited {
        None => Ok(()),
        Some((name, status)) => bail!("{name} exited unexpectedly ({status}); stopped the others"),
    }
}

fn print_banner(options: &DevOptions, pki_dir: &Path, agents: &[SocketAddr]) {
    let pki = pki_dir.display();
    let master = options.listen;
    println!();
    println!("Switchyard dev cluster is up.");
    println!("  master  {master}");
    for (i, addr) in agents.iter().enumerate() {
        println!("  node{}   {addr}", i + 1);
    }
    println!();
    println!("Use it with the CLI:");
    println!("  export SWITCHYARD_MASTER={master}");
    println!("  export SWITCHYARD_PKI_DIR={pki}");
    println!();
    println!("Or with grpcurl:");
    println!(
        "  grpcurl -cacert {pki}/ca.pem -cert {pki}/admin.pem -key {pki}/admin.key {master} list"
    );
    if let Some(agent) = agents.first() {
        println!(
            "  grpcurl -cacert {pki}/ca.pem -cert {pki}/admin.pem -key {pki}/admin.key -d '{{\"process\":\"controller\"}}' {agent} switchyard.agent.v1.NativeProcessService/Uptime"
        );
    }
    println!();
    println!("Press Ctrl-C to stop.");
}

/// Waits until the master accepts TCP connections (or fails if it exits first).
async fn wait_for_port(addr: SocketAddr, children: &mut [Running]) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = children[0].child.try_wait()? {
            bail!("the master exited during start-up ({status})");
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the master did not listen on {addr} within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn first_exit(children: &mut [Running]) -> (String, ExitStatus) {
    let waits = children.iter_mut().map(|r| {
        Box::pin(async move {
            let status = r.child.wait().await;
            (r.name.clone(), status)
        })
    });
    let ((name, status), _, _) = futures::future::select_all(waits).await;
    match status {
        Ok(status) => (name, status),
        Err(error) => {
            tracing::error!(%error, %name, "waiting for child failed");
            (name, ExitStatus::default())
        }
    }
}

/// SIGTERM to every child, then SIGKILL to those still running after [`STOP_GRACE`].
async fn stop_all(children: &mut [Running]) {
    for running in children.iter() {
        if let Some(pid) = running.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for running in children.iter_mut() {
        match tokio::time::timeout(STOP_GRACE, running.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(name = %running.name, "did not stop in time; killing it");
                let _ = running.child.kill().await;
            }
        }
    }
}
