//! One order, start to finish: challenges answered by the gateway's listeners, validation,
//! a CSR for a fresh key, the certificate chain.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, ChallengeStatus, ChallengeType,
    Identifier, NewOrder, OrderStatus, RetryPolicy,
};
use portcullis_config::Challenge;
use portcullis_tls::{Challenges, tls_alpn01_certificate};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use tracing::{debug, info};

use crate::error::{AcmeError, Step};
use crate::fleet::{Answer, Fleet, History, OrderRecord};
use crate::storage::{from_unix, unix};

/// Orders placed for one site within an hour, across the fleet, before the next waits.
pub(crate) const MAX_ORDERS_PER_HOUR: usize = 5;

/// What to order.
pub(crate) struct OrderRequest<'a> {
    pub(crate) names: &'a [String],
    pub(crate) replaces: Option<CertificateIdentifier<'static>>,
    /// Challenge to try first.
    pub(crate) prefer: Challenge,
    /// Whether the plain HTTP listener is on (HTTP-01 possible).
    pub(crate) http_listener: bool,
}

/// A new certificate chain and its private key, both PEM.
pub(crate) struct Issued {
    pub(crate) chain_pem: String,
    pub(crate) key_pem: String,
    /// The challenge type that validated the names.
    pub(crate) challenge: Challenge,
}

/// Challenge answers published for one order; removed when it ends, however it ends.
struct Published {
    challenges: Arc<Challenges>,
    http_tokens: Vec<String>,
    alpn_names: Vec<String>,
}

impl Drop for Published {
    fn drop(&mut self) {
        for t in &self.http_tokens {
            self.challenges.remove_http01(t);
        }
        for n in &self.alpn_names {
            self.challenges.remove_tls_alpn01(n);
        }
    }
}

fn acme_err(step: Step) -> impl FnOnce(instant_acme::Error) -> AcmeError {
    move |e| AcmeError::from_acme(step, e)
}

pub(crate) async fn order(
    account: &Account,
    challenges: &Arc<Challenges>,
    req: &OrderRequest<'_>,
    fleet: Option<(&dyn Fleet, &str)>,
    history: Option<&mut History>,
) -> Result<Issued, AcmeError> {
    let mut answers = Vec::new();
    let result = order_with(account, challenges, req, fleet, history, &mut answers).await;
    if let (Some((fleet, _)), false) = (fleet, answers.is_empty()) {
        fleet.withdraw_answers(&answers).await;
    }
    result
}

/// An order placed now, or the fleet's recorded order resumed, with the key its CSR uses.
async fn place_or_resume(
    account: &Account,
    req: &OrderRequest<'_>,
    fleet: Option<(&dyn Fleet, &str)>,
    history: Option<&mut History>,
) -> Result<(instant_acme::Order, KeyPair), AcmeError> {
    if let Some((fleet, site)) = fleet
        && let Some(record) = fleet.load_order(site).await?
    {
        let mut wanted = req.names.to_vec();
        let mut recorded = record.names.clone();
        wanted.sort();
        recorded.sort();
        let key = KeyPair::from_pem(&record.key_pem).ok();
        match (wanted == recorded, key) {
            (true, Some(key)) => match account.order(record.url.clone()).await {
                Ok(mut order) => {
                    let status = order.state().status;
                    if status != OrderStatus::Invalid {
                        info!(site, url = %record.url, ?status, "resuming the order another issuer placed");
                        return Ok((order, key));
                    }
                    debug!(site, url = %record.url, "the recorded order is invalid; placing a new one");
                }
                Err(e) => {
                    debug!(site, url = %record.url, error = %e, "the recorded order cannot be resumed; placing a new one")
                }
            },
            _ => debug!(
                site,
                "the recorded order is for other names; placing a new one"
            ),
        }
    }
    if let (Some((fleet, site)), Some(history)) = (fleet, history) {
        count_order(fleet, site, history).await?;
    }
    let key = KeyPair::generate().map_err(|e| AcmeError::new(Step::Finalize, e.to_string()))?;
    let identifiers: Vec<Identifier> = req.names.iter().cloned().map(Identifier::Dns).collect();
    let mut new_order = NewOrder::new(&identifiers);
    if let Some(id) = &req.replaces {
        new_order = new_order.replaces(id.clone());
    }
    let order = account
        .new_order(&new_order)
        .await
        .map_err(acme_err(Step::NewOrder))?;
    debug!(url = order.url(), names = ?req.names, "order created");
    if let Some((fleet, site)) = fleet {
        // Before anything else: a new issuer taking over from here resumes this order.
        fleet
            .save_order(
                site,
                &OrderRecord {
                    names: req.names.to_vec(),
                    url: order.url().to_owned(),
                    key_pem: key.serialize_pem(),
                },
            )
            .await?;
    }
    Ok((order, key))
}

