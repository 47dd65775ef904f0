//! Table-driven tests of `decide` (DESIGN.md §2): every operation kind × step × situation, the
//! claims of other instances, and the cases without an operation. Expected values are written
//! from the design, not derived from the code: a key is spelled out, a stall names its provider.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;

use super::{Facts, Next, ProviderState, decide};
use crate::api::conditions::{ConditionReason, WaitReason};
use crate::api::{FINALIZER, Instance, OperationKind, Step, Workspace};
use crate::controller::status::Stall;
use crate::runtime::Backoff;

use OperationKind::{Delete, Provision, Stop, Switch};
use Step::{Claimed, OldStopped};

const ME: &str = "ctrl-me";
const OTHER: &str = "ctrl-other";
const UID: &str = "uid-1";
const OP_ID: &str = "op-1";
/// The provision key of operation `OP_ID` of workspace `UID`.
const KEY: &str = "uid-1.op-1";
const LEASE: Duration = Duration::from_secs(60);
const BASE: Duration = Duration::from_secs(1);
const CAP: Duration = Duration::from_secs(30);
/// A finalizer of someone else: it must not be mistaken for ours.
const FOREIGN_FINALIZER: &str = "example.com/keep";

fn now() -> Timestamp {
    "2030-01-02T03:04:05Z".parse().unwrap()
}

fn ago(secs: i64) -> Timestamp {
    now() - SignedDuration::from_secs(secs)
}

// ---- building workspaces ---------------------------------------------------------------------

/// An operation in `status.operation`; held by us, renewed 5s ago, no failed attempt.
#[derive(Clone, Debug)]
struct Op {
    id: &'static str,
    kind: OperationKind,
    step: Step,
    from: Option<&'static str>,
    to: Option<&'static str>,
    holder: &'static str,
    renewed_ago: i64,
    attempts: i32,
    /// `retryAt`, in seconds from now (negative: passed).
    retry_in: Option<i64>,
    unfenced: &'static [&'static str],
}

fn op(kind: OperationKind, step: Step, from: Option<&'static str>, to: Option<&'static str>) -> Op {
    Op { id: OP_ID, kind, step, from, to, holder: ME, renewed_ago: 5, attempts: 0, retry_in: None, unfenced: &[] }
}

/// A switch from a to b.
fn switch(step: Step) -> Op {
    op(Switch, step, Some("a"), Some("b"))
}

/// A first provision on b.
fn provision(step: Step) -> Op {
    op(Provision, step, None, Some("b"))
}

/// A stop of the compute on a.
fn stop(step: Step) -> Op {
    op(Stop, step, Some("a"), None)
}

/// A delete of the compute on a; `to` is set when it was converted from a switch or provision.
fn delete(step: Step, to: Option<&'static str>) -> Op {
    op(Delete, step, Some("a"), to)
}

impl Op {
    fn held_by(mut self, holder: &'static str) -> Self {
        self.holder = holder;
        self
    }
    fn renewed(mut self, secs_ago: i64) -> Self {
        self.renewed_ago = secs_ago;
        self
    }
    fn attempts(mut self, attempts: i32) -> Self {
        self.attempts = attempts;
        self
    }
    fn id(mut self, id: &'static str) -> Self {
        self.id = id;
        self
    }
    fn retry_in(mut self, secs: i64) -> Self {
        self.retry_in = Some(secs);
        self
    }
    fn unfenced(mut self, providers: &'static [&'static str]) -> Self {
        self.unfenced = providers;
        self
    }
    fn label(&self) -> String {
        format!("{:?}/{:?}", self.kind, self.step)
    }
}

/// A workspace: spec, finalizer, deletion and status, built through its JSON form.
#[derive(Clone, Debug)]
struct Ws {
    uid: &'static str,
    provider: &'static str,
    running: bool,
    finalizer: bool,
    deleting: bool,
    instance: Option<&'static str>,
    active: Option<&'static str>,
    /// The instance's last stop failed with its outcome unknown.
    unconfirmed: bool,
    op: Option<Op>,
}

/// A running workspace naming `provider`, with our finalizer, no status.
fn ws(provider: &'static str) -> Ws {
    Ws {
        uid: UID,
        provider,
        running: true,
        finalizer: true,
        deleting: false,
        instance: None,
        active: None,
        unconfirmed: false,
        op: None,
    }
}

impl Ws {
    fn stopped(mut self) -> Self {
        self.running = false;
        self
    }
    fn without_finalizer(mut self) -> Self {
        self.finalizer = false;
        self
    }
    fn deleting(mut self) -> Self {
        self.deleting = true;
        self
    }
    /// Compute on `provider` (which is then also the active provider).
    fn on(mut self, provider: &'static str) -> Self {
        self.instance = Some(provider);
        self.active = Some(provider);
        self
    }
    fn active(mut self, provider: &'static str) -> Self {
        self.active = Some(provider);
        self
    }
    fn unconfirmed(mut self) -> Self {
        self.unconfirmed = true;
        self
    }
    fn spec(mut self, provider: &'static str) -> Self {
        self.provider = provider;
        self
    }
    fn uid(mut self, uid: &'static str) -> Self {
        self.uid = uid;
        self
    }
    fn op(mut self, op: Op) -> Self {
        self.op = Some(op);
        self
    }

    fn build(&self) -> Workspace {
        let mut finalizers = vec![FOREIGN_FINALIZER];
        if self.finalizer {
            finalizers.push(FINALIZER);
        }
        let mut ws = Workspace::builder("ws-1", self.provider)
            .namespace("default")
            .uid(self.uid)
            .generation(3)
            .resource_version("42")
            .finalizers(&finalizers)
            .running(self.running);
        if self.deleting {
            ws = ws.deleting(Time(ago(30)));
        }
        let mut status = json!({ "epoch": 4 });
        if let Some(p) = self.active {
            status["activeProvider"] = json!(p);
        }
        if let Some(p) = self.instance {
            status["instance"] = serde_json::to_value(instance(p)).unwrap();
            if self.unconfirmed {
                status["instance"]["unconfirmed"] = json!(true);
            }
        }
        if let Some(op) = &self.op {
            let mut o = json!({
                "id": op.id,
                "kind": op.kind,
                "step": op.step,
                "holder": op.holder,
                "epoch": 4,
                "startedAt": ago(600).to_string(),
                "renewedAt": ago(op.renewed_ago).to_string(),
                "attempts": op.attempts,
            });
            if let Some(from) = op.from {
                o["from"] = json!(from);
            }
            if let Some(to) = op.to {
                o["to"] = json!(to);
            }
            if op.attempts > 0 {
                o["lastError"] = json!("boom");
            }
            if let Some(secs) = op.retry_in {
                o["retryAt"] = json!((now() + SignedDuration::from_secs(secs)).to_string());
            }
            if !op.unfenced.is_empty() {
                o["unfenced"] = json!(op.unfenced);
            }
            status["operation"] = o;
        }
        ws.status(serde_json::from_value(status).expect("a valid status")).build()
    }
}

