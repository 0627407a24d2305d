//! One origin server's connections, pooled by a key `forward` picks: one for every site in
//! front of the server, or the client's addresses for PROXY protocol origins. (HTTP/1.1
//! carries the site in `Host`, HTTP/2 in each request's `:authority`, so connections need
//! not be kept per site.)
//!
//! A request takes an idle connection, or waits for one: for a connection another request
//! gives back, or for a new one. A connect is started only while fewer are under way than
//! requests waiting, and whichever connection comes first serves the oldest waiter. (hyper-
//! util's pooled client, which this replaces, started a connect for every request that
//! found nothing idle and kept it when another connection came back first: a burst of 500
//! requests to a TLS origin opened 2,190 connections, each a TLS handshake.)

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http2};
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tower_service::Service;
use tracing::debug;

use super::connector::OriginConnector;
use super::replay::ReplayBody;
use crate::error::{OriginError, OriginFailureKind};
use crate::metrics::PoolMetrics;
use crate::proxy_protocol::ProxyAddrs;

use super::origin_h1::{H1Body, H1Conn, SendError};

/// How many times a request goes to another connection when a pooled one turns out to be
/// closed before the request was written.
const STALE_RETRIES: usize = 3;

/// A server's connection pool.
pub(crate) struct OriginPool<C = OriginConnector> {
    inner: Arc<Inner<C>>,
}

struct Inner<C> {
    connector: C,
    idle_timeout: Duration,
    /// `h2c`: HTTP/2 without TLS, so without ALPN to say so.
    h2_only: bool,
    /// Connections open or being opened per key, at most.
    max_connections: usize,
    metrics: Option<PoolMetrics>,
    slots: Mutex<Slots>,
    reaper: AtomicBool,
    /// Connects started, for tests.
    started: AtomicU64,
}

/// Which of an origin server's connections a request may use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum PoolKey {
    /// The connections every site in front of the server shares: the site travels in each
    /// request (`Host` for HTTP/1.1, `:authority` for HTTP/2).
    Shared,
    /// A PROXY protocol origin's connections for one client connection: each begins with a
    /// header naming its addresses, so they are never shared with another. (Behind an
    /// `Arc`: the key is cloned into every connection's lease.)
    Client(Arc<ProxyAddrs>),
    /// The gateway's own connections, for active health checks: apart from the clients',
    /// and a PROXY protocol origin gets a `LOCAL` header on them.
    HealthCheck,
}

impl PoolKey {
    /// The client's addresses, for the PROXY header of a new connection.
    pub(crate) fn addrs(&self) -> Option<&ProxyAddrs> {
        match self {
            PoolKey::Shared | PoolKey::HealthCheck => None,
            PoolKey::Client(addrs) => Some(addrs),
        }
    }
}

impl std::fmt::Display for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolKey::Shared => f.write_str("origin"),
            PoolKey::Client(a) => write!(f, "origin for {} via {}", a.source, a.destination),
            PoolKey::HealthCheck => f.write_str("origin (health check)"),
        }
    }
}

/// Every key's connections. The shared key's, which every origin but a PROXY protocol one
/// uses alone, are kept apart: finding them hashes nothing (a request checks out and gives
/// back, two lookups).
#[derive(Default)]
struct Slots {
    shared: Slot,
    by_key: HashMap<PoolKey, Slot>,
}

#[derive(Default)]
struct Slot {
    /// HTTP/1.1 connections ready for a request, the most recently used last.
    idle: Vec<(H1Conn, Instant)>,
    /// An HTTP/2 connection serves every request of its key, and when it was last used.
    h2: Option<(http2::SendRequest<ReplayBody>, Instant)>,
    /// Some connection of this key negotiated HTTP/2: one connect at a time is enough.
    h2_seen: bool,
    /// Connections whose task is running (in use, idle or closing).
    open: usize,
    connecting: usize,
    waiters: VecDeque<oneshot::Sender<Result<Delivered, OriginError>>>,
}

enum Conn {
    H1(H1Conn),
    H2(http2::SendRequest<ReplayBody>),
}

/// A response body from an origin connection of either protocol.
#[derive(Debug)]
pub(crate) enum OriginBody {
    H1(H1Body),
    H2(Incoming),
}

