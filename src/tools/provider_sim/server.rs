//! `switchyard provider-sim`: the simulated cloud ([`Cloud`]) served over the provider
//! protocol. It is the reference implementation of `docs/provider-protocol.yaml` and the
//! stand-in cloud of end-to-end tests: durable (journal), with a ledger endpoint and faults
//! settable while it runs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{MatchedPath, Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{Instrument, debug, info, info_span, warn};

use super::journal::{Journal, JournalError};
use crate::api::SimulatedSettings;
use crate::provider::http::client::BearerToken;
use crate::provider::http::wire::{
    CALLER_HEADER, CLUSTER_HEADER, CreateInstance, DEFAULT_PAGE_LIMIT, EPOCH_HEADER, ErrorBody, ErrorCode, Fence,
    Health, Instance, InstanceList, InventoryPage, OPERATION_HEADER, RaiseFence, StopInstance, Stopped, VERSION,
    valid_key,
};
use crate::provider::simulated::{self, Answer, Cloud, Clouds, Faults, LedgerEntry};
use crate::provider::{CallContext, DriverError, InstanceState, PAGE_TOKEN_MAX};

/// Options of `switchyard provider-sim`.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Address to listen on; port 0 picks a free port. Prints `listening http://ADDR` once bound.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The provider's name, as its ledger records calls.
    #[arg(long, default_value = "sim")]
    pub name: String,
    /// File holding the bearer token clients must present (re-read on change).
    #[arg(long)]
    pub token_file: PathBuf,
    /// Directory for durable state (the ledger journal); without it, state is lost on exit.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Latency of each create (e.g. 200ms).
    #[arg(long, default_value = "0ms", value_parser = crate::runtime::parse_duration)]
    pub provision_latency: Duration,
    /// Latency of each stop.
    #[arg(long, default_value = "0ms", value_parser = crate::runtime::parse_duration)]
    pub stop_latency: Duration,
    /// PEM certificate chain: serve https instead of http.
    #[arg(long, requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("state dir {dir} holds the ledger of provider {found:?}, not {name:?}")]
    WrongProvider { dir: PathBuf, found: String, name: String },
    #[error("token file {path}: {reason}")]
    Token { path: PathBuf, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The bearer token, re-read from its file on every request so it can be rotated in place; a
/// failed read keeps the last good token.
#[derive(Debug)]
struct TokenFile {
    path: PathBuf,
    last: Mutex<BearerToken>,
}

impl TokenFile {
    fn open(path: &Path) -> Result<Self, SimError> {
        let token = read_token(path)?;
        Ok(Self { path: path.to_owned(), last: Mutex::new(token) })
    }

    fn current(&self) -> BearerToken {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(token) = read_token(&self.path) {
            *last = token;
        }
        last.clone()
    }

    /// Whether `presented` is the token, compared in constant time.
    fn accepts(&self, presented: &str) -> bool {
        let token = self.current();
        let (a, b) = (token.expose().as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

fn read_token(path: &Path) -> Result<BearerToken, SimError> {
    let err = |reason: String| SimError::Token { path: path.to_owned(), reason };
    let token = BearerToken::new(&std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?);
    if token.is_empty() {
        return Err(err("empty".to_owned()));
    }
    Ok(token)
}

/// One provider-sim: its cloud, durable if it has a state dir.
#[derive(Debug)]
pub struct ProviderSim {
    name: String,
    clouds: Clouds,
    cloud: Arc<Cloud>,
    token: TokenFile,
    latency: SimulatedSettings,
}

impl ProviderSim {
    /// Opens the provider: replays the journal in the state dir, if any, and journals from now on.
    pub fn open(args: &SimArgs) -> Result<Self, SimError> {
        let token = TokenFile::open(&args.token_file)?;
        let clouds = match &args.state_dir {
            None => Clouds::new(),
            Some(dir) => {
                let (journal, entries) = Journal::open(dir)?;
                if let Some(e) = entries.iter().find(|e| e.provider != args.name) {
                    return Err(SimError::WrongProvider {
                        dir: dir.clone(),
                        found: e.provider.clone(),
                        name: args.name.clone(),
                    });
                }
                info!(entries = entries.len(), dir = %dir.display(), "replayed the ledger journal");
                let clouds = Clouds::restore(entries);
                clouds.set_sink(Arc::new(journal));
                clouds
            }
        };
        let latency = SimulatedSettings {
            provision_latency_ms: u64::try_from(args.provision_latency.as_millis()).unwrap_or(u64::MAX),
            stop_latency_ms: u64::try_from(args.stop_latency.as_millis()).unwrap_or(u64::MAX),
        };
        let cloud = clouds.cloud(&args.name);
        Ok(Self { name: args.name.clone(), clouds, cloud, token, latency })
    }

    /// The protocol's routes, and the admin routes, behind bearer-token auth.
    pub fn router(self: Arc<Self>) -> axum::Router {
        let api = axum::Router::new()
            .route("/v1/health", get(health))
            .route("/v1/instances", post(create).get(list))
            .route("/v1/instances/{id}", get(get_instance))
            .route("/v1/instances/{id}/stop", post(stop))
            .route("/v1/workspaces/{uid}/fence", post(fence))
            // A provider that is down answers every protocol call 503; the admin routes stay
            // up so the fault can be cleared.
            .route_layer(middleware::from_fn_with_state(self.clone(), refuse_all));
        let admin = axum::Router::new()
            .route("/v1/admin/ledger", get(ledger))
            .route("/v1/admin/faults", get(faults).put(set_faults))
            .route("/v1/admin/instances", get(all_instances));
        api.merge(admin)
            .route_layer(middleware::from_fn_with_state(self.clone(), authenticate))
            .route_layer(middleware::from_fn(traced))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(self)
    }
}

/// A protocol error answer.
#[derive(Debug)]
pub struct ApiError(pub ErrorBody);

impl ApiError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(ErrorBody::new(code, message))
    }
}

impl From<DriverError> for ApiError {
    fn from(e: DriverError) -> Self {
        match e {
            DriverError::StaleEpoch { epoch, newest } => Self(ErrorBody {
                newest_epoch: Some(newest),
                ..ErrorBody::new(
                    ErrorCode::StaleEpoch,
                    format!("epoch {epoch} is older than {newest}, the newest seen for this workspace"),
                )
            }),
            DriverError::Rejected(m) => Self::new(ErrorCode::Conflict, m),
            DriverError::Transient(m) => Self::new(ErrorCode::Unavailable, m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(self.0)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        Self::new(ErrorCode::InvalidRequest, e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self::new(ErrorCode::InvalidRequest, e.body_text())
    }
}

/// Marks a response that must not be sent: the connection is dropped instead, so the client
/// sees a lost answer after the effect committed.
#[derive(Clone, Copy, Debug)]
struct DropConnection;

#[derive(Debug, thiserror::Error)]
#[error("answer dropped by an injected fault")]
struct AnswerDropped;

type Sim = State<Arc<ProviderSim>>;

async fn authenticate(State(sim): Sim, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if sim.token.accepts(token.trim()) => next.run(request).await,
        Some(_) => ApiError::new(ErrorCode::Unauthorized, "wrong bearer token").into_response(),
        None => ApiError::new(ErrorCode::Unauthorized, "missing bearer token").into_response(),
    }
}

/// Each request in a span; with the `otel` feature, a child of the caller's trace.
async fn traced(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let span = info_span!(
        "request",
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
        http.request.method = %request.method(),
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    crate::telemetry::otel_span(&span, format_args!("{} {route}", request.method()), "server");
    #[cfg(feature = "otel")]
    crate::telemetry::continue_trace(&span, request.headers());
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

async fn refuse_all(State(sim): Sim, request: Request, next: Next) -> Response {
    if sim.cloud.faults().refuse_all {
        return ApiError::new(ErrorCode::Unavailable, "provider refuses all calls (injected)").into_response();
    }
    next.run(request).await
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, "method not allowed on this endpoint")
}

async fn health(State(sim): Sim) -> Json<Health> {
    Json(Health { status: "ok".to_owned(), provider: sim.name.clone(), versions: vec![VERSION.to_owned()] })
}

/// Waits out a call's latency (`base` plus the injected extra), then runs the engine call off
/// the async workers (it may fsync the journal) and turns its answer into a response; a lost
/// answer drops the connection, a hang never answers.
async fn engine<T: Send + 'static>(
    cloud: &Arc<Cloud>,
    base: Duration,
    call: impl FnOnce(&Cloud) -> Answer<T> + Send + 'static,
    respond: impl FnOnce(T) -> Response,
) -> Response {
    cloud.latency(base).await;
    let cloud = cloud.clone();
    match tokio::task::spawn_blocking(move || call(&cloud)).await {
        Ok(Answer::Reply(Ok(v))) => respond(v),
        Ok(Answer::Reply(Err(e))) => ApiError::from(e).into_response(),
        Ok(Answer::Lost) => {
            let mut response = StatusCode::SERVICE_UNAVAILABLE.into_response();
            response.extensions_mut().insert(DropConnection);
            response
        }
        Ok(Answer::Hang) => std::future::pending().await,
        Err(e) => ApiError::new(ErrorCode::Internal, format!("engine task failed: {e}")).into_response(),
    }
}

async fn create(State(sim): Sim, body: Result<Json<CreateInstance>, JsonRejection>) -> Result<Response, ApiError> {
    let Json(body) = body?;
    if !valid_key(&body.key) {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "key must be 1-253 characters of [A-Za-z0-9._-]"));
    }
    let uid = body.call.workspace_uid.clone();
    let (key, ctx) = (body.key, CallContext::from(body.call));
    Ok(engine(
        &sim.cloud,
        Duration::from_millis(sim.latency.provision_latency_ms),
        move |cloud| cloud.provision_now(&ctx, &key),
        |p| {
            let status = if p.created { StatusCode::CREATED } else { StatusCode::OK };
            let i = p.instance;
            (status, Json(Instance { id: i.id, key: i.key, workspace_uid: uid, state: i.state })).into_response()
        },
    )
    .await)
}

async fn stop(
    State(sim): Sim,
    UrlPath(id): UrlPath<String>,
    body: Result<Json<StopInstance>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let ctx = CallContext::from(body.call);
    Ok(engine(
        &sim.cloud,
        Duration::from_millis(sim.latency.stop_latency_ms),
        move |cloud| cloud.stop_now(&ctx, &id).map_reply(|()| id),
        |id| Json(Stopped { id, state: InstanceState::Stopped }).into_response(),
    )
    .await)
}

async fn fence(
    State(sim): Sim,
    UrlPath(uid): UrlPath<String>,
    body: Result<Json<RaiseFence>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    if body.call.workspace_uid != uid {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "workspaceUid in the body must equal the path's uid"));
    }
    let ctx = CallContext::from(body.call);
    let epoch = ctx.epoch;
    let respond = move |()| Json(Fence { workspace_uid: uid, epoch }).into_response();
    Ok(engine(&sim.cloud, Duration::ZERO, move |cloud| cloud.fence_now(&ctx), respond).await)
}

