//! Hostile and stale input against the real API server: each case ends in a refusal by the API
//! server (schema or CEL), or in a precise Stalled reason, with the providers' ledgers showing no
//! call that should not have been made and nothing leaked; one bad object never stops the others.

mod support;

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use support::fixtures::*;
use support::scenario::{CONVERGE, Scenario, Transport};
use support::*;
use switchyard::api::MAX_EPOCH;
use switchyard::api::conditions as cond;
use switchyard::provider::simulated::Call;

/// What these tests do to a scenario's workspaces (providers in process, `ws` not created).
impl Scenario {
    /// A status merge patch as a user with write access to workspaces/status would send it.
    fn kubectl_status_patch(&self, name: &str, patch: serde_json::Value) -> std::process::Output {
        let patch = patch.to_string();
        kubectl(&["patch", "workspace", name, "-n", &self.ns, "--subresource=status", "--type", "merge", "-p", &patch])
    }

    fn calls_for(&self, uid: &str) -> usize {
        ledger_of(&self.clouds, uid).len()
    }
}

fn refused(out: &std::process::Output, says: &str) {
    assert!(!out.status.success(), "the API server must refuse this");
    let err = stderr(out);
    assert!(err.contains(says), "refusal should say {says:?}: {err}");
}

/// A workspace whose status carries a timestamp the API server accepts but the controller
/// cannot read (year 9999, past the controller's time range) is a poison pill for a typed
/// watch: the initial list fails and no workspace is reconciled any more. Behind the decode
/// boundary it is skipped and reported (an InvalidObject Event), and every other workspace,
/// including one created after it, converges; the controller also stops on request.
#[tokio::test]
async fn an_undecodable_workspace_never_stops_the_others() {
    let s = Scenario::new(Transport::InProcess, "hostile-poison").await;
    let setup = s.start("poison-setup");
    let ok_before = s.create_ready_on_a("ok-before").await;
    setup.stop().await;
    s.api.create(&PostParams::default(), &workspace("poison", &s.a)).await.expect("create poison");
    let out = s.kubectl_status_patch(
        "poison",
        json!({"status": {"epoch": 1, "operation": {
            "id": "forged", "kind": "Switch", "step": "Claimed", "holder": "nobody", "epoch": 1,
            "startedAt": "9999-12-31T23:59:59Z", "renewedAt": "9999-12-31T23:59:59Z"}}}),
    );
    assert!(out.status.success(), "the API server accepts the timestamp: {}", stderr(&out));

    // A controller started now lists the poison first thing.
    let x = s.start("poison-x");
    s.api.create(&PostParams::default(), &workspace("ok-after", &s.b)).await.expect("create");
    wait_ready_on(&s.api, "ok-after", &s.b, CONVERGE).await;
    switch_with_kubectl(&s.ns, "ok-before", &s.b);
    wait_ready_on(&s.api, "ok-before", &s.b, CONVERGE).await;
    wait_for_event(&s.client, &s.ns, "poison", cond::EventReason::InvalidObject.as_str(), CONVERGE).await;
    assert!(x.metrics.invalid_objects.get() >= 1);
    let notes = events_of(&s.client, &s.ns, "poison").await;
    assert!(notes.iter().all(|(_, note)| note.chars().count() < 400), "the report is short: {notes:?}");
    assert!(ok_before.metadata.uid.is_some());
    // It shuts down promptly, the poison notwithstanding.
    tokio::time::timeout(CONVERGE, x.stop()).await.expect("the controller stops");
}

