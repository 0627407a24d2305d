//! Our Ingresses, in merge order, into one site per host: rules into routes, `tls` into the
//! site's certificate, `defaultBackend` into its fallback. The first Ingress to claim a
//! (host, path, match), a host's certificate, its fallback or its HSTS keeps it; a later
//! different claim is a problem on the later Ingress, never silently dropped.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use portcullis_config::{
    Action, Challenge, Config, HostPattern, Hsts, PathMatch, PlainHttp, Route, Site, SiteTls,
    Upgrades,
};
use portcullis_tls::CertInfo;

use super::annotations::{self, Settings};
use super::backends;
use super::classes;
use super::index::Index;
use super::origins::{self, Template};
use super::{DEFAULT_SITE_HOST, K8sProblem, Options, Translated};
use crate::snapshot::ObjectKey;

/// Where cert-manager's (or any ACME client's) HTTP-01 tokens are asked for.
const ACME_CHALLENGE: &str = "/.well-known/acme-challenge";

/// When a plain-HTTP request is redirected to HTTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Redirects {
    /// Served over plain HTTP (`ssl-redirect: "false"`, ACME challenge paths).
    Never,
    /// When the host has TLS (the default).
    IfTls,
    /// Always (`force-ssl-redirect: "true"`).
    Always,
}

impl Redirects {
    fn plain_http(self, has_tls: bool) -> PlainHttp {
        match (self, has_tls) {
            (Redirects::Always, _) | (Redirects::IfTls, true) => PlainHttp::Redirect,
            _ => PlainHttp::Serve,
        }
    }
}

/// A value and the Ingress that set it.
struct Claimed<T> {
    owner: ObjectKey,
    value: T,
}

struct SiteBuild {
    host: HostPattern,
    /// By (path, exact).
    routes: BTreeMap<(String, bool), Claimed<(Route, Redirects)>>,
    fallback: Option<Claimed<(Action, Redirects)>>,
    /// The Secret named (none: the default certificate) and what it gave.
    tls: Option<Claimed<(Option<ObjectKey>, SiteTls)>>,
    hsts: Option<Claimed<Option<Hsts>>>,
}

impl SiteBuild {
    fn new(host: HostPattern) -> Self {
        Self {
            host,
            routes: BTreeMap::new(),
            fallback: None,
            tls: None,
            hsts: None,
        }
    }
}

pub(super) struct Builder<'a> {
    base: &'a Config,
    index: Index<'a>,
    options: &'a Options,
    problems: Vec<K8sProblem>,
    unsupported: Vec<(ObjectKey, String)>,
    /// By host as written (`shop.example.com`, `*.example.com`).
    sites: BTreeMap<String, SiteBuild>,
    default: SiteBuild,
    acme_secrets: BTreeMap<String, ObjectKey>,
    /// The base config lets sites use ACME (HTTP-01 needs the plain listener).
    acme_possible: bool,
}

fn default_host() -> HostPattern {
    HostPattern::Exact(DEFAULT_SITE_HOST.to_owned())
}

/// A rule's or tls entry's host: a DNS name or a one-label `*.` wildcard; not an IP, not
/// the default site's reserved name.
fn parse_host(text: &str) -> Result<HostPattern, String> {
    let host = HostPattern::parse(text).map_err(|e| e.to_string())?;
    if host.is_ip() {
        return Err(format!(
            "`{text}` is an IP address; an Ingress host must be a DNS name"
        ));
    }
    if host == default_host() {
        return Err(format!("`{text}` is reserved for the default site"));
    }
    Ok(host)
}

/// A path as Ingress v1 means it: Exact as written, Prefix (and ImplementationSpecific)
/// without trailing slashes. Errors name the field below the path entry.
fn normalise_path(
    path: Option<&str>,
    path_type: &str,
) -> Result<(String, PathMatch), (&'static str, String)> {
    let path_match = match path_type {
        "Exact" => PathMatch::Exact,
        "Prefix" | "ImplementationSpecific" => PathMatch::Prefix,
        other => {
            return Err((
                ".pathType",
                format!("`{other}` is not Exact, Prefix or ImplementationSpecific"),
            ));
        }
    };
    let path = path.unwrap_or_default();
    let path = if path.is_empty() { "/" } else { path };
    if !path.starts_with('/') {
        return Err((".path", format!("`{path}` must start with `/`")));
    }
    if !path
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
    {
        return Err((
            ".path",
            format!("`{path}` must be a plain path (no `?`, `#`, spaces or control characters)"),
        ));
    }
    let path = match path_match {
        PathMatch::Exact => path,
        PathMatch::Prefix => match path.trim_end_matches('/') {
            "" => "/",
            trimmed => trimmed,
        },
    };
    Ok((path.to_owned(), path_match))
}

