//! The Workspace controller against the real API server, with the in-process simulated cloud.
//! Every test checks DESIGN.md §3 from the providers' ledger, not from the controller.

mod support;

use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use support::fixtures::*;
use support::*;
use switchyard::api::Step;
use switchyard::api::Workspace;
use switchyard::api::conditions as cond;
use switchyard::controller::Clock;
use switchyard::controller::FailPoint;

use switchyard::provider::simulated::{Call, Clouds, Faults, Outcome};
use switchyard::runtime::Backoff;
use switchyard::telemetry::{Metrics, SwitchLabels};

const CONVERGE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn switch_stops_the_old_compute_before_provisioning_the_new() {
    let client = client().await;
    let ns = namespace(&client, "ctl-switch").await;
    let (a, b) = (unique("a"), unique("b"));
    simulated_provider(&client, &a, 20, 20).await;
    simulated_provider(&client, &b, 20, 20).await;
    let clouds = Clouds::new();
    let _ctl = Instance::start(&client, settings("ctl-1", &ns), &clouds);
    let api: Api<Workspace> = Api::namespaced(client.clone(), &ns);

    api.create(&PostParams::default(), &workspace("ws-1", &a)).await.expect("create");
    let running = wait_ready_on(&api, "ws-1", &a, CONVERGE).await;
    let uid = running.metadata.uid.clone().expect("uid");
    let first = running.status.clone().and_then(|s| s.instance).expect("instance on a");

    // Count status writes from the API server's side: every version after the spec patch.
    let mut versions = watcher::watch_object(api.clone(), "ws-1").boxed();
    let out = kubectl(&[
        "patch",
        "workspace",
        "ws-1",
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        &format!(r#"{{"spec":{{"provider":"{b}"}}}}"#),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut status_writes = 0;
    let mut patched_generation = None;
    let done = tokio::time::timeout(CONVERGE, async {
        while let Some(Ok(Some(ws))) = versions.next().await {
            if ws.spec.provider != b {
                continue; // versions before our patch
            }
            if patched_generation.is_none() {
                patched_generation = ws.metadata.generation; // the spec patch itself
                continue;
            }
            status_writes += 1;
            if ws.settled_on(&b) {
                return ws;
            }
        }
        panic!("watch ended");
    })
    .await
    .expect("switch completes");
    assert!(status_writes <= 3, "the switch took {status_writes} status writes");
    let second = done.status.clone().and_then(|s| s.instance).expect("instance on b");
    let last = done.status.clone().and_then(|s| s.last_switch).expect("lastSwitch");
    assert_eq!((last.from.as_str(), last.to.as_str()), (a.as_str(), b.as_str()));

    // From the ledger: stop(a) strictly before provision(b); one instance each; nothing on a.
    let ledger = ledger_of(&clouds, &uid);
    let stop_a = ledger
        .iter()
        .find(|e| e.provider == a && e.call == Call::Stop && e.outcome == Outcome::Stopped)
        .expect("stop on a");
    let create_b = ledger
        .iter()
        .find(|e| e.provider == b && e.call == Call::Provision && e.outcome.created())
        .expect("provision on b");
    assert_eq!(stop_a.instance.as_deref(), Some(first.id.as_str()));
    assert_eq!(create_b.instance.as_deref(), Some(second.id.as_str()));
    assert!(stop_a.seq < create_b.seq, "provision on b (seq {}) before stop on a (seq {})", create_b.seq, stop_a.seq);
    assert_eq!(stop_a.epoch, create_b.epoch, "stop and provision belong to one claim");
    assert_invariants(&api, &clouds).await;

    // Events record outcomes: one Provisioned for the create, one SwitchCompleted naming both
    // providers and the new instance; progress (claims, the stop) is in status only.
    let events = wait_for_event(&client, &ns, "ws-1", cond::EventReason::SwitchCompleted.as_str(), CONVERGE).await;
    let reasons: Vec<&str> = events.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(reasons.iter().filter(|r| **r == cond::EventReason::Provisioned.as_str()).count(), 1, "{events:?}");
    assert_eq!(reasons.iter().filter(|r| **r == cond::EventReason::SwitchCompleted.as_str()).count(), 1, "{events:?}");
    assert_eq!(reasons.len(), 2, "only outcomes are Events: {events:?}");
    let (_, note) =
        events.iter().find(|(r, _)| r == cond::EventReason::SwitchCompleted.as_str()).expect("SwitchCompleted");
    assert!(note.contains(&format!("switched from {a} to {b}")) && note.contains(&second.id), "{note}");
    eprintln!("switch: {status_writes} status writes, {} provider calls", ledger.len());
}

/// Two controller instances on the same 50 workspaces through rounds of random switches and
/// power flips: every claim has exactly one winner, losers touch nothing, all converge, and a
/// watch over the whole run never sees a status that breaks the kstatus rules.
#[tokio::test]
async fn two_instances_race_on_fifty_workspaces() {
    use rand::{Rng, SeedableRng};
    let client = client().await;
    let ns = namespace(&client, "ctl-race").await;
    let providers = [unique("a"), unique("b"), unique("c")];
    for p in &providers {
        simulated_provider(&client, p, 5, 5).await;
    }
    let clouds = Clouds::new();
    let api: Api<Workspace> = Api::namespaced(client.clone(), &ns);
    let watch = StatusWatch::start(api.clone());
    let x = Instance::start(&client, settings("race-x", &ns), &clouds);
    let y = Instance::start(&client, settings("race-y", &ns), &clouds);

    let names: Vec<String> = (0..50).map(|i| format!("ws-{i:02}")).collect();
    for (i, name) in names.iter().enumerate() {
        api.create(&PostParams::default(), &workspace(name, &providers[i % 3])).await.expect("create");
    }
    let seed: u64 = std::env::var("RACE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261127);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut switches = 0;
    for round in 0..4 {
        wait_all_converged(&api, &names, CONVERGE).await;
        for name in &names {
            let roll: u32 = rng.random_range(0..10);
            if roll < 6 {
                let to = &providers[rng.random_range(0..3)];
                let current = api.get(name).await.expect("get").spec.provider;
                if *to != current {
                    switches += 1;
                }
                patch_spec(&api, name, serde_json::json!({"provider": to})).await;
            } else if roll < 8 {
                let running = api.get(name).await.expect("get").spec.running;
                patch_spec(&api, name, serde_json::json!({"running": !running})).await;
            }
        }
        eprintln!("race round {round}: patched");
    }
    wait_all_converged(&api, &names, CONVERGE).await;
    let seen = watch.finish().await;
    let (xm, ym) = (x.metrics.clone(), y.metrics.clone());
    x.stop().await;
    y.stop().await;

    assert_invariants(&api, &clouds).await;
    assert!(seen.breaches.is_empty(), "statuses broke the kstatus rules:\n{}", seen.breaches.join("\n"));
    // Invariant 1: every provider call was made under a claim its caller actually held.
    let ledger = clouds.ledger();
    assert_calls_under_held_claims(&ledger, &seen);
    let sum = |f: &dyn Fn(&Metrics) -> u64| f(&xm) + f(&ym);
    let (won, lost) = (sum(&|m| m.claims_won.get()), sum(&|m| m.claims_lost.get()));
    let writes = sum(&|m| m.status_writes.get());
    let pairs: Vec<(&String, &String)> = providers.iter().flat_map(|f| providers.iter().map(move |t| (f, t))).collect();
    let completed = sum(&|m| {
        let labels = |(f, t): &(&String, &String)| SwitchLabels {
            from: f.to_string(),
            to: t.to_string(),
            result: "completed".into(),
        };
        pairs.iter().map(|p| m.switches.get_or_create(&labels(p)).get()).sum()
    });
    eprintln!(
        "race (seed {seed}): {switches} switches requested, {completed} completed, {won} claims won, {lost} lost, \
         {} provider calls, {writes} status writes, {} versions watched",
        ledger.len(),
        seen.versions
    );
    assert!(won > 0 && completed > 0);
}

/// A controller handed a stale copy (an old resourceVersion) gets 409 on its claim and stops:
/// no provider call, no write.
#[tokio::test]
async fn stale_copy_loses_its_claim_and_calls_no_provider() {
    use kube::api::{Patch, PatchParams};
    use kube::runtime::reflector;
    use switchyard::controller::{Context, Handles, reconcile};
    use switchyard::provider::Dispatcher;

    let client = client().await;
    let ns = namespace(&client, "ctl-stale").await;
    let a = unique("a");
    simulated_provider(&client, &a, 0, 0).await;
    let api: Api<Workspace> = Api::namespaced(client.clone(), &ns);
    let mut ws = workspace("ws-stale", &a);
    ws.metadata.finalizers = Some(vec![switchyard::api::FINALIZER.to_string()]);
    let stale = api.create(&PostParams::default(), &ws).await.expect("create");
    // Someone else changes the object: our copy is now stale.
    let label = serde_json::json!({"metadata": {"labels": {"touched": "yes"}}});
    let fresh = api.patch("ws-stale", &PatchParams::default(), &Patch::Merge(label)).await.expect("label");
    assert_ne!(fresh.metadata.resource_version, stale.metadata.resource_version);

    let clouds = Clouds::new();
    let (providers, _writer) = reflector::store();
    let handles = Handles::default();
    let ctx =
        Context::new(client.clone(), settings("stale-1", &ns), Dispatcher::new(clouds.clone()), providers, &handles);
    reconcile(std::sync::Arc::new(stale), ctx).await.expect("reconcile");

    assert_eq!(handles.metrics.claims_lost.get(), 1, "the stale claim must be refused");
    assert_eq!(handles.metrics.claims_won.get(), 0);
    assert!(clouds.ledger().is_empty(), "the loser called a provider: {:?}", clouds.ledger());
    let after = api.get("ws-stale").await.expect("get");
    assert_eq!(after.metadata.resource_version, fresh.metadata.resource_version, "the loser wrote");
}

/// Sets up namespace, providers `a` and `b`, and `ws` Running on `a` (by a controller that
/// is then shut down), for the crash and failure scenarios.
struct Scenario {
    client: kube::Client,
    ns: String,
    a: String,
    b: String,
    clouds: Clouds,
    api: Api<Workspace>,
    uid: String,
}

impl Scenario {
    async fn running_on_a(prefix: &str) -> Self {
        let client = client().await;
        let ns = namespace(&client, prefix).await;
        let (a, b) = simulated_pair(&client).await;
        let clouds = Clouds::new();
        let api: Api<Workspace> = Api::namespaced(client.clone(), &ns);
        let setup = Instance::start(&client, settings(&format!("{prefix}-setup"), &ns), &clouds);
        api.create(&PostParams::default(), &workspace("ws", &a)).await.expect("create");
        let ws = wait_ready_on(&api, "ws", &a, CONVERGE).await;
        setup.stop().await;
        let uid = ws.metadata.uid.expect("uid");
        Self { client, ns, a, b, clouds, api, uid }
    }

    fn start(&self, identity: &str) -> Instance {
        Instance::start(&self.client, settings(identity, &self.ns), &self.clouds)
    }

    fn start_frozen_at(&self, identity: &str, point: FailPoint) -> Instance {
        Instance::start_frozen_at(&self.client, settings(identity, &self.ns), &self.clouds, point)
    }

    fn ledger_has(&self, provider: &str, call: Call, pred: impl Fn(&Outcome) -> bool) -> bool {
        ledger_of(&self.clouds, &self.uid).iter().any(|e| e.provider == provider && e.call == call && pred(&e.outcome))
    }

    fn live(&self) -> Vec<(String, String)> {
        self.clouds
            .live_instances()
            .into_iter()
            .filter(|i| i.workspace_uid == self.uid)
            .map(|i| (i.provider, i.id))
            .collect()
    }

    /// Waits until the frozen instance has reached `point`.
    async fn reached(&self, point: FailPoint) {
        eventually(&format!("controller frozen at {point:?}"), CONVERGE, || async {
            let ws = self.api.get("ws").await.ok()?;
            let op = status(&ws).operation;
            let step = op.as_ref().map(|o| o.step);
            let reached = match point {
                FailPoint::AfterClaim => step == Some(Step::Claimed),
                FailPoint::AfterStop => self.ledger_has(&self.a, Call::Stop, |o| *o == Outcome::Stopped),
                FailPoint::AfterCommit | FailPoint::BeforeProvision => step == Some(Step::OldStopped),
                FailPoint::AfterProvision => self.ledger_has(&self.b, Call::Provision, |o| o.created()),
            };
            reached.then_some(())
        })
        .await
    }
}

/// A controller killed at each step of a switch: a fresh instance takes the stale claim over
/// and converges with exactly one instance and nothing leaked.
#[tokio::test]
async fn crash_at_every_step_converges_with_one_instance() {
    for point in [FailPoint::AfterClaim, FailPoint::AfterStop, FailPoint::AfterCommit, FailPoint::AfterProvision] {
        let s = Scenario::running_on_a("ctl-crash").await;
        let x = s.start_frozen_at("crash-x", point);
        switch_with_kubectl(&s.ns, "ws", &s.b);
        s.reached(point).await;
        x.kill();
        let y = s.start("crash-y");
        let ws = wait_ready_on(&s.api, "ws", &s.b, CONVERGE).await;
        assert_eq!(y.metrics.takeovers.get(), 1, "{point:?}: the stale claim must be taken over");
        let instance = status(&ws).instance.expect("instance");
        assert_eq!(s.live(), vec![(s.b.clone(), instance.id)], "{point:?}: exactly one live instance, on b");
        assert!(status(&ws).epoch >= 3, "{point:?}: takeover bumps the epoch");
        assert_invariants(&s.api, &s.clouds).await;
    }
}

/// A provision that succeeds at the provider but whose answer is lost: the retry under the
/// same key returns the same instance.
#[tokio::test]
async fn lost_provision_answer_yields_the_same_instance() {
    let s = Scenario::running_on_a("ctl-lost").await;
    s.clouds.cloud(&s.b).set_faults(Faults { drop_provision_response: 1, ..Faults::default() });
    let _x = s.start("lost-x");
    switch_with_kubectl(&s.ns, "ws", &s.b);
    let ws = wait_ready_on(&s.api, "ws", &s.b, CONVERGE).await;
    let instance = status(&ws).instance.expect("instance");
    assert!(s.ledger_has(&s.b, Call::Provision, |o| matches!(o, Outcome::CommittedResponseLost { created: true })));
    assert!(s.ledger_has(&s.b, Call::Provision, |o| *o == Outcome::Existing), "the retry must reuse the key");
    assert_eq!(s.live(), vec![(s.b.clone(), instance.id)]);
    assert_invariants(&s.api, &s.clouds).await;
}

/// Stop fails past its budget: claim released, Stalled/StopFailed with an Event, still on a;
/// once a recovers the switch completes.
#[tokio::test]
async fn stop_failure_releases_the_claim_and_recovers() {
    let s = Scenario::running_on_a("ctl-stopfail").await;
    s.clouds.cloud(&s.a).set_faults(Faults { fail_stop_always: true, ..Faults::default() });
    let _x = s.start("stopfail-x");
    switch_with_kubectl(&s.ns, "ws", &s.b);
    let stalled = wait_for(&s.api, "ws", "Stalled=True StopFailed", CONVERGE, |ws| {
        condition(ws, cond::STALLED) == Some(("True".into(), cond::ConditionReason::StopFailed.as_str().into()))
    })
    .await;
    let st = status(&stalled);
    assert!(st.operation.is_none(), "the claim must be released");
    assert_eq!(st.instance.as_ref().map(|i| i.provider.as_str()), Some(s.a.as_str()), "still on a");
    assert_eq!(condition(&stalled, cond::READY).map(|c| c.0), Some("False".into()));
    assert!(!s.ledger_has(&s.b, Call::Provision, |_| true), "nothing may be provisioned on b before a stops");
    wait_for_event(&s.client, &s.ns, "ws", cond::ConditionReason::StopFailed.as_str(), CONVERGE).await;

    s.clouds.cloud(&s.a).set_faults(Faults::default());
    wait_ready_on(&s.api, "ws", &s.b, CONVERGE).await;
    assert!(s.live().len() == 1);
    assert_invariants(&s.api, &s.clouds).await;
}

/// A stop takes effect but its answer is lost, and the provider allows one attempt, so the stop
/// fails past its budget while the compute is in fact gone; then the user switches back. The workspace must not read Ready on
/// compute that no longer runs: the instance is marked unconfirmed, the provider is asked, and
/// the workspace is provisioned afresh, named by its status. (Found by the model checker.)
#[tokio::test]
async fn a_stop_that_took_effect_unanswered_is_not_mistaken_for_running_compute() {
    let s = Scenario::running_on_a("ctl-lost-stop").await;
    // One attempt per claim: a retry would look the instance up and see it stopped.
    let policy = serde_json::json!({"spec": {"stopPolicy": {"maxAttempts": 1, "initialBackoffMs": 1}}}).to_string();
    let out = kubectl(&["patch", "computeprovider", &s.a, "--type", "merge", "-p", &policy]);
    assert!(out.status.success(), "{}", stderr(&out));
    s.clouds.cloud(&s.a).set_faults(Faults { drop_stop_response: 1, ..Faults::default() });
    let _x = s.start("lost-stop-x");
    switch_with_kubectl(&s.ns, "ws", &s.b);
    let stalled = wait_for(&s.api, "ws", "Stalled=True StopFailed", CONVERGE, |ws| {
        condition(ws, cond::STALLED) == Some(("True".into(), cond::ConditionReason::StopFailed.as_str().into()))
    })
    .await;
    let before = status(&stalled).instance.expect("still recorded");
    assert!(before.unconfirmed, "its stop may have happened");
    assert!(s.live().is_empty(), "the stop did take effect");
    s.clouds.cloud(&s.a).set_faults(Faults::default());
    switch_with_kubectl(&s.ns, "ws", &s.a);
    let ws = wait_for(&s.api, "ws", "Ready on a with running compute", CONVERGE, |ws| {
        ws.settled_on(&s.a) && status(ws).instance.is_some_and(|i| i.id != before.id && !i.unconfirmed)
    })
    .await;
    let named = status(&ws).instance.expect("instance");
    let live = s.live();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].1, named.id, "status names the compute that runs");
    assert_invariants(&s.api, &s.clouds).await;
}

/// Failing stops retried past the claim lease: the holder renews its claim before each
/// retry, so a second instance (no leader election) never takes it over, and every stop call
/// carries one epoch. Time is driven explicitly, not raced: both instances read a clock that
/// moves half a lease with every failed stop in the ledger, so three failed stops span 1.5
/// leases whatever the machine's load (renewedAt has second precision: half a lease of 10 s
/// leaves room for it). Without the renewal, the second instance takes over.
#[tokio::test]
async fn retries_longer_than_the_claim_lease_keep_the_claim() {
    let s = Scenario::running_on_a("ctl-renew").await;
    s.clouds.cloud(&s.a).set_faults(Faults { fail_stop: 3, ..Faults::default() });
    let start = jiff::Timestamp::now();
    let (clouds, a) = (s.clouds.clone(), s.a.clone());
    let lease = Duration::from_secs(10);
    let clock = Clock::from_fn(move || {
        let failed = clouds
            .ledger()
            .iter()
            .filter(|e| {
                e.provider == a
                    && e.call == Call::Stop
                    && matches!(e.outcome, Outcome::Failed(_) | Outcome::FailedAfterFence(_))
            })
            .count();
        let step = jiff::SignedDuration::try_from(lease / 2).expect("small");
        start + step * i32::try_from(failed).expect("few")
    });
    let patient = |identity: &str| {
        let mut st = settings(identity, &s.ns);
        st.claim_lease = lease;
        st.stop_attempts = 4;
        st.clock = clock.clone();
        Instance::start(&s.client, st, &s.clouds)
    };
    let (x, y) = (patient("renew-x"), patient("renew-y"));
    switch_with_kubectl(&s.ns, "ws", &s.b);
    wait_ready_on(&s.api, "ws", &s.b, CONVERGE).await;

    let stops: Vec<_> = ledger_of(&s.clouds, &s.uid).into_iter().filter(|e| e.call == Call::Stop).collect();
    assert_eq!(stops.len(), 4, "3 failed stops and 1 that worked: {stops:?}");
    assert!(stops.iter().all(|e| e.epoch == stops[0].epoch && e.caller == stops[0].caller), "one claim: {stops:?}");
    assert_eq!(x.metrics.takeovers.get() + y.metrics.takeovers.get(), 0, "the claim was renewed, never stale");
    assert_invariants(&s.api, &s.clouds).await;
}

/// Provision fails on b: retried with backoff, lastError visible; converges when b recovers.
#[tokio::test]
async fn provision_failure_is_retried_and_visible() {
    let s = Scenario::running_on_a("ctl-provfail").await;
    s.clouds.cloud(&s.b).set_faults(Faults { fail_provision_always: true, ..Faults::default() });
    let _x = s.start("provfail-x");
    switch_with_kubectl(&s.ns, "ws", &s.b);
    let failing = wait_for(&s.api, "ws", "lastError after two attempts", CONVERGE, |ws| {
        status(ws).operation.is_some_and(|o| o.attempts >= 2 && o.last_error.is_some())
    })
    .await;
    let op = status(&failing).operation.expect("operation");
    assert_eq!(op.step, Step::OldStopped, "roll forward only: the old compute stays stopped");
    assert!(op.last_error.unwrap_or_default().contains("injected"), "lastError should say what failed");
    s.clouds.cloud(&s.b).set_faults(Faults::default());
    wait_ready_on(&s.api, "ws", &s.b, CONVERGE).await;
    assert_eq!(s.live().len(), 1);
    assert_invariants(&s.api, &s.clouds).await;
}

/// A→B→A before the stop: no stop issued, ends on A with its instance. A→B→C after a
/// provision on B already happened: ends on C, nothing live on B.
#[tokio::test]
async fn reverted_and_retargeted_switches() {
    let s = Scenario::running_on_a("ctl-revert").await;
    let before = status(&s.api.get("ws").await.expect("get")).instance.expect("instance");
    let x = s.start_frozen_at("revert-x", FailPoint::AfterClaim);
    switch_with_kubectl(&s.ns, "ws", &s.b);
    s.reached(FailPoint::AfterClaim).await;
    switch_with_kubectl(&s.ns, "ws", &s.a);
    x.kill();
    let _y = s.start("revert-y");
    let ws = wait_ready_on(&s.api, "ws", &s.a, CONVERGE).await;
    assert_eq!(status(&ws).instance, Some(before), "the original instance keeps running");
    assert!(!s.ledger_has(&s.a, Call::Stop, |_| true), "no stop may be issued for a reverted switch");
    assert_invariants(&s.api, &s.clouds).await;

    let s = Scenario::running_on_a("ctl-retarget").await;
    let c = unique("c");
    simulated_provider(&s.client, &c, 5, 5).await;
    let x = s.start_frozen_at("retarget-x", FailPoint::AfterProvision);
    switch_with_kubectl(&s.ns, "ws", &s.b);
    s.reached(FailPoint::AfterProvision).await;
    switch_with_kubectl(&s.ns, "ws", &c);
    x.kill();
    let _y = s.start("retarget-y");
    let ws = wait_ready_on(&s.api, "ws", &c, CONVERGE).await;
    let instance = status(&ws).instance.expect("instance");
    assert_eq!(s.live(), vec![(c.clone(), instance.id)], "nothing may be left on b");
    assert!(s.ledger_has(&s.b, Call::Stop, |o| *o == Outcome::Stopped), "what b created is released");
    assert_invariants(&s.api, &s.clouds).await;
}

/// Deleting the workspace at each step of a switch: zero instances remain anywhere and the
/// object goes away.
#[tokio::test]
async fn delete_at_every_step_leaves_nothing() {
    for point in [FailPoint::AfterClaim, FailPoint::AfterStop, FailPoint::AfterCommit, FailPoint::AfterProvision] {
        let s = Scenario::running_on_a("ctl-delete").await;
        let x = s.start_frozen_at("delete-x", point);
        switch_with_kubectl(&s.ns, "ws", &s.b);
        s.reached(point).await;
        let out = kubectl(&["delete", "workspace", "ws", "-n", &s.ns, "--wait=false"]);
        assert!(out.status.success(), "{}", stderr(&out));
        x.kill();
        let _y = s.start("delete-y");
        eventually(&format!("{point:?}: workspace gone"), CONVERGE, || async {
            s.api.get_opt("ws").await.ok().and_then(|o| o.is_none().then_some(()))
        })
        .await;
        assert!(s.live().is_empty(), "{point:?}: instances left after deletion: {:?}", s.live());
        assert_invariants(&s.api, &s.clouds).await;
    }
}

/// An unknown provider stalls with ProviderNotFound and an Event, without any provider call;
/// fixing the name recovers. A spec edit in the middle of a switch does not break it.
#[tokio::test]
async fn unknown_provider_stalls_and_spec_edits_do_not_break_a_switch() {
    let client = client().await;
    let ns = namespace(&client, "ctl-unknown").await;
    let (a, b) = (unique("a"), unique("b"));
    simulated_provider(&client, &a, 5, 400).await;
    simulated_provider(&client, &b, 5, 5).await;
    let clouds = Clouds::new();
    let api: Api<Workspace> = Api::namespaced(client.clone(), &ns);
    let _x = Instance::start(&client, settings("unknown-x", &ns), &clouds);

    api.create(&PostParams::default(), &workspace("ws", "no-such-cloud")).await.expect("create");
    let stalled = wait_for(&api, "ws", "Stalled ProviderNotFound", CONVERGE, |ws| {
        condition(ws, cond::STALLED) == Some(("True".into(), cond::ConditionReason::ProviderNotFound.as_str().into()))
    })
    .await;
    assert_eq!(condition(&stalled, cond::READY).map(|c| c.0), Some("False".into()));
    wait_for_event(&client, &ns, "ws", cond::ConditionReason::ProviderNotFound.as_str(), CONVERGE).await;
    assert!(clouds.ledger().is_empty(), "no provider may be called: {:?}", clouds.ledger());

    switch_with_kubectl(&ns, "ws", &a);
    let ws = wait_ready_on(&api, "ws", &a, CONVERGE).await;
    assert_eq!(condition(&ws, cond::STALLED).map(|c| c.0), Some("False".into()));

    // Stopping on a takes 400ms; edit the template while the switch is in flight.
    switch_with_kubectl(&ns, "ws", &b);
    wait_for(&api, "ws", "switch in flight", CONVERGE, |ws| status(ws).operation.is_some()).await;
    patch_spec(&api, "ws", serde_json::json!({"template": {"image": "busybox:2", "size": "large"}})).await;
    let ws = wait_ready_on(&api, "ws", &b, CONVERGE).await;
    assert_eq!(ws.spec.template.and_then(|t| t.image).as_deref(), Some("busybox:2"));
    let uid = ws.metadata.uid.clone().expect("uid");
    let switches = ledger_of(&clouds, &uid).iter().filter(|e| e.provider == b && e.outcome.created()).count();
    assert_eq!(switches, 1, "the switch must complete once, not restart");
    assert_invariants(&api, &clouds).await;
}

/// The leak an outside fault campaign found (issue: fence every provider an operation can
/// reach). X claims a→b, stops a, its provisions on b fail; X pauses with a provision on b in
/// hand (epoch 2); the spec moves on to c; Y takes the stale claim over (epoch 3), releases b's
/// key and provisions on c. X wakes and makes its provision on b at epoch 2. Before the fix b
/// had seen only failed calls and a lookup, so its fence was still at 2 and it created an
/// instance nobody would ever stop. Now Y's takeover raises b's fence first: X is refused.
#[tokio::test]
async fn a_paused_holder_cannot_create_compute_after_a_takeover() {
    let s = Scenario::running_on_a("ctl-paused").await;
    let c = unique("c");
    simulated_provider(&s.client, &c, 5, 5).await;
    s.clouds.cloud(&s.b).set_faults(Faults { fail_provision_always: true, ..Faults::default() });
    let x = s.start("paused-x");
    switch_with_kubectl(&s.ns, "ws", &s.b);
    eventually("a failed provision on b", CONVERGE, || async {
        s.ledger_has(&s.b, Call::Provision, |o| !o.created()).then_some(())
    })
    .await;
    // X pauses before its next provision attempt on b, the epoch of its claim in hand.
    x.failpoints.arm(FailPoint::BeforeProvision);
    eventually("X paused before a provision on b", CONVERGE, || async {
        (x.failpoints.frozen_at(FailPoint::BeforeProvision) == 1).then_some(())
    })
    .await;
    switch_with_kubectl(&s.ns, "ws", &c);
    let y = s.start("paused-y");
    let ws = wait_ready_on(&s.api, "ws", &c, CONVERGE).await;
    assert!(y.metrics.takeovers.get() >= 1, "Y must have taken the paused claim over");

    // X wakes up, with b healthy again.
    s.clouds.cloud(&s.b).set_faults(Faults::default());
    x.failpoints.release(FailPoint::BeforeProvision);
    eventually("X's late provision on b answered", CONVERGE, || async {
        ledger_of(&s.clouds, &s.uid)
            .iter()
            .any(|e| {
                e.caller == "paused-x"
                    && e.provider == s.b
                    && e.call == Call::Provision
                    && e.epoch == 2
                    && matches!(e.outcome, Outcome::Fenced { .. })
            })
            .then_some(())
    })
    .await;
    let instance = status(&ws).instance.expect("instance");
    assert_eq!(s.live(), vec![(c.clone(), instance.id)], "exactly one live instance, on c");
    let fenced_first =
        ledger_of(&s.clouds, &s.uid).iter().find(|e| e.caller == "paused-y" && e.provider == s.b).map(|e| e.call);
    assert_eq!(fenced_first, Some(Call::Fence), "Y's first call to b raises its fence");
    assert_invariants(&s.api, &s.clouds).await;
    drop(x);
}

/// The versions of `ws` a watch saw, as (resourceVersion, operation) pairs.
async fn watch_versions(api: Api<Workspace>, until: impl Fn(&Workspace) -> bool, timeout: Duration) -> Vec<Workspace> {
    let mut seen = Vec::new();
    let stream = watcher(api, watcher::Config::default().fields("metadata.name=ws"));
    let mut stream = std::pin::pin!(stream);
    let deadline = tokio::time::Instant::now() + timeout;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, stream.next()).await {
        if let Ok(watcher::Event::Apply(ws) | watcher::Event::InitApply(ws)) = event {
            let done = until(&ws);
            if seen.last().is_none_or(|w: &Workspace| w.metadata.resource_version != ws.metadata.resource_version) {
                seen.push(ws);
            }
            if done {
                return seen;
            }
        }
    }
    panic!("the watch did not see the awaited version within {timeout:?}; saw {} versions", seen.len());
}

/// A holder that waits is neither a hot loop nor taken over. Provision on b fails and then b's
/// ComputeProvider disappears, so the holder holds (ProviderNotFound) with a backoff longer than
/// the claim lease, beside a second instance without leader election. Before the fix every hold
/// write woke the next reconcile at once (hundreds of writes), and a backoff longer than the
/// lease got the live holder taken over again and again. Checked from the versions a watch saw,
/// not from timings: no attempt before the `retryAt` the previous one set, at most one renewal
/// per third of a lease in between, and the epoch never moves.
#[tokio::test]
async fn a_waiting_holder_writes_once_per_wait_and_keeps_its_claim() {
    let s = Scenario::running_on_a("ctl-wait").await;
    let patient = |identity: &str| {
        let mut st = settings(identity, &s.ns);
        st.claim_lease = Duration::from_secs(6);
        st.provision_backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(12));
        Instance::start(&s.client, st, &s.clouds)
    };
    s.clouds.cloud(&s.b).set_faults(Faults { fail_provision_always: true, ..Faults::default() });
    let (x, y) = (patient("wait-x"), patient("wait-y"));
    switch_with_kubectl(&s.ns, "ws", &s.b);
    eventually("a failed provision on b", CONVERGE, || async {
        s.ledger_has(&s.b, Call::Provision, |o| !o.created()).then_some(())
    })
    .await;
    let providers: Api<switchyard::api::ComputeProvider> = Api::all(s.client.clone());
    providers.delete(&s.b, &Default::default()).await.expect("delete provider b");
    let attempts = |ws: &Workspace| status(ws).operation.map(|o| o.attempts).unwrap_or_default();
    let versions = watch_versions(s.api.clone(), |ws| attempts(ws) >= 5, Duration::from_secs(120)).await;

    let ops: Vec<_> = versions.iter().filter_map(|ws| status(ws).operation).collect();
    let epochs: std::collections::BTreeSet<i64> = ops.iter().map(|o| o.epoch).collect();
    assert_eq!(epochs.len(), 1, "no takeover of the live holder: epochs {epochs:?}");
    // From each attempt (the write that raised `attempts` and set `retryAt`) to the next.
    let mut last_attempt = &ops[0];
    let mut writes_since_attempt = 0;
    for op in &ops[1..] {
        if op.attempts == last_attempt.attempts {
            writes_since_attempt += 1;
            continue;
        }
        if let Some(retry_at) = &last_attempt.retry_at {
            assert!(op.renewed_at.0 >= retry_at.0, "attempt {} came before its retryAt", op.attempts);
            // One renewal per third of the lease (2 s) of the backoff, at most; renewedAt has
            // second precision, so a renewal may come up to 1 s early.
            let wait = retry_at.0.duration_since(last_attempt.renewed_at.0).as_secs_f64();
            let allowed = (wait / 1.0).ceil() as usize;
            assert!(
                writes_since_attempt <= allowed,
                "{writes_since_attempt} renewals while waiting {wait:.1}s for attempt {} (at most {allowed})",
                op.attempts
            );
        }
        last_attempt = op;
        writes_since_attempt = 0;
    }
    assert!(versions.len() < 40, "{} status versions for 5 attempts: a hot loop", versions.len());
    assert_eq!(x.metrics.takeovers.get() + y.metrics.takeovers.get(), 0);

    // Once b is back, the switch completes under the same claim.
    simulated_provider(&s.client, &s.b, 5, 5).await;
    s.clouds.cloud(&s.b).set_faults(Faults::default());
    wait_ready_on(&s.api, "ws", &s.b, CONVERGE).await;
    assert_invariants(&s.api, &s.clouds).await;
}

