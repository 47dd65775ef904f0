//! Compute providers: the driver trait, the one dispatcher through which every compute call
//! goes, and the drivers.

mod dispatcher;
pub mod http;
pub mod kubernetes;
pub mod simulated;

pub use dispatcher::{DispatchError, Dispatcher};

use async_trait::async_trait;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use crate::api::{PROVIDER_TOKEN_LABEL, PROVIDER_TOKEN_TYPE, WorkspaceTemplate};

/// Who is calling, for which workspace, under which claim. Every driver call carries it so
/// providers can fence stale callers and the ledger can attribute each call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallContext {
    pub namespace: String,
    pub name: String,
    /// metadata.uid of the workspace: stable across renames of nothing, unique across re-creations.
    pub workspace_uid: String,
    /// status.epoch of the claim the call is made under.
    pub epoch: i64,
    /// Identity of the controller instance making the call.
    pub caller: String,
    /// status.operation.id of the claim.
    pub operation_id: String,
    /// Identity of the cluster (controller deployment) the call comes from. Provision records
    /// it on the instance; two clusters sharing a provider never list or touch each other's.
    pub cluster: String,
}

impl CallContext {
    /// A call about workspace `ws-<uid>` in `default`, under operation `op-<epoch>` at `epoch`,
    /// by `caller` for `cluster`: the calls tests make to a driver without a controller.
    pub fn sample(uid: &str, epoch: i64, caller: &str, cluster: &str) -> Self {
        Self {
            namespace: "default".into(),
            name: format!("ws-{uid}"),
            workspace_uid: uid.into(),
            epoch,
            caller: caller.into(),
            operation_id: format!("op-{epoch}"),
            cluster: cluster.into(),
        }
    }
}

/// What a provision asks for: the call's identity, the idempotency key, the template. One
/// value, as the wire protocol's create request is, so a new field reaches every driver
/// without changing every signature.
#[derive(Clone, Copy, Debug)]
pub struct Provision<'a> {
    pub call: &'a CallContext,
    /// The idempotency key: the same key always names the same instance.
    pub key: &'a str,
    pub template: Option<&'a WorkspaceTemplate>,
}

impl<'a> Provision<'a> {
    /// A provision under `key`, without a template.
    pub fn new(call: &'a CallContext, key: &'a str) -> Self {
        Self { call, key, template: None }
    }
}

/// Whether an instance is consuming compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum InstanceState {
    Running,
    Stopped,
}

/// An instance as the provider reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstanceInfo {
    pub id: String,
    /// Idempotency key the instance was created under.
    pub key: String,
    pub state: InstanceState,
}

/// An instance as a provider-wide inventory [`Driver::list`] reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListedInstance {
    pub id: String,
    /// Idempotency key the instance was created under.
    pub key: String,
    pub workspace_uid: String,
    /// Namespace and name of the workspace, as the provisioning call named them.
    pub namespace: String,
    pub name: String,
    pub state: InstanceState,
    /// The newest epoch this provider has seen for the workspace, if it keeps one.
    pub fence: Option<i64>,
}

/// One page of a provider's inventory.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstancePage {
    pub items: Vec<ListedInstance>,
    /// The token of the next page; None on the last page.
    pub next: Option<String>,
}

/// Bounds of a [`Driver::list`] page size: every implementation clamps `limit` into this.
pub const LIST_LIMIT_MAX: u32 = 500;
/// Longest page token a provider may hand out (and a caller may send back).
pub const PAGE_TOKEN_MAX: usize = 1024;

/// `limit` clamped to 1..=[`LIST_LIMIT_MAX`].
pub fn clamp_limit(limit: u32) -> u32 {
    limit.clamp(1, LIST_LIMIT_MAX)
}

