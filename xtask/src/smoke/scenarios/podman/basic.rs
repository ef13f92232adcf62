//! The basic scenario's checks: health, linearizable reads, the JSON gateway, refused
//! connections (with the server's own reason), non-root and no capabilities, compaction and
//! defragmentation one member at a time, faults with a SIGKILL restart, and backup and restore. Each returns what it saw, or why it failed.
//! In: a fresh podman cluster. Out: its checks in the run.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::smoke::engine::cluster::Cluster;
use crate::smoke::engine::Members;
use crate::smoke::local::stdout_or_stderr;
use crate::smoke::scenarios::checks::{leaders, REFUSALS};
use crate::smoke::scenarios::maintenance::COMPACTION;
use crate::smoke::scenarios::run::Run;

impl Run<Cluster> {
    pub(super) fn basic(&mut self) -> Result<()> {
        if !self.start_cluster()? {
            return Ok(());
        }
        self.run_check("one leader, three started members, 3/3 healthy (etcdctl --cluster)", |c| c.check_members());
        self.run_check("write via node 1 reads back linearizably via node 3", |c| c.check_replication());
        self.run_check("JSON gateway /v3/kv/range answers with the client certificate", |c| c.check_gateway());
        for (name, case) in REFUSALS {
            self.interrupt.check()?;
            self.run_check(name, |c| c.check_refused(case));
        }
        self.run_check("TLS policy: testssl.sh on node 1's client and peer ports", |c| c.check_tls_scan());
        self.run_check("etcd runs as the etcd uid with no capabilities; data dir 0700", |c| c.check_identity());
        self.interrupt.check()?;
        self.run_check(COMPACTION, |c| {
            // As each host's etcd-defrag.service does: etcdctl defrag against its member alone.
            c.compact_and_defragment("", |c, i| {
                Ok(c.etcdctl_ok(&[i], &["defrag", "--command-timeout=60s"])?.trim().into())
            })
        });
        self.run_check("faults: one down writes, two down no quorum, heal, SIGKILL restart", |c| c.check_faults());
        self.run_check("backup: snapshot save, restore into a fresh node, data read back", |c| c.check_backup());
        Ok(())
    }

    pub(super) fn check_members(&self) -> Result<String> {
        let (out, err) = self.exec_etcdctl_full(0, &["endpoint", "health", "--cluster"])?;
        let health = out + &err;
        let healthy = health.lines().filter(|l| l.contains("is healthy")).count();
        if healthy != 3 {
            bail!("{healthy}/3 healthy: {}", health.trim());
        }
        let status: serde_json::Value =
            serde_json::from_str(&self.exec_etcdctl(0, &["endpoint", "status", "--cluster", "-w", "json"])?)
                .context("endpoint status printed no JSON")?;
        let list = status.as_array().context("endpoint status is not a list")?;
        let leaders = leaders(list);
        if leaders != 1 {
            bail!("{leaders} members say they lead; expected exactly one");
        }
        let members: serde_json::Value =
            serde_json::from_str(&self.exec_etcdctl(0, &["member", "list", "-w", "json"])?)
                .context("member list printed no JSON")?;
        let members = members["members"].as_array().context("member list has no members")?;
        let started = members.iter().filter(|m| m["name"].as_str().is_some_and(|n| !n.is_empty())).count();
        if members.len() != 3 || started != 3 {
            bail!("{} members, {started} started; expected 3 and 3", members.len());
        }
        Ok(format!("3/3 healthy, 1 leader, {started} started members"))
    }

