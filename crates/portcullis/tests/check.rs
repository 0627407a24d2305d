//! `portcullis check` and `portcullis run` on configs that are valid, broken, or that name a
//! port already taken: the summary, one `error: <key>: ...` line per problem, exit statuses.
#![allow(clippy::unwrap_used)]
#![allow(
    clippy::disallowed_methods,
    reason = "drives the binary as a process from outside any runtime: blocking is what it means"
)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_tests::{GatewayBuilder, TestCa};

/// What a finished `portcullis` run printed.
struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Output {
    /// The `error: ...` lines on stderr.
    fn errors(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .collect()
    }
}

/// Runs the binary to completion; kills it and fails if it is still running after 20 s
/// (a config that should be refused but starts a gateway would otherwise hang the test).
fn portcullis(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env("RUST_LOG", "info")
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

fn check(config: &Path) -> Output {
    portcullis(&["check", "--config", config.to_str().unwrap()])
}

/// A site serving `hosts` (YAML list) with a certificate for `names` written into `dir`.
fn file_site(
    dir: &Path,
    ca: &TestCa,
    stem: &str,
    hosts: &str,
    names: &[&str],
    rest: &str,
) -> String {
    let (cert, key) = ca.leaf(names).write(dir, stem);
    format!(
        "{{hosts: {hosts}, tls: {{cert: {}, key: {}}}, {rest}}}",
        cert.display(),
        key.display()
    )
}

#[test]
fn check_summarises_a_valid_config() {
    let ca = TestCa::new("check CA");
    let b = GatewayBuilder::new();
    let dir = b.dir().to_owned();
    let origin_ca = ca.write_root(&dir, "origin-ca");
    let shop = file_site(
        &dir,
        &ca,
        "shop",
        "[shop.test, www.shop.test]",
        &["shop.test", "www.shop.test"],
        "name: shop, origin: http://127.0.0.1:3000, routes: [{path: /lb, origin: {servers: [{url: 'http://10.0.0.5:80', weight: 2}, {url: 'http://10.0.0.6:80'}], balance: least_requests, health: {active: {path: /healthz}}, proxy_protocol: v2}}, {path: /login, match: exact, rewrite: /auth, plain_http: serve, allow: [10.0.0.0/8], origin: {servers: []}}, {path: /old, redirect: {to: /new}}]",
    );
    let api = file_site(
        &dir,
        &ca,
        "api",
        "[api.test]",
        &["api.test"],
        &format!(
            "origin: {{url: 'https://backend.internal:8443', ca: {}}}",
            origin_ca.display()
        ),
    );
    let b = b.site(&shop).site(&api);
    let path = b.write_config();

    let out = check(&path);
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    // rcgen certificates are valid until 4096-01-01 unless told otherwise.
    let expected = [
        "site shop".to_owned(),
        "  hosts:  shop.test, www.shop.test".to_owned(),
        format!(
            "  tls:    file {} (expires 4096-01-01T00:00:00Z",
            dir.join("shop.pem").display()
        ),
        "  route /lb -> http://10.0.0.5:80, http://10.0.0.6:80 (flexible, 2 servers, least_requests, health checked, PROXY protocol v2)".to_owned(),
        "  route /login (exact, rewritten to /auth, allow/deny, served over plain HTTP) -> an origin with no servers (503)".to_owned(),
        "  route /old -> redirect 302 /new".to_owned(),
        "  otherwise -> http://127.0.0.1:3000 (flexible)".to_owned(),
        "site api.test".to_owned(),
        "  hosts:  api.test".to_owned(),
        format!(
            "  tls:    file {} (expires 4096-01-01T00:00:00Z",
            dir.join("api.pem").display()
        ),
        "  -> https://backend.internal:8443 (strict, 1 CA certificate(s))".to_owned(),
    ];
    let mut at = 0;
    for want in &expected {
        let found = lines[at..]
            .iter()
            .position(|l| l.starts_with(want.as_str()))
            .unwrap_or_else(|| {
                panic!(
                    "no line starting {want:?} in order; stdout:\n{}",
                    out.stdout
                )
            });
        at += found + 1;
    }
    assert_eq!(
        lines.last().copied(),
        Some(format!("{}: OK", path.display()).as_str()),
        "stdout:\n{}",
        out.stdout
    );
    assert!(!out.stdout.contains("warning"), "stdout:\n{}", out.stdout);
    assert!(out.errors().is_empty(), "stderr:\n{}", out.stderr);
}

/// One broken config: how to write it, and the key its single error must name.
struct Broken {
    what: &'static str,
    key: &'static str,
    /// Words the message must contain.
    says: &'static str,
}

/// Writes `sites` (already YAML) into a config in a fresh folder; returns the folder and path.
fn config_with(sites: impl FnOnce(&Path, &TestCa) -> Vec<String>) -> (GatewayBuilder, PathBuf) {
    let ca = TestCa::new("broken CA");
    let mut b = GatewayBuilder::new();
    let dir = b.dir().to_owned();
    for s in sites(&dir, &ca) {
        b = b.site(&s);
    }
    let path = b.write_config();
    (b, path)
}

fn broken_config(case: &Broken) -> (GatewayBuilder, PathBuf) {
    let ok = "origin: http://127.0.0.1:3000";
    match case.what {
        "unknown key" => config_with(|d, ca| {
            vec![file_site(
                d,
                ca,
                "a",
                "[a.test]",
                &["a.test"],
                "orign: http://127.0.0.1:3000",
            )]
        }),
        "bad URL" => config_with(|d, ca| {
            vec![file_site(
                d,
                ca,
                "a",
                "[a.test]",
                &["a.test"],
                "origin: ftp://127.0.0.1:21",
            )]
        }),
        "missing cert file" => config_with(|d, ca| {
            let (_, key) = ca.leaf(&["a.test"]).write(d, "a");
            vec![format!(
                "{{hosts: [a.test], tls: {{cert: {}, key: {}}}, {ok}}}",
                d.join("missing.pem").display(),
                key.display()
            )]
        }),
        "certificate and key do not match" => config_with(|d, ca| {
            let (cert, _) = ca.leaf(&["a.test"]).write(d, "a");
            let (_, other_key) = ca.leaf(&["a.test"]).write(d, "other");
            vec![format!(
                "{{hosts: [a.test], tls: {{cert: {}, key: {}}}, {ok}}}",
                cert.display(),
                other_key.display()
            )]
        }),
        "host claimed twice" => config_with(|d, ca| {
            vec![
                file_site(d, ca, "a", "[a.test]", &["a.test"], ok),
                file_site(
                    d,
                    ca,
                    "b",
                    "[a.test, b.test]",
                    &["a.test", "b.test"],
                    &format!("name: b, {ok}"),
                ),
            ]
        }),
        "mode contradicts scheme" => config_with(|d, ca| {
            vec![file_site(
                d,
                ca,
                "a",
                "[a.test]",
                &["a.test"],
                "origin: {url: 'http://127.0.0.1:3000', mode: strict}",
            )]
        }),
        "invalid YAML" => {
            let b = GatewayBuilder::new();
            let path = b.dir().join("portcullis.yaml");
            std::fs::write(
                &path,
                "listen: {https: 127.0.0.1:0\nsites:\n  - hosts: [a.test]\n",
            )
            .unwrap();
            (b, path)
        }
        other => unreachable!("no config for {other}"),
    }
}

const BROKEN: &[Broken] = &[
    Broken {
        what: "unknown key",
        key: "sites[0].orign",
        says: "unknown field `orign`",
    },
    Broken {
        what: "bad URL",
        key: "sites[0].origin.url",
        says: "scheme must be http or https",
    },
    Broken {
        what: "missing cert file",
        key: "sites[0].tls.cert",
        says: "missing.pem",
    },
    Broken {
        what: "certificate and key do not match",
        key: "sites[0].tls.key",
        says: "does not match",
    },
    Broken {
        what: "host claimed twice",
        key: "sites[1].hosts[0]",
        says: "already claimed by sites[0]",
    },
    Broken {
        what: "mode contradicts scheme",
        key: "sites[0].origin.mode",
        says: "http://",
    },
];

#[test]
fn check_names_the_key_of_each_problem_and_exits_2() {
    for case in BROKEN {
        let (_dir, path) = broken_config(case);
        let out = check(&path);
        assert_eq!(
            out.code,
            Some(2),
            "{}: stdout:\n{}\nstderr:\n{}",
            case.what,
            out.stdout,
            out.stderr
        );
        let errors = out.errors();
        assert_eq!(errors.len(), 1, "{}: stderr:\n{}", case.what, out.stderr);
        let prefix = format!("error: {}: ", case.key);
        assert!(
            errors[0].starts_with(&prefix) && errors[0].contains(case.says),
            "{}: expected {prefix:?}... mentioning {:?}; stderr:\n{}",
            case.what,
            case.says,
            out.stderr
        );
        assert!(
            out.stderr.contains("1 problem found; nothing was started"),
            "{}: stderr:\n{}",
            case.what,
            out.stderr
        );
        assert!(
            !out.stdout.contains(": OK"),
            "{}: stdout:\n{}",
            case.what,
            out.stdout
        );
    }
}

/// Invalid YAML has no key to name.
const INVALID_YAML: Broken = Broken {
    what: "invalid YAML",
    key: "",
    says: "not valid YAML",
};

#[test]
fn check_reports_invalid_yaml_with_its_position() {
    let (_dir, path) = broken_config(&INVALID_YAML);
    let out = check(&path);
    assert_eq!(out.code, Some(2), "stderr:\n{}", out.stderr);
    let errors = out.errors();
    assert_eq!(errors.len(), 1, "stderr:\n{}", out.stderr);
    assert!(
        errors[0].starts_with("error: not valid YAML: ") && errors[0].contains("line 2"),
        "stderr:\n{}",
        out.stderr
    );
}

#[test]
fn check_lists_every_problem_of_every_site() {
    let (_dir, path) = config_with(|d, ca| {
        vec![
            file_site(
                d,
                ca,
                "a",
                "[a.test]",
                &["a.test"],
                "origin: ftp://127.0.0.1:21",
            ),
            file_site(
                d,
                ca,
                "b",
                "[b.test]",
                &["b.test"],
                "origin: {url: 'https://127.0.0.1:3000', mode: flexible}",
            ),
        ]
    });
    let out = check(&path);
    assert_eq!(out.code, Some(2), "stderr:\n{}", out.stderr);
    let keys: Vec<&str> = out
        .errors()
        .iter()
        .map(|l| l.trim_start_matches("error: ").split(": ").next().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["sites[0].origin.url", "sites[1].origin.mode"],
        "stderr:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("2 problems found; nothing was started"),
        "stderr:\n{}",
        out.stderr
    );
}

#[test]
fn run_refuses_a_broken_config_with_the_same_messages_and_starts_nothing() {
    for case in BROKEN.iter().chain([&INVALID_YAML]) {
        let (_dir, path) = broken_config(case);
        let checked = check(&path);
        let out = portcullis(&["run", "--config", path.to_str().unwrap()]);
        assert_eq!(out.code, Some(2), "{}: stderr:\n{}", case.what, out.stderr);
        assert!(
            !out.errors().is_empty(),
            "{}: stderr:\n{}",
            case.what,
            out.stderr
        );
        assert_eq!(
            out.errors(),
            checked.errors(),
            "{}: run and check disagree",
            case.what
        );
        assert!(
            out.stderr.contains("nothing was started"),
            "{}: stderr:\n{}",
            case.what,
            out.stderr
        );
        assert!(
            !out.stderr.contains("portcullis is serving"),
            "{}: stderr:\n{}",
            case.what,
            out.stderr
        );
    }
}

#[test]
fn run_refuses_a_config_with_a_local_site_and_a_broken_site_before_creating_the_ca() {
    let (b, path) = config_with(|d, ca| {
        vec![
            "{hosts: [local.test], tls: local, respond: {body: hi}}".to_owned(),
            file_site(
                d,
                ca,
                "a",
                "[a.test]",
                &["a.test"],
                "origin: ftp://127.0.0.1:21",
            ),
        ]
    });
    let out = portcullis(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.code, Some(2), "stderr:\n{}", out.stderr);
    assert_eq!(out.errors().len(), 1, "stderr:\n{}", out.stderr);
    assert!(
        out.errors()[0].starts_with("error: sites[1].origin.url: "),
        "stderr:\n{}",
        out.stderr
    );
    assert!(!b.dir().join("ca").exists(), "the local CA was created");
}

#[test]
fn a_certificate_not_covering_a_host_is_a_warning() {
    let (_dir, path) = config_with(|d, ca| {
        vec![file_site(
            d,
            ca,
            "a",
            "[a.test, b.test]",
            &["a.test"],
            "origin: http://127.0.0.1:3000",
        )]
    });
    let out = check(&path);
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    let warnings: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 1, "stdout:\n{}", out.stdout);
    assert!(
        warnings[0].starts_with("warning: sites[0].hosts[1]: ") && warnings[0].contains("b.test"),
        "stdout:\n{}",
        out.stdout
    );
    assert!(
        out.stdout.ends_with(&format!("{}: OK\n", path.display())),
        "stdout:\n{}",
        out.stdout
    );
    assert!(out.errors().is_empty(), "stderr:\n{}", out.stderr);
}

