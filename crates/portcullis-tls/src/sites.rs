//! Certificates for the sites of a config: loaded from files or issued by the local CA, with
//! the checks `portcullis check` reports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use portcullis_config::{CertKey, Config, Problem, Site, SiteTls};
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;

use crate::certs::{CertInfo, KeyError, certified_key, format_time};
use crate::local_ca::{LOCAL_LEAF_VALIDITY, LocalCa};
use crate::store::{CertStore, SiteBinding};

/// Where a site's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// A PEM file named in the config.
    File(PathBuf),
    /// The local development CA.
    Local,
    /// ACME; the certificate (if any yet) comes from the ACME client, not from here.
    Acme,
    /// None of its own: the default site's certificate is served for its names.
    None,
}

/// One site's certificate as loaded.
#[derive(Debug, Clone)]
pub struct SiteCert {
    /// The site's name.
    pub site: String,
    /// Where it came from.
    pub source: CertSource,
    /// The servable key, if there is one yet (a local certificate is issued only when a
    /// local CA is given).
    pub key: Option<Arc<CertifiedKey>>,
    /// What the leaf says.
    pub info: Option<CertInfo>,
}

/// Certificates for every site of a config, in site order, plus warnings worth showing.
#[derive(Debug, Clone, Default)]
pub struct SiteCerts {
    /// One entry per site.
    pub sites: Vec<SiteCert>,
    /// Things that will work but probably are not what the user wants.
    pub warnings: Vec<Problem>,
}

impl SiteCerts {
    /// Puts these certificates, and the config's hosts, into `store` in one swap.
    pub fn publish(&self, config: &Config, store: &CertStore) {
        // A site with no certificate of its own (`tls: none`) is not in the store: its
        // names resolve as unclaimed ones do, to the default site's certificate.
        store.set_sites(
            config
                .sites
                .iter()
                .zip(&self.sites)
                .filter(|(site, _)| !matches!(site.tls, SiteTls::None))
                .map(|(site, cert)| {
                    (
                        SiteBinding {
                            name: &site.name,
                            hosts: &site.hosts,
                            default: site.default,
                        },
                        cert.key.clone(),
                    )
                }),
        );
    }
}

/// Loads every site's certificate. File certificates are checked (key matches, names cover
/// the site's hosts, dates); `tls: local` sites, and `tls: acme` sites with a local
/// fallback, are issued a certificate only when `local_ca` is given, so `check` never
/// writes a CA to disk. ACME certificates themselves come from the ACME client.
///
/// `previous` is the config loaded last and what this function loaded for it: a site whose
/// certificate and key files read the same as then (paths and content) gets the same
/// servable key back instead of a new one. Loading a key is most of the cost of a reload
/// with many sites, as the key is checked by deriving its public key.
pub fn load_site_certificates(
    config: &Config,
    local_ca: Option<&LocalCa>,
    previous: Option<(&Config, &SiteCerts)>,
) -> Result<SiteCerts, Vec<Problem>> {
    load_site_certificates_with(config, local_ca, previous, &Preloaded::default())
}

/// Servable keys a config source already built and checked for the certificates it put
/// in the config (the Kubernetes translation, which loads each TLS Secret's key to check
/// it), by the certificate's `cert_path` (`secret:NS/NAME`). Loading the key is most of the
/// cost of a certificate (deriving its public key), so it is done once, not once to check
/// and once more to serve.
#[derive(Debug, Clone, Default)]
pub struct Preloaded {
    keys: HashMap<PathBuf, PreloadedKey>,
}

#[derive(Debug, Clone)]
struct PreloadedKey {
    /// The private key it was built from: with the chain, what a site's certificate must
    /// hold to be given this key.
    key: Arc<PrivateKeyDer<'static>>,
    ck: Arc<CertifiedKey>,
    info: Option<CertInfo>,
}

