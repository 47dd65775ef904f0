//! Hostile providers and hostile provider configuration, against the real API server where a
//! ComputeProvider is involved. Each case states the input, the refusal (a driver error, or the
//! ComputeProvider's Ready=False reason and message as the health probe records it), and what the
//! provider saw: no request at all, no request carrying the token, or no call in its ledger.
//!
//! - Answers are bounded: a huge `Content-Length` is refused before the body is read, an
//!   endless body is cut off at 1 MiB and the connection dropped, and answers that break the
//!   protocol's bounds (control characters, another workspace's instance, negative epochs, a
//!   page token that repeats, too many items, nesting) are protocol violations.
//! - Credentials: the token goes only over https or to loopback unless `allowInsecureToken`;
//!   only Secrets marked as provider tokens are read; missing Secrets and keys, untrusted
//!   certificates and unusable CA bundles are ProviderMisconfigured.
//! - A provider being deleted is not Ready and gets no new workspace.
//! - Pods of the kubernetes driver are admitted by a namespace enforcing the `restricted` Pod
//!   Security profile.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::fake_provider::{Fake, Reply};
use switchyard::api::conditions as cond;
use switchyard::api::{ComputeProvider, HttpSettings, PROVIDER_TOKEN_LABEL, PROVIDER_TOKEN_TYPE, Workspace};
use switchyard::computeprovider;
use switchyard::provider::http::{BearerToken, HttpDriver, Retry, TokenSource};
use switchyard::provider::kubernetes::LABEL_WORKSPACE_UID;
use switchyard::provider::simulated::{Call, Clouds};
use switchyard::provider::{
    CREDENTIAL_PROVIDERS_ANNOTATION, CallContext, DispatchError, Dispatcher, Driver, DriverError, Provision,
};
use switchyard::tools::provider_sim::{ProviderSimOptions, ProviderSimProcess, SimTls};

use support::fixtures::{self, condition, unique, wait_for};
use support::sims::{Sim, http_provider, put_secret, secret_ref};

const BUDGET: Duration = Duration::from_secs(5);
const TOKEN: &str = "hostile-test-token-value";

fn call(uid: &str, epoch: i64) -> CallContext {
    CallContext::sample(uid, epoch, "hostile-providers-test", "hostile-test")
}

fn driver(endpoint: &str) -> HttpDriver {
    let settings =
        HttpSettings { endpoint: endpoint.to_owned(), secret_ref: None, ca_bundle: None, allow_insecure_token: false };
    HttpDriver::new("hostile", &settings, TokenSource::Static(BearerToken::new(TOKEN)), BUDGET)
        .expect("driver")
        .with_retry(Retry { attempts: 3, first_backoff: Duration::from_millis(10) })
}

fn rejected_with(e: &DriverError, needle: &str) -> bool {
    matches!(e, DriverError::Rejected(m) if m.contains(needle))
}

fn health_ok() -> String {
    json!({"status": "ok", "provider": "fake", "versions": ["v1"]}).to_string()
}

/// The peak resident memory of this process, if the platform says.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

// ---- 1. bounded answers ----------------------------------------------------------------------

