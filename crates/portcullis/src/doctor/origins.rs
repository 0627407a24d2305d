//! `origin` checks: for each server of every origin a site proxies to, whether it can be
//! reached at all, then which modes work — `flexible` (plain HTTP), `full` (TLS, any
//! certificate), `strict` (TLS, chain and name verified) — each with the reason it fails,
//! compared with the configured mode. A `flexible` origin that redirects to HTTPS for the
//! same host is a redirect loop.

mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::future::join_all;
use portcullis_config::{
    Action, Mode, Origin, OriginServer, ProxyProtocolVersion, Site, Transport,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::probe::{self, ProbeError};
use super::{Context, Entry, Finding, probe_name};

const CHECK: &str = "origin";

/// How a probe says the origin refused it for want of a client certificate.
pub(super) const CLIENT_CERT: &str = "wants a client certificate";

/// The origin findings.
pub(super) async fn check(ctx: &Context) -> Vec<Entry> {
    let mut jobs = Vec::new();
    for site in &ctx.sites {
        let mut seen: Vec<(&str, u16, &Transport)> = Vec::new();
        let actions = site
            .routes
            .iter()
            .map(|r| &r.action)
            .chain(site.fallback.as_ref());
        for action in actions {
            let Action::Proxy(origin) = action else {
                continue;
            };
            for server in &origin.servers {
                let key = (server.host.as_str(), server.port, &origin.transport);
                if seen.contains(&key) {
                    continue;
                }
                seen.push(key);
                jobs.push(check_server(ctx, site, origin, server));
            }
        }
    }
    join_all(jobs).await
}

/// The first address `host:port` resolves to.
pub(super) async fn resolve(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<SocketAddr, ProbeError> {
    probe::bounded(timeout, async {
        tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| ProbeError::Connect(format!("cannot resolve `{host}`: {e}")))?
            .next()
            .ok_or_else(|| ProbeError::Connect(format!("`{host}` has no address")))
    })
    .await
}

/// A connection to an origin server, opened with the PROXY protocol header the gateway
/// sends when the origin expects one (a `LOCAL` header: no client address to carry), so
/// such an origin answers the probes.
pub(super) async fn connect(
    addr: SocketAddr,
    origin: &Origin,
    timeout: Duration,
) -> Result<TcpStream, ProbeError> {
    let mut tcp = probe::connect(addr, timeout).await?;
    let header: &[u8] = match origin.proxy_protocol {
        None => return Ok(tcp),
        Some(ProxyProtocolVersion::V1) => b"PROXY UNKNOWN\r\n",
        Some(ProxyProtocolVersion::V2) => &PROXY_V2_LOCAL,
    };
    probe::bounded(timeout, async {
        tcp.write_all(header)
            .await
            .map_err(|e| ProbeError::Connect(format!("cannot send the PROXY header: {e}")))
    })
    .await?;
    Ok(tcp)
}

/// PROXY protocol v2, command `LOCAL`, no addresses (a health check's header).
const PROXY_V2_LOCAL: [u8; 16] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x20, 0x00, 0x00, 0x00,
];

/// How one mode came out.
#[derive(Debug, Clone)]
pub(super) struct Tried {
    /// Whether the mode works.
    pub works: bool,
    /// What happened, as evidence.
    pub detail: String,
    /// The failure was "not this protocol": a TLS handshake met plain HTTP or nothing, or
    /// plain HTTP met TLS.
    pub wrong_protocol: bool,
}

impl Tried {
    fn ok(detail: impl Into<String>) -> Self {
        Self {
            works: true,
            detail: detail.into(),
            wrong_protocol: false,
        }
    }

    fn failed(detail: impl Into<String>) -> Self {
        Self {
            works: false,
            detail: detail.into(),
            wrong_protocol: false,
        }
    }
}

/// The flexible probe: also a redirect loop, when there is one.
struct Flexible {
    tried: Tried,
    /// `Location` of a redirect to `https://` for the same host.
    loop_to: Option<(u16, String)>,
}

