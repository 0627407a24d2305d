//! The first floor of a request: listeners and connection handling. Accept under the
//! connection caps, the PROXY header from a trusted load balancer, TLS ([`tls_accept`]),
//! HTTP/1.1 ([`h1`]) or HTTP/2 by ALPN, each connection supervised for slow heads, idleness
//! and reset floods, and a graceful drain on shutdown; each request goes to
//! [`request::handle`] (HTTPS) or [`redirect::handle`] (plain HTTP). Listeners can be
//! replaced while running (reload binds the new socket before the old one closes).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis_config::{Limits, Listen};
use portcullis_tls::{CertStore, Challenges, server_config};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, warn};

use crate::conn::{
    ClockedIo, ConnClock, ConnInfo, ConnPermit, ConnTracker, Drain, DrainWatch, OpenGuard,
    PerIpWarning, Supervised,
};
use crate::error::BindError;
use crate::headers::ClientAddr;
use crate::metrics::{ListenerMetrics, ProxyMetrics, RejectReason};
use crate::proxy_protocol::{ProxyHeader, ProxyProtocolError, read_header};
use crate::request::{self, redirect};
use crate::router::Router;
use crate::shared::{ConnSettings, Shared};

mod h1;
mod tls_accept;

/// Which edge listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    /// The TLS listener.
    Https,
    /// The plain HTTP listener (redirects, ACME HTTP-01).
    Http,
}

impl ListenerKind {
    fn label(self) -> &'static str {
        match self {
            ListenerKind::Https => "https",
            ListenerKind::Http => "http",
        }
    }
}

struct Running {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The edge: HTTPS with SNI certificates, and plain HTTP redirects.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
    listeners: Arc<Mutex<HashMap<ListenerKind, Running>>>,
    drain: Arc<Mutex<Option<Drain>>>,
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

    /// The HTTPS and HTTP sockets, to hand to [`Gateway::listen`].
    pub fn into_parts(self) -> (TcpListener, Option<TcpListener>) {
        (self.https, self.http)
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
    /// challenges from `challenges`, recording into `metrics`.
    pub fn new(
        router: Router,
        certs: Arc<CertStore>,
        challenges: Arc<Challenges>,
        limits: &Limits,
        metrics: ProxyMetrics,
    ) -> Result<Self, rustls::Error> {
        let tls = server_config(certs.clone())?;
        Ok(Self {
            shared: Arc::new(Shared {
                router: ArcSwap::from_pointee(router),
                certs,
                challenges,
                tls,
                settings: ArcSwap::from_pointee(ConnSettings::new(limits)),
                conns: Arc::new(ConnTracker::default()),
                metrics,
                https_port: AtomicU16::new(443),
            }),
            listeners: Arc::new(Mutex::new(HashMap::new())),
            drain: Arc::new(Mutex::new(Some(Drain::new()))),
        })
    }

    /// Replaces the routing table; requests already running finish on the old one.
    pub fn set_router(&self, router: Router) {
        let kept: std::collections::HashSet<Arc<str>> = router.server_labels().collect();
        let router = Arc::new(router);
        let old = self.shared.router.swap(router.clone());
        old.forget_routes_missing_from(&router, &self.shared.metrics);
        // Series of servers no longer configured would report their last state forever.
        for gone in old.server_labels().filter(|l| !kept.contains(l)) {
            self.shared.metrics.forget_origin(&gone);
        }
    }

    /// Applies new limits to connections accepted from now on.
    pub fn set_limits(&self, limits: &Limits) {
        self.shared
            .settings
            .store(Arc::new(ConnSettings::new(limits)));
        self.shared.conns.forget_warned();
    }

    /// The current routing table.
    pub fn router(&self) -> Arc<Router> {
        self.shared.router.load_full()
    }

    /// The certificate store handshakes resolve against.
    pub fn certs(&self) -> &Arc<CertStore> {
        &self.shared.certs
    }

    /// The data path's metrics.
    pub fn metrics(&self) -> &ProxyMetrics {
        &self.shared.metrics
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.conns.open()
    }

    fn listeners(&self) -> std::sync::MutexGuard<'_, HashMap<ListenerKind, Running>> {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts accepting on `listener` as the `kind` listener. A listener of that kind
    /// already running stops accepting once this one has started; its connections go on.
    pub fn listen(&self, kind: ListenerKind, listener: TcpListener) {
        let Some(watcher) = self
            .drain
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Drain::watcher)
        else {
            return; // shutting down
        };
        let addr = listener
            .local_addr()
            .expect("a bound listener has a local address");
        if kind == ListenerKind::Https {
            self.shared.https_port.store(addr.port(), Ordering::Relaxed);
        }
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(
            listener,
            stopped,
            watcher,
            self.shared.clone(),
            kind,
        ));
        let previous = self.listeners().insert(kind, Running { addr, stop, task });
        if let Some(old) = previous {
            let _ = old.stop.send(true);
            info!(listener = kind.label(), old = %old.addr, new = %addr, "listener moved");
        }
    }

    /// Stops accepting on the `kind` listener, if it runs; its connections go on.
    pub fn stop_listener(&self, kind: ListenerKind) {
        if let Some(old) = self.listeners().remove(&kind) {
            let _ = old.stop.send(true);
        }
    }

    /// Where the `kind` listener accepts now.
    pub fn listener_addr(&self, kind: ListenerKind) -> Option<SocketAddr> {
        self.listeners().get(&kind).map(|r| r.addr)
    }

    /// Stops every listener, then lets in-flight requests finish for up to
    /// `drain_timeout`. Returns true if everything finished in time.
    pub async fn shutdown(&self, drain_timeout: Duration) -> bool {
        let running: Vec<Running> = self.listeners().drain().map(|(_, r)| r).collect();
        for r in &running {
            let _ = r.stop.send(true);
        }
        for r in running {
            let _ = r.task.await;
        }
        let Some(drain) = self.drain.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return true;
        };
        info!(
            drain_timeout_s = drain_timeout.as_secs_f64(),
            open = self.open_connections(),
            "stopped accepting; draining connections"
        );
        match tokio::time::timeout(drain_timeout, drain.drain()).await {
            Ok(()) => {
                info!("all connections drained");
                true
            }
            Err(_) => {
                warn!(
                    open = self.open_connections(),
                    "drain timeout reached; closing the remaining connections"
                );
                false
            }
        }
    }

    /// Serves `listeners` until `shutdown` completes, then [`shutdown`](Self::shutdown)s.
    pub async fn serve(
        &self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()>,
        drain_timeout: Duration,
    ) -> bool {
        self.listen(ListenerKind::Https, listeners.https);
        if let Some(http) = listeners.http {
            self.listen(ListenerKind::Http, http);
        }
        shutdown.await;
        self.shutdown(drain_timeout).await
    }
}

