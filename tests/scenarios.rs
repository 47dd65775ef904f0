//! The switch protocol's race, crash and fault scenarios, each run twice against the real API
//! server: `in_process::*` with providers simulated in this process, and `over_http::*` with
//! `switchyard provider-sim` processes reached over the HTTP provider protocol (real TCP, a
//! bearer token from a Secret). Each is written once against `support::scenario::Scenario`,
//! and checks DESIGN.md §3 from the providers' ledgers, merged into one history.
//!
//! Scenarios only one transport can express live beside their transport: `tests/controller.rs`
//! (in process: a clock driven by the ledger, a provider deleted and recreated, compute made by
//! hand) and `tests/provider_e2e.rs` (over HTTP: a provider process killed, bad credentials,
//! controller processes).

mod support;

use std::time::Instant;

use kube::api::PostParams;
use support::fixtures::*;
use support::scenario::*;
use support::*;
use switchyard::api::Step;
use switchyard::api::conditions as cond;
use switchyard::controller::FailPoint;
use switchyard::provider::simulated::{Call, Faults, LedgerEntry, Outcome};
use switchyard::telemetry::SwitchLabels;

/// Each scenario `name(Transport)` as two tests, `in_process::name` and `over_http::name`.
macro_rules! on_both_transports {
    ($($name:ident),* $(,)?) => {
        mod in_process {
            $(#[tokio::test] async fn $name() { super::$name(super::Transport::InProcess).await })*
        }
        mod over_http {
            $(#[tokio::test] async fn $name() { super::$name(super::Transport::Http).await })*
        }
    };
}

on_both_transports!(
    switch_stops_a_before_creating_on_b,
    two_instances_race_on_many_workspaces,
    crash_at_every_step_converges_with_one_instance,
    lost_provision_answer_yields_one_instance,
    stop_failure_releases_the_claim_and_recovers,
    provision_failure_is_retried_and_visible,
    reverted_and_retargeted_switches,
    delete_at_every_step_leaves_nothing,
    a_paused_holder_cannot_create_compute_after_a_takeover,
    paused_ex_holder_is_fenced_by_the_provider,
    paused_ex_holder_makes_no_write_after_a_takeover,
);

/// The switch: stop on a strictly before the create on b, both under one claim, in at most
/// three status writes; outcomes (not progress) are Events.
async fn switch_stops_a_before_creating_on_b(t: Transport) {
    let started = Instant::now();
    let mut s = Scenario::new(t, "sc-switch").await;
    let x = s.start("switch-x");
    s.api.create(&PostParams::default(), &workspace("ws", &s.a)).await.expect("create");
    let running = wait_ready_on(&s.api, "ws", &s.a, CONVERGE).await;
    s.uid = running.metadata.uid.clone().expect("uid");
    let first = status(&running).instance.expect("instance on a");

    // Count status writes from the API server's side: every version after the spec patch.
    let mut versions = Versions::of(&s.api, "ws").await;
    switch_with_kubectl(&s.ns, "ws", &s.b);
    let seen = versions.until(CONVERGE, |ws| ws.settled_on(&s.b)).await;
    // Versions before our patch, then the spec patch itself, then the status writes.
    let patch = seen.iter().position(|ws| ws.spec.provider == s.b).expect("the spec patch");
    let status_writes = seen.len() - patch - 1;
    let done = seen.last().expect("settled on b").clone();
    assert!(status_writes <= 3, "the switch took {status_writes} status writes");
    let second = status(&done).instance.expect("instance on b");
    let last = status(&done).last_switch.expect("lastSwitch");
    assert_eq!((last.from.as_str(), last.to.as_str()), (s.a.as_str(), s.b.as_str()));

    // From the merged ledger: the stop on a strictly before the create on b, one claim.
    let ledger = s.ledger().await;
    let stop_a = ledger
        .iter()
        .find(|e| e.provider == s.a && e.call == Call::Stop && e.outcome == Outcome::Stopped)
        .expect("stop on a");
    let create_b = ledger.iter().find(|e| is_provision_of(e, &s.b) && e.outcome.created()).expect("create on b");
    assert_eq!(stop_a.instance.as_deref(), Some(first.id.as_str()));
    assert_eq!(create_b.instance.as_deref(), Some(second.id.as_str()));
    assert!(stop_a.seq < create_b.seq && stop_a.at <= create_b.at, "create on b before stop on a: {ledger:#?}");
    assert_eq!(stop_a.epoch, create_b.epoch, "stop and create belong to one claim");
    assert_eq!(create_b.key.as_deref(), Some(second.key.as_str()));
    assert_eq!(s.live().await, vec![(s.b.clone(), second.id.clone())], "a's instance stopped, b's running");
    s.assert_invariants().await;

    // Events record outcomes: one Provisioned for the create, one SwitchCompleted naming both
    // providers and the new instance; progress (claims, the stop) is in status only.
    let completed = cond::EventReason::SwitchCompleted.as_str();
    let events = wait_for_event(&s.client, &s.ns, "ws", completed, CONVERGE).await;
    let count = |reason: cond::EventReason| events.iter().filter(|(r, _)| r == reason.as_str()).count();
    assert_eq!(count(cond::EventReason::Provisioned), 1, "{events:?}");
    assert_eq!(count(cond::EventReason::SwitchCompleted), 1, "{events:?}");
    assert_eq!(events.len(), 2, "only outcomes are Events: {events:?}");
    let (_, note) = events.iter().find(|(r, _)| r == completed).expect("SwitchCompleted");
    assert!(note.contains(&format!("switched from {} to {}", s.a, s.b)) && note.contains(&second.id), "{note}");
    report(&format!("{t:?} switch in {status_writes} status writes"), started, &ledger, claims(&[&x]));
}

/// Two controller instances on the same workspaces through rounds of random switches and
/// power flips among three providers: every claim has exactly one winner, losers touch nothing,
/// every call was made under a claim its caller held, all converge, and a watch over the whole
/// run never sees a status that breaks the kstatus rules. Fewer workspaces over HTTP, where
/// every call crosses a process.
async fn two_instances_race_on_many_workspaces(t: Transport) {
    use rand::{Rng, SeedableRng};
    let started = Instant::now();
    let mut s = Scenario::new(t, "sc-race").await;
    let c = s.add_provider("c").await;
    let providers = [s.a.clone(), s.b.clone(), c];
    let (workspaces, rounds) = match t {
        Transport::InProcess => (50, 4),
        Transport::Http => (20, 3),
    };
    let watch = StatusWatch::start(s.api.clone()).await;
    let x = s.start("race-x");
    let y = s.start("race-y");

    let names: Vec<String> = (0..workspaces).map(|i| format!("ws-{i:02}")).collect();
    for (i, name) in names.iter().enumerate() {
        s.api.create(&PostParams::default(), &workspace(name, &providers[i % 3])).await.expect("create");
    }
    let seed: u64 = std::env::var("RACE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261127);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut switches, mut flips) = (0, 0);
    for _round in 0..rounds {
        wait_all_converged(&s.api, &names, CONVERGE).await;
        for name in &names {
            let roll: u32 = rng.random_range(0..10);
            let current = s.api.get(name).await.expect("get").spec;
            if roll < 6 {
                let to = &providers[rng.random_range(0..3)];
                switches += usize::from(*to != current.provider);
                patch_spec(&s.api, name, serde_json::json!({"provider": to})).await;
            } else if roll < 8 {
                flips += 1;
                patch_spec(&s.api, name, serde_json::json!({"running": !current.running})).await;
            }
        }
    }
    wait_all_converged(&s.api, &names, CONVERGE).await;
    let seen = watch.finish().await;
    assert!(x.is_running() && y.is_running(), "a controller instance died");
    let (xm, ym) = (x.metrics.clone(), y.metrics.clone());
    x.stop().await;
    y.stop().await;

    let ledger = s.assert_invariants().await;
    assert!(seen.breaches.is_empty(), "statuses broke the kstatus rules:\n{}", seen.breaches.join("\n"));
    // Invariant 1: every provider call was made under a claim its caller actually held.
    assert_calls_under_held_claims(&ledger, &seen);
    assert!(ledger.iter().all(|e| e.caller == "race-x" || e.caller == "race-y"), "a call from nowhere");
    let sum = |f: &dyn Fn(&switchyard::telemetry::Metrics) -> u64| f(&xm) + f(&ym);
    let (won, lost) = (sum(&|m| m.claims_won.get()), sum(&|m| m.claims_lost.get()));
    let writes = sum(&|m| m.status_writes.get());
    let completed = sum(&|m| {
        let pairs = providers.iter().flat_map(|from| providers.iter().map(move |to| (from, to)));
        let labels = |(from, to): (&String, &String)| SwitchLabels {
            from: from.clone(),
            to: to.clone(),
            result: "completed".into(),
        };
        pairs.map(|p| m.switches.get_or_create(&labels(p)).get()).sum()
    });
    eprintln!(
        "{t:?} race ({:.1?}, seed {seed}): {switches} switches and {flips} power flips requested, {completed} completed, \
         {won} claims won, {lost} lost, {}, {writes} status writes, {} versions watched",
        started.elapsed(),
        calls(&ledger),
        seen.versions
    );
    assert!(switches > 0 && won as usize > names.len() && completed > 0, "the race must have switched something");
}

/// A controller killed at each step of a switch: a fresh one takes the stale claim over and
/// converges with exactly one live instance, nothing leaked.
async fn crash_at_every_step_converges_with_one_instance(t: Transport) {
    let started = Instant::now();
    for point in [FailPoint::AfterClaim, FailPoint::AfterStop, FailPoint::AfterCommit, FailPoint::AfterProvision] {
        let s = Scenario::running_on_a(t, "sc-crash").await;
        let x = s.switch_to_b_frozen_at("crash-x", point).await;
        let frozen_step = s.status().await.operation.map(|o| o.step);
        let expected = if point == FailPoint::AfterClaim || point == FailPoint::AfterStop {
            Step::Claimed
        } else {
            Step::OldStopped
        };
        assert_eq!(frozen_step, Some(expected), "{point:?}");
        x.kill();

        let y = s.start("crash-y");
        let ws = wait_ready_on(&s.api, "ws", &s.b, CONVERGE).await;
        assert_eq!(y.metrics.takeovers.get(), 1, "{point:?}: the stale claim must be taken over");
        let instance = status(&ws).instance.expect("instance");
        assert_eq!(s.live().await, vec![(s.b.clone(), instance.id.clone())], "{point:?}: one live instance, on b");
        assert!(status(&ws).epoch >= 3, "{point:?}: takeover bumps the epoch");
        let ledger = s.assert_invariants().await;
        let created = ledger.iter().filter(|e| e.outcome.created()).count();
        assert_eq!(created, 2, "{point:?}: one create on a (setup), one on b");
        if point == FailPoint::AfterProvision {
            // y resumed the provision under the same key and got the instance x created.
            let provisions: Vec<_> = ledger.iter().filter(|e| is_provision_of(e, &s.b)).collect();
            assert!(
                matches!(provisions.as_slice(), [c, e] if c.caller == "crash-x" && e.caller == "crash-y"
                && e.outcome == Outcome::Existing && c.key == e.key && e.epoch > c.epoch),
                "{provisions:#?}"
            );
        }
        report(&format!("{t:?} crash at {point:?}, claims by the survivor"), started, &ledger, claims(&[&y]));
    }
}

/// b commits a create and its answer is lost. The retry under the same key returns the same
/// instance: in process the controller retries at its next attempt; over HTTP the driver
/// retries inside the one call, so the controller never sees a failure.
async fn lost_provision_answer_yields_one_instance(t: Transport) {
    let started = Instant::now();
    let s = Scenario::running_on_a(t, "sc-lost").await;
    s.set_faults(&s.b, Faults { drop_provision_response: 1, ..Faults::default() }).await;
    let x = s.start("lost-x");
    switch_with_kubectl(&s.ns, "ws", &s.b);
    let ws = wait_ready_on(&s.api, "ws", &s.b, CONVERGE).await;
    let instance = status(&ws).instance.expect("instance");

    let ledger = s.assert_invariants().await;
    let provisions: Vec<&LedgerEntry> = ledger.iter().filter(|e| is_provision_of(e, &s.b)).collect();
    let outcomes: Vec<&Outcome> = provisions.iter().map(|e| &e.outcome).collect();
    assert_eq!(outcomes, [&Outcome::CommittedResponseLost { created: true }, &Outcome::Existing], "{provisions:#?}");
    let (lost, retried) = (provisions[0], provisions[1]);
    assert_eq!((&lost.key, &lost.instance, lost.epoch), (&retried.key, &retried.instance, retried.epoch));
    assert_eq!(retried.instance.as_deref(), Some(instance.id.as_str()));
    assert_eq!(s.live().await, vec![(s.b.clone(), instance.id)]);
    if t == Transport::Http {
        let events = events_of(&s.client, &s.ns, "ws").await;
        let failed = cond::ConditionReason::ProvisionFailed.as_str();
        assert!(!events.iter().any(|(reason, _)| reason == failed), "the driver's retry was seen: {events:?}");
    }
    report(&format!("{t:?} lost answer"), started, &ledger, claims(&[&x]));
}

/// Stop fails past its budget: claim released, Stalled/StopFailed with an Event, still on a;
/// once a recovers the switch completes.
async fn stop_failure_releases_the_claim_and_recovers(t: Transport) {
    let s = Scenario::running_on_a(t, "sc-stopfail").await;
    s.set_faults(&s.a, Faults { fail_stop_always: true, ..Faults::default() }).await;
    let _x = s.start("stopfail-x");
    switch_with_kubectl(&s.ns, "ws", &s.b);
    let stalled = wait_stalled(&s.api, "ws", cond::ConditionReason::StopFailed, CONVERGE).await;
    let st = status(&stalled);
    assert!(st.operation.is_none(), "the claim must be released");
    assert_eq!(st.instance.as_ref().map(|i| i.provider.as_str()), Some(s.a.as_str()), "still on a");
    assert_eq!(condition(&stalled, cond::READY).map(|c| c.0), Some("False".into()));
    assert!(!s.ledger_has(&s.b, Call::Provision, |_| true).await, "nothing may be provisioned on b before a stops");
    wait_for_event(&s.client, &s.ns, "ws", cond::ConditionReason::StopFailed.as_str(), CONVERGE).await;

    s.heals_onto_b(&s.a).await;
}

/// Provision fails on b: retried with backoff, lastError visible; converges when b recovers.
async fn provision_failure_is_retried_and_visible(t: Transport) {
    let s = Scenario::running_on_a(t, "sc-provfail").await;
    s.set_faults(&s.b, Faults { fail_provision_always: true, ..Faults::default() }).await;
    let _x = s.start("provfail-x");
    switch_with_kubectl(&s.ns, "ws", &s.b);
    let failing = wait_for(&s.api, "ws", "lastError after two attempts", CONVERGE, |ws| {
        status(ws).operation.is_some_and(|o| o.attempts >= 2 && o.last_error.is_some())
    })
    .await;
    let op = status(&failing).operation.expect("operation");
    assert_eq!(op.step, Step::OldStopped, "roll forward only: the old compute stays stopped");
    assert!(op.last_error.unwrap_or_default().contains("injected"), "lastError should say what failed");
    s.heals_onto_b(&s.b).await;
}

/// A→B→A before the stop: no stop issued, ends on A with its instance. A→B→C after a
/// provision on B already happened: ends on C, nothing live on B.
async fn reverted_and_retargeted_switches(t: Transport) {
    let s = Scenario::running_on_a(t, "sc-revert").await;
    let before = s.status().await.instance.expect("instance");
    let x = s.switch_to_b_frozen_at("revert-x", FailPoint::AfterClaim).await;
    switch_with_kubectl(&s.ns, "ws", &s.a);
    x.kill();
    let _y = s.start("revert-y");
    let ws = wait_ready_on(&s.api, "ws", &s.a, CONVERGE).await;
    assert_eq!(status(&ws).instance, Some(before), "the original instance keeps running");
    assert!(!s.ledger_has(&s.a, Call::Stop, |_| true).await, "no stop may be issued for a reverted switch");
    s.assert_invariants().await;

    let mut s = Scenario::running_on_a(t, "sc-retarget").await;
    let c = s.add_provider("c").await;
    let x = s.switch_to_b_frozen_at("retarget-x", FailPoint::AfterProvision).await;
    switch_with_kubectl(&s.ns, "ws", &c);
    x.kill();
    let _y = s.start("retarget-y");
    let ws = wait_ready_on(&s.api, "ws", &c, CONVERGE).await;
    let instance = status(&ws).instance.expect("instance");
    assert_eq!(s.live().await, vec![(c.clone(), instance.id)], "nothing may be left on b");
    assert!(s.ledger_has(&s.b, Call::Stop, |o| *o == Outcome::Stopped).await, "what b created is released");
    s.assert_invariants().await;
}

/// Deleting the workspace at each step of a switch: zero instances remain anywhere and the
/// object goes away.
async fn delete_at_every_step_leaves_nothing(t: Transport) {
    for point in [FailPoint::AfterClaim, FailPoint::AfterStop, FailPoint::AfterCommit, FailPoint::AfterProvision] {
        let s = Scenario::running_on_a(t, "sc-delete").await;
        let x = s.switch_to_b_frozen_at("delete-x", point).await;
        let out = kubectl(&["delete", "workspace", "ws", "-n", &s.ns, "--wait=false"]);
        assert!(out.status.success(), "{}", stderr(&out));
        x.kill();
        let _y = s.start("delete-y");
        eventually(&format!("{point:?}: workspace gone"), CONVERGE, || async {
            s.api.get_opt("ws").await.ok().and_then(|o| o.is_none().then_some(()))
        })
        .await;
        let live = s.live().await;
        assert!(live.is_empty(), "{point:?}: instances left after deletion: {live:?}");
        s.assert_invariants().await;
    }
}

/// The leak an outside fault campaign found (issue: fence every provider an operation can
/// reach). X claims a→b, stops a, its provisions on b fail; X pauses with a provision on b in
/// hand (epoch 2); the spec moves on to c; Y takes the stale claim over (epoch 3), releases b's
/// key and provisions on c. X wakes and makes its provision on b at epoch 2. Before the fix b
/// had seen only failed calls and a lookup, so its fence was still at 2 and it created an
/// instance nobody would ever stop. Now Y's takeover raises b's fence first: X is refused.
async fn a_paused_holder_cannot_create_compute_after_a_takeover(t: Transport) {
    let mut s = Scenario::running_on_a(t, "sc-paused").await;
    let c = s.add_provider("c").await;
    s.set_faults(&s.b, Faults { fail_provision_always: true, ..Faults::default() }).await;
    let x = s.start("paused-x");
    switch_with_kubectl(&s.ns, "ws", &s.b);
    s.call_seen(&s.b, "a failed provision on b", |e| e.call == Call::Provision && !e.outcome.created()).await;
    // X pauses before its next provision attempt on b, the epoch of its claim in hand.
    x.failpoints.arm(FailPoint::BeforeProvision);
    s.frozen(&x, FailPoint::BeforeProvision).await;
    switch_with_kubectl(&s.ns, "ws", &c);
    let y = s.start("paused-y");
    let ws = wait_ready_on(&s.api, "ws", &c, CONVERGE).await;
    assert!(y.metrics.takeovers.get() >= 1, "Y must have taken the paused claim over");

    // X wakes up, with b healthy again.
    s.set_faults(&s.b, Faults::default()).await;
    x.failpoints.release(FailPoint::BeforeProvision);
    s.call_seen(&s.b, "X's late provision on b answered", |e| {
        e.caller == "paused-x"
            && e.call == Call::Provision
            && e.epoch == 2
            && matches!(e.outcome, Outcome::Fenced { .. })
    })
    .await;
    let instance = status(&ws).instance.expect("instance");
    assert_eq!(s.live().await, vec![(c.clone(), instance.id)], "exactly one live instance, on c");
    let ledger = s.ledger().await;
    let fenced_first = ledger.iter().find(|e| e.caller == "paused-y" && e.provider == s.b).map(|e| e.call);
    assert_eq!(fenced_first, Some(Call::Fence), "Y's first call to b raises its fence");
    s.assert_invariants().await;
    drop(x);
}

/// A controller paused right before its provision call wakes up after another instance took
/// its claim over and provisioned under the new epoch: b refuses the stale call (StaleEpoch,
/// ledgered as Fenced) and the ex-holder makes no further call and no write.
async fn paused_ex_holder_is_fenced_by_the_provider(t: Transport) {
    let started = Instant::now();
    let s = Scenario::running_on_a(t, "sc-fence").await;
    let x = s.switch_to_b_frozen_at("fence-x", FailPoint::BeforeProvision).await;
    let paused = s.status().await.operation.expect("operation");
    assert_eq!((paused.holder.as_str(), paused.step), ("fence-x", Step::OldStopped));

    let y = s.start("fence-y");
    let ws = wait_ready_on(&s.api, "ws", &s.b, CONVERGE).await;
    assert_eq!(y.metrics.takeovers.get(), 1);
    let created = s.call_seen(&s.b, "y's create on b", |e| e.call == Call::Provision && e.outcome.created()).await;
    assert!(created.caller == "fence-y" && created.epoch > paused.epoch, "{created:?}");

    let (writes, lost) = (x.metrics.status_writes.get(), x.metrics.claims_lost.get());
    let calls_before = s.ledger().await.iter().filter(|e| e.caller == "fence-x").count();
    x.failpoints.release(FailPoint::BeforeProvision);
    let fenced = s.call_seen(&s.b, "x's stale provision", |e| e.caller == "fence-x").await;
    assert_eq!(fenced.call, Call::Provision);
    assert_eq!(fenced.epoch, paused.epoch);
    assert_eq!(fenced.outcome, Outcome::Fenced { newest: created.epoch });
    eventually("x gives up after the refusal", CONVERGE, || async {
        (x.metrics.claims_lost.get() > lost).then_some(())
    })
    .await;
    assert_eq!(x.metrics.status_writes.get(), writes, "the fenced ex-holder wrote");
    let calls_after = s.ledger().await.iter().filter(|e| e.caller == "fence-x").count();
    assert_eq!(calls_after, calls_before + 1, "the fenced ex-holder called again");
    let now = s.api.get("ws").await.expect("get");
    assert_eq!(now.metadata.resource_version, ws.metadata.resource_version, "someone wrote after the finish");
    let instance = status(&now).instance.expect("instance");
    assert_eq!(s.live().await, vec![(s.b.clone(), instance.id)]);
    let ledger = s.assert_invariants().await;
    let by = format!("x {}, y {}", claims(&[&x]), claims(&[&y]));
    report(&format!("{t:?} fencing ({by})"), started, &ledger, claims(&[&x, &y]));
}

/// A controller paused after stopping the old compute wakes up while the instance that took
/// its claim over is still provisioning: its commit is refused, and it must see that the claim
/// is no longer its own — no write, no call — although the operation id is unchanged.
async fn paused_ex_holder_makes_no_write_after_a_takeover(t: Transport) {
    let started = Instant::now();
    let s = Scenario::running_on_a(t, "sc-fence-write").await;
    let x = s.switch_to_b_frozen_at("fencew-x", FailPoint::AfterStop).await;
    let paused = s.status().await.operation.expect("operation");

    // The new holder's provision stays in flight at b while x wakes up.
    s.set_faults(&s.b, Faults { hang: true, ..Faults::default() }).await;
    let y = s.start("fencew-y");
    s.call_seen(&s.b, "y's provision in flight", |e| e.caller == "fencew-y" && e.outcome == Outcome::Hung).await;
    let held = s.status().await.operation.expect("operation");
    assert_eq!(
        (held.id.as_str(), held.holder.as_str()),
        (paused.id.as_str(), "fencew-y"),
        "same operation, new holder"
    );
    assert!(held.epoch > paused.epoch);

    let (writes, lost) = (x.metrics.status_writes.get(), x.metrics.claims_lost.get());
    let calls_before = s.ledger().await.iter().filter(|e| e.caller == "fencew-x").count();
    x.failpoints.release(FailPoint::AfterStop);
    eventually("x's commit resolved", CONVERGE, || async {
        (x.metrics.claims_lost.get() > lost || x.metrics.status_writes.get() > writes).then_some(())
    })
    .await;
    let wrote = x.metrics.status_writes.get() - writes;
    let x_claims = claims(&[&x]);
    x.kill();
    assert_eq!(wrote, 0, "the paused ex-holder wrote {wrote} status(es) under a claim taken over from it");
    let still = s.status().await.operation.expect("operation");
    assert_eq!((still.holder.as_str(), still.epoch), ("fencew-y", held.epoch));
    let calls_after = s.ledger().await.iter().filter(|e| e.caller == "fencew-x").count();
    assert_eq!(calls_after, calls_before, "the paused ex-holder called a provider after the takeover");

    let ledger = s.heals_onto_b(&s.b).await;
    report(&format!("{t:?} paused writer"), started, &ledger, x_claims + claims(&[&y]));
}
