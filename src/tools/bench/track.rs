//! Per-workspace timing, observed from outside through a watch: when the request was sent, when
//! the claim became visible, when the old compute was recorded stopped, when the workspace was
//! Ready on its target. Every version is delivered by a watch, so each step is seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::warn;

use super::BenchError;
use crate::api::{OperationKind, Step, Workspace};

/// How long the initial list of the (empty) namespace may take.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// When each step of one workspace was first seen.
#[derive(Clone, Copy, Debug, Default)]
pub struct Marks {
    pub sent: Option<Instant>,
    pub claimed: Option<Instant>,
    pub old_stopped: Option<Instant>,
    pub ready: Option<Instant>,
}

struct State {
    kind: OperationKind,
    target: String,
    marks: HashMap<String, Marks>,
    ready: usize,
    ready_tx: watch::Sender<usize>,
}

pub struct Tracker {
    state: Arc<Mutex<State>>,
    ready_rx: watch::Receiver<usize>,
    task: JoinHandle<()>,
}

impl Tracker {
    /// Starts watching `api` and returns once the initial list is done.
    pub async fn start(api: Api<Workspace>, namespace: &str) -> Result<Self, BenchError> {
        let (ready_tx, ready_rx) = watch::channel(0);
        let state = Arc::new(Mutex::new(State {
            kind: OperationKind::Provision,
            target: String::new(),
            marks: HashMap::new(),
            ready: 0,
            ready_tx,
        }));
        let (synced_tx, synced_rx) = oneshot::channel();
        let task = tokio::spawn(watch_loop(api, state.clone(), synced_tx));
        match tokio::time::timeout(SYNC_TIMEOUT, synced_rx).await {
            Ok(Ok(())) => Ok(Self { state, ready_rx, task }),
            _ => {
                task.abort();
                Err(BenchError::WatchNotSynced { namespace: namespace.to_string(), after: SYNC_TIMEOUT })
            }
        }
    }

    /// Starts a phase: `names` are expected to reach Ready on `target` through a `kind` operation.
    pub fn expect(&self, kind: OperationKind, target: &str, names: &[String]) {
        let mut st = lock(&self.state);
        st.kind = kind;
        st.target = target.to_string();
        st.marks = names.iter().map(|n| (n.clone(), Marks::default())).collect();
        st.ready = 0;
        st.ready_tx.send_replace(0);
    }

    /// Marks the request for `name` as sent now.
    pub fn sent(&self, name: &str) {
        if let Some(m) = lock(&self.state).marks.get_mut(name) {
            m.sent = Some(Instant::now());
        }
    }

    /// Waits until every expected workspace is Ready, or `timeout`; returns how many are.
    pub async fn wait_all(&self, timeout: Duration) -> usize {
        let total = lock(&self.state).marks.len();
        let mut rx = self.ready_rx.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|&n| n >= total)).await;
        lock(&self.state).ready
    }

    pub fn marks(&self) -> Vec<Marks> {
        lock(&self.state).marks.values().copied().collect()
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

async fn watch_loop(api: Api<Workspace>, state: Arc<Mutex<State>>, synced: oneshot::Sender<()>) {
    let mut synced = Some(synced);
    let mut events = watcher(api, watcher::Config::default()).default_backoff().boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(ws) | watcher::Event::InitApply(ws)) => observe(&mut lock(&state), &ws),
            Ok(watcher::Event::InitDone) => {
                if let Some(tx) = synced.take() {
                    let _ = tx.send(());
                }
            }
            Ok(_) => {}
            // The watcher re-lists on its own (with backoff); timings stay valid, only late.
            Err(error) => warn!(%error, "bench watch failed; retrying"),
        }
    }
}

fn observe(st: &mut State, ws: &Workspace) {
    let Some(name) = ws.metadata.name.as_deref() else { return };
    let (kind, target) = (st.kind, st.target.clone());
    let Some(m) = st.marks.get_mut(name) else { return };
    if m.ready.is_some() {
        return;
    }
    let now = Instant::now();
    let op = ws.operation();
    if let Some(op) = op.filter(|o| o.kind == kind && o.to.as_deref() == Some(target.as_str())) {
        m.claimed.get_or_insert(now);
        if op.step == Step::OldStopped {
            m.old_stopped.get_or_insert(now);
        }
    }
    if ws.settled_on(&target) {
        m.ready = Some(now);
        st.ready += 1;
        st.ready_tx.send_replace(st.ready);
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
