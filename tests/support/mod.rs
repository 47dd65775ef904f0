//! Test harness: one real control plane (etcd + kube-apiserver from `tests/testenv`) per test
//! binary, or the cluster named by `SWITCHYARD_TEST_KUBECONFIG`; the CRDs applied once; a fresh
//! namespace per test.
//!
//! The control plane is bare (no controller manager, no scheduler, no nodes: fast) unless the
//! binary's tests ask for the fuller cluster with [`fuller_client`]: then it also runs
//! kube-controller-manager, kube-scheduler and KWOK with [`FULLER_NODES`] fake nodes, and the
//! namespaces of [`scoped_namespace`] are deleted, and waited for, when a test ends. A bare
//! apiserver never finishes deleting a namespace, so there they are left alone.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub mod fake_provider;
pub mod fixtures;
pub mod lossy;
pub mod scenario;
pub mod sims;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub struct ControlPlane {
    pub kubeconfig: PathBuf,
    /// Whether the cluster runs a controller manager, a scheduler and nodes: true for the
    /// fuller testenv and for a cluster named by `SWITCHYARD_TEST_KUBECONFIG`.
    pub fuller: bool,
    // Held for the life of the test binary: the control plane exits when its stdin closes.
    _child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

/// Fake nodes of the fuller cluster: two, so that a Pod can land elsewhere when one goes away.
pub const FULLER_NODES: u8 = 2;

static CONTROL_PLANE: OnceLock<ControlPlane> = OnceLock::new();
/// Set by [`fuller_client`] before the control plane starts.
static WANT_FULLER: AtomicBool = AtomicBool::new(false);

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn testenv_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("SWITCHYARD_TESTENV_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/testenv/bin"));
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run `make testenv` first", path.display());
    path
}

/// The control plane of this test binary, started on first use: bare, unless a test of the
/// binary asked for the fuller cluster first ([`fuller_client`]).
pub fn control_plane() -> &'static ControlPlane {
    CONTROL_PLANE.get_or_init(|| {
        let cp = match std::env::var_os("SWITCHYARD_TEST_KUBECONFIG") {
            Some(path) => ControlPlane { kubeconfig: PathBuf::from(path), fuller: true, _child: None, _dir: None },
            None => start_cluster(if WANT_FULLER.load(Ordering::SeqCst) { FULLER_NODES } else { 0 }, ""),
        };
        install_crds(&cp.kubeconfig);
        cp
    })
}

/// The fuller control plane of this test binary (controller manager, scheduler, KWOK nodes).
/// Every test of a binary that needs it must ask for it this way, so that whichever test runs
/// first starts the right cluster.
pub fn fuller_control_plane() -> &'static ControlPlane {
    WANT_FULLER.store(true, Ordering::SeqCst);
    let cp = control_plane();
    assert!(cp.fuller, "this test binary's control plane was started bare; ask for the fuller one in every test");
    cp
}

/// A client of the fuller control plane ([`fuller_control_plane`]).
pub async fn fuller_client() -> Client {
    client_for(fuller_control_plane()).await
}

/// A control plane of its own, without the CRDs, for a test that installs everything itself
/// (stopped when dropped). Ignores `SWITCHYARD_TEST_KUBECONFIG`: an existing cluster has them.
pub fn bare_control_plane() -> ControlPlane {
    start_cluster(0, "-own")
}

/// Starts `switchyard-testenv` (with `nodes` fake nodes, 0 for the bare control plane); its log
/// is target/testenv/logs/<binary>-<pid><suffix>.log.
pub fn start_cluster(nodes: u8, log_suffix: &str) -> ControlPlane {
    let dir = tempfile::Builder::new().prefix("switchyard-testenv-").tempdir().expect("temp dir");
    let logs = repo_root().join("target/testenv/logs");
    std::fs::create_dir_all(&logs).expect("log dir");
    let exe = std::env::current_exe().ok();
    let binary = exe.as_deref().and_then(Path::file_name).and_then(|n| n.to_str()).unwrap_or("test");
    let log_path = logs.join(format!("{binary}-{}{log_suffix}.log", std::process::id()));
    let log = std::fs::File::create(&log_path).expect("log file");
    let testenv = testenv_bin(switchyard::tools::dev::TESTENV);
    let mut child = switchyard::tools::dev::testenv_command(&testenv, dir.path(), nodes, false, log)
        .spawn()
        .expect("start switchyard-testenv");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(kubeconfig) = switchyard::tools::dev::ready_kubeconfig(&line) {
                let _ = tx.send(kubeconfig);
            }
        }
    });
    let kubeconfig = rx
        .recv_timeout(Duration::from_secs(180))
        .unwrap_or_else(|_| panic!("control plane not ready within 180s; see {}", log_path.display()));
    ControlPlane { kubeconfig, fuller: nodes > 0, _child: Some(child), _dir: Some(dir) }
}

