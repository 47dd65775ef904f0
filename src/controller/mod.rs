//! The Workspace reconciler: wiring (watches, Context, error policy). The protocol itself is
//! in `protocol`, what its outcomes tell in `outcome`; the decision it follows in `decide`; the
//! status it writes in `status`.

pub mod decide;
mod decode;
mod inventory;
mod outcome;
mod protocol;
mod queue;
pub mod status;
pub mod worker;
pub mod writes;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tracing::{info, warn};

pub use crate::runtime::failpoints::{FailPoint, FailPoints};
pub use crate::runtime::leader::{Leadership, LeaseSettings};
pub use protocol::reconcile;
pub use worker::Action;

use crate::api::conditions as cond;
use crate::api::{ComputeProvider, Workspace};
use crate::provider::Dispatcher;
use crate::runtime::Backoff;
use crate::telemetry::{Health, Metrics};

/// What can go wrong in a reconcile. Every variant is retried with per-workspace backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("workspace {0}: too many conflicting writes in a row")]
    TooManyConflicts(String),
}

/// Tunables of one controller instance.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Who we are in `status.operation.holder`; unique per running instance.
    pub identity: String,
    /// A claim not renewed for this long may be taken over by another instance.
    pub claim_lease: Duration,
    /// Restrict to one namespace (None: all).
    pub namespace: Option<String>,
    /// Workspaces reconciled at once.
    pub concurrency: u16,
    /// Retries of a step under our claim (provision, fence).
    pub provision_backoff: Backoff,
    /// Failed provision attempts before the workspace reports Stalled (it keeps retrying).
    pub stall_after: i32,
    /// Stop attempts within one claim, and the first backoff between them (doubling, no cap),
    /// unless the provider's stopPolicy says otherwise.
    pub stop_attempts: u32,
    pub stop_backoff: Duration,
    /// After a stop failed past its budget: the delay before claiming again.
    pub stop_retry: Backoff,
    /// Reconcile only while leading this Lease (None: always).
    pub leader_election: Option<LeaseSettings>,
    /// Who owns the instances this controller creates: providers list and record instances by
    /// it, so controllers of two clusters sharing a provider never touch each other's.
    pub cluster: String,
    /// How often the inventory lists every provider for instances no status names (None: never).
    pub inventory_interval: Option<Duration>,
    /// How long an instance must stay unnamed, across passes, before the inventory stops it:
    /// room for a create whose status write is still on its way.
    pub inventory_grace: Duration,
    /// The time claims are stamped and judged by: the system clock, except in tests that
    /// drive time explicitly (so that "a lease expired" never depends on machine load).
    pub clock: Clock,
}

/// A source of the current time.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> jiff::Timestamp + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(Arc::new(jiff::Timestamp::now))
    }

    /// A clock that reads `f`.
    pub fn from_fn(f: impl Fn() -> jiff::Timestamp + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub fn now(&self) -> jiff::Timestamp {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

impl Settings {
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            identity: identity.into(),
            claim_lease: Duration::from_secs(60),
            namespace: None,
            concurrency: 64,
            provision_backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            stall_after: 3,
            stop_attempts: 3,
            stop_backoff: Duration::from_millis(200),
            stop_retry: Backoff::new(Duration::from_secs(5), Duration::from_secs(300)),
            leader_election: None,
            cluster: "default".to_string(),
            inventory_interval: Some(Duration::from_secs(30)),
            inventory_grace: Duration::from_secs(60),
            clock: Clock::system(),
        }
    }
}

/// Everything a reconcile needs; one per controller instance.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub dispatcher: Dispatcher,
    pub providers: Store<ComputeProvider>,
    pub events: crate::runtime::events::Events,
    pub failpoints: FailPoints,
    pub metrics: Arc<Metrics>,
    /// Whether this instance won leader election (false when there is none: without an
    /// election, no instance may skip the claim lease).
    leading: bool,
    memory: Mutex<Memory>,
}

/// Handles a controller instance reports into and is steered by, shared with its caller.
#[derive(Clone, Default)]
pub struct Handles {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub failpoints: FailPoints,
}

/// Per-workspace facts kept in memory only (lost on restart, which is safe).
#[derive(Default)]
struct Memory {
    /// How new a copy must be before a reconcile acts on it.
    floors: HashMap<ObjectRef<Workspace>, Floor>,
    /// Consecutive failed stops and when the next may be tried.
    stop_failures: HashMap<ObjectRef<Workspace>, (u32, jiff::Timestamp)>,
    /// Consecutive reconcile errors, for the error backoff.
    errors: HashMap<ObjectRef<Workspace>, u32>,
}

