//! Every Portcullis metric: the names (one catalogue for the whole gateway), and the data
//! path's own metrics, registered into a registry the caller passes in.
//!
//! Labels are bounded by the configuration, never by what clients send: `site` (a site's
//! name), `route` (a route's path), `origin` (an origin URL as written), `code` (a status
//! class such as `2xx`), `listener`, and fixed sets of reasons.

use std::sync::OnceLock;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Metric names, in one place (`docs/metrics.md` is the catalogue).
pub mod names {
    /// Requests answered, by `site`, `route`, `code` (status class).
    pub const HTTP_REQUESTS: &str = "portcullis_http_requests_total";
    /// Request duration, first byte in to last byte out, by `site`, `route`.
    pub const HTTP_REQUEST_DURATION: &str = "portcullis_http_request_duration_seconds";
    /// Requests sent to origins, by `origin`.
    pub const ORIGIN_REQUESTS: &str = "portcullis_origin_requests_total";
    /// Failed origin requests, by `origin`, `kind` (connect, timeout, tls, reset).
    pub const ORIGIN_ERRORS: &str = "portcullis_origin_errors_total";
    /// Time from sending a request to an origin to its response headers, by `origin`.
    pub const ORIGIN_DURATION: &str = "portcullis_origin_response_duration_seconds";
    /// Whether an origin server takes requests (1) or is down or ejected (0), by `origin`.
    pub const ORIGIN_SERVER_UP: &str = "portcullis_origin_server_up";
    /// Origin servers taken out of rotation by passive health checking, by `origin`.
    pub const ORIGIN_EJECTIONS: &str = "portcullis_origin_ejections_total";
    /// Requests tried again after failing on a server, by `origin` (the server that failed).
    pub const ORIGIN_RETRIES: &str = "portcullis_origin_retries_total";
    /// Active health checks, by `origin`, `result` (ok, failed).
    pub const ORIGIN_HEALTH_CHECKS: &str = "portcullis_origin_health_checks_total";
    /// Connections to an origin server open now, by `origin`.
    pub const ORIGIN_CONNECTIONS_OPEN: &str = "portcullis_origin_connections_open";
    /// Connections opened to an origin server, by `origin`.
    pub const ORIGIN_CONNECTIONS: &str = "portcullis_origin_connections_total";
    /// Requests waiting for a connection to an origin server, by `origin`.
    pub const ORIGIN_REQUESTS_WAITING: &str = "portcullis_origin_requests_waiting";
    /// Client connections open now, by `listener`.
    pub const CONNECTIONS_OPEN: &str = "portcullis_connections_open";
    /// Client connections accepted, by `listener`.
    pub const CONNECTIONS: &str = "portcullis_connections_total";
    /// Client connections refused or cut off, by `listener`, `reason`.
    pub const CONNECTIONS_REJECTED: &str = "portcullis_connections_rejected_total";
    /// TLS handshakes, by `result` (ok, failed) and `version`.
    pub const TLS_HANDSHAKES: &str = "portcullis_tls_handshakes_total";
    /// Failed TLS handshakes, by `reason`.
    pub const TLS_HANDSHAKE_FAILURES: &str = "portcullis_tls_handshake_failures_total";
    /// Certificate expiry, Unix seconds, by `site`, `source` (file, local, acme).
    pub const CERTIFICATE_NOT_AFTER: &str = "portcullis_certificate_not_after_timestamp_seconds";
    /// ACME orders, by `result` (success, failure).
    pub const ACME_ORDERS: &str = "portcullis_acme_orders_total";
    /// Last ACME issuance, Unix seconds (0 if none yet).
    pub const ACME_LAST_SUCCESS: &str = "portcullis_acme_last_success_timestamp_seconds";
    /// Configuration reloads, by `result` (success, failure).
    pub const CONFIG_RELOADS: &str = "portcullis_config_reloads_total";
    /// Last successful configuration load, Unix seconds.
    pub const CONFIG_LAST_RELOAD_SUCCESS: &str =
        "portcullis_config_last_reload_success_timestamp_seconds";
    /// `portcullis ingress`: snapshots of the cluster applied, by `result` (success,
    /// failure, unchanged).
    pub const KUBERNETES_SYNCS: &str = "portcullis_kubernetes_syncs_total";
    /// `portcullis ingress`: when the routes in force were last synced, Unix seconds.
    pub const KUBERNETES_LAST_SYNC: &str = "portcullis_kubernetes_last_sync_timestamp_seconds";
    /// `portcullis ingress`: 1 while every watch of the API server is answered.
    pub const KUBERNETES_API_UP: &str = "portcullis_kubernetes_api_up";
    /// `portcullis ingress`: problems found in the cluster's objects, by `kind`,
    /// `namespace`, `name`.
    pub const KUBERNETES_PROBLEMS: &str = "portcullis_kubernetes_problems";
    /// `portcullis ingress`: annotations present and not supported, by `namespace`,
    /// `ingress`, `annotation`.
    pub const KUBERNETES_UNSUPPORTED_ANNOTATIONS: &str =
        "portcullis_kubernetes_unsupported_annotations";
    /// `mixed_content: rewrite`: HTML responses in which at least one URL was rewritten,
    /// by `site`.
    pub const MIXED_CONTENT_REWRITTEN_RESPONSES: &str =
        "portcullis_mixed_content_rewritten_responses_total";
    /// `mixed_content: rewrite`: `http://` URLs rewritten to `https://`, by `site`.
    pub const MIXED_CONTENT_REWRITTEN_URLS: &str = "portcullis_mixed_content_rewritten_urls_total";

