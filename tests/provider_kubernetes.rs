//! The `kubernetes` driver on the fuller test cluster (kube-apiserver, kube-controller-manager,
//! kube-scheduler and KWOK's fake nodes, which take Pods from Pending to Running and Ready and
//! through graceful termination): Pods as instances, provisioned = Running and Ready,
//! idempotency by key, stop = delete and wait until gone, fencing, kubeconfig-Secret targets,
//! and switches between two namespaces and between two clusters, driven through the real
//! controller, with a Pod that never becomes Ready, a node that goes away, and a workspace
//! deleted mid-switch.

mod support;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use switchyard::api::conditions as cond;
use switchyard::api::provision_key;
use switchyard::api::{ComputeProvider, Workspace};
use switchyard::provider::kubernetes::{
    ANNOTATION_EPOCH, ANNOTATION_KEY, FENCE_EPOCH_KEY, LABEL_CLUSTER, LABEL_WORKSPACE_NAME, LABEL_WORKSPACE_UID,
    fence_name, is_running_and_ready,
};
use switchyard::provider::simulated::Clouds;
use switchyard::provider::{CallContext, DispatchError, Dispatcher, DriverError, InstanceState};

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

/// A namespace of the test on the fuller cluster, deleted (and waited for) when the test ends.
async fn scoped(client: &Client, prefix: &str) -> support::ScopedNamespace {
    support::scoped_namespace(client, support::fuller_control_plane(), prefix).await
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

/// What the driver tests act through: a client of the fuller cluster, a namespace of their own
/// (deleted when the test ends), ComputeProvider `p` (not created in the API) putting Pods
/// there, and a dispatcher.
struct Pods {
    client: Client,
    ns: support::ScopedNamespace,
    p: ComputeProvider,
    d: Dispatcher,
}

impl Pods {
    async fn new(ns_prefix: &str, provider_name: &str) -> Self {
        let client = support::fuller_client().await;
        let ns = scoped(&client, ns_prefix).await;
        let p = provider(provider_name, &ns, None);
        let d = dispatcher(&client);
        Self { client, ns, p, d }
    }
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
    let Pods { client, ns, p, d } = Pods::new("kprov", "kube-idem").await;
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
    assert!(is_running_and_ready(pod), "a provision returns once its Pod is Running and Ready: {:?}", pod.status);
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
    let Pods { client, ns, p, d } = Pods::new("kstop", "kube-stop").await;
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
    let Pods { client, ns, p, d } = Pods::new("kfence", "kube-fence").await;
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
    let Pods { client, ns, p, d } = Pods::new("kfence2", "kube-fence2").await;
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
    let Pods { client, ns, p, d } = Pods::new("kfence3", "kube-fence3").await;
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
    let Pods { client, ns, p, d } = Pods::new("kinv", "kube-inv").await;
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
    let client = support::fuller_client().await;
    let secrets_ns = scoped(&client, "ksecret").await;
    let ns = scoped(&client, "kremote").await;
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
    let client = support::fuller_client().await;
    let ns = scoped(&client, "khealth").await;
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

/// One event of a workspace's Pods, as one cluster's watch delivered it.
#[derive(Debug, Clone)]
struct PodEvent {
    kind: &'static str,
    namespace: String,
    name: String,
    /// The Pod had a deletionTimestamp: it was in its graceful termination.
    terminating: bool,
    ready: bool,
    /// For ADDED: whether the Pod `PodWatch::start` was told to check existed on its cluster
    /// when this event arrived (read afresh, after the event).
    checked_pod_existed: Option<bool>,
}

/// A watch of one workspace's Pods on one cluster, from the version at which the test starts
/// it: the API server delivers its events in etcd order.
struct PodWatch {
    task: tokio::task::JoinHandle<Vec<PodEvent>>,
}

/// What a watch must have seen before it ends.
type Until = Box<dyn Fn(&[PodEvent]) -> bool + Send>;

impl PodWatch {
    /// Watches the Pods of workspace `uid` through `client` until `until` holds for what it has
    /// seen; on every ADDED, reads `check` (a Pod on another cluster, say) and records whether
    /// it still existed.
    async fn start(client: &Client, uid: &str, check: Option<(Api<Pod>, String)>, until: Until) -> Self {
        let pods: Api<Pod> = Api::all(client.clone());
        let selector = format!("{LABEL_WORKSPACE_UID}={uid}");
        let listed = pods.list(&ListParams::default().labels(&selector)).await.expect("list pods");
        let version = listed.metadata.resource_version.expect("list resourceVersion");
        let stream = pods.watch(&WatchParams::default().labels(&selector).timeout(280), &version).await.expect("watch");
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut stream = stream.boxed();
            while !until(&seen) {
                let Some(event) = stream.try_next().await.expect("watch event") else { break };
                let (kind, pod) = match event {
                    WatchEvent::Added(p) => ("ADDED", p),
                    WatchEvent::Modified(p) => ("MODIFIED", p),
                    WatchEvent::Deleted(p) => ("DELETED", p),
                    WatchEvent::Bookmark(_) => continue,
                    WatchEvent::Error(e) => panic!("watch error: {e:?}"),
                };
                let checked_pod_existed = match (&check, kind) {
                    (Some((api, name)), "ADDED") => Some(api.get_opt(name).await.expect("get checked pod").is_some()),
                    _ => None,
                };
                seen.push(PodEvent {
                    kind,
                    namespace: pod.namespace().unwrap_or_default(),
                    name: pod.name_any(),
                    terminating: pod.metadata.deletion_timestamp.is_some(),
                    ready: is_running_and_ready(&pod),
                    checked_pod_existed,
                });
            }
            seen
        });
        Self { task }
    }

    /// What the watch saw, once it has seen what it waits for (the watch may lag behind the
    /// API server: waiting on a condition, not a time, keeps the verdict independent of load).
    async fn finish(self) -> Vec<PodEvent> {
        tokio::time::timeout(Duration::from_secs(120), self.task)
            .await
            .expect("the watch did not see what it waits for within 120s")
            .expect("pod watch")
    }
}

