//! `target/smoke/report.html`: the run as a person would rather look at it. One self-contained
//! file (inline SVG drawn by plotters, inline CSS, nothing fetched): per scenario the load's
//! requests per second, failures and retries, and its p50/p99 latency, second by second, with
//! each step of the scenario marked and numbered and each fault's window shaded, then that
//! scenario's checks.
//! In: the [`Report`]. Out: `report.html`, written atomically.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use super::{Outcome, Report};
use crate::smoke::workload::load::LoadReport;
use crate::smoke::workload::timeline::{Mark, Second};
use crate::util::write_atomic;

/// The series' colours (also what the test looks for in a screenshot).
pub const REQUESTS: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
pub const FAILED: RGBColor = RGBColor(0xd6, 0x27, 0x28);
pub const RETRIES: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
pub const P50: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
pub const P99: RGBColor = RGBColor(0x94, 0x67, 0xbd);
const MARK: RGBColor = RGBColor(0x70, 0x70, 0x70);
/// The bands under the series: a fault's window, and a window without a quorum.
pub const FAULT_BAND: RGBColor = RGBColor(0xfd, 0xe8, 0xc8);
pub const NO_QUORUM_BAND: RGBColor = RGBColor(0xf8, 0xc8, 0xc8);

const WIDTH: u32 = 960;
const HEIGHT: u32 = 260;

/// Writes the page for `report` at `path` (atomically).
pub fn write(report: &Report, path: &Path) -> Result<()> {
    let html = render(report)?;
    write_atomic(path, html.as_bytes(), 0o644)
}

/// Text for HTML: `&`, `<`, `>` and `"` escaped.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The page.
pub fn render(report: &Report) -> Result<String> {
    let mut h = String::new();
    let verdict = if report.failed == 0 { "pass" } else { "fail" };
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>etcd smoke report: {} passed, {} \
         failed</title>\n<style>{CSS}</style></head>\n<body>\n<h1 class=\"{verdict}\">etcd smoke: {} passed, {} \
         failed</h1>\n<p class=\"meta\">etcd {} &middot; image {} &middot; engine {} &middot; cluster {}</p>\n",
        report.passed,
        report.failed,
        report.passed,
        report.failed,
        escape(&report.etcd_version),
        escape(&report.image),
        escape(&report.engine),
        escape(&report.cluster),
    );
    let _ = writeln!(
        h,
        "<p class=\"legend\"><span style=\"color:{}\">&#9632; requests/s</span> <span style=\"color:{}\">&#9632; \
         failed</span> <span style=\"color:{}\">&#9632; retried</span> <span style=\"color:{}\">&#9632; p50 \
         latency</span> <span style=\"color:{}\">&#9632; p99 latency</span> &middot; numbered lines: the scenario's \
         steps</p>",
        hex(REQUESTS),
        hex(FAILED),
        hex(RETRIES),
        hex(P50),
        hex(P99)
    );
    for s in &report.scenarios {
        let _ = writeln!(h, "<section id=\"{0}\"><h2>{0}</h2>", escape(&s.name));
        match &s.load {
            Some(load) => {
                let _ = writeln!(
                    h,
                    "<p>{:.0} s &middot; {} requests ({:.0}/s) &middot; {} failed &middot; {} retried &middot; worst \
                     latency {:.0} ms</p>",
                    s.seconds, load.requests, load.rate_per_s, load.failed, load.retries, load.worst_latency_ms
                );
                h.push_str(&charts(&s.name, load)?);
                h.push_str(&marks_list(&load.marks));
            }
            None => h.push_str("<p>No client load in this scenario.</p>\n"),
        }
        h.push_str("<table class=\"checks\"><tr><th>check</th><th>outcome</th><th>s</th><th>reason</th></tr>\n");
        for c in report.checks.iter().filter(|c| c.scenario == s.name) {
            let (class, word) = match c.outcome {
                Outcome::Pass => ("pass", "PASS"),
                Outcome::Fail => ("fail", "FAIL"),
            };
            let _ = writeln!(
                h,
                "<tr class=\"{class}\"><td>{}</td><td>{word}</td><td>{:.2}</td><td>{}</td></tr>",
                escape(&c.name),
                c.seconds,
                escape(&c.reason)
            );
        }
        h.push_str("</table></section>\n");
    }
    h.push_str("</body></html>\n");
    Ok(h)
}

