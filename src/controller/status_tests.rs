//! Tests of the status transitions: the kstatus rules (DESIGN.md §3.7) and the epoch rule hold
//! for every transition from every starting point, and each transition sets what it is meant to.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::*;
use crate::api::conditions::{self as cond, ConditionReason};
use crate::api::{Instance, LastSwitch, Operation, OperationKind, Phase, Step, Workspace, WorkspaceStatus};

use OperationKind::{Delete, Provision, Stop, Switch};

const ME: &str = "ctrl-me";
const GENERATION: i64 = 7;

fn base() -> Timestamp {
    "2030-01-02T03:04:05Z".parse().unwrap()
}

/// The fixed time `secs` from now (negative: ago).
fn at(secs: i64) -> Time {
    Time(base() + SignedDuration::from_secs(secs))
}

fn now() -> Time {
    at(0)
}

// ---- building workspaces ---------------------------------------------------------------------

/// A workspace at `generation` 7 whose status was last written for generation 5.
fn workspace(provider: &str, running: bool, status: Option<WorkspaceStatus>) -> Workspace {
    let mut ws = Workspace::builder("ws-1", provider)
        .namespace("default")
        .uid("uid-1")
        .generation(GENERATION)
        .resource_version("42")
        .finalizers(&[crate::api::FINALIZER])
        .running(running)
        .build();
    ws.status = status;
    ws
}

fn deleting(mut ws: Workspace) -> Workspace {
    ws.metadata.deletion_timestamp = Some(at(-30));
    ws
}

fn instance(provider: &str) -> Instance {
    Instance::new(format!("i-{provider}"), provider, format!("uid-1.key-{provider}"))
}

fn operation(kind: OperationKind, step: Step, from: Option<&str>, to: Option<&str>) -> Operation {
    Operation {
        id: "op-1".to_string(),
        kind,
        from: from.map(String::from),
        to: to.map(String::from),
        step,
        holder: "ctrl-old".to_string(),
        epoch: 4,
        started_at: at(-300),
        renewed_at: at(-60),
        attempts: 0,
        last_error: None,
        retry_at: None,
        reach: vec![],
        unfenced: vec![],
    }
}

/// `o` after `attempts` failed attempts, the last with `error`.
fn with_failures(mut o: Operation, attempts: i32, error: &str) -> Operation {
    o.attempts = attempts;
    o.last_error = Some(error.into());
    o
}

fn condition(type_: &str, status: bool, reason: ConditionReason) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.as_str().to_string(),
        message: String::new(),
        observed_generation: Some(5),
        last_transition_time: at(-3600),
    }
}

/// Conditions as an earlier write left them (for generation 5, an hour ago).
fn conditions(ready: bool, reconciling: bool, stalled: bool, reason: ConditionReason) -> Vec<Condition> {
    vec![
        condition(cond::READY, ready, reason),
        condition(cond::RECONCILING, reconciling, reason),
        condition(cond::STALLED, stalled, reason),
    ]
}

/// A status at epoch 4, written for generation 5.
fn status(
    active: Option<&str>,
    instance_on: Option<&str>,
    op: Option<Operation>,
    conditions: Vec<Condition>,
) -> WorkspaceStatus {
    WorkspaceStatus {
        observed_generation: Some(5),
        phase: Some(Phase::Running),
        active_provider: active.map(String::from),
        instance: instance_on.map(instance),
        epoch: 4,
        operation: op.map(Box::new),
        last_switch: None,
        unfenced: vec![],
        conditions,
    }
}

/// Starting points: every kind of status the controller writes or finds.
fn fixtures() -> Vec<(&'static str, Workspace)> {
    let running_on_a = || status(Some("a"), Some("a"), None, conditions(true, false, false, ConditionReason::Running));
    let switching = |step, instance_on: Option<&str>| {
        status(
            Some("a"),
            instance_on,
            Some(operation(Switch, step, Some("a"), Some("b"))),
            conditions(false, true, false, ConditionReason::Switching),
        )
    };
    let claimed_on_a = |kind, reason| {
        status(
            Some("a"),
            Some("a"),
            Some(operation(kind, Step::Claimed, Some("a"), None)),
            conditions(false, true, false, reason),
        )
    };
    let failing = with_failures(operation(Provision, Step::Claimed, None, Some("b")), 2, "quota exceeded");
    vec![
        ("new, no status", workspace("a", true, None)),
        ("new, stopped, no status", workspace("a", false, None)),
        ("running on a", workspace("a", true, Some(running_on_a()))),
        ("running on a, spec now b", workspace("b", true, Some(running_on_a()))),
        ("running on a, spec now stopped", workspace("a", false, Some(running_on_a()))),
        (
            "stopped on a",
            workspace(
                "a",
                false,
                Some(status(Some("a"), None, None, conditions(true, false, false, ConditionReason::Stopped))),
            ),
        ),
        (
            "stalled after a failed stop, on a",
            workspace(
                "b",
                true,
                Some(status(Some("a"), Some("a"), None, conditions(false, false, true, ConditionReason::StopFailed))),
            ),
        ),
        (
            "pending, target missing",
            workspace(
                "b",
                true,
                Some(status(None, None, None, conditions(false, false, true, ConditionReason::ProviderNotFound))),
            ),
        ),
        ("switch a→b claimed, compute on a", workspace("b", true, Some(switching(Step::Claimed, Some("a"))))),
        ("switch a→b claimed, spec now c", workspace("c", true, Some(switching(Step::Claimed, Some("a"))))),
        ("switch a→b, old stopped", workspace("b", true, Some(switching(Step::OldStopped, None)))),
        (
            "provision on b, 2 failed attempts",
            workspace(
                "b",
                true,
                Some(status(None, None, Some(failing), conditions(false, true, false, ConditionReason::Provisioning))),
            ),
        ),
        ("stop of a claimed", workspace("a", false, Some(claimed_on_a(Stop, ConditionReason::Stopping)))),
        ("deleting, compute on a, no operation", deleting(workspace("a", true, Some(running_on_a())))),
        (
            "deleting, delete of a claimed",
            deleting(workspace("a", true, Some(claimed_on_a(Delete, ConditionReason::Deleting)))),
        ),
        ("deleting, switch a→b old stopped", deleting(workspace("b", true, Some(switching(Step::OldStopped, None))))),
    ]
}

