//! `switchyard bench`: how fast the controller creates and switches N workspaces on a real API
//! server, with how many API writes and how much memory — and how that compares with the most
//! resourceVersion-guarded status writes the same server accepts from a plain client (the
//! ceiling), measured in the same run.
//!
//! The controller runs as a separate process (`switchyard controller`) so that its RSS and CPU
//! can be read from /proc. Latency is observed from outside through a watch (spec write → Ready
//! on the target); write counts come from the API server's own `/metrics`. Numbers are reported,
//! never asserted.

mod ceiling;
mod metrics;
mod plot;
mod process;
pub mod report;
mod track;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tracing::{info, warn};

use crate::api::{ComputeProvider, OperationKind, Workspace};
use crate::tools::dev::{self, DevError, LocalControlPlane};
use process::{ControllerProcess, CpuSample};
pub use report::Report;
use report::{ControllerUsage, PhaseReport, ProfileReport};
use track::Tracker;

/// After the last Ready, let trailing writes land before the metrics are read again.
const WRITE_SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("local control plane: {0}")]
    ControlPlane(#[from] DevError),
    #[error("kubernetes API while trying to {doing}: {source}")]
    Kube {
        doing: String,
        #[source]
        source: kube::Error,
    },
    #[error("start the controller {path}: {source}")]
    SpawnController { path: PathBuf, source: std::io::Error },
    #[error("the controller exited early ({status}); its log: {log}")]
    ControllerExited { status: String, log: PathBuf },
    #[error("read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {what}")]
    Format { path: PathBuf, what: String },
    #[error("write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("build the request for {what}: {detail}")]
    Request { what: &'static str, detail: String },
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("plot {path}: {detail}")]
    Plot { path: PathBuf, detail: String },
    #[error("the watch on namespace {namespace} did not sync within {after:?}")]
    WatchNotSynced { namespace: String, after: Duration },
    #[error("the benchmark did not complete ({why}); the partial report is in {out}")]
    Incomplete { why: String, out: PathBuf },
}

/// Attaches what was being attempted to a kube error.
trait Doing<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, BenchError>;
}

impl<T> Doing<T> for kube::Result<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, BenchError> {
        self.map_err(|source| BenchError::Kube { doing: what(), source })
    }
}

/// Provider latency settings a run is measured under.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Provider calls answer at once: what remains is the controller and the API server.
    Zero,
    /// 200 ms per provision, 100 ms per stop.
    Realistic,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Zero => "zero",
            Profile::Realistic => "realistic",
        }
    }

    /// (provision, stop) latency in milliseconds.
    pub fn latency_ms(self) -> (u64, u64) {
        match self {
            Profile::Zero => (0, 0),
            Profile::Realistic => (200, 100),
        }
    }
}

/// Options of `switchyard bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Workspaces created, then switched, per profile.
    #[arg(long, default_value_t = 1000)]
    pub workspaces: usize,
    /// Provider latency profiles to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Profile::Zero, Profile::Realistic])]
    pub profiles: Vec<Profile>,
    /// Run against this cluster instead of starting a local control plane.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Folder holding `switchyard-testenv` (built by `make testenv`).
    #[arg(long, default_value = "target/testenv/bin")]
    pub testenv_bin: PathBuf,
    /// Folder for the local control plane's data.
    #[arg(long, default_value = "target/bench/control-plane")]
    pub control_plane_dir: PathBuf,
    /// Where bench.json, bench.md, switch-latency.png and the controller logs go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Creates and spec patches the bench keeps in flight at once.
    #[arg(long, default_value_t = 48)]
    pub client_concurrency: usize,
    /// The controller's --concurrency (workspaces reconciled at once).
    #[arg(long, default_value_t = 64)]
    pub controller_concurrency: u16,
    /// Concurrency levels tried for the ceiling; the best is kept.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8, 32, 64, 128])]
    pub ceiling_concurrency: Vec<usize>,
    /// Give up on a phase (all created Ready, all switched Ready, one ceiling level) after this long.
    #[arg(long, default_value = "30m", value_parser = crate::runtime::parse_duration)]
    pub phase_timeout: Duration,
    /// RUST_LOG of the controller process (its log goes to OUT/controller-PROFILE.log).
    #[arg(long, default_value = "info,kube=warn")]
    pub controller_log: String,
    /// The switchyard binary to run the controller from (default: this executable).
    #[arg(long)]
    pub controller_bin: Option<PathBuf>,
}

