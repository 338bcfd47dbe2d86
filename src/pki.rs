//! The cluster PKI: one CA, and certificates whose URI SAN names their principal (docs/security.md).
//!
//! Layout of a PKI directory: `ca.pem`, `ca.key`, and per principal `NAME.pem` + `NAME.key`
//! (the master's are `master.pem`/`master.key`). Private keys are written with mode 0600 and
//! only ever held in [`KeyPem`], whose `Debug` prints `..`. Existing files are never overwritten:
//! issuing twice under one name is an error, so a CA cannot be replaced by accident.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::auth::{Principal, Role, valid_name};

/// CA certificate validity.
const CA_VALIDITY: Duration = Duration::days(3650);
/// Leaf certificate validity.
const LEAF_VALIDITY: Duration = Duration::days(825);

/// A PKI failure; every file error names its path.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file exists and is not overwritten.
    #[error("{path} already exists; refusing to overwrite it")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A file's content is not what it should be.
    #[error("invalid {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A name or SAN given on the command line is invalid.
    #[error("{0}")]
    Argument(String),
    /// Key generation or signing failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A PEM private key. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct KeyPem(String);

impl KeyPem {
    /// Wraps a PEM private key.
    pub fn new(pem: String) -> Self {
        KeyPem(pem)
    }

    /// The PEM text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyPem(..)")
    }
}

/// What a process needs for mTLS: the CA, its certificate and its key.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The cluster CA certificate (PEM).
    pub ca_pem: String,
    /// This process's certificate (PEM).
    pub cert_pem: String,
    /// This process's private key.
    pub key: KeyPem,
}

impl Identity {
    /// Loads `DIR/ca.pem`, `DIR/NAME.pem` and `DIR/NAME.key`.
    pub fn load(dir: &Path, name: &str) -> Result<Self, PkiError> {
        Ok(Identity {
            ca_pem: read_pem(&dir.join("ca.pem"), "CERTIFICATE")?,
            cert_pem: read_pem(&dir.join(format!("{name}.pem")), "CERTIFICATE")?,
            key: KeyPem(read_pem(&dir.join(format!("{name}.key")), "PRIVATE KEY")?),
        })
    }

    /// From PEM texts already in memory (an agent that just joined or renewed).
    pub fn from_pem(ca_pem: String, cert_pem: String, key: KeyPem) -> Self {
        Identity {
            ca_pem,
            cert_pem,
            key,
        }
    }

    /// The server TLS of Switchyard's servers ([`crate::server::Security::Mtls`]): this
    /// identity (swappable), clients verified against the CA, certificates required or optional.
    pub fn server(
        &self,
        client_auth: crate::tls::ClientAuth,
    ) -> Result<crate::tls::ServerTls, crate::tls::TlsError> {
        crate::tls::ServerTls::new(self, client_auth)
    }

    /// A tonic server TLS configuration: this identity, client certificates required and
    /// verified against the CA (for servers other than Switchyard's own, e.g. in benchmarks).
    pub fn server_tls(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                self.key.expose(),
            ))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca_pem))
    }

    /// The client TLS configuration: this identity as client certificate, servers verified
    /// against the CA under `domain` (a DNS name or IP in the server's certificate).
    pub fn client_tls(&self, domain: &str) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                self.key.expose(),
            ))
            .domain_name(domain)
    }
}

pub(crate) fn read_pem(path: &Path, label: &str) -> Result<String, PkiError> {
    let text = std::fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_owned(),
        source,
    })?;
    if !text.contains(&format!("-----BEGIN {label}")) {
        return Err(PkiError::Invalid {
            path: path.to_owned(),
            reason: format!("no PEM {label} block"),
        });
    }
    Ok(text)
}

/// Writes a new file (never overwriting) with the given mode.
pub(crate) fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                PkiError::Exists {
                    path: path.to_owned(),
                }
            } else {
                PkiError::Write {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| PkiError::Write {
            path: path.to_owned(),
            source,
        })
}

fn ensure_dir(dir: &Path) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
        path: dir.to_owned(),
        source,
    })
}

/// The files written by [`init_ca`] or [`issue`].
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate file.
    pub cert: PathBuf,
    /// The private key file (mode 0600).
    pub key: PathBuf,
}

/// Creates a new CA in `dir` (`ca.pem`, `ca.key`). Fails if either exists.
pub fn init_ca(dir: &Path) -> Result<Issued, PkiError> {
    ensure_dir(dir)?;
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key");
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(PkiError::Exists { path: path.clone() });
        }
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Switchyard cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + CA_VALIDITY;
    let cert = params.self_signed(&key)?;
    write_new(&key_path, &key.serialize_pem(), 0o600)?;
    write_new(&cert_path, &cert.pem(), 0o644)?;
    Ok(Issued {
        cert: cert_path,
        key: key_path,
    })
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// The principal's role.
    pub role: Role,
    /// The admin name or node authid; for the master role, the file name (default "master").
    pub name: String,
    /// Extra DNS names or IP addresses for server certificates.
    pub sans: Vec<String>,
}

impl IssueRequest {
    /// The principal the certificate will name.
    pub fn principal(&self) -> Principal {
        match self.role {
            Role::Master => Principal::master(),
            Role::Node => Principal::node(&self.name),
            Role::Admin => Principal::admin(&self.name),
        }
    }
}

