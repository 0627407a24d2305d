//! The validated configuration the rest of Portcullis runs on. Every value here has been
//! checked; defaults are filled in; files named by the config have been read.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use ipnet::IpNet;

use crate::error::TokenError;
use crate::host::HostPattern;
use crate::pem::FileStamp;

/// A whole, valid configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the edge listens.
    pub listen: Listen,
    /// Where the admin endpoints listen, if anywhere.
    pub admin: Admin,
    /// Gateway-wide TLS settings.
    pub tls: TlsSettings,
    /// Timeouts and sizes that protect the listeners.
    pub limits: Limits,
    /// How the gateway stops.
    pub shutdown: Shutdown,
    /// How certificates for `tls: acme` sites are obtained.
    pub acme: Acme,
    /// Where state is kept: the ACME account, issued certificates and keys.
    pub storage: PathBuf,
    /// The sites, in file order.
    pub sites: Vec<Site>,
    /// Peers whose `X-Forwarded-For` and `Forwarded` headers are kept and appended to;
    /// from anyone else they are replaced.
    pub trusted_proxies: Vec<IpNet>,
    /// Certificates shared with other replicas through a store (`cluster:`); `None` keeps
    /// everything under `storage` on this machine only.
    pub cluster: Option<Cluster>,
}

/// `mixed_content:` on a site.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MixedContent {
    /// Responses pass as the origin sent them.
    #[default]
    Off,
    /// HTML responses over HTTPS carry `Content-Security-Policy: upgrade-insecure-requests`
    /// (merged into a policy the origin sent): browsers fetch `http://` subresources of
    /// the page over HTTPS instead of blocking or warning.
    Upgrade,
    /// HTML responses over HTTPS are rewritten as they stream: `http://` URLs in the
    /// attributes that load or link resources become `https://` when their host is served
    /// by this gateway over HTTPS or is in `hosts`.
    Rewrite {
        /// `rewrite.hosts`: further hosts known to serve HTTPS (a CDN, another server).
        hosts: Vec<HostPattern>,
    },
}

/// `cluster:`: replicas that share ACME certificates through a store, with one issuer
/// elected at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// Where the shared state lives.
    pub store: ClusterStore,
    /// This replica's name (`cluster.node_name`; default: the host name). Two replicas must
    /// never share one.
    pub node_name: String,
    /// How long the issuer's leadership lasts without renewal (`cluster.lease`, default
    /// 10 s); a replica that stops renewing loses it after this long.
    pub lease: Duration,
    /// Longest the issuer waits for every live replica to have a challenge answer before
    /// telling the CA to validate anyway (`cluster.challenge_timeout`, default 10 s).
    pub challenge_timeout: Duration,
    /// A 32-byte key that encrypts private keys and the ACME account in the store
    /// (`cluster.encryption_key_file`, base64 or raw 32 bytes); `None` stores them as
    /// they are (protect the store instead: etcd client certificates, Kubernetes RBAC).
    pub encryption_key: Option<EncryptionKey>,
}

/// A key that encrypts secrets at rest in the cluster store. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptionKey(pub [u8; 32]);

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(..)")
    }
}

/// `cluster.store`.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterStore {
    /// `store: etcd`.
    Etcd(EtcdStore),
    /// `store: kubernetes`: Leases and Secrets in one namespace.
    Kubernetes(KubernetesStore),
}

/// `cluster.etcd`.
#[derive(Clone, PartialEq)]
pub struct EtcdStore {
    /// `http://` or `https://` client URLs of the members.
    pub endpoints: Vec<String>,
    /// Every key lives under it; ends with `/` (default `/portcullis/`).
    pub prefix: String,
    /// TLS towards the members (trust and client certificate), for `https://` endpoints.
    pub tls: Option<EtcdTls>,
    /// etcd's own authentication, when enabled.
    pub username: Option<String>,
    /// Its password (from `password` or `password_file`). Never printed.
    pub password: Option<String>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| ".."))
            .finish()
    }
}

/// `cluster.etcd.tls`: PEM files, checked when the config is read and read again when
/// the client connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// CA certificates that sign the members' certificates (else the system's roots).
    pub ca: Option<PathBuf>,
    /// Client certificate chain, with `key`.
    pub cert: Option<PathBuf>,
    /// Client private key, with `cert`.
    pub key: Option<PathBuf>,
}

