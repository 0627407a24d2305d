//! Wiring: config → certificates + router → bound listeners → a running gateway.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_acme::{AcmeManager, AcmeSite};
use portcullis_config::{Config, HostPattern, Problem, SiteTls};
use portcullis_proxy::{BindError, Gateway, Listeners, Router};
use portcullis_tls::{
    CertStore, Challenges, LOCAL_LEAF_VALIDITY, LocalCa, SiteCerts, load_site_certificates,
};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::admin::{self, AdminState};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid; every problem is listed.
    #[error("invalid configuration")]
    Config(Vec<Problem>),
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The TLS server config could not be built.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// Everything derived from a config before anything is bound: certificates and routes.
pub struct Prepared {
    /// The site certificates (and warnings about them).
    pub certs: SiteCerts,
    /// The routing table.
    pub router: Router,
}

/// Loads certificates and builds the routing table, collecting every problem. With
/// `local_ca`, `tls: local` sites are issued certificates; without, they are left empty.
pub fn prepare(config: &Config, local_ca: Option<&LocalCa>) -> Result<Prepared, Vec<Problem>> {
    let certs = load_site_certificates(config, local_ca);
    let router = Router::build(config);
    match (certs, router) {
        (Ok(certs), Ok(router)) => Ok(Prepared { certs, router }),
        (certs, router) => Err(certs
            .err()
            .into_iter()
            .flatten()
            .chain(router.err().into_iter().flatten())
            .collect()),
    }
}

/// Opens (or creates) the local CA if some site uses `tls: local` or falls back to it.
pub fn open_local_ca(config: &Config) -> Result<Option<LocalCa>, Problem> {
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
pub fn acme_sites(config: &Config) -> Vec<AcmeSite> {
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

/// A gateway with its listeners bound, ready to [`run`](App::run).
pub struct App {
    gateway: Gateway,
    listeners: Listeners,
    admin: Option<TcpListener>,
    config: Config,
    local_ca: Option<Arc<LocalCa>>,
    acme: Option<Arc<AcmeManager>>,
}

impl App {
    /// Validates what the config refers to, then binds every listener.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let local_ca = open_local_ca(&config).map_err(|p| StartError::Config(vec![p]))?;
        let prepared = prepare(&config, local_ca.as_ref()).map_err(StartError::Config)?;
        for w in &prepared.certs.warnings {
            warn!(key = %w.key, "{}", w.message);
        }
        if let Some(ca) = &local_ca {
            info!(root = %ca.root_cert_path().display(), "local CA in use; trust this root certificate to avoid browser warnings");
        }
        let store = Arc::new(CertStore::new());
        prepared.certs.publish(&config, &store);
        let challenges = Arc::new(Challenges::new());
        let sites = acme_sites(&config);
        let acme = (!sites.is_empty()).then(|| {
            let manager = AcmeManager::new(
                &config.acme,
                &config.storage,
                config.listen.http.is_some(),
                store.clone(),
                challenges.clone(),
            );
            // Stored certificates are served before the first connection is accepted.
            manager.load(&sites);
            Arc::new(manager)
        });
        let gateway = Gateway::new(prepared.router, store, challenges, &config.limits)?;
        let listeners = Listeners::bind(&config.listen).await?;
        let admin = match config.admin.listen {
            Some(addr) => Some(portcullis_proxy::bind("admin", addr).await?),
            None => None,
        };
        Ok(Self {
            gateway,
            listeners,
            admin,
            config,
            local_ca: local_ca.map(Arc::new),
            acme,
        })
    }

    /// The ACME manager, when some site uses `tls: acme`.
    pub fn acme(&self) -> Option<&Arc<AcmeManager>> {
        self.acme.as_ref()
    }

    /// Address of the HTTPS listener.
    pub fn https_addr(&self) -> SocketAddr {
        self.listeners.https_addr()
    }

    /// Address of the plain HTTP listener, if any.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.listeners.http_addr()
    }

    /// Address of the admin listener, if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The running gateway (to swap routes or certificates).
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Serves until `shutdown` completes, then drains for up to the configured drain
    /// timeout. Returns true if every connection finished in time.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> bool {
        let App {
            gateway,
            listeners,
            admin,
            config,
            local_ca,
            acme,
        } = self;
        let or_off = |a: Option<SocketAddr>| a.map_or_else(|| "off".to_owned(), |a| a.to_string());
        info!(
            https = %listeners.https_addr(),
            http = %or_off(listeners.http_addr()),
            admin = %or_off(admin.as_ref().and_then(|l| l.local_addr().ok())),
            sites = config.sites.len(),
            "portcullis is serving"
        );
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let admin_task = admin.map(|listener| {
            let state = Arc::new(AdminState::new(gateway.certs().clone(), acme.clone()));
            tokio::spawn(admin::serve(listener, state, stop_rx.clone()))
        });
        let renew_task = local_ca.map(|ca| {
            tokio::spawn(renew_local_certificates(
                config.clone(),
                ca,
                gateway.certs().clone(),
                LOCAL_RENEW_INTERVAL,
            ))
        });
        let acme_task = acme.map(|manager| tokio::spawn(manager.run(stop_rx.clone())));
        let drained = gateway
            .serve(listeners, shutdown, config.shutdown.drain_timeout)
            .await;
        let _ = stop_tx.send(true);
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        if let Some(task) = renew_task {
            task.abort();
        }
        if let Some(task) = acme_task {
            let _ = task.await;
        }
        drained
    }
}

/// How often local certificates are re-issued: well inside their validity.
const LOCAL_RENEW_INTERVAL: Duration = Duration::from_secs(LOCAL_LEAF_VALIDITY.as_secs() / 7);

/// Re-issues the certificates of `tls: local` sites every `every`, forever.
async fn renew_local_certificates(
    config: Config,
    ca: Arc<LocalCa>,
    store: Arc<CertStore>,
    every: Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        reissue_local(&config, &ca, &store);
    }
}

/// Issues a fresh certificate for every `tls: local` site and swaps it in. (An ACME site's
/// local fallback is not renewed: by then ACME has long replaced it, or the fallback keeps
/// the certificate it started with.)
fn reissue_local(config: &Config, ca: &LocalCa, store: &CertStore) {
    for site in config.sites.iter().filter(|s| s.tls == SiteTls::Local) {
        match ca.issue(&site.hosts, LOCAL_LEAF_VALIDITY) {
            Ok(cert) => {
                store.set_certificate(&site.name, cert);
            }
            Err(e) => warn!(site = %site.name, error = %e, "cannot re-issue local certificate"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_certificates_are_reissued_into_the_store() {
        portcullis_tls::install_default_provider();
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "tls: {{ local_ca_dir: {} }}\nsites:\n  - hosts: [a.localhost]\n    tls: local\n    respond: {{ body: hi }}\n",
            dir.path().join("ca").display()
        );
        let config = portcullis_config::parse(&yaml, dir.path()).unwrap();
        let ca = open_local_ca(&config).unwrap().unwrap();
        let prepared = prepare(&config, Some(&ca)).unwrap();
        let store = CertStore::new();
        prepared.certs.publish(&config, &store);
        let before = store.certificate("a.localhost").unwrap();
        reissue_local(&config, &ca, &store);
        let after = store.certificate("a.localhost").unwrap();
        assert_ne!(before.cert[0], after.cert[0]);
    }
}
