use std::time::Duration;

use portcullis_config::{
    Action, Balance, HashKey, Hsts, PlainHttp, Redirect, Route, Site, SiteTls, StickyCookie,
    Transport, Upgrades, Verify,
};

use super::build::*;
use crate::Translated;

/// Ingress default/shop with these annotations: shop.example.com `/` → web:80, TLS from
/// Secret shop-tls; Secrets origin-ca (ca.crt) and client (tls) exist.
fn annotated(annotations: &[(&str, &str)]) -> Translated {
    let mut b = ingress("default", "shop")
        .rule(Some("shop.example.com"), vec![prefix("/", "web")])
        .tls(&["shop.example.com"], Some("shop-tls"));
    for (k, v) in annotations {
        b = b.annotation(k, v);
    }
    let mut s = world(vec![b.build()]);
    let (ca, _) = cert_pem(&["ca.example.com"]);
    let mut client = tls_secret("default", "client", &["client.example.com"]);
    client.data.as_mut().unwrap().insert(
        "ca.crt".into(),
        k8s_openapi::ByteString(ca.clone().into_bytes()),
    );
    s.secrets = vec![
        tls_secret("default", "shop-tls", &["shop.example.com"]).into(),
        secret_with(
            "default",
            "origin-ca",
            "Opaque",
            &[("ca.crt", ca.as_bytes())],
        )
        .into(),
        client.into(),
    ];
    run(&s)
}

fn shop(t: &Translated) -> &Site {
    site(t, "shop.example.com")
}

fn root(t: &Translated) -> &Route {
    route(shop(t), "/")
}

fn ok(annotations: &[(&str, &str)]) -> Translated {
    let t = annotated(annotations);
    assert!(t.problems.is_empty(), "{annotations:?}: {:?}", problems(&t));
    assert!(t.unsupported_annotations.is_empty());
    t
}

/// The annotation is refused with a problem naming it, and the Ingress is still served.
fn refused(name: &str, value: &str) -> Translated {
    let t = annotated(&[(name, value)]);
    let key = format!("ingress default/shop: metadata.annotations[\"{name}\"]: ");
    assert!(
        problems(&t).iter().any(|p| p.starts_with(&key)),
        "{name}: {value}: {:?}",
        problems(&t)
    );
    assert_eq!(servers(root(&t)).len(), 2, "the Ingress is still served");
    t
}

#[test]
fn nothing_annotated_gives_the_defaults() {
    let t = ok(&[]);
    let r = root(&t);
    assert_eq!(r.plain_http, PlainHttp::Redirect);
    assert_eq!(r.upgrades, Upgrades::default());
    assert!(r.access.is_open());
    assert_eq!(r.max_body_size, None);
    assert_eq!(r.rewrite, None);
    let o = origin(&r.action);
    assert_eq!(o.transport, Transport::Plain);
    assert_eq!(o.balance, Balance::RoundRobin);
    assert_eq!(shop(&t).hsts, None);
}

#[test]
fn ssl_redirect_and_force() {
    for name in [
        "portcullis.dev/ssl-redirect",
        "nginx.ingress.kubernetes.io/ssl-redirect",
    ] {
        let t = ok(&[(name, "false")]);
        assert_eq!(root(&t).plain_http, PlainHttp::Serve);
        refused(name, "yes");
    }
    // Ours wins over ingress-nginx's.
    let t = ok(&[
        ("portcullis.dev/ssl-redirect", "true"),
        ("nginx.ingress.kubernetes.io/ssl-redirect", "false"),
    ]);
    assert_eq!(root(&t).plain_http, PlainHttp::Redirect);
    // force-ssl-redirect redirects even without TLS.
    for name in [
        "portcullis.dev/force-ssl-redirect",
        "nginx.ingress.kubernetes.io/force-ssl-redirect",
    ] {
        let s = world(vec![
            ingress("default", "plain")
                .annotation(name, "true")
                .rule(Some("plain.example.com"), vec![prefix("/", "web")])
                .build(),
        ]);
        let t = run(&s);
        assert_eq!(
            route(site(&t, "plain.example.com"), "/").plain_http,
            PlainHttp::Redirect
        );
        refused(name, "1");
    }
}

