//! The deployment (deploy/) and the examples (examples/kubernetes/): rendered with the real
//! tools (kubectl's kustomize, Helm's engine), read strictly with k8s-openapi's types, and
//! held to what docs/kubernetes.md promises.
#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "tests: a panic is the failure report"
)]

#[path = "deploy/checks.rs"]
mod checks;
#[path = "deploy/objects.rs"]
mod objects;

use std::collections::BTreeSet;

use k8s_openapi::api::networking::v1::Ingress;
use serde_json::json;

use checks::{Expect, check_install};
use objects::{Object, helm, kustomize, objects, repo};

const NAMESPACE: &str = "portcullis";

fn default_expect() -> Expect<'static> {
    Expect {
        namespace: NAMESPACE,
        replicas: 2,
        class: "portcullis",
        default_class: false,
        acme: true,
    }
}

fn kustomized() -> Vec<Object> {
    let dir = repo().join("deploy/kubernetes");
    objects(&kustomize(&dir), "kubectl kustomize deploy/kubernetes")
}

/// (kind, name) of every object, with kustomize's content hash taken off generated names.
fn inventory(objects: &[Object]) -> BTreeSet<(String, String)> {
    objects
        .iter()
        .map(|o| {
            let mut name = o.name().to_owned();
            if let Object::ConfigMap(_) = o
                && let Some((base, hash)) = name.rsplit_once('-')
                && hash.len() == 10
            {
                name = base.to_owned();
            }
            (o.kind().to_owned(), name)
        })
        .collect()
}

#[test]
fn the_kustomize_base_renders_and_holds_its_invariants() {
    let objects = kustomized();
    let kinds: BTreeSet<&str> = objects.iter().map(Object::kind).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "IngressClass",
            "ConfigMap",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
        ])
    );
    assert!(objects.iter().any(
        |o| matches!(o, Object::Namespace(n) if n.metadata.name.as_deref() == Some(NAMESPACE))
    ));
    let deployment = check_install(&objects, &default_expect());
    let image = deployment.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone()
        .unwrap();
    assert!(
        image.starts_with("ghcr.io/portcullis-gateway/portcullis:"),
        "{image}"
    );
}

#[test]
fn the_kustomize_base_config_is_the_one_in_the_repository() {
    // The generated ConfigMap carries config.yaml byte for byte.
    let objects = kustomized();
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/config.yaml")).unwrap();
    let cm = objects
        .iter()
        .find_map(|o| match o {
            Object::ConfigMap(c) => Some(c),
            _ => None,
        })
        .unwrap();
    assert_eq!(cm.data.as_ref().unwrap()["config.yaml"], text);
}

/// Renders the chart, failing on lint warnings as well as errors.
fn helm_objects(release: &str, values: serde_json::Value) -> Vec<Object> {
    let out = helm(release, NAMESPACE, &values).unwrap_or_else(|e| panic!("{values}: {e}"));
    let lint = &out.lint;
    assert_eq!(lint["errors"], json!([]), "helm lint: {lint}");
    for m in lint["messages"].as_array().unwrap() {
        // 1 = info (such as "icon is recommended"); 2 = warning, 3 = error.
        assert!(m["severity"].as_u64().unwrap() < 2, "helm lint: {m}");
    }
    assert!(!out.notes.is_empty(), "NOTES.txt renders");
    objects(&out.manifests, &format!("helm template {values}"))
}

#[test]
fn the_helm_chart_renders_the_same_objects_as_the_kustomize_base() {
    let helm = helm_objects("portcullis", json!({}));
    check_install(&helm, &default_expect());
    let mut kustomize = inventory(&kustomized());
    // `helm install --create-namespace` makes the namespace.
    kustomize.remove(&("Namespace".to_owned(), NAMESPACE.to_owned()));
    assert_eq!(inventory(&helm), kustomize);
}

