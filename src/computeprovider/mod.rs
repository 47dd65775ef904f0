//! The ComputeProvider health loop: probes each provider's health through its driver and keeps
//! `Ready` on its status current, so workspaces that name an unhealthy provider stall instead
//! of calling it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::api::conditions::{self as cond, ConditionReason};
use crate::api::{ComputeProvider, ComputeProviderStatus};
use crate::provider::{DispatchError, Dispatcher, DriverError};

/// How often every provider is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(15);
/// How soon a new or changed provider gets its first verdict.
const NOTICE_WITHIN: Duration = Duration::from_secs(1);

/// Probes every cached provider forever — new or changed ones within a second, all of them
/// every `PROBE_EVERY` — writing status only when it changes.
pub async fn probe_forever(client: Client, providers: Store<ComputeProvider>, dispatcher: Dispatcher) {
    let api: Api<ComputeProvider> = Api::all(client);
    // (name, generation, being deleted) → when last probed.
    let mut probed: HashMap<ProbeKey, Instant> = HashMap::new();
    loop {
        let current = providers.state();
        probed.retain(|key, _| current.iter().any(|p| probe_key(p) == *key));
        for provider in current {
            let key = probe_key(&provider);
            if probed.get(&key).is_some_and(|at| at.elapsed() < PROBE_EVERY) {
                continue;
            }
            if let Err(e) = probe(&api, &provider, &dispatcher).await {
                warn!(provider = %provider.name_any(), error = %e, "could not record provider health");
            }
            probed.insert(key, Instant::now());
        }
        tokio::time::sleep(NOTICE_WITHIN).await;
    }
}

type ProbeKey = (String, Option<i64>, bool);

/// What makes a new verdict due at once: another provider, a changed spec, a deletion begun.
fn probe_key(p: &ComputeProvider) -> ProbeKey {
    (p.name_any(), p.metadata.generation, p.metadata.deletion_timestamp.is_some())
}

/// Probes `provider` once and records the verdict in its Ready condition (written only when it
/// changes). A provider being deleted is not probed: it is not Ready, so it gets no new work.
pub async fn probe(
    api: &Api<ComputeProvider>,
    provider: &ComputeProvider,
    dispatcher: &Dispatcher,
) -> kube::Result<()> {
    let verdict = match deleting(provider) {
        Some(verdict) => verdict,
        None => readiness(&dispatcher.health(provider).await),
    };
    write_health(api, provider, verdict).await
}

/// The verdict on a provider whose deletion has begun (`deletionTimestamp` set, finalizers
/// pending): not Ready, so workspaces are not placed there while it goes away.
pub fn deleting(provider: &ComputeProvider) -> Option<(bool, ConditionReason, String)> {
    let since = provider.metadata.deletion_timestamp.as_ref()?;
    let message = format!(
        "ComputeProvider {} is being deleted (since {}): it takes no new workspaces; choose another provider",
        provider.name_any(),
        since.0
    );
    Some((false, ConditionReason::ProviderDeleting, message))
}

/// The Ready condition a probe result means: (ready, reason, message).
pub fn readiness(result: &Result<(), DispatchError>) -> (bool, ConditionReason, String) {
    match result {
        Ok(()) => (true, ConditionReason::Healthy, "health probe succeeded".to_string()),
        // A misconfiguration (missing Secret, unsupported driver, refused credentials) will
        // not heal by retrying; everything else might.
        Err(
            e @ (DispatchError::Unsupported { .. } | DispatchError::Driver { source: DriverError::Rejected(_), .. }),
        ) => (false, ConditionReason::ProviderMisconfigured, e.to_string()),
        Err(e) => (false, ConditionReason::Unhealthy, e.to_string()),
    }
}

async fn write_health(
    api: &Api<ComputeProvider>,
    provider: &ComputeProvider,
    (ready, reason, message): (bool, ConditionReason, String),
) -> kube::Result<()> {
    let mut status = provider.status.clone().unwrap_or_default();
    let before = status.clone();
    let now = Time(Timestamp::now());
    let generation = provider.metadata.generation;
    cond::set(&mut status.conditions, cond::READY, ready, reason, message.clone(), generation, &now);
    status.observed_generation = generation;
    if same(&before, &status) {
        return Ok(());
    }
    info!(provider = %provider.name_any(), ready, %reason, %message, "provider health changed");
    let patch = json!({"status": status});
    api.patch_status(&provider.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}

fn same(a: &ComputeProviderStatus, b: &ComputeProviderStatus) -> bool {
    a.observed_generation == b.observed_generation
        && a.conditions.len() == b.conditions.len()
        && a.conditions.iter().zip(&b.conditions).all(|(x, y)| {
            (x.type_.as_str(), x.status.as_str(), x.reason.as_str(), x.message.as_str())
                == (y.type_.as_str(), y.status.as_str(), y.reason.as_str(), y.message.as_str())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DriverKind;

    #[test]
    fn readiness_separates_misconfiguration_from_outages() {
        let rejected = Err(DispatchError::Driver {
            provider: "p".into(),
            source: DriverError::Rejected("secret default/token not found".into()),
        });
        let (ready, reason, message) = readiness(&rejected);
        assert!(!ready);
        assert_eq!(reason, ConditionReason::ProviderMisconfigured);
        assert!(message.contains("secret default/token not found"));

        let unsupported = Err(DispatchError::Unsupported { provider: "p".into(), driver: DriverKind::Http });
        assert_eq!(readiness(&unsupported).1, ConditionReason::ProviderMisconfigured);

        let down =
            Err(DispatchError::Driver { provider: "p".into(), source: DriverError::Transient("refused".into()) });
        assert_eq!(readiness(&down).1, ConditionReason::Unhealthy);
        let slow = Err(DispatchError::Timeout { provider: "p".into(), after: Duration::from_secs(3) });
        assert_eq!(readiness(&slow).1, ConditionReason::Unhealthy);

        assert_eq!(readiness(&Ok(())), (true, ConditionReason::Healthy, "health probe succeeded".to_string()));
    }

    #[test]
    fn a_provider_being_deleted_is_not_ready_whatever_its_health() {
        let mut p: ComputeProvider = serde_json::from_value(json!({
            "apiVersion": "switchyard.dev/v1alpha1", "kind": "ComputeProvider",
            "metadata": {"name": "east", "generation": 3}, "spec": {"driver": "simulated"}
        }))
        .expect("provider");
        assert_eq!(deleting(&p), None);
        let before = probe_key(&p);
        p.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        let (ready, reason, message) = deleting(&p).expect("deleting");
        assert!(!ready);
        assert_eq!(reason, ConditionReason::ProviderDeleting);
        assert!(message.contains("east is being deleted") && message.contains("no new workspaces"), "{message}");
        assert_ne!(probe_key(&p), before, "a deletion begun is noticed without waiting out the probe period");
    }
}
