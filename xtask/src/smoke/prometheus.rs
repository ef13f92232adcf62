//! Debian's Prometheus beside a smoke cluster whose description has `[monitoring]`: it scrapes
//! the members with the configuration `render` writes (each member's address over mutual TLS,
//! the scrape client's certificate), evaluates the generated rules with time compressed
//! [`SCALE`] times (a 3-minute `for:` waits 3 s; scrapes every second), and the scenarios ask
//! its `/api/v1/alerts` whether the alert meant for the fault they inject fires, and resolves
//! after the heal. Alertmanager is not needed.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::cluster::Cluster;
use super::KillOnDrop;
use crate::pki::cluster::ClusterSpec;
use crate::render::monitoring::{self, Clock};

/// How many times faster than production the smoke test's rules run.
pub const SCALE: u64 = 60;
/// PromQL: whether each member's TLS probe succeeded, and the expiry it saw (unix seconds).
const PROBED: &str = "probe_success{job=\"etcd-tls\"}";
const EXPIRY: &str = "probe_ssl_earliest_cert_expiry{job=\"etcd-tls\"}";

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Whether every one of the three members' probed expiry is later in `now` than in `before`.
fn expiry_moved(before: &BTreeMap<String, f64>, now: &BTreeMap<String, f64>) -> bool {
    before.len() == 3 && before.iter().all(|(i, old)| now.get(i).is_some_and(|new| new > old))
}

