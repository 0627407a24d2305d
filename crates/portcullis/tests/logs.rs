//! `--log-format json`: every line on stderr is one JSON object, and each proxied request
//! writes an access line with the fixed field vocabulary. `pretty` logs written to a file
//! carry no colour codes.
#![allow(clippy::unwrap_used)]
#![allow(
    clippy::disallowed_methods,
    reason = "drives the binary as a process from outside any runtime: blocking is what it means"
)]

use std::path::Path;
use std::time::Duration;

use portcullis_tests::{GatewayBuilder, GatewayProcess, TestCa, TestOrigin, wait};
use serde_yaml::{Mapping, Value};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Parses one log line as a JSON object. JSON is YAML, so the YAML parser reads it; the
/// braces and the absence of line breaks keep YAML-only forms out.
fn json_object(line: &str) -> Mapping {
    assert!(
        line.starts_with('{') && line.ends_with('}') && !line.contains('\n'),
        "not one JSON object: {line}"
    );
    match serde_yaml::from_str::<Value>(line) {
        Ok(Value::Mapping(m)) => m,
        other => panic!("not a JSON object ({other:?}): {line}"),
    }
}

fn field<'a>(m: &'a Mapping, key: &str) -> &'a Value {
    m.get(key).unwrap_or_else(|| panic!("no `{key}` in {m:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line_with_an_access_line_per_request() {
    let ca = TestCa::new("logs CA");
    let origin = TestOrigin::http().await;
    let b = GatewayBuilder::new();
    let (cert, key) = ca.leaf(&["j.test"]).write(b.dir(), "j");
    let origin_url = format!("http://{}", origin.addr);
    let b = b.site(&format!(
        "{{name: journal, hosts: [j.test], tls: {{cert: {}, key: {}}}, origin: '{origin_url}'}}",
        cert.display(),
        key.display(),
    ));
    let config = b.write_config();
    // The harness starts the binary with `--log-format json`.
    let gw = GatewayProcess::spawn(
        Path::new(BIN),
        &["run", "--config", config.to_str().unwrap()],
    );

    let client = portcullis_tests::TestClient::new(gw.https, &ca.root_der);
    let resp = client.get("j.test", "/logged/path?q=1").await;
    assert_eq!(resp.status, 200);
    let body_len = resp.body.len() as u64;
    assert_eq!(resp.text(), "ok GET /logged/path?q=1");

    let access = wait::until(Duration::from_secs(10), "the access log line", || {
        let logs = gw.logs();
        async move {
            logs.iter()
                .map(|l| json_object(l))
                .find(|m| m.get("target").and_then(Value::as_str) == Some("portcullis::access"))
        }
    })
    .await;

    assert_eq!(field(&access, "site").as_str(), Some("journal"));
    assert_eq!(field(&access, "host").as_str(), Some("j.test"));
    assert_eq!(field(&access, "method").as_str(), Some("GET"));
    assert_eq!(field(&access, "path").as_str(), Some("/logged/path"));
    assert_eq!(field(&access, "status").as_u64(), Some(200));
    assert_eq!(field(&access, "bytes").as_u64(), Some(body_len));
    assert_eq!(field(&access, "origin").as_str(), Some(origin_url.as_str()));
    let duration = field(&access, "duration_ms").as_f64().unwrap();
    assert!(
        (0.0..10_000.0).contains(&duration),
        "duration_ms {duration}"
    );
    assert_eq!(field(&access, "level").as_str(), Some("INFO"));

    // Every line, start-up included, is a JSON object with a level and a message.
    let logs = gw.logs();
    assert!(logs.len() >= 2, "logs:\n{}", logs.join("\n"));
    for line in &logs {
        let m = json_object(line);
        assert!(
            m.contains_key("level") && m.contains_key("message"),
            "{line}"
        );
    }
    let serving = logs
        .iter()
        .map(|l| json_object(l))
        .find(|m| m.get("message").and_then(Value::as_str) == Some("portcullis is serving"))
        .unwrap();
    assert_eq!(
        field(&serving, "https").as_str(),
        Some(gw.https.to_string().as_str())
    );
}

/// Runs the gateway with pretty logs and stderr redirected to a file (as systemd and
/// `2>gw.log` do), until it serves; the file's text.
fn pretty_log_to_file(env: &[(&str, &str)]) -> String {
    let b = GatewayBuilder::new().site("{hosts: [p.test], tls: local, respond: {}}");
    let config = b.write_config();
    let log = b.dir().join("stderr.log");
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["--log-format", "pretty", "run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("portcullis is serving") {
            break text;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the gateway did not start; its log:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    text
}

#[test]
fn pretty_logs_written_to_a_file_have_no_colour_codes() {
    let text = pretty_log_to_file(&[]);
    assert!(
        !text.contains("\x1b["),
        "colour codes in a log file:\n{text:?}"
    );
    // Still the pretty format: a level word, not a JSON object.
    assert!(text.contains(" INFO "), "{text}");
    assert!(!text.trim_start().starts_with('{'), "{text}");
}