async fn check_server(ctx: &Context, site: &Site, origin: &Origin, server: &OriginServer) -> Entry {
    let subject = server.url.clone();
    let host = site.hosts.first().map(probe_name).unwrap_or_default();
    let addr = match resolve(&server.host, server.port, ctx.timeout).await {
        Ok(addr) => addr,
        Err(e) => {
            return Entry::site(
                site,
                Finding::fail(
                    CHECK,
                    subject,
                    format!("the origin cannot be reached: {e}"),
                    "check the origin's host name in the config and this machine's DNS",
                ),
            );
        }
    };
    if let Err(e) = probe::connect(addr, ctx.timeout).await {
        let why = match e {
            ProbeError::Refused => format!("nothing listens on {addr}: connection refused"),
            ProbeError::Timeout(t) => {
                format!(
                    "{addr} does not accept a connection within {t:?} (a firewall dropping it, or the host is down)"
                )
            }
            e => format!("{addr}: {e}"),
        };
        return Entry::site(
            site,
            Finding::fail(
                CHECK,
                subject,
                format!("the origin cannot be reached: {why}"),
                format!(
                    "start the origin server on {}:{} or correct its URL in the config; the gateway answers 502 meanwhile",
                    server.host, server.port
                ),
            ),
        );
    }
    let (flexible, full, strict) = tokio::join!(
        flexible(addr, &host, origin, ctx.timeout),
        tls::full(addr, &host, origin, server, ctx.timeout),
        tls::strict(addr, &host, origin, server, ctx.timeout),
    );
    Entry::site(
        site,
        verdict(
            origin,
            server,
            flexible.tried,
            flexible.loop_to,
            full,
            strict,
        ),
    )
}

async fn flexible(addr: SocketAddr, host: &str, origin: &Origin, timeout: Duration) -> Flexible {
    if origin.h2c {
        return Flexible {
            tried: h2c(addr, host, origin, timeout).await,
            loop_to: None,
        };
    }
    let answer = match connect(addr, origin, timeout).await {
        Ok(tcp) => probe::get(tcp, host, "/", timeout).await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(a) => {
            let location = a.header("location").unwrap_or_default().to_owned();
            if (300..400).contains(&a.status) && https_same_host(&location, host) {
                Flexible {
                    tried: Tried::failed(format!(
                        "GET / over plain HTTP is answered {} to {location}",
                        a.status
                    )),
                    loop_to: Some((a.status, location)),
                }
            } else {
                Flexible {
                    tried: Tried::ok(format!("GET / over plain HTTP is answered {}", a.status)),
                    loop_to: None,
                }
            }
        }
        Err(e) => Flexible {
            tried: Tried {
                works: false,
                detail: format!("no plain HTTP answer ({e})"),
                wrong_protocol: matches!(e, ProbeError::Http(_)),
            },
            loop_to: None,
        },
    }
}

/// `h2c: true`: HTTP/2 with prior knowledge, as the gateway speaks to it.
async fn h2c(addr: SocketAddr, host: &str, origin: &Origin, timeout: Duration) -> Tried {
    let outcome = probe::bounded(timeout, async {
        let mut tcp = connect(addr, origin, timeout).await?;
        tls::ask(&mut tcp, host, true)
            .await
            .map_err(|e| ProbeError::Http(e.to_string()))
    })
    .await;
    match outcome {
        Ok(tls::Reply::H2) => {
            Tried::ok("HTTP/2 with prior knowledge (h2c): the origin sent its SETTINGS")
        }
        Ok(_) => Tried {
            works: false,
            detail: "no HTTP/2 answer to the h2c preface (`h2c: true` needs an origin speaking HTTP/2 without TLS)".to_owned(),
            wrong_protocol: true,
        },
        Err(e) => Tried::failed(format!("no h2c answer ({e})")),
    }
}

/// Whether `location` is an `https://` URL for `host` (any port).
pub(super) fn https_same_host(location: &str, host: &str) -> bool {
    let Some(rest) = location
        .get(..8)
        .filter(|s| s.eq_ignore_ascii_case("https://"))
        .map(|_| &location[8..])
    else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let name = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    name.eq_ignore_ascii_case(host)
}

/// The config change that selects `mode` for `server`.
fn mode_fix(mode: Mode, server: &OriginServer) -> String {
    let hostport = if server.host.contains(':') {
        format!("[{}]:{}", server.host, server.port)
    } else {
        format!("{}:{}", server.host, server.port)
    };
    match mode {
        Mode::Flexible => {
            format!("use `url: http://{hostport}` (mode `flexible`): the origin speaks plain HTTP")
        }
        Mode::Full => format!(
            "use `url: https://{hostport}` with `mode: full` (TLS, certificate not verified)"
        ),
        Mode::Strict => {
            format!("use `url: https://{hostport}` with `mode: strict` (certificate verified)")
        }
    }
}

