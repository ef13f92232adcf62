//! Day-2 on the systemd machines, under the client load, each step as the node's INSTALL.md
//! says (its blocks run verbatim in the machine, one member at a time): certificate renewal (the
//! host form moves the renewed files into place and etcd takes them on new connections; the
//! portable form restarts etcd, because `LoadCredential=` copies the certificates only at start;
//! zero failed requests), the rolling upgrade (`portablectl reattach`, or the new binary and a
//! restart) and the replacement of a lost machine (a learner, then promoted).
//! In: the machines after their basic checks. Out: each day-2 scenario's checks.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::pki::profiles::Profiles;

use crate::smoke::engine::hosts::{curl_in, Form, Hosts, HEALTHY_TIMEOUT};
use crate::smoke::engine::machines::Machine;
use crate::smoke::scenarios::run::Run;
use crate::smoke::scenarios::ScenarioName;

impl Run<Hosts> {
    /// `pki renew` of every leaf, the bundles rendered again, and each machine given its new
    /// certificates by its INSTALL.md's renewal block, one at a time.
    pub(super) fn renew(&mut self) -> Result<()> {
        let name = format!("{}/rotate-certs", self.form.as_str());
        self.next_scenario(ScenarioName::RotateCerts, name);
        if self.wait_healthy(&[0, 1, 2], HEALTHY_TIMEOUT).is_err() {
            bail!("the cluster is not healthy before the renewal");
        }
        self.start_load()?;
        let t = Instant::now();
        let r = self.renew_steps();
        let ok = r.is_ok();
        let name = "renew: every leaf reissued, delivered as INSTALL.md says, served on both ports";
        self.record(name, t, r);
        self.timings.insert(format!("{}_renew", self.form.as_str()), t.elapsed().as_secs_f64());
        self.finish_load(&[]);
        if !ok {
            self.record_logs();
        }
        Ok(())
    }

    fn renew_steps(&mut self) -> Result<String> {
        self.phase("pki renew");
        let before = self.leaf_serials()?;
        crate::pki::renew(&self.pki.root, &Profiles::load(&Profiles::default_path())?, None)?;
        let after = self.leaf_serials()?;
        if let Some((k, _)) = before.iter().find(|(k, v)| after.get(*k) == Some(v)) {
            bail!("pki renew left {k} unchanged");
        }
        self.render_again()?;
        let marker = match self.form {
            Form::Portable => "LoadCredential= copies",
            _ => "etcd-renew",
        };
        let mut notes = Vec::new();
        for i in 0..self.machines.len() {
            self.interrupt.check()?;
            let node = self.spec.nodes[i].name.clone();
            self.phase(&format!("renew {node}"));
            let block = self.block(i, marker)?;
            self.provision(i)?;
            let t = Instant::now();
            self.machines[i].sh_ok(&format!("cd /root/etcd-install && set -ex\n{block}"))?;
            self.wait_healthy(&[0, 1, 2], HEALTHY_TIMEOUT).with_context(|| format!("after renewing {node}"))?;
            let healthy = t.elapsed().as_secs_f64();
            self.member_healthy.push((format!("{node} renewed"), healthy));
            for (peer, file) in [(false, "server.crt"), (true, "peer.crt")] {
                let served = self.served_serial(i, peer)?;
                let want = &after[&format!("{node}/{file}")];
                if &served != want {
                    bail!(
                        "{node} serves serial {served} on its {} port, not the renewed {want}",
                        if peer { "peer" } else { "client" }
                    );
                }
            }
            notes.push(format!("{node} {healthy:.1} s"));
        }
        let how = match self.form {
            Form::Portable => "restarted one at a time (LoadCredential copies at start)",
            _ => "files moved into place, no restart",
        };
        Ok(format!(
            "{} leaves reissued; {how}; new serials served on client and peer ports; 3/3 healthy after each: {}",
            after.len(),
            notes.join(", ")
        ))
    }

