//! Configuration reload, in process: traffic over many connections and a WebSocket through
//! twenty reloads without a failed request; a refused reload names the key, changes nothing
//! and is counted; unchanged origins keep their pooled connections; a removed site's request
//! in flight finishes; a moved listener; the file watcher.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use http_body_util::BodyExt;
use portcullis::StartError;
use portcullis_tests::scrape::sample;
use portcullis_tests::{
    Conn, TestCa, TestClient, TestGateway, TestOrigin, empty, logs, wait, within,
};
use tokio_tungstenite::tungstenite::Message;

/// `listen.https` when the test does not care which port.
const ANY_PORT: &str = "127.0.0.1:0";

/// A config folder: one certificate per host (from one test CA) and the config file.
struct Files {
    ca: TestCa,
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl Files {
    fn new() -> Self {
        portcullis_tests::init();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.yaml");
        Self {
            ca: TestCa::new("reload CA"),
            dir,
            path,
        }
    }

    /// A site's YAML mapping for `host`; `rest` is its action (`origin: ...`, `respond:
    /// ...`). The host's certificate is written on first use and never rewritten.
    fn site(&self, host: &str, rest: &str) -> String {
        let cert = self.dir.path().join(format!("{host}.pem"));
        let key = self.dir.path().join(format!("{host}.key"));
        if !cert.exists() {
            self.ca.leaf(&[host]).write(self.dir.path(), host);
        }
        format!(
            "{{hosts: ['{host}'], tls: {{cert: '{}', key: '{}'}}, {rest}}}",
            cert.display(),
            key.display()
        )
    }

    /// The config text: HTTPS on `https`, no plain HTTP, admin on any loopback port.
    fn yaml(&self, https: &str, sites: &[String]) -> String {
        let mut text = format!(
            "listen: {{https: '{https}', http: 'off'}}\nadmin: {{listen: '{ANY_PORT}'}}\n\
             tls: {{local_ca_dir: '{}'}}\nsites:\n",
            self.dir.path().join("ca").display()
        );
        for site in sites {
            text.push_str(&format!("  - {site}\n"));
        }
        text
    }

    /// Replaces the config file in one step (write beside, rename), as editors do, so the
    /// file watcher never loads half a file.
    fn write(&self, https: &str, sites: &[String]) {
        let tmp = self.dir.path().join("portcullis.yaml.tmp");
        std::fs::write(&tmp, self.yaml(https, sites)).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    fn client(&self, addr: SocketAddr) -> TestClient {
        TestClient::new(addr, &self.ca.root_der)
    }
}

/// The gateway run from the config file as `portcullis run` runs it: it reloads that file
/// and watches it.
async fn start(files: &Files) -> TestGateway {
    match TestGateway::from_file(&files.path).await {
        Ok(gw) => gw,
        Err(StartError::Config(problems)) => panic!("config refused: {problems:?}"),
        Err(e) => panic!("gateway did not start: {e}"),
    }
}

/// Stops the gateway and waits for its drain, which must end before its timeout.
async fn stop_drained(gw: TestGateway) {
    let drained = within("the gateway to stop", gw.stop()).await;
    assert!(drained, "connections were still open at the drain timeout");
}

/// One GET on `conn`, every error returned rather than panicking.
async fn fetch(conn: &mut Conn, host: &str, path: &str) -> Result<(StatusCode, String), String> {
    let req = conn
        .request(host, path)
        .body(empty())
        .map_err(|e| e.to_string())?;
    let resp = conn.send(req).await.map_err(|e| format!("send: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

const FAILED_RELOADS: &str = r#"portcullis_config_reloads_total{result="failure"}"#;
const GOOD_RELOADS: &str = r#"portcullis_config_reloads_total{result="success"}"#;

// --- 1. Twenty reloads under traffic -------------------------------------------------

const RELOADS: usize = 20;
/// Each worker stops after this many requests even if the reloads are still going.
const MAX_REQUESTS_PER_WORKER: usize = 4000;
/// Requests (all workers together) that must complete after each reload before the next.
const REQUESTS_BETWEEN_RELOADS: usize = 40;

/// The sites the workers keep sending to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    /// Origin unchanged throughout; carries the WebSocket.
    Stable,
    /// Origin alternates between two origins at every reload.
    Flip,
    /// A fixed response.
    Fixed,
}

const TARGETS: [Target; 3] = [Target::Stable, Target::Flip, Target::Fixed];

impl Target {
    fn host(self) -> &'static str {
        match self {
            Target::Stable => "stable.test",
            Target::Flip => "flip.test",
            Target::Fixed => "fixed.test",
        }
    }
}

/// How a worker reaches the gateway.
#[derive(Debug, Clone, Copy)]
enum Style {
    NewH1,
    KeptH1,
    NewH2,
    KeptH2,
}

impl Style {
    fn alpn(self) -> &'static [&'static str] {
        match self {
            Style::NewH1 | Style::KeptH1 => &["http/1.1"],
            Style::NewH2 | Style::KeptH2 => &["h2"],
        }
    }

    fn keeps_connections(self) -> bool {
        matches!(self, Style::KeptH1 | Style::KeptH2)
    }
}

/// What one worker saw.
#[derive(Default)]
struct Tally {
    requests: usize,
    failures: Vec<String>,
    /// Proxied requests by path, to check afterwards which origin answered each.
    proxied: Vec<(Target, String)>,
}

/// Sends GETs round-robin to the three sites until `stop`, `MAX_REQUESTS_PER_WORKER` or a
/// minute has passed. A kept-alive style opens one connection per site up front and never
/// reconnects: a connection the reload broke is a failure.
async fn worker(
    id: usize,
    style: Style,
    client: TestClient,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> Tally {
    let mut tally = Tally::default();
    let mut kept = Vec::new();
    if style.keeps_connections() {
        for target in TARGETS {
            kept.push(client.connect(target.host(), style.alpn()).await.unwrap());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::SeqCst)
        && tally.requests < MAX_REQUESTS_PER_WORKER
        && Instant::now() < deadline
    {
        let n = tally.requests;
        let target = TARGETS[n % TARGETS.len()];
        let host = target.host();
        let path = format!("/w{id}/{n}");
        let exchange = async {
            match kept.get_mut(n % TARGETS.len()) {
                Some(conn) => fetch(conn, host, &path).await,
                None => {
                    let mut conn = client
                        .connect(host, style.alpn())
                        .await
                        .map_err(|e| format!("connect: {e}"))?;
                    fetch(&mut conn, host, &path).await
                }
            }
        };
        let outcome = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .unwrap_or_else(|_| Err("no answer within 10 s".into()));
        let expected = match target {
            Target::Fixed => "fixed site".to_owned(),
            Target::Stable | Target::Flip => format!("ok GET {path}"),
        };
        match outcome {
            Ok((StatusCode::OK, body)) if body == expected => {
                if target != Target::Fixed {
                    tally.proxied.push((target, path));
                }
            }
            Ok((status, body)) => tally.failures.push(format!(
                "{style:?} {host}{path}: {status} {body:?} (expected 200 {expected:?})"
            )),
            Err(e) => tally.failures.push(format!("{style:?} {host}{path}: {e}")),
        }
        tally.requests += 1;
        done.fetch_add(1, Ordering::SeqCst);
    }
    tally
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_reloads_under_traffic_fail_no_request_and_keep_a_websocket_open() {
    let files = Files::new();
    let flip = [TestOrigin::http().await, TestOrigin::http().await];
    let stable = TestOrigin::http().await;
    // Step `None` is the starting config; reload `i` adds `extra<i>.test` (first, so the
    // other sites change places), drops `extra<i-1>.test`, and moves flip.test to the other
    // origin.
    let flip_at = |step: Option<usize>| step.map_or(0, |i| (i + 1) % 2);
    let extra = |i: usize| format!("extra{i}.test");
    let sites = |step: Option<usize>| {
        let mut sites = Vec::new();
        if let Some(i) = step {
            sites.push(files.site(&extra(i), &format!("respond: {{body: 'extra {i}'}}")));
        }
        sites.push(files.site("stable.test", &format!("origin: 'http://{}'", stable.addr)));
        sites.push(files.site(
            "flip.test",
            &format!("origin: 'http://{}'", flip[flip_at(step)].addr),
        ));
        sites.push(files.site("fixed.test", "respond: {body: 'fixed site'}"));
        sites
    };
    files.write(ANY_PORT, &sites(None));
    let gw = start(&files).await;
    let client = files.client(gw.https);

    let stream = client
        .tls("stable.test", true, &["http/1.1"])
        .await
        .unwrap();
    let (mut ws, upgraded) = within(
        "WebSocket handshake",
        tokio_tungstenite::client_async("wss://stable.test/ws", stream),
    )
    .await
    .unwrap();
    assert_eq!(upgraded.status(), 101);

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let styles = [Style::NewH1, Style::KeptH1, Style::NewH2, Style::KeptH2];
    let workers: Vec<_> = styles
        .into_iter()
        .enumerate()
        .map(|(id, style)| {
            tokio::spawn(worker(
                id,
                style,
                client.clone(),
                stop.clone(),
                done.clone(),
            ))
        })
        .collect();
    let progress = |at_least: usize, what: String| {
        let done = done.clone();
        async move {
            wait::until(Duration::from_secs(15), &what, || async {
                (done.load(Ordering::SeqCst) >= at_least).then_some(())
            })
            .await;
        }
    };
    progress(
        REQUESTS_BETWEEN_RELOADS,
        "traffic before the first reload".into(),
    )
    .await;

    for i in 0..RELOADS {
        files.write(ANY_PORT, &sites(Some(i)));
        let summary = gw.reload().await;
        assert_eq!(summary.sites, 4, "reload {i}");
        assert!(
            summary.moved_listeners.is_empty(),
            "reload {i}: {summary:?}"
        );

        // The reload took effect: the new site answers, the previous one is gone, and
        // flip.test goes to its new origin.
        let added = within("the added site", client.get(&extra(i), "/")).await;
        assert_eq!(
            (added.status, added.text()),
            (StatusCode::OK, format!("extra {i}"))
        );
        if i > 0 {
            let removed = within("the removed site", client.connect(&extra(i - 1), &["h2"])).await;
            assert!(removed.is_err(), "reload {i}: extra{} still served", i - 1);
        }
        let probe = format!("/probe/{i}");
        let resp = within("flip.test", client.get("flip.test", &probe)).await;
        assert_eq!(
            (resp.status, resp.text()),
            (StatusCode::OK, format!("ok GET {probe}"))
        );
        assert!(
            flip[flip_at(Some(i))]
                .seen()
                .iter()
                .any(|s| s.path == probe),
            "reload {i}: flip.test did not move to origin {}",
            flip_at(Some(i))
        );

        // The WebSocket opened before the first reload still echoes.
        let text = format!("after reload {i}");
        within("WebSocket send", ws.send(Message::text(text.clone())))
            .await
            .unwrap();
        let echoed = within("WebSocket echo", ws.next()).await;
        assert_eq!(echoed.unwrap().unwrap(), Message::text(text), "reload {i}");

        // Requests keep flowing between reloads, so every reload lands among them.
        let mark = done.load(Ordering::SeqCst) + REQUESTS_BETWEEN_RELOADS;
        progress(mark, format!("traffic after reload {i}")).await;
    }

    stop.store(true, Ordering::SeqCst);
    let mut tallies = Vec::new();
    for (w, style) in workers.into_iter().zip(styles) {
        let tally = tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .unwrap_or_else(|_| panic!("{style:?} worker did not stop"))
            .unwrap();
        tallies.push((style, tally));
    }
    let failures: Vec<&String> = tallies.iter().flat_map(|(_, t)| &t.failures).collect();
    let total: usize = tallies.iter().map(|(_, t)| t.requests).sum();
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed; the first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (style, tally) in &tallies {
        assert!(
            tally.requests >= RELOADS,
            "{style:?} sent only {} requests",
            tally.requests
        );
    }

    // Every proxied request reached an origin of its own site.
    let paths =
        |o: &TestOrigin| -> HashSet<String> { o.seen().into_iter().map(|s| s.path).collect() };
    let at_stable = paths(&stable);
    let at_flip: HashSet<String> = paths(&flip[0]).union(&paths(&flip[1])).cloned().collect();
    for (_, tally) in &tallies {
        for (target, path) in &tally.proxied {
            let (own, other) = match target {
                Target::Stable => (&at_stable, &at_flip),
                _ => (&at_flip, &at_stable),
            };
            assert!(
                own.contains(path) && !other.contains(path),
                "{path} for {target:?} reached the wrong origin"
            );
        }
    }
    // Both flip origins served traffic from the workers, not just the probes.
    for (n, origin) in flip.iter().enumerate() {
        let worker_requests = origin
            .seen()
            .iter()
            .filter(|s| s.path.starts_with("/w"))
            .count();
        assert!(worker_requests > 0, "flip origin {n} got no worker request");
    }

    within("WebSocket close", ws.close(None)).await.unwrap();
    // A tunnel holds up the drain until both sides have closed.
    drop(ws);
    stop_drained(gw).await;
}

// --- 2. A refused reload -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_reload_names_the_key_keeps_the_old_config_and_is_counted() {
    let files = Files::new();
    let origin = TestOrigin::http().await;
    files.write(
        ANY_PORT,
        &[files.site("a.test", &format!("origin: 'http://{}'", origin.addr))],
    );
    let gw = start(&files).await;
    let client = files.client(gw.https);
    let mut kept = client.connect("a.test", &["h2"]).await.unwrap();
    assert_eq!(
        within("before", fetch(&mut kept, "a.test", "/before")).await,
        Ok((StatusCode::OK, "ok GET /before".into()))
    );
    let before = gw.scrape().await;
    assert_eq!(sample(&before, FAILED_RELOADS), 0.0);

    // `strict` needs TLS to the origin, but the URL is plain http://; a new site beside it
    // must not be applied either.
    files.write(
        ANY_PORT,
        &[
            files.site(
                "a.test",
                &format!("origin: {{url: 'http://{}', mode: strict}}", origin.addr),
            ),
            files.site("b.test", "respond: {body: b}"),
        ],
    );
    let problems = within("reload", gw.controller.reload())
        .await
        .expect_err("a strict origin with an http:// URL was accepted");
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["sites[0].origin.mode"], "{problems:?}");
    assert!(
        problems[0].message.contains("strict") && problems[0].message.contains("http://"),
        "{problems:?}"
    );

    // The old configuration keeps serving, on the open connection and on new ones.
    assert_eq!(
        within("kept", fetch(&mut kept, "a.test", "/after")).await,
        Ok((StatusCode::OK, "ok GET /after".into()))
    );
    let fresh = within("fresh", client.get("a.test", "/fresh")).await;
    assert_eq!(
        (fresh.status, fresh.text()),
        (StatusCode::OK, "ok GET /fresh".into())
    );
    assert!(
        within("b.test", client.connect("b.test", &["h2"]))
            .await
            .is_err(),
        "the refused config's new site is served"
    );

    let after = gw.scrape().await;
    // The file watcher may have refused the same file too (it looks every second).
    let watcher_tried = !logs::lines_with(&[
        "config file changed; reloading",
        &files.path.display().to_string(),
    ])
    .is_empty();
    let failed = sample(&after, FAILED_RELOADS);
    assert!(
        failed == 1.0 || (failed == 2.0 && watcher_tried),
        "{FAILED_RELOADS} is {failed} after one refused reload (watcher tried: {watcher_tried})"
    );
    assert_eq!(sample(&after, GOOD_RELOADS), 0.0);
    stop_drained(gw).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_cannot_bind_its_new_listener_applies_nothing() {
    let files = Files::new();
    files.write(ANY_PORT, &[files.site("a.test", "respond: {body: a}")]);
    let gw = start(&files).await;
    let client = files.client(gw.https);
    let mut kept = client.connect("a.test", &["h2"]).await.unwrap();

    // Everything in this file is valid except the HTTPS address, which is taken: the bind
    // fails after certificates and routes are prepared, and none of them may be applied.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    files.write(
        &addr.to_string(),
        &[
            files.site("a.test", "respond: {body: 'a, changed'}"),
            files.site("b.test", "respond: {body: b}"),
        ],
    );
    let problems = within("reload", gw.controller.reload())
        .await
        .expect_err("a reload onto a taken port was accepted");
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["listen.https"], "{problems:?}");
    assert!(
        problems[0].message.contains("already in use"),
        "{problems:?}"
    );

    assert_eq!(
        within("kept", fetch(&mut kept, "a.test", "/")).await,
        Ok((StatusCode::OK, "a".into())),
        "the refused config's routes were applied"
    );
    let fresh = within("fresh", client.get("a.test", "/")).await;
    assert_eq!((fresh.status, fresh.text()), (StatusCode::OK, "a".into()));
    assert!(
        within("b.test", client.connect("b.test", &["h2"]))
            .await
            .is_err(),
        "the refused config's certificates were applied"
    );
    assert_eq!(gw.controller.config().await.sites.len(), 1);
    drop(taken);
    stop_drained(gw).await;
}

// --- 3. Pooled origin connections ----------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_origin_keeps_its_pooled_connection_across_a_reload() {
    let files = Files::new();
    let kept = TestOrigin::http().await;
    let old = TestOrigin::http().await;
    let new = TestOrigin::http().await;
    let keep_site = files.site("keep.test", &format!("origin: 'http://{}'", kept.addr));
    files.write(
        ANY_PORT,
        &[
            keep_site.clone(),
            files.site("other.test", &format!("origin: 'http://{}'", old.addr)),
        ],
    );
    let gw = start(&files).await;
    let client = files.client(gw.https);

    for i in 0..3 {
        let resp = within("before", client.get("keep.test", &format!("/before/{i}"))).await;
        assert_eq!(resp.status, 200);
    }
    let pooled = kept.connections();
    assert!(pooled >= 1);

    // Another site moves to another origin and a site is added; keep.test is untouched.
    files.write(
        ANY_PORT,
        &[
            files.site("added.test", "respond: {body: added}"),
            files.site("other.test", &format!("origin: 'http://{}'", new.addr)),
            keep_site,
        ],
    );
    gw.reload().await;
    let moved = within("other.test", client.get("other.test", "/moved")).await;
    assert_eq!(
        (moved.status, moved.text()),
        (StatusCode::OK, "ok GET /moved".into())
    );
    let at_new: Vec<String> = new.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(at_new, ["/moved"], "the reload did not apply");

    // A new client connection; the gateway's connection to the origin is the pooled one.
    let resp = within("after", client.get("keep.test", "/after")).await;
    assert_eq!(
        (resp.status, resp.text()),
        (StatusCode::OK, "ok GET /after".into())
    );
    assert_eq!(kept.last().path, "/after");
    assert_eq!(
        kept.connections(),
        pooled,
        "the reload dropped keep.test's pooled origin connection"
    );
    stop_drained(gw).await;
}

// --- 4. A removed site -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_sites_request_in_flight_finishes_and_later_ones_get_421() {
    let files = Files::new();
    let origin = TestOrigin::http().await;
    let stays = files.site("stays.test", "respond: {body: stays}");
    files.write(
        ANY_PORT,
        &[
            files.site("gone.test", &format!("origin: 'http://{}'", origin.addr)),
            stays.clone(),
        ],
    );
    let gw = start(&files).await;
    let client = files.client(gw.https);

