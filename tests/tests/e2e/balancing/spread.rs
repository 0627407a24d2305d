//! Round robin follows the weights smoothly; random_two shares equal servers evenly.

use std::collections::BTreeMap;

use portcullis_tests::{TestCa, TestOrigin};

use super::load::Load;
use super::{answered_by, connect, equal, gateway, get, servers, tally, three_origins, url};

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
