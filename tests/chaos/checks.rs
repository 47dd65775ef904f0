//! Campaign-level checkers of DESIGN.md §3, over what the providers recorded (their merged
//! ledgers and live instances) and what a watch saw of every workspace version — never over
//! the controller's own opinion. Pure functions over plain data, so each is unit-tested below
//! against hand-made histories it must reject and ones it must accept.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, SystemTime};

use switchyard::provider::simulated::{LedgerEntry, LiveInstance, Outcome, check_ledger, check_live_instances};

/// A breach found by a checker: which rule, and the evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub rule: &'static str,
    pub detail: String,
}

impl Violation {
    pub fn new(rule: &'static str, detail: impl Into<String>) -> Self {
        Self { rule, detail: detail.into() }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.rule, self.detail)
    }
}

/// A claim as a workspace version showed it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Claim {
    pub id: String,
    pub holder: String,
    pub epoch: i64,
}

/// One version of one workspace, as a watch delivered it.
#[derive(Clone, Debug)]
pub struct Observed {
    pub at: SystemTime,
    pub uid: String,
    pub name: String,
    pub resource_version: String,
    pub generation: Option<i64>,
    pub epoch: i64,
    pub operation: Option<Claim>,
    /// The kstatus rule this version breaks (DESIGN.md §3.7), if any.
    pub breach: Option<String>,
}

/// The kind of a ledgered call by its wire name ("provision", "stop", "lookup", and whatever
/// the provider protocol grows, e.g. "fence", "list"), so these checkers need no change when
/// the ledger learns a new kind of call.
fn kind(e: &LedgerEntry) -> String {
    e.call.to_string()
}

/// Calls an operation makes to do its work (as opposed to fencing or inventory listing).
fn is_work(e: &LedgerEntry) -> bool {
    matches!(kind(e).as_str(), "provision" | "stop" | "lookup")
}

/// Whether the call changed the cloud: created an instance or stopped one.
fn had_effect(e: &LedgerEntry) -> bool {
    e.outcome.created() || e.outcome == Outcome::Stopped
}

/// A moment as RFC 3339 (UTC), for reports.
pub fn at(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t).map_or_else(|_| format!("{t:?}"), |t| t.to_string())
}

fn describe(e: &LedgerEntry) -> String {
    format!(
        "seq {} at {} {} {} by {} for {} ({}) epoch {} instance {:?} -> {:?}",
        e.seq,
        at(e.at),
        e.provider,
        kind(e),
        e.caller,
        e.name,
        e.workspace_uid,
        e.epoch,
        e.instance,
        e.outcome
    )
}

/// DESIGN.md §3.2–3.4 over the merged ledger (the library's `check_ledger`): at most one live
/// instance per workspace at every point of the history, no instance stopped for two claims,
/// no stale epoch past a fence, one instance per key.
pub fn ledger_invariants(ledger: &[LedgerEntry]) -> Vec<Violation> {
    check_ledger(ledger).into_iter().map(|v| Violation::new("ledger", v.to_string())).collect()
}

/// DESIGN.md §3.3 across providers: once a workspace's operation has made a work call under
/// epoch E anywhere, it has already fenced every provider a superseded operation could call, so
/// no call under an older epoch may take effect (create or stop an instance) at any provider.
/// This is the leaked-instance race: a paused ex-holder's provision accepted by a provider that
/// only ever saw the new holder's lookup.
pub fn stale_effects(ledger: &[LedgerEntry]) -> Vec<Violation> {
    let mut newest: HashMap<&str, &LedgerEntry> = HashMap::new();
    let mut violations = Vec::new();
    for e in ledger {
        if let Some(n) = newest.get(e.workspace_uid.as_str())
            && e.epoch < n.epoch
            && had_effect(e)
        {
            violations.push(Violation::new(
                "stale-effect",
                format!("{} took effect after the newer epoch {} acted ({})", describe(e), n.epoch, describe(n)),
            ));
        }
        if is_work(e) && newest.get(e.workspace_uid.as_str()).is_none_or(|n| e.epoch > n.epoch) {
            newest.insert(&e.workspace_uid, e);
        }
    }
    violations
}

