//! ACME Renewal Information (RFC 9773) and rate limits, against a small fake directory: the
//! CA's window decides when to renew, the order names the certificate it replaces, and a
//! `Retry-After` outweighs the configured backoff. Also: a corrupt stored certificate.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_acme::{Storage, unix};
use portcullis_tests::{GatewayBuilder, Leaf, TestCa, TestGateway, logs, wait};
use portcullis_tls::format_time;

/// How the fake answers newOrder.
#[derive(Clone, Copy)]
enum OrderReply {
    Refuse,
    /// Refuse after holding the request this long (to see how many run at once).
    SlowRefuse {
        ms: u64,
    },
    RateLimited {
        retry_after: u64,
    },
}

struct State {
    base: String,
    requests: Vec<(Method, String)>,
    orders: Vec<(SystemTime, serde_json::Value)>,
    window: (SystemTime, SystemTime),
    order_reply: OrderReply,
    nonce: u64,
    in_flight: usize,
    max_in_flight: usize,
}

struct FakeCa {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeCa {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeCa {
    async fn start(window: (SystemTime, SystemTime), order_reply: OrderReply) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            base: format!("http://{addr}"),
            requests: Vec::new(),
            orders: Vec::new(),
            window,
            order_reply,
            nonce: 0,
            in_flight: 0,
            max_in_flight: 0,
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    fn directory(&self) -> String {
        format!("http://{}/dir", self.addr)
    }

    fn paths(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .map(|(_, p)| p.clone())
            .collect()
    }

    fn orders(&self) -> Vec<(SystemTime, serde_json::Value)> {
        self.state.lock().unwrap().orders.clone()
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let slow = match state.lock().unwrap().order_reply {
        OrderReply::SlowRefuse { ms } if path == "/order" => Some(ms),
        _ => None,
    };
    if let Some(ms) = slow {
        {
            let mut s = state.lock().unwrap();
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
        }
        tokio::time::sleep(Duration::from_millis(ms)).await;
        state.lock().unwrap().in_flight -= 1;
    }
    let mut s = state.lock().unwrap();
    s.requests.push((method.clone(), path.clone()));
    s.nonce += 1;
    let nonce = format!("nonce-{}", s.nonce);
    let base = s.base.clone();
    let json = |status: StatusCode, value: serde_json::Value| {
        Response::builder()
            .status(status)
            .header("replay-nonce", nonce.clone())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(value.to_string())))
            .unwrap()
    };
    let resp = match path.as_str() {
        "/dir" => json(
            StatusCode::OK,
            serde_json::json!({
                "newNonce": format!("{base}/nonce"),
                "newAccount": format!("{base}/account"),
                "newOrder": format!("{base}/order"),
                "renewalInfo": format!("{base}/renewal-info"),
                "revokeCert": format!("{base}/revoke"),
                "keyChange": format!("{base}/key-change"),
            }),
        ),
        "/nonce" => json(StatusCode::OK, serde_json::json!({})),
        "/account" => {
            let mut r = json(StatusCode::CREATED, serde_json::json!({"status": "valid"}));
            r.headers_mut()
                .insert("location", format!("{base}/account/1").parse().unwrap());
            r
        }
        "/order" => {
            let jws: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let payload = base64url(jws["payload"].as_str().unwrap());
            s.orders
                .push((SystemTime::now(), serde_json::from_slice(&payload).unwrap()));
            match s.order_reply {
                OrderReply::Refuse | OrderReply::SlowRefuse { .. } => json(
                    StatusCode::FORBIDDEN,
                    serde_json::json!({"type": "urn:ietf:params:acme:error:unauthorized", "detail": "refused by the fake CA"}),
                ),
                OrderReply::RateLimited { retry_after } => {
                    let mut r = json(
                        StatusCode::TOO_MANY_REQUESTS,
                        serde_json::json!({"type": "urn:ietf:params:acme:error:rateLimited", "detail": "too many orders"}),
                    );
                    r.headers_mut()
                        .insert("retry-after", retry_after.to_string().parse().unwrap());
                    r
                }
            }
        }
        p if p.starts_with("/renewal-info/") => {
            let (start, end) = s.window;
            let mut r = json(
                StatusCode::OK,
                serde_json::json!({"suggestedWindow": {"start": format_time(start), "end": format_time(end)}}),
            );
            r.headers_mut()
                .insert("retry-after", "21600".parse().unwrap());
            r
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"type": "about:blank"}),
        ),
    };
    Ok(resp)
}