impl Body for OriginBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::H1(body) => Pin::new(body).poll_frame(cx),
            Self::H2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::H1(body) => body.is_end_stream(),
            Self::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::H1(body) => body.size_hint(),
            Self::H2(body) => body.size_hint(),
        }
    }
}

struct Delivered {
    conn: Conn,
    /// It served a request before, so it may have been closed since.
    reused: bool,
}

impl<C, S> OriginPool<C>
where
    C: Service<PoolKey, Response = TokioIo<S>, Error = OriginError> + Clone + Send + Sync + 'static,
    C::Future: Send,
    S: Connection + AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    /// A pool whose connections are closed after `idle_timeout` without a request, with at
    /// most `max_connections` per key (`None`: no limit) open or being opened, counted in
    /// `metrics` when given.
    pub(crate) fn new(
        connector: C,
        idle_timeout: Duration,
        h2_only: bool,
        max_connections: Option<usize>,
        metrics: Option<PoolMetrics>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                connector,
                idle_timeout,
                h2_only,
                max_connections: max_connections.unwrap_or(usize::MAX).max(1),
                metrics,
                slots: Mutex::new(Slots::default()),
                reaper: AtomicBool::new(false),
                started: AtomicU64::new(0),
            }),
        }
    }

    /// Sends `req` on a pooled or new connection of `key`. Its URI is absolute: HTTP/2
    /// sends its authority as `:authority`; HTTP/1.1 sends the path alone (the `Host`
    /// header is the caller's).
    pub(crate) async fn request(
        &self,
        key: &PoolKey,
        mut req: Request<ReplayBody>,
    ) -> Result<Response<OriginBody>, OriginError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let Delivered { conn, reused } = self.checkout(key).await?;
            let retry = reused && tries <= STALE_RETRIES;
            match conn {
                Conn::H1(conn) => match conn.send(req, reused).await {
                    Ok(resp) => return Ok(resp.map(OriginBody::H1)),
                    Err(SendError::Stale(back)) if retry => req = *back,
                    Err(SendError::Stale(_)) => {
                        return Err(OriginError::new(
                            OriginFailureKind::Reset,
                            "pooled origin connections kept turning out closed",
                        ));
                    }
                    Err(SendError::Failed(e)) => return Err(e),
                },
                Conn::H2(mut tx) => match tx.try_send_request(req).await {
                    Ok(resp) => return Ok(resp.map(OriginBody::H2)),
                    Err(e) => req = stale_or_fail(e, retry)?,
                },
            }
            debug!(
                authority = %key,
                "pooled origin connection was closed; trying another"
            );
        }
    }

    async fn checkout(&self, key: &PoolKey) -> Result<Delivered, OriginError> {
        let waiting = loop {
            let idle = {
                let mut slots = self.inner.lock();
                let slot = slot(&mut slots, key);
                let now = Instant::now();
                if let Some((tx, used)) = &mut slot.h2 {
                    if tx.is_ready() {
                        *used = now;
                        return Ok(Delivered {
                            conn: Conn::H2(tx.clone()),
                            reused: true,
                        });
                    }
                    slot.h2 = None;
                }
                match slot.idle.pop() {
                    Some(idle) => idle,
                    None => {
                        let (tx, rx) = oneshot::channel();
                        slot.waiters.push_back(tx);
                        self.inner.fill(slot, key);
                        break rx;
                    }
                }
            };
            // Checked outside the lock: dropping a connection closes it, which counts it
            // out of its slot.
            let (mut conn, at) = idle;
            if at.elapsed() < self.inner.idle_timeout
                && poll_fn(|cx| Poll::Ready(conn.poll_usable(cx))).await
            {
                return Ok(Delivered {
                    conn: Conn::H1(conn),
                    reused: true,
                });
            }
        };
        let _counted = self
            .inner
            .metrics
            .as_ref()
            .map(|m| Waiting::new(m.waiting()));
        waiting.await.unwrap_or_else(|_| {
            Err(OriginError::new(
                OriginFailureKind::Connect,
                "the origin connection pool was dropped",
            ))
        })
    }

    /// Connects started so far.
    #[cfg(test)]
    fn connects_started(&self) -> u64 {
        self.inner.started.load(Ordering::Relaxed)
    }

    /// Requests waiting for a connection of `key`.
    #[cfg(test)]
    fn waiting(&self, key: &PoolKey) -> usize {
        slot(&mut self.inner.lock(), key)
            .waiters
            .iter()
            .filter(|w| !w.is_closed())
            .count()
    }
}

