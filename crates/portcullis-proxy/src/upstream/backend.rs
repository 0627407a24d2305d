//! One server of an origin: its pooled clients, its metrics, and what is known of its
//! health (active checks and passive ejection).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use portcullis_config::{Origin, OriginServer, PassiveHealth, Transport};
use portcullis_tls::{OriginTlsConfig, server_name};

use super::connector::OriginConnector;
use super::pool::OriginPool;
use crate::error::UpstreamError;
use crate::metrics::{OriginMetrics, ProxyMetrics};

/// One origin server.
pub(crate) struct Backend {
    /// The server's URL as written; the `origin` label of its metrics.
    pub(crate) label: Arc<str>,
    pub(crate) weight: u32,
    /// Stable across reloads and reorders, for rendezvous hashing.
    pub(crate) hash_id: u64,
    pub(crate) client: OriginPool,
    /// Offers only HTTP/1.1, for requests that upgrade the connection.
    pub(crate) upgrade_client: OriginPool,
    pub(crate) metrics: OriginMetrics,
    /// Requests sent and not yet answered (for `least_requests` and `random_two`).
    pub(crate) in_flight: AtomicUsize,
    /// The active checks' verdict (true until they say otherwise).
    active_up: AtomicBool,
    passive: Option<Passive>,
    /// When the process started, the zero of the millisecond clocks below.
    epoch: Instant,
}

/// Failures seen on real traffic, and the ejection they lead to.
struct Passive {
    policy: PassiveHealth,
    window_start_ms: AtomicU64,
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which the server is out; 0 when it is in.
    ejected_until_ms: AtomicU64,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("url", &self.label).finish()
    }
}

