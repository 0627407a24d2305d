//! tlsload: new TLS connections per second, every one a full handshake.
//!
//! wrk and h2load keep the TLS session of a closed connection and resume it on the next one
//! (OpenSSL's `SSL_clear` keeps the session), so with `Connection: close` they measure
//! resumed handshakes. tlsload turns resumption off and counts any handshake that was not
//! a full one (the count should be 0). It is written in Rust because an OpenSSL 3.0 client
//! spends about as much CPU per handshake as the server it measures; rustls' client side is
//! several times cheaper, so the server under test is the bottleneck.
//!
//! Each connection: TCP connect, TLS 1.3 handshake with X25519 only (what OpenSSL clients
//! and servers agree on; no post-quantum hybrid, which OpenSSL 3.0 lacks), SNI set, ALPN
//! http/1.1, the certificate not verified, nor (unless `-v`) the handshake signature: the
//! server signs either way, and the client's CPU is better spent on more connections. Then
//! one `GET PATH HTTP/1.1` with `Connection: close`, read until the server closes, status 200
//! checked. CONCURRENCY connections run at once, each starting the next as soon as it ends;
//! those ending within SECONDS after WARMUP are counted. One line of JSON on stdout.
//!
//! usage: tlsload -a ADDR -p PORT -d SECONDS -c CONCURRENCY (-n NAME | -N NAMES_FILE)
//!                [-w WARMUP] [-u PATH] [-v]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, HandshakeKind, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::TlsConnector;

/// Accepts any certificate; checks the handshake signature with it only if `check_signature`.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
    check_signature: bool,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if !self.check_signature {
            return Ok(HandshakeSignatureValid::assertion());
        }
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if !self.check_signature {
            return Ok(HandshakeSignatureValid::assertion());
        }
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

struct Args {
    addr: SocketAddr,
    seconds: f64,
    warmup: f64,
    concurrency: usize,
    names: Vec<String>,
    path: String,
    check_signature: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: tlsload -a ADDR -p PORT -d SECONDS -c CONCURRENCY (-n NAME | -N NAMES_FILE) [-w WARMUP] [-u PATH] [-v]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut host = "127.0.0.1".to_string();
    let (mut port, mut seconds, mut warmup, mut concurrency) = (0u16, 10.0, 1.0, 50usize);
    let (mut names, mut path, mut check_signature) = (Vec::new(), "/".to_string(), false);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-v" {
            check_signature = true;
            continue;
        }
        let value = it.next().unwrap_or_else(|| usage());
        let num = |v: &str| v.parse::<f64>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "-a" => host = value,
            "-p" => port = value.parse().unwrap_or_else(|_| usage()),
            "-d" => seconds = num(&value),
            "-w" => warmup = num(&value),
            "-c" => concurrency = value.parse().unwrap_or_else(|_| usage()),
            "-n" => names.push(value),
            "-N" => {
                let text = std::fs::read_to_string(&value).unwrap_or_else(|e| {
                    eprintln!("tlsload: {value}: {e}");
                    std::process::exit(1)
                });
                names.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(String::from),
                );
            }
            "-u" => path = value,
            _ => usage(),
        }
    }
    if port == 0 || concurrency == 0 || names.is_empty() {
        usage();
    }
    let addr = format!("{host}:{port}").parse().unwrap_or_else(|_| usage());
    Args {
        addr,
        seconds,
        warmup,
        concurrency,
        names,
        path,
        check_signature,
    }
}

#[derive(Default)]
struct Stats {
    ok: u64,
    errors: u64,
    resumed: u64,
    latencies_ms: Vec<f64>,
}

