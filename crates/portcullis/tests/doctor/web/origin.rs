//! An origin serving a small site with mixed content: a start page with every kind of
//! `http://` subresource (and URLs that are not subresources), a second and third page
//! reached by relative links, an image, and 404 for anything else; for `redirecting.*`
//! hosts, the ACME challenge path is redirected to HTTPS on another host, and every answer
//! carries `Strict-Transport-Security`, plain HTTP or not; `apex.*` hosts redirect every
//! path to `www.`. It records the paths
//! it was asked for.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The start page: blocked kinds in document order are script, stylesheet, CSS @import,
/// font, iframe, srcset, srcset (picture), form action; upgradeable ones CSS url(), img,
/// CSS url() (an uppercase `STYLE` attribute), video.
pub const START: &str = r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>start</title>
<SCRIPT SRC="http://cdn.test/app.js"></SCRIPT>
<link rel="stylesheet" href="http://cdn.test/site.css">
<link rel="canonical" href="http://www.test/">
<style>
  @import url("http://cdn.test/imported.css");
  @font-face { font-family: f; src: url(http://cdn.test/font.woff2) format("woff2") }
  body { background: url('http://img.test/bg.png') }
</style>
<script>var tracker = "http://inscript.test/t.js"; var img = '<img src="http://inscript.test/x.png">';</script>
</head><body>
<iframe src="http://frames.test/widget"></iframe>
<img src="http://img.test/hero.png" srcset="http://img.test/hero-2x.png 2x">
<picture><source srcset="http://img.test/wide.webp"><img src="https://img.test/secure.png"></picture>
<div STYLE="background: URL(http://img.test/banner.png)">banner</div>
<video src="http://media.test/clip.mp4"></video>
<form action="http://forms.test/subscribe"><input name="email"></form>
<img src="local.png"><img src="//img.test/protocol-relative.png">
<a href="docs/second">next</a> <a href="https://other.test/elsewhere">elsewhere</a>
<a href="/logo.png">logo</a> <a href="/#top">top</a>
</body></html>
"#;

const SECOND: &str = r#"<html><body><script src="http://cdn.test/second.js"></script>
<img src="http://img.test/second.png"><a href="third">third</a><a href="/">home</a></body></html>"#;

const THIRD: &str =
    r#"<html><body><img src="http://img.test/third.png"><a href="second">back</a></body></html>"#;

/// A running origin; stops when dropped.
pub struct PageOrigin {
    /// Where it listens.
    pub addr: SocketAddr,
    paths: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for PageOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PageOrigin {
    /// Listens on 127.0.0.1:0.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let paths = Arc::new(Mutex::new(Vec::new()));
        let seen = paths.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move { Ok::<_, Infallible>(answer(&seen, &req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self { addr, paths, task }
    }

    /// The paths asked for so far.
    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

fn answer(seen: &Mutex<Vec<String>>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    seen.lock().unwrap().push(path.clone());
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if path.starts_with("/.well-known/acme-challenge/") && host.starts_with("redirecting.") {
        // An origin that sends everything to HTTPS, the ACME path included.
        return Response::builder()
            .status(301)
            .header("location", format!("https://www.redirecting.test{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    if host.starts_with("apex.") {
        // The bare name sends every page to `www.`.
        return Response::builder()
            .status(301)
            .header("location", format!("https://www.{host}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    let (status, content_type, body): (u16, &str, Bytes) = match path.as_str() {
        "/" => (200, "text/html; charset=utf-8", START.into()),
        "/docs/second" => (200, "text/html", SECOND.into()),
        "/docs/third" => (200, "text/html", THIRD.into()),
        "/logo.png" => (
            200,
            "image/png",
            Bytes::from_static(b"\x89PNG\r\n\x1a\n<a href=\"/x\">"),
        ),
        _ => (404, "text/plain", "not found\n".into()),
    };
    let mut resp = Response::builder();
    if host.starts_with("redirecting.") {
        // Sent whatever the scheme: wrong on plain HTTP.
        resp = resp.header("strict-transport-security", "max-age=60");
    }
    resp.status(status)
        .header("content-type", content_type)
        .body(Full::new(body))
        .unwrap()
}
