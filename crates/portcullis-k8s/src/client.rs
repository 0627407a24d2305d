//! The connection to the API server: from `--kubeconfig`, else `KUBECONFIG`, else the pod's
//! service account (in-cluster). `~/.kube/config` is never read by itself: a controller
//! that quietly picked up a developer's credentials would be a surprise.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

/// Where the service account's token, CA and namespace are mounted in a pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The namespace used when the pod's own cannot be read (outside a cluster).
pub const FALLBACK_NAMESPACE: &str = "portcullis";

/// How long one read on a connection to the API server may wait. Longer than a watch
/// lasts ([`crate::WATCH_TIMEOUT`]), so only a server that stopped answering trips it (a
/// request that hangs would otherwise hang for ever).
const READ_TIMEOUT: Duration = Duration::from_secs(90);

/// Why no client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kubeconfig file named by `--kubeconfig` or `KUBECONFIG` is unusable.
    #[error("kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        /// The file (or the `KUBECONFIG` list).
        path: PathBuf,
        /// What kube said.
        source: kube::config::KubeconfigError,
    },
    /// No kubeconfig was given and this is not a pod with a service account.
    #[error(
        "not running in a cluster ({source}); outside a cluster pass --kubeconfig FILE or set \
         KUBECONFIG"
    )]
    InCluster {
        /// What kube said.
        source: kube::config::InClusterError,
    },
    /// The client could not be built from the configuration (TLS, proxy).
    #[error("cannot build a Kubernetes client: {0}")]
    Build(#[from] kube::Error),
}

/// A client for the API server: `kubeconfig` if given, else the files in `KUBECONFIG`
/// (merged, current context), else in-cluster credentials (the service account's token
/// and CA under [`SERVICE_ACCOUNT_DIR`], `KUBERNETES_SERVICE_HOST`/`_PORT`).
pub async fn connect(kubeconfig: Option<&Path>) -> Result<kube::Client, ClientError> {
    let options = KubeConfigOptions::default();
    let mut config = if let Some(path) = kubeconfig {
        let file = Kubeconfig::read_from(path).map_err(|source| ClientError::Kubeconfig {
            path: path.to_owned(),
            source,
        })?;
        custom(file, &options, path).await?
    } else {
        let from_env = Kubeconfig::from_env().map_err(|source| ClientError::Kubeconfig {
            path: PathBuf::from(std::env::var_os("KUBECONFIG").unwrap_or_default()),
            source,
        })?;
        match from_env {
            Some(file) => {
                let path = PathBuf::from(std::env::var_os("KUBECONFIG").unwrap_or_default());
                custom(file, &options, &path).await?
            }
            None => {
                kube::Config::incluster().map_err(|source| ClientError::InCluster { source })?
            }
        }
    };
    config.read_timeout = Some(READ_TIMEOUT);
    Ok(kube::Client::try_from(config)?)
}

async fn custom(
    file: Kubeconfig,
    options: &KubeConfigOptions,
    path: &Path,
) -> Result<kube::Config, ClientError> {
    kube::Config::from_custom_kubeconfig(file, options)
        .await
        .map_err(|source| ClientError::Kubeconfig {
            path: path.to_owned(),
            source,
        })
}

/// The pod's own namespace, from the service account's `namespace` file; else
/// [`FALLBACK_NAMESPACE`].
pub fn own_namespace() -> String {
    namespace_in(Path::new(SERVICE_ACCOUNT_DIR))
}

fn namespace_in(dir: &Path) -> String {
    #[allow(
        clippy::disallowed_methods,
        reason = "read once at start-up, before anything is served"
    )]
    let read = std::fs::read_to_string(dir.join("namespace"));
    read.ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| FALLBACK_NAMESPACE.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::disallowed_methods, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn the_namespace_comes_from_the_service_account_else_portcullis() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(namespace_in(dir.path()), "portcullis");
        std::fs::write(dir.path().join("namespace"), "edge\n").unwrap();
        assert_eq!(namespace_in(dir.path()), "edge");
        std::fs::write(dir.path().join("namespace"), "  \n").unwrap();
        assert_eq!(namespace_in(dir.path()), "portcullis");
    }

    #[tokio::test]
    async fn a_missing_kubeconfig_names_the_file() {
        let Err(err) = connect(Some(Path::new("/nonexistent/kubeconfig"))).await else {
            panic!("a missing kubeconfig gave a client");
        };
        let err = err.to_string();
        assert!(
            err.starts_with("kubeconfig /nonexistent/kubeconfig:"),
            "{err}"
        );
    }
}
