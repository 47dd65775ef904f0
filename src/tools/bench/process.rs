//! The controller as a child process, and what processes cost, read from /proc: resident
//! memory now and at peak (VmRSS, VmHWM) and CPU seconds (utime + stime).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tracing::warn;

use super::{BenchError, read_text};
use crate::tools::process::{Signal, signal_child};

/// How long a SIGTERMed controller may take to shut down before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How long the controller may take to serve its health endpoints at all.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it may then take to report ready (caches synced).
const READY_GRACE: Duration = Duration::from_secs(5);

/// `switchyard controller --namespace NS`, logging to a file, serving /metrics and /readyz on
/// a loopback port of its own.
pub struct ControllerProcess {
    child: Child,
    pub pid: u32,
    log: PathBuf,
    metrics_addr: SocketAddr,
}

impl ControllerProcess {
    pub fn spawn(
        bin: &Path,
        kubeconfig: &Path,
        namespace: &str,
        concurrency: u16,
        rust_log: &str,
        log: PathBuf,
    ) -> Result<Self, BenchError> {
        let file = std::fs::File::create(&log).map_err(|source| BenchError::Write { path: log.clone(), source })?;
        let stderr = file.try_clone().map_err(|source| BenchError::Write { path: log.clone(), source })?;
        let metrics_addr =
            free_loopback_port().map_err(|source| BenchError::SpawnController { path: bin.to_path_buf(), source })?;
        // SWITCHYARD_BENCH_WRAPPER (e.g. "heaptrack -o target/bench/heap") runs the controller
        // under a profiler; the memory and CPU read from /proc are then the wrapper's.
        let wrapper: Vec<String> = std::env::var("SWITCHYARD_BENCH_WRAPPER")
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = command
            .arg("controller")
            .args(["--namespace", namespace, "--concurrency", &concurrency.to_string()])
            .args(["--metrics-addr", &metrics_addr.to_string()])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| BenchError::SpawnController { path: bin.to_path_buf(), source })?;
        let pid =
            child.id().ok_or_else(|| BenchError::ControllerExited { status: "at once".into(), log: log.clone() })?;
        Ok(Self { child, pid, log, metrics_addr })
    }

    /// Waits until /readyz answers 200 (the controller has listed its namespace). A controller
    /// that serves /healthz but never reports ready still reconciles: after a grace period we go
    /// on without it, with a warning, rather than measure nothing.
    pub async fn wait_ready(&mut self) -> Result<(), BenchError> {
        let started = tokio::time::Instant::now();
        loop {
            self.check_alive()?;
            match http_get(self.metrics_addr, "/readyz").await {
                Ok((200, _)) => return Ok(()),
                Ok(_) if started.elapsed() > READY_GRACE => {
                    warn!(
                        pid = self.pid,
                        grace_s = READY_GRACE.as_secs(),
                        "controller serves but never reported ready; going on"
                    );
                    return Ok(());
                }
                _ if started.elapsed() > READY_TIMEOUT => {
                    return Err(BenchError::ControllerExited {
                        status: "not serving in time".into(),
                        log: self.log.clone(),
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The controller's own /metrics page.
    pub async fn metrics(&self) -> Result<String, BenchError> {
        match http_get(self.metrics_addr, "/metrics").await {
            Ok((200, body)) => Ok(body),
            Ok((code, _)) => {
                Err(BenchError::Format { path: self.log.clone(), what: format!("controller /metrics answered {code}") })
            }
            Err(source) => {
                Err(BenchError::Read { path: format!("http://{}/metrics", self.metrics_addr).into(), source })
            }
        }
    }

    /// Fails if the controller has exited: every number after that would be meaningless.
    pub fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(BenchError::ControllerExited { status: status.to_string(), log: self.log.clone() }),
            Err(source) => Err(BenchError::Read { path: self.log.clone(), source }),
        }
    }

    /// SIGTERM (a graceful stop, so the log ends cleanly), then SIGKILL after a grace period.
    pub async fn stop(mut self) {
        let _ = signal_child(&self.child, Signal::TERM);
        if tokio::time::timeout(STOP_GRACE, self.child.wait()).await.is_err() {
            warn!(pid = self.pid, "controller did not stop on SIGTERM; killing it");
            let _ = self.child.kill().await;
        }
    }
}

/// A loopback port nobody listens on right now.
fn free_loopback_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// A plain HTTP/1.0 GET (the controller's endpoints are tiny; no client library needed).
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let code = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Ok((code, body))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Resident memory of a process, in KiB.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Memory {
    /// VmRSS: resident now.
    pub rss_kib: u64,
    /// VmHWM: the peak resident size so far.
    pub hwm_kib: u64,
}

pub fn memory(pid: u32) -> Result<Memory, BenchError> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let text = read_text(&path)?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    match (field("VmRSS:"), field("VmHWM:")) {
        (Some(rss_kib), Some(hwm_kib)) => Ok(Memory { rss_kib, hwm_kib }),
        _ => Err(BenchError::Format { path, what: "no VmRSS/VmHWM lines".into() }),
    }
}

/// CPU seconds (user + system, all threads) used by `pid`, or by this process when None.
pub fn cpu_seconds(pid: Option<u32>) -> Result<f64, BenchError> {
    let path = PathBuf::from(match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    });
    let text = read_text(&path)?;
    // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    // There field 3 (state) is index 0, so utime (14) and stime (15) are indices 11 and 12.
    let fields: Vec<&str> =
        text.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (tick(11), tick(12)) {
        (Some(utime), Some(stime)) => Ok((utime + stime) as f64 / clock_ticks_per_second()),
        _ => Err(BenchError::Format { path, what: "no utime/stime fields".into() }),
    }
}

fn clock_ticks_per_second() -> f64 {
    let ticks = rustix::param::clock_ticks_per_second();
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// CPU seconds of the processes that share the machine's cores during a benchmark.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    controller: Option<f64>,
    apiserver: Option<f64>,
    bench: f64,
}

/// CPU seconds used between two samples.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct CpuUsage {
    /// The controller process.
    pub controller_s: Option<f64>,
    /// kube-apiserver and etcd (one process in the local control plane); None with --kubeconfig.
    pub apiserver_s: Option<f64>,
    /// This process: sending requests and watching.
    pub bench_s: f64,
}

impl CpuSample {
    pub fn take(controller: Option<u32>, apiserver: Option<u32>) -> Result<Self, BenchError> {
        Ok(Self {
            controller: controller.map(|p| cpu_seconds(Some(p))).transpose()?,
            apiserver: apiserver.map(|p| cpu_seconds(Some(p))).transpose()?,
            bench: cpu_seconds(None)?,
        })
    }

    pub fn since(&self, before: &CpuSample) -> CpuUsage {
        let diff = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a - b);
        CpuUsage {
            controller_s: diff(self.controller, before.controller),
            apiserver_s: diff(self.apiserver, before.apiserver),
            bench_s: self.bench - before.bench,
        }
    }
}