/// The compute on `provider`, provisioned by an earlier operation.
fn instance(provider: &str) -> Instance {
    Instance::new(format!("i-{provider}"), provider, format!("{UID}.op-0"))
}

// ---- facts -----------------------------------------------------------------------------------

/// Everything usable, no stop backoff pending.
fn facts() -> Facts {
    Facts {
        me: ME.to_string(),
        now: now(),
        claim_lease: LEASE,
        target: ProviderState::Usable,
        source: ProviderState::Usable,
        retry_at: None,
        provision_backoff: Backoff::new(BASE, CAP),
        leader: false,
    }
}

fn target(state: ProviderState) -> Facts {
    Facts { target: state, ..facts() }
}

fn source(state: ProviderState) -> Facts {
    Facts { source: state, ..facts() }
}

fn both(state: ProviderState) -> Facts {
    Facts { target: state.clone(), source: state, ..facts() }
}

/// A failed stop may be retried `secs` from now (negative: in the past).
fn retry_in(secs: i64) -> Facts {
    Facts { retry_at: Some(now() + SignedDuration::from_secs(secs)), ..facts() }
}

const MISSING: ProviderState = ProviderState::Missing;

fn not_ready() -> ProviderState {
    ProviderState::NotReady { reason: ConditionReason::ProviderNotReady, message: "endpoint unreachable".to_string() }
}

fn misconfigured() -> ProviderState {
    ProviderState::NotReady { reason: ConditionReason::ProviderMisconfigured, message: "secret missing".to_string() }
}

// ---- expected decisions ----------------------------------------------------------------------

fn missing_stall(provider: &str) -> Stall {
    Stall::new(ConditionReason::ProviderNotFound, format!("ComputeProvider \"{provider}\" does not exist"))
}

fn not_ready_stall(provider: &str) -> Stall {
    Stall::new(
        ConditionReason::ProviderNotReady,
        format!("ComputeProvider \"{provider}\" is not ready: endpoint unreachable"),
    )
}

fn misconfigured_stall(provider: &str) -> Stall {
    Stall::new(
        ConditionReason::ProviderMisconfigured,
        format!("ComputeProvider \"{provider}\" is not ready: secret missing"),
    )
}

fn rest() -> Next {
    Next::Rest { stall: None }
}

fn stalled(stall: Stall) -> Next {
    Next::Rest { stall: Some(stall) }
}

fn claim(kind: OperationKind, from: Option<&str>, to: Option<&str>) -> Next {
    Next::Claim { kind, from: from.map(String::from), to: to.map(String::from) }
}

fn wait(secs: u64, why: WaitReason) -> Next {
    Next::Wait { after: Duration::from_secs(secs), why }
}

fn stop_old(provider: &str) -> Next {
    Next::StopOld { instance: instance(provider) }
}

fn provision_on(provider: &str) -> Next {
    Next::Provision { provider: provider.to_string(), key: KEY.to_string() }
}

fn retarget(provider: &str) -> Next {
    Next::Retarget { provider: provider.to_string(), key: KEY.to_string() }
}

/// Finish without compute, releasing what `KEY` may have created on `release`.
fn finish(release: Option<&str>) -> Next {
    Next::FinishWithoutCompute { release: release.map(|p| (p.to_string(), KEY.to_string())) }
}

fn hold(stall: Stall) -> Next {
    Next::Hold { stall }
}

// ---- the table -------------------------------------------------------------------------------

type Case = (String, Workspace, Facts, Next);

fn case(description: impl Into<String>, ws: Ws, facts: Facts, expected: Next) -> Case {
    (description.into(), ws.build(), facts, expected)
}

