//! An Ingress's annotations into typed settings. Each value is parsed on its own; an
//! invalid one is a problem naming it and is ignored (the rest of the Ingress is still
//! served). Values only ever become typed fields: none is pasted into any text the gateway
//! interprets (ingress-nginx's CVE-2025-1974 and CVE-2025-1097 came from that).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use portcullis_config::{
    Access, Balance, HashKey, HostPattern, Hsts, Mode, Redirect, Retries, StickyCookie, defaults,
    parse_duration, parse_size,
};

/// Our annotations' prefix.
pub(super) const OURS: &str = "portcullis.dev/";
/// ingress-nginx's annotations' prefix.
pub(super) const NGINX: &str = "nginx.ingress.kubernetes.io/";

/// Ours, without the prefix (see docs/kubernetes-translation.md).
pub(super) const OUR_NAMES: &[&str] = &[
    "acme",
    "origin-mode",
    "backend-protocol",
    "origin-ca-secret",
    "origin-server-name",
    "origin-client-cert-secret",
    "ssl-redirect",
    "force-ssl-redirect",
    "hsts",
    "hsts-max-age",
    "hsts-include-subdomains",
    "hsts-preload",
    "connect-timeout",
    "read-timeout",
    "max-body-size",
    "balance",
    "affinity",
    "affinity-cookie-name",
    "affinity-cookie-max-age",
    "affinity-cookie-path",
    "affinity-cookie-samesite",
    "allow-source-range",
    "deny-source-range",
    "retries",
    "retry-on",
    "websocket",
    "rewrite-target",
    "permanent-redirect",
    "permanent-redirect-code",
    "temporal-redirect",
    "service-upstream",
];

/// The ingress-nginx annotations read (when ours is absent), without the prefix.
pub(super) const NGINX_NAMES: &[&str] = &[
    "ssl-redirect",
    "force-ssl-redirect",
    "backend-protocol",
    "proxy-body-size",
    "proxy-connect-timeout",
    "proxy-read-timeout",
    "proxy-ssl-secret",
    "proxy-ssl-verify",
    "proxy-ssl-name",
    "proxy-ssl-server-name",
    "affinity",
    "session-cookie-name",
    "session-cookie-max-age",
    "session-cookie-path",
    "session-cookie-samesite",
    "whitelist-source-range",
    "allowlist-source-range",
    "denylist-source-range",
    "rewrite-target",
    "use-regex",
    "permanent-redirect",
    "permanent-redirect-code",
    "temporal-redirect",
    "service-upstream",
    "upstream-hash-by",
    "load-balance",
];

/// The cookie name of `affinity: cookie` without a name (ours, and ingress-nginx's: kept so
/// clients keep their sessions across a migration).
pub(super) const OUR_COOKIE: &str = "PORTCULLIS";
const NGINX_COOKIE: &str = "INGRESSCOOKIE";

/// The application protocol towards the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    Http,
    Https,
    H2c,
    Grpc,
    Grpcs,
}

/// A Secret an annotation names, with the annotation's key for problems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SecretRef {
    pub(super) key: String,
    /// Written as `NS/NAME` (ingress-nginx's proxy-ssl-secret): must be the Ingress's own.
    pub(super) namespace: Option<String>,
    pub(super) name: String,
}

/// How the origins of the Ingress's paths are reached.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct OriginSettings {
    pub(super) mode: Option<(String, Mode)>,
    pub(super) protocol: Option<(String, Protocol)>,
    /// Roots for `strict` (`ca.crt`).
    pub(super) ca_secret: Option<SecretRef>,
    /// A `kubernetes.io/tls` Secret: the client certificate.
    pub(super) client_cert_secret: Option<SecretRef>,
    pub(super) server_name: Option<String>,
    pub(super) connect_timeout: Option<Duration>,
    pub(super) read_timeout: Option<Duration>,
    pub(super) balance: Option<Balance>,
    pub(super) retries: Option<Retries>,
}

/// Everything the annotations of one Ingress say.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Settings {
    pub(super) acme: bool,
    pub(super) ssl_redirect: bool,
    pub(super) force_ssl_redirect: bool,
    /// `Some(None)`: HSTS explicitly off; with the annotation that said it.
    pub(super) hsts: Option<(String, Option<Hsts>)>,
    pub(super) origin: OriginSettings,
    pub(super) max_body_size: Option<u64>,
    pub(super) access: Access,
    pub(super) websocket: bool,
    pub(super) rewrite: Option<String>,
    pub(super) redirect: Option<Redirect>,
    pub(super) service_upstream: bool,
}

