//! kube-rs against the fake API server: what the controller relies on (the watcher's
//! Init/InitApply/InitDone and re-list after 410, a Lease taken with resourceVersion
//! preconditions, paged lists, selectors, retries of 429/500, a server that never
//! answers).

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use http_body_util::BodyExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, VersionMatch, WatchEvent,
    WatchParams,
};
use kube::runtime::watcher::{self, Event};
use portcullis_tests::wait::{until, within, within_for};
use portcullis_tests::{FakeApiOptions, FakeApiServer};
use serde_json::json;

fn from<K: serde::de::DeserializeOwned>(v: serde_json::Value) -> K {
    serde_json::from_value(v).unwrap()
}

fn ingress(ns: &str, name: &str) -> Ingress {
    from(
        json!({"metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"rules": [{"host": format!("{name}.test")}]}}),
    )
}

fn name<K: kube::Resource>(o: &K) -> String {
    o.meta().name.clone().unwrap()
}

type Events = tokio::sync::mpsc::UnboundedReceiver<String>;

/// Runs `stream` in a task (a watcher only works while it is polled), its events shortened
/// to what a test compares: `Init`, `InitApply(a)`, `InitDone`, `Apply(a)`, `Delete(a)`,
/// `Error(410)`.
fn drive<S>(stream: S) -> (Events, tokio::task::JoinHandle<()>)
where
    S: Stream<Item = Result<Event<Ingress>, watcher::Error>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(e) = stream.next().await {
            let short = match e {
                Ok(Event::Init) => "Init".into(),
                Ok(Event::InitApply(o)) => format!("InitApply({})", name(&o)),
                Ok(Event::InitDone) => "InitDone".into(),
                Ok(Event::Apply(o)) => format!("Apply({})", name(&o)),
                Ok(Event::Delete(o)) => format!("Delete({})", name(&o)),
                Err(watcher::Error::WatchError(s)) => format!("Error({})", s.code),
                Err(e) => format!("Err({e})"),
            };
            if tx.send(short).is_err() {
                return;
            }
        }
    });
    (rx, task)
}

async fn events(rx: &mut Events, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            within("the next watcher event", rx.recv())
                .await
                .expect("the watcher stream never ends"),
        );
    }
    out
}

#[tokio::test]
async fn a_watcher_lists_then_follows_and_relists_after_compaction() {
    let api = FakeApiServer::start().await;
    api.create(&ingress("default", "a"));
    api.create(&ingress("default", "b"));
    let client = api.client().await;
    let ingresses: Api<Ingress> = Api::all(client);
    let (mut stream, _task) = drive(watcher::watcher(
        ingresses,
        watcher::Config::default().page_size(1),
    ));
    assert_eq!(
        events(&mut stream, 4).await,
        ["Init", "InitApply(a)", "InitApply(b)", "InitDone"]
    );
    until(Duration::from_secs(10), "the watch to open", || async {
        (api.open_watches() == 1).then_some(())
    })
    .await;
    api.create(&ingress("default", "c"));
    api.patch_merge::<Ingress>(
        "default",
        "a",
        json!({"spec": {"rules": [{"host": "a2.test"}]}}),
    );
    api.delete::<Ingress>("default", "b");
    assert_eq!(
        events(&mut stream, 3).await,
        ["Apply(c)", "Apply(a)", "Delete(b)"]
    );

    // A dropped watch resumes from its resourceVersion: the history is replayed, no re-list.
    api.stall_watches(true);
    api.create(&ingress("default", "d"));
    api.drop_watches();
    api.stall_watches(false);
    assert_eq!(events(&mut stream, 1).await, ["Apply(d)"]);

    // Once that history is compacted, the resumed watch gets 410 and the watcher re-lists.
    until(Duration::from_secs(10), "the watch to reopen", || async {
        (api.open_watches() == 1).then_some(())
    })
    .await;
    api.stall_watches(true);
    api.create(&ingress("default", "e"));
    api.compact();
    api.drop_watches();
    api.stall_watches(false);
    assert_eq!(
        events(&mut stream, 7).await,
        [
            "Error(410)",
            "Init",
            "InitApply(a)",
            "InitApply(c)",
            "InitApply(d)",
            "InitApply(e)",
            "InitDone"
        ]
    );
    api.delete::<Ingress>("default", "c");
    assert_eq!(events(&mut stream, 1).await, ["Delete(c)"]);
}

