//! Header rewriting between client and origin: hop-by-hop removal and the forwarding headers.

use bytes::BytesMut;
use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1, plus the
/// non-standard ones proxies traditionally drop, and h2c's `HTTP2-Settings`, which only
/// means something beside an `Upgrade: h2c` that never passes). A `static`: a `const`
/// array would be built and dropped again at every use, nine names at a time.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const VIA_H1: HeaderValue = HeaderValue::from_static("1.1 portcullis");
const VIA_H2: HeaderValue = HeaderValue::from_static("2 portcullis");
const VIA_H10: HeaderValue = HeaderValue::from_static("1.0 portcullis");
const HTTPS: HeaderValue = HeaderValue::from_static("https");
const HTTP: HeaderValue = HeaderValue::from_static("http");
const TRAILERS: HeaderValue = HeaderValue::from_static("trailers");

/// Whether an HTTP/1.1 request asks to switch protocols (WebSocket and friends).
pub(crate) fn wants_upgrade(headers: &HeaderMap, version: Version) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(header::UPGRADE)
        && has_token(headers, header::CONNECTION, "upgrade")
}

/// Whether every protocol an `Upgrade` request offers is one the route lets pass. A
/// request offering anything else (`h2c` above all) is forwarded as an ordinary request,
/// its `Upgrade` removed: a client that switched to HTTP/2 with the origin would send its
/// next requests past the gateway's routes and header rules.
pub(crate) fn upgrade_allowed(headers: &HeaderMap, allowed: &portcullis_config::Upgrades) -> bool {
    let mut offered = headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .peekable();
    offered.peek().is_some()
        && offered.all(|t| std::str::from_utf8(t).is_ok_and(|t| allowed.allows(t)))
}

fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Moves every value into one allocation of the headers' own. hyper parses an origin's
/// header values as views into the buffer it read the response into (8 KiB, and up to
/// hundreds of KiB after large bodies), and an HTTP/2 connection's HPACK encoder keeps the
/// values it indexes for as long as the connection lives: each such value kept the whole
/// read buffer alive (3.7 KiB of every idle HTTP/2 connection in the benchmark). One copy
/// into a block of exactly their size, shared by the values, is one allocation: about 1,300
/// instructions for a small response's headers, 2.4% of an HTTP/2 request.
pub(crate) fn own_values(headers: &mut HeaderMap) {
    let total = headers.values().map(HeaderValue::len).sum();
    let mut block = BytesMut::with_capacity(total);
    for value in headers.values() {
        block.extend_from_slice(value.as_bytes());
    }
    let mut block = block.freeze();
    for value in headers.values_mut() {
        // The same bytes, so they are valid again.
        if let Ok(mut own) = HeaderValue::from_maybe_shared(block.split_to(value.len())) {
            own.set_sensitive(value.is_sensitive());
            *value = own;
        }
    }
}

/// Removes hop-by-hop headers, including any named by `Connection`. With `keep_upgrade`
/// the `Upgrade` header and a `Connection: upgrade` survive, so the switch reaches the
/// other side.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of these, or `Connection: keep-alive` alone: one look at each
    // name present says which to remove, so nothing is looked up that is not there.
    let present = headers.keys().fold(0, |marks, name| marks | hop_mark(name));
    if present == 0 && !keep_upgrade {
        return;
    }
    if present & CONNECTION_PRESENT != 0 {
        // Names listed in Connection are hop-by-hop too. The usual keep-alive and upgrade
        // are removed below anyway, and a field named `Close` needs no allocation, so the
        // common case collects nothing. Read as bytes: a line with one byte that is not
        // visible ASCII still names the fields it names.
        let mut close = false;
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                    return false;
                }
                !t.is_empty() && !USUAL_TOKENS.iter().any(|u| t.eq_ignore_ascii_case(u))
            })
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        if close {
            headers.remove(&CLOSE);
        }
        for name in listed {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 && !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // `trailers` is the one TE element that is end-to-end in practice (gRPC needs it), and
    // the only one that passes: every line and every element of each is read, so
    // `TE: trailers` beside `TE: gzip` forwards one `TE: trailers`.
    if present & TE_PRESENT != 0 {
        let trailers = headers.get_all(header::TE).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
        });
        if trailers {
            headers.insert(header::TE, TRAILERS);
        } else {
            headers.remove(header::TE);
        }
    }
}

