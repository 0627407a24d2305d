//! A TCP proxy a test controls, between a gateway and what it talks to (etcd, an API
//! server): `partition` cuts every connection and holds new ones silent, as a network
//! partition looks to a client (its own timeouts fire, nothing is refused); `heal` lets
//! connections through again. [`TcpProxy::round_robin`] spreads successive connections over
//! several targets (the replicas' listeners, as a layer-4 load balancer does), skipping one
//! that refuses the connection (a killed replica), and counts connections per target.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The proxy; it stops when dropped.
pub struct TcpProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    partitioned: watch::Sender<bool>,
    accepted: Arc<AtomicUsize>,
    targets: Arc<Targets>,
    task: JoinHandle<()>,
}

/// Where connections go, and how many went to each.
#[derive(Default)]
struct Targets {
    list: Mutex<Vec<SocketAddr>>,
    next: AtomicUsize,
    relayed: Mutex<HashMap<SocketAddr, usize>>,
}

impl Targets {
    /// The targets to try for a new connection, in order: the next one in turn first.
    fn turn(&self) -> Vec<SocketAddr> {
        let list = self.list.lock().unwrap().clone();
        if list.is_empty() {
            return list;
        }
        let first = self.next.fetch_add(1, Ordering::Relaxed) % list.len();
        list[first..]
            .iter()
            .chain(&list[..first])
            .copied()
            .collect()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpProxy {
    /// A proxy on 127.0.0.1:0 to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        Self::round_robin(vec![target]).await
    }

    /// A proxy on 127.0.0.1:0 sending each new connection to the next of `targets` in
    /// turn; a target that refuses the connection is skipped for the one after it. Empty
    /// is allowed (connections are then closed at once) until [`set_targets`].
    ///
    /// [`set_targets`]: Self::set_targets
    pub async fn round_robin(targets: Vec<SocketAddr>) -> Self {
        let targets = Arc::new(Targets {
            list: Mutex::new(targets),
            ..Targets::default()
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (partitioned, _) = watch::channel(false);
        let accepted = Arc::new(AtomicUsize::new(0));
        let (tx, count, to) = (partitioned.clone(), accepted.clone(), targets.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let rx = tx.subscribe();
                conns.spawn(relay(client, to.clone(), rx));
                while conns.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            partitioned,
            accepted,
            targets,
            task,
        }
    }

    /// Replaces the targets (for connections accepted from now on).
    pub fn set_targets(&self, targets: Vec<SocketAddr>) {
        *self.targets.list.lock().unwrap() = targets;
    }

    /// Connections relayed to `target` so far (connected to it, whatever followed).
    pub fn relayed_to(&self, target: SocketAddr) -> usize {
        self.targets
            .relayed
            .lock()
            .unwrap()
            .get(&target)
            .copied()
            .unwrap_or(0)
    }

    /// Cuts every open connection; new ones are accepted and then hear nothing.
    pub fn partition(&self) {
        self.partitioned.send_replace(true);
    }

    /// Lets new connections through again.
    pub fn heal(&self) {
        self.partitioned.send_replace(false);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

async fn relay(
    mut client: TcpStream,
    targets: Arc<Targets>,
    mut partitioned: watch::Receiver<bool>,
) {
    if *partitioned.borrow_and_update() {
        // Silent until healed, then closed: the client's own timeout decides first.
        let _ = partitioned.wait_for(|p| !*p).await;
        return;
    }
    let mut upstream = None;
    for target in targets.turn() {
        if let Ok(tcp) = TcpStream::connect(target).await {
            *targets.relayed.lock().unwrap().entry(target).or_default() += 1;
            upstream = Some(tcp);
            break;
        }
    }
    let Some(mut upstream) = upstream else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = partitioned.wait_for(|p| *p) => {}
    }
}

#[cfg(test)]
mod tests;