/// DESIGN.md §3.1 from the providers' side: a caller refused for a stale epoch has lost; it
/// makes no further call under that epoch for that workspace.
pub fn fenced_callers_stay_silent(ledger: &[LedgerEntry]) -> Vec<Violation> {
    let mut fenced: HashMap<(&str, &str, i64), &LedgerEntry> = HashMap::new();
    let mut violations = Vec::new();
    for e in ledger {
        let k = (e.caller.as_str(), e.workspace_uid.as_str(), e.epoch);
        if let Some(first) = fenced.get(&k) {
            violations.push(Violation::new(
                "loser-calls",
                format!("{} after the same caller was fenced at seq {}", describe(e), first.seq),
            ));
            continue;
        }
        if matches!(e.outcome, Outcome::Fenced { .. }) {
            fenced.insert(k, e);
        }
    }
    violations
}

/// DESIGN.md §3.1: every provision was made under a claim (holder, epoch) the API server
/// recorded for its caller; so was every other call of an operation the watch saw. Calls of
/// no operation the watch knows (inventory) are not judged here.
pub fn calls_under_held_claims(ledger: &[LedgerEntry], history: &[Observed]) -> Vec<Violation> {
    let mut claims: HashMap<&str, BTreeSet<(&str, i64)>> = HashMap::new();
    let mut operations: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for o in history {
        if let Some(c) = &o.operation {
            claims.entry(&o.uid).or_default().insert((&c.holder, c.epoch));
            operations.entry(&o.uid).or_default().insert(&c.id);
        }
    }
    let mut violations = Vec::new();
    for e in ledger {
        let known_op =
            operations.get(e.workspace_uid.as_str()).is_some_and(|ops| ops.contains(e.operation_id.as_str()));
        if kind(e) != "provision" && !known_op {
            continue;
        }
        let held = claims.get(e.workspace_uid.as_str()).is_some_and(|c| c.contains(&(e.caller.as_str(), e.epoch)));
        if !held {
            violations.push(Violation::new(
                "unheld-call",
                format!("{} was made under a claim the API server never recorded for its caller", describe(e)),
            ));
        }
    }
    violations
}

/// DESIGN.md §3.7 at every observed moment.
pub fn kstatus(history: &[Observed]) -> Vec<Violation> {
    history
        .iter()
        .filter_map(|o| o.breach.as_ref().map(|b| Violation::new("kstatus", format!("rv {}: {b}", o.resource_version))))
        .collect()
}

/// The versions of each workspace that were writes other than spec changes (status,
/// finalizers), in order: a version whose generation equals the previous one's.
pub fn status_writes(history: &[Observed]) -> BTreeMap<String, Vec<SystemTime>> {
    let mut last: HashMap<&str, Option<i64>> = HashMap::new();
    let mut writes: BTreeMap<String, Vec<SystemTime>> = BTreeMap::new();
    for o in history {
        if let Some(previous) = last.insert(&o.uid, o.generation)
            && previous == o.generation
        {
            writes.entry(o.uid.clone()).or_default().push(o.at);
        }
    }
    writes
}

/// Writes of workspace `uid` in [from, to).
pub fn writes_between(history: &[Observed], uid: &str, from: SystemTime, to: SystemTime) -> usize {
    status_writes(history).get(uid).map_or(0, |w| w.iter().filter(|t| **t >= from && **t < to).count())
}

/// DESIGN.md §3.8, no hot loop: no workspace is written more than `max` times within any
/// `window`.
pub fn hot_loops(history: &[Observed], window: Duration, max: usize) -> Vec<Violation> {
    let names: HashMap<&str, &str> = history.iter().map(|o| (o.uid.as_str(), o.name.as_str())).collect();
    let mut violations = Vec::new();
    for (uid, writes) in status_writes(history) {
        let mut worst = (0, 0);
        let mut start = 0;
        for end in 0..writes.len() {
            while writes[end].duration_since(writes[start]).unwrap_or_default() >= window {
                start += 1;
            }
            if end + 1 - start > worst.0 {
                worst = (end + 1 - start, start);
            }
        }
        if worst.0 > max {
            violations.push(Violation::new(
                "hot-loop",
                format!(
                    "{} ({uid}) was written {} times within {window:?} (bound {max}), from {}",
                    names.get(uid.as_str()).copied().unwrap_or("?"),
                    worst.0,
                    at(writes[worst.1])
                ),
            ));
        }
    }
    violations
}