/// The settings, the problems (key, message) and the unsupported annotations.
pub(super) struct Read {
    pub(super) settings: Settings,
    pub(super) problems: Vec<(String, String)>,
    pub(super) unsupported: Vec<String>,
}

/// Reads `annotations`.
pub(super) fn read(annotations: Option<&BTreeMap<String, String>>) -> Read {
    let empty = BTreeMap::new();
    let mut r = Reader {
        map: annotations.unwrap_or(&empty),
        problems: Vec::new(),
    };
    let settings = r.settings();
    let unsupported = r
        .map
        .keys()
        .filter(|k| {
            if let Some(name) = k.strip_prefix(OURS) {
                !OUR_NAMES.contains(&name)
            } else if let Some(name) = k.strip_prefix(NGINX) {
                !NGINX_NAMES.contains(&name)
            } else {
                false
            }
        })
        .cloned()
        .collect();
    Read {
        settings,
        problems: r.problems,
        unsupported,
    }
}

/// `metadata.annotations["portcullis.dev/x"]`.
pub(super) fn annotation_key(full_name: &str) -> String {
    format!("metadata.annotations[\"{full_name}\"]")
}

struct Reader<'a> {
    map: &'a BTreeMap<String, String>,
    problems: Vec<(String, String)>,
}

/// An annotation's full name and value.
type Found<'a> = (String, &'a str);

