//! The report: what was measured, as JSON (bench.json) and as Markdown tables (bench.md), plus the
//! switch latency plot (switch-latency.png).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::ceiling::Ceiling;
use super::metrics::ApiCounts;
use super::process::{CpuUsage, Memory};
use super::track::Marks;
use super::{BenchArgs, BenchError};
use crate::api::OperationKind;

pub const JSON_FILE: &str = "bench.json";
pub const MARKDOWN_FILE: &str = "bench.md";
pub const PLOT_FILE: &str = "switch-latency.png";

/// Latency distribution in milliseconds (nearest-rank percentiles).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let at = |p: f64| sorted[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1];
        (n > 0).then(|| Self {
            count: n,
            mean: sorted.iter().sum::<f64>() / n as f64,
            p50: at(50.0),
            p95: at(95.0),
            p99: at(99.0),
            max: sorted[n - 1],
        })
    }
}

/// Time between two observed steps of each workspace.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepTiming {
    pub step: String,
    pub latency_ms: Option<Percentiles>,
}

/// One phase (create all, or switch all) of one profile.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PhaseReport {
    pub workspaces: usize,
    /// Workspaces observed Ready on the target before the timeout.
    pub converged: usize,
    /// Seconds until every create or patch had been answered.
    pub submit_seconds: f64,
    /// Seconds from the first request until the last workspace was observed Ready.
    pub seconds: f64,
    /// Workspaces per second over `seconds`.
    pub per_second: f64,
    /// The most per second the provider latency allows at the controller's concurrency.
    pub provider_bound_per_s: Option<f64>,
    /// Per workspace: request sent → observed Ready on the target.
    pub latency_ms: Option<Percentiles>,
    /// Per workspace, between observed steps.
    pub steps: Vec<StepTiming>,
    /// How closely the order of claims follows the order of requests: Spearman's rank
    /// correlation (1 = first come, first served; 0 = no relation).
    #[serde(default)]
    pub claim_order: Option<f64>,
    /// From the API server's metrics, over the phase (plus a short settle for trailing writes).
    pub api: ApiCounts,
    /// PATCH workspaces/status (any answer) per workspace.
    pub status_writes_per_workspace: f64,
    /// CPU seconds used during the phase.
    pub cpu: CpuUsage,
    /// Increase of the controller's own counters and histogram sums/counts over the phase.
    pub controller_metrics: BTreeMap<String, f64>,
    /// The latency samples, for the plot (not in the JSON).
    #[serde(skip)]
    pub samples_ms: Vec<f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl PhaseReport {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        t0: Instant,
        submitted: Duration,
        converged: usize,
        marks: &[Marks],
        kind: OperationKind,
        provider_bound_per_s: Option<f64>,
        api: ApiCounts,
        cpu: CpuUsage,
    ) -> Self {
        let n = marks.len();
        let last_ready = marks.iter().filter_map(|m| m.ready).max();
        let seconds = match last_ready {
            Some(at) if converged == n => at.duration_since(t0),
            _ => t0.elapsed(),
        }
        .as_secs_f64();
        let between = |from: fn(&Marks) -> Option<Instant>, to: fn(&Marks) -> Option<Instant>| {
            marks.iter().filter_map(|m| Some(ms(to(m)?.saturating_duration_since(from(m)?)))).collect::<Vec<_>>()
        };
        let samples_ms = between(|m| m.sent, |m| m.ready);
        let step = |name: &str, from: fn(&Marks) -> Option<Instant>, to: fn(&Marks) -> Option<Instant>| StepTiming {
            step: name.to_string(),
            latency_ms: Percentiles::of(&between(from, to)),
        };
        let steps = match kind {
            OperationKind::Switch => vec![
                step("patch → claimed", |m| m.sent, |m| m.claimed),
                step("claimed → old stopped", |m| m.claimed, |m| m.old_stopped),
                step("old stopped → Ready", |m| m.old_stopped, |m| m.ready),
            ],
            _ => vec![
                step("create → claimed", |m| m.sent, |m| m.claimed),
                step("claimed → Ready", |m| m.claimed, |m| m.ready),
            ],
        };
        Self {
            workspaces: n,
            converged,
            submit_seconds: submitted.as_secs_f64(),
            seconds,
            per_second: if seconds > 0.0 { converged as f64 / seconds } else { 0.0 },
            provider_bound_per_s,
            latency_ms: Percentiles::of(&samples_ms),
            steps,
            claim_order: rank_correlation(marks.iter().filter_map(|m| m.sent.zip(m.claimed)).collect()),
            status_writes_per_workspace: if n > 0 { api.status_writes as f64 / n as f64 } else { 0.0 },
            api,
            cpu,
            controller_metrics: BTreeMap::new(),
            samples_ms,
        }
    }

    /// Status writes answered 200 per second.
    fn ok_writes_per_s(&self) -> f64 {
        let ok = self.api.status_patches.get("200").copied().unwrap_or(0) as f64;
        if self.seconds > 0.0 { ok / self.seconds } else { 0.0 }
    }
}

