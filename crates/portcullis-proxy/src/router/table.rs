//! One site's routes, found for a request path: exact routes by lookup, then prefixes
//! longest first; on equal length an exact route beats a prefix (the Ingress rule). And
//! the path a matched route sends on (`strip_prefix`, `rewrite`).

use std::collections::HashMap;

/// Up to this many routes a site's table is scanned in order; above it, looked up by hash
/// (a few lookups per request, one per path segment, whatever the number of routes).
const SCAN_MAX: usize = 16;

/// Routes of one site, for any `T` (the route's entry).
#[derive(Debug)]
pub(crate) struct RouteTable<T> {
    /// Longest path first, an exact route before a prefix of the same length.
    entries: Box<[(Key, T)]>,
    /// Exact paths → index in `entries` (only for large tables).
    exact: HashMap<Box<str>, usize>,
    /// Prefix paths → index in `entries` (only for large tables).
    prefixes: HashMap<Box<str>, usize>,
}

/// A route's path and how it is compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key {
    pub(crate) path: Box<str>,
    pub(crate) exact: bool,
}

impl<T> RouteTable<T> {
    /// The table of `routes`. Two routes with the same path and match (which validation
    /// refuses) keep the first.
    pub(crate) fn new(mut routes: Vec<(Key, T)>) -> Self {
        // Stable: of two equal keys the first in config order comes first.
        routes.sort_by_key(|(k, _)| (std::cmp::Reverse(k.path.len()), !k.exact));
        let mut exact = HashMap::new();
        let mut prefixes = HashMap::new();
        if routes.len() > SCAN_MAX {
            for (i, (k, _)) in routes.iter().enumerate() {
                let map = if k.exact { &mut exact } else { &mut prefixes };
                map.entry(k.path.clone()).or_insert(i);
            }
        }
        Self {
            entries: routes.into_boxed_slice(),
            exact,
            prefixes,
        }
    }

    /// The route for `path`: the longest matching one, exact before prefix on a tie.
    pub(crate) fn find(&self, path: &str) -> Option<(&Key, &T)> {
        let i = if self.entries.len() <= SCAN_MAX {
            self.entries.iter().position(|(k, _)| k.matches(path))?
        } else {
            self.lookup(path)?
        };
        let (k, t) = &self.entries[i];
        Some((k, t))
    }

    /// The routes, longest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &(Key, T)> {
        self.entries.iter()
    }

    fn lookup(&self, path: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(path) {
            return Some(i);
        }
        if let Some(&i) = self.prefixes.get(path) {
            return Some(i);
        }
        // Every other prefix that can match ends just before a `/` of the path (`/api` for
        // `/api/x`) or just after it (`/api/`): longest first.
        let bytes = path.as_bytes();
        (0..bytes.len())
            .rev()
            .filter(|&i| bytes[i] == b'/')
            .find_map(|i| {
                self.prefixes
                    .get(&path[..=i])
                    .or_else(|| (i > 0).then(|| self.prefixes.get(&path[..i])).flatten())
                    .copied()
            })
    }
}

impl Key {
    fn matches(&self, path: &str) -> bool {
        if self.exact {
            *self.path == *path
        } else {
            prefix_matches(&self.path, path)
        }
    }

    /// How many leading bytes of a matching request path a rewrite replaces: the whole
    /// path for an exact route, the prefix without its trailing `/` for a prefix.
    pub(crate) fn replaced_len(&self) -> usize {
        if self.exact {
            self.path.len()
        } else {
            self.path.trim_end_matches('/').len()
        }
    }
}

/// `/api` matches `/api` and `/api/...` but not `/apix`; `/api/` matches anything under it.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}