fn is_acme_challenge(path: &str) -> bool {
    path == ACME_CHALLENGE
        || path
            .strip_prefix(ACME_CHALLENGE)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn match_name(m: PathMatch) -> &'static str {
    match m {
        PathMatch::Exact => "Exact",
        PathMatch::Prefix => "Prefix",
    }
}

impl<'a> Builder<'a> {
    pub(super) fn new(base: &'a Config, index: Index<'a>, options: &'a Options) -> Self {
        let acme_possible =
            !(base.acme.challenge == Challenge::Http01 && base.listen.http.is_none());
        Self {
            base,
            index,
            options,
            problems: Vec::new(),
            unsupported: Vec::new(),
            sites: BTreeMap::new(),
            default: SiteBuild::new(default_host()),
            acme_secrets: BTreeMap::new(),
            acme_possible,
        }
    }

    fn problem(&mut self, ingress: &ObjectKey, key: impl Into<String>, message: impl Into<String>) {
        self.problems
            .push(K8sProblem::ingress(ingress, key, message));
    }

    fn site(&mut self, host: Option<&HostPattern>) -> &mut SiteBuild {
        match host {
            None => &mut self.default,
            Some(h) => self
                .sites
                .entry(h.to_string())
                .or_insert_with(|| SiteBuild::new(h.clone())),
        }
    }

