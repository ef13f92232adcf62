//! `cargo xtask pki bench`: how long issuing the full certificate set of a cluster takes, next to
//! the tutorial's cfssl procedure for the same set, timed in the same run.
//!
//! Ours: [`issue`] into a fresh directory (two CAs when the profiles separate the peer CA, then a
//! server and a peer certificate per node and a client certificate per identity, plus the token,
//! `cluster.toml` and `manifest.json`), all made durable together (`AtomicBatch`: two `syncfs`).
//!
//! cfssl (Debian's `golang-cfssl`, used only when `cfssl` and `cfssljson` are on PATH): the
//! tutorial's steps for the same set: `cfssl gencert -initca ca-csr.json | cfssljson -bare ca`
//! (RSA 2048), then per node `cfssl gencert -ca=ca.pem -ca-key=ca-key.pem -config=ca-config.json
//! -profile=server|peer` and per identity `-profile=client` (ECDSA P-256, 43800h), each piped
//! into `cfssljson -bare NAME`. The JSON inputs are written before the clock starts; both sides
//! work in fresh directories under `target/pki-bench/` or `--dir` (one filesystem), removed
//! afterwards. Ours flushes what it writes to disk (cfssljson does not), so on a busy disk much of
//! our time is that flush; `--dir` on a tmpfs leaves it out.
//!
//! Each side runs N times; the median is reported, and the ratio ours/cfssl against the goal.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::cluster::{ClusterSpec, San};
use super::issue::issue;
use super::profiles::Profiles;
use crate::util::{on_path, StagingDir};

/// The goal: issuing the set takes at most this fraction of the tutorial's cfssl procedure.
pub const GOAL_RATIO: f64 = 0.1;

/// The tutorial's lifetime of every certificate.
const CFSSL_EXPIRY: &str = "43800h";

/// Timings of one side: every run, in order.
#[derive(Debug, Clone)]
pub struct Timings {
    pub runs: Vec<Duration>,
}

impl Timings {
    /// The median run (the mean of the two middle runs for an even count).
    pub fn median(&self) -> Duration {
        let mut sorted = self.runs.clone();
        sorted.sort();
        match sorted.len() {
            0 => Duration::ZERO,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
        }
    }
}

/// What `pki bench` measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub cluster: String,
    /// Where the runs worked.
    pub dir: PathBuf,
    pub nodes: usize,
    pub clients: usize,
    /// Certificates in our set (CAs included).
    pub ours_certs: usize,
    /// Certificates in the cfssl set (its one CA included).
    pub cfssl_certs: usize,
    pub ours: Timings,
    /// `None` when cfssl or cfssljson is not installed.
    pub cfssl: Option<Timings>,
}

impl BenchReport {
    /// ours / cfssl (medians), when cfssl was measured.
    pub fn ratio(&self) -> Option<f64> {
        let cfssl = self.cfssl.as_ref()?.median().as_secs_f64();
        (cfssl > 0.0).then(|| self.ours.median().as_secs_f64() / cfssl)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn all_runs(t: &Timings) -> String {
    t.runs.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "pki bench: cluster {}: {} node(s), {} client identity(ies); median of {} run(s) in {}",
            self.cluster,
            self.nodes,
            self.clients,
            self.ours.runs.len(),
            self.dir.display()
        )?;
        writeln!(
            f,
            "ours  (cargo xtask pki, {} certificates): median {} (runs: {})",
            self.ours_certs,
            ms(self.ours.median()),
            all_runs(&self.ours)
        )?;
        match (&self.cfssl, self.ratio()) {
            (Some(cfssl), Some(ratio)) => {
                writeln!(
                    f,
                    "cfssl (the tutorial's procedure, {} certificates): median {} (runs: {})",
                    self.cfssl_certs,
                    ms(cfssl.median()),
                    all_runs(cfssl)
                )?;
                writeln!(
                    f,
                    "ratio ours/cfssl: {ratio:.3}x (goal: at most {GOAL_RATIO}x): {}",
                    if ratio <= GOAL_RATIO { "met" } else { "NOT met" }
                )
            }
            (Some(cfssl), None) => writeln!(f, "cfssl: median {}: ratio not measured", ms(cfssl.median())),
            (None, _) => writeln!(f, "cfssl not installed: ratio not measured (apt-get install golang-cfssl)"),
        }
    }
}