#[tokio::test]
async fn oversized_answers_are_refused_and_not_read() {
    // An 800 MB health answer, announced: refused from the head alone, never retried.
    let announced = Fake::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 800000000\r\n\r\n{\"status\":"
                .to_vec(),
        )
    })
    .await;
    let e = driver(&announced.endpoint).health().await.expect_err("800 MB announced");
    assert!(rejected_with(&e, "provider answer larger than 1 MiB") && rejected_with(&e, "800000000"), "{e:?}");
    assert_eq!(announced.seen().len(), 1, "a protocol violation is not retried");

    // The same for an error answer: the cap holds whatever the status.
    let error = Fake::start(|_| Reply::Raw(b"HTTP/1.1 500 X\r\ncontent-length: 900000000\r\n\r\n".to_vec())).await;
    let e = driver(&error.endpoint).stop(&call("u1", 1), "i-1").await.expect_err("900 MB error");
    assert!(rejected_with(&e, "larger than 1 MiB"), "{e:?}");

    // Endless bodies, chunked and close-delimited: cut off once past 1 MiB, the connection
    // dropped (the provider's writes fail), nothing piles up.
    for chunked in [true, false] {
        let endless = Fake::start(move |_| Reply::Endless { chunked }).await;
        let d = driver(&endless.endpoint);
        let e = d.health().await.expect_err("endless");
        assert!(rejected_with(&e, "larger than 1 MiB") && rejected_with(&e, "kept coming"), "{chunked}: {e:?}");
        let e = d.list("hostile-test", None, 10).await.expect_err("endless list");
        assert!(rejected_with(&e, "larger than 1 MiB"), "{e:?}");
        support::eventually("the driver hangs up on an endless answer", Duration::from_secs(30), || async {
            (endless.hung_up.load(Ordering::SeqCst) >= 2).then_some(())
        })
        .await;
    }

    // Up to the cap is fine: a valid answer padded to exactly 1 MiB.
    let mut padded = health_ok();
    padded.push_str(&" ".repeat((1 << 20) - padded.len()));
    let exact = Fake::start(move |_| Reply::Json(200, padded.clone())).await;
    driver(&exact.endpoint).health().await.expect("exactly 1 MiB is within the cap");
    let mut over = health_ok();
    over.push_str(&" ".repeat((1 << 20) + 1 - over.len()));
    let just_over = Fake::start(move |_| Reply::Json(200, over.clone())).await;
    let e = driver(&just_over.endpoint).health().await.expect_err("1 MiB + 1");
    assert!(rejected_with(&e, "larger than 1 MiB"), "{e:?}");

    if let Some(peak) = peak_rss_bytes() {
        assert!(peak < 400 << 20, "peak RSS {} MiB: answers were buffered", peak >> 20);
    }
}

// ---- 5. answers that break the protocol ------------------------------------------------------

