//! The `http` driver: the [`Driver`] trait over the provider protocol. Decisions (how an answer
//! maps to a [`DriverError`], whether to try again) are pure functions; the driver only moves
//! bytes and reads the token Secret.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use reqwest::{Method, RequestBuilder, Url};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::debug;

use super::client::{BearerToken, Endpoint};
use super::wire::{
    CALLER_HEADER, CLUSTER_HEADER, CallFields, CreateInstance, EPOCH_HEADER, ErrorBody, ErrorCode, Fence, Health,
    Instance, InstanceList, InventoryPage, InventoryQuery, ListQuery, OPERATION_HEADER, RaiseFence, StopInstance,
};
use crate::api::{ComputeProvider, HttpSettings, SecretKeyRef};
use crate::provider::{
    CallContext, Driver, DriverError, InstanceInfo, InstancePage, LIST_LIMIT_MAX, PAGE_TOKEN_MAX, Provision,
    clamp_limit,
};

/// How long a token read from a Secret is used before the Secret is read again: a rotated
/// Secret takes effect within this, without a restart.
pub const TOKEN_TTL: Duration = Duration::from_secs(15);

/// Provider-supplied text kept in an error: enough to diagnose, short enough for a condition.
const MAX_MESSAGE: usize = 300;

/// The largest answer body the driver reads (1 MiB): a larger `Content-Length` is refused before
/// any of it is read, and a streamed body is cut off as it passes the cap. No protocol answer
/// comes near it (an inventory page of 500 items is about 250 KiB).
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Attempts per call for answers the protocol marks retryable (and lost connections): every
/// operation is idempotent, so asking again is safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    pub attempts: u32,
    pub first_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self { attempts: 3, first_backoff: Duration::from_millis(100) }
    }
}

/// Where the bearer token comes from.
#[derive(Clone)]
pub enum TokenSource {
    /// No `Authorization` header (a provider without auth).
    None,
    /// A fixed token (tests, the conformance suite).
    Static(BearerToken),
    /// `spec.http.secretRef`, read through the cluster and cached for [`TOKEN_TTL`].
    /// Read for ComputeProvider `provider` (a Secret may be bound to named providers).
    Secret { client: kube::Client, provider: String, secret: SecretKeyRef, cache: TokenCache },
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Tokens read from Secrets, shared by every http driver of a dispatcher.
#[derive(Clone, Debug, Default)]
pub struct TokenCache(Arc<Mutex<HashMap<SecretId, (BearerToken, Instant)>>>);

/// The provider reading it, and namespace, name and key of a Secret entry: a token read for
/// one provider is never handed to another (a Secret may be bound to named providers).
type SecretId = (String, String, String, String);

fn cache_key(provider: &str, s: &SecretKeyRef) -> SecretId {
    (provider.to_owned(), s.namespace.clone(), s.name.clone(), s.key.clone())
}

impl TokenCache {
    fn fresh(&self, provider: &str, secret: &SecretKeyRef) -> Option<BearerToken> {
        let cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(&cache_key(provider, secret)).filter(|(_, at)| at.elapsed() < TOKEN_TTL).map(|(t, _)| t.clone())
    }

    fn put(&self, provider: &str, secret: &SecretKeyRef, token: BearerToken) {
        let key = cache_key(provider, secret);
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(key, (token, Instant::now()));
    }

    fn forget(&self, provider: &str, secret: &SecretKeyRef) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&cache_key(provider, secret));
    }
}

impl TokenSource {
    async fn token(&self) -> Result<Option<BearerToken>, DriverError> {
        match self {
            TokenSource::None => Ok(None),
            TokenSource::Static(t) => Ok(Some(t.clone())),
            TokenSource::Secret { client, provider, secret, cache } => {
                if let Some(t) = cache.fresh(provider, secret) {
                    return Ok(Some(t));
                }
                let t = read_secret_token(client, provider, secret).await?;
                cache.put(provider, secret, t.clone());
                Ok(Some(t))
            }
        }
    }

    /// Drops a cached token the provider refused, so the next attempt reads the Secret again.
    /// Returns whether that can give a different token.
    fn forget(&self) -> bool {
        match self {
            TokenSource::Secret { provider, secret, cache, .. } => {
                cache.forget(provider, secret);
                true
            }
            _ => false,
        }
    }

    /// Where the token came from, for error messages (never the token).
    fn describe(&self) -> String {
        match self {
            TokenSource::None => "no token configured".to_owned(),
            TokenSource::Static(_) => "the configured token".to_owned(),
            TokenSource::Secret { secret, .. } => {
                format!("the token in Secret {}/{} key {:?}", secret.namespace, secret.name, secret.key)
            }
        }
    }
}

