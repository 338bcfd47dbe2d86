//! The `switchyard-master` command line: serve the master, manage the cluster PKI, or run a dev
//! cluster. Flags > environment (`SWITCHYARD_*`) > defaults; invalid configuration exits 64.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::store::etcd::{EtcdConfig, EtcdTls};
use crate::{MasterOptions, StoreChoice, dev};
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::{Deserialize, Serialize};
use switchyard::auth::Role;
use switchyard::config;
use switchyard::pki::{self, Identity, IssueRequest};
use switchyard::server::Security;
use switchyard::telemetry::{self, LogFormat};
use switchyard::tls::{ClientAuth, ServerTls};

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
    Serve(Box<ServeArgs>),
    /// Manage the cluster CA and certificates.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Copy a stopped master's state between stores.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
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
    /// Manage join tokens offline, in a stopped master's store (a running master: `switchyard
    /// token`).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a join token; prints its record, then the token alone on the last line.
    Create {
        /// Directory of the master's database.
        #[arg(long, env = "SWITCHYARD_DATA_DIR")]
        data_dir: PathBuf,
        /// How long it joins nodes: 30s, 15m, 1h, 7d (at most 7d).
        #[arg(long, default_value = "1h", value_parser = switchyard::config::parse_duration)]
        ttl: std::time::Duration,
        /// How many nodes may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Node names must start with this.
        #[arg(long, default_value = "")]
        name_prefix: String,
        /// A note shown in lists.
        #[arg(long, default_value = "")]
        description: String,
    },
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Copy every row from one store to another, e.g. a single master's sled data to etcd.
    /// Idempotent; refuses a target that holds rows already, unless --force. Prints counts.
    Copy {
        /// The source: `sled:DATA_DIR` or `etcd:ENDPOINT[,ENDPOINT...]`.
        #[arg(long)]
        from: String,
        /// The target: `sled:DATA_DIR` or `etcd:ENDPOINT[,ENDPOINT...]`.
        #[arg(long)]
        to: String,
        /// The key prefix on etcd (source and target).
        #[arg(long, default_value = crate::store::etcd::DEFAULT_PREFIX)]
        etcd_prefix: String,
        #[command(flatten)]
        tls: EtcdTlsArgs,
        /// Copy into a target that already holds rows (same keys are overwritten).
        #[arg(long)]
        force: bool,
    },
}

/// TLS to etcd.
#[derive(Debug, Args)]
struct EtcdTlsArgs {
    /// CA bundle (PEM) of etcd's server certificates (for https endpoints).
    #[arg(long, env = "SWITCHYARD_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(long, env = "SWITCHYARD_ETCD_CERT")]
    etcd_cert: Option<PathBuf>,
    /// Client key (PEM) for etcd.
    #[arg(long, env = "SWITCHYARD_ETCD_KEY")]
    etcd_key: Option<PathBuf>,
}

/// Which store `serve` uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoreKind {
    /// The embedded sled database in --data-dir (the default).
    #[default]
    Sled,
    /// etcd at --etcd-endpoints.
    Etcd,
}

