//! Records every version of every workspace in a namespace, as a watch delivers it, with the
//! time it arrived: the history the campaign's checkers judge.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use switchyard::api::Workspace;
use tokio::task::JoinHandle;

use super::checks::{Claim, Observed};

/// A running watch; dropping it stops the watch.
pub struct Recorder {
    seen: Arc<Mutex<Vec<Observed>>>,
    task: JoinHandle<()>,
}

/// One workspace version as the checkers see it.
pub fn observe(ws: &Workspace, at: SystemTime) -> Observed {
    let status = ws.status.clone().unwrap_or_default();
    Observed {
        at,
        uid: ws.uid().unwrap_or_default(),
        name: ws.name_any(),
        resource_version: ws.resource_version().unwrap_or_default(),
        generation: ws.metadata.generation,
        epoch: status.epoch,
        operation: status.operation.map(|o| Claim { id: o.id, holder: o.holder, epoch: o.epoch }),
        breach: ws.kstatus_breach(),
    }
}

impl Recorder {
    pub fn start(api: Api<Workspace>) -> Self {
        let seen: Arc<Mutex<Vec<Observed>>> = Arc::default();
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            // A relist after a watch restart delivers versions again: keep each once.
            let mut versions: HashSet<(String, String)> = HashSet::new();
            let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
            while let Some(event) = stream.next().await {
                let ws = match event {
                    Ok(watcher::Event::Apply(ws)) | Ok(watcher::Event::InitApply(ws)) => ws,
                    _ => continue,
                };
                let o = observe(&ws, SystemTime::now());
                if versions.insert((o.uid.clone(), o.resource_version.clone())) {
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(o);
                }
            }
        });
        Self { seen, task }
    }

    /// Everything seen so far, in arrival order.
    pub fn history(&self) -> Vec<Observed> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
