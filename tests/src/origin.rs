//! Origin servers on 127.0.0.1:0: plaintext (HTTP/1.1 and h2c), TLS with a chosen ALPN, and
//! TLS that requires a client certificate. They record what they receive.
//!
//! Paths: `/slow/<ms>` answers after a delay; `/bytes/<n>` streams n bytes; `/upload`
//! counts the request body; `/early` answers 413 without reading the request body;
//! `/ws` is a WebSocket echo; `/status/<code>`; `/hop` answers
//! with hop-by-hop headers; anything else answers `ok <method> <path>`. Every response
//! carries `x-origin: <port>`, so a test with several origins sees which one answered.
//!
//! An origin can be stopped (listener and open connections closed, as a crashed server)
//! and started again on the same address with [`TestOrigin::http_on`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::ca::Leaf;

/// Body type of the origin's responses.
pub type OriginBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// One request as the origin saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// HTTP version on the origin connection.
    pub version: Version,
    /// Method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// Headers as received.
    pub headers: HeaderMap,
    /// The request target's authority: HTTP/2's `:authority` (HTTP/1.1 requests from the
    /// gateway carry a path alone).
    pub authority: Option<String>,
    /// Common name of the client certificate, when one was presented.
    pub client_cert: bool,
}

#[derive(Default)]
struct State {
    connections: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    /// The `x-origin` header of every response: the listening port.
    port: u16,
    /// The tasks serving accepted connections, so `stop` can close them.
    serving: Mutex<Vec<JoinHandle<()>>>,
}

/// A port on 127.0.0.1 with nothing listening on it: an origin that refuses connections.
pub async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// A running origin; stops when dropped.
pub struct TestOrigin {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for TestOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestOrigin {
    /// Plaintext HTTP/1.1 (and h2c with prior knowledge).
    pub async fn http() -> Self {
        Self::start(None).await
    }

    /// TLS with `leaf`, offering `alpn` (e.g. `["h2"]` or `["http/1.1"]`).
    pub async fn https(leaf: &Leaf, alpn: &[&str]) -> Self {
        Self::start(Some(tls_config(leaf, alpn, None))).await
    }

    /// TLS that refuses clients without a certificate from `client_ca`.
    pub async fn https_requiring_client_cert(
        leaf: &Leaf,
        alpn: &[&str],
        client_ca: &CertificateDer<'static>,
    ) -> Self {
        Self::start(Some(tls_config(leaf, alpn, Some(client_ca)))).await
    }

    /// Plaintext HTTP/1.1 (and h2c) on `addr`: a port an origin had before it was
    /// stopped. Binding is retried for a few seconds in case something briefly holds it.
    pub async fn http_on(addr: SocketAddr) -> Self {
        crate::init();
        let listener = crate::wait::until(
            Duration::from_secs(5),
            "the port to be free",
            || async move { TcpListener::bind(addr).await.ok() },
        )
        .await;
        Self::serve(listener, None)
    }

    async fn start(tls: Option<Arc<ServerConfig>>) -> Self {
        crate::init();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, tls)
    }

    fn serve(listener: TcpListener, tls: Option<Arc<ServerConfig>>) -> Self {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            port: addr.port(),
            ..State::default()
        });
        let task = tokio::spawn(accept_loop(listener, tls, state.clone()));
        Self { addr, state, task }
    }

    /// Stops as a crashed server would: the port refuses connections and every open
    /// connection is closed, with no response to requests in progress. Returns once all
    /// of it is closed.
    pub async fn stop(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        let serving = std::mem::take(&mut *self.state.serving.lock().unwrap());
        for task in &serving {
            task.abort();
        }
        for task in serving {
            let _ = task.await;
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// The most recent request.
    pub fn last(&self) -> Seen {
        self.seen()
            .pop()
            .expect("the origin has received no request")
    }
}

fn tls_config(
    leaf: &Leaf,
    alpn: &[&str],
    client_ca: Option<&CertificateDer<'static>>,
) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.clone()).unwrap();
            builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .unwrap(),
            )
        }
    };
    let mut config = builder
        .with_single_cert(vec![leaf.cert_der.clone()], leaf.key_der.clone_key())
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

