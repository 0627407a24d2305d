//! Portcullis data path: listeners, TLS at the edge, the routing table, and the origin
//! client.
//!
//! A [`Router`] is built from a [`portcullis_config::Config`] and swapped whole into a
//! running [`Gateway`]; certificates come from a [`portcullis_tls::CertStore`] that other
//! parts (files, the local CA, ACME) publish into.

mod body;
mod conn;
mod connector;
mod drain;
mod edge;
mod error;
mod forward;
#[doc(hidden)]
pub mod fuzzing;
mod grpc;
mod h1;
mod headers;
pub mod metrics;
mod proxy_protocol;
mod redirect;
mod replay;
mod router;
mod server;
mod tls_accept;
mod upstream;

pub use body::{ACCESS_LOG_TARGET, ProxyBody};
pub use error::{BindError, OriginError, OriginFailureKind};
pub use metrics::ProxyMetrics;
pub use proxy_protocol::{
    Parsed, ProxyAddrs, ProxyHeader, ProxyProtocolError, encode_v1, encode_v2, parse, read_header,
};
pub use router::Router;
pub use server::{Gateway, ListenerKind, Listeners, bind};
pub use upstream::Upstream;
