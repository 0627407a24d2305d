use portcullis_config::{HostPattern, PathMatch, PlainHttp};

use super::build::*;
use crate::{DEFAULT_SITE_HOST, Options};

#[test]
fn path_types() {
    let s = world(vec![
        ingress("default", "a")
            .rule(
                Some("shop.example.com"),
                vec![
                    path("/exact", "Exact", "web", 80),
                    path("/exact-slash/", "Exact", "web", 80),
                    path("/foo/", "Prefix", "web", 80),
                    path("/", "Prefix", "web", 80),
                    path("/impl/", "ImplementationSpecific", "web", "http"),
                    path("/both", "Exact", "web", 80),
                    path("/both", "Prefix", "web", 80),
                ],
            )
            .build(),
    ]);
    let t = run(&s);
    assert!(t.problems.is_empty(), "{:?}", problems(&t));
    let site = site(&t, "shop.example.com");
    let got: Vec<(&str, PathMatch)> = site
        .routes
        .iter()
        .map(|r| (r.path.as_str(), r.path_match))
        .collect();
    assert_eq!(
        got,
        [
            ("/", PathMatch::Prefix),
            ("/both", PathMatch::Prefix),
            ("/both", PathMatch::Exact),
            ("/exact", PathMatch::Exact),
            // Exact keeps its trailing slash: it is part of the whole path.
            ("/exact-slash/", PathMatch::Exact),
            // Prefix drops it: `/foo/` and `/foo` are the same prefix.
            ("/foo", PathMatch::Prefix),
            ("/impl", PathMatch::Prefix),
        ]
    );
}

#[test]
fn trailing_slash_prefixes_are_the_same_path_and_conflict() {
    let s = world(vec![
        ingress("default", "a")
            .rule(
                Some("shop.example.com"),
                vec![
                    path("/foo", "Prefix", "web", 80),
                    path("/foo/", "ImplementationSpecific", "web", 80),
                ],
            )
            .build(),
    ]);
    let t = run(&s);
    assert_eq!(
        problems(&t),
        [
            "ingress default/a: rules[0].http.paths[1]: path /foo (Prefix) on shop.example.com is listed twice"
        ]
    );
}

#[test]
fn invalid_paths_and_path_types_are_problems_and_the_rest_is_served() {
    let s = world(vec![
        ingress("default", "a")
            .rule(
                Some("shop.example.com"),
                vec![
                    path("api", "Prefix", "web", 80),
                    path("/x", "Regex", "web", 80),
                    path("/a b", "Exact", "web", 80),
                    path("/ok", "Prefix", "web", 80),
                ],
            )
            .build(),
    ]);
    let t = run(&s);
    assert_eq!(
        problems(&t),
        [
            "ingress default/a: rules[0].http.paths[0].path: `api` must start with `/`",
            "ingress default/a: rules[0].http.paths[1].pathType: `Regex` is not Exact, Prefix or ImplementationSpecific",
            "ingress default/a: rules[0].http.paths[2].path: `/a b` must be a plain path (no `?`, `#`, spaces or control characters)",
        ]
    );
    let site = site(&t, "shop.example.com");
    assert_eq!(site.routes.len(), 1);
    assert_eq!(site.routes[0].path, "/ok");
}

#[test]
fn merge_order_is_oldest_first_and_conflicts_name_the_winner() {
    // `second` sorts first by name but was created later: `first` wins.
    let s = world(vec![
        ingress("default", "a-second")
            .created(10)
            .rule(
                Some("shop.example.com"),
                vec![
                    prefix("/other", "web"),
                    path("/api", "Prefix", "web", 80),
                    prefix("/api", "web"),
                ],
            )
            .build(),
        ingress("default", "first")
            .created(5)
            .rule(
                Some("shop.example.com"),
                vec![path("/api", "Prefix", "web", "https")],
            )
            .build(),
    ]);
    let t = run(&s);
    assert_eq!(
        problems(&t),
        [
            "ingress default/a-second: rules[0].http.paths[1]: path /api (Prefix) on shop.example.com is already routed by ingress default/first",
            "ingress default/a-second: rules[0].http.paths[2]: path /api (Prefix) on shop.example.com is already routed by ingress default/first",
        ]
    );
    let site = site(&t, "shop.example.com");
    assert_eq!(
        servers(route(site, "/api")),
        ["http://10.0.0.1:8443", "http://10.0.0.2:8443"]
    );
    assert_eq!(servers(route(site, "/other")).len(), 2);
    assert_eq!(
        t.ingresses,
        [key("default", "first"), key("default", "a-second")]
    );
}

