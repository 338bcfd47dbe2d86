//! The `switchyard-agent` command line: serve a node's agent, stop it for good (`stop`), and,
//! hidden, run as one of its workers. Flags > environment (`SWITCHYARD_*`) > defaults; invalid
//! configuration exits 64.
//!
//! Signals of `serve`: SIGINT stops the agent and its workers; SIGTERM does the same unless
//! `--keep-workers`, then the workers keep serving for the next agent to adopt.

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
    Serve(Box<ServeArgs>),
    /// Stop the agent of a runtime directory and its workers for good (SIGINT), and wait.
    Stop(StopArgs),
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
    /// worker_exe, runtime_dir, stop_timeout, keep_workers, adopt_grace, restart_backoff,
    /// restart_backoff_max, advertise, labels, metrics_listen, log_format, join_token_file, ca_pin).
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective configuration (TOML) and exit.
    #[arg(long)]
    print_config: bool,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9701", env = "SWITCHYARD_LISTEN")]
    listen: SocketAddr,
    /// The master's address (host:port), for heartbeats (required); with several masters,
    /// all of them comma-separated (a,b,c): the agent finds the leader among them.
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
    /// Directory for the workers' control sockets and records, created 0700; a new agent on
    /// the same directory adopts the workers of the last (default: $XDG_RUNTIME_DIR or /tmp, +
    /// switchyard-agent-AUTHID, + -PID unless --keep-workers).
    #[arg(long, env = "SWITCHYARD_RUNTIME_DIR")]
    runtime_dir: Option<PathBuf>,
    /// Seconds from SIGTERM to SIGKILL when stopping a worker (0..=3600).
    #[arg(long, default_value_t = 5.0, env = "SWITCHYARD_STOP_TIMEOUT")]
    stop_timeout: f64,
    /// On SIGTERM, exit and leave the workers serving, for the next agent on the runtime
    /// directory to adopt (SIGINT and `switchyard-agent stop` still stop them).
    #[arg(long, env = "SWITCHYARD_KEEP_WORKERS")]
    keep_workers: bool,
    /// Seconds a worker whose agent is gone keeps serving, waiting to be adopted, before it
    /// exits by itself (0..=86400).
    #[arg(long, default_value_t = 30.0, env = "SWITCHYARD_ADOPT_GRACE")]
    adopt_grace: f64,
    /// Seconds before the second restart of a crash-looping worker (the first is at once);
    /// doubles per failure up to --restart-backoff-max (0..=3600).
    #[arg(long, default_value_t = 1.0, env = "SWITCHYARD_RESTART_BACKOFF")]
    restart_backoff: f64,
    /// The longest delay between restarts of a crash-looping worker, seconds (0..=86400).
    #[arg(long, default_value_t = 60.0, env = "SWITCHYARD_RESTART_BACKOFF_MAX")]
    restart_backoff_max: f64,
    /// The endpoint (host:port) the master should call (default: the bound listen address).
    #[arg(long, env = "SWITCHYARD_ADVERTISE")]
    advertise: Option<String>,
    /// A label reported to the master, KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Serve Prometheus metrics at http://ADDR/metrics (default: not served).
    #[arg(long, env = "SWITCHYARD_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// A join token: with no certificate in the PKI directory yet, the agent joins the cluster
    /// with it (needs --ca-pin); ignored once the certificate exists. Prefer the environment or
    /// --join-token-file (a flag shows in the process list). Never in --config.
    #[arg(long, env = "SWITCHYARD_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// A file holding the join token (instead of --join-token).
    #[arg(long, env = "SWITCHYARD_JOIN_TOKEN_FILE")]
    join_token_file: Option<PathBuf>,
    /// The CA pin the master is trusted by when joining: sha256:<hex> of the CA's public key
    /// (`switchyard-master ca pin`).
    #[arg(long, env = "SWITCHYARD_CA_PIN")]
    ca_pin: Option<String>,
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
    keep_workers: Option<bool>,
    adopt_grace: Option<f64>,
    restart_backoff: Option<f64>,
    restart_backoff_max: Option<f64>,
    advertise: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    metrics_listen: Option<SocketAddr>,
    log_format: Option<LogFormat>,
    join_token_file: Option<PathBuf>,
    ca_pin: Option<String>,
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
        keep_workers: Some(config::layered(
            serve,
            "keep_workers",
            args.keep_workers,
            file.keep_workers,
        )),
        adopt_grace: Some(config::layered(
            serve,
            "adopt_grace",
            args.adopt_grace,
            file.adopt_grace,
        )),
        restart_backoff: Some(config::layered(
            serve,
            "restart_backoff",
            args.restart_backoff,
            file.restart_backoff,
        )),
        restart_backoff_max: Some(config::layered(
            serve,
            "restart_backoff_max",
            args.restart_backoff_max,
            file.restart_backoff_max,
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
        join_token_file: config::layered_opt(
            serve,
            "join_token_file",
            args.join_token_file,
            file.join_token_file,
        ),
        ca_pin: config::layered_opt(serve, "ca_pin", args.ca_pin, file.ca_pin),
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
        Command::Serve(mut args) => {
            let print = args.print_config;
            let join_token = args.join_token.take();
            match effective(&matches, cli.log_format, *args) {
                Ok(config) => serve(config, print, join_token),
                Err(e) => config_error(&e),
            }
        }
        Command::Stop(args) => stop(args),
        Command::Worker(args) => {
            telemetry::init(cli.log_format);
            child::run(args)
        }
    }
}

