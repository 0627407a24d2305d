use std::io::{Read, Write};

use portcullis_config::HostPattern;

use super::*;
use crate::metrics::ProxyMetrics;

/// A site whose gateway serves `a.test` and `*.b.test` over HTTPS on port 8443, with
/// `cdn.test` in its `rewrite.hosts`.
fn site() -> Arc<SiteRewrite> {
    let map = |hosts: &[&str]| {
        let mut m = portcullis_config::HostMap::new();
        for h in hosts {
            m.insert(&HostPattern::parse(h).unwrap(), ());
        }
        m
    };
    Arc::new(SiteRewrite {
        policy: Policy {
            served: Arc::new(map(&["a.test", "*.b.test"])),
            extra: map(&["cdn.test"]),
            https_port: Some(8443),
        },
        counters: ProxyMetrics::unregistered().mixed_content("s"),
    })
}

/// `html` through the rewriter in chunks of `chunk` bytes: the output and the count.
fn run(site: &Arc<SiteRewrite>, coding: Coding, body: &[u8], chunk: usize) -> (Vec<u8>, u64) {
    let before = site.counters.get().1;
    let mut chain = site.chain(coding).unwrap();
    let mut out = Vec::new();
    for piece in body.chunks(chunk) {
        out.extend(chain.push(piece).unwrap());
    }
    out.extend(chain.finish().unwrap());
    (out, site.counters.get().1 - before)
}

fn rewritten(html: &str) -> String {
    let (out, _) = run(&site(), Coding::Identity, html.as_bytes(), 4096);
    String::from_utf8(out).unwrap()
}

#[test]
fn urls_in_resource_and_link_attributes_become_https() {
    let page = r#"<!doctype html><html><head>
<link rel=stylesheet href="http://a.test/s.css"><script src='http://x.b.test/app.js'></script>
<base href=http://cdn.test/><meta http-equiv="Refresh" content="5; URL='http://a.test/next'">
</head><body background="http://a.test/bg.png">
<a href="http://a.test/page?x=1&amp;y=2#top">a</a> <form action="http://a.test/post"><button formaction="http://a.test/other">b</button></form>
<video poster="http://a.test/p.jpg" src="http://a.test/v.mp4"></video><object data="http://cdn.test/o.swf"></object>
<iframe src="http://a.test/frame"></iframe><blockquote cite="http://a.test/quote"></blockquote>
</body></html>"#;
    let out = rewritten(page);
    assert_eq!(
        out,
        page.replace("http://", "https://"),
        "every one of them"
    );
    assert_eq!(site().counters.get(), (0, 0), "a fresh registry each time");
}

#[test]
fn attributes_split_across_chunks_are_rewritten_the_same() {
    let page = br#"<p>text</p><img alt="x" src="http://a.test/i.png"><a HREF = "http://a.test/">y</a><img src=http://cdn.test/z.gif>"#;
    let site = site();
    let (whole, n) = run(&site, Coding::Identity, page, page.len());
    assert_eq!(n, 3);
    let expected = String::from_utf8_lossy(page).replace("http://", "https://");
    assert_eq!(String::from_utf8_lossy(&whole), expected);
    for chunk in [1, 2, 3, 7, 13] {
        let (out, n) = run(&site, Coding::Identity, page, chunk);
        assert_eq!(String::from_utf8_lossy(&out), expected, "chunks of {chunk}");
        assert_eq!(n, 3);
    }
    let (responses, urls) = site.counters.get();
    assert_eq!(
        (responses, urls),
        (6, 18),
        "one response per run with rewritten URLs"
    );
}

#[test]
fn every_srcset_candidate_is_rewritten() {
    let out = rewritten(
        r#"<img srcset="http://a.test/1.png 1x, http://cdn.test/2.png 2x,http://other.test/3.png 3x , /rel.png 4x"><picture><source srcset=" http://a.test/w.webp 100w,http://a.test/x.webp"></picture>"#,
    );
    assert_eq!(
        out,
        r#"<img srcset="https://a.test/1.png 1x, https://cdn.test/2.png 2x,http://other.test/3.png 3x , /rel.png 4x"><picture><source srcset=" https://a.test/w.webp 100w,https://a.test/x.webp"></picture>"#
    );
}

