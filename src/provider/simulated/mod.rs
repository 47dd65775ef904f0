//! The in-process simulated cloud: instances, per-workspace fencing, injectable faults and a
//! ledger of every call. Drives the demo, the benchmarks and the fault-injection tests; the
//! checkers in [`invariants`] verify DESIGN.md §3 against its ledger.

pub mod invariants;

pub use invariants::{Violation, check_ledger, check_live, check_live_instances, merge_ledgers};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::trace;

use super::http::wire;
use super::{
    CallContext, Driver, DriverError, InstanceInfo, InstancePage, InstanceState, ListedInstance, PAGE_TOKEN_MAX,
    Provision, clamp_limit,
};
use crate::api::SimulatedSettings;

/// Locks `m`, recovering from poisoning: the guarded state is updated in single steps that
/// cannot be left half-done by a panic elsewhere, so it stays consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Faults to inject into one simulated cloud. Counters are consumed one per matching call.
/// `hang` and `refuse_all` model a provider the call never reaches: such calls do not advance
/// the fence. Every other fault strikes after the call passed the fence, so a failed call still
/// advanced it (ledgered as [`Outcome::FailedAfterFence`]).
/// Also the JSON body of provider-sim's `PUT /v1/admin/faults`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Faults {
    /// Added to the latency of every call.
    #[serde(rename = "extraLatencyMs", with = "millis")]
    pub extra_latency: Duration,
    /// The next N provisions fail with `Transient`, without effect.
    pub fail_provision: u32,
    /// The next N stops fail with `Transient`, without effect.
    pub fail_stop: u32,
    /// The next N lookups fail with `Transient`, without effect.
    pub fail_lookup: u32,
    /// Every provision fails with `Transient`, without effect.
    pub fail_provision_always: bool,
    /// Every stop fails with `Transient`, without effect.
    pub fail_stop_always: bool,
    /// The next N accepted provisions take effect, then answer `Transient("response lost")`.
    pub drop_provision_response: u32,
    /// The next N accepted stops take effect, then answer `Transient("response lost")`.
    pub drop_stop_response: u32,
    /// Calls never return and have no effect (the caller's timeout must fire).
    pub hang: bool,
    /// Every call fails with `Transient`, without effect: the provider is down. provider-sim
    /// answers 503 to everything but its admin endpoints.
    pub refuse_all: bool,
    /// Probability (0.0–1.0) that a provision fails with `Transient`, without effect.
    pub provision_error_rate: f64,
    /// Probability (0.0–1.0) that a stop fails with `Transient`, without effect.
    pub stop_error_rate: f64,
}

/// `Duration` as whole milliseconds, so fault JSON is easy to write by hand.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// The kind of a ledgered call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Call {
    Provision,
    Stop,
    Lookup,
    /// An explicit fence raise: no effect but on the fence.
    Fence,
}

impl Call {
    /// Whether the call is judged against the workspace's fence, and advances it once admitted:
    /// every per-workspace call, read or write.
    pub fn is_fenced(self) -> bool {
        matches!(self, Call::Provision | Call::Stop | Call::Lookup | Call::Fence)
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Call::Provision => "provision",
            Call::Stop => "stop",
            Call::Lookup => "lookup",
            Call::Fence => "fence",
        })
    }
}

/// What a ledgered call did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// provision: a new Running instance was created.
    Created,
    /// provision: the instance already created under the key was returned (idempotent replay).
    Existing,
    /// stop: a Running instance was stopped.
    Stopped,
    /// stop: the instance was unknown or already stopped; nothing changed.
    AlreadyStopped,
    /// lookup: an instance exists under the key.
    Found,
    /// lookup: no instance exists under the key.
    NotFound,
    /// Refused: the provider has seen a newer epoch for the workspace. No effect.
    Fenced { newest: i64 },
    /// An injected fault before the fence (the provider was unreachable, or its journal is
    /// broken): the call had no effect at all, not even on the fence.
    Failed(String),
    /// An injected fault after the call passed the fence: the fence advanced, nothing else.
    FailedAfterFence(String),
    /// fence: the fence is now at the call's epoch (it was at most that).
    FenceRaised,
    /// Refused as invalid (e.g. the target belongs to another workspace). No effect.
    Rejected(String),
    /// provision: took effect (`created` says whether a new instance was made), then the answer
    /// was dropped.
    CommittedResponseLost { created: bool },
    /// The call was swallowed by an injected hang: no effect and no answer, ever.
    Hung,
}

