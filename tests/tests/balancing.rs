//! Origins with several servers, against real origins: round robin follows the weights and
//! random_two shares evenly; least_requests keeps away from a server that holds requests;
//! hashing keeps a key on one server and a removed server moves only its own keys; a server
//! killed under load costs no request, is marked down by active checks and up again once
//! restarted on its port; passive ejection and the 503 when every server is out; which
//! failures are retried (a POST whose body was sent never is) and the retry budget.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis_tests::{
    ClientBody, Conn, GatewayBuilder, Resp, TestCa, TestClient, TestGateway, TestOrigin, bytes,
    collect, empty, wait,
};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

const HOST: &str = "b.test";

/// Starts a gateway with one site, `b.test`, whose origin is the YAML mapping `origin`.
async fn gateway(ca: &TestCa, origin: &str) -> TestGateway {
    let b = GatewayBuilder::new();
    let (cert, key) = ca.leaf(&[HOST]).write(b.dir(), "b");
    b.site(&format!(
        "{{hosts: [{HOST}], tls: {{cert: {}, key: {}}}, origin: {origin}}}",
        cert.display(),
        key.display()
    ))
    .start()
    .await
}

/// An origin's `servers:` list, each entry `(url, weight)`.
fn servers(list: &[(&str, u32)]) -> String {
    let entries: Vec<String> = list
        .iter()
        .map(|(url, weight)| format!("{{url: '{url}', weight: {weight}}}"))
        .collect();
    format!("[{}]", entries.join(", "))
}

/// The `servers:` list of `origins`, weight 1 each.
fn equal(origins: &[TestOrigin]) -> String {
    let urls: Vec<String> = origins.iter().map(|o| url(o.addr)).collect();
    servers(&urls.iter().map(|u| (u.as_str(), 1)).collect::<Vec<_>>())
}

async fn three_origins() -> [TestOrigin; 3] {
    [
        TestOrigin::http().await,
        TestOrigin::http().await,
        TestOrigin::http().await,
    ]
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// A port with nothing listening on it.
async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// Fails the test instead of hanging when something never answers.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("no answer within 10 s: {what}"))
}

async fn connect(client: &TestClient) -> Conn {
    within("connect", client.connect(HOST, &["http/1.1"]))
        .await
        .unwrap()
}

/// One request on `conn`, read whole; every error returned rather than panicking.
async fn send(
    conn: &mut Conn,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: ClientBody,
) -> Result<Resp, String> {
    let mut req = conn.request(HOST, path).method(method);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(body).map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = conn.send(req).await.map_err(|e| format!("send: {e}"))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Resp {
            status: parts.status,
            headers: parts.headers,
            body,
            version: parts.version,
        })
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no response within 10 s".to_owned())?
}

async fn get(conn: &mut Conn, path: &str, headers: &[(&str, &str)]) -> Resp {
    send(conn, Method::GET, path, headers, empty())
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// The port of the origin server that answered (`x-origin`).
fn answered_by(resp: &Resp) -> u16 {
    resp.headers
        .get("x-origin")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or_else(|| panic!("no x-origin: {} {}", resp.status, resp.text()))
}

/// How many answers each port gave.
fn tally(ports: impl IntoIterator<Item = u16>) -> BTreeMap<u16, usize> {
    let mut counts = BTreeMap::new();
    for p in ports {
        *counts.entry(p).or_default() += 1;
    }
    counts
}

/// `GET /metrics` on the admin listener.
async fn scrape(gw: &TestGateway) -> String {
    let mut tcp = TcpStream::connect(gw.admin.unwrap()).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    within("GET /metrics", tcp.read_to_string(&mut out))
        .await
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The sum of the samples of `name` carrying every label in `labels`.
fn metric(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let ours = (rest.is_empty() || rest.starts_with('{'))
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            ours.then(|| value.parse::<f64>().unwrap())
        })
        .sum()
}

const UP: &str = "portcullis_origin_server_up";
const REQUESTS: &str = "portcullis_origin_requests_total";
const ERRORS: &str = "portcullis_origin_errors_total";
const EJECTIONS: &str = "portcullis_origin_ejections_total";
const RETRIES: &str = "portcullis_origin_retries_total";
const CHECKS: &str = "portcullis_origin_health_checks_total";

// --- Origins that misbehave on purpose ------------------------------------------------

/// What a [`Custom`] origin does with every request.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// Answers only once released (nothing, not even headers, before).
    Hold,
    /// Sends the headers and the start of the body at once, the rest once released.
    HoldBody,
    /// Answers with this status.
    Status(u16),
    /// Reads the request head and its whole body, then resets the connection.
    ReadThenReset,
}

#[derive(Default)]
struct Counters {
    /// Request heads received.
    received: AtomicUsize,
    /// For `ReadThenReset`: the length of each body read before the reset.
    bodies: Mutex<Vec<usize>>,
}

