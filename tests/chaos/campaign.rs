//! The seeded campaign: user actions interleaved with faults aimed at whoever holds a claim,
//! then every fault stopped, convergence measured, and every checker run. The seed decides
//! every choice (which action, which workspace, which fault, how long until it is undone);
//! which process a "holder" fault hits is read from the API at that moment.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use switchyard::provider::simulated::Faults;

use super::checks::{self, Violation};
use super::env::{ControllerOpts, Env, calls};
use crate::support::fixtures::{patch_spec, status};

/// `--claim-lease` and `--lease-duration` of every campaign controller.
pub const LEASE: Duration = Duration::from_secs(3);

#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    pub workspaces: usize,
    pub controllers: usize,
    pub providers: usize,
    pub steps: usize,
    /// How long convergence may take once faults stop (provider probes every 15 s, provision
    /// backoff caps at 30 s, a failed stop's retry backs off from 5 s).
    pub converge_bound: Duration,
}

/// What a campaign did and found.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub election: bool,
    pub user_ops: BTreeMap<&'static str, usize>,
    pub faults: BTreeMap<&'static str, usize>,
    pub takeovers: usize,
    pub takeovers_after_quiet: usize,
    pub converged_after: Option<Duration>,
    pub elapsed: Duration,
    pub calls: String,
    pub versions: usize,
    pub violations: Vec<Violation>,
    pub log_dir: String,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "chaos campaign seed {} ({}, {:.1?}):",
            self.seed,
            if self.election { "leader election" } else { "no election" },
            self.elapsed
        )?;
        writeln!(f, "  user operations: {:?}", self.user_ops)?;
        writeln!(f, "  faults: {:?}", self.faults)?;
        writeln!(
            f,
            "  takeovers: {} ({} after faults stopped); {}; {} versions watched",
            self.takeovers, self.takeovers_after_quiet, self.calls, self.versions
        )?;
        match self.converged_after {
            Some(d) => writeln!(f, "  converged {d:.1?} after faults stopped")?,
            None => writeln!(f, "  did not converge")?,
        }
        writeln!(f, "  controller logs: {}", self.log_dir)?;
        if self.violations.is_empty() {
            write!(f, "  no violations")
        } else {
            writeln!(
                f,
                "  {} violation(s) — replay with SWITCHYARD_CHAOS_SEEDS={}:",
                self.violations.len(),
                self.seed
            )?;
            for v in &self.violations {
                writeln!(f, "    {v}")?;
            }
            Ok(())
        }
    }
}

/// Something scheduled to be undone at a later step.
enum Undo {
    Resume(String),
    Replace(String),
    ClearFaults(usize),
    Recreate(String),
}

/// Undos by the step they are due at.
type Schedule = Vec<(usize, Undo)>;

fn bump(map: &mut BTreeMap<&'static str, usize>, key: &'static str) {
    *map.entry(key).or_default() += 1;
}

