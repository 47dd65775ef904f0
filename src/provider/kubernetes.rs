//! The `kubernetes` driver: each workspace instance is a Pod in the provider's namespace,
//! possibly in another cluster reached through a kubeconfig Secret.
//!
//! - **Name.** `ws-<workspace name prefix>-<hash>`, where the hash covers the workspace UID and
//!   the provision key. The same key always names the same Pod, so `create` itself is the
//!   idempotency check: AlreadyExists means "already provisioned under this key".
//! - **Instance id.** `<namespace>/<pod name>`. The namespace is part of the id so that a stop
//!   still finds the Pod after the provider's `spec.kubernetes.namespace` was edited.
//! - **Provisioned = Running and Ready.** A provision creates (or adopts) the Pod, then waits,
//!   within the call's budget, until it is Running and Ready; past that it answers a transient
//!   error naming what the Pod waits for (a node, an image pull, readiness), so the controller
//!   retries and, after a few attempts, reports it. Lookups and the inventory count any Pod that
//!   exists as compute, ready or not, terminating or not.
//! - **Stop** deletes with `uid` and `resourceVersion` preconditions, then waits until the Pod is
//!   gone (after its graceful termination), so the old Pod has left the cluster before the
//!   caller provisions the new one.
//! - **Fencing.** Each workspace has a fence in the target namespace: a ConfigMap named
//!   [`fence_name`] holding the newest epoch any call brought, raised with a resourceVersion
//!   compare-and-swap. Every call first passes it (refused with `StaleEpoch` if older, raising it
//!   otherwise), whatever the call then does; `fence` does only that. A provision re-reads the
//!   fence after creating its Pod and deletes the Pod again if a newer epoch arrived meanwhile.
//!   Pods also record the newest epoch that touched them (annotation `switchyard.dev/epoch`).
//!   See docs/kubernetes-driver.md for what this does not cover.
//! - **Inventory.** Pods carry the calling cluster's identity (label `switchyard.dev/cluster`);
//!   `list` pages through one cluster's Pods with the API server's own continue tokens.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, EnvVar, Namespace, Pod, PodSecurityContext, PodSpec, ResourceRequirements,
    SeccompProfile, Secret, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::{Client, Config, ResourceExt};
use serde_json::json;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{
    CallContext, Driver, DriverError, InstanceInfo, InstancePage, InstanceState, ListedInstance, PAGE_TOKEN_MAX,
    Provision, clamp_limit,
};
use crate::api::{KubernetesSettings, SecretKeyRef, Size, WorkspaceTemplate};

pub const LABEL_WORKSPACE_UID: &str = "switchyard.dev/workspace-uid";
pub const LABEL_WORKSPACE_NAME: &str = "switchyard.dev/workspace-name";
pub const LABEL_WORKSPACE_NAMESPACE: &str = "switchyard.dev/workspace-namespace";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The cluster (controller deployment) whose call created the Pod; absent when it had none.
pub const LABEL_CLUSTER: &str = "switchyard.dev/cluster";
/// Marks the per-workspace fence ConfigMaps.
pub const LABEL_ROLE: &str = "switchyard.dev/role";
pub const ROLE_FENCE: &str = "fence";
/// Keys of a fence ConfigMap's data.
pub const FENCE_UID_KEY: &str = "workspaceUid";
pub const FENCE_EPOCH_KEY: &str = "epoch";
/// The full provision key; the Pod name only carries a hash of it.
pub const ANNOTATION_KEY: &str = "switchyard.dev/provision-key";
/// The newest epoch that touched the Pod: calls older than this are refused.
pub const ANNOTATION_EPOCH: &str = "switchyard.dev/epoch";
/// Runs when the template names no image: a tiny image that just sleeps.
pub const DEFAULT_IMAGE: &str = "registry.k8s.io/pause:3.10";
pub const CONTAINER_NAME: &str = "workspace";

/// Characters of the workspace name kept in the Pod name, for people reading `kubectl get pods`.
const NAME_PREFIX_MAX: usize = 30;
/// Re-reads after a conflicting concurrent change before giving up with a transient error.
const CONFLICT_RETRIES: usize = 5;
/// Grace period of workspace Pods: how long a stopping workspace may take to shut down.
pub const TERMINATION_GRACE_SECONDS: i64 = 20;
/// Longest piece of a Pod's status (a condition's or a container's message) quoted in an error:
/// the status is written by others, and errors end up in the workspace's status.
const STATUS_MESSAGE_MAX: usize = 200;

/// The deterministic Pod name of the instance provisioned under `key` for a workspace: a
/// readable prefix of the workspace name, then a hash of the workspace UID and the key.
/// A valid DNS-1123 label of at most 50 characters.
pub fn pod_name(workspace_name: &str, workspace_uid: &str, key: &str) -> String {
    let hash = fnv1a64(&[workspace_uid.as_bytes(), b"\0", key.as_bytes()]);
    let prefix: String = workspace_name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .take(NAME_PREFIX_MAX)
        .collect();
    let prefix = prefix.trim_matches('-');
    if prefix.is_empty() { format!("ws-{hash:016x}") } else { format!("ws-{prefix}-{hash:016x}") }
}

/// FNV-1a, 64 bit: stable across Rust versions and platforms (unlike `DefaultHasher`), which a
/// name that must be re-derived after a restart or an upgrade needs.
fn fnv1a64(parts: &[&[u8]]) -> u64 {
    parts
        .iter()
        .flat_map(|p| p.iter())
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The name of the fence ConfigMap of a workspace: deterministic from its UID.
pub fn fence_name(workspace_uid: &str) -> String {
    format!("switchyard-fence-{:016x}", fnv1a64(&[b"fence\0", workspace_uid.as_bytes()]))
}

/// The fence ConfigMap of `call`'s workspace, at `call.epoch`.
pub fn build_fence(call: &CallContext, namespace: &str) -> ConfigMap {
    let labels = BTreeMap::from([
        (LABEL_WORKSPACE_UID.to_string(), label_value(&call.workspace_uid)),
        (LABEL_MANAGED_BY.to_string(), "switchyard".to_string()),
        (LABEL_ROLE.to_string(), ROLE_FENCE.to_string()),
    ]);
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(fence_name(&call.workspace_uid)),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (FENCE_UID_KEY.to_string(), call.workspace_uid.clone()),
            (FENCE_EPOCH_KEY.to_string(), call.epoch.to_string()),
        ])),
        ..Default::default()
    }
}

/// The (workspace uid, epoch) a fence ConfigMap records; None if it is not a readable fence.
pub fn fence_of(cm: &ConfigMap) -> Option<(&str, i64)> {
    let data = cm.data.as_ref()?;
    Some((data.get(FENCE_UID_KEY)?.as_str(), data.get(FENCE_EPOCH_KEY)?.parse().ok()?))
}

/// What passing a fence decides, given what it records (None: no fence yet).
#[derive(Debug, PartialEq, Eq)]
enum Passage {
    /// The fence is at the call's epoch already.
    Through,
    /// Refused: the fence is newer.
    Stale(i64),
    /// The fence must be raised (or created) to the call's epoch.
    Raise,
}

fn passage(recorded: Option<i64>, epoch: i64) -> Passage {
    match recorded {
        Some(newest) if epoch < newest => Passage::Stale(newest),
        Some(newest) if epoch == newest => Passage::Through,
        _ => Passage::Raise,
    }
}

