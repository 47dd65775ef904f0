//! The decision: given a workspace as observed and what we know around it, the one next step.
//! Pure — no I/O, no clock — so every step × situation is covered by table-driven tests.

use std::time::Duration;

use jiff::Timestamp;

use super::status::Stall;
use crate::api::conditions::{ConditionReason, WaitReason};
use crate::api::{FINALIZER, Instance, MAX_EPOCH, Operation, OperationKind, Step, Workspace};
use crate::runtime::Backoff;

/// Whether a provider can be called right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderState {
    Usable,
    Missing,
    NotReady {
        reason: ConditionReason,
        message: String,
    },
    /// The provider no longer says what it said when it created the instance (`location`): a
    /// stop sent now would go somewhere else and find nothing, while the compute runs on.
    Moved {
        message: String,
    },
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
    /// Backoff between attempts of a step (provision, fence). A `retryAt` further ahead than
    /// its cap is not trusted.
    pub provision_backoff: Backoff,
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
        why: WaitReason,
    },
    Claim {
        kind: OperationKind,
        from: Option<String>,
        to: Option<String>,
    },
    TakeOver,
    /// Raise the fence to our epoch at each of `providers` (those a superseded operation could
    /// still call) before any other provider call.
    Fence {
        providers: Vec<String>,
    },
    /// We are waiting (a backoff) and the claim would soon look stale: renew it, nothing else.
    Renew,
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
            Next::Fence { .. } => "fence",
            Next::Renew => "renew",
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
    let next = decide_unbounded(ws, facts);
    // A claim needs a new epoch; at the bound there is none (status from elsewhere put it there).
    let epoch = ws.status.as_ref().map(|s| s.epoch).unwrap_or_default();
    match next {
        Next::Claim { .. } | Next::TakeOver if !(0..MAX_EPOCH).contains(&epoch) => Next::Rest {
            stall: Some(Stall::new(
                ConditionReason::EpochOutOfRange,
                format!("status.epoch {epoch} leaves no room for a new claim (0 to {MAX_EPOCH}); nothing is done"),
            )),
        },
        next => next,
    }
}

fn decide_unbounded(ws: &Workspace, facts: &Facts) -> Next {
    let deleting = ws.metadata.deletion_timestamp.is_some();
    let has_finalizer = ws.metadata.finalizers.as_ref().is_some_and(|f| f.iter().any(|f| f == FINALIZER));
    let status = ws.status.as_ref();
    let instance = status.and_then(|s| s.instance.as_ref());

    if let Some(op) = status.and_then(|s| s.operation.as_ref()) {
        if op.holder != facts.me {
            // Stale once the lease has passed; the leader need not wait (see `Facts::leader`).
            // A renewal further in the future than a lease is no renewal at all.
            let age = elapsed(op.renewed_at.0, facts.now);
            let forged = until(facts.now, op.renewed_at.0) > facts.claim_lease;
            if age < facts.claim_lease && !facts.leader && !forged {
                return Next::Wait { after: facts.claim_lease - age, why: WaitReason::ClaimHeldElsewhere };
            }
        }
        // A claim no controller of ours could have written is not carried out, nor taken over.
        if let Some(stall) = misfit(op, instance, deleting) {
            return Next::Rest { stall: Some(stall) };
        }
        if op.holder != facts.me {
            return Next::TakeOver;
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
            Next::Wait { after: until(facts.now, at), why: WaitReason::StopFailed }
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
            (true, Some(_)) if let Some(stall) = moved(&facts.source) => Next::Rest { stall: Some(stall) },
            (true, Some(i)) => Next::Claim { kind: OperationKind::Delete, from: Some(i.provider.clone()), to: None },
            (true, None) => Next::RemoveFinalizer,
        };
    }
    match instance {
        // A stop of it failed, perhaps after taking effect, and the spec is back on its
        // provider: claim a switch onto the same provider, whose abort asks the provider first
        // and provisions afresh if the compute is gone.
        Some(i) if i.unconfirmed && spec.running && i.provider == spec.provider => claim_unless(
            blocked(&facts.source, &i.provider),
            OperationKind::Switch,
            Some(i.provider.clone()),
            Some(spec.provider.clone()),
        ),
        Some(i) if !spec.running => {
            claim_unless(blocked(&facts.source, &i.provider), OperationKind::Stop, Some(i.provider.clone()), None)
        }
        Some(i) if i.provider != spec.provider => claim_unless(
            blocked(&facts.target, &spec.provider).or_else(|| blocked(&facts.source, &i.provider)),
            OperationKind::Switch,
            Some(i.provider.clone()),
            Some(spec.provider.clone()),
        ),
        None if spec.running => claim_unless(
            blocked(&facts.target, &spec.provider),
            OperationKind::Provision,
            status.and_then(|s| s.active_provider.clone()),
            Some(spec.provider.clone()),
        ),
        // Running where it should: but compute its provider can no longer reach is worth saying.
        Some(_) => Next::Rest { stall: moved(&facts.source) },
        // Stopped: nothing to call, but a name that points nowhere is worth saying now.
        None if facts.target == ProviderState::Missing => Next::Rest { stall: blocked(&facts.target, &spec.provider) },
        _ => Next::Rest { stall: None },
    }
}

