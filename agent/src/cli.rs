//! The `switchyard-agent` command line: serve a node's agent (and, hidden, run as one of its
//! workers). Flags > environment (`SWITCHYARD_*`) > defaults; invalid configuration exits 64.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::AgentOptions;
use crate::worker::child::{self, WorkerArgs};
use std::collections::BTreeMap;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::{Deserialize, Serialize};
use switchyard::config;
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
    Worker(WorkerArgs),
}

/// Options of `serve`. Each can also come from the environment (`SWITCHYARD_*`) or, below
/// both, from the TOML file given with `--config` (same names with underscores; `labels` is a
/// table).
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML file with any of these options (keys: listen, master, name, pki_dir, insecure,
    /// worker_exe, runtime_dir, stop_timeout, advertise, labels, metrics_listen, log_format).
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective configuration (TOML) and exit.
    #[arg(long)]
    print_config: bool,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9701", env = "SWITCHYARD_LISTEN")]
    listen: SocketAddr,
    /// The master's address (host:port), for heartbeats (required).
    #[arg(long, env = "SWITCHYARD_MASTER")]
    master: Option<String>,
    /// The node's authid; the agent uses DIR/AUTHID.pem and DIR/AUTHID.key (required).
    #[arg(long, env = "SWITCHYARD_NODE_NAME")]
    name: Option<String>,
    /// Directory with ca.pem and the node's certificate and key (required unless --insecure).
    #[arg(long, env = "SWITCHYARD_PKI_DIR")]
    pki_dir: Option<PathBuf>,
    /// Serve plaintext without authentication (every caller is an admin). Never in production.
    #[arg(long, env = "SWITCHYARD_INSECURE")]
    insecure: bool,
    /// The executable run as workers (default: this executable).
    #[arg(long, env = "SWITCHYARD_WORKER_EXE")]
    worker_exe: Option<PathBuf>,
    /// Directory for the workers' control sockets, created 0700
    /// (default: $XDG_RUNTIME_DIR or /tmp, + switchyard-agent-AUTHID-PID).
    #[arg(long, env = "SWITCHYARD_RUNTIME_DIR")]
    runtime_dir: Option<PathBuf>,
    /// Seconds from SIGTERM to SIGKILL when stopping a worker (0..=3600).
    #[arg(long, default_value_t = 5.0, env = "SWITCHYARD_STOP_TIMEOUT")]
    stop_timeout: f64,
    /// The endpoint (host:port) the master should call (default: the bound listen address).
    #[arg(long, env = "SWITCHYARD_ADVERTISE")]
    advertise: Option<String>,
    /// A label reported to the master, KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Serve Prometheus metrics at http://ADDR/metrics (default: not served).
    #[arg(long, env = "SWITCHYARD_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
}

/// The agent's configuration file, and the effective configuration `--print-config` shows.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeFile {
    listen: Option<SocketAddr>,
    master: Option<String>,
    name: Option<String>,
    pki_dir: Option<PathBuf>,
    insecure: Option<bool>,
    worker_exe: Option<PathBuf>,
    runtime_dir: Option<PathBuf>,
    stop_timeout: Option<f64>,
    advertise: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    metrics_listen: Option<SocketAddr>,
    log_format: Option<LogFormat>,
}