#[test]
fn same_creation_time_orders_by_namespace_then_name() {
    let mk = |ns: &str, name: &str| {
        ingress(ns, name)
            .rule(Some("shop.example.com"), vec![prefix("/", "web")])
            .build()
    };
    let s = world(vec![mk("b", "a"), mk("a", "z"), mk("a", "b")]);
    let t = run(&s);
    assert_eq!(t.ingresses, [key("a", "b"), key("a", "z"), key("b", "a")]);
    assert_problem(
        &t,
        "ingress a/z: rules[0].http.paths[0]: path / (Prefix) on shop.example.com is already routed by ingress a/b",
    );
    assert_problem(
        &t,
        "ingress b/a: rules[0].http.paths[0]: path / (Prefix) on shop.example.com is already routed by ingress a/b",
    );
}

#[test]
fn the_same_snapshot_in_any_order_gives_an_equal_config() {
    let s = world(
        (0..30)
            .map(|i| {
                ingress(
                    if i % 2 == 0 { "default" } else { "other" },
                    &format!("ing{i}"),
                )
                .created(i % 4)
                .rule(
                    Some(&format!("h{}.example.com", i % 5)),
                    vec![
                        prefix(&format!("/p{}", i % 3), "web"),
                        path("/x", "Exact", "web", 80),
                    ],
                )
                .rule(None, vec![prefix(&format!("/d{}", i % 7), "web")])
                .tls(
                    &[&format!("h{}.example.com", i % 5)],
                    Some(&format!("s{}", i % 3)),
                )
                .annotation(
                    "portcullis.dev/hsts",
                    if i % 2 == 0 { "true" } else { "false" },
                )
                .default_backend("web", 80)
                .build()
            })
            .collect(),
    );
    let first = run(&s);
    let mut shuffled = s.clone();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..5 {
        // Fisher–Yates with a fixed xorshift: reproducible shuffles.
        for i in (1..shuffled.ingresses.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let j = (seed % (i as u64 + 1)) as usize;
            shuffled.ingresses.swap(i, j);
        }
        shuffled.endpoint_slices.reverse();
        shuffled.ingress_classes.reverse();
        let again = run(&shuffled);
        assert_eq!(again.config, first.config, "round {round}");
        assert_eq!(again.problems, first.problems, "round {round}");
        assert_eq!(again.ingresses, first.ingresses);
        assert_eq!(again.acme_secrets, first.acme_secrets);
    }
}

#[test]
fn wildcard_and_exact_hosts_are_separate_sites() {
    let s = world(vec![
        ingress("default", "a")
            .rule(Some("*.example.com"), vec![prefix("/", "web")])
            .rule(Some("api.example.com"), vec![prefix("/v1", "web")])
            .rule(Some("a.*.example.com"), vec![prefix("/", "web")])
            .rule(Some("10.0.0.1"), vec![prefix("/", "web")])
            .rule(Some(DEFAULT_SITE_HOST), vec![prefix("/", "web")])
            .build(),
    ]);
    let t = run(&s);
    let wild = site(&t, "*.example.com");
    assert_eq!(wild.hosts, [HostPattern::Wildcard("example.com".into())]);
    // One label deep, as the Ingress API says.
    assert!(wild.hosts[0].matches("www.example.com"));
    assert!(!wild.hosts[0].matches("a.b.example.com"));
    assert!(!wild.hosts[0].matches("example.com"));
    site(&t, "api.example.com");
    assert_eq!(t.problems.len(), 3, "{:?}", problems(&t));
    assert_problem(&t, "rules[2].host: invalid host `a.*.example.com`");
    assert_problem(&t, "rules[3].host: `10.0.0.1` is an IP address");
    assert_problem(&t, "rules[4].host: `_.portcullis.invalid` is reserved");
}

#[test]
fn rules_without_host_go_to_the_default_site() {
    let s = world(vec![
        ingress("default", "a")
            .rule(None, vec![prefix("/catch", "web")])
            .build(),
        ingress("default", "b")
            .created(1)
            .rule(None, vec![prefix("/catch", "web")])
            .build(),
    ]);
    let t = run(&s);
    let d = default_site(&t);
    assert_eq!(d.name, DEFAULT_SITE_HOST);
    assert!(d.default);
    assert_eq!(d.routes.len(), 1);
    assert_eq!(d.tls, portcullis_config::SiteTls::Local);
    assert_eq!(d.fallback, None);
    assert_eq!(
        problems(&t),
        [
            "ingress default/b: rules[0].http.paths[0]: path /catch (Prefix) on rules without a host is already routed by ingress default/a"
        ]
    );
}

