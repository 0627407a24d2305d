//! The async runtime the gateway runs on.
//!
//! A multi-thread runtime also for one worker: Tokio's current-thread scheduler measured no
//! cheaper per request (callgrind: the same instructions; wall time within the noise), it
//! would run the main task and reloads on the serving thread, and `block_in_place` (reloads
//! and scrapes, `controller::off_the_workers`) needs the multi-thread one.
//!
//! Its LIFO slot is off. With the slot, a task woken by the task that is running runs next,
//! ahead of every task already queued. An HTTP/2 connection's task is woken by each of its
//! streams as its response is ready, so it ran after the first ready stream and wrote that
//! one response alone, then again for the next: HTTP/2 responses went out one or two per
//! TLS record and TCP segment. Without the slot a woken task joins the back of the queue,
//! the streams that are ready all run first, and the connection writes their responses in
//! one go (`docs/performance-steps.md#step-30`: 2.9 → 2.35 TCP segments and 2.8 → 2.4 system
//! calls per HTTP/2 request, as HAProxy). Nothing measured lost by it: HTTP/1.1 connections
//! are one task each and made the same system calls either way.
//!
//! `disable_lifo_slot` is in Tokio's unstable API: the workspace's `.cargo/config.toml`
//! builds with `--cfg tokio_unstable`. A `RUSTFLAGS` in the build's environment replaces the
//! config's flags, and such a build could only keep the slot: [`build`] refuses it with
//! [`RuntimeError::NoTokioUnstable`], which says how to rebuild, rather than run (and be
//! measured) as another program; the unit test that checks the slot says the same.
//!
//! With `--busy-poll` a worker that wakes from its wait for I/O goes on polling the sockets
//! (a non-blocking `epoll_wait`) for that long before it waits again, like HAProxy's
//! `busy-polling`: the origin's answer and the client's next request usually arrive within
//! a fraction of a millisecond, and a thread that sleeps in between pays a wake-up and two
//! context switches for each, which on a virtual machine are most of a lone request's time.
//! It costs the CPU it spins; see `docs/operations.md`, Threads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The runtime builder for `portcullis`: `workers` worker threads (the number of CPUs when
/// `None`), every driver on, the LIFO slot off.
fn builder(workers: Option<u16>) -> tokio::runtime::Builder {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        b.worker_threads(usize::from(n));
    }
    b.enable_all();
    #[cfg(tokio_unstable)]
    b.disable_lifo_slot();
    b
}

/// Why the runtime could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The binary was built without `--cfg tokio_unstable`.
    #[error(
        "this binary was built without `--cfg tokio_unstable`, so its runtime cannot turn off \
         Tokio's LIFO slot (docs/performance.md, step 30){}. A RUSTFLAGS or \
         CARGO_ENCODED_RUSTFLAGS in the build's environment replaces the flags of the \
         workspace's .cargo/config.toml: unset it, or add `--cfg tokio_unstable` to it, and \
         rebuild",
        if *busy_poll { "; busy polling (--busy-poll, step 36) was measured with it off" } else { "" }
    )]
    NoTokioUnstable {
        /// Busy polling was asked for.
        busy_poll: bool,
    },
    /// The operating system refused threads or the I/O driver.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Whether this build can turn off Tokio's LIFO slot.
const TOKIO_UNSTABLE: bool = cfg!(tokio_unstable);

/// The runtime for `portcullis`: `builder`'s, busy-polling for `busy_poll` after each
/// wake-up when that is set (and not zero).
pub fn build(
    workers: Option<u16>,
    busy_poll: Option<Duration>,
) -> Result<tokio::runtime::Runtime, RuntimeError> {
    check_build(TOKIO_UNSTABLE, busy_poll)?;
    Ok(build_polling(workers, busy_poll).map(|(rt, _)| rt)?)
}

/// Refuses a build that cannot run the runtime [`builder`] describes.
fn check_build(tokio_unstable: bool, busy_poll: Option<Duration>) -> Result<(), RuntimeError> {
    if tokio_unstable {
        return Ok(());
    }
    Err(RuntimeError::NoTokioUnstable {
        busy_poll: busy_poll.is_some_and(|w| !w.is_zero()),
    })
}

/// [`build`], with the busy polling's state when it is on.
fn build_polling(
    workers: Option<u16>,
    busy_poll: Option<Duration>,
) -> std::io::Result<(tokio::runtime::Runtime, Option<Arc<BusyPoll>>)> {
    let mut b = builder(workers);
    let Some(window) = busy_poll.filter(|w| !w.is_zero()) else {
        return Ok((b.build()?, None));
    };
    let poll = Arc::new(BusyPoll::new(window));
    let woken = poll.clone();
    b.on_thread_unpark(move || woken.wake());
    let rt = b.build()?;
    poll.start(rt.handle());
    Ok((rt, Some(poll)))
}

/// Keeps a woken worker polling for I/O for a while instead of going back to sleep.
///
/// A spinner task that yields makes its worker poll the I/O driver without waiting
/// (Tokio polls with a zero timeout while a yielded task is pending) and then run whatever
/// became ready, the spinner last. Each wake-up of a worker wakes one spinner; there is one
/// per worker, so with several workers as many can spin as have woken (the woken spinner
/// is queued from outside the worker's run loop, so any idle worker may take it; the one
/// holding the I/O driver polls it).
#[derive(Debug)]
struct BusyPoll {
    window: Duration,
    wake: Notify,
    /// Rounds spun, for the tests.
    #[cfg(test)]
    spins: std::sync::atomic::AtomicU64,
}

