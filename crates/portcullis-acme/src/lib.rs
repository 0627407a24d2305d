//! Portcullis ACME: certificates for `tls: acme` sites, from account creation through
//! challenges answered by the gateway's own listeners to renewal, with durable storage.
//!
//! The manager only *publishes*: certificates into the [`portcullis_tls::CertStore`] and
//! challenge answers into [`portcullis_tls::Challenges`]; the proxy reads both.

mod account;
mod error;
mod fleet;
mod http;
mod issue;
mod manager;
mod schedule;
mod site;
mod storage;

pub use error::{AcmeError, Step};
pub use fleet::{Answer, Fleet, FleetFuture, History, OrderRecord, Shared};
pub use manager::{AcmeManager, AcmeStats, Issued};
pub use site::AcmeSite;
pub use storage::{SiteStatus, Storage, StorageError, StoredCert, from_unix, parse_pem_pair, unix};
