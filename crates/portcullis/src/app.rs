//! The gateway as `portcullis run` runs it: started by applying its first configuration to
//! an empty state (`controller.rs`), then serving until told to stop, then draining.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use portcullis_acme::AcmeManager;
use portcullis_config::Config;
use portcullis_proxy::{Gateway, ListenerKind};
use tracing::info;

use crate::controller::{Controller, ReadinessFn};
use crate::prepare::StartError;

/// A gateway with its listeners bound and serving, ready to [`run`](App::run) until shut
/// down.
pub struct App {
    controller: Arc<Controller>,
}

impl App {
    /// Validates what the config refers to, then binds every listener. A gateway started
    /// this way has no file to reload from.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        Ok(Self {
            controller: Controller::start_with(config).await?,
        })
    }

    /// Starts from `config` (a base with no sites) for a config source that applies its
    /// own configurations later, and whose readiness `/readyz` reports from the start.
    pub(crate) async fn start_with_source(
        config: Config,
        readiness: ReadinessFn,
        kube: kube::Client,
    ) -> Result<Self, StartError> {
        Ok(Self {
            controller: Controller::start_with_source(config, readiness, kube).await?,
        })
    }

    /// Loads, validates and binds `path`; `reload` re-reads it.
    pub async fn start_from_file(path: &Path) -> Result<Self, StartError> {
        Ok(Self {
            controller: Controller::start_from_file(path).await?,
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
        self.gateway()
            .listener_addr(ListenerKind::Https)
            .expect("the HTTPS listener runs from start-up until `run` shuts it down")
    }

    /// Address of the plain HTTP listener, if any.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.gateway().listener_addr(ListenerKind::Http)
    }

    /// Address of the admin listener, if it listens on TCP.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.controller.admin_bound().tcp
    }

    /// The running gateway (to swap routes or certificates).
    pub fn gateway(&self) -> &Gateway {
        self.controller.gateway()
    }

    /// Serves until `shutdown` completes, then drains for up to the drain timeout in force.
    /// Returns true if every connection finished in time.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> bool {
        let controller = self.controller;
        let gateway = controller.gateway().clone();
        let addr = |kind| {
            gateway
                .listener_addr(kind)
                .map_or_else(|| "off".to_owned(), |a| a.to_string())
        };
        let sites = controller.config().await.sites.len();
        info!(
            https = %addr(ListenerKind::Https),
            http = %addr(ListenerKind::Http),
            admin = %controller.admin_bound().describe.unwrap_or_else(|| "off".to_owned()),
            sites,
            "portcullis is serving"
        );
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
