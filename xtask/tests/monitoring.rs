//! The Prometheus rules `render` writes: valid for Debian's promtool, every alert proven by
//! `promtool test rules` on hand-made series (xtask/tests/monitoring/etcd-rules.test.yml), and
//! every runbook an alert points to a heading of the README.

mod common;

use std::fs;
use std::process::Command;

use common::{ok, require, root, xtask_ok};

/// GitHub's anchor of a Markdown heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn rendered_rules_pass_promtool_and_every_alert_is_tested() {
    require("promtool");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("render");
    let pki = tmp.path().join("pki");
    xtask_ok(&[
        "render",
        "--cluster",
        "clusters/tutorial.toml",
        "--pki",
        pki.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let rules = out.join("monitoring/etcd-rules.yml");
    let text = fs::read_to_string(&rules).unwrap();

    let checked = ok(Command::new("promtool").arg("check").arg("rules").arg(&rules));
    let names = xtask::render::monitoring::alert_names();
    let alerts = text.matches("- alert: ").count();
    let records = text.matches("  record: ").count();
    assert!(checked.contains(&format!("SUCCESS: {} rules found", alerts + records)), "{checked}");
    println!("promtool check rules: {} alerts ({} names), {records} recording rules", alerts, names.len());

    let tests = root().join("xtask/tests/monitoring/etcd-rules.test.yml");
    let test_text = fs::read_to_string(&tests).unwrap();
    let dir = tmp.path().join("promtool");
    fs::create_dir_all(&dir).unwrap();
    fs::copy(&rules, dir.join("etcd-rules.yml")).unwrap();
    fs::copy(&tests, dir.join("etcd-rules.test.yml")).unwrap();
    let tested = ok(Command::new("promtool").args(["test", "rules", "etcd-rules.test.yml"]).current_dir(&dir));
    assert!(tested.contains("SUCCESS"), "{tested}");
    let cases = test_text.matches("alertname: ").count();
    println!("promtool test rules: {cases} alert checks, SUCCESS");

    // Each alert is seen firing in a test, and seen quiet.
    for name in &names {
        assert!(
            test_text.contains(&format!("alertname: {name}\n        exp_alerts:")),
            "no test of etcd-rules.test.yml expects {name} to fire: add one"
        );
        assert!(
            test_text.contains(&format!("alertname: {name}}}")),
            "no test of etcd-rules.test.yml expects {name} to stay quiet: add one"
        );
    }

    // Every runbook is a heading of the README, and the README explains every alert.
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    let anchors: Vec<String> =
        readme.lines().filter_map(|l| l.strip_prefix('#')).map(|h| slug(h.trim_start_matches('#'))).collect();
    for line in text.lines().filter_map(|l| l.trim().strip_prefix("runbook: README.md#")) {
        assert!(anchors.iter().any(|a| a == line), "runbook README.md#{line} is no heading of the README");
    }
    let section = readme.split("### What each alert means").nth(1).expect("README: ### What each alert means");
    let section = section.split("\n## ").next().unwrap();
    for name in &names {
        assert!(section.contains(&format!("`{name}`")), "README's \"What each alert means\" does not explain {name}");
    }
}
