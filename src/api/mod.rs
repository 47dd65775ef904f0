//! The Switchyard API (`switchyard.dev/v1alpha1`): the CRD types, their condition and Event
//! vocabulary, and what is read off them everywhere: the provision key, the claim in flight,
//! "settled", the kstatus rules, and a builder for objects in tests and tools.

mod builder;
pub mod conditions;
mod provider;
mod workspace;

pub use builder::WorkspaceBuilder;
pub use provider::*;
pub use workspace::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{CustomResourceDefinition, JSON};
use kube::CustomResourceExt;

/// The API group all Switchyard kinds live in.
pub const GROUP: &str = "switchyard.dev";
/// The finalizer that keeps a Workspace until its compute is gone.
pub const FINALIZER: &str = "switchyard.dev/compute";

/// Every CRD Switchyard serves, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![ComputeProvider::crd(), workspace_crd()]
}

/// The Workspace CRD, its status defaulted to "never observed" (`observedGeneration: 0`): the API
/// server applies the default when it reads an object without status, so before the controller's
/// first write (or while no controller runs) kstatus reads a new Workspace as InProgress, not as
/// Current, which is what it makes of an object without status.
fn workspace_crd() -> CustomResourceDefinition {
    let mut crd = Workspace::crd();
    for version in &mut crd.spec.versions {
        let status = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("status"));
        if let Some(status) = status {
            status.default = Some(JSON(serde_json::json!({"observedGeneration": 0})));
        }
    }
    crd
}

