//! `http`: what the plain listener does for each host of each site (a permanent redirect to
//! the same URL over HTTPS, or the page itself where the site serves plain HTTP by design),
//! that HSTS is sent over HTTPS where configured (and recommended where not) and never over
//! plain HTTP, and what an ACME HTTP-01 validation path gets.

use std::net::SocketAddr;

use portcullis_config::{PlainHttp, Site, SiteTls};

use super::probe::{self, Answer, ProbeError};
use super::{Context, Entry, Finding, probe_name};

const CHECK: &str = "http";

/// Where HTTP-01 validation requests arrive (RFC 8555 §8.3).
const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// The http findings of every selected site.
pub(super) async fn check(ctx: &Context) -> Vec<Entry> {
    super::per_site(ctx, check_site).await
}

/// A finding, or a probe that found nothing listening at an address (said once per site).
enum Outcome {
    Found(Finding),
    Refused(SocketAddr),
}

async fn check_site(ctx: &Context, site: &Site) -> Vec<Finding> {
    let hosts = site
        .hosts
        .iter()
        .map(|h| check_host(ctx, site, probe_name(h)));
    let outcomes: Vec<Outcome> = futures_util::future::join_all(hosts)
        .await
        .into_iter()
        .flatten()
        .collect();
    let mut findings = Vec::new();
    if ctx.http_target().is_none() {
        findings.push(Finding::warn(
            CHECK,
            "listen.http",
            "no plain HTTP listener: http:// links and typed addresses fail (a browser tries \
             http:// first for a name typed without a scheme, unless HSTS or a preload list \
             says otherwise), and ACME HTTP-01 cannot validate",
            "set `listen.http: 0.0.0.0:80` (it redirects to HTTPS), unless no client ever \
             comes over plain HTTP",
        ));
    }
    let mut refused: Vec<SocketAddr> = Vec::new();
    for outcome in outcomes {
        match outcome {
            Outcome::Found(f) => findings.push(f),
            Outcome::Refused(addr) if !refused.contains(&addr) => refused.push(addr),
            Outcome::Refused(_) => {}
        }
    }
    for addr in refused {
        findings.push(Finding::fail(
            CHECK,
            addr.to_string(),
            format!("nothing answers on {addr}: is the gateway running?"),
            "start the gateway (`portcullis run --config FILE`), then run the doctor again",
        ));
    }
    findings
}

/// Bracketed for a Host header and a URL when `name` is an IPv6 address.
fn authority(name: &str) -> String {
    if name.contains(':') {
        format!("[{name}]")
    } else {
        name.to_owned()
    }
}

/// A random-enough token, so no cache or real challenge answers the probe.
fn token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("portcullis-doctor-{:016x}", h.finish())
}

async fn check_host(ctx: &Context, site: &Site, name: String) -> Vec<Outcome> {
    let host = authority(&name);
    let t = ctx.timeout;
    let https = ctx.https_target();
    let acme_path = format!("{ACME_PREFIX}{}", token());
    let plain = async {
        match ctx.http_target() {
            Some(addr) => Some((
                addr,
                probe::bounded(t, probe::get_plain(addr, &host, "/", t)).await,
                probe::bounded(t, probe::get_plain(addr, &host, &acme_path, t)).await,
            )),
            None => None,
        }
    };
    let tls = probe::get_tls(https, &host, "/", t);
    let (plain, tls) = tokio::join!(plain, tls);

    let mut out = Vec::new();
    if let Some((addr, root, acme)) = plain {
        match root {
            Err(e) if refused(addr, &e, &mut out) => {}
            Err(e) => out.push(Outcome::Found(unreachable(
                format!("http://{host}/"),
                addr,
                &e,
            ))),
            Ok(answer) => {
                out.push(Outcome::Found(redirect(ctx, site, &host, &answer)));
                if let Some(sts) = answer.header("strict-transport-security") {
                    out.push(Outcome::Found(Finding::warn(
                        CHECK,
                        format!("http://{host}/"),
                        format!(
                            "the plain HTTP answer carries Strict-Transport-Security \
                             ({sts}); browsers ignore it there (RFC 6797 §8.1), it belongs \
                             on HTTPS answers only"
                        ),
                        "remove the header from the origin's plain HTTP answers; the gateway \
                         adds `hsts` to HTTPS answers only",
                    )));
                }
            }
        }
        match acme {
            Err(e) if refused(addr, &e, &mut out) => {}
            Err(_) => {} // The redirect finding above already says the listener fails.
            Ok(answer) => out.push(Outcome::Found(acme_path_finding(
                ctx, site, &host, &acme_path, &answer,
            ))),
        }
    }
    match tls {
        Err(e) if refused(https, &e, &mut out) => {}
        Err(e) => {
            if site.hsts.is_some() {
                out.push(Outcome::Found(Finding::warn(
                    CHECK,
                    format!("https://{host}/"),
                    format!("HSTS not checked: https://{host}/ did not answer: {e}"),
                    "see the listening and certificate checks for why",
                )));
            }
        }
        Ok(answer) => out.push(Outcome::Found(hsts(site, &host, &answer))),
    }
    out
}