    /// Every name above.
    pub const ALL: &[&str] = &[
        HTTP_REQUESTS,
        HTTP_REQUEST_DURATION,
        ORIGIN_REQUESTS,
        ORIGIN_ERRORS,
        ORIGIN_DURATION,
        ORIGIN_SERVER_UP,
        ORIGIN_EJECTIONS,
        ORIGIN_RETRIES,
        ORIGIN_HEALTH_CHECKS,
        ORIGIN_CONNECTIONS_OPEN,
        ORIGIN_CONNECTIONS,
        ORIGIN_REQUESTS_WAITING,
        CONNECTIONS_OPEN,
        CONNECTIONS,
        CONNECTIONS_REJECTED,
        TLS_HANDSHAKES,
        TLS_HANDSHAKE_FAILURES,
        CERTIFICATE_NOT_AFTER,
        ACME_ORDERS,
        ACME_LAST_SUCCESS,
        CONFIG_RELOADS,
        CONFIG_LAST_RELOAD_SUCCESS,
        KUBERNETES_SYNCS,
        KUBERNETES_LAST_SYNC,
        KUBERNETES_API_UP,
        KUBERNETES_PROBLEMS,
        KUBERNETES_UNSUPPORTED_ANNOTATIONS,
        MIXED_CONTENT_REWRITTEN_RESPONSES,
        MIXED_CONTENT_REWRITTEN_URLS,
    ];
}

/// Why a connection was refused or cut off (the `reason` label).
#[derive(Debug, Clone, Copy)]
pub enum RejectReason {
    /// `limits.max_connections` reached.
    MaxConnections,
    /// `limits.max_connections_per_ip` reached.
    MaxConnectionsPerIp,
    /// The request head did not arrive within `limits.header_read_timeout`.
    HeaderTimeout,
    /// Too many HTTP/2 streams reset by the client (`limits.h2_max_resets`).
    RapidReset,
    /// A peer that must send a PROXY protocol header sent none, or a broken one.
    ProxyProtocol,
}