    /// Merges one Ingress (they come in merge order).
    pub(super) fn add(&mut self, ingress: &Ingress) {
        let key = classes::key(ingress);
        let read = annotations::read(ingress.metadata.annotations.as_ref());
        for (k, m) in read.problems {
            self.problem(&key, k, m);
        }
        for a in read.unsupported {
            self.unsupported.push((key.clone(), a));
        }
        let settings = read.settings;
        let mut problems = Vec::new();
        let template = origins::template(&mut self.index, &key, &settings, &mut problems);
        for (k, m) in problems {
            self.problem(&key, k, m);
        }
        let Some(spec) = ingress.spec.as_ref() else {
            return;
        };
        let redirects = if settings.force_ssl_redirect {
            Redirects::Always
        } else if settings.ssl_redirect {
            Redirects::IfTls
        } else {
            Redirects::Never
        };

        // Rules: hosts and paths.
        let mut hosts: Vec<HostPattern> = Vec::new();
        let mut hostless = false;
        for (i, rule) in spec.rules.iter().flatten().enumerate() {
            let host = match rule.host.as_deref().filter(|h| !h.is_empty()) {
                None => {
                    hostless = true;
                    None
                }
                Some(text) => match parse_host(text) {
                    Ok(h) => {
                        if !hosts.contains(&h) {
                            hosts.push(h.clone());
                        }
                        Some(h)
                    }
                    Err(why) => {
                        self.problem(&key, format!("rules[{i}].host"), why);
                        continue;
                    }
                },
            };
            self.site(host.as_ref());
            let paths = rule
                .http
                .as_ref()
                .map(|h| h.paths.as_slice())
                .unwrap_or_default();
            for (j, path) in paths.iter().enumerate() {
                let pkey = format!("rules[{i}].http.paths[{j}]");
                let (p, m) = match normalise_path(path.path.as_deref(), &path.path_type) {
                    Ok(v) => v,
                    Err((field, why)) => {
                        self.problem(&key, format!("{pkey}{field}"), why);
                        continue;
                    }
                };
                let on = host
                    .as_ref()
                    .map_or_else(|| "rules without a host".to_owned(), ToString::to_string);
                let taken = self
                    .site(host.as_ref())
                    .routes
                    .get(&(p.clone(), m == PathMatch::Exact))
                    .map(|c| c.owner.clone());
                if let Some(owner) = taken {
                    let why = if owner == key {
                        format!("path {p} ({}) on {on} is listed twice", match_name(m))
                    } else {
                        format!(
                            "path {p} ({}) on {on} is already routed by ingress {owner}",
                            match_name(m)
                        )
                    };
                    self.problem(&key, pkey, why);
                    continue;
                }
                let Some(action) = self.action(
                    &key,
                    &settings,
                    &template,
                    &path.backend,
                    &format!("{pkey}.backend"),
                ) else {
                    continue;
                };
                let route = Route {
                    path_match: m,
                    rewrite: settings.rewrite.clone(),
                    upgrades: if settings.websocket {
                        Upgrades::default()
                    } else {
                        Upgrades::none()
                    },
                    access: settings.access.clone(),
                    max_body_size: settings.max_body_size,
                    ..Route::new(p.clone(), action)
                };
                let policy = if is_acme_challenge(&p) {
                    Redirects::Never
                } else {
                    redirects
                };
                self.site(host.as_ref()).routes.insert(
                    (p, m == PathMatch::Exact),
                    Claimed {
                        owner: key.clone(),
                        value: (route, policy),
                    },
                );
            }
        }

        self.tls(&key, ingress, &settings, &hosts);
        let mut named = hosts.clone();
        for h in self.tls_hosts(ingress) {
            if !named.contains(&h) {
                named.push(h);
            }
        }

        // The default backend: for the hosts this Ingress names, and for the default site
        // when it has rules without a host or no rules at all.
        if let Some(backend) = &spec.default_backend
            && let Some(action) = self.action(&key, &settings, &template, backend, "defaultBackend")
        {
            let mut targets: Vec<Option<HostPattern>> = named.iter().cloned().map(Some).collect();
            if hostless || hosts.is_empty() {
                targets.push(None);
            }
            for host in targets {
                let site = self.site(host.as_ref());
                let conflict = match &site.fallback {
                    None => {
                        site.fallback = Some(Claimed {
                            owner: key.clone(),
                            value: (action.clone(), redirects),
                        });
                        None
                    }
                    Some(c) if c.owner != key && c.value.0 != action => Some(c.owner.clone()),
                    Some(_) => None,
                };
                if let Some(owner) = conflict {
                    let on = host
                        .as_ref()
                        .map_or_else(|| "the default site".to_owned(), ToString::to_string);
                    self.problem(
                        &key,
                        "defaultBackend",
                        format!("{on} already falls back to the defaultBackend of ingress {owner}"),
                    );
                }
            }
        }

        // HSTS is one setting per host.
        if let Some((annotation, hsts)) = &settings.hsts {
            for host in &named {
                let site = self.site(Some(host));
                let conflict = match &site.hsts {
                    None => {
                        site.hsts = Some(Claimed {
                            owner: key.clone(),
                            value: hsts.clone(),
                        });
                        None
                    }
                    Some(c) if c.owner != key && c.value != *hsts => Some(c.owner.clone()),
                    Some(_) => None,
                };
                if let Some(owner) = conflict {
                    self.problem(
                        &key,
                        annotations::annotation_key(annotation),
                        format!("{host} already has its HSTS set by ingress {owner}"),
                    );
                }
            }
        }
    }

    /// The valid hosts `ingress`'s tls entries list.
    fn tls_hosts(&self, ingress: &Ingress) -> Vec<HostPattern> {
        let mut out = Vec::new();
        for tls in ingress.spec.iter().flat_map(|s| s.tls.iter().flatten()) {
            for h in tls.hosts.iter().flatten() {
                if let Ok(h) = parse_host(h)
                    && !out.contains(&h)
                {
                    out.push(h);
                }
            }
        }
        out
    }

    /// What a backend does: the Ingress's redirect, else its Service's origin. A backend
    /// that names a missing Service or port gets an origin without servers (503), so its
    /// path stays claimed; a `resource` backend gets no route.
    fn action(
        &mut self,
        key: &ObjectKey,
        settings: &Settings,
        template: &Template,
        backend: &IngressBackend,
        bkey: &str,
    ) -> Option<Action> {
        if let Some(redirect) = &settings.redirect {
            return Some(Action::Redirect(redirect.clone()));
        }
        match (&backend.service, &backend.resource) {
            (Some(service), _) => {
                let target = match backends::resolve(
                    &self.index,
                    &key.namespace,
                    service,
                    settings.service_upstream,
                ) {
                    Ok(t) => t,
                    Err((t, (field, why))) => {
                        self.problem(key, format!("{bkey}{field}"), why);
                        t
                    }
                };
                Some(Action::Proxy(Box::new(template.origin(target))))
            }
            (None, Some(_)) => {
                self.problem(
                    key,
                    format!("{bkey}.resource"),
                    "resource backends are not supported; use a Service",
                );
                None
            }
            (None, None) => {
                self.problem(key, bkey.to_owned(), "a backend needs a service");
                None
            }
        }
    }

