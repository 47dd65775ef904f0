//! Test hooks that freeze a reconcile at a chosen point of the protocol, exactly as a
//! killed or paused process would stop there. Unarmed (the default), they cost one read of a
//! watch channel.
//!
//! `arm(point)` freezes every reconcile that reaches `point`. A frozen reconcile stays there
//! until its task is dropped (a killed controller) or `release(point)` lets it go on (a paused
//! process that wakes up, e.g. after another instance has taken its claim over). `frozen_at`
//! tells a test that a reconcile has actually got there.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Points between the protocol's effects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailPoint {
    /// The claim landed; nothing else done.
    AfterClaim,
    /// The old compute is stopped; the commit not yet written.
    AfterStop,
    /// The commit is written; nothing provisioned yet.
    AfterCommit,
    /// The provision call is about to be made, with the epoch of the claim as this reconcile
    /// last saw it.
    BeforeProvision,
    /// The provider created the instance; the finish not yet written.
    AfterProvision,
}

#[derive(Clone)]
pub struct FailPoints {
    armed: Arc<watch::Sender<HashSet<FailPoint>>>,
    /// How many reconciles wait at each point right now.
    frozen: Arc<Mutex<HashMap<FailPoint, usize>>>,
}

impl Default for FailPoints {
    fn default() -> Self {
        Self { armed: Arc::new(watch::Sender::new(HashSet::new())), frozen: Arc::default() }
    }
}

impl FailPoints {
    /// Freezes every reconcile that reaches `point` from now on.
    pub fn arm(&self, point: FailPoint) {
        self.armed.send_modify(|armed| {
            armed.insert(point);
        });
    }

    /// Disarms `point` and lets the reconciles frozen there continue where they stood.
    pub fn release(&self, point: FailPoint) {
        self.armed.send_modify(|armed| {
            armed.remove(&point);
        });
    }

    /// How many reconciles are frozen at `point` right now.
    pub fn frozen_at(&self, point: FailPoint) -> usize {
        lock(&self.frozen).get(&point).copied().unwrap_or(0)
    }

    /// Returns at once when `point` is not armed. When it is, waits until `release(point)`;
    /// without one, never returns: the reconcile freezes there until its task is dropped.
    pub async fn hit(&self, point: FailPoint) {
        if !self.armed.borrow().contains(&point) {
            return;
        }
        let mut armed = self.armed.subscribe();
        tracing::warn!(?point, "failpoint: freezing here");
        let _frozen = Frozen::enter(&self.frozen, point);
        // The sender lives as long as `self`, so this only ends by a release.
        let _ = armed.wait_for(|armed| !armed.contains(&point)).await;
        tracing::warn!(?point, "failpoint released: continuing");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts one reconcile frozen at a point, for as long as it waits there (also when its task
/// is dropped mid-wait).
struct Frozen<'a> {
    counts: &'a Mutex<HashMap<FailPoint, usize>>,
    point: FailPoint,
}

impl<'a> Frozen<'a> {
    fn enter(counts: &'a Mutex<HashMap<FailPoint, usize>>, point: FailPoint) -> Self {
        *lock(counts).entry(point).or_insert(0) += 1;
        Self { counts, point }
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        if let Some(n) = lock(self.counts).get_mut(&self.point) {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A reconcile that hits the armed `point`, once it is frozen there.
    async fn frozen_hit(fp: &FailPoints, point: FailPoint) -> tokio::task::JoinHandle<()> {
        let task = tokio::spawn({
            let fp = fp.clone();
            async move { fp.hit(point).await }
        });
        while fp.frozen_at(point) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task
    }

    #[tokio::test]
    async fn armed_points_freeze_until_released() {
        let fp = FailPoints::default();
        fp.hit(FailPoint::AfterClaim).await; // unarmed: passes
        fp.arm(FailPoint::AfterClaim);
        let task = frozen_hit(&fp, FailPoint::AfterClaim).await;
        assert!(!task.is_finished());
        fp.release(FailPoint::AfterClaim);
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("released").expect("task");
        assert_eq!(fp.frozen_at(FailPoint::AfterClaim), 0);
        fp.hit(FailPoint::AfterClaim).await; // disarmed: passes
    }

    #[tokio::test]
    async fn a_dropped_frozen_reconcile_is_no_longer_counted() {
        let fp = FailPoints::default();
        fp.arm(FailPoint::AfterStop);
        let task = frozen_hit(&fp, FailPoint::AfterStop).await;
        task.abort();
        let _ = task.await;
        assert_eq!(fp.frozen_at(FailPoint::AfterStop), 0);
    }
}