async fn get_instance(State(sim): Sim, UrlPath(id): UrlPath<String>) -> Result<Json<Instance>, ApiError> {
    read_faults(&sim).await;
    sim.cloud.wire(&id).map(Json).ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no instance {id}")))
}

/// `GET /v1/instances` in all its forms: by workspace, by key, or an inventory page by cluster.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct InstancesQuery {
    workspace_uid: Option<String>,
    key: Option<String>,
    cluster: Option<String>,
    page_token: Option<String>,
    limit: Option<u32>,
}

async fn list(
    State(sim): Sim,
    headers: HeaderMap,
    query: Result<Query<InstancesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let uid = match (query.workspace_uid, query.cluster) {
        (Some(uid), _) => uid,
        (None, Some(cluster)) => return inventory(&sim, cluster, query.page_token, query.limit).await,
        (None, None) => {
            return Err(ApiError::new(ErrorCode::InvalidRequest, "one of workspaceUid or cluster is required"));
        }
    };
    let Some(key) = query.key else {
        read_faults(&sim).await;
        let items = sim.cloud.instances().into_iter().map(|i| i.wire).filter(|i| i.workspace_uid == uid);
        return Ok(Json(InstanceList { items: items.collect() }).into_response());
    };
    // A lookup by key goes through the engine so the ledger records it (invariant 4 checks it).
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let Ok(epoch) = text(EPOCH_HEADER).parse() else {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("a lookup by key needs its fencing epoch in the {EPOCH_HEADER} header"),
        ));
    };
    let ctx = CallContext {
        namespace: String::new(),
        name: String::new(),
        workspace_uid: uid.clone(),
        epoch,
        caller: text(CALLER_HEADER),
        operation_id: text(OPERATION_HEADER),
        cluster: text(CLUSTER_HEADER),
    };
    let cloud = sim.cloud.clone();
    Ok(engine(
        &sim.cloud,
        Duration::ZERO,
        move |cloud| cloud.lookup_now(&ctx, &key),
        move |found| {
            let items = found.and_then(|f| cloud.wire(&f.id)).filter(|i| i.workspace_uid == uid);
            Json(InstanceList { items: items.into_iter().collect() }).into_response()
        },
    )
    .await)
}