/// The status rules cannot be got around: removing status (to reset the epoch), lowering the
/// epoch, an epoch past its bound, negative attempts, an oversized template: all refused by
/// the API server with a readable message.
#[tokio::test]
async fn the_api_server_refuses_forged_and_oversized_input() {
    let s = Scenario::new(Transport::InProcess, "hostile-schema").await;
    let x = s.start("schema-x");
    s.create_ready_on_a("ws").await;
    // Removed status reads back as the schema default (epoch 0): refused as a lower epoch.
    refused(&s.kubectl_status_patch("ws", json!({"status": null})), "status.epoch must never decrease");
    refused(&s.kubectl_status_patch("ws", json!({"status": {"epoch": 0}})), "must never decrease");
    refused(&s.kubectl_status_patch("ws", json!({"status": {"epoch": i64::MAX}})), "status.epoch");
    let forged_op = json!({"status": {"operation": {
        "id": "x", "kind": "Switch", "step": "Claimed", "holder": "h", "epoch": 2, "attempts": -1,
        "startedAt": "2026-01-01T00:00:00Z", "renewedAt": "2026-01-01T00:00:00Z"}}});
    refused(&s.kubectl_status_patch("ws", forged_op), "attempts");

    let env: serde_json::Map<String, serde_json::Value> = (0..65).map(|i| (format!("V{i}"), json!("x"))).collect();
    let big = json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "Workspace",
        "metadata": {"name": "big", "namespace": s.ns},
        "spec": {"provider": s.a, "template": {"image": "busybox", "env": env}}});
    let out = kubectl_stdin(&["apply", "-f", "-"], &big.to_string());
    refused(&out, "env");
    let long_name = json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "Workspace",
        "metadata": {"name": "long", "namespace": s.ns},
        "spec": {"provider": s.a, "template": {"image": "busybox", "env": {"N".repeat(300): "v"}}}});
    refused(&kubectl_stdin(&["apply", "-f", "-"], &long_name.to_string()), "at most 256 characters");
    // A provider name no workspace could ever reference.
    let dotted = json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "ComputeProvider",
        "metadata": {"name": "eu.west"}, "spec": {"driver": "simulated"}});
    refused(&kubectl_stdin(&["apply", "-f", "-"], &dotted.to_string()), "must be a DNS label");
    // The controller keeps working.
    switch_with_kubectl(&s.ns, "ws", &s.b);
    wait_ready_on(&s.api, "ws", &s.b, CONVERGE).await;
    drop(x);
}

/// An epoch at its bound leaves no room for a claim: Stalled EpochOutOfRange, no provider call,
/// no panic, and the other workspaces go on.
#[tokio::test]
async fn an_epoch_at_its_bound_stalls_without_a_call() {
    let s = Scenario::new(Transport::InProcess, "hostile-epoch").await;
    let setup = s.start("epoch-setup");
    let ws = s.create_ready_on_a("ws").await;
    setup.stop().await;
    let uid = ws.metadata.uid.clone().expect("uid");
    let out = s.kubectl_status_patch("ws", json!({"status": {"epoch": MAX_EPOCH}}));
    assert!(out.status.success(), "{}", stderr(&out));
    let before = s.calls_for(&uid);
    let x = s.start("epoch-x");
    switch_with_kubectl(&s.ns, "ws", &s.b);
    wait_stalled(&s.api, "ws", cond::ConditionReason::EpochOutOfRange, CONVERGE).await;
    assert_eq!(s.calls_for(&uid), before, "no provider call");
    s.create_ready_on_a("other").await;
    assert!(x.is_running(), "no panic");
}

/// A forged activeProvider is corrected to where the compute is; a claim "renewed" far in the
/// future is taken over (with its fences) instead of blocking switches forever.
#[tokio::test]
async fn forged_status_is_corrected_or_taken_over() {
    let s = Scenario::new(Transport::InProcess, "hostile-forged").await;
    let x = s.start("forged-x");
    s.create_ready_on_a("ws").await;
    let out = s.kubectl_status_patch("ws", json!({"status": {"activeProvider": s.b}}));
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for(&s.api, "ws", "activeProvider corrected", CONVERGE, |w| {
        status(w).active_provider.as_deref() == Some(s.a.as_str())
    })
    .await;

    let epoch = status(&s.api.get("ws").await.expect("ws")).epoch;
    let forged = json!({"status": {"epoch": epoch + 1, "operation": {
        "id": "forged-op", "kind": "Switch", "from": s.a, "to": s.b, "step": "Claimed", "holder": "ghost",
        "epoch": epoch + 1, "startedAt": "2999-01-01T00:00:00Z", "renewedAt": "2999-01-01T00:00:00Z"}}});
    let out = s.kubectl_status_patch("ws", forged);
    assert!(out.status.success(), "{}", stderr(&out));
    switch_with_kubectl(&s.ns, "ws", &s.b);
    wait_ready_on(&s.api, "ws", &s.b, CONVERGE).await;
    assert!(x.metrics.takeovers.get() >= 1, "the future claim was taken over");
    s.assert_invariants().await;
}

