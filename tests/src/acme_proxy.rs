//! A counting ACME proxy in front of pebble, for the clustering suites: the gateways' whole
//! ACME conversation passes through it, so a test can count what the fleet asked the CA for
//! (new orders, per name; challenges declared ready; finalizations; certificate downloads)
//! and tell an order resumed by another replica (a request to an order URL placed earlier)
//! from a new one.
//!
//! It terminates TLS on 127.0.0.1:0 with a certificate from its own CA ([`AcmeProxy::ca_bundle`]
//! is what `acme.ca_bundle` trusts), forwards every request to pebble over TLS keeping the
//! `Host` header (pebble builds its URLs and checks each JWS `url` from it), and rewrites any
//! of pebble's own absolute URLs left in JSON bodies, `Location` and `Link` to its own. It
//! learns what each URL is from the answers (the directory's `newOrder`, an order's
//! `finalize` and `certificate`, an authorization's `challenges`), as a client does.
//!
//! Faults: [`AcmeProxy::fail_new_orders`] answers new orders with an ACME problem without
//! asking pebble; [`AcmeProxy::pause_after`] holds every request that follows the next
//! answer of a kind until [`AcmeProxy::resume`], so a test can kill or pause the issuer at
//! an exact step of its order.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, LOCATION};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::ca::TestCa;

mod learn;
#[cfg(test)]
mod tests;
mod upstream;

use learn::Known;
#[cfg(test)]
use upstream::rewrite;
use upstream::{forward, problem, split_url, upstream_client};

/// What a request to the CA was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `GET` of the directory.
    Directory,
    /// `newNonce`.
    Nonce,
    /// `newAccount` (creating or looking up the account).
    NewAccount,
    /// A POST to `newOrder`: an order placed (or refused).
    NewOrder,
    /// A POST(-as-GET) to an order URL: reading an order, placed by anyone before.
    Order,
    /// A POST-as-GET of an authorization.
    Authorization,
    /// A POST of `{}` to a challenge: "the answer is published, validate".
    ChallengeReady,
    /// A POST-as-GET of a challenge.
    ChallengePoll,
    /// A POST to an order's `finalize` URL (the CSR).
    Finalize,
    /// A POST-as-GET of a certificate chain.
    Certificate,
    /// Anything else.
    Other,
}

/// One request the proxy answered.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// When the answer was ready (before the client read it).
    pub at: Instant,
    /// What it was.
    pub kind: Kind,
    /// Method and path as asked.
    pub method: String,
    /// The path (no scheme or host).
    pub path: String,
    /// DNS names concerned, sorted: a new order's identifiers, an order's, an
    /// authorization's.
    pub names: Vec<String>,
    /// The order it belongs to (a new order's `Location`, an order, its finalize or
    /// certificate URL's order), as the client sees the URL (the proxy's).
    pub order: Option<String>,
    /// The status answered.
    pub status: u16,
}

/// The ACME problem [`AcmeProxy::fail_new_orders`] answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `urn:ietf:params:acme:error:rateLimited`, 429, no `Retry-After`.
    RateLimited,
    /// `urn:ietf:params:acme:error:serverInternal`, 500.
    ServerInternal,
}

struct State {
    /// pebble's base URL (`https://127.0.0.1:14000`).
    upstream: String,
    /// Ours (`https://127.0.0.1:<port>`).
    own: String,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    known: Mutex<Known>,
    log: Mutex<Vec<Exchange>>,
    /// The failure to answer new orders with, and for which names (`None`: all).
    fail: Mutex<Option<(Failure, Option<Vec<String>>)>>,
    pause_after: Mutex<Option<Kind>>,
    paused: watch::Sender<bool>,
    /// Requests waiting for a pause to end.
    held: AtomicUsize,
}

