//! `portcullis doctor` run as a process against situations built for real, one module per
//! family of checks; the runner and the report's readers are the harness's
//! (`portcullis_tests::doctor`).
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(
    clippy::disallowed_methods,
    reason = "drives the binary as a process: blocking on it is what it means"
)]

#[path = "doctor/cli.rs"]
mod cli;
#[path = "doctor/host.rs"]
mod host;
#[path = "doctor/tls.rs"]
mod tls;
#[path = "doctor/web.rs"]
mod web;
