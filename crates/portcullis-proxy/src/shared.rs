//! What every connection shares: the routing table and certificates (each request reads the
//! router snapshot once), the connection caps and the settings a new connection is held to.
//! Made by [`Gateway::new`](crate::Gateway::new); the listener, the TLS handshake and the
//! request handlers read it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use portcullis_config::Limits;
use portcullis_tls::{CertStore, Challenges, EdgeTls};

use crate::conn::ConnTracker;
use crate::metrics::ProxyMetrics;
use crate::router::Router;

/// What a new connection is held to; swapped whole when the limits change.
pub(crate) struct ConnSettings {
    pub(crate) h1: http1::Builder,
    pub(crate) h2: http2::Builder<TokioExecutor>,
    pub(crate) handshake_timeout: Duration,
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_ip: Option<usize>,
    pub(crate) h2_max_resets: u32,
}

impl ConnSettings {
    /// The request head and idle timeouts, as the supervisor takes them.
    pub(crate) fn timeouts(&self) -> (Duration, Duration) {
        (self.header_read_timeout, self.idle_timeout)
    }

    pub(crate) fn new(limits: &Limits) -> Self {
        let mut h1 = http1::Builder::new();
        // Slow heads and idle keep-alive are timed by the connection's own watchdog, which
        // tells the two apart (hyper's header timer also runs while a connection is idle).
        h1.timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_header_size(limits.max_header_size)
            .max_buf_size(limits.max_header_size.max(8192) + 8192);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            // Streams reset before the application sees them (the h2 crate's own guard
            // against rapid reset); resets after that are counted per connection here.
            .max_pending_accept_reset_streams(Some(20))
            .max_local_error_reset_streams(Some(1024));
        Self {
            h1,
            h2,
            handshake_timeout: limits.handshake_timeout,
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            max_connections: limits.max_connections,
            max_connections_per_ip: limits.max_connections_per_ip,
            h2_max_resets: limits.h2_max_resets,
        }
    }
}

/// State shared by every connection; each request reads the router snapshot once.
pub(crate) struct Shared {
    pub(crate) router: ArcSwap<Router>,
    pub(crate) certs: Arc<CertStore>,
    pub(crate) challenges: Arc<Challenges>,
    pub(crate) tls: EdgeTls,
    pub(crate) settings: ArcSwap<ConnSettings>,
    pub(crate) conns: Arc<ConnTracker>,
    pub(crate) metrics: ProxyMetrics,
    pub(crate) https_port: AtomicU16,
}

impl Shared {
    /// Port of the HTTPS listener, for redirects (443 is left out of URLs).
    pub(crate) fn https_port(&self) -> u16 {
        self.https_port.load(Ordering::Relaxed)
    }
}