/// The proxy; it stops when dropped.
pub struct AcmeProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The CA that signed the proxy's certificate (PEM file): give it to `acme.ca_bundle`.
    pub ca_bundle: PathBuf,
    directory_path: String,
    state: Arc<State>,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for AcmeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AcmeProxy {
    /// A proxy on 127.0.0.1:0 for the ACME server whose directory is `directory` (such as
    /// [`Pebble::directory`](crate::Pebble::directory)), trusting `upstream_ca` (PEM file,
    /// such as [`Pebble::ca_bundle`](crate::Pebble)) for it. The ACME server need not run
    /// yet: requests made meanwhile are answered 502.
    pub async fn start(directory: &str, upstream_ca: &Path) -> Self {
        crate::init();
        let (upstream, directory_path) = split_url(directory);
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("ACME proxy CA");
        let ca_bundle = ca.write_root(dir.path(), "acme-proxy-ca");
        let leaf = ca.leaf(&["127.0.0.1", "localhost"]);
        let mut tls = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.cert_der.clone()], leaf.key_der.clone_key())
            .unwrap();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            upstream,
            own: format!("https://{addr}"),
            client: upstream_client(upstream_ca),
            known: Mutex::new(Known::new(&directory_path)),
            log: Mutex::new(Vec::new()),
            fail: Mutex::new(None),
            pause_after: Mutex::new(None),
            paused: watch::channel(false).0,
            held: AtomicUsize::new(0),
        });
        let serving = state.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, state) = (acceptor.clone(), serving.clone());
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            ca_bundle,
            directory_path,
            state,
            task,
            _dir: dir,
        }
    }

    /// The directory URL through the proxy: give it to `acme.directory`.
    pub fn directory(&self) -> String {
        format!("{}{}", self.state.own, self.directory_path)
    }

    /// An `acme:` section (YAML flow map) for the proxy, as
    /// [`Pebble::acme_yaml`](crate::Pebble::acme_yaml) writes one for pebble; `extra` is more
    /// entries (`challenge: http-01`, `backoff: {...}` — the default is 200ms to 2s).
    pub fn acme_yaml(&self, extra: &str) -> String {
        let backoff = if extra.contains("backoff") {
            String::new()
        } else {
            "backoff: {initial: 200ms, max: 2s}, ".to_owned()
        };
        let sep = if extra.is_empty() { "" } else { ", " };
        format!(
            "{{directory: '{}', ca_bundle: '{}', email: ops@portcullis.test, {backoff}concurrency: 4{sep}{extra}}}",
            self.directory(),
            self.ca_bundle.display()
        )
        .replace(", }", "}")
    }

    /// Every exchange so far, in the order answered.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.state.log.lock().unwrap().clone()
    }

    /// How many requests of `kind` were answered (whatever the status).
    pub fn count(&self, kind: Kind) -> usize {
        self.exchanges().iter().filter(|e| e.kind == kind).count()
    }

    /// New-order POSTs, placed or refused.
    pub fn new_orders(&self) -> usize {
        self.count(Kind::NewOrder)
    }

    /// New-order POSTs naming `name`, placed or refused.
    pub fn orders_for(&self, name: &str) -> usize {
        self.exchanges()
            .iter()
            .filter(|e| e.kind == Kind::NewOrder && e.names.iter().any(|n| n == name))
            .count()
    }

    /// The orders placed (new-order answered 201), with their URL in `order`.
    pub fn placed(&self) -> Vec<Exchange> {
        self.exchanges()
            .into_iter()
            .filter(|e| e.kind == Kind::NewOrder && e.order.is_some())
            .collect()
    }

    /// Challenges declared ready.
    pub fn challenges_ready(&self) -> usize {
        self.count(Kind::ChallengeReady)
    }

    /// Finalize POSTs.
    pub fn finalizes(&self) -> usize {
        self.count(Kind::Finalize)
    }

    /// Certificate downloads.
    pub fn certificate_downloads(&self) -> usize {
        self.count(Kind::Certificate)
    }

    /// The exchanges about the order at `url` (reads of it, its finalize, its certificate;
    /// not its placing), as the client gave the URL.
    pub fn requests_for_order(&self, url: &str) -> Vec<Exchange> {
        self.exchanges()
            .into_iter()
            .filter(|e| e.kind != Kind::NewOrder && e.order.as_deref() == Some(url))
            .collect()
    }

    /// From now on answer every new order with `failure` (without asking the CA), or
    /// forward them again (`None`).
    pub fn fail_new_orders(&self, failure: Option<Failure>) {
        *self.state.fail.lock().unwrap() = failure.map(|f| (f, None));
    }

    /// As [`fail_new_orders`](Self::fail_new_orders), only for new orders naming any of
    /// `names`; the others are forwarded.
    pub fn fail_new_orders_for(&self, names: &[&str], failure: Failure) {
        let names = names.iter().map(|n| (*n).to_owned()).collect();
        *self.state.fail.lock().unwrap() = Some((failure, Some(names)));
    }

    /// After the next successful answer of `kind`, hold every request until [`resume`]
    /// (they are then forwarded).
    ///
    /// [`resume`]: Self::resume
    pub fn pause_after(&self, kind: Kind) {
        *self.state.pause_after.lock().unwrap() = Some(kind);
    }

    /// Waits up to `limit` for a [`pause_after`](Self::pause_after) to take hold.
    pub async fn wait_paused(&self, limit: Duration) {
        let mut paused = self.state.paused.subscribe();
        crate::wait::within_for(limit, "the ACME proxy to pause", paused.wait_for(|p| *p))
            .await
            .unwrap();
    }

    /// Requests held by a pause now.
    pub fn held(&self) -> usize {
        self.state.held.load(Ordering::SeqCst)
    }

    /// Lets held requests through, and every later one.
    pub fn resume(&self) {
        *self.state.pause_after.lock().unwrap() = None;
        self.state.paused.send_replace(false);
    }
}

