//! A seeded, Sieve-style fault campaign over real processes: `switchyard controller` processes
//! (paused with SIGSTOP, resumed, SIGKILLed, restarted under new identities), provider-sim
//! processes registered as ComputeProviders (runtime faults, kill -9 and restart), workspaces
//! switched, reverted, powered and deleted underneath them. Every verdict comes from the
//! providers' ledgers and live instances and from a watch of every workspace version — never
//! from the controller's opinion of itself (DESIGN.md §3).
//!
//! The targeted scenarios replay, fault by fault, the races an independent campaign found;
//! `campaign_short` runs one seed in `make test`; `make chaos SEEDS="1 2 3"` runs the long
//! campaign (`campaign`, ignored by default) once per seed. A violation fails the test and
//! names the seed that replays it: the seed fixes every choice (actions, targets among the
//! current holders, fault kinds, durations), not the machine's timing, so a replay re-runs the
//! same schedule against whatever interleaving the processes produce.
//!
//! ```sh
//! cargo test --test chaos                                  # scenarios, short campaign, checker unit tests
//! cargo test --test chaos chaos::checks                    # checker unit tests only (no cluster)
//! SWITCHYARD_CHAOS_SEED=7 cargo test --test chaos campaign_short -- --nocapture
//! make chaos SEEDS="1 2 3"                                 # long campaign, release build
//! ```
//!
//! Controllers run with a 3 s claim lease (and, for even seeds, leader election with a 3 s
//! Lease); `--inventory-interval`/`--inventory-grace` are passed when `switchyard controller
//! --help` lists them, and `SWITCHYARD_CHAOS_CONTROLLER_ARGS` adds flags. Controller logs go to
//! `target/chaos/<namespace>/<identity>.log`. The checkers (`chaos/checks.rs`): the library's
//! ledger invariants over the merged ledgers (one live instance per workspace at every point,
//! stops, fences, keys), no stale epoch taking effect anywhere after a newer one acted, no call
//! by a caller after it was fenced, every call under a claim the API server recorded, kstatus
//! at every watched version, no hot loop (writes and provider calls per window), no takeover or
//! epoch livelock after faults stop, and the end state: converged, live instances exactly those
//! the statuses name, none for deleted workspaces.

mod support;

mod chaos {
    pub mod campaign;
    pub mod checks;
    pub mod env;
    pub mod watch;
}

use std::time::{Duration, Instant, SystemTime};

use chaos::campaign::{self, Config, LEASE};
use chaos::checks::{self, Violation};
use chaos::env::{ControllerOpts, Env, calls, wait_writes_bound};
use k8s_openapi::api::core::v1::Event as CoreEvent;
use kube::api::{Api, ListParams};
use serde_json::json;
use support::eventually;
use support::fixtures::*;
use switchyard::api::conditions as cond;
use switchyard::api::{ComputeProvider, Step};
use switchyard::provider::simulated::Faults;

/// Generous: two cores shared with builds, providers probed healthy again only every 15 s,
/// provision backoff capped at 30 s.
const CONVERGE: Duration = Duration::from_secs(90);

/// Prints what a scenario found and fails it on any violation.
fn verdict(scenario: &str, env: &Env, started: Instant, notes: &[String], violations: &[Violation]) {
    eprintln!("chaos {scenario} ({:.1?}), logs in {}:", started.elapsed(), env.log_dir.display());
    for n in notes {
        eprintln!("  {n}");
    }
    if violations.is_empty() {
        eprintln!("  no violations");
        return;
    }
    let list: Vec<String> = violations.iter().map(|v| format!("  {v}")).collect();
    panic!("chaos {scenario}: {} violation(s):\n{}", violations.len(), list.join("\n"));
}