/// How new a copy of a workspace must be before a reconcile acts on it. A copy below the floor
/// may predate what this instance wrote or was told, and acting on it could repeat provider
/// calls already made; it is read afresh instead (`protocol::reconcile`).
#[derive(Clone, Copy, Debug, Default)]
struct Floor {
    /// resourceVersion of our last write, or of the fresh read that followed a failed or lost one.
    version: Option<u64>,
    /// The newest epoch a provider refused us for: the API server holds a claim at least that
    /// new, so a copy with an older epoch is stale.
    epoch: Option<i64>,
    /// No copy is trusted until a fresh read: a step of ours failed (its write may have landed
    /// unanswered), or a write found the workspace lost (possibly to our own write, landed
    /// unanswered), and the cache may still show our operation where it was.
    unsure: bool,
}

impl Floor {
    fn is_empty(&self) -> bool {
        self.version.is_none() && self.epoch.is_none() && !self.unsure
    }
}

/// The resourceVersion of `ws` as a number (the API server's are; a copy without one is none).
fn version(ws: &Workspace) -> Option<u64> {
    ws.resource_version().and_then(|rv| rv.parse::<u64>().ok())
}

impl Memory {
    /// Changes the floor of `key`, dropping it once it says nothing.
    fn floor(&mut self, key: ObjectRef<Workspace>, change: impl FnOnce(&mut Floor)) {
        let floor = self.floors.entry(key.clone()).or_default();
        change(floor);
        if floor.is_empty() {
            self.floors.remove(&key);
        }
    }

    /// Drops what is kept about a workspace that is gone, so memory is bounded by live objects.
    fn forget(&mut self, key: &ObjectRef<Workspace>) {
        self.floors.remove(key);
        self.stop_failures.remove(key);
        self.errors.remove(key);
    }

    /// Keeps only what is kept about workspaces that are `live`.
    fn retain(&mut self, live: impl Fn(&ObjectRef<Workspace>) -> bool) {
        self.floors.retain(|k, _| live(k));
        self.stop_failures.retain(|k, _| live(k));
        self.errors.retain(|k, _| live(k));
    }
}

impl Context {
    pub fn new(
        client: Client,
        settings: Settings,
        dispatcher: Dispatcher,
        providers: Store<ComputeProvider>,
        handles: &Handles,
    ) -> Arc<Self> {
        // Reconciles run only while leading, so this holds for the Context's whole life.
        let leading = settings.leader_election.is_some();
        Arc::new(Self {
            events: crate::runtime::events::Events::start(
                client.clone(),
                settings.identity.clone(),
                handles.metrics.events_dropped.clone(),
            ),
            client,
            settings,
            dispatcher,
            providers,
            failpoints: handles.failpoints.clone(),
            metrics: handles.metrics.clone(),
            leading,
            memory: Mutex::default(),
        })
    }