pub async fn run(cfg: &Config) -> Report {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let election = cfg.seed.is_multiple_of(2);
    let opts = ControllerOpts::new(LEASE, election.then_some(LEASE));
    let mut env = Env::new(&format!("chaos-s{}", cfg.seed), cfg.providers, opts).await;
    let mut report =
        Report { seed: cfg.seed, election, log_dir: env.log_dir.display().to_string(), ..Report::default() };
    for _ in 0..cfg.controllers {
        env.start_controller();
    }
    let names: Vec<String> = (0..cfg.workspaces).map(|i| format!("ws-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        env.create(name, &env.provider(i % cfg.providers)).await;
    }
    if let Err(why) = env.converge(&names, cfg.converge_bound).await {
        report.violations.push(Violation::new("setup", format!("workspaces never became ready: {why:?}")));
        report.elapsed = started.elapsed();
        return report;
    }

    // Every provider answers with some latency of its own, so operations stay in flight long
    // enough for faults to find their holders mid-step; "clearing" a fault returns to it.
    let baseline: Vec<Faults> = (0..cfg.providers)
        .map(|_| Faults { extra_latency: Duration::from_millis(rng.random_range(100..700)), ..Faults::default() })
        .collect();
    for (sim, faults) in env.sims.iter().zip(&baseline) {
        let _ = sim.process.set_faults(faults).await;
    }
    let mut undo: Schedule = Vec::new();
    for step in 0..cfg.steps {
        let (due, later): (Schedule, Schedule) = undo.drain(..).partition(|(at, _)| *at <= step);
        undo = later;
        for (_, u) in due {
            if let Some(again) = undo_one(&mut env, &baseline, u).await {
                undo.push((step + 1, again));
            }
        }
        // Mostly a user action, then often a fault right behind it, while its claim is held.
        if rng.random_bool(0.8) {
            let roll = rng.random_range(0..45);
            act(&mut env, &mut rng, roll, step, &names, &baseline, &mut undo, &mut report).await;
        }
        if rng.random_bool(0.6) {
            let roll = rng.random_range(45..100);
            act(&mut env, &mut rng, roll, step, &names, &baseline, &mut undo, &mut report).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1200))).await;
    }

    // Faults stop: every provider healthy, every controller running, every workspace back.
    for sim in &env.sims {
        let _ = sim.process.set_faults(&Faults::default()).await;
    }
    env.heal_controllers(cfg.controllers);
    for (_, u) in undo.drain(..) {
        if let Undo::Recreate(name) = u {
            recreate_when_gone(&mut env, &name, cfg.converge_bound).await;
        }
    }
    let quiet = SystemTime::now();
    let quiet_at = Instant::now();
    match env.converge(&names, cfg.converge_bound).await {
        Ok(_) => report.converged_after = Some(quiet_at.elapsed()),
        Err(why) => report.violations.push(Violation::new(
            "convergence",
            format!("not converged {:?} after faults stopped: {}", cfg.converge_bound, why.join("; ")),
        )),
    }
    // At rest nothing is written: watch a few leases' worth.
    if report.converged_after.is_some() {
        let rest_from = SystemTime::now();
        tokio::time::sleep(LEASE * 2).await;
        let history = env.watch.history();
        for s in env.states().await {
            let writes = checks::writes_between(&history, &s.uid, rest_from, SystemTime::now());
            if writes > 1 {
                report.violations.push(Violation::new(
                    "hot-loop",
                    format!("{} written {writes} times at rest within {:?}", s.name, LEASE * 2),
                ));
            }
        }
    }
    report.violations.extend(env.end_state().await);
    let (violations, ledger, history) = env.history_violations(Some(quiet)).await;
    report.violations.extend(violations);
    let takeovers = checks::takeovers(&history);
    report.takeovers = takeovers.len();
    report.takeovers_after_quiet = takeovers.iter().filter(|t| t.at >= quiet).count();
    report.calls = calls(&ledger);
    report.versions = history.len();
    report.elapsed = started.elapsed();
    report
}

/// Carries out one undo; returns it again when it must wait for a later step.
async fn undo_one(env: &mut Env, baseline: &[Faults], u: Undo) -> Option<Undo> {
    match u {
        Undo::Resume(identity) => {
            if let Some(c) = env.by_identity(&identity) {
                c.resume();
            }
        }
        Undo::Replace(identity) => {
            if let Some(i) = env.controllers.iter().position(|c| c.identity == identity) {
                env.restart_controller(i).await;
            }
        }
        Undo::ClearFaults(i) => {
            let _ = env.sims[i].process.set_faults(&baseline[i]).await;
        }
        Undo::Recreate(name) => {
            if env.api.get_opt(&name).await.ok().flatten().is_some() {
                return Some(Undo::Recreate(name));
            }
            env.create(&name, &env.provider(0)).await;
        }
    }
    None
}

