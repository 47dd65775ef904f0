//! `switchyard switch NAME --to PROVIDER [--wait]`: a merge patch of `spec.provider` (never the
//! status: the controller owns it), then, with `--wait`, one line per step of the switch as the
//! controller records it, until Ready on PROVIDER or a clear failure.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};

use super::connect::{Cluster, ClusterArgs};
use super::exit::{CliError, SWITCH_EXIT_CODES, is_not_found, seconds};
use super::progress::{self, Stage, Target};
use crate::api::conditions as cond;
use crate::api::{ComputeProvider, Workspace};

/// Field manager of the CLI's patches, as `kubectl get --show-managed-fields` shows it.
const FIELD_MANAGER: &str = "switchyard-cli";
/// After this long without any controller acting on the change, say so once.
const NO_CONTROLLER_HINT_AFTER: Duration = Duration::from_secs(10);

/// Options of `switchyard switch`.
#[derive(clap::Args, Debug)]
#[command(after_help = SWITCH_EXIT_CODES)]
pub struct SwitchArgs {
    /// The workspace to switch.
    pub name: String,
    /// The ComputeProvider to switch it to.
    #[arg(long, value_name = "PROVIDER", value_parser = dns_label)]
    pub to: String,
    /// Follow the switch step by step until it is Ready on PROVIDER, or fails.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: stop waiting after this long (500ms, 30s, 5m, 1h); the switch goes on.
    #[arg(long, default_value = "5m", value_parser = crate::runtime::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// What the command has seen so far, for the timeout and interrupt messages.
struct Seen {
    started: Instant,
    namespace: String,
    target: Option<Target>,
    stage: Stage,
}

impl Seen {
    /// Prints `line` prefixed with the time since the command started.
    fn say(&self, line: &str) {
        println!("[{:>6}] {line}", seconds(self.started.elapsed()));
    }

    fn follow_hint(&self, name: &str) -> String {
        format!(
            "the switch goes on in the cluster; follow it with: {} status {name} -n {}",
            super::program(),
            self.namespace
        )
    }
}

pub async fn run(args: SwitchArgs) -> Result<(), CliError> {
    // Registered before anything is printed, so a Ctrl-C from here on is ours to report.
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|source| CliError::Io { doing: "listening for Ctrl-C", source })?;
    let mut seen = Seen { started: Instant::now(), namespace: String::new(), target: None, stage: Stage::NotObserved };
    enum End {
        Finished(Result<(), CliError>),
        TimedOut,
        Interrupted,
    }
    let end = tokio::select! {
        result = switch(&args, &mut seen) => End::Finished(result),
        _ = tokio::time::sleep(args.timeout) => End::TimedOut,
        _ = interrupt.recv() => End::Interrupted,
    };
    match end {
        End::Finished(result) => result,
        End::TimedOut => {
            let mut hint = seen.follow_hint(&args.name);
            if seen.stage == Stage::NotObserved && seen.target.is_some() {
                hint = format!("is the switchyard controller running? {hint}");
            }
            Err(CliError::TimedOut {
                after: args.timeout,
                waiting_for: format!("{} to be Ready on {}", args.name, args.to),
                last_seen: seen.stage.summary(),
                hint,
            })
        }
        End::Interrupted => Err(CliError::Interrupted(match seen.target {
            Some(_) => format!("stopped waiting; {}", seen.follow_hint(&args.name)),
            None => "spec.provider was not changed".to_string(),
        })),
    }
}

async fn switch(args: &SwitchArgs, seen: &mut Seen) -> Result<(), CliError> {
    let Cluster { client, namespace } = args.cluster.connect().await?;
    seen.namespace = namespace.clone();
    let api: Api<Workspace> = Api::namespaced(client.clone(), &namespace);
    let name = &args.name;
    let not_found = || CliError::NotFound { namespace: namespace.clone(), name: name.clone() };
    let reading = format!("reading workspace {namespace}/{name}");
    // With --wait, the watch opens before the patch, so no step the controller records after
    // it can be missed; its first item is the workspace as it is now.
    let (ws, versions) = if args.wait {
        let mut versions = watcher::watch_object(api.clone(), name).default_backoff().boxed();
        match versions.next().await {
            Some(Ok(Some(ws))) => (ws, Some(versions)),
            Some(Ok(None)) => return Err(not_found()),
            Some(Err(source)) => return Err(CliError::Watch { doing: reading, source }),
            None => return Err(CliError::Failed(format!("{reading}: the watch ended"))),
        }
    } else {
        (api.get_opt(name).await.map_err(|e| CliError::api(reading, e))?.ok_or_else(not_found)?, None)
    };

    let (target, versions) = if ws.spec.provider == args.to {
        let target = Target { name: name.clone(), provider: args.to.clone(), generation: ws.metadata.generation };
        if let Stage::Ready { .. } = progress::stage(&ws, &target) {
            println!("workspace {name} is already on {}; nothing to switch", args.to);
            return Ok(());
        }
        let Some(versions) = versions else {
            println!("workspace {name} already targets {}; nothing to patch (add --wait to follow it)", args.to);
            return Ok(());
        };
        seen.target = Some(target.clone());
        seen.say(&format!("workspace {name} already targets {}; waiting for it to be Ready", args.to));
        (target, versions)
    } else {
        warn_about_provider(&client, &args.to).await;
        let patch = Patch::Merge(json!({"spec": {"provider": args.to}}));
        let patch_params = PatchParams { field_manager: Some(FIELD_MANAGER.to_string()), ..PatchParams::default() };
        let patched = api.patch(name, &patch_params, &patch).await.map_err(|e| {
            if is_not_found(&e) { not_found() } else { CliError::api(format!("patching {namespace}/{name}"), e) }
        })?;
        let target = Target { name: name.clone(), provider: args.to.clone(), generation: patched.metadata.generation };
        seen.target = Some(target.clone());
        let from = ws.status.as_ref().and_then(|s| s.active_provider.clone()).unwrap_or(ws.spec.provider);
        let Some(versions) = versions else {
            println!("workspace {name}: spec.provider set to {} (was {from}); the controller switches it", args.to);
            println!("follow it with: {} status {name} -n {namespace}", super::program());
            return Ok(());
        };
        let generation = target.generation.map(|g| format!(" (generation {g})")).unwrap_or_default();
        seen.say(&format!("switching {namespace}/{name} from {from} to {}{generation}", args.to));
        (target, versions)
    };
    follow(versions, &target, seen).await
}

