//! Adversarial requests against the real gateway (in-process, real TLS on 127.0.0.1:0) in
//! front of origins that record every byte they receive: request smuggling (CL.TE, TE.CL,
//! TE.TE obfuscation), header-field syntax, request-target forms, HTTP/2 → HTTP/1.1
//! downgrade, hop-by-hop and forwarding headers, h2c upgrades, and client abuse that must
//! never count against an origin's health (malformed bodies, disconnects, resets).
//!
//! Each case names the rule it follows and asserts both what the client got (status, and
//! whether the connection closed) and what the origin received: the exact header lines of
//! the rewritten request (sorted: the order of the gateway's headers is not part of any
//! rule), or nothing at all. Where a rule allows more than one answer the case lists the
//! acceptable ones.
//!
//! "Nothing reached the origin" is checked after a barrier: a plain request on another
//! connection that every origin server must have received, sent once the client has its
//! answer, so anything the gateway wrote for the case was in the origin's socket first.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use portcullis_tests::raw_client::{CANCEL, PROTOCOL_ERROR};
use portcullis_tests::scrape::metric;
use portcullis_tests::{
    GatewayBuilder, H2Outcome, RawH1, RawH2, RawOrigin, RawRequest, RawResponse, TestCa,
    TestGateway,
};

const HOST: &str = "a.test";
const UP: &str = "portcullis_origin_server_up";
const ERRORS: &str = "portcullis_origin_errors_total";
const EJECTIONS: &str = "portcullis_origin_ejections_total";
const SENTINEL: &str = "/__sentinel";

/// A gateway with one site, `a.test`, in front of recording origin servers. The route
/// `/admin` is answered by the gateway itself with 403, so reaching the origin with it
/// proves a request went around the gateway's routing.
struct Setup {
    gw: TestGateway,
    ca: TestCa,
    origins: Vec<RawOrigin>,
}

/// Passive health as strict as the docs allow to be useful: three failures eject.
const PASSIVE: &str = "health: {passive: {failures: 3, window: 10s, eject: 30s}}";

impl Setup {
    /// `GET path` with `Host: a.test` and the `sent` lines is answered 200 by the first
    /// origin server, which received exactly one request whose lines are the gateway's
    /// rewrite plus `expected`.
    async fn assert_forwarded_as(&self, path: &str, sent: &[&str], expected: &[&str]) {
        let before = self.origins[0].requests().len();
        let lines = [&["host: a.test"][..], sent].concat();
        let line = format!("GET {path} HTTP/1.1");
        let (resp, _) = self.send(&request(&line, &lines, "")).await;
        assert_eq!(status(&resp), Some(200), "{sent:?}: {resp:?}");
        let new = self.origins[0].requests()[before..].to_vec();
        assert_eq!(new.len(), 1, "{sent:?}");
        assert_eq!(
            new[0].header_lines(),
            rewritten("1.1", expected),
            "sent {sent:?}"
        );
    }

    /// `n` origin servers with passive health on.
    async fn new(n: usize, h2c: bool) -> Self {
        Self::with(n, h2c, "", "").await
    }

    /// As [`new`](Self::new); `site_extra` is appended to the site's YAML mapping and
    /// `routes_extra` to its `routes` list, where `ORIGIN` stands for the site's origin.
    async fn with(n: usize, h2c: bool, site_extra: &str, routes_extra: &str) -> Self {
        let mut origins = Vec::new();
        for _ in 0..n {
            origins.push(if h2c {
                RawOrigin::accepting_h2c().await
            } else {
                RawOrigin::start().await
            });
        }
        let ca = TestCa::new("adversarial CA");
        let servers: Vec<String> = origins
            .iter()
            .map(|o| format!("{{url: '{}'}}", o.url()))
            .collect();
        let origin = format!("{{servers: [{}], {PASSIVE}}}", servers.join(", "));
        let routes_extra = routes_extra.replace("ORIGIN", &origin);
        let gw = GatewayBuilder::new()
            .tls_site(
                &ca,
                &[HOST],
                &format!(
                    "origin: {origin}, \
                     routes: [{{path: /admin, respond: {{status: 403, body: forbidden}}}}{routes_extra}]\
                     {site_extra}"
                ),
            )
            .start()
            .await;
        Self { gw, ca, origins }
    }

    async fn h1(&self) -> RawH1 {
        RawH1::connect(self.gw.https, &self.ca.root_der, HOST).await
    }

    async fn h2(&self) -> RawH2 {
        RawH2::connect(self.gw.https, &self.ca.root_der, HOST).await
    }

    /// Sends `bytes` on a new connection; the response (`None`: closed without one) and
    /// the connection, to look further at.
    async fn send(&self, bytes: &[u8]) -> (Option<RawResponse>, RawH1) {
        let mut c = self.h1().await;
        let resp = c.exchange(bytes).await;
        (resp, c)
    }

    /// The barrier: plain GETs on new connections until every origin server has one.
    async fn barrier(&self) {
        for _ in 0..4 * self.origins.len() {
            if self.origins.iter().all(|o| {
                o.requests()
                    .iter()
                    .any(|r| r.request_line().contains(SENTINEL))
            }) {
                return;
            }
            let req = format!("GET {SENTINEL} HTTP/1.1\r\nhost: {HOST}\r\n\r\n");
            let (resp, _) = self.send(req.as_bytes()).await;
            let resp = resp.expect("an answer to the barrier request");
            assert_eq!(resp.status, 200, "barrier: {}", resp.text());
        }
        panic!("the barrier requests did not reach every origin server");
    }

    /// Every request the origins parsed whole, barrier requests left out.
    fn forwarded(&self) -> Vec<RawRequest> {
        self.origins
            .iter()
            .flat_map(RawOrigin::requests)
            .filter(|r| !r.request_line().contains(SENTINEL))
            .collect()
    }

    /// Every byte an origin received that is not part of a request it parsed whole.
    fn leftovers(&self) -> Vec<String> {
        self.origins
            .iter()
            .flat_map(RawOrigin::leftovers)
            .filter(|l| !l.is_empty())
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .collect()
    }

    /// After the barrier: no origin received anything for `case`.
    async fn assert_nothing_forwarded(&self, case: &str) {
        self.barrier().await;
        assert_eq!(
            self.forwarded(),
            vec![],
            "{case}: requests reached the origin"
        );
        assert_eq!(
            self.leftovers(),
            Vec::<String>::new(),
            "{case}: bytes reached the origin"
        );
    }

    /// After the barrier: the one request the origins received (and nothing else).
    async fn the_one_forwarded(&self, case: &str) -> RawRequest {
        self.barrier().await;
        let mut seen = self.forwarded();
        assert_eq!(
            self.leftovers(),
            Vec::<String>::new(),
            "{case}: bytes beyond whole requests reached the origin"
        );
        assert_eq!(seen.len(), 1, "{case}: origin received {seen:#?}");
        seen.pop().unwrap()
    }