#[test]
fn the_helm_values_change_what_they_say() {
    let objects = helm_objects(
        "edge",
        json!({
            "replicaCount": 3,
            "ingressClass": { "name": "edge", "isDefault": true },
            "controller": {
                "electionId": "edge-leader",
                "watchNamespaces": ["shop", "blog"],
                "watchIngressWithoutClass": true,
                "defaultCertificate": "portcullis/fallback-tls",
                "defaultBackend": "default/notfound:80",
            },
            "acme": {
                "directory": "https://acme.example/directory",
                "email": "ops@example.com",
                "acmeAllHosts": true,
            },
            "config": { "limits": { "max_body_size": "8MiB" } },
            "metrics": { "serviceMonitor": { "enabled": true, "labels": { "release": "prom" } } },
            "nodeSelector": { "kubernetes.io/os": "linux" },
            "tolerations": [{ "key": "edge", "operator": "Exists", "effect": "NoSchedule" }],
            "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{ "matchExpressions": [
                    { "key": "node-role.kubernetes.io/edge", "operator": "Exists" }
                ] }]
            } } },
            "resources": { "requests": { "cpu": "250m", "memory": "256Mi" } },
        }),
    );
    let deployment = check_install(
        &objects,
        &Expect {
            namespace: NAMESPACE,
            replicas: 3,
            class: "edge",
            default_class: true,
            acme: true,
        },
    );
    assert_eq!(deployment.metadata.name.as_deref(), Some("edge-portcullis"));
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap();
    for arg in [
        "--ingress-class=edge",
        "--election-id=edge-leader",
        "--watch-namespace=shop",
        "--watch-namespace=blog",
        "--watch-ingress-without-class",
        "--default-certificate=portcullis/fallback-tls",
        "--default-backend=default/notfound:80",
        "--acme-all-hosts",
        "--publish-service=$(POD_NAMESPACE)/edge-portcullis",
    ] {
        assert!(args.iter().any(|a| a == arg), "{arg} in {args:?}");
    }
    assert_eq!(pod.node_selector.unwrap()["kubernetes.io/os"], "linux");
    assert_eq!(pod.tolerations.unwrap()[0].key.as_deref(), Some("edge"));
    assert!(pod.affinity.unwrap().node_affinity.is_some());
    assert_eq!(
        c.resources.as_ref().unwrap().requests.as_ref().unwrap()["cpu"].0,
        "250m"
    );
    let config = objects
        .iter()
        .find_map(|o| match o {
            Object::ConfigMap(c) => Some(c.data.clone().unwrap()["config.yaml"].clone()),
            _ => None,
        })
        .unwrap();
    let config: serde_yaml::Value = serde_yaml::from_str(&config).unwrap();
    assert_eq!(config["acme"]["email"].as_str(), Some("ops@example.com"));
    assert_eq!(
        config["acme"]["directory"].as_str(),
        Some("https://acme.example/directory")
    );
    assert_eq!(config["limits"]["max_body_size"].as_str(), Some("8MiB"));
    assert_eq!(
        config["admin"]["allowed_hosts"][0].as_str(),
        Some("edge-portcullis-metrics.portcullis.svc")
    );
    // The ServiceMonitor selects the metrics Service, on a port it has.
    let monitor = objects
        .iter()
        .find_map(|o| match o {
            Object::ServiceMonitor(m) => Some(m),
            _ => None,
        })
        .expect("a ServiceMonitor");
    assert_eq!(monitor.metadata.labels.as_ref().unwrap()["release"], "prom");
    let selector = monitor.spec.selector.match_labels.clone().unwrap();
    let selected: Vec<_> = objects
        .iter()
        .filter_map(|o| match o {
            Object::Service(s)
                if selector
                    .iter()
                    .all(|(k, v)| s.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v)) =>
            {
                Some(s)
            }
            _ => None,
        })
        .collect();
    assert_eq!(selected.len(), 1, "the ServiceMonitor selects one Service");
    let port = &monitor.spec.endpoints[0].port;
    assert!(
        selected[0]
            .spec
            .as_ref()
            .unwrap()
            .ports
            .iter()
            .flatten()
            .any(|p| p.name.as_ref() == Some(port))
    );
}