/// `cluster.kubernetes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesStore {
    /// Where the Lease, the Secrets holding certificates, orders and challenge answers live.
    pub namespace: String,
    /// A kubeconfig file to reach the API server with (`portcullis run` outside the
    /// cluster); default: the ingress controller's client, else `KUBECONFIG` or the pod's
    /// service account.
    pub kubeconfig: Option<PathBuf>,
}

/// ACME settings (used by `tls: acme` sites).
#[derive(Debug, Clone, PartialEq)]
pub struct Acme {
    /// Directory URL of the CA.
    pub directory: String,
    /// Contact address registered with the account.
    pub email: Option<String>,
    /// Extra roots trusted when talking to the directory (private CAs, test servers).
    pub ca_bundle: Vec<CertificateDer<'static>>,
    /// Preferred challenge.
    pub challenge: Challenge,
    /// External Account Binding, for CAs that require one.
    pub eab: Option<Eab>,
    /// Renew this long before expiry instead of when a third of the lifetime remains.
    pub renew_before: Option<Duration>,
    /// First wait after a failed attempt; doubles with each failure.
    pub backoff_initial: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
    /// Orders running at once.
    pub concurrency: usize,
}

/// ACME challenge types the gateway answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// TLS-ALPN-01 on the HTTPS listener; falls back to HTTP-01 when the CA does not offer
    /// it and the HTTP listener is on.
    TlsAlpn01,
    /// HTTP-01 on the plain HTTP listener.
    Http01,
}

/// An External Account Binding.
#[derive(Clone, PartialEq, Eq)]
pub struct Eab {
    /// Key identifier given by the CA.
    pub kid: String,
    /// The decoded HMAC key.
    pub hmac_key: Vec<u8>,
}

impl std::fmt::Debug for Eab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eab")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Edge listener addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// HTTPS listener (default `0.0.0.0:443`).
    pub https: SocketAddr,
    /// Plain HTTP listener for redirects and ACME HTTP-01 (default `0.0.0.0:80`), or `None`
    /// when set to `off`.
    pub http: Option<SocketAddr>,
    /// Peers that must open each connection with a PROXY protocol header (v1 or v2),
    /// whose addresses then stand for the client's. Empty: PROXY protocol is not accepted.
    pub proxy_protocol_trusted: Vec<IpNet>,
}

/// Admin listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// Where `/healthz`, `/readyz`, `/metrics` and `/reload` are served (default
    /// `127.0.0.1:9901`), or `None` for `off`.
    pub listen: Option<AdminListen>,
    /// The bearer token read from `admin.token_file`: required by `POST /reload` and
    /// `GET /metrics` when set.
    pub token: Option<AdminToken>,
    /// Host names (and addresses) the admin listener answers to besides loopback names and
    /// its own address, lowercased, without port (`admin.allowed_hosts`).
    pub allowed_hosts: Vec<String>,
}

impl Admin {
    /// What `check` and `run` say when the admin listener is reachable from other machines
    /// and anyone who reaches it can reload the gateway and read its metrics.
    pub fn exposure_warning(&self) -> Option<crate::Problem> {
        let addr = self.listen.as_ref()?.tcp()?;
        if addr.ip().is_loopback() || self.token.is_some() {
            return None;
        }
        Some(crate::Problem::new(
            "admin.listen",
            format!(
                "{addr} is not a loopback address and there is no `admin.token_file`; anyone \
                 who can reach it can reload the gateway and read its metrics"
            ),
        ))
    }
}

/// Where the admin listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminListen {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A unix socket at this path (`unix:/run/portcullis/admin.sock`), which only the
    /// gateway's user may connect to (mode 0600).
    Unix(PathBuf),
}

impl AdminListen {
    /// The TCP address, when it is one.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp(addr) => Some(*addr),
            Self::Unix(_) => None,
        }
    }
}

impl std::fmt::Display for AdminListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => addr.fmt(f),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The admin listener's bearer token. Its value never appears in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// The token as read from `path`: surrounding whitespace (the file's final newline)
    /// is dropped; an empty file, or one with characters a header cannot carry, is refused.
    pub fn read(path: &std::path::Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty {
                path: path.to_owned(),
            });
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotPrintable {
                path: path.to_owned(),
            });
        }
        Ok(Self(token.to_owned()))
    }

    /// Whether `presented` is the token, in time that does not depend on where they differ
    /// (so the token cannot be guessed a byte at a time by timing answers).
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(presented).into()
    }

    /// The token, to send in an `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Gateway-wide TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Where `tls: local` keeps its CA (resolved against the config file's folder).
    pub local_ca_dir: PathBuf,
}