impl Outcome {
    /// Whether the call got past the fence (and so was judged against, and advanced, it).
    pub fn passed_fence(&self) -> bool {
        matches!(
            self,
            Outcome::Created
                | Outcome::Existing
                | Outcome::Stopped
                | Outcome::AlreadyStopped
                | Outcome::Found
                | Outcome::NotFound
                | Outcome::FailedAfterFence(_)
                | Outcome::FenceRaised
                | Outcome::Rejected(_)
                | Outcome::CommittedResponseLost { .. }
        )
    }

    /// Whether the call created a new instance.
    pub fn created(&self) -> bool {
        matches!(self, Outcome::Created | Outcome::CommittedResponseLost { created: true })
    }
}

/// One call as the simulated cloud saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    /// Global across all providers of one [`Clouds`]: seq order is the order effects happened in.
    pub seq: u64,
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
    pub provider: String,
    pub caller: String,
    pub operation_id: String,
    /// The cluster the call came from ("" in ledgers written before clusters were recorded).
    #[serde(default)]
    pub cluster: String,
    pub call: Call,
    pub workspace_uid: String,
    pub namespace: String,
    pub name: String,
    pub epoch: i64,
    /// The provision or lookup key; for a stop, the key of the target if the cloud knows it.
    pub key: Option<String>,
    /// The instance created, returned, found or targeted, if any.
    pub instance: Option<String>,
    pub outcome: Outcome,
}

/// A ledger time as RFC 3339 in UTC, to the nanosecond (`2026-12-06T20:18:36.752881Z`), which
/// people and tools read. Journals written before stored serde's `{secs_since_epoch,
/// nanos_since_epoch}`; those still read.
mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer, de, ser};

    pub fn serialize<S: Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let at = jiff::Timestamp::try_from(*at).map_err(ser::Error::custom)?;
        s.collect_str(&at)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Rfc3339(String),
        SinceEpoch(SystemTime),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        match Written::deserialize(d)? {
            Written::Rfc3339(text) => text
                .parse::<jiff::Timestamp>()
                .map(SystemTime::from)
                .map_err(|e| de::Error::custom(format!("{text:?}: {e}"))),
            Written::SinceEpoch(at) => Ok(at),
        }
    }
}

/// Where a durable cloud writes every ledger entry before the call answers (provider-sim's
/// fsync'd journal). The ledger is the cloud's only effect log: replaying it with
/// [`Clouds::restore`] rebuilds instances, keys and fences.
pub trait LedgerSink: Send + Sync + fmt::Debug {
    fn append(&self, entry: &LedgerEntry) -> std::io::Result<()>;
}

/// The ledger shared by every cloud of one [`Clouds`].
#[derive(Debug, Default)]
struct Ledger {
    entries: Mutex<Vec<LedgerEntry>>,
    /// Entries ledgered so far (the next one's seq is one more), kept or not.
    count: Mutex<u64>,
    /// Whether entries are kept in memory (see [`Clouds::unledgered`]).
    forget: bool,
    sink: Mutex<Option<Arc<dyn LedgerSink>>>,
    /// Set once the sink fails: from then on the cloud refuses every call, since effects it
    /// makes could no longer survive a restart.
    broken: Mutex<Option<String>>,
}

impl Ledger {
    /// Appends `entry` under the next sequence number (1, 2, ...), durably if there is a sink.
    /// An entry the sink refused is still kept in memory, so the process stays consistent
    /// with itself; the error says the effect may be lost on restart.
    fn push(&self, entry: impl FnOnce(u64) -> LedgerEntry) -> Result<(), String> {
        let mut entries = lock(&self.entries);
        let seq = {
            let mut count = lock(&self.count);
            *count = count.saturating_add(1);
            *count
        };
        let sink = lock(&self.sink).clone();
        if self.forget && sink.is_none() {
            return Ok(());
        }
        let entry = entry(seq);
        trace!(seq = entry.seq, provider = %entry.provider, call = %entry.call, outcome = ?entry.outcome, "simulated call");
        let mut result = Ok(());
        if let Some(sink) = sink.filter(|_| self.broken().is_none())
            && let Err(e) = sink.append(&entry)
        {
            let msg = format!("ledger journal write failed: {e}");
            *lock(&self.broken) = Some(msg.clone());
            result = Err(msg);
        }
        if !self.forget {
            entries.push(entry);
        }
        result
    }

