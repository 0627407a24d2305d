//! The fixture: the harness's fake API server (an empty namespace, a kubeconfig file the
//! replicas are given through `cluster.kubernetes.kubeconfig`), pebble behind the counting
//! ACME proxy, two round-robin proxies that pebble validates through (HTTP-01 to every
//! replica's :80, TLS-ALPN-01 to every :443), and N replicas of the real binary with
//! `cluster: {store: kubernetes}`, each with its own storage.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use portcullis_tests::acme_proxy::AcmeProxy;
use portcullis_tests::tcp_proxy::TcpProxy;
use portcullis_tests::{FakeApiServer, Pebble, PebbleOptions, TestClient, wait};
use portcullis_tls::CertInfo;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::api::{self, NS};
use super::replica::Replica;

/// The lease every replica is configured with: short, so failovers fit in a test.
pub const LEASE: Duration = Duration::from_secs(3);

/// Every test's hard limit, its fleet's start included.
pub const LIMIT: Duration = Duration::from_secs(120);

/// How long a takeover may take: the dead issuer's Lease is seen unchanged for a whole
/// lease by another replica (which looks every third of one), then taken.
pub fn takeover() -> Duration {
    LEASE * 2 + Duration::from_secs(1)
}

/// Fleets at once in this test binary (a fleet is 3 gateways and pebble: two at once is
/// what 2 cores carry). `PORTCULLIS_CLUSTER_SLOTS` overrides it.
static SLOTS: Semaphore = Semaphore::const_new(2);

/// Waits for a fleet slot; hold the permit for the whole test.
pub async fn slot() -> SemaphorePermit<'static> {
    if let Some(n) = std::env::var("PORTCULLIS_CLUSTER_SLOTS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| SLOTS.add_permits(n.saturating_sub(2)));
    }
    SLOTS.acquire().await.unwrap()
}

/// Runs `test` on a new fleet built from `opts`, the whole within [`LIMIT`]. The fleet
/// lives outside the limit's future so that a test that runs out of time still reports
/// what the replicas logged.
pub async fn with_fleet(what: &str, opts: Options, test: impl AsyncFnOnce(&mut Fleet)) {
    let _slot = slot().await;
    let started = Instant::now();
    let mut fleet = wait::within_for(LIMIT, "the fleet to start", Fleet::new(opts)).await;
    let left = LIMIT.saturating_sub(started.elapsed());
    let outcome = tokio::time::timeout(left, test(&mut fleet)).await;
    // Dropped while panicking, the fleet reports what it logged.
    assert!(outcome.is_ok(), "{what}: not done within {LIMIT:?}");
    eprintln!("{what}: {:.1?}", started.elapsed());
}

/// What to build.
pub struct Options {
    pub replicas: usize,
    /// Sites `s01`, `s02`, … each for one host `n01.test`, `n02.test`, …
    pub sites: usize,
    /// More `acme:` entries (`challenge: http-01`).
    pub acme: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            replicas: 3,
            sites: 1,
            acme: String::new(),
        }
    }
}

