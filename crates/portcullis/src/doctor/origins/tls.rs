//! The `full` and `strict` probes of an origin server: a handshake with the origin's
//! server name and client certificate, then `GET /`, whose first bytes must be an HTTP
//! answer (a TLS 1.3 server refusing a client certificate says so only after the
//! handshake). The chain presented is kept, so a failure names what the certificate holds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_config::{Origin, OriginServer, Transport, Verify};
use portcullis_tls::{CertInfo, crypto_provider, format_time};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{AlertDescription, CertificateError, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::CLIENT_CERT;
use super::Tried;
use crate::doctor::certs::signs_itself;
use crate::doctor::probe::{ProbeError, Recorder};

/// TLS, any certificate (the handshake signature is still checked).
pub(super) async fn full(
    addr: SocketAddr,
    host: &str,
    origin: &Origin,
    server: &OriginServer,
    timeout: Duration,
) -> Tried {
    attempt(addr, host, origin, server, None, timeout).await
}

/// TLS verified against the origin's configured roots, or the system's.
pub(super) async fn strict(
    addr: SocketAddr,
    host: &str,
    origin: &Origin,
    server: &OriginServer,
    timeout: Duration,
) -> Tried {
    let mut roots = RootCertStore::empty();
    let which = match &origin.transport {
        Transport::Tls(tls) if matches!(tls.verify, Verify::Roots(_)) => {
            if let Verify::Roots(certs) = &tls.verify {
                roots.add_parsable_certificates(certs.iter().cloned());
            }
            "the origin's `ca`"
        }
        _ => {
            roots = (*crate::doctor::certs::system_roots().await).clone();
            "the system's trust store"
        }
    };
    if roots.is_empty() {
        return Tried::failed(format!("{which} holds no usable root"));
    }
    let verifier =
        match WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
            .build()
        {
            Ok(v) => v,
            Err(e) => return Tried::failed(format!("cannot use {which}: {e}")),
        };
    let mut tried = attempt(addr, host, origin, server, Some(verifier), timeout).await;
    if tried.works {
        tried.detail = format!("{} (verified against {which})", tried.detail);
    }
    tried
}

/// The name sent as SNI and verified: `server_name`, else the server's host.
fn sni(origin: &Origin, server: &OriginServer) -> String {
    match &origin.transport {
        Transport::Tls(tls) => tls.server_name.clone(),
        Transport::Plain => None,
    }
    .unwrap_or_else(|| server.host.clone())
}

async fn attempt(
    addr: SocketAddr,
    host: &str,
    origin: &Origin,
    server: &OriginServer,
    verify: Option<Arc<WebPkiServerVerifier>>,
    timeout: Duration,
) -> Tried {
    let seen = Recorder::new(verify);
    let builder = match rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b.dangerous().with_custom_certificate_verifier(seen.clone()),
        Err(e) => return Tried::failed(e.to_string()),
    };
    let client_cert = match &origin.transport {
        Transport::Tls(tls) => tls.client_cert.as_ref(),
        Transport::Plain => None,
    };
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some(ck) => match builder.with_client_auth_cert(ck.chain.clone(), ck.key.clone_key()) {
            Ok(c) => c,
            Err(e) => return Tried::failed(format!("client_cert cannot be used: {e}")),
        },
    };
    // What the gateway offers: the origin picks.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = sni(origin, server);
    let Ok(server_name) = ServerName::try_from(name.clone()) else {
        return Tried::failed(format!("`{name}` cannot be sent as a server name"));
    };
    let exchange = async {
        let tcp = super::connect(addr, origin, timeout)
            .await
            .map_err(Failure::Probe)?;
        let mut stream = TlsConnector::from(Arc::new(config))
            .connect(server_name, tcp)
            .await
            .map_err(Failure::from_io)?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        ask(&mut stream, host, h2).await.map_err(Failure::from_io)
    };
    let outcome = tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(Failure::Probe(ProbeError::Timeout(timeout))));
    let chain = seen.chain();
    let with = format!(
        "TLS with `{name}`{}",
        if client_cert.is_some() {
            " and the client certificate"
        } else {
            ""
        }
    );
    match outcome {
        Ok(Reply::Status(status)) => Tried::ok(format!("{with} works, GET / is answered {status}")),
        Ok(Reply::H2) => Tried::ok(format!(
            "{with} works, HTTP/2 negotiated and the origin's SETTINGS received"
        )),
        Ok(Reply::Empty) => {
            Tried::failed("the origin closed the connection after the handshake without answering")
        }
        Ok(Reply::Garbage) => {
            Tried::failed("the origin answered GET / with something that is not HTTP")
        }
        Err(failure) => Tried {
            works: false,
            wrong_protocol: failure.is_not_tls(),
            detail: failure.explain(&chain, &name),
        },
    }
}

