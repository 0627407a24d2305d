//! Secrets as certificates: `kubernetes.io/tls` Secrets into a chain and a matching key,
//! `ca.crt` into roots. Every failure is a sentence naming the Secret and the field.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use portcullis_config::{CertKey, HostPattern};
use portcullis_tls::{CertInfo, Preloaded};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::index::Index;
use crate::snapshot::ObjectKey;

/// The Secret type a TLS Secret must have.
pub(super) const TLS_TYPE: &str = "kubernetes.io/tls";
/// Annotations cert-manager puts on the Secrets it manages.
const CERT_MANAGER: &[&str] = &[
    "cert-manager.io/certificate-name",
    "cert-manager.io/issuer-name",
];

/// What a Secret holds, as far as TLS is concerned (parsed once, and kept for the next
/// translation while the Secret holds the same data: [`SecretCache`]).
#[derive(Clone)]
pub(super) struct Parsed {
    /// The certificate and key, or why not.
    pub(super) tls: Result<CertKey, String>,
    /// The servable key built from `tls` to check it, handed to the apply path
    /// ([`Preloaded`]) so it is not built again there.
    pub(super) key: Option<Arc<CertifiedKey>>,
    /// What the leaf says (its names), when it reads as X.509.
    pub(super) info: Option<CertInfo>,
    /// `ca.crt`, if present and valid, or why not.
    pub(super) ca: Option<Result<Vec<CertificateDer<'static>>, String>>,
}

impl Index<'_> {
    /// Whether cert-manager manages the Secret (so only it may write it).
    pub(super) fn cert_manager_managed(&mut self, key: &ObjectKey) -> bool {
        self.secret(key)
            .and_then(|s| s.metadata.annotations.as_ref())
            .is_some_and(|a| CERT_MANAGER.iter().any(|k| a.contains_key(*k)))
    }

    fn parsed(&mut self, key: &ObjectKey) -> Result<&Parsed, String> {
        if !self.parsed.contains_key(key) {
            let secret = self
                .secret(key)
                .ok_or_else(|| format!("secret {key} does not exist"))?;
            let parsed = match self.earlier.parsed.remove(key) {
                Some((was, parsed)) if same_data(&was, secret) => parsed,
                _ => parse(key, secret),
            };
            self.parsed.insert(key.clone(), (secret.clone(), parsed));
        }
        self.parsed
            .get(key)
            .map(|(_, parsed)| parsed)
            .ok_or_else(|| format!("secret {key} does not exist"))
    }

    /// The keys built for this translation's TLS Secrets, and the Secrets it parsed, for
    /// the next one.
    pub(super) fn finish(self) -> (Preloaded, SecretCache) {
        let mut preloaded = Preloaded::default();
        for (_, parsed) in self.parsed.values() {
            if let (Ok(files), Some(key)) = (&parsed.tls, &parsed.key) {
                preloaded.insert(files, key.clone(), parsed.info.clone());
            }
        }
        (
            preloaded,
            SecretCache {
                parsed: self.parsed,
            },
        )
    }

    /// A `kubernetes.io/tls` Secret's chain and key, checked to match.
    pub(super) fn tls_secret(&mut self, key: &ObjectKey) -> Result<CertKey, String> {
        self.parsed(key)?.tls.clone()
    }

    /// Whether the certificate of a valid TLS Secret is valid for `host` (a leaf that does
    /// not read as X.509 counts as valid: the key check passed, and clients will judge).
    pub(super) fn covers(&mut self, key: &ObjectKey, host: &HostPattern) -> bool {
        match self.parsed(key) {
            Ok(p) => p.info.as_ref().is_none_or(|info| info.covers(host)),
            Err(_) => true,
        }
    }

    /// A Secret's `ca.crt` (any type).
    pub(super) fn ca_secret(
        &mut self,
        key: &ObjectKey,
    ) -> Result<Vec<CertificateDer<'static>>, String> {
        match &self.parsed(key)?.ca {
            Some(ca) => ca.clone(),
            None => Err(format!("secret {key} has no ca.crt")),
        }
    }
}

/// Secrets parsed by an earlier translation, with the object each was parsed from: the
/// next translation takes a Secret's result again while the Secret is the same object or
/// holds the same type and data, instead of parsing its PEM and loading its key again (the
/// key's check derives its public key: most of a translation's time with many TLS Secrets).
/// Holds only the Secrets the last translation read.
#[derive(Default)]
pub struct SecretCache {
    parsed: HashMap<ObjectKey, (Arc<Secret>, Parsed)>,
}

impl SecretCache {
    /// How many Secrets it holds.
    pub fn len(&self) -> usize {
        self.parsed.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.parsed.is_empty()
    }
}

impl std::fmt::Debug for SecretCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCache")
            .field("secrets", &self.parsed.len())
            .finish()
    }
}

/// Whether a translation's result for `was` holds for `now`: the same object (the
/// reflector store hands out the same `Arc` while a Secret is unchanged), or the same type
/// and data.
fn same_data(was: &Arc<Secret>, now: &Arc<Secret>) -> bool {
    Arc::ptr_eq(was, now) || (was.type_ == now.type_ && was.data == now.data)
}

fn parse(key: &ObjectKey, secret: &Secret) -> Parsed {
    let data = secret.data.as_ref();
    let field = |name: &str| data.and_then(|d| d.get(name)).map(|b| b.0.as_slice());
    let ca = field("ca.crt").map(|bytes| certs(key, "ca.crt", bytes));
    let tls = tls(
        key,
        secret.type_.as_deref(),
        field("tls.crt"),
        field("tls.key"),
    );
    let (tls, key) = match tls {
        Ok((files, key)) => (Ok(files), Some(key)),
        Err(e) => (Err(e), None),
    };
    let info = tls
        .as_ref()
        .ok()
        .and_then(|ck| ck.chain.first())
        .and_then(|leaf| CertInfo::parse(leaf).ok());
    Parsed { tls, key, info, ca }
}

fn tls(
    key: &ObjectKey,
    type_: Option<&str>,
    crt: Option<&[u8]>,
    private: Option<&[u8]>,
) -> Result<(CertKey, Arc<CertifiedKey>), String> {
    let type_ = type_.unwrap_or("Opaque");
    if type_ != TLS_TYPE {
        return Err(format!("secret {key} is of type {type_}, not {TLS_TYPE}"));
    }
    let crt = crt.ok_or_else(|| format!("secret {key} has no tls.crt"))?;
    let private = private.ok_or_else(|| format!("secret {key} has no tls.key"))?;
    let chain = certs(key, "tls.crt", crt)?;
    let pkey = PrivateKeyDer::from_pem_slice(private).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            format!("secret {key}: no private key (PKCS#8, PKCS#1 or SEC1 PEM) in tls.key")
        }
        _ => format!("secret {key}: tls.key is not valid PEM"),
    })?;
    let servable = portcullis_tls::certified_key(chain.clone(), pkey.clone_key())
        .map_err(|e| format!("secret {key}: {e}"))?;
    let path = std::path::PathBuf::from(format!("secret:{key}"));
    let files = CertKey {
        cert_path: path.clone(),
        key_path: path,
        chain,
        key: pkey,
        stamps: None,
    };
    Ok((files, servable))
}

fn certs(
    key: &ObjectKey,
    field: &str,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("secret {key}: {field} is not valid PEM"))?;
    if certs.is_empty() {
        return Err(format!(
            "secret {key}: no certificate (`-----BEGIN CERTIFICATE-----`) in {field}"
        ));
    }
    Ok(certs)
}
