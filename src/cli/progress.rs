//! What one observed version of a workspace says about a switch: pure, so `switch --wait`
//! prints exactly one line per transition and its rules are unit-tested.

use crate::api::conditions as cond;
use crate::api::{OperationKind, Step, Workspace};

/// What `switch --wait` waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub provider: String,
    /// metadata.generation that carries our spec.provider; older statuses do not count.
    pub generation: Option<i64>,
}

/// Where a switch stands, as seen in one version of the workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stage {
    /// No controller has written a status for the target generation yet.
    NotObserved,
    /// A claim is held: `status.operation`.
    Operation { kind: OperationKind, step: Step, from: Option<String>, to: Option<String>, holder: String, epoch: i64 },
    /// Observed, no claim, not Ready yet (e.g. waiting to be provisioned).
    Waiting { reason: String, message: String },
    /// Done: Ready with the compute (if it runs) on the target provider.
    Ready { provider: String, instance: Option<String> },
    /// Stalled=True: needs a fix the controller cannot make.
    Stalled { reason: String, message: String },
    /// Someone changed spec.provider to another provider meanwhile.
    Retargeted { provider: String },
    /// The workspace is being deleted.
    Deleting,
}

impl Stage {
    /// The lines to print on entering this stage (none for NotObserved).
    pub fn lines(&self) -> Vec<String> {
        match self {
            Stage::NotObserved => vec![],
            Stage::Operation { kind, step, from, to, holder, epoch } => {
                let claimed = format!("claimed by {holder} (epoch {epoch})");
                let from = from.as_deref().unwrap_or("the old provider");
                let to = to.as_deref().unwrap_or("the new provider");
                match (kind, step) {
                    (OperationKind::Switch, Step::Claimed) => {
                        vec![format!("{claimed}: stopping the compute on {from}")]
                    }
                    (OperationKind::Switch, Step::OldStopped) => vec![
                        format!("old compute stopped on {from}; active provider is now {to}"),
                        format!("provisioning on {to}"),
                    ],
                    (OperationKind::Provision, _) => vec![format!("{claimed}: provisioning on {to}")],
                    (OperationKind::Stop, _) => vec![format!("{claimed}: stopping the compute on {from}")],
                    (OperationKind::Delete, _) => vec![format!("{claimed}: deleting the compute")],
                    (OperationKind::Unknown, _) | (_, Step::Unknown) => {
                        vec![format!("{claimed}: an operation this version does not know")]
                    }
                }
            }
            Stage::Waiting { reason, message } => vec![format!("{reason}: {message}")],
            Stage::Ready { provider, instance: Some(id) } => vec![format!("Ready on {provider} (instance {id})")],
            Stage::Ready { provider, instance: None } => {
                vec![format!("Ready on {provider} (no compute: spec.running is false)")]
            }
            Stage::Stalled { reason, message } => vec![format!("Stalled ({reason}): {message}")],
            Stage::Retargeted { provider } => vec![format!("spec.provider was changed to {provider} meanwhile")],
            Stage::Deleting => vec!["the workspace is being deleted".to_string()],
        }
    }

    /// A short description for "last seen" in a timeout message.
    pub fn summary(&self) -> String {
        match self {
            Stage::NotObserved => "no controller has acted on the change yet".to_string(),
            other => other.lines().join("; "),
        }
    }
}

/// The stage `ws` is in, with respect to `target`.
pub fn stage(ws: &Workspace, target: &Target) -> Stage {
    if ws.metadata.generation < target.generation {
        return Stage::NotObserved; // a version from before our patch
    }
    if ws.metadata.deletion_timestamp.is_some() {
        return Stage::Deleting;
    }
    if ws.spec.provider != target.provider {
        return Stage::Retargeted { provider: ws.spec.provider.clone() };
    }
    let Some(status) = ws.status.as_ref() else { return Stage::NotObserved };
    if status.observed_generation.unwrap_or(0) < target.generation.unwrap_or(0) || status.conditions.is_empty() {
        return Stage::NotObserved;
    }
    if let Some(stalled) = cond::get(&status.conditions, cond::STALLED).filter(|c| c.status == "True") {
        return Stage::Stalled { reason: stalled.reason.clone(), message: stalled.message.clone() };
    }
    if let Some(op) = &status.operation {
        return Stage::Operation {
            kind: op.kind,
            step: op.step,
            from: op.from.clone(),
            to: op.to.clone(),
            holder: op.holder.clone(),
            epoch: op.epoch,
        };
    }
    let on_target = status.active_provider.as_deref() == Some(target.provider.as_str())
        && status.instance.as_ref().is_none_or(|i| i.provider == target.provider);
    if on_target && cond::is_true(&status.conditions, cond::READY) {
        return Stage::Ready {
            provider: target.provider.clone(),
            instance: status.instance.as_ref().map(|i| i.id.clone()),
        };
    }
    let ready = cond::get(&status.conditions, cond::READY);
    Stage::Waiting {
        reason: ready.map(|c| c.reason.clone()).unwrap_or_default(),
        message: ready.map(|c| c.message.clone()).unwrap_or_default(),
    }
}

