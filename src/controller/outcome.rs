//! What the protocol's steps did, as users and operators hear of it. A step reports an
//! [`Outcome`]; [`report`], a pure function tested as a table, decides the Event, the metrics
//! and the log line it leads to; [`publish`] carries that out. One place, so that what an
//! outcome says cannot drift between the steps that reach it.

use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::Context;
use super::protocol::event;
use super::status::Stall;
use crate::api::conditions::{ConditionReason, EventAction, EventReason};
use crate::api::{Instance, OperationKind, Workspace};
use crate::telemetry::{Metrics, SwitchResult};

/// Something a step did that is counted, logged or told as an Event.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Outcome {
    /// Our claim landed.
    Claimed { id: String, kind: OperationKind, from: Option<String>, to: Option<String>, epoch: i64 },
    /// Another writer was first: no further call, no further write.
    ClaimLost { kind: OperationKind },
    /// We took a stale claim over.
    TookOver { previous: String, epoch: i64 },
    /// Another writer was first to take the stale claim over.
    TakeOverLost,
    /// A write under our claim landed.
    Written,
    /// A write under our claim found the operation taken over.
    OperationLost { operation: String },
    /// A provider refused a call for a stale epoch: another instance holds the workspace.
    FencedOff { error: String },
    /// Every provider of the superseded operation has seen our epoch.
    Fenced { providers: Vec<String> },
    /// A provider left unfenced because the workspace says so.
    FenceSkipped { provider: String, message: String },
    /// A provider could not be fenced; `notify` on the first attempt and when the workspace stalls.
    FenceFailed { provider: String, error: String, message: String, notify: bool },
    /// The operation cannot progress for now (its Stalled condition just changed).
    Held { stall: Stall },
    /// At rest, the status was rewritten; `stall` when it newly reads Stalled.
    Rested { stall: Option<Stall> },
    /// The spec went back before the stop: the claim was released. Counted as an aborted switch.
    Aborted { from: String, to: String, in_doubt: bool },
    /// A superseded holder had stopped the compute already: the operation carries on.
    AlreadyStopped { instance: Instance },
    /// The target changed after the old compute stopped.
    Retargeted { target: String, released: String },
    /// The provider confirmed the old compute stopped.
    Stopped { instance: Instance, kind: OperationKind },
    /// The provider knew no instance under the recorded key: what it runs for the workspace was stopped.
    InstanceNotFound { instance: Instance, stopped: Vec<String> },
    /// The stop failed past its budget: the claim was released; `switch` (from, to) for a switch.
    StopFailed { switch: Option<(String, String)>, error: String, retry_in_secs: u64 },
    /// The compute runs; `switched` when this finished a switch.
    Provisioned { instance: Instance, switched: Option<Switched> },
    /// A provision failed; `notify` on the first attempt and when the workspace stalls.
    ProvisionFailed { error: String, attempts: i32, notify: bool },
    /// What an operation's key had created on a target it no longer has was stopped.
    Released { instance: String, provider: String },
    /// Releasing in-flight compute failed; the reconcile retries.
    ReleaseFailed { error: String },
    /// The finalizer is gone, and with it the workspace.
    FinalizerRemoved,
    /// The API server refused a write: the workspace is too large to store another.
    TooLarge { namespace: String, name: String, message: String },
}

/// A switch that finished.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Switched {
    pub from: String,
    /// Seconds since the claim, if the claim's time is known.
    pub took: Option<f64>,
}

/// What an outcome leads to.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Report<'a> {
    pub event: Option<Note>,
    pub counts: Vec<Count>,
    pub log: Option<Log<'a>>,
}

/// An Event about the workspace.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Note {
    pub type_: EventType,
    pub reason: EventReason,
    pub action: EventAction,
    pub text: String,
}

/// A metric to count.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Count {
    ClaimsWon,
    ClaimsLost,
    Takeovers,
    StatusWrites,
    Switch { from: String, to: String, result: SwitchResult },
    SwitchSeconds(f64),
    FenceSkipped(String),
    FenceFailure(String),
}