    /// Waits (up to 5 s) until more than `before` cut-off requests starting with `prefix`
    /// sit at the origins; returns how many.
    async fn wait_cut_off(&self, prefix: &[u8], before: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let n = self.cut_off(prefix);
            if n > before {
                return n;
            }
            if Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            panic!(
                "no new request head {:?} at the origins; origin servers (url, up, errors, \
                 ejections): {:?}; received: {:?}",
                String::from_utf8_lossy(prefix),
                self.health().await,
                self.origins
                    .iter()
                    .map(|o| o
                        .connections()
                        .iter()
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect::<Vec<_>>())
                    .collect::<Vec<_>>()
            );
        }
    }

    /// Requests starting with `prefix` the origins hold cut off.
    fn cut_off(&self, prefix: &[u8]) -> usize {
        self.origins
            .iter()
            .flat_map(RawOrigin::leftovers)
            .filter(|l| l.starts_with(prefix))
            .count()
    }

    /// Metrics of every origin server: up, errors, ejections.
    async fn health(&self) -> Vec<(String, f64, f64, f64)> {
        let page = self.gw.scrape().await;
        self.origins
            .iter()
            .map(|o| {
                let url = o.url();
                let l = [("origin", url.as_str())];
                (
                    url.clone(),
                    metric(&page, UP, &l),
                    metric(&page, ERRORS, &l),
                    metric(&page, EJECTIONS, &l),
                )
            })
            .collect()
    }

    /// Every server up, with no error and no ejection counted, and answering: plain
    /// requests get 200, from every server in turn.
    async fn assert_origins_healthy(&self, case: &str) {
        for (url, up, errors, ejections) in self.health().await {
            assert_eq!(
                (up, errors, ejections),
                (1.0, 0.0, 0.0),
                "{case}: origin server {url} (up, errors, ejections)"
            );
        }
        let mut answered = std::collections::BTreeSet::new();
        for i in 0..2 * self.origins.len() {
            let (resp, _) = self
                .send(format!("GET /after HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes())
                .await;
            let resp = resp.unwrap_or_else(|| panic!("{case}: no answer to GET /after {i}"));
            assert_eq!(resp.status, 200, "{case}: GET /after {i}: {}", resp.text());
            answered.insert(resp.header("x-origin").unwrap_or_default().to_owned());
        }
        assert_eq!(
            answered.len(),
            self.origins.len(),
            "{case}: servers answering"
        );
    }
}

/// The header lines the gateway sends for a plain request from `127.0.0.1` to `a.test`,
/// plus `extra`, sorted. `via` is `1.1` for HTTP/1.1 clients, `2` for HTTP/2.
fn rewritten(via: &str, extra: &[&str]) -> Vec<String> {
    let mut lines: Vec<String> = [
        "host: a.test",
        "x-forwarded-host: a.test",
        "x-forwarded-proto: https",
        "x-forwarded-for: 127.0.0.1",
        "forwarded: for=127.0.0.1;host=\"a.test\";proto=https",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([format!("via: {via} portcullis")])
    .chain(extra.iter().map(|s| (*s).to_owned()))
    .collect();
    lines.sort();
    lines
}

fn status(resp: &Option<RawResponse>) -> Option<u16> {
    resp.as_ref().map(|r| r.status)
}

/// A client request head with `lines` after the request line, and `body`.
fn request(line: &str, lines: &[&str], body: &str) -> Vec<u8> {
    let mut out = format!("{line}\r\n");
    for l in lines {
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

// --- 1. Client abuse never counts against the origin --------------------------------------

/// Malformed chunked bodies (RFC 9112 §7.1: `chunk-size = 1*HEXDIG`, each chunk and its
/// size line end in CRLF; a recipient must be able to parse the size and must guard
/// against overflow) are the client's fault: 400 and the connection closed (the rest of
/// the stream cannot be framed), and the origin, which may have the head and the valid
/// chunks before the fault, sees its connection closed without a complete request, and
/// no failure is counted against it.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_chunked_bodies_get_400_and_never_count_against_the_origin() {
    let s = Setup::new(2, false).await;
    let bad = [
        ("chunk size zz", "zz\r\nhello\r\n0\r\n\r\n"),
        ("chunk size 0x10", "0x10\r\nhellohellohello!\r\n0\r\n\r\n"),
        (
            "overflowing chunk size",
            "fffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        ("no CRLF after chunk data", "5\r\nhelloXX0\r\n\r\n"),
        ("bare LF after chunk size", "5\nhello\r\n0\r\n\r\n"),
    ];
    let head = "POST /upload HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n";
    for round in 0..3 {
        for (case, body) in bad {
            let case = format!("{case} (round {round})");
            // One valid chunk first, so the fault comes after the body started streaming.
            let bytes = format!("{head}3\r\nabc\r\n{body}");
            let (resp, mut conn) = s.send(bytes.as_bytes()).await;
            assert_eq!(status(&resp), Some(400), "{case}: {resp:?}");
            conn.expect_closed().await;
        }
    }
    s.barrier().await;
    assert_eq!(s.forwarded(), vec![], "a malformed body was completed");
    for origin in &s.origins {
        origin.wait_leftovers_closed().await;
    }
    for left in s.leftovers() {
        let expected_head = "POST /upload HTTP/1.1\r\n";
        assert!(left.starts_with(expected_head), "origin got {left:?}");
        let (head, body) = left.split_once("\r\n\r\n").unwrap_or((&left, ""));
        let mut lines = portcullis_tests::head_lines(format!("{head}\r\n\r\n").as_bytes()).1;
        lines.sort();
        assert_eq!(
            lines,
            rewritten("1.1", &["transfer-encoding: chunked"]),
            "{left:?}"
        );
        // The chunks before the fault (and, when only the CRLF after it is missing, the
        // `hello` chunk's data) may have gone on; never a last chunk.
        assert!(
            "3\r\nabc\r\n5\r\nhello\r\n".starts_with(body),
            "only the valid chunks may follow the head: {body:?}"
        );
    }
    s.assert_origins_healthy("malformed chunked bodies").await;
}

/// A client that goes away in the middle of its body (RFC 9112 §9.6: an incomplete message
/// is the client's doing) costs the origin its connection, not its health.
#[tokio::test(flavor = "multi_thread")]
async fn clients_leaving_mid_body_never_count_against_the_origin() {
    let s = Setup::new(2, false).await;
    for i in 0..10 {
        let mut c = s.h1().await;
        let (framing, part) = if i % 2 == 0 {
            ("content-length: 100", "0123456789")
        } else {
            ("transfer-encoding: chunked", "a\r\n0123456789\r\n")
        };
        c.write(&request(
            "POST /upload HTTP/1.1",
            &["host: a.test", framing],
            part,
        ))
        .await;
        // Wait until the origin has the head: the gateway is then mid-request.
        s.wait_cut_off(b"POST /upload", i).await;
        c.shutdown().await;
        drop(c);
    }
    for origin in &s.origins {
        origin.wait_leftovers_closed().await;
    }
    s.barrier().await;
    assert_eq!(s.forwarded(), vec![], "a cut-off body was completed");
    s.assert_origins_healthy("clients leaving mid-body").await;
}

/// HTTP/2 uploads that end badly: the client resets the stream mid-body (RFC 9113 §5.4.2,
/// CANCEL), or its DATA exceeds or falls short of its `content-length` (§8.1.1: malformed,
/// a stream error PROTOCOL_ERROR). Neither is the origin's failure.
#[tokio::test(flavor = "multi_thread")]
async fn h2_uploads_reset_or_mis_sized_never_count_against_the_origin() {
    let s = Setup::new(2, false).await;
    let post = |len: Option<&'static str>| {
        let mut f: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", b"a.test"),
            (b":path", b"/upload"),
        ];
        if let Some(len) = len {
            f.push((b"content-length", len.as_bytes()));
        }
        f
    };
    for _ in 0..4 {
        // Reset mid-upload.
        let mut c = s.h2().await;
        let before = s.cut_off(b"POST /upload");
        c.headers(1, &post(None), false).await;
        c.data(1, b"hello", false).await;
        s.wait_cut_off(b"POST /upload", before).await;
        c.reset(1, CANCEL).await;

        // More DATA than the content-length, then less, at once; then more, once the
        // upload reached the origin.
        let cases: [(&str, &[u8], &[u8]); 3] = [
            ("5", b"", b"helloworld"),
            ("10", b"", b"hello"),
            ("10", b"hello", b"world, and more"),
        ];
        for (len, first, last) in cases {
            let mut c = s.h2().await;
            let before = s.cut_off(b"POST /upload");
            c.headers(1, &post(Some(len)), false).await;
            if !first.is_empty() {
                c.data(1, first, false).await;
                s.wait_cut_off(b"POST /upload", before).await;
            }
            c.data(1, last, true).await;
            let outcome = c.outcome(1).await;
            if !matches!(
                outcome,
                H2Outcome::Reset(PROTOCOL_ERROR) | H2Outcome::Status(400)
            ) {
                panic!(
                    "content-length {len}, DATA {:?} then {:?}: {outcome:?}; origin servers \
                     (url, up, errors, ejections): {:?}",
                    String::from_utf8_lossy(first),
                    String::from_utf8_lossy(last),
                    s.health().await
                );
            }
        }
    }
    for origin in &s.origins {
        origin.wait_leftovers_closed().await;
    }
    s.barrier().await;
    assert_eq!(
        s.forwarded(),
        vec![],
        "an upload that ended badly was completed"
    );
    for left in s.leftovers() {
        assert!(
            left.starts_with("POST /upload HTTP/1.1\r\n")
                && left.matches(" HTTP/1.1\r\n").count() == 1,
            "the origin holds more than one cut-off request: {left:?}"
        );
    }
    s.assert_origins_healthy("HTTP/2 uploads reset or mis-sized")
        .await;
}

// --- 2. h2c upgrades are never forwarded ---------------------------------------------------

const H2C_UPGRADE: [&str; 4] = [
    "host: a.test",
    "upgrade: h2c",
    "connection: Upgrade, HTTP2-Settings",
    "http2-settings: AAMAAABkAARAAAAAAAIAAAAA",
];

/// h2c smuggling: an origin that accepts `Upgrade: h2c` would turn the client's
/// connection into a tunnel past the gateway's routing. h2c is never an upgrade over TLS
/// (RFC 9113 §3.1 dropped it; RFC 9110 §7.8: a proxy forwards only upgrades it supports),
/// so the request goes as an ordinary one, without `Upgrade`, `HTTP2-Settings` or the
/// `Connection` tokens, the client gets the origin's normal answer, and the `/admin` route
/// answered by the gateway stays unreachable through that connection.
#[tokio::test(flavor = "multi_thread")]
async fn h2c_upgrades_are_forwarded_as_ordinary_requests() {
    let s = Setup::new(1, true).await;
    let mut c = s.h1().await;
    let first = c
        .exchange(&request("GET / HTTP/1.1", &H2C_UPGRADE, ""))
        .await;
    let second = c
        .exchange(&request("GET /admin HTTP/1.1", &["host: a.test"], ""))
        .await;
    let seen: Vec<String> = s.origins[0]
        .requests()
        .iter()
        .map(|r| r.request_line())
        .collect();
    assert_eq!(
        (status(&first), status(&second)),
        (Some(200), Some(403)),
        "h2c upgrade: first answer {first:?}, then /admin got {second:?}; the origin saw {seen:?}"
    );
    assert_eq!(first.unwrap().text(), "raw GET /");
    assert_eq!(second.unwrap().text(), "forbidden");
    let one = s.the_one_forwarded("h2c upgrade").await;
    assert_eq!(one.request_line(), "GET / HTTP/1.1");
    assert_eq!(one.header_lines(), rewritten("1.1", &[]));
}

const WS_UPGRADE: [&str; 5] = [
    "host: a.test",
    "upgrade: websocket",
    "connection: Upgrade",
    "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
    "sec-websocket-version: 13",
];

/// WebSocket upgrades still pass by default (RFC 6455 §4.1; RFC 9110 §7.8): the origin
/// receives `Upgrade: websocket` and `Connection: upgrade` (here it declines with 200).
#[tokio::test(flavor = "multi_thread")]
async fn websocket_upgrades_pass_by_default() {
    let s = Setup::new(1, true).await;
    let (resp, _) = s.send(&request("GET /ws HTTP/1.1", &WS_UPGRADE, "")).await;
    assert_eq!(status(&resp), Some(200), "{resp:?}");
    let one = s.the_one_forwarded("websocket upgrade").await;
    assert_eq!(
        one.header_lines(),
        rewritten(
            "1.1",
            &[
                "upgrade: websocket",
                "connection: upgrade",
                "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
                "sec-websocket-version: 13",
            ]
        )
    );
}

/// `upgrades:` on a site and on a route lists the upgrades that may pass (default
/// `[websocket]`): `[]` forwards none, another token lets itself through, and one not
/// listed goes as an ordinary request without its upgrade headers.
#[tokio::test(flavor = "multi_thread")]
async fn the_upgrades_key_says_which_upgrades_pass() {
    let s = Setup::with(
        1,
        true,
        ", upgrades: []",
        ", {path: /foo, origin: ORIGIN, upgrades: [websocket, foo]}",
    )
    .await;
    let ws_key = [
        "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
        "sec-websocket-version: 13",
    ];
    let cases: [(&str, &[&str], Vec<&str>); 4] = [
        // `upgrades: []` on the site: WebSocket goes as an ordinary request.
        ("GET /ws HTTP/1.1", &WS_UPGRADE, ws_key.to_vec()),
        // `/foo` allows foo and websocket.
        (
            "GET /foo/x HTTP/1.1",
            &["host: a.test", "upgrade: foo", "connection: upgrade"],
            vec!["upgrade: foo", "connection: upgrade"],
        ),
        (
            "GET /foo/ws HTTP/1.1",
            &WS_UPGRADE,
            [&["upgrade: websocket", "connection: upgrade"][..], &ws_key]
                .concat()
                .to_vec(),
        ),
        // h2c is never allowed, wherever.
        ("GET /foo/h2c HTTP/1.1", &H2C_UPGRADE, vec![]),
    ];
    for (line, lines, extra) in cases {
        let before = s.origins[0].requests().len();
        let (resp, _) = s.send(&request(line, lines, "")).await;
        assert_eq!(status(&resp), Some(200), "{line}: {resp:?}");
        let seen = s.origins[0].requests();
        let new: Vec<_> = seen[before..].to_vec();
        assert_eq!(new.len(), 1, "{line}: {new:#?}");
        assert_eq!(new[0].header_lines(), rewritten("1.1", &extra), "{line}");
    }
}

/// `h2c` in `upgrades:` is refused by the config check, naming the key.
#[tokio::test]
async fn h2c_in_upgrades_is_refused_by_the_config_check() {
    let ca = TestCa::new("adversarial CA");
    let result = GatewayBuilder::new()
        .tls_site(
            &ca,
            &[HOST],
            "origin: 'http://127.0.0.1:9', \
             routes: [{path: /x, origin: 'http://127.0.0.1:9', upgrades: [websocket, h2c]}]",
        )
        .try_start()
        .await;
    let problems = match result {
        Err(portcullis::StartError::Config(problems)) => {
            problems.iter().map(ToString::to_string).collect::<Vec<_>>()
        }
        Err(e) => panic!("refused, but not by the config check: {e}"),
        Ok(_) => panic!("a config allowing h2c upgrades was accepted"),
    };
    assert!(
        problems
            .iter()
            .any(|p| p.contains("sites[0].routes[0].upgrades[1]")),
        "{problems:?}"
    );
}

// --- 3, 4. Fields combined and TE on the way to an HTTP/1.1 origin -------------------------

fn h2_get(path: &'static [u8]) -> Vec<(&'static [u8], &'static [u8])> {
    vec![
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", b"a.test"),
        (b":path", path),
    ]
}

/// RFC 9113 §8.2.3: an HTTP/2 client may split `cookie` into several fields; before an
/// HTTP/1.1 origin they are joined into one with `; `.
#[tokio::test(flavor = "multi_thread")]
async fn h2_cookie_fields_are_joined_for_http1_origins() {
    let s = Setup::new(1, false).await;
    let mut c = s.h2().await;
    let mut fields = h2_get(b"/cookies");
    fields.push((b"cookie", b"a=1"));
    fields.push((b"cookie", b"b=2"));
    c.headers(1, &fields, true).await;
    assert_eq!(c.outcome(1).await, H2Outcome::Status(200));
    let one = s.the_one_forwarded("two cookie fields").await;
    assert_eq!(one.request_line(), "GET /cookies HTTP/1.1");
    assert_eq!(one.header_lines(), rewritten("2", &["cookie: a=1; b=2"]));
}

/// RFC 9110 §10.1.4 and §7.6.1: TE is hop-by-hop; only `trailers` means anything beyond
/// this hop (and HTTP/2 allows nothing else, RFC 9113 §8.2.2). Whatever the client
/// combines, the origin gets one `te: trailers` or none.
#[tokio::test(flavor = "multi_thread")]
async fn te_reaches_the_origin_as_trailers_or_not_at_all() {
    let s = Setup::new(1, false).await;
    let cases: [(&[&str], &[&str]); 4] = [
        (&["te: trailers", "te: gzip"], &["te: trailers"]),
        (&["te: gzip", "te: trailers"], &["te: trailers"]),
        (&["te: gzip, trailers"], &["te: trailers"]),
        (&["te: gzip"], &[]),
    ];
    for (sent, expected) in cases {
        s.assert_forwarded_as("/te", sent, expected).await;
    }
}

// --- 5. Asterisk form ----------------------------------------------------------------------

/// RFC 9112 §3.2.4: the asterisk form is only for OPTIONS (a server-wide request). `GET *`
/// is refused with 400; `OPTIONS *` is the gateway's own to answer (200, empty body, as
/// Go's net/http does) and never goes to an origin, which could not tell it from a request
/// for a path.
#[tokio::test(flavor = "multi_thread")]
async fn the_asterisk_form_is_answered_by_the_gateway() {
    let s = Setup::new(1, false).await;
    let (resp, _) = s
        .send(&request("GET * HTTP/1.1", &["host: a.test"], ""))
        .await;
    assert_eq!(status(&resp), Some(400), "GET *: {resp:?}");
    s.assert_nothing_forwarded("GET *").await;

    let (resp, _) = s
        .send(&request("OPTIONS * HTTP/1.1", &["host: a.test"], ""))
        .await;
    let resp = resp.expect("an answer to OPTIONS *");
    assert_eq!(
        (resp.status, resp.text()),
        (200, String::new()),
        "OPTIONS *"
    );
    s.assert_nothing_forwarded("OPTIONS *").await;
}

// --- Classic request smuggling over HTTP/1.1 -----------------------------------------------

/// What a case allows.
#[derive(Debug, Clone, Copy)]
enum Allowed {
    /// Only this status, the connection closed, nothing at the origin.
    Refused(u16),
    /// Refused as above (400), or forwarded as exactly one request with one framing (never
    /// `Content-Length` beside chunked) and the client's connection closed after.
    RefusedOrOneFraming,
    /// As `RefusedOrOneFraming`, except that the connection may stay open, the bytes after
    /// the body then being the client's next request, which the gateway routes itself.
    RefusedOrOneFramingKeptOpen,
    /// Refused with one of these statuses and nothing forwarded; the connection may close,
    /// or carry the next request correctly.
    RefusedAnyOf(&'static [u16]),
}

struct Case {
    name: &'static str,
    rule: &'static str,
    bytes: Vec<u8>,
    allowed: Allowed,
}

fn case(name: &'static str, rule: &'static str, bytes: &[u8], allowed: Allowed) -> Case {
    Case {
        name,
        rule,
        bytes: bytes.to_vec(),
        allowed,
    }
}

/// A second request hidden in a body, which must never reach the origin as a request.
const SMUGGLED: &str = "GET /admin HTTP/1.1\r\nhost: a.test\r\n\r\n";

async fn check(s: &Setup, c: &Case) {
    let what = format!("{} ({})", c.name, c.rule);
    let before = s.forwarded().len();
    let (resp, mut conn) = s.send(&c.bytes).await;
    eprintln!("{what}: {:?}", status(&resp));
    match c.allowed {
        Allowed::Refused(_) | Allowed::RefusedAnyOf(_) => {
            let codes: &[u16] = match &c.allowed {
                Allowed::Refused(code) => std::slice::from_ref(code),
                Allowed::RefusedAnyOf(codes) => codes,
                _ => unreachable!(),
            };
            s.barrier().await;
            let new: Vec<String> = s.forwarded()[before..]
                .iter()
                .map(|r| String::from_utf8_lossy(&[&r.head[..], &r.body[..]].concat()).into_owned())
                .collect();
            let got = status(&resp);
            assert!(
                got.is_some_and(|g| codes.contains(&g)),
                "{what}: expected {codes:?}, got {:?} {:?}; the origin received {new:?}",
                got,
                resp.as_ref().map(RawResponse::text)
            );
            if matches!(c.allowed, Allowed::Refused(_)) {
                conn.expect_closed().await;
            } else {
                // The request was framed well, so the connection may go on: if it does, its
                // next request must be read as exactly that (no bytes left behind).
                let next = format!("GET {SENTINEL}/next HTTP/1.1\r\nhost: {HOST}\r\n\r\n");
                if let Some(r) = conn.exchange(next.as_bytes()).await {
                    assert_eq!(
                        (r.status, r.text()),
                        (200, format!("raw GET {SENTINEL}/next")),
                        "{what}: the next request on the connection"
                    );
                }
            }
            assert_no_new_request(s, &what, before).await;
        }
        Allowed::RefusedOrOneFraming | Allowed::RefusedOrOneFramingKeptOpen => {
            let got = status(&resp);
            assert!(
                matches!(got, Some(400) | Some(200)),
                "{what}: expected 400 or the origin's 200, got {resp:?}"
            );
            if matches!(c.allowed, Allowed::RefusedOrOneFramingKeptOpen) && got == Some(200) {
                // The hidden GET /admin is then the next request: the gateway answers it.
                if let Some(next) = conn.response().await {
                    assert_eq!(
                        (next.status, next.text().as_str()),
                        (403, "forbidden"),
                        "{what}: the request after the body"
                    );
                }
                conn.shutdown().await;
            }
            conn.expect_closed().await;
            s.barrier().await;
            let new = s.forwarded()[before..].to_vec();
            if got == Some(400) {
                assert_eq!(new, vec![], "{what}: refused, yet forwarded");
            } else {
                assert_eq!(new.len(), 1, "{what}: origin received {new:#?}");
                let r = &new[0];
                let cl = r.values("content-length");
                let te = r.values("transfer-encoding");
                assert!(
                    cl.len() + te.len() <= 1
                        && te.iter().all(|t| t == "chunked")
                        && cl
                            .iter()
                            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit())),
                    "{what}: two framings reached the origin: {:?}",
                    String::from_utf8_lossy(&r.head)
                );
            }
            assert!(
                !s.forwarded().iter().any(|r| is_admin(&r.request_line())),
                "{what}: the smuggled request reached the origin"
            );
            assert_eq!(s.leftovers(), Vec::<String>::new(), "{what}");
        }
    }
}

/// Whether a request line asks for the `/admin` route (which the gateway answers itself).
fn is_admin(request_line: &str) -> bool {
    request_line.split(' ').nth(1).is_some_and(|target| {
        target == "/admin" || target.starts_with("/admin/") || target.starts_with("/admin?")
    })
}

/// Runs every case, then fails with the list of those that failed, so one run reports
/// them all.
async fn run_cases(s: &Setup, cases: &[Case]) {
    let mut failed = Vec::new();
    for c in cases {
        if let Err(panic) = AssertUnwindSafe(check(s, c)).catch_unwind().await {
            failed.push(panic_text(&panic));
        }
    }
    assert!(
        failed.is_empty(),
        "{} case(s) failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic".to_owned())
}

async fn assert_no_new_request(s: &Setup, what: &str, before: usize) {
    s.barrier().await;
    let new = s.forwarded()[before..].to_vec();
    assert_eq!(new, vec![], "{what}: forwarded");
    assert_eq!(s.leftovers(), Vec::<String>::new(), "{what}");
}

fn smuggle(line: &str, lines: &[&str], body: &str) -> Vec<u8> {
    request(line, lines, &format!("{body}{SMUGGLED}"))
}

/// CL.TE and TE.CL (RFC 9112 §6.1, §6.3: Transfer-Encoding overrides Content-Length, the
/// message "ought to be handled as an error", and a forwarding intermediary must remove
/// the Content-Length and close the connection after), TE.TE obfuscation (§6.1: chunked
/// must be final and only once; §5.1: no whitespace before the colon), and Content-Length
/// abuse (§6.3 item 5, RFC 9110 §8.6: `1*DIGIT`, differing duplicates are unrecoverable).
#[tokio::test(flavor = "multi_thread")]
async fn framing_conflicts_are_refused_or_framed_once() {
    let s = Setup::new(1, false).await;
    let h = "host: a.test";
    use Allowed::*;
    let cases = [
        case(
            "CL.TE",
            "RFC 9112 §6.3 (3)",
            &smuggle(
                "POST / HTTP/1.1",
                &[h, "content-length: 5", "transfer-encoding: chunked"],
                "0\r\n\r\n",
            ),
            RefusedOrOneFraming,
        ),
        case(
            "TE.CL",
            "RFC 9112 §6.3 (3)",
            &request(
                "POST / HTTP/1.1",
                &[h, "transfer-encoding: chunked", "content-length: 4"],
                &format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len()),
            ),
            RefusedOrOneFraming,
        ),
        case(
            "TE: xchunked",
            "RFC 9112 §6.3 (4)",
            &smuggle(
                "POST / HTTP/1.1",
                &[h, "transfer-encoding: xchunked", "content-length: 5"],
                "0\r\n\r\n",
            ),
            Refused(400),
        ),
        case(
            "TE with a space before the colon",
            "RFC 9112 §5.1",
            &smuggle(
                "POST / HTTP/1.1",
                &[h, "transfer-encoding : chunked", "content-length: 5"],
                "0\r\n\r\n",
            ),
            Refused(400),
        ),
        case(
            "TE: chunked, identity",
            "RFC 9112 §6.3 (4)",
            &smuggle(
                "POST / HTTP/1.1",
                &[h, "transfer-encoding: chunked, identity"],
                "0\r\n\r\n",
            ),
            Refused(400),
        ),
        case(
            "TE: chunked then TE: identity",
            "RFC 9112 §6.3 (4)",
            &smuggle(
                "POST / HTTP/1.1",
                &[
                    h,
                    "transfer-encoding: chunked",
                    "transfer-encoding: identity",
                ],
                "0\r\n\r\n",
            ),
            Refused(400),
        ),
        case(
            "TE:<tab>chunked beside CL",
            "RFC 9112 §5.1 (OWS), §6.3 (3)",
            &smuggle(
                "POST / HTTP/1.1",
                &[h, "content-length: 5", "transfer-encoding:\tchunked"],
                "0\r\n\r\n",
            ),
            RefusedOrOneFraming,
        ),
        case(
            "TE: chunked twice",
            "RFC 9112 §7 (chunked only once)",
            &smuggle(
                "POST / HTTP/1.1",
                &[
                    h,
                    "transfer-encoding: chunked",
                    "transfer-encoding: chunked",
                ],
                "0\r\n\r\n",
            ),
            RefusedOrOneFramingKeptOpen,
        ),
        case(
            "TE on HTTP/1.0",
            "RFC 9112 §6.1 (faulty framing, close after)",
            &smuggle(
                "POST / HTTP/1.0",
                &[h, "transfer-encoding: chunked", "content-length: 5"],
                "0\r\n\r\n",
            ),
            RefusedOrOneFraming,
        ),
        case(
            "two different Content-Lengths",
            "RFC 9112 §6.3 (5)",
            &smuggle(
                "POST / HTTP/1.1",
                &[h, "content-length: 5", "content-length: 6"],
                "hello",
            ),
            Refused(400),
        ),
        case(
            "Content-Length: +5",
            "RFC 9110 §8.6",
            &smuggle("POST / HTTP/1.1", &[h, "content-length: +5"], "hello"),
            Refused(400),
        ),
        case(
            "Content-Length: -1",
            "RFC 9110 §8.6",
            &smuggle("POST / HTTP/1.1", &[h, "content-length: -1"], "hello"),
            Refused(400),
        ),
        case(
            "Content-Length: 5 5",
            "RFC 9110 §8.6",
            &smuggle("POST / HTTP/1.1", &[h, "content-length: 5 5"], "hello"),
            Refused(400),
        ),
        case(
            "Content-Length: 5, 5",
            "RFC 9110 §8.6 (reject, or replace with one valid value)",
            &smuggle("POST / HTTP/1.1", &[h, "content-length: 5, 5"], "hello"),
            RefusedOrOneFramingKeptOpen,
        ),
        case(
            "Content-Length: 0x5",
            "RFC 9110 §8.6",
            &smuggle("POST / HTTP/1.1", &[h, "content-length: 0x5"], "hello"),
            Refused(400),
        ),
        case(
            "huge Content-Length",
            "RFC 9112 §6.3 (5), RFC 9110 §8.6 (overflow)",
            &smuggle(
                "POST / HTTP/1.1",
                &[h, "content-length: 99999999999999999999999"],
                "hello",
            ),
            Refused(400),
        ),
    ];
    run_cases(&s, &cases).await;
    s.assert_origins_healthy("framing conflicts").await;
}

