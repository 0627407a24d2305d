//! The ingress controller at scale, against the fake API server: a benchmark, not a test
//! (CI does not run it; `bench/kubernetes.sh` does, and docs/performance.md has its figures).
//!
//! Loads N Ingresses (two hosts each, each host its own Service and EndpointSlice, one TLS
//! Secret per Ingress) into the fake API server, starts `portcullis ingress` on it, and
//! measures:
//! - start → `/readyz` 200 (the first full sync published) and → the first and last host
//!   served (target: under 3 s);
//! - one Ingress changed → the change served (target: under 1 s), several times;
//! - the controller's resident memory after the sync and its peak (target: under 400 MB).
//!
//! ```text
//! cargo build --release -p portcullis
//! cargo run --release -p portcullis-tests --example k8s_scale -- \
//!     --binary target/release/portcullis --ingresses 5000
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    missing_docs,
    reason = "a benchmark program: a failure is a panic with its message"
)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressClass, IngressClassSpec,
    IngressRule, IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use portcullis_tests::{FakeApiServer, GatewayProcess, TestCa, TestClient, TestOrigin};

const NAMESPACES: usize = 50;
const CHANGES: usize = 7;

struct Args {
    binary: PathBuf,
    ingresses: usize,
    logs: bool,
}

fn args() -> Args {
    let mut out = Args {
        binary: PathBuf::from("target/release/portcullis"),
        ingresses: 5000,
        logs: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--binary" => out.binary = PathBuf::from(it.next().expect("--binary PATH")),
            "--ingresses" => {
                out.ingresses = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--ingresses N")
            }
            "--logs" => out.logs = true,
            "--help" | "-h" => {
                println!(
                    "usage: k8s_scale [--binary PATH] [--ingresses N (default 5000)] \
                     [--logs (print the controller's log at the end)]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}; see --help"),
        }
    }
    out
}

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: (!ns.is_empty()).then(|| ns.to_owned()),
        name: Some(name.to_owned()),
        ..ObjectMeta::default()
    }
}

fn host(j: usize) -> String {
    format!("h{j}.bench.test")
}

fn ns_of(ingress: usize) -> String {
    format!("ns-{}", ingress % NAMESPACES)
}

fn rule(host: String, service: String, path: &str, path_type: &str) -> IngressRule {
    IngressRule {
        host: Some(host),
        http: Some(HTTPIngressRuleValue {
            paths: vec![HTTPIngressPath {
                path: Some(path.to_owned()),
                path_type: path_type.to_owned(),
                backend: IngressBackend {
                    service: Some(IngressServiceBackend {
                        name: service,
                        port: Some(ServiceBackendPort {
                            number: Some(80),
                            ..ServiceBackendPort::default()
                        }),
                    }),
                    ..IngressBackend::default()
                },
            }],
        }),
    }
}

fn ingress(i: usize) -> Ingress {
    let (a, b) = (2 * i, 2 * i + 1);
    Ingress {
        metadata: meta(&ns_of(i), &format!("ing-{i}")),
        spec: Some(IngressSpec {
            ingress_class_name: Some("portcullis".into()),
            tls: Some(vec![IngressTLS {
                hosts: Some(vec![host(a), host(b)]),
                secret_name: Some(format!("tls-{i}")),
            }]),
            rules: Some(vec![
                rule(host(a), format!("svc-{a}"), "/", "Prefix"),
                rule(host(b), format!("svc-{b}"), "/", "Prefix"),
            ]),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    }
}

fn service(ns: &str, j: usize) -> Service {
    Service {
        metadata: meta(ns, &format!("svc-{j}")),
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::Int(8080)),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Two ready endpoints; the first and last Services' are the one real origin.
fn slice(ns: &str, j: usize, origin_port: Option<u16>) -> EndpointSlice {
    let mut m = meta(ns, &format!("svc-{j}-x7k2p"));
    m.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".to_owned(),
        format!("svc-{j}"),
    )]));
    let addresses: Vec<String> = match origin_port {
        Some(_) => vec!["127.0.0.1".into()],
        None => vec![
            format!("10.{}.{}.{}", j >> 16 & 255, j >> 8 & 255, j & 255),
            format!("10.{}.{}.{}", 128 | (j >> 16 & 127), j >> 8 & 255, j & 255),
        ],
    };
    EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        endpoints: addresses
            .into_iter()
            .map(|a| Endpoint {
                addresses: vec![a],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                ..Endpoint::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(i32::from(origin_port.unwrap_or(8080))),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
    }
}

