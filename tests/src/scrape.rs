//! Reading the admin listener's `/metrics`.

use std::net::SocketAddr;

/// `GET /metrics` on the admin listener at `admin`; the page's text.
pub async fn scrape(admin: SocketAddr) -> String {
    let resp = crate::plain::get(admin, "localhost", "/metrics").await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    resp.text
}

/// The sum of the samples of `name` carrying every label in `labels`.
pub fn metric(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let ours = (rest.is_empty() || rest.starts_with('{'))
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            ours.then(|| value.parse::<f64>().unwrap())
        })
        .sum()
}

/// The value of the sample written exactly `series` (`name{labels}` as the page spells
/// it); panics if the page has none.
pub fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{page}"))
        .trim()
        .parse()
        .unwrap()
}

/// Asserts that `promtool check metrics` (Debian package `prometheus`; `.ci/run` installs
/// it) finds nothing to say of `page`, a scraped page with or without its HTTP head.
#[allow(
    clippy::disallowed_methods,
    reason = "a short-lived child process fed a page already in memory"
)]
pub fn assert_promtool_clean(page: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let page = page.split_once("\r\n\r\n").map_or(page, |(_, body)| body);
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`; .ci/run installs it)");
    check
        .stdin
        .take()
        .expect("piped")
        .write_all(page.as_bytes())
        .expect("promtool reads its input");
    let out = check.wait_with_output().expect("promtool runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}"
    );
}
