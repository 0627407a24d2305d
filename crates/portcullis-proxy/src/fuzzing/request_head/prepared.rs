//! What holds of every request the gateway sends an origin, checked on the headers
//! `prepare_request` left: one table, [`PREPARED`], of named properties.

use http::header::{self, HeaderMap, HeaderName};
use http::uri::Authority;
use http::{Request, Version};

use crate::headers::ClientAddr;

/// A request as the client sent it and as it goes to the origin.
pub(super) struct Prepared<'a> {
    pub(super) sent: &'a Request<()>,
    pub(super) authority: &'a Authority,
    pub(super) client: &'a ClientAddr,
    /// The client asked to switch protocols, to one the route allows.
    pub(super) upgrade: bool,
    /// What the route allows.
    pub(super) upgrades: &'a portcullis_config::Upgrades,
    /// The headers after `prepare_request`.
    pub(super) headers: &'a HeaderMap,
}

pub(super) type Property = fn(&Prepared<'_>) -> Result<(), String>;

/// What holds of every request the gateway sends an origin, by name.
pub(super) const PREPARED: &[(&str, Property)] = &[
    ("no hop-by-hop header", no_hop_by_hop),
    (
        "no header the client's Connection names",
        no_connection_options,
    ),
    ("one Host, the authority", one_host),
    ("X-Forwarded-For ends with the client", forwarded_for),
    (
        "X-Forwarded-Proto and -Host are the gateway's",
        forwarded_proto_and_host,
    ),
    ("Forwarded is one element per hop", forwarded),
    ("Via ends with the gateway", via),
    ("TE is one `trailers`, or none", te),
    ("an HTTP/2 request's cookies are one line", cookie),
    ("an Upgrade is one the route allows", upgrade),
];

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

fn no_hop_by_hop(p: &Prepared<'_>) -> Result<(), String> {
    for name in HOP_BY_HOP {
        let values: Vec<_> = p.headers.get_all(name).iter().collect();
        let allowed = match name {
            "upgrade" if p.upgrade => !values.is_empty(),
            "connection" if p.upgrade => values == ["upgrade"],
            _ => values.is_empty(),
        };
        if !allowed {
            return Err(format!("{name}: {values:?} (upgrade: {})", p.upgrade));
        }
    }
    Ok(())
}

/// Fields the rewrite sets itself, whatever the client's `Connection` said of them.
const SET_BY_THE_GATEWAY: [&str; 6] = [
    "host",
    "via",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

fn no_connection_options(p: &Prepared<'_>) -> Result<(), String> {
    let options = p
        .sent
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter_map(|t| HeaderName::from_bytes(t).ok());
    for name in options {
        let kept =
            SET_BY_THE_GATEWAY.contains(&name.as_str()) || (p.upgrade && name == header::UPGRADE);
        if !kept && p.headers.contains_key(&name) {
            return Err(format!("{name} is still there"));
        }
    }
    Ok(())
}

fn one_host(p: &Prepared<'_>) -> Result<(), String> {
    let hosts: Vec<_> = p.headers.get_all(header::HOST).iter().collect();
    if hosts != [p.authority.as_str()] {
        return Err(format!("{hosts:?}, authority {}", p.authority));
    }
    Ok(())
}

fn forwarded_for(p: &Prepared<'_>) -> Result<(), String> {
    let values: Vec<_> = p.headers.get_all("x-forwarded-for").iter().collect();
    let ip = &p.client.ip;
    let ok = match values[..] {
        [v] if !p.client.trusted => v == ip,
        [v] => {
            v.as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .map(<[u8]>::trim_ascii)
                == Some(ip.as_bytes())
        }
        _ => false,
    };
    if !ok {
        return Err(format!("{values:?} for a client at {ip:?}"));
    }
    Ok(())
}

fn forwarded_proto_and_host(p: &Prepared<'_>) -> Result<(), String> {
    if p.client.trusted {
        return Ok(());
    }
    let proto: Vec<_> = p.headers.get_all("x-forwarded-proto").iter().collect();
    let host: Vec<_> = p.headers.get_all("x-forwarded-host").iter().collect();
    if proto != ["https"] || host != [p.authority.as_str()] {
        return Err(format!("proto {proto:?}, host {host:?}"));
    }
    Ok(())
}

fn forwarded(p: &Prepared<'_>) -> Result<(), String> {
    let values: Vec<_> = p.headers.get_all(header::FORWARDED).iter().collect();
    let [value] = values[..] else {
        return Err(format!("{values:?}"));
    };
    let ours = format!(
        "{};host=\"{}\";proto=https",
        p.client.forwarded_for, p.authority
    );
    let before = if p.client.trusted {
        sent_forwarded(p.sent.headers())
    } else {
        Some(0)
    };
    let hops = forwarded_elements(value.as_bytes());
    match before {
        // The hops before (none from an untrusted client), then this one.
        Some(n) if hops != Some(n + 1) || !value.as_bytes().ends_with(ours.as_bytes()) => {
            Err(format!("{value:?}: {hops:?} elements after {n}"))
        }
        // A trusted proxy's own mistakes stay; this hop's element must still be whole.
        None if !value.as_bytes().ends_with(ours.as_bytes())
            || forwarded_elements(ours.as_bytes()) != Some(1) =>
        {
            Err(format!("{value:?} does not end with {ours:?}"))
        }
        _ => Ok(()),
    }
}

/// How many elements the client's `Forwarded` lines hold, joined as the gateway joins
/// them; `None` if they do not parse.
fn sent_forwarded(headers: &HeaderMap) -> Option<usize> {
    let mut count = 0;
    for value in headers.get_all(header::FORWARDED) {
        count += forwarded_elements(value.to_str().ok()?.as_bytes())?;
    }
    Some(count)
}

/// The elements of a `Forwarded` value (RFC 7239 §4: `1#forwarded-element`, each
/// `pair *(";" pair)`, a pair `token "=" (token / quoted-string)`), or `None` if it is not
/// one.
fn forwarded_elements(value: &[u8]) -> Option<usize> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let token = |at: usize| {
        let len = value[at..].iter().take_while(|&&b| tchar(b)).count();
        (len > 0).then_some(at + len)
    };
    let ows = |at: usize| {
        at + value[at..]
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count()
    };
    let (mut at, mut elements) = (ows(0), 0);
    loop {
        loop {
            at = token(at)?;
            if value.get(at) != Some(&b'=') {
                return None;
            }
            at += 1;
            if value.get(at) == Some(&b'"') {
                at += 1;
                loop {
                    match *value.get(at)? {
                        b'"' => break,
                        b'\\' => at += 2,
                        b'\t' | b' '..=b'~' | 0x80.. => at += 1,
                        _ => return None,
                    }
                }
                at += 1;
            } else {
                at = token(at)?;
            }
            if value.get(at) != Some(&b';') {
                break;
            }
            at += 1;
        }
        elements += 1;
        at = ows(at);
        match value.get(at) {
            None => return Some(elements),
            Some(b',') => at = ows(at + 1),
            Some(_) => return None,
        }
    }
}

fn via(p: &Prepared<'_>) -> Result<(), String> {
    let last = p.headers.get_all(header::VIA).iter().next_back();
    let ours = match p.sent.version() {
        Version::HTTP_2 => "2 portcullis",
        Version::HTTP_10 => "1.0 portcullis",
        _ => "1.1 portcullis",
    };
    if last.is_none_or(|v| v != ours) {
        return Err(format!("last Via {last:?}"));
    }
    Ok(())
}

fn te(p: &Prepared<'_>) -> Result<(), String> {
    let te: Vec<_> = p.headers.get_all(header::TE).iter().collect();
    match te[..] {
        [] => Ok(()),
        [v] if v == "trailers" => Ok(()),
        _ => Err(format!("{te:?}")),
    }
}

fn cookie(p: &Prepared<'_>) -> Result<(), String> {
    let cookies = p.headers.get_all(header::COOKIE).iter().count();
    if p.sent.version() == Version::HTTP_2 && cookies > 1 {
        return Err(format!("{cookies} cookie lines"));
    }
    Ok(())
}

fn upgrade(p: &Prepared<'_>) -> Result<(), String> {
    for v in p.headers.get_all(header::UPGRADE) {
        let offered = v.to_str().map_err(|_| format!("{v:?}"))?;
        for protocol in offered.split(',').map(str::trim) {
            if !p.upgrades.allows(protocol) {
                return Err(format!("{protocol:?} passed"));
            }
        }
    }
    Ok(())
}