/// Client-side protections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Time allowed to complete a TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed to send a request's headers, from its first byte (against slowloris);
    /// also the time a new connection has to start its first request.
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may sit idle between requests (HTTP/1.1) or with
    /// no open stream (HTTP/2).
    pub idle_timeout: Duration,
    /// Largest request head accepted; larger gets 431.
    pub max_header_size: usize,
    /// Largest request body accepted unless a site says otherwise; larger gets 413.
    pub max_body_size: Option<u64>,
    /// Client connections open at once, all listeners together; more are refused.
    pub max_connections: usize,
    /// Client connections open at once from one IP address; `None` is unlimited.
    pub max_connections_per_ip: Option<usize>,
    /// HTTP/2 streams one connection may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 streams a client may reset within 10 s before the connection is closed
    /// (rapid reset, CVE-2023-44487).
    pub h2_max_resets: u32,
}

/// Shutdown behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shutdown {
    /// How long in-flight requests may take to finish after a stop signal.
    pub drain_timeout: Duration,
}

/// One site: a set of hosts with one certificate and what to do with their requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// Stable name (the `name` key, else the first host); used in logs and metrics.
    pub name: String,
    /// The hosts this site answers for; never empty.
    pub hosts: Vec<HostPattern>,
    /// Serves handshakes with unknown or no SNI, and requests for unclaimed hosts.
    pub default: bool,
    /// Where the site's certificate comes from.
    pub tls: SiteTls,
    /// `Strict-Transport-Security` to add to every response.
    pub hsts: Option<Hsts>,
    /// What the gateway does about `http://` subresources in the site's HTML pages.
    pub mixed_content: MixedContent,
    /// Path routes in file order (the longest matching prefix wins, whatever the order).
    pub routes: Vec<Route>,
    /// What requests that match no route get; `None` answers 404.
    pub fallback: Option<Action>,
    /// Largest request body for this site (overrides `limits.max_body_size`); larger gets 413.
    pub max_body_size: Option<u64>,
    /// The protocols a request for the site's fallback may switch to (routes have their own,
    /// inherited from this one).
    pub upgrades: Upgrades,
    /// What a plain-HTTP request for the site's fallback gets (routes have their own,
    /// inherited from this one): redirected to HTTPS (the default) or served.
    pub plain_http: PlainHttp,
}

/// What the plain HTTP listener does with a request for a site or route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlainHttp {
    /// Redirect to the same URL over HTTPS (308, 301 for GET and HEAD). The default.
    #[default]
    Redirect,
    /// Serve it as the HTTPS listener would (an Ingress without TLS, or with
    /// `ssl-redirect: "false"`; ACME HTTP-01 solver paths of another issuer).
    Serve,
}

/// Source of a site's certificate.
#[derive(Debug, Clone, PartialEq)]
pub enum SiteTls {
    /// Certificate and key read from files.
    Files(CertKey),
    /// Issued at start by the gateway's local development CA.
    Local,
    /// Obtained and renewed by ACME. With `fallback_local`, a local-CA certificate is served
    /// until the first one arrives.
    Acme {
        /// Serve a local-CA certificate while waiting.
        fallback_local: bool,
    },
    /// No certificate of its own: handshakes for its hosts get the default site's
    /// certificate, as for a name no site claims (an Ingress rule without `tls`, or whose
    /// Secret is broken).
    None,
}

/// A certificate chain and its private key, read from PEM files (or from a Kubernetes
/// Secret, whose `secret:NS/NAME` then stands in for both paths).
#[derive(Debug)]
pub struct CertKey {
    /// File the chain came from (or `secret:NS/NAME`): the certificate's name in logs, and
    /// the key that lets a reload reuse what it already loaded.
    pub cert_path: PathBuf,
    /// File the key came from (or `secret:NS/NAME`).
    pub key_path: PathBuf,
    /// Leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
    /// The two files' stamps when they were read, if trusted: a reload
    /// ([`load_reusing`](crate::load_reusing)) takes this certificate again without reading
    /// the files while both stamps are the same. Not part of equality, which is content.
    /// Shared: a site's settings are copied into several of the gateway's tables, and the
    /// copies share one.
    pub stamps: Option<Arc<(FileStamp, FileStamp)>>,
}

