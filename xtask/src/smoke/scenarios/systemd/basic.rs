//! The checks of `smoke --engine systemd` on three booted machines: the install as INSTALL.md
//! says, health and replication, the mutual-TLS refusals with etcd's reason from the journal,
//! etcd's identity read from `/proc` in the machine, the unit's `systemd-analyze security`
//! exposure as the machine computes it, machines powered off (one: writes go on; two: refused)
//! and booted again, etcd SIGKILLed (systemd restarts it), a machine rebooted (etcd enabled, back
//! by itself), and the backup timer's service run and its snapshot restored.
//! In: three prepared machines of one form. Out: the basic checks of the form.

use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::acquire::Acquired;

use crate::smoke::engine::hosts::{curl_in, Form, Hosts, HEALTHY_TIMEOUT};
use crate::smoke::engine::machines::Machine;
use crate::smoke::local::{free_port, stdout_or_stderr, KillOnDrop};
use crate::smoke::report::Outcome;
use crate::smoke::scenarios::checks::{server_reason, Refusal, REFUSALS};
use crate::smoke::scenarios::run::Run;
use crate::smoke::scenarios::NO_QUORUM;
use crate::smoke::workload::load::{self, Identity, Load};

/// Where the load's keys go on the machines, and its bounds (every scenario of a form runs on
/// the same machines, one load after another).
const LOAD_PREFIX: &str = "load/";
const LOAD_BOUNDS: load::Bounds = load::Bounds { max_requests: 200_000, max_duration: Duration::from_secs(1200) };

