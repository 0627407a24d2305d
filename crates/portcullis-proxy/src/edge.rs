//! Request handling on the HTTPS listener: host → site (checked against the SNI), path →
//! route, then a fixed response or the origin.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{debug, warn};

use crate::body::{AccessLog, Exchange, ProxyBody, RequestBody};
use crate::conn::ConnClock;
use crate::connector::pool_authority;
use crate::error::{OriginError, OriginFailureKind};
use crate::grpc;
use crate::headers::{self, ClientAddr};
use crate::proxy_protocol::ProxyAddrs;
use crate::replay::{ReplayBody, Replayable};
use crate::router::{Fixed, Handler, Router};
use crate::server::Shared;
use crate::upstream::{InFlight, Upstream};

/// What the edge knows about one client connection.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    pub(crate) peer: std::net::SocketAddr,
    /// The listener's address this connection came in on.
    pub(crate) local: std::net::SocketAddr,
    /// The SNI the client sent, lowercase (rustls normalises it).
    pub(crate) sni: Option<Box<str>>,
    pub(crate) client: ClientAddr,
    /// Upgraded tunnels hold a copy so a drain waits for them too.
    pub(crate) _drain: crate::drain::DrainWatch,
    /// Tracks requests in flight, idle time and client resets.
    pub(crate) clock: Arc<ConnClock>,
    /// `limits.h2_max_resets` when the connection was made.
    pub(crate) max_resets: u32,
    /// Keeps the connection counted (and its place under the caps) while anything uses
    /// it, an upgraded tunnel included.
    pub(crate) _open: crate::server::OpenGuard,
}

/// Handles one request from a TLS client.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let log = AccessLog::enabled().then(|| {
        Box::new(AccessLog {
            start: Instant::now(),
            peer: conn.peer.ip(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            host: None,
            site: None,
            origin: None,
            status: 0,
            bytes: 0,
        })
    });
    // Dropped here without a response if the client gives up on the request.
    let mut exchange = Exchange::begin(conn.clone(), log);
    let router = shared.router.load_full();
    let grpc = grpc::is_grpc(req.headers());
    let mut resp = dispatch(&router, &conn, req, &mut exchange).await;
    if grpc {
        grpc::convert_gateway_error(&mut resp);
    }
    exchange.status = resp.status().as_u16();
    exchange.responded = true;
    resp.body_mut().attach(exchange);
    Ok(resp)
}

async fn dispatch(
    router: &Router,
    conn: &Arc<ConnInfo>,
    req: Request<Incoming>,
    exchange: &mut Exchange,
) -> Response<ProxyBody> {
    exchange.route = Some(router.unrouted.clone());
    if req.method() == http::Method::CONNECT {
        // A gateway in front of fixed origins is not a forward proxy.
        return error_response(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported\n");
    }
    let Some(authority) = request_authority(&req) else {
        return error_response(StatusCode::BAD_REQUEST, "missing or invalid Host header\n");
    };
    let host = authority.host();
    let Some(site_idx) = router.site_for(host) else {
        return error_response(StatusCode::MISDIRECTED_REQUEST, "no site for this host\n");
    };
    // A connection belongs to the site its handshake chose; a request for another site's
    // host (connection reuse, a forged Host) must go to a connection of its own.
    let same_site = match conn.sni.as_deref() {
        Some(sni) if sni.eq_ignore_ascii_case(host) => true,
        sni => router.site_for_sni(sni) == Some(site_idx),
    };
    if !same_site {
        debug!(
            sni = conn.sni.as_deref(),
            host, "host does not belong to the SNI's site"
        );
        return error_response(
            StatusCode::MISDIRECTED_REQUEST,
            "this connection's certificate is not for this host\n",
        );
    }
    let site = &router.sites[site_idx];
    exchange.route = Some(site.unmatched.clone());
    if let Some(log) = exchange.log.as_deref_mut() {
        log.site = Some(site.name.clone());
        log.host = Some(authority.clone());
    }
    let Some(matched) = site.route(req.uri().path()) else {
        let mut resp = error_response(StatusCode::NOT_FOUND, "not found\n");
        add_hsts(&mut resp, site.hsts.as_ref());
        return resp;
    };
    exchange.route = Some(matched.metrics.clone());
    let mut resp = match matched.handler {
        Handler::Respond(fixed) => fixed_response(fixed),
        Handler::Proxy(upstream) => {
            let target = Target {
                authority,
                strip: matched.strip,
                max_body: site.max_body,
                site: &site.name,
            };
            forward(upstream, conn, req, target, exchange.log.as_deref_mut()).await
        }
    };
    add_hsts(&mut resp, site.hsts.as_ref());
    resp
}

/// `:authority` (HTTP/2, or an absolute-form HTTP/1.1 target), else the `Host` header.
pub(crate) fn request_authority<B>(req: &Request<B>) -> Option<Authority> {
    let authority = match req.uri().authority() {
        Some(a) => a.clone(),
        None => Authority::try_from(req.headers().get(header::HOST)?.as_bytes()).ok()?,
    };
    // Userinfo has no place in a Host; refusing it keeps it out of logs and origins.
    (!authority.as_str().contains('@') && !authority.host().is_empty()).then_some(authority)
}

fn add_hsts(resp: &mut Response<ProxyBody>, hsts: Option<&HeaderValue>) {
    if let Some(v) = hsts {
        resp.headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, v.clone());
    }
}

