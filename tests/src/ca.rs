//! Certificates made at test time: a CA, server leaves, client leaves.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A throwaway certificate authority.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The root certificate (DER).
    pub root_der: CertificateDer<'static>,
    /// The root certificate (PEM).
    pub root_pem: String,
}

/// A certificate and its key.
pub struct Leaf {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Private key PEM (PKCS#8).
    pub key_pem: String,
    /// Certificate DER.
    pub cert_der: CertificateDer<'static>,
    /// Private key DER.
    pub key_der: PrivateKeyDer<'static>,
}

impl Clone for Leaf {
    fn clone(&self) -> Self {
        Self {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            cert_der: self.cert_der.clone(),
            key_der: self.key_der.clone_key(),
        }
    }
}

/// What a CA certificate named `name` says of itself: a CA that signs certificates.
fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(name);
        let cert = params.self_signed(&key).unwrap();
        let root_pem = cert.pem();
        let root_der = cert.der().clone();
        Self {
            issuer: Issuer::new(params, key),
            root_der,
            root_pem,
        }
    }

    /// A server certificate for `names` (DNS names, wildcards or IPs).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate with common name `name`.
    pub fn client_leaf(&self, name: &str) -> Leaf {
        self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// An intermediate CA named `name`, signed by this CA. Its `root_der`/`root_pem` hold
    /// the intermediate's certificate (the one to send after a leaf it signs).
    pub fn intermediate(&self, name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = ca_params(name);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        TestCa {
            root_pem: cert.pem(),
            root_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` valid from `not_before` to `not_after` (expired,
    /// not yet valid, expiring soon).
    pub fn leaf_valid(
        &self,
        names: &[&str],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Leaf {
        self.issue_with(
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
            Some((not_before, not_after)),
        )
    }

    /// A self-signed server certificate for `names` (no CA behind it).
    pub fn self_signed(names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names[0]);
        params.distinguished_name = dn;
        let cert = params.self_signed(&key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    fn issue(&self, names: &[&str], eku: ExtendedKeyUsagePurpose) -> Leaf {
        self.issue_with(names, eku, None)
    }

    fn issue_with(
        &self,
        names: &[&str],
        eku: ExtendedKeyUsagePurpose,
        validity: Option<(SystemTime, SystemTime)>,
    ) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names[0]);
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into().unwrap()),
            })
            .collect();
        params.extended_key_usages = vec![eku];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        if let Some((not_before, not_after)) = validity {
            let since_epoch = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap();
            params.not_before = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(not_before);
            params.not_after = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(not_after);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// Writes the root certificate to `dir/<stem>.pem`.
    pub fn write_root(&self, dir: &Path, stem: &str) -> PathBuf {
        let path = dir.join(format!("{stem}.pem"));
        std::fs::write(&path, &self.root_pem).unwrap();
        path
    }
}

impl Leaf {
    /// Writes `dir/<stem>.pem` and `dir/<stem>.key` (0600); returns both paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::OpenOptionsExt;
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key)
            .unwrap();
        std::io::Write::write_all(&mut f, self.key_pem.as_bytes()).unwrap();
        (cert, key)
    }
}
