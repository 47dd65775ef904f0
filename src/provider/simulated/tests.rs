use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use super::*;

const WS: &str = "uid-1";

fn ctx(epoch: i64) -> CallContext {
    ctx_for(WS, epoch)
}

fn ctx_for(uid: &str, epoch: i64) -> CallContext {
    CallContext::sample(uid, epoch, "ctrl-a", "c1")
}

fn driver(clouds: &Clouds, provider: &str) -> SimulatedDriver {
    SimulatedDriver::new(clouds.cloud(provider), SimulatedSettings::default())
}

/// Fresh clouds, with provider east's cloud and a driver for it.
fn east() -> (Clouds, Arc<Cloud>, SimulatedDriver) {
    let clouds = Clouds::new();
    let (cloud, d) = (clouds.cloud("east"), driver(&clouds, "east"));
    (clouds, cloud, d)
}

/// Fresh clouds, with drivers for providers east and west.
fn east_and_west() -> (Clouds, SimulatedDriver, SimulatedDriver) {
    let clouds = Clouds::new();
    let (east, west) = (driver(&clouds, "east"), driver(&clouds, "west"));
    (clouds, east, west)
}

fn outcomes(clouds: &Clouds) -> Vec<Outcome> {
    clouds.ledger().into_iter().map(|e| e.outcome).collect()
}

// ---- the cloud -------------------------------------------------------------------------------

#[tokio::test]
async fn provision_is_idempotent_by_key() {
    let (clouds, _, d) = east();
    let a = d.provision(Provision::new(&ctx(1), "k1")).await.unwrap();
    let b = d.provision(Provision::new(&ctx(1), "k1")).await.unwrap();
    let c = d.provision(Provision::new(&ctx(1), "k2")).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(a.state, InstanceState::Running);
    assert_eq!(a.key, "k1");
    assert_ne!(a.id, c.id);
    assert!(a.id.starts_with("i-east-"), "{}", a.id);
    assert_eq!(clouds.cloud("east").instances().len(), 2);
    assert_eq!(outcomes(&clouds), vec![Outcome::Created, Outcome::Existing, Outcome::Created]);
}

#[tokio::test]
async fn unledgered_clouds_keep_instances_and_fences_but_no_ledger() {
    let clouds = Clouds::unledgered();
    let d = driver(&clouds, "east");
    let a = d.provision(Provision::new(&ctx(2), "k1")).await.unwrap();
    assert_eq!(d.provision(Provision::new(&ctx(2), "k1")).await.unwrap(), a, "idempotent by key");
    assert!(matches!(d.stop(&ctx(1), &a.id).await, Err(DriverError::StaleEpoch { epoch: 1, newest: 2 })));
    d.stop(&ctx(2), &a.id).await.unwrap();
    assert_eq!(clouds.cloud("east").instance(&a.id).map(|i| i.wire.state), Some(InstanceState::Stopped));
    assert!(clouds.ledger().is_empty());
}

