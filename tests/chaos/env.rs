//! The actors of a chaos run — `switchyard controller` processes that can be paused, resumed,
//! killed and restarted under a new identity, provider-sim processes registered as
//! ComputeProviders, workspaces in a fresh namespace — and the verdict over all of them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use switchyard::api::Workspace;
use switchyard::api::conditions as cond;
use switchyard::provider::simulated::{LedgerEntry, LiveInstance};
use switchyard::tools::process::{Signal, signal_child};

use super::checks::{self, Observed, Violation, WsState};
use super::watch::Recorder;
use crate::support::fixtures::{status, unique, workspace};
use crate::support::sims::{Sim, live_instances, merged_ledger};
use crate::support::{client, control_plane, namespace, repo_root};

/// No workspace is written more often than this within [`HOT_WINDOW`] at any time: a step is
/// one write, a whole switch (claim, commit, finish, finalizer) four, a retarget two more.
pub const HOT_WRITES: usize = 10;
pub const HOT_WINDOW: Duration = Duration::from_secs(1);
/// No workspace gets more provider calls than this within [`CALL_WINDOW`]: a switch is a few
/// fences, a stop, a lookup and a provision, each tried at most three times by the driver.
pub const CALL_STORM: usize = 30;
pub const CALL_WINDOW: Duration = Duration::from_secs(3);

/// A waiting workspace is written at most twice per half claim lease (a renewal, and the
/// write that ends the wait): the bound for `window`.
pub fn wait_writes_bound(window: Duration, claim_lease: Duration) -> usize {
    let half = (claim_lease / 2).as_millis().max(1);
    2 * usize::try_from(window.as_millis().div_ceil(half)).unwrap_or(usize::MAX)
}

/// How controller processes run.
#[derive(Clone, Debug)]
pub struct ControllerOpts {
    /// `--claim-lease`: short, so takeovers happen.
    pub claim_lease: Duration,
    /// `--leader-election` with this `--lease-duration`, or none.
    pub election: Option<Duration>,
    /// Further flags (see [`default_extra_args`]).
    pub extra: Vec<String>,
}

impl ControllerOpts {
    pub fn new(claim_lease: Duration, election: Option<Duration>) -> Self {
        Self { claim_lease, election, extra: default_extra_args() }
    }
}

fn secs(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// `switchyard controller --help`, read once.
fn controller_help() -> &'static str {
    static HELP: OnceLock<String> = OnceLock::new();
    HELP.get_or_init(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["controller", "--help"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    })
}

/// Inventory reconciliation settings passed to controllers, when the controller has them:
/// (interval, grace).
pub fn inventory() -> Option<(Duration, Duration)> {
    let help = controller_help();
    help.contains("--inventory-interval").then(|| {
        let grace = if help.contains("--inventory-grace") { Duration::from_secs(4) } else { Duration::ZERO };
        (Duration::from_secs(2), grace)
    })
}

/// Flags every controller of a run gets: inventory settings the binary knows, then whatever
/// `SWITCHYARD_CHAOS_CONTROLLER_ARGS` adds (split on whitespace).
pub fn default_extra_args() -> Vec<String> {
    let mut args = Vec::new();
    if let Some((interval, grace)) = inventory() {
        args.extend(["--inventory-interval".to_string(), secs(interval)]);
        if !grace.is_zero() {
            args.extend(["--inventory-grace".to_string(), secs(grace)]);
        }
    }
    if let Ok(more) = std::env::var("SWITCHYARD_CHAOS_CONTROLLER_ARGS") {
        args.extend(more.split_whitespace().map(str::to_owned));
    }
    args
}

/// How long a leak may take to be cleaned up after everything converged: the inventory's
/// interval and grace (with slack for a busy machine), or nothing without an inventory.
pub fn leak_grace() -> Duration {
    inventory().map_or(Duration::ZERO, |(interval, grace)| interval * 2 + grace + Duration::from_secs(10))
}

/// A `switchyard controller` process. Dropping it kills the process.
pub struct Controller {
    pub identity: String,
    child: Option<tokio::process::Child>,
    pub metrics: SocketAddr,
    pub paused: bool,
}