async fn accept_loop(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    watcher: DrainWatch,
    shared: Arc<Shared>,
    kind: ListenerKind,
) {
    let metrics = shared.metrics.listener(kind.label());
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
        let settings = shared.settings.load_full();
        // A load balancer sending PROXY headers carries many clients on one address, so
        // the per-IP cap does not apply to it.
        let proxied = shared.router.load().expects_proxy_protocol(peer.ip());
        let permit = match shared.conns.acquire(
            peer.ip(),
            settings.max_connections,
            settings.max_connections_per_ip.filter(|_| !proxied),
        ) {
            Ok(p) => p,
            Err(reason) => {
                metrics.rejected(reason);
                debug!(%peer, ?reason, "connection refused");
                if let (RejectReason::MaxConnectionsPerIp, Some(max)) =
                    (reason, settings.max_connections_per_ip)
                {
                    warn_per_ip(&shared.conns, peer.ip(), max);
                }
                continue;
            }
        };
        metrics.accepted.inc();
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let watcher = watcher.clone();
        let metrics = metrics.clone();
        let span = tracing::debug_span!("conn", %peer, listener = kind.label());
        let accepted = Accepted {
            tcp,
            peer,
            proxied,
            kind,
            permit,
            settings,
            shared,
            watcher,
            metrics,
        };
        tokio::spawn(connection(Box::new(accepted)).instrument(span));
    }
}

/// Logs a refusal under `limits.max_connections_per_ip`, the first of each address only:
/// a NAT or a load balancer puts many clients behind one address, and the operator must be
/// able to find which setting turned them away.
fn warn_per_ip(conns: &ConnTracker, ip: std::net::IpAddr, max: usize) {
    match conns.per_ip_warning(ip) {
        PerIpWarning::First => warn!(
            peer = %ip,
            limit = max,
            "connection refused: this address already has {max} connections open \
             (limits.max_connections_per_ip); clients behind one NAT or load balancer share \
             an address, so raise the limit or set it to 0 (unlimited); later refusals of \
             this address are only counted in portcullis_connections_rejected_total"
        ),
        PerIpWarning::Saturated => warn!(
            limit = max,
            "connections refused from many addresses under limits.max_connections_per_ip; \
             refusals of further addresses are only counted in \
             portcullis_connections_rejected_total"
        ),
        PerIpWarning::Quiet => {}
    }
}

