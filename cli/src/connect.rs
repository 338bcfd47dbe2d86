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

/// Connects to the master: the first of `--master a,b,c` that answers (every master serves
/// the whole API).
pub async fn channel(cli: &Cli) -> Result<Channel, Failure> {
    let tls = tls(cli)?;
    let mut failures = Vec::new();
    for master in cli
        .master
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        let url = format!("https://{master}");
        let endpoint = Channel::from_shared(url.clone())
            .map_err(|_| Failure::Config(format!("'{master}' is not a master address")))?
            .tls_config(tls.clone())
            .map_err(|e| Failure::Config(format!("TLS: {e}")))?
            .connect_timeout(std::time::Duration::from_secs(5));
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) => {
                let mut msg = format!("{url}: {e}");
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    msg.push_str(&format!(": {s}"));
                    source = s.source();
                }
                failures.push(msg);
            }
        }
    }
    Err(Failure::Other(format!(
        "UNAVAILABLE: cannot connect to the master ({})",
        failures.join("; ")
    )))
}
