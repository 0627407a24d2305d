//! Active health checks: each server gets a request every `interval`; `fall` failures in a
//! row take it out of rotation and `rise` successes bring it back.

use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{Request, Uri, header};
use portcullis_config::ActiveHealth;
use tracing::debug;

use super::pool::PoolKey;
use super::replay::ReplayBody;
use super::{Backend, Upstream};

/// Starts one check loop per server; each stops once the upstream is gone.
pub(super) fn spawn_checks(upstream: &Arc<Upstream>, policy: &ActiveHealth) {
    for (i, backend) in upstream.backends.iter().enumerate() {
        let uri = check_uri(upstream, i, &policy.path);
        let Some(uri) = uri else {
            continue;
        };
        let policy = policy.clone();
        let weak = Arc::downgrade(backend);
        // Spread the first checks over one interval so servers are not all probed at once.
        let offset = policy.interval.mul_f64(fastrand::f64());
        tokio::spawn(check_loop(weak, uri, policy, offset));
    }
}

fn check_uri(upstream: &Upstream, i: usize, path: &str) -> Option<Uri> {
    let server = &upstream.origin.servers[i];
    let host = if server.host.contains(':') {
        format!("[{}]", server.host)
    } else {
        server.host.clone()
    };
    format!("{}://{host}:{}{path}", upstream.scheme, server.port)
        .parse()
        .ok()
}

async fn check_loop(backend: Weak<Backend>, uri: Uri, policy: ActiveHealth, offset: Duration) {
    tokio::time::sleep(offset).await;
    let mut interval = tokio::time::interval(policy.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut good, mut bad) = (0u32, 0u32);
    loop {
        interval.tick().await;
        let Some(backend) = backend.upgrade() else {
            return;
        };
        let ok = check(&backend, &uri, &policy).await;
        backend.metrics.health_check(ok);
        if ok {
            good += 1;
            bad = 0;
            if good >= policy.rise {
                backend.set_active_up(true);
            }
        } else {
            bad += 1;
            good = 0;
            if bad >= policy.fall {
                backend.set_active_up(false);
            }
        }
    }
}

async fn check(backend: &Backend, uri: &Uri, policy: &ActiveHealth) -> bool {
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    let req = Request::get(uri.clone())
        .header(header::HOST, authority)
        .header(header::USER_AGENT, "portcullis-health-check")
        .body(ReplayBody::empty());
    let Ok(req) = req else {
        return false;
    };
    // Checks keep a connection of their own.
    let key = &PoolKey::HealthCheck;
    match tokio::time::timeout(policy.timeout, backend.client.request(key, req)).await {
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let ok = (policy.expect.0..=policy.expect.1).contains(&status);
            if !ok {
                debug!(origin = &*backend.label, status, "health check failed");
            }
            ok
        }
        Ok(Err(e)) => {
            debug!(origin = &*backend.label, error = %e, "health check failed");
            false
        }
        Err(_) => {
            debug!(origin = &*backend.label, "health check timed out");
            false
        }
    }
}
