//! `switchyard-agent`: serve a node's agent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard::pki::Identity;
use switchyard::server::Security;
use switchyard::telemetry::{self, LogFormat};
use switchyard_agent::AgentOptions;

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
    Serve {
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let Command::Serve {
        listen,
        master,
        name,
        pki_dir,
        insecure,
    } = cli.command;
    if !switchyard::auth::valid_name(&name) {
        return config_error(&format!("invalid --name '{name}'"));
    }
    let security = match (insecure, pki_dir) {
        (true, _) => Security::Insecure,
        (false, Some(dir)) => match Identity::load(&dir, &name) {
            Ok(identity) => Security::Mtls(identity.server_tls()),
            Err(e) => return config_error(&e.to_string()),
        },
        (false, None) => return config_error("--pki-dir is required"),
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
        let options = AgentOptions {
            authid: name,
            master,
            security,
        };
        match switchyard_agent::serve(listener, options, switchyard::shutdown::on_signal()).await {
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
