//! Small builders for the Kubernetes objects the tests translate.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressClass, IngressClassSpec,
    IngressRule, IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use portcullis_config::{Action, Config, Origin, Route, Site};

use crate::{ObjectKey, Options, Snapshot, Translated, translate};

pub fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: (!ns.is_empty()).then(|| ns.to_owned()),
        name: Some(name.to_owned()),
        ..ObjectMeta::default()
    }
}

pub fn key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey {
        namespace: ns.to_owned(),
        name: name.to_owned(),
    }
}

/// A port reference: a number or a name.
pub enum Port {
    Number(i32),
    Name(&'static str),
}

impl From<i32> for Port {
    fn from(n: i32) -> Self {
        Port::Number(n)
    }
}

impl From<&'static str> for Port {
    fn from(n: &'static str) -> Self {
        Port::Name(n)
    }
}

pub fn backend(service: &str, port: impl Into<Port>) -> IngressBackend {
    let port = match port.into() {
        Port::Number(n) => ServiceBackendPort {
            number: Some(n),
            name: None,
        },
        Port::Name(n) => ServiceBackendPort {
            number: None,
            name: Some(n.to_owned()),
        },
    };
    IngressBackend {
        service: Some(IngressServiceBackend {
            name: service.to_owned(),
            port: Some(port),
        }),
        resource: None,
    }
}

pub fn path(p: &str, path_type: &str, service: &str, port: impl Into<Port>) -> HTTPIngressPath {
    HTTPIngressPath {
        path: Some(p.to_owned()),
        path_type: path_type.to_owned(),
        backend: backend(service, port),
    }
}

pub fn prefix(p: &str, service: &str) -> HTTPIngressPath {
    path(p, "Prefix", service, 80)
}

/// An Ingress of class `portcullis`, created at second 0 unless told otherwise.
pub struct IngressBuilder(pub Ingress);

pub fn ingress(ns: &str, name: &str) -> IngressBuilder {
    IngressBuilder(Ingress {
        metadata: ObjectMeta {
            creation_timestamp: Some(time(0)),
            ..meta(ns, name)
        },
        spec: Some(IngressSpec {
            ingress_class_name: Some("portcullis".to_owned()),
            ..IngressSpec::default()
        }),
        status: None,
    })
}

pub fn time(secs: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + secs).unwrap())
}

impl IngressBuilder {
    fn spec(&mut self) -> &mut IngressSpec {
        self.0.spec.get_or_insert_with(IngressSpec::default)
    }

    pub fn class(mut self, class: Option<&str>) -> Self {
        self.spec().ingress_class_name = class.map(str::to_owned);
        self
    }

    pub fn created(mut self, secs: i64) -> Self {
        self.0.metadata.creation_timestamp = Some(time(secs));
        self
    }

    pub fn annotation(mut self, k: &str, v: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(k.to_owned(), v.to_owned());
        self
    }

    pub fn rule(mut self, host: Option<&str>, paths: Vec<HTTPIngressPath>) -> Self {
        self.spec()
            .rules
            .get_or_insert_with(Vec::new)
            .push(IngressRule {
                host: host.map(str::to_owned),
                http: Some(HTTPIngressRuleValue { paths }),
            });
        self
    }

    pub fn tls(mut self, hosts: &[&str], secret: Option<&str>) -> Self {
        self.spec()
            .tls
            .get_or_insert_with(Vec::new)
            .push(IngressTLS {
                hosts: (!hosts.is_empty()).then(|| hosts.iter().map(|h| (*h).to_owned()).collect()),
                secret_name: secret.map(str::to_owned),
            });
        self
    }

    pub fn default_backend(mut self, service: &str, port: impl Into<Port>) -> Self {
        self.spec().default_backend = Some(backend(service, port));
        self
    }

    pub fn build(self) -> Ingress {
        self.0
    }
}

pub fn class(name: &str, controller: &str, default: bool) -> IngressClass {
    let mut metadata = meta("", name);
    if default {
        metadata.annotations = Some(BTreeMap::from([(
            "ingressclass.kubernetes.io/is-default-class".to_owned(),
            "true".to_owned(),
        )]));
    }
    IngressClass {
        metadata,
        spec: Some(IngressClassSpec {
            controller: Some(controller.to_owned()),
            parameters: None,
        }),
    }
}

pub fn our_class() -> IngressClass {
    class("portcullis", "portcullis.dev/ingress-controller", false)
}

/// A ClusterIP Service with these (name, port) ports.
pub fn service(ns: &str, name: &str, ports: &[(Option<&str>, i32)]) -> Service {
    Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.10".to_owned()),
            type_: Some("ClusterIP".to_owned()),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| ServicePort {
                        name: n.map(str::to_owned),
                        port: *p,
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

pub fn external_service(ns: &str, name: &str, external: &str, port: i32) -> Service {
    let mut s = service(ns, name, &[(None, port)]);
    let spec = s.spec.as_mut().unwrap();
    spec.type_ = Some("ExternalName".to_owned());
    spec.external_name = Some(external.to_owned());
    spec.cluster_ip = None;
    s
}

/// An endpoint: address, ready, terminating.
pub type Ep<'a> = (&'a str, Option<bool>, Option<bool>);

pub fn ready(ip: &str) -> Ep<'_> {
    (ip, None, None)
}

