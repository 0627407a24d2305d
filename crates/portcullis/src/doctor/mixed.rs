//! `mixed-content`: each site's start page, and the pages of the site's hosts it links to,
//! fetched through the live HTTPS listener and read with a real HTML parser ([`scan`]); every
//! `http://` subresource is listed, split into what browsers block and what they upgrade
//! or warn about, and judged against the site's `mixed_content` setting.
//!
//! Bounded: at most `--max-pages` pages per site, each body cut at 4 MiB, each fetch within
//! the probe timeout and the whole crawl of a site within [`CRAWL_TIMEOUTS`] timeouts.
//! Requests carry no `Accept-Encoding`, so pages come uncompressed.

mod scan;
mod url;

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use portcullis_config::{MixedContent, Site};

use super::probe::{Answer, ProbeError};
use super::{Context, Entry, Finding, probe_name};
use scan::Kind;
use url::Loc;

const CHECK: &str = "mixed-content";

/// Redirects followed from one link, within the site's host.
const MAX_REDIRECTS: usize = 5;

/// URLs named in one finding; the rest are counted.
const MAX_LISTED: usize = 20;

/// The whole crawl of one site takes at most this many probe timeouts.
const CRAWL_TIMEOUTS: u32 = 3;

/// The mixed-content findings of every selected site.
pub(super) async fn check(ctx: &Context) -> Vec<Entry> {
    super::per_site(ctx, check_site).await
}

/// A page with `http://` subresources.
struct Dirty {
    path: String,
    insecure: Vec<(String, Kind)>,
    /// Its policy (header or `<meta>`) has `upgrade-insecure-requests`.
    upgraded: bool,
}

async fn check_site(ctx: &Context, site: &Site) -> Vec<Finding> {
    let Some(first) = site.hosts.first() else {
        return Vec::new();
    };
    let name = probe_name(first);
    let addr = ctx.https_target();
    // An IPv6 literal goes in brackets, as in a URL.
    let start = if name.contains(':') {
        Loc::https(&format!("[{name}]"), "/")
    } else {
        Loc::https(&name, "/")
    };
    let start_url = start.to_string();
    let deadline = Instant::now() + ctx.timeout * CRAWL_TIMEOUTS;
    let mut queue = VecDeque::from([start]);
    let mut seen: HashSet<String> = HashSet::from(["/".to_owned()]);
    let mut read: HashSet<String> = HashSet::new();
    let mut checked = 0usize;
    let mut dirty = Vec::new();
    let mut cut_short = false;
    while let Some(loc) = queue.pop_front() {
        if checked >= ctx.max_pages {
            cut_short = true;
            break;
        }
        let is_start = checked == 0;
        let left = deadline.saturating_duration_since(Instant::now());
        let fetched = match tokio::time::timeout(left, fetch(ctx, site, loc)).await {
            Ok(fetched) => fetched,
            Err(_) => {
                cut_short = true;
                break;
            }
        };
        let (loc, answer) = match fetched {
            Ok(page) => page,
            Err(Fetch::Probe(ProbeError::Refused)) if is_start => {
                return vec![Finding::fail(
                    CHECK,
                    addr.to_string(),
                    format!("nothing answers on {addr}: is the gateway running?"),
                    "start the gateway (`portcullis run --config FILE`), then run the doctor again",
                )];
            }
            Err(e) if is_start => {
                return vec![Finding::warn(
                    CHECK,
                    start_url,
                    format!("the start page could not be fetched, so it was not checked: {e}"),
                    "see the listening, certificate and origin checks for why",
                )];
            }
            Err(_) => continue,
        };
        if !is_html(&answer) {
            if is_start {
                return vec![Finding::ok(
                    CHECK,
                    start_url,
                    format!(
                        "the start page is not HTML ({}): nothing to check",
                        answer.header("content-type").unwrap_or("no Content-Type")
                    ),
                )];
            }
            continue;
        }
        if !(200..300).contains(&answer.status) {
            if is_start {
                return vec![Finding::warn(
                    CHECK,
                    start_url,
                    format!(
                        "the start page answered {}, so it was not checked",
                        answer.status
                    ),
                    "see the origin check; run the doctor again once the site serves its page",
                )];
            }
            continue;
        }
        // A link may redirect to a page already read.
        if !read.insert(loc.path_only().to_owned()) {
            continue;
        }
        checked += 1;
        let page = scan::scan(&answer.body, &loc);
        for link in page.links {
            // Any host of the site is the same site; its pages count once by path.
            if in_site(site, link.host()) && seen.insert(link.path_only().to_owned()) {
                queue.push_back(Loc::https(link.host(), link.path_only()));
            }
        }
        if !page.insecure.is_empty() {
            dirty.push(Dirty {
                path: loc.path_only().to_owned(),
                insecure: page.insecure,
                upgraded: page.meta_upgrade || csp_upgrades(&answer),
            });
        }
    }
    if dirty.is_empty() {
        let mut message = format!(
            "{checked} {} checked, no http:// subresources",
            if checked == 1 { "page" } else { "pages" }
        );
        if cut_short {
            message.push_str(" (stopped at the page or time limit: --max-pages, --timeout)");
        }
        return vec![Finding::ok(CHECK, start_url, message)];
    }
    dirty.iter().map(|d| judge(site, d)).collect()
}