/// Where the bench works by default: `target/pki-bench/`.
pub fn default_dir() -> PathBuf {
    crate::util::target_dir().join("pki-bench")
}

/// Times `runs` issuings of `spec` (and the cfssl procedure when installed) in fresh
/// directories under `root`.
pub fn bench(spec: &ClusterSpec, profiles: &Profiles, runs: usize, root: &Path) -> Result<BenchReport> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;

    let mut ours = Timings { runs: Vec::with_capacity(runs) };
    for i in 0..runs {
        let dir = StagingDir::beside(&root.join(format!("ours-{i}")))?;
        let out = dir.path().join(&spec.name);
        let start = Instant::now();
        issue(spec, profiles, &out, false)
            .with_context(|| format!("cannot issue the PKI of {} into {}", spec.name, out.display()))?;
        ours.runs.push(start.elapsed());
    }
    let cas = if profiles.ca.separate_peer_ca { 2 } else { 1 };
    let leaves = 2 * spec.nodes.len() + spec.clients.len();

    let cfssl = if on_path("cfssl") && on_path("cfssljson") {
        let mut t = Timings { runs: Vec::with_capacity(runs) };
        for i in 0..runs {
            let dir = StagingDir::beside(&root.join(format!("cfssl-{i}")))?;
            let steps = write_cfssl_inputs(spec, dir.path())?;
            let start = Instant::now();
            for step in &steps {
                step.run(dir.path())?;
            }
            t.runs.push(start.elapsed());
            for step in &steps {
                let pem = dir.path().join(format!("{}.pem", step.bare));
                if !pem.is_file() {
                    bail!("cfssl left no {}", pem.display());
                }
            }
        }
        Some(t)
    } else {
        None
    };
    Ok(BenchReport {
        cluster: spec.name.clone(),
        dir: root.to_path_buf(),
        nodes: spec.nodes.len(),
        clients: spec.clients.len(),
        ours_certs: cas + leaves,
        cfssl_certs: 1 + leaves,
        ours,
        cfssl,
    })
}

/// One `cfssl gencert ... | cfssljson -bare NAME` of the tutorial.
#[derive(Debug)]
struct CfsslStep {
    /// Arguments of `cfssl`.
    args: Vec<String>,
    /// The `-bare` name: `NAME.pem`, `NAME-key.pem`, `NAME.csr`.
    bare: String,
}