#[test]
fn helm_without_acme_grants_no_secret_writes() {
    let objects = helm_objects(
        "portcullis",
        json!({ "acme": { "enabled": false }, "metrics": { "serviceMonitor": { "enabled": false } } }),
    );
    check_install(
        &objects,
        &Expect {
            acme: false,
            ..default_expect()
        },
    );
    let config = objects
        .iter()
        .find_map(|o| match o {
            Object::ConfigMap(c) => Some(c.data.clone().unwrap()["config.yaml"].clone()),
            _ => None,
        })
        .unwrap();
    assert!(!config.contains("acme"), "{config}");
}

#[test]
fn helm_refuses_contradictions() {
    for values in [
        json!({ "config": { "sites": [] } }),
        json!({ "controller": { "publishAddress": "203.0.113.7" } }),
    ] {
        let err = helm("portcullis", NAMESPACE, &values)
            .err()
            .unwrap_or_else(|| panic!("{values} rendered"));
        assert!(err.contains("sites") || err.contains("publish"), "{err}");
    }
    // With publishService off, the address is what gets published.
    let objects = helm_objects(
        "portcullis",
        json!({ "controller": { "publishService": false, "publishAddress": "lb.example.com" } }),
    );
    let deployment = objects
        .iter()
        .find_map(|o| match o {
            Object::Deployment(d) => Some(d.clone()),
            _ => None,
        })
        .unwrap();
    let args = deployment.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(args.contains(&"--publish-address=lb.example.com".to_owned()));
    assert!(!args.iter().any(|a| a.starts_with("--publish-service")));
}

