//! `cargo xtask smoke` for real: three etcd containers with mutual TLS in podman. One test
//! function, because two smoke runs on one host would share names and the network. The full run
//! proves the real etcd v3.4.9 (built from source, `--source build`); the interrupted run uses
//! Debian's package, the offline fallback, so that it stays covered too.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn xtask() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.env("XTASK_NO_OFFICIAL", "1");
    cmd
}

fn labelled(kind: &[&str]) -> String {
    let mut args: Vec<&str> = kind.to_vec();
    args.extend(["-q", "--filter", "label=xtask.smoke=1"]);
    let out = Command::new("podman").args(&args).output().expect("podman runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn nothing_left() {
    assert_eq!(labelled(&["ps", "-a"]), "", "containers left behind");
    assert_eq!(labelled(&["volume", "ls"]), "", "volumes left behind");
    assert_eq!(labelled(&["network", "ls"]), "", "networks left behind");
}

#[test]
fn smoke_passes_every_check_and_cleans_up_even_when_interrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("smoke");

    common::build_etcd_349(&[common::host_arch()]);
    let out = xtask().args(["smoke", "--source", "build", "--out", out_dir.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "smoke failed:\n{stdout}\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["image"], "localhost/etcd:3.4.9", "{report:#}");
    assert_eq!(report["etcd_version"], "3.4.9");
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 11, "{report:#}");
    for c in checks {
        assert_eq!(c["outcome"], "PASS", "{c:#}");
        assert!(!c["reason"].as_str().unwrap().is_empty());
    }
    // The refusals carry the server's own reason, not just the client's failure.
    let reason = |name: &str| {
        checks.iter().find(|c| c["name"].as_str().unwrap().contains(name)).unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(reason("plain http").contains("first record does not look like a TLS handshake"));
    assert!(reason("no client certificate").contains("didn't provide a certificate"));
    assert!(reason("another CA").contains("unknown authority"));
    assert!(reason("peer port").contains("unknown authority"));
    for t in ["start_to_healthy", "heal_after_restart", "sigkill_first_read", "sigkill_healthy", "total"] {
        assert!(report["timings"][t].as_f64().unwrap() > 0.0, "{t}");
    }
    // Every adaptation this host needs is visible in the log (and none is invented): the same
    // decision, taken here independently of the run, must appear there word for word.
    let adapted: std::collections::BTreeSet<String> =
        xtask::image::podman::run_args().unwrap().chunks(2).map(|pair| pair.join(" ")).collect();
    let logged: std::collections::BTreeSet<String> = stderr
        .lines()
        .filter(|l| l.starts_with("note: podman:"))
        .filter_map(|l| l.rsplit_once("; adding ").map(|(_, arg)| arg.to_string()))
        .collect();
    assert_eq!(logged, adapted, "the host adaptation in the log:\n{stderr}");
    assert!(stdout.contains("start to 3/3 healthy"), "{stdout}");
    nothing_left();

    // Interrupted once its containers are up: it still removes all it created.
    let mut child = xtask()
        .args(["smoke", "--source", "debian", "--out", out_dir.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while labelled(&["ps", "-a"]).lines().count() < 3 {
        assert!(Instant::now() < deadline, "the smoke containers never appeared");
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(!status.success(), "an interrupted run must fail");
    nothing_left();
}

#[test]
fn a_description_without_three_nodes_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("two.toml");
    std::fs::write(&file, "name='two'\nclients=['etcdctl']\n[[nodes]]\nname='a'\nips=['10.89.78.11']\n[[nodes]]\nname='b'\nips=['10.89.78.12']\n").unwrap();
    let out = xtask().args(["smoke", "--cluster", file.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("two.toml") && err.contains("nodes") && err.contains("three"), "{err}");
}
