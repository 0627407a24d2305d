//! The counting proxy against real pebble: the directory and every URL after it point at the
//! proxy; new orders are counted per name with their URL; a later read of that URL is told
//! apart from a new order; the failure switch answers an ACME problem without asking pebble.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, BodyWrapper, BytesResponse, HttpClient, Identifier, NewAccount, NewOrder,
};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::json;

use super::learn::{Known, base64url_decode, jws_payload};
use super::*;
use crate::{Pebble, PebbleOptions};

#[test]
fn urls_are_rewritten_and_jws_payloads_read() {
    let up = "https://127.0.0.1:14000";
    let own = "https://127.0.0.1:5555";
    assert_eq!(
        rewrite(&format!("<{up}/dir>;rel=\"index\""), up, own),
        format!("<{own}/dir>;rel=\"index\"")
    );
    assert_eq!(split_url(&format!("{up}/my-order/x")).1, "/my-order/x");
    assert_eq!(base64url_decode("eyJhIjoxfQ").unwrap(), b"{\"a\":1}");
    let body = json!({"protected": "e30", "payload": "eyJpZGVudGlmaWVycyI6W3sidHlwZSI6ImRucyIsInZhbHVlIjoiYS50ZXN0In1dfQ", "signature": "x"});
    let payload = jws_payload(body.to_string().as_bytes()).unwrap();
    assert_eq!(learn::identifiers(&payload), ["a.test"]);
    let as_get = json!({"protected": "e30", "payload": "", "signature": "x"});
    assert!(jws_payload(as_get.to_string().as_bytes()).is_none());
}

#[test]
fn requests_are_told_apart_by_what_the_answers_taught() {
    let own = "https://p";
    let mut k = Known::new("/dir");
    k.learn(
        Kind::Directory,
        "/dir",
        None,
        &json!({"newNonce": "https://x/nonce", "newAccount": "https://x/acct", "newOrder": "https://x/new"}),
    );
    let post = Method::POST;
    let ready = json!({});
    assert_eq!(k.classify(&post, "/new", None, own).0, Kind::NewOrder);
    k.learn(
        Kind::NewOrder,
        "/new",
        Some("https://x/order/1"),
        &json!({"identifiers": [{"type": "dns", "value": "a.test"}], "finalize": "https://x/fin/1", "authorizations": ["https://x/authz/1"]}),
    );
    let (kind, names, order) = k.classify(&post, "/order/1", None, own);
    assert_eq!((kind, names), (Kind::Order, vec!["a.test".to_owned()]));
    assert_eq!(order.as_deref(), Some("https://p/order/1"));
    assert_eq!(
        k.classify(&post, "/fin/1", Some(&ready), own).0,
        Kind::Finalize
    );
    k.learn(
        Kind::Other,
        "/authz/1",
        None,
        &json!({"identifier": {"type": "dns", "value": "a.test"}, "challenges": [{"url": "https://x/chal/1"}]}),
    );
    assert_eq!(
        k.classify(&post, "/authz/1", None, own).0,
        Kind::Authorization
    );
    assert_eq!(
        k.classify(&post, "/chal/1", Some(&ready), own).0,
        Kind::ChallengeReady
    );
    assert_eq!(
        k.classify(&post, "/chal/1", None, own).0,
        Kind::ChallengePoll
    );
    k.learn(
        Kind::Order,
        "/order/1",
        None,
        &json!({"status": "valid", "certificate": "https://x/cert/1"}),
    );
    let (kind, _, order) = k.classify(&post, "/cert/1", None, own);
    assert_eq!(kind, Kind::Certificate);
    assert_eq!(order.as_deref(), Some("https://p/order/1"));
    assert_eq!(
        k.classify(&Method::GET, "/dir", None, own).0,
        Kind::Directory
    );
}

/// instant-acme's HTTP client, trusting the proxy's CA (the crate's own is not built here).
#[derive(Clone)]
struct Http(Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>);

impl HttpClient for Http {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = self.0.request(req);
        Box::pin(async move {
            let resp = fut
                .await
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            Ok(BytesResponse::from(resp))
        })
    }
}

