//! `switchyard dev`: the whole system on one machine — a local cluster built from
//! `tests/testenv` (with KWOK's fake nodes, so Pods run), the CRDs, simulated providers,
//! `kubernetes` providers on that cluster, the controller and sample workspaces.

use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config, ResourceExt};

use crate::api::{ComputeProvider, SecretKeyRef};
use crate::provider::Dispatcher;
use crate::provider::simulated::Clouds;
use crate::tools::provider_sim::{ProviderSimOptions, ProviderSimProcess};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("start {path}: {source}")]
    Spawn { path: PathBuf, source: std::io::Error },
    #[error("the control plane exited before it was ready (its log: {log})")]
    NotReady { log: PathBuf },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("yaml in {file}: {source}")]
    Yaml { file: PathBuf, source: Box<serde_saphyr::Error> },
    #[error("CRD {0} was not established in time")]
    NotEstablished(String),
    #[error("{0}")]
    Other(String),
}

/// Options of `switchyard dev`.
#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Folder holding `switchyard-testenv`, `kubectl` and the cluster's other programs (built
    /// by `make testenv`).
    #[arg(long, default_value = "target/testenv/bin")]
    pub testenv_bin: PathBuf,
    /// Folder for the cluster's data, certificates and kubeconfig, the provider-sims' state and
    /// the logs (`switchyard.log`: the controller's).
    #[arg(long, default_value = "target/dev")]
    pub dir: PathBuf,
    /// Manifests applied after the CRDs and providers (every .yaml directly in the folder).
    #[arg(long, default_value = "deploy/samples")]
    pub samples: PathBuf,
    /// Fake nodes (KWOK) of the local cluster, on which the `kubernetes` providers' Pods run;
    /// 0 runs the bare control plane (no scheduler, no controller manager: Pods never run).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=20))]
    pub nodes: u8,
    /// Start from the data the previous run kept (cluster and provider-sims), and keep this
    /// run's; samples that already exist are left as they are. Without it every run starts
    /// fresh.
    #[arg(long)]
    pub keep_data: bool,
}

/// The controller's log, in `--dir`.
const LOG_FILE: &str = "switchyard.log";

impl DevArgs {
    /// Where the controller's logs go: they would bury the printed commands in the terminal.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }
}

/// The local control plane's program, as `make testenv` builds it.
pub const TESTENV: &str = "switchyard-testenv";

/// The command that runs `testenv` (the program) with its cluster's data in `dir` and `nodes`
/// fake nodes (0: kube-apiserver and etcd only), its log to `log`. Once serving it prints
/// `ready <kubeconfig>` on stdout ([`ready_kubeconfig`] reads it); it stops when its stdin
/// closes, and removes its data unless `keep`. Tests start it this way too.
pub fn testenv_command(testenv: &Path, dir: &Path, nodes: u8, keep: bool, log: std::fs::File) -> StdCommand {
    let mut command = StdCommand::new(testenv);
    if keep {
        command.arg("--keep");
    }
    command.arg("--dir").arg(dir).arg("--nodes").arg(nodes.to_string()).arg("--stdin-lifeline");
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(log);
    command
}

/// The kubeconfig of the control plane that printed `line` on its stdout, if the line is the one
/// ([`testenv_command`]) that says it is serving.
pub fn ready_kubeconfig(line: &str) -> Option<PathBuf> {
    line.strip_prefix("ready ").map(PathBuf::from)
}

/// A running local control plane; stops when dropped (its stdin closes).
pub struct LocalControlPlane {
    pub kubeconfig: PathBuf,
    child: Child,
}

impl LocalControlPlane {
    /// The bare control plane (kube-apiserver and etcd), its data removed when it stops.
    pub async fn start(testenv_bin: &Path, dir: &Path) -> Result<Self, DevError> {
        Self::start_with(testenv_bin, dir, 0, false).await
    }

