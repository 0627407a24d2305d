use std::collections::BTreeMap;
use std::path::PathBuf;

use portcullis_config::{PlainHttp, SiteTls};

use super::build::*;
use crate::Options;

fn files(tls: &SiteTls) -> &portcullis_config::CertKey {
    match tls {
        SiteTls::Files(ck) => ck,
        other => panic!("not files: {other:?}"),
    }
}

fn shop(secret: Option<&str>) -> k8s_openapi::api::networking::v1::Ingress {
    ingress("default", "shop")
        .rule(Some("shop.example.com"), vec![prefix("/", "web")])
        .rule(Some("blog.example.com"), vec![prefix("/", "web")])
        .tls(&["shop.example.com"], secret)
        .tls(&["blog.example.com"], Some("blog-tls"))
        .build()
}

#[test]
fn a_tls_secret_becomes_the_sites_certificate() {
    let mut s = world(vec![shop(Some("shop-tls"))]);
    s.secrets = vec![
        tls_secret("default", "shop-tls", &["shop.example.com"]).into(),
        tls_secret("default", "blog-tls", &["blog.example.com"]).into(),
    ];
    let t = run(&s);
    assert!(t.problems.is_empty(), "{:?}", problems(&t));
    let ck = files(&site(&t, "shop.example.com").tls);
    assert_eq!(ck.cert_path, PathBuf::from("secret:default/shop-tls"));
    assert_eq!(ck.key_path, ck.cert_path);
    assert_eq!(ck.chain.len(), 1);
    assert_eq!(site(&t, "shop.example.com").plain_http, PlainHttp::Redirect);
    assert!(t.secrets.contains(&key("default", "shop-tls")));
}

#[test]
fn broken_secrets_are_problems_for_their_host_only() {
    let (crt, key_pem) = cert_pem(&["shop.example.com"]);
    let (_, other_key) = cert_pem(&["shop.example.com"]);
    let cases: Vec<(Option<k8s_openapi::api::core::v1::Secret>, &str)> = vec![
        (None, "secret default/shop-tls does not exist"),
        (
            Some(secret_with(
                "default",
                "shop-tls",
                "Opaque",
                &[("tls.crt", crt.as_bytes()), ("tls.key", key_pem.as_bytes())],
            )),
            "secret default/shop-tls is of type Opaque, not kubernetes.io/tls",
        ),
        (
            Some(secret_with(
                "default",
                "shop-tls",
                "kubernetes.io/tls",
                &[("tls.key", key_pem.as_bytes())],
            )),
            "secret default/shop-tls has no tls.crt",
        ),
        (
            Some(secret_with(
                "default",
                "shop-tls",
                "kubernetes.io/tls",
                &[("tls.crt", crt.as_bytes())],
            )),
            "secret default/shop-tls has no tls.key",
        ),
        (
            Some(secret_with(
                "default",
                "shop-tls",
                "kubernetes.io/tls",
                &[("tls.crt", b"garbage"), ("tls.key", key_pem.as_bytes())],
            )),
            "secret default/shop-tls: no certificate",
        ),
        (
            Some(secret_with(
                "default",
                "shop-tls",
                "kubernetes.io/tls",
                &[("tls.crt", crt.as_bytes()), ("tls.key", b"nope")],
            )),
            "secret default/shop-tls: no private key",
        ),
        (
            Some(secret_with(
                "default",
                "shop-tls",
                "kubernetes.io/tls",
                &[
                    ("tls.crt", crt.as_bytes()),
                    ("tls.key", other_key.as_bytes()),
                ],
            )),
            "secret default/shop-tls: private key does not match the certificate",
        ),
    ];
    for (secret, why) in cases {
        let mut s = world(vec![shop(Some("shop-tls"))]);
        s.secrets = vec![tls_secret("default", "blog-tls", &["blog.example.com"]).into()];
        s.secrets.extend(secret.map(Into::into));
        let t = run(&s);
        let all = problems(&t);
        assert_eq!(all.len(), 1, "{all:?}");
        assert!(
            all[0].starts_with(&format!("ingress default/shop: tls[0].secretName: {why}")),
            "{all:?}"
        );
        // The host falls back to the default certificate but still redirects to HTTPS.
        let shop = site(&t, "shop.example.com");
        assert_eq!(shop.tls, SiteTls::None);
        assert_eq!(shop.plain_http, PlainHttp::Redirect);
        assert!(matches!(
            site(&t, "blog.example.com").tls,
            SiteTls::Files(_)
        ));
        assert_eq!(shop.routes.len(), 1);
    }
}