/// The label selector of one cluster's Pods; Pods created without a cluster are listed under "".
pub fn cluster_selector(cluster: &str) -> String {
    match label_value(cluster) {
        v if v.is_empty() => format!("{LABEL_MANAGED_BY}=switchyard,!{LABEL_CLUSTER}"),
        v => format!("{LABEL_MANAGED_BY}=switchyard,{LABEL_CLUSTER}={v}"),
    }
}

/// `value` cut to a valid label value: at most 63 characters, starting and ending alphanumeric.
pub fn label_value(value: &str) -> String {
    let cut: String = value
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .take(63)
        .collect();
    cut.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// The instance id of a Pod: `namespace/name`.
pub fn instance_id(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Splits an instance id into (namespace, name); a bare name is taken to be in `default_ns`.
pub fn parse_instance_id<'a>(id: &'a str, default_ns: &'a str) -> (&'a str, &'a str) {
    id.split_once('/').unwrap_or((default_ns, id))
}

/// CPU and memory of a size class, as (cpu, memory); requests equal limits (Guaranteed QoS) so
/// a workspace gets what its size promises.
pub fn size_resources(size: Size) -> (&'static str, &'static str) {
    match size {
        Size::Small => ("250m", "512Mi"),
        Size::Medium => ("1", "2Gi"),
        Size::Large => ("2", "8Gi"),
    }
}

/// The Pod-level security context of workspace Pods: the `restricted` Pod Security profile
/// (non-root, RuntimeDefault seccomp), with `run_as_user` when the provider sets one.
pub fn pod_security(run_as_user: Option<i64>) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user,
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_string(), ..Default::default() }),
        ..Default::default()
    }
}

/// The container security context of workspace Pods: the `restricted` profile's rules, which
/// a namespace enforcing `pod-security.kubernetes.io/enforce: restricted` admits.
pub fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_string()]), ..Default::default() }),
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_string(), ..Default::default() }),
        ..Default::default()
    }
}

/// The Pod of the instance provisioned under `key`, built from the workspace's template. It
/// meets the `restricted` Pod Security profile ([`pod_security`], [`container_security`]).
pub fn build_pod(call: &CallContext, namespace: &str, key: &str, template: Option<&WorkspaceTemplate>) -> Pod {
    let template = template.cloned().unwrap_or_default();
    let resources = template.size.map(|size| {
        let (cpu, memory) = size_resources(size);
        let amounts: BTreeMap<String, Quantity> = [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect();
        ResourceRequirements { requests: Some(amounts.clone()), limits: Some(amounts), ..Default::default() }
    });
    // BTreeMap order: the same template always yields the same env list.
    let env = template.env.map(|env| {
        env.into_iter().map(|(name, value)| EnvVar { name, value: Some(value), ..Default::default() }).collect()
    });
    let mut labels = BTreeMap::from([
        (LABEL_WORKSPACE_UID.to_string(), label_value(&call.workspace_uid)),
        (LABEL_WORKSPACE_NAME.to_string(), label_value(&call.name)),
        (LABEL_WORKSPACE_NAMESPACE.to_string(), label_value(&call.namespace)),
        (LABEL_MANAGED_BY.to_string(), "switchyard".to_string()),
    ]);
    let cluster = label_value(&call.cluster);
    if !cluster.is_empty() {
        labels.insert(LABEL_CLUSTER.to_string(), cluster);
    }
    let annotations = BTreeMap::from([
        (ANNOTATION_KEY.to_string(), key.to_string()),
        (ANNOTATION_EPOCH.to_string(), call.epoch.to_string()),
    ]);
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&call.name, &call.workspace_uid, key)),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: CONTAINER_NAME.to_string(),
                image: Some(template.image.unwrap_or_else(|| DEFAULT_IMAGE.to_string())),
                args: template.args,
                env,
                resources,
                security_context: Some(container_security()),
                ..Default::default()
            }],
            security_context: Some(pod_security(None)),
            restart_policy: Some("Always".to_string()),
            // Shorter than a stop's wait under the default call timeout (27s of 30s), so one stop
            // call sees the Pod gone even where a kubelet honours the grace period.
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
            // A workspace is user code: it gets no token for the cluster it runs in.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The epoch recorded on a Pod; a missing or unreadable annotation records nothing.
pub fn recorded_epoch(pod: &Pod) -> Option<i64> {
    pod.annotations().get(ANNOTATION_EPOCH).and_then(|e| e.parse().ok())
}

/// Refuses `call` if `pod` records a newer epoch.
fn check_epoch(pod: &Pod, call: &CallContext) -> Result<(), DriverError> {
    match recorded_epoch(pod) {
        Some(newest) if call.epoch < newest => Err(DriverError::StaleEpoch { epoch: call.epoch, newest }),
        _ => Ok(()),
    }
}

/// A Pod is the workspace's compute until it is gone: one being deleted still runs its graceful
/// termination (or sits on a lost node), so only a stop that waits until it is gone stops it.
fn pod_state(_pod: &Pod) -> InstanceState {
    InstanceState::Running
}

/// Whether a Pod is Running and its Ready condition is True: a provision is done then.
pub fn is_running_and_ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `text` cut to [`STATUS_MESSAGE_MAX`] characters.
fn bounded(text: &str) -> String {
    let mut cut: String = text.chars().take(STATUS_MESSAGE_MAX).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}

/// "reason: message", or whichever of the two is there.
fn reason_message(reason: Option<&str>, message: Option<&str>) -> String {
    match (reason.filter(|r| !r.is_empty()), message.filter(|m| !m.is_empty())) {
        (Some(r), Some(m)) => format!("{}: {}", bounded(r), bounded(m)),
        (Some(one), None) | (None, Some(one)) => bounded(one),
        (None, None) => "no reason given".to_string(),
    }
}

/// What keeps a Pod from being Running and Ready, as kubectl would show it: not scheduled (and
/// why), a container waiting (an image pull, a crash loop), or the Ready condition's reason.
pub fn waiting_for(pod: &Pod) -> String {
    let status = pod.status.clone().unwrap_or_default();
    let conditions = status.conditions.unwrap_or_default();
    let condition = |t: &str| conditions.iter().find(|c| c.type_ == t);
    let phase = status.phase.as_deref().unwrap_or("Pending");
    if pod.metadata.deletion_timestamp.is_some() {
        return "it is being deleted".to_string();
    }
    if matches!(phase, "Failed" | "Succeeded") {
        return format!(
            "it has ended ({phase}: {})",
            reason_message(status.reason.as_deref(), status.message.as_deref())
        );
    }
    let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty());
    let Some(node) = node else {
        return match condition("PodScheduled").filter(|c| c.status == "False") {
            Some(c) => format!("it is not scheduled ({})", reason_message(c.reason.as_deref(), c.message.as_deref())),
            None => "it waits for a node (not scheduled yet)".to_string(),
        };
    };
    for c in status.container_statuses.iter().flatten() {
        let state = c.state.clone().unwrap_or_default();
        if let Some(w) = state.waiting {
            let why = reason_message(w.reason.as_deref(), w.message.as_deref());
            return format!("container {} on node {node} is waiting ({why})", c.name);
        }
        if let Some(t) = state.terminated {
            let why = reason_message(t.reason.as_deref(), t.message.as_deref());
            return format!("container {} on node {node} terminated with exit code {} ({why})", c.name, t.exit_code);
        }
    }
    match condition("Ready") {
        Some(c) if c.status != "True" => {
            format!(
                "it is {phase} on node {node}, not Ready ({})",
                reason_message(c.reason.as_deref(), c.message.as_deref())
            )
        }
        _ => format!("it is {phase} on node {node}"),
    }
}