impl PartialEq for CertKey {
    fn eq(&self, other: &Self) -> bool {
        self.cert_path == other.cert_path
            && self.key_path == other.key_path
            && self.chain == other.chain
            && self.key == other.key
    }
}

impl Clone for CertKey {
    fn clone(&self) -> Self {
        Self {
            cert_path: self.cert_path.clone(),
            key_path: self.key_path.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            stamps: self.stamps.clone(),
        }
    }
}

/// HSTS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hsts {
    /// `max-age`.
    pub max_age: Duration,
    /// `includeSubDomains`.
    pub include_subdomains: bool,
    /// `preload`.
    pub preload: bool,
}

impl Hsts {
    /// The header value, e.g. `max-age=31536000; includeSubDomains`.
    pub fn header_value(&self) -> String {
        let mut v = format!("max-age={}", self.max_age.as_secs());
        if self.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if self.preload {
            v.push_str("; preload");
        }
        v
    }
}

/// A path and what it does.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Starts with `/`. As a prefix it matches itself and anything below it (`/api` matches
    /// `/api` and `/api/x`, not `/apix`); a prefix ending in `/` matches anything that
    /// starts with it. Exact matches only the whole path, case-sensitively.
    pub path: String,
    /// Prefix (the default) or exact. The longest matching path wins; on a tie an exact
    /// route beats a prefix.
    pub path_match: PathMatch,
    /// Remove `path` from the request path before forwarding.
    pub strip_prefix: bool,
    /// Replace the matched `path` with this before forwarding (`/app` with rewrite `/`
    /// sends `/app/x` as `/x`). Exclusive with `strip_prefix`.
    pub rewrite: Option<String>,
    /// What to do.
    pub action: Action,
    /// The protocols a request may switch to (`upgrades`, else the site's).
    pub upgrades: Upgrades,
    /// Which client addresses may use the route; others get 403.
    pub access: Access,
    /// What a plain-HTTP request for this route gets (else the site's).
    pub plain_http: PlainHttp,
    /// Largest request body for this route (else the site's, else `limits.max_body_size`);
    /// larger gets 413.
    pub max_body_size: Option<u64>,
}

/// How a route's `path` is compared with a request's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum PathMatch {
    /// The path and everything below it, on `/` boundaries.
    #[default]
    Prefix,
    /// The whole path, byte for byte.
    Exact,
}

/// Source-address rules of a route. A client whose address is in `deny` is refused; then,
/// when `allow` is not empty, one whose address is not in `allow` is refused. The address is
/// the client's as the gateway knows it (the PROXY protocol's, else the peer's; never a
/// forwarding header).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Access {
    /// Networks allowed (empty: every address not denied).
    pub allow: Vec<IpNet>,
    /// Networks refused.
    pub deny: Vec<IpNet>,
}

impl Access {
    /// Whether the rules let `ip` through.
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }

    /// True when nothing is restricted.
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// The protocols an HTTP/1.1 `Upgrade` request may switch to through the gateway: names
/// without a version, lowercase. WebSocket only unless the config says otherwise. `h2c`
/// and `h2` can never be listed: a client that upgraded to HTTP/2 would talk to the origin
/// past every route and header rule (RFC 9113 §3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrades(Box<[Box<str>]>);

impl Upgrades {
    /// No upgrade passes: every `Upgrade` request is forwarded as an ordinary one.
    pub fn none() -> Self {
        Self(Box::new([]))
    }

    /// Names as validated: each a token, lowercase, and not `h2c` or `h2`.
    pub(crate) fn from_names(names: Vec<String>) -> Self {
        Self(names.into_iter().map(String::into_boxed_str).collect())
    }

    /// Whether `protocol` (an `Upgrade` element, `name` or `name/version`) may pass.
    pub fn allows(&self, protocol: &str) -> bool {
        let name = protocol.split_once('/').map_or(protocol, |(n, _)| n).trim();
        self.0.iter().any(|a| a.eq_ignore_ascii_case(name))
    }

    /// The names, in config order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|n| &**n)
    }
}

impl Default for Upgrades {
    /// WebSocket only.
    fn default() -> Self {
        Self(Box::new(["websocket".into()]))
    }
}

