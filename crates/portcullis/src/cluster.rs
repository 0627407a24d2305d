//! `cluster:`: opening the store replicas share certificates through, for the controller.

use std::sync::Arc;

use portcullis_cluster::Store;
use portcullis_config::{Cluster, ClusterStore};

/// The store `settings` names. etcd is reached lazily (a replica starts while etcd is
/// down and serves its cache); Kubernetes uses `kube` when the ingress controller has a
/// client, else the kubeconfig or the pod's service account.
pub(crate) async fn open_store(
    settings: &Cluster,
    kube: Option<kube::Client>,
) -> Result<Arc<dyn Store>, String> {
    match &settings.store {
        ClusterStore::Etcd(etcd) => {
            let store = portcullis_cluster::EtcdStore::open_with_lease(
                etcd,
                &settings.node_name,
                settings.lease,
            )
            .map_err(|e| format!("cannot use etcd: {e}"))?;
            Ok(store)
        }
        ClusterStore::Kubernetes(k) => {
            let client = match (kube, &k.kubeconfig) {
                (Some(c), None) => c,
                (_, path) => portcullis_k8s::connect(path.as_deref())
                    .await
                    .map_err(|e| format!("cannot reach the Kubernetes API: {e}"))?,
            };
            Ok(portcullis_cluster::KubeStore::new(
                client,
                &k.namespace,
                &settings.node_name,
                settings.lease,
            ))
        }
    }
}
