//! Telemetry: structured logs, Prometheus metrics, and the health endpoints.

mod logs;
mod metrics;
mod server;

pub use logs::{LogFormat, init};
pub use metrics::{CallLabels, Metrics, SwitchLabels};
pub use server::{Health, serve};