/// Runs every case and reports all mismatches at once, each with its description.
fn check(cases: &[Case]) {
    assert!(!cases.is_empty());
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(description, ws, facts, expected)| {
            let got = decide(ws, facts);
            (&got != expected).then(|| format!("{description}:\n    expected {expected:?}\n    got      {got:?}"))
        })
        .collect();
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// No operation in flight: finalizer handling, validation, claims, rest.
fn without_operation() -> Vec<Case> {
    vec![
        // The finalizer comes first, before any validation or claim.
        case("no finalizer: add it", ws("a").without_finalizer(), facts(), Next::AddFinalizer),
        case(
            "no finalizer, compute on a, spec b, target missing: add it before anything",
            ws("b").on("a").without_finalizer(),
            target(MISSING),
            Next::AddFinalizer,
        ),
        case(
            "no finalizer, stopped spec, stop backoff pending: add it first",
            ws("a").on("a").stopped().without_finalizer(),
            retry_in(30),
            Next::AddFinalizer,
        ),
        // Deletion.
        case(
            "deleting without our finalizer, no compute: not ours",
            ws("a").deleting().without_finalizer(),
            facts(),
            Next::Nothing,
        ),
        case(
            "deleting without our finalizer, compute on a: not ours",
            ws("a").on("a").deleting().without_finalizer(),
            facts(),
            Next::Nothing,
        ),
        case("deleting, no compute: remove the finalizer", ws("a").deleting(), facts(), Next::RemoveFinalizer),
        case(
            "deleting, no compute, stopped and placed on a: remove the finalizer",
            ws("a").stopped().active("a").deleting(),
            facts(),
            Next::RemoveFinalizer,
        ),
        case(
            "deleting, no compute, target missing: remove the finalizer",
            ws("a").deleting(),
            target(MISSING),
            Next::RemoveFinalizer,
        ),
        case(
            "deleting, no compute, stop backoff pending: nothing to stop, remove the finalizer",
            ws("a").deleting(),
            retry_in(30),
            Next::RemoveFinalizer,
        ),
        case(
            "deleting, compute on a: claim Delete from a",
            ws("a").on("a").deleting(),
            facts(),
            claim(Delete, Some("a"), None),
        ),
        case(
            "deleting, compute on a, spec b: claim Delete from where the compute is",
            ws("b").on("a").deleting(),
            facts(),
            claim(Delete, Some("a"), None),
        ),
        case(
            "deleting, compute on a, stopped spec: claim Delete",
            ws("a").on("a").stopped().deleting(),
            facts(),
            claim(Delete, Some("a"), None),
        ),
        case(
            "deleting, compute on a, spec b missing: a deletion needs no target",
            ws("b").on("a").deleting(),
            target(MISSING),
            claim(Delete, Some("a"), None),
        ),
        case(
            "deleting, compute on a, spec b not ready: a deletion needs no target",
            ws("b").on("a").deleting(),
            target(not_ready()),
            claim(Delete, Some("a"), None),
        ),
        case(
            "deleting, compute on a, stop backoff elapsed: claim Delete",
            ws("a").on("a").deleting(),
            retry_in(-30),
            claim(Delete, Some("a"), None),
        ),
        // First provision.
        case("new workspace: claim Provision on spec.provider", ws("b"), facts(), claim(Provision, None, Some("b"))),
        case(
            "no compute, placed on a before, spec b: Provision from a to b",
            ws("b").active("a"),
            facts(),
            claim(Provision, Some("a"), Some("b")),
        ),
        case(
            "no compute, placed on b before (started again): Provision from b to b",
            ws("b").active("b"),
            facts(),
            claim(Provision, Some("b"), Some("b")),
        ),
        case(
            "no compute, source not ready: irrelevant without compute",
            ws("b"),
            source(not_ready()),
            claim(Provision, None, Some("b")),
        ),
        case(
            "no compute, stop backoff elapsed: claim Provision",
            ws("b"),
            retry_in(-1),
            claim(Provision, None, Some("b")),
        ),
        case(
            "no compute, target missing: stall ProviderNotFound, no claim",
            ws("b"),
            target(MISSING),
            stalled(missing_stall("b")),
        ),
        case(
            "no compute, target not ready: stall ProviderNotReady, no claim",
            ws("b"),
            target(not_ready()),
            stalled(not_ready_stall("b")),
        ),
        case(
            "no compute, target misconfigured: the provider's reason is kept",
            ws("b").active("a"),
            target(misconfigured()),
            stalled(misconfigured_stall("b")),
        ),
        // At rest.
        case("running on spec.provider: rest", ws("a").on("a"), facts(), rest()),
        case(
            "running on spec.provider, provider not ready: no compute change to make",
            ws("a").on("a"),
            both(not_ready()),
            rest(),
        ),
        case("running on spec.provider, stop backoff elapsed: rest", ws("a").on("a"), retry_in(-5), rest()),
        case("stopped, no compute: rest", ws("a").stopped(), facts(), rest()),
        case(
            "stopped, no compute, placed on a, spec b: rest (nothing to move)",
            ws("b").stopped().active("a"),
            facts(),
            rest(),
        ),
        case(
            "stopped, no compute, target missing: nothing to call, but the bad name is reported",
            ws("b").stopped(),
            target(MISSING),
            Next::Rest {
                stall: Some(Stall::new(ConditionReason::ProviderNotFound, "ComputeProvider \"b\" does not exist")),
            },
        ),
        // Switch.
        case("compute on a, spec b: claim Switch a→b", ws("b").on("a"), facts(), claim(Switch, Some("a"), Some("b"))),
        case(
            "switch a→b, target missing: stall naming b, no claim",
            ws("b").on("a"),
            target(MISSING),
            stalled(missing_stall("b")),
        ),
        case(
            "switch a→b, target not ready: stall naming b, no claim",
            ws("b").on("a"),
            target(not_ready()),
            stalled(not_ready_stall("b")),
        ),
        case(
            "switch a→b, target misconfigured: stall ProviderMisconfigured",
            ws("b").on("a"),
            target(misconfigured()),
            stalled(misconfigured_stall("b")),
        ),
        case(
            "switch a→b, source missing: stall naming a, no claim",
            ws("b").on("a"),
            source(MISSING),
            stalled(missing_stall("a")),
        ),
        case(
            "switch a→b, source not ready: stall naming a, no claim",
            ws("b").on("a"),
            source(not_ready()),
            stalled(not_ready_stall("a")),
        ),
        case(
            "switch a→b, both blocked: the target is reported",
            ws("b").on("a"),
            Facts { target: MISSING, source: not_ready(), ..facts() },
            stalled(missing_stall("b")),
        ),
        case(
            "switch a→b, stop backoff pending: wait without claiming",
            ws("b").on("a"),
            retry_in(30),
            wait(30, WaitReason::StopFailed),
        ),
        case(
            "switch a→b, stop backoff pending, target missing: nothing can be claimed, so the stall shows",
            ws("b").on("a"),
            Facts { target: MISSING, ..retry_in(30) },
            Next::Rest {
                stall: Some(Stall::new(ConditionReason::ProviderNotFound, "ComputeProvider \"b\" does not exist")),
            },
        ),
        case("spec back on a, stop backoff pending: nothing to stop, at rest", ws("a").on("a"), retry_in(30), rest()),
        case(
            "switch a→b, stop backoff elapsed: claim",
            ws("b").on("a"),
            retry_in(-30),
            claim(Switch, Some("a"), Some("b")),
        ),
        case(
            "switch a→b, stop backoff due exactly now: claim",
            ws("b").on("a"),
            retry_in(0),
            claim(Switch, Some("a"), Some("b")),
        ),
        // Stop.
        case(
            "stopped spec, compute on a: claim Stop from a",
            ws("a").on("a").stopped(),
            facts(),
            claim(Stop, Some("a"), None),
        ),
        case(
            "stopped spec naming b, compute on a: claim Stop from a, no switch",
            ws("b").on("a").stopped(),
            facts(),
            claim(Stop, Some("a"), None),
        ),
        case(
            "stopped spec naming b, b missing: a stop needs no target",
            ws("b").on("a").stopped(),
            target(MISSING),
            claim(Stop, Some("a"), None),
        ),
        case(
            "stopped spec naming b, b not ready: a stop needs no target",
            ws("b").on("a").stopped(),
            target(not_ready()),
            claim(Stop, Some("a"), None),
        ),
        case(
            "stopped spec, compute on a, a missing: stall naming a, no claim",
            ws("a").on("a").stopped(),
            both(MISSING),
            stalled(missing_stall("a")),
        ),
        case(
            "stopped spec naming b, compute on a, a not ready: stall naming a, no claim",
            ws("b").on("a").stopped(),
            source(not_ready()),
            stalled(not_ready_stall("a")),
        ),
        case(
            "stopped spec, stop backoff pending: wait without writing",
            ws("a").on("a").stopped(),
            retry_in(90),
            wait(90, WaitReason::StopFailed),
        ),
        case(
            "stopped spec, stop backoff elapsed: claim Stop again",
            ws("a").on("a").stopped(),
            retry_in(-90),
            claim(Stop, Some("a"), None),
        ),
    ]
}

/// A typical workspace for an operation of `kind` at `step` (spec b for a switch or provision).
fn holding(op: Op) -> Ws {
    let ws = match (op.kind, op.step) {
        (Switch, Claimed) => ws("b").on("a"),
        (Switch, OldStopped) | (Provision, _) => ws("b").active("b"),
        (Stop, Claimed) => ws("a").on("a").stopped(),
        (Stop, OldStopped) => ws("a").stopped().active("a"),
        (Delete, Claimed) => ws("a").on("a").deleting(),
        (Delete, OldStopped) => ws("a").active("a").deleting(),
        (OperationKind::Unknown, _) | (_, Step::Unknown) => ws("b").on("a"),
    };
    ws.op(op)
}

fn all_operations() -> Vec<Op> {
    vec![
        switch(Claimed),
        switch(OldStopped),
        provision(Claimed),
        provision(OldStopped),
        stop(Claimed),
        stop(OldStopped),
        delete(Claimed, None),
        delete(OldStopped, Some("b")),
    ]
}

