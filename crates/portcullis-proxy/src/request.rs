//! The second floor: one request on the HTTPS listener ([`handle`]). Host → site (checked
//! against the SNI), path → route, then a fixed response or the origin ([`forward`]); a
//! gateway-made error goes to a gRPC client in gRPC's terms ([`grpc`]). The plain HTTP
//! listener's requests go to [`redirect`], which hands those a route serves over plain
//! HTTP back to [`handle`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;
use tracing::debug;

use crate::answers::{error_response, fixed_response, options_asterisk};
use crate::conn::ConnInfo;
use crate::response::{AccessLog, Exchange, ProxyBody};
use crate::rewrite;
use crate::router::{Handler, Router};
use crate::shared::Shared;

mod forward;
mod grpc;
pub(crate) mod redirect;

use forward::{Target, forward};

/// Handles one request from a TLS client (or a plain HTTP one whose route serves plain HTTP:
/// then no SNI check and no HSTS).
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
    let body = !req.body().is_end_stream();
    let mut exchange = Exchange::begin(conn.clone(), log, body);
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
    if let Some(refusal) = refuse_target(&req) {
        return refusal;
    }
    let Some(authority) = request_authority(&req) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "missing, repeated or invalid Host header\n",
        );
    };
    let host = host_of(&authority);
    let Some(site_idx) = router.site_for(host) else {
        return error_response(StatusCode::MISDIRECTED_REQUEST, "no site for this host\n");
    };
    // A connection belongs to the site its handshake chose; a request for another site's
    // host (connection reuse, a forged Host) must go to a connection of its own. (A plain
    // HTTP connection chose none.)
    let same_site = !conn.tls
        || match conn.sni.as_deref() {
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
    // HSTS is for HTTPS responses only (RFC 6797 §7.2); so is upgrading subresources
    // (a page served over plain HTTP is not mixed content).
    let hsts = site.hsts.as_ref().filter(|_| conn.tls);
    let upgrade_insecure = site.upgrade_insecure && conn.tls;
    let rewrite = site.rewrite.as_ref().filter(|_| conn.tls);
    let asked = rewrite::Asked::of(&req);
    exchange.route = Some(site.unmatched.clone());
    if let Some(log) = exchange.log.as_deref_mut() {
        log.site = Some(site.name.clone());
        log.host = Some(authority.clone());
    }
    let Some(matched) = site.route(req.uri().path()) else {
        let mut resp = error_response(StatusCode::NOT_FOUND, "not found\n");
        add_hsts(&mut resp, hsts);
        return resp;
    };
    exchange.route = Some(matched.metrics.clone());
    let mut resp = match matched.handler {
        // The client's address as the gateway knows it (the PROXY header's, else the
        // peer's), never a forwarding header a client can write.
        _ if matched.access.is_some_and(|a| !a.allows(conn.peer.ip())) => {
            debug!(peer = %conn.peer.ip(), site = &*site.name, "refused by the route's allow/deny rules");
            error_response(
                StatusCode::FORBIDDEN,
                "403 Forbidden: not allowed from this address\n",
            )
        }
        Handler::Respond(fixed) => fixed_response(fixed),
        Handler::Proxy(upstream) => {
            let target = Target {
                authority,
                rewrite: matched.rewrite,
                max_body: matched.max_body,
                site: &site.name,
                upgrades: matched.upgrades,
            };
            forward(upstream, conn, req, target, exchange.log.as_deref_mut()).await
        }
    };
    add_hsts(&mut resp, hsts);
    if upgrade_insecure {
        upgrade_insecure_requests(resp.headers_mut());
    }
    if let Some(rewriting) = rewrite
        && let Some(coding) = rewrite::applies(asked, resp.status(), resp.headers())
    {
        match rewriting.chain(coding) {
            Ok(chain) => {
                rewrite::adjust_headers(resp.headers_mut());
                resp.body_mut().rewrite(chain);
            }
            // Only a zstd context that cannot be allocated: the page goes as it is.
            Err(e) => debug!(site = &*site.name, failure = %e, "cannot rewrite the page"),
        }
    } else if rewrite.is_some() && rewrite::headers_only(asked, resp.status(), resp.headers()) {
        rewrite::adjust_headers(resp.headers_mut());
    }
    resp
}

