//! Telemetry: structured logs, Prometheus metrics, the health endpoints, and (feature `otel`)
//! OpenTelemetry traces.

mod logs;
mod metrics;
mod server;
#[cfg(feature = "otel")]
mod traces;

pub use logs::{LogFormat, Telemetry, init, init_to};
pub use metrics::{CallLabels, Metrics, SwitchLabels, SwitchResult};
pub use server::{Health, serve};
#[cfg(feature = "otel")]
pub use traces::{context_headers, continue_trace};

/// Names `span` for OpenTelemetry (`otel.name`, and `otel.kind` unless empty). The span must
/// declare both fields as `Empty`; without the `otel` feature they stay empty, so that logs do
/// not repeat what their other fields say.
pub fn otel_span(span: &tracing::Span, name: impl std::fmt::Display, kind: &'static str) {
    #[cfg(feature = "otel")]
    {
        span.record("otel.name", tracing::field::display(name));
        if !kind.is_empty() {
            span.record("otel.kind", kind);
        }
    }
    #[cfg(not(feature = "otel"))]
    let _ = (span, name, kind);
}

/// Marks `span` OK or ERROR for OpenTelemetry (`otel.status_code`, declared `Empty`).
pub fn otel_status(span: &tracing::Span, ok: bool) {
    #[cfg(feature = "otel")]
    span.record("otel.status_code", if ok { "OK" } else { "ERROR" });
    #[cfg(not(feature = "otel"))]
    let _ = (span, ok);
}