/// What a site or route does with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Forward to an origin.
    Proxy(Box<Origin>),
    /// Answer directly.
    Respond(Respond),
    /// Redirect to a fixed URL (the request's path and query are not appended).
    Redirect(Redirect),
}

/// A fixed redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
    /// The `Location`: an absolute `http(s)://` URL or a path starting with `/`.
    pub location: String,
}

/// A fixed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Respond {
    /// Status code (default 200).
    pub status: u16,
    /// Body (default empty).
    pub body: String,
    /// `Content-Type` (default `text/plain; charset=utf-8` when there is a body).
    pub content_type: Option<String>,
}

/// An origin: one or more servers, how to reach them, and how to share requests among
/// them.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    /// The URL as written (`url`), or the servers' URLs joined by `, `, for logs and
    /// summaries.
    pub url: String,
    /// The servers, in file order (one for the `url` form).
    pub servers: Vec<OriginServer>,
    /// Plaintext or TLS, and how TLS is verified (the same for every server).
    pub transport: Transport,
    /// How a server is picked for a request.
    pub balance: Balance,
    /// Active and passive health checking.
    pub health: Health,
    /// When a failed request is tried again on another server.
    pub retries: Retries,
    /// Timeouts towards this origin.
    pub timeouts: OriginTimeouts,
    /// Send a PROXY protocol header on each new connection to a server.
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    /// HTTP/2 with prior knowledge to a plaintext origin (gRPC).
    pub h2c: bool,
    /// Connections to each server, open or being opened, at most (`None`: no limit).
    pub max_connections: Option<u32>,
    /// Status returned when strict verification of the origin fails (502 or 526).
    pub verify_failure_status: u16,
}

/// One server of an origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginServer {
    /// The URL as written; also the `origin` label of its metrics.
    pub url: String,
    /// Host to connect to (name or IP, IPv6 without brackets).
    pub host: String,
    /// Port to connect to.
    pub port: u16,
    /// Share of requests relative to the other servers (default 1).
    pub weight: u32,
}

/// How requests are shared among an origin's servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    /// Weighted round robin, smooth (no bursts to one server).
    RoundRobin,
    /// The server with the fewest requests in flight, relative to its weight.
    LeastRequests,
    /// Two servers picked at random, the one with fewer requests in flight wins.
    RandomTwo,
    /// Consistent (rendezvous) hashing of a request key: a key stays on one server, and
    /// only the keys of a removed server move.
    Hash(HashKey),
    /// Session affinity by a cookie the gateway sets: a client without it (or whose server
    /// is gone or down) is balanced round robin and gets the cookie naming its server.
    Sticky(StickyCookie),
}

/// The cookie of [`Balance::Sticky`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyCookie {
    /// Cookie name.
    pub name: String,
    /// `Max-Age`; `None` makes it a session cookie.
    pub max_age: Option<Duration>,
    /// `Path` (default `/`).
    pub path: String,
    /// `Secure` (set when the request came over HTTPS unless this says `Some(false)`).
    pub secure: Option<bool>,
    /// `SameSite` value (`Lax`, `Strict`, `None`), if any.
    pub same_site: Option<String>,
}

/// What `balance: hash` hashes. A request without the key is balanced round robin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header's value (name lowercase).
    Header(String),
    /// A cookie's value.
    Cookie(String),
    /// The client's IP address.
    ClientIp,
}

/// Health checking of an origin's servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Periodic requests to each server.
    pub active: Option<ActiveHealth>,
    /// Ejection after failures seen on real traffic.
    pub passive: Option<PassiveHealth>,
}

/// `health.active`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveHealth {
    /// Path requested (with the first site host as `Host`), default `/`.
    pub path: String,
    /// Time between checks of one server (default 5 s).
    pub interval: Duration,
    /// Time a check may take (default 2 s).
    pub timeout: Duration,
    /// Statuses that count as healthy, inclusive (default 200–399).
    pub expect: (u16, u16),
    /// Good checks in a row that bring a down server back (default 2).
    pub rise: u32,
    /// Failed checks in a row that take a server down (default 3).
    pub fall: u32,
}

/// `health.passive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveHealth {
    /// Failures within `window` that eject a server (default 5).
    pub failures: u32,
    /// Window the failures are counted in (default 10 s).
    pub window: Duration,
    /// How long an ejected server stays out (default 30 s).
    pub eject: Duration,
}

