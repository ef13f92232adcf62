//! Day-2 on the systemd machines, under the client load, each step as the node's INSTALL.md
//! says (its blocks run verbatim in the machine, one member at a time): certificate renewal (the
//! host form moves the renewed files into place and etcd takes them on new connections; the
//! portable form restarts etcd, because `LoadCredential=` copies the certificates only at start;
//! zero failed requests), the rolling upgrade (`portablectl reattach`, or the new binary and a
//! restart), the replacement of a lost machine (a learner, then promoted), and least privilege
//! (`scenarios/auth.rs`: a revocation's CRLs delivered by the renewal's block).
//! In: the machines after their basic checks. Out: each day-2 scenario's checks.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::pki::profiles::Profiles;

use super::LOAD_BOUNDS;
use crate::smoke::engine::hosts::{Form, Hosts, HEALTHY_TIMEOUT};
use crate::smoke::engine::machines::Machine;
use crate::smoke::engine::Members;
use crate::smoke::scenarios::run::{LoadAs, Run};
use crate::smoke::scenarios::ScenarioName;

impl Run<Hosts> {
    /// Least privilege under load (`scenarios/auth.rs`) on these machines; a revocation's CRLs
    /// reach each member as renewed certificates do (the portable form restarts, one at a
    /// time). With `upgrade`, the rolling upgrade with auth on follows the renewal. The load is
    /// the operator's again afterwards, and auth off.
    pub(super) fn auth(&mut self, upgrade: Option<&UpgradeTarget>) -> Result<()> {
        let name = format!("{}/auth", self.form.as_str());
        self.next_scenario(ScenarioName::Auth, name);
        if self.wait_healthy(&[0, 1, 2], HEALTHY_TIMEOUT).is_err() {
            bail!("the cluster is not healthy before the auth scenario");
        }
        self.load_as_least_privileged()?;
        self.start_load(LOAD_BOUNDS)?;
        let file = self.cluster_file.clone();
        let r =
            self.auth_steps(&file, &mut |run: &mut Self, what: &str| run.deliver_pki(what), &mut |run: &mut Self| {
                if let Some(target) = upgrade {
                    run.upgrade_with_auth_on(&target.from, &target.to, |run| run.do_upgrade(target));
                }
                Ok(())
            });
        self.finish_load(0, None);
        self.load_as = LoadAs::default();
        r
    }

    /// The bundles rendered again (with the PKI's current certificates and CRLs) and each
    /// machine given them by its INSTALL.md's renewal block, one at a time, each step a phase
    /// of the load named `what` and the node; how, in words.
    fn deliver_pki(&mut self, what: &str) -> Result<String> {
        self.render_again()?;
        let marker = match self.form {
            Form::Portable => "LoadCredential= copies",
            _ => "etcd-renew",
        };
        let mut counted = Vec::new();
        for i in 0..self.machines.len() {
            self.step_on(i, what, marker)?;
            counted.push(self.crl_facts_delivered(i)?);
        }
        let how = match self.form {
            Form::Portable => {
                "delivered by INSTALL.md's renewal block, each member restarted in turn (LoadCredential=)"
            }
            _ => "moved into /etc/etcd/pki/ by INSTALL.md's renewal block, no restart",
        };
        Ok(format!("{how} (node exporter's etcd-crl.prom on each: {}),", counted.join(", ")))
    }

    /// Machine `i`'s `etcd-crl.prom`, as the block left it, against the PKI's CRLs: the same
    /// next-update and count of revoked serials (what `etcdCrlExpiresSoon` and an operator read).
    fn crl_facts_delivered(&self, i: usize) -> Result<String> {
        let node = &self.spec.nodes[i].name;
        let want = crate::render::monitoring::crl_textfile(&self.spec.name, node, &self.pki.node_dir(node))?;
        let path = format!("/{}", crate::render::monitoring::CRL_TEXTFILE);
        let got = self.machines[i].sh_ok(&format!("cat {path}"))?;
        if got.trim() != want.trim() {
            bail!("{node}: {path} does not say what the PKI's CRLs say:\n{got}\nwanted:\n{want}");
        }
        let revoked = want
            .lines()
            .filter(|l| l.starts_with("etcd_crl_revoked_certificates{"))
            .filter_map(|l| l.rsplit(' ').next())
            .collect::<Vec<_>>()
            .join("+");
        Ok(format!("{node} {revoked} revoked"))
    }

