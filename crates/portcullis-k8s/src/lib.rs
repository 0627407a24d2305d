//! Portcullis as a Kubernetes ingress controller: the Kubernetes API is a second source of the
//! same [`Config`](portcullis_config::Config) a file gives, applied through the same path.
//!
//! - [`Snapshot`]: every watched object, as read from the API server (untrusted input).
//! - [`translate`]: a pure function from a base config and a snapshot to a `Config` and the
//!   problems found, each naming the object and the field (`ingress default/shop:
//!   rules[0].http.paths[1].backend.service.port: ...`). A problem never stops the other
//!   Ingresses from being served.
//! - [`Elector`]: the Lease election; only the leader writes to the API server.
//! - [`StatusWriter`]: `status.loadBalancer.ingress` of our Ingresses.
//! - [`Recorder`]: Events for problems and issued certificates.
//! - [`AcmeSecrets`], [`write_certificate`], [`read_certificate`]: ACME certificates stored in
//!   (and read from) Secrets.
//! - [`connect`]: a client from `--kubeconfig`, `KUBECONFIG` or the pod's service account.
//! - [`Source`]: watchers and reflector stores for every kind translation reads, publishing
//!   a complete [`Snapshot`] after each settled burst of changes, with its health
//!   ([`SourceStatus`]); [`list_once`] for `check --kubernetes`.
//!
//! This crate depends on `portcullis-config` only, never on the proxy.

mod acme;
mod client;
mod events;
mod leader;
mod rbac;
mod snapshot;
mod source;
mod status;
mod translate;

pub use acme::{
    AcmeSecrets, AcmeSecretsHandle, CERT_MANAGER_ANNOTATIONS, HOSTS_ANNOTATION, IssuedCertificate,
    MANAGED_BY, MANAGED_BY_LABEL, NotOurs, SecretError, SecretWrite, TLS_SECRET_TYPE, ownership,
    read_certificate, write_certificate,
};
pub use client::{ClientError, FALLBACK_NAMESPACE, SERVICE_ACCOUNT_DIR, connect, own_namespace};
pub use events::{
    COMPONENT, EventType, REASON_CERTIFICATE_ISSUED, REASON_SECRET_INVALID, REASON_SECRET_NOT_OURS,
    REASON_TRANSLATION, Recorder,
};
pub use leader::{DEFAULT_ELECTION_ID, Elector, LeaseTimings, default_identity};
pub use rbac::{rbac_allows, rbac_allows_named};
pub use snapshot::{ObjectKey, Snapshot};
pub use source::{
    Debounce, ListError, Source, SourceConfig, SourceStatus, WATCH_TIMEOUT, list_once,
};
pub use status::{
    PublishTarget, StatusReport, StatusWriter, load_balancer_entry, service_addresses,
};
pub use translate::{
    DEFAULT_SITE_HOST, K8sProblem, Options, SecretCache, Translated, translate, translate_cached,
};
