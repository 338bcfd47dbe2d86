//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Drive a Switchyard master: nodes, web clusters, router clusters, events, stats",
    after_help = "After `switchyard-master dev`, export the two lines it prints and no flag is needed."
)]
pub struct Cli {
    /// The master's address (host:port); with several masters, any of them comma-separated
    /// (a,b,c): the first that answers is used.
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_MASTER",
        default_value = "127.0.0.1:9700"
    )]
    pub master: String,
    /// PKI directory with ca.pem, admin.pem and admin.key.
    #[arg(long, global = true, env = "SWITCHYARD_PKI_DIR", conflicts_with_all = ["ca", "cert", "key"])]
    pub pki_dir: Option<PathBuf>,
    /// The CA certificate (with --cert and --key instead of --pki-dir).
    #[arg(long, global = true, requires_all = ["cert", "key"])]
    pub ca: Option<PathBuf>,
    /// The client certificate.
    #[arg(long, global = true, requires_all = ["ca", "key"])]
    pub cert: Option<PathBuf>,
    /// The client key.
    #[arg(long, global = true, requires_all = ["ca", "cert"])]
    pub key: Option<PathBuf>,
    /// The name the master's certificate is checked against.
    #[arg(long, global = true, default_value = "localhost")]
    pub server_name: String,
    /// Output: aligned tables for people, or JSON for scripts.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// The API's JSON (one document per result; one line per streamed item).
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Nodes known to the master.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Web clusters.
    #[command(subcommand)]
    Webcluster(WebCmd),
    /// Router clusters.
    #[command(subcommand)]
    Routercluster(RouterCmd),
    /// The masters of the control plane and which one leads.
    Masters,
    /// Live events.
    Watch {
        /// Only these event types (e.g. on_webcluster_started; repeatable).
        #[arg(long = "type")]
        types: Vec<String>,
    },
    /// Live process stats of a node's agent ("controller", the default) or one of its workers.
    Stats {
        /// The node (authid or oid).
        node: String,
        /// "controller" or a worker id.
        #[arg(default_value = "controller")]
        process: String,
        /// Time between samples: "1s", "500ms", or seconds ("0.5").
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: f64,
        /// Stop after this many samples (default: until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
    /// The SSH debug console of a process.
    #[command(subcommand)]
    Manhole(ManholeCmd),
    /// Join tokens, for adding nodes.
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a join token; prints its record, then the token alone on the last line.
    Create {
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
    /// Every join token (never their secrets).
    List,
    /// Revoke a join token.
    Revoke {
        /// The token's id (or the whole token).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Every node.
    List,
    /// One node.
    Show {
        /// The node's authid.
        name: String,
    },
    /// Remove a node and revoke its certificates (it must be no cluster's member).
    Remove {
        /// The node's authid or oid.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebCmd {
    /// Create a web cluster (STOPPED).
    Create(WebCreate),
    /// Every web cluster.
    List,
    /// One web cluster.
    Show { name: String },
    /// Start it.
    Start { name: String },
    /// Stop it.
    Stop { name: String },
    /// Delete it (it must be stopped).
    Delete { name: String },
    /// Add a member node.
    AddNode {
        name: String,
        node: String,
        /// Web workers on this node.
        #[arg(long, default_value_t = 1)]
        parallel: u32,
        /// Run nothing until an active member is offline.
        #[arg(long)]
        standby: bool,
    },
    /// Remove a member node.
    RemoveNode { name: String, node: String },
    /// The member nodes.
    Nodes { name: String },
    /// Add a web service on a path.
    AddService(AddService),
    /// Remove the web service on a path.
    RemoveService { name: String, path: String },
    /// The web services.
    Services { name: String },
    /// The workers the monitor sees.
    Workers { name: String },
    /// Status, workers and their process stats.
    Stat { name: String },
}

#[derive(Debug, Args)]
pub struct WebCreate {
    pub name: String,
    /// The shared listening port.
    #[arg(long)]
    pub tcp_port: u32,
    /// Interface to listen on (default all).
    #[arg(long)]
    pub tcp_interface: Option<String>,
    /// Share the port between the workers of a node (SO_REUSEPORT; the master's default).
    #[arg(long, conflicts_with = "no_tcp_shared")]
    pub tcp_shared: bool,
    /// One worker per node owns the port (no SO_REUSEPORT).
    #[arg(long)]
    pub no_tcp_shared: bool,
    /// TLS private key file (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// TLS certificate file (PEM).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Send Strict-Transport-Security.
    #[arg(long)]
    pub http_hsts: bool,
    /// A label.
    #[arg(long)]
    pub label: Option<String>,
}

/// A web service type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServiceType {
    /// Files from --directory.
    Static,
    /// The JSON --value.
    Json,
    /// A redirect to --url.
    Redirect,
    /// HTTP to --host:--port[--backend-path].
    Reverseproxy,
    /// Which node and worker answered.
    Nodeinfo,
    /// WebSocket to --host:--port, or over --routercluster's --workergroup.
    WebsocketReverseproxy,
}

#[derive(Debug, Args)]
pub struct AddService {
    pub name: String,
    /// The path (e.g. "/" or "/api").
    pub path: String,
    /// The service type.
    #[arg(long = "type", value_enum)]
    pub kind: ServiceType,
    /// static: the directory (an absolute path on the nodes).
    #[arg(long)]
    pub directory: Option<String>,
    /// json: the value (JSON text).
    #[arg(long)]
    pub value: Option<String>,
    /// redirect: the target URL.
    #[arg(long)]
    pub url: Option<String>,
    /// reverseproxy / websocket-reverseproxy: backend host.
    #[arg(long)]
    pub host: Option<String>,
    /// reverseproxy / websocket-reverseproxy: backend port.
    #[arg(long)]
    pub port: Option<u32>,
    /// reverseproxy / websocket-reverseproxy: path on the backend.
    #[arg(long)]
    pub backend_path: Option<String>,
    /// websocket-reverseproxy: the router cluster to front.
    #[arg(long, requires = "workergroup")]
    pub routercluster: Option<String>,
    /// websocket-reverseproxy: its worker group.
    #[arg(long, requires = "routercluster")]
    pub workergroup: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum RouterCmd {
    /// Create a router cluster (STOPPED).
    Create {
        name: String,
        /// A label.
        #[arg(long)]
        label: Option<String>,
    },
    /// Every router cluster.
    List,
    /// One router cluster.
    Show { name: String },
    /// Start it.
    Start { name: String },
    /// Stop it.
    Stop { name: String },
    /// Delete it (it must be stopped).
    Delete { name: String },
    /// Add a member node.
    AddNode {
        name: String,
        node: String,
        /// Preferred maximum of workers on this node.
        #[arg(long)]
        softlimit: Option<u32>,
        /// Maximum of workers on this node.
        #[arg(long)]
        hardlimit: Option<u32>,
    },
    /// Remove a member node.
    RemoveNode { name: String, node: String },
    /// Add a worker group.
    AddWorkergroup {
        name: String,
        group: String,
        /// Router workers in the group (1..128).
        #[arg(long, default_value_t = 1)]
        scale: u32,
        /// Realms served (repeatable; default realm1).
        #[arg(long = "realm")]
        realms: Vec<String>,
    },
    /// Remove a worker group.
    RemoveWorkergroup { name: String, group: String },
    /// Status, groups, placements and process stats.
    Stat { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ManholeCmd {
    /// Start the SSH console of a process.
    Start {
        /// The node (authid or oid).
        node: String,
        /// "controller" or a worker id.
        process: String,
        /// The SSH port.
        #[arg(long)]
        port: u32,
        /// The user.
        #[arg(long)]
        user: String,
        /// File holding the password (first line).
        #[arg(long)]
        password_file: PathBuf,
        /// Interface to listen on (default 127.0.0.1).
        #[arg(long)]
        interface: Option<String>,
    },
    /// Stop it.
    Stop { node: String, process: String },
}

/// "1s", "500ms", "2m" or plain seconds, as seconds (above 0, at most an hour).
pub fn parse_interval(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let seconds = number
        .trim()
        .parse::<f64>()
        .map_err(|_| format!("'{text}' is not a duration (e.g. 1s, 500ms)"))?
        * scale;
    if seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0 {
        Ok(seconds)
    } else {
        Err(format!("'{text}' is not between 0 and 1h"))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_interval;

    #[test]
    fn intervals_read_like_durations() {
        assert_eq!(parse_interval("1s"), Ok(1.0));
        assert_eq!(parse_interval("500ms"), Ok(0.5));
        assert_eq!(parse_interval("0.2"), Ok(0.2));
        assert_eq!(parse_interval("2m"), Ok(120.0));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("soon").is_err());
    }
}