/// Every transition, applied to `ws`, named; the second value says whether it is a claim
/// (epoch +1) or not (epoch unchanged).
fn transitions(ws: &Workspace) -> Vec<(String, bool, WorkspaceStatus)> {
    let n = now();
    let stall = Stall::new(ConditionReason::ProviderNotFound, "ComputeProvider \"b\" does not exist");
    let mut out = Vec::new();
    for kind in [Provision, Switch, Stop, Delete] {
        out.push((
            format!("claimed {kind:?}"),
            true,
            claimed(ws, "op-2", kind, Some("a".into()), Some("b".into()), ME, &n),
        ));
    }
    out.push(("taken_over".into(), true, taken_over(ws, ME, &n)));
    out.push(("converted_to_delete".into(), false, converted_to_delete(ws, &n)));
    out.push(("committed".into(), false, committed(ws, &n)));
    out.push(("retargeted".into(), false, retargeted(ws, "op-3", &n)));
    out.push(("provisioned".into(), false, provisioned(ws, instance("b"), &n)));
    out.push(("finished_without_compute".into(), false, finished_without_compute(ws, &n)));
    out.push(("aborted".into(), false, aborted(ws, &n)));
    out.push(("stop_failed".into(), false, stop_failed(ws, "timeout", &n)));
    out.push(("retrying".into(), false, retrying(ws, "timeout", &n)));
    for stall_after in [0, 1, 3, 100] {
        out.push((
            format!("step_failed (stall after {stall_after})"),
            false,
            step_failed(ws, ConditionReason::ProvisionFailed, "quota exceeded", stall_after, &n, &n),
        ));
    }
    out.push(("at_rest".into(), false, at_rest(ws, None, &n)));
    out.push(("at_rest stalled".into(), false, at_rest(ws, Some(&stall), &n)));
    out
}

fn status_of<'a>(s: &'a WorkspaceStatus, type_: &str) -> Option<&'a Condition> {
    cond::get(&s.conditions, type_)
}

/// The kstatus rules of DESIGN.md §3.7 (`Workspace::kstatus_breach`), and, stricter for a status
/// the controller writes, what its conditions say about time, generation and phase. Returns
/// every rule `new` breaks.
fn kstatus_violations(ws: &Workspace, old: Option<&WorkspaceStatus>, new: &WorkspaceStatus) -> Vec<String> {
    let mut observed = ws.clone();
    observed.status = Some(new.clone());
    let mut v: Vec<String> = observed.kstatus_breach().into_iter().collect();
    let generation = ws.metadata.generation;
    if new.observed_generation != generation {
        v.push(format!("observedGeneration {:?} != generation {generation:?}", new.observed_generation));
    }
    for type_ in [cond::READY, cond::RECONCILING, cond::STALLED] {
        let Some(c) = status_of(new, type_) else {
            v.push(format!("{type_} missing"));
            continue;
        };
        if c.status != "True" && c.status != "False" {
            v.push(format!("{type_} status {:?}", c.status));
        }
        if c.observed_generation != generation {
            v.push(format!("{type_} observedGeneration {:?}", c.observed_generation));
        }
        // metav1.Condition: reason is required, CamelCase.
        let valid_reason = c.reason.chars().next().is_some_and(|f| f.is_ascii_alphabetic())
            && c.reason.chars().all(|ch| ch.is_ascii_alphanumeric() || "_,:".contains(ch));
        if !valid_reason {
            v.push(format!("{type_} reason {:?} is not a valid condition reason", c.reason));
        }
        // lastTransitionTime moves only when the status flips.
        let before = old.and_then(|o| status_of(o, type_));
        let expected_ltt = match before {
            Some(b) if b.status == c.status => b.last_transition_time.clone(),
            _ => now(),
        };
        if c.last_transition_time != expected_ltt {
            v.push(format!("{type_} lastTransitionTime {:?}, expected {expected_ltt:?}", c.last_transition_time));
        }
    }
    let count = new.conditions.len();
    if count != 3 {
        v.push(format!("{count} conditions, expected Ready, Reconciling, Stalled once each"));
    }
    let is_true = |t| cond::is_true(&new.conditions, t);
    let (ready, reconciling, stalled) = (is_true(cond::READY), is_true(cond::RECONCILING), is_true(cond::STALLED));
    if !ready && !reconciling && !stalled {
        v.push("neither Ready, Reconciling nor Stalled is True: the state says nothing".into());
    }
    match new.phase {
        None => v.push("no phase".into()),
        Some(phase) if ws.metadata.deletion_timestamp.is_some() => {
            if phase != Phase::Terminating {
                v.push(format!("deleting but phase {phase:?}"));
            }
        }
        Some(phase) => {
            if stalled != (phase == Phase::Failed) {
                v.push(format!("phase {phase:?} with Stalled={stalled}"));
            }
            if ready != matches!(phase, Phase::Running | Phase::Stopped) {
                v.push(format!("phase {phase:?} with Ready={ready}"));
            }
        }
    }
    v
}

