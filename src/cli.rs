//! The `switchyard` command line: one binary, one subcommand per entry point. The user-facing
//! commands (`switch`, `status`) live in `cli/`; the same binary is a kubectl plugin when
//! invoked as `kubectl-switchyard`.

mod connect;
mod exit;
mod ledger;
mod progress;
mod shell;
mod status;
mod switch;

use std::process::ExitCode;

use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::controller::{self, Handles, LeaseSettings, Settings};
use crate::provider::Dispatcher;
use crate::provider::simulated::Clouds;
use crate::runtime::parse_duration;
use crate::runtime::{default_identity, shutdown_signal};

#[derive(Parser, Debug)]
#[command(name = "switchyard", version, about = "Places Workspaces on compute providers and switches them safely")]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t, env = "SWITCHYARD_LOG_FORMAT")]
    pub log_format: crate::telemetry::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// Options of `switchyard controller`.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// This instance's identity in claims (default: pod name or hostname, plus a random suffix).
    #[arg(long, env = "SWITCHYARD_IDENTITY")]
    pub identity: Option<String>,
    /// A claim not renewed for this long may be taken over (e.g. 60s, 2m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub claim_lease: Duration,
    /// Only reconcile workspaces in this namespace (default: all namespaces).
    #[arg(long, env = "SWITCHYARD_NAMESPACE")]
    pub namespace: Option<String>,
    /// Workspaces reconciled at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: u16,
    /// Failed provision attempts before a workspace reports Stalled (it keeps retrying).
    #[arg(long, default_value_t = 3)]
    pub stall_after: i32,
    /// Reconcile only while holding the leader Lease (run this with 2+ replicas).
    #[arg(long)]
    pub leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "switchyard-controller")]
    pub lease_name: String,
    /// Namespace of the leader Lease (default: the pod's namespace, else switchyard-system).
    #[arg(long, env = "POD_NAMESPACE", default_value = "switchyard-system")]
    pub lease_namespace: String,
    /// How long a leader may go without renewing before another replica takes over.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// Address of /metrics, /healthz and /readyz ("" disables).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: String,
    /// Owner identity of the instances this controller creates, and the only ones its
    /// inventory lists (default: the uid of the kube-system namespace, unique per cluster).
    #[arg(long, env = "SWITCHYARD_CLUSTER")]
    pub cluster: Option<String>,
    /// How often the inventory lists every provider for compute no status names ("0" disables).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub inventory_interval: Duration,
    /// How long an instance must stay unnamed before the inventory stops it.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub inventory_grace: Duration,
}

impl ControllerArgs {
    pub fn settings(&self) -> Settings {
        let mut s = Settings::new(self.identity.clone().unwrap_or_else(default_identity));
        s.claim_lease = self.claim_lease;
        s.namespace = self.namespace.clone();
        s.concurrency = self.concurrency;
        s.stall_after = self.stall_after;
        s.inventory_interval = Some(self.inventory_interval).filter(|d| !d.is_zero());
        s.inventory_grace = self.inventory_grace;
        if let Some(cluster) = &self.cluster {
            s.cluster = cluster.clone();
        }
        s.leader_election = self.leader_election.then(|| LeaseSettings {
            namespace: self.lease_namespace.clone(),
            name: self.lease_name.clone(),
            duration: self.lease_duration,
        });
        s
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print every CustomResourceDefinition as YAML.
    Crd,
    /// Run the Workspace controller against the cluster of the current kubeconfig.
    Controller(ControllerArgs),
    /// Run everything locally: a control plane, simulated providers, the controller, samples.
    Dev(crate::tools::dev::DevArgs),
    /// Benchmark the controller against the API server's own limit (see docs/benchmarks.md).
    Bench(crate::tools::bench::BenchArgs),
    /// Serve the simulated cloud over the http provider protocol (docs/provider-guide.md); or,
    /// with `ledger`, show a running provider-sim's ledger.
    ProviderSim(ProviderSimArgs),
    /// Check a provider against the http provider protocol; exits non-zero on any failure.
    ProviderConformance(crate::tools::ConformanceArgs),
    /// Switch a workspace to another provider; with --wait, follow it step by step until Ready.
    Switch(switch::SwitchArgs),
    /// Show workspaces as a table, or one in detail (conditions, operation, last switch).
    Status(status::StatusArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(shell::CompletionArgs),
    /// Print the man page switchyard(1), or write every command's page with --out-dir.
    Man(shell::ManArgs),
}

/// `switchyard provider-sim [OPTIONS]` serves; `switchyard provider-sim ledger …` reads one.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ProviderSimArgs {
    #[command(subcommand)]
    pub action: Option<ProviderSimAction>,
    #[command(flatten)]
    pub serve: Option<crate::tools::provider_sim::SimArgs>,
}

#[derive(Subcommand, Debug)]
pub enum ProviderSimAction {
    /// Print a running provider-sim's ledger: every call, as a table (or JSON lines).
    Ledger(ledger::LedgerArgs),
}

/// The file name under which kubectl finds the plugin (`kubectl switchyard …`).
pub const KUBECTL_PLUGIN: &str = "kubectl-switchyard";

/// How the user called us, for usage lines and hints: `kubectl switchyard` or `switchyard`.
pub fn program() -> &'static str {
    static PROGRAM: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    PROGRAM.get_or_init(|| program_for(std::env::args_os().next().as_deref().map(std::path::Path::new)))
}

