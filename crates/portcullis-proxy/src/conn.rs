//! One client connection, shared by the listener that serves it and the requests on it:
//! the connection caps (total and per client IP), the clock that tells an idle keep-alive
//! connection from one still sending its request head (or still waiting for the client to
//! read its response), the HTTP/2 reset counter that cuts off rapid-reset floods, what its
//! requests know of it ([`ConnInfo`]), and its supervisor (timeouts, resets, the drain).
//!
//! Who uses the [`ConnClock`] (it is written from four files and read from three):
//!
//! | file | calls | why |
//! |---|---|---|
//! | `listener.rs` (`conn_info`, `connection`) | `new`, `ClockedIo::new` | one clock per connection; bytes read tell it a head is arriving |
//! | `conn/supervisor.rs` (`supervise`) | `watchdog`, `abuse` | cuts off slow heads, idle connections, reset floods |
//! | `listener/h1.rs` (`serve`, `Stretch`, `parked`) | `begun`, `quiet_since`, `write_blocked`, `body_unread`, `idle_until` | when to take hyper's connection apart, and how to close |
//! | `response.rs` (`Exchange`) | `begin_request`, `end_request`, `note_reset`, `abuse` | a request's start and end; a stream reset before its response |
//! | `upstream/request_body.rs` (`RequestBody`) | `body_unread`, `begun`, `body_read`, `begin_discard`, `end_request` | an HTTP/1.1 body read to its end, or discarded after the answer |

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::metrics::{ListenerMetrics, RejectReason};

mod info;
mod supervisor;

pub(crate) use info::ConnInfo;
pub(crate) use supervisor::{Drain, DrainWatch, GracefulConn, Supervised};

/// Counts open client connections, in total and per IP.
#[derive(Debug, Default)]
pub(crate) struct ConnTracker {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Addresses whose refusal under the per-IP cap has been logged.
    warned: Mutex<std::collections::HashSet<IpAddr>>,
}

/// Addresses remembered as warned about. Clients choose their addresses (a whole IPv6
/// prefix is cheap), so the set is bounded: past it, refusals are only counted.
const WARNED_MAX: usize = 1024;

/// What to log about a refusal under the per-IP cap.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PerIpWarning {
    /// The first refusal of this address: say so, naming the setting.
    First,
    /// The first address past the bound: say that more are only counted.
    Saturated,
    /// Already said.
    Quiet,
}

/// Held while a connection is open; gives its place back when dropped.
#[derive(Debug)]
pub(crate) struct ConnPermit {
    tracker: Arc<ConnTracker>,
    ip: IpAddr,
}

