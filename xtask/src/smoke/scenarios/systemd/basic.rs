//! The checks of `smoke --engine systemd` on three booted machines: the install as INSTALL.md
//! says, health and replication, the mutual-TLS refusals with etcd's reason from the journal,
//! etcd's identity read from `/proc` in the machine, the unit's `systemd-analyze security`
//! exposure as the machine computes it, compaction and each machine's defragmentation service in
//! turn, machines powered off (one: writes go on; two: refused) and booted again, etcd SIGKILLed
//! (systemd restarts it), a machine rebooted (etcd enabled, back by itself), and the backup
//! timer's service run and its snapshot restored.
//! In: three prepared machines of one form. Out: the basic checks of the form.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::acquire::Acquired;

use super::LOAD_BOUNDS;
use crate::render::host::defrag_calendar;
use crate::smoke::engine::hosts::{Form, Hosts, HEALTHY_TIMEOUT};
use crate::smoke::engine::machines::Machine;
use crate::smoke::engine::Members;
use crate::smoke::scenarios::checks::{leaders, REFUSALS};
use crate::smoke::scenarios::run::Run;

/// Worst `systemd-analyze security` exposure accepted for etcd.service (lower is better; the
/// tutorial's unit rates 9.2 UNSAFE).
const MAX_EXPOSURE: f64 = 2.0;

/// The check of compaction and defragmentation by the rendered units, by name.
const DEFRAG_TIMERS: &str = "compaction and defragmentation under load: the cluster file's policy in etcd's journal, \
                             history compacted, each machine's etcd-defrag.service in turn (its timer at its own time)";

impl Run<Hosts> {
    /// Boots the machines, installs etcd on each as its INSTALL.md says, and waits for 3/3
    /// healthy; false (with the failure recorded) when the cluster did not form.
    pub(super) fn form_cluster(&mut self) -> Result<bool> {
        let t = Instant::now();
        let booted = self.boot(&[0, 1, 2]);
        let ok = booted.is_ok();
        let r = booted.map(|s| {
            let s: Vec<String> = s.iter().map(|s| format!("{s:.1} s")).collect();
            format!("three Debian 12 machines booted under systemd-nspawn ({})", s.join(", "))
        });
        self.timings.insert(format!("{}_boot", self.form.as_str()), t.elapsed().as_secs_f64());
        self.run_check("machines boot on the run's own bridge", |_| r);
        if !ok {
            return Ok(false);
        }
        let what = match self.form {
            Form::Portable => "INSTALL.md: portable.tar unpacked, image in /var/lib/portables, portablectl attach --enable --profile=etcd, started",
            _ => "INSTALL.md: binaries installed, sysusers, tmpfiles, systemctl enable --now",
        };
        if !self.run_check(what, |h| h.install_all().map(|_| "done on all three machines, side by side".into())) {
            return Ok(false);
        }
        let healthy = self.wait_healthy(&[0, 1, 2], HEALTHY_TIMEOUT);
        let ok = healthy.is_ok();
        let since_boot = t.elapsed().as_secs_f64();
        self.run_check("cluster forms: 3/3 healthy over mutual TLS", |_| {
            healthy.map(|_| format!("{since_boot:.1} s from booting the machines"))
        });
        self.timings.insert(format!("{}_boot_to_healthy", self.form.as_str()), since_boot);
        Ok(ok)
    }

