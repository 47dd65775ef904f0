//! The API primitives the switch protocol rests on, proven against the real kube-apiserver.

mod support;

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use support::*;
use switchyard::api::{Workspace, crds_yaml};

fn workspace(name: &str, provider: &str) -> Workspace {
    Workspace::builder(name, provider).busybox().build()
}

/// A fresh namespace holding workspace `name` (on provider aws): its API, the namespace, and the
/// workspace as created.
async fn with_workspace(prefix: &str, name: &str) -> (Api<Workspace>, String, Workspace) {
    let client = client().await;
    let ns = namespace(&client, prefix).await;
    let api: Api<Workspace> = Api::namespaced(client, &ns);
    let created = api.create(&PostParams::default(), &workspace(name, "aws")).await.expect("create");
    (api, ns, created)
}

/// [`with_workspace`], its status.epoch raised to 5.
async fn with_epoch_5(prefix: &str, name: &str) -> (Api<Workspace>, String) {
    let (api, ns, _) = with_workspace(prefix, name).await;
    let raise = Patch::Merge(json!({"status": {"epoch": 5}}));
    api.patch_status(name, &PatchParams::default(), &raise).await.expect("raise epoch");
    (api, ns)
}

#[test]
fn committed_crds_match_the_rust_types() {
    let committed = std::fs::read_to_string(repo_root().join("crds/switchyard.dev.yaml")).expect("read crds/");
    let generated = crds_yaml().expect("render CRDs");
    assert!(committed == generated, "crds/ is out of date with src/api: run `make crds`");
}

#[tokio::test]
async fn status_merge_patch_with_stale_resource_version_is_refused() {
    let (api, _, created) = with_workspace("api-rv", "ws-rv").await;
    let stale_rv = created.metadata.resource_version.clone().expect("rv");

    // Someone else writes first: the resourceVersion we hold is now stale.
    let first = api
        .patch_status("ws-rv", &PatchParams::default(), &Patch::Merge(json!({"status": {"epoch": 1}})))
        .await
        .expect("first status write");

    let stale = json!({"metadata": {"resourceVersion": stale_rv}, "status": {"epoch": 2, "activeProvider": "aws"}});
    let err = api
        .patch_status("ws-rv", &PatchParams::default(), &Patch::Merge(stale))
        .await
        .expect_err("stale write must be refused");
    match err {
        kube::Error::Api(s) => assert_eq!(s.code, 409, "expected Conflict, got {s:?}"),
        other => panic!("expected 409, got {other:?}"),
    }
    let after = api.get_status("ws-rv").await.expect("get");
    assert_eq!(after.metadata.resource_version, first.metadata.resource_version, "a refused write changed the object");
    let status = after.status.expect("status");
    assert_eq!(status.epoch, 1);
    assert_eq!(status.active_provider, None);

    let current = json!({"metadata": {"resourceVersion": first.metadata.resource_version}, "status": {"epoch": 2}});
    let ok = api
        .patch_status("ws-rv", &PatchParams::default(), &Patch::Merge(current))
        .await
        .expect("write with the current resourceVersion");
    assert_eq!(ok.status.expect("status").epoch, 2);
}

#[tokio::test]
async fn status_writes_leave_generation_and_spec_writes_bump_it() {
    let (api, _, created) = with_workspace("api-gen", "ws-gen").await;
    let generation = created.metadata.generation.expect("generation");

    let after_status = api
        .patch_status("ws-gen", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Pending"}})))
        .await
        .expect("status write");
    assert_eq!(after_status.metadata.generation, Some(generation));

    // A status field sent to the main resource is ignored: the controller cannot touch spec by accident.
    let after_spec = api
        .patch(
            "ws-gen",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"provider": "gcp"}, "status": {"phase": "Running"}})),
        )
        .await
        .expect("spec write");
    assert_eq!(after_spec.metadata.generation, Some(generation + 1));
    assert_eq!(after_spec.status.and_then(|s| s.phase), Some(switchyard::api::Phase::Pending));
}

#[tokio::test]
async fn status_epoch_never_decreases() {
    let (api, _) = with_epoch_5("api-epoch", "ws-epoch").await;
    let err = api
        .patch_status("ws-epoch", &PatchParams::default(), &Patch::Merge(json!({"status": {"epoch": 4}})))
        .await
        .expect_err("a lower epoch must be refused");
    assert!(err.to_string().contains("status.epoch must never decrease"), "unexpected error: {err}");
}

