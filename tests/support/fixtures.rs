//! Switchyard-specific test helpers: providers, in-process controller instances, waiting on
//! workspace state, and the DESIGN.md §3 invariants checked from the providers' ledger.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use switchyard::api::conditions as cond;
use switchyard::api::{ComputeProvider, Workspace, WorkspaceStatus};
use switchyard::controller::{self, FailPoint, FailPoints, Handles, Settings};
use switchyard::provider::Dispatcher;
use switchyard::provider::simulated::{Clouds, LedgerEntry, LiveInstance, check_ledger, check_live_instances};
use switchyard::runtime::Backoff;
use switchyard::telemetry::Metrics;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::eventually;
use super::sims::SIM_CALL_TIMEOUT_SECONDS;

/// A short name unique within this test binary's control plane (DNS-1123 label).
pub fn unique(prefix: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id() % 100_000, SEQ.fetch_add(1, Ordering::SeqCst))
}

/// Creates a simulated ComputeProvider; a call to it that hangs fails after
/// [`SIM_CALL_TIMEOUT_SECONDS`], as one to a provider-sim does.
pub async fn simulated_provider(client: &Client, name: &str, provision_ms: u64, stop_ms: u64) {
    let mut p = ComputeProvider::simulated(name, provision_ms, stop_ms);
    p.spec.call_timeout_seconds = Some(SIM_CALL_TIMEOUT_SECONDS);
    Api::<ComputeProvider>::all(client.clone()).create(&PostParams::default(), &p).await.expect("create provider");
}

/// A running workspace `name` on `provider`, with the tests' template.
pub fn workspace(name: &str, provider: &str) -> Workspace {
    Workspace::builder(name, provider).busybox().build()
}

/// Test-speed settings: short lease and backoffs, one namespace.
pub fn settings(identity: &str, namespace: &str) -> Settings {
    let mut s = Settings::new(identity);
    s.namespace = Some(namespace.to_string());
    s.claim_lease = Duration::from_secs(2);
    s.provision_backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
    s.stop_attempts = 2;
    s.stop_backoff = Duration::from_millis(50);
    s.stop_retry = Backoff::new(Duration::from_millis(300), Duration::from_secs(1));
    // Off, so that a leak shows in the ledger checks instead of being collected; the
    // inventory's own tests turn it on.
    s.inventory_interval = None;
    s
}

