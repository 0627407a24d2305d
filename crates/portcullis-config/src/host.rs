//! Host names as sites claim them (`example.com`, `*.example.com`) and the lookup table that
//! maps a name from the network (SNI, `Host`, `:authority`) to whatever claimed it.

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::error::ValueError;

/// A host a site answers for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// One name or IP literal, lowercase, no trailing dot; IPv6 in brackets (`[::1]`).
    Exact(String),
    /// `*.suffix`: any name exactly one label deeper than `suffix` (stored without `*.`).
    Wildcard(String),
}

impl HostPattern {
    /// Parses a host as written in a config: a DNS name, `*.` followed by a DNS name, or an
    /// IP address.
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        let lower = text.trim().to_ascii_lowercase();
        let lower = lower.strip_suffix('.').unwrap_or(&lower);
        if let Some(suffix) = lower.strip_prefix("*.") {
            validate_dns_name(suffix)
                .map_err(|e| ValueError::Host(format!("invalid wildcard `{text}`: {e}")))?;
            return Ok(HostPattern::Wildcard(suffix.to_owned()));
        }
        if lower.contains('*') {
            return Err(ValueError::Host(format!(
                "invalid host `{text}`: a wildcard must be a whole leftmost label (`*.example.com`)"
            )));
        }
        if let Ok(ip) = lower.parse::<Ipv4Addr>() {
            return Ok(HostPattern::Exact(ip.to_string()));
        }
        let unbracketed = lower
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(lower);
        if let Ok(ip) = unbracketed.parse::<Ipv6Addr>() {
            return Ok(HostPattern::Exact(format!("[{ip}]")));
        }
        validate_dns_name(lower)
            .map_err(|e| ValueError::Host(format!("invalid host `{text}`: {e}")))?;
        Ok(HostPattern::Exact(lower.to_owned()))
    }

    /// Whether `host` (already normalised: lowercase, no port) is covered by this pattern.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => name == host,
            HostPattern::Wildcard(suffix) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        }
    }

    /// Whether this is an IP literal rather than a DNS name.
    pub fn is_ip(&self) -> bool {
        match self {
            HostPattern::Exact(name) => name.starts_with('[') || name.parse::<Ipv4Addr>().is_ok(),
            HostPattern::Wildcard(_) => false,
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

fn validate_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label".into());
        }
        if label.len() > 63 {
            return Err(format!("label `{label}` is longer than 63 characters"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label `{label}` starts or ends with `-`"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "character `{c}` is not allowed (write international names in punycode, `xn--...`)"
            ));
        }
    }
    Ok(())
}

/// The host part of a `Host` header or `:authority`: the port removed, brackets kept on IPv6.
pub fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rfind(':') {
        Some(colon) => &authority[..colon],
        None => authority,
    }
}

/// Longest name [`HostMap::get`] will normalise; DNS names are at most 253 bytes.
const MAX_NAME: usize = 255;

/// Maps names to values: exact names first, then wildcards one label deep.
///
/// Lookups take names straight from the network; they are lowercased and stripped of a
/// trailing dot on the stack, so a lookup never allocates.
#[derive(Debug, Clone)]
pub struct HostMap<T> {
    exact: HashMap<Box<str>, T>,
    wildcard: HashMap<Box<str>, T>,
}

impl<T> Default for HostMap<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        }
    }
}

impl<T> HostMap<T> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `pattern`; returns the value it displaced, if any.
    pub fn insert(&mut self, pattern: &HostPattern, value: T) -> Option<T> {
        match pattern {
            HostPattern::Exact(name) => self.exact.insert(name.as_str().into(), value),
            HostPattern::Wildcard(suffix) => self.wildcard.insert(suffix.as_str().into(), value),
        }
    }

    /// The value for `pattern` exactly as it was inserted.
    pub fn get_pattern(&self, pattern: &HostPattern) -> Option<&T> {
        match pattern {
            HostPattern::Exact(name) => self.exact.get(name.as_str()),
            HostPattern::Wildcard(suffix) => self.wildcard.get(suffix.as_str()),
        }
    }

    /// Looks up a name from the network (no port): exact match first, then a wildcard one
    /// label deep.
    pub fn get(&self, name: &str) -> Option<&T> {
        let mut buf = [0u8; MAX_NAME];
        let name = normalise(name, &mut buf)?;
        if let Some(v) = self.exact.get(name) {
            return Some(v);
        }
        let (label, suffix) = name.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard.get(suffix)
    }

    /// Number of patterns.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// True when no pattern was inserted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Lowercases and drops one trailing dot, copying into `buf` only when that changes anything.
fn normalise<'a>(name: &'a str, buf: &'a mut [u8; MAX_NAME]) -> Option<&'a str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if !name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(name);
    }
    let out = buf.get_mut(..name.len())?;
    for (dst, src) in out.iter_mut().zip(name.bytes()) {
        *dst = src.to_ascii_lowercase();
    }
    // Lowercasing ASCII bytes of valid UTF-8 leaves it valid UTF-8.
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(patterns: &[&str]) -> HostMap<usize> {
        let mut m = HostMap::new();
        for (i, p) in patterns.iter().enumerate() {
            m.insert(&HostPattern::parse(p).unwrap(), i);
        }
        m
    }

    #[test]
    fn exact_beats_wildcard_and_wildcards_are_one_label_deep() {
        let m = map(&["example.com", "*.example.com", "api.example.com"]);
        assert_eq!(m.get("example.com"), Some(&0));
        assert_eq!(m.get("www.example.com"), Some(&1));
        assert_eq!(m.get("api.example.com"), Some(&2));
        assert_eq!(m.get("a.b.example.com"), None);
        assert_eq!(m.get(".example.com"), None);
        assert_eq!(m.get("example.org"), None);
    }

    #[test]
    fn lookups_ignore_case_and_trailing_dot() {
        let m = map(&["example.com", "*.example.com"]);
        assert_eq!(m.get("EXAMPLE.com."), Some(&0));
        assert_eq!(m.get("WWW.Example.Com"), Some(&1));
        let long = "A".repeat(300);
        assert_eq!(m.get(&long), None);
    }

    #[test]
    fn patterns_are_validated_and_normalised() {
        assert_eq!(
            HostPattern::parse("Example.COM.").unwrap(),
            HostPattern::Exact("example.com".into())
        );
        assert_eq!(
            HostPattern::parse("*.Example.com").unwrap(),
            HostPattern::Wildcard("example.com".into())
        );
        assert_eq!(
            HostPattern::parse("::1").unwrap(),
            HostPattern::Exact("[::1]".into())
        );
        assert!(HostPattern::parse("a.*.example.com").is_err());
        assert!(HostPattern::parse("exa mple.com").is_err());
        assert!(HostPattern::parse("-bad.com").is_err());
        assert!(HostPattern::parse("").is_err());
        assert!(HostPattern::parse("*.").is_err());
        assert!(HostPattern::parse("-bad.com").unwrap_err().is_host());
    }

    #[test]
    fn strip_port_keeps_ipv6_brackets() {
        assert_eq!(strip_port("example.com:8443"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:8443"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn matches_agrees_with_map() {
        let w = HostPattern::parse("*.example.com").unwrap();
        assert!(w.matches("a.example.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("a.b.example.com"));
    }
}
