//! Inventory reconciliation: correctness never rests on fencing alone (DESIGN.md §2).
//!
//! # Flow
//! Every `inventory_interval`, for each ComputeProvider: list, page by page, the instances it
//! holds for this cluster (`Settings::cluster`). A running instance is *accounted for* when a
//! workspace status names it (`status.instance`) or when it was created under the key of an
//! operation in flight (`<uid>.<operation.id>`). An instance unaccounted for in every pass for
//! longer than `inventory_grace` is read against a fresh copy of its workspace (not the cache)
//! and, if still unaccounted for, stopped under the workspace's current epoch — or, when the
//! workspace is gone, under the newest epoch the provider has seen for it — with an Event on
//! the workspace (when it exists) and the `leaks_collected` metric.
//!
//! # Guarantees
//! - Whatever leaked it (a lost answer, a paused former holder that slipped past an unreachable
//!   fence, a manual create, a deleted workspace), an unnamed instance is stopped within
//!   `inventory_grace` + 2 × `inventory_interval` of appearing (plus one listing), while its
//!   provider answers.
//! - An instance created under the key of an operation in flight is never collected: its holder
//!   may still record it. The grace period covers a create whose claim the cache has not seen.
//! - Instances of other clusters are never listed, so never touched.
//!
//! # Caveats
//! - Runs where reconciles run (the leader, or every instance without election). Two
//!   collectors stopping the same instance is harmless: a stop is idempotent.
//! - A provider that cannot list is skipped and counted (`inventory_errors`); its instances
//!   keep their place in the grace period until it answers again.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use kube::ResourceExt;
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use tracing::{debug, info, warn};

use super::Context;
use crate::api::conditions::{EventAction, EventReason};
use crate::api::{ComputeProvider, Workspace};
use crate::provider::{CallContext, InstanceState, ListedInstance};
use crate::telemetry::{Health, Metrics};

/// Instances asked for per page, and pages read per provider and pass at most.
const PAGE: u32 = 500;
const MAX_PAGES: usize = 1000;
/// The operation id inventory stops carry, so ledgers tell them from a claim's.
pub const INVENTORY_OPERATION: &str = "inventory";

/// Runs inventory passes until aborted, once the workspace cache is synced.
pub async fn run(ctx: Arc<Context>, cached: Store<Workspace>, health: Arc<Health>) {
    let Some(every) = ctx.settings.inventory_interval else { return };
    let mut unaccounted = HashMap::new();
    loop {
        tokio::time::sleep(every).await;
        // An empty cache would make every instance look unnamed (the fresh read still guards).
        if !health.caches_synced.load(Ordering::Relaxed) {
            continue;
        }
        pass(&ctx, &cached, &mut unaccounted).await;
        ctx.memory().retain(|key| cached.get(key).is_some());
    }
}

/// What the cached statuses account for. Borrows from them: at tens of thousands of workspaces a
/// copy of every name would be megabytes per pass.
#[derive(Default)]
struct Accounted<'a> {
    /// (provider, instance id) named by a status.
    named: HashSet<(&'a str, &'a str)>,
    /// Provision keys of named instances, and of operations in flight.
    keys: HashSet<Cow<'a, str>>,
}

impl<'a> Accounted<'a> {
    fn of(workspaces: impl Iterator<Item = &'a Workspace>) -> Self {
        let mut a = Self::default();
        for ws in workspaces {
            a.add(ws);
        }
        a
    }

    fn add(&mut self, ws: &'a Workspace) {
        let Some(status) = ws.status.as_ref() else { return };
        if let Some(i) = &status.instance {
            self.named.insert((i.provider.as_str(), i.id.as_str()));
            self.keys.insert(Cow::Borrowed(i.key.as_str()));
        }
        if let Some(key) = ws.in_flight_key() {
            self.keys.insert(Cow::Owned(key));
        }
    }

    fn covers(&self, provider: &str, item: &ListedInstance) -> bool {
        self.keys.contains(item.key.as_str()) || self.named.contains(&(provider, item.id.as_str()))
    }
}

/// One pass over every provider. `unaccounted` keeps when each unaccounted instance was first
/// seen, across passes. Pages are handled as they arrive, so a pass holds one page at a time.
async fn pass(ctx: &Context, cached: &Store<Workspace>, unaccounted: &mut HashMap<(String, String), Instant>) {
    let state = cached.state();
    let accounted = Accounted::of(state.iter().map(|w| &**w));
    let mut still = HashSet::new();
    for provider in ctx.providers.state() {
        let name = provider.name_any();
        let mut page: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let got = match list_page(ctx, &provider, page.as_deref()).await {
                Ok(got) => got,
                Err(error) => {
                    Metrics::count(&ctx.metrics.inventory_errors, &name);
                    warn!(provider = %name, %error, "inventory: listing failed; trying again next pass");
                    still.extend(unaccounted.keys().filter(|(p, _)| *p == name).cloned());
                    break;
                }
            };
            for item in got.items.into_iter().filter(|i| i.state == InstanceState::Running) {
                if accounted.covers(&name, &item) {
                    continue;
                }
                let at = (name.clone(), item.id.clone());
                let first = *unaccounted.entry(at.clone()).or_insert_with(Instant::now);
                still.insert(at);
                if first.elapsed() >= ctx.settings.inventory_grace {
                    collect(ctx, &provider, &item).await;
                } else {
                    debug!(provider = %name, instance = %item.id, key = %item.key, "inventory: unaccounted instance in its grace period");
                }
            }
            match got.next {
                Some(next) if !next.is_empty() => page = Some(next),
                _ => break,
            }
        }
    }
    unaccounted.retain(|at, _| still.contains(at));
    ctx.metrics.inventory_passes.inc();
}

