//! Logs: `tracing` with structured fields, as text for people or JSON for collectors; with the
//! `otel` feature, the same spans also go to an OpenTelemetry collector (see `traces`).

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, fmt};

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// What must outlive the program's work: the trace exporter, flushed by `shutdown`.
#[derive(Default)]
#[must_use = "call shutdown() before exiting, or buffered spans are lost"]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    traces: Option<super::traces::Exporter>,
}

impl Telemetry {
    /// Flushes buffered spans (a no-op without the `otel` feature or an endpoint).
    pub async fn shutdown(self) {
        #[cfg(feature = "otel")]
        if let Some(exporter) = self.traces {
            // The exporter blocks while it sends; keep that off the async workers.
            let _ = tokio::task::spawn_blocking(move || exporter.shutdown()).await;
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides the default `info` level of the logs.
pub fn init(format: LogFormat) -> Telemetry {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let logs = match format {
        LogFormat::Text => fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => fmt::layer().json().flatten_event(true).with_writer(std::io::stderr).boxed(),
    }
    .with_filter(filter());
    let registry = tracing_subscriber::registry().with(logs);

    #[cfg(feature = "otel")]
    {
        let mut telemetry = Telemetry::default();
        let mut problem = None;
        let traces = if super::traces::requested() {
            match super::traces::layer() {
                Ok((layer, exporter)) => {
                    telemetry.traces = Some(exporter);
                    Some(layer.with_filter(super::traces::filter()))
                }
                Err(e) => {
                    problem = Some(e);
                    None
                }
            }
        } else {
            None
        };
        // A second init (e.g. in tests) keeps the first subscriber.
        let _ = registry.with(traces).try_init();
        if let Some(error) = problem {
            tracing::warn!(%error, "traces are not exported");
        }
        telemetry
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = registry.try_init();
        if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
            tracing::warn!("OTEL_EXPORTER_OTLP_ENDPOINT is set, but this build has no `otel` feature: no traces");
        }
        Telemetry::default()
    }
}
