//! The `portcullis` binary's library half: from a configuration to a running gateway, the
//! admin listener, and the pieces of the command line that tests drive in-process.
//!
//! The modules form floors, each using only those below it (`docs/architecture.md`):
//! `app` → `controller` → `prepare` → `admin`, with `telemetry`, `runtime`, `logging` and
//! the commands' modules beside them.

mod admin;
mod app;
mod certs_cmd;
mod cluster;
mod controller;
mod doctor;
mod ingress_cmd;
mod logging;
mod prepare;
mod proxy_cmd;
mod reload_cmd;
mod runtime;
mod summary;
mod telemetry;

pub use app::App;
pub use certs_cmd::render as render_certs;
pub use controller::{Controller, ReloadSummary};
pub use doctor::{
    DoctorArgs, DoctorError, Entry as DoctorEntry, Finding, Report as DoctorReport, Status,
    run as doctor,
};
pub use ingress_cmd::{
    DefaultBackend, Ingress, IngressArgs, IngressError, KubernetesArgs, KubernetesCheck,
    check_kubernetes,
};
pub use logging::{LogFormat, init as init_logging};
pub use prepare::{ApplyError, StartError, check};
pub use proxy_cmd::{ProxyArgs, config as proxy_config};
pub use reload_cmd::{AdminRequestError, AdminTarget, ReloadOutcome, admin_target, request_reload};
pub use runtime::{RuntimeError, build as build_runtime};
pub use summary::render as render_summary;