#[tokio::test]
async fn a_streaming_list_watcher_gets_initial_events_and_the_end_bookmark() {
    let api = FakeApiServer::start().await;
    api.create(&ingress("default", "a"));
    let ingresses: Api<Ingress> = Api::all(api.client().await);
    let (mut stream, _task) = drive(watcher::watcher(
        ingresses,
        watcher::Config::default().streaming_lists(),
    ));
    assert_eq!(
        events(&mut stream, 3).await,
        ["Init", "InitApply(a)", "InitDone"]
    );
    api.create(&ingress("default", "b"));
    assert_eq!(events(&mut stream, 1).await, ["Apply(b)"]);
    let watches: Vec<_> = api
        .calls()
        .into_iter()
        .filter(|c| c.verb == "watch")
        .collect();
    assert_eq!(
        watches.len(),
        1,
        "one streaming watch, no list: {watches:?}"
    );
    assert!(api.calls().iter().all(|c| c.verb != "list"));
}

#[tokio::test]
async fn a_lease_taken_with_a_stale_resource_version_conflicts() {
    let api = FakeApiServer::start().await;
    let leases: Api<Lease> = Api::namespaced(api.client().await, "default");
    let lease: Lease = from(json!({"metadata": {"name": "portcullis-leader"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}));
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let err = leases
        .create(&PostParams::default(), &lease)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err:?}"
    );
    // Two electors read the same version; the first PUT wins, the second gets 409.
    let read_by_a = leases.get("portcullis-leader").await.unwrap();
    let read_by_b = read_by_a.clone();
    let mut take = read_by_a.clone();
    take.spec.as_mut().unwrap().holder_identity = Some("a".into());
    take.spec.as_mut().unwrap().lease_transitions = Some(1);
    leases
        .replace("portcullis-leader", &PostParams::default(), &take)
        .await
        .unwrap();
    let mut steal = read_by_b;
    steal.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let err = leases
        .replace("portcullis-leader", &PostParams::default(), &steal)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
        "{err:?}"
    );
    // A Lease refuses an update without a resourceVersion, as the real strategy does.
    steal.metadata.resource_version = None;
    let err = leases
        .replace("portcullis-leader", &PostParams::default(), &steal)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err:?}"
    );
    let held = leases.get("portcullis-leader").await.unwrap();
    assert_eq!(held.spec.unwrap().holder_identity.as_deref(), Some("a"));
    // A delete with a stale precondition conflicts too.
    let stale = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: read_by_a.metadata.resource_version.clone(),
            uid: None,
        }),
        ..DeleteParams::default()
    };
    let err = leases
        .delete("portcullis-leader", &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409),
        "{err:?}"
    );
}

