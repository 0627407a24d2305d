//! The running gateway's control plane: the configuration in force, the tasks beside the
//! data path (admin listener, ACME, local certificate renewal), and the one way a
//! configuration is put in force, [`Controller::apply`].
//!
//! Start-up applies the first configuration to an empty state; a reload (the admin
//! listener's `POST /reload`, SIGHUP, the file watcher) applies the file's new content;
//! another config source hands its `Config` to `apply`. Each change is prepared first
//! (`prepare.rs`: everything that can fail, nothing applied) and then committed, which
//! cannot fail: a refused change leaves everything as it was. Committing keeps what did not
//! change: unchanged origins keep their pooled connections, unchanged sites their
//! certificates, and open client connections go on.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use portcullis_acme::{AcmeManager, AcmeSite, AcmeStats};
use portcullis_cluster::Cluster;
use portcullis_config::{Admin, Config, FileStamp, HostPattern, Problem, SiteTls};
use portcullis_proxy::{Gateway, ListenerKind, Router};
use portcullis_tls::{CertStore, Challenges, LOCAL_LEAF_VALIDITY, LocalCa, Preloaded, SiteBinding};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::admin::{self, AdminApi, SourceReadiness};
use crate::prepare::{Applied, ApplyError, Prepared, Rebind, Running, off_the_workers, prepare};
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
    /// `None` until the first configuration is applied.
    applied: Option<Applied>,
    acme_task: Option<Task>,
    renew: Option<Task>,
    admin: Option<Task>,
}

/// Where the admin listener listens, for `App` and the start-up log.
#[derive(Debug, Clone, Default)]
pub(crate) struct AdminBound {
    pub(crate) tcp: Option<SocketAddr>,
    pub(crate) describe: Option<String>,
}

/// Owns the configuration and everything started from it.
pub struct Controller {
    /// The config file, when the configuration comes from one.
    path: Option<PathBuf>,
    gateway: Gateway,
    challenges: Arc<Challenges>,
    telemetry: Telemetry,
    acme_stats: Arc<AcmeStats>,
    acme: ArcSwapOption<AcmeManager>,
    /// The `admin` section in force, read by each admin request without waiting for a
    /// change that holds `state`.
    admin: ArcSwap<Admin>,
    admin_bound: Mutex<AdminBound>,
    state: tokio::sync::Mutex<State>,
    /// The config file as last loaded (or tried), so the watcher reacts only to edits
    /// made since.
    loaded: Mutex<Option<Loaded>>,
    /// What a config source other than the file says of readiness (set before the
    /// admin listener starts).
    source_readiness: OnceLock<ReadinessFn>,
    /// Membership in the certificate cluster (`cluster:`), joined at start.
    cluster: Option<Arc<Cluster>>,
}

/// A config source's readiness, asked at every `/readyz`.
pub(crate) type ReadinessFn = Arc<dyn Fn() -> SourceReadiness + Send + Sync>;

/// A config file as it was read.
#[derive(Clone, PartialEq, Eq)]
struct Loaded {
    stamp: FileStamp,
    content: Vec<u8>,
}

/// Where a change's configuration comes from.
enum Source {
    /// Already parsed and validated (a config source other than the file), with the
    /// servable keys the source built for its certificates.
    Config(Box<Config>, Preloaded),
    /// The config file, read and validated as part of the change.
    File(PathBuf),
}

/// What a change did, for the log and the `reload` command.
#[derive(Debug, Default)]
pub struct ReloadSummary {
    /// Sites in the new configuration.
    pub sites: usize,
    /// Listeners that moved to a new address.
    pub moved_listeners: Vec<String>,
}

impl fmt::Display for ReloadSummary {
    /// The admin listener's answer to `POST /reload`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "reloaded: {} sites", self.sites)?;
        for m in &self.moved_listeners {
            writeln!(f, "listener {m}")?;
        }
        Ok(())
    }
}

