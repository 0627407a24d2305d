//! The HTTPS side: accepting connections (HTTP/1.1 and h2), the bearer token, the REST
//! paths, RBAC's view of each request, injected faults, and the handlers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::ApiCall;
use super::kinds::KINDS;
use super::list::{ListOpts, list};
use super::selector::Selector;
use super::shared::{Body, Shared};
use super::status::ApiError;
use super::store::{PatchType, Preconditions};
use super::watch::{self, Start, WatchOpts};

mod route;
use route::{Target, parse_query, resolve};

/// Accepts connections until aborted; aborting it closes every connection.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    shared: Arc<Shared>,
) {
    let mut tasks = JoinSet::new();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        while tasks.try_join_next().is_some() {}
        let shared = shared.clone();
        let tls = tls.clone();
        tasks.spawn(async move {
            // Blackholed: accepted, and not a byte back (not even the TLS handshake)
            // until the partition heals.
            if !healed(&shared).await {
                return;
            }
            let Ok(stream) = TlsAcceptor::from(tls).accept(tcp).await else {
                return;
            };
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    let body = serde_json::to_vec(v).expect("a JSON value serializes");
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("a response from valid parts")
}

fn error_response(e: &ApiError) -> Response<Body> {
    let mut resp = json_response(e.code, &e.to_status());
    if e.code == 429 {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// Waits while the server is blackholed, as packets wait out a network partition; false
/// when the server is dropped first.
async fn healed(shared: &Shared) -> bool {
    let mut control = shared.control.subscribe();
    let mut down = shared.shutdown.clone();
    loop {
        if !control.borrow_and_update().blackhole {
            return true;
        }
        tokio::select! {
            r = control.changed() => if r.is_err() { return false },
            _ = down.changed() => return false,
        }
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    if !healed(&shared).await {
        return error_response(&ApiError::injected(503));
    }
    let bearer = format!("Bearer {}", shared.token);
    if req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        != Some(bearer.as_bytes())
    {
        return error_response(&ApiError::unauthorized());
    }
    let path = req.uri().path().to_owned();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let watch = req.method() == Method::GET
        && matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let target = resolve(&segments, req.method(), watch);
    if let Ok(Some(t)) = &target {
        let kind = &KINDS[t.k];
        shared.calls.lock().unwrap().push(ApiCall {
            verb: t.verb.to_owned(),
            group: kind.group.to_owned(),
            resource: kind.plural.to_owned(),
            subresource: t.status.then(|| "status".to_owned()),
            // As RBAC's request info has it, a namespace's own path is in that namespace.
            namespace: t.ns.clone().or_else(|| {
                (t.k == super::kinds::namespaces())
                    .then(|| t.name.clone())
                    .flatten()
            }),
            name: t.name.clone(),
            user_agent: req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        });
    }
    {
        let mut fail = shared.fail.lock().unwrap();
        if fail.0 > 0 {
            fail.0 -= 1;
            return error_response(&ApiError::injected(fail.1));
        }
    }
    let target = match target {
        Ok(Some(t)) => t,
        Ok(None) if matches!(segments.as_slice(), ["healthz" | "livez" | "readyz"]) => {
            return Response::builder()
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(Full::new(Bytes::from_static(b"ok")).boxed())
                .expect("a response from valid parts");
        }
        Ok(None) => {
            return match (
                req.method(),
                super::discovery::document(&segments, &shared.address),
            ) {
                (&Method::GET, Some(doc)) => json_response(200, &doc),
                _ => error_response(&ApiError::no_route()),
            };
        }
        Err(e) => return error_response(&e),
    };
    match serve(&shared, target, &query, req).await {
        Ok(resp) => resp,
        Err(e) => error_response(&e),
    }
}

fn flag(query: &HashMap<String, String>, name: &str) -> Option<bool> {
    query.get(name).map(|v| v == "true" || v == "1")
}

async fn read_body(
    req: Request<Incoming>,
    kind: &super::kinds::Kind,
) -> Result<(Value, String), ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let bytes = req
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?
        .to_bytes();
    if bytes.is_empty() {
        return Ok((Value::Null, content_type));
    }
    let value = if content_type == "application/vnd.kubernetes.protobuf" {
        super::protobuf::decode(kind, &bytes)?
    } else if content_type.contains("yaml") && content_type != "application/apply-patch+yaml" {
        serde_yaml::from_slice(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))?
    } else if content_type.contains("json") || content_type.is_empty() {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })?
    } else {
        return Err(ApiError::unsupported_media_type(&content_type));
    };
    Ok((value, content_type))
}

async fn serve(
    shared: &Arc<Shared>,
    t: Target,
    query: &HashMap<String, String>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let kind = &KINDS[t.k];
    let ns = t.ns.clone().unwrap_or_default();
    let name = t.name.clone().unwrap_or_default();
    let mut field_selector = query.get("fieldSelector").cloned();
    if t.name.is_some() && t.verb == "watch" {
        let by_name = format!("metadata.name={name}");
        field_selector = Some(match field_selector {
            Some(f) if !f.is_empty() => format!("{f},{by_name}"),
            _ => by_name,
        });
    }
    let selector = || {
        Selector::parse(
            query.get("labelSelector").map(String::as_str),
            field_selector.as_deref(),
            kind.fields,
        )
        .map_err(ApiError::bad_request)
    };
    match t.verb {
        "get" => Ok(json_response(200, &shared.store.get(t.k, &ns, &name)?)),
        "list" => {
            let opts = ListOpts {
                selector: selector()?,
                resource_version: query.get("resourceVersion").cloned(),
                version_match: query.get("resourceVersionMatch").cloned(),
                limit: query.get("limit").and_then(|l| l.parse().ok()),
                continue_token: query.get("continue").cloned(),
            };
            let inner = shared.store.lock();
            let out = list(&inner, t.k, t.ns.as_deref(), &opts)?;
            drop(inner);
            Ok(json_response(200, &out))
        }
        "watch" => {
            let opts = watch_opts(shared, query, selector()?)?;
            let body = watch::stream(shared.clone(), t.k, t.ns.clone(), opts);
            Ok(Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(body)
                .expect("a response from valid parts"))
        }
        "create" => {
            let (body, _) = read_body(req, kind).await?;
            let out = shared.store.create(t.k, t.ns.as_deref(), body)?;
            Ok(json_response(201, &out))
        }
        "update" => {
            let (body, _) = read_body(req, kind).await?;
            let out = shared.store.update(t.k, &ns, &name, body, t.status)?;
            Ok(json_response(200, &out))
        }
        "patch" => {
            let (body, content_type) = read_body(req, kind).await?;
            let how = match content_type.as_str() {
                "application/merge-patch+json" => PatchType::Merge,
                "application/strategic-merge-patch+json" => PatchType::Strategic,
                "application/json-patch+json" => PatchType::Json,
                other => return Err(ApiError::unsupported_media_type(other)),
            };
            let out = shared.store.patch(t.k, &ns, &name, &body, t.status, how)?;
            Ok(json_response(200, &out))
        }
        "delete" => {
            let (body, _) = read_body(req, kind).await?;
            let pre = Preconditions {
                resource_version: body
                    .pointer("/preconditions/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                uid: body
                    .pointer("/preconditions/uid")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            };
            let out = shared.delete(t.k, &ns, &name, &pre)?;
            Ok(json_response(200, &out))
        }
        "deletecollection" => {
            let opts = ListOpts {
                selector: selector()?,
                ..ListOpts::default()
            };
            let listed = {
                let inner = shared.store.lock();
                list(&inner, t.k, t.ns.as_deref(), &opts)?
            };
            for item in listed["items"].as_array().into_iter().flatten() {
                let (ns, name) = super::store::key_of(item);
                // Gone already (a concurrent delete) is fine: the collection is emptied.
                let _ = shared
                    .store
                    .delete(t.k, &ns, &name, &Preconditions::default());
            }
            Ok(json_response(
                200,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn watch_opts(
    shared: &Shared,
    query: &HashMap<String, String>,
    selector: Selector,
) -> Result<WatchOpts, ApiError> {
    let rv = query
        .get("resourceVersion")
        .map(String::as_str)
        .filter(|s| !s.is_empty());
    let version_match = query
        .get("resourceVersionMatch")
        .map(String::as_str)
        .filter(|s| !s.is_empty());
    let bookmarks = flag(query, "allowWatchBookmarks").unwrap_or(false);
    let initial = flag(query, "sendInitialEvents");
    if initial == Some(true) && (version_match != Some("NotOlderThan") || !bookmarks) {
        return Err(ApiError::bad_request(
            "sendInitialEvents: Forbidden: sendInitialEvents requires resourceVersionMatch=NotOlderThan and allowWatchBookmarks=true",
        ));
    }
    if initial.is_none() && version_match.is_some() {
        return Err(ApiError::bad_request(
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        ));
    }
    let parsed = match rv {
        None => None,
        Some(r) => Some(r.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("resourceVersion: Invalid value: \"{r}\""))
        })?),
    };
    let current = shared.store.lock().rv;
    let start = match (initial, parsed) {
        (Some(true), _) => Start::Initial { end_marker: true },
        (None, None | Some(0)) => Start::Initial { end_marker: false },
        (Some(false), None | Some(0)) => Start::From(current),
        (_, Some(r)) => Start::From(r),
    };
    Ok(WatchOpts {
        selector,
        start,
        bookmarks,
        timeout: query
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .map(Duration::from_secs),
    })
}