impl RejectReason {
    fn label(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::MaxConnectionsPerIp => "max_connections_per_ip",
            Self::HeaderTimeout => "header_timeout",
            Self::RapidReset => "h2_rapid_reset",
            Self::ProxyProtocol => "proxy_protocol",
        }
    }
}

/// Latency buckets, in seconds: 1 ms to 1 min.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The data path's metrics.
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    origin_requests: IntCounterVec,
    origin_errors: IntCounterVec,
    origin_duration: HistogramVec,
    origin_up: IntGaugeVec,
    origin_ejections: IntCounterVec,
    origin_retries: IntCounterVec,
    origin_checks: IntCounterVec,
    origin_connections_open: IntGaugeVec,
    origin_connections: IntCounterVec,
    origin_waiting: IntGaugeVec,
    connections_open: IntGaugeVec,
    connections: IntCounterVec,
    rejected: IntCounterVec,
    handshakes: IntCounterVec,
    handshake_failures: IntCounterVec,
    rewritten_responses: IntCounterVec,
    rewritten_urls: IntCounterVec,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    c: T,
) -> prometheus::Result<T> {
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl ProxyMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            register(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
                    labels,
                )?,
            )
        };
        Ok(Self {
            requests: counter(
                names::HTTP_REQUESTS,
                "HTTP requests answered, by site, route and status class.",
                &["site", "route", "code"],
            )?,
            duration: histogram(
                names::HTTP_REQUEST_DURATION,
                "Time from a request's arrival to the end of its response.",
                &["site", "route"],
            )?,
            origin_requests: counter(
                names::ORIGIN_REQUESTS,
                "Requests forwarded to origins.",
                &["origin"],
            )?,
            origin_errors: counter(
                names::ORIGIN_ERRORS,
                "Origin requests that failed, by kind: connect, timeout, tls, reset.",
                &["origin", "kind"],
            )?,
            origin_duration: histogram(
                names::ORIGIN_DURATION,
                "Time from sending a request to an origin to receiving its response headers.",
                &["origin"],
            )?,
            origin_up: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        names::ORIGIN_SERVER_UP,
                        "Whether an origin server takes requests (1) or is down or ejected (0).",
                    ),
                    &["origin"],
                )?,
            )?,
            origin_ejections: counter(
                names::ORIGIN_EJECTIONS,
                "Origin servers ejected by passive health checking.",
                &["origin"],
            )?,
            origin_retries: counter(
                names::ORIGIN_RETRIES,
                "Requests tried again after failing on this origin server.",
                &["origin"],
            )?,
            origin_checks: counter(
                names::ORIGIN_HEALTH_CHECKS,
                "Active health checks of origin servers, by result.",
                &["origin", "result"],
            )?,
            origin_connections_open: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        names::ORIGIN_CONNECTIONS_OPEN,
                        "Connections to an origin server open now.",
                    ),
                    &["origin"],
                )?,
            )?,
            origin_connections: counter(
                names::ORIGIN_CONNECTIONS,
                "Connections opened to an origin server.",
                &["origin"],
            )?,
            origin_waiting: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        names::ORIGIN_REQUESTS_WAITING,
                        "Requests waiting for a connection to an origin server.",
                    ),
                    &["origin"],
                )?,
            )?,
            connections_open: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(names::CONNECTIONS_OPEN, "Client connections open now."),
                    &["listener"],
                )?,
            )?,
            connections: counter(
                names::CONNECTIONS,
                "Client connections accepted.",
                &["listener"],
            )?,
            rejected: counter(
                names::CONNECTIONS_REJECTED,
                "Client connections refused or cut off by a limit.",
                &["listener", "reason"],
            )?,
            handshakes: counter(
                names::TLS_HANDSHAKES,
                "TLS handshakes, by result and protocol version.",
                &["result", "version"],
            )?,
            handshake_failures: counter(
                names::TLS_HANDSHAKE_FAILURES,
                "Failed TLS handshakes, by reason.",
                &["reason"],
            )?,
            rewritten_responses: counter(
                names::MIXED_CONTENT_REWRITTEN_RESPONSES,
                "HTML responses of mixed_content: rewrite sites in which at least one URL was rewritten.",
                &["site"],
            )?,
            rewritten_urls: counter(
                names::MIXED_CONTENT_REWRITTEN_URLS,
                "http:// URLs rewritten to https:// in HTML responses.",
                &["site"],
            )?,
        })
    }

    /// The rewrite counters of a `mixed_content: rewrite` site (its series exist from
    /// then on, at zero).
    pub(crate) fn mixed_content(&self, site: &str) -> MixedContentCounters {
        MixedContentCounters {
            responses: self.rewritten_responses.with_label_values(&[site]),
            urls: self.rewritten_urls.with_label_values(&[site]),
        }
    }

    /// Drops the rewrite series of a site that no longer rewrites (or no longer exists).
    pub(crate) fn forget_mixed_content(&self, site: &str) {
        let _ = self.rewritten_responses.remove_label_values(&[site]);
        let _ = self.rewritten_urls.remove_label_values(&[site]);
    }

    /// Metrics with a private registry, for tests and tools that do not export them.
    pub fn unregistered() -> Self {
        Self::new(&Registry::new()).expect("a fresh registry accepts every metric")
    }

    /// A route's series, created on its first request: a config of 10,000 sites would
    /// otherwise register 12 series per site and route at start (a fifth of the start-up
    /// time, and hundreds of thousands of `/metrics` lines for routes never used).
    pub(crate) fn route(&self, site: &str, route: &str) -> RouteMetrics {
        RouteMetrics {
            site: site.into(),
            route: route.into(),
            requests: self.requests.clone(),
            duration: self.duration.clone(),
            resolved: OnceLock::new(),
        }
    }

    /// Requests that matched no site (400, 421) are counted under site `-`.
    pub(crate) fn unrouted(&self) -> RouteMetrics {
        self.route("-", "-")
    }

    /// A server's series, created when first used (see [`OriginMetrics`]).
    pub(crate) fn origin(&self, origin: &str) -> OriginMetrics {
        OriginMetrics(std::sync::Arc::new(LazyOrigin {
            metrics: self.clone(),
            label: origin.into(),
            resolved: OnceLock::new(),
        }))
    }

    fn resolve_origin(&self, origin: &str) -> ResolvedOrigin {
        let up = self.origin_up.with_label_values(&[origin]);
        // First used by a request, a connection or a check: the server takes requests
        // until its health says otherwise (which sets it again).
        up.set(1);
        ResolvedOrigin {
            requests: self.origin_requests.with_label_values(&[origin]),
            errors: ["connect", "timeout", "tls", "reset"]
                .map(|k| self.origin_errors.with_label_values(&[origin, k])),
            duration: self.origin_duration.with_label_values(&[origin]),
            up,
            ejections: self.origin_ejections.with_label_values(&[origin]),
            retries: self.origin_retries.with_label_values(&[origin]),
            checks: ["ok", "failed"].map(|r| self.origin_checks.with_label_values(&[origin, r])),
            open: self.origin_connections_open.with_label_values(&[origin]),
            opened: self.origin_connections.with_label_values(&[origin]),
            waiting: self.origin_waiting.with_label_values(&[origin]),
        }
    }

    /// Drops the request series of a route that is no longer configured.
    pub(crate) fn forget_route(&self, site: &str, route: &str) {
        for class in STATUS_CLASSES {
            let _ = self.requests.remove_label_values(&[site, route, class]);
        }
        let _ = self.duration.remove_label_values(&[site, route]);
    }

    /// Drops every series of an origin server that is no longer configured.
    pub(crate) fn forget_origin(&self, origin: &str) {
        let _ = self.origin_requests.remove_label_values(&[origin]);
        let _ = self.origin_duration.remove_label_values(&[origin]);
        let _ = self.origin_up.remove_label_values(&[origin]);
        let _ = self.origin_ejections.remove_label_values(&[origin]);
        let _ = self.origin_connections_open.remove_label_values(&[origin]);
        let _ = self.origin_connections.remove_label_values(&[origin]);
        let _ = self.origin_waiting.remove_label_values(&[origin]);
        let _ = self.origin_retries.remove_label_values(&[origin]);
        for kind in ["connect", "timeout", "tls", "reset"] {
            let _ = self.origin_errors.remove_label_values(&[origin, kind]);
        }
        for result in ["ok", "failed"] {
            let _ = self.origin_checks.remove_label_values(&[origin, result]);
        }
    }

    pub(crate) fn listener(&self, listener: &'static str) -> ListenerMetrics {
        ListenerMetrics {
            open: self.connections_open.with_label_values(&[listener]),
            accepted: self.connections.with_label_values(&[listener]),
            rejected: self.rejected.clone(),
            listener,
        }
    }

    pub(crate) fn handshake_ok(&self, version: &str) {
        self.handshakes.with_label_values(&["ok", version]).inc();
    }

    pub(crate) fn handshake_failed(&self, reason: &str) {
        self.handshakes
            .with_label_values(&["failed", "unknown"])
            .inc();
        self.handshake_failures.with_label_values(&[reason]).inc();
    }
}