/// Worst `systemd-analyze security` exposure accepted for etcd.service (lower is better; the
/// tutorial's unit rates 9.2 UNSAFE).
const MAX_EXPOSURE: f64 = 2.0;

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
        self.start_load()?;
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
        self.run_check("one machine off: writes go on; two off: refused; booted again: healed", |h| h.check_power());
        self.interrupt.check()?;
        self.run_check("etcd SIGKILLed: systemd restarts it", |h| h.check_sigkill());
        self.interrupt.check()?;
        self.run_check("a machine rebooted: etcd back by itself", |h| h.check_reboot());
        self.interrupt.check()?;
        self.run_check("backup timer's service: snapshot taken, restored, data read back", |h| h.check_backup());
        self.finish_load(&[NO_QUORUM]);
        if self.checks.iter().any(|c| c.outcome == Outcome::Fail) {
            self.record_logs();
        }
        Ok(())
    }

    fn check_members(&self) -> Result<String> {
        let status: serde_json::Value =
            serde_json::from_str(&self.etcdctl_ok(&[0, 1, 2], &["endpoint", "status", "-w", "json"])?)
                .context("endpoint status printed no JSON")?;
        let list = status.as_array().context("endpoint status is not a list")?;
        let leaders = list
            .iter()
            .filter(|s| {
                s["Status"]["leader"].as_u64().is_some() && s["Status"]["leader"] == s["Status"]["header"]["member_id"]
            })
            .count();
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

    fn check_replication(&self) -> Result<String> {
        self.etcdctl_ok(&[0], &["put", "smoke/linearizable", "from-node-1"])?;
        let got = self.etcdctl_ok(&[2], &["get", "--print-value-only", "--consistency=l", "smoke/linearizable"])?;
        if got.trim() != "from-node-1" {
            bail!("node 3 returned {:?}", got.trim());
        }
        Ok("put via node 1, linearizable get via node 3 returned it".into())
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
            let out = curl_in(&self.netns, &[ca.clone(), pair, vec![url.clone()]].concat())?;
            let body = String::from_utf8_lossy(&out.stdout);
            let Some(line) = body.lines().find(|l| l.starts_with("etcd_server_has_leader ")) else {
                bail!(
                    "{url} with {scrape_client}'s certificate: no etcd_server_has_leader ({})",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            };
            seen.push(format!("{}: {line}", m.name));
            let bare = curl_in(&self.netns, &[ca, vec![url.clone()]].concat())?;
            if bare.status.success() || String::from_utf8_lossy(&bare.stdout).contains("etcd_server") {
                bail!("{url} answered a client without a certificate");
            }
            refusal = String::from_utf8_lossy(&bare.stderr).trim().to_string();
            let plain = format!("http://{}:{}/metrics", m.ip, crate::render::config::METRICS_PORT);
            let out = curl_in(&self.netns, std::slice::from_ref(&plain))?;
            if String::from_utf8_lossy(&out.stdout).contains("etcd_server") {
                bail!("{plain} served metrics over plain http");
            }
        }
        Ok(format!(
            "with {scrape_client}'s certificate: {}; without a certificate: {refusal}; plain http: no metrics",
            seen.join(", ")
        ))
    }

    /// etcd's own lines about refused connections in machine 0's journal.
    fn rejections(&self) -> Result<Vec<String>> {
        let out = self.machines[0].sh_ok("journalctl --no-pager -o cat -u etcd.service")?;
        Ok(out
            .lines()
            .filter(|l| l.contains("rejected connection") || l.contains("TLS handshake error"))
            .map(str::to_string)
            .collect())
    }

    fn check_refused(&self, case: Refusal) -> Result<String> {
        let before = self.rejections()?.len();
        let client = self.pki.client_dir("etcdctl");
        let rogue = self.rogue.client_dir("etcdctl");
        let file = |dir: &std::path::Path, f: &str| dir.join(f).display().to_string();
        let ip = self.machines[0].ip;
        let ca = vec!["--cacert".to_string(), file(&client, "ca.crt")];
        let pair = |dir: &std::path::Path| {
            vec!["--cert".to_string(), file(dir, "client.crt"), "--key".to_string(), file(dir, "client.key")]
        };
        let (mut args, url) = match case {
            Refusal::NoCert => (ca, format!("https://{ip}:2379/v3/kv/range")),
            Refusal::OtherCa => ([ca, pair(&rogue)].concat(), format!("https://{ip}:2379/v3/kv/range")),
            Refusal::PlainHttp => (vec![], format!("http://{ip}:2379/v3/kv/range")),
            Refusal::ClientOnPeer => {
                let peer_ca = file(&self.pki.node_dir(&self.spec.nodes[0].name), "peer-ca.crt");
                ([vec!["--cacert".to_string(), peer_ca], pair(&client)].concat(), format!("https://{ip}:2380/members"))
            }
        };
        args.extend(["-X".into(), "POST".into(), "-d".into(), "{\"key\":\"YQ==\"}".into(), url.clone()]);
        let out = curl_in(&self.netns, &args)?;
        let body = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() && (body.contains("\"header\"") || body.contains("\"id\"")) {
            bail!("{url} answered: {}", body.trim());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lines = self.rejections()?;
            if let Some(line) = lines.get(before..).and_then(|l| l.last()) {
                return Ok(format!("{url}: etcd's journal: {}", server_reason(line)));
            }
            if Instant::now() > deadline {
                bail!(
                    "the request failed ({}) but etcd's journal shows no rejection",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
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

    /// A write through node 1, retried for up to `secs` (a new leader may be elected first).
    fn put_soon(&self, key: &str, value: &str, secs: u64) -> Result<f64> {
        let t = Instant::now();
        let deadline = t + Duration::from_secs(secs);
        loop {
            let out = self.etcdctl(&[0], &["put", "--command-timeout=2s", key, value])?;
            if out.status.success() {
                return Ok(t.elapsed().as_secs_f64());
            }
            if Instant::now() > deadline {
                bail!("put {key} via node 1 failed for {secs} s: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn check_power(&mut self) -> Result<String> {
        let mut notes = Vec::new();
        self.etcdctl_ok(&[0], &["put", "smoke/before-faults", "kept"])?;
        self.phase("one machine powered off");
        self.machines[2].poweroff()?;
        let s = self.put_soon("smoke/one-down", "ok", 15).context("a write with one machine off must succeed")?;
        notes.push(format!("{} off: write ok after {s:.1} s", self.machines[2].name));
        self.phase(NO_QUORUM);
        self.machines[1].poweroff()?;
        let t = Instant::now();
        let out = self.etcdctl(&[0], &["put", "--command-timeout=3s", "smoke/two-down", "unknown"])?;
        if out.status.success() {
            bail!("a write with two of three machines off succeeded; quorum is not enforced");
        }
        notes.push(format!(
            "{} off too: write refused after {:.1} s ({}; outcome unknown)",
            self.machines[1].name,
            t.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default().trim()
        ));
        let t = Instant::now();
        self.boot(&[1, 2])?;
        let booted = t.elapsed().as_secs_f64();
        self.wait_healthy(&[0, 1, 2], HEALTHY_TIMEOUT).context("the cluster did not heal after the boot")?;
        self.phase("healed");
        let heal = t.elapsed().as_secs_f64();
        self.timings.insert(format!("{}_heal_after_boot", self.form.as_str()), heal);
        self.member_healthy.push((format!("{} and {} booted", self.machines[1].name, self.machines[2].name), heal));
        notes.push(format!("both booted in {booted:.1} s, etcd started by systemd, 3/3 healthy {heal:.1} s"));
        for key in ["smoke/before-faults", "smoke/one-down"] {
            let got = self.etcdctl_ok(&[2], &["get", "--print-value-only", "--consistency=l", key])?;
            if got.trim().is_empty() {
                bail!("after healing, {key} is missing on {}", self.machines[2].name);
            }
        }
        notes.push("earlier writes read back via the machine that was off".into());
        Ok(notes.join("; "))
    }

    /// Polls a linearizable read through node `i` until it answers; the seconds it took.
    fn first_read(&self, i: usize, t: Instant, timeout: Duration) -> Result<f64> {
        let read = ["get", "--print-value-only", "--command-timeout=1s", "--consistency=l", "smoke/before-faults"];
        let deadline = t + timeout;
        loop {
            self.interrupt.check()?;
            match stdout_or_stderr(self.etcdctl(&[i], &read)?) {
                Ok(v) if v == "kept" => return Ok(t.elapsed().as_secs_f64()),
                Ok(v) => bail!("{} serves {v:?} for smoke/before-faults", self.machines[i].name),
                Err(why) if Instant::now() > deadline => {
                    bail!("{} answered no read within {} s: {why}", self.machines[i].name, timeout.as_secs())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
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
        let serving = self.first_read(0, t, Duration::from_secs(60))?;
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
        let serving = self.first_read(1, t, Duration::from_secs(90))?;
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
        // What the timer does when it elapses: start the unit it triggers.
        m.sh_ok(&format!("systemctl start {triggers}"))?;
        let snapshot = m
            .sh_ok("ls -1t /var/backups/etcd/snapshot-*.db /var/lib/private/etcd-backup/snapshot.db 2>/dev/null | head -n1")?
            .trim()
            .to_string();
        if snapshot.is_empty() {
            bail!("{triggers} ran but left no snapshot:\n{}", m.journal(&triggers, 10));
        }
        let dir = self.out.join("backup");
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let snap = dir.join("snapshot.db");
        fs::copy(m.root().join(snapshot.trim_start_matches('/')), &snap)
            .with_context(|| format!("cannot copy {snapshot} out of {}", m.name))?;
        let size = fs::metadata(&snap).map(|m| m.len()).unwrap_or(0);
        let value =
            restore_and_read(&Acquired::open(&self.acquired_dir)?, &snap, &dir.join("data"), "smoke/before-faults")?;
        if value != "kept" {
            bail!("the restored member returned {value:?} for smoke/before-faults");
        }
        Ok(format!(
            "timer active, triggers {triggers}; {snapshot} ({size} bytes) restored into a fresh one-member etcd on \
             loopback, smoke/before-faults read back"
        ))
    }
}

/// `etcdctl snapshot restore` of `snap` into `data`, an etcd started on it on loopback (plain
/// http, ports of its own), and `key` read from it; the etcd is stopped again.
fn restore_and_read(acquired: &Acquired, snap: &std::path::Path, data: &std::path::Path, key: &str) -> Result<String> {
    let (client, peer) = (free_port()?, free_port()?);
    let peer_url = format!("http://127.0.0.1:{peer}");
    let client_url = format!("http://127.0.0.1:{client}");
    let cluster = format!("restored={peer_url}");
    let out = acquired
        .command("etcdctl")?
        .env_clear()
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(snap)
        .arg(format!("--data-dir={}", data.display()))
        .args([
            "--name=restored",
            &format!("--initial-cluster={cluster}"),
            &format!("--initial-advertise-peer-urls={peer_url}"),
        ])
        .output()
        .context("cannot run etcdctl snapshot restore")?;
    if !out.status.success() {
        bail!("snapshot restore failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let log = fs::File::create(data.with_extension("log"))?;
    let child = acquired
        .command("etcd")?
        .env_clear()
        .args(["--name=restored", &format!("--data-dir={}", data.display())])
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster={cluster}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start etcd on the restored data")?;
    let _guard = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = acquired
            .command("etcdctl")?
            .env_clear()
            .env("ETCDCTL_API", "3")
            .args([&format!("--endpoints={client_url}"), "--command-timeout=2s", "get", "--print-value-only", key])
            .output()
            .context("cannot run etcdctl")?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        if Instant::now() > deadline {
            bail!("the restored etcd did not answer within 30 s: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The client load and the checks' bookkeeping on the machines.
impl Run<Hosts> {
    /// Starts the client load against the three members, from inside the namespace.
    pub(crate) fn start_load(&mut self) -> Result<()> {
        let endpoints = (0..self.machines.len()).map(|i| self.endpoint(i)).collect();
        let identity = Identity::in_dir(&self.pki.client_dir("etcdctl"));
        self.load = Some(Load::start(endpoints, identity, LOAD_PREFIX, LOAD_BOUNDS, Some(self.netns.path()))?);
        Ok(())
    }

    /// Stops the load, reads every acknowledged write back (inside the namespace) and records it.
    /// Requests may fail only in the phases `allowed`.
    pub(crate) fn finish_load(&mut self, allowed: &[&str]) {
        let Some(l) = self.load.take() else { return };
        let report = l.finish();
        let t = Instant::now();
        let endpoint = self.endpoint(0);
        let identity = Identity::in_dir(&self.pki.client_dir("etcdctl"));
        let r = self
            .netns
            .run_inside(|| load::verify_acknowledged(&report, &endpoint, &identity, LOAD_PREFIX))
            .and_then(|checked| {
                let unexpected: Vec<String> = report
                    .failed_by_phase
                    .iter()
                    .filter(|(p, _)| !allowed.contains(&"*") && !allowed.contains(&p.as_str()))
                    .map(|(p, n)| format!("{n} during {p:?}"))
                    .collect();
                let summary = format!(
                    "{} requests ({} writes, {} linearizable reads) in {:.1} s = {:.0}/s; {} failed, {} retried; worst \
                     latency {:.0} ms; all {checked} acknowledged writes read back",
                    report.requests,
                    report.writes,
                    report.reads,
                    report.seconds,
                    report.rate_per_s,
                    report.failed,
                    report.retries,
                    report.worst_latency_ms
                );
                if !unexpected.is_empty() {
                    let first =
                        report.failures.first().map(|f| format!("{}: {}", f.what, f.reason)).unwrap_or_default();
                    bail!("{summary}; failed requests {} (first: {first})", unexpected.join(", "));
                }
                if report.requests == 0 || report.reads == 0 {
                    bail!("{summary}: the load made no progress");
                }
                Ok(summary)
            });
        self.record("client load: every acknowledged write is there", t, r);
        let t = Instant::now();
        let file = self.out.join(format!("history-{}.json", self.name.replace('/', "-")));
        let judged = crate::smoke::scenarios::judge_history(&report, &file);
        self.record(crate::smoke::verify::CHECK_NAME, t, judged);
        self.load_report = Some(report);
    }
}