/// Options of `serve`. Each can also come from the environment (`SWITCHYARD_*`) or, below
/// both, from the TOML file given with `--config` (same names with underscores).
#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML file with any of these options (keys: listen, data_dir, pki_dir, insecure,
    /// heartbeat_interval_ms, heartbeat_grace_ms, metrics_listen, log_format, node_cert_ttl,
    /// store, etcd_endpoints, etcd_prefix, etcd_ca, etcd_cert, etcd_key, name, advertise,
    /// leader_lease).
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective configuration (TOML) and exit.
    #[arg(long)]
    print_config: bool,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9700", env = "SWITCHYARD_LISTEN")]
    listen: SocketAddr,
    /// Directory of the master's database (required with --store sled).
    #[arg(long, env = "SWITCHYARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where the master's state lives: sled (embedded, the default) or etcd.
    #[arg(long, value_enum, default_value_t, env = "SWITCHYARD_STORE")]
    store: StoreKind,
    /// etcd endpoints, comma-separated (required with --store etcd), e.g. http://127.0.0.1:2379.
    #[arg(long, env = "SWITCHYARD_ETCD_ENDPOINTS", value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// The key prefix of this installation on etcd.
    #[arg(long, default_value = crate::store::etcd::DEFAULT_PREFIX, env = "SWITCHYARD_ETCD_PREFIX")]
    etcd_prefix: String,
    #[command(flatten)]
    etcd_tls: EtcdTlsArgs,
    /// Directory with ca.pem, master.pem and master.key (required unless --insecure).
    #[arg(long, env = "SWITCHYARD_PKI_DIR")]
    pki_dir: Option<PathBuf>,
    /// Serve plaintext without authentication (every caller is an admin). Never in production.
    #[arg(long, env = "SWITCHYARD_INSECURE")]
    insecure: bool,
    /// Interval agents are asked to heartbeat at, milliseconds (10..=60000).
    #[arg(long, default_value_t = 500, env = "SWITCHYARD_HEARTBEAT_INTERVAL_MS",
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    heartbeat_interval_ms: u64,
    /// A node is offline after this long without a heartbeat, milliseconds (20..=600000).
    #[arg(long, default_value_t = 1500, env = "SWITCHYARD_HEARTBEAT_GRACE_MS",
          value_parser = clap::value_parser!(u64).range(20..=600_000))]
    heartbeat_grace_ms: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (default: not served).
    #[arg(long, env = "SWITCHYARD_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Lifetime of the node certificates the master issues (joins, renewals): 30s, 12h, 7d
    /// (10s..=365d); agents renew at about two thirds of it.
    #[arg(long, default_value = "7d", env = "SWITCHYARD_NODE_CERT_TTL")]
    node_cert_ttl: String,
    /// This master's name among the masters of one store; its certificate is NAME.pem/NAME.key
    /// in --pki-dir (falling back to master.pem/master.key).
    #[arg(long, default_value = "master", env = "SWITCHYARD_NAME")]
    name: String,
    /// The address (host:port) agents and clients reach this master at (default: --listen).
    #[arg(long, env = "SWITCHYARD_ADVERTISE")]
    advertise: Option<String>,
    /// The leader's etcd lease (2s..=60s): a dead leader is replaced within about this long.
    #[arg(long, default_value = "2s", env = "SWITCHYARD_LEADER_LEASE")]
    leader_lease: String,
}

/// The master's configuration file, and the effective configuration `--print-config` shows.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeFile {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    pki_dir: Option<PathBuf>,
    insecure: Option<bool>,
    heartbeat_interval_ms: Option<u64>,
    heartbeat_grace_ms: Option<u64>,
    metrics_listen: Option<SocketAddr>,
    log_format: Option<LogFormat>,
    store: Option<StoreKind>,
    etcd_endpoints: Option<Vec<String>>,
    etcd_prefix: Option<String>,
    etcd_ca: Option<PathBuf>,
    etcd_cert: Option<PathBuf>,
    etcd_key: Option<PathBuf>,
    node_cert_ttl: Option<String>,
    name: Option<String>,
    advertise: Option<String>,
    leader_lease: Option<String>,
}

impl ServeFile {
    /// Checks the ranges the flags check.
    fn validate(&self) -> Result<(), String> {
        if let Some(v) = self.heartbeat_interval_ms
            && !(10..=60_000).contains(&v)
        {
            return Err(format!("heartbeat_interval_ms: {v} is not in 10..=60000"));
        }
        if let Some(v) = self.heartbeat_grace_ms
            && !(20..=600_000).contains(&v)
        {
            return Err(format!("heartbeat_grace_ms: {v} is not in 20..=600000"));
        }
        Ok(())
    }
}

