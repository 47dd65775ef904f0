//! The switch protocol as an explicit-state model (DESIGN.md §2), for stateright.
//!
//! The controllers' decisions are the real `decide`; every status they write is the output of
//! the real `status::*` transitions. What is modelled around them is the effects, as
//! src/controller/protocol.rs and src/controller/writes.rs carry them out: an API server with
//! resourceVersion compare-and-swap, status writes whose answer is lost after they landed, watch
//! caches that lag, providers with per-workspace fences, provider calls as messages delivered
//! later (or never answered), crashes, a user, inventory reconciliation and time.

// The scopes use only some initial states, and the enabled-action loops read as the protocol's cases.
#![allow(dead_code, clippy::collapsible_if, clippy::needless_range_loop)]

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;
use stateright::{Model, Property};
use switchyard::api::conditions as cond;
use switchyard::api::provision_key;
use switchyard::api::{FINALIZER, Instance, OperationKind, Workspace, WorkspaceStatus};
use switchyard::controller::decide::{Facts, Next, ProviderState, decide};
use switchyard::controller::status;
use switchyard::runtime::Backoff;

/// The one workspace's uid.
pub const UID: &str = "uid-1";
/// Provider names, by index.
pub const PROVIDERS: [&str; 3] = ["a", "b", "c"];
/// The claim lease; a tick is half of it, so a claim not renewed for two ticks is stale.
const LEASE: Duration = Duration::from_secs(60);
pub const TICK_SECS: i64 = 30;
/// Backoff of a failed step (provision, fence) and of a stop past its budget: one tick, capped.
const STEP_BACKOFF: Backoff = Backoff::new(Duration::from_secs(30), Duration::from_secs(120));
const STOP_RETRY: Backoff = Backoff::new(Duration::from_secs(30), Duration::from_secs(120));
/// Attempts of a step before it reads Stalled (the controller's default).
const STALL_AFTER: i32 = 3;
/// Re-applications of a write under our claim after conflicts (writes.rs).
const MAX_HELD_RETRIES: usize = 5;
/// Passes an unaccounted instance must survive before the inventory stops it (the grace).
const GRACE_PASSES: u8 = 2;

/// Which rules the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rules {
    /// The rules as shipped.
    Shipped,
    /// The rules before fencing: a provider's fence moves only with successful provisions and
    /// stops, no explicit fence call (`unfenced` is stripped from every status written), and
    /// no inventory reconciliation.
    PreFencing,
    /// A mutation: a controller that loses a claim's compare-and-swap carries on as though it
    /// had won.
    LoserContinues,
    /// The rules before `Floor::unsure`: a failed step, or a write found lost,
    /// leaves nothing behind, so the next reconcile acts on a cached copy as new as the last
    /// write whose answer came back, though a later write of ours may have landed unanswered.
    PreUnsure,
    /// The first form of that fix: `unsure` makes the next reconcile read afresh, but what it
    /// reads is not remembered, so a later reconcile may still act on a cached copy older than
    /// the read (as new as the last write whose answer came back).
    ReadNotRemembered,
}

/// How the workspace starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Initial {
    /// Just created: no status, no finalizer.
    Fresh,
    /// Running on provider `a` (epoch 1), at rest.
    RunningOnA,
}

/// The bounds that keep the state space finite.
#[derive(Clone, Debug)]
pub struct Scope {
    pub controllers: usize,
    pub providers: usize,
    /// How far (in versions) a watch cache may lag behind the API server.
    pub lag: u32,
    pub user_actions: u8,
    /// Which user actions are possible.
    pub user_switch: bool,
    pub user_running: bool,
    pub user_delete: bool,
    /// Provider faults: a failed call, an unreachable provider, a lost answer.
    pub faults: u8,
    /// Status writes (claim, takeover, write under a claim) that land but whose answer is lost,
    /// and perhaps the answer of the read after it too.
    pub lost_answers: u8,
    pub crashes: u8,
    pub ticks: u8,
    /// Stop attempts of one StopOld step (the controller's `stop_attempts`).
    pub stop_attempts: u8,
    pub initial: Initial,
    /// A safety net: states with more writes than this are not explored further.
    pub max_writes: u16,
    /// Convergence is checked from states whose user, fault and crash budgets are spent, by a
    /// fault-free run of at most this many steps (0: not checked).
    pub converge_within: u16,
}

pub struct SwitchModel {
    pub scope: Scope,
    pub rules: Rules,
}

// ---- state -------------------------------------------------------------------------------------

/// One version of the workspace as the API server held it.
#[derive(Clone, Debug, PartialEq)]
pub struct Obj {
    pub rv: u32,
    pub generation: i64,
    pub provider: &'static str,
    pub running: bool,
    pub deleting: bool,
    pub finalizer: bool,
    /// Deleted (the finalizer was removed while deleting).
    pub gone: bool,
    pub status: Option<WorkspaceStatus>,
}

impl Eq for Obj {}

impl Hash for Obj {
    fn hash<H: Hasher>(&self, h: &mut H) {
        (self.rv, self.generation, self.provider, self.running, self.deleting, self.finalizer, self.gone).hash(h);
        if let Some(s) = &self.status {
            hash_status(s, h);
        }
    }
}

/// Hashes the fields of a status that matter (equality still compares all of them).
fn hash_status<H: Hasher>(s: &WorkspaceStatus, h: &mut H) {
    (s.epoch, &s.active_provider, &s.unfenced).hash(h);
    if let Some(i) = &s.instance {
        (&i.id, &i.provider, &i.key).hash(h);
    }
    if let Some(o) = &s.operation {
        (&o.id, o.kind, o.step, &o.from, &o.to, &o.holder, o.epoch, o.attempts, &o.reach, &o.unfenced).hash(h);
        (o.renewed_at.0, o.retry_at.as_ref().map(|t| t.0)).hash(h);
    }
    for c in &s.conditions {
        (&c.type_, &c.status, &c.reason).hash(h);
    }
}

impl Obj {
    fn op(&self) -> Option<&switchyard::api::Operation> {
        self.status.as_ref().and_then(|s| s.operation.as_deref())
    }
}

/// A provider call in flight.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Msg {
    pub id: u16,
    /// The sender: controller index and generation (an older generation has crashed).
    pub ctrl: usize,
    pub incarnation: u8,
    pub provider: usize,
    pub epoch: i64,
    pub op: String,
    pub call: CallKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CallKind {
    Provision(String),
    Stop(String),
    Lookup(String),
    Fence,
}

/// A provider's answer, as the controller sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reply {
    /// Success; for provision and lookup, the instance (id, running).
    Ok(Option<(String, bool)>),
    /// A transient error (the call may or may not have taken effect).
    Failed(&'static str),
    /// Refused for a stale epoch.
    Stale,
}

/// What a controller does once the answer of its call is in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Job {
    Fence { ws: Arc<Obj>, rest: Vec<usize> },
    Stop { ws: Arc<Obj>, instance: String, attempt: u8 },
    Provision { ws: Arc<Obj>, provider: usize, key: String },
    ReleaseLookup { ws: Arc<Obj>, provider: usize, then: Then },
    ReleaseStop { ws: Arc<Obj>, then: Then },
    AbortLookup { ws: Arc<Obj>, instance: String },
}