/// A claim of `kind`, unless a provider it needs is blocked: then rest, saying why.
fn claim_unless(stall: Option<Stall>, kind: OperationKind, from: Option<String>, to: Option<String>) -> Next {
    match stall {
        Some(stall) => Next::Rest { stall: Some(stall) },
        None => Next::Claim { kind, from, to },
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
    // Whatever this operation's key may have created on its target.
    let key = ws.in_flight_key().unwrap_or_default();

    if deleting && op.kind != OperationKind::Delete {
        return Next::ConvertToDelete;
    }
    // A superseded operation may still call these providers: fence them before anything else.
    let next = if op.unfenced.is_empty() {
        next_step(spec, op, instance, facts, key)
    } else {
        Next::Fence { providers: op.unfenced.clone() }
    };
    // A step that failed is tried again (or held again) only once its backoff has passed.
    let retries =
        matches!(next, Next::Fence { .. } | Next::StopOld { .. } | Next::Provision { .. } | Next::Hold { .. });
    match waiting(op, facts) {
        Some(wait) if retries => wait,
        _ => next,
    }
}

/// The step that carries our operation on from where it is.
fn next_step(
    spec: &crate::api::WorkspaceSpec,
    op: &Operation,
    instance: Option<&Instance>,
    facts: &Facts,
    key: String,
) -> Next {
    // Any call about the recorded compute would go to the wrong place: hold, call nothing.
    if instance.is_some()
        && let Some(stall) = moved(&facts.source)
    {
        return Next::Hold { stall };
    }
    match (op.kind, op.step) {
        // No compute to stop: on as though the stop had happened.
        (OperationKind::Delete, _) => match instance {
            Some(i) => Next::StopOld { instance: i.clone() },
            None => once_stopped(op, Some(key)).into(),
        },
        (OperationKind::Stop, _) => match instance {
            // Started again before the stop happened: nothing to do.
            Some(_) if spec.running => Next::Abort,
            Some(i) => Next::StopOld { instance: i.clone() },
            None => once_stopped(op, None).into(),
        },
        (OperationKind::Switch, Step::Claimed) => match instance {
            Some(i) if spec.provider == i.provider && spec.running => Next::Abort,
            Some(i) => Next::StopOld { instance: i.clone() },
            None => once_stopped(op, None).into(),
        },
        // After the stop (Switch) or from the start (Provision): roll forward only.
        (OperationKind::Switch, Step::OldStopped) | (OperationKind::Provision, Step::Claimed | Step::OldStopped) => {
            let to = op.to.clone().unwrap_or_default();
            if !spec.running {
                return Next::FinishWithoutCompute { release: op.to.clone().map(|to| (to, key)) };
            }
            if spec.provider != to {
                return Next::Retarget { provider: to, key };
            }
            if let Some(stall) = blocked(&facts.target, &to) {
                return Next::Hold { stall };
            }
            Next::Provision { provider: to, key }
        }
        // `misfit` stalls these before any step is taken; never carry them out.
        (OperationKind::Unknown, _) | (_, Step::Unknown) => Next::Hold { stall: unknown_claim(op) },
    }
}

/// What follows a confirmed stop of the old compute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterStop {
    /// A switch records its new provider.
    Commit,
    /// A stop or delete ends with no compute; `release` (provider, key) names what a delete
    /// must stop first: whatever its key may have created on its target.
    Finish { release: Option<(String, String)> },
}