impl<C, S> Inner<C>
where
    C: Service<PoolKey, Response = TokioIo<S>, Error = OriginError> + Clone + Send + Sync + 'static,
    C::Future: Send,
    S: Connection + AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts connects until as many are under way as requests wait (one, once the key has
    /// spoken HTTP/2: that connection serves them all), within `max_connections`; past it,
    /// requests wait for a connection to come back or close.
    fn fill(self: &Arc<Self>, slot: &mut Slot, key: &PoolKey) {
        slot.waiters.retain(|w| !w.is_closed());
        let wanted = if slot.h2_seen || self.h2_only {
            usize::from(!slot.waiters.is_empty())
        } else {
            slot.waiters.len()
        };
        while slot.connecting < wanted && slot.open + slot.connecting < self.max_connections {
            slot.connecting += 1;
            self.started.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(self.clone().connect(key.clone()));
        }
    }

    async fn connect(self: Arc<Self>, key: PoolKey) {
        let result = self.open(&key).await;
        let mut slots = self.lock();
        let slot = slot(&mut slots, &key);
        slot.connecting -= 1;
        match result {
            Ok(Conn::H1(conn)) => {
                // Whatever it said before, the server speaks HTTP/1.1 now (a redeploy, or
                // a balancer in front of mixed servers): connects run side by side again.
                slot.h2_seen = false;
                self.hand_h1(slot, conn, false);
            }
            Ok(Conn::H2(tx)) => {
                slot.h2_seen = true;
                for waiter in slot.waiters.drain(..) {
                    let _ = waiter.send(Ok(Delivered {
                        conn: Conn::H2(tx.clone()),
                        reused: false,
                    }));
                }
                if slot.h2.is_none() {
                    slot.h2 = Some((tx, Instant::now()));
                    self.start_reaper();
                }
            }
            // The oldest request still waiting gets the failure, and so does every one that
            // no connect under way would serve (past `max_connections`, or behind an HTTP/2
            // connect): they fail fast rather than one connect after another.
            Err(e) => {
                let mut told = false;
                while !slot.waiters.is_empty() && (!told || slot.waiters.len() > slot.connecting) {
                    if let Some(waiter) = slot.waiters.pop_front() {
                        told |= waiter.send(Err(e.clone())).is_ok();
                    }
                }
            }
        }
        self.fill(slot, &key);
    }

    async fn open(self: &Arc<Self>, key: &PoolKey) -> Result<Conn, OriginError> {
        // The connector writes a PROXY protocol origin's header from the key.
        let io = self.connector.clone().call(key.clone()).await?;
        let failed = |e: hyper::Error| {
            OriginError::new(
                OriginFailureKind::Connect,
                format!("HTTP handshake with {key}: {e}"),
            )
        };
        if self.h2_only || io.inner().connected().is_negotiated_h2() {
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(failed)?;
            let ended = self.opened(key);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(error = %e, "origin HTTP/2 connection ended");
                }
                drop(ended);
            });
            Ok(Conn::H2(tx))
        } else {
            // No task: the requests drive the connection themselves.
            Ok(Conn::H1(H1Conn::new(
                Box::new(io.into_inner()),
                self.opened(key),
            )))
        }
    }

    /// Counts a connection as open until the returned handle is dropped.
    fn opened(self: &Arc<Self>, key: &PoolKey) -> Ended {
        slot(&mut self.lock(), key).open += 1;
        if let Some(m) = &self.metrics {
            m.open().inc();
            m.opened().inc();
        }
        let pool: Weak<dyn PoolSide> = Arc::downgrade(self) as Weak<dyn PoolSide>;
        Ended {
            pool,
            key: key.clone(),
            open: self.metrics.as_ref().map(|m| m.open().clone()),
        }
    }

    /// To the oldest request waiting, else idle.
    fn hand_h1(self: &Arc<Self>, slot: &mut Slot, conn: H1Conn, reused: bool) {
        let mut delivered = Ok(Delivered {
            conn: Conn::H1(conn),
            reused,
        });
        while let Some(waiter) = slot.waiters.pop_front() {
            match waiter.send(delivered) {
                Ok(()) => return,
                Err(back) => delivered = back,
            }
        }
        if let Ok(Delivered {
            conn: Conn::H1(mut conn),
            ..
        }) = delivered
        {
            conn.shed();
            slot.idle.push((conn, Instant::now()));
            self.start_reaper();
        }
    }

    /// Closes connections idle for `idle_timeout`, checking twice as often.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool = Arc::downgrade(self);
        let every = (self.idle_timeout / 2).max(Duration::from_millis(10));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = pool.upgrade() else {
                    return;
                };
                inner.reap();
            }
        });
    }

    fn reap(&self) {
        let now = Instant::now();
        let fresh = |at: Instant| now.duration_since(at) < self.idle_timeout;
        // Closed once the lock is let go: closing counts a connection out of its slot.
        let mut closing = Vec::new();
        let mut reap = |slot: &mut Slot| {
            let (keep, stale): (Vec<_>, Vec<_>) = std::mem::take(&mut slot.idle)
                .into_iter()
                .partition(|(_, at)| fresh(*at));
            slot.idle = keep;
            closing.extend(stale);
            if slot
                .h2
                .as_ref()
                .is_some_and(|(tx, used)| tx.is_closed() || !fresh(*used))
            {
                slot.h2 = None;
            }
            !(slot.idle.is_empty()
                && slot.h2.is_none()
                && slot.open == 0
                && slot.connecting == 0
                && slot.waiters.is_empty())
        };
        let mut slots = self.lock();
        reap(&mut slots.shared);
        slots.by_key.retain(|_, slot| reap(slot));
        drop(slots);
        drop(closing);
    }
}