#[test]
fn a_tls_entry_without_a_secret_serves_the_default_certificate() {
    let mut s = world(vec![shop(None)]);
    s.secrets = vec![tls_secret("default", "blog-tls", &["blog.example.com"]).into()];
    let t = run(&s);
    assert!(t.problems.is_empty(), "{:?}", problems(&t));
    let shop = site(&t, "shop.example.com");
    assert_eq!(shop.tls, SiteTls::None);
    assert_eq!(shop.plain_http, PlainHttp::Redirect);
}

#[test]
fn a_tls_entry_without_hosts_covers_the_rule_hosts_its_certificate_names() {
    let mut s = world(vec![
        ingress("default", "a")
            .rule(Some("shop.example.com"), vec![prefix("/", "web")])
            .rule(Some("other.example.org"), vec![prefix("/", "web")])
            .tls(&[], Some("wild"))
            .build(),
    ]);
    s.secrets = vec![tls_secret("default", "wild", &["*.example.com"]).into()];
    let t = run(&s);
    assert!(t.problems.is_empty(), "{:?}", problems(&t));
    assert!(matches!(
        site(&t, "shop.example.com").tls,
        SiteTls::Files(_)
    ));
    assert_eq!(site(&t, "other.example.org").tls, SiteTls::None);
    assert_eq!(site(&t, "other.example.org").plain_http, PlainHttp::Serve);
}

#[test]
fn the_first_ingress_naming_a_secret_for_a_host_wins() {
    let mut s = world(vec![
        ingress("default", "first")
            .rule(Some("shop.example.com"), vec![prefix("/", "web")])
            .tls(&["shop.example.com"], Some("one"))
            .build(),
        ingress("default", "same")
            .created(1)
            .rule(Some("shop.example.com"), vec![prefix("/same", "web")])
            .tls(&["shop.example.com"], Some("one"))
            .build(),
        ingress("default", "second")
            .created(2)
            .rule(Some("shop.example.com"), vec![prefix("/b", "web")])
            .tls(&["shop.example.com"], Some("two"))
            .build(),
    ]);
    s.secrets = vec![
        tls_secret("default", "one", &["shop.example.com"]).into(),
        tls_secret("default", "two", &["shop.example.com"]).into(),
    ];
    let t = run(&s);
    assert_eq!(
        problems(&t),
        [
            "ingress default/second: tls[0].hosts[0]: shop.example.com already takes its certificate from secret default/one (ingress default/first)"
        ]
    );
    assert_eq!(
        files(&site(&t, "shop.example.com").tls).cert_path,
        PathBuf::from("secret:default/one")
    );
}

#[test]
fn default_certificate() {
    let mut s = world(vec![]);
    s.secrets = vec![tls_secret("kube-system", "fallback", &["*.example.com"]).into()];
    let options = Options {
        default_certificate: Some(key("kube-system", "fallback")),
        ..Options::default()
    };
    let t = run_with(&s, &options);
    assert!(t.problems.is_empty());
    assert_eq!(
        files(&default_site(&t).tls).cert_path,
        PathBuf::from("secret:kube-system/fallback")
    );

    let broken = Options {
        default_certificate: Some(key("kube-system", "missing")),
        ..Options::default()
    };
    let t = run_with(&s, &broken);
    assert_eq!(
        problems(&t),
        [
            "controller --default-certificate: secret kube-system/missing does not exist; a local-CA certificate is served instead"
        ]
    );
    assert_eq!(default_site(&t).tls, SiteTls::Local);
    // Without the flag: a local-CA certificate, like ingress-nginx's fake one.
    assert_eq!(default_site(&run(&s)).tls, SiteTls::Local);
}