#[test]
fn uppercase_tags_attributes_and_schemes_are_matched() {
    assert_eq!(
        rewritten(r#"<A HREF="HTTP://A.TEST/X">x</A><IMG SRC=Http://a.test/i.png>"#),
        r#"<A HREF="https://A.TEST/X">x</A><IMG SRC=https://a.test/i.png>"#
    );
}

#[test]
fn text_scripts_styles_and_comments_are_left_alone() {
    let page = r#"<script>var u = "http://a.test/x"; document.write('<img src="http://a.test/y">');</script><style>body{background:url(http://a.test/bg.png)}</style><!-- <img src="http://a.test/c"> --><textarea><a href="http://a.test/t"></textarea><p>see http://a.test/ or src="http://a.test/"</p><p title="http://a.test/">x</p>"#;
    assert_eq!(rewritten(page), page);
}

#[test]
fn https_relative_unknown_hosts_and_other_ports_are_left_alone() {
    let page = r#"<img src="https://a.test/a"><img src="/b"><img src="c.png"><img src="//a.test/d"><img src="http://other.test/e"><img src="http://a.test.evil/f"><img src="http://x.y.b.test/g"><img src="http://a.test:8080/h"><img src="http://user@a.test/i"><img src="http://a&#46;test/j"><a href="ftp://a.test/">k</a><img src="data:text/plain,http://a.test/">"#;
    assert_eq!(rewritten(page), page);
}

#[test]
fn port_80_is_dropped_and_the_https_port_kept() {
    assert_eq!(
        rewritten(
            r#"<img src="http://a.test:80/a"><img src="http://a.test:8443/b"><img src="http://a.test:/c">"#
        ),
        r#"<img src="https://a.test/a"><img src="https://a.test:8443/b"><img src="https://a.test/c">"#
    );
}

#[test]
fn malformed_html_passes_byte_for_byte_apart_from_rewritten_urls() {
    let mut page: Vec<u8> = Vec::new();
    page.extend_from_slice(b"<div><p><b><img src=\"http://a.test/1\"");
    page.extend_from_slice(b"\xff\xfe\x00garbage\x80<<>>< / ><a href=http://a.test/2>");
    page.extend_from_slice(b"</i></table><![CDATA[ x ]]><? pi ?><!doctype><svg><a href=\"http://a.test/3\"/></svg>\xc3\x28");
    page.extend_from_slice(b"<img src=\"http://a.test/4\" alt=\"unterminated");
    for chunk in [1, 5, page.len()] {
        let (out, _) = run(&site(), Coding::Identity, &page, chunk);
        let mut expected = page.clone();
        for n in ['1', '2', '3'] {
            let from = format!("http://a.test/{n}");
            let to = format!("https://a.test/{n}");
            let at = expected
                .windows(from.len())
                .position(|w| w == from.as_bytes())
                .unwrap();
            expected.splice(at..at + from.len(), to.bytes());
        }
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&expected),
            "chunks of {chunk}: the truncated tag at EOF passes as it came"
        );
        assert_eq!(out, expected);
    }
}

