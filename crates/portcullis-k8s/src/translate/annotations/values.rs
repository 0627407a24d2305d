//! Annotation values: each parser takes the trimmed text and gives a typed value or the
//! reason it is refused.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use portcullis_config::parse_duration;

pub(super) fn boolean(v: &str) -> Result<bool, String> {
    if v.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if v.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(format!("`{v}` is not \"true\" or \"false\""))
    }
}

pub(super) fn duration(v: &str) -> Result<Duration, String> {
    parse_duration(v).map_err(|e| e.to_string())
}

pub(super) fn positive_duration(v: &str) -> Result<Duration, String> {
    match duration(v)? {
        d if d.is_zero() => Err("must be greater than zero".to_owned()),
        d => Ok(d),
    }
}

/// nginx sizes: bytes, or `k`, `m`, `g` (binary multiples); `0` is unlimited.
pub(super) fn nginx_size(v: &str) -> Result<u64, String> {
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = v[..digits]
        .parse()
        .map_err(|_| format!("`{v}` is not a size such as 8m"))?;
    let factor: u64 = match &v[digits..] {
        "" => 1,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        _ => return Err(format!("`{v}` is not a size such as 8m")),
    };
    Ok(match n.checked_mul(factor) {
        Some(0) | None => u64::MAX,
        Some(size) => size,
    })
}

/// `10.0.0.0/8, 192.168.1.1, 2001:db8::/32`.
pub(super) fn networks(v: &str) -> Result<Vec<IpNet>, String> {
    let mut out = Vec::new();
    for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let net = item
            .parse::<IpNet>()
            .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                format!("`{item}` is not an address or a CIDR range such as 10.0.0.0/8")
            })?;
        out.push(net.trunc());
    }
    if out.is_empty() {
        return Err("lists no address or range".to_owned());
    }
    Ok(out)
}

/// A Secret's name in the Ingress's namespace (a DNS subdomain).
pub(super) fn secret_name(v: &str) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(v.to_owned())
    } else {
        Err(format!(
            "`{v}` is not a Secret name (in the Ingress's namespace)"
        ))
    }
}

/// A path to forward to: `/`, then characters a request target may hold.
pub(super) fn plain_path(v: &str) -> Result<String, String> {
    if v.starts_with('/')
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
    {
        Ok(v.to_owned())
    } else {
        Err(format!(
            "`{v}` is not a path (`/...`, no `?`, `#` or spaces)"
        ))
    }
}

/// A `Location`: an absolute http(s) URL or a path, nothing a header cannot carry.
pub(super) fn location(v: &str) -> Result<String, String> {
    let shape = v.starts_with('/') && !v.starts_with("//")
        || v.strip_prefix("https://")
            .or_else(|| v.strip_prefix("http://"))
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
    if shape && v.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(v.to_owned())
    } else {
        Err(format!("`{v}` is not an http(s):// URL or a path"))
    }
}

/// An RFC 9110 token (cookie and header names).
pub(super) fn is_token(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