/// An origin on 127.0.0.1:0 with one [`Behaviour`]; its answers carry `x-origin: <port>`.
struct Custom {
    addr: SocketAddr,
    counters: Arc<Counters>,
    release: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for Custom {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Custom {
    async fn start(behaviour: Behaviour) -> Self {
        portcullis_tests::init();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let (release, released) = watch::channel(false);
        let state = counters.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let state = state.clone();
                let released = released.clone();
                tokio::spawn(async move {
                    if let Behaviour::ReadThenReset = behaviour {
                        read_then_reset(tcp, &state).await;
                        return;
                    }
                    let svc = service_fn(move |_req: Request<Incoming>| {
                        state.received.fetch_add(1, Ordering::SeqCst);
                        answer(behaviour, addr.port(), released.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            counters,
            release,
            task,
        }
    }

    fn url(&self) -> String {
        url(self.addr)
    }

    fn received(&self) -> usize {
        self.counters.received.load(Ordering::SeqCst)
    }

    fn bodies(&self) -> Vec<usize> {
        self.counters.bodies.lock().unwrap().clone()
    }

    /// Lets every held request (and every later one) finish.
    fn release(&self) {
        self.release.send_replace(true);
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn answer(
    behaviour: Behaviour,
    port: u16,
    mut released: watch::Receiver<bool>,
) -> Result<Response<Body>, Infallible> {
    let fixed = |text: &'static str| Full::new(Bytes::from_static(text.as_bytes())).boxed();
    let (status, body) = match behaviour {
        Behaviour::Hold => {
            let _ = released.wait_for(|r| *r).await;
            (StatusCode::OK, fixed("held"))
        }
        Behaviour::HoldBody => {
            let start = futures_util::stream::once(async {
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"start ")))
            });
            let end = futures_util::stream::once(async move {
                let _ = released.wait_for(|r| *r).await;
                Ok(Frame::data(Bytes::from_static(b"end")))
            });
            (
                StatusCode::OK,
                BodyExt::boxed(StreamBody::new(futures_util::StreamExt::chain(start, end))),
            )
        }
        Behaviour::Status(code) => (StatusCode::from_u16(code).unwrap(), fixed("fixed status")),
        Behaviour::ReadThenReset => unreachable!("served without HTTP"),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert("x-origin", port.into());
    Ok(resp)
}

async fn read_then_reset(mut tcp: TcpStream, counters: &Counters) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    counters.received.fetch_add(1, Ordering::SeqCst);
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() - head_end < length {
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    counters.bodies.lock().unwrap().push(buf.len() - head_end);
    // RST rather than FIN: the connection breaks with the request consumed and unanswered.
    let _ = tcp.set_zero_linger();
    drop(tcp);
}

// --- Load from several clients ---------------------------------------------------------

/// One request of a [`Load`]: the phases it started and ended in, and the port that
/// answered (or what went wrong).
#[derive(Debug, Clone)]
struct Outcome {
    phase: usize,
    ended: usize,
    answer: Result<u16, String>,
}

/// Client tasks sending GETs over keep-alive connections, each until it has sent
/// `per_worker` requests or is stopped. The test moves `phase` on as it acts.
struct Load {
    phase: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(client: &TestClient, workers: usize, per_worker: usize) -> Self {
        let phase = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let workers = (0..workers)
            .map(|_| {
                let (client, phase, stop, outcomes) = (
                    client.clone(),
                    phase.clone(),
                    stop.clone(),
                    outcomes.clone(),
                );
                tokio::spawn(async move {
                    let mut conn: Option<Conn> = None;
                    for _ in 0..per_worker {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let started = phase.load(Ordering::SeqCst);
                        let answer = one_request(&client, &mut conn).await;
                        outcomes.lock().unwrap().push(Outcome {
                            phase: started,
                            ended: phase.load(Ordering::SeqCst),
                            answer,
                        });
                    }
                })
            })
            .collect();
        Self {
            phase,
            stop,
            outcomes,
            workers,
        }
    }

    fn set_phase(&self, phase: usize) {
        self.phase.store(phase, Ordering::SeqCst);
    }

    /// Outcomes so far that satisfy `f`.
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|o| f(o))
            .count()
    }

    /// Waits until every worker has sent its requests.
    async fn join(self) -> Vec<Outcome> {
        for w in self.workers {
            within("a load worker to finish", w).await.unwrap();
        }
        Arc::try_unwrap(self.outcomes)
            .unwrap()
            .into_inner()
            .unwrap()
    }

    /// Stops the workers after their current request.
    async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        self.join().await
    }
}

async fn one_request(client: &TestClient, conn: &mut Option<Conn>) -> Result<u16, String> {
    if conn.is_none() {
        *conn = Some(
            tokio::time::timeout(Duration::from_secs(10), client.connect(HOST, &["http/1.1"]))
                .await
                .map_err(|_| "connect to the gateway: timed out".to_owned())?
                .map_err(|e| format!("connect to the gateway: {e}"))?,
        );
    }
    let c = conn.as_mut().unwrap();
    match send(c, Method::GET, "/load", &[], empty()).await {
        Ok(r) if r.status == StatusCode::OK => Ok(answered_by(&r)),
        Ok(r) => Err(format!("{} {}", r.status, r.text())),
        Err(e) => {
            *conn = None;
            Err(e)
        }
    }
}

// --- 1. Round robin and random_two -----------------------------------------------------

#[tokio::test]
async fn round_robin_follows_the_weights_smoothly() {
    let ca = TestCa::new("balancing CA");
    let (a, b, c) = (
        TestOrigin::http().await,
        TestOrigin::http().await,
        TestOrigin::http().await,
    );
    let list = servers(&[(&url(a.addr), 3), (&url(b.addr), 1), (&url(c.addr), 1)]);
    let gw = gateway(&ca, &format!("{{servers: {list}, balance: round_robin}}")).await;
    let mut conn = connect(&gw.client(&ca.root_der)).await;

    let mut order = Vec::new();
    for _ in 0..500 {
        let resp = get(&mut conn, "/rr", &[]).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        order.push(answered_by(&resp));
    }
    // Each request takes the next place in one cycle of five, so 500 requests give
    // exactly 3:1:1; and the cycle is smooth, so every five in a row do too (never
    // a a a b c, which would hand a burst to one server).
    let counts = tally(order.iter().copied());
    let expected = BTreeMap::from([
        (a.addr.port(), 300),
        (b.addr.port(), 100),
        (c.addr.port(), 100),
    ]);
    assert_eq!(counts, expected);
    for (i, window) in order.windows(5).enumerate() {
        let w = tally(window.iter().copied());
        assert_eq!(
            (
                w.get(&a.addr.port()),
                w.get(&b.addr.port()),
                w.get(&c.addr.port())
            ),
            (Some(&3), Some(&1), Some(&1)),
            "requests {i}..{}: {window:?}",
            i + 5
        );
    }
    // The origins agree: nothing else reached them.
    assert_eq!(
        (a.seen().len(), b.seen().len(), c.seen().len()),
        (300, 100, 100)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_two_shares_equal_servers_evenly() {
    let ca = TestCa::new("balancing CA");
    let origins = three_origins().await;
    let list = equal(&origins);
    let gw = gateway(&ca, &format!("{{servers: {list}, balance: random_two}}")).await;

    let outcomes = Load::start(&gw.client(&ca.root_der), 6, 100).join().await;
    let ports: Vec<u16> = outcomes.iter().map(|o| o.answer.clone().unwrap()).collect();
    assert_eq!(ports.len(), 600);
    let counts = tally(ports);
    // 200 each is the expectation; random draws vary by about 12 (one standard
    // deviation), so 150..=250 fails about once in 30 000 runs.
    for o in &origins {
        let n = counts.get(&o.addr.port()).copied().unwrap_or(0);
        assert!(
            (150..=250).contains(&n),
            "{} got {n} of 600: {counts:?}",
            o.addr
        );
    }
}

// --- 2. least_requests -------------------------------------------------------------------

/// least_requests between a server that holds requests as `behaviour` says and a fast
/// one: new requests go to the fast one while a request is held on the other.
async fn least_requests_avoid(behaviour: Behaviour) {
    let ca = TestCa::new("balancing CA");
    let slow = Custom::start(behaviour).await;
    let fast = TestOrigin::http().await;
    let list = servers(&[(&slow.url(), 1), (&url(fast.addr), 1)]);
    let gw = gateway(
        &ca,
        &format!("{{servers: {list}, balance: least_requests}}"),
    )
    .await;
    let client = gw.client(&ca.root_der);

    // Park one request on the slow server. Both are idle at first, and ties rotate, so
    // within a few requests one lands there; the fast server answers the others.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut parked = Vec::new();
    while slow.received() == 0 {
        assert!(
            Instant::now() < deadline,
            "no request reached the slow server"
        );
        let c = client.clone();
        let task = tokio::spawn(async move { c.get(HOST, "/park").await });
        wait::until(Duration::from_secs(5), "the request to land", || async {
            (task.is_finished() || slow.received() > 0).then_some(())
        })
        .await;
        parked.push(task);
    }

    // One at a time, every new request goes to the idle server. (Judged by the response
    // headers: a response the slow server started would never end.)
    let mut conn = connect(&client).await;
    for i in 0..50 {
        let req = conn.request(HOST, "/next").body(empty()).unwrap();
        let resp = within("GET /next", conn.send(req)).await.unwrap();
        let port = resp.headers().get("x-origin").unwrap().to_str().unwrap();
        assert_eq!(
            port,
            fast.addr.port().to_string(),
            "request {i} went to the busy server"
        );
        assert_eq!(within("the body", collect(resp)).await.status, 200);
    }
    assert_eq!(slow.received(), 1);

    // Three clients at once. A request goes to the slow server only when it has no more
    // in flight than the fast one. With one parked there, one client may join it (when
    // the two others are both busy on the fast one); then it holds two, and the fast
    // one never has more than one (the third client's), so nothing more goes there.
    let fast_answers = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (client, fast_answers) = (client.clone(), fast_answers.clone());
            let fast_port = fast.addr.port();
            tokio::spawn(async move {
                let mut conn = connect(&client).await;
                let mut answers = Vec::new();
                while fast_answers.load(Ordering::SeqCst) < 150 {
                    let resp = get(&mut conn, "/busy", &[]).await;
                    let port = answered_by(&resp);
                    if port == fast_port {
                        fast_answers.fetch_add(1, Ordering::SeqCst);
                    }
                    answers.push((resp.status, port));
                }
                answers
            })
        })
        .collect();
    wait::until(
        Duration::from_secs(20),
        "150 answers from the fast server",
        || async { (fast_answers.load(Ordering::SeqCst) >= 150).then_some(()) },
    )
    .await;
    assert!(
        slow.received() <= 2,
        "the slow server got {} requests while busy",
        slow.received()
    );

    // Released, the slow server answers what it held, and takes its share again.
    slow.release();
    for task in parked {
        let resp = within("a parked request", task).await.unwrap();
        assert_eq!(resp.status, 200);
    }
    for task in clients {
        let answers = within("a client", task).await.unwrap();
        assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    }
    let before = slow.received();
    let mut to_slow = 0;
    for _ in 0..20 {
        let resp = get(&mut conn, "/after", &[]).await;
        to_slow += usize::from(answered_by(&resp) == slow.addr.port());
    }
    assert!(
        to_slow >= 5 && slow.received() - before == to_slow,
        "once idle again the slow server got {to_slow} of 20"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_requests_avoids_a_server_holding_requests() {
    least_requests_avoid(Behaviour::Hold).await;
}

/// A request is in flight until its response has been sent, not only until its headers
/// came back: a server streaming a long response is busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_requests_counts_a_response_still_streaming() {
    least_requests_avoid(Behaviour::HoldBody).await;
}

// --- 3. Hashing --------------------------------------------------------------------------

/// For each key, the port that answered a GET carrying `header(key)`, sent over four
/// new connections.
async fn route_keys(
    client: &TestClient,
    keys: &[String],
    header: fn(&str) -> (&'static str, String),
) -> HashMap<String, u16> {
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let client = client.clone();
            let keys: Vec<String> = keys.iter().skip(w).step_by(4).cloned().collect();
            tokio::spawn(async move {
                let mut conn = connect(&client).await;
                let mut out = Vec::new();
                for key in keys {
                    let (name, value) = header(&key);
                    let resp = get(&mut conn, "/hash", &[(name, value.as_str())]).await;
                    assert_eq!(resp.status, 200, "{key}: {}", resp.text());
                    out.push((key, answered_by(&resp)));
                }
                out
            })
        })
        .collect();
    let mut routes = HashMap::new();
    for w in workers {
        routes.extend(within("hashed requests", w).await.unwrap());
    }
    routes
}

/// Rewrites the config file with the origin's `servers` cut to the first `keep`, and
/// reloads.
async fn keep_servers(gw: &TestGateway, keep: usize) {
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let list = config["sites"][0]["origin"]["servers"]
        .as_sequence_mut()
        .unwrap();
    list.truncate(keep);
    // Written beside and renamed, so the file watcher never reads half a file.
    let tmp = gw.config_path.with_extension("yaml.tmp");
    std::fs::write(&tmp, serde_yaml::to_string(&config).unwrap()).unwrap();
    std::fs::rename(&tmp, &gw.config_path).unwrap();
    within("reload", gw.controller.reload())
        .await
        .unwrap_or_else(|problems| panic!("reload refused: {problems:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hashed_header_sticks_and_removing_a_server_moves_only_its_keys() {
    let ca = TestCa::new("balancing CA");
    let origins = three_origins().await;
    let ports: Vec<u16> = origins.iter().map(|o| o.addr.port()).collect();
    let list = equal(&origins);
    let gw = gateway(
        &ca,
        &format!("{{servers: {list}, balance: hash, hash: {{key: header, name: X-User}}}}"),
    )
    .await;
    let client = gw.client(&ca.root_der);
    let keys: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    let x_user = |k: &str| ("x-user", k.to_owned());

    let before = route_keys(&client, &keys, x_user).await;
    let again = route_keys(&client, &keys, x_user).await;
    assert_eq!(before, again, "a key changed servers with nothing changed");
    let shares = tally(before.values().copied());
    for p in &ports {
        // 100 each is the expectation (one standard deviation is about 8).
        assert!(shares.get(p).copied().unwrap_or(0) >= 50, "{shares:?}");
    }

    // Remove the third server.
    keep_servers(&gw, 2).await;
    let after = route_keys(&client, &keys, x_user).await;
    let removed = ports[2];
    let mut moved_to = BTreeMap::<u16, usize>::new();
    for key in &keys {
        let (was, now) = (before[key], after[key]);
        if was == removed {
            assert_ne!(now, removed, "{key} still goes to the removed server");
            *moved_to.entry(now).or_default() += 1;
        } else {
            assert_eq!(now, was, "{key} moved off a server that stayed");
        }
    }
    let moved: usize = moved_to.values().sum();
    assert_eq!(moved, shares[&removed]);
    assert!(
        (60..=140).contains(&moved),
        "{moved} of 300 keys moved; about a third should"
    );
    // The removed server's keys spread over both that remain (50 each expected).
    for p in &ports[..2] {
        assert!(
            moved_to.get(p).copied().unwrap_or(0) >= 20,
            "moved keys went {moved_to:?}"
        );
    }
    // The removed server's series are gone from /metrics; the others stay.
    let page = scrape(&gw).await;
    let server_url = |port: u16| format!("http://127.0.0.1:{port}");
    assert!(
        !page.contains(&format!("origin=\"{}\"", server_url(removed))),
        "series of the removed server remain:\n{page}"
    );
    assert_eq!(metric(&page, UP, &[("origin", &server_url(ports[0]))]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hashed_cookie_sticks_and_requests_without_it_are_shared() {
    let ca = TestCa::new("balancing CA");
    let origins = three_origins().await;
    let list = equal(&origins);
    let gw = gateway(
        &ca,
        &format!("{{servers: {list}, balance: hash, hash: {{key: cookie, name: session}}}}"),
    )
    .await;
    let client = gw.client(&ca.root_der);
    let keys: Vec<String> = (0..90).map(|i| format!("s{i}")).collect();

    // The cookie among others, then alone: only its value counts.
    let among = route_keys(&client, &keys, |k| {
        ("cookie", format!("theme=dark; session={k}; lang=en"))
    })
    .await;
    let alone = route_keys(&client, &keys, |k| ("cookie", format!("session={k}"))).await;
    assert_eq!(among, alone);
    let shares = tally(among.values().copied());
    for o in &origins {
        // 30 each is the expectation (one standard deviation is about 4.5).
        assert!(
            shares.get(&o.addr.port()).copied().unwrap_or(0) >= 10,
            "{shares:?}"
        );
    }

    // Without the cookie (or with other cookies only), requests are shared round robin.
    let mut conn = connect(&client).await;
    let mut ports = Vec::new();
    for i in 0..30 {
        let cookie = [("cookie", "theme=dark")];
        let headers: &[(&str, &str)] = if i % 2 == 0 { &cookie } else { &[] };
        ports.push(answered_by(&get(&mut conn, "/no-key", headers).await));
    }
    let counts = tally(ports);
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [10, 10, 10],
        "{counts:?}"
    );
}

/// GET `/ip` over a new connection made from `source` (any 127.0.0.0/8 address is the
/// loopback interface on Linux).
async fn get_from(gw: &TestGateway, ca: &TestCa, source: IpAddr) -> Resp {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let tcp = within("TCP connect", socket.connect(gw.https))
        .await
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(ca.root_der.clone()).unwrap();
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = within(
        "TLS handshake",
        TlsConnector::from(Arc::new(config)).connect(ServerName::try_from(HOST).unwrap(), tcp),
    )
    .await
    .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, ClientBody>(TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/ip")
        .header("host", HOST)
        .body(empty())
        .unwrap();
    let resp = within("GET /ip", sender.send_request(req)).await.unwrap();
    within("the body", collect(resp)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hashed_client_ip_sticks() {
    let ca = TestCa::new("balancing CA");
    let origins = three_origins().await;
    let list = equal(&origins);
    let gw = gateway(
        &ca,
        &format!("{{servers: {list}, balance: hash, hash: {{key: client_ip}}}}"),
    )
    .await;

    let mut chosen = BTreeMap::new();
    for last in 10..40 {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
        let mut ports = Vec::new();
        for _ in 0..3 {
            let resp = get_from(&gw, &ca, ip).await;
            assert_eq!(resp.status, 200, "{}", resp.text());
            ports.push(answered_by(&resp));
        }
        assert!(
            ports.iter().all(|p| *p == ports[0]),
            "{ip} went to {ports:?}"
        );
        chosen.insert(ip, ports[0]);
    }
    // Thirty addresses use every server (missing one has odds of about 1 in 60 000).
    let shares = tally(chosen.values().copied());
    assert_eq!(shares.len(), 3, "{shares:?}");
}

// --- 4. A server killed under load --------------------------------------------------------

/// Phases of the kill test, recorded with each request of the load.
const STEADY: usize = 0;
const KILLING: usize = 1;
const KILLED: usize = 2;
const MARKED_DOWN: usize = 3;
const RESTARTED: usize = 4;
const MARKED_UP: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_under_load_costs_no_request_and_comes_back_on_its_port() {
    const WORKERS: usize = 6;
    let ca = TestCa::new("balancing CA");
    let mut origins = three_origins().await;
    let urls: Vec<String> = origins.iter().map(|o| url(o.addr)).collect();
    let ports: Vec<u16> = origins.iter().map(|o| o.addr.port()).collect();
    let victim_addr = origins[1].addr;
    let victim = urls[1].as_str();
    let list = equal(&origins);
    // Passive ejection off: the active checks alone take the server out and back.
    let gw = gateway(
        &ca,
        &format!(
            "{{servers: {list}, health: {{active: {{path: /healthz, interval: 200ms, \
             timeout: 1s, rise: 2, fall: 1}}, passive: off}}}}"
        ),
    )
    .await;
    let up = |page: &str| metric(page, UP, &[("origin", victim)]);
    assert_eq!(up(&scrape(&gw).await), 1.0);

    let load = Load::start(&gw.client(&ca.root_der), WORKERS, 20_000);
    // Steady load on all three for a second at least (which also fills the retry
    // budget, 20% of requests by default).
    let started = Instant::now();
    wait::until(
        Duration::from_secs(15),
        "steady load on every server",
        || async {
            let each = ports
                .iter()
                .all(|p| load.count(|o| o.answer == Ok(*p)) >= 30);
            (each && started.elapsed() >= Duration::from_secs(1)).then_some(())
        },
    )
    .await;

    load.set_phase(KILLING);
    origins[1].stop().await;
    load.set_phase(KILLED);
    wait::until(
        Duration::from_secs(5),
        "the server to be marked down",
        || async { (up(&scrape(&gw).await) == 0.0).then_some(()) },
    )
    .await;
    load.set_phase(MARKED_DOWN);
    let page = scrape(&gw).await;
    assert!(metric(&page, CHECKS, &[("origin", victim), ("result", "failed")]) >= 1.0);

    // Marked down, it gets no more requests: the gateway's own count stands still.
    wait::until(Duration::from_secs(10), "load while it is down", || async {
        (load.count(|o| o.phase == MARKED_DOWN) >= 50).then_some(())
    })
    .await;
    let sent_while_down = metric(&scrape(&gw).await, REQUESTS, &[("origin", victim)]);
    wait::until(
        Duration::from_secs(10),
        "more load while it is down",
        || async { (load.count(|o| o.phase == MARKED_DOWN) >= 250).then_some(()) },
    )
    .await;
    assert_eq!(
        metric(&scrape(&gw).await, REQUESTS, &[("origin", victim)]),
        sent_while_down,
        "requests went to a server marked down"
    );

    origins[1] = TestOrigin::http_on(victim_addr).await;
    load.set_phase(RESTARTED);
    wait::until(
        Duration::from_secs(5),
        "the server to be marked up",
        || async { (up(&scrape(&gw).await) == 1.0).then_some(()) },
    )
    .await;
    load.set_phase(MARKED_UP);
    wait::until(
        Duration::from_secs(10),
        "the restarted server to serve",
        || async {
            (load.count(|o| o.phase == MARKED_UP && o.answer == Ok(victim_addr.port())) >= 30)
                .then_some(())
        },
    )
    .await;
    let outcomes = load.finish().await;

    let failed = |f: &dyn Fn(&Outcome) -> bool| -> Vec<&Outcome> {
        outcomes
            .iter()
            .filter(|o| o.answer.is_err() && f(o))
            .collect()
    };
    let before = failed(&|o| o.ended == STEADY);
    assert!(before.is_empty(), "{before:?}");
    // At most the requests in flight when it died could fail (one per client); resets
    // and refused connections are retried on another server, so none does.
    let at_kill = failed(&|o| o.phase <= KILLING && o.ended >= KILLING);
    assert!(at_kill.len() <= WORKERS, "{at_kill:?}");
    let later = failed(&|o| o.phase >= KILLED);
    assert!(later.is_empty(), "{} failed: {later:?}", later.len());
}

// --- 5. Passive ejection ------------------------------------------------------------------

#[tokio::test]
async fn servers_failing_real_requests_are_ejected() {
    let ca = TestCa::new("balancing CA");
    let good = TestOrigin::http().await;
    let bad = Custom::start(Behaviour::Status(502)).await;
    let dead = &format!("http://127.0.0.1:{}", closed_port().await);
    let dead = dead.as_str();
    let list = servers(&[(&url(good.addr), 1), (&bad.url(), 1), (dead, 1)]);
    // No active checks: only what real requests meet counts.
    let gw = gateway(
        &ca,
        &format!(
            "{{servers: {list}, health: {{passive: {{failures: 3, window: 10s, eject: 30s}}}}, \
             retries: {{attempts: 2, on: [connect, reset, 502]}}}}"
        ),
    )
    .await;
    let mut conn = connect(&gw.client(&ca.root_der)).await;

    for i in 0..60 {
        let resp = get(&mut conn, "/eject", &[]).await;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
        assert_eq!(answered_by(&resp), good.addr.port(), "request {i}");
    }
    // Three failures each, then nothing more reached them.
    assert_eq!(bad.received(), 3);
    let page = scrape(&gw).await;
    assert_eq!(metric(&page, REQUESTS, &[("origin", dead)]), 3.0);
    assert_eq!(
        metric(&page, ERRORS, &[("origin", dead), ("kind", "connect")]),
        3.0
    );
    for (origin, ejected) in [
        (url(good.addr), 0.0),
        (bad.url(), 1.0),
        (dead.to_owned(), 1.0),
    ] {
        let origin = origin.as_str();
        assert_eq!(
            metric(&page, EJECTIONS, &[("origin", origin)]),
            ejected,
            "{origin}"
        );
        assert_eq!(
            metric(&page, UP, &[("origin", origin)]),
            1.0 - ejected,
            "{origin}"
        );
    }
    // Each failure was retried on another server.
    assert_eq!(metric(&page, RETRIES, &[]), 6.0);
}

#[tokio::test]
async fn with_every_server_ejected_clients_get_a_fast_503_with_retry_after() {
    let ca = TestCa::new("balancing CA");
    let bad = Custom::start(Behaviour::Status(502)).await;
    let dead = &format!("http://127.0.0.1:{}", closed_port().await);
    let dead = dead.as_str();
    let list = servers(&[(&bad.url(), 1), (dead, 1)]);
    let gw = gateway(
        &ca,
        &format!(
            "{{servers: {list}, health: {{passive: {{failures: 2, window: 10s, eject: 30s}}}}, \
             retries: {{attempts: 1, on: [connect, 502]}}, timeouts: {{connect: 5s}}}}"
        ),
    )
    .await;
    let mut conn = connect(&gw.client(&ca.root_der)).await;

    let start = Instant::now();
    let mut statuses = Vec::new();
    let unavailable = loop {
        assert!(statuses.len() < 10, "no 503 after {statuses:?}");
        let sent = Instant::now();
        let resp = get(&mut conn, "/down", &[]).await;
        if resp.status == StatusCode::SERVICE_UNAVAILABLE {
            break (resp, sent.elapsed());
        }
        statuses.push(resp.status.as_u16());
    };
    // Two requests (each trying both servers) eject both.
    assert_eq!(statuses, [502, 502]);
    let (resp, took) = unavailable;
    let retry_after: u64 = resp.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=30).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    // Far below the 5 s connect timeout: nothing is tried.
    assert!(took < Duration::from_millis(500), "the 503 took {took:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );

    let seen = bad.received();
    for _ in 0..5 {
        assert_eq!(get(&mut conn, "/down", &[]).await.status, 503);
    }
    assert_eq!(bad.received(), seen, "an ejected server got requests");
    let page = scrape(&gw).await;
    for origin in [bad.url(), dead.to_owned()] {
        let origin = origin.as_str();
        assert_eq!(
            metric(&page, EJECTIONS, &[("origin", origin)]),
            1.0,
            "{origin}"
        );
        assert_eq!(metric(&page, UP, &[("origin", origin)]), 0.0, "{origin}");
    }
}

// --- 6. Retries ---------------------------------------------------------------------------

#[tokio::test]
async fn a_post_is_retried_after_a_refused_connection_with_its_whole_body() {
    let ca = TestCa::new("balancing CA");
    let good = TestOrigin::http().await;
    let dead = &format!("http://127.0.0.1:{}", closed_port().await);
    let dead = dead.as_str();
    let list = servers(&[(dead, 1), (&url(good.addr), 1)]);
    let gw = gateway(
        &ca,
        &format!(
            "{{servers: {list}, health: {{passive: off}}, retries: {{attempts: 1, on: [connect]}}}}"
        ),
    )
    .await;
    let mut conn = connect(&gw.client(&ca.root_der)).await;

    let body = vec![b'p'; 200_000];
    for i in 0..6 {
        let resp = send(&mut conn, Method::POST, "/upload", &[], bytes(body.clone()))
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "POST {i}: {}", resp.text());
        assert_eq!(resp.text(), "received 200000", "POST {i}");
        assert_eq!(answered_by(&resp), good.addr.port());
    }
    let page = scrape(&gw).await;
    let tried_dead = metric(&page, REQUESTS, &[("origin", dead)]);
    assert!(
        tried_dead >= 1.0,
        "no POST was tried on the dead server first"
    );
    assert_eq!(metric(&page, RETRIES, &[("origin", dead)]), tried_dead);
    assert_eq!(
        metric(&page, ERRORS, &[("origin", dead), ("kind", "connect")]),
        tried_dead
    );
    let posts = good
        .seen()
        .iter()
        .filter(|s| s.method == Method::POST)
        .count();
    assert_eq!(posts, 6);
}

#[tokio::test]
async fn a_request_whose_body_was_sent_is_not_retried_but_a_get_is() {
    let ca = TestCa::new("balancing CA");
    let resetter = Custom::start(Behaviour::ReadThenReset).await;
    let good = TestOrigin::http().await;
    let list = servers(&[(&resetter.url(), 1), (&url(good.addr), 1)]);
    let gw = gateway(
        &ca,
        &format!(
            "{{servers: {list}, health: {{passive: off}}, \
             retries: {{attempts: 1, on: [connect, reset]}}}}"
        ),
    )
    .await;
    let client = gw.client(&ca.root_der);
    let origin = &resetter.url();
    let origin = origin.as_str();

    // POST is never retried once sent; PUT is idempotent, but its body is gone once the
    // first server has read it, so it is not retried either.
    let body = vec![b'q'; 50_000];
    let mut broken = 0;
    for method in [Method::POST, Method::PUT] {
        let mut statuses = Vec::new();
        for _ in 0..4 {
            // A fresh connection each time: a 502 may close the client's connection.
            let mut conn = connect(&client).await;
            let resp = send(
                &mut conn,
                method.clone(),
                "/upload",
                &[],
                bytes(body.clone()),
            )
            .await
            .unwrap();
            if resp.status == StatusCode::OK {
                assert_eq!(resp.text(), "received 50000");
            }
            statuses.push(resp.status.as_u16());
        }
        let failed = statuses.iter().filter(|s| **s == 502).count();
        assert!(
            failed >= 1,
            "no {method} reached the resetting server: {statuses:?}"
        );
        assert_eq!(failed + statuses.iter().filter(|s| **s == 200).count(), 4);
        // The good server saw only the requests answered 200.
        let arrived = good.seen().iter().filter(|s| s.method == method).count();
        assert_eq!(arrived, 4 - failed, "{method}: {statuses:?}");
        broken += failed;
    }
    // The resetting server read each of those bodies whole, and nothing was retried.
    assert_eq!(resetter.bodies(), vec![50_000; broken]);
    let page = scrape(&gw).await;
    assert_eq!(metric(&page, RETRIES, &[("origin", origin)]), 0.0);
    assert_eq!(
        metric(&page, ERRORS, &[("origin", origin), ("kind", "reset")]),
        broken as f64
    );

    // A GET the same server resets is tried again on the other one.
    let heads_before = resetter.received();
    let mut conn = connect(&client).await;
    for i in 0..4 {
        let resp = get(&mut conn, "/get", &[]).await;
        assert_eq!(resp.status, 200, "GET {i}: {}", resp.text());
        assert_eq!(answered_by(&resp), good.addr.port());
    }
    let reset_gets = resetter.received() - heads_before;
    assert!(reset_gets >= 1, "no GET reached the resetting server");
    let page = scrape(&gw).await;
    assert_eq!(
        metric(&page, RETRIES, &[("origin", origin)]),
        reset_gets as f64
    );
}

#[tokio::test]
async fn retries_stop_when_the_budget_is_spent() {
    let ca = TestCa::new("balancing CA");
    let good = TestOrigin::http().await;
    let dead = &format!("http://127.0.0.1:{}", closed_port().await);
    let dead = dead.as_str();
    let list = servers(&[(dead, 1), (&url(good.addr), 1)]);
    let gw = gateway(
        &ca,
        &format!(
            "{{servers: {list}, health: {{passive: off}}, \
             retries: {{attempts: 1, on: [connect], budget: 1%}}}}"
        ),
    )
    .await;
    let mut conn = connect(&gw.client(&ca.root_der)).await;

    let mut statuses = Vec::new();
    for _ in 0..60 {
        statuses.push(get(&mut conn, "/budget", &[]).await.status.as_u16());
    }
    let failed = statuses.iter().filter(|s| **s == 502).count();
    let page = scrape(&gw).await;
    let retries = metric(&page, RETRIES, &[("origin", dead)]);
    // 1% of 60 requests is less than one retry; the floor of 10 retries per 10 s is all
    // there is, and every later request that meets the dead server fails.
    assert_eq!(retries, 10.0, "{statuses:?}");
    assert!(failed >= 10, "{statuses:?}");
    assert_eq!(
        metric(&page, REQUESTS, &[("origin", dead)]),
        retries + failed as f64
    );
    // The failures come after the retries ran out.
    let first_failure = statuses.iter().position(|s| *s == 502).unwrap();
    assert!(statuses[..first_failure].iter().all(|s| *s == 200));
    assert!(first_failure >= 10, "{statuses:?}");
}