/// Reads the token from `secret`. A missing Secret or key is not retryable: someone must create
/// it. Errors name the Secret, never its contents.
async fn read_secret_token(
    client: &kube::Client,
    provider: &str,
    secret: &SecretKeyRef,
) -> Result<BearerToken, DriverError> {
    check_secret_ref(secret)?;
    let name = format!("{}/{}", secret.namespace, secret.name);
    let api = kube::Api::<Secret>::namespaced(client.clone(), &secret.namespace);
    let found = match api.get_opt(&secret.name).await {
        Ok(found) => found,
        Err(kube::Error::Api(status)) if matches!(status.code, 401 | 403) => {
            return Err(DriverError::Rejected(format!("not allowed to read Secret {name}: {}", status.message)));
        }
        Err(e) => return Err(DriverError::Transient(format!("reading Secret {name}: {e}"))),
    };
    let Some(found) = found else {
        return Err(DriverError::Rejected(format!("Secret {name} named by spec.http.secretRef does not exist")));
    };
    if let Some(refusal) = crate::provider::credential_refusal(&found, provider) {
        return Err(DriverError::Rejected(refusal));
    }
    let bytes = found
        .data
        .as_ref()
        .and_then(|d| d.get(&secret.key))
        .map(|b| b.0.clone())
        .or_else(|| found.string_data.as_ref().and_then(|d| d.get(&secret.key)).map(|s| s.clone().into_bytes()));
    let Some(bytes) = bytes else {
        return Err(DriverError::Rejected(format!("Secret {name} has no key {:?}", secret.key)));
    };
    let token = std::str::from_utf8(&bytes)
        .map(BearerToken::new)
        .map_err(|_| DriverError::Rejected(format!("Secret {name} key {:?} is not UTF-8 text", secret.key)))?;
    if token.is_empty() {
        return Err(DriverError::Rejected(format!("Secret {name} key {:?} is empty", secret.key)));
    }
    Ok(token)
}

/// `spec.http.secretRef` names a Secret at all.
fn check_secret_ref(secret: &SecretKeyRef) -> Result<(), DriverError> {
    for (field, value) in [("name", &secret.name), ("namespace", &secret.namespace), ("key", &secret.key)] {
        if value.trim().is_empty() {
            return Err(DriverError::Rejected(format!(
                "spec.http.secretRef.{field} is empty: name the Secret (namespace, name and key) that holds the token"
            )));
        }
    }
    Ok(())
}

/// Whether a bearer token may be sent to `url`: over https, or to a loopback host (127.0.0.0/8,
/// ::1, localhost), where plain http never leaves the machine.
pub fn token_may_travel_to(url: &Url) -> bool {
    use std::net::IpAddr;
    let Some(host) = url.host_str() else { return false };
    let ip = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host).parse::<IpAddr>();
    url.scheme() == "https"
        || match ip {
            Ok(IpAddr::V4(ip)) => ip.is_loopback(),
            Ok(IpAddr::V6(ip)) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
            Err(_) => host.trim_end_matches('.').eq_ignore_ascii_case("localhost"),
        }
}

/// A driver for one provider speaking the protocol.
#[derive(Debug)]
pub struct HttpDriver {
    /// The ComputeProvider's name, for messages.
    provider: String,
    endpoint: Endpoint,
    token: TokenSource,
    /// Bound of one driver call, retries included.
    budget: Duration,
    retry: Retry,
}

/// One HTTP exchange as the driver saw it.
#[derive(Debug)]
enum Exchange {
    Answer {
        status: u16,
        body: Vec<u8>,
    },
    /// No usable answer: the transport failed, or the answer broke a bound before it was read.
    Failed(DriverError),
}

impl HttpDriver {
    /// A driver for `settings`; `budget` bounds each call (retries included). Fails only on
    /// configuration the user must fix (bad URL, bad CA bundle).
    pub fn new(
        provider: &str,
        settings: &HttpSettings,
        token: TokenSource,
        budget: Duration,
    ) -> Result<Self, DriverError> {
        let endpoint = Endpoint::new(&settings.endpoint, settings.ca_bundle.as_deref(), budget)
            .map_err(|e| DriverError::Rejected(format!("spec.http: {e}")))?;
        if !matches!(token, TokenSource::None)
            && !settings.allow_insecure_token
            && !token_may_travel_to(endpoint.base())
        {
            return Err(DriverError::Rejected(format!(
                "spec.http.endpoint {} is plain http to a host that is not loopback, and the bearer token is only \
                 sent over https: use an https:// endpoint (with spec.http.caBundle if its CA is private), or set \
                 spec.http.allowInsecureToken: true if the network to it is trusted",
                endpoint.base()
            )));
        }
        Ok(Self { provider: provider.to_owned(), endpoint, token, budget, retry: Retry::default() })
    }

    pub fn with_retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Sends the request `build` makes until it gets an answer that is not worth repeating,
    /// the attempts run out, or the budget does; then maps the answer with `accept`.
    async fn call<T>(
        &self,
        op: &'static str,
        epoch: Option<i64>,
        build: impl Fn(&Endpoint, Option<&BearerToken>) -> RequestBuilder,
        accept: impl Fn(u16, &[u8]) -> Result<T, DriverError>,
    ) -> Result<T, DriverError> {
        let deadline = Instant::now() + self.budget;
        let mut backoff = self.retry.first_backoff;
        let mut token_refreshed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let token = self.token.token().await?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let exchange = exchange(build(&self.endpoint, token.as_ref()).timeout(remaining), remaining).await;
            let result = match exchange {
                Exchange::Answer { status, body } if (200..300).contains(&status) => accept(status, &body),
                Exchange::Answer { status: 401, .. } if !token_refreshed && self.token.forget() => {
                    // The Secret may have been rotated since we cached it: read it once more.
                    token_refreshed = true;
                    debug!(provider = %self.provider, op, "provider refused the cached token; re-reading the Secret");
                    continue;
                }
                Exchange::Answer { status, body } => {
                    Err(error_from_answer(status, &body, epoch, &self.token.describe()))
                }
                Exchange::Failed(e) => Err(e),
            };
            let result = result.map_err(|e| redact(e, token.as_ref()));
            debug!(provider = %self.provider, op, attempt, ok = result.is_ok(), error = ?result.as_ref().err(), "provider call");
            match result {
                Err(e) if should_retry(&e, attempt, self.retry.attempts, Instant::now() + backoff, deadline) => {
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
                done => return done,
            }
        }
    }

