//! least_requests keeps new requests away from a server that holds requests, whether it
//! holds their answers back or is still streaming them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use portcullis_tests::{TestCa, TestOrigin, collect, empty, wait, within};

use super::misbehaving::{Behaviour, Custom};
use super::{HOST, answered_by, connect, gateway, get, servers, url};

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
