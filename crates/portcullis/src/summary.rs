//! The short summary `portcullis check` prints for a valid config.

use std::fmt::Write;

use portcullis_config::{
    Action, Balance, ClusterStore, Config, Origin, PathMatch, PlainHttp, ProxyProtocolVersion,
    Transport, Verify,
};
use portcullis_tls::{CertSource, SiteCerts, format_time};

/// Renders sites, hosts, certificate source and expiry, origins and modes.
pub fn render(config: &Config, certs: &SiteCerts) -> String {
    let mut out = String::new();
    let addr = |a: Option<std::net::SocketAddr>| a.map_or("off".to_owned(), |a| a.to_string());
    let _ = writeln!(
        out,
        "listen: https {}, http {}, admin {}",
        config.listen.https,
        addr(config.listen.http),
        config
            .admin
            .listen
            .as_ref()
            .map_or("off".to_owned(), ToString::to_string)
    );
    if let Some(cluster) = &config.cluster {
        let store = match &cluster.store {
            ClusterStore::Etcd(e) => format!("etcd {} under {}", e.endpoints.join(", "), e.prefix),
            ClusterStore::Kubernetes(k) => format!("kubernetes namespace {}", k.namespace),
        };
        let _ = writeln!(
            out,
            "cluster: {store} as {} (lease {}s{}); ACME certificates shared by one issuer",
            cluster.node_name,
            cluster.lease.as_secs(),
            if cluster.encryption_key.is_some() {
                ", keys encrypted"
            } else {
                ""
            }
        );
    }
    for (site, cert) in config.sites.iter().zip(&certs.sites) {
        let default = if site.default { " (default)" } else { "" };
        let _ = writeln!(out, "site {}{default}", site.name);
        let hosts: Vec<String> = site.hosts.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "  hosts:  {}", hosts.join(", "));
        let tls = match (&cert.source, &cert.info) {
            (CertSource::File(path), Some(info)) => format!(
                "file {} (expires {}, issuer {})",
                path.display(),
                format_time(info.not_after),
                info.issuer
            ),
            (CertSource::File(path), None) => format!("file {}", path.display()),
            (CertSource::Acme, _) => format!(
                "acme from {} ({}, challenge {:?}; stored in {})",
                config.acme.directory,
                match site.tls {
                    portcullis_config::SiteTls::Acme {
                        fallback_local: true,
                    } => "local CA fallback until issued",
                    _ => "handshakes fail until issued",
                },
                config.acme.challenge,
                config.storage.display()
            ),
            (CertSource::Local, _) => format!(
                "local CA in {} (issued at start, re-issued weekly)",
                config.tls.local_ca_dir.display()
            ),
            (CertSource::None, _) => "none of its own (the default certificate)".to_owned(),
        };
        let _ = writeln!(out, "  tls:    {tls}");
        if let Some(h) = &site.hsts {
            let _ = writeln!(out, "  hsts:   {}", h.header_value());
        }
        if site.plain_http == PlainHttp::Serve {
            let _ = writeln!(out, "  plain HTTP: served (not redirected)");
        }
        for route in &site.routes {
            let mut notes = Vec::new();
            if route.path_match == PathMatch::Exact {
                notes.push("exact".to_owned());
            }
            if route.strip_prefix {
                notes.push("prefix stripped".to_owned());
            }
            if let Some(to) = &route.rewrite {
                notes.push(format!("rewritten to {to}"));
            }
            if !route.access.is_open() {
                notes.push("allow/deny".to_owned());
            }
            if route.plain_http == PlainHttp::Serve {
                notes.push("served over plain HTTP".to_owned());
            }
            let notes = if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join(", "))
            };
            let _ = writeln!(
                out,
                "  route {}{notes} -> {}",
                route.path,
                action(&route.action)
            );
        }
        match &site.fallback {
            Some(a) if site.routes.is_empty() => {
                let _ = writeln!(out, "  -> {}", action(a));
            }
            Some(a) => {
                let _ = writeln!(out, "  otherwise -> {}", action(a));
            }
            None => {
                let _ = writeln!(out, "  otherwise -> 404");
            }
        }
    }
    out
}

fn action(a: &Action) -> String {
    match a {
        Action::Respond(r) => format!("respond {}", r.status),
        Action::Proxy(o) => origin(o),
        Action::Redirect(r) => format!("redirect {} {}", r.status, r.location),
    }
}

fn origin(o: &Origin) -> String {
    if o.servers.is_empty() {
        return "an origin with no servers (503)".to_owned();
    }
    let mut s = format!("{} ({}", o.url, o.mode().as_str());
    if let Transport::Tls(tls) = &o.transport {
        if let Some(name) = &tls.server_name {
            let _ = write!(s, ", server name {name}");
        }
        match &tls.verify {
            Verify::Roots(r) => {
                let _ = write!(s, ", {} CA certificate(s)", r.len());
            }
            Verify::SystemRoots => s.push_str(", system roots"),
            Verify::Off => {}
        }
        if tls.client_cert.is_some() {
            s.push_str(", client certificate");
        }
    }
    if o.servers.len() > 1 {
        let balance = match &o.balance {
            Balance::RoundRobin => "round_robin",
            Balance::LeastRequests => "least_requests",
            Balance::RandomTwo => "random_two",
            Balance::Hash(_) => "hash",
            Balance::Sticky(_) => "sticky cookie",
        };
        let _ = write!(s, ", {} servers, {balance}", o.servers.len());
    }
    if o.health.active.is_some() {
        s.push_str(", health checked");
    }
    match o.proxy_protocol {
        Some(ProxyProtocolVersion::V1) => s.push_str(", PROXY protocol v1"),
        Some(ProxyProtocolVersion::V2) => s.push_str(", PROXY protocol v2"),
        None => {}
    }
    if o.h2c {
        s.push_str(", h2c");
    }
    s.push(')');
    s
}