/// A controller instance running in this process.
pub struct Instance {
    pub identity: String,
    pub metrics: Arc<Metrics>,
    pub failpoints: FailPoints,
    task: Option<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Instance {
    pub fn start(client: &Client, settings: Settings, clouds: &Clouds) -> Self {
        Self::start_with(client, settings, clouds, FailPoints::default())
    }

    pub fn start_with(client: &Client, settings: Settings, clouds: &Clouds, failpoints: FailPoints) -> Self {
        Self::start_with_handles(client, settings, clouds, Handles { failpoints, ..Handles::default() })
    }

    /// An instance whose reconciles freeze when they reach `point`.
    pub fn start_frozen_at(client: &Client, settings: Settings, clouds: &Clouds, point: FailPoint) -> Self {
        let failpoints = FailPoints::default();
        failpoints.arm(point);
        Self::start_with(client, settings, clouds, failpoints)
    }

    pub fn start_with_handles(client: &Client, settings: Settings, clouds: &Clouds, handles: Handles) -> Self {
        let failpoints = handles.failpoints.clone();
        let metrics = handles.metrics.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let identity = settings.identity.clone();
        let task = tokio::spawn(controller::run(
            client.clone(),
            settings,
            Dispatcher::new(clouds.clone()).with_client(client.clone()),
            handles,
            async move {
                let _ = rx.await;
            },
        ));
        Self { identity, metrics, failpoints, task: Some(task), stop: Some(tx) }
    }

    /// Whether the controller is still running: it has neither stopped nor panicked.
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Kills the instance where it stands, as a crashed process would stop.
    pub fn kill(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Graceful shutdown: in-flight reconciles finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub fn status(ws: &Workspace) -> WorkspaceStatus {
    ws.status.clone().unwrap_or_default()
}

/// Waits until `name` is Ready, with its compute on `provider`.
pub async fn wait_ready_on(api: &Api<Workspace>, name: &str, provider: &str, timeout: Duration) -> Workspace {
    eventually(&format!("{name} ready on {provider}"), timeout, || async {
        api.get(name).await.ok().filter(|ws| ws.settled_on(provider))
    })
    .await
}

/// Waits until `check` holds for `name`.
pub async fn wait_for(
    api: &Api<Workspace>,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Workspace) -> bool,
) -> Workspace {
    eventually(what, timeout, || async { api.get(name).await.ok().filter(|ws| check(ws)) }).await
}

/// Whether `ws` is Stalled=True with `reason`.
pub fn stalled_with(ws: &Workspace, reason: cond::ConditionReason) -> bool {
    condition(ws, cond::STALLED) == Some(("True".into(), reason.as_str().into()))
}

/// The message of `ws`'s Stalled condition ("" without one).
pub fn stalled_message(ws: &Workspace) -> String {
    cond::get(&status(ws).conditions, cond::STALLED).map(|c| c.message.clone()).unwrap_or_default()
}

/// Waits until `name` is Stalled=True with `reason`.
pub async fn wait_stalled(
    api: &Api<Workspace>,
    name: &str,
    reason: cond::ConditionReason,
    timeout: Duration,
) -> Workspace {
    let what = format!("{name} Stalled=True {}", reason.as_str());
    wait_for(api, name, &what, timeout, |ws| stalled_with(ws, reason)).await
}

/// Waits until every workspace in `names` has converged (DESIGN.md §3.5): on its provider,
/// running as its spec says, no operation, Ready, status of the current generation.
pub async fn wait_all_converged(api: &Api<Workspace>, names: &[String], timeout: Duration) {
    eventually("all workspaces converged", timeout, || async {
        let list = api.list(&Default::default()).await.ok()?;
        let converged = list
            .items
            .iter()
            .filter(|ws| names.contains(&ws.metadata.name.clone().unwrap_or_default()))
            .all(|ws| ws.settled_on(&ws.spec.provider));
        (converged && list.items.len() >= names.len()).then_some(())
    })
    .await
}

/// DESIGN.md §3.1 from the providers' side: every call in `ledger` was made under a claim
/// (holder, epoch) that the API server recorded for its caller, as `seen` watched it.
pub fn assert_calls_under_held_claims(ledger: &[LedgerEntry], seen: &Seen) {
    for e in ledger {
        let held = seen.claims.get(&e.workspace_uid).is_some_and(|c| c.contains(&(e.caller.clone(), e.epoch)));
        assert!(held, "call {e:?} was made under a claim the API server never recorded for its caller");
    }
}

/// Every (provider, instance id) that workspace statuses in `namespace` name.
pub async fn named_instances(api: &Api<Workspace>) -> Vec<(String, String)> {
    let list = api.list(&ListParams::default()).await.expect("list workspaces");
    list.items.iter().filter_map(|ws| status(ws).instance.map(|i| (i.provider, i.id))).collect()
}

/// DESIGN.md §3 invariants 2, 3, 4 and 6, from the in-process providers' side.
pub async fn assert_invariants(api: &Api<Workspace>, clouds: &Clouds) {
    assert_history(api, &clouds.ledger(), &clouds.live_instances()).await;
}

/// DESIGN.md §3 invariants 2, 3, 4 (from `ledger`, every provider's calls as one history) and
/// 6 (`live`, every provider's Running instances, against what the workspace statuses of
/// `api`'s namespace name).
pub async fn assert_history(api: &Api<Workspace>, ledger: &[LedgerEntry], live: &[LiveInstance]) {
    let mut violations: Vec<String> = check_ledger(ledger).iter().map(|v| v.to_string()).collect();
    let named = named_instances(api).await;
    violations.extend(check_live_instances(live, &named).iter().map(|v| v.to_string()));
    assert!(violations.is_empty(), "invariants violated:\n{}", violations.join("\n"));
}

/// The ledger entries of one workspace.
pub fn ledger_of(clouds: &Clouds, uid: &str) -> Vec<LedgerEntry> {
    clouds.ledger().into_iter().filter(|e| e.workspace_uid == uid).collect()
}

/// Every version of the workspaces a watch selects, from the moment `start` returns: it returns
/// once the watch is established (its initial list done), so no version written after it is
/// missed. The listed versions come first, and a deletion's last version (finalizers gone) ends
/// an object's; a version seen again (a relist) is not repeated.
pub struct Versions {
    /// Each version, and whether it is the last (a deletion event's).
    rx: mpsc::UnboundedReceiver<(Workspace, bool)>,
    task: JoinHandle<()>,
}

impl Versions {
    pub async fn start(api: Api<Workspace>, config: watcher::Config) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (synced, is_synced) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut synced = Some(synced);
            let mut last = std::collections::HashMap::new();
            let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
            while let Some(event) = stream.next().await {
                let (ws, deleted) = match event {
                    Ok(watcher::Event::Apply(ws) | watcher::Event::InitApply(ws)) => (ws, false),
                    Ok(watcher::Event::Delete(ws)) => (ws, true),
                    Ok(watcher::Event::InitDone) => {
                        if let Some(synced) = synced.take() {
                            let _ = synced.send(());
                        }
                        continue;
                    }
                    _ => continue,
                };
                let rv = ws.resource_version();
                if last.insert(ws.uid(), rv.clone()) == Some(rv) {
                    continue;
                }
                if tx.send((ws, deleted)).is_err() {
                    return;
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(90), is_synced).await.expect("watch established").expect("watch task");
        Self { rx, task }
    }

    /// The versions of workspace `name` in `api`'s namespace.
    pub async fn of(api: &Api<Workspace>, name: &str) -> Self {
        Self::start(api.clone(), watcher::Config::default().fields(&format!("metadata.name={name}"))).await
    }

    /// The versions seen from now up to the first for which `done` holds, that one included.
    pub async fn until(&mut self, timeout: Duration, done: impl Fn(&Workspace) -> bool) -> Vec<Workspace> {
        self.until_seen(timeout, |ws, _| done(ws)).await
    }

    /// The versions seen from now up to the deletion of workspace `name`, its last included.
    pub async fn until_deleted(&mut self, timeout: Duration, name: &str) -> Vec<Workspace> {
        self.until_seen(timeout, |ws, deleted| deleted && ws.name_any() == name).await
    }

    async fn until_seen(&mut self, timeout: Duration, done: impl Fn(&Workspace, bool) -> bool) -> Vec<Workspace> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let next = tokio::time::timeout_at(deadline, self.rx.recv()).await;
            let (ws, deleted) = next.unwrap_or_else(|_| panic!("not seen within {timeout:?}")).expect("watch ended");
            let stop = done(&ws, deleted);
            seen.push(ws);
            if stop {
                return seen;
            }
        }
    }