impl Controller {
    /// Builds the control plane and applies `config` to its empty state: the same steps
    /// as every later change. `path` is the file `config` was read from (with what was
    /// read, for the watcher), which [`reload`](Self::reload) re-reads.
    async fn start(
        mut config: Config,
        file: Option<(PathBuf, Option<Loaded>)>,
        readiness: Option<ReadinessFn>,
        kube: Option<kube::Client>,
    ) -> Result<Arc<Self>, ApplyError> {
        // The empty state is built with the first configuration's settings and no sites.
        let sites = std::mem::take(&mut config.sites);
        let empty = config.clone();
        config.sites = sites;
        let telemetry = Telemetry::new().map_err(|e| {
            ApplyError::Config(vec![Problem::new("", format!("metrics setup failed: {e}"))])
        })?;
        let router = Router::build(&empty, &telemetry.proxy, None)?;
        let challenges = Arc::new(Challenges::new());
        let gateway = Gateway::new(
            router,
            Arc::new(CertStore::new()),
            challenges.clone(),
            &empty.limits,
            telemetry.proxy.clone(),
        )?;
        let (path, loaded) = file.unzip();
        let cluster = match &config.cluster {
            None => None,
            Some(settings) => {
                let store = crate::cluster::open_store(settings, kube)
                    .await
                    .map_err(|e| ApplyError::Config(vec![Problem::new("cluster", e)]))?;
                let cluster =
                    Cluster::start(store, settings, challenges.clone(), telemetry.registry())
                        .map_err(|e| {
                            ApplyError::Config(vec![Problem::new(
                                "cluster",
                                format!("metrics setup failed: {e}"),
                            )])
                        })?;
                Some(cluster)
            }
        };
        let me = Arc::new(Self {
            path,
            gateway,
            challenges,
            telemetry,
            acme_stats: Arc::new(AcmeStats::default()),
            acme: ArcSwapOption::empty(),
            admin: ArcSwap::from_pointee(empty.admin),
            admin_bound: Mutex::new(AdminBound::default()),
            state: tokio::sync::Mutex::new(State {
                applied: None,
                acme_task: None,
                renew: None,
                admin: None,
            }),
            loaded: Mutex::new(loaded.flatten()),
            source_readiness: OnceLock::new(),
            cluster,
        });
        if let Some(r) = readiness {
            let _ = me.source_readiness.set(r);
        }
        {
            let mut st = me.state.lock().await;
            me.change(
                &mut st,
                Source::Config(Box::new(config), Preloaded::default()),
            )
            .await?;
        }
        Ok(me)
    }

    /// Starts from `config`, with no file to reload.
    pub(crate) async fn start_with(config: Config) -> Result<Arc<Self>, ApplyError> {
        Self::start(config, None, None, None).await
    }

    /// Starts from `config` (a base with no sites, for `portcullis ingress`), with a
    /// config source whose word `/readyz` adds to its own from the first request on.
    pub(crate) async fn start_with_source(
        config: Config,
        readiness: ReadinessFn,
        kube: kube::Client,
    ) -> Result<Arc<Self>, ApplyError> {
        Self::start(config, None, Some(readiness), Some(kube)).await
    }

    /// Starts from the config file at `path`, which [`reload`](Self::reload) and the
    /// watcher re-read.
    pub(crate) async fn start_from_file(path: &Path) -> Result<Arc<Self>, ApplyError> {
        let (loaded, config) = off_the_workers(|| read_file(path, None));
        Self::start(config?, Some((path.to_owned(), loaded)), None, None).await
    }

    /// The metrics registry, for a config source's own metrics.
    pub(crate) fn registry(&self) -> &prometheus::Registry {
        self.telemetry.registry()
    }

    /// The data path.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Membership in the certificate cluster, when `cluster:` is set.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// The ACME manager, when some site uses `tls: acme`.
    pub fn acme(&self) -> Option<Arc<AcmeManager>> {
        self.acme.load_full()
    }

