//! The end-to-end suites: the real gateway, in process, from a real YAML file, against
//! origins and clients on loopback. One test binary (one link of the gateway), one module
//! per concern; what two modules need lives in the harness crate (`portcullis_tests`).
//!
//! Every test shares the process with the others, two or more at a time: no fixed ports,
//! no environment variables set, and a test that reads captured logs picks its lines by
//! something only it has (`portcullis_tests::logs`).
#![allow(clippy::unwrap_used)]

mod acme;
mod acme_renewal_info;
mod admin;
mod adversarial;
mod balancing;
mod browser;
mod cluster;
mod failures;
mod grpc;
mod ingress;
mod kubernetes;
mod limits;
mod metrics;
mod mixed_content;
mod origins;
mod protocols;
mod proxy_protocol;
mod reload;
mod routing;
mod sni;
