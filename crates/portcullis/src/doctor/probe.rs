//! What every check uses to look at a listener or an origin from outside: a TLS handshake
//! that keeps whatever chain was presented, and one HTTP/1.1 request with a bounded answer.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Largest body a probe reads; the rest of a page is not looked at.
pub const MAX_BODY: usize = 4 << 20;

/// Why a probe did not get its answer, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// Nothing answered in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection was refused: nothing listens there.
    #[error("connection refused")]
    Refused,
    /// Any other connect error.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// The HTTP exchange failed.
    #[error("HTTP request failed: {0}")]
    Http(String),
}

/// Runs `fut` for at most `timeout`.
pub async fn bounded<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, ProbeError>>,
) -> Result<T, ProbeError> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or(Err(ProbeError::Timeout(timeout)))
}

/// A TCP connection to `addr`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ProbeError> {
    bounded(timeout, async {
        TcpStream::connect(addr).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => ProbeError::Refused,
            _ => ProbeError::Connect(e.to_string()),
        })
    })
    .await
}

/// A finished handshake and the chain the server presented (leaf first), accepted whatever
/// it is: the checks judge the chain themselves.
pub struct Handshake {
    /// The connection, ready for a request.
    pub stream: TlsStream<TcpStream>,
    /// What the server sent, leaf first, in its order.
    pub chain: Vec<CertificateDer<'static>>,
    /// The ALPN protocol agreed, if any.
    pub alpn: Option<Vec<u8>>,
}

/// Connects to `addr` and shakes hands with `sni`, offering `alpn`, accepting any chain.
pub async fn tls_handshake(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
    timeout: Duration,
) -> Result<Handshake, ProbeError> {
    let seen = Recorder::new(None);
    let mut config = rustls::ClientConfig::builder_with_provider(portcullis_tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ProbeError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(seen.clone())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(sni.to_owned())
        .map_err(|_| ProbeError::Tls(format!("`{sni}` cannot be sent as a server name")))?;
    bounded(timeout, async {
        let tcp = connect(addr, timeout).await?;
        let stream = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| ProbeError::Tls(e.to_string()))?;
        let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let chain = seen.chain();
        Ok(Handshake {
            stream,
            chain,
            alpn,
        })
    })
    .await
}

/// A verifier that keeps the chain presented and then accepts it, or, given a verifier
/// (a strict probe), leaves the verdict to that one. Signatures of the handshake are always
/// checked, so a completed handshake means the server holds the leaf's key.
#[derive(Debug)]
pub struct Recorder {
    verify: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    chain: Mutex<Vec<CertificateDer<'static>>>,
}

impl Recorder {
    /// A recorder that judges with `verify`, or accepts any chain without.
    pub fn new(verify: Option<Arc<WebPkiServerVerifier>>) -> Arc<Self> {
        Arc::new(Self {
            verify,
            provider: portcullis_tls::crypto_provider(),
            chain: Mutex::new(Vec::new()),
        })
    }

    /// What the server presented, leaf first, in its order (empty before the handshake
    /// got that far).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut chain) = self.chain.lock() {
            *chain = std::iter::once(end_entity)
                .chain(intermediates)
                .map(|c| c.clone().into_owned())
                .collect();
        }
        match &self.verify {
            Some(v) => v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
            None => Ok(ServerCertVerified::assertion()),
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// An HTTP answer, its body cut at [`MAX_BODY`].
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: http::HeaderMap,
    /// The body, at most [`MAX_BODY`] bytes of it.
    pub body: Bytes,
}

impl Answer {
    /// A header as text, if present and readable.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// `GET path` with `Host: host` over `io` (plain TCP or TLS), HTTP/1.1.
pub async fn get<I>(io: I, host: &str, path: &str, timeout: Duration) -> Result<Answer, ProbeError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    bounded(timeout, async {
        let (mut send, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| ProbeError::Http(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let request = http::Request::get(path)
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "portcullis-doctor")
            .header(http::header::ACCEPT, "text/html,*/*")
            .body(Empty::<Bytes>::new())
            .map_err(|e| ProbeError::Http(e.to_string()))?;
        let response = send
            .send_request(request)
            .await
            .map_err(|e| ProbeError::Http(e.to_string()))?;
        let (parts, body) = response.into_parts();
        // A body larger than the limit is cut there: what was read is still worth looking at.
        let mut body = Limited::new(body, MAX_BODY);
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        bytes.extend_from_slice(&data);
                    }
                }
                Err(_) => break,
            }
        }
        driver.abort();
        Ok(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: Bytes::from(bytes),
        })
    })
    .await
}

/// `GET http://host/path` through the plain listener at `addr`.
pub async fn get_plain(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<Answer, ProbeError> {
    let tcp = connect(addr, timeout).await?;
    get(tcp, host, path, timeout).await
}

/// `GET https://host/path` through the TLS listener at `addr`: `host` as the `Host` header
/// (an IPv6 literal in brackets) and, without brackets, as SNI; any chain accepted (the
/// certificate checks judge it; the page is what is looked at here).
pub async fn get_tls(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<Answer, ProbeError> {
    let sni = host.trim_start_matches('[').trim_end_matches(']');
    bounded(timeout, async {
        let hs = tls_handshake(addr, sni, &[b"http/1.1"], timeout).await?;
        get(hs.stream, host, path, timeout).await
    })
    .await
}