/// An answer, its body whole (read before it is passed on).
pub(super) type Answer = Response<Bytes>;

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let mut paused = state.paused.subscribe();
    if *paused.borrow_and_update() {
        state.held.fetch_add(1, Ordering::SeqCst);
        let _ = paused.wait_for(|p| !*p).await;
        state.held.fetch_sub(1, Ordering::SeqCst);
    }

    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let payload = (parts.method == Method::POST)
        .then(|| learn::jws_payload(&body))
        .flatten();
    let (kind, mut names, mut order) =
        state
            .known
            .lock()
            .unwrap()
            .classify(&parts.method, &path, payload.as_ref(), &state.own);

    let failure = match &*state.fail.lock().unwrap() {
        Some((f, None)) => Some(*f),
        Some((f, Some(only))) => names.iter().any(|n| only.contains(n)).then_some(*f),
        None => None,
    };
    let mut resp = match failure {
        Some(f) if kind == Kind::NewOrder => problem(f),
        _ => forward(&state, &parts, &path, body).await,
    };
    let status = resp.status().as_u16();
    if let Ok(json) = serde_json::from_slice::<Value>(resp.body()) {
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut known = state.known.lock().unwrap();
        known.learn(kind, &path, location.as_deref(), &json);
        if kind == Kind::Authorization
            && let Some(name) = json["identifier"]["value"].as_str()
        {
            names = vec![name.to_owned()];
        }
        if kind == Kind::NewOrder
            && status == 201
            && let Some(url) = location
        {
            order = Some(url);
            if names.is_empty() {
                names = learn::identifiers(&json);
            }
        }
    }
    names.sort();
    names.dedup();
    state.log.lock().unwrap().push(Exchange {
        at: Instant::now(),
        kind,
        method: parts.method.to_string(),
        path,
        names,
        order,
        status,
    });
    if status < 400 {
        let mut armed = state.pause_after.lock().unwrap();
        if *armed == Some(kind) {
            *armed = None;
            state.paused.send_replace(true);
        }
    }
    resp.headers_mut().remove(CONTENT_LENGTH);
    Ok(resp.map(Full::new))
}