/// Merges file < environment < flags into the effective configuration.
fn effective(
    matches: &ArgMatches,
    log_format: LogFormat,
    args: ServeArgs,
) -> Result<ServeFile, Failure> {
    let serve = matches
        .subcommand_matches("serve")
        .ok_or_else(|| Failure::Config("not the serve command".into()))?;
    let file: ServeFile = match &args.config {
        Some(path) => config::read_file(path).map_err(Failure::Config)?,
        None => ServeFile::default(),
    };
    file.validate()
        .map_err(|e| Failure::Config(format!("invalid config file: {e}")))?;
    Ok(ServeFile {
        listen: Some(config::layered(serve, "listen", args.listen, file.listen)),
        data_dir: config::layered_opt(serve, "data_dir", args.data_dir, file.data_dir),
        pki_dir: config::layered_opt(serve, "pki_dir", args.pki_dir, file.pki_dir),
        insecure: Some(config::layered(
            serve,
            "insecure",
            args.insecure,
            file.insecure,
        )),
        heartbeat_interval_ms: Some(config::layered(
            serve,
            "heartbeat_interval_ms",
            args.heartbeat_interval_ms,
            file.heartbeat_interval_ms,
        )),
        heartbeat_grace_ms: Some(config::layered(
            serve,
            "heartbeat_grace_ms",
            args.heartbeat_grace_ms,
            file.heartbeat_grace_ms,
        )),
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
        store: Some(config::layered(serve, "store", args.store, file.store)),
        etcd_endpoints: Some(config::layered(
            serve,
            "etcd_endpoints",
            args.etcd_endpoints,
            file.etcd_endpoints,
        )),
        etcd_prefix: Some(config::layered(
            serve,
            "etcd_prefix",
            args.etcd_prefix,
            file.etcd_prefix,
        )),
        etcd_ca: config::layered_opt(serve, "etcd_ca", args.etcd_tls.etcd_ca, file.etcd_ca),
        etcd_cert: config::layered_opt(serve, "etcd_cert", args.etcd_tls.etcd_cert, file.etcd_cert),
        etcd_key: config::layered_opt(serve, "etcd_key", args.etcd_tls.etcd_key, file.etcd_key),
        name: Some(config::layered(serve, "name", args.name, file.name)),
        advertise: config::layered_opt(serve, "advertise", args.advertise, file.advertise),
        leader_lease: Some(config::layered(
            serve,
            "leader_lease",
            args.leader_lease,
            file.leader_lease,
        )),
        node_cert_ttl: Some(config::layered(
            serve,
            "node_cert_ttl",
            args.node_cert_ttl,
            file.node_cert_ttl,
        )),
    })
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
    /// Print the CA pin agents join with (`--ca-pin`): sha256:<hex> of the CA's public key
    /// (one line per CA in ca.pem).
    Pin {
        /// The PKI directory holding ca.pem.
        #[arg(long, env = "SWITCHYARD_PKI_DIR")]
        pki_dir: PathBuf,
    },
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Serve(args) => {
            let print = args.print_config;
            effective(&matches, cli.log_format, *args).and_then(|config| serve(config, print))
        }
        command => {
            telemetry::init(cli.log_format);
            run(command)
        }
    };
    match result {
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
        Command::Store { command } => store_command(command),
        Command::Token { command } => runtime()?.block_on(token(command)),
        Command::Serve(_) => Err(Failure::Config("serve is handled by main".into())),
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

/// Runs the master with its effective configuration (or prints it).
fn serve(config: ServeFile, print: bool) -> Result<(), Failure> {
    if print {
        let text = toml::to_string(&config).map_err(|e| Failure::Runtime(e.into()))?;
        print!("{text}");
        return Ok(());
    }
    telemetry::init(config.log_format.unwrap_or_default());
    let (listen, interval, grace) = (
        config
            .listen
            .unwrap_or_else(|| ([127, 0, 0, 1], 9700).into()),
        config.heartbeat_interval_ms.unwrap_or(500),
        config.heartbeat_grace_ms.unwrap_or(1500),
    );
    let store = store_choice(&config)?;
    if grace <= interval {
        return Err(Failure::Config(
            "heartbeat_grace_ms must be longer than heartbeat_interval_ms".into(),
        ));
    }
    let heartbeat = crate::HeartbeatConfig {
        interval: std::time::Duration::from_millis(interval),
        grace: std::time::Duration::from_millis(grace),
    };
    let node_cert_ttl = node_cert_ttl(config.node_cert_ttl.as_deref())?;
    let control_plane = control_plane(&config, listen)?;
    let mut signer = None;
    let (security, identity) = match (config.insecure.unwrap_or(false), config.pki_dir) {
        (true, _) => (Security::Insecure, None),
        (false, Some(dir)) => {
            let own = dir.join(format!("{}.pem", control_plane.name));
            let file = if own.exists() {
                control_plane.name.as_str()
            } else {
                "master"
            };
            let identity =
                Identity::load(&dir, file).map_err(|e| Failure::Config(e.to_string()))?;
            let tls = ServerTls::new(&identity, ClientAuth::Optional)
                .map_err(|e| Failure::Config(e.to_string()))?;
            signer = pki_signer(&dir)?;
            (Security::Mtls(tls), Some(identity))
        }
        (false, None) => {
            return Err(Failure::Config(
                "pki_dir is required (--pki-dir, SWITCHYARD_PKI_DIR or pki_dir in --config) unless --insecure".into(),
            ));
        }
    };
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| Failure::Config(format!("cannot listen on {listen}: {e}")))?;
        let shutdown = switchyard::shutdown::on_signal();
        let options = MasterOptions {
            store,
            security,
            heartbeat,
            identity,
            monitor: Default::default(),
            metrics_listen: config.metrics_listen,
            signer,
            node_cert_ttl,
            control_plane,
        };
        crate::serve(listener, options, shutdown)
            .await
            .map_err(|e| Failure::Runtime(e.into()))
    })
}