/// Until Pod `namespace/name` was DELETED.
fn until_deleted(namespace: &str, name: &str) -> Until {
    let (namespace, name) = (namespace.to_string(), name.to_string());
    Box::new(move |seen| position(seen, "DELETED", &namespace, Some(&name)).is_some())
}

/// Until a Pod was ADDED in `namespace` (and, with `ready`, seen Running and Ready there).
fn until_added(namespace: &str, ready: bool) -> Until {
    let namespace = namespace.to_string();
    Box::new(move |seen| {
        position(seen, "ADDED", &namespace, None).is_some()
            && (!ready || seen.iter().any(|e| e.namespace == namespace && e.ready))
    })
}

/// The position of the first event of `kind` about Pod `namespace/name` (any name if None).
fn position(seen: &[PodEvent], kind: &str, namespace: &str, name: Option<&str>) -> Option<usize> {
    seen.iter().position(|e| e.kind == kind && e.namespace == namespace && name.is_none_or(|n| e.name == n))
}

/// The old Pod went through its graceful termination (seen terminating) and was then gone.
fn assert_terminated_gracefully(seen: &[PodEvent], namespace: &str, name: &str) -> usize {
    let terminating = seen.iter().position(|e| e.kind == "MODIFIED" && e.name == name && e.terminating);
    let deleted = position(seen, "DELETED", namespace, Some(name));
    match (terminating, deleted) {
        (Some(t), Some(d)) => assert!(t < d, "deleted before terminating: {seen:?}"),
        _ => panic!("expected the old Pod {namespace}/{name} to terminate, then be gone: {seen:?}"),
    }
    deleted.unwrap_or_default()
}

/// A `kubernetes` ComputeProvider named `name` in the cluster, with `call_timeout` seconds.
async fn create_provider(
    client: &Client,
    name: &str,
    namespace: &str,
    secret: Option<(&str, &str)>,
    call_timeout: u32,
) {
    let mut p = provider(name, namespace, secret);
    p.spec.call_timeout_seconds = Some(call_timeout);
    Api::<ComputeProvider>::all(client.clone()).create(&PostParams::default(), &p).await.expect("create provider");
}

/// The one Pod of workspace `uid` in `namespace`.
async fn the_pod(client: &Client, namespace: &str, uid: &str) -> Pod {
    let mut pods = pods_of(client, namespace, uid).await;
    assert_eq!(
        pods.len(),
        1,
        "one Pod of the workspace in {namespace}: {:?}",
        pods.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );
    pods.remove(0)
}

/// Deletes workspace `name` and waits until it is gone (its finalizer ran).
async fn delete_workspace(api: &Api<Workspace>, name: &str) {
    api.delete(name, &Default::default()).await.expect("delete workspace");
    support::eventually(&format!("workspace {name} gone"), Duration::from_secs(90), || async {
        api.get_opt(name).await.ok().flatten().is_none().then_some(())
    })
    .await;
}

