//! The Switchyard API (`switchyard.dev/v1alpha1`): the CRD types and their condition vocabulary.

pub mod conditions;
mod provider;
mod workspace;

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
        assert_eq!(p.spec.driver, Driver::Unknown);
        let crd = serde_json::to_string(&<Workspace as kube::CustomResourceExt>::crd()).expect("crd");
        let providers = serde_json::to_string(&<ComputeProvider as kube::CustomResourceExt>::crd()).expect("crd");
        assert!(!crd.contains("\"Unknown\"") && !providers.contains("\"unknown\""), "not offered by the schema");
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
}