#[tokio::test]
async fn hostile_answers_are_protocol_violations_or_harmless() {
    type Check = fn(&DriverError) -> bool;
    let instance = |id: &str, uid: &str| json!({"id": id, "key": "u1.op1", "workspaceUid": uid, "state": "Running"});
    let cases: Vec<(&str, Reply, Check)> = vec![
        ("malformed JSON", Reply::Json(201, "{\"id\": \"i-1\", \"key\": ".into()), |e| {
            rejected_with(e, "protocol violation: the created instance is not valid")
        }),
        (
            "an id with control characters",
            Reply::Json(201, instance("i-1\u{1b}[2J\r\nX-Injected: 1", "u1").to_string()),
            |e| rejected_with(e, "holds control characters") && !e.to_string().chars().any(char::is_control),
        ),
        ("an over-long id", Reply::Json(201, instance(&"i".repeat(5000), "u1").to_string()), |e| {
            rejected_with(e, "more than 1024") && e.to_string().len() < 1000
        }),
        ("another workspace's instance", Reply::Json(201, instance("i-1", "someone-else").to_string()), |e| {
            rejected_with(e, "belongs to workspace")
        }),
        ("an empty id", Reply::Json(200, instance("", "u1").to_string()), |e| rejected_with(e, "id is empty")),
        (
            "JSON nested past any sane depth",
            Reply::Json(201, format!("{}{}", "[".repeat(100_000), "]".repeat(100_000))),
            |e| rejected_with(e, "protocol violation"),
        ),
        (
            "a StaleEpoch that claims a negative newest epoch",
            Reply::Json(
                409,
                json!({"code": "StaleEpoch", "message": "m", "retryable": false, "newestEpoch": -7}).to_string(),
            ),
            |e| *e == DriverError::StaleEpoch { epoch: 1, newest: 2 },
        ),
        (
            "an error message that echoes the token and carries escapes",
            Reply::Json(
                400,
                json!({"code": "InvalidRequest", "message": format!("bad {TOKEN}\n\u{1b}[31m"), "retryable": false})
                    .to_string(),
            ),
            |e| {
                let m = e.to_string();
                !m.contains(TOKEN) && m.contains("<redacted>") && !m.chars().any(char::is_control)
            },
        ),
    ];
    for (what, reply, expected) in cases {
        let reply = Arc::new(Mutex::new(Some(reply)));
        let fake = Fake::start(move |_| {
            reply.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or(Reply::Json(500, "{}".into()))
        })
        .await;
        let d = driver(&fake.endpoint).with_retry(Retry { attempts: 1, first_backoff: Duration::from_millis(1) });
        let e = d.provision(Provision::new(&call("u1", 1), "u1.op1")).await.expect_err(what);
        assert!(expected(&e), "{what}: {e:?}");
    }

    // Lookups: too many items, a wrong workspace.
    let many: Vec<_> = (0..501).map(|i| instance(&format!("i-{i}"), "u1")).collect();
    let body = json!({"items": many}).to_string();
    let fake = Fake::start(move |_| Reply::Json(200, body.clone())).await;
    let e = driver(&fake.endpoint).lookup(&call("u1", 1), "u1.op1").await.expect_err("501 items");
    assert!(rejected_with(&e, "501 items, more than 500"), "{e:?}");

    // Fence answers that lower the fence or name another workspace.
    for answer in [json!({"workspaceUid": "u1", "epoch": -1}), json!({"workspaceUid": "u2", "epoch": 3})] {
        let body = answer.to_string();
        let fake = Fake::start(move |_| Reply::Json(200, body.clone())).await;
        let e = driver(&fake.endpoint).fence(&call("u1", 3)).await.expect_err("bad fence answer");
        assert!(rejected_with(&e, "asked to fence u1 at 3"), "{e:?}");
    }

    // Inventory pages: a next token that repeats the one sent (a walk that never ends), a
    // negative fence (an epoch to stop under), an id with a newline.
    let item = |id: &str, fence: i64| json!({"id": id, "key": "k", "workspaceUid": "u1", "namespace": "ns", "name": "w", "state": "Running", "fence": fence});
    for (page, sent, says) in [
        (json!({"items": [item("i-1", 1)], "nextPageToken": "again"}), Some("again"), "repeats the token sent"),
        (json!({"items": [item("i-1", -3)]}), None, "negative fence -3"),
        (json!({"items": [item("i-1\nforged log line", 1)]}), None, "control characters"),
        (json!({"items": [item("i-1", 1), item("i-2", 1), item("i-3", 1)]}), None, "more than the limit 2"),
    ] {
        let body = page.to_string();
        let fake = Fake::start(move |_| Reply::Json(200, body.clone())).await;
        let e = driver(&fake.endpoint).list("hostile-test", sent, 2).await.expect_err(says);
        assert!(rejected_with(&e, says), "{says}: {e:?}");
    }

    // Health answers that do not serve v1, or are not "ok".
    for answer in [
        json!({"status": "ok", "provider": "p", "versions": ["v2"]}),
        json!({"status": "meh", "provider": "p", "versions": ["v1"]}),
    ] {
        let body = answer.to_string();
        let fake = Fake::start(move |_| Reply::Json(200, body.clone())).await;
        let e = driver(&fake.endpoint).health().await.expect_err("bad health");
        assert!(rejected_with(&e, "health answer"), "{e:?}");
    }

    // A redirect elsewhere is not followed: the token never reaches the other host.
    let elsewhere = Fake::start(|_| Reply::Json(200, health_ok())).await;
    let location = format!("{}/v1/health", elsewhere.endpoint);
    let redirecting = Fake::start(move |_| {
        Reply::Raw(format!("HTTP/1.1 307 X\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n").into_bytes())
    })
    .await;
    let e = driver(&redirecting.endpoint).health().await.expect_err("redirect");
    assert!(rejected_with(&e, "307"), "{e:?}");
    assert!(elsewhere.seen().is_empty(), "the redirect target was contacted: {:?}", elsewhere.seen());
}

// ---- the ComputeProvider side, on the real API server -----------------------------------------

fn provider_object(name: &str, spec: serde_json::Value) -> ComputeProvider {
    serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1", "kind": "ComputeProvider",
        "metadata": {"name": name}, "spec": spec
    }))
    .expect("provider")
}

