use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use tracing::{Instrument, debug, info_span};

use super::http::HttpDrivers;
use super::kubernetes::{KubernetesDriver, Targets as KubernetesTargets};
use super::simulated::{Clouds, SimulatedDriver};
use super::{CallContext, Driver, DriverError, InstanceInfo, InstancePage, Provision};
use crate::api::{ComputeProvider, DriverKind, WorkspaceTemplate};
use crate::telemetry::{CallLabels, Metrics};

/// Why a compute call could not be made or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    #[error("provider {provider}: driver {driver:?} is not available in this build")]
    Unsupported { provider: String, driver: DriverKind },
    #[error("provider {provider}: {source}")]
    Driver {
        provider: String,
        #[source]
        source: DriverError,
    },
    #[error("provider {provider}: call timed out after {after:?}")]
    Timeout { provider: String, after: Duration },
}

impl DispatchError {
    /// Whether retrying the same call later can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            DispatchError::Unsupported { .. } => false,
            DispatchError::Driver { source, .. } => source.is_retryable(),
            DispatchError::Timeout { .. } => true,
        }
    }
}

/// The single place compute calls go through: picks the driver of a `ComputeProvider`, bounds
/// each call by the provider's timeout, and logs it. Nothing else calls a driver.
#[derive(Clone)]
pub struct Dispatcher {
    simulated: Clouds,
    /// The cluster the controller runs against: for Secrets named by providers, and for the
    /// `kubernetes` driver's default target. None in unit tests of the simulated driver.
    client: Option<kube::Client>,
    /// Clients of `kubernetes` providers that target another cluster, cached per provider.
    kubernetes: KubernetesTargets,
    /// `http` drivers (connection pools) and the bearer tokens they read from Secrets.
    http: HttpDrivers,
    /// Where call latencies by provider, operation and result are recorded.
    metrics: Option<Arc<Metrics>>,
}

