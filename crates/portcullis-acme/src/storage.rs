//! Durable ACME state under `storage/acme/<directory>/`: the account (`account.json`) and,
//! per site, `cert.pem`, `key.pem` (0600) and `status.json`. Everything is written
//! atomically; anything unreadable is reported by path and treated as absent.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::AccountCredentials;
use portcullis_tls::{
    CertInfo, KeyError, certified_key, create_private_dir, write_atomic, write_atomic_unsynced,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// ACME state for one directory URL (so staging and production never mix).
#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
}

/// A stored file that exists but cannot be used. `Display` starts with the file's path.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The file exists but could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The file was read but does not hold what Portcullis wrote there (corrupt or
    /// foreign).
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file could not be written.
    #[error("{}: {source}", path.display())]
    Write {
        /// The file (or its folder).
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The stored key cannot serve the stored certificate (unusable, or another
    /// certificate's key: a crash between the two writes of `save_cert`).
    #[error("{}: {source}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why the pair cannot be served.
        source: KeyError,
    },
}

impl StorageError {
    /// The file at fault.
    pub fn path(&self) -> &Path {
        match self {
            Self::Read { path, .. }
            | Self::Write { path, .. }
            | Self::Invalid { path, .. }
            | Self::Key { path, .. } => path,
        }
    }

    /// Whether the stored key belongs to another certificate than the stored one.
    pub fn is_key_mismatch(&self) -> bool {
        matches!(
            self,
            Self::Key {
                source: KeyError::Mismatch,
                ..
            }
        )
    }

    fn invalid(path: &Path, reason: impl std::fmt::Display) -> Self {
        Self::Invalid {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// A certificate read back from storage.
#[derive(Clone)]
pub struct StoredCert {
    /// The servable certificate and key.
    pub key: Arc<CertifiedKey>,
    /// What the leaf says.
    pub info: CertInfo,
}

/// What `portcullis certs` shows about an ACME site, kept beside its certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteStatus {
    /// Names the site asked for.
    pub names: Vec<String>,
    /// When the next order (or renewal check) is due, Unix seconds.
    pub next_attempt: Option<u64>,
    /// The last failure, with its step and the CA's problem.
    pub last_error: Option<String>,
    /// Failures since the last success.
    pub failures: u32,
    /// Last successful issuance, Unix seconds.
    pub last_success: Option<u64>,
}

#[allow(
    clippy::disallowed_methods,
    reason = "`portcullis certs` reads this without a runtime; on the manager's tasks it reads or writes a few KiB per site, at start, at reload and when an order ends"
)]
impl Storage {
    /// State for `directory` under `storage`.
    pub fn new(storage: &Path, directory: &str) -> Self {
        Self {
            root: storage.join("acme").join(directory_key(directory)),
        }
    }

