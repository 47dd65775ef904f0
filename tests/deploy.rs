//! `kubectl apply -k deploy/` against the real API server, and the controller's RBAC: allowed
//! exactly what it needs, denied the rest.

mod support;

use support::*;

const SA: &str = "system:serviceaccount:switchyard-system:switchyard";

/// `kubectl auth can-i` as the controller's ServiceAccount; `resource/sub` names a subresource.
fn can_i(verb: &str, resource: &str, namespace: &str) -> bool {
    let (resource, sub) = resource.split_once('/').map_or((resource, None), |(r, s)| (r, Some(s)));
    let mut args = vec!["auth", "can-i", verb, resource, "--as", SA, "-n", namespace];
    let sub_flag = sub.map(|s| format!("--subresource={s}"));
    args.extend(sub_flag.as_deref());
    let out = kubectl(&args);
    let answer = stdout(&out);
    match answer.trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl auth can-i {verb} {resource}: {other:?} {}", stderr(&out)),
    }
}

#[test]
fn deploy_applies_and_rbac_is_least_privilege() {
    let dir = repo_root().join("deploy");
    let out = kubectl(&["apply", "-k", dir.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "kubectl apply -k deploy/ failed: {}", stderr(&out));
    for expected in [
        "deployment.apps/switchyard-controller",
        "poddisruptionbudget.policy/switchyard-controller",
        "service/switchyard-metrics",
        "networkpolicy.networking.k8s.io/switchyard-controller",
    ] {
        assert!(stdout(&out).contains(expected), "{expected} not applied: {}", stdout(&out));
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

    let allowed = [
        ("watch", "workspaces.switchyard.dev", "team-a"),
        ("list", "workspaces.switchyard.dev", "team-a"),
        ("patch", "workspaces.switchyard.dev", "team-a"),
        ("patch", "workspaces.switchyard.dev/status", "team-a"),
        ("watch", "computeproviders.switchyard.dev", ""),
        ("patch", "computeproviders.switchyard.dev/status", ""),
        ("create", "events.events.k8s.io", "team-a"),
        ("patch", "events.events.k8s.io", "team-a"),
        ("update", "leases.coordination.k8s.io", "switchyard-system"),
        ("create", "leases.coordination.k8s.io", "switchyard-system"),
        ("get", "secrets", "switchyard-system"),
    ];
    for (verb, resource, ns) in allowed {
        assert!(can_i(verb, resource, ns), "the controller needs {verb} {resource} in {ns:?}");
    }
    let denied = [
        ("create", "workspaces.switchyard.dev", "team-a"),
        ("update", "workspaces.switchyard.dev", "team-a"),
        ("delete", "workspaces.switchyard.dev", "team-a"),
        ("create", "computeproviders.switchyard.dev", ""),
        ("patch", "computeproviders.switchyard.dev", ""),
        ("delete", "computeproviders.switchyard.dev", ""),
        ("get", "secrets", "team-a"),
        ("list", "secrets", "switchyard-system"),
        ("update", "leases.coordination.k8s.io", "kube-system"),
        ("create", "pods", "team-a"),
        ("delete", "events.events.k8s.io", "team-a"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io", ""),
        ("update", "workspaces.switchyard.dev/status", "team-a"),
        ("update", "workspaces.switchyard.dev/finalizers", "team-a"),
        ("patch", "computeproviders.switchyard.dev/finalizers", ""),
        ("*", "*", "team-a"),
    ];
    for (verb, resource, ns) in denied {
        assert!(!can_i(verb, resource, ns), "the controller must not {verb} {resource} in {ns:?}");
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