    /// Where the admin listener listens now.
    pub(crate) fn admin_bound(&self) -> AdminBound {
        self.admin_bound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The configuration now in force.
    pub async fn config(&self) -> Config {
        let st = self.state.lock().await;
        st.applied
            .as_ref()
            .map(|a| a.config.clone())
            .expect("a controller is handed out only once its first configuration is applied")
    }

    /// Whether `config` is the configuration in force: a source that derives its whole
    /// configuration again at every change (Kubernetes) skips applying one that changes
    /// nothing, without keeping a copy of its own.
    pub(crate) async fn config_is(&self, config: &Config) -> bool {
        let st = self.state.lock().await;
        st.applied.as_ref().is_some_and(|a| a.config == *config)
    }

    /// Puts `config` in force, from whatever source it came. Everything that can fail is
    /// prepared first; on any error nothing changes.
    pub async fn apply(self: &Arc<Self>, config: Config) -> Result<ReloadSummary, ApplyError> {
        self.apply_preloaded(config, Preloaded::default()).await
    }

    /// [`apply`](Self::apply), serving the keys in `preloaded` (built by the config source to
    /// check its certificates) instead of loading those certificates' keys again.
    pub async fn apply_preloaded(
        self: &Arc<Self>,
        config: Config,
        preloaded: Preloaded,
    ) -> Result<ReloadSummary, ApplyError> {
        self.change_counted(Source::Config(Box::new(config), preloaded), None)
            .await
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
        self.change_counted(Source::File(path.clone()), Some(&path))
            .await
            .map_err(|e| e.problems())
    }

    /// A change after start-up: counted in the metrics and logged.
    async fn change_counted(
        self: &Arc<Self>,
        source: Source,
        path: Option<&Path>,
    ) -> Result<ReloadSummary, ApplyError> {
        let from = path.map_or_else(|| "(given)".to_owned(), |p| p.display().to_string());
        let mut st = self.state.lock().await;
        let result = self.change(&mut st, source).await;
        match &result {
            Ok(summary) => {
                self.telemetry.reload_succeeded();
                info!(
                    config = %from,
                    sites = summary.sites,
                    moved = ?summary.moved_listeners,
                    "configuration reloaded"
                );
            }
            Err(e) => {
                self.telemetry.reload_failed();
                for p in e.problems() {
                    warn!(config = %from, key = %p.key, "reload refused: {}", p.message);
                }
            }
        }
        result
    }

    /// The one path from a configuration to the running state: prepare against what is in
    /// force (nothing, at start-up), then commit.
    async fn change(
        self: &Arc<Self>,
        st: &mut State,
        source: Source,
    ) -> Result<ReloadSummary, ApplyError> {
        let (config, preloaded) = match source {
            Source::Config(c, preloaded) => (*c, preloaded),
            Source::File(path) => (
                off_the_workers(|| self.read_file(&path, st.applied.as_ref().map(|a| &a.config)))?,
                Preloaded::default(),
            ),
        };
        if let Some(applied) = &st.applied
            && applied.config.cluster != config.cluster
        {
            return Err(ApplyError::Config(vec![Problem::new(
                "cluster",
                "the cluster settings cannot change while the gateway runs; restart it to \
                 apply them (one replica at a time)",
            )]));
        }
        let router = self.gateway.router();
        let prepared = prepare(
            config,
            Running {
                applied: st.applied.as_ref(),
                store: self.gateway.certs(),
                router: &router,
                metrics: self.gateway.metrics(),
                preloaded: &preloaded,
            },
        )
        .await?;
        Ok(self.commit(st, prepared).await)
    }

    /// Reads and validates the config file, remembering what was read for the watcher
    /// (also when it is refused, so the watcher does not try the same content again).
    /// Certificate files unchanged since `previous` read them are not read again.
    fn read_file(&self, path: &Path, previous: Option<&Config>) -> Result<Config, Vec<Problem>> {
        let (loaded, config) = read_file(path, previous);
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = loaded;
        config
    }

    /// Puts a prepared change in force; nothing here fails. The certificates and ACME go
    /// first, so a listener bound for this change serves them from its first handshake.
    async fn commit(self: &Arc<Self>, st: &mut State, prepared: Prepared) -> ReloadSummary {
        let Prepared {
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
        } = prepared;
        self.gateway.certs().set_sites(
            config
                .sites
                .iter()
                .zip(keys)
                // `tls: none`: its names get the default site's certificate, as
                // unclaimed names do.
                .filter(|(site, _)| !matches!(site.tls, SiteTls::None))
                .map(|(site, key)| {
                    (
                        SiteBinding {
                            name: &site.name,
                            hosts: &site.hosts,
                            default: site.default,
                        },
                        key,
                    )
                }),
        );
        self.gateway.set_router(router);
        self.gateway.set_limits(&config.limits);
        self.admin.store(Arc::new(config.admin.clone()));
        let acme = self.commit_acme(st, &config, &acme_sites, keep_acme).await;
        if let Some(ca) = local_ca.as_ref().filter(|_| opened_local_ca) {
            info!(root = %ca.root_cert_path().display(), "local CA in use; trust this root certificate to avoid browser warnings");
        }
        let mut moved = Vec::new();
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
                *self.admin_bound.lock().unwrap_or_else(|e| e.into_inner()) = AdminBound::default();
                moved.push("admin off".into());
            }
            Rebind::Bound(l) => {
                let describe = l.describe();
                moved.push(format!("admin {describe}"));
                *self.admin_bound.lock().unwrap_or_else(|e| e.into_inner()) = AdminBound {
                    tcp: l.tcp_addr(),
                    describe: Some(describe),
                };
                let me = self.clone();
                let next = Task::spawn(move |stop| admin::serve(l, me, stop));
                if let Some(t) = st.admin.replace(next) {
                    t.stop().await;
                }
            }
        }
        if let Some(t) = st.renew.take() {
            t.stop().await;
        }
        st.renew = self.renew_task(&config, local_ca.clone());
        let summary = ReloadSummary {
            sites: config.sites.len(),
            moved_listeners: moved,
        };
        st.applied = Some(Applied {
            config,
            certs,
            local_ca,
            acme,
        });
        summary
    }

    /// Keeps the ACME manager when its settings are unchanged (only the sites change);
    /// otherwise stops it and starts a new one, which first serves the certificates it has
    /// stored.
    async fn commit_acme(
        &self,
        st: &mut State,
        config: &Config,
        sites: &[AcmeSite],
        keep: bool,
    ) -> Option<Arc<AcmeManager>> {
        let current = st.applied.as_ref().and_then(|a| a.acme.clone());
        if let (Some(manager), true, false) = (current, keep, sites.is_empty()) {
            manager.update_sites(sites);
            if let Some(cluster) = &self.cluster {
                // New sites get what the store holds for them.
                cluster.refresh();
            }
            return Some(manager);
        }
        if let Some(task) = st.acme_task.take() {
            task.stop().await;
        }
        self.acme.store(None);
        if sites.is_empty() {
            if let Some(cluster) = &self.cluster {
                cluster.attach(None);
            }
            return None;
        }
        let mut manager = AcmeManager::new(
            &config.acme,
            &config.storage,
            config.listen.http.is_some(),
            self.gateway.certs().clone(),
            self.challenges.clone(),
            self.acme_stats.clone(),
        );
        if let Some(cluster) = &self.cluster {
            manager = manager.with_fleet(cluster.fleet());
        }
        let manager = Arc::new(manager);
        manager.load(sites);
        if let Some(cluster) = &self.cluster {
            cluster.attach(Some(manager.clone()));
        }
        self.acme.store(Some(manager.clone()));
        let run = manager.clone();
        st.acme_task = Some(Task::spawn(|stop| run.run(stop)));
        Some(manager)
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
        if let Some(cluster) = &self.cluster {
            // Hands the issuer's leadership over at once instead of after the lease.
            cluster.stop().await;
        }
    }

    fn renew_task(&self, config: &Config, ca: Option<Arc<LocalCa>>) -> Option<Task> {
        let ca = ca?;
        // Only the local sites' names and hosts: a copy of the whole config would be kept
        // for as long as it is in force (tens of MB at 10,000 sites).
        let local: Vec<(String, Vec<HostPattern>)> = config
            .sites
            .iter()
            .filter(|s| s.tls == SiteTls::Local)
            .map(|s| (s.name.clone(), s.hosts.clone()))
            .collect();
        let store = self.gateway.certs().clone();
        Some(Task::spawn(move |mut stop| async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    () = tokio::time::sleep(LOCAL_RENEW_INTERVAL) => reissue_local(&local, &ca, &store),
                }
            }
        }))
    }

    /// Reloads whenever the config file's content changes. It looks every second at the
    /// file's metadata only (a stat, off the workers), and reads the file (about 1 MB at
    /// 10,000 sites) only when that changed. Returns nothing when the gateway was not
    /// started from a file.
    pub(crate) fn watch_file(self: &Arc<Self>) -> Option<JoinHandle<()>> {
        let path = self.path.clone()?;
        let me = self.clone();
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH_INTERVAL).await;
                let Some(stamp) = file_stamp(&path).await else {
                    continue; // gone for a moment (an editor's rename)
                };
                if me.loaded_is(|l| l.stamp == stamp) {
                    continue;
                }
                // Let a writer finish: act once the file has held still.
                tokio::time::sleep(WATCH_SETTLE).await;
                if file_stamp(&path).await != Some(stamp) {
                    continue;
                }
                let Ok(content) = tokio::fs::read(&path).await else {
                    continue;
                };
                // Touched, or replaced by the same content: nothing to reload.
                let same = me.loaded_is(|l| {
                    let same = l.content == content;
                    if same {
                        l.stamp = stamp;
                    }
                    same
                });
                if same {
                    continue;
                }
                info!(config = %path.display(), "config file changed; reloading");
                let _ = me.reload().await;
            }
        }))
    }
}

