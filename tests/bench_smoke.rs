//! Keeps `switchyard bench` working: a tiny run (20 workspaces, zero provider latency) against
//! this binary's control plane must produce a complete report. No timing is asserted: the
//! numbers depend on the machine and on what else runs on it.

mod support;

use std::process::Command;

use switchyard::tools::bench::Report;

#[test]
fn a_small_bench_run_produces_a_complete_report() {
    let kubeconfig = &support::control_plane().kubeconfig;
    let out = tempfile::tempdir().expect("temp dir");
    let run = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("bench")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--workspaces", "20", "--profiles", "zero", "--ceiling-concurrency", "1,8", "--phase-timeout", "180s"])
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("run switchyard bench");
    assert!(run.status.success(), "switchyard bench failed:\n{}\n{}", support::stdout(&run), support::stderr(&run));

    let json = std::fs::read_to_string(out.path().join("bench.json")).expect("bench.json");
    let report: Report = serde_json::from_str(&json).expect("bench.json parses as a Report");
    assert_eq!(report.incomplete(), None);
    assert_eq!(report.profiles.len(), 1);
    let profile = &report.profiles[0];
    assert_eq!((profile.create.workspaces, profile.create.converged), (20, 20));
    let switch = profile.switch.as_ref().expect("switch phase ran");
    assert_eq!((switch.workspaces, switch.converged), (20, 20));
    let latency = switch.latency_ms.as_ref().expect("switch latency percentiles");
    assert_eq!(latency.count, 20);
    assert!(switch.api.status_writes >= 20, "status writes come from the API server's metrics: {:?}", switch.api);
    assert!(profile.controller.peak_rss_kib > 0 && profile.controller.cpu_seconds >= 0.0);
    assert!(profile.vs_ceiling.is_some(), "controller throughput compared with the ceiling");
    let ceiling = report.ceiling.as_ref().expect("ceiling measured");
    assert_eq!(ceiling.levels.len(), 2);
    assert!(ceiling.best.is_some());
    // The full request mix too (spec patch, status writes, Event), with no request failing.
    let full = report.full_mix_ceiling.as_ref().expect("full-mix ceiling measured");
    assert!(full.levels.iter().all(|l| l.errors == 0 && l.writes > 0), "{:?}", full.levels);
    assert!(profile.vs_full_mix.is_some(), "controller throughput compared with the full mix");

    let markdown = std::fs::read_to_string(out.path().join("bench.md")).expect("bench.md");
    assert!(markdown.contains("switch latency p50"), "{markdown}");
    assert!(markdown.contains("full-mix ceiling switches/s"), "{markdown}");
    let png = std::fs::read(out.path().join("switch-latency.png")).expect("switch-latency.png");
    assert!(png.starts_with(b"\x89PNG"), "the plot is a PNG");
}