/// Every `.Values.x.y` a template reads is in values.yaml (Helm renders a missing one as
/// empty, silently).
#[test]
fn helm_templates_read_only_values_that_exist() {
    let chart = repo().join("deploy/helm/portcullis");
    let values: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart.join("values.yaml")).unwrap()).unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(chart.join("templates")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, _) in text.match_indices(".Values.") {
            let rest = &text[i + ".Values.".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
                .unwrap_or(rest.len());
            let mut node = &values;
            for key in rest[..end].trim_end_matches('.').split('.') {
                node = node.get(key).unwrap_or_else(|| {
                    panic!(
                        "{}: .Values.{} is not in values.yaml",
                        path.display(),
                        &rest[..end]
                    )
                });
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "{checked} references");
    // The chart's appVersion is the workspace's version, the image tag it defaults to.
    let chart_yaml: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart.join("Chart.yaml")).unwrap()).unwrap();
    assert_eq!(
        chart_yaml["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );
}

/// The examples are what `kubectl create -f` takes, of the kinds a fake API server knows,
/// with no private key in them, and they route to Services they define.
#[test]
fn the_examples_are_valid_and_route_to_what_they_define() {
    let dir = repo().join("examples/kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "acme.yaml",
            "app.yaml",
            "migrated-from-ingress-nginx.yaml",
            "tls-secret.yaml"
        ]
    );
    let mut all = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(!text.contains("PRIVATE KEY"), "{}", path.display());
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for o in objects(&text, &name) {
            assert!(
                matches!(
                    o.kind(),
                    "Namespace"
                        | "Service"
                        | "EndpointSlice"
                        | "Ingress"
                        | "IngressClass"
                        | "Deployment"
                        | "ConfigMap"
                ),
                "{name}: {} is not a kind the examples use",
                o.kind()
            );
            assert_eq!(o.meta().namespace.as_deref(), Some("default"), "{name}");
            all.push((name.clone(), o));
        }
    }
    let ingresses: Vec<(&str, &Ingress)> = all
        .iter()
        .filter_map(|(f, o)| match o {
            Object::Ingress(i) => Some((f.as_str(), i)),
            _ => None,
        })
        .collect();
    let class = |i: &Ingress| i.spec.as_ref().unwrap().ingress_class_name.clone().unwrap();
    let annotations = |i: &Ingress| i.metadata.annotations.clone().unwrap_or_default();

    // Every backend is a Service of the examples, by a port it names, whose target is a
    // port of the pods it selects.
    for (file, ingress) in &ingresses {
        for rule in ingress.spec.as_ref().unwrap().rules.iter().flatten() {
            for path in &rule.http.as_ref().unwrap().paths {
                let backend = path.backend.service.as_ref().unwrap();
                let port = backend.port.as_ref().unwrap().name.clone().unwrap();
                let service = all
                    .iter()
                    .find_map(|(_, o)| match o {
                        Object::Service(s) if s.metadata.name.as_ref() == Some(&backend.name) => {
                            Some(s)
                        }
                        _ => None,
                    })
                    .unwrap_or_else(|| panic!("{file}: no Service {}", backend.name));
                let sp = service
                    .spec
                    .as_ref()
                    .unwrap()
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_ref() == Some(&port))
                    .unwrap_or_else(|| {
                        panic!("{file}: Service {} has no port {port}", backend.name)
                    });
                let target = sp.target_port.clone().unwrap();
                let selector = service.spec.as_ref().unwrap().selector.clone().unwrap();
                let pods = all
                    .iter()
                    .find_map(|(_, o)| match o {
                        Object::Deployment(d) => {
                            let t = &d.spec.as_ref().unwrap().template;
                            let labels = t.metadata.as_ref().unwrap().labels.clone().unwrap();
                            selector
                                .iter()
                                .all(|(k, v)| labels.get(k) == Some(v))
                                .then(|| t.spec.clone().unwrap())
                        }
                        _ => None,
                    })
                    .unwrap_or_else(|| panic!("{file}: no pods for Service {}", backend.name));
                let k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(target) =
                    target
                else {
                    panic!("{file}: name the target port")
                };
                assert!(
                    pods.containers[0]
                        .ports
                        .iter()
                        .flatten()
                        .any(|p| p.name.as_ref() == Some(&target))
                );
            }
        }
    }
    // Hosts served together never collide.
    let mut hosts = BTreeSet::new();
    for (file, ingress) in ingresses.iter().filter(|(_, i)| class(i) == "portcullis") {
        for rule in ingress.spec.as_ref().unwrap().rules.iter().flatten() {
            let host = rule.host.clone().unwrap();
            assert!(hosts.insert(host.clone()), "{file}: {host} twice");
        }
    }

    let by_file = |f: &str| -> Vec<&Ingress> {
        ingresses
            .iter()
            .filter(|(file, _)| *file == f)
            .map(|(_, i)| *i)
            .collect()
    };
    let app = by_file("app.yaml");
    assert_eq!(app.len(), 1);
    assert_eq!(class(app[0]), "portcullis");
    assert!(app[0].spec.as_ref().unwrap().tls.is_none(), "plain HTTP");

    for file in ["tls-secret.yaml", "acme.yaml"] {
        let i = by_file(file);
        assert_eq!(i.len(), 1, "{file}");
        let tls = i[0].spec.as_ref().unwrap().tls.clone().unwrap();
        assert!(tls[0].secret_name.is_some(), "{file}");
        assert_eq!(class(i[0]), "portcullis");
    }
    assert!(
        std::fs::read_to_string(dir.join("tls-secret.yaml"))
            .unwrap()
            .contains("kubectl create secret tls secure-example-tls --cert=")
    );
    let acme = annotations(by_file("acme.yaml")[0]);
    assert_eq!(
        acme.get("portcullis.dev/acme").map(String::as_str),
        Some("true")
    );

    let migrated = by_file("migrated-from-ingress-nginx.yaml");
    assert_eq!(migrated.len(), 2);
    let (nginx, ours) = (migrated[0], migrated[1]);
    assert_eq!(class(nginx), "nginx");
    assert_eq!(class(ours), "portcullis");
    assert_eq!(
        nginx.spec.as_ref().unwrap().rules,
        ours.spec.as_ref().unwrap().rules
    );
    assert_eq!(
        nginx.spec.as_ref().unwrap().tls,
        ours.spec.as_ref().unwrap().tls
    );
    let pairs = [
        ("ssl-redirect", "ssl-redirect"),
        ("proxy-body-size", "max-body-size"),
        ("proxy-read-timeout", "read-timeout"),
        ("backend-protocol", "backend-protocol"),
        ("whitelist-source-range", "allow-source-range"),
    ];
    let (n, o) = (annotations(nginx), annotations(ours));
    assert_eq!(n.len(), pairs.len());
    assert_eq!(o.len(), pairs.len());
    for (from, to) in pairs {
        assert!(
            n.contains_key(&format!("nginx.ingress.kubernetes.io/{from}")),
            "{from}"
        );
        assert!(o.contains_key(&format!("portcullis.dev/{to}")), "{to}");
    }
}

