//! The worker process: `switchyard-agent worker ...`, spawned by the agent (never by hand).
//!
//! It pins itself to its CPU set before any thread exists and serves NativeProcessService and
//! its web or router controls on its control socket until SIGTERM. It outlives its agent: when
//! the agent that serves it is gone (a restart, or a crash), it keeps serving and waits
//! `--adopt-grace` for a new agent on the same runtime directory to adopt it (connect with the
//! agent key, [`super::control`]); unclaimed by then, it removes its files and exits by itself,
//! so it never runs without an agent controlling it for longer than the grace.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use switchyard::pb::agent::v1::native_process_service_server::NativeProcessServiceServer;
use switchyard::pb::agent::v1::node_controller_service_server::NodeControllerServiceServer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::control::{self, AgentKey};
use super::pid::ProcessId;
use crate::events::EventBus;
use crate::process::{LocalProcess, affinity, gc};

/// What the agent passes to a worker on its command line (the hidden `worker` subcommand).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// The worker id.
    #[arg(long)]
    pub id: String,
    /// The node's authid (for `nodeinfo`).
    #[arg(long)]
    pub node: String,
    /// "web" or "router".
    #[arg(long = "type", value_parser = ["web", "router"])]
    pub kind: String,
    /// The control socket to serve on (in the agent's runtime directory).
    #[arg(long)]
    pub control: PathBuf,
    /// The pid of the agent that starts this worker.
    #[arg(long)]
    pub parent_pid: u32,
    /// The runtime directory's agent key, which the agent presents on the control socket.
    #[arg(long)]
    pub agent_key: PathBuf,
    /// Seconds to keep serving without an agent, waiting to be adopted, before exiting.
    #[arg(long, default_value_t = 30.0)]
    pub adopt_grace: f64,
    /// CPUs to pin to before starting (empty: inherit).
    #[arg(long, value_delimiter = ',')]
    pub cpu_affinity: Vec<u32>,
    /// Seconds a stopping web worker lets its open connections finish (after its listener
    /// closed) before it ends them; below the agent's stop timeout.
    #[arg(long, default_value_t = 4.0)]
    pub drain_timeout: f64,
    /// Test hook: allocate and free this many MiB at start (see [`gc::ballast`]).
    #[arg(long, default_value_t = 0)]
    pub ballast_mib: usize,
}

/// Runs the worker until SIGTERM, or until it was left without an agent for the grace.
pub fn run(args: WorkerArgs) -> ExitCode {
    let Some(agent) = ProcessId::of(args.parent_pid)
        .filter(|_| nix::unistd::getppid().as_raw() as u32 == args.parent_pid)
    else {
        eprintln!("worker {}: the agent is gone; exiting", args.id);
        return ExitCode::FAILURE;
    };
    if !(args.adopt_grace.is_finite() && args.adopt_grace > 0.0) {
        eprintln!("worker {}: --adopt-grace must be positive", args.id);
        return ExitCode::FAILURE;
    }
    if !(args.drain_timeout.is_finite() && args.drain_timeout >= 0.0) {
        eprintln!("worker {}: --drain-timeout must not be negative", args.id);
        return ExitCode::FAILURE;
    }
    if !args.cpu_affinity.is_empty()
        && let Err(e) = affinity::set_process(std::process::id(), &args.cpu_affinity)
    {
        eprintln!("worker {}: cannot set CPU affinity: {e}", args.id);
        return ExitCode::FAILURE;
    }
    if args.ballast_mib > 0 {
        gc::ballast(args.ballast_mib);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("worker {}: {e}", args.id);
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(args, agent))
}

async fn serve(args: WorkerArgs, agent: ProcessId) -> ExitCode {
    let shutdown = switchyard::shutdown::on_signal();
    let key = match AgentKey::load(&args.agent_key) {
        Ok(key) => key,
        Err(e) => {
            eprintln!("worker {}: cannot read the agent key: {e}", args.id);
            return ExitCode::FAILURE;
        }
    };
    let (agent_tx, agent_rx) = watch::channel(agent);
    let incoming = match control::listen(&args.control, key, move |pid| adopted_by(&agent_tx, pid))
    {
        Ok(incoming) => incoming,
        Err(e) => {
            eprintln!(
                "worker {}: cannot listen on {}: {e}",
                args.id,
                args.control.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let grace = Duration::from_secs_f64(args.adopt_grace);
    tokio::spawn(watch_agent(agent_rx, grace, args.clone(), shutdown.clone()));
    let local = LocalProcess::new(&args.id, EventBus::default(), shutdown.clone());
    let streams = shutdown.clone();
    tracing::info!(worker = %args.id, kind = %args.kind, pid = std::process::id(), "worker serving");
    let builder =
        tonic::transport::Server::builder().add_service(NativeProcessServiceServer::new(local));
    let mut drained = None;
    let builder = if args.kind == "router" {
        builder.add_service(NodeControllerServiceServer::new(
            super::router_control::RouterControl::new(&args.id, shutdown.clone()),
        ))
    } else {
        let web = std::sync::Arc::new(super::web_control::WebControl::new(
            args.node.clone(),
            args.id.clone(),
        ));
        // On SIGTERM the listener closes at once and its connections drain meanwhile.
        let (stopping, timeout) = (
            shutdown.clone(),
            Duration::from_secs_f64(args.drain_timeout),
        );
        let drainer = web.clone();
        drained = Some(tokio::spawn(async move {
            stopping.cancelled().await;
            drainer.drain(timeout).await;
        }));
        builder.add_service(NodeControllerServiceServer::from_arc(web))
    };
    let served = builder
        .serve_with_incoming_shutdown(incoming, streams.cancelled_owned())
        .await;
    if let Some(drained) = drained {
        let _ = drained.await;
    }
    let _ = std::fs::remove_file(&args.control);
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker {}: {e}", args.id);
            ExitCode::FAILURE
        }
    }
}

/// Records that agent `pid` connected with the key: it is the agent serving this worker now.
fn adopted_by(agent: &watch::Sender<ProcessId>, pid: u32) {
    agent.send_if_modified(|current| {
        if current.pid == pid && current.is_running() {
            return false;
        }
        match ProcessId::of(pid) {
            Some(new) if new != *current => {
                tracing::info!(agent = pid, "adopted by a new agent");
                *current = new;
                true
            }
            _ => false,
        }
    });
}

/// Waits while the current agent runs; when it is gone, waits `grace` for a new one, and
/// without one ends the worker (its files removed, so no later agent restarts it).
async fn watch_agent(
    mut agent: watch::Receiver<ProcessId>,
    grace: Duration,
    args: WorkerArgs,
    shutdown: CancellationToken,
) {
    loop {
        let current = *agent.borrow_and_update();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = current.exited() => {}
            changed = agent.changed() => {
                if changed.is_err() { return; }
                continue;
            }
        }
        tracing::warn!(
            agent = current.pid,
            ?grace,
            "the agent is gone; serving on, waiting for a new agent to adopt this worker"
        );
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(grace) => {}
            changed = agent.changed() => {
                if changed.is_err() { return; }
                continue;
            }
        }
        tracing::warn!(
            ?grace,
            "no agent adopted this worker within the grace; exiting"
        );
        if let Some(dir) = args.control.parent() {
            super::files::remove_all(dir, &args.id);
        }
        shutdown.cancel();
        return;
    }
}
