//! The store on the Kubernetes API (`store: kubernetes`): every key a Secret in the cluster
//! namespace, the issuer's election a Lease, each replica's report a Lease of its own.
//!
//! # Layout
//! - A key is the Secret `portcullis-store-<first 20 hex digits of SHA-256(key)>`, type
//!   `Opaque`, labelled [`MANAGED_BY_LABEL`]`=portcullis` and [`STORE_LABEL`]`=v1`,
//!   annotated with the key ([`KEY_ANNOTATION`]) and the fencing token of the leadership
//!   that wrote it ([`TOKEN_ANNOTATION`]); the value is `data.value`. A labelled Secret
//!   without those annotations is ignored (logged once).
//! - The issuer's Lease is [`ISSUER_LEASE`]; its `leaseTransitions` is the fencing token.
//! - Replica `n` reports in the Lease `portcullis-node-<hash of n>` (label
//!   [`NODE_LABEL`]`=v1`), the value base64 in [`VALUE_ANNOTATION`]; it counts as alive
//!   while its `renewTime + leaseDurationSeconds` is in the future.
//!
//! Sizes are Kubernetes': a value at most about 1 MiB (a Secret), a report at most about
//! 190 KiB (base64 in an annotation; a Lease's annotations hold 256 KiB in all).
//!
//! # Revisions
//! A revision is the object's `resourceVersion` read as an integer. Kubernetes calls it
//! opaque, but every real API server takes it from etcd's revision (one counter for all
//! objects, only growing), as the harness's fake API server does; a `resourceVersion`
//! that is not a number is refused ([`StoreError::Refused`]) rather than guessed at.
//!
//! # Fencing
//! Kubernetes has no transaction across two objects, so a fenced write is: check the
//! Lease (held by this node with the token presented, and renewed within the step-down
//! deadline by our own clock), read the Secret (refused if it carries a newer token), then
//! write with the `resourceVersion` read as a precondition (a 409 reads and checks again).
//! A write that was checked just before another replica took over can still land; the
//! timing argument of client-go's election (the new leader waits a whole lease, the old
//! one stops after two thirds of it) keeps that window closed while clocks run at about
//! the same rate, and the token on every record lets readers discard a stale one.

mod elect;
mod nodes;
mod watch;
mod write;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ListParams};
use tokio::time::Instant;
use tracing::warn;

use crate::store::{BoxFuture, ChangeStream, Entry, Leadership, Listing, Store, StoreError};

/// The label on everything Portcullis creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Marks the Secrets that hold the store's keys (value `v1`, the layout's version).
pub const STORE_LABEL: &str = "portcullis.dev/store";
/// Marks the Leases that hold the replicas' reports (value `v1`).
pub const NODE_LABEL: &str = "portcullis.dev/store-node";
/// The key a Secret holds.
pub const KEY_ANNOTATION: &str = "portcullis.dev/store-key";
/// The fencing token of the leadership that wrote a Secret.
pub const TOKEN_ANNOTATION: &str = "portcullis.dev/store-token";
/// A replica's report, base64, on its Lease.
pub const VALUE_ANNOTATION: &str = "portcullis.dev/store-value";
/// The replica a report Lease belongs to.
pub const NODE_ANNOTATION: &str = "portcullis.dev/store-node";
/// The Lease of the issuer's election.
pub const ISSUER_LEASE: &str = "portcullis-issuer";

const SECRET_PREFIX: &str = "portcullis-store-";
const NODE_LEASE_PREFIX: &str = "portcullis-node-";
const SELECTOR: &str = "app.kubernetes.io/managed-by=portcullis,portcullis.dev/store=v1";
const NODE_SELECTOR: &str = "app.kubernetes.io/managed-by=portcullis,portcullis.dev/store-node=v1";
/// Every call to the API server is bounded by this.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The [`Store`] on the Kubernetes API. See the module docs for the layout.
pub struct KubeStore {
    client: Client,
    namespace: String,
    node: String,
    /// How long a replica's report outlives its last heartbeat.
    lease: Duration,
    /// The leadership the campaign holds now, and when its last renewal was sent.
    held: Mutex<Option<Held>>,
    /// Secrets already reported as unreadable, so each is logged once.
    logged: Mutex<HashSet<String>>,
}