/// Applies `manifest` with kubectl and returns its error output, asserting it failed.
fn rejected(manifest: &str) -> String {
    let out = kubectl_stdin(&["apply", "-f", "-"], manifest);
    assert!(!out.status.success(), "expected rejection, kubectl said: {}", stdout(&out));
    stderr(&out)
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_a_clear_message() {
    let client = client().await;
    let ns = namespace(&client, "api-invalid").await;
    let ws = |spec: &str| {
        format!(
            "apiVersion: switchyard.dev/v1alpha1\nkind: Workspace\nmetadata:\n  name: bad\n  namespace: {ns}\nspec:\n{spec}"
        )
    };
    let provider = |spec: &str| {
        format!(
            "apiVersion: switchyard.dev/v1alpha1\nkind: ComputeProvider\nmetadata:\n  name: bad-{ns}\nspec:\n{spec}"
        )
    };
    let one_of_http = "spec.http must be set exactly when driver is http";
    // (what is wrong, the manifest, what the refusal must say)
    let cases = [
        ("bad provider name", ws("  provider: GCP_1\n"), vec!["spec.provider", "should match"]),
        ("missing provider", ws("  running: true\n"), vec!["spec.provider: Required value"]),
        ("unknown field", ws("  provider: aws\n  colour: blue\n"), vec!["unknown field \"spec.colour\""]),
        (
            "bad size",
            ws("  provider: aws\n  template:\n    size: huge\n"),
            vec!["spec.template.size", "Unsupported value"],
        ),
        (
            "CEL on template",
            ws("  provider: aws\n  template:\n    args: [\"--fast\"]\n"),
            vec!["template.args requires template.image"],
        ),
        ("CEL on provider", provider("  driver: http\n"), vec![one_of_http]),
        ("CEL on provider", provider("  driver: simulated\n  http:\n    endpoint: https://x\n"), vec![one_of_http]),
        ("bad driver", provider("  driver: ftp\n"), vec!["spec.driver", "Unsupported value"]),
    ];
    for (what, manifest, says) in cases {
        let msg = rejected(&manifest);
        assert!(says.iter().all(|s| msg.contains(s)), "{what}: the refusal should say {says:?}: {msg}");
    }

    // Nothing of the rejected objects was stored.
    let api: Api<Workspace> = Api::namespaced(client, &ns);
    assert!(api.get_opt("bad").await.expect("get").is_none());
}

#[tokio::test]
async fn kubectl_works_as_users_expect() {
    let (api, ns, _) = with_workspace("api-kubectl", "ws-1").await;
    api.patch_status(
        "ws-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "activeProvider": "aws", "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Running", "message": "running on aws",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}]
        }})),
    )
    .await
    .expect("status");

    let out = kubectl(&["get", "ws", "-n", &ns]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let header: Vec<&str> = text.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "PROVIDER", "ACTIVE", "PHASE", "READY", "AGE"]);
    let row: Vec<&str> = text.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    assert_eq!(&row[..5], ["ws-1", "aws", "aws", "Running", "True"]);

    for (kind, expected) in [("workspace", "A unit of compute"), ("computeprovider", "A place compute can run")] {
        let out = kubectl(&["explain", kind]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains(expected) && !text.contains("Auto-generated"), "{text}");
    }
    let out = kubectl(&["explain", "workspace.spec.provider"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("Name of the cluster-scoped ComputeProvider"), "{}", stdout(&out));

    let out =
        kubectl(&["patch", "workspace", "ws-1", "-n", &ns, "--type", "merge", "-p", r#"{"spec":{"provider":"gcp"}}"#]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(api.get("ws-1").await.expect("get").spec.provider, "gcp");
}

/// The template cannot make a workspace approach the API server's object size limit: besides
/// the per-entry bounds, args and env are bounded in all.
#[tokio::test]
async fn template_totals_are_bounded() {
    let client = client().await;
    let ns = namespace(&client, "api-template").await;
    let api: Api<Workspace> = Api::namespaced(client, &ns);
    let long = "x".repeat(4000);
    let mut ws = workspace("ws-args", "aws");
    let template = ws.spec.template.get_or_insert_with(Default::default);
    template.args = Some(vec![long.clone(); 5]);
    let err = api.create(&PostParams::default(), &ws).await.expect_err("20000 characters of args");
    assert!(err.to_string().contains("template.args are at most 16384 characters in all"), "{err}");

    let mut ws = workspace("ws-env", "aws");
    let template = ws.spec.template.get_or_insert_with(Default::default);
    template.env = Some((0..5).map(|i| (format!("VAR_{i}"), long.clone())).collect());
    let err = api.create(&PostParams::default(), &ws).await.expect_err("20000 characters of env");
    assert!(err.to_string().contains("template.env names and values are at most 16384 characters in all"), "{err}");

    // Up to the totals is fine.
    let mut ws = workspace("ws-fits", "aws");
    let template = ws.spec.template.get_or_insert_with(Default::default);
    template.args = Some(vec![long.clone(); 4]);
    template.env = Some((0..4).map(|i| (format!("V{i}"), long.clone())).collect());
    api.create(&PostParams::default(), &ws).await.expect("16000 characters of each");
}

/// No write to the status subresource gets around the epoch rule by removing the status or
/// replacing it with null: each is refused with a message naming the rule, and the epoch stays.
#[tokio::test]
async fn status_cannot_be_removed_or_replaced_by_null() {
    let (api, ns) = with_epoch_5("api-null", "ws-null").await;

    let patch = |kind: &str, body: &str| {
        let args = ["patch", "workspace", "ws-null", "-n", &ns, "--subresource=status", "--type", kind, "-p", body];
        kubectl(&args)
    };
    let mut without = serde_json::to_value(api.get_status("ws-null").await.expect("get")).expect("json");
    without.as_object_mut().expect("object").remove("status");
    let mut null = without.clone();
    null["status"] = serde_json::Value::Null;
    let replace = |object: &serde_json::Value| {
        kubectl_stdin(&["replace", "--subresource=status", "-f", "-"], &object.to_string())
    };
    for (what, out) in [
        ("merge patch status: null", patch("merge", r#"{"status": null}"#)),
        ("merge patch status.epoch: null", patch("merge", r#"{"status": {"epoch": null}}"#)),
        ("JSON patch remove /status", patch("json", r#"[{"op": "remove", "path": "/status"}]"#)),
        (
            "JSON patch replace /status with null",
            patch("json", r#"[{"op": "replace", "path": "/status", "value": null}]"#),
        ),
        ("update without status", replace(&without)),
        ("update with status: null", replace(&null)),
    ] {
        assert!(!out.status.success(), "{what} was accepted: {}", stdout(&out));
        let message = stderr(&out);
        assert!(message.contains("status.epoch must never decrease"), "{what}: {message}");
    }
    assert_eq!(api.get_status("ws-null").await.expect("get").status.expect("status").epoch, 5);
}

/// Status strings are bounded too: a condition is refused with the field and the rule named when
/// its message is over the bound, its reason is not a CamelCase identifier or its status is not
/// True, False or Unknown.
#[tokio::test]
async fn status_conditions_are_bounded() {
    let (api, _, _) = with_workspace("api-conditions", "ws-cond").await;
    let condition = |status: &str, reason: &str, message: String| {
        json!({"status": {"conditions": [{"type": "Ready", "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    };
    let limit = switchyard::api::conditions::MAX_WORKSPACE_MESSAGE as usize;
    for (what, patch, says) in [
        ("a long message", condition("True", "Running", "m".repeat(limit + 1)), "may not be more than 32768"),
        ("a reason with spaces", condition("True", "it runs", String::new()), "status.conditions[0].reason"),
        ("an unknown status", condition("Maybe", "Running", String::new()), "Unsupported value: \"Maybe\""),
    ] {
        let err = api.patch_status("ws-cond", &PatchParams::default(), &Patch::Merge(patch)).await.expect_err(what);
        assert!(err.to_string().contains(says), "{what}: {err}");
    }
    let fits = condition("True", "Running", "m".repeat(limit));
    api.patch_status("ws-cond", &PatchParams::default(), &Patch::Merge(fits)).await.expect("a message at the bound");
}
