//! High availability: two replicas under leader election; only the leader acts; when it dies
//! mid-switch the other takes the Lease once it expires and resumes the operation (how long that
//! took is printed, not asserted: a verdict must not depend on the machine's load).

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use support::fixtures::*;
use support::scenario::{Scenario, Transport};
use support::*;
use switchyard::api::Step;
use switchyard::controller::{FailPoint, FailPoints, LeaseSettings, Settings};
use switchyard::provider::simulated::Faults;

const LEASE: Duration = Duration::from_secs(3);

fn replica(identity: &str, ns: &str) -> Settings {
    let mut s = settings(identity, ns);
    // Long enough that only the leader rule, not claim expiry, can explain a fast takeover.
    s.claim_lease = Duration::from_secs(120);
    s.leader_election = Some(LeaseSettings { namespace: ns.to_string(), name: "switchyard".into(), duration: LEASE });
    s
}

#[tokio::test]
async fn leader_killed_mid_switch_is_replaced_and_the_switch_resumes() {
    let Scenario { client, ns, a, b, clouds, api, .. } = Scenario::new(Transport::InProcess, "ha").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);

    let failpoints = FailPoints::default();
    failpoints.arm(FailPoint::AfterCommit);
    let x = Instance::start_with(&client, replica("ha-x", &ns), &clouds, failpoints);
    eventually("ha-x leads", Duration::from_secs(30), || async {
        (lease_holder(&leases, "switchyard").await.as_deref() == Some("ha-x")).then_some(())
    })
    .await;
    let y = Instance::start(&client, replica("ha-y", &ns), &clouds);

    api.create(&PostParams::default(), &workspace("ws", &a)).await.expect("create");
    wait_ready_on(&api, "ws", &a, Duration::from_secs(30)).await;
    switch_with_kubectl(&ns, "ws", &b);
    wait_for(&api, "ws", "leader frozen after the commit", Duration::from_secs(30), |ws| {
        status(ws).operation.is_some_and(|o| o.step == Step::OldStopped && o.holder == "ha-x")
    })
    .await;
    assert!(clouds.ledger().iter().all(|e| e.caller == "ha-x"), "only the leader may act");
    assert_eq!(y.metrics.reconciles.get(), 0, "a standby must not reconcile");

    x.kill();
    let killed = Instant::now();
    eventually("ha-y leads", Duration::from_secs(30), || async {
        (lease_holder(&leases, "switchyard").await.as_deref() == Some("ha-y")).then_some(())
    })
    .await;
    let elected = killed.elapsed();
    let ws = wait_ready_on(&api, "ws", &b, Duration::from_secs(30)).await;
    let resumed = killed.elapsed();
    assert_eq!(y.metrics.takeovers.get(), 1, "the new leader takes over the dead leader's claim");
    let op_holder = status(&ws).last_switch.map(|l| l.to);
    assert_eq!(op_holder.as_deref(), Some(b.as_str()));
    assert_invariants(&api, &clouds).await;
    eprintln!("failover: new leader after {elected:?}, switch finished {resumed:?} after the leader was killed");
}

/// `/metrics`, `/healthz` and `/readyz` of a running instance, read over HTTP during a switch.
#[tokio::test]
async fn metrics_and_health_endpoints_report_a_switch() {
    use switchyard::controller::Handles;
    let Scenario { client, ns, a, b, clouds, api, .. } = Scenario::new(Transport::InProcess, "metrics").await;
    clouds.cloud(&a).set_faults(Faults { extra_latency: Duration::from_millis(300), ..Faults::default() });
    let handles = Handles::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(switchyard::telemetry::serve(
        listener,
        handles.metrics.clone(),
        handles.health.clone(),
        std::future::pending(),
    ));
    let _x = Instance::start_with_handles(&client, replica("metrics-x", &ns), &clouds, handles);

    eventually("/readyz ok", Duration::from_secs(30), || async {
        get(addr, "/readyz").await.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
    assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
    api.create(&PostParams::default(), &workspace("ws", &a)).await.expect("create");
    wait_ready_on(&api, "ws", &a, Duration::from_secs(30)).await;
    switch_with_kubectl(&ns, "ws", &b);
    // Stopping on a takes over 300ms: scrape while the switch is in flight, then after.
    let during = get(addr, "/metrics").await;
    assert!(during.contains("switchyard_claims_won_total"), "{during}");
    wait_ready_on(&api, "ws", &b, Duration::from_secs(30)).await;
    let after = get(addr, "/metrics").await;
    let completed = format!("switchyard_switches_total{{from=\"{a}\",to=\"{b}\",result=\"completed\"}} 1");
    assert!(after.contains(&completed), "no completed switch in:\n{after}");
    for name in [
        "switchyard_switch_duration_seconds_count 1",
        "switchyard_claims_lost_total",
        "switchyard_operations_in_flight",
        "switchyard_stalled_workspaces",
        "switchyard_leader 1",
        "switchyard_reconcile_errors_total",
        "switchyard_provider_call_duration_seconds_count{provider=",
    ] {
        assert!(after.contains(name), "{name} missing from /metrics:\n{after}");
    }
}

/// A plain HTTP/1.1 GET, answered in full (status line, headers, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else { return String::new() };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response
}