/// Workspace `dev` of `ws_ns` created on provider `from` and Ready there, with a controller
/// for the namespace; returns the workspace API, the controller and the workspace's uid.
async fn ready_workspace(
    client: &Client,
    ws_ns: &str,
    identity: &str,
    from: &str,
) -> (Api<Workspace>, Instance, String) {
    let controller = Instance::start(client, fixtures::settings(identity, ws_ns), &Clouds::new());
    let api: Api<Workspace> = Api::namespaced(client.clone(), ws_ns);
    api.create(&PostParams::default(), &fixtures::workspace("dev", from)).await.expect("create workspace");
    let ws = fixtures::wait_ready_on(&api, "dev", from, Duration::from_secs(60)).await;
    (api, controller, ws.uid().expect("uid"))
}

/// A workspace switched between two `kubernetes` providers (two namespaces) — the old Pod
/// terminates and is gone before the new one is created, and the new one is Running and Ready
/// when the workspace is. Driven through the real controller; the order is read from one watch
/// across both namespaces, which the API server delivers in etcd order.
#[tokio::test]
async fn a_switch_between_two_namespaces_removes_the_old_pod_before_creating_the_new_one() {
    let client = support::fuller_client().await;
    let ws_ns = scoped(&client, "kswitch").await;
    let ((ns_a, pa), (ns_b, pb)) = (place(&client, "kswitch-a", 20).await, place(&client, "kswitch-b", 20).await);
    let (api, controller, uid) = ready_workspace(&client, &ws_ns, "kube-switch", &pa).await;
    let old = the_pod(&client, &ns_a, &uid).await;
    assert!(is_running_and_ready(&old), "Ready workspace, Pod not Running and Ready: {:?}", old.status);
    let old_name = old.name_any();
    let ws = api.get("dev").await.expect("workspace");
    assert_eq!(fixtures::status(&ws).instance.map(|i| i.id), Some(format!("{ns_a}/{old_name}")));

    let (gone, added) = (until_deleted(&ns_a, &old_name), until_added(&ns_b, true));
    let watch = PodWatch::start(&client, &uid, None, Box::new(move |seen| gone(seen) && added(seen))).await;
    fixtures::switch_with_kubectl(&ws_ns, "dev", &pb);
    let ws = fixtures::wait_ready_on(&api, "dev", &pb, Duration::from_secs(60)).await;
    let new = the_pod(&client, &ns_b, &uid).await;
    assert!(is_running_and_ready(&new), "Ready workspace, Pod not Running and Ready: {:?}", new.status);
    assert_eq!(fixtures::status(&ws).instance.map(|i| i.id), Some(format!("{ns_b}/{}", new.name_any())));
    let seen = watch.finish().await;

    let deleted = assert_terminated_gracefully(&seen, &ns_a, &old_name);
    let added = position(&seen, "ADDED", &ns_b, None).unwrap_or_else(|| panic!("no new Pod: {seen:?}"));
    assert!(deleted < added, "new Pod added before the old one was gone: {seen:?}");
    assert!(!seen[added].ready, "a Pod is created Pending: {seen:?}");
    assert!(seen[added..].iter().any(|e| e.namespace == *ns_b && e.ready), "the new Pod became Ready: {seen:?}");
    assert!(pods_of(&client, &ns_a, &uid).await.is_empty(), "old Pod left behind");

    // Deleting the workspace releases the compute.
    delete_workspace(&api, "dev").await;
    assert!(pods_of(&client, &ns_b, &uid).await.is_empty(), "Pod left after the workspace was deleted");
    controller.stop().await;
}

/// A namespace `<prefix>` of the fuller cluster and a ComputeProvider putting Pods there (call
/// timeout `call_timeout` seconds), created: (namespace, provider name).
async fn place(client: &Client, prefix: &str, call_timeout: u32) -> (support::ScopedNamespace, String) {
    let ns = scoped(client, prefix).await;
    let provider = fixtures::unique("kube");
    create_provider(client, &provider, &ns, None, call_timeout).await;
    (ns, provider)
}

/// A second fuller cluster, a namespace of it, and ComputeProvider `provider` (call timeout
/// `call_timeout` seconds) putting Pods there through Secret `remote` of `ws_ns`, which holds
/// the cluster's kubeconfig. Fields drop in order: the namespace before its cluster stops.
struct Remote {
    ns: support::ScopedNamespace,
    provider: String,
    client: Client,
    cluster: support::ControlPlane,
}

