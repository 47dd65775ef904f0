//! The `kubernetes` driver against the real kube-apiserver of the test control plane: Pods as
//! instances, idempotency by key, stop = delete and wait, fencing, kubeconfig-Secret targets,
//! and a switch between two kubernetes providers driven through the real controller.
//!
//! The local control plane stores Pods but never schedules them: a created Pod is a provisioned
//! instance here, and deletion is immediate (an unscheduled Pod has no kubelet to wait for).

mod support;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use switchyard::api::{ComputeProvider, Workspace};
use switchyard::provider::kubernetes::{
    ANNOTATION_EPOCH, ANNOTATION_KEY, FENCE_EPOCH_KEY, LABEL_CLUSTER, LABEL_WORKSPACE_NAME, LABEL_WORKSPACE_UID,
    fence_name,
};
use switchyard::provider::simulated::Clouds;
use switchyard::provider::{CallContext, DispatchError, Dispatcher, DriverError, InstanceState, provision_key};

use support::fixtures::{self, Instance};

/// A `kubernetes` ComputeProvider object (not created in the cluster unless a test does so).
fn provider(name: &str, namespace: &str, secret: Option<(&str, &str)>) -> ComputeProvider {
    let mut kubernetes = json!({"namespace": namespace});
    if let Some((ns, name)) = secret {
        kubernetes["kubeconfigSecretRef"] = json!({"namespace": ns, "name": name, "key": "kubeconfig"});
    }
    serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1", "kind": "ComputeProvider",
        "metadata": {"name": name},
        "spec": {"driver": "kubernetes", "kubernetes": kubernetes, "callTimeoutSeconds": 20}
    }))
    .expect("provider")
}

fn call(uid: &str, epoch: i64) -> CallContext {
    CallContext {
        namespace: "team-a".into(),
        name: "alice".into(),
        workspace_uid: uid.into(),
        epoch,
        caller: "test".into(),
        operation_id: "op-1".into(),
        cluster: "kube-test".into(),
    }
}

/// The epoch the workspace's fence ConfigMap in `namespace` records.
async fn fence_epoch(client: &Client, namespace: &str, uid: &str) -> Option<String> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = cms.get_opt(&fence_name(uid)).await.expect("get fence");
    cm.and_then(|cm| cm.data).and_then(|d| d.get(FENCE_EPOCH_KEY).cloned())
}

fn fresh_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn pods_of(client: &Client, namespace: &str, uid: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("{LABEL_WORKSPACE_UID}={uid}");
    pods.list(&ListParams::default().labels(&selector)).await.expect("list pods").items
}

fn dispatcher(client: &Client) -> Dispatcher {
    Dispatcher::new(Clouds::new()).with_client(client.clone())
}

fn driver_error(e: DispatchError) -> DriverError {
    match e {
        DispatchError::Driver { source, .. } => source,
        other => panic!("expected a driver error, got {other}"),
    }
}

#[tokio::test]
async fn provisioning_twice_under_one_key_creates_one_pod() {
    let client = support::client().await;
    let ns = support::namespace(&client, "kprov").await;
    let p = provider("kube-idem", &ns, None);
    let d = dispatcher(&client);
    let uid = fresh_uid();
    let key = provision_key(&uid, "op-1");

    let first = d.provision(&p, &call(&uid, 1), &key, None).await.expect("first provision");
    let second = d.provision(&p, &call(&uid, 1), &key, None).await.expect("second provision");
    assert_eq!(first, second);
    assert_eq!(first.state, InstanceState::Running);
    assert!(first.id.starts_with(&format!("{ns}/ws-alice-")), "{}", first.id);

    let pods = pods_of(&client, &ns, &uid).await;
    assert_eq!(pods.len(), 1, "one key, one Pod");
    let pod = &pods[0];
    assert_eq!(format!("{ns}/{}", pod.name_any()), first.id);
    assert_eq!(pod.annotations().get(ANNOTATION_KEY), Some(&key));
    assert_eq!(pod.labels().get(LABEL_WORKSPACE_NAME).map(String::as_str), Some("alice"));
    let image = pod.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.image.clone());
    assert_eq!(image.as_deref(), Some(switchyard::provider::kubernetes::DEFAULT_IMAGE));

    // A newer epoch under the same key adopts the Pod and records the epoch on it.
    let third = d.provision(&p, &call(&uid, 3), &key, None).await.expect("provision at a newer epoch");
    assert_eq!(third.id, first.id);
    let pod = &pods_of(&client, &ns, &uid).await[0];
    assert_eq!(pod.annotations().get(ANNOTATION_EPOCH).map(String::as_str), Some("3"));

    let found = d.lookup(&p, &call(&uid, 3), &key).await.expect("lookup");
    assert_eq!(found, Some(first));
    let other = d.lookup(&p, &call(&uid, 3), &provision_key(&uid, "op-2")).await.expect("lookup other key");
    assert_eq!(other, None);
}

