//! GitOps tools read Workspaces as intended. Argo CD's health check
//! (deploy/gitops/argocd/switchyard.dev/Workspace/health.lua, run in Lua 5.1 with only the base
//! and table libraries, as Argo's gopher-lua sandbox runs it) and Flux's kstatus (the real
//! sigs.k8s.io/cli-utils library, built into target/testenv/bin/kstatus) classify every version
//! of a Workspace the controller writes: through a provision, a switch, a stall and a deletion.

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, PostParams};
use mlua::serde::SerializeOptions;
use mlua::{Lua, LuaOptions, LuaSerdeExt, StdLib, Table};
use serde::Deserialize;
use serde_json::Value;
use support::fixtures::*;
use support::scenario::{Scenario, Transport};
use support::*;
use switchyard::api::conditions as cond;
use switchyard::api::{OperationKind, Workspace};
use switchyard::provider::simulated::Faults;

const CONVERGE: Duration = Duration::from_secs(60);
const HEALTH_DIR: &str = "deploy/gitops/argocd/switchyard.dev/Workspace";
const ARGOCD_CM_SNIPPET: &str = "deploy/gitops/argocd/argocd-cm-snippet.yaml";
const ARGOCD_CM_KEY: &str = "resource.customizations.health.switchyard.dev_Workspace";

/// A health verdict: Argo CD's `{status, message}` or kstatus' `Result{Status, Message}`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
struct Verdict {
    status: String,
    #[serde(default)]
    message: String,
}

