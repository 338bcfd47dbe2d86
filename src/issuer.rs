//! Node certificates issued online (docs/security.md, "Joining a node"): the CA pin a joining
//! agent trusts the master by, the agent's key and certificate signing request (made on the
//! node; the key never leaves it), and the master's [`CaSigner`] that turns a CSR into a node
//! certificate for the authid the master decided.
//!
//! The master signs only the CSR's public key (the CSR's signature proves the agent holds the
//! key) and the DNS/IP names it asks for; the principal, usages and lifetime are the master's.

use std::path::Path;
use std::time::{Duration as StdDuration, SystemTime};

use rcgen::{CertificateSigningRequestParams, Issuer, KeyPair, PublicKeyData, SanType};
use time::{Duration, OffsetDateTime};

use crate::auth::Principal;
use crate::pki::{KeyPem, PkiError, leaf_params, read_pem};

/// Most DNS/IP names a node may ask for in its CSR.
pub const MAX_SANS: usize = 16;

/// The SHA-256 digest of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The pin of a DER certificate: `sha256:<hex>` of its SubjectPublicKeyInfo.
pub fn pin_of_der(der: &[u8]) -> Option<String> {
    spki_digest(der).map(|d| format!("sha256:{}", hex(&d)))
}

/// SHA-256 of a DER certificate's SubjectPublicKeyInfo.
pub fn spki_digest(der: &[u8]) -> Option<[u8; 32]> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(sha256(cert.tbs_certificate.subject_pki.raw))
}

/// Parses a `--ca-pin` value: `sha256:` and 64 hex digits.
pub fn parse_pin(pin: &str) -> Result<[u8; 32], String> {
    let hex = pin
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("invalid CA pin '{pin}': expected sha256:<64 hex digits>"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "invalid CA pin '{pin}': expected sha256:<64 hex digits>"
        ));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("invalid CA pin '{pin}'"))?;
    }
    Ok(out)
}

/// The DER blocks of every `CERTIFICATE` in a PEM text.
pub fn pem_certificates(pem: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

/// The pins of every CA certificate in `DIR/ca.pem` (`switchyard-master ca pin`), in file order.
pub fn ca_pins(dir: &Path) -> Result<Vec<String>, PkiError> {
    let path = dir.join("ca.pem");
    let pem = read_pem(&path, "CERTIFICATE")?;
    let pins: Vec<String> = pem_certificates(&pem)
        .iter()
        .filter_map(|der| pin_of_der(der))
        .collect();
    if pins.is_empty() {
        return Err(PkiError::Invalid {
            path,
            reason: "no parsable certificate".into(),
        });
    }
    Ok(pins)
}

/// A new node key and a CSR for it, asking for the DNS/IP names `sans` (made on the node).
pub fn node_csr(authid: &str, sans: &[String]) -> Result<(KeyPem, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, Principal::node(authid).uri());
    for san in sans {
        params.subject_alt_names.push(crate::pki::parse_san(san)?);
    }
    let csr = params.serialize_request(&key)?;
    Ok((KeyPem::new(key.serialize_pem()), csr.pem()?))
}

/// What to sign.
#[derive(Debug, Clone)]
pub struct NodeCertRequest<'a> {
    /// The CSR (PEM) from the agent.
    pub csr_pem: &'a str,
    /// The node's authid, decided by the master (never read from the CSR).
    pub authid: &'a str,
    /// The certificate's lifetime.
    pub ttl: StdDuration,
    /// The certificate must start after this instant (the node's last revocation), so that a
    /// certificate issued after a revocation is told apart from every one before it.
    pub not_before_floor: Option<SystemTime>,
}

/// A certificate the master signed.
#[derive(Debug, Clone)]
pub struct SignedCert {
    /// The certificate (PEM).
    pub pem: String,
    /// Its validity.
    pub not_before: SystemTime,
    /// Its end.
    pub not_after: SystemTime,
}

/// The CA key and certificate the master signs node certificates with (`DIR/ca.key`).
#[derive(Debug)]
pub struct CaSigner {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl CaSigner {
    /// The signer from `DIR/ca.key` and the certificate of `DIR/ca.pem` that matches it;
    /// `None` when there is no `ca.key`, or it matches no CA of the bundle (certificates are
    /// then issued offline only).
    pub fn load(dir: &Path) -> Result<Option<Self>, PkiError> {
        let key_path = dir.join("ca.key");
        if !key_path.exists() {
            return Ok(None);
        }
        let cert_path = dir.join("ca.pem");
        let ca_pem = read_pem(&cert_path, "CERTIFICATE")?;
        let key_pem = read_pem(&key_path, "PRIVATE KEY")?;
        let invalid = |path: &Path, reason: String| PkiError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| invalid(&key_path, e.to_string()))?;
        let spki = key.subject_public_key_info();
        let ca_der = pem_certificates(&ca_pem).into_iter().find(|der| {
            x509_parser::parse_x509_certificate(der)
                .is_ok_and(|(_, c)| c.tbs_certificate.subject_pki.raw == spki.as_slice())
        });
        let Some(ca_der) = ca_der else {
            // A key left behind by a CA rotation (docs/security.md): nothing to sign with.
            tracing::warn!(key = %key_path.display(), bundle = %cert_path.display(), "ca.key matches no certificate of ca.pem: node certificates are not issued online");
            return Ok(None);
        };
        let issuer = Issuer::from_ca_cert_der(&ca_der.into(), key)
            .map_err(|e| invalid(&cert_path, e.to_string()))?;
        Ok(Some(CaSigner { issuer, ca_pem }))
    }

