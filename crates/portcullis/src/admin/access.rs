//! Who may use the admin listener. A browser on the same machine can reach a loopback
//! listener too: a page from any site can send it a "simple" cross-origin POST (no
//! preflight), and DNS rebinding can point a name the page controls at 127.0.0.1 and read
//! the answers. So, as Caddy's admin endpoint does, every request must name the listener by
//! a loopback name, its own address or an `admin.allowed_hosts` entry in `Host`, and must
//! not come from another site's page (`Origin`, `Sec-Fetch-Site`). With `admin.token_file`
//! the endpoints that change or reveal the configuration also want the bearer token.

use std::net::IpAddr;

use http::header::{AUTHORIZATION, HOST, ORIGIN};
use http::{HeaderMap, Request, StatusCode, Version};
use portcullis_config::Admin;

/// Why a request was refused, and what to tell its sender.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// HTTP/1.1 without `Host`.
    NoHost,
    /// `Host` (or the request target's authority) names something else, as a rebinding
    /// page's name would.
    Host(String),
    /// Sent by a page of another origin.
    CrossSite(String),
    /// The endpoint wants the token and it was missing or wrong.
    Token,
}

impl Refusal {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Self::NoHost => StatusCode::BAD_REQUEST,
            Self::Host(_) | Self::CrossSite(_) => StatusCode::FORBIDDEN,
            Self::Token => StatusCode::UNAUTHORIZED,
        }
    }

    /// One line saying why, and which setting helps when one does.
    pub(super) fn message(&self) -> String {
        match self {
            Self::NoHost => "a Host header is required\n".into(),
            Self::Host(host) => format!(
                "Host `{host}` is not allowed on the admin listener: use localhost, a loopback \
                 address or the listener's own address, or add the name to admin.allowed_hosts\n"
            ),
            Self::CrossSite(why) => format!(
                "the admin listener does not answer requests from web pages of other origins ({why})\n"
            ),
            Self::Token => "this endpoint needs `Authorization: Bearer <token>` with the token \
                            in admin.token_file\n"
                .into(),
        }
    }
}

/// Checks `Host`, `Origin` and `Sec-Fetch-Site`: every endpoint, token or not. `local` is
/// the address a TCP connection was accepted on, which a prober that dialled the pod's IP
/// (Prometheus, a kubelet) sends as `Host`.
pub(super) fn check_request<B>(
    req: &Request<B>,
    settings: &Admin,
    local: Option<IpAddr>,
) -> Result<(), Refusal> {
    let headers = req.headers();
    let host = match headers.get(HOST) {
        Some(h) => Some(h.to_str().map_err(|_| Refusal::Host("?".into()))?),
        // HTTP/1.0 may leave Host out; browsers never do, so that is no rebinding.
        None if req.version() == Version::HTTP_10 => None,
        None => return Err(Refusal::NoHost),
    };
    // An absolute-form target (`POST http://name/reload`) names the host too, and wins.
    for authority in host
        .into_iter()
        .chain(req.uri().authority().map(|a| a.as_str()))
    {
        if !host_allowed(authority, settings, local) {
            return Err(Refusal::Host(shorten(authority)));
        }
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.as_bytes();
        if site.eq_ignore_ascii_case(b"cross-site") || site.eq_ignore_ascii_case(b"same-site") {
            return Err(Refusal::CrossSite(format!(
                "Sec-Fetch-Site: {}",
                String::from_utf8_lossy(site)
            )));
        }
    }
    if let Some(origin) = headers.get(ORIGIN) {
        // Only a page served by this very listener may send a request with an `Origin`,
        // and it serves none; a browser sends one with every cross-origin request and
        // with every POST, so the "simple" `text/plain` POST stops here.
        let same = host.is_some_and(|host| {
            ["http://", "https://"].iter().any(|scheme| {
                origin.as_bytes().len() == scheme.len() + host.len()
                    && origin.as_bytes()[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes())
                    && origin.as_bytes()[scheme.len()..].eq_ignore_ascii_case(host.as_bytes())
            })
        });
        if !same {
            return Err(Refusal::CrossSite(format!(
                "Origin: {}",
                shorten(&String::from_utf8_lossy(origin.as_bytes()))
            )));
        }
    }
    Ok(())
}

/// Checks the bearer token, when the configuration has one.
pub(super) fn check_token(headers: &HeaderMap, settings: &Admin) -> Result<(), Refusal> {
    let Some(token) = &settings.token else {
        return Ok(());
    };
    let presented = headers
        .get(AUTHORIZATION)
        .map(|v| v.as_bytes())
        .and_then(|v| {
            let (scheme, rest) = v.split_at_checked(7)?;
            scheme
                .eq_ignore_ascii_case(b"bearer ")
                .then(|| rest.trim_ascii())
        });
    match presented {
        Some(p) if token.matches(p) => Ok(()),
        _ => Err(Refusal::Token),
    }
}

