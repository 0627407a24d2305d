//! SIGTERM drains: the gateway stops accepting at once, lets the request in flight finish,
//! then exits 0.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use portcullis_tests::{GatewayBuilder, GatewayProcess, TestCa, TestOrigin, collect, wait};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_the_request_in_flight_refuses_new_connections_and_exits_0() {
    let ca = TestCa::new("drain CA");
    let origin = TestOrigin::http().await;
    let b = GatewayBuilder::new();
    let (cert, key) = ca.leaf(&["d.test"]).write(b.dir(), "d");
    let b = b.site(&format!(
        "{{hosts: [d.test], tls: {{cert: {}, key: {}}}, origin: 'http://{}'}}",
        cert.display(),
        key.display(),
        origin.addr
    ));
    let config = b.write_config();
    let mut gw = GatewayProcess::spawn(
        Path::new(BIN),
        &["run", "--config", config.to_str().unwrap()],
    );

    let client = portcullis_tests::TestClient::new(gw.https, &ca.root_der);
    let mut conn = client.connect("d.test", &["http/1.1"]).await.unwrap();
    let req = conn
        .request("d.test", "/slow/1500")
        .body(portcullis_tests::empty())
        .unwrap();
    let in_flight = tokio::spawn(async move { collect(conn.send(req).await.unwrap()).await });
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

    let signalled = Instant::now();
    gw.signal("TERM");

    // New connections are refused while the slow request is still being answered.
    let https = gw.https;
    wait::until(
        Duration::from_secs(1),
        "new connections to be refused",
        || async move {
            match tokio::net::TcpStream::connect(https).await {
                // Dropped at once so a probe that got in does not hold up the drain.
                Ok(_) => None,
                Err(e) => (e.kind() == std::io::ErrorKind::ConnectionRefused).then_some(()),
            }
        },
    )
    .await;
    assert!(
        !in_flight.is_finished(),
        "the listener closed only after the request finished ({:?} after SIGTERM)",
        signalled.elapsed()
    );

    let resp = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "slow done");

    let status = gw.wait(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        signalled.elapsed()
    );
    let logs = gw.logs();
    assert!(
        logs.iter().any(|l| l.contains("all connections drained")),
        "logs:\n{}",
        logs.join("\n")
    );
}