    pub(super) fn basic(&mut self) -> Result<()> {
        if !self.form_cluster()? {
            self.record_logs();
            return Ok(());
        }
        self.start_load(LOAD_BOUNDS)?;
        self.run_check("one leader, three started members", |h| h.check_members());
        self.run_check("write via node 1 reads back linearizably via node 3", |h| h.check_replication());
        for (name, case) in REFUSALS {
            self.interrupt.check()?;
            self.run_check(name, |h| h.check_refused(case));
        }
        self.run_check("etcd runs as a non-root user with no capabilities (/proc in each machine)", |h| {
            h.check_identity()
        });
        self.run_check("systemd-analyze security etcd.service in each machine", |h| h.check_exposure());
        if let Some(m) = self.spec.monitoring.clone() {
            self.run_check("metrics on each machine's address: mutual TLS only", |h| h.check_metrics(&m.scrape_client));
        }
        self.interrupt.check()?;
        self.run_check(DEFRAG_TIMERS, |h| h.check_defrag_timers());
        self.interrupt.check()?;
        self.run_check("one machine off: writes go on; two off: refused; booted again: healed", |h| h.check_power());
        self.interrupt.check()?;
        self.run_check("etcd SIGKILLed: systemd restarts it", |h| h.check_sigkill());
        self.interrupt.check()?;
        self.run_check("a machine rebooted: etcd back by itself", |h| h.check_reboot());
        self.interrupt.check()?;
        self.run_check("backup timer's service: snapshot taken, restored, data read back", |h| h.check_backup());
        self.finish_load(0, None);
        if self.failed() {
            self.record_logs();
        }
        Ok(())
    }

    fn check_members(&self) -> Result<String> {
        let status: serde_json::Value =
            serde_json::from_str(&self.etcdctl_ok(&[0, 1, 2], &["endpoint", "status", "-w", "json"])?)
                .context("endpoint status printed no JSON")?;
        let list = status.as_array().context("endpoint status is not a list")?;
        let leaders = leaders(list);
        if leaders != 1 || list.len() != 3 {
            bail!("{} members answered, {leaders} say they lead; expected 3 and exactly one", list.len());
        }
        let members: serde_json::Value =
            serde_json::from_str(&self.etcdctl_ok(&[0], &["member", "list", "-w", "json"])?)
                .context("member list printed no JSON")?;
        let names: Vec<&str> = members["members"]
            .as_array()
            .context("member list has no members")?
            .iter()
            .filter_map(|m| m["name"].as_str())
            .filter(|n| !n.is_empty())
            .collect();
        if names.len() != 3 {
            bail!("started members {names:?}; expected three");
        }
        let version = list[0]["Status"]["version"].as_str().unwrap_or_default().to_string();
        if version != self.version {
            bail!("the members run etcd {version}, expected {}", self.version);
        }
        Ok(format!("members {} (etcd {version}), one leader", names.join(", ")))
    }

