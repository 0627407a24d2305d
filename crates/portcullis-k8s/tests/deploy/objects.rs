//! Rendering the deployment (kustomize, Helm) and reading what it renders strictly with
//! k8s-openapi's types: each object is read into its typed form and written back, and the
//! two must be equal, so a misspelt, misplaced or unknown field fails instead of being
//! dropped the way the API server would silently drop it.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One rendered object, typed.
#[derive(Debug, Clone)]
#[allow(
    clippy::large_enum_variant,
    reason = "a few dozen objects per test, read once"
)]
pub enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Role(Role),
    RoleBinding(RoleBinding),
    IngressClass(IngressClass),
    ConfigMap(ConfigMap),
    Secret(Secret),
    Deployment(Deployment),
    Service(Service),
    PodDisruptionBudget(PodDisruptionBudget),
    Ingress(Ingress),
    EndpointSlice(EndpointSlice),
    ServiceMonitor(ServiceMonitor),
}

impl Object {
    /// Reads `doc` as the type its `apiVersion` and `kind` name, strictly.
    pub fn parse(doc: &Value, origin: &str) -> Object {
        let api_version = doc["apiVersion"].as_str().unwrap_or_default();
        let kind = doc["kind"].as_str().unwrap_or_default();
        let origin = format!("{origin}: {kind} {}", doc["metadata"]["name"]);
        match (api_version, kind) {
            ("v1", "Namespace") => Object::Namespace(strict(doc, &origin)),
            ("v1", "ServiceAccount") => Object::ServiceAccount(strict(doc, &origin)),
            ("v1", "ConfigMap") => Object::ConfigMap(strict(doc, &origin)),
            ("v1", "Secret") => Object::Secret(strict(doc, &origin)),
            ("v1", "Service") => Object::Service(strict(doc, &origin)),
            ("apps/v1", "Deployment") => Object::Deployment(strict(doc, &origin)),
            ("policy/v1", "PodDisruptionBudget") => {
                Object::PodDisruptionBudget(strict(doc, &origin))
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                Object::ClusterRole(strict(doc, &origin))
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                Object::ClusterRoleBinding(strict(doc, &origin))
            }
            ("rbac.authorization.k8s.io/v1", "Role") => Object::Role(strict(doc, &origin)),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                Object::RoleBinding(strict(doc, &origin))
            }
            ("networking.k8s.io/v1", "IngressClass") => Object::IngressClass(strict(doc, &origin)),
            ("networking.k8s.io/v1", "Ingress") => Object::Ingress(strict(doc, &origin)),
            ("discovery.k8s.io/v1", "EndpointSlice") => Object::EndpointSlice(strict(doc, &origin)),
            ("monitoring.coreos.com/v1", "ServiceMonitor") => {
                Object::ServiceMonitor(strict(doc, &origin))
            }
            _ => panic!("{origin}: no type known for apiVersion `{api_version}` kind `{kind}`"),
        }
    }

    /// `Kind`, as in the manifest.
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Namespace(_) => "Namespace",
            Object::ServiceAccount(_) => "ServiceAccount",
            Object::ClusterRole(_) => "ClusterRole",
            Object::ClusterRoleBinding(_) => "ClusterRoleBinding",
            Object::Role(_) => "Role",
            Object::RoleBinding(_) => "RoleBinding",
            Object::IngressClass(_) => "IngressClass",
            Object::ConfigMap(_) => "ConfigMap",
            Object::Secret(_) => "Secret",
            Object::Deployment(_) => "Deployment",
            Object::Service(_) => "Service",
            Object::PodDisruptionBudget(_) => "PodDisruptionBudget",
            Object::Ingress(_) => "Ingress",
            Object::EndpointSlice(_) => "EndpointSlice",
            Object::ServiceMonitor(_) => "ServiceMonitor",
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::ServiceAccount(o) => &o.metadata,
            Object::ClusterRole(o) => &o.metadata,
            Object::ClusterRoleBinding(o) => &o.metadata,
            Object::Role(o) => &o.metadata,
            Object::RoleBinding(o) => &o.metadata,
            Object::IngressClass(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::Deployment(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::PodDisruptionBudget(o) => &o.metadata,
            Object::Ingress(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::ServiceMonitor(o) => &o.metadata,
        }
    }

    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    /// Whether the object lives in a namespace (as opposed to cluster-wide).
    pub fn is_namespaced(&self) -> bool {
        !matches!(
            self,
            Object::Namespace(_)
                | Object::ClusterRole(_)
                | Object::ClusterRoleBinding(_)
                | Object::IngressClass(_)
        )
    }
}

