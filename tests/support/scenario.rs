//! One harness for the switch protocol's race, crash and fault scenarios, on either transport:
//! providers simulated in this process (driver `simulated`), or `switchyard provider-sim`
//! processes reached over the HTTP provider protocol (driver `http`). A scenario is written once
//! against [`Scenario`], and `tests/scenarios.rs` runs it on both; a scenario that only one
//! transport can express says why where it lives.
//!
//! What a scenario observes is the providers' side: their ledgers merged into one history and
//! their live instances, whichever transport made the calls.

use std::time::{Duration, Instant};

use kube::Client;
use kube::api::{Api, PostParams};
use switchyard::api::{Workspace, WorkspaceStatus};
use switchyard::controller::{FailPoint, Settings};
use switchyard::provider::simulated::{Call, Clouds, Faults, LedgerEntry, LiveInstance, Outcome, merge_ledgers};

use super::fixtures::{
    Instance, assert_history, settings, simulated_provider, status, switch_with_kubectl, unique, wait_ready_on,
    workspace,
};
use super::sims::{Sim, live_instances, merged_ledger};
use super::{eventually, namespace};

/// Generous: two cores shared with builds, and a provider probed healthy again only every 15 s.
pub const CONVERGE: Duration = Duration::from_secs(90);

/// How the controller reaches the scenario's providers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Driver `simulated`: the clouds live in this process ([`Scenario::clouds`]).
    InProcess,
    /// Driver `http`: one provider-sim process per provider, over real TCP, with a bearer token
    /// from a Secret.
    Http,
}

/// A namespace, providers `a` and `b` on one transport, and optionally `ws` placed on `a`.
pub struct Scenario {
    pub transport: Transport,
    pub client: Client,
    pub ns: String,
    pub api: Api<Workspace>,
    /// Provider names.
    pub a: String,
    pub b: String,
    /// The in-process providers' clouds; `Instance`s take it on either transport (an http
    /// provider never uses it).
    pub clouds: Clouds,
    /// One per provider, over HTTP; none in process.
    sims: Vec<Sim>,
    /// metadata.uid of `ws`, once created.
    pub uid: String,
}

impl Scenario {
    pub async fn new(transport: Transport, prefix: &str) -> Self {
        let client = super::client().await;
        let ns = namespace(&client, prefix).await;
        let api = Api::namespaced(client.clone(), &ns);
        let clouds = Clouds::new();
        let mut s = Self {
            transport,
            client,
            ns,
            api,
            a: String::new(),
            b: String::new(),
            clouds,
            sims: Vec::new(),
            uid: String::new(),
        };
        s.a = s.add_provider("a").await;
        s.b = s.add_provider("b").await;
        s
    }

    /// `ws` Running on `a`, placed by a controller that is then shut down.
    pub async fn running_on_a(transport: Transport, prefix: &str) -> Self {
        let mut s = Self::new(transport, prefix).await;
        let setup = s.start(&format!("{prefix}-setup"));
        let ws = s.create_ready_on_a("ws").await;
        setup.stop().await;
        s.uid = ws.metadata.uid.expect("uid");
        s
    }

    /// Creates workspace `name` on `a` and waits until it is Ready there (a controller must run).
    pub async fn create_ready_on_a(&self, name: &str) -> Workspace {
        self.api.create(&PostParams::default(), &workspace(name, &self.a)).await.expect("create");
        wait_ready_on(&self.api, name, &self.a, CONVERGE).await
    }

    /// Another provider on the scenario's transport, named `<prefix>-…`; its name.
    pub async fn add_provider(&mut self, prefix: &str) -> String {
        let name = unique(prefix);
        match self.transport {
            Transport::InProcess => simulated_provider(&self.client, &name, 5, 5).await,
            Transport::Http => self.sims.push(Sim::provider(&self.client, &self.ns, &name).await),
        }
        name
    }

    /// Counts `sim` (an http provider the test set up itself) among the scenario's providers:
    /// its calls and instances join the history the invariants are checked on.
    pub fn adopt(&mut self, sim: Sim) {
        self.sims.push(sim);
    }

    /// The provider-sim process behind provider `name` (over HTTP only).
    pub fn sim(&self, name: &str) -> &Sim {
        self.sims.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no provider-sim called {name}"))
    }

    /// [`Self::sim`], for what only a process can have done to it: be killed, restarted, have
    /// its token rotated.
    pub fn sim_mut(&mut self, name: &str) -> &mut Sim {
        self.sims.iter_mut().find(|s| s.name == name).unwrap_or_else(|| panic!("no provider-sim called {name}"))
    }

    /// Sets the faults of provider `name`, replacing those it had.
    pub async fn set_faults(&self, name: &str, faults: Faults) {
        match self.transport {
            Transport::InProcess => self.clouds.cloud(name).set_faults(faults),
            Transport::Http => self.sim(name).process.set_faults(&faults).await.expect("set faults"),
        }
    }

    /// Test-speed settings for a controller instance of this scenario's namespace.
    pub fn settings(&self, identity: &str) -> Settings {
        settings(identity, &self.ns)
    }

