//! The routing table: one immutable snapshot of every site, route and origin, built from a
//! config and swapped whole on reload.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use std::net::IpAddr;

use portcullis_config::{Action, Config, HostMap, IpNet, Problem, Redirect, Respond, Upgrades};

use crate::metrics::{ProxyMetrics, RouteMetrics};
use crate::upstream::{Backend, Upstream};

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
    /// Longest prefix first, so the first match is the longest.
    routes: Box<[RouteEntry]>,
    fallback: Option<(Handler, Arc<RouteMetrics>)>,
    /// What the fallback's requests may upgrade to.
    upgrades: Upgrades,
    pub(crate) hsts: Option<HeaderValue>,
    /// Largest request body accepted (the site's, else `limits.max_body_size`).
    pub(crate) max_body: Option<u64>,
    /// Metrics for requests of this site that no route or fallback answers (404).
    pub(crate) unmatched: Arc<RouteMetrics>,
}

#[derive(Debug)]
struct RouteEntry {
    prefix: Box<str>,
    strip: bool,
    handler: Handler,
    metrics: Arc<RouteMetrics>,
    upgrades: Upgrades,
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

/// A route match: the handler and how many leading bytes of the path to strip.
pub(crate) struct Matched<'a> {
    pub(crate) handler: &'a Handler,
    pub(crate) strip: usize,
    pub(crate) metrics: &'a Arc<RouteMetrics>,
    /// The protocols an `Upgrade` request may switch to.
    pub(crate) upgrades: &'a Upgrades,
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
            let mut routes: Vec<RouteEntry> = site
                .routes
                .iter()
                .enumerate()
                .filter_map(|(j, r)| {
                    Some(RouteEntry {
                        prefix: r.path.as_str().into(),
                        strip: r.strip_prefix,
                        handler: handler(
                            &r.action,
                            format!("sites[{i}].routes[{j}].{}", action_key(&r.action)),
                        )?,
                        metrics: Arc::new(metrics.route(&site.name, &r.path)),
                        upgrades: r.upgrades.clone(),
                    })
                })
                .collect();
            routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
            sites.push(SiteRoutes {
                name: site.name.as_str().into(),
                routes: routes.into_boxed_slice(),
                fallback,
                upgrades: site.upgrades.clone(),
                hsts: site
                    .hsts
                    .as_ref()
                    .and_then(|h| HeaderValue::from_str(&h.header_value()).ok()),
                max_body: site.max_body_size.or(config.limits.max_body_size),
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
                .map(|r| &r.handler)
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
                .map(|r| &r.metrics)
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
    /// The longest route whose prefix matches `path` on a segment boundary, else the
    /// site's fallback.
    pub(crate) fn route(&self, path: &str) -> Option<Matched<'_>> {
        for r in self.routes.iter() {
            if prefix_matches(&r.prefix, path) {
                let strip = if r.strip {
                    r.prefix.trim_end_matches('/').len()
                } else {
                    0
                };
                return Some(Matched {
                    handler: &r.handler,
                    strip,
                    metrics: &r.metrics,
                    upgrades: &r.upgrades,
                });
            }
        }
        self.fallback.as_ref().map(|(handler, metrics)| Matched {
            handler,
            strip: 0,
            metrics,
            upgrades: &self.upgrades,
        })
    }
}

/// `/api` matches `/api` and `/api/...` but not `/apix`; `/api/` matches anything under it.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
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

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/users"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(!prefix_matches("/api/", "/api"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn longest_prefix_wins_whatever_the_file_order() {
        let config = portcullis_config::parse(
            "sites:\n  - hosts: [a.test]\n    tls: local\n    respond: { body: root }\n    routes:\n      - path: /api\n        respond: { body: api }\n      - path: /api/v2\n        strip_prefix: true\n        respond: { body: v2 }\n",
            std::path::Path::new("."),
        )
        .unwrap();
        let router = Router::build(&config, &ProxyMetrics::unregistered(), None).unwrap();
        let site = &router.sites[router.site_for("a.test").unwrap()];
        let body = |path: &str| match site.route(path).map(|m| (m.handler, m.strip)) {
            Some((Handler::Respond(f), strip)) => (f.body.clone(), strip),
            _ => panic!("no respond for {path}"),
        };
        assert_eq!(body("/api/v2/x"), (Bytes::from("v2"), 7));
        assert_eq!(body("/api/v1"), (Bytes::from("api"), 0));
        assert_eq!(body("/apiv2"), (Bytes::from("root"), 0));
        assert_eq!(body("/"), (Bytes::from("root"), 0));
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
