//! The scenarios only `switchyard provider-sim` processes can play (driver `http`, each token in
//! a Secret the ComputeProvider names, real TCP, the real API server): a provider process killed
//! mid-call and restarted, credentials that are missing, wrong or rotated, and controller
//! processes whose leader is killed. The scenarios both transports can express are in
//! `tests/scenarios.rs`. Every test checks DESIGN.md §3 from the provider-sims' ledgers, merged
//! into one history.

mod support;

use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use support::fixtures::*;
use support::scenario::*;
use support::sims::*;
use support::*;
use switchyard::api::conditions as cond;
use switchyard::api::{ComputeProvider, Step};
use switchyard::provider::simulated::{Call, Faults, LedgerEntry, Outcome};

/// SIGKILL provider-sim B while the switch's provision is in flight at it: the operation
/// records why it cannot go on; once B is restarted (same address, state replayed from its
/// journal) the switch completes with exactly one instance.
#[tokio::test]
async fn killing_provider_b_mid_provision_resumes_when_it_is_back() {
    let started = Instant::now();
    let mut s = Scenario::running_on_a(Transport::Http, "e2e-killsim").await;
    // B takes the provision in (and ledgers it) but never answers: the call is in flight.
    s.set_faults(&s.b, Faults { hang: true, ..Faults::default() }).await;
    let x = s.start("killsim-x");
    switch_with_kubectl(&s.ns, "ws", &s.b);
    let hung = s
        .call_seen(&s.b, "provision in flight at b", |e| e.call == Call::Provision && e.outcome == Outcome::Hung)
        .await;
    let mid = s.status().await;
    let op = mid.operation.clone().expect("operation in flight");
    assert_eq!((op.step, mid.instance.clone()), (Step::OldStopped, None), "the old compute is stopped and committed");
    assert!(s.sim(&s.a).live().await.is_empty(), "nothing runs on a while b provisions");
    let before_kill = s.sim(&s.b).ledger().await;
    let pid = s.sim(&s.b).process.pid();

    let b = s.b.clone();
    s.sim_mut(&b).process.kill().await.expect("kill -9 b");
    let down = wait_for(&s.api, "ws", "lastError naming b", CONVERGE, |ws| {
        status(ws).operation.and_then(|o| o.last_error).is_some_and(|e| e.contains(&s.b))
    })
    .await;
    let down_op = status(&down).operation.expect("operation");
    assert_eq!((down_op.id.as_str(), down_op.step), (op.id.as_str(), Step::OldStopped), "roll forward only");
    assert!(status(&down).instance.is_none() && s.sim(&s.a).live().await.is_empty(), "nothing may start elsewhere");
    let error_while_down = down_op.last_error.unwrap_or_default();

    s.sim_mut(&b).process.restart().await.expect("restart b");
    assert_ne!(s.sim(&s.b).process.pid(), pid, "a new process");
    assert_eq!(
        s.sim(&s.b).process.faults().await.expect("faults"),
        Faults::default(),
        "faults do not survive a restart"
    );
    let replayed = s.sim(&s.b).ledger().await;
    assert_eq!(&replayed[..before_kill.len()], &before_kill[..], "b's ledger survived kill -9 as it was");

    let ws = wait_ready_on(&s.api, "ws", &s.b, CONVERGE).await;
    let instance = status(&ws).instance.expect("instance");
    assert_eq!(s.live().await, vec![(s.b.clone(), instance.id.clone())], "exactly one instance, on b");
    let ledger = s.assert_invariants().await;
    let provisions: Vec<&LedgerEntry> = ledger.iter().filter(|e| is_provision_of(e, &s.b)).collect();
    let created: Vec<&&LedgerEntry> = provisions.iter().filter(|e| e.outcome.created()).collect();
    assert!(
        matches!(created.as_slice(), [c] if c.key == hung.key && c.instance.as_deref() == Some(instance.id.as_str())),
        "one create on b, under the key of the provision that was in flight: {provisions:#?}"
    );
    assert!(x.is_running(), "the controller survived its provider's death");
    let what = format!(
        "e2e kill provider: in-flight provision ledgered as Hung at b seq {}; while b was down: {error_while_down:?}; \
         after restart ({} entries replayed): {} provisions at b, {} created",
        hung.seq,
        before_kill.len(),
        provisions.len(),
        created.len(),
    );
    report(&what, started, &ledger, claims(&[&x]));
}