/// The write that follows a release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Then {
    Retarget,
    Finish,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Work {
    /// Between reconciles.
    Idle,
    /// Mid-reconcile: decide again on this object (the one our last write returned).
    Ready(Arc<Obj>),
    /// Waiting for the answer of call `call`, made at tick `at`.
    Await { call: u16, at: u8, job: Job, reply: Option<Reply> },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ctrl {
    /// Bumped by a crash: the restarted controller has a fresh identity.
    pub incarnation: u8,
    /// The resourceVersion the watch cache shows.
    pub cache: u32,
    /// The resourceVersion of our last write (`Context::remember`).
    pub written: Option<u32>,
    /// A step of ours failed, or a write of ours was found lost: the next reconcile reads the
    /// object afresh (`Floor::unsure`).
    pub unsure: bool,
    /// Stops failed past their budget: (count, tick before which no stop is claimed).
    pub stop_failures: Option<(u8, u8)>,
    pub work: Work,
    /// Lost a claim in this reconcile: must make no call and no write.
    pub lost: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Inst {
    pub id: String,
    pub key: String,
    pub running: bool,
    /// Epoch of the call that stopped it.
    pub stopped_by: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Prov {
    /// The workspace's fence: the newest epoch admitted.
    pub fence: Option<i64>,
    /// The newest epoch of any call that passed the fence (the ledger's judge, invariant 3).
    pub judge: Option<i64>,
    pub insts: Vec<Inst>,
    pub next_id: u8,
    /// Instances the last inventory pass found unaccounted for.
    pub seen: Vec<String>,
    /// Inventory passes since the last call reached this provider (saturating).
    pub quiet: u8,
}

/// Broken invariants, recorded by the transition that broke them.
pub const LOSER_ACTED: u8 = 1;
pub const STALE_ACCEPTED: u8 = 2;
pub const STOPPED_TWICE: u8 = 4;
pub const KEY_REUSED: u8 = 8;
/// A call was delivered after a takeover of its sender's claim (a paused holder woke up).
pub const PAUSED_HOLDER_WOKE: u8 = 16;
/// A provider admitted a call under an operation the API server no longer holds.
pub const FINISHED_CALLED: u8 = 32;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub time: u8,
    /// The versions a cache may still show, oldest first; the last is the API server's.
    pub versions: Vec<Arc<Obj>>,
    pub ctrls: Vec<Ctrl>,
    pub provs: Vec<Prov>,
    pub net: Vec<Msg>,
    pub user_left: u8,
    pub faults_left: u8,
    pub lost_answers_left: u8,
    pub crashes_left: u8,
    /// The fault armed for the status write of the step being taken (`Action::Unanswered`);
    /// always `None` between transitions.
    pub armed: Option<WriteFault>,
    pub writes: u16,
    pub bad: u8,
    /// Events worth seeing happen (sanity of the model), as bits.
    pub seen: u8,
}

impl State {
    pub fn latest(&self) -> &Arc<Obj> {
        &self.versions[self.versions.len() - 1]
    }

    fn version(&self, rv: u32) -> Arc<Obj> {
        self.versions.iter().find(|v| v.rv == rv).unwrap_or_else(|| self.latest()).clone()
    }

    /// Running instances, as (provider index, instance).
    pub fn live(&self) -> Vec<(usize, &Inst)> {
        self.provs
            .iter()
            .enumerate()
            .flat_map(|(p, pr)| pr.insts.iter().filter(|i| i.running).map(move |i| (p, i)))
            .collect()
    }

    fn identity(&self, c: usize) -> String {
        format!("c{c}.{}", self.ctrls[c].incarnation)
    }
}

pub const SEEN_SWITCHED: u8 = 1;
pub const SEEN_TAKEOVER: u8 = 2;
pub const SEEN_FENCED_OFF: u8 = 4;
pub const SEEN_COLLECTED: u8 = 8;
pub const SEEN_DELETED: u8 = 16;
/// A controller found its own write, landed unanswered, to have ended its operation.
pub const SEEN_OWN_WRITE_LOST: u8 = 32;

// ---- actions -----------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    None,
    /// Fails after passing the fence (the fence moved, nothing else).
    AfterFence,
    /// The provider is unreachable: no effect, no fence.
    Unreachable,
    /// Takes effect, but the answer is lost.
    AnswerLost,
}

/// A status write of a controller's that lands, but whose answer is lost on the way back (a
/// timeout, a dropped connection): writes.rs then reads the object to find out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WriteFault {
    /// The answer is lost; the read after it answers.
    AnswerLost,
    /// The answer of the read is lost too: the step ends in an error.
    ReadLostToo,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UserAct {
    Switch(usize),
    Running(bool),
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// A controller takes its next step: begins a reconcile, decides again after a write, or
    /// handles the answer of its call.
    Step(usize),
    /// The same, and the status write the step makes (a claim, a takeover, a write under a
    /// claim) lands but its answer is lost. Not enabled if the step makes no such write.
    Unanswered(usize, WriteFault),
    /// A controller's watch cache catches up to a newer version.
    Watch(usize, u32),
    /// A provider receives call `id`.
    Deliver(u16, Fault),
    User(UserAct),
    /// A controller crashes and restarts with a fresh identity and an empty memory.
    Crash(usize),
    Tick,
    /// One inventory pass over a provider.
    Inventory(usize),
}

/// Log lines for a readable trace; formatting happens only when enabled.
pub struct Log {
    pub on: bool,
    pub lines: Vec<String>,
}

impl Log {
    fn off() -> Self {
        Log { on: false, lines: Vec::new() }
    }
    fn add(&mut self, f: impl FnOnce() -> String) {
        if self.on {
            self.lines.push(f());
        }
    }
}

// ---- time and objects --------------------------------------------------------------------------

fn ts(tick: u8) -> Timestamp {
    let base = Timestamp::from_second(1_893_456_000).unwrap_or(Timestamp::UNIX_EPOCH);
    base + SignedDuration::from_secs(TICK_SECS * i64::from(tick))
}

fn time(tick: u8) -> Time {
    Time(ts(tick))
}

/// The first tick at or after `delay` from `now`.
fn ticks_after(now: u8, delay: Duration) -> u8 {
    let secs = i64::try_from(delay.as_secs()).unwrap_or(i64::MAX);
    let n = (secs + TICK_SECS - 1) / TICK_SECS;
    now.saturating_add(u8::try_from(n).unwrap_or(u8::MAX))
}

/// The workspace a controller decides on, built through its JSON form.
pub fn to_workspace(o: &Obj) -> Workspace {
    let finalizers: Vec<&str> = if o.finalizer { vec![FINALIZER] } else { vec![] };
    let mut metadata = json!({
        "name": "ws-1",
        "namespace": "default",
        "uid": UID,
        "generation": o.generation,
        "resourceVersion": o.rv.to_string(),
        "finalizers": finalizers,
    });
    if o.deleting {
        metadata["deletionTimestamp"] = json!(ts(0).to_string());
    }
    let mut ws: Workspace = serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "Workspace",
        "metadata": metadata,
        "spec": { "provider": o.provider, "running": o.running },
    }))
    .expect("a valid Workspace");
    ws.status = o.status.clone();
    ws
}

/// An instance as a provision's answer records it, through its JSON form so that fields the
/// model does not drive keep their defaults.
fn instance(id: String, provider: &str, key: String) -> Instance {
    serde_json::from_value(json!({"id": id, "provider": provider, "key": key})).expect("a valid Instance")
}

fn provider_index(name: &str) -> usize {
    PROVIDERS.iter().position(|p| *p == name).unwrap_or(0)
}

enum WriteErr {
    Conflict,
    Gone,
}

// ---- the model ---------------------------------------------------------------------------------

impl SwitchModel {
    pub fn new(scope: Scope, rules: Rules) -> Self {
        Self { scope, rules }
    }

