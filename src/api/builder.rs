//! Workspaces (and simulated providers) built in code, the one vocabulary of the unit tests, the
//! integration tests and the benchmark: a name and a provider, then only what a case says about it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{
    ComputeProvider, ComputeProviderSpec, DriverKind, Instance, SimulatedSettings, Size, Workspace, WorkspaceSpec,
    WorkspaceStatus, WorkspaceTemplate,
};

impl ComputeProvider {
    /// ComputeProvider `name` with the in-process `simulated` driver and these latencies.
    pub fn simulated(name: &str, provision_latency_ms: u64, stop_latency_ms: u64) -> Self {
        let simulated = SimulatedSettings { provision_latency_ms, stop_latency_ms };
        let spec = ComputeProviderSpec {
            driver: DriverKind::Simulated,
            http: None,
            kubernetes: None,
            simulated: Some(simulated),
            stop_policy: None,
            call_timeout_seconds: None,
        };
        ComputeProvider::new(name, spec)
    }
}

impl Instance {
    /// Instance `id` on `provider`, created under `key`; no location recorded, its state known.
    pub fn new(id: impl Into<String>, provider: impl Into<String>, key: impl Into<String>) -> Self {
        Self { id: id.into(), provider: provider.into(), key: key.into(), location: None, unconfirmed: false }
    }
}

/// A [`Workspace`] under construction; see [`Workspace::builder`].
#[derive(Clone, Debug)]
pub struct WorkspaceBuilder {
    ws: Workspace,
}

impl Workspace {
    /// A running workspace `name` naming `provider`, without template, namespace or status.
    pub fn builder(name: &str, provider: &str) -> WorkspaceBuilder {
        let spec = WorkspaceSpec { provider: provider.to_string(), running: true, template: None };
        WorkspaceBuilder { ws: Workspace::new(name, spec) }
    }
}

impl WorkspaceBuilder {
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.ws.metadata.namespace = Some(namespace.to_string());
        self
    }

    pub fn uid(mut self, uid: &str) -> Self {
        self.ws.metadata.uid = Some(uid.to_string());
        self
    }

    pub fn generation(mut self, generation: i64) -> Self {
        self.ws.metadata.generation = Some(generation);
        self
    }

    pub fn resource_version(mut self, version: &str) -> Self {
        self.ws.metadata.resource_version = Some(version.to_string());
        self
    }

    /// Desired power state (`spec.running`).
    pub fn running(mut self, running: bool) -> Self {
        self.ws.spec.running = running;
        self
    }

    /// The template the tests and the benchmark run: busybox, small.
    pub fn busybox(mut self) -> Self {
        let template =
            WorkspaceTemplate { image: Some("busybox".into()), size: Some(Size::Small), ..Default::default() };
        self.ws.spec.template = Some(template);
        self
    }

    /// Exactly these finalizers (the controller's is [`FINALIZER`](crate::api::FINALIZER)).
    pub fn finalizers(mut self, finalizers: &[&str]) -> Self {
        self.ws.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
        self
    }

    /// Being deleted since `since`.
    pub fn deleting(mut self, since: Time) -> Self {
        self.ws.metadata.deletion_timestamp = Some(since);
        self
    }

    pub fn status(mut self, status: WorkspaceStatus) -> Self {
        self.ws.status = Some(status);
        self
    }

    pub fn build(self) -> Workspace {
        self.ws
    }
}