impl Controller {
    pub fn start(identity: &str, ns: &str, opts: &ControllerOpts, log_dir: &Path) -> Self {
        let metrics = free_port();
        let log = log_dir.join(format!("{identity}.log"));
        let file = std::fs::File::create(&log).expect("controller log file");
        let mut args: Vec<String> = vec![
            "controller".into(),
            "--identity".into(),
            identity.into(),
            "--namespace".into(),
            ns.into(),
            "--metrics-addr".into(),
            metrics.to_string(),
            "--claim-lease".into(),
            secs(opts.claim_lease),
        ];
        if let Some(lease) = opts.election {
            args.extend(
                ["--leader-election", "--lease-name", "chaos", "--lease-namespace", ns, "--lease-duration"]
                    .map(str::to_owned),
            );
            args.push(secs(lease));
        }
        args.extend(opts.extra.iter().cloned());
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(&args)
            .env("KUBECONFIG", &control_plane().kubeconfig)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info,kube=warn".into()))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("start a controller process");
        Self { identity: identity.to_owned(), child: Some(child), metrics, paused: false }
    }

    /// Not killed (it may be paused).
    pub fn alive(&self) -> bool {
        self.child.is_some()
    }

    fn signal(&self, signal: Signal) {
        if let Some(child) = &self.child {
            let _ = signal_child(child, signal);
        }
    }

    /// SIGSTOP: the process freezes wherever it is, calls and sockets in flight.
    pub fn pause(&mut self) {
        self.signal(Signal::STOP);
        self.paused = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        self.signal(Signal::CONT);
        self.paused = false;
    }

    /// SIGKILL, and wait for the exit.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        self.paused = false;
    }

    /// A sample of `/metrics` (e.g. `switchyard_reconciles_total`), if the process answers.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = http_get(self.metrics, "/metrics").await?;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr")
}

async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        response.starts_with("HTTP/1.1 200").then_some(response)
    };
    tokio::time::timeout(Duration::from_secs(2), fetch).await.ok().flatten()
}

/// One chaos run's world.
pub struct Env {
    pub label: String,
    pub client: Client,
    pub ns: String,
    pub api: Api<Workspace>,
    pub sims: Vec<Sim>,
    pub controllers: Vec<Controller>,
    pub watch: Recorder,
    pub opts: ControllerOpts,
    pub log_dir: PathBuf,
    /// uids of workspaces deleted during the run.
    pub deleted: Vec<String>,
    started: u32,
}

impl Env {
    /// A fresh namespace watched from the start, and `providers` provider-sims registered as
    /// ComputeProviders. No controller yet.
    pub async fn new(label: &str, providers: usize, opts: ControllerOpts) -> Self {
        let client = client().await;
        let ns = namespace(&client, label).await;
        let api: Api<Workspace> = Api::namespaced(client.clone(), &ns);
        let watch = Recorder::start(api.clone());
        let mut sims = Vec::new();
        for i in 0..providers {
            sims.push(Sim::provider(&client, &ns, &unique(&format!("{label}-p{i}"))).await);
        }
        let log_dir = repo_root().join("target/chaos").join(&ns);
        std::fs::create_dir_all(&log_dir).expect("log dir");
        Self {
            label: label.into(),
            client,
            ns,
            api,
            sims,
            controllers: Vec::new(),
            watch,
            opts,
            log_dir,
            deleted: Vec::new(),
            started: 0,
        }
    }

    pub fn provider(&self, i: usize) -> String {
        self.sims[i].name.clone()
    }

    /// Starts a controller process under a new identity; its index.
    pub fn start_controller(&mut self) -> usize {
        self.started += 1;
        let identity = format!("{}-c{}", self.label, self.started);
        self.controllers.push(Controller::start(&identity, &self.ns, &self.opts, &self.log_dir));
        self.controllers.len() - 1
    }

    pub fn by_identity(&mut self, identity: &str) -> Option<&mut Controller> {
        self.controllers.iter_mut().find(|c| c.identity == identity && c.alive())
    }

    /// Kills controller `i` and starts a replacement under a new identity.
    pub async fn restart_controller(&mut self, i: usize) -> usize {
        self.controllers[i].kill().await;
        self.start_controller()
    }

    /// Resumes every paused controller and replaces every killed one, so `alive` run.
    pub fn heal_controllers(&mut self, alive: usize) {
        for c in self.controllers.iter_mut().filter(|c| c.paused) {
            c.resume();
        }
        while self.controllers.iter().filter(|c| c.alive()).count() < alive {
            self.start_controller();
        }
    }

    pub async fn create(&self, name: &str, provider: &str) -> Workspace {
        self.api.create(&PostParams::default(), &workspace(name, provider)).await.expect("create workspace")
    }

