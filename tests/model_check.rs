//! Model check of the switch protocol (DESIGN.md §2, §3) with stateright: explicit-state,
//! breadth-first, over every interleaving of controllers, a user, providers, faults,
//! inventory and time in a bounded scope. Controllers decide with the real `decide` and write
//! the real `status::*` transitions; see tests/model_check/model.rs and docs/model-check.md.
//!
//! `make test` runs the small scopes (debug build, seconds); `make model-check` the larger ones
//! (ignored here, release build, minutes).

#[path = "model_check/model.rs"]
mod model;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use model::{Action, Initial, Log, Rules, Scope, State, SwitchModel};
use stateright::{Checker, Model};

/// The always-properties (a discovery is a counterexample).
const SAFETY: [&str; 8] = [
    "at most one live instance",
    "a claim loser makes no call and no write",
    "no call with a stale epoch accepted past a fence",
    "no instance stopped on behalf of two claims",
    "one key yields at most one instance",
    "no call accepted under a finished operation",
    "no leak once quiescent",
    "converges once faults and the user stop",
];

/// Two controllers, two providers, the workspace running on `a`, caches up to two versions
/// behind; the user switches twice (to `b`, and back to `a`), no faults, no crashes.
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
        lost_answers: 0,
        crashes: 0,
        ticks: 2,
        stop_attempts: 1,
        initial: Initial::RunningOnA,
        max_writes: 24,
        converge_within: 80,
    }
}

/// `make test`'s scope for the shipped rules: as `switch_scope`, with one user switch. The
/// switch back takes a debug build over a minute (`make model-check` runs it).
fn small_scope() -> Scope {
    Scope { user_actions: 1, ..switch_scope() }
}

/// `make test`'s scope for status writes whose answer is lost: as `small_scope`, with one such
/// write, and caches at most one version behind (enough for a cache to show the version of our
/// previous write while the one whose answer was lost has landed).
fn unanswered_scope() -> Scope {
    Scope { lag: 1, lost_answers: 1, ..small_scope() }
}

/// `make model-check`'s widest scope: faults, a crash, a third tick, and every user action.
fn large_scope() -> Scope {
    Scope { faults: 1, crashes: 1, ticks: 3, user_running: true, user_delete: true, ..switch_scope() }
}

