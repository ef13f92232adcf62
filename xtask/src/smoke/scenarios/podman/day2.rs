//! The day-2 scenarios of `cargo xtask smoke`: what operators do to a running cluster, proven
//! under a client load. Each runs on a fresh cluster (see `start_cluster`) and ends with
//! `finish_load`, which checks that every write the load saw acknowledged is there.
//!
//! - `upgrade`: a rolling upgrade to the release in `images/etcd.toml` `[upgrade]`, checked by
//!   [`crate::upgrade::check_upgrade`] before anything starts.
//! - `rotate-certs`: `pki renew` of every leaf (no restart), then a CA rotation (bundles, rolling
//!   restart, leaves under the new CA, old CA dropped, rolling restart).
//! - `replace-member`: a member whose volume is lost, replaced through a learner.
//!
//! The podman and etcdctl commands these steps run are the ones the README's runbooks show.
//! In: a fresh podman cluster (and, for the upgrade, the target's image). Out: its checks.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::definition::Definition;
use crate::image::{self, BuildArgs};
use crate::pki::profiles::Profiles;
use crate::render::config::{node_env, TargetPaths};
use crate::smoke::engine::cluster::{restage_dir, Cluster};
use crate::smoke::engine::Members;
use crate::smoke::scenarios::checks::server_reason;
use crate::smoke::scenarios::run::Run;
use crate::smoke::scenarios::ScenarioName;
use crate::smoke::workload::load::{self, Bounds, Identity};

/// The load's bounds: generous for the slowest scenario, so that only the scenario's end stops it.
const LOAD_BOUNDS: Bounds = Bounds { max_requests: 100_000, max_duration: Duration::from_secs(900) };
/// The least request rate the load must reach over a scenario.
const GOAL_RATE: f64 = 50.0;
/// How long a member may take to be healthy again after a restart.
pub(super) const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);

/// The upgrade, checked and its image ready, before any container starts.
pub struct UpgradePlan {
    pub from: String,
    pub to: String,
    pub tag: String,
}

/// Checks that `from` may be upgraded to the target (refusing a downgrade, a jump of more than one
/// minor version and a forbidden release), then builds and loads the target's image.
pub fn prepare_upgrade(def: &Definition, from: &str, to: Option<&str>) -> Result<UpgradePlan> {
    let to = match to {
        Some(v) => v.to_string(),
        None => crate::upgrade::target(def)?,
    };
    crate::upgrade::check_upgrade(def, from, &to)
        .with_context(|| format!("the upgrade scenario cannot upgrade etcd {from} to {to}"))?;
    let host = crate::util::Arch::host().context("this machine's architecture has no etcd build")?;
    let args = BuildArgs {
        arches: vec![host],
        all_arches: false,
        out: None,
        load: false,
        source: crate::acquire::SourcePolicy::Auto,
        etcd_dir: Vec::new(),
        force: false,
        version: Some(to.clone()),
    };
    let built = image::build_images(def, &args).with_context(|| format!("cannot build the image of etcd {to}"))?;
    let built = built.first().context("the image stage built nothing")?;
    let tag = image::podman::load(&built.archive)?;
    let shipped = built.stamp.reference.rsplit(':').next().unwrap_or_default().to_string();
    if shipped != to {
        bail!("the image built for the upgrade holds etcd {shipped}, not {to}");
    }
    eprintln!("smoke: upgrade target image {tag}");
    Ok(UpgradePlan { from: from.to_string(), to, tag })
}

impl Run<Cluster> {
    /// Starts the three members, waits for 3/3 healthy, then starts the client load. Returns
    /// whether the cluster came up (a failure is recorded as a check).
    pub(super) fn start_cluster(&mut self) -> Result<bool> {
        self.start_cluster_with(LOAD_BOUNDS)
    }