struct Target {
    addr: SocketAddr,
    names: Vec<(ServerName<'static>, Vec<u8>)>,
    next: AtomicUsize,
    connector: TlsConnector,
}

/// One connection from connect to the server's close; Ok(full handshake?) on a 200.
async fn one(target: &Target) -> Result<bool, String> {
    let i = target.next.fetch_add(1, Ordering::Relaxed) % target.names.len();
    let (name, request) = &target.names[i];
    let tcp = TcpStream::connect(target.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut tls = target
        .connector
        .connect(name.clone(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let full = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Full);
    tls.write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut head = Vec::with_capacity(16);
    let mut buf = [0u8; 16384];
    loop {
        match tls.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                let take = n.min(16 - head.len().min(16));
                head.extend_from_slice(&buf[..take]);
            }
            // A server that closes without close_notify has still sent the whole response.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    if head.starts_with(b"HTTP/1.1 200") {
        Ok(full)
    } else {
        Err(format!("response: {:?}", String::from_utf8_lossy(&head)))
    }
}

async fn slot(target: Arc<Target>, count_from: Instant, end: Instant) -> Stats {
    let mut stats = Stats::default();
    let mut last_error = None;
    loop {
        let started = Instant::now();
        if started >= end {
            break;
        }
        // In flight at the end: dropped, not counted.
        let Ok(outcome) = timeout_at(end, timeout(Duration::from_secs(10), one(&target))).await
        else {
            break;
        };
        // Counted by when it ended, so the window is a steady state at both edges.
        let counted = Instant::now() >= count_from;
        match outcome {
            Ok(Ok(full)) if counted => {
                stats.ok += 1;
                stats.resumed += u64::from(!full);
                stats
                    .latencies_ms
                    .push(started.elapsed().as_secs_f64() * 1000.0);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                stats.errors += u64::from(counted);
                last_error = Some(e);
            }
            Err(_) => {
                stats.errors += u64::from(counted);
                last_error = Some("timed out after 10 s".into());
            }
        }
    }
    if let Some(e) = last_error {
        eprintln!("tlsload: last error: {e}");
    }
    stats
}

fn main() {
    let args = parse_args();
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let provider = Arc::new(provider);
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 is supported by the aws-lc-rs provider")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate {
            provider,
            check_signature: args.check_signature,
        }))
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];

    let names = args
        .names
        .iter()
        .map(|n| {
            let server_name = ServerName::try_from(n.clone()).unwrap_or_else(|_| {
                eprintln!("tlsload: {n} is not a valid server name");
                std::process::exit(2)
            });
            let request = format!(
                "GET {} HTTP/1.1\r\nHost: {n}\r\nUser-Agent: tlsload\r\nConnection: close\r\n\r\n",
                args.path
            );
            (server_name, request.into_bytes())
        })
        .collect();
    let target = Arc::new(Target {
        addr: args.addr,
        names,
        next: AtomicUsize::new(0),
        connector: TlsConnector::from(Arc::new(config)),
    });

    // One thread: the load generator gets one core, as the proxy does.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    let total = runtime.block_on(async {
        let count_from = Instant::now() + Duration::from_secs_f64(args.warmup);
        let end = count_from + Duration::from_secs_f64(args.seconds);
        let tasks: Vec<_> = (0..args.concurrency)
            .map(|_| tokio::spawn(slot(target.clone(), count_from, end)))
            .collect();
        let mut total = Stats::default();
        for t in tasks {
            let s = t.await.expect("a load task does not panic");
            total.ok += s.ok;
            total.errors += s.errors;
            total.resumed += s.resumed;
            total.latencies_ms.extend(s.latencies_ms);
        }
        total
    });

    let mut lat = total.latencies_ms;
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if lat.is_empty() {
            0.0
        } else {
            lat[((lat.len() - 1) as f64 * p) as usize]
        }
    };
    println!(
        "{{\"ok\": {}, \"errors\": {}, \"resumed\": {}, \"seconds\": {:.3}, \"rate\": {:.1}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}}}",
        total.ok,
        total.errors,
        total.resumed,
        args.seconds,
        total.ok as f64 / args.seconds,
        pct(0.5),
        pct(0.99)
    );
    std::process::exit(if total.ok > 0 { 0 } else { 1 });
}