/// Runs a one-site gateway whose `listen` is `listen` and returns what it printed.
fn run_with_listen(listen: &str) -> Output {
    let ca = TestCa::new("bind CA");
    let b = GatewayBuilder::new();
    let site = file_site(
        b.dir(),
        &ca,
        "a",
        "[a.test]",
        &["a.test"],
        "respond: {body: hi}",
    );
    let b = b.site(&site).set("listen", listen);
    let path = b.write_config();
    portcullis(&["run", "--config", path.to_str().unwrap()])
}

#[test]
fn a_port_in_use_names_the_listener_and_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();

    for (listen, which) in [
        (format!("{{https: '{addr}', http: off}}"), "https"),
        (format!("{{https: '127.0.0.1:0', http: '{addr}'}}"), "http"),
    ] {
        let out = run_with_listen(&listen);
        assert_eq!(out.code, Some(1), "{which}: stderr:\n{}", out.stderr);
        let want = format!("error: cannot listen for {which} on {addr}: address already in use");
        assert!(
            out.stderr.lines().any(|l| l.starts_with(&want)),
            "expected {want:?}; stderr:\n{}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("portcullis is serving"),
            "stderr:\n{}",
            out.stderr
        );
    }
    drop(taken);
}

/// `check` on a one-site config whose `admin` section is `admin`, with a token file beside
/// it.
fn check_admin(admin: &str) -> (Output, GatewayBuilder) {
    let b = GatewayBuilder::new();
    std::fs::write(b.dir().join("admin.token"), "0123456789abcdef\n").unwrap();
    let b = b
        .site("{hosts: [a.test], tls: local, respond: {}}")
        .set("admin", admin);
    let out = check(&b.write_config());
    (out, b)
}