    /// The control plane with `nodes` fake nodes (0: bare); `keep` keeps its data when it stops.
    pub async fn start_with(testenv_bin: &Path, dir: &Path, nodes: u8, keep: bool) -> Result<Self, DevError> {
        std::fs::create_dir_all(dir)?;
        let dir = std::fs::canonicalize(dir)?;
        let log_path = dir.join("control-plane.log");
        let log = std::fs::File::create(&log_path)?;
        let path = testenv_bin.join(TESTENV);
        let mut child = Command::from(testenv_command(&path, &dir.join("cluster"), nodes, keep, log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| DevError::Spawn { path, source })?;
        let stdout = child.stdout.take().ok_or_else(|| DevError::Other("no stdout".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        while let Some(line) = lines.next_line().await? {
            if let Some(kubeconfig) = ready_kubeconfig(&line) {
                return Ok(Self { kubeconfig, child });
            }
        }
        Err(DevError::NotReady { log: log_path })
    }

    pub async fn client(&self) -> Result<Client, DevError> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// The control plane's process id (kube-apiserver and etcd run in it), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Asks the control plane to stop and waits for it.
    pub async fn stop(mut self) -> Result<(), DevError> {
        drop(self.child.stdin.take());
        self.child.wait().await?;
        Ok(())
    }
}

/// A client for the cluster a kubeconfig file names (its current context), over HTTP/2 like the
/// controller's: the bench's ceiling is then measured with the controller's own transport.
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client, DevError> {
    let kubeconfig = Kubeconfig::read_from(path)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(crate::runtime::client::http2(config)?)
}

/// Server-side applies every CRD and waits until each is established.
pub async fn install_crds(client: &Client) -> Result<(), DevError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("switchyard").force();
    for crd in crate::api::crds() {
        let name = crd.name_any();
        api.patch(&name, &params, &Patch::Apply(&crd)).await?;
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .map_err(|_| DevError::NotEstablished(name.clone()))?
            .map_err(|e| DevError::Other(e.to_string()))?;
    }
    Ok(())
}

/// The Kubernetes objects of a multi-document YAML `text` read from `file` (empty documents are
/// skipped).
pub fn objects(file: &Path, text: &str) -> Result<Vec<DynamicObject>, DevError> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|e| DevError::Yaml { file: file.to_owned(), source: Box::new(e) })?;
    docs.into_iter()
        .filter(|doc| !doc.is_null())
        .map(|doc| {
            serde_json::from_value(doc)
                .map_err(|e| DevError::Other(format!("{}: not a Kubernetes object: {e}", file.display())))
        })
        .collect()
}

/// Server-side applies every YAML document of every `.yaml` file in `dir` (sorted by name); with
/// `only_new`, only the objects that do not exist yet (so a kept workspace keeps its provider).
/// Returns how many were applied.
pub async fn apply_dir(client: &Client, dir: &Path, only_new: bool) -> Result<usize, DevError> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let params = PatchParams::apply("switchyard-dev").force();
    let mut applied = 0;
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        for obj in objects(&file, &text)? {
            let gvk = obj
                .types
                .as_ref()
                .ok_or_else(|| DevError::Other(format!("{}: a document has no apiVersion/kind", file.display())))?;
            let gvk = kube::core::GroupVersionKind::try_from(gvk).map_err(|e| DevError::Other(e.to_string()))?;
            let (resource, caps): (ApiResource, ApiCapabilities) = discovery
                .resolve_gvk(&gvk)
                .ok_or_else(|| DevError::Other(format!("{}: unknown kind {gvk:?}", file.display())))?;
            let api: Api<DynamicObject> = match caps.scope {
                Scope::Namespaced => {
                    Api::namespaced_with(client.clone(), obj.namespace().as_deref().unwrap_or("default"), &resource)
                }
                Scope::Cluster => Api::all_with(client.clone(), &resource),
            };
            if only_new && api.get_opt(&obj.name_any()).await?.is_some() {
                continue;
            }
            api.patch(&obj.name_any(), &params, &Patch::Apply(&obj)).await?;
            applied += 1;
        }
    }
    Ok(applied)
}

