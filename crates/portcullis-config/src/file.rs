//! The YAML file as written by a user. Every struct denies unknown keys; nothing here is
//! validated beyond its shape — `validate` turns these into the runtime model.

use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, Visitor};

use crate::units::{de_duration, de_size};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ListenFile {
    pub https: Option<String>,
    pub http: Option<String>,
    pub proxy_protocol: Option<ListenProxyProtocolFile>,
}

/// `listen.proxy_protocol: { trusted: [CIDR, ...] }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenProxyProtocolFile {
    pub trusted: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AdminFile {
    pub listen: Option<String>,
    pub token_file: Option<PathBuf>,
    pub allowed_hosts: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TlsFile {
    pub local_ca_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LimitsFile {
    #[serde(deserialize_with = "de_duration")]
    pub handshake_timeout: Option<Duration>,
    #[serde(deserialize_with = "de_duration")]
    pub header_read_timeout: Option<Duration>,
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Option<Duration>,
    #[serde(deserialize_with = "de_size")]
    pub max_header_size: Option<u64>,
    #[serde(deserialize_with = "de_size")]
    pub max_body_size: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub h2_max_concurrent_streams: Option<u32>,
    pub h2_max_resets: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ShutdownFile {
    #[serde(deserialize_with = "de_duration")]
    pub drain_timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AcmeFile {
    pub directory: Option<String>,
    pub email: Option<String>,
    pub ca_bundle: Option<PathBuf>,
    pub challenge: Option<ChallengeFile>,
    pub eab: Option<EabFile>,
    #[serde(deserialize_with = "de_duration")]
    pub renew_before: Option<Duration>,
    pub backoff: BackoffFile,
    pub concurrency: Option<usize>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub(crate) enum ChallengeFile {
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    #[serde(rename = "http-01")]
    Http01,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EabFile {
    pub kid: String,
    pub hmac_key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct BackoffFile {
    #[serde(deserialize_with = "de_duration")]
    pub initial: Option<Duration>,
    #[serde(deserialize_with = "de_duration")]
    pub max: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SiteFile {
    pub name: Option<String>,
    pub hosts: Vec<String>,
    #[serde(default)]
    pub default: bool,
    pub tls: Option<SiteTlsFile>,
    pub hsts: Option<HstsFile>,
    pub origin: Option<OriginFile>,
    pub respond: Option<RespondFile>,
    #[serde(default)]
    pub routes: Vec<RouteFile>,
    #[serde(default, deserialize_with = "de_size")]
    pub max_body_size: Option<u64>,
    pub upgrades: Option<Vec<String>>,
    pub plain_http: Option<PlainHttpFile>,
    pub redirect: Option<RedirectFile>,
    pub mixed_content: Option<MixedContentFile>,
    pub rewrite: Option<RewriteFile>,
}

/// A site's `rewrite:` (with `mixed_content: rewrite`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RewriteFile {
    pub hosts: Vec<String>,
}

/// `mixed_content: off | upgrade | rewrite`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum MixedContentFile {
    Off,
    Upgrade,
    Rewrite,
}

/// `plain_http: redirect | serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PlainHttpFile {
    Redirect,
    Serve,
}

/// `match: prefix | exact`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PathMatchFile {
    Prefix,
    Exact,
}

/// `redirect: { to: URL-or-path, status: 302 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedirectFile {
    pub to: String,
    pub status: Option<u16>,
}

/// `tls: local`, `tls: acme`, `tls: { cert: ..., key: ... }` or `tls: { acme: true, fallback: local }`.
#[derive(Debug)]
pub(crate) enum SiteTlsFile {
    Keyword(String),
    Map(SiteTlsMapFile),
}

impl<'de> Deserialize<'de> for SiteTlsFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_or_map(d, "`local`, `acme`, or a map with `cert` and `key`").map(|v| match v {
            StringOr::String(s) => SiteTlsFile::Keyword(s),
            StringOr::Map(m) => SiteTlsFile::Map(m),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SiteTlsMapFile {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    #[serde(default)]
    pub acme: bool,
    pub fallback: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertKeyFile {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `hsts: true` or `hsts: { max_age: ..., include_subdomains: ..., preload: ... }`.
#[derive(Debug)]
pub(crate) enum HstsFile {
    Enabled(bool),
    Custom(HstsOptionsFile),
}

impl<'de> Deserialize<'de> for HstsFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HstsFile;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "`true`, `false`, or a map with `max_age`, `include_subdomains`, `preload`",
                )
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<HstsFile, E> {
                Ok(HstsFile::Enabled(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<HstsFile, A::Error> {
                HstsOptionsFile::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(HstsFile::Custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HstsOptionsFile {
    #[serde(deserialize_with = "de_duration")]
    pub max_age: Option<Duration>,
    pub include_subdomains: bool,
    pub preload: bool,
}

/// `origin: http://host:port` or the full map.
#[derive(Debug)]
pub(crate) struct OriginFile(pub OriginMapFile);

impl<'de> Deserialize<'de> for OriginFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_or_map(
            d,
            "a URL such as `http://127.0.0.1:3000`, or a map with `url`",
        )
        .map(|v| {
            OriginFile(match v {
                StringOr::String(url) => OriginMapFile {
                    url: Some(url),
                    ..OriginMapFile::default()
                },
                StringOr::Map(m) => m,
            })
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OriginMapFile {
    pub url: Option<String>,
    pub servers: Option<Vec<ServerFile>>,
    pub mode: Option<ModeFile>,
    pub ca: Option<PathBuf>,
    pub server_name: Option<String>,
    pub client_cert: Option<CertKeyFile>,
    #[serde(default)]
    pub timeouts: OriginTimeoutsFile,
    pub verify_failure_status: Option<u16>,
    pub balance: Option<BalanceFile>,
    pub hash: Option<HashFile>,
    #[serde(default)]
    pub health: HealthFile,
    pub retries: Option<RetriesFile>,
    pub proxy_protocol: Option<String>,
    #[serde(default)]
    pub h2c: bool,
    pub max_connections: Option<u32>,
}

/// One of an origin's `servers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerFile {
    pub url: String,
    pub weight: Option<u32>,
}

/// `balance: round_robin` (a keyword) or `balance: { sticky: { cookie: NAME, ... } }`.
#[derive(Debug)]
pub(crate) enum BalanceFile {
    Keyword(BalanceKeyword),
    Map(BalanceMapFile),
}

impl<'de> Deserialize<'de> for BalanceFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_or_map(
            d,
            "`round_robin`, `least_requests`, `random_two`, `hash`, or `{ sticky: { cookie: NAME } }`",
        )
        .and_then(|v| match v {
            StringOr::String(s) => BalanceKeyword::deserialize(
                de::value::StrDeserializer::<D::Error>::new(&s),
            )
            .map(BalanceFile::Keyword),
            StringOr::Map(m) => Ok(BalanceFile::Map(m)),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BalanceKeyword {
    RoundRobin,
    LeastRequests,
    RandomTwo,
    Hash,
}

/// `balance: { sticky: { ... } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BalanceMapFile {
    pub sticky: StickyFile,
}

/// `sticky: { cookie: NAME, max_age: 1h, path: /, secure: true, same_site: lax }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StickyFile {
    pub cookie: String,
    #[serde(default, deserialize_with = "de_duration")]
    pub max_age: Option<Duration>,
    pub path: Option<String>,
    pub secure: Option<bool>,
    pub same_site: Option<SameSiteFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SameSiteFile {
    Lax,
    Strict,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HashKeyFile {
    Header,
    Cookie,
    ClientIp,
}

/// `hash: { key: header, name: X-User }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HashFile {
    pub key: HashKeyFile,
    pub name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HealthFile {
    pub active: Option<ActiveHealthFile>,
    pub passive: Option<PassiveHealthFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ActiveHealthFile {
    pub path: Option<String>,
    #[serde(deserialize_with = "de_duration")]
    pub interval: Option<Duration>,
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Option<Duration>,
    pub expect: Option<CodeOrText>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

/// `passive: off`, or the map.
#[derive(Debug)]
pub(crate) enum PassiveHealthFile {
    Keyword(String),
    Map(PassiveHealthMapFile),
}

impl<'de> Deserialize<'de> for PassiveHealthFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_or_map(d, "`off`, or a map with `failures`, `window`, `eject`").map(|v| match v {
            StringOr::String(s) => PassiveHealthFile::Keyword(s),
            StringOr::Map(m) => PassiveHealthFile::Map(m),
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct PassiveHealthMapFile {
    pub failures: Option<u32>,
    #[serde(deserialize_with = "de_duration")]
    pub window: Option<Duration>,
    #[serde(deserialize_with = "de_duration")]
    pub eject: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RetriesFile {
    pub attempts: Option<u32>,
    pub on: Option<Vec<CodeOrText>>,
    pub budget: Option<NumberOrText>,
}

/// A status code or a word (`502`, `connect`, `200-399`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum CodeOrText {
    Code(u16),
    Text(String),
}

/// `20%` or `0.2`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum NumberOrText {
    Number(f64),
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ModeFile {
    Flexible,
    Full,
    Strict,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct OriginTimeoutsFile {
    #[serde(deserialize_with = "de_duration")]
    pub connect: Option<Duration>,
    #[serde(deserialize_with = "de_duration")]
    pub response_header: Option<Duration>,
    #[serde(deserialize_with = "de_duration")]
    pub idle: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RespondFile {
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteFile {
    pub path: String,
    #[serde(rename = "match")]
    pub path_match: Option<PathMatchFile>,
    #[serde(default)]
    pub strip_prefix: bool,
    pub rewrite: Option<String>,
    pub origin: Option<OriginFile>,
    pub respond: Option<RespondFile>,
    pub redirect: Option<RedirectFile>,
    pub upgrades: Option<Vec<String>>,
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    pub plain_http: Option<PlainHttpFile>,
    #[serde(default, deserialize_with = "de_size")]
    pub max_body_size: Option<u64>,
}

enum StringOr<T> {
    String(String),
    Map(T),
}

/// Accepts either a plain string or a map deserialised as `T`, keeping `T`'s own error
/// messages (and key paths) for the map form.
fn string_or_map<'de, D, T>(d: D, expecting: &'static str) -> Result<StringOr<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    struct V<T>(&'static str, PhantomData<T>);
    impl<'de, T: DeserializeOwned> Visitor<'de> for V<T> {
        type Value = StringOr<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(StringOr::String(v.to_owned()))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            T::deserialize(de::value::MapAccessDeserializer::new(map)).map(StringOr::Map)
        }
    }
    d.deserialize_any(V(expecting, PhantomData))
}

/// `cluster:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ClusterFile {
    pub store: Option<ClusterStoreFile>,
    pub etcd: Option<EtcdFile>,
    pub kubernetes: Option<KubernetesStoreFile>,
    pub node_name: Option<String>,
    #[serde(deserialize_with = "de_duration")]
    pub lease: Option<Duration>,
    #[serde(deserialize_with = "de_duration")]
    pub challenge_timeout: Option<Duration>,
    pub encryption_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ClusterStoreFile {
    Etcd,
    Kubernetes,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct EtcdFile {
    pub endpoints: Vec<String>,
    pub prefix: Option<String>,
    pub tls: Option<EtcdTlsFile>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct EtcdTlsFile {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct KubernetesStoreFile {
    pub namespace: Option<String>,
    pub kubeconfig: Option<PathBuf>,
}
