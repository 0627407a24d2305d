//! The routing table: one immutable snapshot of every site, route and origin, built from a
//! config and swapped whole on reload.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use std::net::IpAddr;

use portcullis_config::{
    Access, Action, Config, HostMap, IpNet, MixedContent, PathMatch, PlainHttp, Problem, Redirect,
    Respond, SiteTls, Upgrades,
};

use crate::metrics::{ProxyMetrics, RouteMetrics};
use crate::rewrite::{Policy, SiteRewrite};
use crate::upstream::{Backend, Upstream};

mod table;

pub(crate) use table::rewrite_path;
use table::{Key, RouteTable};

/// Sites by host, with their routes and origins.
#[derive(Debug)]
pub struct Router {
    hosts: HostMap<usize>,
    default: Option<usize>,
    pub(crate) sites: Vec<SiteRoutes>,
    /// Metrics for requests no site answers (400, 421).
    pub(crate) unrouted: Arc<RouteMetrics>,
    /// Peers that open connections with a PROXY protocol header.
    proxy_protocol_trusted: Box<[IpNet]>,
    /// Peers whose forwarding headers are kept.
    trusted_proxies: Box<[IpNet]>,
}

#[derive(Debug)]
pub(crate) struct SiteRoutes {
    pub(crate) name: Arc<str>,
    routes: RouteTable<RouteEntry>,
    fallback: Option<(Handler, Arc<RouteMetrics>)>,
    /// What the fallback's requests may upgrade to.
    upgrades: Upgrades,
    /// What a plain-HTTP request for the fallback (or for no route) gets.
    pub(crate) plain_http: PlainHttp,
    pub(crate) hsts: Option<HeaderValue>,
    /// `mixed_content: upgrade`: HTML responses ask browsers to upgrade `http://`
    /// subresources.
    pub(crate) upgrade_insecure: bool,
    /// `mixed_content: rewrite`: which hosts its HTML's `http://` URLs may be rewritten
    /// for, and its counters.
    pub(crate) rewrite: Option<Arc<SiteRewrite>>,
    /// Largest request body accepted (the site's, else `limits.max_body_size`).
    pub(crate) max_body: Option<u64>,
    /// Metrics for requests of this site that no route or fallback answers (404).
    pub(crate) unmatched: Arc<RouteMetrics>,
}

#[derive(Debug)]
struct RouteEntry {
    /// `strip_prefix` (as `/`) or `rewrite`: what replaces the matched part of the path.
    rewrite: Option<Box<str>>,
    handler: Handler,
    metrics: Arc<RouteMetrics>,
    upgrades: Upgrades,
    /// `None` when every address may use the route.
    access: Option<Box<Access>>,
    plain_http: PlainHttp,
    /// The route's limit, else the site's, else `limits.max_body_size`.
    max_body: Option<u64>,
}

/// What a matched request gets.
#[derive(Debug, Clone)]
pub(crate) enum Handler {
    Proxy(Arc<Upstream>),
    Respond(Arc<Fixed>),
}

/// A `respond` action, rendered once.
#[derive(Debug)]
pub(crate) struct Fixed {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
    pub(crate) content_type: Option<HeaderValue>,
    /// A redirect's `Location`.
    pub(crate) location: Option<HeaderValue>,
}

/// A route match: the handler and what the route says of the request.
pub(crate) struct Matched<'a> {
    pub(crate) handler: &'a Handler,
    /// How many leading bytes of the path are replaced, and with what (see
    /// [`rewrite_path`]); `None`: the path goes as it came.
    pub(crate) rewrite: Option<(usize, &'a str)>,
    pub(crate) metrics: &'a Arc<RouteMetrics>,
    /// The protocols an `Upgrade` request may switch to.
    pub(crate) upgrades: &'a Upgrades,
    /// Which client addresses may use the route (`None`: all).
    pub(crate) access: Option<&'a Access>,
    /// What the plain HTTP listener does with the request.
    pub(crate) plain_http: PlainHttp,
    /// Largest request body accepted.
    pub(crate) max_body: Option<u64>,
}