    /// The description's `[monitoring]`: each machine serves `/metrics` on its address to the
    /// scrape client's certificate, and to nothing else (no certificate, plain http).
    fn check_metrics(&self, scrape_client: &str) -> Result<String> {
        let dir = self.pki.client_dir(scrape_client);
        let file = |f: &str| dir.join(f).display().to_string();
        let (mut seen, mut refusal) = (Vec::new(), String::new());
        for m in &self.machines {
            let url = format!("https://{}:{}/metrics", m.ip, crate::render::config::METRICS_PORT);
            let ca = vec!["--cacert".to_string(), file("ca.crt")];
            let pair = vec!["--cert".to_string(), file("client.crt"), "--key".to_string(), file("client.key")];
            let out = self.curl(&[ca.clone(), pair, vec![url.clone()]].concat())?;
            let body = String::from_utf8_lossy(&out.stdout);
            let Some(line) = body.lines().find(|l| l.starts_with("etcd_server_has_leader ")) else {
                bail!(
                    "{url} with {scrape_client}'s certificate: no etcd_server_has_leader ({})",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            };
            seen.push(format!("{}: {line}", m.name));
            let bare = self.curl(&[ca, vec![url.clone()]].concat())?;
            if bare.status.success() || String::from_utf8_lossy(&bare.stdout).contains("etcd_server") {
                bail!("{url} answered a client without a certificate");
            }
            refusal = String::from_utf8_lossy(&bare.stderr).trim().to_string();
            let plain = format!("http://{}:{}/metrics", m.ip, crate::render::config::METRICS_PORT);
            let out = self.curl(std::slice::from_ref(&plain))?;
            if String::from_utf8_lossy(&out.stdout).contains("etcd_server") {
                bail!("{plain} served metrics over plain http");
            }
        }
        Ok(format!(
            "with {scrape_client}'s certificate: {}; without a certificate: {refusal}; plain http: no metrics",
            seen.join(", ")
        ))
    }

    fn check_identity(&self) -> Result<String> {
        let data = match self.form {
            Form::Portable => "/var/lib/private/etcd",
            _ => "/var/lib/etcd",
        };
        let mut seen = Vec::new();
        for m in &self.machines {
            let out = m.sh_ok(&format!(
                "pid=$(systemctl show -P MainPID etcd.service); grep -E '^(Uid|Gid|CapEff|CapPrm|CapAmb):' \
                 /proc/$pid/status; echo \"Data: $(stat -c '%a %u' {data})\"; echo \"User: $(id -nu $(awk '/^Uid:/ \
                 {{print $2}}' /proc/$pid/status) 2>/dev/null)\""
            ))?;
            let field = |name: &str| -> Vec<String> {
                out.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.split_whitespace().map(str::to_string).collect())
                    .unwrap_or_default()
            };
            let uids = field("Uid:");
            if uids.is_empty() || uids.iter().any(|u| u == "0") {
                bail!("{}: etcd runs with uids {uids:?}: {}", m.name, out.trim());
            }
            for cap in ["CapEff:", "CapPrm:", "CapAmb:"] {
                let set = field(cap);
                if !set.first().is_some_and(|c| c.trim_start_matches('0').is_empty()) {
                    bail!("{}: {cap} {set:?}, expected none", m.name);
                }
            }
            let data_line = field("Data:");
            if data_line.first().map(String::as_str) != Some("700") || data_line.get(1) != uids.first() {
                bail!("{}: data dir {data} is {data_line:?} (mode, owner uid), expected 700 owned by {uids:?}", m.name);
            }
            let user = field("User:").first().cloned().unwrap_or_else(|| "?".into());
            let user = if user == "?" { "a dynamic user".to_string() } else { user };
            seen.push(format!("{} uid {} ({user})", m.name, uids[0]));
        }
        Ok(format!("{}; CapEff=CapPrm=CapAmb=0; {data} 0700 owned by etcd's uid", seen.join(", ")))
    }

    fn check_exposure(&self) -> Result<String> {
        let mut seen = Vec::new();
        for m in &self.machines {
            let out = m.sh("systemd-analyze security --no-pager etcd.service")?;
            let text = String::from_utf8_lossy(&out.stdout);
            let line =
                text.lines().find(|l| l.contains("Overall exposure level for etcd.service")).with_context(|| {
                    format!("{}: systemd-analyze security printed no overall level: {}", m.name, text.trim())
                })?;
            let rest = line.split("etcd.service:").nth(1).unwrap_or_default().trim();
            let level: f64 = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{}: cannot read the level in {line:?}", m.name))?;
            if level > MAX_EXPOSURE {
                bail!("{}: exposure {rest}, above {MAX_EXPOSURE}", m.name);
            }
            seen.push(format!("{} {}", m.name, rest.split_whitespace().take(2).collect::<Vec<_>>().join(" ")));
        }
        Ok(format!("{} (at most {MAX_EXPOSURE} accepted)", seen.join(", ")))
    }