/// Header-field syntax (RFC 9112 §5.1: no whitespace in or after the name; §5.2: obs-fold
/// in a request is refused with 400; RFC 9110 §5.5: CR, LF and NUL are never valid in a
/// value, §5.1: a name is a token).
#[tokio::test(flavor = "multi_thread")]
async fn header_syntax_errors_are_refused_before_anything_is_forwarded() {
    let s = Setup::new(1, false).await;
    let h = "host: a.test";
    use Allowed::*;
    let cases = [
        case(
            "obs-fold",
            "RFC 9112 §5.2",
            &request("GET / HTTP/1.1", &[h, "x-a: 1", " folded"], ""),
            Refused(400),
        ),
        case(
            "obs-fold continuing Transfer-Encoding",
            "RFC 9112 §5.2",
            &smuggle(
                "POST / HTTP/1.1",
                &[h, "content-length: 5", "transfer-encoding:", " chunked"],
                "0\r\n\r\n",
            ),
            Refused(400),
        ),
        case(
            "space in a field name",
            "RFC 9110 §5.1",
            &request("GET / HTTP/1.1", &[h, "x a: 1"], ""),
            Refused(400),
        ),
        case(
            "control character in a field name",
            "RFC 9110 §5.1",
            &request("GET / HTTP/1.1", &[h, "x\u{1}a: 1"], ""),
            Refused(400),
        ),
        case(
            "NUL in a value",
            "RFC 9110 §5.5",
            &request("GET / HTTP/1.1", &[h, "x-a: 1\u{0}2"], ""),
            Refused(400),
        ),
        case(
            "bare CR in a value",
            "RFC 9112 §2.2, RFC 9110 §5.5",
            &request("GET / HTTP/1.1", &[h, "x-a: 1\r2"], ""),
            Refused(400),
        ),
        case(
            "bare CR as a line ending",
            "RFC 9112 §2.2",
            b"GET / HTTP/1.1\r\nhost: a.test\rx-a: 1\r\n\r\n",
            Refused(400),
        ),
        case(
            "whitespace before the first header line",
            "RFC 9112 §2.2",
            &request("GET / HTTP/1.1", &[" x-a: 1", h], ""),
            Refused(400),
        ),
        case(
            "missing Host",
            "RFC 9112 §3.2",
            &request("GET / HTTP/1.1", &["x-a: 1"], ""),
            RefusedAnyOf(&[400]),
        ),
        case(
            "two Host lines",
            "RFC 9112 §3.2",
            &request("GET / HTTP/1.1", &[h, "host: b.test"], ""),
            RefusedAnyOf(&[400]),
        ),
        case(
            "two equal Host lines",
            "RFC 9112 §3.2",
            &request("GET / HTTP/1.1", &[h, h], ""),
            RefusedAnyOf(&[400]),
        ),
        case(
            "Host with userinfo",
            "RFC 9110 §4.2.4, §7.2",
            &request("GET / HTTP/1.1", &["host: evil@a.test"], ""),
            RefusedAnyOf(&[400]),
        ),
        case(
            "oversized head",
            "RFC 6585 §5",
            &request(
                "GET / HTTP/1.1",
                &[h, &format!("x-big: {}", "b".repeat(200 * 1024))],
                "",
            ),
            RefusedAnyOf(&[431]),
        ),
    ];
    run_cases(&s, &cases).await;
    s.assert_origins_healthy("header syntax errors").await;
}

