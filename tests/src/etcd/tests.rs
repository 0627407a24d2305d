//! The harness's etcd and TCP proxy do what the clustering suites will rely on.

use std::time::Duration;

use super::*;
use crate::tcp_proxy::TcpProxy;

#[test]
fn base64_round_trips() {
    for s in ["", "a", "ab", "abc", "/portcullis/certs/shop.example.com"] {
        assert_eq!(unb64(&b64(s.as_bytes())).unwrap(), s.as_bytes(), "{s}");
    }
    assert_eq!(b64(b"abcd"), "YWJjZA==");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_member_keeps_its_data_across_a_kill_and_restart() {
    let mut etcd = TestEtcd::start(1).await;
    assert_eq!(etcd.get(0, "/t/k").await, None);
    assert_eq!(etcd.put(0, "/t/k", "v1").await, 200);
    assert_eq!(etcd.get(0, "/t/k").await.as_deref(), Some("v1"));
    etcd.kill(0);
    etcd.restart(0).await;
    assert_eq!(etcd.get(0, "/t/k").await.as_deref(), Some("v1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn three_members_keep_quorum_with_one_down_and_it_catches_up() {
    let mut etcd = TestEtcd::start(3).await;
    assert_eq!(etcd.endpoints().len(), 3);
    etcd.kill(1);
    // If m1 led, the others elect a new leader first (503 meanwhile).
    crate::wait::until(Duration::from_secs(15), "a write with m1 down", || async {
        (etcd.put(0, "/t/k", "written while m1 was down").await == 200).then_some(())
    })
    .await;
    assert_eq!(
        etcd.get(2, "/t/k").await.as_deref(),
        Some("written while m1 was down")
    );
    etcd.restart(1).await;
    let seen = crate::wait::until(Duration::from_secs(10), "m1 caught up", || async {
        etcd.get(1, "/t/k").await
    })
    .await;
    assert_eq!(seen, "written while m1 was down");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_through_the_proxy_holds_requests_until_healed() {
    let etcd = TestEtcd::start(1).await;
    let proxy = TcpProxy::start(etcd.client_addr(0)).await;
    let through = |body: &'static str| {
        let addr = proxy.addr;
        async move {
            crate::plain::exchange(
                addr,
                &format!(
                    "POST /v3/kv/range HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                ),
            )
            .await
        }
    };
    let key = "{\"key\":\"L3Q=\"}";
    assert!(through(key).await.starts_with("HTTP/1.1 200"));
    proxy.partition();
    let held = tokio::time::timeout(Duration::from_millis(500), through(key)).await;
    assert!(
        held.is_err(),
        "a request through the partition is answered: {held:?}"
    );
    proxy.heal();
    assert!(through(key).await.starts_with("HTTP/1.1 200"));
    assert_eq!(proxy.accepted(), 3);
}