async fn create_provider(client: &Client, name: &str, spec: serde_json::Value) -> ComputeProvider {
    Api::<ComputeProvider>::all(client.clone())
        .create(&PostParams::default(), &provider_object(name, spec))
        .await
        .expect("create provider")
}

fn http_spec(http: serde_json::Value) -> serde_json::Value {
    json!({"driver": "http", "callTimeoutSeconds": 5, "http": http})
}

/// Probes ComputeProvider `name` as the controller does and returns its recorded Ready
/// condition: (status, reason, message).
async fn probed(client: &Client, dispatcher: &Dispatcher, name: &str) -> (String, String, String) {
    let api: Api<ComputeProvider> = Api::all(client.clone());
    let current = api.get(name).await.expect("get provider");
    computeprovider::probe(&api, &current, dispatcher).await.expect("record the probe");
    let after = api.get(name).await.expect("get provider");
    let conditions = after.status.map(|s| s.conditions).unwrap_or_default();
    let ready = cond::get(&conditions, cond::READY).cloned().expect("a Ready condition");
    (ready.status, ready.reason, ready.message)
}

fn misconfigured(ready: &(String, String, String), needle: &str) {
    assert_eq!(
        (ready.0.as_str(), ready.1.as_str()),
        ("False", cond::ConditionReason::ProviderMisconfigured.as_str()),
        "{ready:?}"
    );
    assert!(ready.2.contains(needle), "{needle:?} not in {:?}", ready.2);
    assert!(!ready.2.contains(TOKEN), "the token in a condition: {:?}", ready.2);
}

/// A client of the test control plane, a fresh namespace, and a dispatcher on that client.
async fn setup(prefix: &str) -> (Client, String, Dispatcher) {
    let client = support::client().await;
    let ns = support::namespace(&client, prefix).await;
    let d = dispatcher(&client);
    (client, ns, d)
}

fn dispatcher(client: &Client) -> Dispatcher {
    Dispatcher::new(Clouds::new()).with_client(client.clone())
}