    async fn get_health(&self) -> Result<Health, DriverError> {
        self.call(
            "health",
            None,
            |e, t| e.request(Method::GET, &["health"], t),
            |_, body| {
                let health: Health = decode(body, "health answer")?;
                check_health(&health)?;
                Ok(health)
            },
        )
        .await
    }
}

/// One HTTP exchange: the status and body (at most [`MAX_ANSWER_BYTES`]), or a failure. A
/// transport failure is transient (every call is idempotent, and the answer, not necessarily the
/// effect, is what was lost), except an untrusted certificate, which needs a fix.
async fn exchange(request: RequestBuilder, budget: Duration) -> Exchange {
    let mut response = match request.send().await {
        Ok(r) => r,
        Err(e) => return Exchange::Failed(transport_error(&e, budget)),
    };
    let status = response.status().as_u16();
    let announced = response.content_length();
    if announced.is_some_and(|n| n > MAX_ANSWER_BYTES as u64) {
        return Exchange::Failed(oversized(status, announced));
    }
    // Never trust the announced length for the allocation either.
    let mut body = Vec::with_capacity(announced.map_or(8 << 10, |n| n as usize).min(64 << 10));
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if body.len() + chunk.len() > MAX_ANSWER_BYTES => {
                return Exchange::Failed(oversized(status, None));
            }
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => return Exchange::Answer { status, body },
            Err(e) => return Exchange::Failed(transport_error(&e, budget)),
        }
    }
}

/// An answer past [`MAX_ANSWER_BYTES`]: a protocol violation, not retried (the same provider
/// will answer the same way), and not read any further.
fn oversized(status: u16, announced: Option<u64>) -> DriverError {
    let how = match announced {
        Some(n) => format!("Content-Length {n}"),
        None => "the body kept coming".to_owned(),
    };
    DriverError::Rejected(format!(
        "protocol violation: provider answer larger than 1 MiB ({status}, {how}); not read any further"
    ))
}

fn transport_error(e: &reqwest::Error, budget: Duration) -> DriverError {
    let detail = causes(e);
    if let Some(problem) = tls_problem(e) {
        return DriverError::Rejected(problem);
    }
    DriverError::Transient(if e.is_timeout() {
        format!("no answer within {budget:?}; the call may have taken effect")
    } else if e.is_connect() {
        format!("cannot connect: {detail}")
    } else {
        format!("connection lost before the answer; the call may have taken effect: {detail}")
    })
}

/// A TLS failure that retrying cannot fix: the provider's certificate is not trusted (unknown
/// issuer, expired, wrong name), or the endpoint does not speak TLS at all.
fn tls_problem(e: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(s) = source {
        if let Some(tls) = rustls_error(s) {
            return match tls {
                rustls::Error::InvalidCertificate(why) => Some(format!(
                    "the provider's TLS certificate is not trusted ({why:?}): set spec.http.caBundle to the PEM \
                     of the CA that issued it, or give the provider a certificate for this host name"
                )),
                rustls::Error::NoCertificatesPresented => Some("the provider presented no TLS certificate".to_owned()),
                rustls::Error::InvalidMessage(_) => Some(
                    "the endpoint does not speak TLS: if the provider serves plain http, the endpoint is http://"
                        .to_owned(),
                ),
                rustls::Error::PeerIncompatible(why) => {
                    Some(format!("the provider's TLS is incompatible ({why:?}): it needs TLS 1.2 or 1.3"))
                }
                _ => None,
            };
        }
        source = s.source();
    }
    None
}

/// The rustls error `e` is or wraps. io::Errors nest (the TLS connector wraps the stream's
/// io::Error in another) and leave their inner error out of the source chain: unwrap them.
fn rustls_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = e;
    for _ in 0..8 {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let inner = current.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref())?;
        current = inner;
    }
    None
}

/// An error and its sources, joined: reqwest's own message alone ("error sending request")
/// does not say what went wrong. URLs are left out (they are in the provider's spec anyway).
fn causes(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    if parts.is_empty() { e.to_string() } else { parts.join(": ") }
}

/// Whether to send the same call again: only what the protocol marks retryable, while
/// attempts and budget remain.
fn should_retry(e: &DriverError, attempt: u32, attempts: u32, next_at: Instant, deadline: Instant) -> bool {
    e.is_retryable() && attempt < attempts && next_at < deadline
}

/// Maps a non-2xx answer to a [`DriverError`] per the protocol: the error body's `retryable`
/// decides, `StaleEpoch` fences. Without a valid error body, the HTTP status class decides.
fn error_from_answer(status: u16, body: &[u8], epoch: Option<i64>, token_source: &str) -> DriverError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    match (parsed, epoch) {
        (Some(ErrorBody { code: ErrorCode::StaleEpoch, newest_epoch, .. }), Some(epoch)) => {
            // A refusal proves the provider has seen a newer epoch, at least epoch + 1; a
            // `newestEpoch` that is not newer (negative, equal, older) says nothing more.
            let newest = newest_epoch.filter(|n| *n > epoch).unwrap_or(epoch.saturating_add(1));
            DriverError::StaleEpoch { epoch, newest }
        }
        (parsed, _) => from_error_body(status, body, parsed, token_source),
    }
}

fn from_error_body(status: u16, body: &[u8], parsed: Option<ErrorBody>, token_source: &str) -> DriverError {
    match parsed {
        _ if status == 401 => DriverError::Rejected(format!("401 Unauthorized: the provider refused {token_source}")),
        Some(err) => {
            let text = format!("{status} {:?}: {}", err.code, clip(&err.message));
            if err.retryable { DriverError::Transient(text) } else { DriverError::Rejected(text) }
        }
        None => {
            let text = format!("{status} without a protocol error body: {:?}", clip(&String::from_utf8_lossy(body)));
            if status >= 500 || status == 408 || status == 429 {
                DriverError::Transient(text)
            } else {
                DriverError::Rejected(format!("protocol violation: {text}"))
            }
        }
    }
}

