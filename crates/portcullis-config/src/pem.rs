//! Reading certificates and keys named by the config.

use std::path::Path;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Every certificate in a PEM file, in file order.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not valid PEM: {}", path.display(), describe(&e)))?;
    if certs.is_empty() {
        return Err(format!(
            "no certificate (`-----BEGIN CERTIFICATE-----`) found in {}",
            path.display()
        ));
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "no private key (PKCS#8, PKCS#1 or SEC1 PEM) found in {}",
            path.display()
        ),
        other => format!("{} is not valid PEM: {}", path.display(), describe(&other)),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => e.to_string(),
        };
        format!("cannot read {}: {why}", path.display())
    })
}

fn describe(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "malformed BEGIN line".into(),
        pem::Error::Base64Decode(_) => "bad base64 inside a section".into(),
        other => format!("{other:?}"),
    }
}