    /// [`Run::start_cluster`] with a load of `bounds` (a soak's load runs as long as the soak).
    pub(super) fn start_cluster_with(&mut self, bounds: Bounds) -> Result<bool> {
        let t = Instant::now();
        self.start_all()?;
        let healthy = self.wait_healthy(&[0, 1, 2], HEALTHY_TIMEOUT);
        if self.scenario == ScenarioName::Basic {
            self.timings.insert("start_to_healthy".into(), t.elapsed().as_secs_f64());
        }
        let ok = healthy.is_ok();
        self.record(
            "cluster starts: 3/3 healthy",
            t,
            healthy.map(|_| format!("in {:.2} s", t.elapsed().as_secs_f64())),
        );
        if !ok {
            return Ok(false);
        }
        let watched = matches!(self.scenario, ScenarioName::Basic | ScenarioName::Drills | ScenarioName::RotateCerts);
        if watched && self.spec.monitoring.is_some() && self.kube_manifests.is_none() {
            let t = Instant::now();
            let started = self.start_prometheus();
            let ok = started.is_ok();
            self.record("monitoring: Prometheus scrapes the 3 members over mutual TLS", t, started);
            if !ok {
                return Ok(false);
            }
        }
        self.start_load(bounds)?;
        Ok(true)
    }

    /// Stops the load and records its checks: every acknowledged write read back through the
    /// member that changed most (the replaced or last upgraded one), at least [`GOAL_RATE`]
    /// requests/s.
    pub(super) fn finish_podman_load(&mut self) {
        let via = match self.scenario {
            ScenarioName::ReplaceMember => 1,
            ScenarioName::Upgrade => 2,
            _ => 0,
        };
        self.finish_load(via, Some(GOAL_RATE));
    }

    /// Replaces member `i`'s container by one with `env` (and `image`, when given) on the same
    /// volume, certificates and address, and times how long until 3/3 healthy.
    pub(super) fn recreate_member(
        &mut self,
        i: usize,
        env: BTreeMap<String, String>,
        image: Option<&str>,
    ) -> Result<f64> {
        let name = self.nodes[i].spec.name.clone();
        let t = Instant::now();
        self.recreate(i, env, image)?;
        self.wait_healthy(&[0, 1, 2], HEALTHY_TIMEOUT).with_context(|| format!("after recreating {name}"))?;
        let s = t.elapsed().as_secs_f64();
        self.member_healthy.push((name, s));
        Ok(s)
    }

    /// Stops member `i` and starts it again (same container, volume and mounts), timing how
    /// long until 3/3 healthy.
    fn restart_member(&mut self, i: usize) -> Result<f64> {
        let name = self.nodes[i].spec.name.clone();
        self.phase(&format!("restart {name}"));
        let t = Instant::now();
        self.stop(i)?;
        self.start(i)?;
        self.wait_healthy(&[0, 1, 2], HEALTHY_TIMEOUT).with_context(|| format!("after restarting {name}"))?;
        let s = t.elapsed().as_secs_f64();
        self.member_healthy.push((name, s));
        Ok(s)
    }

    fn rolling_restart(&mut self) -> Result<String> {
        let mut times = Vec::new();
        for i in 0..self.nodes.len() {
            let s = self.restart_member(i)?;
            times.push(format!("{} {s:.2} s", self.nodes[i].spec.name));
        }
        Ok(times.join(", "))
    }

    /// `pki rotate-ca` in its three steps as the runbook gives them: new CAs added to the
    /// bundles (rolling restart: etcd reads its trusted CAs at start only), every leaf reissued
    /// under them (served without a restart), the old CAs dropped (rolling restart). At each
    /// step Prometheus, when it watches, gets its files as the members get theirs (`scraped`:
    /// how long until it scraped again).
    pub(super) fn rotate_ca_rolling(&mut self, profiles: &Profiles, scraped: &mut Vec<String>) -> Result<String> {
        let to_prometheus = |c: &Run<Cluster>, step: &str, scraped: &mut Vec<String>| -> Result<()> {
            if let Some(s) = c.prometheus_restage().with_context(|| format!("Prometheus after {step}"))? {
                scraped.push(format!("{step} {s:.1} s"));
            }
            Ok(())
        };
        self.phase("rotate-ca add");
        crate::pki::rotate_ca(&self.pki.root, profiles, crate::pki::RotateStep::Add)?;
        self.restage()?;
        to_prometheus(self, "add", scraped)?;
        let first = self.rolling_restart()?;
        self.phase("rotate-ca reissue");
        crate::pki::rotate_ca(&self.pki.root, profiles, crate::pki::RotateStep::Reissue)?;
        self.restage()?;
        to_prometheus(self, "reissue", scraped)?;
        self.phase("after rotate-ca reissue");
        let served = self.check_served()?;
        self.phase("rotate-ca drop");
        crate::pki::rotate_ca(&self.pki.root, profiles, crate::pki::RotateStep::Drop)?;
        self.restage()?;
        to_prometheus(self, "drop", scraped)?;
        let second = self.rolling_restart()?;
        self.phase("after the CA rotation");
        let served_after = self.check_served()?;
        Ok(format!(
            "new CAs trusted beside the old (rolling restart: {first}); leaves reissued under them and served \
             without a restart ({served}); old CAs dropped (rolling restart: {second}); served: {served_after}"
        ))
    }