/// After `c` was resumed: waits until it has reconciled again (its requeue was due while it
/// slept), then until it and the providers are quiet for two seconds. The verdict is then
/// read from what the providers ledgered, not from how long we waited.
async fn settle(env: &Env, c: usize, reconciles_before: Option<f64>) -> Duration {
    let started = Instant::now();
    let controller = &env.controllers[c];
    let metric = "switchyard_reconciles_total";
    if let Some(before) = reconciles_before {
        let acted = async {
            loop {
                if controller.metric(metric).await.is_some_and(|n| n > before) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        // A workspace it no longer has in its cache is not reconciled again: bounded.
        let _ = tokio::time::timeout(LEASE * 3, acted).await;
    }
    let mut last = (env.ledger().await.len(), controller.metric(metric).await);
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(2) && started.elapsed() < Duration::from_secs(45) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = (env.ledger().await.len(), controller.metric(metric).await);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
    started.elapsed()
}

/// Waits until ComputeProvider `name` reports Ready=`status`.
async fn provider_ready(env: &Env, name: &str, ready: &str) {
    let api: Api<ComputeProvider> = Api::all(env.client.clone());
    eventually(&format!("provider {name} Ready={ready}"), CONVERGE, || async {
        let p = api.get(name).await.ok()?;
        let conditions = p.status.map(|s| s.conditions).unwrap_or_default();
        cond::get(&conditions, cond::READY).filter(|c| c.status == ready).map(|_| ())
    })
    .await
}

/// A controller alone has put `ws` on provider 0; it holds a switch to provider `to` whose
/// first provision failed (the provider refuses provisions until told otherwise).
async fn holding_after_a_failed_provision(env: &mut Env, to: usize) -> usize {
    let x = env.start_controller();
    let a = env.provider(0);
    env.create("ws", &a).await;
    wait_ready_on(&env.api, "ws", &a, CONVERGE).await;
    let always = Faults { fail_provision_always: true, ..Faults::default() };
    env.sims[to].process.set_faults(&always).await.expect("set faults");
    patch_spec(&env.api, "ws", json!({"provider": env.provider(to)})).await;
    let holder = env.controllers[x].identity.clone();
    wait_for(&env.api, "ws", "the holder's provision failed", CONVERGE, |ws| {
        status(ws).operation.is_some_and(|o| o.holder == holder && o.step == Step::OldStopped && o.attempts >= 1)
    })
    .await;
    x
}

/// (a) The leak an independent campaign found: X claims a→t (epoch 2), stops a, its provision
/// on t fails; X is paused; spec moves to u; Y takes the stale claim over (epoch 3), releases
/// t's key and provisions on u; X resumes with its provision on t due. t must refuse it: no
/// second live instance at any point, nothing leaked at the end.
#[tokio::test]
async fn scenario_a_resumed_holder_after_retarget_leaks_nothing() {
    let started = Instant::now();
    let mut env = Env::new("chaos-a", 3, ControllerOpts::new(LEASE, None)).await;
    let (t, u) = (env.provider(1), env.provider(2));
    let x = holding_after_a_failed_provision(&mut env, 1).await;
    let before = env.controllers[x].metric("switchyard_reconciles_total").await;
    env.controllers[x].pause();
    env.sims[1].process.set_faults(&Faults::default()).await.expect("clear faults");
    patch_spec(&env.api, "ws", json!({"provider": u})).await;
    let y = env.start_controller();
    let on_u = wait_ready_on(&env.api, "ws", &u, CONVERGE).await;
    let uid = on_u.metadata.uid.clone().unwrap_or_default();
    let taken = status(&on_u).epoch;

    env.controllers[x].resume();
    let settled = settle(&env, x, before).await;
    let converged = env.converge(&["ws".into()], CONVERGE).await;

    let (mut violations, ledger, history) = env.history_violations(None).await;
    violations.extend(env.end_state().await);
    if let Err(why) = &converged {
        violations.push(Violation::new("convergence", why.join("; ")));
    }
    let x_id = env.controllers[x].identity.clone();
    let after_resume: Vec<String> = ledger
        .iter()
        .filter(|e| e.caller == x_id && e.workspace_uid == uid && e.provider == t && e.epoch < taken)
        .map(|e| format!("{} {} epoch {} -> {:?}", e.provider, e.call, e.epoch, e.outcome))
        .collect();
    let notes = vec![
        format!("{} took over at epoch {taken}; x's calls on t: {after_resume:?}", env.controllers[y].identity),
        format!("x settled {settled:.1?} after resuming; {}; {} versions watched", calls(&ledger), history.len()),
    ];
    verdict("scenario a (resumed holder after retarget)", &env, started, &notes, &violations);
}

/// (b) The holder is paused while its stop on a is in flight (a answers slowly; the stop takes
/// effect at a while the holder sleeps); the user reverts the switch; another instance takes
/// the claim over; the holder resumes. The workspace must end running on a — an instance that
/// is really running, named by its status — with nothing leaked.
#[tokio::test]
async fn scenario_b_holder_paused_in_its_stop_then_reverted() {
    let started = Instant::now();
    let mut env = Env::new("chaos-b", 2, ControllerOpts::new(LEASE, None)).await;
    let (a, b) = (env.provider(0), env.provider(1));
    let x = env.start_controller();
    env.create("ws", &a).await;
    let on_a = wait_ready_on(&env.api, "ws", &a, CONVERGE).await;
    let uid = on_a.metadata.uid.clone().unwrap_or_default();
    let slow = Faults { extra_latency: Duration::from_millis(2500), ..Faults::default() };
    env.sims[0].process.set_faults(&slow).await.expect("set faults");
    patch_spec(&env.api, "ws", json!({"provider": b})).await;
    let holder = env.controllers[x].identity.clone();
    wait_for(&env.api, "ws", "x's switch claimed", CONVERGE, |ws| {
        status(ws).operation.is_some_and(|o| o.holder == holder && o.step == Step::Claimed)
    })
    .await;
    // x looks its instance up, then stops it; a answers each 2.5 s after the call took effect.
    // Once the stop has taken effect, freeze x while it waits for the answer. (Were x slower to
    // be frozen than that, the scenario would test less, never pass wrongly: the verdict is the
    // invariants.)
    let before = env.controllers[x].metric("switchyard_reconciles_total").await;
    let stopped = eventually("x's stop took effect at a", CONVERGE, || async {
        let ledger = env.sims[0].ledger().await;
        ledger.into_iter().find(|e| e.workspace_uid == uid && e.call.to_string() == "stop" && e.caller == holder)
    })
    .await;
    env.controllers[x].pause();
    env.sims[0].process.set_faults(&Faults::default()).await.expect("clear faults");
    patch_spec(&env.api, "ws", json!({"provider": a})).await;
    let y = env.start_controller();
    let converged = env.converge(&["ws".into()], CONVERGE).await;
    env.controllers[x].resume();
    let settled = settle(&env, x, before).await;
    let converged_after_resume = env.converge(&["ws".into()], CONVERGE).await;

    let (mut violations, ledger, _) = env.history_violations(None).await;
    violations.extend(env.end_state().await);
    for (when, c) in [("before x resumed", &converged), ("after x resumed", &converged_after_resume)] {
        if let Err(why) = c {
            violations.push(Violation::new("convergence", format!("{when}: {}", why.join("; "))));
        }
    }
    let notes = vec![
        format!("x's stop at a: {:?} (seq {}); y = {}", stopped.outcome, stopped.seq, env.controllers[y].identity),
        format!("converged {converged:.1?} before x resumed; x settled in {settled:.1?}; {}", calls(&ledger)),
    ];
    verdict("scenario b (paused in stop, reverted)", &env, started, &notes, &violations);
}

/// (c) No hot loop: the holder's target provider goes Ready=False while it waits to provision.
/// A live holder renews its claim so it is not taken over, but a wait is at most a couple of
/// writes: at most 2 writes per half claim lease, over a window of three leases.
#[tokio::test]
async fn scenario_c_waiting_on_an_unready_provider_is_not_a_hot_loop() {
    let started = Instant::now();
    let mut env = Env::new("chaos-c", 2, ControllerOpts::new(LEASE, None)).await;
    let t = env.provider(1);
    holding_after_a_failed_provision(&mut env, 1).await;
    let uid = env.api.get("ws").await.expect("get").metadata.uid.unwrap_or_default();
    let down = Faults { refuse_all: true, ..Faults::default() };
    env.sims[1].process.set_faults(&down).await.expect("set faults");
    provider_ready(&env, &t, "False").await;
    // Count once the holder has seen the provider's condition (bounded: a holder that never
    // says so is still counted).
    let seen = async {
        while !env.api.get("ws").await.is_ok_and(|ws| {
            condition(&ws, cond::STALLED)
                .is_some_and(|(s, r)| s == "True" && r == cond::ConditionReason::ProviderNotReady.as_str())
        }) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let _ = tokio::time::timeout(LEASE * 3, seen).await;
    let window = LEASE * 3;
    let from = SystemTime::now();
    tokio::time::sleep(window).await;
    let to = SystemTime::now();
    let history = env.watch.history();
    let writes = checks::writes_between(&history, &uid, from, to);
    let bound = wait_writes_bound(window, LEASE);
    let during = env.api.get("ws").await.expect("get");
    let stall = condition(&during, cond::STALLED);

    let mut violations = Vec::new();
    if writes > bound {
        violations.push(Violation::new(
            "hot-loop",
            format!("ws written {writes} times in {window:?} while waiting on Ready=False {t} (bound {bound}: 2 per half lease)"),
        ));
    }
    let takeovers = checks::takeovers(&history).len();
    env.sims[1].process.set_faults(&Faults::default()).await.expect("clear faults");
    let cleared = Instant::now();
    let converged = env.converge(&["ws".into()], CONVERGE).await;
    if let Err(why) = &converged {
        violations.push(Violation::new("convergence", why.join("; ")));
    }
    let (more, ledger, _) = env.history_violations(None).await;
    violations.extend(more.into_iter().filter(|v| v.rule != "hot-loop" || writes <= bound));
    violations.extend(env.end_state().await);
    let notes = vec![
        format!(
            "{writes} writes in {window:?} while {t} was Ready=False (bound {bound}); Stalled {stall:?}; {takeovers} takeovers"
        ),
        format!(
            "converged {:.1?} after the provider recovered ({converged:.1?}); {}",
            cleared.elapsed(),
            calls(&ledger)
        ),
    ];
    verdict("scenario c (unready provider)", &env, started, &notes, &violations);
}

/// (d) No takeover livelock: two controllers without election, provisions failing for far
/// longer than the claim lease. The live holder keeps its claim (at most one takeover), and
/// the workspace converges once the provider recovers.
#[tokio::test]
async fn scenario_d_failing_provisions_longer_than_the_lease_cause_no_takeovers() {
    let started = Instant::now();
    let mut env = Env::new("chaos-d", 2, ControllerOpts::new(LEASE, None)).await;
    let (a, t) = (env.provider(0), env.provider(1));
    env.start_controller();
    env.start_controller();
    env.create("ws", &a).await;
    let ws = wait_ready_on(&env.api, "ws", &a, CONVERGE).await;
    let uid = ws.metadata.uid.clone().unwrap_or_default();
    let always = Faults { fail_provision_always: true, ..Faults::default() };
    env.sims[1].process.set_faults(&always).await.expect("set faults");
    patch_spec(&env.api, "ws", json!({"provider": t})).await;
    wait_for(&env.api, "ws", "a provision on t failed", CONVERGE, |ws| {
        status(ws).operation.is_some_and(|o| o.step == Step::OldStopped && o.attempts >= 1)
    })
    .await;
    let from = SystemTime::now();
    // Long enough for backoffs of 1, 2, 4 and 8 s: well past the 3 s lease.
    let window = Duration::from_secs(20);
    tokio::time::sleep(window).await;
    let history = env.watch.history();
    let during: Vec<_> = checks::takeovers(&history).into_iter().filter(|t| t.at >= from).collect();
    let bumps = checks::epoch_bumps(&history, &uid, from);
    let writes = checks::writes_between(&history, &uid, from, SystemTime::now());
    let bound = wait_writes_bound(window, LEASE);
    let provisions = env.ledger().await.iter().filter(|e| e.call.to_string() == "provision" && e.at >= from).count();
    let mut violations = Vec::new();
    if writes > bound {
        violations.push(Violation::new(
            "hot-loop",
            format!("ws written {writes} times in {window:?} of failing provisions (bound {bound}: 2 per half lease)"),
        ));
    }
    if during.len() > 1 || bumps > 1 {
        let chain: Vec<String> = during
            .iter()
            .map(|t| format!("{}@{} -> {}@{}", t.from.holder, t.from.epoch, t.to.holder, t.to.epoch))
            .collect();
        violations.push(Violation::new(
            "takeover-livelock",
            format!("{} takeovers, {bumps} epoch increments of a live holder in {window:?}: {chain:?}", during.len()),
        ));
    }
    env.sims[1].process.set_faults(&Faults::default()).await.expect("clear faults");
    let cleared = SystemTime::now();
    let converged = env.converge(&["ws".into()], CONVERGE).await;
    if let Err(why) = &converged {
        violations.push(Violation::new("convergence", why.join("; ")));
    }
    let (more, ledger, history) = env.history_violations(Some(cleared)).await;
    violations.extend(more);
    violations.extend(env.end_state().await);
    let events = took_over_events(&env, "ws").await;
    let notes = vec![
        format!(
            "in {window:?} of failing provisions: {} takeovers, {bumps} epoch increments, {events} TookOver events in all, \
             {writes} status writes (bound {bound}), {provisions} provision calls",
            during.len()
        ),
        format!(
            "converged {converged:.1?} after the provider recovered; {}; {} versions",
            calls(&ledger),
            history.len()
        ),
    ];
    verdict("scenario d (provision failing past the lease)", &env, started, &notes, &violations);
}

/// TookOver Events recorded for `name`, counting each series' repeats.
async fn took_over_events(env: &Env, name: &str) -> usize {
    use k8s_openapi::api::events::v1::Event;
    let api: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    let list = api.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
    let new: usize = list
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter(|e| e.reason.as_deref() == Some(cond::EventReason::TookOver.as_str()))
        .map(|e| e.series.as_ref().map_or(1, |s| usize::try_from(s.count).unwrap_or(1)))
        .sum();
    if new > 0 {
        return new;
    }
    let core: Api<CoreEvent> = Api::namespaced(env.client.clone(), &env.ns);
    let list = core.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
    list.iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(name)
                && e.reason.as_deref() == Some(cond::EventReason::TookOver.as_str())
        })
        .map(|e| e.count.and_then(|c| usize::try_from(c).ok()).unwrap_or(1))
        .sum()
}

/// (e) Delete while the holder is paused mid-switch (its provision on t due after a failure),
/// then resume it: the deletion completes and no instance is left for the workspace anywhere.
#[tokio::test]
async fn scenario_e_delete_while_the_holder_is_paused_mid_switch() {
    let started = Instant::now();
    let mut env = Env::new("chaos-e", 2, ControllerOpts::new(LEASE, None)).await;
    let x = holding_after_a_failed_provision(&mut env, 1).await;
    let before = env.controllers[x].metric("switchyard_reconciles_total").await;
    env.controllers[x].pause();
    env.sims[1].process.set_faults(&Faults::default()).await.expect("clear faults");
    env.delete("ws").await;
    env.start_controller();
    eventually("ws deleted", CONVERGE, || async { env.api.get_opt("ws").await.ok().flatten().is_none().then_some(()) })
        .await;
    let deleted_after = started.elapsed();
    env.controllers[x].resume();
    let settled = settle(&env, x, before).await;

    let (mut violations, ledger, _) = env.history_violations(None).await;
    violations.extend(env.end_state().await);
    let live = env.live().await;
    let notes = vec![
        format!(
            "deleted at {deleted_after:.1?}; x settled {settled:.1?} after resuming; live instances at the end: {live:?}"
        ),
        calls(&ledger),
    ];
    verdict("scenario e (delete while paused mid-switch)", &env, started, &notes, &violations);
}

fn seeds_from_env(var: &str, default: &[u64]) -> Vec<u64> {
    std::env::var(var)
        .ok()
        .map(|s| s.split([' ', ',']).filter_map(|t| t.trim().parse().ok()).collect::<Vec<u64>>())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

/// One short seeded campaign, in `make test`: 2 controllers, 3 providers, 3 workspaces, 8
/// steps. `SWITCHYARD_CHAOS_SEED` picks the seed.
#[tokio::test]
async fn campaign_short() {
    let seed = seeds_from_env("SWITCHYARD_CHAOS_SEED", &[1])[0];
    let cfg =
        Config { seed, workspaces: 3, controllers: 2, providers: 3, steps: 8, converge_bound: Duration::from_secs(75) };
    let report = campaign::run(&cfg).await;
    eprintln!("{report}");
    assert!(
        report.violations.is_empty(),
        "chaos campaign seed {seed} failed (replay: SWITCHYARD_CHAOS_SEED={seed}):\n{report}"
    );
}

/// The long campaign, once per seed of `SWITCHYARD_CHAOS_SEEDS` (default 1 2 3 4 5): 3
/// controllers, 3 providers, 6 workspaces, 30 steps each. `make chaos SEEDS="1 2 3"`.
#[tokio::test]
#[ignore = "long: run with `make chaos`"]
async fn campaign() {
    let seeds = seeds_from_env("SWITCHYARD_CHAOS_SEEDS", &[1, 2, 3, 4, 5]);
    let mut failed = Vec::new();
    for seed in seeds {
        let cfg = Config {
            seed,
            workspaces: 6,
            controllers: 3,
            providers: 3,
            steps: 30,
            converge_bound: Duration::from_secs(150),
        };
        let report = campaign::run(&cfg).await;
        eprintln!("{report}");
        if !report.violations.is_empty() {
            failed.push(seed);
        }
    }
    assert!(
        failed.is_empty(),
        "chaos campaign failed for seeds {failed:?} (replay: make chaos SEEDS=\"{}\")",
        failed.iter().map(u64::to_string).collect::<Vec<_>>().join(" ")
    );
}
