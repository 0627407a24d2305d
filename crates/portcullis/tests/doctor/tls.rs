//! `portcullis doctor`: the `certificate`, `acme` and `origin` checks, each against a real
//! situation built here — certificates served by a running gateway (expired, not yet
//! valid, expiring, wrong name, missing intermediate, out of order), the same files with
//! the gateway stopped, origins that speak only plain HTTP, present a self-signed or
//! wrongly named certificate, or redirect to HTTPS, and ACME against pebble.
//!
//! The test CA is trusted the way the doctor trusts the system's roots: `SSL_CERT_FILE`
//! points at its root in the doctor's environment.

#[path = "tls/acme.rs"]
mod acme;
#[path = "tls/certs.rs"]
mod certs;
#[path = "tls/origins.rs"]
mod origins;

use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Runs `portcullis doctor --config CONFIG --json --timeout 5s` with `env` set (through
/// `env`, e.g. `SSL_CERT_FILE` naming the roots the doctor trusts); its exit code and
/// report. Runs on a blocking thread so an in-process gateway keeps serving meanwhile. No
/// probe here is meant to time out: the generous timeout only absorbs a loaded machine.
pub async fn doctor(config: &Path, env: &[(&str, &Path)]) -> (i32, Value) {
    let config = config.to_owned();
    let mut runner = Vec::new();
    if !env.is_empty() {
        runner.push("env".to_owned());
        runner.extend(env.iter().map(|(k, v)| format!("{k}={}", v.display())));
    }
    let run = tokio::task::spawn_blocking(move || {
        let runner: Vec<&str> = runner.iter().map(String::as_str).collect();
        portcullis_tests::doctor::run(
            env!("CARGO_BIN_EXE_portcullis"),
            &runner,
            &config,
            &["--timeout", "5s"],
        )
    })
    .await
    .unwrap();
    // `DOCTOR_TLS_SHOW=1 cargo test ... -- --nocapture` prints every report, to read the wording.
    if std::env::var_os("DOCTOR_TLS_SHOW").is_some() {
        eprintln!("{:#}", run.json);
    }
    (run.code.unwrap_or(-1), run.json)
}

/// The findings of `check` about `site`.
pub fn findings(report: &Value, site: &str, check: &str) -> Vec<Value> {
    report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["site"] == site)
        .flat_map(|g| g["findings"].as_array().unwrap().clone())
        .filter(|f| f["check"] == check)
        .collect()
}

/// The one finding of `check` about `site` whose message contains `needle`; panics with
/// the site's findings otherwise.
pub fn finding(report: &Value, site: &str, check: &str, needle: &str) -> Value {
    let all = findings(report, site, check);
    let hits: Vec<&Value> = all
        .iter()
        .filter(|f| f["message"].as_str().unwrap().contains(needle))
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "one `{check}` finding of site {site} mentioning {needle:?} expected; found:\n{}",
        serde_json::to_string_pretty(&all).unwrap()
    );
    hits[0].clone()
}

/// `status`, `message` and `fix` of a finding, for assertions.
pub fn parts(f: Value) -> (String, String, String) {
    (
        f["status"].as_str().unwrap().to_owned(),
        f["message"].as_str().unwrap().to_owned(),
        f["fix"].as_str().unwrap_or("").to_owned(),
    )
}

/// A plain HTTP server answering every request `301` to `location`, as an origin that
/// forces HTTPS does, or another web server holding port 80.
pub async fn redirecting_server(location: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 301 Moved Permanently\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}