    /// The versions already seen, without waiting.
    fn drain(&mut self) -> Vec<Workspace> {
        std::iter::from_fn(|| self.rx.try_recv().ok().map(|(ws, _)| ws)).collect()
    }
}

impl Drop for Versions {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches every workspace in a namespace and records each version seen; checks §3.7 on each.
pub struct StatusWatch(Versions);

/// What a status watch saw.
pub struct Seen {
    pub versions: usize,
    pub breaches: Vec<String>,
    /// Per workspace uid: every (holder, epoch) of an operation seen.
    pub claims: BTreeMap<String, Vec<(String, i64)>>,
}

impl StatusWatch {
    pub async fn start(api: Api<Workspace>) -> Self {
        Self(Versions::start(api, watcher::Config::default()).await)
    }

    /// What the watch saw until now.
    pub async fn finish(mut self) -> Seen {
        let all = self.0.drain();
        let mut claims: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
        for ws in &all {
            if let Some(op) = status(ws).operation {
                let seen = claims.entry(ws.uid().unwrap_or_default()).or_default();
                if !seen.contains(&(op.holder.clone(), op.epoch)) {
                    seen.push((op.holder, op.epoch));
                }
            }
        }
        let breaches = all.iter().filter_map(|ws| ws.kstatus_breach()).collect();
        Seen { versions: all.len(), breaches, claims }
    }
}

/// `kubectl patch workspace NAME --type merge -p '{"spec":{"provider":P}}'`, as users switch.
pub fn switch_with_kubectl(namespace: &str, name: &str, provider: &str) {
    let patch = json!({"spec": {"provider": provider}}).to_string();
    let out = super::kubectl(&["patch", "workspace", name, "-n", namespace, "--type", "merge", "-p", &patch]);
    assert!(out.status.success(), "kubectl patch failed: {}", super::stderr(&out));
}

/// Merge-patches a workspace's spec through the API.
pub async fn patch_spec(api: &Api<Workspace>, name: &str, spec: serde_json::Value) {
    use kube::api::{Patch, PatchParams};
    api.patch(name, &PatchParams::default(), &Patch::Merge(json!({ "spec": spec }))).await.expect("patch spec");
}

/// Events recorded for a workspace (events.k8s.io), as (reason, note).
pub async fn events_of(client: &Client, namespace: &str, name: &str) -> Vec<(String, String)> {
    use k8s_openapi::api::events::v1::Event;
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let list = api.list(&ListParams::default()).await.expect("list events");
    list.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// Waits until an Event with `reason` is published about workspace `name`; returns its Events.
pub async fn wait_for_event(
    client: &Client,
    namespace: &str,
    name: &str,
    reason: &str,
    timeout: Duration,
) -> Vec<(String, String)> {
    eventually(&format!("a {reason} event on {name}"), timeout, || async {
        let events = events_of(client, namespace, name).await;
        events.iter().any(|(r, _)| r == reason).then_some(events)
    })
    .await
}

/// The condition `type_` of a workspace as (status, reason).
pub fn condition(ws: &Workspace, type_: &str) -> Option<(String, String)> {
    cond::get(&status(ws).conditions, type_).map(|c| (c.status.clone(), c.reason.clone()))
}

/// Who holds Lease `name` now, if anyone.
pub async fn lease_holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases.get_opt(name).await.ok().flatten()?.spec?.holder_identity
}
