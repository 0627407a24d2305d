use k8s_openapi::api::core::v1::Service;

use super::build::*;

fn one(
    path_backend: k8s_openapi::api::networking::v1::HTTPIngressPath,
) -> Vec<k8s_openapi::api::networking::v1::Ingress> {
    vec![
        ingress("default", "shop")
            .rule(Some("shop.example.com"), vec![path_backend])
            .build(),
    ]
}

#[test]
fn ports_by_number_and_name_use_the_slice_port_of_the_same_name() {
    let t = run(&world(one(path("/", "Prefix", "web", 80))));
    assert_eq!(
        servers(route(site(&t, "shop.example.com"), "/")),
        ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]
    );
    let t = run(&world(one(path("/", "Prefix", "web", "https"))));
    assert_eq!(
        servers(route(site(&t, "shop.example.com"), "/")),
        ["http://10.0.0.1:8443", "http://10.0.0.2:8443"]
    );
    let o = origin(&route(site(&t, "shop.example.com"), "/").action);
    assert_eq!(o.url, "k8s:default/web:https");
}

#[test]
fn missing_service_or_port_is_a_problem_and_an_origin_without_servers() {
    let t = run(&world(one(path("/", "Prefix", "web", "metrics"))));
    assert_eq!(
        problems(&t),
        [
            "ingress default/shop: rules[0].http.paths[0].backend.service.port: service web has no port named metrics"
        ]
    );
    assert!(servers(route(site(&t, "shop.example.com"), "/")).is_empty());

    let t = run(&world(one(path("/", "Prefix", "web", 81))));
    assert_eq!(
        problems(&t),
        [
            "ingress default/shop: rules[0].http.paths[0].backend.service.port: service web has no port 81"
        ]
    );

    let t = run(&world(one(path("/", "Prefix", "nope", 80))));
    assert_eq!(
        problems(&t),
        [
            "ingress default/shop: rules[0].http.paths[0].backend.service.name: service nope does not exist in namespace default"
        ]
    );
    assert!(servers(route(site(&t, "shop.example.com"), "/")).is_empty());
}

#[test]
fn a_service_in_another_namespace_is_not_found() {
    let mut s = world(one(path("/", "Prefix", "web", 80)));
    std::sync::Arc::make_mut(&mut s.ingresses[0])
        .metadata
        .namespace = Some("other".into());
    let t = run(&s);
    assert_problem(&t, "service web does not exist in namespace other");
}

#[test]
fn only_ready_not_terminating_endpoints_are_served_sorted_and_once() {
    let mut s = world(one(path("/", "Prefix", "web", 80)));
    s.endpoint_slices = vec![
        slice(
            "default",
            "web-b",
            "web",
            &[(Some("http"), 8080)],
            &[
                ready("10.0.0.9"),
                ("10.0.0.3", Some(false), None),
                ("10.0.0.4", Some(true), Some(true)),
                ("10.0.0.5", Some(true), Some(false)),
                ready("10.0.0.1"),
            ],
        )
        .into(),
        // The same endpoint in two slices (while an update moves it) counts once.
        slice(
            "default",
            "web-a",
            "web",
            &[(Some("http"), 8080)],
            &[ready("10.0.0.1")],
        )
        .into(),
        slice(
            "default",
            "web-6",
            "web",
            &[(Some("http"), 8080)],
            &[ready("fd00::1")],
        )
        .into(),
        // Another port's name, another Service, another namespace: not ours.
        slice(
            "default",
            "web-c",
            "web",
            &[(Some("https"), 8443)],
            &[ready("10.0.0.7")],
        )
        .into(),
        slice(
            "default",
            "api-a",
            "api",
            &[(Some("http"), 8080)],
            &[ready("10.0.0.8")],
        )
        .into(),
        slice(
            "other",
            "web-a",
            "web",
            &[(Some("http"), 8080)],
            &[ready("10.0.0.6")],
        )
        .into(),
    ];
    let mut fqdn = slice(
        "default",
        "web-f",
        "web",
        &[(Some("http"), 8080)],
        &[ready("db.example.com")],
    );
    fqdn.address_type = "FQDN".into();
    s.endpoint_slices.push(fqdn.into());
    let t = run(&s);
    assert_eq!(
        servers(route(site(&t, "shop.example.com"), "/")),
        [
            "http://10.0.0.1:8080",
            "http://10.0.0.5:8080",
            "http://10.0.0.9:8080",
            "http://[fd00::1]:8080"
        ]
    );
    let o = origin(&route(site(&t, "shop.example.com"), "/").action);
    assert_eq!(o.servers[3].host, "fd00::1");
}

