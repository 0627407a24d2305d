//! The fixture: etcd, pebble behind the counting ACME proxy, two round-robin proxies that
//! pebble validates through (HTTP-01 to every replica's :80, TLS-ALPN-01 to every :443), and
//! N replicas of the real binary, each with its own storage and its own TCP proxy to each
//! etcd member (so one replica can be partitioned from the store).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use portcullis_tests::acme_proxy::AcmeProxy;
use portcullis_tests::etcd::TestEtcd;
use portcullis_tests::tcp_proxy::TcpProxy;
use portcullis_tests::{Pebble, PebbleOptions, TestClient, wait};
use portcullis_tls::CertInfo;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::store::{PREFIX, Store, leaf_of};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// The lease every replica is configured with: short, so failovers fit in a test.
pub const LEASE: Duration = Duration::from_secs(3);

/// Fleets running at once in this test binary, in weight units (a fleet is 3 gateways,
/// etcd and pebble: two at once is what 2 cores carry). `PORTCULLIS_CLUSTER_SLOTS`
/// overrides it.
static SLOTS: Semaphore = Semaphore::const_new(2);

/// Waits for `weight` of the fleet slots; hold the permit for the whole test.
pub async fn slot(weight: u32) -> SemaphorePermit<'static> {
    if let Some(n) = std::env::var("PORTCULLIS_CLUSTER_SLOTS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| SLOTS.add_permits(n.saturating_sub(2)));
    }
    SLOTS.acquire_many(weight).await.unwrap()
}

/// Runs `test` with a hard limit, failing with `what` when it is exceeded; says how long
/// it took (seen with `--nocapture`).
pub async fn bounded<T>(limit: Duration, what: &str, test: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let out = wait::within_for(limit, what, test).await;
    eprintln!("{what}: {:.1} s", started.elapsed().as_secs_f64());
    out
}

/// What to build.
pub struct Options {
    pub replicas: usize,
    pub etcd_members: usize,
    /// Sites `s01`, `s02`, … each for one host `n01.test`, `n02.test`, …
    pub sites: usize,
    /// More `acme:` entries (`challenge: http-01`, `backoff: {...}`).
    pub acme: String,
    pub pebble: PebbleOptions,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            replicas: 3,
            etcd_members: 1,
            sites: 1,
            acme: String::new(),
            pebble: PebbleOptions::default(),
        }
    }
}

/// One replica: the harness's replica process, and its links to etcd.
pub struct Replica {
    process: portcullis_tests::replica::Replica,
    links: Vec<TcpProxy>,
}

impl std::ops::Deref for Replica {
    type Target = portcullis_tests::replica::Replica;
    fn deref(&self) -> &Self::Target {
        &self.process
    }
}

impl std::ops::DerefMut for Replica {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.process
    }
}

impl Replica {
    /// Cuts this replica off from every etcd member.
    pub fn partition(&self) {
        self.links.iter().for_each(TcpProxy::partition);
    }

    /// Lets it reach etcd again.
    pub fn heal(&self) {
        self.links.iter().for_each(TcpProxy::heal);
    }
}

