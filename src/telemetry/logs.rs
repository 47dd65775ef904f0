//! Logs: `tracing` with structured fields, as text for people or JSON for collectors; with the
//! `otel` feature, the same spans also go to an OpenTelemetry collector (see `traces`).

use std::path::Path;
use std::sync::Mutex;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use tracing_subscriber::fmt::writer::BoxMakeWriter;
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
    init_to(format, None)
}

/// [`init`], the logs appended to `file` instead of stderr when it names one (and stderr, with
/// a warning, if the file cannot be opened).
pub fn init_to(format: LogFormat, file: Option<&Path>) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let opened = file.map(|path| {
        let opened = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::OpenOptions::new().create(true).append(true).open(path));
        (path, opened)
    });
    let (writer, problem) = match opened {
        Some((_, Ok(file))) => (BoxMakeWriter::new(Mutex::new(file)), None),
        Some((path, Err(e))) => (BoxMakeWriter::new(std::io::stderr), Some(format!("{}: {e}", path.display()))),
        None => (BoxMakeWriter::new(std::io::stderr), None),
    };
    let logs = match format {
        LogFormat::Text => fmt::layer().with_ansi(file.is_none()).with_writer(writer).boxed(),
        LogFormat::Json => fmt::layer().json().flatten_event(true).with_writer(writer).boxed(),
    }
    .with_filter(filter)
    .boxed();
    let telemetry = install(logs);
    if let Some(problem) = problem {
        tracing::warn!(%problem, "cannot write the log file; logging to stderr");
    }
    telemetry
}

/// Installs `logs` (and, with the `otel` feature, the trace layer) as the global subscriber.
fn install(logs: Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>) -> Telemetry {
    let registry = tracing_subscriber::registry().with(logs);

    #[cfg(feature = "otel")]
    {
        let (traces, exporter, problem) = match traces_requested().then(super::traces::layer) {
            Some(Ok((layer, exporter))) => (Some(layer.with_filter(super::traces::filter())), Some(exporter), None),
            Some(Err(problem)) => (None, None, Some(problem)),
            None => (None, None, None),
        };
        // A second init (e.g. in tests) keeps the first subscriber.
        let _ = registry.with(traces).try_init();
        if let Some(error) = problem {
            tracing::warn!(%error, "traces are not exported");
        }
        Telemetry { traces: exporter }
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = registry.try_init();
        if traces_requested() {
            tracing::warn!("an OTLP endpoint is set, but this build has no `otel` feature: no traces");
        }
        Telemetry::default()
    }
}

/// Whether the environment asks for traces: an OTLP endpoint is set and the SDK not disabled.
fn traces_requested() -> bool {
    let set = |name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}