#[tokio::test]
async fn lists_page_through_one_snapshot_and_honour_resource_version_semantics() {
    let api = FakeApiServer::start().await;
    for i in 0..25 {
        api.create::<ConfigMap>(&from(
            json!({"metadata": {"name": format!("cm-{i:02}"), "namespace": "default"}}),
        ));
    }
    let before = api.resource_version();
    let maps: Api<ConfigMap> = Api::namespaced(api.client().await, "default");
    let first = maps.list(&ListParams::default().limit(10)).await.unwrap();
    assert_eq!(first.items.len(), 10);
    assert_eq!(first.metadata.remaining_item_count, Some(15));
    assert_eq!(
        first.metadata.resource_version.as_deref(),
        Some(before.as_str())
    );
    // Changes between pages do not show: the pages are the first page's snapshot.
    api.create::<ConfigMap>(&from(
        json!({"metadata": {"name": "cm-99", "namespace": "default"}}),
    ));
    api.delete::<ConfigMap>("default", "cm-24");
    let mut names: Vec<String> = first.items.iter().map(name).collect();
    let mut token = first.metadata.continue_;
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = maps
            .list(&ListParams::default().limit(10).continue_token(&t))
            .await
            .unwrap();
        names.extend(page.items.iter().map(name));
        token = page.metadata.continue_;
    }
    let expected: Vec<String> = (0..25).map(|i| format!("cm-{i:02}")).collect();
    assert_eq!(names, expected);
    let now = maps.list(&ListParams::default()).await.unwrap();
    assert_eq!(now.items.len(), 25);
    assert!(now.items.iter().any(|c| name(c) == "cm-99"));

    // Exact at an older version rebuilds it; NotOlderThan gives the newest.
    let exact = ListParams::default()
        .at(&before)
        .matching(VersionMatch::Exact);
    let old = maps.list(&exact).await.unwrap();
    assert_eq!(old.items.len(), 25);
    assert!(old.items.iter().any(|c| name(c) == "cm-24"));
    let recent = ListParams::default()
        .at(&before)
        .matching(VersionMatch::NotOlderThan);
    assert!(
        maps.list(&recent)
            .await
            .unwrap()
            .items
            .iter()
            .any(|c| name(c) == "cm-99")
    );
    // After compaction: Exact at the old version and the old continue token are gone.
    let page = maps.list(&ListParams::default().limit(5)).await.unwrap();
    api.create::<ConfigMap>(&from(
        json!({"metadata": {"name": "cm-x", "namespace": "default"}}),
    ));
    api.compact();
    let err = maps.list(&exact).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 410 && s.reason == "Expired"),
        "{err:?}"
    );
    let err = maps
        .list(
            &ListParams::default()
                .limit(5)
                .continue_token(&page.metadata.continue_.unwrap()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 410),
        "{err:?}"
    );
    assert!(maps.list(&recent).await.is_ok());
    // A version from the future: 504 "Too large resource version" (which kube's default
    // client would retry for minutes).
    let maps: Api<ConfigMap> = Api::namespaced(client_without_retries(&api).await, "default");
    let future = ListParams::default()
        .at("999999")
        .matching(VersionMatch::NotOlderThan);
    let err = maps.list(&future).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 504),
        "{err:?}"
    );
}

#[tokio::test]
async fn selectors_filter_lists_and_watches() {
    let api = FakeApiServer::start().await;
    for (n, app, tier) in [
        ("a", "shop", Some("web")),
        ("b", "shop", None),
        ("c", "blog", Some("web")),
    ] {
        let mut labels = json!({"app": app});
        if let Some(t) = tier {
            labels["tier"] = json!(t);
        }
        api.create::<ConfigMap>(&from(
            json!({"metadata": {"name": n, "namespace": "default", "labels": labels}}),
        ));
    }
    let client = api.client().await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let names = |l: kube::api::ObjectList<ConfigMap>| l.items.iter().map(name).collect::<Vec<_>>();
    for (selector, expected) in [
        ("app=shop", vec!["a", "b"]),
        ("app in (blog, shop),tier", vec!["a", "c"]),
        ("!tier", vec!["b"]),
        ("app!=shop", vec!["c"]),
        ("app notin (shop)", vec!["c"]),
    ] {
        let got = names(
            maps.list(&ListParams::default().labels(selector))
                .await
                .unwrap(),
        );
        assert_eq!(got, expected, "labelSelector {selector}");
    }
    let got = names(
        maps.list(&ListParams::default().fields("metadata.name!=a"))
            .await
            .unwrap(),
    );
    assert_eq!(got, ["b", "c"]);
    let err = maps
        .list(&ListParams::default().fields("data.x=1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 400),
        "{err:?}"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    for (n, t) in [("tls", "kubernetes.io/tls"), ("plain", "Opaque")] {
        api.create::<Secret>(&from(
            json!({"metadata": {"name": n, "namespace": "default"}, "type": t}),
        ));
    }
    let tls = secrets
        .list(&ListParams::default().fields("type=kubernetes.io/tls"))
        .await
        .unwrap();
    assert_eq!(tls.items.iter().map(name).collect::<Vec<_>>(), ["tls"]);

    // Pages with a selector: a continue token while a match is left, never a count (the
    // real server gives `remainingItemCount` only without a selector).
    for i in 0..7 {
        let app = if i % 2 == 0 { "even" } else { "odd" };
        api.create::<ConfigMap>(&from(
            json!({"metadata": {"name": format!("p{i}"), "namespace": "default", "labels": {"app": app}}}),
        ));
    }
    let mut pages = Vec::new();
    let mut lp = ListParams::default().labels("app=even").limit(2);
    loop {
        let page = maps.list(&lp).await.unwrap();
        assert_eq!(page.metadata.remaining_item_count, None);
        pages.push(page.items.iter().map(name).collect::<Vec<_>>());
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(t) => {
                lp = ListParams::default()
                    .labels("app=even")
                    .limit(2)
                    .continue_token(&t)
            }
            None => break,
        }
    }
    assert_eq!(pages, [vec!["p0", "p2"], vec!["p4", "p6"]]);
    let all = maps.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(all.metadata.remaining_item_count, Some(8));

    // A watch with a selector sees an object leave (DELETED) and join (ADDED) it.
    let rv = api.resource_version();
    let mut watch = maps
        .watch(&WatchParams::default().labels("app=shop"), &rv)
        .await
        .unwrap()
        .boxed();
    api.patch_merge::<ConfigMap>(
        "default",
        "a",
        json!({"metadata": {"labels": {"app": "blog"}}}),
    );
    api.patch_merge::<ConfigMap>(
        "default",
        "c",
        json!({"metadata": {"labels": {"app": "shop"}}}),
    );
    api.patch_merge::<ConfigMap>("default", "b", json!({"data": {"k": "v"}}));
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match within("a selected watch event", watch.next())
            .await
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(o) => seen.push(format!("ADDED {}", name(&o))),
            WatchEvent::Modified(o) => seen.push(format!("MODIFIED {}", name(&o))),
            WatchEvent::Deleted(o) => seen.push(format!("DELETED {}", name(&o))),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(s) => panic!("unexpected {s:?}"),
        }
    }
    assert_eq!(seen, ["DELETED a", "ADDED c", "MODIFIED b"]);
}