fn assert_kstatus(what: &str, ws: &Workspace, new: &WorkspaceStatus) {
    let violations = kstatus_violations(ws, ws.status.as_ref(), new);
    assert!(violations.is_empty(), "{what}: {violations:#?}\nstatus: {new:#?}");
}

fn epoch(ws: &Workspace) -> i64 {
    ws.status.as_ref().map(|s| s.epoch).unwrap_or_default()
}

fn op(s: &WorkspaceStatus) -> &Operation {
    s.operation.as_ref().expect("an operation")
}

fn cond_of<'a>(s: &'a WorkspaceStatus, type_: &str) -> &'a Condition {
    status_of(s, type_).unwrap_or_else(|| panic!("{type_} missing"))
}

/// Ready / Reconciling / Stalled as booleans, and the phase.
fn summary(s: &WorkspaceStatus) -> (bool, bool, bool, Option<Phase>) {
    let t = |c| cond::is_true(&s.conditions, c);
    (t(cond::READY), t(cond::RECONCILING), t(cond::STALLED), s.phase)
}

fn with_status(ws: &Workspace, s: WorkspaceStatus) -> Workspace {
    let mut next = ws.clone();
    next.status = Some(s);
    next
}

// ---- rules every transition keeps ------------------------------------------------------------

#[test]
fn every_transition_from_every_state_keeps_the_kstatus_rules_and_the_epoch() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for (name, ws) in fixtures() {
        let before = epoch(&ws);
        for (transition, is_claim, new) in transitions(&ws) {
            checked += 1;
            let mut v = kstatus_violations(&ws, ws.status.as_ref(), &new);
            let expected = if is_claim { before + 1 } else { before };
            if new.epoch != expected {
                v.push(format!("epoch {} → {}, expected {expected}", before, new.epoch));
            }
            if let Some(o) = &new.operation
                && o.epoch > new.epoch
            {
                v.push(format!("operation epoch {} above status epoch {}", o.epoch, new.epoch));
            }
            if !v.is_empty() {
                failures.push(format!("{transition} from {name:?}: {v:?}"));
            }
        }
    }
    assert!(checked >= 250, "only {checked} combinations");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

type Transition = fn(&Workspace) -> WorkspaceStatus;

/// Transitions applied in sequence (each on the result of the last) keep the rules too, and the
/// epoch never goes down.
#[test]
fn a_full_switch_keeps_the_rules_at_every_write() {
    let n = now();
    let mut ws = workspace("b", true, Some(status(Some("a"), Some("a"), None, Vec::new())));
    let rest = at_rest(&ws, None, &n);
    assert_kstatus("at rest", &ws, &rest);
    ws = with_status(&ws, rest);
    let mut last_epoch = epoch(&ws);
    let steps: [(&str, Transition); 6] = [
        ("claim", |w| claimed(w, "op-9", Switch, Some("a".into()), Some("b".into()), ME, &now())),
        ("provision failed", |w| step_failed(w, ConditionReason::ProvisionFailed, "boom", 3, &now(), &now())),
        ("taken over", |w| taken_over(w, "ctrl-new", &now())),
        ("commit", |w| committed(w, &now())),
        ("provisioned", |w| provisioned(w, instance("b"), &now())),
        ("at rest", |w| at_rest(w, None, &now())),
    ];
    for (what, step) in steps {
        let next = step(&ws);
        assert_kstatus(what, &ws, &next);
        assert!(next.epoch >= last_epoch, "{what}: epoch went down");
        last_epoch = next.epoch;
        ws = with_status(&ws, next);
    }
    let s = ws.status.as_ref().unwrap();
    assert_eq!(s.epoch, 6, "one claim and one takeover since epoch 4");
    assert_eq!(s.active_provider.as_deref(), Some("b"));
    assert_eq!(s.instance, Some(instance("b")));
    assert_eq!(s.operation, None);
    assert_eq!(summary(s), (true, false, false, Some(Phase::Running)));
    let last = s.last_switch.as_ref().expect("lastSwitch");
    assert_eq!((last.from.as_str(), last.to.as_str()), ("a", "b"));
}

