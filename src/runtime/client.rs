//! The Kubernetes client of the controller and the tools: kube's, over HTTP/2 when the API
//! server offers it.
//!
//! Why: kube's own client speaks HTTP/1.1, so every request in flight holds a connection of its
//! own, with its TLS session and buffers; with 64 reconciles and the Event publisher at work
//! that is some seventy connections. One HTTP/2 connection carries them all, as client-go's
//! does. Everything else is kube's: the base URI, authentication (token files are re-read),
//! impersonation and extra headers, the retry of 429/503/504, the connect timeout, and a
//! request span named by verb (what `kube_client::client::builder` spans look like) so traces
//! read the same. Not kube's: its per-socket read and write timeouts, which on one shared
//! connection would cut every stream at once; HTTP/2 pings find a dead connection instead.

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::retry::RetryPolicy;
use kube::client::{Body, ConfigExt};
use kube::{Client, Config};
use tower::retry::RetryLayer;
use tower::{BoxError, ServiceBuilder};
use tower_http::trace::TraceLayer;
use tracing::Span;

/// HTTP/2 flow-control windows, in bytes.
const STREAM_WINDOW: u32 = 512 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// How often an HTTP/2 connection is pinged, and how long an answer may take.
const PING_EVERY: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(15);

/// A client for `config` that negotiates HTTP/2 (falling back to HTTP/1.1).
pub fn http2(config: Config) -> Result<Client, kube::Error> {
    let tls = config.rustls_client_config()?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let hyper: HyperClient<_, Body> = HyperClient::builder(TokioExecutor::new())
        // Flow-control windows of a few hundred KiB instead of hyper's 2 MiB per stream and
        // 5 MiB per connection: a watch that bursts faster than the cache takes it in is held
        // back by the API server, not buffered in the controller's memory. A list page of 500
        // workspaces still fits in one window.
        .http2_initial_stream_window_size(STREAM_WINDOW)
        .http2_initial_connection_window_size(CONNECTION_WINDOW)
        // One connection carries everything, so a dead one must be noticed: a ping unanswered
        // for PING_TIMEOUT closes it and the next request dials again (client-go's health check).
        .timer(TokioTimer::new())
        .http2_keep_alive_interval(PING_EVERY)
        .http2_keep_alive_timeout(PING_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.default_retry.then(|| RetryLayer::new(RetryPolicy::server_retry())))
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<Body>| {
                    tracing::debug_span!(
                        target: "kube_client::client::builder",
                        "HTTP",
                        http.method = %req.method(),
                        http.url = %req.uri(),
                        http.status_code = tracing::field::Empty,
                        otel.name = req.extensions().get::<&'static str>().unwrap_or(&"HTTP"),
                        otel.kind = "client",
                        otel.status_code = tracing::field::Empty,
                    )
                })
                .on_request(())
                .on_response(|res: &Response<Incoming>, _: Duration, span: &Span| {
                    span.record("http.status_code", res.status().as_u16());
                    if res.status().is_client_error() || res.status().is_server_error() {
                        span.record("otel.status_code", "ERROR");
                    }
                })
                .on_body_chunk(())
                .on_eos(())
                .on_failure(|_: tower_http::classify::ServerErrorsFailureClass, _: Duration, span: &Span| {
                    span.record("otel.status_code", "ERROR");
                }),
        )
        .map_err(BoxError::from)
        .service(hyper);
    Ok(Client::new(service, config.default_namespace))
}