#[test]
fn an_admin_listener_off_loopback_without_a_token_is_a_warning() {
    let warnings = |out: &Output| -> Vec<String> {
        out.stdout
            .lines()
            .filter(|l| l.starts_with("warning: "))
            .map(str::to_owned)
            .collect()
    };
    let (out, b) = check_admin("{listen: '0.0.0.0:0'}");
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    let w = warnings(&out);
    assert_eq!(w.len(), 1, "stdout:\n{}", out.stdout);
    assert!(
        w[0].starts_with("warning: admin.listen: 0.0.0.0:0 ") && w[0].contains("admin.token_file"),
        "{w:?}"
    );
    // `run` says the same in its log.
    let gw = portcullis_tests::GatewayProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_portcullis")),
        &[
            "run",
            "--config",
            b.dir().join("portcullis.yaml").to_str().unwrap(),
        ],
    );
    assert!(
        gw.logs().iter().any(|l| l.contains("\"level\":\"WARN\"")
            && l.contains("\"key\":\"admin.listen\"")
            && l.contains("admin.token_file")),
        "log:\n{}",
        gw.logs().join("\n")
    );
    drop(gw);

    for quiet in [
        "{listen: '0.0.0.0:0', token_file: admin.token}",
        "{listen: '127.0.0.1:0'}",
        "{listen: off}",
    ] {
        let (out, _b) = check_admin(quiet);
        assert_eq!(out.code, Some(0), "{quiet}: stderr:\n{}", out.stderr);
        assert!(
            warnings(&out).is_empty(),
            "{quiet}: stdout:\n{}",
            out.stdout
        );
    }
}

/// The cluster example checks as it is and the summary says how the replica shares its
/// certificates; a broken `cluster:` section is refused with the key that is wrong.
#[test]
fn check_summarises_the_cluster_example_and_names_a_broken_cluster_key() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/cluster.yaml");
    let out = check(&example);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains(
            "cluster: etcd http://127.0.0.1:2379 under /portcullis/ as r1 (lease 10s); ACME certificates shared by one issuer"
        ),
        "{}",
        out.stdout
    );

    let b = GatewayBuilder::new()
        .set(
            "cluster",
            "{store: etcd, etcd: {endpoints: ['10.0.0.2:2379']}, node_name: r1, lease: 1s}",
        )
        .site("{hosts: [a.test], tls: acme, respond: {}}");
    let out = check(&b.write_config());
    assert_eq!(out.code, Some(2), "{}", out.stdout);
    let errors = out.errors();
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("error: cluster.etcd.endpoints[0]:")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("error: cluster.lease:")),
        "{errors:?}"
    );
}
