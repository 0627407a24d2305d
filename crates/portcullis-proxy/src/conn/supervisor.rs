//! The connection supervisor: [`DrainWatch::supervise`] runs a connection while its clock's
//! watchdog cuts off slow heads and idle connections and its reset alarm cuts off floods.
//! And the graceful drain: connections hold a token and watch a signal. On shutdown every
//! HTTP connection is told to finish its current requests and close; the drain is complete
//! when the last token is dropped.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;

use hyper::body::Body;
use hyper::rt::{Read, Write};
use hyper::server::conn::http2;
use hyper::service::HttpService;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{Notify, mpsc};

use super::{ConnClock, Expired};

/// Owned by the server; starts and awaits the drain.
pub(crate) struct Drain {
    signal: Arc<Signal>,
    token: mpsc::Sender<()>,
    done: mpsc::Receiver<()>,
}

/// Held by each connection (and each upgraded tunnel) while it lives.
#[derive(Clone, Debug)]
pub(crate) struct DrainWatch {
    signal: Arc<Signal>,
    _token: mpsc::Sender<()>,
}

/// The drain signal: a flag and the connections waiting for it. (A `watch` channel did the
/// same, but a wait on it is 160 bytes against 64 for `Notify`'s, and an idle keep-alive
/// connection holds one for as long as it is open.)
#[derive(Debug, Default)]
struct Signal {
    stopping: AtomicBool,
    notify: Notify,
}

impl Drain {
    pub(crate) fn new() -> Self {
        let (token, done) = mpsc::channel(1);
        Self {
            signal: Arc::default(),
            token,
            done,
        }
    }

    pub(crate) fn watcher(&self) -> DrainWatch {
        DrainWatch {
            signal: self.signal.clone(),
            _token: self.token.clone(),
        }
    }

    /// Tells every connection to finish.
    fn signal(&self) {
        self.signal.stopping.store(true, Ordering::Release);
        self.signal.notify.notify_waiters();
    }

    /// Signals every connection, then waits until all of them are gone.
    pub(crate) async fn drain(self) {
        self.signal();
        let Drain {
            token, mut done, ..
        } = self;
        drop(token);
        // `recv` returns `None` once every token has been dropped.
        let _ = done.recv().await;
    }
}

impl DrainWatch {
    /// Resolves when the drain starts.
    pub(crate) async fn signalled(&self) {
        let mut notified = pin!(self.signal.notify.notified());
        // Registered before the flag is read, so a drain starting in between is not missed.
        notified.as_mut().enable();
        if self.signal.stopping.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }

    /// Runs a client connection under its limits: closed gracefully when the drain starts
    /// or it sits idle too long, cut off at once when its request head is too slow or it
    /// floods resets. Returns the connection's own result, or why it was cut off.
    ///
    /// The connection comes boxed: this future lives in the connection's task for as long
    /// as the connection, which then holds a pointer rather than the connection's state
    /// (and the state of whichever protocol it does not speak).
    ///
    /// The connection's task wakes for every read and write; the drain signal, the
    /// watchdog and the reset alarm are polled only when one of them woke it (their own
    /// waker says so). Polling all three on every wake, as a `select!` does, cost about
    /// 1,000 instructions a request under callgrind: two locks (the drain signal's and the
    /// alarm's waiter lists) and the watchdog's timer.
    pub(crate) async fn supervise<C: GracefulConn>(
        &mut self,
        mut conn: Pin<Box<C>>,
        clock: &ConnClock,
        (header_timeout, idle_timeout): (Duration, Duration),
    ) -> Supervised<C::Output> {
        let mut closing = false;
        let limits = Arc::new(LimitsWoken::default());
        let limits_waker = Waker::from(limits.clone());
        let mut signalled = pin!(self.signalled());
        let mut watchdog = pin!(clock.watchdog(header_timeout, idle_timeout));
        let mut abuse = pin!(clock.abuse.notified());
        std::future::poll_fn(|cx| {
            loop {
                // The connection first: its progress decides what the clock says.
                if let Poll::Ready(out) = conn.as_mut().poll(cx) {
                    return Poll::Ready(Supervised::Done(out));
                }
                // Registered before the flag is read: a wake in between sets the flag.
                limits.task.register(cx.waker());
                if !limits.woken.swap(false, Ordering::AcqRel) {
                    return Poll::Pending;
                }
                let mut lcx = Context::from_waker(&limits_waker);
                let mut finish = false;
                if !closing {
                    finish = signalled.as_mut().poll(&mut lcx).is_ready();
                    if !finish {
                        match watchdog.as_mut().poll(&mut lcx) {
                            Poll::Ready(Expired::Head) => {
                                return Poll::Ready(Supervised::HeadTimeout);
                            }
                            Poll::Ready(Expired::Idle) => finish = true,
                            Poll::Pending => {}
                        }
                    }
                }
                if abuse.as_mut().poll(&mut lcx).is_ready() {
                    return Poll::Ready(Supervised::Abusive);
                }
                if !finish {
                    return Poll::Pending;
                }
                // Told to finish: the connection is polled again, as it may now be done.
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        })
        .await
    }
}

/// The waker [`DrainWatch::supervise`] polls a connection's limits with: notes that one of
/// them has something to say, then wakes the connection's task.
struct LimitsWoken {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Default for LimitsWoken {
    fn default() -> Self {
        Self {
            // Polled once at the start, so that each registers its waker.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }
    }
}

impl Wake for LimitsWoken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that wakes its task `busy` times, then waits until told to finish.
    struct Conn {
        busy: usize,
        polls: usize,
        finishing: bool,
    }

    impl Future for Conn {
        type Output = usize;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.finishing {
                return Poll::Ready(self.polls);
            }
            if self.busy > 0 {
                self.busy -= 1;
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        }
    }

    impl GracefulConn for Conn {
        fn graceful_shutdown(mut self: Pin<&mut Self>) {
            self.finishing = true;
        }
    }

    fn conn(busy: usize) -> Pin<Box<Conn>> {
        Box::pin(Conn {
            busy,
            polls: 0,
            finishing: false,
        })
    }

    const TIMEOUTS: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(60));

    /// `f`'s output; a supervisor that misses its limits' wake-ups never returns, which
    /// (time being paused and advanced whenever nothing runs) fails here.
    async fn within_an_hour<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(3600), f)
            .await
            .expect("the supervisor missed its wake-up")
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_busy_for_a_while_is_still_closed_once_idle_too_long() {
        let drain = Drain::new();
        let mut watch = drain.watcher();
        let clock = ConnClock::new(false);
        let start = tokio::time::Instant::now();
        let out = within_an_hour(watch.supervise(conn(1_000), &clock, TIMEOUTS)).await;
        assert!(matches!(out, Supervised::Done(polls) if polls > 1_000));
        assert!(start.elapsed() >= TIMEOUTS.1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_head_is_cut_off_and_resets_flood_too() {
        let drain = Drain::new();
        let mut watch = drain.watcher();
        let clock = ConnClock::new(true);
        let out = within_an_hour(watch.supervise(conn(100), &clock, TIMEOUTS)).await;
        assert!(matches!(out, Supervised::HeadTimeout));

        let clock = ConnClock::new(false);
        clock.abuse.notify_one();
        let out = within_an_hour(watch.supervise(conn(100), &clock, TIMEOUTS)).await;
        assert!(matches!(out, Supervised::Abusive));
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_tells_a_waiting_connection_to_finish() {
        let drain = Drain::new();
        let mut watch = drain.watcher();
        let clock = ConnClock::new(false);
        let supervised =
            tokio::spawn(async move { watch.supervise(conn(10), &clock, TIMEOUTS).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!supervised.is_finished());
        drain.signal();
        let out = within_an_hour(supervised).await.unwrap();
        assert!(matches!(out, Supervised::Done(_)));
    }
}
