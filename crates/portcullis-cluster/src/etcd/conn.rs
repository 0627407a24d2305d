//! The connection to the members: made on first use (so a replica starts while etcd is
//! down), every call bounded in time and retried while etcd is unreachable, and etcd's
//! errors sorted into [`StoreError`]s.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::store::StoreError;

/// Longest a TCP (and TLS) connection to one member may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest one operation takes, retries included, before it is `Unavailable`.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest one attempt waits for its answer on one connection: shorter than
/// [`REQUEST_TIMEOUT`] so that a call sent on a connection that went silent is tried
/// again (on another member, when there is one) within the operation's time.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(2500);
/// HTTP/2 pings while a stream (watch, keep-alive) is open. etcd answers pings sent more
/// often than every 5 s (`--grpc-keepalive-min-time`) with GOAWAY, so no faster; watches
/// notice silence sooner with progress requests of their own (`watch.rs`).
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read: a page of a listing (`LIST_PAGE` keys) or a watch batch.
pub(super) const MAX_MESSAGE: usize = 64 << 20;

/// The client, made once on first use.
pub(super) struct Conn {
    endpoints: Vec<String>,
    settings: portcullis_config::EtcdStore,
    client: Mutex<Option<Client>>,
}

impl Conn {
    pub(super) fn new(settings: &portcullis_config::EtcdStore) -> Result<Self, StoreError> {
        if settings.endpoints.is_empty() {
            return Err(StoreError::Refused("no etcd endpoint configured".into()));
        }
        let https = settings
            .endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        if https != 0 && https != settings.endpoints.len() {
            // etcd-client applies one TLS setting to every member.
            return Err(StoreError::Refused(
                "etcd endpoints mix http:// and https://; use one scheme for all members".into(),
            ));
        }
        Ok(Self {
            endpoints: settings.endpoints.clone(),
            settings: settings.clone(),
            client: Mutex::new(None),
        })
    }

    /// The client, made now if it was not yet. With a username, making it authenticates,
    /// so it needs a member to answer; without, it is only a description of the members
    /// and each call connects as needed (and again after a failure).
    async fn client(&self) -> Result<Client, StoreError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = &*slot {
            return Ok(client.clone());
        }
        let options = self.options().await?;
        let client = Client::connect(&self.endpoints, Some(options))
            .await
            .map_err(map_err)?;
        *slot = Some(client.clone());
        Ok(client)
    }

    async fn options(&self) -> Result<ConnectOptions, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(ATTEMPT_TIMEOUT)
            .with_keep_alive(PING_INTERVAL, PING_TIMEOUT)
            .with_keep_alive_while_idle(false)
            // A member cut off from the others fails calls and cancels watches at once
            // instead of serving stale reads.
            .with_require_leader(true);
        if let (Some(user), Some(password)) = (&self.settings.username, &self.settings.password) {
            options = options
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        if self.endpoints.iter().any(|e| e.starts_with("https://")) {
            options = options.with_tls(self.tls().await?);
        }
        Ok(options)
    }

    /// Read when the client is made, so a fixed file is taken at the next start.
    async fn tls(&self) -> Result<etcd_client::TlsOptions, StoreError> {
        async fn read(path: &std::path::Path) -> Result<Vec<u8>, StoreError> {
            tokio::fs::read(path)
                .await
                .map_err(|e| StoreError::Refused(format!("reading {}: {e}", path.display())))
        }
        let mut tls = etcd_client::TlsOptions::new();
        let files = self.settings.tls.as_ref();
        match files.and_then(|t| t.ca.as_deref()) {
            Some(ca) => {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca).await?));
            }
            None => tls = tls.with_native_roots(),
        }
        if let Some((cert, key)) = files.and_then(|t| t.cert.as_deref().zip(t.key.as_deref())) {
            tls = tls.identity(etcd_client::Identity::from_pem(
                read(cert).await?,
                read(key).await?,
            ));
        }
        Ok(tls)
    }

    /// Runs `call` with the client until it succeeds, fails for good, or
    /// [`REQUEST_TIMEOUT`] has passed; `Unavailable` errors are tried again meanwhile.
    pub(super) async fn run<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.run_for(REQUEST_TIMEOUT, call).await
    }

    /// [`Self::run`] within `limit`.
    pub(super) async fn run_for<T, F, Fut>(
        &self,
        limit: Duration,
        mut call: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + limit;
        let mut pause = Duration::from_millis(50);
        let mut last = String::from("no answer");
        loop {
            let attempt = async {
                let client = self.client().await?;
                call(client).await.map_err(map_err)
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(StoreError::Unavailable(why))) => last = why,
                Ok(Err(e)) => return Err(e),
                Err(_) => break,
            }
            if Instant::now() + pause >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
        Err(StoreError::Unavailable(format!(
            "etcd ({}) did not answer within {limit:?}: {last}",
            self.endpoints.join(", ")
        )))
    }
}

/// What an etcd error means to the caller: `Refused` for what trying again cannot fix,
/// `Compacted` for history that is gone, `Unavailable` for the rest.
pub(super) fn map_err(e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::GRpcStatus(status) => {
            let message = status.message();
            match status.code() {
                Code::OutOfRange if message.contains("compacted") => StoreError::Compacted(0),
                // A request over gRPC's limit (etcd 3.4: `--max-request-bytes` + 512 KiB).
                Code::ResourceExhausted if message.contains("larger than max") => {
                    StoreError::Refused(message.to_owned())
                }
                Code::InvalidArgument
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::NotFound
                | Code::AlreadyExists
                | Code::Unimplemented => StoreError::Refused(message.to_owned()),
                code => StoreError::Unavailable(format!("{code:?}: {message}")),
            }
        }
        E::LeaseKeepAliveError(m) if m.contains("lease not found") => StoreError::Refused(m),
        E::InvalidArgs(m) => StoreError::Refused(m),
        E::InvalidUri(e) => StoreError::Refused(e.to_string()),
        E::InvalidMetadataValue(e) => StoreError::Refused(e.to_string()),
        e => StoreError::Unavailable(e.to_string()),
    }
}

/// Whether etcd refused a write because the lease it names is gone.
pub(super) fn is_lease_gone(e: &StoreError) -> bool {
    matches!(e, StoreError::Refused(m) if m.contains("lease not found"))
}