#[tokio::test]
async fn stop_deletes_the_pod_and_waits_until_it_is_gone() {
    let client = support::client().await;
    let ns = support::namespace(&client, "kstop").await;
    let p = provider("kube-stop", &ns, None);
    let d = dispatcher(&client);
    let uid = fresh_uid();
    let key = provision_key(&uid, "op-1");

    let instance = d.provision(&p, &call(&uid, 1), &key, None).await.expect("provision");
    d.stop(&p, &call(&uid, 1), &instance.id).await.expect("stop");
    // stop returns only once the Pod is gone: no polling needed here.
    assert!(pods_of(&client, &ns, &uid).await.is_empty(), "pod still present after stop");
    d.stop(&p, &call(&uid, 1), &instance.id).await.expect("a second stop is a no-op");
    assert_eq!(d.lookup(&p, &call(&uid, 1), &key).await.expect("lookup"), None);

    // A stop never deletes another workspace's Pod.
    let theirs = d.provision(&p, &call(&uid, 2), &provision_key(&uid, "op-2"), None).await.expect("provision");
    let err = d.stop(&p, &call(&fresh_uid(), 9), &theirs.id).await.expect_err("foreign stop");
    assert!(matches!(driver_error(err), DriverError::Rejected(m) if m.contains("does not belong")));
    assert_eq!(pods_of(&client, &ns, &uid).await.len(), 1);
}

#[tokio::test]
async fn a_stale_epoch_is_refused() {
    let client = support::client().await;
    let ns = support::namespace(&client, "kfence").await;
    let p = provider("kube-fence", &ns, None);
    let d = dispatcher(&client);
    let uid = fresh_uid();
    let key = provision_key(&uid, "op-1");

    let instance = d.provision(&p, &call(&uid, 5), &key, None).await.expect("provision at 5");
    let stale = DriverError::StaleEpoch { epoch: 4, newest: 5 };
    let err = d.stop(&p, &call(&uid, 4), &instance.id).await.expect_err("stop at 4");
    assert_eq!(driver_error(err), stale);
    let err = d.provision(&p, &call(&uid, 4), &key, None).await.expect_err("provision at 4, same key");
    assert_eq!(driver_error(err), stale);
    // Another key of the same workspace is fenced by the Pod that is there.
    let err = d.provision(&p, &call(&uid, 4), &provision_key(&uid, "op-0"), None).await.expect_err("other key");
    assert_eq!(driver_error(err), stale);
    assert_eq!(pods_of(&client, &ns, &uid).await.len(), 1, "the refused calls had no effect");

    d.stop(&p, &call(&uid, 6), &instance.id).await.expect("stop at a newer epoch");
    assert!(pods_of(&client, &ns, &uid).await.is_empty());
    assert_eq!(fence_epoch(&client, &ns, &uid).await.as_deref(), Some("6"));
}

