//! Opens connections to one origin server: TCP with a deadline, a PROXY protocol header when
//! the origin wants one, then TLS when the mode asks for it. Each server has its own
//! connector and address, so the URI the pool hands in only keys the pool: normally it
//! carries the client's Host; for PROXY protocol origins it carries the client's and the
//! listener's addresses (see [`pool_authority`]), so connections are never shared between
//! clients and the connector knows what header to write.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::net::{IpAddr, SocketAddr};

use http::Uri;
use http::uri::Authority;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use portcullis_config::ProxyProtocolVersion;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::{OriginError, OriginFailureKind};
use crate::proxy_protocol::{ProxyAddrs, encode_v1, encode_v2};

#[derive(Clone)]
pub(crate) struct OriginConnector {
    target: Arc<Target>,
}

struct Target {
    host: Box<str>,
    port: u16,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    connect_timeout: Duration,
    proxy_protocol: Option<ProxyProtocolVersion>,
}

impl OriginConnector {
    pub(crate) fn new(
        host: &str,
        port: u16,
        tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
        connect_timeout: Duration,
        proxy_protocol: Option<ProxyProtocolVersion>,
    ) -> Self {
        Self {
            target: Arc::new(Target {
                host: host.into(),
                port,
                tls,
                connect_timeout,
                proxy_protocol,
            }),
        }
    }
}

/// The pool key of a PROXY protocol origin's connections for one client: both addresses,
/// as a host name (`<source ip hex>.<port>.<destination ip hex>.<port>.pp`).
pub(crate) fn pool_authority(addrs: &ProxyAddrs) -> Option<Authority> {
    let hex = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4
            .octets()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        IpAddr::V6(v6) => v6
            .octets()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    };
    let (s, d) = (addrs.source, addrs.destination);
    Authority::try_from(format!(
        "{}.{}.{}.{}.pp",
        hex(s.ip()),
        s.port(),
        hex(d.ip()),
        d.port()
    ))
    .ok()
}

/// The addresses [`pool_authority`] put in a URI, if it holds any.
fn addrs_from(uri: &Uri) -> Option<ProxyAddrs> {
    let host = uri.host()?.strip_suffix(".pp")?;
    let mut parts = host.split('.');
    let mut addr = || -> Option<SocketAddr> {
        let hex = parts.next()?;
        let port = parts.next()?.parse().ok()?;
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<_>>()?;
        let ip = match bytes.len() {
            4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
            16 => IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
            _ => return None,
        };
        Some(SocketAddr::new(ip, port))
    };
    Some(ProxyAddrs {
        source: addr()?,
        destination: addr()?,
    })
}

/// The PROXY header for a connection: the client's addresses, or `LOCAL` for the gateway's
/// own connections (health checks).
fn proxy_header(version: ProxyProtocolVersion, addrs: Option<&ProxyAddrs>) -> Vec<u8> {
    match (version, addrs) {
        (ProxyProtocolVersion::V1, Some(a)) => encode_v1(a),
        (ProxyProtocolVersion::V2, Some(a)) => encode_v2(a),
        (ProxyProtocolVersion::V1, None) => b"PROXY UNKNOWN\r\n".to_vec(),
        (ProxyProtocolVersion::V2, None) => {
            let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
            // Version 2, command LOCAL, no addresses.
            h.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
            h
        }
    }
}

impl tower_service::Service<Uri> for OriginConnector {
    type Response = TokioIo<OriginStream>;
    type Error = OriginError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, OriginError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let target = self.target.clone();
        let header = target
            .proxy_protocol
            .map(|v| proxy_header(v, addrs_from(&uri).as_ref()));
        Box::pin(async move {
            match tokio::time::timeout(target.connect_timeout, connect(&target, header)).await {
                Ok(result) => result.map(TokioIo::new),
                Err(_) => Err(OriginError::new(
                    OriginFailureKind::ConnectTimeout,
                    format!(
                        "connect to {}:{} timed out after {:?}",
                        target.host, target.port, target.connect_timeout
                    ),
                )),
            }
        })
    }
}

async fn connect(target: &Target, header: Option<Vec<u8>>) -> Result<OriginStream, OriginError> {
    let mut tcp = connect_tcp(target).await?;
    let _ = tcp.set_nodelay(true);
    if let Some(header) = header {
        tcp.write_all(&header).await.map_err(|e| {
            OriginError::new(
                OriginFailureKind::Connect,
                format!("PROXY header to {}:{}: {e}", target.host, target.port),
            )
        })?;
    }
    let Some((config, name)) = &target.tls else {
        return Ok(OriginStream::Plain(tcp));
    };
    match TlsConnector::from(config.clone())
        .connect(name.clone(), tcp)
        .await
    {
        Ok(tls) => Ok(OriginStream::Tls(Box::new(tls))),
        Err(e) => {
            let kind = match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(rustls::Error::InvalidCertificate(_)) => OriginFailureKind::Verify,
                _ => OriginFailureKind::Tls,
            };
            Err(OriginError::new(
                kind,
                format!(
                    "TLS to {}:{} (server name {}): {e}",
                    target.host,
                    target.port,
                    name.to_str()
                ),
            ))
        }
    }
}

/// Connects to the origin's IP, or to each address its name resolves to in turn.
async fn connect_tcp(target: &Target) -> Result<TcpStream, OriginError> {
    let fail = |kind, e: &dyn std::fmt::Display| {
        OriginError::new(
            kind,
            format!("connect to {}:{}: {e}", target.host, target.port),
        )
    };
    let kind_of = |e: &io::Error| match e.kind() {
        io::ErrorKind::ConnectionRefused => OriginFailureKind::Refused,
        _ => OriginFailureKind::Connect,
    };
    if let Ok(ip) = target.host.parse::<std::net::IpAddr>() {
        return TcpStream::connect((ip, target.port))
            .await
            .map_err(|e| fail(kind_of(&e), &e));
    }
    let addrs = tokio::net::lookup_host((&*target.host, target.port))
        .await
        .map_err(|e| fail(OriginFailureKind::Resolve, &e))?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => fail(kind_of(&e), &e),
        None => fail(OriginFailureKind::Resolve, &"the name has no addresses"),
    })
}

/// A connection to an origin, plaintext or TLS.
pub(crate) enum OriginStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for OriginStream {
    fn connected(&self) -> Connected {
        match self {
            OriginStream::Plain(_) => Connected::new(),
            OriginStream::Tls(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                Connected::new().negotiated_h2()
            }
            OriginStream::Tls(_) => Connected::new(),
        }
    }
}

impl AsyncRead for OriginStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            OriginStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            OriginStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for OriginStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            OriginStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            OriginStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            OriginStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            OriginStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            OriginStream::Plain(s) => s.is_write_vectored(),
            OriginStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            OriginStream::Plain(s) => Pin::new(s).poll_flush(cx),
            OriginStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            OriginStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            OriginStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses_survive_the_pool_key() {
        for (s, d) in [
            ("203.0.113.7:51234", "192.0.2.1:443"),
            ("[2001:db8::7]:1", "[::1]:8443"),
        ] {
            let addrs = ProxyAddrs {
                source: s.parse().unwrap(),
                destination: d.parse().unwrap(),
            };
            let authority = pool_authority(&addrs).unwrap();
            let uri = Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query("/")
                .build()
                .unwrap();
            assert_eq!(addrs_from(&uri), Some(addrs));
        }
        let plain: Uri = "http://example.com/".parse().unwrap();
        assert_eq!(addrs_from(&plain), None);
    }
}