async fn recreate_when_gone(env: &mut Env, name: &str, bound: Duration) {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if env.api.get_opt(name).await.ok().flatten().is_none() {
            env.create(name, &env.provider(0)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The live, unpaused controller holding some workspace's claim (one chosen by the seed),
/// with that workspace — waiting up to two seconds for a claim to appear — else any live
/// unpaused controller, with none.
async fn target(env: &Env, rng: &mut StdRng, names: &[String]) -> Option<(String, Option<String>)> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut holders: Vec<(String, String)> = Vec::new();
        for name in names {
            if let Ok(ws) = env.api.get(name).await
                && let Some(op) = status(&ws).operation
                && env.controllers.iter().any(|c| c.identity == op.holder && c.alive() && !c.paused)
                && !holders.iter().any(|(h, _)| *h == op.holder)
            {
                holders.push((op.holder, name.clone()));
            }
        }
        if !holders.is_empty() {
            let i = rng.random_range(0..holders.len());
            let (holder, name) = holders.swap_remove(i);
            return Some((holder, Some(name)));
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let candidates: Vec<&String> =
        env.controllers.iter().filter(|c| c.alive() && !c.paused).map(|c| &c.identity).collect();
    (!candidates.is_empty()).then(|| (candidates[rng.random_range(0..candidates.len())].clone(), None))
}

/// Pauses the holder of `name`'s claim and, as the seed says, moves the workspace on or
/// deletes it while the holder sleeps; the holder wakes after longer than a claim lease.
#[allow(clippy::too_many_arguments)]
async fn pause_and_move_on(
    env: &mut Env,
    rng: &mut StdRng,
    step: usize,
    identity: &str,
    held: Option<String>,
    undo: &mut Schedule,
    report: &mut Report,
) {
    let Some(c) = env.by_identity(identity) else { return };
    c.pause();
    bump(&mut report.faults, if held.is_some() { "pause-holder" } else { "pause-other" });
    undo.push((step + rng.random_range(2..=5), Undo::Resume(identity.to_owned())));
    let Some(name) = held else { return };
    let roll = rng.random_range(0..100);
    let Some(ws) = env.api.get_opt(&name).await.ok().flatten() else { return };
    if roll < 50 {
        let elsewhere: Vec<String> =
            (0..env.sims.len()).map(|i| env.provider(i)).filter(|p| *p != ws.spec.provider).collect();
        let to = &elsewhere[rng.random_range(0..elsewhere.len())];
        bump(&mut report.user_ops, "retarget-while-holder-paused");
        patch_spec(&env.api, &name, json!({"provider": to})).await;
    } else if roll < 65 && !undo.iter().any(|(_, u)| matches!(u, Undo::Recreate(n) if *n == name)) {
        bump(&mut report.user_ops, "delete-while-holder-paused");
        env.delete(&name).await;
        undo.push((step + 2, Undo::Recreate(name)));
    }
}

/// The leak recipe, with seeded choices: a workspace switches to a provider whose provisions
/// fail; once its holder has failed one, the holder is paused, the provider heals, the
/// workspace moves on to a third provider, and the holder wakes after a takeover.
#[allow(clippy::too_many_arguments)]
async fn stale_provision_recipe(
    env: &mut Env,
    rng: &mut StdRng,
    step: usize,
    name: &str,
    baseline: &[Faults],
    undo: &mut Schedule,
    report: &mut Report,
) {
    let Some(ws) = env.api.get_opt(name).await.ok().flatten() else { return };
    if ws.metadata.deletion_timestamp.is_some() || status(&ws).operation.is_some() || env.sims.len() < 3 {
        return;
    }
    let others: Vec<usize> = (0..env.sims.len()).filter(|i| env.provider(*i) != ws.spec.provider).collect();
    let q = others[rng.random_range(0..others.len())];
    let down = Faults { fail_provision_always: true, ..baseline[q].clone() };
    let _ = env.sims[q].process.set_faults(&down).await;
    bump(&mut report.faults, "recipe-stale-provision");
    patch_spec(&env.api, name, json!({"provider": env.provider(q), "running": true})).await;
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut holder = None;
    while Instant::now() < deadline && holder.is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        holder = env
            .api
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|ws| status(&ws).operation)
            .filter(|o| o.attempts >= 1)
            .map(|o| o.holder);
    }
    let _ = env.sims[q].process.set_faults(&baseline[q]).await;
    let Some(holder) = holder else { return };
    let Some(c) = env.by_identity(&holder) else { return };
    c.pause();
    undo.push((step + rng.random_range(3..=6), Undo::Resume(holder)));
    let r = others.into_iter().find(|i| *i != q).unwrap_or(q);
    patch_spec(&env.api, name, json!({"provider": env.provider(r)})).await;
}

/// One action: `roll` below 45 is a user action, the rest a fault.
#[allow(clippy::too_many_arguments)]
async fn act(
    env: &mut Env,
    rng: &mut StdRng,
    roll: u32,
    step: usize,
    names: &[String],
    baseline: &[Faults],
    undo: &mut Schedule,
    report: &mut Report,
) {
    let name = &names[rng.random_range(0..names.len())];
    let existing = env.api.get_opt(name).await.ok().flatten().filter(|ws| ws.metadata.deletion_timestamp.is_none());
    let other = rng.random_range(0..env.sims.len());
    match roll {
        0..20 => {
            if existing.is_some() {
                bump(&mut report.user_ops, "switch");
                patch_spec(&env.api, name, json!({"provider": env.provider(other)})).await;
            }
        }
        20..30 => {
            if let Some(ws) = existing {
                bump(&mut report.user_ops, "revert");
                let back = ws.spec.provider.clone();
                let away = env.provider(other);
                patch_spec(&env.api, name, json!({"provider": away})).await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(50..800))).await;
                patch_spec(&env.api, name, json!({"provider": back})).await;
            }
        }
        30..40 => {
            if let Some(ws) = existing {
                bump(&mut report.user_ops, "flip-running");
                patch_spec(&env.api, name, json!({"running": !ws.spec.running})).await;
            }
        }
        40..45 => {
            if existing.is_some() && !undo.iter().any(|(_, u)| matches!(u, Undo::Recreate(n) if n == name)) {
                bump(&mut report.user_ops, "delete-recreate");
                env.delete(name).await;
                undo.push((step + 2, Undo::Recreate(name.clone())));
            }
        }
        45..60 => {
            if let Some((identity, held)) = target(env, rng, names).await {
                pause_and_move_on(env, rng, step, &identity, held, undo, report).await;
            }
        }
        60..67 => {
            if let Some((identity, held)) = target(env, rng, names).await
                && let Some(c) = env.by_identity(&identity)
            {
                bump(&mut report.faults, if held.is_some() { "kill-holder" } else { "kill-other" });
                c.kill().await;
                undo.push((step + rng.random_range(0..=2), Undo::Replace(identity)));
            }
        }
        67..72 => {
            if let Some((identity, held)) = target(env, rng, names).await
                && let Some(i) = env.controllers.iter().position(|c| c.identity == identity && c.alive())
            {
                bump(
                    &mut report.faults,
                    if held.is_some() { "restart-holder-new-identity" } else { "restart-other-new-identity" },
                );
                env.restart_controller(i).await;
            }
        }
        72..90 => {
            let mut lasts = rng.random_range(1..=3);
            let (kind, faults) = match rng.random_range(0..7) {
                0 => {
                    ("provider-errors", Faults { provision_error_rate: 0.5, stop_error_rate: 0.3, ..Faults::default() })
                }
                1 => {
                    ("provider-fail-provision", Faults { fail_provision: rng.random_range(1..=4), ..Faults::default() })
                }
                2 => ("provider-hang", Faults { hang: true, ..Faults::default() }),
                3 => (
                    "provider-lost-responses",
                    Faults { drop_provision_response: rng.random_range(1..=2), ..Faults::default() },
                ),
                4 => {
                    // Long enough, at times, for the provider to be probed Ready=False.
                    lasts = rng.random_range(2..=8);
                    ("provider-refuse-all", Faults { refuse_all: true, ..Faults::default() })
                }
                5 => {
                    lasts = rng.random_range(2..=5);
                    ("provider-provisions-down", Faults { fail_provision_always: true, ..Faults::default() })
                }
                _ => (
                    "provider-latency",
                    Faults { extra_latency: Duration::from_millis(rng.random_range(500..3000)), ..Faults::default() },
                ),
            };
            bump(&mut report.faults, kind);
            let _ = env.sims[other].process.set_faults(&faults).await;
            undo.push((step + lasts, Undo::ClearFaults(other)));
        }
        90..95 => stale_provision_recipe(env, rng, step, name, baseline, undo, report).await,
        _ => {
            bump(&mut report.faults, "provider-kill-restart");
            let sim = &mut env.sims[other];
            let _ = sim.process.kill().await;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
            if let Err(e) = sim.process.restart().await {
                report
                    .violations
                    .push(Violation::new("harness", format!("provider-sim {} did not restart: {e}", sim.name)));
            }
            // A restart forgets faults: back to the provider's own latency.
            let _ = sim.process.set_faults(&baseline[other]).await;
        }
    }
}