/// Issues `DIR/NAME.pem` and `DIR/NAME.key`, signed by the CA in `dir`.
///
/// Master and node certificates are server and client certificates and carry `localhost`,
/// `127.0.0.1` and `::1` plus `sans`; admin certificates are client certificates.
pub fn issue(dir: &Path, request: &IssueRequest) -> Result<Issued, PkiError> {
    if !valid_name(&request.name) {
        return Err(PkiError::Argument(format!(
            "invalid name '{}': use 1..63 of [a-z0-9_.-], starting with a letter or digit",
            request.name
        )));
    }
    let ca_cert_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key");
    let ca_cert = read_pem(&ca_cert_path, "CERTIFICATE")?;
    let ca_key_pem = read_pem(&ca_key_path, "PRIVATE KEY")?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| PkiError::Invalid {
        path: ca_key_path.clone(),
        reason: e.to_string(),
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key).map_err(|e| PkiError::Invalid {
        path: ca_cert_path.clone(),
        reason: e.to_string(),
    })?;

    let principal = request.principal();
    let server = matches!(request.role, Role::Master | Role::Node);
    if !server && !request.sans.is_empty() {
        return Err(PkiError::Argument(
            "--san is only for master and node certificates".into(),
        ));
    }
    let now = OffsetDateTime::now_utc();
    let params = leaf_params(
        &principal,
        server,
        &request.sans,
        now - Duration::hours(1),
        now + LEAF_VALIDITY,
    )?;

    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let cert_path = dir.join(format!("{}.pem", request.name));
    let key_path = dir.join(format!("{}.key", request.name));
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(PkiError::Exists { path: path.clone() });
        }
    }
    write_new(&key_path, &key.serialize_pem(), 0o600)?;
    write_new(&cert_path, &cert.pem(), 0o644)?;
    Ok(Issued {
        cert: cert_path,
        key: key_path,
    })
}

/// The parameters of a leaf certificate naming `principal`: server and client certificate
/// carrying `localhost`, `127.0.0.1`, `::1` and `sans` (`server`), or client only.
pub(crate) fn leaf_params(
    principal: &Principal,
    server: bool,
    sans: &[String],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, principal.uri());
    let uri = principal
        .uri()
        .try_into()
        .map_err(|e: rcgen::Error| PkiError::Argument(e.to_string()))?;
    params.subject_alt_names.push(SanType::URI(uri));
    if server {
        let mut all = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        for san in sans {
            if !all.contains(san) {
                all.push(san.clone());
            }
        }
        for san in all {
            params.subject_alt_names.push(parse_san(&san)?);
        }
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = if server {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    params.use_authority_key_identifier_extension = true;
    // A random serial: certificates the master issues are told apart by serial too.
    let mut serial = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial)
        .map_err(|_| PkiError::Argument("no system randomness".into()))?;
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

pub(crate) fn parse_san(san: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = san.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid_dns = !san.is_empty()
        && san.len() <= 253
        && san.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid_dns {
        return Err(PkiError::Argument(format!(
            "invalid --san '{san}': not an IP address or DNS name"
        )));
    }
    let name = san
        .to_owned()
        .try_into()
        .map_err(|e: rcgen::Error| PkiError::Argument(e.to_string()))?;
    Ok(SanType::DnsName(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn issued_certificates_name_their_principal_and_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_ca(dir.path()).unwrap();
        assert_eq!(mode(&ca.key), 0o600);
        let node = issue(
            dir.path(),
            &IssueRequest {
                role: Role::Node,
                name: "node7".into(),
                sans: vec!["10.0.0.7".into(), "node7.example".into()],
            },
        )
        .unwrap();
        assert_eq!(mode(&node.key), 0o600);
        let pem = std::fs::read_to_string(&node.cert).unwrap();
        let der = rustls_pemfile_der(&pem);
        assert_eq!(
            Principal::from_certificate(&der),
            Some(Principal::node("node7"))
        );
        let identity = Identity::load(dir.path(), "node7").unwrap();
        assert_eq!(format!("{:?}", identity.key), "KeyPem(..)");
        assert!(!format!("{identity:?}").contains("PRIVATE"));
    }

    #[test]
    fn nothing_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        assert!(matches!(init_ca(dir.path()), Err(PkiError::Exists { .. })));
        let req = IssueRequest {
            role: Role::Admin,
            name: "alice".into(),
            sans: vec![],
        };
        issue(dir.path(), &req).unwrap();
        assert!(matches!(
            issue(dir.path(), &req),
            Err(PkiError::Exists { .. })
        ));
    }

    #[test]
    fn bad_input_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = issue(
            dir.path(),
            &IssueRequest {
                role: Role::Node,
                name: "n1".into(),
                sans: vec![],
            },
        )
        .unwrap_err();
        assert!(missing.to_string().contains("ca.pem"), "{missing}");
        init_ca(dir.path()).unwrap();
        let bad_name = issue(
            dir.path(),
            &IssueRequest {
                role: Role::Node,
                name: "../etc".into(),
                sans: vec![],
            },
        )
        .unwrap_err();
        assert!(bad_name.to_string().contains("invalid name"), "{bad_name}");
        let bad_san = issue(
            dir.path(),
            &IssueRequest {
                role: Role::Node,
                name: "n1".into(),
                sans: vec!["not a host".into()],
            },
        )
        .unwrap_err();
        assert!(bad_san.to_string().contains("--san"), "{bad_san}");
        let load = Identity::load(dir.path(), "nobody").unwrap_err();
        assert!(load.to_string().contains("nobody.pem"), "{load}");
    }

    /// The DER bytes of the first PEM block.
    fn rustls_pemfile_der(pem: &str) -> Vec<u8> {
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        parsed.contents
    }
}