/// Options of `stop`.
#[derive(Debug, clap::Args)]
struct StopArgs {
    /// The agent's runtime directory.
    #[arg(
        long,
        env = "SWITCHYARD_RUNTIME_DIR",
        required_unless_present = "config"
    )]
    runtime_dir: Option<PathBuf>,
    /// Or the agent's TOML file, naming its runtime_dir.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Seconds to wait for the agent to stop its workers and exit.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
}

fn stop(args: StopArgs) -> ExitCode {
    let dir = match (args.runtime_dir, &args.config) {
        (Some(dir), _) => dir,
        (None, Some(path)) => match config::read_file::<ServeFile>(path) {
            Ok(ServeFile {
                runtime_dir: Some(dir),
                ..
            }) => dir,
            Ok(_) => return config_error("the configuration names no runtime_dir"),
            Err(e) => return config_error(&e),
        },
        (None, None) => return config_error("--runtime-dir or --config is required"),
    };
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return config_error("timeout must be positive");
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    match crate::runtime::stop(&dir, timeout, Duration::from_secs(5)) {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchyard-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A seconds value in `0 < v <= max`, or the message naming `key`.
fn seconds(key: &str, value: f64, max: f64) -> Result<Duration, String> {
    if value.is_finite() && value > 0.0 && value <= max {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(format!("{key} must be between 0 and {max} seconds"))
    }
}

/// The adopt grace and restart backoff of `config`, validated.
fn restarts(config: &ServeFile) -> Result<(Duration, crate::worker::Backoff), String> {
    let grace = seconds("adopt_grace", config.adopt_grace.unwrap_or(30.0), 86400.0)?;
    let initial = seconds(
        "restart_backoff",
        config.restart_backoff.unwrap_or(1.0),
        3600.0,
    )?;
    let max = seconds(
        "restart_backoff_max",
        config.restart_backoff_max.unwrap_or(60.0),
        86400.0,
    )?;
    if initial > max {
        return Err("restart_backoff must not exceed restart_backoff_max".to_owned());
    }
    let backoff = crate::worker::Backoff {
        initial,
        max,
        ..Default::default()
    };
    Ok((grace, backoff))
}

/// `$XDG_RUNTIME_DIR` (or the temporary directory) + `switchyard-agent-NAME`; without
/// `keep_workers` nothing is left for a later agent, so `-PID` makes it this agent's own.
fn default_runtime_dir(name: &str, keep_workers: bool) -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    if keep_workers {
        base.join(format!("switchyard-agent-{name}"))
    } else {
        base.join(format!("switchyard-agent-{name}-{}", std::process::id()))
    }
}

/// The shutdown token of `serve`: SIGINT stops the agent and its workers; SIGTERM too, unless
/// `keep_on_term`, then the workers are kept.
fn on_signal(keep: crate::KeepWorkers, keep_on_term: bool) -> tokio_util::sync::CancellationToken {
    use tokio::signal::unix::{SignalKind, signal};
    let token = tokio_util::sync::CancellationToken::new();
    let root = token.clone();
    tokio::spawn(async move {
        let (mut int, mut term) = match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(i), Ok(t)) => (i, t),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot install signal handlers");
                return;
            }
        };
        tokio::select! {
            _ = int.recv() => {
                tracing::info!("SIGINT received: stopping the agent and its workers");
                keep.set(false);
            }
            _ = term.recv() => {
                keep.set(keep_on_term);
                if keep_on_term {
                    tracing::info!("SIGTERM received: stopping the agent, keeping its workers");
                } else {
                    tracing::info!("SIGTERM received: stopping the agent and its workers");
                }
            }
            _ = root.cancelled() => {}
        }
        root.cancel();
    });
    token
}

