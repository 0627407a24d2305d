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

use crate::certs::{KeyError, certified_key};
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

/// Why an origin's TLS settings cannot be turned into client configs. `Display` names the
/// setting at fault (`ca`, `client_cert`, the server name).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum OriginTlsError {
    /// The server name is neither a DNS name nor an IP address.
    #[error("`{0}` is not a valid server name")]
    ServerName(String),
    /// `strict` without `ca`, and the system's trust store has no usable root. The text is
    /// empty or `: ` and the first error the trust store reported.
    #[error(
        "`strict` needs trusted roots, but none were found in the system's trust store{0}; install ca-certificates or set `ca`"
    )]
    NoSystemRoots(String),
    /// rustls refused the system's roots.
    #[error("cannot use the system's trust store: {0}")]
    SystemRoots(rustls::client::VerifierBuilderError),
    /// `ca` holds no certificate rustls can use as a root.
    #[error("`ca` holds no usable CA certificate")]
    NoUsableCa,
    /// rustls refused the roots in `ca`.
    #[error("cannot use `ca`: {0}")]
    Ca(rustls::client::VerifierBuilderError),
    /// `client_cert` cannot be served: its key is unusable or belongs to another certificate.
    #[error("client_cert: {0}")]
    ClientKey(#[from] KeyError),
    /// rustls refused the client certificate.
    #[error("client_cert: {0}")]
    ClientCert(rustls::Error),
    /// The crypto provider supports none of the default protocol versions.
    #[error("{0}")]
    Protocols(rustls::Error),
}

impl OriginTlsError {
    /// Whether `strict` found no trusted root in the system's trust store (the machine
    /// lacks ca-certificates).
    pub fn is_no_system_roots(&self) -> bool {
        matches!(self, Self::NoSystemRoots(_))
    }

    /// Whether the fault is in `client_cert`.
    pub fn is_client_cert(&self) -> bool {
        matches!(self, Self::ClientKey(_) | Self::ClientCert(_))
    }
}

/// A host name or IP address as rustls sends and verifies it.
pub fn server_name(name: &str) -> Result<ServerName<'static>, OriginTlsError> {
    ServerName::try_from(name.to_owned()).map_err(|_| OriginTlsError::ServerName(name.to_owned()))
}

/// Builds the client configs for an origin; the error says what is wrong with its settings.
pub fn origin_tls_config(tls: &OriginTls) -> Result<OriginTlsConfig, OriginTlsError> {
    let provider = crypto_provider();
    let verifier: Arc<dyn ServerCertVerifier> = match &tls.verify {
        Verify::Off => Arc::new(AcceptAnyCertificate(provider.clone())),
        Verify::SystemRoots => {
            let roots = system_roots()?;
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(OriginTlsError::SystemRoots)?
        }
        Verify::Roots(certs) => {
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(certs.iter().cloned());
            if added == 0 {
                return Err(OriginTlsError::NoUsableCa);
            }
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(OriginTlsError::Ca)?
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(OriginTlsError::Protocols)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &tls.client_cert {
        None => builder.with_no_client_auth(),
        Some(ck) => {
            let key = certified_key(ck.chain.clone(), ck.key.clone_key())?;
            builder
                .with_client_auth_cert(key.cert.clone(), ck.key.clone_key())
                .map_err(OriginTlsError::ClientCert)?
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
fn system_roots() -> Result<Arc<RootCertStore>, OriginTlsError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, OriginTlsError>> = OnceLock::new();
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
                return Err(OriginTlsError::NoSystemRoots(why));
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