impl ConnTracker {
    /// Takes a place for a connection from `ip`, unless a cap is reached.
    pub(crate) fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: Option<usize>,
    ) -> Result<ConnPermit, RejectReason> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(RejectReason::MaxConnections);
        }
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = per_ip.entry(ip).or_insert(0);
        if max_per_ip.is_some_and(|max| *n >= max) {
            drop(per_ip);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(RejectReason::MaxConnectionsPerIp);
        }
        *n += 1;
        Ok(ConnPermit {
            tracker: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Whether a refusal of `ip` under the per-IP cap should be logged: the first one of
    /// each address, up to [`WARNED_MAX`] addresses, so an operator whose clients share an
    /// address (a NAT, a load balancer without the PROXY protocol) finds the setting in the
    /// log without a flood of lines.
    pub(crate) fn per_ip_warning(&self, ip: IpAddr) -> PerIpWarning {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.contains(&ip) {
            PerIpWarning::Quiet
        } else if warned.len() < WARNED_MAX {
            warned.insert(ip);
            PerIpWarning::First
        } else if warned.len() == WARNED_MAX {
            // One entry past the bound marks that the saturation was logged.
            warned.insert(ip);
            PerIpWarning::Saturated
        } else {
            PerIpWarning::Quiet
        }
    }

    /// Forgets which addresses were warned about (the limits changed; a refusal under the
    /// new ones is news).
    pub(crate) fn forget_warned(&self) {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        *warned = Default::default();
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut per_ip = self
            .tracker
            .per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        drop(per_ip);
        self.tracker.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a connection as open while it lives, and holds its place under the caps.
#[derive(Debug)]
pub(crate) struct OpenGuard {
    gauge: prometheus::IntGauge,
    _permit: ConnPermit,
}

impl OpenGuard {
    pub(crate) fn new(metrics: &ListenerMetrics, permit: ConnPermit) -> Self {
        metrics.open.inc();
        Self {
            gauge: metrics.open.clone(),
            _permit: permit,
        }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// `head_since` when no request head is being read.
const NONE: u64 = u64::MAX;

/// What a connection is doing, in milliseconds since it was accepted.
#[derive(Debug)]
pub(crate) struct ConnClock {
    start: Instant,
    /// Requests whose responses are not finished yet.
    inflight: AtomicU32,
    /// Requests begun so far (wrapping).
    begun: AtomicU32,
    /// When the current request head started arriving (HTTP/1.1 only), or `NONE`.
    head_since: AtomicU64,
    /// When the connection last became idle.
    idle_since: AtomicU64,
    /// The last write or flush could not finish: the client is not reading what it was sent.
    write_blocked: AtomicBool,
    /// HTTP/1.1: the number (`begun` after it began) of the request whose body has not been
    /// read to its end, or 0.
    body_unread: AtomicU32,
    /// HTTP/1.1: a read while idle starts a request head.
    tracks_heads: bool,
    /// Client-reset streams in the current 10 s window, and when the window began.
    resets: Mutex<(u64, u32)>,
    /// Woken when the connection must be cut off (reset flood).
    pub(crate) abuse: Notify,
}

/// Why the watchdog fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    /// A request head took longer than `header_read_timeout`.
    Head,
    /// Idle for `idle_timeout`.
    Idle,
}

impl ConnClock {
    /// A clock for a new connection. An HTTP/1.1 connection starts as if reading a head, so
    /// a client that connects and says nothing gets `header_read_timeout`, not the idle time.
    pub(crate) fn new(http1: bool) -> Self {
        Self {
            start: Instant::now(),
            inflight: AtomicU32::new(0),
            begun: AtomicU32::new(0),
            head_since: AtomicU64::new(if http1 { 0 } else { NONE }),
            idle_since: AtomicU64::new(0),
            write_blocked: AtomicBool::new(false),
            body_unread: AtomicU32::new(0),
            tracks_heads: http1,
            resets: Mutex::new((0, 0)),
            abuse: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn on_read(&self) {
        if self.tracks_heads
            && self.inflight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Acquire) == NONE
        {
            self.head_since.store(self.now_ms(), Ordering::Release);
        }
    }

    /// A request's head has arrived and is being handled; `body` says whether a body follows
    /// it (HTTP/1.1 keeps that until [`body_read`](Self::body_read)).
    pub(crate) fn begin_request(&self, body: bool) {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        let number = self.begun.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if self.tracks_heads {
            let unread = if body { number } else { 0 };
            self.body_unread.store(unread, Ordering::Relaxed);
        }
        self.head_since.store(NONE, Ordering::Release);
    }

    /// The rest of a request body is being read and thrown away after its response: the
    /// connection is busy until [`end_request`](Self::end_request), as during a request.
    pub(crate) fn begin_discard(&self) {
        self.inflight.fetch_add(1, Ordering::AcqRel);
    }

    /// A response has been sent (or abandoned).
    pub(crate) fn end_request(&self) {
        if self.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since.store(self.now_ms(), Ordering::Release);
        }
    }

    /// When the connection became idle, if it is idle now: no request in flight, none
    /// arriving, and everything sent taken by the client.
    pub(crate) fn quiet_since(&self) -> Option<Instant> {
        let quiet = self.inflight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Acquire) == NONE
            && !self.write_blocked();
        quiet.then(|| self.idle_start())
    }

    /// When a connection idle since it last became so reaches `idle`.
    pub(crate) fn idle_until(&self, idle: Duration) -> Instant {
        self.idle_start() + idle
    }

    /// When the connection last became idle.
    fn idle_start(&self) -> Instant {
        self.start + Duration::from_millis(self.idle_since.load(Ordering::Acquire))
    }

    /// Requests begun so far; compared, tells whether any began in between.
    pub(crate) fn begun(&self) -> u32 {
        self.begun.load(Ordering::Relaxed)
    }

    /// HTTP/1.1: the body of request `number` (its [`begun`](Self::begun) count) has been
    /// read to its end. Told late (by a task reading a body thrown away), it leaves a later
    /// request's state alone.
    pub(crate) fn body_read(&self, number: u32) {
        let _ = self
            .body_unread
            .compare_exchange(number, 0, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Whether the last request's body may still be arriving: its client may still be
    /// writing, so closing the connection must linger.
    pub(crate) fn body_unread(&self) -> bool {
        self.body_unread.load(Ordering::Relaxed) != 0
    }

    fn note_write(&self, blocked: bool) {
        self.write_blocked.store(blocked, Ordering::Relaxed);
    }

    /// Whether the last write or flush was left waiting for the client to read.
    pub(crate) fn write_blocked(&self) -> bool {
        self.write_blocked.load(Ordering::Relaxed)
    }

    /// Counts a stream the client cancelled; true when the limit per 10 s is exceeded.
    pub(crate) fn note_reset(&self, limit: u32) -> bool {
        let now = self.now_ms();
        let mut r = self.resets.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_sub(r.0) > 10_000 {
            *r = (now, 0);
        }
        r.1 += 1;
        r.1 > limit
    }

    /// Resolves when the connection has been idle for `idle`, or (HTTP/1.1) a request head
    /// has taken longer than `header`.
    pub(crate) async fn watchdog(&self, header: Duration, idle: Duration) -> Expired {
        let (header, idle) = (header.as_millis() as u64, idle.as_millis() as u64);
        loop {
            let now = self.now_ms();
            let head = self.head_since.load(Ordering::Acquire);
            let (deadline, kind) = if self.inflight.load(Ordering::Acquire) > 0 {
                (now + idle, None)
            } else if head != NONE {
                (head + header, Some(Expired::Head))
            } else {
                (
                    self.idle_since.load(Ordering::Acquire) + idle,
                    Some(Expired::Idle),
                )
            };
            match kind {
                Some(kind) if now >= deadline => return kind,
                _ => {
                    tokio::time::sleep(Duration::from_millis(deadline.saturating_sub(now).max(1)))
                        .await
                }
            }
        }
    }
}

/// A client stream that tells the connection clock when bytes arrive.
pub(crate) struct ClockedIo<T> {
    inner: T,
    clock: Arc<ConnClock>,
}

impl<T> ClockedIo<T> {
    pub(crate) fn new(inner: T, clock: Arc<ConnClock>) -> Self {
        Self { inner, clock }
    }

    pub(crate) fn get_ref(&self) -> &T {
        &self.inner
    }

    pub(crate) fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ClockedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.clock.on_read();
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ClockedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.clock.note_write(poll.is_pending());
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.clock.note_write(poll.is_pending());
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.clock.note_write(poll.is_pending());
        poll
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_total_and_per_ip_and_give_places_back() {
        let t = Arc::new(ConnTracker::default());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let p1 = t.acquire(a, 3, Some(2)).unwrap();
        let _p2 = t.acquire(a, 3, Some(2)).unwrap();
        assert!(matches!(
            t.acquire(a, 3, Some(2)),
            Err(RejectReason::MaxConnectionsPerIp)
        ));
        let _p3 = t.acquire(b, 3, Some(2)).unwrap();
        assert!(matches!(
            t.acquire(b, 3, Some(2)),
            Err(RejectReason::MaxConnections)
        ));
        assert_eq!(t.open(), 3);
        drop(p1);
        assert_eq!(t.open(), 2);
        assert!(t.acquire(a, 3, Some(2)).is_ok());
        assert!(t.acquire(a, 10, None).is_ok());
    }

    #[test]
    fn each_address_is_warned_about_once_and_the_set_is_bounded() {
        let t = ConnTracker::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(t.per_ip_warning(a), PerIpWarning::First);
        assert_eq!(t.per_ip_warning(a), PerIpWarning::Quiet);
        for i in 1..WARNED_MAX {
            let ip = IpAddr::from(std::net::Ipv6Addr::from(i as u128));
            assert_eq!(t.per_ip_warning(ip), PerIpWarning::First);
        }
        let more: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(t.per_ip_warning(more), PerIpWarning::Saturated);
        assert_eq!(
            t.per_ip_warning("2001:db8::2".parse().unwrap()),
            PerIpWarning::Quiet
        );
        assert_eq!(t.per_ip_warning(more), PerIpWarning::Quiet);
        assert!(t.warned.lock().unwrap().len() <= WARNED_MAX + 1);
        t.forget_warned();
        assert_eq!(t.per_ip_warning(a), PerIpWarning::First);
    }

    /// A body read to its end is told by its request's number, so a task that finishes
    /// throwing away one request's body after the next request began (with a body of its
    /// own) does not mark the new body read.
    #[test]
    fn a_body_read_late_leaves_the_next_request_unread() {
        let c = ConnClock::new(true);
        c.begin_request(false);
        assert!(!c.body_unread());
        c.end_request();
        c.begin_request(true);
        let first = c.begun();
        assert!(c.body_unread());
        c.end_request();
        c.begin_request(true);
        c.body_read(first);
        assert!(c.body_unread(), "the second request's body was marked read");
        c.body_read(c.begun());
        assert!(!c.body_unread());
        // HTTP/2 requests are streams of their own: nothing to track.
        let h2 = ConnClock::new(false);
        h2.begin_request(true);
        assert!(!h2.body_unread());
    }

    #[test]
    fn resets_are_counted_per_window() {
        let c = ConnClock::new(false);
        for _ in 0..5 {
            assert!(!c.note_reset(5));
        }
        assert!(c.note_reset(5));
    }

    #[tokio::test(start_paused = true)]
    async fn watchdog_tells_slow_heads_from_idle_connections() {
        let (header, idle) = (Duration::from_secs(10), Duration::from_secs(60));
        // A new HTTP/1.1 connection that sends nothing: the head timeout.
        let c = ConnClock::new(true);
        assert_eq!(c.watchdog(header, idle).await, Expired::Head);
        // After a request, idle until the idle timeout.
        let c = ConnClock::new(true);
        c.begin_request(false);
        c.end_request();
        let started = tokio::time::Instant::now();
        assert_eq!(c.watchdog(header, idle).await, Expired::Idle);
        assert!(started.elapsed() >= idle);
        // HTTP/2 never has a head phase.
        let c = ConnClock::new(false);
        c.on_read();
        assert_eq!(c.watchdog(header, idle).await, Expired::Idle);
    }
}
