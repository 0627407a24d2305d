//! A fake Kubernetes API server, faithful where the controller and `kubectl` look: the real
//! REST paths and JSON (k8s-openapi's types), over HTTPS on 127.0.0.1:0 with a bearer token.
//!
//! No kube-apiserver can run on these machines, so this is what every Kubernetes test
//! talks to; `tests/e2e/kubernetes/kubectl.rs` holds it to the real `kubectl` (v1.32 by
//! name, and the version Google Cloud SDK's `kubectl` dispatcher picks for the fake's
//! `/version`, 1.33), `tests/e2e/kubernetes/fake_api.rs` to kube-rs.
//!
//! Tests set up objects through the typed helpers ([`FakeApiServer::create`], `get`,
//! `list`, ...), which go to the store in process (thousands per second) with the same
//! checks as the HTTP side, and point the code under test at [`FakeApiServer::url`] /
//! [`FakeApiServer::write_kubeconfig`] / [`FakeApiServer::client`].
//!
//! # Faithful
//! - One global, monotonically increasing `resourceVersion` (a string of digits); per object
//!   `uid`, `creationTimestamp`, `generation` (1 at create, bumped when anything but
//!   `metadata`/`status` changes). A write that changes nothing gets no new RV and no event.
//! - Paths: `/api/v1[/namespaces/{ns}]/{res}[/{name}[/status]]`, `/apis/{g}/{v}/...` the same;
//!   all-namespace lists and watches; cluster-scoped kinds. Unknown paths: 404 Status.
//!   Served resources (table in `kube_api/kinds.rs`): core namespaces, services, endpoints,
//!   secrets, configmaps, events, serviceaccounts, pods; endpointslices; ingresses,
//!   ingressclasses; leases; events.k8s.io events; deployments; poddisruptionbudgets;
//!   RBAC roles, bindings, cluster roles and cluster role bindings.
//! - LIST: `resourceVersion` unset (most recent), `"0"` (any: the newest here),
//!   `resourceVersionMatch=NotOlderThan|Exact` (Exact rebuilds the state at that RV from
//!   history; 410 Expired once compacted; a future RV gets 504 "Too large resource
//!   version"), `limit`/`continue` pages that are one consistent snapshot (410 once the
//!   snapshot's history is compacted), `remainingItemCount`, label selectors (`=`, `==`,
//!   `!=`, `in`, `notin`, `key`, `!key`, `>`, `<`) and field selectors (`metadata.name`,
//!   `metadata.namespace` and each kind's own, e.g. a Secret's `type`; others are refused
//!   as the real server refuses them). Items come without `kind`/`apiVersion`, as in real
//!   JSON lists; the list's RV is the global RV.
//! - WATCH: from a `resourceVersion`, history after it in order, then live events; from
//!   unset/`"0"`, ADDED for every object first; `sendInitialEvents=true` (needs
//!   `resourceVersionMatch=NotOlderThan` and bookmarks) ends the initial events with a
//!   BOOKMARK annotated `k8s.io/initial-events-end: "true"`; `allowWatchBookmarks` gives a
//!   BOOKMARK every [`FakeApiOptions::bookmark_interval`] and one when `timeoutSeconds`
//!   ends the stream; selectors apply to the object before and after each change (an
//!   object that stops matching arrives as DELETED); a compacted RV gets one ERROR event
//!   with a 410 Expired Status, then the stream ends — also for an open watch whose pending
//!   history is trimmed.
//! - Writes: POST 409 AlreadyExists, `generateName`, names checked as DNS-1123 (422
//!   Invalid), a `resourceVersion` in a POST 500 (as etcd3's store refuses it), a `uid` in a
//!   PUT that is not the object's 409, a change of an immutable field 422 (a Secret's
//!   `type`, an EndpointSlice's `addressType`, a Service's cluster IP, a Deployment's
//!   selector, an `immutable` Secret's or ConfigMap's data), `kind`/`apiVersion`/namespace contradicting the path 400, a namespaced
//!   object in a missing namespace 404 (`default`, `kube-system`, `kube-public`,
//!   `kube-node-lease` exist from the start). PUT with a stale RV 409 Conflict, without
//!   RV unconditional (422 for Leases, which refuse it as the real strategy does); writes
//!   to the object keep the stored status and `/status` writes change only the status.
//!   DELETE answers the object and emits DELETED at a new RV; preconditions (RV, uid) 409;
//!   `metadata.finalizers` keep an object (with `deletionTimestamp`) until they are
//!   removed. A deleted namespace is `Terminating` (new objects in it 403) for
//!   [`FakeApiOptions::namespace_deletion_delay`], then its objects and itself are
//!   deleted. DELETE on a collection.
//! - Defaults the real server fills in and clients read: a Service's `type`, cluster IP,
//!   `targetPort`, port `protocol`; a Secret's `type` and `stringData` merged into `data`;
//!   a Namespace's `kubernetes.io/metadata.name` label and `Active` phase; EndpointSlice
//!   port `protocol`.
//! - Errors are `kind: Status` objects with the real code and reason; 401 without the
//!   bearer token; discovery (`/version`, `/api`, `/api/v1`, `/apis`, `/apis/{g}[/{v}]`)
//!   in the legacy form kubectl falls back to; `/healthz`, `/livez`, `/readyz` answer `ok`.
//!
//! # Not faithful (on purpose, documented)
//! - PATCH: `merge-patch+json` is RFC 7386; `strategic-merge-patch+json` is the part
//!   client-side `kubectl apply` needs (lists merged by their Kubernetes merge keys for the
//!   common fields, `$patch`, `$deleteFromPrimitiveList`; `$setElementOrder` ignored: see
//!   `kube_api/patch.rs`); `json-patch+json` is RFC 6902 (a failing operation 422);
//!   `apply-patch+yaml` (server-side apply) gets 415.
//! - Protobuf request bodies (which kubectl's typed commands such as `kubectl create secret`
//!   send) are decoded for Secret, ConfigMap and Namespace only; answers are always JSON.
//! - No admission, no OpenAPI (`/openapi/*` 404: use `kubectl --validate=false`), no
//!   `dryRun`, no field managers, no aggregated discovery, no Table output (plain `kubectl
//!   get` prints only NAME and AGE), no garbage collection of owned objects,
//!   no graceful pod deletion; `generation` is kept for every kind; validation is only what
//!   is listed above. `resourceVersion=0` lists honour `limit` (the real watch cache may
//!   not; the documentation allows both). Every path needs the token (even `/version`).
//! - [`FakeApiServer::calls`] records resource requests (as RBAC sees them) that got past
//!   authentication, including those answered with an injected failure; discovery and
//!   the in-process helpers are not recorded.

