//! What is kept of a run: `report.json` (every check PASS or FAIL with its reason, each
//! scenario's load figures and timeline, the timings) and `report.html` (`html.rs`), and the
//! summary printed at the end. In: the checks and figures the scenarios recorded. Out: the two
//! files, written atomically, and the exit status (non-zero on any FAIL).

pub mod html;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::smoke::workload::load;
use crate::util::{display_rel, write_atomic};

/// Goals printed by every run.
const GOAL_HEALTHY_S: f64 = 3.0;
const GOAL_TOTAL_S: f64 = 45.0;

/// One check of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub scenario: String,
    pub name: String,
    pub outcome: Outcome,
    pub reason: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Outcome {
    Pass,
    Fail,
}

/// One scenario's figures: wall time, the client load, each member's time to healthy again.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub name: String,
    pub seconds: f64,
    pub load: Option<load::LoadReport>,
    /// Seconds from a member's restart (or replacement) to 3/3 healthy, in the order they happened.
    pub member_healthy_s: Vec<(String, f64)>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub image: String,
    /// `run` or `kube`, and for kube what the played pods change in the rendered static pods.
    pub engine: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kube_play_adaptations: Vec<String>,
    /// `--engine systemd`: the forms run (portable, host).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub forms: Vec<String>,
    pub etcd_version: String,
    pub cluster: String,
    pub scenarios: Vec<ScenarioReport>,
    pub checks: Vec<Check>,
    pub timings: BTreeMap<String, f64>,
    pub passed: usize,
    pub failed: usize,
}

/// Writes the report, prints the summary, and fails when the run or a check did.
pub fn finish_report(report: &Report, out: &Path, result: Result<()>) -> Result<()> {
    let json = serde_json::to_string_pretty(report).context("cannot serialise the report")?;
    write_atomic(&out.join("report.json"), format!("{json}\n").as_bytes(), 0o644)?;
    html::write(report, &out.join("report.html"))?;
    print_summary(report, out);
    result?;
    if report.failed > 0 {
        bail!(
            "{} of {} smoke checks failed (see {})",
            report.failed,
            report.checks.len(),
            display_rel(&out.join("report.json"))
        );
    }
    Ok(())
}

/// Records one check's outcome (printed as it happens) into `checks`.
pub(crate) fn record_check(
    checks: &mut Vec<Check>,
    scenario: &str,
    name: &str,
    started: Instant,
    result: Result<String>,
) {
    let seconds = started.elapsed().as_secs_f64();
    let (outcome, reason) = match result {
        Ok(r) => (Outcome::Pass, r),
        Err(e) => (Outcome::Fail, format!("{e:#}")),
    };
    eprintln!("smoke: {} {scenario}: {name}: {reason}", if outcome == Outcome::Pass { "PASS" } else { "FAIL" });
    checks.push(Check { scenario: scenario.to_string(), name: name.to_string(), outcome, reason, seconds });
}

fn print_summary(report: &Report, out: &Path) {
    let engine = match report.engine.as_str() {
        "kube" => "podman kube play of the static pods".to_string(),
        "systemd" => format!("three systemd machines: {}", report.forms.join(" and ")),
        _ => "podman run".to_string(),
    };
    println!("\nsmoke test of {} ({} nodes, mutual TLS, {engine})", report.image, 3);
    for a in &report.kube_play_adaptations {
        println!("  adaptation: {a}");
    }
    for sc in &report.scenarios {
        println!("scenario {} ({:.1} s)", sc.name, sc.seconds);
        for c in report.checks.iter().filter(|c| c.scenario == sc.name) {
            let mark = if c.outcome == Outcome::Pass { "PASS" } else { "FAIL" };
            println!("  {mark}  {:<70} {:>6.2} s  {}", c.name, c.seconds, c.reason);
        }
        if let Some(l) = &sc.load {
            println!(
                "  load: {} requests at {:.0}/s, {} failed, {} retried, worst latency {:.0} ms",
                l.requests, l.rate_per_s, l.failed, l.retries, l.worst_latency_ms
            );
        }
        if !sc.member_healthy_s.is_empty() {
            let times: Vec<String> = sc.member_healthy_s.iter().map(|(n, s)| format!("{n} {s:.2} s")).collect();
            println!("  healthy again after: {}", times.join(", "));
        }
    }
    let t = |k: &str| report.timings.get(k).copied();
    if let Some(s) = t("start_to_healthy") {
        println!("  start to 3/3 healthy: {s:.2} s (goal <= {GOAL_HEALTHY_S} s)");
    }
    if let Some(s) = t("heal_after_restart") {
        println!("  heal after restart:   {s:.2} s");
    }
    if let (Some(read), Some(healthy)) = (t("sigkill_first_read"), t("sigkill_healthy")) {
        println!("  SIGKILL recovery:     {read:.2} s to node 1's first read, {healthy:.2} s to 3/3 healthy");
    }
    for form in &report.forms {
        let times: Vec<String> =
            ["boot_to_healthy", "sigkill_to_serving", "reboot_to_serving", "heal_after_boot", "total"]
                .iter()
                .filter_map(|k| t(&format!("{form}_{k}")).map(|s| format!("{} {s:.1} s", k.replace('_', " "))))
                .collect();
        if !times.is_empty() {
            println!("  {form}: {}", times.join(", "));
        }
    }
    if let (Some(s), "systemd") = (t("total"), report.engine.as_str()) {
        println!("  total:                {s:.1} s");
    } else if let Some(s) = t("total") {
        println!("  total:                {s:.1} s (goal <= {GOAL_TOTAL_S} s with the image built)");
    }
    println!("  {} passed, {} failed; report: {}", report.passed, report.failed, display_rel(&out.join("report.json")));
}