    pub fn start(&self, identity: &str) -> Instance {
        self.start_with(self.settings(identity))
    }

    pub fn start_with(&self, settings: Settings) -> Instance {
        Instance::start(&self.client, settings, &self.clouds)
    }

    /// Starts a controller whose reconciles freeze at `point`, switches `ws` to `b` as users do
    /// (`kubectl patch`), and waits until the controller, now the holder, is frozen there.
    pub async fn switch_to_b_frozen_at(&self, identity: &str, point: FailPoint) -> Instance {
        let x = Instance::start_frozen_at(&self.client, self.settings(identity), &self.clouds, point);
        switch_with_kubectl(&self.ns, "ws", &self.b);
        self.frozen(&x, point).await;
        x
    }

    /// `ws`'s status as the API server has it now.
    pub async fn status(&self) -> WorkspaceStatus {
        status(&self.api.get("ws").await.expect("get ws"))
    }

    /// Waits until a reconcile of `x` is frozen at `point`.
    pub async fn frozen(&self, x: &Instance, point: FailPoint) {
        eventually(&format!("{} frozen at {point:?}", x.identity), CONVERGE, || async {
            (x.failpoints.frozen_at(point) > 0).then_some(())
        })
        .await
    }

    /// Every call any of the providers ledgered (in this process and in provider-sims, whatever
    /// the transport: a test may adopt a sim of its own), as one history.
    async fn full_ledger(&self) -> Vec<LedgerEntry> {
        let sims = merged_ledger(&self.sims.iter().collect::<Vec<_>>()).await;
        merge_ledgers(vec![self.clouds.ledger(), sims])
    }

    /// The calls made for `ws`, as one history.
    pub async fn ledger(&self) -> Vec<LedgerEntry> {
        self.full_ledger().await.into_iter().filter(|e| e.workspace_uid == self.uid).collect()
    }

    /// Whether `provider` ledgered a `call` for `ws` whose outcome `pred` accepts.
    pub async fn ledger_has(&self, provider: &str, call: Call, pred: impl Fn(&Outcome) -> bool) -> bool {
        self.ledger().await.iter().any(|e| e.provider == provider && e.call == call && pred(&e.outcome))
    }

    /// Every provider's Running instances, in this process and in provider-sims.
    async fn all_live(&self) -> Vec<LiveInstance> {
        let mut live = self.clouds.live_instances();
        live.extend(live_instances(&self.sims.iter().collect::<Vec<_>>()).await);
        live
    }

    /// `ws`'s Running instances, as (provider, id).
    pub async fn live(&self) -> Vec<(String, String)> {
        let live = self.all_live().await.into_iter().filter(|i| i.workspace_uid == self.uid);
        live.map(|i| (i.provider, i.id)).collect()
    }

    /// DESIGN.md §3 invariants 2, 3, 4 (the merged ledger) and 6 (live instances against what
    /// the namespace's workspace statuses name); returns the merged ledger.
    pub async fn assert_invariants(&self) -> Vec<LedgerEntry> {
        let ledger = self.full_ledger().await;
        assert_history(&self.api, &ledger, &self.all_live().await).await;
        ledger
    }

    /// Clears `provider`'s faults, waits until `ws` is Ready on `b`, and checks that it runs
    /// there alone and that DESIGN.md §3 holds; the merged ledger.
    pub async fn heals_onto_b(&self, provider: &str) -> Vec<LedgerEntry> {
        self.set_faults(provider, Faults::default()).await;
        let ws = wait_ready_on(&self.api, "ws", &self.b, CONVERGE).await;
        let instance = ws.status.and_then(|s| s.instance).expect("instance");
        assert_eq!(self.live().await, vec![(self.b.clone(), instance.id)], "exactly one live instance, on b");
        self.assert_invariants().await
    }

    /// Waits for a call of `ws` at `provider` that `pred` accepts.
    pub async fn call_seen(&self, provider: &str, what: &str, pred: impl Fn(&LedgerEntry) -> bool) -> LedgerEntry {
        eventually(what, CONVERGE, || async {
            self.ledger().await.into_iter().find(|e| e.provider == provider && pred(e))
        })
        .await
    }
}

/// "N provider calls (P provisions, S stops, L lookups, F fenced)".
pub fn calls(ledger: &[LedgerEntry]) -> String {
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

/// The test log's line for a scenario: what it was, how long it took, what it cost the providers.
pub fn report(what: &str, started: Instant, ledger: &[LedgerEntry], claims: u64) {
    eprintln!("{what} ({:.1?}): {}, {claims} claims", started.elapsed(), calls(ledger));
}

/// Claims won plus takeovers, over `instances`.
pub fn claims(instances: &[&Instance]) -> u64 {
    instances.iter().map(|i| i.metrics.claims_won.get() + i.metrics.takeovers.get()).sum()
}

pub fn is_provision_of(e: &LedgerEntry, provider: &str) -> bool {
    e.provider == provider && e.call == Call::Provision
}
