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
//!
//! Longer than 600 lines: the three day-2 scenarios (rotate-certs, replace-member, upgrade), each
//! the README runbook it proves, step by step, sharing the restart and time-to-healthy helpers.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::definition::Definition;
use crate::image::{self, BuildArgs};
use crate::pki::profiles::Profiles;
use crate::render::config::{node_env, TargetPaths};
use crate::smoke::engine::cluster::{restage_dir, Cluster};
use crate::smoke::engine::podman::{label, podman, podman_checked};
use crate::smoke::local::stdout_or_stderr;
use crate::smoke::report::Outcome;
use crate::smoke::scenarios::checks::server_reason;
use crate::smoke::scenarios::run::Run;
use crate::smoke::scenarios::{ScenarioName, NO_QUORUM};
use crate::smoke::workload::load::{self, Bounds, Identity, Load};

/// Where the load's keys go.
const LOAD_PREFIX: &str = "load/";
/// The load's bounds: generous for the slowest scenario, so that only the scenario's end stops it.
const LOAD_BOUNDS: Bounds = Bounds { max_requests: 100_000, max_duration: Duration::from_secs(900) };
/// The least request rate the load must reach over a scenario.
const GOAL_RATE: f64 = 50.0;
/// How long a member may take to be healthy again after a restart.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);

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
        let scheme = if self.plain_clients { "http" } else { "https" };
        let endpoints = self.nodes.iter().map(|n| format!("{scheme}://127.0.0.1:{}", n.client_port)).collect();
        self.load = Some(Load::start(endpoints, Identity::in_dir(&self.client), LOAD_PREFIX, LOAD_BOUNDS, None)?);
        Ok(true)
    }

    /// Stops the load and records what it saw: at least 50 requests/s, every acknowledged write
    /// present, and (for rotate-certs) no failed request; other scenarios explain each failure.
    pub(super) fn finish_load(&mut self) -> Result<()> {
        let Some(l) = self.load.take() else { return Ok(()) };
        let report = l.finish();
        let t = Instant::now();
        let mut r = self.check_load(&report);
        if r.is_err() && self.checks.iter().any(|c| c.outcome == Outcome::Fail) {
            r = r.context("after an earlier failure");
        }
        self.record("client load: every acknowledged write is there", t, r);
        let t = Instant::now();
        let judged = crate::smoke::scenarios::judge_history(&report, &self.out.join("history.json"));
        self.record(crate::smoke::verify::CHECK_NAME, t, judged);
        self.load_report = Some(report);
        Ok(())
    }

    fn check_load(&self, report: &load::LoadReport) -> Result<String> {
        // Read back through the member that changed most (the replaced or last upgraded one).
        let via = match self.scenario {
            ScenarioName::ReplaceMember => 1,
            ScenarioName::Upgrade => 2,
            _ => 0,
        };
        let endpoint = self.client_url(via);
        let identity = Identity::in_dir(&self.client);
        let checked = match load::verify_acknowledged(report, &endpoint, &identity, LOAD_PREFIX) {
            Ok(n) => n,
            // After a failed step that member may be gone: the data still has to be there.
            Err(e) if self.checks.iter().any(|c| c.outcome == Outcome::Fail) => {
                let first = self.client_url(0);
                load::verify_acknowledged(report, &first, &identity, LOAD_PREFIX)
                    .with_context(|| format!("via {}: {e:#}", self.nodes[via].spec.name))?
            }
            Err(e) => return Err(e),
        };
        let mut summary = format!(
            "{} requests ({} writes, {} linearizable reads) in {:.1} s = {:.0}/s; {} failed, {} retried on \
             another endpoint; worst latency {:.0} ms; all {checked} acknowledged writes read back via {}",
            report.requests,
            report.writes,
            report.reads,
            report.seconds,
            report.rate_per_s,
            report.failed,
            report.retries,
            report.worst_latency_ms,
            self.nodes[via].spec.name
        );
        if report.retries > 0 {
            let causes: Vec<String> = report.retried_by_cause.iter().map(|(c, n)| format!("{n} {c}")).collect();
            summary.push_str(&format!("; retried: {}", causes.join(", ")));
        }
        if report.failed > 0 {
            let by_phase: Vec<String> =
                report.failed_by_phase.iter().map(|(p, n)| format!("{n} during {p:?}")).collect();
            summary.push_str(&format!("; failures: {}", by_phase.join(", ")));
            if let Some(first) = report.failures.first() {
                summary.push_str(&format!(" (first: {} at {:.1} s: {})", first.what, first.at_s, first.reason));
            }
        }
        // Without quorum requests stall or fail; that is what the fault check proves, and that
        // phase neither counts towards the rate nor may its failures fail the load.
        let allowed: &[&str] = match self.scenario {
            ScenarioName::RotateCerts | ScenarioName::HttpToTls => &[],
            ScenarioName::Basic => &[NO_QUORUM],
            _ => &["*"],
        };
        let rate = report.rate_except(allowed);
        if rate < GOAL_RATE {
            bail!("the load reached {rate:.0} requests/s, below the goal of {GOAL_RATE}: {summary}");
        }
        if self.scenario == ScenarioName::Basic {
            summary.push_str(&format!("; {rate:.0}/s outside the phase without quorum"));
        }
        let unexplained: Vec<&String> = report
            .failed_by_phase
            .keys()
            .filter(|p| !allowed.contains(&"*") && !allowed.contains(&p.as_str()))
            .collect();
        if !unexplained.is_empty() {
            bail!("requests failed where none may: {summary}");
        }
        Ok(summary)
    }

    /// Replaces member `i`'s container by one with `env` (and `image`, when given) on the same
    /// volume, certificates and address, and times how long until 3/3 healthy.
    pub(super) fn recreate_member(
        &mut self,
        i: usize,
        env: BTreeMap<String, String>,
        image: Option<&str>,
    ) -> Result<f64> {
        let (name, container) = (self.nodes[i].spec.name.clone(), self.nodes[i].container.clone());
        let t = Instant::now();
        podman(&["stop", "-t", "10", &container])?;
        podman(&["rm", &container])?;
        self.nodes[i].env = env;
        if let Some(image) = image {
            self.nodes[i].image = image.to_string();
        }
        let args = self.container_args(&self.nodes[i])?;
        podman_checked(&args).with_context(|| format!("cannot start {name} on {}", self.nodes[i].image))?;
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

    /// Copies the PKI's current files into the mounted directories, each file atomically
    /// (written beside, renamed over), owned by the etcd uid, 0400.
    fn restage(&self) -> Result<()> {
        for n in &self.nodes {
            restage_dir(&self.pki.node_dir(&n.spec.name), &self.mounts.join(&n.spec.name), self.uid, self.gid)?;
        }
        restage_dir(&self.pki.client_dir("etcdctl"), &self.client, self.uid, self.gid)
    }

    /// The serial and issuer of the certificate node `i` serves on its client port (`peer`:
    /// peer port), read with `openssl s_client` over a new connection.
    fn served_cert(&self, i: usize, peer: bool) -> Result<(String, String)> {
        let n = &self.nodes[i];
        let (port, ca, cert, key) = if peer {
            let d = self.pki.node_dir(&n.spec.name);
            (n.peer_port, d.join("peer-ca.crt"), d.join("peer.crt"), d.join("peer.key"))
        } else {
            (n.client_port, self.client.join("ca.crt"), self.client.join("client.crt"), self.client.join("client.key"))
        };
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .arg("-CAfile")
            .arg(&ca)
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(std::process::Stdio::null())
            .output()
            .context("cannot run openssl s_client (apt-get install openssl)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let begin = text.find("-----BEGIN CERTIFICATE-----");
        let end = text.find("-----END CERTIFICATE-----");
        let (Some(b), Some(e)) = (begin, end) else {
            bail!(
                "openssl s_client to {} port {port} printed no certificate: {}",
                n.spec.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        };
        let info = crate::pki::cert::first_cert(&text[b..e + "-----END CERTIFICATE-----".len()])?;
        Ok((info.serial, info.issuer_cn.unwrap_or(info.issuer)))
    }

    /// Every node serves, on both ports, the certificate now in the PKI directory.
    fn check_served(&self) -> Result<String> {
        let mut seen = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for (peer, file) in [(false, "server.crt"), (true, "peer.crt")] {
                let path = self.pki.node_dir(&n.spec.name).join(file);
                let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
                let want = crate::pki::cert::first_cert(&text)?;
                let (serial, issuer) = self.served_cert(i, peer)?;
                if serial != want.serial {
                    bail!(
                        "{} serves serial {serial} on its {} port, not {} of the renewed {}",
                        n.spec.name,
                        if peer { "peer" } else { "client" },
                        want.serial,
                        file
                    );
                }
                if peer {
                    seen.push(format!("{} {}…/{}…", n.spec.name, &want.serial[..8.min(want.serial.len())], issuer));
                }
            }
        }
        Ok(seen.join(", "))
    }

    fn leaf_serials(&self) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for n in &self.nodes {
            for file in ["server.crt", "peer.crt"] {
                let path = self.pki.node_dir(&n.spec.name).join(file);
                let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
                out.insert(format!("{}/{file}", n.spec.name), crate::pki::cert::first_cert(&text)?.serial);
            }
        }
        Ok(out)
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
        let r = (|| {
            let mut to_prometheus = |c: &Run<Cluster>, step: &str| -> Result<()> {
                if let Some(s) = c.prometheus_restage().with_context(|| format!("Prometheus after {step}"))? {
                    scraped.push(format!("{step} {s:.1} s"));
                }
                Ok(())
            };
            self.phase("rotate-ca add");
            crate::pki::rotate_ca(&self.pki.root, &profiles, crate::pki::RotateStep::Add)?;
            self.restage()?;
            to_prometheus(self, "add")?;
            let first = self.rolling_restart()?;
            self.phase("rotate-ca reissue");
            crate::pki::rotate_ca(&self.pki.root, &profiles, crate::pki::RotateStep::Reissue)?;
            self.restage()?;
            to_prometheus(self, "reissue")?;
            self.phase("after rotate-ca reissue");
            let served = self.check_served()?;
            self.phase("rotate-ca drop");
            crate::pki::rotate_ca(&self.pki.root, &profiles, crate::pki::RotateStep::Drop)?;
            self.restage()?;
            to_prometheus(self, "drop")?;
            let second = self.rolling_restart()?;
            self.phase("after the CA rotation");
            let served_after = self.check_served()?;
            Ok(format!(
                "new CAs trusted beside the old (rolling restart: {first}); leaves reissued under them and served \
                 without a restart ({served}); old CAs dropped (rolling restart: {second}); served: {served_after}"
            ))
        })();
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

    pub(super) fn members(&self) -> Result<Vec<serde_json::Value>> {
        let v: serde_json::Value = serde_json::from_str(&self.etcdctl_ok(&[0, 2], &["member", "list", "-w", "json"])?)
            .context("member list printed no JSON")?;
        Ok(v["members"].as_array().cloned().unwrap_or_default())
    }

    fn do_replace_member(&mut self, i: usize) -> Result<String> {
        let name = self.nodes[i].spec.name.clone();
        let others: Vec<usize> = (0..self.nodes.len()).filter(|j| *j != i).collect();
        let old_id = self
            .members()?
            .iter()
            .find(|m| m["name"] == name.as_str())
            .and_then(|m| m["ID"].as_u64())
            .with_context(|| format!("{name} is not in the member list"))?;
        self.phase(&format!("{name} lost"));
        let (container, volume) = (self.nodes[i].container.clone(), self.nodes[i].volume.clone());
        podman(&["rm", "-f", "-t", "0", &container])?;
        podman(&["volume", "rm", "-f", &volume])?;
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
        let ip = crate::render::config::primary_ip(&self.nodes[i].spec)?;
        let peer_url = crate::render::config::url("https", &ip, crate::render::config::PEER_PORT);
        self.phase(&format!("member add {name} --learner"));
        // etcd refuses a reconfiguration ("unhealthy cluster") until every voting member has been
        // connected for 5 s (--strict-reconfig-check), which the removal may have just changed.
        let add = ["member", "add", name.as_str(), "--learner", &format!("--peer-urls={peer_url}")];
        let (added, _) = self.poll(
            &format!("etcdctl {} still answered `unhealthy cluster`", add.join(" ")),
            Duration::from_secs(30),
            Duration::from_millis(500),
            |run| match stdout_or_stderr(run.etcdctl(&others, &add)?) {
                Err(e) if !e.contains("unhealthy cluster") => bail!("etcdctl {} failed: {e}", add.join(" ")),
                r => Ok(r),
            },
        )?;
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
        podman(&["volume", "create", "--label", &label(&self.spec.name), &volume])?;
        let args = self.container_args(&self.nodes[i])?;
        podman_checked(&args).with_context(|| format!("cannot start the new {name}"))?;
        // Promote once the learner has caught up ("can only promote a learner member which is in
        // sync with leader" until then).
        self.phase(&format!("{name} learning"));
        let (_, tries) = self.poll(
            &format!("the learner {new_id} was not promoted"),
            HEALTHY_TIMEOUT,
            Duration::from_millis(250),
            |run| Ok(stdout_or_stderr(run.etcdctl(&others, &["member", "promote", &new_id])?)),
        )?;
        let promoted = t.elapsed().as_secs_f64();
        self.phase(&format!("{name} promoted"));
        self.wait_healthy(&[0, 1, 2], HEALTHY_TIMEOUT)?;
        let healthy = t.elapsed().as_secs_f64();
        self.member_healthy.push((name.clone(), healthy));
        self.timings.insert("replace_member_healthy".into(), healthy);
        let members = self.members()?;
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
            c.check_upgraded(plan)
        });
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
        Ok(format!("3/3 healthy, no alarms, snapshot of {size} bytes kept in {}", crate::util::display_rel(&snap)))
    }

    fn do_upgrade(&mut self, plan: &UpgradePlan) -> Result<String> {
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

    fn check_upgraded(&mut self, plan: &UpgradePlan) -> Result<String> {
        self.phase("after the upgrade");
        let status: serde_json::Value =
            serde_json::from_str(&self.etcdctl_ok(&[0, 1, 2], &["endpoint", "status", "-w", "json"])?)
                .context("endpoint status printed no JSON")?;
        let versions: Vec<String> = status
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|s| s["Status"]["version"].as_str().unwrap_or("?").to_string())
            .collect();
        if versions.len() != 3 || versions.iter().any(|v| v != &plan.to) {
            bail!("members report {versions:?}, expected {} three times", plan.to);
        }
        // The leader raises the cluster version once every member runs the new release.
        let want = crate::definition::release_line(&plan.to) + ".0";
        let t = Instant::now();
        let (cluster, _) = self.poll(
            &format!("the cluster version did not become {want}"),
            Duration::from_secs(60),
            Duration::from_millis(500),
            |run| {
                let c = run.version_json(0)?["etcdcluster"].as_str().unwrap_or_default().to_string();
                Ok(if c == want { Ok(c) } else { Err(format!("it is {c:?}")) })
            },
        )?;
        Ok(format!(
            "members report {}; cluster version {cluster} (after {:.1} s)",
            versions.join(", "),
            t.elapsed().as_secs_f64()
        ))
    }

    /// `GET /version` of node `i` with the client certificate.
    fn version_json(&self, i: usize) -> Result<serde_json::Value> {
        let url = format!("https://127.0.0.1:{}/version", self.nodes[i].client_port);
        let out = self.curl(&self.client_tls_args(), &url)?;
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("{url}: not JSON: {}", String::from_utf8_lossy(&out.stderr).trim()))
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
