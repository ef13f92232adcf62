//! `cargo xtask smoke --engine systemd` for real: three Debian 12 machines booted with
//! systemd-nspawn, in a network namespace of the run's own, forming the mutual-TLS cluster of
//! the real etcd v3.4.9 (built from source) in both forms: the portable image attached with
//! portablectl and the host bundle installed as INSTALL.md says, through every scenario the
//! engine runs (`all`, and `disaster`: both ways back after a lost quorum, with backups shipped by
//! the rendered units). Every check of the report must pass, with the figures the closing notes quote; nothing may be left behind: no namespace, no
//! mount, no cgroup, no nspawn process; not after a failure of input either, nor after Ctrl-C.
//! Cgroups are looked for in every hierarchy the run makes them in: systemd's named v1 one and
//! the unified one (hybrid or v2-only host); a host with neither fails the test.
//!
//! One test function: two runs at once would compete for the same loop devices and cache.
//! Without root, systemd-nspawn, mmdebstrap or loop devices the test fails with the reason
//! (unless `cargo xtask ci --allow-omission nspawn` allowed leaving it out).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn xtask() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.env("XTASK_NO_OFFICIAL", "1");
    cmd
}

/// The cgroup hierarchies a run makes the machines' cgroups in (`smoke::nspawn_host::Cgroups`):
/// systemd's named v1 hierarchy (hybrid hosts) and the unified one (`/sys/fs/cgroup/unified` on a
/// hybrid host, `/sys/fs/cgroup` itself on a v2-only one), as this host mounts them. None
/// mounted fails the test: the check would look nowhere. A unified hierarchy in use but not
/// mounted (the run then mounts it beside its machines) is mounted here too, on a directory of
/// the test's own, unmounted when the returned guard drops.
fn cgroup_hierarchies() -> (Vec<(&'static str, std::path::PathBuf)>, Option<OwnCgroup2>) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("/proc/self/mountinfo");
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else { continue };
        let point = std::path::PathBuf::from(pre.split_whitespace().nth(4).unwrap_or_default());
        let mut post = post.split_whitespace();
        let (fstype, options) = (post.next().unwrap_or_default(), post.nth(1).unwrap_or_default());
        if fstype == "cgroup" && options.split(',').any(|o| o == "name=systemd") {
            found.push(("v1 name=systemd", point));
        } else if fstype == "cgroup2" && !found.iter().any(|(h, _)| *h == "unified") {
            found.push(("unified", point));
        }
    }
    let mut own = None;
    let in_unified =
        std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default().lines().any(|l| l.starts_with("0::"));
    if in_unified && !found.iter().any(|(h, _)| *h == "unified") {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount").args(["-t", "cgroup2", "none"]).arg(dir.path()).status().unwrap();
        assert!(status.success(), "cannot mount the unified cgroup hierarchy to look for leftovers in it");
        found.push(("unified", dir.path().to_path_buf()));
        own = Some(OwnCgroup2(dir));
    }
    assert!(
        !found.is_empty(),
        "no cgroup hierarchy of systemd's is mounted here (neither a cgroup v1 name=systemd nor a cgroup2 \
         in /proc/self/mountinfo): the machines' cgroups cannot be checked for leftovers"
    );
    (found, own)
}

/// The unified cgroup hierarchy mounted by [`cgroup_hierarchies`]; unmounted on drop.
struct OwnCgroup2(tempfile::TempDir);

impl Drop for OwnCgroup2 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// What a run may leave on the host, by kind; all empty when it cleaned up.
fn leftovers(out: &Path, before_netns: &str) -> Vec<String> {
    let mut left = Vec::new();
    let netns =
        String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).to_string();
    for line in netns.lines().filter(|l| l.starts_with("xtask-sd-") && !before_netns.contains(*l)) {
        left.push(format!("network namespace {line}"));
    }
    for mount in common::mount_points_under(out) {
        left.push(format!("mount {mount}"));
    }
    let out = out.display().to_string();
    let (hierarchies, _own_mount) = cgroup_hierarchies();
    for (hierarchy, root) in hierarchies {
        let rd = std::fs::read_dir(&root)
            .unwrap_or_else(|e| panic!("cannot read the {hierarchy} cgroup hierarchy at {}: {e}", root.display()));
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("xtask-machine-xtask-sd-") {
                left.push(format!("cgroup {name} ({hierarchy}, {})", root.display()));
            }
        }
    }
    let ps = String::from_utf8_lossy(&Command::new("ps").args(["-eo", "args"]).output().unwrap().stdout).to_string();
    for line in ps.lines().filter(|l| l.starts_with("systemd-nspawn") && l.contains(&out)) {
        left.push(format!("process {line}"));
    }
    left
}

