//! The RBAC rules `deploy/kubernetes` installs, held to the calls the controller made: each
//! request a running `portcullis ingress` sent to the fake API server must be one the
//! rendered ClusterRole (anywhere) or Role (in the controller's own namespace) allows. Used
//! by the writers' tests and by `ingress::rbac` (a whole life of one controller).

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use portcullis_k8s::rbac_allows_named;
use portcullis_tests::ApiCall;
use serde::Deserialize;

/// The rules of the kustomize base, rendered by the real `kubectl kustomize`: the
/// ClusterRole's and the Role's.
fn deployed_rules() -> (Vec<PolicyRule>, Vec<PolicyRule>) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new("kubectl")
        .args(["kustomize", "deploy/kubernetes"])
        .current_dir(&root)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl kustomize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (mut cluster, mut own) = (Vec::new(), Vec::new());
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc).unwrap();
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("ClusterRole") => {
                let r: ClusterRole = serde_yaml::from_value(value).unwrap();
                cluster.extend(r.rules.unwrap_or_default());
            }
            Some("Role") => {
                let r: Role = serde_yaml::from_value(value).unwrap();
                own.extend(r.rules.unwrap_or_default());
            }
            _ => {}
        }
    }
    assert!(!cluster.is_empty() && !own.is_empty(), "no rules rendered");
    (cluster, own)
}

/// Every call in `calls` is allowed by the deployed rules, the Role counting in
/// `own_namespace` only. Returns how many calls were checked.
pub(super) fn assert_deployed_rbac_allows(calls: &[ApiCall], own_namespace: &str) -> usize {
    let (cluster, own) = deployed_rules();
    let mut refused = Vec::new();
    for c in calls {
        let sub = c.subresource.as_deref();
        let name = c.name.as_deref();
        let by_cluster = rbac_allows_named(&cluster, &c.verb, &c.group, &c.resource, sub, name);
        let by_role = c.namespace.as_deref() == Some(own_namespace)
            && rbac_allows_named(&own, &c.verb, &c.group, &c.resource, sub, name);
        if !(by_cluster || by_role) {
            refused.push(format!(
                "{} {}/{}{} in {:?} name {:?}",
                c.verb,
                c.group,
                c.resource,
                sub.map(|s| format!("/{s}")).unwrap_or_default(),
                c.namespace,
                c.name
            ));
        }
    }
    assert!(
        refused.is_empty(),
        "the deployed RBAC rules refuse calls the controller made:\n{}",
        refused.join("\n")
    );
    calls.len()
}
