//! The http provider protocol end to end: `switchyard provider-sim` as a real process on real
//! TCP, the conformance suite against it, durability across kill -9, fencing, faults set while
//! it runs, and the http driver against providers that misbehave. Only the Secret test needs
//! the control plane.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use support::fake_provider::{Fake, Reply, Seen};
use switchyard::api::{ComputeProvider, HttpSettings};
use switchyard::provider::http::{BearerToken, HttpDriver, Retry, TokenSource};
use switchyard::provider::simulated::{Clouds, Faults, Outcome, Violation, check_ledger, merge_ledgers};
use switchyard::provider::{CallContext, DispatchError, Dispatcher, Driver, DriverError, InstanceState, Provision};
use switchyard::tools::provider_sim::{ProviderSimOptions, ProviderSimProcess, SimTls};
use tokio::net::TcpListener;

const BUDGET: Duration = Duration::from_secs(5);

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_switchyard")
}

async fn sim(name: &str) -> (ProviderSimProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = ProviderSimProcess::start(ProviderSimOptions::new(bin(), name, dir.path().join(name)))
        .await
        .expect("start provider-sim");
    (p, dir)
}

fn call(uid: &str, epoch: i64) -> CallContext {
    CallContext::sample(uid, epoch, "provider-http-test", "http-test")
}

fn driver_for(endpoint: &str, token: TokenSource, budget: Duration) -> HttpDriver {
    let settings =
        HttpSettings { endpoint: endpoint.to_owned(), secret_ref: None, ca_bundle: None, allow_insecure_token: false };
    HttpDriver::new("test-provider", &settings, token, budget).expect("driver")
}

fn one_attempt() -> Retry {
    Retry { attempts: 1, first_backoff: Duration::from_millis(10) }
}

/// Runs `switchyard provider-conformance` as a process; its output and stdout.
async fn conformance(endpoint: &str, token_file: &std::path::Path, extra: &[&str]) -> (std::process::Output, String) {
    let out = tokio::process::Command::new(bin())
        .args(["provider-conformance", "--endpoint", endpoint, "--token-file"])
        .arg(token_file)
        .args(extra)
        .output()
        .await
        .expect("run provider-conformance");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, stdout)
}

#[tokio::test]
async fn conformance_suite_passes_against_provider_sim() {
    let (p, _dir) = sim("conf").await;
    let (out, stdout) = conformance(&p.endpoint(), &p.token_file(), &[]).await;
    assert!(out.status.success(), "conformance failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.ends_with(" passed, 0 failed"), "closing line: {last:?}");
    assert!(stdout.lines().count() > 15 && !stdout.contains("FAIL"), "{stdout}");
    // The suite's calls are in the ledger, and they break no invariant.
    let ledger = p.ledger().await.expect("ledger");
    assert!(ledger.iter().any(|e| e.outcome == Outcome::Fenced { newest: 5 }));
    let v = check_ledger(&ledger);
    assert!(
        !v.iter().any(|v| matches!(v, Violation::KeyReused { .. } | Violation::StaleEpochAccepted { .. })),
        "{v:?}"
    );
}

#[tokio::test]
async fn conformance_suite_fails_against_a_broken_provider() {
    let endpoint = Fake::start(|_| Reply::Json(200, "{}".into())).await.endpoint;
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("token");
    std::fs::write(&token, "t").expect("token");
    let (out, stdout) = conformance(&endpoint, &token, &["--timeout", "2s"]).await;
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL missing-token-is-401"), "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("0 passed, ") && !last.ends_with(" 0 failed"), "closing line: {last:?}");
}

