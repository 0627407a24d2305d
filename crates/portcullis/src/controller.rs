//! The running gateway's control plane: the current configuration, the tasks beside the
//! data path (admin listener, ACME, local certificate renewal), and reload.
//!
//! A reload validates and prepares everything that can fail first — the file, certificates,
//! origins, new listener sockets — and only then applies it. A refused reload changes
//! nothing. Applying keeps what did not change: unchanged origins keep their pooled
//! connections, unchanged sites their certificates, and open client connections go on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use portcullis_acme::{AcmeManager, AcmeStats};
use portcullis_config::{Admin, AdminListen, Config, Problem, Site, SiteTls};
use portcullis_proxy::{Gateway, ListenerKind, Router};
use portcullis_tls::{
    CertStore, Challenges, LOCAL_LEAF_VALIDITY, LocalCa, SiteBinding, SiteCerts,
    load_site_certificates,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::admin::{self, AdminListener};
use crate::app::{acme_sites, open_local_ca};
use crate::telemetry::Telemetry;

/// A background task and the switch that stops it.
struct Task {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

impl Task {
    fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(
        run: impl FnOnce(watch::Receiver<bool>) -> F,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        Self {
            stop,
            handle: tokio::spawn(run(stopped)),
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

struct State {
    config: Config,
    /// The certificates loaded for `config`, which the next reload reuses where the files
    /// are unchanged.
    certs: SiteCerts,
    local_ca: Option<Arc<LocalCa>>,
    acme: Option<Arc<AcmeManager>>,
    acme_task: Option<Task>,
    renew: Option<Task>,
    admin: Option<Task>,
}

/// Owns the configuration and everything started from it.
pub struct Controller {
    path: Option<PathBuf>,
    gateway: Gateway,
    challenges: Arc<Challenges>,
    pub(crate) telemetry: Telemetry,
    acme_stats: Arc<AcmeStats>,
    acme: ArcSwapOption<AcmeManager>,
    /// The `admin` section in force, read by each admin request without waiting for a
    /// reload that holds `state`.
    admin: ArcSwap<Admin>,
    state: tokio::sync::Mutex<State>,
    /// The config file's content as last loaded (or tried), so the watcher reacts only to
    /// edits made since.
    loaded: std::sync::Mutex<Option<Vec<u8>>>,
}

/// Everything a controller starts from.
pub(crate) struct Parts {
    pub(crate) path: Option<PathBuf>,
    /// The file's content as it was loaded.
    pub(crate) loaded: Option<Vec<u8>>,
    pub(crate) config: Config,
    /// The certificates loaded for `config`.
    pub(crate) certs: SiteCerts,
    pub(crate) gateway: Gateway,
    pub(crate) challenges: Arc<Challenges>,
    pub(crate) telemetry: Telemetry,
    pub(crate) local_ca: Option<LocalCa>,
    pub(crate) acme: Option<Arc<AcmeManager>>,
    pub(crate) acme_stats: Arc<AcmeStats>,
}

/// What a reload changed, for the log and the `reload` command.
#[derive(Debug, Default)]
pub struct ReloadSummary {
    /// Sites in the new configuration.
    pub sites: usize,
    /// Listeners that moved to a new address.
    pub moved_listeners: Vec<String>,
}

impl Controller {
    pub(crate) fn new(parts: Parts) -> Self {
        let Parts {
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
        } = parts;
        Self {
            path,
            gateway,
            challenges,
            telemetry,
            acme_stats,
            acme: ArcSwapOption::new(acme.clone()),
            admin: ArcSwap::from_pointee(config.admin.clone()),
            loaded: std::sync::Mutex::new(loaded),
            state: tokio::sync::Mutex::new(State {
                config,
                certs,
                local_ca: local_ca.map(Arc::new),
                acme,
                acme_task: None,
                renew: None,
                admin: None,
            }),
        }
    }

    /// The data path.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The ACME manager, when some site uses `tls: acme`.
    pub fn acme(&self) -> Option<Arc<AcmeManager>> {
        self.acme.load_full()
    }

    /// The admin listener's settings now in force (token, allowed hosts).
    pub(crate) fn admin_settings(&self) -> Arc<Admin> {
        self.admin.load_full()
    }

    /// The configuration now in force.
    pub async fn config(&self) -> Config {
        self.state.lock().await.config.clone()
    }

    /// Starts the tasks beside the data path: the admin listener and local renewal.
    pub(crate) async fn start_tasks(self: &Arc<Self>, admin: Option<AdminListener>) {
        let mut st = self.state.lock().await;
        st.admin = admin.map(|l| self.admin_task(l));
        st.renew = self.renew_task(&st.config, st.local_ca.clone());
        st.acme_task = st.acme.clone().map(|m| Task::spawn(|stop| m.run(stop)));
    }

    /// Stops every task (at shutdown).
    pub(crate) async fn stop_tasks(&self) {
        let mut st = self.state.lock().await;
        for task in [st.admin.take(), st.renew.take(), st.acme_task.take()]
            .into_iter()
            .flatten()
        {
            task.stop().await;
        }
    }

    fn admin_task(self: &Arc<Self>, listener: AdminListener) -> Task {
        let me = self.clone();
        Task::spawn(move |stop| admin::serve(listener, me, stop))
    }

    fn renew_task(&self, config: &Config, ca: Option<Arc<LocalCa>>) -> Option<Task> {
        let ca = ca?;
        let config = config.clone();
        let store = self.gateway.certs().clone();
        Some(Task::spawn(move |mut stop| async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    () = tokio::time::sleep(LOCAL_RENEW_INTERVAL) => reissue_local(&config, &ca, &store),
                }
            }
        }))
    }

    /// Re-reads the config file and applies it. On any problem nothing changes and every
    /// problem is returned, named by key as `check` names them.
    pub async fn reload(self: &Arc<Self>) -> Result<ReloadSummary, Vec<Problem>> {
        let Some(path) = self.path.clone() else {
            return Err(vec![Problem::new(
                "",
                "this gateway was started without a config file; there is nothing to reload",
            )]);
        };
        let mut st = self.state.lock().await;
        let result = self.try_reload(&mut st, &path).await;
        match &result {
            Ok(summary) => {
                self.telemetry.reload_succeeded();
                info!(
                    config = %path.display(),
                    sites = summary.sites,
                    moved = ?summary.moved_listeners,
                    "configuration reloaded"
                );
            }
            Err(problems) => {
                self.telemetry.reload_failed();
                for p in problems {
                    warn!(config = %path.display(), key = %p.key, "reload refused: {}", p.message);
                }
            }
        }
        result
    }

    async fn try_reload(
        self: &Arc<Self>,
        st: &mut State,
        path: &std::path::Path,
    ) -> Result<ReloadSummary, Vec<Problem>> {
        // 1. Everything that can fail, with nothing applied yet.
        let Prepared {
            new,
            local_ca,
            certs,
            router,
            keys,
        } = off_the_workers(|| self.prepare(st, path))?;
        let old = &st.config;
        let store = self.gateway.certs();
        let mut moved = Vec::new();
        let https = rebind("https", Some(old.listen.https), Some(new.listen.https)).await?;
        let http = rebind("http", old.listen.http, new.listen.http).await?;
        let admin = rebind_admin(old.admin.listen.as_ref(), new.admin.listen.as_ref()).await?;

        // 2. Apply; nothing below fails.
        store.set_sites(new.sites.iter().zip(keys).map(|(site, key)| {
            (
                SiteBinding {
                    name: &site.name,
                    hosts: &site.hosts,
                    default: site.default,
                },
                key,
            )
        }));
        self.gateway.set_router(router);
        self.gateway.set_limits(&new.limits);
        self.admin.store(Arc::new(new.admin.clone()));
        for (kind, change) in [(ListenerKind::Https, https), (ListenerKind::Http, http)] {
            match change {
                Rebind::Keep => {}
                Rebind::Stop => {
                    self.gateway.stop_listener(kind);
                    moved.push(format!("{kind:?} off"));
                }
                Rebind::Bound(l) => {
                    moved.push(format!("{kind:?} {}", local(&l)));
                    self.gateway.listen(kind, l);
                }
            }
        }
        match admin {
            Rebind::Keep => {}
            Rebind::Stop => {
                if let Some(t) = st.admin.take() {
                    t.stop().await;
                }
                moved.push("admin off".into());
            }
            Rebind::Bound(l) => {
                moved.push(format!("admin {}", l.describe()));
                let next = self.admin_task(l);
                if let Some(t) = st.admin.replace(next) {
                    t.stop().await;
                }
            }
        }
        self.apply_acme(st, &new).await;
        if let Some(t) = st.renew.take() {
            t.stop().await;
        }
        st.renew = self.renew_task(&new, local_ca.clone());
        st.local_ca = local_ca;
        let summary = ReloadSummary {
            sites: new.sites.len(),
            moved_listeners: moved,
        };
        st.config = new;
        st.certs = certs;
        Ok(summary)
    }

    /// Reads and checks the file, loads certificates and builds the router: a reload's
    /// work that can fail, none of it applied.
    fn prepare(&self, st: &State, path: &std::path::Path) -> Result<Prepared, Vec<Problem>> {
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = std::fs::read(path).ok();
        let new = portcullis_config::load(path).map_err(|e| e.problems())?;
        let old = &st.config;
        let local_ca = if new.tls.local_ca_dir == old.tls.local_ca_dir && st.local_ca.is_some() {
            st.local_ca.clone()
        } else {
            open_local_ca(&new).map_err(|p| vec![p])?.map(Arc::new)
        };
        let certs = load_site_certificates(&new, None, Some((&st.config, &st.certs)));
        let router = Router::build(&new, self.gateway.metrics(), Some(&self.gateway.router()));
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
        let store = self.gateway.certs();
        // By name: a scan of the old sites for each new one is quadratic, 10^8 comparisons
        // at 10,000 sites.
        let old_sites: HashMap<&str, &Site> =
            old.sites.iter().map(|o| (o.name.as_str(), o)).collect();
        let mut keys = Vec::with_capacity(new.sites.len());
        for (i, (site, loaded)) in new.sites.iter().zip(&certs.sites).enumerate() {
            let unchanged = old_sites
                .get(site.name.as_str())
                .is_some_and(|o| o.hosts == site.hosts && o.tls == site.tls);
            let have = store.certificate(&site.name).is_some();
            let issue_local = match site.tls {
                SiteTls::Files(_) => false,
                SiteTls::Local => !(unchanged && have),
                SiteTls::Acme { fallback_local } => fallback_local && !have,
            };
            let key = match (&site.tls, issue_local, &local_ca) {
                (SiteTls::Files(_), _, _) => loaded.key.clone(),
                (_, true, Some(ca)) => {
                    Some(ca.issue(&site.hosts, LOCAL_LEAF_VALIDITY).map_err(|e| {
                        vec![Problem::new(format!("sites[{i}].tls"), e.to_string())]
                    })?)
                }
                _ => None,
            };
            keys.push(key);
        }
        Ok(Prepared {
            new,
            local_ca,
            certs,
            router,
            keys,
        })
    }

    /// Keeps the ACME manager when its settings are unchanged (only the sites change);
    /// otherwise stops it and starts a new one.
    async fn apply_acme(&self, st: &mut State, new: &Config) {
        let sites = acme_sites(new);
        let old = &st.config;
        let same_settings = old.acme == new.acme
            && old.storage == new.storage
            && old.listen.http.is_some() == new.listen.http.is_some();
        match (st.acme.as_ref(), same_settings, sites.is_empty()) {
            (Some(manager), true, false) => manager.update_sites(&sites),
            _ => {
                if let Some(task) = st.acme_task.take() {
                    task.stop().await;
                }
                st.acme = None;
                self.acme.store(None);
                if !sites.is_empty() {
                    let manager = Arc::new(AcmeManager::new(
                        &new.acme,
                        &new.storage,
                        new.listen.http.is_some(),
                        self.gateway.certs().clone(),
                        self.challenges.clone(),
                        self.acme_stats.clone(),
                    ));
                    manager.load(&sites);
                    self.acme.store(Some(manager.clone()));
                    let run = manager.clone();
                    st.acme_task = Some(Task::spawn(|stop| run.run(stop)));
                    st.acme = Some(manager);
                }
            }
        }
    }

    /// Reloads whenever the config file's content changes (checked every second). Returns
    /// nothing when the gateway was not started from a file.
    pub(crate) fn watch_file(self: &Arc<Self>) -> Option<JoinHandle<()>> {
        let path = self.path.clone()?;
        let me = self.clone();
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH_INTERVAL).await;
                let now = std::fs::read(&path).ok();
                let last = me.loaded.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if now.is_none() || now == last {
                    continue; // gone for a moment (an editor's rename) or unchanged
                }
                // Let a writer finish: act once the content has held still.
                tokio::time::sleep(WATCH_SETTLE).await;
                let settled = std::fs::read(&path).ok();
                if settled != now {
                    continue;
                }
                info!(config = %path.display(), "config file changed; reloading");
                let _ = me.reload().await;
            }
        }))
    }

    /// The metrics exposition, with the scrape-time metrics (certificate expiry, ACME
    /// counters) brought up to date first: tens of milliseconds of CPU at 10,000 sites, so
    /// it runs off the workers like a reload's preparation.
    pub(crate) async fn metrics_text(&self) -> String {
        let st = self.state.lock().await;
        let acme = self.acme();
        off_the_workers(|| {
            self.telemetry.refresh(
                &st.config,
                self.gateway.certs(),
                acme.as_deref(),
                &self.acme_stats,
            );
            self.telemetry.render()
        })
    }
}

