//! `switchyard-master dev`: a whole local cluster for trying Switchyard out.
//!
//! Creates (or reuses) `DIR/pki` with a CA and the `master`, `admin` and `node1..N` certificates,
//! starts the master (`DIR/data`) and N agents as child processes on consecutive ports, prints how
//! to reach them, and stops them all on Ctrl-C or SIGTERM. Run again on the same DIR, it reuses
//! the PKI and the master's data.
//!
//! With `--masters N` (N > 1), dev also starts a one-member etcd (the `etcd` executable from
//! PATH, Debian's `etcd-server`; data in `DIR/etcd`) and N masters `m1..mN` on it, on the ports
//! from `--listen` on, the agents after them: kill the leader (`switchyard masters` names it)
//! and watch a follower take over (docs/operations.md, "Several masters"). Those masters are
//! supervised like agents: one that dies is started again.
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
    /// Number of masters: 1 (on sled), or several on a local etcd.
    pub masters: u16,
}

impl DevOptions {
    /// The masters' names: `master` alone, or `m1..mN`.
    fn master_names(&self) -> Vec<String> {
        match self.masters {
            0 | 1 => vec!["master".to_owned()],
            n => (1..=n).map(|i| format!("m{i}")).collect(),
        }
    }

    /// The address of the `i`th master (from 0).
    fn master_addr(&self, i: u16) -> SocketAddr {
        SocketAddr::new(self.listen.ip(), self.listen.port().saturating_add(i))
    }

