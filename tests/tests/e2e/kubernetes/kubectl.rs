//! The real `kubectl` against the fake API server: discovery, create, get (JSON, jsonpath,
//! selectors), replace and delete, with our own manifests, the repository's
//! `examples/kubernetes/*.yaml` and the `deploy/kubernetes` kustomize base. What a real
//! client sends is what the fake must understand.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use portcullis_tests::wait::{until, within_for};
use portcullis_tests::{FakeApiServer, TestCa};
use serde_json::Value;

/// `kubectl` with a kubeconfig for one fake server and a discovery cache of its own.
struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
    cache: PathBuf,
}

/// The kubectl binaries to hold the fake to. The `kubectl` on these machines is Google
/// Cloud SDK's dispatcher, which runs the `kubectl.1.NN` beside it that matches the
/// server's `/version` (1.33 for the fake); the v1.32 binary is run by name as well.
fn kubectl_binaries() -> Vec<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("kubectl"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.is_file())
        .expect("kubectl is not installed (it is on these machines)");
    let mut out = vec![on_path.clone()];
    if let Some(dir) = std::fs::canonicalize(&on_path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        let v132 = dir.join("kubectl.1.32");
        if v132.is_file() {
            out.push(v132);
        }
    }
    out
}

impl Kubectl {
    fn new(api: &FakeApiServer, dir: &Path) -> Self {
        Self::with_binary(kubectl_binaries().remove(0), api, dir)
    }

    fn with_binary(binary: PathBuf, api: &FakeApiServer, dir: &Path) -> Self {
        Self {
            binary,
            kubeconfig: api.write_kubeconfig(dir),
            cache: dir.join("kube-cache"),
        }
    }

    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .arg("--request-timeout=20s")
            .args(args);
        let what = format!("{} {}", self.binary.display(), args.join(" "));
        within_for(
            Duration::from_secs(60),
            &what,
            tokio::task::spawn_blocking(move || cmd.output().unwrap()),
        )
        .await
        .unwrap()
    }

    /// Runs `args`, which must succeed; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "{} {} failed: {}\n{}",
            self.binary.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `args`, which must fail; returns stderr.
    async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            !out.status.success(),
            "{} {} succeeded: {}",
            self.binary.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }
}

const NAMESPACE: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: shop
";

const APP: &str = "apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: portcullis-kubectl
spec:
  controller: portcullis.dev/ingress-controller
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc12
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080}
endpoints:
- addresses: [10.0.0.7]
  conditions: {ready: true}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
  namespace: shop
spec:
  ingressClassName: portcullis-kubectl
  rules:
  - host: HOST
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: web
            port: {name: http}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: example.com/web:1
";

#[tokio::test]
async fn kubectl_creates_gets_replaces_and_deletes_through_the_fake() {
    let binaries = kubectl_binaries();
    for binary in binaries {
        own_manifests_round_trip(binary).await;
    }
}

