//! Prometheus metrics of one controller instance (OpenMetrics text on `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SwitchLabels {
    pub from: String,
    pub to: String,
    /// completed, stop_failed, aborted
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub provider: String,
    pub operation: String,
    /// ok, or the error class: transient, rejected, stale_epoch, timeout, unsupported
    pub result: String,
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.005, 2.0, 14) // 5ms … ~41s
}

/// Everything the controller counts. Counters are also read by tests and logs.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Counter,
    pub reconcile_errors: Counter,
    pub claims_won: Counter,
    pub claims_lost: Counter,
    pub takeovers: Counter,
    pub status_writes: Counter,
    pub switches: Family<SwitchLabels, Counter>,
    pub switch_duration: Histogram,
    pub operations_in_flight: Gauge,
    pub stalled_workspaces: Gauge,
    pub provider_calls: Family<CallLabels, Histogram>,
    pub events_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("switchyard");
        let m = Self {
            reconciles: Counter::default(),
            reconcile_errors: Counter::default(),
            claims_won: Counter::default(),
            claims_lost: Counter::default(),
            takeovers: Counter::default(),
            status_writes: Counter::default(),
            switches: Family::default(),
            switch_duration: Histogram::new(seconds_buckets()),
            operations_in_flight: Gauge::default(),
            stalled_workspaces: Gauge::default(),
            provider_calls: Family::new_with_constructor(|| Histogram::new(seconds_buckets())),
            events_dropped: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("reconciles", "Reconciles run", m.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed and were retried with backoff",
            m.reconcile_errors.clone(),
        );
        registry.register("claims_won", "Claims (and takeovers) this instance won", m.claims_won.clone());
        registry.register(
            "claims_lost",
            "Claims lost to another writer, after which nothing was done",
            m.claims_lost.clone(),
        );
        registry.register("takeovers", "Stale claims taken over", m.takeovers.clone());
        registry.register("status_writes", "Workspace status writes that landed", m.status_writes.clone());
        registry.register("switches", "Switches by from, to and result", m.switches.clone());
        registry.register(
            "switch_duration_seconds",
            "Claim to finish of completed switches",
            m.switch_duration.clone(),
        );
        registry.register(
            "operations_in_flight",
            "Operations this instance holds a claim for",
            m.operations_in_flight.clone(),
        );
        registry.register("stalled_workspaces", "Workspaces with Stalled=True", m.stalled_workspaces.clone());
        registry.register(
            "provider_call_duration_seconds",
            "Provider calls by provider, operation and result",
            m.provider_calls.clone(),
        );
        registry.register(
            "events_dropped",
            "Kubernetes Events dropped because the publish queue was full",
            m.events_dropped.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn switch(&self, from: &str, to: &str, result: &str) {
        let labels = SwitchLabels { from: from.into(), to: to.into(), result: result.into() };
        self.switches.get_or_create(&labels).inc();
    }
}
