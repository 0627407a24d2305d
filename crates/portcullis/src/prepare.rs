//! Config → [`Prepared`]: everything a configuration change needs that can fail, done while
//! nothing of it is applied yet. Certificate files are loaded and checked, local
//! certificates issued, the ACME sites decided, the routing table built and new listener
//! sockets bound.
//!
//! A change is prepared against the state in force ([`Applied`]), or against nothing at
//! start-up: start-up is a change from the empty state, so it takes the same steps as a
//! reload (as sozu's `ConfigState::diff` from an empty state). What did not change is kept:
//! certificate files that read the same, local certificates of unchanged sites, listeners
//! whose address is the same, origin clients with their pooled connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use portcullis_acme::{AcmeManager, AcmeSite};
use portcullis_config::{AdminListen, Config, HostPattern, Problem, Site, SiteTls};
use portcullis_proxy::{BindError, ProxyMetrics, Router};
use portcullis_tls::{
    CertStore, LOCAL_LEAF_VALIDITY, LocalCa, Preloaded, SiteCerts, load_site_certificates,
    load_site_certificates_with,
};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tracing::warn;

use crate::admin::{AdminBindError, AdminListener};

/// Why a configuration cannot be applied (at start-up or later); nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The configuration is invalid, or what it refers to is; every problem is listed.
    #[error("invalid configuration")]
    Config(Vec<Problem>),
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The admin listener's unix socket could not be created.
    #[error("cannot listen for admin on unix:{}: {source}", path.display())]
    AdminSocket {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS server config could not be built.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// What `App::start` returns: start-up is applying a configuration to the empty state.
pub type StartError = ApplyError;

impl ApplyError {
    /// Every problem, named by the key `portcullis check` would name (a listener that cannot
    /// be bound by its `listen` key).
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            Self::Config(problems) => problems.clone(),
            Self::Bind(e) => {
                let key = match e.what {
                    "http" => "listen.http",
                    "admin" => "admin.listen",
                    _ => "listen.https",
                };
                vec![Problem::new(key, e.to_string())]
            }
            Self::AdminSocket { .. } => vec![Problem::new("admin.listen", self.to_string())],
            Self::Tls(_) => vec![Problem::new("", self.to_string())],
        }
    }
}

impl From<Vec<Problem>> for ApplyError {
    fn from(problems: Vec<Problem>) -> Self {
        Self::Config(problems)
    }
}

impl From<AdminBindError> for ApplyError {
    fn from(e: AdminBindError) -> Self {
        match e {
            AdminBindError::Tcp(e) => Self::Bind(e),
            AdminBindError::Unix { path, source } => Self::AdminSocket { path, source },
        }
    }
}

/// The configuration in force and what was loaded for it: what the next change is
/// prepared against.
pub(crate) struct Applied {
    pub(crate) config: Config,
    /// The certificates loaded for `config`, which the next change reuses where the files
    /// are unchanged.
    pub(crate) certs: SiteCerts,
    pub(crate) local_ca: Option<Arc<LocalCa>>,
    pub(crate) acme: Option<Arc<AcmeManager>>,
}

/// What the running gateway lends a preparation to read (never to change).
pub(crate) struct Running<'a> {
    /// The state in force; `None` at start-up.
    pub(crate) applied: Option<&'a Applied>,
    /// The certificates being served.
    pub(crate) store: &'a CertStore,
    /// The routing table in force, whose origin clients unchanged origins keep.
    pub(crate) router: &'a Router,
    pub(crate) metrics: &'a ProxyMetrics,
    /// Servable keys the config's source already built for its certificates.
    pub(crate) preloaded: &'a Preloaded,
}

/// A checked, not yet applied, configuration: applying it cannot fail.
pub(crate) struct Prepared {
    pub(crate) config: Config,
    pub(crate) local_ca: Option<Arc<LocalCa>>,
    /// True when `local_ca` was opened for this change (not kept from the state in force).
    pub(crate) opened_local_ca: bool,
    pub(crate) certs: SiteCerts,
    pub(crate) router: Router,
    /// Each site's certificate to serve, in site order; `None` keeps what the site serves
    /// now (an ACME certificate, say), or nothing.
    pub(crate) keys: Vec<Option<Arc<CertifiedKey>>>,
    /// The sites ACME manages.
    pub(crate) acme_sites: Vec<AcmeSite>,
    /// Whether the ACME manager in force (if any) can go on with the new sites.
    pub(crate) keep_acme: bool,
    pub(crate) https: Rebind,
    pub(crate) http: Rebind,
    pub(crate) admin: Rebind<AdminListener>,
}