/// A connection the listener took, with what serving it needs.
struct Accepted {
    tcp: TcpStream,
    peer: SocketAddr,
    /// The peer sends a PROXY protocol header first.
    proxied: bool,
    kind: ListenerKind,
    permit: ConnPermit,
    settings: Arc<ConnSettings>,
    shared: Arc<Shared>,
    watcher: DrainWatch,
    metrics: ListenerMetrics,
}

/// Serves one client connection, from its PROXY header (if any) to its close. This future
/// is the connection's task, allocated whole for as long as the connection is open, so
/// each phase's state (PROXY header, handshake, HTTP/1.1 or HTTP/2 connection) is boxed
/// and held only while that phase runs: an idle keep-alive connection should not carry
/// the handshake's buffers, nor the protocol it does not speak.
///
/// For the same reason the connection comes boxed and is taken apart here, in one
/// function: an `async fn` keeps its arguments for its whole life besides the locals it
/// moves them into, so every argument is stored twice, and a chain of such functions
/// (this one calling one for TLS, that one the HTTP/1.1 loop) stored the connection's
/// addresses, permit and metrics several times over (736 bytes for this task).
async fn connection(a: Box<Accepted>) {
    let Accepted {
        mut tcp,
        peer,
        proxied,
        kind,
        permit,
        settings,
        shared,
        mut watcher,
        metrics,
    } = *a;
    let open = OpenGuard::new(&metrics, permit);
    let (peer, local) = if proxied {
        match Box::pin(read_header(&mut tcp, settings.header_read_timeout)).await {
            Ok(ProxyHeader::Proxied(addrs)) => (addrs.source, Some(addrs.destination)),
            Ok(ProxyHeader::Local) => (peer, None),
            // A load balancer's TCP health check connects and closes.
            Err(ProxyProtocolError::Closed) => return,
            Err(e) => {
                metrics.rejected(RejectReason::ProxyProtocol);
                debug!(%peer, error = %e, "PROXY protocol header refused");
                return;
            }
        }
    } else {
        (peer, None)
    };
    let local = local.unwrap_or_else(|| local_addr(&tcp));
    let timeouts = settings.timeouts();
    let outcome = match kind {
        ListenerKind::Https => {
            // Boxed, like the connections below, so the handshake's state (and its timer)
            // is freed when it ends rather than sized into the task that outlives it.
            let accepted = Box::pin(tokio::time::timeout(
                settings.handshake_timeout,
                tls_accept::accept(tcp, &shared),
            ))
            .await;
            let Some(tls) = handshake_done(&shared, accepted) else {
                return;
            };
            let (_, session) = tls.get_ref();
            let h2 = session.alpn_protocol() == Some(b"h2");
            let sni = session.server_name().map(Box::from);
            let conn = conn_info(
                &shared,
                &settings,
                (peer, local),
                Some(sni),
                !h2,
                &watcher,
                open,
            );
            if h2 {
                let clock = conn.clock.clone();
                let io = TokioIo::new(ClockedIo::new(tls, clock.clone()));
                let svc = service_fn(move |req| {
                    // Boxed: hyper spawns a task per stream holding this future and moves
                    // it on the way there; a pointer moves cheaper than the request future.
                    boxed(|| request::handle(shared.clone(), conn.clone(), req))
                });
                // Boxed, so an HTTP/1.1 connection's task is not sized for HTTP/2's
                // supervision.
                let h2 = Box::pin(settings.h2.serve_connection(io, svc));
                match Box::pin(watcher.supervise(h2, &clock, timeouts)).await {
                    // The h2 crate's own guard (streams reset before they were accepted)
                    // ends the connection with ENHANCE_YOUR_CALM: the same abuse, counted
                    // the same way.
                    Supervised::Done(Err(e)) if calmed_down(&e) => Supervised::Abusive,
                    other => other.err_to_string(),
                }
            } else {
                // hyper keeps an HTTP/1.1 connection's request future allocated between
                // requests; boxed, it is a pointer while the connection is idle. (HTTP/2
                // streams are tasks of their own, freed when they end.) The serving loop is
                // boxed too, so neither protocol's state is sized into the other's task.
                let svc = {
                    let conn = conn.clone();
                    service_fn(move |req| {
                        boxed(|| request::handle(shared.clone(), conn.clone(), req))
                    })
                };
                Box::pin(h1::serve(
                    &settings.h1,
                    tls,
                    svc,
                    &conn,
                    &mut watcher,
                    &timeouts,
                ))
                .await
            }
        }
        ListenerKind::Http => {
            let conn = conn_info(
                &shared,
                &settings,
                (peer, local),
                None,
                true,
                &watcher,
                open,
            );
            let svc = {
                let conn = conn.clone();
                service_fn(move |req| boxed(|| redirect::handle(shared.clone(), conn.clone(), req)))
            };
            Box::pin(h1::serve(
                &settings.h1,
                tcp,
                svc,
                &conn,
                &mut watcher,
                &timeouts,
            ))
            .await
        }
    };
    finish(outcome, &metrics, peer);
}