/// `retries`.
#[derive(Debug, Clone, PartialEq)]
pub struct Retries {
    /// Tries after the first (0: never retry).
    pub attempts: u32,
    /// Retry when a connection to a server cannot be made (any method: nothing was sent).
    pub on_connect: bool,
    /// Retry when a connection breaks before the response (idempotent methods only).
    pub on_reset: bool,
    /// Retry on these response statuses (idempotent methods only).
    pub on_status: Vec<u16>,
    /// Retries allowed as a fraction of requests (over 10 s; a few per second are always
    /// allowed), so a sick origin is not hit by a retry storm.
    pub budget: f64,
}

impl Default for Retries {
    /// No retries; when `attempts` is raised, on connect failures and resets, within the
    /// default budget.
    fn default() -> Self {
        Self {
            attempts: 0,
            on_connect: true,
            on_reset: true,
            on_status: Vec::new(),
            budget: defaults::RETRY_BUDGET,
        }
    }
}

impl Default for OriginTimeouts {
    fn default() -> Self {
        Self {
            connect: defaults::CONNECT_TIMEOUT,
            response_header: defaults::RESPONSE_HEADER_TIMEOUT,
            idle: defaults::ORIGIN_IDLE_TIMEOUT,
        }
    }
}

impl Route {
    /// A prefix route with every other setting at its default.
    pub fn new(path: impl Into<String>, action: Action) -> Self {
        Self {
            path: path.into(),
            path_match: PathMatch::Prefix,
            strip_prefix: false,
            rewrite: None,
            action,
            upgrades: Upgrades::default(),
            access: Access::default(),
            plain_http: PlainHttp::Redirect,
            max_body_size: None,
        }
    }
}

/// PROXY protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocolVersion {
    /// Text header.
    V1,
    /// Binary header.
    V2,
}

impl Origin {
    /// An origin with every setting at its default, as a file with only `servers` would
    /// give: round robin, no active health checks; with several servers, passive health
    /// checking (a server failing 5 times in 10 s is out for 30 s) and one retry.
    pub fn with_servers(url: String, servers: Vec<OriginServer>, transport: Transport) -> Self {
        let several = servers.len() > 1;
        Self {
            url,
            servers,
            transport,
            balance: Balance::RoundRobin,
            health: Health {
                active: None,
                passive: several.then_some(PassiveHealth {
                    failures: defaults::PASSIVE_FAILURES,
                    window: defaults::PASSIVE_WINDOW,
                    eject: defaults::PASSIVE_EJECT,
                }),
            },
            retries: Retries {
                attempts: u32::from(several),
                ..Retries::default()
            },
            timeouts: OriginTimeouts::default(),
            proxy_protocol: None,
            h2c: false,
            max_connections: None,
            verify_failure_status: 502,
        }
    }

    /// `flexible`, `full` or `strict`.
    pub fn mode(&self) -> Mode {
        match &self.transport {
            Transport::Plain => Mode::Flexible,
            Transport::Tls(tls) => match tls.verify {
                Verify::Off => Mode::Full,
                Verify::SystemRoots | Verify::Roots(_) => Mode::Strict,
            },
        }
    }
}

/// Origin modes as a CDN edge names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plaintext HTTP to the origin.
    Flexible,
    /// TLS to the origin, certificate not verified.
    Full,
    /// TLS to the origin, chain and name verified.
    Strict,
}

impl Mode {
    /// The config keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Flexible => "flexible",
            Mode::Full => "full",
            Mode::Strict => "strict",
        }
    }
}

/// How bytes travel to an origin.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    /// Plain TCP.
    Plain,
    /// TLS.
    Tls(OriginTls),
}

/// TLS towards an origin.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginTls {
    /// Name sent as SNI and verified in strict mode, for every server (`None`: each
    /// server's own host).
    pub server_name: Option<String>,
    /// How the origin's certificate is checked.
    pub verify: Verify,
    /// Client certificate for authenticated origin pulls.
    pub client_cert: Option<CertKey>,
}