/// RFC 9112 §2.2: a recipient may take a bare LF as a line ending. If the gateway does, the
/// origin must get the head re-written with CRLF (one interpretation on both sides);
/// otherwise 400 and nothing forwarded.
#[tokio::test(flavor = "multi_thread")]
async fn bare_lf_line_endings_are_refused_or_normalised() {
    let s = Setup::new(1, false).await;
    let before = s.forwarded().len();
    let (resp, _) = s
        .send(b"GET /lf HTTP/1.1\nhost: a.test\nx-a: 1\r\n\n")
        .await;
    match status(&resp) {
        Some(400) => assert_no_new_request(&s, "bare LF", before).await,
        Some(200) => {
            let one = s.the_one_forwarded("bare LF").await;
            assert_eq!(one.request_line(), "GET /lf HTTP/1.1");
            assert_eq!(one.header_lines(), rewritten("1.1", &["x-a: 1"]));
            assert!(!one.head.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
        }
        _ => panic!("bare LF: {resp:?}"),
    }
}

/// Request-target forms (RFC 9112 §3.2): the absolute form's authority wins over `Host`
/// (§3.2.2) and can never reach another site's origin; the authority form is only for
/// CONNECT (§3.2.3), which the gateway refuses (405, RFC 9110 §9.3.6: not a forward proxy).
#[tokio::test(flavor = "multi_thread")]
async fn request_target_forms_never_reach_the_wrong_site() {
    let s = Setup::new(1, false).await;
    use Allowed::*;
    let cases = [
        case(
            "absolute form for another host",
            "RFC 9112 §3.2.2",
            &request("GET http://other.example/ HTTP/1.1", &["host: a.test"], ""),
            RefusedAnyOf(&[400, 421]),
        ),
        case(
            "absolute form with userinfo",
            "RFC 9110 §4.2.4",
            &request("GET https://evil@a.test/ HTTP/1.1", &["host: a.test"], ""),
            RefusedAnyOf(&[400]),
        ),
        case(
            "authority form with GET",
            "RFC 9112 §3.2.3",
            &request("GET a.test:443 HTTP/1.1", &["host: a.test"], ""),
            RefusedAnyOf(&[400]),
        ),
        case(
            "CONNECT",
            "RFC 9110 §9.3.6",
            &request("CONNECT a.test:443 HTTP/1.1", &["host: a.test:443"], ""),
            RefusedAnyOf(&[405]),
        ),
    ];
    run_cases(&s, &cases).await;

    // The absolute form naming this site wins over a Host naming another: forwarded to
    // this site, in origin form, with the authority as Host.
    let (resp, _) = s
        .send(&request(
            "GET https://a.test/abs?q=1 HTTP/1.1",
            &["host: other.example"],
            "",
        ))
        .await;
    assert_eq!(status(&resp), Some(200), "{resp:?}");
    let one = s.the_one_forwarded("absolute form").await;
    assert_eq!(one.request_line(), "GET /abs?q=1 HTTP/1.1");
    assert_eq!(one.header_lines(), rewritten("1.1", &[]));
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) never reach the origin, including those `Connection`
/// names; `Proxy-Authorization` is for this hop only (§11.7.2); forwarding headers from an
/// untrusted client are replaced (RFC 7239 §8.1), not appended to.
#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_and_forwarding_headers_are_rewritten() {
    let s = Setup::new(1, false).await;
    let cases: [(&[&str], &[&str]); 3] = [
        (
            &["connection: X-Secret", "x-secret: 1", "x-kept: 1"],
            &["x-kept: 1"],
        ),
        (
            &[
                "proxy-authorization: Basic eDp5",
                "keep-alive: timeout=5",
                "proxy-connection: keep-alive",
                "trailer: x-sum",
            ],
            &[],
        ),
        (
            &[
                "x-forwarded-for: 6.6.6.6",
                "x-forwarded-host: evil.example",
                "x-forwarded-proto: http",
                "forwarded: for=6.6.6.6;host=evil.example",
            ],
            &[],
        ),
    ];
    for (sent, expected) in cases {
        s.assert_forwarded_as("/hop", sent, expected).await;
    }
}

