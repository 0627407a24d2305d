//! One origin as the data path uses it: a pooled client (h1 or h2 by ALPN), a second client
//! that offers only HTTP/1.1 for upgrades, and the origin's timeouts.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use http::uri::Scheme;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use portcullis_config::{Origin, Transport};
use portcullis_tls::origin_tls_config;

use crate::body::RequestBody;
use crate::connector::OriginConnector;
use crate::metrics::{OriginMetrics, ProxyMetrics};

/// A ready-to-use origin.
pub struct Upstream {
    pub(crate) label: Arc<str>,
    pub(crate) scheme: Scheme,
    pub(crate) client: Client<OriginConnector, RequestBody>,
    pub(crate) upgrade_client: Client<OriginConnector, RequestBody>,
    pub(crate) metrics: OriginMetrics,
    pub(crate) response_header_timeout: Duration,
    pub(crate) verify_failure_status: StatusCode,
    origin: Origin,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("url", &self.label)
            .finish()
    }
}

impl Upstream {
    /// Builds the clients for `origin`; the error says what is wrong with its TLS settings.
    pub fn new(origin: &Origin, metrics: &ProxyMetrics) -> Result<Self, String> {
        let connect = origin.timeouts.connect;
        let (scheme, normal, upgrade) = match &origin.transport {
            Transport::Plain => {
                let c = OriginConnector::new(&origin.host, origin.port, None, connect);
                (Scheme::HTTP, c.clone(), c)
            }
            Transport::Tls(tls) => {
                let cfg = origin_tls_config(tls)?;
                (
                    Scheme::HTTPS,
                    OriginConnector::new(
                        &origin.host,
                        origin.port,
                        Some((cfg.any_http, cfg.server_name.clone())),
                        connect,
                    ),
                    OriginConnector::new(
                        &origin.host,
                        origin.port,
                        Some((cfg.http1, cfg.server_name)),
                        connect,
                    ),
                )
            }
        };
        Ok(Self {
            label: origin.url.as_str().into(),
            scheme,
            client: client(normal, origin.timeouts.idle),
            upgrade_client: client(upgrade, origin.timeouts.idle),
            metrics: metrics.origin(&origin.url),
            response_header_timeout: origin.timeouts.response_header,
            verify_failure_status: StatusCode::from_u16(origin.verify_failure_status)
                .unwrap_or(StatusCode::BAD_GATEWAY),
            origin: origin.clone(),
        })
    }

    /// The configuration this upstream was built from (to reuse it when a reload leaves
    /// the origin unchanged).
    pub fn origin(&self) -> &Origin {
        &self.origin
    }
}

fn client(connector: OriginConnector, idle: Duration) -> Client<OriginConnector, RequestBody> {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        // The Host header is set from the client's request, never from the pool key.
        .set_host(false)
        .build(connector)
}