/// Records a refused connection (said once per site); true when `e` is one.
fn refused(addr: SocketAddr, e: &ProbeError, out: &mut Vec<Outcome>) -> bool {
    let is = *e == ProbeError::Refused;
    if is {
        out.push(Outcome::Refused(addr));
    }
    is
}

fn unreachable(subject: String, addr: SocketAddr, e: &ProbeError) -> Finding {
    Finding::fail(
        CHECK,
        subject,
        format!("the plain HTTP listener {addr} did not answer: {e}"),
        "see the listening check; a firewall may drop the port",
    )
}

/// How the plain listener treats `/` for the site: the route for `/`, else the fallback.
fn plain_http_at_root(site: &Site) -> PlainHttp {
    site.routes
        .iter()
        .filter(|r| r.path == "/")
        .map(|r| r.plain_http)
        .next()
        .unwrap_or(site.plain_http)
}

/// `GET http://host/`: a permanent redirect to `https://host/`, or the page by design.
fn redirect(ctx: &Context, site: &Site, host: &str, answer: &Answer) -> Finding {
    let subject = format!("http://{host}/");
    let location = answer.header("location");
    if plain_http_at_root(site) == PlainHttp::Serve {
        let said = format!(
            "served over plain HTTP by design (plain_http: serve), answered {}",
            answer.status
        );
        return if site.hsts.is_some() {
            Finding::warn(
                CHECK,
                subject,
                format!(
                    "{said}; but the site sends HSTS, so browsers that once visited over HTTPS \
                     never use plain HTTP for it again"
                ),
                "drop `hsts` from the site if plain HTTP must keep working, or set \
                 `plain_http: redirect`",
            )
        } else {
            Finding::ok(CHECK, subject, said)
        };
    }
    let https_port = ctx.config.listen.https.port();
    let expected = [
        format!("https://{host}/"),
        format!("https://{host}:{https_port}/"),
    ];
    let to_https = location.is_some_and(|l| {
        expected
            .iter()
            .take(if https_port == 443 { 1 } else { 2 })
            .any(|e| e.eq_ignore_ascii_case(l))
    });
    let fix = "keep `plain_http: redirect` (the default) on the site and its `/` route, and \
               make sure nothing else holds the :80 listener";
    match (answer.status, location) {
        (301 | 308, Some(l)) if to_https => Finding::ok(
            CHECK,
            subject,
            format!("redirects to HTTPS ({} to {l})", answer.status),
        ),
        (302 | 303 | 307, Some(l)) if to_https => Finding::warn(
            CHECK,
            subject,
            format!(
                "redirects to HTTPS, but temporarily ({} to {l}): browsers ask plain HTTP \
                 again every time",
                answer.status
            ),
            fix,
        ),
        (300..=399, Some(l)) => Finding::fail(
            CHECK,
            subject,
            format!(
                "redirects elsewhere ({} to {l}), not to https://{host}/",
                answer.status
            ),
            fix,
        ),
        (status, _) => Finding::fail(
            CHECK,
            subject,
            format!("answered {status} instead of redirecting to https://{host}/"),
            fix,
        ),
    }
}