/// One inventory page of `cluster`: not ledgered, fences nothing.
async fn inventory(
    sim: &Arc<ProviderSim>,
    cluster: String,
    page: Option<String>,
    limit: Option<u32>,
) -> Result<Response, ApiError> {
    if page.as_ref().is_some_and(|p| p.is_empty() || p.len() > PAGE_TOKEN_MAX) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("pageToken must be 1-{PAGE_TOKEN_MAX} characters"),
        ));
    }
    let limit = limit.unwrap_or(DEFAULT_PAGE_LIMIT);
    Ok(engine(
        &sim.cloud,
        Duration::ZERO,
        move |cloud| cloud.list_now(&cluster, page.as_deref(), limit),
        |p| {
            let items = p.items.into_iter().map(Into::into).collect();
            Json(InventoryPage { items, next_page_token: p.next }).into_response()
        },
    )
    .await)
}

/// Reads outside the engine still feel its latency and hang.
async fn read_faults(sim: &ProviderSim) {
    sim.cloud.latency(Duration::ZERO).await;
    if sim.cloud.faults().hang {
        std::future::pending::<()>().await;
    }
}

async fn ledger(State(sim): Sim) -> Json<Vec<LedgerEntry>> {
    Json(sim.clouds.ledger())
}

async fn faults(State(sim): Sim) -> Json<Faults> {
    Json(sim.cloud.faults())
}

