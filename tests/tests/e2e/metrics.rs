//! The admin listener: `/metrics` is valid Prometheus text (promtool agrees), its catalogue
//! follows the traffic with labels taken from the configuration only, and `/healthz` and
//! `/readyz` say whether the gateway lives and can serve every site.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, RandomState};

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use portcullis_tests::{
    GatewayBuilder, TestCa, TestClient, TestGateway, TestOrigin, closed_port, collect, empty,
    plain, wait,
};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

/// `exp.test`'s certificate expires 2031-05-17T00:00:00Z.
const EXP_NOT_AFTER: f64 = 1_936_742_400.0;
/// rcgen's default expiry, 4096-01-01T00:00:00Z, which the harness's leaves keep.
const RCGEN_NOT_AFTER: f64 = 67_090_118_400.0;

/// One request over a fresh plain TCP connection: status, head and body.
async fn plain_get(addr: SocketAddr, host: &str, path: &str) -> (u16, String, String) {
    let resp = plain::get(addr, host, path).await;
    (resp.status, resp.head().to_owned(), resp.body().to_owned())
}

/// One sample of the exposition text.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text format's sample lines (`name{k="v",...} value`).
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, mut rest) = series.split_once('{').unwrap_or((series, ""));
        let mut labels = BTreeMap::new();
        while let Some((key, after)) = rest.split_once("=\"") {
            let mut val = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().unwrap() {
                    (_, '\\') => match chars.next().unwrap().1 {
                        'n' => val.push('\n'),
                        c => val.push(c),
                    },
                    (i, '"') => break i,
                    (_, c) => val.push(c),
                }
            };
            labels.insert(key.trim_start_matches(',').to_owned(), val);
            rest = &after[end + 1..];
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value: value.parse().unwrap(),
        });
    }
    samples
}

/// A scrape of `/metrics`.
struct Scrape(Vec<Sample>);

impl Scrape {
    async fn take(admin: SocketAddr) -> Self {
        let (status, head, body) = plain_get(admin, "localhost", "/metrics").await;
        assert_eq!(status, 200, "{head}");
        Self(parse(&body))
    }

    /// The samples of `name` carrying every label in `labels`.
    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> {
        self.0.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
    }

    /// The value of the one sample of `name` with exactly these labels; 0 when absent.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<_> = self
            .matching(name, labels)
            .filter(|s| s.labels.len() == labels.len())
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?}: {found:?}");
        found.first().map_or(0.0, |s| s.value)
    }

    /// The sum of every sample of `name`, whatever its labels.
    fn total(&self, name: &str) -> f64 {
        self.matching(name, &[]).map(|s| s.value).sum()
    }

    /// Every series (name and label set), for comparing label values.
    fn series(&self) -> BTreeSet<(String, BTreeMap<String, String>)> {
        self.0
            .iter()
            .map(|s| (s.name.clone(), s.labels.clone()))
            .collect()
    }
}

/// Two sites: `shop` (`m.test`) with a route to a live origin and one to a dead origin, and
/// `expiry` (`exp.test`), whose self-signed certificate expires at [`EXP_NOT_AFTER`].
struct Setup {
    ca: TestCa,
    gw: TestGateway,
    live: String,
    dead: String,
    _origin: TestOrigin,
}

async fn setup() -> Setup {
    let ca = TestCa::new("metrics CA");
    let origin = TestOrigin::http().await;
    let live = format!("http://{}", origin.addr);
    let dead = format!("http://127.0.0.1:{}", closed_port().await);
    let b = GatewayBuilder::new();
    let exp_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["exp.test".to_owned()]).unwrap();
    params.not_after = rcgen::date_time_ymd(2031, 5, 17);
    let exp_cert = params.self_signed(&exp_key).unwrap();
    let (exp_cert_path, exp_key_path) = (b.dir().join("exp.pem"), b.dir().join("exp.key"));
    std::fs::write(&exp_cert_path, exp_cert.pem()).unwrap();
    std::fs::write(&exp_key_path, exp_key.serialize_pem()).unwrap();
    let gw = b
        .tls_site(
            &ca,
            &["m.test"],
            &format!(
                "name: shop, routes: [{{path: /api, origin: '{live}'}}, {{path: /dead, origin: '{dead}'}}]"
            ),
        )
        .site(&format!(
            "{{name: expiry, hosts: [exp.test], tls: {{cert: {}, key: {}}}, respond: {{body: exp}}}}",
            exp_cert_path.display(),
            exp_key_path.display()
        ))
        .start()
        .await;
    Setup {
        ca,
        gw,
        live,
        dead,
        _origin: origin,
    }
}