    fn broken(&self) -> Option<String> {
        lock(&self.broken).clone()
    }

    fn snapshot(&self) -> Vec<LedgerEntry> {
        lock(&self.entries).clone()
    }
}

/// An instance of a simulated cloud: as the protocol describes it, and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    #[serde(flatten)]
    pub wire: wire::Instance,
    /// The workspace's namespace and name, as the creating call named them.
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    /// The cluster that created the instance ("" for instances restored from older ledgers).
    #[serde(default)]
    pub cluster: String,
}

impl Instance {
    /// The instance as a [`LiveInstance`] of `provider`, if it is Running.
    pub fn live_on(self, provider: &str) -> Option<LiveInstance> {
        let i = self.wire;
        (i.state == InstanceState::Running).then(|| LiveInstance {
            provider: provider.to_owned(),
            id: i.id,
            key: i.key,
            workspace_uid: i.workspace_uid,
        })
    }
}

/// A Running instance of some provider.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveInstance {
    pub provider: String,
    pub id: String,
    pub key: String,
    pub workspace_uid: String,
}

/// An instance as a cloud keeps it: the id and key shared with the key index, the namespace and
/// cluster shared by all instances that have them. A benchmark's controller process holds tens
/// of thousands of these in its in-process clouds.
#[derive(Debug)]
struct Stored {
    key: Arc<str>,
    workspace_uid: Arc<str>,
    namespace: Arc<str>,
    name: Box<str>,
    cluster: Arc<str>,
    state: InstanceState,
}

impl Stored {
    fn info(&self, id: &str) -> InstanceInfo {
        InstanceInfo { id: id.to_owned(), key: self.key.to_string(), state: self.state }
    }

    fn wire(&self, id: &str) -> wire::Instance {
        wire::Instance {
            id: id.to_owned(),
            key: self.key.to_string(),
            workspace_uid: self.workspace_uid.to_string(),
            state: self.state,
        }
    }

    fn instance(&self, id: &str) -> Instance {
        Instance {
            wire: self.wire(id),
            namespace: self.namespace.to_string(),
            name: self.name.to_string(),
            cluster: self.cluster.to_string(),
        }
    }

    fn listed(&self, id: &str, fence: Option<i64>) -> ListedInstance {
        ListedInstance {
            id: id.to_owned(),
            key: self.key.to_string(),
            workspace_uid: self.workspace_uid.to_string(),
            namespace: self.namespace.to_string(),
            name: self.name.to_string(),
            state: self.state,
            fence,
        }
    }
}

#[derive(Debug, Default)]
struct CloudState {
    /// By id.
    instances: BTreeMap<Arc<str>, Stored>,
    /// Key to id.
    by_key: HashMap<Arc<str>, Arc<str>>,
    /// Namespaces and clusters, one copy each.
    shared: HashSet<Arc<str>>,
    /// Highest epoch admitted per workspace_uid: the fence.
    fences: HashMap<Arc<str>, i64>,
    faults: Faults,
    next_id: u64,
}

impl CloudState {
    fn insert(&mut self, inst: Instance) {
        let (id, key): (Arc<str>, Arc<str>) = (inst.wire.id.into(), inst.wire.key.into());
        let stored = Stored {
            key: key.clone(),
            workspace_uid: self.uid(&inst.wire.workspace_uid),
            namespace: self.share(&inst.namespace),
            name: inst.name.into(),
            cluster: self.share(&inst.cluster),
            state: inst.wire.state,
        };
        self.by_key.insert(key, id.clone());
        self.instances.insert(id, stored);
    }

    /// The workspace uid as the fence map holds it (a created instance passed the fence).
    fn uid(&self, uid: &str) -> Arc<str> {
        self.fences.get_key_value(uid).map_or_else(|| uid.into(), |(shared, _)| shared.clone())
    }