/// A failed driver call, classified by whether retrying can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// The provider has seen a newer epoch for this workspace: this caller has been fenced off.
    #[error("refused: epoch {epoch} is older than {newest}, the newest the provider has seen")]
    StaleEpoch { epoch: i64, newest: i64 },
    /// A transient failure (timeout, 5xx, connection reset, lost answer): retrying may help.
    #[error("transient: {0}")]
    Transient(String),
    /// The provider rejected the request itself (bad template, unknown instance kind): retrying
    /// the same call will not help.
    #[error("rejected: {0}")]
    Rejected(String),
}

impl DriverError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, DriverError::Transient(_))
    }
}

/// A compute provider, as the controller needs it. Every method is idempotent. Every call that
/// carries a [`CallContext`] and reaches the provider advances the provider's fence for the
/// workspace, whether it succeeds, fails or only reads; a call older than the fence is refused
/// with [`DriverError::StaleEpoch`] and has no effect. `list` is provider-wide and fences nothing.
#[async_trait]
pub trait Driver: Send + Sync {
    /// Creates the instance for `req.key`, or returns the one already created under that key.
    async fn provision(&self, req: Provision<'_>) -> Result<InstanceInfo, DriverError>;

    /// Stops `instance_id`. An unknown or already stopped instance counts as stopped.
    async fn stop(&self, call: &CallContext, instance_id: &str) -> Result<(), DriverError>;

    /// The instance created under `key`, if any.
    async fn lookup(&self, call: &CallContext, key: &str) -> Result<Option<InstanceInfo>, DriverError>;

    /// Raises this provider's fence for `call.workspace_uid` to `call.epoch` (ledgered, durable).
    /// Err(StaleEpoch) when the provider has already seen a newer epoch. No other effect.
    async fn fence(&self, call: &CallContext) -> Result<(), DriverError>;

    /// One page of the instances this provider holds for `cluster` (running or stopped), in a
    /// stable order; `page` is the token from the previous page (None: first page).
    async fn list(&self, cluster: &str, page: Option<&str>, limit: u32) -> Result<InstancePage, DriverError>;

    /// Whether the provider answers and accepts our credentials; backs ComputeProvider Ready.
    async fn health(&self) -> Result<(), DriverError> {
        Ok(())
    }
}

/// Binds a provider credential to the ComputeProviders that may use it: a comma-separated list
/// of their names. A Secret without it may serve any ComputeProvider that names it.
pub const CREDENTIAL_PROVIDERS_ANNOTATION: &str = "switchyard.dev/providers";

/// Why `secret` must not serve as a credential of ComputeProvider `provider` (a bearer token
/// or a kubeconfig), if it must not. Whoever can write a ComputeProvider chooses where the
/// credential goes, so only Secrets marked for it are read: of type [`PROVIDER_TOKEN_TYPE`], or
/// labelled [`PROVIDER_TOKEN_LABEL`]`=true`; and, when the Secret names its providers
/// ([`CREDENTIAL_PROVIDERS_ANNOTATION`]), only for those.
pub fn credential_refusal(secret: &Secret, provider: &str) -> Option<String> {
    let (namespace, name) = (secret.namespace().unwrap_or_default(), secret.name_any());
    let marked = secret.type_.as_deref() == Some(PROVIDER_TOKEN_TYPE)
        || secret.labels().get(PROVIDER_TOKEN_LABEL).is_some_and(|v| v == "true");
    if !marked {
        return Some(format!(
            "Secret {namespace}/{name} is not marked as a provider credential: label it {PROVIDER_TOKEN_LABEL}=true \
             (kubectl label secret -n {namespace} {name} {PROVIDER_TOKEN_LABEL}=true) or create it with type {PROVIDER_TOKEN_TYPE}"
        ));
    }
    let allowed = secret.annotations().get(CREDENTIAL_PROVIDERS_ANNOTATION)?;
    if allowed.split(',').map(str::trim).any(|p| p == provider) {
        return None;
    }
    Some(format!(
        "Secret {namespace}/{name} is bound to the ComputeProviders {allowed:?} (annotation \
         {CREDENTIAL_PROVIDERS_ANNOTATION}), not to {provider:?}: add {provider} there to let it use the Secret"
    ))
}
