//! Forwarding one request to an origin: the request rewritten for it, a server picked, the
//! attempt made, and tried again elsewhere when that is safe; then the response (or the
//! upgraded tunnel) handed back.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::answers::error_response;
use crate::conn::ConnInfo;
use crate::error::{OriginError, OriginFailureKind};
use crate::headers;
use crate::io::BoxedIo;
use crate::proxy_protocol::ProxyAddrs;
use crate::response::{AccessLog, ProxyBody};
use crate::router::rewrite_path;
use crate::upstream::{
    BodyFault, ClientFault, InFlight, OriginUpgrade, PoolKey, ReplayBody, Replayable, RequestBody,
    Upstream,
};

/// Where a proxied request goes and under which limits.
pub(crate) struct Target<'a> {
    pub(crate) authority: Authority,
    /// Leading bytes of the path replaced, and with what.
    pub(crate) rewrite: Option<(usize, &'a str)>,
    pub(crate) max_body: Option<u64>,
    pub(crate) site: &'a str,
    /// The protocols an `Upgrade` request may switch to.
    pub(crate) upgrades: &'a portcullis_config::Upgrades,
}

pub(crate) async fn forward(
    upstream: &Upstream,
    conn: &Arc<ConnInfo>,
    req: Request<Incoming>,
    target: Target<'_>,
    log: Option<&mut AccessLog>,
) -> Response<ProxyBody> {
    let Target {
        authority,
        rewrite,
        max_body,
        site,
        upgrades,
    } = target;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let (Some(max), Some(len)) = (max_body, declared)
        && len > max
    {
        return error_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
    }
    // An upgrade the route does not allow goes as an ordinary request, without `Upgrade`.
    let upgrade = headers::wants_upgrade(req.headers(), req.version())
        && headers::upgrade_allowed(req.headers(), upgrades);
    let client_h2 = req.version() == http::Version::HTTP_2;
    let (mut parts, body) = req.into_parts();

    let path_and_query = match (rewrite, parts.uri.path_and_query()) {
        (None, Some(pq)) => pq.clone(),
        (Some((n, to)), Some(pq)) => {
            let mut path = rewrite_path(pq.path(), n, to);
            if let Some(q) = pq.query() {
                path.push('?');
                path.push_str(q);
            }
            PathAndQuery::try_from(path).unwrap_or_else(|_| PathAndQuery::from_static("/"))
        }
        (_, None) => PathAndQuery::from_static("/"),
    };
    headers::prepare_request(
        &mut parts.headers,
        &conn.client,
        authority.as_str(),
        parts.version,
        upgrade,
    );
    let key = upstream.hash_key(&parts.headers, conn.peer.ip());
    let sticky = upstream.sticky_server(&parts.headers);
    // PROXY protocol origins' connections carry one client's addresses, so they are pooled
    // by those; any other origin's serve every site in front of it: the site travels in
    // each request (`Host` for HTTP/1.1, the URI's authority as `:authority` for HTTP/2).
    let pool_key = if upstream.proxy_protocol {
        PoolKey::Client(Arc::new(ProxyAddrs {
            source: conn.peer,
            destination: conn.local,
        }))
    } else {
        PoolKey::Shared
    };
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(upstream.scheme.clone());
    uri.authority = Some(authority);
    uri.path_and_query = Some(path_and_query);
    parts.uri = match Uri::from_parts(uri) {
        Ok(u) => u,
        Err(_) => return error_response(StatusCode::BAD_REQUEST, "invalid request target\n"),
    };
    // The origin connection's own protocol (h1 or h2 by ALPN) is chosen by the pool.
    parts.version = http::Version::HTTP_11;

    // A declared length was checked above; a streamed body is cut off where it passes.
    let body = RequestBody::new(body, &conn.clock);
    let body = match max_body.filter(|_| declared.is_none()) {
        Some(max) => body.limited(max),
        None => body,
    };
    let fault = body.fault();
    let attempts = if upgrade {
        0
    } else {
        upstream.retries.attempts
    };
    let idempotent = parts.method.is_idempotent();
    let (mut single, replay) = if attempts == 0 {
        (Some(ReplayBody::direct(body)), None)
    } else {
        (None, Some(Replayable::new(body)))
    };
    upstream.note_request();

    let mut tried: Vec<usize> = Vec::new();
    let (i, backend, mut resp, in_flight) = loop {
        let pick = match sticky {
            // A retry goes wherever the balancer says; the cookie then names that server.
            Some(i) if tried.is_empty() => Some(i),
            _ => upstream.pick(key, &tried),
        };
        let Some(i) = pick else {
            if upstream.backends.is_empty() {
                debug!(site, origin = &*upstream.label, "origin has no servers");
                return unavailable(
                    "503 Service Unavailable: the origin has no servers\n",
                    upstream.retry_after(),
                );
            }
            warn!(
                site,
                origin = &*upstream.label,
                "no origin server available"
            );
            return unavailable(
                "503 Service Unavailable: no origin server is available\n",
                upstream.retry_after(),
            );
        };
        let backend = &upstream.backends[i];
        let retries_left = tried.len() < attempts as usize;
        let body = match (&replay, single.take()) {
            (Some(r), _) => r.attempt(),
            (None, Some(b)) => b,
            // A single attempt never comes back here.
            (None, None) => {
                return error_response(
                    StatusCode::BAD_GATEWAY,
                    status_text(StatusCode::BAD_GATEWAY),
                );
            }
        };
        let req = if retries_left {
            let mut copy = Request::new(body);
            *copy.method_mut() = parts.method.clone();
            *copy.uri_mut() = parts.uri.clone();
            *copy.version_mut() = parts.version;
            *copy.headers_mut() = parts.headers.clone();
            copy
        } else {
            Request::from_parts(
                std::mem::replace(&mut parts, Request::new(()).into_parts().0),
                body,
            )
        };
        let client = if upgrade {
            &backend.upgrade_client
        } else {
            &backend.client
        };
        backend.metrics.get().requests.inc();
        let timer = backend.metrics.get().duration.start_timer();
        let in_flight = InFlight::new(backend);
        // Pinned where it is made, so the timer wraps a pointer: wrapping the request's
        // future itself moved it twice more (about 700 bytes each).
        let pending = std::pin::pin!(client.request(&pool_key, req));
        let result = match tokio::time::timeout(upstream.response_header_timeout, pending).await {
            Ok(result) => result,
            Err(_) => Err(OriginError::response_timeout(
                upstream.response_header_timeout,
            )),
        };
        let untouched = replay.as_ref().is_some_and(Replayable::untouched);
        let may_retry = |connect: bool| {
            retries_left && untouched && (connect || idempotent) && upstream.take_retry()
        };
        match result {
            Ok(resp) => {
                timer.observe_duration();
                let status = resp.status().as_u16();
                // An origin's answer to a body the client broke says nothing of its health.
                if !upstream.retries.on_status.contains(&status) || client_fault(&fault).is_some() {
                    break (i, backend, resp, in_flight);
                }
                backend.record_failure();
                if !may_retry(false) {
                    break (i, backend, resp, in_flight);
                }
                debug!(
                    site,
                    origin = &*backend.label,
                    status,
                    "retrying on another server"
                );
            }
            // The client's body failed under the attempt: the client's fault, not the
            // origin's (no failure recorded, no retry, no error metric).
            Err(e) if client_fault(&fault).is_some() => {
                timer.stop_and_discard();
                debug!(site, origin = &*backend.label, error = %e, "request body failed on the client's side");
                if let Some(log) = log {
                    log.origin = Some(backend.label.clone());
                }
                return match client_fault(&fault) {
                    Some(ClientFault::TooLarge) => {
                        error_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")
                    }
                    _ => bad_body(client_h2),
                };
            }
            Err(e) => {
                timer.stop_and_discard();
                backend.metrics.error(e.kind().label());
                backend.record_failure();
                let kind = e.kind();
                let retry = if kind.is_connect() {
                    upstream.retries.on_connect && may_retry(true)
                } else {
                    kind == OriginFailureKind::Reset
                        && upstream.retries.on_reset
                        && may_retry(false)
                };
                let status = e.status(upstream.verify_failure_status);
                warn!(
                    site,
                    origin = &*backend.label,
                    failure = kind.label(),
                    status = status.as_u16(),
                    retry,
                    error = %e,
                    "origin request failed"
                );
                if !retry {
                    if let Some(log) = log {
                        log.origin = Some(backend.label.clone());
                    }
                    return error_response(status, status_text(status));
                }
            }
        }
        backend.metrics.get().retries.inc();
        tried.push(i);
    };
    if let Some(log) = log {
        log.origin = Some(backend.label.clone());
    }
    if sticky != Some(i)
        && let Some(cookie) = upstream.sticky_cookie(i, conn.tls)
    {
        resp.headers_mut().append(header::SET_COOKIE, cookie);
    }

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    match (switching, upgrade) {
        (true, true) => {
            let origin_side = resp.extensions_mut().remove::<OriginUpgrade>();
            tokio::spawn(tunnel(conn.hand_over(), origin_side, conn.clone()));
            headers::strip_hop_by_hop(resp.headers_mut(), true);
        }
        _ => headers::strip_hop_by_hop(resp.headers_mut(), false),
    }
    // An HTTP/2 client's HPACK table would keep the origin's read buffer alive. (Our
    // HTTP/1.1 origin client's values are a copy of their own already.)
    if client_h2 && resp.version() == http::Version::HTTP_2 {
        headers::own_values(resp.headers_mut());
    }
    resp.map(|body| ProxyBody::origin(body, Some(in_flight)))
}