#[test]
fn default_backends() {
    let s = world(vec![
        // Its defaultBackend serves its own hosts only.
        ingress("default", "hosted")
            .rule(Some("a.example.com"), vec![prefix("/x", "web")])
            .tls(&["tls-only.example.com"], None)
            .default_backend("web", "https")
            .build(),
        // No rules: its defaultBackend is the default site's.
        ingress("default", "catchall")
            .created(1)
            .default_backend("web", "http")
            .build(),
        // A later, different one for the same host is a conflict.
        ingress("default", "late")
            .created(2)
            .rule(Some("a.example.com"), vec![prefix("/y", "web")])
            .default_backend("web", 80)
            .build(),
        ingress("default", "plain")
            .created(3)
            .rule(Some("b.example.com"), vec![prefix("/z", "web")])
            .build(),
    ]);
    let t = run(&s);
    // An Ingress's defaultBackend is its hosts' `/` prefix (what matches when no longer
    // path does), with the Ingress's per-route settings.
    let a = site(&t, "a.example.com");
    assert_eq!(a.fallback, None);
    assert_eq!(
        servers(route(a, "/")),
        ["http://10.0.0.1:8443", "http://10.0.0.2:8443"]
    );
    assert_eq!(
        route(site(&t, "tls-only.example.com"), "/").path_match,
        PathMatch::Prefix
    );
    let b = site(&t, "b.example.com");
    assert_eq!(b.fallback, None);
    assert!(b.routes.iter().all(|r| r.path != "/"));
    assert_eq!(
        servers(route(default_site(&t), "/")),
        ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]
    );
    assert_eq!(
        problems(&t),
        [
            "ingress default/late: defaultBackend: a.example.com already falls back to the defaultBackend of ingress default/hosted"
        ]
    );

    // The controller's default backend is the fallback of every site without one.
    let options = Options {
        default_backend: Some((key("default", "web"), "https".into())),
        ..Options::default()
    };
    let t = run_with(&s, &options);
    let b = site(&t, "b.example.com");
    assert_eq!(origin(b.fallback.as_ref().unwrap()).servers[0].port, 8443);
    assert_eq!(
        servers(route(site(&t, "a.example.com"), "/"))[0],
        "http://10.0.0.1:8443"
    );
    assert_eq!(
        servers(route(default_site(&t), "/"))[0],
        "http://10.0.0.1:8080"
    );

    let missing = Options {
        default_backend: Some((key("default", "nope"), "80".into())),
        ..Options::default()
    };
    let t = run_with(&s, &missing);
    assert_problem(
        &t,
        "controller --default-backend: service nope does not exist in namespace default",
    );
    // An origin without servers: 503, as for any missing backend.
    assert!(
        origin(site(&t, "b.example.com").fallback.as_ref().unwrap())
            .servers
            .is_empty()
    );
}

#[test]
fn plain_http_redirects_only_hosts_with_tls() {
    let s = world(vec![
        ingress("default", "a")
            .rule(Some("tls.example.com"), vec![prefix("/", "web")])
            .rule(Some("plain.example.com"), vec![prefix("/", "web")])
            .tls(&["tls.example.com"], None)
            .build(),
        // Another Ingress's paths on a TLS host redirect too: TLS is the host's.
        ingress("default", "b")
            .created(1)
            .rule(Some("tls.example.com"), vec![prefix("/b", "web")])
            .build(),
    ]);
    let t = run(&s);
    let tls = site(&t, "tls.example.com");
    assert_eq!(route(tls, "/").plain_http, PlainHttp::Redirect);
    assert_eq!(route(tls, "/b").plain_http, PlainHttp::Redirect);
    assert_eq!(tls.plain_http, PlainHttp::Redirect);
    let plain = site(&t, "plain.example.com");
    assert_eq!(route(plain, "/").plain_http, PlainHttp::Serve);
    assert_eq!(plain.plain_http, PlainHttp::Serve);
    assert_eq!(plain.tls, portcullis_config::SiteTls::None);
}