/// What a connection needs of its pool, without the pool's connector type.
pub(crate) trait PoolSide: Send + Sync {
    /// A connection of `key` closed: one fewer open, and room for a waiting request.
    fn closed(self: Arc<Self>, key: &PoolKey);
    /// An HTTP/1.1 connection finished its exchange and may serve another.
    fn give_back(self: Arc<Self>, key: &PoolKey, conn: H1Conn);
}

impl<C, S> PoolSide for Inner<C>
where
    C: Service<PoolKey, Response = TokioIo<S>, Error = OriginError> + Clone + Send + Sync + 'static,
    C::Future: Send,
    S: Connection + AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    fn closed(self: Arc<Self>, key: &PoolKey) {
        let mut slots = self.lock();
        let slot = slot(&mut slots, key);
        slot.open = slot.open.saturating_sub(1);
        self.fill(slot, key);
    }

    fn give_back(self: Arc<Self>, key: &PoolKey, conn: H1Conn) {
        self.hand_h1(slot(&mut self.lock(), key), conn, true);
    }
}

/// A connection's place in its key's count, given up when dropped. Holds the pool weakly:
/// the pool holds its connections.
pub(crate) struct Ended {
    pool: Weak<dyn PoolSide>,
    key: PoolKey,
    /// The open-connections gauge, which outlives a dropped pool.
    open: Option<prometheus::IntGauge>,
}

impl Ended {
    /// The pool, while it is still there.
    pub(crate) fn pool(&self) -> Option<Arc<dyn PoolSide>> {
        self.pool.upgrade()
    }

    pub(crate) fn key(&self) -> &PoolKey {
        &self.key
    }
}

impl Drop for Ended {
    fn drop(&mut self) {
        if let Some(open) = &self.open {
            open.dec();
        }
        if let Some(pool) = self.pool.upgrade() {
            pool.closed(&self.key);
        }
    }
}

/// Counts a request in the waiting gauge until dropped (served, failed or given up).
struct Waiting(prometheus::IntGauge);

impl Waiting {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The request back when it was never written and may go to another connection, else the
/// failure.
fn stale_or_fail(
    mut e: TrySendError<Request<ReplayBody>>,
    retry: bool,
) -> Result<Request<ReplayBody>, OriginError> {
    match e.take_message() {
        Some(req) if retry => Ok(req),
        _ => Err(OriginError::from_hyper(&e.into_error())),
    }
}

/// The slot of `key`, made when missing (the reaper removes empty ones). One lookup: a
/// client's key is an `Arc`, so the clone is a reference count.
fn slot<'a>(slots: &'a mut Slots, key: &PoolKey) -> &'a mut Slot {
    match key {
        PoolKey::Shared => &mut slots.shared,
        PoolKey::Client(_) | PoolKey::HealthCheck => slots.by_key.entry(key.clone()).or_default(),
    }
}

#[cfg(test)]
mod tests;