fn acme_ingress(secret: Option<&str>) -> k8s_openapi::api::networking::v1::Ingress {
    ingress("default", "shop")
        .annotation("portcullis.dev/acme", "true")
        .rule(Some("shop.example.com"), vec![prefix("/", "web")])
        .tls(&["shop.example.com", "*.example.com"], secret)
        .build()
}

#[test]
fn acme_on_the_issuer_and_on_followers() {
    let issuer = Options {
        acme_issuer: true,
        ..Options::default()
    };
    let s = world(vec![acme_ingress(Some("shop-tls"))]);
    let t = run_with(&s, &issuer);
    assert_eq!(
        site(&t, "shop.example.com").tls,
        SiteTls::Acme {
            fallback_local: false
        }
    );
    assert_eq!(
        t.acme_secrets,
        BTreeMap::from([("shop.example.com".to_owned(), key("default", "shop-tls"))])
    );
    // Wildcards need DNS-01: the Secret is read instead (here missing).
    assert_problem(
        &t,
        "tls[0].hosts[1]: *.example.com: wildcard certificates need the DNS-01 challenge",
    );
    assert_eq!(site(&t, "*.example.com").tls, SiteTls::None);

    // A follower serves what the leader stored, or nothing yet (no problem: it is coming).
    let s = world(vec![
        ingress("default", "shop")
            .annotation("portcullis.dev/acme", "true")
            .rule(Some("shop.example.com"), vec![prefix("/", "web")])
            .tls(&["shop.example.com"], Some("shop-tls"))
            .build(),
    ]);
    let t = run(&s);
    assert_eq!(site(&t, "shop.example.com").tls, SiteTls::None);
    assert!(
        !problems(&t).iter().any(|p| p.contains("does not exist")),
        "{:?}",
        problems(&t)
    );
    assert_eq!(t.acme_secrets.len(), 1);
    let mut stored = s.clone();
    stored.secrets = vec![tls_secret("default", "shop-tls", &["shop.example.com"]).into()];
    assert!(matches!(
        site(&run(&stored), "shop.example.com").tls,
        SiteTls::Files(_)
    ));
}

#[test]
fn acme_for_every_host_by_flag() {
    let s = world(vec![shop(Some("shop-tls"))]);
    let options = Options {
        acme_all: true,
        acme_issuer: true,
        ..Options::default()
    };
    let t = run_with(&s, &options);
    assert_eq!(t.acme_secrets.len(), 2);
    assert!(matches!(
        site(&t, "blog.example.com").tls,
        SiteTls::Acme { .. }
    ));
}

#[test]
fn acme_needs_a_secret_name() {
    let options = Options {
        acme_issuer: true,
        ..Options::default()
    };
    let t = run_with(&world(vec![acme_ingress(None)]), &options);
    assert_problem(
        &t,
        "ingress default/shop: tls[0].secretName: ACME stores the certificate in a Secret; name one",
    );
    assert_eq!(site(&t, "shop.example.com").tls, SiteTls::None);
    assert!(t.acme_secrets.is_empty());
}

#[test]
fn a_cert_manager_secret_is_only_read() {
    let mut s = world(vec![acme_ingress(Some("shop-tls"))]);
    let mut secret = tls_secret("default", "shop-tls", &["shop.example.com"]);
    secret.metadata.annotations = Some(BTreeMap::from([(
        "cert-manager.io/certificate-name".to_owned(),
        "shop".to_owned(),
    )]));
    s.secrets = vec![secret.into()];
    let options = Options {
        acme_issuer: true,
        ..Options::default()
    };
    let t = run_with(&s, &options);
    assert_problem(
        &t,
        "tls[0].secretName: secret default/shop-tls is managed by cert-manager; Portcullis only reads it",
    );
    assert!(t.acme_secrets.is_empty());
    assert!(matches!(
        site(&t, "shop.example.com").tls,
        SiteTls::Files(_)
    ));
}