/// DESIGN.md §3.8 from the providers' side: no workspace's calls (any caller, any provider)
/// exceed `max` within any `window` — retries follow their backoff instead of spinning.
pub fn call_storms(ledger: &[LedgerEntry], window: Duration, max: usize) -> Vec<Violation> {
    let mut per: BTreeMap<&str, Vec<&LedgerEntry>> = BTreeMap::new();
    for e in ledger.iter().filter(|e| !e.workspace_uid.is_empty()) {
        per.entry(&e.workspace_uid).or_default().push(e);
    }
    let mut violations = Vec::new();
    for (uid, calls) in per {
        let mut worst = (0, 0);
        let mut start = 0;
        for end in 0..calls.len() {
            while calls[end].at.duration_since(calls[start].at).unwrap_or_default() >= window {
                start += 1;
            }
            if end + 1 - start > worst.0 {
                worst = (end + 1 - start, start);
            }
        }
        if worst.0 > max {
            let first = calls[worst.1];
            violations.push(Violation::new(
                "call-storm",
                format!(
                    "{} ({uid}): {} provider calls within {window:?} (bound {max}), from {}",
                    first.name,
                    worst.0,
                    describe(first)
                ),
            ));
        }
    }
    violations
}

/// A takeover seen by the watch: the same operation under a new holder and a newer epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Takeover {
    pub at: SystemTime,
    pub uid: String,
    pub name: String,
    pub from: Claim,
    pub to: Claim,
}

/// Every takeover in `history`, in order.
pub fn takeovers(history: &[Observed]) -> Vec<Takeover> {
    let mut last: HashMap<&str, Option<&Claim>> = HashMap::new();
    let mut found = Vec::new();
    for o in history {
        let current = o.operation.as_ref();
        if let (Some(Some(before)), Some(now)) = (last.get(o.uid.as_str()), current)
            && before.id == now.id
            && before.holder != now.holder
            && now.epoch > before.epoch
        {
            found.push(Takeover {
                at: o.at,
                uid: o.uid.clone(),
                name: o.name.clone(),
                from: (*before).clone(),
                to: now.clone(),
            });
        }
        last.insert(&o.uid, current);
    }
    found
}

/// DESIGN.md §3.8, no takeover livelock: after `since` (faults stopped, every holder alive), a
/// workspace is taken over at most `max` times (once, for a claim a dead process left behind).
pub fn takeover_livelock(history: &[Observed], since: SystemTime, max: usize) -> Vec<Violation> {
    let mut per: BTreeMap<(String, String), Vec<Takeover>> = BTreeMap::new();
    for t in takeovers(history).into_iter().filter(|t| t.at >= since) {
        per.entry((t.name.clone(), t.uid.clone())).or_default().push(t);
    }
    per.into_iter()
        .filter(|(_, ts)| ts.len() > max)
        .map(|((name, uid), ts)| {
            let chain: Vec<String> = ts
                .iter()
                .map(|t| format!("{}@{} -> {}@{}", t.from.holder, t.from.epoch, t.to.holder, t.to.epoch))
                .collect();
            Violation::new(
                "takeover-livelock",
                format!(
                    "{name} ({uid}) taken over {} times after faults stopped (bound {max}): {}",
                    ts.len(),
                    chain.join(", ")
                ),
            )
        })
        .collect()
}

/// Epoch increments of `uid` seen after `since`.
pub fn epoch_bumps(history: &[Observed], uid: &str, since: SystemTime) -> i64 {
    let epochs: Vec<i64> = history.iter().filter(|o| o.uid == uid && o.at >= since).map(|o| o.epoch).collect();
    match (epochs.first(), epochs.iter().max()) {
        (Some(first), Some(max)) => max - first,
        _ => 0,
    }
}