impl Controller {
    /// Whether the config file as last read passes `test` (which may update its stamp).
    fn loaded_is(&self, test: impl FnOnce(&mut Loaded) -> bool) -> bool {
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .is_some_and(test)
    }
}

impl AdminApi for Controller {
    fn settings(&self) -> Arc<Admin> {
        self.admin.load_full()
    }

    fn missing_certificates(&self) -> Vec<String> {
        self.gateway.certs().missing()
    }

    fn acme_waiting(&self) -> Vec<(String, Option<String>)> {
        self.acme().map(|a| a.waiting()).unwrap_or_default()
    }

    fn source_readiness(&self) -> Option<SourceReadiness> {
        self.source_readiness.get().map(|f| f())
    }

    fn cluster_notes(&self) -> Option<String> {
        let status = self.cluster.as_ref()?.status();
        let role = if status.issuer { "issuer" } else { "follower" };
        Some(match (status.stale_for, status.ever_synced) {
            (None, _) => format!(
                "cluster: {} via {} ({role}), store in sync\n",
                status.node, status.store
            ),
            (Some(_), false) => format!(
                "cluster: {} via {} ({role}), store not reached yet; serving the local cache\n",
                status.node, status.store
            ),
            (Some(d), true) => format!(
                "cluster: {} via {} ({role}), store unreachable for {}s; serving the certificates this replica has\n",
                status.node,
                status.store,
                d.as_secs()
            ),
        })
    }

