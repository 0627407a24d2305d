//! File types → runtime model. Collects every problem instead of stopping at the first, and
//! names each one by its key path.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::error::{Error, Problem, Result};
use crate::file::{
    AdminFile, CertKeyFile, HstsFile, LimitsFile, ListenFile, ModeFile, OriginMapFile, RespondFile,
    RouteFile, ShutdownFile, SiteFile, SiteTlsFile, TlsFile,
};
use crate::host::HostPattern;
use crate::model::{
    Action, Admin, CertKey, Config, Hsts, Limits, Listen, Origin, OriginTimeouts, OriginTls,
    Respond, Route, Shutdown, Site, SiteTls, TlsSettings, Transport, Verify, defaults,
};
use crate::pem;

const TOP_LEVEL_KEYS: &[&str] = &["listen", "admin", "tls", "limits", "shutdown", "sites"];

/// Reads and validates the config file at `path`. Relative paths inside it are resolved
/// against the file's folder.
pub fn load(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parse(&text, base)
}

/// Validates config text; relative paths inside it are resolved against `base_dir`.
pub fn parse(text: &str, base_dir: &Path) -> Result<Config> {
    let mut v = Validator {
        base: base_dir,
        problems: Vec::new(),
    };
    let config = v.config(text);
    match config {
        Some(c) if v.problems.is_empty() => Ok(c),
        _ => Err(Error::Invalid(v.problems)),
    }
}