/// Decodes a 2xx body. A body that breaks the protocol is not retried: the same provider will
/// answer the same way.
fn decode<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, DriverError> {
    serde_json::from_slice(body).map_err(|e| {
        DriverError::Rejected(format!(
            "protocol violation: the {what} is not valid ({e}): {:?}",
            clip(&String::from_utf8_lossy(body))
        ))
    })
}

/// Provider text cut to [`MAX_MESSAGE`] characters, control characters (newlines, escape
/// sequences) replaced, so it is safe in a condition, an Event or a terminal.
fn clip(text: &str) -> String {
    let mut clipped: String =
        text.chars().take(MAX_MESSAGE).map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect();
    if text.chars().nth(MAX_MESSAGE).is_some() {
        clipped.push('…');
    }
    clipped
}

/// Tokens shorter than this are not scrubbed from text: they would match ordinary words (and
/// are no secret worth the name anyway).
const MIN_REDACTED_TOKEN: usize = 8;

/// Removes the token from provider-supplied text: a provider that echoes it back must not
/// make it reach logs, Events or status.
fn redact(e: DriverError, token: Option<&BearerToken>) -> DriverError {
    let Some(token) = token.filter(|t| t.expose().len() >= MIN_REDACTED_TOKEN) else { return e };
    let scrub = |s: String| s.replace(token.expose(), "<redacted>");
    match e {
        DriverError::Transient(s) => DriverError::Transient(scrub(s)),
        DriverError::Rejected(s) => DriverError::Rejected(scrub(s)),
        other => other,
    }
}

fn attribute(request: RequestBuilder, call: &CallContext) -> RequestBuilder {
    request
        .header(CALLER_HEADER, &call.caller)
        .header(OPERATION_HEADER, &call.operation_id)
        .header(EPOCH_HEADER, call.epoch.to_string())
        .header(CLUSTER_HEADER, &call.cluster)
}

/// Longest id, key, workspace UID, namespace or name accepted in an answer.
const MAX_FIELD: usize = 1024;
/// Most protocol versions a health answer may list.
const MAX_VERSIONS: usize = 64;

fn violation(what: &str, problem: impl std::fmt::Display) -> DriverError {
    DriverError::Rejected(format!("protocol violation: {what}: {problem}"))
}

/// One provider-supplied field: at most [`MAX_FIELD`] bytes, no control characters, and not
/// empty unless `may_be_empty`. Such text ends up in status, Events, logs and API paths.
fn check_field(name: &str, value: &str, may_be_empty: bool) -> Result<(), String> {
    if value.is_empty() && !may_be_empty {
        return Err(format!("{name} is empty"));
    }
    if value.len() > MAX_FIELD {
        return Err(format!("{name} has {} bytes, more than {MAX_FIELD}", value.len()));
    }
    if value.chars().any(char::is_control) {
        let shown: String = value.chars().take(64).collect();
        return Err(format!("{name} {shown:?} holds control characters"));
    }
    Ok(())
}

/// An instance the provider answered for `call`: bounded fields, and the caller's workspace.
fn check_instance(instance: &Instance, what: &str, call: &CallContext) -> Result<InstanceInfo, DriverError> {
    let fail = |problem: String| violation(what, problem);
    check_field("id", &instance.id, false).map_err(fail)?;
    check_field("key", &instance.key, false).map_err(fail)?;
    if instance.workspace_uid != call.workspace_uid {
        return Err(fail(format!(
            "instance {} belongs to workspace {:?}, not {}",
            instance.id,
            clip(&instance.workspace_uid),
            call.workspace_uid
        )));
    }
    Ok(instance.info())
}

/// A health answer: "ok", and serving this protocol version.
fn check_health(health: &Health) -> Result<(), DriverError> {
    let fail = |problem: String| violation("health answer", problem);
    if health.status != "ok" {
        return Err(fail(format!("status {:?}, not \"ok\"", clip(&health.status))));
    }
    check_field("provider", &health.provider, true).map_err(fail)?;
    if health.versions.len() > MAX_VERSIONS {
        return Err(fail(format!("{} versions, more than {MAX_VERSIONS}", health.versions.len())));
    }
    if !health.versions.iter().any(|v| v == super::wire::VERSION) {
        return Err(fail(format!("the provider does not serve protocol {}", super::wire::VERSION)));
    }
    Ok(())
}

/// Checks an inventory answer against the protocol's bounds before anything uses it: at most
/// `limit` items, bounded fields, and a next-page token that is bounded and moves on.
fn check_page(page: InventoryPage, limit: u32, sent: Option<&str>) -> Result<InstancePage, DriverError> {
    let violation = |problem: String| violation("inventory page", problem);
    if page.items.len() > limit as usize {
        return Err(violation(format!("{} items, more than the limit {limit}", page.items.len())));
    }
    if let Some(next) = &page.next_page_token {
        if next.chars().any(char::is_control) {
            return Err(violation("nextPageToken holds control characters".to_owned()));
        }
        if next.is_empty() || next.len() > PAGE_TOKEN_MAX {
            return Err(violation(format!("nextPageToken of {} characters (1-{PAGE_TOKEN_MAX})", next.len())));
        }
        if Some(next.as_str()) == sent {
            return Err(violation("nextPageToken repeats the token sent".to_owned()));
        }
    }
    for item in &page.items {
        let fields = [
            ("id", &item.id, false),
            ("key", &item.key, true),
            ("workspaceUid", &item.workspace_uid, true),
            ("namespace", &item.namespace, true),
            ("name", &item.name, true),
        ];
        for (name, value, may_be_empty) in fields {
            check_field(name, value, may_be_empty).map_err(|p| violation(format!("an item's {p}")))?;
        }
        if let Some(fence) = item.fence.filter(|f| *f < 0) {
            return Err(violation(format!("item {} has a negative fence {fence}", item.id)));
        }
    }
    Ok(InstancePage { items: page.items.into_iter().map(Into::into).collect(), next: page.next_page_token })
}