impl BusyPoll {
    fn new(window: Duration) -> Self {
        Self {
            window,
            wake: Notify::new(),
            #[cfg(test)]
            spins: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Called on a worker as it wakes from a wait (not from the spinners' zero-timeout polls).
    fn wake(&self) {
        self.wake.notify_one();
    }

    fn start(self: &Arc<Self>, rt: &tokio::runtime::Handle) {
        for _ in 0..rt.metrics().num_workers() {
            rt.spawn(self.clone().spin());
        }
    }

    async fn spin(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            let until = Instant::now() + self.window;
            while Instant::now() < until {
                #[cfg(test)]
                self.spins
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    reason = "tests write their fixtures and wait from outside the served path"
)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::BusyPoll;

    /// `build`'s runtime with busy polling on, and its spinners' state.
    fn busy_runtime(window: Duration) -> (tokio::runtime::Runtime, Arc<BusyPoll>) {
        let (rt, poll) = super::build_polling(Some(1), Some(window)).unwrap();
        (rt, poll.expect("busy polling is on"))
    }

    /// Wakes the worker from its wait for I/O: a timer of its own, which fires on the worker.
    fn wake_worker(rt: &tokio::runtime::Runtime) {
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            tx.send(()).unwrap();
        });
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }

    /// The spinners' rounds, once they have stopped changing (the window is over).
    fn settled(poll: &BusyPoll) -> u64 {
        for _ in 0..50 {
            let before = poll.spins.load(Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(100));
            let after = poll.spins.load(Ordering::Relaxed);
            if before == after {
                return after;
            }
        }
        panic!("the spinners never stopped");
    }

    #[test]
    fn a_woken_worker_polls_for_the_window_then_sleeps_until_woken_again() {
        let (rt, poll) = busy_runtime(Duration::from_millis(30));
        // Started, the worker woke for the spinners' first polls; wait until that is over.
        let at_rest = settled(&poll);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            poll.spins.load(Ordering::Relaxed),
            at_rest,
            "an idle worker sleeps: nothing spins without a wake-up"
        );
        wake_worker(&rt);
        let after_wake = settled(&poll);
        // 30 ms of zero-timeout polls: thousands of rounds on any machine; a worker that
        // went back to sleep would have spun once or not at all.
        assert!(
            after_wake - at_rest > 100,
            "the woken worker went on polling: {} rounds",
            after_wake - at_rest
        );
        // And the rounds stopped by themselves, within the window and the settling.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(poll.spins.load(Ordering::Relaxed), after_wake);
    }

    #[test]
    fn a_busy_polling_worker_still_serves_tasks_and_timers() {
        let (rt, _poll) = busy_runtime(Duration::from_millis(500));
        wake_worker(&rt);
        // While the spinner runs, other tasks and timers on the same (only) worker go on.
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            for i in 0..3 {
                tokio::time::sleep(Duration::from_millis(2)).await;
                tx.send(i).unwrap();
            }
        });
        for i in 0..3 {
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), i);
        }
    }

    #[test]
    fn without_busy_polling_there_is_no_spinner() {
        for off in [None, Some(Duration::ZERO)] {
            let rt = super::build(Some(1), off).unwrap();
            assert_eq!(rt.metrics().num_alive_tasks(), 0);
        }
        let rt = super::build(Some(2), Some(Duration::from_micros(200))).unwrap();
        assert_eq!(rt.metrics().num_alive_tasks(), 2, "one spinner per worker");
    }

    #[test]
    fn a_build_without_tokio_unstable_is_refused_with_the_fix() {
        assert!(super::check_build(true, Some(Duration::from_micros(200))).is_ok());
        let plain = super::check_build(false, None).unwrap_err().to_string();
        assert!(
            plain.contains("--cfg tokio_unstable") && plain.contains("RUSTFLAGS"),
            "{plain}"
        );
        let busy = super::check_build(false, Some(Duration::from_micros(200)))
            .unwrap_err()
            .to_string();
        assert!(busy.contains("--busy-poll"), "{busy}");
    }

    #[test]
    fn a_woken_task_runs_after_the_tasks_already_queued() {
        // (`black_box`: the constant is the point of the check, not a mistake.)
        assert!(
            std::hint::black_box(super::TOKIO_UNSTABLE),
            "this test binary was built without `--cfg tokio_unstable`, so the LIFO slot \
             stays on and this test must fail: a RUSTFLAGS (or CARGO_ENCODED_RUSTFLAGS) in the \
             environment replaced .cargo/config.toml's flags; unset it, or add \
             `--cfg tokio_unstable` to it"
        );
        let rt = super::builder(Some(1)).build().unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        rt.block_on(async {
            // `waiter` stands for an HTTP/2 connection's task, `queued` for a stream whose
            // response is ready: the waiter is woken after `queued` was made ready, by the
            // task that is running (on the worker, not the `block_on` thread).
            let notify = Arc::new(Notify::new());
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            let waiter = {
                let (notify, order) = (notify.clone(), order.clone());
                tokio::spawn(async move {
                    let notified = notify.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    ready_tx.send(()).unwrap();
                    notified.await;
                    order.lock().unwrap().push("woken");
                })
            };
            ready_rx.await.unwrap();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let runner = {
                let order = order.clone();
                tokio::spawn(async move {
                    tokio::spawn(async move {
                        order.lock().unwrap().push("queued");
                        done_tx.send(()).unwrap();
                    });
                    notify.notify_one();
                })
            };
            runner.await.unwrap();
            waiter.await.unwrap();
            done_rx.await.unwrap();
        });
        // With the LIFO slot the woken task would have taken the slot and run first.
        assert_eq!(*order.lock().unwrap(), ["queued", "woken"]);
    }
}