impl Remote {
    async fn start(client: &Client, ws_ns: &str, prefix: &str, call_timeout: u32) -> Self {
        let cluster = support::start_cluster(support::FULLER_NODES, &format!("-{prefix}"));
        let remote_client = support::client_for(&cluster).await;
        let ns = support::scoped_namespace(&remote_client, &cluster, &format!("{prefix}-there")).await;
        kubeconfig_secret(client, ws_ns, "remote", &cluster).await;
        let provider = fixtures::unique("kube-there");
        create_provider(client, &provider, &ns, Some((ws_ns, "remote")), call_timeout).await;
        Self { ns, provider, client: remote_client, cluster }
    }
}

/// The kubeconfig of `remote` in a provider-credential Secret `name` of `namespace`.
async fn kubeconfig_secret(client: &Client, namespace: &str, name: &str, remote: &support::ControlPlane) {
    let kubeconfig = std::fs::read(&remote.kubeconfig).expect("read kubeconfig");
    let secret = Secret {
        metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
        type_: Some(switchyard::api::PROVIDER_TOKEN_TYPE.into()),
        data: Some([("kubeconfig".to_string(), ByteString(kubeconfig))].into()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), namespace).create(&PostParams::default(), &secret).await.expect("Secret");
}

/// A switch between two clusters: provider A in this cluster, provider B in a second control
/// plane reached through a kubeconfig Secret. One watch per cluster: the old Pod terminates and
/// is gone (watch of cluster A), and when the new Pod appears (watch of cluster B), the old one
/// no longer exists — read afresh from cluster A at that moment.
#[tokio::test]
async fn a_switch_between_two_clusters_removes_the_old_pod_before_creating_the_new_one() {
    let client = support::fuller_client().await;
    let ws_ns = scoped(&client, "kclusters").await;
    let (ns_a, pa) = place(&client, "kclusters-a", 20).await;
    let remote = Remote::start(&client, &ws_ns, "kclusters", 20).await;
    let (remote_client, ns_b, pb) = (&remote.client, &remote.ns, &remote.provider);
    let (api, controller, uid) = ready_workspace(&client, &ws_ns, "kube-clusters", &pa).await;
    let old_name = the_pod(&client, &ns_a, &uid).await.name_any();

    let here = PodWatch::start(&client, &uid, None, until_deleted(&ns_a, &old_name)).await;
    let old_pod = (Api::<Pod>::namespaced(client.clone(), &ns_a), old_name.clone());
    let there = PodWatch::start(remote_client, &uid, Some(old_pod), until_added(ns_b, false)).await;
    fixtures::switch_with_kubectl(&ws_ns, "dev", pb);
    let ws = fixtures::wait_ready_on(&api, "dev", pb, Duration::from_secs(60)).await;
    let new = the_pod(remote_client, ns_b, &uid).await;
    assert!(is_running_and_ready(&new), "{:?}", new.status);
    assert_eq!(fixtures::status(&ws).instance.map(|i| i.id), Some(format!("{ns_b}/{}", new.name_any())));
    let (seen_here, seen_there) = (here.finish().await, there.finish().await);

    assert_terminated_gracefully(&seen_here, &ns_a, &old_name);
    assert!(position(&seen_here, "ADDED", &ns_a, None).is_none(), "a Pod created here: {seen_here:?}");
    let added = position(&seen_there, "ADDED", ns_b, None).unwrap_or_else(|| panic!("no new Pod: {seen_there:?}"));
    assert_eq!(seen_there[added].checked_pod_existed, Some(false), "the old Pod still existed: {seen_there:?}");
    assert!(pods_of(&client, &ns_a, &uid).await.is_empty(), "old Pod left behind");

    delete_workspace(&api, "dev").await;
    assert!(pods_of(remote_client, ns_b, &uid).await.is_empty(), "Pod left in the other cluster");
    controller.stop().await;
}

