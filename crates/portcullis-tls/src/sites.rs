//! Certificates for the sites of a config: loaded from files or issued by the local CA, with
//! the checks `portcullis check` reports.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use portcullis_config::{Config, Problem, SiteTls};
use rustls::sign::CertifiedKey;

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
        store.set_sites(config.sites.iter().zip(&self.sites).map(|(site, cert)| {
            (
                SiteBinding {
                    name: &site.name,
                    hosts: &site.hosts,
                    default: site.default,
                },
                cert.key.clone(),
            )
        }));
    }
}

/// Loads every site's certificate. File certificates are checked (key matches, names cover
/// the site's hosts, dates); `tls: local` sites, and `tls: acme` sites with a local
/// fallback, are issued a certificate only when `local_ca` is given, so `check` never
/// writes a CA to disk. ACME certificates themselves come from the ACME client.
pub fn load_site_certificates(
    config: &Config,
    local_ca: Option<&LocalCa>,
) -> Result<SiteCerts, Vec<Problem>> {
    let mut out = SiteCerts::default();
    let mut problems = Vec::new();
    let now = SystemTime::now();
    for (i, site) in config.sites.iter().enumerate() {
        let key = format!("sites[{i}].tls");
        let loaded = match &site.tls {
            SiteTls::Files(files) => {
                match certified_key(files.chain.clone(), files.key.clone_key()) {
                    Ok(ck) => Some((CertSource::File(files.cert_path.clone()), Some(ck))),
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
                        None
                    }
                    Err(e) => {
                        problems.push(Problem::new(
                            format!("{key}.cert"),
                            format!("{}: {e}", files.cert_path.display()),
                        ));
                        None
                    }
                }
            }
            SiteTls::Acme { fallback_local } => match (fallback_local, local_ca) {
                (true, Some(ca)) => match ca.issue(&site.hosts, LOCAL_LEAF_VALIDITY) {
                    Ok(ck) => Some((CertSource::Acme, Some(ck))),
                    Err(e) => {
                        problems.push(Problem::new(key.clone(), e.to_string()));
                        None
                    }
                },
                _ => Some((CertSource::Acme, None)),
            },
            SiteTls::Local => match local_ca {
                Some(ca) => match ca.issue(&site.hosts, LOCAL_LEAF_VALIDITY) {
                    Ok(ck) => Some((CertSource::Local, Some(ck))),
                    Err(e) => {
                        problems.push(Problem::new(key.clone(), e.to_string()));
                        None
                    }
                },
                None => Some((CertSource::Local, None)),
            },
        };
        let Some((source, ck)) = loaded else { continue };
        let info = match ck.as_ref().map(|ck| CertInfo::parse(&ck.cert[0])) {
            Some(Ok(info)) => Some(info),
            Some(Err(e)) => {
                problems.push(Problem::new(
                    format!("{key}.cert"),
                    format!("not a valid X.509 certificate: {e}"),
                ));
                continue;
            }
            None => None,
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
        Ok(out)
    } else {
        Err(problems)
    }
}