/// Records a new order in the site's shared history before it is placed (a crash right
/// after still counts), refusing when the fleet placed [`MAX_ORDERS_PER_HOUR`] within the
/// hour: a crash loop or a flapping issuer cannot burn the CA's limits.
async fn count_order(
    fleet: &dyn Fleet,
    site: &str,
    history: &mut History,
) -> Result<(), AcmeError> {
    let now = unix(SystemTime::now());
    history.orders.retain(|t| *t > now.saturating_sub(86_400));
    let last_hour: Vec<u64> = history
        .orders
        .iter()
        .copied()
        .filter(|t| *t > now.saturating_sub(3600))
        .collect();
    if last_hour.len() >= MAX_ORDERS_PER_HOUR {
        let mut e = AcmeError::new(
            Step::NewOrder,
            format!(
                "{} orders for {site} within the hour across the cluster; waiting before another",
                last_hour.len()
            ),
        );
        e.retry_after = Some(from_unix(last_hour[0] + 3600));
        return Err(e);
    }
    history.orders.push(now);
    fleet.save_history(site, history).await
}

async fn order_with(
    account: &Account,
    challenges: &Arc<Challenges>,
    req: &OrderRequest<'_>,
    fleet: Option<(&dyn Fleet, &str)>,
    history: Option<&mut History>,
    answers: &mut Vec<Answer>,
) -> Result<Issued, AcmeError> {
    let (mut order, key) = place_or_resume(account, req, fleet, history).await?;

    let mut published = Published {
        challenges: challenges.clone(),
        http_tokens: Vec::new(),
        alpn_names: Vec::new(),
    };
    let mut used = req.prefer;
    let mut to_ready = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(acme_err(Step::Authorization))?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(AcmeError::new(
                    Step::Authorization,
                    format!("authorization for {} is {other:?}", authz.identifier()),
                ));
            }
        }
        let name = authz.identifier().to_string();
        let offered: Vec<ChallengeType> =
            authz.challenges.iter().map(|c| c.r#type.clone()).collect();
        // A resumed order whose challenge the previous issuer already set ready keeps
        // that challenge: the CA is validating it.
        let processing = authz
            .challenges
            .iter()
            .find(|c| c.status == ChallengeStatus::Processing)
            .map(|c| c.r#type.clone());
        let kind = match processing.clone() {
            Some(kind) => Some(kind),
            None => choose(&offered, req.prefer, req.http_listener),
        }
        .ok_or_else(|| {
            AcmeError::new(
                Step::Authorization,
                format!(
                    "the CA offers no challenge Portcullis can answer for {name} (offered: {offered:?}; HTTP-01 needs listen.http)"
                ),
            )
        })?;
        used = match kind {
            ChallengeType::Http01 => Challenge::Http01,
            _ => Challenge::TlsAlpn01,
        };
        let challenge = authz.challenge(kind.clone()).ok_or_else(|| {
            AcmeError::new(Step::Authorization, format!("challenge {kind:?} vanished"))
        })?;
        let key_auth = challenge.key_authorization();
        let answer = match kind {
            ChallengeType::Http01 => {
                challenges.set_http01(&challenge.token, key_auth.as_str());
                published.http_tokens.push(challenge.token.clone());
                Answer::Http01 {
                    token: challenge.token.clone(),
                    key_authorization: key_auth.as_str().to_owned(),
                }
            }
            _ => {
                let cert = tls_alpn01_certificate(&name, key_auth.digest().as_ref())
                    .map_err(|e| AcmeError::new(Step::Challenge, e.to_string()))?;
                challenges.set_tls_alpn01(&name, cert);
                published.alpn_names.push(name.clone());
                Answer::TlsAlpn01 {
                    name: name.clone(),
                    digest: key_auth.digest().as_ref().to_vec(),
                }
            }
        };
        answers.push(answer);
        if processing.is_none() {
            to_ready.push(challenge.url.clone());
        }
    }
    if let Some((fleet, _)) = fleet
        && !answers.is_empty()
    {
        // Every replica must answer before the CA is told to look: its validation may
        // reach any of them.
        fleet.publish_answers(answers).await?;
    }
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(acme_err(Step::Authorization))?;
        // One challenge per authorization is answered.
        let kind = authz
            .challenges
            .iter()
            .find(|c| to_ready.contains(&c.url))
            .map(|c| c.r#type.clone());
        if let Some(mut challenge) = kind.and_then(|k| authz.challenge(k)) {
            challenge
                .set_ready()
                .await
                .map_err(acme_err(Step::Challenge))?;
        }
    }

    let mut status = order.state().status;
    if matches!(status, OrderStatus::Pending) {
        status = order
            .poll_ready(&RetryPolicy::new().timeout(Duration::from_secs(120)))
            .await
            .map_err(acme_err(Step::Validation))?;
    }
    match status {
        OrderStatus::Ready => {
            drop(published);
            let mut params = CertificateParams::new(req.names.to_vec())
                .map_err(|e| AcmeError::new(Step::Finalize, e.to_string()))?;
            params.distinguished_name = DistinguishedName::new();
            let csr = params
                .serialize_request(&key)
                .map_err(|e| AcmeError::new(Step::Finalize, e.to_string()))?;
            order
                .finalize_csr(csr.der())
                .await
                .map_err(acme_err(Step::Finalize))?;
        }
        // A resumed order the previous issuer already finalised.
        OrderStatus::Processing | OrderStatus::Valid => drop(published),
        other => return Err(validation_error(&mut order, other).await),
    }
    let chain_pem = order
        .poll_certificate(&RetryPolicy::new().timeout(Duration::from_secs(120)))
        .await
        .map_err(acme_err(Step::Certificate))?;
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
        challenge: used,
    })
}