impl Router {
    /// Builds the table, creating a client for every origin. Problems name the origin's key.
    /// Origins that `previous` already had, unchanged, keep their client and its pooled
    /// connections; identical origins of several sites or routes share one (one pool, one
    /// set of health checks), so a thousand sites in front of one origin keep a few origin
    /// connections rather than a thousand.
    pub fn build(
        config: &Config,
        metrics: &ProxyMetrics,
        previous: Option<&Router>,
    ) -> Result<Self, Vec<Problem>> {
        let mut reusable: HashMap<&str, Vec<&Arc<Upstream>>> = HashMap::new();
        // Servers by URL, so a changed origin keeps what is known of its servers' health.
        let mut known: HashMap<&str, &Arc<Backend>> = HashMap::new();
        for upstream in previous.into_iter().flat_map(Router::upstreams) {
            let same_url = reusable.entry(upstream.origin().url.as_str()).or_default();
            // Shared upstreams appear once per site or route that uses them.
            if same_url.iter().any(|u| Arc::ptr_eq(u, upstream)) {
                continue;
            }
            same_url.push(upstream);
            for b in upstream.backends.iter() {
                known.insert(&b.label, b);
            }
        }
        // Upstreams built so far in this table, by URL.
        let mut built: HashMap<String, Vec<Arc<Upstream>>> = HashMap::new();
        let mut problems = Vec::new();
        let mut hosts = HostMap::new();
        let mut default = None;
        let mut sites = Vec::with_capacity(config.sites.len());
        // The hosts this gateway serves over HTTPS, for `mixed_content: rewrite`: those of
        // sites with a certificate (a `tls: none` site's handshakes get another's).
        let served = Arc::new({
            let mut served = HostMap::new();
            for site in config
                .sites
                .iter()
                .filter(|s| !matches!(s.tls, SiteTls::None))
            {
                for host in &site.hosts {
                    served.insert(host, ());
                }
            }
            served
        });
        let https_port = Some(config.listen.https.port()).filter(|p| *p != 0);
        for (i, site) in config.sites.iter().enumerate() {
            for host in &site.hosts {
                hosts.insert(host, i);
            }
            if site.default {
                default = Some(i);
            }
            let mut handler = |action: &Action, key: String| match action {
                Action::Respond(r) => Some(Handler::Respond(Arc::new(Fixed::new(r)))),
                Action::Redirect(r) => Some(Handler::Respond(Arc::new(Fixed::redirect(r)))),
                Action::Proxy(origin) => {
                    let url = origin.url.as_str();
                    let same = |u: &&Arc<Upstream>| *u.origin() == **origin;
                    if let Some(u) = built.get(url).and_then(|c| c.iter().find(same)) {
                        return Some(Handler::Proxy(u.clone()));
                    }
                    let upstream =
                        match reusable.get(url).and_then(|c| c.iter().copied().find(same)) {
                            Some(u) => Ok(Arc::clone(u)),
                            None => Upstream::with_known(origin, metrics, &|url| {
                                known.get(url).copied()
                            }),
                        };
                    match upstream {
                        Ok(u) => {
                            built.entry(url.to_owned()).or_default().push(u.clone());
                            Some(Handler::Proxy(u))
                        }
                        Err(e) => {
                            problems.push(Problem::new(key, e.to_string()));
                            None
                        }
                    }
                }
            };
            let fallback = site.fallback.as_ref().and_then(|a| {
                let h = handler(a, format!("sites[{i}].{}", action_key(a)))?;
                Some((h, Arc::new(metrics.route(&site.name, "*"))))
            });
            let max_body = site.max_body_size.or(config.limits.max_body_size);
            let routes: Vec<(Key, RouteEntry)> = site
                .routes
                .iter()
                .enumerate()
                .filter_map(|(j, r)| {
                    let entry = RouteEntry {
                        rewrite: match (&r.rewrite, r.strip_prefix) {
                            (Some(to), _) => Some(to.as_str().into()),
                            (None, true) => Some("/".into()),
                            (None, false) => None,
                        },
                        handler: handler(
                            &r.action,
                            format!("sites[{i}].routes[{j}].{}", action_key(&r.action)),
                        )?,
                        metrics: Arc::new(metrics.route(&site.name, &r.path)),
                        upgrades: r.upgrades.clone(),
                        access: (!r.access.is_open()).then(|| Box::new(r.access.clone())),
                        plain_http: r.plain_http,
                        max_body: r.max_body_size.or(max_body),
                    };
                    let key = Key {
                        path: r.path.as_str().into(),
                        exact: r.path_match == PathMatch::Exact,
                    };
                    Some((key, entry))
                })
                .collect();
            sites.push(SiteRoutes {
                name: site.name.as_str().into(),
                routes: RouteTable::new(routes),
                fallback,
                upgrades: site.upgrades.clone(),
                plain_http: site.plain_http,
                hsts: site
                    .hsts
                    .as_ref()
                    .and_then(|h| HeaderValue::from_str(&h.header_value()).ok()),
                upgrade_insecure: site.mixed_content == MixedContent::Upgrade,
                rewrite: match &site.mixed_content {
                    MixedContent::Rewrite { hosts } => Some(Arc::new(SiteRewrite {
                        policy: Policy {
                            served: served.clone(),
                            extra: {
                                let mut extra = HostMap::new();
                                for h in hosts {
                                    extra.insert(h, ());
                                }
                                extra
                            },
                            https_port,
                        },
                        counters: metrics.mixed_content(&site.name),
                    })),
                    _ => None,
                },
                max_body,
                unmatched: Arc::new(metrics.route(&site.name, "-")),
            });
        }
        if problems.is_empty() {
            Ok(Self {
                hosts,
                default,
                sites,
                unrouted: Arc::new(metrics.unrouted()),
                proxy_protocol_trusted: config.listen.proxy_protocol_trusted.clone().into(),
                trusted_proxies: config.trusted_proxies.clone().into(),
            })
        } else {
            Err(problems)
        }
    }