/// How much later each member's probed expiry is in `after`: "10.0.0.1:2379 +8 s, ...".
fn expiry_gained(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> String {
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
        let bport = super::cluster::free_port()?;
        let blackbox_at = format!("127.0.0.1:{bport}");
        let host =
            monitoring::Host { config_dir, interval: INTERVAL, blackbox: &blackbox_at, clock: Clock { scale: SCALE } };
        monitoring::write_with(&etc, spec, pki, &monitoring::Scrape::nodes(spec)?, &host)?;
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
        let port = super::cluster::free_port()?;
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
                let probes = p.query(PROBED)?;
                Ok(if members == (3, 3) && probes.len() == 3 && probes.values().all(|v| *v == 1.0) {
                    Ok(members)
                } else {
                    Err(format!("{members:?} of the members' targets up, TLS probes {probes:?}"))
                })
            },
        )?;
        let expiry = p.query(EXPIRY)?;
        let days = expiry.values().fold(f64::INFINITY, |a, b| a.min(*b)) - unix_now();
        // An alert that found no series at Prometheus's first evaluations (the probes had not
        // run yet) is pending until the next one: give the rules an evaluation or two.
        let quiet = match p.wait(&monitoring::alert_names(), false, Duration::from_secs(10)) {
            Ok(_) => Vec::new(),
            Err(_) => p.alerts()?,
        };
        let note = format!(
            "{}/{} members scraped over https with the scrape client's certificate and their client ports probed by \
             the blackbox exporter after {:.1} s (rules {}x time compressed); earliest certificate expiry the probes \
             see: in {:.0} days; alerts on a healthy cluster: {}",
            up.0,
            up.1,
            t.elapsed().as_secs_f64(),
            SCALE,
            days / 86400.0,
            if quiet.is_empty() {
                "none".to_string()
            } else {
                quiet.iter().map(|a| a.name.clone()).collect::<Vec<_>>().join(", ")
            }
        );
        self.prometheus = Some(p);
        Ok(note)
    }

    /// With Prometheus watching: each member's certificate expiry as its TLS probe sees it.
    pub(super) fn probed_expiry(&self) -> Option<Result<BTreeMap<String, f64>>> {
        self.prometheus.as_ref().map(|p| p.query(EXPIRY))
    }

    /// With Prometheus watching: waits (bounded) until every member's probed expiry is later than
    /// in `before` (renewed certificates served), and checks the expiry alert stays quiet.
    pub(super) fn probed_expiry_moved(&self, before: &BTreeMap<String, f64>) -> Option<Result<String>> {
        let p = self.prometheus.as_ref()?;
        let t = Instant::now();
        Some((|| {
            let (after, _) = self.poll(
                "the TLS probes did not see the renewed certificates",
                ALERT_BOUND,
                Duration::from_millis(250),
                |_| {
                    let now = p.query(EXPIRY)?;
                    let moved = expiry_moved(before, &now);
                    Ok(if moved { Ok(now) } else { Err(format!("before {before:?}, now {now:?}")) })
                },
            )?;
            let expiring: Vec<String> =
                p.alerts()?.into_iter().filter(|a| a.name == "etcdCertificateExpiresSoon").map(|a| a.state).collect();
            if !expiring.is_empty() {
                bail!("etcdCertificateExpiresSoon is {} after the renewal", expiring.join(", "));
            }
            Ok(format!(
                "the TLS probes saw the new dates {:.1} s after the renewal ({}); etcdCertificateExpiresSoon quiet",
                t.elapsed().as_secs_f64(),
                expiry_gained(before, &after)
            ))
        })())
    }

    /// With Prometheus watching: hands it the scrape client's current files, as the operator
    /// does on the Prometheus host after each step of a CA rotation, and waits (bounded) until
    /// it has scraped all three members with them; the seconds that took.
    pub(super) fn prometheus_restage(&self) -> Result<Option<f64>> {
        let (Some(p), Some(m)) = (&self.prometheus, &self.spec.monitoring) else { return Ok(None) };
        p.take_certs(&self.pki.client_dir(&m.scrape_client))?;
        let (t, since) = (Instant::now(), unix_now());
        let sel = format!("job=\"{}\"", monitoring::JOB);
        let fresh = format!("count((up{{{sel}}} == 1) and (timestamp(up{{{sel}}}) > {since:.3}))");
        self.poll(
            "Prometheus did not scrape all three members with the new files",
            ALERT_BOUND,
            Duration::from_millis(250),
            |_| {
                let n = p.query(&fresh)?.values().next().copied().unwrap_or(0.0);
                Ok(if n == 3.0 { Ok(()) } else { Err(format!("{n} of 3 members scraped since the files changed")) })
            },
        )?;
        Ok(Some(t.elapsed().as_secs_f64()))
    }

    /// With Prometheus watching, after a CA rotation that began at `since` with the probes
    /// seeing the expiry dates `before`: waits (bounded) until all three members are scraped and
    /// probed under the new CA with later dates, then asks Prometheus which alerts fired during
    /// the rotation: a certificate as expiring fails it. The member alerts are not judged: with
    /// time compressed 60 times, three restarts in a row are a quarter of an hour of a member
    /// down, and a scrape gap as one restart ends and the next begins is minutes of two (the
    /// quorum is judged by the client load instead: no request may fail in this scenario).
    /// `steps` says how soon Prometheus scraped all three with the files of each step (their
    /// TLS checked as they changed).
    pub(super) fn monitoring_after_rotation(
        &self,
        before: &BTreeMap<String, f64>,
        since: Instant,
        steps: &[String],
    ) -> Option<Result<String>> {
        let p = self.prometheus.as_ref()?;
        let t = Instant::now();
        Some((|| {
            let (after, _) = self.poll(
                "Prometheus did not scrape and probe every member under the new CA",
                ALERT_BOUND,
                Duration::from_millis(250),
                |_| {
                    let up = p.targets_up()?.get(monitoring::JOB).copied().unwrap_or_default();
                    let probes = p.query(PROBED)?;
                    let now = p.query(EXPIRY)?;
                    let moved = expiry_moved(before, &now);
                    Ok(if up == (3, 3) && probes.values().filter(|v| **v == 1.0).count() == 3 && moved {
                        Ok(now)
                    } else {
                        Err(format!("{up:?} members up, probes {probes:?}, expiry before {before:?}, now {now:?}"))
                    })
                },
            )?;
            let window = since.elapsed().as_secs() + 2;
            let fired =
                p.query_by(&format!("max_over_time(ALERTS{{alertstate=\"firing\"}}[{window}s])"), "alertname")?;
            let forbidden = ["etcdCertificateExpiresSoon"];
            let bad: Vec<&String> = fired.keys().filter(|a| forbidden.contains(&a.as_str())).collect();
            if !bad.is_empty() {
                bail!("during the CA rotation {bad:?} fired (all alerts that fired: {:?})", fired.keys());
            }
            let others = if fired.is_empty() {
                "none".to_string()
            } else {
                format!(
                    "{} (the rolling restarts, with time compressed)",
                    fired.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            };
            Ok(format!(
                "its files copied to Prometheus at each step, no reload: all three scraped with them after {}; \
                 scraped and probed under the new CA {:.1} s after the last restart ({}); fired during the \
                 {window} s of the rotation: {others}; never {}",
                steps.join(", "),
                t.elapsed().as_secs_f64(),
                expiry_gained(before, &after),
                forbidden.join(", ")
            ))
        })())
    }

    /// With Prometheus watching: that none of `names` is pending or firing now.
    pub(super) fn alerts_quiet(&self, names: &[&str]) -> Option<Result<String>> {
        let p = self.prometheus.as_ref()?;
        Some(p.alerts().and_then(|now| {
            let loud: Vec<String> = now
                .iter()
                .filter(|a| names.contains(&a.name.as_str()))
                .map(|a| format!("{} ({})", a.name, a.state))
                .collect();
            if loud.is_empty() {
                Ok(format!("quiet: {}", names.join(", ")))
            } else {
                bail!("{} should be quiet now", loud.join(", "))
            }
        }))
    }

    /// With Prometheus watching: waits (bounded) for `names` to fire, counting from `since`
    /// (when the fault was injected); a note with each one's time, or why not.
    pub(super) fn alerts_fire(&self, names: &[&str], since: Instant) -> Option<Result<String>> {
        self.alerts_wait(names, true, since)
    }

    /// With Prometheus watching: waits (bounded) for `names` to resolve, counting from `since`.
    pub(super) fn alerts_resolve(&self, names: &[&str], since: Instant) -> Option<Result<String>> {
        self.alerts_wait(names, false, since)
    }

    fn alerts_wait(&self, names: &[&str], firing: bool, since: Instant) -> Option<Result<String>> {
        let p = self.prometheus.as_ref()?;
        let before = since.elapsed().as_secs_f64();
        Some(p.wait(names, firing, ALERT_BOUND).map(|took| {
            let each: Vec<String> = names.iter().zip(took).map(|(n, s)| format!("{n} {:.1} s", before + s)).collect();
            let what = if firing { "fired after the fault" } else { "resolved after the heal" };
            format!("{what}: {}", each.join(", "))
        }))
    }

    /// Records the check `name` from the alert waits' notes (none without Prometheus).
    pub(super) fn record_alerts(&mut self, name: &str, since: Instant, alerts: Vec<Result<String>>) {
        if !alerts.is_empty() {
            let result = alerts.into_iter().collect::<Result<Vec<_>>>().map(|v| v.join("; "));
            self.record(name, since, result);
        }
    }
}
