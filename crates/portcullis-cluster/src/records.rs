//! The records replicas share, their keys, and their JSON. Every record carries `format`;
//! one written by a newer Portcullis (a higher format) is refused rather than half read.
//!
//! | key | record |
//! |---|---|
//! | `leader` | the issuer's node name (the store's election) |
//! | `nodes/<node>` | [`NodeReport`], alive while the replica is |
//! | `account` | [`AccountRecord`] |
//! | `certs/<site>` | [`CertRecord`] |
//! | `orders/<site>` | [`OrderEntry`] |
//! | `history/<site>` | [`HistoryRecord`] |
//! | `challenges/http-01/<token>` | the key authorization, as text |
//! | `challenges/tls-alpn-01/<name>` | [`AlpnRecord`] |

use portcullis_acme::{History, OrderRecord};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::seal::{OpenError, Sealer, Stored};

/// The record format this version writes and the newest it reads.
pub const FORMAT: u32 = 1;

/// Key prefixes.
pub const CERTS: &str = "certs/";
/// Orders in progress.
pub const ORDERS: &str = "orders/";
/// Sites' histories.
pub const HISTORY: &str = "history/";
/// HTTP-01 answers.
pub const HTTP01: &str = "challenges/http-01/";
/// TLS-ALPN-01 answers.
pub const ALPN01: &str = "challenges/tls-alpn-01/";
/// Every challenge answer.
pub const CHALLENGES: &str = "challenges/";
/// The account.
pub const ACCOUNT: &str = "account";

/// Why a record was not used.
#[derive(Debug, thiserror::Error)]
pub enum BadRecord {
    /// Not the JSON this version writes.
    #[error("not a Portcullis record: {0}")]
    Malformed(String),
    /// Written by a newer Portcullis.
    #[error("written by a newer Portcullis (format {0}; this one reads up to {FORMAT})")]
    Newer(u32),
    /// The private key cannot be read.
    #[error("{0}")]
    Secret(#[from] OpenError),
    /// The certificate and key cannot be served for the record's site.
    #[error("{0}")]
    Unusable(String),
}

impl BadRecord {
    /// The metric label for the kind of problem.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Newer(_) => "newer_format",
            Self::Secret(_) => "undecryptable",
            Self::Unusable(_) => "unusable",
        }
    }
}

/// A secret field: `<name>` in the clear or `<name>_sealed`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SecretField {
    #[serde(skip_serializing_if = "Option::is_none")]
    plain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sealed: Option<String>,
}

impl SecretField {
    fn new(stored: Stored) -> Self {
        match stored {
            Stored::Plain(p) => Self {
                plain: Some(p),
                sealed: None,
            },
            Stored::Sealed(s) => Self {
                plain: None,
                sealed: Some(s),
            },
        }
    }

    fn open(&self, sealer: &Sealer, aad: &str) -> Result<String, BadRecord> {
        match (&self.plain, &self.sealed) {
            (_, Some(s)) => Ok(sealer.open(aad, &Stored::Sealed(s.clone()))?),
            (Some(p), None) => Ok(p.clone()),
            (None, None) => Err(BadRecord::Malformed("no private key".into())),
        }
    }
}

/// A site's certificate, for every replica.
#[derive(Clone, Serialize, Deserialize)]
pub struct CertRecord {
    /// [`FORMAT`].
    pub format: u32,
    /// The site.
    pub site: String,
    /// The names it was ordered for.
    pub names: Vec<String>,
    /// The chain, leaf first.
    pub chain_pem: String,
    /// The key, in the clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
    /// The key, sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sealed: Option<String>,
    /// The replica that ordered it.
    pub issued_by: String,
    /// When it was stored (Unix seconds).
    pub issued_at: u64,
    /// The issuer's fencing token when it was stored.
    pub token: i64,
}

impl std::fmt::Debug for CertRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertRecord")
            .field("site", &self.site)
            .field("names", &self.names)
            .field("issued_by", &self.issued_by)
            .finish_non_exhaustive()
    }
}

impl CertRecord {
    /// A record for `site`, its key sealed under the record's key.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sealer: &Sealer,
        site: &str,
        names: &[String],
        chain_pem: &str,
        key_pem: &str,
        issued_by: &str,
        issued_at: u64,
        token: i64,
    ) -> Self {
        let key = SecretField::new(sealer.seal(&cert_key(site), key_pem));
        Self {
            format: FORMAT,
            site: site.to_owned(),
            names: names.to_vec(),
            chain_pem: chain_pem.to_owned(),
            key_pem: key.plain,
            key_sealed: key.sealed,
            issued_by: issued_by.to_owned(),
            issued_at,
            token,
        }
    }

    /// The private key, opened.
    pub fn key(&self, sealer: &Sealer) -> Result<String, BadRecord> {
        SecretField {
            plain: self.key_pem.clone(),
            sealed: self.key_sealed.clone(),
        }
        .open(sealer, &cert_key(&self.site))
    }
}

/// An order in progress.
#[derive(Clone, Serialize, Deserialize)]
pub struct OrderEntry {
    /// [`FORMAT`].
    pub format: u32,
    /// The names ordered.
    pub names: Vec<String>,
    /// The order's URL.
    pub url: String,
    /// The CSR key, in the clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
    /// The CSR key, sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sealed: Option<String>,
    /// The replica that placed it.
    pub placed_by: String,
    /// When (Unix seconds).
    pub placed_at: u64,
}

