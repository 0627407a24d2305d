use super::*;

fn page() -> Loc {
    Loc::https("www.test", "/dir/page")
}

fn insecure(html: &str) -> Vec<(String, &'static str)> {
    scan(html.as_bytes(), &page())
        .insecure
        .into_iter()
        .map(|(u, k)| (u, k.name()))
        .collect()
}

#[test]
fn every_loading_attribute_is_found_and_classified() {
    let html = r#"<!doctype html><HTML><HEAD>
<SCRIPT SRC="http://cdn.test/app.js"></SCRIPT>
<link rel="Stylesheet" href="http://cdn.test/x.css">
<link rel="preload" as="font" href="http://cdn.test/f.woff2">
<link rel="shortcut icon" href="http://cdn.test/favicon.ico">
<link rel="canonical" href="http://www.test/page">
<style>
  @import url("http://cdn.test/imp.css");
  @import 'http://cdn.test/imp2.css';
  /* url(http://cdn.test/commented.png) */
  body { background: URL( http://cdn.test/bg.png ) }
  @font-face { font-family: x; src: url('http://cdn.test/font.woff') format('woff') }
  p { cursor: url(http://cdn.test/cursor.cur), auto }
</style></HEAD><BODY>
<iframe src="http://frames.test/"></iframe><object data="http://cdn.test/o.swf"></object>
<embed src="http://cdn.test/e.swf"><frame src="http://cdn.test/f.html">
<img src="http://img.test/a.png" srcset="http://img.test/a-2x.png 2x, https://img.test/ok.png 3x">
<picture><source srcset="http://img.test/p.webp"><img src="/local.png"></picture>
<video src="http://media.test/v.mp4" poster="http://media.test/poster.jpg">
  <source src="http://media.test/v.webm"><track src="http://media.test/subs.vtt"></video>
<audio src="http://media.test/a.mp3"></audio>
<div STYLE="background-image:url('http://img.test/div.png')"></div>
<form action="http://forms.test/post"><button formaction="http://forms.test/alt">go</button></form>
<script>var u = "http://inscript.test/not-a-subresource.js"; document.write('<img src="http://inscript.test/x.png">');</script>
<img src="https://img.test/secure.png"><img src="relative.png"><img src="//img.test/proto.png">
<img src="data:image/png;base64,AAAA"><a href="http://www.test/next">next</a>
</BODY></HTML>"#;
    let found = insecure(html);
    let expected: Vec<(String, &str)> = [
        ("http://cdn.test/app.js", "script"),
        ("http://cdn.test/x.css", "stylesheet"),
        ("http://cdn.test/f.woff2", "preload"),
        ("http://cdn.test/favicon.ico", "icon"),
        ("http://cdn.test/imp.css", "CSS @import"),
        ("http://cdn.test/imp2.css", "CSS @import"),
        ("http://cdn.test/bg.png", "CSS url()"),
        ("http://cdn.test/font.woff", "font"),
        ("http://cdn.test/cursor.cur", "CSS url()"),
        ("http://frames.test/", "iframe"),
        ("http://cdn.test/o.swf", "object"),
        ("http://cdn.test/e.swf", "embed"),
        ("http://cdn.test/f.html", "frame"),
        ("http://img.test/a.png", "img"),
        ("http://img.test/a-2x.png", "srcset"),
        ("http://img.test/p.webp", "srcset"),
        ("http://media.test/v.mp4", "video"),
        ("http://media.test/poster.jpg", "poster"),
        ("http://media.test/v.webm", "source"),
        ("http://media.test/subs.vtt", "track"),
        ("http://media.test/a.mp3", "audio"),
        ("http://img.test/div.png", "CSS url()"),
        ("http://forms.test/post", "form action"),
        ("http://forms.test/alt", "form action"),
    ]
    .into_iter()
    .map(|(u, k)| (u.to_owned(), k))
    .collect();
    assert_eq!(found, expected);
}

#[test]
fn only_what_browsers_upgrade_is_passive() {
    let passive = [
        Kind::Image,
        Kind::Poster,
        Kind::Video,
        Kind::Audio,
        Kind::Media,
        Kind::CssImage,
    ];
    for k in passive {
        assert!(!k.active(), "{k:?}");
    }
    for k in [
        Kind::Script,
        Kind::Srcset,
        Kind::Track,
        Kind::Icon,
        Kind::Font,
    ] {
        assert!(k.active(), "{k:?}");
    }
}

#[test]
fn a_base_href_decides_where_relative_urls_go() {
    let found = insecure(
        r#"<base href="http://old.test/s/"><script src="app.js"></script><img src="https://x.test/a.png">"#,
    );
    assert_eq!(
        found,
        vec![("http://old.test/s/app.js".to_owned(), "script")]
    );
}

#[test]
fn links_are_resolved_and_entities_decoded() {
    let s = scan(
        br#"<a href="/a?x=1&amp;y=2">1</a><A HREF="b#frag">2</A><a href="mailto:x@y">3</a>
            <a href="https://other.test/">4</a><img src="http&#58;//img.test/e.png">"#,
        &page(),
    );
    let links: Vec<String> = s.links.iter().map(ToString::to_string).collect();
    assert_eq!(
        links,
        vec![
            "https://www.test/a?x=1&y=2",
            "https://www.test/dir/b",
            "https://other.test/"
        ]
    );
    assert_eq!(s.insecure.len(), 1);
    assert_eq!(s.insecure[0].0, "http://img.test/e.png");
}

#[test]
fn malformed_html_is_read_as_far_as_it_goes() {
    let found = insecure(
        "<div><p <table><td><select><xmp></xmp><script src=http://a.test/1.js></script></select>\
         </b></i><img src='http://a.test/2.png'",
    );
    assert!(
        found.contains(&("http://a.test/1.js".to_owned(), "script")),
        "{found:?}"
    );
    assert!(insecure("<<<>>><img src=\"http://").is_empty());
}

#[test]
fn srcset_candidates() {
    assert_eq!(
        srcset_urls(" a.png 1x, b.png 2x,c.png, d,e.png 100w"),
        vec!["a.png", "b.png", "c.png", "d,e.png"]
    );
    assert_eq!(
        srcset_urls("x.png (max-width: 1px, 2px) 2x, y.png"),
        vec!["x.png", "y.png"]
    );
    assert!(srcset_urls("  ").is_empty());
}

#[test]
fn entities() {
    assert_eq!(
        decode_entities("a&amp;b&#x2F;&#47;&colon;&bogus;&"),
        "a&b//:&bogus;&"
    );
}

#[test]
fn an_upgrading_policy_is_seen_in_a_meta_element() {
    let s = scan(
        br#"<meta http-equiv="Content-Security-Policy" content="default-src 'self'; Upgrade-Insecure-Requests">"#,
        &page(),
    );
    assert!(s.meta_upgrade);
    assert!(
        !scan(
            br#"<meta name="x" content="upgrade-insecure-requests">"#,
            &page()
        )
        .meta_upgrade
    );
    assert!(policy_upgrades("a 'self', upgrade-insecure-requests"));
    assert!(!policy_upgrades("upgrade-insecure-requestsx"));
}