/// Versions of one workspace as a watch delivers them (None: it is gone).
type Versions = futures::stream::BoxStream<'static, Result<Option<Workspace>, watcher::Error>>;

/// Reports each new stage the workspace's versions show, until a terminal one.
async fn follow(mut versions: Versions, target: &Target, seen: &mut Seen) -> Result<(), CliError> {
    let mut last_error = None;
    let no_controller_hint = tokio::time::sleep(NO_CONTROLLER_HINT_AFTER);
    tokio::pin!(no_controller_hint);
    let mut hinted = false;
    loop {
        let ws = tokio::select! {
            version = versions.next() => version,
            _ = &mut no_controller_hint, if !hinted => {
                hinted = true;
                if seen.stage == Stage::NotObserved {
                    seen.say("no controller has acted on the change yet; is the switchyard controller running?");
                }
                continue;
            }
        };
        let ws = match ws {
            Some(Ok(Some(ws))) => ws,
            Some(Ok(None)) => return Err(CliError::Failed(format!("workspace {} was deleted", target.name))),
            Some(Err(e)) => {
                // Retried with backoff by the stream; the timeout bounds how long.
                tracing::debug!(error = %e, "watch failed; retrying");
                continue;
            }
            None => return Err(CliError::Failed("the watch on the workspace ended".to_string())),
        };
        let stage = progress::stage(&ws, target);
        if stage != seen.stage {
            for line in stage.lines() {
                seen.say(&line);
            }
            seen.stage = stage.clone();
        }
        let error = progress::last_error(&ws);
        if let Some((attempts, e)) = error.as_ref().filter(|_| error != last_error) {
            seen.say(&format!("attempt {attempts} failed: {e}"));
        }
        last_error = error;
        match stage {
            Stage::Ready { .. } => return Ok(()),
            Stage::Stalled { reason, message } => {
                let back = ws.status.as_ref().and_then(|s| s.active_provider.clone()).filter(|p| *p != target.provider);
                let mut hint = "the controller retries on its own once the cause is fixed".to_string();
                if let Some(back) = back {
                    hint.push_str(&format!("; to go back: {} switch {} --to {back}", super::program(), target.name));
                }
                return Err(CliError::Stalled { name: target.name.clone(), reason, message, hint });
            }
            Stage::Retargeted { provider } => {
                return Err(CliError::Failed(format!(
                    "workspace {} was switched to {provider} by someone else while waiting",
                    target.name
                )));
            }
            Stage::Deleting => return Err(CliError::Failed(format!("workspace {} is being deleted", target.name))),
            Stage::NotObserved | Stage::Operation { .. } | Stage::Waiting { .. } => {}
        }
    }
}

/// Warns up front when the target ComputeProvider is missing or not Ready. The API server
/// accepts any name (a workspace names a provider the way a PVC names a StorageClass), so this
/// is advice: the patch goes ahead, and the controller reports Stalled until it is fixed.
async fn warn_about_provider(client: &kube::Client, name: &str) {
    let providers: Api<ComputeProvider> = Api::all(client.clone());
    match providers.get_opt(name).await {
        Ok(None) => eprintln!(
            "warning: ComputeProvider {name:?} does not exist; the workspace will be Stalled ({}) until it is created",
            cond::ConditionReason::ProviderNotFound
        ),
        Ok(Some(provider)) => {
            let conditions = provider.status.map(|s| s.conditions).unwrap_or_default();
            if let Some(ready) = cond::get(&conditions, cond::READY).filter(|c| c.status != "True") {
                eprintln!("warning: ComputeProvider {name:?} is not Ready ({}): {}", ready.reason, ready.message);
            }
        }
        // Reading providers is advice only (the user may lack RBAC for the cluster-scoped kind).
        Err(e) => tracing::debug!(error = %e, provider = name, "could not read the ComputeProvider"),
    }
}

/// A DNS-1123 label, as `spec.provider` must be (the API server would refuse anything else).
fn dns_label(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 63
        && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-');
    if ok {
        Ok(text.to_string())
    } else {
        Err(format!("{text:?} is not a provider name (lowercase letters, digits and '-', at most 63)"))
    }
}

#[cfg(test)]
mod tests {
    use super::dns_label;

    #[test]
    fn provider_names_are_dns_labels() {
        for good in ["aws", "gcp-2", "a", "0x"] {
            assert_eq!(dns_label(good).as_deref(), Ok(good));
        }
        for bad in ["", "AWS", "-a", "a-", "a_b", "a.b", &"a".repeat(64)] {
            assert!(dns_label(bad).is_err(), "{bad:?}");
        }
    }
}