impl<'a> Reader<'a> {
    fn ours(&self, name: &str) -> Option<Found<'a>> {
        let full = format!("{OURS}{name}");
        let value = self.map.get(&full)?;
        Some((full, value.trim()))
    }

    fn nginx(&self, name: &str) -> Option<Found<'a>> {
        let full = format!("{NGINX}{name}");
        let value = self.map.get(&full)?;
        Some((full, value.trim()))
    }

    /// Ours, else ingress-nginx's.
    fn either(&self, ours: &str, nginx: &str) -> Option<Found<'a>> {
        self.ours(ours).or_else(|| self.nginx(nginx))
    }

    fn problem(&mut self, full: &str, message: impl Into<String>) {
        self.problems.push((annotation_key(full), message.into()));
    }

    /// Parses a found value, recording a problem (and giving `None`) when it is invalid.
    fn parse<T>(
        &mut self,
        found: Option<Found<'a>>,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<(String, T)> {
        let (full, value) = found?;
        match f(value) {
            Ok(v) => Some((full, v)),
            Err(why) => {
                self.problem(&full, why);
                None
            }
        }
    }

    fn value<T>(
        &mut self,
        found: Option<Found<'a>>,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        self.parse(found, f).map(|(_, v)| v)
    }

    fn settings(&mut self) -> Settings {
        let acme = self.value(self.ours("acme"), boolean).unwrap_or(false);
        let ssl_redirect = self
            .value(self.either("ssl-redirect", "ssl-redirect"), boolean)
            .unwrap_or(true);
        let force_ssl_redirect = self
            .value(
                self.either("force-ssl-redirect", "force-ssl-redirect"),
                boolean,
            )
            .unwrap_or(false);
        let hsts = self.hsts();
        let origin = self.origin();
        let max_body_size = match self.ours("max-body-size") {
            Some(found) => self.value(Some(found), |v| match parse_size(v) {
                Ok(0) => Err("must be greater than zero".to_owned()),
                Ok(n) => Ok(n),
                Err(e) => Err(e.to_string()),
            }),
            None => self.value(self.nginx("proxy-body-size"), nginx_size),
        };
        let allow = self
            .value(
                self.ours("allow-source-range")
                    .or_else(|| self.nginx("allowlist-source-range"))
                    .or_else(|| self.nginx("whitelist-source-range")),
                networks,
            )
            .unwrap_or_default();
        let deny = self
            .value(
                self.either("deny-source-range", "denylist-source-range"),
                networks,
            )
            .unwrap_or_default();
        let websocket = self.value(self.ours("websocket"), boolean).unwrap_or(true);
        let rewrite = self.rewrite();
        let redirect = self.redirect();
        let service_upstream = self
            .value(self.either("service-upstream", "service-upstream"), boolean)
            .unwrap_or(false);
        Settings {
            acme,
            ssl_redirect,
            force_ssl_redirect,
            hsts,
            origin,
            max_body_size,
            access: Access { allow, deny },
            websocket,
            rewrite,
            redirect,
            service_upstream,
        }
    }

    fn hsts(&mut self) -> Option<(String, Option<Hsts>)> {
        let on = self.parse(self.ours("hsts"), boolean);
        let max_age = self.parse(self.ours("hsts-max-age"), duration);
        let include = self.parse(self.ours("hsts-include-subdomains"), boolean);
        let preload = self.parse(self.ours("hsts-preload"), boolean);
        let said = on
            .as_ref()
            .map(|(k, _)| k)
            .or(max_age.as_ref().map(|(k, _)| k))
            .or(include.as_ref().map(|(k, _)| k))
            .or(preload.as_ref().map(|(k, _)| k))?
            .clone();
        if on.as_ref().is_some_and(|(_, on)| !on) {
            return Some((said, None));
        }
        let hsts = Hsts {
            max_age: max_age.map_or(defaults::HSTS_MAX_AGE, |(_, d)| d),
            include_subdomains: include.is_some_and(|(_, v)| v),
            preload: preload.as_ref().is_some_and(|(_, v)| *v),
        };
        if hsts.preload && (!hsts.include_subdomains || hsts.max_age < defaults::HSTS_MAX_AGE) {
            let full = preload.map(|(k, _)| k).unwrap_or_default();
            self.problem(
                &full,
                "preload lists require hsts-include-subdomains \"true\" and hsts-max-age of at least one year",
            );
            return Some((
                said,
                Some(Hsts {
                    preload: false,
                    ..hsts
                }),
            ));
        }
        Some((said, Some(hsts)))
    }

    fn origin(&mut self) -> OriginSettings {
        let mode = self.parse(self.ours("origin-mode"), |v| match v {
            "flexible" => Ok(Mode::Flexible),
            "full" => Ok(Mode::Full),
            "strict" => Ok(Mode::Strict),
            _ => Err(format!(
                "`{v}` is not an origin mode; use flexible, full or strict"
            )),
        });
        // ingress-nginx's proxy-ssl-verify stands for a mode when ours is absent.
        let mode = mode.or_else(|| {
            self.parse(self.nginx("proxy-ssl-verify"), |v| match v {
                "on" => Ok(Mode::Strict),
                "off" => Ok(Mode::Full),
                _ => Err(format!("`{v}` is not `on` or `off`")),
            })
        });
        let protocol = self.parse(
            self.either("backend-protocol", "backend-protocol"),
            |v| match v.to_ascii_uppercase().as_str() {
                "HTTP" => Ok(Protocol::Http),
                "HTTPS" => Ok(Protocol::Https),
                "H2C" => Ok(Protocol::H2c),
                "GRPC" => Ok(Protocol::Grpc),
                "GRPCS" => Ok(Protocol::Grpcs),
                "AUTO_HTTP" | "FCGI" => Err(format!(
                    "`{v}` is not supported; use HTTP, HTTPS, H2C, GRPC or GRPCS"
                )),
                _ => Err(format!(
                    "`{v}` is not a backend protocol; use HTTP, HTTPS, H2C, GRPC or GRPCS"
                )),
            },
        );
        let mut ca_secret =
            self.parse(self.ours("origin-ca-secret"), secret_name)
                .map(|(key, name)| SecretRef {
                    key,
                    namespace: None,
                    name,
                });
        let mut client_cert_secret = self
            .parse(self.ours("origin-client-cert-secret"), secret_name)
            .map(|(key, name)| SecretRef {
                key,
                namespace: None,
                name,
            });
        // ingress-nginx's proxy-ssl-secret holds both: ca.crt, and tls.crt/tls.key.
        if ca_secret.is_none()
            && client_cert_secret.is_none()
            && let Some((key, (namespace, name))) =
                self.parse(self.nginx("proxy-ssl-secret"), |v| {
                    match v.split_once('/') {
                        Some((ns, name)) => Ok((Some(ns.to_owned()), secret_name(name)?)),
                        None => Ok((None, secret_name(v)?)),
                    }
                })
        {
            let secret = SecretRef {
                key,
                namespace,
                name,
            };
            ca_secret = Some(secret.clone());
            client_cert_secret = Some(secret);
        }
        let server_name = self.value(self.either("origin-server-name", "proxy-ssl-name"), |v| {
            match HostPattern::parse(v) {
                Ok(HostPattern::Exact(name)) => Ok(name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned()),
                Ok(HostPattern::Wildcard(_)) => Err("must be one name, not a wildcard".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        });
        // Accepted for migration: the gateway sends SNI whenever it has a name.
        let _ = self.value(self.nginx("proxy-ssl-server-name"), |v| match v {
            "on" | "off" => Ok(()),
            _ => Err(format!("`{v}` is not `on` or `off`")),
        });
        let connect_timeout = self.value(
            self.either("connect-timeout", "proxy-connect-timeout"),
            positive_duration,
        );
        let read_timeout = self.value(
            self.either("read-timeout", "proxy-read-timeout"),
            positive_duration,
        );
        let balance = self.balance();
        let retries = self.retries();
        OriginSettings {
            mode,
            protocol,
            ca_secret,
            client_cert_secret,
            server_name,
            connect_timeout,
            read_timeout,
            balance,
            retries,
        }
    }

    fn balance(&mut self) -> Option<Balance> {
        if let Some(sticky) = self.affinity() {
            return Some(sticky);
        }
        if let Some(found) = self.ours("balance") {
            return self.value(Some(found), |v| match v {
                "round_robin" => Ok(Balance::RoundRobin),
                "least_requests" => Ok(Balance::LeastRequests),
                "random_two" => Ok(Balance::RandomTwo),
                _ => Err(format!(
                    "`{v}` is not a balance; use round_robin, least_requests or random_two"
                )),
            });
        }
        if let Some(found) = self.nginx("upstream-hash-by") {
            return self.value(Some(found), |v| {
                let key = if v == "$remote_addr" {
                    HashKey::ClientIp
                } else if let Some(h) = v.strip_prefix("$http_") {
                    let name = h.replace('_', "-").to_ascii_lowercase();
                    if !is_token(&name) {
                        return Err(format!("`{v}` does not name a header"));
                    }
                    HashKey::Header(name)
                } else if let Some(c) = v.strip_prefix("$cookie_") {
                    if !is_token(c) {
                        return Err(format!("`{v}` does not name a cookie"));
                    }
                    HashKey::Cookie(c.to_owned())
                } else {
                    return Err(format!(
                        "`{v}` cannot be translated; only $remote_addr, $http_NAME and $cookie_NAME are"
                    ));
                };
                Ok(Balance::Hash(key))
            });
        }
        self.value(self.nginx("load-balance"), |v| match v {
            "round_robin" => Ok(Balance::RoundRobin),
            // The nearest equivalent of a latency-weighted average: fewest requests in flight.
            "ewma" => Ok(Balance::LeastRequests),
            _ => Err(format!("`{v}` is not supported; use round_robin or ewma")),
        })
    }

    fn affinity(&mut self) -> Option<Balance> {
        let (ours, nginx) = (self.ours("affinity"), self.nginx("affinity"));
        let from_nginx = ours.is_none() && nginx.is_some();
        self.value(ours.or(nginx), |v| match v {
            "cookie" => Ok(()),
            _ => Err(format!("`{v}` is not supported; use cookie")),
        })?;
        let name = self
            .value(
                self.either("affinity-cookie-name", "session-cookie-name"),
                |v| {
                    if is_token(v) {
                        Ok(v.to_owned())
                    } else {
                        Err(format!("`{v}` is not a valid cookie name"))
                    }
                },
            )
            .unwrap_or_else(|| if from_nginx { NGINX_COOKIE } else { OUR_COOKIE }.to_owned());
        let max_age = self.value(
            self.either("affinity-cookie-max-age", "session-cookie-max-age"),
            duration,
        );
        let path = self
            .value(
                self.either("affinity-cookie-path", "session-cookie-path"),
                |v| {
                    if v.starts_with('/') && v.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
                        Ok(v.to_owned())
                    } else {
                        Err(format!("`{v}` is not a cookie path (`/...`, no `;`)"))
                    }
                },
            )
            .unwrap_or_else(|| "/".to_owned());
        let same_site = self.value(
            self.either("affinity-cookie-samesite", "session-cookie-samesite"),
            |v| match v.to_ascii_lowercase().as_str() {
                "lax" => Ok("Lax".to_owned()),
                "strict" => Ok("Strict".to_owned()),
                "none" => Ok("None".to_owned()),
                _ => Err(format!("`{v}` is not Lax, Strict or None")),
            },
        );
        Some(Balance::Sticky(StickyCookie {
            name,
            max_age,
            path,
            secure: None,
            same_site,
        }))
    }

    fn retries(&mut self) -> Option<Retries> {
        let attempts = self.value(self.ours("retries"), |v| match v.parse::<u32>() {
            Ok(n) if n <= 10 => Ok(n),
            _ => Err(format!("`{v}` is not a number from 0 to 10")),
        });
        let on = self.value(self.ours("retry-on"), |v| {
            let mut r = Retries {
                on_connect: false,
                on_reset: false,
                ..Retries::default()
            };
            for item in v.split(',').map(str::trim) {
                match item {
                    "connect" => r.on_connect = true,
                    "reset" => r.on_reset = true,
                    code => match code.parse::<u16>() {
                        Ok(c) if (500..=599).contains(&c) => {
                            if !r.on_status.contains(&c) {
                                r.on_status.push(c);
                            }
                        }
                        _ => {
                            return Err(format!(
                                "`{item}` is not a retry condition; use connect, reset or 5xx statuses"
                            ));
                        }
                    },
                }
            }
            r.on_status.sort_unstable();
            Ok(r)
        });
        match (attempts, on) {
            (None, None) => None,
            (attempts, on) => {
                let mut r = on.unwrap_or_default();
                if let Some(n) = attempts {
                    r.attempts = n;
                } else {
                    r.attempts = 1;
                }
                Some(r)
            }
        }
    }

    fn rewrite(&mut self) -> Option<String> {
        if let Some(found) = self.ours("rewrite-target") {
            return self.value(Some(found), plain_path);
        }
        let regex = self
            .value(self.nginx("use-regex"), boolean)
            .unwrap_or(false);
        if regex {
            let full = format!("{NGINX}use-regex");
            self.problem(
                &full,
                "regular-expression paths are not supported; the paths are matched as prefixes",
            );
        }
        let found = self.nginx("rewrite-target")?;
        if regex || found.1.contains('$') {
            self.problem(
                &found.0,
                "a rewrite with regular-expression captures cannot be translated; not applied",
            );
            return None;
        }
        self.value(Some(found), plain_path)
    }

    fn redirect(&mut self) -> Option<Redirect> {
        if let Some(location) = self.value(
            self.either("permanent-redirect", "permanent-redirect"),
            location,
        ) {
            let status = self
                .value(
                    self.either("permanent-redirect-code", "permanent-redirect-code"),
                    |v| match v.parse::<u16>() {
                        Ok(c @ (301 | 302 | 303 | 307 | 308)) => Ok(c),
                        _ => Err(format!("`{v}` is not 301, 302, 303, 307 or 308")),
                    },
                )
                .unwrap_or(301);
            return Some(Redirect { status, location });
        }
        let location = self.value(
            self.either("temporal-redirect", "temporal-redirect"),
            location,
        )?;
        Some(Redirect {
            status: 302,
            location,
        })
    }
}

