//! The worker process: `switchyard-agent worker ...`, spawned by the agent (never by hand).
//!
//! It dies with its agent (parent-death signal SIGKILL, checked against the expected parent pid
//! to close the race with an agent that died before the signal was armed), pins itself to its
//! CPU set before any thread exists, and serves NativeProcessService for itself on its control
//! socket until SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use nix::sys::signal::Signal;
use switchyard::pb::agent::v1::native_process_service_server::NativeProcessServiceServer;
use switchyard::pb::agent::v1::node_controller_service_server::NodeControllerServiceServer;

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
    /// The control socket to serve on.
    #[arg(long)]
    pub control: PathBuf,
    /// The agent's pid: the only peer allowed on the control socket.
    #[arg(long)]
    pub parent_pid: u32,
    /// CPUs to pin to before starting (empty: inherit).
    #[arg(long, value_delimiter = ',')]
    pub cpu_affinity: Vec<u32>,
    /// Test hook: allocate and free this many MiB at start (see [`gc::ballast`]).
    #[arg(long, default_value_t = 0)]
    pub ballast_mib: usize,
}

/// Runs the worker until SIGTERM.
pub fn run(args: WorkerArgs) -> ExitCode {
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        eprintln!(
            "worker {}: cannot arm the parent-death signal: {e}",
            args.id
        );
        return ExitCode::FAILURE;
    }
    if nix::unistd::getppid().as_raw() as u32 != args.parent_pid {
        eprintln!("worker {}: the agent is gone; exiting", args.id);
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
    runtime.block_on(serve(args))
}

async fn serve(args: WorkerArgs) -> ExitCode {
    let shutdown = switchyard::shutdown::on_signal();
    let incoming = match super::control::listen(&args.control, args.parent_pid) {
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
    let local = LocalProcess::new(&args.id, EventBus::default(), shutdown.clone());
    let streams = shutdown.clone();
    tracing::info!(worker = %args.id, kind = %args.kind, pid = std::process::id(), "worker serving");
    let builder =
        tonic::transport::Server::builder().add_service(NativeProcessServiceServer::new(local));
    let builder = if args.kind == "router" {
        builder.add_service(NodeControllerServiceServer::new(
            super::router_control::RouterControl::new(&args.id, shutdown.clone()),
        ))
    } else {
        builder.add_service(NodeControllerServiceServer::new(
            super::web_control::WebControl::new(args.node.clone(), args.id.clone()),
        ))
    };
    let served = builder
        .serve_with_incoming_shutdown(incoming, streams.cancelled_owned())
        .await;
    let _ = std::fs::remove_file(&args.control);
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker {}: {e}", args.id);
            ExitCode::FAILURE
        }
    }
}
