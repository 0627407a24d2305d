//! Fenced writes: the Lease checked, the Secret read, then written with the
//! `resourceVersion` read as a precondition (see the module docs of `kube.rs`).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use tokio::time::Instant;
use tracing::debug;

use super::{
    ISSUER_LEASE, KEY_ANNOTATION, KubeStore, STORE_LABEL, TOKEN_ANNOTATION, bounded_until,
    is_status, labels, parse_revision, secret_name, store_error,
};
use crate::store::{Leadership, StoreError};

/// Reads and writes after a conflict: another writer between our read and our write.
const ATTEMPTS: usize = 3;

/// Until when `lead` may write: the end of its step-down deadline, if it is the leadership
/// this replica holds now. The Lease itself is checked too: it names this node and the
/// token.
async fn check_lease(store: &KubeStore, lead: &Leadership) -> Result<Instant, StoreError> {
    let held = store
        .held()
        .filter(|h| h.token == lead.token && lead.node == store.node && h.in_force())
        .ok_or(StoreError::Fenced)?;
    let until = held.renewed + held.deadline;
    let api: Api<Lease> = Api::namespaced(store.client.clone(), &store.namespace);
    let lease = bounded_until(until, api.get_opt(ISSUER_LEASE))
        .await
        .map_err(|e| {
            if Instant::now() >= until {
                StoreError::Fenced
            } else {
                store_error(e, "get", "leases", &store.namespace)
            }
        })?
        .ok_or(StoreError::Fenced)?;
    let spec = lease.spec.unwrap_or_default();
    let ours = spec.holder_identity.as_deref() == Some(store.node.as_str())
        && spec.lease_transitions.map(i64::from) == Some(lead.token);
    if !ours {
        return Err(StoreError::Fenced);
    }
    // Check our clock again: the read may have taken a while.
    if Instant::now() >= until {
        return Err(StoreError::Fenced);
    }
    Ok(until)
}

/// A call of a fenced write that failed: [`StoreError::Fenced`] when the leadership ran
/// out meanwhile (the call was cut short at its deadline), else what the error says.
fn write_error(store: &KubeStore, e: kube::Error, verb: &str, until: Instant) -> StoreError {
    if Instant::now() >= until {
        StoreError::Fenced
    } else {
        store_error(e, verb, "secrets", &store.namespace)
    }
}

/// The Secret at `name`, refused when a newer leadership wrote it.
async fn read_secret(
    store: &KubeStore,
    api: &Api<Secret>,
    name: &str,
    lead: &Leadership,
    until: Instant,
) -> Result<Option<Secret>, StoreError> {
    let secret = bounded_until(until, api.get_opt(name))
        .await
        .map_err(|e| write_error(store, e, "get", until))?;
    let newer = secret
        .as_ref()
        .and_then(|s| s.metadata.annotations.as_ref())
        .and_then(|a| a.get(TOKEN_ANNOTATION))
        .and_then(|t| t.parse::<i64>().ok())
        .is_some_and(|t| t > lead.token);
    if newer {
        return Err(StoreError::Fenced);
    }
    Ok(secret)
}

pub(super) async fn put_fenced(
    store: &KubeStore,
    lead: &Leadership,
    key: &str,
    value: Vec<u8>,
) -> Result<i64, StoreError> {
    let api = store.secrets();
    let name = secret_name(key);
    for attempt in 1..=ATTEMPTS {
        let until = check_lease(store, lead).await?;
        let current = read_secret(store, &api, &name, lead, until).await?;
        let body = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels(STORE_LABEL)),
                annotations: Some(BTreeMap::from([
                    (KEY_ANNOTATION.to_owned(), key.to_owned()),
                    (TOKEN_ANNOTATION.to_owned(), lead.token.to_string()),
                ])),
                // The precondition: a write by anyone since our read is a 409.
                resource_version: current
                    .as_ref()
                    .and_then(|s| s.metadata.resource_version.clone()),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(BTreeMap::from([(
                "value".to_owned(),
                ByteString(value.clone()),
            )])),
            ..Secret::default()
        };
        let params = PostParams::default();
        let (verb, result) = if current.is_some() {
            let call = api.replace(&name, &params, &body);
            ("update", bounded_until(until, call).await)
        } else {
            (
                "create",
                bounded_until(until, api.create(&params, &body)).await,
            )
        };
        match result {
            Ok(written) => {
                return parse_revision(
                    written.metadata.resource_version.as_deref(),
                    "written secret",
                );
            }
            // Created or changed by someone since our read: read, check and try again.
            Err(e) if is_status(&e, 409) => {
                debug!(
                    key,
                    attempt, "store secret changed under a fenced write; retrying"
                );
            }
            Err(e) => return Err(write_error(store, e, verb, until)),
        }
    }
    Err(StoreError::Unavailable(format!(
        "write of {key}: {ATTEMPTS} conflicting writes in a row"
    )))
}

pub(super) async fn delete_fenced(
    store: &KubeStore,
    lead: &Leadership,
    key: &str,
) -> Result<(), StoreError> {
    let api = store.secrets();
    let name = secret_name(key);
    for attempt in 1..=ATTEMPTS {
        let until = check_lease(store, lead).await?;
        let Some(current) = read_secret(store, &api, &name, lead, until).await? else {
            return Ok(());
        };
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: current.metadata.resource_version.clone(),
                uid: current.metadata.uid.clone(),
            }),
            ..DeleteParams::default()
        };
        match bounded_until(until, api.delete(&name, &params)).await {
            Ok(_) => return Ok(()),
            Err(e) if is_status(&e, 404) => return Ok(()),
            Err(e) if is_status(&e, 409) => {
                debug!(
                    key,
                    attempt, "store secret changed under a fenced delete; retrying"
                );
            }
            Err(e) => return Err(write_error(store, e, "delete", until)),
        }
    }
    Err(StoreError::Unavailable(format!(
        "delete of {key}: {ATTEMPTS} conflicting writes in a row"
    )))
}