#[test]
fn hsts() {
    let t = ok(&[("portcullis.dev/hsts", "true")]);
    assert_eq!(
        shop(&t).hsts,
        Some(Hsts {
            max_age: Duration::from_secs(31_536_000),
            include_subdomains: false,
            preload: false
        })
    );
    let t = ok(&[
        ("portcullis.dev/hsts", "true"),
        ("portcullis.dev/hsts-max-age", "63072000"),
        ("portcullis.dev/hsts-include-subdomains", "true"),
        ("portcullis.dev/hsts-preload", "true"),
    ]);
    assert_eq!(
        shop(&t).hsts,
        Some(Hsts {
            max_age: Duration::from_secs(63_072_000),
            include_subdomains: true,
            preload: true
        })
    );
    assert_eq!(
        ok(&[("portcullis.dev/hsts", "false")]).config.sites[1].hsts,
        None
    );
    refused("portcullis.dev/hsts", "on");
    refused("portcullis.dev/hsts-max-age", "a year");
    refused("portcullis.dev/hsts-include-subdomains", "sure");
    let t = refused("portcullis.dev/hsts-preload", "true");
    assert_eq!(shop(&t).hsts.as_ref().map(|h| h.preload), Some(false));
}

#[test]
fn hsts_conflicts_between_ingresses_keep_the_first() {
    let s = world(vec![
        ingress("default", "first")
            .annotation("portcullis.dev/hsts", "true")
            .rule(Some("shop.example.com"), vec![prefix("/", "web")])
            .build(),
        ingress("default", "second")
            .created(1)
            .annotation("portcullis.dev/hsts", "false")
            .rule(Some("shop.example.com"), vec![prefix("/b", "web")])
            .build(),
        ingress("default", "third")
            .created(2)
            .annotation("portcullis.dev/hsts", "true")
            .rule(Some("shop.example.com"), vec![prefix("/c", "web")])
            .build(),
    ]);
    let t = run(&s);
    assert_eq!(
        problems(&t),
        [
            "ingress default/second: metadata.annotations[\"portcullis.dev/hsts\"]: shop.example.com already has its HSTS set by ingress default/first"
        ]
    );
    assert!(site(&t, "shop.example.com").hsts.is_some());
}

fn tls_of(t: &Translated) -> &portcullis_config::OriginTls {
    match &origin(&root(t).action).transport {
        Transport::Tls(tls) => tls,
        Transport::Plain => panic!("plain"),
    }
}

#[test]
fn origin_mode_and_backend_protocol() {
    let t = ok(&[("portcullis.dev/origin-mode", "full")]);
    assert_eq!(tls_of(&t).verify, Verify::Off);
    assert_eq!(servers(root(&t))[0], "https://10.0.0.1:8080");
    let t = ok(&[("portcullis.dev/origin-mode", "strict")]);
    assert_eq!(tls_of(&t).verify, Verify::SystemRoots);
    // Pod IPs are verified against the Service's name.
    assert_eq!(tls_of(&t).server_name.as_deref(), Some("web.default.svc"));
    let t = ok(&[("portcullis.dev/origin-mode", "flexible")]);
    assert_eq!(origin(&root(&t).action).transport, Transport::Plain);
    refused("portcullis.dev/origin-mode", "paranoid");

    for name in [
        "portcullis.dev/backend-protocol",
        "nginx.ingress.kubernetes.io/backend-protocol",
    ] {
        let t = ok(&[(name, "HTTPS")]);
        assert_eq!(tls_of(&t).verify, Verify::Off);
        let t = ok(&[(name, "GRPCS"), ("portcullis.dev/origin-mode", "strict")]);
        assert_eq!(tls_of(&t).verify, Verify::SystemRoots);
        for h2c in ["GRPC", "h2c"] {
            let t = ok(&[(name, h2c)]);
            let o = origin(&root(&t).action);
            assert!(o.h2c);
            assert_eq!(o.transport, Transport::Plain);
        }
        assert!(!origin(&root(&ok(&[(name, "HTTP")])).action).h2c);
        refused(name, "AUTO_HTTP");
        refused(name, "FCGI");
        refused(name, "SPDY");
    }
    // Contradictions are problems, resolved towards TLS.
    let t = annotated(&[
        ("portcullis.dev/origin-mode", "flexible"),
        ("portcullis.dev/backend-protocol", "HTTPS"),
    ]);
    assert_problem(&t, "origin-mode\"]: flexible is plaintext");
    assert_eq!(tls_of(&t).verify, Verify::Off);
    let t = annotated(&[
        ("portcullis.dev/origin-mode", "full"),
        ("portcullis.dev/backend-protocol", "H2C"),
    ]);
    assert_problem(&t, "backend-protocol\"]: H2C is plaintext HTTP/2");
    assert!(!origin(&root(&t).action).h2c);
}

