//! Secrets as certificates: `kubernetes.io/tls` Secrets into a chain and a matching key,
//! `ca.crt` into roots. Every failure is a sentence naming the Secret and the field.

use k8s_openapi::api::core::v1::Secret;
use portcullis_config::{CertKey, HostPattern};
use portcullis_tls::CertInfo;
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

/// What a Secret holds, as far as TLS is concerned (parsed once).
#[derive(Clone)]
pub(super) struct Parsed {
    /// The certificate and key, or why not.
    pub(super) tls: Result<CertKey, String>,
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
            let parsed = parse(key, secret);
            self.parsed.insert(key.clone(), parsed);
        }
        self.parsed
            .get(key)
            .ok_or_else(|| format!("secret {key} does not exist"))
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
    let info = tls
        .as_ref()
        .ok()
        .and_then(|ck| ck.chain.first())
        .and_then(|leaf| CertInfo::parse(leaf).ok());
    Parsed { tls, info, ca }
}

fn tls(
    key: &ObjectKey,
    type_: Option<&str>,
    crt: Option<&[u8]>,
    private: Option<&[u8]>,
) -> Result<CertKey, String> {
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
    portcullis_tls::certified_key(chain.clone(), pkey.clone_key())
        .map_err(|e| format!("secret {key}: {e}"))?;
    let path = std::path::PathBuf::from(format!("secret:{key}"));
    Ok(CertKey {
        cert_path: path.clone(),
        key_path: path,
        chain,
        key: pkey,
    })
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
