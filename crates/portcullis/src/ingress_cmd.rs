//! `portcullis ingress`: the gateway as a Kubernetes ingress controller, and
//! `portcullis check --kubernetes`.
//!
//! Kubernetes is a second source of the same `Config`: the gateway starts from the base
//! config (listeners, admin, limits, ACME settings; no sites) through the same start path
//! as `run`, and each snapshot the watchers publish (`portcullis_k8s::Source`) is translated
//! and handed to `Controller::apply`, the one apply path. `/readyz` is 503 until the first
//! sync is in force; afterwards the last good routes keep serving whatever the API server
//! does, and readiness says so in its body.

mod metrics;
mod sync;
mod writers;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_config::{Config, Problem};
use portcullis_k8s::{ObjectKey, Options, PublishTarget, Source, SourceConfig};

use crate::app::App;
use crate::prepare::{StartError, check, off_the_workers};
use crate::summary;
use metrics::K8sMetrics;
use sync::{SyncState, Syncer};
use writers::{WriterSettings, Writers};

/// The flags `ingress` and `check --kubernetes` share: where the cluster is and what of
/// it is ours.
#[derive(Debug, Clone, clap::Args)]
pub struct KubernetesArgs {
    /// A kubeconfig file (default: the files in KUBECONFIG, else the pod's service
    /// account).
    #[arg(long, env = "PORTCULLIS_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// IngressClasses whose `spec.controller` is this are ours.
    #[arg(
        long,
        env = "PORTCULLIS_CONTROLLER_NAME",
        default_value = "portcullis.dev/ingress-controller"
    )]
    pub controller_name: String,
    /// The class the legacy `kubernetes.io/ingress.class` annotation must name, and the
    /// one class-less Ingresses belong to when it is the default class.
    #[arg(long, env = "PORTCULLIS_INGRESS_CLASS", default_value = "portcullis")]
    pub ingress_class: String,
    /// Watch only this namespace (repeatable; in the environment, comma-separated).
    /// Default: every namespace.
    #[arg(
        long = "watch-namespace",
        env = "PORTCULLIS_WATCH_NAMESPACE",
        value_delimiter = ','
    )]
    pub watch_namespaces: Vec<String>,
    /// Serve Ingresses with no class even when no class of ours is the cluster default
    /// (in the environment: true/false, 1/0, yes/no).
    #[arg(long, env = "PORTCULLIS_WATCH_INGRESS_WITHOUT_CLASS", value_parser = clap::builder::BoolishValueParser::new())]
    pub watch_ingress_without_class: bool,
    /// The `kubernetes.io/tls` Secret (NS/NAME) served for names no Ingress claims.
    #[arg(long, env = "PORTCULLIS_DEFAULT_CERTIFICATE", value_parser = object_key)]
    pub default_certificate: Option<ObjectKey>,
    /// The Service (NS/NAME:PORT, a port number or name) for requests no rule matches.
    #[arg(long, env = "PORTCULLIS_DEFAULT_BACKEND", value_parser = default_backend)]
    pub default_backend: Option<DefaultBackend>,
    /// Every TLS host gets an ACME certificate, as if annotated `portcullis.dev/acme: "true"`.
    #[arg(long, env = "PORTCULLIS_ACME_ALL_HOSTS", value_parser = clap::builder::BoolishValueParser::new())]
    pub acme_all_hosts: bool,
}

/// `--default-backend NS/NAME:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultBackend {
    /// The Service.
    pub service: ObjectKey,
    /// Its port, by number or name.
    pub port: String,
}

impl KubernetesArgs {
    /// Translation's options.
    #[allow(
        clippy::needless_update,
        reason = "the options may grow settings with defaults that no flag sets yet"
    )]
    pub fn options(&self) -> Options {
        Options {
            controller_name: self.controller_name.clone(),
            ingress_class: self.ingress_class.clone(),
            watch_ingress_without_class: self.watch_ingress_without_class,
            default_certificate: self.default_certificate.clone(),
            default_backend: self
                .default_backend
                .as_ref()
                .map(|b| (b.service.clone(), b.port.clone())),
            acme_all: self.acme_all_hosts,
            ..Options::default()
        }
    }
}

fn object_key(text: &str) -> Result<ObjectKey, String> {
    ObjectKey::parse(text).ok_or_else(|| format!("`{text}` is not NAMESPACE/NAME"))
}

fn default_backend(text: &str) -> Result<DefaultBackend, String> {
    let bad = || format!("`{text}` is not NAMESPACE/NAME:PORT");
    let (service, port) = text.rsplit_once(':').ok_or_else(bad)?;
    if port.is_empty() {
        return Err(bad());
    }
    Ok(DefaultBackend {
        service: ObjectKey::parse(service).ok_or_else(bad)?,
        port: port.to_owned(),
    })
}

