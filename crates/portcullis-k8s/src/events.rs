//! Kubernetes Events: a Warning on the object for each problem translation finds, and a
//! Normal one when an ACME certificate is stored in a Secret.
//!
//! Core `v1` Events (not `events.k8s.io/v1`): `kubectl describe` shows both, and the core
//! kind's `count`/`lastTimestamp` are what series of repeats are made of. RBAC: `create`
//! and `patch` on `events` in the core group.
//!
//! Repeats are folded as client-go's correlator folds them: the same object, type, reason
//! and message again patches the existing Event's `count` and `lastTimestamp` instead of
//! creating another, and not more often than once per
//! [`min_interval`](Recorder::with_min_interval) (translation runs on every change; the
//! same problem is not news each time).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

use crate::leader::is_status;
use crate::snapshot::Snapshot;
use crate::translate::K8sProblem;

/// The reporting component named in our Events.
pub const COMPONENT: &str = "portcullis-ingress";
/// Reason of a problem found in an Ingress (or a Service or class it names).
pub const REASON_TRANSLATION: &str = "TranslationProblem";
/// Reason of a problem found in a Secret (not TLS, no key, a key that does not match).
pub const REASON_SECRET_INVALID: &str = "SecretInvalid";
/// Reason of the Event on a Secret an ACME certificate was stored in.
pub const REASON_CERTIFICATE_ISSUED: &str = "CertificateIssued";
/// Reason of the Event on a Secret an ACME certificate could not be stored in (managed by
/// cert-manager, or holding someone else's certificate).
pub const REASON_SECRET_NOT_OURS: &str = "SecretNotManaged";

/// Most repeats kept in memory for folding; past it the oldest are forgotten (a repeat of
/// a forgotten one creates a new Event).
const MAX_TRACKED: usize = 4096;
/// The API server refuses longer messages (events.k8s.io's `note` limit; kept for core
/// Events too).
const MAX_MESSAGE: usize = 1024;

/// `Normal` or `Warning`, the two Event types Kubernetes knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something went as it should.
    Normal,
    /// Something a user should look at.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    kind: String,
    namespace: String,
    name: String,
    event_type: EventType,
    reason: String,
    message: String,
}

struct Series {
    /// The Event's namespace and name.
    namespace: String,
    name: String,
    count: i32,
    posted: Instant,
    /// Repeats seen since the last post, not yet counted in the API.
    pending: i32,
}

/// Posts Events while this replica leads.
pub struct Recorder {
    client: Client,
    instance: String,
    leader: watch::Receiver<bool>,
    min_interval: Duration,
    series: Mutex<HashMap<SeriesKey, Series>>,
}

impl Recorder {
    /// A recorder reporting as `instance` (the pod name), acting only while `leader` is
    /// `true`. Repeats are posted at most once a minute.
    pub fn new(client: Client, instance: impl Into<String>, leader: watch::Receiver<bool>) -> Self {
        Self {
            client,
            instance: instance.into(),
            leader,
            min_interval: Duration::from_secs(60),
            series: Mutex::new(HashMap::new()),
        }
    }

    /// Posts a repeat of the same Event at most once per `interval`.
    pub fn with_min_interval(mut self, interval: Duration) -> Self {
        self.min_interval = interval;
        self
    }

    /// A Warning per problem, on the object it names (its uid and resourceVersion taken
    /// from `snapshot` when it is there). Problems about the controller's own flags have
    /// no object and are only logged by the caller. Failures are logged and skipped.
    pub async fn problems(&self, problems: &[K8sProblem], snapshot: &Snapshot) {
        for p in problems {
            let Some(object) = reference(p, snapshot) else {
                continue;
            };
            let reason = if p.kind == "secret" {
                REASON_SECRET_INVALID
            } else {
                REASON_TRANSLATION
            };
            if let Err(e) = self
                .publish(&object, EventType::Warning, reason, &p.problem.to_string())
                .await
            {
                debug!(error = %e, problem = %p, "cannot post an Event");
            }
        }
    }