/// When a check may stop before it has explored its whole scope.
enum Until {
    /// Explore everything (the verdict covers the whole scope).
    Exhausted,
    /// Stop at the first counterexample to any safety property.
    AnyFailure,
    /// Stop at the first counterexample to this property.
    Found(&'static str),
}

struct Outcome {
    /// Property name → the counterexample, as readable numbered lines.
    found: Vec<(&'static str, Vec<String>)>,
    unique: usize,
    /// The whole scope was explored (no early stop, no timeout).
    complete: bool,
}

impl Outcome {
    fn names(&self) -> Vec<&'static str> {
        self.found.iter().map(|f| f.0).collect()
    }
}

fn describe(scope: &Scope) -> String {
    let mut user = Vec::new();
    if scope.user_switch {
        user.push("switch");
    }
    if scope.user_running {
        user.push("running");
    }
    if scope.user_delete {
        user.push("delete");
    }
    format!(
        "{} controllers, {} providers, watch lag {}, {} user action(s) of [{}], {} fault(s), {} crash(es), \
         {} lost answer(s) of status writes, {} ticks of {}s, writes <= {}",
        scope.controllers,
        scope.providers,
        scope.lag,
        scope.user_actions,
        user.join(", "),
        scope.faults,
        scope.crashes,
        scope.lost_answers,
        scope.ticks,
        model::TICK_SECS,
        scope.max_writes
    )
}

fn check(name: &str, model: SwitchModel, until: Until, timeout: Option<Duration>) -> Outcome {
    // One block per check, printed at once: the checks of `make test` run in parallel.
    // A leading newline: the harness prints "test <name> ... " without one.
    let mut out = String::from("\n");
    let _ = writeln!(out, "== model check {name}: {:?} rules", model.rules);
    let _ = writeln!(out, "   scope: {}", describe(&model.scope));
    let start = Instant::now();
    let mut builder = model.checker().threads(2);
    let early = !matches!(until, Until::Exhausted);
    match until {
        Until::Exhausted => {}
        Until::AnyFailure => builder = builder.finish_when(stateright::HasDiscoveries::AnyFailures),
        Until::Found(p) => builder = builder.finish_when(stateright::HasDiscoveries::AnyOf([p].into())),
    }
    if let Some(t) = timeout {
        builder = builder.timeout(t);
    }
    let checker = builder.spawn_bfs().join();
    let elapsed = start.elapsed();
    let model = checker.model();
    let timed_out = timeout.is_some_and(|t| elapsed >= t);
    let _ = writeln!(
        out,
        "   states: {} unique ({} generated), max depth {}, {:.1}s{}",
        checker.unique_state_count(),
        checker.state_count(),
        checker.max_depth(),
        elapsed.as_secs_f64(),
        if timed_out { " (timed out: the scope was NOT exhausted)" } else { "" }
    );
    let mut found = Vec::new();
    let mut reached = Vec::new();
    let mut unreached = Vec::new();
    let discoveries = checker.discoveries();
    for prop in model.properties() {
        let Some(path) = discoveries.get(prop.name) else {
            if !SAFETY.contains(&prop.name) {
                unreached.push(prop.name);
            }
            continue;
        };
        if !SAFETY.contains(&prop.name) {
            reached.push(prop.name.to_string());
            continue;
        }
        found.push((prop.name, path.clone().into_actions().len(), render(model, path.clone().into_vec())));
    }
    // A check that stopped at its first counterexample has not seen the rest of its scope.
    let complete = !timed_out && (!early || found.is_empty());
    let _ =
        writeln!(out, "   sanity, reached: {}", if reached.is_empty() { "nothing".into() } else { reached.join("; ") });
    if !unreached.is_empty() {
        let _ = writeln!(out, "   sanity, never reached: {}", unreached.join("; "));
    }
    if found.is_empty() {
        let _ = writeln!(
            out,
            "   verdict: no counterexample to the {} safety properties{}",
            SAFETY.len(),
            if complete { " in the whole scope" } else { " in the part explored" }
        );
    } else {
        let names: Vec<&str> = found.iter().map(|f| f.0).collect();
        let _ = writeln!(
            out,
            "   verdict: COUNTEREXAMPLE to {names:?}{}",
            if early { " (stopped at the first)" } else { "" }
        );
    }
    for (prop, steps, trace) in &found {
        let _ = writeln!(out, "   counterexample to {prop:?}, {steps} steps:");
        for line in trace {
            let _ = writeln!(out, "     {line}");
        }
    }
    println!("{out}");
    Outcome {
        found: found.into_iter().map(|(p, _, t)| (p, t)).collect(),
        unique: checker.unique_state_count(),
        complete,
    }
}

/// The path as numbered steps: the actor and action, what it did, and the state it left.
fn render(model: &SwitchModel, path: Vec<(State, Option<Action>)>) -> Vec<String> {
    let mut lines = Vec::new();
    let mut n = 0;
    for (state, action) in path {
        let Some(action) = action else { continue };
        n += 1;
        let mut st = state.clone();
        let mut log = Log { on: true, lines: Vec::new() };
        model.apply(&mut st, &action, &mut log);
        let mut text = log.lines.into_iter();
        lines.push(format!("{n:>2}. {}", text.next().unwrap_or_else(|| format!("{action:?}"))));
        for more in text {
            lines.push(format!("      {more}"));
        }
        lines.push(format!("      ⇒ {}", model::brief(&st)));
    }
    lines
}

/// Checks the shipped rules over the whole of `scope`: no counterexample, nothing left out.
fn shipped_rules_hold(name: &str, scope: Scope) -> Outcome {
    let out = check(name, SwitchModel::new(scope, Rules::Shipped), Until::Exhausted, None);
    assert!(out.found.is_empty(), "counterexamples: {:?}", out.names());
    assert!(out.complete, "the whole scope is explored");
    out
}

#[test]
fn shipped_rules_hold_in_a_small_scope() {
    let out = shipped_rules_hold("small (make test)", small_scope());
    assert!(out.unique > 1000, "the scope is not trivial");
}

#[test]
fn shipped_rules_hold_with_a_lost_answer() {
    let out = shipped_rules_hold("lost answer (make test)", unanswered_scope());
    assert!(out.unique > 1000, "the scope is not trivial");
}

/// The paused holder's leak needs the switch back (A→B→A): the smallest scope that has it.
#[test]
fn pre_fencing_rules_let_a_paused_holder_leak() {
    // Without inventory nothing ever collects the leak, so convergence is not asked for here.
    let scope = Scope { converge_within: 0, ..switch_scope() };
    let leak = "at most one live instance";
    let out = check("pre-fencing (make test)", SwitchModel::new(scope, Rules::PreFencing), Until::Found(leak), None);
    assert!(
        out.names().contains(&leak),
        "the pre-fencing rules must show the paused-holder leak; found {:?}",
        out.names()
    );
}

/// The rules before `Floor::unsure`: a write that finishes the operation lands, its answer is
/// lost, and the next reconcile acts on the cached copy from before it, calling a provider
/// again under the operation that write finished.
#[test]
fn pre_unsure_rules_call_again_after_a_lost_answer() {
    finds_a_call_under_a_finished_operation("pre-unsure (make test)", Rules::PreUnsure);
}

/// `Floor::unsure` alone: the reconcile after the lost answer reads afresh, but a later one is
/// handed the older cached copy and, with nothing remembered of the read, acts on it.
#[test]
fn a_read_not_remembered_lets_an_older_copy_call_again() {
    finds_a_call_under_a_finished_operation("read not remembered (make test)", Rules::ReadNotRemembered);
}

fn finds_a_call_under_a_finished_operation(name: &str, rules: Rules) {
    let repeat = "no call accepted under a finished operation";
    let out = check(name, SwitchModel::new(unanswered_scope(), rules), Until::Found(repeat), None);
    assert!(out.names().contains(&repeat), "found {:?}", out.names());
}

#[test]
fn a_claim_loser_that_carries_on_is_caught() {
    let model = SwitchModel::new(small_scope(), Rules::LoserContinues);
    let out = check("mutation: a claim loser carries on (make test)", model, Until::AnyFailure, None);
    assert!(out.names().contains(&"a claim loser makes no call and no write"), "found {:?}", out.names());
}

/// `make model-check`: the shipped rules with the switch back (A→B→A), exhaustively.
#[test]
#[ignore = "a larger scope: make model-check runs it in a release build"]
fn shipped_rules_hold_with_a_switch_back() {
    shipped_rules_hold("switch back (make model-check)", switch_scope());
}

/// `make model-check`: the shipped rules with the switch back and a lost answer, exhaustively.
#[test]
#[ignore = "a larger scope: make model-check runs it in a release build"]
fn shipped_rules_hold_with_a_lost_answer_and_a_switch_back() {
    shipped_rules_hold("lost answer, switch back (make model-check)", Scope { lost_answers: 1, ..switch_scope() });
}

/// `make model-check`: the pre-fencing rules over the whole switch-back scope, every counterexample.
#[test]
#[ignore = "a larger scope: make model-check runs it in a release build"]
fn pre_fencing_rules_fail_in_the_switch_back_scope() {
    let out = check(
        "pre-fencing, exhaustive (make model-check)",
        SwitchModel::new(Scope { converge_within: 0, ..switch_scope() }, Rules::PreFencing),
        Until::Exhausted,
        None,
    );
    assert!(out.names().contains(&"at most one live instance"), "found {:?}", out.names());
}

/// `make model-check`: faults, a crash, a third tick and every user action. Bounded by time:
/// the verdict line says whether the scope was exhausted. It finds a convergence
/// counterexample in the shipped rules (docs/model-check.md, "Bugs found").
#[test]
#[ignore = "a larger scope: make model-check runs it in a release build"]
fn shipped_rules_hold_in_a_larger_scope() {
    let secs = std::env::var("MODEL_CHECK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    let model = SwitchModel::new(large_scope(), Rules::Shipped);
    let out = check("large (make model-check)", model, Until::Exhausted, Some(Duration::from_secs(secs)));
    assert!(out.found.is_empty(), "counterexamples: {:?}", out.names());
}
