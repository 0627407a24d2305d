//! Sites: hosts, certificate source, HSTS, routes and fixed responses.

use std::collections::HashMap;
use std::sync::Arc;

use serde_yaml::Value;

use super::Validator;
use crate::file::{
    CertKeyFile, HstsFile, MixedContentFile, OriginFile, PathMatchFile, PlainHttpFile,
    RedirectFile, RespondFile, RewriteFile, RouteFile, SiteFile, SiteTlsFile,
};
use crate::host::HostPattern;
use crate::model::{
    Access, Action, CertKey, Hsts, MixedContent, PathMatch, PlainHttp, Redirect, Respond, Route,
    Site, SiteTls, Upgrades, defaults,
};
use crate::pem;

/// From this many sites on, they are validated on several threads at once.
const PARALLEL_SITES: usize = 256;

impl Validator<'_> {
    pub(super) fn sites(&mut self, value: Value) -> Option<Vec<Site>> {
        let items = match value {
            Value::Sequence(items) => items,
            Value::Null => Vec::new(),
            _ => {
                self.err("sites", "must be a list of sites");
                return None;
            }
        };
        if items.is_empty() {
            self.err("sites", "at least one site is required");
            return None;
        }
        let threads = if items.len() < PARALLEL_SITES {
            1
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
        };
        let (sites, ok) = if threads == 1 {
            self.site_run(0, items)
        } else {
            self.sites_in_parallel(items, threads)
        };
        self.sites_distinct(&sites);
        ok.then(|| sites.into_iter().map(|(_, s)| s).collect())
    }

    /// Validates consecutive sites, the first being `sites[first]`: each site's problems
    /// in site order, the sites that are valid, and whether all were.
    fn site_run(&mut self, first: usize, items: Vec<Value>) -> (Vec<(usize, Site)>, bool) {
        let mut sites = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.into_iter().enumerate() {
            let i = first + i;
            let key = format!("sites[{i}]");
            match self
                .section::<SiteFile>(item, &key)
                .and_then(|f| self.site(&key, f))
            {
                Some(site) => sites.push((i, site)),
                None => ok = false,
            }
        }
        (sites, ok)
    }

    /// [`site_run`](Self::site_run) over `threads` runs of the sites at once, their
    /// problems then put together in site order: the same result as one run. A site is
    /// validated on its own (the checks across sites come after), and most of its time is
    /// reading and decoding its certificate and key files: two thirds of a reload of
    /// 100,000 sites on one thread.
    fn sites_in_parallel(
        &mut self,
        mut items: Vec<Value>,
        threads: usize,
    ) -> (Vec<(usize, Site)>, bool) {
        let per_run = items.len().div_ceil(threads);
        let mut runs = Vec::with_capacity(threads);
        let mut first = 0;
        while !items.is_empty() {
            let rest = items.split_off(per_run.min(items.len()));
            let run = std::mem::replace(&mut items, rest);
            runs.push((first, run));
            first += per_run;
        }
        let (base, sites_rule, reuse) = (self.base, self.sites, self.reuse);
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = runs
                .into_iter()
                .map(|(first, run)| {
                    scope.spawn(move || {
                        let mut v = Validator {
                            base,
                            problems: Vec::new(),
                            sites: sites_rule,
                            reuse,
                        };
                        let (sites, ok) = v.site_run(first, run);
                        (v.problems, sites, ok)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let mut sites = Vec::with_capacity(first);
        let mut ok = true;
        for (problems, run, run_ok) in results {
            self.problems.extend(problems);
            sites.extend(run);
            ok &= run_ok;
        }
        (sites, ok)
    }

    /// Hosts, names and the default flag must each belong to one site only.
    fn sites_distinct(&mut self, sites: &[(usize, Site)]) {
        let mut hosts: HashMap<&HostPattern, usize> = HashMap::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut default: Option<usize> = None;
        for (i, site) in sites {
            for (j, host) in site.hosts.iter().enumerate() {
                if let Some(first) = hosts.insert(host, *i) {
                    if first != *i {
                        self.err(
                            format!("sites[{i}].hosts[{j}]"),
                            format!("`{host}` is already claimed by sites[{first}]"),
                        );
                    } else {
                        self.err(
                            format!("sites[{i}].hosts[{j}]"),
                            format!("`{host}` is listed twice"),
                        );
                    }
                }
            }
            if let Some(first) = names.insert(&site.name, *i) {
                self.err(
                    format!("sites[{i}].name"),
                    format!("name `{}` is already used by sites[{first}]", site.name),
                );
            }
            if site.default {
                match default {
                    Some(first) => self.err(
                        format!("sites[{i}].default"),
                        format!("only one site can be the default; sites[{first}] already is"),
                    ),
                    None => default = Some(*i),
                }
            }
        }
    }

    fn site(&mut self, key: &str, f: SiteFile) -> Option<Site> {
        let before = self.problems.len();
        let mut hosts = Vec::with_capacity(f.hosts.len());
        if f.hosts.is_empty() {
            self.err(format!("{key}.hosts"), "at least one host is required");
        }
        for (j, h) in f.hosts.iter().enumerate() {
            match HostPattern::parse(h) {
                Ok(p) => hosts.push(p),
                Err(e) => self.err(format!("{key}.hosts[{j}]"), e.to_string()),
            }
        }
        let name = match f.name {
            Some(n) if n.trim().is_empty() => {
                self.err(format!("{key}.name"), "must not be empty");
                String::new()
            }
            Some(n) => n,
            None => hosts.first().map(ToString::to_string).unwrap_or_default(),
        };
        let tls = self.site_tls(key, f.tls);
        let hsts = f.hsts.and_then(|h| self.hsts(key, h));
        let mixed_content = self.mixed_content(key, f.mixed_content, f.rewrite);

        let fallback = if f.origin.is_none() && f.respond.is_none() && f.redirect.is_none() {
            if f.routes.is_empty() {
                self.err(
                    key.to_owned(),
                    "a site needs an `origin`, a `respond`, a `redirect`, or `routes`",
                );
            }
            None
        } else {
            self.action(key, f.origin, f.respond, f.redirect)
        };
        if let (Some(SiteTls::None), true) = (&tls, f.default) {
            self.err(
                format!("{key}.default"),
                "the default site serves its certificate to every unclaimed name, so it needs one \
                 (`tls: none` has none)",
            );
        }
        let plain_http = plain_http(f.plain_http).unwrap_or_default();
        let upgrades = match f.upgrades {
            Some(names) => self.upgrades(&format!("{key}.upgrades"), names),
            None => Upgrades::default(),
        };
        let routes = self.routes(key, f.routes, &upgrades, plain_http);
        if f.max_body_size == Some(0) {
            self.err(format!("{key}.max_body_size"), "must be greater than zero");
        }

        if self.problems.len() > before {
            return None;
        }
        Some(Site {
            name,
            hosts,
            default: f.default,
            tls: tls?,
            hsts,
            mixed_content,
            routes,
            fallback,
            max_body_size: f.max_body_size,
            upgrades,
            plain_http,
        })
    }

    /// `mixed_content` and the `rewrite` settings that go with `rewrite`.
    fn mixed_content(
        &mut self,
        key: &str,
        mode: Option<MixedContentFile>,
        rewrite: Option<RewriteFile>,
    ) -> MixedContent {
        match (mode, rewrite) {
            (None | Some(MixedContentFile::Off), None) => MixedContent::Off,
            (Some(MixedContentFile::Upgrade), None) => MixedContent::Upgrade,
            (Some(MixedContentFile::Rewrite), rewrite) => {
                let mut hosts = Vec::new();
                for (j, h) in rewrite.unwrap_or_default().hosts.iter().enumerate() {
                    match HostPattern::parse(h) {
                        Ok(p) if hosts.contains(&p) => self.err(
                            format!("{key}.rewrite.hosts[{j}]"),
                            format!("`{p}` is listed twice"),
                        ),
                        Ok(p) => hosts.push(p),
                        Err(e) => self.err(format!("{key}.rewrite.hosts[{j}]"), e.to_string()),
                    }
                }
                MixedContent::Rewrite { hosts }
            }
            (_, Some(_)) => {
                self.err(
                    format!("{key}.rewrite"),
                    "only used with `mixed_content: rewrite`; without it nothing is rewritten",
                );
                MixedContent::Off
            }
        }
    }

    fn site_tls(&mut self, key: &str, tls: Option<SiteTlsFile>) -> Option<SiteTls> {
        let key = format!("{key}.tls");
        match tls {
            None => {
                self.err(
                    key,
                    "required: `acme`, `local`, or a map with `cert` and `key` files",
                );
                None
            }
            Some(SiteTlsFile::Keyword(k)) if k == "local" => Some(SiteTls::Local),
            Some(SiteTlsFile::Keyword(k)) if k == "acme" => Some(SiteTls::Acme {
                fallback_local: false,
            }),
            Some(SiteTlsFile::Keyword(k)) if k == "none" => Some(SiteTls::None),
            Some(SiteTlsFile::Keyword(k)) => {
                self.err(
                    key,
                    format!(
                        "unknown value `{k}`, expected `acme`, `local`, `none` or a map with `cert` and `key`"
                    ),
                );
                None
            }
            Some(SiteTlsFile::Map(m)) if m.acme => {
                for (set, name) in [(m.cert.is_some(), "cert"), (m.key.is_some(), "key")] {
                    if set {
                        self.err(
                            format!("{key}.{name}"),
                            "cannot be combined with `acme: true`",
                        );
                    }
                }
                match m.fallback.as_deref() {
                    None => Some(SiteTls::Acme {
                        fallback_local: false,
                    }),
                    Some("local") => Some(SiteTls::Acme {
                        fallback_local: true,
                    }),
                    Some(other) => {
                        self.err(
                            format!("{key}.fallback"),
                            format!("unknown value `{other}`, expected `local`"),
                        );
                        None
                    }
                }
            }
            Some(SiteTlsFile::Map(m)) => {
                if m.fallback.is_some() {
                    self.err(format!("{key}.fallback"), "only applies with `acme: true`");
                }
                match (m.cert, m.key) {
                    (Some(cert), Some(k)) => self
                        .cert_key(&key, CertKeyFile { cert, key: k })
                        .map(SiteTls::Files),
                    (cert, _) => {
                        let missing = if cert.is_none() { "cert" } else { "key" };
                        self.err(
                            format!("{key}.{missing}"),
                            "required (or use `tls: acme` / `tls: local`)",
                        );
                        None
                    }
                }
            }
        }
    }

    pub(super) fn cert_key(&mut self, key: &str, f: CertKeyFile) -> Option<CertKey> {
        let cert_path = self.resolve(&f.cert);
        let key_path = self.resolve(&f.key);
        if let Some(same) = self.reuse.unchanged(&cert_path, &key_path) {
            return Some(same);
        }
        let chain =
            pem::read_certs_stamped(&cert_path).map_err(|e| self.err(format!("{key}.cert"), e));
        let private =
            pem::read_key_stamped(&key_path).map_err(|e| self.err(format!("{key}.key"), e));
        let ((chain, cert_stamp), (private, key_stamp)) = (chain.ok()?, private.ok()?);
        Some(CertKey {
            cert_path,
            key_path,
            chain,
            key: private,
            stamps: cert_stamp.zip(key_stamp).map(Arc::new),
        })
    }

    fn hsts(&mut self, key: &str, f: HstsFile) -> Option<Hsts> {
        match f {
            HstsFile::Enabled(false) => None,
            HstsFile::Enabled(true) => Some(Hsts {
                max_age: defaults::HSTS_MAX_AGE,
                include_subdomains: false,
                preload: false,
            }),
            HstsFile::Custom(o) => {
                let max_age = o.max_age.unwrap_or(defaults::HSTS_MAX_AGE);
                if o.preload && (!o.include_subdomains || max_age < defaults::HSTS_MAX_AGE) {
                    self.err(
                        format!("{key}.hsts.preload"),
                        "preload lists require `include_subdomains: true` and `max_age` of at least one year",
                    );
                    return None;
                }
                Some(Hsts {
                    max_age,
                    include_subdomains: o.include_subdomains,
                    preload: o.preload,
                })
            }
        }
    }

    fn routes(
        &mut self,
        key: &str,
        routes: Vec<RouteFile>,
        site: &Upgrades,
        site_plain_http: PlainHttp,
    ) -> Vec<Route> {
        let mut out: Vec<Route> = Vec::with_capacity(routes.len());
        let mut seen: HashMap<(String, PathMatch), usize> = HashMap::new();
        for (j, r) in routes.into_iter().enumerate() {
            let rkey = format!("{key}.routes[{j}]");
            let before = self.problems.len();
            let path_match = match r.path_match {
                None | Some(PathMatchFile::Prefix) => PathMatch::Prefix,
                Some(PathMatchFile::Exact) => PathMatch::Exact,
            };
            if !r.path.starts_with('/') {
                self.err(format!("{rkey}.path"), "must start with `/`");
            } else if !is_plain_path(&r.path) {
                self.err(
                    format!("{rkey}.path"),
                    "must be a plain path (no `?`, `#`, spaces or control characters)",
                );
            } else if let Some(first) = seen.insert((r.path.clone(), path_match), j) {
                self.err(
                    format!("{rkey}.path"),
                    format!("`{}` is already routed by {key}.routes[{first}]", r.path),
                );
            }
            let action = if r.origin.is_none() && r.respond.is_none() && r.redirect.is_none() {
                self.err(
                    rkey.clone(),
                    "a route needs an `origin`, a `respond` or a `redirect`",
                );
                None
            } else {
                self.action(&rkey, r.origin, r.respond, r.redirect)
            };
            if let Some(rw) = &r.rewrite {
                if r.strip_prefix {
                    self.err(
                        format!("{rkey}.rewrite"),
                        "cannot be combined with `strip_prefix` (`rewrite: /` strips the prefix)",
                    );
                } else if !rw.starts_with('/') || !is_plain_path(rw) {
                    self.err(
                        format!("{rkey}.rewrite"),
                        "must be a plain path starting with `/` (no `?`, `#`, spaces or control characters)",
                    );
                }
            }
            let upgrades = match r.upgrades {
                Some(names) => self.upgrades(&format!("{rkey}.upgrades"), names),
                None => site.clone(),
            };
            let access = Access {
                allow: self.cidrs(&r.allow.unwrap_or_default(), &format!("{rkey}.allow")),
                deny: self.cidrs(&r.deny.unwrap_or_default(), &format!("{rkey}.deny")),
            };
            if r.max_body_size == Some(0) {
                self.err(format!("{rkey}.max_body_size"), "must be greater than zero");
            }
            if let (true, Some(action)) = (self.problems.len() == before, action) {
                out.push(Route {
                    path_match,
                    strip_prefix: r.strip_prefix,
                    rewrite: r.rewrite,
                    upgrades,
                    access,
                    plain_http: plain_http(r.plain_http).unwrap_or(site_plain_http),
                    max_body_size: r.max_body_size,
                    ..Route::new(r.path, action)
                });
            }
        }
        out
    }

    /// One of `origin`, `respond` or `redirect` (at least one is set).
    fn action(
        &mut self,
        key: &str,
        origin: Option<OriginFile>,
        respond: Option<RespondFile>,
        redirect: Option<RedirectFile>,
    ) -> Option<Action> {
        let set = [origin.is_some(), respond.is_some(), redirect.is_some()];
        if set.iter().filter(|s| **s).count() > 1 {
            self.err(
                key.to_owned(),
                "only one of `origin`, `respond` and `redirect` can be set; use `routes` to mix them",
            );
            return None;
        }
        if let Some(o) = origin {
            self.origin(&format!("{key}.origin"), o.0)
                .map(|o| Action::Proxy(Box::new(o)))
        } else if let Some(r) = respond {
            self.respond(&format!("{key}.respond"), r)
                .map(Action::Respond)
        } else {
            redirect.and_then(|r| self.redirect(&format!("{key}.redirect"), r))
        }
    }

    /// `redirect: { to: URL-or-/path, status: 302 }`: `to` becomes a `Location` header.
    fn redirect(&mut self, key: &str, f: RedirectFile) -> Option<Action> {
        let status = f.status.unwrap_or(302);
        let mut ok = true;
        if ![301, 302, 303, 307, 308].contains(&status) {
            self.err(format!("{key}.status"), "must be 301, 302, 303, 307 or 308");
            ok = false;
        }
        let to = f.to.as_str();
        let absolute = ["http://", "https://"].iter().any(|scheme| {
            to.get(..scheme.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
                && to.len() > scheme.len()
        });
        let clean = to.bytes().all(|b| (0x21..0x7f).contains(&b));
        // `//host` and `/\host` are read by browsers as another host.
        let other_host = to.starts_with("//") || to.starts_with("/\\");
        if !clean || !(absolute || to.starts_with('/')) || other_host {
            self.err(
                format!("{key}.to"),
                "must be an absolute http(s):// URL or a path starting with `/` (not `//` or \
                 `/\\`), without spaces or control characters",
            );
            ok = false;
        }
        ok.then_some(Action::Redirect(Redirect {
            status,
            location: f.to,
        }))
    }

    /// `upgrades: [websocket, ...]`: protocol names (RFC 9110 tokens, no version), never
    /// `h2c` or `h2`.
    fn upgrades(&mut self, key: &str, names: Vec<String>) -> Upgrades {
        let mut out: Vec<String> = Vec::with_capacity(names.len());
        for (i, name) in names.into_iter().enumerate() {
            let lower = name.trim().to_ascii_lowercase();
            let is_token = !lower.is_empty()
                && lower
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if lower == "h2c" || lower == "h2" {
                self.err(
                    format!("{key}[{i}]"),
                    format!(
                        "`{name}` can never pass: a client upgraded to HTTP/2 would talk to the \
                         origin directly, past every route and header rule (RFC 9113 §3.1); \
                         set `h2c: true` on the origin to reach an h2c server"
                    ),
                );
            } else if !is_token {
                self.err(
                    format!("{key}[{i}]"),
                    format!(
                        "`{name}` is not a protocol name (a token such as `websocket`, no version)"
                    ),
                );
            } else if out.contains(&lower) {
                self.err(format!("{key}[{i}]"), format!("`{name}` is listed twice"));
            } else {
                out.push(lower);
            }
        }
        Upgrades::from_names(out)
    }

    fn respond(&mut self, key: &str, f: RespondFile) -> Option<Respond> {
        let status = f.status.unwrap_or(200);
        if !(200..=599).contains(&status) {
            self.err(format!("{key}.status"), "must be between 200 and 599");
            return None;
        }
        if let Some(ct) = &f.content_type
            && http::HeaderValue::from_str(ct).is_err()
        {
            self.err(format!("{key}.content_type"), "not a valid header value");
            return None;
        }
        Some(Respond {
            status,
            body: f.body.unwrap_or_default(),
            content_type: f.content_type,
        })
    }
}

fn plain_http(f: Option<PlainHttpFile>) -> Option<PlainHttp> {
    f.map(|p| match p {
        PlainHttpFile::Redirect => PlainHttp::Redirect,
        PlainHttpFile::Serve => PlainHttp::Serve,
    })
}

/// No query, fragment, spaces or control characters: a path as it can be compared with a
/// request's and sent on.
fn is_plain_path(path: &str) -> bool {
    path.bytes()
        .all(|b| (0x21..0x7f).contains(&b) && b != b'?' && b != b'#')
}