    /// The CA bundle agents trust (the master's `ca.pem`, every CA of a rotation included).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Signs a node certificate for `request.authid` over the CSR's key. Errors are
    /// [`PkiError::Argument`] for a bad CSR (the caller's fault).
    pub fn sign_node(&self, request: &NodeCertRequest<'_>) -> Result<SignedCert, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(request.csr_pem)
            .map_err(|e| PkiError::Argument(format!("invalid CSR: {e}")))?;
        let sans = requested_sans(&csr)?;
        let ttl = Duration::try_from(request.ttl)
            .map_err(|_| PkiError::Argument("certificate lifetime out of range".into()))?;
        let now = OffsetDateTime::now_utc();
        // A little before now, for clocks slightly behind the master's; never before the floor.
        let backdate = (ttl / 10_i32).min(Duration::minutes(1));
        let mut not_before = now - backdate;
        if let Some(floor) = request.not_before_floor {
            let floor = OffsetDateTime::from(floor) + Duration::seconds(1);
            not_before = not_before.max(floor);
        }
        let not_after = now + ttl;
        if not_after <= not_before {
            return Err(PkiError::Argument(
                "the certificate lifetime is too short".into(),
            ));
        }
        let principal = Principal::node(request.authid);
        let params = leaf_params(&principal, true, &sans, not_before, not_after)?;
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(SignedCert {
            pem: cert.pem(),
            not_before: not_before.into(),
            not_after: not_after.into(),
        })
    }
}

/// The DNS/IP names of a CSR (the master's own names `localhost`, `127.0.0.1`, `::1` are added
/// anyway; URI and other names are refused: the master alone decides the principal).
fn requested_sans(csr: &CertificateSigningRequestParams) -> Result<Vec<String>, PkiError> {
    let mut sans = Vec::new();
    for san in &csr.params.subject_alt_names {
        match san {
            SanType::DnsName(name) => sans.push(name.as_str().to_owned()),
            SanType::IpAddress(ip) => sans.push(ip.to_string()),
            SanType::URI(_) => {} // the principal: replaced by the master's
            _ => return Err(PkiError::Argument("CSR: only DNS and IP names".into())),
        }
    }
    if sans.len() > MAX_SANS + 3 {
        return Err(PkiError::Argument(format!("CSR: at most {MAX_SANS} names")));
    }
    Ok(sans)
}

/// `not_before` and `not_after` of a DER certificate, as Unix seconds.
pub fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::init_ca;

    #[test]
    fn a_csr_becomes_a_node_certificate_of_the_masters_choosing() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let signer = CaSigner::load(dir.path()).unwrap().unwrap();
        let (key, csr) = node_csr("node7", &["10.0.0.7".into()]).unwrap();
        assert!(key.expose().contains("PRIVATE KEY"));
        let signed = signer
            .sign_node(&NodeCertRequest {
                csr_pem: &csr,
                authid: "node7",
                ttl: StdDuration::from_secs(30),
                not_before_floor: None,
            })
            .unwrap();
        let der = pem_certificates(&signed.pem).remove(0);
        assert_eq!(
            Principal::from_certificate(&der),
            Some(Principal::node("node7"))
        );
        let (nb, na) = validity(&der).unwrap();
        assert!(na - nb <= 33 && na - nb >= 30, "{nb}..{na}");
        // The certificate carries the CSR's key.
        let key_pair = KeyPair::from_pem(key.expose()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(
            cert.tbs_certificate.subject_pki.raw,
            key_pair.subject_public_key_info().as_slice()
        );
    }

    #[test]
    fn the_floor_moves_not_before_past_a_revocation() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let signer = CaSigner::load(dir.path()).unwrap().unwrap();
        let (_, csr) = node_csr("n1", &[]).unwrap();
        let floor = SystemTime::now();
        let signed = signer
            .sign_node(&NodeCertRequest {
                csr_pem: &csr,
                authid: "n1",
                ttl: StdDuration::from_secs(3600),
                not_before_floor: Some(floor),
            })
            .unwrap();
        assert!(signed.not_before > floor);
        let der = pem_certificates(&signed.pem).remove(0);
        let floor_secs = floor
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(validity(&der).unwrap().0 > floor_secs);
    }

    #[test]
    fn pins_are_the_spki_digest_and_parse_back() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let pins = ca_pins(dir.path()).unwrap();
        assert_eq!(pins.len(), 1);
        assert!(
            pins[0].starts_with("sha256:") && pins[0].len() == 71,
            "{}",
            pins[0]
        );
        let parsed = parse_pin(&pins[0]).unwrap();
        assert_eq!(format!("sha256:{}", hex(&parsed)), pins[0]);
        assert!(parse_pin("sha1:00").is_err());
        assert!(parse_pin("sha256:zz").is_err());
    }

    #[test]
    fn garbage_csrs_are_refused_as_arguments() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let signer = CaSigner::load(dir.path()).unwrap().unwrap();
        let err = signer
            .sign_node(&NodeCertRequest {
                csr_pem: "not a csr",
                authid: "n1",
                ttl: StdDuration::from_secs(60),
                not_before_floor: None,
            })
            .unwrap_err();
        assert!(matches!(err, PkiError::Argument(_)), "{err}");
        assert!(
            CaSigner::load(tempfile::tempdir().unwrap().path())
                .unwrap()
                .is_none()
        );
    }
}