/// The Dockerfile cannot be built here (no Docker engine): its invariants are read.
#[test]
fn the_dockerfile_builds_locked_and_runs_unprivileged() {
    let root = repo();
    let text = std::fs::read_to_string(root.join("deploy/container/Dockerfile")).unwrap();
    // Instructions, continuation lines joined, comments left out.
    let mut lines: Vec<String> = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && pending.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => pending.push_str(part),
            None => {
                pending.push_str(line);
                lines.push(std::mem::take(&mut pending));
            }
        }
    }
    let stages: Vec<Vec<&String>> = lines.iter().fold(Vec::new(), |mut stages, l| {
        if l.to_ascii_uppercase().starts_with("FROM ") {
            stages.push(Vec::new());
        }
        if let Some(stage) = stages.last_mut() {
            stage.push(l);
        }
        stages
    });
    assert!(stages.len() >= 2, "multi-stage");
    let (build, last) = (&stages[0], stages.last().unwrap());
    let has = |stage: &Vec<&String>, s: &str| stage.iter().any(|l| l.contains(s));

    // The build: the pinned compiler, the lock file, and .cargo/ (tokio_unstable).
    let channel: toml_channel::Channel = toml_channel::read(&root.join("rust-toolchain.toml"));
    assert!(
        lines
            .iter()
            .any(|l| *l == format!("ARG RUST_VERSION={}", channel.0)),
        "the Rust release of rust-toolchain.toml ({})",
        channel.0
    );
    assert!(has(build, "cargo build --locked --release"));
    assert!(has(build, "COPY .cargo/ .cargo/"));
    // The workspace and the patched dependencies its `[patch.crates-io]` builds from.
    for member in ["Cargo.toml Cargo.lock", "crates/", "tests/", "vendor/"] {
        assert!(has(build, &format!("COPY {member}")), "COPY {member}");
    }
    let ignore =
        std::fs::read_to_string(root.join("deploy/container/Dockerfile.dockerignore")).unwrap();
    for kept in ["!.cargo/", "!vendor/"] {
        assert!(
            ignore.lines().any(|l| l == kept),
            "{kept} in the .dockerignore"
        );
    }

    // The image: the binary with its file capability, a numeric non-root user, no root.
    assert!(has(last, "COPY --from=build "));
    assert!(has(
        last,
        "setcap cap_net_bind_service=+ep /usr/local/bin/portcullis"
    ));
    let users: Vec<&str> = last
        .iter()
        .filter_map(|l| l.strip_prefix("USER "))
        .map(str::trim)
        .collect();
    assert!(!users.is_empty(), "a USER in the final stage");
    for user in &users {
        let name = user.split(':').next().unwrap();
        assert!(name != "root" && name != "0", "USER {user}");
    }
    let user = users.last().unwrap().split(':').next().unwrap();
    assert!(
        user.parse::<u32>().is_ok_and(|uid| uid != 0),
        "numeric, for runAsNonRoot: {user}"
    );
    // The uid Kubernetes runs it as.
    let deployment =
        std::fs::read_to_string(root.join("deploy/kubernetes/deployment.yaml")).unwrap();
    assert!(deployment.contains(&format!("runAsUser: {user}")));
    assert!(last.contains(&&r#"ENTRYPOINT ["portcullis"]"#.to_owned()));
    assert!(
        last.contains(&&r#"CMD ["ingress", "--config", "/etc/portcullis/config.yaml"]"#.to_owned())
    );
}

/// rust-toolchain.toml's `channel`, without a TOML parser.
mod toml_channel {
    pub struct Channel(pub String);

    pub fn read(path: &std::path::Path) -> Channel {
        let text = std::fs::read_to_string(path).unwrap();
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("channel"))
            .expect("channel = ...");
        let value = line.split('=').nth(1).unwrap().trim().trim_matches('"');
        Channel(value.to_owned())
    }
}

/// docs/kubernetes.md has its sections, a row for every RBAC rule and every Helm value.
#[test]
fn the_docs_describe_the_deployment() {
    let docs = std::fs::read_to_string(repo().join("docs/kubernetes.md")).unwrap();
    let headings: Vec<&str> = docs.lines().filter(|l| l.starts_with("## ")).collect();
    // The sections the issue asks for, in this order (others may come between them).
    let required = [
        "## Install",
        "## Classes",
        "## Annotations",
        "## TLS and ACME",
        "## Leader election and status",
        "## RBAC",
        "## Helm values",
        "## Container image",
        "## Migrating from ingress-nginx",
        "## Not supported yet",
    ];
    let mut at = headings.iter();
    for h in required {
        assert!(
            at.any(|x| *x == h),
            "{h} missing or out of order in {headings:?}"
        );
    }
    let section = |name: &str| -> &str {
        let start = docs.find(&format!("\n## {name}\n")).unwrap();
        let rest = &docs[start + 1..];
        let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3);
        &rest[..end]
    };
    for command in [
        "kubectl apply -k deploy/kubernetes",
        "helm install portcullis deploy/helm/portcullis -n portcullis --create-namespace",
    ] {
        assert!(section("Install").contains(command), "{command}");
        let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
        assert!(readme.contains(command), "README: {command}");
    }

    // Each rule: a table row naming its resources and verbs.
    let rbac = section("RBAC");
    for o in kustomized() {
        let rules = match o {
            Object::ClusterRole(r) => r.rules.unwrap(),
            Object::Role(r) => r.rules.unwrap(),
            _ => continue,
        };
        for rule in rules {
            for resource in rule.resources.unwrap() {
                let row = rbac
                    .lines()
                    .filter(|l| l.contains(&format!("| `{resource}`")))
                    .find(|l| rule.verbs.iter().all(|v| l.contains(v.as_str())))
                    .unwrap_or_else(|| panic!("RBAC: no row for {resource} {:?}", rule.verbs));
                for group in rule.api_groups.iter().flatten() {
                    let g = if group.is_empty() { "core" } else { group };
                    assert!(row.contains(g), "RBAC row {row}: group {g}");
                }
            }
        }
    }

    // Each value of values.yaml, by its path or, in a row of siblings, `.last`.
    let helm_values = section("Helm values");
    let values: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("deploy/helm/portcullis/values.yaml")).unwrap(),
    )
    .unwrap();
    let mut leaves = Vec::new();
    // Every leaf, and `resources` whole (it is given to Kubernetes as it is).
    fn walk(v: &serde_yaml::Value, path: String, out: &mut Vec<String>) {
        match v.as_mapping() {
            Some(m) if !m.is_empty() && path != "resources" => {
                for (k, v) in m {
                    let k = k.as_str().unwrap();
                    let p = if path.is_empty() {
                        k.to_owned()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(v, p, out);
                }
            }
            _ => out.push(path),
        }
    }
    walk(&values, String::new(), &mut leaves);
    for leaf in &leaves {
        let last = leaf.rsplit('.').next().unwrap();
        assert!(
            helm_values.contains(&format!("`{leaf}`"))
                || helm_values.contains(&format!("`.{last}`")),
            "Helm values: `{leaf}` is not described"
        );
    }
}

