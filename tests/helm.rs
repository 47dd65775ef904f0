//! The Helm chart (deploy/helm/switchyard): with default values it renders what
//! `kubectl kustomize deploy/` does, it lints clean, and `helm install` on a real API server
//! creates the controller, its RBAC, the admission policy and the CRDs.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};
use support::*;

/// The Kubernetes version `helm template` renders for (the chart requires 1.30 or later).
const KUBE_VERSION: &str = "v1.36.3";
/// Labels only Helm sets: which release and chart an object belongs to.
const HELM_LABELS: [&str; 4] =
    ["helm.sh/chart", "app.kubernetes.io/instance", "app.kubernetes.io/version", "app.kubernetes.io/managed-by"];

fn chart() -> PathBuf {
    repo_root().join("deploy/helm/switchyard")
}

fn helm(args: &[&str]) -> Output {
    Command::new(testenv_bin("helm")).args(args).env("HELM_CACHE_HOME", helm_home()).output().expect("run helm")
}

/// A folder of this test binary's for Helm's cache and config, so no user setting leaks in.
fn helm_home() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-helm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("helm home");
    dir
}

/// The objects of a multi-document YAML stream.
fn objects(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).expect("rendered YAML parses");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// `helm template` of the chart as release `release` in `namespace`, with `set` values.
fn render(release: &str, namespace: &str, set: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec!["template", release, chart.to_str().expect("utf-8 path"), "-n", namespace];
    args.extend(["--kube-version", KUBE_VERSION]);
    for value in set {
        args.extend(["--set", value]);
    }
    let out = helm(&args);
    assert!(out.status.success(), "helm template failed: {}", stderr(&out));
    objects(&stdout(&out))
}

fn kustomize(dir: &Path) -> Vec<Value> {
    let out = kubectl_offline(&["kustomize", dir.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "kubectl kustomize failed: {}", stderr(&out));
    objects(&stdout(&out))
}

/// kubectl for what needs no cluster (kustomize), so the render tests start no control plane.
fn kubectl_offline(args: &[&str]) -> Output {
    Command::new(testenv_bin("kubectl")).args(args).output().expect("run kubectl")
}

fn kind_name(object: &Value) -> (String, String) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (text(&object["kind"]), text(&object["metadata"]["name"]))
}

/// Removes Helm's own labels wherever labels or selectors hold them.
fn strip_helm_labels(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for label in HELM_LABELS {
                map.remove(label);
            }
            map.values_mut().for_each(strip_helm_labels);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_helm_labels),
        _ => {}
    }
}

/// The objects by kind and name, with the differences that are on purpose taken out (each says
/// why); whatever else differs is a drift between the chart and the kustomize base.
fn comparable(objects: Vec<Value>) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for mut object in objects {
        let key = kind_name(&object);
        // Helm installs into the release's namespace (`--create-namespace`); it does not own it.
        if key.0 == "Namespace" {
            continue;
        }
        // Helm's labels name the release, and its selectors include it so that two releases
        // never select each other's Pods.
        strip_helm_labels(&mut object);
        let metadata = object["metadata"].as_object_mut().expect("metadata");
        // The chart keeps its CRDs on uninstall (deleting a CRD deletes every Workspace).
        if let Some(annotations) = metadata.get_mut("annotations").and_then(Value::as_object_mut) {
            annotations.remove("helm.sh/resource-policy");
            if annotations.is_empty() {
                metadata.remove("annotations");
            }
        }
        // kustomize does not know that admission policies are cluster-scoped and gives them its
        // namespace; the API server ignores it.
        if key.0.starts_with("ValidatingAdmissionPolicy") {
            metadata.remove("namespace");
        }
        assert!(out.insert(key.clone(), object).is_none(), "{key:?} rendered twice");
    }
    out
}

/// Asserts both sides hold the same objects, naming each that differs with both versions.
fn assert_equivalent(helm: BTreeMap<(String, String), Value>, kustomize: BTreeMap<(String, String), Value>) {
    let only = |a: &BTreeMap<_, _>, b: &BTreeMap<_, _>| a.keys().filter(|k| !b.contains_key(*k)).cloned().collect();
    let helm_only: Vec<(String, String)> = only(&helm, &kustomize);
    let kustomize_only: Vec<(String, String)> = only(&kustomize, &helm);
    assert!(
        helm_only.is_empty() && kustomize_only.is_empty(),
        "only in the chart: {helm_only:?}; only in kustomize: {kustomize_only:?}"
    );
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    for (key, object) in &helm {
        let other = &kustomize[key];
        assert!(
            object == other,
            "{key:?} differs (run `make chart-files` if a copied file changed)\nchart:\n{}\nkustomize:\n{}",
            pretty(object),
            pretty(other)
        );
    }
}

#[test]
fn default_values_render_what_kustomize_installs() {
    let chart = comparable(render("switchyard", "switchyard-system", &[]));
    let base = comparable(kustomize(&repo_root().join("deploy")));
    assert!(chart.len() >= 15, "{:?}", chart.keys());
    assert_equivalent(chart, base);
}