struct Validator<'a> {
    base: &'a Path,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn err(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(key, message));
    }

    fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            // `./data/ca` next to `/etc/portcullis/gw.yaml` is `/etc/portcullis/data/ca`.
            self.base.join(path.strip_prefix(".").unwrap_or(path))
        }
    }

    /// Deserialises one section, recording a problem at its exact key path on failure.
    fn section<T: DeserializeOwned>(&mut self, value: Value, key: &str) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let mut path = key.to_owned();
                for segment in e.path().iter() {
                    use serde_path_to_error::Segment;
                    match segment {
                        Segment::Seq { index } => path.push_str(&format!("[{index}]")),
                        Segment::Map { key } => push_key(&mut path, key),
                        Segment::Enum { variant } => push_key(&mut path, variant),
                        Segment::Unknown => {}
                    }
                }
                let message = e.inner().to_string();
                self.err(path, message);
                None
            }
        }
    }

    fn config(&mut self, text: &str) -> Option<Config> {
        let doc: Value = match serde_yaml::from_str(text) {
            Ok(doc) => doc,
            Err(e) => {
                self.err("", format!("not valid YAML: {e}"));
                return None;
            }
        };
        let mut map = match doc {
            Value::Mapping(m) => m,
            Value::Null => serde_yaml::Mapping::new(),
            _ => {
                self.err(
                    "",
                    "the config must be a map with keys such as `listen` and `sites`",
                );
                return None;
            }
        };
        for key in map.keys() {
            match key.as_str() {
                Some(k) if TOP_LEVEL_KEYS.contains(&k) => {}
                Some(k) => self.err(
                    k,
                    format!(
                        "unknown key `{k}`, expected one of {}",
                        TOP_LEVEL_KEYS
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
                None => self.err("", format!("keys must be strings, found {key:?}")),
            }
        }
        let mut take = |k: &str| map.remove(k).unwrap_or(Value::Null);
        let (listen, admin, tls, limits, shutdown, sites) = (
            take("listen"),
            take("admin"),
            take("tls"),
            take("limits"),
            take("shutdown"),
            take("sites"),
        );

        let listen = self
            .section::<Option<ListenFile>>(listen, "listen")
            .map(Option::unwrap_or_default)
            .and_then(|f| self.listen(f));
        let admin = self
            .section::<Option<AdminFile>>(admin, "admin")
            .map(Option::unwrap_or_default)
            .and_then(|f| self.admin(f));
        let tls = self
            .section::<Option<TlsFile>>(tls, "tls")
            .map(Option::unwrap_or_default)
            .map(|f| TlsSettings {
                local_ca_dir: self.resolve(
                    &f.local_ca_dir
                        .unwrap_or_else(|| PathBuf::from(defaults::LOCAL_CA_DIR)),
                ),
            });
        let limits = self
            .section::<Option<LimitsFile>>(limits, "limits")
            .map(Option::unwrap_or_default)
            .and_then(|f| self.limits(f));
        let shutdown = self
            .section::<Option<ShutdownFile>>(shutdown, "shutdown")
            .map(Option::unwrap_or_default)
            .map(|f| Shutdown {
                drain_timeout: f.drain_timeout.unwrap_or(defaults::DRAIN_TIMEOUT),
            });
        let sites = self.sites(sites);

        if let (Some(listen), Some(admin)) = (&listen, &admin) {
            self.listeners_distinct(listen, admin);
        }
        Some(Config {
            listen: listen?,
            admin: admin?,
            tls: tls?,
            limits: limits?,
            shutdown: shutdown?,
            sites: sites?,
        })
    }

    fn listen(&mut self, f: ListenFile) -> Option<Listen> {
        let https = self.addr(
            f.https.as_deref().unwrap_or(defaults::HTTPS),
            "listen.https",
        );
        let http = match f.http.as_deref() {
            Some("off") => Some(None),
            other => self
                .addr(other.unwrap_or(defaults::HTTP), "listen.http")
                .map(Some),
        };
        Some(Listen {
            https: https?,
            http: http?,
        })
    }

    fn admin(&mut self, f: AdminFile) -> Option<Admin> {
        let listen = match f.listen.as_deref() {
            Some("off") => None,
            other => Some(self.addr(other.unwrap_or(defaults::ADMIN), "admin.listen")?),
        };
        Some(Admin { listen })
    }

    fn addr(&mut self, text: &str, key: &str) -> Option<SocketAddr> {
        match parse_addr(text) {
            Ok(a) => Some(a),
            Err(e) => {
                self.err(key, e);
                None
            }
        }
    }

    fn listeners_distinct(&mut self, listen: &Listen, admin: &Admin) {
        // Port 0 asks the OS for a fresh port each time, so it never clashes.
        let clash = |a: SocketAddr, b: Option<SocketAddr>| a.port() != 0 && Some(a) == b;
        if let Some(http) = listen.http {
            if clash(http, Some(listen.https)) {
                self.err("listen.http", "same address as `listen.https`");
            }
        }
        if let Some(a) = admin.listen {
            if clash(a, Some(listen.https)) {
                self.err("admin.listen", "same address as `listen.https`");
            } else if clash(a, listen.http) {
                self.err("admin.listen", "same address as `listen.http`");
            }
        }
    }

    fn limits(&mut self, f: LimitsFile) -> Option<Limits> {
        let handshake_timeout = self.positive(
            f.handshake_timeout,
            defaults::HANDSHAKE_TIMEOUT,
            "limits.handshake_timeout",
        );
        let header_read_timeout = self.positive(
            f.header_read_timeout,
            defaults::HEADER_READ_TIMEOUT,
            "limits.header_read_timeout",
        );
        // hyper cannot parse a request head in less than 8 KiB of buffer.
        let max_header_size = match f.max_header_size {
            None => defaults::MAX_HEADER_SIZE,
            Some(n) if (8192..=16 << 20).contains(&n) => n as usize,
            Some(_) => {
                self.err("limits.max_header_size", "must be between 8KiB and 16MiB");
                return None;
            }
        };
        Some(Limits {
            handshake_timeout: handshake_timeout?,
            header_read_timeout: header_read_timeout?,
            max_header_size,
        })
    }

    fn positive(
        &mut self,
        value: Option<std::time::Duration>,
        default: std::time::Duration,
        key: &str,
    ) -> Option<std::time::Duration> {
        match value {
            None => Some(default),
            Some(d) if d.is_zero() => {
                self.err(key, "must be greater than zero");
                None
            }
            Some(d) => Some(d),
        }
    }

    fn sites(&mut self, value: Value) -> Option<Vec<Site>> {
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
        let mut sites = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.into_iter().enumerate() {
            let key = format!("sites[{i}]");
            match self
                .section::<SiteFile>(item, &key)
                .and_then(|f| self.site(&key, f))
            {
                Some(site) => sites.push((i, site)),
                None => ok = false,
            }
        }
        self.sites_distinct(&sites);
        ok.then(|| sites.into_iter().map(|(_, s)| s).collect())
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
                Err(e) => self.err(format!("{key}.hosts[{j}]"), e),
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

        let fallback = match (f.origin, f.respond) {
            (Some(_), Some(_)) => {
                self.err(
                    key.to_owned(),
                    "`origin` and `respond` cannot both be set; use `routes` to mix them",
                );
                None
            }
            (Some(o), None) => self
                .origin(&format!("{key}.origin"), o.0)
                .map(Action::Proxy),
            (None, Some(r)) => self
                .respond(&format!("{key}.respond"), r)
                .map(Action::Respond),
            (None, None) => {
                if f.routes.is_empty() {
                    self.err(
                        key.to_owned(),
                        "a site needs an `origin`, a `respond`, or `routes`",
                    );
                }
                None
            }
        };
        let routes = self.routes(key, f.routes);

        if self.problems.len() > before {
            return None;
        }
        Some(Site {
            name,
            hosts,
            default: f.default,
            tls: tls?,
            hsts,
            routes,
            fallback,
        })
    }

    fn site_tls(&mut self, key: &str, tls: Option<SiteTlsFile>) -> Option<SiteTls> {
        let key = format!("{key}.tls");
        match tls {
            None => {
                self.err(
                    key,
                    "required: `local`, or a map with `cert` and `key` files",
                );
                None
            }
            Some(SiteTlsFile::Keyword(k)) if k == "local" => Some(SiteTls::Local),
            Some(SiteTlsFile::Keyword(k)) if k == "acme" => {
                self.err(
                    key,
                    "`acme` is not available in this version; use `local` or `cert`/`key` files",
                );
                None
            }
            Some(SiteTlsFile::Keyword(k)) => {
                self.err(
                    key,
                    format!("unknown value `{k}`, expected `local` or a map with `cert` and `key`"),
                );
                None
            }
            Some(SiteTlsFile::Files(f)) => self.cert_key(&key, f).map(SiteTls::Files),
        }
    }

    fn cert_key(&mut self, key: &str, f: CertKeyFile) -> Option<CertKey> {
        let cert_path = self.resolve(&f.cert);
        let key_path = self.resolve(&f.key);
        let chain = pem::read_certs(&cert_path).map_err(|e| self.err(format!("{key}.cert"), e));
        let private = pem::read_key(&key_path).map_err(|e| self.err(format!("{key}.key"), e));
        Some(CertKey {
            cert_path,
            key_path,
            chain: chain.ok()?,
            key: private.ok()?,
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

    fn routes(&mut self, key: &str, routes: Vec<RouteFile>) -> Vec<Route> {
        let mut out: Vec<Route> = Vec::with_capacity(routes.len());
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (j, r) in routes.into_iter().enumerate() {
            let rkey = format!("{key}.routes[{j}]");
            let path_ok = if !r.path.starts_with('/') {
                self.err(format!("{rkey}.path"), "must start with `/`");
                false
            } else if r.path.contains(['?', '#', ' ']) {
                self.err(
                    format!("{rkey}.path"),
                    "must be a plain path (no `?`, `#` or spaces)",
                );
                false
            } else if let Some(first) = seen.insert(r.path.clone(), j) {
                self.err(
                    format!("{rkey}.path"),
                    format!("`{}` is already routed by {key}.routes[{first}]", r.path),
                );
                false
            } else {
                true
            };
            let action = match (r.origin, r.respond) {
                (Some(_), Some(_)) => {
                    self.err(rkey.clone(), "`origin` and `respond` cannot both be set");
                    None
                }
                (Some(o), None) => self
                    .origin(&format!("{rkey}.origin"), o.0)
                    .map(Action::Proxy),
                (None, Some(r)) => self
                    .respond(&format!("{rkey}.respond"), r)
                    .map(Action::Respond),
                (None, None) => {
                    self.err(rkey.clone(), "a route needs an `origin` or a `respond`");
                    None
                }
            };
            if let (true, Some(action)) = (path_ok, action) {
                out.push(Route {
                    path: r.path,
                    strip_prefix: r.strip_prefix,
                    action,
                });
            }
        }
        out
    }

    fn respond(&mut self, key: &str, f: RespondFile) -> Option<Respond> {
        let status = f.status.unwrap_or(200);
        if !(200..=599).contains(&status) {
            self.err(format!("{key}.status"), "must be between 200 and 599");
            return None;
        }
        if let Some(ct) = &f.content_type {
            if http::HeaderValue::from_str(ct).is_err() {
                self.err(format!("{key}.content_type"), "not a valid header value");
                return None;
            }
        }
        Some(Respond {
            status,
            body: f.body.unwrap_or_default(),
            content_type: f.content_type,
        })
    }

    fn origin(&mut self, key: &str, f: OriginMapFile) -> Option<Origin> {
        let before = self.problems.len();
        let url_key = format!("{key}.url");
        let parsed = match parse_origin_url(&f.url) {
            Ok(p) => Some(p),
            Err(e) => {
                self.err(url_key, e);
                None
            }
        };
        let timeouts = OriginTimeouts {
            connect: self
                .positive(
                    f.timeouts.connect,
                    defaults::CONNECT_TIMEOUT,
                    &format!("{key}.timeouts.connect"),
                )
                .unwrap_or_default(),
            response_header: self
                .positive(
                    f.timeouts.response_header,
                    defaults::RESPONSE_HEADER_TIMEOUT,
                    &format!("{key}.timeouts.response_header"),
                )
                .unwrap_or_default(),
            idle: self
                .positive(
                    f.timeouts.idle,
                    defaults::ORIGIN_IDLE_TIMEOUT,
                    &format!("{key}.timeouts.idle"),
                )
                .unwrap_or_default(),
        };
        let verify_failure_status = f.verify_failure_status.unwrap_or(502);
        if verify_failure_status != 502 && verify_failure_status != 526 {
            self.err(format!("{key}.verify_failure_status"), "must be 502 or 526");
        }
        let (https, host, port) = parsed?;

        let mode = match (f.mode, https) {
            (None, false) | (Some(ModeFile::Flexible), false) => ModeFile::Flexible,
            (None, true) => ModeFile::Strict,
            (Some(m @ (ModeFile::Full | ModeFile::Strict)), true) => m,
            (Some(m), false) => {
                let name = if m == ModeFile::Full {
                    "full"
                } else {
                    "strict"
                };
                self.err(
                    format!("{key}.mode"),
                    format!("`{name}` uses TLS to the origin but the URL is http://; use an https:// URL or mode `flexible`"),
                );
                return None;
            }
            (Some(ModeFile::Flexible), true) => {
                self.err(
                    format!("{key}.mode"),
                    "`flexible` is plaintext HTTP to the origin but the URL is https://; use an http:// URL or mode `full`/`strict`",
                );
                return None;
            }
        };

        let transport = if mode == ModeFile::Flexible {
            for (set, name) in [
                (f.ca.is_some(), "ca"),
                (f.server_name.is_some(), "server_name"),
                (f.client_cert.is_some(), "client_cert"),
            ] {
                if set {
                    self.err(
                        format!("{key}.{name}"),
                        "only applies to TLS origins (`full` or `strict`)",
                    );
                }
            }
            Transport::Plain
        } else {
            let verify = match (mode, f.ca) {
                (ModeFile::Full, Some(_)) => {
                    self.err(
                        format!("{key}.ca"),
                        "`full` does not verify the origin; use mode `strict` to verify against this CA",
                    );
                    Verify::Off
                }
                (ModeFile::Full, None) => Verify::Off,
                (_, None) => Verify::SystemRoots,
                (_, Some(ca)) => {
                    let path = self.resolve(&ca);
                    match pem::read_certs(&path) {
                        Ok(roots) => Verify::Roots(roots),
                        Err(e) => {
                            self.err(format!("{key}.ca"), e);
                            Verify::Off
                        }
                    }
                }
            };
            let server_name = match f.server_name {
                Some(n) => match HostPattern::parse(&n) {
                    Ok(HostPattern::Exact(name)) => name
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned(),
                    Ok(HostPattern::Wildcard(_)) => {
                        self.err(
                            format!("{key}.server_name"),
                            "must be one name, not a wildcard",
                        );
                        String::new()
                    }
                    Err(e) => {
                        self.err(format!("{key}.server_name"), e);
                        String::new()
                    }
                },
                None => host.clone(),
            };
            let client_cert = f
                .client_cert
                .and_then(|c| self.cert_key(&format!("{key}.client_cert"), c));
            Transport::Tls(OriginTls {
                server_name,
                verify,
                client_cert,
            })
        };
        if self.problems.len() > before {
            return None;
        }
        Some(Origin {
            url: f.url,
            host,
            port,
            transport,
            timeouts,
            verify_failure_status,
        })
    }
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

/// `0.0.0.0:443`, `[::]:443`, `:443` (all IPv4 interfaces) or `localhost:8443`.
fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("`{text}` is not an address; expected `IP:PORT` or `:PORT`"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{text}` has an invalid port `{port}`"))?;
    let ip = match host {
        "" | "*" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        _ => {
            return Err(format!(
                "`{text}` is not an address; expected `IP:PORT` (a name other than localhost is not resolved)"
            ));
        }
    };
    Ok(SocketAddr::new(ip, port))
}

/// Returns (is https, host without brackets, port).
fn parse_origin_url(text: &str) -> Result<(bool, String, u16), String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("invalid URL `{text}`: {e}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        Some(other) => return Err(format!("scheme must be http or https, not `{other}`")),
        None => {
            return Err(format!(
                "`{text}` has no scheme; write `http://{text}` or `https://{text}`"
            ));
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("`{text}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err("credentials in the URL are not supported".into());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "`{text}` has a path or query; an origin URL is only scheme://host:port (use a route with `strip_prefix` to map paths)"
        ));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if host.is_empty() {
        return Err(format!("`{text}` has no host"));
    }
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok((https, host, port))
}
