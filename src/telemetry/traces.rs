//! Traces (cargo feature `otel`): each reconcile, protocol step, provider call and (at debug) API
//! request becomes an OpenTelemetry span, exported over OTLP/HTTP. Configured only by the standard
//! variables: nothing is exported unless `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; `OTEL_EXPORTER_OTLP_PROTOCOL` picks
//! `http/protobuf` (default) or `http/json`; `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER[_ARG]` and `OTEL_BSP_*` work as the specification says.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;

/// Which spans are exported: `SWITCHYARD_TRACE_FILTER` (EnvFilter syntax), or ours at info plus
/// the kube client's request spans, which it creates at debug.
const DEFAULT_FILTER: &str = "info,kube=warn,kube_client::client::builder=debug";

/// The exporter, kept to flush it at exit.
pub struct Exporter(SdkTracerProvider);

impl Exporter {
    /// Sends what is buffered; spans ended after this are dropped.
    pub fn shutdown(self) {
        if let Err(error) = self.0.shutdown() {
            tracing::warn!(%error, "trace exporter shutdown");
        }
    }
}

/// The span filter of the trace layer.
pub fn filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_TRACE_FILTER")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER))
}

/// The tracing layer that turns spans into OpenTelemetry spans, or why it could not be built.
pub fn layer<S>()
-> Result<(tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>, Exporter), String>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    // https collectors: the exporter's client uses rustls without a built-in crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = SpanExporter::builder().with_http().build().map_err(|e| format!("OTLP trace exporter: {e}"))?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("switchyard");
    }
    let resource =
        resource.with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))).build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let tracer = provider.tracer("switchyard");
    Ok((tracing_opentelemetry::layer().with_tracer(tracer), Exporter(provider)))
}

/// The W3C trace context of the current span, as headers for an outgoing request, so a
/// provider's spans join the controller's trace.
pub fn context_headers() -> http::HeaderMap {
    use opentelemetry::propagation::TextMapPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let mut headers = http::HeaderMap::new();
    let cx = tracing::Span::current().context();
    opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .inject_context(&cx, &mut opentelemetry_http::HeaderInjector(&mut headers));
    headers
}

/// Makes `span` a child of the trace context an incoming request carries (if any).
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .extract(&opentelemetry_http::HeaderExtractor(headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}
