//! Runs reconciles off the work queue (`queue`): triggers in, at most `concurrency` reconciles
//! at once, each workspace's requeue back into the queue.
//!
//! Why not kube-runtime's `Controller`: its scheduler keeps the triggers it cannot start yet
//! (all workers busy) in a hash set and starts them in hash order, so in a burst some switches
//! wait many passes while later ones go first. Here the line is FIFO.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, Stream, StreamExt};
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::task::JoinSet;
use tracing::{error, warn};

use super::queue::Queue;
use super::{Context, error_policy, protocol, workspace_key};
use crate::api::Workspace;

/// What a reconcile asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Action {
    requeue_after: Option<Duration>,
}

impl Action {
    /// Run again after `after`, unless a change brings it sooner.
    pub const fn requeue(after: Duration) -> Self {
        Self { requeue_after: Some(after) }
    }

    /// Run again only on a change.
    pub const fn await_change() -> Self {
        Self { requeue_after: None }
    }

    pub fn requeue_after(&self) -> Option<Duration> {
        self.requeue_after
    }
}

/// After a reconcile panicked (a bug): try again after this long.
const AFTER_PANIC: Duration = Duration::from_secs(5);

/// At rest a workspace waits for a change, yet it is still looked at once per `RESYNC` (a
/// provider can change without an event): the sweep puts a slice of the cache into the line
/// each `SWEEP_TICK`. No timer per workspace, and no burst ahead of users' work.
const RESYNC: Duration = Duration::from_secs(600);
const SWEEP_TICK: Duration = Duration::from_secs(1);

/// Adds the next slice of the cache from `cursor` (idle keys only); returns the next cursor.
fn sweep(store: &Store<Workspace>, queue: &mut Queue<ObjectRef<Workspace>>, cursor: usize, now: Instant) -> usize {
    let state = store.state();
    if state.is_empty() {
        return 0;
    }
    let ticks = usize::try_from(RESYNC.as_secs() / SWEEP_TICK.as_secs().max(1)).unwrap_or(1).max(1);
    let slice = state.len().div_ceil(ticks);
    for i in 0..slice {
        if let Some(ws) = state.get((cursor + i) % state.len()) {
            queue.add_if_idle(workspace_key(ws), now);
        }
    }
    (cursor + slice) % state.len()
}

/// Serves `triggers` until `stop` resolves or they end, then lets running reconciles finish.
/// Nothing starts before `ready` (the cache's first complete list).
pub async fn run(
    triggers: impl Stream<Item = ObjectRef<Workspace>>,
    store: Store<Workspace>,
    ready: impl Future<Output = ()>,
    ctx: Arc<Context>,
    concurrency: usize,
    stop: impl Future<Output = ()>,
) {
    let mut queue = Queue::default();
    let mut running: JoinSet<Action> = JoinSet::new();
    let mut keys: HashMap<tokio::task::Id, ObjectRef<Workspace>> = HashMap::new();
    let mut triggers = std::pin::pin!(triggers.fuse());
    let mut ready = std::pin::pin!(ready.fuse());
    let mut stop = std::pin::pin!(stop.fuse());
    let (mut is_ready, mut stopping) = (false, false);
    let (mut cursor, mut next_sweep) = (0, Instant::now() + SWEEP_TICK);
    loop {
        let now = Instant::now();
        while is_ready && !stopping && running.len() < concurrency.max(1) {
            let Some((key, since)) = queue.pop(now) else { break };
            ctx.metrics.queue_wait.observe(now.saturating_duration_since(since).as_secs_f64());
            let Some(ws) = store.get(&key) else {
                // Deleted since it was queued.
                queue.done(key, None, now);
                continue;
            };
            let ctx = ctx.clone();
            let handle = running.spawn(async move {
                match protocol::reconcile(ws.clone(), ctx.clone()).await {
                    Ok(action) => action,
                    Err(error) => error_policy(ws, &error, ctx),
                }
            });
            keys.insert(handle.id(), key);
        }
        ctx.metrics.queue_depth.set(i64::try_from(queue.waiting()).unwrap_or(i64::MAX));
        ctx.metrics.reconciles_active.set(i64::try_from(running.len()).unwrap_or(i64::MAX));
        if stopping && running.is_empty() {
            return;
        }
        // A due timer matters only when a worker is free to take it.
        let free = is_ready && !stopping && running.len() < concurrency.max(1);
        let due = queue.next_due().filter(|_| free);
        let timer = async move {
            match due {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            joined = running.join_next_with_id(), if !running.is_empty() => {
                let now = Instant::now();
                let (id, action) = match joined {
                    Some(Ok((id, action))) => (id, action),
                    Some(Err(failed)) => {
                        error!(error = %failed, "a reconcile panicked; retrying later");
                        (failed.id(), Action::requeue(AFTER_PANIC))
                    }
                    None => continue,
                };
                if let Some(key) = keys.remove(&id) {
                    let again = action.requeue_after().and_then(|after| now.checked_add(after));
                    queue.done(key, again, now);
                }
            }
            trigger = triggers.next(), if !stopping => match trigger {
                Some(key) => queue.add(key, Instant::now()),
                None => {
                    warn!("the watch streams ended: stopping");
                    stopping = true;
                }
            },
            () = &mut ready, if !is_ready => is_ready = true,
            () = tokio::time::sleep_until(next_sweep.into()), if is_ready && !stopping => {
                cursor = sweep(&store, &mut queue, cursor, Instant::now());
                next_sweep = Instant::now() + SWEEP_TICK;
            }
            () = &mut stop, if !stopping => stopping = true,
            () = timer => {}
        }
    }
}
