//! A client's request head through the gateway's own handling: parsed as hyper's HTTP/1.1
//! server parses it, then what `request::dispatch` and `forward` do with its head before the
//! body matters (authority, host, site, route, the header rewrite for the origin).
//!
//! The properties of a rewritten request are one table, in `request_head/prepared.rs`: a
//! new one is a function and a line there.

use std::sync::LazyLock;

use http::header::{self, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Uri, Version};

use crate::request::{host_of, request_authority};
use portcullis_config::Upgrades;

use crate::headers::{ClientAddr, prepare_request, upgrade_allowed, wants_upgrade};
use crate::metrics::ProxyMetrics;
use crate::router::Router;

mod prepared;

use prepared::{PREPARED, Prepared};

/// hyper's default limit on header fields in a request head.
const MAX_HEADERS: usize = 100;

/// Runs the checks on one fuzz input (see [`super::request_head`]). `false` when hyper
/// would have refused the head, so the gateway never saw it.
pub(super) fn check(data: &[u8]) -> bool {
    let Some(req) = parse(data) else {
        return false;
    };
    check_request(&req);
    if let Some(h2) = as_h2(&req) {
        check_request(&h2);
    }
    true
}

/// Reads `data` as hyper 1's server reads a request head (`proto::h1::role::Server::parse`):
/// `None` where hyper answers 400 instead.
fn parse(data: &[u8]) -> Option<Request<()>> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut fields);
    let httparse::Status::Complete(_) = httparse::ParserConfig::default()
        .parse_request(&mut head, data)
        .ok()?
    else {
        return None;
    };
    let target = head.path?;
    if target.len() >= usize::from(u16::MAX) {
        return None;
    }
    let mut req = Request::new(());
    *req.method_mut() = Method::from_bytes(head.method?.as_bytes()).ok()?;
    *req.uri_mut() = Uri::try_from(target).ok()?;
    let http11 = head.version? == 1;
    *req.version_mut() = if http11 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    // hyper's framing rules: a coding must end in chunked (and needs HTTP/1.1) and drops any
    // length; lengths must be digits and agree, and only the first is kept.
    let (mut length, mut coded, mut chunked) = (None, false, false);
    let headers = req.headers_mut();
    for field in head.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(field.value).ok()?;
        if name == header::TRANSFER_ENCODING {
            if !http11 {
                return None;
            }
            coded = true;
            if length.take().is_some() {
                headers.remove(header::CONTENT_LENGTH);
            }
            chunked = value
                .to_str()
                .ok()
                .and_then(|v| v.rsplit(',').next())
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if name == header::CONTENT_LENGTH {
            if coded {
                continue;
            }
            let n = digits(value.as_bytes())?;
            match length {
                Some(before) if before != n => return None,
                Some(_) => continue,
                None => length = Some(n),
            }
        }
        headers.append(name, value);
    }
    (!coded || chunked).then_some(req)
}

fn digits(text: &[u8]) -> Option<u64> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// The same request as it would reach the gateway over HTTP/2, where the `h2` crate has
/// refused connection-specific fields and the authority travels in the URI.
fn as_h2(req: &Request<()>) -> Option<Request<()>> {
    let connection_specific = [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ];
    let headers = req.headers();
    if connection_specific.iter().any(|n| headers.contains_key(n))
        || headers
            .get_all(header::TE)
            .iter()
            .any(|v| v.as_bytes() != b"trailers")
    {
        return None;
    }
    let mut parts = req.uri().clone().into_parts();
    if parts.authority.is_none() {
        parts.authority = Some(Authority::try_from(headers.get(header::HOST)?.as_bytes()).ok()?);
        parts.scheme = Some(http::uri::Scheme::HTTPS);
        parts
            .path_and_query
            .get_or_insert(http::uri::PathAndQuery::from_static("/"));
    }
    let mut h2 = Request::new(());
    *h2.method_mut() = req.method().clone();
    *h2.uri_mut() = Uri::from_parts(parts).ok()?;
    *h2.version_mut() = Version::HTTP_2;
    *h2.headers_mut() = headers.clone();
    Some(h2)
}