/// The leadership in force on this replica, as its campaign last renewed it.
#[derive(Debug, Clone, Copy)]
struct Held {
    token: i64,
    /// When the last successful renewal was sent.
    renewed: Instant,
    /// How long after `renewed` the leadership is given up without another renewal.
    deadline: Duration,
}

impl Held {
    fn in_force(&self) -> bool {
        self.renewed.elapsed() < self.deadline
    }
}

impl KubeStore {
    /// A store in `namespace`, as replica `node`; reports from [`Store::heartbeat`] live
    /// for `lease` after each call (the cluster's lease, the same one given to
    /// [`Store::campaign`]). No request is made until the store is used.
    pub fn new(client: Client, namespace: &str, node: &str, lease: Duration) -> Arc<Self> {
        Arc::new(Self {
            client,
            namespace: namespace.to_owned(),
            node: node.to_owned(),
            lease,
            held: Mutex::new(None),
            logged: Mutex::new(HashSet::new()),
        })
    }

    /// The namespace the store's objects live in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn held(&self) -> Option<Held> {
        *self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_held(&self, held: Option<Held>) {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = held;
    }

    /// The entry `secret` holds, or `None` (logged once) when it is not one of ours.
    fn entry(&self, secret: &Secret) -> Result<Option<Entry>, StoreError> {
        match parse_secret(secret) {
            Ok(entry) => Ok(Some(entry)),
            Err(Unreadable::Revision(rv)) => Err(StoreError::Refused(format!(
                "secret {}: resourceVersion {rv:?} is not a number",
                secret.metadata.name.as_deref().unwrap_or_default()
            ))),
            Err(Unreadable::Annotations) => {
                let name = secret.metadata.name.clone().unwrap_or_default();
                let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
                if logged.insert(name.clone()) {
                    warn!(secret = %name, namespace = %self.namespace, "secret labelled as the store's has no {KEY_ANNOTATION} or {TOKEN_ANNOTATION} annotation; ignoring it");
                }
                Ok(None)
            }
        }
    }
}

/// Why a labelled Secret holds no entry.
enum Unreadable {
    Annotations,
    Revision(String),
}

fn parse_secret(secret: &Secret) -> Result<Entry, Unreadable> {
    let annotations = secret.metadata.annotations.as_ref();
    let key = annotations
        .and_then(|a| a.get(KEY_ANNOTATION))
        .ok_or(Unreadable::Annotations)?;
    let token = annotations
        .and_then(|a| a.get(TOKEN_ANNOTATION))
        .and_then(|t| t.parse::<i64>().ok())
        .ok_or(Unreadable::Annotations)?;
    let rv = secret.metadata.resource_version.clone().unwrap_or_default();
    let revision = rv.parse::<i64>().map_err(|_| Unreadable::Revision(rv))?;
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get("value"))
        .map(|v| v.0.clone())
        .unwrap_or_default();
    Ok(Entry {
        key: key.clone(),
        value,
        revision,
        token: Some(token),
    })
}

/// The name of the Secret holding `key`.
pub(crate) fn secret_name(key: &str) -> String {
    format!("{SECRET_PREFIX}{}", short_hash(key))
}

/// The name of the Lease holding `node`'s report.
pub(crate) fn node_lease_name(node: &str) -> String {
    format!("{NODE_LEASE_PREFIX}{}", short_hash(node))
}

/// The first 20 hex digits of SHA-256: names that fit Kubernetes' rules whatever the key.
fn short_hash(s: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes());
    digest.as_ref()[..10]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn labels(extra: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), "portcullis".to_owned()),
        (extra.to_owned(), "v1".to_owned()),
    ])
}

fn parse_revision(rv: Option<&str>, what: &str) -> Result<i64, StoreError> {
    let rv = rv.unwrap_or_default();
    rv.parse::<i64>()
        .map_err(|_| StoreError::Refused(format!("{what}: resourceVersion {rv:?} is not a number")))
}

/// Runs one API call within [`CALL_TIMEOUT`]; running out of time is a client error like a
/// lost connection.
async fn bounded<T>(call: impl Future<Output = kube::Result<T>>) -> kube::Result<T> {
    bounded_until(Instant::now() + CALL_TIMEOUT, call).await
}