    /// A status as the API server keeps it in the model: condition timestamps and the times of
    /// `lastSwitch` are not kept (nothing decides on them); under the pre-fencing rules there
    /// is nothing to fence.
    fn store(&self, mut s: WorkspaceStatus) -> WorkspaceStatus {
        for c in &mut s.conditions {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        if let Some(l) = s.last_switch.as_mut() {
            l.started_at = Time(Timestamp::UNIX_EPOCH);
            l.completed_at = Time(Timestamp::UNIX_EPOCH);
        }
        if self.rules == Rules::PreFencing {
            s.unfenced.clear();
            if let Some(op) = s.operation.as_mut() {
                op.unfenced.clear();
            }
        }
        s
    }

    fn initial(&self) -> State {
        let mut provs: Vec<Prov> = (0..self.scope.providers)
            .map(|_| Prov { fence: None, judge: None, insts: vec![], next_id: 0, seen: vec![], quiet: GRACE_PASSES })
            .collect();
        let mut obj = Obj {
            rv: 1,
            generation: 1,
            provider: PROVIDERS[0],
            running: true,
            deleting: false,
            finalizer: false,
            gone: false,
            status: None,
        };
        if self.scope.initial == Initial::RunningOnA {
            let key = provision_key(UID, "op0");
            provs[0].insts.push(Inst { id: "i-a-0".into(), key: key.clone(), running: true, stopped_by: None });
            provs[0].next_id = 1;
            provs[0].fence = Some(1);
            provs[0].judge = Some(1);
            obj.finalizer = true;
            let status: WorkspaceStatus = serde_json::from_value(json!({
                "epoch": 1,
                "activeProvider": "a",
                "instance": {"id": "i-a-0", "provider": "a", "key": key},
            }))
            .expect("a valid status");
            obj.status = Some(status);
            let ws = to_workspace(&obj);
            obj.status = Some(self.store(status::at_rest(&ws, None, &time(0))));
        }
        let ctrls = (0..self.scope.controllers)
            .map(|_| Ctrl {
                incarnation: 0,
                cache: 1,
                written: None,
                unsure: false,
                stop_failures: None,
                work: Work::Idle,
                lost: false,
            })
            .collect();
        State {
            time: 0,
            versions: vec![Arc::new(obj)],
            ctrls,
            provs,
            net: vec![],
            user_left: self.scope.user_actions,
            faults_left: self.scope.faults,
            lost_answers_left: self.scope.lost_answers,
            crashes_left: self.scope.crashes,
            armed: None,
            writes: 0,
            bad: 0,
            seen: 0,
        }
    }

    /// Carries out `action` on `st`; false if it is not enabled.
    pub fn apply(&self, st: &mut State, action: &Action, log: &mut Log) -> bool {
        match action {
            Action::Step(c) => self.step(st, *c, log),
            Action::Unanswered(c, fault) => {
                st.armed = Some(*fault);
                self.step(st, *c, log);
                // Still armed: the step wrote no status, so this is no more than `Step`.
                return st.armed.take().is_none();
            }
            Action::Watch(c, rv) => {
                st.ctrls[*c].cache = *rv;
                log.add(|| format!("c{c}'s watch cache catches up to rv {rv}"));
                self.prune(st);
            }
            Action::Deliver(id, fault) => self.deliver(st, *id, fault, log),
            Action::User(u) => self.user(st, u, log),
            Action::Crash(c) => {
                st.crashes_left -= 1;
                let latest = st.latest().rv;
                let ctrl = &mut st.ctrls[*c];
                ctrl.incarnation += 1;
                *ctrl = Ctrl {
                    incarnation: ctrl.incarnation,
                    cache: latest,
                    written: None,
                    unsure: false,
                    stop_failures: None,
                    work: Work::Idle,
                    lost: false,
                };
                log.add(|| {
                    format!(
                        "c{c} crashes and restarts as c{c}.{} (its calls in flight stay in flight)",
                        ctrl.incarnation
                    )
                });
            }
            Action::Tick => {
                st.time += 1;
                log.add(|| format!("time passes: tick {} (t+{}s)", st.time, TICK_SECS * i64::from(st.time)));
            }
            Action::Inventory(p) => self.inventory(st, *p, log),
        }
        true
    }

    // ---- the user ------------------------------------------------------------------------------

    fn user(&self, st: &mut State, u: &UserAct, log: &mut Log) {
        st.user_left -= 1;
        let mut o = (**st.latest()).clone();
        o.rv += 1;
        match u {
            UserAct::Switch(p) => {
                o.provider = PROVIDERS[*p];
                o.generation += 1;
                log.add(|| format!("user sets spec.provider = {} (rv {})", PROVIDERS[*p], o.rv));
            }
            UserAct::Running(r) => {
                o.running = *r;
                o.generation += 1;
                log.add(|| format!("user sets spec.running = {r} (rv {})", o.rv));
            }
            UserAct::Delete => {
                if o.finalizer {
                    o.deleting = true;
                    log.add(|| format!("user deletes the workspace: deletionTimestamp set (rv {})", o.rv));
                } else {
                    o.gone = true;
                    st.seen |= SEEN_DELETED;
                    log.add(|| "user deletes the workspace: gone (no finalizer)".to_string());
                }
            }
        }
        self.push(st, o);
    }

    // ---- the API server ------------------------------------------------------------------------

    fn push(&self, st: &mut State, o: Obj) -> Arc<Obj> {
        let o = Arc::new(o);
        st.versions.push(o.clone());
        st.writes += 1;
        let floor = o.rv.saturating_sub(self.scope.lag);
        for c in &mut st.ctrls {
            c.cache = c.cache.max(floor);
        }
        self.prune(st);
        o
    }

    fn prune(&self, st: &mut State) {
        let keep = st.ctrls.iter().map(|c| c.cache).min().unwrap_or(0);
        let latest = st.latest().rv;
        st.versions.retain(|v| v.rv >= keep || v.rv == latest);
    }

    /// A status write guarded by `basis`'s resourceVersion.
    fn cas_status(&self, st: &mut State, basis: &Obj, s: WorkspaceStatus) -> Result<Arc<Obj>, WriteErr> {
        let latest = st.latest().clone();
        if latest.gone {
            return Err(WriteErr::Gone);
        }
        if latest.rv != basis.rv {
            return Err(WriteErr::Conflict);
        }
        let mut o = (*latest).clone();
        o.rv += 1;
        o.status = Some(s);
        Ok(self.push(st, o))
    }

    // ---- a controller --------------------------------------------------------------------------

    fn facts(&self, st: &State, c: usize) -> Facts {
        Facts {
            me: st.identity(c),
            now: ts(st.time),
            claim_lease: LEASE,
            target: ProviderState::Usable,
            source: ProviderState::Usable,
            retry_at: st.ctrls[c].stop_failures.map(|(_, at)| ts(at)),
            provision_backoff: STEP_BACKOFF,
            leader: false,
        }
    }

    fn idle(st: &mut State, c: usize) {
        st.ctrls[c].work = Work::Idle;
    }

    /// A write or call is about to be made: a claim loser must make none.
    fn acting(st: &mut State, c: usize) {
        if st.ctrls[c].lost {
            st.bad |= LOSER_ACTED;
        }
    }

    fn landed(st: &mut State, c: usize, fresh: &Arc<Obj>) {
        st.ctrls[c].written = Some(fresh.rv);
        st.ctrls[c].work = Work::Ready(fresh.clone());
    }

    /// protocol.rs `Memory::forget`: not ours to touch, or gone.
    fn forget(st: &mut State, c: usize) {
        let ctrl = &mut st.ctrls[c];
        ctrl.written = None;
        ctrl.unsure = false;
        ctrl.stop_failures = None;
    }

    /// The step ends in an error (protocol.rs `reconcile`): a write of it may have landed
    /// unanswered, so the next reconcile reads afresh. The controller reconciles again later.
    fn failed(&self, st: &mut State, c: usize) {
        Self::idle(st, c);
        st.ctrls[c].unsure = self.rules != Rules::PreUnsure;
    }

    /// A write found the workspace no longer ours (protocol.rs `Turn::lost`): as a failed step,
    /// and a claim loser besides, which must touch nothing more this reconcile.
    fn lost(&self, st: &mut State, c: usize) {
        self.failed(st, c);
        st.ctrls[c].lost = true;
    }

    /// The answer of a status write that has just landed: lost if a fault is armed for it.
    fn answer_lost(st: &mut State, log: &mut Log) -> Option<WriteFault> {
        let fault = st.armed.take()?;
        st.lost_answers_left -= 1;
        log.add(|| match fault {
            WriteFault::AnswerLost => "  … it landed, but its answer is lost: reads to find out".to_string(),
            WriteFault::ReadLostToo => {
                "  … it landed, but its answer is lost, and so is the read's: the step fails".into()
            }
        });
        Some(fault)
    }

    fn step(&self, st: &mut State, c: usize, log: &mut Log) {
        match std::mem::replace(&mut st.ctrls[c].work, Work::Idle) {
            Work::Idle => {
                st.ctrls[c].lost = false;
                let ctrl = &st.ctrls[c];
                // `Context::is_behind`: a cache older than our own last write is not
                // acted on, nor any cache after a failed step or a lost write (`unsure`); the
                // read settles that.
                let behind = ctrl.written.is_some_and(|w| ctrl.cache < w);
                let obj = if behind || ctrl.unsure {
                    log.add(|| {
                        let why = if behind { "is behind its write" } else { "may be: a write of its is unsure" };
                        format!("c{c} reconciles: its cache (rv {}) {why}: reads rv {}", ctrl.cache, st.latest().rv)
                    });
                    let latest = st.latest().clone();
                    st.ctrls[c].unsure = false;
                    // What it read is the floor from then on: a cached copy older than it may
                    // predate a write of ours that landed unanswered.
                    if !matches!(self.rules, Rules::PreUnsure | Rules::ReadNotRemembered) {
                        st.ctrls[c].written = Some(latest.rv);
                    }
                    latest
                } else {
                    log.add(|| format!("c{c} reconciles on its cached rv {}", ctrl.cache));
                    st.version(ctrl.cache)
                };
                if obj.gone {
                    return;
                }
                self.act(st, c, obj, log);
            }
            Work::Ready(obj) => {
                log.add(|| format!("c{c} continues on rv {}", obj.rv));
                self.act(st, c, obj, log)
            }
            Work::Await { at, job, reply: Some(reply), .. } => self.resume(st, c, at, job, reply, log),
            w @ Work::Await { .. } => st.ctrls[c].work = w,
        }
    }

    /// `decide`, then the step protocol.rs takes for it, up to its first call or write.
    fn act(&self, st: &mut State, c: usize, obj: Arc<Obj>, log: &mut Log) {
        let ws = to_workspace(&obj);
        let facts = self.facts(st, c);
        let next = decide(&ws, &facts);
        log.add(|| format!("  decide → {next:?}"));
        let now = time(st.time);
        let me = st.identity(c);
        match next {
            Next::Nothing => Self::forget(st, c),
            Next::Wait { .. } => {}
            Next::AddFinalizer | Next::RemoveFinalizer => {
                Self::acting(st, c);
                let latest = st.latest().clone();
                if latest.gone || latest.rv != obj.rv {
                    log.add(|| "  finalizer write: 409, the step fails".to_string());
                    self.failed(st, c);
                    return;
                }
                let mut o = (*latest).clone();
                o.rv += 1;
                o.finalizer = next == Next::AddFinalizer;
                if !o.finalizer && o.deleting {
                    o.gone = true;
                    st.seen |= SEEN_DELETED;
                }
                let fresh = self.push(st, o);
                log.add(|| {
                    format!("  finalizer written (rv {}{})", fresh.rv, if fresh.gone { ", workspace gone" } else { "" })
                });
                if fresh.finalizer {
                    Self::landed(st, c, &fresh);
                } else {
                    Self::forget(st, c);
                }
            }
            Next::Rest { stall } => {
                let next = self.store(status::at_rest(&ws, stall.as_ref(), &now));
                if status::differs(&ws.status.clone().unwrap_or_default(), &next) {
                    Self::acting(st, c);
                    match self.cas_status(st, &obj, next) {
                        Ok(fresh) => {
                            st.ctrls[c].written = Some(fresh.rv);
                            log.add(|| format!("  at-rest status written (rv {})", fresh.rv));
                        }
                        Err(_) => log.add(|| "  at-rest write: 409, ignored".to_string()),
                    }
                }
            }
            Next::Claim { kind, from, to } => {
                // Named by the epoch it claims: only one claim lands per epoch, and a counter
                // would tell apart states that differ only in how many claims were lost.
                let epoch = ws.status.as_ref().map(|s| s.epoch).unwrap_or_default() + 1;
                let id = format!("op{epoch}");
                let next = self.store(status::claimed(&ws, &id, kind, from, to, &me, &now));
                self.claim(st, c, &obj, next, |o| o.op().is_some_and(|op| op.id == id), log);
            }
            Next::TakeOver => {
                let next = self.store(status::taken_over(&ws, &me, &now));
                let epoch = next.epoch;
                let me2 = me.clone();
                let is_ours = move |o: &Obj| {
                    o.status
                        .as_ref()
                        .is_some_and(|s| s.epoch == epoch && s.operation.as_ref().is_some_and(|op| op.holder == me2))
                };
                if self.claim(st, c, &obj, next, is_ours, log) {
                    st.seen |= SEEN_TAKEOVER;
                }
            }
            Next::Fence { providers } => {
                let mut rest: Vec<usize> = providers.iter().map(|p| provider_index(p)).collect();
                if rest.is_empty() {
                    return;
                }
                let first = rest.remove(0);
                self.send(st, c, &obj, first, CallKind::Fence, Job::Fence { ws: obj.clone(), rest }, log);
            }
            Next::Renew => self.held_write(st, c, &obj, |w| status::renewed(w, &now), log),
            Next::ConvertToDelete => self.held_write(st, c, &obj, |w| status::converted_to_delete(w, &now), log),
            Next::Abort => match ws.status.as_ref().and_then(|s| s.instance.clone()) {
                Some(i) => {
                    let p = provider_index(&i.provider);
                    let job = Job::AbortLookup { ws: obj.clone(), instance: i.id.clone() };
                    self.send(st, c, &obj, p, CallKind::Lookup(i.key.clone()), job, log);
                }
                None => self.held_write(st, c, &obj, |w| status::aborted(w, &now), log),
            },
            Next::StopOld { instance } => {
                let p = provider_index(&instance.provider);
                let job = Job::Stop { ws: obj.clone(), instance: instance.id.clone(), attempt: 1 };
                self.send(st, c, &obj, p, CallKind::Stop(instance.id.clone()), job, log);
            }
            Next::Commit => self.held_write(st, c, &obj, |w| status::committed(w, &now), log),
            Next::Provision { provider, key } => {
                let p = provider_index(&provider);
                let job = Job::Provision { ws: obj.clone(), provider: p, key: key.clone() };
                self.send(st, c, &obj, p, CallKind::Provision(key), job, log);
            }
            Next::Retarget { provider, key } => {
                let p = provider_index(&provider);
                let job = Job::ReleaseLookup { ws: obj.clone(), provider: p, then: Then::Retarget };
                self.send(st, c, &obj, p, CallKind::Lookup(key), job, log);
            }
            Next::FinishWithoutCompute { release } => match release {
                Some((provider, key)) => {
                    let p = provider_index(&provider);
                    let job = Job::ReleaseLookup { ws: obj.clone(), provider: p, then: Then::Finish };
                    self.send(st, c, &obj, p, CallKind::Lookup(key), job, log);
                }
                None => self.held_write(st, c, &obj, |w| status::finished_without_compute(w, &now), log),
            },
            Next::Hold { stall } => {
                self.step_failed(st, c, &obj, stall.reason, &stall.message, 0, st.time, log);
            }
        }
    }

    /// writes.rs `claim`: one attempt; on a conflict or a lost answer, a fresh read decides:
    /// landed if it shows the claim ours, lost if anything was written since `obj`, else an
    /// error.
    fn claim(
        &self,
        st: &mut State,
        c: usize,
        obj: &Arc<Obj>,
        next: WorkspaceStatus,
        is_ours: impl Fn(&Obj) -> bool,
        log: &mut Log,
    ) -> bool {
        Self::acting(st, c);
        let conflict = match self.cas_status(st, obj, next.clone()) {
            Ok(fresh) => {
                log.add(|| format!("  claim written (rv {}, epoch {})", fresh.rv, next.epoch));
                match Self::answer_lost(st, log) {
                    None => {
                        Self::landed(st, c, &fresh);
                        return true;
                    }
                    Some(WriteFault::ReadLostToo) => {
                        self.failed(st, c);
                        return false;
                    }
                    Some(WriteFault::AnswerLost) => false,
                }
            }
            Err(WriteErr::Gone) => {
                self.failed(st, c);
                return false;
            }
            Err(WriteErr::Conflict) => true,
        };
        let fresh = st.latest().clone();
        if is_ours(&fresh) {
            log.add(|| format!("  the read shows the claim ours (rv {})", fresh.rv));
            Self::landed(st, c, &fresh);
            return true;
        }
        if !conflict && fresh.rv == obj.rv {
            log.add(|| "  the read shows nothing written: the step fails".to_string());
            self.failed(st, c);
            return false;
        }
        log.add(|| {
            format!("  claim: {} (rv {} is not {}): lost", if conflict { "409" } else { "read" }, fresh.rv, obj.rv)
        });
        self.lost(st, c);
        if self.rules == Rules::LoserContinues {
            let mut o = (**obj).clone();
            o.status = Some(next);
            st.ctrls[c].work = Work::Ready(Arc::new(o));
        }
        false
    }

    /// writes.rs `under_claim`: on a conflict, re-read and re-apply while the operation (id and
    /// epoch) is still ours.
    fn held_write(
        &self,
        st: &mut State,
        c: usize,
        obj: &Arc<Obj>,
        transition: impl Fn(&Workspace) -> WorkspaceStatus,
        log: &mut Log,
    ) {
        Self::idle(st, c);
        let Some((id, epoch)) = obj.op().map(|o| (o.id.clone(), o.epoch)) else { return };
        Self::acting(st, c);
        let mut current = obj.clone();
        for _ in 0..MAX_HELD_RETRIES {
            let next = self.store(transition(&to_workspace(&current)));
            let conflict = match self.cas_status(st, &current, next) {
                Ok(fresh) => {
                    log.add(|| format!("  status written under the claim (rv {}): {}", fresh.rv, summary(&fresh)));
                    if fresh.status.as_ref().is_some_and(|s| s.last_switch.is_some())
                        && fresh.op().is_none()
                        && current.op().is_some_and(|o| o.kind == OperationKind::Switch)
                    {
                        st.seen |= SEEN_SWITCHED;
                    }
                    match Self::answer_lost(st, log) {
                        None => {
                            Self::landed(st, c, &fresh);
                            return;
                        }
                        Some(WriteFault::ReadLostToo) => return self.failed(st, c),
                        Some(WriteFault::AnswerLost) => false,
                    }
                }
                Err(WriteErr::Gone) => return self.failed(st, c),
                Err(WriteErr::Conflict) => true,
            };
            let why = if conflict { "409" } else { "answer lost" };
            let fresh = st.latest().clone();
            let ours = !fresh.gone && fresh.op().is_some_and(|o| o.id == id && o.epoch == epoch);
            if !ours {
                log.add(|| {
                    format!("  write under the claim: {why}, operation no longer ours (rv {}): stops", fresh.rv)
                });
                if !conflict {
                    st.seen |= SEEN_OWN_WRITE_LOST;
                }
                return self.lost(st, c);
            }
            log.add(|| format!("  write under the claim: {why}; still ours at rv {}: re-applied", fresh.rv));
            current = fresh;
        }
        // writes.rs: too many conflicts, an error.
        self.failed(st, c);
    }

    #[allow(clippy::too_many_arguments)]
    fn step_failed(
        &self,
        st: &mut State,
        c: usize,
        obj: &Arc<Obj>,
        reason: cond::ConditionReason,
        error: &str,
        stall_after: i32,
        at: u8,
        log: &mut Log,
    ) {
        let attempts = obj.op().map(|o| o.attempts).unwrap_or_default().saturating_add(1);
        let delay = STEP_BACKOFF.delay(u32::try_from(attempts).unwrap_or(0));
        let retry_at = Time(ts(at) + SignedDuration::try_from(delay).unwrap_or_default());
        let now = time(at);
        self.held_write(st, c, obj, |w| status::step_failed(w, reason, error, stall_after, &retry_at, &now), log);
    }

    /// Sends a call under the operation of `obj`.
    #[allow(clippy::too_many_arguments)]
    fn send(&self, st: &mut State, c: usize, obj: &Arc<Obj>, provider: usize, call: CallKind, job: Job, log: &mut Log) {
        let Some(op) = obj.op() else {
            Self::idle(st, c);
            return;
        };
        Self::acting(st, c);
        // The smallest id not in use: a counter would tell apart states that differ only in how
        // many calls were made before, and the state space would never close.
        let in_use = |id: u16| {
            st.net.iter().any(|m| m.id == id)
                || st.ctrls.iter().any(|c| matches!(c.work, Work::Await { call, .. } if call == id))
        };
        let id = (1..).find(|&id| !in_use(id)).unwrap_or(u16::MAX);
        log.add(|| format!("  sends call #{id}: {call:?} to {} at epoch {}", PROVIDERS[provider], op.epoch));
        st.net.push(Msg {
            id,
            ctrl: c,
            incarnation: st.ctrls[c].incarnation,
            provider,
            epoch: op.epoch,
            op: op.id.clone(),
            call,
        });
        st.ctrls[c].work = Work::Await { call: id, at: st.time, job, reply: None };
    }

    /// The rest of a step, once the answer of its call is in.
    fn resume(&self, st: &mut State, c: usize, at: u8, job: Job, reply: Reply, log: &mut Log) {
        log.add(|| format!("c{c} gets the answer {reply:?}"));
        if reply == Reply::Stale {
            log.add(|| "  fenced off by the provider: the reconcile ends".to_string());
            st.seen |= SEEN_FENCED_OFF;
            return;
        }
        let now = time(at);
        match job {
            Job::Fence { ws, mut rest } => match reply {
                Reply::Ok(_) if rest.is_empty() => self.held_write(st, c, &ws, |w| status::fenced(w, &now), log),
                Reply::Ok(_) => {
                    let next = rest.remove(0);
                    self.send(st, c, &ws.clone(), next, CallKind::Fence, Job::Fence { ws, rest }, log);
                }
                _ => {
                    let msg = "cannot fence a provider a superseded operation could still call";
                    self.step_failed(st, c, &ws, cond::ConditionReason::FenceFailed, msg, STALL_AFTER, at, log)
                }
            },
            Job::Stop { ws, instance, attempt } => {
                // The writes after a stop describe the time after it.
                let after = time(st.time);
                match reply {
                    Reply::Ok(_) => {
                        st.ctrls[c].stop_failures = None;
                        let kind = ws.op().map(|o| o.kind);
                        match kind {
                            Some(OperationKind::Switch) => {
                                self.held_write(st, c, &ws, |w| status::committed(w, &after), log)
                            }
                            Some(OperationKind::Delete) if ws.op().is_some_and(|o| o.to.is_some()) => {
                                let (to, key) = ws
                                    .op()
                                    .map(|o| (provider_index(o.to.as_deref().unwrap_or("")), provision_key(UID, &o.id)))
                                    .unwrap_or_default();
                                let job = Job::ReleaseLookup { ws: ws.clone(), provider: to, then: Then::Finish };
                                self.send(st, c, &ws, to, CallKind::Lookup(key), job, log);
                            }
                            _ => self.held_write(st, c, &ws, |w| status::finished_without_compute(w, &after), log),
                        }
                    }
                    Reply::Failed(e) if attempt < self.scope.stop_attempts => {
                        self.held_write(st, c, &ws, |w| status::retrying(w, e, &after), log);
                        if let Work::Ready(fresh) = st.ctrls[c].work.clone() {
                            let p = provider_index(
                                &ws.status
                                    .as_ref()
                                    .and_then(|s| s.instance.as_ref())
                                    .map(|i| i.provider.clone())
                                    .unwrap_or_default(),
                            );
                            let job = Job::Stop { ws: fresh, instance: instance.clone(), attempt: attempt + 1 };
                            // The retry goes out under the call context of the first attempt.
                            self.send(st, c, &ws, p, CallKind::Stop(instance), job, log);
                        }
                    }
                    Reply::Failed(e) => {
                        let n = st.ctrls[c].stop_failures.map(|(n, _)| n + 1).unwrap_or(1);
                        let delay = STOP_RETRY.delay(u32::from(n));
                        st.ctrls[c].stop_failures = Some((n, ticks_after(st.time, delay)));
                        self.held_write(st, c, &ws, |w| status::stop_failed(w, e, &after), log);
                        Self::idle(st, c);
                    }
                    Reply::Stale => {}
                }
            }
            Job::Provision { ws, provider, key } => match reply {
                Reply::Ok(Some((id, true))) => {
                    let instance = instance(id, PROVIDERS[provider], key);
                    self.held_write(st, c, &ws, |w| status::provisioned(w, instance.clone(), &now), log)
                }
                Reply::Ok(_) => {
                    let error = format!("instance under key {key} is not running");
                    self.step_failed(st, c, &ws, cond::ConditionReason::ProvisionFailed, &error, STALL_AFTER, at, log)
                }
                Reply::Failed(e) => {
                    self.step_failed(st, c, &ws, cond::ConditionReason::ProvisionFailed, e, STALL_AFTER, at, log)
                }
                Reply::Stale => {}
            },
            Job::ReleaseLookup { ws, provider, then } => match reply {
                Reply::Ok(Some((id, true))) => {
                    let job = Job::ReleaseStop { ws: ws.clone(), then };
                    self.send(st, c, &ws, provider, CallKind::Stop(id), job, log);
                }
                Reply::Ok(_) => self.then(st, c, &ws, then, at, log),
                _ => log.add(|| "  release failed: requeued".to_string()),
            },
            Job::ReleaseStop { ws, then } => match reply {
                Reply::Ok(_) => self.then(st, c, &ws, then, at, log),
                _ => log.add(|| "  release failed: requeued".to_string()),
            },
            Job::AbortLookup { ws, instance } => match reply {
                Reply::Ok(found) => {
                    let running = found.is_some_and(|(id, running)| id == instance && running);
                    if running {
                        self.held_write(st, c, &ws, |w| status::aborted(w, &now), log);
                    } else if ws.op().is_some_and(|o| o.kind == OperationKind::Switch) {
                        self.held_write(st, c, &ws, |w| status::committed(w, &now), log);
                    } else {
                        self.held_write(st, c, &ws, |w| status::finished_without_compute(w, &now), log);
                    }
                }
                _ => log.add(|| "  abort's lookup failed: requeued".to_string()),
            },
        }
    }

    fn then(&self, st: &mut State, c: usize, ws: &Arc<Obj>, then: Then, at: u8, log: &mut Log) {
        let now = time(at);
        match then {
            Then::Retarget => {
                // A retarget keeps the epoch: its new id extends the old one.
                let id = format!("{}r", ws.op().map(|o| o.id.as_str()).unwrap_or("op"));
                self.held_write(st, c, ws, |w| status::retargeted(w, &id, &now), log);
            }
            Then::Finish => self.held_write(st, c, ws, |w| status::finished_without_compute(w, &now), log),
        }
    }

    // ---- providers -----------------------------------------------------------------------------

    fn faults_for(&self, st: &State, call: &CallKind) -> Vec<Fault> {
        let mut v = vec![Fault::None];
        if st.faults_left > 0 {
            v.push(Fault::Unreachable);
            if !matches!(call, CallKind::Fence) {
                v.push(Fault::AfterFence);
            }
            if matches!(call, CallKind::Provision(_) | CallKind::Stop(_)) {
                v.push(Fault::AnswerLost);
            }
        }
        v
    }

    fn deliver(&self, st: &mut State, id: u16, fault: &Fault, log: &mut Log) {
        let Some(pos) = st.net.iter().position(|m| m.id == id) else { return };
        let msg = st.net.remove(pos);
        if *fault != Fault::None {
            st.faults_left -= 1;
        }
        // A call of an operation that has since been taken over (epoch moved on).
        let current_epoch = st.latest().status.as_ref().map(|s| s.epoch).unwrap_or_default();
        if msg.epoch < current_epoch {
            st.bad |= PAUSED_HOLDER_WOKE;
        }
        let reply = self.provider_call(st, &msg, fault);
        log.add(|| {
            format!(
                "{} receives call #{id} {:?} (epoch {}, from c{}.{}){}: answers {reply:?}",
                PROVIDERS[msg.provider],
                msg.call,
                msg.epoch,
                msg.ctrl,
                msg.incarnation,
                match fault {
                    Fault::None => String::new(),
                    f => format!(" with fault {f:?}"),
                }
            )
        });
        let ctrl = &mut st.ctrls[msg.ctrl];
        if ctrl.incarnation == msg.incarnation
            && let Work::Await { call, reply: slot, .. } = &mut ctrl.work
            && *call == msg.id
            && slot.is_none()
        {
            *slot = Some(reply);
        }
    }

    /// What the provider does with a call (provider/simulated semantics).
    fn provider_call(&self, st: &mut State, msg: &Msg, fault: &Fault) -> Reply {
        let shipped = self.rules != Rules::PreFencing;
        let mut bad = 0;
        // Operation ids are never used twice (a claim is named by the epoch it claims, a
        // retarget extends the id), and every call is made under an operation some version
        // held: one the API server no longer holds has been finished, retargeted or released.
        let finished = st.latest().op().is_none_or(|o| o.id != msg.op);
        let p = &mut st.provs[msg.provider];
        p.quiet = 0;
        if *fault == Fault::Unreachable {
            return Reply::Failed("provider unreachable");
        }
        if p.fence.is_some_and(|f| msg.epoch < f) {
            return Reply::Stale;
        }
        if p.judge.is_some_and(|j| msg.epoch < j) {
            bad |= STALE_ACCEPTED;
        }
        p.judge = Some(p.judge.map_or(msg.epoch, |j| j.max(msg.epoch)));
        if finished {
            bad |= FINISHED_CALLED;
        }
        if shipped {
            p.fence = Some(msg.epoch);
        }
        if *fault == Fault::AfterFence {
            st.bad |= bad;
            return Reply::Failed("injected failure");
        }
        // Before the fix, only a successful provision or stop moved the fence.
        let raise = |p: &mut Prov| {
            if !shipped {
                p.fence = Some(p.fence.map_or(msg.epoch, |f| f.max(msg.epoch)));
            }
        };
        let reply = match &msg.call {
            CallKind::Provision(key) => {
                let found = p.insts.iter().find(|i| &i.key == key).map(|i| (i.id.clone(), i.running));
                let info = match found {
                    Some(info) => info,
                    None => {
                        let id = format!("i-{}-{}", PROVIDERS[msg.provider], p.next_id + 1);
                        p.next_id += 1;
                        p.insts.push(Inst { id: id.clone(), key: key.clone(), running: true, stopped_by: None });
                        (id, true)
                    }
                };
                raise(p);
                Reply::Ok(Some(info))
            }
            CallKind::Stop(id) => {
                if let Some(i) = p.insts.iter_mut().find(|i| &i.id == id)
                    && i.running
                {
                    i.running = false;
                    if i.stopped_by.is_some() {
                        bad |= STOPPED_TWICE;
                    }
                    i.stopped_by = Some(msg.epoch);
                }
                raise(p);
                Reply::Ok(None)
            }
            CallKind::Lookup(key) => {
                Reply::Ok(p.insts.iter().find(|i| &i.key == key).map(|i| (i.id.clone(), i.running)))
            }
            CallKind::Fence => Reply::Ok(None),
        };
        // One key, one instance, across providers too.
        if let CallKind::Provision(key) = &msg.call {
            let n: usize = st.provs.iter().map(|p| p.insts.iter().filter(|i| i.key == *key).count()).sum();
            if n > 1 {
                bad |= KEY_REUSED;
            }
        }
        st.bad |= bad;
        if *fault == Fault::AnswerLost {
            return Reply::Failed("response lost");
        }
        reply
    }

    /// One inventory pass over provider `p`: running instances no status accounts for, seen
    /// unaccounted for by the previous pass too, are stopped under the workspace's epoch.
    fn inventory(&self, st: &mut State, p: usize, log: &mut Log) {
        let latest = st.latest().clone();
        let status = latest.status.clone().filter(|_| !latest.gone);
        let named = status.as_ref().and_then(|s| s.instance.clone());
        let op_key = status.as_ref().and_then(|s| s.operation.as_ref()).map(|o| provision_key(UID, &o.id));
        let name = PROVIDERS[p];
        let accounted = |i: &Inst| {
            named.as_ref().is_some_and(|n| (n.provider == name && n.id == i.id) || n.key == i.key)
                || op_key.as_ref().is_some_and(|k| *k == i.key)
        };
        let prov = &mut st.provs[p];
        let epoch = match &status {
            Some(s) => s.epoch,
            None => prov.fence.unwrap_or_default(),
        };
        let mut still = Vec::new();
        let mut bad = 0;
        let mut collected = false;
        for idx in 0..prov.insts.len() {
            let i = &prov.insts[idx];
            if !i.running || accounted(i) {
                continue;
            }
            if !prov.seen.contains(&i.id) {
                still.push(i.id.clone());
                continue;
            }
            let id = i.id.clone();
            if prov.fence.is_some_and(|f| epoch < f) {
                log.add(|| format!("inventory on {name}: stopping {id} at epoch {epoch} is refused (fenced)"));
                still.push(id);
                continue;
            }
            if prov.judge.is_some_and(|j| epoch < j) {
                bad |= STALE_ACCEPTED;
            }
            prov.judge = Some(prov.judge.map_or(epoch, |j| j.max(epoch)));
            prov.fence = Some(epoch);
            let i = &mut prov.insts[idx];
            i.running = false;
            if i.stopped_by.is_some() {
                bad |= STOPPED_TWICE;
            }
            i.stopped_by = Some(epoch);
            collected = true;
            log.add(|| format!("inventory on {name}: stops {id}, which no status accounts for (epoch {epoch})"));
        }
        let unchanged = prov.seen == still;
        prov.seen = still;
        prov.quiet = (prov.quiet + 1).min(GRACE_PASSES);
        if unchanged && !collected {
            log.add(|| format!("inventory pass over {name}: nothing to do"));
        } else if !collected {
            log.add(|| format!("inventory on {name}: unaccounted for, in their grace period: {:?}", prov.seen));
        }
        st.bad |= bad;
        if collected {
            st.seen |= SEEN_COLLECTED;
        }
    }

    // ---- rest and convergence ------------------------------------------------------------------

    /// Whether the workspace is where its spec says, with nothing in flight and nothing leaked.
    pub fn at_rest(st: &State) -> bool {
        let o = st.latest();
        let live = st.live();
        if o.gone {
            return live.is_empty();
        }
        let Some(s) = o.status.as_ref() else { return false };
        if s.operation.is_some() || o.deleting {
            return false;
        }
        let ready = s.conditions.iter().any(|c| c.type_ == cond::READY && c.status == "True");
        let placed = s.active_provider.as_deref() == Some(o.provider);
        let named_live = match &s.instance {
            Some(i) => {
                live.len() == 1
                    && PROVIDERS[live[0].0] == i.provider
                    && live[0].1.id == i.id
                    && i.provider == o.provider
            }
            None => live.is_empty(),
        };
        ready && placed && named_live && (s.instance.is_some() == o.running)
    }

    /// A fault-free run (calls delivered in order, caches caught up, controllers stepped in
    /// turn, inventory passes, time passing) reaches rest within `steps` steps.
    pub fn converges(&self, st: &State, steps: u16) -> bool {
        let mut st = st.clone();
        st.user_left = 0;
        st.faults_left = 0;
        st.crashes_left = 0;
        let mut log = Log::off();
        for _ in 0..steps {
            if Self::at_rest(&st) {
                return true;
            }
            if let Some(m) = st.net.first() {
                let id = m.id;
                self.deliver(&mut st, id, &Fault::None, &mut log);
                continue;
            }
            let busy = (0..st.ctrls.len()).find(|&c| match &st.ctrls[c].work {
                Work::Ready(_) => true,
                Work::Await { reply, .. } => reply.is_some(),
                Work::Idle => false,
            });
            if let Some(c) = busy {
                self.step(&mut st, c, &mut log);
                continue;
            }
            let latest = st.latest().rv;
            for c in &mut st.ctrls {
                c.cache = latest;
            }
            self.prune(&mut st);
            let mut moved = false;
            for c in 0..st.ctrls.len() {
                let before = st.clone();
                self.step(&mut st, c, &mut log);
                if st != before {
                    moved = true;
                    break;
                }
            }
            if moved {
                continue;
            }
            if self.rules != Rules::PreFencing {
                let before = st.clone();
                for p in 0..st.provs.len() {
                    self.inventory(&mut st, p, &mut log);
                }
                if st.provs.iter().zip(before.provs.iter()).any(|(a, b)| a.insts != b.insts || a.seen != b.seen) {
                    continue;
                }
            }
            if st.time == u8::MAX {
                return false;
            }
            st.time += 1;
        }
        Self::at_rest(&st)
    }
}

/// The state after a step, in one line for traces: the API server's object, the live
/// instances, the providers' fences and the calls in flight.
pub fn brief(st: &State) -> String {
    let o = st.latest();
    let live: Vec<String> = st.live().iter().map(|(p, i)| format!("{} on {}", i.id, PROVIDERS[*p])).collect();
    let fences: Vec<String> = st
        .provs
        .iter()
        .enumerate()
        .map(|(p, pr)| format!("{}={}", PROVIDERS[p], pr.fence.map_or("-".into(), |f| f.to_string())))
        .collect();
    let net: Vec<String> = st
        .net
        .iter()
        .map(|m| format!("#{} {:?} to {} at epoch {}", m.id, m.call, PROVIDERS[m.provider], m.epoch))
        .collect();
    format!(
        "rv {} spec.provider {}: {} | live: [{}] | fences {} | in flight: [{}]",
        o.rv,
        o.provider,
        summary(o),
        live.join(", "),
        fences.join(" "),
        net.join("; ")
    )
}

/// The status in a few words, for traces.
pub fn summary(o: &Obj) -> String {
    let Some(s) = &o.status else { return "no status".into() };
    let op = s.operation.as_ref().map(|op| {
        format!(
            "op {} {:?}/{:?} {}→{} holder {} epoch {}{}",
            op.id,
            op.kind,
            op.step,
            op.from.as_deref().unwrap_or("-"),
            op.to.as_deref().unwrap_or("-"),
            op.holder,
            op.epoch,
            if op.unfenced.is_empty() { String::new() } else { format!(" unfenced {:?}", op.unfenced) }
        )
    });
    format!(
        "epoch {}, instance {}, active {}, {}",
        s.epoch,
        s.instance.as_ref().map(|i| format!("{} on {}", i.id, i.provider)).unwrap_or_else(|| "none".into()),
        s.active_provider.as_deref().unwrap_or("-"),
        op.unwrap_or_else(|| "no operation".into())
    )
}

impl Model for SwitchModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![self.initial()]
    }

    fn actions(&self, st: &State, out: &mut Vec<Action>) {
        let latest = st.latest().clone();
        for (c, ctrl) in st.ctrls.iter().enumerate() {
            let steps = match &ctrl.work {
                Work::Idle => !latest.gone,
                Work::Ready(_) | Work::Await { reply: Some(_), .. } => true,
                Work::Await { reply: None, .. } => false,
            };
            if steps {
                out.push(Action::Step(c));
                // The controllers start alike and are treated alike, so a lost answer of the
                // second is the mirror image of one of the first's: only the first's are tried.
                if st.lost_answers_left > 0 && c == 0 {
                    out.push(Action::Unanswered(c, WriteFault::AnswerLost));
                    out.push(Action::Unanswered(c, WriteFault::ReadLostToo));
                }
            }
            for rv in ctrl.cache + 1..=latest.rv {
                out.push(Action::Watch(c, rv));
            }
        }
        for m in &st.net {
            for f in self.faults_for(st, &m.call) {
                out.push(Action::Deliver(m.id, f));
            }
        }
        if st.user_left > 0 && !latest.gone && !latest.deleting {
            {
                if self.scope.user_switch {
                    for (p, name) in PROVIDERS.iter().enumerate().take(self.scope.providers) {
                        if *name != latest.provider {
                            out.push(Action::User(UserAct::Switch(p)));
                        }
                    }
                }
                if self.scope.user_running {
                    out.push(Action::User(UserAct::Running(!latest.running)));
                }
                if self.scope.user_delete {
                    out.push(Action::User(UserAct::Delete));
                }
            }
        }
        if st.crashes_left > 0 {
            for c in 0..st.ctrls.len() {
                out.push(Action::Crash(c));
            }
        }
        if st.time < self.scope.ticks {
            out.push(Action::Tick);
        }
        if self.rules != Rules::PreFencing {
            for p in 0..st.provs.len() {
                out.push(Action::Inventory(p));
            }
        }
    }

    fn next_state(&self, st: &State, action: Action) -> Option<State> {
        let mut next = st.clone();
        self.apply(&mut next, &action, &mut Log::off()).then_some(next)
    }

    fn within_boundary(&self, st: &State) -> bool {
        st.writes <= self.scope.max_writes
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut properties = vec![
            Property::always("at most one live instance", |_: &SwitchModel, st: &State| st.live().len() <= 1),
            Property::always("a claim loser makes no call and no write", |_: &SwitchModel, st: &State| {
                st.bad & LOSER_ACTED == 0
            }),
            Property::always("no call with a stale epoch accepted past a fence", |_: &SwitchModel, st: &State| {
                st.bad & STALE_ACCEPTED == 0
            }),
            Property::always("no instance stopped on behalf of two claims", |_: &SwitchModel, st: &State| {
                st.bad & STOPPED_TWICE == 0
            }),
            Property::always("one key yields at most one instance", |_: &SwitchModel, st: &State| {
                st.bad & KEY_REUSED == 0
            }),
            Property::always("no call accepted under a finished operation", |_: &SwitchModel, st: &State| {
                st.bad & FINISHED_CALLED == 0
            }),
            Property::always("no leak once quiescent", |m: &SwitchModel, st: &State| !m.quiescent(st) || leak_free(st)),
            Property::always("converges once faults and the user stop", |m: &SwitchModel, st: &State| {
                m.scope.converge_within == 0
                    || st.user_left > 0
                    || st.faults_left > 0
                    || st.crashes_left > 0
                    || m.converges(st, m.scope.converge_within)
            }),
            Property::sometimes("a switch completes", |_: &SwitchModel, st: &State| st.seen & SEEN_SWITCHED != 0),
            Property::sometimes("a takeover lands", |_: &SwitchModel, st: &State| st.seen & SEEN_TAKEOVER != 0),
            Property::sometimes("a paused holder's call arrives after a takeover", |_: &SwitchModel, st: &State| {
                st.bad & PAUSED_HOLDER_WOKE != 0
            }),
        ];
        if self.scope.lost_answers > 0 {
            properties.push(Property::sometimes(
                "a write landed unanswered is found to have ended its operation",
                |_, st: &State| st.seen & SEEN_OWN_WRITE_LOST != 0,
            ));
        }
        properties
    }
}

impl SwitchModel {
    /// No operation in flight, no call in flight or unanswered, and the inventory has passed
    /// over every provider (past its grace) since the last call reached it.
    pub fn quiescent(&self, st: &State) -> bool {
        self.rules != Rules::PreFencing
            && st.latest().op().is_none()
            && st.net.is_empty()
            && st.ctrls.iter().all(|c| !matches!(c.work, Work::Await { .. }))
            && st.provs.iter().all(|p| p.quiet >= GRACE_PASSES)
    }
}

/// Every live instance is the one the status names.
pub fn leak_free(st: &State) -> bool {
    let o = st.latest();
    let named = o.status.as_ref().and_then(|s| s.instance.as_ref()).filter(|_| !o.gone);
    st.live().iter().all(|(p, i)| named.is_some_and(|n| n.provider == PROVIDERS[*p] && n.id == i.id))
}
