//! The decision: given a workspace as observed and what we know around it, the one next step.
//! Pure — no I/O, no clock — so every step × situation is covered by table-driven tests.

use std::time::Duration;

use jiff::Timestamp;

use super::status::Stall;
use crate::api::conditions as cond;
use crate::api::{FINALIZER, Instance, Operation, OperationKind, Step, Workspace};

/// Whether a provider can be called right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderState {
    Usable,
    Missing,
    NotReady { reason: &'static str, message: String },
}

/// What the controller knows besides the workspace.
#[derive(Clone, Debug)]
pub struct Facts {
    /// Identity of this controller instance.
    pub me: String,
    pub now: Timestamp,
    /// A claim not renewed for this long may be taken over.
    pub claim_lease: Duration,
    /// The provider named by spec.provider.
    pub target: ProviderState,
    /// The provider holding status.instance (Usable when there is no instance).
    pub source: ProviderState,
    /// A failed stop is not retried before this time (growing backoff, kept in memory).
    pub retry_at: Option<Timestamp>,
    /// Backoff between provision attempts: base doubled per attempt, capped.
    pub provision_backoff: (Duration, Duration),
    /// Whether this instance holds the leader Lease. Of two holders of a claim, the one that
    /// is not the leader is presumed gone (a leader that died), so the leader need not wait.
    pub leader: bool,
}

/// The next step. Variants after `TakeOver` are taken only under our own claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Not ours to touch (being deleted without our finalizer).
    Nothing,
    AddFinalizer,
    RemoveFinalizer,
    /// No compute change needed, or none possible: make the status read right (`stall` set when blocked).
    Rest {
        stall: Option<Stall>,
    },
    /// Wait without writing; reconcile again after the delay.
    Wait {
        after: Duration,
        why: &'static str,
    },
    Claim {
        kind: OperationKind,
        from: Option<String>,
        to: Option<String>,
    },
    TakeOver,
    /// The workspace is being deleted: turn our in-flight operation into a Delete.
    ConvertToDelete,
    /// The spec went back to where the compute is before anything was stopped: release the claim.
    Abort,
    /// Stop the old compute; then commit (Switch) or finish (Stop, Delete).
    StopOld {
        instance: Instance,
    },
    /// Record the switch's new provider: nothing is left to stop.
    Commit,
    /// Provision on `provider` under `key`; then finish.
    Provision {
        provider: String,
        key: String,
    },
    /// The target changed after the stop: release what `key` created on `provider`, then retarget.
    Retarget {
        provider: String,
        key: String,
    },
    /// End the operation with no compute: release what the operation's key may have created first.
    FinishWithoutCompute {
        release: Option<(String, String)>,
    },
    /// The operation cannot progress (e.g. its target vanished): record why, keep the claim.
    Hold {
        stall: Stall,
    },
}

impl Next {
    /// The step's name, for spans and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Next::Nothing => "nothing",
            Next::AddFinalizer => "add_finalizer",
            Next::RemoveFinalizer => "remove_finalizer",
            Next::Rest { .. } => "rest",
            Next::Wait { .. } => "wait",
            Next::Claim { .. } => "claim",
            Next::TakeOver => "take_over",
            Next::ConvertToDelete => "convert_to_delete",
            Next::Abort => "abort",
            Next::StopOld { .. } => "stop_old",
            Next::Commit => "commit",
            Next::Provision { .. } => "provision",
            Next::Retarget { .. } => "retarget",
            Next::FinishWithoutCompute { .. } => "finish_without_compute",
            Next::Hold { .. } => "hold",
        }
    }
}

/// The next step for `ws`.
pub fn decide(ws: &Workspace, facts: &Facts) -> Next {
    let deleting = ws.metadata.deletion_timestamp.is_some();
    let has_finalizer = ws.metadata.finalizers.as_ref().is_some_and(|f| f.iter().any(|f| f == FINALIZER));
    let status = ws.status.as_ref();
    let instance = status.and_then(|s| s.instance.as_ref());

    if let Some(op) = status.and_then(|s| s.operation.as_ref()) {
        if op.holder != facts.me {
            // Stale once the lease has passed; the leader need not wait (see `Facts::leader`).
            let age = elapsed(op.renewed_at.0, facts.now);
            return if age < facts.claim_lease && !facts.leader {
                Next::Wait { after: facts.claim_lease - age, why: cond::CLAIM_HELD_ELSEWHERE }
            } else {
                Next::TakeOver
            };
        }
        return continue_operation(ws, op, instance, facts, deleting);
    }
    if !deleting && !has_finalizer {
        return Next::AddFinalizer;
    }
    let next = without_operation(ws, facts, deleting, has_finalizer);
    // A stop that failed past its budget is tried again only after its backoff.
    match (&next, facts.retry_at) {
        (Next::Claim { kind, .. }, Some(at)) if *kind != OperationKind::Provision && at > facts.now => {
            Next::Wait { after: until(facts.now, at), why: cond::STOP_FAILED }
        }
        _ => next,
    }
}

