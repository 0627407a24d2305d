//! What an installation of the controller must be, whichever way it was rendered
//! (kustomize or Helm): the invariants docs/kubernetes.md promises.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Service};
use k8s_openapi::api::rbac::v1::PolicyRule;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use portcullis_k8s::{rbac_allows, rbac_allows_named};

use crate::objects::Object;

/// The API calls the controller makes (docs/kubernetes.md, RBAC): verb, group, resource,
/// subresource. `true`: only with ACME on.
pub const CLUSTER_CALLS: &[(&str, &str, &str, Option<&str>, bool)] = &[
    ("get", "networking.k8s.io", "ingressclasses", None, false),
    ("list", "networking.k8s.io", "ingressclasses", None, false),
    ("watch", "networking.k8s.io", "ingressclasses", None, false),
    ("get", "networking.k8s.io", "ingresses", None, false),
    ("list", "networking.k8s.io", "ingresses", None, false),
    ("watch", "networking.k8s.io", "ingresses", None, false),
    ("get", "", "services", None, false),
    ("list", "", "services", None, false),
    ("watch", "", "services", None, false),
    ("get", "discovery.k8s.io", "endpointslices", None, false),
    ("list", "discovery.k8s.io", "endpointslices", None, false),
    ("watch", "discovery.k8s.io", "endpointslices", None, false),
    ("get", "", "secrets", None, false),
    ("list", "", "secrets", None, false),
    ("watch", "", "secrets", None, false),
    (
        "update",
        "networking.k8s.io",
        "ingresses",
        Some("status"),
        false,
    ),
    (
        "patch",
        "networking.k8s.io",
        "ingresses",
        Some("status"),
        false,
    ),
    ("create", "", "secrets", None, true),
    ("update", "", "secrets", None, true),
    ("patch", "", "secrets", None, true),
    ("create", "", "events", None, false),
    ("patch", "", "events", None, false),
    ("create", "events.k8s.io", "events", None, false),
    ("patch", "events.k8s.io", "events", None, false),
];

/// What a rendering is expected to hold besides the invariants.
pub struct Expect<'a> {
    pub namespace: &'a str,
    pub replicas: i32,
    pub class: &'a str,
    pub default_class: bool,
    pub acme: bool,
}

