//! Translation tests: Kubernetes objects built in code (see `build`), translated, and the
//! resulting `Config` checked against what the Ingress API and the brief say.

use std::collections::HashSet;

use portcullis_config::{Action, Config, HostPattern, SiteTls, Transport, defaults};

mod annotations;
mod backends;
mod build;
mod classes;
mod rules;
mod scale;
mod tls;

/// The invariants the file validator enforces on a config, checked on every config a test
/// translates: the gateway must accept whatever the cluster says.
pub(super) fn invariants(config: &Config) {
    let mut names = HashSet::new();
    let mut hosts = HashSet::new();
    let mut defaults_seen = 0;
    for site in &config.sites {
        assert!(
            names.insert(site.name.as_str()),
            "site name {} twice",
            site.name
        );
        assert!(!site.hosts.is_empty(), "site {} has no hosts", site.name);
        for h in &site.hosts {
            assert!(hosts.insert(h.clone()), "host {h} claimed twice");
        }
        defaults_seen += usize::from(site.default);
        if matches!(site.tls, SiteTls::Acme { .. }) {
            for h in &site.hosts {
                assert!(
                    !matches!(h, HostPattern::Wildcard(_)) && !h.is_ip(),
                    "ACME site {} has host {h}",
                    site.name
                );
            }
        }
        if let Some(hsts) = &site.hsts
            && hsts.preload
        {
            assert!(hsts.include_subdomains && hsts.max_age >= defaults::HSTS_MAX_AGE);
        }
        assert_ne!(site.max_body_size, Some(0));
        let mut paths = HashSet::new();
        for r in &site.routes {
            assert!(r.path.starts_with('/'), "route {}", r.path);
            assert!(
                r.path
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#'),
                "route {}",
                r.path
            );
            assert!(
                paths.insert((r.path.clone(), r.path_match)),
                "route {} twice",
                r.path
            );
            assert!(!(r.strip_prefix && r.rewrite.is_some()));
            if let Some(rw) = &r.rewrite {
                assert!(rw.starts_with('/'));
            }
            assert_ne!(r.max_body_size, Some(0));
            action(&r.action);
        }
        if let Some(a) = &site.fallback {
            action(a);
        }
    }
    assert!(defaults_seen <= 1, "{defaults_seen} default sites");
}

fn action(a: &Action) {
    match a {
        Action::Proxy(o) => {
            let mut urls = HashSet::new();
            for s in &o.servers {
                assert!(urls.insert(s.url.as_str()), "server {} twice", s.url);
                let scheme = if matches!(o.transport, Transport::Tls(_)) {
                    "https://"
                } else {
                    "http://"
                };
                assert!(s.url.starts_with(scheme), "{} in a {scheme} origin", s.url);
                assert!(s.port > 0 && (1..=1000).contains(&s.weight));
            }
            if o.h2c {
                assert_eq!(o.transport, Transport::Plain, "h2c over TLS");
            }
            assert!(o.retries.attempts <= 10);
            assert!(o.retries.on_status.iter().all(|c| (500..=599).contains(c)));
            assert!(!o.timeouts.connect.is_zero() && !o.timeouts.response_header.is_zero());
            if let Transport::Tls(tls) = &o.transport
                && let Some(name) = &tls.server_name
            {
                assert!(matches!(
                    HostPattern::parse(name),
                    Ok(HostPattern::Exact(_))
                ));
            }
        }
        Action::Redirect(r) => {
            assert!([301, 302, 303, 307, 308].contains(&r.status));
            assert!(!r.location.is_empty());
        }
        Action::Respond(r) => assert!((200..=599).contains(&r.status)),
    }
}
