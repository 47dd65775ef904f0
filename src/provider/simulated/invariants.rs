//! Pure checkers of DESIGN.md §3, from the providers' side: over a ledger (invariants 2, 3, 4)
//! and over the clouds' live instances (invariant 6).

use std::collections::{BTreeSet, HashMap};

use super::{Call, Clouds, LedgerEntry, LiveInstance, Outcome};

/// A breach of a DESIGN.md §3 invariant, with the ledger positions that show it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error(
        "invariant 2: at seq {seq}, {provider}/{instance} started for workspace {workspace_uid} while \
         {running_provider}/{running_instance} was still running"
    )]
    MultipleLive {
        seq: u64,
        workspace_uid: String,
        provider: String,
        instance: String,
        running_provider: String,
        running_instance: String,
    },
    #[error(
        "invariant 3: at seq {seq}, {provider}/{instance} was stopped again (first effective stop at seq {first_seq})"
    )]
    RepeatedStop { seq: u64, provider: String, instance: String, first_seq: u64 },
    #[error(
        "invariant 3: {provider}/{instance} was effectively stopped under epoch {first_epoch} (seq {first_seq}) \
         and under epoch {epoch} (seq {seq})"
    )]
    StoppedUnderTwoEpochs { seq: u64, provider: String, instance: String, epoch: i64, first_seq: u64, first_epoch: i64 },
    #[error(
        "invariant 3: at seq {seq}, {provider} accepted a {call} for workspace {workspace_uid} under epoch {epoch} \
         after accepting epoch {newest} at seq {newest_seq}"
    )]
    StaleEpochAccepted {
        seq: u64,
        provider: String,
        call: Call,
        workspace_uid: String,
        epoch: i64,
        newest: i64,
        newest_seq: u64,
    },
    #[error(
        "invariant 3: at seq {seq}, workspace {workspace_uid} asked {provider} to stop {instance}, \
         which belongs to workspace {owner}"
    )]
    ForeignStop { seq: u64, provider: String, instance: String, workspace_uid: String, owner: String },
    #[error(
        "invariant 4: at seq {seq}, key {key} on {provider} yielded {instance}, but it yielded {first_instance} at seq {first_seq}"
    )]
    KeyReused { seq: u64, provider: String, key: String, instance: String, first_instance: String, first_seq: u64 },
    #[error(
        "invariant 6: {provider}/{instance} of workspace {workspace_uid} is running but no workspace status names it"
    )]
    Leaked { provider: String, instance: String, workspace_uid: String },
    #[error("invariant 6: a workspace status names {provider}/{instance}, which is not running")]
    NotLive { provider: String, instance: String },
}

type InstanceRef = (String, String);

/// One ledger out of the ledgers of several processes (each provider-sim numbers its own
/// calls), so [`check_ledger`] can replay them together. Each input keeps its own seq order;
/// across inputs, entries are ordered by timestamp, then provider, then their own seq. The
/// result is renumbered 1, 2, ... in that order.
pub fn merge_ledgers(ledgers: Vec<Vec<LedgerEntry>>) -> Vec<LedgerEntry> {
    let mut queues: Vec<std::collections::VecDeque<LedgerEntry>> = ledgers
        .into_iter()
        .map(|mut l| {
            l.sort_by_key(|e| e.seq);
            l.into()
        })
        .collect();
    let mut merged = Vec::with_capacity(queues.iter().map(|q| q.len()).sum());
    // A k-way merge of heads rather than one global sort: a clock step backwards inside one
    // process must not reorder that process's own calls.
    while let Some(next) = queues
        .iter_mut()
        .filter(|q| !q.is_empty())
        .min_by(|a, b| {
            let (a, b) = (&a[0], &b[0]);
            (a.at, &a.provider, a.seq).cmp(&(b.at, &b.provider, b.seq))
        })
        .and_then(|q| q.pop_front())
    {
        merged.push(next);
    }
    for (i, e) in merged.iter_mut().enumerate() {
        e.seq = i as u64 + 1;
    }
    merged
}

