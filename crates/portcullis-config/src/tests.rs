mod cluster;
mod ingress;
mod origins;

use std::path::Path;

use super::*;

const PEM_CERT: &str = "-----BEGIN CERTIFICATE-----\nAAECAw==\n-----END CERTIFICATE-----\n";
const PEM_KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAECAw==\n-----END PRIVATE KEY-----\n";

fn dir_with_pems() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("site.pem"), PEM_CERT).unwrap();
    std::fs::write(dir.path().join("site.key"), PEM_KEY).unwrap();
    std::fs::write(dir.path().join("empty.pem"), "nothing here\n").unwrap();
    dir
}

fn problems(yaml: &str) -> Vec<String> {
    let dir = dir_with_pems();
    match parse(yaml, dir.path()) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems().iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(
        "sites:\n  - hosts: [example.com]\n    tls: local\n    origin: http://127.0.0.1:3000\n",
        Path::new("/etc/portcullis"),
    )
    .unwrap();
    assert_eq!(c.listen.https, "0.0.0.0:443".parse().unwrap());
    assert_eq!(c.listen.http, Some("0.0.0.0:80".parse().unwrap()));
    assert_eq!(
        c.admin.listen,
        Some(AdminListen::Tcp("127.0.0.1:9901".parse().unwrap()))
    );
    assert_eq!(c.tls.local_ca_dir, Path::new("/etc/portcullis/data/ca"));
    assert_eq!(c.limits.header_read_timeout, defaults::HEADER_READ_TIMEOUT);
    assert_eq!(c.limits.idle_timeout, defaults::IDLE_TIMEOUT);
    assert_eq!(c.limits.max_connections_per_ip, None);
    assert_eq!(
        c.limits.max_connections_per_ip,
        defaults::MAX_CONNECTIONS_PER_IP
    );
    assert_eq!(c.limits.max_body_size, None);
    let site = &c.sites[0];
    assert_eq!(site.name, "example.com");
    let Some(Action::Proxy(o)) = &site.fallback else {
        panic!("expected an origin")
    };
    assert_eq!(
        (o.servers[0].host.as_str(), o.servers[0].port, o.mode()),
        ("127.0.0.1", 3000, Mode::Flexible)
    );
    assert_eq!(o.timeouts.connect, defaults::CONNECT_TIMEOUT);
}

