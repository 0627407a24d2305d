//! Session affinity by cookie (`balance: { sticky: ... }`): a client without the cookie
//! is balanced and gets one naming its server; with it, it stays there; when that server
//! is gone, the request moves and the cookie is set again for the one that answered.

use portcullis_tests::{TestCa, TestOrigin};

use super::{answered_by, connect, equal, gateway, get};

/// `NAME=VALUE` of a `Set-Cookie`, and the whole header.
fn set_cookie(resp: &portcullis_tests::Resp) -> Option<(String, String)> {
    let v = resp.headers.get("set-cookie")?.to_str().unwrap().to_owned();
    Some((v.split(';').next().unwrap().to_owned(), v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_cookie_is_set_honoured_and_set_again_when_its_server_is_gone() {
    let ca = TestCa::new("balancing CA");
    let mut origins = [TestOrigin::http().await, TestOrigin::http().await];
    let list = equal(&origins);
    let gw = gateway(
        &ca,
        &format!(
            "{{servers: {list}, balance: {{sticky: {{cookie: pc_route, max_age: 1h, same_site: lax}}}}, health: {{passive: off}}}}"
        ),
    )
    .await;
    let client = gw.client(&ca.root_der);
    let mut conn = connect(&client).await;

    let first = get(&mut conn, "/", &[]).await;
    let (cookie, header) = set_cookie(&first).expect("a cookie for a client without one");
    assert_eq!(
        header.split_once(';').unwrap().1,
        " Path=/; Max-Age=3600; HttpOnly; SameSite=Lax; Secure"
    );
    let value = cookie.strip_prefix("pc_route=").unwrap();
    assert_eq!(value.len(), 16, "an opaque id: {value}");
    assert!(!value.contains("127.0.0.1"));
    let home = answered_by(&first);

    // With the cookie, every request goes to its server and no cookie is set again.
    for _ in 0..10 {
        let resp = get(&mut conn, "/", &[("cookie", &format!("a=1; {cookie}"))]).await;
        assert_eq!(answered_by(&resp), home);
        assert!(set_cookie(&resp).is_none());
    }
    // Without it, round robin: both servers answer.
    let mut ports = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let resp = get(&mut conn, "/", &[]).await;
        assert!(set_cookie(&resp).is_some());
        ports.insert(answered_by(&resp));
    }
    assert_eq!(ports.len(), 2, "{ports:?}");
    // A cookie naming no server is replaced.
    let resp = get(&mut conn, "/", &[("cookie", "pc_route=0123456789abcdef")]).await;
    let (fresh, _) = set_cookie(&resp).expect("a cookie naming a real server");
    assert_ne!(fresh, "pc_route=0123456789abcdef");

    // The cookie's server stops: the retry goes to the other one, and the cookie follows.
    let i = origins.iter().position(|o| o.addr.port() == home).unwrap();
    origins[i].stop().await;
    let resp = get(&mut conn, "/", &[("cookie", &cookie)]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let other = answered_by(&resp);
    assert_ne!(other, home);
    let (moved, _) = set_cookie(&resp).expect("the cookie names the server that answered");
    assert_ne!(moved, cookie);
    let resp = get(&mut conn, "/", &[("cookie", &moved)]).await;
    assert_eq!(answered_by(&resp), other);
    assert!(set_cookie(&resp).is_none());
}