    /// Every origin client in the table.
    fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.sites.iter().flat_map(|s| {
            s.routes
                .iter()
                .map(|(_, r)| &r.handler)
                .chain(s.fallback.as_ref().map(|(h, _)| h))
                .filter_map(|h| match h {
                    Handler::Proxy(u) => Some(u),
                    Handler::Respond(_) => None,
                })
        })
    }

    /// The `site` and `route` labels of every route's series in the table.
    fn route_labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.sites.iter().flat_map(|s| {
            s.routes
                .iter()
                .map(|(_, r)| &r.metrics)
                .chain(s.fallback.as_ref().map(|(_, m)| m))
                .chain(std::iter::once(&s.unmatched))
                .map(|m| m.labels())
        })
    }

    /// Drops the request series of routes `self` had and `new` has not (a site or route
    /// removed or renamed by a reload), so they do not report their last value forever.
    pub(crate) fn forget_routes_missing_from(&self, new: &Router, metrics: &ProxyMetrics) {
        let kept: std::collections::HashSet<(&str, &str)> = new.route_labels().collect();
        for (site, route) in self.route_labels().filter(|l| !kept.contains(l)) {
            metrics.forget_route(site, route);
        }
        let rewriting = |r: &Router| -> std::collections::HashSet<Arc<str>> {
            r.sites
                .iter()
                .filter(|s| s.rewrite.is_some())
                .map(|s| s.name.clone())
                .collect()
        };
        let still = rewriting(new);
        for site in rewriting(self).difference(&still) {
            metrics.forget_mixed_content(site);
        }
    }

    /// The `origin` metric label of every origin server in the table.
    pub(crate) fn server_labels(&self) -> impl Iterator<Item = Arc<str>> + '_ {
        self.upstreams()
            .flat_map(|u| u.backends.iter().map(|b| b.label.clone()))
    }

    /// The site for a request host (no port): claimed by name, else the default site.
    pub(crate) fn site_for(&self, host: &str) -> Option<usize> {
        self.hosts.get(host).copied().or(self.default)
    }

    /// The site a TLS handshake chose for this SNI (`None`: no SNI sent).
    pub(crate) fn site_for_sni(&self, sni: Option<&str>) -> Option<usize> {
        match sni {
            Some(name) => self.site_for(name),
            None => self.default,
        }
    }

    /// Whether some site claims `host` by name (the default site does not count).
    pub(crate) fn claims(&self, host: &str) -> bool {
        self.hosts.get(host).is_some()
    }

    /// Whether connections from `ip` must start with a PROXY protocol header.
    pub(crate) fn expects_proxy_protocol(&self, ip: IpAddr) -> bool {
        contains(&self.proxy_protocol_trusted, ip)
    }

    /// Whether `ip` is a trusted proxy, whose forwarding headers are kept.
    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        contains(&self.trusted_proxies, ip)
    }

    /// Names of the sites, in config order.
    pub fn site_names(&self) -> impl Iterator<Item = &str> {
        self.sites.iter().map(|s| &*s.name)
    }
}

fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

fn action_key(action: &Action) -> &'static str {
    match action {
        Action::Proxy(_) => "origin",
        Action::Respond(_) => "respond",
        Action::Redirect(_) => "redirect",
    }
}

impl SiteRoutes {
    /// The route for `path` (the longest match; on a tie an exact route), else the site's
    /// fallback.
    pub(crate) fn route(&self, path: &str) -> Option<Matched<'_>> {
        if let Some((key, r)) = self.routes.find(path) {
            return Some(Matched {
                handler: &r.handler,
                rewrite: r.rewrite.as_deref().map(|to| (key.replaced_len(), to)),
                metrics: &r.metrics,
                upgrades: &r.upgrades,
                access: r.access.as_deref(),
                plain_http: r.plain_http,
                max_body: r.max_body,
            });
        }
        self.fallback.as_ref().map(|(handler, metrics)| Matched {
            handler,
            rewrite: None,
            metrics,
            upgrades: &self.upgrades,
            access: None,
            plain_http: self.plain_http,
            max_body: self.max_body,
        })
    }
}

impl Fixed {
    fn new(r: &Respond) -> Self {
        let content_type = match &r.content_type {
            Some(ct) => HeaderValue::from_str(ct).ok(),
            None if !r.body.is_empty() => {
                Some(HeaderValue::from_static("text/plain; charset=utf-8"))
            }
            None => None,
        };
        Self {
            status: StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK),
            body: Bytes::from(r.body.clone()),
            content_type,
            location: None,
        }
    }

    /// A `redirect` action: the status and `Location`, no body. Both were validated; a
    /// location no header can carry (which validation refuses) is left out rather than
    /// failing the table.
    fn redirect(r: &Redirect) -> Self {
        Self {
            status: StatusCode::from_u16(r.status).unwrap_or(StatusCode::FOUND),
            body: Bytes::new(),
            content_type: None,
            location: HeaderValue::from_str(&r.location).ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_config::Route;

    #[test]
    fn longest_prefix_wins_whatever_the_file_order() {
        let config = portcullis_config::parse(
            "sites:\n  - hosts: [a.test]\n    tls: local\n    respond: { body: root }\n    routes:\n      - path: /api\n        respond: { body: api }\n      - path: /api/v2\n        strip_prefix: true\n        respond: { body: v2 }\n",
            std::path::Path::new("."),
        )
        .unwrap();
        let router = Router::build(&config, &ProxyMetrics::unregistered(), None).unwrap();
        let site = &router.sites[router.site_for("a.test").unwrap()];
        let body = |path: &str| match site.route(path).map(|m| (m.handler, m.rewrite)) {
            Some((Handler::Respond(f), rewrite)) => (f.body.clone(), rewrite),
            _ => panic!("no respond for {path}"),
        };
        assert_eq!(body("/api/v2/x"), (Bytes::from("v2"), Some((7, "/"))));
        assert_eq!(body("/api/v1"), (Bytes::from("api"), None));
        assert_eq!(body("/apiv2"), (Bytes::from("root"), None));
        assert_eq!(body("/"), (Bytes::from("root"), None));
    }

    #[test]
    fn routes_carry_their_limits_access_and_plain_http_else_the_site_s() {
        // Built on the model (as a Kubernetes translation would), not the file's keys.
        let mut config = portcullis_config::parse(
            "limits: {max_body_size: 3KiB}\nsites:\n  - hosts: [a.test]\n    tls: local\n    max_body_size: 2KiB\n    respond: {body: root}\n  - hosts: [b.test]\n    tls: local\n    respond: {body: b}\n",
            std::path::Path::new("."),
        )
        .unwrap();
        let site = &mut config.sites[0];
        site.plain_http = PlainHttp::Serve;
        let respond = |body: &str| {
            Action::Respond(Respond {
                status: 200,
                body: body.into(),
                content_type: None,
            })
        };
        site.routes = vec![
            Route {
                max_body_size: Some(1024),
                plain_http: PlainHttp::Redirect,
                access: Access {
                    allow: Vec::new(),
                    deny: vec!["127.0.0.1/32".parse().unwrap()],
                },
                ..Route::new("/a", respond("a"))
            },
            Route {
                path_match: PathMatch::Exact,
                rewrite: Some("/x".into()),
                plain_http: PlainHttp::Serve,
                ..Route::new("/a", respond("exact"))
            },
        ];
        let router = Router::build(&config, &ProxyMetrics::unregistered(), None).unwrap();
        let a = &router.sites[router.site_for("a.test").unwrap()];
        let m = a.route("/a/x").unwrap();
        assert_eq!(m.max_body, Some(1024));
        assert_eq!(m.plain_http, PlainHttp::Redirect);
        assert!(!m.access.unwrap().allows([127, 0, 0, 1].into()));
        let m = a.route("/a").unwrap();
        assert_eq!(m.max_body, Some(2048), "the site's");
        assert_eq!(m.plain_http, PlainHttp::Serve);
        assert!(m.access.is_none());
        assert_eq!(m.rewrite, Some((2, "/x")));
        let fallback = a.route("/else").unwrap();
        assert_eq!(
            (fallback.max_body, fallback.plain_http),
            (Some(2048), PlainHttp::Serve)
        );
        let b = &router.sites[router.site_for("b.test").unwrap()];
        let m = b.route("/").unwrap();
        assert_eq!(
            (m.max_body, m.plain_http),
            (Some(3072), PlainHttp::Redirect)
        );
    }

    #[test]
    fn ten_thousand_sites_with_routes_build_in_well_under_a_second() {
        let mut config = portcullis_config::parse(
            "sites:\n  - hosts: [s.test]\n    tls: local\n    respond: {body: root}\n    routes:\n      - {path: /a, respond: {body: a}}\n      - {path: /a/, respond: {body: exact}}\n      - {path: /b/, respond: {body: b}}\n",
            std::path::Path::new("."),
        )
        .unwrap();
        // The second route is `/a`, exact.
        config.sites[0].routes[1].path = "/a".into();
        config.sites[0].routes[1].path_match = PathMatch::Exact;
        let one = config.sites.pop().unwrap();
        config.sites = (0..10_000)
            .map(|i| {
                let mut s = one.clone();
                s.name = format!("s{i}");
                s.hosts =
                    vec![portcullis_config::HostPattern::parse(&format!("s{i}.test")).unwrap()];
                s
            })
            .collect();
        let start = std::time::Instant::now();
        let router = Router::build(&config, &ProxyMetrics::unregistered(), None).unwrap();
        // Debug builds are several times slower than release; a second is still far off.
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        let site = &router.sites[router.site_for("s9999.test").unwrap()];
        assert!(
            matches!(site.route("/a").unwrap().handler, Handler::Respond(f) if f.body == "exact")
        );
    }
}

#[cfg(test)]
mod metrics_tests {
    use super::*;

    fn sites(yaml_sites: &[&str]) -> Config {
        let sites: String = yaml_sites
            .iter()
            .map(|name| {
                format!(
                    "  - {{name: {name}, hosts: [{name}.test], tls: local, respond: {{body: x}}}}\n"
                )
            })
            .collect();
        portcullis_config::parse(&format!("sites:\n{sites}"), std::path::Path::new(".")).unwrap()
    }

    #[test]
    fn a_removed_site_s_request_series_go_with_it() {
        let registry = prometheus::Registry::new();
        let m = ProxyMetrics::new(&registry).unwrap();
        let old = Router::build(&sites(&["a", "b"]), &m, None).unwrap();
        for site in &old.sites {
            site.route("/").unwrap().metrics.observe(200, 0.01);
        }
        assert_eq!(crate::metrics::sites_with_series(&registry), ["a", "b"]);
        let new = Router::build(&sites(&["a"]), &m, Some(&old)).unwrap();
        old.forget_routes_missing_from(&new, &m);
        assert_eq!(
            crate::metrics::sites_with_series(&registry),
            ["a"],
            "b's series are gone, a's stay"
        );
    }

    /// Sites `a` (`tls: none`), `b` and `c` (`mixed_content: rewrite` with `cdn.test`),
    /// in that order, those of `names` only.
    fn rewriting(names: &[&str]) -> Config {
        let all = [
            (
                "a",
                "{name: a, hosts: [a.test, '*.a.test'], tls: none, respond: {}}",
            ),
            ("b", "{name: b, hosts: [b.test], tls: local, respond: {}}"),
            (
                "c",
                "{name: c, hosts: ['*.c.test'], tls: local, mixed_content: rewrite, rewrite: {hosts: [cdn.test]}, respond: {}}",
            ),
        ];
        let sites: String = all
            .iter()
            .filter(|(n, _)| names.contains(n))
            .map(|(_, s)| format!("  - {s}\n"))
            .collect();
        portcullis_config::parse(
            &format!("listen: {{https: 0.0.0.0:8443}}\nsites:\n{sites}"),
            std::path::Path::new("."),
        )
        .unwrap()
    }

    #[test]
    fn a_rewriting_site_knows_the_hosts_served_over_https_and_its_own() {
        let router = Router::build(
            &rewriting(&["a", "b", "c"]),
            &ProxyMetrics::unregistered(),
            None,
        )
        .unwrap();
        let site = &router.sites[2];
        let policy = &site.rewrite.as_ref().unwrap().policy;
        let knows = |h: &str| policy.served.get(h).is_some() || policy.extra.get(h).is_some();
        assert!(knows("b.test") && knows("x.c.test") && knows("cdn.test"));
        assert!(
            !knows("a.test") && !knows("x.a.test"),
            "tls: none has no certificate here"
        );
        assert_eq!(policy.https_port, Some(8443));
        assert!(router.sites[1].rewrite.is_none());
    }

    #[test]
    fn a_site_that_stops_rewriting_loses_its_rewrite_series() {
        let registry = prometheus::Registry::new();
        let m = ProxyMetrics::new(&registry).unwrap();
        let rewrite_sites = || -> Vec<String> {
            let mut out: Vec<String> = registry
                .gather()
                .iter()
                .filter(|f| f.name().starts_with("portcullis_mixed_content_"))
                .flat_map(|f| f.get_metric().iter())
                .flat_map(|m| m.get_label().iter())
                .map(|l| l.value().to_owned())
                .collect();
            out.dedup();
            out
        };
        let old = Router::build(&rewriting(&["b", "c"]), &m, None).unwrap();
        assert_eq!(rewrite_sites(), ["c"], "at zero from start, for c only");
        let new = Router::build(&rewriting(&["b"]), &m, Some(&old)).unwrap();
        old.forget_routes_missing_from(&new, &m);
        assert!(rewrite_sites().is_empty());
    }
}

#[cfg(test)]
mod origin_series_tests {
    use super::*;

    /// The origin series in `registry`, by `origin` label.
    fn origins_with_series(registry: &prometheus::Registry) -> Vec<String> {
        let mut out: Vec<String> = registry
            .gather()
            .iter()
            .filter(|f| f.name().starts_with("portcullis_origin_"))
            .flat_map(|f| f.get_metric().iter())
            .flat_map(|m| m.get_label().iter())
            .filter(|l| l.name() == "origin")
            .map(|l| l.value().to_owned())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn a_server_has_series_once_it_is_used_not_before() {
        let config = portcullis_config::parse(
            "sites:\n  - hosts: [a.test]\n    tls: local\n    origin:\n      servers: [{url: \"http://127.0.0.1:1\"}, {url: \"http://127.0.0.1:2\"}, {url: \"http://127.0.0.1:3\"}]\n",
            std::path::Path::new("."),
        )
        .unwrap();
        let registry = prometheus::Registry::new();
        let m = ProxyMetrics::new(&registry).unwrap();
        let router = Router::build(&config, &m, None).unwrap();
        assert!(
            origins_with_series(&registry).is_empty(),
            "three configured servers, none used: no series"
        );
        let Handler::Proxy(upstream) = router.sites[0].route("/").unwrap().handler else {
            panic!("not an origin");
        };
        upstream.backends[1].metrics.get().requests.inc();
        assert_eq!(origins_with_series(&registry), ["http://127.0.0.1:2"]);
        let up = registry
            .gather()
            .into_iter()
            .find(|f| f.name() == crate::metrics::names::ORIGIN_SERVER_UP)
            .unwrap();
        assert_eq!(
            up.get_metric()[0].get_gauge().get_value(),
            1.0,
            "up once used"
        );
    }
}

#[cfg(test)]
mod reuse_tests {
    use super::*;

    fn config(origin_b: &str) -> Config {
        portcullis_config::parse(
            &format!(
                "sites:\n  - hosts: [a.test]\n    tls: local\n    origin: http://127.0.0.1:1\n  - hosts: [b.test]\n    tls: local\n    origin: {origin_b}\n"
            ),
            std::path::Path::new("."),
        )
        .unwrap()
    }

    fn upstream(router: &Router, site: usize) -> Arc<Upstream> {
        match &router.sites[site].fallback {
            Some((Handler::Proxy(u), _)) => u.clone(),
            _ => panic!("no origin"),
        }
    }

    #[test]
    fn unchanged_origins_keep_their_client_across_a_rebuild() {
        let m = ProxyMetrics::unregistered();
        let first = Router::build(&config("http://127.0.0.1:2"), &m, None).unwrap();
        let second = Router::build(&config("http://127.0.0.1:3"), &m, Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&upstream(&first, 0), &upstream(&second, 0)));
        assert!(!Arc::ptr_eq(&upstream(&first, 1), &upstream(&second, 1)));
    }

    #[test]
    fn identical_origins_of_different_sites_share_one_upstream() {
        let m = ProxyMetrics::unregistered();
        let first = Router::build(&config("http://127.0.0.1:1"), &m, None).unwrap();
        assert!(Arc::ptr_eq(&upstream(&first, 0), &upstream(&first, 1)));
        let different = Router::build(&config("http://127.0.0.1:2"), &m, None).unwrap();
        assert!(!Arc::ptr_eq(
            &upstream(&different, 0),
            &upstream(&different, 1)
        ));
        // A rebuild keeps the shared one, shared.
        let second = Router::build(&config("http://127.0.0.1:1"), &m, Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&upstream(&first, 0), &upstream(&second, 1)));
    }

    #[test]
    fn a_changed_origin_keeps_what_it_knew_of_its_servers_health() {
        let m = ProxyMetrics::unregistered();
        let servers = |extra: &str| {
            config(&format!(
                "{{servers: [{{url: 'http://127.0.0.1:2'}}, {{url: 'http://127.0.0.1:3'}}{extra}]}}"
            ))
        };
        let first = Router::build(&servers(""), &m, None).unwrap();
        let old = upstream(&first, 1);
        old.backends[0].set_active_up(false);
        for _ in 0..5 {
            old.backends[1].record_failure();
        }
        assert!(!old.backends[0].available() && !old.backends[1].available());

        let second =
            Router::build(&servers(", {url: 'http://127.0.0.1:4'}"), &m, Some(&first)).unwrap();
        let new = upstream(&second, 1);
        assert!(
            !Arc::ptr_eq(&old, &new),
            "the origin changed, so it was rebuilt"
        );
        assert!(!new.backends[0].available(), "a down server stays down");
        assert!(!new.backends[1].available(), "an ejection runs its course");
        assert!(new.backends[2].available(), "a new server starts up");
    }
}
