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
use reqwest::{Method, RequestBuilder};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::debug;

use super::client::{BearerToken, Endpoint};
use super::wire::{
    CALLER_HEADER, CLUSTER_HEADER, CallFields, CreateInstance, EPOCH_HEADER, ErrorBody, ErrorCode, Fence, Health,
    Instance, InstanceList, InventoryPage, InventoryQuery, ListQuery, OPERATION_HEADER, RaiseFence, StopInstance,
};
use crate::api::{ComputeProvider, HttpSettings, SecretKeyRef, WorkspaceTemplate};
use crate::provider::{CallContext, Driver, DriverError, InstanceInfo, InstancePage, PAGE_TOKEN_MAX, clamp_limit};

/// How long a token read from a Secret is used before the Secret is read again: a rotated
/// Secret takes effect within this, without a restart.
pub const TOKEN_TTL: Duration = Duration::from_secs(15);

/// Provider-supplied text kept in an error: enough to diagnose, short enough for a condition.
const MAX_MESSAGE: usize = 300;

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
    Secret { client: kube::Client, secret: SecretKeyRef, cache: TokenCache },
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Tokens read from Secrets, shared by every http driver of a dispatcher.
#[derive(Clone, Debug, Default)]
pub struct TokenCache(Arc<Mutex<HashMap<SecretId, (BearerToken, Instant)>>>);

/// Namespace, name and key of a Secret entry.
type SecretId = (String, String, String);

fn cache_key(s: &SecretKeyRef) -> SecretId {
    (s.namespace.clone(), s.name.clone(), s.key.clone())
}

impl TokenCache {
    fn fresh(&self, secret: &SecretKeyRef) -> Option<BearerToken> {
        let cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(&cache_key(secret)).filter(|(_, at)| at.elapsed() < TOKEN_TTL).map(|(t, _)| t.clone())
    }

    fn put(&self, secret: &SecretKeyRef, token: BearerToken) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(cache_key(secret), (token, Instant::now()));
    }

    fn forget(&self, secret: &SecretKeyRef) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&cache_key(secret));
    }
}

impl TokenSource {
    async fn token(&self) -> Result<Option<BearerToken>, DriverError> {
        match self {
            TokenSource::None => Ok(None),
            TokenSource::Static(t) => Ok(Some(t.clone())),
            TokenSource::Secret { client, secret, cache } => {
                if let Some(t) = cache.fresh(secret) {
                    return Ok(Some(t));
                }
                let t = read_secret_token(client, secret).await?;
                cache.put(secret, t.clone());
                Ok(Some(t))
            }
        }
    }

    /// Drops a cached token the provider refused, so the next attempt reads the Secret again.
    /// Returns whether that can give a different token.
    fn forget(&self) -> bool {
        match self {
            TokenSource::Secret { secret, cache, .. } => {
                cache.forget(secret);
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
async fn read_secret_token(client: &kube::Client, secret: &SecretKeyRef) -> Result<BearerToken, DriverError> {
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
    Answer { status: u16, body: Vec<u8> },
    Transport(DriverError),
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
                Exchange::Transport(e) => Err(e),
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
            |_, body| decode(body, "health answer"),
        )
        .await
    }
}

/// One HTTP exchange: the status and body, or a transport failure (always transient: every
/// call is idempotent, and the answer, not necessarily the effect, is what was lost).
async fn exchange(request: RequestBuilder, budget: Duration) -> Exchange {
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return Exchange::Transport(transport_error(&e, budget)),
    };
    let status = response.status().as_u16();
    match response.bytes().await {
        Ok(body) => Exchange::Answer { status, body: body.to_vec() },
        Err(e) => Exchange::Transport(transport_error(&e, budget)),
    }
}

fn transport_error(e: &reqwest::Error, budget: Duration) -> DriverError {
    let detail = causes(e);
    DriverError::Transient(if e.is_timeout() {
        format!("no answer within {budget:?}; the call may have taken effect")
    } else if e.is_connect() {
        format!("cannot connect: {detail}")
    } else {
        format!("connection lost before the answer; the call may have taken effect: {detail}")
    })
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
            // A refusal proves the provider has seen a newer epoch, at least epoch + 1.
            DriverError::StaleEpoch { epoch, newest: newest_epoch.unwrap_or(epoch + 1) }
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

fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
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

/// Longest id, key, workspace UID, namespace or name accepted in an inventory item.
const MAX_FIELD: usize = 1024;

/// Checks an inventory answer against the protocol's bounds before anything uses it: at most
/// `limit` items, bounded fields, and a next-page token that is bounded and moves on.
fn check_page(page: InventoryPage, limit: u32, sent: Option<&str>) -> Result<InstancePage, DriverError> {
    let violation = |what: String| DriverError::Rejected(format!("protocol violation: inventory page: {what}"));
    if page.items.len() > limit as usize {
        return Err(violation(format!("{} items, more than the limit {limit}", page.items.len())));
    }
    if let Some(next) = &page.next_page_token {
        if next.is_empty() || next.len() > PAGE_TOKEN_MAX {
            return Err(violation(format!("nextPageToken of {} characters (1-{PAGE_TOKEN_MAX})", next.len())));
        }
        if Some(next.as_str()) == sent {
            return Err(violation("nextPageToken repeats the token sent".to_owned()));
        }
    }
    for item in &page.items {
        let fields = [&item.id, &item.key, &item.workspace_uid, &item.namespace, &item.name];
        if item.id.is_empty() || fields.iter().any(|f| f.len() > MAX_FIELD) {
            return Err(violation(format!("an item with an empty or over-long field ({MAX_FIELD} at most)")));
        }
    }
    Ok(InstancePage { items: page.items.into_iter().map(Into::into).collect(), next: page.next_page_token })
}

#[async_trait]
impl Driver for HttpDriver {
    async fn provision(
        &self,
        call: &CallContext,
        key: &str,
        template: Option<&WorkspaceTemplate>,
    ) -> Result<InstanceInfo, DriverError> {
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
                        instance.id, instance.key
                    )));
                }
                Ok(instance.info())
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
                Ok(list.items.iter().find(|i| i.key == key).map(Instance::info))
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
                        "protocol violation: asked to fence {uid} at {}, the provider answered {fence:?}",
                        call.epoch
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
        let token = match (&settings.secret_ref, client) {
            (None, _) => TokenSource::None,
            (Some(secret), Some(client)) => {
                TokenSource::Secret { client: client.clone(), secret: secret.clone(), cache: self.tokens.clone() }
            }
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