/// A `mixed_content: rewrite` site's counters.
#[derive(Debug, Clone)]
pub(crate) struct MixedContentCounters {
    responses: IntCounter,
    urls: IntCounter,
}

impl MixedContentCounters {
    /// `n` more URLs rewritten; `first`: the response's first ones.
    pub(crate) fn rewrote(&self, first: bool, n: u64) {
        if first {
            self.responses.inc();
        }
        self.urls.inc_by(n);
    }

    /// Responses, URLs (for tests).
    #[cfg(test)]
    pub(crate) fn get(&self) -> (u64, u64) {
        (self.responses.get(), self.urls.get())
    }
}

/// Handles for one route, resolved on its first request; later requests only increment.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    site: Box<str>,
    route: Box<str>,
    requests: IntCounterVec,
    duration: HistogramVec,
    resolved: OnceLock<ResolvedRoute>,
}

/// The `code` label values, in the order `RouteMetrics` keeps its counters.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Debug)]
struct ResolvedRoute {
    by_class: [IntCounter; 5],
    duration: Histogram,
}

impl RouteMetrics {
    /// `site`, `route`.
    pub(crate) fn labels(&self) -> (&str, &str) {
        (&self.site, &self.route)
    }

    pub(crate) fn observe(&self, status: u16, seconds: f64) {
        let r = self.resolved.get_or_init(|| {
            let (site, route) = (&*self.site, &*self.route);
            ResolvedRoute {
                by_class: STATUS_CLASSES
                    .map(|c| self.requests.with_label_values(&[site, route, c])),
                duration: self.duration.with_label_values(&[site, route]),
            }
        });
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        r.by_class[class].inc();
        r.duration.observe(seconds);
    }
}

