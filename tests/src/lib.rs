//! Test harness for Portcullis: a test CA, origins on 127.0.0.1:0 (HTTP/1.1, h2, TLS,
//! mTLS, WebSocket), the real gateway run in-process from a YAML config, a TLS client with
//! control over SNI and ALPN, a gRPC service and client (h2c and TLS origins), and a runner
//! for the gateway as a separate process; for adversarial tests, an origin that records the
//! exact bytes it receives and clients that write exact HTTP/1.1 bytes and HTTP/2 frames;
//! for Kubernetes, a fake API server held to the real kubectl (`kube_api`); for clustering,
//! etcd on loopback (`etcd`, one member or three), a TCP proxy that partitions and spreads
//! connections round-robin (`tcp_proxy`), and a counting ACME proxy in front of pebble
//! (`acme_proxy`); for what a user's browser shows, headless Chromium over DevTools
//! (`chromium`).
//! The end-to-end suites (`tests/e2e/main.rs`) are one test binary built on these; a helper two
//! suites need lives here, once.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod acme_proxy;
#[cfg(test)]
mod architecture;
mod ca;
pub mod chromium;
mod client;
pub mod dns;
pub mod doctor;
pub mod etcd;
mod gateway;
pub mod grpc;
mod kube_api;
pub mod logs;
mod origin;
mod pebble;
pub mod plain;
pub mod ports;
mod process;
pub mod raw_client;
mod raw_origin;
pub mod replica;
pub mod scrape;
pub mod tcp_proxy;
pub mod wait;

pub use ca::{Leaf, TestCa};
pub use client::{
    ClientBody, Conn, Resp, TestClient, alert_received, bytes, collect, connect_from, empty,
};
pub use gateway::{GatewayBuilder, TestGateway};
pub use kube_api::{ApiCall, ApiError, FakeApiOptions, FakeApiServer};
pub use origin::{OriginBody, Seen, TestOrigin, closed_port};
pub use pebble::{Pebble, PebbleOptions};
pub use process::GatewayProcess;
pub use raw_client::{H2Outcome, RawH1, RawH2, RawResponse};
pub use raw_origin::{RawOrigin, RawRequest, head_lines};
pub use wait::{within, within_for};

/// Installs the crypto provider and a log subscriber once per test binary.
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        portcullis_tls::install_default_provider();
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(logs::Capture)
            .try_init();
    });
}
