//! The admin listener: `/healthz` (the process is alive) and `/readyz` (listeners bound,
//! config loaded, every site has a certificate).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis_acme::AcmeManager;
use portcullis_tls::CertStore;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the readiness check looks at.
pub(crate) struct AdminState {
    certs: Arc<CertStore>,
    acme: Option<Arc<AcmeManager>>,
}

impl AdminState {
    pub(crate) fn new(certs: Arc<CertStore>, acme: Option<Arc<AcmeManager>>) -> Self {
        Self { certs, acme }
    }

    /// Ready when every site has a certificate to serve. The body lists the sites still
    /// waiting for ACME, with the last error, whether or not a fallback is being served.
    fn readiness(&self) -> Result<String, String> {
        let missing = self.certs.missing();
        let mut lines = String::new();
        for (site, error) in self.acme.as_ref().map(|a| a.waiting()).unwrap_or_default() {
            let serving = if missing.contains(&site) {
                "no certificate yet"
            } else {
                "serving the local fallback"
            };
            lines.push_str(&format!(
                "- site {site}: waiting for its ACME certificate ({serving})"
            ));
            if let Some(e) = error {
                lines.push_str(&format!("; last error: {e}"));
            }
            lines.push('\n');
        }
        for site in &missing {
            if !lines.contains(&format!("- site {site}:")) {
                lines.push_str(&format!("- site {site}: no certificate yet\n"));
            }
        }
        if missing.is_empty() {
            Ok(lines)
        } else {
            Err(lines)
        }
    }
}

pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(_) => continue,
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, &req)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn route(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match state.readiness() {
            Ok(notes) => text(StatusCode::OK, format!("ready\n{notes}")),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready:\n{why}"),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
