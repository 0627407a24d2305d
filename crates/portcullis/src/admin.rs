//! The admin listener: `GET /healthz` (the process is alive), `GET /readyz` (listeners
//! bound, config loaded, every site has a certificate), `GET /metrics` (Prometheus text
//! format) and `POST /reload` (re-read the config file; used by `portcullis reload`).
//!
//! Every request passes [`access`]'s checks first; `/metrics` and `/reload` also need the
//! token when `admin.token_file` is set. `/healthz` and `/readyz` never do, so probes that
//! cannot carry a secret (a kubelet's) keep working.

mod access;
mod listener;

pub(crate) use listener::AdminListener;

use std::convert::Infallible;
use std::fmt::Write;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::controller::Controller;
use listener::AdminConn;

pub(crate) async fn serve(
    listener: AdminListener,
    controller: Arc<Controller>,
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
        let controller = controller.clone();
        match conn {
            AdminConn::Tcp(tcp, local) => {
                tokio::spawn(serve_connection(tcp, controller, Some(local.ip())));
            }
            // Only this machine's processes of the gateway's user reach the socket (mode
            // 0600); the checks still run, and loopback names pass them.
            AdminConn::Unix(unix) => {
                tokio::spawn(serve_connection(unix, controller, None));
            }
        }
    }
}

async fn serve_connection<IO>(io: IO, controller: Arc<Controller>, local: Option<IpAddr>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let controller = controller.clone();
        async move { Ok::<_, Infallible>(answer(&controller, &req, local).await) }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// Checks who is asking, then routes.
async fn answer(
    controller: &Arc<Controller>,
    req: &Request<Incoming>,
    local: Option<IpAddr>,
) -> Response<Full<Bytes>> {
    let settings = controller.admin_settings();
    let public = matches!(req.uri().path(), "/healthz" | "/readyz");
    let checked = access::check_request(req, &settings, local).and_then(|()| {
        if public {
            Ok(())
        } else {
            access::check_token(req.headers(), &settings)
        }
    });
    match checked {
        Ok(()) => route(controller, req).await,
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

async fn route(controller: &Arc<Controller>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n".into()),
        (&Method::GET | &Method::HEAD, "/readyz") => match readiness(controller) {
            Ok(notes) => text(StatusCode::OK, format!("ready\n{notes}")),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready:\n{why}"),
            ),
        },
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let mut resp = text(StatusCode::OK, controller.metrics_text().await);
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (&Method::POST, "/reload") => match controller.reload().await {
            Ok(summary) => {
                let mut body = format!("reloaded: {} sites\n", summary.sites);
                for m in &summary.moved_listeners {
                    let _ = writeln!(body, "listener {m}");
                }
                text(StatusCode::OK, body)
            }
            Err(problems) => {
                let body: String = problems.iter().map(|p| format!("{p}\n")).collect();
                text(StatusCode::UNPROCESSABLE_ENTITY, body)
            }
        },
        (_, "/reload") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n".into()),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// Ready when every site has a certificate to serve. The body lists the sites still
/// waiting for ACME, with the last error, whether or not a fallback is being served.
fn readiness(controller: &Controller) -> Result<String, String> {
    let missing = controller.gateway().certs().missing();
    let mut lines = String::new();
    let waiting = controller.acme().map(|a| a.waiting()).unwrap_or_default();
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
    if missing.is_empty() {
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