fn info(pod: &Pod, key: &str) -> InstanceInfo {
    InstanceInfo {
        id: instance_id(pod.namespace().as_deref().unwrap_or_default(), &pod.name_any()),
        key: key.to_string(),
        state: pod_state(pod),
    }
}

/// A Pod as the inventory lists it; `fences` are the namespace's fences by workspace uid.
fn listed(pod: &Pod, fences: &HashMap<String, i64>) -> ListedInstance {
    let label = |k: &str| pod.labels().get(k).cloned().unwrap_or_default();
    let workspace_uid = label(LABEL_WORKSPACE_UID);
    let fence = [fences.get(&workspace_uid).copied(), recorded_epoch(pod)].into_iter().flatten().max();
    ListedInstance {
        id: instance_id(pod.namespace().as_deref().unwrap_or_default(), &pod.name_any()),
        key: pod.annotations().get(ANNOTATION_KEY).cloned().unwrap_or_default(),
        workspace_uid,
        namespace: label(LABEL_WORKSPACE_NAMESPACE),
        name: label(LABEL_WORKSPACE_NAME),
        state: pod_state(pod),
        fence,
    }
}

/// Classifies a Kubernetes API error by whether retrying can help; `what` names the call and
/// the object (e.g. "create pod ns/name").
pub fn map_error(what: &str, error: &kube::Error) -> DriverError {
    match error {
        kube::Error::Api(status) => {
            let detail = format!("{what}: {} ({}, HTTP {})", status.message, status.reason, status.code);
            match status.code {
                // Timeouts, throttling, conflicts and server-side failures pass.
                408 | 409 | 429 | 500..=599 => DriverError::Transient(detail),
                _ => DriverError::Rejected(detail),
            }
        }
        // The connection, not the request: refused, reset, timed out.
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            DriverError::Transient(format!("{what}: API server unreachable: {error}"))
        }
        // A proxy answering HTML instead of the API is usually passing.
        kube::Error::SerdeError(_) => DriverError::Transient(format!("{what}: unreadable answer: {error}")),
        _ => DriverError::Rejected(format!("{what}: {error}")),
    }
}

async fn get_pod(pods: &Api<Pod>, name: &str, pod_ref: &str) -> Result<Option<Pod>, DriverError> {
    pods.get_opt(name).await.map_err(|e| map_error(&format!("get pod {pod_ref}"), &e))
}

fn api_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Why the target cluster of a provider could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("the kubernetes driver needs a Kubernetes client; this dispatcher was built without one")]
    NoClient,
    #[error("provider {provider}: spec.kubernetes is missing")]
    NoSettings { provider: String },
    #[error("reading kubeconfig Secret {secret}")]
    ReadSecret {
        secret: String,
        #[source]
        source: kube::Error,
    },
    #[error("kubeconfig Secret {secret}: {problem}")]
    Kubeconfig {
        secret: String,
        #[source]
        problem: KubeconfigProblem,
    },
}