    fn share(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.shared.get(s) {
            return shared.clone();
        }
        let shared: Arc<str> = s.into();
        self.shared.insert(shared.clone());
        shared
    }

    /// The instance created under `key`, with its id.
    fn by_key(&self, key: &str) -> Option<(&str, &Stored)> {
        let id = self.by_key.get(key)?;
        self.instances.get_key_value(&**id).map(|(id, stored)| (&**id, stored))
    }

    /// Admits `call` if its epoch is not older than the newest seen for its workspace, and makes
    /// it the newest; otherwise returns the newest.
    fn admit(&mut self, call: &CallContext) -> Result<(), i64> {
        match self.fences.get(call.workspace_uid.as_str()) {
            Some(&newest) if call.epoch < newest => Err(newest),
            _ => {
                match self.fences.get_mut(call.workspace_uid.as_str()) {
                    Some(newest) => *newest = call.epoch,
                    None => {
                        self.fences.insert(call.workspace_uid.as_str().into(), call.epoch);
                    }
                }
                Ok(())
            }
        }
    }
}

/// What a call answers once its latency has passed.
#[derive(Debug)]
pub enum Answer<T> {
    Reply(Result<T, DriverError>),
    /// The call took effect but its answer is lost (injected): the caller must not learn the
    /// result. In process this is `Transient("response lost")`; provider-sim drops the connection.
    Lost,
    /// No answer, ever (injected).
    Hang,
}

impl<T> Answer<T> {
    /// Maps a successful reply.
    pub fn map_reply<U>(self, f: impl FnOnce(T) -> U) -> Answer<U> {
        match self {
            Answer::Reply(r) => Answer::Reply(r.map(f)),
            Answer::Lost => Answer::Lost,
            Answer::Hang => Answer::Hang,
        }
    }
}

/// A successful provision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provisioned {
    pub instance: InstanceInfo,
    /// Whether this call created the instance (false: it already existed under the key).
    pub created: bool,
}

/// Ledgers the outcome of the call in hand, naming the instance it concerns (if any). Fails
/// only if the entry could not be made durable.
type Recorder<'a> = dyn Fn(&CloudState, Option<&str>, Outcome) -> Result<(), String> + 'a;

/// An injected fault that preempts a call.
enum Injected {
    Fail(String),
    Hang,
}

/// The answer to a call that took effect: `value`, unless its ledger entry could not be made
/// durable.
fn answered<T>(recorded: Result<(), String>, value: T) -> Answer<T> {
    Answer::Reply(recorded.map(|()| value).map_err(DriverError::Transient))
}

/// The answer to a call that passed the fence, then failed by injection. If even its ledger
/// entry could not be made durable, that is the error to report.
fn failed_after_fence<T>(recorded: Result<(), String>, msg: String) -> Answer<T> {
    Answer::Reply(Err(DriverError::Transient(recorded.err().unwrap_or(msg))))
}

/// One simulated provider.
#[derive(Debug)]
pub struct Cloud {
    provider: String,
    ledger: Arc<Ledger>,
    state: Mutex<CloudState>,
}

impl Cloud {
    fn new(provider: &str, ledger: Arc<Ledger>) -> Self {
        Self { provider: provider.to_owned(), ledger, state: Mutex::new(CloudState::default()) }
    }