    fn workspaces(&self, namespace: &str) -> Api<Workspace> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Now, by this instance's clock.
    fn now(&self) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(self.settings.clock.now())
    }

    /// Whether `ws` is a version our own last write returned, or an older one. Its watch event
    /// triggers nothing: the reconcile that wrote it already decided on that very object, and
    /// every write of ours is guarded by resourceVersion, so no version in between is unseen.
    /// Dropping these keeps a burst's queue to the work users asked for, in their order.
    ///
    /// Called with each version the cache has just stored: once that is our write or newer,
    /// the cache has caught up and our write need not be remembered any more (so memory holds
    /// only writes still on their way, not one entry per workspace).
    fn is_own_write(&self, ws: &Workspace) -> bool {
        let Some(seen) = version(ws) else { return false };
        let key = workspace_key(ws);
        let mut memory = self.memory();
        let Some(written) = memory.floors.get(&key).and_then(|f| f.version) else { return false };
        if seen >= written {
            memory.floor(key, |f| f.version = None);
        }
        seen <= written
    }

    /// Whether `ws` is below its floor: older than our own last write of it, with an older epoch
    /// than a provider last fenced us at, or any copy while a write of ours is unsure.
    fn is_behind(&self, ws: &Workspace) -> bool {
        let Some(floor) = self.memory().floors.get(&workspace_key(ws)).copied() else { return false };
        let epoch = ws.status.as_ref().map(|s| s.epoch).unwrap_or_default();
        floor.unsure
            || floor.epoch.is_some_and(|newest| epoch < newest)
            || floor.version.zip(version(ws)).is_some_and(|(written, seen)| seen < written)
    }

    /// Raises the floor of `ws` to its resourceVersion: a write of ours returned it, or a fresh
    /// read found it. Every write calls this, including those that end a reconcile.
    fn remember(&self, ws: &Workspace) {
        if let Some(rv) = version(ws) {
            self.memory().floor(workspace_key(ws), |f| f.version = Some(rv));
        }
    }

    /// Trust no copy of `key` until a fresh read.
    fn unsure(&self, key: ObjectRef<Workspace>) {
        self.memory().floor(key, |f| f.unsure = true);
    }

    /// A provider refused us: the API server holds a claim at epoch `newest` or newer.
    fn fenced_at(&self, key: ObjectRef<Workspace>, newest: i64) {
        self.memory().floor(key, |f| f.epoch = Some(f.epoch.map_or(newest, |e| e.max(newest))));
    }

    /// A fresh read is authoritative: what the floor was unsure of, and the epoch a provider
    /// named (heeded once, not forever: a provider could name any epoch), are settled by it.
    fn read_afresh(&self, key: ObjectRef<Workspace>) {
        self.memory().floor(key, |f| {
            f.epoch = None;
            f.unsure = false;
        });
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs the controller until `shutdown` resolves; in-flight reconciles then finish (or stay
/// resumable from their recorded step). With leader election, reconciles only while leading
/// and returns when leadership is lost (the process should then exit and restart).
pub async fn run(
    client: Client,
    settings: Settings,
    dispatcher: Dispatcher,
    handles: Handles,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let Some(lease) = settings.leader_election.clone() else {
        handles.health.leader.store(true, Ordering::Relaxed);
        handles.metrics.leader.set(1);
        handles.health.leadership_known.store(true, Ordering::Relaxed);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(());
        });
        return reconcile_until(client, settings, dispatcher, handles, async move {
            let _ = stop_rx.await;
        })
        .await;
    };

    let (tx, mut rx) = tokio::sync::watch::channel(Leadership::Unknown);
    let elector =
        AbortOnDrop(tokio::spawn(crate::runtime::leader::elect(client.clone(), lease, settings.identity.clone(), tx)));
    let mut shutdown = Box::pin(shutdown);
    // Stand by until we lead (or are told to stop).
    loop {
        let state = rx.borrow_and_update().clone();
        handles.health.leadership_known.store(state != Leadership::Unknown, Ordering::Relaxed);
        if state == Leadership::Leader {
            break;
        }
        tokio::select! {
            _ = &mut shutdown => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
    handles.health.leader.store(true, Ordering::Relaxed);
    handles.metrics.leader.set(1);
    info!(identity = %settings.identity, "elected leader: reconciling");
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown => {}
            _ = rx.wait_for(|s| *s != Leadership::Leader) => warn!("leadership lost: stopping"),
        }
        let _ = stop_tx.send(());
    });
    reconcile_until(client, settings, dispatcher, handles.clone(), async move {
        let _ = stop_rx.await;
    })
    .await;
    handles.health.leader.store(false, Ordering::Relaxed);
    handles.metrics.leader.set(0);
    drop(elector);
}

