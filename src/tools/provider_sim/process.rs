//! A `switchyard provider-sim` child process, for end-to-end tests: start it, kill -9 it,
//! restart it on the same address with the same state, read its ledger, set its faults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use reqwest::Method;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tracing::debug;

use crate::api::{HttpSettings, SecretKeyRef};
use crate::provider::DriverError;
use crate::provider::http::client::{BearerToken, Endpoint};
use crate::provider::http::driver::{HttpDriver, TokenSource};
use crate::provider::simulated::{Faults, Instance, LedgerEntry, LiveInstance};
use crate::tools::process::{Signal, signal_child};

#[derive(Debug, thiserror::Error)]
pub enum SimProcessError {
    #[error("provider-sim {name}: {action}: {source}")]
    Io {
        name: String,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("provider-sim {name} did not come up: {reason} (log: {log})")]
    NotReady { name: String, reason: String, log: PathBuf },
    #[error("provider-sim {name}: {call}: {reason}")]
    Admin { name: String, call: String, reason: String },
}

/// How to run a provider-sim.
#[derive(Clone, Debug)]
pub struct ProviderSimOptions {
    /// The `switchyard` binary (in integration tests: `env!("CARGO_BIN_EXE_switchyard")`).
    pub binary: PathBuf,
    /// The provider's name in its ledger (use the ComputeProvider's name).
    pub name: String,
    /// Durable state, the token file and the process log go here.
    pub state_dir: PathBuf,
    /// The bearer token the process accepts.
    pub token: String,
    /// Where to listen; the default 127.0.0.1:0 picks a port, kept across restarts.
    pub listen: SocketAddr,
    pub provision_latency: Duration,
    pub stop_latency: Duration,
    /// Serve https with this certificate; `None` serves plain http.
    pub tls: Option<SimTls>,
    /// Extra environment of the process (e.g. OTEL_* to export its traces).
    pub env: Vec<(String, String)>,
}

/// A certificate for provider-sim, PEM. A self-signed certificate is also its own CA bundle.
#[derive(Clone, Debug)]
pub struct SimTls {
    pub cert_pem: String,
    pub key_pem: String,
}

impl ProviderSimOptions {
    /// Options with a random token, a free port and no latency.
    pub fn new(binary: impl Into<PathBuf>, name: &str, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            name: name.to_owned(),
            state_dir: state_dir.into(),
            token: format!("sim-{}", uuid::Uuid::new_v4().simple()),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            provision_latency: Duration::ZERO,
            stop_latency: Duration::ZERO,
            tls: None,
            env: Vec::new(),
        }
    }
}

/// A running (or killed) provider-sim. Dropping it kills the process.
#[derive(Debug)]
pub struct ProviderSimProcess {
    options: ProviderSimOptions,
    child: Option<Child>,
    addr: SocketAddr,
    admin: Endpoint,
    token: BearerToken,
}

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

impl ProviderSimProcess {
    /// Starts the process and waits until it listens.
    pub async fn start(options: ProviderSimOptions) -> Result<Self, SimProcessError> {
        let io = |action| {
            let name = options.name.clone();
            move |source| SimProcessError::Io { name, action, source }
        };
        std::fs::create_dir_all(&options.state_dir).map_err(io("create the state dir"))?;
        std::fs::write(options.state_dir.join("token"), &options.token).map_err(io("write the token file"))?;
        if let Some(tls) = &options.tls {
            std::fs::write(options.state_dir.join("tls.crt"), &tls.cert_pem).map_err(io("write the certificate"))?;
            std::fs::write(options.state_dir.join("tls.key"), &tls.key_pem).map_err(io("write the key"))?;
        }
        let (child, addr) = spawn(&options).await?;
        let endpoint = endpoint(&options, addr);
        let ca_bundle = options.tls.as_ref().map(|t| t.cert_pem.as_str());
        let admin = Endpoint::new(&endpoint, ca_bundle, ADMIN_TIMEOUT).map_err(|e| SimProcessError::NotReady {
            name: options.name.clone(),
            reason: e.to_string(),
            log: log_path(&options),
        })?;
        let token = BearerToken::new(&options.token);
        // Restarts reuse the address, so a ComputeProvider's endpoint stays valid.
        let options = ProviderSimOptions { listen: addr, ..options };
        Ok(Self { options, child: Some(child), addr, admin, token })
    }