    /// `spec.tls`: each host's certificate. Entries listing hosts come first; an entry
    /// without hosts then covers the Ingress's rule hosts its certificate is valid for that
    /// no entry claimed.
    fn tls(
        &mut self,
        key: &ObjectKey,
        ingress: &Ingress,
        settings: &Settings,
        rule_hosts: &[HostPattern],
    ) {
        let entries = ingress
            .spec
            .iter()
            .flat_map(|s| s.tls.iter().flatten())
            .enumerate();
        let (listed, unlisted): (Vec<_>, Vec<_>) =
            entries.partition(|(_, t)| t.hosts.as_ref().is_some_and(|h| !h.is_empty()));
        for (i, tls) in listed.into_iter().chain(unlisted) {
            let secret = tls
                .secret_name
                .as_deref()
                .filter(|n| !n.is_empty())
                .map(|name| ObjectKey {
                    namespace: key.namespace.clone(),
                    name: name.to_owned(),
                });
            let explicit = tls.hosts.as_ref().is_some_and(|h| !h.is_empty());
            let mut acme = settings.acme || self.options.acme_all;
            if acme && !explicit {
                if settings.acme {
                    self.problem(
                        key,
                        format!("tls[{i}].hosts"),
                        "ACME needs the hosts to order a certificate for; list them",
                    );
                }
                acme = false;
            }
            if acme && secret.is_none() {
                self.problem(
                    key,
                    format!("tls[{i}].secretName"),
                    "ACME stores the certificate in a Secret; name one",
                );
                acme = false;
            }
            if acme
                && let Some(s) = &secret
                && self.index.cert_manager_managed(s)
            {
                self.problem(
                    key,
                    format!("tls[{i}].secretName"),
                    format!("secret {s} is managed by cert-manager; Portcullis only reads it"),
                );
                acme = false;
            }
            if acme && !self.acme_possible {
                self.problems.push(K8sProblem::controller(
                    "acme.challenge",
                    "`http-01` is answered on the plain HTTP listener, but `listen.http` is off in the base config; ACME hosts read their Secrets instead",
                ));
                acme = false;
            }
            // The Secret as a certificate, read once per entry.
            let read = match &secret {
                Some(s) if !acme || !self.options.acme_issuer => Some(self.index.tls_secret(s)),
                _ => None,
            };
            if !acme && let Some(Err(why)) = &read {
                self.problem(key, format!("tls[{i}].secretName"), why.clone());
            }
            let hosts: Vec<(String, HostPattern)> = if explicit {
                let mut out = Vec::new();
                for (j, text) in tls.hosts.iter().flatten().enumerate() {
                    match parse_host(text) {
                        Ok(h) => out.push((format!("tls[{i}].hosts[{j}]"), h)),
                        Err(why) => self.problem(key, format!("tls[{i}].hosts[{j}]"), why),
                    }
                }
                out
            } else {
                let info = match &read {
                    Some(Ok(ck)) => ck.chain.first().and_then(|c| CertInfo::parse(c).ok()),
                    _ => None,
                };
                rule_hosts
                    .iter()
                    .filter(|h| info.as_ref().is_none_or(|i| i.covers(h)))
                    .filter(|h| {
                        self.sites
                            .get(&h.to_string())
                            .is_none_or(|s| s.tls.is_none())
                    })
                    .map(|h| (format!("tls[{i}]"), h.clone()))
                    .collect()
            };
            for (hkey, host) in hosts {
                let existing = self
                    .site(Some(&host))
                    .tls
                    .as_ref()
                    .map(|c| (c.owner.clone(), c.value.0.clone()));
                if let Some((owner, first)) = existing {
                    if first != secret {
                        let from = first.map_or_else(
                            || "the default certificate".to_owned(),
                            |s| format!("secret {s}"),
                        );
                        self.problem(
                            key,
                            hkey,
                            format!(
                                "{host} already takes its certificate from {from} (ingress {owner})"
                            ),
                        );
                    }
                    continue;
                }
                let host_acme = acme
                    && match &host {
                        HostPattern::Wildcard(_) => {
                            self.problem(
                                key,
                                hkey.clone(),
                                format!("{host}: wildcard certificates need the DNS-01 challenge, which Portcullis does not answer yet; the Secret is read instead"),
                            );
                            false
                        }
                        _ => true,
                    };
                let site_tls = match (&secret, host_acme) {
                    (Some(s), true) => {
                        self.acme_secrets.insert(host.to_string(), s.clone());
                        if self.options.acme_issuer {
                            SiteTls::Acme {
                                fallback_local: false,
                            }
                        } else {
                            // A follower serves what the leader stored, once it has.
                            match self.index.tls_secret(s) {
                                Ok(ck) => SiteTls::Files(ck),
                                Err(_) => SiteTls::None,
                            }
                        }
                    }
                    (Some(s), false) => match self.index.tls_secret(s) {
                        Ok(ck) => SiteTls::Files(ck),
                        Err(why) => {
                            if acme {
                                // Only reported here when the entry was meant for ACME.
                                self.problem(key, format!("tls[{i}].secretName"), why);
                            }
                            SiteTls::None
                        }
                    },
                    (None, _) => SiteTls::None,
                };
                self.site(Some(&host)).tls = Some(Claimed {
                    owner: key.clone(),
                    value: (secret.clone(), site_tls),
                });
            }
        }
    }

