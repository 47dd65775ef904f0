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
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