#[tokio::test]
async fn state_survives_kill_9_and_restart() {
    let (mut p, _dir) = sim("east").await;
    let d = p.driver(BUDGET).expect("driver");
    let a = d.provision(Provision::new(&call("u1", 2), "u1.op2")).await.expect("provision a");
    let b = d.provision(Provision::new(&call("u2", 1), "u2.op1")).await.expect("provision b");
    d.stop(&call("u2", 3), &b.id).await.expect("stop b");
    let before = p.ledger().await.expect("ledger");
    let endpoint = p.endpoint();

    p.kill().await.expect("kill -9");
    let down = d.health().await.expect_err("nothing listens");
    assert!(matches!(&down, DriverError::Transient(m) if m.contains("cannot connect")), "{down:?}");

    p.restart().await.expect("restart");
    assert_eq!(p.endpoint(), endpoint, "same address after a restart");
    let found = d.lookup(&call("u1", 2), "u1.op2").await.expect("lookup");
    assert_eq!(found, Some(a.clone()), "the instance created before the kill is still there");
    let again = d.provision(Provision::new(&call("u1", 2), "u1.op2")).await.expect("provision again");
    assert_eq!(again.id, a.id, "create by the same key returns the same instance");
    let instances = p.instances().await.expect("instances");
    assert_eq!(instances.iter().find(|i| i.wire.id == b.id).map(|i| i.wire.state), Some(InstanceState::Stopped));
    // Fences survived too.
    let fenced = d.stop(&call("u2", 2), &b.id).await.expect_err("stale epoch");
    assert_eq!(fenced, DriverError::StaleEpoch { epoch: 2, newest: 3 });
    let c = d.provision(Provision::new(&call("u3", 1), "u3.op1")).await.expect("provision c");
    assert!(c.id != a.id && c.id != b.id, "ids are not reused after a restart: {}", c.id);

    let after = p.ledger().await.expect("ledger");
    assert_eq!(&after[..before.len()], &before[..], "the ledger before the kill is kept as it was");
    assert!(after.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1), "seq continues");

    // A graceful stop and start keeps everything too.
    p.terminate().await.expect("SIGTERM");
    p.restart().await.expect("restart");
    assert_eq!(p.ledger().await.expect("ledger"), after);
}

#[tokio::test]
async fn stale_epochs_are_refused_over_http() {
    let (p, _dir) = sim("fence").await;
    let d = p.driver(BUDGET).expect("driver");
    let a = d.provision(Provision::new(&call("u1", 4), "u1.op4")).await.expect("provision");
    assert_eq!(
        d.provision(Provision::new(&call("u1", 3), "u1.op3")).await,
        Err(DriverError::StaleEpoch { epoch: 3, newest: 4 })
    );
    assert_eq!(d.stop(&call("u1", 1), &a.id).await, Err(DriverError::StaleEpoch { epoch: 1, newest: 4 }));
    // A paused ex-holder is not helped by retries: StaleEpoch is final.
    let ledger = p.ledger().await.expect("ledger");
    assert_eq!(ledger.iter().filter(|e| matches!(e.outcome, Outcome::Fenced { .. })).count(), 2);
    d.stop(&call("u1", 5), &a.id).await.expect("a newer epoch passes");
}

#[tokio::test]
async fn fences_and_failed_calls_hold_off_a_paused_ex_holder_over_http_and_across_restarts() {
    let (mut p, _dir) = sim("fence-call").await;
    let d = p.driver(BUDGET).expect("driver").with_retry(one_attempt());
    // The new holder fences u1 at 3, and its provision of u2 at 5 fails after passing the fence.
    d.fence(&call("u1", 3)).await.expect("fence");
    d.fence(&call("u1", 3)).await.expect("fence again: idempotent");
    assert_eq!(d.fence(&call("u1", 2)).await, Err(DriverError::StaleEpoch { epoch: 2, newest: 3 }));
    p.set_faults(&Faults { fail_provision: 1, ..Faults::default() }).await.expect("faults");
    assert!(d.provision(Provision::new(&call("u2", 5), "u2.op5")).await.expect_err("injected").is_retryable());
    // A failed lookup at 7 for u3 (answered, but lost to the caller is the same to the provider).
    p.set_faults(&Faults { fail_lookup: 1, ..Faults::default() }).await.expect("faults");
    assert!(d.lookup(&call("u3", 7), "u3.op7").await.expect_err("injected").is_retryable());

    p.kill().await.expect("kill -9");
    p.restart().await.expect("restart");
    // The paused ex-holders wake up: none of them creates anything.
    for (uid, epoch, newest) in [("u1", 2, 3), ("u2", 4, 5), ("u3", 6, 7)] {
        let key = format!("{uid}.op{epoch}");
        assert_eq!(
            d.provision(Provision::new(&call(uid, epoch), &key)).await,
            Err(DriverError::StaleEpoch { epoch, newest }),
            "{uid}"
        );
        assert_eq!(d.lookup(&call(uid, epoch), &key).await, Err(DriverError::StaleEpoch { epoch, newest }));
    }
    let ledger = p.ledger().await.expect("ledger");
    assert!(check_ledger(&ledger).is_empty(), "{:?}", check_ledger(&ledger));
    assert!(ledger.iter().all(|e| !e.outcome.created()), "nothing was created");
}

