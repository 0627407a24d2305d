//! The third floor: one origin as the data path uses it. Its servers ([`backend`]), how one
//! is picked for a request ([`balance`]), when a failed request is tried again ([`budget`],
//! with a body that can be offered twice: [`replay`], [`request_body`]), and each server's
//! connections: the pool ([`pool`]), the HTTP/1.1 client ([`origin_h1`]) and the
//! connector (TCP, PROXY header, TLS: [`connector`]); active health checks in [`health`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use http::header::{self, HeaderMap};
use http::uri::Scheme;
use portcullis_config::{HashKey, Origin, Retries, Transport};
use portcullis_tls::origin_tls_config;

use crate::error::UpstreamError;
use crate::metrics::ProxyMetrics;

mod backend;
mod balance;
mod budget;
mod connector;
mod health;
mod origin_h1;
mod pool;
mod replay;
mod request_body;
mod sticky;
#[cfg(test)]
mod test_pipe;

use backend::stable_hash;
pub(crate) use backend::{Backend, InFlight};
use balance::Balancer;
use budget::RetryBudget;
pub(crate) use origin_h1::OriginUpgrade;
/// For [`crate::fuzzing`]: the response decoder, without I/O.
pub(crate) use origin_h1::codec as origin_h1_codec;
pub(crate) use pool::{OriginBody, PoolKey};
pub(crate) use replay::{ReplayBody, Replayable};
pub(crate) use request_body::{BodyFault, ClientFault, RequestBody};
use sticky::Sticky;

/// A ready-to-use origin.
pub struct Upstream {
    pub(crate) label: Arc<str>,
    pub(crate) scheme: Scheme,
    pub(crate) backends: Box<[Arc<Backend>]>,
    balancer: Balancer,
    hash_key: Option<HashKey>,
    /// The cookie of `balance: sticky`.
    sticky: Option<Box<Sticky>>,
    pub(crate) retries: Retries,
    budget: Option<RetryBudget>,
    pub(crate) response_header_timeout: Duration,
    pub(crate) verify_failure_status: StatusCode,
    /// Connections carry a PROXY header, so each client gets connections of its own.
    pub(crate) proxy_protocol: bool,
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
    /// Builds the clients for every server of `origin`, and starts its health checks when
    /// called inside a Tokio runtime (they stop when the upstream is dropped). The error
    /// says what is wrong with its TLS settings.
    pub fn new(origin: &Origin, metrics: &ProxyMetrics) -> Result<Arc<Self>, UpstreamError> {
        Self::with_known(origin, metrics, &|_| None)
    }

    /// Like [`new`](Self::new), with the servers a previous configuration had (by URL):
    /// a server that was down or ejected stays so until its checks or ejection say
    /// otherwise, whatever else changed in the origin.
    pub(crate) fn with_known<'a>(
        origin: &Origin,
        metrics: &ProxyMetrics,
        known: &dyn Fn(&str) -> Option<&'a Arc<Backend>>,
    ) -> Result<Arc<Self>, UpstreamError> {
        let (scheme, tls) = match &origin.transport {
            Transport::Plain => (Scheme::HTTP, None),
            Transport::Tls(tls) => (Scheme::HTTPS, Some(origin_tls_config(tls)?)),
        };
        let backends = origin
            .servers
            .iter()
            .map(|s| {
                let b = Backend::new(origin, s, tls.as_ref(), metrics)?;
                if let Some(old) = known(&s.url) {
                    b.inherit_health(old);
                }
                Ok::<_, UpstreamError>(Arc::new(b))
            })
            .collect::<Result<Box<[_]>, _>>()?;
        let sticky = match &origin.balance {
            portcullis_config::Balance::Sticky(c) => {
                let hashes: Vec<u64> = backends.iter().map(|b| b.hash_id).collect();
                Some(Box::new(Sticky::new(c, &hashes)))
            }
            _ => None,
        };
        let upstream = Arc::new(Self {
            label: origin.url.as_str().into(),
            scheme,
            balancer: Balancer::new(&origin.balance, &backends),
            backends,
            hash_key: match &origin.balance {
                portcullis_config::Balance::Hash(k) => Some(k.clone()),
                _ => None,
            },
            sticky,
            retries: origin.retries.clone(),
            budget: (origin.retries.attempts > 0).then(|| RetryBudget::new(origin.retries.budget)),
            response_header_timeout: origin.timeouts.response_header,
            verify_failure_status: StatusCode::from_u16(origin.verify_failure_status)
                .unwrap_or(StatusCode::BAD_GATEWAY),
            proxy_protocol: origin.proxy_protocol.is_some(),
            origin: origin.clone(),
        });
        if let Some(active) = &origin.health.active
            && tokio::runtime::Handle::try_current().is_ok()
        {
            health::spawn_checks(&upstream, active);
        }
        Ok(upstream)
    }

    /// The configuration this upstream was built from (to reuse it when a reload leaves
    /// the origin unchanged).
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The request's hash key, when the origin balances by hash and the request has one.
    pub(crate) fn hash_key(&self, headers: &HeaderMap, client: IpAddr) -> Option<u64> {
        match self.hash_key.as_ref()? {
            HashKey::Header(name) => headers
                .get(name.as_str())
                .map(|v| stable_hash(v.as_bytes())),
            HashKey::Cookie(name) => cookie(headers, name).map(stable_hash),
            HashKey::ClientIp => Some(match client {
                IpAddr::V4(v4) => stable_hash(&v4.octets()),
                IpAddr::V6(v6) => stable_hash(&v6.octets()),
            }),
        }
    }

    /// A server for the next attempt (see [`Balancer::pick`]).
    pub(crate) fn pick(&self, key: Option<u64>, tried: &[usize]) -> Option<usize> {
        self.balancer.pick(&self.backends, key, tried)
    }

    /// The available server the request's sticky cookie names (`balance: sticky`).
    pub(crate) fn sticky_server(&self, headers: &HeaderMap) -> Option<usize> {
        let i = self.sticky.as_ref()?.named(headers)?;
        self.backends[i].available().then_some(i)
    }

    /// The sticky cookie naming server `i`, for a response the request's cookie did not
    /// name (`None`: the origin is not sticky). `https`: the request came over TLS.
    pub(crate) fn sticky_cookie(&self, i: usize, https: bool) -> Option<http::HeaderValue> {
        self.sticky.as_ref()?.set_cookie(i, https)
    }

    /// A first attempt is made (feeds the retry budget).
    pub(crate) fn note_request(&self) {
        if let Some(b) = &self.budget {
            b.deposit();
        }
    }

    /// Whether the retry budget allows one more retry (and takes it).
    pub(crate) fn take_retry(&self) -> bool {
        self.budget.as_ref().is_some_and(RetryBudget::withdraw)
    }

    /// How long clients should wait when no server is available: until the first ejected
    /// server returns, or about one round of health checks.
    pub(crate) fn retry_after(&self) -> Duration {
        let ejected = self.backends.iter().filter_map(|b| b.ejected_for()).min();
        let checks = self
            .origin
            .health
            .active
            .as_ref()
            .map(|a| a.interval * a.rise);
        ejected
            .or(checks)
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_secs(1))
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1; session=abc ; b=2".parse().unwrap());
        h.append(header::COOKIE, "c=3".parse().unwrap());
        assert_eq!(cookie(&h, "session"), Some(&b"abc"[..]));
        assert_eq!(cookie(&h, "c"), Some(&b"3"[..]));
        assert_eq!(cookie(&h, "sess"), None);
    }
}