/// `GET https://host/`: the HSTS header as configured.
fn hsts(site: &Site, host: &str, answer: &Answer) -> Finding {
    let subject = format!("https://{host}/");
    let sent = answer.header("strict-transport-security");
    let Some(hsts) = &site.hsts else {
        return match sent {
            Some(v) => Finding::ok(
                CHECK,
                subject,
                format!("Strict-Transport-Security: {v} (sent by the origin)"),
            ),
            None => Finding::warn(
                CHECK,
                subject,
                "no Strict-Transport-Security: a browser's first request to an http:// link \
                 or a typed name goes out unencrypted, and can be intercepted",
                "set `hsts: true` on the site (max-age one year); add `include_subdomains` \
                 only when every subdomain serves HTTPS",
            ),
        };
    };
    let want = hsts.max_age.as_secs();
    let Some(v) = sent else {
        return Finding::fail(
            CHECK,
            subject,
            format!(
                "hsts is configured (max-age={want}) but https://{host}/ answered {} without \
                 Strict-Transport-Security",
                answer.status
            ),
            "check that this is the gateway answering on the HTTPS listener (see the \
             listening check), then reload it: `portcullis reload`",
        );
    };
    let max_age = v.split(';').find_map(|d| {
        let (k, val) = d.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| val.trim().trim_matches('"').parse::<u64>().ok())?
    });
    if max_age == Some(want) {
        Finding::ok(CHECK, subject, format!("Strict-Transport-Security: {v}"))
    } else {
        Finding::warn(
            CHECK,
            subject,
            format!(
                "Strict-Transport-Security: {v}, but the site configures max-age={want}: the \
                 origin's header wins, or the gateway runs an older config"
            ),
            "reload the gateway (`portcullis reload`), or remove the header at the origin",
        )
    }
}

/// `GET http://host/.well-known/acme-challenge/<random>`: HTTP-01 validations must reach
/// whoever answers them. The gateway answers its own tokens before routing, and redirects
/// unknown ones (like this probe's) to HTTPS with every other path; a redirect that is not
/// the gateway's own comes from an origin serving the path over plain HTTP, and sends an
/// outside ACME client's validations away.
fn acme_path_finding(
    ctx: &Context,
    site: &Site,
    host: &str,
    path: &str,
    answer: &Answer,
) -> Finding {
    let subject = format!("http://{host}{ACME_PREFIX}");
    let location = answer.header("location").unwrap_or("no Location");
    if !(300..400).contains(&answer.status) {
        return Finding::ok(
            CHECK,
            subject,
            format!(
                "not redirected: GET {path} answered {} over plain HTTP",
                answer.status
            ),
        );
    }
    if matches!(site.tls, SiteTls::Acme { .. }) {
        return Finding::ok(
            CHECK,
            subject,
            format!(
                "the gateway answers its own HTTP-01 tokens on plain HTTP before any redirect; \
                 an unknown token like this probe's is redirected ({} to {location})",
                answer.status
            ),
        );
    }
    if answer.status == 308 && gateway_redirect(ctx, host, path, location) {
        return Finding::ok(
            CHECK,
            subject,
            format!(
                "redirected to HTTPS with every other path ({} to {location}): the site's \
                 certificate does not come from the gateway's ACME; an ACME client elsewhere \
                 validating HTTP-01 through this gateway needs a route \
                 `{{path: {ACME_PREFIX}, plain_http: serve}}` to it",
                answer.status
            ),
        );
    }
    Finding::warn(
        CHECK,
        subject,
        format!(
            "GET {path} is redirected by the origin ({} to {location}): an HTTP-01 validation \
             through this path goes elsewhere, which fails when that place holds no valid \
             certificate or token yet",
            answer.status
        ),
        format!(
            "if an ACME client validates HTTP-01 through this gateway, make the origin answer \
             {ACME_PREFIX} over plain HTTP without redirecting, or route that path \
             (`{{path: {ACME_PREFIX}, plain_http: serve, origin: ...}}`) to the client; or use \
             `tls: acme` and let the gateway answer"
        ),
    )
}

/// Whether `location` is the gateway's own redirect of `path`: the same URL over HTTPS on
/// the HTTPS listener's port.
fn gateway_redirect(ctx: &Context, host: &str, path: &str, location: &str) -> bool {
    let port = ctx.config.listen.https.port();
    let expected = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    location.eq_ignore_ascii_case(&expected)
}