#[tokio::test]
async fn a_fence_outlives_the_pods_and_holds_off_a_paused_ex_holder() {
    let client = support::client().await;
    let ns = support::namespace(&client, "kfence2").await;
    let p = provider("kube-fence2", &ns, None);
    let d = dispatcher(&client);
    let uid = fresh_uid();
    let old_key = provision_key(&uid, "op-old");

    // The old holder's Pod, then a takeover: the new holder fences, stops it, and fails a lookup.
    let old = d.provision(&p, &call(&uid, 2), &old_key, None).await.expect("provision at 2");
    d.fence(&p, &call(&uid, 3)).await.expect("fence at 3");
    d.fence(&p, &call(&uid, 3)).await.expect("fence again: idempotent");
    assert_eq!(fence_epoch(&client, &ns, &uid).await.as_deref(), Some("3"));
    let stale = DriverError::StaleEpoch { epoch: 2, newest: 3 };
    assert_eq!(driver_error(d.fence(&p, &call(&uid, 2)).await.expect_err("older fence")), stale);
    assert_eq!(driver_error(d.stop(&p, &call(&uid, 2), &old.id).await.expect_err("stop at 2")), stale);
    assert_eq!(driver_error(d.lookup(&p, &call(&uid, 2), &old_key).await.expect_err("lookup at 2")), stale);
    d.stop(&p, &call(&uid, 3), &old.id).await.expect("stop at 3");
    assert!(pods_of(&client, &ns, &uid).await.is_empty());

    // No Pod of the workspace is left, yet the ex-holder cannot re-create its Pod.
    let err = d.provision(&p, &call(&uid, 2), &old_key, None).await.expect_err("re-create at 2");
    assert_eq!(driver_error(err), stale);
    assert!(pods_of(&client, &ns, &uid).await.is_empty(), "the refused provision created nothing");

    // A lookup raises the fence as well.
    assert_eq!(d.lookup(&p, &call(&uid, 4), &old_key).await.expect("lookup at 4"), None);
    assert_eq!(fence_epoch(&client, &ns, &uid).await.as_deref(), Some("4"));
    let err = d.provision(&p, &call(&uid, 3), &provision_key(&uid, "op-3"), None).await.expect_err("provision at 3");
    assert_eq!(driver_error(err), DriverError::StaleEpoch { epoch: 3, newest: 4 });
}

#[tokio::test]
async fn concurrent_fences_never_lower_each_other() {
    let client = support::client().await;
    let ns = support::namespace(&client, "kfence3").await;
    let p = provider("kube-fence3", &ns, None);
    let d = dispatcher(&client);
    let uid = fresh_uid();
    let results = futures::future::join_all((1..=8).map(|epoch| {
        let (d, p, c) = (d.clone(), p.clone(), call(&uid, epoch));
        async move { d.fence(&p, &c).await }
    }))
    .await;
    assert!(results.iter().any(Result::is_ok));
    assert_eq!(fence_epoch(&client, &ns, &uid).await.as_deref(), Some("8"));
}

#[tokio::test]
async fn the_inventory_lists_one_clusters_pods_in_pages() {
    let client = support::client().await;
    let ns = support::namespace(&client, "kinv").await;
    let p = provider("kube-inv", &ns, None);
    let d = dispatcher(&client);
    let mut mine = Vec::new();
    for n in 0..3 {
        let uid = fresh_uid();
        let c = CallContext { name: format!("w{n}"), ..call(&uid, 2) };
        mine.push(d.provision(&p, &c, &provision_key(&uid, "op"), None).await.expect("provision").id);
    }
    let other_uid = fresh_uid();
    let other = CallContext { cluster: "another".into(), ..call(&other_uid, 1) };
    let theirs = d.provision(&p, &other, &provision_key(&other_uid, "op"), None).await.expect("provision");
    let pods = pods_of(&client, &ns, &other_uid).await;
    assert_eq!(pods[0].labels().get(LABEL_CLUSTER).map(String::as_str), Some("another"));

    let mut seen = Vec::new();
    let mut page = None;
    let mut pages = 0;
    loop {
        let got = d.list(&p, "kube-test", page.as_deref(), 2).await.expect("list");
        assert!(got.items.len() <= 2);
        pages += 1;
        seen.extend(got.items);
        page = got.next;
        if page.is_none() {
            break;
        }
    }
    assert!(pages >= 2, "limit 2 over 3 Pods takes two pages");
    let mut ids: Vec<String> = seen.iter().map(|i| i.id.clone()).collect();
    ids.sort();
    mine.sort();
    assert_eq!(ids, mine, "exactly this cluster's Pods");
    assert!(seen.iter().all(|i| i.state == InstanceState::Running && i.fence == Some(2) && i.namespace == "team-a"));
    assert!(seen.iter().all(|i| !i.key.is_empty() && i.name.starts_with('w')));
    let [t] = d.list(&p, "another", None, 0).await.expect("list").items.try_into().expect("one");
    assert_eq!(t.id, theirs.id);
    assert!(d.list(&p, "nobody", None, 10).await.expect("list").items.is_empty());
}

