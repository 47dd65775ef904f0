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
    /// A `SwitchResult`, as its label value.
    pub result: String,
}

/// How a switch ended, the `result` label of `switchyard_switches_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchResult {
    Completed,
    /// The old compute could not be stopped: the claim was released, the workspace stays put.
    StopFailed,
    /// The spec went back before anything was stopped.
    Aborted,
}

impl SwitchResult {
    pub const ALL: [SwitchResult; 3] = [SwitchResult::Completed, SwitchResult::StopFailed, SwitchResult::Aborted];

    pub fn label(self) -> &'static str {
        match self {
            SwitchResult::Completed => "completed",
            SwitchResult::StopFailed => "stop_failed",
            SwitchResult::Aborted => "aborted",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub provider: String,
    pub operation: String,
    /// ok, or the error class: transient, rejected, stale_epoch, timeout, unsupported
    pub result: String,
}

/// A per-provider counter's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
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
    /// 1 while this instance reconciles (the leader, or the only instance), else 0.
    pub leader: Gauge,
    /// Explicit fence calls that failed (the operation waits), by provider.
    pub fence_failures: Family<ProviderLabels, Counter>,
    /// Fences skipped on the user's say-so (annotation), by provider.
    pub fences_skipped: Family<ProviderLabels, Counter>,
    /// Instances the inventory found unnamed past the grace period and stopped, by provider.
    pub leaks_collected: Family<ProviderLabels, Counter>,
    /// Inventory passes over a provider that could not complete, by provider.
    pub inventory_errors: Family<ProviderLabels, Counter>,
    /// Complete inventory passes over all providers.
    pub inventory_passes: Counter,
    /// Workspace versions the controller could not decode (skipped and reported).
    pub invalid_objects: Counter,
    /// Workspaces waiting in the work queue for a free worker (not counting requeue timers).
    pub queue_depth: Gauge,
    /// Time from joining the work queue to the start of the reconcile.
    pub queue_wait: Histogram,
    /// Reconciles running now.
    pub reconciles_active: Gauge,
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
            leader: Gauge::default(),
            fence_failures: Family::default(),
            fences_skipped: Family::default(),
            leaks_collected: Family::default(),
            inventory_errors: Family::default(),
            inventory_passes: Counter::default(),
            invalid_objects: Counter::default(),
            queue_depth: Gauge::default(),
            queue_wait: Histogram::new(seconds_buckets()),
            reconciles_active: Gauge::default(),
            registry: Registry::default(),
        };
        // Each registration once: the name (prefixed `switchyard_` by the registry), help, field.
        macro_rules! register {
            ($($name:literal, $help:literal, $field:ident;)*) => {
                $(registry.register($name, $help, m.$field.clone());)*
            };
        }
        register! {
            "reconciles", "Reconciles run", reconciles;
            "reconcile_errors", "Reconciles that failed and were retried with backoff", reconcile_errors;
            "claims_won", "Claims (and takeovers) this instance won", claims_won;
            "claims_lost", "Claims lost to another writer, after which nothing was done", claims_lost;
            "takeovers", "Stale claims taken over", takeovers;
            "status_writes", "Workspace status writes that landed", status_writes;
            "switches", "Switches by from, to and result", switches;
            "switch_duration_seconds", "Claim to finish of completed switches", switch_duration;
            "operations_in_flight", "Operations this instance holds a claim for", operations_in_flight;
            "stalled_workspaces", "Workspaces with Stalled=True", stalled_workspaces;
            "provider_call_duration_seconds", "Provider calls by provider, operation and result", provider_calls;
            "events_dropped", "Kubernetes Events dropped because the publish queue was full", events_dropped;
            "leader", "1 while this instance reconciles (holds the leader Lease, or runs without election)", leader;
            "fence_failures", "Fence calls that failed, so the superseding operation waits", fence_failures;
            "fences_skipped",
                "Fences skipped because the workspace is annotated switchyard.dev/skip-fence", fences_skipped;
            "leaks_collected", "Instances no workspace status named, stopped by the inventory", leaks_collected;
            "inventory_errors", "Inventory passes over a provider that failed", inventory_errors;
            "inventory_passes", "Complete inventory passes", inventory_passes;
            "invalid_objects", "Workspace versions that could not be decoded, skipped and reported", invalid_objects;
            "queue_depth", "Workspaces waiting in the work queue for a free worker", queue_depth;
            "queue_wait_seconds", "Time from joining the work queue to the start of the reconcile", queue_wait;
            "reconciles_active", "Reconciles running now", reconciles_active;
        }
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

    /// `family`'s counter for `provider`, incremented.
    pub fn count(family: &Family<ProviderLabels, Counter>, provider: &str) {
        family.get_or_create(&ProviderLabels { provider: provider.to_string() }).inc();
    }

    pub fn switch(&self, from: &str, to: &str, result: SwitchResult) {
        let labels = SwitchLabels { from: from.into(), to: to.into(), result: result.label().into() };
        self.switches.get_or_create(&labels).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = include_str!("../../deploy/monitoring/prometheusrule.yaml");
    const DASHBOARD: &str = include_str!("../../deploy/monitoring/grafana-dashboard.json");

    /// Every `expr` of the shipped PrometheusRule.
    fn rule_exprs() -> Vec<String> {
        let doc: serde_json::Value = serde_saphyr::from_str(RULES).expect("prometheusrule.yaml is YAML");
        let groups = doc["spec"]["groups"].as_array().cloned().unwrap_or_default();
        let rules = groups.iter().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default());
        rules.map(|r| r["expr"].as_str().expect("every rule has an expr").to_owned()).collect()
    }

    /// Every query of the shipped Grafana dashboard: each panel's targets (rows nest panels) and
    /// the template variables'.
    fn dashboard_exprs() -> Vec<String> {
        fn panels(list: &serde_json::Value, out: &mut Vec<String>) {
            for panel in list.as_array().into_iter().flatten() {
                panels(&panel["panels"], out);
                for target in panel["targets"].as_array().into_iter().flatten() {
                    let title = &panel["title"];
                    out.push(
                        target["expr"].as_str().unwrap_or_else(|| panic!("{title}: a target without expr")).into(),
                    );
                }
            }
        }
        let doc: serde_json::Value = serde_json::from_str(DASHBOARD).expect("grafana-dashboard.json is JSON");
        let mut out = Vec::new();
        panels(&doc["panels"], &mut out);
        let variables = doc["templating"]["list"].as_array().cloned().unwrap_or_default();
        out.extend(variables.iter().filter_map(|v| v["query"]["query"].as_str().map(str::to_owned)));
        out
    }

    /// Identifiers starting with `switchyard_` in a PromQL expression.
    fn metric_names(expr: &str) -> Vec<String> {
        let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
        expr.split(|c: char| !is_ident(c)).filter(|w| w.starts_with("switchyard_")).map(str::to_owned).collect()
    }

    /// The exposition of a registry where every family has a sample, so that each exported name
    /// (with its `_total`, `_bucket`, `_sum`, `_count` suffixes) shows.
    fn exposition() -> String {
        let m = Metrics::default();
        for result in SwitchResult::ALL {
            m.switch("a", "b", result);
        }
        let call = CallLabels { provider: "a".into(), operation: "stop".into(), result: "ok".into() };
        m.provider_calls.get_or_create(&call).observe(0.1);
        for family in [&m.fence_failures, &m.fences_skipped, &m.leaks_collected, &m.inventory_errors] {
            Metrics::count(family, "a");
        }
        m.encode()
    }

    /// Fails unless every expression reads a Switchyard metric, every metric it names is
    /// exported, and every switch result it names exists.
    fn assert_only_exported(what: &str, exprs: &[String]) {
        let exposition = exposition();
        let exported: Vec<&str> =
            exposition.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
        for expr in exprs {
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{what}: a query that reads no Switchyard metric: {expr}");
            for name in names {
                assert!(
                    exported.contains(&name.as_str()),
                    "{what}: {name} (in `{expr}`) is not exported:\n{exposition}"
                );
            }
            for (_, rest) in expr.match_indices("switchyard_switches_total{").map(|(i, _)| expr.split_at(i)) {
                let selector = rest.split('}').next().unwrap_or_default();
                for (_, value) in selector.match_indices("result=\"").map(|(i, _)| selector.split_at(i)) {
                    let value = value.split('"').nth(1).unwrap_or_default();
                    let known = SwitchResult::ALL.iter().any(|r| r.label() == value);
                    assert!(known, "{what}: no switch result {value:?} in `{expr}`");
                }
            }
        }
    }

    #[test]
    fn alert_rules_name_only_exported_metrics_and_results() {
        let exprs = rule_exprs();
        assert!(exprs.len() >= 5, "rules: {exprs:?}");
        assert_only_exported("prometheusrule.yaml", &exprs);
    }

    #[test]
    fn dashboard_panels_query_only_exported_metrics() {
        let exprs = dashboard_exprs();
        assert_only_exported("grafana-dashboard.json", &exprs);
        // What people look at: switches (rate, duration, results), claims, takeovers, stalled
        // workspaces, provider calls (latency, errors) and the reconcile queue.
        let queried: Vec<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
        for needed in [
            "switchyard_switches_total",
            "switchyard_switch_duration_seconds_bucket",
            "switchyard_claims_won_total",
            "switchyard_claims_lost_total",
            "switchyard_takeovers_total",
            "switchyard_stalled_workspaces",
            "switchyard_provider_call_duration_seconds_bucket",
            "switchyard_provider_call_duration_seconds_count",
            "switchyard_queue_depth",
            "switchyard_queue_wait_seconds_bucket",
        ] {
            assert!(queried.iter().any(|q| q == needed), "no panel shows {needed}");
        }
    }

    #[test]
    fn a_query_of_a_metric_that_does_not_exist_is_caught() {
        let typo = vec!["sum(rate(switchyard_switch_total[5m]))".to_string()];
        let caught = std::panic::catch_unwind(|| assert_only_exported("test", &typo));
        assert!(caught.is_err(), "a misspelt metric passed");
        let bad_result = vec![r#"switchyard_switches_total{result="done"}"#.to_string()];
        assert!(std::panic::catch_unwind(|| assert_only_exported("test", &bad_result)).is_err());
    }
}
