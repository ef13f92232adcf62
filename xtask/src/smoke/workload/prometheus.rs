//! Debian's Prometheus beside a smoke cluster whose description has `[monitoring]`: it scrapes
//! the members with the configuration `render` writes (each member's address over mutual TLS,
//! the scrape client's certificate), evaluates the generated rules with time compressed
//! [`SCALE`] times (a 3-minute `for:` waits 3 s; scrapes every second), and the scenarios ask
//! its `/api/v1/alerts` whether the alert meant for the fault they inject fires, and resolves
//! after the heal. Alertmanager is not needed.
//! In: the cluster description and its PKI. Out: a running Prometheus (stopped when dropped)
//! and its answers: alerts, series, targets.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::pki::cluster::ClusterSpec;
use crate::render::monitoring::{self, Clock};
use crate::smoke::local::{free_port, KillOnDrop};

/// How many times faster than production the smoke test's rules run.
pub const SCALE: u64 = 60;
/// PromQL: whether each member's TLS probe succeeded, and the expiry it saw (unix seconds).
pub(crate) const PROBED: &str = "probe_success{job=\"etcd-tls\"}";
pub(crate) const EXPIRY: &str = "probe_ssl_earliest_cert_expiry{job=\"etcd-tls\"}";

pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Whether every one of the three members' probed expiry is later in `now` than in `before`.
pub(crate) fn expiry_moved(before: &BTreeMap<String, f64>, now: &BTreeMap<String, f64>) -> bool {
    before.len() == 3 && before.iter().all(|(i, old)| now.get(i).is_some_and(|new| new > old))
}

