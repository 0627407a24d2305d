//! A real browser for the tests: headless Chromium (Debian's `chromium`) driven over the
//! DevTools protocol, trusting a test CA the way a user would (in the NSS database of a
//! temporary HOME), with test names (and ports) mapped to loopback listeners. It loads a
//! page and reports what a user's browser would have shown: the console (mixed-content
//! blocks and warnings), every request with its mixed-content type and fate, and the
//! document's status or certificate error.
//!
//! One browser per test; it is killed, with every process it started, when dropped.

mod cdp;
mod page_origin;
mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use cdp::Cdp;
pub use page_origin::{PIXEL_PNG, PageOrigin};
pub use report::{Outcome, PageReport, PageRequest};

/// How long Chromium may take to start and open DevTools on a loaded 2-core machine
/// (about half a second when idle).
const STARTUP: Duration = Duration::from_secs(30);
/// The bound on one page load, from navigating to the report.
const LOAD: Duration = Duration::from_secs(20);
/// After the load event, how long to keep listening for late console messages and
/// request ends.
const SETTLE: Duration = Duration::from_millis(300);

/// A running headless Chromium; killed when dropped.
pub struct Browser {
    child: Child,
    cdp: Cdp,
    /// The DevTools session of the page [`Browser::load`] opened last.
    page: Option<String>,
    /// Chromium's own stderr, shown when something goes wrong.
    log: PathBuf,
    // Dropped after the child is killed (fields drop after `Drop::drop`).
    _home: tempfile::TempDir,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium trusting the CA certificate in `ca_pem` (through `certutil` and the
    /// NSS database of a temporary HOME, as a user adding it would), connecting to the
    /// address of each `(pattern, address)` of `map` for the names it matches: a pattern is
    /// a name (`app.test`, every port) or a name and port (`app.test:443`), so a page written
    /// for ports 443 and 80 reaches listeners on ports chosen by the test while its URLs,
    /// `Host` headers and certificate checks stay those of the name.
    pub async fn launch(ca_pem: &Path, map: &[(&str, SocketAddr)]) -> Self {
        let home = tempfile::tempdir().unwrap();
        let profile = tempfile::tempdir().unwrap();
        trust_ca(home.path(), ca_pem).await;
        let log = home.path().join("chromium.log");
        let rules: Vec<String> = map
            .iter()
            .map(|(pattern, addr)| format!("MAP {pattern} {addr}"))
            .collect();
        let mut command = Command::new("chromium");
        command
            .args([
                "--headless=new",
                // Root cannot run Chromium's sandbox; the browser only opens our test pages.
                "--no-sandbox",
                "--disable-gpu",
                // /dev/shm is small in containers.
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                // No calls home (component updates, safe browsing lists, ...) to slow a test.
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--password-store=basic",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--host-resolver-rules={}", rules.join(", ")))
            .arg("about:blank")
            .env("HOME", home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_CACHE_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        // Its own process group, so dropping the browser kills every process it started.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().unwrap_or_else(|e| {
            panic!("cannot run chromium ({e}); .ci/run installs Debian's chromium")
        });
        let mut starting = Starting {
            child: Some(child),
            log: log.clone(),
        };
        let deadline = Instant::now() + STARTUP;
        let url = starting.devtools_url(profile.path(), deadline).await;
        let cdp = match Cdp::connect(&url, deadline).await {
            Ok(cdp) => cdp,
            Err(e) => panic!("{e}\n{}", tail(&log)),
        };
        Self {
            child: starting
                .child
                .take()
                .expect("the child is kept until started"),
            cdp,
            page: None,
            log,
            _home: home,
            _profile: profile,
        }
    }