const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Dispatcher {
    pub fn new(simulated: Clouds) -> Self {
        Self {
            simulated,
            client: None,
            kubernetes: KubernetesTargets::default(),
            http: HttpDrivers::default(),
            metrics: None,
        }
    }

    /// Records every call's latency and result in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Gives drivers access to the cluster (Secrets, Pods).
    pub fn with_client(mut self, client: kube::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// The in-process simulated clouds (their ledger is what tests check).
    pub fn simulated(&self) -> &Clouds {
        &self.simulated
    }

    fn driver(&self, provider: &ComputeProvider) -> Result<Arc<dyn Driver>, DispatchError> {
        match provider.spec.driver {
            DriverKind::Simulated => Ok(Arc::new(SimulatedDriver::new(
                self.simulated.cloud(&provider.name_any()),
                provider.spec.simulated.clone().unwrap_or_default(),
            ))),
            DriverKind::Kubernetes => Ok(Arc::new(KubernetesDriver::new(
                &provider.name_any(),
                provider.spec.kubernetes.clone(),
                self.client.clone(),
                self.kubernetes.clone(),
                call_timeout(provider),
            ))),
            driver @ DriverKind::Unknown => Err(DispatchError::Unsupported { provider: provider.name_any(), driver }),
            DriverKind::Http => {
                let driver = self.http.driver(provider, self.client.as_ref(), call_timeout(provider));
                let driver =
                    driver.map_err(|source| DispatchError::Driver { provider: provider.name_any(), source })?;
                Ok(driver)
            }
        }
    }

    /// Probes the provider: it answers and accepts our credentials. Backs ComputeProvider Ready.
    pub async fn health(&self, provider: &ComputeProvider) -> Result<(), DispatchError> {
        let driver = self.driver(provider)?;
        self.bounded(provider, "health", &provider_wide(""), driver.health()).await
    }

    pub async fn provision(
        &self,
        provider: &ComputeProvider,
        call: &CallContext,
        key: &str,
        template: Option<&WorkspaceTemplate>,
    ) -> Result<InstanceInfo, DispatchError> {
        let driver = self.driver(provider)?;
        self.bounded(provider, "provision", call, driver.provision(Provision { call, key, template })).await
    }

    pub async fn stop(
        &self,
        provider: &ComputeProvider,
        call: &CallContext,
        instance_id: &str,
    ) -> Result<(), DispatchError> {
        let driver = self.driver(provider)?;
        self.bounded(provider, "stop", call, driver.stop(call, instance_id)).await
    }

    pub async fn lookup(
        &self,
        provider: &ComputeProvider,
        call: &CallContext,
        key: &str,
    ) -> Result<Option<InstanceInfo>, DispatchError> {
        let driver = self.driver(provider)?;
        self.bounded(provider, "lookup", call, driver.lookup(call, key)).await
    }

    /// Raises the provider's fence for the call's workspace to the call's epoch.
    pub async fn fence(&self, provider: &ComputeProvider, call: &CallContext) -> Result<(), DispatchError> {
        let driver = self.driver(provider)?;
        self.bounded(provider, "fence", call, driver.fence(call)).await
    }

    /// One page of the instances the provider holds for `cluster`; see [`Driver::list`].
    pub async fn list(
        &self,
        provider: &ComputeProvider,
        cluster: &str,
        page: Option<&str>,
        limit: u32,
    ) -> Result<InstancePage, DispatchError> {
        let driver = self.driver(provider)?;
        self.bounded(provider, "list", &provider_wide(cluster), driver.list(cluster, page, limit)).await
    }

    async fn bounded<T>(
        &self,
        provider: &ComputeProvider,
        operation: &'static str,
        call: &CallContext,
        fut: impl Future<Output = Result<T, DriverError>>,
    ) -> Result<T, DispatchError> {
        let name = provider.name_any();
        let after = call_timeout(provider);
        let span = info_span!(
            "provider_call",
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            provider = %name,
            operation,
            epoch = call.epoch,
            result = tracing::field::Empty,
        );
        crate::telemetry::otel_span(&span, format_args!("{operation} {name}"), "client");
        let started = Instant::now();
        let result = match tokio::time::timeout(after, fut).instrument(span.clone()).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(DispatchError::Driver { provider: name.clone(), source }),
            Err(_) => Err(DispatchError::Timeout { provider: name.clone(), after }),
        };
        let elapsed = started.elapsed();
        let class = result_class(&result);
        span.record("result", class);
        crate::telemetry::otel_status(&span, result.is_ok());
        if let Some(metrics) = &self.metrics {
            let labels = CallLabels { provider: name.clone(), operation: operation.into(), result: class.into() };
            metrics.provider_calls.get_or_create(&labels).observe(elapsed.as_secs_f64());
        }
        debug!(
            provider = %name,
            operation,
            namespace = %call.namespace,
            workspace = %call.name,
            epoch = call.epoch,
            ok = result.is_ok(),
            elapsed_ms = elapsed.as_millis() as u64,
            "provider call"
        );
        result
    }
}

/// The context logged for a call that concerns no workspace (health, inventory).
fn provider_wide(cluster: &str) -> CallContext {
    CallContext {
        namespace: String::new(),
        name: String::new(),
        workspace_uid: String::new(),
        epoch: 0,
        caller: String::new(),
        operation_id: String::new(),
        cluster: cluster.to_owned(),
    }
}

/// The `result` label of a call: ok, or the class of its error.
fn result_class<T>(result: &Result<T, DispatchError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(DispatchError::Timeout { .. }) => "timeout",
        Err(DispatchError::Driver { source: DriverError::StaleEpoch { .. }, .. }) => "stale_epoch",
        Err(DispatchError::Driver { source: DriverError::Transient(_), .. }) => "transient",
        Err(DispatchError::Driver { source: DriverError::Rejected(_), .. }) => "rejected",
        Err(_) => "unsupported",
    }
}

/// The bound of one call to `provider`: its `callTimeoutSeconds`, or the default.
fn call_timeout(provider: &ComputeProvider) -> Duration {
    provider.spec.call_timeout_seconds.map(|s| Duration::from_secs(u64::from(s))).unwrap_or(DEFAULT_CALL_TIMEOUT)
}
