use super::*;

#[test]
fn local_certificates_are_reissued_into_the_store() {
    portcullis_tls::install_default_provider();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "tls: {{ local_ca_dir: {} }}\nsites:\n  - hosts: [a.localhost]\n    tls: local\n    respond: {{ body: hi }}\n",
        dir.path().join("ca").display()
    );
    let config = portcullis_config::parse(&yaml, dir.path()).unwrap();
    let ca = LocalCa::open_or_create(&config.tls.local_ca_dir).unwrap();
    let site = &config.sites[0];
    let store = CertStore::new();
    store.set_sites([(
        SiteBinding {
            name: &site.name,
            hosts: &site.hosts,
            default: site.default,
        },
        Some(ca.issue(&site.hosts, LOCAL_LEAF_VALIDITY).unwrap()),
    )]);
    let before = store.certificate("a.localhost").unwrap();
    reissue_local(&[(site.name.clone(), site.hosts.clone())], &ca, &store);
    let after = store.certificate("a.localhost").unwrap();
    assert_ne!(before.cert[0], after.cert[0]);
}

#[test]
fn a_stamp_changes_with_an_edit_and_with_a_replacement_by_rename() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(&path, "sites: []\n").unwrap();
    let stamp = || FileStamp::of(&std::fs::metadata(&path).unwrap());
    let first = stamp();
    assert_eq!(stamp(), first, "nothing changed");
    std::fs::write(&path, "sites: []\n# edited\n").unwrap();
    let edited = stamp();
    assert_ne!(edited, first, "an edit that changes the length");
    // Same length, same content, a new file renamed into place (as editors save).
    let tmp = dir.path().join("tmp.yaml");
    std::fs::write(&tmp, "sites: []\n# edited\n").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert_ne!(stamp(), edited, "a replacement by rename");
}
