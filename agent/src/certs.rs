//! The node's certificate while the agent runs (docs/security.md, "Rotation"): renewed at about
//! two thirds of its lifetime (with jitter) through `NodeService/RenewNodeCertificate`,
//! authenticated by the current certificate, for a key made anew on the node each time.
//!
//! A renewal writes the files (`NAME.key` 0600, `NAME.pem`, and `ca.pem` if the bundle changed)
//! so that a restart uses the new certificate, swaps the server's certificate (new connections
//! get it, open ones keep going) and tells the heartbeat, which moves its stream to a connection
//! made with the new certificate before it drops the old one: the node never goes offline.
//!
//! Files are replaced by rename, key first: `NAME.key.next` and `NAME.pem.next` are written and
//! synced, then renamed over the old ones. A crash in between is repaired at the next start
//! ([`recover`]): a lone `NAME.pem.next` means the key was renamed already.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchyard::auth::Principal;
use switchyard::pb::master::v1::RenewNodeCertificateRequest;
use switchyard::pb::master::v1::node_service_client::NodeServiceClient;
use switchyard::pki::Identity;
use switchyard::tls::CertSwap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The node's current certificate, and who must hear of a new one.
#[derive(Debug)]
pub struct NodeCerts {
    dir: Option<PathBuf>,
    authid: String,
    sans: Vec<String>,
    current: RwLock<Identity>,
    server: Arc<CertSwap>,
    changed: watch::Sender<u64>,
}

impl NodeCerts {
    /// The certificate `identity` of node `authid`, kept in `dir` (`None`: in memory only),
    /// served by `server`; renewals ask for the DNS/IP names `sans`.
    pub fn new(
        dir: Option<PathBuf>,
        authid: String,
        sans: Vec<String>,
        identity: Identity,
        server: Arc<CertSwap>,
    ) -> Arc<Self> {
        Arc::new(NodeCerts {
            dir,
            authid,
            sans,
            current: RwLock::new(identity),
            server,
            changed: watch::Sender::new(0),
        })
    }

    /// The current certificate.
    pub fn current(&self) -> Identity {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Notified at each new certificate.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Makes `identity` the node's certificate: files, server, heartbeat.
    pub fn install(&self, identity: Identity) -> Result<(), String> {
        check_identity(&identity, &self.authid)?;
        if let Some(dir) = &self.dir {
            write_identity(dir, &self.authid, &identity).map_err(|e| e.to_string())?;
        }
        self.server.swap(&identity).map_err(|e| e.to_string())?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = identity;
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }
}

/// Checks that `identity` is a certificate of node `authid` over its key.
pub fn check_identity(identity: &Identity, authid: &str) -> Result<(), String> {
    let der = first_cert(&identity.cert_pem).ok_or("the certificate is not PEM")?;
    if Principal::from_certificate(&der) != Some(Principal::node(authid)) {
        return Err(format!("the certificate does not name node '{authid}'"));
    }
    // Building a server certificate checks that the key matches it.
    identity
        .server(switchyard::tls::ClientAuth::Required)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn first_cert(pem: &str) -> Option<Vec<u8>> {
    switchyard::issuer::pem_certificates(pem).into_iter().next()
}

/// The names the node's certificate should carry beyond `localhost` and the loopback
/// addresses: the host of the endpoint the master calls, unless it is loopback or unspecified.
pub fn sans_for(endpoint: &str) -> Vec<String> {
    let host = endpoint
        .rsplit_once(':')
        .map_or(endpoint, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_loopback() || ip.is_unspecified() => vec![],
        _ if host.is_empty() || host == "localhost" => vec![],
        _ => vec![host.to_owned()],
    }
}

/// Writes `DIR/NAME.key` (0600), `DIR/NAME.pem` and `DIR/ca.pem` (when it differs), each
/// replaced whole; creates `DIR` (0700) if needed.
pub fn write_identity(dir: &Path, name: &str, identity: &Identity) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let ca = dir.join("ca.pem");
    if std::fs::read_to_string(&ca).ok().as_deref() != Some(identity.ca_pem.as_str()) {
        let next = dir.join("ca.pem.next");
        write_synced(&next, &identity.ca_pem, 0o644)?;
        std::fs::rename(&next, &ca)?;
    }
    let (key, cert) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pem")),
    );
    let (key_next, cert_next) = (
        dir.join(format!("{name}.key.next")),
        dir.join(format!("{name}.pem.next")),
    );
    write_synced(&key_next, identity.key.expose(), 0o600)?;
    write_synced(&cert_next, &identity.cert_pem, 0o644)?;
    std::fs::rename(&key_next, &key)?;
    std::fs::rename(&cert_next, &cert)?;
    std::fs::File::open(dir)?.sync_all()
}

