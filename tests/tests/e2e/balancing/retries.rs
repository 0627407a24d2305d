//! Which failures are retried (a refused connection, with the whole body; never a request
//! whose body was sent) and the retry budget.

use http::{Method, StatusCode};
use portcullis_tests::scrape::metric;
use portcullis_tests::{TestCa, TestOrigin, bytes};

use super::misbehaving::{Behaviour, Custom};
use super::{
    ERRORS, REQUESTS, RETRIES, answered_by, connect, dead_url, gateway, get, send, servers, url,
};

#[tokio::test]
async fn a_post_is_retried_after_a_refused_connection_with_its_whole_body() {
    let ca = TestCa::new("balancing CA");
    let good = TestOrigin::http().await;
    let dead = &dead_url().await;
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
    let page = gw.scrape().await;
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
    let page = gw.scrape().await;
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
    let page = gw.scrape().await;
    assert_eq!(
        metric(&page, RETRIES, &[("origin", origin)]),
        reset_gets as f64
    );
}

#[tokio::test]
async fn retries_stop_when_the_budget_is_spent() {
    let ca = TestCa::new("balancing CA");
    let good = TestOrigin::http().await;
    let dead = &dead_url().await;
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
    let page = gw.scrape().await;
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