#[test]
fn origin_secrets_and_server_name() {
    let t = ok(&[
        ("portcullis.dev/backend-protocol", "HTTPS"),
        ("portcullis.dev/origin-ca-secret", "origin-ca"),
        ("portcullis.dev/origin-server-name", "Internal.Example.com"),
        ("portcullis.dev/origin-client-cert-secret", "client"),
    ]);
    let tls = tls_of(&t);
    assert!(matches!(&tls.verify, Verify::Roots(r) if r.len() == 1));
    assert_eq!(tls.server_name.as_deref(), Some("internal.example.com"));
    assert_eq!(
        tls.client_cert.as_ref().unwrap().cert_path,
        std::path::PathBuf::from("secret:default/client")
    );
    let t = annotated(&[
        ("portcullis.dev/origin-mode", "strict"),
        ("portcullis.dev/origin-ca-secret", "missing"),
    ]);
    assert_problem(
        &t,
        "origin-ca-secret\"]: secret default/missing does not exist",
    );
    // Never silently unverified.
    assert_eq!(tls_of(&t).verify, Verify::SystemRoots);
    let t = annotated(&[
        ("portcullis.dev/origin-mode", "full"),
        ("portcullis.dev/origin-client-cert-secret", "origin-ca"),
    ]);
    assert_problem(&t, "secret default/origin-ca is of type Opaque");
    assert!(tls_of(&t).client_cert.is_none());
    refused("portcullis.dev/origin-ca-secret", "Bad Name");
    refused("portcullis.dev/origin-server-name", "*.example.com");
    refused("portcullis.dev/origin-server-name", "bad name");
}

#[test]
fn nginx_proxy_ssl_annotations() {
    let t = ok(&[
        ("nginx.ingress.kubernetes.io/backend-protocol", "HTTPS"),
        (
            "nginx.ingress.kubernetes.io/proxy-ssl-secret",
            "default/client",
        ),
        ("nginx.ingress.kubernetes.io/proxy-ssl-verify", "on"),
        ("nginx.ingress.kubernetes.io/proxy-ssl-name", "web.internal"),
        ("nginx.ingress.kubernetes.io/proxy-ssl-server-name", "on"),
    ]);
    let tls = tls_of(&t);
    assert!(matches!(&tls.verify, Verify::Roots(_)));
    assert!(tls.client_cert.is_some());
    assert_eq!(tls.server_name.as_deref(), Some("web.internal"));
    let t = ok(&[
        ("nginx.ingress.kubernetes.io/backend-protocol", "HTTPS"),
        ("nginx.ingress.kubernetes.io/proxy-ssl-verify", "off"),
    ]);
    assert_eq!(tls_of(&t).verify, Verify::Off);
    // Another namespace's Secret is refused.
    let t = annotated(&[
        ("nginx.ingress.kubernetes.io/backend-protocol", "HTTPS"),
        (
            "nginx.ingress.kubernetes.io/proxy-ssl-secret",
            "kube-system/client",
        ),
    ]);
    assert_problem(
        &t,
        "proxy-ssl-secret\"]: secret kube-system/client is in another namespace",
    );
    refused("nginx.ingress.kubernetes.io/proxy-ssl-verify", "maybe");
    refused("nginx.ingress.kubernetes.io/proxy-ssl-server-name", "yes");
}

#[test]
fn timeouts() {
    let t = ok(&[
        ("portcullis.dev/connect-timeout", "2s"),
        ("portcullis.dev/read-timeout", "5m"),
    ]);
    let o = origin(&root(&t).action);
    assert_eq!(o.timeouts.connect, Duration::from_secs(2));
    assert_eq!(o.timeouts.response_header, Duration::from_secs(300));
    // ingress-nginx's are seconds without a unit.
    let t = ok(&[
        ("nginx.ingress.kubernetes.io/proxy-connect-timeout", "3"),
        ("nginx.ingress.kubernetes.io/proxy-read-timeout", "120"),
    ]);
    let o = origin(&root(&t).action);
    assert_eq!(o.timeouts.connect, Duration::from_secs(3));
    assert_eq!(o.timeouts.response_header, Duration::from_secs(120));
    refused("portcullis.dev/connect-timeout", "0");
    refused("portcullis.dev/read-timeout", "soon");
    refused("nginx.ingress.kubernetes.io/proxy-read-timeout", "-1");
}

