//! `acme` checks of one `tls: acme` site: what its last order left in storage (as
//! `portcullis certs` reads it), whether the ACME directory answers, and whether a CA
//! reaches the challenge answer: HTTP-01 through the plain listener without a redirect, or
//! TLS-ALPN-01 on the HTTPS listener.

use std::sync::Arc;
use std::time::SystemTime;

use futures_util::future::join_all;
use portcullis_acme::{Storage, from_unix};
use portcullis_config::{Challenge, Site};
use portcullis_tls::{ACME_TLS_ALPN, crypto_provider, format_time};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::doctor::probe::{self, ProbeError};
use crate::doctor::{Context, Entry, Finding, Status, probe_name};

const CHECK: &str = "acme";

/// The `acme` findings of `site`; `directory` is the finding about `acme.directory`.
pub(super) async fn check_site(ctx: &Context, site: &Site, directory: Finding) -> Vec<Entry> {
    let mut out = vec![state(ctx, site).await, directory];
    let challenges = join_all(site.hosts.iter().map(|host| async move {
        if let portcullis_config::HostPattern::Wildcard(_) = host {
            return vec![Finding::ok(
                CHECK,
                host.to_string(),
                "a wildcard is validated by DNS-01, which this gateway does not answer: no challenge path to check",
            )];
        }
        let name = probe_name(host);
        match (ctx.config.acme.challenge, ctx.http_target()) {
            (Challenge::Http01, _) => vec![http01(ctx, &name).await],
            (Challenge::TlsAlpn01, None) => vec![tls_alpn(ctx, &name).await],
            (Challenge::TlsAlpn01, Some(_)) => {
                // HTTP-01 is only the fallback: its failure is a warning.
                let (alpn, mut http) = tokio::join!(tls_alpn(ctx, &name), http01(ctx, &name));
                if http.status == Status::Fail {
                    http.status = Status::Warn;
                    http.message = format!(
                        "{} (HTTP-01 is only the fallback when the CA does not offer TLS-ALPN-01)",
                        http.message
                    );
                }
                vec![alpn, http]
            }
        }
    }))
    .await;
    out.extend(challenges.into_iter().flatten());
    out.into_iter().map(|f| Entry::site(site, f)).collect()
}

/// The last order, the last error and the next renewal, from ACME storage.
async fn state(ctx: &Context, site: &Site) -> Finding {
    let subject = site.hosts.first().map(probe_name).unwrap_or_default();
    if ctx.config.cluster.is_some() {
        return Finding::ok(
            CHECK,
            subject,
            "certificates are kept in the cluster store: `portcullis certs` shows its orders",
        );
    }
    let storage = Storage::new(&ctx.config.storage, &ctx.config.acme.directory);
    let name = site.name.clone();
    // A few small files, read off the runtime's workers.
    let read = tokio::task::spawn_blocking(move || {
        let status = storage.load_status(&name).unwrap_or_default();
        let cert = storage.load_cert(&name);
        (storage, status, cert)
    })
    .await;
    let Ok((storage, status, cert)) = read else {
        return Finding::fail(
            CHECK,
            subject,
            "ACME storage could not be read",
            "run `portcullis certs --config FILE` to see what it holds",
        );
    };
    let next = status
        .next_attempt
        .map(|t| format!("next attempt {}", format_time(from_unix(t))));
    let last_ok = status
        .last_success
        .map(|t| format!("last issued {}", format_time(from_unix(t))));
    let history = [last_ok, next].into_iter().flatten().collect::<Vec<_>>();
    let history = if history.is_empty() {
        String::new()
    } else {
        format!("; {}", history.join(", "))
    };
    let fix_error = "fix what the error names (the `names` check shows whether the hosts reach this machine), then restart or reload the gateway to order again";
    match (cert, status.last_error) {
        (Err(e), _) => Finding::fail(
            CHECK,
            subject,
            format!("the stored certificate cannot be used: {e}"),
            "remove the named file: the gateway orders a new certificate at start",
        ),
        (Ok(None), Some(err)) => Finding::fail(
            CHECK,
            subject,
            format!(
                "no certificate yet; the last order failed ({} failure(s)): {err}{history}",
                status.failures
            ),
            fix_error,
        ),
        (Ok(None), None) => Finding::warn(
            CHECK,
            subject,
            format!(
                "no certificate ordered yet (nothing in {}); the gateway orders one when it runs",
                storage.root().display()
            ),
            "run the gateway (`portcullis run --config FILE`); `portcullis certs` shows the order's progress",
        ),
        (Ok(Some(c)), Some(err)) if status.failures > 0 => Finding::warn(
            CHECK,
            subject,
            format!(
                "a certificate valid until {} is stored, but the last renewal failed ({} failure(s)): {err}{history}",
                format_time(c.info.not_after),
                status.failures
            ),
            fix_error,
        ),
        (Ok(Some(c)), _) => Finding::ok(
            CHECK,
            subject,
            format!(
                "a certificate for {} valid until {} is stored{history}",
                c.info.names.join(", "),
                format_time(c.info.not_after)
            ),
        ),
    }
}