    /// `http://127.0.0.1:PORT` (https with TLS): the ComputeProvider's `spec.http.endpoint`.
    pub fn endpoint(&self) -> String {
        endpoint(&self.options, self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.options.name
    }

    /// The bearer token it accepts (put it in the Secret the ComputeProvider names).
    pub fn token(&self) -> &str {
        &self.options.token
    }

    pub fn token_file(&self) -> PathBuf {
        self.options.state_dir.join("token")
    }

    pub fn state_dir(&self) -> &Path {
        &self.options.state_dir
    }

    /// The process's stderr (its logs), appended across restarts.
    pub fn log_file(&self) -> PathBuf {
        log_path(&self.options)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// `spec.http` for a ComputeProvider pointing at this process (with its certificate as
    /// the CA bundle, if it serves https).
    pub fn http_settings(&self, secret_ref: Option<SecretKeyRef>) -> HttpSettings {
        let ca_bundle = self.options.tls.as_ref().map(|t| t.cert_pem.clone());
        HttpSettings { endpoint: self.endpoint(), secret_ref, ca_bundle, allow_insecure_token: false }
    }

    /// An http driver for this process with its token, outside any cluster.
    pub fn driver(&self, budget: Duration) -> Result<HttpDriver, DriverError> {
        let token = TokenSource::Static(self.token.clone());
        HttpDriver::new(self.name(), &self.http_settings(None), token, budget)
    }

    /// Replaces the token the process accepts (it re-reads its token file on every request).
    pub fn rotate_token(&mut self, token: &str) -> Result<(), SimProcessError> {
        std::fs::write(self.token_file(), token).map_err(|source| self.io("write the token file", source))?;
        self.options.token = token.to_owned();
        self.token = BearerToken::new(token);
        Ok(())
    }

    /// kill -9: no shutdown, no flush beyond what was already fsync'd.
    pub async fn kill(&mut self) -> Result<(), SimProcessError> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.map_err(|source| self.io("kill", source))?;
        }
        Ok(())
    }

    /// SIGTERM, then waits for the exit.
    pub async fn terminate(&mut self) -> Result<(), SimProcessError> {
        if let Some(mut child) = self.child.take() {
            let _ = signal_child(&child, Signal::TERM);
            child.wait().await.map_err(|source| self.io("wait for exit", source))?;
        }
        Ok(())
    }

