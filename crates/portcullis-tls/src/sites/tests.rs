use std::path::Path;

use super::*;

/// Writes a fresh self-signed certificate for `host` and its key as `<name>.pem` and
/// `<name>.key`; with `key_of`, the key of another certificate instead.
fn write_pair(dir: &Path, name: &str, host: &str, key_of: Option<&str>) {
    let made = rcgen::generate_simple_self_signed(vec![host.to_owned()]).unwrap();
    let other = key_of.map(|h| rcgen::generate_simple_self_signed(vec![h.to_owned()]).unwrap());
    let key = other.as_ref().unwrap_or(&made).signing_key.serialize_pem();
    std::fs::write(dir.join(format!("{name}.pem")), made.cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key).unwrap();
}

/// Two sites with their own files; `a` also claims a host its certificate does not name.
fn config(dir: &Path) -> Config {
    let yaml = "sites:\n\
        \x20 - hosts: [a.test, x.test]\n    tls: { cert: a.pem, key: a.key }\n    respond: {}\n\
        \x20 - hosts: [b.test]\n    tls: { cert: b.pem, key: b.key }\n    respond: {}\n";
    portcullis_config::parse(yaml, dir).unwrap()
}

/// Writes both sites' files and loads them with nothing to reuse.
fn first_load(dir: &Path) -> (Config, SiteCerts) {
    crate::install_default_provider();
    write_pair(dir, "a", "a.test", None);
    write_pair(dir, "b", "b.test", None);
    let config = config(dir);
    let certs = load_site_certificates(&config, None, None).unwrap();
    (config, certs)
}

fn key(certs: &SiteCerts, i: usize) -> &Arc<CertifiedKey> {
    certs.sites[i].key.as_ref().unwrap()
}

#[test]
fn unchanged_files_keep_their_key_and_a_rewritten_file_is_loaded_again() {
    let dir = tempfile::tempdir().unwrap();
    let (first_config, first) = first_load(dir.path());

    // The same files read again: nothing is loaded anew, and the warnings are the same.
    let same_config = config(dir.path());
    let same = load_site_certificates(&same_config, None, Some((&first_config, &first))).unwrap();
    assert!(Arc::ptr_eq(key(&first, 0), key(&same, 0)));
    assert!(Arc::ptr_eq(key(&first, 1), key(&same, 1)));
    assert_eq!(same.warnings, first.warnings);
    assert_eq!(
        same.warnings
            .iter()
            .map(|w| w.key.as_str())
            .collect::<Vec<_>>(),
        ["sites[0].hosts[1]"]
    );

    // `b` rewritten in place (same paths, new certificate and key): only `b` is new.
    write_pair(dir.path(), "b", "b.test", None);
    let next_config = config(dir.path());
    let next = load_site_certificates(&next_config, None, Some((&same_config, &same))).unwrap();
    assert!(Arc::ptr_eq(key(&same, 0), key(&next, 0)));
    assert!(!Arc::ptr_eq(key(&same, 1), key(&next, 1)));
    let SiteTls::Files(files) = &next_config.sites[1].tls else {
        panic!("b has files")
    };
    assert_eq!(key(&next, 1).cert, files.chain);
    assert_ne!(key(&next, 1).cert, key(&same, 1).cert);
}

#[test]
fn a_rewritten_key_that_does_not_match_is_refused_despite_a_previous_load() {
    let dir = tempfile::tempdir().unwrap();
    let (first_config, first) = first_load(dir.path());

    write_pair(dir.path(), "b", "b.test", Some("elsewhere.test"));
    let broken = config(dir.path());
    let problems =
        load_site_certificates(&broken, None, Some((&first_config, &first))).unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["sites[1].tls.key"], "{problems:?}");
    assert!(
        problems[0].message.contains("does not match"),
        "{problems:?}"
    );
}

#[test]
fn a_site_without_a_certificate_resolves_to_the_default_one_or_none() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, _) = first_load(dir.path());
    // b has no certificate of its own; a is the default site.
    config.sites[1].tls = SiteTls::None;
    config.sites[0].default = true;
    let certs = load_site_certificates(&config, None, None).unwrap();
    // a's certificate names a.test only: check says b.test is not covered.
    assert!(
        certs.warnings.iter().any(|w| w
            .to_string()
            .starts_with("sites[1].hosts[0]: `b.test` (`tls: none`) gets the default site's")),
        "{:?}",
        certs.warnings
    );
    let store = CertStore::new();
    certs.publish(&config, &store);
    let a = key(&certs, 0);
    let served = store
        .resolve(Some("b.test"))
        .expect("the default certificate");
    assert!(Arc::ptr_eq(&served, a));
    assert!(
        store.missing().is_empty(),
        "b is not waiting for a certificate"
    );

    // With no default site, its names are refused as unclaimed ones are.
    config.sites[0].default = false;
    let store = CertStore::new();
    certs.publish(&config, &store);
    assert!(store.resolve(Some("b.test")).is_none());
    assert!(store.resolve(Some("a.test")).is_some());
}

fn files(config: &Config, i: usize) -> &CertKey {
    match &config.sites[i].tls {
        SiteTls::Files(files) => files,
        other => panic!("site {i} has no files: {other:?}"),
    }
}

#[test]
fn a_preloaded_key_is_served_only_for_the_chain_and_key_it_was_built_from() {
    let dir = tempfile::tempdir().unwrap();
    crate::install_default_provider();
    write_pair(dir.path(), "a", "a.test", None);
    write_pair(dir.path(), "b", "b.test", None);
    let config = config(dir.path());
    let (a, b) = (files(&config, 0), files(&config, 1));
    let built = certified_key(a.chain.clone(), a.key.clone_key()).unwrap();
    let mut preloaded = Preloaded::default();
    preloaded.insert(a, built.clone(), None);
    // `b`'s key under `b`'s path, but built from `a`'s files: not `b`'s certificate.
    let mut wrong = b.clone();
    wrong.chain = a.chain.clone();
    wrong.key = a.key.clone_key();
    preloaded.insert(&wrong, built.clone(), None);
    assert_eq!(preloaded.len(), 2);

    let certs = load_site_certificates_with(&config, None, None, &preloaded).unwrap();
    assert!(
        Arc::ptr_eq(key(&certs, 0), &built),
        "a's preloaded key is served"
    );
    assert!(
        !Arc::ptr_eq(key(&certs, 1), &built),
        "b's certificate is loaded anew"
    );
    assert_eq!(key(&certs, 1).cert, b.chain);
    // What the leaf says is read when the source did not give it: the host warning stays.
    assert_eq!(
        certs
            .warnings
            .iter()
            .map(|w| w.key.as_str())
            .collect::<Vec<_>>(),
        ["sites[0].hosts[1]"]
    );
}