type Handshake = Result<
    Result<Box<tokio_rustls::server::TlsStream<TcpStream>>, tls_accept::HandshakeError>,
    tokio::time::error::Elapsed,
>;

/// The TLS stream of a completed handshake, counted; a failed one counted and logged.
fn handshake_done(
    shared: &Shared,
    accepted: Handshake,
) -> Option<Box<tokio_rustls::server::TlsStream<TcpStream>>> {
    let tls = match accepted {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            shared.metrics.handshake_failed(e.reason());
            debug!(failure = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            shared.metrics.handshake_failed("timeout");
            debug!("TLS handshake timed out");
            return None;
        }
    };
    let version = match tls.get_ref().1.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "other",
    };
    shared.metrics.handshake_ok(version);
    Some(tls)
}

/// Whether an HTTP/2 connection ended because the client had to be told to calm down.
fn calmed_down(err: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM);
        }
        source = e.source();
    }
    false
}

/// What a connection's requests see of it. `tls`: `None` for plain HTTP, else the SNI
/// the client sent (if any). `http1`: its clock times request heads.
fn conn_info(
    shared: &Shared,
    settings: &ConnSettings,
    (peer, local): (SocketAddr, SocketAddr),
    tls: Option<Option<Box<str>>>,
    http1: bool,
    watcher: &DrainWatch,
    open: OpenGuard,
) -> Arc<ConnInfo> {
    let client = ClientAddr::new(peer.ip(), shared.router.load().trusts(peer.ip()));
    Arc::new(ConnInfo {
        peer,
        local,
        client: match tls {
            Some(_) => client,
            None => client.over_plain_http(),
        },
        tls: tls.is_some(),
        sni: tls.flatten(),
        _drain: watcher.clone(),
        clock: Arc::new(ConnClock::new(http1)),
        max_resets: settings.h2_max_resets,
        _open: open,
        upgrade: Mutex::new(None),
    })
}

/// The address a connection came in on (for PROXY headers sent to origins).
fn local_addr(tcp: &TcpStream) -> SocketAddr {
    tcp.local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// A request's future on the heap, made in place. `Box::pin(f)` makes the future on the
/// stack and copies it over whole, although a future that has not started holds only its
/// arguments: the request future is 4 KiB, copied once per request (the largest `memcpy` of
/// an HTTP/2 request). Allocated first and written into, only the arguments are stored.
fn boxed<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

fn finish(outcome: Supervised<Result<(), String>>, metrics: &ListenerMetrics, peer: SocketAddr) {
    match outcome {
        Supervised::Done(Ok(())) => {}
        Supervised::Done(Err(e)) => debug!(error = %e, "connection ended with an error"),
        Supervised::HeadTimeout => {
            metrics.rejected(RejectReason::HeaderTimeout);
            debug!("request head too slow; connection closed");
        }
        Supervised::Abusive => {
            metrics.rejected(RejectReason::RapidReset);
            warn!(%peer, "too many HTTP/2 streams reset by the client; connection closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn output_size<A, F>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[tokio::test]
    async fn a_future_boxed_in_place_runs_as_it_would_unboxed() {
        let words = ["boxed", "in", "place"];
        let fut = boxed(|| async move {
            tokio::task::yield_now().await;
            words.join(" ")
        });
        assert_eq!(fut.await, "boxed in place");
    }

    /// Every open connection holds its task for as long as it is open: it stays small, so
    /// an idle keep-alive connection costs its buffers and little else (before the phases
    /// were boxed, the task was 17 KiB in a release build; before the connection was taken
    /// apart in one function, 736 bytes).
    #[test]
    fn connection_tasks_are_small() {
        let task = output_size(connection);
        assert!(task <= 448, "connection task is {task} bytes");
    }
}