    let mut slow = client.connect("gone.test", &["http/1.1"]).await.unwrap();
    let mut later = client.connect("gone.test", &["h2"]).await.unwrap();
    let in_flight = tokio::spawn(async move { fetch(&mut slow, "gone.test", "/slow/1500").await });
    wait::until(
        Duration::from_secs(10),
        "the slow request to reach the origin",
        || async {
            origin
                .seen()
                .iter()
                .any(|s| s.path == "/slow/1500")
                .then_some(())
        },
    )
    .await;

    files.write(ANY_PORT, &[stays]);
    let summary = gw.reload().await;
    assert_eq!(summary.sites, 1);
    assert!(
        !in_flight.is_finished(),
        "the slow request ended before the reload; the test proves nothing"
    );

    let finished = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(finished, Ok((StatusCode::OK, "slow done".into())));

    // A later request on a connection made for the removed site finds no site.
    assert_eq!(
        within("later", fetch(&mut later, "gone.test", "/again")).await,
        Ok((
            StatusCode::MISDIRECTED_REQUEST,
            "no site for this host\n".into()
        ))
    );
    assert!(
        within("new connection", client.connect("gone.test", &["h2"]))
            .await
            .is_err(),
        "a removed site's certificate is still served"
    );
    assert_eq!(origin.seen().len(), 1, "{:?}", origin.seen());
    let resp = within("stays.test", client.get("stays.test", "/")).await;
    assert_eq!((resp.status, resp.text()), (StatusCode::OK, "stays".into()));
    stop_drained(gw).await;
}

