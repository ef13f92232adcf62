//! `cargo xtask smoke` for real: three etcd containers with mutual TLS in podman. Each test runs
//! a cluster of its own (name and /24: a copy of `clusters/smoke.toml`): a run's containers,
//! volumes and network carry its cluster's name and label. The runs take turns ([`TURN`]): side
//! by side on two cores they compete with each other and the rest of the suite (the one
//! fresh-clone `cargo xtask ci` tried that way reached a load average of 77 and had a testssl.sh
//! scan cut short, though a run that a failing test left behind added to that). The full
//! run proves the real etcd v3.4.9 (built from source, `--source build`); the interrupted run
//! uses Debian's package, the offline fallback, so that it stays covered too. The kube engine's
//! run is in tests/k8s.rs: this binary is the suite's longest, and that one ends early.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::smoke_cluster::{cluster_of_its_own, labelled, nothing_left, xtask};

/// Held by each test that runs a cluster, so that they run one at a time.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn my_turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn smoke_passes_every_check_of_every_scenario_and_cleans_up() {
    let _turn = my_turn();
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("smoke");

    common::build_etcd_349(&[common::host_arch()]);
    a_forbidden_upgrade_is_refused_before_anything_starts();
    let out = xtask()
        .args([
            "smoke",
            "--source",
            "build",
            "--scenario",
            "all",
            "--scenario",
            "drills",
            "--out",
            out_dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "smoke failed:\n{stdout}\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["image"], "localhost/etcd:3.4.9", "{report:#}");
    assert_eq!(report["etcd_version"], "3.4.9");
    let checks = report["checks"].as_array().unwrap();
    for c in checks {
        assert_eq!(c["outcome"], "PASS", "{c:#}");
        assert!(!c["reason"].as_str().unwrap().is_empty());
    }
    // Every scenario ran, in `all`'s order, each with its checks.
    let per_scenario = |name: &str| checks.iter().filter(|c| c["scenario"] == name).count();
    for (name, count) in [("basic", 17), ("rotate-certs", 8), ("replace-member", 4), ("upgrade", 6), ("drills", 16)] {
        assert_eq!(per_scenario(name), count, "{name}: {report:#}");
    }
    let scenarios = report["scenarios"].as_array().unwrap();
    let names: Vec<&str> = scenarios.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["basic", "rotate-certs", "replace-member", "upgrade", "drills"]);
    // A real load ran through each: at least 50 requests/s, writes acknowledged and read back
    // (the check above), and not one failed request while certificates were rotated.
    for sc in scenarios {
        let load = &sc["load"];
        // The rate counts the time a quorum existed: basic takes two members down on purpose.
        let (mut secs, mut reqs) = (0.0, 0.0);
        for (phase, p) in load["phases"].as_object().unwrap() {
            if !phase.starts_with("no quorum") {
                secs += p["seconds"].as_f64().unwrap();
                reqs += p["requests"].as_f64().unwrap();
            }
        }
        assert!(reqs / secs >= 50.0, "{} requests/s with a quorum: {sc:#}", reqs / secs);
        assert!(load["reads"].as_u64().unwrap() > 0 && load["acknowledged_writes"].as_u64().unwrap() > 0, "{sc:#}");
        assert!(load["worst_latency_ms"].as_f64().unwrap() > 0.0, "{sc:#}");
    }
    assert_eq!(scenarios[1]["load"]["failed"], 0, "{:#}", scenarios[1]);
    assert_eq!(scenarios[1]["member_healthy_s"].as_array().unwrap().len(), 6, "two rolling restarts");
    // The refusals carry the server's own reason, not just the client's failure.
    let reason = |name: &str| {
        checks.iter().find(|c| c["name"].as_str().unwrap().contains(name)).unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(reason("plain http").contains("first record does not look like a TLS handshake"));
    // Every scenario's client history was checked: shared keys with concurrent writes, and
    // revisions compared in each client's order.
    let histories: Vec<_> =
        checks.iter().filter(|c| c["name"].as_str().unwrap().starts_with("client history")).collect();
    assert_eq!(histories.len(), 5, "one history check per scenario: {report:#}");
    for c in histories {
        let why = c["reason"].as_str().unwrap();
        assert!(why.starts_with("linearizable: ") && why.contains("revisions never went back"), "{c:#}");
        // One watcher per member, resuming on new streams, saw every acknowledged write in order.
        assert!(why.contains("3 watchers") && why.contains("in order, none twice"), "{c:#}");
    }
    // The alerts meant for each fault fired and resolved (each check fails otherwise).
    for alerts in ["alerts: a SIGKILLed member fires etcdMembersDown", "alerts: NOSPACE fires etcdNoSpace"] {
        let why = reason(alerts);
        assert!(why.contains("fired after the fault") && why.contains("resolved after the heal"), "{why}");
    }
    // report.html as a person sees it: headless Chromium's screenshot shows the pictures, and
    // the page it rendered names every scenario and step.
    common::report_page::looks_right(&out_dir.join("report.html"), &names, &tmp.path().join("shot.png"));
    // testssl.sh found nothing against the TLS policy on either port, and its findings are kept.
    let tls = reason("TLS policy");
    assert!(tls.contains("client port") && tls.contains("peer port") && tls.contains("GCM"), "{tls}");
    for port in ["client", "peer"] {
        assert!(out_dir.join(format!("basic/testssl-{port}.json")).is_file(), "testssl-{port}.json missing");
    }
    assert!(reason("no client certificate").contains("didn't provide a certificate"));
    assert!(reason("another CA").contains("unknown authority"));
    assert!(reason("peer port").contains("unknown authority"));
    // The upgrade ends on 3.5 for every member and for the cluster; the renewal is served.
    let upgraded = reason("after the upgrade");
    assert_eq!(upgraded.matches("3.5.16").count(), 3, "{upgraded}");
    assert!(upgraded.contains("cluster version 3.5.0"), "{upgraded}");
    assert!(reason("old CA is refused").contains("unknown authority"));
    let renew = reason("renew:");
    assert!(renew.contains("new serials served on both ports"), "{renew}");
    // Prometheus's TLS probes saw the renewed certificates' later dates; no expiry alert.
    assert!(renew.contains("the TLS probes saw the new dates") && renew.contains("quiet"), "{renew}");
    assert!(reason("replace a lost member").contains("promoted"));
    // The drills: a new leader on the majority side, the cut-off old leader refusing
    // linearizable reads, the NOSPACE alarm and its runbook.
    let cut = reason("the leader cut off");
    assert!(cut.contains("new leader") && cut.contains("refuses linearizable reads"), "{cut}");
    assert!(reason("the leader SIGSTOPped").contains("new leader"));
    assert!(reason("a follower cut off").contains("writes to the majority succeed"));
    let nospace = reason("NOSPACE: quota filled");
    assert!(nospace.contains("database space exceeded") && nospace.contains("writes accepted again"), "{nospace}");
    // Compaction and defragmentation under the load: the policy of the cluster file reached
    // etcd, and every member's database shrank with no request failed and no alert.
    let defrag = reason("compaction and defragmentation");
    for words in [
        "started with the cluster file's policy (periodic, keeping 1h)",
        "defragmented one at a time",
        "0 failed",
        "no alert pending or firing",
    ] {
        assert!(defrag.contains(words), "{words:?} missing: {defrag}");
    }
    let timing = |t: &str| report["timings"][t].as_f64().unwrap_or_else(|| panic!("no timing {t}"));
    assert!(timing("defrag_db_mib_before") >= timing("defrag_db_mib_after") + 8.0, "{:#}", report["timings"]);
    let disk = reason("full disk");
    assert!(disk.contains("the other two members accept writes") && disk.contains("hashes at revision"), "{disk}");
    // The slow disk: etcd's own histogram saw slow fsyncs, and the alerts fired and resolved live.
    let slow = reason("slow disk: a follower");
    assert!(slow.contains("took over 0.512 s") && slow.contains("hashes at revision"), "{slow}");
    let fired = reason("alerts: a slow disk");
    assert!(fired.contains("fired after the fault: etcdHighFsyncDurations") && fired.contains("resolved"), "{fired}");
    for t in [
        "start_to_healthy",
        "heal_after_restart",
        "sigkill_first_read",
        "sigkill_healthy",
        "replace_member_healthy",
        "defrag_s",
        "upgrade_etcd3_healthy",
        "upgrade_total",
        "total",
    ] {
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
    nothing_left("smoke");
}

#[test]
fn an_interrupted_run_removes_all_it_created() {
    let _turn = my_turn();
    let tmp = tempfile::tempdir().unwrap();
    let cluster = cluster_of_its_own(tmp.path(), "smoke-int", 75);
    let out_dir = tmp.path().join("smoke");
    let log = tmp.path().join("smoke-int.log");
    // Interrupted once its containers are up: it still removes all it created.
    let mut run = Background(
        xtask()
            .args(["smoke", "--source", "debian", "--out", out_dir.to_str().unwrap()])
            .arg("--cluster")
            .arg(&cluster)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    // Its image may wait for other tests' builds first (the image lock) on a busy machine.
    let deadline = Instant::now() + Duration::from_secs(600);
    while labelled(&["ps", "-a"], "smoke-int").lines().count() < 3 {
        let ended = run.0.try_wait().unwrap();
        let why = || std::fs::read_to_string(&log).unwrap_or_default();
        assert!(ended.is_none(), "the run ended ({ended:?}) before its containers were up:\n{}", why());
        assert!(Instant::now() < deadline, "the smoke containers never appeared:\n{}", why());
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = run.0.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let status = run.0.wait().unwrap();
    assert!(!status.success(), "an interrupted run must fail");
    nothing_left("smoke-int");
}

/// A smoke run in the background. Dropped while it runs (the test failed), it is interrupted as
/// Ctrl-C would (it removes what it created), and killed if it has not ended a minute later: a
/// failing test leaves no run behind.
struct Background(std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        let _ = Command::new("kill").args(["-INT", &self.0.id().to_string()]).status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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

/// A forbidden upgrade target is refused before any container, volume or network is created.
fn a_forbidden_upgrade_is_refused_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    for (target, words) in
        [("3.5.1", &["3.5.1", "13766"][..]), ("3.6.0", &["3.6.0", "minor"][..]), ("3.4.8", &["3.4.8", "downgrade"][..])]
    {
        let out = xtask()
            .args(["smoke", "--scenario", "upgrade", "--source", "build", "--upgrade-to", target])
            .arg("--out")
            .arg(tmp.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "upgrade to {target} was not refused");
        let err = String::from_utf8_lossy(&out.stderr);
        for w in words {
            assert!(err.contains(w), "refusal of {target} lacks {w:?}:\n{err}");
        }
        assert!(!err.contains("smoke: scenario"), "a cluster was started before the refusal:\n{err}");
        nothing_left("smoke");
    }
}
