//! Let's Encrypt's test CA, pebble (Debian package `pebble`), run on loopback for one test.
//!
//! Pebble validates challenges against the gateway's listeners, whose ports are known only
//! once the gateway runs, while the gateway needs pebble's directory URL in its config. So
//! pebble's own ports are reserved first ([`Pebble::new`]), the gateway is started with
//! [`Pebble::acme_yaml`], and pebble is started last with the gateway's ports
//! ([`Pebble::start`]); the gateway's first attempts fail and are retried with its backoff.
//! `pebble-challtestsrv` answers DNS so every name resolves to 127.0.0.1.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::ca::TestCa;
use crate::wait;

/// Pebble's knobs used by the tests.
#[derive(Debug, Clone, Default)]
pub struct PebbleOptions {
    /// `certificateValidityPeriod` in seconds (pebble's default is five years).
    pub validity_secs: Option<u64>,
    /// `PEBBLE_WFE_NONCEREJECT`: percent of good nonces rejected (default 0 here).
    pub nonce_reject_percent: u8,
    /// External Account Binding keys (`kid` → base64url HMAC key); requires EAB when set.
    pub eab_keys: Vec<(String, String)>,
}

/// A pebble instance (and its DNS server) on loopback; stopped when dropped.
pub struct Pebble {
    dir: tempfile::TempDir,
    options: PebbleOptions,
    listen_port: u16,
    management_port: u16,
    dns_port: u16,
    dns_management_port: u16,
    /// The CA that signed pebble's own HTTPS certificate: give it to `acme.ca_bundle`.
    pub ca_bundle: PathBuf,
    ca_pem: String,
    children: Vec<Child>,
}

/// A port for one of pebble's listeners, taken below the ephemeral range: pebble binds it
/// only once it has started, and a port from that range may meanwhile be handed to another
/// test's listener on port 0 (whose plain HTTP answer a client then takes for pebble's).
fn free_tcp_port() -> u16 {
    crate::ports::stable_port().port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Pebble {
    /// True when the `pebble` binaries are installed (`.ci/run` installs them).
    pub fn installed() -> bool {
        ["pebble", "pebble-challtestsrv"].iter().all(|b| {
            Command::new("sh")
                .args(["-c", &format!("command -v {b}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    /// Reserves ports and writes pebble's HTTPS certificate; nothing runs yet.
    pub fn new(options: PebbleOptions) -> Self {
        assert!(
            Self::installed(),
            "pebble is not installed: `apt-get install -y pebble` (.ci/run does this)"
        );
        let dir = tempfile::tempdir().unwrap();
        // webpki refuses a CA certificate used as a server certificate: a CA and a leaf.
        let ca = TestCa::new("pebble listener CA");
        let (cert, key) = ca
            .leaf(&["localhost", "127.0.0.1"])
            .write(dir.path(), "pebble");
        let ca_bundle = ca.write_root(dir.path(), "pebble-ca");
        let me = Self {
            listen_port: free_tcp_port(),
            management_port: free_tcp_port(),
            dns_port: free_udp_port(),
            dns_management_port: free_tcp_port(),
            ca_bundle,
            ca_pem: ca.root_pem.clone(),
            options,
            children: Vec::new(),
            dir,
        };
        std::fs::write(me.dir.path().join("cert.path"), cert.display().to_string()).unwrap();
        std::fs::write(me.dir.path().join("key.path"), key.display().to_string()).unwrap();
        me
    }

    /// The directory URL.
    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.listen_port)
    }

    /// An `acme:` section pointing at this pebble, with fast retries for tests; `extra` is
    /// more YAML flow-map entries (e.g. `challenge: http-01`).
    pub fn acme_yaml(&self, extra: &str) -> String {
        let sep = if extra.is_empty() { "" } else { ", " };
        format!(
            "{{directory: '{}', ca_bundle: '{}', email: ops@portcullis.test, backoff: {{initial: 200ms, max: 2s}}{sep}{extra}}}",
            self.directory(),
            self.ca_bundle.display()
        )
    }

    /// Starts pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`, and
    /// waits until its directory answers.
    pub async fn start(&mut self, http_port: u16, tls_port: u16) {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap();
        let mut pebble = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{}", self.listen_port),
            "managementListenAddress": format!("127.0.0.1:{}", self.management_port),
            "certificate": read("cert.path"),
            "privateKey": read("key.path"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": !self.options.eab_keys.is_empty(),
        });
        if let Some(secs) = self.options.validity_secs {
            pebble["certificateValidityPeriod"] = secs.into();
        }
        if !self.options.eab_keys.is_empty() {
            let keys: serde_json::Map<String, serde_json::Value> = self
                .options
                .eab_keys
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            pebble["externalAccountMACKeys"] = keys.into();
        }
        let config = self.dir.path().join("pebble.json");
        std::fs::write(&config, serde_json::json!({ "pebble": pebble }).to_string()).unwrap();

        if self.children.is_empty() {
            let dns = Command::new("pebble-challtestsrv")
                .args(["-dns01", &format!("127.0.0.1:{}", self.dns_port)])
                .args([
                    "-management",
                    &format!("127.0.0.1:{}", self.dns_management_port),
                ])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-defaultIPv6", "", "-defaultIPv4", "127.0.0.1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            self.children.push(dns);
        }
        let log = std::fs::File::create(self.dir.path().join("pebble.log")).unwrap();
        let server = Command::new("pebble")
            .args(["-config", config.to_str().unwrap()])
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns_port)])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env(
                "PEBBLE_WFE_NONCEREJECT",
                self.options.nonce_reject_percent.to_string(),
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push(server);
        let client = self.https_client();
        let url = self.directory();
        wait::until(Duration::from_secs(20), "pebble's directory", || {
            let (client, url) = (client.clone(), url.clone());
            async move { get(&client, &url).await.ok().map(|_| ()) }
        })
        .await;
    }

    /// Stops pebble (keeping its DNS server), as a CA outage.
    pub fn stop(&mut self) {
        if self.children.len() > 1 {
            let mut server = self.children.pop().unwrap();
            let _ = server.kill();
            let _ = server.wait();
        }
    }

    /// The root that issues this run's certificates (new at every pebble start), PEM.
    pub async fn issuing_root(&self) -> String {
        let url = format!("https://127.0.0.1:{}/roots/0", self.management_port);
        get(&self.https_client(), &url).await.unwrap()
    }

    /// pebble's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    fn https_client(&self) -> reqwest_like::Client {
        reqwest_like::Client::new(&self.ca_pem)
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn get(client: &reqwest_like::Client, url: &str) -> Result<String, String> {
    client.get(url).await
}

/// A minimal HTTPS GET client for talking to pebble's own endpoints.
mod reqwest_like {
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client as Legacy;
    use hyper_util::rt::TokioExecutor;
    use rustls::{ClientConfig, RootCertStore};
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    #[derive(Clone)]
    pub struct Client {
        inner: Legacy<
            hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
            Empty<Bytes>,
        >,
    }

    impl Client {
        pub fn new(ca_pem: &str) -> Self {
            let mut roots = RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
                .unwrap();
            let tls = ClientConfig::builder()
                .with_root_certificates(Arc::new(roots))
                .with_no_client_auth();
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_only()
                .enable_http1()
                .build();
            Self {
                inner: Legacy::builder(TokioExecutor::new()).build(connector),
            }
        }

        pub async fn get(&self, url: &str) -> Result<String, String> {
            let resp = self
                .inner
                .get(url.parse().map_err(|e| format!("{e}"))?)
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if !status.is_success() {
                return Err(format!("{url}: {status}"));
            }
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
    }
}