    /// Kills the process (if running) and starts it again on the same address and state.
    pub async fn restart(&mut self) -> Result<(), SimProcessError> {
        self.kill().await?;
        let mut last = None;
        // The port was just freed; a busy system may take a moment to let it be bound again.
        for _ in 0..5 {
            match spawn(&self.options).await {
                Ok((child, _)) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(e) => {
                    debug!(error = %e, "provider-sim restart failed; retrying");
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| self.not_ready("restart failed".to_owned())))
    }

    /// Every call the provider has ledgered, across restarts.
    pub async fn ledger(&self) -> Result<Vec<LedgerEntry>, SimProcessError> {
        self.admin_call(Method::GET, "ledger", None).await
    }

    pub async fn faults(&self) -> Result<Faults, SimProcessError> {
        self.admin_call(Method::GET, "faults", None).await
    }

    /// Replaces the faults (`Faults::default()` clears them).
    pub async fn set_faults(&self, faults: &Faults) -> Result<(), SimProcessError> {
        let body = serde_json::to_value(faults).map_err(|e| self.admin_error("PUT faults", e.to_string()))?;
        self.admin_call::<Faults>(Method::PUT, "faults", Some(body)).await.map(drop)
    }

    /// Every instance ever created.
    pub async fn instances(&self) -> Result<Vec<Instance>, SimProcessError> {
        self.admin_call(Method::GET, "instances", None).await
    }

    /// The Running instances, for [`check_live_instances`](crate::provider::simulated::check_live_instances).
    pub async fn live_instances(&self) -> Result<Vec<LiveInstance>, SimProcessError> {
        Ok(self.instances().await?.into_iter().filter_map(|i| i.live_on(&self.options.name)).collect())
    }

    async fn admin_call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        what: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, SimProcessError> {
        let call = format!("{method} /v1/admin/{what}");
        let mut request = self.admin.request(method, &["admin", what], Some(&self.token));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| self.admin_error(&call, e.without_url().to_string()))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.admin_error(&call, e.without_url().to_string()))?;
        if !status.is_success() {
            return Err(self.admin_error(&call, format!("{status}: {text}")));
        }
        serde_json::from_str(&text).map_err(|e| self.admin_error(&call, format!("bad answer ({e}): {text}")))
    }

    fn admin_error(&self, call: &str, reason: String) -> SimProcessError {
        SimProcessError::Admin { name: self.options.name.clone(), call: call.to_owned(), reason }
    }

    fn io(&self, action: &'static str, source: std::io::Error) -> SimProcessError {
        SimProcessError::Io { name: self.options.name.clone(), action, source }
    }

    fn not_ready(&self, reason: String) -> SimProcessError {
        SimProcessError::NotReady { name: self.options.name.clone(), reason, log: self.log_file() }
    }
}

fn endpoint(options: &ProviderSimOptions, addr: SocketAddr) -> String {
    let scheme = if options.tls.is_some() { "https" } else { "http" };
    format!("{scheme}://{addr}")
}

fn log_path(options: &ProviderSimOptions) -> PathBuf {
    options.state_dir.join("provider-sim.log")
}

/// Spawns the process and reads the address from its `listening http://ADDR` line.
async fn spawn(options: &ProviderSimOptions) -> Result<(Child, SocketAddr), SimProcessError> {
    let name = options.name.clone();
    let io = |action| {
        let name = name.clone();
        move |source| SimProcessError::Io { name, action, source }
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(options))
        .map_err(io("open the log file"))?;
    let mut command = Command::new(&options.binary);
    command
        .arg("provider-sim")
        .arg("--listen")
        .arg(options.listen.to_string())
        .arg("--name")
        .arg(&options.name)
        .arg("--token-file")
        .arg(options.state_dir.join("token"))
        .arg("--state-dir")
        .arg(&options.state_dir)
        .arg("--provision-latency")
        .arg(format!("{}ms", options.provision_latency.as_millis()))
        .arg("--stop-latency")
        .arg(format!("{}ms", options.stop_latency.as_millis()));
    if options.tls.is_some() {
        command
            .arg("--tls-cert-file")
            .arg(options.state_dir.join("tls.crt"))
            .arg("--tls-key-file")
            .arg(options.state_dir.join("tls.key"));
    }
    let mut child = command
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()))
        .envs(options.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(io("spawn"))?;
    let not_ready = |reason: String| SimProcessError::NotReady { name: name.clone(), reason, log: log_path(options) };
    let stdout = child.stdout.take().ok_or_else(|| not_ready("no stdout".to_owned()))?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(READY_TIMEOUT, lines.next_line()).await;
    let line = match first {
        Ok(Ok(Some(line))) => line,
        Ok(Ok(None)) => return Err(not_ready("exited before listening".to_owned())),
        Ok(Err(e)) => return Err(not_ready(format!("reading stdout: {e}"))),
        Err(_) => return Err(not_ready(format!("no `listening` line within {READY_TIMEOUT:?}"))),
    };
    let addr = line
        .strip_prefix("listening ")
        .and_then(|a| a.strip_prefix("http://").or_else(|| a.strip_prefix("https://")))
        .and_then(|a| a.trim().parse::<SocketAddr>().ok())
        .ok_or_else(|| not_ready(format!("unexpected first line {line:?}")))?;
    // Keep draining stdout so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, addr))
}