#[test]
fn no_ready_endpoint_is_an_origin_without_servers() {
    let mut s = world(one(path("/", "Prefix", "web", 80)));
    s.endpoint_slices = vec![
        slice(
            "default",
            "web-a",
            "web",
            &[(Some("http"), 8080)],
            &[("10.0.0.1", Some(false), None)],
        )
        .into(),
    ];
    let t = run(&s);
    assert!(t.problems.is_empty());
    assert!(servers(route(site(&t, "shop.example.com"), "/")).is_empty());
}

#[test]
fn an_unnamed_service_port_matches_the_unnamed_slice_port() {
    let mut s = world(one(path("/", "Prefix", "solo", 80)));
    s.services
        .push(service("default", "solo", &[(None, 80)]).into());
    s.endpoint_slices.push(
        slice(
            "default",
            "solo-a",
            "solo",
            &[(None, 3000)],
            &[ready("10.1.0.1")],
        )
        .into(),
    );
    s.endpoint_slices.push(
        slice(
            "default",
            "solo-b",
            "solo",
            &[(Some(""), 3000)],
            &[ready("10.1.0.2")],
        )
        .into(),
    );
    let t = run(&s);
    assert_eq!(
        servers(route(site(&t, "shop.example.com"), "/")),
        ["http://10.1.0.1:3000", "http://10.1.0.2:3000"]
    );
}

#[test]
fn external_name_services() {
    let mut s = world(one(path("/", "Prefix", "ext", 443)));
    s.services
        .push(external_service("default", "ext", "API.Example.com.", 443).into());
    let t = run(&s);
    assert!(t.problems.is_empty(), "{:?}", problems(&t));
    let o = origin(&route(site(&t, "shop.example.com"), "/").action);
    assert_eq!(o.servers[0].host, "api.example.com");
    assert_eq!(o.servers[0].port, 443);

    for refused in [
        "localhost",
        "app.localhost",
        "127.0.0.1",
        "0.0.0.0",
        "::1",
        "169.254.169.254",
        "fe80::1",
        "::ffff:127.0.0.1",
    ] {
        let mut s = world(one(path("/", "Prefix", "ext", 80)));
        s.services
            .push(external_service("default", "ext", refused, 80).into());
        let t = run(&s);
        assert_problem(
            &t,
            "rules[0].http.paths[0].backend.service.name: service ext: externalName",
        );
        assert!(
            servers(route(site(&t, "shop.example.com"), "/")).is_empty(),
            "{refused}"
        );
    }
}

fn with_service_annotation(mut svc: Service) -> Service {
    svc.metadata.annotations = Some(
        [(
            "portcullis.dev/service-upstream".to_owned(),
            "true".to_owned(),
        )]
        .into(),
    );
    svc
}

#[test]
fn service_upstream_uses_the_cluster_ip() {
    // On the Service.
    let mut s = world(one(path("/", "Prefix", "web", "https")));
    s.services[0] = with_service_annotation((*s.services[0]).clone()).into();
    let t = run(&s);
    assert_eq!(
        servers(route(site(&t, "shop.example.com"), "/")),
        ["http://10.96.0.10:8443"]
    );

    // On the Ingress, ours or ingress-nginx's.
    for annotation in [
        "portcullis.dev/service-upstream",
        "nginx.ingress.kubernetes.io/service-upstream",
    ] {
        let s = world(vec![
            ingress("default", "shop")
                .annotation(annotation, "true")
                .rule(Some("shop.example.com"), vec![prefix("/", "web")])
                .build(),
        ]);
        let t = run(&s);
        assert_eq!(
            servers(route(site(&t, "shop.example.com"), "/")),
            ["http://10.96.0.10:80"]
        );
    }

    // A headless Service has no cluster IP.
    let mut s = world(one(path("/", "Prefix", "web", 80)));
    let mut svc = with_service_annotation((*s.services[0]).clone());
    svc.spec.as_mut().unwrap().cluster_ip = Some("None".into());
    s.services[0] = svc.into();
    let t = run(&s);
    assert_problem(&t, "service web is headless");
}
