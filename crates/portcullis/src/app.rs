//! Wiring: config → certificates + router → bound listeners → a running gateway.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use portcullis_acme::{AcmeManager, AcmeSite, AcmeStats};
use portcullis_config::{Config, HostPattern, Problem, SiteTls};
use portcullis_proxy::{BindError, Gateway, ListenerKind, Listeners, ProxyMetrics, Router};
use portcullis_tls::{CertStore, Challenges, LocalCa, SiteCerts, load_site_certificates};
use tracing::{info, warn};

use crate::admin::AdminListener;
use crate::controller::{Controller, Parts};
use crate::telemetry::Telemetry;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid; every problem is listed.
    #[error("invalid configuration")]
    Config(Vec<Problem>),
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The admin listener's unix socket could not be created.
    #[error("{0}")]
    AdminSocket(String),
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
pub fn prepare(
    config: &Config,
    local_ca: Option<&LocalCa>,
    metrics: &ProxyMetrics,
) -> Result<Prepared, Vec<Problem>> {
    let certs = load_site_certificates(config, local_ca, None);
    let router = Router::build(config, metrics, None);
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
    controller: Arc<Controller>,
    listeners: Listeners,
    admin: Option<AdminListener>,
}

impl App {
    /// Validates what the config refers to, then binds every listener. A gateway started
    /// this way has no file to reload from.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        Self::start_with(None, None, config).await
    }

    /// Loads, validates and binds `path`; `reload` re-reads it.
    pub async fn start_from_file(path: &Path) -> Result<Self, StartError> {
        let loaded = std::fs::read(path).ok();
        let config = portcullis_config::load(path).map_err(|e| StartError::Config(e.problems()))?;
        Self::start_with(Some(path.to_owned()), loaded, config).await
    }

    async fn start_with(
        path: Option<PathBuf>,
        loaded: Option<Vec<u8>>,
        config: Config,
    ) -> Result<Self, StartError> {
        let local_ca = open_local_ca(&config).map_err(|p| StartError::Config(vec![p]))?;
        let telemetry = Telemetry::new().map_err(|e| {
            StartError::Config(vec![Problem::new("", format!("metrics setup failed: {e}"))])
        })?;
        let Prepared { certs, router } =
            prepare(&config, local_ca.as_ref(), &telemetry.proxy).map_err(StartError::Config)?;
        for w in &certs.warnings {
            warn!(key = %w.key, "{}", w.message);
        }
        if let Some(w) = config.admin.exposure_warning() {
            warn!(key = %w.key, "{}", w.message);
        }
        if let Some(ca) = &local_ca {
            info!(root = %ca.root_cert_path().display(), "local CA in use; trust this root certificate to avoid browser warnings");
        }
        let store = Arc::new(CertStore::new());
        certs.publish(&config, &store);
        let challenges = Arc::new(Challenges::new());
        let acme_stats = Arc::new(AcmeStats::default());
        let sites = acme_sites(&config);
        let acme = (!sites.is_empty()).then(|| {
            let manager = AcmeManager::new(
                &config.acme,
                &config.storage,
                config.listen.http.is_some(),
                store.clone(),
                challenges.clone(),
                acme_stats.clone(),
            );
            // Stored certificates are served before the first connection is accepted.
            manager.load(&sites);
            Arc::new(manager)
        });
        let gateway = Gateway::new(
            router,
            store,
            challenges.clone(),
            &config.limits,
            telemetry.proxy.clone(),
        )?;
        let listeners = Listeners::bind(&config.listen).await?;
        let admin = match &config.admin.listen {
            Some(portcullis_config::AdminListen::Tcp(addr)) => Some(AdminListener::Tcp(
                portcullis_proxy::bind("admin", *addr).await?,
            )),
            Some(unix) => Some(
                AdminListener::bind(unix)
                    .await
                    .map_err(StartError::AdminSocket)?,
            ),
            None => None,
        };
        let controller = Arc::new(Controller::new(Parts {
            path,
            loaded,
            config,
            certs,
            gateway,
            challenges,
            telemetry,
            local_ca,
            acme,
            acme_stats,
        }));
        Ok(Self {
            controller,
            listeners,
            admin,
        })
    }

    /// The control plane: configuration, reload, ACME.
    pub fn controller(&self) -> &Arc<Controller> {
        &self.controller
    }

    /// The ACME manager, when some site uses `tls: acme`.
    pub fn acme(&self) -> Option<Arc<AcmeManager>> {
        self.controller.acme()
    }

    /// Address of the HTTPS listener.
    pub fn https_addr(&self) -> SocketAddr {
        self.listeners.https_addr()
    }

    /// Address of the plain HTTP listener, if any.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.listeners.http_addr()
    }

    /// Address of the admin listener, if it listens on TCP.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(AdminListener::tcp_addr)
    }

    /// The running gateway (to swap routes or certificates).
    pub fn gateway(&self) -> &Gateway {
        self.controller.gateway()
    }

    /// Serves until `shutdown` completes, then drains for up to the drain timeout in force.
    /// Returns true if every connection finished in time.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> bool {
        let App {
            controller,
            listeners,
            admin,
        } = self;
        let or_off = |a: Option<SocketAddr>| a.map_or_else(|| "off".to_owned(), |a| a.to_string());
        let sites = controller.config().await.sites.len();
        info!(
            https = %listeners.https_addr(),
            http = %or_off(listeners.http_addr()),
            admin = %admin.as_ref().map_or_else(|| "off".to_owned(), AdminListener::describe),
            sites,
            "portcullis is serving"
        );
        let gateway = controller.gateway().clone();
        let (https, http) = listeners.into_parts();
        gateway.listen(ListenerKind::Https, https);
        if let Some(http) = http {
            gateway.listen(ListenerKind::Http, http);
        }
        controller.start_tasks(admin).await;
        let watcher = controller.watch_file();
        shutdown.await;
        if let Some(w) = watcher {
            w.abort();
        }
        // The drain timeout in force now, after any reloads.
        let drain_timeout = controller.config().await.shutdown.drain_timeout;
        let drained = gateway.shutdown(drain_timeout).await;
        controller.stop_tasks().await;
        drained
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::controller::reissue_local;

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
        let prepared = prepare(&config, Some(&ca), &ProxyMetrics::unregistered()).unwrap();
        let store = CertStore::new();
        prepared.certs.publish(&config, &store);
        let before = store.certificate("a.localhost").unwrap();
        reissue_local(&config, &ca, &store);
        let after = store.certificate("a.localhost").unwrap();
        assert_ne!(before.cert[0], after.cert[0]);
    }
}
