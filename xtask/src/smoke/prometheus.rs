//! Debian's Prometheus beside a smoke cluster whose description has `[monitoring]`: it scrapes
//! the members with the configuration `render` writes (each member's address over mutual TLS,
//! the scrape client's certificate), evaluates the generated rules with time compressed
//! [`SCALE`] times (a 3-minute `for:` waits 3 s; scrapes every second), and the scenarios ask
//! its `/api/v1/alerts` whether the alert meant for the fault they inject fires, and resolves
//! after the heal. Alertmanager is not needed.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::cluster::Cluster;
use crate::pki::cluster::ClusterSpec;
use crate::render::monitoring::{self, Clock};

/// How many times faster than production the smoke test's rules run.
pub const SCALE: u64 = 60;
/// Scrape and evaluation interval of the smoke test's Prometheus.
const INTERVAL: &str = "1s";
/// Bound of the waits for an alert to fire or resolve: its `for:` (at most 10 s compressed),
/// a scrape and an evaluation, with room for a loaded machine.
const ALERT_BOUND: Duration = Duration::from_secs(45);
/// Bound of the wait for Prometheus to be ready.
const READY: Duration = Duration::from_secs(30);

/// One alert as Prometheus reports it.
#[derive(Debug, Clone)]
pub struct Alert {
    pub name: String,
    /// `pending` or `firing`.
    pub state: String,
}

/// A Prometheus process of ours, stopped when dropped.
pub struct Prometheus {
    child: Child,
    url: String,
    agent: ureq::Agent,
}