// --- 5. A moved listener -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_moved_https_listener_serves_the_new_port_and_lets_old_connections_finish() {
    let files = Files::new();
    let sites = [files.site("a.test", "respond: {body: a}")];
    files.write(ANY_PORT, &sites);
    let gw = start(&files).await;
    let old = gw.https;
    let mut kept = files
        .client(old)
        .connect("a.test", &["http/1.1"])
        .await
        .unwrap();
    assert_eq!(
        within("kept", fetch(&mut kept, "a.test", "/")).await,
        Ok((StatusCode::OK, "a".into()))
    );

    // A port nobody holds, released just before the gateway binds it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let new: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    files.write(&new.to_string(), &sites);
    let summary = gw.reload().await;
    assert_eq!(summary.moved_listeners, [format!("Https {new}")]);

    let resp = within("new port", files.client(new).get("a.test", "/")).await;
    assert_eq!((resp.status, resp.text()), (StatusCode::OK, "a".into()));
    assert_eq!(
        within("kept", fetch(&mut kept, "a.test", "/")).await,
        Ok((StatusCode::OK, "a".into())),
        "a keep-alive connection on the old port was cut"
    );
    wait::until(
        Duration::from_secs(5),
        "the old port to refuse connections",
        || async {
            match tokio::net::TcpStream::connect(old).await {
                Ok(_) => None,
                Err(e) => (e.kind() == std::io::ErrorKind::ConnectionRefused).then_some(()),
            }
        },
    )
    .await;
    // Still the same kept connection after the old listener closed.
    assert_eq!(
        within("kept", fetch(&mut kept, "a.test", "/")).await,
        Ok((StatusCode::OK, "a".into()))
    );
    stop_drained(gw).await;
}