/// An address of this machine that is not loopback, if it has one.
fn non_loopback_ip() -> Option<IpAddr> {
    ["192.0.2.1:9", "10.255.255.255:9", "8.8.8.8:53"].into_iter().find_map(|target| {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        socket.connect(target).ok()?;
        let ip = socket.local_addr().ok()?.ip();
        (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
    })
}

async fn provider_token_secret(client: &Client, ns: &str, name: &str, token: &str) {
    put_secret(client, ns, name, json!({"token": token})).await;
}

/// 2a: the token goes over plain http only to loopback, or with `allowInsecureToken`.
#[tokio::test]
async fn the_token_never_travels_over_plain_http_to_a_remote_host() {
    let (client, ns, d) = setup("hostile-insecure").await;
    provider_token_secret(&client, &ns, "remote-token", TOKEN).await;
    let ip = non_loopback_ip();
    let fake = Fake::start_on(ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), |_| Reply::Json(200, health_ok())).await;
    // Without a non-loopback address, a TEST-NET one: nothing listens there, and nothing may be tried.
    let port = fake.endpoint.rsplit(':').next().unwrap_or("80").to_owned();
    let endpoint = match ip {
        Some(IpAddr::V6(ip)) => format!("http://[{ip}]:{port}"),
        Some(ip) => format!("http://{ip}:{port}"),
        None => "http://192.0.2.254:9".to_owned(),
    };
    let name = unique("insecure");
    let spec = http_spec(json!({"endpoint": endpoint, "secretRef": {"name": "remote-token", "namespace": ns}}));
    let p = create_provider(&client, &name, spec).await;

    let ready = probed(&client, &d, &name).await;
    misconfigured(&ready, "plain http");
    misconfigured(&ready, "allowInsecureToken");
    let e = d.provision(&p, &call("u1", 1), "u1.op1", None).await.expect_err("no provision over plain http");
    assert!(!e.is_retryable(), "{e:?}");
    assert!(fake.seen().is_empty(), "a request was made: {:?}", fake.seen());

    // The documented opt-in: the token is sent, and the provider is Ready.
    if ip.is_some() {
        let patch = json!({"spec": {"http": {"allowInsecureToken": true}}});
        Api::<ComputeProvider>::all(client.clone())
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("opt in");
        let ready = probed(&client, &d, &name).await;
        assert_eq!(
            (ready.0.as_str(), ready.1.as_str()),
            ("True", cond::ConditionReason::Healthy.as_str()),
            "{ready:?}"
        );
        let seen = fake.seen();
        assert!(
            !seen.is_empty()
                && seen.iter().all(|s| s.line.starts_with("GET /v1/health")
                    && s.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"))),
            "{seen:?}"
        );
    }

    // No token at all: plain http to a remote host is fine (there is nothing to leak).
    let open = unique("insecure-open");
    create_provider(&client, &open, http_spec(json!({"endpoint": endpoint}))).await;
    let ready = probed(&client, &d, &open).await;
    assert_ne!(ready.1, cond::ConditionReason::ProviderMisconfigured.as_str(), "{ready:?}");
}

/// 2b: only Secrets marked as provider tokens are read, and nothing is sent before.
#[tokio::test]
async fn only_secrets_marked_as_provider_tokens_are_sent() {
    let (client, ns, d) = setup("hostile-secret").await;
    let sim = Sim::start(&unique("marked")).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    // Any Secret of the namespace, e.g. a database password; here it even holds a valid token.
    let unmarked: Secret = serde_json::from_value(
        json!({"metadata": {"name": "db-password"}, "stringData": {"token": sim.process.token()}}),
    )
    .expect("secret");
    secrets.create(&PostParams::default(), &unmarked).await.expect("create Secret");
    let name = sim.name.clone();
    let p = http_provider(&client, &name, &sim, Some(secret_ref(&ns, "db-password"))).await;

    let ready = probed(&client, &d, &name).await;
    misconfigured(&ready, &format!("Secret {ns}/db-password is not marked as a provider credential"));
    misconfigured(&ready, &format!("label it {PROVIDER_TOKEN_LABEL}=true"));
    let e = d.provision(&p, &call("u1", 1), "u1.op1", None).await.expect_err("unmarked Secret");
    assert!(
        matches!(&e, DispatchError::Driver { source: DriverError::Rejected(m), .. } if m.contains("not marked as a provider credential"))
    );
    assert!(sim.ledger().await.is_empty(), "a call was made with an unmarked Secret's content");

    // Labelled as the message says: read, sent, Ready.
    let label = json!({"metadata": {"labels": {PROVIDER_TOKEN_LABEL: "true"}}});
    secrets.patch("db-password", &PatchParams::default(), &Patch::Merge(&label)).await.expect("label");
    let ready = probed(&client, &d, &name).await;
    assert_eq!((ready.0.as_str(), ready.1.as_str()), ("True", cond::ConditionReason::Healthy.as_str()), "{ready:?}");
    d.provision(&p, &call("u1", 1), "u1.op1", None).await.expect("provision with a labelled Secret");
    let ledger = sim.ledger().await;
    assert_eq!(ledger.iter().filter(|e| e.call == Call::Provision).count(), 1, "{ledger:?}");

    // The dedicated type works without the label.
    let typed: Secret =
        serde_json::from_value(json!({"metadata": {"name": "typed-token"}, "type": PROVIDER_TOKEN_TYPE,
        "stringData": {"token": sim.process.token()}}))
        .expect("secret");
    secrets.create(&PostParams::default(), &typed).await.expect("create typed Secret");
    let typed_name = unique("typed");
    http_provider(&client, &typed_name, &sim, Some(secret_ref(&ns, "typed-token"))).await;
    let ready = probed(&client, &d, &typed_name).await;
    assert_eq!((ready.0.as_str(), ready.1.as_str()), ("True", cond::ConditionReason::Healthy.as_str()), "{ready:?}");

    // Bound to the first provider only: the second may no longer use it, even with the token
    // already read (the cache is per provider), and nothing is sent.
    let bind = json!({"metadata": {"annotations": {CREDENTIAL_PROVIDERS_ANNOTATION: name}}});
    secrets.patch("typed-token", &PatchParams::default(), &Patch::Merge(&bind)).await.expect("bind");
    let fresh = dispatcher(&client);
    let before = sim.ledger().await.len();
    let typed_provider = Api::<ComputeProvider>::all(client.clone()).get(&typed_name).await.expect("provider");
    let e = fresh.provision(&typed_provider, &call("u2", 1), "u2.op1", None).await.expect_err("bound elsewhere");
    assert!(
        matches!(&e, DispatchError::Driver { source: DriverError::Rejected(m), .. } if m.contains("bound to the ComputeProviders")),
        "{e}"
    );
    assert_eq!(sim.ledger().await.len(), before, "no call with a Secret bound to another provider");
    let ready = probed(&client, &fresh, &typed_name).await;
    misconfigured(&ready, &format!("not to {typed_name:?}"));
}

/// A kubeconfig is a credential too: the kubernetes driver reads only a marked Secret (and, when
/// it names its providers, only for those), so that writing a ComputeProvider cannot make the
/// controller use any kubeconfig of the namespace.
#[tokio::test]
async fn only_marked_kubeconfig_secrets_are_used() {
    let (client, ns, d) = setup("hostile-kubeconfig").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let kubeconfig = std::fs::read_to_string(&support::control_plane().kubeconfig).expect("kubeconfig");
    let unmarked: Secret =
        serde_json::from_value(json!({"metadata": {"name": "admin"}, "stringData": {"value": kubeconfig}}))
            .expect("secret");
    secrets.create(&PostParams::default(), &unmarked).await.expect("create Secret");
    let name = unique("remote");
    let p = create_provider(
        &client,
        &name,
        json!({"driver": "kubernetes", "kubernetes": {"namespace": ns,
            "kubeconfigSecretRef": {"name": "admin", "namespace": ns, "key": "value"}}}),
    )
    .await;
    let ready = probed(&client, &d, &name).await;
    misconfigured(&ready, &format!("Secret {ns}/admin is not marked as a provider credential"));
    let e = d.provision(&p, &call("u1", 1), "u1.op1", None).await.expect_err("unmarked kubeconfig");
    assert!(
        matches!(&e, DispatchError::Driver { source: DriverError::Rejected(m), .. } if m.contains("not marked")),
        "{e}"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    assert!(pods.list(&Default::default()).await.expect("pods").items.is_empty(), "nothing was created");

    let bound_elsewhere = json!({"metadata": {"labels": {PROVIDER_TOKEN_LABEL: "true"},
        "annotations": {CREDENTIAL_PROVIDERS_ANNOTATION: "someone-else"}}});
    secrets.patch("admin", &PatchParams::default(), &Patch::Merge(&bound_elsewhere)).await.expect("label");
    misconfigured(&probed(&client, &d, &name).await, "bound to the ComputeProviders");
    let bound_here = json!({"metadata": {"annotations": {CREDENTIAL_PROVIDERS_ANNOTATION: name}}});
    secrets.patch("admin", &PatchParams::default(), &Patch::Merge(&bound_here)).await.expect("bind");
    let ready = probed(&client, &d, &name).await;
    assert_eq!((ready.0.as_str(), ready.1.as_str()), ("True", cond::ConditionReason::Healthy.as_str()), "{ready:?}");
}

/// 2c: what is wrong with the credentials or the TLS setup is ProviderMisconfigured, precisely.
#[tokio::test]
async fn credential_and_tls_problems_are_misconfigurations() {
    let (client, ns, d) = setup("hostile-creds").await;
    let sim = Sim::start(&unique("creds")).await;

    // An empty secretRef name does not even get past the API server.
    let empty = provider_object(
        &unique("empty-ref"),
        http_spec(json!({"endpoint": sim.process.endpoint(), "secretRef": {"name": "", "namespace": ns}})),
    );
    let refused = Api::<ComputeProvider>::all(client.clone()).create(&PostParams::default(), &empty).await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("secretRef.name")),
        "{refused:?}"
    );

    // A Secret that does not exist, and one without the key.
    put_secret(&client, &ns, "no-key", json!({"other": "x"})).await;
    for (secret, says) in [("absent", "does not exist"), ("no-key", "has no key \"token\"")] {
        let name = unique("creds");
        http_provider(&client, &name, &sim, Some(secret_ref(&ns, secret))).await;
        let ready = probed(&client, &d, &name).await;
        misconfigured(&ready, &format!("Secret {ns}/{secret}"));
        misconfigured(&ready, says);
    }
    assert!(sim.ledger().await.is_empty());

    // TLS: a certificate nobody vouches for, and a CA bundle that is not PEM.
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("cert");
    let tls = SimTls { cert_pem: cert.cert.pem(), key_pem: cert.signing_key.serialize_pem() };
    let dir = tempfile::tempdir().expect("temp dir");
    let tls_name = unique("tls");
    let options = ProviderSimOptions {
        tls: Some(tls),
        ..ProviderSimOptions::new(env!("CARGO_BIN_EXE_switchyard"), &tls_name, dir.path().join("tls"))
    };
    let tls_sim = ProviderSimProcess::start(options).await.expect("provider-sim with TLS");
    put_secret(&client, &ns, "tls-token", json!({"token": tls_sim.token()})).await;
    let secret = json!({"name": "tls-token", "namespace": ns});
    for (bundle, says) in [(None, "TLS certificate is not trusted"), (Some("not a certificate"), "CA bundle")] {
        let name = unique("tls");
        let mut http = json!({"endpoint": tls_sim.endpoint(), "secretRef": secret});
        if let Some(bundle) = bundle {
            http["caBundle"] = bundle.into();
        }
        let p = create_provider(&client, &name, http_spec(http)).await;
        let ready = probed(&client, &d, &name).await;
        misconfigured(&ready, says);
        let e = d.provision(&p, &call("u1", 1), "u1.op1", None).await.expect_err(says);
        assert!(!e.is_retryable(), "{e:?}");
    }
    // With its certificate as the bundle: Ready, as a control.
    let good = unique("tls-good");
    let settings = tls_sim.http_settings(Some(secret_ref(&ns, "tls-token")));
    create_provider(&client, &good, http_spec(json!(settings))).await;
    let ready = probed(&client, &d, &good).await;
    assert_eq!((ready.0.as_str(), ready.1.as_str()), ("True", cond::ConditionReason::Healthy.as_str()), "{ready:?}");
    assert!(tls_sim.ledger().await.expect("ledger").is_empty(), "no call went through an untrusted channel");

    // An answer past the cap, through the probe: ProviderMisconfigured, saying so.
    let huge = Fake::start(|_| Reply::Raw(b"HTTP/1.1 200 OK\r\ncontent-length: 800000000\r\n\r\n".to_vec())).await;
    let name = unique("huge");
    create_provider(&client, &name, http_spec(json!({"endpoint": huge.endpoint}))).await;
    let ready = probed(&client, &d, &name).await;
    misconfigured(&ready, "provider answer larger than 1 MiB");
}