#[test]
fn acme_challenge_paths_are_always_served_over_plain_http() {
    // cert-manager's HTTP-01 solver Ingress: legacy class annotation, Exact token paths.
    let s = world(vec![
        ingress("default", "app")
            .rule(Some("shop.example.com"), vec![prefix("/", "web")])
            .tls(&["shop.example.com"], None)
            .annotation("portcullis.dev/force-ssl-redirect", "true")
            .build(),
        ingress("default", "cm-acme-http-solver-x")
            .class(None)
            .created(1)
            .annotation("kubernetes.io/ingress.class", "portcullis")
            .rule(
                Some("shop.example.com"),
                vec![path(
                    "/.well-known/acme-challenge/tok.en-_1",
                    "Exact",
                    "web",
                    80,
                )],
            )
            .build(),
    ]);
    let t = run(&s);
    assert!(t.problems.is_empty(), "{:?}", problems(&t));
    let site = site(&t, "shop.example.com");
    assert_eq!(route(site, "/").plain_http, PlainHttp::Redirect);
    let solver = route(site, "/.well-known/acme-challenge/tok.en-_1");
    assert_eq!(solver.path_match, PathMatch::Exact);
    assert_eq!(solver.plain_http, PlainHttp::Serve);
}

#[test]
fn resource_backends_are_refused() {
    let mut ing = ingress("default", "a")
        .rule(Some("a.example.com"), vec![prefix("/", "web")])
        .build();
    let backend = &mut ing.spec.as_mut().unwrap().rules.as_mut().unwrap()[0]
        .http
        .as_mut()
        .unwrap()
        .paths[0]
        .backend;
    backend.service = None;
    backend.resource = Some(k8s_openapi::api::core::v1::TypedLocalObjectReference {
        api_group: Some("k8s.example.com".into()),
        kind: "StorageBucket".into(),
        name: "static".into(),
    });
    let t = run(&world(vec![ing]));
    assert_eq!(
        problems(&t),
        [
            "ingress default/a: rules[0].http.paths[0].backend.resource: resource backends are not supported; use a Service"
        ]
    );
    assert!(site(&t, "a.example.com").routes.is_empty());
}

#[test]
fn a_default_backend_keeps_its_ingress_settings_and_yields_to_a_root_path() {
    let s = world(vec![
        ingress("default", "guarded")
            .annotation("portcullis.dev/allow-source-range", "10.0.0.0/8")
            .rule(Some("a.example.com"), vec![prefix("/x", "web")])
            .default_backend("web", 80)
            .build(),
        ingress("default", "root")
            .created(1)
            .rule(Some("b.example.com"), vec![prefix("/", "web")])
            .build(),
        ingress("default", "b-default")
            .rule(Some("b.example.com"), vec![prefix("/y", "web")])
            .default_backend("web", "https")
            .build(),
    ]);
    let t = run(&s);
    assert!(t.problems.is_empty(), "{:?}", problems(&t));
    let a = site(&t, "a.example.com");
    assert!(!route(a, "/").access.allows("192.0.2.1".parse().unwrap()));
    // An explicit `/` path matches every request: the defaultBackend never would.
    let b = site(&t, "b.example.com");
    assert_eq!(servers(route(b, "/"))[0], "http://10.0.0.1:8080");
}

#[test]
fn a_host_without_paths_is_known_and_answers_404() {
    let mut ing = ingress("default", "a")
        .rule(Some("bare.example.com"), vec![])
        .build();
    ing.spec.as_mut().unwrap().rules.as_mut().unwrap()[0].http = None;
    // Only a class: nothing to route, and no problem.
    let empty = ingress("default", "empty").build();
    let t = run(&world(vec![ing, empty]));
    assert!(t.problems.is_empty(), "{:?}", problems(&t));
    let bare = site(&t, "bare.example.com");
    assert!(bare.routes.is_empty());
    assert_eq!(bare.fallback, None);
    assert_eq!(t.ingresses.len(), 2);
}

#[test]
fn a_missing_path_is_the_root_and_a_missing_port_is_a_problem() {
    let mut p = prefix("/", "web");
    p.path = None;
    p.path_type = "ImplementationSpecific".into();
    let mut no_port = prefix("/np", "web");
    no_port.backend.service.as_mut().unwrap().port = None;
    let t = run(&world(vec![
        ingress("default", "a")
            .rule(Some("a.example.com"), vec![p, no_port])
            .build(),
    ]));
    assert_eq!(
        problems(&t),
        [
            "ingress default/a: rules[0].http.paths[1].backend.service.port: a port number or name is required"
        ]
    );
    assert_eq!(servers(route(site(&t, "a.example.com"), "/")).len(), 2);
}