// --- 6. The file watcher -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn saving_the_file_adds_a_site_without_a_reload_call() {
    let files = Files::new();
    let first = files.site("a.test", "respond: {body: a}");
    files.write(ANY_PORT, std::slice::from_ref(&first));
    let gw = start(&files).await;
    let client = files.client(gw.https);
    // The watcher starts right after the admin task; once admin and HTTPS have answered,
    // it has long read the file as it was (an edit before that would go unnoticed).
    gw.scrape().await;
    let resp = within("a.test", client.get("a.test", "/")).await;
    assert_eq!(resp.status, 200);
    assert!(client.connect("new.test", &["h2"]).await.is_err());

    files.write(
        ANY_PORT,
        &[first, files.site("new.test", "respond: {body: new}")],
    );
    let resp = wait::until(Duration::from_secs(5), "new.test to answer", || async {
        let mut conn = client.connect("new.test", &["h2"]).await.ok()?;
        fetch(&mut conn, "new.test", "/").await.ok()
    })
    .await;
    assert_eq!(resp, (StatusCode::OK, "new".into()));
    stop_drained(gw).await;
}

// --- 7. Certificate files ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_keeps_unchanged_certificates_loads_rewritten_ones_and_refuses_broken_ones() {
    let files = Files::new();
    let sites = [
        files.site("a.test", "respond: {body: a}"),
        files.site("b.test", "respond: {body: b}"),
    ];
    files.write(ANY_PORT, &sites);
    let gw = start(&files).await;
    let client = files.client(gw.https);
    let store = gw.controller.gateway().certs();
    let (a0, b0) = (
        store.certificate("a.test").unwrap(),
        store.certificate("b.test").unwrap(),
    );

    // Files unchanged: both sites keep the key loaded at start.
    gw.reload().await;
    assert!(Arc::ptr_eq(&a0, &store.certificate("a.test").unwrap()));
    assert!(Arc::ptr_eq(&b0, &store.certificate("b.test").unwrap()));

    // b's files rewritten in place, same paths: the reload serves the new certificate.
    let fresh = files.ca.leaf(&["b.test"]);
    fresh.write(files.dir.path(), "b.test");
    gw.reload().await;
    assert!(Arc::ptr_eq(&a0, &store.certificate("a.test").unwrap()));
    let conn = within("b.test", client.connect("b.test", &["h2"]))
        .await
        .unwrap();
    assert_eq!(conn.peer_leaf, fresh.cert_der);

    // b's key replaced by one of another certificate: refused, named, and the certificate
    // loaded before keeps serving.
    let other = files.ca.leaf(&["b.test"]);
    std::fs::write(files.dir.path().join("b.test.key"), &other.key_pem).unwrap();
    let problems = within("reload", gw.controller.reload())
        .await
        .expect_err("a key that does not match its certificate was accepted");
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["sites[1].tls.key"], "{problems:?}");
    let conn = within("b.test", client.connect("b.test", &["h2"]))
        .await
        .unwrap();
    assert_eq!(conn.peer_leaf, fresh.cert_der);
    stop_drained(gw).await;
}
