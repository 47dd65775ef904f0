//! Telemetry: structured logs, Prometheus metrics, the health endpoints, and (feature `otel`)
//! OpenTelemetry traces.

mod logs;
mod metrics;
mod server;
#[cfg(feature = "otel")]
mod traces;

pub use logs::{LogFormat, Telemetry, init};
pub use metrics::{CallLabels, Metrics, SwitchLabels};
pub use server::{Health, serve};
#[cfg(feature = "otel")]
pub use traces::{context_headers, continue_trace};