/// Argo CD's health_test.yaml.
#[derive(Deserialize)]
struct HealthTests {
    tests: Vec<HealthTest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthTest {
    input_path: String,
    health_status: Verdict,
}

fn health_dir() -> PathBuf {
    repo_root().join(HEALTH_DIR)
}

fn health_lua() -> String {
    std::fs::read_to_string(health_dir().join("health.lua")).expect("read health.lua")
}

fn health_tests() -> HealthTests {
    let text = std::fs::read_to_string(health_dir().join("health_test.yaml")).expect("read health_test.yaml");
    serde_saphyr::from_str(&text).expect("parse health_test.yaml")
}

fn test_case_object(input_path: &str) -> Value {
    let text = std::fs::read_to_string(health_dir().join(input_path)).expect("read test case object");
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{input_path}: {e}"))
}

/// Runs health.lua on `obj` as Argo CD does: `obj` a global, the script's return value the
/// verdict; a Lua 5.1 state with only the base and table libraries (Argo CD opens base, table,
/// package and a reduced os for custom checks; no string or math library).
fn argo_health(script: &str, obj: &Value) -> Verdict {
    let lua = Lua::new_with(StdLib::TABLE, LuaOptions::default()).expect("Lua state");
    // JSON null becomes nil and arrays plain tables, as Argo's decodeValue builds them.
    let options =
        SerializeOptions::new().serialize_none_to_null(false).serialize_unit_to_null(false).set_array_metatable(false);
    let value = lua.to_value_with(obj, options).expect("object to Lua");
    lua.globals().set("obj", value).expect("set obj");
    let hs: Table = lua.load(script).set_name("health.lua").eval().unwrap_or_else(|e| panic!("health.lua failed: {e}"));
    Verdict {
        status: hs.get::<String>("status").expect("health.lua returned no status"),
        message: hs.get::<Option<String>>("message").expect("message is a string").unwrap_or_default(),
    }
}

/// Runs the kstatus binary (sigs.k8s.io/cli-utils `status.Compute`) on each object.
fn kstatus(objects: &[Value]) -> Vec<Verdict> {
    let mut child = Command::new(testenv_bin("kstatus"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kstatus");
    let mut stdin = child.stdin.take().expect("stdin");
    let input: String = objects.iter().map(|o| format!("{o}\n")).collect();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("kstatus output");
    writer.join().expect("writer").expect("write to kstatus");
    assert!(out.status.success(), "kstatus failed: {}", stderr(&out));
    let verdicts: Vec<Verdict> =
        stdout(&out).lines().map(|l| serde_json::from_str(l).expect("kstatus prints JSON lines")).collect();
    assert_eq!(verdicts.len(), objects.len(), "one kstatus verdict per object");
    verdicts
}

/// The kstatus verdict a health.lua verdict corresponds to, as docs/gitops.md maps them.
fn kstatus_for(file: &str, argo: &Verdict) -> &'static str {
    match (file, argo.status.as_str()) {
        ("testdata/deleting.yaml", _) => "Terminating",
        // kstatus reads an object without status or conditions as Current; the API server never
        // serves one (see `a_new_workspace_is_in_progress_until_the_controller_reports`).
        ("testdata/progressing-no-status.yaml", _) => "Current",
        (_, "Healthy") => "Current",
        (_, "Degraded") => "Failed",
        (_, "Progressing") => "InProgress",
        (_, other) => panic!("{file}: unexpected Argo CD health {other}"),
    }
}

/// Argo CD's own test cases for the health check, in Argo's format.
#[test]
fn argocd_health_check_passes_its_test_cases() {
    let script = health_lua();
    let tests = health_tests();
    assert!(!tests.tests.is_empty(), "health_test.yaml lists no test");
    let mut failures = Vec::new();
    for t in &tests.tests {
        let obj = test_case_object(&t.input_path);
        // The fixtures are real Workspaces: they must still parse as the API types do.
        serde_json::from_value::<Workspace>(obj.clone())
            .unwrap_or_else(|e| panic!("{}: not a Workspace: {e}", t.input_path));
        let got = argo_health(&script, &obj);
        if got != t.health_status {
            failures.push(format!("{}: expected {:?}, got {got:?}", t.input_path, t.health_status));
        }
    }
    assert!(failures.is_empty(), "health.lua test cases failed:\n{}", failures.join("\n"));

    // Every object in testdata/ is a test case, and every status is one of the four below.
    let mut listed: Vec<String> = tests.tests.iter().map(|t| t.input_path.clone()).collect();
    let mut present: Vec<String> = std::fs::read_dir(health_dir().join("testdata"))
        .expect("testdata")
        .map(|e| format!("testdata/{}", e.expect("entry").file_name().to_string_lossy()))
        .collect();
    listed.sort();
    present.sort();
    assert_eq!(listed, present, "health_test.yaml must list exactly the files in testdata/");
    for status in ["Healthy", "Progressing", "Degraded"] {
        assert!(tests.tests.iter().any(|t| t.health_status.status == status), "no test case for {status}");
    }
}

/// The argocd-cm snippet installs the very script the tests run.
#[test]
fn argocd_cm_snippet_carries_health_lua_verbatim() {
    let text = std::fs::read_to_string(repo_root().join(ARGOCD_CM_SNIPPET)).expect("read snippet");
    let cm: Value = serde_saphyr::from_str(&text).expect("parse snippet");
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "argocd-cm");
    let script = cm["data"][ARGOCD_CM_KEY].as_str().unwrap_or_else(|| panic!("data.{ARGOCD_CM_KEY} missing"));
    assert_eq!(script, health_lua(), "{ARGOCD_CM_SNIPPET} must carry {HEALTH_DIR}/health.lua verbatim");
}

/// On every test case, Flux's kstatus and Argo CD's health check say the same thing, and
/// kstatus' message is the controller's own words.
#[test]
fn kstatus_agrees_with_the_health_check_on_its_test_cases() {
    let script = health_lua();
    let tests = health_tests();
    let objects: Vec<Value> = tests.tests.iter().map(|t| test_case_object(&t.input_path)).collect();
    let verdicts = kstatus(&objects);
    let mut failures = Vec::new();
    for ((t, obj), flux) in tests.tests.iter().zip(&objects).zip(&verdicts) {
        let argo = argo_health(&script, obj);
        let expected = kstatus_for(&t.input_path, &argo);
        if flux.status != expected {
            failures.push(format!("{}: Argo CD {argo:?}, kstatus {flux:?} (expected {expected})", t.input_path));
        }
        if flux.status == "Failed" {
            let stalled = &obj["status"]["conditions"].as_array().expect("conditions");
            let stalled = stalled.iter().find(|c| c["type"] == cond::STALLED).expect("Stalled");
            assert_eq!(flux.message, stalled["message"].as_str().unwrap_or_default(), "{}", t.input_path);
        }
    }
    assert!(failures.is_empty(), "kstatus and health.lua disagree:\n{}", failures.join("\n"));
}

/// What a version of a workspace means, from the controller's own fields — independently of
/// either tool's rules. Checked in this order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Meaning {
    /// metadata.deletionTimestamp is set: the finalizer is stopping the compute.
    Deleting,
    /// Created, and the controller has not written any status yet (the API server shows the
    /// CRD's default status, `observedGeneration: 0`).
    Unwritten { generation: i64 },
    /// The spec changed and the controller has not yet described the new generation.
    Lagging { generation: i64, observed: i64 },
    /// Stalled=True: needs a fix from outside.
    Stalled { reason: String, message: String },
    /// An operation is in flight, or the controller is otherwise reconciling (Ready=False).
    Working { reason: String, message: String },
    /// Ready=True, nothing in flight, the current generation described.
    Settled { message: String },
}