/// Waits until ComputeProvider `name` reports Ready `status` with `reason`; its message.
async fn provider_ready(client: &kube::Client, name: &str, status: &str, reason: &str) -> String {
    let api: Api<ComputeProvider> = Api::all(client.clone());
    eventually(&format!("provider {name} Ready={status} {reason}"), CONVERGE, || async {
        let p = api.get(name).await.ok()?;
        let conditions = p.status.map(|s| s.conditions).unwrap_or_default();
        cond::get(&conditions, cond::READY)
            .filter(|c| c.status == status && c.reason == reason)
            .map(|c| c.message.clone())
    })
    .await
}

/// Providers whose Secret is missing or whose token is wrong: the provider goes Ready=False,
/// workspaces naming it stall with a clear reason before any call, nothing is stopped or
/// leaked; a token that goes wrong mid-life fails the stop clearly; fixing the Secret recovers.
#[tokio::test]
async fn bad_credentials_stall_clearly_and_recover() {
    let started = Instant::now();
    let mut s = Scenario::running_on_a(Transport::Http, "e2e-badcreds").await;
    let on_a = s.status().await.instance.expect("instance on a");
    // w: a healthy provider-sim, but its Secret holds the wrong token.
    let w_sim = Sim::start(&unique("w")).await;
    put_secret(&s.client, &s.ns, "w-token", serde_json::json!({"token": "not-the-right-token"})).await;
    http_provider(&s.client, &w_sim.name, &w_sim, Some(secret_ref(&s.ns, "w-token"))).await;
    // m: its Secret does not exist (it points at w's process, which must never be called).
    let m = unique("m");
    http_provider(&s.client, &m, &w_sim, Some(secret_ref(&s.ns, "absent-token"))).await;
    let w = w_sim.name.clone();
    s.adopt(w_sim);
    let x = s.start("badcreds-x");

    let m_msg = provider_ready(&s.client, &m, "False", cond::ConditionReason::ProviderMisconfigured.as_str()).await;
    assert!(m_msg.contains(&format!("Secret {}/absent-token", s.ns)) && m_msg.contains("does not exist"), "{m_msg}");
    let w_msg = provider_ready(&s.client, &w, "False", cond::ConditionReason::ProviderMisconfigured.as_str()).await;
    assert!(w_msg.contains("401") && w_msg.contains("w-token") && !w_msg.contains("not-the-right-token"), "{w_msg}");

    // Switching to either stalls at rest: no claim, nothing stopped, still running on a.
    s.api.create(&PostParams::default(), &workspace("ws-m", &m)).await.expect("create ws-m");
    for (target, says) in [(&m, "does not exist"), (&w, "401")] {
        switch_with_kubectl(&s.ns, "ws", target);
        let stalled = wait_for(&s.api, "ws", &format!("ws stalled on {target}"), CONVERGE, |ws| {
            status(ws).observed_generation == ws.metadata.generation
                && stalled_with(ws, cond::ConditionReason::ProviderMisconfigured)
        })
        .await;
        let st = status(&stalled);
        let message = stalled_message(&stalled);
        assert!(message.contains(target.as_str()) && message.contains(says), "{message}");
        assert_eq!(condition(&stalled, cond::READY).map(|c| c.0), Some("False".into()));
        assert!(st.operation.is_none(), "no claim for an unusable target");
        assert_eq!(st.instance.as_ref(), Some(&on_a), "still on a");
    }
    let ws_m = wait_stalled(&s.api, "ws-m", cond::ConditionReason::ProviderMisconfigured, CONVERGE).await;
    assert!(status(&ws_m).instance.is_none() && status(&ws_m).operation.is_none());
    assert_eq!(s.live().await, vec![(s.a.clone(), on_a.id.clone())], "a's instance keeps running");
    assert!(s.sim(&w).ledger().await.is_empty(), "no call may reach a provider without valid credentials");
    // Events are published in the background: wait for it.
    wait_for_event(&s.client, &s.ns, "ws", cond::ConditionReason::ProviderMisconfigured.as_str(), CONVERGE).await;

    // The right token in the Secret: w is probed Ready and the switch goes through.
    put_secret(&s.client, &s.ns, "w-token", serde_json::json!({"token": s.sim(&w).process.token()})).await;
    let on_w = wait_ready_on(&s.api, "ws", &w, CONVERGE).await;
    let on_w = status(&on_w).instance.expect("instance on w");

    // The provider's token is rotated but the Secret is not: switching away cannot stop w.
    s.sim_mut(&w).process.rotate_token("rotated-token-value").expect("rotate");
    switch_with_kubectl(&s.ns, "ws", &s.a);
    let refused = wait_for(&s.api, "ws", "ws stalled on the refused stop", CONVERGE, |ws| {
        status(ws).observed_generation == ws.metadata.generation
            && (stalled_with(ws, cond::ConditionReason::StopFailed)
                || stalled_with(ws, cond::ConditionReason::ProviderMisconfigured))
    })
    .await;
    let st = status(&refused);
    let stall = cond::get(&st.conditions, cond::STALLED).cloned().expect("stalled");
    assert!(stall.message.contains("401") && !stall.message.contains("rotated-token-value"), "{}", stall.message);
    // Still on w, nothing stopped, nothing started (a released stop leaves the instance
    // marked unconfirmed: whether it stopped is for the provider to say).
    let still = st.instance.clone().map(|i| switchyard::api::Instance { unconfirmed: false, ..i });
    assert_eq!(still.as_ref(), Some(&on_w), "still on w: nothing stopped, nothing started");
    assert!(s.sim(&s.a).live().await.is_empty(), "nothing may start on a before w stops");

    put_secret(&s.client, &s.ns, "w-token", serde_json::json!({"token": "rotated-token-value"})).await;
    let back = wait_ready_on(&s.api, "ws", &s.a, CONVERGE).await;
    let back = status(&back).instance.expect("instance on a");
    let live = s.live().await;
    assert!(matches!(live.as_slice(), [(_, id)] if *id == back.id), "exactly one instance: {live:?}");
    assert!(x.is_running(), "the controller survived its bad providers");
    let ledger = s.assert_invariants().await;
    let what = format!(
        "e2e bad credentials: stalls {m_msg:?} / {w_msg:?}; stop refused: {} {:?}",
        stall.reason, stall.message
    );
    report(&what, started, &ledger, claims(&[&x]));
}