/// The whole set-up; everything stops when it is dropped.
pub struct Fleet {
    pub api: FakeApiServer,
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
    /// The fake API server, pebble and the proxies running, the replicas configured but not
    /// started (arm the ACME proxy first if the test needs it, then [`start`](Self::start)).
    pub async fn new(opts: Options) -> Self {
        portcullis_tests::init();
        let dir = tempfile::tempdir().unwrap();
        let api = FakeApiServer::start().await;
        api::create_namespace(&api);
        let kubeconfig = api.write_kubeconfig(dir.path());
        let mut pebble = Pebble::new(PebbleOptions::default());
        let acme = AcmeProxy::start(&pebble.directory(), &pebble.ca_bundle).await;
        let http_lb = TcpProxy::round_robin(Vec::new()).await;
        let tls_lb = TcpProxy::round_robin(Vec::new()).await;
        pebble.start(http_lb.addr.port(), tls_lb.addr.port()).await;
        let acme_yaml = acme.acme_yaml(&opts.acme);
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
        let mut replicas = Vec::new();
        for r in 1..=opts.replicas {
            let name = format!("r{r}");
            let home = dir.path().join(&name);
            std::fs::create_dir_all(&home).unwrap();
            let replica = super::replica::replica(name, home.join("portcullis.yaml"));
            let config = format!(
                "listen: {{https: '{https}', http: '{http}'}}\n\
                 admin: {{listen: '{admin}'}}\n\
                 storage: '{storage}'\n\
                 tls: {{local_ca_dir: '{ca}'}}\n\
                 cluster:\n  store: kubernetes\n  \
                 kubernetes: {{namespace: {NS}, kubeconfig: '{kubeconfig}'}}\n  \
                 node_name: {name}\n  lease: {lease}s\n\
                 acme: {acme_yaml}\n\
                 sites:\n{sites}",
                https = replica.https,
                http = replica.http,
                admin = replica.admin,
                name = replica.name,
                storage = home.join("storage").display(),
                ca = home.join("ca").display(),
                kubeconfig = kubeconfig.display(),
                lease = LEASE.as_secs(),
            );
            std::fs::write(replica.config(), config).unwrap();
            replicas.push(replica);
        }
        let root = CertificateDer::from_pem_slice(pebble.issuing_root().await.as_bytes()).unwrap();
        Self {
            api,
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
        futures_util::future::join_all(self.replicas.iter_mut().map(Replica::start)).await;
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

    /// All replicas' indexes.
    pub fn all(&self) -> Vec<usize> {
        (0..self.replicas.len()).collect()
    }

    /// Indexes of the replicas other than `i`.
    pub fn others(&self, i: usize) -> Vec<usize> {
        (0..self.replicas.len()).filter(|j| *j != i).collect()
    }

    /// The issuer's Lease now.
    pub fn issuer(&self) -> api::Issuer {
        api::issuer(&self.api).expect("the issuer's Lease exists")
    }

    /// Waits until the Lease `portcullis-issuer` names (unexpired) a replica that runs, is
    /// not `not`, and says so itself (`portcullis_cluster_leader` 1); its index.
    pub async fn wait_leader(&self, limit: Duration, not: Option<usize>) -> usize {
        wait::until(limit, "a leader", || async {
            let lease = api::issuer(&self.api).filter(|l| l.unexpired)?;
            let name = lease.holder?;
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

    /// The leaf replica `i` serves for `name` on a handshake verified against `root`, if
    /// one succeeds within 5 s.
    pub async fn served_under(
        &self,
        i: usize,
        name: &str,
        root: &CertificateDer<'static>,
    ) -> Option<CertificateDer<'static>> {
        let client = TestClient::new(self.replicas[i].https, root);
        let conn =
            tokio::time::timeout(Duration::from_secs(5), client.connect(name, &["http/1.1"]))
                .await
                .ok()?
                .ok()?;
        Some(conn.peer_leaf)
    }

    /// [`served_under`](Self::served_under) pebble's root.
    pub async fn served(&self, i: usize, name: &str) -> Option<CertificateDer<'static>> {
        self.served_under(i, name, &self.root).await
    }

    /// Waits until each replica in `on` serves, for every host, the leaf the Secret of
    /// `certs/<site>` holds (handshakes verified against pebble's root: the served key
    /// matches the certificate), and `accept` takes each site's record; the serials by host.
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
                let stored = api::cert_record(&self.api, site)
                    .filter(|r| accept(site, r))
                    .and_then(|r| api::leaf_of(r["chain_pem"].as_str()?));
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

    /// Waits until every replica in `on` serves `leaf` for `name` (verified against `root`).
    pub async fn wait_leaf(
        &self,
        on: &[usize],
        name: &str,
        leaf: &CertificateDer<'static>,
        root: &CertificateDer<'static>,
        limit: Duration,
    ) {
        for &i in on {
            let what = format!(
                "{} to serve the new certificate for {name}",
                self.replicas[i].name
            );
            wait::until(limit, &what, || async move {
                (self.served_under(i, name, root).await.as_ref() == Some(leaf)).then_some(())
            })
            .await;
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

    /// `name` on every replica in `on`, in order.
    pub async fn metrics(&self, on: &[usize], name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        let mut out = Vec::new();
        for &i in on {
            out.push(self.replicas[i].metric(name, labels).await);
        }
        out
    }

    /// What each replica logged (its last lines), what the CA was asked and the last
    /// calls to the API server: the failure report.
    pub fn report(&self) {
        for r in &self.replicas {
            let logs = r.logs();
            let tail = &logs[logs.len().saturating_sub(40)..];
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
        let pebble = self.pebble.log();
        let lines: Vec<&str> = pebble.lines().collect();
        eprintln!("==== pebble (last 20 lines) ====");
        for l in &lines[lines.len().saturating_sub(20)..] {
            eprintln!("{l}");
        }
        eprintln!("==== issuer's Lease: {:?} ====", api::issuer(&self.api));
        for s in api::store_secrets(&self.api) {
            eprintln!(
                "secret {:?} key {:?} token {:?} rv {}",
                s.metadata.name,
                api::key_of(&s),
                api::token_of(&s),
                api::revision_of(&s)
            );
        }
    }
}

impl Drop for Fleet {
    /// On a failure, [`report`](Self::report).
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.report();
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
