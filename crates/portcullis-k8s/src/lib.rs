//! Portcullis as a Kubernetes ingress controller: the Kubernetes API is a second source of the
//! same [`Config`](portcullis_config::Config) a file gives, applied through the same path.
//!
//! - [`Snapshot`]: every watched object, as read from the API server (untrusted input).
//! - [`translate`]: a pure function from a base config and a snapshot to a `Config` and the
//!   problems found, each naming the object and the field (`ingress default/shop:
//!   rules[0].http.paths[1].backend.service.port: ...`). A problem never stops the other
//!   Ingresses from being served.
//!
//! This crate depends on `portcullis-config` only, never on the proxy.

mod rbac;
mod snapshot;
mod translate;

pub use rbac::{rbac_allows, rbac_allows_named};
pub use snapshot::{ObjectKey, Snapshot};
pub use translate::{DEFAULT_SITE_HOST, K8sProblem, Options, Translated, translate};