    /// `pki renew` of every leaf, the bundles rendered again, and each machine given its new
    /// certificates by its INSTALL.md's renewal block, one at a time.
    pub(super) fn renew(&mut self) -> Result<()> {
        let name = format!("{}/rotate-certs", self.form.as_str());
        self.next_scenario(ScenarioName::RotateCerts, name);
        if self.wait_healthy(&[0, 1, 2], HEALTHY_TIMEOUT).is_err() {
            bail!("the cluster is not healthy before the renewal");
        }
        self.start_load(LOAD_BOUNDS)?;
        let t = Instant::now();
        let r = self.renew_steps();
        let ok = r.is_ok();
        let name = "renew: every leaf reissued, delivered as INSTALL.md says, served on both ports";
        self.record(name, t, r);
        self.timings.insert(format!("{}_renew", self.form.as_str()), t.elapsed().as_secs_f64());
        self.finish_load(0, None);
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
            let node = self.spec.nodes[i].name.clone();
            let healthy = self.step_on(i, "renew", marker)?;
            self.member_healthy.push((format!("{node} renewed"), healthy));
            self.check_served_by(i)?;
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

    /// One member's day-2 step (`what`): machine `i` gets what its form's INSTALL.md needs now
    /// and runs the block with `marker`, as written; the seconds until 3/3 healthy after it.
    fn step_on(&mut self, i: usize, what: &str, marker: &str) -> Result<f64> {
        self.interrupt.check()?;
        let node = self.spec.nodes[i].name.clone();
        self.phase(&format!("{what} {node}"));
        let block = self.block(i, marker)?;
        self.provision(i)?;
        let t = Instant::now();
        self.machines[i].sh_ok(&format!("cd /root/etcd-install && set -ex\n{block}"))?;
        self.wait_healthy(&[0, 1, 2], HEALTHY_TIMEOUT).with_context(|| format!("after the {what} of {node}"))?;
        Ok(t.elapsed().as_secs_f64())
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
        self.start_load(LOAD_BOUNDS)?;
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
        self.finish_load(0, None);
        Ok(())
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
            let node = self.spec.nodes[i].name.clone();
            let healthy = self.step_on(i, "upgrade", marker)?;
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

    /// Machine 3 lost for good: destroyed, a fresh machine made from the cached root, the member
    /// removed and added back as a learner, the new machine installed as INSTALL.md says (joining
    /// the existing cluster), then promoted.
    pub(super) fn replace_member(&mut self) -> Result<()> {
        let name = format!("{}/replace-member", self.form.as_str());
        self.next_scenario(ScenarioName::ReplaceMember, name);
        self.start_load(LOAD_BOUNDS)?;
        let t = Instant::now();
        let r = self.do_replace();
        self.record("replace a lost machine: removed, a fresh machine added as a learner, promoted", t, r);
        self.timings.insert(format!("{}_replace_member", self.form.as_str()), t.elapsed().as_secs_f64());
        self.finish_load(0, None);
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
        // INSTALL.md: its install steps, with the join line after the tar is unpacked.
        let script = self.install_joining(lost, &join)?;
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
        let id = format!("{:x}", self.member_id(node, &survivors)?);
        if promote {
            return self.promote(&id, &survivors, Duration::from_secs(60)).map(|_| ());
        }
        self.etcdctl_ok(&survivors, &["member", "remove", &id])?;
        self.add_learner(node, &self.peer_url(2), &survivors).map(|_| ())
    }
}