/// GET `path` with `Host: host` over HTTP/1.1 on a connection with SNI `m.test`.
async fn get_on_shop(client: &TestClient, host: &str, path: &str) -> u16 {
    let mut conn = client.connect("m.test", &["http/1.1"]).await.unwrap();
    let req = conn.request(host, path).body(empty()).unwrap();
    collect(conn.send(req).await.unwrap()).await.status.as_u16()
}

/// A TLS 1.2 handshake to `m.test` and one GET over it.
async fn get_over_tls12(s: &Setup, path: &str) -> u16 {
    let mut roots = RootCertStore::empty();
    roots.add(s.ca.root_der.clone()).unwrap();
    let config = ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(s.gw.https).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("m.test").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let (mut sender, conn) = http1::handshake(TokioIo::new(tls)).await.unwrap();
    let task = tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "m.test")
        .body(empty())
        .unwrap();
    let status = collect(sender.send_request(req).await.unwrap())
        .await
        .status;
    drop(sender);
    let _ = task.await;
    status.as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_pass_promtool_check() {
    let promtool = Command::new("promtool").arg("--version").output();
    assert!(
        promtool.is_ok_and(|o| o.status.success()),
        "promtool is missing: install the Debian package `prometheus` (.ci/run installs it)"
    );
    let s = setup().await;
    let client = s.gw.client(&s.ca.root_der);
    // Traffic, so every family has samples: requests, histograms, errors, handshakes.
    assert_eq!(get_on_shop(&client, "m.test", "/api/x").await, 200);
    assert_eq!(get_on_shop(&client, "m.test", "/dead/x").await, 502);
    assert_eq!(get_on_shop(&client, "m.test", "/nowhere").await, 404);
    assert!(client.tls("unknown.test", true, &[]).await.is_err());
    let admin = s.gw.admin.unwrap();
    let (status, head, body) = plain_get(admin, "localhost", "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    assert!(body.contains("portcullis_http_request_duration_seconds_bucket{"));

    portcullis_tests::scrape::assert_promtool_clean(&body);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_catalogue_follows_the_traffic() {
    let s = setup().await;
    let admin = s.gw.admin.unwrap();
    let client = s.gw.client(&s.ca.root_der);
    let api = [("site", "shop"), ("route", "/api")];
    let before = Scrape::take(admin).await;

    // Three requests over one TLS 1.3 connection, one over TLS 1.2.
    let mut conn = client.connect("m.test", &["http/1.1"]).await.unwrap();
    for path in ["/api/a", "/api/b", "/api/c"] {
        assert_eq!(
            conn.get("m.test", path).await.text(),
            format!("ok GET {path}")
        );
    }
    assert_eq!(get_over_tls12(&s, "/api/d").await, 200);
    // A dead origin, an unknown SNI, and the plain HTTP listener.
    assert_eq!(get_on_shop(&client, "m.test", "/dead/x").await, 502);
    assert!(
        client
            .tls("unknown.test", true, &["http/1.1"])
            .await
            .is_err()
    );
    let (status, _, _) = plain_get(s.gw.http.unwrap(), "m.test", "/").await;
    assert_eq!(status / 100, 3);
    // Connections held open: `conn` and an HTTP/2 one.
    let held = client.connect("m.test", &["h2"]).await.unwrap();
    assert!(held.is_h2());

    // Counted when each response has ended, which the client may see first: poll.
    let after = wait::until(
        Duration::from_secs(10),
        "the requests counted and only the two held connections open",
        || async {
            let now = Scrape::take(admin).await;
            let open = now.get("portcullis_connections_open", &[("listener", "https")]);
            let counted = now.get(
                "portcullis_http_requests_total",
                &[api[0], api[1], ("code", "2xx")],
            ) - before.get(
                "portcullis_http_requests_total",
                &[api[0], api[1], ("code", "2xx")],
            );
            // The gateway counts a refused handshake just after sending its alert.
            let refused = now.get(
                "portcullis_tls_handshake_failures_total",
                &[("reason", "unknown_sni")],
            );
            // A TLS 1.3 client is done with the handshake one flight before the gateway
            // is, so the held connection's handshake may be counted after it returns.
            let tls13 = [("result", "ok"), ("version", "TLSv1.3")];
            let shaken = now.get("portcullis_tls_handshakes_total", &tls13)
                - before.get("portcullis_tls_handshakes_total", &tls13);
            (open == 2.0 && counted >= 4.0 && refused >= 1.0 && shaken >= 3.0).then_some(now)
        },
    )
    .await;
    let delta =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);

    assert_eq!(
        delta(
            "portcullis_http_requests_total",
            &[api[0], api[1], ("code", "2xx")]
        ),
        4.0
    );
    assert_eq!(
        delta(
            "portcullis_http_requests_total",
            &[api[0], api[1], ("code", "5xx")]
        ),
        0.0
    );
    assert_eq!(
        delta("portcullis_http_request_duration_seconds_count", &api),
        4.0
    );
    assert!(delta("portcullis_http_request_duration_seconds_sum", &api) > 0.0);
    assert_eq!(
        delta(
            "portcullis_http_requests_total",
            &[("site", "shop"), ("route", "/dead"), ("code", "5xx")]
        ),
        1.0
    );
    assert_eq!(
        delta("portcullis_origin_requests_total", &[("origin", &s.live)]),
        4.0
    );
    assert_eq!(
        delta(
            "portcullis_origin_response_duration_seconds_count",
            &[("origin", &s.live)]
        ),
        4.0
    );
    assert_eq!(
        delta(
            "portcullis_origin_errors_total",
            &[("origin", &s.dead), ("kind", "connect")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "portcullis_origin_errors_total",
            &[("origin", &s.live), ("kind", "connect")]
        ),
        0.0
    );

    // Handshakes: `conn`, /dead and the held one in TLS 1.3; one TLS 1.2; one unknown SNI.
    let tls13 = [("result", "ok"), ("version", "TLSv1.3")];
    assert_eq!(delta("portcullis_tls_handshakes_total", &tls13), 3.0);
    let tls12 = [("result", "ok"), ("version", "TLSv1.2")];
    assert_eq!(delta("portcullis_tls_handshakes_total", &tls12), 1.0);
    let failed = [("result", "failed"), ("version", "unknown")];
    assert_eq!(delta("portcullis_tls_handshakes_total", &failed), 1.0);
    assert_eq!(
        delta(
            "portcullis_tls_handshake_failures_total",
            &[("reason", "unknown_sni")]
        ),
        1.0
    );

    // Connections per listener.
    assert_eq!(
        delta("portcullis_connections_total", &[("listener", "https")]),
        5.0
    );
    assert_eq!(
        delta("portcullis_connections_total", &[("listener", "http")]),
        1.0
    );
    assert_eq!(
        after.get("portcullis_connections_open", &[("listener", "https")]),
        2.0
    );
    wait::until(
        Duration::from_secs(10),
        "the plain connection closed",
        || async {
            let now = Scrape::take(admin).await;
            (now.get("portcullis_connections_open", &[("listener", "http")]) == 0.0).then_some(())
        },
    )
    .await;
    drop(conn);
    wait::until(
        Duration::from_secs(10),
        "a closed connection uncounted",
        || async {
            let now = Scrape::take(admin).await;
            (now.get("portcullis_connections_open", &[("listener", "https")]) == 1.0).then_some(())
        },
    )
    .await;

    // Certificate expiry, read from each site's certificate.
    assert_eq!(
        after.get(
            "portcullis_certificate_not_after_timestamp_seconds",
            &[("site", "expiry"), ("source", "file")]
        ),
        EXP_NOT_AFTER
    );
    assert_eq!(
        after.get(
            "portcullis_certificate_not_after_timestamp_seconds",
            &[("site", "shop"), ("source", "file")]
        ),
        RCGEN_NOT_AFTER
    );

    // The process's own metrics.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for name in [
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        let v = after.get(name, &[]);
        assert!(v > 0.0, "{name} = {v}");
    }
    assert!(after.get("process_start_time_seconds", &[]) <= now);
    assert_eq!(after.matching("process_cpu_seconds_total", &[]).count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn what_clients_send_never_becomes_a_label_value() {
    let s = setup().await;
    let admin = s.gw.admin.unwrap();
    let client = s.gw.client(&s.ca.root_der);
    let http = s.gw.http.unwrap();
    // Every kind of request once with fixed names, so the label values it legitimately
    // brings (a handshake version, a failure reason) exist before the comparison.
    let round = |token: String| {
        let client = client.clone();
        async move {
            let host = format!("{token}.example");
            assert_eq!(get_on_shop(&client, &host, "/").await, 421);
            assert_eq!(
                get_on_shop(&client, "m.test", &format!("/{token}")).await,
                404
            );
            assert_eq!(
                get_on_shop(&client, "m.test", &format!("/api/{token}")).await,
                200
            );
            assert_eq!(
                get_on_shop(&client, "m.test", &format!("/dead/{token}")).await,
                502
            );
            assert!(client.tls(&host, true, &[]).await.is_err());
            assert_eq!(plain_get(http, &host, &format!("/{token}")).await.0, 404);
        }
    };
    round("fixed".to_owned()).await;
    let before = wait::until(
        Duration::from_secs(10),
        "the fixed round counted",
        || async {
            let now = Scrape::take(admin).await;
            let n = now.get(
                "portcullis_http_requests_total",
                &[("site", "shop"), ("route", "/dead"), ("code", "5xx")],
            );
            // The gateway counts a refused handshake just after sending its alert.
            let refused = now.total("portcullis_tls_handshake_failures_total");
            (n == 1.0 && refused == 1.0).then_some(now)
        },
    )
    .await;

    let random = RandomState::new();
    let tokens: Vec<String> = (0..20u32)
        .map(|i| format!("r{:016x}", random.hash_one(i)))
        .collect();
    for token in &tokens {
        round(token.clone()).await;
    }
    let after = wait::until(
        Duration::from_secs(10),
        "the random rounds counted",
        || async {
            let now = Scrape::take(admin).await;
            let n = now.get(
                "portcullis_http_requests_total",
                &[("site", "shop"), ("route", "/dead"), ("code", "5xx")],
            );
            let refused = now.total("portcullis_tls_handshake_failures_total");
            (n == 21.0 && refused == 21.0).then_some(now)
        },
    )
    .await;

    let (before_series, after_series) = (before.series(), after.series());
    let new: Vec<_> = after_series.difference(&before_series).collect();
    assert!(new.is_empty(), "new series: {new:#?}");
    for (name, labels) in &after_series {
        for value in labels.values() {
            assert!(
                !value.contains("fixed") && tokens.iter().all(|t| !value.contains(t.as_str())),
                "{name} has a label value from a request: {labels:?}"
            );
        }
    }

    // The counters moved, under the labels that were already there.
    assert_eq!(
        after.get(
            "portcullis_http_requests_total",
            &[("site", "-"), ("route", "-"), ("code", "4xx")]
        ),
        21.0
    );
    assert_eq!(
        after.get(
            "portcullis_tls_handshake_failures_total",
            &[("reason", "unknown_sni")]
        ),
        21.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness() {
    let s = setup().await;
    let admin = s.gw.admin.unwrap();
    let (status, _, body) = plain_get(admin, "localhost", "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _, body) = plain_get(admin, "localhost", "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));

    // A site with no certificate yet (its ACME CA is unreachable): alive, not ready.
    let directory = format!("https://127.0.0.1:{}/dir", closed_port().await);
    let waiting = GatewayBuilder::new()
        .set(
            "acme",
            &format!("{{directory: '{directory}', backoff: {{initial: 1s, max: 2s}}}}"),
        )
        .site("{name: pending, hosts: [pending.test], tls: acme, respond: {body: p}}")
        .start()
        .await;
    let admin = waiting.admin.unwrap();
    let (status, _, body) = plain_get(admin, "localhost", "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _, body) = plain_get(admin, "localhost", "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready"), "{body}");
    assert!(body.contains("site pending:"), "{body}");
}

#[tokio::test]
async fn origin_connections_and_waiting_requests_are_counted() {
    let ca = TestCa::new("metrics CA");
    let origin = TestOrigin::http().await;
    let url = format!("http://{}", origin.addr);
    let gw = GatewayBuilder::new()
        .tls_site(
            &ca,
            &["m.test"],
            &format!("origin: {{url: '{url}', max_connections: 1}}"),
        )
        .start()
        .await;
    let admin = gw.admin.unwrap();
    let client = gw.client(&ca.root_der);
    let of = [("origin", url.as_str())];
    // Two slow requests and one connection: the second waits for the first.
    let slow: Vec<_> = (0..2)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.get("m.test", &format!("/slow/500?{i}")).await })
        })
        .collect();
    wait::until(Duration::from_secs(10), "a request waiting", || async {
        let s = Scrape::take(admin).await;
        (s.get("portcullis_origin_requests_waiting", &of) == 1.0).then_some(s)
    })
    .await;
    for r in slow {
        assert_eq!(r.await.unwrap().status, 200);
    }
    let s = Scrape::take(admin).await;
    assert_eq!(s.get("portcullis_origin_requests_waiting", &of), 0.0);
    assert_eq!(s.get("portcullis_origin_connections_open", &of), 1.0);
    assert_eq!(s.get("portcullis_origin_connections_total", &of), 1.0);
}