#[tokio::test]
async fn the_inventory_pages_through_one_cluster_over_http() {
    let (p, _dir) = sim("inventory").await;
    let d = p.driver(BUDGET).expect("driver");
    let mut mine = Vec::new();
    for n in 0..5 {
        let uid = format!("u{n}");
        mine.push(d.provision(Provision::new(&call(&uid, 2), &format!("{uid}.op2"))).await.expect("provision").id);
    }
    let theirs = CallContext { cluster: "elsewhere".into(), ..call("x1", 1) };
    d.provision(Provision::new(&theirs, "x1.op1")).await.expect("provision");
    d.stop(&call("u0", 3), &mine[0]).await.expect("stop");

    let mut seen = Vec::new();
    let mut page = None;
    loop {
        let got = d.list("http-test", page.as_deref(), 2).await.expect("list");
        assert!(got.items.len() <= 2);
        seen.extend(got.items);
        page = got.next;
        if page.is_none() {
            break;
        }
    }
    let mut ids: Vec<String> = seen.iter().map(|i| i.id.clone()).collect();
    ids.sort();
    mine.sort();
    assert_eq!(ids, mine);
    let u0 = seen.iter().find(|i| i.workspace_uid == "u0").expect("u0");
    assert_eq!((u0.state, u0.fence, u0.name.as_str()), (InstanceState::Stopped, Some(3), "ws-u0"));
    let [x] = d.list("elsewhere", None, 500).await.expect("list").items.try_into().expect("one");
    assert_eq!(x.workspace_uid, "x1");
    assert!(d.list("nobody", None, 10).await.expect("list").items.is_empty());
}

#[tokio::test]
async fn faults_set_over_the_admin_endpoint_take_effect() {
    let (p, _dir) = sim("faulty").await;
    let d = p.driver(BUDGET).expect("driver");
    let once = p.driver(BUDGET).expect("driver").with_retry(one_attempt());

    // An injected failure is retryable: one attempt sees it, the default driver retries past it.
    p.set_faults(&Faults { fail_provision: 1, ..Faults::default() }).await.expect("set faults");
    assert_eq!(p.faults().await.expect("faults").fail_provision, 1);
    let e = once.provision(Provision::new(&call("u1", 1), "k1")).await.expect_err("injected");
    assert!(matches!(&e, DriverError::Transient(m) if m.contains("503")), "{e:?}");
    p.set_faults(&Faults { fail_provision: 2, ..Faults::default() }).await.expect("set faults");
    d.provision(Provision::new(&call("u1", 1), "k1")).await.expect("retried past two failures");

    // Commit, then drop the connection: the caller sees a lost answer; the retry under the
    // same key gets the committed instance.
    p.set_faults(&Faults { drop_provision_response: 1, ..Faults::default() }).await.expect("set faults");
    let e = once.provision(Provision::new(&call("u1", 1), "k2")).await.expect_err("lost answer");
    assert!(matches!(&e, DriverError::Transient(m) if m.contains("connection lost")), "{e:?}");
    let k2 = once.lookup(&call("u1", 1), "k2").await.expect("lookup").expect("committed");
    p.set_faults(&Faults { drop_provision_response: 1, ..Faults::default() }).await.expect("set faults");
    let k3 = d.provision(Provision::new(&call("u1", 1), "k3")).await.expect("the retry finds the committed instance");
    let outcomes: Vec<Outcome> = p.ledger().await.expect("ledger").into_iter().map(|e| e.outcome).collect();
    assert!(outcomes.ends_with(&[Outcome::CommittedResponseLost { created: true }, Outcome::Existing]), "{outcomes:?}");
    assert_ne!(k2.id, k3.id);

    // Refuse all: 503 to everything, health included, until cleared.
    p.set_faults(&Faults { refuse_all: true, ..Faults::default() }).await.expect("set faults");
    assert!(matches!(once.health().await, Err(DriverError::Transient(m)) if m.contains("refuses all")));
    assert!(once.stop(&call("u1", 1), &k2.id).await.is_err());
    // Error rate 1.0 fails every stop, without effect.
    p.set_faults(&Faults { stop_error_rate: 1.0, ..Faults::default() }).await.expect("set faults");
    d.health().await.expect("healthy again");
    assert!(d.stop(&call("u1", 1), &k2.id).await.is_err());

    // Extra latency, and a hang the driver's budget cuts short.
    p.set_faults(&Faults { extra_latency: Duration::from_millis(300), ..Faults::default() }).await.expect("set");
    let started = Instant::now();
    d.stop(&call("u1", 1), &k2.id).await.expect("slow stop");
    assert!(started.elapsed() >= Duration::from_millis(300));
    p.set_faults(&Faults { hang: true, ..Faults::default() }).await.expect("set faults");
    let short = p.driver(Duration::from_millis(700)).expect("driver");
    let started = Instant::now();
    let e = short.stop(&call("u1", 1), &k3.id).await.expect_err("hangs");
    assert!(matches!(&e, DriverError::Transient(m) if m.contains("no answer within")), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "bounded by the budget: {:?}", started.elapsed());
    p.set_faults(&Faults::default()).await.expect("clear");
    let running = p
        .instances()
        .await
        .expect("instances")
        .into_iter()
        .map(|i| i.wire)
        .filter(|i| i.state == InstanceState::Running);
    assert_eq!(running.map(|i| i.key).collect::<Vec<_>>(), vec!["k1", "k3"]);
}

