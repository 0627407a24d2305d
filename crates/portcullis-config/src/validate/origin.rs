//! Origins: servers, mode, TLS verification, client certificates, balancing, health,
//! retries, timeouts.

use super::Validator;
use crate::file::{
    BalanceFile, BalanceKeyword, CodeOrText, HashFile, HashKeyFile, HealthFile, ModeFile,
    NumberOrText, OriginMapFile, PassiveHealthFile, RetriesFile, SameSiteFile, ServerFile,
    StickyFile,
};
use crate::host::HostPattern;
use crate::model::{
    ActiveHealth, Balance, HashKey, Health, Origin, OriginServer, OriginTimeouts, OriginTls,
    PassiveHealth, ProxyProtocolVersion, Retries, StickyCookie, Transport, Verify, defaults,
};
use crate::pem;

impl Validator<'_> {
    pub(super) fn origin(&mut self, key: &str, f: OriginMapFile) -> Option<Origin> {
        let before = self.problems.len();
        let servers = self.servers(key, f.url, f.servers);
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
        let (mut https, servers, url) = servers?;
        if servers.is_empty() {
            // No server says which scheme: the mode does.
            https = matches!(f.mode, Some(ModeFile::Full | ModeFile::Strict));
        }
        let several = servers.len() > 1;
        let balance = self.balance(key, f.balance, f.hash);
        let health = self.health(key, f.health, several);
        let retries = self.retries(key, f.retries, several);
        let proxy_protocol = match f.proxy_protocol.as_deref() {
            None | Some("off") => None,
            Some("v1") => Some(ProxyProtocolVersion::V1),
            Some("v2") => Some(ProxyProtocolVersion::V2),
            Some(other) => {
                self.err(
                    format!("{key}.proxy_protocol"),
                    format!("`{other}` is not a PROXY protocol version; use `v1`, `v2` or `off`"),
                );
                None
            }
        };

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
        if f.h2c && mode != ModeFile::Flexible {
            self.err(
                format!("{key}.h2c"),
                "only applies to plaintext (`flexible`) origins; TLS origins choose HTTP/2 by ALPN",
            );
        }
        if f.max_connections == Some(0) {
            self.err(
                format!("{key}.max_connections"),
                "must be at least 1; leave it out for no limit",
            );
        }
        if f.h2c && proxy_protocol.is_some() {
            self.err(
                format!("{key}.h2c"),
                "cannot be combined with `proxy_protocol`: a PROXY header describes one client, and HTTP/2 shares a connection among many",
            );
        }

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
            let server_name = f.server_name.and_then(|n| match HostPattern::parse(&n) {
                Ok(HostPattern::Exact(name)) => Some(
                    name.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned(),
                ),
                Ok(HostPattern::Wildcard(_)) => {
                    self.err(
                        format!("{key}.server_name"),
                        "must be one name, not a wildcard",
                    );
                    None
                }
                Err(e) => {
                    self.err(format!("{key}.server_name"), e.to_string());
                    None
                }
            });
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
            url,
            servers,
            transport,
            balance: balance?,
            health: health?,
            retries: retries?,
            timeouts,
            proxy_protocol,
            h2c: f.h2c,
            max_connections: f.max_connections,
            verify_failure_status,
        })
    }

    /// `url` or `servers`: whether they use https, the servers, and the origin's label.
    fn servers(
        &mut self,
        key: &str,
        url: Option<String>,
        servers: Option<Vec<ServerFile>>,
    ) -> Option<(bool, Vec<OriginServer>, String)> {
        let entries: Vec<(String, String, Option<u32>)> = match (url, servers) {
            (Some(_), Some(_)) => {
                self.err(
                    key,
                    "`url` and `servers` cannot both be set; list every server under `servers`",
                );
                return None;
            }
            (None, None) => {
                self.err(key, "an origin needs a `url` or a list of `servers`");
                return None;
            }
            (Some(url), None) => vec![(format!("{key}.url"), url, None)],
            // An origin with no servers (a placeholder, as a Kubernetes Service with no
            // ready endpoint) answers 503.
            (None, Some(list)) if list.is_empty() => {
                return Some((false, Vec::new(), "(no servers)".to_owned()));
            }
            (None, Some(list)) => list
                .into_iter()
                .enumerate()
                .map(|(i, s)| (format!("{key}.servers[{i}].url"), s.url, s.weight))
                .collect(),
        };
        let mut scheme = None;
        let mut out = Vec::with_capacity(entries.len());
        let mut ok = true;
        for (url_key, url, weight) in entries {
            if let Some(w) = weight.filter(|w| !(1..=1000).contains(w)) {
                let wkey = url_key.trim_end_matches(".url").to_owned() + ".weight";
                let why = if w == 0 {
                    "must be at least 1 (remove the server to send it nothing)"
                } else {
                    "at most 1000"
                };
                self.err(wkey, why);
                ok = false;
            }
            let (https, host, port) = match parse_origin_url(&url) {
                Ok(p) => p,
                Err(e) => {
                    self.err(url_key, e);
                    ok = false;
                    continue;
                }
            };
            match scheme {
                None => scheme = Some(https),
                Some(first) if first != https => {
                    self.err(
                        url_key.clone(),
                        "every server of an origin must use the same scheme (http:// or https://)",
                    );
                    ok = false;
                }
                Some(_) => {}
            }
            if out.iter().any(|s: &OriginServer| s.url == url) {
                self.err(url_key, format!("`{url}` is listed twice"));
                ok = false;
            }
            out.push(OriginServer {
                url,
                host,
                port,
                weight: weight.unwrap_or(1),
            });
        }
        if !ok {
            return None;
        }
        let label = out
            .iter()
            .map(|s| s.url.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        Some((scheme.unwrap_or(false), out, label))
    }

    fn balance(
        &mut self,
        key: &str,
        balance: Option<BalanceFile>,
        hash: Option<HashFile>,
    ) -> Option<Balance> {
        let balance = match balance {
            None => None,
            Some(BalanceFile::Keyword(k)) => Some(k),
            Some(BalanceFile::Map(m)) => {
                if hash.is_some() {
                    self.err(format!("{key}.hash"), "only applies with `balance: hash`");
                    return None;
                }
                return self
                    .sticky(&format!("{key}.balance.sticky"), m.sticky)
                    .map(Balance::Sticky);
            }
        };
        match (balance, hash) {
            (Some(BalanceKeyword::Hash), None) => {
                self.err(
                    format!("{key}.hash"),
                    "`balance: hash` needs `hash: { key: header | cookie | client_ip, name: ... }`",
                );
                None
            }
            (Some(BalanceKeyword::Hash), Some(h)) => {
                let hkey = format!("{key}.hash.name");
                let name = match (h.key, h.name) {
                    (HashKeyFile::ClientIp, None) => return Some(Balance::Hash(HashKey::ClientIp)),
                    (HashKeyFile::ClientIp, Some(_)) => {
                        self.err(hkey, "`client_ip` takes no name");
                        return None;
                    }
                    (_, None) => {
                        self.err(hkey, "the header or cookie to hash is required");
                        return None;
                    }
                    (k, Some(n)) => (k, n),
                };
                match name {
                    (HashKeyFile::Header, n) => match http::HeaderName::from_bytes(n.as_bytes()) {
                        Ok(h) => Some(Balance::Hash(HashKey::Header(h.as_str().to_owned()))),
                        Err(_) => {
                            self.err(hkey, format!("`{n}` is not a valid header name"));
                            None
                        }
                    },
                    (_, n) if !is_cookie_name(&n) => {
                        self.err(hkey, format!("`{n}` is not a valid cookie name"));
                        None
                    }
                    (_, n) => Some(Balance::Hash(HashKey::Cookie(n))),
                }
            }
            (_, Some(_)) => {
                self.err(format!("{key}.hash"), "only applies with `balance: hash`");
                None
            }
            (None | Some(BalanceKeyword::RoundRobin), None) => Some(Balance::RoundRobin),
            (Some(BalanceKeyword::LeastRequests), None) => Some(Balance::LeastRequests),
            (Some(BalanceKeyword::RandomTwo), None) => Some(Balance::RandomTwo),
        }
    }

    /// `balance: { sticky: { cookie: NAME, max_age, path, secure, same_site } }`.
    fn sticky(&mut self, key: &str, f: StickyFile) -> Option<StickyCookie> {
        let before = self.problems.len();
        if !is_cookie_name(&f.cookie) {
            self.err(
                format!("{key}.cookie"),
                format!("`{}` is not a valid cookie name", f.cookie),
            );
        }
        let path = f.path.unwrap_or_else(|| "/".to_owned());
        if !path.starts_with('/')
            || path
                .bytes()
                .any(|b| b == b';' || !(0x21..0x7f).contains(&b))
        {
            self.err(
                format!("{key}.path"),
                "must be a path starting with `/`, without `;`, spaces or control characters",
            );
        }
        if f.max_age.is_some_and(|d| d.is_zero()) {
            self.err(
                format!("{key}.max_age"),
                "must be greater than zero; leave it out for a session cookie",
            );
        }
        let same_site = f.same_site.map(|s| match s {
            SameSiteFile::Lax => "Lax",
            SameSiteFile::Strict => "Strict",
            SameSiteFile::None => "None",
        });
        if same_site == Some("None") && f.secure == Some(false) {
            self.err(
                format!("{key}.same_site"),
                "`none` needs a Secure cookie (browsers refuse it otherwise); remove `secure: false`",
            );
        }
        if self.problems.len() > before {
            return None;
        }
        Some(StickyCookie {
            name: f.cookie,
            max_age: f.max_age,
            path,
            secure: f.secure,
            same_site: same_site.map(str::to_owned),
        })
    }

    fn health(&mut self, key: &str, f: HealthFile, several: bool) -> Option<Health> {
        let before = self.problems.len();
        let active = f.active.map(|a| {
            let akey = format!("{key}.health.active");
            let path = a.path.unwrap_or_else(|| "/".into());
            if !path.starts_with('/') || http::uri::PathAndQuery::try_from(path.as_str()).is_err() {
                self.err(format!("{akey}.path"), "must be a path starting with `/`");
            }
            let interval = self
                .positive(
                    a.interval,
                    defaults::HEALTH_INTERVAL,
                    &format!("{akey}.interval"),
                )
                .unwrap_or_default();
            let timeout = self
                .positive(
                    a.timeout,
                    defaults::HEALTH_TIMEOUT,
                    &format!("{akey}.timeout"),
                )
                .unwrap_or_default();
            let expect = match a.expect {
                None => (200, 399),
                Some(e) => parse_status_range(&e).unwrap_or_else(|msg| {
                    self.err(format!("{akey}.expect"), msg);
                    (0, 0)
                }),
            };
            let rise = self.at_least_one(a.rise, defaults::HEALTH_RISE, &format!("{akey}.rise"));
            let fall = self.at_least_one(a.fall, defaults::HEALTH_FALL, &format!("{akey}.fall"));
            ActiveHealth {
                path,
                interval,
                timeout,
                expect,
                rise,
                fall,
            }
        });
        let default_passive = PassiveHealth {
            failures: defaults::PASSIVE_FAILURES,
            window: defaults::PASSIVE_WINDOW,
            eject: defaults::PASSIVE_EJECT,
        };
        let passive = match f.passive {
            // With one server there is nowhere else to send requests; ejecting it would
            // only turn a flaky origin into a dead one.
            None => several.then_some(default_passive),
            Some(PassiveHealthFile::Keyword(k)) if k == "off" => None,
            Some(PassiveHealthFile::Keyword(k)) => {
                self.err(
                    format!("{key}.health.passive"),
                    format!(
                        "`{k}` is not valid; use `off` or a map with `failures`, `window`, `eject`"
                    ),
                );
                None
            }
            Some(PassiveHealthFile::Map(m)) => {
                let pkey = format!("{key}.health.passive");
                Some(PassiveHealth {
                    failures: self.at_least_one(
                        m.failures,
                        defaults::PASSIVE_FAILURES,
                        &format!("{pkey}.failures"),
                    ),
                    window: self
                        .positive(
                            m.window,
                            defaults::PASSIVE_WINDOW,
                            &format!("{pkey}.window"),
                        )
                        .unwrap_or_default(),
                    eject: self
                        .positive(m.eject, defaults::PASSIVE_EJECT, &format!("{pkey}.eject"))
                        .unwrap_or_default(),
                })
            }
        };
        (self.problems.len() == before).then_some(Health { active, passive })
    }

    fn retries(&mut self, key: &str, f: Option<RetriesFile>, several: bool) -> Option<Retries> {
        let rkey = format!("{key}.retries");
        let f = f.unwrap_or_default();
        let before = self.problems.len();
        let attempts = f.attempts.unwrap_or(u32::from(several));
        if attempts > 10 {
            self.err(format!("{rkey}.attempts"), "at most 10");
        }
        let mut retries = Retries {
            attempts,
            on_connect: true,
            on_reset: true,
            on_status: Vec::new(),
            budget: defaults::RETRY_BUDGET,
        };
        if let Some(on) = f.on {
            retries.on_connect = false;
            retries.on_reset = false;
            for (i, item) in on.iter().enumerate() {
                match item {
                    CodeOrText::Text(t) if t == "connect" => retries.on_connect = true,
                    CodeOrText::Text(t) if t == "reset" => retries.on_reset = true,
                    CodeOrText::Code(c) if (500..=599).contains(c) => retries.on_status.push(*c),
                    CodeOrText::Code(c) => self.err(
                        format!("{rkey}.on[{i}]"),
                        format!("{c}: only 5xx statuses are retried"),
                    ),
                    CodeOrText::Text(t) => self.err(
                        format!("{rkey}.on[{i}]"),
                        format!(
                            "`{t}` is not a retry condition; use `connect`, `reset` or a 5xx status"
                        ),
                    ),
                }
            }
        }
        if let Some(b) = f.budget {
            let value = match &b {
                NumberOrText::Number(n) => Some(*n),
                NumberOrText::Text(t) => t
                    .trim()
                    .strip_suffix('%')
                    .and_then(|p| p.trim().parse::<f64>().ok())
                    .map(|p| p / 100.0),
            };
            match value {
                Some(v) if (0.0..=1.0).contains(&v) => retries.budget = v,
                _ => self.err(
                    format!("{rkey}.budget"),
                    "must be a percentage such as `20%` (or a fraction from 0 to 1)",
                ),
            }
        }
        (self.problems.len() == before).then_some(retries)
    }

    fn at_least_one(&mut self, value: Option<u32>, default: u32, key: &str) -> u32 {
        match value {
            Some(0) => {
                self.err(key, "must be at least 1");
                default
            }
            Some(v) => v,
            None => default,
        }
    }
}

/// `200`, `200-399`.
fn parse_status_range(e: &CodeOrText) -> Result<(u16, u16), String> {
    let valid = |c: u16| (100..=599).contains(&c);
    let (lo, hi) = match e {
        CodeOrText::Code(c) => (*c, *c),
        CodeOrText::Text(t) => {
            let parse = |s: &str| s.trim().parse::<u16>().ok();
            match t.split_once('-') {
                Some((a, b)) => match (parse(a), parse(b)) {
                    (Some(a), Some(b)) => (a, b),
                    _ => {
                        return Err(format!(
                            "`{t}` is not a status or a range such as `200-399`"
                        ));
                    }
                },
                None => match parse(t) {
                    Some(c) => (c, c),
                    None => {
                        return Err(format!(
                            "`{t}` is not a status or a range such as `200-399`"
                        ));
                    }
                },
            }
        }
    };
    if !valid(lo) || !valid(hi) || lo > hi {
        return Err(format!("{lo}-{hi} is not a range of HTTP statuses"));
    }
    Ok((lo, hi))
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

/// A cookie name as RFC 6265 allows it: a token (no separators, spaces or controls).
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
