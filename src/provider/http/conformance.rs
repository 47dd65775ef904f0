//! `switchyard provider-conformance`: checks that a provider implements the protocol as
//! `docs/provider-protocol.yaml` specifies it — idempotency, stop semantics, get/list, fencing,
//! error codes and retryable flags, auth. Every case uses fresh workspace UIDs, so the suite can
//! run against a provider that serves other traffic; it stops what it created at the end.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::Method;
use serde_json::{Value, json};

use super::client::{BearerToken, Endpoint, EndpointError};
use super::wire::{ErrorBody, ErrorCode, Health, Instance, InstanceList, Stopped};
use crate::provider::InstanceState;

/// Options of `switchyard provider-conformance`.
#[derive(clap::Args, Debug, Clone)]
pub struct ConformanceArgs {
    /// Base URL of the provider under test.
    #[arg(long)]
    pub endpoint: String,
    /// File holding the bearer token the provider accepts.
    #[arg(long)]
    pub token_file: PathBuf,
    /// PEM CA bundle to trust for an https endpoint, in addition to the system roots.
    #[arg(long)]
    pub ca_bundle_file: Option<PathBuf>,
    /// Bound of each request.
    #[arg(long, default_value = "10s", value_parser = crate::cli::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
}

/// The result of one case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseResult {
    pub name: &'static str,
    pub outcome: Result<(), String>,
}

/// The suite's results, in case order.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub cases: Vec<CaseResult>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.cases.iter().filter(|c| c.outcome.is_ok()).count()
    }

    pub fn failed(&self) -> usize {
        self.cases.len() - self.passed()
    }

    /// The closing line: exactly `N passed, M failed`.
    pub fn summary(&self) -> String {
        format!("{} passed, {} failed", self.passed(), self.failed())
    }
}

/// Reads the arguments' files and runs the suite, printing one line per case and the summary.
pub async fn run(args: &ConformanceArgs) -> Result<Report, ConformanceError> {
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|source| ConformanceError::Read { path: path.clone(), source })
    };
    let token = BearerToken::new(&read(&args.token_file)?);
    let ca_bundle = args.ca_bundle_file.as_ref().map(read).transpose()?;
    let endpoint = Endpoint::new(&args.endpoint, ca_bundle.as_deref(), args.timeout)?;
    let report = run_suite(endpoint, token, |case| match &case.outcome {
        Ok(()) => println!("ok   {}", case.name),
        Err(why) => println!("FAIL {}: {why}", case.name),
    })
    .await;
    println!("{}", report.summary());
    Ok(report)
}

type Case = fn(&Probe) -> BoxFuture<'_, Result<(), String>>;

/// Every case, in the order they run.
pub const CASES: &[(&str, Case)] = &[
    ("health-answers-ok", |p| Box::pin(health_answers_ok(p))),
    ("missing-token-is-401", |p| Box::pin(unauthorized(p, None))),
    ("wrong-token-is-401", |p| Box::pin(unauthorized(p, Some(BearerToken::new("conformance-wrong-token"))))),
    ("create-returns-a-running-instance", |p| Box::pin(create_returns_a_running_instance(p))),
    ("create-is-idempotent-by-key", |p| Box::pin(create_is_idempotent_by_key(p))),
    ("concurrent-creates-of-one-key-yield-one-instance", |p| Box::pin(concurrent_creates(p))),
    ("key-of-another-workspace-is-conflict", |p| Box::pin(key_of_another_workspace(p))),
    ("invalid-requests-are-400", |p| Box::pin(invalid_requests(p))),
    ("get-returns-the-instance", |p| Box::pin(get_returns_the_instance(p))),
    ("get-of-unknown-instance-is-404", |p| Box::pin(get_unknown(p))),
    ("list-by-workspace-and-key", |p| Box::pin(list_by_workspace_and_key(p))),
    ("stop-stops", |p| Box::pin(stop_stops(p))),
    ("stop-twice-is-stopped", |p| Box::pin(stop_twice(p))),
    ("stop-of-unknown-instance-is-stopped", |p| Box::pin(stop_unknown(p))),
    ("create-after-stop-returns-the-stopped-instance", |p| Box::pin(create_after_stop(p))),
    ("stop-of-another-workspaces-instance-is-conflict", |p| Box::pin(stop_foreign(p))),
    ("stale-epoch-create-is-refused", |p| Box::pin(stale_create(p))),
    ("stale-epoch-stop-is-refused", |p| Box::pin(stale_stop(p))),
    ("equal-and-newer-epochs-are-accepted", |p| Box::pin(newer_epochs(p))),
    ("fences-are-per-workspace", |p| Box::pin(fences_per_workspace(p))),
    ("unknown-endpoint-is-404-with-error-body", |p| Box::pin(unknown_endpoint(p))),
];