    /// Each machine's etcd-defrag.timer is active at the machine's own time of day (the
    /// description's order, [`defrag_calendar`]), then [`Run::compact_and_defragment`] with the
    /// machines' own `etcd-defrag.service` started on one machine after the other, as their
    /// timers would.
    fn check_defrag_timers(&mut self) -> Result<String> {
        let mut times = Vec::new();
        for (i, m) in self.machines.iter().enumerate() {
            let timer = m.sh_ok(
                "systemctl is-active etcd-defrag.timer; systemctl show -P Triggers etcd-defrag.timer; \
                 systemctl show -P TimersCalendar etcd-defrag.timer",
            )?;
            let want = defrag_calendar(i);
            let lines: Vec<&str> = timer.lines().collect();
            if lines.first() != Some(&"active")
                || lines.get(1) != Some(&"etcd-defrag.service")
                || !timer.contains(&want)
            {
                bail!(
                    "{}: etcd-defrag.timer should be active, trigger etcd-defrag.service at {want}: {timer:?}",
                    m.name
                );
            }
            times.push(format!("{} {}", m.name, &want[6..11]));
        }
        let prefix = format!("{}_", self.form.as_str());
        let done = self.compact_and_defragment(&prefix, |h, i| {
            let m = &h.machines[i];
            // The service's result, and what etcdctl said in this run of it: the unit's journal
            // since the second it started (not by invocation ID: journald can miss the cgroup of
            // a process that has already exited, and its lines then carry no invocation ID, as
            // a fresh-clone suite run saw), waiting for journald on a loaded machine.
            let said = m
                .sh_ok(
                    "t=$(date '+%Y-%m-%d %H:%M:%S') && systemctl start etcd-defrag.service && \
                     systemctl show -P Result etcd-defrag.service && for i in $(seq 150); do \
                     journalctl --no-pager -o cat -u etcd-defrag.service --since \"$t\" | grep -m1 defragmenting \
                     && break; sleep 0.1; done",
                )
                .map(|said| said.split_whitespace().collect::<Vec<_>>().join(" "))
                .map_err(|e| {
                    anyhow::anyhow!("{e:#}\n  journalctl -u etcd-defrag:\n{}", m.journal("etcd-defrag.service", 10))
                })?;
            if !said.contains("Finished defragmenting") {
                anyhow::bail!(
                    "etcd-defrag.service ended {said:?}, and its journal has no \"Finished defragmenting\" line \
                     within 15 s:\n{}",
                    m.journal("etcd-defrag.service", 10)
                );
            }
            Ok(said)
        })?;
        Ok(format!("timers active at {}; {done}", times.join(", ")))
    }

    /// Machine 3 powered off, then machine 2 ([`Run::lose_and_regain_quorum`]), both booted
    /// again: etcd is enabled and comes back by itself.
    fn check_power(&mut self) -> Result<String> {
        let story = self.lose_and_regain_quorum(2, 1)?;
        self.timings.insert(format!("{}_heal_after_boot", self.form.as_str()), story.heal_s);
        let booted = format!("{} and {} booted", self.machines[1].name, self.machines[2].name);
        self.member_healthy.push((booted, story.heal_s));
        Ok(story.notes.join("; "))
    }

    fn check_sigkill(&mut self) -> Result<String> {
        self.phase("etcd SIGKILLed on node 1");
        let m = &self.machines[0];
        let restarts = |m: &Machine| -> Result<u32> {
            Ok(m.sh_ok("systemctl show -P NRestarts etcd.service")?.trim().parse().unwrap_or(0))
        };
        let before = restarts(m)?;
        let pid = m.sh_ok("systemctl show -P MainPID etcd.service")?.trim().to_string();
        let t = Instant::now();
        m.sh_ok("systemctl kill --signal=SIGKILL etcd.service")?;
        let serving = self.first_read(0, t, Duration::from_secs(60))?.0;
        let m = &self.machines[0];
        let after = restarts(m)?;
        let new_pid = m.sh_ok("systemctl show -P MainPID etcd.service")?.trim().to_string();
        if after <= before || new_pid == pid {
            bail!("etcd answered but systemd shows no restart (NRestarts {before} -> {after}, pid {pid} -> {new_pid})");
        }
        self.wait_healthy(&[0, 1, 2], HEALTHY_TIMEOUT)?;
        let healthy = t.elapsed().as_secs_f64();
        self.phase("healed");
        self.timings.insert(format!("{}_sigkill_to_serving", self.form.as_str()), serving);
        self.member_healthy.push((format!("{} after SIGKILL", self.machines[0].name), healthy));
        Ok(format!(
            "pid {pid} killed; systemd restarted it as pid {new_pid} (Restart=on-failure, RestartSec=5s); serving \
             linearizable reads after {serving:.1} s, 3/3 healthy after {healthy:.1} s"
        ))
    }