    /// The folder this directory's state lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn account_path(&self) -> PathBuf {
        self.root.join("account.json")
    }

    fn site_dir(&self, site: &str) -> PathBuf {
        self.root.join("sites").join(file_name(site))
    }

    /// The stored account, if there is a readable one.
    pub fn load_account(&self) -> Result<Option<AccountCredentials>, StorageError> {
        let path = self.account_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                StorageError::invalid(&path, format!("not a Portcullis ACME account file: {e}"))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StorageError::Read { path, source }),
        }
    }

    /// Stores the account (0600).
    pub fn save_account(&self, credentials: &AccountCredentials) -> io::Result<()> {
        create_private_dir(&self.root)?;
        let json = serde_json::to_vec_pretty(credentials).map_err(io::Error::other)?;
        write_atomic(&self.account_path(), &json, 0o600)
    }

    /// Forgets the stored account (the CA no longer knows it).
    pub fn remove_account(&self) {
        let _ = fs::remove_file(self.account_path());
    }

    /// The site's stored certificate. `Ok(None)` when there is none; `Err` names a file that
    /// exists but cannot be used (corrupt, foreign, or a key that does not match).
    pub fn load_cert(&self, site: &str) -> Result<Option<StoredCert>, StorageError> {
        let dir = self.site_dir(site);
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        let chain_pem = match fs::read(&cert_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StorageError::Read {
                    path: cert_path,
                    source,
                });
            }
        };
        // The key is read only once the chain is known good, so a corrupt chain is what
        // gets reported.
        let read_key = || {
            fs::read(&key_path).map_err(|e| {
                StorageError::invalid(&key_path, format!("no usable private key: {e}"))
            })
        };
        parse_pair(&chain_pem, read_key, &cert_path, &key_path).map(Some)
    }

    /// Offers a certificate found elsewhere (a Kubernetes Secret another replica wrote) to
    /// the site's storage, before the manager loads the site: it is stored when it is a
    /// usable pair and the stored one is missing, unusable, or expires sooner. Gives
    /// whether it was stored. The manager then serves it and renews it on its usual
    /// schedule (no new order while it is valid and covers the site's names). An unusable
    /// pair is an `Err` naming the file it would have replaced.
    pub fn seed_cert(
        &self,
        site: &str,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<bool, StorageError> {
        let dir = self.site_dir(site);
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        let offered = parse_pair(
            chain_pem.as_bytes(),
            || Ok(key_pem.as_bytes().to_vec()),
            &cert_path,
            &key_path,
        )
        .map_err(|e| match e {
            StorageError::Invalid { path, reason } => StorageError::Invalid {
                path,
                reason: format!("offered certificate: {reason}"),
            },
            other => other,
        })?;
        if let Ok(Some(stored)) = self.load_cert(site)
            && stored.info.not_after >= offered.info.not_after
        {
            return Ok(false);
        }
        self.save_cert(site, chain_pem, key_pem)
            .map_err(|source| StorageError::Write { path: dir, source })?;
        Ok(true)
    }

    /// The site's stored certificate chain and key as PEM text, as the manager wrote them
    /// (for copying them elsewhere, such as a Kubernetes Secret); `None` if either file is
    /// missing or unreadable.
    pub fn cert_pem(&self, site: &str) -> Option<(String, String)> {
        let dir = self.site_dir(site);
        let chain = fs::read_to_string(dir.join("cert.pem")).ok()?;
        let key = fs::read_to_string(dir.join("key.pem")).ok()?;
        Some((chain, key))
    }

    /// Stores a new certificate chain and its key (0600), replacing the old pair.
    pub fn save_cert(&self, site: &str, chain_pem: &str, key_pem: &str) -> io::Result<()> {
        let dir = self.site_dir(site);
        create_private_dir(&dir)?;
        // The key first: a crash in between leaves a new key with the old certificate, which
        // `load_cert` reports as a mismatch and replaces with a fresh order.
        write_atomic(&dir.join("key.pem"), key_pem.as_bytes(), 0o600)?;
        write_atomic(&dir.join("cert.pem"), chain_pem.as_bytes(), 0o644)
    }

    /// Keeps a certificate another replica stored (the cluster store has it) as the site's
    /// local cache, without syncing: the store is its source of truth, and 10,000 synced
    /// pairs take seconds to tens of seconds on a busy disk at a replica's first start. A
    /// pair damaged by a crash is reported by `load_cert` and fetched from the store again.
    pub fn cache_cert(&self, site: &str, chain_pem: &str, key_pem: &str) -> io::Result<()> {
        let dir = self.site_dir(site);
        create_private_dir(&dir)?;
        write_atomic_unsynced(&dir.join("key.pem"), key_pem.as_bytes(), 0o600)?;
        write_atomic_unsynced(&dir.join("cert.pem"), chain_pem.as_bytes(), 0o644)
    }

    /// The site's recorded status.
    pub fn load_status(&self, site: &str) -> Option<SiteStatus> {
        let bytes = fs::read(self.site_dir(site).join("status.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Records the site's status (best effort: a failure is logged, nothing else).
    pub fn save_status(&self, site: &str, status: &SiteStatus) {
        let dir = self.site_dir(site);
        let result = create_private_dir(&dir).and_then(|()| {
            let json = serde_json::to_vec_pretty(status).map_err(io::Error::other)?;
            write_atomic(&dir.join("status.json"), &json, 0o644)
        });
        if let Err(e) = result {
            tracing::warn!(site, path = %dir.display(), error = %e, "cannot record ACME status");
        }
    }
}

/// A chain (leaf first) and its key given as PEM text (a certificate from the cluster
/// store), as a servable pair; errors are named after `what`.
pub fn parse_pem_pair(
    chain_pem: &str,
    key_pem: &str,
    what: &str,
) -> Result<StoredCert, StorageError> {
    let path = Path::new(what);
    parse_pair(
        chain_pem.as_bytes(),
        || Ok(key_pem.as_bytes().to_vec()),
        path,
        path,
    )
}

/// A chain (leaf first) and its key, both PEM, as a servable pair; errors name the file
/// each came from.
fn parse_pair(
    chain_pem: &[u8],
    key_pem: impl FnOnce() -> Result<Vec<u8>, StorageError>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<StoredCert, StorageError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| StorageError::invalid(cert_path, format!("not PEM: {e:?}")))?;
    let Some(leaf) = chain.first() else {
        return Err(StorageError::invalid(
            cert_path,
            "no certificate in the file",
        ));
    };
    let info = CertInfo::parse(leaf)
        .map_err(|e| StorageError::invalid(cert_path, format!("not a certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem()?)
        .map_err(|e| StorageError::invalid(key_path, format!("no usable private key: {e:?}")))?;
    let key = certified_key(chain, key).map_err(|source| StorageError::Key {
        path: key_path.to_owned(),
        source,
    })?;
    Ok(StoredCert { key, info })
}

/// Unix seconds.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// From Unix seconds.
pub fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// `https://acme-v02.api.letsencrypt.org/directory` → `acme-v02.api.letsencrypt.org_directory`.
fn directory_key(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    file_name(rest.trim_end_matches('/'))
}

/// A name safe as one path component.
fn file_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with('.') {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    reason = "test fixtures, written outside any runtime"
)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_safe_path_components() {
        assert_eq!(
            directory_key("https://acme-v02.api.letsencrypt.org/directory"),
            "acme-v02.api.letsencrypt.org_directory"
        );
        assert_eq!(
            directory_key("https://127.0.0.1:14000/dir"),
            "127.0.0.1_14000_dir"
        );
        assert_eq!(file_name("../etc"), "_.._etc");
        assert_eq!(file_name("a/b"), "a_b");
    }

    #[test]
    fn missing_corrupt_and_foreign_files_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::new(dir.path(), "https://ca.test/dir");
        assert!(s.load_cert("site").unwrap().is_none());
        assert!(s.load_account().unwrap().is_none());

        let site_dir = s.site_dir("site");
        create_private_dir(&site_dir).unwrap();
        fs::write(site_dir.join("cert.pem"), "garbage").unwrap();
        let err = s.load_cert("site").err().unwrap().to_string();
        assert!(err.contains("cert.pem"), "{err}");

        // A certificate with somebody else's key.
        let a = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        s.save_cert("site", &a.cert.pem(), &b.signing_key.serialize_pem())
            .unwrap();
        let err = s.load_cert("site").err().unwrap();
        assert!(err.is_key_mismatch(), "{err}");
        let err = err.to_string();
        assert!(
            err.contains("key.pem") && err.contains("does not match"),
            "{err}"
        );

        s.save_cert("site", &a.cert.pem(), &a.signing_key.serialize_pem())
            .unwrap();
        let stored = s.load_cert("site").unwrap().unwrap();
        assert_eq!(stored.info.names, ["a.test"]);

        fs::create_dir_all(s.root()).unwrap();
        fs::write(s.account_path(), "{}").unwrap();
        assert!(
            s.load_account()
                .err()
                .unwrap()
                .to_string()
                .contains("account.json")
        );

        let status = SiteStatus {
            names: vec!["a.test".into()],
            failures: 2,
            ..Default::default()
        };
        s.save_status("site", &status);
        assert_eq!(s.load_status("site"), Some(status));
    }

    fn cert_valid_for(days: i64) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_seed_is_stored_only_when_it_outlasts_the_stored_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::new(dir.path(), "https://ca.test/dir");
        let (short, short_key) = cert_valid_for(10);
        let (long, long_key) = cert_valid_for(20);

        assert!(s.seed_cert("site", &short, &short_key).unwrap());
        assert_eq!(s.cert_pem("site"), Some((short.clone(), short_key.clone())));
        assert!(
            !s.seed_cert("site", &short, &short_key).unwrap(),
            "the same again"
        );
        assert!(
            s.seed_cert("site", &long, &long_key).unwrap(),
            "a later expiry"
        );
        assert!(
            !s.seed_cert("site", &short, &short_key).unwrap(),
            "an earlier expiry"
        );
        assert_eq!(s.cert_pem("site"), Some((long.clone(), long_key.clone())));

        let err = s.seed_cert("site", &short, &long_key).err().unwrap();
        assert!(err.is_key_mismatch(), "{err}");
        let err = s
            .seed_cert("site", "garbage", &long_key)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("offered certificate"), "{err}");
        // A refused seed leaves the stored pair alone.
        assert_eq!(s.cert_pem("site"), Some((long, long_key)));
    }
}