/// DESIGN.md §3.8 by epochs: after `since`, no workspace's epoch rises more than `max` times
/// (claims and takeovers alike), however its operations are split.
pub fn epoch_livelock(history: &[Observed], since: SystemTime, max: i64) -> Vec<Violation> {
    let uids: BTreeMap<&str, &str> = history.iter().map(|o| (o.uid.as_str(), o.name.as_str())).collect();
    uids.into_iter()
        .filter_map(|(uid, name)| {
            let bumps = epoch_bumps(history, uid, since);
            (bumps > max).then(|| {
                Violation::new(
                    "epoch-livelock",
                    format!("{name} ({uid}): epoch rose {bumps} times after faults stopped (bound {max})"),
                )
            })
        })
        .collect()
}

/// What convergence asks of one workspace (DESIGN.md §3.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsState {
    pub name: String,
    pub uid: String,
    pub provider: String,
    pub running: bool,
    pub active: Option<String>,
    /// (provider, instance id) the status names.
    pub instance: Option<(String, String)>,
    pub operation: bool,
    pub ready: bool,
    /// status.observedGeneration == metadata.generation.
    pub current: bool,
}

impl WsState {
    /// Why this workspace has not converged; None when it has.
    pub fn unconverged(&self) -> Option<String> {
        let mut why = Vec::new();
        if self.operation {
            why.push("operation in flight".to_string());
        }
        if self.active.as_deref() != Some(self.provider.as_str()) {
            why.push(format!("activeProvider {:?} != spec.provider {:?}", self.active, self.provider));
        }
        match (&self.instance, self.running) {
            (None, true) => why.push("running but no instance".to_string()),
            (Some(i), false) => why.push(format!("stopped but instance {i:?}")),
            (Some((p, _)), true) if *p != self.provider => why.push(format!("instance on {p}")),
            _ => {}
        }
        if !self.ready {
            why.push("Ready is not True".to_string());
        }
        if !self.current {
            why.push("status of an older generation".to_string());
        }
        (!why.is_empty()).then(|| format!("{}: {}", self.name, why.join(", ")))
    }
}

