//! The `switchyard-agent` command line: serve a node's agent (and, hidden, run as one of its
//! workers). Flags > environment (`SWITCHYARD_*`) > defaults; invalid configuration exits 64.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::AgentOptions;
use crate::worker::child::{self, WorkerArgs};
use clap::{Parser, Subcommand};
use switchyard::pki::Identity;
use switchyard::server::Security;
use switchyard::telemetry::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "switchyard-agent",
    version,
    about = "Switchyard agent (one per node)"
)]
struct Cli {
    /// Log output format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "SWITCHYARD_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the agent's gRPC API.
    Serve(ServeArgs),
    /// Run as a worker process (started by the agent, not by hand).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        id: String,
        #[arg(long)]
        node: String,
        #[arg(long = "type", value_parser = ["web", "router"])]
        kind: String,
        #[arg(long)]
        control: PathBuf,
        #[arg(long)]
        parent_pid: u32,
        #[arg(long, value_delimiter = ',')]
        cpu_affinity: Vec<u32>,
        /// Test hook: allocate and free this many MiB at start (exercises TriggerGc).
        #[arg(long, default_value_t = 0)]
        ballast_mib: usize,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9701", env = "SWITCHYARD_LISTEN")]
    listen: SocketAddr,
    /// The master's address (host:port), for heartbeats.
    #[arg(long, env = "SWITCHYARD_MASTER")]
    master: String,
    /// The node's authid; the agent uses DIR/AUTHID.pem and DIR/AUTHID.key.
    #[arg(long, env = "SWITCHYARD_NODE_NAME")]
    name: String,
    /// Directory with ca.pem and the node's certificate and key.
    #[arg(long, env = "SWITCHYARD_PKI_DIR", required_unless_present = "insecure")]
    pki_dir: Option<PathBuf>,
    /// Serve plaintext without authentication (every caller is an admin). Never in production.
    #[arg(long)]
    insecure: bool,
    /// The executable run as workers (default: this executable).
    #[arg(long, env = "SWITCHYARD_WORKER_EXE")]
    worker_exe: Option<PathBuf>,
    /// Directory for the workers' control sockets, created 0700
    /// (default: $XDG_RUNTIME_DIR or /tmp, + switchyard-agent-AUTHID-PID).
    #[arg(long, env = "SWITCHYARD_RUNTIME_DIR")]
    runtime_dir: Option<PathBuf>,
    /// Seconds from SIGTERM to SIGKILL when stopping a worker.
    #[arg(long, default_value_t = 5.0)]
    stop_timeout: f64,
    /// The endpoint (host:port) the master should call (default: the bound listen address).
    #[arg(long, env = "SWITCHYARD_ADVERTISE")]
    advertise: Option<String>,
    /// A label reported to the master, KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Worker {
            id,
            node,
            kind,
            control,
            parent_pid,
            cpu_affinity,
            ballast_mib,
        } => child::run(WorkerArgs {
            id,
            node,
            kind,
            control,
            parent_pid,
            cpu_affinity,
            ballast_mib,
        }),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    if !switchyard::auth::valid_name(&args.name) {
        return config_error(&format!("invalid --name '{}'", args.name));
    }
    if !(args.stop_timeout.is_finite() && args.stop_timeout > 0.0 && args.stop_timeout <= 3600.0) {
        return config_error("--stop-timeout must be between 0 and 3600 seconds");
    }
    let (security, identity) = match (args.insecure, &args.pki_dir) {
        (true, _) => (Security::Insecure, None),
        (false, Some(dir)) => match Identity::load(dir, &args.name) {
            Ok(identity) => (Security::Mtls(identity.server_tls()), Some(identity)),
            Err(e) => return config_error(&e.to_string()),
        },
        (false, None) => return config_error("--pki-dir is required"),
    };
    let worker_exe = match args.worker_exe.map_or_else(std::env::current_exe, Ok) {
        Ok(exe) => exe,
        Err(e) => return config_error(&format!("cannot locate the worker executable: {e}")),
    };
    let runtime_dir = args.runtime_dir.unwrap_or_else(|| {
        std::env::var_os("XDG_RUNTIME_DIR")
            .map_or_else(std::env::temp_dir, PathBuf::from)
            .join(format!(
                "switchyard-agent-{}-{}",
                args.name,
                std::process::id()
            ))
    });
    let options = AgentOptions {
        authid: args.name,
        master: args.master,
        security,
        worker_exe,
        runtime_dir,
        stop_timeout: Duration::from_secs_f64(args.stop_timeout),
        identity,
        advertise: args.advertise,
        labels: args.labels.into_iter().collect(),
        launcher: Default::default(),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => return config_error(&format!("cannot listen on {}: {e}", args.listen)),
        };
        match crate::serve(listener, options, switchyard::shutdown::on_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard-agent: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn config_error(message: &str) -> ExitCode {
    eprintln!("switchyard-agent: {message}");
    ExitCode::from(switchyard::EXIT_CONFIG)
}