async fn own_manifests_round_trip(binary: PathBuf) {
    let api = FakeApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let v132 = binary.file_name().is_some_and(|n| n == "kubectl.1.32");
    let kubectl = Kubectl::with_binary(binary, &api, dir.path());
    let ns_file = dir.path().join("namespace.yaml");
    let app_file = dir.path().join("app.yaml");
    std::fs::write(&ns_file, NAMESPACE).unwrap();
    std::fs::write(&app_file, APP.replace("HOST", "shop.test")).unwrap();
    let ns_file = ns_file.to_str().unwrap();
    let app_file = app_file.to_str().unwrap();

    let out = kubectl
        .ok(&["create", "--validate=false", "-f", ns_file])
        .await;
    assert_eq!(out.trim(), "namespace/shop created");
    let out = kubectl
        .ok(&["create", "--validate=false", "-f", app_file])
        .await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "ingressclass.networking.k8s.io/portcullis-kubectl created",
            "service/web created",
            "endpointslice.discovery.k8s.io/web-abc12 created",
            "ingress.networking.k8s.io/web created",
            "deployment.apps/web created",
        ]
    );
    // The store holds what kubectl sent, with the server's fields.
    let ingress: Ingress = api.get("shop", "web").unwrap();
    assert_eq!(ingress.metadata.generation, Some(1));
    assert!(ingress.metadata.uid.is_some());
    assert!(api.get::<IngressClass>("", "portcullis-kubectl").is_some());
    assert!(api.get::<EndpointSlice>("shop", "web-abc12").is_some());
    assert!(api.get::<Deployment>("shop", "web").is_some());

    // Reading back: a list as JSON, and single fields with jsonpath.
    let list: Value = serde_json::from_str(
        &kubectl
            .ok(&["get", "ingress", "--all-namespaces", "-o", "json"])
            .await,
    )
    .unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["metadata"]["name"], "web");
    assert_eq!(items[0]["kind"], "Ingress");
    assert_eq!(
        items[0]["metadata"]["resourceVersion"],
        ingress.metadata.resource_version.unwrap().as_str()
    );
    let ip = kubectl
        .ok(&[
            "get",
            "service",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .await;
    let stored: Service = api.get("shop", "web").unwrap();
    assert_eq!(Some(ip), stored.spec.unwrap().cluster_ip);
    let controller = kubectl
        .ok(&[
            "get",
            "ingressclass",
            "portcullis-kubectl",
            "-o",
            "jsonpath={.spec.controller}",
        ])
        .await;
    assert_eq!(controller, "portcullis.dev/ingress-controller");
    // Selectors, as kubectl sends them.
    let by_label = kubectl
        .ok(&[
            "get",
            "endpointslices",
            "-n",
            "shop",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(by_label.trim(), "endpointslice.discovery.k8s.io/web-abc12");
    let none = kubectl
        .ok(&[
            "get",
            "endpointslices",
            "-A",
            "-l",
            "kubernetes.io/service-name in (db,cache)",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(none.trim(), "");
    let by_field = kubectl
        .ok(&[
            "get",
            "services",
            "-A",
            "--field-selector",
            "metadata.namespace=shop",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(by_field.trim(), "service/web");

    // Creating again: AlreadyExists, as the real server says it.
    let err = kubectl
        .fails(&["create", "--validate=false", "-f", app_file])
        .await;
    assert!(
        err.contains("AlreadyExists")
            && err.contains("ingresses.networking.k8s.io \"web\" already exists"),
        "{err}"
    );

    // Replace with a changed host: a new generation for the Ingress only.
    std::fs::write(app_file, APP.replace("HOST", "shop2.test")).unwrap();
    let out = kubectl
        .ok(&["replace", "--validate=false", "-f", app_file])
        .await;
    assert!(
        out.contains("ingress.networking.k8s.io/web replaced"),
        "{out}"
    );
    let generation = kubectl
        .ok(&[
            "get",
            "ingress",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.metadata.generation} {.spec.rules[0].host}",
        ])
        .await;
    assert_eq!(generation, "2 shop2.test");
    let slice: EndpointSlice = api.get("shop", "web-abc12").unwrap();
    assert_eq!(slice.metadata.generation, Some(1), "an unchanged object");

    // Delete: everything goes, then the namespace.
    let out = kubectl.ok(&["delete", "-f", app_file]).await;
    assert_eq!(out.lines().count(), 5, "{out}");
    let left = kubectl
        .ok(&["get", "-f", app_file, "--ignore-not-found", "-o", "name"])
        .await;
    assert_eq!(left.trim(), "");
    assert!(api.get::<Ingress>("shop", "web").is_none());
    kubectl.ok(&["delete", "-f", ns_file]).await;
    assert!(api.get::<Namespace>("", "shop").is_none());

    // Every resource request kubectl made, as RBAC sees it.
    let calls = api.calls();
    assert!(calls.iter().all(|c| {
        c.user_agent
            .as_deref()
            .is_some_and(|ua| ua.starts_with("kubectl"))
    }));
    if v132 {
        assert!(
            calls[0]
                .user_agent
                .as_deref()
                .is_some_and(|ua| ua.contains("/v1.32.")),
            "{:?}",
            calls[0].user_agent
        );
    }
    assert!(
        calls.iter().any(|c| c.verb == "delete"
            && c.resource == "namespaces"
            && c.name.as_deref() == Some("shop")
            && c.namespace.as_deref() == Some("shop")),
        "a Namespace's own path is in that namespace, for RBAC"
    );
    for verb in ["create", "get", "list", "update", "delete"] {
        assert!(
            calls.iter().any(|c| c.verb == verb
                && c.group == "networking.k8s.io"
                && c.resource == "ingresses"),
            "no {verb} of ingresses in {calls:#?}"
        );
    }
}

const APPLIED: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
  namespace: default
spec:
  replicas: 1
  selector:
    matchLabels: {app: api}
  template:
    metadata:
      labels: {app: api}
    spec:
      containers:
      - name: api
        image: example.com/api:1
        ports:
        - {name: http, containerPort: 8080}
      - name: sidecar
        image: example.com/sidecar:1
";

#[tokio::test]
async fn kubectl_apply_creates_then_patches_strategically() {
    let api = FakeApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::new(&api, dir.path());
    let file = dir.path().join("api.yaml");
    std::fs::write(&file, APPLIED).unwrap();
    let file = file.to_str().unwrap();
    let out = kubectl.ok(&["apply", "--validate=false", "-f", file]).await;
    assert_eq!(out.trim(), "deployment.apps/api created");
    // A new image and no sidecar: kubectl sends a strategic merge patch with the container
    // list merged by name ($patch: delete for the sidecar, $setElementOrder).
    let changed = APPLIED.replace("api:1", "api:2").replace(
        "      - name: sidecar\n        image: example.com/sidecar:1\n",
        "",
    );
    std::fs::write(file, changed).unwrap();
    let out = kubectl.ok(&["apply", "--validate=false", "-f", file]).await;
    assert_eq!(out.trim(), "deployment.apps/api configured");
    let stored: Deployment = api.get("default", "api").unwrap();
    let stored = serde_json::to_value(&stored).unwrap();
    assert_eq!(
        stored["spec"]["template"]["spec"]["containers"],
        serde_json::json!([{"name": "api", "image": "example.com/api:2",
            "ports": [{"name": "http", "containerPort": 8080}]}])
    );
    assert!(!stored.to_string().contains("$setElementOrder"));
    assert_eq!(stored["metadata"]["generation"], 2);
    let patches: Vec<_> = api
        .calls()
        .into_iter()
        .filter(|c| c.verb == "patch")
        .collect();
    assert_eq!(patches.len(), 1, "{patches:?}");
    // Applying the same file again changes nothing.
    let out = kubectl.ok(&["apply", "--validate=false", "-f", file]).await;
    assert_eq!(out.trim(), "deployment.apps/api unchanged");
}

/// The documents of a multi-document YAML file.
fn documents(text: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_yaml::Value| !v.is_null())
        .collect()
}

fn text_of(v: &serde_yaml::Value, path: &[&str]) -> Option<String> {
    let mut v = v;
    for p in path {
        v = v.get(*p)?;
    }
    v.as_str().map(str::to_owned)
}

fn write_documents(path: &Path, docs: &[&serde_yaml::Value]) {
    let text: Vec<String> = docs
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect();
    std::fs::write(path, text.join("---\n")).unwrap();
}

/// Creates, reads back, replaces and deletes `docs` with kubectl; `None` when they need a
/// kind the fake does not serve (the reason is returned instead).
async fn round_trip(
    api: &FakeApiServer,
    kubectl: &Kubectl,
    ca: &TestCa,
    dir: &Path,
    name: &str,
    docs: &[serde_yaml::Value],
) -> Result<usize, String> {
    for d in docs {
        let (v, k) = (text_of(d, &["apiVersion"]), text_of(d, &["kind"]));
        let (v, k) = (v.unwrap_or_default(), k.unwrap_or_default());
        if !FakeApiServer::serves(&v, &k) {
            return Err(format!(
                "it needs {k} ({v}), which the fake API server does not serve"
            ));
        }
    }
    // What the manifests expect to exist already: their namespaces, and TLS Secrets.
    let namespaces: Vec<&serde_yaml::Value> = docs
        .iter()
        .filter(|d| text_of(d, &["kind"]).as_deref() == Some("Namespace"))
        .collect();
    let others: Vec<&serde_yaml::Value> = docs
        .iter()
        .filter(|d| text_of(d, &["kind"]).as_deref() != Some("Namespace"))
        .collect();
    let own: Vec<String> = namespaces
        .iter()
        .filter_map(|d| text_of(d, &["metadata", "name"]))
        .collect();
    for d in &others {
        if let Some(ns) = text_of(d, &["metadata", "namespace"])
            && !own.contains(&ns)
            && api.get::<Namespace>("", &ns).is_none()
        {
            api.create::<Namespace>(
                &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap(),
            );
        }
    }
    let ns_file = dir.join(format!("{name}.namespaces.yaml"));
    let file = dir.join(format!("{name}.yaml"));
    write_documents(&ns_file, &namespaces);
    write_documents(&file, &others);
    let (ns_file, file) = (ns_file.to_str().unwrap(), file.to_str().unwrap());
    if !namespaces.is_empty() {
        kubectl
            .ok(&["create", "--validate=false", "-f", ns_file])
            .await;
    }
    for d in &others {
        let ns = text_of(d, &["metadata", "namespace"]).unwrap_or_else(|| "default".into());
        let tls = d
            .get("spec")
            .and_then(|s| s.get("tls"))
            .and_then(|t| t.as_sequence());
        for secret in tls
            .into_iter()
            .flatten()
            .filter_map(|t| text_of(t, &["secretName"]))
        {
            if api.get::<Secret>(&ns, &secret).is_some() {
                continue;
            }
            let leaf = ca.leaf(&["example.test"]);
            let (cert, key) = leaf.write(dir, &secret);
            kubectl
                .ok(&[
                    "create",
                    "secret",
                    "tls",
                    &secret,
                    "-n",
                    &ns,
                    "--cert",
                    cert.to_str().unwrap(),
                    "--key",
                    key.to_str().unwrap(),
                ])
                .await;
            // kubectl sent it as protobuf: what the fake decoded is what kubectl read.
            let made: Secret = api.get(&ns, &secret).unwrap();
            assert_eq!(made.type_.as_deref(), Some("kubernetes.io/tls"));
            let data = made.data.unwrap();
            assert_eq!(data["tls.crt"].0, leaf.cert_pem.as_bytes());
            assert_eq!(data["tls.key"].0, leaf.key_pem.as_bytes());
        }
    }
    let out = kubectl
        .ok(&["create", "--validate=false", "-f", file])
        .await;
    assert_eq!(out.lines().count(), others.len(), "{name}: {out}");
    let listed = kubectl.ok(&["get", "-f", file, "-o", "json"]).await;
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let listed = listed
        .get("items")
        .and_then(Value::as_array)
        .map_or(1, Vec::len);
    assert_eq!(listed, others.len(), "{name}: kubectl get -f");
    let out = kubectl
        .ok(&["replace", "--validate=false", "-f", file])
        .await;
    assert_eq!(
        out.matches(" replaced").count(),
        others.len(),
        "{name}: {out}"
    );
    kubectl.ok(&["delete", "-f", file]).await;
    let left = kubectl
        .ok(&["get", "-f", file, "--ignore-not-found", "-o", "name"])
        .await;
    assert_eq!(left.trim(), "", "{name}: left after delete");
    if !namespaces.is_empty() {
        kubectl.ok(&["delete", "-f", ns_file]).await;
    }
    Ok(docs.len())
}

#[tokio::test]
async fn kubectl_round_trips_the_repository_examples_and_deploy_base() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let examples = root.join("examples/kubernetes");
    let deploy = root.join("deploy/kubernetes");
    if !examples.is_dir() && !deploy.is_dir() {
        eprintln!("skipped: neither examples/kubernetes nor deploy/kubernetes is in this tree yet");
        return;
    }
    let api = FakeApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::new(&api, dir.path());
    let ca = TestCa::new("kubectl examples CA");
    let mut sets: Vec<(String, Vec<serde_yaml::Value>)> = Vec::new();
    if examples.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&examples)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for f in files {
            let name = f.file_stem().unwrap().to_string_lossy().into_owned();
            sets.push((name, documents(&std::fs::read_to_string(&f).unwrap())));
        }
    } else {
        eprintln!("examples/kubernetes is not in this tree yet: only deploy/kubernetes");
    }
    if deploy.is_dir() {
        let rendered = kubectl.ok(&["kustomize", deploy.to_str().unwrap()]).await;
        sets.push(("deploy-kubernetes".into(), documents(&rendered)));
    } else {
        eprintln!("deploy/kubernetes is not in this tree yet: only the examples");
    }
    let mut exercised = 0;
    for (name, docs) in &sets {
        match round_trip(&api, &kubectl, &ca, dir.path(), name, docs).await {
            Ok(n) => exercised += n,
            Err(why) => eprintln!("skipped {name}: {why}"),
        }
    }
    assert!(exercised > 0, "no manifest could be exercised");
    // Deleted namespaces go once the namespace controller's delay has passed.
    until(
        Duration::from_secs(5),
        "terminating namespaces to go",
        || async {
            api.list::<Namespace>("")
                .iter()
                .all(|n| n.metadata.deletion_timestamp.is_none())
                .then_some(())
        },
    )
    .await;
}
