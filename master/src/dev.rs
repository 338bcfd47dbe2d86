//! `switchyard-master dev`: a whole local cluster for trying Switchyard out.
//!
//! Creates (or reuses) `DIR/pki` with a CA and the `master`, `admin` and `node1..N` certificates,
//! starts the master (`DIR/data`) and N agents as child processes on consecutive ports, prints how
//! to reach them, and stops them all on Ctrl-C or SIGTERM. Run again on the same DIR, it reuses
//! the PKI and the master's data.
//!
//! Each child has a small supervisor. An agent that dies is logged (name, pid, exit code or
//! signal) and started again, with the same name, port, certificate and runtime directory, after
//! a delay of a few heartbeat graces: long enough for the master to see its node offline and move
//! its work elsewhere. An agent that keeps dying waits longer each time (doubling, capped). The
//! master is what dev demonstrates, so when it dies dev stops the agents and fails.

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use switchyard::auth::Role;
use switchyard::pki::{self, IssueRequest};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::core::HeartbeatConfig;

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

/// The longest wait before restarting an agent; an agent that ran this long starts over from
/// the first delay when it dies.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);

/// The first wait before restarting a dead agent: four heartbeat graces of the master `dev`
/// runs (it uses the defaults), so its node is offline and its work re-placed before it returns.
fn first_restart_delay() -> Duration {
    HeartbeatConfig::default().grace * 4
}

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

/// Runs the dev cluster until `shutdown` is cancelled (then `Ok`) or the master dies (an error).
pub async fn run(options: DevOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pki_dir = options.dir.join("pki");
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
    let runtime_dir = runtime_dir();
    let agents = agent_specs(&options, &agent_exe, &pki_dir, &runtime_dir)?;

    let mut master = master_command(&master_exe, &options, &pki_dir)
        .spawn()
        .context("starting the master")?;
    tracing::info!(pid = master.id(), "master started");
    if let Err(error) = wait_for_port(options.listen, &mut master).await {
        stop_child("master", &mut master).await;
        return Err(error);
    }

    let stop_agents = shutdown.child_token();
    let supervisors = TaskTracker::new();
    let result = match start_agents(agents, &supervisors, &stop_agents) {
        Ok(addrs) => {
            print_banner(&options, &pki_dir, &addrs);
            supervise_master(master, &shutdown).await
        }
        Err(error) => {
            stop_child("master", &mut master).await;
            Err(error)
        }
    };
    stop_agents.cancel();
    supervisors.close();
    supervisors.wait().await;
    let _ = std::fs::remove_dir_all(&runtime_dir);
    result
}

/// The parent of the agents' runtime directories: one per dev run (named after its pid), so a
/// restarted agent finds its own again.
fn runtime_dir() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map_or_else(std::env::temp_dir, PathBuf::from)
        .join(format!("switchyard-dev-{}", std::process::id()))
}

fn master_command(exe: &Path, options: &DevOptions, pki_dir: &Path) -> Command {
    let mut master = Command::new(exe);
    master
        .args([
            "serve",
            "--listen",
            &options.listen.to_string(),
            "--data-dir",
        ])
        .arg(options.dir.join("data"))
        .arg("--pki-dir")
        .arg(pki_dir)
        .process_group(0)
        .kill_on_drop(true);
    master
}

/// Runs until `shutdown` (then stops the master) or until the master exits: an error, since the
/// master is what dev demonstrates.
async fn supervise_master(mut master: Child, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let pid = master.id();
    let status = tokio::select! {
        _ = shutdown.cancelled() => {
            stop_child("master", &mut master).await;
            return Ok(());
        }
        status = master.wait() => status.context("waiting for the master")?,
    };
    let how = describe(status);
    tracing::error!(pid, status = %how, "the master died; stopping the agents");
    bail!("the master died ({how}); stopped the agents")
}

/// What it takes to start one agent, the same every time: name, port, certificate (`pki_dir`
/// holds `NAME.pem`) and runtime directory.
struct AgentSpec {
    name: String,
    exe: PathBuf,
    listen: SocketAddr,
    master: SocketAddr,
    pki_dir: PathBuf,
    runtime_dir: PathBuf,
}

impl AgentSpec {
    fn spawn(&self) -> anyhow::Result<Child> {
        Command::new(&self.exe)
            .args(["serve", "--listen", &self.listen.to_string()])
            .args(["--master", &self.master.to_string(), "--name", &self.name])
            .arg("--pki-dir")
            .arg(&self.pki_dir)
            .arg("--runtime-dir")
            .arg(&self.runtime_dir)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting agent {}", self.name))
    }
}

/// `node1..=N` on the ports after the master's.
fn agent_specs(
    options: &DevOptions,
    exe: &Path,
    pki_dir: &Path,
    runtime_dir: &Path,
) -> anyhow::Result<Vec<AgentSpec>> {
    (1..=options.agents)
        .map(|i| {
            let port = options.listen.port().checked_add(i);
            let name = format!("node{i}");
            Ok(AgentSpec {
                listen: SocketAddr::new(
                    options.listen.ip(),
                    port.context("agent port out of range")?,
                ),
                master: options.listen,
                exe: exe.to_owned(),
                pki_dir: pki_dir.to_owned(),
                runtime_dir: runtime_dir.join(&name),
                name,
            })
        })
        .collect()
}