/// How much later each member's probed expiry is in `after`: "10.0.0.1:2379 +8 s, ...".
pub(crate) fn expiry_gained(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> String {
    let each: Vec<String> =
        after.iter().map(|(i, new)| format!("{i} +{:.0} s", new - before.get(i).copied().unwrap_or(0.0))).collect();
    each.join(", ")
}

/// Debian's blackbox exporter.
const BLACKBOX: &str = "prometheus-blackbox-exporter";
/// Scrape and evaluation interval of the smoke test's Prometheus.
const INTERVAL: &str = "1s";
/// Bound of the waits for an alert to fire or resolve: its `for:` (at most 10 s compressed),
/// a scrape and an evaluation, with room for a loaded machine.
pub(crate) const ALERT_BOUND: Duration = Duration::from_secs(45);
/// Bound of the wait for Prometheus to be ready.
const READY: Duration = Duration::from_secs(30);

/// One alert as Prometheus reports it.
#[derive(Debug, Clone)]
pub struct Alert {
    pub name: String,
    /// `pending` or `firing`.
    pub state: String,
}

/// A Prometheus process of ours and the blackbox exporter it probes TLS ports through, both
/// stopped when dropped.
pub struct Prometheus {
    url: String,
    /// Where the scrape client's certificate, key and CA are read from at each connection.
    certs: std::path::PathBuf,
    agent: ureq::Agent,
    _prometheus: KillOnDrop,
    _blackbox: KillOnDrop,
}

impl Prometheus {
    /// Writes the monitoring directory into `dir` (from the cluster's PKI at `pki`) and starts
    /// Prometheus on it, on a loopback port of its own; waits (bounded) until it is ready.
    pub fn start(dir: &Path, spec: &ClusterSpec, pki: &Path) -> Result<Prometheus> {
        for (tool, package) in [("prometheus", "prometheus"), (BLACKBOX, "prometheus-blackbox-exporter")] {
            if !crate::util::on_path(tool) {
                bail!(
                    "the cluster description has [monitoring], and its alerts are proven live with Debian's \
                     Prometheus and blackbox exporter; {tool} is not installed: apt-get install {package}"
                );
            }
        }
        // The files where the README's recipe installs them, under a root of the run's own
        // (`<dir>/etc/prometheus` stands for `/etc/prometheus`), and both daemons started as
        // Debian's units start them: working directory `/`, configuration by absolute path.
        let dir = std::path::absolute(dir).with_context(|| format!("cannot make {} absolute", dir.display()))?;
        let etc = dir.join("etc/prometheus");
        fs::create_dir_all(&etc).with_context(|| format!("cannot create {}", etc.display()))?;
        let config_dir = etc.to_str().with_context(|| format!("{} is not UTF-8", etc.display()))?;
        if let Some(problem) = crate::pki::cluster::config_dir_problem(config_dir) {
            bail!("the smoke test's Prometheus directory {config_dir:?} {problem}: run it from another directory");
        }
        let bport = free_port()?;
        let blackbox_at = format!("127.0.0.1:{bport}");
        let host =
            monitoring::Host { config_dir, interval: INTERVAL, blackbox: &blackbox_at, clock: Clock { scale: SCALE } };
        // No node exporter beside the members: the backups' job is left out.
        let scrape = monitoring::Scrape { backup_port: None, ..monitoring::Scrape::nodes(spec)? };
        monitoring::write_with(&etc, spec, pki, &scrape, &host)?;
        let blog = fs::File::create(dir.join("blackbox.log"))
            .with_context(|| format!("cannot create {}", dir.join("blackbox.log").display()))?;
        let blackbox = Command::new(BLACKBOX)
            .arg(format!("--config.file={}", etc.join("blackbox.yml").display()))
            .arg(format!("--web.listen-address={blackbox_at}"))
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(blog.try_clone().context("cannot share the blackbox exporter's log")?)
            .stderr(blog)
            .spawn()
            .map(KillOnDrop)
            .with_context(|| format!("cannot start {BLACKBOX}"))?;
        let port = free_port()?;
        let log = fs::File::create(dir.join("prometheus.log"))
            .with_context(|| format!("cannot create {}", dir.join("prometheus.log").display()))?;
        let prometheus = Command::new("prometheus")
            .arg(format!("--config.file={}", etc.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=1d")
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cannot share the Prometheus log")?)
            .stderr(log)
            .spawn()
            .map(KillOnDrop)
            .context("cannot start prometheus")?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .build()
            .into();
        let p = Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            certs: etc.join(monitoring::cert_dir(&spec.name)),
            agent,
            _prometheus: prometheus,
            _blackbox: blackbox,
        };
        let t = Instant::now();
        loop {
            let ready = p.agent.get(format!("{}/-/ready", p.url)).call().map(|r| r.status() == 200).unwrap_or(false);
            if ready {
                return Ok(p);
            }
            if t.elapsed() > READY {
                bail!("Prometheus was not ready within {READY:?}: see {}", dir.join("prometheus.log").display());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// GET `path` with the `query` parameters (percent-encoded by ureq), as JSON.
    fn get_json(&self, path: &str, query: &[(&str, &str)]) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.url);
        let mut resp = self
            .agent
            .get(&url)
            .query_pairs(query.iter().copied())
            .call()
            .with_context(|| format!("GET {url} {query:?}"))?;
        let text = resp.body_mut().read_to_string().with_context(|| format!("GET {url}: the body"))?;
        serde_json::from_str(&text).with_context(|| format!("GET {url}: not JSON: {text}"))
    }

    /// An instant query: each series' `instance` label and value.
    pub fn query(&self, promql: &str) -> Result<BTreeMap<String, f64>> {
        self.query_by(promql, "instance")
    }

    /// An instant query: each series' `label` and value.
    pub fn query_by(&self, promql: &str, label: &str) -> Result<BTreeMap<String, f64>> {
        let v = self.get_json("/api/v1/query", &[("query", promql)])?;
        let mut out = BTreeMap::new();
        for r in v["data"]["result"].as_array().with_context(|| format!("{promql}: no data.result: {v}"))? {
            let instance = r["metric"][label].as_str().unwrap_or_default().to_string();
            let value = r["value"][1].as_str().and_then(|s| s.parse::<f64>().ok()).unwrap_or(f64::NAN);
            out.insert(instance, value);
        }
        Ok(out)
    }

    /// The operator's step on the Prometheus host when the PKI changed: the scrape client's
    /// current CA bundle, certificate and key from `client_dir` replace the ones Prometheus and
    /// the blackbox exporter read (both read them anew for each connection: no reload).
    pub fn take_certs(&self, client_dir: &Path) -> Result<()> {
        for file in ["ca.crt", "client.crt", "client.key"] {
            let src = client_dir.join(file);
            let bytes = fs::read(&src).with_context(|| format!("cannot read {}", src.display()))?;
            crate::util::write_atomic(
                &self.certs.join(file),
                &bytes,
                if file.ends_with(".key") { 0o600 } else { 0o644 },
            )?;
        }
        Ok(())
    }

    /// The alerts pending or firing now.
    pub fn alerts(&self) -> Result<Vec<Alert>> {
        let v = self.get_json("/api/v1/alerts", &[])?;
        let list = v["data"]["alerts"].as_array().context("/api/v1/alerts: no data.alerts")?;
        Ok(list
            .iter()
            .map(|a| Alert {
                name: a["labels"]["alertname"].as_str().unwrap_or_default().to_string(),
                state: a["state"].as_str().unwrap_or_default().to_string(),
            })
            .collect())
    }

    /// How many members each target health says are scraped successfully (`up`), by job.
    pub fn targets_up(&self) -> Result<BTreeMap<String, (usize, usize)>> {
        let v = self.get_json("/api/v1/targets", &[("state", "active")])?;
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