/// A claim held by another instance: left alone while fresh, taken over once stale, whatever
/// the workspace and the providers look like.
fn claims_of_others() -> Vec<Case> {
    let held_elsewhere = WaitReason::ClaimHeldElsewhere;
    let mut cases = Vec::new();
    for op in all_operations() {
        let theirs = op.clone().held_by(OTHER);
        let fresh = || holding(theirs.clone().renewed(10));
        let stale = || holding(theirs.clone().renewed(61));
        let l = op.label();
        cases.extend([
            case(
                format!("{l}, other holder renewed 10s ago: wait out the lease"),
                fresh(),
                facts(),
                wait(50, held_elsewhere),
            ),
            case(
                format!("{l}, other holder renewed 59s ago: wait 1s"),
                holding(theirs.clone().renewed(59)),
                facts(),
                wait(1, held_elsewhere),
            ),
            case(
                format!("{l}, other holder renewed just now: wait a whole lease"),
                holding(theirs.clone().renewed(0)),
                facts(),
                wait(60, held_elsewhere),
            ),
            case(
                format!("{l}, other holder renewed in the future (clock skew): wait a whole lease"),
                holding(theirs.clone().renewed(-20)),
                facts(),
                wait(60, held_elsewhere),
            ),
            case(
                format!("{l}, other holder renewed exactly one lease ago: take over"),
                holding(theirs.clone().renewed(60)),
                facts(),
                Next::TakeOver,
            ),
            case(format!("{l}, other holder renewed 61s ago: take over"), stale(), facts(), Next::TakeOver),
            case(
                format!("{l}, other holder renewed an hour ago, 3 failed attempts: take over"),
                holding(theirs.clone().renewed(3600).attempts(3)),
                facts(),
                Next::TakeOver,
            ),
            case(
                format!("{l}, fresh other claim, deleting: wait, no conversion"),
                fresh().deleting(),
                facts(),
                wait(50, held_elsewhere),
            ),
            case(
                format!("{l}, fresh other claim, deleting without our finalizer: wait"),
                fresh().deleting().without_finalizer(),
                facts(),
                wait(50, held_elsewhere),
            ),
            case(format!("{l}, stale other claim, deleting: take over"), stale().deleting(), facts(), Next::TakeOver),
            case(
                format!("{l}, fresh other claim, no finalizer: wait, finalizer untouched"),
                fresh().without_finalizer(),
                facts(),
                wait(50, held_elsewhere),
            ),
            case(
                format!("{l}, fresh other claim, providers missing: wait, no stall of ours"),
                fresh(),
                both(MISSING),
                wait(50, held_elsewhere),
            ),
            case(
                format!("{l}, stale other claim, providers not ready: take over"),
                stale(),
                both(not_ready()),
                Next::TakeOver,
            ),
            case(
                format!("{l}, fresh other claim, stop backoff pending: the claim wait comes first"),
                fresh(),
                retry_in(5),
                wait(50, held_elsewhere),
            ),
            case(
                format!("{l}, stale other claim, stop backoff pending: take over"),
                stale(),
                retry_in(5),
                Next::TakeOver,
            ),
        ]);
        for (spec, running) in [("a", true), ("b", true), ("c", true), ("a", false), ("c", false)] {
            let run = if running { "running" } else { "stopped" };
            let with_spec = |ws: Ws| Ws { running, ..ws.spec(spec) };
            cases.push(case(
                format!("{l}, fresh other claim, spec {spec} {run}: wait"),
                with_spec(fresh()),
                facts(),
                wait(50, held_elsewhere),
            ));
            cases.push(case(
                format!("{l}, stale other claim, spec {spec} {run}: take over"),
                with_spec(stale()),
                facts(),
                Next::TakeOver,
            ));
        }
    }
    cases
}

/// Our own Delete: stop whatever exists, release what the key may have created, finish.
fn own_delete() -> Vec<Case> {
    let mut cases = Vec::new();
    for step in [Claimed, OldStopped] {
        let l = format!("Delete/{step:?}");
        let base = |to: Option<&'static str>| ws("a").deleting().op(delete(step, to));
        cases.extend([
            case(format!("{l}, compute on a: stop it"), base(None).on("a"), facts(), stop_old("a")),
            case(
                format!("{l}, compute on a, converted from a switch to b: stop a (b is released after)"),
                base(Some("b")).on("a"),
                facts(),
                stop_old("a"),
            ),
            case(
                format!("{l}, compute on a, spec b running: stop a"),
                base(None).on("a").spec("b"),
                facts(),
                stop_old("a"),
            ),
            case(
                format!("{l}, compute on a, stopped spec: stop a"),
                base(None).on("a").stopped(),
                facts(),
                stop_old("a"),
            ),
            case(
                format!("{l}, compute on a, a missing: still a stop (the step holds if it cannot)"),
                base(None).on("a"),
                both(MISSING),
                stop_old("a"),
            ),
            case(
                format!("{l}, compute on a, spec b missing: a deletion needs no target"),
                base(Some("b")).on("a").spec("b"),
                target(MISSING),
                stop_old("a"),
            ),
            case(
                format!("{l}, compute on a, 2 failed attempts just now: no provision backoff for a stop"),
                base(None).on("a").op(delete(step, None).attempts(2).renewed(0)),
                facts(),
                stop_old("a"),
            ),
            case(
                format!("{l}, compute on a, stop backoff pending: resume the stop under our claim"),
                base(None).on("a"),
                retry_in(30),
                stop_old("a"),
            ),
            case(
                format!("{l}, compute on a, our finalizer gone: still stop it"),
                base(None).on("a").without_finalizer(),
                facts(),
                stop_old("a"),
            ),
            case(format!("{l}, no compute, no target: finish, nothing to release"), base(None), facts(), finish(None)),
            case(
                format!("{l}, no compute, target b in flight: finish, releasing b's key"),
                base(Some("b")).active("b"),
                facts(),
                finish(Some("b")),
            ),
            case(
                format!("{l}, no compute, target b in flight, spec now c: release b's key"),
                base(Some("b")).spec("c"),
                facts(),
                finish(Some("b")),
            ),
            case(
                format!("{l}, no compute, target b in flight, stopped spec: release b's key"),
                base(Some("b")).stopped(),
                facts(),
                finish(Some("b")),
            ),
            case(
                format!("{l}, no compute, target b in flight, b missing: still finish via release"),
                base(Some("b")).spec("b"),
                target(MISSING),
                finish(Some("b")),
            ),
            case(
                format!("{l}, no compute, target b in flight, 3 failed attempts just now: finish"),
                ws("a").deleting().op(delete(step, Some("b")).attempts(3).renewed(0)),
                facts(),
                finish(Some("b")),
            ),
            case(
                format!("{l}, no compute, our finalizer gone: finish"),
                base(Some("b")).without_finalizer(),
                facts(),
                finish(Some("b")),
            ),
        ]);
    }
    cases
}

