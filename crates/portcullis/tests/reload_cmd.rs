//! Reloading a running `portcullis run` process: `portcullis reload --config FILE` (through
//! the admin listener) applies an edited file or prints why not, and SIGHUP reloads too.
#![allow(clippy::unwrap_used)]
#![allow(
    clippy::disallowed_methods,
    reason = "drives the binary as a process from outside any runtime: blocking is what it means"
)]

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_tests::{GatewayProcess, TestCa, TestClient, TestOrigin, wait};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A config folder with one certificate per host, and the config file.
struct Files {
    ca: TestCa,
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl Files {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.yaml");
        Self {
            ca: TestCa::new("reload CA"),
            dir,
            path,
        }
    }

    /// A site's YAML mapping for `host`; `rest` is its action. The host's certificate is
    /// written on first use.
    fn site(&self, host: &str, rest: &str) -> String {
        let cert = self.dir.path().join(format!("{host}.pem"));
        let key = self.dir.path().join(format!("{host}.key"));
        if !cert.exists() {
            self.ca.leaf(&[host]).write(self.dir.path(), host);
        }
        format!(
            "{{hosts: ['{host}'], tls: {{cert: '{}', key: '{}'}}, {rest}}}",
            cert.display(),
            key.display()
        )
    }

    /// Writes the config (in one step, so the gateway's file watcher never reads half of
    /// it): HTTPS on any loopback port, no plain HTTP, the admin listener at `admin`.
    fn write(&self, admin: &str, sites: &[String]) {
        self.write_admin(&format!("{{listen: '{admin}'}}"), sites);
    }

    /// As [`write`](Self::write), with the whole `admin` section given.
    fn write_admin(&self, admin: &str, sites: &[String]) {
        let mut text = format!(
            "listen: {{https: '127.0.0.1:0', http: 'off'}}\nadmin: {admin}\n\
             tls: {{local_ca_dir: '{}'}}\nsites:\n",
            self.dir.path().join("ca").display()
        );
        for site in sites {
            text.push_str(&format!("  - {site}\n"));
        }
        let tmp = self.dir.path().join("portcullis.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    fn run(&self) -> GatewayProcess {
        GatewayProcess::spawn(
            Path::new(BIN),
            &["run", "--config", self.path.to_str().unwrap()],
        )
    }

    fn client(&self, gw: &GatewayProcess) -> TestClient {
        TestClient::new(gw.https, &self.ca.root_der)
    }
}

/// A loopback address for the admin listener. `portcullis reload` finds the gateway by the
/// address in the file, so it cannot be port 0: a free port is taken and released just
/// before the gateway binds it.
fn free_admin_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// What a finished command printed.
#[derive(Debug)]
struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `portcullis reload --config FILE` to completion; kills it and fails after 20 s.
async fn reload_command(config: &Path) -> Output {
    let config = config.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BIN)
            .args(["reload", "--config", config.to_str().unwrap()])
            .env_remove("PORTCULLIS_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let drain = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = r.read_to_string(&mut s);
                s
            })
        };
        let stdout = drain(Box::new(child.stdout.take().unwrap()));
        let stderr = drain(Box::new(child.stderr.take().unwrap()));
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("portcullis reload still running after 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output {
            code: status.code(),
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        }
    })
    .await
    .unwrap()
}

/// GET / on a fresh connection for `host`: `None` when the handshake is refused (no site
/// claims the name).
async fn answer(client: &TestClient, host: &str) -> Option<(u16, String)> {
    let mut conn = tokio::time::timeout(Duration::from_secs(10), client.connect(host, &["h2"]))
        .await
        .unwrap_or_else(|_| panic!("no handshake within 10 s for {host}"))
        .ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(10), conn.get(host, "/"))
        .await
        .unwrap_or_else(|_| panic!("no answer within 10 s for {host}"));
    Some((resp.status.as_u16(), resp.text()))
}

/// Stops the gateway with SIGTERM; it must exit 0.
fn stop(mut gw: GatewayProcess) {
    gw.signal("TERM");
    let status = gw.wait(Duration::from_secs(15));
    assert!(status.success(), "{status}; log:\n{}", gw.logs().join("\n"));
}

