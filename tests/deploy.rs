//! `kubectl apply -k deploy/` against the real API server, and the controller's RBAC: allowed
//! exactly what it needs, denied the rest.

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::fixtures::{self, Instance};
use support::*;
use switchyard::api::Workspace;
use switchyard::provider::simulated::Clouds;

const SA: &str = "system:serviceaccount:switchyard-system:switchyard";
/// The groups the API server gives the controller's ServiceAccount token.
const SA_GROUPS: [&str; 3] =
    ["system:serviceaccounts", "system:serviceaccounts:switchyard-system", "system:authenticated"];
const BREAK_GLASS: &str = "switchyard:break-glass";

/// `kubectl apply -k deploy/`, once per test binary; its output.
fn deployed() -> &'static str {
    static APPLIED: OnceLock<String> = OnceLock::new();
    APPLIED.get_or_init(|| {
        let dir = repo_root().join("deploy");
        let out = kubectl(&["apply", "-k", dir.to_str().expect("utf-8 path")]);
        assert!(out.status.success(), "kubectl apply -k deploy/ failed: {}", stderr(&out));
        stdout(&out)
    })
}

#[test]
fn deploy_applies_and_rbac_is_least_privilege() {
    let applied = deployed();
    for expected in [
        "deployment.apps/switchyard-controller",
        "poddisruptionbudget.policy/switchyard-controller",
        "service/switchyard-metrics",
        "networkpolicy.networking.k8s.io/switchyard-controller",
        "validatingadmissionpolicy.admissionregistration.k8s.io/switchyard-status-writers",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/switchyard-status-writers",
    ] {
        assert!(applied.contains(expected), "{expected} not applied: {applied}");
    }
    let out = kubectl(&[
        "get",
        "deployment",
        "switchyard-controller",
        "-n",
        "switchyard-system",
        "-o",
        "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].securityContext.readOnlyRootFilesystem} {.spec.template.spec.securityContext.runAsNonRoot}",
    ]);
    assert_eq!(stdout(&out), "2 true true");

    // (verb, resource, namespace, whether the controller's ServiceAccount may)
    let rules = [
        ("watch", "workspaces.switchyard.dev", "team-a", true),
        ("list", "workspaces.switchyard.dev", "team-a", true),
        ("patch", "workspaces.switchyard.dev", "team-a", true),
        ("patch", "workspaces.switchyard.dev/status", "team-a", true),
        ("watch", "computeproviders.switchyard.dev", "", true),
        ("patch", "computeproviders.switchyard.dev/status", "", true),
        ("create", "events.events.k8s.io", "team-a", true),
        ("patch", "events.events.k8s.io", "team-a", true),
        ("update", "leases.coordination.k8s.io", "switchyard-system", true),
        ("create", "leases.coordination.k8s.io", "switchyard-system", true),
        ("get", "secrets", "switchyard-system", true),
        ("create", "workspaces.switchyard.dev", "team-a", false),
        ("update", "workspaces.switchyard.dev", "team-a", false),
        ("delete", "workspaces.switchyard.dev", "team-a", false),
        ("create", "computeproviders.switchyard.dev", "", false),
        ("patch", "computeproviders.switchyard.dev", "", false),
        ("delete", "computeproviders.switchyard.dev", "", false),
        ("get", "secrets", "team-a", false),
        ("list", "secrets", "switchyard-system", false),
        ("update", "leases.coordination.k8s.io", "kube-system", false),
        ("create", "pods", "team-a", false),
        ("delete", "events.events.k8s.io", "team-a", false),
        ("create", "customresourcedefinitions.apiextensions.k8s.io", "", false),
        ("update", "workspaces.switchyard.dev/status", "team-a", false),
        ("update", "workspaces.switchyard.dev/finalizers", "team-a", false),
        ("patch", "computeproviders.switchyard.dev/finalizers", "", false),
        ("*", "*", "team-a", false),
    ];
    for (verb, resource, ns, may) in rules {
        let what = if may { "needs" } else { "must not have" };
        assert_eq!(can_i(SA, verb, resource, ns), may, "the controller {what} {verb} {resource} in {ns:?}");
    }
}

