//! The plain-HTTP listener: ACME HTTP-01 answers first; then a request for a host some site
//! claims whose route (or fallback) says `plain_http: serve` is served as on HTTPS
//! ([`super::handle`]); other requests for claimed hosts get a permanent redirect to HTTPS,
//! and everything else 404 (so it is never an open redirect).

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;
use portcullis_config::PlainHttp;

use super::{host_of, request_authority};
use crate::answers::error_response;
use crate::conn::ConnInfo;
use crate::response::{Exchange, ProxyBody};
use crate::shared::Shared;

pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    if !is_acme_answer(&shared, &req) && served(&shared, &req) {
        return super::handle(shared, conn, req).await;
    }
    let mut exchange = Exchange::begin(conn, None, !req.body().is_end_stream());
    let mut resp = redirect(&shared, &req);
    exchange.status = resp.status().as_u16();
    exchange.responded = true;
    resp.body_mut().attach(exchange);
    Ok(resp)
}

/// Where HTTP-01 validation requests arrive (RFC 8555 §8.3).
const ACME_CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

fn is_acme_answer(shared: &Shared, req: &Request<Incoming>) -> bool {
    req.uri()
        .path()
        .strip_prefix(ACME_CHALLENGE_PATH)
        .is_some_and(|token| shared.challenges.http01(token).is_some())
}

/// Whether the request's host belongs to a site whose route for it (or fallback, when no
/// route matches) serves plain HTTP.
fn served(shared: &Shared, req: &Request<Incoming>) -> bool {
    let Some(authority) = request_authority(req) else {
        return false;
    };
    let host = host_of(&authority);
    let router = shared.router.load();
    if !router.claims(host) {
        return false;
    }
    let Some(site) = router.site_for(host).map(|i| &router.sites[i]) else {
        return false;
    };
    let plain = site
        .route(req.uri().path())
        .map_or(site.plain_http, |m| m.plain_http);
    plain == PlainHttp::Serve
}

fn redirect(shared: &Shared, req: &Request<Incoming>) -> Response<ProxyBody> {
    if let Some(token) = req.uri().path().strip_prefix(ACME_CHALLENGE_PATH)
        && let Some(answer) = shared.challenges.http01(token)
    {
        let mut resp = Response::new(ProxyBody::bytes(answer));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        return resp;
    }
    let Some(authority) = request_authority(req) else {
        return error_response(StatusCode::BAD_REQUEST, "missing or invalid Host header\n");
    };
    let host = host_of(&authority);
    if !shared.router.load().claims(host) {
        return error_response(StatusCode::NOT_FOUND, "not found\n");
    }
    let port = shared.https_port();
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    let Ok(location) = HeaderValue::from_str(&location) else {
        return error_response(StatusCode::BAD_REQUEST, "invalid request target\n");
    };
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(header::LOCATION, location);
    resp
}