/// `mixed_content: upgrade`: an HTML response's policy gains `upgrade-insecure-requests`.
/// It goes into the first `Content-Security-Policy` the origin sent (its other directives
/// kept; several policies all apply, and the directive in any one of them upgrades the
/// page's requests), or into a policy of its own when there is none. Report-only policies
/// do not upgrade anything and are left alone, as are non-HTML responses.
fn upgrade_insecure_requests(headers: &mut http::HeaderMap) {
    const DIRECTIVE: &str = "upgrade-insecure-requests";
    let html = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            let t = t.trim();
            t.eq_ignore_ascii_case("text/html") || t.eq_ignore_ascii_case("application/xhtml+xml")
        });
    if !html {
        return;
    }
    let has = |v: &HeaderValue| {
        v.to_str().is_ok_and(|p| {
            p.split([';', ',']).any(|d| {
                d.split_whitespace()
                    .next()
                    .is_some_and(|n| n.eq_ignore_ascii_case(DIRECTIVE))
            })
        })
    };
    let policies = headers.get_all(header::CONTENT_SECURITY_POLICY);
    if policies.iter().any(has) {
        return;
    }
    let merged = policies
        .iter()
        .next()
        .and_then(|first| first.to_str().ok())
        .map(|first| {
            let first = first.trim().trim_end_matches(';').trim_end();
            if first.is_empty() {
                DIRECTIVE.to_owned()
            } else {
                format!("{first}; {DIRECTIVE}")
            }
        });
    match merged {
        None => {
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(DIRECTIVE),
            );
        }
        Some(merged) => {
            // The other policies stay as they were, after the merged first one.
            let rest: Vec<HeaderValue> = headers
                .get_all(header::CONTENT_SECURITY_POLICY)
                .iter()
                .skip(1)
                .cloned()
                .collect();
            let Ok(merged) = HeaderValue::from_str(&merged) else {
                return;
            };
            headers.insert(header::CONTENT_SECURITY_POLICY, merged);
            for v in rest {
                headers.append(header::CONTENT_SECURITY_POLICY, v);
            }
        }
    }
}

/// The gateway's own answer to a request target that must not be forwarded: anything but
/// the origin form (`/path`) and the absolute form, and `OPTIONS *`. `None`: the target's
/// path starts with `/`.
pub(crate) fn refuse_target<B>(req: &Request<B>) -> Option<Response<ProxyBody>> {
    match req.uri().path_and_query().map(|pq| pq.as_str()) {
        // The asterisk form asks about the server itself, and only with OPTIONS (RFC 9112
        // §3.2.4, RFC 9113 §8.3.1): the gateway answers it, as Go's server (Caddy) does;
        // forwarded, `GET *` would reach an origin that may read it as a path.
        Some("*") if req.method() == http::Method::OPTIONS => Some(options_asterisk()),
        Some("*") => Some(error_response(
            StatusCode::BAD_REQUEST,
            "the asterisk form (`*`) is for OPTIONS only\n",
        )),
        Some(pq) if pq.starts_with('/') => None,
        // The authority form (`example.com:443`) is CONNECT's alone (RFC 9112 §3.2.3).
        _ => Some(error_response(
            StatusCode::BAD_REQUEST,
            "invalid request target\n",
        )),
    }
}

/// `:authority` (HTTP/2, or an absolute-form HTTP/1.1 target), else the `Host` header.
/// `None` for more than one `Host` line (RFC 9112 §3.2: a 400), which an origin or another
/// proxy may read differently from the gateway.
pub(crate) fn request_authority<B>(req: &Request<B>) -> Option<Authority> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return None;
    }
    let authority = match req.uri().authority() {
        Some(a) => a.clone(),
        None => Authority::try_from(host?.as_bytes()).ok()?,
    };
    // Userinfo has no place in a Host; refusing it keeps it out of logs and origins.
    (!authority.as_str().as_bytes().contains(&b'@') && !host_of(&authority).is_empty())
        .then_some(authority)
}