mod discovery;
mod kinds;
mod list;
mod object;
mod patch;
mod protobuf;
mod selector;
mod server;
mod shared;
mod status;
mod store;
#[cfg(test)]
mod tests;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use status::ApiError;

use crate::ca::TestCa;
use kinds::KINDS;
use shared::{Control, Shared};
use store::{Preconditions, Store};

/// One request the server answered, as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiCall {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub verb: String,
    /// API group; "" for the core group.
    pub group: String,
    /// Plural resource name (`ingresses`).
    pub resource: String,
    /// `status` for writes and reads of `/status`.
    pub subresource: Option<String>,
    /// The path's namespace (none for cluster-scoped and all-namespace requests; for a
    /// request on one Namespace, its name, as RBAC's request info has it).
    pub namespace: Option<String>,
    /// The object's name, for requests on one object.
    pub name: Option<String>,
    /// The client's `User-Agent`.
    pub user_agent: Option<String>,
}

/// Knobs of [`FakeApiServer::start_with`].
#[derive(Debug, Clone)]
pub struct FakeApiOptions {
    /// How often an idle watch with `allowWatchBookmarks=true` gets a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Changes kept per resource for watches and `Exact` lists; older ones are dropped as
    /// etcd compaction drops them (unbounded by default; see also
    /// [`FakeApiServer::compact`]).
    pub history_limit: Option<usize>,
    /// How long a deleted namespace stays `Terminating` (refusing new objects) before its
    /// objects and itself are deleted; zero deletes them at once.
    pub namespace_deletion_delay: Duration,
}