#[tokio::test]
async fn missing_or_wrong_tokens_are_clear_rejections() {
    let (p, _dir) = sim("auth").await;
    let none = driver_for(&p.endpoint(), TokenSource::None, BUDGET);
    let e = none.provision(Provision::new(&call("u1", 1), "k1")).await.expect_err("no token");
    assert_eq!(e, DriverError::Rejected("401 Unauthorized: the provider refused no token configured".into()));
    let wrong = driver_for(&p.endpoint(), TokenSource::Static(BearerToken::new("not-the-token")), BUDGET);
    let e = wrong.health().await.expect_err("wrong token");
    assert!(!e.is_retryable() && e.to_string().contains("401"), "{e}");
    assert!(!e.to_string().contains("not-the-token") && !format!("{wrong:?}").contains("not-the-token"));
    assert!(p.instances().await.expect("instances").is_empty());
}

#[tokio::test]
async fn https_with_a_ca_bundle() {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("cert");
    let tls = SimTls { cert_pem: cert.cert.pem(), key_pem: cert.signing_key.serialize_pem() };
    let dir = tempfile::tempdir().expect("temp dir");
    let options =
        ProviderSimOptions { tls: Some(tls), ..ProviderSimOptions::new(bin(), "tls", dir.path().join("tls")) };
    let p = ProviderSimProcess::start(options).await.expect("start provider-sim with TLS");
    assert!(p.endpoint().starts_with("https://127.0.0.1:"), "{}", p.endpoint());

    // The driver trusts the provider through spec.http.caBundle.
    let d = p.driver(BUDGET).expect("driver");
    d.health().await.expect("healthy over TLS");
    let i = d.provision(Provision::new(&call("u1", 1), "u1.op1")).await.expect("provision over TLS");
    assert_eq!(d.lookup(&call("u1", 1), "u1.op1").await.expect("lookup"), Some(i));

    // Without the bundle the certificate is not trusted: a clear error, no call made.
    let token = TokenSource::Static(BearerToken::new(p.token()));
    let e = driver_for(&p.endpoint(), token, BUDGET).with_retry(one_attempt()).health().await.expect_err("untrusted");
    assert!(
        matches!(&e, DriverError::Rejected(m) if m.contains("TLS certificate is not trusted") && m.contains("caBundle")),
        "an untrusted certificate needs a fix, not a retry: {e:?}"
    );

    // The conformance suite speaks TLS too.
    let ca = p.state_dir().join("tls.crt");
    let (out, stdout) =
        conformance(&p.endpoint(), &p.token_file(), &["--ca-bundle-file", ca.to_str().expect("utf-8")]).await;
    assert!(out.status.success() && stdout.trim_end().ends_with(" passed, 0 failed"), "{stdout}");
}

fn token() -> TokenSource {
    TokenSource::Static(BearerToken::new("fake-provider-token"))
}

