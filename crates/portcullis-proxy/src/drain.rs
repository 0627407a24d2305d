//! Graceful drain: connections hold a token and watch a signal. On shutdown every HTTP
//! connection is told to finish its current requests and close; the drain is complete when
//! the last token is dropped.

use std::future::Future;
use std::pin::{Pin, pin};

use hyper::body::Body;
use hyper::rt::{Read, Write};
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, watch};

/// Owned by the server; starts and awaits the drain.
pub(crate) struct Drain {
    signal: watch::Sender<bool>,
    token: mpsc::Sender<()>,
    done: mpsc::Receiver<()>,
}

/// Held by each connection (and each upgraded tunnel) while it lives.
#[derive(Clone, Debug)]
pub(crate) struct DrainWatch {
    signal: watch::Receiver<bool>,
    _token: mpsc::Sender<()>,
}

impl Drain {
    pub(crate) fn new() -> Self {
        let (signal, _) = watch::channel(false);
        let (token, done) = mpsc::channel(1);
        Self {
            signal,
            token,
            done,
        }
    }

    pub(crate) fn watcher(&self) -> DrainWatch {
        DrainWatch {
            signal: self.signal.subscribe(),
            _token: self.token.clone(),
        }
    }

    /// Signals every connection, then waits until all of them are gone.
    pub(crate) async fn drain(self) {
        let Drain {
            signal,
            token,
            mut done,
        } = self;
        let _ = signal.send(true);
        drop(token);
        // `recv` returns `None` once every token has been dropped.
        let _ = done.recv().await;
    }
}

impl DrainWatch {
    /// Resolves when the drain starts.
    pub(crate) async fn signalled(&mut self) {
        let _ = self.signal.wait_for(|stop| *stop).await;
    }

    /// Runs `conn` to completion, asking it to close gracefully once the drain starts.
    pub(crate) async fn watch<C: GracefulConn>(mut self, conn: C) -> C::Output {
        let mut conn = pin!(conn);
        tokio::select! {
            out = conn.as_mut() => return out,
            () = self.signalled() => {}
        }
        conn.as_mut().graceful_shutdown();
        conn.await
    }
}

/// A hyper connection that can be asked to finish in-flight requests and close.
pub(crate) trait GracefulConn: Future {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> GracefulConn for http1::UpgradeableConnection<I, S>
where
    I: Read + Write + Unpin + Send + 'static,
    S: HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, S, B> GracefulConn for http1::Connection<I, S>
where
    I: Read + Write + Unpin + 'static,
    S: HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::Connection::graceful_shutdown(self);
    }
}

impl<I, S, B> GracefulConn for http2::Connection<I, S, TokioExecutor>
where
    I: Read + Write + Unpin + 'static,
    S: HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self);
    }
}