/// The `message` of every JSON log line.
fn messages(gw: &GatewayProcess) -> Vec<String> {
    gw.logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["message"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_command_applies_the_edited_file() {
    let files = Files::new();
    let admin = free_admin_address().to_string();
    let a = files.site("a.test", "respond: {body: a}");
    files.write(&admin, std::slice::from_ref(&a));
    let gw = files.run();
    assert_eq!(gw.admin.map(|a| a.to_string()), Some(admin.clone()));
    let client = files.client(&gw);
    assert_eq!(answer(&client, "a.test").await, Some((200, "a".into())));
    assert_eq!(answer(&client, "b.test").await, None);

    files.write(&admin, &[a, files.site("b.test", "respond: {body: b}")]);
    let out = reload_command(&files.path).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "reloaded: 2 sites\n", "{out:?}");
    // Applied by the time the command returns.
    assert_eq!(answer(&client, "b.test").await, Some((200, "b".into())));
    assert_eq!(answer(&client, "a.test").await, Some((200, "a".into())));
    stop(gw);
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_command_with_a_broken_file_exits_2_naming_the_key_and_the_gateway_serves_on() {
    let files = Files::new();
    let origin = TestOrigin::http().await;
    let admin = free_admin_address().to_string();
    let a = files.site("a.test", &format!("origin: 'http://{}'", origin.addr));
    files.write(&admin, std::slice::from_ref(&a));
    let gw = files.run();
    let client = files.client(&gw);
    assert_eq!(
        answer(&client, "a.test").await,
        Some((200, "ok GET /".into()))
    );

    // `strict` needs TLS to the origin but the URL is http://.
    files.write(
        &admin,
        &[
            a,
            files.site(
                "b.test",
                &format!("origin: {{url: 'http://{}', mode: strict}}", origin.addr),
            ),
        ],
    );
    let out = reload_command(&files.path).await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(out.stdout, "", "{out:?}");
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{out:?}");
    assert!(
        errors[0].starts_with("error: sites[1].origin.mode: ") && errors[0].contains("strict"),
        "{out:?}"
    );
    assert!(
        out.stderr
            .contains("reload refused; the gateway keeps its current configuration"),
        "{out:?}"
    );

    assert_eq!(
        answer(&client, "a.test").await,
        Some((200, "ok GET /".into()))
    );
    assert_eq!(answer(&client, "b.test").await, None);
    stop(gw);
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_file() {
    let files = Files::new();
    let a = files.site("a.test", "respond: {body: a}");
    files.write("127.0.0.1:0", std::slice::from_ref(&a));
    let gw = files.run();
    let client = files.client(&gw);
    assert_eq!(answer(&client, "a.test").await, Some((200, "a".into())));
    assert_eq!(answer(&client, "c.test").await, None);

    files.write(
        "127.0.0.1:0",
        &[a, files.site("c.test", "respond: {body: c}")],
    );
    gw.signal("HUP");
    let answered = wait::until(Duration::from_secs(5), "c.test to answer", || async {
        answer(&client, "c.test").await
    })
    .await;
    assert_eq!(answered, (200, "c".into()));

    // The file watcher would pick the edit up too (within about 1.2 s); the first reload
    // must be the signal's.
    let log = messages(&gw);
    let first_reload = log
        .iter()
        .position(|m| m == "configuration reloaded")
        .unwrap_or_else(|| panic!("no reload logged: {log:#?}"));
    let before = &log[..first_reload];
    assert!(
        before.iter().any(|m| m == "SIGHUP received; reloading"),
        "{log:#?}"
    );
    assert!(
        !before.iter().any(|m| m == "config file changed; reloading"),
        "the watcher reloaded before the signal did: {log:#?}"
    );
    stop(gw);
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_command_with_the_admin_listener_off_says_to_send_sighup() {
    let files = Files::new();
    files.write("off", &[files.site("a.test", "respond: {body: a}")]);
    let gw = files.run();
    assert_eq!(gw.admin, None);

    let out = reload_command(&files.path).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.starts_with("error: ") && out.stderr.contains("send SIGHUP"),
        "{out:?}"
    );
    stop(gw);
}

/// A reload reads files and loads keys (half a second of CPU at 10,000 sites): with one
/// worker thread, doing that on the worker would stall every connection until it is done.
/// Here the new site's certificate is a FIFO, so the reload blocks in its read until the
/// test writes it; the gateway must answer in the meantime.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_blocked_on_a_file_does_not_stall_a_one_worker_gateway() {
    let files = Files::new();
    let admin = free_admin_address().to_string();
    let a = files.site("a.test", "respond: {body: a}");
    files.write(&admin, std::slice::from_ref(&a));
    let gw = GatewayProcess::spawn(
        Path::new(BIN),
        &[
            "run",
            "--workers",
            "1",
            "--config",
            files.path.to_str().unwrap(),
        ],
    );
    let client = files.client(&gw);
    assert_eq!(answer(&client, "a.test").await, Some((200, "a".into())));

    let b = files.ca.leaf(&["b.test"]);
    let (_, key) = b.write(files.dir.path(), "b");
    let fifo = files.dir.path().join("b-fifo.pem");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo: {made}");
    // Opening a FIFO to write waits for a reader: once open, the gateway is reading it.
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (writer_fifo, pem) = (fifo.clone(), b.cert_pem.clone());
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&writer_fifo)
            .unwrap();
        opened_tx.send(()).unwrap();
        let _ = go_rx.recv();
        let _ = f.write_all(pem.as_bytes());
    });
    files.write(
        &admin,
        &[
            a,
            format!(
                "{{hosts: ['b.test'], tls: {{cert: '{}', key: '{}'}}, respond: {{body: b}}}}",
                fifo.display(),
                key.display()
            ),
        ],
    );
    // The file watcher starts the reload within about a second.
    tokio::task::spawn_blocking(move || opened_rx.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("the gateway did not open the new certificate within 20 s");

    // The reload is now waiting on the FIFO; new connections are still served.
    assert_eq!(answer(&client, "a.test").await, Some((200, "a".into())));
    assert_eq!(answer(&client, "b.test").await, None, "not applied yet");

    go_tx.send(()).unwrap();
    writer.join().unwrap();
    wait::until(
        Duration::from_secs(20),
        "the reload to apply b.test",
        || async { (answer(&client, "b.test").await == Some((200, "b".into()))).then_some(()) },
    )
    .await;
    stop(gw);
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_command_sends_the_token_from_the_config() {
    use std::os::unix::fs::OpenOptionsExt;
    let files = Files::new();
    let admin = free_admin_address().to_string();
    let mut token = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(files.dir.path().join("admin.token"))
        .unwrap();
    std::io::Write::write_all(&mut token, b"c0ffee-0123456789\n").unwrap();
    let with_token = format!("{{listen: '{admin}', token_file: ./admin.token}}");
    let a = files.site("a.test", "respond: {body: a}");
    files.write_admin(&with_token, std::slice::from_ref(&a));
    let gw = files.run();

    files.write_admin(
        &with_token,
        &[a.clone(), files.site("b.test", "respond: {body: b}")],
    );
    let out = reload_command(&files.path).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "reloaded: 2 sites\n", "{out:?}");
    assert_eq!(
        answer(&files.client(&gw), "b.test").await,
        Some((200, "b".into()))
    );

    // A copy of the config without the token is refused, and says why.
    let other = files.dir.path().join("no-token.yaml");
    std::fs::write(&other, format!("admin: {{listen: '{admin}'}}\nsites: []\n")).unwrap();
    let out = reload_command(&other).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("wants a token") && out.stderr.contains("admin.token_file"),
        "{out:?}"
    );
    stop(gw);
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_command_reaches_a_unix_socket_admin_listener() {
    let files = Files::new();
    let a = files.site("a.test", "respond: {body: a}");
    let admin = "{listen: 'unix:./admin.sock'}";
    files.write_admin(admin, std::slice::from_ref(&a));
    let gw = files.run();
    files.write_admin(admin, &[a, files.site("b.test", "respond: {body: b}")]);
    let out = reload_command(&files.path).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "reloaded: 2 sites\n", "{out:?}");
    assert_eq!(
        answer(&files.client(&gw), "b.test").await,
        Some((200, "b".into()))
    );
    assert!(
        messages(&gw).iter().any(|m| m == "portcullis is serving"),
        "{:?}",
        gw.logs()
    );
    stop(gw);
    assert!(!files.dir.path().join("admin.sock").exists());
}
