//! Our Ingresses, in merge order, into one site per host: rules into routes, `tls` into the
//! site's certificate, `defaultBackend` into its fallback. The first Ingress to claim a
//! (host, path, match), a host's certificate, its fallback or its HSTS keeps it; a later
//! different claim is a problem on the later Ingress, never silently dropped.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::networking::v1::Ingress;
use portcullis_config::{
    Action, Challenge, Config, HostPattern, Hsts, MixedContent, PathMatch, PlainHttp, Route, Site,
    SiteTls, Upgrades,
};

use super::annotations;
use super::backends;
use super::classes;
use super::index::Index;
use super::origins;
use super::secrets::SecretCache;
use super::{DEFAULT_SITE_HOST, K8sProblem, Options, Translated};
use crate::snapshot::ObjectKey;

mod rules;
mod tls;

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

/// A host whose `tls` entry names an ACME Secret that another host's certificate is
/// stored in.
struct AcmeFollower {
    secret: ObjectKey,
    /// The host that took the Secret first.
    first: String,
    host: String,
    ingress: ObjectKey,
    /// The `tls[i].hosts[j]` key, for a problem.
    key: String,
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
    /// An Ingress's `defaultBackend`, as a `/` prefix route carrying that Ingress's
    /// per-route settings (source ranges, body size...): a site fallback has none of them.
    fallback: Option<Claimed<(Route, Redirects)>>,
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
    /// The host whose ACME certificate each Secret stores: one order per Secret.
    acme_hosts: HashMap<ObjectKey, String>,
    /// Hosts naming an ACME Secret another host took first: merged into its site in
    /// `finish` when they route alike, else reported.
    acme_followers: Vec<AcmeFollower>,
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
            acme_hosts: HashMap::new(),
            acme_followers: Vec::new(),
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

        let (hosts, hostless) = self.rules(&key, spec, &settings, &template, redirects);

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
            let route = rules::route(&settings, "/".to_owned(), PathMatch::Prefix, action);
            let mut targets: Vec<Option<HostPattern>> = named.iter().cloned().map(Some).collect();
            let host_rules = spec
                .rules
                .iter()
                .flatten()
                .any(|r| r.host.as_deref().is_some_and(|h| !h.is_empty()));
            if hostless || !host_rules {
                targets.push(None);
            }
            for host in targets {
                let site = self.site(host.as_ref());
                let conflict = match &site.fallback {
                    None => {
                        site.fallback = Some(Claimed {
                            owner: key.clone(),
                            value: (route.clone(), redirects),
                        });
                        None
                    }
                    Some(c) if c.owner != key && c.value.0 != route => Some(c.owner.clone()),
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

    /// The config, and everything else translation found.
    pub(super) fn finish(mut self, ingresses: Vec<ObjectKey>) -> (Translated, SecretCache) {
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
        self.merge_acme_followers(&mut sites);
        sites.push(site(default, true, Some(default_tls), &fallback));
        let mut config = self.base.clone();
        config.sites = sites;
        let mut unsupported = self.unsupported;
        unsupported.sort();
        let secrets = std::mem::take(&mut self.index.referenced);
        let (preloaded, cache) = self.index.finish();
        let translated = Translated {
            config,
            problems: self.problems,
            unsupported_annotations: unsupported,
            ingresses,
            acme_secrets: self.acme_secrets,
            secrets,
            preloaded,
        };
        (translated, cache)
    }

    /// Hosts sharing an ACME Secret become one site with one order for all their names
    /// when their sites are the same but for name and hosts (`example.com` and
    /// `www.example.com` sent to one Service, the usual case); a host that routes
    /// differently cannot share the certificate: a problem, and the default certificate.
    fn merge_acme_followers(&mut self, sites: &mut Vec<Site>) {
        if self.acme_followers.is_empty() {
            return;
        }
        let at: HashMap<String, usize> = sites
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let same = |a: &Site, b: &Site| {
            let (mut a, mut b) = (a.clone(), b.clone());
            (a.name, a.hosts, b.name, b.hosts) = (String::new(), vec![], String::new(), vec![]);
            a == b
        };
        let mut gone = vec![false; sites.len()];
        for f in std::mem::take(&mut self.acme_followers) {
            let (Some(&i), Some(&j)) = (at.get(&f.first), at.get(&f.host)) else {
                continue;
            };
            if same(&sites[i], &sites[j]) {
                let hosts = std::mem::take(&mut sites[j].hosts);
                sites[i].hosts.extend(hosts);
                gone[j] = true;
            } else {
                sites[j].tls = SiteTls::None;
                self.problem(
                    &f.ingress,
                    f.key,
                    format!(
                        "secret {} stores the ACME certificate of {}, whose routes differ from {}'s, so they cannot share one certificate; {} is served the default certificate (give it a tls entry and secretName of its own)",
                        f.secret, f.first, f.host, f.host
                    ),
                );
            }
        }
        let mut k = 0;
        sites.retain(|_| {
            k += 1;
            !gone[k - 1]
        });
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
    let mut routes = build.routes;
    // An Ingress's defaultBackend is what `/` does when no path claims `/` (a `/` prefix
    // matches every request, so it is exactly the fallback). The controller's default
    // backend, which has no per-route settings, stays the site's fallback.
    let fallback = match build.fallback {
        Some(c) => {
            routes.entry(("/".to_owned(), false)).or_insert(c);
            None
        }
        None => fallback.clone(),
    };
    let routes = routes
        .into_values()
        .map(|c| {
            let (mut route, policy) = c.value;
            route.plain_http = policy.plain_http(has_tls);
            route
        })
        .collect();
    let policy = Redirects::IfTls;
    Site {
        name: build.host.to_string(),
        hosts: vec![build.host],
        default,
        tls: tls.unwrap_or_else(|| build.tls.map_or(SiteTls::None, |c| c.value.1)),
        hsts: build.hsts.and_then(|c| c.value),
        mixed_content: MixedContent::Off,
        routes,
        fallback,
        max_body_size: None,
        upgrades: Upgrades::default(),
        plain_http: policy.plain_http(has_tls),
    }
}