/// An HTTP/2 request may carry its cookies as several `cookie` fields; an HTTP/1.1
/// message has one line, joined with `"; "` (RFC 9113 §8.2.3). Joined for every origin,
/// since the pool picks the origin connection's protocol only later.
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let values = headers.get_all(header::COOKIE);
    let len = values.iter().map(|v| v.len() + 2).sum();
    let mut joined = BytesMut::with_capacity(len);
    let mut sensitive = false;
    for v in values {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
        sensitive |= v.is_sensitive();
    }
    // Valid values joined by a valid separator are valid.
    if let Ok(mut v) = HeaderValue::from_maybe_shared(joined.freeze()) {
        v.set_sensitive(sensitive);
        headers.insert(header::COOKIE, v);
    }
}

/// `strip_hop_by_hop`'s mark for `Connection`, `HOP_BY_HOP[0]`.
const CONNECTION_PRESENT: u16 = 1;
/// `strip_hop_by_hop`'s mark for `TE`, after one bit per `HOP_BY_HOP` name.
const TE_PRESENT: u16 = 1 << HOP_BY_HOP.len();
/// `Connection` tokens whose fields `HOP_BY_HOP` removes anyway.
const USUAL_TOKENS: [&[u8]; 2] = [b"keep-alive", b"upgrade"];
/// A field named by the `close` option (RFC 9110 §7.6.1; the name is reserved, §18.4).
static CLOSE: HeaderName = HeaderName::from_static("close");

/// Bit `i` for `HOP_BY_HOP[i]`, `TE_PRESENT` for `TE`, else 0. Matching the name's text
/// is one length switch and a compare, where comparing `HeaderName`s is one per entry.
fn hop_mark(name: &HeaderName) -> u16 {
    match name.as_str() {
        "connection" => 1,
        "keep-alive" => 1 << 1,
        "proxy-connection" => 1 << 2,
        "proxy-authenticate" => 1 << 3,
        "proxy-authorization" => 1 << 4,
        "trailer" => 1 << 5,
        "transfer-encoding" => 1 << 6,
        "upgrade" => 1 << 7,
        "http2-settings" => 1 << 8,
        "te" => TE_PRESENT,
        _ => 0,
    }
}

/// Everything about the client connection the forwarding headers need, rendered once per
/// connection.
#[derive(Debug)]
pub(crate) struct ClientAddr {
    /// `203.0.113.7` or `2001:db8::1`, for `X-Forwarded-For`.
    pub(crate) ip: HeaderValue,
    /// `for=203.0.113.7` or `for="[2001:db8::1]"`, for `Forwarded`.
    pub(crate) forwarded_for: String,
    /// The peer is a trusted proxy: its forwarding headers are kept and appended to.
    pub(crate) trusted: bool,
    /// The request came over plain HTTP (`X-Forwarded-Proto: http`).
    pub(crate) plain_http: bool,
}

impl ClientAddr {
    pub(crate) fn new(ip: std::net::IpAddr, trusted: bool) -> Self {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        let text = ip.to_string();
        let forwarded_for = if ip.is_ipv6() {
            format!("for=\"[{text}]\"")
        } else {
            format!("for={text}")
        };
        Self {
            ip: HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("unknown")),
            forwarded_for,
            trusted,
            plain_http: false,
        }
    }

    /// The same client on the plain HTTP listener.
    pub(crate) fn over_plain_http(self) -> Self {
        Self {
            plain_http: true,
            ..self
        }
    }
}