#[test]
fn acme_with_http01_and_no_plain_listener_reads_secrets() {
    let s = world(vec![acme_ingress(Some("shop-tls"))]);
    let mut base = base();
    base.acme.challenge = portcullis_config::Challenge::Http01;
    base.listen.http = None;
    let options = Options {
        acme_issuer: true,
        ..Options::default()
    };
    let t = crate::translate(&base, &s, &options);
    super::invariants(&t.config);
    assert_problem(&t, "controller acme.challenge");
    assert_eq!(site(&t, "shop.example.com").tls, SiteTls::None);
}

#[test]
fn a_certificate_that_does_not_name_the_host_is_not_served_for_it() {
    let mut s = world(vec![
        ingress("default", "a")
            .rule(Some("shop.example.com"), vec![prefix("/", "web")])
            .tls(&["shop.example.com", "www.example.com"], Some("shop-tls"))
            .build(),
    ]);
    s.secrets = vec![tls_secret("default", "shop-tls", &["shop.example.com"]).into()];
    let t = run(&s);
    assert_eq!(
        problems(&t),
        [
            "ingress default/a: tls[0].hosts[1]: the certificate in secret default/shop-tls is not valid for www.example.com; the default certificate is served for it"
        ]
    );
    assert!(matches!(
        site(&t, "shop.example.com").tls,
        SiteTls::Files(_)
    ));
    assert_eq!(site(&t, "www.example.com").tls, SiteTls::None);
}

#[test]
fn every_secret_looked_at_is_listed() {
    let s = world(vec![
        ingress("default", "a")
            .annotation("portcullis.dev/origin-ca-secret", "ca")
            .rule(Some("a.example.com"), vec![prefix("/", "web")])
            .tls(&["a.example.com"], Some("a-tls"))
            .build(),
    ]);
    let options = Options {
        default_certificate: Some(key("kube-system", "fallback")),
        ..Options::default()
    };
    let t = run_with(&s, &options);
    assert_eq!(
        t.secrets.iter().cloned().collect::<Vec<_>>(),
        [
            key("default", "a-tls"),
            key("default", "ca"),
            key("kube-system", "fallback")
        ]
    );
}

#[test]
fn hosts_sharing_an_acme_secret_share_one_order_when_they_route_alike() {
    let both = ingress("default", "shop")
        .rule(Some("shop.example.com"), vec![prefix("/", "web")])
        .rule(Some("www.example.com"), vec![prefix("/", "web")])
        .tls(&["shop.example.com", "www.example.com"], Some("shop-tls"))
        .build();
    let options = Options {
        acme_all: true,
        acme_issuer: true,
        ..Options::default()
    };
    let t = run_with(&world(vec![both]), &options);
    assert!(t.problems.is_empty(), "{:?}", problems(&t));
    assert_eq!(
        t.acme_secrets,
        BTreeMap::from([("shop.example.com".to_owned(), key("default", "shop-tls"))])
    );
    let shop = site(&t, "shop.example.com");
    assert!(matches!(shop.tls, SiteTls::Acme { .. }));
    let hosts: Vec<String> = shop.hosts.iter().map(ToString::to_string).collect();
    assert_eq!(
        hosts,
        ["shop.example.com", "www.example.com"],
        "one order, both names"
    );
    assert!(
        !t.config.sites.iter().any(|s| s.name == "www.example.com"),
        "no site of its own"
    );
}