#[test]
fn three_systemd_machines_form_the_cluster_in_both_forms_and_clean_up() {
    if !xtask::util::is_root() {
        common::omission("nspawn", "not root: booting machines with systemd-nspawn needs root");
        return;
    }
    for (tool, package) in [("systemd-nspawn", "systemd-container"), ("mmdebstrap", "mmdebstrap"), ("ip", "iproute2")] {
        if !xtask::util::on_path(tool) {
            common::omission(
                "nspawn",
                &format!("{tool} is not installed (Debian: {package}; `cargo xtask ci` installs it)"),
            );
            return;
        }
    }
    let before_netns =
        String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).to_string();
    let tmp = tempfile::tempdir().unwrap();

    // Bad input first: addresses that cannot share the run's bridge are refused by name, before
    // anything is made.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"bad\"\nclients = [\"etcdctl\"]\n[[nodes]]\nname = \"a\"\nips = [\"10.89.77.11\"]\n\
         [[nodes]]\nname = \"b\"\nips = [\"10.89.78.12\"]\n[[nodes]]\nname = \"c\"\nips = [\"10.89.77.13\"]\n",
    )
    .unwrap();
    let bad_out = tmp.path().join("bad");
    let out = xtask()
        .args(["smoke", "--engine", "systemd", "--cluster", bad.to_str().unwrap(), "--out", bad_out.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a cluster across two /24s was accepted");
    assert!(err.contains("node b") && err.contains("field ips") && err.contains("10.89.78.12"), "{err}");
    assert!(!bad_out.exists(), "a refused run left {}", bad_out.display());

    // The real run: etcd 3.4.9, both forms.
    common::build_etcd_349(&[common::host_arch()]);
    let dir = tmp.path().join("smoke");
    let t = Instant::now();
    let out = xtask()
        .args([
            "smoke",
            "--engine",
            "systemd",
            "--source",
            "build",
            "--scenario",
            "all",
            "--scenario",
            "disaster",
            "--out",
            dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("smoke --engine systemd: {:.1} s\n{stdout}", t.elapsed().as_secs_f64());
    assert!(out.status.success(), "smoke --engine systemd failed:\n{stdout}\n{stderr}");
    assert_eq!(leftovers(&dir, &before_netns), Vec::<String>::new());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["engine"], "systemd");
    assert_eq!(report["etcd_version"], "3.4.9", "{report:#}");
    assert_eq!(report["forms"], serde_json::json!(["portable", "host"]));
    let checks = report["checks"].as_array().unwrap();
    for c in checks {
        assert_eq!(c["outcome"], "PASS", "{c:#}");
    }
    for form in ["portable", "host"] {
        let scenario = format!("{form}/basic");
        let mine: Vec<&serde_json::Value> = checks.iter().filter(|c| c["scenario"] == scenario.as_str()).collect();
        assert_eq!(mine.len(), 19, "{form}: {report:#}");
        let reason = |name: &str| -> String {
            mine.iter()
                .find(|c| c["name"].as_str().unwrap().contains(name))
                .unwrap_or_else(|| panic!("{form}: no check {name:?}"))["reason"]
                .as_str()
                .unwrap()
                .to_string()
        };
        // etcd's own reasons, from the machine's journal.
        assert!(reason("plain http").contains("first record does not look like a TLS handshake"));
        assert!(reason("no client certificate").contains("didn't provide a certificate"));
        assert!(reason("another CA").contains("unknown authority"));
        assert!(reason("peer port").contains("unknown authority"));
        assert!(reason("one leader").contains("etcd 3.4.9"));
        assert!(reason("SIGKILL").contains("systemd restarted it"));
        assert!(reason("rebooted").contains("wanted by multi-user.target"));
        assert!(reason("backup").contains("read back"));
        // Each machine's own defragmentation service, its timer at the machine's time, under
        // the load: the database of every member smaller, not one request failed.
        let defrag = reason("etcd-defrag.service in turn");
        for words in [
            "timers active at etcd1 05:10, etcd2 05:30, etcd3 05:50",
            "said \"success Finished defragmenting",
            "0 failed",
        ] {
            assert!(defrag.contains(words), "{form}: {words:?} missing: {defrag}");
        }
        let mib = |key: &str| report["timings"][format!("{form}_defrag_db_mib_{key}")].as_f64().unwrap();
        assert!(mib("before") >= mib("after") + 8.0, "{form}: {:#}", report["timings"]);
        let history = reason("client history");
        assert!(history.starts_with("linearizable: ") && history.contains("3 watchers"), "{form}: {history}");
        let exposure = reason("systemd-analyze security");
        assert_eq!(exposure.matches(" OK").count(), 3, "{exposure}");
        for key in ["boot_to_healthy", "sigkill_to_serving", "reboot_to_serving", "heal_after_boot", "total"] {
            assert!(report["timings"][format!("{form}_{key}")].as_f64().unwrap() > 0.0, "{form}_{key}");
        }
        let sc = report["scenarios"].as_array().unwrap().iter().find(|s| s["name"] == scenario.as_str()).unwrap();
        let load = &sc["load"];
        assert!(load["reads"].as_u64().unwrap() > 0 && load["acknowledged_writes"].as_u64().unwrap() > 0, "{sc:#}");
        assert_eq!(sc["member_healthy_s"].as_array().unwrap().len(), 3, "{sc:#}");
    }
    assert!(checks.iter().any(|c| c["reason"].as_str().unwrap().contains("a dynamic user")), "portable: DynamicUser");
    // The renewal, as INSTALL.md says, under the load: not one failed request.
    for (form, how) in [("portable", "restarted one at a time"), ("host", "no restart")] {
        let scenario = format!("{form}/rotate-certs");
        let mine: Vec<&serde_json::Value> = checks.iter().filter(|c| c["scenario"] == scenario.as_str()).collect();
        assert_eq!(mine.len(), 3, "{form}: {report:#}");
        let reason = mine[0]["reason"].as_str().unwrap();
        assert!(reason.contains(how) && reason.contains("new serials served"), "{reason}");
        let sc = report["scenarios"].as_array().unwrap().iter().find(|s| s["name"] == scenario.as_str()).unwrap();
        assert_eq!(sc["load"]["failed"], 0, "{sc:#}");
        assert!(sc["load"]["requests"].as_u64().unwrap() > 0, "{sc:#}");
        assert_eq!(sc["member_healthy_s"].as_array().unwrap().len(), 3, "{sc:#}");
    }
    // A lost machine replaced through a learner, and the rolling upgrade to 3.5.16 (portable:
    // reattach, the running image read from RootImage), each under the load.
    for form in ["portable", "host"] {
        let reason = |scenario: &str, name: &str| -> String {
            let scenario = format!("{form}/{scenario}");
            let c = checks
                .iter()
                .find(|c| c["scenario"] == scenario.as_str() && c["name"].as_str().unwrap().contains(name))
                .unwrap_or_else(|| panic!("no check {name:?} in {scenario}: {report:#}"));
            c["reason"].as_str().unwrap().to_string()
        };
        assert!(reason("replace-member", "replace a lost machine").contains("served from its own store"));
        let upgraded = reason("upgrade", "rolling upgrade 3.4.9 -> 3.5.16");
        assert!(upgraded.matches(" s").count() >= 3, "{upgraded}");
        if form == "portable" {
            assert_eq!(upgraded.matches("etcd_3.5.16.raw").count(), 3, "{upgraded}");
        }
        assert!(reason("upgrade", "after the upgrade").contains("cluster version 3.5.0"));
        for scenario in ["rotate-certs", "replace-member", "upgrade"] {
            assert!(reason(scenario, "client history").starts_with("linearizable: "), "{form}/{scenario}");
        }
        // Both ways back after a lost quorum, by INSTALL.md's blocks, with the backups the
        // rendered units took and shipped to the run's backup host.
        let survivor = reason("disaster", "survivor path");
        assert!(survivor.contains("no acknowledged write lost") && survivor.contains("hashkv equal"), "{survivor}");
        let snapshot = reason("disaster", "snapshot path");
        assert!(
            snapshot.contains("restored there by INSTALL.md's block") && snapshot.contains("hashkv equal"),
            "{snapshot}"
        );
        // Every member's units took, checked and shipped one (read on the backup host), and the
        // newest was restored.
        assert!(snapshot.matches("snapshot-").count() >= 4 && snapshot.contains("shipped in"), "{snapshot}");
        assert!(reason("disaster", "client history").starts_with("epoch \"before\": linearizable"), "{form}");
        for path in ["survivor", "snapshot"] {
            let rto = report["timings"][format!("disaster_{form}_{path}_rto_s")].as_f64().unwrap();
            assert!(rto > 0.0 && rto <= 60.0, "{form} {path}: RTO {rto}");
        }
    }
    let names: Vec<&str> =
        report["scenarios"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "portable/basic",
            "portable/rotate-certs",
            "portable/replace-member",
            "portable/disaster",
            "portable/upgrade",
            "host/basic",
            "host/rotate-certs",
            "host/replace-member",
            "host/disaster",
            "host/upgrade"
        ]
    );

    // Ctrl-C in the middle of a run: the machines are powered off and everything is removed.
    let ctrl_c = tmp.path().join("interrupted");
    let mut child = xtask()
        .args([
            "smoke",
            "--engine",
            "systemd",
            "--form",
            "host",
            "--source",
            "build",
            "--out",
            ctrl_c.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // Read to the end (a closed pipe would make the run's own messages fail), telling when the
    // cluster has formed.
    let (formed_tx, formed_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen = String::new();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("PASS host/basic: cluster forms") {
                let _ = formed_tx.send(());
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        seen
    });
    if formed_rx.recv_timeout(Duration::from_secs(240)).is_err() {
        let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
        let _ = child.wait();
        panic!("the interrupted run never formed its cluster:\n{}", reader.join().unwrap());
    }
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "the interrupted run did not end within 120 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    let seen = reader.join().unwrap();
    println!("interrupted run ended in {:.1} s", t.elapsed().as_secs_f64());
    assert!(seen.contains("interrupted"), "{seen}");
    assert!(!status.success(), "an interrupted run must not succeed");
    assert_eq!(leftovers(&ctrl_c, &before_netns), Vec::<String>::new());
}