/// The controller process's memory and CPU over one profile.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControllerUsage {
    /// VmRSS once started, with an empty cache.
    pub rss_start_kib: u64,
    /// VmRSS once every workspace was created and Ready (all in its cache).
    pub rss_after_create_kib: u64,
    /// VmRSS after the switch phase.
    pub rss_end_kib: u64,
    /// VmHWM at the end: the peak resident size.
    pub peak_rss_kib: u64,
    /// User + system CPU seconds over the whole profile.
    pub cpu_seconds: f64,
    /// (RSS after create − RSS at start) / workspaces.
    pub rss_per_workspace_bytes: f64,
}

impl ControllerUsage {
    pub fn new(start: Memory, cached: Memory, end: Memory, cpu_seconds: f64, workspaces: usize) -> Self {
        let grown = cached.rss_kib.saturating_sub(start.rss_kib) as f64 * 1024.0;
        Self {
            rss_start_kib: start.rss_kib,
            rss_after_create_kib: cached.rss_kib,
            rss_end_kib: end.rss_kib,
            peak_rss_kib: end.hwm_kib,
            cpu_seconds,
            rss_per_workspace_bytes: if workspaces > 0 { grown / workspaces as f64 } else { 0.0 },
        }
    }
}

/// Controller throughput in the switch phase against the ceiling.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VsCeiling {
    /// Status writes answered 200 per second by the controller.
    pub writes_per_s: f64,
    pub ceiling_writes_per_s: f64,
    pub writes_fraction: f64,
    pub switches_per_s: f64,
    /// Ceiling writes per second ÷ the writes chained per workspace (a switch's guarded writes).
    pub ceiling_switches_per_s: f64,
    pub switches_fraction: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProfileReport {
    pub name: String,
    pub provision_latency_ms: u64,
    pub stop_latency_ms: u64,
    pub namespace: String,
    pub controller_log: String,
    pub create: PhaseReport,
    /// None when creation did not converge.
    pub switch: Option<PhaseReport>,
    pub controller: ControllerUsage,
    pub vs_ceiling: Option<VsCeiling>,
    /// Against the full-mix ceiling (spec patch, status writes, one Event per switch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs_full_mix: Option<VsCeiling>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    /// /proc/loadavg when the report was written: other work on the machine skews every number.
    pub load_average: String,
}

