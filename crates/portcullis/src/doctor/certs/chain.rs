//! What a certificate chain says about itself, judged the way a client judges it: validity,
//! names, the order of the chain and whether it verifies to a trusted root with only the
//! certificates sent (no intermediate fetched from elsewhere).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_config::HostPattern;
use portcullis_tls::{CertInfo, crypto_provider, format_time};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, RootCertStore};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Certificates of a chain looked at, at most: real chains hold two to four, and each
/// check compares every pair.
pub(super) const MAX_CHAIN: usize = 10;

/// Warn when a certificate expires sooner than this.
pub(super) const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// One certificate of a chain, read.
pub(super) struct Cert {
    /// As sent.
    pub der: CertificateDer<'static>,
    /// Validity and names.
    pub info: CertInfo,
    /// The subject's common name, or its whole DN when it has none.
    pub subject_cn: String,
    /// The issuer's common name, or its whole DN.
    pub issuer_cn: String,
}

impl Cert {
    /// Reads `der`; the error is the parser's reason.
    pub fn parse(der: &CertificateDer<'_>) -> Result<Self, String> {
        let (_, x509) = X509Certificate::from_der(der.as_ref()).map_err(|e| e.to_string())?;
        let info = CertInfo::parse(der).map_err(|e| e.to_string())?;
        let cn = |name: &x509_parser::x509::X509Name<'_>| {
            name.iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map_or_else(|| name.to_string(), str::to_owned)
        };
        Ok(Self {
            subject_cn: cn(x509.subject()),
            issuer_cn: cn(x509.issuer()),
            der: der.clone().into_owned(),
            info,
        })
    }
}

/// Whether `issuer` signed `child`: the names chain and the signature verifies.
pub(super) fn signs(issuer: &CertificateDer<'_>, child: &CertificateDer<'_>) -> bool {
    let (Ok((_, issuer)), Ok((_, child))) = (
        X509Certificate::from_der(issuer.as_ref()),
        X509Certificate::from_der(child.as_ref()),
    ) else {
        return false;
    };
    child.issuer().as_raw() == issuer.subject().as_raw()
        && child.verify_signature(Some(issuer.public_key())).is_ok()
}

/// How a certificate's validity period stands at `now`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Validity {
    /// Not valid before this.
    NotYetValid(SystemTime),
    /// Expired this long ago.
    Expired(SystemTime),
    /// Expires in under [`EXPIRY_WARNING`].
    ExpiresSoon(SystemTime, u64),
    /// Valid, expiring then, this many whole days left.
    Valid(SystemTime, u64),
}

/// How long before expiry to warn about a certificate the gateway renews itself (ACME,
/// local CA): half the window its renewal starts in (a third of the lifetime), so a
/// short-lived certificate renewed on time does not warn; at most [`EXPIRY_WARNING`].
pub(super) fn renewed_warning(info: &CertInfo) -> Duration {
    let lifetime = info
        .not_after
        .duration_since(info.not_before)
        .unwrap_or_default();
    EXPIRY_WARNING.min(lifetime / 6)
}

/// Where `info`'s validity stands at `now`, warning under `warn_under` left.
pub(super) fn validity(info: &CertInfo, now: SystemTime, warn_under: Duration) -> Validity {
    if info.not_before > now {
        return Validity::NotYetValid(info.not_before);
    }
    match info.not_after.duration_since(now) {
        Err(_) => Validity::Expired(info.not_after),
        Ok(left) => {
            let days = left.as_secs() / 86_400;
            if left < warn_under {
                Validity::ExpiresSoon(info.not_after, days)
            } else {
                Validity::Valid(info.not_after, days)
            }
        }
    }
}

/// Days between two times, rounded down, for messages.
pub(super) fn days_between(earlier: SystemTime, later: SystemTime) -> u64 {
    later
        .duration_since(earlier)
        .map_or(0, |d| d.as_secs() / 86_400)
}

/// The validity sentence of a leaf.
pub(super) fn describe_validity(v: &Validity, now: SystemTime) -> String {
    match v {
        Validity::NotYetValid(t) => format!(
            "the certificate is not valid yet: it starts on {} (in {} days); clients refuse it until then",
            format_time(*t),
            days_between(now, *t)
        ),
        Validity::Expired(t) => format!(
            "the certificate expired on {} ({} days ago); clients refuse it",
            format_time(*t),
            days_between(*t, now)
        ),
        Validity::ExpiresSoon(t, days) => format!(
            "the certificate expires on {} (in {days} days)",
            format_time(*t)
        ),
        Validity::Valid(t, days) => format!("valid until {} ({days} days left)", format_time(*t)),
    }
}

/// Whether the chain is in order; the error is the sentence saying where it is not.
pub(super) fn order(chain: &[Cert]) -> Result<(), String> {
    for (i, pair) in chain.windows(2).enumerate() {
        let (child, parent) = (&pair[0], &pair[1]);
        if signs(&parent.der, &child.der) {
            continue;
        }
        let real = chain
            .iter()
            .enumerate()
            .find(|(j, c)| *j != i && signs(&c.der, &child.der))
            .map(|(j, _)| j);
        return Err(match real {
            Some(j) => format!(
                "certificate {} ({}) does not sign certificate {} ({}); certificate {} does: the chain is out of order",
                i + 2,
                parent.subject_cn,
                i + 1,
                child.subject_cn,
                j + 1
            ),
            None => format!(
                "certificate {} ({}) does not sign certificate {} ({}, issued by {}); the chain is out of order or holds a certificate that does not belong to it",
                i + 2,
                parent.subject_cn,
                i + 1,
                child.subject_cn,
                child.issuer_cn
            ),
        });
    }
    Ok(())
}