impl OrderEntry {
    /// The entry for `record`, placed by `node`.
    pub fn new(sealer: &Sealer, site: &str, record: &OrderRecord, node: &str, now: u64) -> Self {
        let key = SecretField::new(sealer.seal(&order_key(site), &record.key_pem));
        Self {
            format: FORMAT,
            names: record.names.clone(),
            url: record.url.clone(),
            key_pem: key.plain,
            key_sealed: key.sealed,
            placed_by: node.to_owned(),
            placed_at: now,
        }
    }

    /// The order, its key opened.
    pub fn record(&self, sealer: &Sealer, site: &str) -> Result<OrderRecord, BadRecord> {
        let key_pem = SecretField {
            plain: self.key_pem.clone(),
            sealed: self.key_sealed.clone(),
        }
        .open(sealer, &order_key(site))?;
        Ok(OrderRecord {
            names: self.names.clone(),
            url: self.url.clone(),
            key_pem,
        })
    }
}

/// A site's history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// [`FORMAT`].
    pub format: u32,
    /// The history.
    #[serde(flatten)]
    pub history: History,
}

/// The fleet's ACME account.
#[derive(Clone, Serialize, Deserialize)]
pub struct AccountRecord {
    /// [`FORMAT`].
    pub format: u32,
    /// instant-acme's credentials JSON, in the clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
    /// The same, sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_sealed: Option<String>,
    /// The replica that created it.
    pub created_by: String,
}

impl AccountRecord {
    /// The record for `credentials_json`.
    pub fn new(sealer: &Sealer, credentials_json: &str, node: &str) -> Self {
        let field = SecretField::new(sealer.seal(ACCOUNT, credentials_json));
        Self {
            format: FORMAT,
            credentials: field.plain,
            credentials_sealed: field.sealed,
            created_by: node.to_owned(),
        }
    }

    /// The credentials JSON, opened.
    pub fn credentials(&self, sealer: &Sealer) -> Result<String, BadRecord> {
        SecretField {
            plain: self.credentials.clone(),
            sealed: self.credentials_sealed.clone(),
        }
        .open(sealer, ACCOUNT)
    }
}

/// A TLS-ALPN-01 answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlpnRecord {
    /// [`FORMAT`].
    pub format: u32,
    /// The key authorization's SHA-256 digest, hex.
    pub digest: String,
}

/// What each replica reports about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeReport {
    /// [`FORMAT`].
    pub format: u32,
    /// The replica.
    pub node: String,
    /// The newest store revision it has applied.
    pub applied_revision: i64,
    /// Its Portcullis version.
    pub version: String,
}

/// Decodes a record, refusing newer formats before reading the rest.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BadRecord> {
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    let format: Format =
        serde_json::from_slice(bytes).map_err(|e| BadRecord::Malformed(e.to_string()))?;
    if format.format > FORMAT {
        return Err(BadRecord::Newer(format.format));
    }
    serde_json::from_slice(bytes).map_err(|e| BadRecord::Malformed(e.to_string()))
}

/// JSON of a record.
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).expect("records serialize")
}

/// `certs/<site>`.
pub fn cert_key(site: &str) -> String {
    format!("{CERTS}{site}")
}

/// `orders/<site>`.
pub fn order_key(site: &str) -> String {
    format!("{ORDERS}{site}")
}

/// `history/<site>`.
pub fn history_key(site: &str) -> String {
    format!("{HISTORY}{site}")
}

/// Hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of `text` in hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_formats_and_garbage_are_refused() {
        assert!(matches!(
            decode::<AlpnRecord>(br#"{"format":99,"digest":"00"}"#),
            Err(BadRecord::Newer(99))
        ));
        assert!(matches!(
            decode::<AlpnRecord>(b"not json"),
            Err(BadRecord::Malformed(_))
        ));
        assert!(matches!(
            decode::<AlpnRecord>(br#"{"format":1}"#),
            Err(BadRecord::Malformed(_))
        ));
        let ok: AlpnRecord = decode(br#"{"format":1,"digest":"0aff"}"#).unwrap();
        assert_eq!(unhex(&ok.digest).unwrap(), [0x0a, 0xff]);
        assert_eq!(hex(&[0x0a, 0xff]), "0aff");
        assert!(unhex("0").is_none() && unhex("zz").is_none());
    }

    #[test]
    fn keys_are_sealed_when_a_key_is_configured_and_never_in_debug_output() {
        let sealer = Sealer::new(Some(&[1; 32]));
        let names = vec!["a.test".to_owned()];
        let r = CertRecord::new(&sealer, "a", &names, "CHAIN", "SECRET KEY", "r1", 5, 3);
        let json = String::from_utf8(encode(&r)).unwrap();
        assert!(
            !json.contains("SECRET") && json.contains("key_sealed"),
            "{json}"
        );
        assert!(!format!("{r:?}").contains("SECRET"));
        let back: CertRecord = decode(json.as_bytes()).unwrap();
        assert_eq!(back.key(&sealer).unwrap(), "SECRET KEY");
        assert!(matches!(
            back.key(&Sealer::new(None)),
            Err(BadRecord::Secret(OpenError::NoKey))
        ));

        let plain = CertRecord::new(&Sealer::new(None), "a", &names, "C", "K", "r1", 5, 3);
        let json = String::from_utf8(encode(&plain)).unwrap();
        assert!(json.contains("\"key_pem\":\"K\""), "{json}");
    }
}