#[test]
fn at_rest_is_idempotent() {
    for (name, ws) in fixtures() {
        if ws.status.as_ref().is_some_and(|s| s.operation.is_some()) {
            continue;
        }
        for stall in [None, Some(Stall::new(ConditionReason::ProviderNotReady, "not ready"))] {
            let once = at_rest(&ws, stall.as_ref(), &now());
            let again = at_rest(&with_status(&ws, once.clone()), stall.as_ref(), &at(10));
            assert!(!differs(&once, &again), "{name}, stall {stall:?}: a second rest would write");
            assert_eq!(once, again, "{name}: even the transition times are kept");
        }
    }
}

// ---- what each transition sets ---------------------------------------------------------------

#[test]
fn claimed_records_a_fresh_operation_under_the_next_epoch() {
    let expectations = [
        (Provision, Phase::Provisioning, ConditionReason::Provisioning),
        (Switch, Phase::Switching, ConditionReason::Switching),
        (Stop, Phase::Stopping, ConditionReason::Stopping),
        (Delete, Phase::Terminating, ConditionReason::Deleting),
    ];
    for (name, ws) in fixtures() {
        for (kind, phase, reason) in expectations {
            let what = format!("{kind:?} claimed from {name:?}");
            let before = ws.status.clone().unwrap_or_default();
            let s = claimed(&ws, "op-2", kind, Some("a".into()), Some("b".into()), ME, &now());
            assert_eq!(s.epoch, before.epoch + 1, "{what}");
            let o = op(&s);
            assert_eq!(o.id, "op-2", "{what}");
            assert_eq!(o.kind, kind, "{what}");
            assert_eq!(o.step, Step::Claimed, "{what}");
            assert_eq!(o.holder, ME, "{what}");
            assert_eq!(o.epoch, s.epoch, "{what}: the operation carries the new epoch");
            assert_eq!((o.from.as_deref(), o.to.as_deref()), (Some("a"), Some("b")), "{what}");
            assert_eq!((&o.started_at, &o.renewed_at), (&now(), &now()), "{what}");
            assert_eq!((o.attempts, o.last_error.as_deref()), (0, None), "{what}: a fresh count");
            // Nothing about the compute changes at the claim.
            assert_eq!(s.instance, before.instance, "{what}");
            assert_eq!(s.active_provider, before.active_provider, "{what}");
            assert_eq!(s.last_switch, before.last_switch, "{what}");
            let expected_phase = if ws.metadata.deletion_timestamp.is_some() { Phase::Terminating } else { phase };
            assert_eq!(summary(&s), (false, true, false, Some(expected_phase)), "{what}");
            assert_eq!(cond_of(&s, cond::RECONCILING).reason, reason, "{what}");
            assert_eq!(cond_of(&s, cond::READY).reason, reason, "{what}");
        }
    }
}

#[test]
fn claimed_describes_the_operation() {
    let ws = workspace("b", true, Some(status(Some("a"), Some("a"), None, Vec::new())));
    let s = claimed(&ws, "op-2", Switch, Some("a".into()), Some("b".into()), ME, &now());
    assert_eq!(cond_of(&s, cond::RECONCILING).message, "switching from a to b: claimed");
    assert_eq!(cond_of(&s, cond::READY).message, "switching from a to b: claimed");
    assert_eq!(cond_of(&s, cond::STALLED).message, "", "no stall message while not stalled");
}

#[test]
fn claimed_clears_an_earlier_stall() {
    let ws = workspace(
        "b",
        true,
        Some(status(Some("a"), Some("a"), None, conditions(false, false, true, ConditionReason::StopFailed))),
    );
    let s = claimed(&ws, "op-2", Switch, Some("a".into()), Some("b".into()), ME, &now());
    assert_eq!(summary(&s), (false, true, false, Some(Phase::Switching)));
    assert_eq!(cond_of(&s, cond::STALLED).last_transition_time, now());
    assert_eq!(cond_of(&s, cond::READY).last_transition_time, at(-3600), "Ready stayed False");
}

#[test]
fn taken_over_keeps_the_operation_under_a_new_holder_and_epoch() {
    for (name, ws) in fixtures() {
        let Some(before) = ws.status.as_ref().and_then(|s| s.operation.clone()) else {
            continue;
        };
        let s = taken_over(&ws, ME, &now());
        let old = ws.status.as_ref().unwrap();
        assert_eq!(s.epoch, old.epoch + 1, "{name}");
        let o = op(&s);
        assert_eq!(o.holder, ME, "{name}");
        assert_eq!(o.epoch, s.epoch, "{name}: the new epoch fences the former holder");
        assert_eq!(o.renewed_at, now(), "{name}");
        let mut reach = before.reach.clone();
        reach.extend(before.unfenced.iter().cloned());
        reach.sort();
        reach.dedup();
        assert_eq!(o.unfenced, reach, "{name}: every provider the former holder could call is to be fenced");
        let unchanged = Operation {
            holder: o.holder.clone(),
            epoch: o.epoch,
            renewed_at: o.renewed_at.clone(),
            unfenced: o.unfenced.clone(),
            ..*before
        };
        assert_eq!(o, &unchanged, "{name}: id, kind, step, from, to, attempts, retryAt, startedAt kept");
        assert_eq!(s.instance, old.instance, "{name}");
        assert_eq!(s.active_provider, old.active_provider, "{name}");
    }
}