/// 3: a provider being deleted is not Ready, and a workspace naming it is not placed there.
#[tokio::test]
async fn a_provider_being_deleted_gets_no_new_work() {
    let (client, ns, d) = setup("hostile-deleting").await;
    let sim = Sim::provider(&client, &ns, &unique("leaving")).await;
    let api: Api<ComputeProvider> = Api::all(client.clone());
    // Something (a GitOps tool, a cleanup controller) holds the deletion with a finalizer.
    let hold = json!({"metadata": {"finalizers": ["hostile-providers.test/hold"]}});
    api.patch(&sim.name, &PatchParams::default(), &Patch::Merge(&hold)).await.expect("finalizer");
    let ready = probed(&client, &d, &sim.name).await;
    assert_eq!((ready.0.as_str(), ready.1.as_str()), ("True", cond::ConditionReason::Healthy.as_str()), "{ready:?}");

    api.delete(&sim.name, &DeleteParams::default()).await.expect("delete provider");
    let ready = probed(&client, &d, &sim.name).await;
    assert_eq!(
        (ready.0.as_str(), ready.1.as_str()),
        ("False", cond::ConditionReason::ProviderDeleting.as_str()),
        "{ready:?}"
    );
    assert!(ready.2.contains("is being deleted") && ready.2.contains(&sim.name), "{ready:?}");

    // A new workspace naming it stalls before any claim; the provider sees no call.
    let instance = fixtures::Instance::start(&client, fixtures::settings(&unique("hostile"), &ns), &Clouds::new());
    let workspaces: Api<Workspace> = Api::namespaced(client.clone(), &ns);
    workspaces.create(&PostParams::default(), &fixtures::workspace("ws", &sim.name)).await.expect("create ws");
    let stalled =
        wait_for(&workspaces, "ws", "ws stalled on a provider being deleted", Duration::from_secs(60), |ws| {
            condition(ws, cond::STALLED).is_some_and(|(status, _)| status == "True")
        })
        .await;
    let st = fixtures::status(&stalled);
    let message = fixtures::stalled_message(&stalled);
    assert!(message.contains("being deleted"), "{message}");
    assert!(st.operation.is_none() && st.instance.is_none(), "{st:?}");
    assert!(
        sim.ledger().await.iter().all(|e| e.call != Call::Provision),
        "a provision reached a provider being deleted"
    );
    assert!(instance.is_running());
    instance.stop().await;

    let release = json!({"metadata": {"finalizers": null}});
    api.patch(&sim.name, &PatchParams::default(), &Patch::Merge(&release)).await.expect("release");
}

