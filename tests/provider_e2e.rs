//! The controller's race, crash and failure scenarios end to end: two `switchyard provider-sim`
//! processes as providers A and B (driver `http`, each token in a Secret the ComputeProvider
//! names), real TCP, the real API server, controller instances in this process. Every test
//! checks DESIGN.md §3 from the provider-sims' ledgers, merged into one history.

mod support;

use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use support::fixtures::*;
use support::sims::*;
use support::*;
use switchyard::api::conditions as cond;
use switchyard::api::{ComputeProvider, Step, Workspace};
use switchyard::controller::FailPoint;
use switchyard::provider::simulated::{Call, Clouds, Faults, LedgerEntry, Outcome};

/// Generous: two cores shared with builds, and a provider probed healthy again only every 15 s.
const CONVERGE: Duration = Duration::from_secs(90);

/// Namespace, providers A and B (provider-sims), and optionally `ws` placed on A.
struct Scenario {
    client: kube::Client,
    ns: String,
    a: Sim,
    b: Sim,
    api: Api<Workspace>,
    /// The http providers never use it; `Instance` wants one.
    clouds: Clouds,
    /// metadata.uid of `ws`, once created.
    uid: String,
}

impl Scenario {
    async fn new(prefix: &str) -> Self {
        let client = client().await;
        let ns = namespace(&client, prefix).await;
        let a = Sim::provider(&client, &ns, &unique("a")).await;
        let b = Sim::provider(&client, &ns, &unique("b")).await;
        let api: Api<Workspace> = Api::namespaced(client.clone(), &ns);
        Self { client, ns, a, b, api, clouds: Clouds::new(), uid: String::new() }
    }

    /// `ws` Running on A, placed by a controller that is then shut down.
    async fn running_on_a(prefix: &str) -> Self {
        let mut s = Self::new(prefix).await;
        let setup = s.start(&format!("{prefix}-setup"));
        s.api.create(&PostParams::default(), &workspace("ws", &s.a.name)).await.expect("create");
        let ws = wait_ready_on(&s.api, "ws", &s.a.name, CONVERGE).await;
        setup.stop().await;
        s.uid = ws.metadata.uid.expect("uid");
        s
    }

    fn start(&self, identity: &str) -> Instance {
        Instance::start(&self.client, settings(identity, &self.ns), &self.clouds)
    }

    fn start_frozen_at(&self, identity: &str, point: FailPoint) -> Instance {
        Instance::start_frozen_at(&self.client, settings(identity, &self.ns), &self.clouds, point)
    }

    /// Waits until a reconcile of `x` is frozen at `point`.
    async fn frozen(&self, x: &Instance, point: FailPoint) {
        eventually(&format!("{} frozen at {point:?}", x.identity), CONVERGE, || async {
            (x.failpoints.frozen_at(point) > 0).then_some(())
        })
        .await
    }

    /// The calls made for `ws`, both providers merged into one history.
    async fn ledger(&self) -> Vec<LedgerEntry> {
        merged_ledger(&[&self.a, &self.b]).await.into_iter().filter(|e| e.workspace_uid == self.uid).collect()
    }

    /// `ws`'s Running instances, as (provider, id).
    async fn live(&self) -> Vec<(String, String)> {
        let live = live_instances(&[&self.a, &self.b]).await;
        live.into_iter().filter(|i| i.workspace_uid == self.uid).map(|i| (i.provider, i.id)).collect()
    }

    /// DESIGN.md §3 from both ledgers and all statuses; the merged ledger.
    async fn assert_invariants(&self) -> Vec<LedgerEntry> {
        assert_sim_invariants(&self.api, &[&self.a, &self.b]).await
    }

    /// Waits for a call of `ws` in `sim`'s ledger that `pred` accepts.
    async fn call_seen(&self, sim: &Sim, what: &str, pred: impl Fn(&LedgerEntry) -> bool) -> LedgerEntry {
        eventually(what, CONVERGE, || async {
            sim.ledger().await.into_iter().find(|e| e.workspace_uid == self.uid && pred(e))
        })
        .await
    }
}