/// Compute that no status names is collected by the inventory after its grace period, under
/// the workspace's current epoch, with an Event; compute a status names, and compute of another
/// cluster, is left alone.
#[tokio::test]
async fn the_inventory_stops_compute_no_status_names() {
    let s = Scenario::running_on_a("ctl-inventory").await;
    let ws = s.api.get("ws").await.expect("ws");
    let named = status(&ws).instance.expect("instance");
    let call = |cluster: &str| switchyard::provider::CallContext {
        namespace: s.ns.clone(),
        name: "ws".into(),
        workspace_uid: s.uid.clone(),
        epoch: status(&ws).epoch,
        caller: "by-hand".into(),
        operation_id: "manual".into(),
        cluster: cluster.into(),
    };
    // A manual create for this cluster, and one of another cluster sharing the provider.
    let stray = match s.clouds.cloud(&s.b).provision_now(&call("default"), &format!("{}.stray", s.uid)) {
        switchyard::provider::simulated::Answer::Reply(Ok(p)) => p.instance.id,
        _ => panic!("manual create failed"),
    };
    let foreign = match s.clouds.cloud(&s.b).provision_now(&call("other-cluster"), "foreign.key") {
        switchyard::provider::simulated::Answer::Reply(Ok(p)) => p.instance.id,
        _ => panic!("manual create failed"),
    };
    let mut st = settings("inventory-x", &s.ns);
    st.inventory_interval = Some(Duration::from_millis(300));
    st.inventory_grace = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let x = Instance::start(&s.client, st, &s.clouds);
    eventually("the stray instance stopped", CONVERGE, || async {
        s.ledger_has(&s.b, Call::Stop, |o| *o == Outcome::Stopped).then_some(())
    })
    .await;
    let took = started.elapsed();
    eprintln!("inventory collected the stray instance {took:?} after start (grace 1 s, interval 300 ms)");
    let stop = ledger_of(&s.clouds, &s.uid).into_iter().find(|e| e.call == Call::Stop).expect("stop");
    assert_eq!(stop.instance.as_deref(), Some(stray.as_str()));
    assert_eq!(stop.operation_id, "inventory");
    assert_eq!(stop.epoch, status(&ws).epoch, "under the workspace's current epoch");
    let live: Vec<String> = s.clouds.live_instances().into_iter().map(|i| i.id).collect();
    assert!(live.contains(&named.id), "the named instance runs on");
    assert!(live.contains(&foreign), "another cluster's instance is never touched");
    assert!(!live.contains(&stray));
    wait_for_event(&s.client, &s.ns, "ws", cond::EventReason::LeakCollected.as_str(), CONVERGE).await;
    let collected = x.metrics.encode();
    assert!(collected.contains("switchyard_leaks_collected_total{provider=\""), "{collected}");
}