    /// Opens `url` in a new tab and reports what happened until the load event and a short
    /// settle after it (bounded: a page that never finishes loading gives a report with
    /// `loaded: false` after 20 s).
    pub async fn load(&mut self, url: &str) -> PageReport {
        let deadline = Instant::now() + LOAD;
        let target = self
            .call(
                None,
                "Target.createTarget",
                json!({"url": "about:blank"}),
                deadline,
            )
            .await;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
                deadline,
            )
            .await;
        let session = attached["sessionId"]
            .as_str()
            .expect("Target.attachToTarget answers a sessionId")
            .to_owned();
        for domain in ["Page", "Network", "Runtime", "Log", "Security"] {
            self.call(
                Some(&session),
                &format!("{domain}.enable"),
                json!({}),
                deadline,
            )
            .await;
        }
        let navigated = self
            .call(
                Some(&session),
                "Page.navigate",
                json!({"url": url}),
                deadline,
            )
            .await;
        let mut report = PageReport {
            main_error: navigated["errorText"].as_str().map(Into::into),
            ..PageReport::default()
        };
        // A navigation that failed (a certificate error, a refused connection) loads
        // Chromium's error page: nothing more of ours will come.
        let mut until = match report.main_error {
            Some(_) => Instant::now() + SETTLE,
            None => deadline,
        };
        loop {
            let event = match self.cdp.event(until).await {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(e) => panic!("{e}\n{}", tail(&self.log)),
            };
            if event["sessionId"].as_str() != Some(&session) {
                continue;
            }
            let method = event["method"].as_str().unwrap_or_default();
            if method == "Page.loadEventFired" && !report.loaded {
                report.loaded = true;
                until = (Instant::now() + SETTLE).min(deadline);
            }
            report.fold(method, &event["params"]);
        }
        self.page = Some(session);
        report
    }

    /// Evaluates the JavaScript `expression` in the page opened last and returns its value
    /// (promises awaited); panics on an exception.
    pub async fn evaluate(&mut self, expression: &str) -> Value {
        let session = self.page.clone().expect("evaluate after load");
        let deadline = Instant::now() + crate::wait::ANSWER;
        let result = self
            .call(
                Some(&session),
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
                deadline,
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression} threw: {exception}");
        }
        result["result"]["value"].clone()
    }

    async fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
        deadline: Instant,
    ) -> Value {
        match self.cdp.call(session, method, params, deadline).await {
            Ok(result) => result,
            Err(e) => panic!("{e}\n{}", tail(&self.log)),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// A browser not yet connected: killed if starting panics.
struct Starting {
    child: Option<Child>,
    log: PathBuf,
}

impl Starting {
    /// Waits for `DevToolsActivePort` in the profile (the port, then the browser's path),
    /// written once DevTools listens.
    async fn devtools_url(&mut self, profile: &Path, deadline: Instant) -> String {
        let file = profile.join("DevToolsActivePort");
        loop {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Some((port, path)) = text.split_once('\n')
                && let Ok(port) = port.trim().parse::<u16>()
                && path.trim().starts_with("/devtools/browser/")
            {
                return format!("ws://127.0.0.1:{port}{}", path.trim());
            }
            let child = self
                .child
                .as_mut()
                .expect("the child is kept until started");
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "chromium exited ({status}) before DevTools listened\n{}",
                    tail(&self.log)
                );
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open DevTools within {STARTUP:?}\n{}",
                tail(&self.log)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            kill_group(child);
        }
    }
}

/// Kills the process group `child` leads (Chromium's zygotes, renderers, GPU and network
/// processes) and reaps the child.
fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// Creates `home/.pki/nssdb`, the NSS database Chromium on Linux reads its user-added
/// roots from, and trusts `ca_pem` in it for TLS servers (`C,,`).
async fn trust_ca(home: &Path, ca_pem: &Path) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let db = format!("sql:{}", db.display());
    run("certutil", &["-d", &db, "-N", "--empty-password"]).await;
    let ca = ca_pem.to_str().expect("a UTF-8 path");
    run(
        "certutil",
        &[
            "-d",
            &db,
            "-A",
            "-t",
            "C,,",
            "-n",
            "portcullis test CA",
            "-i",
            ca,
        ],
    )
    .await;
}

/// Runs `program args`, panicking with its output unless it succeeds within 10 s.
async fn run(program: &str, args: &[&str]) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}); .ci/run installs Debian's libnss3-tools")
        });
    let deadline = Instant::now() + crate::wait::ANSWER;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} {args:?} did not finish in time");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    if !status.success() {
        let output = child.wait_with_output().unwrap();
        panic!(
            "{program} {args:?}: {status}\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The last lines of Chromium's stderr, for a failure message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(30);
    format!(
        "chromium's stderr (last lines):\n{}",
        lines[from..].join("\n")
    )
}
