//! Pure status transitions. Each function takes the workspace as observed and returns the
//! status to write; `summarize` derives phase and conditions from it, so the kstatus rules
//! (DESIGN.md §3.7) hold in every status the controller writes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::conditions::{self as cond, ConditionReason};
use crate::api::{
    Instance, LastSwitch, MAX_ATTEMPTS, MAX_ERROR_LEN, Operation, OperationKind, Phase, Step, Workspace,
    WorkspaceStatus,
};

/// Why a workspace cannot progress without outside help.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stall {
    pub reason: ConditionReason,
    pub message: String,
}

impl Stall {
    pub fn new(reason: ConditionReason, message: impl Into<String>) -> Self {
        Self { reason, message: message.into() }
    }
}

fn current(ws: &Workspace) -> WorkspaceStatus {
    ws.status.clone().unwrap_or_default()
}

/// The claim: a fresh operation under a new epoch. Providers a released operation could still
/// call (`status.unfenced`) become this operation's to fence before its first other call.
pub fn claimed(
    ws: &Workspace,
    id: &str,
    kind: OperationKind,
    from: Option<String>,
    to: Option<String>,
    holder: &str,
    now: &Time,
) -> WorkspaceStatus {
    let mut s = current(ws);
    s.epoch = s.epoch.saturating_add(1);
    let reach = providers(from.iter().chain(to.iter()));
    s.operation = Some(Box::new(Operation {
        id: id.to_string(),
        kind,
        from,
        to,
        step: Step::Claimed,
        holder: holder.to_string(),
        epoch: s.epoch,
        started_at: now.clone(),
        renewed_at: now.clone(),
        attempts: 0,
        last_error: None,
        retry_at: None,
        reach,
        unfenced: std::mem::take(&mut s.unfenced),
    }));
    summarize(ws, s, None, now)
}

/// Takeover of a stale claim: same operation and step, new holder, new epoch. Every provider
/// the superseded holder could still call must see the new epoch before anything else
/// (`unfenced`); the backoff (`retryAt`, `attempts`) carries over.
pub fn taken_over(ws: &Workspace, holder: &str, now: &Time) -> WorkspaceStatus {
    let mut s = current(ws);
    s.epoch = s.epoch.saturating_add(1);
    if let Some(op) = s.operation.as_mut() {
        op.holder = holder.to_string();
        op.epoch = s.epoch;
        op.renewed_at = now.clone();
        op.unfenced = providers(op.reach.iter().chain(op.unfenced.iter()));
    }
    summarize(ws, s, None, now)
}

/// Every provider in `op.unfenced` has seen our epoch: provider calls may go on.
pub fn fenced(ws: &Workspace, now: &Time) -> WorkspaceStatus {
    let mut s = current(ws);
    if let Some(op) = s.operation.as_mut() {
        op.unfenced.clear();
        progressed(op, now);
    }
    summarize(ws, s, None, now)
}

/// The holder is alive and waiting (a backoff, a provider not ready): the claim is renewed so
/// that nobody takes it over for waiting. Nothing else changes.
pub fn renewed(ws: &Workspace, now: &Time) -> WorkspaceStatus {
    let mut s = current(ws);
    if let Some(op) = s.operation.as_mut() {
        op.renewed_at = now.clone();
    }
    // Phase and conditions stay as they read: a renewal is not news.
    s
}

/// The operation moved on to a new step: the claim is renewed and the failures of the step
/// before no longer count.
fn progressed(op: &mut Operation, now: &Time) {
    op.renewed_at = now.clone();
    op.attempts = 0;
    op.last_error = None;
    op.retry_at = None;
}

/// Past the old compute's stop, bound for the provider the spec names now (which the operation
/// may call from here on).
fn onto_target(op: &mut Operation, ws: &Workspace) {
    op.step = Step::OldStopped;
    op.to = Some(ws.spec.provider.clone());
    op.reach = providers(op.reach.iter().chain(op.to.iter()));
}

/// The sorted, de-duplicated provider names of `names` (bounded like the schema).
fn providers<'a>(names: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut v: Vec<String> = names.cloned().collect();
    v.sort();
    v.dedup();
    v.truncate(MAX_REACH);
    v
}

/// The schema's bound on `reach` and `unfenced`.
const MAX_REACH: usize = 16;

/// A deletion overtakes an in-flight operation: it becomes a Delete, keeping its id (so the
/// provision key of anything in flight stays known), its target and its step.
pub fn converted_to_delete(ws: &Workspace, now: &Time) -> WorkspaceStatus {
    let mut s = current(ws);
    if let Some(op) = s.operation.as_mut() {
        op.kind = OperationKind::Delete;
        progressed(op, now);
    }
    summarize(ws, s, None, now)
}

