//! Which cluster and namespace a user-facing command talks to: the kubeconfig the way kubectl
//! reads it (`$KUBECONFIG`, then `~/.kube/config`, then in-cluster), `--context` and `-n`.

use std::path::PathBuf;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::exit::CliError;

/// Cluster options shared by `switch` and `status`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// Namespace of the workspace (default: the namespace of the kubeconfig context).
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Kubeconfig context to use (default: the current context).
    #[arg(long, value_name = "CONTEXT")]
    pub context: Option<String>,
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then the in-cluster config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

/// A client and the namespace commands act in.
pub struct Cluster {
    pub client: Client,
    pub namespace: String,
}

impl ClusterArgs {
    pub async fn connect(&self) -> Result<Cluster, CliError> {
        let options = KubeConfigOptions { context: self.context.clone(), ..KubeConfigOptions::default() };
        let config = match (&self.kubeconfig, &self.context) {
            (Some(path), _) => Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &options).await?,
            (None, Some(_)) => Config::from_kubeconfig(&options).await?,
            (None, None) => Config::infer().await?,
        };
        let namespace = self.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
        tracing::debug!(cluster = %config.cluster_url, %namespace, "connecting");
        let client = Client::try_from(config).map_err(|e| CliError::api("creating the Kubernetes client", e))?;
        Ok(Cluster { client, namespace })
    }
}