/// Why a page could not be read.
#[derive(Debug, thiserror::Error)]
enum Fetch {
    #[error("{0}")]
    Probe(ProbeError),
    #[error("redirected to {0}, outside the site")]
    Elsewhere(String),
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
}

/// `GET https://{host}{path}`, following redirects that stay within the site's hosts (an
/// apex redirected to `www`, a path to its canonical form). Every request goes to the
/// HTTPS listener, by SNI and `Host`.
async fn fetch(ctx: &Context, site: &Site, mut loc: Loc) -> Result<(Loc, Answer), Fetch> {
    for _ in 0..=MAX_REDIRECTS {
        let answer = super::probe::get_tls(ctx.https_target(), loc.host(), &loc.path, ctx.timeout)
            .await
            .map_err(Fetch::Probe)?;
        let location = answer.header("location");
        match location {
            Some(location) if (300..400).contains(&answer.status) => {
                let next = loc
                    .join(location)
                    .ok_or_else(|| Fetch::Elsewhere(location.to_owned()))?;
                if !in_site(site, next.host()) {
                    return Err(Fetch::Elsewhere(next.to_string()));
                }
                loc = Loc::https(next.host(), &next.path);
            }
            _ => return Ok((loc, answer)),
        }
    }
    Err(Fetch::TooManyRedirects)
}

/// Whether `host` (from a URL) is one of the site's hosts.
fn in_site(site: &Site, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    site.hosts.iter().any(|h| h.matches(&host))
}

fn is_html(answer: &Answer) -> bool {
    answer
        .header("content-type")
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| {
            let t = t.trim();
            t.eq_ignore_ascii_case("text/html") || t.eq_ignore_ascii_case("application/xhtml+xml")
        })
}