impl Default for FakeApiOptions {
    fn default() -> Self {
        Self {
            bookmark_interval: Duration::from_secs(2),
            history_limit: None,
            namespace_deletion_delay: Duration::from_millis(200),
        }
    }
}

/// A running fake API server; stops (closing every connection) when dropped.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: std::net::SocketAddr,
    ca_pem: String,
    task: JoinHandle<()>,
    _shutdown: tokio::sync::watch::Sender<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The index in the kinds table of a k8s-openapi type.
fn kind_of<K: Resource>() -> usize {
    kinds::find(K::GROUP, K::VERSION, K::URL_PATH_SEGMENT).unwrap_or_else(|| {
        panic!(
            "the fake API server does not serve {} ({}): add it to kube_api/kinds.rs",
            K::KIND,
            K::API_VERSION
        )
    })
}

/// The store's key for `ns`/`name` of resource `k` (cluster-scoped kinds ignore `ns`).
fn key_ns<K: Resource>(k: usize, ns: &str) -> String {
    if KINDS[k].namespaced {
        assert!(
            !ns.is_empty(),
            "{} is namespaced: pass its namespace",
            K::KIND
        );
        ns.to_owned()
    } else {
        String::new()
    }
}

fn to_json<K: Serialize>(obj: &K) -> Value {
    serde_json::to_value(obj).expect("a k8s-openapi object serializes")
}

fn from_json<K: Resource + DeserializeOwned>(v: Value) -> K {
    serde_json::from_value(v)
        .unwrap_or_else(|e| panic!("the stored {} does not parse back: {e}", K::KIND))
}

fn name_of(obj: &Value) -> (String, String) {
    store::key_of(obj)
}

impl FakeApiServer {
    /// Starts with default options.
    pub async fn start() -> Self {
        Self::start_with(FakeApiOptions::default()).await
    }

