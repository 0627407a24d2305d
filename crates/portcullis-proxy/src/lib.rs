//! Portcullis data path: listeners, TLS at the edge, the routing table, and the origin
//! client.
//!
//! A [`Router`] is built from a [`portcullis_config::Config`] and swapped whole into a
//! running [`Gateway`]; certificates come from a [`portcullis_tls::CertStore`] that other
//! parts (files, the local CA, ACME) publish into.
//!
//! The modules are floors, in the order a request travels, each using only those below it
//! (no import circle between top-level modules; `docs/architecture.md` maps each file):
//!
//! - `listener`: accept, PROXY header, TLS, the HTTP/1.1 and HTTP/2 connections;
//! - `request`: one request: site and route, forward, redirect, gRPC errors;
//! - `shared`: what every connection shares (router snapshot, certificates, caps);
//! - `answers`, `response`: the gateway's own responses, and the response body;
//! - `router`: the compiled routing table;
//! - `upstream`: balancer, retries, pools, origin clients, connector;
//! - leaves: `conn` (one client connection: info, clock, caps, supervisor), `io`,
//!   `headers`, `proxy_protocol`, `metrics`, `error`, `rewrite` (`mixed_content: rewrite`:
//!   the streaming HTML rewriter and its codecs).

mod answers;
mod conn;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod headers;
mod io;
mod listener;
pub mod metrics;
mod proxy_protocol;
mod request;
mod response;
mod rewrite;
mod router;
mod shared;
mod upstream;

pub use error::{BindError, OriginError, OriginFailureKind, UpstreamError};
pub use listener::{Gateway, ListenerKind, Listeners, bind};
pub use metrics::ProxyMetrics;
pub use proxy_protocol::{
    Parsed, ProxyAddrs, ProxyHeader, ProxyProtocolError, encode_v1, encode_v2, parse, read_header,
};
pub use response::{ACCESS_LOG_TARGET, ProxyBody};
#[doc(hidden)]
pub use rewrite::bench as rewrite_bench;
pub use router::Router;
pub use upstream::Upstream;