/// "N provider calls (P provisions, S stops, L lookups, F fenced)".
fn calls(ledger: &[LedgerEntry]) -> String {
    let count = |call: Call| ledger.iter().filter(|e| e.call == call).count();
    let fenced = ledger.iter().filter(|e| matches!(e.outcome, Outcome::Fenced { .. })).count();
    format!(
        "{} provider calls ({} provisions, {} stops, {} lookups, {fenced} fenced)",
        ledger.len(),
        count(Call::Provision),
        count(Call::Stop),
        count(Call::Lookup)
    )
}

/// Claims won plus takeovers, over `instances`.
fn claims(instances: &[&Instance]) -> u64 {
    instances.iter().map(|i| i.metrics.claims_won.get() + i.metrics.takeovers.get()).sum()
}

fn is_provision_of(e: &LedgerEntry, provider: &str) -> bool {
    e.provider == provider && e.call == Call::Provision
}

#[tokio::test]
async fn switch_over_http_stops_a_before_creating_on_b() {
    let started = Instant::now();
    let mut s = Scenario::new("e2e-switch").await;
    let x = s.start("switch-x");
    s.api.create(&PostParams::default(), &workspace("ws", &s.a.name)).await.expect("create");
    let running = wait_ready_on(&s.api, "ws", &s.a.name, CONVERGE).await;
    s.uid = running.metadata.uid.clone().expect("uid");
    let first = status(&running).instance.expect("instance on a");

    switch_with_kubectl(&s.ns, "ws", &s.b.name);
    let done = wait_ready_on(&s.api, "ws", &s.b.name, CONVERGE).await;
    let second = status(&done).instance.expect("instance on b");
    let last = status(&done).last_switch.expect("lastSwitch");
    assert_eq!((last.from.as_str(), last.to.as_str()), (s.a.name.as_str(), s.b.name.as_str()));

    // From the merged ledger: the stop on A strictly before the create on B, one claim.
    let ledger = s.ledger().await;
    let stop_a = ledger
        .iter()
        .find(|e| e.provider == s.a.name && e.call == Call::Stop && e.outcome == Outcome::Stopped)
        .expect("stop on a");
    let create_b = ledger.iter().find(|e| is_provision_of(e, &s.b.name) && e.outcome.created()).expect("create on b");
    assert_eq!(stop_a.instance.as_deref(), Some(first.id.as_str()));
    assert_eq!(create_b.instance.as_deref(), Some(second.id.as_str()));
    assert!(stop_a.seq < create_b.seq && stop_a.at <= create_b.at, "create on b before stop on a: {ledger:#?}");
    assert_eq!(stop_a.epoch, create_b.epoch, "stop and create belong to one claim");
    assert_eq!(create_b.key.as_deref(), Some(second.key.as_str()));
    // Each provider-sim's own view agrees: A's instance stopped, B's running.
    assert_eq!(s.live().await, vec![(s.b.name.clone(), second.id.clone())]);
    s.assert_invariants().await;
    eprintln!("e2e switch ({:.1?}): {}, {} claims", started.elapsed(), calls(&ledger), claims(&[&x]));
}