#[tokio::test]
async fn a_provider_reaches_its_cluster_through_a_kubeconfig_secret() {
    let client = support::client().await;
    let secrets_ns = support::namespace(&client, "ksecret").await;
    let ns = support::namespace(&client, "kremote").await;
    let d = dispatcher(&client);
    let p = provider("kube-remote", &ns, Some((&secrets_ns, "remote")));
    let uid = fresh_uid();
    let key = provision_key(&uid, "op-1");

    // Missing Secret: refused with a message naming it, nothing created.
    let err = d.provision(&p, &call(&uid, 1), &key, None).await.expect_err("no Secret yet");
    assert!(
        matches!(driver_error(err), DriverError::Rejected(m) if m.contains(&format!("{secrets_ns}/remote"))),
        "missing Secret must be named"
    );

    // The kubeconfig of the test control plane stands in for another cluster's.
    let kubeconfig = std::fs::read(&support::control_plane().kubeconfig).expect("read kubeconfig");
    let secret = Secret {
        metadata: kube::api::ObjectMeta { name: Some("remote".into()), ..Default::default() },
        type_: Some(switchyard::api::PROVIDER_TOKEN_TYPE.into()),
        data: Some([("kubeconfig".to_string(), ByteString(kubeconfig))].into()),
        ..Default::default()
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &secrets_ns);
    secrets.create(&PostParams::default(), &secret).await.expect("create Secret");

    let instance = d.provision(&p, &call(&uid, 1), &key, None).await.expect("provision through the Secret");
    assert_eq!(pods_of(&client, &ns, &uid).await.len(), 1);
    d.health(&p).await.expect("healthy through the Secret");
    d.stop(&p, &call(&uid, 1), &instance.id).await.expect("stop through the Secret");
    assert!(pods_of(&client, &ns, &uid).await.is_empty());

    // A rotated Secret takes effect on the next call: garbage now means refused.
    let mut garbage = secrets.get("remote").await.expect("get Secret");
    garbage.data = Some([("kubeconfig".to_string(), ByteString(b"clusters: [".to_vec()))].into());
    secrets.replace("remote", &PostParams::default(), &garbage).await.expect("rotate Secret");
    let err = d.provision(&p, &call(&uid, 2), &provision_key(&uid, "op-2"), None).await.expect_err("bad kubeconfig");
    assert!(matches!(driver_error(err), DriverError::Rejected(m) if m.contains("kubeconfig")));
}

#[tokio::test]
async fn health_proves_the_namespace_is_reachable() {
    let client = support::client().await;
    let ns = support::namespace(&client, "khealth").await;
    let healthy = provider("kube-health", &ns, None);
    let missing = provider("kube-missing", "no-such-namespace-here", None);
    let d = dispatcher(&client);
    d.health(&healthy).await.expect("healthy");
    let err = driver_error(d.health(&missing).await.expect_err("missing namespace"));
    assert!(matches!(&err, DriverError::Rejected(m) if m.contains("no-such-namespace-here")), "{err:?}");
    // Without a client of its own cluster the driver cannot work, and says so.
    let err = driver_error(Dispatcher::new(Clouds::new()).health(&healthy).await.expect_err("no client"));
    assert!(matches!(&err, DriverError::Rejected(m) if m.contains("without")), "{err:?}");
}