#[test]
fn body_size() {
    assert_eq!(
        root(&ok(&[("portcullis.dev/max-body-size", "8MiB")])).max_body_size,
        Some(8 << 20)
    );
    assert_eq!(
        root(&ok(&[(
            "nginx.ingress.kubernetes.io/proxy-body-size",
            "8m"
        )]))
        .max_body_size,
        Some(8 << 20)
    );
    assert_eq!(
        root(&ok(&[(
            "nginx.ingress.kubernetes.io/proxy-body-size",
            "100k"
        )]))
        .max_body_size,
        Some(100 << 10)
    );
    assert_eq!(
        root(&ok(&[(
            "nginx.ingress.kubernetes.io/proxy-body-size",
            "1G"
        )]))
        .max_body_size,
        Some(1 << 30)
    );
    assert_eq!(
        root(&ok(&[("nginx.ingress.kubernetes.io/proxy-body-size", "0")])).max_body_size,
        Some(u64::MAX)
    );
    refused("portcullis.dev/max-body-size", "0");
    refused("portcullis.dev/max-body-size", "lots");
    refused("nginx.ingress.kubernetes.io/proxy-body-size", "8mb");
}

#[test]
fn balance_and_affinity() {
    for (v, b) in [
        ("round_robin", Balance::RoundRobin),
        ("least_requests", Balance::LeastRequests),
        ("random_two", Balance::RandomTwo),
    ] {
        assert_eq!(
            origin(&root(&ok(&[("portcullis.dev/balance", v)])).action).balance,
            b
        );
    }
    refused("portcullis.dev/balance", "ewma");
    let t = ok(&[("nginx.ingress.kubernetes.io/load-balance", "ewma")]);
    assert_eq!(origin(&root(&t).action).balance, Balance::LeastRequests);
    refused("nginx.ingress.kubernetes.io/load-balance", "chash");

    let t = ok(&[
        ("portcullis.dev/affinity", "cookie"),
        ("portcullis.dev/affinity-cookie-max-age", "1h"),
        ("portcullis.dev/affinity-cookie-path", "/app"),
        ("portcullis.dev/affinity-cookie-samesite", "strict"),
    ]);
    assert_eq!(
        origin(&root(&t).action).balance,
        Balance::Sticky(StickyCookie {
            name: "PORTCULLIS".into(),
            max_age: Some(Duration::from_secs(3600)),
            path: "/app".into(),
            secure: None,
            same_site: Some("Strict".into()),
        })
    );
    let t = ok(&[
        ("nginx.ingress.kubernetes.io/affinity", "cookie"),
        (
            "nginx.ingress.kubernetes.io/session-cookie-max-age",
            "172800",
        ),
    ]);
    let Balance::Sticky(c) = &origin(&root(&t).action).balance else {
        panic!("not sticky")
    };
    // ingress-nginx's default name, so sessions survive the migration.
    assert_eq!(c.name, "INGRESSCOOKIE");
    assert_eq!(c.max_age, Some(Duration::from_secs(172_800)));
    let t = ok(&[
        ("nginx.ingress.kubernetes.io/affinity", "cookie"),
        ("nginx.ingress.kubernetes.io/session-cookie-name", "route"),
    ]);
    assert!(matches!(&origin(&root(&t).action).balance, Balance::Sticky(c) if c.name == "route"));
    refused("portcullis.dev/affinity", "ip");
    let t = annotated(&[
        ("portcullis.dev/affinity", "cookie"),
        ("portcullis.dev/affinity-cookie-name", "a;b"),
        ("portcullis.dev/affinity-cookie-path", "app"),
        ("portcullis.dev/affinity-cookie-samesite", "sometimes"),
        ("portcullis.dev/affinity-cookie-max-age", "forever"),
    ]);
    assert_eq!(t.problems.len(), 4, "{:?}", problems(&t));
    assert!(
        matches!(&origin(&root(&t).action).balance, Balance::Sticky(c) if c.name == "PORTCULLIS" && c.path == "/")
    );

    for (v, key) in [
        ("$remote_addr", HashKey::ClientIp),
        ("$http_x_user_id", HashKey::Header("x-user-id".into())),
        ("$cookie_session", HashKey::Cookie("session".into())),
    ] {
        let t = ok(&[("nginx.ingress.kubernetes.io/upstream-hash-by", v)]);
        assert_eq!(origin(&root(&t).action).balance, Balance::Hash(key));
    }
    refused(
        "nginx.ingress.kubernetes.io/upstream-hash-by",
        "$request_uri",
    );
}

