//! The mTLS channel to the master.

use std::path::Path;

use switchyard::pki::Identity;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::Failure;
use crate::args::Cli;

fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure::Config(format!("cannot read {}: {e}", path.display())))
}

/// The TLS configuration from `--pki-dir` (admin.pem) or `--ca/--cert/--key`.
fn tls(cli: &Cli) -> Result<ClientTlsConfig, Failure> {
    match (&cli.pki_dir, &cli.ca, &cli.cert, &cli.key) {
        (_, Some(ca), Some(cert), Some(key)) => Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(ca)?))
            .identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?))
            .domain_name(&cli.server_name)),
        (Some(dir), ..) => Identity::load(dir, "admin")
            .map(|i| i.client_tls(&cli.server_name))
            .map_err(|e| Failure::Config(e.to_string())),
        _ => Err(Failure::Config(
            "no certificates: pass --pki-dir (or set SWITCHYARD_PKI_DIR), or --ca, --cert and --key"
                .to_owned(),
        )),
    }
}

/// Connects to the master.
pub async fn channel(cli: &Cli) -> Result<Channel, Failure> {
    let url = format!("https://{}", cli.master);
    let endpoint = Channel::from_shared(url.clone())
        .map_err(|_| Failure::Config(format!("'{}' is not a master address", cli.master)))?
        .tls_config(tls(cli)?)
        .map_err(|e| Failure::Config(format!("TLS: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(5));
    endpoint.connect().await.map_err(|e| {
        let mut msg = format!("UNAVAILABLE: cannot connect to the master at {url}: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(&format!(": {s}"));
            source = s.source();
        }
        Failure::Other(msg)
    })
}