/// Runs every check; returns the Deployment for more.
pub fn check_install(objects: &[Object], expect: &Expect) -> Deployment {
    for o in objects {
        let ns = o.meta().namespace.as_deref();
        if o.is_namespaced() {
            assert_eq!(ns, Some(expect.namespace), "{} {}", o.kind(), o.name());
        } else {
            assert_eq!(ns, None, "{} {} is cluster-wide", o.kind(), o.name());
        }
    }
    let deployments: Vec<&Deployment> = objects
        .iter()
        .filter_map(|o| match o {
            Object::Deployment(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(deployments.len(), 1, "one Deployment");
    let deployment = deployments[0];
    let spec = deployment.spec.as_ref().expect("Deployment spec");
    assert_eq!(spec.replicas, Some(expect.replicas));
    let pod = spec.template.spec.as_ref().expect("pod spec");
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    assert!(!selector.is_empty() && subset(&selector, &pod_labels));
    assert_eq!(pod.containers.len(), 1, "one container");
    let container = &pod.containers[0];

    check_ingress_class(objects, expect);
    check_security(pod, container);
    let args = Args::of(container, expect.namespace);
    let config = check_config(objects, pod, container, &args);
    check_probes(container, &config);
    check_services(objects, &pod_labels, container, &args, expect);
    check_pdb(objects, &pod_labels);
    check_rbac(objects, pod, &args, expect);
    deployment.clone()
}

fn subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}

fn check_ingress_class(objects: &[Object], expect: &Expect) {
    let classes: Vec<_> = objects
        .iter()
        .filter_map(|o| match o {
            Object::IngressClass(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(classes.len(), 1, "one IngressClass");
    let class = classes[0];
    assert_eq!(class.metadata.name.as_deref(), Some(expect.class));
    assert_eq!(
        class.spec.as_ref().and_then(|s| s.controller.as_deref()),
        Some("portcullis.dev/ingress-controller")
    );
    let default = class
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("ingressclass.kubernetes.io/is-default-class"))
        .map(String::as_str);
    assert_eq!(
        default,
        Some(if expect.default_class {
            "true"
        } else {
            "false"
        })
    );
}

/// Non-root, read-only, no privilege escalation, all capabilities dropped but
/// NET_BIND_SERVICE, the runtime's seccomp profile: the restricted Pod Security Standard.
fn check_security(pod: &PodSpec, container: &Container) {
    let pod_sc = pod.security_context.clone().unwrap_or_default();
    let sc = container
        .security_context
        .clone()
        .expect("container securityContext");
    assert_eq!(sc.run_as_non_root.or(pod_sc.run_as_non_root), Some(true));
    let uid = sc.run_as_user.or(pod_sc.run_as_user);
    assert!(
        uid.is_some_and(|u| u != 0),
        "a numeric non-root user: {uid:?}"
    );
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_ne!(sc.privileged, Some(true));
    let caps = sc.capabilities.expect("capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(caps.add, Some(vec!["NET_BIND_SERVICE".to_owned()]));
    let seccomp = sc.seccomp_profile.or(pod_sc.seccomp_profile.clone());
    assert_eq!(seccomp.map(|s| s.type_), Some("RuntimeDefault".to_owned()));
    assert_ne!(pod.host_network, Some(true));
    // Binding :80 and :443 without a capability the kernel would grant (no_new_privs).
    let sysctls = pod_sc.sysctls.unwrap_or_default();
    assert!(
        sysctls
            .iter()
            .any(|s| s.name == "net.ipv4.ip_unprivileged_port_start" && s.value == "0"),
        "{sysctls:?}"
    );
}

/// The container's arguments, with `$(VAR)` expanded as the kubelet does.
pub struct Args(Vec<String>);

impl Args {
    fn of(container: &Container, namespace: &str) -> Args {
        let env: BTreeMap<String, String> = container
            .env
            .iter()
            .flatten()
            .map(|e| {
                let value = match e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()) {
                    Some(f) if f.field_path == "metadata.namespace" => namespace.to_owned(),
                    Some(f) if f.field_path == "metadata.name" => "pod-0".to_owned(),
                    Some(f) => panic!("env {}: unexpected fieldRef {}", e.name, f.field_path),
                    None => e.value.clone().unwrap_or_default(),
                };
                (e.name.clone(), value)
            })
            .collect();
        for name in ["POD_NAMESPACE", "POD_NAME"] {
            assert!(env.contains_key(name), "env {name} from the downward API");
        }
        let args = container.args.clone().unwrap_or_default();
        assert_eq!(args.first().map(String::as_str), Some("ingress"));
        let expanded = args
            .iter()
            .map(|a| {
                let mut a = a.clone();
                for (k, v) in &env {
                    a = a.replace(&format!("$({k})"), v);
                }
                assert!(!a.contains("$("), "unexpanded variable in `{a}`");
                a
            })
            .collect();
        Args(expanded)
    }

    /// Every value of `--name` (`--name=v` or `--name v`).
    pub fn values(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut it = self.0.iter();
        while let Some(a) = it.next() {
            if let Some(v) = a.strip_prefix(&format!("{name}=")) {
                out.push(v.to_owned());
            } else if a == name {
                out.push(it.next().cloned().unwrap_or_default());
            }
        }
        out
    }

    pub fn value(&self, name: &str) -> Option<String> {
        let values = self.values(name);
        assert!(values.len() <= 1, "{name} given twice");
        values.into_iter().next()
    }
}

/// The base config as the controller will read it.
pub struct BaseConfig {
    pub yaml: serde_yaml::Value,
}

impl BaseConfig {
    fn addr(&self, section: &str, key: &str, default: &str) -> SocketAddr {
        let text = self.yaml[section][key].as_str().unwrap_or(default);
        text.parse()
            .unwrap_or_else(|e| panic!("{section}.{key}: `{text}`: {e}"))
    }
}

/// `--config` names a file of a ConfigMap volume; that file is a valid base config (no
/// `sites`), whose writable folders are on emptyDir volumes.
fn check_config(
    objects: &[Object],
    pod: &PodSpec,
    container: &Container,
    args: &Args,
) -> BaseConfig {
    let path = args.value("--config").expect("--config");
    let path = Path::new(&path);
    let mounts = container.volume_mounts.clone().unwrap_or_default();
    let volumes = pod.volumes.clone().unwrap_or_default();
    for m in &mounts {
        assert!(
            volumes.iter().any(|v| v.name == m.name),
            "mount {} has no volume",
            m.name
        );
    }
    let mount = mounts
        .iter()
        .find(|m| path.parent() == Some(Path::new(&m.mount_path)))
        .expect("--config is in a mounted folder");
    let volume = volumes
        .iter()
        .find(|v| v.name == mount.name)
        .expect("volume");
    let cm_name = &volume.config_map.as_ref().expect("a ConfigMap volume").name;
    let cm: &ConfigMap = objects
        .iter()
        .find_map(|o| match o {
            Object::ConfigMap(c) if c.metadata.name.as_ref() == Some(cm_name) => Some(c),
            _ => None,
        })
        .unwrap_or_else(|| panic!("ConfigMap {cm_name}"));
    let key = path.file_name().expect("a file").to_string_lossy();
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(key.as_ref()))
        .unwrap_or_else(|| panic!("ConfigMap {cm_name} has no key {key}"))
        .clone();
    // A valid base config, as `portcullis ingress --config` reads it: no sites.
    if let Err(e) = portcullis_config::parse_base(&text, Path::new("/etc/portcullis")) {
        panic!("base config {cm_name}/{key}: {:?}", e.problems());
    }
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    assert!(yaml.get("sites").is_none(), "the base config has no sites");
    let config = BaseConfig { yaml };

    // The root filesystem is read-only: what the gateway writes must be on an emptyDir.
    let writable: Vec<&str> = mounts
        .iter()
        .filter(|m| {
            volumes
                .iter()
                .any(|v| v.name == m.name && v.empty_dir.is_some())
        })
        .map(|m| m.mount_path.as_str())
        .collect();
    for (section, key) in [("", "storage"), ("tls", "local_ca_dir")] {
        let value = if section.is_empty() {
            &config.yaml[key]
        } else {
            &config.yaml[section][key]
        };
        let dir = value
            .as_str()
            .unwrap_or_else(|| panic!("{section}.{key} is set (the default is relative)"));
        assert!(
            writable.iter().any(|w| Path::new(dir).starts_with(w)),
            "{section}.{key} `{dir}` is not on an emptyDir ({writable:?})"
        );
    }
    // The listeners are the container's ports.
    let port = |name: &str| -> i32 {
        container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("container port {name}"))
            .container_port
    };
    assert_eq!(
        i32::from(config.addr("listen", "https", "0.0.0.0:443").port()),
        port("https")
    );
    assert_eq!(
        i32::from(config.addr("listen", "http", "0.0.0.0:80").port()),
        port("http")
    );
    let admin = config.addr("admin", "listen", "127.0.0.1:9901");
    assert_eq!(i32::from(admin.port()), port("admin"));
    // Probes and scrapes dial the pod's IP.
    assert!(
        admin.ip().is_unspecified(),
        "admin.listen `{admin}`: not reachable from the kubelet"
    );
    config
}

/// Readiness on /readyz, liveness on /healthz, both on the admin listener's port. The
/// kubelet sends `Host: <pod IP>:<port>`, which the admin listener accepts as its own
/// address (crates/portcullis/src/admin/access.rs) with no allowed_hosts entry.
fn check_probes(container: &Container, config: &BaseConfig) {
    let admin = config.addr("admin", "listen", "127.0.0.1:9901").port();
    for (probe, path) in [
        (&container.readiness_probe, "/readyz"),
        (&container.liveness_probe, "/healthz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("an httpGet probe on {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.scheme.as_deref().unwrap_or("HTTP"), "HTTP");
        assert!(get.host.is_none(), "the probe dials the pod's IP");
        assert!(
            get.http_headers
                .iter()
                .flatten()
                .all(|h| !h.name.eq_ignore_ascii_case("host")),
            "the probe sends the pod's IP as Host"
        );
        assert_eq!(
            resolve_port(container, &get.port),
            i32::from(admin),
            "{path} probe port"
        );
    }
}

fn resolve_port(container: &Container, port: &IntOrString) -> i32 {
    match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("no container port named {name}"))
                .container_port
        }
    }
}