impl Machine {
    pub fn describe() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim()))
            .unwrap_or("unknown")
            .to_string();
        let meminfo = read("/proc/meminfo");
        let mem_kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        Self {
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            cpu_model,
            memory_gib: mem_kib / (1024.0 * 1024.0),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            load_average: read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunSettings {
    pub workspaces: usize,
    pub client_concurrency: usize,
    pub controller_concurrency: u16,
    pub ceiling_concurrency: Vec<usize>,
    /// Whether the bench started its own local control plane (else: --kubeconfig).
    pub local_control_plane: bool,
    pub controller_log: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub switchyard_version: String,
    pub started_at: String,
    pub machine: Machine,
    pub settings: RunSettings,
    pub profiles: Vec<ProfileReport>,
    pub ceiling: Option<Ceiling>,
    /// The same chains with a switch's whole request mix: spec patch, status writes, one Event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_mix_ceiling: Option<Ceiling>,
}

impl Report {
    pub fn new(
        started_at: jiff::Timestamp,
        args: &BenchArgs,
        local_control_plane: bool,
        mut profiles: Vec<ProfileReport>,
        ceiling: Option<Ceiling>,
        full_mix_ceiling: Option<Ceiling>,
    ) -> Self {
        for p in &mut profiles {
            p.vs_ceiling = vs(p, ceiling.as_ref());
            p.vs_full_mix = vs(p, full_mix_ceiling.as_ref());
        }
        Self {
            switchyard_version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: started_at.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
            machine: Machine::describe(),
            settings: RunSettings {
                workspaces: args.workspaces,
                client_concurrency: args.client_concurrency,
                controller_concurrency: args.controller_concurrency,
                ceiling_concurrency: args.ceiling_concurrency.clone(),
                local_control_plane,
                controller_log: args.controller_log.clone(),
            },
            profiles,
            ceiling,
            full_mix_ceiling,
        }
    }

    /// Why the report is not complete, if it is not.
    pub fn incomplete(&self) -> Option<String> {
        let mut why = Vec::new();
        for p in &self.profiles {
            let n = p.create.workspaces;
            match &p.switch {
                None => why.push(format!("{}: {} of {n} created workspaces became Ready", p.name, p.create.converged)),
                Some(s) if s.converged < n => {
                    why.push(format!("{}: {} of {n} switches completed", p.name, s.converged))
                }
                Some(_) => {}
            }
        }
        if self.ceiling.as_ref().and_then(|c| c.best.as_ref()).is_none() {
            why.push("no ceiling level finished without errors".into());
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// The profile's switch phase against the best level of `ceiling`.
fn vs(p: &ProfileReport, ceiling: Option<&Ceiling>) -> Option<VsCeiling> {
    let ceiling = ceiling?;
    let best = ceiling.best.as_ref()?;
    let s = p.switch.as_ref()?;
    let writes_per_s = s.ok_writes_per_s();
    let ceiling_switches_per_s = best.writes_per_s / ceiling.writes_per_workspace.max(1) as f64;
    Some(VsCeiling {
        writes_per_s,
        ceiling_writes_per_s: best.writes_per_s,
        writes_fraction: fraction(writes_per_s, best.writes_per_s),
        switches_per_s: s.per_second,
        ceiling_switches_per_s,
        switches_fraction: fraction(s.per_second, ceiling_switches_per_s),
    })
}

fn fraction(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// Status writes per switch, rounded, from the first profile whose switch phase completed.
pub fn writes_per_switch(profiles: &[ProfileReport]) -> Option<usize> {
    profiles
        .iter()
        .filter_map(|p| p.switch.as_ref())
        .find(|s| s.converged == s.workspaces && s.workspaces > 0)
        .map(|s| (s.status_writes_per_workspace.round() as usize).max(1))
}

/// Writes bench.json, bench.md and switch-latency.png into `out`.
pub fn write_all(out: &Path, report: &Report) -> Result<(), BenchError> {
    let write = |name: &str, bytes: &[u8]| {
        let path = out.join(name);
        std::fs::write(&path, bytes).map_err(|source| BenchError::Write { path, source })
    };
    write(JSON_FILE, &serde_json::to_vec_pretty(report)?)?;
    write(MARKDOWN_FILE, markdown(report).as_bytes())?;
    let series: Vec<(String, &[f64])> = report
        .profiles
        .iter()
        .filter_map(|p| {
            p.switch.as_ref().map(|s| {
                (format!("{} ({} / {} ms)", p.name, p.provision_latency_ms, p.stop_latency_ms), s.samples_ms.as_slice())
            })
        })
        .collect();
    super::plot::switch_latency(&out.join(PLOT_FILE), &series, report.settings.workspaces)
}

pub fn files(out: &Path) -> Vec<String> {
    [JSON_FILE, MARKDOWN_FILE, PLOT_FILE].iter().map(|f| out.join(f).display().to_string()).collect()
}

fn pct(p: &Option<Percentiles>) -> Option<String> {
    p.as_ref().map(|p| format!("{} / {} / {} / {} ms", num(p.p50), num(p.p95), num(p.p99), num(p.max)))
}

/// Spearman's rank correlation of the pairs' first and second members (ties broken by input
/// order, which is rare with Instants); None for fewer than two pairs.
fn rank_correlation(mut pairs: Vec<(Instant, Instant)>) -> Option<f64> {
    let n = pairs.len();
    if n < 2 {
        return None;
    }
    pairs.sort_by_key(|(sent, _)| *sent);
    let mut by_second: Vec<usize> = (0..n).collect();
    by_second.sort_by_key(|&i| pairs[i].1);
    // d_i = rank by first (i) − rank by second.
    let mut sum_d2 = 0.0;
    for (rank, &i) in by_second.iter().enumerate() {
        let d = i as f64 - rank as f64;
        sum_d2 += d * d;
    }
    let n = n as f64;
    Some(1.0 - 6.0 * sum_d2 / (n * (n * n - 1.0)))
}

/// A number with about three significant digits.
fn num(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

fn mib(kib: u64) -> String {
    format!("{} MiB", num(kib as f64 / 1024.0))
}

fn all_ready(p: &PhaseReport) -> String {
    let done = if p.converged == p.workspaces {
        String::new()
    } else {
        format!(" ({} of {} only)", p.converged, p.workspaces)
    };
    format!("{} s, {}/s{done}", num(p.seconds), num(p.per_second))
}

/// One table row: a label and one cell per profile ("–" where there is nothing to say).
fn row(out: &mut String, label: &str, profiles: &[ProfileReport], cell: impl Fn(&ProfileReport) -> Option<String>) {
    let cells: Vec<String> = profiles.iter().map(|p| cell(p).unwrap_or_else(|| "–".to_string())).collect();
    out.push_str(&format!("| {label} | {} |\n", cells.join(" | ")));
}

fn cpu(c: &CpuUsage) -> String {
    let part = |v: Option<f64>| v.map(num).unwrap_or_else(|| "–".into());
    format!("{} / {} / {}", part(c.controller_s), part(c.apiserver_s), num(c.bench_s))
}

/// Cores kept busy by the three processes over the phase.
fn cores_busy(p: &PhaseReport) -> Option<String> {
    let total = p.cpu.controller_s? + p.cpu.apiserver_s? + p.cpu.bench_s;
    (p.seconds > 0.0).then(|| num(total / p.seconds))
}

pub fn markdown(r: &Report) -> String {
    let ps = &r.profiles;
    let m = &r.machine;
    let mut out = format!("## Switchyard benchmark: {} workspaces\n\n", r.settings.workspaces);
    out.push_str(&format!(
        "Run {} · switchyard {} · {} CPUs ({}), {} GiB, Linux {}, load average {} at the end · {} · \
         client concurrency {}, controller concurrency {}\n\n",
        r.started_at,
        r.switchyard_version,
        m.cpus,
        m.cpu_model,
        num(m.memory_gib),
        m.kernel,
        m.load_average,
        if r.settings.local_control_plane {
            "local control plane (kube-apiserver + etcd in one process)"
        } else {
            "cluster from --kubeconfig"
        },
        r.settings.client_concurrency,
        r.settings.controller_concurrency,
    ));
    let header: Vec<&str> = ps.iter().map(|p| p.name.as_str()).collect();
    out.push_str(&format!("| | {} |\n|---|{}\n", header.join(" | "), "---:|".repeat(ps.len())));
    let sw = |p: &ProfileReport| p.switch.clone();
    row(&mut out, "provider latency (provision / stop)", ps, |p| {
        Some(format!("{} / {} ms", p.provision_latency_ms, p.stop_latency_ms))
    });
    row(&mut out, "create: all Ready", ps, |p| Some(all_ready(&p.create)));
    row(&mut out, "create latency p50 / p95 / p99 / max", ps, |p| pct(&p.create.latency_ms));
    row(&mut out, "switch: all Ready", ps, |p| sw(p).map(|s| all_ready(&s)));
    row(&mut out, "**switch latency p50 / p95 / p99 / max**", ps, |p| sw(p).and_then(|s| pct(&s.latency_ms)));
    row(&mut out, "claim order vs request order (Spearman ρ; 1 = first come, first served)", ps, |p| {
        sw(p).and_then(|s| s.claim_order).map(num)
    });
    row(&mut out, "provider-latency bound (concurrency ÷ latency)", ps, |p| {
        sw(p).and_then(|s| s.provider_bound_per_s).map(|b| format!("{}/s", num(b)))
    });
    row(&mut out, "status writes per switch (409s)", ps, |p| {
        sw(p).map(|s| format!("{} ({})", num(s.status_writes_per_workspace), s.api.conflicts))
    });
    row(&mut out, "status writes per create (409s)", ps, |p| {
        Some(format!("{} ({})", num(p.create.status_writes_per_workspace), p.create.api.conflicts))
    });
    // "a ÷ b = **c%**": the controller's rate over a ceiling's.
    let share = |a: f64, b: f64, f: f64| format!("{} ÷ {} = **{}%**", num(a), num(b), num(f * 100.0));
    row(&mut out, "controller status writes/s ÷ ceiling writes/s", ps, |p| {
        p.vs_ceiling.as_ref().map(|v| share(v.writes_per_s, v.ceiling_writes_per_s, v.writes_fraction))
    });
    row(&mut out, "switches/s ÷ ceiling switches/s", ps, |p| {
        p.vs_ceiling.as_ref().map(|v| share(v.switches_per_s, v.ceiling_switches_per_s, v.switches_fraction))
    });
    row(&mut out, "switches/s ÷ full-mix ceiling switches/s", ps, |p| {
        p.vs_full_mix.as_ref().map(|v| share(v.switches_per_s, v.ceiling_switches_per_s, v.switches_fraction))
    });
    row(&mut out, "controller peak RSS (VmHWM)", ps, |p| Some(mib(p.controller.peak_rss_kib)));
    row(&mut out, "controller RSS: start → all created → end", ps, |p| {
        let c = &p.controller;
        Some(format!("{} → {} → {}", mib(c.rss_start_kib), mib(c.rss_after_create_kib), mib(c.rss_end_kib)))
    });
    row(&mut out, "controller RSS per cached workspace", ps, |p| {
        Some(format!("{} KiB", num(p.controller.rss_per_workspace_bytes / 1024.0)))
    });
    row(&mut out, "controller CPU s (whole profile)", ps, |p| Some(num(p.controller.cpu_seconds)));
    row(&mut out, "CPU s in create: controller / API server / bench", ps, |p| Some(cpu(&p.create.cpu)));
    row(&mut out, "CPU s in switch: controller / API server / bench", ps, |p| sw(p).map(|s| cpu(&s.cpu)));
    row(&mut out, "cores busy in switch (of the machine's)", ps, |p| {
        sw(p).and_then(|s| cores_busy(&s)).map(|c| format!("{c} of {}", m.cpus))
    });
    row(&mut out, "controller CPU ms per switch", ps, |p| {
        sw(p).and_then(|s| s.cpu.controller_s.map(|c| num(c * 1000.0 / s.workspaces.max(1) as f64)))
    });

    out.push_str("\n### Where the time goes (per workspace, seen through a watch; p50 / p95 / max ms)\n\n");
    out.push_str(&format!("| step | {} |\n|---|{}\n", header.join(" | "), "---:|".repeat(ps.len())));
    let step_names: Vec<(bool, String)> = ps
        .first()
        .map(|p| {
            let create = p.create.steps.iter().map(|s| (false, s.step.clone()));
            let switch = p.switch.iter().flat_map(|s| s.steps.iter().map(|s| (true, s.step.clone())));
            create.chain(switch).collect()
        })
        .unwrap_or_default();
    for (in_switch, name) in &step_names {
        let label = format!("{}: {name}", if *in_switch { "switch" } else { "create" });
        row(&mut out, &label, ps, |p| {
            let phase = if *in_switch { p.switch.as_ref()? } else { &p.create };
            let s = phase.steps.iter().find(|s| &s.step == name)?.latency_ms.as_ref()?;
            Some(format!("{} / {} / {}", num(s.p50), num(s.p95), num(s.max)))
        });
    }

    if let Some(c) = &r.ceiling {
        ceiling_table(&mut out, "resourceVersion-guarded status merge patches from a plain kube client", c);
    }
    if let Some(c) = &r.full_mix_ceiling {
        let title = "a switch's whole request mix from a plain kube client (spec patch, the guarded status \
                     patches, one Event); the switches/s above are compared with both";
        ceiling_table(&mut out, title, c);
    }

    out.push_str("\n### API requests per switch (from the API server's `apiserver_request_total`)\n\n");
    out.push_str(&format!("| request | {} |\n|---|{}\n", header.join(" | "), "---:|".repeat(ps.len())));
    // Leave out the API server's own background requests (a watch re-established, a lease renewed).
    let per_switch =
        |s: &PhaseReport, kind: &String| s.api.requests.get(kind).map(|&c| c as f64 / s.workspaces.max(1) as f64);
    let mut kinds: Vec<&String> = ps
        .iter()
        .filter_map(|p| p.switch.as_ref())
        .flat_map(|s| s.api.requests.keys().filter(|k| per_switch(s, k).is_some_and(|v| v >= 0.05)))
        .collect();
    kinds.sort();
    kinds.dedup();
    for kind in kinds {
        row(&mut out, &format!("`{kind}`"), ps, |p| per_switch(p.switch.as_ref()?, kind).map(num));
    }

    out.push_str("\n### The controller's own metrics in the switch phase (per switch; histograms: mean)\n\n");
    out.push_str(&format!("| metric | {} |\n|---|{}\n", header.join(" | "), "---:|".repeat(ps.len())));
    // Summed over label sets (they name each profile's providers); the JSON keeps every series.
    let by_name = |p: &ProfileReport| -> BTreeMap<String, f64> {
        let mut sums = BTreeMap::new();
        for (series, v) in p.switch.iter().flat_map(|s| s.controller_metrics.iter()) {
            *sums.entry(series.split('{').next().unwrap_or(series).to_string()).or_insert(0.0) += v;
        }
        sums
    };
    let sums: Vec<BTreeMap<String, f64>> = ps.iter().map(by_name).collect();
    let mut names: Vec<&String> = sums.iter().flat_map(|m| m.keys()).filter(|n| !n.ends_with("_count")).collect();
    names.sort();
    names.dedup();
    for name in names {
        let cells: Vec<String> = ps
            .iter()
            .zip(&sums)
            .map(|(p, m)| {
                let value = m.get(name).copied();
                let cell = match name.strip_suffix("_sum") {
                    Some(base) => value.zip(m.get(&format!("{base}_count")).copied()).map(|(sum, count)| {
                        let mean = sum / count.max(1.0);
                        let shown =
                            if base.ends_with("_seconds") { format!("{} ms", num(mean * 1000.0)) } else { num(mean) };
                        format!("{shown} (n={count})")
                    }),
                    None => value.map(|v| num(v / p.create.workspaces.max(1) as f64)),
                };
                cell.unwrap_or_else(|| "–".to_string())
            })
            .collect();
        out.push_str(&format!("| `{}` | {} |\n", name.trim_end_matches("_sum"), cells.join(" | ")));
    }
    out
}

/// The table of one ceiling's concurrency levels.
fn ceiling_table(out: &mut String, title: &str, c: &Ceiling) {
    out.push_str(&format!(
        "\n### Ceiling: {title}\n\n\
         {} workspaces of `{}`, {} chained writes each, on the same API server in the same run. \
         Best: **{}**.\n\n\
         | concurrency | writes | seconds | writes/s | 409s | errors | CPU s: API server / bench |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n",
        c.workspaces,
        c.namespace,
        c.writes_per_workspace,
        c.best
            .as_ref()
            .map(|b| format!("{} writes/s at concurrency {}", num(b.writes_per_s), b.concurrency))
            .unwrap_or_else(|| "none".into()),
    ));
    for l in &c.levels {
        let server = l.cpu.apiserver_s.map(num).unwrap_or_else(|| "–".into());
        let unfinished = if l.finished { "" } else { " (timed out)" };
        out.push_str(&format!(
            "| {} | {}{unfinished} | {} | {} | {} | {} | {server} / {} |\n",
            l.concurrency,
            l.writes,
            num(l.seconds),
            num(l.writes_per_s),
            l.conflicts,
            l.errors,
            num(l.cpu.bench_s)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&samples).expect("samples");
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        assert!(Percentiles::of(&[]).is_none());
        let one = Percentiles::of(&[7.0]).expect("one sample");
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
    }

    #[test]
    fn rank_correlation_is_one_for_fifo_and_minus_one_for_lifo() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let fifo: Vec<_> = (0..100).map(|i| (at(i), at(1000 + i * 3))).collect();
        let lifo: Vec<_> = (0..100).map(|i| (at(i), at(1000 - i))).collect();
        assert!((rank_correlation(fifo).expect("pairs") - 1.0).abs() < 1e-9);
        assert!((rank_correlation(lifo).expect("pairs") + 1.0).abs() < 1e-9);
        // Swapping the halves of the claim order is neither.
        let halves: Vec<_> = (0..100).map(|i| (at(i), at((i + 50) % 100))).collect();
        let r = rank_correlation(halves).expect("pairs");
        assert!(r < 0.0 && r > -1.0, "{r}");
        assert!(rank_correlation(vec![(at(1), at(2))]).is_none());
    }
}
