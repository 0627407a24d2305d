//! Origins with several servers, against real origins: round robin follows the weights and
//! random_two shares evenly (`spread`); least_requests keeps away from a server that holds
//! requests (`least_requests`); hashing keeps a key on one server and a removed server moves
//! only its own keys (`hashing`); a server killed under load costs no request, is marked
//! down by active checks and up again once restarted on its port, passive ejection and the
//! 503 when every server is out (`health`); which failures are retried (a POST whose body
//! was sent never is) and the retry budget (`retries`); a sticky cookie keeps a client on its
//! server (`sticky`). What they share is here; origins
//! that misbehave on purpose and load from several clients have modules of their own.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use http_body_util::BodyExt;
use portcullis_tests::{
    ClientBody, Conn, GatewayBuilder, Resp, TestCa, TestClient, TestGateway, TestOrigin, empty,
    within,
};

mod hashing;
mod health;
mod least_requests;
mod load;
mod misbehaving;
mod retries;
mod spread;
mod sticky;

const HOST: &str = "b.test";

const UP: &str = "portcullis_origin_server_up";
const REQUESTS: &str = "portcullis_origin_requests_total";
const ERRORS: &str = "portcullis_origin_errors_total";
const EJECTIONS: &str = "portcullis_origin_ejections_total";
const RETRIES: &str = "portcullis_origin_retries_total";
const CHECKS: &str = "portcullis_origin_health_checks_total";

/// Starts a gateway with one site, `b.test`, whose origin is the YAML mapping `origin`.
async fn gateway(ca: &TestCa, origin: &str) -> TestGateway {
    GatewayBuilder::new()
        .tls_site(ca, &[HOST], &format!("origin: {origin}"))
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

/// `http://` and a port on 127.0.0.1 that refuses connections.
async fn dead_url() -> String {
    format!("http://127.0.0.1:{}", portcullis_tests::closed_port().await)
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