pub async fn run(args: DevArgs) -> Result<(), DevError> {
    // Absolute paths: the printed commands must work from any folder.
    std::fs::create_dir_all(&args.dir)?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let testenv_bin = std::fs::canonicalize(&args.testenv_bin)
        .map_err(|e| DevError::Other(format!("{}: {e} (run `make testenv`)", args.testenv_bin.display())))?;
    if !args.keep_data {
        for stale in ["cluster", "providers"] {
            match std::fs::remove_dir_all(dir.join(stale)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
    }
    let what = if args.nodes > 0 { format!("with {} fake nodes", args.nodes) } else { "bare".to_string() };
    eprintln!("starting the local cluster ({what}) in {}", dir.display());
    let cp = LocalControlPlane::start_with(&testenv_bin, &dir, args.nodes, args.keep_data).await?;
    let client = cp.client().await?;
    install_crds(&client).await?;

    // Two stand-in clouds, served over the provider protocol like real ones.
    let exe = std::env::current_exe()?;
    let mut clouds = Vec::new();
    for name in ["aws", "gcp"] {
        let mut options = ProviderSimOptions::new(&exe, name, dir.join("providers").join(name));
        if args.keep_data {
            // A ComputeProvider's endpoint is immutable: a kept one must be served where it was.
            if let Some(listen) = previous_endpoint(&client, name).await? {
                options.listen = listen;
            }
        }
        options.provision_latency = Duration::from_millis(300);
        options.stop_latency = Duration::from_millis(150);
        let sim = ProviderSimProcess::start(options).await.map_err(|e| DevError::Other(e.to_string()))?;
        register_provider(&client, &sim).await?;
        clouds.push(sim);
    }
    // And Pods on the local cluster's fake nodes, in two namespaces.
    for (provider, namespace) in KUBERNETES_PROVIDERS {
        register_kubernetes_provider(&client, provider, namespace).await?;
    }
    let applied = apply_dir(&client, &args.samples, args.keep_data).await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let handles = crate::controller::Handles::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let metrics_addr = listener.local_addr()?;
    tokio::spawn(crate::telemetry::serve(
        listener,
        handles.metrics.clone(),
        handles.health.clone(),
        stopped(stop_rx.clone()),
    ));
    let dispatcher = Dispatcher::new(Clouds::new()).with_client(client.clone());
    let settings = crate::controller::Settings::new(crate::runtime::default_identity());
    let controller =
        tokio::spawn(crate::controller::run(client.clone(), settings, dispatcher, handles, stopped(stop_rx.clone())));

    let ledger = |sim: &ProviderSimProcess| {
        format!(
            "{} provider-sim ledger --endpoint {} --token-file {}",
            exe.display(),
            sim.endpoint(),
            sim.token_file().display()
        )
    };
    let samples = std::fs::canonicalize(&args.samples).unwrap_or_else(|_| args.samples.clone());
    println!(
        "\nSwitchyard is up: a local cluster ({what}), provider-sims aws ({aws}) and gcp ({gcp}),\n\
         kubernetes providers {east} and {west} (Pods in namespaces {east_ns} and {west_ns}), the\n\
         controller, and {applied} objects applied from {samples}.\n\
         Logs: the controller {log}, the cluster {cp_log}.\n\n\
         Try, in another terminal (from any folder):\n\
         \x20 export KUBECONFIG={kc} PATH={bin}:$PATH\n\
         \x20 kubectl get computeproviders,workspaces\n\
         \x20 kubectl get pods -A -l app.kubernetes.io/managed-by=switchyard -w     # and in a third terminal:\n\
         \x20 kubectl patch workspace ws-pod --type merge -p '{{\"spec\":{{\"provider\":\"{west}\"}}}}'\n\
         \x20 kubectl patch workspace ws-1 --type merge -p '{{\"spec\":{{\"provider\":\"gcp\"}}}}'\n\
         \x20 kubectl wait --for=jsonpath='{{.status.instance.provider}}'=gcp workspace/ws-1 --timeout=60s   # switched\n\
         \x20 {exe} switch ws-2 --to gcp --wait          # the same, with live progress\n\
         \x20 {exe} status\n\
         \x20 kubectl get workspace ws-1 -o yaml\n\
         \x20 kubectl events --for workspace/ws-1\n\
         \x20 curl -s http://{metrics_addr}/metrics | grep switchyard_switches\n\
         \x20 {aws_ledger}\n\n\
         Ctrl-C stops everything. The next run starts fresh; `make run KEEP=1` (--keep-data) would\n\
         start from this run's data instead.",
        aws = clouds[0].endpoint(),
        gcp = clouds[1].endpoint(),
        east = KUBERNETES_PROVIDERS[0].0,
        east_ns = KUBERNETES_PROVIDERS[0].1,
        west = KUBERNETES_PROVIDERS[1].0,
        west_ns = KUBERNETES_PROVIDERS[1].1,
        samples = samples.display(),
        log = dir.join(LOG_FILE).display(),
        cp_log = dir.join("control-plane.log").display(),
        kc = cp.kubeconfig.display(),
        bin = testenv_bin.display(),
        aws_ledger = ledger(&clouds[0]),
        exe = exe.display(),
    );
    crate::runtime::shutdown_signal().await;
    eprintln!("stopping the controller, the provider-sims and the cluster");
    stop_tx.send_replace(true);
    let _ = controller.await;
    for mut sim in clouds {
        let _ = sim.terminate().await;
    }
    cp.stop().await
}

/// The loopback address ComputeProvider `name` (an `http` one) points at, if it exists.
async fn previous_endpoint(client: &Client, name: &str) -> Result<Option<std::net::SocketAddr>, DevError> {
    let Some(provider) = Api::<ComputeProvider>::all(client.clone()).get_opt(name).await? else { return Ok(None) };
    let endpoint = provider.spec.http.map(|h| h.endpoint).unwrap_or_default();
    let url = reqwest::Url::parse(&endpoint).ok();
    let host = url.as_ref().and_then(|u| u.host_str()).and_then(|h| h.parse::<std::net::IpAddr>().ok());
    Ok(host.zip(url.and_then(|u| u.port())).map(std::net::SocketAddr::from).filter(|a| a.ip().is_loopback()))
}

/// The `kubernetes` ComputeProviders of `switchyard dev`: (name, namespace of its Pods).
pub const KUBERNETES_PROVIDERS: [(&str, &str); 2] =
    [("kube-east", "workspaces-east"), ("kube-west", "workspaces-west")];

/// Creates (or updates) namespace `namespace` and a `kubernetes` ComputeProvider `name` that runs
/// its Pods there, in the controller's own cluster.
async fn register_kubernetes_provider(client: &Client, name: &str, namespace: &str) -> Result<(), DevError> {
    use k8s_openapi::api::core::v1::Namespace;
    let params = PatchParams::apply("switchyard-dev").force();
    let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
    Api::<Namespace>::all(client.clone()).patch(namespace, &params, &Patch::Apply(&ns)).await?;
    let provider = serde_json::json!({
        "apiVersion": "switchyard.dev/v1alpha1", "kind": "ComputeProvider",
        "metadata": {"name": name},
        "spec": {"driver": "kubernetes", "kubernetes": {"namespace": namespace}, "callTimeoutSeconds": 20},
    });
    Api::<ComputeProvider>::all(client.clone()).patch(name, &params, &Patch::Apply(&provider)).await?;
    Ok(())
}

/// Creates (or updates) the token Secret and the `http` ComputeProvider of a provider-sim.
async fn register_provider(client: &Client, sim: &ProviderSimProcess) -> Result<(), DevError> {
    use k8s_openapi::api::core::v1::{Namespace, Secret};
    let params = PatchParams::apply("switchyard-dev").force();
    let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": DEV_NAMESPACE}});
    Api::<Namespace>::all(client.clone()).patch(DEV_NAMESPACE, &params, &Patch::Apply(&ns)).await?;
    let secret_name = format!("{}-token", sim.name());
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": secret_name, "namespace": DEV_NAMESPACE,
                     "labels": {crate::api::PROVIDER_TOKEN_LABEL: "true"}},
        "stringData": {"token": sim.token()},
    });
    Api::<Secret>::namespaced(client.clone(), DEV_NAMESPACE)
        .patch(&secret_name, &params, &Patch::Apply(&secret))
        .await?;
    let secret_ref = SecretKeyRef { name: secret_name, namespace: DEV_NAMESPACE.into(), key: "token".into() };
    let provider = serde_json::json!({
        "apiVersion": "switchyard.dev/v1alpha1", "kind": "ComputeProvider",
        "metadata": {"name": sim.name()},
        "spec": {"driver": "http", "http": sim.http_settings(Some(secret_ref)), "callTimeoutSeconds": 10},
    });
    Api::<ComputeProvider>::all(client.clone()).patch(sim.name(), &params, &Patch::Apply(&provider)).await?;
    Ok(())
}

const DEV_NAMESPACE: &str = "switchyard-system";

#[cfg(test)]
mod tests {
    use super::*;

    /// The samples `make run` applies parse into objects, comments and document markers aside.
    #[test]
    fn sample_files_parse_into_objects() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/samples");
        for file in [dir.join("workspaces.yaml"), dir.join("simulated/providers.yaml")] {
            let text = std::fs::read_to_string(&file).expect("read sample");
            let objs = objects(&file, &text).expect("parse sample");
            assert!(!objs.is_empty(), "{}", file.display());
            assert!(objs.iter().all(|o| o.types.is_some() && o.metadata.name.is_some()), "{objs:?}");
        }
        let objs =
            objects(Path::new("x.yaml"), "---\n# nothing\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
                .expect("parse");
        assert_eq!(objs.len(), 1);
        let err = objects(Path::new("x.yaml"), "a: [").expect_err("broken YAML");
        assert!(err.to_string().contains("x.yaml"), "{err}");
    }
}