/// What went wrong with the request body on the client's side, if anything.
fn client_fault(fault: &Option<Arc<BodyFault>>) -> Option<ClientFault> {
    fault.as_deref().and_then(BodyFault::get)
}

/// 400 for a request body the client broke (RFC 9112 §7.1: bad chunked framing; or a body
/// cut short, a reset stream). An HTTP/1.1 connection closes after it: where the next
/// request would start in its bytes is unknown.
fn bad_body(client_h2: bool) -> Response<ProxyBody> {
    let mut resp = error_response(
        StatusCode::BAD_REQUEST,
        "400 Bad Request: the request body was malformed or cut short\n",
    );
    if !client_h2 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// 503 when every server of the origin is down or ejected, or it has none.
fn unavailable(text: &'static str, retry_after: std::time::Duration) -> Response<ProxyBody> {
    let mut resp = error_response(StatusCode::SERVICE_UNAVAILABLE, text);
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(retry_after.as_secs().max(1)),
    );
    resp
}

/// Copies bytes both ways between an upgraded client connection and its origin, starting
/// with what the origin sent right behind its `101`.
async fn tunnel(
    client: oneshot::Receiver<BoxedIo>,
    origin: Option<OriginUpgrade>,
    // Holds the drain token and the connection's place under the caps until it closes.
    _conn: Arc<ConnInfo>,
) {
    let (mut client, (mut origin, ahead)) = match (client.await, origin.and_then(|o| o.take())) {
        (Ok(c), Some(o)) => (c, o),
        (c, o) => {
            debug!(client = ?c.err(), origin = o.is_some(), "upgrade failed");
            return;
        }
    };
    if !ahead.is_empty()
        && let Err(e) = client.write_all(&ahead).await
    {
        debug!(error = %e, "upgraded connection ended with an error");
        return;
    }
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut origin).await {
        debug!(error = %e, "upgraded connection ended with an error");
    }
}

fn status_text(status: StatusCode) -> &'static str {
    match status.as_u16() {
        502 => "502 Bad Gateway: the origin could not be reached or failed\n",
        504 => "504 Gateway Timeout: the origin did not answer in time\n",
        526 => "526 Invalid SSL Certificate: the origin's certificate failed verification\n",
        _ => "origin error\n",
    }
}