fn write_synced(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// Repairs a replacement a crash interrupted (see the module docs).
pub fn recover(dir: &Path, name: &str) -> std::io::Result<()> {
    let (key_next, cert_next) = (
        dir.join(format!("{name}.key.next")),
        dir.join(format!("{name}.pem.next")),
    );
    match (key_next.exists(), cert_next.exists()) {
        // Neither renamed: the old pair is whole.
        (true, _) => {
            let _ = std::fs::remove_file(&cert_next);
            std::fs::remove_file(&key_next)
        }
        // The key renamed, the certificate not yet.
        (false, true) => std::fs::rename(&cert_next, dir.join(format!("{name}.pem"))),
        (false, false) => Ok(()),
    }
}

/// Whether `DIR/NAME.pem` exists (the node has a certificate).
pub fn has_certificate(dir: &Path, name: &str) -> bool {
    dir.join(format!("{name}.pem")).exists()
}

/// The certificate's validity as instants.
fn validity(identity: &Identity) -> Option<(SystemTime, SystemTime)> {
    let (nb, na) = switchyard::issuer::validity(&first_cert(&identity.cert_pem)?)?;
    let at = |s: i64| UNIX_EPOCH + Duration::from_secs(s.max(0) as u64);
    Some((at(nb), at(na)))
}

/// When to renew: at 60..70% of the lifetime (about two thirds, jittered so that nodes that
/// joined together do not renew together).
fn renew_delay(identity: &Identity) -> Duration {
    let Some((not_before, not_after)) = validity(identity) else {
        return Duration::ZERO;
    };
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let at = not_before + lifetime.mul_f64(0.6 + 0.1 * rand::random::<f64>());
    at.duration_since(SystemTime::now()).unwrap_or_default()
}

/// The pause after a failed renewal: a twentieth of the lifetime, 1 s to 1 min.
fn retry_delay(identity: &Identity) -> Duration {
    validity(identity)
        .and_then(|(nb, na)| na.duration_since(nb).ok())
        .map_or(Duration::from_secs(60), |l| {
            (l / 20).clamp(Duration::from_secs(1), Duration::from_secs(60))
        })
}

/// Renews the certificate whenever it is due, until `shutdown`, through the first of `masters`
/// that answers (any master can renew).
pub async fn run(certs: Arc<NodeCerts>, masters: Vec<String>, shutdown: CancellationToken) {
    let mut failed = false;
    let mut next = 0;
    loop {
        let identity = certs.current();
        let delay = if failed {
            retry_delay(&identity)
        } else {
            renew_delay(&identity)
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        let master = masters
            .get(next % masters.len().max(1))
            .cloned()
            .unwrap_or_default();
        match renew(&certs, &master).await {
            Ok(not_after) => {
                failed = false;
                tracing::info!(node = %certs.authid, not_after = %time::OffsetDateTime::from(not_after), "node certificate renewed");
            }
            Err(error) => {
                failed = true;
                next += 1;
                let expires =
                    validity(&certs.current()).map(|(_, na)| time::OffsetDateTime::from(na));
                tracing::warn!(node = %certs.authid, %error, ?expires, "certificate renewal failed; retrying");
            }
        }
    }
}

/// One renewal; the new certificate's end.
async fn renew(certs: &NodeCerts, master: &str) -> Result<SystemTime, String> {
    let identity = certs.current();
    let (key, csr_pem) =
        switchyard::issuer::node_csr(&certs.authid, &certs.sans).map_err(|e| e.to_string())?;
    let channel = crate::heartbeat::master_endpoint(master, Some(&identity))?
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("cannot reach the master: {e}"))?;
    let renewed = NodeServiceClient::new(channel)
        .renew_node_certificate(RenewNodeCertificateRequest { csr_pem })
        .await
        .map_err(|s| crate::heartbeat::describe(&s))?
        .into_inner();
    let next = Identity::from_pem(renewed.ca_pem, renewed.certificate_pem, key);
    let not_after = validity(&next).map_or(UNIX_EPOCH, |(_, na)| na);
    certs.install(next)?;
    Ok(not_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_for_the_certificate_skip_loopback_and_unspecified() {
        assert!(sans_for("127.0.0.1:9701").is_empty());
        assert!(sans_for("0.0.0.0:9701").is_empty());
        assert!(sans_for("[::1]:9701").is_empty());
        assert!(sans_for("localhost:1").is_empty());
        assert_eq!(sans_for("10.0.0.7:9701"), ["10.0.0.7"]);
        assert_eq!(sans_for("node7.example:9701"), ["node7.example"]);
    }

    #[test]
    fn an_interrupted_replacement_is_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Key renamed, certificate not: the new certificate is completed.
        std::fs::write(d.join("n1.key"), "new key").unwrap();
        std::fs::write(d.join("n1.pem"), "old cert").unwrap();
        std::fs::write(d.join("n1.pem.next"), "new cert").unwrap();
        recover(d, "n1").unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join("n1.pem")).unwrap(),
            "new cert"
        );
        // Neither renamed: the old pair stays.
        std::fs::write(d.join("n1.key.next"), "newer key").unwrap();
        std::fs::write(d.join("n1.pem.next"), "newer cert").unwrap();
        recover(d, "n1").unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join("n1.key")).unwrap(),
            "new key"
        );
        assert_eq!(
            std::fs::read_to_string(d.join("n1.pem")).unwrap(),
            "new cert"
        );
        assert!(!d.join("n1.key.next").exists() && !d.join("n1.pem.next").exists());
    }

    #[test]
    fn written_keys_are_private_and_certificates_replace_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let identity = Identity::from_pem(
            "ca".into(),
            "cert".into(),
            switchyard::pki::KeyPem::new("key".into()),
        );
        write_identity(&pki, "n1", &identity).unwrap();
        let mode = |p: &str| std::fs::metadata(pki.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("n1.key"), 0o600);
        assert_eq!(
            std::fs::metadata(&pki).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let next = Identity::from_pem(
            "ca".into(),
            "cert2".into(),
            switchyard::pki::KeyPem::new("key2".into()),
        );
        write_identity(&pki, "n1", &next).unwrap();
        assert_eq!(
            std::fs::read_to_string(pki.join("n1.pem")).unwrap(),
            "cert2"
        );
        assert_eq!(mode("n1.key"), 0o600);
        let mut names: Vec<_> = std::fs::read_dir(&pki)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["ca.pem", "n1.key", "n1.pem"]);
    }
}