/// Rewrites a client request's headers for the origin: drops hop-by-hop headers, sets
/// `Host` and `Via`, and the forwarding headers. From a trusted proxy, `X-Forwarded-For`
/// and `Forwarded` are appended to and its `X-Forwarded-Proto`/`-Host` kept; from anyone
/// else, whatever the client sent is replaced.
pub(crate) fn prepare_request(
    headers: &mut HeaderMap,
    client: &ClientAddr,
    authority: &str,
    version: Version,
    upgrade: bool,
) {
    strip_hop_by_hop(headers, upgrade);
    if version == Version::HTTP_2 {
        join_cookies(headers);
    }
    // Room for the six headers below at once: growing the map as they come rehashes every
    // header already there (an HTTP/2 request's map is sized for the client's few).
    headers.reserve(6);
    let keep =
        |headers: &HeaderMap, name: &HeaderName| client.trusted && headers.contains_key(name);
    // An HTTP/1.1 request's one `Host` usually is the authority already: kept as it is, it
    // is neither copied nor inserted again.
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(h), None) if h.as_bytes() == authority.as_bytes() => Some(h.clone()),
        _ => HeaderValue::from_str(authority).ok().inspect(|h| {
            headers.insert(header::HOST, h.clone());
        }),
    };
    if let Some(host) = host
        && !keep(headers, &X_FORWARDED_HOST)
    {
        headers.insert(X_FORWARDED_HOST, host);
    }
    if !keep(headers, &X_FORWARDED_PROTO) {
        headers.insert(
            X_FORWARDED_PROTO,
            if client.plain_http { HTTP } else { HTTPS },
        );
    }
    let trusted_xff = client.trusted.then(|| joined(headers, &X_FORWARDED_FOR));
    let xff = match trusted_xff.flatten() {
        Some(before) => HeaderValue::from_str(&format!(
            "{before}, {}",
            client.ip.to_str().unwrap_or("unknown")
        ))
        .unwrap_or_else(|_| client.ip.clone()),
        None => client.ip.clone(),
    };
    headers.insert(X_FORWARDED_FOR, xff);
    // Built with pushes: `format!` costs more than the rest of this header (about 900
    // instructions a request under callgrind).
    let trusted_forwarded = client.trusted.then(|| joined(headers, &header::FORWARDED));
    let before = trusted_forwarded.flatten();
    let mut forwarded = String::with_capacity(
        before.as_ref().map_or(0, |b| b.len() + 2)
            + client.forwarded_for.len()
            + authority.len()
            + 20,
    );
    if let Some(before) = &before {
        forwarded.push_str(before);
        forwarded.push_str(", ");
    }
    forwarded.push_str(&client.forwarded_for);
    forwarded.push_str(";host=\"");
    forwarded.push_str(authority);
    forwarded.push_str(if client.plain_http {
        "\";proto=http"
    } else {
        "\";proto=https"
    });
    // From the `String` itself: `from_str` would copy it.
    match HeaderValue::try_from(forwarded) {
        Ok(v) => {
            headers.insert(header::FORWARDED, v);
        }
        Err(_) => {
            headers.remove(header::FORWARDED);
        }
    }
    headers.append(
        header::VIA,
        match version {
            Version::HTTP_2 => VIA_H2,
            Version::HTTP_10 => VIA_H10,
            _ => VIA_H1,
        },
    );
}