/// What is wrong with a kubeconfig Secret.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigProblem {
    #[error("not found")]
    SecretNotFound,
    /// Not marked as a provider credential, or bound to other providers.
    #[error("{0}")]
    NotACredential(String),
    #[error("no key {0:?}")]
    KeyMissing(String),
    #[error("key {0:?} is not UTF-8")]
    NotUtf8(String),
    /// The parser's message quotes the offending lines, which may hold credentials: dropped.
    #[error("not valid kubeconfig YAML")]
    Syntax,
    #[error("{0}")]
    Invalid(#[source] KubeconfigError),
    #[error("{0}")]
    Unsafe(String),
    #[error("cannot build a client: {0}")]
    Client(#[source] kube::Error),
}

impl From<TargetError> for DriverError {
    fn from(e: TargetError) -> Self {
        match &e {
            TargetError::ReadSecret { source, .. } => map_error(&e.to_string(), source),
            _ => DriverError::Rejected(e.to_string()),
        }
    }
}

/// The kubeconfig under `key` of a Secret, parsed and checked.
fn load_kubeconfig(secret: &Secret, key: &str) -> Result<Kubeconfig, KubeconfigProblem> {
    let bytes =
        secret.data.as_ref().and_then(|d| d.get(key)).ok_or_else(|| KubeconfigProblem::KeyMissing(key.to_string()))?;
    let yaml = std::str::from_utf8(&bytes.0).map_err(|_| KubeconfigProblem::NotUtf8(key.to_string()))?;
    let kubeconfig = Kubeconfig::from_yaml(yaml).map_err(|e| match e {
        KubeconfigError::Parse(_) => KubeconfigProblem::Syntax,
        e => KubeconfigProblem::Invalid(e),
    })?;
    check_kubeconfig(&kubeconfig).map_err(KubeconfigProblem::Unsafe)?;
    Ok(kubeconfig)
}

/// Refuses kubeconfigs that would make the controller read its own files or run commands:
/// whoever can write the Secret must not gain the controller's filesystem or a shell.
fn check_kubeconfig(config: &Kubeconfig) -> Result<(), String> {
    for c in config.clusters.iter().filter_map(|c| c.cluster.as_ref()) {
        if c.certificate_authority.is_some() {
            return Err("certificate-authority file paths are not allowed; use certificate-authority-data".into());
        }
    }
    for a in config.auth_infos.iter().filter_map(|a| a.auth_info.as_ref()) {
        if a.exec.is_some() || a.auth_provider.is_some() {
            return Err(
                "exec and auth-provider credential plugins are not allowed; use a token or client certificate data"
                    .into(),
            );
        }
        if a.token_file.is_some() || a.client_certificate.is_some() || a.client_key.is_some() {
            return Err(
                "file paths (tokenFile, client-certificate, client-key) are not allowed; inline the data".into()
            );
        }
    }
    Ok(())
}

/// A client built from a kubeconfig Secret, and the Secret version it was built from.
struct CachedClient {
    secret: SecretKeyRef,
    version: (Option<String>, Option<String>),
    client: Client,
}

/// The clients of `kubernetes` providers that target another cluster, by provider name.
/// Rebuilt when the provider names another Secret or the Secret changes (uid or
/// resourceVersion), so a rotated kubeconfig takes effect without a restart. Cheap to clone.
#[derive(Clone, Default)]
pub struct Targets {
    clients: Arc<Mutex<HashMap<String, CachedClient>>>,
}

impl Targets {
    /// The client for `provider`: `local` when it names no kubeconfig Secret.
    async fn client(
        &self,
        local: &Client,
        provider: &str,
        settings: &KubernetesSettings,
    ) -> Result<Client, TargetError> {
        let Some(r) = &settings.kubeconfig_secret_ref else { return Ok(local.clone()) };
        let secret_name = format!("{}/{}", r.namespace, r.name);
        let fail = |problem| TargetError::Kubeconfig { secret: secret_name.clone(), problem };
        let secret = Api::<Secret>::namespaced(local.clone(), &r.namespace)
            .get_opt(&r.name)
            .await
            .map_err(|source| TargetError::ReadSecret { secret: secret_name.clone(), source })?
            .ok_or_else(|| fail(KubeconfigProblem::SecretNotFound))?;
        if let Some(refusal) = crate::provider::credential_refusal(&secret, provider) {
            return Err(fail(KubeconfigProblem::NotACredential(refusal)));
        }
        let version = (secret.metadata.uid.clone(), secret.metadata.resource_version.clone());
        if let Some(cached) = self.lock().get(provider).filter(|c| &c.secret == r && c.version == version) {
            return Ok(cached.client.clone());
        }
        let kubeconfig = load_kubeconfig(&secret, &r.key).map_err(fail)?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| fail(KubeconfigProblem::Invalid(e)))?;
        let client = Client::try_from(config).map_err(|e| fail(KubeconfigProblem::Client(e)))?;
        info!(provider, secret = %secret_name, resource_version = ?version.1, "built client from kubeconfig Secret");
        self.lock().insert(provider.to_string(), CachedClient { secret: r.clone(), version, client: client.clone() });
        Ok(client)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CachedClient>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `kubernetes` driver of one ComputeProvider.
pub struct KubernetesDriver {
    provider: String,
    settings: Option<KubernetesSettings>,
    /// The controller's own cluster: the default target, and where kubeconfig Secrets live.
    local: Option<Client>,
    targets: Targets,
    /// How long a provision waits for its Pod to be Ready, and a stop for its Pod to be gone,
    /// before reporting a transient failure that says what the Pod waits for.
    wait: Duration,
}

impl KubernetesDriver {
    /// `call_timeout` is the dispatcher's bound on one call; a provision or a stop gives up
    /// waiting a little earlier so its error says what it was waiting for.
    pub fn new(
        provider: &str,
        settings: Option<KubernetesSettings>,
        local: Option<Client>,
        targets: Targets,
        call_timeout: Duration,
    ) -> Self {
        let wait = call_timeout.mul_f64(0.9);
        Self { provider: provider.to_string(), settings, local, targets, wait }
    }

    /// The target client and the provider's namespace.
    async fn target(&self) -> Result<(Client, &str), DriverError> {
        let settings =
            self.settings.as_ref().ok_or_else(|| TargetError::NoSettings { provider: self.provider.clone() })?;
        let local = self.local.as_ref().ok_or(TargetError::NoClient)?;
        let client = self.targets.client(local, &self.provider, settings).await?;
        Ok((client, settings.namespace.as_str()))
    }

    /// Passes `call` through its workspace's fence in `namespace`: refuses it with `StaleEpoch`
    /// if the fence is newer, otherwise raises the fence to its epoch (creating it on first
    /// use). Every raise is a compare-and-swap on the ConfigMap's resourceVersion, so two
    /// callers can never lower each other's fence.
    async fn pass_fence(&self, client: &Client, namespace: &str, call: &CallContext) -> Result<(), DriverError> {
        let fences: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let name = fence_name(&call.workspace_uid);
        let fence_ref = format!("{namespace}/{name}");
        for _ in 0..CONFLICT_RETRIES {
            let current =
                fences.get_opt(&name).await.map_err(|e| map_error(&format!("get configmap {fence_ref}"), &e))?;
            let recorded = match &current {
                None => None,
                Some(cm) => match fence_of(cm) {
                    Some((uid, epoch)) if uid == call.workspace_uid => Some(epoch),
                    _ => {
                        return Err(DriverError::Rejected(format!(
                            "configmap {fence_ref} is not the fence of workspace {}; refusing to use it",
                            call.workspace_uid
                        )));
                    }
                },
            };
            let result = match (passage(recorded, call.epoch), current) {
                (Passage::Through, _) => return Ok(()),
                (Passage::Stale(newest), _) => {
                    debug!(provider = %self.provider, fence = %fence_ref, epoch = call.epoch, newest, "call refused by the fence");
                    return Err(DriverError::StaleEpoch { epoch: call.epoch, newest });
                }
                (Passage::Raise, None) => fences.create(&PostParams::default(), &build_fence(call, namespace)).await,
                (Passage::Raise, Some(mut cm)) => {
                    // The resourceVersion read stays on the object: replace is conditional on it.
                    cm.data.get_or_insert_default().insert(FENCE_EPOCH_KEY.to_string(), call.epoch.to_string());
                    fences.replace(&name, &PostParams::default(), &cm).await
                }
            };
            match result {
                Ok(_) => {
                    debug!(provider = %self.provider, fence = %fence_ref, epoch = call.epoch, "fence raised");
                    return Ok(());
                }
                // Someone else created or raised it in between: judge the call again.
                Err(e) if api_code(&e) == Some(409) => {}
                Err(e) => return Err(map_error(&format!("write configmap {fence_ref}"), &e)),
            }
        }
        Err(DriverError::Transient(format!("fence of workspace {} kept changing", call.workspace_uid)))
    }

    /// The epoch the fence of `workspace_uid` in `namespace` records, if any.
    async fn read_fence(
        &self,
        client: &Client,
        namespace: &str,
        workspace_uid: &str,
    ) -> Result<Option<i64>, DriverError> {
        let name = fence_name(workspace_uid);
        let cm = Api::<ConfigMap>::namespaced(client.clone(), namespace)
            .get_opt(&name)
            .await
            .map_err(|e| map_error(&format!("get configmap {namespace}/{name}"), &e))?;
        Ok(cm.as_ref().and_then(fence_of).filter(|(uid, _)| *uid == workspace_uid).map(|(_, epoch)| epoch))
    }

    /// After creating `pod`: if a newer epoch reached the fence meanwhile, the caller was fenced
    /// off while its create was in flight, so the Pod is deleted again (only that Pod, by uid).
    async fn recheck_after_create(
        &self,
        client: &Client,
        pods: &Api<Pod>,
        namespace: &str,
        created: &Pod,
        call: &CallContext,
    ) -> Result<(), DriverError> {
        let Some(newest) = self.read_fence(client, namespace, &call.workspace_uid).await? else { return Ok(()) };
        if newest <= call.epoch {
            return Ok(());
        }
        let name = created.name_any();
        warn!(provider = %self.provider, pod = %format!("{namespace}/{name}"), epoch = call.epoch, newest,
            "the fence moved past a provision in flight; deleting its pod");
        let params = DeleteParams {
            preconditions: Some(Preconditions { uid: created.metadata.uid.clone(), resource_version: None }),
            ..Default::default()
        };
        match pods.delete(&name, &params).await {
            Ok(_) => {}
            Err(e) if matches!(api_code(&e), Some(404 | 409)) => {}
            Err(e) => return Err(map_error(&format!("delete pod {namespace}/{name}"), &e)),
        }
        Err(DriverError::StaleEpoch { epoch: call.epoch, newest })
    }

    /// Refuses a provision when a Pod of the workspace in the namespace has seen a newer epoch.
    async fn check_workspace_epoch(
        &self,
        pods: &Api<Pod>,
        namespace: &str,
        call: &CallContext,
    ) -> Result<(), DriverError> {
        let selector = format!("{LABEL_WORKSPACE_UID}={}", label_value(&call.workspace_uid));
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| map_error(&format!("list pods in {namespace} of workspace {}", call.workspace_uid), &e))?;
        list.items.iter().try_for_each(|pod| check_epoch(pod, call))
    }

    /// Records `call.epoch` on `pod` if it is newer than what the Pod records. Conditional on
    /// the resourceVersion read, so two raisers cannot lower each other's epoch.
    async fn raise_epoch(&self, pods: &Api<Pod>, pod: &Pod, call: &CallContext) -> Result<bool, kube::Error> {
        if recorded_epoch(pod).is_some_and(|e| e >= call.epoch) {
            return Ok(true);
        }
        let patch = json!({"metadata": {
            "resourceVersion": pod.resource_version(),
            "annotations": {ANNOTATION_EPOCH: call.epoch.to_string()},
        }});
        match pods.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(true),
            Err(e) if matches!(api_code(&e), Some(409 | 404)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads Pod `name` until `settled` says what became of it, or the wait budget is spent:
    /// then the error says what the Pod was still waiting for (`what` of the last Pod read).
    async fn poll_pod<T>(
        &self,
        pods: &Api<Pod>,
        pod_ref: &str,
        name: &str,
        settled: impl Fn(Option<&Pod>) -> Option<T>,
        what: impl Fn(Option<&Pod>) -> String,
    ) -> Result<T, DriverError> {
        let deadline = Instant::now() + self.wait;
        let mut delay = Duration::from_millis(50);
        loop {
            let current = get_pod(pods, name, pod_ref).await?;
            if let Some(outcome) = settled(current.as_ref()) {
                return Ok(outcome);
            }
            if Instant::now() + delay > deadline {
                return Err(DriverError::Transient(format!(
                    "pod {pod_ref}: {} after {}s",
                    what(current.as_ref()),
                    self.wait.as_secs()
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    /// Waits until no Pod `name` with `uid` exists: the stop is done once its graceful
    /// termination is over.
    async fn wait_gone(
        &self,
        pods: &Api<Pod>,
        pod_ref: &str,
        name: &str,
        uid: Option<&str>,
    ) -> Result<(), DriverError> {
        // A Pod with another UID under the same name is not ours: ours is gone.
        let gone = |pod: Option<&Pod>| pod.is_none_or(|p| p.metadata.uid.as_deref() != uid).then_some(());
        let what = |pod: Option<&Pod>| match pod.and_then(|p| p.spec.as_ref()?.node_name.clone()) {
            Some(node) => format!("still terminating on node {node}"),
            None => "still terminating".to_string(),
        };
        self.poll_pod(pods, pod_ref, name, gone, what).await
    }

    /// Waits until the Pod `created` is Running and Ready. A Pod that ended (Failed or
    /// Succeeded: evicted, or its node lost) is deleted, so that the next attempt, under the
    /// same key and so the same name, creates it afresh.
    async fn wait_ready(&self, pods: &Api<Pod>, pod_ref: &str, created: &Pod) -> Result<(), DriverError> {
        enum Settled {
            Ready,
            Gone,
            Ended(String),
        }
        let uid = created.metadata.uid.as_deref();
        let name = created.name_any();
        let settled = |pod: Option<&Pod>| match pod.filter(|p| p.metadata.uid.as_deref() == uid) {
            None => Some(Settled::Gone),
            Some(p) if p.metadata.deletion_timestamp.is_some() => Some(Settled::Gone),
            Some(p) if is_running_and_ready(p) => Some(Settled::Ready),
            Some(p) if matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Failed" | "Succeeded")) => {
                Some(Settled::Ended(waiting_for(p)))
            }
            Some(_) => None,
        };
        let what = |pod: Option<&Pod>| match pod {
            Some(p) => format!("not Running and Ready: {}", waiting_for(p)),
            None => "gone".to_string(),
        };
        match self.poll_pod(pods, pod_ref, &name, settled, what).await? {
            Settled::Ready => Ok(()),
            Settled::Gone => Err(DriverError::Transient(format!(
                "pod {pod_ref} was deleted before it was Ready (by someone else, or its node went away)"
            ))),
            Settled::Ended(why) => {
                let params = DeleteParams {
                    preconditions: Some(Preconditions { uid: uid.map(str::to_string), resource_version: None }),
                    ..Default::default()
                };
                match pods.delete(&name, &params).await {
                    Ok(_) => {
                        info!(provider = %self.provider, pod = %pod_ref, reason = %why, "deleted a pod that ended before it was ready")
                    }
                    Err(e) if matches!(api_code(&e), Some(404 | 409)) => {}
                    Err(e) => return Err(map_error(&format!("delete pod {pod_ref}"), &e)),
                }
                Err(DriverError::Transient(format!(
                    "pod {pod_ref}: {why}; deleted it so that the next attempt creates it again"
                )))
            }
        }
    }
}

#[async_trait]
impl Driver for KubernetesDriver {
    /// Creates the Pod for `key`, or adopts the one already created under `key`, and waits
    /// until it is Running and Ready.
    async fn provision(&self, req: Provision<'_>) -> Result<InstanceInfo, DriverError> {
        let Provision { call, key, template } = req;
        let (client, namespace) = self.target().await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let mut pod = build_pod(call, namespace, key, template);
        let run_as_user = self.settings.as_ref().and_then(|s| s.run_as_user);
        if let Some(spec) = pod.spec.as_mut().filter(|_| run_as_user.is_some()) {
            spec.security_context = Some(pod_security(run_as_user));
        }
        let name = pod.name_any();
        let pod_ref = format!("{namespace}/{name}");
        self.pass_fence(&client, namespace, call).await?;
        self.check_workspace_epoch(&pods, namespace, call).await?;
        for _ in 0..CONFLICT_RETRIES {
            match pods.create(&PostParams::default(), &pod).await {
                Ok(created) => {
                    info!(provider = %self.provider, pod = %pod_ref, key, epoch = call.epoch, "pod created");
                    self.recheck_after_create(&client, &pods, namespace, &created, call).await?;
                    self.wait_ready(&pods, &pod_ref, &created).await?;
                    info!(provider = %self.provider, pod = %pod_ref, key, "pod running and ready");
                    return Ok(info(&created, key));
                }
                Err(e) if api_code(&e) == Some(409) => {}
                Err(e) => return Err(map_error(&format!("create pod {pod_ref}"), &e)),
            }
            // AlreadyExists: the key was provisioned before (a retry, a resumed operation).
            let Some(existing) = get_pod(&pods, &name, &pod_ref).await? else { continue };
            let existing_key = existing.annotations().get(ANNOTATION_KEY).map(String::as_str);
            if existing_key != Some(key) {
                return Err(DriverError::Rejected(format!(
                    "pod {pod_ref} exists but was not created under key {key} (it records {existing_key:?})"
                )));
            }
            check_epoch(&existing, call)?;
            if existing.metadata.deletion_timestamp.is_some() {
                return Err(DriverError::Transient(format!("pod {pod_ref} of key {key} is being deleted")));
            }
            if self
                .raise_epoch(&pods, &existing, call)
                .await
                .map_err(|e| map_error(&format!("annotate pod {pod_ref}"), &e))?
            {
                debug!(provider = %self.provider, pod = %pod_ref, key, epoch = call.epoch, "pod already provisioned under key");
                self.wait_ready(&pods, &pod_ref, &existing).await?;
                return Ok(info(&existing, key));
            }
        }
        Err(DriverError::Transient(format!("pod {pod_ref} kept changing during provision")))
    }

    /// Deletes the Pod (only the one whose UID and resourceVersion were checked), then waits
    /// until it is gone. A Pod that does not exist counts as stopped.
    async fn stop(&self, call: &CallContext, instance_id: &str) -> Result<(), DriverError> {
        let (client, default_ns) = self.target().await?;
        self.pass_fence(&client, default_ns, call).await?;
        let (namespace, name) = parse_instance_id(instance_id, default_ns);
        let pods: Api<Pod> = Api::namespaced(client, namespace);
        let pod_ref = format!("{namespace}/{name}");
        for _ in 0..CONFLICT_RETRIES {
            let Some(pod) = get_pod(&pods, name, &pod_ref).await? else {
                debug!(provider = %self.provider, pod = %pod_ref, "pod already gone");
                return Ok(());
            };
            // A stop must never reach another workspace's Pod, whatever the caller thinks.
            let owner = pod.labels().get(LABEL_WORKSPACE_UID);
            if owner.map(String::as_str) != Some(label_value(&call.workspace_uid).as_str()) {
                return Err(DriverError::Rejected(format!(
                    "pod {pod_ref} does not belong to workspace {} (labelled {owner:?}); refusing to delete it",
                    call.workspace_uid
                )));
            }
            check_epoch(&pod, call)?;
            let uid = pod.metadata.uid.clone();
            if pod.metadata.deletion_timestamp.is_none() {
                // The resourceVersion precondition makes the epoch check and the delete one step:
                // a newer caller raising the epoch in between makes this delete fail.
                let params = DeleteParams {
                    preconditions: Some(Preconditions { uid: uid.clone(), resource_version: pod.resource_version() }),
                    ..Default::default()
                };
                match pods.delete(name, &params).await {
                    Ok(_) => info!(provider = %self.provider, pod = %pod_ref, epoch = call.epoch, "pod deleted"),
                    Err(e) if api_code(&e) == Some(404) => return Ok(()),
                    Err(e) if api_code(&e) == Some(409) => continue,
                    Err(e) => return Err(map_error(&format!("delete pod {pod_ref}"), &e)),
                }
            }
            return self.wait_gone(&pods, &pod_ref, name, uid.as_deref()).await;
        }
        Err(DriverError::Transient(format!("pod {pod_ref} kept changing during stop")))
    }

    async fn lookup(&self, call: &CallContext, key: &str) -> Result<Option<InstanceInfo>, DriverError> {
        let (client, namespace) = self.target().await?;
        self.pass_fence(&client, namespace, call).await?;
        let pods: Api<Pod> = Api::namespaced(client, namespace);
        let name = pod_name(&call.name, &call.workspace_uid, key);
        let pod_ref = format!("{namespace}/{name}");
        Ok(get_pod(&pods, &name, &pod_ref).await?.and_then(|pod| {
            let recorded = pod.annotations().get(ANNOTATION_KEY);
            if recorded.map(String::as_str) == Some(key) {
                Some(info(&pod, key))
            } else {
                warn!(provider = %self.provider, pod = %pod_ref, ?recorded, key, "pod under the key's name records another key");
                None
            }
        }))
    }

    /// Raises the workspace's fence ConfigMap in the target namespace to the call's epoch.
    async fn fence(&self, call: &CallContext) -> Result<(), DriverError> {
        let (client, namespace) = self.target().await?;
        self.pass_fence(&client, namespace, call).await?;
        info!(provider = %self.provider, namespace, workspace_uid = %call.workspace_uid, epoch = call.epoch, "fence raised");
        Ok(())
    }

    /// One page of `cluster`'s Pods in the target namespace, in the API server's (stable, by
    /// name) order; the page token is the API server's continue token.
    async fn list(&self, cluster: &str, page: Option<&str>, limit: u32) -> Result<InstancePage, DriverError> {
        if page.is_some_and(|p| p.is_empty() || p.len() > PAGE_TOKEN_MAX) {
            return Err(DriverError::Rejected(format!("page token must be 1-{PAGE_TOKEN_MAX} characters")));
        }
        let (client, namespace) = self.target().await?;
        let mut params = ListParams::default().labels(&cluster_selector(cluster)).limit(clamp_limit(limit));
        if let Some(page) = page {
            params = params.continue_token(page);
        }
        let list = match Api::<Pod>::namespaced(client.clone(), namespace).list(&params).await {
            Ok(list) => list,
            // The continue token outlived the API server's history: start the walk again.
            Err(e) if api_code(&e) == Some(410) => {
                return Err(DriverError::Transient(format!(
                    "list pods in {namespace}: the page token expired; list again from the first page"
                )));
            }
            Err(e) => return Err(map_error(&format!("list pods in {namespace}"), &e)),
        };
        let fences = Api::<ConfigMap>::namespaced(client, namespace)
            .list(&ListParams::default().labels(&format!("{LABEL_ROLE}={ROLE_FENCE}")))
            .await
            .map_err(|e| map_error(&format!("list fence configmaps in {namespace}"), &e))?;
        let fences: HashMap<String, i64> =
            fences.items.iter().filter_map(fence_of).map(|(uid, epoch)| (label_value(uid), epoch)).collect();
        let next = list.metadata.continue_.filter(|c| !c.is_empty());
        if next.as_ref().is_some_and(|c| c.len() > PAGE_TOKEN_MAX) {
            return Err(DriverError::Transient(format!("list pods in {namespace}: the continue token is over-long")));
        }
        Ok(InstancePage { items: list.items.iter().map(|pod| listed(pod, &fences)).collect(), next })
    }

    /// The target namespace exists and answers. Credentials scoped to one namespace may not read
    /// Namespaces: then listing one Pod there is the proof.
    async fn health(&self) -> Result<(), DriverError> {
        let (client, namespace) = self.target().await?;
        match Api::<Namespace>::all(client.clone()).get_opt(namespace).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(DriverError::Rejected(format!("namespace {namespace} does not exist"))),
            Err(e) if api_code(&e) == Some(403) => Api::<Pod>::namespaced(client, namespace)
                .list(&ListParams::default().limit(1))
                .await
                .map(|_| ())
                .map_err(|e| map_error(&format!("list pods in {namespace}"), &e)),
            Err(e) => Err(map_error(&format!("get namespace {namespace}"), &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    fn call(epoch: i64) -> CallContext {
        CallContext {
            namespace: "team-a".into(),
            name: "alice".into(),
            workspace_uid: "0f6c3f5e-5d0b-4a8e-9a57-3c1f0d2b9e11".into(),
            epoch,
            caller: "test".into(),
            operation_id: "op-1".into(),
            cluster: "east-1".into(),
        }
    }

    fn is_dns1123_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    fn api_error(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure("boom", reason).with_code(code)))
    }

    #[test]
    fn the_pod_name_is_stable_per_uid_and_key() {
        let a = pod_name("alice", "uid-1", "uid-1.op-1");
        assert_eq!(a, pod_name("alice", "uid-1", "uid-1.op-1"));
        assert_ne!(a, pod_name("alice", "uid-1", "uid-1.op-2"));
        assert_ne!(a, pod_name("alice", "uid-2", "uid-1.op-1"));
        assert!(a.starts_with("ws-alice-"), "{a}");
        // Pinned: a name that changed across versions would orphan every Pod after an upgrade.
        assert_eq!(
            pod_name("alice", "uid-1", "uid-1.op-1"),
            format!("ws-alice-{:016x}", fnv1a64(&[b"uid-1\0uid-1.op-1"]))
        );
        assert_eq!(fnv1a64(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn the_pod_name_is_a_dns_label_whatever_the_workspace_name() {
        let long = "a".repeat(253);
        for ws in ["alice", "my.dotted.name", "-x-", "...", "", long.as_str(), "UPPER_case"] {
            let name = pod_name(ws, "0f6c3f5e-5d0b-4a8e-9a57-3c1f0d2b9e11", "k");
            assert!(is_dns1123_label(&name), "{ws:?} gave {name:?}");
        }
        assert_eq!(pod_name("...", "u", "k"), format!("ws-{:016x}", fnv1a64(&[b"u\0k"])));
        assert!(pod_name("my.dotted.name", "u", "k").starts_with("ws-my-dotted-name-"));
    }

    #[test]
    fn label_values_are_cut_to_63_and_end_alphanumeric() {
        assert_eq!(label_value("alice"), "alice");
        let v = label_value(&format!("{}-{}", "a".repeat(62), "b"));
        assert_eq!(v.len(), 62, "a trailing '-' at the cut is dropped: {v}");
        assert!(label_value(&"x".repeat(300)).len() <= 63);
        assert_eq!(label_value("a b/c"), "a_b_c");
    }

    #[test]
    fn instance_ids_carry_the_namespace() {
        assert_eq!(instance_id("ns", "ws-x"), "ns/ws-x");
        assert_eq!(parse_instance_id("ns/ws-x", "other"), ("ns", "ws-x"));
        assert_eq!(parse_instance_id("ws-x", "other"), ("other", "ws-x"));
    }

    #[test]
    fn the_pod_is_built_from_the_template() {
        let template = WorkspaceTemplate {
            image: Some("ghcr.io/acme/devbox:1".into()),
            size: Some(Size::Medium),
            args: Some(vec!["--listen".into(), ":8080".into()]),
            env: Some(BTreeMap::from([("B".into(), "2".into()), ("A".into(), "1".into())])),
        };
        let pod = build_pod(&call(7), "compute", "uid.op-1", Some(&template));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("compute"));
        assert_eq!(pod.metadata.name, Some(pod_name("alice", &call(7).workspace_uid, "uid.op-1")));
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels[LABEL_WORKSPACE_UID], call(7).workspace_uid);
        assert_eq!(labels[LABEL_WORKSPACE_NAME], "alice");
        assert_eq!(labels[LABEL_WORKSPACE_NAMESPACE], "team-a");
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(annotations[ANNOTATION_KEY], "uid.op-1");
        assert_eq!(annotations[ANNOTATION_EPOCH], "7");
        assert_eq!(recorded_epoch(&pod), Some(7));

        let spec = pod.spec.unwrap_or_default();
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        let [c] = spec.containers.as_slice() else { panic!("one container expected: {:?}", spec.containers) };
        assert_eq!(c.name, CONTAINER_NAME);
        assert_eq!(c.image.as_deref(), Some("ghcr.io/acme/devbox:1"));
        assert_eq!(c.args, template.args);
        let env: Vec<(String, Option<String>)> =
            c.env.clone().unwrap_or_default().into_iter().map(|e| (e.name, e.value)).collect();
        assert_eq!(env, vec![("A".into(), Some("1".into())), ("B".into(), Some("2".into()))]);
        let resources = c.resources.clone().unwrap_or_default();
        let expect =
            BTreeMap::from([("cpu".to_string(), Quantity("1".into())), ("memory".to_string(), Quantity("2Gi".into()))]);
        assert_eq!(resources.requests, Some(expect.clone()));
        assert_eq!(resources.limits, Some(expect));
    }

    #[test]
    fn pods_meet_the_restricted_pod_security_profile() {
        let pod = build_pod(&call(1), "compute", "k", None);
        let spec = pod.spec.unwrap_or_default();
        let ps = spec.security_context.clone().unwrap_or_default();
        assert_eq!(ps.run_as_non_root, Some(true));
        assert_eq!(ps.seccomp_profile.map(|p| p.type_).as_deref(), Some("RuntimeDefault"));
        for c in &spec.containers {
            let sc = c.security_context.clone().unwrap_or_default();
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(sc.capabilities.and_then(|c| c.drop), Some(vec!["ALL".to_string()]));
            assert_eq!(sc.run_as_non_root, Some(true));
            assert_ne!(sc.privileged, Some(true));
        }
        assert_eq!(pod_security(Some(1000)).run_as_user, Some(1000));
    }

    #[test]
    fn an_empty_template_runs_the_placeholder_image_without_resources() {
        for template in [None, Some(WorkspaceTemplate::default())] {
            let pod = build_pod(&call(1), "compute", "k", template.as_ref());
            let c = &pod.spec.unwrap_or_default().containers[0];
            assert_eq!(c.image.as_deref(), Some(DEFAULT_IMAGE));
            assert_eq!((c.args.clone(), c.env.clone(), c.resources.clone()), (None, None, None));
        }
    }

    #[test]
    fn every_size_has_resources() {
        assert_eq!(size_resources(Size::Small), ("250m", "512Mi"));
        assert_eq!(size_resources(Size::Medium), ("1", "2Gi"));
        assert_eq!(size_resources(Size::Large), ("2", "8Gi"));
    }

    #[test]
    fn an_older_epoch_than_the_pod_records_is_refused() {
        let pod = build_pod(&call(5), "compute", "k", None);
        assert_eq!(check_epoch(&pod, &call(4)), Err(DriverError::StaleEpoch { epoch: 4, newest: 5 }));
        assert_eq!(check_epoch(&pod, &call(5)), Ok(()));
        assert_eq!(check_epoch(&pod, &call(6)), Ok(()));
        let mut unrecorded = pod.clone();
        unrecorded.metadata.annotations = None;
        assert_eq!(check_epoch(&unrecorded, &call(0)), Ok(()));
    }

    #[test]
    fn fences_pass_equal_refuse_older_and_raise_newer() {
        assert_eq!(passage(None, 1), Passage::Raise);
        assert_eq!(passage(Some(3), 3), Passage::Through);
        assert_eq!(passage(Some(3), 2), Passage::Stale(3));
        assert_eq!(passage(Some(3), 4), Passage::Raise);
        let cm = build_fence(&call(7), "compute");
        assert_eq!(cm.metadata.name, Some(fence_name(&call(7).workspace_uid)));
        assert_eq!(fence_of(&cm), Some((call(7).workspace_uid.as_str(), 7)));
        assert_eq!(cm.labels()[LABEL_ROLE], ROLE_FENCE);
        assert!(is_dns1123_label(&fence_name("0f6c3f5e-5d0b-4a8e-9a57-3c1f0d2b9e11")));
        assert_ne!(fence_name("a"), fence_name("b"));
        // Pinned: a name that changed across versions would forget every fence after an upgrade.
        assert_eq!(fence_name("u"), format!("switchyard-fence-{:016x}", fnv1a64(&[b"fence\0u"])));
        let mut garbled = cm.clone();
        garbled.data = Some(BTreeMap::from([(FENCE_EPOCH_KEY.to_string(), "x".to_string())]));
        assert_eq!(fence_of(&garbled), None);
    }

    #[test]
    fn pods_carry_the_cluster_and_are_listed_by_it() {
        let pod = build_pod(&call(1), "compute", "k", None);
        assert_eq!(pod.labels()[LABEL_CLUSTER], "east-1");
        let mut none = call(1);
        none.cluster = String::new();
        assert!(!build_pod(&none, "compute", "k", None).labels().contains_key(LABEL_CLUSTER));
        assert_eq!(cluster_selector("east-1"), "app.kubernetes.io/managed-by=switchyard,switchyard.dev/cluster=east-1");
        assert_eq!(cluster_selector(""), "app.kubernetes.io/managed-by=switchyard,!switchyard.dev/cluster");
        let fences = HashMap::from([(call(1).workspace_uid, 9)]);
        let item = listed(&pod, &fences);
        assert_eq!((item.key.as_str(), item.namespace.as_str(), item.name.as_str()), ("k", "team-a", "alice"));
        assert_eq!((item.state, item.fence), (InstanceState::Running, Some(9)));
        assert_eq!(listed(&pod, &HashMap::new()).fence, Some(1), "without a fence, the Pod's own record");
    }

    #[test]
    fn a_pod_being_deleted_still_runs_until_it_is_gone() {
        let mut pod = build_pod(&call(1), "compute", "k", None);
        assert_eq!(info(&pod, "k").state, InstanceState::Running);
        assert_eq!(info(&pod, "k").id, format!("compute/{}", pod.name_any()));
        pod.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
        assert_eq!(info(&pod, "k").state, InstanceState::Running, "its graceful termination is still running");
        assert_eq!(listed(&pod, &HashMap::new()).state, InstanceState::Running);
    }

    fn pod_status(status: serde_json::Value) -> Pod {
        let mut pod = build_pod(&call(1), "compute", "k", None);
        pod.status = Some(serde_json::from_value(status).expect("status"));
        pod
    }

    #[test]
    fn only_a_running_and_ready_pod_is_provisioned() {
        let ready = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
        assert!(is_running_and_ready(&pod_status(ready)));
        let unready = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]});
        assert!(!is_running_and_ready(&pod_status(unready)));
        let pending = json!({"phase": "Pending", "conditions": [{"type": "Ready", "status": "True"}]});
        assert!(!is_running_and_ready(&pod_status(pending)));
        assert!(!is_running_and_ready(&build_pod(&call(1), "compute", "k", None)), "no status yet");
    }

    #[test]
    fn what_a_pod_waits_for_is_said_as_kubectl_would() {
        let unscheduled = pod_status(json!({"phase": "Pending", "conditions": [{"type": "PodScheduled",
            "status": "False", "reason": "Unschedulable", "message": "0/2 nodes are available: 2 Insufficient cpu."}]}));
        assert_eq!(
            waiting_for(&unscheduled),
            "it is not scheduled (Unschedulable: 0/2 nodes are available: 2 Insufficient cpu.)"
        );
        assert_eq!(waiting_for(&pod_status(json!({"phase": "Pending"}))), "it waits for a node (not scheduled yet)");

        let mut pulling =
            pod_status(json!({"phase": "Pending", "containerStatuses": [{"name": "workspace", "image": "x",
            "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x\""}}}]}));
        pulling.spec.get_or_insert_default().node_name = Some("node-1".into());
        assert_eq!(
            waiting_for(&pulling),
            "container workspace on node node-1 is waiting (ImagePullBackOff: Back-off pulling image \"x\")"
        );

        let mut unready = pod_status(json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False",
            "reason": "ContainersNotReady", "message": "containers with unready status: [workspace]"}]}));
        unready.spec.get_or_insert_default().node_name = Some("node-1".into());
        assert_eq!(
            waiting_for(&unready),
            "it is Running on node node-1, not Ready (ContainersNotReady: containers with unready status: [workspace])"
        );
        let ended =
            pod_status(json!({"phase": "Failed", "reason": "Evicted", "message": "The node was low on memory."}));
        assert_eq!(waiting_for(&ended), "it has ended (Failed: Evicted: The node was low on memory.)");

        // Others write Pod status: what is quoted from it is bounded.
        let long = pod_status(json!({"phase": "Failed", "reason": "Evicted", "message": "m".repeat(10_000)}));
        assert!(waiting_for(&long).len() < 2 * STATUS_MESSAGE_MAX + 100, "{}", waiting_for(&long).len());
    }

    #[test]
    fn server_side_trouble_is_transient_and_refusals_are_rejected() {
        for (code, reason) in [
            (500, "InternalError"),
            (503, "ServiceUnavailable"),
            (504, "Timeout"),
            (429, "TooManyRequests"),
            (408, "Timeout"),
            (409, "Conflict"),
        ] {
            let e = map_error("create pod ns/p", &api_error(code, reason));
            assert!(
                matches!(&e, DriverError::Transient(m) if m.contains("ns/p") && m.contains(&code.to_string())),
                "{code}: {e:?}"
            );
        }
        for (code, reason) in
            [(400, "BadRequest"), (403, "Forbidden"), (422, "Invalid"), (401, "Unauthorized"), (404, "NotFound")]
        {
            let e = map_error("create pod ns/p", &api_error(code, reason));
            assert!(
                matches!(&e, DriverError::Rejected(m) if m.contains("ns/p") && m.contains(reason)),
                "{code}: {e:?}"
            );
        }
        let unreachable = kube::Error::Service("connection refused".into());
        assert!(map_error("get pod ns/p", &unreachable).is_retryable());
        let garbage = kube::Error::SerdeError(serde_json::from_str::<i32>("<html>").unwrap_err());
        assert!(map_error("get pod ns/p", &garbage).is_retryable());
    }

    #[test]
    fn target_errors_name_the_secret() {
        let problem = KubeconfigProblem::SecretNotFound;
        let e: DriverError = TargetError::Kubeconfig { secret: "ops/remote".into(), problem }.into();
        assert_eq!(e, DriverError::Rejected("kubeconfig Secret ops/remote: not found".into()));
        let e: DriverError =
            TargetError::ReadSecret { secret: "ops/remote".into(), source: api_error(503, "ServiceUnavailable") }
                .into();
        assert!(matches!(&e, DriverError::Transient(m) if m.contains("ops/remote")), "{e:?}");
    }

    fn secret(key: &str, value: &[u8]) -> Secret {
        Secret {
            data: Some(BTreeMap::from([(key.to_string(), k8s_openapi::ByteString(value.to_vec()))])),
            ..Default::default()
        }
    }

    #[test]
    fn a_kubeconfig_that_does_not_parse_is_not_echoed() {
        let yaml = "users: [{name: u, user: {token: s3cr3t-t0ken}}]\nclusters: [\n  - {name: s3cr3t-t0ken2";
        let Err(problem) = load_kubeconfig(&secret("kubeconfig", yaml.as_bytes()), "kubeconfig") else {
            panic!("parsed")
        };
        let message = DriverError::from(TargetError::Kubeconfig { secret: "ops/remote".into(), problem }).to_string();
        assert!(message.contains("ops/remote") && message.contains("YAML"), "{message}");
        assert!(!message.contains("s3cr3t"), "Secret content in the error: {message}");
    }

    #[test]
    fn a_kubeconfig_secret_needs_the_key_and_utf8() {
        let s = secret("kubeconfig", b"\xff");
        assert!(matches!(load_kubeconfig(&s, "token"), Err(KubeconfigProblem::KeyMissing(k)) if k == "token"));
        assert!(matches!(load_kubeconfig(&s, "kubeconfig"), Err(KubeconfigProblem::NotUtf8(_))));
    }

    #[test]
    fn kubeconfigs_that_reach_into_the_controller_are_refused() {
        let inline = r#"
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443", certificate-authority-data: "AAAA"}}]
users: [{name: u, user: {token: "t"}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"#;
        let config = Kubeconfig::from_yaml(inline).unwrap_or_default();
        assert_eq!(check_kubeconfig(&config), Ok(()));
        for (from, to) in [
            (r#"token: "t""#, r#"exec: {command: "/bin/sh", apiVersion: "client.authentication.k8s.io/v1"}"#),
            (r#"token: "t""#, r#"tokenFile: "/var/run/secrets/kubernetes.io/serviceaccount/token""#),
            (r#"certificate-authority-data: "AAAA""#, r#"certificate-authority: "/etc/ssl/ca.pem""#),
        ] {
            let yaml = inline.replace(from, to);
            let config = Kubeconfig::from_yaml(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
            assert!(check_kubeconfig(&config).is_err(), "{to} accepted");
        }
    }
}
