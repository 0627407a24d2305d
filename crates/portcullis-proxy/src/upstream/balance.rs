//! Picking a server for a request: weighted round robin, least requests, power of two
//! random choices, or rendezvous hashing of a request key.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use portcullis_config::Balance;

use super::backend::{Backend, mix};

/// The balancing state of one origin.
#[derive(Debug)]
pub(crate) struct Balancer {
    kind: Kind,
    /// Round robin position (also rotates where ties start for least requests).
    next: AtomicUsize,
    /// Server indices in smooth weighted round-robin order, one cycle long.
    cycle: Box<[u32]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    RoundRobin,
    LeastRequests,
    RandomTwo,
    Hash,
}

impl Balancer {
    pub(crate) fn new(balance: &Balance, backends: &[Arc<Backend>]) -> Self {
        let kind = match balance {
            Balance::RoundRobin => Kind::RoundRobin,
            Balance::LeastRequests => Kind::LeastRequests,
            Balance::RandomTwo => Kind::RandomTwo,
            Balance::Hash(_) => Kind::Hash,
            // A request whose cookie names an available server goes there without asking
            // the balancer (`Upstream::sticky_server`); the others are shared round robin.
            Balance::Sticky(_) => Kind::RoundRobin,
        };
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        Self {
            kind,
            // Start each origin at a different place so several gateways (or a reload)
            // do not all hit the first server first.
            next: AtomicUsize::new(fastrand::usize(
                ..weights.iter().sum::<u32>().max(1) as usize,
            )),
            cycle: smooth_cycle(&weights),
        }
    }

    /// A server for a request, skipping unavailable ones and those in `tried` (unless
    /// nothing else is left). `key` is the request's hash key, if the origin hashes and
    /// the request has one.
    pub(crate) fn pick(
        &self,
        backends: &[Arc<Backend>],
        key: Option<u64>,
        tried: &[usize],
    ) -> Option<usize> {
        // An origin with no servers (a Service with no ready endpoint) has nothing to pick.
        if backends.is_empty() {
            return None;
        }
        if backends.len() == 1 {
            return backends[0].available().then_some(0);
        }
        let usable = |i: usize| backends[i].available() && !tried.contains(&i);
        let pick = |usable: &dyn Fn(usize) -> bool| match (self.kind, key) {
            (Kind::Hash, Some(key)) => rendezvous(backends, key, usable),
            (Kind::LeastRequests, _) => self.least_requests(backends, usable),
            (Kind::RandomTwo, _) => random_two(backends, usable),
            _ => self.round_robin(usable, tried.is_empty()),
        };
        pick(&usable).or_else(|| {
            // Every untried server is down: a server already tried is better than none.
            (!tried.is_empty())
                .then(|| pick(&|i| backends[i].available()))
                .flatten()
        })
    }

    /// The next usable server in the cycle. A retry (`advance` false) looks from the
    /// current position without moving it, so retries away from a dead server do not
    /// skip the servers after it and send it more than its share of first attempts.
    fn round_robin(&self, usable: &dyn Fn(usize) -> bool, advance: bool) -> Option<usize> {
        let n = self.cycle.len();
        let start = if advance {
            self.next.fetch_add(1, Ordering::Relaxed)
        } else {
            self.next.load(Ordering::Relaxed)
        };
        (0..n)
            .map(|k| self.cycle[(start + k) % n] as usize)
            .find(|&i| usable(i))
    }

    fn least_requests(
        &self,
        backends: &[Arc<Backend>],
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = backends.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| usable(i))
            .min_by(|&a, &b| load(&backends[a]).cmp(&load(&backends[b])))
    }
}

/// Requests in flight relative to weight, scaled to stay an integer.
fn load(b: &Backend) -> u64 {
    (b.in_flight.load(Ordering::Relaxed) as u64 + 1) * 1_000_000 / u64::from(b.weight.max(1))
}

/// Two servers drawn at random (by weight); the less loaded one wins.
fn random_two(backends: &[Arc<Backend>], usable: &dyn Fn(usize) -> bool) -> Option<usize> {
    let candidates: Vec<usize> = (0..backends.len()).filter(|&i| usable(i)).collect();
    let draw = |exclude: Option<usize>| {
        let total: u64 = candidates
            .iter()
            .filter(|&&i| Some(i) != exclude)
            .map(|&i| u64::from(backends[i].weight))
            .sum();
        if total == 0 {
            return None;
        }
        let mut r = fastrand::u64(..total);
        for &i in candidates.iter().filter(|&&i| Some(i) != exclude) {
            let w = u64::from(backends[i].weight);
            if r < w {
                return Some(i);
            }
            r -= w;
        }
        None
    };
    let a = draw(None)?;
    let Some(b) = draw(Some(a)) else {
        return Some(a);
    };
    Some(if load(&backends[b]) < load(&backends[a]) {
        b
    } else {
        a
    })
}

/// Weighted rendezvous (highest random weight) hashing: each server scores the key, the
/// highest score wins. Removing a server moves only the keys it had.
fn rendezvous(
    backends: &[Arc<Backend>],
    key: u64,
    usable: &dyn Fn(usize) -> bool,
) -> Option<usize> {
    (0..backends.len())
        .filter(|&i| usable(i))
        .map(|i| (i, score(key, &backends[i])))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i)
}

fn score(key: u64, b: &Backend) -> f64 {
    let h = mix(key ^ b.hash_id);
    // A uniform draw in (0, 1) from the hash; -w / ln(u) gives each server a share of
    // keys proportional to its weight.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(b.weight) / u.ln()
}

/// Smooth weighted round robin (as nginx does it): weights 5, 1, 1 give a a b a c a a,
/// never five a's in a row. The weights are divided by their common divisor first.
fn smooth_cycle(weights: &[u32]) -> Box<[u32]> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w / g)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i)))
            .unwrap_or((0, &0));
        current[best] -= total;
        out.push(best as u32);
    }
    if out.is_empty() {
        out.push(0);
    }
    out.into_boxed_slice()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_servers_means_no_pick_with_every_policy() {
        for balance in [
            Balance::RoundRobin,
            Balance::LeastRequests,
            Balance::RandomTwo,
            Balance::Hash(portcullis_config::HashKey::ClientIp),
        ] {
            let b = Balancer::new(&balance, &[]);
            assert_eq!(b.pick(&[], Some(7), &[]), None, "{balance:?}");
            assert_eq!(b.pick(&[], None, &[0]), None, "{balance:?}");
        }
    }

    #[test]
    fn smooth_cycle_spreads_the_heavy_server() {
        assert_eq!(&*smooth_cycle(&[5, 1, 1]), &[0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(&*smooth_cycle(&[2, 2]), &[0, 1]);
        assert_eq!(&*smooth_cycle(&[1]), &[0]);
    }
}
