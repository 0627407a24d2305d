//! The HTTP client the ACME account talks through: system roots plus `acme.ca_bundle`, and
//! a record of the `Retry-After` the CA sends with errors (instant-acme keeps only the
//! problem document).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::Request;
use http::header::RETRY_AFTER;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;

use crate::error::{AcmeError, Step};

tokio::task_local! {
    /// Where the current ACME flow collects the CA's `Retry-After`.
    static RETRY_AFTER_SLOT: Arc<Mutex<Option<SystemTime>>>;
}

/// Runs `flow`, returning its output and the latest `Retry-After` the CA sent with an error
/// response during it.
pub(crate) async fn with_retry_after<F: Future>(flow: F) -> (F::Output, Option<SystemTime>) {
    let slot = Arc::new(Mutex::new(None));
    let out = RETRY_AFTER_SLOT.scope(slot.clone(), flow).await;
    let retry_after = *slot.lock().unwrap_or_else(|e| e.into_inner());
    (out, retry_after)
}

#[derive(Clone)]
pub(crate) struct AcmeHttp {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
}

impl AcmeHttp {
    /// A client trusting the system's roots and `extra_roots`.
    /// The error is the account step's: nothing can be asked of the CA without it.
    pub(crate) fn new(extra_roots: &[CertificateDer<'static>]) -> Result<Self, AcmeError> {
        let fail = |message: &str| AcmeError::new(Step::Account, message);
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let (added, _) = roots.add_parsable_certificates(extra_roots.iter().cloned());
        if !extra_roots.is_empty() && added == 0 {
            return Err(fail("`acme.ca_bundle` holds no usable certificate"));
        }
        if roots.is_empty() {
            return Err(fail(
                "no trusted roots: the system has no CA certificates and `acme.ca_bundle` is not set",
            ));
        }
        let tls = ClientConfig::builder_with_provider(portcullis_tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(&e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let slot = RETRY_AFTER_SLOT.try_with(Arc::clone).ok();
        let pending = self.client.request(req);
        Box::pin(async move {
            let resp = pending
                .await
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            if let (Some(slot), true) = (slot, resp.status().as_u16() >= 400)
                && let Some(at) = resp
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after)
            {
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
            }
            Ok(BytesResponse::from(resp))
        })
    }
}

/// `Retry-After: 120` or `Retry-After: Fri, 31 Dec 1999 23:59:59 GMT`.
pub(crate) fn parse_retry_after(value: &str) -> Option<SystemTime> {
    let value = value.trim();
    match value.parse::<u64>() {
        Ok(secs) => Some(SystemTime::now() + Duration::from_secs(secs)),
        Err(_) => httpdate::parse_http_date(value).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        let soon = parse_retry_after("120").unwrap();
        let d = soon.duration_since(SystemTime::now()).unwrap();
        assert!(d > Duration::from_secs(118) && d <= Duration::from_secs(120));
        let date = parse_retry_after("Fri, 31 Dec 1999 23:59:59 GMT").unwrap();
        assert_eq!(
            date.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            946_684_799
        );
        assert!(parse_retry_after("soon").is_none());
    }
}
