//! The command line itself: `--version`, `--help`, and `proxy`, the one-site gateway built
//! from two flags with a certificate from the local CA.
#![allow(clippy::unwrap_used)]
#![allow(
    clippy::disallowed_methods,
    reason = "drives the binary as a process from outside any runtime: blocking is what it means"
)]

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_tests::{GatewayProcess, TestClient, TestOrigin};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// What a finished `portcullis` run printed.
struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary in `cwd` to completion; kills it and fails if it is still running after
/// 20 s (a command that should be refused but starts a gateway would otherwise hang).
fn portcullis(cwd: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
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
            panic!(
                "portcullis {args:?} still running after 20 s; stderr:\n{}",
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        code: status.code(),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

#[test]
fn version_prints_the_package_version() {
    let dir = tempfile::tempdir().unwrap();
    let out = portcullis(dir.path(), &["--version"]);
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    assert_eq!(
        out.stdout,
        format!("portcullis {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_lists_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let out = portcullis(dir.path(), &["--help"]);
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    let commands: Vec<&str> = out
        .stdout
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        commands,
        [
            "run", "check", "reload", "certs", "doctor", "proxy", "ingress", "help"
        ],
        "stdout:\n{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("--log-format"),
        "stdout:\n{}",
        out.stdout
    );
}

/// Starts `portcullis proxy` for `a.localhost` in front of `origin` (a bare `host:port`,
/// which means plain HTTP) with `extra` flags and its local CA in `ca_dir`; returns it with
/// a client that trusts that CA.
fn start_proxy(origin: &TestOrigin, ca_dir: &Path, extra: &[&str]) -> (GatewayProcess, TestClient) {
    let to = origin.addr.to_string();
    let mut args = vec!["proxy", "--from", "a.localhost:0", "--to", &to];
    args.extend(["--local-ca-dir", ca_dir.to_str().unwrap()]);
    args.extend(extra);
    let gw = GatewayProcess::spawn(Path::new(BIN), &args);
    let root = CertificateDer::from_pem_file(ca_dir.join("root.crt")).unwrap();
    let client = TestClient::new(SocketAddr::from(([127, 0, 0, 1], gw.https.port())), &root);
    (gw, client)
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_serves_the_host_with_a_certificate_from_the_local_ca() {
    let origin = TestOrigin::http().await;
    let tmp = tempfile::tempdir().unwrap();
    let (gw, client) = start_proxy(&origin, &tmp.path().join("ca"), &[]);
    assert_ne!(gw.https.port(), 0);
    assert_eq!(gw.http, None, "plain HTTP is only served with port 443");
    assert_eq!(gw.admin, None, "admin is off unless --admin is given");

    let resp = client.get("a.localhost", "/hello?x=1").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "ok GET /hello?x=1");
    let seen = origin.last();
    assert_eq!(seen.path, "/hello?x=1");
    assert_eq!(seen.headers["host"], "a.localhost");
}

/// How many of the process's threads are Tokio workers.
fn worker_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "tokio-rt-worker")
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_sets_the_serving_threads() {
    let origin = TestOrigin::http().await;
    let tmp = tempfile::tempdir().unwrap();
    for (workers, expected) in [("1", 1), ("3", 3)] {
        let ca_dir = tmp.path().join(format!("ca-{workers}"));
        let (gw, client) = start_proxy(&origin, &ca_dir, &["--workers", workers]);
        for _ in 0..3 {
            assert_eq!(client.get("a.localhost", "/").await.status, 200);
        }
        assert_eq!(worker_threads(gw.pid()), expected, "--workers {workers}");
    }
    let out = portcullis(
        tmp.path(),
        &[
            "proxy",
            "--workers",
            "0",
            "--from",
            "a.localhost",
            "--to",
            "127.0.0.1:1",
        ],
    );
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--workers"), "{}", out.stderr);
}

/// CPU time the process has used, user and system, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // Fields 14 (utime) and 15 (stime) of the whole line are 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn busy_poll_keeps_a_woken_worker_polling_and_refuses_seconds() {
    let origin = TestOrigin::http().await;
    let tmp = tempfile::tempdir().unwrap();
    let flags = ["--workers", "1", "--busy-poll", "400ms"];
    let (gw, client) = start_proxy(&origin, &tmp.path().join("ca"), &flags);
    assert_eq!(client.get("a.localhost", "/").await.status, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = cpu_ticks(gw.pid());
    // The request wakes the worker, which then polls for 400 ms rather than sleeping: a
    // gateway without busy polling uses a fraction of a millisecond of CPU on it.
    assert_eq!(client.get("a.localhost", "/").await.status, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let spun = cpu_ticks(gw.pid()) - before;
    assert!(spun >= 5, "{spun} ticks of CPU after one request");

    let out = portcullis(
        tmp.path(),
        &[
            "proxy",
            "--busy-poll",
            "5",
            "--from",
            "a.localhost",
            "--to",
            "127.0.0.1:1",
        ],
    );
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--busy-poll"), "{}", out.stderr);
    assert!(out.stderr.contains("more than 1s"), "{}", out.stderr);
}

#[test]
fn proxy_refuses_bad_flags_naming_the_flag() {
    for (args, flag, says) in [
        (
            ["--to", "ftp://x", "--from", "a.localhost"],
            "--to",
            "scheme must be http or https",
        ),
        (
            ["--to", "127.0.0.1:3000", "--from", "a.localhost:99999"],
            "--from",
            "99999",
        ),
        (
            ["--to", "http://127.0.0.1:3000", "--from", "a.localhost:0"],
            "--mode",
            "`strict` uses TLS",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let mut all = vec!["proxy"];
        all.extend(args);
        if flag == "--mode" {
            all.extend(["--mode", "strict"]);
        }
        let out = portcullis(tmp.path(), &all);
        assert_eq!(out.code, Some(2), "{all:?}: stderr:\n{}", out.stderr);
        let errors: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .collect();
        assert_eq!(errors.len(), 1, "{all:?}: stderr:\n{}", out.stderr);
        assert!(
            errors[0].starts_with(&format!("error: {flag}: ")) && errors[0].contains(says),
            "{all:?}: expected `error: {flag}: ...{says}...`; stderr:\n{}",
            out.stderr
        );
        assert!(
            out.stderr.contains("nothing was started"),
            "{all:?}: stderr:\n{}",
            out.stderr
        );
        // The default local CA folder (./data/ca) is not created for a refused command.
        assert!(!tmp.path().join("data").exists(), "{all:?}: created ./data");
    }
}
