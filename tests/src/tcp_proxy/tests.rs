//! Round-robin: connections spread in turn, a refusing target skipped, targets replaced.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::TcpProxy;

/// A server that writes `name` to every connection and closes it.
async fn named(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let _ = tcp.write_all(name.as_bytes()).await;
        }
    });
    (addr, task)
}

async fn who(proxy: &TcpProxy) -> String {
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let mut out = String::new();
    crate::wait::within("an answer through the proxy", tcp.read_to_string(&mut out))
        .await
        .unwrap();
    out
}

#[tokio::test]
async fn connections_go_round_robin_and_skip_a_target_that_refuses() {
    let (a, _ta) = named("a").await;
    let (b, tb) = named("b").await;
    let (c, _tc) = named("c").await;
    let proxy = TcpProxy::round_robin(vec![a, b, c]).await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(who(&proxy).await);
    }
    assert_eq!(seen, ["a", "b", "c", "a", "b", "c"]);
    assert_eq!(
        [
            proxy.relayed_to(a),
            proxy.relayed_to(b),
            proxy.relayed_to(c)
        ],
        [2, 2, 2]
    );

    // b goes away: its turn goes to the next target.
    tb.abort();
    let _ = tb.await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(who(&proxy).await);
    }
    assert_eq!(seen, ["a", "c", "c"]);
    assert_eq!(proxy.relayed_to(b), 2);

    proxy.set_targets(vec![a]);
    assert_eq!(who(&proxy).await, "a");
    assert_eq!(proxy.accepted(), 10);
}

#[tokio::test]
async fn with_no_target_a_connection_is_closed() {
    let proxy = TcpProxy::round_robin(Vec::new()).await;
    assert_eq!(who(&proxy).await, "");
    let (a, _ta) = named("a").await;
    proxy.set_targets(vec![a]);
    assert_eq!(who(&proxy).await, "a");
}