/// The store `serve` uses, from the effective configuration.
fn store_choice(config: &ServeFile) -> Result<StoreChoice, Failure> {
    match config.store.unwrap_or_default() {
        StoreKind::Sled => config.data_dir.clone().map(StoreChoice::Sled).ok_or_else(|| {
            Failure::Config(
                "data_dir is required with the sled store (--data-dir, SWITCHYARD_DATA_DIR or data_dir in --config)"
                    .into(),
            )
        }),
        StoreKind::Etcd => {
            let endpoints = config.etcd_endpoints.clone().unwrap_or_default();
            let tls = EtcdTlsArgs {
                etcd_ca: config.etcd_ca.clone(),
                etcd_cert: config.etcd_cert.clone(),
                etcd_key: config.etcd_key.clone(),
            };
            let prefix = config.etcd_prefix.clone().unwrap_or_default();
            etcd_config(endpoints, prefix, &tls).map(StoreChoice::Etcd)
        }
    }
}

/// An etcd configuration, checked: endpoints are URLs, the prefix is absolute and ends with /.
fn etcd_config(
    endpoints: Vec<String>,
    prefix: String,
    tls: &EtcdTlsArgs,
) -> Result<EtcdConfig, Failure> {
    let endpoints: Vec<String> = endpoints
        .into_iter()
        .map(|e| e.trim().to_owned())
        .filter(|e| !e.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err(Failure::Config(
            "etcd_endpoints is required with the etcd store (--etcd-endpoints, SWITCHYARD_ETCD_ENDPOINTS or etcd_endpoints in --config)".into(),
        ));
    }
    for e in &endpoints {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(Failure::Config(format!(
                "etcd_endpoints: '{e}' is not an http:// or https:// URL"
            )));
        }
    }
    if !prefix.starts_with('/') || !prefix.ends_with('/') {
        return Err(Failure::Config(format!(
            "etcd_prefix: '{prefix}' must start and end with /"
        )));
    }
    let tls = match (&tls.etcd_ca, &tls.etcd_cert, &tls.etcd_key) {
        (None, None, None) => None,
        (Some(ca), cert, key) => Some(EtcdTls {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => {
            return Err(Failure::Config(
                "etcd_cert and etcd_key need etcd_ca (the CA of etcd's certificates)".into(),
            ));
        }
    };
    Ok(EtcdConfig {
        prefix,
        tls,
        ..EtcdConfig::new(endpoints)
    })
}

/// A store named on the command line: `sled:DIR` or `etcd:ENDPOINT[,ENDPOINT...]`.
fn parse_store(spec: &str, prefix: &str, tls: &EtcdTlsArgs) -> Result<StoreChoice, Failure> {
    match spec.split_once(':') {
        Some(("sled", dir)) if !dir.is_empty() => Ok(StoreChoice::Sled(PathBuf::from(dir))),
        Some(("etcd", endpoints)) => {
            let endpoints = endpoints.split(',').map(str::to_owned).collect();
            etcd_config(endpoints, prefix.to_owned(), tls).map(StoreChoice::Etcd)
        }
        _ => Err(Failure::Config(format!(
            "'{spec}' is not a store: use sled:DATA_DIR or etcd:ENDPOINT[,ENDPOINT...]"
        ))),
    }
}

fn store_command(command: StoreCommand) -> Result<(), Failure> {
    let StoreCommand::Copy {
        from,
        to,
        etcd_prefix,
        tls,
        force,
    } = command;
    let from = parse_store(&from, &etcd_prefix, &tls)?;
    let to = parse_store(&to, &etcd_prefix, &tls)?;
    runtime()?.block_on(async {
        let stop = tokio_util::sync::CancellationToken::new();
        // A store that does not answer within this is an error, not a wait.
        let give_up = stop.clone();
        let deadline = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            give_up.cancel();
        });
        let open = |choice: StoreChoice| {
            let stop = stop.clone();
            async move {
                crate::open_store(&choice, &stop)
                    .await
                    .map_err(|e| Failure::Runtime(e.into()))
            }
        };
        let source = open(from.clone()).await?;
        let target = open(to.clone()).await?;
        deadline.abort();
        let copied = crate::store::copy::copy(&*source.store, &*target.store, force)
            .await
            .map_err(|e| match e {
                crate::store::copy::CopyError::NotEmpty(n) => Failure::Config(format!(
                    "{to} already holds {n} rows; copy with --force to overwrite the same keys"
                )),
                other => Failure::Runtime(other.into()),
            })?;
        for sled in [source.sled, target.sled].into_iter().flatten() {
            sled.sync().await.map_err(|e| Failure::Runtime(e.into()))?;
        }
        println!("copied {} rows from {from} to {to}", copied.total());
        for (table, n) in &copied.tables {
            println!("  {table}: {n}");
        }
        Ok(())
    })
}

