//! The retry budget: retries may add at most a fixed fraction to an origin's requests, so
//! an origin in trouble is not hit by a storm of retries on top of its normal load.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Length of one counting window; the budget looks at the current and the previous one.
const WINDOW: Duration = Duration::from_secs(10);
/// Retries always allowed per window, so a quiet origin can still retry.
const FLOOR: f64 = 10.0;

#[derive(Debug)]
pub(crate) struct RetryBudget {
    ratio: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    start: Instant,
    requests: u64,
    retries: u64,
    prev_requests: u64,
    prev_retries: u64,
}

impl RetryBudget {
    pub(crate) fn new(ratio: f64) -> Self {
        Self {
            ratio,
            state: Mutex::new(State {
                start: Instant::now(),
                requests: 0,
                retries: 0,
                prev_requests: 0,
                prev_retries: 0,
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let age = s.start.elapsed();
        if age >= WINDOW * 2 {
            *s = State {
                start: Instant::now(),
                requests: 0,
                retries: 0,
                prev_requests: 0,
                prev_retries: 0,
            };
        } else if age >= WINDOW {
            s.prev_requests = s.requests;
            s.prev_retries = s.retries;
            s.requests = 0;
            s.retries = 0;
            s.start += WINDOW;
        }
        f(&mut s)
    }

    /// A first attempt was made.
    pub(crate) fn deposit(&self) {
        self.with(|s| s.requests += 1);
    }

    /// Takes one retry from the budget; false when the budget is spent.
    pub(crate) fn withdraw(&self) -> bool {
        let ratio = self.ratio;
        self.with(|s| {
            let requests = (s.requests + s.prev_requests) as f64;
            let retries = (s.retries + s.prev_retries) as f64;
            let allowed = (requests * ratio).max(FLOOR);
            if retries < allowed {
                s.retries += 1;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stop_at_the_floor_then_follow_the_ratio() {
        let b = RetryBudget::new(0.2);
        let allowed = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(allowed, FLOOR as usize);
        for _ in 0..100 {
            b.deposit();
        }
        // 100 requests at 20% allow 20 retries in all; 10 are spent.
        let more = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(more, 10);
    }
}
