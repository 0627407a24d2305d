//! Portcullis configuration: the YAML file, its validation, and the runtime model.
//!
//! [`load`] reads a file and returns a [`Config`] in which every value has been checked, or
//! every [`Problem`] found, each named by its key path (`sites[1].origin.mode: ...`).
#![allow(
    clippy::disallowed_methods,
    reason = "no async here: reading the files a config names is the crate's job, and its caller decides where that may block"
)]

mod error;
mod file;
mod host;
mod model;
mod pem;
mod units;
mod validate;

pub use error::{Error, Problem, Result, TokenError, ValueError};
pub use host::{HostMap, HostPattern, strip_port};
pub use ipnet::IpNet;
pub use model::{
    Access, Acme, Action, ActiveHealth, Admin, AdminListen, AdminToken, Balance, CertKey,
    Challenge, Cluster, ClusterStore, Config, Eab, EncryptionKey, EtcdStore, EtcdTls, HashKey,
    Health, Hsts, KubernetesStore, Limits, Listen, MixedContent, Mode, Origin, OriginServer,
    OriginTimeouts, OriginTls, PassiveHealth, PathMatch, PlainHttp, ProxyProtocolVersion, Redirect,
    Respond, Retries, Route, Shutdown, Site, SiteTls, StickyCookie, TlsSettings, Transport,
    Upgrades, Verify, defaults,
};
pub use pem::FileStamp;
pub use units::{parse_duration, parse_size};
pub use validate::{load, load_base, load_reusing, parse, parse_addr, parse_base};

#[cfg(test)]
mod tests;
