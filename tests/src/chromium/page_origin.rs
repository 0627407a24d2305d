//! An HTTP/1.1 origin on 127.0.0.1:0 serving fixed resources (a page, its script, its
//! image) with their content types, 404 for anything else; it records the paths asked.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A 1×1 grey PNG.
pub const PIXEL_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x00, 0x00, 0x00, 0x3a, 0x7e, 0x9b,
    0x55, 0x00, 0x00, 0x00, 0x0a, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x60, 0x00, 0x00, 0x00,
    0x02, 0x00, 0x01, 0x48, 0xaf, 0xa4, 0x71, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
    0x42, 0x60, 0x82,
];

type Resources = HashMap<String, (String, Bytes)>;

/// The origin; stopped when dropped.
pub struct PageOrigin {
    /// Where it listens.
    pub addr: SocketAddr,
    resources: Arc<Mutex<Resources>>,
    asked: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for PageOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PageOrigin {
    /// Starts serving nothing; [`PageOrigin::put`] adds resources (a page can name the
    /// gateway's port, known only once the gateway runs in front of this origin).
    pub async fn start() -> Self {
        crate::init();
        let resources: Arc<Mutex<Resources>> = Arc::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (serving, record) = (resources.clone(), asked.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (resources, record) = (serving.clone(), record.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let resp = answer(&resources, &record, &req);
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            resources,
            asked,
            task,
        }
    }

    /// Serves `body` with `content_type` at `path` from now on.
    pub fn put(&self, path: &str, content_type: &str, body: impl Into<Bytes>) {
        self.resources
            .lock()
            .unwrap()
            .insert(path.to_owned(), (content_type.to_owned(), body.into()));
    }

    /// The paths asked so far, in order.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

fn answer(
    resources: &Mutex<Resources>,
    asked: &Mutex<Vec<String>>,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    asked.lock().unwrap().push(path.clone());
    let found = resources.lock().unwrap().get(&path).cloned();
    match found {
        Some((ty, body)) => Response::builder()
            .header(header::CONTENT_TYPE, ty)
            .header(header::CACHE_CONTROL, "no-store")
            .body(Full::new(body.clone()))
            .unwrap(),
        None => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"not here")))
            .unwrap(),
    }
}
