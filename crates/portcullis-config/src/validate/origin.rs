//! Origins: URL, mode, TLS verification, client certificates, timeouts.

use super::Validator;
use crate::file::{ModeFile, OriginMapFile};
use crate::host::HostPattern;
use crate::model::{Origin, OriginTimeouts, OriginTls, Transport, Verify, defaults};
use crate::pem;

impl Validator<'_> {
    pub(super) fn origin(&mut self, key: &str, f: OriginMapFile) -> Option<Origin> {
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