/// The in-flight operation's last error, as (attempts, error).
pub fn last_error(ws: &Workspace) -> Option<(i32, String)> {
    let op = ws.status.as_ref()?.operation.as_ref()?;
    op.last_error.clone().map(|e| (op.attempts, e))
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::api::Instance;
    use crate::controller::status::{self, Stall};

    fn now() -> Time {
        Time(Timestamp::UNIX_EPOCH)
    }

    fn ws(provider: &str, generation: i64) -> Workspace {
        Workspace::builder("ws-1", provider).generation(generation).build()
    }

    fn on(mut ws: Workspace, status: crate::api::WorkspaceStatus) -> Workspace {
        ws.status = Some(status);
        ws
    }

    fn target(provider: &str, generation: i64) -> Target {
        Target { name: "ws-1".into(), provider: provider.into(), generation: Some(generation) }
    }

    fn instance(provider: &str) -> Instance {
        Instance::new(format!("i-{provider}"), provider, "k")
    }

    /// Ready on `a` at generation 1, then spec.provider patched to `b` (generation 2).
    fn patched_to_b() -> Workspace {
        let running = on(ws("a", 1), status::provisioned(&ws("a", 1), instance("a"), &now()));
        let mut patched = running.clone();
        patched.spec.provider = "b".into();
        patched.metadata.generation = Some(2);
        patched
    }

    #[test]
    fn a_status_of_an_older_generation_is_not_progress() {
        // Still Ready on a, as observed at generation 1: not done, not failed.
        assert_eq!(stage(&patched_to_b(), &target("b", 2)), Stage::NotObserved);
        assert_eq!(stage(&ws("b", 2), &target("b", 2)), Stage::NotObserved);
    }

    #[test]
    fn a_switch_goes_claimed_then_old_stopped_then_ready() {
        let t = target("b", 2);
        let w = patched_to_b();
        let claimed = on(
            w.clone(),
            status::claimed(&w, "op-1", OperationKind::Switch, Some("a".into()), Some("b".into()), "ctl", &now()),
        );
        let s = stage(&claimed, &t);
        assert_eq!(s.lines(), vec!["claimed by ctl (epoch 1): stopping the compute on a"]);
        let stopped = on(claimed.clone(), status::committed(&claimed, &now()));
        assert_eq!(
            stage(&stopped, &t).lines(),
            vec!["old compute stopped on a; active provider is now b", "provisioning on b"]
        );
        let failed = on(
            stopped.clone(),
            status::step_failed(&stopped, cond::ConditionReason::ProvisionFailed, "quota", 3, &now(), &now()),
        );
        assert_eq!(stage(&failed, &t), stage(&stopped, &t), "a failed attempt is not a new stage");
        assert_eq!(last_error(&failed), Some((1, "quota".to_string())));
        let ready = on(stopped.clone(), status::provisioned(&stopped, instance("b"), &now()));
        assert_eq!(stage(&ready, &t), Stage::Ready { provider: "b".into(), instance: Some("i-b".into()) });
        assert_eq!(last_error(&ready), None);
    }

    #[test]
    fn stalled_is_a_failure_with_reason_and_message() {
        let w = patched_to_b();
        let stall = Stall::new(cond::ConditionReason::ProviderNotFound, "ComputeProvider \"b\" does not exist");
        let stalled = on(w.clone(), status::at_rest(&w, Some(&stall), &now()));
        assert_eq!(
            stage(&stalled, &target("b", 2)),
            Stage::Stalled {
                reason: cond::ConditionReason::ProviderNotFound.as_str().into(),
                message: "ComputeProvider \"b\" does not exist".into()
            }
        );
    }

    #[test]
    fn ready_on_the_old_provider_at_the_new_generation_is_not_done() {
        // e.g. a status written at generation 2 before the claim: still on a.
        let w = patched_to_b();
        let mut s = w.status.clone().unwrap_or_default();
        s.observed_generation = Some(2);
        assert!(matches!(stage(&on(w, s), &target("b", 2)), Stage::Waiting { .. }));
    }

    #[test]
    fn a_stopped_workspace_is_done_once_placed_on_the_target() {
        let mut w = ws("b", 2);
        w.spec.running = false;
        let rest = on(w.clone(), status::at_rest(&w, None, &now()));
        assert_eq!(stage(&rest, &target("b", 2)), Stage::Ready { provider: "b".into(), instance: None });
    }

    #[test]
    fn a_version_from_before_the_patch_is_not_progress() {
        let before = ws("a", 1);
        let stalled = on(
            before.clone(),
            status::at_rest(&before, Some(&Stall::new(cond::ConditionReason::StopFailed, "x")), &now()),
        );
        assert_eq!(stage(&stalled, &target("b", 2)), Stage::NotObserved);
    }

    #[test]
    fn another_patch_or_a_deletion_ends_the_wait() {
        // We set c at generation 2; someone set b after us (generation 3).
        let mut w = patched_to_b();
        w.metadata.generation = Some(3);
        assert_eq!(stage(&w, &target("c", 2)), Stage::Retargeted { provider: "b".into() });
        let mut deleting = w;
        deleting.metadata.deletion_timestamp = Some(now());
        assert_eq!(stage(&deleting, &target("b", 2)), Stage::Deleting);
    }
}
