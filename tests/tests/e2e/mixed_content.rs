//! `mixed_content: rewrite` through a real gateway: HTML from an origin has its `http://`
//! URLs rewritten as it streams, over TLS to HTTP/1.1 and HTTP/2 clients, compressed or
//! not; what must pass untouched does (other content types, ranges, HEAD, plain HTTP).

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis_tests::{GatewayBuilder, TestCa, plain};
use tokio::net::TcpListener;

/// `m.test` is the site; `cdn.example` is in its `rewrite.hosts`; `elsewhere.test` is
/// neither; the script's URL is text.
const PAGE: &str = r#"<!doctype html><html><head><script src="http://m.test/app.js"></script></head><body><img SRC="HTTP://cdn.example/i.png" srcset="http://m.test/a.png 1x, http://m.test/b.png 2x"><a href="http://elsewhere.test/">away</a><script>var u = "http://m.test/in-script";</script></body></html>"#;
const REWRITTEN: &str = r#"<!doctype html><html><head><script src="https://m.test/app.js"></script></head><body><img SRC="https://cdn.example/i.png" srcset="https://m.test/a.png 1x, https://m.test/b.png 2x"><a href="http://elsewhere.test/">away</a><script>var u = "http://m.test/in-script";</script></body></html>"#;
/// URLs rewritten in one page.
const URLS: u64 = 4;

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn decode(encoding: &str, b: &[u8]) -> String {
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            flate2::read::GzDecoder::new(b)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli::Decompressor::new(b, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => out = zstd::decode_all(b).unwrap(),
        _ => out = b.to_vec(),
    }
    String::from_utf8(out).unwrap()
}

fn encode(encoding: &str, b: &[u8]) -> Vec<u8> {
    match encoding {
        "gzip" => gzip(b),
        "br" => {
            let mut w = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
            w.write_all(b).unwrap();
            w.into_inner()
        }
        "zstd" => zstd::encode_all(b, 3).unwrap(),
        _ => b.to_vec(),
    }
}

/// `/page`: the page with a strong ETag, a length and byte ranges (a `Range: bytes=0-9`
/// gets 206); `/page.gzip`, `.br`, `.zstd`: the page so encoded; `/data.json`: JSON with
/// the same URLs.
async fn origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(answer(&req))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn answer(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let html = "text/html; charset=utf-8";
    let resp = Response::builder().header(header::ETAG, "\"v1\"");
    if path == "/data.json" {
        let body = format!("{{\"url\": \"http://m.test/x\", \"html\": {PAGE:?}}}");
        return resp
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::from(body))
            .unwrap();
    }
    if let Some(encoding) = path.strip_prefix("/page.") {
        return resp
            .header(header::CONTENT_TYPE, html)
            .header(header::CONTENT_ENCODING, encoding)
            .body(Full::from(encode(encoding, PAGE.as_bytes())))
            .unwrap();
    }
    if req.headers().contains_key(header::IF_NONE_MATCH) {
        return resp
            .status(StatusCode::NOT_MODIFIED)
            .body(Full::default())
            .unwrap();
    }
    let resp = resp
        .header(header::CONTENT_TYPE, html)
        .header(header::ACCEPT_RANGES, "bytes");
    if req
        .headers()
        .get(header::RANGE)
        .is_some_and(|r| r == "bytes=0-39")
    {
        return resp
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes 0-39/{}", PAGE.len()))
            .body(Full::from(&PAGE.as_bytes()[..40]))
            .unwrap();
    }
    resp.body(Full::from(PAGE)).unwrap()
}

