//! A certificate authority on disk for development names (`tls: local`), like `caddy trust`'s.
//! Leaf certificates are issued in memory at start and re-issued before they expire.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use portcullis_config::HostPattern;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::certs::certified_key;
use crate::fs::{create_private_dir, write_atomic};

/// How long a local leaf certificate is valid; the gateway re-issues well before.
pub const LOCAL_LEAF_VALIDITY: Duration = Duration::from_secs(7 * 86_400);
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
const ROOT_CERT: &str = "root.crt";
const ROOT_KEY: &str = "root.key";

/// Failure to open, create or use the local CA.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct LocalCaError {
    /// The file or folder involved.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

fn ca_err(path: &Path, message: impl std::fmt::Display) -> LocalCaError {
    LocalCaError {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// The local development CA: `root.crt` (trust this in browsers) and `root.key` (0600).
pub struct LocalCa {
    dir: PathBuf,
    root_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa").field("dir", &self.dir).finish()
    }
}

impl LocalCa {
    /// Opens the CA in `dir`, creating it (folder 0700, key 0600) if it does not exist.
    pub fn open_or_create(dir: &Path) -> Result<Self, LocalCaError> {
        let cert_path = dir.join(ROOT_CERT);
        let key_path = dir.join(ROOT_KEY);
        if !cert_path.exists() && !key_path.exists() {
            Self::create(dir)?;
        }
        let cert_pem = fs::read_to_string(&cert_path).map_err(|e| ca_err(&cert_path, e))?;
        let key_pem = fs::read_to_string(&key_path).map_err(|e| ca_err(&key_path, e))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| ca_err(&key_path, format!("not a usable private key: {e}")))?;
        let root_der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| ca_err(&cert_path, format!("not a PEM certificate: {e:?}")))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| ca_err(&cert_path, format!("not a usable CA certificate: {e}")))?;
        Ok(Self {
            dir: dir.to_owned(),
            root_der,
            issuer,
        })
    }

    fn create(dir: &Path) -> Result<(), LocalCaError> {
        create_private_dir(dir)
            .map_err(|e| ca_err(dir, format!("cannot create the CA folder: {e}")))?;
        let key = KeyPair::generate().map_err(|e| ca_err(dir, e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Portcullis");
        dn.push(
            DnType::CommonName,
            format!("Portcullis Local CA {}", hex(&random_serial(&key)[..4])),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(SerialNumber::from_slice(&random_serial(&key)));
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + ROOT_VALIDITY).into();
        let cert = params.self_signed(&key).map_err(|e| ca_err(dir, e))?;
        let key_path = dir.join(ROOT_KEY);
        write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)
            .map_err(|e| ca_err(&key_path, e))?;
        let cert_path = dir.join(ROOT_CERT);
        write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)
            .map_err(|e| ca_err(&cert_path, e))?;
        tracing::info!(
            ca = %dir.join(ROOT_CERT).display(),
            "created a local CA; trust its root certificate to use `tls: local` sites without warnings"
        );
        Ok(())
    }

    /// Path of the root certificate users add to their trust store.
    pub fn root_cert_path(&self) -> PathBuf {
        self.dir.join(ROOT_CERT)
    }

    /// The root certificate.
    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    /// Issues a leaf for `hosts`, valid from an hour ago for `validity`.
    pub fn issue(
        &self,
        hosts: &[HostPattern],
        validity: Duration,
    ) -> Result<Arc<CertifiedKey>, LocalCaError> {
        let fail = |e: &dyn std::fmt::Display| ca_err(&self.dir, format!("cannot issue: {e}"));
        let key = KeyPair::generate().map_err(|e| fail(&e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(first) = hosts.first() {
            dn.push(DnType::CommonName, first.to_string());
        }
        params.distinguished_name = dn;
        params.subject_alt_names = hosts
            .iter()
            .map(|h| {
                let text = h.to_string();
                let bare = text.trim_start_matches('[').trim_end_matches(']');
                match bare.parse() {
                    Ok(ip) => Ok(SanType::IpAddress(ip)),
                    Err(_) => text.try_into().map(SanType::DnsName),
                }
            })
            .collect::<Result<_, _>>()
            .map_err(|e| fail(&e))?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial(&key)));
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + validity).into();
        let cert = params.signed_by(&key, &self.issuer).map_err(|e| fail(&e))?;
        let chain = vec![cert.der().clone()];
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        certified_key(chain, private).map_err(|e| fail(&e))
    }
}

/// 16 bytes unique to the key (its public point is random), top bit clear so it is positive.
fn random_serial(key: &KeyPair) -> Vec<u8> {
    let raw = key.public_key_raw();
    let mut serial: Vec<u8> = raw.iter().skip(1).take(16).copied().collect();
    if let Some(first) = serial.first_mut() {
        *first &= 0x7f;
    }
    serial
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::certs::CertInfo;

    #[test]
    fn creates_once_with_private_key_0600_and_issues_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let ca = LocalCa::open_or_create(&ca_dir).unwrap();
        let mode = fs::metadata(ca_dir.join(ROOT_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let root = ca.root_der().clone();

        // Reopening reuses the same root.
        let again = LocalCa::open_or_create(&ca_dir).unwrap();
        assert_eq!(again.root_der(), &root);

        let hosts = vec![
            HostPattern::parse("app.localhost").unwrap(),
            HostPattern::parse("*.app.localhost").unwrap(),
            HostPattern::parse("127.0.0.1").unwrap(),
        ];
        let leaf = again.issue(&hosts, LOCAL_LEAF_VALIDITY).unwrap();
        let info = CertInfo::parse(&leaf.cert[0]).unwrap();
        assert_eq!(
            info.names,
            ["app.localhost", "*.app.localhost", "127.0.0.1"]
        );
        assert!(info.issuer.contains("Portcullis Local CA"));
        for h in &hosts {
            assert!(info.covers(h));
        }
    }

    #[test]
    fn corrupt_key_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        LocalCa::open_or_create(dir.path()).unwrap();
        fs::write(dir.path().join(ROOT_KEY), "garbage").unwrap();
        let err = LocalCa::open_or_create(dir.path()).unwrap_err();
        assert!(err.path.ends_with("root.key"), "{err}");
    }
}