#[async_trait]
impl Driver for HttpDriver {
    async fn provision(&self, req: Provision<'_>) -> Result<InstanceInfo, DriverError> {
        let Provision { call, key, template } = req;
        let template = template
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| DriverError::Rejected(format!("template cannot be encoded: {e}")))?;
        let body = CreateInstance { key: key.to_owned(), call: CallFields::from(call), template };
        self.call(
            "provision",
            Some(call.epoch),
            |e, t| e.request(Method::POST, &["instances"], t).json(&body),
            |_, bytes| {
                let instance: Instance = decode(bytes, "created instance")?;
                if instance.key != key {
                    return Err(DriverError::Rejected(format!(
                        "protocol violation: asked for key {key}, the provider answered instance {} of key {}",
                        clip(&instance.id),
                        clip(&instance.key)
                    )));
                }
                check_instance(&instance, "created instance", call)
            },
        )
        .await
    }

    async fn stop(&self, call: &CallContext, instance_id: &str) -> Result<(), DriverError> {
        let body = StopInstance { call: CallFields::from(call) };
        // Only a 2xx is a stop: a 404 may be a wrong base path rather than an unknown instance,
        // and taking it for "stopped" would let a switch leave old compute running.
        self.call(
            "stop",
            Some(call.epoch),
            |e, t| e.request(Method::POST, &["instances", instance_id, "stop"], t).json(&body),
            |_, _| Ok(()),
        )
        .await
    }

    async fn lookup(&self, call: &CallContext, key: &str) -> Result<Option<InstanceInfo>, DriverError> {
        let query = ListQuery { workspace_uid: call.workspace_uid.clone(), key: Some(key.to_owned()) };
        self.call(
            "lookup",
            Some(call.epoch),
            |e, t| attribute(e.request(Method::GET, &["instances"], t).query(&query), call),
            |_, bytes| {
                let list: InstanceList = decode(bytes, "instance list")?;
                if list.items.len() > LIST_LIMIT_MAX as usize {
                    let problem = format!("{} items, more than {LIST_LIMIT_MAX}", list.items.len());
                    return Err(violation("instance list", problem));
                }
                list.items.iter().find(|i| i.key == key).map(|i| check_instance(i, "instance list", call)).transpose()
            },
        )
        .await
    }

    async fn fence(&self, call: &CallContext) -> Result<(), DriverError> {
        let body = RaiseFence { call: CallFields::from(call) };
        let uid = call.workspace_uid.as_str();
        self.call(
            "fence",
            Some(call.epoch),
            |e, t| e.request(Method::POST, &["workspaces", uid, "fence"], t).json(&body),
            |_, bytes| {
                let fence: Fence = decode(bytes, "fence answer")?;
                if fence.workspace_uid != uid || fence.epoch < call.epoch {
                    return Err(DriverError::Rejected(format!(
                        "protocol violation: asked to fence {uid} at {}, the provider answered workspace {:?} at {}",
                        call.epoch,
                        clip(&fence.workspace_uid),
                        fence.epoch
                    )));
                }
                Ok(())
            },
        )
        .await
    }

    async fn list(&self, cluster: &str, page: Option<&str>, limit: u32) -> Result<InstancePage, DriverError> {
        if page.is_some_and(|p| p.is_empty() || p.len() > PAGE_TOKEN_MAX) {
            return Err(DriverError::Rejected(format!("page token must be 1-{PAGE_TOKEN_MAX} characters")));
        }
        let limit = clamp_limit(limit);
        let query =
            InventoryQuery { cluster: cluster.to_owned(), page_token: page.map(str::to_owned), limit: Some(limit) };
        self.call(
            "list",
            None,
            |e, t| e.request(Method::GET, &["instances"], t).query(&query),
            |_, bytes| check_page(decode(bytes, "inventory page")?, limit, page),
        )
        .await
    }

    async fn health(&self) -> Result<(), DriverError> {
        self.get_health().await.map(|_| ())
    }
}

/// A driver and what it was built from.
type Built = (HttpSettings, Duration, Arc<HttpDriver>);

/// http drivers by ComputeProvider name, kept while the provider's settings stay the same (a
/// driver holds a connection pool), plus the token cache they share.
#[derive(Clone, Debug, Default)]
pub struct HttpDrivers {
    drivers: Arc<Mutex<HashMap<String, Built>>>,
    tokens: TokenCache,
}