/// Merges file < environment < flags into the effective configuration.
fn effective(
    matches: &ArgMatches,
    log_format: LogFormat,
    args: ServeArgs,
) -> Result<ServeFile, String> {
    let serve = matches
        .subcommand_matches("serve")
        .ok_or("not the serve command")?;
    let file: ServeFile = match &args.config {
        Some(path) => config::read_file(path)?,
        None => ServeFile::default(),
    };
    let labels = if args.labels.is_empty() {
        file.labels
    } else {
        Some(args.labels.into_iter().collect())
    };
    Ok(ServeFile {
        listen: Some(config::layered(serve, "listen", args.listen, file.listen)),
        master: config::layered_opt(serve, "master", args.master, file.master),
        name: config::layered_opt(serve, "name", args.name, file.name),
        pki_dir: config::layered_opt(serve, "pki_dir", args.pki_dir, file.pki_dir),
        insecure: Some(config::layered(
            serve,
            "insecure",
            args.insecure,
            file.insecure,
        )),
        worker_exe: config::layered_opt(serve, "worker_exe", args.worker_exe, file.worker_exe),
        runtime_dir: config::layered_opt(serve, "runtime_dir", args.runtime_dir, file.runtime_dir),
        stop_timeout: Some(config::layered(
            serve,
            "stop_timeout",
            args.stop_timeout,
            file.stop_timeout,
        )),
        advertise: config::layered_opt(serve, "advertise", args.advertise, file.advertise),
        labels,
        metrics_listen: config::layered_opt(
            serve,
            "metrics_listen",
            args.metrics_listen,
            file.metrics_listen,
        ),
        log_format: Some(config::layered(
            matches,
            "log_format",
            log_format,
            file.log_format,
        )),
    })
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Serve(args) => {
            let print = args.print_config;
            match effective(&matches, cli.log_format, args) {
                Ok(config) => serve(config, print),
                Err(e) => config_error(&e),
            }
        }
        Command::Worker(args) => {
            telemetry::init(cli.log_format);
            child::run(args)
        }
    }
}

fn serve(config: ServeFile, print: bool) -> ExitCode {
    if print {
        return match toml::to_string(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e.to_string()),
        };
    }
    telemetry::init(config.log_format.unwrap_or_default());
    let Some(name) = config.name else {
        return config_error("name is required (--name, SWITCHYARD_NODE_NAME or name in --config)");
    };
    let Some(master) = config.master else {
        return config_error(
            "master is required (--master, SWITCHYARD_MASTER or master in --config)",
        );
    };
    if !switchyard::auth::valid_name(&name) {
        return config_error(&format!("name: invalid node name '{name}'"));
    }
    let stop_timeout = config.stop_timeout.unwrap_or(5.0);
    if !(stop_timeout.is_finite() && stop_timeout > 0.0 && stop_timeout <= 3600.0) {
        return config_error("stop_timeout must be between 0 and 3600 seconds");
    }
    let (security, identity) = match (config.insecure.unwrap_or(false), &config.pki_dir) {
        (true, _) => (Security::Insecure, None),
        (false, Some(dir)) => match Identity::load(dir, &name) {
            Ok(identity) => (Security::Mtls(identity.server_tls()), Some(identity)),
            Err(e) => return config_error(&e.to_string()),
        },
        (false, None) => {
            return config_error(
                "pki_dir is required (--pki-dir, SWITCHYARD_PKI_DIR or pki_dir in --config) unless --insecure",
            );
        }
    };
    let worker_exe = match config.worker_exe.map_or_else(std::env::current_exe, Ok) {
        Ok(exe) => exe,
        Err(e) => return config_error(&format!("cannot locate the worker executable: {e}")),
    };
    let runtime_dir = config.runtime_dir.unwrap_or_else(|| {
        std::env::var_os("XDG_RUNTIME_DIR")
            .map_or_else(std::env::temp_dir, PathBuf::from)
            .join(format!("switchyard-agent-{}-{}", name, std::process::id()))
    });
    let listen = config
        .listen
        .unwrap_or_else(|| ([127, 0, 0, 1], 9701).into());
    let options = AgentOptions {
        authid: name,
        master,
        security,
        worker_exe,
        runtime_dir,
        stop_timeout: Duration::from_secs_f64(stop_timeout),
        identity,
        advertise: config.advertise,
        labels: config.labels.unwrap_or_default().into_iter().collect(),
        launcher: Default::default(),
        metrics_listen: config.metrics_listen,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => return config_error(&format!("cannot listen on {listen}: {e}")),
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