    /// Posts one Event on `object` (its `namespace`, `name`, `kind` and `apiVersion` set;
    /// `uid`/`resourceVersion` when known), or folds it into the same one posted before.
    /// Returns whether anything was sent; `Ok(false)` when not leading or within the
    /// interval.
    pub async fn publish(
        &self,
        object: &ObjectReference,
        event_type: EventType,
        reason: &str,
        message: &str,
    ) -> Result<bool, kube::Error> {
        if !*self.leader.borrow() {
            return Ok(false);
        }
        let message = truncate(message, MAX_MESSAGE);
        // Events of cluster-scoped objects live in `default`, as kubectl looks for them.
        let namespace = object
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        let key = SeriesKey {
            kind: object.kind.clone().unwrap_or_default(),
            namespace: namespace.clone(),
            name: object.name.clone().unwrap_or_default(),
            event_type,
            reason: reason.to_owned(),
            message: message.to_owned(),
        };
        let now = Instant::now();
        let repeat = {
            let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
            match series.get_mut(&key) {
                Some(s) if now.duration_since(s.posted) < self.min_interval => {
                    s.pending += 1;
                    return Ok(false);
                }
                Some(s) => Some((s.namespace.clone(), s.name.clone(), s.count + s.pending + 1)),
                None => None,
            }
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let stamp = Time(Timestamp::now());
        if let Some((ns, name, count)) = repeat {
            let patch = json!({ "count": count, "lastTimestamp": stamp });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.remember(key, ns, name, count, now);
                    return Ok(true);
                }
                // Events expire (an hour by default): start a new one.
                Err(e) if is_status(&e, 404) => {}
                Err(e) => return Err(e),
            }
        }
        let event = Event {
            metadata: ObjectMeta {
                generate_name: None,
                name: Some(event_name(object.name.as_deref().unwrap_or("object"))),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: object.clone(),
            type_: Some(event_type.as_str().to_owned()),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            count: Some(1),
            first_timestamp: Some(stamp.clone()),
            last_timestamp: Some(stamp),
            source: Some(EventSource {
                component: Some(COMPONENT.to_owned()),
                host: None,
            }),
            reporting_component: Some(COMPONENT.to_owned()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        let created = api.create(&PostParams::default(), &event).await?;
        let name = created.metadata.name.unwrap_or_default();
        self.remember(key, namespace, name, 1, now);
        Ok(true)
    }

    fn remember(&self, key: SeriesKey, namespace: String, name: String, count: i32, now: Instant) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if series.len() >= MAX_TRACKED && !series.contains_key(&key) {
            let oldest = series
                .iter()
                .min_by_key(|(_, s)| s.posted)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                series.remove(&k);
            }
        }
        series.insert(
            key,
            Series {
                namespace,
                name,
                count,
                posted: now,
                pending: 0,
            },
        );
    }
}

/// The object a problem names, as an Event's `involvedObject`.
fn reference(p: &K8sProblem, snapshot: &Snapshot) -> Option<ObjectReference> {
    let (kind, api_version, meta) = match p.kind {
        "ingress" => (
            "Ingress",
            "networking.k8s.io/v1",
            find(snapshot.ingresses.iter().map(|o| &o.metadata), p),
        ),
        "service" => (
            "Service",
            "v1",
            find(snapshot.services.iter().map(|o| &o.metadata), p),
        ),
        "secret" => (
            "Secret",
            "v1",
            find(snapshot.secrets.iter().map(|o| &o.metadata), p),
        ),
        "ingressclass" => (
            "IngressClass",
            "networking.k8s.io/v1",
            find(snapshot.ingress_classes.iter().map(|o| &o.metadata), p),
        ),
        _ => return None,
    };
    Some(ObjectReference {
        kind: Some(kind.to_owned()),
        api_version: Some(api_version.to_owned()),
        namespace: Some(p.object.namespace.clone()).filter(|n| !n.is_empty()),
        name: Some(p.object.name.clone()),
        uid: meta.and_then(|m| m.uid.clone()),
        resource_version: meta.and_then(|m| m.resource_version.clone()),
        ..ObjectReference::default()
    })
}

fn find<'a>(
    mut metas: impl Iterator<Item = &'a ObjectMeta>,
    p: &K8sProblem,
) -> Option<&'a ObjectMeta> {
    metas.find(|m| {
        m.name.as_deref() == Some(p.object.name.as_str())
            && m.namespace.as_deref().unwrap_or("") == p.object.namespace
    })
}

/// `<object>.<hex nanoseconds>`, as client-go names Events (unique enough; a clash is a
/// 409 and the Event is simply not posted).
fn event_name(object: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let base: String = object.chars().take(200).collect();
    format!("{base}.{nanos:x}")
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let s = "é".repeat(600);
        let t = truncate(&s, MAX_MESSAGE);
        assert!(t.len() <= MAX_MESSAGE && t.len() >= MAX_MESSAGE - 1);
        assert_eq!(truncate("short", MAX_MESSAGE), "short");
    }

    #[test]
    fn event_names_start_with_the_object() {
        let n = event_name("shop");
        assert!(n.starts_with("shop."), "{n}");
        assert!(n.len() > 6);
    }
}