// --- HTTP/2 → HTTP/1.1 downgrade ------------------------------------------------------------

/// RFC 9113 §8.2.1 (names are lowercase, no CR/LF/NUL in values), §8.2.2
/// (connection-specific fields, TE other than trailers), §8.3.1 (`:path` starts with `/`
/// or is `*`; `:method` is a token): a malformed request is a stream error
/// (PROTOCOL_ERROR) or a 400, and nothing that could be read as a second request reaches
/// the HTTP/1.1 origin; here, nothing at all.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_h2_requests_are_never_forwarded() {
    let s = Setup::new(1, false).await;
    type Fields = Vec<(&'static [u8], &'static [u8])>;
    let with = |extra: &[(&'static [u8], &'static [u8])]| -> Fields {
        let mut f = h2_get(b"/h2");
        f.extend_from_slice(extra);
        f
    };
    let cases: Vec<(&str, Fields)> = vec![
        (
            "transfer-encoding field",
            with(&[(b"transfer-encoding", b"chunked")]),
        ),
        ("connection field", with(&[(b"connection", b"keep-alive")])),
        ("upgrade field", with(&[(b"upgrade", b"h2c")])),
        ("keep-alive field", with(&[(b"keep-alive", b"timeout=5")])),
        ("te: gzip", with(&[(b"te", b"gzip")])),
        ("CRLF in a value", with(&[(b"x-a", b"1\r\nx-smuggled: 1")])),
        ("LF in a value", with(&[(b"x-a", b"1\nx-smuggled: 1")])),
        ("NUL in a value", with(&[(b"x-a", b"1\x002")])),
        ("uppercase name", with(&[(b"X-Upper", b"1")])),
        (
            "request smuggled in :path",
            vec![
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", b"a.test"),
                (
                    b":path",
                    b"/ HTTP/1.1\r\nhost: a.test\r\n\r\nGET /admin HTTP/1.1",
                ),
            ],
        ),
        (
            ":path without a leading slash",
            vec![
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", b"a.test"),
                (b":path", b"h2"),
            ],
        ),
        (
            ":method with a space",
            vec![
                (b":method", b"GET /admin"),
                (b":scheme", b"https"),
                (b":authority", b"a.test"),
                (b":path", b"/h2"),
            ],
        ),
    ];
    let mut failed = Vec::new();
    for (name, fields) in cases {
        let one = async {
            let mut c = s.h2().await;
            c.headers(1, &fields, true).await;
            let outcome = c.outcome(1).await;
            let before = s.forwarded().len();
            s.barrier().await;
            let new = s.forwarded()[before..].to_vec();
            assert!(
                matches!(
                    outcome,
                    H2Outcome::Reset(PROTOCOL_ERROR)
                        | H2Outcome::Status(400)
                        | H2Outcome::GoAway(PROTOCOL_ERROR)
                ),
                "{name}: {outcome:?}; the origin received {:?}",
                new.iter()
                    .map(|r| String::from_utf8_lossy(&r.head).into_owned())
                    .collect::<Vec<_>>()
            );
            s.assert_nothing_forwarded(name).await;
        };
        if let Err(panic) = AssertUnwindSafe(one).catch_unwind().await {
            failed.push(panic_text(&panic));
        }
    }
    assert!(
        failed.is_empty(),
        "{} case(s) failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    s.assert_origins_healthy("malformed HTTP/2 requests").await;
}