/// Issue 4: a workspace switched between two `kubernetes` providers (two namespaces) — the old
/// Pod is gone before the new one exists. Driven through the real controller; the order is read
/// from one watch stream across both namespaces, which the API server delivers in etcd order.
#[tokio::test]
async fn a_switch_between_two_kubernetes_providers_deletes_the_old_pod_before_creating_the_new_one() {
    let client = support::client().await;
    let ws_ns = support::namespace(&client, "kswitch").await;
    let (ns_a, ns_b) = (support::namespace(&client, "kswitch-a").await, support::namespace(&client, "kswitch-b").await);
    let (pa, pb) = (fixtures::unique("kube-a"), fixtures::unique("kube-b"));
    let providers: Api<ComputeProvider> = Api::all(client.clone());
    for (name, ns) in [(&pa, &ns_a), (&pb, &ns_b)] {
        providers.create(&PostParams::default(), &provider(name, ns, None)).await.expect("create provider");
    }
    let controller = Instance::start(&client, fixtures::settings("kube-switch", &ws_ns), &Clouds::new());
    let api: Api<Workspace> = Api::namespaced(client.clone(), &ws_ns);
    api.create(&PostParams::default(), &fixtures::workspace("dev", &pa)).await.expect("create workspace");
    let ws = fixtures::wait_ready_on(&api, "dev", &pa, Duration::from_secs(60)).await;
    let uid = ws.uid().expect("uid");
    let old = pods_of(&client, &ns_a, &uid).await;
    assert_eq!(old.len(), 1, "one Pod on provider A");
    let old_name = old[0].name_any();
    assert_eq!(fixtures::status(&ws).instance.map(|i| i.id), Some(format!("{ns_a}/{old_name}")));

    // One watch across all namespaces, from the version at which only the old Pod existed.
    let pods: Api<Pod> = Api::all(client.clone());
    let selector = format!("{LABEL_WORKSPACE_UID}={uid}");
    let listed = pods.list(&ListParams::default().labels(&selector)).await.expect("list pods");
    let version = listed.metadata.resource_version.expect("list resourceVersion");
    let stream = pods.watch(&WatchParams::default().labels(&selector).timeout(90), &version).await.expect("watch");
    let watch = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut stream = stream.boxed();
        while let Some(event) = stream.try_next().await.expect("watch event") {
            let entry = match event {
                WatchEvent::Added(p) => ("ADDED", p.namespace().unwrap_or_default(), p.name_any()),
                WatchEvent::Deleted(p) => ("DELETED", p.namespace().unwrap_or_default(), p.name_any()),
                WatchEvent::Modified(p) => ("MODIFIED", p.namespace().unwrap_or_default(), p.name_any()),
                WatchEvent::Bookmark(_) => continue,
                WatchEvent::Error(e) => panic!("watch error: {e:?}"),
            };
            let done = entry.0 == "ADDED";
            seen.push(entry);
            if done {
                break;
            }
        }
        seen
    });

    fixtures::patch_spec(&api, "dev", json!({"provider": pb})).await;
    let ws = fixtures::wait_ready_on(&api, "dev", &pb, Duration::from_secs(60)).await;
    let seen = tokio::time::timeout(Duration::from_secs(30), watch).await.expect("watch ended").expect("watch task");

    let deleted = seen.iter().position(|(t, ns, n)| *t == "DELETED" && *ns == ns_a && *n == old_name);
    let added = seen.iter().position(|(t, ns, _)| *t == "ADDED" && *ns == ns_b);
    match (deleted, added) {
        (Some(d), Some(a)) => assert!(d < a, "new Pod added before the old one was deleted: {seen:?}"),
        _ => panic!("expected the old Pod's DELETE and the new Pod's ADD: {seen:?}"),
    }
    assert!(pods_of(&client, &ns_a, &uid).await.is_empty(), "old Pod left behind");
    let new = pods_of(&client, &ns_b, &uid).await;
    assert_eq!(new.len(), 1, "one Pod on provider B");
    assert_eq!(fixtures::status(&ws).instance.map(|i| i.id), Some(format!("{ns_b}/{}", new[0].name_any())));

    // Deleting the workspace releases the compute.
    api.delete("dev", &Default::default()).await.expect("delete workspace");
    support::eventually("workspace gone", Duration::from_secs(60), || async {
        api.get_opt("dev").await.ok().flatten().is_none().then_some(())
    })
    .await;
    assert!(pods_of(&client, &ns_b, &uid).await.is_empty(), "Pod left after the workspace was deleted");
    controller.stop().await;
}
