//! Hashing keeps a key (header, cookie, client address) on one server, and a removed
//! server moves only its own keys.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use portcullis_tests::scrape::metric;
use portcullis_tests::{Resp, TestCa, TestClient, TestGateway, connect_from, within};

use super::{HOST, UP, answered_by, connect, equal, gateway, get, tally, three_origins};

/// For each key, the port that answered a GET carrying `header(key)`, sent over four
/// new connections.
async fn route_keys(
    client: &TestClient,
    keys: &[String],
    header: fn(&str) -> (&'static str, String),
) -> HashMap<String, u16> {
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let client = client.clone();
            let keys: Vec<String> = keys.iter().skip(w).step_by(4).cloned().collect();
            tokio::spawn(async move {
                let mut conn = connect(&client).await;
                let mut out = Vec::new();
                for key in keys {
                    let (name, value) = header(&key);
                    let resp = get(&mut conn, "/hash", &[(name, value.as_str())]).await;
                    assert_eq!(resp.status, 200, "{key}: {}", resp.text());
                    out.push((key, answered_by(&resp)));
                }
                out
            })
        })
        .collect();
    let mut routes = HashMap::new();
    for w in workers {
        routes.extend(within("hashed requests", w).await.unwrap());
    }
    routes
}

/// Rewrites the config file with the origin's `servers` cut to the first `keep`, and
/// reloads.
async fn keep_servers(gw: &TestGateway, keep: usize) {
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let list = config["sites"][0]["origin"]["servers"]
        .as_sequence_mut()
        .unwrap();
    list.truncate(keep);
    // Written beside and renamed, so the file watcher never reads half a file.
    let tmp = gw.config_path.with_extension("yaml.tmp");
    std::fs::write(&tmp, serde_yaml::to_string(&config).unwrap()).unwrap();
    std::fs::rename(&tmp, &gw.config_path).unwrap();
    gw.reload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hashed_header_sticks_and_removing_a_server_moves_only_its_keys() {
    let ca = TestCa::new("balancing CA");
    let origins = three_origins().await;
    let ports: Vec<u16> = origins.iter().map(|o| o.addr.port()).collect();
    let list = equal(&origins);
    let gw = gateway(
        &ca,
        &format!("{{servers: {list}, balance: hash, hash: {{key: header, name: X-User}}}}"),
    )
    .await;
    let client = gw.client(&ca.root_der);
    let keys: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    let x_user = |k: &str| ("x-user", k.to_owned());

    let before = route_keys(&client, &keys, x_user).await;
    let again = route_keys(&client, &keys, x_user).await;
    assert_eq!(before, again, "a key changed servers with nothing changed");
    let shares = tally(before.values().copied());
    for p in &ports {
        // 100 each is the expectation (one standard deviation is about 8).
        assert!(shares.get(p).copied().unwrap_or(0) >= 50, "{shares:?}");
    }

    // Remove the third server.
    keep_servers(&gw, 2).await;
    let after = route_keys(&client, &keys, x_user).await;
    let removed = ports[2];
    let mut moved_to = BTreeMap::<u16, usize>::new();
    for key in &keys {
        let (was, now) = (before[key], after[key]);
        if was == removed {
            assert_ne!(now, removed, "{key} still goes to the removed server");
            *moved_to.entry(now).or_default() += 1;
        } else {
            assert_eq!(now, was, "{key} moved off a server that stayed");
        }
    }
    let moved: usize = moved_to.values().sum();
    assert_eq!(moved, shares[&removed]);
    assert!(
        (60..=140).contains(&moved),
        "{moved} of 300 keys moved; about a third should"
    );
    // The removed server's keys spread over both that remain (50 each expected).
    for p in &ports[..2] {
        assert!(
            moved_to.get(p).copied().unwrap_or(0) >= 20,
            "moved keys went {moved_to:?}"
        );
    }
    // The removed server's series are gone from /metrics; the others stay.
    let page = gw.scrape().await;
    let server_url = |port: u16| format!("http://127.0.0.1:{port}");
    assert!(
        !page.contains(&format!("origin=\"{}\"", server_url(removed))),
        "series of the removed server remain:\n{page}"
    );
    assert_eq!(metric(&page, UP, &[("origin", &server_url(ports[0]))]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hashed_cookie_sticks_and_requests_without_it_are_shared() {
    let ca = TestCa::new("balancing CA");
    let origins = three_origins().await;
    let list = equal(&origins);
    let gw = gateway(
        &ca,
        &format!("{{servers: {list}, balance: hash, hash: {{key: cookie, name: session}}}}"),
    )
    .await;
    let client = gw.client(&ca.root_der);
    let keys: Vec<String> = (0..90).map(|i| format!("s{i}")).collect();

    // The cookie among others, then alone: only its value counts.
    let among = route_keys(&client, &keys, |k| {
        ("cookie", format!("theme=dark; session={k}; lang=en"))
    })
    .await;
    let alone = route_keys(&client, &keys, |k| ("cookie", format!("session={k}"))).await;
    assert_eq!(among, alone);
    let shares = tally(among.values().copied());
    for o in &origins {
        // 30 each is the expectation (one standard deviation is about 4.5).
        assert!(
            shares.get(&o.addr.port()).copied().unwrap_or(0) >= 10,
            "{shares:?}"
        );
    }

    // Without the cookie (or with other cookies only), requests are shared round robin.
    let mut conn = connect(&client).await;
    let mut ports = Vec::new();
    for i in 0..30 {
        let cookie = [("cookie", "theme=dark")];
        let headers: &[(&str, &str)] = if i % 2 == 0 { &cookie } else { &[] };
        ports.push(answered_by(&get(&mut conn, "/no-key", headers).await));
    }
    let counts = tally(ports);
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [10, 10, 10],
        "{counts:?}"
    );
}

/// GET `/ip` over a new connection made from `source` (any 127.0.0.0/8 address is the
/// loopback interface on Linux).
async fn get_from(gw: &TestGateway, ca: &TestCa, source: IpAddr) -> Resp {
    let tcp = within("TCP connect", connect_from(source, gw.https)).await;
    let mut conn = within(
        "TLS handshake",
        gw.client(&ca.root_der)
            .connect_over(tcp, HOST, &["http/1.1"]),
    )
    .await
    .unwrap();
    within("GET /ip", conn.get(HOST, "/ip")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hashed_client_ip_sticks() {
    let ca = TestCa::new("balancing CA");
    let origins = three_origins().await;
    let list = equal(&origins);
    let gw = gateway(
        &ca,
        &format!("{{servers: {list}, balance: hash, hash: {{key: client_ip}}}}"),
    )
    .await;

    let mut chosen = BTreeMap::new();
    for last in 10..40 {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
        let mut ports = Vec::new();
        for _ in 0..3 {
            let resp = get_from(&gw, &ca, ip).await;
            assert_eq!(resp.status, 200, "{}", resp.text());
            ports.push(answered_by(&resp));
        }
        assert!(
            ports.iter().all(|p| *p == ports[0]),
            "{ip} went to {ports:?}"
        );
        chosen.insert(ip, ports[0]);
    }
    // Thirty addresses use every server (missing one has odds of about 1 in 60 000).
    let shares = tally(chosen.values().copied());
    assert_eq!(shares.len(), 3, "{shares:?}");
}
