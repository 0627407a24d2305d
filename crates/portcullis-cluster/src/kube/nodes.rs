//! The replicas' reports: one Lease per replica, renewed by each heartbeat, alive while its
//! `renewTime + leaseDurationSeconds` is ahead.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PostParams};

use super::elect::unexpired;
use super::{
    KubeStore, NODE_ANNOTATION, NODE_LABEL, NODE_SELECTOR, VALUE_ANNOTATION, bounded,
    decode_base64, encode_base64, is_status, labels, node_lease_name, parse_revision, store_error,
};
use crate::store::{Entry, StoreError};

pub(super) async fn heartbeat(store: &KubeStore, value: Vec<u8>) -> Result<(), StoreError> {
    let api: Api<Lease> = Api::namespaced(store.client.clone(), &store.namespace);
    let name = node_lease_name(&store.node);
    let seconds = i32::try_from(store.lease.as_secs().max(1)).unwrap_or(i32::MAX);
    let encoded = encode_base64(&value);
    let err = |verb| move |e| store_error(e, verb, "leases", &store.namespace);
    // Only this replica writes its Lease: a conflict is a heartbeat of ours that timed out
    // on our side yet landed. Read again once.
    for _ in 0..2 {
        let current = bounded(api.get_opt(&name)).await.map_err(err("get"))?;
        let now = MicroTime(Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels(NODE_LABEL)),
                annotations: Some(BTreeMap::from([
                    (NODE_ANNOTATION.to_owned(), store.node.clone()),
                    (VALUE_ANNOTATION.to_owned(), encoded.clone()),
                ])),
                resource_version: current
                    .as_ref()
                    .and_then(|l| l.metadata.resource_version.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(store.node.clone()),
                lease_duration_seconds: Some(seconds),
                renew_time: Some(now.clone()),
                acquire_time: current
                    .as_ref()
                    .and_then(|l| l.spec.as_ref())
                    .and_then(|s| s.acquire_time.clone())
                    .or(Some(now)),
                ..LeaseSpec::default()
            }),
        };
        let (verb, result) = match current {
            Some(_) => (
                "update",
                bounded(api.replace(&name, &PostParams::default(), &lease)).await,
            ),
            None => (
                "create",
                bounded(api.create(&PostParams::default(), &lease)).await,
            ),
        };
        match result {
            Ok(_) => return Ok(()),
            Err(e) if is_status(&e, 409) => continue,
            Err(e) => return Err(err(verb)(e)),
        }
    }
    Err(StoreError::Unavailable(format!(
        "heartbeat of {}: conflicting writes to lease {name}",
        store.node
    )))
}

pub(super) async fn nodes(store: &KubeStore) -> Result<Vec<Entry>, StoreError> {
    let api: Api<Lease> = Api::namespaced(store.client.clone(), &store.namespace);
    let list = bounded(api.list(&ListParams::default().labels(NODE_SELECTOR)))
        .await
        .map_err(|e| store_error(e, "list", "leases", &store.namespace))?;
    let mut out = Vec::new();
    for lease in list.items.iter().filter(|l| unexpired(l)) {
        let annotations = lease.metadata.annotations.as_ref();
        let Some(node) = annotations.and_then(|a| a.get(NODE_ANNOTATION)) else {
            continue;
        };
        let Some(value) = annotations
            .and_then(|a| a.get(VALUE_ANNOTATION))
            .and_then(|v| decode_base64(v))
        else {
            continue;
        };
        out.push(Entry {
            key: format!("nodes/{node}"),
            value,
            revision: parse_revision(lease.metadata.resource_version.as_deref(), "node lease")?,
            token: None,
        });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}
