//! Model check of the switch protocol (DESIGN.md §2, §3) with stateright: explicit-state,
//! breadth-first, over every interleaving of controllers, a user, providers, faults,
//! inventory and time in a bounded scope. Controllers decide with the real `decide` and write
//! the real `status::*` transitions; see tests/model_check/model.rs and docs/model-check.md.
//!
//! `make test` runs the small scopes; `make model-check` the larger one (ignored here).

#[path = "model_check/model.rs"]
mod model;

use std::time::Instant;

use model::{Action, Initial, Log, Rules, Scope, State, SwitchModel, summary};
use stateright::{Checker, Model};

/// The always-properties (a discovery is a counterexample).
const SAFETY: [&str; 7] = [
    "at most one live instance",
    "a claim loser makes no call and no write",
    "no call with a stale epoch accepted past a fence",
    "no instance stopped on behalf of two claims",
    "one key yields at most one instance",
    "no leak once quiescent",
    "converges once faults and the user stop",
];

/// Two controllers, two providers, the workspace running on `a`; the user switches twice.
fn switch_scope() -> Scope {
    Scope {
        controllers: 2,
        providers: 2,
        lag: 2,
        user_actions: 2,
        user_switch: true,
        user_running: false,
        user_delete: false,
        faults: 0,
        crashes: 0,
        ticks: 2,
        stop_attempts: 1,
        initial: Initial::RunningOnA,
        max_writes: 24,
        converge_within: 80,
    }
}

struct Outcome {
    /// Property name → the counterexample, as readable numbered lines.
    found: Vec<(&'static str, Vec<String>)>,
    unique: usize,
}

fn check(name: &str, model: SwitchModel, stop_at_failure: bool, threads: usize) -> Outcome {
    let start = Instant::now();
    let mut builder = model.checker().threads(threads);
    if stop_at_failure {
        builder = builder.finish_when(stateright::HasDiscoveries::AnyFailures);
    }
    let checker = builder.spawn_bfs().join();
    let elapsed = start.elapsed();
    let model = checker.model();
    println!(
        "model check {name} ({:?} rules): {} states explored, {} unique, max depth {}, {:.1}s",
        model.rules,
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        elapsed.as_secs_f64()
    );
    let mut found = Vec::new();
    let discoveries = checker.discoveries();
    for prop in model.properties() {
        let Some(path) = discoveries.get(prop.name) else {
            if !SAFETY.contains(&prop.name) {
                println!("  (never reached: {:?})", prop.name);
            }
            continue;
        };
        if !SAFETY.contains(&prop.name) {
            println!("  reached: {:?} (in {} steps)", prop.name, path.clone().into_actions().len());
            continue;
        }
        let trace = render(model, path.clone().into_vec());
        println!("  COUNTEREXAMPLE to {:?}:", prop.name);
        for line in &trace {
            println!("    {line}");
        }
        found.push((prop.name, trace));
    }
    Outcome { found, unique: checker.unique_state_count() }
}

/// The path as numbered actions, each with what it did.
fn render(model: &SwitchModel, path: Vec<(State, Option<Action>)>) -> Vec<String> {
    let mut lines = Vec::new();
    let mut n = 0;
    for (state, action) in path {
        let Some(action) = action else {
            lines.push(format!("    final: {}", summary(state.latest())));
            let live: Vec<String> =
                state.live().iter().map(|(p, i)| format!("{} on {}", i.id, model::PROVIDERS[*p])).collect();
            lines.push(format!("    live instances: {live:?}"));
            continue;
        };
        n += 1;
        let mut st = state.clone();
        let mut log = Log { on: true, lines: Vec::new() };
        model.apply(&mut st, &action, &mut log);
        let mut text = log.lines.into_iter();
        lines.push(format!("{n:>2}. {}", text.next().unwrap_or_else(|| format!("{action:?}"))));
        for more in text {
            lines.push(format!("    {more}"));
        }
    }
    lines
}

#[test]
#[ignore = "minutes in a debug build: run by make model-check until the scope is cut to fit make test"]
fn shipped_rules_hold_in_a_small_scope() {
    let out = check("switch", SwitchModel::new(switch_scope(), Rules::Shipped), false, 2);
    assert!(out.found.is_empty(), "counterexamples: {:?}", out.found.iter().map(|f| f.0).collect::<Vec<_>>());
    assert!(out.unique > 1000, "the scope explores something");
}

#[test]
#[ignore = "minutes in a debug build: run by make model-check until the scope is cut to fit make test"]
fn pre_fencing_rules_let_a_paused_holder_leak() {
    let out = check("switch", SwitchModel::new(switch_scope(), Rules::PreFencing), false, 2);
    assert!(
        out.found.iter().any(|(name, _)| *name == "at most one live instance"),
        "the pre-fencing rules must show the paused-holder leak; found {:?}",
        out.found.iter().map(|f| f.0).collect::<Vec<_>>()
    );
}

#[test]
fn a_claim_loser_that_carries_on_is_caught() {
    let out = check("switch", SwitchModel::new(switch_scope(), Rules::LoserContinues), true, 2);
    assert!(
        out.found.iter().any(|(name, _)| *name == "a claim loser makes no call and no write"),
        "found {:?}",
        out.found.iter().map(|f| f.0).collect::<Vec<_>>()
    );
}

/// `make model-check`: a larger scope, in a release build.
#[test]
#[ignore]
fn shipped_rules_hold_in_a_larger_scope() {
    let scope = Scope { faults: 1, crashes: 1, ticks: 3, user_running: true, user_delete: true, ..switch_scope() };
    let out = check("large", SwitchModel::new(scope, Rules::Shipped), false, 4);
    assert!(out.found.is_empty(), "counterexamples: {:?}", out.found.iter().map(|f| f.0).collect::<Vec<_>>());
}
