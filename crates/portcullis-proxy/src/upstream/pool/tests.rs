//! The pool against in-memory origins: each connect makes a duplex pipe with a hyper server
//! on the far end, and the test decides when connects and responses may go ahead.

use super::*;

use std::future::Future;
use std::sync::atomic::AtomicUsize;

use http_body_util::Full;
use hyper::service::service_fn;
use tokio::io::DuplexStream;
use tokio::sync::Semaphore;

use crate::upstream::test_pipe::Pipe;

/// An origin whose connects wait for `connects` permits and whose responses wait for
/// `responses` permits.
#[derive(Clone)]
struct Origin {
    connects: Arc<Semaphore>,
    responses: Arc<Semaphore>,
    h2: bool,
    /// New connections negotiate HTTP/2 as if by ALPN.
    alpn_h2: Arc<AtomicBool>,
    /// Close each connection after its first response.
    one_shot: bool,
    /// Connects asked for, requests received, server connections ended.
    calls: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
    refuse: bool,
}

impl Origin {
    fn new() -> Self {
        Self {
            connects: Arc::new(Semaphore::new(0)),
            responses: Arc::new(Semaphore::new(0)),
            h2: false,
            alpn_h2: Arc::default(),
            one_shot: false,
            calls: Arc::default(),
            received: Arc::default(),
            ended: Arc::default(),
            refuse: false,
        }
    }

    fn open(self) -> Self {
        self.connects.add_permits(Semaphore::MAX_PERMITS / 2);
        self.responses.add_permits(Semaphore::MAX_PERMITS / 2);
        self
    }

    fn count(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }

    async fn serve(self, io: DuplexStream, h2: bool) {
        let me = self.clone();
        let svc = service_fn(move |_req: Request<Incoming>| {
            let me = me.clone();
            async move {
                me.received.fetch_add(1, Ordering::SeqCst);
                me.responses.acquire().await.unwrap().forget();
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("ok"))))
            }
        });
        let io = TokioIo::new(io);
        if h2 {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, svc)
                .await;
        } else {
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(!self.one_shot)
                .serve_connection(io, svc)
                .await;
        }
        self.ended.fetch_add(1, Ordering::SeqCst);
    }
}

impl Service<PoolKey> for Origin {
    type Response = TokioIo<Pipe>;
    type Error = OriginError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, OriginError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _key: PoolKey) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            me.calls.fetch_add(1, Ordering::SeqCst);
            if me.refuse {
                return Err(OriginError::new(OriginFailureKind::Refused, "refused"));
            }
            me.connects.acquire().await.unwrap().forget();
            let alpn_h2 = me.alpn_h2.load(Ordering::SeqCst);
            let (client, server) = tokio::io::duplex(64 * 1024);
            tokio::spawn(me.clone().serve(server, me.h2 || alpn_h2));
            Ok(TokioIo::new(Pipe(client, alpn_h2)))
        })
    }
}

/// A pool on `origin` (idle timeout one minute, no metrics).
fn pool_on(origin: &Origin, h2_only: bool, max: Option<usize>) -> Arc<OriginPool<Origin>> {
    Arc::new(OriginPool::new(
        origin.clone(),
        Duration::from_secs(60),
        h2_only,
        max,
        None,
    ))
}

/// Sends `n` requests at once; each must fail as refused.
async fn all_refused(pool: &Arc<OriginPool<Origin>>, n: usize) {
    let burst: Vec<_> = (0..n).map(|_| spawn_get(pool)).collect();
    for r in burst {
        let err = r.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), OriginFailureKind::Refused);
    }
}

fn get() -> Request<ReplayBody> {
    Request::get("http://origin/x")
        .body(ReplayBody::empty())
        .unwrap()
}

fn key() -> PoolKey {
    PoolKey::Shared
}

async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn spawn_get(pool: &Arc<OriginPool<Origin>>) -> tokio::task::JoinHandle<Result<u16, OriginError>> {
    let pool = pool.clone();
    tokio::spawn(async move {
        pool.request(&key(), get())
            .await
            .map(|r| r.status().as_u16())
    })
}

#[tokio::test]
async fn a_request_waits_for_a_connect_under_way_instead_of_starting_another() {
    let origin = Origin::new();
    let pool = pool_on(&origin, false, None);
    // One connection, X, idle.
    origin.connects.add_permits(1);
    origin.responses.add_permits(1);
    assert_eq!(spawn_get(&pool).await.unwrap().unwrap(), 200);
    until("X idle", || {
        slot(&mut pool.inner.lock(), &key()).idle.len() == 1
    })
    .await;

    // A holds X; B and C wait, each with a connect under way (held).
    let a = spawn_get(&pool);
    until("A at the origin", || Origin::count(&origin.received) == 2).await;
    let b = spawn_get(&pool);
    until("B waiting", || pool.waiting(&key()) == 1).await;
    let c = spawn_get(&pool);
    until("C waiting", || pool.waiting(&key()) == 2).await;
    assert_eq!(pool.connects_started(), 3);

    // A's answer frees X, which goes to B; the two connects under way are now one more
    // than the one request (C) waiting.
    origin.responses.add_permits(1);
    assert_eq!(a.await.unwrap().unwrap(), 200);
    until("B at the origin", || Origin::count(&origin.received) == 3).await;
    let d = spawn_get(&pool);
    until("D waiting", || pool.waiting(&key()) == 2).await;
    assert_eq!(
        pool.connects_started(),
        3,
        "D must wait for a connect already under way"
    );

    let origin = origin.open();
    for r in [b, c, d] {
        assert_eq!(r.await.unwrap().unwrap(), 200);
    }
    assert_eq!(Origin::count(&origin.calls), 3);
}