fn services(objects: &[Object]) -> Vec<&Service> {
    objects
        .iter()
        .filter_map(|o| match o {
            Object::Service(s) => Some(s),
            _ => None,
        })
        .collect()
}

/// The LoadBalancer Service (80, 443, externalTrafficPolicy Local) is what
/// `--publish-service` names; the metrics Service reaches the admin port.
fn check_services(
    objects: &[Object],
    pod_labels: &BTreeMap<String, String>,
    container: &Container,
    args: &Args,
    expect: &Expect,
) {
    let services = services(objects);
    for s in &services {
        let spec = s.spec.as_ref().expect("Service spec");
        let selector = spec.selector.clone().unwrap_or_default();
        assert!(
            !selector.is_empty() && subset(&selector, pod_labels),
            "Service {:?} selects the controller's pods",
            s.metadata.name
        );
        for p in spec.ports.iter().flatten() {
            let target = p.target_port.clone().unwrap_or(IntOrString::Int(p.port));
            resolve_port(container, &target);
        }
    }
    let published = args.value("--publish-service").expect("--publish-service");
    let (ns, name) = published.split_once('/').expect("NS/NAME");
    assert_eq!(ns, expect.namespace);
    let lb = services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("--publish-service {published}: no such Service"));
    let spec = lb.spec.as_ref().expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
    let ports: BTreeMap<i32, i32> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            let target = p.target_port.clone().unwrap_or(IntOrString::Int(p.port));
            (p.port, resolve_port(container, &target))
        })
        .collect();
    assert_eq!(ports, BTreeMap::from([(80, 80), (443, 443)]));

    let metrics = services
        .iter()
        .find(|s| {
            s.spec.as_ref().is_some_and(|spec| {
                spec.ports
                    .iter()
                    .flatten()
                    .any(|p| p.target_port == Some(IntOrString::String("admin".into())))
            })
        })
        .expect("a Service for /metrics");
    assert_eq!(
        metrics.spec.as_ref().and_then(|s| s.type_.as_deref()),
        Some("ClusterIP")
    );
}