/// Our own Stop: stop the compute unless the spec wants it running again.
fn own_stop() -> Vec<Case> {
    let mut cases = Vec::new();
    for step in [Claimed, OldStopped] {
        let l = format!("Stop/{step:?}");
        let base = || ws("a").stopped().op(stop(step));
        let running_again = |ws: Ws| Ws { running: true, ..ws };
        cases.extend([
            case(format!("{l}, compute on a: stop it"), base().on("a"), facts(), stop_old("a")),
            case(
                format!("{l}, compute on a, stopped spec now naming b: stop a"),
                base().on("a").spec("b"),
                facts(),
                stop_old("a"),
            ),
            case(
                format!("{l}, compute on a, spec running again: abort, no stop"),
                running_again(base().on("a")),
                facts(),
                Next::Abort,
            ),
            case(
                format!("{l}, compute on a, spec running again on b: abort (a switch follows)"),
                running_again(base().on("a").spec("b")),
                facts(),
                Next::Abort,
            ),
            case(
                format!("{l}, compute on a, a missing: still a stop (the step holds if it cannot)"),
                base().on("a"),
                both(MISSING),
                stop_old("a"),
            ),
            case(
                format!("{l}, compute on a, a not ready: still a stop"),
                base().on("a"),
                both(not_ready()),
                stop_old("a"),
            ),
            case(
                format!("{l}, compute on a, spec b missing: a stop needs no target"),
                base().on("a").spec("b"),
                target(MISSING),
                stop_old("a"),
            ),
            case(
                format!("{l}, compute on a, stop backoff pending: resume under our claim"),
                base().on("a"),
                retry_in(30),
                stop_old("a"),
            ),
            case(
                format!("{l}, compute on a, 2 failed attempts just now: no provision backoff"),
                ws("a").stopped().on("a").op(stop(step).attempts(2).renewed(0)),
                facts(),
                stop_old("a"),
            ),
            case(format!("{l}, no compute, stopped spec: finish, nothing to release"), base(), facts(), finish(None)),
            case(
                format!("{l}, no compute, spec running again: finish (a provision follows)"),
                running_again(base()),
                facts(),
                finish(None),
            ),
            case(
                format!("{l}, compute on a, deleting: convert to Delete"),
                base().on("a").deleting(),
                facts(),
                Next::ConvertToDelete,
            ),
            case(
                format!("{l}, compute on a, deleting without our finalizer: convert to Delete"),
                base().on("a").deleting().without_finalizer(),
                facts(),
                Next::ConvertToDelete,
            ),
            case(
                format!("{l}, compute on a, deleting, spec running again: deletion wins over abort"),
                running_again(base().on("a")).deleting(),
                facts(),
                Next::ConvertToDelete,
            ),
            case(
                format!("{l}, no compute, deleting: convert to Delete"),
                base().deleting(),
                facts(),
                Next::ConvertToDelete,
            ),
        ]);
    }
    cases
}

/// Our own Switch a→b before the stop: stop a, or abort if the spec went back to a.
fn own_switch_claimed() -> Vec<Case> {
    let l = "Switch/Claimed";
    let base = || ws("b").on("a").op(switch(Claimed));
    let no_compute = || ws("b").active("a").op(switch(Claimed));
    vec![
        case(format!("{l}, compute on a, spec b: stop a"), base(), facts(), stop_old("a")),
        case(format!("{l}, compute on a, spec b stopped: stop a"), base().stopped(), facts(), stop_old("a")),
        case(
            format!("{l}, compute on a, spec now c: stop a (the commit records c)"),
            base().spec("c"),
            facts(),
            stop_old("a"),
        ),
        case(
            format!("{l}, compute on a, spec now c stopped: stop a"),
            base().spec("c").stopped(),
            facts(),
            stop_old("a"),
        ),
        case(format!("{l}, compute on a, spec back to a: abort, no stop"), base().spec("a"), facts(), Next::Abort),
        case(
            format!("{l}, compute on a, spec back to a, a not ready: abort, no stop"),
            base().spec("a"),
            both(not_ready()),
            Next::Abort,
        ),
        case(
            format!("{l}, compute on a, spec back to a but stopped: stop a"),
            base().spec("a").stopped(),
            facts(),
            stop_old("a"),
        ),
        // The target was validated before the claim; the claimed step does not look at it again.
        case(
            format!("{l}, compute on a, b now missing: stop a (validated before the claim)"),
            base(),
            target(MISSING),
            stop_old("a"),
        ),
        case(
            format!("{l}, compute on a, b now not ready: stop a (validated before the claim)"),
            base(),
            target(not_ready()),
            stop_old("a"),
        ),
        case(
            format!("{l}, compute on a, a missing: still a stop (the step holds if it cannot)"),
            base(),
            source(MISSING),
            stop_old("a"),
        ),
        case(format!("{l}, compute on a, a not ready: still a stop"), base(), source(not_ready()), stop_old("a")),
        case(
            format!("{l}, compute on a, 2 failed attempts just now: no provision backoff for a stop"),
            ws("b").on("a").op(switch(Claimed).attempts(2).renewed(0)),
            facts(),
            stop_old("a"),
        ),
        case(
            format!("{l}, compute on a, our claim renewed 2h ago: still ours, stop a"),
            ws("b").on("a").op(switch(Claimed).renewed(7200)),
            facts(),
            stop_old("a"),
        ),
        case(
            format!("{l}, compute on a, stop backoff pending: resume under our claim"),
            base(),
            retry_in(30),
            stop_old("a"),
        ),
        case(format!("{l}, no compute, spec b: commit"), no_compute(), facts(), Next::Commit),
        case(
            format!("{l}, no compute, spec back to a: commit (nothing was running to keep)"),
            no_compute().spec("a"),
            facts(),
            Next::Commit,
        ),
        case(format!("{l}, no compute, spec now c: commit"), no_compute().spec("c"), facts(), Next::Commit),
        case(format!("{l}, no compute, spec b stopped: commit"), no_compute().stopped(), facts(), Next::Commit),
        case(
            format!("{l}, no compute, b missing: commit (the provision step holds)"),
            no_compute(),
            target(MISSING),
            Next::Commit,
        ),
        case(
            format!("{l}, compute on a, deleting: convert to Delete"),
            base().deleting(),
            facts(),
            Next::ConvertToDelete,
        ),
        case(
            format!("{l}, compute on a, deleting without our finalizer: convert to Delete"),
            base().deleting().without_finalizer(),
            facts(),
            Next::ConvertToDelete,
        ),
        case(
            format!("{l}, compute on a, deleting, spec back to a: deletion wins over abort"),
            base().spec("a").deleting(),
            facts(),
            Next::ConvertToDelete,
        ),
        case(
            format!("{l}, no compute, deleting: convert to Delete"),
            no_compute().deleting(),
            facts(),
            Next::ConvertToDelete,
        ),
    ]
}

