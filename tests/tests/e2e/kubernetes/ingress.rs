//! `portcullis ingress` end to end: the fake API server holds the cluster, the controller
//! runs in-process from its command line (`IngressArgs` parsed as the binary parses it),
//! and requests go over real sockets to origins standing in for pods.

mod faults;
mod rbac;
mod reporting;
mod serving;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use portcullis::IngressArgs;
use portcullis_tests::wait::until;
use portcullis_tests::{FakeApiServer, Leaf, Resp, TestCa, TestClient};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a change in the cluster may take to be served: the debounce (at most 1 s)
/// and a translation, with room for a slow machine.
const CONVERGE: Duration = Duration::from_secs(15);

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: IngressArgs,
}

fn from<K: serde::de::DeserializeOwned>(v: Value) -> K {
    serde_json::from_value(v).unwrap()
}

/// The fake cluster, with our IngressClass, and the CA the test's certificates come from.
pub struct Cluster {
    pub api: FakeApiServer,
    pub ca: TestCa,
    pub dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Cluster {
    pub async fn new() -> Self {
        let api = FakeApiServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = api.write_kubeconfig(dir.path());
        api.create::<IngressClass>(&from(json!({
            "metadata": {"name": "portcullis"},
            "spec": {"controller": "portcullis.dev/ingress-controller"}
        })));
        Self {
            api,
            ca: TestCa::new("kubernetes e2e CA"),
            dir,
            kubeconfig,
        }
    }

    /// Runs `portcullis ingress --kubeconfig K --config BASE --namespace default [extra...]`
    /// in-process.
    pub async fn controller(&self, extra: &[&str]) -> Controller {
        self.controller_with("", extra).await
    }

    /// As [`Self::controller`], with `base_extra` (YAML lines) added to the base config.
    pub async fn controller_with(&self, base_extra: &str, extra: &[&str]) -> Controller {
        let base = self.dir.path().join("base.yaml");
        std::fs::write(
            &base,
            format!(
                "listen: {{https: 127.0.0.1:0, http: 127.0.0.1:0}}\nadmin: {{listen: 127.0.0.1:0}}\n\
                 tls: {{local_ca_dir: {dir}/ca}}\nstorage: {dir}/storage\n{base_extra}",
                dir = self.dir.path().display()
            ),
        )
        .unwrap();
        let mut argv = vec![
            "ingress".to_owned(),
            "--kubeconfig".to_owned(),
            self.kubeconfig.display().to_string(),
            "--config".to_owned(),
            base.display().to_string(),
            // The Lease lives beside the test's objects (outside a pod it would be in
            // `portcullis`, which the fake cluster does not have).
            "--namespace".to_owned(),
            "default".to_owned(),
        ];
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        let args = Cli::try_parse_from(argv).unwrap().args;
        let ingress = portcullis::Ingress::start(args)
            .await
            .unwrap_or_else(|e| panic!("portcullis ingress did not start: {e}"));
        let (stop, stopped) = oneshot::channel::<()>();
        let https = ingress.https_addr();
        let http = ingress.http_addr().unwrap();
        let admin = ingress.admin_addr().unwrap();
        let task = tokio::spawn(ingress.run(async {
            let _ = stopped.await;
        }));
        Controller {
            https,
            http,
            admin,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A `kubernetes.io/tls` Secret holding `leaf`.
    pub fn tls_secret(&self, ns: &str, name: &str, leaf: &Leaf) -> Secret {
        from(json!({
            "metadata": {"name": name, "namespace": ns},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem}
        }))
    }

    /// A Service `name` with port 80 named `http`, and its EndpointSlice: `endpoints`
    /// (address, ready) on `port`.
    pub fn service(&self, ns: &str, name: &str, port: u16, endpoints: &[(&str, bool)]) {
        self.api.create::<Service>(&from(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
        })));
        self.api
            .create::<EndpointSlice>(&slice(ns, name, port, endpoints));
    }

    /// Replaces the endpoints of `name`'s EndpointSlice.
    pub fn set_endpoints(&self, ns: &str, name: &str, port: u16, endpoints: &[(&str, bool)]) {
        self.api
            .replace::<EndpointSlice>(&slice(ns, name, port, endpoints));
    }
}

fn slice(ns: &str, name: &str, port: u16, endpoints: &[(&str, bool)]) -> EndpointSlice {
    from(json!({
        "metadata": {
            "name": format!("{name}-abcde"),
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": name}
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|(ip, ready)| json!({
            "addresses": [ip],
            "conditions": {"ready": ready, "serving": ready, "terminating": false}
        })).collect::<Vec<_>>()
    }))
}

/// An Ingress of class `portcullis` for `host`: `paths` are (path, pathType, service),
/// every backend on the Service's port `http`; TLS from Secret `secret` when given.
pub fn ingress(
    ns: &str,
    name: &str,
    host: &str,
    secret: Option<&str>,
    paths: &[(&str, &str, &str)],
) -> Ingress {
    let mut spec = json!({
        "ingressClassName": "portcullis",
        "rules": [{"host": host, "http": {"paths": paths.iter().map(|(p, t, s)| json!({
            "path": p, "pathType": t,
            "backend": {"service": {"name": s, "port": {"name": "http"}}}
        })).collect::<Vec<_>>()}}]
    });
    if let Some(secret) = secret {
        spec["tls"] = json!([{"hosts": [host], "secretName": secret}]);
    }
    from(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
}

/// A running `portcullis ingress`; stopped when dropped.
pub struct Controller {
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<bool>>,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
    }
}

impl Controller {
    pub fn client(&self, ca: &TestCa) -> TestClient {
        TestClient::new(self.https, &ca.root_der)
    }

    /// `GET /readyz`: status and body.
    pub async fn readyz(&self) -> (u16, String) {
        let r = portcullis_tests::plain::get(self.admin, "localhost", "/readyz").await;
        (r.status, r.body().to_owned())
    }

    /// Waits for `/readyz` 200; on time out, fails with the last answer, which says what
    /// the controller waits for (the first sync, the API server, a refused sync).
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + CONVERGE;
        loop {
            let (status, body) = self.readyz().await;
            if status == 200 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz still {status} after {CONVERGE:?} (the first sync):\n{body}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// `GET /metrics`.
    pub async fn scrape(&self) -> String {
        portcullis_tests::scrape::scrape(self.admin).await
    }

    /// Drains and stops; true if every connection finished in time.
    pub async fn stop(mut self) -> bool {
        let _ = self.stop.take().map(|s| s.send(()));
        self.task.take().unwrap().await.unwrap()
    }
}

/// GET `path` on `host` over a new connection; `None` if no TLS connection could be made
/// (no certificate for the name, say).
pub async fn try_get(client: &TestClient, host: &str, path: &str) -> Option<Resp> {
    let mut conn = client.connect(host, &["http/1.1"]).await.ok()?;
    Some(conn.get(host, path).await)
}

/// Polls until `path` on `host` answers from the origin on `port` (its `x-origin`).
pub async fn until_served_by(client: &TestClient, host: &str, path: &str, port: u16) {
    until(
        CONVERGE,
        &format!("{host}{path} served by :{port}"),
        || async {
            let resp = try_get(client, host, path).await?;
            (resp.status == 200 && origin_port(&resp) == Some(port)).then_some(())
        },
    )
    .await;
}

/// The `x-origin` header: the port of the origin that answered.
pub fn origin_port(resp: &Resp) -> Option<u16> {
    resp.headers
        .get("x-origin")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