/// Runs every case against `endpoint`, reporting each to `on_case` as it finishes, then stops
/// what the suite created.
pub async fn run_suite(endpoint: Endpoint, token: BearerToken, mut on_case: impl FnMut(&CaseResult)) -> Report {
    let probe = Probe { endpoint, token, created: Mutex::new(Vec::new()) };
    let mut report = Report::default();
    for (name, case) in CASES {
        let result = CaseResult { name, outcome: case(&probe).await };
        on_case(&result);
        report.cases.push(result);
    }
    probe.clean_up().await;
    report
}

/// An answer as the suite checks it.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn json<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T, String> {
        serde_json::from_str(&self.body)
            .map_err(|e| format!("{} answer is not a valid {what} ({e}): {}", self.status, self.body))
    }

    fn status_in(&self, statuses: &[u16], what: &str) -> Result<&Self, String> {
        if statuses.contains(&self.status) {
            Ok(self)
        } else {
            Err(format!("{what}: expected HTTP {statuses:?}, got {} {}", self.status, self.body))
        }
    }

    fn instance(&self, statuses: &[u16], what: &str) -> Result<Instance, String> {
        self.status_in(statuses, what)?.json("instance")
    }

    /// Checks a protocol error: its status, its code, and that it says whether to retry.
    fn error(&self, status: u16, code: ErrorCode, what: &str) -> Result<ErrorBody, String> {
        self.status_in(&[status], what)?;
        let body: ErrorBody = self.json("error body {code, message, retryable}")?;
        if body.code != code {
            return Err(format!("{what}: expected code {code:?}, got {:?}", body.code));
        }
        if body.retryable != code.retryable() {
            return Err(format!("{what}: {code:?} must say retryable={}", code.retryable()));
        }
        Ok(body)
    }
}

/// A workspace the suite makes up: a fresh UID per case.
struct Ws {
    uid: String,
}

impl Ws {
    fn new() -> Self {
        Self { uid: format!("conformance-{}", uuid::Uuid::new_v4()) }
    }

    fn key(&self, n: u32) -> String {
        format!("{}.op-{n}", self.uid)
    }

    fn call(&self, epoch: i64) -> Value {
        json!({"workspaceUid": self.uid, "namespace": "conformance", "name": "ws", "epoch": epoch,
               "caller": "provider-conformance", "operationId": format!("op-{epoch}")})
    }
}

/// The suite's handle on the provider.
pub struct Probe {
    endpoint: Endpoint,
    token: BearerToken,
    /// (workspace uid, instance id) of everything created, to stop at the end.
    created: Mutex<Vec<(String, String)>>,
}