    fn check_reboot(&mut self) -> Result<String> {
        self.phase("node 2 rebooted");
        // Wanted by multi-user.target: enabled. (After `portablectl attach --enable` systemd 252's
        // `systemctl is-enabled` says "disabled": the links are in /etc/systemd/system.attached.)
        let wanted = self.machines[1].sh_ok("systemctl show -P WantedBy etcd.service")?.trim().to_string();
        if !wanted.split_whitespace().any(|w| w == "multi-user.target") {
            bail!("etcd.service is not enabled (WantedBy={wanted:?}): it would not start at boot");
        }
        let enabled = format!("wanted by {wanted}");
        let t = Instant::now();
        let booted = self.machines[1].reboot()?;
        let serving = self.first_read(1, t, Duration::from_secs(90))?.0;
        self.wait_healthy(&[0, 1, 2], HEALTHY_TIMEOUT)?;
        let healthy = t.elapsed().as_secs_f64();
        self.phase("healed");
        let active = self.machines[1].sh_ok("systemctl is-active etcd.service || true")?.trim().to_string();
        self.timings.insert(format!("{}_reboot_to_serving", self.form.as_str()), serving);
        self.member_healthy.push((format!("{} after reboot", self.machines[1].name), healthy));
        Ok(format!(
            "etcd.service {enabled}; systemctl reboot: machine up again {booted:.1} s, etcd {active} and serving after \
             {serving:.1} s, 3/3 healthy after {healthy:.1} s"
        ))
    }

    fn check_backup(&mut self) -> Result<String> {
        let m = &self.machines[0];
        let timer = m.sh_ok("systemctl is-active etcd-backup.timer; systemctl show -P Triggers etcd-backup.timer")?;
        let mut lines = timer.lines();
        let (active, triggers) =
            (lines.next().unwrap_or_default(), lines.next().unwrap_or_default().trim().to_string());
        if active != "active" || triggers.is_empty() {
            bail!("etcd-backup.timer is {active:?} and triggers {triggers:?}");
        }
        // What the timer does when it elapses: start the unit it triggers, which takes and checks
        // a snapshot and, once checked, starts the ship step (OnSuccess=).
        if triggers != "etcd-backup.service" {
            bail!("etcd-backup.timer triggers {triggers}, not etcd-backup.service");
        }
        let run = self.backup_now(0)?;
        let shipped = run
            .journal
            .lines()
            .find(|l| l.starts_with("etcd-backup-ship: /"))
            .with_context(|| format!("the ship step named no snapshot:\n{}", run.journal))?
            .to_string();
        let m = &self.machines[0];
        let snapshot = m
            .sh_ok(
                "ls -1 /var/backups/etcd/snapshot-*.db /var/lib/private/etcd-backup/snapshot-*.db 2>/dev/null \
                 | awk -F/ '{print $NF, $0}' | sort | tail -n 1 | cut -d' ' -f2",
            )?
            .trim()
            .to_string();
        if snapshot.is_empty() || !shipped.contains(&snapshot) {
            bail!(
                "{triggers} ran, the ship step said {shipped:?}, and the newest snapshot is {snapshot:?}:\n{}",
                m.journal(&triggers, 10)
            );
        }
        let dir = self.out.join("backup");
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let snap = dir.join("snapshot.db");
        fs::copy(m.root().join(snapshot.trim_start_matches('/')), &snap)
            .with_context(|| format!("cannot copy {snapshot} out of {}", m.name))?;
        let size = fs::metadata(&snap).map(|m| m.len()).unwrap_or(0);
        let value = crate::smoke::engine::restored::restore_and_read(
            &Acquired::open(&self.acquired_dir)?,
            &snap,
            &dir.join("data"),
            "smoke/before-faults",
        )?;
        if value != "kept" {
            bail!("the restored member returned {value:?} for smoke/before-faults");
        }
        Ok(format!(
            "timer active, triggers {triggers}, which took and checked a snapshot and started the ship step \
             ({shipped}); {snapshot} ({size} bytes) restored into a fresh one-member etcd on loopback, \
             smoke/before-faults read back"
        ))
    }
}