#[test]
fn source_ranges() {
    let t = ok(&[
        (
            "portcullis.dev/allow-source-range",
            "10.0.0.0/8, 192.168.1.7",
        ),
        ("portcullis.dev/deny-source-range", "10.1.0.0/16"),
    ]);
    let access = &root(&t).access;
    assert_eq!(access.allow.len(), 2);
    assert!(access.allows("10.2.0.1".parse().unwrap()));
    assert!(!access.allows("10.1.0.1".parse().unwrap()));
    assert!(!access.allows("8.8.8.8".parse().unwrap()));
    for name in [
        "nginx.ingress.kubernetes.io/whitelist-source-range",
        "nginx.ingress.kubernetes.io/allowlist-source-range",
    ] {
        let t = ok(&[(name, "2001:db8::/32")]);
        assert!(!root(&t).access.allows("8.8.8.8".parse().unwrap()));
        refused(name, "10.0.0.0/33");
    }
    let t = ok(&[(
        "nginx.ingress.kubernetes.io/denylist-source-range",
        "8.8.8.8",
    )]);
    assert!(!root(&t).access.allows("8.8.8.8".parse().unwrap()));
    refused("portcullis.dev/allow-source-range", "everyone");
    refused("portcullis.dev/deny-source-range", ",");
}

#[test]
fn retries() {
    let t = ok(&[
        ("portcullis.dev/retries", "3"),
        ("portcullis.dev/retry-on", "connect, 502,503"),
    ]);
    let r = &origin(&root(&t).action).retries;
    assert_eq!(r.attempts, 3);
    assert!(r.on_connect && !r.on_reset);
    assert_eq!(r.on_status, [502, 503]);
    assert_eq!(
        origin(&root(&ok(&[("portcullis.dev/retries", "0")])).action)
            .retries
            .attempts,
        0
    );
    refused("portcullis.dev/retries", "11");
    refused("portcullis.dev/retries", "-1");
    refused("portcullis.dev/retry-on", "404");
    refused("portcullis.dev/retry-on", "timeout");
}

#[test]
fn websocket() {
    assert_eq!(
        root(&ok(&[("portcullis.dev/websocket", "false")])).upgrades,
        Upgrades::none()
    );
    assert_eq!(
        root(&ok(&[("portcullis.dev/websocket", "true")])).upgrades,
        Upgrades::default()
    );
    refused("portcullis.dev/websocket", "no");
}

#[test]
fn rewrite_target() {
    let t = ok(&[("portcullis.dev/rewrite-target", "/v2")]);
    assert_eq!(root(&t).rewrite.as_deref(), Some("/v2"));
    let t = ok(&[("nginx.ingress.kubernetes.io/rewrite-target", "/")]);
    assert_eq!(root(&t).rewrite.as_deref(), Some("/"));
    refused("portcullis.dev/rewrite-target", "v2");
    refused("portcullis.dev/rewrite-target", "/a?b");
    let t = refused("nginx.ingress.kubernetes.io/rewrite-target", "/$2");
    assert_eq!(root(&t).rewrite, None);
    let t = annotated(&[
        ("nginx.ingress.kubernetes.io/use-regex", "true"),
        ("nginx.ingress.kubernetes.io/rewrite-target", "/"),
    ]);
    assert_problem(
        &t,
        "use-regex\"]: regular-expression paths are not supported",
    );
    assert_problem(
        &t,
        "rewrite-target\"]: a rewrite with regular-expression captures",
    );
    assert_eq!(root(&t).rewrite, None);
    ok(&[("nginx.ingress.kubernetes.io/use-regex", "false")]);
}