fn boolean(v: &str) -> Result<bool, String> {
    if v.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if v.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(format!("`{v}` is not \"true\" or \"false\""))
    }
}

fn duration(v: &str) -> Result<Duration, String> {
    parse_duration(v).map_err(|e| e.to_string())
}

fn positive_duration(v: &str) -> Result<Duration, String> {
    match duration(v)? {
        d if d.is_zero() => Err("must be greater than zero".to_owned()),
        d => Ok(d),
    }
}

/// nginx sizes: bytes, or `k`, `m`, `g` (binary multiples); `0` is unlimited.
fn nginx_size(v: &str) -> Result<u64, String> {
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = v[..digits]
        .parse()
        .map_err(|_| format!("`{v}` is not a size such as 8m"))?;
    let factor: u64 = match &v[digits..] {
        "" => 1,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        _ => return Err(format!("`{v}` is not a size such as 8m")),
    };
    Ok(match n.checked_mul(factor) {
        Some(0) | None => u64::MAX,
        Some(size) => size,
    })
}

/// `10.0.0.0/8, 192.168.1.1, 2001:db8::/32`.
fn networks(v: &str) -> Result<Vec<IpNet>, String> {
    let mut out = Vec::new();
    for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let net = item
            .parse::<IpNet>()
            .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                format!("`{item}` is not an address or a CIDR range such as 10.0.0.0/8")
            })?;
        out.push(net.trunc());
    }
    if out.is_empty() {
        return Err("lists no address or range".to_owned());
    }
    Ok(out)
}

/// A Secret's name in the Ingress's namespace (a DNS subdomain).
fn secret_name(v: &str) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(v.to_owned())
    } else {
        Err(format!(
            "`{v}` is not a Secret name (in the Ingress's namespace)"
        ))
    }
}

/// A path to forward to: `/`, then characters a request target may hold.
fn plain_path(v: &str) -> Result<String, String> {
    if v.starts_with('/')
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
    {
        Ok(v.to_owned())
    } else {
        Err(format!(
            "`{v}` is not a path (`/...`, no `?`, `#` or spaces)"
        ))
    }
}

/// A `Location`: an absolute http(s) URL or a path, nothing a header cannot carry.
fn location(v: &str) -> Result<String, String> {
    let shape = v.starts_with('/') && !v.starts_with("//")
        || v.strip_prefix("https://")
            .or_else(|| v.strip_prefix("http://"))
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
    if shape && v.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(v.to_owned())
    } else {
        Err(format!("`{v}` is not an http(s):// URL or a path"))
    }
}

/// An RFC 9110 token (cookie and header names).
fn is_token(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