fn value(metrics: &str, series: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn html_over_https_has_its_http_urls_rewritten_as_it_streams() {
    let ca = TestCa::new("rewrite CA");
    let origin = origin().await;
    let gw = GatewayBuilder::new()
        .tls_site(
            &ca,
            &["m.test"],
            &format!(
                "mixed_content: rewrite, rewrite: {{hosts: [cdn.example]}}, plain_http: serve, \
                 origin: 'http://{origin}'"
            ),
        )
        .tls_site(&ca, &["off.test"], &format!("origin: 'http://{origin}'"))
        .start()
        .await;
    let client = gw.client(&ca.root_der);
    let mut pages = 0;
    for alpn in ["h2", "http/1.1"] {
        let mut conn = client.connect("m.test", &[alpn]).await.unwrap();
        assert_eq!(conn.is_h2(), alpn == "h2");

        let page = conn.get("m.test", "/page").await;
        assert_eq!(page.status, 200, "{alpn}");
        assert_eq!(page.text(), REWRITTEN, "{alpn}");
        assert!(page.headers.get(header::CONTENT_LENGTH).is_none(), "{alpn}");
        assert_eq!(page.headers[header::ETAG], "W/\"v1\"", "{alpn}");
        assert!(page.headers.get(header::ACCEPT_RANGES).is_none(), "{alpn}");
        pages += 1;

        for encoding in ["gzip", "br", "zstd"] {
            let resp = conn.get("m.test", &format!("/page.{encoding}")).await;
            assert_eq!(resp.status, 200, "{alpn} {encoding}");
            assert_eq!(resp.headers[header::CONTENT_ENCODING], encoding);
            assert_eq!(
                decode(encoding, &resp.body),
                REWRITTEN,
                "{alpn} {encoding}: decoded, rewritten, encoded again"
            );
            assert_eq!(resp.headers[header::ETAG], "W/\"v1\"");
            pages += 1;
        }

        // HEAD says what GET gets; a 304 refreshes a cached rewritten page with a weak
        // ETag too.
        let head = conn
            .send(
                conn.request("m.test", "/page")
                    .method(http::Method::HEAD)
                    .body(portcullis_tests::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(head.headers()[header::ETAG], "W/\"v1\"", "{alpn}");
        assert!(
            head.headers().get(header::CONTENT_LENGTH).is_none(),
            "{alpn}"
        );
        let revalidated = conn
            .send(
                conn.request("m.test", "/page")
                    .header(header::IF_NONE_MATCH, "W/\"v1\"")
                    .body(portcullis_tests::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(revalidated.status(), 304, "{alpn}");
        assert_eq!(revalidated.headers()[header::ETAG], "W/\"v1\"", "{alpn}");

        // Not HTML: untouched, length and strong ETag kept.
        let json = conn.get("m.test", "/data.json").await;
        assert!(json.text().contains("http://m.test/x"), "{alpn}");
        assert_eq!(json.headers[header::ETAG], "\"v1\"");
        assert_eq!(
            json.headers[header::CONTENT_LENGTH],
            json.body.len().to_string()
        );

        // A range of the page: exactly the origin's bytes.
        let ranged = conn
            .send(
                conn.request("m.test", "/page")
                    .header(header::RANGE, "bytes=0-39")
                    .body(portcullis_tests::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let ranged = portcullis_tests::collect(ranged).await;
        assert_eq!(ranged.status, 206, "{alpn}");
        assert_eq!(&ranged.body[..], &PAGE.as_bytes()[..40], "{alpn}");
        assert_eq!(ranged.headers[header::ETAG], "\"v1\"");
    }

    // A site without the setting, and the site over plain HTTP: untouched.
    let off = client.get("off.test", "/page").await;
    assert_eq!(off.text(), PAGE);
    assert_eq!(off.headers[header::CONTENT_LENGTH], PAGE.len().to_string());
    let over_http = plain::get(gw.http.unwrap(), "m.test", "/page").await;
    assert_eq!(over_http.status, 200, "{}", over_http.text);
    assert!(over_http.text.ends_with(PAGE), "{}", over_http.text);

    let metrics = gw.scrape().await;
    assert_eq!(
        value(
            &metrics,
            "portcullis_mixed_content_rewritten_responses_total{site=\"m.test\"}"
        ),
        Some(pages),
        "{metrics}"
    );
    assert_eq!(
        value(
            &metrics,
            "portcullis_mixed_content_rewritten_urls_total{site=\"m.test\"}"
        ),
        Some(pages * URLS)
    );
    assert!(
        !metrics.contains("portcullis_mixed_content_rewritten_responses_total{site=\"off.test\"}"),
        "only sites that rewrite have series"
    );
    portcullis_tests::scrape::assert_promtool_clean(&metrics);
}

/// A page larger than any buffer, arriving in many frames from the origin, comes out whole
/// and rewritten (the origin's `/bytes/<n>` is not HTML: this serves a big one itself).
#[tokio::test]
async fn a_large_page_streams_through_whole() {
    let ca = TestCa::new("rewrite CA");
    let unit = "<p>row</p><img src=\"http://m.test/i.png\">\n";
    let big: &'static str = unit.repeat(200_000).leak();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| async move {
                    let body = Bytes::from_static(big.as_bytes());
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header(header::CONTENT_TYPE, "text/html")
                            .body(Full::<Bytes>::new(body))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let gw = GatewayBuilder::new()
        .tls_site(
            &ca,
            &["m.test"],
            &format!("mixed_content: rewrite, origin: 'http://{addr}'"),
        )
        .start()
        .await;
    for alpn in ["h2", "http/1.1"] {
        let mut conn = gw
            .client(&ca.root_der)
            .connect("m.test", &[alpn])
            .await
            .unwrap();
        let resp = conn.get("m.test", "/").await;
        assert_eq!(resp.body.len(), big.len() + 200_000, "{alpn}");
        assert!(resp.text() == big.replace("http://", "https://"), "{alpn}");
    }
}

/// Trailers after a rewritten page (an HTTP/2 origin, an HTTP/2 client) arrive after its
/// last bytes.
#[tokio::test]
async fn trailers_follow_a_rewritten_page() {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;

    let ca = TestCa::new("rewrite CA");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|_req: Request<Incoming>| async move {
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("x-check", http::HeaderValue::from_static("done"));
                    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                        Ok(Frame::data(Bytes::from_static(b"<img src=\"http://m"))),
                        Ok(Frame::data(Bytes::from_static(b".test/a.png\">"))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header(header::CONTENT_TYPE, "text/html")
                            .body(StreamBody::new(futures_util::stream::iter(frames)))
                            .unwrap(),
                    )
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
            });
        }
    });
    let gw = GatewayBuilder::new()
        .tls_site(
            &ca,
            &["m.test"],
            &format!("mixed_content: rewrite, origin: {{url: 'http://{addr}', h2c: true}}"),
        )
        .start()
        .await;
    let mut conn = gw
        .client(&ca.root_der)
        .connect("m.test", &["h2"])
        .await
        .unwrap();
    let resp = conn
        .send(
            conn.request("m.test", "/")
                .body(portcullis_tests::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    assert_eq!(
        &collected.to_bytes()[..],
        b"<img src=\"https://m.test/a.png\">"
    );
    assert_eq!(trailers.unwrap()["x-check"], "done");
}