impl From<AfterStop> for Next {
    fn from(after: AfterStop) -> Self {
        match after {
            AfterStop::Commit => Next::Commit,
            AfterStop::Finish { release } => Next::FinishWithoutCompute { release },
        }
    }
}

/// What follows a stop of the old compute that the provider confirmed, for `ws` as our last
/// write left it.
pub fn after_stop(ws: &Workspace) -> AfterStop {
    ws.operation().map_or(AfterStop::Finish { release: None }, |op| once_stopped(op, ws.in_flight_key()))
}

/// What follows once `op` has no old compute left (stopped, or there was none): a switch
/// commits; a delete finishes, first releasing what its `key` may have created on its target;
/// anything else finishes.
fn once_stopped(op: &Operation, key: Option<String>) -> AfterStop {
    match op.kind {
        OperationKind::Switch => AfterStop::Commit,
        OperationKind::Delete => AfterStop::Finish { release: op.to.clone().zip(key) },
        _ => AfterStop::Finish { release: None },
    }
}

/// Why a claim cannot be one a Switchyard controller of this version wrote, if it cannot: a
/// kind or step this build does not know, or a step that contradicts the recorded compute.
/// Carrying such a claim out could double or strand compute, so it is not; it stalls with
/// InvalidClaim until someone clears it (README: Operations, the escape hatch).
fn misfit(op: &Operation, instance: Option<&Instance>, deleting: bool) -> Option<Stall> {
    let invalid =
        |why: String| Some(Stall::new(ConditionReason::InvalidClaim, format!("{why}; it is not carried out")));
    if op.kind == OperationKind::Unknown || op.step == Step::Unknown {
        return Some(unknown_claim(op));
    }
    let rolls_forward =
        op.kind == OperationKind::Provision || (op.kind == OperationKind::Switch && op.step == Step::OldStopped);
    if let Some(i) = instance.filter(|_| rolls_forward) {
        return invalid(format!(
            "the {:?} claim {} would provision while status.instance names {} on {}",
            op.kind, op.id, i.id, i.provider
        ));
    }
    if matches!(op.kind, OperationKind::Provision | OperationKind::Switch) && op.to.as_deref().is_none_or(str::is_empty)
    {
        return invalid(format!("the {:?} claim {} names no target provider (operation.to)", op.kind, op.id));
    }
    if op.kind == OperationKind::Delete && !deleting {
        return invalid(format!("the Delete claim {} is on a workspace that is not being deleted", op.id));
    }
    None
}

fn unknown_claim(op: &Operation) -> Stall {
    Stall::new(
        ConditionReason::InvalidClaim,
        format!(
            "claim {} has a kind or step this controller does not know (a newer Switchyard's?); \
             it is not carried out: upgrade the controller, or clear the claim",
            op.id
        ),
    )
}

/// The stall of compute whose provider has moved under it, if it has.
fn moved(state: &ProviderState) -> Option<Stall> {
    match state {
        ProviderState::Moved { message } => Some(Stall::new(ConditionReason::ProviderChanged, message.clone())),
        _ => None,
    }
}

/// While our operation's backoff runs (`retryAt`): wait, renewing the claim every third of the
/// lease so that nobody takes a live holder over for waiting. One write per wait at most, and
/// one per third of a lease.
fn waiting(op: &Operation, facts: &Facts) -> Option<Next> {
    let retry_in = op.retry_at.as_ref().map(|t| until(facts.now, t.0)).filter(|d| !d.is_zero())?;
    if retry_in > facts.provision_backoff.cap {
        return None;
    }
    let renew_every = facts.claim_lease / 3;
    let age = elapsed(op.renewed_at.0, facts.now);
    if age >= renew_every {
        return Some(Next::Renew);
    }
    let why = if op.unfenced.is_empty() { WaitReason::Backoff } else { WaitReason::FenceFailed };
    Some(Next::Wait { after: retry_in.min(renew_every - age), why })
}

/// Why a provider cannot be used, as a stall; None when it can.
fn blocked(state: &ProviderState, name: &str) -> Option<Stall> {
    match state {
        ProviderState::Usable => None,
        ProviderState::Missing => {
            Some(Stall::new(ConditionReason::ProviderNotFound, format!("ComputeProvider {name:?} does not exist")))
        }
        ProviderState::NotReady { reason, message } => {
            Some(Stall::new(*reason, format!("ComputeProvider {name:?} is not ready: {message}")))
        }
        ProviderState::Moved { .. } => moved(state),
    }
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