/// The CRDs as one multi-document YAML stream, exactly as committed under `crds/`.
pub fn crds_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A rollback leaves values a newer build wrote: they decode to `Unknown` instead of making
    /// the object unreadable, and the schema still offers only the known values.
    #[test]
    fn values_of_a_newer_version_decode_to_unknown() {
        let ws: Workspace = serde_json::from_value(json!({
            "apiVersion": "switchyard.dev/v1alpha1", "kind": "Workspace",
            "metadata": {"name": "w", "namespace": "n"}, "spec": {"provider": "a"},
            "status": {"phase": "Hibernating", "operation": {
                "id": "o", "kind": "Hibernate", "step": "Frozen", "holder": "h", "epoch": 1,
                "startedAt": "2026-01-01T00:00:00Z", "renewedAt": "2026-01-01T00:00:00Z"}}
        }))
        .expect("decodes");
        let status = ws.status.as_ref().expect("status");
        assert_eq!(status.phase, Some(Phase::Unknown));
        let op = ws.operation().expect("operation");
        assert_eq!((op.kind, op.step), (OperationKind::Unknown, Step::Unknown));
        let p: ComputeProvider = serde_json::from_value(json!({
            "apiVersion": "switchyard.dev/v1alpha1", "kind": "ComputeProvider",
            "metadata": {"name": "p"}, "spec": {"driver": "quantum"}
        }))
        .expect("decodes");
        assert_eq!(p.spec.driver, DriverKind::Unknown);
        // Of the enums, only a condition's status offers "Unknown" (metav1's own value).
        for (path, node, _) in schema_nodes() {
            let values = node["enum"].as_array().cloned().unwrap_or_default();
            let offers_unknown = values.iter().any(|v| v.as_str().is_some_and(|v| v.eq_ignore_ascii_case("unknown")));
            assert!(!offers_unknown || path.ends_with(".conditions[].status"), "{path} offers {values:?}");
        }
    }

    /// Every node of both CRDs' schemas, with its path: (path, schema, is a field).
    fn schema_nodes() -> Vec<(String, serde_json::Value, bool)> {
        fn walk(path: String, node: &serde_json::Value, field: bool, out: &mut Vec<(String, serde_json::Value, bool)>) {
            out.push((path.clone(), node.clone(), field));
            for (name, child) in node["properties"].as_object().into_iter().flatten() {
                walk(format!("{path}.{name}"), child, true, out);
            }
            if node["items"].is_object() {
                walk(format!("{path}[]"), &node["items"], false, out);
            }
            if node["additionalProperties"].is_object() {
                walk(format!("{path}{{}}"), &node["additionalProperties"], false, out);
            }
        }
        let mut out = Vec::new();
        for crd in crds() {
            for version in &crd.spec.versions {
                let schema = version.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref());
                let schema = serde_json::to_value(schema).expect("schema as JSON");
                walk(format!("{}/{}", crd.spec.names.kind, version.name), &schema, true, &mut out);
            }
        }
        out
    }

    /// `kubectl explain` shows a description for every kind and field: none is missing, and the
    /// kinds do not carry kube's placeholder.
    #[test]
    fn every_kind_and_field_has_a_description() {
        let nodes = schema_nodes();
        assert!(nodes.len() > 80, "walked only {} nodes", nodes.len());
        let missing: Vec<&str> = nodes
            .iter()
            .filter(|(_, node, field)| *field && node["description"].as_str().is_none_or(|d| d.trim().is_empty()))
            .map(|(path, _, _)| path.as_str())
            .collect();
        assert!(missing.is_empty(), "fields without a description: {missing:?}");
        for (path, node, _) in nodes.iter().filter(|(path, _, _)| !path.contains('.')) {
            let description = node["description"].as_str().unwrap_or_default();
            assert!(!description.starts_with("Auto-generated"), "{path}: {description}");
        }
    }

    /// No value can grow without bound: every string has a maxLength (or an enum or a format
    /// that fixes its size), every list a maxItems, every map a maxProperties.
    #[test]
    fn every_string_list_and_map_is_bounded() {
        let mut unbounded = Vec::new();
        for (path, node, _) in schema_nodes() {
            let bounded = match node["type"].as_str() {
                Some("string") => node.get("maxLength").or(node.get("enum")).or(node.get("format")).is_some(),
                Some("array") => node.get("maxItems").is_some(),
                Some("object") if node.get("additionalProperties").is_some() => node.get("maxProperties").is_some(),
                _ => true,
            };
            if !bounded && !path.contains(".metadata") {
                unbounded.push(path);
            }
        }
        assert!(unbounded.is_empty(), "unbounded: {unbounded:?}");
    }

    #[test]
    fn a_location_names_what_decides_where_compute_lives() {
        let spec = |v: serde_json::Value| serde_json::from_value::<ComputeProviderSpec>(v).expect("spec");
        let http = spec(json!({"driver": "http", "http": {"endpoint": "https://x.example/api/"}}));
        assert_eq!(http.location(), "http https://x.example/api");
        let other = spec(json!({"driver": "http", "http": {"endpoint": "https://y.example/api"}}));
        assert_ne!(http.location(), other.location());
        let local = spec(json!({"driver": "kubernetes", "kubernetes": {"namespace": "ws"}}));
        let remote = spec(json!({"driver": "kubernetes", "kubernetes": {"namespace": "ws",
            "kubeconfigSecretRef": {"name": "east", "namespace": "switchyard-system"}}}));
        assert_ne!(local.location(), remote.location());
        assert_eq!(spec(json!({"driver": "simulated"})).location(), "simulated");
    }

    /// Settled: no operation, placed on the provider, compute there exactly when it should run,
    /// Ready, for the current generation.
    #[test]
    fn settled_means_converged_where_the_spec_says() {
        let ws = |running: bool, status: serde_json::Value| -> Workspace {
            serde_json::from_value(json!({
                "apiVersion": "switchyard.dev/v1alpha1", "kind": "Workspace",
                "metadata": {"name": "w", "namespace": "n", "generation": 2},
                "spec": {"provider": "b", "running": running}, "status": status
            }))
            .expect("decodes")
        };
        let ready = json!([{"type": "Ready", "status": "True", "reason": "Running", "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}]);
        let instance = json!({"id": "i", "provider": "b", "key": "k"});
        let on_b = json!({"observedGeneration": 2, "activeProvider": "b", "instance": instance, "conditions": ready});
        assert!(ws(true, on_b.clone()).settled_on("b"));
        assert!(!ws(true, on_b.clone()).settled_on("a"), "elsewhere");
        assert!(!ws(false, on_b.clone()).settled_on("b"), "compute left running");
        let mut older = on_b.clone();
        older["observedGeneration"] = json!(1);
        assert!(!ws(true, older).settled_on("b"), "status of an older generation");
        let mut stopped = on_b.clone();
        stopped.as_object_mut().expect("object").remove("instance");
        assert!(ws(false, stopped.clone()).settled_on("b"));
        assert!(!ws(true, stopped).settled_on("b"), "no compute though it should run");
        let mut busy = on_b;
        busy["operation"] = json!({"id": "o", "kind": "Stop", "step": "Claimed", "holder": "h", "epoch": 1,
            "startedAt": "2026-01-01T00:00:00Z", "renewedAt": "2026-01-01T00:00:00Z"});
        assert!(!ws(true, busy).settled_on("b"), "an operation in flight");
        assert!(!ws(true, json!({})).settled_on("b"), "never observed");
    }
}