/// The end of the chain a client builds from the leaf with the certificates sent: each
/// step the sent certificate that signs the last one.
pub(super) fn top(chain: &[Cert]) -> usize {
    let mut at = 0;
    let mut used = vec![false; chain.len()];
    used[0] = true;
    while let Some(next) =
        (0..chain.len()).find(|&j| !used[j] && signs(&chain[j].der, &chain[at].der))
    {
        used[next] = true;
        at = next;
    }
    at
}

/// How verification to a trusted root came out.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Trust {
    /// It verifies; the name of the certificate the sent chain ends at and its issuer.
    Trusted { top: String, root: String },
    /// The leaf signs itself.
    SelfSigned(String),
    /// The chain ends at a self-signed root no trust store here holds.
    UntrustedRoot(String),
    /// The chain ends at `top`, issued by `issuer`, which was not sent.
    MissingIssuer { top: String, issuer: String },
    /// Anything else webpki refused, in its words.
    Other(String),
    /// No root to verify against.
    NoRoots,
}

/// Verifies `chain` as a client that fetches nothing would, against `roots`, at a time
/// inside the leaf's validity (validity is judged on its own).
pub(super) fn trust(chain: &[Cert], roots: &RootCertStore, name: &str, now: SystemTime) -> Trust {
    if roots.is_empty() {
        return Trust::NoRoots;
    }
    let leaf = &chain[0];
    // A certificate from the network may say it ends before it starts: no clamp then.
    let (from, to) = (leaf.info.not_before, leaf.info.not_after);
    let at = if from <= to { now.clamp(from, to) } else { now };
    let at = UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).unwrap_or_default());
    let verifier = match WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots.clone()),
        crypto_provider(),
    )
    .build()
    {
        Ok(v) => v,
        Err(e) => return Trust::Other(e.to_string()),
    };
    let server_name = ServerName::try_from(name.to_owned())
        .unwrap_or_else(|_| ServerName::try_from("portcullis-doctor.invalid").expect("valid"));
    let intermediates: Vec<CertificateDer<'static>> =
        chain[1..].iter().map(|c| c.der.clone()).collect();
    let t = top(chain);
    let result = verifier.verify_server_cert(&leaf.der, &intermediates, &server_name, &[], at);
    match result {
        Ok(_)
        | Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => Trust::Trusted {
            top: chain[t].subject_cn.clone(),
            root: chain[t].issuer_cn.clone(),
        },
        Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            let self_signed = signs(&chain[t].der, &chain[t].der);
            match (t, self_signed) {
                (0, true) => Trust::SelfSigned(leaf.subject_cn.clone()),
                (_, true) => Trust::UntrustedRoot(chain[t].subject_cn.clone()),
                _ => Trust::MissingIssuer {
                    top: chain[t].subject_cn.clone(),
                    issuer: chain[t].issuer_cn.clone(),
                },
            }
        }
        Err(e) => Trust::Other(e.to_string()),
    }
}

/// The hosts of `hosts` the leaf does not cover.
pub(super) fn uncovered<'a>(leaf: &CertInfo, hosts: &'a [HostPattern]) -> Vec<&'a HostPattern> {
    hosts.iter().filter(|h| !leaf.covers(h)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(not_before: u64, not_after: u64) -> CertInfo {
        CertInfo {
            not_before: UNIX_EPOCH + Duration::from_secs(not_before),
            not_after: UNIX_EPOCH + Duration::from_secs(not_after),
            names: vec!["*.example.com".into(), "example.com".into()],
            issuer: "CN=x".into(),
            serial: "01".into(),
        }
    }

    #[test]
    fn validity_fails_outside_the_period_and_warns_under_fourteen_days() {
        let day = 86_400;
        let now = UNIX_EPOCH + Duration::from_secs(100 * day);
        assert!(matches!(
            validity(&info(101 * day, 200 * day), now, EXPIRY_WARNING),
            Validity::NotYetValid(_)
        ));
        assert!(matches!(
            validity(&info(10 * day, 99 * day), now, EXPIRY_WARNING),
            Validity::Expired(_)
        ));
        assert_eq!(
            validity(&info(10 * day, 105 * day), now, EXPIRY_WARNING),
            Validity::ExpiresSoon(UNIX_EPOCH + Duration::from_secs(105 * day), 5)
        );
        assert_eq!(
            validity(&info(10 * day, 130 * day), now, EXPIRY_WARNING),
            Validity::Valid(UNIX_EPOCH + Duration::from_secs(130 * day), 30)
        );
    }

    #[test]
    fn certificates_renewed_by_the_gateway_warn_late_in_short_lifetimes_only() {
        let day = 86_400;
        // A 90-day ACME certificate: the usual fourteen days.
        assert_eq!(renewed_warning(&info(0, 90 * day)), EXPIRY_WARNING);
        // A local 7-day leaf, re-issued daily: warned about with 28 hours left.
        assert_eq!(
            renewed_warning(&info(0, 7 * day)),
            Duration::from_secs(7 * day / 6)
        );
        let now = UNIX_EPOCH + Duration::from_secs(day);
        let local = info(0, 7 * day);
        assert!(matches!(
            validity(&local, now, renewed_warning(&local)),
            Validity::Valid(..)
        ));
    }

    #[test]
    fn a_wildcard_covers_one_label_only() {
        let leaf = info(0, 1);
        let hosts: Vec<HostPattern> = ["example.com", "a.example.com", "a.b.example.com"]
            .iter()
            .map(|h| HostPattern::parse(h).unwrap())
            .collect();
        let missing: Vec<String> = uncovered(&leaf, &hosts)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(missing, ["a.b.example.com"]);
    }
}