    /// Copies the PKI's current files into the mounted directories, each file atomically
    /// (written beside, renamed over), owned by the etcd uid, 0400.
    pub(super) fn restage(&self) -> Result<()> {
        for n in &self.nodes {
            restage_dir(&self.pki.node_dir(&n.spec.name), &self.mounts.join(&n.spec.name), self.uid, self.gid)?;
        }
        restage_dir(&self.pki.client_dir("etcdctl"), &self.client, self.uid, self.gid)
    }

    /// Least privilege under load (`scenarios/auth.rs`): the load as the least-privileged
    /// writer over gRPC; CRLs delivered by renaming them into the mounted directories.
    /// Then, with auth on, the CA rotation and the rolling upgrade to `upgrade`'s release.
    pub(super) fn auth(&mut self, cluster_file: &Path, upgrade: &UpgradePlan) -> Result<()> {
        self.load_as_least_privileged()?;
        if !self.start_cluster()? {
            return Ok(());
        }
        let deliver = &mut |run: &mut Self, _what: &str| {
            run.restage()?;
            Ok("renamed into each member's mounted directory, no restart,".into())
        };
        self.auth_steps(cluster_file, deliver, &mut |run: &mut Self| {
            let t = Instant::now();
            let profiles = Profiles::load(&Profiles::default_path())?;
            let r = run.rotate_ca_rolling(&profiles, &mut Vec::new());
            let rotated = r.is_ok();
            run.record("CA rotation with auth on: the users are CNs, the load's identity reissued too", t, r);
            if !rotated {
                return Ok(());
            }
            run.upgrade_with_auth_on(&upgrade.from, &upgrade.to, |run| run.do_upgrade(upgrade));
            Ok(())
        })
    }

    /// `pki renew` of every leaf on the running cluster, then a CA rotation.
    pub(super) fn rotate_certs(&mut self) -> Result<()> {
        if !self.start_cluster()? {
            return Ok(());
        }
        let profiles = Profiles::load(&Profiles::default_path())?;
        // The operator's certificate as issued under the first CA, for the last check.
        let old_client = self.out.join("old-client");
        copy_dir(&self.pki.client_dir("etcdctl"), &old_client)?;

        let t = Instant::now();
        let r = (|| {
            self.phase("pki renew");
            let dates = self.probed_expiry().transpose()?;
            let before = self.leaf_serials()?;
            let report = crate::pki::renew(&self.pki.root, &profiles, None)?;
            self.restage()?;
            let after = self.leaf_serials()?;
            let unchanged: Vec<&String> =
                before.iter().filter(|(k, v)| after.get(*k) == Some(v)).map(|(k, _)| k).collect();
            if !unchanged.is_empty() {
                bail!("pki renew left {unchanged:?} unchanged");
            }
            self.phase("after pki renew");
            let served = self.check_served()?;
            let probed = match dates.and_then(|d| self.probed_expiry_moved(&d)) {
                Some(seen) => format!("; {}", seen?),
                None => String::new(),
            };
            Ok(format!(
                "{} certificates reissued, no restart; new serials served on both ports: {served}{probed}",
                report.issued().count()
            ))
        })();
        self.record("renew: every leaf reissued and served on new connections, no restart", t, r);
        // The CA rotation replaces the CA Prometheus trusts and its own certificate's issuer:
        // at each step the operator copies them to the Prometheus host, as the members get theirs.
        let t = Instant::now();
        let dates = self.probed_expiry().transpose();
        let mut scraped = Vec::new();
        let r = self.rotate_ca_rolling(&profiles, &mut scraped);
        self.record("CA rotation: bundles, rolling restart, new leaves, old CA dropped, rolling restart", t, r);
        match dates {
            Ok(Some(d)) => {
                if let Some(seen) = self.monitoring_after_rotation(&d, t, &scraped) {
                    self.record("monitoring through the CA rotation: scrapes and probes under the new CA", t, seen);
                }
            }
            Ok(None) => {}
            Err(e) => self.record("monitoring through the CA rotation: scrapes and probes under the new CA", t, Err(e)),
        }

        self.run_check("a client certificate of the old CA is refused; the new one works", |c| {
            c.check_old_client_refused(&old_client)
        });
        Ok(())
    }