#[test]
fn a_tag_over_the_memory_limit_ends_rewriting_without_losing_a_byte() {
    let mut page = b"<img src=\"http://a.test/before\"><p>".to_vec();
    page.extend_from_slice(b"<img alt=\"");
    page.extend(std::iter::repeat_n(b'x', html::LOL_MEMORY + 1000));
    page.extend_from_slice(b"\" src=\"http://a.test/in\"><img src=\"http://a.test/after\"></p>");
    for chunk in [4096, 100_000] {
        let (out, n) = run(&site(), Coding::Identity, &page, chunk);
        assert_eq!(n, 1, "only the tag before the failure");
        let expected = String::from_utf8_lossy(&page).replacen("http://", "https://", 1);
        assert!(
            out == expected.as_bytes(),
            "chunks of {chunk}: every byte, in order"
        );
    }
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn brotli(b: &[u8]) -> Vec<u8> {
    let mut w = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
    w.write_all(b).unwrap();
    w.into_inner()
}

fn unbrotli(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(b, 4096)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn gzip_brotli_and_zstd_pages_are_decoded_rewritten_and_encoded_again() {
    let page = "<html><body>".to_owned()
        + &"<p>filler text</p><img src=\"http://a.test/i.png\">\n".repeat(2000)
        + "</body></html>";
    let expected = page.replace("http://", "https://");
    type Codec = (Coding, fn(&[u8]) -> Vec<u8>, fn(&[u8]) -> Vec<u8>);
    let codecs: [Codec; 3] = [
        (Coding::Gzip, gzip, gunzip),
        (Coding::Brotli, brotli, unbrotli),
        (
            Coding::Zstd,
            |b| zstd::encode_all(b, 3).unwrap(),
            |b| zstd::decode_all(b).unwrap(),
        ),
    ];
    for (coding, encode, decode) in codecs {
        let compressed = encode(page.as_bytes());
        for chunk in [1000, compressed.len()] {
            let (out, n) = run(&site(), coding, &compressed, chunk);
            assert_eq!(n, 2000, "{coding:?}");
            assert_eq!(
                String::from_utf8(decode(&out)).unwrap(),
                expected,
                "{coding:?} in chunks of {chunk}"
            );
            assert!(out.len() < page.len() / 4, "{coding:?}: still compressed");
        }
    }
    // A broken stream is an error of the body, not a page cut short silently.
    let mut chain = site().chain(Coding::Gzip).unwrap();
    let truncated = gzip(page.as_bytes());
    let pushed = chain.push(&truncated[..truncated.len() / 2]);
    assert!(pushed.is_ok());
    assert!(chain.finish().is_err());
}

#[test]
fn a_100_mb_page_streams_through_in_bounded_memory() {
    const TOTAL: usize = 100 << 20;
    let unit = "<div class=row><a href=\"http://a.test/item\">item</a> <img src=\"http://cdn.test/i.png\" srcset=\"http://a.test/2x.png 2x\"> some text to read</div>\n";
    let chunk: Vec<u8> = unit.repeat((16 << 10) / unit.len() + 1).into_bytes();
    let mut chain = site().chain(Coding::Identity).unwrap();
    let (mut fed, mut out_len, mut peak_frame) = (0usize, 0usize, 0usize);
    while fed < TOTAL {
        let out = chain.push(&chunk).unwrap();
        fed += chunk.len();
        out_len += out.len();
        peak_frame = peak_frame.max(out.len());
    }
    let html = chain.html().unwrap();
    let (peak_held, urls) = (html.peak_held, html.rewritten);
    out_len += chain.finish().unwrap().len();
    let units = fed / unit.len();
    assert_eq!(urls as usize, units * 3);
    assert_eq!(
        out_len,
        fed + urls as usize,
        "one byte more per URL (http → https)"
    );
    assert!(
        peak_held < 4 * chunk.len(),
        "held at most a frame and an unfinished tag: {peak_held}"
    );
    assert!(
        peak_frame < 2 * chunk.len(),
        "one frame in, one frame out: {peak_frame}"
    );
}

#[test]
fn which_responses_are_rewritten() {
    let headers = |pairs: &[(&str, &str)]| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    };
    let get = Asked {
        head: false,
        ranged: false,
    };
    let ok = StatusCode::OK;
    let html = headers(&[("content-type", "text/html; charset=utf-8")]);
    assert_eq!(applies(get, ok, &html), Some(Coding::Identity));
    assert_eq!(
        applies(get, StatusCode::NOT_FOUND, &html),
        Some(Coding::Identity)
    );
    assert_eq!(
        applies(
            get,
            ok,
            &headers(&[("content-type", "Application/XHTML+XML")])
        ),
        Some(Coding::Identity)
    );
    for (ct, ce, coding) in [
        ("text/html", "gzip", Some(Coding::Gzip)),
        ("text/html", "BR", Some(Coding::Brotli)),
        ("text/html", "zstd", Some(Coding::Zstd)),
        ("text/html", "deflate", None),
        ("text/html", "gzip, br", None),
        ("text/html", "compress", None),
        ("text/html; charset=UTF-16LE", "identity", None),
        ("text/plain", "identity", None),
        ("application/json", "identity", None),
        ("image/svg+xml", "identity", None),
    ] {
        let h = headers(&[("content-type", ct), ("content-encoding", ce)]);
        assert_eq!(applies(get, ok, &h), coding, "{ct} {ce}");
    }
    assert_eq!(applies(get, ok, &headers(&[])), None, "no content type");
    assert_eq!(
        applies(
            get,
            ok,
            &headers(&[
                ("content-type", "text/html"),
                ("content-encoding", "gzip"),
                ("content-length", "0")
            ])
        ),
        None,
        "empty"
    );
    let head = Asked {
        head: true,
        ranged: false,
    };
    let ranged = Asked {
        head: false,
        ranged: true,
    };
    assert_eq!(applies(head, ok, &html), None);
    assert_eq!(applies(ranged, ok, &html), None);
    for status in [204, 206, 304, 101] {
        assert_eq!(
            applies(get, StatusCode::from_u16(status).unwrap(), &html),
            None,
            "{status}"
        );
    }

    let mut h = headers(&[
        ("content-length", "100"),
        ("etag", "\"v1\""),
        ("accept-ranges", "bytes"),
        ("content-digest", "sha-256=:x:"),
        ("cache-control", "max-age=60"),
    ]);
    adjust_headers(&mut h);
    assert_eq!(
        h,
        headers(&[("etag", "W/\"v1\""), ("cache-control", "max-age=60")])
    );
    assert!(headers_only(head, ok, &html));
    assert!(!headers_only(
        head,
        ok,
        &headers(&[("content-type", "image/png")])
    ));
    assert!(headers_only(get, StatusCode::NOT_MODIFIED, &headers(&[])));
    assert!(!headers_only(get, ok, &html), "rewritten, not headers only");
    assert!(!headers_only(ranged, StatusCode::PARTIAL_CONTENT, &html));
    let mut weak = headers(&[("etag", "W/\"v1\"")]);
    adjust_headers(&mut weak);
    assert_eq!(weak["etag"], "W/\"v1\"", "already weak");
}

#[test]
fn one_frame_larger_than_the_hold_limit_is_rewritten_throughout() {
    // A fixed `respond` body, or an origin's large read, arrives as one frame.
    let unit = "<p>x</p><img src=\"http://a.test/i.png\">\n";
    let page = unit.repeat(html::MAX_HELD / unit.len() * 2);
    let (out, n) = run(&site(), Coding::Identity, page.as_bytes(), page.len());
    assert_eq!(n as usize, page.len() / unit.len());
    assert!(out == page.replace("http://", "https://").as_bytes());
}

#[test]
fn a_decompression_bomb_is_refused_not_expanded() {
    let zeros = vec![0u8; codec::MAX_EXPANSION_PER_FRAME + (1 << 20)];
    let bomb = zstd::encode_all(&zeros[..], 3).unwrap();
    assert!(bomb.len() < 64 << 10, "{}", bomb.len());
    let mut chain = site().chain(Coding::Zstd).unwrap();
    let err = chain.push(&bomb).unwrap_err();
    assert!(err.to_string().contains("decompression bomb"), "{err}");
}

/// Pages put together at random from tricky pieces, cut at random: the output does not
/// depend on where the frames were cut, and it differs from the input only in schemes.
#[test]
fn random_pages_in_random_chunks_change_only_schemes() {
    const PIECES: &[&[u8]] = &[
        b"<img src=\"http://a.test/x.png\">",
        b"<A HREF='HTTP://cdn.test/'>",
        b"<img srcset=\"http://a.test/1 1x, http://other.test/2 2x\">",
        b"<script>var s = '<img src=\"http://a.test/\">';</script>",
        b"<style>a{background:url(http://a.test/)}</style>",
        b"<!-- <a href=\"http://a.test/\"> -->",
        b"<textarea><img src=http://a.test/></textarea>",
        b"text http://a.test/ text",
        b"<a href=http://a.test/>",
        b"<a href=\"https://a.test/\">",
        b"<form action=\"http://x.b.test/post\">",
        b"\xff\xfe\x80\x00",
        b"<",
        b"</",
        b"<img src=\"http://a.test/",
        b"\">",
        b"<![CDATA[ <a href=\"http://a.test/\"> ]]>",
        b"<svg><a href=\"http://a.test/\"/></svg>",
        b"<plaintext>",
        b"<meta http-equiv=refresh content=\"0;url=http://a.test/\">",
    ];
    let normal = |b: &[u8]| -> Vec<u8> {
        String::from_utf8_lossy(b)
            .to_ascii_lowercase()
            .replace("https://", "http://")
            .into_bytes()
    };
    let site = site();
    let mut rng = fastrand::Rng::with_seed(26);
    for _ in 0..300 {
        let mut page = Vec::new();
        for _ in 0..rng.usize(1..40) {
            page.extend_from_slice(PIECES[rng.usize(..PIECES.len())]);
        }
        let (whole, _) = run(&site, Coding::Identity, &page, page.len());
        let mut chain = site.chain(Coding::Identity).unwrap();
        let mut cut = Vec::new();
        let mut rest = &page[..];
        while !rest.is_empty() {
            let n = rng.usize(1..=rest.len().min(50));
            cut.extend(chain.push(&rest[..n]).unwrap());
            rest = &rest[n..];
        }
        cut.extend(chain.finish().unwrap());
        let shown = String::from_utf8_lossy(&page);
        assert_eq!(cut, whole, "{shown}");
        assert_eq!(normal(&whole), normal(&page), "{shown}");
    }
    assert!(site.counters.get().1 > 300, "and URLs were rewritten");
}
