//! TLS for a web transport from the cluster's `tls_*` fields (rustls, ring provider). A key
//! without its certificate (or the other way round) is INVALID_ARGUMENT; a key, certificate or
//! cipher that does not parse or fit is INVALID_CONFIGURATION.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use switchyard::pb::agent::v1::WebTransport;

use crate::error::{Error, Result};

/// A `tls_*` key that is set but unusable: INVALID_CONFIGURATION naming the field.
fn err(field: &'static str, message: impl Into<String>) -> Error {
    Error::invalid_config(field, message)
}

/// The rustls server configuration of `t`, or `None` for plain HTTP.
pub fn server_config(t: &WebTransport) -> Result<Option<Arc<rustls::ServerConfig>>> {
    let (key, cert) = match (&t.tls_key, &t.tls_certificate) {
        (None, None) => return Ok(None),
        (Some(k), Some(c)) => (k, c),
        (Some(_), None) => {
            return Err(Error::invalid(
                "transport.tls_certificate",
                "required with tls_key",
            ));
        }
        (None, Some(_)) => {
            return Err(Error::invalid(
                "transport.tls_key",
                "required with tls_certificate",
            ));
        }
    };
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
        .map_err(|e| err("transport.tls_key", format!("not a PEM private key: {e}")))?;
    let mut chain = certs("transport.tls_certificate", cert)?;
    for c in &t.tls_chain_certificates {
        chain.extend(certs("transport.tls_chain_certificates", c)?);
    }
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(names) = t.tls_ciphers.as_deref().filter(|s| !s.trim().is_empty()) {
        let all = provider.cipher_suites.clone();
        let mut chosen = Vec::new();
        for name in names
            .split([':', ','])
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            let suite = all
                .iter()
                .find(|s| s.suite().as_str() == Some(name))
                .ok_or_else(|| {
                    let known: Vec<_> = all.iter().filter_map(|s| s.suite().as_str()).collect();
                    err(
                        "transport.tls_ciphers",
                        format!(
                            "unknown cipher suite '{name}' (known: {})",
                            known.join(", ")
                        ),
                    )
                })?;
            chosen.push(*suite);
        }
        provider.cipher_suites = chosen;
    }
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| err("transport.tls_ciphers", e.to_string()))?;
    let builder = if t.tls_ca_certificates.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for c in &t.tls_ca_certificates {
            for cert in certs("transport.tls_ca_certificates", c)? {
                roots
                    .add(cert)
                    .map_err(|e| err("transport.tls_ca_certificates", e.to_string()))?;
            }
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .map_err(|e| err("transport.tls_ca_certificates", e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        err(
            "transport.tls_key",
            format!("does not match the certificate: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

fn certs(field: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| err(field, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(err(field, "no PEM certificate"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(key: Option<&str>, cert: Option<&str>) -> WebTransport {
        WebTransport {
            tcp_port: 443,
            tls_key: key.map(Into::into),
            tls_certificate: cert.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn unparsable_keys_are_configuration_missing_ones_arguments() {
        assert!(server_config(&transport(None, None)).unwrap().is_none());
        assert!(matches!(
            server_config(&transport(Some("garbage"), Some("garbage"))),
            Err(Error::InvalidConfiguration { field, .. }) if field == "transport.tls_key"
        ));
        assert!(matches!(
            server_config(&transport(Some("k"), None)),
            Err(Error::InvalidArgument { field, .. }) if field == "transport.tls_certificate"
        ));
        assert!(matches!(
            certs("transport.tls_ca_certificates", "not pem"),
            Err(Error::InvalidConfiguration { field, .. }) if field == "transport.tls_ca_certificates"
        ));
    }
}