    fn check_old_client_refused(&self, old: &Path) -> Result<String> {
        let endpoint = self.client_url(0);
        // The old certificate, trusting the current CA (the server is not the question here).
        let stale =
            Identity { ca: self.client.join("ca.crt"), cert: old.join("client.crt"), key: old.join("client.key") };
        let gw = load::Gateway::new(&stale, Duration::from_secs(5))?;
        if let Ok(v) = gw.get(&endpoint, "smoke/nothing") {
            bail!("a certificate of the old CA was accepted (answer {v:?})");
        }
        let fresh = load::Gateway::new(&Identity::in_dir(&self.client), Duration::from_secs(5))?;
        fresh.put(&endpoint, "smoke/after-rotation", "ok").context("the new client certificate is refused")?;
        let reason = self.rejections(0)?.last().map(|l| server_reason(l)).unwrap_or_default();
        Ok(format!("old certificate refused (server: {reason}); new one writes"))
    }

    /// Node 2's container and volume destroyed; the member removed, re-added as a learner with
    /// new certificates and an empty data dir, promoted when caught up.
    pub(super) fn replace_member(&mut self) -> Result<()> {
        if !self.start_cluster()? {
            return Ok(());
        }
        self.run_check("replace a lost member: remove, add as learner, catch up, promote", |c| c.do_replace_member(1));
        Ok(())
    }

    fn do_replace_member(&mut self, i: usize) -> Result<String> {
        let name = self.nodes[i].spec.name.clone();
        let others: Vec<usize> = (0..self.nodes.len()).filter(|j| *j != i).collect();
        let old_id = self.member_id(&name, &[0, 2])?;
        self.phase(&format!("{name} lost"));
        self.destroy(i)?;
        let t = Instant::now();
        // The survivors first elect a leader if the lost member led (etcd needs one to reconfigure).
        self.wait_healthy(&others, HEALTHY_TIMEOUT).context("the remaining members are not healthy")?;
        let survivors = t.elapsed().as_secs_f64();
        self.phase(&format!("member remove {name}"));
        self.etcdctl_ok(&others, &["member", "remove", &format!("{old_id:x}")])?;
        // The new member's own certificates (new keys), staged where its container mounts them.
        let profiles = Profiles::load(&Profiles::default_path())?;
        crate::pki::renew(&self.pki.root, &profiles, Some(&name))?;
        self.restage()?;
        // The removal may have just made a voting member new to the others.
        let (new_id, tries) = self.add_member_back(i, &others)?;
        let promoted = t.elapsed().as_secs_f64();
        self.phase(&format!("{name} promoted"));
        self.wait_healthy(&[0, 1, 2], HEALTHY_TIMEOUT)?;
        let healthy = t.elapsed().as_secs_f64();
        self.member_healthy.push((name.clone(), healthy));
        self.timings.insert("replace_member_healthy".into(), healthy);
        let members = self.members(&[0, 2])?;
        let ids: Vec<u64> = members.iter().filter_map(|m| m["ID"].as_u64()).collect();
        if ids.contains(&old_id) {
            bail!("the old member ID {old_id:x} is still in the member list");
        }
        let new = members
            .iter()
            .find(|m| m["name"] == name.as_str())
            .with_context(|| format!("{name} is not in the member list after its replacement"))?;
        if new["isLearner"].as_bool() == Some(true) || members.len() != 3 {
            bail!("after the promotion: {} members, {name} learner: {}", members.len(), new["isLearner"]);
        }
        let got = self.etcdctl_ok(&[i], &["get", "--print-value-only", "--consistency=l", "load/0/000001"])?;
        Ok(format!(
            "survivors healthy after {survivors:.2} s; old ID {old_id:x} removed; new member {new_id} added as a learner, promoted after {promoted:.2} s \
             ({tries} tries), 3/3 healthy after {healthy:.2} s; 3 voting members; the new member serves the first \
             key ({:?})",
            got.trim()
        ))
    }