fn check_pdb(objects: &[Object], pod_labels: &BTreeMap<String, String>) {
    let pdbs: Vec<_> = objects
        .iter()
        .filter_map(|o| match o {
            Object::PodDisruptionBudget(p) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(pdbs.len(), 1, "one PodDisruptionBudget");
    let spec = pdbs[0].spec.as_ref().expect("spec");
    assert_eq!(spec.min_available, Some(IntOrString::Int(1)));
    let selector = spec
        .selector
        .as_ref()
        .and_then(|s| s.match_labels.clone())
        .unwrap_or_default();
    assert!(!selector.is_empty() && subset(&selector, pod_labels));
}

/// The rules bound to the controller's service account allow every call it makes and
/// nothing else.
fn check_rbac(objects: &[Object], pod: &PodSpec, args: &Args, expect: &Expect) {
    let sa = pod
        .service_account_name
        .clone()
        .expect("serviceAccountName");
    assert!(
        objects.iter().any(
            |o| matches!(o, Object::ServiceAccount(s) if s.metadata.name.as_ref() == Some(&sa))
        )
    );
    let is_ours = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount"
                && s.name == sa
                && s.namespace.as_deref() == Some(expect.namespace)
        })
    };
    let mut cluster_rules: Vec<PolicyRule> = Vec::new();
    let mut namespace_rules: Vec<PolicyRule> = Vec::new();
    for o in objects {
        match o {
            Object::ClusterRoleBinding(b) if is_ours(&b.subjects) => {
                assert_eq!(b.role_ref.kind, "ClusterRole");
                cluster_rules.extend(cluster_role(objects, &b.role_ref.name));
            }
            Object::RoleBinding(b) if is_ours(&b.subjects) => {
                assert_eq!(
                    b.role_ref.kind, "Role",
                    "no cluster-wide role bound per namespace"
                );
                let role = objects
                    .iter()
                    .find_map(|o| match o {
                        Object::Role(r) if r.metadata.name == Some(b.role_ref.name.clone()) => {
                            Some(r)
                        }
                        _ => None,
                    })
                    .unwrap_or_else(|| panic!("Role {}", b.role_ref.name));
                assert_eq!(role.metadata.namespace.as_deref(), Some(expect.namespace));
                namespace_rules.extend(role.rules.clone().unwrap_or_default());
            }
            _ => {}
        }
    }
    for rule in cluster_rules.iter().chain(&namespace_rules) {
        for list in [
            rule.api_groups.as_ref(),
            rule.resources.as_ref(),
            Some(&rule.verbs),
        ] {
            assert!(
                !list.into_iter().flatten().any(|s| s.contains('*')),
                "no wildcards: {rule:?}"
            );
        }
        assert!(rule.non_resource_urls.is_none(), "{rule:?}");
    }

    // Every call the controller makes is allowed...
    for &(verb, group, resource, sub, acme_only) in CLUSTER_CALLS {
        let allowed = rbac_allows(&cluster_rules, verb, group, resource, sub);
        let needed = !acme_only || expect.acme;
        assert_eq!(
            allowed, needed,
            "{verb} {group}/{resource} {sub:?}: allowed {allowed}, needed {needed}"
        );
    }
    let election = args
        .value("--election-id")
        .unwrap_or_else(|| "portcullis-leader".to_owned());
    let lease = |verb, name| {
        rbac_allows_named(
            &namespace_rules,
            verb,
            "coordination.k8s.io",
            "leases",
            None,
            name,
        )
    };
    assert!(lease("create", None), "create the Lease");
    assert!(
        lease("get", Some(election.as_str())),
        "read Lease {election}"
    );
    assert!(
        lease("update", Some(election.as_str())),
        "renew Lease {election}"
    );
    assert!(!lease("update", Some("someone-elses-lease")));
    assert!(!lease("delete", Some(election.as_str())));

    // ... and nothing else: every (verb, group, resource) a rule grants is one of them.
    let needed: BTreeSet<(String, String, String)> = CLUSTER_CALLS
        .iter()
        .filter(|c| !c.4 || expect.acme)
        .map(|&(v, g, r, s, _)| {
            let r = s.map_or(r.to_owned(), |s| format!("{r}/{s}"));
            (v.to_owned(), g.to_owned(), r)
        })
        .collect();
    for (v, g, r) in grants(&cluster_rules) {
        assert!(
            needed.contains(&(v.clone(), g.clone(), r.clone())),
            "ClusterRole grants `{v}` on {g}/{r}, which the controller never does"
        );
    }
    for (v, g, r) in grants(&namespace_rules) {
        assert!(
            g == "coordination.k8s.io"
                && r == "leases"
                && ["get", "create", "update"].contains(&v.as_str()),
            "Role grants `{v}` on {g}/{r}, which the controller never does"
        );
    }
    // Secrets are the sensitive part: readable and writable, never deletable.
    for verb in ["delete", "deletecollection"] {
        assert!(!rbac_allows(&cluster_rules, verb, "", "secrets", None));
    }
    assert!(!rbac_allows(
        &cluster_rules,
        "update",
        "networking.k8s.io",
        "ingresses",
        None
    ));
    assert!(!rbac_allows(
        &cluster_rules,
        "get",
        "coordination.k8s.io",
        "leases",
        None
    ));
}

fn cluster_role(objects: &[Object], name: &str) -> Vec<PolicyRule> {
    objects
        .iter()
        .find_map(|o| match o {
            Object::ClusterRole(r) if r.metadata.name.as_deref() == Some(name) => {
                assert!(r.aggregation_rule.is_none());
                Some(r.rules.clone().unwrap_or_default())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("ClusterRole {name}"))
}

/// Every (verb, group, resource) the rules name.
fn grants(rules: &[PolicyRule]) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for rule in rules {
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                for v in &rule.verbs {
                    out.push((v.clone(), g.clone(), r.clone()));
                }
            }
        }
    }
    out
}