/// Runs the benchmark, prints the Markdown table and where the files are.
pub async fn main(args: BenchArgs) -> ExitCode {
    match run(&args).await {
        Ok(report) => {
            print!("{}", report::markdown(&report));
            println!("\nwritten: {}", report::files(&args.out).join(", "));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchyard bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What every profile run shares.
struct Env<'a> {
    args: &'a BenchArgs,
    client: Client,
    kubeconfig: PathBuf,
    controller_bin: PathBuf,
    /// Short random id: names of this run never collide with an earlier run on the same cluster.
    run_id: String,
    /// The local control plane's process (kube-apiserver and etcd), when we started it.
    apiserver_pid: Option<u32>,
}

/// The whole benchmark: every profile, then the ceiling; writes the report files.
pub async fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    let started_at = jiff::Timestamp::now();
    std::fs::create_dir_all(&args.out).map_err(|source| BenchError::Write { path: args.out.clone(), source })?;
    let (local, kubeconfig) = match &args.kubeconfig {
        Some(path) => (None, path.clone()),
        None => {
            info!(dir = %args.control_plane_dir.display(), "starting the local control plane");
            let cp = LocalControlPlane::start(&args.testenv_bin, &args.control_plane_dir).await?;
            let kubeconfig = cp.kubeconfig.clone();
            (Some(cp), kubeconfig)
        }
    };
    let client = dev::client_from_kubeconfig(&kubeconfig).await?;
    dev::install_crds(&client).await?;
    let controller_bin = match &args.controller_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe().map_err(|source| BenchError::Read { path: "current_exe".into(), source })?,
    };
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..6].to_string();
    let env = Env {
        args,
        client,
        kubeconfig,
        controller_bin,
        run_id,
        apiserver_pid: local.as_ref().and_then(LocalControlPlane::pid),
    };

    let mut profiles = Vec::new();
    for &profile in &args.profiles {
        profiles.push(run_profile(&env, profile).await?);
    }
    // The ceiling writes to the last profile's workspaces (its controller is stopped by now),
    // as many guarded writes per workspace as the controller needed per switch.
    // Twice: the status writes alone, and a switch's whole request mix (spec patch, status
    // writes, one Event).
    let mut ceilings = Vec::new();
    if let Some(last) = profiles.last() {
        let per_workspace = report::writes_per_switch(&profiles).unwrap_or(3);
        let (levels, timeout) = (&args.ceiling_concurrency, args.phase_timeout);
        for mix in [ceiling::Mix::Status, ceiling::Mix::Full] {
            let measured =
                ceiling::measure(&env.client, &last.namespace, per_workspace, mix, levels, timeout, env.apiserver_pid);
            ceilings.push(measured.await?);
        }
    }
    let mut ceilings = ceilings.into_iter();
    let (ceiling, full_mix) = (ceilings.next(), ceilings.next());
    let report = Report::new(started_at, args, local.is_some(), profiles, ceiling, full_mix);
    report::write_all(&args.out, &report)?;
    if let Some(cp) = local {
        cp.stop().await?;
    }
    match report.incomplete() {
        Some(why) => Err(BenchError::Incomplete { why, out: args.out.clone() }),
        None => Ok(report),
    }
}

/// One profile: its own namespace, providers and controller process; create all, then switch all.
async fn run_profile(env: &Env<'_>, profile: Profile) -> Result<ProfileReport, BenchError> {
    let name = profile.name();
    let n = env.args.workspaces;
    let namespace = format!("bench-{}-{name}", env.run_id);
    let (from, to) = (format!("{namespace}-a"), format!("{namespace}-b"));
    let (provision_ms, stop_ms) = profile.latency_ms();
    info!(profile = name, %namespace, workspaces = n, provision_ms, stop_ms, "profile starting");

    create_namespace(&env.client, &namespace).await?;
    for provider in [&from, &to] {
        create_provider(&env.client, provider, provision_ms, stop_ms).await?;
    }
    let api: Api<Workspace> = Api::namespaced(env.client.clone(), &namespace);
    let tracker = Tracker::start(api.clone(), &namespace).await?;

    let log = env.args.out.join(format!("controller-{name}.log"));
    let mut controller = ControllerProcess::spawn(
        &env.controller_bin,
        &env.kubeconfig,
        &namespace,
        env.args.controller_concurrency,
        &env.args.controller_log,
        log.clone(),
    )?;
    info!(profile = name, pid = controller.pid, log = %log.display(), "controller started");
    controller.wait_ready().await?;
    let start = process::memory(controller.pid)?;

    let names: Vec<String> = (0..n).map(|i| format!("ws-{i:05}")).collect();
    let template = Workspace::builder("template", &from).busybox().build();
    let create = {
        let api = api.clone();
        let spec = Phase { kind: OperationKind::Provision, target: &from, bound: bound(env, provision_ms) };
        run_phase(env, &tracker, &mut controller, spec, &names, move |name| {
            let (api, mut ws) = (api.clone(), template.clone());
            async move {
                ws.metadata.name = Some(name.clone());
                api.create(&PostParams::default(), &ws).await.doing(|| format!("create workspace {name}"))?;
                Ok(())
            }
        })
        .await?
    };
    let cached = process::memory(controller.pid)?;

    let switch = if create.converged == n {
        let api = api.clone();
        let to_name = to.clone();
        let spec = Phase { kind: OperationKind::Switch, target: &to, bound: bound(env, provision_ms + stop_ms) };
        let phase = run_phase(env, &tracker, &mut controller, spec, &names, move |name| {
            let (api, to) = (api.clone(), to_name.clone());
            async move {
                let patch = Patch::Merge(json!({"spec": {"provider": to}}));
                api.patch(&name, &PatchParams::default(), &patch).await.doing(|| format!("switch workspace {name}"))?;
                Ok(())
            }
        })
        .await?;
        Some(phase)
    } else {
        warn!(
            profile = name,
            converged = create.converged,
            workspaces = n,
            "creation did not converge: no switch phase"
        );
        None
    };

    let end = process::memory(controller.pid)?;
    let cpu_seconds = process::cpu_seconds(Some(controller.pid))?;
    controller.stop().await;
    tracker.stop();
    let usage = ControllerUsage::new(start, cached, end, cpu_seconds, n);
    info!(profile = name, peak_rss_kib = usage.peak_rss_kib, cpu_seconds, "profile done");
    Ok(ProfileReport {
        name: name.to_string(),
        provision_latency_ms: provision_ms,
        stop_latency_ms: stop_ms,
        namespace,
        controller_log: log.display().to_string(),
        create,
        switch,
        controller: usage,
        vs_ceiling: None,
        vs_full_mix: None,
    })
}