/// No operation in flight: what, if anything, to claim.
fn without_operation(ws: &Workspace, facts: &Facts, deleting: bool, has_finalizer: bool) -> Next {
    let spec = &ws.spec;
    let status = ws.status.as_ref();
    let instance = status.and_then(|s| s.instance.as_ref());
    if deleting {
        return match (has_finalizer, instance) {
            (false, _) => Next::Nothing,
            (true, Some(i)) => Next::Claim { kind: OperationKind::Delete, from: Some(i.provider.clone()), to: None },
            (true, None) => Next::RemoveFinalizer,
        };
    }
    match instance {
        Some(i) if !spec.running => match blocked(&facts.source, &i.provider) {
            Some(stall) => Next::Rest { stall: Some(stall) },
            None => Next::Claim { kind: OperationKind::Stop, from: Some(i.provider.clone()), to: None },
        },
        Some(i) if i.provider != spec.provider => {
            match blocked(&facts.target, &spec.provider).or_else(|| blocked(&facts.source, &i.provider)) {
                Some(stall) => Next::Rest { stall: Some(stall) },
                None => Next::Claim {
                    kind: OperationKind::Switch,
                    from: Some(i.provider.clone()),
                    to: Some(spec.provider.clone()),
                },
            }
        }
        None if spec.running => match blocked(&facts.target, &spec.provider) {
            Some(stall) => Next::Rest { stall: Some(stall) },
            None => Next::Claim {
                kind: OperationKind::Provision,
                from: status.and_then(|s| s.active_provider.clone()),
                to: Some(spec.provider.clone()),
            },
        },
        // Stopped: nothing to call, but a name that points nowhere is worth saying now.
        None if facts.target == ProviderState::Missing => Next::Rest { stall: blocked(&facts.target, &spec.provider) },
        _ => Next::Rest { stall: None },
    }
}

/// Our own operation: resume from its step.
fn continue_operation(
    ws: &Workspace,
    op: &Operation,
    instance: Option<&Instance>,
    facts: &Facts,
    deleting: bool,
) -> Next {
    let spec = &ws.spec;
    let key = crate::provider::provision_key(ws.metadata.uid.as_deref().unwrap_or_default(), &op.id);
    // Whatever this operation's key may have created on its target.
    let in_flight = || op.to.clone().map(|to| (to, key.clone()));

    if deleting && op.kind != OperationKind::Delete {
        return Next::ConvertToDelete;
    }
    match (op.kind, op.step) {
        (OperationKind::Delete, _) => match instance {
            Some(i) => Next::StopOld { instance: i.clone() },
            None => Next::FinishWithoutCompute { release: in_flight() },
        },
        (OperationKind::Stop, _) => match instance {
            // Started again before the stop happened: nothing to do.
            Some(_) if spec.running => Next::Abort,
            Some(i) => Next::StopOld { instance: i.clone() },
            None => Next::FinishWithoutCompute { release: None },
        },
        (OperationKind::Switch, Step::Claimed) => match instance {
            Some(i) if spec.provider == i.provider && spec.running => Next::Abort,
            Some(i) => Next::StopOld { instance: i.clone() },
            None => Next::Commit,
        },
        // After the stop (Switch) or from the start (Provision): roll forward only.
        (OperationKind::Switch, Step::OldStopped) | (OperationKind::Provision, _) => {
            let to = op.to.clone().unwrap_or_default();
            if !spec.running {
                return Next::FinishWithoutCompute { release: in_flight() };
            }
            if spec.provider != to {
                return Next::Retarget { provider: to, key };
            }
            if let Some(stall) = blocked(&facts.target, &to) {
                return Next::Hold { stall };
            }
            if op.attempts > 0 {
                let wait = backoff(op.attempts, facts.provision_backoff);
                let since = elapsed(op.renewed_at.0, facts.now);
                if since < wait {
                    return Next::Wait { after: wait - since, why: cond::PROVISION_FAILED };
                }
            }
            Next::Provision { provider: to, key }
        }
    }
}

/// Why a provider cannot be used, as a stall; None when it can.
fn blocked(state: &ProviderState, name: &str) -> Option<Stall> {
    match state {
        ProviderState::Usable => None,
        ProviderState::Missing => {
            Some(Stall::new(cond::PROVIDER_NOT_FOUND, format!("ComputeProvider {name:?} does not exist")))
        }
        ProviderState::NotReady { reason, message } => {
            Some(Stall::new(reason, format!("ComputeProvider {name:?} is not ready: {message}")))
        }
    }
}

/// Backoff before attempt `attempts + 1`: base × 2^(attempts-1), capped.
pub fn backoff(attempts: i32, (base, cap): (Duration, Duration)) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1)).unwrap_or(0).min(16);
    base.saturating_mul(1 << exp).min(cap)
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO)
}

fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