const CSS: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}h1.pass{color:#2ca02c}h1.fail{color:#d62728}\
                   .meta,.legend{color:#555}table.checks{border-collapse:collapse;width:100%;font-size:0.85em}\
                   .checks td,.checks th{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}\
                   tr.pass td:nth-child(2){color:#2ca02c;font-weight:bold}tr.fail td:nth-child(2){color:#d62728;\
                   font-weight:bold}ol.marks{font-size:0.85em;color:#444;columns:2}svg{display:block}";

/// A plotters error as ours.
fn draw_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotters: {e}")
}

fn hex(c: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

fn marks_list(marks: &[Mark]) -> String {
    let mut out = String::from("<ol class=\"marks\">");
    for m in marks {
        let _ = write!(out, "<li>{:.1} s: {}</li>", m.at_s, escape(&m.phase));
    }
    out.push_str("</ol>\n");
    out
}

/// The two pictures of a scenario's load: throughput (requests, failed, retried per second)
/// and latency (p50, p99), on one time axis, with the steps marked.
fn charts(name: &str, load: &LoadReport) -> Result<String> {
    let secs = &load.timeline;
    let end = secs.len().max(1) as f64;
    let mut out = String::new();
    let top = secs.iter().map(|s| s.requests.max(s.failed).max(s.retries)).max().unwrap_or(1).max(1) as f64 * 1.15;
    let context = |what: &str| format!("cannot draw the {what} chart of scenario {name}");
    out.push_str(
        &chart(name, "per second", end, top, load, |chart| {
            let line = |f: fn(&Second) -> u32| secs.iter().map(move |s| (s.t as f64 + 0.5, f(s) as f64));
            chart.draw_series(LineSeries::new(line(|s| s.requests), REQUESTS.stroke_width(2))).map_err(draw_err)?;
            chart.draw_series(LineSeries::new(line(|s| s.retries), RETRIES.stroke_width(1))).map_err(draw_err)?;
            chart
                .draw_series(
                    secs.iter().filter(|s| s.failed > 0).map(|s| {
                        Rectangle::new([(s.t as f64, 0.0), (s.t as f64 + 1.0, s.failed as f64)], FAILED.filled())
                    }),
                )
                .map_err(draw_err)?;
            Ok(())
        })
        .with_context(|| context("throughput"))?,
    );
    let top = secs.iter().map(|s| s.p99_ms).fold(1.0, f64::max) * 1.15;
    out.push_str(
        &chart(name, "latency ms", end, top, load, |chart| {
            // Seconds without a finished request have no latency: the lines break there.
            for run in secs.split(|s| s.requests == 0).filter(|r| !r.is_empty()) {
                let line = |f: fn(&Second) -> f64| run.iter().map(move |s| (s.t as f64 + 0.5, f(s)));
                chart.draw_series(LineSeries::new(line(|s| s.p50_ms), P50.stroke_width(2))).map_err(draw_err)?;
                chart.draw_series(LineSeries::new(line(|s| s.p99_ms), P99.stroke_width(2))).map_err(draw_err)?;
            }
            Ok(())
        })
        .with_context(|| context("latency"))?,
    );
    Ok(out)
}

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// The band a step's window gets, by the name the scenarios give their steps: `fault N: ...`
/// (a soak's fault), `drill: ...` (a drill, until its `healed`, `released` or `freed` step) and
/// `no quorum...` (a window the scenario takes the quorum away in).
fn band(phase: &str) -> Option<RGBColor> {
    if phase.starts_with("no quorum") {
        Some(NO_QUORUM_BAND)
    } else if phase.starts_with("fault ")
        || (phase.starts_with("drill: ")
            && ![": healed", ": released", ": freed", "after"].iter().any(|w| phase.contains(w)))
    {
        Some(FAULT_BAND)
    } else {
        None
    }
}

/// One SVG: axes, each fault's window as a band, the steps as numbered vertical lines, and
/// what `draw` adds.
fn chart(
    name: &str,
    y_desc: &str,
    end: f64,
    top: f64,
    load: &LoadReport,
    draw: impl FnOnce(&mut Chart<'_, '_>) -> Result<()>,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..end, 0.0..top)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the load started")
            .y_desc(y_desc)
            .light_line_style(RGBColor(0xee, 0xee, 0xee))
            .draw()
            .map_err(draw_err)?;
        for (i, m) in load.marks.iter().enumerate() {
            let Some(colour) = band(&m.phase) else { continue };
            let until = load.marks.get(i + 1).map_or(end, |next| next.at_s.min(end));
            let rect = Rectangle::new([(m.at_s.min(end), 0.0), (until, top)], colour.filled());
            chart.draw_series(std::iter::once(rect)).map_err(draw_err)?;
        }
        for (i, m) in load.marks.iter().enumerate() {
            let x = m.at_s.min(end);
            chart
                .draw_series(std::iter::once(PathElement::new(vec![(x, 0.0), (x, top)], MARK.stroke_width(1))))
                .map_err(draw_err)?;
            let label = Text::new(format!("{}", i + 1), (x, top * 0.97), ("sans-serif", 12).into_font().color(&MARK));
            chart.draw_series(std::iter::once(label)).map_err(draw_err)?;
        }
        draw(&mut chart)?;
        root.present().map_err(draw_err)?;
    }
    Ok(format!("<div class=\"chart\" data-scenario=\"{}\">{svg}</div>\n", escape(name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smoke::report::{Check, ScenarioReport};
    use crate::smoke::workload::timeline::{per_second, Sample};

    #[test]
    fn the_page_has_each_scenarios_pictures_steps_and_checks() {
        let samples: Vec<Sample> = (0..300)
            .map(|i| Sample { end_s: i as f64 / 10.0, latency_ms: 5.0 + i as f64, failed: i == 150, retries: 0 })
            .collect();
        let load = LoadReport {
            requests: 300,
            failed: 1,
            timeline: per_second(&samples),
            marks: vec![
                Mark { at_s: 4.0, phase: "fault 0: pause follower etcd2".into() },
                Mark { at_s: 8.0, phase: "quiet".into() },
                Mark { at_s: 12.5, phase: "no quorum <two down>".into() },
                Mark { at_s: 20.0, phase: "drill: etcd1 cut off".into() },
                Mark { at_s: 24.0, phase: "drill: etcd1 cut off: healed".into() },
            ],
            ..LoadReport::default()
        };
        let report = Report {
            image: "localhost/etcd:3.4.9".into(),
            engine: "run".into(),
            kube_play_adaptations: Vec::new(),
            forms: Vec::new(),
            etcd_version: "3.4.9".into(),
            cluster: "smoke".into(),
            scenarios: vec![ScenarioReport {
                name: "basic".into(),
                seconds: 30.0,
                load: Some(load),
                member_healthy_s: Vec::new(),
            }],
            checks: vec![Check {
                scenario: "basic".into(),
                name: "a & b".into(),
                outcome: Outcome::Fail,
                reason: "x < y".into(),
                seconds: 1.0,
            }],
            timings: Default::default(),
            passed: 0,
            failed: 1,
        };
        let page = render(&report).unwrap();
        assert!(page.starts_with("<!doctype html>") && page.ends_with("</html>\n"));
        assert_eq!(page.matches("<svg ").count(), 2, "throughput and latency");
        assert!(page.contains(&hex(REQUESTS).to_uppercase()) || page.contains(&hex(REQUESTS)), "the requests line");
        assert!(page.contains("<li>12.5 s: no quorum &lt;two down&gt;</li>"));
        // The windows shaded: the fault and the drill in one colour (twice: both charts), the
        // quorum's absence in another; quiet and healed steps not at all.
        let shaded = |c: RGBColor| page.matches(&format!("fill=\"{}\"", hex(c).to_uppercase())).count();
        assert_eq!((shaded(FAULT_BAND), shaded(NO_QUORUM_BAND)), (4, 2), "{page}");
        assert!(page.contains("<tr class=\"fail\"><td>a &amp; b</td><td>FAIL</td><td>1.00</td><td>x &lt; y</td></tr>"));
        assert!(page.contains("<h1 class=\"fail\">etcd smoke: 0 passed, 1 failed</h1>"));
        assert!(!page.contains("<script") && !page.contains("src=\"http"), "nothing fetched");
    }
}