#[test]
fn monitoring_values_render_what_the_monitoring_overlay_installs() {
    let set =
        ["metrics.serviceMonitor.enabled=true", "metrics.prometheusRule.enabled=true", "grafanaDashboard.enabled=true"];
    let chart = render("switchyard", "switchyard-system", &set);
    let monitoring = ["ServiceMonitor", "PrometheusRule", "ConfigMap"];
    let chart = comparable(chart.into_iter().filter(|o| monitoring.contains(&kind_name(o).0.as_str())).collect());
    let overlay = comparable(kustomize(&repo_root().join("deploy/monitoring")));
    assert_eq!(chart.len(), 3, "{:?}", chart.keys());
    assert_equivalent(chart, overlay);
}

/// Another release name and namespace: every name follows, and the admission policy lets the
/// release's own ServiceAccount write status, not the default one.
#[test]
fn names_follow_the_release_and_namespace() {
    let objects = render("sy", "platform", &["admissionPolicy.breakGlassGroup=oncall", "replicaCount=3"]);
    let find = |kind: &str, name: &str| {
        objects
            .iter()
            .find(|o| kind_name(o) == (kind.into(), name.into()))
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    assert_eq!(find("ServiceAccount", "sy-switchyard")["metadata"]["namespace"], "platform");
    let deployment = find("Deployment", "sy-switchyard-controller");
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(deployment["spec"]["template"]["spec"]["serviceAccountName"], "sy-switchyard");
    let binding = find("ClusterRoleBinding", "sy-switchyard-controller");
    assert_eq!(
        binding["subjects"][0],
        json!({"kind": "ServiceAccount", "name": "sy-switchyard", "namespace": "platform"})
    );
    let policy = find("ValidatingAdmissionPolicy", "sy-switchyard-status-writers");
    let variables = policy["spec"]["variables"].to_string();
    assert!(
        variables.contains("'system:serviceaccount:platform:sy-switchyard'") && variables.contains("'oncall'"),
        "{variables}"
    );
    assert_eq!(
        find("ValidatingAdmissionPolicyBinding", "sy-switchyard-status-writers")["spec"]["policyName"],
        "sy-switchyard-status-writers"
    );
    assert_eq!(find("ClusterRoleBinding", "sy-switchyard-break-glass")["subjects"][0]["name"], "oncall");

    // Optional parts go away when asked.
    let off = [
        "crds.install=false",
        "admissionPolicy.enabled=false",
        "networkPolicy.enabled=false",
        "podDisruptionBudget.enabled=false",
    ];
    let kinds: Vec<String> = render("sy", "platform", &off).iter().map(|o| kind_name(o).0).collect();
    for gone in ["CustomResourceDefinition", "ValidatingAdmissionPolicy", "NetworkPolicy", "PodDisruptionBudget"] {
        assert!(!kinds.iter().any(|k| k == gone), "{gone} rendered: {kinds:?}");
    }
}

#[test]
fn helm_lint_is_clean_and_the_schema_refuses_bad_values() {
    let chart = chart();
    let chart = chart.to_str().expect("utf-8 path");
    let everything =
        "metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true,grafanaDashboard.enabled=true";
    for set in [None, Some(everything)] {
        let mut args = vec!["lint", "--strict", chart, "--kube-version", KUBE_VERSION];
        args.extend(set.iter().flat_map(|s| ["--set", *s]));
        let out = helm(&args);
        let text = stdout(&out) + &stderr(&out);
        assert!(out.status.success(), "helm lint failed: {text}");
        assert!(
            text.contains("0 chart(s) failed") && !text.contains("[WARNING]") && !text.contains("[ERROR]"),
            "{text}"
        );
    }
    for (bad, says) in [
        ("logFormat=xml", "logFormat"),
        ("admissionPolicy.validationActions={Block}", "validationActions"),
        ("replicas=2", "additional properties 'replicas' not allowed"),
        ("image.digest=latest", "digest"),
    ] {
        let out = helm(&["template", "x", chart, "--kube-version", KUBE_VERSION, "--set", bad]);
        assert!(!out.status.success(), "{bad} was accepted");
        assert!(stderr(&out).contains(says), "{bad}: {}", stderr(&out));
    }
}

/// `helm install` on a control plane of its own (no CRDs yet): the CRDs are created and
/// established, the controller's Deployment, ServiceAccount and RBAC exist and grant what the
/// README says, and the admission policy guards status for this release's ServiceAccount.
/// `helm uninstall` leaves the CRDs (and so every Workspace).
#[test]
fn helm_install_creates_the_controller_rbac_policy_and_crds() {
    let cp = bare_control_plane();
    let kubeconfig = cp.kubeconfig.to_str().expect("utf-8 path");
    let kubectl = |args: &[&str]| kubectl_with(&cp.kubeconfig, args);
    let chart = chart();
    let out = helm(&[
        "install",
        "sy",
        chart.to_str().expect("utf-8 path"),
        "-n",
        "sy-system",
        "--create-namespace",
        "--kubeconfig",
        kubeconfig,
    ]);
    assert!(out.status.success(), "helm install failed: {}", stderr(&out));
    assert!(stdout(&out).contains("STATUS: deployed") && stdout(&out).contains("Escape hatch"), "{}", stdout(&out));

    let out = kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/workspaces.switchyard.dev",
        "crd/computeproviders.switchyard.dev",
    ]);
    assert!(out.status.success(), "CRDs not established: {}", stderr(&out));
    // Namespaced and cluster-scoped alike (kubectl ignores -n for the latter).
    let out = kubectl(&[
        "get",
        "-n",
        "sy-system",
        "-o",
        "name",
        "deployment/sy-switchyard-controller",
        "serviceaccount/sy-switchyard",
        "role/sy-switchyard-controller",
        "rolebinding/sy-switchyard-controller",
        "clusterrole/sy-switchyard-controller",
        "clusterrolebinding/sy-switchyard-controller",
        "clusterrole/sy-switchyard-pods",
        "validatingadmissionpolicy/sy-switchyard-status-writers",
        "validatingadmissionpolicybinding/sy-switchyard-status-writers",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = kubectl(&[
        "get",
        "-n",
        "sy-system",
        "deployment/sy-switchyard-controller",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].args}",
    ]);
    assert_eq!(
        stdout(&out),
        r#"ghcr.io/switchyard-dev/switchyard:0.1.0 ["controller","--leader-election","--lease-duration=15s","--claim-lease=60s","--metrics-addr=0.0.0.0:8080","--log-format=json"]"#
    );

    let sa = "system:serviceaccount:sy-system:sy-switchyard";
    for (verb, resource, ns) in [
        ("watch", "workspaces.switchyard.dev", "team-a"),
        ("patch", "workspaces.switchyard.dev/status", "team-a"),
        ("patch", "computeproviders.switchyard.dev/status", ""),
        ("create", "events.events.k8s.io", "team-a"),
        ("update", "leases.coordination.k8s.io", "sy-system"),
        ("get", "secrets", "sy-system"),
    ] {
        assert!(can_i_on(&cp.kubeconfig, sa, verb, resource, ns), "the controller needs {verb} {resource} in {ns:?}");
    }
    for (verb, resource, ns) in
        [("get", "secrets", "team-a"), ("update", "workspaces.switchyard.dev", "team-a"), ("*", "*", "team-a")]
    {
        assert!(
            !can_i_on(&cp.kubeconfig, sa, verb, resource, ns),
            "the controller must not {verb} {resource} in {ns:?}"
        );
    }

    // The policy names this release's ServiceAccount: it may write status, an admin may not.
    let out = kubectl(&["create", "namespace", "team-a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ws = r#"{"apiVersion": "switchyard.dev/v1alpha1", "kind": "Workspace", "metadata": {"name": "ws", "namespace": "team-a"}, "spec": {"provider": "aws"}}"#;
    let out = kubectl_stdin_with(&cp.kubeconfig, &["create", "-f", "-"], ws);
    assert!(out.status.success(), "{}", stderr(&out));
    let patch = |as_user: &[&str]| {
        let mut args = vec![
            "patch",
            "ws",
            "ws",
            "-n",
            "team-a",
            "--subresource=status",
            "--type",
            "merge",
            "-p",
            r#"{"status":{"phase":"Pending"}}"#,
        ];
        args.extend(as_user);
        kubectl(&args)
    };
    let refused = wait_until("the policy refuses an admin", || {
        let out = patch(&[]);
        (!out.status.success()).then(|| stderr(&out))
    });
    assert!(
        refused.contains("written only by the Switchyard controller (system:serviceaccount:sy-system:sy-switchyard)"),
        "{refused}"
    );
    let out = patch(&["--as", sa, "--as-group", "system:serviceaccounts"]);
    assert!(out.status.success(), "the release's ServiceAccount was refused: {}", stderr(&out));

    // An upgrade with other values changes the release in place (the CRDs are templates of it).
    let chart_path = chart.to_str().expect("utf-8 path");
    let upgrade =
        ["upgrade", "sy", chart_path, "-n", "sy-system", "--kubeconfig", kubeconfig, "--set", "replicaCount=3"];
    let out = helm(&upgrade);
    assert!(out.status.success(), "helm upgrade failed: {}", stderr(&out));
    let out =
        kubectl(&["get", "-n", "sy-system", "deployment/sy-switchyard-controller", "-o", "jsonpath={.spec.replicas}"]);
    assert_eq!(stdout(&out), "3");

    let out = helm(&["uninstall", "sy", "-n", "sy-system", "--kubeconfig", kubeconfig]);
    assert!(out.status.success(), "helm uninstall failed: {}", stderr(&out));
    let out = kubectl(&["get", "crd/workspaces.switchyard.dev", "-o", "name"]);
    assert!(out.status.success(), "uninstall deleted the CRD: {}", stderr(&out));
    let out = kubectl(&["get", "ws", "ws", "-n", "team-a", "-o", "name"]);
    assert!(out.status.success(), "uninstall deleted a workspace: {}", stderr(&out));
    let out = kubectl(&["get", "-n", "sy-system", "deployment/sy-switchyard-controller"]);
    assert!(!out.status.success(), "the Deployment outlived the release");
}

/// Polls `check` (every 100 ms, up to 60 s) until it returns Some.
fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