/// Our own Switch after the stop, or Provision at either step: roll forward only, to b.
fn own_roll_forward() -> Vec<Case> {
    let mut cases = Vec::new();
    for op in [switch(OldStopped), provision(Claimed), provision(OldStopped)] {
        let l = op.label();
        let base = || ws("b").active("b").op(op.clone());
        let failed =
            |attempts: i32, retry_in: i64| ws("b").active("b").op(op.clone().attempts(attempts).retry_in(retry_in));
        let bo = WaitReason::Backoff;
        cases.extend([
            case(format!("{l}, spec b: provision on b under the key"), base(), facts(), provision_on("b")),
            case(
                format!("{l}, spec b, source not ready: irrelevant, provision"),
                base(),
                source(not_ready()),
                provision_on("b"),
            ),
            case(
                format!("{l}, spec b, stop backoff pending: irrelevant, provision"),
                base(),
                retry_in(30),
                provision_on("b"),
            ),
            case(
                format!("{l}, spec b, our finalizer gone: provision"),
                base().without_finalizer(),
                facts(),
                provision_on("b"),
            ),
            case(
                format!("{l}, spec b, our claim renewed 2h ago: still ours, provision"),
                ws("b").active("b").op(op.clone().renewed(7200)),
                facts(),
                provision_on("b"),
            ),
            case(
                format!("{l}, spec b stopped: finish, releasing b's key"),
                base().stopped(),
                facts(),
                finish(Some("b")),
            ),
            case(
                format!("{l}, spec b stopped, b missing: finish, releasing b's key"),
                base().stopped(),
                target(MISSING),
                finish(Some("b")),
            ),
            case(
                format!("{l}, spec now c stopped: finish, releasing b's key"),
                base().spec("c").stopped(),
                facts(),
                finish(Some("b")),
            ),
            case(format!("{l}, spec back to a: retarget, releasing b's key"), base().spec("a"), facts(), retarget("b")),
            case(format!("{l}, spec now c: retarget, releasing b's key"), base().spec("c"), facts(), retarget("b")),
            case(
                format!("{l}, spec now c, c missing: retarget first (c is checked after)"),
                base().spec("c"),
                target(MISSING),
                retarget("b"),
            ),
            case(
                format!("{l}, spec b, b missing: hold, keep the claim"),
                base(),
                target(MISSING),
                hold(missing_stall("b")),
            ),
            case(
                format!("{l}, spec b, b not ready: hold, keep the claim"),
                base(),
                target(not_ready()),
                hold(not_ready_stall("b")),
            ),
            case(
                format!("{l}, spec b, b misconfigured: hold with the provider's reason"),
                base(),
                target(misconfigured()),
                hold(misconfigured_stall("b")),
            ),
            // Backoff: wait until retryAt, renewing the claim every third of the lease (20s).
            case(format!("{l}, retry in 1s: wait 1s"), failed(1, 1), facts(), wait(1, bo)),
            case(format!("{l}, retry 1s ago: provision"), failed(1, -1), facts(), provision_on("b")),
            case(format!("{l}, retry due now: provision"), failed(2, 0), facts(), provision_on("b")),
            case(
                format!("{l}, retry in 25s, renewed 5s ago: wait 15s, to renew"),
                failed(5, 25),
                facts(),
                wait(15, bo),
            ),
            case(
                format!("{l}, retry in 10s, renewed 20s ago: renew"),
                ws("b").active("b").op(op.clone().attempts(3).retry_in(10).renewed(20)),
                facts(),
                Next::Renew,
            ),
            case(
                format!("{l}, retry in 10s, renewed in the future: wait 10s"),
                ws("b").active("b").op(op.clone().attempts(3).retry_in(10).renewed(-100)),
                facts(),
                wait(10, bo),
            ),
            case(
                format!("{l}, retry in 31s, beyond the cap: not trusted, provision"),
                failed(3, 31),
                facts(),
                provision_on("b"),
            ),
            case(
                format!("{l}, retry in 3s, b missing: wait before holding again"),
                failed(3, 3),
                target(MISSING),
                wait(3, bo),
            ),
            case(
                format!("{l}, retry 1s ago, b missing: hold again"),
                failed(3, -1),
                target(MISSING),
                hold(missing_stall("b")),
            ),
            case(
                format!("{l}, retry in 3s, stopped spec: finish, no backoff"),
                failed(3, 3).stopped(),
                facts(),
                finish(Some("b")),
            ),
            case(
                format!("{l}, retry in 3s, spec now c: retarget, no backoff"),
                failed(3, 3).spec("c"),
                facts(),
                retarget("b"),
            ),
            case(
                format!("{l}, unfenced a and b: fence them first"),
                ws("b").active("b").op(op.clone().unfenced(&["a", "b"])),
                facts(),
                Next::Fence { providers: vec!["a".into(), "b".into()] },
            ),
            case(
                format!("{l}, unfenced, fence retry in 4s: wait"),
                ws("b").active("b").op(op.clone().unfenced(&["b"]).attempts(1).retry_in(4)),
                facts(),
                wait(4, WaitReason::FenceFailed),
            ),
            case(
                format!("{l}, unfenced, stopped spec: fence before releasing anything"),
                ws("b").active("b").stopped().op(op.clone().unfenced(&["b"])),
                facts(),
                Next::Fence { providers: vec!["b".into()] },
            ),
            case(format!("{l}, deleting: convert to Delete"), base().deleting(), facts(), Next::ConvertToDelete),
            case(
                format!("{l}, deleting without our finalizer: convert to Delete"),
                base().deleting().without_finalizer(),
                facts(),
                Next::ConvertToDelete,
            ),
            case(
                format!("{l}, deleting, retry in 3s: convert, no backoff"),
                failed(3, 3).deleting(),
                facts(),
                Next::ConvertToDelete,
            ),
            case(
                format!("{l}, deleting, b missing: convert to Delete"),
                base().deleting(),
                target(MISSING),
                Next::ConvertToDelete,
            ),
            case(
                format!("{l}, deleting, spec now c: convert to Delete"),
                base().spec("c").deleting(),
                facts(),
                Next::ConvertToDelete,
            ),
        ]);
    }
    cases
}

fn invalid_stall(needle: &str) -> Stall {
    let message = match needle {
        "unknown" => format!(
            "claim {OP_ID} has a kind or step this controller does not know (a newer Switchyard's?); \
             it is not carried out: upgrade the controller, or clear the claim"
        ),
        why => format!("{why}; it is not carried out"),
    };
    Stall::new(ConditionReason::InvalidClaim, message)
}