    /// The provider name this cloud was created for.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    pub fn set_faults(&self, faults: Faults) {
        lock(&self.state).faults = faults;
    }

    /// The current faults, with counters as far as they have been consumed.
    pub fn faults(&self) -> Faults {
        lock(&self.state).faults.clone()
    }

    /// Every instance ever created, by id.
    pub fn instances(&self) -> Vec<Instance> {
        lock(&self.state).instances.iter().map(|(id, i)| i.instance(id)).collect()
    }

    pub fn instance(&self, id: &str) -> Option<Instance> {
        lock(&self.state).instances.get(id).map(|i| i.instance(id))
    }

    /// Instance `id` as the protocol describes it (without where it came from).
    pub fn wire(&self, id: &str) -> Option<wire::Instance> {
        lock(&self.state).instances.get(id).map(|i| i.wire(id))
    }

    /// The fence of `workspace_uid`: the newest epoch admitted for it, if any call was.
    pub fn newest_epoch(&self, workspace_uid: &str) -> Option<i64> {
        lock(&self.state).fences.get(workspace_uid).copied()
    }

    /// Waits out a call's latency: `base` plus the injected extra. Runs before the effect, so a
    /// caller that times out may or may not see its call take effect — as with a real cloud.
    pub async fn latency(&self, base: Duration) {
        let delay = base + self.faults().extra_latency;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// The fault, if any, that keeps a call from reaching the provider at all (down, hanging,
    /// or unable to make anything durable): such a call does not reach the fence either.
    fn unreachable(&self, st: &CloudState) -> Option<Injected> {
        if let Some(broken) = self.ledger.broken() {
            return Some(Injected::Fail(broken));
        }
        if st.faults.refuse_all {
            return Some(Injected::Fail("provider refuses all calls".to_owned()));
        }
        st.faults.hang.then_some(Injected::Hang)
    }

    /// The injected failure, if any, of an admitted `call` (after the fence). Consumes counters.
    fn injected(&self, st: &mut CloudState, call: Call) -> Option<String> {
        let f = &mut st.faults;
        let (always, next_n, rate, msg) = match call {
            Call::Provision => {
                (f.fail_provision_always, &mut f.fail_provision, f.provision_error_rate, "injected provision failure")
            }
            Call::Stop => (f.fail_stop_always, &mut f.fail_stop, f.stop_error_rate, "injected stop failure"),
            Call::Lookup => (false, &mut f.fail_lookup, 0.0, "injected lookup failure"),
            Call::Fence => return None,
        };
        if always || *next_n > 0 {
            *next_n = next_n.saturating_sub(u32::from(!always));
            return Some(msg.to_owned());
        }
        (rate > 0.0 && rand::random::<f64>() < rate).then(|| format!("{msg} (error rate {rate})"))
    }

    /// Ledgers a preempted call and answers it.
    fn preempted<T>(
        &self,
        st: &CloudState,
        injected: Injected,
        ledger: impl FnOnce(&CloudState, Outcome),
    ) -> Answer<T> {
        match injected {
            Injected::Hang => {
                ledger(st, Outcome::Hung);
                Answer::Hang
            }
            Injected::Fail(msg) => {
                ledger(st, Outcome::Failed(msg.clone()));
                Answer::Reply(Err(DriverError::Transient(msg)))
            }
        }
    }

    /// Where a ledgered call can end before its effect, in order: the provider unreachable, the
    /// fence refusing the epoch, an injected failure after the fence (none for a fence call).
    /// `Err` is the call's answer, already ledgered through `rec`.
    fn gate<T>(
        &self,
        st: &mut CloudState,
        ctx: &CallContext,
        call: Call,
        rec: impl Fn(&CloudState, Outcome) -> Result<(), String>,
    ) -> Result<(), Answer<T>> {
        if let Some(injected) = self.unreachable(st) {
            return Err(self.preempted(st, injected, |st, outcome| {
                let _ = rec(st, outcome);
            }));
        }
        if let Err(newest) = st.admit(ctx) {
            let _ = rec(st, Outcome::Fenced { newest });
            return Err(Answer::Reply(Err(DriverError::StaleEpoch { epoch: ctx.epoch, newest })));
        }
        if let Some(msg) = self.injected(st, call) {
            return Err(failed_after_fence(rec(st, Outcome::FailedAfterFence(msg.clone())), msg));
        }
        Ok(())
    }

    /// Ledgers a call. Takes the state guard as proof it is held, so the sequence number is
    /// assigned in the same critical section as the effect. Fails only if the entry could not
    /// be made durable.
    fn record(
        &self,
        _held: &CloudState,
        ctx: &CallContext,
        call: Call,
        key: Option<&str>,
        instance: Option<&str>,
        outcome: Outcome,
    ) -> Result<(), String> {
        self.ledger.push(|seq| LedgerEntry {
            seq,
            at: SystemTime::now(),
            provider: self.provider.clone(),
            caller: ctx.caller.clone(),
            operation_id: ctx.operation_id.clone(),
            cluster: ctx.cluster.clone(),
            call,
            workspace_uid: ctx.workspace_uid.clone(),
            namespace: ctx.namespace.clone(),
            name: ctx.name.clone(),
            epoch: ctx.epoch,
            key: key.map(str::to_owned),
            instance: instance.map(str::to_owned),
            outcome,
        })
    }

    /// Runs a ledgered `call` about `key` (None for a fence) under the state lock: first the
    /// [`gate`](Self::gate), whose refusals are ledgered naming no instance, then `body`, with
    /// the state and the call's [`Recorder`]. (A stop names its instance even at the gate, and
    /// finds its key under the lock, so it opens on its own.)
    fn ledgered<T>(
        &self,
        ctx: &CallContext,
        call: Call,
        key: Option<&str>,
        body: impl FnOnce(&mut CloudState, &Recorder<'_>) -> Answer<T>,
    ) -> Answer<T> {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let rec = |st: &CloudState, instance: Option<&str>, outcome| self.record(st, ctx, call, key, instance, outcome);
        if let Err(answer) = self.gate(st, ctx, call, |st, outcome| rec(st, None, outcome)) {
            return answer;
        }
        body(st, &rec)
    }

    /// Provisions under `key` now (no latency): the engine behind [`SimulatedDriver::provision`]
    /// and provider-sim's create.
    pub fn provision_now(&self, ctx: &CallContext, key: &str) -> Answer<Provisioned> {
        self.ledgered(ctx, Call::Provision, Some(key), |st, rec| {
            let existing = st.by_key(key).map(|(id, inst)| (inst.workspace_uid.to_string(), inst.info(id)));
            let (info, created) = match existing {
                Some((owner, info)) if owner != ctx.workspace_uid => {
                    let msg = format!("key {key} belongs to workspace {owner}");
                    let _ = rec(st, Some(&info.id), Outcome::Rejected(msg.clone()));
                    return Answer::Reply(Err(DriverError::Rejected(msg)));
                }
                Some((_, info)) => (info, false),
                None => {
                    st.next_id += 1;
                    let inst = Instance {
                        wire: wire::Instance {
                            id: format!("i-{}-{}", self.provider, st.next_id),
                            key: key.to_owned(),
                            workspace_uid: ctx.workspace_uid.clone(),
                            state: InstanceState::Running,
                        },
                        namespace: ctx.namespace.clone(),
                        name: ctx.name.clone(),
                        cluster: ctx.cluster.clone(),
                    };
                    let info = inst.wire.info();
                    st.insert(inst);
                    (info, true)
                }
            };
            if st.faults.drop_provision_response > 0 {
                st.faults.drop_provision_response -= 1;
                let _ = rec(st, Some(&info.id), Outcome::CommittedResponseLost { created });
                return Answer::Lost;
            }
            let outcome = if created { Outcome::Created } else { Outcome::Existing };
            answered(rec(st, Some(&info.id), outcome), Provisioned { instance: info, created })
        })
    }

    /// Stops `id` now (no latency): the engine behind [`SimulatedDriver::stop`] and
    /// provider-sim's stop.
    pub fn stop_now(&self, ctx: &CallContext, id: &str) -> Answer<()> {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let key = st.instances.get(id).map(|i| i.key.to_string());
        let rec = |st: &CloudState, outcome| self.record(st, ctx, Call::Stop, key.as_deref(), Some(id), outcome);
        if let Err(answer) = self.gate(st, ctx, Call::Stop, rec) {
            return answer;
        }
        let outcome = match st.instances.get_mut(id) {
            // A stop must never reach another workspace's instance, whatever the caller thinks.
            Some(inst) if *inst.workspace_uid != *ctx.workspace_uid => {
                let msg = format!("instance {id} belongs to workspace {}", inst.workspace_uid);
                let _ = rec(st, Outcome::Rejected(msg.clone()));
                return Answer::Reply(Err(DriverError::Rejected(msg)));
            }
            Some(inst) if inst.state == InstanceState::Running => {
                inst.state = InstanceState::Stopped;
                Outcome::Stopped
            }
            Some(_) | None => Outcome::AlreadyStopped,
        };
        if st.faults.drop_stop_response > 0 {
            st.faults.drop_stop_response -= 1;
            let _ = rec(st, outcome);
            return Answer::Lost;
        }
        answered(rec(st, outcome), ())
    }

    /// Looks up the instance created under `key` now (no latency), ledgered.
    pub fn lookup_now(&self, ctx: &CallContext, key: &str) -> Answer<Option<InstanceInfo>> {
        self.ledgered(ctx, Call::Lookup, Some(key), |st, rec| {
            let found = st.by_key(key).map(|(id, inst)| inst.info(id));
            let (instance, outcome) = match &found {
                Some(info) => (Some(info.id.as_str()), Outcome::Found),
                None => (None, Outcome::NotFound),
            };
            answered(rec(st, instance, outcome), found)
        })
    }

    /// Raises the fence of `ctx.workspace_uid` to `ctx.epoch` now (no latency), ledgered.
    pub fn fence_now(&self, ctx: &CallContext) -> Answer<()> {
        self.ledgered(ctx, Call::Fence, None, |st, rec| answered(rec(st, None, Outcome::FenceRaised), ()))
    }

    /// One page of the instances created by `cluster` (running or stopped), ordered by id;
    /// `page` is the id of the last instance of the previous page. Provider-wide and read-only:
    /// not ledgered, fences nothing.
    pub fn list_now(&self, cluster: &str, page: Option<&str>, limit: u32) -> Answer<InstancePage> {
        let st = lock(&self.state);
        if let Some(injected) = self.unreachable(&st) {
            return match injected {
                Injected::Hang => Answer::Hang,
                Injected::Fail(msg) => Answer::Reply(Err(DriverError::Transient(msg))),
            };
        }
        if page.is_some_and(|p| p.is_empty() || p.len() > PAGE_TOKEN_MAX) {
            return Answer::Reply(Err(DriverError::Rejected(format!(
                "page token must be 1-{PAGE_TOKEN_MAX} characters"
            ))));
        }
        let limit = clamp_limit(limit) as usize;
        let after = match page {
            Some(p) => std::ops::Bound::Excluded(p),
            None => std::ops::Bound::Unbounded,
        };
        let mut matching =
            st.instances.range::<str, _>((after, std::ops::Bound::Unbounded)).filter(|(_, i)| *i.cluster == *cluster);
        let items: Vec<ListedInstance> = matching
            .by_ref()
            .take(limit)
            .map(|(id, i)| i.listed(id, st.fences.get(&*i.workspace_uid).copied()))
            .collect();
        let next = match (items.last(), matching.next()) {
            (Some(last), Some(_)) => Some(last.id.clone()),
            _ => None,
        };
        Answer::Reply(Ok(InstancePage { items, next }))
    }

    /// Re-applies the effect of one ledgered call: how [`Clouds::restore`] rebuilds state.
    /// Mirrors the live paths above: whatever passed the fence advanced it (failed or not),
    /// whatever created an instance created it, an effective stop stopped it.
    fn replay(&self, e: &LedgerEntry) {
        let mut st = lock(&self.state);
        if e.call.is_fenced() && e.outcome.passed_fence() {
            let newest = st.fences.entry(e.workspace_uid.as_str().into()).or_insert(e.epoch);
            *newest = (*newest).max(e.epoch);
        }
        match (e.call, &e.outcome, &e.key, &e.instance) {
            (Call::Provision, outcome, Some(key), Some(id)) if outcome.created() => {
                st.next_id += 1;
                st.insert(Instance {
                    wire: wire::Instance {
                        id: id.clone(),
                        key: key.clone(),
                        workspace_uid: e.workspace_uid.clone(),
                        state: InstanceState::Running,
                    },
                    namespace: e.namespace.clone(),
                    name: e.name.clone(),
                    cluster: e.cluster.clone(),
                });
            }
            (Call::Stop, Outcome::Stopped, _, Some(id)) => {
                if let Some(inst) = st.instances.get_mut(id.as_str()) {
                    inst.state = InstanceState::Stopped;
                }
            }
            _ => {}
        }
    }
}

#[derive(Debug, Default)]
struct CloudsInner {
    clouds: Mutex<BTreeMap<String, Arc<Cloud>>>,
    ledger: Arc<Ledger>,
}

/// The simulated clouds of one process, by provider name, sharing one totally ordered ledger.
/// Cloning is cheap and shares the clouds.
#[derive(Clone, Debug, Default)]
pub struct Clouds {
    inner: Arc<CloudsInner>,
}

impl Clouds {
    pub fn new() -> Self {
        Self::default()
    }

    /// Clouds that keep no ledger in memory: for a controller process whose simulated providers
    /// nobody inspects (a demo, a benchmark), where a ledger of every call would grow without
    /// bound. Instances, keys and fences behave the same; `ledger()` is empty.
    pub fn unledgered() -> Self {
        let ledger = Ledger { forget: true, ..Ledger::default() };
        Self { inner: Arc::new(CloudsInner { ledger: Arc::new(ledger), ..CloudsInner::default() }) }
    }

    /// Clouds rebuilt from a ledger they wrote (in seq order): instances, keys, fences and the
    /// ledger itself, as they were. Faults are not part of the ledger and start cleared.
    pub fn restore(entries: Vec<LedgerEntry>) -> Self {
        let clouds = Self::new();
        for e in &entries {
            clouds.cloud(&e.provider).replay(e);
        }
        *lock(&clouds.inner.ledger.count) = entries.len() as u64;
        *lock(&clouds.inner.ledger.entries) = entries;
        clouds
    }

    /// Makes every call durable: from now on each ledger entry goes to `sink` before the call
    /// answers. If the sink ever fails, every later call is refused.
    pub fn set_sink(&self, sink: Arc<dyn LedgerSink>) {
        *lock(&self.inner.ledger.sink) = Some(sink);
    }

    /// The cloud of `provider`, created empty on first use.
    pub fn cloud(&self, provider: &str) -> Arc<Cloud> {
        let mut clouds = lock(&self.inner.clouds);
        clouds
            .entry(provider.to_owned())
            .or_insert_with(|| Arc::new(Cloud::new(provider, self.inner.ledger.clone())))
            .clone()
    }

    /// Every call to every cloud so far, in seq order.
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        self.inner.ledger.snapshot()
    }

    /// The Running instances of every cloud, ordered by provider then id.
    pub fn live_instances(&self) -> Vec<LiveInstance> {
        // Snapshot the registry first so no cloud lock is taken under the registry lock.
        let clouds: Vec<Arc<Cloud>> = lock(&self.inner.clouds).values().cloned().collect();
        clouds
            .iter()
            .flat_map(|cloud| cloud.instances().into_iter().filter_map(|i| i.live_on(&cloud.provider)))
            .collect()
    }
}