impl Backend {
    /// Builds the clients for `server` with the origin's shared settings.
    pub(crate) fn new(
        origin: &Origin,
        server: &OriginServer,
        tls: Option<&OriginTlsConfig>,
        metrics: &ProxyMetrics,
    ) -> Result<Self, UpstreamError> {
        let connect = origin.timeouts.connect;
        let pp = origin.proxy_protocol;
        let (normal, upgrade) = match (&origin.transport, tls) {
            (Transport::Tls(_), Some(cfg)) => {
                let name = match &cfg.server_name {
                    Some(n) => n.clone(),
                    None => server_name(&server.host)?,
                };
                // A PROXY header describes one client, so such connections are never
                // shared by HTTP/2 streams of different clients.
                let any = if pp.is_some() {
                    cfg.http1.clone()
                } else {
                    cfg.any_http.clone()
                };
                (
                    OriginConnector::new(
                        &server.host,
                        server.port,
                        Some((any, name.clone())),
                        connect,
                        pp,
                    ),
                    OriginConnector::new(
                        &server.host,
                        server.port,
                        Some((cfg.http1.clone(), name)),
                        connect,
                        pp,
                    ),
                )
            }
            _ => {
                let c = OriginConnector::new(&server.host, server.port, None, connect, pp);
                (c.clone(), c)
            }
        };
        let idle = origin.timeouts.idle;
        let cap = origin.max_connections.and_then(|n| usize::try_from(n).ok());
        let m = metrics.origin(&server.url);
        if origin.health.active.is_some() {
            // Checked servers show their state from the start, as an operator who turned
            // checks on expects; the others' series wait for their first use.
            m.get();
        }
        Ok(Self {
            label: server.url.as_str().into(),
            weight: server.weight,
            hash_id: stable_hash(server.url.as_bytes()),
            client: OriginPool::new(normal, idle, origin.h2c, cap, Some(m.pool())),
            upgrade_client: OriginPool::new(upgrade, idle, false, cap, Some(m.pool())),
            metrics: m,
            in_flight: AtomicUsize::new(0),
            active_up: AtomicBool::new(true),
            passive: origin.health.passive.map(|policy| Passive {
                policy,
                window_start_ms: AtomicU64::new(0),
                failures: AtomicU32::new(0),
                ejected_until_ms: AtomicU64::new(0),
            }),
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the server may get requests: the active checks say up, and it is not
    /// ejected.
    pub(crate) fn available(&self) -> bool {
        self.active_up.load(Ordering::Relaxed) && !self.ejected()
    }

    fn ejected(&self) -> bool {
        let Some(p) = &self.passive else {
            return false;
        };
        let until = p.ejected_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if self.now_ms() < until {
            return true;
        }
        // The ejection is over; the first to notice puts the server back.
        if p.ejected_until_ms
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            p.failures.store(0, Ordering::Relaxed);
            self.refresh_gauge();
            tracing::info!(origin = &*self.label, "origin server back after ejection");
        }
        false
    }

    /// Time until an ejected server returns (`None` when it is not ejected).
    pub(crate) fn ejected_for(&self) -> Option<Duration> {
        let until = self
            .passive
            .as_ref()?
            .ejected_until_ms
            .load(Ordering::Relaxed);
        let now = self.now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// A request to this server failed in a way that counts against its health.
    pub(crate) fn record_failure(&self) {
        let Some(p) = &self.passive else {
            return;
        };
        let now = self.now_ms();
        let window = u64::try_from(p.policy.window.as_millis()).unwrap_or(u64::MAX);
        let start = p.window_start_ms.load(Ordering::Relaxed);
        let count = if now.saturating_sub(start) > window {
            p.window_start_ms.store(now, Ordering::Relaxed);
            p.failures.store(1, Ordering::Relaxed);
            1
        } else {
            p.failures.fetch_add(1, Ordering::Relaxed) + 1
        };
        if count >= p.policy.failures {
            let until = now + u64::try_from(p.policy.eject.as_millis()).unwrap_or(u64::MAX / 2);
            // Only the failure that crosses the line ejects (and counts the ejection).
            if p.ejected_until_ms
                .compare_exchange(0, until.max(1), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.metrics.get().ejections.inc();
                self.refresh_gauge();
                tracing::warn!(
                    origin = &*self.label,
                    failures = count,
                    eject_s = p.policy.eject.as_secs_f64(),
                    "origin server ejected after repeated failures"
                );
            }
        }
    }

    /// Takes over what `old` (the same server under the previous configuration) knew:
    /// down stays down until `rise` good checks, an ejection runs its course.
    pub(crate) fn inherit_health(&self, old: &Backend) {
        self.active_up
            .store(old.active_up.load(Ordering::Relaxed), Ordering::Relaxed);
        if let (Some(p), Some(left)) = (&self.passive, old.ejected_for()) {
            let until = self.now_ms() + u64::try_from(left.as_millis()).unwrap_or(u64::MAX / 2);
            p.ejected_until_ms.store(until.max(1), Ordering::Relaxed);
        }
        self.refresh_gauge();
    }

    /// A check's verdict changed the server's state (after `rise` or `fall` in a row).
    pub(crate) fn set_active_up(&self, up: bool) {
        if self.active_up.swap(up, Ordering::AcqRel) != up {
            self.refresh_gauge();
            if up {
                tracing::info!(origin = &*self.label, "origin server up");
            } else {
                tracing::warn!(origin = &*self.label, "origin server down");
            }
        }
    }

    fn refresh_gauge(&self) {
        let ejected = self
            .passive
            .as_ref()
            .is_some_and(|p| p.ejected_until_ms.load(Ordering::Relaxed) != 0);
        let up = self.active_up.load(Ordering::Relaxed) && !ejected;
        self.metrics.get().up.set(i64::from(up));
    }
}

/// Counts a request in flight until dropped.
pub(crate) struct InFlight(Arc<Backend>);

impl InFlight {
    pub(crate) fn new(backend: &Arc<Backend>) -> Self {
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(backend.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("InFlight").field(&self.0.label).finish()
    }
}

/// FNV-1a with a final mix: the same on every run and every replica, unlike std's hasher,
/// so replicas agree on where a hash key goes.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// The murmur3 finaliser: spreads every input bit over the output.
pub(crate) fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}