fn meaning(ws: &Workspace) -> Meaning {
    let s = status(ws);
    let described = |type_: &str| {
        let c = cond::get(&s.conditions, type_).unwrap_or_else(|| panic!("{}: {type_} missing", ws.name_any()));
        (c.reason.clone(), c.message.clone())
    };
    let generation = ws.metadata.generation.expect("generation");
    if ws.metadata.deletion_timestamp.is_some() {
        Meaning::Deleting
    } else if ws.status.is_none() || (s.conditions.is_empty() && s.phase.is_none()) {
        Meaning::Unwritten { generation }
    } else if s.observed_generation != Some(generation) {
        Meaning::Lagging { generation, observed: s.observed_generation.unwrap_or_default() }
    } else if cond::is_true(&s.conditions, cond::STALLED) {
        let (reason, message) = described(cond::STALLED);
        Meaning::Stalled { reason, message }
    } else if s.operation.is_some() || !cond::is_true(&s.conditions, cond::READY) {
        let (reason, message) =
            described(if cond::is_true(&s.conditions, cond::RECONCILING) { cond::RECONCILING } else { cond::READY });
        Meaning::Working { reason, message }
    } else {
        Meaning::Settled { message: described(cond::READY).1 }
    }
}

/// What Flux (kstatus) and Argo CD must say for a version that means `m`.
fn expected(m: &Meaning) -> (Verdict, Verdict) {
    let v = |status: &str, message: String| Verdict { status: status.to_string(), message };
    match m {
        Meaning::Deleting => {
            (v("Terminating", "Resource scheduled for deletion".into()), v("Progressing", "Pending deletion".into()))
        }
        // The defaulted status says generation 0 was observed: kstatus waits.
        Meaning::Unwritten { generation } => (
            v("InProgress", format!("Workspace generation is {generation}, but latest observed generation is 0")),
            v("Progressing", "Waiting for the controller to report status".into()),
        ),
        Meaning::Lagging { generation, observed } => (
            v(
                "InProgress",
                format!("Workspace generation is {generation}, but latest observed generation is {observed}"),
            ),
            v(
                "Progressing",
                format!(
                    "Waiting for the controller to observe generation {generation} (status describes generation {observed})"
                ),
            ),
        ),
        Meaning::Stalled { reason, message } => {
            (v("Failed", message.clone()), v("Degraded", format!("{reason}: {message}")))
        }
        Meaning::Working { reason, message } => {
            (v("InProgress", message.clone()), v("Progressing", format!("{reason}: {message}")))
        }
        Meaning::Settled { message } => (v("Current", "Resource is Ready".into()), v("Healthy", message.clone())),
    }
}

/// One observed version and what each tool made of it.
struct Reading {
    name: String,
    resource_version: String,
    meaning: Meaning,
    operation: Option<OperationKind>,
    flux: Verdict,
    argo: Verdict,
}