impl CfsslStep {
    fn run(&self, dir: &Path) -> Result<()> {
        let log_path = dir.join(format!("{}.cfssl.log", self.bare));
        let log = fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut gencert = Command::new("cfssl")
            .args(&self.args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .context("cannot start cfssl")?;
        let pipe = gencert.stdout.take().context("cfssl has no stdout pipe")?;
        let json =
            Command::new("cfssljson").args(["-bare", &self.bare]).current_dir(dir).stdin(Stdio::from(pipe)).output();
        let status = gencert.wait().context("cannot wait for cfssl")?;
        let json = json.context("cannot run cfssljson")?;
        if !status.success() {
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            bail!("cfssl {} failed ({status}):\n{log}", self.args.join(" "));
        }
        if !json.status.success() {
            bail!("cfssljson -bare {} failed ({}):\n{}", self.bare, json.status, String::from_utf8_lossy(&json.stderr));
        }
        Ok(())
    }
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot serialize JSON")?;
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes the tutorial's `ca-config.json`, `ca-csr.json` and one CSR file per certificate into
/// `dir`; returns the steps in the tutorial's order (CA first).
fn write_cfssl_inputs(spec: &ClusterSpec, dir: &Path) -> Result<Vec<CfsslStep>> {
    let profile = |usages: &[&str]| json!({ "expiry": CFSSL_EXPIRY, "usages": usages });
    write_json(
        &dir.join("ca-config.json"),
        &json!({
            "signing": {
                "default": { "expiry": CFSSL_EXPIRY },
                "profiles": {
                    "server": profile(&["signing", "key encipherment", "server auth"]),
                    "client": profile(&["signing", "key encipherment", "client auth"]),
                    "peer": profile(&["signing", "key encipherment", "server auth", "client auth"]),
                }
            }
        }),
    )?;
    write_json(
        &dir.join("ca-csr.json"),
        &json!({
            "CN": format!("{} CA", spec.name),
            "key": { "algo": "rsa", "size": 2048 },
            "names": [{ "C": "US", "L": "CA", "O": "My Company Name", "ST": "San Francisco" }]
        }),
    )?;
    let mut steps =
        vec![CfsslStep { args: vec!["gencert".into(), "-initca".into(), "ca-csr.json".into()], bare: "ca".into() }];
    let leaf = |dir: &Path, bare: String, cn: &str, hosts: Vec<String>, profile: &str| -> Result<CfsslStep> {
        let csr = format!("{bare}.json");
        write_json(
            &dir.join(&csr),
            &json!({
                "CN": cn,
                "hosts": hosts,
                "key": { "algo": "ecdsa", "size": 256 },
                "names": [{ "C": "US", "L": "CA", "ST": "San Francisco" }]
            }),
        )?;
        Ok(CfsslStep {
            args: vec![
                "gencert".into(),
                "-ca=ca.pem".into(),
                "-ca-key=ca-key.pem".into(),
                "-config=ca-config.json".into(),
                format!("-profile={profile}"),
                csr,
            ],
            bare,
        })
    };
    for node in &spec.nodes {
        let hosts: Vec<String> = node
            .sans()
            .into_iter()
            .map(|san| match san {
                San::Dns(d) => d,
                San::Ip(ip) => ip.to_string(),
            })
            .collect();
        steps.push(leaf(dir, format!("server-{}", node.name), &node.name, hosts.clone(), "server")?);
        steps.push(leaf(dir, format!("peer-{}", node.name), &node.name, hosts, "peer")?);
    }
    for id in &spec.clients {
        steps.push(leaf(dir, format!("client-{id}"), id, Vec::new(), "client")?);
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let t = |v: &[u64]| Timings { runs: v.iter().map(|&m| Duration::from_millis(m)).collect() };
        assert_eq!(t(&[30, 10, 20]).median(), Duration::from_millis(20));
        assert_eq!(t(&[40, 10, 20, 30]).median(), Duration::from_millis(25));
        assert_eq!(t(&[]).median(), Duration::ZERO);
    }

    #[test]
    fn the_report_says_when_cfssl_is_missing_and_judges_the_ratio() {
        let mut r = BenchReport {
            cluster: "demo".into(),
            dir: PathBuf::from("bench"),
            nodes: 3,
            clients: 2,
            ours_certs: 10,
            cfssl_certs: 9,
            ours: Timings { runs: vec![Duration::from_millis(5)] },
            cfssl: None,
        };
        assert!(r.to_string().contains("cfssl not installed: ratio not measured (apt-get install golang-cfssl)"));
        r.cfssl = Some(Timings { runs: vec![Duration::from_millis(100)] });
        let text = r.to_string();
        assert!(text.contains("ratio ours/cfssl: 0.050x (goal: at most 0.1x): met"), "{text}");
        r.cfssl = Some(Timings { runs: vec![Duration::from_millis(20)] });
        assert!(r.to_string().contains("NOT met"));
    }
}