    /// Every master's address, as agents and the CLI take them.
    fn master_list(&self) -> String {
        (0..self.masters.max(1))
            .map(|i| self.master_addr(i).to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
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

/// Creates what is missing of the dev PKI: the CA, `master` (or `m1..mN`), `admin`,
/// `node1..=agents`.
pub fn ensure_pki(pki_dir: &Path, agents: u16, masters: &[String]) -> anyhow::Result<()> {
    if !pki_dir.join("ca.pem").exists() {
        pki::init_ca(pki_dir)?;
    }
    let mut wanted: Vec<(Role, String)> =
        masters.iter().map(|m| (Role::Master, m.clone())).collect();
    wanted.push((Role::Admin, "admin".to_owned()));
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
    if options.masters > 1 {
        return run_several(options, shutdown).await;
    }
    let pki_dir = options.dir.join("pki");
    ensure_pki(&pki_dir, options.agents, &options.master_names())
        .context("creating the dev PKI")?;
    let (master_exe, agent_exe) = executables(&options)?;
    let runtime_dir = runtime_dir();
    let agents = agent_specs(&options, &agent_exe, &pki_dir, &runtime_dir)?;
    let mut master = master_command(&master_exe, &options, &pki_dir)
        .spawn()
        .context("starting the master")?;
    tracing::info!(pid = master.id(), "master started");
    if let Err(error) = wait_for_port("the master", options.listen, &mut master).await {
        stop_child("master", &mut master).await;
        return Err(error);
    }

    let stop_agents = shutdown.child_token();
    let supervisors = TaskTracker::new();
    let result = match start_children(agents, &supervisors, &stop_agents) {
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

/// The master's and the agent's executables.
fn executables(options: &DevOptions) -> anyhow::Result<(PathBuf, PathBuf)> {
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
    Ok((master_exe, agent_exe))
}

/// `dev --masters N`: a local etcd, N masters on it, the agents; until `shutdown`.
async fn run_several(options: DevOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pki_dir = options.dir.join("pki");
    let names = options.master_names();
    ensure_pki(&pki_dir, options.agents, &names).context("creating the dev PKI")?;
    let (master_exe, agent_exe) = executables(&options)?;
    let etcd_exe = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .context("--masters needs etcd on PATH: install Debian's etcd-server (apt-get install etcd-server)")?;
    let port = |offset: u16| {
        options
            .listen
            .port()
            .checked_add(offset)
            .context("port out of range")
    };
    let etcd_addr = SocketAddr::new(options.listen.ip(), port(100)?);
    let (client, peer) = (
        format!("http://{etcd_addr}"),
        format!("http://{}:{}", options.listen.ip(), port(101)?),
    );
    let mut etcd = Command::new(etcd_exe)
        .arg("--data-dir")
        .arg(options.dir.join("etcd"))
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("default={peer}")])
        .args([
            "--max-txn-ops",
            "1024",
            "--logger",
            "zap",
            "--log-level",
            "error",
        ])
        .stdout(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("starting etcd")?;
    wait_for_port("etcd", etcd_addr, &mut etcd).await?;
    let masters: Vec<ChildSpec> = names
        .iter()
        .zip(0u16..)
        .map(|(name, i)| {
            let listen = options.master_addr(i);
            let args = [
                "serve".into(),
                "--listen".into(),
                listen.to_string().into(),
                "--name".into(),
                name.into(),
                "--store".into(),
                "etcd".into(),
                "--etcd-endpoints".into(),
                client.clone().into(),
                "--pki-dir".into(),
                pki_dir.clone().into(),
            ];
            ChildSpec {
                kind: "master",
                name: name.clone(),
                exe: master_exe.clone(),
                listen,
                args: args.into(),
            }
        })
        .collect();
    let runtime_dir = runtime_dir();
    let agents = agent_specs(&options, &agent_exe, &pki_dir, &runtime_dir)?;
    let stop = shutdown.child_token();
    let supervisors = TaskTracker::new();
    let started = start_children(masters, &supervisors, &stop)
        .and_then(|m| Ok((m, start_children(agents, &supervisors, &stop)?)));
    let result =
        started.map(|(masters, agents)| print_several(&options, &pki_dir, &masters, &agents));
    if result.is_ok() {
        shutdown.cancelled().await;
    }
    stop.cancel();
    supervisors.close();
    supervisors.wait().await;
    stop_child("etcd", &mut etcd).await;
    let _ = std::fs::remove_dir_all(&runtime_dir);
    result
}

fn print_several(
    options: &DevOptions,
    pki_dir: &Path,
    masters: &[SocketAddr],
    agents: &[SocketAddr],
) {
    let pki = pki_dir.display();
    println!();
    println!(
        "Switchyard dev control plane is up: {} masters on a local etcd.",
        masters.len()
    );
    for (i, addr) in masters.iter().enumerate() {
        println!("  m{}      {addr}", i + 1);
    }
    for (i, addr) in agents.iter().enumerate() {
        println!("  node{}   {addr}", i + 1);
    }
    println!();
    println!("Use it with the CLI (any master answers):");
    println!("  export SWITCHYARD_MASTER={}", options.master_list());
    println!("  export SWITCHYARD_PKI_DIR={pki}");
    println!("  switchyard masters        # which one leads");
    println!();
    println!(
        "Kill the leader and watch a follower take over within about 2 s (dev starts it again):"
    );
    for addr in masters {
        println!("  pkill -9 -f 'serve --listen {addr} '");
    }
    println!();
    println!("Press Ctrl-C to stop.");
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

/// What it takes to start one supervised child (an agent, or one of several masters), the same
/// every time: for an agent its name, port, certificate (`pki_dir` holds `NAME.pem`) and runtime
/// directory.
struct ChildSpec {
    /// "agent" or "master", for the log.
    kind: &'static str,
    name: String,
    exe: PathBuf,
    listen: SocketAddr,
    args: Vec<std::ffi::OsString>,
}

impl ChildSpec {
    fn spawn(&self) -> anyhow::Result<Child> {
        Command::new(&self.exe)
            .args(&self.args)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.name))
    }
}

/// `node1..=N` on the ports after the master's.
fn agent_specs(
    options: &DevOptions,
    exe: &Path,
    pki_dir: &Path,
    runtime_dir: &Path,
) -> anyhow::Result<Vec<ChildSpec>> {
    (1..=options.agents)
        .map(|i| {
            let port = options
                .listen
                .port()
                .checked_add(i + options.masters.max(1) - 1);
            let name = format!("node{i}");
            let listen = SocketAddr::new(
                options.listen.ip(),
                port.context("agent port out of range")?,
            );
            let args = [
                "serve".into(),
                "--listen".into(),
                listen.to_string().into(),
                "--master".into(),
                options.master_list().into(),
                "--name".into(),
                name.clone().into(),
                "--pki-dir".into(),
                pki_dir.into(),
                "--runtime-dir".into(),
                runtime_dir.join(&name).into(),
            ];
            Ok(ChildSpec {
                kind: "agent",
                listen,
                exe: exe.to_owned(),
                args: args.into(),
                name,
            })
        })
        .collect()
}

/// Starts every agent and hands each to its supervisor on `supervisors`; returns their addresses.
/// An agent that cannot start at all is an error (the ones already started stop with `stop`).
fn start_children(
    agents: Vec<ChildSpec>,
    supervisors: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::new();
    for spec in agents {
        let child = spec.spawn()?;
        tracing::info!(name = %spec.name, pid = child.id(), "{} started", spec.kind);
        addrs.push(spec.listen);
        let span = tracing::info_span!("dev_child", child = %spec.name);
        supervisors.spawn(supervise_agent(spec, child, stop.clone()).instrument(span));
    }
    Ok(addrs)
}

/// Keeps one agent running until `stop`, then stops it: each death is logged and followed by a
/// restart after the [`Backoff`] delay. Runs in a `dev_agent` span naming the agent.
async fn supervise_agent(spec: ChildSpec, mut child: Child, stop: CancellationToken) {
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
                "{} died; restarting it", spec.kind
            ),
            Err(error) => tracing::error!(
                                pid,
                %error,
                restart_in = ?delay,
                "waiting for the {} failed; restarting it", spec.kind
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
    spec: &ChildSpec,
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
                tracing::info!(pid = child.id(), "{} restarted", spec.kind);
                return Some(child);
            }
            Err(error) => {
                delay = backoff.delay(Duration::ZERO);
                tracing::error!(error = format!("{error:#}"), retry_in = ?delay, "could not restart the {}", spec.kind);
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

/// Waits until `child` (`what`) accepts TCP connections at `addr` (or fails if it exits first).
async fn wait_for_port(what: &str, addr: SocketAddr, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited during start-up ({})", describe(status));
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on {addr} within 15 s");
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