impl HttpDrivers {
    /// The driver of `provider`, whose calls are bounded by `budget`. `client` reads the token
    /// Secret; without one, a provider that names a Secret cannot be used.
    pub fn driver(
        &self,
        provider: &ComputeProvider,
        client: Option<&kube::Client>,
        budget: Duration,
    ) -> Result<Arc<HttpDriver>, DriverError> {
        let name = provider.name_any();
        let Some(settings) = provider.spec.http.as_ref() else {
            return Err(DriverError::Rejected("driver http needs spec.http".to_owned()));
        };
        let mut drivers = self.drivers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, b, d)) = drivers.get(&name)
            && s == settings
            && *b == budget
        {
            return Ok(d.clone());
        }
        if let Some(secret) = &settings.secret_ref {
            check_secret_ref(secret)?;
        }
        let token = match (&settings.secret_ref, client) {
            (None, _) => TokenSource::None,
            (Some(secret), Some(client)) => TokenSource::Secret {
                client: client.clone(),
                provider: name.clone(),
                secret: secret.clone(),
                cache: self.tokens.clone(),
            },
            (Some(secret), None) => {
                return Err(DriverError::Rejected(format!(
                    "cannot read Secret {}/{}: no Kubernetes client",
                    secret.namespace, secret.name
                )));
            }
        };
        let driver = Arc::new(HttpDriver::new(&name, settings, token, budget)?);
        drivers.insert(name, (settings.clone(), budget, driver.clone()));
        Ok(driver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PROVIDER_TOKEN_LABEL, PROVIDER_TOKEN_TYPE};

    fn body(code: &str, retryable: bool, newest: Option<i64>) -> Vec<u8> {
        let mut v = serde_json::json!({"code": code, "message": "why", "retryable": retryable});
        if let Some(n) = newest {
            v["newestEpoch"] = n.into();
        }
        serde_json::to_vec(&v).unwrap()
    }

    const SRC: &str = "the token in Secret ns/tok key \"token\"";

    #[test]
    fn stale_epoch_fences() {
        let e = error_from_answer(409, &body("StaleEpoch", false, Some(9)), Some(4), SRC);
        assert_eq!(e, DriverError::StaleEpoch { epoch: 4, newest: 9 });
        let e = error_from_answer(409, &body("StaleEpoch", false, None), Some(4), SRC);
        assert_eq!(e, DriverError::StaleEpoch { epoch: 4, newest: 5 });
    }

    #[test]
    fn retryable_flag_decides() {
        let e = error_from_answer(503, &body("Unavailable", true, None), Some(1), SRC);
        assert!(matches!(&e, DriverError::Transient(m) if m.contains("503 Unavailable: why")), "{e:?}");
        let e = error_from_answer(409, &body("Conflict", false, None), Some(1), SRC);
        assert!(matches!(&e, DriverError::Rejected(m) if m.contains("409 Conflict")), "{e:?}");
        // The flag wins over the status class, and unknown codes are judged by it alone.
        let e = error_from_answer(500, &body("QuotaExceeded", false, None), Some(1), SRC);
        assert!(matches!(&e, DriverError::Rejected(m) if m.contains("Unknown")), "{e:?}");
        let e = error_from_answer(400, &body("InvalidRequest", true, None), Some(1), SRC);
        assert!(e.is_retryable());
    }

    #[test]
    fn unauthorized_names_the_secret_not_the_token() {
        let e = error_from_answer(401, &body("Unauthorized", false, None), Some(1), SRC);
        assert_eq!(e, DriverError::Rejected(format!("401 Unauthorized: the provider refused {SRC}")));
        let e = error_from_answer(401, b"nope", None, SRC);
        assert!(!e.is_retryable());
    }

    #[test]
    fn answers_without_an_error_body_are_judged_by_status() {
        for status in [500, 502, 503, 504, 408, 429] {
            assert!(error_from_answer(status, b"<html>oops</html>", Some(1), SRC).is_retryable(), "{status}");
        }
        for status in [400, 403, 404, 405, 302, 418] {
            let e = error_from_answer(status, b"<html>oops</html>", Some(1), SRC);
            assert!(matches!(&e, DriverError::Rejected(m) if m.contains("protocol violation") && m.contains("oops")));
        }
        // StaleEpoch needs the call's epoch; provider-wide calls (health, inventory) have none.
        assert!(!error_from_answer(409, &body("StaleEpoch", false, Some(2)), None, SRC).is_retryable());
    }

    #[test]
    fn garbage_success_bodies_are_protocol_violations() {
        let e = decode::<Instance>(b"{\"id\": 3", "created instance").unwrap_err();
        assert!(matches!(&e, DriverError::Rejected(m) if m.starts_with("protocol violation: the created instance")));
        let long = "x".repeat(5000);
        let e = decode::<Instance>(long.as_bytes(), "created instance").unwrap_err();
        assert!(e.to_string().len() < 600, "provider text is clipped");
    }

    #[test]
    fn inventory_pages_are_bounded() {
        use crate::provider::InstanceState;
        use crate::provider::http::wire::InventoryItem;
        let item = |id: &str| InventoryItem {
            id: id.into(),
            key: "k".into(),
            workspace_uid: "u".into(),
            namespace: "ns".into(),
            name: "w".into(),
            state: InstanceState::Running,
            fence: Some(2),
        };
        let page = |n: usize, next: Option<String>| InventoryPage {
            items: (0..n).map(|i| item(&format!("i{i}"))).collect(),
            next_page_token: next,
        };
        let ok = check_page(page(2, Some("i1".into())), 2, None).unwrap();
        assert_eq!((ok.items.len(), ok.next.as_deref(), ok.items[0].fence), (2, Some("i1"), Some(2)));
        for (bad, sent) in [
            (page(3, None), None),
            (page(1, Some("t".repeat(PAGE_TOKEN_MAX + 1))), None),
            (page(1, Some(String::new())), None),
            (page(1, Some("same".into())), Some("same")),
            (InventoryPage { items: vec![item("")], next_page_token: None }, None),
            (InventoryPage { items: vec![item(&"x".repeat(MAX_FIELD + 1))], next_page_token: None }, None),
            (InventoryPage { items: vec![item("i\u{1b}[2J")], next_page_token: None }, None),
            (
                InventoryPage { items: vec![InventoryItem { fence: Some(-1), ..item("i") }], next_page_token: None },
                None,
            ),
            (page(1, Some("t\n".into())), None),
        ] {
            let e = check_page(bad, 2, sent).unwrap_err();
            assert!(matches!(&e, DriverError::Rejected(m) if m.contains("protocol violation")), "{e:?}");
        }
    }

    #[test]
    fn echoed_tokens_are_redacted() {
        let token = BearerToken::new("s3cret-token");
        let e = error_from_answer(400, &body("InvalidRequest", false, None), Some(1), SRC);
        let DriverError::Rejected(m) = e else { panic!() };
        let e = redact(DriverError::Rejected(format!("{m} bad token s3cret-token")), Some(&token));
        assert!(!e.to_string().contains("s3cret-token"), "{e}");
        assert!(e.to_string().contains("<redacted>"));
    }

    #[test]
    fn retries_only_retryable_errors_within_budget() {
        let now = Instant::now();
        let later = now + Duration::from_secs(10);
        let t = DriverError::Transient("x".into());
        assert!(should_retry(&t, 1, 3, now, later));
        assert!(!should_retry(&t, 3, 3, now, later), "attempts run out");
        assert!(!should_retry(&t, 1, 3, later, now), "budget runs out");
        assert!(!should_retry(&DriverError::Rejected("x".into()), 1, 3, now, later));
        assert!(!should_retry(&DriverError::StaleEpoch { epoch: 1, newest: 2 }, 1, 3, now, later));
    }

    fn provider(spec: serde_json::Value) -> ComputeProvider {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "switchyard.dev/v1alpha1", "kind": "ComputeProvider",
            "metadata": {"name": "p"}, "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn drivers_are_cached_until_settings_change() {
        let drivers = HttpDrivers::default();
        let t = Duration::from_secs(5);
        let p = provider(serde_json::json!({"driver": "http", "http": {"endpoint": "http://127.0.0.1:1"}}));
        let a = drivers.driver(&p, None, t).unwrap();
        assert!(Arc::ptr_eq(&a, &drivers.driver(&p, None, t).unwrap()));
        assert!(!Arc::ptr_eq(&a, &drivers.driver(&p, None, Duration::from_secs(6)).unwrap()));
        let q = provider(serde_json::json!({"driver": "http", "http": {"endpoint": "http://127.0.0.1:2"}}));
        assert!(!Arc::ptr_eq(&a, &drivers.driver(&q, None, t).unwrap()));
    }

    #[test]
    fn tokens_travel_only_over_https_or_to_loopback() {
        let url = |u: &str| Url::parse(u).unwrap();
        for ok in [
            "https://compute.example.com/x",
            "http://127.0.0.1:8080",
            "http://127.9.9.9",
            "http://[::1]:80",
            "http://localhost:1",
            "http://LOCALHOST.:1",
            "http://[::ffff:127.0.0.1]:1",
        ] {
            assert!(token_may_travel_to(&url(ok)), "{ok}");
        }
        for bad in [
            "http://compute.example.com",
            "http://10.0.0.1",
            "http://[fd00::2]",
            "http://localhost.evil.example",
            "http://128.0.0.1",
        ] {
            assert!(!token_may_travel_to(&url(bad)), "{bad}");
        }
    }

    #[test]
    fn a_token_is_never_sent_over_plain_http_to_a_remote_host_unless_allowed() {
        let t = Duration::from_secs(5);
        let token = || TokenSource::Static(BearerToken::new("s3cret-token"));
        let mut settings = HttpSettings {
            endpoint: "http://compute.example.com/x".into(),
            secret_ref: None,
            ca_bundle: None,
            allow_insecure_token: false,
        };
        let e = HttpDriver::new("p", &settings, token(), t).unwrap_err();
        assert!(
            matches!(&e, DriverError::Rejected(m) if m.contains("plain http") && m.contains("https://")
                && m.contains("allowInsecureToken") && !m.contains("s3cret")),
            "{e:?}"
        );
        HttpDriver::new("p", &settings, TokenSource::None, t).expect("no token, nothing to protect");
        settings.allow_insecure_token = true;
        HttpDriver::new("p", &settings, token(), t).expect("explicitly allowed");
        // Through the dispatcher's drivers, with a Secret: refused before the Secret is read.
        let p = provider(serde_json::json!({"driver": "http", "http": {
            "endpoint": "http://compute.example.com", "secretRef": {"name": "tok", "namespace": "ns"}}}));
        assert!(HttpDrivers::default().driver(&p, None, t).is_err());
    }

    #[test]
    fn only_marked_secrets_bound_to_the_provider_are_credentials() {
        use crate::provider::{CREDENTIAL_PROVIDERS_ANNOTATION, credential_refusal};
        let secret = |v: serde_json::Value| serde_json::from_value::<Secret>(v).unwrap();
        let refused = |v: serde_json::Value, needle: &str| {
            let why = credential_refusal(&secret(v), "east").expect("refused");
            assert!(why.contains(needle), "{why}");
        };
        refused(serde_json::json!({"metadata": {"name": "db-password"}}), "not marked");
        refused(serde_json::json!({"metadata": {"name": "x"}, "type": "Opaque"}), "not marked");
        refused(serde_json::json!({"metadata": {"name": "x", "labels": {PROVIDER_TOKEN_LABEL: "yes"}}}), "label it");
        let labelled = serde_json::json!({"metadata": {"name": "x", "labels": {PROVIDER_TOKEN_LABEL: "true"}}});
        assert_eq!(credential_refusal(&secret(labelled), "east"), None);
        let typed = serde_json::json!({"metadata": {"name": "x"}, "type": PROVIDER_TOKEN_TYPE});
        assert_eq!(credential_refusal(&secret(typed), "east"), None);
        let bound = |to: &str| {
            secret(serde_json::json!({"metadata": {"name": "x", "annotations": {CREDENTIAL_PROVIDERS_ANNOTATION: to}},
                "type": PROVIDER_TOKEN_TYPE}))
        };
        assert_eq!(credential_refusal(&bound("west, east"), "east"), None);
        let why = credential_refusal(&bound("west"), "east").expect("bound elsewhere");
        assert!(why.contains("bound to the ComputeProviders") && why.contains("east"), "{why}");
        assert!(credential_refusal(&bound(""), "east").is_some(), "an empty list binds to nobody");
    }

    #[test]
    fn an_empty_secret_ref_is_a_misconfiguration() {
        let t = Duration::from_secs(5);
        for (name, namespace, field) in [("", "ns", "name"), ("tok", "", "namespace"), (" ", "ns", "name")] {
            let p = provider(serde_json::json!({"driver": "http", "http": {
                "endpoint": "http://127.0.0.1:1", "secretRef": {"name": name, "namespace": namespace}}}));
            let e = HttpDrivers::default().driver(&p, None, t).unwrap_err();
            assert!(
                matches!(&e, DriverError::Rejected(m) if m.contains(&format!("spec.http.secretRef.{field} is empty"))),
                "{e:?}"
            );
        }
    }

    #[test]
    fn stale_epoch_answers_cannot_lower_or_overflow_the_fence() {
        for newest in [Some(-5), Some(4), Some(2), None] {
            let e = error_from_answer(409, &body("StaleEpoch", false, newest), Some(4), SRC);
            assert_eq!(e, DriverError::StaleEpoch { epoch: 4, newest: 5 }, "{newest:?}");
        }
        let e = error_from_answer(409, &body("StaleEpoch", false, None), Some(i64::MAX), SRC);
        assert_eq!(e, DriverError::StaleEpoch { epoch: i64::MAX, newest: i64::MAX });
    }

    #[test]
    fn provider_text_loses_its_control_characters() {
        let clipped = clip("line\none\u{1b}[31mred\u{7}");
        assert!(!clipped.chars().any(char::is_control), "{clipped:?}");
        let answer = br#"{"code": "InvalidRequest", "message": "a\nb\u001b[0m", "retryable": false}"#;
        let e = error_from_answer(400, answer, Some(1), SRC);
        assert!(!e.to_string().contains('\n'), "{e}");
        assert_eq!(clip(&"é".repeat(MAX_MESSAGE)).chars().count(), MAX_MESSAGE, "cut by characters, not bytes");
    }

    fn ctx(uid: &str) -> CallContext {
        CallContext {
            namespace: "ns".into(),
            name: "w".into(),
            workspace_uid: uid.into(),
            epoch: 1,
            caller: "c".into(),
            operation_id: "op".into(),
            cluster: "c1".into(),
        }
    }

    #[test]
    fn answered_instances_are_bounded_and_belong_to_the_caller() {
        use crate::provider::InstanceState;
        let instance = |id: &str, key: &str, uid: &str| Instance {
            id: id.into(),
            key: key.into(),
            workspace_uid: uid.into(),
            state: InstanceState::Running,
        };
        assert!(check_instance(&instance("i-1", "k", "u1"), "created instance", &ctx("u1")).is_ok());
        let long = "x".repeat(MAX_FIELD + 1);
        for bad in [
            instance("", "k", "u1"),
            instance("i-1\r\nSet-Cookie: x", "k", "u1"),
            instance(&long, "k", "u1"),
            instance("i-1", "k\u{0}", "u1"),
            instance("i-1", "k", "u2"),
        ] {
            let e = check_instance(&bad, "created instance", &ctx("u1")).unwrap_err();
            assert!(matches!(&e, DriverError::Rejected(m) if m.starts_with("protocol violation")), "{e:?}");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    #[test]
    fn health_answers_must_serve_v1() {
        let health =
            |status: &str, versions: Vec<String>| Health { status: status.into(), provider: "p".into(), versions };
        assert!(check_health(&health("ok", vec!["v1".into()])).is_ok());
        assert!(check_health(&health("degraded", vec!["v1".into()])).is_err());
        assert!(check_health(&health("ok", vec!["v2".into()])).is_err());
        assert!(check_health(&health("ok", vec!["v1".into(); MAX_VERSIONS + 1])).is_err());
    }

    #[test]
    fn misconfigured_providers_are_clear_rejections() {
        let drivers = HttpDrivers::default();
        let t = Duration::from_secs(5);
        let e = drivers.driver(&provider(serde_json::json!({"driver": "http"})), None, t).unwrap_err();
        assert_eq!(e, DriverError::Rejected("driver http needs spec.http".into()));
        let p = provider(serde_json::json!({"driver": "http", "http": {
            "endpoint": "http://127.0.0.1:1", "secretRef": {"name": "tok", "namespace": "ns"}}}));
        let e = drivers.driver(&p, None, t).unwrap_err();
        assert!(matches!(&e, DriverError::Rejected(m) if m.contains("Secret ns/tok")), "{e:?}");
        let p = provider(serde_json::json!({"driver": "http", "http": {
            "endpoint": "https://127.0.0.1:1", "caBundle": "not pem"}}));
        let e = drivers.driver(&p, None, t).unwrap_err();
        assert!(matches!(&e, DriverError::Rejected(m) if m.contains("CA bundle")), "{e:?}");
    }
}
