//! The Workspace controller against the real API server, with the in-process simulated cloud:
//! the scenarios that need what only a provider in this process offers. A lost stop answer that
//! the controller, not a driver's retry, must handle; a clock driven by the provider's ledger; a
//! reconcile handed a stale copy; compute made by hand behind the controller's back. The
//! scenarios both transports can express are in `tests/scenarios.rs`.
//! Every test checks DESIGN.md §3 from the providers' ledger, not from the controller.

mod support;

use std::time::Duration;

use kube::api::{Api, PostParams};
use support::fixtures::*;
use support::scenario::{CONVERGE, Scenario, Transport};
use support::*;
use switchyard::api::Workspace;
use switchyard::api::conditions as cond;
use switchyard::controller::Clock;
use switchyard::provider::simulated::{Call, Faults, Outcome};
use switchyard::runtime::Backoff;

/// A controller handed a stale copy (an old resourceVersion) gets 409 on its claim and stops:
/// no provider call, no write.
#[tokio::test]
async fn stale_copy_loses_its_claim_and_calls_no_provider() {
    use kube::api::{Patch, PatchParams};
    use kube::runtime::reflector;
    use switchyard::controller::{Context, Handles, reconcile};
    use switchyard::provider::Dispatcher;

    let Scenario { client, ns, a, clouds, api, .. } = Scenario::new(Transport::InProcess, "ctl-stale").await;
    let mut ws = workspace("ws-stale", &a);
    ws.metadata.finalizers = Some(vec![switchyard::api::FINALIZER.to_string()]);
    let stale = api.create(&PostParams::default(), &ws).await.expect("create");
    // Someone else changes the object: our copy is now stale.
    let label = serde_json::json!({"metadata": {"labels": {"touched": "yes"}}});
    let fresh = api.patch("ws-stale", &PatchParams::default(), &Patch::Merge(label)).await.expect("label");
    assert_ne!(fresh.metadata.resource_version, stale.metadata.resource_version);

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

/// The write that finishes a provision lands, but its answer is lost on the way back (and, in
/// the second round, so is the answer to the read that would have told); the next reconciles
/// are handed the copy from before that write, as a cache that has not caught up would. They
/// must read the workspace afresh and call no provider again: on that copy its operation still
/// looks unfinished, and acting on it would repeat the provision (or, had the spec moved on
/// meanwhile, release the compute the lost write recorded). Found by the model check
/// (docs/model-check.md) for the second of them, before the fresh read was remembered.
#[tokio::test]
async fn a_write_landed_unanswered_is_not_followed_by_calls_on_an_older_copy() {
    for read_lost_too in [false, true] {
        unanswered_write(read_lost_too).await;
    }
}

async fn unanswered_write(read_lost_too: bool) {
    use kube::runtime::reflector;
    use switchyard::controller::{Context, Handles, reconcile};
    use switchyard::provider::Dispatcher;

    let s = Scenario::new(Transport::InProcess, "ctl-unanswered").await;
    let lossy = support::lossy::LoseAnswer::default();
    let mut ws = workspace("ws", &s.a);
    ws.metadata.finalizers = Some(vec![switchyard::api::FINALIZER.to_string()]);
    let created = s.api.create(&PostParams::default(), &ws).await.expect("create");
    let uid = created.metadata.uid.clone().expect("uid");
    // Every version from the created one on, so that the test can hand out an older copy.
    let mut versions = Versions::of(&s.api, "ws").await;
    // The write that finishes the operation is the one that clears it.
    lossy.arm(r#""operation":null"#, read_lost_too);
    let (providers, _writer) = reflector::store();
    let handles = Handles::default();
    let dispatcher = Dispatcher::new(s.clouds.clone());
    let ctx = Context::new(lossy.client().await, s.settings("unanswered-x"), dispatcher, providers, &handles);
    let first = reconcile(std::sync::Arc::new(created.clone()), ctx.clone()).await;
    assert_eq!(lossy.lost(), 1, "the finishing write was made and its answer lost");
    // Unsure whether it landed, the reconcile fails (and is retried), or it found out.
    assert_eq!(first.is_err(), read_lost_too, "{first:?}");

    let seen = versions.until(CONVERGE, |ws| ws.settled_on(&s.a)).await;
    assert_eq!(seen[0].metadata.resource_version, created.metadata.resource_version, "the watch starts there");
    let settled = seen.last().expect("settled").clone();
    let calls = ledger_of(&s.clouds, &uid);
    assert_eq!(calls.len(), 1, "one provision: {calls:#?}");
    // The newest version that still shows the operation: our last write whose answer came back.
    let older = seen.iter().rev().find(|w| w.operation().is_some()).expect("a version with the operation").clone();
    reconcile(std::sync::Arc::new(older.clone()), ctx.clone()).await.expect("reconcile");
    assert_eq!(ledger_of(&s.clouds, &uid), calls, "a provider was called on the older copy");
    // That reconcile read the workspace afresh; a later one handed the same older copy (a watch
    // event arriving late, a resync) must not act on it either.
    reconcile(std::sync::Arc::new(older), ctx).await.expect("reconcile");

    assert_eq!(ledger_of(&s.clouds, &uid), calls, "a provider was called on the older copy, after a fresh read");
    let now = s.api.get("ws").await.expect("get");
    assert!(now.settled_on(&s.a), "{:?}", now.status);
    assert_eq!(status(&now).instance, status(&settled).instance);
    s.assert_invariants().await;
}

/// A stop takes effect but its answer is lost, and the provider allows one attempt, so the stop
/// fails past its budget while the compute is in fact gone; then the user switches back. The workspace must not read Ready on
/// compute that no longer runs: the instance is marked unconfirmed, the provider is asked, and
/// the workspace is provisioned afresh, named by its status. (Found by the model checker.)
#[tokio::test]
async fn a_stop_that_took_effect_unanswered_is_not_mistaken_for_running_compute() {
    let s = Scenario::running_on_a(Transport::InProcess, "ctl-lost-stop").await;
    // One attempt per claim: a retry would look the instance up and see it stopped.
    let policy = serde_json::json!({"spec": {"stopPolicy": {"maxAttempts": 1, "initialBackoffMs": 1}}}).to_string();
    let out = kubectl(&["patch", "computeprovider", &s.a, "--type", "merge", "-p", &policy]);
    assert!(out.status.success(), "{}", stderr(&out));
    s.clouds.cloud(&s.a).set_faults(Faults { drop_stop_response: 1, ..Faults::default() });
    let _x = s.start("lost-stop-x");
    switch_with_kubectl(&s.ns, "ws", &s.b);
    let stalled = wait_stalled(&s.api, "ws", cond::ConditionReason::StopFailed, CONVERGE).await;
    let before = status(&stalled).instance.expect("still recorded");
    assert!(before.unconfirmed, "its stop may have happened");
    assert!(s.live().await.is_empty(), "the stop did take effect");
    s.clouds.cloud(&s.a).set_faults(Faults::default());
    switch_with_kubectl(&s.ns, "ws", &s.a);
    let ws = wait_for(&s.api, "ws", "Ready on a with running compute", CONVERGE, |ws| {
        ws.settled_on(&s.a) && status(ws).instance.is_some_and(|i| i.id != before.id && !i.unconfirmed)
    })
    .await;
    let named = status(&ws).instance.expect("instance");
    let live = s.live().await;
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].1, named.id, "status names the compute that runs");
    s.assert_invariants().await;
}