fn secret(ns: &str, i: usize, ca: &TestCa) -> Secret {
    let (a, b) = (host(2 * i), host(2 * i + 1));
    let leaf = ca.leaf(&[&a, &b]);
    Secret {
        metadata: meta(ns, &format!("tls-{i}")),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("tls.crt".to_owned(), ByteString(leaf.cert_pem.into_bytes())),
            ("tls.key".to_owned(), ByteString(leaf.key_pem.into_bytes())),
        ])),
        ..Secret::default()
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let a = args();
    assert!(
        a.binary.exists(),
        "{} is missing: cargo build --release -p portcullis",
        a.binary.display()
    );
    let n = a.ingresses;
    let hosts = 2 * n;
    let origin = TestOrigin::http().await;
    let origin_port = origin.addr.port();
    let ca = TestCa::new("k8s-scale CA");
    let api = FakeApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();

    let setup = Instant::now();
    api.create(&IngressClass {
        metadata: meta("", "portcullis"),
        spec: Some(IngressClassSpec {
            controller: Some("portcullis.dev/ingress-controller".into()),
            ..IngressClassSpec::default()
        }),
    });
    for k in 0..NAMESPACES {
        api.create(&Namespace {
            metadata: meta("", &format!("ns-{k}")),
            ..Namespace::default()
        });
    }
    for i in 0..n {
        let ns = ns_of(i);
        for j in [2 * i, 2 * i + 1] {
            api.create(&service(&ns, j));
            let real = j == 0 || j == hosts - 1;
            api.create(&slice(&ns, j, real.then_some(origin_port)));
        }
        api.create(&secret(&ns, i, &ca));
        api.create(&ingress(i));
    }
    println!(
        "k8s-scale: {n} Ingresses, {hosts} hosts, {hosts} Services and EndpointSlices, {n} TLS Secrets \
         (loaded into the fake API server in {:.1} s)",
        setup.elapsed().as_secs_f64()
    );

    let kubeconfig = api.write_kubeconfig(dir.path());
    let base = dir.path().join("base.yaml");
    std::fs::write(
        &base,
        format!(
            "listen:\n  https: 127.0.0.1:0\n  http: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n\
             storage: {}\ntls:\n  local_ca_dir: {}\n",
            dir.path().join("data").display(),
            dir.path().join("ca").display()
        ),
    )
    .unwrap();

    let start = Instant::now();
    let gw = GatewayProcess::spawn(
        &a.binary,
        &[
            "ingress",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--config",
            base.to_str().unwrap(),
            "--election-id",
            "k8s-scale",
            "--namespace",
            "default",
        ],
    );
    let admin = gw.admin.expect("the base config has an admin listener");
    let limit = Duration::from_secs(120);
    loop {
        let r = portcullis_tests::plain::send(
            admin,
            "GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await;
        if r.status == 200 {
            break;
        }
        assert!(start.elapsed() < limit, "not ready after {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ready = start.elapsed();
    let client = TestClient::new(gw.https, &ca.root_der);
    let mut served = Vec::new();
    for h in [host(0), host(hosts - 1)] {
        loop {
            let ok = match client.connect(&h, &["http/1.1"]).await {
                Ok(mut conn) => conn.get(&h, "/").await.status == 200,
                Err(_) => false,
            };
            if ok {
                break;
            }
            assert!(start.elapsed() < limit, "{h} not served after {limit:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        served.push(start.elapsed());
    }
    let rss_synced = gw.rss_kib();
    println!(
        "start → /readyz 200 (first full sync published): {}   [target {}]",
        ms(ready),
        // docs/performance.md: 5,000 Ingresses (issue 19), 50,000 (issue 27).
        if n >= 50_000 {
            "at 50,000 Ingresses < 10 s"
        } else {
            "at 5,000 Ingresses < 3 s"
        }
    );
    println!(
        "start → first host served: {}, last host served: {}",
        ms(served[0]),
        ms(served[1])
    );

    // One Ingress at a time gains a host served over plain HTTP (it has no TLS entry):
    // before the change the plain listener redirects it, after it the origin answers.
    let http = gw.http.expect("the base config has a plain HTTP listener");
    let mut changes = Vec::with_capacity(CHANGES);
    for k in 0..CHANGES {
        let i = (k * (n / CHANGES).max(1) / NAMESPACES) * NAMESPACES;
        let new_host = format!("changed-{k}.bench.test");
        let before = portcullis_tests::plain::get(http, &new_host, "/").await;
        assert_ne!(before.status, 200, "{new_host} served before the change");
        let mut ing = api
            .get::<Ingress>(&ns_of(i), &format!("ing-{i}"))
            .expect("the Ingress exists");
        let spec = ing.spec.as_mut().unwrap();
        spec.rules.as_mut().unwrap().push(rule(
            new_host.clone(),
            format!("svc-{}", 2 * i),
            "/",
            "Prefix",
        ));
        // The new host's Service is the real origin.
        let mut svc_slice = api
            .get::<EndpointSlice>(&ns_of(i), &format!("svc-{}-x7k2p", 2 * i))
            .unwrap();
        if i != 0 {
            svc_slice = EndpointSlice {
                metadata: svc_slice.metadata,
                ..slice(&ns_of(i), 2 * i, Some(origin_port))
            };
            api.replace(&svc_slice);
            // Let the endpoint change settle so only the Ingress change is timed.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let t = Instant::now();
        api.replace(&ing);
        loop {
            if portcullis_tests::plain::get(http, &new_host, "/")
                .await
                .status
                == 200
            {
                break;
            }
            assert!(t.elapsed() < limit, "{new_host} not served after {limit:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        changes.push(t.elapsed());
    }
    println!(
        "one Ingress change → served: median {}   [target at 5,000 Ingresses < 1 s] (runs: {})",
        ms(median(changes.clone())),
        changes
            .iter()
            .map(|d| ms(*d))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let metrics = portcullis_tests::plain::send(
        admin,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    let series = metrics
        .body()
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    println!(
        "/metrics after the changes: {series} series, {} KiB",
        metrics.body().len() / 1024
    );
    println!(
        "controller RSS after the sync: {:.0} MB, after the changes: {:.0} MB, peak: {:.0} MB   [target at 5,000 Ingresses < 400 MB]",
        rss_synced as f64 / 1024.0,
        gw.rss_kib() as f64 / 1024.0,
        gw.peak_rss_kib() as f64 / 1024.0
    );
    if a.logs {
        for line in gw.logs() {
            println!("log: {line}");
        }
    }
}