/// Checks invariants 2, 3 and 4 over `ledger`, replayed in seq order. Empty means clean.
/// Stops by the inventory collector (operation id "inventory") are judged like any other: an
/// orphan it stops must not have been effectively stopped before, under any epoch.
pub fn check_ledger(ledger: &[LedgerEntry]) -> Vec<Violation> {
    let mut entries: Vec<&LedgerEntry> = ledger.iter().collect();
    entries.sort_by_key(|e| e.seq);

    let mut violations = Vec::new();
    // (provider, instance) -> owning workspace, from the call that created it.
    let mut owner: HashMap<InstanceRef, String> = HashMap::new();
    // workspace_uid -> its Running instances, across providers.
    let mut running: HashMap<String, BTreeSet<InstanceRef>> = HashMap::new();
    // (provider, instance) -> (seq, epoch) of its first effective stop.
    let mut stopped: HashMap<InstanceRef, (u64, i64)> = HashMap::new();
    // (provider, workspace_uid) -> (newest accepted epoch, seq that accepted it).
    let mut fence: HashMap<(String, String), (i64, u64)> = HashMap::new();
    // (provider, key) -> (first instance it yielded, seq).
    let mut keys: HashMap<(String, String), (String, u64)> = HashMap::new();

    for e in entries {
        let target = e.instance.as_ref().map(|id| (e.provider.clone(), id.clone()));

        // Invariant 3: the provider's fence never moves backwards for an admitted call. Every
        // per-workspace call that passed the fence counts, whatever it did afterwards: an
        // explicit fence, a lookup, a call failed after admission. (Provider-wide inventory
        // lists are not ledgered.)
        if e.call.is_fenced() && e.outcome.passed_fence() {
            let slot = fence.entry((e.provider.clone(), e.workspace_uid.clone())).or_insert((e.epoch, e.seq));
            if e.epoch < slot.0 {
                violations.push(Violation::StaleEpochAccepted {
                    seq: e.seq,
                    provider: e.provider.clone(),
                    call: e.call,
                    workspace_uid: e.workspace_uid.clone(),
                    epoch: e.epoch,
                    newest: slot.0,
                    newest_seq: slot.1,
                });
            } else if e.epoch > slot.0 {
                *slot = (e.epoch, e.seq);
            }
        }

        // Invariant 4: whatever the call, a key names one instance.
        if let (Some(key), Some(id)) = (&e.key, &e.instance) {
            let (first, first_seq) = keys.entry((e.provider.clone(), key.clone())).or_insert((id.clone(), e.seq));
            if first != id {
                violations.push(Violation::KeyReused {
                    seq: e.seq,
                    provider: e.provider.clone(),
                    key: key.clone(),
                    instance: id.clone(),
                    first_instance: first.clone(),
                    first_seq: *first_seq,
                });
            }
        }

        let Some(target) = target else { continue };
        match (&e.call, &e.outcome) {
            // Invariant 2: a new instance may only start when its workspace has none running.
            (Call::Provision, outcome) if outcome.created() => {
                let live = running.entry(e.workspace_uid.clone()).or_default();
                for (running_provider, running_instance) in live.iter().filter(|r| **r != target) {
                    violations.push(Violation::MultipleLive {
                        seq: e.seq,
                        workspace_uid: e.workspace_uid.clone(),
                        provider: target.0.clone(),
                        instance: target.1.clone(),
                        running_provider: running_provider.clone(),
                        running_instance: running_instance.clone(),
                    });
                }
                live.insert(target.clone());
                owner.entry(target).or_insert_with(|| e.workspace_uid.clone());
            }
            (Call::Stop, outcome) => {
                let instance_owner = owner.get(&target).cloned();
                if let Some(o) = &instance_owner
                    && *o != e.workspace_uid
                {
                    violations.push(Violation::ForeignStop {
                        seq: e.seq,
                        provider: target.0.clone(),
                        instance: target.1.clone(),
                        workspace_uid: e.workspace_uid.clone(),
                        owner: o.clone(),
                    });
                }
                if *outcome != Outcome::Stopped {
                    continue;
                }
                if let Some(&(first_seq, first_epoch)) = stopped.get(&target) {
                    violations.push(Violation::RepeatedStop {
                        seq: e.seq,
                        provider: target.0.clone(),
                        instance: target.1.clone(),
                        first_seq,
                    });
                    if first_epoch != e.epoch {
                        violations.push(Violation::StoppedUnderTwoEpochs {
                            seq: e.seq,
                            provider: target.0.clone(),
                            instance: target.1.clone(),
                            epoch: e.epoch,
                            first_seq,
                            first_epoch,
                        });
                    }
                } else {
                    stopped.insert(target.clone(), (e.seq, e.epoch));
                }
                let ws = instance_owner.unwrap_or_else(|| e.workspace_uid.clone());
                if let Some(live) = running.get_mut(&ws) {
                    live.remove(&target);
                }
            }
            _ => {}
        }
    }
    violations
}

/// Checks invariant 6: the Running instances of `clouds` are exactly `named`, the
/// (provider, instance id) pairs that workspace statuses name. Empty means clean.
pub fn check_live(clouds: &Clouds, named: &[(String, String)]) -> Vec<Violation> {
    check_live_instances(&clouds.live_instances(), named)
}

/// [`check_live`] over Running instances gathered elsewhere, e.g. from several provider-sim
/// processes.
pub fn check_live_instances(live: &[LiveInstance], named: &[(String, String)]) -> Vec<Violation> {
    let named: BTreeSet<(&str, &str)> = named.iter().map(|(p, i)| (p.as_str(), i.as_str())).collect();
    let live_refs: BTreeSet<(&str, &str)> = live.iter().map(|l| (l.provider.as_str(), l.id.as_str())).collect();

    let leaked =
        live.iter().filter(|l| !named.contains(&(l.provider.as_str(), l.id.as_str()))).map(|l| Violation::Leaked {
            provider: l.provider.clone(),
            instance: l.id.clone(),
            workspace_uid: l.workspace_uid.clone(),
        });
    let not_live = named
        .iter()
        .filter(|r| !live_refs.contains(*r))
        .map(|(p, i)| Violation::NotLive { provider: (*p).to_owned(), instance: (*i).to_owned() });
    leaked.chain(not_live).collect()
}