/// Classifies every version with both tools; panics with the whole history on any verdict that
/// differs from the version's meaning.
fn read_all(versions: &[Workspace]) -> Vec<Reading> {
    let script = health_lua();
    let objects: Vec<Value> = versions.iter().map(|ws| serde_json::to_value(ws).expect("workspace JSON")).collect();
    let flux = kstatus(&objects);
    let readings: Vec<Reading> = versions
        .iter()
        .zip(&objects)
        .zip(flux)
        .map(|((ws, obj), flux)| Reading {
            name: ws.name_any(),
            resource_version: ws.resource_version().unwrap_or_default(),
            meaning: meaning(ws),
            operation: status(ws).operation.map(|o| o.kind),
            flux,
            argo: argo_health(&script, obj),
        })
        .collect();
    let mut wrong = Vec::new();
    let mut history = Vec::new();
    for r in &readings {
        let (flux, argo) = expected(&r.meaning);
        // Argo CD's deletion message carries the controller's words after "Pending deletion".
        let argo_ok = if r.meaning == Meaning::Deleting {
            r.argo.status == argo.status && r.argo.message.starts_with(&argo.message)
        } else {
            r.argo == argo
        };
        let line = format!(
            "{} rv={} {:?} op={:?}: kstatus {} {:?} | argo {} {:?}",
            r.name,
            r.resource_version,
            r.meaning,
            r.operation,
            r.flux.status,
            r.flux.message,
            r.argo.status,
            r.argo.message
        );
        if r.flux != flux || !argo_ok {
            wrong.push(format!("{line}\n    expected kstatus {flux:?}, argo {argo:?}"));
        }
        history.push(line);
    }
    assert!(
        wrong.is_empty(),
        "verdicts differ from the controller's status:\n{}\nall versions:\n{}",
        wrong.join("\n"),
        history.join("\n")
    );
    eprintln!("{}", history.join("\n"));
    readings
}

fn count(readings: &[Reading], name: &str, pred: impl Fn(&Reading) -> bool) -> usize {
    readings.iter().filter(|r| r.name == name && pred(r)).count()
}

