//! The ceiling: how many resourceVersion-guarded status merge patches per second the API server
//! takes from a plain kube client, on the same server and the same objects the controller just
//! switched. Like the controller, each workspace gets a chain of writes, each guarded by the
//! resourceVersion the previous one returned; workspaces are written concurrently.
//!
//! Two request mixes: [`Mix::Status`] is the status writes alone; [`Mix::Full`] is what a
//! switch costs the API server in all, from a plain client: the user's spec patch, the chained
//! status writes, and one Event.
//!
//! While a ceiling is measured, as many watches of the namespace are open as during a profile
//! (the controller's and the bench's own): the API server sends every write to each watcher,
//! and that fan-out is part of what a switch costs it.

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::info;

use super::process::{CpuSample, CpuUsage};
use super::track::Tracker;
use super::{BenchError, Doing};
use crate::api::Workspace;

/// One concurrency level of the ceiling.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CeilingLevel {
    pub concurrency: usize,
    /// Writes answered 200.
    pub writes: u64,
    pub conflicts: u64,
    pub errors: u64,
    pub seconds: f64,
    pub writes_per_s: f64,
    pub cpu: CpuUsage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// False when the level ran into the phase timeout.
    pub finished: bool,
}

/// Which requests make up one workspace's chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mix {
    /// The guarded status writes only.
    #[default]
    Status,
    /// A spec merge patch, the guarded status writes, one Event: a switch's whole request mix.
    Full,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ceiling {
    #[serde(default)]
    pub mix: Mix,
    pub namespace: String,
    pub workspaces: usize,
    /// Guarded writes chained per workspace (the controller's status writes per switch).
    pub writes_per_workspace: usize,
    pub levels: Vec<CeilingLevel>,
    /// The level with the most writes per second.
    pub best: Option<CeilingLevel>,
}

/// A workspace and where its write chain stands.
struct Target {
    name: String,
    uid: String,
    resource_version: String,
    epoch: i64,
}

