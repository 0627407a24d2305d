//! `portcullis doctor --json` run as a process, and its report read back: the doctor's
//! process suites share it.
#![allow(
    clippy::disallowed_methods,
    reason = "runs the binary to completion from a test thread; blocking is what it means"
)]

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a doctor run may take before the test fails (its probes are bounded by
/// `--timeout`; the run must end in seconds).
const LIMIT: Duration = Duration::from_secs(30);

/// A finished doctor run.
#[derive(Debug)]
pub struct Doctor {
    /// Its exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Its report.
    pub json: Value,
    /// What it wrote on stderr.
    pub stderr: String,
}

/// Runs `BIN doctor --config CONFIG --json ARGS` through `runner` (e.g. `["runuser", "-u",
/// "nobody", "--"]`, or nothing), with `RUST_LOG=warn`; killed and failed after 30 s, and
/// failed when stdout is not JSON.
pub fn run(bin: &str, runner: &[&str], config: &Path, args: &[&str]) -> Doctor {
    let mut argv: Vec<String> = runner.iter().map(|s| (*s).to_owned()).collect();
    argv.extend(
        [
            bin,
            "doctor",
            "--config",
            &config.display().to_string(),
            "--json",
        ]
        .iter()
        .map(|s| (*s).to_owned()),
    );
    argv.extend(args.iter().map(|s| (*s).to_owned()));
    let (code, stdout, stderr) = run_argv(&argv);
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\nstderr:\n{stderr}"));
    Doctor { code, json, stderr }
}

/// Runs `argv` to completion (at most 30 s): exit code, stdout, stderr.
pub fn run_argv(argv: &[String]) -> (Option<i32>, String, String) {
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .env("RUST_LOG", "warn")
        .env_remove("PORTCULLIS_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{argv:?} still running after {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code(),
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    )
}

impl Doctor {
    /// Every finding, with its group's site added as `site`.
    pub fn findings(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for g in self.json["groups"].as_array().into_iter().flatten() {
            for f in g["findings"].as_array().into_iter().flatten() {
                let mut f = f.clone();
                f["site"] = g["site"].clone();
                out.push(f);
            }
        }
        out
    }

    /// The findings of `check` for `site` (`None`: the gateway's).
    pub fn of(&self, site: Option<&str>, check: &str) -> Vec<Value> {
        let site = site.map_or(Value::Null, |s| Value::String(s.to_owned()));
        self.findings()
            .into_iter()
            .filter(|f| f["site"] == site && f["check"] == check)
            .collect()
    }

    /// The findings of `check` about `subject`, whatever their site.
    pub fn about(&self, check: &str, subject: &str) -> Vec<Value> {
        self.findings()
            .into_iter()
            .filter(|f| f["check"] == check && f["subject"] == subject)
            .collect()
    }

    /// The one finding of `check` for `site` about `subject`.
    pub fn finding(&self, site: &str, check: &str, subject: &str) -> Value {
        let found: Vec<Value> = self
            .of(Some(site), check)
            .into_iter()
            .filter(|f| f["subject"] == subject)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one {check} finding about {subject} for {site}, in:\n{:#}",
            self.json
        );
        found.into_iter().next().unwrap_or_default()
    }

    /// The one finding of `check` about `subject` whose message contains `says`.
    pub fn one(&self, check: &str, subject: &str, says: &str) -> Value {
        let found: Vec<Value> = self
            .about(check, subject)
            .into_iter()
            .filter(|f| f["message"].as_str().is_some_and(|m| m.contains(says)))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one {check} finding about {subject} saying {says:?}; report:\n{:#}",
            self.json
        );
        found.into_iter().next().unwrap_or_default()
    }

    /// The exit status is the worst finding's (0 all ok, 1 warnings only, 2 failures), as
    /// is the report's `status`; and it is at least `at_least`.
    pub fn assert_exit_follows_findings(&self, at_least: i32) {
        let rank = |s: &str| match s {
            "ok" => 0,
            "warn" => 1,
            "fail" => 2,
            other => panic!("unknown status {other}"),
        };
        let worst = self
            .findings()
            .iter()
            .map(|f| rank(f["status"].as_str().unwrap_or("?")))
            .max()
            .unwrap_or(0);
        assert_eq!(
            rank(self.json["status"].as_str().unwrap_or("?")),
            worst,
            "{:#}",
            self.json
        );
        assert_eq!(self.code, Some(worst), "stderr:\n{}", self.stderr);
        assert!(worst >= at_least, "{:#}", self.json);
    }
}