/// Failing stops retried past the claim lease: the holder renews its claim before each
/// retry, so a second instance (no leader election) never takes it over, and every stop call
/// carries one epoch. Time is driven explicitly, not raced: both instances read a clock that
/// moves half a lease with every failed stop in the ledger, so three failed stops span 1.5
/// leases whatever the machine's load (renewedAt has second precision: half a lease of 10 s
/// leaves room for it). Without the renewal, the second instance takes over.
#[tokio::test]
async fn retries_longer_than_the_claim_lease_keep_the_claim() {
    let s = Scenario::running_on_a(Transport::InProcess, "ctl-renew").await;
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
        let mut st = s.settings(identity);
        st.claim_lease = lease;
        st.stop_attempts = 4;
        st.clock = clock.clone();
        s.start_with(st)
    };
    let (x, y) = (patient("renew-x"), patient("renew-y"));
    switch_with_kubectl(&s.ns, "ws", &s.b);
    wait_ready_on(&s.api, "ws", &s.b, CONVERGE).await;

    let stops: Vec<_> = s.ledger().await.into_iter().filter(|e| e.call == Call::Stop).collect();
    assert_eq!(stops.len(), 4, "3 failed stops and 1 that worked: {stops:?}");
    assert!(stops.iter().all(|e| e.epoch == stops[0].epoch && e.caller == stops[0].caller), "one claim: {stops:?}");
    assert_eq!(x.metrics.takeovers.get() + y.metrics.takeovers.get(), 0, "the claim was renewed, never stale");
    s.assert_invariants().await;
}