/// Two `switchyard controller` processes with leader election; the leader is SIGKILLed (no
/// graceful shutdown, its Lease not released) while the switch's provision hangs at b. The
/// standby takes the Lease once it expires, takes over the dead leader's claim at once, and
/// finishes the switch: one instance, on b, every call under a claim the API server recorded.
#[tokio::test]
async fn leader_process_killed_mid_switch_is_replaced_by_the_standby() {
    use k8s_openapi::api::coordination::v1::Lease;
    const LEASE: Duration = Duration::from_secs(3);
    let s = Scenario::running_on_a(Transport::Http, "e2e-leaderkill").await;
    let leases: Api<Lease> = Api::namespaced(s.client.clone(), &s.ns);
    let holder = || lease_holder(&leases, "switchyard");
    let lease = format!("{}s", LEASE.as_secs());
    let election =
        ["--leader-election", "--lease-name", "switchyard", "--lease-namespace", &s.ns, "--lease-duration", &lease];
    let replica = |identity: &str| controller_process(identity, &s.ns, &election, &[]);

    let mut p1 = replica("leaderkill-1");
    eventually("leaderkill-1 leads", CONVERGE, || async {
        (holder().await.as_deref() == Some("leaderkill-1")).then_some(())
    })
    .await;
    let _p2 = replica("leaderkill-2");
    // b takes the provision in but never answers: the leader is mid-switch, after the commit.
    s.set_faults(&s.b, Faults { hang: true, ..Faults::default() }).await;
    switch_with_kubectl(&s.ns, "ws", &s.b);
    s.call_seen(&s.b, "provision in flight at b", |e| e.call == Call::Provision && e.outcome == Outcome::Hung).await;
    let mid = s.status().await;
    let op = mid.operation.expect("operation in flight");
    assert_eq!((op.step, op.holder.as_str()), (Step::OldStopped, "leaderkill-1"), "the leader holds the switch");

    p1.start_kill().expect("SIGKILL the leader");
    let _ = p1.wait().await;
    let killed = Instant::now();
    s.set_faults(&s.b, Faults::default()).await;
    eventually("leaderkill-2 leads", CONVERGE, || async {
        (holder().await.as_deref() == Some("leaderkill-2")).then_some(())
    })
    .await;
    let elected = killed.elapsed();
    let ws = wait_ready_on(&s.api, "ws", &s.b, CONVERGE).await;
    let resumed = killed.elapsed();

    let instance = status(&ws).instance.expect("instance");
    assert_eq!(s.live().await, vec![(s.b.clone(), instance.id)], "exactly one instance, on b");
    let ledger = s.assert_invariants().await;
    let by_standby: Vec<_> = ledger.iter().filter(|e| e.caller == "leaderkill-2").collect();
    assert!(
        !by_standby.is_empty() && by_standby.iter().all(|e| e.operation_id == op.id && e.epoch > op.epoch),
        "the standby finished the same operation under a newer epoch: {by_standby:?}"
    );
    eprintln!("process failover: new leader {elected:.1?} after SIGKILL, switch finished after {resumed:.1?}");
}