/// The whole set-up; everything stops when it is dropped.
pub struct Fleet {
    pub etcd: TestEtcd,
    pub store: Store,
    pub pebble: Pebble,
    pub acme: AcmeProxy,
    /// Where pebble sends HTTP-01 validations: round-robin over the replicas' :80.
    pub http_lb: TcpProxy,
    /// Where pebble sends TLS-ALPN-01 validations: round-robin over the replicas' :443.
    pub tls_lb: TcpProxy,
    pub replicas: Vec<Replica>,
    sites: usize,
    /// pebble's issuing root for this run.
    pub root: CertificateDer<'static>,
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// etcd, pebble and the proxies running, the replicas configured but not started (arm
    /// the ACME proxy first if the test needs it, then [`start`](Self::start)).
    pub async fn new(opts: Options) -> Self {
        portcullis_tests::init();
        let dir = tempfile::tempdir().unwrap();
        let etcd = TestEtcd::start(opts.etcd_members).await;
        let mut pebble = Pebble::new(opts.pebble);
        let acme = AcmeProxy::start(&pebble.directory(), &pebble.ca_bundle).await;
        let http_lb = TcpProxy::round_robin(Vec::new()).await;
        let tls_lb = TcpProxy::round_robin(Vec::new()).await;
        pebble.start(http_lb.addr.port(), tls_lb.addr.port()).await;
        let acme_yaml = acme.acme_yaml(&opts.acme);
        let mut replicas = Vec::new();
        for r in 1..=opts.replicas {
            let name = format!("r{r}");
            let mut links = Vec::new();
            for m in 0..opts.etcd_members {
                links.push(TcpProxy::start(etcd.client_addr(m)).await);
            }
            let home = dir.path().join(&name);
            let process = portcullis_tests::replica::Replica::new(
                name.clone(),
                Path::new(BIN),
                home.join("portcullis.yaml"),
            );
            let (https, http, admin) = (process.https, process.http, process.admin);
            std::fs::create_dir_all(&home).unwrap();
            let endpoints: Vec<String> =
                links.iter().map(|l| format!("http://{}", l.addr)).collect();
            let sites: String = (1..=opts.sites)
                .map(|i| {
                    format!(
                        "  - {{name: {}, hosts: [{}], tls: acme, respond: {{body: {}}}}}\n",
                        site(i),
                        host(i),
                        host(i)
                    )
                })
                .collect();
            let config = format!(
                "listen: {{https: '{https}', http: '{http}'}}\n\
                 admin: {{listen: '{admin}'}}\n\
                 storage: '{storage}'\n\
                 tls: {{local_ca_dir: '{ca}'}}\n\
                 cluster:\n  store: etcd\n  etcd: {{endpoints: [{endpoints}], prefix: '{PREFIX}'}}\n  \
                 node_name: {name}\n  lease: {lease}s\n\
                 acme: {acme_yaml}\n\
                 sites:\n{sites}",
                storage = home.join("storage").display(),
                ca = home.join("ca").display(),
                endpoints = endpoints.join(", "),
                lease = LEASE.as_secs(),
            );
            std::fs::write(process.config(), config).unwrap();
            replicas.push(Replica { process, links });
        }
        let store = Store {
            addr: etcd.client_addr(0),
        };
        let root = CertificateDer::from_pem_slice(pebble.issuing_root().await.as_bytes()).unwrap();
        Self {
            etcd,
            store,
            pebble,
            acme,
            http_lb,
            tls_lb,
            replicas,
            sites: opts.sites,
            root,
            _dir: dir,
        }
    }

    /// Starts every replica (at once) and points the load balancers at them.
    pub async fn start(&mut self) {
        let started = futures_util::future::join_all(
            self.replicas
                .iter_mut()
                .map(|r| async move { r.start().await }),
        );
        started.await;
        self.balance();
    }

    /// Points the load balancers at the replicas that run and are not paused (as a
    /// health-checking layer-4 balancer would).
    pub fn balance(&self) {
        let up = self.replicas.iter().filter(|r| r.is_up());
        self.http_lb
            .set_targets(up.clone().map(|r| r.http).collect());
        self.tls_lb.set_targets(up.map(|r| r.https).collect());
    }

    /// Site names, `s01`….
    pub fn sites(&self) -> Vec<String> {
        (1..=self.sites).map(site).collect()
    }

    /// Host names, `n01.test`….
    pub fn names(&self) -> Vec<String> {
        (1..=self.sites).map(host).collect()
    }

    /// Waits until the store names a leader that runs, is not `not`, and says so itself
    /// (`portcullis_cluster_leader` 1); its index.
    pub async fn wait_leader(&self, limit: Duration, not: Option<usize>) -> usize {
        wait::until(limit, "a leader", || async {
            let name = self.store.leader().await?;
            let i = self.replicas.iter().position(|r| r.name == name)?;
            if Some(i) == not || !self.replicas[i].is_up() {
                return None;
            }
            let gauge = self.replicas[i]
                .metric("portcullis_cluster_leader", &[])
                .await;
            (gauge == 1.0).then_some(i)
        })
        .await
    }