    /// The config, and everything else translation found.
    pub(super) fn finish(mut self, ingresses: Vec<ObjectKey>) -> Translated {
        let fallback = self.controller_default_backend();
        let default_tls = match self.options.default_certificate.clone() {
            Some(key) => match self.index.tls_secret(&key) {
                Ok(ck) => SiteTls::Files(ck),
                Err(why) => {
                    self.problems.push(K8sProblem::controller(
                        "--default-certificate",
                        format!("{why}; a local-CA certificate is served instead"),
                    ));
                    SiteTls::Local
                }
            },
            None => SiteTls::Local,
        };
        let mut sites: Vec<Site> = Vec::with_capacity(self.sites.len() + 1);
        let default = std::mem::replace(&mut self.default, SiteBuild::new(default_host()));
        for build in std::mem::take(&mut self.sites).into_values() {
            sites.push(site(build, false, None, &fallback));
        }
        sites.push(site(default, true, Some(default_tls), &fallback));
        let mut config = self.base.clone();
        config.sites = sites;
        let mut unsupported = self.unsupported;
        unsupported.sort();
        Translated {
            config,
            problems: self.problems,
            unsupported_annotations: unsupported,
            ingresses,
            acme_secrets: self.acme_secrets,
            secrets: self.index.referenced,
        }
    }

    /// `--default-backend`, resolved like an Ingress backend without annotations.
    fn controller_default_backend(&mut self) -> Option<Action> {
        let (service, port) = self.options.default_backend.clone()?;
        let backend = k8s_openapi::api::networking::v1::IngressServiceBackend {
            name: service.name.clone(),
            port: Some(match port.parse::<i32>() {
                Ok(n) => k8s_openapi::api::networking::v1::ServiceBackendPort {
                    number: Some(n),
                    name: None,
                },
                Err(_) => k8s_openapi::api::networking::v1::ServiceBackendPort {
                    number: None,
                    name: Some(port.clone()),
                },
            }),
        };
        let target = match backends::resolve(&self.index, &service.namespace, &backend, false) {
            Ok(t) => t,
            Err((t, (_, why))) => {
                self.problems
                    .push(K8sProblem::controller("--default-backend", why));
                t
            }
        };
        let settings = annotations::read(None).settings;
        let mut ignored = Vec::new();
        let template = origins::template(&mut self.index, &service, &settings, &mut ignored);
        Some(Action::Proxy(Box::new(template.origin(target))))
    }
}

fn site(build: SiteBuild, default: bool, tls: Option<SiteTls>, fallback: &Option<Action>) -> Site {
    let has_tls = !default && build.tls.is_some();
    let routes = build
        .routes
        .into_values()
        .map(|c| {
            let (mut route, policy) = c.value;
            route.plain_http = policy.plain_http(has_tls);
            route
        })
        .collect();
    let (fallback, policy) = match build.fallback {
        Some(c) => (Some(c.value.0), c.value.1),
        None => (fallback.clone(), Redirects::IfTls),
    };
    Site {
        name: build.host.to_string(),
        hosts: vec![build.host],
        default,
        tls: tls.unwrap_or_else(|| build.tls.map_or(SiteTls::None, |c| c.value.1)),
        hsts: build.hsts.and_then(|c| c.value),
        routes,
        fallback,
        max_body_size: None,
        upgrades: Upgrades::default(),
        plain_http: policy.plain_http(has_tls),
    }
}