#[tokio::test]
async fn provision_returns_a_stopped_instance_as_is() {
    let (clouds, _, d) = east();
    let a = d.provision(Provision::new(&ctx(1), "k1")).await.unwrap();
    d.stop(&ctx(1), &a.id).await.unwrap();
    let again = d.provision(Provision::new(&ctx(1), "k1")).await.unwrap();
    assert_eq!(again.id, a.id);
    assert_eq!(again.state, InstanceState::Stopped);
    assert_eq!(clouds.cloud("east").instances().len(), 1);
    assert!(clouds.live_instances().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_provisions_of_one_key_create_one_instance() {
    let clouds = Clouds::new();
    let cloud = clouds.cloud("east");
    let handles: Vec<_> = (0..32)
        .map(|_| {
            let cloud = cloud.clone();
            tokio::spawn(async move {
                let d = SimulatedDriver::new(cloud, SimulatedSettings { provision_latency_ms: 1, stop_latency_ms: 0 });
                d.provision(Provision::new(&ctx(1), "k")).await
            })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for h in handles {
        ids.insert(h.await.unwrap().unwrap().id);
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(cloud.instances().len(), 1);
    let created = outcomes(&clouds).iter().filter(|o| **o == Outcome::Created).count();
    assert_eq!(created, 1);
    assert!(check_ledger(&clouds.ledger()).is_empty());
}

#[tokio::test]
async fn stop_semantics() {
    let (clouds, _, d) = east();
    d.stop(&ctx(1), "i-does-not-exist").await.unwrap();
    let a = d.provision(Provision::new(&ctx(1), "k1")).await.unwrap();
    d.stop(&ctx(1), &a.id).await.unwrap();
    assert_eq!(clouds.cloud("east").instance(&a.id).unwrap().wire.state, InstanceState::Stopped);
    d.stop(&ctx(1), &a.id).await.unwrap();
    assert_eq!(
        outcomes(&clouds),
        vec![Outcome::AlreadyStopped, Outcome::Created, Outcome::Stopped, Outcome::AlreadyStopped]
    );
    let ledger = clouds.ledger();
    assert_eq!(ledger[0].instance.as_deref(), Some("i-does-not-exist"));
    assert_eq!(ledger[0].key, None);
    assert_eq!(ledger[2].key.as_deref(), Some("k1"), "a stop names the target's key when known");
    assert!(check_ledger(&ledger).is_empty());
}

#[tokio::test]
async fn stop_of_another_workspaces_instance_is_rejected() {
    let (clouds, _, d) = east();
    let a = d.provision(Provision::new(&ctx_for("uid-a", 1), "ka")).await.unwrap();
    let err = d.stop(&ctx_for("uid-b", 1), &a.id).await.unwrap_err();
    assert!(matches!(err, DriverError::Rejected(_)), "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(clouds.cloud("east").instance(&a.id).unwrap().wire.state, InstanceState::Running);
    let v = check_ledger(&clouds.ledger());
    assert!(matches!(v.as_slice(), [Violation::ForeignStop { owner, .. }] if owner == "uid-a"), "{v:?}");
}

#[tokio::test]
async fn lookup_finds_by_key_and_is_ledgered() {
    let (clouds, _, d) = east();
    assert_eq!(d.lookup(&ctx(1), "k1").await.unwrap(), None);
    let a = d.provision(Provision::new(&ctx(1), "k1")).await.unwrap();
    assert_eq!(d.lookup(&ctx(1), "k1").await.unwrap(), Some(a.clone()));
    let ledger = clouds.ledger();
    assert_eq!(ledger.len(), 3);
    assert_eq!(ledger[0].call, Call::Lookup);
    assert_eq!(ledger[0].outcome, Outcome::NotFound);
    assert_eq!(ledger[2].outcome, Outcome::Found);
    assert_eq!(ledger[2].instance.as_deref(), Some(a.id.as_str()));
}

#[tokio::test]
async fn ledger_attributes_each_call() {
    let (clouds, _, d) = east();
    let mut c = ctx(7);
    c.caller = "ctrl-b".into();
    c.operation_id = "op-x".into();
    let a = d.provision(Provision::new(&c, "k1")).await.unwrap();
    let [e] = clouds.ledger().try_into().unwrap();
    assert_eq!(e.seq, 1);
    assert_eq!(e.provider, "east");
    assert_eq!(e.caller, "ctrl-b");
    assert_eq!(e.operation_id, "op-x");
    assert_eq!(e.call, Call::Provision);
    assert_eq!(e.workspace_uid, WS);
    assert_eq!(e.namespace, "default");
    assert_eq!(e.name, "ws-uid-1");
    assert_eq!(e.epoch, 7);
    assert_eq!(e.key.as_deref(), Some("k1"));
    assert_eq!(e.instance.as_deref(), Some(a.id.as_str()));
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["workspaceUid"], WS);
    assert_eq!(json["outcome"], "created");
}

/// provider-sim serves these at `GET /v1/admin/instances`, and its client reads them back.
#[tokio::test]
async fn instance_json_is_stable() {
    let (_, cloud, d) = east();
    let a = d.provision(Provision::new(&ctx(1), "k1")).await.unwrap();
    let json = serde_json::to_string(&cloud.instances()).unwrap();
    let expected = format!(
        r#"[{{"id":"{}","key":"k1","workspaceUid":"uid-1","state":"Running","namespace":"default","name":"ws-uid-1","cluster":"c1"}}]"#,
        a.id
    );
    assert_eq!(json, expected);
    assert_eq!(serde_json::from_str::<Vec<Instance>>(&json).unwrap(), cloud.instances());
    // Namespace, name and cluster may be absent (they read as ""); unknown fields are ignored.
    let old: Instance =
        serde_json::from_str(r#"{"id":"i-1","key":"k","workspaceUid":"u","state":"Stopped","extra":1}"#).unwrap();
    let fields = (old.namespace.as_str(), old.name.as_str(), old.cluster.as_str());
    assert_eq!(fields, ("", "", ""));
}

#[tokio::test]
async fn clouds_share_one_totally_ordered_ledger() {
    let clouds = Clouds::new();
    assert!(Arc::ptr_eq(&clouds.cloud("east"), &clouds.clone().cloud("east")));
    assert!(!Arc::ptr_eq(&clouds.cloud("east"), &clouds.cloud("west")));
    let east = driver(&clouds, "east");
    let west = driver(&clouds, "west");
    east.provision(Provision::new(&ctx(1), "k1")).await.unwrap();
    west.lookup(&ctx(1), "k1").await.unwrap();
    east.lookup(&ctx(1), "k1").await.unwrap();
    let ledger = clouds.ledger();
    let seqs: Vec<u64> = ledger.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    let providers: Vec<&str> = ledger.iter().map(|e| e.provider.as_str()).collect();
    assert_eq!(providers, vec!["east", "west", "east"]);
    // Per-provider state: west has no instance under k1.
    assert_eq!(ledger[1].outcome, Outcome::NotFound);
}

#[tokio::test]
async fn live_instances_span_providers_and_skip_stopped() {
    let (clouds, [a, b, _]) = three_workspaces().await;
    let live = clouds.live_instances();
    assert_eq!(
        live,
        vec![
            LiveInstance { provider: "east".into(), id: a.id, key: "k1".into(), workspace_uid: "u1".into() },
            LiveInstance { provider: "west".into(), id: b.id, key: "k2".into(), workspace_uid: "u2".into() },
        ]
    );
}

/// Three workspaces' instances: u1's on east, u2's and u3's on west, u3's stopped.
async fn three_workspaces() -> (Clouds, [InstanceInfo; 3]) {
    let (clouds, east, west) = east_and_west();
    let a = east.provision(Provision::new(&ctx_for("u1", 1), "k1")).await.unwrap();
    let b = west.provision(Provision::new(&ctx_for("u2", 1), "k2")).await.unwrap();
    let c = west.provision(Provision::new(&ctx_for("u3", 1), "k3")).await.unwrap();
    west.stop(&ctx_for("u3", 1), &c.id).await.unwrap();
    (clouds, [a, b, c])
}

// ---- fencing ---------------------------------------------------------------------------------

#[tokio::test]
async fn stale_epochs_are_fenced_without_effect() {
    let (clouds, cloud, d) = east();
    let a = d.provision(Provision::new(&ctx(2), "k2")).await.unwrap();
    assert_eq!(cloud.newest_epoch(WS), Some(2));

    let err = d.provision(Provision::new(&ctx(1), "k1")).await.unwrap_err();
    assert_eq!(err, DriverError::StaleEpoch { epoch: 1, newest: 2 });
    assert!(!err.is_retryable());
    assert_eq!(cloud.instances().len(), 1, "a fenced provision creates nothing");

    let err = d.stop(&ctx(1), &a.id).await.unwrap_err();
    assert_eq!(err, DriverError::StaleEpoch { epoch: 1, newest: 2 });
    assert_eq!(cloud.instance(&a.id).unwrap().wire.state, InstanceState::Running, "a fenced stop stops nothing");

    // Lookups are fenced too.
    assert_eq!(d.lookup(&ctx(1), "k2").await.unwrap_err(), DriverError::StaleEpoch { epoch: 1, newest: 2 });
    assert_eq!(d.lookup(&ctx(2), "k2").await.unwrap().map(|i| i.id), Some(a.id.clone()));

    let fenced: Vec<_> = clouds.ledger().into_iter().filter(|e| e.outcome == Outcome::Fenced { newest: 2 }).collect();
    assert_eq!(fenced.len(), 3);
    assert_eq!(fenced[1].call, Call::Stop);
    assert_eq!(fenced[1].instance.as_deref(), Some(a.id.as_str()));

    // The same epoch is still accepted; a newer one moves the fence.
    d.provision(Provision::new(&ctx(2), "k2")).await.unwrap();
    d.stop(&ctx(3), &a.id).await.unwrap();
    assert_eq!(cloud.newest_epoch(WS), Some(3));
    assert_eq!(
        d.provision(Provision::new(&ctx(2), "k2")).await.unwrap_err(),
        DriverError::StaleEpoch { epoch: 2, newest: 3 }
    );
    assert!(check_ledger(&clouds.ledger()).is_empty(), "{:?}", check_ledger(&clouds.ledger()));
}

#[tokio::test]
async fn fences_are_per_workspace_and_per_provider() {
    let (clouds, east, west) = east_and_west();
    east.provision(Provision::new(&ctx_for("u1", 5), "k1")).await.unwrap();
    east.provision(Provision::new(&ctx_for("u2", 1), "k2")).await.unwrap();
    west.provision(Provision::new(&ctx_for("u1", 1), "k3")).await.unwrap();
    assert_eq!(clouds.cloud("west").newest_epoch("u1"), Some(1));
    assert_eq!(clouds.cloud("east").newest_epoch("u1"), Some(5));
}

#[tokio::test]
async fn lookups_move_the_fence() {
    let (clouds, _, d) = east();
    assert_eq!(d.lookup(&ctx(9), "k").await.unwrap(), None);
    assert_eq!(clouds.cloud("east").newest_epoch(WS), Some(9));
    assert_eq!(
        d.provision(Provision::new(&ctx(1), "k")).await.unwrap_err(),
        DriverError::StaleEpoch { epoch: 1, newest: 9 }
    );
    assert!(clouds.cloud("east").instances().is_empty());
    assert!(check_ledger(&clouds.ledger()).is_empty(), "{:?}", check_ledger(&clouds.ledger()));
}

#[tokio::test]
async fn an_older_provision_after_a_newer_failed_call_is_refused() {
    let (clouds, cloud, d) = east();
    // The new holder's provision fails by injection, after it passed the fence.
    cloud.set_faults(Faults { fail_provision: 1, ..Faults::default() });
    assert!(d.provision(Provision::new(&ctx(3), "k3")).await.unwrap_err().is_retryable());
    assert_eq!(cloud.newest_epoch(WS), Some(3));
    // The paused ex-holder wakes up: it must not create anything.
    assert_eq!(
        d.provision(Provision::new(&ctx(2), "k2")).await.unwrap_err(),
        DriverError::StaleEpoch { epoch: 2, newest: 3 }
    );
    assert!(cloud.instances().is_empty());
    let o = outcomes(&clouds);
    assert!(matches!(&o[..], [Outcome::FailedAfterFence(_), Outcome::Fenced { newest: 3 }]), "{o:?}");
    assert!(check_ledger(&clouds.ledger()).is_empty());
}

#[tokio::test]
async fn an_older_provision_after_a_newer_lookup_that_failed_is_refused() {
    let (clouds, cloud, d) = east();
    cloud.set_faults(Faults { fail_lookup: 1, ..Faults::default() });
    assert!(d.lookup(&ctx(4), "k4").await.unwrap_err().is_retryable());
    assert_eq!(cloud.faults().fail_lookup, 0);
    assert_eq!(cloud.newest_epoch(WS), Some(4));
    assert!(matches!(
        d.provision(Provision::new(&ctx(3), "k3")).await,
        Err(DriverError::StaleEpoch { epoch: 3, newest: 4 })
    ));
    assert!(cloud.instances().is_empty());
    let o = outcomes(&clouds);
    assert!(matches!(&o[..], [Outcome::FailedAfterFence(_), Outcome::Fenced { newest: 4 }]), "{o:?}");
    // Replayed, the failed lookup still holds the fence.
    assert_eq!(Clouds::restore(clouds.ledger()).cloud("east").newest_epoch(WS), Some(4));
}

#[tokio::test]
async fn the_fence_call_raises_the_fence_and_nothing_else() {
    let (clouds, cloud, d) = east();
    let a = d.provision(Provision::new(&ctx(1), "k1")).await.unwrap();
    d.fence(&ctx(4)).await.unwrap();
    d.fence(&ctx(4)).await.unwrap();
    assert_eq!(cloud.newest_epoch(WS), Some(4));
    assert_eq!(cloud.instance(&a.id).unwrap().wire.state, InstanceState::Running, "a fence stops nothing");
    assert_eq!(d.fence(&ctx(3)).await.unwrap_err(), DriverError::StaleEpoch { epoch: 3, newest: 4 });
    for e in [
        d.provision(Provision::new(&ctx(3), "k3")).await.unwrap_err(),
        d.stop(&ctx(3), &a.id).await.unwrap_err(),
        d.lookup(&ctx(3), "k1").await.unwrap_err(),
    ] {
        assert_eq!(e, DriverError::StaleEpoch { epoch: 3, newest: 4 });
    }
    assert_eq!(cloud.instances().len(), 1);
    assert_eq!(cloud.instance(&a.id).unwrap().wire.state, InstanceState::Running);
    let ledger = clouds.ledger();
    let fences: Vec<_> = ledger.iter().filter(|e| e.call == Call::Fence).map(|e| (e.epoch, &e.outcome)).collect();
    assert_eq!(
        fences,
        vec![(4, &Outcome::FenceRaised), (4, &Outcome::FenceRaised), (3, &Outcome::Fenced { newest: 4 })]
    );
    assert_eq!(ledger[1].cluster, "c1");
    assert!(check_ledger(&ledger).is_empty(), "{:?}", check_ledger(&ledger));
    // An unreachable provider cannot be fenced, and is not.
    cloud.set_faults(Faults { refuse_all: true, ..Faults::default() });
    assert!(d.fence(&ctx(9)).await.unwrap_err().is_retryable());
    assert_eq!(cloud.newest_epoch(WS), Some(4));
}

#[tokio::test]
async fn fences_survive_restore_whatever_advanced_them() {
    let (clouds, _, d) = east();
    d.fence(&ctx_for("u1", 5)).await.unwrap();
    d.lookup(&ctx_for("u2", 6), "k").await.unwrap();
    clouds.cloud("east").set_faults(Faults { fail_stop: 1, ..Faults::default() });
    let _ = d.stop(&ctx_for("u3", 7), "i-x").await.unwrap_err();
    clouds.cloud("east").set_faults(Faults { refuse_all: true, ..Faults::default() });
    let _ = d.fence(&ctx_for("u4", 8)).await.unwrap_err();

    let restored = Clouds::restore(clouds.ledger());
    let after = restored.cloud("east");
    for (uid, newest) in [("u1", Some(5)), ("u2", Some(6)), ("u3", Some(7)), ("u4", None)] {
        assert_eq!(after.newest_epoch(uid), newest, "{uid}");
        assert_eq!(clouds.cloud("east").newest_epoch(uid), newest, "{uid}: live and restored agree");
    }
    let d = driver(&restored, "east");
    assert!(matches!(
        d.provision(Provision::new(&ctx_for("u1", 4), "k")).await,
        Err(DriverError::StaleEpoch { newest: 5, .. })
    ));
    assert!(restored.cloud("east").instances().is_empty());
}

// ---- inventory -------------------------------------------------------------------------------

fn in_cluster(uid: &str, epoch: i64, cluster: &str) -> CallContext {
    CallContext { cluster: cluster.into(), ..ctx_for(uid, epoch) }
}

#[tokio::test]
async fn list_pages_through_one_clusters_instances_in_a_stable_order() {
    let (clouds, _, d) = east();
    let mut mine = Vec::new();
    for n in 0..7 {
        let uid = format!("u{n}");
        mine.push(d.provision(Provision::new(&in_cluster(&uid, 2, "c1"), &format!("{uid}.op"))).await.unwrap().id);
        d.provision(Provision::new(&in_cluster(&format!("x{n}"), 1, "c2"), &format!("x{n}.op"))).await.unwrap();
    }
    d.stop(&in_cluster("u0", 3, "c1"), &mine[0]).await.unwrap();
    d.fence(&in_cluster("u1", 9, "c1")).await.unwrap();

    let mut seen = Vec::new();
    let mut page = None;
    let mut pages = 0;
    loop {
        let p = d.list("c1", page.as_deref(), 3).await.unwrap();
        assert!(p.items.len() <= 3);
        pages += 1;
        seen.extend(p.items);
        page = p.next;
        if page.is_none() {
            break;
        }
    }
    assert_eq!(pages, 3);
    let ids: Vec<&str> = seen.iter().map(|i| i.id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "stable order");
    let mut expected: Vec<&str> = mine.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(ids, expected, "exactly cluster c1's, stopped ones included");
    let u0 = seen.iter().find(|i| i.workspace_uid == "u0").unwrap();
    assert_eq!((u0.state, u0.fence, u0.key.as_str()), (InstanceState::Stopped, Some(3), "u0.op"));
    assert_eq!((u0.namespace.as_str(), u0.name.as_str()), ("default", "ws-u0"));
    assert_eq!(seen.iter().find(|i| i.workspace_uid == "u1").unwrap().fence, Some(9));
    assert_eq!(d.list("c3", None, 10).await.unwrap(), InstancePage::default());

    // Listing is not ledgered and fences nothing.
    let before = clouds.ledger().len();
    d.list("c1", None, 500).await.unwrap();
    assert_eq!(clouds.ledger().len(), before);
    assert_eq!(clouds.cloud("east").newest_epoch("u2"), Some(2));
}

#[tokio::test]
async fn list_clamps_its_limit() {
    let (_clouds, _, d) = east();
    for n in 0..3 {
        d.provision(Provision::new(&in_cluster(&format!("u{n}"), 1, "c1"), &format!("k{n}"))).await.unwrap();
    }
    let p = d.list("c1", None, 0).await.unwrap();
    assert_eq!(p.items.len(), 1, "0 is read as 1");
    assert!(p.next.is_some());
    assert_eq!(d.list("c1", None, u32::MAX).await.unwrap().items.len(), 3);
    assert_eq!(crate::provider::clamp_limit(u32::MAX), 500);
}

#[tokio::test]
async fn instances_of_restored_old_ledgers_are_listed_under_the_empty_cluster() {
    let (clouds, _, d) = east();
    d.provision(Provision::new(&in_cluster("u1", 1, "c1"), "k1")).await.unwrap();
    let mut ledger = clouds.ledger();
    // What an entry written before clusters were recorded reads back as.
    let mut json = serde_json::to_value(&ledger[0]).unwrap();
    json.as_object_mut().unwrap().remove("cluster");
    ledger[0] = serde_json::from_value(json).unwrap();
    let restored = Clouds::restore(ledger);
    let d = driver(&restored, "east");
    assert!(d.list("c1", None, 10).await.unwrap().items.is_empty());
    let [old] = d.list("", None, 10).await.unwrap().items.try_into().unwrap();
    assert_eq!((old.key.as_str(), old.workspace_uid.as_str()), ("k1", "u1"));
}

#[tokio::test]
async fn list_of_an_unreachable_provider_fails() {
    let (clouds, _, d) = east();
    clouds.cloud("east").set_faults(Faults { refuse_all: true, ..Faults::default() });
    assert!(d.list("c1", None, 10).await.unwrap_err().is_retryable());
}

// ---- faults ----------------------------------------------------------------------------------

#[tokio::test]
async fn fail_provision_fails_the_next_n_without_effect() {
    let (clouds, cloud, d) = east();
    cloud.set_faults(Faults { fail_provision: 2, ..Faults::default() });
    for left in [1, 0] {
        let err = d.provision(Provision::new(&ctx(5), "k")).await.unwrap_err();
        assert!(matches!(err, DriverError::Transient(_)), "{err:?}");
        assert_eq!(cloud.faults().fail_provision, left);
    }
    assert!(cloud.instances().is_empty());
    assert_eq!(cloud.newest_epoch(WS), Some(5), "a failed call that reached the provider advanced the fence");
    // Stops are not affected by provision faults.
    d.stop(&ctx(5), "i-x").await.unwrap();
    d.provision(Provision::new(&ctx(5), "k")).await.unwrap();
    assert_eq!(cloud.instances().len(), 1);
    let o = outcomes(&clouds);
    assert!(matches!(&o[..2], [Outcome::FailedAfterFence(_), Outcome::FailedAfterFence(_)]), "{o:?}");
    assert_eq!(&o[2..], &[Outcome::AlreadyStopped, Outcome::Created]);
}

#[tokio::test]
async fn fail_stop_fails_the_next_n_without_effect() {
    let (clouds, cloud, d) = east();
    let a = d.provision(Provision::new(&ctx(1), "k")).await.unwrap();
    cloud.set_faults(Faults { fail_stop: 1, ..Faults::default() });
    // Provisions are not affected by stop faults.
    d.provision(Provision::new(&ctx(1), "k")).await.unwrap();
    let err = d.stop(&ctx(1), &a.id).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(cloud.instance(&a.id).unwrap().wire.state, InstanceState::Running);
    assert_eq!(cloud.faults().fail_stop, 0);
    d.stop(&ctx(1), &a.id).await.unwrap();
    assert_eq!(cloud.instance(&a.id).unwrap().wire.state, InstanceState::Stopped);
    assert!(matches!(outcomes(&clouds)[2], Outcome::FailedAfterFence(_)));
}

/// Asserts that `id`, the cloud's only instance, is still running, and that once the faults are
/// cleared a stop under `epoch` stops it.
async fn survives_the_faults(cloud: &Cloud, d: &SimulatedDriver, epoch: i64, id: &str) {
    assert_eq!(cloud.instances().len(), 1);
    assert_eq!(cloud.instance(id).unwrap().wire.state, InstanceState::Running);
    cloud.set_faults(Faults::default());
    d.stop(&ctx(epoch), id).await.unwrap();
    assert_eq!(cloud.instance(id).unwrap().wire.state, InstanceState::Stopped);
}

#[tokio::test]
async fn always_failing_faults_persist_until_cleared() {
    let (_clouds, cloud, d) = east();
    let a = d.provision(Provision::new(&ctx(1), "k")).await.unwrap();
    cloud.set_faults(Faults { fail_provision_always: true, fail_stop_always: true, ..Faults::default() });
    for _ in 0..5 {
        assert!(matches!(d.provision(Provision::new(&ctx(1), "k2")).await, Err(DriverError::Transient(_))));
        assert!(matches!(d.stop(&ctx(1), &a.id).await, Err(DriverError::Transient(_))));
    }
    survives_the_faults(&cloud, &d, 1, &a.id).await;
}

#[tokio::test]
async fn dropped_provision_response_commits() {
    let (clouds, cloud, d) = east();
    cloud.set_faults(Faults { drop_provision_response: 1, ..Faults::default() });
    let err = d.provision(Provision::new(&ctx(1), "k")).await.unwrap_err();
    assert_eq!(err, DriverError::Transient("response lost".into()));
    let [Instance { wire: inst, .. }] = cloud.instances().try_into().unwrap();
    assert_eq!(inst.state, InstanceState::Running, "the lost answer's effect happened");
    assert_eq!(cloud.faults().drop_provision_response, 0);
    // The retry under the same key finds the committed instance instead of creating another.
    let again = d.provision(Provision::new(&ctx(1), "k")).await.unwrap();
    assert_eq!(again.id, inst.id);
    assert_eq!(outcomes(&clouds), vec![Outcome::CommittedResponseLost { created: true }, Outcome::Existing]);
    assert_eq!(clouds.ledger()[0].instance.as_deref(), Some(inst.id.as_str()));
    assert!(check_ledger(&clouds.ledger()).is_empty());
}

#[tokio::test]
async fn dropped_response_of_a_replay_and_fenced_calls() {
    let (clouds, cloud, d) = east();
    let a = d.provision(Provision::new(&ctx(2), "k")).await.unwrap();
    cloud.set_faults(Faults { drop_provision_response: 1, ..Faults::default() });
    // A fenced provision commits nothing, so it does not consume the drop.
    assert!(matches!(d.provision(Provision::new(&ctx(1), "k")).await, Err(DriverError::StaleEpoch { .. })));
    assert_eq!(cloud.faults().drop_provision_response, 1);
    assert!(matches!(d.provision(Provision::new(&ctx(2), "k")).await, Err(DriverError::Transient(_))));
    assert_eq!(cloud.instances().len(), 1);
    assert_eq!(cloud.instance(&a.id).unwrap().wire.state, InstanceState::Running);
    assert_eq!(outcomes(&clouds)[2], Outcome::CommittedResponseLost { created: false });
}

#[tokio::test(start_paused = true)]
async fn latency_elapses_before_the_effect() {
    let clouds = Clouds::new();
    let cloud = clouds.cloud("east");
    let d = SimulatedDriver::new(cloud.clone(), SimulatedSettings { provision_latency_ms: 100, stop_latency_ms: 40 });
    let task = tokio::spawn(async move { d.provision(Provision::new(&ctx(1), "k")).await });
    tokio::time::advance(Duration::from_millis(99)).await;
    tokio::task::yield_now().await;
    assert!(cloud.instances().is_empty(), "no effect before the latency has passed");
    assert!(clouds.ledger().is_empty());
    tokio::time::advance(Duration::from_millis(1)).await;
    let inst = task.await.unwrap().unwrap();
    assert_eq!(cloud.instances().len(), 1);

    let d = SimulatedDriver::new(cloud.clone(), SimulatedSettings { provision_latency_ms: 100, stop_latency_ms: 40 });
    let started = Instant::now();
    d.stop(&ctx(1), &inst.id).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(40));
    let started = Instant::now();
    d.lookup(&ctx(1), "k").await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn extra_latency_applies_to_every_call() {
    let clouds = Clouds::new();
    let cloud = clouds.cloud("east");
    cloud.set_faults(Faults { extra_latency: Duration::from_secs(5), ..Faults::default() });
    let d = SimulatedDriver::new(cloud.clone(), SimulatedSettings { provision_latency_ms: 100, stop_latency_ms: 40 });
    let started = Instant::now();
    let inst = d.provision(Provision::new(&ctx(1), "k")).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(5100));
    let started = Instant::now();
    d.stop(&ctx(1), &inst.id).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(5040));
    let started = Instant::now();
    d.lookup(&ctx(1), "k").await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn hang_never_answers_and_has_no_effect() {
    let (clouds, cloud, d) = east();
    let a = d.provision(Provision::new(&ctx(1), "k")).await.unwrap();
    cloud.set_faults(Faults { hang: true, ..Faults::default() });
    let limit = Duration::from_secs(3600);
    assert!(tokio::time::timeout(limit, d.provision(Provision::new(&ctx(2), "k2"))).await.is_err());
    assert!(tokio::time::timeout(limit, d.stop(&ctx(2), &a.id)).await.is_err());
    assert!(tokio::time::timeout(limit, d.lookup(&ctx(2), "k")).await.is_err());
    assert_eq!(cloud.newest_epoch(WS), Some(1), "a hung call does not reach the fence");
    assert_eq!(&outcomes(&clouds)[1..], &[Outcome::Hung, Outcome::Hung, Outcome::Hung]);
    survives_the_faults(&cloud, &d, 2, &a.id).await;
}

// ---- end to end through the drivers ----------------------------------------------------------

#[tokio::test]
async fn a_safe_switch_leaves_a_clean_ledger() {
    let (clouds, east, west) = east_and_west();
    let a = east.provision(Provision::new(&ctx(1), "uid-1.op-1")).await.unwrap();
    // Switch under epoch 2: stop the old instance first, then start the new one.
    east.stop(&ctx(2), &a.id).await.unwrap();
    let b = west.provision(Provision::new(&ctx(2), "uid-1.op-2")).await.unwrap();
    // A takeover under epoch 3 resumes and repeats both calls idempotently.
    east.stop(&ctx(3), &a.id).await.unwrap();
    assert_eq!(west.provision(Provision::new(&ctx(3), "uid-1.op-2")).await.unwrap().id, b.id);
    assert!(check_ledger(&clouds.ledger()).is_empty(), "{:?}", check_ledger(&clouds.ledger()));
    assert!(check_live(&clouds, &[("west".into(), b.id.clone())]).is_empty());
}

#[tokio::test]
async fn an_unsafe_switch_is_flagged() {
    let (clouds, east, west) = east_and_west();
    let a = east.provision(Provision::new(&ctx(1), "k1")).await.unwrap();
    let b = west.provision(Provision::new(&ctx(2), "k2")).await.unwrap();
    east.stop(&ctx(2), &a.id).await.unwrap();
    let v = check_ledger(&clouds.ledger());
    assert_eq!(
        v,
        vec![Violation::MultipleLive {
            seq: 2,
            workspace_uid: WS.into(),
            provider: "west".into(),
            instance: b.id,
            running_provider: "east".into(),
            running_instance: a.id,
        }]
    );
}

// ---- check_ledger on hand-built ledgers ------------------------------------------------------

struct Book(Vec<LedgerEntry>);

impl Book {
    fn new() -> Self {
        Book(Vec::new())
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        provider: &str,
        uid: &str,
        epoch: i64,
        call: Call,
        key: Option<&str>,
        instance: Option<&str>,
        outcome: Outcome,
    ) -> &mut Self {
        let c = ctx_for(uid, epoch);
        self.0.push(LedgerEntry {
            seq: self.0.len() as u64 + 1,
            at: SystemTime::UNIX_EPOCH,
            provider: provider.into(),
            caller: c.caller,
            operation_id: c.operation_id,
            cluster: c.cluster,
            call,
            workspace_uid: c.workspace_uid,
            namespace: c.namespace,
            name: c.name,
            epoch,
            key: key.map(Into::into),
            instance: instance.map(Into::into),
            outcome,
        });
        self
    }

    fn create(&mut self, provider: &str, uid: &str, epoch: i64, key: &str, id: &str) -> &mut Self {
        self.push(provider, uid, epoch, Call::Provision, Some(key), Some(id), Outcome::Created)
    }

    fn stop(&mut self, provider: &str, uid: &str, epoch: i64, id: &str, outcome: Outcome) -> &mut Self {
        self.push(provider, uid, epoch, Call::Stop, None, Some(id), outcome)
    }

    fn check(&self) -> Vec<Violation> {
        check_ledger(&self.0)
    }
}

/// A busy but correct history: two workspaces, a switch, replays, lookups, faults and fences.
fn clean_book() -> Book {
    let mut b = Book::new();
    b.create("east", "u1", 1, "u1.op1", "e1")
        .create("east", "u2", 1, "u2.op1", "e2")
        .push("east", "u1", 1, Call::Provision, Some("u1.op1"), Some("e1"), Outcome::Existing)
        .push("east", "u1", 1, Call::Lookup, Some("u1.op1"), Some("e1"), Outcome::Found)
        .stop("east", "u1", 2, "e1", Outcome::Failed("injected".into()))
        .stop("east", "u1", 2, "e1", Outcome::Stopped)
        .stop("east", "u1", 1, "e1", Outcome::Fenced { newest: 2 })
        .push("west", "u1", 2, Call::Provision, Some("u1.op2"), None, Outcome::Failed("injected".into()))
        .push(
            "west",
            "u1",
            2,
            Call::Provision,
            Some("u1.op2"),
            Some("w1"),
            Outcome::CommittedResponseLost { created: true },
        )
        .push("west", "u1", 2, Call::Provision, Some("u1.op2"), Some("w1"), Outcome::Existing)
        .stop("east", "u1", 3, "e1", Outcome::AlreadyStopped)
        .stop("west", "u1", 3, "w-unknown", Outcome::AlreadyStopped)
        .push("west", "u1", 3, Call::Lookup, Some("u1.op2"), Some("w1"), Outcome::Found)
        .push("west", "u1", 1, Call::Lookup, Some("u1.op2"), None, Outcome::Fenced { newest: 3 })
        .push("west", "u1", 3, Call::Fence, None, None, Outcome::FenceRaised)
        .push("west", "u1", 0, Call::Provision, Some("u1.op0"), None, Outcome::Hung)
        // Back to east under a fresh key after the west instance stops.
        .stop("west", "u1", 4, "w1", Outcome::Stopped)
        .create("east", "u1", 4, "u1.op4", "e3");
    b
}

#[test]
fn clean_ledger_passes() {
    let v = clean_book().check();
    assert!(v.is_empty(), "{v:?}");
}

#[test]
fn ledger_is_replayed_in_seq_order() {
    let mut b = clean_book();
    b.0.reverse();
    assert!(b.check().is_empty());
}

/// e1 created under epoch 1, stopped under 2, then stopped again under `epoch`.
fn stopped_again_under(b: &mut Book, epoch: i64) {
    b.create("east", "u1", 1, "k1", "e1").stop("east", "u1", 2, "e1", Outcome::Stopped);
    b.stop("east", "u1", epoch, "e1", Outcome::Stopped);
}

/// Hand-built ledgers that each break an invariant: all that `check_ledger` reports, and words
/// the first report must contain.
#[test]
fn flags_each_breach() {
    struct Case {
        what: &'static str,
        book: fn(&mut Book),
        expected: Vec<Violation>,
        message: &'static [&'static str],
    }
    // Workspace u1's instance started at seq 2 while east/e1 was running.
    let second_live = |provider: &str, instance: &str| Violation::MultipleLive {
        seq: 2,
        workspace_uid: "u1".into(),
        provider: provider.into(),
        instance: instance.into(),
        running_provider: "east".into(),
        running_instance: "e1".into(),
    };
    // East accepted a call of u1 under epoch 2 at seq 2, after epoch 3 at seq 1.
    let stale = |call| Violation::StaleEpochAccepted {
        seq: 2,
        provider: "east".into(),
        call,
        workspace_uid: "u1".into(),
        epoch: 2,
        newest: 3,
        newest_seq: 1,
    };
    let cases = [
        Case {
            what: "two live instances across providers",
            book: |b| {
                b.create("east", "u1", 1, "k1", "e1").create("west", "u1", 2, "k2", "w1");
            },
            expected: vec![second_live("west", "w1")],
            message: &["invariant 2", "seq 2", "west/w1", "east/e1"],
        },
        Case {
            what: "a lost response that created a second live instance",
            book: |b| {
                b.create("east", "u1", 1, "k1", "e1").push(
                    "east",
                    "u1",
                    1,
                    Call::Provision,
                    Some("k2"),
                    Some("e2"),
                    Outcome::CommittedResponseLost { created: true },
                );
            },
            expected: vec![second_live("east", "e2")],
            message: &[],
        },
        Case {
            what: "a repeated effective stop",
            book: |b| stopped_again_under(b, 2),
            expected: vec![Violation::RepeatedStop {
                seq: 3,
                provider: "east".into(),
                instance: "e1".into(),
                first_seq: 2,
            }],
            message: &["invariant 3"],
        },
        Case {
            what: "effective stops under two epochs",
            book: |b| stopped_again_under(b, 3),
            expected: vec![
                Violation::RepeatedStop { seq: 3, provider: "east".into(), instance: "e1".into(), first_seq: 2 },
                Violation::StoppedUnderTwoEpochs {
                    seq: 3,
                    provider: "east".into(),
                    instance: "e1".into(),
                    epoch: 3,
                    first_seq: 2,
                    first_epoch: 2,
                },
            ],
            message: &[],
        },
        Case {
            what: "an accepted stale epoch",
            book: |b| {
                b.create("east", "u1", 3, "k1", "e1").stop("east", "u1", 2, "e1", Outcome::AlreadyStopped);
            },
            expected: vec![stale(Call::Stop)],
            message: &["accepted a stop for workspace u1 under epoch 2 after accepting epoch 3"],
        },
        Case {
            what: "a provision accepted below an explicit fence",
            book: |b| {
                b.push("east", "u1", 3, Call::Fence, None, None, Outcome::FenceRaised)
                    .create("east", "u1", 2, "k2", "e1");
            },
            expected: vec![stale(Call::Provision)],
            message: &[],
        },
        Case {
            what: "a lookup that contradicts the key",
            book: |b| {
                b.create("east", "u1", 1, "k1", "e1").push(
                    "east",
                    "u1",
                    1,
                    Call::Lookup,
                    Some("k1"),
                    Some("e7"),
                    Outcome::Found,
                );
            },
            expected: vec![Violation::KeyReused {
                seq: 2,
                provider: "east".into(),
                key: "k1".into(),
                instance: "e7".into(),
                first_instance: "e1".into(),
                first_seq: 1,
            }],
            message: &[],
        },
        Case {
            what: "a stop of another workspace's instance",
            book: |b| {
                b.create("east", "u1", 1, "k1", "e1").stop("east", "u2", 1, "e1", Outcome::Stopped);
            },
            expected: vec![Violation::ForeignStop {
                seq: 2,
                provider: "east".into(),
                instance: "e1".into(),
                workspace_uid: "u2".into(),
                owner: "u1".into(),
            }],
            message: &[],
        },
    ];
    for case in cases {
        let mut b = Book::new();
        (case.book)(&mut b);
        let v = b.check();
        assert_eq!(v, case.expected, "{}", case.what);
        let msg = v[0].to_string();
        for part in case.message {
            assert!(msg.contains(part), "{}: {msg:?} lacks {part:?}", case.what);
        }
    }
}

#[test]
fn instances_of_other_workspaces_or_stopped_ones_do_not_count_as_live() {
    let mut b = Book::new();
    b.create("east", "u1", 1, "k1", "e1")
        .create("east", "u2", 1, "k2", "e2")
        .stop("east", "u1", 2, "e1", Outcome::Stopped)
        .create("west", "u1", 2, "k3", "w1");
    assert!(b.check().is_empty());
    // An ineffective stop does not free the slot.
    let mut b = Book::new();
    b.create("east", "u1", 1, "k1", "e1")
        .stop("east", "u1", 2, "e1", Outcome::Failed("x".into()))
        .stop("east", "u1", 2, "e1", Outcome::Fenced { newest: 3 })
        .stop("east", "u1", 2, "e1", Outcome::AlreadyStopped)
        .create("west", "u1", 2, "k3", "w1");
    assert!(matches!(b.check().as_slice(), [Violation::MultipleLive { seq: 5, .. }]));
}

#[test]
fn same_instance_id_on_two_providers_is_two_instances() {
    let mut b = Book::new();
    b.create("east", "u1", 1, "k1", "i1")
        .stop("east", "u1", 2, "i1", Outcome::Stopped)
        .create("west", "u1", 2, "k1", "i1")
        .stop("west", "u1", 3, "i1", Outcome::Stopped);
    assert!(b.check().is_empty(), "{:?}", b.check());
}

#[test]
fn flags_a_provision_accepted_below_a_failed_but_admitted_call() {
    for call in [Call::Provision, Call::Stop, Call::Lookup] {
        let mut b = Book::new();
        b.push("east", "u1", 3, call, Some("k3"), None, Outcome::FailedAfterFence("injected".into()))
            .create("east", "u1", 2, "k2", "e1");
        let v = b.check();
        assert!(matches!(v.as_slice(), [Violation::StaleEpochAccepted { seq: 2, newest: 3, .. }]), "{call}: {v:?}");
    }
}

#[test]
fn flags_any_call_accepted_below_a_lookup() {
    let mut b = Book::new();
    b.create("east", "u1", 1, "k1", "e1")
        .push("east", "u1", 4, Call::Lookup, Some("k9"), None, Outcome::NotFound)
        .push("east", "u1", 2, Call::Lookup, Some("k1"), Some("e1"), Outcome::Found)
        .push("east", "u1", 3, Call::Fence, None, None, Outcome::FenceRaised)
        .stop("east", "u1", 3, "e1", Outcome::Stopped);
    let v = b.check();
    let seqs: Vec<(u64, Call)> = v
        .iter()
        .map(|v| match v {
            Violation::StaleEpochAccepted { seq, call, newest: 4, .. } => (*seq, *call),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(seqs, vec![(3, Call::Lookup), (4, Call::Fence), (5, Call::Stop)]);
}

#[test]
fn unreachable_calls_do_not_count_as_admitted() {
    let mut b = Book::new();
    b.push("east", "u1", 5, Call::Fence, None, None, Outcome::Failed("provider refuses all calls".into()))
        .push("east", "u1", 5, Call::Provision, Some("k5"), None, Outcome::Hung)
        .create("east", "u1", 2, "k2", "e1");
    assert!(b.check().is_empty(), "{:?}", b.check());
}

#[test]
fn inventory_stops_are_checked_like_any_other() {
    let inventory = |b: &mut Book, epoch: i64, outcome: Outcome| {
        b.stop("east", "u1", epoch, "e1", outcome);
        if let Some(e) = b.0.last_mut() {
            e.operation_id = "inventory".into();
        }
    };
    // An orphan stopped once by the collector, then again by a late holder: AlreadyStopped is fine.
    let mut b = Book::new();
    b.create("east", "u1", 2, "k2", "e1");
    inventory(&mut b, 3, Outcome::Stopped);
    b.stop("east", "u1", 3, "e1", Outcome::AlreadyStopped);
    assert!(b.check().is_empty(), "{:?}", b.check());
    // A second effective stop of it, under another epoch, is flagged both ways.
    let mut b = Book::new();
    b.create("east", "u1", 2, "k2", "e1").stop("east", "u1", 2, "e1", Outcome::Stopped);
    inventory(&mut b, 3, Outcome::Stopped);
    let v = b.check();
    assert!(
        matches!(
            v.as_slice(),
            [
                Violation::RepeatedStop { seq: 3, .. },
                Violation::StoppedUnderTwoEpochs { seq: 3, epoch: 3, first_epoch: 2, .. }
            ]
        ),
        "{v:?}"
    );
    // The collector stopping another workspace's instance is a foreign stop.
    let mut b = Book::new();
    b.create("east", "u2", 1, "k1", "e1");
    inventory(&mut b, 1, Outcome::AlreadyStopped);
    assert!(matches!(b.check().as_slice(), [Violation::ForeignStop { .. }]), "{:?}", b.check());
}

#[test]
fn stale_epochs_that_were_refused_or_elsewhere_are_fine() {
    let mut b = Book::new();
    b.create("east", "u1", 3, "k1", "e1")
        .stop("east", "u1", 2, "e1", Outcome::Fenced { newest: 3 })
        .push("east", "u1", 2, Call::Provision, Some("k9"), None, Outcome::Failed("x".into()))
        .push("east", "u1", 1, Call::Lookup, Some("k1"), None, Outcome::Fenced { newest: 3 })
        .push("east", "u1", 1, Call::Fence, None, None, Outcome::Fenced { newest: 3 })
        // Another workspace, and another provider, have fences of their own.
        .create("east", "u2", 1, "k2", "e2")
        .stop("east", "u1", 3, "e1", Outcome::Stopped)
        .create("west", "u1", 1, "k3", "w1");
    assert!(b.check().is_empty(), "{:?}", b.check());
}

#[test]
fn flags_a_key_that_yields_two_instances() {
    let mut b = Book::new();
    b.create("east", "u1", 1, "k1", "e1")
        .stop("east", "u1", 1, "e1", Outcome::Stopped)
        .create("east", "u1", 1, "k1", "e2");
    let v = b.check();
    assert_eq!(
        v,
        vec![Violation::KeyReused {
            seq: 3,
            provider: "east".into(),
            key: "k1".into(),
            instance: "e2".into(),
            first_instance: "e1".into(),
            first_seq: 1,
        }]
    );
    assert!(v[0].to_string().starts_with("invariant 4"));
    // The same key on another provider is another key.
    let mut b = Book::new();
    b.create("east", "u1", 1, "k1", "e1")
        .stop("east", "u1", 1, "e1", Outcome::Stopped)
        .create("west", "u1", 1, "k1", "w1");
    assert!(b.check().is_empty());
}

// ---- check_live ------------------------------------------------------------------------------

#[tokio::test]
async fn check_live_flags_leaks_and_missing_instances() {
    let (clouds, [a, b, c]) = three_workspaces().await;

    let all = [("east".to_string(), a.id.clone()), ("west".to_string(), b.id.clone())];
    assert!(check_live(&clouds, &all).is_empty());

    let v = check_live(&clouds, &all[..1]);
    assert_eq!(
        v,
        vec![Violation::Leaked { provider: "west".into(), instance: b.id.clone(), workspace_uid: "u2".into() }]
    );
    assert!(v[0].to_string().contains("invariant 6"));

    // Naming a stopped instance, or naming one on the wrong provider, is also a mismatch.
    let v = check_live(&clouds, &[all[0].clone(), all[1].clone(), ("west".to_string(), c.id.clone())]);
    assert_eq!(v, vec![Violation::NotLive { provider: "west".into(), instance: c.id.clone() }]);
    let v = check_live(&clouds, &[all[0].clone(), ("east".to_string(), b.id.clone())]);
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v.contains(&Violation::NotLive { provider: "east".into(), instance: b.id.clone() }));
}

// ---- durability, new faults, merged ledgers --------------------------------------------------

#[tokio::test]
async fn restore_from_the_ledger_rebuilds_instances_keys_and_fences() {
    let (clouds, _, d) = east();
    let a = d.provision(Provision::new(&ctx(1), "k1")).await.unwrap();
    let b = d.provision(Provision::new(&ctx(3), "k2")).await.unwrap();
    d.stop(&ctx(3), &a.id).await.unwrap();
    let _ = d.provision(Provision::new(&ctx(2), "k3")).await.unwrap_err();
    clouds.cloud("east").set_faults(Faults { drop_provision_response: 1, ..Faults::default() });
    let _ = d.provision(Provision::new(&ctx_for("u2", 7), "k4")).await.unwrap_err();
    d.lookup(&ctx(3), "k2").await.unwrap();

    let restored = Clouds::restore(clouds.ledger());
    let (before, after) = (clouds.cloud("east"), restored.cloud("east"));
    assert_eq!(after.instances(), before.instances());
    assert_eq!(after.newest_epoch(WS), Some(3));
    assert_eq!(after.newest_epoch("u2"), Some(7));
    assert_eq!(after.faults(), Faults::default(), "faults are not part of the ledger");
    assert_eq!(restored.ledger(), clouds.ledger());

    // It carries on where it stopped: same key same instance, fresh ids, seq continues.
    let d = driver(&restored, "east");
    assert_eq!(d.provision(Provision::new(&ctx(3), "k2")).await.unwrap(), b);
    let c = d.provision(Provision::new(&ctx(3), "k5")).await.unwrap();
    assert!(before.instance(&c.id).is_none(), "a new id, not a reused one: {}", c.id);
    assert!(matches!(d.stop(&ctx(2), &b.id).await, Err(DriverError::StaleEpoch { newest: 3, .. })));
    let seqs: Vec<u64> = restored.ledger().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let v = check_ledger(&restored.ledger());
    assert!(
        !v.iter().any(|v| matches!(v, Violation::KeyReused { .. } | Violation::StaleEpochAccepted { .. })),
        "{v:?}"
    );
}

#[derive(Debug, Default)]
struct FlakySink {
    written: Mutex<Vec<u64>>,
    fail: std::sync::atomic::AtomicBool,
}

impl LedgerSink for FlakySink {
    fn append(&self, entry: &LedgerEntry) -> std::io::Result<()> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("disk full"));
        }
        self.written.lock().unwrap().push(entry.seq);
        Ok(())
    }
}

#[tokio::test]
async fn a_failed_sink_refuses_every_later_call() {
    let clouds = Clouds::new();
    let sink = Arc::new(FlakySink::default());
    clouds.set_sink(sink.clone());
    let d = driver(&clouds, "east");
    let a = d.provision(Provision::new(&ctx(1), "k1")).await.unwrap();
    assert_eq!(*sink.written.lock().unwrap(), vec![1]);
    sink.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = d.provision(Provision::new(&ctx(1), "k2")).await.unwrap_err();
    assert!(matches!(&err, DriverError::Transient(m) if m.contains("disk full")), "{err:?}");
    sink.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    // Effects that might not survive a restart must not pile up: the cloud stays down.
    assert!(matches!(d.stop(&ctx(1), &a.id).await, Err(DriverError::Transient(_))));
    assert!(matches!(d.lookup(&ctx(1), "k1").await, Err(DriverError::Transient(_))));
    assert_eq!(clouds.cloud("east").instance(&a.id).unwrap().wire.state, InstanceState::Running);
    assert_eq!(*sink.written.lock().unwrap(), vec![1]);
}

#[tokio::test]
async fn refuse_all_and_error_rates() {
    let (_clouds, cloud, d) = east();
    let a = d.provision(Provision::new(&ctx(1), "k1")).await.unwrap();
    cloud.set_faults(Faults { refuse_all: true, ..Faults::default() });
    assert!(matches!(d.provision(Provision::new(&ctx(2), "k2")).await, Err(DriverError::Transient(_))));
    assert!(matches!(d.lookup(&ctx(2), "k1").await, Err(DriverError::Transient(_))));
    assert_eq!(cloud.newest_epoch(WS), Some(1), "a refused call does not reach the fence");

    cloud.set_faults(Faults { provision_error_rate: 1.0, stop_error_rate: 1.0, ..Faults::default() });
    assert!(
        matches!(d.provision(Provision::new(&ctx(2), "k2")).await, Err(DriverError::Transient(m)) if m.contains("rate"))
    );
    assert!(matches!(d.stop(&ctx(2), &a.id).await, Err(DriverError::Transient(_))));
    assert_eq!(cloud.instances().len(), 1);
    cloud.set_faults(Faults { provision_error_rate: 0.0, stop_error_rate: 0.0, ..Faults::default() });
    d.stop(&ctx(2), &a.id).await.unwrap();
}

#[test]
fn faults_json_is_hand_writable() {
    let f: Faults = serde_json::from_str(r#"{"extraLatencyMs": 250, "provisionErrorRate": 0.5}"#).unwrap();
    assert_eq!(f.extra_latency, Duration::from_millis(250));
    assert_eq!(f.provision_error_rate, 0.5);
    assert_eq!(serde_json::to_value(&f).unwrap()["extraLatencyMs"], 250);
}

fn entry_at(provider: &str, seq: u64, secs: u64) -> LedgerEntry {
    let mut b = Book::new();
    b.push(provider, "u1", 1, Call::Lookup, Some("k"), None, Outcome::NotFound);
    let mut e = b.0.remove(0);
    e.seq = seq;
    e.at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    e
}

#[test]
fn merge_ledgers_orders_by_time_keeps_each_process_in_order_and_renumbers() {
    let a = vec![entry_at("a", 2, 30), entry_at("a", 1, 10), entry_at("a", 3, 20)];
    let b = vec![entry_at("b", 1, 15), entry_at("b", 2, 30)];
    let merged = merge_ledgers(vec![a, b]);
    let order: Vec<(String, u64)> = merged.iter().map(|e| (e.provider.clone(), e.at_secs())).collect();
    // a's clock stepped back (30 then 20): a's own order still holds.
    assert_eq!(order, vec![("a".into(), 10), ("b".into(), 15), ("a".into(), 30), ("a".into(), 20), ("b".into(), 30)]);
    assert_eq!(merged.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
}

trait AtSecs {
    fn at_secs(&self) -> u64;
}

impl AtSecs for LedgerEntry {
    fn at_secs(&self) -> u64 {
        self.at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
    }
}

#[tokio::test]
async fn merged_ledgers_of_two_clouds_are_checked_together() {
    let (east, west) = (Clouds::new(), Clouds::new());
    let a = driver(&east, "east").provision(Provision::new(&ctx(1), "k1")).await.unwrap();
    // Unsafe: west starts before east's instance is stopped.
    driver(&west, "west").provision(Provision::new(&ctx(2), "k2")).await.unwrap();
    driver(&east, "east").stop(&ctx(2), &a.id).await.unwrap();
    let v = check_ledger(&merge_ledgers(vec![east.ledger(), west.ledger()]));
    assert!(matches!(v.as_slice(), [Violation::MultipleLive { .. }]), "{v:?}");
    assert!(check_ledger(&east.ledger()).is_empty() && check_ledger(&west.ledger()).is_empty());
}

#[test]
fn ledger_times_are_rfc3339_and_old_journals_still_read() {
    let entry = LedgerEntry {
        seq: 1,
        at: std::time::UNIX_EPOCH + Duration::new(1_796_000_000, 123_456_789),
        provider: "aws".into(),
        caller: "c".into(),
        operation_id: "op".into(),
        cluster: String::new(),
        call: Call::Fence,
        workspace_uid: "u".into(),
        namespace: "ns".into(),
        name: "ws".into(),
        epoch: 1,
        key: None,
        instance: None,
        outcome: Outcome::FenceRaised,
    };
    let json = serde_json::to_value(&entry).expect("serialize");
    assert_eq!(json["at"], "2026-11-30T00:53:20.123456789Z");
    assert_eq!(serde_json::from_value::<LedgerEntry>(json.clone()).expect("read back"), entry);
    let mut old = json;
    old["at"] = serde_json::json!({"secs_since_epoch": 1_796_000_000u64, "nanos_since_epoch": 123_456_789u32});
    assert_eq!(serde_json::from_value::<LedgerEntry>(old).expect("an old journal's entry"), entry);
    let mut garbled = serde_json::to_value(&entry).expect("serialize");
    garbled["at"] = "yesterday".into();
    assert!(serde_json::from_value::<LedgerEntry>(garbled).is_err());
}