/// RFC 9113 §8.3.1: a `host` field beside `:authority` must name the same; a gateway that
/// let it through would give the HTTP/1.1 origin a Host the routing never saw. Either the
/// request is refused, or the origin gets one `host: a.test`.
#[tokio::test(flavor = "multi_thread")]
async fn an_h2_host_field_never_overrides_the_authority() {
    let s = Setup::new(1, false).await;
    let mut c = s.h2().await;
    let mut fields = h2_get(b"/host");
    fields.push((b"host", b"evil.example"));
    c.headers(1, &fields, true).await;
    match c.outcome(1).await {
        H2Outcome::Status(200) => {
            let one = s.the_one_forwarded("host beside :authority").await;
            assert_eq!(one.header_lines(), rewritten("2", &[]));
        }
        H2Outcome::Status(400) | H2Outcome::Reset(PROTOCOL_ERROR) => {
            s.assert_nothing_forwarded("host beside :authority").await;
        }
        other => panic!("host beside :authority: {other:?}"),
    }
}

// --- Property: nothing a client sends hurts the origin's health ----------------------------

/// Valid and malformed requests the mutations start from.
fn corpus() -> Vec<Vec<u8>> {
    let h = "host: a.test";
    vec![
        request("GET / HTTP/1.1", &[h], ""),
        request("POST /p HTTP/1.1", &[h, "content-length: 5"], "hello"),
        request(
            "POST /p HTTP/1.1",
            &[h, "transfer-encoding: chunked"],
            "5\r\nhello\r\n0\r\n\r\n",
        ),
        smuggle(
            "POST / HTTP/1.1",
            &[h, "content-length: 5", "transfer-encoding: chunked"],
            "0\r\n\r\n",
        ),
        request(
            "POST /p HTTP/1.1",
            &[h, "transfer-encoding: chunked"],
            "zz\r\nhello\r\n0\r\n\r\n",
        ),
        request(
            "POST /p HTTP/1.1",
            &[h, "transfer-encoding: chunked"],
            "5\r\nhelloXX0\r\n\r\n",
        ),
        request("GET / HTTP/1.1", &[h, "x-a: 1", " folded"], ""),
        request("GET / HTTP/1.1", &H2C_UPGRADE, ""),
        request("GET / HTTP/1.1", &[h, "te: trailers", "te: gzip"], ""),
        request("GET / HTTP/1.1", &[h, "connection: x-a", "x-a: 1"], ""),
        [
            request("GET /1 HTTP/1.1", &[h], ""),
            request("GET /2 HTTP/1.1", &[h], ""),
        ]
        .concat(),
    ]
}