/// Two controller instances on 20 workspaces through rounds of random switches and power
/// flips, over HTTP: all converge, the ledgers break no invariant, and every call was made
/// under a claim its caller held.
#[tokio::test]
async fn two_instances_race_on_twenty_workspaces_over_http() {
    let started = Instant::now();
    use rand::{Rng, SeedableRng};
    let s = Scenario::new("e2e-race").await;
    let providers = [s.a.name.clone(), s.b.name.clone()];
    let watch = StatusWatch::start(s.api.clone());
    let x = s.start("race-x");
    let y = s.start("race-y");

    let names: Vec<String> = (0..20).map(|i| format!("ws-{i:02}")).collect();
    for (i, name) in names.iter().enumerate() {
        s.api.create(&PostParams::default(), &workspace(name, &providers[i % 2])).await.expect("create");
    }
    let seed: u64 = std::env::var("RACE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261127);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut switches, mut flips) = (0, 0);
    for _round in 0..3 {
        wait_all_converged(&s.api, &names, CONVERGE).await;
        for name in &names {
            let roll: u32 = rng.random_range(0..10);
            let current = s.api.get(name).await.expect("get").spec;
            if roll < 6 {
                let to = &providers[rng.random_range(0..2)];
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
    let (won, lost) = (
        x.metrics.claims_won.get() + y.metrics.claims_won.get(),
        x.metrics.claims_lost.get() + y.metrics.claims_lost.get(),
    );
    x.stop().await;
    y.stop().await;

    let ledger = s.assert_invariants().await;
    assert!(seen.breaches.is_empty(), "statuses broke the kstatus rules:\n{}", seen.breaches.join("\n"));
    assert_calls_under_held_claims(&ledger, &seen);
    assert!(ledger.iter().all(|e| e.caller == "race-x" || e.caller == "race-y"), "a call from nowhere");
    assert!(switches > 0 && won as usize > names.len(), "the race must have switched something");
    eprintln!(
        "e2e race ({:.1?}, seed {seed}): {switches} switches and {flips} power flips requested, {won} claims won, {lost} lost, \
         {}, {} versions watched",
        started.elapsed(),
        calls(&ledger),
        seen.versions
    );
}

/// A controller killed at each step of a switch: a fresh one takes the stale claim over and
/// converges with exactly one live instance, nothing leaked at either provider-sim.
#[tokio::test]
async fn crash_at_every_step_converges_with_one_instance_over_http() {
    let started = Instant::now();
    for point in [FailPoint::AfterClaim, FailPoint::AfterStop, FailPoint::AfterCommit, FailPoint::AfterProvision] {
        let s = Scenario::running_on_a("e2e-crash").await;
        let x = s.start_frozen_at("crash-x", point);
        switch_with_kubectl(&s.ns, "ws", &s.b.name);
        s.frozen(&x, point).await;
        let frozen_step = status(&s.api.get("ws").await.expect("get")).operation.map(|o| o.step);
        let expected = if point == FailPoint::AfterClaim || point == FailPoint::AfterStop {
            Step::Claimed
        } else {
            Step::OldStopped
        };
        assert_eq!(frozen_step, Some(expected), "{point:?}");
        x.kill();

        let y = s.start("crash-y");
        let ws = wait_ready_on(&s.api, "ws", &s.b.name, CONVERGE).await;
        assert_eq!(y.metrics.takeovers.get(), 1, "{point:?}: the stale claim must be taken over");
        let instance = status(&ws).instance.expect("instance");
        assert_eq!(s.live().await, vec![(s.b.name.clone(), instance.id.clone())], "{point:?}: one live instance, on b");
        assert!(status(&ws).epoch >= 3, "{point:?}: takeover bumps the epoch");
        let ledger = s.assert_invariants().await;
        let created = ledger.iter().filter(|e| e.outcome.created()).count();
        assert_eq!(created, 2, "{point:?}: one create on a (setup), one on b");
        if point == FailPoint::AfterProvision {
            // y resumed the provision under the same key and got the instance x created.
            let provisions: Vec<_> = ledger.iter().filter(|e| is_provision_of(e, &s.b.name)).collect();
            assert!(
                matches!(provisions.as_slice(), [c, e] if c.caller == "crash-x" && e.caller == "crash-y"
                && e.outcome == Outcome::Existing && c.key == e.key && e.epoch > c.epoch),
                "{provisions:#?}"
            );
        }
        eprintln!(
            "e2e crash at {point:?} ({:.1?}): {}, {} claims by the survivor",
            started.elapsed(),
            calls(&ledger),
            claims(&[&y])
        );
    }
}

/// SIGKILL provider-sim B while the switch's provision is in flight at it: the operation
/// records why it cannot go on; once B is restarted (same address, state replayed from its
/// journal) the switch completes with exactly one instance.
#[tokio::test]
async fn killing_provider_b_mid_provision_resumes_when_it_is_back() {
    let started = Instant::now();
    let mut s = Scenario::running_on_a("e2e-killsim").await;
    // B takes the provision in (and ledgers it) but never answers: the call is in flight.
    s.b.process.set_faults(&Faults { hang: true, ..Faults::default() }).await.expect("set faults");
    let x = s.start("killsim-x");
    switch_with_kubectl(&s.ns, "ws", &s.b.name);
    let hung = s
        .call_seen(&s.b, "provision in flight at b", |e| e.call == Call::Provision && e.outcome == Outcome::Hung)
        .await;
    let mid = status(&s.api.get("ws").await.expect("get"));
    let op = mid.operation.clone().expect("operation in flight");
    assert_eq!((op.step, mid.instance.clone()), (Step::OldStopped, None), "the old compute is stopped and committed");
    assert!(s.a.live().await.is_empty(), "nothing runs on a while b provisions");
    let before_kill = s.b.ledger().await;
    let pid = s.b.process.pid();

    s.b.process.kill().await.expect("kill -9 b");
    let down = wait_for(&s.api, "ws", "lastError naming b", CONVERGE, |ws| {
        status(ws).operation.and_then(|o| o.last_error).is_some_and(|e| e.contains(&s.b.name))
    })
    .await;
    let down_op = status(&down).operation.expect("operation");
    assert_eq!((down_op.id.as_str(), down_op.step), (op.id.as_str(), Step::OldStopped), "roll forward only");
    assert!(status(&down).instance.is_none() && s.a.live().await.is_empty(), "nothing may start elsewhere");
    let error_while_down = down_op.last_error.unwrap_or_default();

    s.b.process.restart().await.expect("restart b");
    assert_ne!(s.b.process.pid(), pid, "a new process");
    assert_eq!(s.b.process.faults().await.expect("faults"), Faults::default(), "faults do not survive a restart");
    let replayed = s.b.ledger().await;
    assert_eq!(&replayed[..before_kill.len()], &before_kill[..], "b's ledger survived kill -9 as it was");

    let ws = wait_ready_on(&s.api, "ws", &s.b.name, CONVERGE).await;
    let instance = status(&ws).instance.expect("instance");
    assert_eq!(s.live().await, vec![(s.b.name.clone(), instance.id.clone())], "exactly one instance, on b");
    let ledger = s.assert_invariants().await;
    let provisions: Vec<&LedgerEntry> = ledger.iter().filter(|e| is_provision_of(e, &s.b.name)).collect();
    let created: Vec<&&LedgerEntry> = provisions.iter().filter(|e| e.outcome.created()).collect();
    assert!(
        matches!(created.as_slice(), [c] if c.key == hung.key && c.instance.as_deref() == Some(instance.id.as_str())),
        "one create on b, under the key of the provision that was in flight: {provisions:#?}"
    );
    assert!(x.is_running(), "the controller survived its provider's death");
    eprintln!(
        "e2e kill provider ({:.1?}): in-flight provision ledgered as Hung at b seq {}; while b was down: {error_while_down:?}; \
         after restart ({} entries replayed): {} provisions at b, {} created; {}, {} claims",
        started.elapsed(),
        hung.seq,
        before_kill.len(),
        provisions.len(),
        created.len(),
        calls(&ledger),
        claims(&[&x])
    );
}

/// B commits a create and drops the connection before answering. The http driver retries the
/// lost answer within the call, under the same key: B returns the same instance.
#[tokio::test]
async fn lost_create_answer_yields_one_instance_on_b() {
    let started = Instant::now();
    let s = Scenario::running_on_a("e2e-lost").await;
    s.b.process.set_faults(&Faults { drop_provision_response: 1, ..Faults::default() }).await.expect("set faults");
    let x = s.start("lost-x");
    switch_with_kubectl(&s.ns, "ws", &s.b.name);
    let ws = wait_ready_on(&s.api, "ws", &s.b.name, CONVERGE).await;
    let instance = status(&ws).instance.expect("instance");

    let ledger = s.assert_invariants().await;
    let provisions: Vec<&LedgerEntry> = ledger.iter().filter(|e| is_provision_of(e, &s.b.name)).collect();
    let outcomes: Vec<&Outcome> = provisions.iter().map(|e| &e.outcome).collect();
    assert_eq!(outcomes, [&Outcome::CommittedResponseLost { created: true }, &Outcome::Existing], "{provisions:#?}");
    let (lost, retried) = (provisions[0], provisions[1]);
    assert_eq!((&lost.key, &lost.instance, lost.epoch), (&retried.key, &retried.instance, retried.epoch));
    assert_eq!(retried.instance.as_deref(), Some(instance.id.as_str()));
    assert_eq!(s.live().await, vec![(s.b.name.clone(), instance.id)]);
    // The retry was the driver's, inside one call: the controller never saw a failure.
    let events = events_of(&s.client, &s.ns, "ws").await;
    assert!(!events.iter().any(|(reason, _)| reason == cond::ConditionReason::ProvisionFailed.as_str()), "{events:?}");
    eprintln!("e2e lost answer ({:.1?}): {}, {} claims", started.elapsed(), calls(&ledger), claims(&[&x]));
}

/// A controller paused right before its provision call wakes up after another instance took
/// its claim over and provisioned under the new epoch: B refuses the stale call
/// (StaleEpoch, ledgered as Fenced) and the ex-holder makes no further call and no write.
#[tokio::test]
async fn paused_ex_holder_is_fenced_by_the_provider() {
    let started = Instant::now();
    let s = Scenario::running_on_a("e2e-fence").await;
    let x = s.start_frozen_at("fence-x", FailPoint::BeforeProvision);
    switch_with_kubectl(&s.ns, "ws", &s.b.name);
    s.frozen(&x, FailPoint::BeforeProvision).await;
    let paused = status(&s.api.get("ws").await.expect("get")).operation.expect("operation");
    assert_eq!((paused.holder.as_str(), paused.step), ("fence-x", Step::OldStopped));

    let y = s.start("fence-y");
    let ws = wait_ready_on(&s.api, "ws", &s.b.name, CONVERGE).await;
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
    assert_eq!(s.live().await, vec![(s.b.name.clone(), instance.id)]);
    let ledger = s.assert_invariants().await;
    eprintln!(
        "e2e fencing ({:.1?}): {}, {} claims (x {}, y {})",
        started.elapsed(),
        calls(&ledger),
        claims(&[&x, &y]),
        claims(&[&x]),
        claims(&[&y])
    );
}

/// A controller paused after stopping the old compute wakes up while the instance that took
/// its claim over is still provisioning: its commit is refused, and it must see that the claim
/// is no longer its own — no write, no call — although the operation id is unchanged.
#[tokio::test]
async fn paused_ex_holder_makes_no_write_after_a_takeover() {
    let started = Instant::now();
    let s = Scenario::running_on_a("e2e-fence-write").await;
    let x = s.start_frozen_at("fencew-x", FailPoint::AfterStop);
    switch_with_kubectl(&s.ns, "ws", &s.b.name);
    s.frozen(&x, FailPoint::AfterStop).await;
    let paused = status(&s.api.get("ws").await.expect("get")).operation.expect("operation");

    // The new holder's provision stays in flight at B while x wakes up.
    s.b.process.set_faults(&Faults { hang: true, ..Faults::default() }).await.expect("set faults");
    let y = s.start("fencew-y");
    s.call_seen(&s.b, "y's provision in flight", |e| e.caller == "fencew-y" && e.outcome == Outcome::Hung).await;
    let held = status(&s.api.get("ws").await.expect("get")).operation.expect("operation");
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
    let still = status(&s.api.get("ws").await.expect("get")).operation.expect("operation");
    assert_eq!((still.holder.as_str(), still.epoch), ("fencew-y", held.epoch));
    let calls_after = s.ledger().await.iter().filter(|e| e.caller == "fencew-x").count();
    assert_eq!(calls_after, calls_before, "the paused ex-holder called a provider after the takeover");

    s.b.process.set_faults(&Faults::default()).await.expect("clear faults");
    let ws = wait_ready_on(&s.api, "ws", &s.b.name, CONVERGE).await;
    let instance = status(&ws).instance.expect("instance");
    assert_eq!(s.live().await, vec![(s.b.name.clone(), instance.id)]);
    let ledger = s.assert_invariants().await;
    eprintln!("e2e paused writer ({:.1?}): {}, {} claims", started.elapsed(), calls(&ledger), x_claims + claims(&[&y]));
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
    let s = Scenario::running_on_a("e2e-badcreds").await;
    let on_a = status(&s.api.get("ws").await.expect("get")).instance.expect("instance on a");
    // w: a healthy provider-sim, but its Secret holds the wrong token.
    let mut w = Sim::start(&unique("w")).await;
    put_secret(&s.client, &s.ns, "w-token", serde_json::json!({"token": "not-the-right-token"})).await;
    http_provider(&s.client, &w.name, &w, Some(secret_ref(&s.ns, "w-token"))).await;
    // m: its Secret does not exist (it points at w's process, which must never be called).
    let m = unique("m");
    http_provider(&s.client, &m, &w, Some(secret_ref(&s.ns, "absent-token"))).await;
    let x = s.start("badcreds-x");

    let m_msg = provider_ready(&s.client, &m, "False", cond::ConditionReason::ProviderMisconfigured.as_str()).await;
    assert!(m_msg.contains(&format!("Secret {}/absent-token", s.ns)) && m_msg.contains("does not exist"), "{m_msg}");
    let w_msg =
        provider_ready(&s.client, &w.name, "False", cond::ConditionReason::ProviderMisconfigured.as_str()).await;
    assert!(w_msg.contains("401") && w_msg.contains("w-token") && !w_msg.contains("not-the-right-token"), "{w_msg}");

    // Switching to either stalls at rest: no claim, nothing stopped, still running on a.
    s.api.create(&PostParams::default(), &workspace("ws-m", &m)).await.expect("create ws-m");
    for (target, says) in [(&m, "does not exist"), (&w.name, "401")] {
        switch_with_kubectl(&s.ns, "ws", target);
        let stalled = wait_for(&s.api, "ws", &format!("ws stalled on {target}"), CONVERGE, |ws| {
            status(ws).observed_generation == ws.metadata.generation
                && condition(ws, cond::STALLED)
                    == Some(("True".into(), cond::ConditionReason::ProviderMisconfigured.as_str().into()))
        })
        .await;
        let st = status(&stalled);
        let message = cond::get(&st.conditions, cond::STALLED).map(|c| c.message.clone()).unwrap_or_default();
        assert!(message.contains(target.as_str()) && message.contains(says), "{message}");
        assert_eq!(condition(&stalled, cond::READY).map(|c| c.0), Some("False".into()));
        assert!(st.operation.is_none(), "no claim for an unusable target");
        assert_eq!(st.instance.as_ref(), Some(&on_a), "still on a");
    }
    let ws_m = wait_for(&s.api, "ws-m", "ws-m stalled", CONVERGE, |ws| {
        condition(ws, cond::STALLED)
            == Some(("True".into(), cond::ConditionReason::ProviderMisconfigured.as_str().into()))
    })
    .await;
    assert!(status(&ws_m).instance.is_none() && status(&ws_m).operation.is_none());
    assert_eq!(s.live().await, vec![(s.a.name.clone(), on_a.id.clone())], "a's instance keeps running");
    assert!(w.ledger().await.is_empty(), "no call may reach a provider without valid credentials");
    // Events are published in the background: wait for it.
    wait_for_event(&s.client, &s.ns, "ws", cond::ConditionReason::ProviderMisconfigured.as_str(), CONVERGE).await;

    // The right token in the Secret: w is probed Ready and the switch goes through.
    put_secret(&s.client, &s.ns, "w-token", serde_json::json!({"token": w.process.token()})).await;
    let on_w = wait_ready_on(&s.api, "ws", &w.name, CONVERGE).await;
    let on_w = status(&on_w).instance.expect("instance on w");

    // The provider's token is rotated but the Secret is not: switching away cannot stop w.
    w.process.rotate_token("rotated-token-value").expect("rotate");
    switch_with_kubectl(&s.ns, "ws", &s.a.name);
    let refused = wait_for(&s.api, "ws", "ws stalled on the refused stop", CONVERGE, |ws| {
        let stalled = condition(ws, cond::STALLED).filter(|_| status(ws).observed_generation == ws.metadata.generation);
        stalled == Some(("True".into(), cond::ConditionReason::StopFailed.as_str().into()))
            || stalled == Some(("True".into(), cond::ConditionReason::ProviderMisconfigured.as_str().into()))
    })
    .await;
    let st = status(&refused);
    let stall = cond::get(&st.conditions, cond::STALLED).cloned().expect("stalled");
    assert!(stall.message.contains("401") && !stall.message.contains("rotated-token-value"), "{}", stall.message);
    // Still on w, nothing stopped, nothing started (a released stop leaves the instance
    // marked unconfirmed: whether it stopped is for the provider to say).
    let still = st.instance.clone().map(|i| switchyard::api::Instance { unconfirmed: false, ..i });
    assert_eq!(still.as_ref(), Some(&on_w), "still on w: nothing stopped, nothing started");
    assert!(s.a.live().await.is_empty(), "nothing may start on a before w stops");

    put_secret(&s.client, &s.ns, "w-token", serde_json::json!({"token": "rotated-token-value"})).await;
    let back = wait_ready_on(&s.api, "ws", &s.a.name, CONVERGE).await;
    let back = status(&back).instance.expect("instance on a");
    let live: Vec<_> =
        live_instances(&[&s.a, &s.b, &w]).await.into_iter().filter(|i| i.workspace_uid == s.uid).collect();
    assert!(matches!(live.as_slice(), [i] if i.id == back.id), "exactly one instance: {live:?}");
    assert!(x.is_running(), "the controller survived its bad providers");
    let ledger = assert_sim_invariants(&s.api, &[&s.a, &s.b, &w]).await;
    eprintln!(
        "e2e bad credentials ({:.1?}): stalls {m_msg:?} / {w_msg:?}; stop refused: {} {:?}; {}, {} claims",
        started.elapsed(),
        stall.reason,
        stall.message,
        calls(&ledger),
        claims(&[&x])
    );
}

/// Two `switchyard controller` processes with leader election; the leader is SIGKILLed (no
/// graceful shutdown, its Lease not released) while the switch's provision hangs at b. The
/// standby takes the Lease once it expires, takes over the dead leader's claim at once, and
/// finishes the switch: one instance, on b, every call under a claim the API server recorded.
#[tokio::test]
async fn leader_process_killed_mid_switch_is_replaced_by_the_standby() {
    use k8s_openapi::api::coordination::v1::Lease;
    const LEASE: Duration = Duration::from_secs(3);
    let s = Scenario::running_on_a("e2e-leaderkill").await;
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
    s.b.process.set_faults(&Faults { hang: true, ..Faults::default() }).await.expect("set faults");
    switch_with_kubectl(&s.ns, "ws", &s.b.name);
    s.call_seen(&s.b, "provision in flight at b", |e| e.call == Call::Provision && e.outcome == Outcome::Hung).await;
    let mid = status(&s.api.get("ws").await.expect("get"));
    let op = mid.operation.expect("operation in flight");
    assert_eq!((op.step, op.holder.as_str()), (Step::OldStopped, "leaderkill-1"), "the leader holds the switch");

    p1.start_kill().expect("SIGKILL the leader");
    let _ = p1.wait().await;
    let killed = Instant::now();
    s.b.process.set_faults(&Faults::default()).await.expect("clear faults");
    eventually("leaderkill-2 leads", CONVERGE, || async {
        (holder().await.as_deref() == Some("leaderkill-2")).then_some(())
    })
    .await;
    let elected = killed.elapsed();
    let ws = wait_ready_on(&s.api, "ws", &s.b.name, CONVERGE).await;
    let resumed = killed.elapsed();

    let instance = status(&ws).instance.expect("instance");
    assert_eq!(s.live().await, vec![(s.b.name.clone(), instance.id)], "exactly one instance, on b");
    let ledger = s.assert_invariants().await;
    let by_standby: Vec<_> = ledger.iter().filter(|e| e.caller == "leaderkill-2").collect();
    assert!(
        !by_standby.is_empty() && by_standby.iter().all(|e| e.operation_id == op.id && e.epoch > op.epoch),
        "the standby finished the same operation under a newer epoch: {by_standby:?}"
    );
    assert!(elected <= LEASE * 2 + Duration::from_secs(5), "failover took {elected:?} for a {LEASE:?} lease");
    eprintln!("process failover: new leader {elected:.1?} after SIGKILL, switch finished after {resumed:.1?}");
}