    /// The metrics exposition, with the scrape-time metrics (certificate expiry, ACME
    /// counters) brought up to date first: tens of milliseconds of CPU at 10,000 sites, so
    /// it runs off the workers like a change's preparation.
    async fn metrics_text(&self) -> String {
        let st = self.state.lock().await;
        let acme = self.acme();
        off_the_workers(|| {
            if let Some(applied) = &st.applied {
                self.telemetry.refresh(
                    &applied.config,
                    self.gateway.certs(),
                    acme.as_deref(),
                    &self.acme_stats,
                );
            }
            self.telemetry.render()
        })
    }

    async fn reload_reply(self: Arc<Self>) -> Result<String, Vec<Problem>> {
        self.reload().await.map(|s| s.to_string())
    }
}

/// Reads and validates the config file, with what was read (for the watcher). Called only
/// through `off_the_workers`, which moves a worker's other tasks elsewhere first.
#[allow(
    clippy::disallowed_methods,
    reason = "always run under off_the_workers (block_in_place)"
)]
fn read_file(
    path: &Path,
    previous: Option<&Config>,
) -> (Option<Loaded>, Result<Config, Vec<Problem>>) {
    // The stamp before the content: an edit in between is seen by the watcher's next look.
    let stamp = std::fs::metadata(path).ok().map(|m| FileStamp::of(&m));
    let content = std::fs::read(path).ok();
    let loaded = stamp
        .zip(content)
        .map(|(stamp, content)| Loaded { stamp, content });
    (
        loaded,
        portcullis_config::load_reusing(path, previous).map_err(|e| e.problems()),
    )
}

/// The config file's stamp, read without blocking a worker.
async fn file_stamp(path: &Path) -> Option<FileStamp> {
    tokio::fs::metadata(path)
        .await
        .ok()
        .map(|m| FileStamp::of(&m))
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
fn reissue_local(sites: &[(String, Vec<HostPattern>)], ca: &LocalCa, store: &CertStore) {
    for (name, hosts) in sites {
        match ca.issue(hosts, LOCAL_LEAF_VALIDITY) {
            Ok(cert) => {
                store.set_certificate(name, cert);
            }
            Err(e) => warn!(site = %name, error = %e, "cannot re-issue local certificate"),
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    reason = "tests write their fixtures and wait from outside the served path"
)]
mod tests;
