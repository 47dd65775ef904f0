//! The Switchyard API (`switchyard.dev/v1alpha1`): the CRD types and their condition vocabulary.

pub mod conditions;
mod provider;
mod workspace;

pub use provider::*;
pub use workspace::*;

use kube::CustomResourceExt;

/// The API group all Switchyard kinds live in.
pub const GROUP: &str = "switchyard.dev";
/// The finalizer that keeps a Workspace until its compute is gone.
pub const FINALIZER: &str = "switchyard.dev/compute";

/// Every CRD Switchyard serves, in a stable order.
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    vec![ComputeProvider::crd(), Workspace::crd()]
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
