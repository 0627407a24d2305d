//! An Ingress's annotations into typed settings. Each value is parsed on its own; an
//! invalid one is a problem naming it and is ignored (the rest of the Ingress is still
//! served). Values only ever become typed fields: none is pasted into any text the gateway
//! interprets (ingress-nginx's CVE-2025-1974 and CVE-2025-1097 came from that).

use std::collections::BTreeMap;
use std::time::Duration;

use portcullis_config::{Access, Balance, Hsts, Mode, Redirect, Retries, defaults, parse_size};

use values::{boolean, duration, location, networks, nginx_size, plain_path};

mod origin;
mod values;

/// Our annotations' prefix.
pub(super) const OURS: &str = "portcullis.dev/";
/// ingress-nginx's annotations' prefix.
pub(super) const NGINX: &str = "nginx.ingress.kubernetes.io/";

/// Ours, without the prefix (see docs/kubernetes.md).
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
pub(super) const NGINX_COOKIE: &str = "INGRESSCOOKIE";

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
    /// ingress-nginx's `proxy-ssl-verify`.
    pub(super) nginx_verify: Option<bool>,
    pub(super) protocol: Option<(String, Protocol)>,
    /// Roots for `strict` (`ca.crt`).
    pub(super) ca_secret: Option<SecretRef>,
    /// A `kubernetes.io/tls` Secret: the client certificate.
    pub(super) client_cert_secret: Option<SecretRef>,
    pub(super) server_name: Option<(String, String)>,
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
    r.without_effect(&settings);
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

pub(super) struct Reader<'a> {
    map: &'a BTreeMap<String, String>,
    problems: Vec<(String, String)>,
}

/// An annotation's full name and value.
type Found<'a> = (String, &'a str);

impl<'a> Reader<'a> {
    pub(super) fn ours(&self, name: &str) -> Option<Found<'a>> {
        let full = format!("{OURS}{name}");
        let value = self.map.get(&full)?;
        Some((full, value.trim()))
    }

    pub(super) fn nginx(&self, name: &str) -> Option<Found<'a>> {
        let full = format!("{NGINX}{name}");
        let value = self.map.get(&full)?;
        Some((full, value.trim()))
    }

    /// Ours, else ingress-nginx's.
    pub(super) fn either(&self, ours: &str, nginx: &str) -> Option<Found<'a>> {
        self.ours(ours).or_else(|| self.nginx(nginx))
    }

    pub(super) fn problem(&mut self, full: &str, message: impl Into<String>) {
        self.problems.push((annotation_key(full), message.into()));
    }

    /// Parses a found value, recording a problem (and giving `None`) when it is invalid.
    pub(super) fn parse<T>(
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

    pub(super) fn value<T>(
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

    /// Supported annotations that only qualify another one, present without it: each is a
    /// problem (it does nothing), rather than silently ignored.
    fn without_effect(&mut self, settings: &Settings) {
        let sticky = matches!(settings.origin.balance, Some(Balance::Sticky(_)));
        let cookie: [(&str, &[&str]); 2] = [
            (
                OURS,
                &[
                    "affinity-cookie-name",
                    "affinity-cookie-max-age",
                    "affinity-cookie-path",
                    "affinity-cookie-samesite",
                ],
            ),
            (
                NGINX,
                &[
                    "session-cookie-name",
                    "session-cookie-max-age",
                    "session-cookie-path",
                    "session-cookie-samesite",
                ],
            ),
        ];
        for (prefix, names) in cookie {
            for name in names {
                let full = format!("{prefix}{name}");
                if !sticky && self.map.contains_key(&full) {
                    self.problem(&full, "has no effect without `affinity: cookie`");
                }
            }
        }
        for prefix in [OURS, NGINX] {
            let full = format!("{prefix}permanent-redirect-code");
            let redirect = self.map.contains_key(&format!("{OURS}permanent-redirect"))
                || self.map.contains_key(&format!("{NGINX}permanent-redirect"));
            if !redirect && self.map.contains_key(&full) {
                self.problem(&full, "has no effect without `permanent-redirect`");
            }
        }
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