/// The finding: the configured mode against what works.
fn verdict(
    origin: &Origin,
    server: &OriginServer,
    mut flexible: Tried,
    loop_to: Option<(u16, String)>,
    mut full: Tried,
    mut strict: Tried,
) -> Finding {
    // A TLS probe meeting a plain HTTP server (or the reverse) says so plainly.
    if flexible.works || loop_to.is_some() {
        for t in [&mut full, &mut strict] {
            if !t.works && t.wrong_protocol {
                t.detail = format!("it answered in plain HTTP, not TLS ({})", t.detail);
            }
        }
    }
    if full.works && !flexible.works && flexible.wrong_protocol {
        flexible.detail = format!("it speaks TLS, not plain HTTP ({})", flexible.detail);
    }
    let evidence = format!(
        "flexible: {}; full: {}; strict: {}",
        flexible.detail, full.detail, strict.detail
    );
    let configured = origin.mode();
    let strongest = [
        (Mode::Strict, &strict),
        (Mode::Full, &full),
        (Mode::Flexible, &flexible),
    ]
    .into_iter()
    .find(|(_, t)| t.works)
    .map(|(m, _)| m);
    let works = match configured {
        Mode::Flexible => flexible.works,
        Mode::Full => full.works,
        Mode::Strict => strict.works,
    };
    let subject = server.url.clone();
    let name = configured.as_str();
    if let (Mode::Flexible, Some((status, location))) = (configured, &loop_to) {
        let tls = match strongest {
            Some(m @ (Mode::Strict | Mode::Full)) => {
                format!("{} works: {}", m.as_str(), mode_fix(m, server))
            }
            _ => "use `mode: full` or `strict` once the origin serves TLS".to_owned(),
        };
        return Finding::fail(
            CHECK,
            subject,
            format!(
                "redirect loop: the origin redirects to HTTPS ({status} to {location}), the gateway asks it over HTTP again; browsers show \"too many redirects\". {evidence}"
            ),
            format!("{tls}; or turn off the origin's HTTPS redirect"),
        );
    }
    if !works {
        let (headline, fix) = match strongest {
            Some(m) => (
                format!("configured `{name}` does not work; `{}` works", m.as_str()),
                mode_fix(m, server),
            ),
            None if [&full, &strict].iter().any(|t| t.detail.contains(CLIENT_CERT)) => (
                format!("configured `{name}` does not work: the origin wants a client certificate"),
                "give the origin `client_cert: {cert: FILE, key: FILE}` with a certificate it accepts (authenticated origin pulls)"
                    .to_owned(),
            ),
            None => (
                format!("configured `{name}` does not work, and neither does any other mode"),
                "make the origin answer HTTP (plain or TLS) on this address, or correct its URL"
                    .to_owned(),
            ),
        };
        return Finding::fail(CHECK, subject, format!("{headline}. {evidence}"), fix);
    }
    match configured {
        Mode::Strict => Finding::ok(CHECK, subject, format!("`strict` works. {evidence}")),
        _ if strict.works => Finding::warn(
            CHECK,
            subject,
            format!(
                "configured `{name}`, but `strict` works: the origin's certificate verifies, so the connection can be authenticated. {evidence}"
            ),
            mode_fix(Mode::Strict, server),
        ),
        _ => Finding::ok(
            CHECK,
            subject,
            format!("`{name}` works; `strict` does not. {evidence}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirect_to_https_for_the_same_host_is_recognised() {
        assert!(https_same_host("https://example.com/", "example.com"));
        assert!(https_same_host(
            "HTTPS://Example.com:443/a?b",
            "example.com"
        ));
        assert!(https_same_host("https://example.com", "example.com"));
        assert!(!https_same_host("https://www.example.com/", "example.com"));
        assert!(!https_same_host("http://example.com/", "example.com"));
        assert!(!https_same_host("/login", "example.com"));
        assert!(!https_same_host("https://example.com.evil/", "example.com"));
        assert!(https_same_host("https://[::1]:8443/", "::1"));
    }
}
