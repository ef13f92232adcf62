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

    // The scrape configuration (clusters/tutorial.toml has [monitoring]) is valid for promtool,
    // with the certificate it names beside it, and each member serves what it scrapes.
    let monitoring = out.join("monitoring");
    let config = ok(Command::new("promtool").args(["check", "config", "prometheus.yml"]).current_dir(&monitoring));
    assert!(config.contains("SUCCESS: prometheus.yml is valid"), "{config}");
    // So is the one `k8s` writes for the StatefulSet (pods by DNS name, their TLS metrics port).
    let k8s = tmp.path().join("k8s");
    xtask_ok(&[
        "k8s",
        "--cluster",
        "clusters/tutorial.toml",
        "--pki",
        pki.to_str().unwrap(),
        "--out",
        k8s.to_str().unwrap(),
    ]);
    let sts = k8s.join("statefulset/monitoring");
    let config = ok(Command::new("promtool").args(["check", "config", "prometheus.yml"]).current_dir(&sts));
    assert!(
        config.contains("SUCCESS: prometheus.yml is valid") && config.contains("SUCCESS: 1 rule files found"),
        "{config}"
    );
    for file in ["ca.crt", "client.crt", "client.key"] {
        let meta = fs::metadata(monitoring.join("etcd-tutorial").join(file)).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
        assert_eq!(mode, if file == "client.key" { 0o600 } else { 0o644 }, "{file}");
    }
    let subject = ok(Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(monitoring.join("etcd-tutorial/client.crt")));
    assert!(subject.contains("CN = prometheus") || subject.contains("CN=prometheus"), "{subject}");
    let scrape = fs::read_to_string(monitoring.join("prometheus.yml")).unwrap();
    let conf = fs::read_to_string(out.join("master1/etc/etcd/etcd.conf")).unwrap();
    assert!(conf.contains("ETCD_LISTEN_METRICS_URLS=http://127.0.0.1:2381,https://10.0.1.204:2381"), "{conf}");
    assert!(scrape.contains("- 10.0.1.204:2381") && scrape.contains("- 10.0.1.204:2379"), "{scrape}");

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