impl Probe {
    async fn send(
        &self,
        method: Method,
        path: &[&str],
        token: Option<&BearerToken>,
        body: Option<&Value>,
        query: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let mut request = self.endpoint.request(method.clone(), path, token).query(query);
        if let Some(body) = body {
            request = request.json(body);
        }
        let what = format!("{method} /v1/{}", path.join("/"));
        let response = request.send().await.map_err(|e| format!("{what}: no answer: {}", e.without_url()))?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| format!("{what}: answer cut off: {}", e.without_url()))?;
        Ok(Reply { status, body })
    }

    async fn create(&self, ws: &Ws, key: &str, epoch: i64) -> Result<Reply, String> {
        let mut body = ws.call(epoch);
        body["key"] = key.into();
        body["template"] = json!({"image": "busybox", "size": "small"});
        let reply = self.send(Method::POST, &["instances"], Some(&self.token), Some(&body), &[]).await?;
        if let Ok(i) = reply.json::<Instance>("instance") {
            self.created.lock().unwrap_or_else(|e| e.into_inner()).push((ws.uid.clone(), i.id));
        }
        Ok(reply)
    }

    /// Creates under a new key and expects a new Running instance.
    async fn created(&self, ws: &Ws, key: &str, epoch: i64) -> Result<Instance, String> {
        self.create(ws, key, epoch).await?.instance(&[201], "create under a new key")
    }

    async fn stop(&self, ws: &Ws, id: &str, epoch: i64) -> Result<Reply, String> {
        self.send(Method::POST, &["instances", id, "stop"], Some(&self.token), Some(&ws.call(epoch)), &[]).await
    }

    async fn stopped(&self, ws: &Ws, id: &str, epoch: i64, what: &str) -> Result<(), String> {
        let stopped: Stopped = self.stop(ws, id, epoch).await?.status_in(&[200], what)?.json("stop answer")?;
        if stopped.state != InstanceState::Stopped || stopped.id != id {
            return Err(format!("{what}: expected {{id: {id}, state: Stopped}}, got {stopped:?}"));
        }
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Reply, String> {
        self.send(Method::GET, &["instances", id], Some(&self.token), None, &[]).await
    }

    async fn state(&self, id: &str) -> Result<InstanceState, String> {
        Ok(self.get(id).await?.instance(&[200], "get")?.state)
    }

    async fn list(&self, uid: &str, key: Option<&str>) -> Result<Vec<Instance>, String> {
        let mut query = vec![("workspaceUid", uid)];
        query.extend(key.map(|k| ("key", k)));
        let reply = self.send(Method::GET, &["instances"], Some(&self.token), None, &query).await?;
        Ok(reply.status_in(&[200], "list")?.json::<InstanceList>("instance list")?.items)
    }

    async fn clean_up(&self) {
        let mut created = std::mem::take(&mut *self.created.lock().unwrap_or_else(|e| e.into_inner()));
        created.sort();
        created.dedup();
        for (uid, id) in created {
            // Far above any epoch a case used, so the fence never refuses the clean-up.
            let _ = self.stop(&Ws { uid }, &id, 1_000_000).await;
        }
    }
}

fn check(ok: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(why()) }
}

async fn health_answers_ok(p: &Probe) -> Result<(), String> {
    let reply = p.send(Method::GET, &["health"], Some(&p.token), None, &[]).await?;
    let health: Health = reply.status_in(&[200], "health")?.json("health answer")?;
    check(health.status == "ok" && health.versions.iter().any(|v| v == "v1"), || {
        format!("health must say status ok and list v1, got {health:?}")
    })
}

async fn unauthorized(p: &Probe, token: Option<BearerToken>) -> Result<(), String> {
    let ws = Ws::new();
    let reply = p.send(Method::GET, &["health"], token.as_ref(), None, &[]).await?;
    reply.error(401, ErrorCode::Unauthorized, "health")?;
    let mut body = ws.call(1);
    body["key"] = ws.key(1).into();
    let reply = p.send(Method::POST, &["instances"], token.as_ref(), Some(&body), &[]).await?;
    reply.error(401, ErrorCode::Unauthorized, "create")?;
    let reply = p.send(Method::GET, &["instances"], token.as_ref(), None, &[("workspaceUid", &ws.uid)]).await?;
    reply.error(401, ErrorCode::Unauthorized, "list")?;
    check(p.list(&ws.uid, None).await?.is_empty(), || "an unauthorized create took effect".to_owned())
}

async fn create_returns_a_running_instance(p: &Probe) -> Result<(), String> {
    let ws = Ws::new();
    let key = ws.key(1);
    let i = p.created(&ws, &key, 1).await?;
    check(!i.id.is_empty() && i.key == key && i.workspace_uid == ws.uid && i.state == InstanceState::Running, || {
        format!("expected a Running instance of key {key} and workspace {}, got {i:?}", ws.uid)
    })
}

async fn create_is_idempotent_by_key(p: &Probe) -> Result<(), String> {
    let ws = Ws::new();
    let first = p.created(&ws, &ws.key(1), 1).await?;
    let again = p.create(&ws, &ws.key(1), 1).await?.instance(&[200], "repeated create (200: existing)")?;
    check(again == first, || format!("repeated create returned {again:?}, first was {first:?}"))?;
    let listed = p.list(&ws.uid, None).await?;
    check(listed.len() == 1, || format!("one key made {} instances", listed.len()))
}