    /// Member `i` (lost with its volume, no longer in the membership) added back through the
    /// members `from` as a learner (retried while etcd answers `unhealthy cluster`), started on
    /// an empty volume with the `ETCD_INITIAL_CLUSTER` that `member add` printed, and promoted
    /// once caught up: its new member ID and the promotion's attempts.
    pub(super) fn add_member_back(&mut self, i: usize, from: &[usize]) -> Result<(String, u32)> {
        let name = self.nodes[i].spec.name.clone();
        let ip = crate::render::config::primary_ip(&self.nodes[i].spec)?;
        let peer_url = crate::render::config::url("https", &ip, crate::render::config::PEER_PORT);
        self.phase(&format!("member add {name} --learner"));
        let added = self.add_learner(&name, &peer_url, from)?;
        let new_id = added
            .split_whitespace()
            .skip_while(|w| *w != "Member")
            .nth(1)
            .context("member add printed no member ID")?
            .to_string();
        let initial = added
            .lines()
            .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER="))
            .map(|v| v.trim_matches('"').to_string())
            .with_context(|| format!("member add printed no ETCD_INITIAL_CLUSTER: {added}"))?;
        let facts = crate::render::config::PkiFacts::read(&self.pki.root)?;
        let mut env = node_env(&self.spec, &self.nodes[i].spec, &facts, &TargetPaths::standard(), &self.etcd_version)?;
        env.insert("ETCD_INITIAL_CLUSTER".into(), initial);
        env.insert("ETCD_INITIAL_CLUSTER_STATE".into(), "existing".into());
        self.nodes[i].env = env;
        self.create(i)?;
        // Promoted once the learner has caught up.
        self.phase(&format!("{name} learning"));
        let tries = self.promote(&new_id, from, HEALTHY_TIMEOUT)?;
        Ok((new_id, tries))
    }

    /// The rolling upgrade, member by member, as etcd's upgrade guide says.
    pub(super) fn upgrade(&mut self, plan: &UpgradePlan) -> Result<()> {
        if !self.start_cluster()? {
            return Ok(());
        }
        let ok =
            self.run_check("before the upgrade: 3/3 healthy, no alarms, a snapshot kept", |c| c.upgrade_preflight());
        if !ok {
            return Ok(());
        }
        self.run_check(&format!("rolling upgrade {} -> {}, one member at a time", plan.from, plan.to), |c| {
            c.do_upgrade(plan)
        });
        self.run_check("after the upgrade: every member and the cluster version on the new release", |c| {
            c.check_upgraded(&plan.to)
        });
        Ok(())
    }

    pub(super) fn do_upgrade(&mut self, plan: &UpgradePlan) -> Result<String> {
        let facts = crate::render::config::PkiFacts::read(&self.pki.root)?;
        let mut notes = Vec::new();
        for i in 0..self.nodes.len() {
            self.interrupt.check()?;
            let name = self.nodes[i].spec.name.clone();
            self.phase(&format!("upgrade {name}"));
            // The same volume and certificates; the configuration rendered for the new release.
            let env = node_env(&self.spec, &self.nodes[i].spec, &facts, &TargetPaths::standard(), &plan.to)?;
            let s = self.recreate_member(i, env, Some(&plan.tag))?;
            self.timings.insert(format!("upgrade_{name}_healthy"), s);
            notes.push(format!("{name} {s:.2} s"));
        }
        Ok(format!(
            "each member stopped, started on {} with its volume and certificates, 3/3 healthy: {}",
            plan.tag,
            notes.join(", ")
        ))
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let entry = entry?;
        fs::copy(entry.path(), to.join(entry.file_name()))
            .with_context(|| format!("cannot copy {}", entry.path().display()))?;
    }
    Ok(())
}