/// The Prometheus Operator's ServiceMonitor, as far as the chart uses it (no k8s-openapi
/// type exists for a custom resource): unknown fields are refused.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceMonitor {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ServiceMonitorSpec,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    pub selector: LabelSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<NamespaceSelector>,
    pub endpoints: Vec<ServiceMonitorEndpoint>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceSelector {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceMonitorEndpoint {
    pub port: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrape_timeout: Option<String>,
}

/// `doc` as a `T`, which must write back exactly as `doc`.
fn strict<T: DeserializeOwned + Serialize>(doc: &Value, origin: &str) -> T {
    let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{origin}: {e}"));
    let back = serde_json::to_value(&typed).expect("a typed object serializes");
    let mut found = Vec::new();
    differences(doc, &back, "", &mut found);
    assert!(
        found.is_empty(),
        "{origin}: not read back as written (a misspelt, misplaced or unknown field?):\n  {}",
        found.join("\n  ")
    );
    typed
}

/// Where `written` and `read` differ, as key paths.
fn differences(written: &Value, read: &Value, path: &str, found: &mut Vec<String>) {
    match (written, read) {
        (Value::Object(w), Value::Object(r)) => {
            for (key, value) in w {
                let at = format!("{path}.{key}");
                match r.get(key) {
                    Some(other) => differences(value, other, &at, found),
                    None => found.push(format!("{at}: unknown field, dropped")),
                }
            }
            for key in r.keys().filter(|k| !w.contains_key(*k)) {
                found.push(format!("{path}.{key}: not written, but read as {}", r[key]));
            }
        }
        (Value::Array(w), Value::Array(r)) if w.len() == r.len() => {
            for (i, (w, r)) in w.iter().zip(r).enumerate() {
                differences(w, r, &format!("{path}[{i}]"), found);
            }
        }
        _ if written == read => {}
        _ => found.push(format!("{path}: written {written}, read as {read}")),
    }
}

/// Every document of a YAML stream, as JSON; empty documents are skipped.
pub fn documents(text: &str, origin: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| {
            let yaml = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{origin}: not YAML: {e}"));
            serde_json::to_value(yaml).unwrap_or_else(|e| panic!("{origin}: not JSON-like: {e}"))
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Every object of a YAML stream, strictly typed.
pub fn objects(text: &str, origin: &str) -> Vec<Object> {
    documents(text, origin)
        .iter()
        .map(|doc| Object::parse(doc, origin))
        .collect()
}

/// `kubectl kustomize DIR`, with the real kubectl.
pub fn kustomize(dir: &Path) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run kubectl ({e}): the deployment tests render the kustomize base with the \
                 real kubectl, installed on these machines (shared TESTENV.md, Kubernetes)"
            )
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("kubectl prints UTF-8")
}

/// What Helm's engine made of the chart: the rendered manifests joined into one YAML
/// stream, and `helm lint`'s report.
pub struct HelmOutput {
    pub manifests: String,
    pub lint: Value,
    pub notes: String,
}

/// Renders and lints the chart with Helm's own engine (`helm.py` beside this file).
pub fn helm(release: &str, namespace: &str, values: &Value) -> Result<HelmOutput, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/deploy/helm.py");
    let chart = repo().join("deploy/helm/portcullis");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&chart)
        .arg(release)
        .arg(namespace)
        .arg(values.to_string())
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", script.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {}
        Some(3) => panic!(
            "{stderr}\nHelm's engine is missing: install it with \
             `python3 -m pip install --require-hashes -r .ci/requirements-helm.txt` \
             (.ci/run does)"
        ),
        _ => return Err(stderr.into_owned()),
    }
    let report: Value = serde_json::from_slice(&out.stdout).expect("helm.py prints JSON");
    let mut files: Vec<(&String, &Value)> = report["manifests"]
        .as_object()
        .expect("manifests by template")
        .iter()
        .collect();
    files.sort_by_key(|(name, _)| name.as_str());
    let mut manifests = String::new();
    let mut notes = String::new();
    for (name, text) in files {
        let text = text.as_str().unwrap_or_default();
        if name.ends_with("NOTES.txt") {
            notes = text.to_owned();
        } else if name.ends_with(".yaml") {
            manifests.push_str(&format!("---\n# {name}\n{text}\n"));
        }
    }
    Ok(HelmOutput {
        manifests,
        lint: report["lint"].clone(),
        notes,
    })
}