    /// The serial of each node's server and peer certificate in the run's PKI.
    fn leaf_serials(&self) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for n in &self.spec.nodes {
            for file in ["server.crt", "peer.crt"] {
                let path = self.pki.node_dir(&n.name).join(file);
                let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
                out.insert(format!("{}/{file}", n.name), crate::pki::cert::first_cert(&text)?.serial);
            }
        }
        Ok(out)
    }

    /// `cargo xtask render` again over the run's bundles (the PKI is brought up to date, not
    /// reissued).
    fn render_again(&self) -> Result<()> {
        crate::render::render(&crate::render::Render {
            input: crate::render::ClusterArgs {
                cluster: self.cluster_file.clone(),
                pki: Some(self.pki.root.clone()),
                tuning_presets: None,
                arch: Some(self.arch),
                etcd_version: Some(self.version.clone()),
            },
            out: Some(self.render.clone()),
            client: None,
            tls_stage: crate::render::config::TlsStage::Tls,
        })
        .map(|_| ())
        .context("cannot render the bundles again")
    }

    /// The serial of the certificate node `i` serves on its client (or peer) port, over a new
    /// connection made with openssl from inside the namespace.
    fn served_serial(&self, i: usize, peer: bool) -> Result<String> {
        let node = &self.spec.nodes[i].name;
        let (port, dir, ca, cert, key) = if peer {
            (2380, self.pki.node_dir(node), "peer-ca.crt", "peer.crt", "peer.key")
        } else {
            (2379, self.pki.client_dir("etcdctl"), "ca.crt", "client.crt", "client.key")
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self
                .netns
                .command("openssl")
                .args(["s_client", "-connect", &format!("{}:{port}", self.machines[i].ip)])
                .arg("-CAfile")
                .arg(dir.join(ca))
                .arg("-cert")
                .arg(dir.join(cert))
                .arg("-key")
                .arg(dir.join(key))
                .stdin(std::process::Stdio::null())
                .output()
                .context("cannot run openssl s_client (apt-get install openssl)")?;
            let text = String::from_utf8_lossy(&out.stdout);
            if let (Some(b), Some(e)) =
                (text.find("-----BEGIN CERTIFICATE-----"), text.find("-----END CERTIFICATE-----"))
            {
                return Ok(crate::pki::cert::first_cert(&text[b..e + "-----END CERTIFICATE-----".len()])?.serial);
            }
            if Instant::now() > deadline {
                bail!(
                    "openssl s_client to {node} port {port} printed no certificate: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The release the systemd machines are upgraded to, checked and acquired before anything
/// starts: its binaries (host form) and its portable image (portable form).
pub(super) struct UpgradeTarget {
    pub from: String,
    pub to: String,
    pub acquired_dir: PathBuf,
    pub raw: Option<PathBuf>,
}

impl Run<Hosts> {
    /// The rolling upgrade as each node's INSTALL.md (rendered for the new release) says: the
    /// portable form by `portablectl reattach`, the host form by the new binary and a restart.
    pub(super) fn upgrade(&mut self, target: &UpgradeTarget) -> Result<()> {
        let name = format!("{}/upgrade", self.form.as_str());
        self.next_scenario(ScenarioName::Upgrade, name);
        self.start_load()?;
        let ok =
            self.run_check("before the upgrade: 3/3 healthy, no alarms, a snapshot kept", |h| h.upgrade_preflight());
        if ok {
            let t = Instant::now();
            let how = match self.form {
                Form::Portable => "portablectl reattach",
                _ => "new binary, restart",
            };
            let r = self.do_upgrade(target);
            let name = format!("rolling upgrade {} -> {} ({how}), one machine at a time", target.from, target.to);
            self.record(&name, t, r);
            self.timings.insert(format!("{}_upgrade", self.form.as_str()), t.elapsed().as_secs_f64());
            self.run_check("after the upgrade: every member and the cluster version on the new release", |h| {
                h.check_upgraded(&target.to)
            });
        }
        self.finish_load(&["*"]);
        Ok(())
    }

    fn upgrade_preflight(&mut self) -> Result<String> {
        self.phase("upgrade preflight");
        self.wait_healthy(&[0, 1, 2], HEALTHY_TIMEOUT)?;
        let alarms = self.etcdctl_ok(&[0], &["alarm", "list"])?;
        if !alarms.trim().is_empty() {
            bail!("alarms raised, resolve them first: {}", alarms.trim());
        }
        let dir = self.out.join("backup");
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let snap = dir.join("before-upgrade.db");
        self.etcdctl_ok(&[0], &["snapshot", "save", &snap.to_string_lossy()])?;
        let size = fs::metadata(&snap).map(|m| m.len()).unwrap_or(0);
        Ok(format!("3/3 healthy, no alarms, snapshot of {size} bytes kept"))
    }

    fn do_upgrade(&mut self, target: &UpgradeTarget) -> Result<String> {
        // The host side rendered for the new release; its binaries or image.
        self.render = self.out.join(format!("render-{}", target.to));
        self.version = target.to.clone();
        self.render_again()?;
        self.acquired_dir = target.acquired_dir.clone();
        self.raw = target.raw.clone();
        let marker = match self.form {
            Form::Portable => "portablectl reattach",
            _ => "# the new binary",
        };
        let mut notes = Vec::new();
        for i in 0..self.machines.len() {
            self.interrupt.check()?;
            let node = self.spec.nodes[i].name.clone();
            self.phase(&format!("upgrade {node}"));
            let block = self.block(i, marker)?;
            self.provision(i)?;
            let t = Instant::now();
            self.machines[i].sh_ok(&format!("cd /root/etcd-install && set -ex\n{block}"))?;
            self.wait_healthy(&[0, 1, 2], HEALTHY_TIMEOUT).with_context(|| format!("after upgrading {node}"))?;
            let healthy = t.elapsed().as_secs_f64();
            let status: serde_json::Value =
                serde_json::from_str(&self.etcdctl_ok(&[i], &["endpoint", "status", "-w", "json"])?)
                    .context("endpoint status printed no JSON")?;
            let version = status[0]["Status"]["version"].as_str().unwrap_or("?").to_string();
            if version != target.to {
                bail!("{node} runs etcd {version} after its upgrade, not {}", target.to);
            }
            let mut note = format!("{node} {healthy:.1} s");
            if self.form == Form::Portable {
                let image = self.machines[i].sh_ok("systemctl show -P RootImage etcd.service")?.trim().to_string();
                if !image.ends_with(&format!("etcd_{}.raw", target.to)) {
                    bail!("{node}: etcd.service runs on RootImage={image:?} after reattach");
                }
                let listed = self.machines[i].sh_ok("portablectl list --no-legend | wc -l")?.trim().to_string();
                note += &format!(" (RootImage {image}; portablectl list shows {listed} image(s))");
            }
            self.member_healthy.push((format!("{node} upgraded"), healthy));
            notes.push(note);
        }
        Ok(format!("INSTALL.md's upgrade steps on each machine, 3/3 healthy after each: {}", notes.join(", ")))
    }

    fn check_upgraded(&mut self, to: &str) -> Result<String> {
        self.phase("after the upgrade");
        let want = crate::definition::release_line(to) + ".0";
        let t = Instant::now();
        let deadline = t + Duration::from_secs(60);
        let client = self.pki.client_dir("etcdctl");
        loop {
            let file = |f: &str| client.join(f).display().to_string();
            let args = [
                "--cacert".to_string(),
                file("ca.crt"),
                "--cert".to_string(),
                file("client.crt"),
                "--key".to_string(),
                file("client.key"),
                format!("https://{}:2379/version", self.machines[0].ip),
            ];
            let out = curl_in(&self.netns, &args)?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let cluster = v["etcdcluster"].as_str().unwrap_or_default().to_string();
            if cluster == want {
                return Ok(format!(
                    "every member runs {to}; cluster version {cluster} after {:.1} s",
                    t.elapsed().as_secs_f64()
                ));
            }
            if Instant::now() > deadline {
                bail!("the cluster version is {cluster:?}, not {want}, 60 s after the last member");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Machine 3 lost for good: destroyed, a fresh machine made from the cached root, the member
    /// removed and added back as a learner, the new machine installed as INSTALL.md says (joining
    /// the existing cluster), then promoted.
    pub(super) fn replace_member(&mut self) -> Result<()> {
        let name = format!("{}/replace-member", self.form.as_str());
        self.next_scenario(ScenarioName::ReplaceMember, name);
        self.start_load()?;
        let t = Instant::now();
        let r = self.do_replace();
        self.record("replace a lost machine: removed, a fresh machine added as a learner, promoted", t, r);
        self.timings.insert(format!("{}_replace_member", self.form.as_str()), t.elapsed().as_secs_f64());
        self.finish_load(&["*"]);
        Ok(())
    }

    fn do_replace(&mut self) -> Result<String> {
        let lost = 2;
        let node = self.spec.nodes[lost].name.clone();
        self.phase(&format!("{node} lost"));
        self.machines[lost].destroy()?;
        let (ip, dir) = (self.machines[lost].ip, self.machines[lost].dir.clone());
        let rootfs = self.machines[lost].lower().to_path_buf();
        self.machines[lost] = Machine::create(&rootfs, &dir, &node, ip, 24, &self.netns)?;
        self.provision(lost)?;
        // The membership change, from a survivor: the host form has etcdctl and its settings
        // there; the portable form's operator runs it from a workstation (this namespace).
        self.phase(&format!("{node} removed, added as a learner"));
        let remove = self.block(lost, "etcdctl member remove")?;
        let promote = self.block(lost, "etcdctl member promote")?;
        match self.form {
            Form::Portable => self.membership_from_workstation(&node, false)?,
            _ => {
                self.machines[0].sh_ok(&format!("set -ex\n{remove}"))?;
            }
        }
        let t = Instant::now();
        self.boot(&[lost])?;
        let join = self.block(lost, "ETCD_INITIAL_CLUSTER_STATE=existing")?;
        let install = self.install_block(lost)?;
        // INSTALL.md: its install steps, with the join line after the tar is unpacked.
        let mut script = String::new();
        let mut inserted = false;
        for line in install.lines() {
            script.push_str(line);
            script.push('\n');
            if !inserted && line.trim_start().starts_with("tar -xpf") {
                script.push_str(&join);
                inserted = true;
            }
        }
        if !inserted {
            bail!("{node}'s INSTALL.md install steps unpack no tar");
        }
        self.phase(&format!("{node} joining as a learner"));
        let m = &self.machines[lost];
        let out = m.sh_timeout(&format!("cd /root/etcd-install && set -ex\n{script}"), 150)?;
        if !out.status.success() {
            bail!(
                "{node}: the install steps failed ({}): {}\n  journalctl -u etcd:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                m.journal("etcd.service", 15)
            );
        }
        self.phase(&format!("{node} promoted"));
        match self.form {
            Form::Portable => self.membership_from_workstation(&node, true)?,
            _ => {
                self.machines[0].sh_ok(&format!("set -ex\n{promote}"))?;
            }
        }
        self.wait_healthy(&[0, 1, 2], HEALTHY_TIMEOUT)?;
        let healthy = t.elapsed().as_secs_f64();
        self.member_healthy.push((format!("{node} replaced"), healthy));
        let members = self.etcdctl_ok(&[0], &["member", "list"])?;
        let learners = members.lines().filter(|l| l.trim_end().ends_with("true")).count();
        if members.lines().count() != 3 || learners != 0 {
            bail!("member list after the promotion:\n{members}");
        }
        let got = self.etcdctl_ok(&[lost], &["get", "--print-value-only", "--consistency=s", "smoke/before-faults"])?;
        if got.trim() != "kept" {
            bail!("the new {node} serves {:?} for smoke/before-faults from its own store", got.trim());
        }
        Ok(format!(
            "{node} destroyed; a fresh machine booted, installed with ETCD_INITIAL_CLUSTER_STATE=existing, promoted: \
             3/3 healthy {healthy:.1} s after its boot; earlier data served from its own store"
        ))
    }

    /// `member remove` + `member add --learner` (or, with `promote`, `member promote` until it
    /// has caught up) of `node`, with the operator's etcdctl from inside the namespace.
    fn membership_from_workstation(&self, node: &str, promote: bool) -> Result<()> {
        let survivors = [0, 1];
        let list = self.etcdctl_ok(&survivors, &["member", "list"])?;
        let id = list
            .lines()
            .find(|l| l.split(", ").nth(2) == Some(node))
            .and_then(|l| l.split(", ").next())
            .with_context(|| format!("{node} is not in the member list:\n{list}"))?
            .to_string();
        if !promote {
            self.etcdctl_ok(&survivors, &["member", "remove", &id])?;
            let peer = format!("https://{}:2380", self.machines[2].ip);
            // "unhealthy cluster" until every voting member has been connected for 5 s.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let out =
                    self.etcdctl(&survivors, &["member", "add", node, "--learner", &format!("--peer-urls={peer}")])?;
                let err = String::from_utf8_lossy(&out.stderr).to_string();
                if out.status.success() {
                    return Ok(());
                }
                if !err.contains("unhealthy cluster") || Instant::now() > deadline {
                    bail!("etcdctl member add {node} --learner failed: {}", err.trim());
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.etcdctl(&survivors, &["member", "promote", &id])?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{node} was not promoted within 60 s: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}
