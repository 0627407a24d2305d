//! The binary against the fake API server: `portcullis check --kubernetes` (the summary,
//! each problem by object and field, unsupported annotations, the exit status) and
//! `portcullis ingress` as a process (ready after its first sync, serving, stopped by
//! SIGTERM).
#![allow(clippy::unwrap_used)]
#![allow(
    clippy::disallowed_methods,
    reason = "drives the binary as a process and writes its fixtures: blocking is what it means"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use portcullis_tests::wait::until;
use portcullis_tests::{FakeApiServer, GatewayProcess, TestCa, TestClient, TestOrigin};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn from<K: for<'de> k8s_openapi::serde::Deserialize<'de>>(v: Value) -> K {
    serde_json::from_value(v).unwrap()
}

/// Our IngressClass, Service `shop` (port 80 named `web`) with one endpoint on
/// `127.0.0.1:port`, and Ingress `shop` for `shop.test` with `paths` (path, port name).
fn cluster(api: &FakeApiServer, port: u16, paths: &[(&str, &str)], annotations: Value) {
    api.create::<IngressClass>(&from(json!({
        "metadata": {"name": "portcullis"},
        "spec": {"controller": "portcullis.dev/ingress-controller"}
    })));
    api.create::<Service>(&from(json!({
        "metadata": {"name": "shop", "namespace": "default"},
        "spec": {"ports": [{"name": "web", "port": 80, "targetPort": "web"}]}
    })));
    api.create::<EndpointSlice>(&from(json!({
        "metadata": {"name": "shop-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "shop"}},
        "addressType": "IPv4",
        "ports": [{"name": "web", "port": port}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]
    })));
    api.create::<Ingress>(&from(json!({
        "metadata": {"name": "shop", "namespace": "default", "annotations": annotations},
        "spec": {
            "ingressClassName": "portcullis",
            "tls": [{"hosts": ["shop.test"], "secretName": "shop-tls"}],
            "rules": [{"host": "shop.test", "http": {"paths": paths.iter().map(|(p, port)| json!({
                "path": p, "pathType": "Prefix",
                "backend": {"service": {"name": "shop", "port": {"name": port}}}
            })).collect::<Vec<_>>()}}]
        }
    })));
}

fn tls_secret(api: &FakeApiServer, ca: &TestCa) {
    let leaf = ca.leaf(&["shop.test"]);
    api.create::<Secret>(&from(json!({
        "metadata": {"name": "shop-tls", "namespace": "default"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem}
    })));
}

/// Runs `portcullis args...` to completion off the runtime: exit code and stdout.
async fn run(args: Vec<String>) -> (Option<i32>, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(BIN)
            .args(&args)
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn kubeconfig(api: &FakeApiServer, dir: &Path) -> String {
    api.write_kubeconfig(dir).display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn check_kubernetes_names_each_problem_by_object_and_field_and_exits_non_zero() {
    let api = FakeApiServer::start().await;
    let ca = TestCa::new("check CA");
    let dir = tempfile::tempdir().unwrap();
    cluster(
        &api,
        8080,
        &[("/a", "web"), ("/b", "http")],
        json!({"nginx.ingress.kubernetes.io/configuration-snippet": "return 200;"}),
    );
    tls_secret(&api, &ca);
    let k = kubeconfig(&api, dir.path());
    let (code, out, err) = run(vec![
        "check".into(),
        "--kubernetes".into(),
        "--kubeconfig".into(),
        k,
    ])
    .await;
    assert_eq!(code, Some(2), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.lines().any(|l| l
            == "ingress default/shop: rules[0].http.paths[1].backend.service.port: service shop has no port named http"),
        "{out}"
    );
    assert!(out.contains("site "), "the summary: {out}");
    assert!(out.contains("route /a"), "the valid path is served: {out}");
    assert!(
        out.contains(
            "ingress default/shop: annotation nginx.ingress.kubernetes.io/configuration-snippet is not supported"
        ),
        "{out}"
    );
    assert!(out.contains("1 problem"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_kubernetes_of_a_clean_cluster_exits_zero_and_a_missing_kubeconfig_is_named() {
    let api = FakeApiServer::start().await;
    let ca = TestCa::new("check CA");
    let dir = tempfile::tempdir().unwrap();
    cluster(&api, 8080, &[("/", "web")], json!({}));
    tls_secret(&api, &ca);
    let k = kubeconfig(&api, dir.path());
    let (code, out, err) = run(vec![
        "check".into(),
        "--kubernetes".into(),
        "--kubeconfig".into(),
        k,
    ])
    .await;
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("0 problems"), "{out}");

    let (code, _, err) = run(vec![
        "check".into(),
        "--kubernetes".into(),
        "--kubeconfig".into(),
        "/nonexistent/kubeconfig".into(),
    ])
    .await;
    assert_eq!(code, Some(1));
    assert!(err.contains("kubeconfig /nonexistent/kubeconfig"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ingress_process_is_ready_after_its_first_sync_serves_and_stops_on_sigterm() {
    let api = FakeApiServer::start().await;
    let ca = TestCa::new("ingress CA");
    let pod = TestOrigin::http().await;
    let dir = tempfile::tempdir().unwrap();
    cluster(&api, pod.addr.port(), &[("/", "web")], json!({}));
    tls_secret(&api, &ca);
    let base: PathBuf = dir.path().join("base.yaml");
    std::fs::write(
        &base,
        format!(
            "listen: {{https: 127.0.0.1:0, http: 127.0.0.1:0}}\nadmin: {{listen: 127.0.0.1:0}}\nstorage: {}\n",
            dir.path().join("storage").display()
        ),
    )
    .unwrap();
    let args = [
        "ingress".to_owned(),
        "--kubeconfig".to_owned(),
        kubeconfig(&api, dir.path()),
        "--config".to_owned(),
        base.display().to_string(),
        "--namespace".to_owned(),
        "default".to_owned(),
    ];
    let mut gw = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        GatewayProcess::spawn(Path::new(BIN), &args)
    })
    .await
    .unwrap();
    let admin = gw.admin.unwrap();
    until(Duration::from_secs(15), "/readyz 200", || async {
        let r = portcullis_tests::plain::get(admin, "localhost", "/readyz").await;
        (r.status == 200).then_some(())
    })
    .await;
    let client = TestClient::new(gw.https, &ca.root_der);
    let resp = client.get("shop.test", "/hello").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "ok GET /hello");
    // The sync's log line says how long translating and applying took.
    let synced = gw
        .logs()
        .into_iter()
        .find(|l| l.contains("kubernetes sync applied"))
        .expect("the first sync is logged");
    let line: serde_json::Value = serde_json::from_str(&synced).unwrap();
    for field in ["translate_ms", "apply_ms"] {
        assert!(line[field].as_f64().is_some(), "{field} in {synced}");
    }

    gw.signal("TERM");
    let status = tokio::task::spawn_blocking(move || gw.wait(Duration::from_secs(20)))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// Two `portcullis ingress` processes with a 2 s Lease: one leads and writes the Ingress
/// status; SIGKILL it (no release, as a crashed pod) and the other takes over and writes its
/// own within the lease's time.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_leader_is_replaced_within_the_lease_duration() {
    use k8s_openapi::api::coordination::v1::Lease;
    let api = FakeApiServer::start().await;
    let ca = TestCa::new("ingress CA");
    let pod = TestOrigin::http().await;
    let dir = tempfile::tempdir().unwrap();
    cluster(&api, pod.addr.port(), &[("/", "web")], json!({}));
    tls_secret(&api, &ca);
    let kubeconfig = kubeconfig(&api, dir.path());
    let start = |name: &'static str, address: &'static str| {
        let base: PathBuf = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &base,
            format!(
                "listen: {{https: 127.0.0.1:0, http: 127.0.0.1:0}}\nadmin: {{listen: 127.0.0.1:0}}\nstorage: {}\n",
                dir.path().join(name).display()
            ),
        )
        .unwrap();
        let args: Vec<String> = [
            "ingress",
            "--kubeconfig",
            &kubeconfig,
            "--config",
            &base.display().to_string(),
            "--namespace",
            "default",
            "--publish-address",
            address,
            "--election-lease-duration",
            "2s",
            "--election-renew-deadline",
            "1500ms",
            "--election-retry-period",
            "250ms",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            GatewayProcess::spawn(Path::new(BIN), &args)
        })
    };
    let a = start("a", "192.0.2.1").await.unwrap();
    let b = start("b", "192.0.2.2").await.unwrap();
    let status = |api: &FakeApiServer| {
        api.get::<Ingress>("default", "shop")
            .and_then(|i| i.status?.load_balancer?.ingress?.first()?.ip.clone())
    };
    let first = until(Duration::from_secs(15), "a leader's status", || async {
        status(&api)
    })
    .await;
    let holder = api
        .get::<Lease>("default", "portcullis-leader")
        .and_then(|l| l.spec?.holder_identity)
        .unwrap();
    let (leader, other, other_ip) = if first == "192.0.2.1" {
        (a, b, "192.0.2.2")
    } else {
        (b, a, "192.0.2.1")
    };
    leader.signal("KILL");
    let killed = std::time::Instant::now();
    until(
        Duration::from_secs(15),
        "the other replica's status",
        || async { (status(&api).as_deref() == Some(other_ip)).then_some(()) },
    )
    .await;
    let took = killed.elapsed();
    let now = api
        .get::<Lease>("default", "portcullis-leader")
        .and_then(|l| l.spec?.holder_identity)
        .unwrap();
    assert_ne!(now, holder, "the Lease changed hands");
    // The lease (2 s), as the survivor counts it from when it last saw it renewed, plus a
    // retry period and the status write: well under 2 s + 1.5 s of slack on a busy machine.
    println!("taken over {took:?} after the leader was killed");
    assert!(
        took < Duration::from_millis(3500),
        "taken over only after {took:?}"
    );
    drop(other);
}