    /// The leaf replica `i` serves for `name` on a handshake verified against pebble's
    /// root, if one succeeds within 5 s.
    pub async fn served(&self, i: usize, name: &str) -> Option<CertificateDer<'static>> {
        let client = TestClient::new(self.replicas[i].https, &self.root);
        let conn =
            tokio::time::timeout(Duration::from_secs(5), client.connect(name, &["http/1.1"]))
                .await
                .ok()?
                .ok()?;
        Some(conn.peer_leaf)
    }

    /// Waits until each replica in `on` serves, for every host, the leaf the store's
    /// `certs/<site>` holds (verified handshakes: the served key matches the certificate),
    /// and `accept` takes each site's record; the serials by host.
    pub async fn wait_served(
        &self,
        on: &[usize],
        limit: Duration,
        accept: impl Fn(&str, &serde_json::Value) -> bool,
    ) -> BTreeMap<String, String> {
        self.wait_served_sites(on, &self.sites(), limit, accept)
            .await
    }

    /// As [`wait_served`](Self::wait_served), for `sites` only.
    pub async fn wait_served_sites(
        &self,
        on: &[usize],
        sites: &[String],
        limit: Duration,
        accept: impl Fn(&str, &serde_json::Value) -> bool,
    ) -> BTreeMap<String, String> {
        let deadline = Instant::now() + limit;
        loop {
            let mut missing = Vec::new();
            let mut serials = BTreeMap::new();
            for site in sites {
                let name = host(site[1..].parse().unwrap());
                let record = self.store.cert_record(site).await;
                let stored = record
                    .as_ref()
                    .filter(|r| accept(site, r))
                    .and_then(|r| leaf_of(r["chain_pem"].as_str()?));
                let Some(stored) = stored else {
                    missing.push(format!("certs/{site} (as accepted)"));
                    continue;
                };
                for &i in on {
                    if self.served(i, &name).await.as_ref() != Some(&stored) {
                        missing.push(format!("{name} on {}", self.replicas[i].name));
                    }
                }
                serials.insert(name, CertInfo::parse(&stored).unwrap().serial);
            }
            if missing.is_empty() {
                return serials;
            }
            assert!(
                Instant::now() < deadline,
                "after {limit:?}, not yet served as stored: {missing:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `name`'s samples on every replica in `on` satisfy `ok`.
    pub async fn wait_metric(
        &self,
        on: &[usize],
        name: &str,
        limit: Duration,
        ok: impl Fn(f64) -> bool,
    ) {
        let ok = &ok;
        for &i in on {
            let r = &self.replicas[i];
            wait::until(limit, &format!("{name} on {}", r.name), || async move {
                ok(r.metric(name, &[]).await).then_some(())
            })
            .await;
        }
    }

    /// Indexes of the replicas other than `i`.
    pub fn others(&self, i: usize) -> Vec<usize> {
        (0..self.replicas.len()).filter(|j| *j != i).collect()
    }

    /// Points the load balancers at the running replicas except `i`.
    pub fn balance_except(&self, i: usize) {
        let up = self
            .replicas
            .iter()
            .enumerate()
            .filter(|(j, r)| *j != i && r.is_up())
            .map(|(_, r)| r);
        self.http_lb
            .set_targets(up.clone().map(|r| r.http).collect());
        self.tls_lb.set_targets(up.map(|r| r.https).collect());
    }
}

impl Drop for Fleet {
    /// On a failure, what each replica logged (its last 40 lines, or
    /// `PORTCULLIS_CLUSTER_LOG_LINES`) and what the CA was asked.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let lines = std::env::var("PORTCULLIS_CLUSTER_LOG_LINES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(40);
        for r in &self.replicas {
            let logs = r.logs();
            let tail = &logs[logs.len().saturating_sub(lines)..];
            eprintln!("==== {} (last {} lines) ====", r.name, tail.len());
            for l in tail {
                eprintln!("{l}");
            }
        }
        eprintln!("==== ACME proxy ====");
        for e in self.acme.exchanges() {
            eprintln!(
                "{:?} {} {} {:?} {:?} {}",
                e.kind, e.method, e.path, e.names, e.order, e.status
            );
        }
    }
}

/// Site `i`'s name.
pub fn site(i: usize) -> String {
    format!("s{i:02}")
}

/// Site `i`'s host.
pub fn host(i: usize) -> String {
    format!("n{i:02}.test")
}
