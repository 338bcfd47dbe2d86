//! TLS on rustls directly (docs/security.md): the servers' configuration with a certificate
//! that can be swapped while the server runs (agents renew theirs without restarting: new
//! connections get the new certificate, open ones keep going), client certificates required
//! (agents) or optional (the master, whose role layer admits only `NodeService/JoinNode`
//! without one), and the verifier a joining agent trusts the master by: the CA pin.
//!
//! Servers send their CA certificates after their own, so that a client holding only a pin
//! (a hash of the CA's public key) finds the CA in the handshake and checks the chain with it.

use std::sync::{Arc, Mutex, OnceLock, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::auth::Principal;
use crate::pki::Identity;
use crate::revocation::Revocations;

/// The crypto provider of every TLS configuration here (ring, like tonic's).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// An unusable certificate, key or TLS configuration.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(pub String);

fn err(e: impl std::fmt::Display) -> TlsError {
    TlsError(e.to_string())
}

/// Every certificate of a PEM text.
pub fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    if certs.is_empty() {
        return Err(TlsError("no certificate in PEM".into()));
    }
    Ok(certs)
}

/// The identity's certificate followed by its CA certificates, with its key.
fn certified_key(identity: &Identity) -> Result<Arc<CertifiedKey>, TlsError> {
    let mut chain = parse_certs(&identity.cert_pem)?;
    for ca in parse_certs(&identity.ca_pem)? {
        if !chain.contains(&ca) {
            chain.push(ca);
        }
    }
    let key = PrivateKeyDer::from_pem_slice(identity.key.expose().as_bytes()).map_err(err)?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(err)?;
    Ok(Arc::new(certified))
}

/// `not_before` and `not_after` of a certificate, Unix seconds.
pub type Validity = (i64, i64);

/// A server's certificate, replaceable while it serves.
#[derive(Debug)]
pub struct CertSwap {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertSwap {
    /// Serves `identity` from now on (to new connections).
    pub fn swap(&self, identity: &Identity) -> Result<(), TlsError> {
        let next = certified_key(identity)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// The validity (`not_before`, `not_after`, Unix seconds) of the certificate served now and
    /// of its CA (the last certificate of the chain): the `/metrics` gauges of
    /// docs/operations.md.
    pub fn validity(&self) -> (Option<Validity>, Option<Validity>) {
        let current = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let of = |der: Option<&CertificateDer<'_>>| der.and_then(|d| crate::issuer::validity(d));
        (
            of(current.cert.first()),
            of(current.cert.get(1..).and_then(|rest| rest.last())),
        )
    }
}

impl ResolvesServerCert for CertSwap {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// Whether a server requires client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No certificate of the CA, no connection (agents).
    Required,
    /// Connections without a certificate are accepted; the role layer lets them call only what
    /// is open without one (the master's `NodeService/JoinNode`). A certificate that is
    /// presented must still be one of the CA's.
    Optional,
}

/// A server's TLS: its configuration, its swappable certificate and the revocations its role
/// layer checks.
#[derive(Debug, Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    certs: Arc<CertSwap>,
    revocations: Arc<Revocations>,
}

impl ServerTls {
    /// A server presenting `identity`, verifying clients against its CA bundle.
    pub fn new(identity: &Identity, client_auth: ClientAuth) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca in parse_certs(&identity.ca_pem)? {
            roots.add(ca).map_err(err)?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
        let verifier = match client_auth {
            ClientAuth::Required => verifier,
            ClientAuth::Optional => verifier.allow_unauthenticated(),
        }
        .build()
        .map_err(err)?;
        let certs = Arc::new(CertSwap {
            current: RwLock::new(certified_key(identity)?),
        });
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(err)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(certs.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ServerTls {
            config: Arc::new(config),
            certs,
            revocations: Arc::default(),
        })
    }

    /// Checks calls against `revocations` (shared with whoever updates them).
    pub fn with_revocations(mut self, revocations: Arc<Revocations>) -> Self {
        self.revocations = revocations;
        self
    }

    /// The certificate, to swap it.
    pub fn certificates(&self) -> &Arc<CertSwap> {
        &self.certs
    }

    /// The revocations the role layer checks.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// The acceptor for incoming connections.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }
}

/// Trusts a server whose chain includes the CA with the pinned public key and whose
/// certificate is the master's (`spiffe://switchyard/master`), valid for the name dialled.
#[derive(Debug)]
pub struct PinVerifier {
    pin: [u8; 32],
    presented: Mutex<Option<Vec<String>>>,
}

impl PinVerifier {
    /// Trusts the CA whose SubjectPublicKeyInfo has SHA-256 `pin`.
    pub fn new(pin: [u8; 32]) -> Arc<Self> {
        Arc::new(PinVerifier {
            pin,
            presented: Mutex::new(None),
        })
    }

    /// The pins of the CA certificates a server presented, if its chain did not match.
    pub fn mismatch(&self) -> Option<Vec<String>> {
        self.presented
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A client configuration (no client certificate, HTTP/2) trusting by this pin.
    pub fn client_config(self: &Arc<Self>) -> Result<Arc<ClientConfig>, TlsError> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(err)?
            .dangerous()
            .with_custom_certificate_verifier(self.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let anchor = intermediates
            .iter()
            .find(|c| crate::issuer::spki_digest(c) == Some(self.pin));
        let Some(anchor) = anchor else {
            let pins = intermediates
                .iter()
                .filter_map(|c| crate::issuer::pin_of_der(c))
                .collect();
            *self.presented.lock().unwrap_or_else(|p| p.into_inner()) = Some(pins);
            return Err(rustls::Error::General(
                "the master's CA does not match the CA pin".into(),
            ));
        };
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        if Principal::from_certificate(end_entity) != Some(Principal::master()) {
            return Err(rustls::Error::General(
                "the server's certificate is not the master's".into(),
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
