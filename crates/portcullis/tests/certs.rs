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