/// The commit of a switch: the old compute is confirmed stopped, so the new provider is recorded.
pub fn committed(ws: &Workspace, now: &Time) -> WorkspaceStatus {
    let mut s = current(ws);
    s.instance = None;
    if let Some(op) = s.operation.as_mut() {
        onto_target(op, ws);
        progressed(op, now);
        s.active_provider = op.to.clone();
    }
    summarize(ws, s, None, now)
}

/// The target changed after the old compute stopped: provision on the new target under a new
/// operation id (hence a new provision key); whatever the old key created is already released.
pub fn retargeted(ws: &Workspace, new_id: &str, now: &Time) -> WorkspaceStatus {
    let mut s = current(ws);
    if let Some(op) = s.operation.as_mut() {
        op.id = new_id.to_string();
        onto_target(op, ws);
        progressed(op, now);
        s.active_provider = op.to.clone();
    }
    summarize(ws, s, None, now)
}

/// The finish of a provision or switch: the new instance recorded, the claim released.
pub fn provisioned(ws: &Workspace, instance: Instance, now: &Time) -> WorkspaceStatus {
    let mut s = current(ws);
    if let Some(op) = release(&mut s)
        && op.kind == OperationKind::Switch
    {
        s.last_switch = Some(LastSwitch {
            from: op.from.unwrap_or_default(),
            to: instance.provider.clone(),
            started_at: op.started_at,
            completed_at: now.clone(),
        });
    }
    s.active_provider = Some(instance.provider.clone());
    s.instance = Some(instance);
    summarize(ws, s, None, now)
}

/// The finish of an operation that leaves no compute (a stop, a delete, a switch of a
/// workspace that should no longer run).
pub fn finished_without_compute(ws: &Workspace, now: &Time) -> WorkspaceStatus {
    let mut s = current(ws);
    release(&mut s);
    s.instance = None;
    summarize(ws, s, None, now)
}

/// The claim released without any compute call (spec reverted before the stop); the provider
/// has just confirmed that the compute runs.
pub fn aborted(ws: &Workspace, now: &Time) -> WorkspaceStatus {
    let mut s = current(ws);
    release(&mut s);
    if let Some(instance) = s.instance.as_mut() {
        instance.unconfirmed = false;
    }
    summarize(ws, s, None, now)
}

/// A stop failed past its retry budget: the claim is released and the workspace stays where it is.
pub fn stop_failed(ws: &Workspace, error: &str, now: &Time) -> WorkspaceStatus {
    let mut s = current(ws);
    let from = s.instance.as_ref().map(|i| i.provider.clone()).unwrap_or_default();
    // The stop may have taken effect with its answer lost: not known to run any more.
    if let Some(instance) = s.instance.as_mut() {
        instance.unconfirmed = true;
    }
    release(&mut s);
    let stall = Stall::new(ConditionReason::StopFailed, format!("stopping the compute on {from} failed: {error}"));
    summarize(ws, s, Some(&stall), now)
}

/// `error`, cut to the schema's bound on `lastError` (on a character boundary).
fn bounded(error: &str) -> String {
    match error.char_indices().nth(MAX_ERROR_LEN.saturating_sub(1)) {
        Some((at, _)) => format!("{}…", &error[..at]),
        None => error.to_string(),
    }
}

/// Removes the operation; providers it had still to fence stay recorded for the next claim.
fn release(s: &mut WorkspaceStatus) -> Option<Box<Operation>> {
    let op = s.operation.take()?;
    s.unfenced = providers(s.unfenced.iter().chain(op.unfenced.iter()));
    Some(op)
}

/// A step of our operation failed: recorded in the operation, retried from `retry_at`; the
/// workspace is Stalled once `attempts` reaches `stall_after` (it keeps retrying either way).
pub fn step_failed(
    ws: &Workspace,
    reason: ConditionReason,
    error: &str,
    stall_after: i32,
    retry_at: &Time,
    now: &Time,
) -> WorkspaceStatus {
    let mut s = current(ws);
    let mut stall = None;
    if let Some(op) = s.operation.as_mut() {
        op.attempts = op.attempts.saturating_add(1).clamp(0, MAX_ATTEMPTS);
        op.last_error = Some(bounded(error));
        op.renewed_at = now.clone();
        op.retry_at = Some(retry_at.clone());
        if op.attempts >= stall_after {
            stall = Some(Stall::new(reason, format!("{error} (attempt {}, still retrying)", op.attempts)));
        }
    }
    summarize(ws, s, stall.as_ref(), now)
}

