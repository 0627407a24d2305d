//! Replicas sharing certificates through etcd, at scale: a benchmark, not a test (CI does
//! not run it; `bench/cluster.sh` does, and docs/performance.md has its figures).
//!
//! With N `tls: acme` sites (default 10,000), each with a certificate already issued, it
//! measures the issue's cost target:
//! - **A**, local storage: the certificates in `storage/acme/<directory>/sites/<site>/`, as
//!   a gateway that issued them itself keeps them;
//! - **B**, cluster: the same certificates only in etcd (`certs/<site>` records under the
//!   prefix), an empty local storage, `cluster: { store: etcd }`.
//!
//! Each is the release binary as a process; from its start until `/readyz` answers 200 and a
//! sample of names get their own certificate on a handshake by SNI; then its resident
//! memory (target: B less than 50 MB above A). The ACME directory is unreachable, so no
//! order can succeed: what is served is what was stored.
//!
//! Then three replicas of B (the first one kept, two more started) and, several times, one
//! site's record replaced in etcd by a renewed certificate: the time until each replica
//! serves it, polled every 20 ms by handshakes (target: under 5 s to reach all of them).
//! Last, the first replica restarted on the local cache it wrote (a rolling restart).
//!
//! RSS includes what the allocator has not given back yet: with `MIMALLOC_PURGE_DELAY=0` in
//! the environment (the gateways inherit it) it is close to what is live. `TMPDIR` decides
//! where the storages and etcd's data live (each certificate taken from the store is written
//! to the replica's cache with `fsync`, so the disk sets the pace of a start on an empty one).
//!
//! ```text
//! cargo build --release -p portcullis
//! cargo run --release -p portcullis-tests --example cluster_scale -- \
//!     --binary target/release/portcullis --sites 10000
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    missing_docs,
    reason = "a benchmark program: a failure is a panic with its message"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use portcullis_acme::Storage;
use portcullis_cluster::Sealer;
use portcullis_cluster::records::{self, CertRecord};
use portcullis_tests::etcd::TestEtcd;
use portcullis_tests::{GatewayProcess, TestClient};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;

/// No ACME server listens there: every order fails at once, so the gateways serve only
/// what was stored for them.
const DIRECTORY: &str = "https://127.0.0.1:1/dir";
const PREFIX: &str = "/bench/";
const LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
const LIMIT: Duration = Duration::from_secs(180);
/// Concurrent writes into etcd while loading the store.
const WRITERS: usize = 16;

struct Args {
    binary: PathBuf,
    sites: usize,
    sample: usize,
    replicas: usize,
    runs: usize,
    settle: Duration,
    keep: bool,
}

fn args() -> Args {
    let mut out = Args {
        binary: PathBuf::from("target/release/portcullis"),
        sites: 10_000,
        sample: 50,
        replicas: 3,
        runs: 5,
        settle: Duration::from_secs(5),
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    let num = |it: &mut std::iter::Skip<std::env::Args>, flag: &str| -> usize {
        it.next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{flag} N"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--binary" => out.binary = PathBuf::from(it.next().expect("--binary PATH")),
            "--sites" => out.sites = num(&mut it, "--sites"),
            "--sample" => out.sample = num(&mut it, "--sample"),
            "--replicas" => out.replicas = num(&mut it, "--replicas"),
            "--runs" => out.runs = num(&mut it, "--runs"),
            "--settle" => out.settle = Duration::from_secs(num(&mut it, "--settle") as u64),
            "--keep" => out.keep = true,
            "--help" | "-h" => {
                println!(
                    "usage: cluster_scale [--binary PATH] [--sites N (10000)] [--sample N (50)] \
                     [--replicas N (3)] [--runs N (5)] [--settle SECONDS (5)] [--keep]\n\
                     --keep: keep the temporary folder (configs, storages, each gateway's log)"
                );
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}; see --help"),
        }
    }
    assert!(out.sites > 0 && out.sample > 0 && out.replicas > 0 && out.runs > 0);
    out
}