/// The calls `portcullis_cluster::KubeStore` makes (`cluster.store: kubernetes`), all in the
/// store's namespace; `crates/portcullis-cluster/tests/kube.rs` checks its calls are these.
const CLUSTER_STORE_CALLS: &[(&str, &str, &str)] = &[
    ("get", "", "secrets"),
    ("list", "", "secrets"),
    ("watch", "", "secrets"),
    ("create", "", "secrets"),
    ("update", "", "secrets"),
    ("delete", "", "secrets"),
    ("get", "coordination.k8s.io", "leases"),
    ("list", "coordination.k8s.io", "leases"),
    ("watch", "coordination.k8s.io", "leases"),
    ("create", "coordination.k8s.io", "leases"),
    ("update", "coordination.k8s.io", "leases"),
    ("delete", "coordination.k8s.io", "leases"),
];

/// The rules of the `*-cluster-store` Role bound to the service account `sa` (in
/// `sa_namespace`): in `store_namespace`, granting exactly [`CLUSTER_STORE_CALLS`].
fn check_cluster_store_rbac(
    objects: &[Object],
    store_namespace: &str,
    sa: &str,
    sa_namespace: &str,
) {
    let binding = objects
        .iter()
        .find_map(|o| match o {
            Object::RoleBinding(b)
                if b.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.ends_with("cluster-store")) =>
            {
                Some(b)
            }
            _ => None,
        })
        .expect("the cluster store's RoleBinding");
    assert_eq!(binding.metadata.namespace.as_deref(), Some(store_namespace));
    assert!(
        binding
            .subjects
            .iter()
            .flatten()
            .any(|s| s.kind == "ServiceAccount"
                && s.name == sa
                && s.namespace.as_deref() == Some(sa_namespace))
    );
    assert_eq!(binding.role_ref.kind, "Role");
    let role = objects
        .iter()
        .find_map(|o| match o {
            Object::Role(r)
                if r.metadata.name.as_deref() == Some(binding.role_ref.name.as_str()) =>
            {
                Some(r)
            }
            _ => None,
        })
        .expect("the cluster store's Role");
    assert_eq!(role.metadata.namespace.as_deref(), Some(store_namespace));
    let rules = role.rules.clone().unwrap_or_default();
    for &(verb, group, resource) in CLUSTER_STORE_CALLS {
        assert!(
            portcullis_k8s::rbac_allows(&rules, verb, group, resource, None),
            "{verb} {group}/{resource}"
        );
    }
    for rule in &rules {
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                for v in &rule.verbs {
                    assert!(
                        CLUSTER_STORE_CALLS.contains(&(v.as_str(), g.as_str(), r.as_str())),
                        "the cluster store's Role grants `{v}` on {g}/{r}, which the store never does"
                    );
                }
            }
        }
    }
}

