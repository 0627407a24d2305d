//! `portcullis doctor`: the `certificate`, `acme` and `origin` checks, each against a real
//! situation built here — certificates served by a running gateway (expired, not yet
//! valid, expiring, wrong name, missing intermediate, out of order), the same files with
//! the gateway stopped, origins that speak only plain HTTP, present a self-signed or
//! wrongly named certificate, or redirect to HTTPS, and ACME against pebble.
//!
//! The test CA is trusted the way the doctor trusts the system's roots: `SSL_CERT_FILE`
//! points at its root in the doctor's environment.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(
    clippy::disallowed_methods,
    reason = "tests write a few small certificate files before anything serves"
)]

mod doctor_tls {
    pub mod acme;
    pub mod certs;
    pub mod origins;
}

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Runs `portcullis doctor --config CONFIG --json` with `env`; its exit code and report.
/// Runs on a blocking thread so an in-process gateway keeps serving meanwhile. No probe
/// here is meant to time out: the generous timeout only absorbs a loaded machine.
pub async fn doctor(config: &Path, env: &[(&str, &Path)]) -> (i32, Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.args(["doctor", "--json", "--timeout", "5s", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // `DOCTOR_TLS_SHOW=1 cargo test ... -- --nocapture` prints every report, to read the wording.
    if std::env::var_os("DOCTOR_TLS_SHOW").is_some() {
        eprintln!("{}", serde_json::to_string_pretty(&json).unwrap());
    }
    (out.status.code().unwrap_or(-1), json)
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
