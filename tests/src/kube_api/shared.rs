//! What the server, its connections, its watches and the test share: the store, the
//! faults the test has set, and the calls recorded.

use std::convert::Infallible;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use serde_json::Value;

use super::status::ApiError;
use super::store::{Preconditions, Store};
use super::{ApiCall, FakeApiOptions};

/// Body of every response.
pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// What the server, its connections and the test share.
pub(crate) struct Shared {
    pub store: Store,
    pub control: tokio::sync::watch::Sender<Control>,
    pub options: FakeApiOptions,
    pub token: String,
    pub calls: Mutex<Vec<ApiCall>>,
    /// Injected failures still to answer: `(count, status code)`.
    pub fail: Mutex<(usize, u16)>,
    pub open_watches: AtomicUsize,
    /// `host:port`, for `/api`'s `serverAddressByClientCIDRs`.
    pub address: String,
    /// Closed when the server is dropped: ends blackholed connections and watches.
    pub shutdown: tokio::sync::watch::Receiver<()>,
}

impl Shared {
    /// DELETE; a namespace is emptied and removed after
    /// [`FakeApiOptions::namespace_deletion_delay`], as the namespace controller would.
    pub fn delete(
        self: &Arc<Self>,
        k: usize,
        ns: &str,
        name: &str,
        pre: &Preconditions,
    ) -> Result<Value, ApiError> {
        let out = self.store.delete(k, ns, name, pre)?;
        if k == super::kinds::namespaces() && out.pointer("/metadata/deletionTimestamp").is_some() {
            let delay = self.options.namespace_deletion_delay;
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) if !delay.is_zero() => {
                    let shared = self.clone();
                    let name = name.to_owned();
                    runtime.spawn(async move {
                        tokio::time::sleep(delay).await;
                        shared.store.finalize_namespace(&name);
                    });
                }
                _ => self.store.finalize_namespace(name),
            }
        }
        Ok(out)
    }
}

/// What the test has done to watches: [`crate::FakeApiServer::drop_watches`],
/// `stall_watches`, `blackhole`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Control {
    pub drop_generation: u64,
    pub stalled: bool,
    pub blackhole: bool,
}

impl Control {
    pub fn quiet(&self) -> bool {
        self.stalled || self.blackhole
    }
}
