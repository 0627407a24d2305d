//! Reading certificates and keys named by the config.

use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Every certificate in a PEM file, in file order.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    certs_in(path, &read(path)?)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    key_in(path, &read(path)?)
}

fn certs_in(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(bytes)
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

fn key_in(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "no private key (PKCS#8, PKCS#1 or SEC1 PEM) found in {}",
            path.display()
        ),
        other => format!("{} is not valid PEM: {}", path.display(), describe(&other)),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    read_stamped(path).map(|(bytes, _)| bytes)
}

/// The file's bytes and its stamp as it was opened, when it is old enough to be trusted
/// ([`FileStamp::trusted`]).
fn read_stamped(path: &Path) -> Result<(Vec<u8>, Option<FileStamp>), String> {
    #[cfg(test)]
    READS.with(|n| n.set(n.get() + 1));
    let read = || -> std::io::Result<_> {
        let mut file = std::fs::File::open(path)?;
        let meta = file.metadata()?;
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.read_to_end(&mut bytes)?;
        Ok((bytes, FileStamp::trusted(&meta, SystemTime::now())))
    };
    read().map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => e.to_string(),
        };
        format!("cannot read {}: {why}", path.display())
    })
}

#[cfg(test)]
thread_local! {
    /// Certificate and key files read on this thread, for the tests of reuse.
    pub(crate) static READS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Every certificate in a PEM file, and the file's stamp.
pub(crate) fn read_certs_stamped(
    path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, Option<FileStamp>), String> {
    let (bytes, stamp) = read_stamped(path)?;
    certs_in(path, &bytes).map(|certs| (certs, stamp))
}

/// The first private key in a PEM file, and the file's stamp.
pub(crate) fn read_key_stamped(
    path: &Path,
) -> Result<(PrivateKeyDer<'static>, Option<FileStamp>), String> {
    let (bytes, stamp) = read_stamped(path)?;
    key_in(path, &bytes).map(|key| (key, stamp))
}

/// What tells a file's content changed without reading it, as `make` and git's index
/// tell: an edit changes the modification and change times and usually the length, a
/// replacement by rename (an editor's save, a Kubernetes Secret volume's update) the inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<SystemTime>,
    changed: (i64, i64),
    len: u64,
    dev: u64,
    ino: u64,
}

/// A file changed this recently may change again within the same tick of the file
/// system's clock without its stamp changing (git's "racily clean" entries): its stamp is
/// not trusted, and the file is read again next time.
const RACY: Duration = Duration::from_secs(2);

impl FileStamp {
    /// The stamp in `meta`.
    pub fn of(meta: &Metadata) -> Self {
        Self {
            modified: meta.modified().ok(),
            changed: (meta.ctime(), meta.ctime_nsec()),
            len: meta.len(),
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    /// The stamp in `meta`, unless the file changed less than [`RACY`] before `now`.
    pub(crate) fn trusted(meta: &Metadata, now: SystemTime) -> Option<Self> {
        let stamp = Self::of(meta);
        let changed = UNIX_EPOCH
            + Duration::new(
                u64::try_from(stamp.changed.0).ok()?,
                u32::try_from(stamp.changed.1).ok()?,
            );
        let newest = stamp.modified?.max(changed);
        (newest + RACY <= now).then_some(stamp)
    }

    /// The stamp of the file at `path` now (following symbolic links), if it can be read.
    pub(crate) fn at(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|m| Self::of(&m))
    }
}

fn describe(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "malformed BEGIN line".into(),
        pem::Error::Base64Decode(_) => "bad base64 inside a section".into(),
        other => format!("{other:?}"),
    }
}
