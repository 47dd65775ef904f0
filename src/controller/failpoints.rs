//! Test hooks that freeze a reconcile at a chosen point of the protocol, exactly as a
//! killed or paused process would stop there. Unarmed (the default), they cost one lock.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Points between the protocol's effects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailPoint {
    /// The claim landed; nothing else done.
    AfterClaim,
    /// The old compute is stopped; the commit not yet written.
    AfterStop,
    /// The commit is written; nothing provisioned yet.
    AfterCommit,
    /// The provider created the instance; the finish not yet written.
    AfterProvision,
}

#[derive(Clone, Default)]
pub struct FailPoints {
    armed: Arc<Mutex<HashSet<FailPoint>>>,
}

impl FailPoints {
    pub fn arm(&self, point: FailPoint) {
        self.armed.lock().unwrap_or_else(|e| e.into_inner()).insert(point);
    }

    /// Never returns when `point` is armed: the reconcile freezes there until its task is dropped.
    pub async fn hit(&self, point: FailPoint) {
        let armed = self.armed.lock().unwrap_or_else(|e| e.into_inner()).contains(&point);
        if armed {
            tracing::warn!(?point, "failpoint: freezing here");
            std::future::pending::<()>().await;
        }
    }
}
