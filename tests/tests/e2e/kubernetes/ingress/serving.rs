//! What an Ingress says is what is served: the pod endpoints, the certificate from its
//! Secret, each pathType; and changes (a rotated Secret, an endpoint not ready, a class
//! switched, a new route) are served without dropping open connections.

use futures_util::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use portcullis_tests::TestOrigin;
use portcullis_tests::scrape::metric;
use portcullis_tests::wait::{until, within};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::{CONVERGE, Cluster, ingress, origin_port, try_get, until_served_by};

#[tokio::test(flavor = "multi_thread")]
async fn an_ingress_is_served_from_its_pod_endpoints_with_the_certificate_of_its_secret() {
    let cluster = Cluster::new().await;
    let pod = TestOrigin::http().await;
    let leaf = cluster.ca.leaf(&["shop.test"]);
    cluster.service("default", "shop", pod.addr.port(), &[("127.0.0.1", true)]);
    cluster
        .api
        .create::<Secret>(&cluster.tls_secret("default", "shop-tls", &leaf));
    cluster.api.create::<Ingress>(&ingress(
        "default",
        "shop",
        "shop.test",
        Some("shop-tls"),
        &[("/", "Prefix", "shop")],
    ));
    // The first requests fail: the watchers back off, so the first sync is not instant.
    cluster.api.fail_next(10, 500);
    let gw = cluster.controller(&[]).await;
    let (status, body) = gw.readyz().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("waiting for the first full sync"), "{body}");
    gw.wait_ready().await;

    let client = gw.client(&cluster.ca);
    let mut conn = client.connect("shop.test", &["http/1.1"]).await.unwrap();
    assert_eq!(conn.peer_leaf, leaf.cert_der, "the Secret's certificate");
    let resp = conn.get("shop.test", "/cart").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "ok GET /cart");
    assert_eq!(origin_port(&resp), Some(pod.addr.port()));
    assert_eq!(pod.last().path, "/cart");

    let page = gw.scrape().await;
    assert_eq!(metric(&page, "portcullis_kubernetes_api_up", &[]), 1.0);
    assert!(
        metric(
            &page,
            "portcullis_kubernetes_syncs_total",
            &[("result", "success")]
        ) >= 1.0
    );
    assert!(
        metric(
            &page,
            "portcullis_kubernetes_last_sync_timestamp_seconds",
            &[]
        ) > 0.0
    );
    assert!(gw.stop().await, "drained");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_path_type_matches_as_ingress_v1_says() {
    let cluster = Cluster::new().await;
    let (exact, prefix, implementation) = (
        TestOrigin::http().await,
        TestOrigin::http().await,
        TestOrigin::http().await,
    );
    for (name, o) in [
        ("exact", &exact),
        ("prefix", &prefix),
        ("impl", &implementation),
    ] {
        cluster.service("default", name, o.addr.port(), &[("127.0.0.1", true)]);
    }
    let leaf = cluster.ca.leaf(&["paths.test"]);
    cluster
        .api
        .create::<Secret>(&cluster.tls_secret("default", "paths-tls", &leaf));
    cluster.api.create::<Ingress>(&ingress(
        "default",
        "paths",
        "paths.test",
        Some("paths-tls"),
        &[
            ("/foo", "Exact", "exact"),
            ("/foo/", "Prefix", "prefix"),
            ("/impl", "ImplementationSpecific", "impl"),
        ],
    ));
    let gw = cluster.controller(&[]).await;
    gw.wait_ready().await;
    let client = gw.client(&cluster.ca);
    let at = |o: &TestOrigin| Some(o.addr.port());
    for (path, want) in [
        // Exact: the whole path, case-sensitive; it beats the Prefix of the same path.
        ("/foo", at(&exact)),
        // Prefix `/foo/` is `/foo` element-wise: the trailing slash is ignored.
        ("/foo/", at(&prefix)),
        ("/foo/bar", at(&prefix)),
        ("/FOO", None),
        ("/foobar", None),
        // ImplementationSpecific is Prefix.
        ("/impl", at(&implementation)),
        ("/impl/x/y", at(&implementation)),
        ("/implx", None),
        ("/", None),
    ] {
        let resp = try_get(&client, "paths.test", path).await.unwrap();
        match want {
            Some(port) => {
                assert_eq!(resp.status, 200, "{path}");
                assert_eq!(origin_port(&resp), Some(port), "{path}");
            }
            None => assert_eq!(resp.status, 404, "{path}: no rule matches"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_secret_is_served_without_dropping_an_open_connection() {
    let cluster = Cluster::new().await;
    let pod = TestOrigin::http().await;
    cluster.service("default", "app", pod.addr.port(), &[("127.0.0.1", true)]);
    let first = cluster.ca.leaf(&["rotate.test"]);
    cluster
        .api
        .create::<Secret>(&cluster.tls_secret("default", "app-tls", &first));
    cluster.api.create::<Ingress>(&ingress(
        "default",
        "app",
        "rotate.test",
        Some("app-tls"),
        &[("/", "Prefix", "app")],
    ));
    let gw = cluster.controller(&[]).await;
    gw.wait_ready().await;
    let client = gw.client(&cluster.ca);
    let mut open = client.connect("rotate.test", &["http/1.1"]).await.unwrap();
    assert_eq!(open.peer_leaf, first.cert_der);
    assert_eq!(open.get("rotate.test", "/a").await.status, 200);

    let second = cluster.ca.leaf(&["rotate.test"]);
    cluster
        .api
        .replace::<Secret>(&cluster.tls_secret("default", "app-tls", &second));
    until(CONVERGE, "the rotated certificate", || async {
        let conn = client.connect("rotate.test", &["http/1.1"]).await.ok()?;
        (conn.peer_leaf == second.cert_der).then_some(())
    })
    .await;
    // The connection made before the rotation goes on.
    let resp = within(
        "a request on the open connection",
        open.get("rotate.test", "/b"),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(pod.last().path, "/b");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_that_is_not_ready_leaves_the_rotation() {
    let cluster = Cluster::new().await;
    // Two pods on the same port, on two loopback addresses, as pods of one Service.
    let a = TestOrigin::http_on("127.0.0.2:0".parse().unwrap()).await;
    let port = a.addr.port();
    let b = TestOrigin::http_on(format!("127.0.0.3:{port}").parse().unwrap()).await;
    cluster.service(
        "default",
        "web",
        port,
        &[("127.0.0.2", true), ("127.0.0.3", true)],
    );
    let leaf = cluster.ca.leaf(&["web.test"]);
    cluster
        .api
        .create::<Secret>(&cluster.tls_secret("default", "web-tls", &leaf));
    cluster.api.create::<Ingress>(&ingress(
        "default",
        "web",
        "web.test",
        Some("web-tls"),
        &[("/", "Prefix", "web")],
    ));
    let gw = cluster.controller(&[]).await;
    gw.wait_ready().await;
    let client = gw.client(&cluster.ca);
    let mut conn = client.connect("web.test", &["http/1.1"]).await.unwrap();
    for i in 0..8 {
        assert_eq!(conn.get("web.test", &format!("/r{i}")).await.status, 200);
    }
    assert!(
        !a.seen().is_empty() && !b.seen().is_empty(),
        "both pods serve"
    );

    cluster.set_endpoints(
        "default",
        "web",
        port,
        &[("127.0.0.2", true), ("127.0.0.3", false)],
    );
    // Once the change is in force, every request goes to the ready pod.
    until(CONVERGE, "pod b out of rotation", || async {
        let before = b.seen().len();
        let mut conn = client.connect("web.test", &["http/1.1"]).await.ok()?;
        for i in 0..6 {
            if conn.get("web.test", &format!("/after{i}")).await.status != 200 {
                return None;
            }
        }
        (b.seen().len() == before).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn switching_an_ingress_to_another_class_removes_its_routes() {
    let cluster = Cluster::new().await;
    let pod = TestOrigin::http().await;
    cluster.service("default", "app", pod.addr.port(), &[("127.0.0.1", true)]);
    let leaf = cluster.ca.leaf(&["class.test"]);
    cluster
        .api
        .create::<Secret>(&cluster.tls_secret("default", "app-tls", &leaf));
    cluster.api.create::<Ingress>(&ingress(
        "default",
        "app",
        "class.test",
        Some("app-tls"),
        &[("/", "Prefix", "app")],
    ));
    let gw = cluster.controller(&[]).await;
    gw.wait_ready().await;
    let client = gw.client(&cluster.ca);
    assert_eq!(
        try_get(&client, "class.test", "/").await.unwrap().status,
        200
    );

    cluster.api.patch_merge::<Ingress>(
        "default",
        "app",
        json!({"spec": {"ingressClassName": "someone-else"}}),
    );
    until(CONVERGE, "the routes of class.test gone", || async {
        let served = try_get(&client, "class.test", "/")
            .await
            .is_some_and(|r| r.status == 200);
        (!served).then_some(())
    })
    .await;
    // And back.
    cluster.api.patch_merge::<Ingress>(
        "default",
        "app",
        json!({"spec": {"ingressClassName": "portcullis"}}),
    );
    until_served_by(&client, "class.test", "/", pod.addr.port()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ingress_change_keeps_open_websockets_and_keep_alive_connections() {
    let cluster = Cluster::new().await;
    let pod = TestOrigin::http().await;
    let other = TestOrigin::http().await;
    cluster.service("default", "chat", pod.addr.port(), &[("127.0.0.1", true)]);
    cluster.service(
        "default",
        "other",
        other.addr.port(),
        &[("127.0.0.1", true)],
    );
    let leaf = cluster.ca.leaf(&["chat.test"]);
    cluster
        .api
        .create::<Secret>(&cluster.tls_secret("default", "chat-tls", &leaf));
    cluster.api.create::<Ingress>(&ingress(
        "default",
        "chat",
        "chat.test",
        Some("chat-tls"),
        &[("/", "Prefix", "chat")],
    ));
    let gw = cluster.controller(&[]).await;
    gw.wait_ready().await;
    let client = gw.client(&cluster.ca);

    let mut keep_alive = client.connect("chat.test", &["http/1.1"]).await.unwrap();
    assert_eq!(keep_alive.get("chat.test", "/first").await.status, 200);
    let stream = client.tls("chat.test", true, &["http/1.1"]).await.unwrap();
    let (mut ws, resp) = within(
        "the WebSocket handshake",
        tokio_tungstenite::client_async("wss://chat.test/ws", stream),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(
        within("the echo", ws.next()).await.unwrap().unwrap(),
        Message::text("before")
    );

    // A new route on the same host (the site changes; the `/` route does not).
    cluster.api.replace::<Ingress>(&ingress(
        "default",
        "chat",
        "chat.test",
        Some("chat-tls"),
        &[("/", "Prefix", "chat"), ("/other", "Prefix", "other")],
    ));
    until_served_by(&client, "chat.test", "/other", other.addr.port()).await;

    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(
        within("the echo after the change", ws.next())
            .await
            .unwrap()
            .unwrap(),
        Message::text("after")
    );
    let resp = within(
        "the keep-alive connection",
        keep_alive.get("chat.test", "/second"),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(origin_port(&resp), Some(pod.addr.port()));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_writes_the_ingress_status_and_clears_it_at_shutdown() {
    let cluster = Cluster::new().await;
    let pod = TestOrigin::http().await;
    cluster.service("default", "app", pod.addr.port(), &[("127.0.0.1", true)]);
    cluster.api.create::<Ingress>(&ingress(
        "default",
        "app",
        "status.test",
        None,
        &[("/", "Prefix", "app")],
    ));
    let gw = cluster
        .controller(&["--publish-address", "203.0.113.7,lb.example.com"])
        .await;
    gw.wait_ready().await;
    let status = || {
        cluster
            .api
            .get::<Ingress>("default", "app")
            .and_then(|i| i.status)
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .unwrap_or_default()
    };
    until(
        CONVERGE,
        "the Ingress status written by the leader",
        || async {
            let s = status();
            (s.len() == 2
                && s[0].ip.as_deref() == Some("203.0.113.7")
                && s[1].hostname.as_deref() == Some("lb.example.com"))
            .then_some(())
        },
    )
    .await;
    let lease = cluster
        .api
        .get::<k8s_openapi::api::coordination::v1::Lease>("default", "portcullis-leader")
        .expect("the Lease in --namespace");
    assert!(lease.spec.and_then(|s| s.holder_identity).is_some());
    assert!(gw.stop().await);
    assert!(status().is_empty(), "cleared at shutdown: {:?}", status());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acme_host_still_waiting_does_not_make_the_pod_unready() {
    let cluster = Cluster::new().await;
    let pod = TestOrigin::http().await;
    cluster.service("default", "app", pod.addr.port(), &[("127.0.0.1", true)]);
    let leaf = cluster.ca.leaf(&["ready.test"]);
    cluster
        .api
        .create::<Secret>(&cluster.tls_secret("default", "ready-tls", &leaf));
    cluster.api.create::<Ingress>(&ingress(
        "default",
        "ready",
        "ready.test",
        Some("ready-tls"),
        &[("/", "Prefix", "app")],
    ));
    // An ACME host whose CA cannot be reached: it waits for its certificate for ever.
    let mut acme = ingress(
        "default",
        "acme",
        "acme.test",
        Some("acme-tls"),
        &[("/", "Prefix", "app")],
    );
    acme.metadata.annotations =
        Some([("portcullis.dev/acme".to_owned(), "true".to_owned())].into());
    cluster.api.create::<Ingress>(&acme);
    let dead = portcullis_tests::closed_port().await;
    let gw = cluster
        .controller_with(
            &format!(
                "acme: {{directory: 'https://127.0.0.1:{dead}/directory', email: ops@acme.test}}\n"
            ),
            &[],
        )
        .await;
    gw.wait_ready().await;
    let body = until(CONVERGE, "the ACME site listed in /readyz", || async {
        let (status, body) = gw.readyz().await;
        assert_eq!(
            status, 200,
            "one waiting host never takes the pod out: {body}"
        );
        body.contains("waiting for its ACME certificate")
            .then_some(body)
    })
    .await;
    assert!(body.starts_with("ready"), "{body}");
    // The other host serves all along.
    until_served_by(&gw.client(&cluster.ca), "ready.test", "/", pod.addr.port()).await;
}