// ---- 4. Pods of the kubernetes driver under the restricted Pod Security profile ----------------

#[tokio::test]
async fn workspace_pods_are_admitted_where_restricted_is_enforced() {
    let client = support::client().await;
    let ns = support::namespace(&client, "hostile-restricted").await;
    let labels = json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}}});
    Api::<Namespace>::all(client.clone())
        .patch(&ns, &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .expect("label namespace");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

    // The control: the API server enforces the profile (a plain Pod is refused).
    let plain: Pod = serde_json::from_value(json!({"metadata": {"name": "plain"},
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}}))
    .expect("pod");
    let refused = pods.create(&PostParams::default(), &plain).await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("violates PodSecurity")),
        "the PodSecurity admission plugin must be active for this test to mean anything: {refused:?}"
    );

    let d = dispatcher(&client);
    for (name, run_as_user) in [("restricted", None), ("restricted-uid", Some(1000))] {
        let mut kubernetes = json!({"namespace": ns});
        if let Some(uid) = run_as_user {
            kubernetes["runAsUser"] = uid.into();
        }
        // A short call: on the bare control plane no Pod is ever scheduled, so the provision
        // answers that its Pod waits for a node once the Pod was admitted and created.
        let p =
            provider_object(name, json!({"driver": "kubernetes", "kubernetes": kubernetes, "callTimeoutSeconds": 2}));
        let uid = unique("pss");
        match d.provision(&p, &call(&uid, 1), &format!("{uid}.op1"), None).await {
            Ok(_) => assert!(support::control_plane().fuller, "{name}: a Pod ran on a cluster without nodes"),
            Err(DispatchError::Driver { source: DriverError::Transient(m), .. }) if m.contains("waits for a node") => {}
            Err(e) => panic!("{name}: the restricted profile refused the workspace Pod: {e}"),
        }
        let selector = format!("{LABEL_WORKSPACE_UID}={uid}");
        let [pod] =
            pods.list(&ListParams::default().labels(&selector)).await.expect("list").items.try_into().expect("one Pod");
        let spec = pod.spec.clone().expect("spec");
        assert_eq!(spec.security_context.and_then(|s| s.run_as_user), run_as_user, "{name}");
        d.stop(&p, &call(&uid, 1), &format!("{ns}/{}", pod.name_any())).await.expect("stop");
        assert!(pods.get_opt(&pod.name_any()).await.expect("get").is_none());
    }
    assert!(pods.list(&Default::default()).await.expect("list").items.iter().all(|p| p.name_any() != "plain"));
}