    pub(super) fn check_gateway(&self) -> Result<String> {
        let url = format!("https://127.0.0.1:{}/v3/kv/range", self.nodes[0].client_port);
        // base64("smoke/linearizable")
        let key = "c21va2UvbGluZWFyaXphYmxl";
        let mut args = self.client_tls_args();
        args.extend(["-X".into(), "POST".into(), "-d".into(), format!("{{\"key\":\"{key}\"}}"), url.clone()]);
        let out = self.curl(&args)?;
        let body = String::from_utf8_lossy(&out.stdout);
        // base64("from-node-1")
        if !out.status.success() || !body.contains("ZnJvbS1ub2RlLTE=") {
            bail!("{url}: {} {}", body.trim(), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(format!("POST {url} returned the value"))
    }

    /// Debian's testssl.sh scans node 1's published client and peer ports side by side; its JSON
    /// is kept beside the report, and any finding against the TLS policy fails the check.
    pub(super) fn check_tls_scan(&self) -> Result<String> {
        let n = &self.nodes[0];
        let peer_ca = self.pki.node_dir(&n.spec.name).join("peer-ca.crt");
        let jobs = [("client", n.client_port, self.client.join("ca.crt")), ("peer", n.peer_port, peer_ca)];
        let results = crate::util::each_in_thread(&jobs, "a testssl.sh scan", |_, (port_name, port, ca)| {
            let json = self.out.join(format!("testssl-{port_name}.json"));
            crate::tls_check::scan(&format!("127.0.0.1:{port}"), Some(ca), Some(&json))
        });
        let mut notes = Vec::new();
        let mut violations = Vec::new();
        for ((port_name, _, _), r) in jobs.iter().zip(results) {
            let scan = r.with_context(|| format!("the {port_name} port"))?;
            violations.extend(scan.violations.iter().map(|v| format!("{port_name} port: {v}")));
            notes.push(format!("{port_name} port: {}", scan.summary()));
        }
        if !violations.is_empty() {
            bail!("{} (testssl-*.json beside the report)", violations.join("; "));
        }
        Ok(notes.join(" | "))
    }

    pub(super) fn check_identity(&self) -> Result<String> {
        let mut seen = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let status = self.process_status(i)?;
            let field = |name: &str| {
                status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.split_whitespace().collect::<Vec<_>>())
            };
            let uids = field("Uid:").context("no Uid line")?;
            let cap_eff = field("CapEff:").context("no CapEff line")?;
            let cap_prm = field("CapPrm:").context("no CapPrm line")?;
            if uids.iter().any(|u| *u != self.uid.to_string()) {
                bail!("{}: etcd runs with uids {:?}, expected {}", n.container, uids, self.uid);
            }
            let no_caps = |set: &Vec<&str>| set.first().is_some_and(|c| c.trim_start_matches('0').is_empty());
            if !no_caps(&cap_eff) || !no_caps(&cap_prm) {
                bail!("{}: capabilities effective {:?} permitted {:?}, expected none", n.container, cap_eff, cap_prm);
            }
            let mount = self.data_dir(i)?;
            let meta =
                fs::metadata(&mount).with_context(|| format!("cannot stat the data volume {}", mount.display()))?;
            let mode = meta.permissions().mode() & 0o7777;
            if mode != 0o700 || meta.uid() != self.uid {
                bail!(
                    "{}: data dir mode {mode:04o} owner {}, expected 0700 owner {}",
                    n.container,
                    meta.uid(),
                    self.uid
                );
            }
            seen.push(n.spec.name.clone());
        }
        Ok(format!("uid {} (all ids), CapEff=0, CapPrm=0, data dir 0700 on {}", self.uid, seen.join(", ")))
    }

    /// The quorum lost and regained (node 3 down, then node 2: [`Run::lose_and_regain_quorum`]),
    /// then node 1 SIGKILLed and restarted ([`Run::sigkill_recovery`]).
    pub(super) fn check_faults(&mut self) -> Result<String> {
        let story = self.lose_and_regain_quorum(2, 1)?;
        let mut notes = story.notes;
        self.timings.insert("heal_after_restart".into(), story.heal_s);
        if story.heal_s > 3.0 {
            // The whole story beside the report, and etcd's own account in the reason.
            self.record_logs();
            notes.push(format!(
                "[slow: node 2's log since its restart: {}; node 3's: {}]",
                self.restart_log(1, story.restarted_unix),
                self.restart_log(2, story.restarted_unix)
            ));
        }
        self.phase("node 1 SIGKILLed");
        self.kill(0)?;
        let recovery = self.sigkill_recovery()?;
        notes.push(recovery);
        Ok(notes.join("; "))
    }

    /// Restarts the SIGKILLed node 1 and times what a client sees: `podman start`, the first
    /// linearizable read node 1 answers (the client-visible recovery), and 3/3 healthy. When
    /// recovery is slow, etcd's own account of the restart (node 1's log) goes into the reason.
    pub(super) fn sigkill_recovery(&mut self) -> Result<String> {
        let since =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let t = Instant::now();
        self.start(0)?;
        let started = t.elapsed().as_secs_f64();
        let (answered, attempts) = self.first_read(0, t, Duration::from_secs(60)).context("after SIGKILL")?;
        self.wait_healthy(&[0, 1, 2], Duration::from_secs(60))
            .context("the cluster was not healthy after node 1's SIGKILL restart")?;
        let healthy = t.elapsed().as_secs_f64();
        self.timings.insert("sigkill_podman_start".into(), started);
        self.timings.insert("sigkill_first_read".into(), answered);
        self.timings.insert("sigkill_healthy".into(), healthy);
        let mut note = format!(
            "SIGKILLed node 1: podman start {started:.2} s, first linearizable read with its data {answered:.2} s \
             ({attempts} tries), 3/3 healthy {healthy:.2} s"
        );
        if answered > 3.0 {
            note.push_str(&format!(" [node 1's log since the restart: {}]", self.restart_log(0, since)));
        }
        Ok(note)
    }

    pub(super) fn check_backup(&mut self) -> Result<String> {
        let backup = self.out.join("backup");
        fs::create_dir_all(&backup).with_context(|| format!("cannot create {}", backup.display()))?;
        let snap = backup.join("snapshot.db");
        self.etcdctl_ok(&[0], &["snapshot", "save", "--command-timeout=60s", &snap.to_string_lossy()])?;
        // Restored into a fresh single node beside the cluster.
        let port = self.run_restored(&snap, &backup.join("data"))?;
        let (value, _) = self.poll(
            "the restored node never answered",
            Duration::from_secs(30),
            Duration::from_millis(200),
            |run| Ok(stdout_or_stderr(run.etcdctl_at(&[port], &["get", "--print-value-only", "smoke/before-faults"])?)),
        )?;
        if value != "kept" {
            bail!("the restored node returned {value:?} for smoke/before-faults");
        }
        let size = fs::metadata(&snap).map(|m| m.len()).unwrap_or(0);
        Ok(format!("snapshot of {size} bytes restored into a fresh node; data read back"))
    }
}