fn host(i: usize) -> String {
    format!("s{i}.bench.test")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The benchmark's CA: ECDSA P-256 leaves as an ACME CA would issue them, 90 days long.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
}

/// A leaf: its chain and key as the gateway stores them, and its DER to compare with what
/// a handshake gets.
#[derive(Clone)]
struct Leaf {
    chain_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "cluster-scale CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Self {
            root: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `name` valid from an hour ago for [`LIFETIME`] plus `later` (a renewal
    /// must end later than the certificate it replaces, or replicas keep the old one). Its
    /// serial is random.
    fn leaf(&self, name: &str, later: Duration) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::DnsName(name.try_into().unwrap())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let from = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(unix_now() - 3600);
        params.not_before = from;
        params.not_after = from + LIFETIME + later;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// The value of `certs/<site>` for `leaf`, as an issuer named `bench` would store it.
fn record(site: &str, leaf: &Leaf) -> String {
    let record = CertRecord::new(
        &Sealer::new(None),
        site,
        &[site.to_owned()],
        &leaf.chain_pem,
        &leaf.key_pem,
        "bench",
        unix_now(),
        1,
    );
    String::from_utf8(records::encode(&record)).unwrap()
}

async fn put_record(etcd: &TestEtcd, site: &str, leaf: &Leaf) {
    let key = format!("{PREFIX}{}", records::cert_key(site));
    let status = etcd.put(0, &key, &record(site, leaf)).await;
    assert_eq!(status, 200, "etcd refused the put of {key}");
}

/// The config both A and B share, with `extra` (the cluster section) before the sites.
fn config(n: usize, storage: &Path, extra: &str) -> String {
    let mut out = format!(
        "listen:\n  https: 127.0.0.1:0\n  http: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n\
         acme:\n  directory: {DIRECTORY}\nstorage: {}\n{extra}sites:\n",
        storage.display()
    );
    for i in 0..n {
        out.push_str(&format!(
            "  - hosts: [{}]\n    tls: acme\n    respond: {{ status: 200, body: ok }}\n",
            host(i)
        ));
    }
    out
}

fn cluster_section(etcd: &TestEtcd, node: &str) -> String {
    format!(
        "cluster:\n  store: etcd\n  etcd:\n    endpoints: [{}]\n    prefix: {PREFIX}\n  \
         node_name: {node}\n  lease: 10s\n",
        etcd.endpoints().join(", ")
    )
}

/// The leaf a handshake with SNI `name` gets, if the handshake succeeds.
async fn served(client: &TestClient, name: &str) -> Option<CertificateDer<'static>> {
    let tls = tokio::time::timeout(Duration::from_secs(5), client.tls(name, true, &[]))
        .await
        .ok()?
        .ok()?;
    tls.get_ref().1.peer_certificates()?.first().cloned()
}

async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    let r = portcullis_tests::plain::send(
        admin,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
    )
    .await;
    (r.status, r.body().to_owned())
}

/// Which sites a sample of `k` checks: spread over all of them, first and last included.
fn sample(n: usize, k: usize) -> Vec<usize> {
    let k = k.min(n);
    let mut out: Vec<usize> = (0..k)
        .map(|j| if k == 1 { 0 } else { j * (n - 1) / (k - 1) })
        .collect();
    out.dedup();
    out
}

/// When a gateway got there, from its start.
#[derive(Clone, Copy)]
struct Serving {
    /// `/readyz` first answered 200 (no site without a certificate).
    ready: Duration,
    /// Every sampled site got its own certificate on a handshake.
    served: Duration,
}

/// Resident memory, KiB.
struct Memory {
    /// When every sampled site was served.
    serving: u64,
    /// `settle` later.
    settled: u64,
    /// The peak so far (VmHWM).
    peak: u64,
}

/// What every gateway run shares.
struct Bench {
    binary: PathBuf,
    root: CertificateDer<'static>,
    /// The certificate each site should serve (renewals replace theirs).
    leaves: Vec<Leaf>,
    sampled: Vec<usize>,
    settle: Duration,
    dir: PathBuf,
}

