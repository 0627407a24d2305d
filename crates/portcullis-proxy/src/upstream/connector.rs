//! Opens connections to one origin server: TCP with a deadline, a PROXY protocol header when
//! the origin wants one, then TLS when the mode asks for it. Each server has its own
//! connector and address, so the pool hands in only its key: shared, or for PROXY protocol
//! origins the client's and the listener's addresses ([`PoolKey::Client`]), so connections
//! are never shared between clients and the connector knows what header to write.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use portcullis_config::ProxyProtocolVersion;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::pool::PoolKey;
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

impl tower_service::Service<PoolKey> for OriginConnector {
    type Response = TokioIo<OriginStream>;
    type Error = OriginError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, OriginError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, key: PoolKey) -> Self::Future {
        let target = self.target.clone();
        let header = target.proxy_protocol.map(|v| proxy_header(v, key.addrs()));
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
            let key = PoolKey::Client(Arc::new(addrs));
            assert_eq!(key.addrs(), Some(&addrs));
            for v in [ProxyProtocolVersion::V1, ProxyProtocolVersion::V2] {
                let header = proxy_header(v, key.addrs());
                let expected = match v {
                    ProxyProtocolVersion::V1 => encode_v1(&addrs),
                    ProxyProtocolVersion::V2 => encode_v2(&addrs),
                };
                assert_eq!(header, expected);
            }
        }
        assert_eq!(PoolKey::Shared.addrs(), None);
        assert_eq!(
            proxy_header(ProxyProtocolVersion::V1, PoolKey::Shared.addrs()),
            b"PROXY UNKNOWN\r\n"
        );
    }
}
