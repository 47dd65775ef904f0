//! The decode boundary: one Workspace the controller cannot read (a timestamp the API server
//! accepts but we cannot parse, an enum value from a newer version) must never stop the watch
//! of all the others. Workspaces are watched as `DeserializeGuard<Workspace>`; this turns the
//! stream back into plain workspaces:
//!
//! - a readable object passes, without what the controller never reads (`slim`);
//! - an unreadable one is reported once per resourceVersion (a log line without its content,
//!   a Warning Event on it, the `invalid_objects` metric) and kept out of the cache: an update
//!   that makes a cached object unreadable removes it, so nothing acts on its last readable copy.
//!
//! The inventory never collects the compute of an unreadable workspace: it re-reads a
//! workspace before stopping anything, and that read fails the same way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::events::EventType;
use kube::runtime::watcher::Event;
use tracing::warn;

use super::Context;
use crate::api::conditions::{EventAction, EventReason};
use crate::api::{Workspace, WorkspaceSpec};

/// Longest part of a decode error that is logged or published: the error may quote the value
/// it could not read, and that value belongs to the tenant.
const MAX_ERROR: usize = 160;

/// Turns guarded watch events into workspace events, reporting what cannot be read.
#[derive(Clone)]
pub struct Boundary {
    ctx: Arc<Context>,
    /// resourceVersion last reported per uid: each bad version is reported once.
    reported: Arc<Mutex<HashMap<String, String>>>,
}

impl Boundary {
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx, reported: Arc::default() }
    }

    /// The event to pass on, if any.
    pub fn pass(&self, event: Event<DeserializeGuard<Workspace>>) -> Option<Event<Workspace>> {
        match event {
            Event::Init => Some(Event::Init),
            Event::InitDone => Some(Event::InitDone),
            Event::InitApply(DeserializeGuard(Ok(ws))) => Some(Event::InitApply(slim(ws))),
            Event::Apply(DeserializeGuard(Ok(ws))) => {
                // Readable again: its bad version need not be remembered.
                self.forget(&ws.metadata.uid);
                Some(Event::Apply(slim(ws)))
            }
            Event::Delete(DeserializeGuard(Ok(ws))) => {
                self.forget(&ws.metadata.uid);
                Some(Event::Delete(ws))
            }
            // Left out of the initial list: it never enters the cache.
            Event::InitApply(DeserializeGuard(Err(bad))) => {
                self.report(&bad);
                None
            }
            // Removed from the cache, so its last readable copy is not acted on.
            Event::Apply(DeserializeGuard(Err(bad))) => {
                self.report(&bad);
                Some(Event::Delete(placeholder(bad)))
            }
            Event::Delete(DeserializeGuard(Err(bad))) => {
                self.forget(&bad.metadata.uid);
                Some(Event::Delete(placeholder(bad)))
            }
        }
    }

    fn report(&self, bad: &InvalidObject) {
        let uid = bad.metadata.uid.clone().unwrap_or_default();
        let version = bad.metadata.resource_version.clone().unwrap_or_default();
        {
            let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
            if reported.get(&uid) == Some(&version) {
                return;
            }
            reported.insert(uid, version);
        }
        self.ctx.metrics.invalid_objects.inc();
        let error = truncate(&bad.error);
        let namespace = bad.metadata.namespace.clone().unwrap_or_default();
        let name = bad.metadata.name.clone().unwrap_or_default();
        warn!(%namespace, %name, %error, "workspace cannot be decoded: skipped until it changes");
        let note = format!("the controller cannot read this object and skips it until it changes: {error}");
        super::protocol::event(
            &self.ctx,
            &placeholder(bad.clone()),
            EventType::Warning,
            EventReason::InvalidObject,
            EventAction::Decode,
            &note,
        );
    }

    fn forget(&self, uid: &Option<String>) {
        if let Some(uid) = uid {
            self.reported.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
        }
    }
}

/// The annotation `kubectl apply` keeps a whole copy of the object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The workspace as cached: without what the controller never reads (`managedFields`, the
/// last-applied copy), which is most of a small object's size. The controller never writes
/// either, so nothing it sends is affected.
fn slim(mut ws: Workspace) -> Workspace {
    ws.metadata.managed_fields = None;
    if let Some(annotations) = ws.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            ws.metadata.annotations = None;
        }
    }
    ws
}

/// A workspace standing for an unreadable object: its metadata, nothing else. Only its identity
/// is used (to drop it from the cache, to address an Event).
fn placeholder(bad: InvalidObject) -> Workspace {
    let mut ws = Workspace::new("", WorkspaceSpec { provider: String::new(), running: false, template: None });
    ws.metadata = bad.metadata;
    ws
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_nothing_the_controller_never_reads() {
        let ws: Workspace = serde_json::from_value(serde_json::json!({
            "apiVersion": "switchyard.dev/v1alpha1", "kind": "Workspace",
            "metadata": {"name": "w", "namespace": "n", "annotations": {LAST_APPLIED: "{...}", "switchyard.dev/skip-fence": "a"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {}}]},
            "spec": {"provider": "a"}
        }))
        .expect("workspace");
        let slim = slim(ws.clone());
        assert_eq!(slim.metadata.managed_fields, None);
        let kept: Vec<&String> = slim.metadata.annotations.iter().flat_map(|a| a.keys()).collect();
        assert_eq!(kept, ["switchyard.dev/skip-fence"], "annotations the controller reads stay");
        assert_eq!((slim.spec, slim.metadata.name), (ws.spec, ws.metadata.name));
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let long = "é".repeat(400);
        let cut = truncate(&long);
        assert_eq!(cut.chars().count(), MAX_ERROR + 1);
        assert_eq!(truncate("short"), "short");
    }
}
