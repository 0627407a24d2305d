//! Graceful drain: connections hold a token and watch a signal. On shutdown every HTTP
//! connection is told to finish its current requests and close; the drain is complete when
//! the last token is dropped.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use hyper::body::Body;
use hyper::rt::{Read, Write};
use hyper::server::conn::http2;
use hyper::service::HttpService;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, watch};

use crate::conn::{ConnClock, Expired};

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

    /// Runs a client connection under its limits: closed gracefully when the drain starts
    /// or it sits idle too long, cut off at once when its request head is too slow or it
    /// floods resets. Returns the connection's own result, or why it was cut off.
    ///
    /// The connection comes boxed: this future lives in the connection's task for as long
    /// as the connection, which then holds a pointer rather than the connection's state
    /// (and the state of whichever protocol it does not speak).
    pub(crate) async fn supervise<C: GracefulConn>(
        &mut self,
        mut conn: Pin<Box<C>>,
        clock: &ConnClock,
        (header_timeout, idle_timeout): (Duration, Duration),
    ) -> Supervised<C::Output> {
        let mut closing = false;
        loop {
            tokio::select! {
                // The connection first: its progress decides what the clock says.
                biased;
                out = conn.as_mut() => return Supervised::Done(out),
                () = self.signalled(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                expired = clock.watchdog(header_timeout, idle_timeout), if !closing => match expired {
                    Expired::Head => return Supervised::HeadTimeout,
                    Expired::Idle => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                },
                () = clock.abuse.notified() => return Supervised::Abusive,
            }
        }
    }
}

impl<T, E: std::fmt::Display> Supervised<Result<T, E>> {
    /// The same outcome with the connection's error as text.
    pub(crate) fn err_to_string(self) -> Supervised<Result<T, String>> {
        match self {
            Supervised::Done(r) => Supervised::Done(r.map_err(|e| e.to_string())),
            Supervised::HeadTimeout => Supervised::HeadTimeout,
            Supervised::Abusive => Supervised::Abusive,
        }
    }
}

/// How a supervised connection ended.
pub(crate) enum Supervised<T> {
    /// It finished (or closed gracefully); its own result.
    Done(T),
    /// Cut off: the request head did not arrive in time.
    HeadTimeout,
    /// Cut off: too many streams reset by the client.
    Abusive,
}

/// A hyper connection that can be asked to finish in-flight requests and close.
pub(crate) trait GracefulConn: Future {
    fn graceful_shutdown(self: Pin<&mut Self>);
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
