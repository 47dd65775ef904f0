// kube's repeated printcolumn(...) and validation attributes are lists, not duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A unit of compute that Switchyard places on the provider named in `spec.provider`, and moves
/// when that name changes.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "Workspace",
    doc = "A unit of compute that Switchyard places on the ComputeProvider named in spec.provider, and moves (stopping the old compute before recording the new provider) when that name changes.",
    namespaced,
    shortname = "ws",
    category = "switchyard",
    status = "WorkspaceStatus",
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.provider", description = "Desired provider"),
    printcolumn(
        name = "Active",
        type_ = "string",
        json_path = ".status.activeProvider",
        description = "Provider the compute is placed on"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("!has(oldSelf.status) || has(self.status)")
        .message("status cannot be removed once written (it carries the fencing epoch)"),
    validation = Rule::new("!has(oldSelf.status) || !has(oldSelf.status.epoch) || (has(self.status) && has(self.status.epoch) && self.status.epoch >= oldSelf.status.epoch)")
        .message("status.epoch must never decrease or be removed")
)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceSpec {
    /// Name of the cluster-scoped ComputeProvider this workspace runs on. Changing it switches
    /// the workspace: the old compute is stopped before the new provider is recorded.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub provider: String,

    /// Desired power state: false stops the compute without deleting the workspace.
    #[serde(default = "default_running")]
    pub running: bool,

    /// What to run. Opaque to the controller: passed as-is to the provider's driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<WorkspaceTemplate>,
}

impl Workspace {
    /// The claim in flight, if any.
    pub fn operation(&self) -> Option<&Operation> {
        self.status.as_ref().and_then(|s| s.operation.as_deref())
    }

    /// The provision key of the claim in flight, if any (and if the object has a uid, as every
    /// stored one does): whatever that operation may have created on its target is found under it.
    pub fn in_flight_key(&self) -> Option<String> {
        let op = self.operation()?;
        Some(provision_key(self.metadata.uid.as_deref()?, &op.id))
    }

    /// Whether the workspace is settled on `provider`, running or stopped as its spec says
    /// (see `WorkspaceStatus::settled`).
    pub fn settled_on(&self, provider: &str) -> bool {
        self.status.as_ref().is_some_and(|s| s.settled(provider, self.spec.running, self.metadata.generation))
    }

    /// How this object, as observed, breaks the kstatus rules (DESIGN.md §3.7), if it does:
    /// Ready present once the controller has written status, Ready=False whenever Reconciling
    /// or Stalled is True, at most one of those two True, observedGeneration not ahead of
    /// generation. The schema-defaulted status of a new object breaks none.
    pub fn kstatus_breach(&self) -> Option<String> {
        use super::conditions as cond;
        let s = self.status.as_ref()?;
        if s.conditions.is_empty() && s.phase.is_none() {
            return None; // never written by the controller yet
        }
        let reconciling = cond::is_true(&s.conditions, cond::RECONCILING);
        let stalled = cond::is_true(&s.conditions, cond::STALLED);
        let name = kube::ResourceExt::name_any(self);
        let Some(ready) = cond::get(&s.conditions, cond::READY) else {
            return Some(format!("{name}: Ready missing"));
        };
        if (reconciling || stalled) && ready.status != "False" {
            return Some(format!("{name}: Ready={} while Reconciling={reconciling} Stalled={stalled}", ready.status));
        }
        if reconciling && stalled {
            return Some(format!("{name}: Reconciling and Stalled both True"));
        }
        if s.observed_generation > self.metadata.generation {
            return Some(format!(
                "{name}: observedGeneration {:?} > generation {:?}",
                s.observed_generation, self.metadata.generation
            ));
        }
        None
    }
}

impl WorkspaceStatus {
    /// Whether this status says the workspace has converged (DESIGN.md §3.5) on `provider`,
    /// with compute there exactly when it should be `running`: no operation, Ready, and written
    /// for the object's `generation`.
    fn settled(&self, provider: &str, running: bool, generation: Option<i64>) -> bool {
        let compute_as_wanted = match &self.instance {
            Some(i) => running && i.provider == provider,
            None => !running,
        };
        self.operation.is_none()
            && self.active_provider.as_deref() == Some(provider)
            && compute_as_wanted
            && super::conditions::is_true(&self.conditions, super::conditions::READY)
            && self.observed_generation == generation
    }
}

/// The provision key of an operation: derived from the workspace and the claim, so a retried
/// or resumed provision returns the same instance instead of creating a second one.
pub fn provision_key(workspace_uid: &str, operation_id: &str) -> String {
    format!("{workspace_uid}.{operation_id}")
}

fn default_running() -> bool {
    true
}

/// What the provider should run for this workspace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.args) || has(self.image)").message("template.args requires template.image"))]
#[x_kube(validation = Rule::new("!has(self.env) || self.env.all(k, size(k) <= 256)").message("template.env names are at most 256 characters"))]
#[x_kube(validation = Rule::new("!has(self.args) || self.args.map(a, size(a)).sum() <= 16384").message("template.args are at most 16384 characters in all"))]
#[x_kube(validation = Rule::new("!has(self.env) || self.env.map(k, size(k) + size(self.env[k])).sum() <= 16384").message("template.env names and values are at most 16384 characters in all"))]
pub struct WorkspaceTemplate {
    /// Container or machine image to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Size class understood by the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,

    /// Arguments passed to the image's entrypoint (at most 64, each at most 4096 characters,
    /// 16384 in all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub args: Option<Vec<String>>,

