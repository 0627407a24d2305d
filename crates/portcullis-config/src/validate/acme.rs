//! The `acme` section, and the checks that tie `tls: acme` sites to it and to the listeners.

use super::Validator;
use crate::file::{AcmeFile, ChallengeFile};
use crate::host::HostPattern;
use crate::model::{Acme, Challenge, Eab, Listen, Site, SiteTls, defaults};
use crate::pem;

impl Validator<'_> {
    pub(super) fn acme(&mut self, f: AcmeFile) -> Option<Acme> {
        let before = self.problems.len();
        let directory = match f.directory.as_deref() {
            None | Some("letsencrypt") => defaults::ACME_DIRECTORY.to_owned(),
            Some("letsencrypt-staging") => defaults::ACME_STAGING_DIRECTORY.to_owned(),
            Some(url) => {
                if let Err(e) = check_directory_url(url) {
                    self.err("acme.directory", e);
                }
                url.to_owned()
            }
        };
        if let Some(email) = &f.email {
            let ok = email
                .split_once('@')
                .is_some_and(|(user, domain)| !user.is_empty() && domain.contains('.'));
            if !ok || email.contains([' ', ',', ':']) {
                self.err("acme.email", format!("`{email}` is not an email address"));
            }
        }
        let ca_bundle = match &f.ca_bundle {
            None => Vec::new(),
            Some(path) => match pem::read_certs(&self.resolve(path)) {
                Ok(certs) => certs,
                Err(e) => {
                    self.err("acme.ca_bundle", e);
                    Vec::new()
                }
            },
        };
        let eab = f.eab.and_then(|eab| {
            if eab.kid.trim().is_empty() {
                self.err("acme.eab.kid", "must not be empty");
            }
            match decode_base64url(eab.hmac_key.trim()) {
                Some(key) if !key.is_empty() => Some(Eab {
                    kid: eab.kid,
                    hmac_key: key,
                }),
                _ => {
                    self.err(
                        "acme.eab.hmac_key",
                        "not base64url (the key as the CA gave it, e.g. `zWNDZM6eQGHWpSRT...`)",
                    );
                    None
                }
            }
        });
        let backoff_initial = self.positive(
            f.backoff.initial,
            defaults::ACME_BACKOFF_INITIAL,
            "acme.backoff.initial",
        );
        let backoff_max = self.positive(
            f.backoff.max,
            defaults::ACME_BACKOFF_MAX,
            "acme.backoff.max",
        );
        if let (Some(i), Some(m)) = (backoff_initial, backoff_max)
            && i > m
        {
            self.err(
                "acme.backoff.max",
                "must not be shorter than `acme.backoff.initial`",
            );
        }
        let renew_before = self.positive_opt(f.renew_before, "acme.renew_before");
        let concurrency = match f.concurrency {
            None => defaults::ACME_CONCURRENCY,
            Some(n) if (1..=64).contains(&n) => n,
            Some(_) => {
                self.err("acme.concurrency", "must be between 1 and 64");
                defaults::ACME_CONCURRENCY
            }
        };
        if self.problems.len() > before {
            return None;
        }
        Some(Acme {
            directory,
            email: f.email,
            ca_bundle,
            challenge: match f.challenge {
                None | Some(ChallengeFile::TlsAlpn01) => Challenge::TlsAlpn01,
                Some(ChallengeFile::Http01) => Challenge::Http01,
            },
            eab,
            renew_before,
            backoff_initial: backoff_initial?,
            backoff_max: backoff_max?,
            concurrency,
        })
    }

    /// `tls: acme` sites need names a CA can validate with the challenges the gateway answers,
    /// and HTTP-01 needs the plain HTTP listener.
    pub(super) fn acme_sites(&mut self, sites: &[Site], acme: &Acme, listen: &Listen) {
        let mut any = false;
        for (i, site) in sites.iter().enumerate() {
            if !matches!(site.tls, SiteTls::Acme { .. }) {
                continue;
            }
            any = true;
            for (j, host) in site.hosts.iter().enumerate() {
                match host {
                    HostPattern::Wildcard(_) => self.err(
                        format!("sites[{i}].hosts[{j}]"),
                        format!(
                            "`{host}`: wildcard certificates need the DNS-01 challenge, which Portcullis does not answer yet; use certificate files for this site"
                        ),
                    ),
                    exact if exact.is_ip() => self.err(
                        format!("sites[{i}].hosts[{j}]"),
                        format!("`{host}`: ACME certificates are for DNS names; use `tls: local` or files for an IP"),
                    ),
                    _ => {}
                }
            }
        }
        if any && acme.challenge == Challenge::Http01 && listen.http.is_none() {
            self.err(
                "acme.challenge",
                "`http-01` is answered on the plain HTTP listener, but `listen.http` is off",
            );
        }
    }
}

/// ACME directories are HTTPS; plain HTTP is accepted only on loopback (test servers).
fn check_directory_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid URL `{url}`: {e}"))?;
    let host = uri.host().unwrap_or_default();
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(()),
        Some("http") if matches!(host, "127.0.0.1" | "localhost" | "[::1]") => Ok(()),
        Some("http") => {
            Err("must be an https:// URL (plain http is allowed on loopback only)".into())
        }
        _ => Err(format!(
            "`{url}` is not a directory URL; expected https://..., `letsencrypt` or `letsencrypt-staging`"
        )),
    }
}

/// Decodes base64url (RFC 4648 §5), with or without padding; the standard alphabet's `+`
/// and `/` are accepted too.
pub(super) fn decode_base64url(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be padding zeros, and a single leftover character is impossible.
    (bits < 6 && acc == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_decodes() {
        assert_eq!(decode_base64url("aGVsbG8").unwrap(), b"hello");
        assert_eq!(decode_base64url("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64url("-_8").unwrap(), [0xfb, 0xff]);
        assert!(decode_base64url("a").is_none());
        assert!(decode_base64url("ab$c").is_none());
    }
}
