use std::time::Instant;

use super::build::*;

/// 5,000 Ingresses of two hosts each (TLS from 50 Secrets), 10,000 EndpointSlices: the time is printed (run with
/// `--nocapture`), not asserted.
#[test]
fn five_thousand_ingresses() {
    let mut s = world(Vec::new());
    s.services.clear();
    s.endpoint_slices.clear();
    // One wildcard certificate per namespace, shared by its Ingresses' hosts.
    let (crt, key) = cert_pem(&["*.example.com"]);
    for n in 0..50 {
        s.secrets.push(
            secret_with(
                &format!("ns{n}"),
                "wild",
                "kubernetes.io/tls",
                &[("tls.crt", crt.as_bytes()), ("tls.key", key.as_bytes())],
            )
            .into(),
        );
    }
    for i in 0..5_000 {
        let ns = format!("ns{}", i % 50);
        let svc = format!("svc{i}");
        s.services
            .push(service(&ns, &svc, &[(Some("http"), 80)]).into());
        for j in 0..2 {
            s.endpoint_slices.push(
                slice(
                    &ns,
                    &format!("{svc}-{j}"),
                    &svc,
                    &[(Some("http"), 8080)],
                    &[ready(&format!("10.{}.{}.{}", i / 250, i % 250, j + 1))],
                )
                .into(),
            );
        }
        s.ingresses.push(
            ingress(&ns, &format!("ing{i}"))
                .created(i64::from(i))
                .rule(
                    Some(&format!("a{i}.example.com")),
                    vec![prefix("/", &svc), path("/api", "Exact", &svc, "http")],
                )
                .rule(Some(&format!("b{i}.example.com")), vec![prefix("/", &svc)])
                .tls(
                    &[&format!("a{i}.example.com"), &format!("b{i}.example.com")],
                    Some("wild"),
                )
                .annotation("portcullis.dev/read-timeout", "30s")
                .build()
                .into(),
        );
    }
    let start = Instant::now();
    let t = crate::translate(&base(), &s, &crate::Options::default());
    let took = start.elapsed();
    println!(
        "translated 5,000 Ingresses / 10,000 hosts / 10,000 EndpointSlices in {:.1} ms",
        took.as_secs_f64() * 1000.0
    );
    assert!(
        t.problems.is_empty(),
        "{:?}",
        &t.problems[..3.min(t.problems.len())]
    );
    assert_eq!(t.config.sites.len(), 10_001);
    super::invariants(&t.config);
}