/// `GET acme.directory`: it answers with a directory (`newOrder`).
pub(super) async fn directory(ctx: &Context) -> Finding {
    let url = &ctx.config.acme.directory;
    let fix = "check `acme.directory` (the CA's directory URL), this machine's outbound HTTPS and DNS, and `acme.ca_bundle` for a private CA";
    match fetch_directory(ctx).await {
        Ok(body) => {
            let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
            if json.as_ref().is_some_and(|j| j.get("newOrder").is_some()) {
                Finding::ok(
                    CHECK,
                    url,
                    "the ACME directory answers (it offers newOrder)",
                )
            } else {
                Finding::fail(
                    CHECK,
                    url,
                    "the URL answers, but not with an ACME directory (no `newOrder`)",
                    fix,
                )
            }
        }
        Err(why) => Finding::fail(
            CHECK,
            url,
            format!("the ACME directory cannot be read: {why}"),
            fix,
        ),
    }
}

async fn fetch_directory(ctx: &Context) -> Result<bytes::Bytes, String> {
    let url = &ctx.config.acme.directory;
    let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let host = uri.host().ok_or("the URL has no host")?.to_owned();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(&host)
        .to_owned();
    let tls = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
    let addr = super::super::origins::resolve(&host, port, ctx.timeout)
        .await
        .map_err(|e| e.to_string())?;
    let tcp = probe::connect(addr, ctx.timeout)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let answer = if tls {
        let mut roots = super::trusted_roots(&ctx.config).await;
        roots.add_parsable_certificates(ctx.config.acme.ca_bundle.iter().cloned());
        let config = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let stream = probe::bounded(ctx.timeout, async {
            TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| ProbeError::Tls(e.to_string()))
        })
        .await
        .map_err(|e| e.to_string())?;
        probe::get(stream, &authority, &path, ctx.timeout).await
    } else {
        probe::get(tcp, &authority, &path, ctx.timeout).await
    }
    .map_err(|e| e.to_string())?;
    if answer.status != 200 {
        return Err(format!("it answered HTTP {}", answer.status));
    }
    Ok(answer.body)
}

/// A token no order uses, so the answer is the gateway's own (no answer for it).
fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("portcullis-doctor-{:016x}", h.finish())
}