/// `authority.host()` for an authority without userinfo (as [`request_authority`] returns
/// them), in one pass over its bytes: `Authority::host` looks for `@` first and splits with
/// `str` patterns, about 400 instructions a call under callgrind.
pub(crate) fn host_of(authority: &Authority) -> &str {
    let s = authority.as_str();
    let end = if s.starts_with('[') {
        s.bytes().position(|b| b == b']').map_or(s.len(), |i| i + 1)
    } else {
        s.bytes().position(|b| b == b':').unwrap_or(s.len())
    };
    &s[..end]
}

fn add_hsts(resp: &mut Response<ProxyBody>, hsts: Option<&HeaderValue>) {
    if let Some(v) = hsts {
        resp.headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, v.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgraded(content_type: &str, policies: &[&str]) -> Vec<String> {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap(),
        );
        for p in policies {
            h.append(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_str(p).unwrap(),
            );
        }
        upgrade_insecure_requests(&mut h);
        h.get_all(header::CONTENT_SECURITY_POLICY)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn upgrade_insecure_requests_merges_into_the_origins_policy() {
        assert_eq!(
            upgraded("text/html; charset=utf-8", &[]),
            ["upgrade-insecure-requests"]
        );
        assert_eq!(
            upgraded("text/html", &["default-src 'self'; img-src *;"]),
            ["default-src 'self'; img-src *; upgrade-insecure-requests"]
        );
        assert_eq!(
            upgraded(
                "TEXT/HTML",
                &["script-src 'self'", "frame-ancestors 'none'"]
            ),
            [
                "script-src 'self'; upgrade-insecure-requests",
                "frame-ancestors 'none'"
            ],
            "the first policy gains it, the second stays"
        );
        assert_eq!(
            upgraded(
                "text/html",
                &["default-src https:; Upgrade-Insecure-Requests"]
            ),
            ["default-src https:; Upgrade-Insecure-Requests"],
            "already there: untouched"
        );
        assert_eq!(
            upgraded("application/xhtml+xml", &[]),
            ["upgrade-insecure-requests"]
        );
        assert!(upgraded("application/json", &[]).is_empty(), "not HTML");
        assert_eq!(
            upgraded("image/svg+xml", &["default-src 'none'"]),
            ["default-src 'none'"]
        );
    }

    #[test]
    fn host_of_agrees_with_the_authority_parser() {
        for text in [
            "example.com",
            "Example.COM:8443",
            "127.0.0.1",
            "127.0.0.1:443",
            "[::1]",
            "[2001:db8::1]:8443",
            "a",
            "x.y.z.:80",
        ] {
            let authority: Authority = text.parse().unwrap();
            assert_eq!(host_of(&authority), authority.host(), "{text}");
        }
    }

    #[test]
    fn request_targets_the_uri_parser_gives_dispatch() {
        // What `dispatch` tells apart: the path and query, if any, of each form.
        let pq = |t: &str| {
            let uri: http::Uri = t.parse().unwrap();
            (
                uri.path_and_query().map(|p| p.as_str().to_owned()),
                uri.scheme().is_some(),
            )
        };
        assert_eq!(pq("*"), (Some("*".into()), false));
        assert_eq!(pq("/a?b"), (Some("/a?b".into()), false));
        assert_eq!(pq("example.com:443"), (None, false));
        // The absolute form with no path at all means `/` (the parser says so).
        assert_eq!(pq("http://example.com"), (Some("/".into()), true));
        assert_eq!(pq("http://example.com/x"), (Some("/x".into()), true));
    }

    #[test]
    fn a_host_with_userinfo_or_no_name_is_refused() {
        let with_host = |h: &str| Request::get("/").header(header::HOST, h).body(()).unwrap();
        assert!(request_authority(&with_host("user@example.com")).is_none());
        assert!(request_authority(&with_host(":443")).is_none());
        let two = Request::get("/")
            .header(header::HOST, "example.com")
            .header(header::HOST, "example.com")
            .body(())
            .unwrap();
        assert!(request_authority(&two).is_none(), "two Host lines");
        assert_eq!(
            request_authority(&with_host("example.com:443")).map(|a| a.to_string()),
            Some("example.com:443".to_owned())
        );
    }
}