/// [`bounded`] to an earlier deadline too.
async fn bounded_until<T>(
    deadline: Instant,
    call: impl Future<Output = kube::Result<T>>,
) -> kube::Result<T> {
    let deadline = deadline.min(Instant::now() + CALL_TIMEOUT);
    tokio::time::timeout_at(deadline, call)
        .await
        .unwrap_or_else(|_| {
            Err(kube::Error::Service(
                "the API server did not answer in time".into(),
            ))
        })
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// What a failed call to the API server means to the caller. A 403 names the verb and
/// resource, so that a missing RBAC rule is plain to see.
fn store_error(e: kube::Error, verb: &str, resource: &str, namespace: &str) -> StoreError {
    match e {
        kube::Error::Api(s) if s.code == 403 => StoreError::Refused(format!(
            "forbidden: cannot {verb} {resource} in namespace {namespace} (the service account needs `{verb}` on {resource} there: see the RBAC of deploy/): {}",
            s.message
        )),
        kube::Error::Api(s) if s.code == 429 || s.code >= 500 => StoreError::Unavailable(format!(
            "{verb} {resource}: {} {}: {}",
            s.code, s.reason, s.message
        )),
        kube::Error::Api(s) => StoreError::Refused(format!(
            "{verb} {resource}: {} {}: {}",
            s.code, s.reason, s.message
        )),
        other => StoreError::Unavailable(format!("{verb} {resource}: {other}")),
    }
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

fn encode_base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl Store for KubeStore {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn node(&self) -> &str {
        &self.node
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>, StoreError>> {
        Box::pin(async move {
            let secret = bounded(self.secrets().get_opt(&secret_name(key)))
                .await
                .map_err(|e| store_error(e, "get", "secrets", &self.namespace))?;
            // A hash collision would be a different key: absent as far as `key` goes.
            Ok(match secret {
                Some(s) => self.entry(&s)?.filter(|e| e.key == key),
                None => None,
            })
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Listing, StoreError>> {
        Box::pin(async move {
            let list = bounded(self.secrets().list(&ListParams::default().labels(SELECTOR)))
                .await
                .map_err(|e| store_error(e, "list", "secrets", &self.namespace))?;
            let revision = parse_revision(list.metadata.resource_version.as_deref(), "list")?;
            let mut entries = Vec::new();
            for secret in &list.items {
                if let Some(entry) = self.entry(secret)?
                    && entry.key.starts_with(prefix)
                {
                    entries.push(entry);
                }
            }
            entries.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(Listing { entries, revision })
        })
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        from: i64,
    ) -> BoxFuture<'a, Result<ChangeStream, StoreError>> {
        Box::pin(watch::open(
            self.secrets(),
            self.namespace.clone(),
            prefix.to_owned(),
            from,
        ))
    }

    fn campaign(
        self: Arc<Self>,
        lease: Duration,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::sync::watch::Receiver<Option<Leadership>> {
        elect::campaign(self, lease, stop)
    }

    fn leader(&self) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        Box::pin(elect::leader(self))
    }

    fn put_fenced<'a>(
        &'a self,
        lead: &'a Leadership,
        key: &'a str,
        value: Vec<u8>,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(write::put_fenced(self, lead, key, value))
    }

    fn delete_fenced<'a>(
        &'a self,
        lead: &'a Leadership,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(write::delete_fenced(self, lead, key))
    }

    fn heartbeat(&self, value: Vec<u8>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(nodes::heartbeat(self, value))
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<Entry>, StoreError>> {
        Box::pin(nodes::nodes(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_and_stable_whatever_the_key() {
        let name = secret_name("certs/Shop Ü/../*");
        assert_eq!(name.len(), SECRET_PREFIX.len() + 20);
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert_eq!(name, secret_name("certs/Shop Ü/../*"));
        assert_ne!(name, secret_name("certs/shop"));
        // SHA-256("") starts e3b0c44298fc1c149afb.
        assert_eq!(secret_name(""), "portcullis-store-e3b0c44298fc1c149afb");
    }

    #[test]
    fn base64_round_trips() {
        let bytes = vec![0, 1, 2, 255, b'a'];
        assert_eq!(decode_base64(&encode_base64(&bytes)), Some(bytes));
    }
}