/// The `simulated` driver: one cloud, with the latencies of its ComputeProvider.
pub struct SimulatedDriver {
    cloud: Arc<Cloud>,
    settings: SimulatedSettings,
}

impl SimulatedDriver {
    pub fn new(cloud: Arc<Cloud>, settings: SimulatedSettings) -> Self {
        Self { cloud, settings }
    }

    async fn latency(&self, base_ms: u64) {
        self.cloud.latency(Duration::from_millis(base_ms)).await;
    }

    async fn answer<T>(answer: Answer<T>) -> Result<T, DriverError> {
        match answer {
            Answer::Reply(r) => r,
            Answer::Lost => Err(DriverError::Transient("response lost".to_owned())),
            Answer::Hang => std::future::pending().await,
        }
    }
}

#[async_trait]
impl Driver for SimulatedDriver {
    async fn provision(&self, req: Provision<'_>) -> Result<InstanceInfo, DriverError> {
        self.latency(self.settings.provision_latency_ms).await;
        Self::answer(self.cloud.provision_now(req.call, req.key)).await.map(|p| p.instance)
    }

    async fn stop(&self, call: &CallContext, instance_id: &str) -> Result<(), DriverError> {
        self.latency(self.settings.stop_latency_ms).await;
        Self::answer(self.cloud.stop_now(call, instance_id)).await
    }

    async fn lookup(&self, call: &CallContext, key: &str) -> Result<Option<InstanceInfo>, DriverError> {
        self.latency(0).await;
        Self::answer(self.cloud.lookup_now(call, key)).await
    }

    async fn fence(&self, call: &CallContext) -> Result<(), DriverError> {
        self.latency(0).await;
        Self::answer(self.cloud.fence_now(call)).await
    }

    async fn list(&self, cluster: &str, page: Option<&str>, limit: u32) -> Result<InstancePage, DriverError> {
        self.latency(0).await;
        Self::answer(self.cloud.list_now(cluster, page, limit)).await
    }
}

#[cfg(test)]
mod tests;
