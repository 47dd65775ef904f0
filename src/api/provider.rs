// kube's repeated printcolumn(...) and validation attributes are lists, not duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A place compute can run. Workspaces name one the way a PVC names a StorageClass.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "ComputeProvider",
    doc = "A place compute can run, and the driver that reaches it. Cluster-scoped: Workspaces name one in spec.provider, the way a PersistentVolumeClaim names a StorageClass.",
    shortname = "cprov",
    category = "switchyard",
    status = "ComputeProviderStatus",
    printcolumn(name = "Driver", type_ = "string", json_path = ".spec.driver"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("a ComputeProvider name must be a DNS label (at most 63 lowercase letters, digits and '-', no dots): spec.provider of a Workspace can only name such a provider")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.driver == oldSelf.driver").message("spec.driver is immutable: it decides where compute lives; create another ComputeProvider and switch the workspaces to it"),
    validation = Rule::new("(self.driver == 'http') == has(self.http)").message("spec.http must be set exactly when driver is http"),
    validation = Rule::new("(self.driver == 'kubernetes') == has(self.kubernetes)").message("spec.kubernetes must be set exactly when driver is kubernetes"),
    validation = Rule::new("self.driver == 'simulated' || !has(self.simulated)").message("spec.simulated is only allowed when driver is simulated")
)]
pub struct ComputeProviderSpec {
    /// Which driver talks to this provider.
    pub driver: DriverKind,

    /// Settings of the `http` driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSettings>,

    /// Settings of the `kubernetes` driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesSettings>,

    /// Settings of the in-process `simulated` driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulated: Option<SimulatedSettings>,

    /// How many times, and how patiently, a stop is retried before the switch is released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_policy: Option<StopPolicy>,

    /// Upper bound for one call to the provider, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 600))]
    #[schemars(extend("format" = "int32"))]
    pub call_timeout_seconds: Option<u32>,
}

/// Drivers Switchyard ships.
#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    Http,
    Kubernetes,
    Simulated,
    /// A driver this build does not know (a newer CRD, after a rollback): the provider is
    /// ProviderMisconfigured and nothing is called.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

impl ComputeProviderSpec {
    /// Where compute placed through this provider lives: the settings that, if changed, would
    /// send calls somewhere else. Recorded on every instance; a stop goes out only while the
    /// provider still says the same.
    pub fn location(&self) -> String {
        match (self.driver, &self.http, &self.kubernetes) {
            (DriverKind::Http, Some(h), _) => format!("http {}", h.endpoint.trim_end_matches('/')),
            (DriverKind::Kubernetes, _, Some(k)) => match &k.kubeconfig_secret_ref {
                Some(r) => format!("kubernetes namespace {} via {}/{} key {}", k.namespace, r.namespace, r.name, r.key),
                None => format!("kubernetes namespace {} in this cluster", k.namespace),
            },
            (driver, _, _) => format!("{driver:?}").to_lowercase(),
        }
    }
}

/// An out-of-process provider speaking the Switchyard provider protocol.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpSettings {
    /// Base URL of the provider, e.g. `https://compute.example.com/switchyard`. Immutable: it
    /// decides where compute lives.
    #[schemars(regex(pattern = r"^https?://"), length(max = 2000))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.http.endpoint is immutable: it decides where compute lives; create another ComputeProvider and switch the workspaces to it"))]
    pub endpoint: String,
    /// Secret holding the bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// PEM bundle of CAs trusted for the endpoint, in addition to the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262144))]
    pub ca_bundle: Option<String>,
    /// Send the bearer token over plain http to a host that is not loopback. Off by default:
    /// the token goes only over https, or to 127.0.0.0/8, ::1 and localhost; a provider that
    /// names a token and a plain-http remote endpoint is ProviderMisconfigured. Set it only on a
    /// network you trust end to end (e.g. a service mesh that encrypts the hop).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_insecure_token: bool,
}

/// The type of Secret the `http` driver reads provider tokens from (alternatively, any Secret
/// labelled [`PROVIDER_TOKEN_LABEL`]`: "true"`). Any other Secret named by `spec.http.secretRef`
/// is refused: writing a ComputeProvider must not be a way to send an arbitrary Secret of the
/// controller's namespace to an endpoint of one's choosing.
pub const PROVIDER_TOKEN_TYPE: &str = "switchyard.dev/provider-token";
/// The label that marks a Secret as a provider token (value `"true"`).
pub const PROVIDER_TOKEN_LABEL: &str = "switchyard.dev/provider-token";

/// A key in a namespaced Secret.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Secret (the controller reads Secrets only where its RBAC allows: by
    /// default its own namespace).
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Key within the Secret's data.
    #[serde(default = "default_token_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_token_key() -> String {
    "token".to_string()
}

/// Workspaces run as Pods in a namespace, possibly of another cluster.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.kubeconfigSecretRef) == has(oldSelf.kubeconfigSecretRef)")
    .message("spec.kubernetes.kubeconfigSecretRef is immutable: it decides where compute lives; create another ComputeProvider and switch the workspaces to it"))]
pub struct KubernetesSettings {
    /// Namespace the Pods are created in. Immutable, like the kubeconfig reference.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.kubernetes.namespace is immutable: it decides where compute lives; create another ComputeProvider and switch the workspaces to it"))]
    pub namespace: String,
    /// Secret with a kubeconfig for another cluster; absent means this cluster. The Secret must
    /// be marked as a provider credential (see [`PROVIDER_TOKEN_TYPE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.kubernetes.kubeconfigSecretRef is immutable: it decides where compute lives; create another ComputeProvider and switch the workspaces to it"))]
    pub kubeconfig_secret_ref: Option<SecretKeyRef>,
    /// The uid workspace containers run as. Pods meet the `restricted` Pod Security profile
    /// (runAsNonRoot, no privilege escalation, all capabilities dropped, RuntimeDefault seccomp),
    /// so an image whose user is root (or not numeric) only starts with this set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2147483647))]
    #[schemars(extend("format" = "int64"))]
    pub run_as_user: Option<i64>,
}

/// Behaviour of the in-process simulated cloud.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SimulatedSettings {
    /// Latency of a provision call, in milliseconds.
    #[serde(default)]
    #[schemars(range(min = 0, max = 600000))]
    #[schemars(extend("format" = "int64"))]
    pub provision_latency_ms: u64,
    /// Latency of a stop call, in milliseconds.
    #[serde(default)]
    #[schemars(range(min = 0, max = 600000))]
    #[schemars(extend("format" = "int64"))]
    pub stop_latency_ms: u64,
}

/// Retry policy of stop calls.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StopPolicy {
    /// Attempts before the claim is released with StopFailed.
    #[schemars(range(min = 1, max = 100))]
    #[schemars(extend("format" = "int32"))]
    pub max_attempts: u32,
    /// First backoff between attempts, in milliseconds; doubles each attempt.
    #[schemars(range(min = 1, max = 600000))]
    #[schemars(extend("format" = "int64"))]
    pub initial_backoff_ms: u64,
}

/// Observed health of a provider.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComputeProviderStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready reflects the last health probe.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::conditions::provider_schema")]
    pub conditions: Vec<Condition>,
}