#[tokio::test]
async fn watches_send_bookmarks_time_out_and_410_after_compaction() {
    let api = FakeApiServer::start_with(FakeApiOptions {
        bookmark_interval: Duration::from_millis(100),
        ..FakeApiOptions::default()
    })
    .await;
    let maps: Api<ConfigMap> = Api::namespaced(api.client().await, "default");
    let rv = api.resource_version();
    let started = std::time::Instant::now();
    let mut watch = maps
        .watch(&WatchParams::default().timeout(1), &rv)
        .await
        .unwrap()
        .boxed();
    let mut bookmarks = 0;
    while let Some(e) = within("the watch to end by its timeout", watch.next()).await {
        match e.unwrap() {
            WatchEvent::Bookmark(b) => {
                assert_eq!(b.metadata.resource_version, rv);
                bookmarks += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(bookmarks >= 3, "{bookmarks} bookmarks in a second");
    assert!(started.elapsed() >= Duration::from_secs(1));

    // Stalled: open, but neither events nor bookmarks; then they catch up.
    api.stall_watches(true);
    let mut watch = maps
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    api.create::<ConfigMap>(&from(
        json!({"metadata": {"name": "late", "namespace": "default"}}),
    ));
    let quiet = tokio::time::timeout(Duration::from_millis(500), watch.next()).await;
    assert!(quiet.is_err(), "a stalled watch delivered {quiet:?}");
    api.stall_watches(false);
    match within("the stalled event", watch.next())
        .await
        .unwrap()
        .unwrap()
    {
        WatchEvent::Added(o) => assert_eq!(name(&o), "late"),
        other => panic!("unexpected {other:?}"),
    }

    // From a compacted version, even the newest one handed out before: one ERROR event
    // with a 410 Expired Status, then the end.
    let newest = api.resource_version();
    api.compact();
    for from in [&rv, &newest] {
        let mut watch = maps
            .watch(&WatchParams::default(), from)
            .await
            .unwrap()
            .boxed();
        match within("the 410", watch.next()).await.unwrap().unwrap() {
            WatchEvent::Error(s) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            within("the end of the stream", watch.next())
                .await
                .is_none()
        );
    }
    // A list made after the compaction gives a version to watch from.
    let listed = maps.list(&ListParams::default()).await.unwrap();
    let since = listed.metadata.resource_version.unwrap();
    let mut watch = maps
        .watch(&WatchParams::default(), &since)
        .await
        .unwrap()
        .boxed();
    api.create::<ConfigMap>(&from(
        json!({"metadata": {"name": "after", "namespace": "default"}}),
    ));
    loop {
        match within("the event after the compaction", watch.next())
            .await
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(o) => break assert_eq!(name(&o), "after"),
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn status_and_patches_over_http() {
    let api = FakeApiServer::start().await;
    let ingresses: Api<Ingress> = Api::namespaced(api.client().await, "default");
    let made = ingresses
        .create(&PostParams::default(), &ingress("default", "a"))
        .await
        .unwrap();
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}});
    let after = ingresses
        .patch_status("a", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(after.spec, made.spec);
    assert_eq!(after.metadata.generation, Some(1));
    let ip = |i: &Ingress| {
        i.status
            .as_ref()
            .unwrap()
            .load_balancer
            .as_ref()
            .unwrap()
            .ingress
            .as_ref()
            .unwrap()[0]
            .ip
            .clone()
    };
    assert_eq!(ip(&after).as_deref(), Some("192.0.2.1"));
    // A patch of the object may not touch the status.
    let both = json!({"spec": {"rules": [{"host": "b.test"}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}}});
    let after = ingresses
        .patch("a", &PatchParams::default(), &Patch::Merge(&both))
        .await
        .unwrap();
    assert_eq!(after.metadata.generation, Some(2));
    assert_eq!(ip(&after).as_deref(), Some("192.0.2.1"));
    // RFC 6902 JSON patch (as `kubectl patch --type=json` sends it), all or nothing.
    let json_patch = |ops: serde_json::Value| {
        http::Request::patch("/apis/networking.k8s.io/v1/namespaces/default/ingresses/a")
            .header("content-type", "application/json-patch+json")
            .body(kube::client::Body::from(serde_json::to_vec(&ops).unwrap()))
            .unwrap()
    };
    let client = api.client().await;
    let resp = client
        .send(json_patch(json!([
            {"op": "test", "path": "/spec/rules/0/host", "value": "b.test"},
            {"op": "replace", "path": "/spec/rules/0/host", "value": "c.test"}])))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client
        .send(json_patch(json!([
            {"op": "replace", "path": "/spec/rules/0/host", "value": "d.test"},
            {"op": "test", "path": "/spec/rules/0/host", "value": "b.test"}])))
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let now: Ingress = api.get("default", "a").unwrap();
    assert_eq!(
        now.spec.unwrap().rules.unwrap()[0].host.as_deref(),
        Some("c.test")
    );
    // Server-side apply is not implemented: 415, never a silent merge.
    let err = ingresses
        .patch("a", &PatchParams::apply("test"), &Patch::Apply(&both))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 415),
        "{err:?}"
    );
    // DELETE answers the object and a second one 404s.
    ingresses
        .delete("a", &DeleteParams::default())
        .await
        .unwrap();
    let err = ingresses
        .delete("a", &DeleteParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"),
        "{err:?}"
    );
    let calls = api.calls();
    let verbs: Vec<(&str, Option<&str>)> = calls
        .iter()
        .map(|c| (c.verb.as_str(), c.subresource.as_deref()))
        .collect();
    assert_eq!(
        verbs,
        [
            ("create", None),
            ("patch", Some("status")),
            ("patch", None),
            ("patch", None),
            ("patch", None),
            ("patch", None),
            ("delete", None),
            ("delete", None)
        ]
    );
}

/// A client without kube's own retries of 429, 503 and 504.
async fn client_without_retries(api: &FakeApiServer) -> kube::Client {
    let mut config = api.config().await;
    config.default_retry = false;
    kube::Client::try_from(config).unwrap()
}

#[tokio::test]
async fn injected_failures_are_answered_as_the_real_server_would() {
    let api = FakeApiServer::start().await;
    let plain = client_without_retries(&api).await;
    // 429 with Retry-After, as a Status.
    api.fail_next(1, 429);
    let req = http::Request::get("/api/v1/namespaces/default/configmaps")
        .body(kube::client::Body::empty())
        .unwrap();
    let resp = plain.send(req).await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "TooManyRequests");

    // kube's default client retries a 429 itself, after the Retry-After second.
    let maps: Api<ConfigMap> = Api::namespaced(api.client().await, "default");
    api.fail_next(1, 429);
    let started = std::time::Instant::now();
    maps.list(&ListParams::default()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));

    // A 500 it does not: a client loop that retries gets through.
    api.fail_next(2, 500);
    let mut attempts = 0;
    let list = loop {
        attempts += 1;
        match maps.list(&ListParams::default()).await {
            Ok(l) => break l,
            Err(kube::Error::Api(s)) if s.code == 500 && s.reason == "InternalError" => {
                assert!(attempts < 5, "still failing after {attempts} attempts");
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    assert_eq!(attempts, 3);
    assert!(list.items.is_empty());
    let failed = api
        .calls()
        .iter()
        .filter(|c| c.verb == "list" && c.resource == "configmaps")
        .count();
    assert_eq!(failed, 1 + 2 + 3, "every attempt reached the server");

    // Without the token: 401.
    let yaml = api.kubeconfig_yaml().replace(api.token(), "wrong");
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(&yaml).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let stranger: Api<ConfigMap> =
        Api::namespaced(kube::Client::try_from(config).unwrap(), "default");
    let err = stranger.list(&ListParams::default()).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 401),
        "{err:?}"
    );
    // Unknown resources: 404.
    let req = http::Request::get("/apis/example.com/v1/namespaces/default/widgets")
        .body(kube::client::Body::empty())
        .unwrap();
    assert_eq!(plain.send(req).await.unwrap().status(), 404);
    // The health endpoints, and the version kube reads.
    let req = http::Request::get("/readyz")
        .body(kube::client::Body::empty())
        .unwrap();
    assert_eq!(plain.send(req).await.unwrap().status(), 200);
    let version = plain.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "33")
    );
}