    /// Starts with `options`.
    pub async fn start_with(options: FakeApiOptions) -> Self {
        crate::init();
        let ca = TestCa::new("fake kube-apiserver CA");
        let leaf = ca.leaf(&["127.0.0.1", "localhost"]);
        let mut tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.cert_der.clone()], leaf.key_der.clone_key())
            .unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let (shutdown_tx, shutdown) = tokio::sync::watch::channel(());
        let shared = Arc::new(Shared {
            store: Store::new(options.history_limit),
            control: tokio::sync::watch::channel(Control::default()).0,
            options,
            token: format!("fake-token-{nanos:x}"),
            calls: Mutex::new(Vec::new()),
            fail: Mutex::new((0, 500)),
            open_watches: 0.into(),
            address: addr.to_string(),
            shutdown,
        });
        let task = tokio::spawn(server::accept_loop(listener, Arc::new(tls), shared.clone()));
        Self {
            shared,
            addr,
            ca_pem: ca.root_pem.clone(),
            task,
            _shutdown: shutdown_tx,
        }
    }

    /// Whether the fake serves objects of `api_version` (`networking.k8s.io/v1`) and `kind`
    /// (`Ingress`): a test skips manifests it cannot hold.
    pub fn serves(api_version: &str, kind: &str) -> bool {
        KINDS
            .iter()
            .any(|k| k.api_version() == api_version && k.kind == kind)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Where it listens.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The CA certificate (PEM) that signed the server's certificate.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// The bearer token every request must carry.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// A kubeconfig (YAML) with the server, its CA and the token, as context `fake`
    /// (namespace `default`).
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: fake\n  user:\n    token: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\n",
            self.url(),
            object::base64(self.ca_pem.as_bytes()),
            self.token()
        )
    }

    /// Writes [`Self::kubeconfig_yaml`] to `dir/kubeconfig` and returns its path: for
    /// `kubectl --kubeconfig`, `KUBECONFIG`, or kube's `Config::from_custom_kubeconfig`.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, self.kubeconfig_yaml()).unwrap();
        path
    }

    /// The kube client configuration for this server, read from the same kubeconfig. Note
    /// kube's `default_retry` (on by default): the client itself retries 429, 503 and 504,
    /// honouring `Retry-After`; turn it off to see those answers.
    pub async fn config(&self) -> kube::Config {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&self.kubeconfig_yaml()).unwrap();
        kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap()
    }

    /// A kube client for this server ([`Self::config`]).
    pub async fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config().await).unwrap()
    }

    /// Creates `obj` in the store (no HTTP), as a POST would, with the same checks and
    /// server-set fields; a namespaced object without a namespace goes to `default`.
    /// Panics on an API error.
    pub fn create<K: Resource + Serialize + DeserializeOwned>(&self, obj: &K) -> K {
        self.try_create(obj)
            .unwrap_or_else(|e| panic!("creating a {}: {e}", K::KIND))
    }

    /// [`Self::create`], returning the API error instead of panicking.
    pub fn try_create<K: Resource + Serialize + DeserializeOwned>(
        &self,
        obj: &K,
    ) -> Result<K, ApiError> {
        let k = kind_of::<K>();
        let v = to_json(obj);
        let ns = KINDS[k]
            .namespaced
            .then(|| name_of(&v).0)
            .filter(|n| !n.is_empty());
        self.shared.store.create(k, ns.as_deref(), v).map(from_json)
    }

    /// Replaces `obj` (a PUT; its `resourceVersion`, if set, must be current); panics on
    /// an API error.
    pub fn replace<K: Resource + Serialize + DeserializeOwned>(&self, obj: &K) -> K {
        self.try_replace(obj)
            .unwrap_or_else(|e| panic!("replacing a {}: {e}", K::KIND))
    }

    /// [`Self::replace`], returning the API error instead of panicking.
    pub fn try_replace<K: Resource + Serialize + DeserializeOwned>(
        &self,
        obj: &K,
    ) -> Result<K, ApiError> {
        self.put(obj, false)
    }

    /// Replaces the status of `obj` (a PUT on `/status`); panics on an API error.
    pub fn replace_status<K: Resource + Serialize + DeserializeOwned>(&self, obj: &K) -> K {
        self.put(obj, true)
            .unwrap_or_else(|e| panic!("replacing the status of a {}: {e}", K::KIND))
    }

    fn put<K: Resource + Serialize + DeserializeOwned>(
        &self,
        obj: &K,
        status: bool,
    ) -> Result<K, ApiError> {
        let k = kind_of::<K>();
        let v = to_json(obj);
        let (ns, name) = name_of(&v);
        let ns = if KINDS[k].namespaced {
            ns
        } else {
            String::new()
        };
        self.shared
            .store
            .update(k, &ns, &name, v, status)
            .map(from_json)
    }

    /// Applies an RFC 7386 merge patch to `ns`/`name` (`ns` is ignored for cluster-scoped
    /// kinds); panics on an API error.
    pub fn patch_merge<K: Resource + Serialize + DeserializeOwned>(
        &self,
        ns: &str,
        name: &str,
        patch: Value,
    ) -> K {
        let k = kind_of::<K>();
        self.shared
            .store
            .patch(
                k,
                &key_ns::<K>(k, ns),
                name,
                &patch,
                false,
                store::PatchType::Merge,
            )
            .map(from_json)
            .unwrap_or_else(|e| panic!("patching {} {ns}/{name}: {e}", K::KIND))
    }

    /// Deletes `ns`/`name`: the object's last state, or `None` when there was none. An
    /// object with finalizers stays, marked with a `deletionTimestamp`; so does a namespace,
    /// for [`FakeApiOptions::namespace_deletion_delay`].
    pub fn delete<K: Resource + Serialize + DeserializeOwned>(
        &self,
        ns: &str,
        name: &str,
    ) -> Option<K> {
        let k = kind_of::<K>();
        match self
            .shared
            .store
            .delete(k, &key_ns::<K>(k, ns), name, &Preconditions::default())
        {
            Ok(v) => Some(from_json(v)),
            Err(e) if e.code == 404 => None,
            Err(e) => panic!("deleting {} {ns}/{name}: {e}", K::KIND),
        }
    }

    /// The object `ns`/`name`, if it exists.
    pub fn get<K: Resource + Serialize + DeserializeOwned>(
        &self,
        ns: &str,
        name: &str,
    ) -> Option<K> {
        let k = kind_of::<K>();
        self.shared
            .store
            .get(k, &key_ns::<K>(k, ns), name)
            .ok()
            .map(from_json)
    }

    /// Every object of `K` in `ns` ("" for all namespaces, and for cluster-scoped kinds),
    /// sorted by namespace and name.
    pub fn list<K: Resource + Serialize + DeserializeOwned>(&self, ns: &str) -> Vec<K> {
        let k = kind_of::<K>();
        let all_namespaces = ns.is_empty() || !KINDS[k].namespaced;
        // The objects are shared (`Arc`): copy them out, parse them outside the lock.
        let objects: Vec<Arc<Value>> = {
            let inner = self.shared.store.lock();
            let objects = &inner.collections[k].objects;
            if all_namespaces {
                objects.values().cloned().collect()
            } else {
                objects
                    .range((ns.to_owned(), String::new())..)
                    .take_while(|((n, _), _)| n == ns)
                    .map(|(_, obj)| obj.clone())
                    .collect()
            }
        };
        objects
            .iter()
            .map(|obj| from_json((**obj).clone()))
            .collect()
    }

    /// The newest resource version handed out.
    pub fn resource_version(&self) -> String {
        self.shared.store.lock().rv.to_string()
    }

    /// Every resource request answered so far (see the module docs for which).
    pub fn calls(&self) -> Vec<ApiCall> {
        self.shared.calls.lock().unwrap().clone()
    }

    /// Watches open now.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    /// Ends every open watch stream now (cleanly, as a server closing them would).
    pub fn drop_watches(&self) {
        self.shared.control.send_modify(|c| c.drop_generation += 1);
    }

    /// While `true`, open watches stay open but get no events and no bookmarks; when set
    /// back to `false` they catch up.
    pub fn stall_watches(&self, stalled: bool) {
        self.shared.control.send_modify(|c| c.stalled = stalled);
    }

    /// The next `n` requests (any path, once past the token check; watches included) are
    /// answered with `status`, as a Status object (429 with `Retry-After: 1`, 500
    /// InternalError, 503, 504, 403 with their reasons). Note that kube's default client
    /// retries 429, 503 and 504 itself ([`Self::config`]).
    pub fn fail_next(&self, n: usize, status: u16) {
        *self.shared.fail.lock().unwrap() = (n, status);
    }

    /// Forgets history up to now, as etcd compaction does: a watch from an older
    /// `resourceVersion` gets an ERROR event with a 410 Expired Status, an `Exact` list at
    /// one 410s (`NotOlderThan` is still fine), and so does a `continue` from before now.
    /// The resourceVersion first moves on by one (as a write to anything else would), so
    /// *every* version handed out so far is older: `compact()` then `drop_watches()` makes
    /// every watcher re-list, even one that had seen the newest change. Open watches go on.
    pub fn compact(&self) {
        self.shared.store.compact();
    }

    /// While `true`, connections are accepted and nothing is answered, as behind a network
    /// partition: new connections do not even finish the TLS handshake, requests on open
    /// connections hang, open watches get nothing. Set back to `false`, the partition heals:
    /// what is still waiting (and whose client has not given up) goes through.
    pub fn blackhole(&self, on: bool) {
        self.shared.control.send_modify(|c| c.blackhole = on);
    }
}
