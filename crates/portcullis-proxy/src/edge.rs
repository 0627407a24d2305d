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
use crate::error::OriginError;
use crate::headers::{self, ClientAddr};
use crate::router::{Fixed, Handler, Router};
use crate::server::Shared;
use crate::upstream::Upstream;

/// What the edge knows about one client connection.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    pub(crate) peer: std::net::SocketAddr,
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
    let mut resp = dispatch(&router, &conn, req, &mut exchange).await;
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
            if let Some(log) = exchange.log.as_deref_mut() {
                log.origin = Some(upstream.label.clone());
            }
            let target = Target {
                authority,
                strip: matched.strip,
                max_body: site.max_body,
                site: &site.name,
            };
            forward(upstream, conn, req, target).await
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

    let client = if upgrade {
        &upstream.upgrade_client
    } else {
        &upstream.client
    };
    // A declared length was checked above; a streamed body is cut off where it passes.
    let too_large = max_body
        .filter(|_| declared.is_none())
        .map(|max| (max, Arc::new(AtomicBool::new(false))));
    let body = match &too_large {
        Some((max, flag)) => RequestBody::limited(body, *max, flag.clone()),
        None => RequestBody::new(body),
    };
    upstream.metrics.requests.inc();
    let timer = upstream.metrics.duration.start_timer();
    let pending = client.request(Request::from_parts(parts, body));
    let result = match tokio::time::timeout(upstream.response_header_timeout, pending).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(OriginError::from_client(&e)),
        Err(_) => Err(OriginError::response_timeout(
            upstream.response_header_timeout,
        )),
    };
    let mut resp = match result {
        Ok(resp) => {
            timer.observe_duration();
            resp
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
            upstream.metrics.error(e.kind().label());
            let status = e.status(upstream.verify_failure_status);
            warn!(
                site,
                origin = &*upstream.label,
                failure = e.kind().label(),
                status = status.as_u16(),
                error = %e,
                "origin request failed"
            );
            return error_response(status, status_text(status));
        }
    };

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    match (switching, client_upgrade) {
        (true, Some(client_side)) => {
            let origin_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(tunnel(client_side, origin_side, conn.clone()));
            headers::strip_hop_by_hop(resp.headers_mut(), true);
        }
        _ => headers::strip_hop_by_hop(resp.headers_mut(), false),
    }
    resp.map(ProxyBody::origin)
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
