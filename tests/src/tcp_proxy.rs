//! A TCP proxy a test controls, between a gateway and what it talks to (etcd, an API
//! server): `partition` cuts every connection and holds new ones silent, as a network
//! partition looks to a client (its own timeouts fire, nothing is refused); `heal` lets
//! connections through again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The proxy; it stops when dropped.
pub struct TcpProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    partitioned: watch::Sender<bool>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpProxy {
    /// A proxy on 127.0.0.1:0 to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (partitioned, _) = watch::channel(false);
        let accepted = Arc::new(AtomicUsize::new(0));
        let (tx, count) = (partitioned.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let rx = tx.subscribe();
                conns.spawn(relay(client, target, rx));
            }
        });
        Self {
            addr,
            partitioned,
            accepted,
            task,
        }
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

async fn relay(mut client: TcpStream, target: SocketAddr, mut partitioned: watch::Receiver<bool>) {
    if *partitioned.borrow_and_update() {
        // Silent until healed, then closed: the client's own timeout decides first.
        let _ = partitioned.wait_for(|p| !*p).await;
        return;
    }
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = partitioned.wait_for(|p| *p) => {}
    }
}