/// Starts every agent and hands each to its supervisor on `supervisors`; returns their addresses.
/// An agent that cannot start at all is an error (the ones already started stop with `stop`).
fn start_agents(
    agents: Vec<AgentSpec>,
    supervisors: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::new();
    for spec in agents {
        let child = spec.spawn()?;
        tracing::info!(agent = %spec.name, pid = child.id(), "agent started");
        addrs.push(spec.listen);
        let span = tracing::info_span!("dev_agent", agent = %spec.name);
        supervisors.spawn(supervise_agent(spec, child, stop.clone()).instrument(span));
    }
    Ok(addrs)
}

/// Keeps one agent running until `stop`, then stops it: each death is logged and followed by a
/// restart after the [`Backoff`] delay. Runs in a `dev_agent` span naming the agent.
async fn supervise_agent(spec: AgentSpec, mut child: Child, stop: CancellationToken) {
    let mut backoff = Backoff::new(first_restart_delay(), MAX_RESTART_DELAY);
    loop {
        let started = Instant::now();
        let pid = child.id();
        let status = tokio::select! {
            _ = stop.cancelled() => return stop_child(&spec.name, &mut child).await,
            status = child.wait() => status,
        };
        let delay = backoff.delay(started.elapsed());
        match status {
            Ok(status) => tracing::warn!(
                                pid,
                status = %describe(status),
                restart_in = ?delay,
                "agent died; restarting it"
            ),
            Err(error) => tracing::error!(
                                pid,
                %error,
                restart_in = ?delay,
                "waiting for the agent failed; restarting it"
            ),
        }
        match restart(&spec, delay, &mut backoff, &stop).await {
            Some(next) => child = next,
            None => return,
        }
    }
}

/// Waits `delay`, then starts the agent again (if that fails, waits the next backoff delay and
/// tries again). `None` when `stop` comes first.
async fn restart(
    spec: &AgentSpec,
    mut delay: Duration,
    backoff: &mut Backoff,
    stop: &CancellationToken,
) -> Option<Child> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        match spec.spawn() {
            Ok(child) => {
                tracing::info!(pid = child.id(), "agent restarted");
                return Some(child);
            }
            Err(error) => {
                delay = backoff.delay(Duration::ZERO);
                tracing::error!(error = format!("{error:#}"), retry_in = ?delay, "could not restart the agent");
            }
        }
    }
}

/// Restart delays of one agent: `first`, then doubling up to `max` while it keeps dying; back to
/// `first` after a run of at least `max`.
#[derive(Debug)]
struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The delay before the next start, after a run of `ran_for`.
    fn delay(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.max {
            self.next = self.first;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

/// How a child ended, for the log: "exited with code 1" or "killed by signal 9 (SIGKILL)".
fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    match status.signal() {
        Some(number) => {
            let name = Signal::try_from(number).map_or("unknown signal", Signal::as_str);
            let core = if status.core_dumped() {
                ", core dumped"
            } else {
                ""
            };
            format!("killed by signal {number} ({name}{core})")
        }
        None => status.to_string(),
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
async fn wait_for_port(addr: SocketAddr, master: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = master.try_wait()? {
            bail!("the master exited during start-up ({})", describe(status));
        }
        if Instant::now() > deadline {
            bail!("the master did not listen on {addr} within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM, then SIGKILL if `child` still runs after [`STOP_GRACE`].
async fn stop_child(name: &str, child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(%name, "did not stop in time; killing it");
        let _ = child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn backoff_doubles_up_to_the_cap_while_the_agent_keeps_dying() {
        let mut backoff = Backoff::new(6 * SECOND, 60 * SECOND);
        let delays: Vec<_> = (0..6).map(|_| backoff.delay(SECOND).as_secs()).collect();
        assert_eq!(delays, [6, 12, 24, 48, 60, 60]);
    }

    #[test]
    fn backoff_starts_over_after_a_long_run() {
        let mut backoff = Backoff::new(6 * SECOND, 60 * SECOND);
        backoff.delay(SECOND);
        backoff.delay(SECOND);
        assert_eq!(backoff.delay(60 * SECOND), 6 * SECOND);
        assert_eq!(backoff.delay(SECOND), 12 * SECOND);
    }

    #[test]
    fn the_first_restart_waits_until_the_node_is_offline() {
        assert!(first_restart_delay() >= HeartbeatConfig::default().grace * 2);
        assert!(first_restart_delay() < MAX_RESTART_DELAY);
    }

    #[test]
    fn deaths_are_described_by_exit_code_or_signal() {
        assert_eq!(describe(ExitStatus::from_raw(3 << 8)), "exited with code 3");
        assert_eq!(
            describe(ExitStatus::from_raw(9)),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            describe(ExitStatus::from_raw(11 | 0x80)),
            "killed by signal 11 (SIGSEGV, core dumped)"
        );
    }
}
