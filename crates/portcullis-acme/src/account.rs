//! The ACME account: loaded from storage when there is one, created (with External Account
//! Binding when configured) and stored when there is not.

use instant_acme::{Account, ExternalAccountKey, NewAccount};
use portcullis_config::Acme;
use tracing::{info, warn};

use crate::error::{AcmeError, Step};
use crate::fleet::Fleet;
use crate::http::AcmeHttp;
use crate::storage::Storage;

/// The stored account, or a new one.
pub(crate) async fn load_or_create(
    cfg: &Acme,
    storage: &Storage,
    http: &AcmeHttp,
) -> Result<Account, AcmeError> {
    match storage.load_account() {
        Ok(Some(credentials)) => {
            return Account::builder_with_http(Box::new(http.clone()))
                .from_credentials(credentials)
                .await
                .map_err(|e| AcmeError::from_acme(Step::Account, e));
        }
        Ok(None) => {}
        Err(why) => {
            warn!(error = %why, "ignoring the unreadable ACME account file; creating a new account")
        }
    }
    create(cfg, storage, http).await
}

async fn create(cfg: &Acme, storage: &Storage, http: &AcmeHttp) -> Result<Account, AcmeError> {
    let (account, credentials) = new_account(cfg, http).await?;
    if let Err(e) = storage.save_account(&credentials) {
        warn!(path = %storage.root().display(), error = %e, "cannot store the ACME account; a new one will be created at the next start");
    }
    info!(account = account.id(), directory = %cfg.directory, "created ACME account");
    Ok(account)
}

/// Registers a new account with the CA.
async fn new_account(
    cfg: &Acme,
    http: &AcmeHttp,
) -> Result<(Account, instant_acme::AccountCredentials), AcmeError> {
    let contact = cfg.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let eab = cfg
        .eab
        .as_ref()
        .map(|e| ExternalAccountKey::new(e.kid.clone(), &e.hmac_key));
    let (account, credentials) = Account::builder_with_http(Box::new(http.clone()))
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.directory.clone(),
            eab.as_ref(),
        )
        .await
        .map_err(|e| {
            let mut err = AcmeError::from_acme(Step::Account, e);
            // Only a refusal by the CA is about the binding; a CA out of reach is not.
            if cfg.eab.is_some() && err.problem_type.is_some() {
                err.message = format!(
                    "the CA refused to create the account with the External Account Binding (check acme.eab.kid and acme.eab.hmac_key): {}",
                    err.message
                );
            } else if err.is("externalAccountRequired") {
                err.message = format!(
                    "this CA requires External Account Binding; set acme.eab.kid and acme.eab.hmac_key: {}",
                    err.message
                );
            }
            err
        })?;
    Ok((account, credentials))
}

/// The fleet's account, or a new one stored for the whole fleet (only the issuer gets
/// here, so two replicas never create one each).
pub(crate) async fn load_or_create_shared(
    cfg: &Acme,
    fleet: &dyn Fleet,
    http: &AcmeHttp,
) -> Result<Account, AcmeError> {
    if let Some(credentials) = fleet.load_account().await? {
        return Account::builder_with_http(Box::new(http.clone()))
            .from_credentials(credentials)
            .await
            .map_err(|e| AcmeError::from_acme(Step::Account, e));
    }
    let (account, credentials) = new_account(cfg, http).await?;
    fleet.save_account(&credentials).await?;
    info!(account = account.id(), directory = %cfg.directory, "created the fleet's ACME account");
    Ok(account)
}