/// Ends a background task when its owner ends, even when the owner is aborted mid-way (as a
/// test kills an instance): nothing of a dead instance may keep running.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn reconcile_until(
    client: Client,
    settings: Settings,
    dispatcher: Dispatcher,
    handles: Handles,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let workspaces: Api<DeserializeGuard<Workspace>> = match &settings.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (providers, writer) = reflector::store();
    let provider_events =
        reflector::reflector(writer, watcher(Api::<ComputeProvider>::all(client.clone()), watcher::Config::default()))
            .default_backoff()
            .touched_objects();

    let concurrency = settings.concurrency;
    let identity = settings.identity.clone();
    info!(%identity, namespace = ?settings.namespace, "controller starting");
    let dispatcher = dispatcher.with_metrics(handles.metrics.clone());
    let _probes = AbortOnDrop(tokio::spawn(crate::computeprovider::probe_forever(
        client.clone(),
        providers.clone(),
        dispatcher.clone(),
    )));
    let ctx = Context::new(client, settings, dispatcher, providers, &handles);

    // Our own reflector, so that the first complete list marks the caches synced without a
    // second waiter on the store's readiness (its one-shot wakes only one). Workspaces pass the
    // decode boundary first: one we cannot read is reported and skipped, never fatal.
    let (cached, writer) = reflector::store();
    let health = handles.health.clone();
    let boundary = decode::Boundary::new(ctx.clone());
    let workspace_events = watcher(workspaces, watcher::Config::default().any_semantic())
        .map_ok(move |event| boundary.pass(event))
        .try_filter_map(|event| futures::future::ready(Ok(event)))
        .inspect_ok(move |event| {
            if matches!(event, watcher::Event::InitDone) {
                health.caches_synced.store(true, Ordering::Relaxed);
            }
        });
    let own = ctx.clone();
    let workspace_triggers = reflector::reflector(writer, workspace_events)
        .default_backoff()
        .applied_objects()
        .try_filter(move |ws| futures::future::ready(!own.is_own_write(ws)))
        .map_ok(|ws| vec![workspace_key(&ws)]);
    // A provider change re-queues every workspace that names it or runs on it.
    let by_provider = cached.clone();
    let provider_triggers = provider_events.map_ok(move |p: ComputeProvider| {
        let name = p.name_any();
        by_provider
            .state()
            .into_iter()
            .filter(|ws| names_provider(ws, &name))
            .map(|ws| workspace_key(&ws))
            .collect::<Vec<_>>()
    });
    let triggers = futures::stream::select(workspace_triggers, provider_triggers)
        .filter_map(|batch| {
            futures::future::ready(match batch {
                Ok(keys) => Some(futures::stream::iter(keys)),
                // The watcher re-lists on its own, with backoff.
                Err(error) => {
                    warn!(%error, "watch failed; retrying");
                    None
                }
            })
        })
        .flatten();

    let _inventory = AbortOnDrop(tokio::spawn(inventory::run(ctx.clone(), cached.clone(), handles.health.clone())));
    let _gauges = AbortOnDrop(tokio::spawn(update_gauges(cached.clone(), identity, handles.clone())));
    // In-flight reconciles get this long to finish after the stop signal; each is resumable
    // from its recorded step, so cutting one short is safe.
    let (stopping_tx, mut stopping_rx) = tokio::sync::watch::channel(false);
    let stop = async move {
        stop.await;
        let _ = stopping_tx.send(true);
    };
    let deadline = async move {
        let _ = stopping_rx.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_DEADLINE).await;
        warn!(deadline_s = SHUTDOWN_DEADLINE.as_secs(), "shutdown deadline passed: leaving reconciles unfinished");
    };
    let synced = cached.clone();
    let ready = async move {
        // Err only when the writer is dropped, and then the triggers end too.
        let _ = synced.wait_until_ready().await;
    };
    let run = worker::run(triggers, cached, ready, ctx, usize::from(concurrency), stop);
    tokio::select! {
        _ = run => {}
        _ = deadline => {}
    }
    info!("controller stopped");
}

/// How long in-flight reconciles may run on after the stop signal.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(20);

/// Keeps the in-flight and stalled gauges current.
async fn update_gauges(cached: Store<Workspace>, identity: String, handles: Handles) {
    loop {
        let (mut in_flight, mut stalled) = (0, 0);
        for ws in cached.state() {
            let status = ws.status.as_ref();
            if status.and_then(|s| s.operation.as_ref()).is_some_and(|o| o.holder == identity) {
                in_flight += 1;
            }
            if status.is_some_and(|s| cond::is_true(&s.conditions, cond::STALLED)) {
                stalled += 1;
            }
        }
        handles.metrics.operations_in_flight.set(in_flight);
        handles.metrics.stalled_workspaces.set(stalled);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// The key a workspace is queued and remembered under: namespace and name only. (kube's
/// `ObjectRef::from_obj` also copies the uid and resourceVersion, which no lookup needs and
/// every queued or remembered key would carry.)
pub(crate) fn workspace_key(ws: &Workspace) -> ObjectRef<Workspace> {
    let key = ObjectRef::new(ws.meta().name.as_deref().unwrap_or_default());
    match ws.meta().namespace.as_deref() {
        Some(ns) => key.within(ns),
        None => key,
    }
}

fn names_provider(ws: &Workspace, name: &str) -> bool {
    let status = ws.status.as_ref();
    ws.spec.provider == name
        || status.and_then(|s| s.active_provider.as_deref()) == Some(name)
        || status.and_then(|s| s.instance.as_ref()).is_some_and(|i| i.provider == name)
}

/// The backoff on reconcile errors, per workspace.
const ERROR_BACKOFF: Backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(300));

/// A reconcile failed: try again after 2s, 4s, 8s … capped at 5 minutes, jittered.
fn error_policy(ws: Arc<Workspace>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.inc();
    let key = workspace_key(&ws);
    let failures = {
        let mut memory = ctx.memory();
        let n = memory.errors.entry(key).or_insert(0);
        *n += 1;
        *n
    };
    let delay = ERROR_BACKOFF.jittered(failures);
    if let Some(answer) = writes::too_large(error) {
        protocol::report_too_large(ctx.clone(), ws.clone(), answer, failures);
    }
    warn!(namespace = ws.namespace().as_deref().unwrap_or(""), name = %ws.name_any(), %error, failures, retry_in_s = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}
