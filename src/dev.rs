//! `switchyard dev`: the whole system on one machine — a local control plane built from
//! `tests/testenv`, the CRDs, simulated providers, the controller and sample workspaces.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config, ResourceExt};
use serde::Deserialize;
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
    Yaml { file: PathBuf, source: serde_yaml::Error },
    #[error("CRD {0} was not established in time")]
    NotEstablished(String),
    #[error("{0}")]
    Other(String),
}

/// Options of `switchyard dev`.
#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Folder holding `switchyard-testenv` and `kubectl` (built by `make testenv`).
    #[arg(long, default_value = "target/testenv/bin")]
    pub testenv_bin: PathBuf,
    /// Folder for the control plane's data, certificates and kubeconfig.
    #[arg(long, default_value = "target/dev")]
    pub dir: PathBuf,
    /// Manifests applied after the CRDs.
    #[arg(long, default_value = "deploy/samples")]
    pub samples: PathBuf,
}

/// A running local control plane; stops when dropped (its stdin closes).
pub struct LocalControlPlane {
    pub kubeconfig: PathBuf,
    child: Child,
}

impl LocalControlPlane {
    pub async fn start(testenv_bin: &Path, dir: &Path) -> Result<Self, DevError> {
        std::fs::create_dir_all(dir)?;
        let dir = std::fs::canonicalize(dir)?;
        let log_path = dir.join("control-plane.log");
        let log = std::fs::File::create(&log_path)?;
        let path = testenv_bin.join("switchyard-testenv");
        let mut child = Command::new(&path)
            .arg("--dir")
            .arg(dir.join("cluster"))
            .arg("--stdin-lifeline")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| DevError::Spawn { path, source })?;
        let stdout = child.stdout.take().ok_or_else(|| DevError::Other("no stdout".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        while let Some(line) = lines.next_line().await? {
            if let Some(kubeconfig) = line.strip_prefix("ready ") {
                return Ok(Self { kubeconfig: PathBuf::from(kubeconfig), child });
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

/// A client for the cluster a kubeconfig file names (its current context).
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client, DevError> {
    let kubeconfig = Kubeconfig::read_from(path)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
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

/// Server-side applies every YAML document of every `.yaml` file in `dir` (sorted by name).
pub async fn apply_dir(client: &Client, dir: &Path) -> Result<usize, DevError> {
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
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value =
                serde_yaml::Value::deserialize(doc).map_err(|source| DevError::Yaml { file: file.clone(), source })?;
            if value.is_null() {
                continue;
            }
            let obj: DynamicObject =
                serde_yaml::from_value(value).map_err(|source| DevError::Yaml { file: file.clone(), source })?;
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
            api.patch(&obj.name_any(), &params, &Patch::Apply(&obj)).await?;
            applied += 1;
        }
    }
    Ok(applied)
}

pub async fn run(args: DevArgs) -> Result<(), DevError> {
    eprintln!("starting the local control plane (kube-apiserver + etcd) in {}", args.dir.display());
    let cp = LocalControlPlane::start(&args.testenv_bin, &args.dir).await?;
    let client = cp.client().await?;
    install_crds(&client).await?;
    let applied = apply_dir(&client, &args.samples).await?;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let settings = crate::controller::Settings::new(crate::cli::default_identity());
    let controller = tokio::spawn(crate::controller::run(
        client.clone(),
        settings,
        crate::provider::Dispatcher::new(crate::provider::simulated::Clouds::new()),
        crate::controller::Handles::default(),
        async move {
            let _ = stopped.await;
        },
    ));

    let kubectl = args.testenv_bin.join("kubectl");
    let kc = cp.kubeconfig.display();
    println!(
        "\nSwitchyard is up: CRDs installed, {applied} sample objects applied from {samples}, controller running.\n\n\
         Try, in another terminal:\n\
         \x20 export KUBECONFIG={kc}\n\
         \x20 export PATH=$PWD/{bin}:$PATH\n\
         \x20 kubectl get computeproviders\n\
         \x20 kubectl get workspaces\n\
         \x20 kubectl patch workspace ws-1 --type merge -p '{{\"spec\":{{\"provider\":\"gcp\"}}}}'\n\
         \x20 kubectl wait --for=condition=Ready workspace/ws-1 --timeout=60s\n\
         \x20 kubectl get workspace ws-1 -o yaml\n\
         \x20 kubectl events --for workspace/ws-1\n\n\
         Ctrl-C stops everything.",
        samples = args.samples.display(),
        bin = kubectl.parent().map(|p| p.display().to_string()).unwrap_or_default(),
    );
    crate::cli::shutdown_signal().await;
    eprintln!("stopping the controller and the control plane");
    let _ = stop.send(());
    let _ = controller.await;
    cp.stop().await
}