/// `portcullis ingress`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct IngressArgs {
    /// The base config: listeners, admin, limits, ACME settings, defaults; its `sites`
    /// must be empty or absent (default: every default).
    #[arg(long, short, env = "PORTCULLIS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the cluster is and what of it is ours.
    #[command(flatten)]
    pub kubernetes: KubernetesArgs,
    /// The Service (NS/NAME) whose load balancer addresses the leader writes into each
    /// Ingress's status.
    #[arg(
        long,
        env = "PORTCULLIS_PUBLISH_SERVICE",
        value_parser = object_key,
        conflicts_with = "publish_address"
    )]
    pub publish_service: Option<ObjectKey>,
    /// The address (an IP, or a host name) the leader writes into each Ingress's status.
    #[arg(long, env = "PORTCULLIS_PUBLISH_ADDRESS")]
    pub publish_address: Option<String>,
    /// The name of the Lease replicas elect their leader with.
    #[arg(
        long,
        env = "PORTCULLIS_ELECTION_ID",
        default_value = "portcullis-leader"
    )]
    pub election_id: String,
    /// The namespace of the Lease (default: the pod's own, else `portcullis`).
    #[arg(long, env = "PORTCULLIS_NAMESPACE")]
    pub namespace: Option<String>,
    /// How long a leader's Lease lasts after its last renewal: how long the replicas wait
    /// before taking over from a leader that died without releasing it.
    #[arg(long, env = "PORTCULLIS_ELECTION_LEASE_DURATION", default_value = "15s", value_parser = duration)]
    pub election_lease_duration: Duration,
    /// The leader steps down when it could not renew for this long (shorter than the lease).
    #[arg(long, env = "PORTCULLIS_ELECTION_RENEW_DEADLINE", default_value = "10s", value_parser = duration)]
    pub election_renew_deadline: Duration,
    /// How often the Lease is tried (to take it) or renewed (to keep it).
    #[arg(long, env = "PORTCULLIS_ELECTION_RETRY_PERIOD", default_value = "2s", value_parser = duration)]
    pub election_retry_period: Duration,
}

fn duration(text: &str) -> Result<Duration, String> {
    portcullis_config::parse_duration(text).map_err(|e| e.to_string())
}

impl IngressArgs {
    /// The election's timings, checked as client-go checks them: the retry period shorter
    /// than the renew deadline, and that shorter than the lease.
    fn lease_timings(&self) -> Result<portcullis_k8s::LeaseTimings, String> {
        let (lease, renew, retry) = (
            self.election_lease_duration,
            self.election_renew_deadline,
            self.election_retry_period,
        );
        if retry.is_zero() || renew <= retry || lease <= renew || lease < Duration::from_secs(1) {
            return Err(format!(
                "--election-retry-period ({retry:?}) < --election-renew-deadline ({renew:?}) < --election-lease-duration ({lease:?}, at least 1s) is required"
            ));
        }
        Ok(portcullis_k8s::LeaseTimings {
            lease_duration: lease,
            renew_deadline: renew,
            retry_period: retry,
        })
    }
}

/// Why `portcullis ingress` or `check --kubernetes` could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// The base config is invalid.
    #[error("invalid base configuration")]
    Config(Vec<Problem>),
    /// No client for the API server.
    #[error(transparent)]
    Client(#[from] portcullis_k8s::ClientError),
    /// The gateway could not start (a listener, the admin socket).
    #[error(transparent)]
    Start(#[from] StartError),
    /// The cluster could not be read (`check --kubernetes`).
    #[error(transparent)]
    List(#[from] portcullis_k8s::ListError),
    /// The metrics could not be registered.
    #[error("metrics setup failed: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A flag's value contradicts another's.
    #[error("{0}")]
    Flags(String),
}

impl IngressError {
    /// Every problem of an invalid base config (or start-up), named by key.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            Self::Config(p) => p.clone(),
            Self::Start(e) => e.problems(),
            other => vec![Problem::new("", other.to_string())],
        }
    }
}

/// The base config: the file, or every default.
fn base(path: Option<&Path>) -> Result<Config, IngressError> {
    let loaded = match path {
        Some(p) => off_the_workers(|| portcullis_config::load_base(p)),
        None => portcullis_config::parse_base("", Path::new(".")),
    };
    loaded.map_err(|e| IngressError::Config(e.problems()))
}

/// A running ingress controller: the gateway serving, the watchers started.
pub struct Ingress {
    app: App,
    source: Source,
    syncer: Syncer,
    writers: Arc<Writers>,
}