/// Claims no controller of this version writes: a kind or step it does not know, a step that
/// contradicts the recorded compute, a Delete of a workspace not being deleted. Neither carried
/// out nor taken over, whoever holds them; a fresh one of another holder is still waited out
/// (it may be a newer controller's, mid-upgrade).
fn invalid_claims() -> Vec<Case> {
    let would_provision =
        |kind| format!("the {kind:?} claim {OP_ID} would provision while status.instance names i-a on a");
    let mut cases = vec![];
    for holder in [ME, OTHER] {
        let stale = if holder == ME { 5 } else { 120 };
        let held = |o: Op| o.held_by(holder).renewed(stale);
        cases.extend([
            case(
                format!("{holder}: a Provision claim with compute recorded"),
                ws("b").on("a").op(held(provision(Claimed))),
                facts(),
                stalled(invalid_stall(&would_provision(Provision))),
            ),
            case(
                format!("{holder}: a switch past its stop with the old compute still recorded"),
                ws("b").on("a").op(held(switch(OldStopped))),
                facts(),
                stalled(invalid_stall(&would_provision(Switch))),
            ),
            case(
                format!("{holder}: a switch without a target"),
                ws("b").on("a").op(held(op(Switch, Claimed, Some("a"), None))),
                facts(),
                stalled(invalid_stall(&format!("the Switch claim {OP_ID} names no target provider (operation.to)"))),
            ),
            case(
                format!("{holder}: a Delete of a workspace not being deleted"),
                ws("a").on("a").op(held(delete(Claimed, None))),
                facts(),
                stalled(invalid_stall(&format!(
                    "the Delete claim {OP_ID} is on a workspace that is not being deleted"
                ))),
            ),
            case(
                format!("{holder}: an unknown kind"),
                ws("b").on("a").op(held(op(OperationKind::Unknown, Claimed, Some("a"), Some("b")))),
                facts(),
                stalled(invalid_stall("unknown")),
            ),
            case(
                format!("{holder}: an unknown step"),
                ws("b").on("a").op(held(op(Switch, Step::Unknown, Some("a"), Some("b")))),
                facts(),
                stalled(invalid_stall("unknown")),
            ),
        ]);
    }
    cases.push(case(
        "a fresh unknown claim of another holder is waited out",
        ws("b").on("a").op(op(OperationKind::Unknown, Claimed, Some("a"), Some("b")).held_by(OTHER).renewed(10)),
        facts(),
        wait(50, WaitReason::ClaimHeldElsewhere),
    ));
    cases
}

fn moved_stall() -> Stall {
    Stall::new(ConditionReason::ProviderChanged, "moved")
}

/// The provider holding the compute no longer says where it lives: nothing is sent to it, at
/// rest or in any operation, and nothing new is claimed against it.
fn provider_moved() -> Vec<Case> {
    let moved = || source(ProviderState::Moved { message: "moved".into() });
    vec![
        case("moved: running at rest says so", ws("a").on("a"), moved(), stalled(moved_stall())),
        case("moved: no switch is claimed", ws("b").on("a"), moved(), stalled(moved_stall())),
        case("moved: no stop is claimed", ws("a").on("a").stopped(), moved(), stalled(moved_stall())),
        case("moved: no delete is claimed", ws("a").on("a").deleting(), moved(), stalled(moved_stall())),
        case("moved: our switch holds before its stop", holding(switch(Claimed)), moved(), hold(moved_stall())),
        case(
            "moved: our reverted switch holds too (no abort's lookup)",
            ws("a").on("a").op(switch(Claimed)),
            moved(),
            hold(moved_stall()),
        ),
        case("moved: our stop holds", holding(stop(Claimed)), moved(), hold(moved_stall())),
        case("moved: our delete holds", holding(delete(Claimed, None)), moved(), hold(moved_stall())),
        case(
            "moved: without compute recorded, a switch past its stop provisions",
            holding(switch(OldStopped)),
            moved(),
            provision_on("b"),
        ),
    ]
}

/// The last stop of the instance failed with its outcome unknown (perhaps it took effect and
/// the answer was lost): before the workspace counts as running on it again, a switch onto the
/// same provider is claimed, whose abort asks the provider. Elsewhere it is stopped as usual.
fn unconfirmed_instance() -> Vec<Case> {
    let switch_to = |p: &str| claim(Switch, Some("a"), Some(p));
    vec![
        case(
            "unconfirmed: back on its provider, checked by a claim",
            ws("a").on("a").unconfirmed(),
            facts(),
            switch_to("a"),
        ),
        case(
            "unconfirmed: back on its provider, after the stop backoff",
            ws("a").on("a").unconfirmed(),
            retry_in(7),
            wait(7, WaitReason::StopFailed),
        ),
        case("unconfirmed: still to switch elsewhere", ws("b").on("a").unconfirmed(), facts(), switch_to("b")),
        case(
            "unconfirmed: still to stop",
            ws("a").on("a").unconfirmed().stopped(),
            facts(),
            claim(Stop, Some("a"), None),
        ),
        case(
            "unconfirmed: its provider not ready, said so",
            ws("a").on("a").unconfirmed(),
            source(not_ready()),
            stalled(not_ready_stall("a")),
        ),
        case(
            "unconfirmed: our check claim aborts through the provider",
            ws("a").on("a").unconfirmed().op(op(Switch, Claimed, Some("a"), Some("a"))),
            facts(),
            Next::Abort,
        ),
    ]
}

fn all_cases() -> Vec<Case> {
    [
        without_operation(),
        claims_of_others(),
        own_delete(),
        own_stop(),
        own_switch_claimed(),
        own_roll_forward(),
        invalid_claims(),
        provider_moved(),
        unconfirmed_instance(),
    ]
    .concat()
}

// ---- table tests -----------------------------------------------------------------------------

#[test]
fn decides_without_an_operation() {
    check(&without_operation());
}

#[test]
fn leaves_fresh_claims_of_others_alone_and_takes_over_stale_ones() {
    check(&claims_of_others());
}

#[test]
fn runs_our_delete() {
    check(&own_delete());
}

#[test]
fn runs_our_stop() {
    check(&own_stop());
}

#[test]
fn runs_our_switch_up_to_the_stop() {
    check(&own_switch_claimed());
}

#[test]
fn rolls_our_switch_or_provision_forward() {
    check(&own_roll_forward());
}

#[test]
fn refuses_claims_no_controller_of_ours_writes() {
    check(&invalid_claims());
}

#[test]
fn sends_nothing_to_a_provider_that_moved_under_the_compute() {
    check(&provider_moved());
}

#[test]
fn asks_the_provider_about_compute_whose_stop_may_have_happened() {
    check(&unconfirmed_instance());
}

#[test]
fn case_descriptions_are_unique() {
    let cases = all_cases();
    let mut seen = BTreeSet::new();
    let duplicates: Vec<&str> = cases.iter().map(|(d, ..)| d.as_str()).filter(|d| !seen.insert(*d)).collect();
    assert!(duplicates.is_empty(), "duplicate descriptions: {duplicates:?}");
}

/// Every operation kind × step is covered by at least one own-operation row and one row of
/// another holder.
#[test]
fn every_kind_and_step_is_covered() {
    let cases = all_cases();
    for kind in [Provision, Switch, Stop, Delete] {
        for step in [Claimed, OldStopped] {
            let matching = |holder: &str| {
                cases.iter().any(|(_, ws, ..)| {
                    ws.status
                        .as_ref()
                        .and_then(|s| s.operation.as_ref())
                        .is_some_and(|o| o.kind == kind && o.step == step && o.holder == holder)
                })
            };
            assert!(matching(ME), "no own-operation row for {kind:?}/{step:?}");
            assert!(matching(OTHER), "no other-holder row for {kind:?}/{step:?}");
        }
    }
}