impl Bench {
    /// Starts a gateway on `config` and waits until `/readyz` is 200 and every sampled
    /// site gets its own certificate.
    async fn start(&self, what: &str, config: &Path) -> (GatewayProcess, TestClient, Serving) {
        let start = Instant::now();
        let gw =
            GatewayProcess::spawn(&self.binary, &["run", "--config", config.to_str().unwrap()]);
        let client = TestClient::new(gw.https, &self.root);
        let admin = gw.admin.expect("the config has an admin listener");
        let mut pending = self.sampled.clone();
        let mut ready = None;
        loop {
            let (status, body) = admin_get(admin, "/readyz").await;
            if status == 200 {
                let ready = *ready.get_or_insert_with(|| start.elapsed());
                let mut still = Vec::new();
                for &i in &pending {
                    if served(&client, &host(i)).await.as_ref() != Some(&self.leaves[i].der) {
                        still.push(i);
                    }
                }
                pending = still;
                if pending.is_empty() {
                    let served = start.elapsed();
                    return (gw, client, Serving { ready, served });
                }
            }
            if start.elapsed() > LIMIT {
                let tail: Vec<String> = gw.logs().into_iter().rev().take(20).collect();
                panic!(
                    "{what}: not serving every certificate after {LIMIT:?}: /readyz {status}, \
                     {} sampled names not served (first {:?}); /readyz body starts:\n{}\n\
                     last log lines:\n{}",
                    pending.len(),
                    pending.first().map(|i| host(*i)),
                    body.lines().take(10).collect::<Vec<_>>().join("\n"),
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`start`](Self::start), then the memory at that moment and `settle` later.
    async fn measure(&self, what: &str, config: &Path) -> (GatewayProcess, Serving, Memory) {
        let (gw, _, serving) = self.start(what, config).await;
        let at_serving = gw.rss_kib();
        tokio::time::sleep(self.settle).await;
        let memory = Memory {
            serving: at_serving,
            settled: gw.rss_kib(),
            peak: gw.peak_rss_kib(),
        };
        (gw, serving, memory)
    }

    /// Writes the gateway's log (JSON lines) to `<dir>/<name>.log`.
    fn save_log(&self, name: &str, gw: &GatewayProcess) {
        let mut text = gw.logs().join("\n");
        text.push('\n');
        std::fs::write(self.dir.join(format!("{name}.log")), text).unwrap();
    }
}

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// A value from the metrics page, summed over its labels; `None` when it is not there.
fn metric(page: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

async fn cluster_metrics(gw: &GatewayProcess) -> String {
    let (_, page) = admin_get(gw.admin.unwrap(), "/metrics").await;
    let show = |name: &str| {
        metric(&page, name).map_or_else(|| format!("{name} (absent)"), |v| format!("{name} {v}"))
    };
    format!(
        "{}, {}, {}",
        show("portcullis_cluster_store_up"),
        show("portcullis_cluster_certificates_adopted_total"),
        show("portcullis_cluster_bad_records_total")
    )
}

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn count_files(root: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

#[tokio::main]
async fn main() {
    let a = args();
    assert!(
        a.binary.exists(),
        "{} is missing: cargo build --release -p portcullis",
        a.binary.display()
    );
    portcullis_tests::init();
    let n = a.sites;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let etcd = TestEtcd::start(1).await;
    let (mut bench, config_a) = load(&a, &ca, &etcd, dir.path()).await;
    let configs: Vec<PathBuf> = (1..=a.replicas)
        .map(|k| {
            let node = format!("b{k}");
            let storage = dir.path().join(&node);
            let text = config(n, &storage, &cluster_section(&etcd, &node));
            write_config(dir.path(), &node, &text)
        })
        .collect();

    let (b1, a_settled) = compare(&bench, &config_a, &configs[0]).await;
    let mut replicas = vec![b1];
    let mut clients = vec![TestClient::new(replicas[0].https, &bench.root)];
    for (k, config) in configs.iter().enumerate().skip(1) {
        let what = format!("replica b{}", k + 1);
        let (gw, client, t) = bench.start(&what, config).await;
        println!(
            "{what} (started beside b1): /readyz 200 after {}, every sampled name served after \
             {}, RSS {:.0} MB",
            ms(t.ready),
            ms(t.served),
            mb(gw.rss_kib())
        );
        replicas.push(gw);
        clients.push(client);
    }

    propagation(&mut bench, &ca, &etcd, &clients, a.runs).await;
    for (k, gw) in replicas.iter().enumerate() {
        println!("b{}: {}", k + 1, cluster_metrics(gw).await);
        bench.save_log(&format!("b{}", k + 1), gw);
    }

    // A rolling restart: b1 again, on the local cache it wrote.
    let mut b1 = replicas.remove(0);
    b1.signal("TERM");
    b1.wait(Duration::from_secs(60));
    drop(b1);
    let (b1, t, mem) = bench.measure("b1 restarted", &configs[0]).await;
    println!(
        "b1 restarted on its local cache: /readyz 200 after {}, every sampled name served after \
         {}, RSS {:.0} MB, +{} s: {:.0} MB ({:+.0} MB over A's), peak {:.0} MB; {}",
        ms(t.ready),
        ms(t.served),
        mb(mem.serving),
        bench.settle.as_secs(),
        mb(mem.settled),
        mb(mem.settled) - mb(a_settled),
        mb(mem.peak),
        cluster_metrics(&b1).await
    );
    bench.save_log("b1-restarted", &b1);
    drop(b1);
    drop(replicas);
    drop(etcd);
    if a.keep {
        println!("kept: {}", dir.keep().display());
    }
}

/// Generates the certificates, seeds A's local storage and the etcd store; the shared
/// state and A's config.
async fn load(a: &Args, ca: &Ca, etcd: &TestEtcd, dir: &Path) -> (Bench, PathBuf) {
    let n = a.sites;
    let setup = Instant::now();
    let leaves: Vec<Leaf> = (0..n).map(|i| ca.leaf(&host(i), Duration::ZERO)).collect();
    let generated = setup.elapsed();

    // A: the certificates in local storage, where a gateway that ordered them keeps them.
    let storage_a = dir.join("a");
    let local = Storage::new(&storage_a, DIRECTORY);
    for (i, leaf) in leaves.iter().enumerate() {
        local
            .save_cert(&host(i), &leaf.chain_pem, &leaf.key_pem)
            .unwrap();
    }
    let seeded = setup.elapsed();

    // B: the same certificates in etcd only.
    futures_util::stream::iter(0..n)
        .map(|i| {
            let leaf = &leaves[i];
            async move { put_record(etcd, &host(i), leaf).await }
        })
        .buffer_unordered(WRITERS)
        .collect::<Vec<()>>()
        .await;
    let record_bytes: usize = (0..n).map(|i| record(&host(i), &leaves[i]).len()).sum();
    println!(
        "cluster-scale: {n} sites, `tls: acme`, ECDSA P-256; {n} certificates generated in \
         {:.1} s, written to local storage in {:.1} s, to etcd ({:.1} MB of records under \
         {PREFIX}certs/) in {:.1} s",
        generated.as_secs_f64(),
        (seeded - generated).as_secs_f64(),
        record_bytes as f64 / 1e6,
        (setup.elapsed() - seeded).as_secs_f64()
    );
    let config_a = write_config(dir, "a", &config(n, &storage_a, ""));
    let bench = Bench {
        binary: a.binary.clone(),
        root: ca.root.clone(),
        leaves,
        sampled: sample(n, a.sample),
        settle: a.settle,
        dir: dir.to_owned(),
    };
    (bench, config_a)
}

/// A, then B (kept running: the first replica); prints the table. Gives B and A's memory
/// `settle` after serving.
async fn compare(bench: &Bench, config_a: &Path, config_b: &Path) -> (GatewayProcess, u64) {
    let (gw_a, time_a, mem_a) = bench.measure("A (local storage)", config_a).await;
    bench.save_log("a", &gw_a);
    drop(gw_a);
    let (gw_b, time_b, mem_b) = bench.measure("B (cluster, etcd)", config_b).await;
    // `<dir>/b1.yaml` keeps its storage in `<dir>/b1`.
    let storage_b = config_b.with_extension("");

    println!();
    println!(
        "| {} sites | start → /readyz 200 | → {} sampled names served | RSS then | RSS +{} s | \
         peak (VmHWM) |",
        bench.leaves.len(),
        bench.sampled.len(),
        bench.settle.as_secs()
    );
    println!("|---|---|---|---|---|---|");
    for (name, t, m) in [
        ("A local storage", time_a, &mem_a),
        ("B cluster (etcd)", time_b, &mem_b),
    ] {
        println!(
            "| {name} | {} | {} | {:.0} MB | {:.0} MB | {:.0} MB |",
            ms(t.ready),
            ms(t.served),
            mb(m.serving),
            mb(m.settled),
            mb(m.peak)
        );
    }
    println!(
        "| B − A | {} | {} | {:+.0} MB | {:+.0} MB | {:+.0} MB |",
        ms(time_b.ready.saturating_sub(time_a.ready)),
        ms(time_b.served.saturating_sub(time_a.served)),
        mb(mem_b.serving) - mb(mem_a.serving),
        mb(mem_b.settled) - mb(mem_a.settled),
        mb(mem_b.peak) - mb(mem_a.peak)
    );
    println!(
        "B/A: RSS {:.2}×, peak {:.2}×, start {:.2}×   [target: B − A < 50 MB]",
        mem_b.settled as f64 / mem_a.settled as f64,
        mem_b.peak as f64 / mem_a.peak as f64,
        time_b.served.as_secs_f64() / time_a.served.as_secs_f64()
    );
    println!(
        "B's metrics: {}; B's local cache: {} files",
        cluster_metrics(&gw_b).await,
        count_files(&storage_b)
    );
    (gw_b, mem_a.settled)
}

/// `runs` times, one site's record replaced in etcd by a renewed certificate, and the time
/// until every replica serves it.
async fn propagation(
    bench: &mut Bench,
    ca: &Ca,
    etcd: &TestEtcd,
    clients: &[TestClient],
    runs: usize,
) {
    let n = bench.leaves.len();
    let mut all_served: Vec<Duration> = Vec::with_capacity(runs);
    for r in 0..runs {
        let i = (r + 1) * n / (runs + 1);
        let site = host(i);
        let renewed = ca.leaf(&site, Duration::from_secs(3600 * (r as u64 + 1)));
        let t = Instant::now();
        put_record(etcd, &site, &renewed).await;
        let stored = t.elapsed();
        let each: Vec<Duration> =
            futures_util::future::join_all(clients.iter().enumerate().map(|(k, client)| {
                let (site, want) = (&site, &renewed.der);
                async move {
                    loop {
                        if served(client, site).await.as_ref() == Some(want) {
                            return t.elapsed();
                        }
                        assert!(
                            t.elapsed() < LIMIT,
                            "replica b{} does not serve the renewed certificate of {site} after \
                             {LIMIT:?}",
                            k + 1
                        );
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }))
            .await;
        let all = *each.iter().max().unwrap();
        println!(
            "renewal {} ({site}): stored in {}, served by all {} replicas after {} ({})",
            r + 1,
            ms(stored),
            clients.len(),
            ms(all),
            each.iter()
                .enumerate()
                .map(|(k, d)| format!("b{} {}", k + 1, ms(*d)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        all_served.push(all);
        bench.leaves[i] = renewed;
    }
    let mut sorted = all_served.clone();
    sorted.sort();
    println!(
        "one renewed certificate → served by all {} replicas: median {}, max {} over {} runs   \
         [target < 5 s]",
        clients.len(),
        ms(sorted[sorted.len() / 2]),
        ms(*sorted.last().unwrap()),
        all_served.len()
    );
}
