//! Origins that misbehave on purpose: they hold requests or the end of a response, answer
//! one status, or read a request whole and reset the connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a [`Custom`] origin does with every request.
#[derive(Debug, Clone, Copy)]
pub(super) enum Behaviour {
    /// Answers only once released (nothing, not even headers, before).
    Hold,
    /// Sends the headers and the start of the body at once, the rest once released.
    HoldBody,
    /// Answers with this status.
    Status(u16),
    /// Reads the request head and its whole body, then resets the connection.
    ReadThenReset,
}

#[derive(Default)]
struct Counters {
    /// Request heads received.
    received: AtomicUsize,
    /// For `ReadThenReset`: the length of each body read before the reset.
    bodies: Mutex<Vec<usize>>,
}

/// An origin on 127.0.0.1:0 with one [`Behaviour`]; its answers carry `x-origin: <port>`.
pub(super) struct Custom {
    pub(super) addr: SocketAddr,
    counters: Arc<Counters>,
    release: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for Custom {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Custom {
    pub(super) async fn start(behaviour: Behaviour) -> Self {
        portcullis_tests::init();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let (release, released) = watch::channel(false);
        let state = counters.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let state = state.clone();
                let released = released.clone();
                tokio::spawn(async move {
                    if let Behaviour::ReadThenReset = behaviour {
                        read_then_reset(tcp, &state).await;
                        return;
                    }
                    let svc = service_fn(move |_req: Request<Incoming>| {
                        state.received.fetch_add(1, Ordering::SeqCst);
                        answer(behaviour, addr.port(), released.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            counters,
            release,
            task,
        }
    }

    pub(super) fn url(&self) -> String {
        super::url(self.addr)
    }

    pub(super) fn received(&self) -> usize {
        self.counters.received.load(Ordering::SeqCst)
    }

    pub(super) fn bodies(&self) -> Vec<usize> {
        self.counters.bodies.lock().unwrap().clone()
    }

    /// Lets every held request (and every later one) finish.
    pub(super) fn release(&self) {
        self.release.send_replace(true);
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn answer(
    behaviour: Behaviour,
    port: u16,
    mut released: watch::Receiver<bool>,
) -> Result<Response<Body>, Infallible> {
    let fixed = |text: &'static str| Full::new(Bytes::from_static(text.as_bytes())).boxed();
    let (status, body) = match behaviour {
        Behaviour::Hold => {
            let _ = released.wait_for(|r| *r).await;
            (StatusCode::OK, fixed("held"))
        }
        Behaviour::HoldBody => {
            let start = futures_util::stream::once(async {
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"start ")))
            });
            let end = futures_util::stream::once(async move {
                let _ = released.wait_for(|r| *r).await;
                Ok(Frame::data(Bytes::from_static(b"end")))
            });
            (
                StatusCode::OK,
                BodyExt::boxed(StreamBody::new(futures_util::StreamExt::chain(start, end))),
            )
        }
        Behaviour::Status(code) => (StatusCode::from_u16(code).unwrap(), fixed("fixed status")),
        Behaviour::ReadThenReset => unreachable!("served without HTTP"),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert("x-origin", port.into());
    Ok(resp)
}

async fn read_then_reset(mut tcp: TcpStream, counters: &Counters) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    counters.received.fetch_add(1, Ordering::SeqCst);
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() - head_end < length {
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    counters.bodies.lock().unwrap().push(buf.len() - head_end);
    // RST rather than FIN: the connection breaks with the request consumed and unanswered.
    let _ = tcp.set_zero_linger();
    drop(tcp);
}