/// The sites the router is built with, and which one answers for unclaimed hosts.
const SITES: &str = "
sites:
  - {name: a, hosts: [example.com, '*.example.com', 127.0.0.1, '[::1]'], tls: local, respond: {body: a}}
  - {name: b, hosts: [api.example.com, '*.b.test', xn--bcher-kva.example], tls: local, respond: {body: b}}
  - {name: c, hosts: [c.test], default: true, tls: local, respond: {body: c}}
";

static SITE_CONFIG: LazyLock<portcullis_config::Config> = LazyLock::new(|| {
    portcullis_config::parse(SITES, std::path::Path::new(".")).expect("the fuzz sites parse")
});

static ROUTER: LazyLock<Router> = LazyLock::new(|| {
    Router::build(&SITE_CONFIG, &ProxyMetrics::unregistered(), None)
        .unwrap_or_else(|problems| panic!("the fuzz sites build: {problems:?}"))
});

/// One untrusted and one trusted client over each address family.
static CLIENTS: LazyLock<[ClientAddr; 4]> = LazyLock::new(|| {
    let v4 = "203.0.113.7".parse().expect("an IPv4 address");
    let v6 = "2001:db8::7".parse().expect("an IPv6 address");
    [
        ClientAddr::new(v4, false),
        ClientAddr::new(v6, false),
        ClientAddr::new(v4, true),
        ClientAddr::new(v6, true),
    ]
});

/// What `request::dispatch` does with a request up to `forward`, then `forward`'s header
/// rewrite for every client in [`CLIENTS`].
fn check_request(req: &Request<()>) {
    if req.method() == Method::CONNECT {
        // Answered 405 before anything else looks at it.
        return;
    }
    if crate::request::refuse_target(req).is_some() {
        return;
    }
    // What is left is in the origin or absolute form.
    assert!(
        req.uri().path().starts_with('/'),
        "a target past the check: {}",
        req.uri()
    );
    let Some(authority) = request_authority(req) else {
        return;
    };
    assert!(
        !authority.as_str().contains('@'),
        "an authority with userinfo: {authority}"
    );
    let host = host_of(&authority);
    assert_eq!(host, authority.host(), "host_of({authority})");
    assert!(!host.is_empty(), "an authority without a host: {authority}");
    let from = match req.uri().authority() {
        Some(a) => a.as_str().as_bytes(),
        None => req
            .headers()
            .get(header::HOST)
            .map_or(&[][..], |h| h.as_bytes()),
    };
    assert_eq!(
        from,
        authority.as_str().as_bytes(),
        "where the authority came from"
    );

    let site = ROUTER.site_for(host);
    if host.len() <= 253 {
        assert_eq!(site, expected_site(host), "the site for {host:?}");
    }
    let websocket = Upgrades::default();
    let upgrades = site
        .and_then(|site| ROUTER.sites[site].route(req.uri().path()))
        .map_or(&websocket, |matched| matched.upgrades);

    // As `forward` decides it.
    let upgrade =
        wants_upgrade(req.headers(), req.version()) && upgrade_allowed(req.headers(), upgrades);
    for client in CLIENTS.iter() {
        let mut headers = req.headers().clone();
        prepare_request(
            &mut headers,
            client,
            authority.as_str(),
            req.version(),
            upgrade,
        );
        let prepared = Prepared {
            sent: req,
            authority: &authority,
            client,
            upgrade,
            upgrades,
            headers: &headers,
        };
        for (property, holds) in PREPARED {
            if let Err(why) = holds(&prepared) {
                panic!(
                    "{property}: {why}\nsent: {:?} {} {:?}\n{:#?}\nprepared ({}trusted {:?}):\n{headers:#?}",
                    req.version(),
                    req.uri(),
                    req.method(),
                    req.headers(),
                    if client.trusted { "" } else { "un" },
                    client.ip,
                );
            }
        }
    }
}

/// The site the config gives `host`, by [`portcullis_config::HostPattern::matches`]: an
/// exact name, else a wildcard, else the default site.
fn expected_site(host: &str) -> Option<usize> {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let sites = &SITE_CONFIG.sites;
    let claimed = |wildcard: bool| {
        sites.iter().position(|s| {
            s.hosts.iter().any(|p| {
                matches!(p, portcullis_config::HostPattern::Wildcard(_)) == wildcard
                    && p.matches(&host)
            })
        })
    };
    claimed(false)
        .or_else(|| claimed(true))
        .or_else(|| sites.iter().position(|s| s.default))
}