/// One random edit of `bytes`.
fn mutate(rng: &mut fastrand::Rng, bytes: &mut Vec<u8>) {
    const INTERESTING: &[u8] = b"\r\n \t:;,\x000123456789abcdefxX-+";
    if bytes.is_empty() {
        bytes.push(b'G');
    }
    let at = rng.usize(..bytes.len());
    match rng.u8(..6) {
        0 => bytes[at] = INTERESTING[rng.usize(..INTERESTING.len())],
        1 => bytes.insert(at, INTERESTING[rng.usize(..INTERESTING.len())]),
        2 => {
            let end = (at + rng.usize(1..8)).min(bytes.len());
            bytes.drain(at..end);
        }
        3 => {
            // Repeat a span (a line, a chunk size, a header).
            let end = (at + rng.usize(1..40)).min(bytes.len());
            let span = bytes[at..end].to_vec();
            bytes.splice(at..at, span);
        }
        4 => bytes.truncate(at.max(1)),
        _ => {
            let insert: &[u8] = match rng.u8(..4) {
                0 => b"transfer-encoding: chunked\r\n",
                1 => b"content-length: 3\r\n",
                2 => b"0\r\n\r\n",
                _ => SMUGGLED.as_bytes(),
            };
            bytes.splice(at..at, insert.iter().copied());
        }
    }
}