impl Ingress {
    /// Reads the base config, connects to the API server, starts the gateway with no
    /// sites (listeners bound, `/readyz` 503) and the watchers.
    pub async fn start(args: IngressArgs) -> Result<Self, IngressError> {
        let timings = args.lease_timings().map_err(IngressError::Flags)?;
        let base = base(args.config.as_deref())?;
        let client = portcullis_k8s::connect(args.kubernetes.kubeconfig.as_deref()).await?;
        let state = Arc::new(SyncState::default());
        let ready = state.clone();
        let app = App::start_with_source(
            base.clone(),
            Arc::new(move || ready.readiness()),
            client.clone(),
        )
        .await?;
        let metrics = K8sMetrics::register(app.controller().registry())?;
        metrics.api_up(false);
        let source = Source::start(
            client.clone(),
            SourceConfig {
                namespaces: args.kubernetes.watch_namespaces.clone(),
                ..SourceConfig::default()
            },
        );
        let publish = match (&args.publish_service, &args.publish_address) {
            (Some(service), _) => Some(PublishTarget::Service(service.clone())),
            (None, Some(address)) => Some(PublishTarget::addresses(address)),
            (None, None) => None,
        };
        let writers = Arc::new(Writers::start(
            client,
            WriterSettings {
                namespace: args
                    .namespace
                    .clone()
                    .unwrap_or_else(portcullis_k8s::own_namespace),
                election_id: args.election_id.clone(),
                identity: portcullis_k8s::default_identity(),
                publish,
                timings,
            },
        ));
        let syncer = Syncer {
            controller: app.controller().clone(),
            base,
            options: args.kubernetes.options(),
            state,
            metrics,
            writers: writers.clone(),
            secrets: Mutex::default(),
        };
        Ok(Self {
            app,
            source,
            syncer,
            writers,
        })
    }

    /// Address of the HTTPS listener.
    pub fn https_addr(&self) -> SocketAddr {
        self.app.https_addr()
    }

    /// Address of the plain HTTP listener, if any.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.app.http_addr()
    }

    /// Address of the admin listener, if it listens on TCP.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.app.admin_addr()
    }

    /// Serves and syncs until `shutdown` completes; then stops syncing, clears the
    /// Ingress status and releases the Lease if leading, and drains as `run` does. True
    /// if every connection finished in time.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> bool {
        let Self {
            app,
            source,
            syncer,
            writers,
        } = self;
        let sync = tokio::spawn(syncer.run(source.snapshots(), source.status()));
        app.run(async move {
            shutdown.await;
            sync.abort();
            let _ = sync.await;
            drop(source);
            match Arc::try_unwrap(writers) {
                Ok(w) => w.stop().await,
                Err(_) => {
                    tracing::warn!("the writers are still in use; the Lease is left to expire")
                }
            }
        })
        .await
    }
}

/// What `check --kubernetes` found.
#[derive(Debug)]
pub struct KubernetesCheck {
    /// The summary, then every problem and unsupported annotation, one per line.
    pub output: String,
    /// Problems found (the exit status is non-zero when there are any).
    pub problems: usize,
}

/// Lists the cluster once, translates it onto the base config and reports as `check`
/// does for a file, plus every problem named by object and field.
pub async fn check_kubernetes(
    args: &KubernetesArgs,
    config: Option<&Path>,
) -> Result<KubernetesCheck, IngressError> {
    use std::fmt::Write;

    let base = base(config)?;
    let client = portcullis_k8s::connect(args.kubeconfig.as_deref()).await?;
    let snapshot = portcullis_k8s::list_once(&client, &args.watch_namespaces).await?;
    let options = args.options();
    let translated = off_the_workers(|| portcullis_k8s::translate(&base, &snapshot, &options));
    let mut output = String::new();
    let mut problems = translated.problems.len();
    match off_the_workers(|| check(&translated.config)) {
        Ok(certs) => {
            output.push_str(&summary::render(&translated.config, &certs));
            for w in &certs.warnings {
                let _ = writeln!(output, "warning: {w}");
            }
        }
        Err(found) => {
            for p in &found {
                let _ = writeln!(output, "error: {p}");
            }
            problems += found.len();
        }
    }
    for p in &translated.problems {
        let _ = writeln!(output, "{p}");
    }
    for (ingress, annotation) in &translated.unsupported_annotations {
        let _ = writeln!(
            output,
            "ingress {ingress}: annotation {annotation} is not supported (ignored)"
        );
    }
    let _ = writeln!(
        output,
        "kubernetes: {} ingress{} read, {} site{}, {problems} problem{}",
        snapshot.ingresses.len(),
        if snapshot.ingresses.len() == 1 {
            ""
        } else {
            "es"
        },
        translated.config.sites.len(),
        if translated.config.sites.len() == 1 {
            ""
        } else {
            "s"
        },
        if problems == 1 { "" } else { "s" },
    );
    Ok(KubernetesCheck { output, problems })
}