fn install_crds(kubeconfig: &Path) {
    let crds = repo_root().join("crds/switchyard.dev.yaml");
    let out = kubectl_with(
        kubeconfig,
        &["apply", "--server-side", "--force-conflicts", "-f", crds.to_str().expect("utf-8 path")],
    );
    assert!(out.status.success(), "applying CRDs failed: {}", String::from_utf8_lossy(&out.stderr));
    let out = kubectl_with(
        kubeconfig,
        &["wait", "--for=condition=Established", "--timeout=60s", "-f", crds.to_str().expect("utf-8 path")],
    );
    assert!(out.status.success(), "CRDs not established: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs the real kubectl against the cluster of `kubeconfig`.
pub fn kubectl_with(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(testenv_bin("kubectl")).arg("--kubeconfig").arg(kubeconfig).args(args).output().expect("run kubectl")
}

/// Runs the real kubectl against the test control plane.
pub fn kubectl(args: &[&str]) -> Output {
    kubectl_with(&control_plane().kubeconfig, args)
}

/// Runs kubectl with `input` on stdin.
pub fn kubectl_stdin(args: &[&str], input: &str) -> Output {
    kubectl_stdin_with(&control_plane().kubeconfig, args, input)
}

/// [`kubectl_stdin`] against the cluster of `kubeconfig`.
pub fn kubectl_stdin_with(kubeconfig: &Path, args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(testenv_bin("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("kubectl output")
}

/// A `switchyard controller` process for `namespace` against the test control plane (no metrics
/// endpoint), with `args` and `env` added; killed when dropped.
pub fn controller_process(
    identity: &str,
    namespace: &str,
    args: &[&str],
    env: &[(String, String)],
) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["controller", "--identity", identity, "--namespace", namespace, "--metrics-addr", ""])
        .args(args)
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start a controller process")
}

/// A kube client for the test control plane, bound to the calling test's runtime.
pub async fn client() -> Client {
    client_for(control_plane()).await
}

/// The client configuration of `cp`'s kubeconfig.
pub async fn config_for(cp: &ControlPlane) -> Config {
    let kubeconfig = Kubeconfig::read_from(&cp.kubeconfig).expect("read kubeconfig");
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("kubeconfig")
}

/// A kube client for `cp`, bound to the calling test's runtime.
pub async fn client_for(cp: &ControlPlane) -> Client {
    Client::try_from(config_for(cp).await).expect("client")
}

/// A kube client for the test control plane that acts as `user` in `groups` (impersonation by
/// the cluster-admin of the kubeconfig), so RBAC and admission judge that user.
pub async fn client_as(user: &str, groups: &[&str]) -> Client {
    let mut config = config_for(control_plane()).await;
    config.auth_info.impersonate = Some(user.to_string());
    config.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
    Client::try_from(config).expect("client")
}

/// `kubectl auth can-i` as `user`; `resource/sub` names a subresource.
pub fn can_i(user: &str, verb: &str, resource: &str, namespace: &str) -> bool {
    can_i_on(&control_plane().kubeconfig, user, verb, resource, namespace)
}

/// [`can_i`] on the cluster of `kubeconfig`.
pub fn can_i_on(kubeconfig: &Path, user: &str, verb: &str, resource: &str, namespace: &str) -> bool {
    let (resource, sub) = resource.split_once('/').map_or((resource, None), |(r, s)| (r, Some(s)));
    let mut args = vec!["auth", "can-i", verb, resource, "--as", user, "-n", namespace];
    let sub_flag = sub.map(|s| format!("--subresource={s}"));
    args.extend(sub_flag.as_deref());
    let out = kubectl_with(kubeconfig, &args);
    let answer = stdout(&out);
    match answer.trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl auth can-i {verb} {resource} as {user}: {other:?} {}", stderr(&out)),
    }
}

/// A namespace of one test that is deleted when the test ends, on a cluster that can delete
/// one (the fuller cluster): the drop waits until it is gone, and fails the test if it is not
/// within [`NAMESPACE_DELETE_TIMEOUT`] (something in it could not be cleaned up: a finalizer
/// no controller removes, say). On the bare control plane it is left, like [`namespace`]'s.
pub struct ScopedNamespace {
    pub name: String,
    kubeconfig: Option<PathBuf>,
}

/// How long the deletion of a test's namespace may take on the fuller cluster.
pub const NAMESPACE_DELETE_TIMEOUT: Duration = Duration::from_secs(120);

impl std::ops::Deref for ScopedNamespace {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for ScopedNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for ScopedNamespace {
    fn drop(&mut self) {
        let Some(kubeconfig) = self.kubeconfig.take() else { return };
        // The real kubectl, blocking: a Drop cannot await, and this is what users run.
        let timeout = format!("--timeout={}s", NAMESPACE_DELETE_TIMEOUT.as_secs());
        let out = kubectl_with(&kubeconfig, &["delete", "namespace", &self.name, "--wait=true", &timeout]);
        if !out.status.success() && !std::thread::panicking() {
            panic!("namespace {} was not deleted: {}", self.name, stderr(&out));
        }
    }
}

/// A fresh namespace for one test on `cp`, deleted when the test ends if `cp` can delete one.
pub async fn scoped_namespace(client: &Client, cp: &ControlPlane, prefix: &str) -> ScopedNamespace {
    let name = namespace(client, prefix).await;
    ScopedNamespace { name, kubeconfig: cp.fuller.then(|| cp.kubeconfig.clone()) }
}

/// A fresh namespace for one test.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let name = format!("{prefix}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("namespace");
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("create namespace");
    name
}

/// Polls `check` until it returns Some, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