async fn concurrent_creates(p: &Probe) -> Result<(), String> {
    let ws = Ws::new();
    let key = ws.key(1);
    let replies = futures::future::join_all((0..8).map(|_| p.create(&ws, &key, 1))).await;
    let mut ids = std::collections::BTreeSet::new();
    let mut created = 0;
    for reply in replies {
        let reply = reply?;
        created += usize::from(reply.status == 201);
        ids.insert(reply.instance(&[200, 201], "concurrent create")?.id);
    }
    check(ids.len() == 1 && created == 1, || {
        format!("8 concurrent creates of one key: {} distinct ids, {created} answered 201", ids.len())
    })
}

async fn key_of_another_workspace(p: &Probe) -> Result<(), String> {
    let (a, b) = (Ws::new(), Ws::new());
    p.created(&a, &a.key(1), 1).await?;
    p.create(&b, &a.key(1), 1).await?.error(409, ErrorCode::Conflict, "create with another workspace's key")?;
    check(p.list(&b.uid, None).await?.is_empty(), || "the refused create made an instance".to_owned())
}

async fn invalid_requests(p: &Probe) -> Result<(), String> {
    let ws = Ws::new();
    let create =
        |body: Value| async move { p.send(Method::POST, &["instances"], Some(&p.token), Some(&body), &[]).await };
    let mut no_epoch = ws.call(1);
    no_epoch["key"] = ws.key(1).into();
    no_epoch.as_object_mut().map(|o| o.remove("epoch"));
    create(no_epoch).await?.error(400, ErrorCode::InvalidRequest, "create without epoch")?;
    let mut bad_key = ws.call(1);
    bad_key["key"] = "no spaces/or slashes".into();
    create(bad_key).await?.error(400, ErrorCode::InvalidRequest, "create with an invalid key")?;
    let reply = p
        .endpoint
        .request(Method::POST, &["instances"], Some(&p.token))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .map_err(|e| format!("create with a malformed body: no answer: {}", e.without_url()))?;
    let reply = Reply { status: reply.status().as_u16(), body: reply.text().await.unwrap_or_default() };
    reply.error(400, ErrorCode::InvalidRequest, "create with a malformed body")?;
    let reply = p.send(Method::GET, &["instances"], Some(&p.token), None, &[]).await?;
    reply.error(400, ErrorCode::InvalidRequest, "list without workspaceUid")?;
    check(p.list(&ws.uid, None).await?.is_empty(), || "an invalid create made an instance".to_owned())
}

async fn get_returns_the_instance(p: &Probe) -> Result<(), String> {
    let ws = Ws::new();
    let created = p.created(&ws, &ws.key(1), 1).await?;
    let got = p.get(&created.id).await?.instance(&[200], "get")?;
    check(got == created, || format!("get returned {got:?}, create returned {created:?}"))
}

async fn get_unknown(p: &Probe) -> Result<(), String> {
    let id = format!("conformance-unknown-{}", uuid::Uuid::new_v4());
    p.get(&id).await?.error(404, ErrorCode::NotFound, "get of an unknown id").map(drop)
}

async fn list_by_workspace_and_key(p: &Probe) -> Result<(), String> {
    let (a, b) = (Ws::new(), Ws::new());
    let a1 = p.created(&a, &a.key(1), 1).await?;
    let a2 = p.created(&a, &a.key(2), 1).await?;
    p.created(&b, &b.key(1), 1).await?;
    let mut listed = p.list(&a.uid, None).await?;
    listed.sort_by(|x, y| x.id.cmp(&y.id));
    let mut expected = vec![a1.clone(), a2];
    expected.sort_by(|x, y| x.id.cmp(&y.id));
    check(listed == expected, || format!("list of workspace A: expected {expected:?}, got {listed:?}"))?;
    let by_key = p.list(&a.uid, Some(&a.key(1))).await?;
    check(by_key == vec![a1.clone()], || format!("list by key: expected [{a1:?}], got {by_key:?}"))?;
    let none = p.list(&a.uid, Some(&a.key(9))).await?;
    check(none.is_empty(), || format!("list by an unused key: expected [], got {none:?}"))?;
    let foreign = p.list(&b.uid, Some(&a.key(1))).await?;
    check(foreign.is_empty(), || format!("list by key must only show the workspace's own: got {foreign:?}"))
}

