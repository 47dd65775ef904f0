//! `switchyard provider-conformance`: checks that a provider implements the protocol as
//! `docs/provider-protocol.yaml` specifies it — idempotency, stop semantics, get/list, fencing,
//! explicit fences, the inventory list by cluster, error codes and retryable flags, auth. Every
//! case uses fresh workspace UIDs (and fresh cluster identities), so the suite can run against a
//! provider that serves other traffic; it stops what it created at the end.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::Method;
use serde_json::{Value, json};

use crate::provider::InstanceState;
use crate::provider::http::client::{BearerToken, Endpoint, EndpointError};
use crate::provider::http::wire::{
    CALLER_HEADER, EPOCH_HEADER, ErrorBody, ErrorCode, Fence, Health, Instance, InstanceList, InventoryPage,
    OPERATION_HEADER, Stopped,
};

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
    #[arg(long, default_value = "10s", value_parser = crate::runtime::parse_duration)]
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
    ("stale-epoch-lookup-is-refused-and-lookups-raise-the-fence", |p| Box::pin(lookups_are_fenced(p))),
    ("lookup-without-epoch-is-400", |p| Box::pin(lookup_without_epoch(p))),
    ("fence-raises-the-fence", |p| Box::pin(fence_raises(p))),
    ("calls-older-than-a-fence-are-refused", |p| Box::pin(older_than_fence(p))),
    ("fence-with-an-older-epoch-is-refused", |p| Box::pin(older_fence(p))),
    ("fence-is-idempotent", |p| Box::pin(fence_idempotent(p))),
    ("inventory-lists-one-cluster-in-pages", |p| Box::pin(inventory_pages(p))),
    ("inventory-clamps-its-limit", |p| Box::pin(inventory_clamps(p))),
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
    cluster: String,
}

impl Ws {
    fn new() -> Self {
        Self::in_cluster("conformance")
    }

    fn in_cluster(cluster: &str) -> Self {
        Self { uid: format!("conformance-{}", uuid::Uuid::new_v4()), cluster: cluster.to_owned() }
    }

    fn key(&self, n: u32) -> String {
        format!("{}.op-{n}", self.uid)
    }

    fn call(&self, epoch: i64) -> Value {
        json!({"workspaceUid": self.uid, "namespace": "conformance", "name": "ws", "epoch": epoch,
               "caller": "provider-conformance", "operationId": format!("op-{epoch}"), "cluster": self.cluster})
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

    /// Every instance of workspace `uid` (unfenced).
    async fn list(&self, uid: &str) -> Result<Vec<Instance>, String> {
        let reply = self.send(Method::GET, &["instances"], Some(&self.token), None, &[("workspaceUid", uid)]).await?;
        Ok(reply.status_in(&[200], "list")?.json::<InstanceList>("instance list")?.items)
    }

    /// The lookup by key, under `epoch`.
    async fn lookup_reply(&self, uid: &str, key: &str, epoch: Option<i64>) -> Result<Reply, String> {
        let mut request = self
            .endpoint
            .request(Method::GET, &["instances"], Some(&self.token))
            .query(&[("workspaceUid", uid), ("key", key)])
            .header(CALLER_HEADER, "provider-conformance")
            .header(OPERATION_HEADER, "conformance-lookup");
        if let Some(epoch) = epoch {
            request = request.header(EPOCH_HEADER, epoch.to_string());
        }
        let response =
            request.send().await.map_err(|e| format!("GET /v1/instances?key=: no answer: {}", e.without_url()))?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| format!("lookup: answer cut off: {}", e.without_url()))?;
        Ok(Reply { status, body })
    }

    async fn lookup(&self, uid: &str, key: &str, epoch: i64) -> Result<Vec<Instance>, String> {
        let reply = self.lookup_reply(uid, key, Some(epoch)).await?;
        Ok(reply.status_in(&[200], "lookup by key")?.json::<InstanceList>("instance list")?.items)
    }

    async fn fence(&self, ws: &Ws, epoch: i64) -> Result<Reply, String> {
        self.send(Method::POST, &["workspaces", &ws.uid, "fence"], Some(&self.token), Some(&ws.call(epoch)), &[]).await
    }

    async fn fenced(&self, ws: &Ws, epoch: i64, what: &str) -> Result<(), String> {
        let fence: Fence = self.fence(ws, epoch).await?.status_in(&[200], what)?.json("fence answer")?;
        check(fence.workspace_uid == ws.uid && fence.epoch == epoch, || {
            format!("{what}: expected {{workspaceUid: {}, epoch: {epoch}}}, got {fence:?}", ws.uid)
        })
    }