/// What a phase waits for.
struct Phase<'a> {
    kind: OperationKind,
    target: &'a str,
    /// The most workspaces per second the provider latency allows at the controller's concurrency.
    bound: Option<f64>,
}

fn bound(env: &Env<'_>, latency_ms: u64) -> Option<f64> {
    (latency_ms > 0).then(|| f64::from(env.args.controller_concurrency) * 1000.0 / latency_ms as f64)
}

/// Sends one request per workspace (bounded concurrency), waits until all are Ready on the
/// target, and reads what it cost from the API server's metrics and /proc.
async fn run_phase<F, Fut>(
    env: &Env<'_>,
    tracker: &Tracker,
    controller: &mut ControllerProcess,
    phase: Phase<'_>,
    names: &[String],
    send: F,
) -> Result<PhaseReport, BenchError>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<(), BenchError>>,
{
    tracker.expect(phase.kind, phase.target, names);
    let before = metrics::scrape(&env.client).await?;
    let controller_before = metrics::series(&controller.metrics().await?);
    let cpu_before = CpuSample::take(Some(controller.pid), env.apiserver_pid)?;
    let t0 = Instant::now();
    stream::iter(names.iter().cloned())
        .map(|name| {
            tracker.sent(&name);
            send(name)
        })
        .buffer_unordered(env.args.client_concurrency.max(1))
        .try_collect::<()>()
        .await?;
    let submitted = t0.elapsed();
    info!(phase = ?phase.kind, requests = names.len(), submit_s = submitted.as_secs_f64(), "all requests sent");
    let converged = tracker.wait_all(env.args.phase_timeout.saturating_sub(submitted)).await;
    let cpu = CpuSample::take(Some(controller.pid), env.apiserver_pid)?.since(&cpu_before);
    controller.check_alive()?;
    tokio::time::sleep(WRITE_SETTLE).await;
    let api = metrics::scrape(&env.client).await?.since(&before).api_counts();
    let controller_after = metrics::series(&controller.metrics().await?);
    let mut report = PhaseReport::new(t0, submitted, converged, &tracker.marks(), phase.kind, phase.bound, api, cpu);
    report.controller_metrics = metrics::increase(&controller_after, &controller_before);
    info!(
        phase = ?phase.kind,
        converged,
        seconds = report.seconds,
        per_second = report.per_second,
        status_writes = report.api.status_writes,
        conflicts = report.api.conflicts,
        "phase done"
    );
    Ok(report)
}

async fn create_namespace(client: &Client, name: &str) -> Result<(), BenchError> {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .doing(|| format!("create namespace {name}"))?;
    Ok(())
}

async fn create_provider(client: &Client, name: &str, provision_ms: u64, stop_ms: u64) -> Result<(), BenchError> {
    let provider = ComputeProvider::simulated(name, provision_ms, stop_ms);
    Api::<ComputeProvider>::all(client.clone())
        .create(&PostParams::default(), &provider)
        .await
        .doing(|| format!("create ComputeProvider {name}"))?;
    Ok(())
}

fn read_text(path: &Path) -> Result<String, BenchError> {
    std::fs::read_to_string(path).map_err(|source| BenchError::Read { path: path.to_path_buf(), source })
}
