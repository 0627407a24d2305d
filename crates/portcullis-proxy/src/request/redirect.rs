//! The plain-HTTP listener: ACME HTTP-01 answers first, then a permanent redirect to HTTPS
//! for hosts some site claims, 404 for everything else (so it is never an open redirect).

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;

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
    let mut exchange = Exchange::begin(conn, None, !req.body().is_end_stream());
    let mut resp = redirect(&shared, &req);
    exchange.status = resp.status().as_u16();
    exchange.responded = true;
    resp.body_mut().attach(exchange);
    Ok(resp)
}

/// Where HTTP-01 validation requests arrive (RFC 8555 §8.3).
const ACME_CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

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