/// A seeded sequence of client byte streams (mutations of the corpus above), each sent on
/// its own connection whose writing side is then closed, against two servers with passive
/// health on: afterwards no server was ejected, no error was counted against any, and both
/// answer. `PORTCULLIS_ADVERSARIAL_SEED` replays a run.
#[tokio::test(flavor = "multi_thread")]
async fn no_client_byte_stream_hurts_the_origin_health() {
    let seed = std::env::var("PORTCULLIS_ADVERSARIAL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("adversarial property seed: {seed} (PORTCULLIS_ADVERSARIAL_SEED={seed} replays it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let s = Setup::new(2, true).await;
    let corpus = corpus();
    let started = Instant::now();
    let mut sent = 0;
    // The first streams after which an origin error was counted, to replay by hand.
    let mut culprits: Vec<String> = Vec::new();
    let mut errors = 0.0;
    while sent < 300 && started.elapsed() < Duration::from_secs(15) {
        let mut bytes = corpus[rng.usize(..corpus.len())].clone();
        for _ in 0..rng.usize(0..4) {
            mutate(&mut rng, &mut bytes);
        }
        let mut c = s.h1().await;
        c.write(&bytes).await;
        c.shutdown().await;
        // Whatever the answers, the connection must end (the gateway may not hang on to
        // it past its limits), with well-formed responses only.
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while c.response().await.is_some() {}
        })
        .await;
        assert!(
            ended.is_ok(),
            "seed {seed}, stream {sent}: connection still open: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        let now = metric(&s.gw.scrape().await, ERRORS, &[]);
        if now > errors && culprits.len() < 3 {
            culprits.push(format!(
                "stream {sent}: {:?}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        errors = now;
        sent += 1;
    }
    eprintln!("sent {sent} byte streams");
    for origin in &s.origins {
        origin.wait_leftovers_closed().await;
    }
    let health = s.health().await;
    for (url, up, errors, ejections) in health {
        assert_eq!(
            (up, errors, ejections),
            (1.0, 0.0, 0.0),
            "seed {seed}: origin server {url} (up, errors, ejections); errors were counted \
             after {culprits:#?}"
        );
    }
    assert!(
        !s.forwarded().iter().any(|r| is_admin(&r.request_line())),
        "seed {seed}: a request for /admin (answered by the gateway) reached the origin"
    );
    s.assert_origins_healthy(&format!("property, seed {seed}"))
        .await;
}
