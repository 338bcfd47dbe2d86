//! The `switchyard-master` command line: serve the master, manage the cluster PKI, or run a dev
//! cluster. Flags > environment (`SWITCHYARD_*`) > defaults; invalid configuration exits 64.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::{MasterOptions, dev};
use clap::{Parser, Subcommand};
use switchyard::auth::Role;
use switchyard::pki::{self, Identity, IssueRequest};
use switchyard::server::Security;
use switchyard::telemetry::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(name = "switchyard-master", version, about = "Switchyard master")]
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
    /// Serve the master's gRPC API.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9700", env = "SWITCHYARD_LISTEN")]
        listen: SocketAddr,
        /// Directory of the master's database.
        #[arg(long, env = "SWITCHYARD_DATA_DIR")]
        data_dir: PathBuf,
        /// Directory with ca.pem, master.pem and master.key.
        #[arg(long, env = "SWITCHYARD_PKI_DIR", required_unless_present = "insecure")]
        pki_dir: Option<PathBuf>,
        /// Serve plaintext without authentication (every caller is an admin). Never in production.
        #[arg(long)]
        insecure: bool,
        /// Interval agents are asked to heartbeat at, milliseconds.
        #[arg(long, default_value_t = 500, env = "SWITCHYARD_HEARTBEAT_INTERVAL_MS",
              value_parser = clap::value_parser!(u64).range(10..=60_000))]
        heartbeat_interval_ms: u64,
        /// A node is offline after this long without a heartbeat, milliseconds.
        #[arg(long, default_value_t = 1500, env = "SWITCHYARD_HEARTBEAT_GRACE_MS",
              value_parser = clap::value_parser!(u64).range(20..=600_000))]
        heartbeat_grace_ms: u64,
    },
    /// Manage the cluster CA and certificates.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Run a local cluster: a master and N agents with generated certificates.
    Dev {
        /// Directory for the PKI (DIR/pki) and the master's data (DIR/data); reused when run again.
        #[arg(long, default_value = ".switchyard-dev")]
        dir: PathBuf,
        /// Number of agents (node1, node2, ...).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(0..=64))]
        agents: u16,
        /// The master's listen address; agents listen on the following ports.
        #[arg(long, default_value = "127.0.0.1:9700")]
        listen: SocketAddr,
        /// The agent executable (default: switchyard-agent next to this executable).
        #[arg(long)]
        agent_exe: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create the CA: DIR/ca.pem and DIR/ca.key (0600).
    Init {
        /// The PKI directory.
        #[arg(long, env = "SWITCHYARD_PKI_DIR")]
        pki_dir: PathBuf,
    },
    /// Issue a certificate: DIR/NAME.pem and DIR/NAME.key (0600).
    Issue {
        /// The PKI directory holding the CA.
        #[arg(long, env = "SWITCHYARD_PKI_DIR")]
        pki_dir: PathBuf,
        /// The principal's role.
        #[arg(long, value_parser = ["admin", "master", "node"])]
        role: String,
        /// The admin name or node authid (for the master: the file name, default "master").
        #[arg(long)]
        name: Option<String>,
        /// Extra DNS name or IP address for master and node certificates (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
    },
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(message)) => {
            eprintln!("switchyard-master: {message}");
            ExitCode::from(switchyard::EXIT_CONFIG)
        }
        Err(Failure::Runtime(error)) => {
            eprintln!("switchyard-master: {error:#}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    /// Invalid configuration or unusable start-up files: exit code 64.
    Config(String),
    /// Anything else: exit code 1.
    Runtime(anyhow::Error),
}

fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Ca { command } => ca(command),
        Command::Serve {
            listen,
            data_dir,
            pki_dir,
            insecure,
            heartbeat_interval_ms,
            heartbeat_grace_ms,
        } => {
            if heartbeat_grace_ms <= heartbeat_interval_ms {
                return Err(Failure::Config(
                    "--heartbeat-grace-ms must be longer than --heartbeat-interval-ms".into(),
                ));
            }
            let heartbeat = crate::HeartbeatConfig {
                interval: std::time::Duration::from_millis(heartbeat_interval_ms),
                grace: std::time::Duration::from_millis(heartbeat_grace_ms),
            };
            let (security, identity) = match (insecure, pki_dir) {
                (true, _) => (Security::Insecure, None),
                (false, Some(dir)) => {
                    let identity = Identity::load(&dir, "master")
                        .map_err(|e| Failure::Config(e.to_string()))?;
                    (Security::Mtls(identity.server_tls()), Some(identity))
                }
                (false, None) => return Err(Failure::Config("--pki-dir is required".into())),
            };
            runtime()?.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|e| Failure::Config(format!("cannot listen on {listen}: {e}")))?;
                let shutdown = switchyard::shutdown::on_signal();
                let options = MasterOptions {
                    data_dir,
                    security,
                    heartbeat,
                    identity,
                    monitor: Default::default(),
                };
                crate::serve(listener, options, shutdown)
                    .await
                    .map_err(|e| Failure::Runtime(e.into()))
            })
        }
        Command::Dev {
            dir,
            agents,
            listen,
            agent_exe,
        } => runtime()?.block_on(async {
            let options = dev::DevOptions {
                dir,
                agents,
                listen,
                agent_exe,
            };
            dev::run(options, switchyard::shutdown::on_signal())
                .await
                .map_err(Failure::Runtime)
        }),
    }
}

fn ca(command: CaCommand) -> Result<(), Failure> {
    let config = |e: pki::PkiError| Failure::Config(e.to_string());
    match command {
        CaCommand::Init { pki_dir } => {
            let issued = pki::init_ca(&pki_dir).map_err(config)?;
            println!("{}\n{}", issued.cert.display(), issued.key.display());
        }
        CaCommand::Issue {
            pki_dir,
            role,
            name,
            sans,
        } => {
            let role: Role = role.parse().map_err(Failure::Config)?;
            let name = match (role, name) {
                (_, Some(name)) => name,
                (Role::Master, None) => "master".to_owned(),
                (_, None) => {
                    return Err(Failure::Config(format!(
                        "--name is required for role {}",
                        role.as_str()
                    )));
                }
            };
            let issued =
                pki::issue(&pki_dir, &IssueRequest { role, name, sans }).map_err(config)?;
            println!("{}\n{}", issued.cert.display(), issued.key.display());
        }
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Runtime::new().map_err(|e| Failure::Runtime(e.into()))
}