fn serve(config: ServeFile, print: bool, join_token: Option<String>) -> ExitCode {
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
    let (adopt_grace, backoff) = match restarts(&config) {
        Ok(found) => found,
        Err(e) => return config_error(&e),
    };
    let Some(name) = config.name.clone() else {
        return config_error("name is required (--name, SWITCHYARD_NODE_NAME or name in --config)");
    };
    let Some(master) = config.master.clone() else {
        return config_error(
            "master is required (--master, SWITCHYARD_MASTER or master in --config)",
        );
    };
    let masters: Vec<String> = master
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(bad) = masters.iter().find(|m| {
        m.rsplit_once(':')
            .is_none_or(|(_, p)| p.parse::<u16>().is_err())
    }) {
        return config_error(&format!("master: '{bad}' is not host:port"));
    }
    if masters.is_empty() {
        return config_error("master: no address given");
    }
    if !switchyard::auth::valid_name(&name) {
        return config_error(&format!("name: invalid node name '{name}'"));
    }
    let stop_timeout = config.stop_timeout.unwrap_or(5.0);
    if !(stop_timeout.is_finite() && stop_timeout > 0.0 && stop_timeout <= 3600.0) {
        return config_error("stop_timeout must be between 0 and 3600 seconds");
    }
    let keep_workers = config.keep_workers.unwrap_or(false);
    let credentials = match credentials(&config, &name, join_token) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let worker_exe = match config.worker_exe.map_or_else(std::env::current_exe, Ok) {
        Ok(exe) => exe,
        Err(e) => return config_error(&format!("cannot locate the worker executable: {e}")),
    };
    let runtime_dir = config
        .runtime_dir
        .unwrap_or_else(|| default_runtime_dir(&name, keep_workers));
    let listen = config
        .listen
        .unwrap_or_else(|| ([127, 0, 0, 1], 9701).into());
    let advertised = config
        .advertise
        .clone()
        .unwrap_or_else(|| listen.to_string());
    let mut options = AgentOptions {
        authid: name,
        masters,
        security: Security::Insecure,
        worker_exe,
        runtime_dir,
        stop_timeout: Duration::from_secs_f64(stop_timeout),
        identity: None,
        pki_dir: config.pki_dir.clone(),
        advertise: config.advertise,
        labels: config.labels.unwrap_or_default().into_iter().collect(),
        launcher: Default::default(),
        metrics_listen: config.metrics_listen,
        keep_workers: crate::KeepWorkers::default(),
        adopt_grace,
        backoff,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match credentials.resolve(&options, &advertised).await {
            Ok((security, identity)) => {
                options.security = security;
                options.identity = identity;
            }
            Err(code) => return code,
        }
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => return config_error(&format!("cannot listen on {listen}: {e}")),
        };
        let shutdown = on_signal(options.keep_workers.clone(), keep_workers);
        match crate::serve(listener, options, shutdown).await {
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

/// How the agent gets its certificate.
enum Credentials {
    /// `--insecure`: none.
    Insecure,
    /// `DIR/NAME.pem` and `NAME.key` are there.
    Loaded(Identity),
    /// None yet: join with a token.
    Join {
        /// The PKI directory.
        dir: PathBuf,
        /// The join token.
        token: String,
        /// The CA pin.
        pin: String,
    },
}

/// Decides from the configuration (and what `DIR` holds) how to get the node's certificate.
fn credentials(
    config: &ServeFile,
    name: &str,
    join_token: Option<String>,
) -> Result<Credentials, String> {
    if config.insecure.unwrap_or(false) {
        return Ok(Credentials::Insecure);
    }
    let Some(dir) = &config.pki_dir else {
        return Err(
            "pki_dir is required (--pki-dir, SWITCHYARD_PKI_DIR or pki_dir in --config) unless --insecure".into(),
        );
    };
    let token = match (join_token, &config.join_token_file) {
        (Some(token), _) => Some(token),
        (None, Some(file)) => Some(
            std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read join_token_file {}: {e}", file.display()))?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    if dir.exists() {
        crate::certs::recover(dir, name)
            .map_err(|e| format!("cannot repair {}: {e}", dir.display()))?;
    }
    if crate::certs::has_certificate(dir, name) || token.is_none() {
        if token.is_some() {
            tracing::info!(pki_dir = %dir.display(), "the node has its certificate: the join token is ignored");
        }
        return Identity::load(dir, name)
            .map(Credentials::Loaded)
            .map_err(|e| format!("{e} (a new node joins with --join-token and --ca-pin)"));
    }
    let pin = config.ca_pin.clone().ok_or(
        "ca_pin is required to join (--ca-pin sha256:..., from `switchyard-master ca pin`)",
    )?;
    switchyard::issuer::parse_pin(&pin)?;
    Ok(Credentials::Join {
        dir: dir.clone(),
        token: token.unwrap_or_default(),
        pin,
    })
}

impl Credentials {
    /// The server's security and the node's identity, joining first if need be.
    async fn resolve(
        self,
        options: &AgentOptions,
        advertised: &str,
    ) -> Result<(Security, Option<Identity>), ExitCode> {
        let identity = match self {
            Credentials::Insecure => return Ok((Security::Insecure, None)),
            Credentials::Loaded(identity) => identity,
            Credentials::Join { dir, token, pin } => {
                let request = crate::join::JoinRequest {
                    master: &options.masters[0],
                    authid: &options.authid,
                    token: &token,
                    ca_pin: &pin,
                    sans: crate::certs::sans_for(advertised),
                    pki_dir: &dir,
                };
                match crate::join::join(&request).await {
                    Ok(identity) => identity,
                    Err(crate::join::JoinError::Refused(e)) => return Err(config_error(&e)),
                    Err(crate::join::JoinError::Failed(e)) => {
                        eprintln!("switchyard-agent: {e}");
                        return Err(ExitCode::FAILURE);
                    }
                }
            }
        };
        match identity.server(switchyard::tls::ClientAuth::Required) {
            Ok(tls) => Ok((Security::Mtls(tls), Some(identity))),
            Err(e) => Err(config_error(&e.to_string())),
        }
    }
}