#[test]
fn full_contract_example_parses() {
    let dir = dir_with_pems();
    let yaml = r#"
listen:
  https: 127.0.0.1:8443
  http: off
admin:
  listen: off
tls:
  local_ca_dir: /var/lib/portcullis/ca
sites:
  - hosts: [example.com, "*.example.com"]
    tls: { cert: site.pem, key: site.key }
    hsts: { max_age: 2y, include_subdomains: true }
    origin:
      url: https://10.0.0.5:8443
      mode: strict
      ca: site.pem
      server_name: app.internal
      client_cert: { cert: site.pem, key: site.key }
      timeouts: { connect: 2s, response_header: 30s }
      verify_failure_status: 526
    routes:
      - path: /api
        origin: { url: http://127.0.0.1:3001 }
      - path: /api/v2/
        strip_prefix: true
        origin: https://[::1]:9443
      - path: /maintenance
        respond: { status: 503, body: "back soon" }
"#
    .replace("2y", "730d");
    let c = parse(&yaml, dir.path()).unwrap();
    assert_eq!(c.listen.http, None);
    assert_eq!(c.admin.listen, None);
    let site = &c.sites[0];
    assert_eq!(
        site.hosts,
        vec![
            HostPattern::Exact("example.com".into()),
            HostPattern::Wildcard("example.com".into())
        ]
    );
    assert_eq!(
        site.hsts.as_ref().unwrap().header_value(),
        "max-age=63072000; includeSubDomains"
    );
    let Some(Action::Proxy(o)) = &site.fallback else {
        panic!()
    };
    assert_eq!(o.mode(), Mode::Strict);
    assert_eq!(o.verify_failure_status, 526);
    let Transport::Tls(tls) = &o.transport else {
        panic!()
    };
    assert_eq!(tls.server_name.as_deref(), Some("app.internal"));
    assert!(matches!(tls.verify, Verify::Roots(ref r) if r.len() == 1));
    assert!(tls.client_cert.is_some());
    let paths: Vec<_> = site.routes.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/api", "/api/v2/", "/maintenance"]);
    let Action::Proxy(v6) = &site.routes[1].action else {
        panic!()
    };
    assert_eq!(
        (v6.servers[0].host.as_str(), v6.mode()),
        ("::1", Mode::Strict)
    );
}

/// Each broken config must be refused with a message that names the exact key.
#[test]
fn broken_configs_name_the_key() {
    let site = "hosts: [a.test]\n    tls: local\n    origin: http://127.0.0.1:1\n";
    let cases: &[(&str, &str)] = &[
        ("lisen: {}\nsites: []", "lisen: unknown key `lisen`"),
        (
            "listen: { htps: 1.2.3.4:1 }",
            "listen.htps: unknown field `htps`",
        ),
        (
            "listen: { https: nowhere }",
            "listen.https: `nowhere` is not an address",
        ),
        (
            "listen: { https: ':99999' }",
            "listen.https: `:99999` has an invalid port",
        ),
        ("sites: []", "sites: at least one site is required"),
        (
            "sites:\n  - hosts: [a.test]\n    tls: local\n    origin: { url: http://127.0.0.1:1, mode: strct }",
            "sites[0].origin.mode: unknown variant `strct`",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    tls: local\n    origin: { url: http://127.0.0.1:1, mode: strict }",
            "sites[0].origin.mode: `strict` uses TLS to the origin but the URL is http://",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    tls: local\n    origin: { url: https://127.0.0.1:1, mode: flexible }",
            "sites[0].origin.mode: `flexible` is plaintext HTTP",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    tls: local\n    origin: ftp://127.0.0.1:1",
            "sites[0].origin.url: scheme must be http or https",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    tls: local\n    origin: 'http://exa mple'",
            "sites[0].origin.url: invalid URL",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    tls: local\n    origin: http://127.0.0.1:1/app",
            "sites[0].origin.url: `http://127.0.0.1:1/app` has a path",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    tls: { cert: missing.pem, key: site.key }\n    origin: http://127.0.0.1:1",
            "sites[0].tls.cert: cannot read",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    tls: { cert: empty.pem, key: site.key }\n    origin: http://127.0.0.1:1",
            "sites[0].tls.cert: no certificate",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    tls: { cert: site.pem, key: site.pem }\n    origin: http://127.0.0.1:1",
            "sites[0].tls.key: no private key",
        ),
        (
            &format!("sites:\n  - {site}  - {site}"),
            "sites[1].hosts[0]: `a.test` is already claimed by sites[0]",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    tls: local\n    origin: { url: http://127.0.0.1:1, ca: site.pem }",
            "sites[0].origin.ca: only applies to TLS origins",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    tls: local\n    origin: { url: https://127.0.0.1:1, mode: full, ca: site.pem }",
            "sites[0].origin.ca: `full` does not verify",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    tls: local\n    origin: { url: https://127.0.0.1:1, ca: nope.pem }",
            "sites[0].origin.ca: cannot read",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    tls: local\n    origin: { url: http://127.0.0.1:1, timeouts: { connect: 5 parsecs } }",
            "sites[0].origin.timeouts.connect: invalid duration",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    tls: local\n    origin: { url: http://127.0.0.1:1, timeouts: { connect: 0s } }",
            "sites[0].origin.timeouts.connect: must be greater than zero",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    tls: local\n    origin: { url: https://127.0.0.1:1, verify_failure_status: 500 }",
            "sites[0].origin.verify_failure_status: must be 502 or 526",
        ),
        (
            "sites:\n  - hosts: ['a.*.test']\n    tls: local\n    origin: http://127.0.0.1:1",
            "sites[0].hosts[0]: invalid host `a.*.test`",
        ),
        (
            "sites:\n  - hosts: []\n    tls: local\n    origin: http://127.0.0.1:1",
            "sites[0].hosts: at least one host is required",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    origin: http://127.0.0.1:1",
            "sites[0].tls: required",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    tls: lcoal\n    origin: http://127.0.0.1:1",
            "sites[0].tls: unknown value `lcoal`",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    tls: local",
            "sites[0]: a site needs an `origin`, a `respond`, a `redirect`, or `routes`",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    tls: local\n    routes:\n      - path: api\n        respond: {}",
            "sites[0].routes[0].path: must start with `/`",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    tls: local\n    routes:\n      - path: /a\n        respond: {}\n      - path: /a\n        respond: {}",
            "sites[0].routes[1].path: `/a` is already routed by sites[0].routes[0]",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    tls: local\n    routes:\n      - path: /a\n        respond: { status: 42 }",
            "sites[0].routes[0].respond.status: must be between 200 and 599",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    tls: local\n    routes:\n      - path: /a\n        respond: { stauts: 200 }",
            "sites[0].routes[0].respond.stauts: unknown field `stauts`",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    tls: local\n    hsts: { preload: true }\n    origin: http://127.0.0.1:1",
            "sites[0].hsts.preload: preload lists require",
        ),
        (
            "sites:\n  - hosts: [a.test]\n    tls: local\n    default: true\n    origin: http://127.0.0.1:1\n  - hosts: [b.test]\n    tls: local\n    default: true\n    origin: http://127.0.0.1:1",
            "sites[1].default: only one site can be the default; sites[0] already is",
        ),
        (
            "listen: { https: 127.0.0.1:1, http: 127.0.0.1:1 }\nsites: []",
            "listen.http: same address as `listen.https`",
        ),
        ("sites: {a: 1}", "sites: must be a list of sites"),
        ("[1, 2]", "the config must be a map"),
        ("sites: [\n", "not valid YAML"),
        (
            "limits: { max_header_size: 1KiB }\nsites: []",
            "limits.max_header_size: must be between 8KiB and 16MiB",
        ),
    ];
    for (yaml, expected) in cases {
        let got = problems(yaml);
        assert!(
            got.iter().any(|p| p.starts_with(expected)),
            "config:\n{yaml}\nexpected a problem starting with {expected:?}, got {got:#?}"
        );
    }
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let got = problems(
        "sites:\n  - hosts: [a.test]\n    tls: lcoal\n    origin: http://127.0.0.1:1\n  - hosts: [b.test]\n    tls: local\n    origin: { url: http://127.0.0.1:1, mode: full }\n  - hosts: [c.test]\n    tls: local\n    origin: { url: http://127.0.0.1:1, bogus: 1 }\n",
    );
    let keys: Vec<&str> = got.iter().map(|p| p.split(':').next().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "sites[0].tls",
            "sites[1].origin.mode",
            "sites[2].origin.bogus"
        ],
        "{got:#?}"
    );
}

#[test]
fn load_reports_missing_file_and_resolves_relative_paths() {
    let err = load(Path::new("/nonexistent/portcullis.yaml")).unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot read config file /nonexistent/portcullis.yaml")
    );

    let dir = dir_with_pems();
    let path = dir.path().join("gw.yaml");
    std::fs::write(
        &path,
        "sites:\n  - hosts: [a.test]\n    tls: { cert: site.pem, key: site.key }\n    respond: { body: hi }\n",
    )
    .unwrap();
    let c = load(&path).unwrap();
    let SiteTls::Files(ck) = &c.sites[0].tls else {
        panic!()
    };
    assert_eq!(ck.cert_path, dir.path().join("site.pem"));
}

#[test]
fn acme_settings_and_defaults() {
    let c = parse(
        "sites:\n  - hosts: [a.test]\n    tls: acme\n    respond: {}\n",
        Path::new("/srv/gw"),
    )
    .unwrap();
    assert_eq!(c.acme.directory, defaults::ACME_DIRECTORY);
    assert_eq!(c.acme.challenge, Challenge::TlsAlpn01);
    assert_eq!(c.storage, Path::new("/srv/gw/data"));
    assert_eq!(
        c.sites[0].tls,
        SiteTls::Acme {
            fallback_local: false
        }
    );

    let dir = dir_with_pems();
    let c = parse(
        r#"
storage: /var/lib/portcullis
acme:
  directory: letsencrypt-staging
  email: ops@example.com
  ca_bundle: site.pem
  challenge: http-01
  eab: { kid: kid-1, hmac_key: aGVsbG8 }
  renew_before: 30d
  backoff: { initial: 1s, max: 10s }
  concurrency: 2
sites:
  - hosts: [a.test, www.a.test]
    tls: { acme: true, fallback: local }
    respond: {}
"#,
        dir.path(),
    )
    .unwrap();
    assert_eq!(c.acme.directory, defaults::ACME_STAGING_DIRECTORY);
    assert_eq!(c.acme.email.as_deref(), Some("ops@example.com"));
    assert_eq!(c.acme.ca_bundle.len(), 1);
    assert_eq!(c.acme.challenge, Challenge::Http01);
    let eab = c.acme.eab.as_ref().unwrap();
    assert_eq!(
        (eab.kid.as_str(), eab.hmac_key.as_slice()),
        ("kid-1", &b"hello"[..])
    );
    assert_eq!(
        c.acme.renew_before,
        Some(std::time::Duration::from_secs(30 * 86_400))
    );
    assert_eq!(c.acme.backoff_initial, std::time::Duration::from_secs(1));
    assert_eq!(c.acme.concurrency, 2);
    assert_eq!(c.storage, Path::new("/var/lib/portcullis"));
    assert_eq!(
        c.sites[0].tls,
        SiteTls::Acme {
            fallback_local: true
        }
    );
    assert!(
        !format!("{eab:?}").contains("hello"),
        "the HMAC key stays out of Debug output"
    );
}

#[test]
fn limits_can_be_set_and_unlimited_per_ip() {
    let c = parse(
        "limits: { idle_timeout: 90s, max_body_size: 1MiB, max_connections: 100, max_connections_per_ip: 0, h2_max_concurrent_streams: 10, h2_max_resets: 50 }\nsites:\n  - hosts: [a.test]\n    tls: local\n    max_body_size: 2KiB\n    respond: {}\n",
        Path::new("."),
    )
    .unwrap();
    let l = &c.limits;
    assert_eq!(l.idle_timeout, std::time::Duration::from_secs(90));
    assert_eq!(l.max_body_size, Some(1 << 20));
    assert_eq!((l.max_connections, l.max_connections_per_ip), (100, None));
    assert_eq!((l.h2_max_concurrent_streams, l.h2_max_resets), (10, 50));
    assert_eq!(c.sites[0].max_body_size, Some(2048));
}

#[test]
fn upgrades_default_to_websocket_and_routes_inherit_the_sites() {
    let c = parse(
        "sites:
  - hosts: [a.example]
    tls: local
    origin: http://127.0.0.1:3000
    routes:
      - path: /plain
        origin: http://127.0.0.1:3001
  - hosts: [b.example]
    tls: local
    origin: http://127.0.0.1:3000
    upgrades: [WebSocket, foo]
    routes:
      - path: /inherits
        origin: http://127.0.0.1:3001
      - path: /none
        origin: http://127.0.0.1:3001
        upgrades: []
",
        Path::new("/etc/portcullis"),
    )
    .unwrap();
    let a = &c.sites[0];
    assert_eq!(a.upgrades, Upgrades::default());
    assert!(a.upgrades.allows("websocket") && a.upgrades.allows("WebSocket/13"));
    assert!(!a.upgrades.allows("h2c") && !a.upgrades.allows("foo"));
    assert_eq!(a.routes[0].upgrades, Upgrades::default());
    let b = &c.sites[1];
    assert_eq!(b.upgrades.names().collect::<Vec<_>>(), ["websocket", "foo"]);
    assert_eq!(b.routes[0].upgrades, b.upgrades);
    assert_eq!(b.routes[1].upgrades, Upgrades::none());
    assert!(!b.routes[1].upgrades.allows("websocket"));
}

#[test]
fn h2c_and_non_tokens_can_never_be_upgrades() {
    let p = problems(
        "sites:
  - hosts: [a.example]
    tls: local
    origin: http://127.0.0.1:3000
    upgrades: [websocket, h2c]
    routes:
      - path: /x
        origin: http://127.0.0.1:3001
        upgrades: [websocket, H2, 'web socket', websocket]
",
    );
    assert_eq!(p.len(), 4, "{p:#?}");
    assert!(
        p[0].starts_with("sites[0].upgrades[1]: `h2c` can never pass"),
        "{p:#?}"
    );
    assert!(p[1].starts_with("sites[0].routes[0].upgrades[1]: `H2` can never pass"));
    assert!(
        p[2].starts_with("sites[0].routes[0].upgrades[2]: `web socket` is not a protocol name")
    );
    assert!(p[3].starts_with("sites[0].routes[0].upgrades[3]: `websocket` is listed twice"));
}

/// One site, which every valid config needs.
const SITE: &str = "sites: [{hosts: [a.test], tls: local, respond: {}}]\n";

#[test]
fn admin_token_and_allowed_hosts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "s3cret-token\n").unwrap();
    std::fs::write(dir.path().join("empty"), "\n").unwrap();
    let c = parse(
        &format!("admin: {{listen: '0.0.0.0:9901', token_file: ./token, allowed_hosts: [Admin.GW.svc., '[::1]', 10.0.0.5]}}\n{SITE}"),
        dir.path(),
    )
    .unwrap();
    let token = c.admin.token.as_ref().unwrap();
    assert!(token.matches(b"s3cret-token"));
    assert!(!token.matches(b"s3cret-tokeN"));
    assert!(!token.matches(b"s3cret"));
    assert_eq!(c.admin.allowed_hosts, ["admin.gw.svc", "::1", "10.0.0.5"]);
    // The token stays out of `Debug` output, which error paths and logs may print.
    assert!(!format!("{c:?}").contains("s3cret"));
    assert_eq!(c.admin.exposure_warning(), None);

    let err = |yaml: &str| match parse(&format!("{yaml}{SITE}"), dir.path()) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems().iter().map(ToString::to_string).collect(),
    };
    let empty = err("admin: {token_file: empty}\n");
    assert_eq!(empty.len(), 1, "{empty:?}");
    assert!(
        empty[0].starts_with("admin.token_file: ") && empty[0].contains("is empty"),
        "{empty:?}"
    );
    // Callers tell the cases apart by kind, not by text.
    let read = |name: &str| crate::AdminToken::read(&dir.path().join(name)).unwrap_err();
    assert!(read("nowhere").is_read());
    assert!(matches!(read("empty"), crate::TokenError::Empty { .. }));
    assert_eq!(read("empty").path(), dir.path().join("empty"));
    let missing = err("admin: {token_file: nowhere}\n");
    assert!(
        missing[0].starts_with("admin.token_file: cannot read"),
        "{missing:?}"
    );
    let bad_host = err("admin: {allowed_hosts: ['http://x.test:9901']}\n");
    assert!(
        bad_host[0].starts_with("admin.allowed_hosts[0]: "),
        "{bad_host:?}"
    );
}

#[test]
fn an_exposed_admin_listener_without_a_token_is_warned_about() {
    let c = parse(
        &format!("admin: {{listen: '0.0.0.0:9901'}}\n{SITE}"),
        Path::new("/"),
    )
    .unwrap();
    let warning = c.admin.exposure_warning().unwrap().to_string();
    assert!(
        warning.starts_with("admin.listen: 0.0.0.0:9901 "),
        "{warning}"
    );
    assert!(warning.contains("admin.token_file"), "{warning}");
    let loopback = parse(
        &format!("admin: {{listen: '[::1]:9901'}}\n{SITE}"),
        Path::new("/"),
    )
    .unwrap();
    assert_eq!(loopback.admin.exposure_warning(), None);
}

#[test]
fn the_admin_listener_may_be_a_unix_socket() {
    let c = parse(
        &format!("admin: {{listen: 'unix:./run/admin.sock'}}\n{SITE}"),
        Path::new("/etc/portcullis"),
    )
    .unwrap();
    let listen = c.admin.listen.as_ref().unwrap();
    assert_eq!(
        listen,
        &AdminListen::Unix("/etc/portcullis/run/admin.sock".into())
    );
    assert_eq!(listen.to_string(), "unix:/etc/portcullis/run/admin.sock");
    // Only processes of this machine reach it.
    assert_eq!(c.admin.exposure_warning(), None);
    let long = format!("admin: {{listen: 'unix:/{}'}}\n{SITE}", "a".repeat(120));
    let err = parse(&long, Path::new("/")).unwrap_err().problems()[0].to_string();
    assert!(err.starts_with("admin.listen: "), "{err}");
    let err = parse(
        &format!("admin: {{listen: 'unix:'}}\n{SITE}"),
        Path::new("/"),
    )
    .unwrap_err()
    .problems()[0]
        .to_string();
    assert!(err.starts_with("admin.listen: "), "{err}");
}

#[test]
fn a_base_config_has_no_sites_and_refuses_any() {
    let dir = std::path::Path::new("/tmp");
    let base = crate::parse_base("listen: { https: 127.0.0.1:8443 }\n", dir).unwrap();
    assert!(base.sites.is_empty());
    assert_eq!(base.listen.https.port(), 8443);
    let empty = crate::parse_base("sites: []\n", dir).unwrap();
    assert!(empty.sites.is_empty());
    let err = crate::parse_base(
        "sites:\n  - hosts: [a.test]\n    tls: local\n    respond: {}\n",
        dir,
    )
    .unwrap_err();
    assert_eq!(err.problems()[0].key, "sites");
    // A file config still needs a site.
    assert!(crate::parse("listen: { https: 127.0.0.1:8443 }\n", dir).is_err());
}

#[test]
fn origin_with_servers_is_what_a_file_with_only_servers_gives() {
    for servers in [
        "[{url: \"http://10.0.0.1:80\"}]",
        "[{url: \"http://10.0.0.1:80\"}, {url: \"http://10.0.0.2:80\"}]",
    ] {
        let c = crate::parse(
            &format!(
                "sites:\n  - hosts: [a.test]\n    tls: local\n    origin:\n      servers: {servers}\n"
            ),
            std::path::Path::new("/tmp"),
        )
        .unwrap();
        let Some(Action::Proxy(parsed)) = &c.sites[0].fallback else {
            panic!("not an origin");
        };
        let built =
            Origin::with_servers(parsed.url.clone(), parsed.servers.clone(), Transport::Plain);
        assert_eq!(&built, &**parsed, "{servers}");
    }
}

#[test]
fn mixed_content_rewrite_takes_extra_hosts_validated_like_site_hosts() {
    let site = |extra: &str| {
        format!("sites:\n  - hosts: [example.com]\n    tls: local\n    respond: {{}}\n{extra}")
    };
    let c = parse(
        &site("    mixed_content: rewrite\n    rewrite: { hosts: [cdn.example.net, '*.Static.example.org', 192.0.2.7] }\n"),
        Path::new("."),
    )
    .unwrap();
    assert_eq!(
        c.sites[0].mixed_content,
        MixedContent::Rewrite {
            hosts: vec![
                HostPattern::Exact("cdn.example.net".into()),
                HostPattern::Wildcard("static.example.org".into()),
                HostPattern::Exact("192.0.2.7".into()),
            ]
        }
    );
    let c = parse(&site("    mixed_content: rewrite\n"), Path::new(".")).unwrap();
    assert_eq!(
        c.sites[0].mixed_content,
        MixedContent::Rewrite { hosts: vec![] },
        "`rewrite:` is optional: the gateway's own HTTPS hosts are rewritten anyway"
    );
    let c = parse(&site("    mixed_content: upgrade\n"), Path::new(".")).unwrap();
    assert_eq!(c.sites[0].mixed_content, MixedContent::Upgrade);

    let bad = problems(&site(
        "    mixed_content: rewrite\n    rewrite: { hosts: [ok.example, 'bad host', a.*.example, ok.example] }\n",
    ));
    assert_eq!(bad.len(), 3, "{bad:?}");
    assert!(bad[0].starts_with("sites[0].rewrite.hosts[1]"), "{bad:?}");
    assert!(bad[1].starts_with("sites[0].rewrite.hosts[2]"), "{bad:?}");
    assert!(
        bad[2].starts_with("sites[0].rewrite.hosts[3]") && bad[2].contains("twice"),
        "{bad:?}"
    );

    for mode in [
        "",
        "    mixed_content: upgrade\n",
        "    mixed_content: off\n",
    ] {
        let bad = problems(&site(&format!(
            "{mode}    rewrite: {{ hosts: [cdn.example.net] }}\n"
        )));
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(
            bad[0].starts_with("sites[0].rewrite:") && bad[0].contains("mixed_content: rewrite"),
            "{bad:?}"
        );
    }
    let bad = problems(&site(
        "    mixed_content: rewrite\n    rewrite: { host: [x.example] }\n",
    ));
    assert!(bad.iter().any(|p| p.contains("rewrite")), "{bad:?}");
}

#[test]
fn many_sites_get_their_own_certificate_files_and_problems_in_site_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = String::from("sites:\n");
    for i in 0..300 {
        let pem = |label: &str, n: u32| {
            format!("-----BEGIN {label}-----\n{n:08}\n-----END {label}-----\n")
        };
        std::fs::write(dir.path().join(format!("{i}.pem")), pem("CERTIFICATE", i)).unwrap();
        std::fs::write(dir.path().join(format!("{i}.key")), pem("PRIVATE KEY", i)).unwrap();
        yaml.push_str(&format!(
            "  - hosts: [s{i}.test]\n    tls: {{ cert: {i}.pem, key: {i}.key }}\n    respond: {{}}\n"
        ));
    }
    let config = parse(&yaml, dir.path()).unwrap();
    for (i, site) in config.sites.iter().enumerate() {
        let SiteTls::Files(files) = &site.tls else {
            panic!("site {i}: {:?}", site.tls)
        };
        let want = format!("{i:08}");
        assert_eq!(files.cert_path, dir.path().join(format!("{i}.pem")));
        assert_eq!(files.chain.len(), 1);
        // Both were decoded from `want`: the same bytes, each site its own.
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let decoded = CertificateDer::pem_slice_iter(
            format!("-----BEGIN CERTIFICATE-----\n{want}\n-----END CERTIFICATE-----\n").as_bytes(),
        )
        .next()
        .unwrap()
        .unwrap();
        assert_eq!(files.chain[0], decoded, "site {i}");
        assert_eq!(files.key.secret_der(), decoded.as_ref(), "site {i}");
    }
    std::fs::write(dir.path().join("7.pem"), "nothing here\n").unwrap();
    std::fs::remove_file(dir.path().join("250.key")).unwrap();
    let problems: Vec<String> = match parse(&yaml, dir.path()) {
        Ok(_) => panic!("a broken certificate and a missing key were taken"),
        Err(e) => e.problems().iter().map(|p| p.key.clone()).collect(),
    };
    assert_eq!(problems, ["sites[7].tls.cert", "sites[250].tls.key"]);
}

#[test]
fn a_reload_reads_again_only_the_certificate_files_that_changed() {
    use crate::pem::READS;

    let reads = |f: &dyn Fn() -> Config| {
        READS.with(|n| n.set(0));
        let c = f();
        (c, READS.with(std::cell::Cell::get))
    };
    let pem =
        |label: &str, n: u32| format!("-----BEGIN {label}-----\n{n:08}\n-----END {label}-----\n");
    let dir = tempfile::tempdir().unwrap();
    let write = |site: &str, n: u32| {
        std::fs::write(
            dir.path().join(format!("{site}.pem")),
            pem("CERTIFICATE", n),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(format!("{site}.key")),
            pem("PRIVATE KEY", n),
        )
        .unwrap();
    };
    write("a", 1);
    write("b", 2);
    let path = dir.path().join("gw.yaml");
    std::fs::write(
        &path,
        "sites:\n\
         \x20 - hosts: [a.test]\n    tls: { cert: a.pem, key: a.key }\n    respond: {}\n\
         \x20 - hosts: [b.test]\n    tls: { cert: b.pem, key: b.key }\n    respond: {}\n",
    )
    .unwrap();
    let stamps = |c: &Config, i: usize| match &c.sites[i].tls {
        SiteTls::Files(f) => f.stamps.as_deref().copied(),
        other => panic!("{other:?}"),
    };
    // Just written: too recent to trust, so a reload reads them again.
    let (fresh, n) = reads(&|| load(&path).unwrap());
    assert_eq!(n, 4);
    assert_eq!(stamps(&fresh, 0), None);
    let (_, n) = reads(&|| load_reusing(&path, Some(&fresh)).unwrap());
    assert_eq!(n, 4);

    // Old enough: trusted, and nothing is read again while nothing changed.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (first, n) = reads(&|| load(&path).unwrap());
    assert_eq!(n, 4);
    assert!(stamps(&first, 0).is_some() && stamps(&first, 1).is_some());
    let (same, n) = reads(&|| load_reusing(&path, Some(&first)).unwrap());
    assert_eq!(n, 0);
    assert_eq!(same, first);
    assert_eq!(stamps(&same, 1), stamps(&first, 1));

    // `b` rewritten: only its two files are read, and the new certificate is taken.
    write("b", 3);
    let (next, n) = reads(&|| load_reusing(&path, Some(&same)).unwrap());
    assert_eq!(n, 2);
    assert_eq!(next.sites[0], first.sites[0]);
    assert_ne!(next.sites[1], first.sites[1]);
    assert_eq!(next, load(&path).unwrap());
    // Too recent again: read at the next reload too.
    let (_, n) = reads(&|| load_reusing(&path, Some(&next)).unwrap());
    assert_eq!(n, 2);

    // `a` replaced by another file of the same content (a rename): read again.
    let tmp = dir.path().join("a.pem.new");
    std::fs::write(&tmp, pem("CERTIFICATE", 1)).unwrap();
    std::fs::rename(&tmp, dir.path().join("a.pem")).unwrap();
    let (_, n) = reads(&|| load_reusing(&path, Some(&first)).unwrap());
    assert_eq!(n, 2 + 2, "a's pair and b's pair");
}
