//! The Workspace controller against the real API server, with the in-process simulated cloud.
//! Every test checks DESIGN.md §3 from the providers' ledger, not from the controller.

mod support;

use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use support::fixtures::*;
use support::*;
use switchyard::api::Workspace;
use switchyard::provider::simulated::{Call, Clouds, Outcome};

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

    api.create(&PostParams::default(), &workspace("ws-1", &a))
        .await
        .expect("create");
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
            if is_ready_on(&ws, &b) {
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
    assert!(
        stop_a.seq < create_b.seq,
        "provision on b (seq {}) before stop on a (seq {})",
        create_b.seq,
        stop_a.seq
    );
    assert_eq!(stop_a.epoch, create_b.epoch, "stop and provision belong to one claim");
    assert_invariants(&api, &clouds).await;
    eprintln!("switch: {status_writes} status writes, {} provider calls", ledger.len());
}