/// A log line: its level, a fixed message, and the values it names as `tracing` fields (so
/// JSON logs carry them as keys, and nothing is formatted for a line the filter drops).
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Log<'a> {
    pub level: Level,
    pub message: &'static str,
    pub operation: Option<&'a str>,
    pub kind: Option<OperationKind>,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub epoch: Option<i64>,
    pub previous: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub providers: Option<&'a [String]>,
    pub instance: Option<&'a str>,
    pub key: Option<&'a str>,
    pub stopped: Option<&'a [String]>,
    pub error: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Level {
    #[default]
    Info,
    Warn,
}

fn normal(reason: EventReason, action: EventAction, text: String) -> Option<Note> {
    Some(Note { type_: EventType::Normal, reason, action, text })
}

fn warning(reason: EventReason, action: EventAction, text: String) -> Option<Note> {
    Some(Note { type_: EventType::Warning, reason, action, text })
}

fn line(level: Level, message: &'static str) -> Log<'static> {
    Log { level, message, ..Log::default() }
}

/// The Event, metrics and log line of `outcome`.
pub(super) fn report(outcome: &Outcome) -> Report<'_> {
    use EventAction as A;
    use Level::{Info, Warn};
    let (event, counts, log) = match outcome {
        Outcome::Claimed { id, kind, from, to, epoch } => {
            // No Event: status (Reconciling, operation) shows a claim; Events record outcomes.
            let logged = Log {
                operation: Some(id),
                kind: Some(*kind),
                from: from.as_deref(),
                to: to.as_deref(),
                epoch: Some(*epoch),
                ..line(Info, "claimed")
            };
            (None, vec![Count::ClaimsWon, Count::StatusWrites], Some(logged))
        }
        Outcome::ClaimLost { kind } => {
            let logged = Log { kind: Some(*kind), ..line(Info, "claim lost to another writer: no further action") };
            (None, vec![Count::ClaimsLost], Some(logged))
        }
        Outcome::TookOver { previous, epoch } => (
            normal(
                EventReason::TookOver,
                A::TakeOver,
                format!("claim of {previous} was stale; resumed under epoch {epoch}"),
            ),
            vec![Count::Takeovers, Count::StatusWrites],
            Some(Log { previous: Some(previous), epoch: Some(*epoch), ..line(Info, "took over a stale claim") }),
        ),
        Outcome::TakeOverLost => (None, vec![Count::ClaimsLost], None),
        Outcome::Written => (None, vec![Count::StatusWrites], None),
        Outcome::OperationLost { operation } => {
            let message = "operation taken over by another instance: no further action";
            (None, vec![Count::ClaimsLost], Some(Log { operation: Some(operation), ..line(Info, message) }))
        }
        Outcome::FencedOff { error } => {
            let message = "fenced off by the provider: another instance holds the workspace";
            (None, vec![Count::ClaimsLost], Some(Log { error: Some(error), ..line(Warn, message) }))
        }
        Outcome::Fenced { providers } => (
            None,
            vec![],
            Some(Log { providers: Some(providers), ..line(Info, "fenced the providers of the superseded operation") }),
        ),
        Outcome::FenceSkipped { provider, message } => (
            warning(EventReason::FenceSkipped, A::Fence, message.clone()),
            vec![Count::FenceSkipped(provider.clone())],
            Some(Log { provider: Some(provider), ..line(Warn, "fence skipped on request") }),
        ),
        Outcome::FenceFailed { provider, error, message, notify } => (
            if *notify {
                warning(EventReason::Stalled(ConditionReason::FenceFailed), A::Fence, message.clone())
            } else {
                None
            },
            vec![Count::FenceFailure(provider.clone())],
            Some(Log {
                provider: Some(provider),
                error: Some(error),
                ..line(Warn, "fence failed: the operation waits")
            }),
        ),
        Outcome::Held { stall } => {
            (warning(EventReason::Stalled(stall.reason), A::Hold, stall.message.clone()), vec![], None)
        }
        Outcome::Rested { stall } => (
            stall.as_ref().and_then(|s| warning(EventReason::Stalled(s.reason), A::Validate, s.message.clone())),
            vec![Count::StatusWrites],
            None,
        ),
        Outcome::Aborted { from, to, in_doubt } => {
            let text = if *in_doubt {
                "the provider confirms the compute still runs after a failed stop"
            } else {
                "spec returned to the current provider before anything was stopped"
            };
            let switch = Count::Switch { from: from.clone(), to: to.clone(), result: SwitchResult::Aborted };
            (normal(EventReason::SwitchAborted, A::Abort, text.to_string()), vec![switch], None)
        }
        Outcome::AlreadyStopped { instance } => {
            let logged = Log {
                instance: Some(&instance.id),
                provider: Some(&instance.provider),
                ..line(Warn, "the compute was already stopped (by a superseded holder): carrying on")
            };
            (None, vec![], Some(logged))
        }
        Outcome::Retargeted { target, released } => {
            let text = format!("target changed to {target} after the old compute stopped; released {released}");
            (normal(EventReason::Retargeted, A::Retarget, text), vec![], None)
        }
        Outcome::Stopped { instance, kind } => (
            // A switch's stop is part of its outcome (SwitchCompleted); a stop or delete's is the outcome.
            if *kind == OperationKind::Switch {
                None
            } else {
                normal(
                    EventReason::ComputeStopped,
                    A::Stop,
                    format!("stopped {} on {}", instance.id, instance.provider),
                )
            },
            vec![],
            Some(Log {
                instance: Some(&instance.id),
                provider: Some(&instance.provider),
                ..line(Info, "old compute stopped")
            }),
        ),
        Outcome::InstanceNotFound { instance, stopped } => (
            warning(
                EventReason::InstanceNotFound,
                A::Stop,
                format!(
                    "{} on {} (key {:?}) is unknown to the provider; stopped what it runs for this workspace instead: {stopped:?}",
                    instance.id, instance.provider, instance.key
                ),
            ),
            vec![],
            Some(Log {
                instance: Some(&instance.id),
                key: Some(&instance.key),
                provider: Some(&instance.provider),
                stopped: Some(stopped),
                ..line(
                    Warn,
                    "the provider knows no instance under the recorded key: stopped what it runs for this workspace",
                )
            }),
        ),
        Outcome::StopFailed { switch, error, retry_in_secs } => {
            let counts = switch
                .iter()
                .map(|(from, to)| Count::Switch {
                    from: from.clone(),
                    to: to.clone(),
                    result: SwitchResult::StopFailed,
                })
                .collect();
            let text = format!("{error}; claim released, retrying in {retry_in_secs}s");
            (warning(EventReason::Stalled(ConditionReason::StopFailed), A::Stop, text), counts, None)
        }
        Outcome::Provisioned { instance, switched } => {
            let to = &instance.provider;
            let logged = Some(Log {
                instance: Some(&instance.id),
                provider: Some(to),
                ..line(Info, "provisioned; operation finished")
            });
            match switched {
                Some(Switched { from, took }) => {
                    let mut counts =
                        vec![Count::Switch { from: from.clone(), to: to.clone(), result: SwitchResult::Completed }];
                    counts.extend(took.map(Count::SwitchSeconds));
                    let text = format!(
                        "switched from {from} to {to} in {:.1}s: compute on {from} stopped, then {} started",
                        took.unwrap_or_default(),
                        instance.id
                    );
                    (normal(EventReason::SwitchCompleted, A::Provision, text), counts, logged)
                }
                None => {
                    let text = format!("running on {to}: {}", instance.id);
                    (normal(EventReason::Provisioned, A::Provision, text), vec![], logged)
                }
            }
        }
        Outcome::ProvisionFailed { error, attempts, notify } => (
            if *notify {
                let text = format!("{error} (attempt {attempts})");
                warning(EventReason::Stalled(ConditionReason::ProvisionFailed), A::Provision, text)
            } else {
                None
            },
            vec![],
            Some(Log { error: Some(error), ..line(Warn, "provision failed") }),
        ),
        Outcome::Released { instance, provider } => {
            let logged = Log {
                instance: Some(instance),
                provider: Some(provider),
                ..line(Info, "released compute created under the operation's key")
            };
            (None, vec![], Some(logged))
        }
        Outcome::ReleaseFailed { error } => (
            None,
            vec![],
            Some(Log { error: Some(error), ..line(Warn, "releasing in-flight compute failed; will retry") }),
        ),
        Outcome::FinalizerRemoved => (None, vec![], Some(line(Info, "compute released; finalizer removed"))),
        Outcome::TooLarge { namespace, name, message } => (
            warning(EventReason::Stalled(ConditionReason::ObjectTooLarge), A::Write, message.clone()),
            vec![],
            Some(Log { namespace: Some(namespace), name: Some(name), ..line(Warn, "workspace too large to write") }),
        ),
    };
    Report { event, counts, log }
}

