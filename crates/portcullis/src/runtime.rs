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
//! one go (`docs/performance.md`, step 30: 2.9 → 2.35 TCP segments and 2.8 → 2.4 system
//! calls per HTTP/2 request, as HAProxy). Nothing measured lost by it: HTTP/1.1 connections
//! are one task each and made the same system calls either way.
//!
//! `disable_lifo_slot` is in Tokio's unstable API: the workspace's `.cargo/config.toml`
//! builds with `--cfg tokio_unstable`. A build without it (a `RUSTFLAGS` in the environment
//! replaces the config's flags) keeps the slot, and the unit test below fails.

/// The runtime builder for `portcullis`: `workers` worker threads (the number of CPUs when
/// `None`), every driver on, the LIFO slot off.
pub fn builder(workers: Option<u16>) -> tokio::runtime::Builder {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        b.worker_threads(usize::from(n));
    }
    b.enable_all();
    #[cfg(tokio_unstable)]
    b.disable_lifo_slot();
    b
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::sync::Notify;

    #[test]
    fn a_woken_task_runs_after_the_tasks_already_queued() {
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
