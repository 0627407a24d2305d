//! The cost of `mixed_content: rewrite` per MB of HTML, against passing the same frames
//! through untouched, for each encoding the rewriter handles. A benchmark, not a test: it
//! prints figures (MB/s on one core, and the ratio to passthrough) and asserts nothing.
//!
//! `cargo run --release -p portcullis-proxy --example rewrite_bench [MB]`
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::io::Write;
use std::time::Instant;

use portcullis_proxy::rewrite_bench::PageRewriter;

/// A page like a real one: markup, text, links and images, one URL in four on a host the
/// gateway serves (rewritten), a script with a URL in it (left alone).
fn page(size: usize) -> Vec<u8> {
    let mut out = b"<!doctype html><html><head><title>bench</title></head><body>\n".to_vec();
    let mut i = 0u64;
    while out.len() < size {
        // Numbered, so the page compresses as a real one does (not 1000:1).
        i += 1;
        let n = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
        write!(
            out,
            r#"<div class="card c{n}"><a href="http://www.example.com/item/{i}?ref=list">Item {n} title that runs on</a>
<img src="http://cdn.other.net/img/{n}.jpg" srcset="http://cdn.other.net/img/{n}@2x.jpg 2x" alt="thumbnail {i}" loading="lazy">
<p>Some paragraph text of a reasonable length for item {n}, with <em>inline</em> markup and a <a href="/relative/{i}">relative link</a>.</p>
<script>window.dataLayer.push({{"u": "http://www.example.com/track/{i}"}});</script></div>
"#
        )
        .unwrap();
    }
    out.extend_from_slice(b"</body></html>\n");
    out
}

fn encode(encoding: &str, body: &[u8]) -> Vec<u8> {
    match encoding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(body).unwrap();
            e.finish().unwrap()
        }
        "br" => {
            let mut w = brotli::CompressorWriter::new(Vec::new(), 16 << 10, 5, 22);
            w.write_all(body).unwrap();
            w.into_inner()
        }
        "zstd" => zstd::encode_all(body, 3).unwrap(),
        _ => body.to_vec(),
    }
}

/// Seconds for lol_html alone to read the page, with no handler: the floor of any
/// lol_html-based rewriter.
fn lol_html_only(html: &[u8]) -> f64 {
    let start = Instant::now();
    let mut out = 0usize;
    let mut r = lol_html::HtmlRewriter::new(lol_html::Settings::new(), |c: &[u8]| {
        out += c.len();
    });
    for frame in html.chunks(16 << 10) {
        r.write(frame).unwrap();
    }
    r.end().unwrap();
    std::hint::black_box(out);
    start.elapsed().as_secs_f64()
}

/// Seconds to pass `wire` in 16 KiB frames through the rewriter (or, with `None`, through a
/// copy into a new frame each, as the gateway's relay does at least).
fn run(encoding: Option<&str>, wire: &[u8]) -> f64 {
    let start = Instant::now();
    let mut out = 0usize;
    match encoding {
        None => {
            for frame in wire.chunks(16 << 10) {
                out += std::hint::black_box(bytes::Bytes::copy_from_slice(frame)).len();
            }
        }
        Some(enc) => {
            let mut r = PageRewriter::new(enc, &["www.example.com"]).unwrap();
            for frame in wire.chunks(16 << 10) {
                out += r.push(frame).unwrap().len();
            }
            out += r.finish().unwrap().len();
        }
    }
    std::hint::black_box(out);
    start.elapsed().as_secs_f64()
}

fn main() {
    let mb: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    let html = page(mb << 20);
    let size_mb = html.len() as f64 / (1 << 20) as f64;
    println!("{size_mb:.0} MB of HTML (uncompressed), 16 KiB frames, one core");
    println!(
        "{:<10} {:>12} {:>14} {:>16}",
        "encoding", "MB/s (HTML)", "ms per MB", "x passthrough"
    );
    let best = |f: &dyn Fn() -> f64| (0..3).map(|_| f()).fold(f64::MAX, f64::min);
    let pass = best(&|| run(None, &html));
    println!(
        "{:<10} {:>12.0} {:>14.3} {:>16}",
        "passthru",
        size_mb / pass,
        pass * 1000.0 / size_mb,
        "1"
    );
    let lol = best(&|| lol_html_only(&html));
    println!(
        "{:<10} {:>12.0} {:>14.3} {:>16.0}",
        "lol_html",
        size_mb / lol,
        lol * 1000.0 / size_mb,
        lol / pass
    );
    for enc in ["identity", "gzip", "br", "zstd"] {
        let wire = encode(enc, &html);
        let t = best(&|| run(Some(enc), &wire));
        println!(
            "{:<10} {:>12.0} {:>14.3} {:>16.0}",
            enc,
            size_mb / t,
            t * 1000.0 / size_mb,
            t / pass
        );
    }
}