/// A Pod that never becomes Ready (its image cannot be pulled): each provision attempt waits
/// within the provider's call timeout and fails with what the Pod waits for; the workspace
/// goes Stalled ProvisionFailed with that reason, and the retries never make a second Pod.
#[tokio::test]
async fn a_pod_that_never_becomes_ready_stalls_the_workspace_with_the_reason() {
    let client = support::fuller_client().await;
    let ws_ns = scoped(&client, "knotready").await;
    let ns = scoped(&client, "knotready-pods").await;
    let p = fixtures::unique("kube-slow");
    create_provider(&client, &p, &ns, None, 3).await;

    // The driver alone: the error names the Pod and the image pull that holds it.
    let d = dispatcher(&client);
    let provider = Api::<ComputeProvider>::all(client.clone()).get(&p).await.expect("provider");
    let uid = fresh_uid();
    let template =
        switchyard::api::WorkspaceTemplate { image: Some("unpullable.invalid/devbox:1".into()), ..Default::default() };
    // Retried as the controller would: an attempt may end before the node reports the pull
    // (what it says then is checked too); every attempt adopts the same Pod.
    let key = provision_key(&uid, "op-1");
    let err = support::eventually("a provision error naming the image pull", Duration::from_secs(60), || async {
        let err = d.provision(&provider, &call(&uid, 1), &key, Some(&template)).await.expect_err("never ready");
        let DriverError::Transient(m) = driver_error(err) else { panic!("a transient error expected") };
        assert!(m.contains(&format!("{ns}/ws-alice-")) && m.contains("not Running and Ready"), "{m}");
        m.contains("ImagePullBackOff").then_some(m)
    })
    .await;
    assert!(err.contains("unpullable.invalid/devbox:1"), "{err}");
    assert_eq!(pods_of(&client, &ns, &uid).await.len(), 1, "retries adopt the one Pod");

    // Through the controller: Stalled ProvisionFailed, the reason in the message, one Pod.
    let mut settings = fixtures::settings("kube-notready", &ws_ns);
    settings.stall_after = 2;
    let controller = Instance::start(&client, settings, &Clouds::new());
    let api: Api<Workspace> = Api::namespaced(client.clone(), &ws_ns);
    let mut ws = fixtures::workspace("dev", &p);
    ws.spec.template = Some(template);
    api.create(&PostParams::default(), &ws).await.expect("create workspace");
    let stalled_on_pull = |ws: &Workspace| {
        cond::get(&fixtures::status(ws).conditions, cond::STALLED).is_some_and(|c| {
            c.status == "True"
                && c.reason == cond::ConditionReason::ProvisionFailed.as_str()
                && c.message.contains("ImagePullBackOff")
        })
    };
    let what = "Stalled ProvisionFailed: ImagePullBackOff";
    let ws = fixtures::wait_for(&api, "dev", what, Duration::from_secs(90), stalled_on_pull).await;
    let out = support::kubectl(&["wait", "-n", &ws_ns, "--for=condition=Stalled", "workspace/dev", "--timeout=60s"]);
    assert!(out.status.success(), "kubectl wait: {}", support::stderr(&out));
    let ws_uid = ws.uid().expect("uid");
    let pod = the_pod(&client, &ns, &ws_uid).await;
    assert!(!is_running_and_ready(&pod));

    delete_workspace(&api, "dev").await;
    assert!(pods_of(&client, &ns, &ws_uid).await.is_empty(), "Pod left after the workspace was deleted");
    controller.stop().await;
}

/// A workspace deleted in the middle of a switch (the old Pod stopped, the new one created but
/// not Ready yet): the finalizer stops what the in-flight provision created, and no Pod of it
/// is left anywhere.
#[tokio::test]
async fn deleting_a_workspace_mid_switch_leaves_no_pod() {
    let client = support::fuller_client().await;
    let ws_ns = scoped(&client, "kmidswitch").await;
    let ((ns_a, pa), (ns_b, pb)) = (place(&client, "kmidswitch-a", 3).await, place(&client, "kmidswitch-b", 3).await);
    let (api, controller, uid) = ready_workspace(&client, &ws_ns, "kube-midswitch", &pa).await;

    // Switch to B with an image that never gets pulled: the switch stays in its provision.
    fixtures::patch_spec(&api, "dev", json!({"provider": pb, "template": {"image": "unpullable.invalid/devbox:2"}}))
        .await;
    fixtures::wait_for(&api, "dev", "mid-switch, provisioning on B", Duration::from_secs(60), |ws| {
        let s = fixtures::status(ws);
        s.active_provider.as_deref() == Some(pb.as_str())
            && s.operation
                .as_ref()
                .is_some_and(|op| op.last_error.as_deref().is_some_and(|e| e.contains("ImagePullBackOff")))
    })
    .await;
    assert!(pods_of(&client, &ns_a, &uid).await.is_empty(), "old Pod not stopped before the provision");
    assert_eq!(pods_of(&client, &ns_b, &uid).await.len(), 1, "the in-flight provision's Pod");

    delete_workspace(&api, "dev").await;
    assert!(pods_of(&client, &ns_a, &uid).await.is_empty());
    assert!(pods_of(&client, &ns_b, &uid).await.is_empty(), "the in-flight provision's Pod was left");
    controller.stop().await;
}