/// A call of our operation failed and is about to be retried within the same step: the attempt
/// and error are shown and the claim renewed, so that the retries cannot outlast the claim
/// lease. Never stalls: the step's own budget decides when to give up.
pub fn retrying(ws: &Workspace, error: &str, now: &Time) -> WorkspaceStatus {
    let mut s = current(ws);
    if let Some(op) = s.operation.as_mut() {
        op.attempts = op.attempts.saturating_add(1).clamp(0, MAX_ATTEMPTS);
        op.last_error = Some(bounded(error));
        op.renewed_at = now.clone();
    }
    summarize(ws, s, None, now)
}

/// No operation is needed, or none can start: the status as it should read at rest.
pub fn at_rest(ws: &Workspace, stall: Option<&Stall>, now: &Time) -> WorkspaceStatus {
    let mut s = current(ws);
    if s.operation.is_none() {
        // The placement is where the compute is; without compute, simply the desired one.
        s.active_provider = Some(s.instance.as_ref().map_or(&ws.spec.provider, |i| &i.provider).clone());
    }
    summarize(ws, s, stall, now)
}

/// Derives phase, conditions and observedGeneration. One place, so that Ready is always
/// present, Ready=False whenever Reconciling or Stalled is true, and at most one of those is true.
pub fn summarize(ws: &Workspace, mut s: WorkspaceStatus, stall: Option<&Stall>, now: &Time) -> WorkspaceStatus {
    let generation = ws.metadata.generation;
    let deleting = ws.metadata.deletion_timestamp.is_some();
    s.observed_generation = generation;
    let (phase, ready, reconciling, reason, message): (Phase, bool, bool, ConditionReason, String) =
        if let Some(stall) = stall {
            (Phase::Failed, false, false, stall.reason, stall.message.clone())
        } else if let Some(op) = &s.operation {
            let (phase, reason) = match op.kind {
                OperationKind::Provision => (Phase::Provisioning, ConditionReason::Provisioning),
                OperationKind::Switch => (Phase::Switching, ConditionReason::Switching),
                OperationKind::Stop => (Phase::Stopping, ConditionReason::Stopping),
                OperationKind::Delete => (Phase::Terminating, ConditionReason::Deleting),
                // Never carried out (decide stalls it); shown as what it is.
                OperationKind::Unknown => (Phase::Failed, ConditionReason::InvalidClaim),
            };
            (phase, false, true, reason, describe(op))
        } else if deleting && s.instance.is_none() {
            (
                Phase::Terminating,
                false,
                true,
                ConditionReason::Deleting,
                "compute released; removing the finalizer".to_string(),
            )
        } else if let Some(instance) = &s.instance {
            (
                Phase::Running,
                true,
                false,
                ConditionReason::Running,
                format!("running on {} as {}", instance.provider, instance.id),
            )
        } else if !ws.spec.running {
            let on = s.active_provider.as_deref().unwrap_or(&ws.spec.provider);
            (Phase::Stopped, true, false, ConditionReason::Stopped, format!("stopped as requested (placed on {on})"))
        } else {
            (Phase::Pending, false, true, ConditionReason::Pending, "waiting to be provisioned".to_string())
        };
    s.phase = Some(if deleting { Phase::Terminating } else { phase });
    let stalled = stall.is_some();
    cond::set(&mut s.conditions, cond::READY, ready, reason, message.clone(), generation, now);
    let (r_reason, r_message) = if reconciling { (reason, message.clone()) } else { (reason, String::new()) };
    cond::set(&mut s.conditions, cond::RECONCILING, reconciling, r_reason, r_message, generation, now);
    let (s_reason, s_message) = if stalled { (reason, message) } else { (reason, String::new()) };
    cond::set(&mut s.conditions, cond::STALLED, stalled, s_reason, s_message, generation, now);
    s
}

fn describe(op: &Operation) -> String {
    let step = match op.step {
        Step::Claimed => "claimed",
        Step::OldStopped => "old compute stopped",
        Step::Unknown => "a step this version does not know",
    };
    let mut text = match (op.kind, op.from.as_deref(), op.to.as_deref()) {
        (OperationKind::Switch, Some(from), Some(to)) => format!("switching from {from} to {to}: {step}"),
        (OperationKind::Provision, _, Some(to)) => format!("provisioning on {to}: {step}"),
        (OperationKind::Stop, Some(from), _) => format!("stopping on {from}: {step}"),
        (kind, _, _) => format!("{kind:?}: {step}"),
    };
    if let Some(e) = &op.last_error {
        text.push_str(&format!("; last error (attempt {}): {e}", op.attempts));
    }
    text
}

/// True when two statuses differ in anything but condition timestamps — i.e. a write would
/// change what users and other controllers see.
pub fn differs(a: &WorkspaceStatus, b: &WorkspaceStatus) -> bool {
    let strip = |s: &WorkspaceStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(jiff::Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(a) != strip(b)
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
