//! Origins with several servers: balancing, health, retries, PROXY protocol, h2c, and the
//! edge's trusted proxies.

use std::path::Path;
use std::time::Duration;

use super::problems;
use crate::*;

fn origin(yaml_origin: &str) -> Origin {
    let c = parse(
        &format!("sites:\n  - hosts: [a.test]\n    tls: local\n    origin: {yaml_origin}\n"),
        Path::new("."),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    match &c.sites[0].fallback {
        Some(Action::Proxy(o)) => (**o).clone(),
        other => panic!("not an origin: {other:?}"),
    }
}

#[test]
fn a_single_url_is_one_server_with_no_retries_and_no_ejection() {
    let o = origin("http://127.0.0.1:3000");
    assert_eq!(o.servers.len(), 1);
    assert_eq!(o.servers[0].weight, 1);
    assert_eq!(o.balance, Balance::RoundRobin);
    assert_eq!(o.health.passive, None);
    assert_eq!(o.health.active, None);
    assert_eq!(o.retries.attempts, 0);
    assert!(!o.h2c);
    assert_eq!(o.proxy_protocol, None);
}

#[test]
fn servers_get_weights_balance_health_and_retries() {
    let o = origin(
        "{ servers: [{ url: 'http://10.0.0.5:80', weight: 2 }, { url: 'http://10.0.0.6:80' }], balance: hash, hash: { key: header, name: X-User }, health: { active: { path: /healthz, interval: 1s, expect: 200-299, rise: 1 }, passive: { failures: 2 } }, retries: { attempts: 2, on: [connect, 503], budget: 50% }, proxy_protocol: v2 }",
    );
    assert_eq!(o.url, "http://10.0.0.5:80, http://10.0.0.6:80");
    assert_eq!(
        o.servers.iter().map(|s| s.weight).collect::<Vec<_>>(),
        [2, 1]
    );
    assert_eq!(o.balance, Balance::Hash(HashKey::Header("x-user".into())));
    let active = o.health.active.unwrap();
    assert_eq!(active.path, "/healthz");
    assert_eq!(active.interval, Duration::from_secs(1));
    assert_eq!(active.timeout, defaults::HEALTH_TIMEOUT);
    assert_eq!(active.expect, (200, 299));
    assert_eq!((active.rise, active.fall), (1, defaults::HEALTH_FALL));
    let passive = o.health.passive.unwrap();
    assert_eq!(passive.failures, 2);
    assert_eq!(passive.eject, defaults::PASSIVE_EJECT);
    assert_eq!(o.retries.attempts, 2);
    assert!(o.retries.on_connect && !o.retries.on_reset);
    assert_eq!(o.retries.on_status, [503]);
    assert!((o.retries.budget - 0.5).abs() < 1e-9);
    assert_eq!(o.proxy_protocol, Some(ProxyProtocolVersion::V2));
}

#[test]
fn several_servers_default_to_one_retry_and_passive_ejection() {
    let o = origin("{ servers: [{ url: 'http://a:1' }, { url: 'http://b:1' }], h2c: true }");
    assert_eq!(o.retries.attempts, 1);
    assert!(o.retries.on_connect && o.retries.on_reset);
    assert!(o.health.passive.is_some());
    assert!(o.h2c);
    assert_eq!(o.max_connections, None, "no limit unless asked");
    assert_eq!(
        origin("{ url: 'http://a:1', max_connections: 64 }").max_connections,
        Some(64)
    );
    let off = origin(
        "{ servers: [{ url: 'http://a:1' }, { url: 'http://b:1' }], health: { passive: off } }",
    );
    assert_eq!(off.health.passive, None);
}

#[test]
fn tls_servers_share_settings_and_verify_each_own_name() {
    let o = origin(
        "{ servers: [{ url: 'https://a.internal' }, { url: 'https://b.internal:8443' }], mode: full }",
    );
    assert_eq!(o.mode(), Mode::Full);
    assert_eq!(
        (o.servers[1].host.as_str(), o.servers[1].port),
        ("b.internal", 8443)
    );
    match o.transport {
        Transport::Tls(tls) => assert_eq!(tls.server_name, None),
        Transport::Plain => panic!("expected TLS"),
    }
}

#[test]
fn edge_trusted_ranges_parse_as_cidrs_or_addresses() {
    let c = parse(
        "listen: { proxy_protocol: { trusted: [10.0.0.0/8, '::1'] } }\ntrusted_proxies: [192.168.1.7/24]\nsites:\n  - hosts: [a.test]\n    tls: local\n    respond: {}\n",
        Path::new("."),
    )
    .unwrap();
    let trusted = &c.listen.proxy_protocol_trusted;
    assert!(trusted[0].contains(&"10.1.2.3".parse::<std::net::IpAddr>().unwrap()));
    assert!(trusted[1].contains(&"::1".parse::<std::net::IpAddr>().unwrap()));
    assert_eq!(c.trusted_proxies[0].to_string(), "192.168.1.0/24");
}

#[test]
fn mistakes_name_their_key() {
    let site = |o: &str| format!("sites:\n  - hosts: [a.test]\n    tls: local\n    origin: {o}\n");
    let cases: &[(String, &str)] = &[
        (
            site("{ mode: full }"),
            "sites[0].origin: an origin needs a `url` or a list of `servers`",
        ),
        (
            site("{ url: 'http://a:1', servers: [{ url: 'http://b:1' }] }"),
            "sites[0].origin: `url` and `servers` cannot both be set",
        ),
        (
            site("{ servers: [{ url: 'http://a:1' }, { url: 'https://b:1' }] }"),
            "sites[0].origin.servers[1].url: every server of an origin must use the same scheme",
        ),
        (
            site("{ servers: [{ url: 'http://a:1', weight: 0 }] }"),
            "sites[0].origin.servers[0].weight: must be at least 1",
        ),
        (
            site("{ servers: [{ url: 'http://a:1', weight: 1001 }] }"),
            "sites[0].origin.servers[0].weight: at most 1000",
        ),
        (
            site("{ servers: [{ url: 'http://a:1' }, { url: 'http://a:1' }] }"),
            "sites[0].origin.servers[1].url: `http://a:1` is listed twice",
        ),
        (
            site("{ servers: [{ url: 'ftp://a:1' }] }"),
            "sites[0].origin.servers[0].url: scheme must be http or https",
        ),
        (
            site("{ servers: [{ url: 'http://a:1' }], balance: fastest }"),
            "sites[0].origin.balance: unknown variant `fastest`",
        ),
        (
            site("{ url: 'http://a:1', balance: hash }"),
            "sites[0].origin.hash: `balance: hash` needs",
        ),
        (
            site("{ url: 'http://a:1', hash: { key: client_ip } }"),
            "sites[0].origin.hash: only applies with `balance: hash`",
        ),
        (
            site("{ url: 'http://a:1', balance: hash, hash: { key: cookie } }"),
            "sites[0].origin.hash.name: the header or cookie to hash is required",
        ),
        (
            site("{ url: 'http://a:1', health: { active: { expect: 300-200 } } }"),
            "sites[0].origin.health.active.expect: 300-200 is not a range",
        ),
        (
            site("{ url: 'http://a:1', health: { active: { path: healthz } } }"),
            "sites[0].origin.health.active.path: must be a path",
        ),
        (
            site("{ url: 'http://a:1', health: { active: { fall: 0 } } }"),
            "sites[0].origin.health.active.fall: must be at least 1",
        ),
        (
            site("{ url: 'http://a:1', health: { passive: sometimes } }"),
            "sites[0].origin.health.passive: `sometimes` is not valid",
        ),
        (
            site("{ url: 'http://a:1', retries: { on: [connect, 404] } }"),
            "sites[0].origin.retries.on[1]: 404: only 5xx",
        ),
        (
            site("{ url: 'http://a:1', retries: { on: [timeouts] } }"),
            "sites[0].origin.retries.on[0]: `timeouts` is not a retry condition",
        ),
        (
            site("{ url: 'http://a:1', retries: { budget: 120% } }"),
            "sites[0].origin.retries.budget: must be a percentage",
        ),
        (
            site("{ url: 'http://a:1', retries: { attempts: 11 } }"),
            "sites[0].origin.retries.attempts: at most 10",
        ),
        (
            site("{ url: 'http://a:1', proxy_protocol: v3 }"),
            "sites[0].origin.proxy_protocol: `v3` is not a PROXY protocol version",
        ),
        (
            site("{ url: 'https://a:1', h2c: true }"),
            "sites[0].origin.h2c: only applies to plaintext",
        ),
        (
            site("{ url: 'http://a:1', max_connections: 0 }"),
            "sites[0].origin.max_connections: must be at least 1",
        ),
        (
            site("{ url: 'http://a:1', h2c: true, proxy_protocol: v1 }"),
            "sites[0].origin.h2c: cannot be combined with `proxy_protocol`",
        ),
        (
            "listen: { proxy_protocol: { trusted: [10.0.0.0/33] } }\nsites: []\n".into(),
            "listen.proxy_protocol.trusted[0]: `10.0.0.0/33` is not an address",
        ),
        (
            "listen: { proxy_protocol: { trusted: [] } }\nsites: []\n".into(),
            "listen.proxy_protocol.trusted: list the load balancers",
        ),
        (
            "trusted_proxies: [nope]\nsites: []\n".into(),
            "trusted_proxies[0]: `nope` is not an address",
        ),
    ];
    for (yaml, expected) in cases {
        let found = problems(yaml);
        assert!(
            found.iter().any(|p| p.starts_with(expected)),
            "expected `{expected}` for\n{yaml}\ngot {found:?}"
        );
    }
}