/// Handles for one origin.
#[derive(Debug, Clone)]
pub(crate) struct OriginMetrics(std::sync::Arc<LazyOrigin>);

/// An origin server's series are created the first time the server is used (a request, a
/// connection, a health check, a change of state), not when it is configured: behind an
/// ingress every pod endpoint is a server, and tens of thousands of servers that see no
/// request would otherwise hold hundreds of thousands of series (about 27 each, with the
/// latency histogram's buckets) and their memory.
struct LazyOrigin {
    metrics: ProxyMetrics,
    label: Box<str>,
    resolved: OnceLock<ResolvedOrigin>,
}

impl std::fmt::Debug for LazyOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginMetrics")
            .field("origin", &self.label)
            .field("resolved", &self.resolved.get().is_some())
            .finish()
    }
}

#[derive(Debug)]
pub(crate) struct ResolvedOrigin {
    pub(crate) requests: IntCounter,
    errors: [IntCounter; 4],
    pub(crate) duration: Histogram,
    pub(crate) up: IntGauge,
    pub(crate) ejections: IntCounter,
    pub(crate) retries: IntCounter,
    checks: [IntCounter; 2],
    open: IntGauge,
    opened: IntCounter,
    waiting: IntGauge,
}

/// A server's connections: open now, opened in all, and requests waiting for one (the
/// server's [`OriginMetrics`], created on first use as they are).
#[derive(Debug, Clone)]
pub(crate) struct PoolMetrics(OriginMetrics);

