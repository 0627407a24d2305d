//! Turning PEM material into servable keys, and reading what a certificate says.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_config::HostPattern;
use rustls::sign::{CertifiedKey, SigningKey};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::provider::crypto_provider;

/// Why a certificate and key cannot be served together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key could not be loaded (unsupported algorithm or corrupt).
    #[error("unsupported or corrupt private key: {0}")]
    BadKey(String),
    /// The key is fine but belongs to another certificate.
    #[error("private key does not match the certificate")]
    Mismatch,
    /// The leaf certificate cannot be parsed.
    #[error("not a valid X.509 certificate: {0}")]
    BadCertificate(String),
}

/// Loads `key` and checks it matches the leaf of `chain`.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, KeyError> {
    let signing = match ecdsa_key(&key) {
        Some(signing) => signing,
        None => crypto_provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| KeyError::BadKey(e.to_string()))?,
    };
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(ck))
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(KeyError::Mismatch),
        Err(e) => Err(KeyError::BadCertificate(e.to_string())),
    }
}

/// A PKCS#8 EC key loaded as ECDSA directly. The provider's loader tries RSA first, and
/// aws-lc parses an EC key and checks it (deriving its public key) before refusing it as RSA,
/// then does it all again as ECDSA: twice the work for the P-256 keys Portcullis' ACME
/// client and local CA make. `None` for any other key, or one this cannot load: those take
/// the provider's loader, which reports what is wrong.
fn ecdsa_key(key: &PrivateKeyDer<'_>) -> Option<Arc<dyn SigningKey>> {
    let PrivateKeyDer::Pkcs8(pkcs8) = key else {
        return None;
    };
    // The algorithm identifier follows the version within the first bytes.
    let head = pkcs8.secret_pkcs8_der().get(..32)?;
    if !head
        .windows(EC_PUBLIC_KEY.len())
        .any(|w| w == EC_PUBLIC_KEY)
    {
        return None;
    }
    // The provider's own ECDSA loader (it is aws-lc-rs, see `crypto_provider`).
    rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(key).ok()
}

/// The DER of OID 1.2.840.10045.2.1, `id-ecPublicKey`: the PKCS#8 algorithm of an EC key.
const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

/// A certificate that cannot be read as X.509; `Display` is the parser's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidCertificate(String);

/// What a leaf certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// DNS names (wildcards as `*.example.com`) and IP addresses it is valid for.
    pub names: Vec<String>,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// Serial number in hex.
    pub serial: String,
}

impl CertInfo {
    /// Reads a DER certificate.
    pub fn parse(der: &CertificateDer<'_>) -> Result<Self, InvalidCertificate> {
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| InvalidCertificate(e.to_string()))?;
        let validity = cert.validity();
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(n) => names.push(n.to_ascii_lowercase()),
                    GeneralName::IPAddress(bytes) => {
                        if let Some(ip) = ip_from_bytes(bytes) {
                            names.push(match ip {
                                std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                                v4 => v4.to_string(),
                            });
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(CertInfo {
            not_before: to_system_time(validity.not_before.timestamp()),
            not_after: to_system_time(validity.not_after.timestamp()),
            names,
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string().replace(':', ""),
        })
    }

    /// Whether a client asking for `host` would accept this certificate's names.
    pub fn covers(&self, host: &HostPattern) -> bool {
        self.names.iter().any(|name| match host {
            HostPattern::Exact(h) => {
                name == h
                    || name.strip_prefix("*.").is_some_and(|suffix| {
                        h.split_once('.')
                            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix)
                    })
            }
            HostPattern::Wildcard(suffix) => name.strip_prefix("*.") == Some(suffix.as_str()),
        })
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => Some(<[u8; 4]>::try_from(bytes).ok()?.into()),
        16 => Some(<[u8; 16]>::try_from(bytes).ok()?.into()),
        _ => None,
    }
}

fn to_system_time(unix: i64) -> SystemTime {
    match u64::try_from(unix) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH,
    }
}

/// Formats a time as RFC 3339 UTC (`2026-11-21T16:52:00Z`), for summaries and logs.
pub fn format_time(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_keys_load_directly_and_other_keys_through_the_provider() {
        let ec = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let ec_key = PrivateKeyDer::try_from(ec.signing_key.serialize_der()).unwrap();
        assert!(ecdsa_key(&ec_key).is_some());
        let ck = certified_key(vec![ec.cert.der().clone()], ec_key).unwrap();
        assert_eq!(ck.key.algorithm(), rustls::SignatureAlgorithm::ECDSA);

        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["b.test".into()])
            .unwrap()
            .self_signed(&ed)
            .unwrap();
        let ed_key = PrivateKeyDer::try_from(ed.serialize_der()).unwrap();
        assert!(ecdsa_key(&ed_key).is_none());
        let ck = certified_key(vec![cert.der().clone()], ed_key).unwrap();
        assert_eq!(ck.key.algorithm(), rustls::SignatureAlgorithm::ED25519);

        // A key of another certificate is still refused.
        let other = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let other_key = PrivateKeyDer::try_from(other.signing_key.serialize_der()).unwrap();
        assert_eq!(
            certified_key(vec![ec.cert.der().clone()], other_key).unwrap_err(),
            KeyError::Mismatch
        );
    }

    #[test]
    fn formats_dates() {
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_time(UNIX_EPOCH + Duration::from_secs(1_795_280_000)),
            "2026-11-21T16:53:20Z"
        );
        assert_eq!(
            format_time(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn coverage_follows_tls_wildcard_rules() {
        let info = CertInfo {
            not_before: UNIX_EPOCH,
            not_after: UNIX_EPOCH,
            names: vec!["example.com".into(), "*.example.com".into(), "[::1]".into()],
            issuer: String::new(),
            serial: String::new(),
        };
        let p = |s: &str| HostPattern::parse(s).unwrap();
        assert!(info.covers(&p("example.com")));
        assert!(info.covers(&p("www.example.com")));
        assert!(info.covers(&p("*.example.com")));
        assert!(info.covers(&p("::1")));
        assert!(!info.covers(&p("a.b.example.com")));
        assert!(!info.covers(&p("example.org")));
        assert!(!info.covers(&p("*.b.example.com")));
    }
}
