//! Condition types and reasons, and Event reasons. Every reason the controller writes is a
//! constant here, so users, alerts and tests can match on them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

// Ready=True.
pub const RUNNING: &str = "Running";
pub const STOPPED: &str = "Stopped";
// Reconciling=True: an operation is in flight.
pub const PROVISIONING: &str = "Provisioning";
pub const SWITCHING: &str = "Switching";
pub const STOPPING: &str = "Stopping";
pub const DELETING: &str = "Deleting";
pub const CLAIM_HELD_ELSEWHERE: &str = "ClaimHeldElsewhere";
/// Why a holder waits: the backoff after a failed step.
pub const BACKOFF: &str = "Backoff";
pub const PENDING: &str = "Pending";
// Stalled=True: needs a fix or a recovery outside the controller.
pub const PROVIDER_NOT_FOUND: &str = "ProviderNotFound";
pub const PROVIDER_NOT_READY: &str = "ProviderNotReady";
pub const PROVIDER_MISCONFIGURED: &str = "ProviderMisconfigured";
pub const STOP_FAILED: &str = "StopFailed";
pub const PROVISION_FAILED: &str = "ProvisionFailed";
/// status.epoch is at (or beyond) its bound: no further claim is possible.
pub const EPOCH_OUT_OF_RANGE: &str = "EpochOutOfRange";
/// A provider a superseded operation could still call cannot be fenced: the operation waits.
pub const FENCE_FAILED: &str = "FenceFailed";
/// The claim in status is not one this controller could have written (an unknown kind or step,
/// or a step that contradicts the recorded compute): it is not carried out.
pub const INVALID_CLAIM: &str = "InvalidClaim";
/// The ComputeProvider holding the compute no longer says where that compute lives (its
/// driver, endpoint or namespace differ from the instance's `location`): nothing is called.
pub const PROVIDER_CHANGED: &str = "ProviderChanged";
/// The object is too large for the API server to store another write.
pub const OBJECT_TOO_LARGE: &str = "ObjectTooLarge";
// ComputeProvider Ready.
pub const HEALTHY: &str = "Healthy";
pub const UNHEALTHY: &str = "Unhealthy";
pub const PROVIDER_DELETING: &str = "ProviderDeleting";
// Normal Events: the outcome of an operation (Warnings use the Stalled reasons above).
pub const SWITCH_COMPLETED: &str = "SwitchCompleted";
pub const PROVISIONED: &str = "Provisioned";
pub const COMPUTE_STOPPED: &str = "ComputeStopped";
pub const SWITCH_ABORTED: &str = "SwitchAborted";
pub const RETARGETED: &str = "Retargeted";
pub const TOOK_OVER: &str = "TookOver";
/// Warning: a provider was left unfenced on the user's say-so (annotation `switchyard.dev/skip-fence`).
pub const FENCE_SKIPPED: &str = "FenceSkipped";
/// Warning: the inventory found compute no workspace status names, and stopped it.
pub const LEAK_COLLECTED: &str = "LeakCollected";
/// Warning: the provider knows no instance under the key status.instance records; nothing
/// was stopped there (the inventory stops any compute that no status names).
pub const INSTANCE_NOT_FOUND: &str = "InstanceNotFound";
/// Warning: the controller cannot decode the workspace and skips it until it changes.
pub const INVALID_OBJECT: &str = "InvalidObject";

/// Sets condition `type_` in `conditions`, keeping `lastTransitionTime` when the status did not change.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: &Time,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now.clone();
            }
            c.status = status;
            c.reason = reason.to_string();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            observed_generation: generation,
            last_transition_time: now.clone(),
        }),
    }
}

/// The condition of `type_`, if present.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when condition `type_` is present with status "True".
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == "True")
}

/// The most characters of a Workspace condition's message (metav1.Condition's own bound). Its
/// messages can quote a ComputeProvider's, so that bound is lower.
pub const MAX_WORKSPACE_MESSAGE: u64 = 32768;
/// The most characters of a ComputeProvider condition's message.
pub const MAX_PROVIDER_MESSAGE: u64 = 16384;
/// The most conditions a status holds (the controller writes three).
const MAX_CONDITIONS: u64 = 8;

/// `status.conditions` of a Workspace: see [`bounded`].
pub(crate) fn workspace_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    bounded(generator, MAX_WORKSPACE_MESSAGE)
}

/// `status.conditions` of a ComputeProvider: see [`bounded`].
pub(crate) fn provider_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    bounded(generator, MAX_PROVIDER_MESSAGE)
}

/// A list of metav1.Conditions with the validation the upstream type declares in Go markers but
/// k8s-openapi's schema lacks: type and reason patterns and lengths, status True/False/Unknown,
/// observedGeneration >= 0, and a bounded message, so no condition can grow an object without limit.
fn bounded(generator: &mut schemars::SchemaGenerator, max_message: u64) -> schemars::Schema {
    let mut item = generator.subschema_for::<Condition>();
    let bounds = [
        (
            "type",
            serde_json::json!({"maxLength": 316,
            "pattern": r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"}),
        ),
        ("status", serde_json::json!({"enum": ["True", "False", "Unknown"]})),
        ("observedGeneration", serde_json::json!({"minimum": 0})),
        (
            "reason",
            serde_json::json!({"minLength": 1, "maxLength": 1024,
            "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"}),
        ),
        ("message", serde_json::json!({"maxLength": max_message})),
    ];
    let properties = item.get_mut("properties").and_then(serde_json::Value::as_object_mut);
    if let Some(properties) = properties {
        for (field, extra) in bounds {
            if let (Some(schema), Some(extra)) =
                (properties.get_mut(field).and_then(serde_json::Value::as_object_mut), extra.as_object())
            {
                schema.extend(extra.clone());
            }
        }
    }
    schemars::json_schema!({
        "type": "array",
        "maxItems": MAX_CONDITIONS,
        "items": item,
    })
}
