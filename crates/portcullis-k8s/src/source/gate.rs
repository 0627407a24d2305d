//! When a snapshot may be published: the watchers' states ([`Gate`]) and the debounce
//! ([`settle`]). Both are free of I/O so they are tested alone.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How changes are gathered before a snapshot is published: once nothing has changed for
/// `quiet`, and at the latest `max` after the first change (so a steady trickle of
/// changes, endpoints of a rolling update, still gets published).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debounce {
    /// Quiet time that ends a burst.
    pub quiet: Duration,
    /// Longest a change waits.
    pub max: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Self {
            quiet: Duration::from_millis(100),
            max: Duration::from_secs(1),
        }
    }
}

/// Waits, after a change has been seen on `changes`, until the burst it belongs to is
/// over. False when the sender is gone.
pub(crate) async fn settle(changes: &mut watch::Receiver<u64>, d: Debounce) -> bool {
    let start = Instant::now();
    let last = start + d.max;
    loop {
        let until = (Instant::now() + d.quiet).min(last);
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() {
                    return false;
                }
                if Instant::now() >= last {
                    return true;
                }
            }
            () = tokio::time::sleep_until(until) => return true,
        }
    }
}

/// One watcher's state.
#[derive(Debug, Clone, Default)]
struct Watcher {
    /// Has finished an initial list at least once.
    synced: bool,
    /// Between `Init` and `InitDone`.
    listing: bool,
    /// Its last request failed, with what.
    failing: Option<String>,
}

/// Every watcher's state.
#[derive(Debug)]
pub(crate) struct Gate {
    watchers: Vec<Watcher>,
    last_error: Option<String>,
}

impl Gate {
    pub(crate) fn new(watchers: usize) -> Self {
        Self {
            watchers: vec![Watcher::default(); watchers],
            last_error: None,
        }
    }

    /// Watcher `i` starts a (re-)list.
    pub(crate) fn init(&mut self, i: usize) {
        self.watchers[i].listing = true;
    }

    /// Watcher `i` has its complete list.
    pub(crate) fn init_done(&mut self, i: usize) {
        let w = &mut self.watchers[i];
        w.listing = false;
        w.synced = true;
    }

    /// Watcher `i`'s request failed; true if it was not failing before.
    pub(crate) fn failed(&mut self, i: usize, error: String) -> bool {
        self.last_error = Some(error.clone());
        self.watchers[i].failing.replace(error).is_none()
    }

    /// Watcher `i` got an answer; true if it was failing.
    pub(crate) fn recovered(&mut self, i: usize) -> bool {
        self.watchers[i].failing.take().is_some()
    }

    /// Whether watcher `i` is failing.
    pub(crate) fn is_failing(&self, i: usize) -> bool {
        self.watchers[i].failing.is_some()
    }

    /// Every watcher has listed once and none is in the middle of a list: what the
    /// stores hold is complete.
    pub(crate) fn complete(&self) -> bool {
        self.watchers.iter().all(|w| w.synced && !w.listing)
    }

    /// No watcher is failing.
    pub(crate) fn api_up(&self) -> bool {
        self.watchers.iter().all(|w| w.failing.is_none())
    }

    /// The most recent error of any watcher.
    pub(crate) fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn complete_only_once_every_watcher_listed_and_none_is_relisting() {
        let mut g = Gate::new(3);
        assert!(!g.complete());
        for i in 0..3 {
            g.init(i);
        }
        g.init_done(0);
        g.init_done(2);
        assert!(!g.complete(), "watcher 1 has not listed yet");
        g.init_done(1);
        assert!(g.complete());
        // A 410 Gone: watcher 2 lists again; nothing is complete until it is done.
        g.init(2);
        assert!(!g.complete(), "a re-list in progress holds publication");
        g.init_done(2);
        assert!(g.complete());
    }

    #[test]
    fn the_api_is_up_when_no_watcher_fails() {
        let mut g = Gate::new(2);
        assert!(g.api_up());
        assert!(g.failed(1, "500".into()));
        assert!(!g.failed(1, "429".into()), "already failing");
        assert!(!g.api_up());
        assert_eq!(g.last_error(), Some("429"));
        assert!(!g.recovered(0));
        assert!(g.recovered(1));
        assert!(g.api_up());
        assert_eq!(g.last_error(), Some("429"), "kept for the record");
    }

    fn debounce() -> Debounce {
        Debounce {
            quiet: Duration::from_millis(100),
            max: Duration::from_secs(1),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_published_once_it_has_been_quiet() {
        let (tx, mut rx) = watch::channel(0u64);
        rx.borrow_and_update();
        let start = Instant::now();
        let burst = tokio::spawn(async move {
            for i in 1..=5 {
                tx.send_replace(i);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tx
        });
        rx.changed().await.unwrap();
        assert!(settle(&mut rx, debounce()).await);
        // Five changes 50 ms apart, the last at 200 ms: settled 100 ms after it.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(320),
            "{took:?}"
        );
        let _tx = burst.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_trickle_is_published_at_the_maximum() {
        let (tx, mut rx) = watch::channel(0u64);
        rx.borrow_and_update();
        let trickle = tokio::spawn(async move {
            for i in 1..=100 {
                tx.send_replace(i);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        rx.changed().await.unwrap();
        let start = Instant::now();
        assert!(settle(&mut rx, debounce()).await);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_millis(1060),
            "{took:?}"
        );
        trickle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn settle_ends_when_the_sender_is_gone() {
        let (tx, mut rx) = watch::channel(0u64);
        drop(tx);
        assert!(!settle(&mut rx, debounce()).await);
    }
}
