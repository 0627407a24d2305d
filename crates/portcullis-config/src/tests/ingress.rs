//! The keys Ingress rules and annotations map to: exact routes, rewrite, allow/deny,
//! plain HTTP, per-route body size, redirects, sticky cookies, `tls: none`, no servers.

use std::path::Path;
use std::time::Duration;

use super::problems;
use crate::*;

fn site(yaml: &str) -> Site {
    let c = parse(
        &format!("sites:\n  - hosts: [a.test]\n    tls: local\n{yaml}"),
        Path::new("."),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    c.sites.into_iter().next().unwrap()
}

#[test]
fn routes_take_match_rewrite_access_plain_http_and_body_size() {
    let s = site(
        "    plain_http: serve\n    routes:\n      - { path: /a, respond: {} }\n      - { path: /a, match: exact, rewrite: /b, allow: [10.0.0.0/8, '::1'], deny: [10.1.0.0/16], plain_http: redirect, max_body_size: 10MB, origin: 'http://127.0.0.1:1' }\n",
    );
    assert_eq!(s.plain_http, PlainHttp::Serve);
    let (prefix, exact) = (&s.routes[0], &s.routes[1]);
    assert_eq!(prefix.path_match, PathMatch::Prefix);
    assert_eq!(
        prefix.plain_http,
        PlainHttp::Serve,
        "inherited from the site"
    );
    assert!(prefix.access.is_open());
    assert_eq!(prefix.max_body_size, None);
    assert_eq!(exact.path_match, PathMatch::Exact);
    assert_eq!(exact.rewrite.as_deref(), Some("/b"));
    assert_eq!(exact.plain_http, PlainHttp::Redirect);
    assert_eq!(exact.max_body_size, Some(10_000_000));
    assert!(exact.access.allows("10.2.0.1".parse().unwrap()));
    assert!(!exact.access.allows("10.1.0.1".parse().unwrap()));
    assert!(!exact.access.allows("192.0.2.1".parse().unwrap()));
    assert!(exact.access.allows("::1".parse().unwrap()));
}

#[test]
fn redirects_sticky_cookies_tls_none_and_empty_origins() {
    let s = site(
        "    redirect: { to: 'https://b.test/x' }\n    routes:\n      - { path: /old, redirect: { to: /new, status: 308 } }\n",
    );
    assert_eq!(
        s.fallback,
        Some(Action::Redirect(Redirect {
            status: 302,
            location: "https://b.test/x".into()
        }))
    );
    assert!(matches!(
        &s.routes[0].action,
        Action::Redirect(Redirect { status: 308, location }) if location == "/new"
    ));

    let s = site(
        "    origin: { servers: [{ url: 'http://10.0.0.1:80' }, { url: 'http://10.0.0.2:80' }], balance: { sticky: { cookie: route, max_age: 1h, same_site: strict, secure: false } } }\n",
    );
    let Some(Action::Proxy(o)) = &s.fallback else {
        panic!("no origin")
    };
    assert_eq!(
        o.balance,
        Balance::Sticky(StickyCookie {
            name: "route".into(),
            max_age: Some(Duration::from_secs(3600)),
            path: "/".into(),
            secure: Some(false),
            same_site: Some("Strict".into()),
        })
    );

    let s = site("    origin: { servers: [] }\n");
    let Some(Action::Proxy(o)) = &s.fallback else {
        panic!("no origin")
    };
    assert!(o.servers.is_empty());
    assert_eq!(o.transport, Transport::Plain);

    let c = parse(
        "sites:\n  - hosts: [a.test]\n    tls: local\n    default: true\n    respond: {}\n  - hosts: [b.test]\n    tls: none\n    respond: {}\n",
        Path::new("."),
    )
    .unwrap();
    assert_eq!(c.sites[1].tls, SiteTls::None);
}

#[test]
fn mistakes_name_their_key() {
    let route = |r: &str| {
        format!(
            "sites:\n  - hosts: [a.test]\n    tls: local\n    routes:\n      - {{ path: /a, {r} }}\n"
        )
    };
    let cases: &[(String, &str)] = &[
        (
            route("respond: {}, match: regex"),
            "sites[0].routes[0].match: unknown variant `regex`",
        ),
        (
            route("origin: 'http://127.0.0.1:1', rewrite: /b, strip_prefix: true"),
            "sites[0].routes[0].rewrite: cannot be combined with `strip_prefix`",
        ),
        (
            route("origin: 'http://127.0.0.1:1', rewrite: 'b'"),
            "sites[0].routes[0].rewrite: must be a plain path starting with `/`",
        ),
        (
            route("respond: {}, allow: [10.0.0.0/33]"),
            "sites[0].routes[0].allow[0]: `10.0.0.0/33` is not an address",
        ),
        (
            route("respond: {}, deny: [nobody]"),
            "sites[0].routes[0].deny[0]: `nobody` is not an address",
        ),
        (
            route("respond: {}, plain_http: maybe"),
            "sites[0].routes[0].plain_http: unknown variant `maybe`",
        ),
        (
            route("respond: {}, max_body_size: 0"),
            "sites[0].routes[0].max_body_size: must be greater than zero",
        ),
        (
            route("respond: {}, redirect: { to: /b }"),
            "sites[0].routes[0]: only one of `origin`, `respond` and `redirect`",
        ),
        (
            route("redirect: { to: /b, status: 200 }"),
            "sites[0].routes[0].redirect.status: must be 301, 302, 303, 307 or 308",
        ),
        (
            route("redirect: { to: 'javascript:alert(1)' }"),
            "sites[0].routes[0].redirect.to: must be an absolute http(s):// URL or a path",
        ),
        (
            route("redirect: { to: '/a b' }"),
            "sites[0].routes[0].redirect.to: must be an absolute",
        ),
        (
            route("redirect: { to: '//evil.test' }"),
            "sites[0].routes[0].redirect.to: must be an absolute",
        ),
        (
            route("redirect: { to: '/\\evil.test' }"),
            "sites[0].routes[0].redirect.to: must be an absolute",
        ),
        (
            route("origin: { servers: [], balance: { sticky: { cookie: 'a b' } } }"),
            "sites[0].routes[0].origin.balance.sticky.cookie: `a b` is not a valid cookie name",
        ),
        (
            route("origin: { servers: [], balance: { sticky: { cookie: a, path: 'x' } } }"),
            "sites[0].routes[0].origin.balance.sticky.path: must be a path",
        ),
        (
            route("origin: { servers: [], balance: { sticky: { cookie: a, same_site: none, secure: false } } }"),
            "sites[0].routes[0].origin.balance.sticky.same_site: `none` needs a Secure cookie",
        ),
        (
            route("origin: { servers: [], balance: { sticky: { cookie: a, same_site: loose } } }"),
            "sites[0].routes[0].origin.balance.sticky.same_site: unknown variant `loose`",
        ),
        (
            route("origin: { servers: [], balance: { sticky: { cookie: a }, hash: {} } }"),
            "sites[0].routes[0].origin.balance.hash: unknown field `hash`",
        ),
        (
            route("origin: { servers: [], balance: fastest }"),
            "sites[0].routes[0].origin.balance: unknown variant `fastest`",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    tls: none\n    default: true\n    respond: {}\n"
                .to_owned(),
            "sites[0].default: the default site serves its certificate",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    tls: local\n    plain_http: sometimes\n    respond: {}\n"
                .to_owned(),
            "sites[0].plain_http: unknown variant `sometimes`",
        ),
    ];
    for (yaml, want) in cases {
        let got = problems(yaml);
        assert!(
            got.iter().any(|p| p.contains(want)),
            "wanted {want:?} in {got:?} for\n{yaml}"
        );
    }
}

#[test]
fn an_exact_route_and_a_prefix_may_share_a_path_but_not_two_of_one_kind() {
    let s = site(
        "    routes:\n      - { path: /a, respond: {} }\n      - { path: /a, match: exact, respond: {} }\n",
    );
    assert_eq!(s.routes.len(), 2);
    let got = problems(
        "sites:\n  - hosts: [a.test]\n    tls: local\n    routes:\n      - { path: /a, match: exact, respond: {} }\n      - { path: /a, match: exact, respond: {} }\n",
    );
    assert!(
        got.iter()
            .any(|p| p.contains("sites[0].routes[1].path: `/a` is already routed")),
        "{got:?}"
    );
}
