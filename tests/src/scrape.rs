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
