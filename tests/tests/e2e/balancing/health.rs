//! Servers taken out and brought back: active checks mark a server killed under load down
//! and up again once restarted on its port, with no request lost; passive ejection takes
//! out servers failing real requests, and with every server out clients get a fast 503.

use std::time::{Duration, Instant};

use http::StatusCode;
use portcullis_tests::scrape::metric;
use portcullis_tests::{TestCa, TestOrigin, wait};

use super::load::{Load, Outcome};
use super::misbehaving::{Behaviour, Custom};
use super::{
    CHECKS, EJECTIONS, ERRORS, REQUESTS, RETRIES, UP, answered_by, connect, dead_url, equal,
    gateway, get, servers, three_origins, url,
};

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
    assert_eq!(up(&gw.scrape().await), 1.0);

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
        || async { (up(&gw.scrape().await) == 0.0).then_some(()) },
    )
    .await;
    load.set_phase(MARKED_DOWN);
    let page = gw.scrape().await;
    assert!(metric(&page, CHECKS, &[("origin", victim), ("result", "failed")]) >= 1.0);

    // Marked down, it gets no more requests: the gateway's own count stands still.
    wait::until(Duration::from_secs(10), "load while it is down", || async {
        (load.count(|o| o.phase == MARKED_DOWN) >= 50).then_some(())
    })
    .await;
    let sent_while_down = metric(&gw.scrape().await, REQUESTS, &[("origin", victim)]);
    wait::until(
        Duration::from_secs(10),
        "more load while it is down",
        || async { (load.count(|o| o.phase == MARKED_DOWN) >= 250).then_some(()) },
    )
    .await;
    assert_eq!(
        metric(&gw.scrape().await, REQUESTS, &[("origin", victim)]),
        sent_while_down,
        "requests went to a server marked down"
    );

    origins[1] = TestOrigin::http_on(victim_addr).await;
    load.set_phase(RESTARTED);
    wait::until(
        Duration::from_secs(5),
        "the server to be marked up",
        || async { (up(&gw.scrape().await) == 1.0).then_some(()) },
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

#[tokio::test]
async fn servers_failing_real_requests_are_ejected() {
    let ca = TestCa::new("balancing CA");
    let good = TestOrigin::http().await;
    let bad = Custom::start(Behaviour::Status(502)).await;
    let dead = &dead_url().await;
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
    let page = gw.scrape().await;
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
    let dead = &dead_url().await;
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
    let page = gw.scrape().await;
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