/// One page of `provider`'s instances for this cluster.
async fn list_page(
    ctx: &Context,
    provider: &ComputeProvider,
    page: Option<&str>,
) -> Result<crate::provider::InstancePage, String> {
    ctx.dispatcher.list(provider, &ctx.settings.cluster, page, PAGE).await.map_err(|e| e.to_string())
}

/// Every page of `provider`'s instances for this cluster.
pub(super) async fn list_all(ctx: &Context, provider: &ComputeProvider) -> Result<Vec<ListedInstance>, String> {
    let mut items = Vec::new();
    let mut page: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let got = list_page(ctx, provider, page.as_deref()).await?;
        items.extend(got.items);
        match got.next {
            Some(next) if !next.is_empty() => page = Some(next),
            _ => return Ok(items),
        }
    }
    Err(format!("more than {MAX_PAGES} pages"))
}

/// Stops `item` unless a fresh read of its workspace accounts for it.
async fn collect(ctx: &Context, provider: &ComputeProvider, item: &ListedInstance) {
    let name = provider.name_any();
    let fresh = if item.namespace.is_empty() || item.name.is_empty() {
        None
    } else {
        match ctx.workspaces(&item.namespace).get_opt(&item.name).await {
            Ok(ws) => ws.filter(|ws| ws.metadata.uid.as_deref() == Some(item.workspace_uid.as_str())),
            Err(error) => {
                warn!(provider = %name, instance = %item.id, %error, "inventory: cannot read the workspace; not collecting");
                return;
            }
        }
    };
    if fresh.as_ref().is_some_and(|ws| Accounted::of(std::iter::once(ws)).covers(&name, item)) {
        return;
    }
    let epoch = match &fresh {
        Some(ws) => ws.status.as_ref().map(|s| s.epoch).unwrap_or_default(),
        None => item.fence.unwrap_or_default(),
    };
    let call = CallContext {
        namespace: item.namespace.clone(),
        name: item.name.clone(),
        workspace_uid: item.workspace_uid.clone(),
        epoch,
        caller: ctx.settings.identity.clone(),
        operation_id: INVENTORY_OPERATION.to_string(),
        cluster: ctx.settings.cluster.clone(),
    };
    match ctx.dispatcher.stop(provider, &call, &item.id).await {
        Ok(()) => {
            Metrics::count(&ctx.metrics.leaks_collected, &name);
            info!(provider = %name, instance = %item.id, key = %item.key, namespace = %item.namespace,
                workspace = %item.name, epoch, "inventory: stopped an instance no status names");
            if let Some(ws) = &fresh {
                let note =
                    format!("stopped {} on {name}: no status named it (created under key {})", item.id, item.key);
                super::protocol::event(
                    ctx,
                    ws,
                    EventType::Warning,
                    EventReason::LeakCollected,
                    EventAction::Collect,
                    &note,
                );
            }
        }
        Err(error) => {
            Metrics::count(&ctx.metrics.inventory_errors, &name);
            warn!(provider = %name, instance = %item.id, %error, "inventory: stopping failed; trying again next pass");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Instance, Operation, OperationKind, Step, WorkspaceStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn listed(id: &str, key: &str) -> ListedInstance {
        ListedInstance {
            id: id.into(),
            key: key.into(),
            workspace_uid: "u1".into(),
            namespace: "ns".into(),
            name: "ws".into(),
            state: InstanceState::Running,
            fence: None,
        }
    }

    fn ws(status: WorkspaceStatus) -> Workspace {
        Workspace::builder("ws", "a").uid("u1").status(status).build()
    }

    fn op(id: &str) -> Operation {
        let t = Time(jiff::Timestamp::UNIX_EPOCH);
        Operation {
            id: id.into(),
            kind: OperationKind::Switch,
            from: Some("a".into()),
            to: Some("b".into()),
            step: Step::OldStopped,
            holder: "x".into(),
            epoch: 2,
            started_at: t.clone(),
            renewed_at: t,
            attempts: 0,
            last_error: None,
            retry_at: None,
            reach: vec![],
            unfenced: vec![],
        }
    }

    #[test]
    fn a_named_instance_is_accounted_for_on_its_provider_only() {
        let named = ws(WorkspaceStatus { instance: Some(Instance::new("i-1", "a", "u1.op0")), ..Default::default() });
        let a = Accounted::of(std::iter::once(&named));
        assert!(a.covers("a", &listed("i-1", "u1.op0")));
        assert!(!a.covers("b", &listed("i-1", "u1.other")), "same id on another provider is another instance");
        assert!(!a.covers("a", &listed("i-2", "u1.op9")));
    }

    #[test]
    fn an_instance_under_an_in_flight_key_is_accounted_for() {
        let in_flight = ws(WorkspaceStatus { operation: Some(Box::new(op("op1"))), ..Default::default() });
        let a = Accounted::of(std::iter::once(&in_flight));
        assert!(a.covers("b", &listed("i-7", "u1.op1")));
        assert!(!a.covers("b", &listed("i-8", "u1.op0")), "a key of an earlier operation is not in flight");
    }

    #[test]
    fn nothing_is_accounted_for_by_a_workspace_without_status() {
        let mut bare = ws(WorkspaceStatus::default());
        bare.status = None;
        assert!(!Accounted::of(std::iter::once(&bare)).covers("a", &listed("i-1", "u1.op0")));
    }
}
