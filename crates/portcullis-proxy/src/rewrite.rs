//! `mixed_content: rewrite`: a site's HTML responses over HTTPS have their `http://` URLs
//! rewritten to `https://` as they stream, where the URL's host is served over HTTPS (by
//! this gateway, or listed in `rewrite.hosts`).
//!
//! - [`applies`]: which responses (HTML, not ranged, not HEAD, an encoding we can redo);
//! - [`adjust_headers`]: what the rewritten response's headers must no longer claim;
//! - `codec`: decoding and re-encoding gzip, br, zstd around the rewriter;
//! - `html`: the streaming rewriter (lol_html finds the tags; the page's bytes are kept);
//! - `urls`: which attributes hold URLs and how one is rewritten.
//!
//! The response body (`response::ProxyBody`) drives a [`Chain`] frame by frame.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use crate::metrics::MixedContentCounters;

mod codec;
mod html;
mod urls;

pub(crate) use codec::{Chain, Coding};
pub(crate) use html::HtmlStream;
pub(crate) use urls::Policy;

#[cfg(test)]
mod tests;

/// A site's rewriting: which hosts, and its counters.
#[derive(Debug)]
pub(crate) struct SiteRewrite {
    pub(crate) policy: Policy,
    pub(crate) counters: MixedContentCounters,
}

impl SiteRewrite {
    /// The chain for one response in `coding`.
    pub(crate) fn chain(self: &Arc<Self>, coding: Coding) -> std::io::Result<Chain> {
        Chain::new(coding, HtmlStream::new(self.clone()))
    }
}

/// What of the request decides whether its response is rewritten.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asked {
    /// A `HEAD` request: no body to rewrite.
    pub(crate) head: bool,
    /// The request had a `Range` header: the client assembles byte ranges of the page as
    /// the origin has it, which a rewritten page would not match.
    pub(crate) ranged: bool,
}

impl Asked {
    pub(crate) fn of<B>(req: &http::Request<B>) -> Self {
        Self {
            head: req.method() == Method::HEAD,
            ranged: req.headers().contains_key(header::RANGE),
        }
    }
}

/// The coding to rewrite a response in, or `None` when it passes untouched: not HTML
/// (`text/html`, `application/xhtml+xml`), a UTF-16 page, a response without a body
/// (HEAD, 1xx, 204, 304, `Content-Length: 0`) or a partial one (a `Range` request, a
/// 206), an encoding other than none, gzip, br or zstd.
pub(crate) fn applies(asked: Asked, status: StatusCode, headers: &HeaderMap) -> Option<Coding> {
    if asked.head
        || asked.ranged
        || status.is_informational()
        || matches!(
            status,
            StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED | StatusCode::PARTIAL_CONTENT
        )
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|l| l.as_bytes() == b"0")
    {
        // An empty body has nothing to rewrite (and an empty "gzip" body is no gzip
        // stream: decoding it would fail).
        return None;
    }
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let mut parts = ct.split(';');
    let mime = parts.next()?.trim();
    if !(mime.eq_ignore_ascii_case("text/html")
        || mime.eq_ignore_ascii_case("application/xhtml+xml"))
    {
        return None;
    }
    // lol_html reads ASCII-compatible encodings only; tags in UTF-16 are not found.
    let utf16 = parts.any(|p| {
        p.split_once('=').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("charset")
                && v.trim()
                    .trim_matches('"')
                    .to_ascii_lowercase()
                    .starts_with("utf-16")
        })
    });
    if utf16 {
        return None;
    }
    Coding::of(headers)
}

/// Whether a response that is not rewritten must still have its headers adjusted as if it
/// were: a `HEAD` response says what a `GET` would get, and a 304 updates the headers a
/// cache holds with a rewritten page (a strong `ETag` there would let a later `If-Range`
/// join the origin's bytes to the rewritten ones).
pub(crate) fn headers_only(asked: Asked, status: StatusCode, headers: &HeaderMap) -> bool {
    status == StatusCode::NOT_MODIFIED
        || (asked.head
            && applies(
                Asked {
                    head: false,
                    ..asked
                },
                status,
                headers,
            )
            .is_some())
}

/// The rewritten body has another length and other bytes: no `Content-Length`, a weak
/// `ETag` (the same page still, not the same bytes), no byte ranges offered on it and no
/// digest of the origin's bytes.
pub(crate) fn adjust_headers(headers: &mut HeaderMap) {
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::ACCEPT_RANGES);
    for digest in ["content-digest", "repr-digest", "digest", "content-md5"] {
        headers.remove(digest);
    }
    if let Some(etag) = headers.get(header::ETAG)
        && etag.as_bytes().starts_with(b"\"")
    {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(etag.as_bytes());
        if let Ok(weak) = HeaderValue::from_bytes(&weak) {
            headers.insert(header::ETAG, weak);
        }
    }
}

/// The rewriter outside the gateway, for `examples/rewrite_bench.rs`: not an API.
#[doc(hidden)]
pub mod bench {
    use std::sync::Arc;

    use portcullis_config::{HostMap, HostPattern};

    use super::{Chain, Coding, Policy, SiteRewrite};
    use crate::metrics::ProxyMetrics;

    /// One page's rewriter, as a `mixed_content: rewrite` site whose gateway serves
    /// `served` would run it.
    #[derive(Debug)]
    pub struct PageRewriter(Chain);

    impl PageRewriter {
        /// `encoding`: `identity`, `gzip`, `br` or `zstd`.
        pub fn new(encoding: &str, served: &[&str]) -> std::io::Result<Self> {
            let mut headers = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(encoding) {
                headers.insert(http::header::CONTENT_ENCODING, v);
            }
            let coding = Coding::of(&headers)
                .ok_or_else(|| std::io::Error::other("unsupported encoding"))?;
            let mut map = HostMap::new();
            for h in served {
                let p = HostPattern::parse(h).map_err(std::io::Error::other)?;
                map.insert(&p, ());
            }
            let site = Arc::new(SiteRewrite {
                policy: Policy {
                    served: Arc::new(map),
                    extra: HostMap::new(),
                    https_port: None,
                },
                counters: ProxyMetrics::unregistered().mixed_content("bench"),
            });
            Ok(Self(site.chain(coding)?))
        }

        /// One frame of the origin's body in; the frame to send out.
        pub fn push(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
            self.0.push(data)
        }

        /// The body's end: the last bytes.
        pub fn finish(&mut self) -> std::io::Result<Vec<u8>> {
            self.0.finish()
        }
    }
}