#[test]
fn a_claim_reaches_its_providers_and_inherits_what_a_release_left_unfenced() {
    let mut ws = workspace("b", true, Some(status(Some("a"), Some("a"), None, Vec::new())));
    ws.status.as_mut().unwrap().unfenced = vec!["t".into()];
    let s = claimed(&ws, "op-2", Switch, Some("a".into()), Some("b".into()), ME, &now());
    assert_eq!(op(&s).reach, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(op(&s).unfenced, vec!["t".to_string()], "to fence before any other call");
    assert!(s.unfenced.is_empty(), "moved into the operation");
    // A takeover adds the whole reach; a retarget widens the reach; fenced clears the list.
    let ws = with_status(&ws, s);
    let s = taken_over(&ws, "ctrl-new", &now());
    assert_eq!(op(&s).unfenced, vec!["a".to_string(), "b".to_string(), "t".to_string()]);
    let mut ws = with_status(&ws, s);
    ws.spec.provider = "c".into();
    let s = retargeted(&ws, "op-3", &now());
    assert_eq!(op(&s).reach, vec!["a".to_string(), "b".to_string(), "c".to_string()]);
    let ws = with_status(&ws, s);
    let s = fenced(&ws, &now());
    assert!(op(&s).unfenced.is_empty());
    let ws = with_status(&ws, s);
    // Released with fences pending (an abort right after a takeover): the next claim inherits them.
    let ws = with_status(&ws, taken_over(&ws, "ctrl-3", &now()));
    let s = aborted(&ws, &now());
    assert_eq!(s.unfenced, vec!["a".to_string(), "b".to_string(), "c".to_string()]);
}

#[test]
fn renewed_changes_only_renewed_at() {
    for (name, ws) in fixtures() {
        let Some(before) = ws.status.clone() else { continue };
        let s = renewed(&ws, &at(99));
        let mut expected = before.clone();
        if let Some(o) = expected.operation.as_mut() {
            o.renewed_at = at(99);
        }
        assert_eq!(s, expected, "{name}");
    }
}

#[test]
fn converted_to_delete_keeps_id_target_and_step() {
    for (name, ws) in fixtures() {
        let Some(before) = ws.status.as_ref().and_then(|s| s.operation.clone()) else {
            continue;
        };
        let ws = deleting(ws);
        let s = converted_to_delete(&ws, &now());
        let o = op(&s);
        assert_eq!(o.kind, Delete, "{name}");
        assert_eq!(
            (&o.id, &o.to, &o.from, o.step, &o.holder, o.epoch),
            (&before.id, &before.to, &before.from, before.step, &before.holder, before.epoch),
            "{name}: the key of anything in flight stays known"
        );
        assert_eq!((o.attempts, o.last_error.as_deref()), (0, None), "{name}");
        assert_eq!(o.renewed_at, now(), "{name}");
        assert_eq!(s.epoch, epoch(&ws), "{name}: no new epoch");
        assert_eq!(s.instance, ws.status.as_ref().unwrap().instance, "{name}");
        assert_eq!(summary(&s), (false, true, false, Some(Phase::Terminating)), "{name}");
        assert_eq!(cond_of(&s, cond::RECONCILING).reason, ConditionReason::Deleting, "{name}");
    }
}

#[test]
fn committed_records_the_new_provider_once_the_old_compute_is_gone() {
    for (spec, name) in [("b", "to the claimed target"), ("c", "to a target changed before the stop")] {
        let o = with_failures(operation(Switch, Step::Claimed, Some("a"), Some("b")), 2, "stop timed out");
        let ws = workspace(spec, true, Some(status(Some("a"), Some("a"), Some(o.clone()), Vec::new())));
        let s = committed(&ws, &now());
        assert_eq!(s.instance, None, "{name}: old instance gone");
        assert_eq!(s.active_provider.as_deref(), Some(spec), "{name}: activeProvider = spec.provider");
        let c = op(&s);
        assert_eq!(c.step, Step::OldStopped, "{name}");
        assert_eq!(c.to.as_deref(), Some(spec), "{name}");
        assert_eq!(c.from.as_deref(), Some("a"), "{name}: from kept for lastSwitch");
        assert_eq!((c.id.as_str(), c.kind, c.epoch), ("op-1", Switch, 4), "{name}");
        assert_eq!((c.attempts, c.last_error.as_deref()), (0, None), "{name}: a new step");
        assert_eq!(c.renewed_at, now(), "{name}");
        assert_eq!(s.epoch, 4, "{name}");
        assert_eq!(summary(&s), (false, true, false, Some(Phase::Switching)), "{name}");
        assert_eq!(
            cond_of(&s, cond::RECONCILING).message,
            format!("switching from a to {spec}: old compute stopped"),
            "{name}"
        );
    }
}

#[test]
fn retargeted_provisions_under_a_new_id_on_the_new_target() {
    let o = with_failures(operation(Switch, Step::OldStopped, Some("a"), Some("b")), 3, "quota");
    let ws = workspace("c", true, Some(status(Some("b"), None, Some(o), Vec::new())));
    let s = retargeted(&ws, "op-3", &now());
    let r = op(&s);
    assert_eq!(r.id, "op-3", "a new id, hence a new provision key");
    assert_eq!(r.to.as_deref(), Some("c"));
    assert_eq!(r.from.as_deref(), Some("a"));
    assert_eq!(r.step, Step::OldStopped);
    assert_eq!((r.kind, r.epoch, r.holder.as_str()), (Switch, 4, "ctrl-old"));
    assert_eq!((r.attempts, r.last_error.as_deref()), (0, None));
    assert_eq!(r.renewed_at, now());
    assert_eq!(s.active_provider.as_deref(), Some("c"));
    assert_eq!(s.instance, None);
    assert_eq!(s.epoch, 4);
    assert_eq!(summary(&s), (false, true, false, Some(Phase::Switching)));
}

#[test]
fn retargeted_provision_moves_to_the_new_target() {
    let ws = workspace(
        "c",
        true,
        Some(status(None, None, Some(operation(Provision, Step::Claimed, None, Some("b"))), Vec::new())),
    );
    let s = retargeted(&ws, "op-3", &now());
    let r = op(&s);
    assert_eq!((r.id.as_str(), r.to.as_deref(), r.kind), ("op-3", Some("c"), Provision));
    assert_eq!(s.active_provider.as_deref(), Some("c"));
    assert_eq!(summary(&s), (false, true, false, Some(Phase::Provisioning)));
}

#[test]
fn provisioned_finishes_a_switch_with_last_switch() {
    let o = with_failures(operation(Switch, Step::OldStopped, Some("a"), Some("b")), 1, "flaky");
    let ws = workspace("b", true, Some(status(Some("b"), None, Some(o), Vec::new())));
    let s = provisioned(&ws, instance("b"), &now());
    assert_eq!(s.operation, None, "the claim is released");
    assert_eq!(s.instance, Some(instance("b")));
    assert_eq!(s.active_provider.as_deref(), Some("b"));
    assert_eq!(
        s.last_switch,
        Some(LastSwitch { from: "a".into(), to: "b".into(), started_at: at(-300), completed_at: now() })
    );
    assert_eq!(s.epoch, 4);
    assert_eq!(summary(&s), (true, false, false, Some(Phase::Running)));
    assert_eq!(cond_of(&s, cond::READY).reason, ConditionReason::Running);
    assert_eq!(cond_of(&s, cond::READY).message, "running on b as i-b");
}

#[test]
fn provisioned_finishes_a_provision_without_touching_last_switch() {
    let earlier = LastSwitch { from: "x".into(), to: "y".into(), started_at: at(-9000), completed_at: at(-8000) };
    for last_switch in [None, Some(earlier)] {
        let mut st =
            status(Some("a"), None, Some(operation(Provision, Step::Claimed, Some("a"), Some("b"))), Vec::new());
        st.last_switch = last_switch.clone();
        let ws = workspace("b", true, Some(st));
        let s = provisioned(&ws, instance("b"), &now());
        assert_eq!(s.operation, None);
        assert_eq!(s.last_switch, last_switch, "a provision is not a switch");
        assert_eq!(s.instance, Some(instance("b")));
        assert_eq!(s.active_provider.as_deref(), Some("b"));
        assert_eq!(summary(&s), (true, false, false, Some(Phase::Running)));
    }
}

#[test]
fn finished_without_compute_releases_the_claim_and_the_instance() {
    let stop = operation(Stop, Step::Claimed, Some("a"), None);
    // A stop: Stopped, Ready.
    let ws = workspace("a", false, Some(status(Some("a"), Some("a"), Some(stop.clone()), Vec::new())));
    let s = finished_without_compute(&ws, &now());
    assert_eq!((s.operation.as_ref(), s.instance.as_ref()), (None, None));
    assert_eq!(s.active_provider.as_deref(), Some("a"), "placement kept");
    assert_eq!(s.epoch, 4);
    assert_eq!(summary(&s), (true, false, false, Some(Phase::Stopped)));
    assert_eq!(cond_of(&s, cond::READY).reason, ConditionReason::Stopped);
    assert_eq!(cond_of(&s, cond::READY).message, "stopped as requested (placed on a)");
    // A finished operation on a workspace that should run: not Ready, more to do.
    let ws = workspace("a", true, Some(status(Some("a"), Some("a"), Some(stop), Vec::new())));
    let s = finished_without_compute(&ws, &now());
    assert_eq!(summary(&s), (false, true, false, Some(Phase::Pending)));
    // A delete: Terminating.
    let ws = deleting(workspace(
        "a",
        true,
        Some(status(Some("a"), Some("a"), Some(operation(Delete, Step::Claimed, Some("a"), None)), Vec::new())),
    ));
    let s = finished_without_compute(&ws, &now());
    assert_eq!((s.operation.as_ref(), s.instance.as_ref()), (None, None));
    assert_eq!(s.phase, Some(Phase::Terminating));
}

#[test]
fn aborted_releases_the_claim_and_keeps_the_compute() {
    let ws = workspace(
        "a",
        true,
        Some(status(
            Some("a"),
            Some("a"),
            Some(operation(Switch, Step::Claimed, Some("a"), Some("b"))),
            conditions(false, true, false, ConditionReason::Switching),
        )),
    );
    let s = aborted(&ws, &now());
    assert_eq!(s.operation, None);
    assert_eq!(s.instance, Some(instance("a")));
    assert_eq!(s.active_provider.as_deref(), Some("a"));
    assert_eq!(s.last_switch, None, "nothing switched");
    assert_eq!(s.epoch, 4, "the epoch stays");
    assert_eq!(summary(&s), (true, false, false, Some(Phase::Running)));
    assert_eq!(cond_of(&s, cond::READY).last_transition_time, now());
    assert_eq!(cond_of(&s, cond::RECONCILING).last_transition_time, now());
}

#[test]
fn stop_failed_releases_the_claim_and_stalls_on_the_old_provider() {
    let mut o = operation(Switch, Step::Claimed, Some("a"), Some("b"));
    o.holder = ME.into();
    let ws = workspace(
        "b",
        true,
        Some(status(Some("a"), Some("a"), Some(o), conditions(false, true, false, ConditionReason::Switching))),
    );
    let s = stop_failed(&ws, "connection refused", &now());
    assert_eq!(s.operation, None, "claim released");
    let unconfirmed = Instance { unconfirmed: true, ..instance("a") };
    assert_eq!(s.instance, Some(unconfirmed), "stays on the old provider, which may have stopped it");
    assert_eq!(s.active_provider.as_deref(), Some("a"));
    assert_eq!(s.epoch, 4);
    // Confirmed running by an abort's lookup: no longer in doubt.
    let mut checked = ws.clone();
    let mut st = s.clone();
    st.operation = Some(Box::new(operation(Switch, Step::Claimed, Some("a"), Some("a"))));
    checked.status = Some(st);
    assert_eq!(aborted(&checked, &now()).instance, Some(instance("a")));
    assert_eq!(summary(&s), (false, false, true, Some(Phase::Failed)));
    let stalled = cond_of(&s, cond::STALLED);
    assert_eq!(stalled.reason, ConditionReason::StopFailed);
    assert_eq!(stalled.message, "stopping the compute on a failed: connection refused");
    assert_eq!(cond_of(&s, cond::READY).reason, ConditionReason::StopFailed);
    assert_eq!(cond_of(&s, cond::RECONCILING).message, "");
}

#[test]
fn step_failed_counts_attempts_and_stalls_past_the_threshold() {
    let mut ws = workspace(
        "b",
        true,
        Some(status(None, None, Some(operation(Provision, Step::Claimed, None, Some("b"))), Vec::new())),
    );
    for attempt in 1..=4 {
        let s = step_failed(
            &ws,
            ConditionReason::ProvisionFailed,
            "quota exceeded",
            3,
            &at(attempt.into()),
            &at(attempt.into()),
        );
        let o = op(&s);
        assert_eq!(o.attempts, attempt, "attempt {attempt}");
        assert_eq!(o.last_error.as_deref(), Some("quota exceeded"));
        assert_eq!(o.renewed_at, at(attempt.into()), "the backoff counts from the failure");
        assert_eq!((o.id.as_str(), o.step, o.epoch), ("op-1", Step::Claimed, 4), "same operation");
        assert_eq!(s.epoch, 4);
        if attempt < 3 {
            assert_eq!(summary(&s), (false, true, false, Some(Phase::Provisioning)), "attempt {attempt}");
            assert_eq!(
                cond_of(&s, cond::RECONCILING).message,
                format!("provisioning on b: claimed; last error (attempt {attempt}): quota exceeded")
            );
        } else {
            assert_eq!(summary(&s), (false, false, true, Some(Phase::Failed)), "attempt {attempt}");
            let stalled = cond_of(&s, cond::STALLED);
            assert_eq!(stalled.reason, ConditionReason::ProvisionFailed);
            assert_eq!(stalled.message, format!("quota exceeded (attempt {attempt}, still retrying)"));
            assert!(s.operation.is_some(), "the claim is kept while retrying");
        }
        ws = with_status(&ws, s);
    }
}

#[test]
fn retrying_renews_the_claim_and_shows_the_attempt() {
    let ws = workspace(
        "b",
        true,
        Some(status(Some("a"), Some("a"), Some(operation(Switch, Step::Claimed, Some("a"), Some("b"))), Vec::new())),
    );
    let s = retrying(&ws, "stop timed out", &at(42));
    let o = op(&s);
    assert_eq!(o.renewed_at, at(42), "renewed");
    assert_eq!(o.last_error.as_deref(), Some("stop timed out"));
    assert_eq!(o.attempts, 1);
    assert_eq!((o.id.as_str(), o.step, o.epoch), ("op-1", Step::Claimed, 4), "same operation");
    assert_eq!(s.instance, Some(instance("a")), "nothing else changes");
    assert_eq!(summary(&s), (false, true, false, Some(Phase::Switching)), "never stalls");
    assert_eq!(
        cond_of(&s, cond::RECONCILING).message,
        "switching from a to b: claimed; last error (attempt 1): stop timed out"
    );
    let committed = committed(&with_status(&ws, s), &at(43));
    assert_eq!((op(&committed).attempts, op(&committed).last_error.as_deref()), (0, None), "the commit starts afresh");
}

#[test]
fn step_failed_with_no_threshold_stalls_at_once() {
    let ws = workspace(
        "b",
        true,
        Some(status(Some("b"), None, Some(operation(Switch, Step::OldStopped, Some("a"), Some("b"))), Vec::new())),
    );
    let s =
        step_failed(&ws, ConditionReason::ProviderNotFound, "ComputeProvider \"b\" does not exist", 0, &now(), &now());
    assert_eq!(summary(&s), (false, false, true, Some(Phase::Failed)));
    assert_eq!(cond_of(&s, cond::STALLED).reason, ConditionReason::ProviderNotFound);
    assert_eq!(op(&s).attempts, 1);
}

#[test]
fn at_rest_reads_what_is_there() {
    let stall = Stall::new(ConditionReason::ProviderNotFound, "ComputeProvider \"b\" does not exist");
    let n = now();
    // Running.
    let running = workspace("a", true, Some(status(Some("a"), Some("a"), None, Vec::new())));
    let s = at_rest(&running, None, &n);
    assert_eq!(summary(&s), (true, false, false, Some(Phase::Running)));
    assert_eq!(s.active_provider.as_deref(), Some("a"));
    // Blocked from switching: the compute stays where it is.
    let blocked = workspace("b", true, Some(status(Some("a"), Some("a"), None, Vec::new())));
    let s = at_rest(&blocked, Some(&stall), &n);
    assert_eq!(summary(&s), (false, false, true, Some(Phase::Failed)));
    assert_eq!(s.active_provider.as_deref(), Some("a"), "placement is where the compute is");
    assert_eq!(s.instance, Some(instance("a")));
    let stalled = cond_of(&s, cond::STALLED);
    assert_eq!(
        (stalled.reason.as_str(), stalled.message.as_str()),
        (ConditionReason::ProviderNotFound.as_str(), "ComputeProvider \"b\" does not exist")
    );
    // Stopped, spec now naming b: without compute, the placement is the desired one.
    let stopped = workspace("b", false, Some(status(Some("a"), None, None, Vec::new())));
    let s = at_rest(&stopped, None, &n);
    assert_eq!(summary(&s), (true, false, false, Some(Phase::Stopped)));
    assert_eq!(s.active_provider.as_deref(), Some("b"));
    // Nothing yet, target missing.
    let new = workspace("b", true, None);
    let s = at_rest(&new, Some(&stall), &n);
    assert_eq!(summary(&s), (false, false, true, Some(Phase::Failed)));
    assert_eq!(s.epoch, 0);
    // Nothing yet, waiting: Pending is Reconciling.
    let s = at_rest(&new, None, &n);
    assert_eq!(summary(&s), (false, true, false, Some(Phase::Pending)));
    // Deleting: Terminating whatever the rest says.
    let s = at_rest(&deleting(running), None, &n);
    assert_eq!(s.phase, Some(Phase::Terminating));
}

#[test]
fn observed_generation_follows_the_workspace() {
    for generation in [1, 2, 42] {
        let mut ws = workspace("a", true, Some(status(Some("a"), Some("a"), None, Vec::new())));
        ws.metadata.generation = Some(generation);
        let s = at_rest(&ws, None, &now());
        assert_eq!(s.observed_generation, Some(generation));
        assert!(s.conditions.iter().all(|c| c.observed_generation == Some(generation)), "{:?}", s.conditions);
    }
}

#[test]
fn differs_ignores_only_transition_times() {
    let ws = workspace("a", true, Some(status(Some("a"), Some("a"), None, Vec::new())));
    let a = at_rest(&ws, None, &at(0));
    let mut b = a.clone();
    for c in &mut b.conditions {
        c.last_transition_time = at(99);
    }
    assert!(!differs(&a, &b));
    let mut c = a.clone();
    c.conditions[0].message.push('!');
    assert!(differs(&a, &c));
    let mut d = a.clone();
    d.epoch += 1;
    assert!(differs(&a, &d));
}