#[derive(Default)]
struct Tally {
    writes: u64,
    conflicts: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Watches of the workspaces open during a profile: the controller's and the bench's.
const WATCHES: usize = 2;

/// Runs every concurrency level in `levels` over the workspaces of `namespace`.
pub async fn measure(
    client: &Client,
    namespace: &str,
    writes_per_workspace: usize,
    mix: Mix,
    levels: &[usize],
    timeout: Duration,
    apiserver: Option<u32>,
) -> Result<Ceiling, BenchError> {
    let api: Api<Workspace> = Api::namespaced(client.clone(), namespace);
    // Trackers that expect nothing: watches that take in every event, as a profile's do.
    let mut watches = Vec::new();
    for _ in 0..WATCHES {
        watches.push(Tracker::start(api.clone(), namespace).await?);
    }
    let api = &api;
    let mut results = Vec::new();
    let mut workspaces = 0;
    for &concurrency in levels {
        // Fresh resourceVersions before each level (outside the clock).
        let list = api.list(&ListParams::default()).await.doing(|| "list workspaces for the ceiling".into())?;
        workspaces = list.items.len();
        let targets: Vec<Target> = list
            .items
            .iter()
            .map(|ws| Target {
                name: ws.name_any(),
                uid: ws.uid().unwrap_or_default(),
                resource_version: ws.resource_version().unwrap_or_default(),
                epoch: ws.status.as_ref().map(|s| s.epoch).unwrap_or_default(),
            })
            .collect();
        let cpu_before = CpuSample::take(None, apiserver)?;
        let t0 = Instant::now();
        let run = stream::iter(targets)
            .map(|t| write_chain(api, t, writes_per_workspace, mix))
            .buffer_unordered(concurrency.max(1))
            .fold(Tally::default(), |mut sum, t| async move {
                sum.writes += t.writes;
                sum.conflicts += t.conflicts;
                sum.errors += t.errors;
                sum.first_error = sum.first_error.or(t.first_error);
                sum
            });
        let (tally, finished) = match tokio::time::timeout(timeout, run).await {
            Ok(tally) => (tally, true),
            Err(_) => (Tally::default(), false),
        };
        let seconds = t0.elapsed().as_secs_f64();
        let cpu = CpuSample::take(None, apiserver)?.since(&cpu_before);
        let level = CeilingLevel {
            concurrency,
            writes: tally.writes,
            conflicts: tally.conflicts,
            errors: tally.errors,
            seconds,
            writes_per_s: if seconds > 0.0 { tally.writes as f64 / seconds } else { 0.0 },
            cpu,
            first_error: tally.first_error,
            finished,
        };
        info!(
            concurrency,
            writes = level.writes,
            conflicts = level.conflicts,
            errors = level.errors,
            writes_per_s = level.writes_per_s,
            ?mix,
            "ceiling level done"
        );
        results.push(level);
    }
    watches.into_iter().for_each(Tracker::stop);
    let best = results
        .iter()
        .filter(|l| l.finished && l.errors == 0)
        .max_by(|a, b| a.writes_per_s.total_cmp(&b.writes_per_s))
        .cloned();
    Ok(Ceiling { mix, namespace: namespace.to_string(), workspaces, writes_per_workspace, levels: results, best })
}

/// `n` guarded status writes to one workspace, each on the resourceVersion the previous returned.
/// Each bumps `status.epoch` (so none is a no-op the server could skip) and rewrites `lastSwitch`.
/// With [`Mix::Full`], a spec patch comes first (as the user's switch does) and one Event last.
async fn write_chain(api: &Api<Workspace>, mut t: Target, n: usize, mix: Mix) -> Tally {
    let mut tally = Tally::default();
    if mix == Mix::Full {
        let provider = if t.epoch % 2 == 0 { "ceiling-a" } else { "ceiling-b" };
        let spec = json!({"spec": {"provider": provider}});
        match api.patch(&t.name, &PatchParams::default(), &Patch::Merge(&spec)).await {
            Ok(ws) => t.resource_version = ws.resource_version().unwrap_or_default(),
            Err(e) => {
                tally.errors += 1;
                tally.first_error.get_or_insert_with(|| format!("{}: spec patch: {e}", t.name));
            }
        }
    }
    for _ in 0..n {
        let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let body = json!({
            "metadata": {"resourceVersion": t.resource_version},
            "status": {
                "epoch": t.epoch + 1,
                "lastSwitch": {"from": "ceiling-a", "to": "ceiling-b", "startedAt": now, "completedAt": now},
            },
        });
        match api.patch_status(&t.name, &PatchParams::default(), &Patch::Merge(&body)).await {
            Ok(ws) => {
                tally.writes += 1;
                t.resource_version = ws.resource_version().unwrap_or_default();
                t.epoch += 1;
            }
            Err(e) => {
                if matches!(&e, kube::Error::Api(s) if s.code == 409) {
                    tally.conflicts += 1;
                } else {
                    tally.errors += 1;
                    tally.first_error.get_or_insert_with(|| format!("{}: {e}", t.name));
                }
                // Nobody else writes these objects now: re-read and go on with the chain.
                match api.get(&t.name).await {
                    Ok(ws) => {
                        t.resource_version = ws.resource_version().unwrap_or_default();
                        t.epoch = ws.status.as_ref().map(|s| s.epoch).unwrap_or_default();
                    }
                    Err(_) => return tally,
                }
            }
        }
    }
    if mix == Mix::Full
        && let Err(e) = publish_event(api, &t).await
    {
        tally.errors += 1;
        tally.first_error.get_or_insert_with(|| format!("{}: event: {e}", t.name));
    }
    tally
}

/// One Event about the workspace, shaped as the controller's (events.k8s.io/v1).
async fn publish_event(api: &Api<Workspace>, t: &Target) -> kube::Result<()> {
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::events::v1::Event;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    let namespace = api.namespace().unwrap_or_default().to_string();
    let now = jiff::Timestamp::now();
    let event = Event {
        action: Some("Provision".into()),
        reason: Some("SwitchCompleted".into()),
        note: Some(format!("switched {} from ceiling-a to ceiling-b", t.name)),
        event_time: Some(MicroTime(now)),
        regarding: Some(ObjectReference {
            api_version: Some("switchyard.dev/v1alpha1".into()),
            kind: Some("Workspace".into()),
            name: Some(t.name.clone()),
            namespace: Some(namespace.clone()),
            uid: Some(t.uid.clone()),
            ..Default::default()
        }),
        reporting_controller: Some("switchyard.dev/bench-ceiling".into()),
        reporting_instance: Some("bench".into()),
        type_: Some("Normal".into()),
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}", t.name, now.as_nanosecond().unsigned_abs())),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    let events: Api<Event> = Api::namespaced(api.clone().into_client(), &namespace);
    events.create(&Default::default(), &event).await.map(|_| ())
}