/// The path sent on when a route replaced the first `replaced` bytes of `path` with `to`
/// (`strip_prefix` is `to` = `/`): `/app/x` with `/app` → `/` is `/x`, `/app` alone is `/`;
/// never a `//` where the two meet.
pub(crate) fn rewrite_path(path: &str, replaced: usize, to: &str) -> String {
    let rest = path.get(replaced..).unwrap_or("");
    if rest.is_empty() {
        return to.to_owned();
    }
    let head = to.trim_end_matches('/');
    let mut out = String::with_capacity(head.len() + rest.len() + 1);
    out.push_str(head);
    if !rest.starts_with('/') {
        out.push('/');
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str, exact: bool) -> Key {
        Key {
            path: path.into(),
            exact,
        }
    }

    /// The same routes as a scanned table and as a hashed one (padded past `SCAN_MAX`
    /// with routes no test path reaches).
    fn tables(routes: &[(&str, bool)]) -> [RouteTable<String>; 2] {
        let list = |pad: usize| {
            let mut v: Vec<(Key, String)> = routes
                .iter()
                .map(|&(p, e)| (key(p, e), format!("{}{p}", if e { "=" } else { "" })))
                .collect();
            v.extend((0..pad).map(|i| (key(&format!("/zz/pad{i}"), i % 2 == 0), "pad".into())));
            v
        };
        [
            RouteTable::new(list(0)),
            RouteTable::new(list(SCAN_MAX + 1)),
        ]
    }

    fn find(t: &RouteTable<String>, path: &str) -> Option<String> {
        t.find(path).map(|(_, v)| v.clone())
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/users"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(!prefix_matches("/api/", "/api"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn exact_beats_prefix_of_the_same_length_and_longer_prefixes_beat_exact() {
        for t in tables(&[
            ("/foo", false),
            ("/foo", true),
            ("/foo/bar", false),
            ("/", false),
        ]) {
            assert_eq!(
                find(&t, "/foo").as_deref(),
                Some("=/foo"),
                "tie: exact wins"
            );
            assert_eq!(find(&t, "/foo/").as_deref(), Some("/foo"));
            assert_eq!(find(&t, "/foo/x").as_deref(), Some("/foo"));
            assert_eq!(find(&t, "/foo/bar/x").as_deref(), Some("/foo/bar"));
            assert_eq!(
                find(&t, "/foobar").as_deref(),
                Some("/"),
                "/foo is not /foobar"
            );
            assert_eq!(find(&t, "/FOO").as_deref(), Some("/"), "case-sensitive");
        }
    }

    #[test]
    fn exact_routes_match_the_whole_path_only() {
        for t in tables(&[("/foo", true), ("/bar/", true)]) {
            assert_eq!(find(&t, "/foo").as_deref(), Some("=/foo"));
            assert_eq!(find(&t, "/foo/"), None, "a trailing slash is another path");
            assert_eq!(find(&t, "/foo/x"), None);
            assert_eq!(find(&t, "/foobar"), None);
            assert_eq!(find(&t, "/bar/").as_deref(), Some("=/bar/"));
            assert_eq!(find(&t, "/bar"), None);
        }
    }

    #[test]
    fn trailing_slash_prefixes_need_something_under_them() {
        for t in tables(&[("/a/", false), ("/a", true), ("/a/b/", false)]) {
            assert_eq!(find(&t, "/a").as_deref(), Some("=/a"));
            assert_eq!(find(&t, "/a/").as_deref(), Some("/a/"));
            assert_eq!(find(&t, "/a/b").as_deref(), Some("/a/"));
            assert_eq!(find(&t, "/a/b/c").as_deref(), Some("/a/b/"));
            assert_eq!(find(&t, "/ab"), None);
        }
    }

    #[test]
    fn a_large_table_agrees_with_a_scan() {
        let routes: Vec<(String, bool)> = (0..200)
            .map(|i| (format!("/s{}/p{}", i % 7, i % 13), i % 3 == 0))
            .chain([("/".to_owned(), false), ("/s1".to_owned(), true)])
            .collect();
        let mut seen = std::collections::HashSet::new();
        let routes: Vec<(Key, usize)> = routes
            .into_iter()
            .filter(|r| seen.insert(r.clone()))
            .enumerate()
            .map(|(i, (p, e))| (key(&p, e), i))
            .collect();
        let big = RouteTable::new(routes.clone());
        for path in [
            "/", "/s1", "/s1/", "/s1/p1", "/s1/p1/x", "/s3/p12", "/s3/p12x", "/x",
        ] {
            let scan = routes
                .iter()
                .filter(|(k, _)| k.matches(path))
                .max_by_key(|(k, _)| (k.path.len(), k.exact))
                .map(|(_, v)| *v);
            assert_eq!(big.find(path).map(|(_, v)| *v), scan, "{path}");
        }
    }

    #[test]
    fn ten_thousand_routes_build_fast() {
        let routes: Vec<(Key, usize)> = (0..10_000)
            .map(|i| (key(&format!("/r{i}/x"), i % 2 == 0), i))
            .collect();
        let start = std::time::Instant::now();
        let t = RouteTable::new(routes);
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(t.find("/r7/x/y").map(|(_, v)| *v), Some(7));
        assert_eq!(t.find("/r8/x/y").map(|(_, v)| *v), None, "exact");
    }

    #[test]
    fn rewrites_replace_the_matched_part_without_double_slashes() {
        let prefix = key("/app", false).replaced_len();
        assert_eq!(rewrite_path("/app/x", prefix, "/"), "/x");
        assert_eq!(rewrite_path("/app", prefix, "/"), "/");
        assert_eq!(rewrite_path("/app/", prefix, "/"), "/");
        assert_eq!(rewrite_path("/app/x", prefix, "/new"), "/new/x");
        assert_eq!(rewrite_path("/app/x", prefix, "/new/"), "/new/x");
        assert_eq!(rewrite_path("/app", prefix, "/new/"), "/new/");
        let slash = key("/app/", false).replaced_len();
        assert_eq!(rewrite_path("/app/x/y", slash, "/"), "/x/y");
        let root = key("/", false).replaced_len();
        assert_eq!(rewrite_path("/x", root, "/base"), "/base/x");
        let exact = key("/login", true).replaced_len();
        assert_eq!(rewrite_path("/login", exact, "/auth/login"), "/auth/login");
    }
}