fn program_for(argv0: Option<&std::path::Path>) -> &'static str {
    match argv0.and_then(|p| p.file_name()).and_then(|n| n.to_str()) {
        Some(KUBECTL_PLUGIN) => "kubectl switchyard",
        _ => "switchyard",
    }
}

/// Parses the command line (exiting with 2 on a usage error); as a kubectl plugin, usage and
/// help name the command `kubectl switchyard`.
pub fn parse() -> Cli {
    let matches = Cli::command().bin_name(program()).get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

pub async fn main(cli: Cli) -> ExitCode {
    // `switch`, `status`, `completion`, `man` and `provider-sim ledger` talk to people on
    // stdout/stderr: logs only when RUST_LOG asks.
    let user_facing = matches!(
        cli.command,
        Command::Switch(_)
            | Command::Status(_)
            | Command::Completion(_)
            | Command::Man(_)
            | Command::ProviderSim(ProviderSimArgs { action: Some(ProviderSimAction::Ledger(_)), .. })
    );
    // `dev` prints the commands to try: its logs go to a file, so they do not bury them.
    let log_file = match &cli.command {
        Command::Dev(args) => {
            if !args.keep_data {
                // A fresh run starts a fresh log; a missing one is fine.
                let _ = std::fs::remove_file(args.log_file());
            }
            Some(args.log_file())
        }
        _ => None,
    };
    let telemetry = (!user_facing || std::env::var_os("RUST_LOG").is_some())
        .then(|| crate::telemetry::init_to(cli.log_format, log_file.as_deref()));
    let code = run(cli.command).await;
    if let Some(telemetry) = telemetry {
        telemetry.shutdown().await;
    }
    code
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Controller(args) => match run_controller(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard controller: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Crd => match crate::api::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("switchyard crd: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Bench(args) => crate::tools::bench::main(args).await,
        Command::ProviderSim(ProviderSimArgs { action: Some(ProviderSimAction::Ledger(args)), .. }) => {
            match ledger::run(&args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchyard provider-sim ledger: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::ProviderSim(ProviderSimArgs { serve: Some(args), .. }) => {
            match crate::tools::provider_sim::server::run(args, shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchyard provider-sim: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::ProviderSim(_) => {
            eprintln!("switchyard provider-sim: --token-file is required (see --help)");
            ExitCode::from(2)
        }
        Command::ProviderConformance(args) => match crate::tools::conformance::run(&args).await {
            Ok(report) if report.failed() == 0 => ExitCode::SUCCESS,
            Ok(_) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("switchyard provider-conformance: {e}");
                ExitCode::from(2)
            }
        },
        Command::Completion(args) => {
            shell::completion(&args, &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man(args) => match shell::man(&args, &mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard man: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Switch(args) => exit::exit(switch::run(args).await),
        Command::Status(args) => exit::exit(status::run(args).await),
        Command::Dev(args) => match crate::tools::dev::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard dev: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// `switchyard controller`: the controller plus its metrics and health endpoints, until SIGTERM.
async fn run_controller(args: ControllerArgs) -> Result<(), String> {
    let config = kube::Config::infer().await.map_err(|e| format!("no usable kubeconfig or in-cluster config: {e}"))?;
    let client = crate::runtime::client::http2(config).map_err(|e| format!("creating the Kubernetes client: {e}"))?;
    let handles = Handles::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        stop_tx.send_replace(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    if !args.metrics_addr.is_empty() {
        let addr: std::net::SocketAddr =
            args.metrics_addr.parse().map_err(|e| format!("--metrics-addr {:?}: {e}", args.metrics_addr))?;
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("--metrics-addr {addr}: {e}"))?;
        let server = crate::telemetry::serve(
            listener,
            handles.metrics.clone(),
            handles.health.clone(),
            stopped(stop_rx.clone()),
        );
        tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }
    let dispatcher = Dispatcher::new(Clouds::unledgered()).with_client(client.clone());
    let mut settings = args.settings();
    if args.cluster.is_none() {
        match cluster_uid(&client).await {
            Ok(uid) => settings.cluster = uid,
            Err(e) => {
                // Without an identity of our own we could collect another cluster's compute.
                tracing::warn!(error = %e, "cannot read the kube-system namespace's uid: set --cluster; inventory disabled");
                settings.inventory_interval = None;
            }
        }
    }
    controller::run(client, settings, dispatcher, handles, stopped(stop_rx)).await;
    Ok(())
}

/// The uid of the kube-system namespace: the conventional identity of a cluster.
async fn cluster_uid(client: &kube::Client) -> Result<String, kube::Error> {
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    let ns = namespaces.get("kube-system").await?;
    Ok(ns.metadata.uid.unwrap_or_else(|| "default".to_string()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn invoked_as_kubectl_switchyard_it_is_the_kubectl_plugin() {
        assert_eq!(program_for(Some(Path::new("/home/u/bin/kubectl-switchyard"))), "kubectl switchyard");
        assert_eq!(program_for(Some(Path::new("kubectl-switchyard"))), "kubectl switchyard");
        assert_eq!(program_for(Some(Path::new("target/debug/switchyard"))), "switchyard");
        assert_eq!(program_for(None), "switchyard");
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
