//! Just enough of URL resolution (WHATWG URL, special schemes only) for the mixed-content
//! scan: is a reference `http://` once resolved against the page, and is a link on the
//! same host. Anything that is not `http` or `https` (`data:`, `mailto:`, `javascript:`)
//! resolves to `None`: it is neither mixed content nor a page to follow.

use std::fmt;

/// An absolute `http` or `https` URL, without its fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Loc {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Host and, when not the scheme's default, `:port`; lowercase, no user info.
    pub authority: String,
    /// Path (starting with `/`) and query.
    pub path: String,
}

impl Loc {
    /// `https://{authority}{path}`.
    pub fn https(authority: &str, path: &str) -> Self {
        Self {
            scheme: "https",
            authority: authority.to_ascii_lowercase(),
            path: path.to_owned(),
        }
    }

    /// The host without the port (an IPv6 literal keeps its brackets).
    pub fn host(&self) -> &str {
        host_of(&self.authority)
    }

    /// The path without its query.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or("/")
    }

    /// `reference` resolved against `self`, when it is an `http(s)` URL.
    pub fn join(&self, reference: &str) -> Option<Loc> {
        // Leading and trailing C0 controls and spaces go, tabs and newlines anywhere.
        let cleaned: String = reference
            .trim_matches(|c: char| c <= ' ')
            .chars()
            .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
            .map(|c| if c == '\\' { '/' } else { c })
            .collect();
        let r = cleaned.split('#').next().unwrap_or("");
        if let Some((scheme, rest)) = split_scheme(r) {
            let scheme = match scheme.to_ascii_lowercase().as_str() {
                "http" => "http",
                "https" => "https",
                _ => return None,
            };
            // Special schemes take any number of slashes before the authority.
            return absolute(scheme, rest.trim_start_matches('/'));
        }
        if let Some(rest) = r.strip_prefix("//") {
            return absolute(self.scheme, rest);
        }
        let path = if r.is_empty() {
            self.path.clone()
        } else if r.starts_with('/') {
            normalize(r)
        } else if r.starts_with('?') {
            format!("{}{r}", self.path_only())
        } else {
            let base = self.path_only();
            let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
            normalize(&format!("{dir}{r}"))
        };
        Some(Loc {
            scheme: self.scheme,
            authority: self.authority.clone(),
            path,
        })
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.path)
    }
}

/// The host of an authority (`host[:port]`, `[v6][:port]`).
pub(crate) fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.find(']').map_or(authority, |i| &authority[..=i]);
    }
    authority.split(':').next().unwrap_or(authority)
}

fn split_scheme(r: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = r.split_once(':')?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some((scheme, rest))
}

fn absolute(scheme: &'static str, rest: &str) -> Option<Loc> {
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let mut authority = authority.to_ascii_lowercase();
    let default = if scheme == "http" { ":80" } else { ":443" };
    if let Some(bare) = authority.strip_suffix(default) {
        authority = bare.to_owned();
    }
    if authority.is_empty() {
        return None;
    }
    let path = if path.is_empty() {
        "/".to_owned()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        normalize(path)
    };
    Some(Loc {
        scheme,
        authority,
        path,
    })
}

/// Removes `.` and `..` segments from an absolute path (its query kept as it is).
fn normalize(path: &str) -> String {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut result = format!("/{}", out.join("/"));
    if let Some(q) = query {
        result.push('?');
        result.push_str(q);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> Loc {
        Loc::https("Example.com", "/blog/post.html?x=1")
    }

    fn join(r: &str) -> Option<String> {
        page().join(r).map(|l| l.to_string())
    }

    #[test]
    fn absolute_references_keep_their_scheme_and_lose_default_ports_and_fragments() {
        assert_eq!(
            join("http://CDN.test/app.js#x").as_deref(),
            Some("http://cdn.test/app.js")
        );
        assert_eq!(
            join(" HTTP://cdn.test:80").as_deref(),
            Some("http://cdn.test/")
        );
        assert_eq!(
            join("http:\\\\cdn.test\\a").as_deref(),
            Some("http://cdn.test/a")
        );
        assert_eq!(
            join("https://user@cdn.test:8443/a").as_deref(),
            Some("https://cdn.test:8443/a")
        );
        assert_eq!(join("http://").as_deref(), None);
    }

    #[test]
    fn other_schemes_are_not_urls_to_look_at() {
        for r in [
            "data:image/png;base64,AAAA",
            "javascript:void(0)",
            "mailto:a@b",
        ] {
            assert_eq!(join(r), None, "{r}");
        }
    }

    #[test]
    fn relative_references_resolve_against_the_page() {
        assert_eq!(join("//cdn.test/x").as_deref(), Some("https://cdn.test/x"));
        assert_eq!(
            join("/a/./b/../c").as_deref(),
            Some("https://example.com/a/c")
        );
        assert_eq!(
            join("next.html").as_deref(),
            Some("https://example.com/blog/next.html")
        );
        assert_eq!(
            join("../img/a.png").as_deref(),
            Some("https://example.com/img/a.png")
        );
        assert_eq!(
            join("?page=2").as_deref(),
            Some("https://example.com/blog/post.html?page=2")
        );
        assert_eq!(
            join("#top").as_deref(),
            Some("https://example.com/blog/post.html?x=1")
        );
        assert_eq!(
            join("a\n.png").as_deref(),
            Some("https://example.com/blog/a.png")
        );
    }

    #[test]
    fn an_http_base_makes_relative_references_http() {
        let base = page().join("http://old.test/static/").unwrap();
        assert_eq!(
            base.join("app.js").map(|l| l.to_string()).as_deref(),
            Some("http://old.test/static/app.js")
        );
        assert_eq!(base.host(), "old.test");
        assert_eq!(host_of("[::1]:8443"), "[::1]");
    }
}