/// DESIGN.md §3.5 and §3.6 at the end: every workspace converged, the providers' live
/// instances exactly those the statuses name, and none left for a deleted workspace.
pub fn end_state(states: &[WsState], live: &[LiveInstance], deleted_uids: &[String]) -> Vec<Violation> {
    let mut violations: Vec<Violation> =
        states.iter().filter_map(WsState::unconverged).map(|w| Violation::new("convergence", w)).collect();
    let named: Vec<(String, String)> = states.iter().filter_map(|s| s.instance.clone()).collect();
    violations.extend(check_live_instances(live, &named).into_iter().map(|v| Violation::new("leak", v.to_string())));
    for l in live.iter().filter(|l| deleted_uids.contains(&l.workspace_uid)) {
        violations.push(Violation::new(
            "leak",
            format!("{}/{} still runs for deleted workspace {}", l.provider, l.id, l.workspace_uid),
        ));
    }
    let mut per_ws: BTreeMap<&str, Vec<&LiveInstance>> = BTreeMap::new();
    for l in live {
        per_ws.entry(&l.workspace_uid).or_default().push(l);
    }
    for (uid, ls) in per_ws.into_iter().filter(|(_, ls)| ls.len() > 1) {
        let ids: Vec<String> = ls.iter().map(|l| format!("{}/{}", l.provider, l.id)).collect();
        violations
            .push(Violation::new("multiple-live", format!("workspace {uid} has {} live instances: {ids:?}", ls.len())));
    }
    violations
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use switchyard::provider::simulated::Call;

    use super::*;

    fn t(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(ms)
    }

    /// A ledger entry at `ms`; operation ids are "op-<caller>-<epoch>".
    #[allow(clippy::too_many_arguments)]
    fn entry(
        ms: u64,
        provider: &str,
        caller: &str,
        call: Call,
        uid: &str,
        epoch: i64,
        instance: Option<&str>,
        outcome: Outcome,
    ) -> LedgerEntry {
        serde_json::from_value(json!({
            "seq": 0, "at": t(ms), "provider": provider, "caller": caller,
            "operationId": format!("op-{caller}-{epoch}"), "call": call, "workspaceUid": uid,
            "namespace": "ns", "name": "ws", "epoch": epoch, "key": format!("{uid}.op-{caller}-{epoch}"),
            "instance": instance, "outcome": outcome
        }))
        .expect("ledger entry")
    }

    fn numbered(mut entries: Vec<LedgerEntry>) -> Vec<LedgerEntry> {
        for (i, e) in entries.iter_mut().enumerate() {
            e.seq = i as u64 + 1;
        }
        entries
    }

    fn observed(ms: u64, uid: &str, rv: u64, generation: i64, claim: Option<(&str, &str, i64)>) -> Observed {
        let operation = claim.map(|(id, holder, epoch)| Claim { id: id.into(), holder: holder.into(), epoch });
        Observed {
            at: t(ms),
            uid: uid.into(),
            name: format!("name-{uid}"),
            resource_version: rv.to_string(),
            generation: Some(generation),
            epoch: operation.as_ref().map_or(0, |o| o.epoch),
            operation,
            breach: None,
        }
    }

    /// The race: X (epoch 2) stopped a, its provision on t failed; Y took over (epoch 3), looked
    /// t's key up (no fence), created on u; then X's provision on t is answered with `outcome`.
    fn race_ending_with(instance: Option<&str>, outcome: Outcome) -> Vec<LedgerEntry> {
        numbered(vec![
            entry(0, "a", "x", Call::Stop, "w", 2, Some("i-a"), Outcome::Stopped),
            entry(10, "t", "x", Call::Provision, "w", 2, None, Outcome::Failed("injected".into())),
            entry(20, "t", "y", Call::Lookup, "w", 3, None, Outcome::NotFound),
            entry(30, "u", "y", Call::Provision, "w", 3, Some("i-u"), Outcome::Created),
            entry(40, "t", "x", Call::Provision, "w", 2, instance, outcome),
        ])
    }

    /// The leak: t accepts X's stale provision.
    fn leaked_history() -> Vec<LedgerEntry> {
        race_ending_with(Some("i-t"), Outcome::Created)
    }

    /// The same race, fixed: t refuses X's stale provision.
    fn fenced_history() -> Vec<LedgerEntry> {
        race_ending_with(None, Outcome::Fenced { newest: 3 })
    }

    #[test]
    fn the_leak_breaks_single_live_and_stale_effect() {
        let leaked = leaked_history();
        let v = ledger_invariants(&leaked);
        assert!(v.iter().any(|v| v.detail.contains("invariant 2")), "{v:?}");
        let v = stale_effects(&leaked);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].detail.starts_with("seq 5 at ") && v[0].detail.contains(" t provision by x"), "{v:?}");
        assert!(ledger_invariants(&fenced_history()).is_empty());
        assert!(stale_effects(&fenced_history()).is_empty());
    }

    #[test]
    fn stale_effect_ignores_older_calls_before_the_newer_epoch_acted_and_refused_ones() {
        // X's stop at epoch 2 lands before Y's first call at epoch 3: no violation.
        let ok = numbered(vec![
            entry(0, "a", "x", Call::Stop, "w", 2, Some("i-a"), Outcome::Stopped),
            entry(5, "b", "y", Call::Lookup, "w", 3, None, Outcome::NotFound),
            entry(6, "b", "x", Call::Provision, "w", 2, None, Outcome::Fenced { newest: 3 }),
            // Another workspace's older epoch is no business of w's.
            entry(7, "b", "x", Call::Provision, "v", 1, Some("i-v"), Outcome::Created),
        ]);
        assert!(stale_effects(&ok).is_empty(), "{:?}", stale_effects(&ok));
        // A stale stop that took effect after the newer epoch acted is a violation.
        let bad = numbered(vec![
            entry(5, "b", "y", Call::Provision, "w", 3, Some("i-b"), Outcome::Created),
            entry(6, "a", "x", Call::Stop, "w", 2, Some("i-a"), Outcome::Stopped),
        ]);
        assert_eq!(stale_effects(&bad).len(), 1);
    }

    #[test]
    fn a_fenced_caller_that_calls_again_is_rejected() {
        let bad = numbered(vec![
            entry(0, "t", "x", Call::Provision, "w", 2, None, Outcome::Fenced { newest: 3 }),
            entry(10, "t", "x", Call::Provision, "w", 2, None, Outcome::Fenced { newest: 3 }),
        ]);
        assert_eq!(fenced_callers_stay_silent(&bad).len(), 1);
        let ok = numbered(vec![
            entry(0, "t", "x", Call::Provision, "w", 2, None, Outcome::Fenced { newest: 3 }),
            // A new claim of the same caller, under a newer epoch, may call again.
            entry(10, "t", "x", Call::Provision, "w", 4, Some("i-t"), Outcome::Created),
        ]);
        assert!(fenced_callers_stay_silent(&ok).is_empty());
    }

    #[test]
    fn calls_must_be_made_under_claims_the_api_server_recorded() {
        let history =
            vec![observed(0, "w", 1, 1, Some(("op-x-2", "x", 2))), observed(10, "w", 2, 1, Some(("op-y-3", "y", 3)))];
        let ok = numbered(vec![
            entry(1, "t", "x", Call::Provision, "w", 2, Some("i-t"), Outcome::Created),
            entry(11, "t", "y", Call::Stop, "w", 3, Some("i-t"), Outcome::Stopped),
        ]);
        assert!(calls_under_held_claims(&ok, &history).is_empty());
        // y provisioning under x's epoch: a claim y never held.
        let bad = numbered(vec![entry(11, "t", "y", Call::Provision, "w", 2, Some("i-t"), Outcome::Created)]);
        assert_eq!(calls_under_held_claims(&bad, &history).len(), 1);
        // A stop of an operation the watch never saw (inventory) is not judged.
        let inventory = numbered(vec![entry(12, "t", "z", Call::Stop, "w", 3, Some("i-t"), Outcome::Stopped)]);
        assert!(calls_under_held_claims(&inventory, &history).is_empty());
    }

    #[test]
    fn kstatus_breaches_are_reported() {
        let mut bad = observed(0, "w", 1, 1, None);
        bad.breach = Some("w: Ready missing".into());
        assert_eq!(kstatus(&[observed(0, "w", 1, 1, None), bad]).len(), 1);
        assert!(kstatus(&[observed(0, "w", 1, 1, None)]).is_empty());
    }

    #[test]
    fn a_hot_loop_is_rejected_and_a_switch_is_not() {
        // 50 writes/s for a second, generation unchanged.
        let hot: Vec<Observed> = (0..51).map(|i| observed(i * 20, "w", i + 1, 2, Some(("op", "x", 2)))).collect();
        let v = hot_loops(&hot, Duration::from_secs(1), 10);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].detail.contains("50 times"), "{v:?}");
        // A switch: spec change, claim, commit, finish; then a renewal per second.
        let mut calm = vec![observed(0, "w", 1, 2, None)];
        calm.extend((1..4).map(|i| observed(i * 50, "w", i + 1, 2, Some(("op", "x", 2)))));
        calm.extend((1..10).map(|i| observed(1000 * i, "w", 10 + i, 2, Some(("op", "x", 2)))));
        assert!(hot_loops(&calm, Duration::from_secs(1), 10).is_empty());
        // Spec changes are not status writes.
        let specs: Vec<Observed> = (0..30).map(|i| observed(i, "w", i + 1, i as i64 + 1, None)).collect();
        assert!(status_writes(&specs).is_empty());
        assert_eq!(writes_between(&hot, "w", t(0), t(100)), 4);
    }

    #[test]
    fn a_storm_of_provider_calls_is_rejected_and_backoff_is_not() {
        // A provision retried every 50 ms.
        let storm = numbered(
            (0..60)
                .map(|i| entry(i * 50, "t", "x", Call::Provision, "w", 2, None, Outcome::Failed("down".into())))
                .collect(),
        );
        let v = call_storms(&storm, Duration::from_secs(3), 30);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].detail.contains(": 60 provider calls"), "{v:?}");
        // Backoff of 1, 2, 4, 8 s with three driver-level tries each.
        let mut calm = Vec::new();
        for at in [0u64, 1000, 3000, 7000, 15000] {
            for k in 0..3 {
                calm.push(entry(at + k * 10, "t", "x", Call::Provision, "w", 2, None, Outcome::Failed("down".into())));
            }
        }
        assert!(call_storms(&numbered(calm), Duration::from_secs(3), 30).is_empty());
    }

    #[test]
    fn repeated_takeovers_of_a_live_holder_are_a_livelock() {
        let mut livelock = vec![observed(0, "w", 1, 1, Some(("op", "x", 2)))];
        for i in 1..6u64 {
            let holder = if i % 2 == 0 { "x" } else { "y" };
            livelock.push(observed(i * 3000, "w", i + 1, 1, Some(("op", holder, 2 + i as i64))));
        }
        assert_eq!(takeovers(&livelock).len(), 5);
        assert_eq!(takeover_livelock(&livelock, t(0), 1).len(), 1);
        assert_eq!(epoch_bumps(&livelock, "w", t(0)), 5);
        assert_eq!(epoch_livelock(&livelock, t(0), 3).len(), 1);
        assert!(epoch_livelock(&livelock, t(9000), 3).is_empty());
        // One takeover of a dead holder's claim, then a new claim: fine.
        let ok = vec![
            observed(0, "w", 1, 1, Some(("op", "x", 2))),
            observed(3000, "w", 2, 1, Some(("op", "y", 3))),
            observed(3100, "w", 3, 1, None),
            observed(4000, "w", 4, 2, Some(("op2", "y", 4))),
        ];
        assert_eq!(takeovers(&ok).len(), 1);
        assert!(takeover_livelock(&ok, t(0), 1).is_empty());
        // Takeovers before `since` do not count.
        assert!(takeover_livelock(&livelock, t(100_000), 0).is_empty());
    }

    fn converged(name: &str, uid: &str, provider: &str, id: &str) -> WsState {
        WsState {
            name: name.into(),
            uid: uid.into(),
            provider: provider.into(),
            running: true,
            active: Some(provider.into()),
            instance: Some((provider.into(), id.into())),
            operation: false,
            ready: true,
            current: true,
        }
    }

    fn live(provider: &str, id: &str, uid: &str) -> LiveInstance {
        LiveInstance { provider: provider.into(), id: id.into(), key: format!("{uid}.k"), workspace_uid: uid.into() }
    }

    #[test]
    fn the_end_state_must_be_converged_and_leak_free() {
        let ok = [converged("w1", "u1", "a", "i-1")];
        assert!(end_state(&ok, &[live("a", "i-1", "u1")], &[]).is_empty());
        // A leak on t beside the named instance: leaked and two live.
        let v = end_state(&ok, &[live("a", "i-1", "u1"), live("t", "i-2", "u1")], &[]);
        assert!(v.iter().any(|v| v.rule == "leak") && v.iter().any(|v| v.rule == "multiple-live"), "{v:?}");
        // A status naming a stopped instance.
        assert!(end_state(&ok, &[], &[]).iter().any(|v| v.detail.contains("not running")));
        // A deleted workspace's instance.
        let v = end_state(&ok, &[live("a", "i-1", "u1"), live("t", "i-9", "gone")], &["gone".to_string()]);
        assert!(v.iter().any(|v| v.detail.contains("deleted workspace gone")), "{v:?}");
        // Not converged: still switching, and stopped but holding an instance.
        let mut switching = converged("w1", "u1", "b", "i-1");
        switching.active = Some("a".into());
        switching.instance = Some(("a".into(), "i-1".into()));
        switching.operation = true;
        assert!(switching.unconverged().is_some());
        let mut stopped = converged("w1", "u1", "a", "i-1");
        stopped.running = false;
        assert!(stopped.unconverged().is_some_and(|w| w.contains("stopped but instance")));
        let mut not_ready = converged("w1", "u1", "a", "i-1");
        not_ready.ready = false;
        assert!(not_ready.unconverged().is_some());
    }
}