#[test]
fn helm_grants_the_kubernetes_cluster_store_its_rbac_only_when_configured() {
    let plain = helm_objects("portcullis", json!({}));
    assert!(!plain.iter().any(|o| o.name().ends_with("cluster-store")));

    let values = json!({ "config": { "cluster": { "store": "kubernetes" } } });
    let objects = helm_objects("portcullis", values);
    check_cluster_store_rbac(&objects, NAMESPACE, "portcullis", NAMESPACE);
    let config = objects
        .iter()
        .find_map(|o| match o {
            Object::ConfigMap(c) => Some(c.data.clone().unwrap()["config.yaml"].clone()),
            _ => None,
        })
        .unwrap();
    let config: serde_yaml::Value = serde_yaml::from_str(&config).unwrap();
    assert_eq!(config["cluster"]["store"].as_str(), Some("kubernetes"));
    // The store's namespace is the release's unless the config names another.
    assert_eq!(
        config["cluster"]["kubernetes"]["namespace"].as_str(),
        Some(NAMESPACE)
    );

    let values = json!({ "config": { "cluster": { "store": "kubernetes", "kubernetes": { "namespace": "certs" } } } });
    let objects = helm_objects("edge", values);
    check_cluster_store_rbac(&objects, "certs", "edge-portcullis", NAMESPACE);
}

#[test]
fn the_kustomize_cluster_store_component_grants_the_store_its_rbac() {
    // An overlay of the base with the component, as docs/cluster.md tells users to write.
    let dir = tempfile::tempdir().unwrap();
    let repo = repo().canonicalize().unwrap();
    let up = "../".repeat(dir.path().components().count() - 1);
    let base = format!("{up}{}", repo.strip_prefix("/").unwrap().display());
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [{base}/deploy/kubernetes]\ncomponents: [{base}/deploy/kubernetes/cluster-store]\n"
        ),
    )
    .unwrap();
    let objects = objects(&kustomize(dir.path()), "the cluster-store overlay");
    check_cluster_store_rbac(&objects, NAMESPACE, "portcullis", NAMESPACE);
    // The base alone does not have it.
    assert!(
        !kustomized()
            .iter()
            .any(|o| o.name().ends_with("cluster-store"))
    );
}