/// The optional monitoring overlay renders (the Prometheus Operator's CRDs are not on the local
/// control plane, so it is not applied; the alert expressions are checked against the exported
/// metrics by a unit test in src/telemetry/metrics.rs).
#[test]
fn monitoring_overlay_renders() {
    let out = kubectl(&["kustomize", &repo_root().join("deploy/monitoring").to_string_lossy()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let yaml = stdout(&out);
    for kind in ["kind: ServiceMonitor", "kind: PrometheusRule", "alert: SwitchyardNoLeader"] {
        assert!(yaml.contains(kind), "{kind} missing from:\n{yaml}");
    }
}

/// A merge patch of a workspace's status by `user` (in `groups`) with kubectl, as a person would
/// write it, with `extra` arguments (`--dry-run=server`, say); kubectl's output.
fn patch_status_as(
    user: &str,
    groups: &[&str],
    ns: &str,
    name: &str,
    status: serde_json::Value,
    extra: &[&str],
) -> std::process::Output {
    let patch = json!({"status": status}).to_string();
    let mut args = vec!["patch", "workspace", name, "-n", ns, "--subresource=status", "--type", "merge", "-p", &patch];
    args.extend(["--as", user]);
    for group in groups {
        args.extend(["--as-group", group]);
    }
    args.extend(extra);
    kubectl(&args)
}

const REFUSED: &str = "workspaces/status is written only by the Switchyard controller";

/// Waits until the API server enforces the admission policy on workspace `name` (it loads a
/// new policy a moment after it is applied), probing with server-side dry runs so that no probe
/// that comes too early writes anything.
async fn policy_enforced(ns: &str, name: &str) {
    eventually("the admission policy refuses a cluster admin", Duration::from_secs(60), || async {
        let out = patch_status_as("admin", &["system:masters"], ns, name, json!({"epoch": 7}), &["--dry-run=server"]);
        stderr(&out).contains(REFUSED).then_some(())
    })
    .await
}

/// The admission policy keeps workspaces/status to the controller's ServiceAccount and the
/// break-glass group: a cluster admin and a user whose RBAC allows the write are refused with a
/// message that says why and where to look; the escape hatch of the README works.
#[tokio::test]
async fn only_the_controller_and_break_glass_write_workspace_status() {
    deployed();
    let client = client().await;
    let ns = namespace(&client, "admission").await;
    let api: Api<Workspace> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &fixtures::workspace("ws", "aws")).await.expect("create");
    // Someone RBAC lets write status, who is not the controller.
    let rbac = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: status-writer, namespace: {ns}}}\n\
         rules: [{{apiGroups: [switchyard.dev], resources: [workspaces, workspaces/status], verbs: [get, patch]}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: status-writer, namespace: {ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: status-writer}}\n\
         subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}}]\n"
    );
    let out = kubectl_stdin(&["apply", "-f", "-"], &rbac);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(can_i("alice", "patch", "workspaces.switchyard.dev/status", &ns), "RBAC lets alice write status");

    policy_enforced(&ns, "ws").await;
    let out = patch_status_as("admin", &["system:masters"], &ns, "ws", json!({"epoch": 7}), &[]);
    assert!(!out.status.success(), "a cluster admin wrote status");
    let admin = stderr(&out);
    assert!(admin.contains(REFUSED) && admin.contains("admin is neither") && admin.contains("Escape hatch"), "{admin}");
    let out = patch_status_as("alice", &[], &ns, "ws", json!({"epoch": 7}), &[]);
    assert!(!out.status.success(), "alice wrote status");
    assert!(stderr(&out).contains(REFUSED) && stderr(&out).contains("alice is neither"), "{}", stderr(&out));
    assert_eq!(api.get_status("ws").await.expect("get").status.unwrap_or_default().epoch, 0, "a refused write landed");

    // The controller's ServiceAccount may.
    let out = patch_status_as(SA, &SA_GROUPS, &ns, "ws", json!({"epoch": 3, "operation": null}), &[]);
    assert!(out.status.success(), "the controller's write was refused: {}", stderr(&out));

    // The README's escape hatch: a guarded write in the break-glass group, by someone whose own
    // RBAC does not reach workspaces (the shipped binding gives the group what it needs).
    assert!(!can_i("bob", "patch", "workspaces.switchyard.dev/status", &ns));
    let rv = api.get("ws").await.expect("get").metadata.resource_version.expect("rv");
    let patch =
        json!({"metadata": {"resourceVersion": rv}, "status": {"operation": null, "unfenced": ["aws"]}}).to_string();
    let out = kubectl(&[
        "patch",
        "ws",
        "ws",
        "-n",
        &ns,
        "--subresource=status",
        "--type",
        "merge",
        "-p",
        &patch,
        "--as=bob",
        &format!("--as-group={BREAK_GLASS}"),
    ]);
    assert!(out.status.success(), "the escape hatch was refused: {}", stderr(&out));
    let status = api.get_status("ws").await.expect("get").status.expect("status");
    assert_eq!((status.epoch, status.unfenced), (3, vec!["aws".to_string()]));

    // Spec stays anyone's whom RBAC allows.
    let out = kubectl(&["patch", "ws", "ws", "-n", &ns, "--type", "merge", "-p", r#"{"spec":{"provider":"gcp"}}"#]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// With the shipped RBAC and admission policy in place, the controller acting as its
/// ServiceAccount places a workspace and switches it: every read, write and Event it needs is
/// allowed.
#[tokio::test]
async fn the_controller_works_as_its_service_account() {
    deployed();
    let admin = client().await;
    let ns = namespace(&admin, "as-sa").await;
    let (a, b) = (fixtures::unique("sa-a"), fixtures::unique("sa-b"));
    fixtures::simulated_provider(&admin, &a, 0, 0).await;
    fixtures::simulated_provider(&admin, &b, 0, 0).await;
    let admin_api: Api<Workspace> = Api::namespaced(admin.clone(), &ns);
    admin_api.create(&PostParams::default(), &fixtures::workspace("ws", &a)).await.expect("create");
    // The controller acts under the policy, not before the API server has loaded it.
    policy_enforced(&ns, "ws").await;

    let controller = client_as(SA, &SA_GROUPS).await;
    let _instance = Instance::start(&controller, fixtures::settings("as-sa", &ns), &Clouds::new());
    fixtures::wait_ready_on(&admin_api, "ws", &a, Duration::from_secs(60)).await;
    fixtures::patch_spec(&admin_api, "ws", json!({"provider": b})).await;
    let ws = fixtures::wait_ready_on(&admin_api, "ws", &b, Duration::from_secs(60)).await;
    assert!(ws.finalizers().iter().any(|f| f == switchyard::api::FINALIZER), "the finalizer was added");
    fixtures::wait_for_event(
        &admin,
        &ns,
        "ws",
        switchyard::api::conditions::EventReason::SwitchCompleted.as_str(),
        Duration::from_secs(30),
    )
    .await;
    // And nobody else could have written that status: the admin's own write is refused.
    let out = patch_status_as("admin", &["system:masters"], &ns, "ws", json!({"phase": "Stopped"}), &[]);
    assert!(stderr(&out).contains(REFUSED), "{}", stderr(&out));
}
