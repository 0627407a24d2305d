//! What the manager needs from the other replicas when certificates are shared
//! (`cluster:`): who may order, what they already hold, where an order in progress is
//! recorded, how challenge answers reach every replica, and where the result goes.
//!
//! Without a fleet the manager works alone on its `storage` folder. With one, only the
//! replica the fleet names issuer orders; before ordering it asks the fleet for a newer
//! certificate another replica may just have stored; it records each order (URL and CSR
//! key) before finalising, so a new issuer resumes it instead of ordering again; and it
//! keeps each site's failures and recent orders in the fleet, so backoff survives restarts
//! and failovers. Every write may be refused when this replica is no longer the issuer.

use std::future::Future;
use std::pin::Pin;

use instant_acme::AccountCredentials;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::AcmeError;
use crate::site::AcmeSite;

/// A boxed future, so that [`Fleet`] can be used as `dyn Fleet`.
pub type FleetFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An order in progress, as recorded before it is finalised.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    /// The names ordered.
    pub names: Vec<String>,
    /// The order's URL at the CA.
    pub url: String,
    /// The key the CSR is made with, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for OrderRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderRecord")
            .field("names", &self.names)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// A site's history, shared so that backoff and the count of orders survive failovers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Failures since the last success.
    pub failures: u32,
    /// No order before this time (Unix seconds).
    pub next_attempt: Option<u64>,
    /// The last failure.
    pub last_error: Option<String>,
    /// When orders were placed recently (Unix seconds, oldest first, the last day's).
    pub orders: Vec<u64>,
    /// Last success (Unix seconds).
    pub last_success: Option<u64>,
}

/// A challenge answer every replica must serve while the CA validates.
#[derive(Clone, PartialEq, Eq)]
pub enum Answer {
    /// HTTP-01: the token and its key authorization.
    Http01 {
        /// The token (the last path segment).
        token: String,
        /// What `/.well-known/acme-challenge/<token>` answers.
        key_authorization: String,
    },
    /// TLS-ALPN-01: the name and the SHA-256 digest of the key authorization.
    TlsAlpn01 {
        /// The name validated.
        name: String,
        /// The digest the `acmeIdentifier` extension carries.
        digest: Vec<u8>,
    },
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http01 { token, .. } => write!(f, "Http01({token})"),
            Self::TlsAlpn01 { name, .. } => write!(f, "TlsAlpn01({name})"),
        }
    }
}

/// A certificate the fleet holds for a site.
#[derive(Clone)]
pub struct Shared {
    /// The chain, leaf first, PEM.
    pub chain_pem: String,
    /// Its key, PEM.
    pub key_pem: String,
}

/// The other replicas, as the manager sees them. Every method is bounded in time.
pub trait Fleet: Send + Sync + 'static {
    /// True while this replica is the issuer (the only one that orders).
    fn issuer(&self) -> watch::Receiver<bool>;

    /// The certificate the fleet holds for `site`, read from the store itself (not a
    /// cache): asked right before ordering, since another replica may just have finished.
    fn latest<'a>(&'a self, site: &'a str) -> FleetFuture<'a, Result<Option<Shared>, AcmeError>>;

    /// Stores a certificate just issued for `site`, for every replica.
    fn store_certificate<'a>(
        &'a self,
        site: &'a AcmeSite,
        cert: Shared,
    ) -> FleetFuture<'a, Result<(), AcmeError>>;

    /// The order in progress for `site`, if one was recorded.
    fn load_order<'a>(
        &'a self,
        site: &'a str,
    ) -> FleetFuture<'a, Result<Option<OrderRecord>, AcmeError>>;

    /// Records the order in progress for `site` (before it is finalised).
    fn save_order<'a>(
        &'a self,
        site: &'a str,
        order: &'a OrderRecord,
    ) -> FleetFuture<'a, Result<(), AcmeError>>;

    /// Forgets the order for `site` (it ended, well or badly).
    fn clear_order<'a>(&'a self, site: &'a str) -> FleetFuture<'a, ()>;

    /// `site`'s history as the fleet remembers it.
    fn load_history<'a>(
        &'a self,
        site: &'a str,
    ) -> FleetFuture<'a, Result<Option<History>, AcmeError>>;

    /// Records `site`'s history.
    fn save_history<'a>(
        &'a self,
        site: &'a str,
        history: &'a History,
    ) -> FleetFuture<'a, Result<(), AcmeError>>;

    /// Publishes challenge answers to every replica; returns once every live replica
    /// serves them, or the fleet's timeout passed.
    fn publish_answers<'a>(
        &'a self,
        answers: &'a [Answer],
    ) -> FleetFuture<'a, Result<(), AcmeError>>;

    /// Withdraws answers published before (best effort).
    fn withdraw_answers<'a>(&'a self, answers: &'a [Answer]) -> FleetFuture<'a, ()>;

    /// The fleet's ACME account, if one was stored.
    fn load_account(&self) -> FleetFuture<'_, Result<Option<AccountCredentials>, AcmeError>>;

    /// Stores the fleet's ACME account.
    fn save_account<'a>(
        &'a self,
        credentials: &'a AccountCredentials,
    ) -> FleetFuture<'a, Result<(), AcmeError>>;
}
