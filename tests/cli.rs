//! `switchyard switch` and `switchyard status` as users run them: the real binary (and the real
//! kubectl, with the binary as its plugin) against the test control plane, with an in-process
//! controller reconciling the test's namespace.

mod support;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use support::fixtures::*;
use support::*;
use switchyard::api::conditions as cond;
use switchyard::api::{Workspace, WorkspaceStatus};
use switchyard::provider::simulated::Clouds;
use switchyard::tools::process::{Signal, signal_child};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const CONVERGE: Duration = Duration::from_secs(60);
/// Upper bound for one run of the binary (every `--wait` below has a shorter --timeout).
const RUN: Duration = Duration::from_secs(120);

/// The binary, with `KUBECONFIG` pointing at the test control plane.
fn switchyard_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.args(args).env("KUBECONFIG", &control_plane().kubeconfig).env_remove("RUST_LOG");
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

async fn output(mut cmd: Command) -> Output {
    tokio::time::timeout(RUN, cmd.output()).await.expect("the command finished in time").expect("run the command")
}

async fn switchyard(args: &[&str]) -> Output {
    output(switchyard_command(args)).await
}

/// Exit code, stdout and stderr, for assertion messages.
fn shown(out: &Output) -> String {
    format!("exit {:?}\n--- stdout\n{}--- stderr\n{}", out.status.code(), stdout(out), stderr(out))
}

/// A namespace with providers `a` and `b` and workspace ws-1 on `a`: Ready there when a
/// controller runs.
struct Setup {
    ns: String,
    api: Api<Workspace>,
    a: String,
    b: String,
    _controller: Option<Instance>,
}

async fn setup(prefix: &str, controller: bool) -> Setup {
    let client = client().await;
    let ns = namespace(&client, prefix).await;
    let (a, b) = (unique("a"), unique("b"));
    // Latencies long enough that every step is a separate version a watch can see.
    simulated_provider(&client, &a, 200, 300).await;
    simulated_provider(&client, &b, 300, 200).await;
    let api: Api<Workspace> = Api::namespaced(client.clone(), &ns);
    let controller =
        controller.then(|| Instance::start(&client, settings(&format!("{prefix}-ctl"), &ns), &Clouds::new()));
    api.create(&PostParams::default(), &workspace("ws-1", &a)).await.expect("create ws-1");
    if controller.is_some() {
        wait_ready_on(&api, "ws-1", &a, CONVERGE).await;
    }
    Setup { ns, api, a, b, _controller: controller }
}

/// Asserts that `needles` occur in `text` in this order.
fn assert_in_order(text: &str, needles: &[&str]) {
    let mut from = 0;
    for needle in needles {
        match text[from..].find(needle) {
            Some(at) => from += at + needle.len(),
            None => panic!("{needle:?} missing (or out of order) after byte {from} in:\n{text}"),
        }
    }
}

#[tokio::test]
async fn switch_wait_shows_each_step_until_ready_on_the_new_provider() {
    let s = setup("cli-switch", true).await;
    let out = switchyard(&["switch", "ws-1", "--to", &s.b, "--wait", "--timeout", "60s", "-n", &s.ns]).await;
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let text = stdout(&out);
    eprintln!("switch --wait:\n{text}");
    assert_in_order(
        &text,
        &[
            &format!("switching {}/ws-1 from {} to {} (generation 2)", s.ns, s.a, s.b),
            "claimed by cli-switch-ctl (epoch 2): stopping the compute on ",
            &format!("old compute stopped on {}; active provider is now {}", s.a, s.b),
            &format!("provisioning on {}", s.b),
            &format!("Ready on {} (instance ", s.b),
        ],
    );
    // One line per transition, each with the elapsed time.
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines.iter().all(|l| l.starts_with('[') && l.contains("s] ")), "{text}");
    let ws = s.api.get("ws-1").await.expect("get ws-1");
    assert!(ws.settled_on(&s.b), "the command returned before the workspace was Ready on {}", s.b);

    // Again: a no-op that says so and does not touch the object.
    let version = ws.metadata.resource_version.clone();
    let again = switchyard(&["switch", "ws-1", "--to", &s.b, "--wait", "-n", &s.ns]).await;
    assert_eq!(again.status.code(), Some(0), "{}", shown(&again));
    assert!(
        stdout(&again).contains(&format!("workspace ws-1 is already on {}; nothing to switch", s.b)),
        "{}",
        shown(&again)
    );
    let unchanged = s.api.get("ws-1").await.expect("get ws-1");
    assert_eq!(unchanged.metadata.resource_version, version, "a no-op switch wrote the object");
}

