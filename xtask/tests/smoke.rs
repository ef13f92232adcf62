//! `cargo xtask smoke` for real: three etcd containers with mutual TLS in podman. One test
//! function, because two smoke runs on one host would share names and the network.

use std::path::Path;
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

    let out = xtask().args(["smoke", "--source", "distro", "--out", out_dir.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "smoke failed:\n{stdout}\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap()).unwrap();
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
    for t in ["start_to_healthy", "heal_after_restart", "total"] {
        assert!(report["timings"][t].as_f64().unwrap() > 0.0, "{t}");
    }
    assert!(
        stderr.contains("--runtime runc")
            || stderr.contains("--ulimit")
            || !Path::new("/sys/fs/cgroup/unified").exists()
    );
    assert!(stdout.contains("start to 3/3 healthy"), "{stdout}");
    nothing_left();

    // Interrupted once its containers are up: it still removes all it created.
    let mut child = xtask()
        .args(["smoke", "--source", "distro", "--out", out_dir.to_str().unwrap()])
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