/// What an origin answered on a fresh connection.
pub(super) enum Reply {
    /// An HTTP/1.x status line: its code.
    Status(String),
    /// An HTTP/2 SETTINGS frame, the first thing an HTTP/2 server sends.
    H2,
    /// The connection closed with nothing said.
    Empty,
    /// Bytes that are neither.
    Garbage,
}

/// The client connection preface of HTTP/2 and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// Asks `GET /` (HTTP/1.1, `Host: host`), or with `h2` opens HTTP/2 and waits for the
/// server's SETTINGS; reads a few bytes, never the whole answer.
pub(super) async fn ask<S>(stream: &mut S, host: &str, h2: bool) -> std::io::Result<Reply>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if h2 {
        stream.write_all(H2_PREFACE).await?;
    } else {
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: portcullis-doctor\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
    }
    let mut head = [0u8; 12];
    let want = if h2 { 9 } else { 12 };
    let mut got = 0;
    while got < want {
        let n = stream.read(&mut head[got..want]).await?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(match (h2, got) {
        (_, 0) => Reply::Empty,
        (true, 9) if head[3] == 0x04 => Reply::H2,
        (false, 12) if head.starts_with(b"HTTP/1.") => {
            Reply::Status(String::from_utf8_lossy(&head[9..12]).into_owned())
        }
        _ => Reply::Garbage,
    })
}

/// Why a TLS probe failed.
#[derive(Debug)]
enum Failure {
    /// Before TLS: connect, timeout.
    Probe(ProbeError),
    /// The certificate was refused (strict only).
    Certificate(CertificateError),
    /// The origin sent an alert.
    Alert(AlertDescription),
    /// The other side does not speak TLS: what came back was not a TLS record, or the
    /// connection ended mid-handshake.
    NotTls(String),
    /// Anything else, in rustls' or the system's words.
    Other(String),
}

impl Failure {
    fn from_io(e: std::io::Error) -> Self {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::InvalidCertificate(c)) => Self::Certificate(c.clone()),
            Some(rustls::Error::AlertReceived(a)) => Self::Alert(*a),
            Some(rustls::Error::InvalidMessage(m)) => {
                Self::NotTls(format!("the answer is not a TLS record ({m:?})"))
            }
            Some(other) => Self::Other(other.to_string()),
            None if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Self::NotTls("the origin closed the connection during the handshake".to_owned())
            }
            None if e.kind() == std::io::ErrorKind::ConnectionReset => {
                Self::NotTls("the origin reset the connection during the handshake".to_owned())
            }
            None => Self::Other(e.to_string()),
        }
    }

    /// Whether the origin did not speak TLS at all.
    fn is_not_tls(&self) -> bool {
        matches!(self, Self::NotTls(_))
    }

    /// The sentence for the finding, naming what the certificate holds (`chain`, as
    /// presented) and the name that was asked for.
    fn explain(&self, chain: &[CertificateDer<'static>], name: &str) -> String {
        let leaf = chain.first().and_then(|c| CertInfo::parse(c).ok());
        match self {
            Self::Probe(e) => e.to_string(),
            Self::NotTls(why) | Self::Other(why) => why.clone(),
            Self::Alert(AlertDescription::CertificateRequired) => format!(
                "the origin {CLIENT_CERT} (authenticated origin pulls): it sent the TLS alert certificate_required"
            ),
            Self::Alert(a) => format!("the origin sent the TLS alert {}", alert_name(*a)),
            Self::Certificate(CertificateError::UnknownIssuer) => {
                if chain.first().is_some_and(|c| signs_itself(c)) {
                    "unknown CA: the certificate is self-signed".to_owned()
                } else {
                    format!(
                        "unknown CA: the certificate is issued by {}, which is not a trusted root",
                        leaf.map_or_else(|| "an unknown issuer".to_owned(), |l| l.issuer)
                    )
                }
            }
            Self::Certificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => {
                // webpki's own list of names is in its debug notation: the leaf's read better.
                let holds = leaf
                    .map(|l| l.names.join(", "))
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| "no names".to_owned());
                format!("name mismatch: the certificate is for {holds}, not `{name}`")
            }
            Self::Certificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            ) => {
                format!(
                    "the certificate expired{}",
                    leaf.map(|l| format!(" on {}", format_time(l.not_after)))
                        .unwrap_or_default()
                )
            }
            Self::Certificate(
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
            ) => "the certificate is not valid yet".to_owned(),
            Self::Certificate(other) => format!("the certificate is refused: {other:?}"),
        }
    }
}

/// An alert as the TLS specification names it (`certificate_required`).
fn alert_name(a: AlertDescription) -> String {
    let debug = format!("{a:?}");
    let mut out = String::new();
    for (i, ch) in debug.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_are_named_as_the_specification_does() {
        assert_eq!(
            alert_name(AlertDescription::CertificateRequired),
            "certificate_required"
        );
        assert_eq!(
            alert_name(AlertDescription::HandshakeFailure),
            "handshake_failure"
        );
    }
}