pub fn slice(
    ns: &str,
    name: &str,
    service: &str,
    ports: &[(Option<&str>, i32)],
    endpoints: &[Ep<'_>],
) -> EndpointSlice {
    let mut metadata = meta(ns, name);
    metadata.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".to_owned(),
        service.to_owned(),
    )]));
    let address_type = if endpoints.iter().any(|e| e.0.contains(':')) {
        "IPv6"
    } else {
        "IPv4"
    };
    EndpointSlice {
        metadata,
        address_type: address_type.to_owned(),
        ports: Some(
            ports
                .iter()
                .map(|(n, p)| EndpointPort {
                    name: n.map(str::to_owned),
                    port: Some(*p),
                    ..EndpointPort::default()
                })
                .collect(),
        ),
        endpoints: endpoints
            .iter()
            .map(|(ip, ready, terminating)| Endpoint {
                addresses: vec![(*ip).to_owned()],
                conditions: Some(EndpointConditions {
                    ready: *ready,
                    serving: None,
                    terminating: *terminating,
                }),
                ..Endpoint::default()
            })
            .collect(),
    }
}

/// A self-signed certificate and its key, PEM.
pub fn cert_pem(names: &[&str]) -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(
        names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
    )
    .unwrap();
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

pub fn secret_with(ns: &str, name: &str, type_: &str, data: &[(&str, &[u8])]) -> Secret {
    Secret {
        metadata: meta(ns, name),
        type_: Some(type_.to_owned()),
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// A valid `kubernetes.io/tls` Secret for `names`.
pub fn tls_secret(ns: &str, name: &str, names: &[&str]) -> Secret {
    let (crt, key) = cert_pem(names);
    secret_with(
        ns,
        name,
        "kubernetes.io/tls",
        &[("tls.crt", crt.as_bytes()), ("tls.key", key.as_bytes())],
    )
}

pub fn base() -> Config {
    portcullis_config::parse_base("", Path::new("/tmp")).unwrap()
}

/// A snapshot with our class, Service `web` (port 80 named http, 8443 https) in `default`
/// with two ready endpoints, and the given Ingresses.
pub fn world(ingresses: Vec<Ingress>) -> Snapshot {
    Snapshot {
        ingress_classes: vec![our_class().into()],
        ingresses: ingresses.into_iter().map(Into::into).collect(),
        services: vec![
            service(
                "default",
                "web",
                &[(Some("http"), 80), (Some("https"), 8443)],
            )
            .into(),
        ],
        endpoint_slices: vec![
            slice(
                "default",
                "web-abc",
                "web",
                &[(Some("http"), 8080), (Some("https"), 8443)],
                &[ready("10.0.0.2"), ready("10.0.0.1")],
            )
            .into(),
        ],
        secrets: Vec::new(),
    }
}

pub fn run(snapshot: &Snapshot) -> Translated {
    run_with(snapshot, &Options::default())
}

pub fn run_with(snapshot: &Snapshot, options: &Options) -> Translated {
    let t = translate(&base(), snapshot, options);
    super::invariants(&t.config);
    t
}

pub fn site<'a>(t: &'a Translated, name: &str) -> &'a Site {
    t.config
        .sites
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no site {name}: {:?}", names(t)))
}

pub fn names(t: &Translated) -> Vec<&str> {
    t.config.sites.iter().map(|s| s.name.as_str()).collect()
}

pub fn default_site(t: &Translated) -> &Site {
    t.config.sites.iter().find(|s| s.default).unwrap()
}

pub fn route<'a>(site: &'a Site, path: &str) -> &'a Route {
    site.routes
        .iter()
        .find(|r| r.path == path)
        .unwrap_or_else(|| panic!("no route {path} in {}", site.name))
}

pub fn origin(action: &Action) -> &Origin {
    match action {
        Action::Proxy(o) => o,
        other => panic!("not a proxy: {other:?}"),
    }
}

/// The servers' URLs of a route's origin.
pub fn servers(route: &Route) -> Vec<&str> {
    origin(&route.action)
        .servers
        .iter()
        .map(|s| s.url.as_str())
        .collect()
}

pub fn problems(t: &Translated) -> Vec<String> {
    t.problems.iter().map(ToString::to_string).collect()
}

/// Panics unless some problem's text contains `needle`.
pub fn assert_problem(t: &Translated, needle: &str) {
    let all = problems(t);
    assert!(
        all.iter().any(|p| p.contains(needle)),
        "no problem contains {needle:?}; problems: {all:#?}"
    );
}