    async fn inventory(&self, cluster: &str, page: Option<&str>, limit: &str) -> Result<InventoryPage, String> {
        let mut query = vec![("cluster", cluster), ("limit", limit)];
        query.extend(page.map(|p| ("pageToken", p)));
        let reply = self.send(Method::GET, &["instances"], Some(&self.token), None, &query).await?;
        reply.status_in(&[200], "inventory list")?.json("inventory page")
    }

    async fn clean_up(&self) {
        let mut created = std::mem::take(&mut *self.created.lock().unwrap_or_else(|e| e.into_inner()));
        created.sort();
        created.dedup();
        for (uid, id) in created {
            // Far above any epoch a case used, so the fence never refuses the clean-up.
            let _ = self.stop(&Ws { uid, cluster: String::new() }, &id, 1_000_000).await;
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
    check(p.list(&ws.uid).await?.is_empty(), || "an unauthorized create took effect".to_owned())
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
    let listed = p.list(&ws.uid).await?;
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
    check(p.list(&b.uid).await?.is_empty(), || "the refused create made an instance".to_owned())
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
    check(p.list(&ws.uid).await?.is_empty(), || "an invalid create made an instance".to_owned())
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
    let mut listed = p.list(&a.uid).await?;
    listed.sort_by(|x, y| x.id.cmp(&y.id));
    let mut expected = vec![a1.clone(), a2];
    expected.sort_by(|x, y| x.id.cmp(&y.id));
    check(listed == expected, || format!("list of workspace A: expected {expected:?}, got {listed:?}"))?;
    let by_key = p.lookup(&a.uid, &a.key(1), 1).await?;
    check(by_key == vec![a1.clone()], || format!("list by key: expected [{a1:?}], got {by_key:?}"))?;
    let none = p.lookup(&a.uid, &a.key(9), 1).await?;
    check(none.is_empty(), || format!("list by an unused key: expected [], got {none:?}"))?;
    let foreign = p.lookup(&b.uid, &a.key(1), 1).await?;
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
    let made = p.lookup(&ws.uid, &ws.key(2), 5).await?;
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

async fn lookups_are_fenced(p: &Probe) -> Result<(), String> {
    let ws = Ws::new();
    let i = p.created(&ws, &ws.key(1), 3).await?;
    let found = p.lookup(&ws.uid, &ws.key(1), 6).await?;
    check(found.iter().map(|f| &f.id).eq([&i.id]), || {
        format!("lookup under epoch 6: expected [{}], got {found:?}", i.id)
    })?;
    let reply = p.lookup_reply(&ws.uid, &ws.key(1), Some(5)).await?;
    let err = reply.error(409, ErrorCode::StaleEpoch, "lookup under epoch 5 after a lookup under 6")?;
    check(err.newest_epoch == Some(6), || format!("StaleEpoch must say newestEpoch 6, got {:?}", err.newest_epoch))?;
    // The lookup under 6 raised the fence: a create under 5 is refused.
    p.create(&ws, &ws.key(2), 5).await?.error(409, ErrorCode::StaleEpoch, "create under 5 after a lookup under 6")?;
    check(p.list(&ws.uid).await?.len() == 1, || "the refused create took effect".to_owned())
}

async fn lookup_without_epoch(p: &Probe) -> Result<(), String> {
    let ws = Ws::new();
    p.lookup_reply(&ws.uid, &ws.key(1), None)
        .await?
        .error(400, ErrorCode::InvalidRequest, "lookup without epoch")
        .map(drop)
}

async fn fence_raises(p: &Probe) -> Result<(), String> {
    let ws = Ws::new();
    // A fence needs no instance: it may be the first call the provider sees for the workspace.
    p.fenced(&ws, 5, "first fence").await?;
    p.create(&ws, &ws.key(1), 4).await?.error(409, ErrorCode::StaleEpoch, "create under 4 after a fence at 5")?;
    p.created(&ws, &ws.key(2), 5).await.map(drop).map_err(|e| format!("create under the fence's epoch: {e}"))
}

async fn older_than_fence(p: &Probe) -> Result<(), String> {
    let ws = Ws::new();
    let i = p.created(&ws, &ws.key(1), 3).await?;
    p.fenced(&ws, 5, "fence at 5").await?;
    let state = p.state(&i.id).await?;
    check(state == InstanceState::Running, || format!("a fence must not stop anything: {state:?}"))?;
    let err =
        p.create(&ws, &ws.key(2), 4).await?.error(409, ErrorCode::StaleEpoch, "create under 4 after a fence at 5")?;
    check(err.newest_epoch == Some(5), || format!("StaleEpoch must say newestEpoch 5, got {:?}", err.newest_epoch))?;
    p.stop(&ws, &i.id, 4).await?.error(409, ErrorCode::StaleEpoch, "stop under 4 after a fence at 5")?;
    p.lookup_reply(&ws.uid, &ws.key(1), Some(4)).await?.error(
        409,
        ErrorCode::StaleEpoch,
        "lookup under 4 after a fence at 5",
    )?;
    let state = p.state(&i.id).await?;
    check(state == InstanceState::Running, || format!("the refused stop took effect: {state:?}"))?;
    check(p.list(&ws.uid).await?.len() == 1, || "the refused create took effect".to_owned())?;
    p.stopped(&ws, &i.id, 5, "stop under the fence's epoch").await
}

async fn older_fence(p: &Probe) -> Result<(), String> {
    let ws = Ws::new();
    p.fenced(&ws, 7, "fence at 7").await?;
    let err = p.fence(&ws, 6).await?.error(409, ErrorCode::StaleEpoch, "fence at 6 after 7")?;
    check(err.newest_epoch == Some(7), || format!("StaleEpoch must say newestEpoch 7, got {:?}", err.newest_epoch))?;
    p.fenced(&ws, 8, "fence at 8 after 7").await
}

async fn fence_idempotent(p: &Probe) -> Result<(), String> {
    let ws = Ws::new();
    p.fenced(&ws, 2, "fence").await?;
    p.fenced(&ws, 2, "the same fence again").await?;
    p.created(&ws, &ws.key(1), 2).await.map(drop).map_err(|e| format!("create under the fence's epoch: {e}"))
}

async fn inventory_pages(p: &Probe) -> Result<(), String> {
    let cluster = format!("conformance-{}", uuid::Uuid::new_v4());
    let mut expected = Vec::new();
    for n in 0..3 {
        let ws = Ws::in_cluster(&cluster);
        expected.push(p.created(&ws, &ws.key(n), 2).await?.id);
        if n == 0 {
            p.stopped(&ws, &expected[0], 3, "stop").await?;
        }
    }
    let other = Ws::in_cluster(&format!("conformance-{}", uuid::Uuid::new_v4()));
    let foreign = p.created(&other, &other.key(1), 1).await?;

    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..10 {
        let page = p.inventory(&cluster, token.as_deref(), "2").await?;
        check(page.items.len() <= 2, || format!("limit 2 answered {} items", page.items.len()))?;
        seen.extend(page.items);
        token = page.next_page_token;
        if token.is_none() {
            break;
        }
    }
    check(token.is_none(), || "the inventory never reached its last page".to_owned())?;
    let mut ids: Vec<&str> = seen.iter().map(|i| i.id.as_str()).collect();
    ids.sort();
    let mut want: Vec<&str> = expected.iter().map(String::as_str).collect();
    want.sort();
    check(ids == want, || format!("cluster {cluster}: expected {want:?}, got {ids:?}"))?;
    check(!seen.iter().any(|i| i.id == foreign.id), || "the inventory showed another cluster's instance".to_owned())?;
    let stopped = seen.iter().find(|i| i.id == expected[0]);
    check(stopped.is_some_and(|i| i.state == InstanceState::Stopped && i.fence.is_none_or(|f| f >= 3)), || {
        format!("a stopped instance is listed as Stopped, with its fence: {stopped:?}")
    })?;
    // The same walk again yields the same order.
    let again: Vec<String> = {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..10 {
            let page = p.inventory(&cluster, token.as_deref(), "2").await?;
            all.extend(page.items.into_iter().map(|i| i.id));
            token = page.next_page_token;
            if token.is_none() {
                break;
            }
        }
        all
    };
    let first: Vec<String> = seen.iter().map(|i| i.id.clone()).collect();
    check(again == first, || format!("the order is not stable: {first:?}, then {again:?}"))
}

async fn inventory_clamps(p: &Probe) -> Result<(), String> {
    let cluster = format!("conformance-{}", uuid::Uuid::new_v4());
    for n in 0..2 {
        let ws = Ws::in_cluster(&cluster);
        p.created(&ws, &ws.key(n), 1).await?;
    }
    let page = p.inventory(&cluster, None, "0").await?;
    check(page.items.len() == 1 && page.next_page_token.is_some(), || {
        format!("limit 0 must be read as 1: got {} items, next {:?}", page.items.len(), page.next_page_token)
    })?;
    let page = p.inventory(&cluster, None, "100000").await?;
    check(page.items.len() == 2 && page.next_page_token.is_none(), || {
        format!("limit 100000 must be read as 500: got {} items, next {:?}", page.items.len(), page.next_page_token)
    })
}