    /// Starts deleting `name`; records its uid.
    pub async fn delete(&mut self, name: &str) {
        if let Ok(ws) = self.api.get(name).await {
            self.deleted.extend(ws.uid());
            let _ = self.api.delete(name, &DeleteParams::default()).await;
        }
    }

    pub async fn ledger(&self) -> Vec<LedgerEntry> {
        merged_ledger(&self.sims.iter().collect::<Vec<_>>()).await
    }

    pub async fn live(&self) -> Vec<LiveInstance> {
        live_instances(&self.sims.iter().collect::<Vec<_>>()).await
    }

    pub async fn states(&self) -> Vec<WsState> {
        let list = self.api.list(&ListParams::default()).await.expect("list workspaces");
        list.items.iter().filter(|ws| ws.metadata.deletion_timestamp.is_none()).map(ws_state).collect()
    }

    /// Waits until every workspace named in `expected` exists and has converged (DESIGN.md
    /// §3.5), at most `bound`; how long it took, or why not.
    pub async fn converge(&self, expected: &[String], bound: Duration) -> Result<Duration, Vec<String>> {
        let started = Instant::now();
        loop {
            let states = self.states().await;
            let mut why: Vec<String> = states.iter().filter_map(WsState::unconverged).collect();
            why.extend(
                expected.iter().filter(|n| !states.iter().any(|s| s.name == **n)).map(|n| format!("{n}: missing")),
            );
            if why.is_empty() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > bound {
                return Err(why);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The end state (DESIGN.md §3.5, §3.6) from the providers' side; leaks get
    /// [`leak_grace`] to be cleaned up by the inventory, when the controller has one.
    pub async fn end_state(&self) -> Vec<Violation> {
        let deadline = Instant::now() + leak_grace();
        loop {
            let v = checks::end_state(&self.states().await, &self.live().await, &self.deleted);
            if v.is_empty() || Instant::now() >= deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Every history checker over the merged ledger and the watch: DESIGN.md §3.1–3.4, 3.7,
    /// 3.8 (hot loops anywhere; takeovers after `quiet_since`, when faults had stopped).
    pub async fn history_violations(
        &self,
        quiet_since: Option<SystemTime>,
    ) -> (Vec<Violation>, Vec<LedgerEntry>, Vec<Observed>) {
        let ledger = self.ledger().await;
        let history = self.watch.history();
        let mut v = checks::ledger_invariants(&ledger);
        v.extend(checks::stale_effects(&ledger));
        v.extend(checks::fenced_callers_stay_silent(&ledger));
        v.extend(checks::calls_under_held_claims(&ledger, &history));
        v.extend(checks::kstatus(&history));
        v.extend(checks::hot_loops(&history, HOT_WINDOW, HOT_WRITES));
        v.extend(checks::call_storms(&ledger, CALL_WINDOW, CALL_STORM));
        if let Some(since) = quiet_since {
            v.extend(checks::takeover_livelock(&history, since, 1));
            // At most: a takeover of a dead holder's claim, an abort's fresh claim, one more.
            v.extend(checks::epoch_livelock(&history, since, 3));
        }
        (v, ledger, history)
    }
}

/// What convergence asks of one workspace.
pub fn ws_state(ws: &Workspace) -> WsState {
    let s = status(ws);
    WsState {
        name: ws.name_any(),
        uid: ws.uid().unwrap_or_default(),
        provider: ws.spec.provider.clone(),
        running: ws.spec.running,
        active: s.active_provider.clone(),
        instance: s.instance.as_ref().map(|i| (i.provider.clone(), i.id.clone())),
        operation: s.operation.is_some(),
        ready: cond::is_true(&s.conditions, cond::READY),
        current: s.observed_generation == ws.metadata.generation,
    }
}

/// "N calls (P provisions, S stops, L lookups, F fenced, other)".
pub fn calls(ledger: &[LedgerEntry]) -> String {
    let count = |k: &str| ledger.iter().filter(|e| e.call.to_string() == k).count();
    let fenced =
        ledger.iter().filter(|e| matches!(e.outcome, switchyard::provider::simulated::Outcome::Fenced { .. })).count();
    let other = ledger.len() - count("provision") - count("stop") - count("lookup");
    format!(
        "{} provider calls ({} provisions, {} stops, {} lookups, {other} other; {fenced} fenced)",
        ledger.len(),
        count("provision"),
        count("stop"),
        count("lookup")
    )
}
