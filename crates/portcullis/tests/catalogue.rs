//! The metric names in the code, the catalogue in docs/metrics.md and the Grafana dashboard
//! agree: every exported metric is documented, and the dashboard queries only metrics that
//! exist.
#![allow(clippy::unwrap_used)]
#![allow(
    clippy::disallowed_methods,
    reason = "reads the docs and the sources in a plain test, with no runtime to block"
)]

use std::collections::BTreeSet;
use std::path::Path;

use portcullis_proxy::metrics::names;

fn repo(file: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(file),
    )
    .unwrap()
}

/// `portcullis_…` identifiers in `text`, with histogram suffixes folded into their family.
fn mentioned(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("portcullis_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name)
            .to_owned();
        out.insert(family);
    }
    out
}

#[test]
fn every_metric_is_documented_and_the_dashboard_uses_only_real_ones() {
    let code: BTreeSet<String> = names::ALL
        .iter()
        .chain(portcullis_cluster::METRIC_NAMES)
        .map(|n| (*n).to_owned())
        .collect();
    let docs = mentioned(&repo("docs/metrics.md"));
    assert_eq!(docs, code, "docs/metrics.md and metrics::names disagree");

    let dashboard: serde_json::Value =
        serde_json::from_str(&repo("deploy/grafana/portcullis.json")).unwrap();
    let used = mentioned(&dashboard.to_string());
    let unknown: Vec<_> = used.difference(&code).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics that do not exist: {unknown:?}"
    );
    // Every family is on the dashboard somewhere.
    let unused: Vec<_> = code.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "metrics missing from the dashboard: {unused:?}"
    );
}