impl Preloaded {
    /// Adds the key built from `files` (`certified_key(files.chain, files.key)`, which
    /// succeeded) and what its leaf says (`None`: read when the key is used).
    pub fn insert(&mut self, files: &CertKey, ck: Arc<CertifiedKey>, info: Option<CertInfo>) {
        self.keys.insert(
            files.cert_path.clone(),
            PreloadedKey {
                key: Arc::new(files.key.clone_key()),
                ck,
                info,
            },
        );
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key held for the certificate named `cert_path`.
    pub fn key(&self, cert_path: &Path) -> Option<&Arc<CertifiedKey>> {
        self.keys.get(cert_path).map(|k| &k.ck)
    }

    /// The key built from exactly this chain and private key, if there is one.
    fn get(&self, files: &CertKey) -> Option<(Arc<CertifiedKey>, Option<CertInfo>)> {
        let k = self.keys.get(&files.cert_path)?;
        if k.ck.cert != files.chain || k.key.secret_der() != files.key.secret_der() {
            return None;
        }
        let info = k
            .info
            .clone()
            .or_else(|| CertInfo::parse(files.chain.first()?).ok());
        Some((k.ck.clone(), info))
    }
}

/// [`load_site_certificates`], taking the keys in `preloaded` where a site's certificate and
/// key are the ones a key there was built from.
pub fn load_site_certificates_with(
    config: &Config,
    local_ca: Option<&LocalCa>,
    previous: Option<(&Config, &SiteCerts)>,
    preloaded: &Preloaded,
) -> Result<SiteCerts, Vec<Problem>> {
    let reusable = reusable(previous);
    let mut out = SiteCerts::default();
    let mut problems = Vec::new();
    let now = SystemTime::now();
    for (i, site) in config.sites.iter().enumerate() {
        let key = format!("sites[{i}].tls");
        let reused = match &site.tls {
            SiteTls::Files(files) => reusable
                .get(files.cert_path.as_path())
                .filter(|(was, _)| *was == files)
                .map(|(_, cert)| *cert),
            _ => None,
        };
        let preloaded = match (&site.tls, reused) {
            (SiteTls::Files(files), None) => preloaded
                .get(files)
                .map(|(ck, info)| (CertSource::File(files.cert_path.clone()), Some(ck), info)),
            _ => None,
        };
        let (source, ck, info) = match (reused, preloaded) {
            (Some(cert), _) => (cert.source.clone(), cert.key.clone(), cert.info.clone()),
            (None, Some(loaded)) => loaded,
            (None, None) => match load_one(site, local_ca, &key, &mut problems) {
                Some(loaded) => loaded,
                None => continue,
            },
        };
        if let (Some(info), CertSource::File(path)) = (&info, &source) {
            for (j, host) in site.hosts.iter().enumerate() {
                if !info.covers(host) {
                    out.warnings.push(Problem::new(
                        format!("sites[{i}].hosts[{j}]"),
                        format!(
                            "`{host}` is not covered by the certificate in {} (it names {})",
                            path.display(),
                            info.names.join(", ")
                        ),
                    ));
                }
            }
            if info.not_after < now {
                out.warnings.push(Problem::new(
                    format!("{key}.cert"),
                    format!("certificate expired on {}", format_time(info.not_after)),
                ));
            } else if info.not_before > now {
                out.warnings.push(Problem::new(
                    format!("{key}.cert"),
                    format!(
                        "certificate is not valid before {}",
                        format_time(info.not_before)
                    ),
                ));
            }
        }
        out.sites.push(SiteCert {
            site: site.name.clone(),
            source,
            key: ck,
            info,
        });
    }
    if problems.is_empty() {
        none_sites_covered(config, &mut out);
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Warns of hosts of `tls: none` sites the default site's certificate (which their
/// handshakes get) does not name. `certs` has one entry per site of `config`.
fn none_sites_covered(config: &Config, certs: &mut SiteCerts) {
    let Some(d) = config.sites.iter().position(|s| s.default) else {
        return;
    };
    let Some(info) = certs.sites.get(d).and_then(|c| c.info.clone()) else {
        return;
    };
    for (i, site) in config.sites.iter().enumerate() {
        if !matches!(site.tls, SiteTls::None) {
            continue;
        }
        for (j, host) in site.hosts.iter().enumerate() {
            if !info.covers(host) {
                certs.warnings.push(Problem::new(
                    format!("sites[{i}].hosts[{j}]"),
                    format!(
                        "`{host}` (`tls: none`) gets the default site's certificate, which \
                         does not cover it (it names {})",
                        info.names.join(", ")
                    ),
                ));
            }
        }
    }
}

/// The file certificates of a previous load, by certificate path, with the files as they
/// were read then.
fn reusable<'a>(
    previous: Option<(&'a Config, &'a SiteCerts)>,
) -> HashMap<&'a Path, (&'a CertKey, &'a SiteCert)> {
    let Some((config, certs)) = previous else {
        return HashMap::new();
    };
    config
        .sites
        .iter()
        .zip(&certs.sites)
        .filter_map(|(site, cert)| match (&site.tls, &cert.key) {
            // The names are compared because a failed load leaves gaps in `certs`.
            (SiteTls::Files(files), Some(_)) if cert.site == site.name => {
                Some((files.cert_path.as_path(), (files, cert)))
            }
            _ => None,
        })
        .collect()
}

/// Loads or issues one site's certificate, recording what is wrong in `problems`.
fn load_one(
    site: &Site,
    local_ca: Option<&LocalCa>,
    key: &str,
    problems: &mut Vec<Problem>,
) -> Option<(CertSource, Option<Arc<CertifiedKey>>, Option<CertInfo>)> {
    let (source, ck) = match &site.tls {
        SiteTls::Files(files) => match certified_key(files.chain.clone(), files.key.clone_key()) {
            Ok(ck) => (CertSource::File(files.cert_path.clone()), Some(ck)),
            Err(e @ (KeyError::BadKey(_) | KeyError::Mismatch)) => {
                let msg = match e {
                    KeyError::Mismatch => format!(
                        "{} does not match the certificate in {}",
                        files.key_path.display(),
                        files.cert_path.display()
                    ),
                    other => format!("{}: {other}", files.key_path.display()),
                };
                problems.push(Problem::new(format!("{key}.key"), msg));
                return None;
            }
            Err(e) => {
                problems.push(Problem::new(
                    format!("{key}.cert"),
                    format!("{}: {e}", files.cert_path.display()),
                ));
                return None;
            }
        },
        SiteTls::Acme { fallback_local } => match (fallback_local, local_ca) {
            (true, Some(ca)) => match ca.issue(&site.hosts, LOCAL_LEAF_VALIDITY) {
                Ok(ck) => (CertSource::Acme, Some(ck)),
                Err(e) => {
                    problems.push(Problem::new(key, e.to_string()));
                    return None;
                }
            },
            _ => (CertSource::Acme, None),
        },
        SiteTls::Local => match local_ca {
            Some(ca) => match ca.issue(&site.hosts, LOCAL_LEAF_VALIDITY) {
                Ok(ck) => (CertSource::Local, Some(ck)),
                Err(e) => {
                    problems.push(Problem::new(key, e.to_string()));
                    return None;
                }
            },
            None => (CertSource::Local, None),
        },
        SiteTls::None => (CertSource::None, None),
    };
    let info = match ck.as_ref().map(|ck| CertInfo::parse(&ck.cert[0])) {
        Some(Ok(info)) => Some(info),
        Some(Err(e)) => {
            problems.push(Problem::new(
                format!("{key}.cert"),
                format!("not a valid X.509 certificate: {e}"),
            ));
            return None;
        }
        None => None,
    };
    Some((source, ck, info))
}

#[cfg(test)]
mod tests;