/// A listener's change.
pub(crate) enum Rebind<L = TcpListener> {
    /// Same address: the running listener goes on.
    Keep,
    /// Turned off.
    Stop,
    /// A new address, bound (the old listener, if any, still runs).
    Bound(L),
}

/// Prepares `config` against what runs now. The certificate and routing work (half a second
/// of CPU at 10,000 sites) runs off the workers.
pub(crate) async fn prepare(config: Config, running: Running<'_>) -> Result<Prepared, ApplyError> {
    let Sites {
        local_ca,
        opened_local_ca,
        certs,
        router,
        keys,
    } = off_the_workers(|| sites(&config, &running))?;
    let old = running.applied.map(|a| &a.config);
    let https = rebind(
        "https",
        old.map(|o| o.listen.https),
        Some(config.listen.https),
    )
    .await?;
    let http = rebind("http", old.and_then(|o| o.listen.http), config.listen.http).await?;
    let admin = rebind_admin(
        old.and_then(|o| o.admin.listen.as_ref()),
        config.admin.listen.as_ref(),
    )
    .await?;
    let acme_sites = acme_sites(&config);
    let keep_acme = running.applied.is_some_and(|a| {
        a.acme.is_some()
            && a.config.acme == config.acme
            && a.config.storage == config.storage
            && a.config.listen.http.is_some() == config.listen.http.is_some()
    });
    Ok(Prepared {
        config,
        local_ca,
        opened_local_ca,
        certs,
        router,
        keys,
        acme_sites,
        keep_acme,
        https,
        http,
        admin,
    })
}

/// The certificate and routing part of a preparation.
struct Sites {
    local_ca: Option<Arc<LocalCa>>,
    opened_local_ca: bool,
    certs: SiteCerts,
    router: Router,
    keys: Vec<Option<Arc<CertifiedKey>>>,
}

fn sites(new: &Config, running: &Running<'_>) -> Result<Sites, Vec<Problem>> {
    let applied = running.applied;
    let kept_ca = applied
        .filter(|a| a.config.tls.local_ca_dir == new.tls.local_ca_dir)
        .and_then(|a| a.local_ca.clone());
    let opened_local_ca = kept_ca.is_none();
    let local_ca = match kept_ca {
        Some(ca) => Some(ca),
        None => open_local_ca(new).map_err(|p| vec![p])?.map(Arc::new),
    };
    let opened_local_ca = opened_local_ca && local_ca.is_some();
    let previous = applied.map(|a| (&a.config, &a.certs));
    let certs = load_site_certificates_with(new, None, previous, running.preloaded);
    let router = Router::build(new, running.metrics, Some(running.router));
    let (certs, router) = match (certs, router) {
        (Ok(c), Ok(r)) => (c, r),
        (c, r) => {
            return Err(c
                .err()
                .into_iter()
                .flatten()
                .chain(r.err().into_iter().flatten())
                .collect());
        }
    };
    for w in &certs.warnings {
        warn!(key = %w.key, "{}", w.message);
    }
    if let Some(w) = new.admin.exposure_warning() {
        warn!(key = %w.key, "{}", w.message);
    }
    // By name: a scan of the old sites for each new one is quadratic, 10^8 comparisons at
    // 10,000 sites.
    let old_sites: HashMap<&str, &Site> = applied
        .into_iter()
        .flat_map(|a| &a.config.sites)
        .map(|o| (o.name.as_str(), o))
        .collect();
    let mut keys = Vec::with_capacity(new.sites.len());
    for (i, (site, loaded)) in new.sites.iter().zip(&certs.sites).enumerate() {
        let old = old_sites.get(site.name.as_str());
        let unchanged = old.is_some_and(|o| o.hosts == site.hosts && o.tls == site.tls);
        let was_acme = old.is_some_and(|o| matches!(o.tls, SiteTls::Acme { .. }));
        let have = running.store.certificate(&site.name).is_some();
        let issue_local = match site.tls {
            SiteTls::Files(_) | SiteTls::None => false,
            SiteTls::Local => !(unchanged && have),
            // An ACME site keeps what it serves (its ACME certificate, or the fallback issued
            // before); a site that just became one gets a fallback, as at start-up.
            SiteTls::Acme { fallback_local } => fallback_local && !(was_acme && have),
        };
        let key = match (&site.tls, issue_local, &local_ca) {
            (SiteTls::Files(_), _, _) => loaded.key.clone(),
            (_, true, Some(ca)) => Some(
                ca.issue(&site.hosts, LOCAL_LEAF_VALIDITY)
                    .map_err(|e| vec![Problem::new(format!("sites[{i}].tls"), e.to_string())])?,
            ),
            _ => None,
        };
        keys.push(key);
    }
    Ok(Sites {
        local_ca,
        opened_local_ca,
        certs,
        router,
        keys,
    })
}