#[tokio::test]
async fn switch_without_wait_patches_the_spec_only() {
    let s = setup("cli-nowait", false).await;
    let out = switchyard(&["switch", "ws-1", "--to", &s.b, "-n", &s.ns]).await;
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert!(stdout(&out).contains(&format!("spec.provider set to {} (was {})", s.b, s.a)), "{}", shown(&out));
    let ws = s.api.get("ws-1").await.expect("get ws-1");
    assert_eq!(ws.spec.provider, s.b);
    // No controller runs here: the status is still the CRD's default.
    assert_eq!(ws.status, Some(WorkspaceStatus { observed_generation: Some(0), ..Default::default() }));
    let fields = ws.metadata.managed_fields.unwrap_or_default();
    let cli: Vec<_> = fields.iter().filter(|f| f.manager.as_deref() == Some("switchyard-cli")).collect();
    assert!(!cli.is_empty(), "patched by the switchyard-cli manager");
    assert!(cli.iter().all(|f| f.subresource.is_none()), "the CLI must never write status: {cli:?}");
}

#[tokio::test]
async fn status_shows_a_table_and_one_workspace_in_detail() {
    let s = setup("cli-status", true).await;
    let missing = unique("nope");
    s.api.create(&PostParams::default(), &workspace("ws-2", &missing)).await.expect("create ws-2");
    wait_stalled(&s.api, "ws-2", cond::ConditionReason::ProviderNotFound, CONVERGE).await;

    let out = switchyard(&["status", "-n", &s.ns]).await;
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let text = stdout(&out);
    eprintln!("status:\n{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let words = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>();
    assert_eq!(words(0), ["NAME", "PROVIDER", "ACTIVE", "PHASE", "READY", "STEP", "LAST", "ERROR", "/", "REASON"]);
    assert_eq!(words(1), ["ws-1", &s.a, &s.a, "Running", "True", "-", "Running"]);
    assert_eq!(words(2)[..6], ["ws-2", &missing, &missing, "Failed", "False", "-"], "{text}");
    assert!(lines[2].contains(&format!("ProviderNotFound: ComputeProvider {missing:?}")), "{text}");

    let out = switchyard(&["status", "ws-2", "-n", &s.ns]).await;
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let text = stdout(&out);
    eprintln!("status ws-2:\n{text}");
    assert!(text.contains(&format!("Provider:     {missing} (spec)")), "{text}");
    assert!(text.contains("Operation:    none"), "{text}");
    let stalled = text.lines().find(|l| l.trim_start().starts_with("Stalled ")).unwrap_or_default();
    assert_eq!(
        stalled.split_whitespace().take(3).collect::<Vec<_>>(),
        ["Stalled", "True", "ProviderNotFound"],
        "{text}"
    );
    assert!(stalled.ends_with(&format!("ComputeProvider {missing:?} does not exist")), "{text}");
    let out = switchyard(&["status", "ws-1", "-n", &s.ns]).await;
    assert!(stdout(&out).contains(&format!("Instance:     i-{}-", s.a)), "{}", shown(&out));

    // -A adds the namespace column and finds both.
    let out = switchyard(&["status", "-A"]).await;
    let text = stdout(&out);
    assert!(text.starts_with("NAMESPACE "), "{text}");
    let ours: Vec<&str> = text.lines().filter(|l| l.starts_with(&format!("{} ", s.ns))).collect();
    assert_eq!(ours.len(), 2, "{text}");
}

#[tokio::test]
async fn the_namespace_defaults_to_the_kubeconfig_context() {
    let s = setup("cli-ctxns", false).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::copy(&control_plane().kubeconfig, &kubeconfig).expect("copy kubeconfig");
    let path = kubeconfig.to_str().expect("utf-8 path");
    let out = kubectl(&["config", "set-context", "--current", "--namespace", &s.ns, "--kubeconfig", path]);
    assert!(out.status.success(), "{}", stderr(&out));

    let mut cmd = switchyard_command(&["status"]);
    cmd.env("KUBECONFIG", &kubeconfig);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert!(stdout(&out).lines().any(|l| l.starts_with("ws-1 ")), "{}", shown(&out));
    // -n overrides the context's namespace.
    let mut cmd = switchyard_command(&["status", "ws-1", "-n", "default"]);
    cmd.env("KUBECONFIG", &kubeconfig);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
}

#[tokio::test]
async fn a_missing_workspace_or_bad_usage_exits_2() {
    let s = setup("cli-missing", false).await;
    let expected = format!(r#"error: workspace "nope" not found in namespace "{}""#, s.ns);
    for args in [
        vec!["switch", "nope", "--to", &s.b, "-n", &s.ns],
        vec!["switch", "nope", "--to", &s.b, "--wait", "-n", &s.ns],
        vec!["status", "nope", "-n", &s.ns],
    ] {
        let out = switchyard(&args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", shown(&out));
        assert_eq!(stderr(&out).trim(), expected, "{args:?}");
    }
    for args in [vec!["switch", "ws-1", "-n", &s.ns], vec!["switch", "ws-1", "--to", "Not_A_Name", "-n", &s.ns]] {
        let out = switchyard(&args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", shown(&out));
    }
    let ws = s.api.get("ws-1").await.expect("get ws-1");
    assert_eq!(ws.spec.provider, s.a, "a rejected command changed nothing");
}

#[tokio::test]
async fn a_switch_no_controller_finishes_times_out_with_exit_3() {
    let s = setup("cli-timeout", false).await;
    let started = Instant::now();
    let out = switchyard(&["switch", "ws-1", "--to", &s.b, "--wait", "--timeout", "1s", "-n", &s.ns]).await;
    assert_eq!(out.status.code(), Some(3), "{}", shown(&out));
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    let err = stderr(&out);
    assert!(err.contains(&format!("error: timed out after 1.0s waiting for ws-1 to be Ready on {}", s.b)), "{err}");
    assert!(err.contains("is the switchyard controller running?"), "{err}");
    assert!(err.contains(&format!("switchyard status ws-1 -n {}", s.ns)), "{err}");
    // The switch itself was requested and stays requested.
    assert_eq!(s.api.get("ws-1").await.expect("get ws-1").spec.provider, s.b);
}

#[tokio::test]
async fn a_switch_to_an_unknown_provider_warns_and_fails_with_provider_not_found() {
    let s = setup("cli-unknown", true).await;
    let missing = unique("nope");
    let out = switchyard(&["switch", "ws-1", "--to", &missing, "--wait", "--timeout", "60s", "-n", &s.ns]).await;
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let err = stderr(&out);
    assert_in_order(
        &err,
        &[
            &format!("warning: ComputeProvider {missing:?} does not exist"),
            &format!("error: workspace ws-1 is stalled (ProviderNotFound): ComputeProvider {missing:?} does not exist"),
            &format!("to go back: switchyard switch ws-1 --to {}", s.a),
        ],
    );
    assert!(stdout(&out).contains("Stalled (ProviderNotFound)"), "{}", shown(&out));
    // Nothing was stopped: the workspace still runs on a.
    let ws = s.api.get("ws-1").await.expect("get ws-1");
    assert_eq!(status(&ws).instance.map(|i| i.provider), Some(s.a.clone()));
}

#[tokio::test]
async fn ctrl_c_while_waiting_exits_130() {
    let s = setup("cli-sigint", false).await;
    let mut cmd = switchyard_command(&["switch", "ws-1", "--to", &s.b, "--wait", "--timeout", "90s", "-n", &s.ns]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start switchyard");
    let pid = child.id().expect("pid");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(RUN, lines.next_line()).await.expect("first line in time").expect("read stdout");
    assert!(first.as_deref().is_some_and(|l| l.contains("switching")), "{first:?}");
    let sent = signal_child(&child, Signal::INT);
    assert!(sent.is_ok(), "kill -INT {pid}: {sent:?}");
    let out = tokio::time::timeout(RUN, child.wait_with_output()).await.expect("exits in time").expect("wait");
    assert_eq!(out.status.code(), Some(130), "{}", shown(&out));
    assert!(
        stderr(&out).contains("error: interrupted; stopped waiting; the switch goes on in the cluster"),
        "{}",
        shown(&out)
    );
}

#[tokio::test]
async fn kubectl_runs_the_binary_as_its_switchyard_plugin() {
    let s = setup("cli-plugin", false).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let plugin = dir.path().join("kubectl-switchyard");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_switchyard"), &plugin).expect("symlink the plugin");
    let kubectl = |args: &[&str]| {
        let mut cmd = Command::new(testenv_bin("kubectl"));
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(std::iter::once(dir.path().to_path_buf()).chain(std::env::split_paths(&path)))
            .expect("PATH");
        cmd.args(args).env("PATH", path).env("KUBECONFIG", &control_plane().kubeconfig);
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        output(cmd)
    };

    let out = kubectl(&["switchyard", "status", "-n", &s.ns]).await;
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let text = stdout(&out);
    assert!(text.starts_with("NAME "), "{text}");
    assert_eq!(text.lines().nth(1).map(|l| l.split_whitespace().take(2).collect::<Vec<_>>()), Some(vec!["ws-1", &s.a]));

    let out = kubectl(&["switchyard", "switch", "--help"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert!(stdout(&out).contains("Usage: kubectl switchyard switch"), "{}", shown(&out));

    // Exit codes come through kubectl unchanged.
    let out = kubectl(&["switchyard", "status", "nope", "-n", &s.ns]).await;
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));

    let out = kubectl(&["plugin", "list"]).await;
    assert!(stdout(&out).contains(&*plugin.to_string_lossy()), "{}", shown(&out));
    assert!(Path::new(&plugin).exists());
}

/// `source <(switchyard completion bash)` completes subcommands, flags and values in a real bash.
#[test]
fn bash_completion_completes_commands_flags_and_values() {
    let script = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["completion", "bash"])
        .output()
        .expect("run switchyard completion bash");
    assert!(script.status.success(), "{}", shown(&script));
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("switchyard.bash");
    std::fs::write(&path, &script.stdout).expect("write the script");
    // What bash sets before it calls a completion function, for the words typed so far.
    let complete = |words: &[&str]| {
        let words: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let probe = format!(
            "source {}; complete -p switchyard >/dev/null || exit 9; COMP_WORDS=({}); COMP_CWORD={}; \
             _switchyard switchyard \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            path.display(),
            words.join(" "),
            words.len() - 1
        );
        let out = std::process::Command::new("bash").args(["--norc", "-c", &probe]).output().expect("run bash");
        assert!(out.status.success(), "{}", shown(&out));
        stdout(&out).lines().map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(complete(&["switchyard", "sw"]), ["switch"]);
    assert_eq!(complete(&["switchyard", "controller", "--claim"]), ["--claim-lease"]);
    let shells = complete(&["switchyard", "completion", ""]);
    for shell in ["bash", "zsh", "fish"] {
        assert!(shells.iter().any(|s| s == shell), "{shells:?}");
    }
}