/// Writes a log line with its fields; a field without a value is left out.
fn emit(log: &Log<'_>) {
    // One field list for both levels (a level is part of a callsite, so it cannot be a value).
    macro_rules! at {
        ($level:ident) => {
            $level!(
                operation = log.operation,
                kind = log.kind.as_ref().map(tracing::field::debug),
                from = log.from,
                to = log.to,
                epoch = log.epoch,
                previous = log.previous,
                provider = log.provider,
                providers = log.providers.map(tracing::field::debug),
                instance = log.instance,
                key = log.key,
                stopped = log.stopped.map(tracing::field::debug),
                error = log.error,
                namespace = log.namespace,
                name = log.name,
                "{}",
                log.message
            )
        };
    }
    match log.level {
        Level::Info => at!(info),
        Level::Warn => at!(warn),
    }
}

/// Carries out what `outcome` leads to, about `ws`.
pub(super) fn publish(ctx: &Context, ws: &Workspace, outcome: Outcome) {
    let Report { event: note, counts, log } = report(&outcome);
    if let Some(log) = log {
        emit(&log);
    }
    for count in counts {
        let m = &ctx.metrics;
        match count {
            Count::ClaimsWon => {
                m.claims_won.inc();
            }
            Count::ClaimsLost => {
                m.claims_lost.inc();
            }
            Count::Takeovers => {
                m.takeovers.inc();
            }
            Count::StatusWrites => {
                m.status_writes.inc();
            }
            Count::Switch { from, to, result } => m.switch(&from, &to, result),
            Count::SwitchSeconds(took) => m.switch_duration.observe(took),
            Count::FenceSkipped(provider) => Metrics::count(&m.fences_skipped, &provider),
            Count::FenceFailure(provider) => Metrics::count(&m.fence_failures, &provider),
        }
    }
    if let Some(Note { type_, reason, action, text }) = note {
        event(ctx, ws, type_, reason, action, &text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(provider: &str, id: &str) -> Instance {
        Instance::new(id, provider, "uid.op")
    }

    fn event_of(outcome: &Outcome) -> Option<(EventType, &'static str, &'static str, String)> {
        report(outcome).event.map(|n| (n.type_, n.reason.as_str(), n.action.as_str(), n.text))
    }

    /// An Event as the tests spell it: type, reason, action, note.
    type Told = (EventType, &'static str, &'static str, &'static str);

    /// Every outcome, with the Event it leads to.
    #[test]
    fn events_of_outcomes() {
        use EventType::{Normal, Warning};
        let stall = Stall::new(ConditionReason::ProviderNotFound, "ComputeProvider \"b\" does not exist");
        let cases: Vec<(Outcome, Option<Told>)> = vec![
            (Outcome::Claimed { id: "op".into(), kind: OperationKind::Switch, from: None, to: None, epoch: 2 }, None),
            (Outcome::ClaimLost { kind: OperationKind::Switch }, None),
            (
                Outcome::TookOver { previous: "ctrl-a".into(), epoch: 5 },
                Some((Normal, "TookOver", "TakeOver", "claim of ctrl-a was stale; resumed under epoch 5")),
            ),
            (Outcome::TakeOverLost, None),
            (Outcome::Written, None),
            (Outcome::OperationLost { operation: "op".into() }, None),
            (Outcome::FencedOff { error: "stale".into() }, None),
            (Outcome::Fenced { providers: vec!["a".into()] }, None),
            (
                Outcome::FenceSkipped { provider: "a".into(), message: "left unfenced".into() },
                Some((Warning, "FenceSkipped", "Fence", "left unfenced")),
            ),
            (
                Outcome::FenceFailed { provider: "a".into(), error: "e".into(), message: "m".into(), notify: true },
                Some((Warning, "FenceFailed", "Fence", "m")),
            ),
            (
                Outcome::FenceFailed { provider: "a".into(), error: "e".into(), message: "m".into(), notify: false },
                None,
            ),
            (
                Outcome::Held { stall: stall.clone() },
                Some((Warning, "ProviderNotFound", "Hold", "ComputeProvider \"b\" does not exist")),
            ),
            (
                Outcome::Rested { stall: Some(stall) },
                Some((Warning, "ProviderNotFound", "Validate", "ComputeProvider \"b\" does not exist")),
            ),
            (Outcome::Rested { stall: None }, None),
            (
                Outcome::Aborted { from: "a".into(), to: "a".into(), in_doubt: false },
                Some((
                    Normal,
                    "SwitchAborted",
                    "Abort",
                    "spec returned to the current provider before anything was stopped",
                )),
            ),
            (
                Outcome::Aborted { from: "a".into(), to: "a".into(), in_doubt: true },
                Some((
                    Normal,
                    "SwitchAborted",
                    "Abort",
                    "the provider confirms the compute still runs after a failed stop",
                )),
            ),
            (Outcome::AlreadyStopped { instance: instance("a", "i-1") }, None),
            (
                Outcome::Retargeted { target: "c".into(), released: "b".into() },
                Some((
                    Normal,
                    "Retargeted",
                    "Retarget",
                    "target changed to c after the old compute stopped; released b",
                )),
            ),
            (Outcome::Stopped { instance: instance("a", "i-1"), kind: OperationKind::Switch }, None),
            (
                Outcome::Stopped { instance: instance("a", "i-1"), kind: OperationKind::Stop },
                Some((Normal, "ComputeStopped", "Stop", "stopped i-1 on a")),
            ),
            (
                Outcome::InstanceNotFound { instance: instance("a", "i-1"), stopped: vec!["i-2".into()] },
                Some((
                    Warning,
                    "InstanceNotFound",
                    "Stop",
                    "i-1 on a (key \"uid.op\") is unknown to the provider; stopped what it runs for this workspace instead: [\"i-2\"]",
                )),
            ),
            (
                Outcome::StopFailed { switch: None, error: "boom".into(), retry_in_secs: 5 },
                Some((Warning, "StopFailed", "Stop", "boom; claim released, retrying in 5s")),
            ),
            (
                Outcome::Provisioned {
                    instance: instance("b", "i-2"),
                    switched: Some(Switched { from: "a".into(), took: Some(1.5) }),
                },
                Some((
                    Normal,
                    "SwitchCompleted",
                    "Provision",
                    "switched from a to b in 1.5s: compute on a stopped, then i-2 started",
                )),
            ),
            (
                Outcome::Provisioned { instance: instance("b", "i-2"), switched: None },
                Some((Normal, "Provisioned", "Provision", "running on b: i-2")),
            ),
            (
                Outcome::ProvisionFailed { error: "quota".into(), attempts: 3, notify: true },
                Some((Warning, "ProvisionFailed", "Provision", "quota (attempt 3)")),
            ),
            (Outcome::ProvisionFailed { error: "quota".into(), attempts: 2, notify: false }, None),
            (Outcome::Released { instance: "i-3".into(), provider: "b".into() }, None),
            (Outcome::ReleaseFailed { error: "down".into() }, None),
            (Outcome::FinalizerRemoved, None),
            (
                Outcome::TooLarge { namespace: "n".into(), name: "w".into(), message: "too large".into() },
                Some((Warning, "ObjectTooLarge", "Write", "too large")),
            ),
        ];
        for (outcome, expected) in cases {
            let expected = expected.map(|(t, r, a, n)| (t, r, a, n.to_string()));
            assert_eq!(event_of(&outcome), expected, "{outcome:?}");
        }
    }

    /// The metrics each outcome counts.
    #[test]
    fn metrics_of_outcomes() {
        let switch = |from: &str, to: &str, result| Count::Switch { from: from.into(), to: to.into(), result };
        let cases: Vec<(Outcome, Vec<Count>)> = vec![
            (
                Outcome::Claimed { id: "op".into(), kind: OperationKind::Switch, from: None, to: None, epoch: 2 },
                vec![Count::ClaimsWon, Count::StatusWrites],
            ),
            (Outcome::ClaimLost { kind: OperationKind::Switch }, vec![Count::ClaimsLost]),
            (Outcome::TookOver { previous: "x".into(), epoch: 2 }, vec![Count::Takeovers, Count::StatusWrites]),
            (Outcome::TakeOverLost, vec![Count::ClaimsLost]),
            (Outcome::Written, vec![Count::StatusWrites]),
            (Outcome::OperationLost { operation: "op".into() }, vec![Count::ClaimsLost]),
            (Outcome::FencedOff { error: "e".into() }, vec![Count::ClaimsLost]),
            (
                Outcome::FenceSkipped { provider: "a".into(), message: String::new() },
                vec![Count::FenceSkipped("a".into())],
            ),
            (
                Outcome::FenceFailed {
                    provider: "a".into(),
                    error: String::new(),
                    message: String::new(),
                    notify: false,
                },
                vec![Count::FenceFailure("a".into())],
            ),
            (Outcome::Rested { stall: None }, vec![Count::StatusWrites]),
            (
                Outcome::Aborted { from: "a".into(), to: String::new(), in_doubt: false },
                vec![switch("a", "", SwitchResult::Aborted)],
            ),
            (
                Outcome::StopFailed { switch: Some(("a".into(), "b".into())), error: String::new(), retry_in_secs: 5 },
                vec![switch("a", "b", SwitchResult::StopFailed)],
            ),
            (Outcome::StopFailed { switch: None, error: String::new(), retry_in_secs: 5 }, vec![]),
            (
                Outcome::Provisioned {
                    instance: instance("b", "i"),
                    switched: Some(Switched { from: "a".into(), took: Some(2.0) }),
                },
                vec![switch("a", "b", SwitchResult::Completed), Count::SwitchSeconds(2.0)],
            ),
            (Outcome::Provisioned { instance: instance("b", "i"), switched: None }, vec![]),
        ];
        for (outcome, expected) in cases {
            assert_eq!(report(&outcome).counts, expected, "{outcome:?}");
        }
    }

    /// Losing a claim or an operation, and being fenced off, are logged; so is every failure.
    #[test]
    fn logs_of_outcomes() {
        let level = |o: &Outcome| report(o).log.map(|l| l.level);
        assert_eq!(level(&Outcome::ClaimLost { kind: OperationKind::Stop }), Some(Level::Info));
        assert_eq!(level(&Outcome::FencedOff { error: "e".into() }), Some(Level::Warn));
        assert_eq!(level(&Outcome::ReleaseFailed { error: "e".into() }), Some(Level::Warn));
        assert_eq!(
            level(&Outcome::ProvisionFailed { error: "e".into(), attempts: 1, notify: true }),
            Some(Level::Warn)
        );
        assert_eq!(level(&Outcome::Written), None);
        let took_over = Outcome::TookOver { previous: "ctrl-a".into(), epoch: 5 };
        let log = report(&took_over).log.map(|l| (l.message, l.previous, l.epoch, l.error));
        assert_eq!(log, Some(("took over a stale claim", Some("ctrl-a"), Some(5), None)));
    }
}
