//! TLS client configs towards origins, one per origin: `full` (any certificate) or `strict`
//! (verified against the system's roots or the given CA), with an optional client
//! certificate for authenticated origin pulls.

use std::sync::{Arc, OnceLock};

use portcullis_config::{OriginTls, Verify};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::certs::certified_key;
use crate::provider::crypto_provider;

/// Client configs for one TLS origin.
#[derive(Debug, Clone)]
pub struct OriginTlsConfig {
    /// Offers `h2` and `http/1.1`; the origin picks.
    pub any_http: Arc<ClientConfig>,
    /// Offers only `http/1.1`, for requests that upgrade the connection (WebSocket).
    pub http1: Arc<ClientConfig>,
    /// The name sent as SNI and verified in strict mode for every server (`None`: each
    /// server's own host, see [`server_name`]).
    pub server_name: Option<ServerName<'static>>,
}

/// A host name or IP address as rustls sends and verifies it.
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_owned())
        .map_err(|_| format!("`{name}` is not a valid server name"))
}

/// Builds the client configs for an origin; the error says what is wrong with its settings.
pub fn origin_tls_config(tls: &OriginTls) -> Result<OriginTlsConfig, String> {
    let provider = crypto_provider();
    let verifier: Arc<dyn ServerCertVerifier> = match &tls.verify {
        Verify::Off => Arc::new(AcceptAnyCertificate(provider.clone())),
        Verify::SystemRoots => {
            let roots = system_roots()?;
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("cannot use the system's trust store: {e}"))?
        }
        Verify::Roots(certs) => {
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(certs.iter().cloned());
            if added == 0 {
                return Err("`ca` holds no usable CA certificate".into());
            }
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| format!("cannot use `ca`: {e}"))?
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &tls.client_cert {
        None => builder.with_no_client_auth(),
        Some(ck) => {
            let key = certified_key(ck.chain.clone(), ck.key.clone_key())
                .map_err(|e| format!("client_cert: {e}"))?;
            builder
                .with_client_auth_cert(key.cert.clone(), ck.key.clone_key())
                .map_err(|e| format!("client_cert: {e}"))?
        }
    };
    let server_name = tls.server_name.as_deref().map(server_name).transpose()?;
    let mut http1 = config.clone();
    http1.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(OriginTlsConfig {
        any_http: Arc::new(config),
        http1: Arc::new(http1),
        server_name,
    })
}

/// The system's trust store, read once.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                return Err(format!(
                    "`strict` needs trusted roots, but none were found in the system's trust store{why}; install ca-certificates or set `ca`"
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

/// `full` mode: any certificate is accepted, but the handshake signature is still checked so
/// the connection is at least bound to the certificate the origin presented.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