#[tokio::test]
async fn a_burst_to_an_http2_origin_shares_one_connection() {
    let mut origin = Origin::new();
    origin.h2 = true;
    let pool = pool_on(&origin, true, None);
    let burst: Vec<_> = (0..10).map(|_| spawn_get(&pool)).collect();
    until("the burst waiting", || pool.waiting(&key()) == 10).await;
    let origin = origin.open();
    for r in burst {
        assert_eq!(r.await.unwrap().unwrap(), 200);
    }
    assert_eq!(Origin::count(&origin.calls), 1);
    assert_eq!(Origin::count(&origin.received), 10);
}

#[tokio::test]
async fn connections_the_origin_closed_are_not_used_again() {
    let mut origin = Origin::new();
    origin.one_shot = true;
    let origin = origin.open();
    let pool = pool_on(&origin, false, None);
    for _ in 0..5 {
        let resp = pool.request(&key(), get()).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(Origin::count(&origin.received), 5);
    assert_eq!(Origin::count(&origin.calls), 5);
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let origin = Origin::new().open();
    let pool = OriginPool::new(origin.clone(), Duration::from_millis(50), false, None, None);
    assert_eq!(pool.request(&key(), get()).await.unwrap().status(), 200);
    until("the idle connection closed", || {
        Origin::count(&origin.ended) == 1
    })
    .await;
    assert_eq!(pool.request(&key(), get()).await.unwrap().status(), 200);
    assert_eq!(Origin::count(&origin.calls), 2);
}

#[tokio::test]
async fn every_waiting_request_hears_of_a_failed_connect() {
    let mut origin = Origin::new();
    origin.refuse = true;
    let pool = pool_on(&origin, false, None);
    all_refused(&pool, 5).await;
    assert_eq!(Origin::count(&origin.calls), 5);
}

#[tokio::test]
async fn past_max_connections_requests_wait_for_a_connection_to_come_back() {
    let origin = Origin::new();
    origin.connects.add_permits(Semaphore::MAX_PERMITS / 2);
    let pool = pool_on(&origin, false, Some(2));
    let burst: Vec<_> = (0..5).map(|_| spawn_get(&pool)).collect();
    until("two at the origin, three waiting", || {
        Origin::count(&origin.received) == 2 && pool.waiting(&key()) == 3
    })
    .await;
    assert_eq!(pool.connects_started(), 2);
    origin.responses.add_permits(Semaphore::MAX_PERMITS / 2);
    for r in burst {
        assert_eq!(r.await.unwrap().unwrap(), 200);
    }
    assert_eq!(Origin::count(&origin.calls), 2);
    assert_eq!(Origin::count(&origin.received), 5);
}

#[tokio::test]
async fn requests_behind_one_failed_http2_connect_all_fail_at_once() {
    let mut origin = Origin::new();
    origin.refuse = true;
    let pool = pool_on(&origin, true, None);
    all_refused(&pool, 5).await;
    assert_eq!(
        Origin::count(&origin.calls),
        1,
        "one failed connect answers them all"
    );
}

#[tokio::test]
async fn each_key_has_connections_of_its_own_and_emptied_keys_are_forgotten() {
    let origin = Origin::new().open();
    let pool = OriginPool::new(origin.clone(), Duration::from_millis(50), false, None, None);
    let client = PoolKey::Client(Arc::new(ProxyAddrs {
        source: "127.0.0.1:40000".parse().unwrap(),
        destination: "127.0.0.1:443".parse().unwrap(),
    }));
    for k in [key(), client.clone(), key(), client.clone()] {
        assert_eq!(pool.request(&k, get()).await.unwrap().status(), 200);
    }
    // One connection for the shared key and one for the client's, each used twice.
    assert_eq!(Origin::count(&origin.calls), 2);
    assert_eq!(Origin::count(&origin.received), 4);
    until(
        "both idle connections closed and the client's key gone",
        || Origin::count(&origin.ended) == 2 && pool.inner.lock().by_key.is_empty(),
    )
    .await;
}

#[tokio::test]
async fn once_an_origin_answers_a_connect_with_http1_again_connects_run_side_by_side() {
    let origin = Origin::new();
    origin.responses.add_permits(Semaphore::MAX_PERMITS / 2);
    origin.alpn_h2.store(true, Ordering::SeqCst);
    let pool = Arc::new(OriginPool::new(
        origin.clone(),
        Duration::from_millis(50),
        false,
        None,
        None,
    ));
    origin.connects.add_permits(1);
    assert_eq!(spawn_get(&pool).await.unwrap().unwrap(), 200);
    // The origin stops offering HTTP/2; its HTTP/2 connection idles out.
    origin.alpn_h2.store(false, Ordering::SeqCst);
    until("the HTTP/2 connection closed", || {
        Origin::count(&origin.ended) == 1
    })
    .await;
    // A burst: the pool still expects HTTP/2, so one connect, which answers HTTP/1.1.
    let burst: Vec<_> = (0..3).map(|_| spawn_get(&pool)).collect();
    until("the burst waiting", || pool.waiting(&key()) == 3).await;
    assert_eq!(pool.connects_started(), 2);
    origin.connects.add_permits(1);
    // That connection serves one request; the other two get a connect each at once.
    until("two more connects started together", || {
        pool.connects_started() == 4
    })
    .await;
    origin.connects.add_permits(2);
    for r in burst {
        assert_eq!(r.await.unwrap().unwrap(), 200);
    }
    assert_eq!(Origin::count(&origin.calls), 4);
}