fn http_trusting(ca: &Path) -> Http {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let tls = ClientConfig::builder()
        .with_root_certificates(Arc::new(roots))
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Http(Client::builder(TokioExecutor::new()).build(connector))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_through_the_proxy_is_counted_resumed_and_refused_on_demand() {
    crate::init();
    let mut pebble = Pebble::new(PebbleOptions::default());
    let proxy = AcmeProxy::start(&pebble.directory(), &pebble.ca_bundle).await;
    // No validation happens here: the ports pebble would validate on are never asked.
    let unused = crate::closed_port().await;
    pebble.start(unused, unused).await;

    // The directory through the proxy names only the proxy.
    let http = http_trusting(&proxy.ca_bundle);
    let resp = http
        .0
        .request(
            Request::get(proxy.directory())
                .body(BodyWrapper::from(Vec::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let dir: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let own = format!("https://{}/", proxy.addr);
    for key in [
        "newNonce",
        "newAccount",
        "newOrder",
        "revokeCert",
        "keyChange",
    ] {
        let url = dir[key].as_str().unwrap();
        assert!(url.starts_with(&own), "{key}: {url}");
    }
    assert_eq!(proxy.count(Kind::Directory), 1);

    let (account, _) = Account::builder_with_http(Box::new(http.clone()))
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            proxy.directory(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(proxy.count(Kind::NewAccount), 1);
    let ids = [
        Identifier::Dns("a.test".into()),
        Identifier::Dns("b.test".into()),
    ];
    let order = account.new_order(&NewOrder::new(&ids)).await.unwrap();
    let url = order.url().to_owned();
    assert!(url.starts_with(&own), "{url}");
    assert_eq!(proxy.new_orders(), 1);
    assert_eq!(
        (proxy.orders_for("a.test"), proxy.orders_for("b.test")),
        (1, 1)
    );
    let placed = proxy.placed();
    assert_eq!(placed.len(), 1);
    assert_eq!(placed[0].order.as_deref(), Some(url.as_str()));
    assert_eq!(placed[0].names, ["a.test", "b.test"]);
    assert!(proxy.requests_for_order(&url).is_empty());

    // Resuming the order by its URL (as a new issuer does) reads it; no new order.
    let mut resumed = account.order(url.clone()).await.unwrap();
    resumed.refresh().await.unwrap();
    let reads = proxy.requests_for_order(&url);
    assert!(!reads.is_empty() && reads.iter().all(|e| e.kind == Kind::Order));
    assert_eq!(reads[0].names, ["a.test", "b.test"]);
    assert_eq!(proxy.new_orders(), 1);

    // Its authorizations name their identifiers.
    {
        let mut authzs = resumed.authorizations();
        while let Some(a) = authzs.next().await {
            a.unwrap();
        }
    }
    let authz: Vec<Exchange> = proxy
        .exchanges()
        .into_iter()
        .filter(|e| e.kind == Kind::Authorization)
        .collect();
    assert_eq!(authz.len(), 2, "{authz:?}");
    let mut names: Vec<String> = authz.iter().flat_map(|e| e.names.clone()).collect();
    names.sort();
    assert_eq!(names, ["a.test", "b.test"]);

    // The failure switch: a problem document, counted, nothing placed.
    proxy.fail_new_orders(Some(Failure::RateLimited));
    let refused = account
        .new_order(&NewOrder::new(&[Identifier::Dns("c.test".into())]))
        .await
        .err()
        .expect("a refused order");
    assert!(
        refused.to_string().contains("rateLimited")
            || format!("{refused:?}").contains("rateLimited"),
        "{refused:?}"
    );
    assert_eq!(proxy.new_orders(), 2);
    assert_eq!(proxy.orders_for("c.test"), 1);
    assert_eq!(proxy.placed().len(), 1);
    let last = proxy
        .exchanges()
        .into_iter()
        .rfind(|e| e.kind == Kind::NewOrder)
        .unwrap();
    assert_eq!(last.status, 429);
    proxy.fail_new_orders_for(&["e.test"], Failure::ServerInternal);
    let ids = [Identifier::Dns("e.test".into())];
    assert!(account.new_order(&NewOrder::new(&ids)).await.is_err());
    let ids = [Identifier::Dns("f.test".into())];
    account.new_order(&NewOrder::new(&ids)).await.unwrap();
    assert_eq!(proxy.placed().len(), 2);
    proxy.fail_new_orders(None);

    // Pausing after a kind holds the next request until resumed.
    proxy.pause_after(Kind::NewOrder);
    let order = account
        .new_order(&NewOrder::new(&[Identifier::Dns("d.test".into())]))
        .await
        .unwrap();
    proxy.wait_paused(Duration::from_secs(1)).await;
    let url = order.url().to_owned();
    let held = tokio::spawn(async move { account.order(url).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "a request went through the pause");
    assert_eq!(proxy.held(), 1);
    proxy.resume();
    crate::wait::within("the held request", held)
        .await
        .unwrap()
        .unwrap();
}