/// Verification of an origin certificate.
#[derive(Debug, Clone, PartialEq)]
pub enum Verify {
    /// `full`: accept any certificate (the handshake signature is still checked).
    Off,
    /// `strict` against the system's trust store.
    SystemRoots,
    /// `strict` against these roots only.
    Roots(Vec<CertificateDer<'static>>),
}

/// Timeouts towards one origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginTimeouts {
    /// TCP connect plus TLS handshake (default 5 s); exceeded → 504.
    pub connect: Duration,
    /// From request sent to response headers received (default 60 s); exceeded → 504.
    pub response_header: Duration,
    /// How long an unused pooled connection is kept (default 90 s).
    pub idle: Duration,
}

/// Defaults shared by the validator, the docs and tests.
pub mod defaults {
    use std::time::Duration;

    /// `listen.https`.
    pub const HTTPS: &str = "0.0.0.0:443";
    /// `listen.http`.
    pub const HTTP: &str = "0.0.0.0:80";
    /// `admin.listen`.
    pub const ADMIN: &str = "127.0.0.1:9901";
    /// `tls.local_ca_dir`.
    pub const LOCAL_CA_DIR: &str = "./data/ca";
    /// `limits.handshake_timeout`.
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// `limits.header_read_timeout`.
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// `acme.directory` (Let's Encrypt).
    pub const ACME_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
    /// `acme.directory: letsencrypt-staging`.
    pub const ACME_STAGING_DIRECTORY: &str =
        "https://acme-staging-v02.api.letsencrypt.org/directory";
    /// `acme.backoff.initial`.
    pub const ACME_BACKOFF_INITIAL: Duration = Duration::from_secs(60);
    /// `acme.backoff.max`.
    pub const ACME_BACKOFF_MAX: Duration = Duration::from_secs(3600);
    /// `acme.concurrency`.
    pub const ACME_CONCURRENCY: usize = 4;
    /// `storage`.
    pub const STORAGE: &str = "./data";
    /// `cluster.etcd.prefix`.
    pub const CLUSTER_PREFIX: &str = "/portcullis/";
    /// `cluster.lease`.
    pub const CLUSTER_LEASE: Duration = Duration::from_secs(10);
    /// `cluster.challenge_timeout`.
    pub const CLUSTER_CHALLENGE_TIMEOUT: Duration = Duration::from_secs(10);
    /// `cluster.kubernetes.namespace`.
    pub const CLUSTER_NAMESPACE: &str = "portcullis";
    /// `limits.max_header_size`.
    pub const MAX_HEADER_SIZE: usize = 64 * 1024;
    /// `limits.idle_timeout`.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// `limits.max_connections`.
    pub const MAX_CONNECTIONS: usize = 16_384;
    /// `limits.max_connections_per_ip`: unlimited (`None`; 0 in the file says the same).
    /// Behind a NAT (Kubernetes' source NAT, a corporate proxy) or a load balancer without
    /// the PROXY protocol every client shares a few addresses, and a per-address cap resets
    /// busy sites; one address can carry tens of thousands of connections (a port each),
    /// more than `max_connections`, so no cap both protects and is safe for them. nginx
    /// and HAProxy have no such default either; `max_connections` and the timeouts bound
    /// what one client can hold.
    pub const MAX_CONNECTIONS_PER_IP: Option<usize> = None;
    /// `limits.h2_max_concurrent_streams`.
    pub const H2_MAX_CONCURRENT_STREAMS: u32 = 128;
    /// `limits.h2_max_resets` (per connection, per 10 s).
    pub const H2_MAX_RESETS: u32 = 200;
    /// `shutdown.drain_timeout`.
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    /// `origin.timeouts.connect`.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// `origin.timeouts.response_header`.
    pub const RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
    /// `origin.timeouts.idle`.
    pub const ORIGIN_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
    /// `health.active.interval`.
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
    /// `health.active.timeout`.
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
    /// `health.active.rise`.
    pub const HEALTH_RISE: u32 = 2;
    /// `health.active.fall`.
    pub const HEALTH_FALL: u32 = 3;
    /// `health.passive.failures`.
    pub const PASSIVE_FAILURES: u32 = 5;
    /// `health.passive.window`.
    pub const PASSIVE_WINDOW: Duration = Duration::from_secs(10);
    /// `health.passive.eject`.
    pub const PASSIVE_EJECT: Duration = Duration::from_secs(30);
    /// `retries.budget`.
    pub const RETRY_BUDGET: f64 = 0.2;
    /// `hsts.max_age` when `hsts: true`.
    pub const HSTS_MAX_AGE: Duration = Duration::from_secs(31_536_000);
}