#[test]
fn a_host_routing_differently_cannot_share_an_acme_secret() {
    let both = ingress("default", "shop")
        .rule(Some("shop.example.com"), vec![prefix("/", "web")])
        .rule(Some("www.example.com"), vec![prefix("/api", "web")])
        .tls(&["shop.example.com", "www.example.com"], Some("shop-tls"))
        .build();
    let options = Options {
        acme_all: true,
        acme_issuer: true,
        ..Options::default()
    };
    let t = run_with(&world(vec![both]), &options);
    assert_eq!(
        t.acme_secrets,
        BTreeMap::from([("shop.example.com".to_owned(), key("default", "shop-tls"))])
    );
    assert!(matches!(
        site(&t, "shop.example.com").tls,
        SiteTls::Acme { .. }
    ));
    assert_eq!(site(&t, "www.example.com").tls, SiteTls::None);
    assert_problem(
        &t,
        "ingress default/shop: tls[0].hosts[1]: secret default/shop-tls stores the ACME certificate of shop.example.com, whose routes differ from www.example.com's, so they cannot share one certificate; www.example.com is served the default certificate (give it a tls entry and secretName of its own)",
    );
}

#[test]
fn a_cached_translation_reuses_unchanged_secrets_and_parses_changed_ones() {
    use std::sync::Arc;

    use crate::{SecretCache, translate_cached};

    let mut s = world(vec![shop(Some("shop-tls"))]);
    s.secrets = vec![
        tls_secret("default", "shop-tls", &["shop.example.com"]).into(),
        tls_secret("default", "blog-tls", &["blog.example.com"]).into(),
    ];
    let (shop_path, blog_path) = (
        PathBuf::from("secret:default/shop-tls"),
        PathBuf::from("secret:default/blog-tls"),
    );
    let options = Options::default();
    let mut cache = SecretCache::default();
    let first = translate_cached(&base(), &s, &options, &mut cache);
    assert_eq!(first.config, run(&s).config, "the same as without a cache");
    assert_eq!(cache.len(), 2);
    assert_eq!(first.preloaded.len(), 2);
    let built = |t: &crate::Translated, path: &PathBuf| t.preloaded.key(path).unwrap().clone();
    // The key built is the one for the certificate in the config.
    assert_eq!(
        built(&first, &shop_path).cert,
        files(&site(&first, "shop.example.com").tls).chain
    );

    // Unchanged: nothing is parsed or loaded again.
    let again = translate_cached(&base(), &s, &options, &mut cache);
    assert_eq!(again.config, first.config);
    assert!(Arc::ptr_eq(
        &built(&first, &shop_path),
        &built(&again, &shop_path)
    ));
    assert!(Arc::ptr_eq(
        &built(&first, &blog_path),
        &built(&again, &blog_path)
    ));

    // A new object with the same data (a re-list) is still the same; new data is parsed.
    s.secrets[0] = Arc::new((*s.secrets[0]).clone());
    s.secrets[1] = tls_secret("default", "blog-tls", &["blog.example.com"]).into();
    let third = translate_cached(&base(), &s, &options, &mut cache);
    assert_eq!(third.config, run(&s).config);
    assert!(Arc::ptr_eq(
        &built(&first, &shop_path),
        &built(&third, &shop_path)
    ));
    assert!(!Arc::ptr_eq(
        &built(&first, &blog_path),
        &built(&third, &blog_path)
    ));
    assert_eq!(
        built(&third, &blog_path).cert,
        files(&site(&third, "blog.example.com").tls).chain
    );

    // A Secret becoming broken is a problem at once, and nothing is preloaded for it.
    let (crt, _) = cert_pem(&["shop.example.com"]);
    let (_, other_key) = cert_pem(&["shop.example.com"]);
    s.secrets[0] = secret_with(
        "default",
        "shop-tls",
        "kubernetes.io/tls",
        &[
            ("tls.crt", crt.as_bytes()),
            ("tls.key", other_key.as_bytes()),
        ],
    )
    .into();
    let broken = translate_cached(&base(), &s, &options, &mut cache);
    assert_eq!(problems(&broken), problems(&run(&s)));
    assert!(!problems(&broken).is_empty());
    assert!(broken.preloaded.key(&shop_path).is_none());

    // Only what the last translation read is kept.
    let none = translate_cached(&base(), &world(Vec::new()), &options, &mut cache);
    assert!(none.preloaded.is_empty());
    assert!(cache.is_empty());
}