async fn accept_loop(listener: TcpListener, tls: Option<Arc<ServerConfig>>, state: Arc<State>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        let tracked = state.clone();
        let state = state.clone();
        let tls = tls.clone();
        let serving = tokio::spawn(async move {
            match tls {
                None => {
                    let svc = service_fn(move |req| handle(state.clone(), false, req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                        .await;
                }
                Some(config) => {
                    let Ok(stream) = TlsAcceptor::from(config).accept(tcp).await else {
                        return;
                    };
                    let (_, session) = stream.get_ref();
                    let h2 = session.alpn_protocol() == Some(b"h2");
                    let client_cert = session.peer_certificates().is_some_and(|c| !c.is_empty());
                    let svc = service_fn(move |req| handle(state.clone(), client_cert, req));
                    let io = TokioIo::new(stream);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .with_upgrades()
                            .await;
                    }
                }
            }
        });
        let mut tasks = tracked.serving.lock().unwrap();
        tasks.retain(|t| !t.is_finished());
        tasks.push(serving);
    }
}

fn full(body: impl Into<Bytes>) -> OriginBody {
    Full::new(body.into()).map_err(|e| match e {}).boxed()
}

async fn handle(
    state: Arc<State>,
    client_cert: bool,
    req: Request<Incoming>,
) -> Result<Response<OriginBody>, Infallible> {
    let port = state.port;
    let mut resp = respond(state, client_cert, req).await;
    resp.headers_mut().insert("x-origin", port.into());
    Ok(resp)
}

async fn respond(
    state: Arc<State>,
    client_cert: bool,
    mut req: Request<Incoming>,
) -> Response<OriginBody> {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/".to_owned(), |pq| pq.as_str().to_owned());
    state.seen.lock().unwrap().push(Seen {
        version: req.version(),
        method: req.method().clone(),
        path: path.clone(),
        headers: req.headers().clone(),
        authority: req.uri().authority().map(|a| a.to_string()),
        client_cert,
    });
    let segments: Vec<&str> = req
        .uri()
        .path()
        .trim_start_matches('/')
        .splitn(2, '/')
        .collect();
    match segments.as_slice() {
        ["slow", ms] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
            Response::new(full("slow done"))
        }
        ["bytes", n] => Response::new(stream_bytes(n.parse().unwrap_or(0))),
        ["upload"] => {
            let mut n: u64 = 0;
            let body = req.body_mut();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            Response::new(full(format!("received {n}")))
        }
        ["early"] => {
            let mut r = Response::new(full("too large"));
            *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            r
        }
        ["ws"] => websocket(req),
        ["status", code] => {
            let mut r = Response::new(full(format!("status {code}")));
            *r.status_mut() = code
                .parse()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::OK);
            r
        }
        ["hop"] => Response::builder()
            .header("connection", "x-private")
            .header("x-private", "secret")
            .header("keep-alive", "timeout=5")
            .header("x-public", "yes")
            .body(full("hop"))
            .unwrap(),
        _ => Response::new(full(format!("ok {} {}", req.method(), path))),
    }
}

/// `n` bytes of `x` in 64 KiB chunks, produced as they are read (never held in memory).
fn stream_bytes(n: u64) -> OriginBody {
    const CHUNK: u64 = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK as usize]);
    let stream = futures_util::stream::unfold(n, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let take = left.min(CHUNK);
            Some((
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(
                    chunk.slice(..take as usize),
                )),
                left - take,
            ))
        }
    });
    BodyExt::boxed(StreamBody::new(stream))
}

fn websocket(mut req: Request<Incoming>) -> Response<OriginBody> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut r = Response::new(full("not a websocket request"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header(
            "sec-websocket-accept",
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
        )
        .body(full(Bytes::new()))
        .unwrap()
}
