//! Portcullis as a Kubernetes ingress controller: the Kubernetes API is a second source of the
//! same [`Config`](portcullis_config::Config) a file gives, applied through the same path.
//!
//! - [`Snapshot`]: every watched object, as read from the API server (untrusted input).
//! - [`translate`]: a pure function from a base config and a snapshot to a `Config` and the
//!   problems found, each naming the object and the field (`ingress default/shop:
//!   rules[0].http.paths[1].backend.service.port: ...`). A problem never stops the other
//!   Ingresses from being served.
//!
//! - [`connect`]: a client from `--kubeconfig`, `KUBECONFIG` or the pod's service account.
//! - [`Source`]: watchers and reflector stores for every kind translation reads, publishing
//!   a complete [`Snapshot`] after each settled burst of changes, with its health
//!   ([`SourceStatus`]); [`list_once`] for `check --kubernetes`.
//!
//! This crate depends on `portcullis-config` only, never on the proxy.

mod client;
mod snapshot;
mod source;
mod translate;

pub use client::{ClientError, FALLBACK_NAMESPACE, SERVICE_ACCOUNT_DIR, connect, own_namespace};
pub use snapshot::{ObjectKey, Snapshot};
pub use source::{
    Debounce, ListError, Source, SourceConfig, SourceStatus, WATCH_TIMEOUT, list_once,
};
pub use translate::{DEFAULT_SITE_HOST, K8sProblem, Options, Translated, translate};