/// base64url without padding.
fn base64url(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

struct Setup {
    ca: TestCa,
    leaf: Leaf,
    storage: tempfile::TempDir,
    fake: FakeCa,
    site: &'static str,
}

impl Setup {
    /// A stored certificate for `site`, and the fake CA, before any gateway runs.
    async fn new(site: &'static str, window: (SystemTime, SystemTime), reply: OrderReply) -> Self {
        let ca = TestCa::new("ARI test CA");
        let leaf = ca.leaf(&[&format!("{site}.test")]);
        let storage = tempfile::tempdir().unwrap();
        let fake = FakeCa::start(window, reply).await;
        Storage::new(storage.path(), &fake.directory())
            .save_cert(site, &leaf.cert_pem, &leaf.key_pem)
            .unwrap();
        Self {
            ca,
            leaf,
            storage,
            fake,
            site,
        }
    }

    fn store(&self) -> Storage {
        Storage::new(self.storage.path(), &self.fake.directory())
    }

    fn expected_id(&self) -> String {
        instant_acme::CertificateIdentifier::try_from(&self.leaf.cert_der)
            .unwrap()
            .to_string()
    }

    async fn gateway(&self) -> TestGateway {
        GatewayBuilder::new()
            .set("storage", &format!("'{}'", self.storage.path().display()))
            .set(
                "acme",
                &format!(
                    "{{directory: '{}', backoff: {{initial: 200ms, max: 2s}}}}",
                    self.fake.directory()
                ),
            )
            .site(&format!(
                "{{name: {0}, hosts: [{0}.test], tls: acme, respond: {{body: ok}}}}",
                self.site
            ))
            .start()
            .await
    }

    /// The stored certificate is what a handshake gets.
    async fn assert_serving_stored(&self, gw: &TestGateway) {
        let conn = gw
            .client(&self.ca.root_der)
            .connect(&format!("{}.test", self.site), &["http/1.1"])
            .await
            .unwrap();
        assert_eq!(conn.peer_leaf, self.leaf.cert_der);
    }
}

fn hours(h: u64) -> Duration {
    Duration::from_secs(h * 3600)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_future_window_schedules_renewal_inside_it_without_ordering() {
    let now = SystemTime::now();
    let window = (now + hours(1), now + hours(2));
    let s = Setup::new("ari-later", window, OrderReply::Refuse).await;
    let gw = s.gateway().await;
    s.assert_serving_stored(&gw).await;

    let next = wait::until(Duration::from_secs(10), "the renewal check", || async {
        s.store().load_status(s.site).and_then(|st| st.next_attempt)
    })
    .await;
    assert!(
        (unix(window.0)..=unix(window.1)).contains(&next),
        "next attempt {next} outside the window {window:?}"
    );
    let ari = format!("/renewal-info/{}", s.expected_id());
    assert!(s.fake.paths().contains(&ari), "{:?}", s.fake.paths());
    // Nothing is ordered.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        assert!(s.fake.orders().is_empty());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_past_window_orders_at_once_naming_the_certificate_it_replaces() {
    let now = SystemTime::now();
    let s = Setup::new(
        "ari-now",
        (now - hours(2), now - hours(1)),
        OrderReply::Refuse,
    )
    .await;
    let gw = s.gateway().await;
    let order = wait::until(Duration::from_secs(10), "a new order", || async {
        s.fake.orders().first().map(|(_, o)| o.clone())
    })
    .await;
    assert_eq!(order["replaces"], s.expected_id());
    assert_eq!(order["identifiers"][0]["value"], "ari-now.test");
    // Refused: the stored certificate stays, and the failure is logged.
    logs::wait_for(
        Duration::from_secs(10),
        &["ACME failed; backing off", "site=ari-now"],
    )
    .await;
    s.assert_serving_stored(&gw).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_from_a_rate_limit_outweighs_the_backoff() {
    let now = SystemTime::now();
    let s = Setup::new(
        "ari-limited",
        (now - hours(2), now - hours(1)),
        OrderReply::RateLimited { retry_after: 4 },
    )
    .await;
    let _gw = s.gateway().await;
    let (first_at, _) = wait::until(Duration::from_secs(10), "a new order", || async {
        s.fake.orders().first().cloned()
    })
    .await;
    let status = wait::until(
        Duration::from_secs(10),
        "the failure to be recorded",
        || async { s.store().load_status(s.site).filter(|st| st.failures >= 1) },
    )
    .await;
    assert!(status.last_error.unwrap().contains("rateLimited"));
    assert!(
        status.next_attempt.unwrap() >= unix(first_at) + 3,
        "next attempt {:?} should honour Retry-After: 4 (failure at {})",
        status.next_attempt,
        unix(first_at)
    );
    // With a 200 ms backoff alone there would be several orders in 3 s; there is one.
    let deadline = first_at + Duration::from_secs(3);
    while SystemTime::now() < deadline {
        assert_eq!(s.fake.orders().len(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // After the wait, it tries again.
    wait::until(Duration::from_secs(10), "the second order", || async {
        (s.fake.orders().len() >= 2).then_some(())
    })
    .await;
    let second_at = s.fake.orders()[1].0;
    assert!(second_at.duration_since(first_at).unwrap() >= Duration::from_millis(3500));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_stored_certificate_is_logged_and_replaced_by_an_order() {
    let now = SystemTime::now();
    let s = Setup::new(
        "corrupt",
        (now + hours(1), now + hours(2)),
        OrderReply::Refuse,
    )
    .await;
    let cert_path = s.store().root().join("sites/corrupt/cert.pem");
    std::fs::write(&cert_path, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    let _gw = s.gateway().await;
    let line = logs::wait_for(
        Duration::from_secs(10),
        &["ignoring an unusable stored certificate", "site=corrupt"],
    )
    .await;
    assert!(line.contains(&cert_path.display().to_string()), "{line}");
    let order = wait::until(Duration::from_secs(10), "a new order", || async {
        s.fake.orders().first().map(|(_, o)| o.clone())
    })
    .await;
    assert!(order.get("replaces").is_none(), "{order}");
    assert!(
        !s.fake
            .paths()
            .iter()
            .any(|p| p.starts_with("/renewal-info/"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_run_concurrently_up_to_the_bound_and_one_per_site() {
    let now = SystemTime::now();
    let fake = FakeCa::start((now, now), OrderReply::SlowRefuse { ms: 600 }).await;
    let storage = tempfile::tempdir().unwrap();
    let mut b = GatewayBuilder::new()
        .set("storage", &format!("'{}'", storage.path().display()))
        .set(
            "acme",
            &format!(
                "{{directory: '{}', concurrency: 2, backoff: {{initial: 10s, max: 10s}}}}",
                fake.directory()
            ),
        );
    for i in 0..5 {
        b = b.site(&format!(
            "{{name: many{i}, hosts: [many{i}.test], tls: acme, respond: {{}}}}"
        ));
    }
    let _gw = b.start().await;
    // Five sites, each ordered once; at most two orders at a time, and two did overlap.
    wait::until(Duration::from_secs(20), "an order per site", || async {
        (fake.orders().len() >= 5).then_some(())
    })
    .await;
    let mut names: Vec<String> = fake
        .orders()
        .iter()
        .map(|(_, o)| o["identifiers"][0]["value"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 5, "one order per site: {names:?}");
    assert_eq!(fake.state.lock().unwrap().max_in_flight, 2);
}