pub(crate) fn fixed_response(fixed: &Fixed) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::bytes(fixed.body.clone()));
    *resp.status_mut() = fixed.status;
    if let Some(ct) = &fixed.content_type {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
    }
    resp
}

/// A short plain-text response generated by the gateway itself.
pub(crate) fn error_response(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::bytes(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.extensions_mut().insert(grpc::GatewayError(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Where a proxied request goes and under which limits.
struct Target<'a> {
    authority: Authority,
    strip: usize,
    max_body: Option<u64>,
    site: &'a str,
}

async fn forward(
    upstream: &Upstream,
    conn: &Arc<ConnInfo>,
    mut req: Request<Incoming>,
    target: Target<'_>,
    log: Option<&mut AccessLog>,
) -> Response<ProxyBody> {
    let Target {
        authority,
        strip,
        max_body,
        site,
    } = target;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let (Some(max), Some(len)) = (max_body, declared) {
        if len > max {
            return error_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
        }
    }
    let upgrade = headers::wants_upgrade(req.headers(), req.version());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    let path_and_query = match (strip, parts.uri.path_and_query()) {
        (0, Some(pq)) => pq.clone(),
        (n, Some(pq)) => {
            let rest = &pq.path()[n.min(pq.path().len())..];
            let rest = if rest.is_empty() { "/" } else { rest };
            let stripped = match pq.query() {
                Some(q) => format!("{rest}?{q}"),
                None => rest.to_owned(),
            };
            PathAndQuery::try_from(stripped).unwrap_or_else(|_| PathAndQuery::from_static("/"))
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
    // The pool is keyed by the URI's authority: the client's Host normally; for PROXY
    // protocol origins the client's own addresses, so its connections are its own.
    let pool_key = if upstream.proxy_protocol {
        pool_authority(&ProxyAddrs {
            source: conn.peer,
            destination: conn.local,
        })
        .unwrap_or_else(|| authority.clone())
    } else {
        authority
    };
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(upstream.scheme.clone());
    uri.authority = Some(pool_key);
    uri.path_and_query = Some(path_and_query);
    parts.uri = match Uri::from_parts(uri) {
        Ok(u) => u,
        Err(_) => return error_response(StatusCode::BAD_REQUEST, "invalid request target\n"),
    };
    // The origin connection's own protocol (h1 or h2 by ALPN) is chosen by the pool.
    parts.version = http::Version::HTTP_11;

    // A declared length was checked above; a streamed body is cut off where it passes.
    let too_large = max_body
        .filter(|_| declared.is_none())
        .map(|max| (max, Arc::new(AtomicBool::new(false))));
    let body = match &too_large {
        Some((max, flag)) => RequestBody::limited(body, *max, flag.clone()),
        None => RequestBody::new(body),
    };
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
    let (backend, mut resp, in_flight) = loop {
        let Some(i) = upstream.pick(key, &tried) else {
            warn!(
                site,
                origin = &*upstream.label,
                "no origin server available"
            );
            return unavailable(upstream.retry_after());
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
        backend.metrics.requests.inc();
        let timer = backend.metrics.duration.start_timer();
        let in_flight = InFlight::new(backend);
        let pending = client.request(req);
        let result = match tokio::time::timeout(upstream.response_header_timeout, pending).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(OriginError::from_client(&e)),
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
                if !upstream.retries.on_status.contains(&status) {
                    break (backend, resp, in_flight);
                }
                backend.record_failure();
                if !may_retry(false) {
                    break (backend, resp, in_flight);
                }
                debug!(
                    site,
                    origin = &*backend.label,
                    status,
                    "retrying on another server"
                );
            }
            Err(_)
                if too_large
                    .as_ref()
                    .is_some_and(|(_, f)| f.load(Ordering::Acquire)) =>
            {
                timer.stop_and_discard();
                return error_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
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
        backend.metrics.retries.inc();
        tried.push(i);
    };
    if let Some(log) = log {
        log.origin = Some(backend.label.clone());
    }

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    match (switching, client_upgrade) {
        (true, Some(client_side)) => {
            let origin_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(tunnel(client_side, origin_side, conn.clone()));
            headers::strip_hop_by_hop(resp.headers_mut(), true);
        }
        _ => headers::strip_hop_by_hop(resp.headers_mut(), false),
    }
    resp.map(|body| ProxyBody::origin(body, Some(in_flight)))
}

/// 503 when every server of the origin is down or ejected.
fn unavailable(retry_after: std::time::Duration) -> Response<ProxyBody> {
    let mut resp = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "503 Service Unavailable: no origin server is available\n",
    );
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(retry_after.as_secs().max(1)),
    );
    resp
}

/// Copies bytes both ways between an upgraded client connection and its origin.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    origin: hyper::upgrade::OnUpgrade,
    // Holds the drain token and the connection's place under the caps until it closes.
    _conn: Arc<ConnInfo>,
) {
    let (client, origin) = match tokio::join!(client, origin) {
        (Ok(c), Ok(o)) => (c, o),
        (c, o) => {
            debug!(client = ?c.err(), origin = ?o.err(), "upgrade failed");
            return;
        }
    };
    let (mut client, mut origin) = (TokioIo::new(client), TokioIo::new(origin));
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
