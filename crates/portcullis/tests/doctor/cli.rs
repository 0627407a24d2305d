//! The command itself: an invalid config and an unknown `--site` are refused before any
//! probe, the text report groups by site with a count, and a reader that stops early (a
//! pipe into `head`) is no failure.

use std::io::Read;
use std::process::{Command, Stdio};

use portcullis_tests::GatewayBuilder;
use portcullis_tests::doctor::run_argv;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A config whose listeners are on port 0 (always free) and one site answering itself.
fn config() -> GatewayBuilder {
    GatewayBuilder::new()
        .site("{name: app, hosts: [app.localhost], tls: local, respond: {status: 200, body: hi}}")
}

fn doctor(args: &[&str]) -> (Option<i32>, String, String) {
    let argv: Vec<String> = std::iter::once(BIN)
        .chain(std::iter::once("doctor"))
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect();
    run_argv(&argv)
}

#[test]
fn an_invalid_config_is_refused_with_its_key_and_nothing_is_probed() {
    let b = GatewayBuilder::new().site("{hosts: [a.test], tls: local, mixed_content: sometimes}");
    let path = b.write_config();
    let (code, stdout, stderr) = doctor(&["--config", path.to_str().unwrap(), "--json"]);
    assert_eq!(code, Some(2), "stderr:\n{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("error: sites[0].mixed_content"),
        "stderr:\n{stderr}"
    );
}

#[test]
fn an_unknown_site_is_refused() {
    let b = config();
    let path = b.write_config();
    let (code, stdout, stderr) =
        doctor(&["--config", path.to_str().unwrap(), "--site", "nope.test"]);
    assert_eq!(code, Some(2), "stderr:\n{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("--site: no site is named `nope.test`"),
        "stderr:\n{stderr}"
    );
    // Any of a site's hosts names it as well as its name does.
    let by_host = portcullis_tests::doctor::run(BIN, &[], &path, &["--site", "app.localhost"]);
    let by_name = portcullis_tests::doctor::run(BIN, &[], &path, &["--site", "app"]);
    for d in [by_host, by_name] {
        let sites: Vec<_> = d.findings().iter().map(|f| f["site"].clone()).collect();
        assert!(sites.iter().any(|s| s == "app"), "{:#}", d.json);
        assert!(
            sites.iter().all(|s| s == "app" || s.is_null()),
            "{:#}",
            d.json
        );
    }
}

#[test]
fn bad_flags_are_refused_by_name() {
    let b = config();
    let path = b.write_config();
    let config = path.to_str().unwrap();
    for (flag, value) in [
        ("--timeout", "0s"),
        ("--timeout", "5m"),
        ("--resolver", "dns.example"),
        ("--public-address", "somewhere"),
        ("--max-pages", "0"),
    ] {
        let (code, _, stderr) = doctor(&["--config", config, flag, value]);
        assert_eq!(code, Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
    }
}

#[test]
fn the_text_report_groups_by_site_and_counts_and_a_closed_pipe_is_no_failure() {
    let b = config();
    let path = b.write_config();
    let (code, stdout, stderr) = doctor(&["--config", path.to_str().unwrap()]);
    assert!(matches!(code, Some(0..=2)), "stderr:\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"gateway"), "{stdout}");
    assert!(lines.contains(&"site app"), "{stdout}");
    let last = lines.last().unwrap();
    assert!(
        last.ends_with(" failures") && last.contains(" ok, "),
        "{stdout}"
    );
    for line in &lines[1..lines.len() - 1] {
        let status = line.split_whitespace().next().unwrap_or("");
        assert!(
            ["ok", "warn", "fail", "fix:", "site"].contains(&status),
            "unexpected line {line:?} in:\n{stdout}"
        );
    }

    // `portcullis doctor | head -1`: the reader goes away before the report is written.
    let mut child = Command::new(BIN)
        .args(["doctor", "--config", path.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("panicked"), "stderr:\n{stderr}");
    assert!(status.code().is_some(), "killed: {status:?}");
}