/// A reload's checked, not yet applied, new state.
struct Prepared {
    new: Config,
    local_ca: Option<Arc<LocalCa>>,
    certs: SiteCerts,
    router: Router,
    /// Each new site's certificate, where the reload has one for it.
    keys: Vec<Option<Arc<rustls::sign::CertifiedKey>>>,
}

/// Runs blocking work (file reads, parsing, key loading: half a second of CPU at 10,000
/// sites) with the worker's other tasks handed to another thread, so a reload does not stall
/// the connections of a `--workers 1` gateway. Runs in place on a current-thread runtime,
/// where there is no other thread to hand them to.
fn off_the_workers<R>(work: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

enum Rebind<L = TcpListener> {
    Keep,
    Stop,
    Bound(L),
}

/// Binds the admin listener's new address or socket when it changed.
async fn rebind_admin(
    old: Option<&AdminListen>,
    new: Option<&AdminListen>,
) -> Result<Rebind<AdminListener>, Vec<Problem>> {
    match (old, new) {
        (a, b) if a == b => Ok(Rebind::Keep),
        (_, None) => Ok(Rebind::Stop),
        (_, Some(listen)) => AdminListener::bind(listen)
            .await
            .map(Rebind::Bound)
            .map_err(|e| vec![Problem::new("admin.listen", e)]),
    }
}

/// Binds the new address of a listener when it changed (before the old one closes).
async fn rebind(
    what: &'static str,
    old: Option<SocketAddr>,
    new: Option<SocketAddr>,
) -> Result<Rebind, Vec<Problem>> {
    match (old, new) {
        (a, b) if a == b => Ok(Rebind::Keep),
        (_, None) => Ok(Rebind::Stop),
        (_, Some(addr)) => portcullis_proxy::bind(what, addr)
            .await
            .map(Rebind::Bound)
            .map_err(|e| {
                let key = match what {
                    "http" => "listen.http",
                    _ => "listen.https",
                };
                vec![Problem::new(key, e.to_string())]
            }),
    }
}

fn local(l: &TcpListener) -> String {
    l.local_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string())
}

/// How often the config file is looked at.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// How long a changed config file must stay the same before it is loaded.
const WATCH_SETTLE: Duration = Duration::from_millis(200);

/// How often local certificates are re-issued: well inside their validity.
const LOCAL_RENEW_INTERVAL: Duration = Duration::from_secs(LOCAL_LEAF_VALIDITY.as_secs() / 7);

/// Issues a fresh certificate for every `tls: local` site and swaps it in. (An ACME site's
/// local fallback is not renewed: by then ACME has long replaced it, or the fallback keeps
/// the certificate it started with.)
pub(crate) fn reissue_local(config: &Config, ca: &LocalCa, store: &CertStore) {
    for site in config.sites.iter().filter(|s| s.tls == SiteTls::Local) {
        match ca.issue(&site.hosts, LOCAL_LEAF_VALIDITY) {
            Ok(cert) => {
                store.set_certificate(&site.name, cert);
            }
            Err(e) => warn!(site = %site.name, error = %e, "cannot re-issue local certificate"),
        }
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::mpsc;

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
