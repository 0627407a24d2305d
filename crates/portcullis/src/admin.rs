//! The admin listener: `GET /healthz` (the process is alive), `GET /readyz` (listeners
//! bound, config loaded, every site has a certificate), `GET /metrics` (Prometheus text
//! format) and `POST /reload` (re-read the config file; used by `portcullis reload`).
//!
//! Every request passes [`access`]'s checks first; `/metrics` and `/reload` also need the
//! token when `admin.token_file` is set. `/healthz` and `/readyz` never do, so probes that
//! cannot carry a secret (a kubelet's) keep working.

mod access;
mod listener;

pub(crate) use listener::{AdminBindError, AdminListener};

use std::convert::Infallible;
use std::fmt::Write;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis_config::{Admin, Problem};
use tokio::sync::watch;

use listener::AdminConn;

/// What the admin listener needs of the running gateway; the controller provides it, so
/// this module depends on nothing else of the crate.
pub(crate) trait AdminApi: Send + Sync + 'static {
    /// The `admin` section in force (token, allowed hosts), read by every request.
    fn settings(&self) -> Arc<Admin>;
    /// Sites that have no certificate to serve yet, sorted.
    fn missing_certificates(&self) -> Vec<String>;
    /// Sites waiting for their first ACME certificate, with the last error if any.
    fn acme_waiting(&self) -> Vec<(String, Option<String>)>;
    /// What the config source says of readiness, when the configuration comes from one
    /// that can lag (Kubernetes); `None` for a file.
    fn source_readiness(&self) -> Option<SourceReadiness> {
        None
    }
    /// A line about the certificate cluster (`cluster:`), if this replica is in one. A
    /// store out of reach never makes the gateway unready: every replica keeps serving
    /// what it has (static stability).
    fn cluster_notes(&self) -> Option<String> {
        None
    }
    /// The metrics exposition, up to date.
    fn metrics_text(&self) -> impl Future<Output = String> + Send;
    /// Re-reads the config and applies it: the reply's body, or every problem.
    fn reload_reply(self: Arc<Self>) -> impl Future<Output = Result<String, Vec<Problem>>> + Send;
}

/// A config source's word on readiness (`portcullis ingress`: has the first sync been
/// applied, is the API server reachable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourceReadiness {
    /// False holds the gateway unready whatever else holds.
    pub(crate) ready: bool,
    /// Lines for the body, each ending in a newline.
    pub(crate) notes: String,
    /// Whether a site without a certificate (or waiting for ACME) makes the gateway
    /// unready. Off for Kubernetes: one host's problem would take every replica out of its
    /// Service; the site is listed in the body instead.
    pub(crate) certificates_gate: bool,
}

pub(crate) async fn serve<A: AdminApi>(
    listener: AdminListener,
    api: Arc<A>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let conn = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(_) => continue,
            },
        };
        let api = api.clone();
        match conn {
            AdminConn::Tcp(tcp, local) => {
                tokio::spawn(serve_connection(tcp, api, Some(local.ip())));
            }
            // Only this machine's processes of the gateway's user reach the socket (mode
            // 0600); the checks still run, and loopback names pass them.
            AdminConn::Unix(unix) => {
                tokio::spawn(serve_connection(unix, api, None));
            }
        }
    }
}

async fn serve_connection<IO, A: AdminApi>(io: IO, api: Arc<A>, local: Option<IpAddr>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let api = api.clone();
        async move { Ok::<_, Infallible>(answer(&api, &req, local).await) }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// Checks who is asking, then routes.
async fn answer<A: AdminApi>(
    api: &Arc<A>,
    req: &Request<Incoming>,
    local: Option<IpAddr>,
) -> Response<Full<Bytes>> {
    let settings = api.settings();
    let public = matches!(req.uri().path(), "/healthz" | "/readyz");
    let checked = access::check_request(req, &settings, local).and_then(|()| {
        if public {
            Ok(())
        } else {
            access::check_token(req.headers(), &settings)
        }
    });
    match checked {
        Ok(()) => route(api, req).await,
        Err(refusal) => {
            tracing::debug!(
                path = req.uri().path(),
                status = refusal.status().as_u16(),
                "admin request refused"
            );
            let mut resp = text(refusal.status(), refusal.message());
            if refusal == access::Refusal::Token {
                resp.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"portcullis admin\""),
                );
            }
            resp
        }
    }
}

async fn route<A: AdminApi>(api: &Arc<A>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n".into()),
        (&Method::GET | &Method::HEAD, "/readyz") => match readiness(&**api) {
            Ok(notes) => text(StatusCode::OK, format!("ready\n{notes}")),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready:\n{why}"),
            ),
        },
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let mut resp = text(StatusCode::OK, api.metrics_text().await);
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (&Method::POST, "/reload") => match api.clone().reload_reply().await {
            Ok(body) => text(StatusCode::OK, body),
            Err(problems) => {
                let body: String = problems.iter().map(|p| format!("{p}\n")).collect();
                text(StatusCode::UNPROCESSABLE_ENTITY, body)
            }
        },
        (_, "/reload") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n".into()),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// Ready when every site has a certificate to serve (unless the config source says
/// certificates do not gate) and the config source, if any, says so. The body lists the
/// sites still waiting for ACME, with the last error, whether or not a fallback is being
/// served, and the source's notes.
fn readiness(api: &impl AdminApi) -> Result<String, String> {
    let source = api.source_readiness();
    let missing = api.missing_certificates();
    let mut lines = source.as_ref().map(|s| s.notes.clone()).unwrap_or_default();
    if let Some(notes) = api.cluster_notes() {
        lines.push_str(&notes);
    }
    let waiting = api.acme_waiting();
    for (site, error) in waiting {
        let serving = if missing.contains(&site) {
            "no certificate yet"
        } else {
            "serving the local fallback"
        };
        let _ = write!(
            lines,
            "- site {site}: waiting for its ACME certificate ({serving})"
        );
        if let Some(e) = error {
            let _ = write!(lines, "; last error: {e}");
        }
        lines.push('\n');
    }
    for site in &missing {
        if !lines.contains(&format!("- site {site}:")) {
            let _ = writeln!(lines, "- site {site}: no certificate yet");
        }
    }
    let certificates_ok =
        missing.is_empty() || source.as_ref().is_some_and(|s| !s.certificates_gate);
    if certificates_ok && source.as_ref().is_none_or(|s| s.ready) {
        Ok(lines)
    } else {
        Err(lines)
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // Nothing here is for a browser to render, whatever a client makes of the body.
    resp.headers_mut().insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    resp
}