async fn stop_stops(p: &Probe) -> Result<(), String> {
    let ws = Ws::new();
    let i = p.created(&ws, &ws.key(1), 1).await?;
    p.stopped(&ws, &i.id, 1, "stop").await?;
    let state = p.state(&i.id).await?;
    check(state == InstanceState::Stopped, || format!("after stop, get says {state:?}"))
}

async fn stop_twice(p: &Probe) -> Result<(), String> {
    let ws = Ws::new();
    let i = p.created(&ws, &ws.key(1), 1).await?;
    p.stopped(&ws, &i.id, 1, "stop").await?;
    p.stopped(&ws, &i.id, 1, "second stop").await
}

async fn stop_unknown(p: &Probe) -> Result<(), String> {
    let ws = Ws::new();
    let id = format!("conformance-unknown-{}", uuid::Uuid::new_v4());
    p.stopped(&ws, &id, 1, "stop of an unknown id").await
}

async fn create_after_stop(p: &Probe) -> Result<(), String> {
    let ws = Ws::new();
    let i = p.created(&ws, &ws.key(1), 1).await?;
    p.stopped(&ws, &i.id, 1, "stop").await?;
    let again = p.create(&ws, &ws.key(1), 1).await?.instance(&[200], "create after stop")?;
    check(again.id == i.id && again.state == InstanceState::Stopped, || {
        format!("a key yields one instance, ever: expected {} Stopped, got {again:?}", i.id)
    })
}

async fn stop_foreign(p: &Probe) -> Result<(), String> {
    let (a, b) = (Ws::new(), Ws::new());
    let i = p.created(&a, &a.key(1), 1).await?;
    p.stop(&b, &i.id, 1).await?.error(409, ErrorCode::Conflict, "stop of another workspace's instance")?;
    let state = p.state(&i.id).await?;
    check(state == InstanceState::Running, || format!("the refused stop took effect: {state:?}"))
}

async fn stale_create(p: &Probe) -> Result<(), String> {
    let ws = Ws::new();
    p.created(&ws, &ws.key(1), 5).await?;
    let err = p.create(&ws, &ws.key(2), 4).await?.error(409, ErrorCode::StaleEpoch, "create under epoch 4 after 5")?;
    check(err.newest_epoch == Some(5), || format!("StaleEpoch must say newestEpoch 5, got {:?}", err.newest_epoch))?;
    let made = p.list(&ws.uid, Some(&ws.key(2))).await?;
    check(made.is_empty(), || format!("the refused create took effect: {made:?}"))
}

async fn stale_stop(p: &Probe) -> Result<(), String> {
    let ws = Ws::new();
    let i = p.created(&ws, &ws.key(1), 3).await?;
    p.created(&ws, &ws.key(2), 5).await?;
    p.stop(&ws, &i.id, 4).await?.error(409, ErrorCode::StaleEpoch, "stop under epoch 4 after 5")?;
    let state = p.state(&i.id).await?;
    check(state == InstanceState::Running, || format!("the refused stop took effect: {state:?}"))
}

async fn newer_epochs(p: &Probe) -> Result<(), String> {
    let ws = Ws::new();
    let i = p.created(&ws, &ws.key(1), 5).await?;
    p.create(&ws, &ws.key(1), 5).await?.instance(&[200], "create under the same epoch")?;
    p.created(&ws, &ws.key(2), 6).await?;
    p.stopped(&ws, &i.id, 6, "stop under the newest epoch").await?;
    p.stop(&ws, &i.id, 5).await?.error(409, ErrorCode::StaleEpoch, "stop under epoch 5 after 6").map(drop)
}

async fn fences_per_workspace(p: &Probe) -> Result<(), String> {
    let (a, b) = (Ws::new(), Ws::new());
    p.created(&a, &a.key(1), 10).await?;
    p.created(&b, &b.key(1), 1).await.map(drop).map_err(|e| format!("workspace B, epoch 1, after A at 10: {e}"))
}

async fn unknown_endpoint(p: &Probe) -> Result<(), String> {
    let reply = p.send(Method::GET, &["no-such-endpoint"], Some(&p.token), None, &[]).await?;
    reply.error(404, ErrorCode::NotFound, "GET /v1/no-such-endpoint").map(drop)
}
