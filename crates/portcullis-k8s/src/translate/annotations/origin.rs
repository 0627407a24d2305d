//! The annotations about origins: mode, protocol, Secrets, server name, timeouts,
//! balancing and affinity, retries.

use portcullis_config::{Balance, HashKey, HostPattern, Mode, Retries, StickyCookie};

use super::values::{duration, is_token, positive_duration, secret_name};
use super::{NGINX_COOKIE, OUR_COOKIE, OriginSettings, Protocol, Reader, SecretRef};

impl Reader<'_> {
    pub(super) fn origin(&mut self) -> OriginSettings {
        let mode = self.parse(self.ours("origin-mode"), |v| match v {
            "flexible" => Ok(Mode::Flexible),
            "full" => Ok(Mode::Full),
            "strict" => Ok(Mode::Strict),
            _ => Err(format!(
                "`{v}` is not an origin mode; use flexible, full or strict"
            )),
        });
        // ingress-nginx's proxy-ssl-verify: whether a TLS backend is verified (it never
        // turns TLS on by itself).
        let nginx_verify = self.value(self.nginx("proxy-ssl-verify"), |v| match v {
            "on" => Ok(true),
            "off" => Ok(false),
            _ => Err(format!("`{v}` is not `on` or `off`")),
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
        let server_name = self.parse(self.either("origin-server-name", "proxy-ssl-name"), |v| {
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
            nginx_verify,
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

    pub(super) fn balance(&mut self) -> Option<Balance> {
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

    pub(super) fn affinity(&mut self) -> Option<Balance> {
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

    pub(super) fn retries(&mut self) -> Option<Retries> {
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
}
