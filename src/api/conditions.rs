//! Condition types and reasons, Event reasons and actions, and wait reasons. Every reason the
//! controller writes is a value of an enum here, with its wire string, so users, alerts and tests
//! can match on them (README: Reasons lists them, and a test holds the two together).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// A closed set of reasons: each variant names its wire string once. `ALL` lists them for the
/// test that holds the README's reason table to the code. A set may end, after a `;`, with one
/// variant that wraps a reason of another set and reads as its wire string.
macro_rules! reasons {
    ($(#[$doc:meta])* $name:ident {
        $($(#[$vdoc:meta])* $variant:ident = $wire:literal),+ $(,)?
        $(; $(#[$wdoc:meta])* $wrap:ident($inner:ident))?
    }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
            $($(#[$wdoc])* $wrap($inner),)?
        }

        impl $name {
            /// Every value with a wire string of its own, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The string users, alerts and dashboards see; it never changes.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)+
                    $($name::$wrap(inner) => inner.as_str(),)?
                }
            }
        }

        wire_string!($name);
    };
}

/// Display as, and comparison with, the wire string (conditions and Events are read as strings).
macro_rules! wire_string {
    ($name:ident) => {
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.as_str()
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.as_str()
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                self == other.as_str()
            }
        }
    };
}

reasons! {
    /// The reason of a condition the controller writes: Workspace `Ready`, `Reconciling` and
    /// `Stalled` (all three carry the same reason), and ComputeProvider `Ready`.
    ConditionReason {
        // Workspace Ready=True.
        Running = "Running",
        Stopped = "Stopped",
        // Workspace Reconciling=True: an operation is in flight, or about to be.
        Provisioning = "Provisioning",
        Switching = "Switching",
        Stopping = "Stopping",
        Deleting = "Deleting",
        Pending = "Pending",
        // Workspace Stalled=True: needs a fix or a recovery outside the controller.
        ProviderNotFound = "ProviderNotFound",
        ProviderNotReady = "ProviderNotReady",
        /// Also a ComputeProvider's Ready=False: retrying will not heal it.
        ProviderMisconfigured = "ProviderMisconfigured",
        StopFailed = "StopFailed",
        ProvisionFailed = "ProvisionFailed",
        /// status.epoch is at (or beyond) its bound: no further claim is possible.
        EpochOutOfRange = "EpochOutOfRange",
        /// A provider a superseded operation could still call cannot be fenced: the operation waits.
        FenceFailed = "FenceFailed",
        /// The claim in status is not one this controller could have written (an unknown kind or
        /// step, or a step that contradicts the recorded compute): it is not carried out.
        InvalidClaim = "InvalidClaim",
        /// The ComputeProvider holding the compute no longer says where that compute lives (its
        /// driver, endpoint or namespace differ from the instance's `location`): nothing is called.
        ProviderChanged = "ProviderChanged",
        /// The object is too large for the API server to store another write.
        ObjectTooLarge = "ObjectTooLarge",
        // ComputeProvider Ready.
        Healthy = "Healthy",
        Unhealthy = "Unhealthy",
        ProviderDeleting = "ProviderDeleting",
    }
}

reasons! {
    /// What an Event is about, in kube's `action` field: the part of the protocol that reports it.
    EventAction {
        Provision = "Provision",
        Stop = "Stop",
        Abort = "Abort",
        Retarget = "Retarget",
        Fence = "Fence",
        TakeOver = "TakeOver",
        Hold = "Hold",
        Validate = "Validate",
        Write = "Write",
        Collect = "Collect",
        Decode = "Decode",
    }
}

reasons! {
    /// Why a reconcile waits without writing (`Next::Wait`), for logs.
    WaitReason {
        /// Another instance holds a live claim.
        ClaimHeldElsewhere = "ClaimHeldElsewhere",
        /// The backoff after a failed step of our operation.
        Backoff = "Backoff",
        /// The backoff after a stop that failed past its budget.
        StopFailed = "StopFailed",
        /// The backoff after a fence that failed.
        FenceFailed = "FenceFailed",
    }
}

reasons! {
    /// The reason of an Event. Normal Events record the outcome of an operation; Warnings either
    /// have a reason of their own or repeat the Stalled condition's.
    EventReason {
        SwitchCompleted = "SwitchCompleted",
        Provisioned = "Provisioned",
        /// A stop or delete finished.
        ComputeStopped = "ComputeStopped",
        SwitchAborted = "SwitchAborted",
        Retargeted = "Retargeted",
        TookOver = "TookOver",
        /// Warning: a provider was left unfenced on the user's say-so (annotation `switchyard.dev/skip-fence`).
        FenceSkipped = "FenceSkipped",
        /// Warning: the inventory found compute no workspace status names, and stopped it.
        LeakCollected = "LeakCollected",
        /// Warning: the provider knows no instance under the key status.instance records; nothing
        /// was stopped there (the inventory stops any compute that no status names).
        InstanceNotFound = "InstanceNotFound",
        /// Warning: the controller cannot decode the workspace and skips it until it changes.
        InvalidObject = "InvalidObject";
        /// Warning: the workspace is, or goes on being, stalled for this reason.
        Stalled(ConditionReason)
    }
}

/// Sets condition `type_` in `conditions`, keeping `lastTransitionTime` when the status did not change.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: ConditionReason,
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
            c.reason = reason.as_str().to_string();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.as_str().to_string(),
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The README's reason table, as (reason, kind) pairs.
    fn readme_reasons() -> BTreeSet<(String, String)> {
        let readme = include_str!("../../README.md");
        let table = readme.lines().skip_while(|l| !l.starts_with("| reason | kind | meaning |")).skip(2);
        let mut rows = BTreeSet::new();
        for line in table.take_while(|l| l.starts_with('|')) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let reason = cells[1].trim_matches('`').to_string();
            for kind in cells[2].split(',') {
                rows.insert((reason.clone(), kind.trim().to_string()));
            }
        }
        rows
    }

    fn code_reasons() -> BTreeSet<(String, String)> {
        let mut rows = BTreeSet::new();
        let mut add = |kind: &str, reasons: Vec<&str>| {
            rows.extend(reasons.into_iter().map(|r| (r.to_string(), kind.to_string())));
        };
        add("condition", ConditionReason::ALL.iter().map(|r| r.as_str()).collect());
        add("event", EventReason::ALL.iter().map(|r| r.as_str()).collect());
        add("action", EventAction::ALL.iter().map(|r| r.as_str()).collect());
        add("wait", WaitReason::ALL.iter().map(|r| r.as_str()).collect());
        rows
    }

    /// Users, alerts and dashboards match on these strings: the README lists each one the code
    /// can write, and nothing else.
    #[test]
    fn the_readme_lists_exactly_the_reasons_of_the_code() {
        let (readme, code) = (readme_reasons(), code_reasons());
        assert!(readme.len() > 30, "the README's reason table was not found ({} rows)", readme.len());
        let undocumented: Vec<_> = code.difference(&readme).collect();
        let stale: Vec<_> = readme.difference(&code).collect();
        assert!(undocumented.is_empty(), "in the code, not in the README's reason table: {undocumented:?}");
        assert!(stale.is_empty(), "in the README's reason table, not in the code: {stale:?}");
    }

    /// A condition's reason must match metav1.Condition's pattern (CamelCase), and no two values
    /// of one kind share a string.
    #[test]
    fn reasons_are_valid_and_distinct() {
        let valid = |s: &str| {
            s.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && s.chars().all(|c| c.is_ascii_alphanumeric())
        };
        let lists: [Vec<&str>; 4] = [
            ConditionReason::ALL.iter().map(|r| r.as_str()).collect(),
            EventReason::ALL.iter().map(|r| r.as_str()).collect(),
            EventAction::ALL.iter().map(|r| r.as_str()).collect(),
            WaitReason::ALL.iter().map(|r| r.as_str()).collect(),
        ];
        for list in lists {
            assert!(list.iter().all(|s| valid(s)), "{list:?}");
            assert_eq!(list.iter().collect::<BTreeSet<_>>().len(), list.len(), "{list:?}");
        }
        // A Warning about a stall reads as the stall's reason.
        assert_eq!(EventReason::Stalled(ConditionReason::StopFailed).as_str(), "StopFailed");
        assert!(EventReason::ALL.iter().all(|r| !ConditionReason::ALL.iter().any(|c| c.as_str() == r.as_str())));
    }
}
