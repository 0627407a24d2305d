//! The CA side of the proxy: forwarding with the CA's URLs rewritten to the proxy's, and
//! the answers the proxy makes up itself.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, LINK, LOCATION};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::{Answer, Failure, State};

/// `https://host:port/path` → (`https://host:port`, `/path`).
pub(super) fn split_url(url: &str) -> (String, String) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => (
            url[..after_scheme + i].to_owned(),
            url[after_scheme + i..].to_owned(),
        ),
        None => (url.to_owned(), "/".to_owned()),
    }
}

pub(super) fn upstream_client(
    ca: &Path,
) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = ClientConfig::builder()
        .with_root_certificates(Arc::new(roots))
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Forwards to the CA; the answer with the CA's URLs rewritten to ours.
pub(super) async fn forward(
    state: &State,
    parts: &http::request::Parts,
    path: &str,
    body: Bytes,
) -> Answer {
    let mut req = Request::builder()
        .method(parts.method.clone())
        .uri(format!("{}{path}", state.upstream));
    for (name, value) in &parts.headers {
        if name != "connection" && name != "transfer-encoding" {
            req = req.header(name, value);
        }
    }
    if !parts.headers.contains_key(HOST) {
        req = req.header(HOST, state.own.trim_start_matches("https://"));
    }
    let req = req.body(Full::new(body)).unwrap();
    let resp = match tokio::time::timeout(Duration::from_secs(20), state.client.request(req)).await
    {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => return bad_gateway(&e.to_string()),
        Err(_) => return bad_gateway("the ACME server did not answer within 20 s"),
    };
    let (mut parts, body) = resp.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return bad_gateway("the ACME server's answer broke off");
    };
    for name in [LOCATION, LINK] {
        let values: Vec<HeaderValue> = parts
            .headers
            .get_all(&name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| HeaderValue::from_str(&rewrite(v, &state.upstream, &state.own)).unwrap())
            .collect();
        parts.headers.remove(&name);
        for v in values {
            parts.headers.append(&name, v);
        }
    }
    parts.headers.remove("connection");
    parts.headers.remove("transfer-encoding");
    let is_json = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("json"));
    let body = if is_json {
        Bytes::from(rewrite(
            &String::from_utf8_lossy(&body),
            &state.upstream,
            &state.own,
        ))
    } else {
        body
    };
    Response::from_parts(parts, body)
}

/// `text` with every `upstream` URL base replaced by `own`.
pub(super) fn rewrite(text: &str, upstream: &str, own: &str) -> String {
    text.replace(upstream, own)
}

pub(super) fn problem(failure: Failure) -> Answer {
    let (status, kind, detail) = match failure {
        Failure::RateLimited => (
            StatusCode::TOO_MANY_REQUESTS,
            "rateLimited",
            "too many new orders recently (the test's ACME proxy)",
        ),
        Failure::ServerInternal => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "serverInternal",
            "the CA failed (the test's ACME proxy)",
        ),
    };
    let body = serde_json::json!({
        "type": format!("urn:ietf:params:acme:error:{kind}"),
        "detail": detail,
        "status": status.as_u16(),
    });
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/problem+json")
        .body(Bytes::from(body.to_string()))
        .unwrap()
}

fn bad_gateway(why: &str) -> Answer {
    Response::builder()
        .status(StatusCode::BAD_GATEWAY)
        .header(CONTENT_TYPE, "text/plain")
        .body(Bytes::from(why.to_owned()))
        .unwrap()
}