#[tokio::test]
async fn bad_providers_give_clear_driver_errors() {
    type Check = fn(&DriverError) -> bool;
    type Respond = fn(&Seen) -> Reply;
    let cases: [(&str, Respond, Check); 8] = [
        (
            "garbage JSON in a 200",
            |_| Reply::Json(200, "{\"id\": 12, oops".into()),
            |e| matches!(e, DriverError::Rejected(m) if m.contains("protocol violation") && m.contains("oops")),
        ),
        (
            "a 200 for another key",
            |_| Reply::Json(200, r#"{"id":"i-1","key":"other","workspaceUid":"u1","state":"Running"}"#.into()),
            |e| matches!(e, DriverError::Rejected(m) if m.contains("key other")),
        ),
        (
            "HTML 500",
            |_| Reply::Json(500, "<html>boom</html>".into()),
            |e| matches!(e, DriverError::Transient(m) if m.contains("500") && m.contains("boom")),
        ),
        (
            "404 without an error body",
            |_| Reply::Json(404, "not here".into()),
            |e| matches!(e, DriverError::Rejected(m) if m.contains("404") && m.contains("protocol violation")),
        ),
        ("a redirect", |_| Reply::Json(302, "".into()), |e| matches!(e, DriverError::Rejected(m) if m.contains("302"))),
        (
            "an unknown error code that says retryable",
            |_| Reply::Json(429, r#"{"code":"SlowDown","message":"later","retryable":true}"#.into()),
            |e| matches!(e, DriverError::Transient(m) if m.contains("later")),
        ),
        (
            "a closed connection",
            |_| Reply::Close,
            |e| matches!(e, DriverError::Transient(m) if m.contains("connection lost")),
        ),
        ("a hang", |_| Reply::Hang, |e| matches!(e, DriverError::Transient(m) if m.contains("no answer within"))),
    ];
    for (what, respond, expected) in cases {
        let endpoint = Fake::start(respond).await.endpoint;
        let d = driver_for(&endpoint, token(), Duration::from_millis(800)).with_retry(one_attempt());
        let started = Instant::now();
        let e = d.provision(Provision::new(&call("u1", 1), "k1")).await.expect_err(what);
        assert!(expected(&e), "{what}: {e:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "{what}: bounded: {:?}", started.elapsed());
        // Stops and lookups map the same way, and nothing panics.
        let _ = d.stop(&call("u1", 1), "i-1").await;
        let _ = d.lookup(&call("u1", 1), "k1").await;
    }

    // Nothing listening at all.
    let closed = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("bind");
    let endpoint = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let e = driver_for(&endpoint, token(), BUDGET).with_retry(one_attempt()).health().await.expect_err("refused");
    assert!(matches!(&e, DriverError::Transient(m) if m.contains("cannot connect")), "{e:?}");

    // A provider that keeps failing retryably is retried, within the attempts, then reported.
    let endpoint =
        Fake::start(|_| Reply::Json(503, r#"{"code":"Unavailable","message":"busy","retryable":true}"#.into()))
            .await
            .endpoint;
    let d = driver_for(&endpoint, token(), BUDGET)
        .with_retry(Retry { attempts: 3, first_backoff: Duration::from_millis(50) });
    let started = Instant::now();
    let e = d.stop(&call("u1", 1), "i-1").await.expect_err("busy");
    assert!(matches!(&e, DriverError::Transient(m) if m.contains("busy")), "{e:?}");
    assert!(started.elapsed() >= Duration::from_millis(150), "two backoffs: {:?}", started.elapsed());
}

#[tokio::test]
async fn ledgers_of_two_provider_sims_merge_into_one_checked_history() {
    let (a, _da) = sim("merge-a").await;
    let (b, _db) = sim("merge-b").await;
    let (da, db) = (a.driver(BUDGET).expect("driver"), b.driver(BUDGET).expect("driver"));
    // A safe switch of u1 from a to b: stop first, then provision.
    let old = da.provision(Provision::new(&call("u1", 1), "u1.op1")).await.expect("provision on a");
    da.stop(&call("u1", 2), &old.id).await.expect("stop on a");
    db.provision(Provision::new(&call("u1", 2), "u1.op2")).await.expect("provision on b");
    let merged = merge_ledgers(vec![a.ledger().await.expect("ledger a"), b.ledger().await.expect("ledger b")]);
    assert_eq!(merged.len(), 3);
    assert!(check_ledger(&merged).is_empty(), "{:?}", check_ledger(&merged));
    // An unsafe one for u2: b starts before a stops. Only the merged ledger shows it.
    da.provision(Provision::new(&call("u2", 1), "u2.op1")).await.expect("provision on a");
    db.provision(Provision::new(&call("u2", 2), "u2.op2")).await.expect("provision on b");
    let (la, lb) = (a.ledger().await.expect("ledger a"), b.ledger().await.expect("ledger b"));
    assert!(check_ledger(&la).is_empty() && check_ledger(&lb).is_empty());
    let v = check_ledger(&merge_ledgers(vec![la, lb]));
    assert!(matches!(v.as_slice(), [Violation::MultipleLive { workspace_uid, .. }] if workspace_uid == "u2"), "{v:?}");
}

// ---- the token Secret, through a real API server ---------------------------------------------

fn http_provider(name: &str, endpoint: &str, namespace: &str, secret: &str) -> ComputeProvider {
    serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1", "kind": "ComputeProvider",
        "metadata": {"name": name},
        "spec": {"driver": "http", "callTimeoutSeconds": 5,
                 "http": {"endpoint": endpoint, "secretRef": {"name": secret, "namespace": namespace}}}
    }))
    .expect("provider")
}

async fn put_secret(secrets: &Api<Secret>, name: &str, data: serde_json::Value) {
    let metadata = json!({"name": name, "labels": {switchyard::api::PROVIDER_TOKEN_LABEL: "true"}});
    let secret: Secret = serde_json::from_value(json!({"metadata": metadata, "stringData": data})).expect("secret");
    let params = PatchParams::apply("provider-http-test").force();
    secrets.patch(name, &params, &Patch::Apply(&secret)).await.expect("apply secret");
}

#[tokio::test]
async fn the_token_comes_from_the_secret_and_rotation_needs_no_restart() {
    let client = support::client().await;
    let ns = support::namespace(&client, "http-token").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let (mut p, _dir) = sim("secret-sim").await;
    put_secret(&secrets, "sim-token", json!({"token": p.token()})).await;
    let dispatcher = Dispatcher::new(Clouds::new()).with_client(client.clone());
    let provider = http_provider("secret-sim", &p.endpoint(), &ns, "sim-token");

    dispatcher.health(&provider).await.expect("healthy with the Secret's token");
    let i = dispatcher.provision(&provider, &call("u1", 1), "u1.op1", None).await.expect("provision");

    // Rotate: the provider and the Secret change together; the cached token is refused once,
    // the Secret is read again, and the call goes through — no restart, no waiting out the cache.
    p.rotate_token("rotated-token-value").expect("rotate");
    put_secret(&secrets, "sim-token", json!({"token": "rotated-token-value"})).await;
    let found = dispatcher.lookup(&provider, &call("u1", 1), "u1.op1").await.expect("lookup after rotation");
    assert_eq!(found, Some(i));

    // A wrong token: non-retryable, names the Secret, never shows the token.
    put_secret(&secrets, "wrong-token", json!({"token": "wrong-token-value"})).await;
    let wrong = http_provider("secret-sim-wrong", &p.endpoint(), &ns, "wrong-token");
    let e = dispatcher.health(&wrong).await.expect_err("wrong token");
    let text = e.to_string();
    assert!(!e.is_retryable() && text.contains(&format!("Secret {ns}/wrong-token")), "{text}");
    assert!(!text.contains("wrong-token-value") && !format!("{e:?}").contains("wrong-token-value"), "{text}");

    // A missing Secret, and a Secret without the key: clear, non-retryable, no call made.
    let missing = http_provider("secret-sim-missing", &p.endpoint(), &ns, "absent");
    let e = dispatcher.provision(&missing, &call("u2", 1), "u2.op1", None).await.expect_err("missing Secret");
    assert!(
        matches!(&e, DispatchError::Driver { source: DriverError::Rejected(m), .. }
            if m.contains(&format!("Secret {ns}/absent")) && m.contains("does not exist")),
        "{e:?}"
    );
    assert!(!e.is_retryable());
    put_secret(&secrets, "no-key", json!({"other": "x"})).await;
    let no_key = http_provider("secret-sim-nokey", &p.endpoint(), &ns, "no-key");
    let e = dispatcher.health(&no_key).await.expect_err("no key");
    assert!(e.to_string().contains("has no key \"token\""), "{e}");
    let ledger = p.ledger().await.expect("ledger");
    assert!(ledger.iter().all(|e| e.workspace_uid != "u2"), "no call without a token");
}