/// Whether an enforced `Content-Security-Policy` header upgrades the page's requests.
fn csp_upgrades(answer: &Answer) -> bool {
    answer
        .headers
        .get_all(http::header::CONTENT_SECURITY_POLICY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(scan::policy_upgrades)
}

/// One page's finding.
fn judge(site: &Site, page: &Dirty) -> Finding {
    let (list, active) = describe(&page.insecure);
    let n = page.insecure.len();
    let subject = page.path.clone();
    let fix = "set `mixed_content: upgrade` on the site (browsers fetch them over HTTPS) or \
               `mixed_content: rewrite` (the gateway rewrites them to https://), or change \
               them to https:// at the origin";
    let broken = |message: String, fix: &str| {
        if active {
            Finding::fail(CHECK, subject.clone(), message, fix)
        } else {
            Finding::warn(CHECK, subject.clone(), message, fix)
        }
    };
    match site.mixed_content {
        _ if page.upgraded && site.mixed_content == MixedContent::Upgrade => Finding::ok(
            CHECK,
            subject,
            format!(
                "{n} http:// {}, upgraded by the browser under the CSP the gateway adds \
                 (mixed_content: upgrade): {list}; each must exist over HTTPS",
                subresources(n)
            ),
        ),
        _ if page.upgraded => Finding::ok(
            CHECK,
            subject,
            format!(
                "{n} http:// {}, upgraded by the browser under the page's own \
                 upgrade-insecure-requests policy: {list}; each must exist over HTTPS",
                subresources(n)
            ),
        ),
        MixedContent::Off => broken(list, fix),
        MixedContent::Upgrade => broken(
            format!(
                "mixed_content: upgrade is set but the page came without \
                 upgrade-insecure-requests in its Content-Security-Policy (is it served \
                 as text/html?); {list}"
            ),
            "make sure the origin sends the page as `Content-Type: text/html`, or change the \
             URLs to https:// at the origin",
        ),
        MixedContent::Rewrite { .. } => broken(
            format!(
                "mixed_content: rewrite left these in the page (on hosts neither served by \
                 this gateway over HTTPS nor listed under the site's rewrite.hosts, on a port \
                 other than 80 or the HTTPS listener's, or in CSS, which it does not rewrite): \
                 {list}"
            ),
            "list the hosts that serve HTTPS under the site's `rewrite: {hosts: [...]}`, add \
             `upgrade-insecure-requests` for what CSS loads, or change the URLs at the origin",
        ),
    }
}

fn subresources(n: usize) -> &'static str {
    if n == 1 {
        "subresource"
    } else {
        "subresources"
    }
}

/// The page's `http://` URLs in words, blocked ones first, and whether any is blocked.
fn describe(insecure: &[(String, Kind)]) -> (String, bool) {
    let (active, passive): (Vec<_>, Vec<_>) = insecure.iter().partition(|(_, k)| k.active());
    let mut budget = MAX_LISTED;
    let mut parts = Vec::new();
    if !active.is_empty() {
        parts.push(format!(
            "blocks {} active: {}",
            active.len(),
            listed(&active, &mut budget)
        ));
    }
    if !passive.is_empty() {
        parts.push(format!(
            "{} passive (upgraded to HTTPS or loaded with a warning): {}",
            passive.len(),
            listed(&passive, &mut budget)
        ));
    }
    (parts.join("; "), !active.is_empty())
}

fn listed(items: &[&(String, Kind)], budget: &mut usize) -> String {
    let shown = items.len().min(*budget);
    *budget -= shown;
    let mut text = items[..shown]
        .iter()
        .map(|(u, k)| format!("{u} ({})", k.name()))
        .collect::<Vec<_>>()
        .join(", ");
    let rest = items.len() - shown;
    if rest > 0 {
        if shown == 0 {
            text = format!("{rest} not listed");
        } else {
            text.push_str(&format!(" and {rest} more"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_list_blocked_urls_first_and_count_past_twenty() {
        let mut insecure: Vec<(String, Kind)> = (0..25)
            .map(|i| (format!("http://i.test/{i}.png"), Kind::Image))
            .collect();
        insecure.insert(3, ("http://cdn.test/app.js".into(), Kind::Script));
        let (text, active) = describe(&insecure);
        assert!(active);
        assert!(
            text.starts_with("blocks 1 active: http://cdn.test/app.js (script); 25 passive"),
            "{text}"
        );
        assert!(
            text.contains("http://i.test/18.png (img) and 6 more"),
            "{text}"
        );
        assert!(!text.contains("19.png"), "{text}");
        let (text, active) = describe(&insecure[..2]);
        assert!(!active);
        assert!(text.starts_with("2 passive"), "{text}");
    }
}
