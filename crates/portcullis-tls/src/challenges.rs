//! Answers to ACME challenges, published by the ACME client and read by the listeners:
//! HTTP-01 key authorizations by token, TLS-ALPN-01 certificates by name.

use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::provider::crypto_provider;

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Challenge answers currently on offer.
#[derive(Debug, Default)]
pub struct Challenges {
    http01: DashMap<String, String>,
    tls_alpn01: DashMap<String, Arc<CertifiedKey>>,
    config: OnceLock<Arc<ServerConfig>>,
}

impl Challenges {
    /// No answers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers `GET /.well-known/acme-challenge/<token>` with `key_authorization`.
    pub fn set_http01(&self, token: &str, key_authorization: &str) {
        self.http01
            .insert(token.to_owned(), key_authorization.to_owned());
    }

    /// Stops answering `token`.
    pub fn remove_http01(&self, token: &str) {
        self.http01.remove(token);
    }

    /// The key authorization for `token`, if it is being asked for.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http01.get(token).map(|v| v.clone())
    }

    /// Serves `cert` to `acme-tls/1` handshakes for `name`.
    pub fn set_tls_alpn01(&self, name: &str, cert: Arc<CertifiedKey>) {
        self.tls_alpn01.insert(name.to_ascii_lowercase(), cert);
    }

    /// Stops answering TLS-ALPN-01 for `name`.
    pub fn remove_tls_alpn01(&self, name: &str) {
        self.tls_alpn01.remove(&name.to_ascii_lowercase());
    }

    /// Whether a TLS-ALPN-01 answer exists for `name`.
    pub fn has_tls_alpn01(&self, name: &str) -> bool {
        self.tls_alpn01.contains_key(&name.to_ascii_lowercase())
    }

    /// The server config for `acme-tls/1` handshakes: that protocol only, certificates from
    /// the TLS-ALPN-01 answers.
    pub fn tls_alpn01_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        self.config
            .get_or_init(|| {
                let resolver: Arc<dyn ResolvesServerCert> = self.clone();
                let mut config = ServerConfig::builder_with_provider(crypto_provider())
                    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                    .expect("the built-in provider supports TLS 1.2 and 1.3")
                    .with_no_client_auth()
                    .with_cert_resolver(resolver);
                config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
                Arc::new(config)
            })
            .clone()
    }
}

impl ResolvesServerCert for Challenges {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        self.tls_alpn01
            .get(&name.to_ascii_lowercase())
            .map(|c| c.clone())
    }
}

/// Why a TLS-ALPN-01 answer could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeCertError {
    /// The key authorization digest is not a SHA-256 (32 bytes).
    #[error("key authorization digest is {0} bytes, not 32")]
    DigestLength(usize),
    /// Generating the key or signing the certificate failed.
    #[error("{0}")]
    Generate(String),
}

impl ChallengeCertError {
    /// Whether the caller passed a digest of the wrong length (a bug, not bad luck).
    pub fn is_digest_length(&self) -> bool {
        matches!(self, Self::DigestLength(_))
    }
}

/// The self-signed certificate that answers TLS-ALPN-01 for `name`: it names only `name`
/// and carries the SHA-256 digest of the key authorization in the critical `acmeIdentifier`
/// extension.
pub fn tls_alpn01_certificate(
    name: &str,
    digest: &[u8],
) -> Result<Arc<CertifiedKey>, ChallengeCertError> {
    if digest.len() != 32 {
        return Err(ChallengeCertError::DigestLength(digest.len()));
    }
    let generate = |e: &dyn std::fmt::Display| ChallengeCertError::Generate(e.to_string());
    let key = KeyPair::generate().map_err(|e| generate(&e))?;
    let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(|e| generate(&e))?;
    params
        .custom_extensions
        .push(CustomExtension::new_acme_identifier(digest));
    let cert = params.self_signed(&key).map_err(|e| generate(&e))?;
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = crypto_provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| generate(&e))?;
    // `CertifiedKey::from_der` would parse the certificate and reject the critical
    // acmeIdentifier extension; `new` takes it as it is.
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_kept_by_token_and_name() {
        let c = Challenges::new();
        c.set_http01("tok", "tok.thumb");
        assert_eq!(c.http01("tok").as_deref(), Some("tok.thumb"));
        c.remove_http01("tok");
        assert_eq!(c.http01("tok"), None);

        let cert = tls_alpn01_certificate("a.test", &[7u8; 32]).unwrap();
        c.set_tls_alpn01("A.test", cert);
        assert!(c.has_tls_alpn01("a.test"));
        c.remove_tls_alpn01("a.test");
        assert!(!c.has_tls_alpn01("a.test"));
        assert!(
            tls_alpn01_certificate("a.test", &[0u8; 5])
                .unwrap_err()
                .is_digest_length()
        );
    }
}