/// What `portcullis check` reports: every certificate file loaded and checked and the
/// routing table built, with no local certificate issued and no CA written to disk.
pub fn check(config: &Config) -> Result<SiteCerts, Vec<Problem>> {
    let certs = load_site_certificates(config, None, None);
    let router = Router::build(config, &ProxyMetrics::unregistered(), None);
    match (certs, router) {
        (Ok(certs), Ok(_)) => Ok(certs),
        (certs, router) => Err(certs
            .err()
            .into_iter()
            .flatten()
            .chain(router.err().into_iter().flatten())
            .collect()),
    }
}

/// Opens (or creates) the local CA if some site uses `tls: local` or falls back to it.
fn open_local_ca(config: &Config) -> Result<Option<LocalCa>, Problem> {
    let uses_local = config.sites.iter().any(|s| {
        matches!(
            s.tls,
            SiteTls::Local
                | SiteTls::Acme {
                    fallback_local: true
                }
        )
    });
    if !uses_local {
        return Ok(None);
    }
    LocalCa::open_or_create(&config.tls.local_ca_dir)
        .map(Some)
        .map_err(|e| Problem::new("tls.local_ca_dir", e.to_string()))
}

/// The sites of a config whose certificates ACME manages.
fn acme_sites(config: &Config) -> Vec<AcmeSite> {
    config
        .sites
        .iter()
        .filter(|s| matches!(s.tls, SiteTls::Acme { .. }))
        .map(|s| AcmeSite {
            name: s.name.clone(),
            names: s
                .hosts
                .iter()
                .filter_map(|h| match h {
                    HostPattern::Exact(name) => Some(name.clone()),
                    // Validation refuses wildcards for ACME sites.
                    HostPattern::Wildcard(_) => None,
                })
                .collect(),
        })
        .collect()
}

/// Binds the admin listener's new address or socket when it changed.
async fn rebind_admin(
    old: Option<&AdminListen>,
    new: Option<&AdminListen>,
) -> Result<Rebind<AdminListener>, ApplyError> {
    match (old, new) {
        (a, b) if a == b => Ok(Rebind::Keep),
        (_, None) => Ok(Rebind::Stop),
        (_, Some(listen)) => Ok(Rebind::Bound(AdminListener::bind(listen).await?)),
    }
}

/// Binds the new address of a listener when it changed (before the old one closes).
async fn rebind(
    what: &'static str,
    old: Option<SocketAddr>,
    new: Option<SocketAddr>,
) -> Result<Rebind, ApplyError> {
    match (old, new) {
        (a, b) if a == b => Ok(Rebind::Keep),
        (_, None) => Ok(Rebind::Stop),
        (_, Some(addr)) => Ok(Rebind::Bound(portcullis_proxy::bind(what, addr).await?)),
    }
}

/// Runs blocking work (file reads, parsing, key loading: half a second of CPU at 10,000
/// sites) with the worker's other tasks handed to another thread, so a reload does not stall
/// the connections of a `--workers 1` gateway. Runs in place on a current-thread runtime,
/// where there is no other thread to hand them to.
pub(crate) fn off_the_workers<R>(work: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    reason = "tests write their fixtures and wait from outside the served path"
)]
mod tests {
    use super::*;

    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn work_off_the_workers_leaves_the_worker_to_its_other_tasks() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (started_tx, started_rx) = mpsc::channel();
            let (tx, rx) = mpsc::channel::<()>();
            // Holds its thread until another task of this one-worker runtime has run.
            let blocking = tokio::spawn(async move {
                off_the_workers(|| {
                    started_tx.send(()).unwrap();
                    rx.recv_timeout(Duration::from_secs(5))
                })
            });
            started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
            tokio::spawn(async move { tx.send(()) });
            assert!(
                blocking.await.unwrap().is_ok(),
                "the other task never ran while the work blocked"
            );
        });
    }
}