/// `--node-cert-ttl`: 10 s to 365 days.
fn node_cert_ttl(text: Option<&str>) -> Result<std::time::Duration, Failure> {
    let Some(text) = text else {
        return Ok(crate::join::DEFAULT_NODE_CERT_TTL);
    };
    let ttl =
        config::parse_duration(text).map_err(|e| Failure::Config(format!("node_cert_ttl: {e}")))?;
    if !(10..=365 * 86_400).contains(&ttl.as_secs()) {
        return Err(Failure::Config(format!(
            "node_cert_ttl: '{text}' is not between 10s and 365d"
        )));
    }
    Ok(ttl)
}

/// This master's place among the masters of its store, from the effective configuration.
fn control_plane(config: &ServeFile, listen: SocketAddr) -> Result<crate::ControlPlane, Failure> {
    let name = config.name.clone().unwrap_or_else(|| "master".to_owned());
    if !switchyard::auth::valid_name(&name) {
        return Err(Failure::Config(format!(
            "name: '{name}' is not a valid master name"
        )));
    }
    let text = config.leader_lease.as_deref().unwrap_or("2s");
    let lease =
        config::parse_duration(text).map_err(|e| Failure::Config(format!("leader_lease: {e}")))?;
    if !(2..=60).contains(&lease.as_secs()) {
        return Err(Failure::Config(format!(
            "leader_lease: '{text}' is not between 2s and 60s"
        )));
    }
    let advertise = config
        .advertise
        .clone()
        .unwrap_or_else(|| listen.to_string());
    if advertise
        .rsplit_once(':')
        .is_none_or(|(_, p)| p.parse::<u16>().is_err())
    {
        return Err(Failure::Config(format!(
            "advertise: '{advertise}' is not host:port"
        )));
    }
    Ok(crate::ControlPlane {
        name,
        advertise,
        leader_lease: lease,
    })
}

/// The CA key in the master's PKI directory, if there is one (joins and renewals need it).
fn pki_signer(
    dir: &std::path::Path,
) -> Result<Option<std::sync::Arc<switchyard::issuer::CaSigner>>, Failure> {
    let signer = switchyard::issuer::CaSigner::load(dir)
        .map_err(|e| Failure::Config(e.to_string()))?
        .map(std::sync::Arc::new);
    if signer.is_none() {
        tracing::info!(pki_dir = %dir.display(), "no ca.key: nodes cannot join or renew their certificates through this master");
    }
    Ok(signer)
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
        CaCommand::Pin { pki_dir } => {
            for pin in switchyard::issuer::ca_pins(&pki_dir).map_err(config)? {
                println!("{pin}");
            }
        }
    }
    Ok(())
}

/// `token create` on a stopped master's sled store (the running master holds its lock).
async fn token(command: TokenCommand) -> Result<(), Failure> {
    let TokenCommand::Create {
        data_dir,
        ttl,
        uses,
        name_prefix,
        description,
    } = command;
    if !data_dir.join("switchyard.sled").exists() {
        return Err(Failure::Config(format!(
            "{} holds no master store",
            data_dir.display()
        )));
    }
    let store = crate::store::sled::SledStore::open(&data_dir).map_err(|e| {
        Failure::Config(format!(
            "cannot open the store in {} ({e}): if the master is running, create the token through it: switchyard token create",
            data_dir.display()
        ))
    })?;
    let spec = crate::tokens::TokenSpec {
        ttl,
        uses,
        name_prefix,
        description,
    };
    let created = crate::tokens::create(&store, &spec).await;
    store
        .close()
        .await
        .map_err(|e| Failure::Runtime(e.into()))?;
    let (token, info) = created.map_err(|e| Failure::Config(e.to_string()))?;
    print_token(&token, &info);
    Ok(())
}

/// A new token's record, then the token alone on the last line (for scripts).
pub fn print_token(token: &str, info: &switchyard::pb::master::v1::JoinToken) {
    let expires = info
        .expires
        .and_then(|t| std::time::SystemTime::try_from(t).ok())
        .map(|t| time::OffsetDateTime::from(t).to_string())
        .unwrap_or_default();
    println!(
        "join token {} (uses: {}, name prefix: '{}', expires: {expires})",
        info.id, info.max_uses, info.name_prefix
    );
    println!("{token}");
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Runtime::new().map_err(|e| Failure::Runtime(e.into()))
}