/// A finalizer removed by hand while compute runs deletes the workspace and orphans the
/// compute; the inventory stops it (under the newest epoch the provider has seen), and the
/// escape hatch used mid-provision cannot leave two instances either.
#[tokio::test]
async fn manual_finalizer_removal_and_the_escape_hatch_leak_nothing() {
    let s = Scenario::new(Transport::InProcess, "hostile-manual").await;
    let setup = s.start("manual-setup");
    let ws = s.create_ready_on_a("gone").await;
    let uid = ws.metadata.uid.clone().expect("uid");
    // With no controller running (one would put its finalizer back before the delete).
    setup.stop().await;
    s.api
        .patch("gone", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .expect("remove finalizers");
    s.api.delete("gone", &Default::default()).await.expect("delete");
    let mut st = s.settings("manual-x");
    st.inventory_interval = Some(Duration::from_millis(300));
    st.inventory_grace = Duration::from_secs(1);
    let _x = s.start_with(st);
    eventually("the orphan stopped by the inventory", CONVERGE, || async {
        s.clouds.live_instances().iter().all(|i| i.workspace_uid != uid).then_some(())
    })
    .await;
    let stop = ledger_of(&s.clouds, &uid).into_iter().find(|e| e.call == Call::Stop).expect("a stop");
    assert_eq!(stop.operation_id, "inventory");

    // The escape hatch: the claim cleared by hand right after a provision landed.
    let ws = s.create_ready_on_a("hatch").await;
    let uid = ws.metadata.uid.clone().expect("uid");
    switch_with_kubectl(&s.ns, "hatch", &s.b);
    wait_ready_on(&s.api, "hatch", &s.b, CONVERGE).await;
    let out = s.kubectl_status_patch("hatch", json!({"status": {"operation": null, "instance": null}}));
    assert!(out.status.success(), "{}", stderr(&out));
    // With no instance recorded the controller provisions again, so for a moment two run (the
    // hand-made status said there was none); the inventory stops the one no status names.
    eventually("one live instance for the workspace", CONVERGE, || async {
        let live: Vec<_> = s.clouds.live_instances().into_iter().filter(|i| i.workspace_uid == uid).collect();
        let ws = s.api.get("hatch").await.ok()?;
        let named = status(&ws).instance?;
        (live.len() == 1 && live[0].id == named.id).then_some(())
    })
    .await;
    let collected =
        ledger_of(&s.clouds, &uid).into_iter().filter(|e| e.call == Call::Stop && e.operation_id == "inventory");
    assert_eq!(collected.count(), 1, "the unnamed instance was collected by the inventory");
}

/// A ComputeProvider cannot be re-pointed under running compute. In place, the fields that
/// decide where compute lives are immutable (refused by the API server). Deleted and re-created
/// elsewhere, the provider no longer matches the `location` the instance recorded: the switch
/// stalls ProviderChanged with no call to the new place, and the compute is not forgotten; put
/// back, the stop goes where the compute is.
#[tokio::test]
async fn a_provider_repointed_under_running_compute_gets_no_stop() {
    use support::sims::Sim;
    use switchyard::api::ComputeProvider;
    let mut s = Scenario::new(Transport::InProcess, "hostile-repoint").await;
    let p = unique("where");
    // Its calls and instances join the history the invariants are checked on.
    s.adopt(Sim::provider(&s.client, &s.ns, &p).await);
    let sim = s.sim(&p);
    let _x = s.start("repoint-x");
    s.api.create(&PostParams::default(), &workspace("ws", &p)).await.expect("create");
    let ws = wait_ready_on(&s.api, "ws", &p, CONVERGE).await;
    let uid = ws.metadata.uid.clone().expect("uid");
    let id = status(&ws).instance.expect("instance").id;

    let cprov = |patch: serde_json::Value| {
        kubectl(&["patch", "computeprovider", &p, "--type", "merge", "-p", &patch.to_string()])
    };
    refused(&cprov(json!({"spec": {"driver": "simulated", "http": null}})), "spec.driver is immutable");
    refused(&cprov(json!({"spec": {"http": {"endpoint": "http://127.0.0.1:9"}}})), "spec.http.endpoint is immutable");
    let local = unique("k8s");
    let out = kubectl_stdin(
        &["apply", "-f", "-"],
        &json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "ComputeProvider", "metadata": {"name": local},
            "spec": {"driver": "kubernetes", "kubernetes": {"namespace": "one"}}})
        .to_string(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let patch = json!({"spec": {"kubernetes": {"namespace": "two"}}}).to_string();
    let out = kubectl(&["patch", "computeprovider", &local, "--type", "merge", "-p", &patch]);
    refused(&out, "spec.kubernetes.namespace is immutable");

    // Deleted and re-created under the same name as another provider (the in-process cloud).
    let providers: Api<ComputeProvider> = Api::all(s.client.clone());
    let saved = providers.get(&p).await.expect("provider");
    let delete_provider = || async {
        providers.delete(&p, &Default::default()).await.expect("delete provider");
        eventually("the provider gone", CONVERGE, || async {
            providers.get_opt(&p).await.ok()?.is_none().then_some(())
        })
        .await;
    };
    delete_provider().await;
    simulated_provider(&s.client, &p, 5, 5).await;
    switch_with_kubectl(&s.ns, "ws", &s.b);
    wait_stalled(&s.api, "ws", cond::ConditionReason::ProviderChanged, CONVERGE).await;
    assert_eq!(s.calls_for(&uid), 0, "nothing went to the provider's new place");
    assert!(sim.ledger().await.iter().all(|e| e.call != Call::Stop), "and nothing was stopped");
    assert!(sim.live().await.iter().any(|i| i.id == id), "the compute runs where it was");
    let ws = s.api.get("ws").await.expect("ws");
    assert_eq!(status(&ws).instance.map(|i| i.id), Some(id.clone()), "and is still recorded");
    wait_for_event(&s.client, &s.ns, "ws", cond::ConditionReason::ProviderChanged.as_str(), CONVERGE).await;

    // Put back where the compute is: the switch goes on, the stop lands there.
    delete_provider().await;
    let mut restored = ComputeProvider::new(&p, saved.spec.clone());
    restored.metadata.labels = saved.metadata.labels.clone();
    providers.create(&PostParams::default(), &restored).await.expect("re-create provider");
    wait_ready_on(&s.api, "ws", &s.b, CONVERGE).await;
    assert!(sim.live().await.iter().all(|i| i.id != id), "stopped where it ran");
    assert!(sim.ledger().await.iter().any(|e| e.call == Call::Stop && e.instance.as_deref() == Some(id.as_str())));
    assert!(s.calls_for(&uid) > 0, "the new instance on b");
    s.assert_invariants().await;
}

/// Status names an instance the provider does not hold under that id: the stop goes to what
/// the provider holds under the recorded key, never to the forged id (here another workspace's
/// instance). With the key forged too (an InstanceNotFound Event), the stop goes to what the
/// provider runs for this workspace. Either way before the new compute starts.
#[tokio::test]
async fn a_forged_instance_id_never_redirects_a_stop() {
    let s = Scenario::new(Transport::InProcess, "hostile-instance").await;
    let _x = s.start("instance-x");
    // A bystander whose instance id the forger names.
    let bystander = s.create_ready_on_a("bystander").await;
    let victim_id = status(&bystander).instance.expect("instance").id;

    let ws = s.create_ready_on_a("forged-id").await;
    let uid = ws.metadata.uid.clone().expect("uid");
    let real = status(&ws).instance.expect("instance").id;
    let out = s.kubectl_status_patch("forged-id", json!({"status": {"instance": {"id": victim_id}}}));
    assert!(out.status.success(), "{}", stderr(&out));
    switch_with_kubectl(&s.ns, "forged-id", &s.b);
    wait_ready_on(&s.api, "forged-id", &s.b, CONVERGE).await;
    let stops: Vec<_> = ledger_of(&s.clouds, &uid).into_iter().filter(|e| e.call == Call::Stop).collect();
    assert_eq!(stops.len(), 1, "{stops:?}");
    assert_eq!(stops[0].instance.as_deref(), Some(real.as_str()), "the real instance was stopped");
    let live = s.clouds.live_instances();
    assert!(live.iter().any(|i| i.id == victim_id), "the bystander's compute was not touched");
    assert!(live.iter().all(|i| i.id != real));

    // Id and key forged: the provider's inventory is searched for this workspace's compute.
    let ws = s.create_ready_on_a("forged-key").await;
    let uid = ws.metadata.uid.clone().expect("uid");
    let real = status(&ws).instance.expect("instance").id;
    let forged = json!({"status": {"instance": {"id": victim_id, "key": "not-a-key"}}});
    assert!(s.kubectl_status_patch("forged-key", forged).status.success());
    switch_with_kubectl(&s.ns, "forged-key", &s.b);
    wait_ready_on(&s.api, "forged-key", &s.b, CONVERGE).await;
    wait_for_event(&s.client, &s.ns, "forged-key", cond::EventReason::InstanceNotFound.as_str(), CONVERGE).await;
    let stops: Vec<_> = ledger_of(&s.clouds, &uid).into_iter().filter(|e| e.call == Call::Stop).collect();
    assert_eq!(stops.len(), 1, "{stops:?}");
    assert_ne!(stops[0].operation_id, "inventory", "stopped by the switch itself, before the new compute");
    assert_eq!(stops[0].instance.as_deref(), Some(real.as_str()));
    assert!(s.clouds.live_instances().iter().any(|i| i.id == victim_id), "the bystander still runs");
    s.assert_invariants().await;
}

/// Claims no controller of ours writes (a Provision with compute recorded, a Delete of a
/// workspace not being deleted, a kind of a newer version the schema may allow after a
/// rollback is covered by decide's tests): Stalled InvalidClaim, no provider call, whoever
/// holds them; cleared by hand, the workspace converges.
#[tokio::test]
async fn claims_that_do_not_fit_stall_without_a_call() {
    let s = Scenario::new(Transport::InProcess, "hostile-claim").await;
    let _x = s.start("claim-x");
    for (name, kind, step) in
        [("provision", "Provision", "Claimed"), ("delete", "Delete", "Claimed"), ("past-stop", "Switch", "OldStopped")]
    {
        let ws = s.create_ready_on_a(name).await;
        let uid = ws.metadata.uid.clone().expect("uid");
        let epoch = status(&ws).epoch;
        let before = s.calls_for(&uid);
        let forged = json!({"status": {"epoch": epoch + 1, "operation": {
            "id": "forged", "kind": kind, "from": s.a, "to": s.b, "step": step, "holder": "ghost",
            "epoch": epoch + 1, "startedAt": "2020-01-01T00:00:00Z", "renewedAt": "2020-01-01T00:00:00Z"}}});
        let out = s.kubectl_status_patch(name, forged);
        assert!(out.status.success(), "{}", stderr(&out));
        let ws = wait_stalled(&s.api, name, cond::ConditionReason::InvalidClaim, CONVERGE).await;
        let message = stalled_message(&ws);
        assert!(message.contains("forged") && message.contains("not carried out"), "{message}");
        assert_eq!(s.calls_for(&uid), before, "{kind}/{step}: no provider call: {:#?}", ledger_of(&s.clouds, &uid));
        assert_eq!(s.clouds.live_instances().iter().filter(|i| i.workspace_uid == uid).count(), 1);
        // The escape hatch: the claim cleared by hand (naming what it could reach).
        let clear = json!({"status": {"operation": null, "unfenced": [s.a, s.b]}});
        assert!(s.kubectl_status_patch(name, clear).status.success());
        wait_ready_on(&s.api, name, &s.a, CONVERGE).await;
    }
    s.assert_invariants().await;
}

/// Names at their length limit: the controller's Events are still published (their names are
/// cut to fit), and the workspace converges like any other.
#[tokio::test]
async fn events_are_published_for_names_at_the_length_limit() {
    let s = Scenario::new(Transport::InProcess, "hostile-long").await;
    let _x = s.start("long-x");
    let name = format!("{}-{}", "w".repeat(200), "x".repeat(52));
    assert_eq!(name.len(), 253);
    s.create_ready_on_a(&name).await;
    switch_with_kubectl(&s.ns, &name, &s.b);
    wait_ready_on(&s.api, &name, &s.b, CONVERGE).await;
    wait_for_event(&s.client, &s.ns, &name, cond::EventReason::SwitchCompleted.as_str(), CONVERGE).await;
    s.assert_invariants().await;
}

/// A workspace grown (by others' metadata) to the store's limit cannot take another write: its
/// claim is refused with a 500, which is retried with backoff (never taken for a lost claim);
/// the controller says why (an ObjectTooLarge Event), calls no provider, and every other
/// workspace goes on.
#[tokio::test]
async fn a_workspace_too_large_to_write_is_reported_and_others_go_on() {
    let s = Scenario::new(Transport::InProcess, "hostile-large").await;
    // The largest workspace the store takes: found by trying (the limit is the store's).
    let domain = ["a", "b", "c"].map(|c| c.repeat(60)).join(".") + ".com";
    let mut size = 1_600_000usize;
    let uid = loop {
        // Ours among them, so that the controller's first write is its claim.
        let mut finalizers: Vec<String> =
            (0..size / 250).map(|i| format!("{domain}/f-{i:06}-{}", "x".repeat(50))).collect();
        finalizers.push(switchyard::api::FINALIZER.to_string());
        let mut ws = workspace("large", &s.a);
        ws.metadata.finalizers = Some(finalizers);
        match s.api.create(&PostParams::default(), &ws).await {
            Ok(ws) => break ws.metadata.uid.clone().expect("uid"),
            Err(e) => {
                assert!(e.to_string().contains("too large"), "{e}");
                size = size.checked_sub(4_000).expect("some size fits");
            }
        }
    };
    // Then padded to within a few bytes of the limit: no write of the controller fits.
    let (mut fits, mut too_long) = (0usize, 8_192usize);
    while too_long - fits > 1 {
        let pad = (fits + too_long) / 2;
        let patch = json!({"metadata": {"annotations": {"pad": "x".repeat(pad)}}});
        match s.api.patch("large", &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) => fits = pad,
            Err(e) if e.to_string().contains("too large") => too_long = pad,
            Err(e) => panic!("padding: {e}"),
        }
    }
    let patch = json!({"metadata": {"annotations": {"pad": "x".repeat(fits)}}});
    s.api.patch("large", &PatchParams::default(), &Patch::Merge(patch)).await.expect("pad");
    let x = s.start("large-x");
    wait_for_event(&s.client, &s.ns, "large", cond::ConditionReason::ObjectTooLarge.as_str(), CONVERGE).await;
    s.create_ready_on_a("small").await;
    assert_eq!(s.calls_for(&uid), 0, "no provider call for the workspace that cannot be written");
    // The refused claim (a 500 from the store) is an error retried with backoff, not a lost claim.
    assert_eq!(x.metrics.claims_lost.get(), 0, "a failed claim write is not a lost claim");
    assert!(x.metrics.reconcile_errors.get() >= 1);
    assert!(x.is_running());
    // Its own finalizers are not the controller's to remove: clear them so the namespace can go.
    let clear = json!({"metadata": {"finalizers": null}});
    s.api.patch("large", &PatchParams::default(), &Patch::Merge(clear)).await.expect("clear finalizers");
}