/// Every value of a header, joined by `, ` (`None` when absent or not text).
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?.to_str().ok()?.to_owned();
    values.try_fold(first, |mut acc, v| {
        acc.push_str(", ");
        acc.push_str(v.to_str().ok()?);
        Some(acc)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// Values parsed as views into a response's read buffer no longer hold it once owned,
    /// and keep their bytes, order and sensitivity.
    #[test]
    fn owned_values_let_the_read_buffer_go() {
        let read = Bytes::from(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-a: a=1\r\nx-a: b=2\r\n\r\n".to_vec(),
        );
        let view = |text: &str| {
            let at = read
                .windows(text.len())
                .position(|w| w == text.as_bytes())
                .unwrap();
            HeaderValue::from_maybe_shared(read.slice(at..at + text.len())).unwrap()
        };
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, view("text/plain"));
        let mut secret = view("a=1");
        secret.set_sensitive(true);
        h.append("x-a", secret);
        h.append("x-a", view("b=2"));
        h.insert(header::SERVER, HeaderValue::from_static("origin"));
        assert!(!read.is_unique());

        own_values(&mut h);
        assert!(read.is_unique(), "a value still holds the read buffer");
        assert_eq!(h[header::CONTENT_TYPE], "text/plain");
        assert_eq!(h[header::SERVER], "origin");
        let repeated: Vec<_> = h.get_all("x-a").iter().collect();
        assert_eq!(repeated, ["a=1", "b=2"]);
        assert!(repeated[0].is_sensitive() && !repeated[1].is_sensitive());
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn each_hop_by_hop_name_has_its_own_mark() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_mark(name), 1 << i, "{name}");
        }
        assert_eq!(hop_mark(&header::TE), TE_PRESENT);
        assert_eq!(hop_mark(&header::ACCEPT), 0);
    }

    #[test]
    fn hop_by_hop_headers_and_connection_listed_ones_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn each_hop_by_hop_header_is_removed_on_its_own() {
        // The common case skips the removals when no hop-by-hop name is present; any one
        // of them alone must still be seen.
        for (name, value) in [
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic x"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip"),
        ] {
            let mut h = map(&[(name, value), ("accept", "*/*")]);
            strip_hop_by_hop(&mut h, false);
            let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(left, ["accept"], "{name}");
        }
        let mut h = map(&[("te", "trailers"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2, "TE: trailers is kept");
    }

    #[test]
    fn upgrade_and_te_trailers_survive_when_wanted() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
        ]);
        assert!(wants_upgrade(&h, Version::HTTP_11));
        assert!(!wants_upgrade(&h, Version::HTTP_2));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn only_trailers_passes_of_every_te_line_and_element() {
        for (lines, want) in [
            (&["trailers", "gzip"][..], Some("trailers")),
            (&["gzip", "trailers"], Some("trailers")),
            (&["gzip, Trailers"], Some("trailers")),
            (&["gzip;q=0.5,  trailers ,deflate"], Some("trailers")),
            (&["gzip"], None),
            (&["gzip", "deflate"], None),
            (&["trailersx"], None),
        ] {
            let pairs: Vec<_> = lines.iter().map(|v| ("te", *v)).collect();
            let mut h = map(&pairs);
            strip_hop_by_hop(&mut h, false);
            let te: Vec<_> = h.get_all(header::TE).iter().collect();
            match want {
                Some(v) => assert_eq!(te, [v], "{lines:?}"),
                None => assert!(te.is_empty(), "{lines:?}: {te:?}"),
            }
        }
    }

    #[test]
    fn http2_cookie_fields_become_one_line() {
        let client = ClientAddr::new("203.0.113.7".parse().unwrap(), false);
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")]);
        prepare_request(&mut h, &client, "example.com", Version::HTTP_2, false);
        let cookies: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"]);
        // One field stays as it is; HTTP/1.1 has one line by the server's parsing.
        let mut h = map(&[("cookie", "a=1; b=2")]);
        prepare_request(&mut h, &client, "example.com", Version::HTTP_2, false);
        assert_eq!(h[header::COOKIE], "a=1; b=2");
    }

    #[test]
    fn only_listed_upgrades_pass() {
        let websocket = portcullis_config::Upgrades::default();
        let allowed = |value: &[&str], upgrades: &portcullis_config::Upgrades| {
            let pairs: Vec<_> = value.iter().map(|v| ("upgrade", *v)).collect();
            upgrade_allowed(&map(&pairs), upgrades)
        };
        assert!(allowed(&["websocket"], &websocket));
        assert!(allowed(&["WebSocket/13"], &websocket));
        assert!(!allowed(&["h2c"], &websocket));
        assert!(!allowed(&["websocket, h2c"], &websocket));
        assert!(!allowed(&["websocket", "h2c"], &websocket));
        assert!(!allowed(&[""], &websocket));
        assert!(!allowed(&[], &websocket));
        assert!(!allowed(
            &["websocket"],
            &portcullis_config::Upgrades::none()
        ));
    }

    #[test]
    fn every_field_connection_names_goes_whatever_else_its_line_holds() {
        let mut h = map(&[("connection", "close"), ("close", "x"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"te, X-Secret, x\xbb").unwrap(),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
    }

    #[test]
    fn h2c_settings_never_pass() {
        let mut h = map(&[("http2-settings", "AAMAAABkAAQAAP__"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut h, false);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn forwarding_headers_replace_what_the_client_sent() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-proto", "http"),
            ("via", "1.1 corp-proxy"),
        ]);
        let client = ClientAddr::new("2001:db8::7".parse().unwrap(), false);
        prepare_request(&mut h, &client, "example.com:8443", Version::HTTP_2, false);
        assert_eq!(h["x-forwarded-for"], "2001:db8::7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "example.com:8443");
        assert_eq!(h["host"], "example.com:8443");
        assert_eq!(
            h["forwarded"],
            "for=\"[2001:db8::7]\";host=\"example.com:8443\";proto=https"
        );
        let via: Vec<_> = h.get_all("via").iter().collect();
        assert_eq!(via, ["1.1 corp-proxy", "2 portcullis"]);
    }

    #[test]
    fn host_becomes_the_authority_whatever_the_client_sent() {
        let client = ClientAddr::new("192.0.2.1".parse().unwrap(), false);
        for sent in [
            &[][..],
            &["example.com"][..],
            &["other.example"][..],
            &["example.com", "example.com"][..],
            &["other.example", "example.com"][..],
        ] {
            let mut h = HeaderMap::new();
            for v in sent {
                h.append(header::HOST, v.parse().unwrap());
            }
            prepare_request(&mut h, &client, "example.com", Version::HTTP_11, false);
            let hosts: Vec<_> = h.get_all(header::HOST).iter().collect();
            assert_eq!(hosts, ["example.com"], "sent {sent:?}");
            assert_eq!(h["x-forwarded-host"], "example.com", "sent {sent:?}");
        }
    }

    #[test]
    fn mapped_ipv4_is_shown_as_ipv4() {
        let c = ClientAddr::new("::ffff:192.0.2.1".parse().unwrap(), false);
        assert_eq!(c.ip, "192.0.2.1");
        assert_eq!(c.forwarded_for, "for=192.0.2.1");
    }

    #[test]
    fn a_trusted_proxy_s_forwarding_headers_are_appended_to() {
        let mut h = map(&[
            ("x-forwarded-for", "198.51.100.1, 10.0.0.2"),
            ("forwarded", "for=198.51.100.1"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "public.example"),
        ]);
        let client = ClientAddr::new("10.0.0.3".parse().unwrap(), true);
        prepare_request(&mut h, &client, "example.com", Version::HTTP_11, false);
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 10.0.0.2, 10.0.0.3");
        assert_eq!(
            h["forwarded"],
            "for=198.51.100.1, for=10.0.0.3;host=\"example.com\";proto=https"
        );
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "public.example");

        // A trusted proxy that sent nothing gets the usual headers.
        let mut h = HeaderMap::new();
        prepare_request(&mut h, &client, "example.com", Version::HTTP_11, false);
        assert_eq!(h["x-forwarded-for"], "10.0.0.3");
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}