/// Whether a CA reaches the HTTP-01 answer for `name` through the plain listener.
async fn http01(ctx: &Context, name: &str) -> Finding {
    let path = format!("/.well-known/acme-challenge/{}", random_token());
    let Some(target) = ctx.http_target() else {
        return Finding::fail(
            CHECK,
            name,
            "HTTP-01 needs the plain HTTP listener, and `listen.http` is off: the CA's validation cannot reach the answer",
            "set `listen.http: 0.0.0.0:80`, or `acme.challenge: tls-alpn-01`",
        );
    };
    let subject = format!("http://{name}{path}");
    let https_port = ctx.config.listen.https.port();
    // The gateway answers the tokens of its own orders before anything else; a token it
    // has no answer for (this one) gets the site's usual answer: its redirect to HTTPS,
    // exactly this Location. Any other redirect comes from something else on :80.
    let own_redirect = if https_port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{https_port}{path}")
    };
    let port_note = if target.port() == 80 {
        String::new()
    } else {
        format!(
            "; the CA connects to port 80, so port 80 must be forwarded to :{}",
            target.port()
        )
    };
    match probe::get_plain(target, name, &path, ctx.timeout).await {
        Ok(answer)
            if (300..400).contains(&answer.status)
                && answer.header("location") != Some(own_redirect.as_str()) =>
        {
            Finding::fail(
                CHECK,
                subject,
                format!(
                    "the challenge path is redirected by something other than this gateway ({} to {}): HTTP-01 validation must reach the gateway on :80",
                    answer.status,
                    answer.header("location").unwrap_or("no Location")
                ),
                "let /.well-known/acme-challenge/ through to the gateway on :80 (no redirect rule, other web server or proxy in front of it answering there)",
            )
        }
        Ok(answer) if (300..400).contains(&answer.status) => Finding::ok(
            CHECK,
            subject,
            format!(
                "the challenge path reaches the gateway on {target}: it answers the tokens of its orders there before any redirect (a token it has no answer for, as this one, gets its usual {} to HTTPS){port_note}",
                answer.status
            ),
        ),
        Ok(answer) => Finding::ok(
            CHECK,
            subject,
            format!(
                "the challenge path is answered on {target} without a redirect (HTTP {} for a token no order uses){port_note}",
                answer.status
            ),
        ),
        Err(e) => Finding::fail(
            CHECK,
            subject,
            format!(
                "the challenge path cannot be reached: the plain HTTP listener {target} does not answer ({e}); HTTP-01 validation fails"
            ),
            "run the gateway with `listen.http` on port 80 and open port 80 to the internet",
        ),
    }
}

/// TLS-ALPN-01: the CA connects to the HTTPS listener offering only `acme-tls/1`. The
/// gateway negotiates it while an order for the name is pending, and otherwise refuses with
/// `unrecognized_name`; a handshake completed without it is something else answering.
async fn tls_alpn(ctx: &Context, name: &str) -> Finding {
    let target = ctx.https_target();
    let subject = format!("{name} (acme-tls/1)");
    let fix = "let port 443 reach the gateway itself (TCP passthrough, no TLS-terminating proxy in front), or use `acme.challenge: http-01`";
    match probe::tls_handshake(target, name, &[ACME_TLS_ALPN], ctx.timeout).await {
        Ok(hs) if hs.alpn.as_deref() == Some(ACME_TLS_ALPN) => Finding::ok(
            CHECK,
            subject,
            format!(
                "TLS-ALPN-01: the HTTPS listener {target} negotiates acme-tls/1 for this name (an order is pending)"
            ),
        ),
        Ok(_) => Finding::fail(
            CHECK,
            subject,
            format!(
                "TLS-ALPN-01: what answers on {target} completed a handshake without acme-tls/1, so it is not this gateway's challenge answer"
            ),
            fix,
        ),
        // While an order is pending the gateway presents the challenge certificate, whose
        // critical acmeIdentifier extension the probe's signature check (webpki) refuses
        // to parse: that refusal is the challenge answer being served.
        Err(ProbeError::Tls(why)) if why.contains("UnsupportedCriticalExtension") => Finding::ok(
            CHECK,
            subject,
            format!(
                "TLS-ALPN-01: the HTTPS listener {target} presents the acme-tls/1 challenge certificate for this name (an order is pending)"
            ),
        ),
        Err(ProbeError::Tls(why)) if why.contains("UnrecognisedName") => Finding::ok(
            CHECK,
            subject,
            format!(
                "TLS-ALPN-01: the HTTPS listener {target} handles acme-tls/1 (with no order pending for this name it answers unrecognized_name, as it should)"
            ),
        ),
        Err(e) => Finding::fail(
            CHECK,
            subject,
            format!(
                "TLS-ALPN-01: the HTTPS listener {target} does not answer an acme-tls/1 handshake ({e})"
            ),
            format!("run the gateway and open port 443 to the internet; {fix}"),
        ),
    }
}
