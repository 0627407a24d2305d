//! The admin listener refuses what a web page could make a browser send it: a `Host` that
//! is not the listener (DNS rebinding), a request from another origin (`Origin`,
//! `Sec-Fetch-Site`, the preflight-free `text/plain` POST), and with `admin.token_file`
//! anything but `/healthz` and `/readyz` without the bearer token.

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use portcullis_tests::plain::{self, PlainResponse};
use portcullis_tests::scrape::sample;
use portcullis_tests::{GatewayBuilder, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "7f3a9c1e5b2d4f60a8e1c3b5d7f90214";

/// `METHOD path` with `Host: host` and the extra header lines in `headers`.
async fn request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    headers: &str,
) -> PlainResponse {
    plain::send(
        admin,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Length: 0\r\n\
             Connection: close\r\n\r\n"
        ),
    )
    .await
}

async fn gateway(admin: &str, token: bool) -> TestGateway {
    let b = GatewayBuilder::new();
    if token {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(b.dir().join("admin.token"))
            .unwrap();
        std::io::Write::write_all(&mut file, format!("{TOKEN}\n").as_bytes()).unwrap();
    }
    b.set("admin", admin)
        .site("{hosts: [a.test], tls: local, respond: {body: a}}")
        .start()
        .await
}

/// Successful reloads so far, from `/metrics` (asked with `auth` header lines).
async fn reloads(admin: SocketAddr, auth: &str) -> f64 {
    let a = request(admin, "GET", "/metrics", "localhost", auth).await;
    assert_eq!(a.status, 200, "{}", a.body());
    sample(
        a.body(),
        r#"portcullis_config_reloads_total{result="success"}"#,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_a_web_page_could_send_are_refused() {
    let gw = gateway(
        "{listen: '127.0.0.1:0', allowed_hosts: [admin.internal]}",
        false,
    )
    .await;
    let admin = gw.admin.unwrap();
    let own = admin.to_string();

    // DNS rebinding: a name the attacker controls, pointed at 127.0.0.1.
    for (method, path) in [("POST", "/reload"), ("GET", "/metrics"), ("GET", "/readyz")] {
        for host in [
            "evil.example",
            "evil.example:9901",
            "localhost.evil.example",
        ] {
            let a = request(admin, method, path, host, "").await;
            assert_eq!(
                a.status,
                403,
                "{method} {path} with Host {host}: {}",
                a.body()
            );
            assert!(a.body().contains("admin.allowed_hosts"), "{}", a.body());
            assert!(
                !a.body().contains("portcullis_"),
                "metrics leaked: {}",
                a.body()
            );
        }
    }
    // HTTP/1.1 without Host.
    let a = plain::send(admin, "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(a.status, 400, "{}", a.body());

    // Cross-site: the "simple" POST a form or fetch() sends with no preflight.
    let simple = plain::send(
        admin,
        &format!(
            "POST /reload HTTP/1.1\r\nHost: {own}\r\nOrigin: http://evil.example\r\n\
             Content-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        ),
    )
    .await;
    assert_eq!(simple.status, 403, "{}", simple.body());
    for headers in [
        "Origin: http://evil.example\r\n",
        "Origin: null\r\n",
        "Origin: http://localhost:3000\r\n",
        "Sec-Fetch-Site: cross-site\r\n",
        "Sec-Fetch-Site: same-site\r\n",
    ] {
        for (method, path) in [("POST", "/reload"), ("GET", "/metrics")] {
            let a = request(admin, method, path, &own, headers).await;
            assert_eq!(
                a.status,
                403,
                "{method} {path} with {headers}: {}",
                a.body()
            );
        }
    }
    // None of the refused reloads ran.
    assert_eq!(reloads(admin, "").await, 0.0);

    // What a person or a prober sends is served.
    for host in [
        own.as_str(),
        "localhost:1234",
        "127.0.0.1",
        "[::1]",
        "admin.internal",
    ] {
        let a = request(admin, "GET", "/healthz", host, "").await;
        assert_eq!(a.status, 200, "Host {host}: {}", a.body());
    }
    let same_origin = format!("Origin: http://{own}\r\nSec-Fetch-Site: same-origin\r\n");
    let a = request(admin, "POST", "/reload", &own, &same_origin).await;
    assert_eq!(a.status, 200, "{}", a.body());
    let a = request(admin, "POST", "/reload", "localhost", "").await;
    assert_eq!((a.status, a.body()), (200, "reloaded: 1 sites\n"));
    assert_eq!(reloads(admin, "").await, 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_token_file_reload_and_metrics_need_the_bearer_token() {
    let gw = gateway("{listen: '127.0.0.1:0', token_file: ./admin.token}", true).await;
    let admin = gw.admin.unwrap();
    let right = format!("Authorization: Bearer {TOKEN}\r\n");
    for (method, path) in [("POST", "/reload"), ("GET", "/metrics")] {
        for wrong in [
            String::new(),
            "Authorization: Bearer nope\r\n".to_owned(),
            format!("Authorization: Bearer {}\r\n", &TOKEN[1..]),
            format!("Authorization: Basic {TOKEN}\r\n"),
        ] {
            let a = request(admin, method, path, "localhost", &wrong).await;
            assert_eq!(
                a.status,
                401,
                "{method} {path} with {wrong:?}: {}",
                a.body()
            );
            assert!(
                a.head()
                    .to_ascii_lowercase()
                    .contains("\r\nwww-authenticate: bearer"),
                "{}",
                a.head()
            );
            assert!(a.body().contains("admin.token_file"), "{}", a.body());
        }
    }
    // The token does not let a web page in.
    let a = request(
        admin,
        "POST",
        "/reload",
        "evil.example",
        &format!("{right}Origin: http://evil.example\r\n"),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body());
    assert_eq!(reloads(admin, &right).await, 0.0);

    let a = request(admin, "POST", "/reload", "localhost", &right).await;
    assert_eq!((a.status, a.body()), (200, "reloaded: 1 sites\n"));
    assert_eq!(reloads(admin, &right).await, 1.0);
    // Probes carry no secret.
    for path in ["/healthz", "/readyz"] {
        let a = request(admin, "GET", path, "localhost", "").await;
        assert_eq!(a.status, 200, "{path}: {}", a.body());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_can_be_a_unix_socket_only_its_user_can_use() {
    use std::os::unix::fs::PermissionsExt;
    let gw = gateway("{listen: 'unix:./admin.sock'}", false).await;
    assert_eq!(gw.admin, None, "no TCP admin listener");
    let path = gw.dir().join("admin.sock");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    let over_unix = |request: String| {
        let path = path.clone();
        async move {
            let mut unix = tokio::net::UnixStream::connect(&path).await.unwrap();
            unix.write_all(request.as_bytes()).await.unwrap();
            let mut text = String::new();
            tokio::time::timeout(Duration::from_secs(10), unix.read_to_string(&mut text))
                .await
                .unwrap()
                .unwrap();
            text
        }
    };
    let get =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert!(over_unix(get("/healthz")).await.starts_with("HTTP/1.1 200"));
    let reload = over_unix(
        "POST /reload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            .into(),
    )
    .await;
    assert!(
        reload.starts_with("HTTP/1.1 200") && reload.ends_with("reloaded: 1 sites\n"),
        "{reload}"
    );
    // The Host check still holds.
    let a = over_unix(get("/metrics").replace("localhost", "evil.example")).await;
    assert!(a.starts_with("HTTP/1.1 403"), "{a}");
    // The socket goes with the gateway.
    assert!(gw.stop().await);
    wait_gone(&path).await;
}

async fn wait_gone(path: &std::path::Path) {
    portcullis_tests::wait::until(
        Duration::from_secs(10),
        "the socket file removed",
        || async { (!path.exists()).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_socket_is_replaced_and_a_file_that_is_not_one_is_left_alone() {
    // A socket file left by a gateway that was killed: nothing listens on it.
    let b = GatewayBuilder::new();
    drop(std::os::unix::net::UnixListener::bind(b.dir().join("admin.sock")).unwrap());
    let gw = b
        .set("admin", "{listen: 'unix:./admin.sock'}")
        .site("{hosts: [a.test], tls: local, respond: {}}")
        .start()
        .await;
    let path = gw.dir().join("admin.sock");
    tokio::net::UnixStream::connect(&path).await.unwrap();

    // A regular file at the path is someone's data: refused, and kept. (In a folder of
    // its own: the builder's goes when a start fails.)
    let elsewhere = tempfile::tempdir().unwrap();
    let file = elsewhere.path().join("admin.sock");
    std::fs::write(&file, "data").unwrap();
    let refused = GatewayBuilder::new()
        .set("admin", &format!("{{listen: 'unix:{}'}}", file.display()))
        .site("{hosts: [a.test], tls: local, respond: {}}")
        .try_start()
        .await;
    let Err(e) = refused else {
        panic!("started over a regular file")
    };
    assert!(e.to_string().contains("not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(file).unwrap(), "data");
}
