//! `portcullis certs`: one row per name with source, issuer, expiry, next renewal and last
//! error, read from files and ACME storage without a running gateway.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use portcullis_acme::{SiteStatus, Storage, unix};
use portcullis_tests::{GatewayBuilder, TestCa};

#[test]
fn certs_lists_every_name_with_source_expiry_renewal_and_last_error() {
    let ca = TestCa::new("Certs Test CA");
    let b = GatewayBuilder::new();
    let dir = b.dir().to_owned();
    let storage = dir.join("state");
    let directory = "https://acme.invalid/directory";
    let (cert, key) = ca.leaf(&["files.test"]).write(&dir, "files");

    // An ACME site with a stored certificate and a recorded failure, one still waiting.
    let acme_leaf = ca.leaf(&["shop.test", "www.shop.test"]);
    let store = Storage::new(&storage, directory);
    store
        .save_cert("shop", &acme_leaf.cert_pem, &acme_leaf.key_pem)
        .unwrap();
    let next = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_900_000_000);
    store.save_status(
        "shop",
        &SiteStatus {
            names: vec!["shop.test".into(), "www.shop.test".into()],
            next_attempt: Some(unix(next)),
            last_error: Some("new-order step failed: rate limited".into()),
            failures: 1,
            last_success: None,
        },
    );

    let b = b
        .set("storage", &format!("'{}'", storage.display()))
        .set("acme", &format!("{{directory: '{directory}'}}"))
        .site(&format!(
            "{{name: files, hosts: [files.test], tls: {{cert: '{}', key: '{}'}}, respond: {{}}}}",
            cert.display(),
            key.display()
        ))
        .site("{name: dev, hosts: [dev.localhost], tls: local, respond: {}}")
        .site("{name: shop, hosts: [shop.test, www.shop.test], tls: acme, respond: {}}")
        .site("{name: later, hosts: [later.test], tls: acme, respond: {}}");
    let config = b.write_config();

    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["certs", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        rows[0],
        [
            "NAME",
            "SITE",
            "SOURCE",
            "ISSUER",
            "NOT AFTER",
            "NEXT RENEWAL",
            "LAST ERROR"
        ]
    );
    let row = |name: &str| {
        rows.iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("no row for {name}:\n{stdout}"))
            .clone()
    };
    assert_eq!(row("files.test")[1..4], ["files", "file", "Certs Test CA"]);
    assert_eq!(row("files.test")[5], "manual");
    assert_eq!(
        row("dev.localhost")[1..5],
        ["dev", "local", "local CA", "issued at start"]
    );
    for name in ["shop.test", "www.shop.test"] {
        let r = row(name);
        assert_eq!(r[1..4], ["shop", "acme", "Certs Test CA"], "{stdout}");
        assert!(r[4].ends_with('Z'), "not-after {:?}", r[4]);
        assert_eq!(r[5], "2030-03-17T17:46:40Z");
        assert_eq!(r[6], "new-order step failed: rate limited");
    }
    assert_eq!(
        row("later.test")[1..6],
        ["later", "acme", "-", "not issued yet", "at start"]
    );
}

/// In cluster mode the table reads the cluster store: a line naming the store, the issuer
/// and the live replicas, and for each ACME site the replica that ordered its certificate.
/// With the store out of reach it says so and shows the local cache.
#[tokio::test(flavor = "multi_thread")]
#[allow(
    clippy::disallowed_methods,
    reason = "runs the binary and waits for it, as a user does"
)]
async fn certs_in_cluster_mode_reads_the_store_and_names_who_ordered() {
    use portcullis_cluster::Sealer;
    use portcullis_cluster::records::{CertRecord, encode};

    let etcd = portcullis_tests::etcd::TestEtcd::start(1).await;
    let ca = TestCa::new("Certs Cluster CA");
    let shared = ca.leaf(&["shared.test"]);
    let record = CertRecord::new(
        &Sealer::new(None),
        "shared",
        &["shared.test".to_owned()],
        &shared.cert_pem,
        &shared.key_pem,
        "edge-2",
        1_800_000_000,
        7,
    );
    let value = String::from_utf8(encode(&record)).unwrap();
    assert_eq!(etcd.put(0, "/pc/certs/shared", &value).await, 200);
    assert_eq!(etcd.put(0, "/pc/leader", "edge-2").await, 200);

    let run = |endpoint: String| {
        let b = GatewayBuilder::new()
            .set(
                "cluster",
                &format!(
                    "{{store: etcd, etcd: {{endpoints: ['{endpoint}'], prefix: /pc/}}, node_name: edge-1}}"
                ),
            )
            .set("acme", "{directory: 'https://acme.invalid/directory'}")
            .site("{name: shared, hosts: [shared.test], tls: acme, respond: {}}")
            .site("{name: waiting, hosts: [waiting.test], tls: acme, respond: {}}");
        let config = b.write_config();
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["certs", "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (b, String::from_utf8(out.stdout).unwrap())
    };

    let (_b, stdout) = tokio::task::spawn_blocking({
        let endpoint = etcd.endpoints()[0].clone();
        move || run(endpoint)
    })
    .await
    .unwrap();
    let first = stdout.lines().next().unwrap();
    assert!(
        first.starts_with("cluster: etcd store, issuer edge-2"),
        "{stdout}"
    );
    let shared_row = stdout
        .lines()
        .find(|l| l.starts_with("shared.test"))
        .unwrap();
    assert!(
        shared_row.contains("acme (cluster: ordered by edge-2 at 2027-01-15"),
        "{shared_row}"
    );
    assert!(shared_row.contains("Certs Cluster CA"), "{shared_row}");
    let waiting_row = stdout
        .lines()
        .find(|l| l.starts_with("waiting.test"))
        .unwrap();
    assert!(waiting_row.contains("not issued yet"), "{waiting_row}");

    // The store out of reach: said on the first line, bounded in time.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let started = std::time::Instant::now();
    let (_b, stdout) = tokio::task::spawn_blocking(move || run(endpoint))
        .await
        .unwrap();
    assert!(
        stdout
            .lines()
            .next()
            .unwrap()
            .contains("showing this replica's local cache"),
        "{stdout}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}
