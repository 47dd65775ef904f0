//! `switchyard provider-sim` processes as ComputeProviders (driver `http`, the bearer token in
//! a Secret the provider names), and DESIGN.md §3 checked from their ledgers.

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use switchyard::api::{ComputeProvider, SecretKeyRef};
use switchyard::provider::simulated::{LedgerEntry, LiveInstance, merge_ledgers};
use switchyard::tools::provider_sim::{ProviderSimOptions, ProviderSimProcess};

/// Bound of one call to a sim provider (`spec.callTimeoutSeconds`): short, so that a hung
/// call fails in a test's time.
pub const SIM_CALL_TIMEOUT_SECONDS: u32 = 5;

/// A provider-sim process, its state directory, and the ComputeProvider that names it.
pub struct Sim {
    pub process: ProviderSimProcess,
    /// The ComputeProvider's name, which is also the provider name in the sim's ledger.
    pub name: String,
    _dir: tempfile::TempDir,
}

impl Sim {
    /// Starts a provider-sim called `name` (no latency; faults can be set while it runs).
    pub async fn start(name: &str) -> Self {
        Self::start_with_env(name, Vec::new()).await
    }

    /// Starts a provider-sim with extra environment variables.
    async fn start_with_env(name: &str, env: Vec<(String, String)>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut options = ProviderSimOptions::new(env!("CARGO_BIN_EXE_switchyard"), name, dir.path().join(name));
        options.env = env;
        let process = ProviderSimProcess::start(options).await.expect("start provider-sim");
        Self { process, name: name.to_owned(), _dir: dir }
    }

    /// Starts a provider-sim and registers it as ComputeProvider `name`, its token in Secret
    /// `<name>-token` of `namespace`.
    pub async fn provider(client: &Client, namespace: &str, name: &str) -> Self {
        Self::provider_with_env(client, namespace, name, Vec::new()).await
    }

    /// `provider`, the process started with extra environment variables.
    pub async fn provider_with_env(client: &Client, namespace: &str, name: &str, env: Vec<(String, String)>) -> Self {
        let sim = Self::start_with_env(name, env).await;
        let secret = format!("{name}-token");
        put_secret(client, namespace, &secret, json!({"token": sim.process.token()})).await;
        http_provider(client, name, &sim, Some(secret_ref(namespace, &secret))).await;
        sim
    }

    pub async fn ledger(&self) -> Vec<LedgerEntry> {
        self.process.ledger().await.expect("provider-sim ledger")
    }

    pub async fn live(&self) -> Vec<LiveInstance> {
        self.process.live_instances().await.expect("provider-sim instances")
    }
}

pub fn secret_ref(namespace: &str, name: &str) -> SecretKeyRef {
    SecretKeyRef { name: name.to_owned(), namespace: namespace.to_owned(), key: "token".to_owned() }
}

/// Creates or replaces provider-token Secret `name` (labelled as one) with `string_data`.
pub async fn put_secret(client: &Client, namespace: &str, name: &str, string_data: serde_json::Value) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let metadata = json!({"name": name, "labels": {switchyard::api::PROVIDER_TOKEN_LABEL: "true"}});
    let secret: Secret =
        serde_json::from_value(json!({"metadata": metadata, "stringData": string_data})).expect("secret");
    let params = PatchParams::apply("switchyard-tests").force();
    secrets.patch(name, &params, &Patch::Apply(&secret)).await.expect("apply secret");
}

/// Creates ComputeProvider `name` with driver `http`, pointing at `sim`, its token in `secret`.
pub async fn http_provider(client: &Client, name: &str, sim: &Sim, secret: Option<SecretKeyRef>) -> ComputeProvider {
    let provider: ComputeProvider = serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1", "kind": "ComputeProvider",
        "metadata": {"name": name},
        "spec": {"driver": "http", "callTimeoutSeconds": SIM_CALL_TIMEOUT_SECONDS,
                 "http": sim.process.http_settings(secret)}
    }))
    .expect("provider");
    Api::<ComputeProvider>::all(client.clone())
        .create(&PostParams::default(), &provider)
        .await
        .expect("create provider")
}

/// The ledgers of `sims` as one history (`merge_ledgers`).
pub async fn merged_ledger(sims: &[&Sim]) -> Vec<LedgerEntry> {
    let mut ledgers = Vec::new();
    for sim in sims {
        ledgers.push(sim.ledger().await);
    }
    merge_ledgers(ledgers)
}

/// The Running instances of all `sims`.
pub async fn live_instances(sims: &[&Sim]) -> Vec<LiveInstance> {
    let mut live = Vec::new();
    for sim in sims {
        live.extend(sim.live().await);
    }
    live
}
