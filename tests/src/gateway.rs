//! Runs the real gateway in-process on 127.0.0.1:0 from a YAML config written to a temporary
//! folder, so every test goes through the same parser and wiring as `portcullis run`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use portcullis::{App, StartError};
use portcullis_proxy::Gateway;
use rustls_pki_types::CertificateDer;
use serde_yaml::{Mapping, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::ca::TestCa;
use crate::client::TestClient;

/// Builds a config: listeners on 127.0.0.1:0, the local CA in the temporary folder.
pub struct GatewayBuilder {
    root: Mapping,
    sites: Vec<Value>,
    dir: tempfile::TempDir,
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("bad test YAML: {e}\n{text}"))
}

impl GatewayBuilder {
    /// A builder with no sites.
    pub fn new() -> Self {
        crate::init();
        let dir = tempfile::tempdir().unwrap();
        let mut root = Mapping::new();
        root.insert(
            "listen".into(),
            yaml("{https: 127.0.0.1:0, http: 127.0.0.1:0}"),
        );
        root.insert("admin".into(), yaml("{listen: 127.0.0.1:0}"));
        root.insert(
            "tls".into(),
            yaml(&format!(
                "{{local_ca_dir: {}}}",
                dir.path().join("ca").display()
            )),
        );
        Self {
            root,
            sites: Vec::new(),
            dir,
        }
    }

    /// The temporary folder the config lives in (relative paths resolve against it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Adds a site, written as a YAML mapping.
    pub fn site(mut self, site: &str) -> Self {
        self.sites.push(yaml(site));
        self
    }

    /// Adds a site for `hosts` with a certificate for them from `ca`, written to the
    /// temporary folder; `rest` is the rest of the site's YAML mapping (`origin: ...`,
    /// `respond: ...`, `routes: [...]`).
    pub fn tls_site(self, ca: &TestCa, hosts: &[&str], rest: &str) -> Self {
        let (cert, key) = ca.leaf(hosts).write(self.dir(), hosts[0]);
        let hosts: Vec<String> = hosts.iter().map(|h| format!("'{h}'")).collect();
        let sep = if rest.is_empty() { "" } else { ", " };
        self.site(&format!(
            "{{hosts: [{}], tls: {{cert: '{}', key: '{}'}}{sep}{rest}}}",
            hosts.join(", "),
            cert.display(),
            key.display()
        ))
    }

    /// Sets a top-level key (e.g. `limits`) to a YAML value.
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.root.insert(key.into(), yaml(value));
        self
    }

    /// The config text.
    pub fn yaml(&self) -> String {
        let mut root = self.root.clone();
        root.insert("sites".into(), Value::Sequence(self.sites.clone()));
        serde_yaml::to_string(&Value::Mapping(root)).unwrap()
    }

    /// Writes the config to `<dir>/portcullis.yaml` and returns its path.
    pub fn write_config(&self) -> PathBuf {
        let path = self.dir.path().join("portcullis.yaml");
        std::fs::write(&path, self.yaml()).unwrap();
        path
    }

    /// Starts the gateway; panics with every problem if it cannot.
    pub async fn start(self) -> TestGateway {
        match self.try_start().await {
            Ok(gw) => gw,
            Err(StartError::Config(problems)) => panic!(
                "config refused:\n{}",
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
            Err(e) => panic!("gateway did not start: {e}"),
        }
    }

    /// Starts the gateway from the written config file.
    pub async fn try_start(self) -> Result<TestGateway, StartError> {
        let path = self.write_config();
        let mut gw = TestGateway::from_file(&path).await?;
        gw.temporary = Some(self.dir);
        Ok(gw)
    }
}

/// A running in-process gateway; stopped when dropped.
pub struct TestGateway {
    /// The HTTPS listener.
    pub https: SocketAddr,
    /// The plain HTTP listener.
    pub http: Option<SocketAddr>,
    /// The admin listener.
    pub admin: Option<SocketAddr>,
    /// Handle on the running gateway.
    pub gateway: Gateway,
    /// The ACME manager, when a site uses `tls: acme`.
    pub acme: Option<std::sync::Arc<portcullis_acme::AcmeManager>>,
    /// The control plane (reload).
    pub controller: std::sync::Arc<portcullis::Controller>,
    /// The config file the gateway runs from.
    pub config_path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<bool>>,
    /// The builder's temporary folder, removed with the gateway.
    temporary: Option<tempfile::TempDir>,
}

impl TestGateway {
    /// Runs the gateway from the config file at `path` as `portcullis run` does: it reloads
    /// that file (and watches it).
    pub async fn from_file(path: &Path) -> Result<Self, StartError> {
        crate::init();
        let app = App::start_from_file(path).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let https = app.https_addr();
        let http = app.http_addr();
        let admin = app.admin_addr();
        let gateway = app.gateway().clone();
        let acme = app.acme();
        let controller = app.controller().clone();
        let task = tokio::spawn(app.run(async {
            let _ = stopped.await;
        }));
        Ok(Self {
            https,
            http,
            admin,
            gateway,
            acme,
            controller,
            config_path: path.to_owned(),
            stop: Some(stop),
            task: Some(task),
            temporary: None,
        })
    }

    /// The folder holding the config file (relative paths in it resolve against it), and
    /// for a builder's gateway its certificates and local CA.
    pub fn dir(&self) -> &Path {
        self.config_path
            .parent()
            .expect("a config file in a folder")
    }

    /// A client for the HTTPS listener trusting `root`.
    pub fn client(&self, root: &CertificateDer<'static>) -> TestClient {
        TestClient::new(self.https, root)
    }

    /// `GET /metrics` on the admin listener; the page's text.
    pub async fn scrape(&self) -> String {
        crate::scrape::scrape(self.admin.expect("an admin listener on TCP")).await
    }

    /// Reloads the config file; panics with every problem if the reload is refused.
    pub async fn reload(&self) -> portcullis::ReloadSummary {
        crate::wait::within("reload", self.controller.reload())
            .await
            .unwrap_or_else(|problems| panic!("reload refused: {problems:?}"))
    }

    /// The local CA's root certificate (after a `tls: local` site started it).
    pub fn local_ca_root(&self) -> CertificateDer<'static> {
        let pem = std::fs::read(self.dir().join("ca/root.crt")).unwrap();
        rustls_pki_types::pem::PemObject::from_pem_slice(&pem).unwrap()
    }

    /// Starts the drain and waits for it; true if every connection finished in time.
    pub async fn stop(mut self) -> bool {
        let _ = self.stop.take().map(|s| s.send(()));
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
    }
}