impl PoolMetrics {
    pub(crate) fn open(&self) -> &IntGauge {
        &self.0.get().open
    }

    pub(crate) fn opened(&self) -> &IntCounter {
        &self.0.get().opened
    }

    pub(crate) fn waiting(&self) -> &IntGauge {
        &self.0.get().waiting
    }
}

impl OriginMetrics {
    /// The series, created now if this is their first use.
    pub(crate) fn get(&self) -> &ResolvedOrigin {
        let lazy = &*self.0;
        lazy.resolved
            .get_or_init(|| lazy.metrics.resolve_origin(&lazy.label))
    }

    /// The pools' handle on the same series.
    pub(crate) fn pool(&self) -> PoolMetrics {
        PoolMetrics(self.clone())
    }

    pub(crate) fn health_check(&self, ok: bool) {
        self.get().checks[usize::from(!ok)].inc();
    }

    pub(crate) fn error(&self, kind: &str) {
        let i = match kind {
            "connect" => 0,
            "timeout" => 1,
            "tls" => 2,
            _ => 3,
        };
        self.get().errors[i].inc();
    }
}

/// Handles for one listener.
#[derive(Debug, Clone)]
pub(crate) struct ListenerMetrics {
    pub(crate) open: prometheus::IntGauge,
    pub(crate) accepted: IntCounter,
    rejected: IntCounterVec,
    listener: &'static str,
}

impl ListenerMetrics {
    pub(crate) fn rejected(&self, reason: RejectReason) {
        self.rejected
            .with_label_values(&[self.listener, reason.label()])
            .inc();
    }
}

/// The `site` labels of the request counter's series in `registry`, sorted, once each.
#[cfg(test)]
pub(crate) fn sites_with_series(registry: &Registry) -> Vec<String> {
    let mut sites: Vec<String> = registry
        .gather()
        .iter()
        .filter(|f| f.name() == names::HTTP_REQUESTS)
        .flat_map(|f| f.get_metric().iter())
        .filter_map(|m| m.get_label().iter().find(|l| l.name() == "site"))
        .map(|l| l.value().to_owned())
        .collect();
    sites.sort();
    sites.dedup();
    sites
}

#[cfg(test)]
mod route_tests {
    use super::*;

    #[test]
    fn a_route_gets_its_series_on_its_first_request() {
        let registry = Registry::new();
        let m = ProxyMetrics::new(&registry).unwrap();
        let a = m.route("a", "*");
        let _b = m.route("b", "*");
        assert!(
            sites_with_series(&registry).is_empty(),
            "none before requests"
        );
        a.observe(204, 0.01);
        a.observe(503, 0.01);
        assert_eq!(sites_with_series(&registry), ["a"]);
        let classes = registry
            .gather()
            .iter()
            .filter(|f| f.name() == names::HTTP_REQUESTS)
            .map(|f| f.get_metric().len())
            .sum::<usize>();
        assert_eq!(
            classes, 5,
            "every status class of the route, zeros included"
        );
        assert_eq!(m.requests.with_label_values(&["a", "*", "2xx"]).get(), 1);
        assert_eq!(m.requests.with_label_values(&["a", "*", "5xx"]).get(), 1);
    }
}
