//! Listeners and connection handling: accept, TLS, HTTP/1.1 or HTTP/2 by ALPN, and a
//! graceful drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portcullis_config::{Limits, Listen};
use portcullis_tls::{CertStore, Challenges, server_config};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{Instrument, debug, info, warn};

use crate::drain::{Drain, DrainWatch};
use crate::edge::{self, ConnInfo};
use crate::error::BindError;
use crate::headers::ClientAddr;
use crate::redirect;
use crate::router::Router;

/// State shared by every connection; each request reads the router snapshot once.
pub(crate) struct Shared {
    pub(crate) router: ArcSwap<Router>,
    pub(crate) certs: Arc<CertStore>,
    pub(crate) challenges: Arc<Challenges>,
    pub(crate) tls: Arc<ServerConfig>,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    handshake_timeout: Duration,
    https_port: AtomicU16,
}

impl Shared {
    /// Port of the HTTPS listener, for redirects (443 is left out of URLs).
    pub(crate) fn https_port(&self) -> u16 {
        self.https_port.load(Ordering::Relaxed)
    }
}

/// The edge: HTTPS with SNI certificates, and plain HTTP redirects.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

/// Bound listening sockets, ready to serve.
#[derive(Debug)]
pub struct Listeners {
    https: TcpListener,
    http: Option<TcpListener>,
}

impl Listeners {
    /// Binds the edge listeners; the error names the listener, the address and the usual fix.
    pub async fn bind(listen: &Listen) -> Result<Self, BindError> {
        let https = bind("https", listen.https).await?;
        let http = match listen.http {
            Some(addr) => Some(bind("http", addr).await?),
            None => None,
        };
        Ok(Self { https, http })
    }

    /// Address of the HTTPS listener (the real port when bound to port 0).
    pub fn https_addr(&self) -> SocketAddr {
        self.https
            .local_addr()
            .expect("a bound listener has a local address")
    }

    /// Address of the HTTP listener, if there is one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Binds a TCP listener, describing failures for a human.
pub async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| BindError::new(what, addr, &e))
}

impl Gateway {
    /// A gateway serving `router`'s sites with certificates from `certs`, answering ACME
    /// challenges from `challenges`.
    pub fn new(
        router: Router,
        certs: Arc<CertStore>,
        challenges: Arc<Challenges>,
        limits: &Limits,
    ) -> Result<Self, rustls::Error> {
        let tls = server_config(certs.clone())?;
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_header_size(limits.max_header_size)
            .max_buf_size(limits.max_header_size.max(8192) + 8192);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
        Ok(Self {
            shared: Arc::new(Shared {
                router: ArcSwap::from_pointee(router),
                certs,
                challenges,
                tls,
                h1,
                h2,
                handshake_timeout: limits.handshake_timeout,
                https_port: AtomicU16::new(443),
            }),
        })
    }

    /// Replaces the routing table; requests already running finish on the old one.
    pub fn set_router(&self, router: Router) {
        self.shared.router.store(Arc::new(router));
    }

    /// The current routing table.
    pub fn router(&self) -> Arc<Router> {
        self.shared.router.load_full()
    }

    /// The certificate store handshakes resolve against.
    pub fn certs(&self) -> &Arc<CertStore> {
        &self.shared.certs
    }

    /// Serves until `shutdown` completes, then stops accepting and lets in-flight requests
    /// finish for up to `drain_timeout`. Returns true if everything finished in time.
    pub async fn serve(
        &self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()>,
        drain_timeout: Duration,
    ) -> bool {
        let shared = &self.shared;
        shared
            .https_port
            .store(listeners.https_addr().port(), Ordering::Relaxed);
        let drain = Drain::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        let https = tokio::spawn(accept_loop(
            listeners.https,
            stop_rx.clone(),
            drain.watcher(),
            shared.clone(),
            Proto::Https,
        ));
        let http = listeners.http.map(|l| {
            tokio::spawn(accept_loop(
                l,
                stop_rx.clone(),
                drain.watcher(),
                shared.clone(),
                Proto::Http,
            ))
        });
        shutdown.await;
        let _ = stop_tx.send(true);
        let _ = https.await;
        if let Some(http) = http {
            let _ = http.await;
        }
        info!(
            drain_timeout_s = drain_timeout.as_secs_f64(),
            "stopped accepting; draining connections"
        );
        match tokio::time::timeout(drain_timeout, drain.drain()).await {
            Ok(()) => {
                info!("all connections drained");
                true
            }
            Err(_) => {
                warn!("drain timeout reached; closing the remaining connections");
                false
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Proto {
    Https,
    Http,
}

async fn accept_loop(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    watcher: DrainWatch,
    shared: Arc<Shared>,
    proto: Proto,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Usually out of file descriptors; back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let watcher = watcher.clone();
        let span = tracing::debug_span!("conn", %peer, ?proto);
        tokio::spawn(
            async move {
                match proto {
                    Proto::Https => serve_tls(shared, tcp, peer, watcher).await,
                    Proto::Http => serve_plain(shared, tcp, watcher).await,
                }
            }
            .instrument(span),
        );
    }
}

async fn serve_tls(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, watcher: DrainWatch) {
    let tls = match tokio::time::timeout(
        shared.handshake_timeout,
        crate::tls_accept::accept(tcp, &shared),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(failure = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!("TLS handshake timed out");
            return;
        }
    };
    let (_, session) = tls.get_ref();
    let h2 = session.alpn_protocol() == Some(b"h2");
    let conn = Arc::new(ConnInfo {
        peer,
        sni: session.server_name().map(Box::from),
        client: ClientAddr::new(peer.ip()),
        drain: watcher.clone(),
    });
    let svc = {
        let shared = shared.clone();
        service_fn(move |req| edge::handle(shared.clone(), conn.clone(), req))
    };
    let io = TokioIo::new(tls);
    let result = if h2 {
        watcher.watch(shared.h2.serve_connection(io, svc)).await
    } else {
        watcher
            .watch(shared.h1.serve_connection(io, svc).with_upgrades())
            .await
    };
    if let Err(e) = result {
        debug!(error = %e, "connection ended with an error");
    }
}

async fn serve_plain(shared: Arc<Shared>, tcp: TcpStream, watcher: DrainWatch) {
    let svc = {
        let shared = shared.clone();
        service_fn(move |req| redirect::handle(shared.clone(), req))
    };
    if let Err(e) = watcher
        .watch(shared.h1.serve_connection(TokioIo::new(tcp), svc))
        .await
    {
        debug!(error = %e, "connection ended with an error");
    }
}