// ---- individual tests ------------------------------------------------------------------------

/// DESIGN.md §2: a stop that failed past its budget is retried later with growing backoff, and
/// deletion "runs the same machinery". A Delete claim must wait for the backoff like a Stop or
/// Switch claim does; claiming at once re-runs the failed stop on every watch event (the
/// StopFailed status write itself is one) and bumps the epoch each time.
#[test]
fn delete_claim_waits_for_the_stop_backoff() {
    let ws = ws("a").on("a").deleting().build();
    assert_eq!(decide(&ws, &retry_in(30)), wait(30, WaitReason::StopFailed));
}

#[test]
fn the_provision_key_is_the_workspace_uid_and_the_operation_id() {
    let first = ws("b").active("b").uid("uid-9").op(provision(Claimed).id("op-7")).build();
    assert_eq!(decide(&first, &facts()), Next::Provision { provider: "b".into(), key: "uid-9.op-7".into() });
    // A new operation id (a retarget) yields a new key.
    let moved_on = ws("c").active("b").op(switch(OldStopped).id("op-8")).build();
    let Next::Retarget { key, .. } = decide(&moved_on, &facts()) else { panic!("expected a retarget") };
    assert_eq!(key, "uid-1.op-8");
}

#[test]
fn workspace_without_any_finalizers_gets_ours() {
    let mut ws = ws("a").build();
    ws.metadata.finalizers = None;
    assert_eq!(decide(&ws, &facts()), Next::AddFinalizer);
    ws.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ago(1)));
    assert_eq!(decide(&ws, &facts()), Next::Nothing);
}

#[test]
fn workspace_without_status_is_provisioned() {
    let mut ws = ws("b").build();
    ws.status = None;
    assert_eq!(decide(&ws, &facts()), claim(Provision, None, Some("b")));
    ws.spec.running = false;
    assert_eq!(decide(&ws, &facts()), rest());
}

/// For every age of another holder's claim: wait exactly until the lease runs out, then take over.
#[test]
fn a_foreign_claim_is_waited_out_exactly_to_the_end_of_the_lease() {
    for age in 0..=120 {
        let ws = holding(switch(Claimed).held_by(OTHER).renewed(age)).build();
        let got = decide(&ws, &facts());
        if age < 60 {
            assert_eq!(got, wait(60 - age as u64, WaitReason::ClaimHeldElsewhere), "renewed {age}s ago");
        } else {
            assert_eq!(got, Next::TakeOver, "renewed {age}s ago");
        }
    }
}

/// For every time to `retryAt` and age of the claim: provision once retryAt has passed (or lies
/// beyond the cap), otherwise renew when a third of the lease has passed, else wait until the
/// earlier of retryAt and the renewal.
#[test]
fn provision_waits_exactly_until_retry_at_renewing_on_the_way() {
    for retry_in in -5..=40_i64 {
        for renewed_ago in 0..=30_i64 {
            let op = provision(OldStopped).attempts(2).retry_in(retry_in).renewed(renewed_ago);
            let got = decide(&ws("b").active("b").op(op).build(), &facts());
            let renew_every = LEASE.as_secs() as i64 / 3;
            let expected = if retry_in <= 0 || retry_in > CAP.as_secs() as i64 {
                provision_on("b")
            } else if renewed_ago >= renew_every {
                Next::Renew
            } else {
                wait(retry_in.min(renew_every - renewed_ago) as u64, WaitReason::Backoff)
            };
            assert_eq!(got, expected, "retry in {retry_in}s, renewed {renewed_ago}s ago");
        }
    }
}

/// A takeover supersedes an operation: whatever it may still call is fenced before any other
/// call, for every kind and step.
#[test]
fn a_taken_over_operation_fences_before_any_other_call() {
    for op in all_operations() {
        let ws = holding(op.clone().unfenced(&["a", "b"])).build();
        let got = decide(&ws, &facts());
        assert_eq!(got, Next::Fence { providers: vec!["a".into(), "b".into()] }, "{}", op.label());
    }
}

/// A claim "renewed" further ahead than a lease is forged or from a broken clock: stale.
#[test]
fn a_claim_renewed_in_the_future_is_taken_over() {
    for op in all_operations() {
        let slightly = holding(op.clone().held_by(OTHER).renewed(-30)).build();
        assert_eq!(decide(&slightly, &facts()), wait(60, WaitReason::ClaimHeldElsewhere), "{}: clock skew", op.label());
        let forged = holding(op.clone().held_by(OTHER).renewed(-3600)).build();
        assert_eq!(decide(&forged, &facts()), Next::TakeOver, "{}: an hour ahead", op.label());
    }
}

/// An epoch at its bound (or below zero) leaves no room for a claim or a takeover: the status
/// says why and nothing is claimed.
#[test]
fn no_claim_past_the_epoch_bound() {
    for epoch in [crate::api::MAX_EPOCH, i64::MAX, -1] {
        let mut claiming = ws("b").on("a").build();
        claiming.status.as_mut().unwrap().epoch = epoch;
        let got = decide(&claiming, &facts());
        assert!(
            matches!(&got, Next::Rest { stall: Some(s) } if s.reason == ConditionReason::EpochOutOfRange),
            "epoch {epoch}: {got:?}"
        );
        let mut stale = holding(switch(Claimed).held_by(OTHER).renewed(3600)).build();
        stale.status.as_mut().unwrap().epoch = epoch;
        assert!(matches!(decide(&stale, &facts()), Next::Rest { stall: Some(_) }), "epoch {epoch}: takeover");
    }
    let mut below = ws("b").on("a").build();
    below.status.as_mut().unwrap().epoch = crate::api::MAX_EPOCH - 1;
    assert_eq!(decide(&below, &facts()), claim(Switch, Some("a"), Some("b")));
}

/// After a confirmed stop: a switch commits; a stop finishes; a delete finishes after releasing
/// what its key may have created on its target (only a converted switch or provision has one).
#[test]
fn what_follows_a_stop_depends_on_the_operation() {
    use super::{AfterStop, after_stop};
    let release = |p: &str| AfterStop::Finish { release: Some((p.to_string(), KEY.to_string())) };
    let cases = [
        ("switch", ws("b").on("a").op(switch(Claimed)), AfterStop::Commit),
        ("stop", ws("a").on("a").stopped().op(stop(Claimed)), AfterStop::Finish { release: None }),
        ("delete", ws("a").on("a").deleting().op(delete(Claimed, None)), AfterStop::Finish { release: None }),
        ("converted delete", ws("a").on("a").deleting().op(delete(Claimed, Some("b"))), release("b")),
        ("provision (never stops)", ws("b").op(provision(Claimed)), AfterStop::Finish { release: None }),
        ("no operation", ws("a").on("a"), AfterStop::Finish { release: None }),
    ];
    for (what, ws, expected) in cases {
        assert_eq!(after_stop(&ws.build()), expected, "{what}");
    }
}
