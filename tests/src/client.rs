//! A TLS client that dials the gateway's address whatever the host, with control over SNI
//! and ALPN, speaking HTTP/1.1 or HTTP/2 as negotiated.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Body type of client requests.
pub type ClientBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// An empty request body.
pub fn empty() -> ClientBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// A request body of fixed bytes.
pub fn bytes(b: impl Into<Bytes>) -> ClientBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// Dials one address and trusts one root.
#[derive(Clone)]
pub struct TestClient {
    addr: SocketAddr,
    roots: Arc<RootCertStore>,
}

/// A response read to the end.
#[derive(Debug)]
pub struct Resp {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// HTTP version of the response.
    pub version: Version,
}

impl Resp {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads a response body to the end.
pub async fn collect(resp: Response<Incoming>) -> Resp {
    let (parts, body) = resp.into_parts();
    Resp {
        status: parts.status,
        headers: parts.headers,
        version: parts.version,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

impl TestClient {
    /// A client for `addr` trusting only `root`.
    pub fn new(addr: SocketAddr, root: &CertificateDer<'static>) -> Self {
        crate::init();
        let mut roots = RootCertStore::empty();
        roots.add(root.clone()).unwrap();
        Self {
            addr,
            roots: Arc::new(roots),
        }
    }

    /// TLS to the gateway verifying `name`; `send_sni: false` leaves SNI out of the hello.
    pub async fn tls(
        &self,
        name: &str,
        send_sni: bool,
        alpn: &[&str],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        self.tls_over(tcp, name, send_sni, alpn).await
    }

    /// As [`tls`](Self::tls), over a TCP connection the test made (from an address of its
    /// own, or after bytes of its own such as a PROXY header).
    pub async fn tls_over(
        &self,
        tcp: TcpStream,
        name: &str,
        send_sni: bool,
        alpn: &[&str],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let mut config = ClientConfig::builder()
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        config.enable_sni = send_sni;
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    }

    /// As [`connect`](Self::connect), over a TCP connection the test made.
    pub async fn connect_over(
        &self,
        tcp: TcpStream,
        name: &str,
        alpn: &[&str],
    ) -> std::io::Result<Conn> {
        Conn::over(self.tls_over(tcp, name, true, alpn).await?).await
    }

    /// An HTTP connection with SNI `name`, HTTP/2 if `alpn` offers `h2` and it is chosen.
    pub async fn connect(&self, name: &str, alpn: &[&str]) -> std::io::Result<Conn> {
        Conn::over(self.tls(name, true, alpn).await?).await
    }

    /// Like [`connect`](Self::connect) but sends no SNI (verifying `name` all the same).
    pub async fn connect_no_sni(&self, name: &str, alpn: &[&str]) -> std::io::Result<Conn> {
        Conn::over(self.tls(name, false, alpn).await?).await
    }

    /// GET `path` on `host` over a fresh HTTP/1.1 connection with SNI `host`.
    pub async fn get(&self, host: &str, path: &str) -> Resp {
        let mut conn = self.connect(host, &["http/1.1"]).await.unwrap();
        conn.get(host, path).await
    }
}

/// The TLS alert a failed handshake received from the gateway (`unrecognized_name` for a
/// name no site claims), if that is how it failed.
pub fn alert_received(err: &std::io::Error) -> Option<rustls::AlertDescription> {
    match err.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

/// A TCP connection to `to` from the loopback address `from` (all of 127.0.0.0/8 is this
/// machine's on Linux), so a test has client addresses of its own.
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

enum Sender {
    H1(http1::SendRequest<ClientBody>),
    H2(http2::SendRequest<ClientBody>),
}

/// One client connection to the gateway.
pub struct Conn {
    sender: Sender,
    /// The certificate the gateway presented.
    pub peer_leaf: CertificateDer<'static>,
    /// Negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
}

impl Conn {
    async fn over(tls: TlsStream<TcpStream>) -> std::io::Result<Self> {
        let (_, session) = tls.get_ref();
        let peer_leaf = session.peer_certificates().unwrap()[0].clone().into_owned();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let io = TokioIo::new(tls);
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = http1::handshake(io).await.map_err(std::io::Error::other)?;
            tokio::spawn(conn.with_upgrades());
            Sender::H1(sender)
        };
        Ok(Self {
            sender,
            peer_leaf,
            alpn,
        })
    }

    /// True when the connection speaks HTTP/2.
    pub fn is_h2(&self) -> bool {
        matches!(self.sender, Sender::H2(_))
    }

    /// A request builder with the target set for this connection's protocol: absolute URI
    /// for HTTP/2, origin-form plus `Host` for HTTP/1.1.
    pub fn request(&self, host: &str, path: &str) -> http::request::Builder {
        match self.sender {
            Sender::H2(_) => Request::builder()
                .version(Version::HTTP_2)
                .uri(format!("https://{host}{path}")),
            Sender::H1(_) => Request::builder().uri(path).header("host", host),
        }
    }

    /// Sends a request; the response body is left to read.
    pub async fn send(&mut self, req: Request<ClientBody>) -> hyper::Result<Response<Incoming>> {
        match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }

    /// GET `path` with host `host` and read the whole response.
    pub async fn get(&mut self, host: &str, path: &str) -> Resp {
        let req = self.request(host, path).body(empty()).unwrap();
        collect(self.send(req).await.unwrap()).await
    }
}