    /// Environment variables for the workload (at most 64; names up to 256, values up to 4096
    /// characters, names and values 16384 in all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64, "additionalProperties" = {"type": "string", "maxLength": 4096}))]
    pub env: Option<BTreeMap<String, String>>,
}

/// Size class of a workspace's compute.
#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    Small,
    Medium,
    Large,
}

/// What the controller observed and is doing. Written only by the controller.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// One-word summary for people and printer columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// Provider the compute is placed on (or was last placed on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub active_provider: Option<String>,

    /// The current compute, absent when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<Instance>,

    /// Fencing counter: incremented by every claim, never decreases. Passed to providers so
    /// that a paused former holder of a claim cannot act after a takeover.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= oldSelf").message("status.epoch must never decrease"))]
    #[schemars(range(min = 0, max = MAX_EPOCH))]
    pub epoch: i64,

    /// The claim: present only while a side-effecting operation is in flight.
    // Boxed: absent at rest, it would otherwise make every cached workspace 240 bytes larger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Box<Operation>>,

    /// The last switch that finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_switch: Option<LastSwitch>,

    /// Providers a released operation could still call under an older epoch (its holder let
    /// go of the claim before finishing). The next claim raises their fence first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 63)))]
    pub unfenced: Vec<String>,

    /// Ready, Reconciling and Stalled, with kstatus polarity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::conditions::workspace_schema")]
    pub conditions: Vec<Condition>,
}

/// The largest epoch: far beyond any real count of claims, and exact in JSON numbers.
pub const MAX_EPOCH: i64 = (1 << 53) - 1;

/// The most failed attempts recorded; counting saturates there.
pub const MAX_ATTEMPTS: i32 = 1_000_000;

/// The longest `lastError` kept; longer errors are cut.
pub const MAX_ERROR_LEN: usize = 1024;

/// One-word summary of a workspace's state.
#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Provisioning,
    Running,
    Switching,
    Stopping,
    Stopped,
    Failed,
    Terminating,
    /// A value this build does not know (written by a newer Switchyard): read, never written.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// A compute instance at a provider.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// Provider-assigned instance id.
    #[schemars(length(min = 1, max = 1024))]
    pub id: String,
    /// Name of the ComputeProvider that holds the instance.
    #[schemars(length(min = 1, max = 63))]
    pub provider: String,
    /// Idempotency key it was provisioned under.
    #[schemars(length(max = 256))]
    pub key: String,
    /// Where the provider put it: the settings that decide where compute lives (driver and
    /// endpoint, or namespace and cluster), as they were at provision time. A stop is sent
    /// only while the ComputeProvider still says the same, so that a provider re-pointed
    /// elsewhere (or deleted and re-created) cannot turn a stop into a no-op.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub location: Option<String>,
    /// A stop of this instance was sent and its outcome is unknown (it failed past its budget,
    /// perhaps after taking effect): the instance may be stopped. Before the workspace counts
    /// as running on it again, the provider is asked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unconfirmed: bool,
}

/// The claim on a workspace's compute: who may act, on what, and how far it got.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// Fresh per claim; a writer recognises its own claim by this id.
    #[schemars(length(min = 1, max = 64))]
    pub id: String,
    /// What the claim does to the compute: Provision, Switch, Stop or Delete.
    pub kind: OperationKind,
    /// Provider the compute is leaving (absent for a first provision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub from: Option<String>,
    /// Provider the compute is going to (absent for Stop and Delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub to: Option<String>,
    /// Last step recorded; a restarted controller resumes from here.
    pub step: Step,
    /// Identity of the controller instance holding the claim.
    #[schemars(length(min = 1, max = 253))]
    pub holder: String,
    /// status.epoch at claim time; sent to providers for fencing.
    #[schemars(range(min = 0, max = MAX_EPOCH))]
    pub epoch: i64,
    pub started_at: Time,
    /// Refreshed by the holder; a claim not renewed within the lease may be taken over.
    pub renewed_at: Time,
    /// Failed attempts of the current step.
    #[serde(default)]
    #[schemars(range(min = 0, max = MAX_ATTEMPTS))]
    pub attempts: i32,
    /// Last error seen by the current step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub last_error: Option<String>,
    /// The current step is not retried before this time (backoff after a failure). Kept by a
    /// takeover, so a new holder waits out the same backoff instead of starting it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Time>,
    /// Providers this operation may call: its `from`, its `to`, and every target a retarget
    /// named. A takeover raises the fence at each of them before any other provider call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 63)))]
    pub reach: Vec<String>,
    /// Providers that must see this operation's epoch (an explicit fence call) before it makes
    /// any other provider call: those a superseded operation could still call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 63)))]
    pub unfenced: Vec<String>,
}

/// What a claim does to the compute.
#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OperationKind {
    Provision,
    Switch,
    Stop,
    Delete,
    /// A kind this build does not know (a newer Switchyard's claim, after a rollback): the
    /// controller carries out no such claim; it stalls with InvalidClaim.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// How far an operation got. Every step is idempotent, so resuming repeats at most one call.
#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// The claim landed; nothing has been done yet.
    Claimed,
    /// The old compute is confirmed stopped (and, for a switch, the new provider recorded).
    OldStopped,
    /// A step this build does not know: the claim stalls with InvalidClaim.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// The last switch that finished.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LastSwitch {
    /// Provider the compute left.
    #[schemars(length(max = 63))]
    pub from: String,
    /// Provider the compute went to.
    #[schemars(length(max = 63))]
    pub to: String,
    /// When the switch was claimed.
    pub started_at: Time,
    /// When the compute was Ready on the new provider.
    pub completed_at: Time,
}