#[test]
fn redirects() {
    let redirect = |t: &Translated| match &root(t).action {
        Action::Redirect(r) => r.clone(),
        other => panic!("not a redirect: {other:?}"),
    };
    for prefix in ["portcullis.dev/", "nginx.ingress.kubernetes.io/"] {
        let t = ok(&[(
            &format!("{prefix}permanent-redirect"),
            "https://new.example.com/x",
        )]);
        assert_eq!(
            redirect(&t),
            Redirect {
                status: 301,
                location: "https://new.example.com/x".into()
            }
        );
        let t = ok(&[
            (&format!("{prefix}permanent-redirect"), "/moved"),
            (&format!("{prefix}permanent-redirect-code"), "308"),
        ]);
        assert_eq!(redirect(&t).status, 308);
        let t = ok(&[(
            &format!("{prefix}temporal-redirect"),
            "https://status.example.com",
        )]);
        assert_eq!(redirect(&t).status, 302);
        let t = annotated(&[(
            &format!("{prefix}permanent-redirect"),
            "javascript:alert(1)",
        )]);
        assert_problem(&t, "is not an http(s):// URL or a path");
        let t = annotated(&[(
            &format!("{prefix}permanent-redirect"),
            "https://a.example.com/\r\nSet-Cookie: x",
        )]);
        assert_eq!(t.problems.len(), 1);
        let t = annotated(&[
            (&format!("{prefix}permanent-redirect"), "/moved"),
            (&format!("{prefix}permanent-redirect-code"), "200"),
        ]);
        assert_eq!(redirect(&t).status, 301);
        assert_eq!(t.problems.len(), 1);
    }
}

#[test]
fn acme_annotation_value_is_checked() {
    let t = refused("portcullis.dev/acme", "yes");
    assert!(t.acme_secrets.is_empty());
    assert!(matches!(shop(&t).tls, SiteTls::Files(_)));
}

#[test]
fn unsupported_annotations_are_listed_not_refused() {
    let t = annotated(&[
        (
            "nginx.ingress.kubernetes.io/configuration-snippet",
            "more_set_headers \"X: y\";",
        ),
        ("nginx.ingress.kubernetes.io/proxy-send-timeout", "60"),
        ("portcullis.dev/magic", "on"),
        ("cert-manager.io/cluster-issuer", "letsencrypt"),
        ("nginx.ingress.kubernetes.io/ssl-redirect", "true"),
    ]);
    assert!(t.problems.is_empty(), "{:?}", problems(&t));
    assert_eq!(
        t.unsupported_annotations,
        [
            (
                key("default", "shop"),
                "nginx.ingress.kubernetes.io/configuration-snippet".to_owned()
            ),
            (
                key("default", "shop"),
                "nginx.ingress.kubernetes.io/proxy-send-timeout".to_owned()
            ),
            (key("default", "shop"), "portcullis.dev/magic".to_owned()),
        ]
    );
    assert_eq!(servers(root(&t)).len(), 2);
}

#[test]
fn annotations_apply_to_their_own_ingress_only() {
    let s = world(vec![
        ingress("default", "a")
            .annotation("portcullis.dev/max-body-size", "1KB")
            .rule(Some("shop.example.com"), vec![prefix("/a", "web")])
            .build(),
        ingress("default", "b")
            .rule(Some("shop.example.com"), vec![prefix("/b", "web")])
            .build(),
    ]);
    let t = run(&s);
    let site = site(&t, "shop.example.com");
    assert_eq!(route(site, "/a").max_body_size, Some(1000));
    assert_eq!(route(site, "/b").max_body_size, None);
}

#[test]
fn remaining_invalid_values_are_refused() {
    refused("portcullis.dev/service-upstream", "yes");
    refused("nginx.ingress.kubernetes.io/service-upstream", "1");
    refused(
        "portcullis.dev/temporal-redirect",
        "ftp://files.example.com",
    );
    refused(
        "nginx.ingress.kubernetes.io/temporal-redirect",
        "//evil.example.com",
    );
    refused("nginx.ingress.kubernetes.io/use-regex", "maybe");
    refused("nginx.ingress.kubernetes.io/affinity", "balanced");
    let t = annotated(&[
        ("nginx.ingress.kubernetes.io/affinity", "cookie"),
        (
            "nginx.ingress.kubernetes.io/session-cookie-samesite",
            "Lax;",
        ),
    ]);
    assert_problem(
        &t,
        "session-cookie-samesite\"]: `Lax;` is not Lax, Strict or None",
    );
    refused(
        "nginx.ingress.kubernetes.io/denylist-source-range",
        "10.0.0.300",
    );
    refused("nginx.ingress.kubernetes.io/proxy-connect-timeout", "0");
    refused("nginx.ingress.kubernetes.io/proxy-ssl-name", "-bad-");
    refused(
        "nginx.ingress.kubernetes.io/proxy-ssl-secret",
        "ns/Bad_Name",
    );
}