#[tokio::test]
async fn a_blackholed_server_never_answers_until_the_partition_heals() {
    let api = FakeApiServer::start().await;
    let maps: Api<ConfigMap> = Api::namespaced(api.client().await, "default");
    maps.list(&ListParams::default()).await.unwrap();
    api.blackhole(true);
    // On the open connection and on a new one alike.
    let hung = tokio::time::timeout(Duration::from_millis(700), maps.get_opt("x")).await;
    assert!(hung.is_err(), "answered: {hung:?}");
    let fresh: Api<ConfigMap> = Api::namespaced(api.client().await, "default");
    let mut waiting = Box::pin(fresh.get_opt("x"));
    let hung = tokio::time::timeout(Duration::from_millis(700), &mut waiting).await;
    assert!(hung.is_err(), "answered: {hung:?}");
    // Healed: the request still waiting goes through, and new ones are answered.
    api.blackhole(false);
    let answered = within("the waiting request after the partition", waiting).await;
    assert!(answered.unwrap().is_none());
    let back: Api<ConfigMap> = Api::namespaced(api.client().await, "default");
    let answered = within_for(
        Duration::from_secs(10),
        "an answer after the blackhole",
        back.get_opt("x"),
    )
    .await;
    assert!(answered.unwrap().is_none());
}

#[tokio::test]
async fn a_watcher_syncs_thousands_of_objects_in_pages() {
    let api = FakeApiServer::start().await;
    for i in 0..5000 {
        api.create(&ingress("default", &format!("ing-{i:04}")));
    }
    let ingresses: Api<Ingress> = Api::all(api.client().await);
    let (mut stream, _task) = drive(watcher::watcher(ingresses, watcher::Config::default()));
    let started = std::time::Instant::now();
    let mut applied = 0;
    loop {
        match within_for(Duration::from_secs(30), "the initial sync", stream.recv())
            .await
            .unwrap()
            .as_str()
        {
            "Init" => {}
            "InitDone" => break,
            e if e.starts_with("InitApply(") => applied += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(applied, 5000);
    let lists = api.calls().iter().filter(|c| c.verb == "list").count();
    assert_eq!(lists, 10, "pages of 500");
    eprintln!("5,000 Ingresses synced in {:?}", started.elapsed());
    api.create(&ingress("default", "late"));
    assert_eq!(events(&mut stream, 1).await, ["Apply(late)"]);
}