/// A node that goes away under a running workspace (deleted, as a cloud deletes a lost
/// machine): its Pod can no longer finish a graceful termination, so a switch away waits —
/// retrying the stop — until the cluster removes the Pod (the pod garbage collector, about 40 s
/// after the node is gone), and only then creates the new Pod. The node is in a cluster of this
/// test's own, so that no other test loses it.
#[tokio::test]
async fn a_switch_away_from_a_lost_node_waits_until_its_pod_is_gone() {
    let client = support::fuller_client().await;
    let ws_ns = scoped(&client, "klostnode").await;
    let remote = Remote::start(&client, &ws_ns, "klostnode", 5).await;
    let (remote_client, ns_there, p_there) = (&remote.client, &remote.ns, &remote.provider);
    let (ns_here, p_here) = place(&client, "klostnode-here", 5).await;
    let (api, controller, uid) = ready_workspace(&client, &ws_ns, "kube-lostnode", p_there).await;
    let old = the_pod(remote_client, ns_there, &uid).await;
    let node = old.spec.as_ref().and_then(|s| s.node_name.clone()).expect("the Pod is on a node");

    let there = PodWatch::start(remote_client, &uid, None, until_deleted(ns_there, &old.name_any())).await;
    let old_pod = (Api::<Pod>::namespaced(remote_client.clone(), ns_there), old.name_any());
    let here = PodWatch::start(&client, &uid, Some(old_pod), until_added(&ns_here, false)).await;
    let out = support::kubectl_with(&remote.cluster.kubeconfig, &["delete", "node", &node, "--wait=true"]);
    assert!(out.status.success(), "kubectl delete node: {}", support::stderr(&out));
    fixtures::switch_with_kubectl(&ws_ns, "dev", &p_here);
    let ws = fixtures::wait_ready_on(&api, "dev", &p_here, Duration::from_secs(180)).await;
    let new = the_pod(&client, &ns_here, &uid).await;
    assert_eq!(fixtures::status(&ws).instance.map(|i| i.id), Some(format!("{ns_here}/{}", new.name_any())));
    let (seen_there, seen_here) = (there.finish().await, here.finish().await);

    assert!(position(&seen_there, "DELETED", ns_there, Some(&old.name_any())).is_some(), "{seen_there:?}");
    let added = position(&seen_here, "ADDED", &ns_here, None).unwrap_or_else(|| panic!("no new Pod: {seen_here:?}"));
    assert_eq!(seen_here[added].checked_pod_existed, Some(false), "the old Pod still existed: {seen_here:?}");
    assert!(pods_of(remote_client, ns_there, &uid).await.is_empty());

    delete_workspace(&api, "dev").await;
    controller.stop().await;
}

/// The fuller cluster does what the bare one cannot: ownerReferences cascade (the garbage
/// collector) and a namespace finishes deleting (the namespace controller).
#[tokio::test]
async fn the_fuller_cluster_collects_dependents_and_deletes_namespaces() {
    let client = support::fuller_client().await;
    let ns = support::namespace(&client, "kgc").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let owner: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "owner"}})).expect("owner");
    let owner = cms.create(&PostParams::default(), &owner).await.expect("create owner");
    let dependent: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "dependent", "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.uid().expect("uid")}]}}))
    .expect("dependent");
    cms.create(&PostParams::default(), &dependent).await.expect("create dependent");
    cms.delete("owner", &Default::default()).await.expect("delete owner");
    support::eventually("the dependent collected", Duration::from_secs(60), || async {
        cms.get_opt("dependent").await.expect("get").is_none().then_some(())
    })
    .await;
    let out = support::kubectl(&["delete", "namespace", &ns, "--wait=true", "--timeout=120s"]);
    assert!(out.status.success(), "namespace not deleted: {}", support::stderr(&out));
    let gone = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone()).get_opt(&ns).await.expect("get");
    assert!(gone.is_none(), "namespace {ns} still there");
}
