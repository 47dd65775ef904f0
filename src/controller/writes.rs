//! Guarded writes. Every status write carries the resourceVersion the decision was made on, so
//! the API server refuses it (409) if anything changed since. What a refusal means depends on
//! whether the write is a claim or a write under a claim we already hold.

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::{Map, Value, json};
use tracing::debug;

use super::Error;
use crate::api::{Workspace, WorkspaceStatus};

/// How many times a write under our claim is re-applied to a fresh copy after a conflict
/// caused by someone else's unrelated write (a user editing the spec, say).
const MAX_HELD_RETRIES: usize = 5;

/// Outcome of a write whose precondition may fail.
#[derive(Debug)]
pub enum Written {
    /// The write landed; the object as the server returned it.
    Landed(Box<Workspace>),
    /// Another actor holds the workspace now: we must make no further call and no further write.
    Lost,
}

/// A failure after which the write's fate is unknown (it may or may not have landed), or a
/// plain conflict. Either way the truth is in a fresh read.
fn must_reread(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 409 || s.code == 429 || s.code >= 500,
        kube::Error::Service(_) | kube::Error::HyperError(_) => true,
        _ => false,
    }
}

/// The API server's answer, when it refused a write because the object would be too large to
/// store (etcd's request limit, or the API server's own). Retrying cannot help until someone
/// shrinks the object.
pub fn too_large(error: &Error) -> Option<&str> {
    let Error::Kube(kube::Error::Api(s)) = error else { return None };
    let message = s.message.to_ascii_lowercase();
    let says = |m: &str| message.contains(m);
    (s.code == 413 || says("request is too large") || says("request entity too large")).then_some(s.message.as_str())
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Writes `next` as the status of `ws`, guarded by `ws`'s resourceVersion. Sends only what
/// changed (a JSON merge patch: removed fields as null).
pub async fn patch_status(api: &Api<Workspace>, ws: &Workspace, next: &WorkspaceStatus) -> kube::Result<Workspace> {
    let old = serde_json::to_value(ws.status.clone().unwrap_or_default()).map_err(kube::Error::SerdeError)?;
    let new = serde_json::to_value(next).map_err(kube::Error::SerdeError)?;
    let body = json!({
        "metadata": {"resourceVersion": ws.resource_version()},
        "status": merge_diff(&old, &new),
    });
    api.patch_status(&ws.name_any(), &PatchParams::default(), &Patch::Merge(body)).await
}

/// A claim (or takeover): one attempt. If the answer is a conflict or unknown, the claim
/// landed exactly when a fresh read shows it (`is_ours`): our own retried request can come
/// back as a conflict after it succeeded.
pub async fn claim(
    api: &Api<Workspace>,
    ws: &Workspace,
    next: &WorkspaceStatus,
    is_ours: impl Fn(&Workspace) -> bool,
) -> Result<Written, Error> {
    match patch_status(api, ws, next).await {
        Ok(w) => Ok(Written::Landed(Box::new(w))),
        Err(e) if must_reread(&e) => {
            let fresh = api.get(&ws.name_any()).await?;
            if is_ours(&fresh) {
                debug!(error = %e, "claim landed despite the error");
                Ok(Written::Landed(Box::new(fresh)))
            } else if is_conflict(&e) || fresh.resource_version() != ws.resource_version() {
                // Someone else wrote first: the claim is lost.
                Ok(Written::Lost)
            } else {
                // Nothing changed and our claim is not there: the write failed (a 5xx, a
                // timeout). Not a lost claim: the reconcile fails and is retried with backoff.
                Err(e.into())
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// A write under the claim `ws` shows, which we hold. On a conflict, re-read: while the
/// operation is still ours, apply the same transition to the fresh copy and write again. A
/// takeover keeps the operation id but bumps its epoch, so the epoch must match too: otherwise
/// a paused ex-holder would write over the new holder.
pub async fn under_claim(
    api: &Api<Workspace>,
    ws: &Workspace,
    transition: impl Fn(&Workspace) -> WorkspaceStatus,
) -> Result<Written, Error> {
    let held = ws.operation().map(|o| (o.id.as_str(), o.epoch));
    let mut current = ws.clone();
    for _ in 0..MAX_HELD_RETRIES {
        match patch_status(api, &current, &transition(&current)).await {
            Ok(w) => return Ok(Written::Landed(Box::new(w))),
            Err(e) if must_reread(&e) => {
                let fresh = api.get(&ws.name_any()).await?;
                let still_ours = fresh
                    .status
                    .as_ref()
                    .and_then(|s| s.operation.as_ref())
                    .is_some_and(|o| held == Some((o.id.as_str(), o.epoch)));
                if !still_ours {
                    return Ok(Written::Lost);
                }
                debug!(error = %e, "operation still ours after a conflict: re-applying to a fresh copy");
                current = fresh;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::TooManyConflicts(ws.name_any()))
}

/// Writes metadata.finalizers, guarded by resourceVersion (a merge patch replaces the list).
pub async fn set_finalizers(api: &Api<Workspace>, ws: &Workspace, finalizers: Vec<String>) -> kube::Result<Workspace> {
    let body = json!({"metadata": {"resourceVersion": ws.resource_version(), "finalizers": finalizers}});
    api.patch(&ws.name_any(), &PatchParams::default(), &Patch::Merge(body)).await
}

/// The JSON merge patch (RFC 7386) that turns `old` into `new`.
pub fn merge_diff(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut patch = Map::new();
            for (k, v) in n {
                match o.get(k) {
                    Some(ov) if ov == v => {}
                    Some(ov) if ov.is_object() && v.is_object() => {
                        patch.insert(k.clone(), merge_diff(ov, v));
                    }
                    _ => {
                        patch.insert(k.clone(), v.clone());
                    }
                }
            }
            for k in o.keys() {
                if !n.contains_key(k) {
                    patch.insert(k.clone(), Value::Null);
                }
            }
            Value::Object(patch)
        }
        _ => new.clone(),
    }
}

/// The workspace's reference for Events.
pub fn reference(ws: &Workspace) -> k8s_openapi::api::core::v1::ObjectReference {
    ws.object_ref(&())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(target: &Value, patch: &Value) -> Value {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                let mut out = t.clone();
                for (k, v) in p {
                    if v.is_null() {
                        out.remove(k);
                    } else {
                        let merged = apply(out.get(k).unwrap_or(&Value::Null), v);
                        out.insert(k.clone(), merged);
                    }
                }
                Value::Object(out)
            }
            (_, Value::Object(_)) => apply(&json!({}), patch),
            _ => patch.clone(),
        }
    }

    #[test]
    fn merge_diff_round_trips() {
        let cases = [
            (json!({}), json!({"a": 1})),
            (json!({"a": 1, "b": {"c": 2, "d": 3}}), json!({"a": 1, "b": {"c": 2}})),
            (json!({"op": {"id": "x", "lastError": "e"}}), json!({"instance": {"id": "i"}})),
            (json!({"conditions": [1, 2]}), json!({"conditions": [2]})),
            (json!({"a": {"b": 1}}), json!({"a": 5})),
        ];
        for (old, new) in cases {
            let patch = merge_diff(&old, &new);
            assert_eq!(apply(&old, &patch), new, "patch {patch} from {old} should give {new}");
        }
    }

    #[test]
    fn merge_diff_sends_only_changes() {
        let old = json!({"epoch": 3, "phase": "Running", "operation": {"id": "x", "step": "Claimed"}});
        let new = json!({"epoch": 3, "phase": "Running", "operation": {"id": "x", "step": "OldStopped"}});
        assert_eq!(merge_diff(&old, &new), json!({"operation": {"step": "OldStopped"}}));
    }
}