async fn set_faults(State(sim): Sim, body: Result<Json<Faults>, JsonRejection>) -> Result<Json<Faults>, ApiError> {
    let Json(faults) = body?;
    let rates = [faults.provision_error_rate, faults.stop_error_rate];
    if rates.iter().any(|r| !(0.0..=1.0).contains(r)) {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "error rates must be within 0.0..=1.0"));
    }
    info!(?faults, "faults set");
    sim.cloud.set_faults(faults.clone());
    Ok(Json(faults))
}

async fn all_instances(State(sim): Sim) -> Json<Vec<simulated::Instance>> {
    Json(sim.cloud.instances())
}

/// A TLS server config (rustls on ring) from PEM files.
pub fn tls_acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, SimError> {
    let tls = |what: &Path, e: &dyn std::fmt::Display| SimError::Tls(format!("{}: {e}", what.display()));
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls(cert_file, &e))?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| tls(key_file, &e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| tls(cert_file, &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` (over TLS if `tls` is given) until `shutdown` resolves. Each
/// connection runs on hyper directly (not `axum::serve`) so a response marked
/// `DropConnection` can abort the connection without an answer.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let (router, tls) = (router.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, router, peer).await,
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => serve_connection(stream, router, peer).await,
                    Err(e) => debug!(%peer, error = %e, "TLS handshake failed"),
                },
            }
        });
    }
}

async fn serve_connection<I>(io: I, router: axum::Router, peer: SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let router = router.clone();
        async move {
            let response = router.oneshot(request.map(axum::body::Body::new)).await;
            let response = response.unwrap_or_else(|e: Infallible| match e {});
            if response.extensions().get::<DropConnection>().is_some() {
                return Err(AnswerDropped);
            }
            Ok(response)
        }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service).await {
        debug!(%peer, error = %e, "connection ended");
    }
}

/// `switchyard provider-sim`: opens the state, binds, prints `listening http://ADDR`, serves
/// until `shutdown`.
pub async fn run(args: SimArgs, shutdown: impl Future<Output = ()>) -> Result<(), SimError> {
    let sim = Arc::new(ProviderSim::open(&args)?);
    let tls = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let listener =
        TcpListener::bind(args.listen).await.map_err(|source| SimError::Listen { addr: args.listen, source })?;
    let addr = listener.local_addr().map_err(|source| SimError::Listen { addr: args.listen, source })?;
    // The one line on stdout: tests and scripts read the port from it.
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("listening {scheme}://{addr}");
    info!(%addr, scheme, provider = %args.name, durable = args.state_dir.is_some(), "provider-sim serving");
    serve(listener, sim.router(), tls, shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use serde_json::{Value, json};

    use super::*;

    struct Fixture {
        router: axum::Router,
        sim: Arc<ProviderSim>,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "t0k\n").unwrap();
        let args = SimArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            name: "east".into(),
            token_file: dir.path().join("token"),
            state_dir: Some(dir.path().join("state")),
            provision_latency: Duration::ZERO,
            stop_latency: Duration::ZERO,
            tls_cert_file: None,
            tls_key_file: None,
        };
        let sim = Arc::new(ProviderSim::open(&args).unwrap());
        Fixture { router: sim.clone().router(), sim, _dir: dir }
    }

    async fn send(f: &Fixture, method: &str, uri: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let response = send_raw(f, method, uri, token, body).await;
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn send_raw(f: &Fixture, method: &str, uri: &str, token: Option<&str>, body: Option<Value>) -> Response {
        let mut request = axum::http::Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(b) => {
                request = request.header("content-type", "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        f.router.clone().oneshot(request.body(body).unwrap()).await.unwrap()
    }

    fn create(key: &str, epoch: i64) -> Value {
        json!({"key": key, "workspaceUid": "u1", "epoch": epoch, "caller": "c", "operationId": "op"})
    }

    const T: Option<&str> = Some("t0k");

    #[tokio::test]
    async fn auth_is_required_everywhere_but_unknown_paths() {
        let f = fixture();
        for (method, uri) in [("GET", "/v1/health"), ("GET", "/v1/admin/ledger"), ("PUT", "/v1/admin/faults")] {
            let response = send_raw(&f, method, uri, None, None).await;
            assert_eq!(response.status(), 401, "{method} {uri}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            let (status, body) = send(&f, method, uri, Some("nope"), None).await;
            assert_eq!(
                (status, body["code"].as_str(), body["retryable"].as_bool()),
                (401, Some("Unauthorized"), Some(false))
            );
        }
        let (status, body) = send(&f, "GET", "/v1/health", T, None).await;
        assert_eq!((status, body["provider"].as_str()), (200, Some("east")));
    }

    #[tokio::test]
    async fn create_is_201_then_200_and_stale_epochs_are_409() {
        let f = fixture();
        let (status, a) = send(&f, "POST", "/v1/instances", T, Some(create("k1", 2))).await;
        assert_eq!((status, a["state"].as_str(), a["workspaceUid"].as_str()), (201, Some("Running"), Some("u1")));
        let (status, again) = send(&f, "POST", "/v1/instances", T, Some(create("k1", 2))).await;
        assert_eq!((status, &again), (200, &a));
        let (status, err) = send(&f, "POST", "/v1/instances", T, Some(create("k2", 1))).await;
        assert_eq!(status, 409);
        assert_eq!(
            (err["code"].as_str(), err["retryable"].as_bool(), err["newestEpoch"].as_i64()),
            (Some("StaleEpoch"), Some(false), Some(2))
        );
        let id = a["id"].as_str().unwrap();
        let (status, stopped) = send(&f, "POST", &format!("/v1/instances/{id}/stop"), T, Some(create("", 2))).await;
        assert_eq!((status, stopped["state"].as_str()), (200, Some("Stopped")));
    }

    #[tokio::test]
    async fn bad_requests_are_400_with_an_error_body() {
        let f = fixture();
        let (status, err) = send(&f, "POST", "/v1/instances", T, Some(json!({"key": "k"}))).await;
        assert_eq!(
            (status, err["code"].as_str(), err["retryable"].as_bool()),
            (400, Some("InvalidRequest"), Some(false))
        );
        let (status, _) = send(&f, "POST", "/v1/instances", T, Some(create("bad key", 1))).await;
        assert_eq!(status, 400);
        let (status, err) = send(&f, "GET", "/v1/instances", T, None).await;
        assert_eq!((status, err["code"].as_str()), (400, Some("InvalidRequest")));
        let (status, err) = send(&f, "DELETE", "/v1/health", T, None).await;
        assert_eq!((status, err["code"].as_str()), (400, Some("InvalidRequest")));
        let (status, err) = send(&f, "PUT", "/v1/admin/faults", T, Some(json!({"stopErrorRate": 2.0}))).await;
        assert_eq!((status, err["code"].as_str()), (400, Some("InvalidRequest")));
    }

    #[tokio::test]
    async fn refuse_all_is_503_for_the_protocol_but_not_for_admin() {
        let f = fixture();
        let (status, _) = send(&f, "PUT", "/v1/admin/faults", T, Some(json!({"refuseAll": true}))).await;
        assert_eq!(status, 200);
        let (status, err) = send(&f, "GET", "/v1/health", T, None).await;
        assert_eq!((status, err["code"].as_str(), err["retryable"].as_bool()), (503, Some("Unavailable"), Some(true)));
        let (status, _) = send(&f, "POST", "/v1/instances", T, Some(create("k1", 1))).await;
        assert_eq!(status, 503);
        assert!(f.sim.cloud.instances().is_empty());
        let (status, faults) = send(&f, "GET", "/v1/admin/faults", T, None).await;
        assert_eq!((status, faults["refuseAll"].as_bool()), (200, Some(true)));
    }

    #[tokio::test]
    async fn a_dropped_answer_commits_and_marks_the_response() {
        let f = fixture();
        f.sim.cloud.set_faults(Faults { drop_provision_response: 1, ..Faults::default() });
        let response = send_raw(&f, "POST", "/v1/instances", T, Some(create("k1", 1))).await;
        assert!(response.extensions().get::<DropConnection>().is_some());
        assert_eq!(f.sim.cloud.instances().len(), 1, "committed before the answer was dropped");
        let (status, ledger) = send(&f, "GET", "/v1/admin/ledger", T, None).await;
        assert_eq!((status, ledger[0]["outcome"].clone()), (200, json!({"committedResponseLost": {"created": true}})));
    }

    #[tokio::test]
    async fn transient_engine_failures_are_503_retryable() {
        let f = fixture();
        f.sim.cloud.set_faults(Faults { fail_provision: 1, ..Faults::default() });
        let (status, err) = send(&f, "POST", "/v1/instances", T, Some(create("k1", 1))).await;
        assert_eq!((status, err["retryable"].as_bool()), (503, Some(true)));
        let (status, _) = send(&f, "POST", "/v1/instances", T, Some(create("k1", 1))).await;
        assert_eq!(status, 201);
    }

    #[tokio::test]
    async fn lookups_by_key_are_ledgered_with_their_attribution() {
        let f = fixture();
        send(&f, "POST", "/v1/instances", T, Some(create("k1", 1))).await;
        let request = axum::http::Request::builder()
            .uri("/v1/instances?workspaceUid=u1&key=k1")
            .header("authorization", "Bearer t0k")
            .header(CALLER_HEADER, "ctrl-b")
            .header(EPOCH_HEADER, "4")
            .header(OPERATION_HEADER, "op-4");
        let response = f.router.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), 200);
        let entry = f.sim.clouds.ledger().pop().unwrap();
        assert_eq!((entry.caller.as_str(), entry.epoch, entry.operation_id.as_str()), ("ctrl-b", 4, "op-4"));
        assert_eq!(entry.outcome, simulated::Outcome::Found);
    }

    #[tokio::test]
    async fn the_fence_endpoint_raises_the_fence_durably() {
        let f = fixture();
        let call = json!({"workspaceUid": "u1", "epoch": 4, "caller": "c", "operationId": "op", "cluster": "c1"});
        let (status, body) = send(&f, "POST", "/v1/workspaces/u1/fence", T, Some(call.clone())).await;
        assert_eq!((status, body), (200, json!({"workspaceUid": "u1", "epoch": 4})));
        let (status, _) = send(&f, "POST", "/v1/workspaces/u1/fence", T, Some(call)).await;
        assert_eq!(status, 200, "idempotent");
        let (status, err) = send(&f, "POST", "/v1/instances", T, Some(create("k1", 3))).await;
        assert_eq!((status, err["code"].as_str(), err["newestEpoch"].as_i64()), (409, Some("StaleEpoch"), Some(4)));
        let older = json!({"workspaceUid": "u1", "epoch": 3, "caller": "c", "operationId": "op"});
        let (status, err) = send(&f, "POST", "/v1/workspaces/u1/fence", T, Some(older)).await;
        assert_eq!((status, err["code"].as_str()), (409, Some("StaleEpoch")));
        let other = json!({"workspaceUid": "u2", "epoch": 9, "caller": "c", "operationId": "op"});
        let (status, _) = send(&f, "POST", "/v1/workspaces/u1/fence", T, Some(other)).await;
        assert_eq!(status, 400, "body and path must name one workspace");
        // Reopened from its journal, the provider keeps the fence.
        let reopened = ProviderSim::open(&SimArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            name: "east".into(),
            token_file: f._dir.path().join("token"),
            state_dir: Some(f._dir.path().join("state")),
            provision_latency: Duration::ZERO,
            stop_latency: Duration::ZERO,
            tls_cert_file: None,
            tls_key_file: None,
        })
        .unwrap();
        assert_eq!(reopened.cloud.newest_epoch("u1"), Some(4));
        let fenced = reopened.clouds.ledger().into_iter().filter(|e| e.call == simulated::Call::Fence).count();
        assert_eq!(fenced, 3);
    }

    #[tokio::test]
    async fn lookups_by_key_need_an_epoch_and_are_fenced() {
        let f = fixture();
        send(&f, "POST", "/v1/instances", T, Some(create("k1", 5))).await;
        let lookup = |epoch: Option<&str>| {
            let mut request = axum::http::Request::builder()
                .uri("/v1/instances?workspaceUid=u1&key=k1")
                .header("authorization", "Bearer t0k");
            if let Some(e) = epoch {
                request = request.header(EPOCH_HEADER, e);
            }
            let router = f.router.clone();
            async move { router.oneshot(request.body(Body::empty()).unwrap()).await.unwrap().status() }
        };
        assert_eq!(lookup(None).await, 400);
        assert_eq!(lookup(Some("x")).await, 400);
        assert_eq!(lookup(Some("4")).await, 409);
        assert_eq!(lookup(Some("6")).await, 200);
        assert_eq!(f.sim.cloud.newest_epoch("u1"), Some(6), "an admitted lookup raises the fence");
    }

    #[tokio::test]
    async fn the_inventory_pages_through_one_cluster() {
        let f = fixture();
        for n in 0..3 {
            let body = json!({"key": format!("k{n}"), "workspaceUid": format!("u{n}"), "epoch": 1,
                              "caller": "c", "operationId": "op", "cluster": "c1", "namespace": "ns", "name": "w"});
            send(&f, "POST", "/v1/instances", T, Some(body)).await;
        }
        send(&f, "POST", "/v1/instances", T, Some(create("other", 1))).await;
        let (status, page) = send(&f, "GET", "/v1/instances?cluster=c1&limit=2", T, None).await;
        assert_eq!(status, 200);
        assert_eq!(page["items"].as_array().unwrap().len(), 2);
        assert_eq!(page["items"][0]["fence"], 1);
        assert_eq!(page["items"][0]["namespace"], "ns");
        let token = page["nextPageToken"].as_str().unwrap().to_owned();
        let (status, page) =
            send(&f, "GET", &format!("/v1/instances?cluster=c1&limit=2&pageToken={token}"), T, None).await;
        assert_eq!((status, page["items"].as_array().unwrap().len()), (200, 1));
        assert!(page.get("nextPageToken").is_none());
        let (_, page) = send(&f, "GET", "/v1/instances?cluster=", T, None).await;
        assert_eq!(page["items"][0]["key"], "other", "instances created without a cluster are listed under \"\"");
        let long = "t".repeat(PAGE_TOKEN_MAX + 1);
        let (status, _) = send(&f, "GET", &format!("/v1/instances?cluster=c1&pageToken={long}"), T, None).await;
        assert_eq!(status, 400);
        let ledgered = f.sim.clouds.ledger().len();
        assert_eq!(ledgered, 4, "listing is not ledgered");
    }

    #[test]
    fn a_state_dir_of_another_provider_is_refused() {
        let f = fixture();
        let dir = f._dir.path();
        let args = |name: &str| SimArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            name: name.into(),
            token_file: dir.join("token"),
            state_dir: Some(dir.join("state")),
            provision_latency: Duration::ZERO,
            stop_latency: Duration::ZERO,
            tls_cert_file: None,
            tls_key_file: None,
        };
        let ctx = CallContext {
            namespace: String::new(),
            name: String::new(),
            workspace_uid: "u1".into(),
            epoch: 1,
            caller: "c".into(),
            operation_id: "op".into(),
            cluster: "c1".into(),
        };
        assert!(matches!(f.sim.cloud.provision_now(&ctx, "k"), Answer::Reply(Ok(_))));
        assert!(matches!(ProviderSim::open(&args("west")), Err(SimError::WrongProvider { .. })));
    }
}