impl Prometheus {
    /// Writes the monitoring directory into `dir` (from the cluster's PKI at `pki`) and starts
    /// Prometheus on it, on a loopback port of its own; waits (bounded) until it is ready.
    pub fn start(dir: &Path, spec: &ClusterSpec, pki: &Path) -> Result<Prometheus> {
        if !crate::util::on_path("prometheus") {
            bail!(
                "the cluster description has [monitoring], and its alerts are proven live with Debian's Prometheus, \
                 which is not installed: apt-get install prometheus"
            );
        }
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        monitoring::write_with(dir, spec, pki, &Clock { scale: SCALE }, INTERVAL)?;
        let port = super::cluster::free_port()?;
        let log = fs::File::create(dir.join("prometheus.log"))
            .with_context(|| format!("cannot create {}", dir.join("prometheus.log").display()))?;
        let child = Command::new("prometheus")
            .arg("--config.file=prometheus.yml")
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=1d")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cannot share the Prometheus log")?)
            .stderr(log)
            .spawn()
            .context("cannot start prometheus")?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .build()
            .into();
        let p = Prometheus { child, url: format!("http://127.0.0.1:{port}"), agent };
        let t = Instant::now();
        loop {
            let ready = p.agent.get(&format!("{}/-/ready", p.url)).call().map(|r| r.status() == 200).unwrap_or(false);
            if ready {
                return Ok(p);
            }
            if t.elapsed() > READY {
                bail!("Prometheus was not ready within {READY:?}: see {}", dir.join("prometheus.log").display());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.url);
        let mut resp = self.agent.get(&url).call().with_context(|| format!("GET {url}"))?;
        let text = resp.body_mut().read_to_string().with_context(|| format!("GET {url}: the body"))?;
        serde_json::from_str(&text).with_context(|| format!("GET {url}: not JSON: {text}"))
    }

    /// The alerts pending or firing now.
    pub fn alerts(&self) -> Result<Vec<Alert>> {
        let v = self.get_json("/api/v1/alerts")?;
        let list = v["data"]["alerts"].as_array().context("/api/v1/alerts: no data.alerts")?;
        Ok(list
            .iter()
            .map(|a| {
                let labels: BTreeMap<String, String> = a["labels"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                    .unwrap_or_default();
                Alert {
                    name: labels.get("alertname").cloned().unwrap_or_default(),
                    state: a["state"].as_str().unwrap_or_default().to_string(),
                }
            })
            .collect())
    }

    /// How many members each target health says are scraped successfully (`up`), by job.
    pub fn targets_up(&self) -> Result<BTreeMap<String, (usize, usize)>> {
        let v = self.get_json("/api/v1/targets?state=active")?;
        let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for t in v["data"]["activeTargets"].as_array().context("/api/v1/targets: no activeTargets")? {
            let job = t["labels"]["job"].as_str().unwrap_or_default().to_string();
            let e = out.entry(job).or_default();
            e.1 += 1;
            if t["health"] == "up" {
                e.0 += 1;
            }
        }
        Ok(out)
    }

    /// Waits (bounded) until every alert of `names` fires (`firing`) or none of them is pending
    /// or firing (`!firing`); the seconds each took from now, in the order of `names`.
    pub fn wait(&self, names: &[&str], firing: bool, bound: Duration) -> Result<Vec<f64>> {
        let t = Instant::now();
        let mut took: Vec<Option<f64>> = vec![None; names.len()];
        loop {
            let alerts = self.alerts()?;
            for (i, name) in names.iter().enumerate() {
                let on = alerts.iter().any(|a| a.name == *name && (a.state == "firing" || !firing));
                if took[i].is_none() && on == firing {
                    took[i] = Some(t.elapsed().as_secs_f64());
                }
            }
            if took.iter().all(Option::is_some) {
                return Ok(took.into_iter().flatten().collect());
            }
            if t.elapsed() > bound {
                let missing: Vec<&str> =
                    names.iter().zip(&took).filter(|(_, t)| t.is_none()).map(|(n, _)| *n).collect();
                let now: Vec<String> = alerts.iter().map(|a| format!("{} ({})", a.name, a.state)).collect();
                bail!(
                    "{} {} within {bound:?} (alerts now: {})",
                    missing.join(", "),
                    if firing { "did not fire" } else { "did not resolve" },
                    if now.is_empty() { "none".to_string() } else { now.join(", ") }
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Cluster {
    /// Starts Prometheus on this cluster (the rendered configuration, time compressed) and
    /// waits (bounded) until it has scraped all three members with the scrape client.
    pub(super) fn start_prometheus(&mut self) -> Result<String> {
        let p = Prometheus::start(&self.out.join("prometheus"), &self.spec, &self.pki.root)?;
        let t = Instant::now();
        let (up, _) = self.poll(
            "Prometheus did not scrape all three members",
            Duration::from_secs(30),
            Duration::from_millis(250),
            |_| {
                let up = p.targets_up()?;
                let members = up.get(crate::render::monitoring::JOB).copied().unwrap_or_default();
                Ok(if members == (3, 3) { Ok(members) } else { Err(format!("{members:?} of the members' targets up")) })
            },
        )?;
        let quiet = p.alerts()?;
        let note = format!(
            "{}/{} members scraped over https with the scrape client's certificate after {:.1} s (rules {}x time \
             compressed); alerts on a healthy cluster: {}",
            up.0,
            up.1,
            t.elapsed().as_secs_f64(),
            SCALE,
            if quiet.is_empty() {
                "none".to_string()
            } else {
                quiet.iter().map(|a| a.name.clone()).collect::<Vec<_>>().join(", ")
            }
        );
        self.prometheus = Some(p);
        Ok(note)
    }

    /// With Prometheus watching: waits (bounded) for `names` to fire, counting from `since`
    /// (when the fault was injected); a note with each one's time, or why not.
    pub(super) fn alerts_fire(&self, names: &[&str], since: Instant) -> Option<Result<String>> {
        let p = self.prometheus.as_ref()?;
        let before = since.elapsed().as_secs_f64();
        Some(p.wait(names, true, ALERT_BOUND).map(|took| {
            let each: Vec<String> = names.iter().zip(took).map(|(n, s)| format!("{n} {:.1} s", before + s)).collect();
            format!("fired after the fault: {}", each.join(", "))
        }))
    }

    /// With Prometheus watching: waits (bounded) for `names` to resolve, counting from `since`.
    pub(super) fn alerts_resolve(&self, names: &[&str], since: Instant) -> Option<Result<String>> {
        let p = self.prometheus.as_ref()?;
        let before = since.elapsed().as_secs_f64();
        Some(p.wait(names, false, ALERT_BOUND).map(|took| {
            let each: Vec<String> = names.iter().zip(took).map(|(n, s)| format!("{n} {:.1} s", before + s)).collect();
            format!("resolved after the heal: {}", each.join(", "))
        }))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