#[test]
fn ours_wins_over_nginx_for_every_pair() {
    let t = ok(&[
        ("portcullis.dev/max-body-size", "1KB"),
        ("nginx.ingress.kubernetes.io/proxy-body-size", "8m"),
        ("portcullis.dev/connect-timeout", "1s"),
        ("nginx.ingress.kubernetes.io/proxy-connect-timeout", "9"),
        ("portcullis.dev/rewrite-target", "/ours"),
        ("nginx.ingress.kubernetes.io/rewrite-target", "/theirs"),
        ("portcullis.dev/backend-protocol", "HTTP"),
        ("nginx.ingress.kubernetes.io/backend-protocol", "HTTPS"),
    ]);
    let r = root(&t);
    assert_eq!(r.max_body_size, Some(1000));
    assert_eq!(r.rewrite.as_deref(), Some("/ours"));
    let o = origin(&r.action);
    assert_eq!(o.timeouts.connect, Duration::from_secs(1));
    assert_eq!(o.transport, Transport::Plain);
}

#[test]
fn nginx_proxy_ssl_never_turns_tls_on_by_itself() {
    let t = ok(&[
        (
            "nginx.ingress.kubernetes.io/proxy-ssl-secret",
            "default/client",
        ),
        ("nginx.ingress.kubernetes.io/proxy-ssl-verify", "on"),
        ("nginx.ingress.kubernetes.io/proxy-ssl-name", "web.internal"),
    ]);
    assert_eq!(origin(&root(&t).action).transport, Transport::Plain);
    // Without proxy-ssl-verify, its CA is not used to verify.
    let t = ok(&[
        ("nginx.ingress.kubernetes.io/backend-protocol", "HTTPS"),
        ("nginx.ingress.kubernetes.io/proxy-ssl-secret", "client"),
    ]);
    assert_eq!(tls_of(&t).verify, Verify::Off);
    assert!(tls_of(&t).client_cert.is_some());
}

#[test]
fn our_origin_tls_settings_on_a_plaintext_origin_are_problems() {
    let t = annotated(&[
        ("portcullis.dev/origin-mode", "flexible"),
        ("portcullis.dev/origin-client-cert-secret", "client"),
        ("portcullis.dev/origin-server-name", "web.internal"),
    ]);
    assert_problem(
        &t,
        "origin-client-cert-secret\"]: only applies to TLS origins",
    );
    assert_problem(&t, "origin-server-name\"]: only applies to TLS origins");
    assert_eq!(origin(&root(&t).action).transport, Transport::Plain);
    // A CA alone asks for verification: strict.
    let t = ok(&[("portcullis.dev/origin-ca-secret", "origin-ca")]);
    assert!(matches!(tls_of(&t).verify, Verify::Roots(_)));
}

#[test]
fn qualifiers_without_what_they_qualify_are_problems_not_silence() {
    for (name, value) in [
        ("nginx.ingress.kubernetes.io/session-cookie-name", "route"),
        ("nginx.ingress.kubernetes.io/session-cookie-max-age", "3600"),
        ("portcullis.dev/affinity-cookie-name", "route"),
        ("portcullis.dev/permanent-redirect-code", "308"),
        ("nginx.ingress.kubernetes.io/permanent-redirect-code", "308"),
    ] {
        let t = refused(name, value);
        assert!(
            problems(&t)
                .iter()
                .any(|p| p.contains("has no effect without")),
            "{name}: {:?}",
            problems(&t)
        );
    }
    // With what they qualify, they are read without a problem.
    ok(&[
        ("nginx.ingress.kubernetes.io/affinity", "cookie"),
        ("nginx.ingress.kubernetes.io/session-cookie-name", "route"),
    ]);
    ok(&[
        ("portcullis.dev/permanent-redirect", "https://example.com/"),
        ("portcullis.dev/permanent-redirect-code", "308"),
    ]);
}