/// An unknown provider stalls with ProviderNotFound and an Event, without any provider call;
/// fixing the name recovers. A spec edit in the middle of a switch does not break it.
#[tokio::test]
async fn unknown_provider_stalls_and_spec_edits_do_not_break_a_switch() {
    let Scenario { client, ns, a, b, clouds, api, .. } = Scenario::new(Transport::InProcess, "ctl-unknown").await;
    clouds.cloud(&a).set_faults(Faults { extra_latency: Duration::from_millis(400), ..Faults::default() });
    let _x = Instance::start(&client, settings("unknown-x", &ns), &clouds);

    api.create(&PostParams::default(), &workspace("ws", "no-such-cloud")).await.expect("create");
    let stalled = wait_stalled(&api, "ws", cond::ConditionReason::ProviderNotFound, CONVERGE).await;
    assert_eq!(condition(&stalled, cond::READY).map(|c| c.0), Some("False".into()));
    wait_for_event(&client, &ns, "ws", cond::ConditionReason::ProviderNotFound.as_str(), CONVERGE).await;
    assert!(clouds.ledger().is_empty(), "no provider may be called: {:?}", clouds.ledger());

    switch_with_kubectl(&ns, "ws", &a);
    let ws = wait_ready_on(&api, "ws", &a, CONVERGE).await;
    assert_eq!(condition(&ws, cond::STALLED).map(|c| c.0), Some("False".into()));

    // Stopping on a takes over 400ms; edit the template while the switch is in flight.
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

/// A holder that waits is neither a hot loop nor taken over. Provision on b fails and then b's
/// ComputeProvider disappears, so the holder holds (ProviderNotFound) with a backoff longer than
/// the claim lease, beside a second instance without leader election. Before the fix every hold
/// write woke the next reconcile at once (hundreds of writes), and a backoff longer than the
/// lease got the live holder taken over again and again. Checked from the versions a watch saw,
/// not from timings: no attempt before the `retryAt` the previous one set, at most one renewal
/// per third of a lease in between, and the epoch never moves.
#[tokio::test]
async fn a_waiting_holder_writes_once_per_wait_and_keeps_its_claim() {
    let s = Scenario::running_on_a(Transport::InProcess, "ctl-wait").await;
    let patient = |identity: &str| {
        let mut st = s.settings(identity);
        st.claim_lease = Duration::from_secs(6);
        st.provision_backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(12));
        s.start_with(st)
    };
    s.clouds.cloud(&s.b).set_faults(Faults { fail_provision_always: true, ..Faults::default() });
    let (x, y) = (patient("wait-x"), patient("wait-y"));
    switch_with_kubectl(&s.ns, "ws", &s.b);
    s.call_seen(&s.b, "a failed provision on b", |e| e.call == Call::Provision && !e.outcome.created()).await;
    let providers: Api<switchyard::api::ComputeProvider> = Api::all(s.client.clone());
    providers.delete(&s.b, &Default::default()).await.expect("delete provider b");
    let attempts = |ws: &Workspace| status(ws).operation.map(|o| o.attempts).unwrap_or_default();
    let versions = Versions::of(&s.api, "ws").await.until(Duration::from_secs(120), |ws| attempts(ws) >= 5).await;

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
    s.assert_invariants().await;
}

/// Compute that no status names is collected by the inventory after its grace period, under
/// the workspace's current epoch, with an Event; compute a status names, and compute of another
/// cluster, is left alone.
#[tokio::test]
async fn the_inventory_stops_compute_no_status_names() {
    let s = Scenario::running_on_a(Transport::InProcess, "ctl-inventory").await;
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
    let mut st = s.settings("inventory-x");
    st.inventory_interval = Some(Duration::from_millis(300));
    st.inventory_grace = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let x = s.start_with(st);
    let stop = s
        .call_seen(&s.b, "the stray instance stopped", |e| e.call == Call::Stop && e.outcome == Outcome::Stopped)
        .await;
    let took = started.elapsed();
    eprintln!("inventory collected the stray instance {took:?} after start (grace 1 s, interval 300 ms)");
    let first = s.ledger().await.into_iter().find(|e| e.call == Call::Stop).expect("stop");
    assert_eq!(first, stop, "the first stop of the workspace's compute is this one");
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