/// Whether `authority` (a `Host` value: name or address, maybe with a port) names this
/// listener. Ports are not compared: a rebinding page needs a name it controls, whatever
/// the port, and a listener published on another port (a container's) stays reachable.
fn host_allowed(authority: &str, settings: &Admin, local: Option<IpAddr>) -> bool {
    let host = strip_port(authority)
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if let Ok(ip) = host.parse::<IpAddr>() {
        let ip = ip.to_canonical();
        return ip.is_loopback()
            || local.is_some_and(|local| ip == local.to_canonical())
            || settings.allowed_hosts.contains(&ip.to_string());
    }
    host == "localhost" || settings.allowed_hosts.contains(&host)
}

/// `name:port` → `name`, `[::1]:port` → `::1`.
fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    match authority.rsplit_once(':') {
        // One colon: a port. More: an IPv6 address without brackets, as no Host should be.
        Some((host, _)) if !host.contains(':') => host,
        _ => authority,
    }
}

/// Enough of a client's text to recognise it in the refusal, and no more.
fn shorten(text: &str) -> String {
    text.chars().take(100).collect()
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    reason = "tests write their fixtures and wait from outside the served path"
)]
mod tests {
    use super::*;

    use std::net::SocketAddr;

    fn settings(allowed: &[&str], token: bool) -> Admin {
        let token = token.then(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t");
            std::fs::write(&path, "tok\n").unwrap();
            portcullis_config::AdminToken::read(&path).unwrap()
        });
        Admin {
            listen: None,
            token,
            allowed_hosts: allowed.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::post("/reload");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn host_must_name_loopback_this_listener_or_an_allowed_name() {
        let local: SocketAddr = "10.1.2.3:9901".parse().unwrap();
        let s = settings(&["admin.gw.svc"], false);
        let local = Some(local.ip());
        let check = |host: &str| check_request(&req(&[("host", host)]), &s, local);
        for ok in [
            "localhost",
            "LOCALHOST:9901",
            "localhost.:80",
            "127.0.0.1",
            "127.8.9.10:9901",
            "[::1]:9901",
            "[::ffff:127.0.0.1]",
            "10.1.2.3:9901",
            "10.1.2.3:31000",
            "admin.gw.svc:9901",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for refused in [
            "evil.example",
            "evil.example:9901",
            "localhost.evil.example",
            "10.1.2.4:9901",
            "[::2]:9901",
            "",
        ] {
            assert!(matches!(check(refused), Err(Refusal::Host(_))), "{refused}");
        }
        let no_host = Request::post("/reload").body(()).unwrap();
        assert_eq!(check_request(&no_host, &s, local), Err(Refusal::NoHost));
        let mut http10 = Request::get("/healthz").body(()).unwrap();
        *http10.version_mut() = Version::HTTP_10;
        assert_eq!(check_request(&http10, &s, local), Ok(()));
        let absolute = Request::post("http://evil.example/reload")
            .header("host", "localhost")
            .body(())
            .unwrap();
        assert!(matches!(
            check_request(&absolute, &s, local),
            Err(Refusal::Host(_))
        ));
    }

    #[test]
    fn requests_from_other_origins_are_refused() {
        let local = Some("127.0.0.1".parse().unwrap());
        let s = settings(&[], false);
        let check = |h: &[(&str, &str)]| check_request(&req(h), &s, local);
        let host = ("host", "127.0.0.1:9901");
        assert_eq!(check(&[host, ("origin", "http://127.0.0.1:9901")]), Ok(()));
        assert_eq!(check(&[host, ("sec-fetch-site", "same-origin")]), Ok(()));
        assert_eq!(check(&[host, ("sec-fetch-site", "none")]), Ok(()));
        for refused in [
            vec![host, ("origin", "http://evil.example")],
            vec![host, ("origin", "http://127.0.0.1:3000")],
            vec![host, ("origin", "null")],
            vec![host, ("sec-fetch-site", "cross-site")],
            vec![host, ("sec-fetch-site", "same-site")],
        ] {
            assert!(
                matches!(check(&refused), Err(Refusal::CrossSite(_))),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn the_token_is_a_bearer_token() {
        let s = settings(&[], true);
        let check = |v: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = v {
                h.insert(AUTHORIZATION, v.parse().unwrap());
            }
            check_token(&h, &s)
        };
        assert_eq!(check(Some("Bearer tok")), Ok(()));
        assert_eq!(check(Some("bearer  tok ")), Ok(()));
        for refused in [None, Some("Bearer tokx"), Some("Bearer"), Some("Basic tok")] {
            assert_eq!(check(refused), Err(Refusal::Token), "{refused:?}");
        }
        assert_eq!(
            check_token(&HeaderMap::new(), &settings(&[], false)),
            Ok(())
        );
    }
}