/// Provision, switch and delete one workspace, with providers slow enough (over 300ms per call)
/// that every step is a version of its own. Every version reads as it means to both tools;
/// `kubectl wait --for=condition=Ready` returns only once the switch is complete.
#[tokio::test]
async fn flux_and_argo_follow_a_workspace_through_a_switch_and_a_deletion() {
    let Scenario { client, ns, a, b, clouds, api, .. } = Scenario::new(Transport::InProcess, "gitops-switch").await;
    for provider in [&a, &b] {
        clouds.cloud(provider).set_faults(Faults { extra_latency: Duration::from_millis(300), ..Faults::default() });
    }
    let mut versions = Versions::start(api.clone(), Default::default()).await;
    let _ctl = Instance::start(&client, settings("gitops-1", &ns), &clouds);

    api.create(&PostParams::default(), &workspace("ws", &a)).await.expect("create");
    wait_ready_on(&api, "ws", &a, CONVERGE).await;

    switch_with_kubectl(&ns, "ws", &b);
    // kubectl wait honours the Ready condition's observedGeneration: it does not return on the
    // stale Ready=True of the old generation, only once the switch has finished.
    // (On a blocking thread: the in-process controller shares this test's runtime.)
    let wait_ns = ns.clone();
    let out = tokio::task::spawn_blocking(move || {
        kubectl(&["wait", "--for=condition=Ready", "workspace/ws", "-n", &wait_ns, "--timeout=60s"])
    })
    .await
    .expect("kubectl wait");
    let ws = api.get("ws").await.expect("get");
    assert!(out.status.success(), "kubectl wait failed: {}; status: {:?}", stderr(&out), ws.status);
    assert!(ws.settled_on(&b), "kubectl wait returned before the switch finished: {:?}", ws.status);

    let out = kubectl(&["delete", "workspace", "ws", "-n", &ns, "--wait=false"]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually("workspace gone", CONVERGE, || async {
        api.get_opt("ws").await.ok().and_then(|o| o.is_none().then_some(()))
    })
    .await;
    // Every version up to the deletion, which the watch may deliver after the read above.
    let readings = read_all(&versions.until_deleted(CONVERGE, "ws").await);

    // The history covers each state, so each verdict above was actually exercised.
    let is = |kind| move |r: &Reading| r.operation == Some(kind);
    assert!(count(&readings, "ws", is(OperationKind::Provision)) > 0, "no version with the provision in flight");
    assert!(count(&readings, "ws", is(OperationKind::Switch)) > 0, "no version with the switch in flight");
    assert!(
        count(&readings, "ws", |r| matches!(r.meaning, Meaning::Lagging { .. })) > 0,
        "no version with observedGeneration behind"
    );
    let deleting = |r: &Reading| r.meaning == Meaning::Deleting && r.operation == Some(OperationKind::Delete);
    assert!(count(&readings, "ws", deleting) > 0, "no version with the finalizer stopping the compute");
    let switched = readings.iter().position(|r| r.operation == Some(OperationKind::Switch)).expect("switch");
    let settled_after_switch = readings[switched..].iter().find(|r| matches!(r.meaning, Meaning::Settled { .. }));
    let settled_after_switch = settled_after_switch.expect("a settled version after the switch");
    assert_eq!(settled_after_switch.flux.status, "Current");
    assert_eq!(settled_after_switch.argo.status, "Healthy");
    assert!(settled_after_switch.argo.message.contains(&format!("running on {b}")), "{:?}", settled_after_switch.argo);
    // Current only ever means settled, from the first version on.
    for r in &readings {
        if r.flux.status == "Current" {
            assert!(matches!(r.meaning, Meaning::Settled { .. }), "Current while {:?}", r.meaning);
        }
    }
}

/// A workspace on a provider that does not exist is Failed to kstatus and Degraded to Argo CD,
/// with the controller's reason and message; fixing the name brings both back to healthy.
#[tokio::test]
async fn flux_fails_and_argo_degrades_a_stalled_workspace() {
    let Scenario { client, ns, a, clouds, api, .. } = Scenario::new(Transport::InProcess, "gitops-stalled").await;
    clouds.cloud(&a).set_faults(Faults { extra_latency: Duration::from_millis(100), ..Faults::default() });
    let mut versions = Versions::start(api.clone(), Default::default()).await;
    let _ctl = Instance::start(&client, settings("gitops-2", &ns), &clouds);

    api.create(&PostParams::default(), &workspace("lost", "no-such-cloud")).await.expect("create");
    wait_stalled(&api, "lost", cond::ConditionReason::ProviderNotFound, CONVERGE).await;
    switch_with_kubectl(&ns, "lost", &a);
    let ready = wait_ready_on(&api, "lost", &a, CONVERGE).await;
    let readings = read_all(&versions.until(CONVERGE, |ws| ws.resource_version() == ready.resource_version()).await);

    let failed: Vec<&Reading> = readings.iter().filter(|r| r.flux.status == "Failed").collect();
    assert!(!failed.is_empty(), "kstatus never reported Failed");
    for r in &failed {
        assert_eq!(r.argo.status, "Degraded");
        assert_eq!(r.flux.message, "ComputeProvider \"no-such-cloud\" does not exist");
        assert_eq!(r.argo.message, format!("{}: {}", cond::ConditionReason::ProviderNotFound.as_str(), r.flux.message));
    }
    let last = readings.last().expect("versions");
    assert_eq!(
        (last.flux.status.as_str(), last.argo.status.as_str()),
        ("Current", "Healthy"),
        "recovered: {:?}",
        last.meaning
    );
}

/// kstatus reads an object without status as Current. The CRD defaults a Workspace's status
/// to `observedGeneration: 0`, so from its creation until the controller's first status write
/// (or while no controller runs) kstatus says InProgress, like Argo CD's health check, and
/// `kubectl wait` keeps waiting.
#[tokio::test]
async fn a_new_workspace_is_in_progress_until_the_controller_reports() {
    let client = client().await;
    let ns = namespace(&client, "gitops-unwritten").await;
    let api: Api<Workspace> = Api::namespaced(client.clone(), &ns);
    // No controller runs in this namespace: the workspace stays as created.
    let ws = api.create(&PostParams::default(), &workspace("new", "aws")).await.expect("create");
    assert_eq!(ws.status.as_ref().and_then(|s| s.observed_generation), Some(0), "defaulted status: {:?}", ws.status);
    let read = api.get("new").await.expect("get");
    assert_eq!(read.status, ws.status, "the default is there on every read");
    let obj = serde_json::to_value(&read).expect("JSON");
    let flux = kstatus(std::slice::from_ref(&obj)).remove(0);
    let argo = argo_health(&health_lua(), &obj);
    assert_eq!(flux.status, "InProgress", "kstatus: {flux:?}");
    assert_eq!(flux.message, "Workspace generation is 1, but latest observed generation is 0");
    assert_eq!(argo.status, "Progressing", "health.lua: {argo:?}");
    let out = kubectl(&["wait", "--for=condition=Ready", "workspace/new", "-n", &ns, "--timeout=1s"]);
    assert!(!out.status.success(), "kubectl wait must not accept a workspace without status");
    // Without the default (an object from elsewhere, e.g. a dry run), kstatus has no rule and
    // says Current: the gap the default closes.
    let mut bare = obj.clone();
    if let Some(o) = bare.as_object_mut() {
        o.remove("status");
    }
    assert_eq!(kstatus(std::slice::from_ref(&bare)).remove(0).status, "Current");
}