/// The preferred challenge if offered, else the other one we can answer.
fn choose(
    offered: &[ChallengeType],
    prefer: Challenge,
    http_listener: bool,
) -> Option<ChallengeType> {
    let alpn = offered.contains(&ChallengeType::TlsAlpn01);
    let http = http_listener && offered.contains(&ChallengeType::Http01);
    match (prefer, alpn, http) {
        (Challenge::Http01, _, true) | (Challenge::TlsAlpn01, false, true) => {
            Some(ChallengeType::Http01)
        }
        (_, true, _) => Some(ChallengeType::TlsAlpn01),
        _ => None,
    }
}

/// Explains an order that did not become ready, with the CA's problem for each challenge.
async fn validation_error(order: &mut instant_acme::Order, status: OrderStatus) -> AcmeError {
    let mut reasons = Vec::new();
    let mut problem_type = None;
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let name = authz.identifier().to_string();
        if let Ok(state) = authz.refresh().await {
            for c in &state.challenges {
                if let Some(p) = &c.error {
                    problem_type = problem_type.or(p.r#type.clone());
                    reasons.push(format!("{name} ({:?}): {p}", c.r#type));
                }
            }
        }
    }
    if let (true, Some(p)) = (reasons.is_empty(), &order.state().error) {
        reasons.push(p.to_string());
    }
    let mut err = AcmeError::new(
        Step::Validation,
        format!(
            "order is {status:?}: {}",
            if reasons.is_empty() {
                "the CA gave no reason".to_owned()
            } else {
                reasons.join("; ")
            }
        ),
    );
    err.problem_type = problem_type;
    err
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{FleetFuture, Shared};
    use crate::site::AcmeSite;
    use instant_acme::AccountCredentials;

    /// A fleet that only records the histories saved.
    #[derive(Default)]
    struct Recorder {
        saved: std::sync::Mutex<Vec<History>>,
    }

    impl Fleet for Recorder {
        fn issuer(&self) -> tokio::sync::watch::Receiver<bool> {
            tokio::sync::watch::channel(true).1
        }
        fn latest<'a>(&'a self, _: &'a str) -> FleetFuture<'a, Result<Option<Shared>, AcmeError>> {
            Box::pin(async { Ok(None) })
        }
        fn store_certificate<'a>(
            &'a self,
            _: &'a AcmeSite,
            _: Shared,
        ) -> FleetFuture<'a, Result<(), AcmeError>> {
            Box::pin(async { Ok(()) })
        }
        fn load_order<'a>(
            &'a self,
            _: &'a str,
        ) -> FleetFuture<'a, Result<Option<OrderRecord>, AcmeError>> {
            Box::pin(async { Ok(None) })
        }
        fn save_order<'a>(
            &'a self,
            _: &'a str,
            _: &'a OrderRecord,
        ) -> FleetFuture<'a, Result<(), AcmeError>> {
            Box::pin(async { Ok(()) })
        }
        fn clear_order<'a>(&'a self, _: &'a str) -> FleetFuture<'a, ()> {
            Box::pin(async {})
        }
        fn load_history<'a>(
            &'a self,
            _: &'a str,
        ) -> FleetFuture<'a, Result<Option<History>, AcmeError>> {
            Box::pin(async { Ok(None) })
        }
        fn save_history<'a>(
            &'a self,
            _: &'a str,
            history: &'a History,
        ) -> FleetFuture<'a, Result<(), AcmeError>> {
            self.saved.lock().unwrap().push(history.clone());
            Box::pin(async { Ok(()) })
        }
        fn publish_answers<'a>(
            &'a self,
            _: &'a [Answer],
        ) -> FleetFuture<'a, Result<(), AcmeError>> {
            Box::pin(async { Ok(()) })
        }
        fn withdraw_answers<'a>(&'a self, _: &'a [Answer]) -> FleetFuture<'a, ()> {
            Box::pin(async {})
        }
        fn load_account(&self) -> FleetFuture<'_, Result<Option<AccountCredentials>, AcmeError>> {
            Box::pin(async { Ok(None) })
        }
        fn save_account<'a>(
            &'a self,
            _: &'a AccountCredentials,
        ) -> FleetFuture<'a, Result<(), AcmeError>> {
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test]
    async fn orders_are_recorded_before_they_are_placed_and_capped_per_hour() {
        let fleet = Recorder::default();
        let now = unix(SystemTime::now());
        let mut history = History {
            // Two days ago (forgotten), and four within the hour.
            orders: vec![
                now - 2 * 86_400,
                now - 3000,
                now - 2000,
                now - 1000,
                now - 10,
            ],
            ..History::default()
        };
        count_order(&fleet, "a", &mut history).await.unwrap();
        assert_eq!(
            history.orders.len(),
            5,
            "the old one dropped, this one added"
        );
        assert_eq!(fleet.saved.lock().unwrap().last(), Some(&history));

        let err = count_order(&fleet, "a", &mut history).await.unwrap_err();
        assert_eq!(err.step, Step::NewOrder);
        assert!(err.message.contains("5 orders"), "{}", err.message);
        let after = err.retry_after.unwrap();
        assert_eq!(
            after,
            from_unix(now - 3000 + 3600),
            "when the oldest leaves the hour"
        );
        assert_eq!(
            fleet.saved.lock().unwrap().len(),
            1,
            "a refused order is not recorded"
        );
    }

    #[test]
    fn challenge_choice_prefers_then_falls_back() {
        use ChallengeType::{Dns01, Http01, TlsAlpn01};
        let all = [Http01, Dns01, TlsAlpn01];
        assert_eq!(choose(&all, Challenge::TlsAlpn01, true), Some(TlsAlpn01));
        assert_eq!(choose(&all, Challenge::Http01, true), Some(Http01));
        assert_eq!(choose(&all, Challenge::Http01, false), Some(TlsAlpn01));
        assert_eq!(
            choose(&[Http01, Dns01], Challenge::TlsAlpn01, true),
            Some(Http01)
        );
        assert_eq!(choose(&[Http01, Dns01], Challenge::TlsAlpn01, false), None);
        assert_eq!(choose(&[Dns01], Challenge::TlsAlpn01, true), None);
    }
}
