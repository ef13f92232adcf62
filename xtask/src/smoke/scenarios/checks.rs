//! What the scenarios do and check the same way on every engine, written once over
//! [`Members`]: the client load and its verdict, replication, the connections every member
//! must refuse (with etcd's reason from its log), a quorum lost and regained, the certificates a
//! member serves, the membership steps of a replacement, and an upgrade's preflight and result.
//! In: a [`Run`] of any engine. Out: each check's reason, or why it failed; figures for the
//! report.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::run::Run;
use super::{ScenarioName, NO_QUORUM};
use crate::smoke::engine::{Capability, Members};
use crate::smoke::local::stdout_or_stderr;
use crate::smoke::workload::load::{self, Bounds, Identity, Load, LoadReport};

/// The connections every engine must see refused, with etcd's reason.
pub(crate) const REFUSALS: [(&str, Refusal); 4] = [
    ("refused: no client certificate", Refusal::NoCert),
    ("refused: client certificate from another CA", Refusal::OtherCa),
    ("refused: plain http on the client port", Refusal::PlainHttp),
    ("refused: client certificate on the peer port", Refusal::ClientOnPeer),
];

#[derive(Debug, Clone, Copy)]
pub(crate) enum Refusal {
    NoCert,
    OtherCa,
    PlainHttp,
    ClientOnPeer,
}

/// The `error` field of an etcd (zap) log line, or the line itself.
pub(crate) fn server_reason(line: &str) -> String {
    if let Some(start) = line.find('{') {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line[start..]) {
            if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
                return e.to_string();
            }
        }
    }
    line.trim().to_string()
}

/// How many members of an `endpoint status -w json` answer say they lead (the leader they
/// name is themselves).
pub(crate) fn leaders(status: &[serde_json::Value]) -> usize {
    status
        .iter()
        .filter(|s| {
            s["Status"]["leader"].as_u64().is_some() && s["Status"]["leader"] == s["Status"]["header"]["member_id"]
        })
        .count()
}

/// The check of the alerts a lost and regained quorum fires (recorded when Prometheus watches).
const QUORUM_ALERTS: &str = "alerts: a SIGKILLed member fires etcdMembersDown and etcdCertificateExpiryUnknown, no \
                             quorum etcdNoLeader and etcdInsufficientMembers; all resolve";

/// What a lost and regained quorum showed ([`Run::lose_and_regain_quorum`]).
pub(crate) struct QuorumStory {
    /// One note per step, for the check's reason.
    pub notes: Vec<String>,
    /// From starting the two stopped members to 3/3 healthy.
    pub heal_s: f64,
    /// When they were started (Unix seconds): where their logs of the restart begin.
    pub restarted_unix: u64,
}

impl<E: Members> Run<E> {
    /// Starts the client load against every member, from where the clients are.
    pub(crate) fn start_load(&mut self, bounds: Bounds) -> Result<()> {
        let identity = Identity::in_dir(&self.load_dir());
        let load = Load::start(
            self.load_endpoints(),
            identity,
            self.load_as.transport,
            &self.load_as.prefix,
            bounds,
            self.client_netns(),
        )?;
        self.load = Some(load);
        Ok(())
    }

    /// The load's phases in which requests may fail: without a quorum (basic), none while
    /// certificates are rotated or the cluster moves to TLS, any in the other scenarios (a
    /// member replaced or upgraded: etcd's clients retry too).
    pub(crate) fn allowed_failures(&self) -> &'static [&'static str] {
        match self.scenario {
            ScenarioName::RotateCerts | ScenarioName::HttpToTls | ScenarioName::Auth => &[],
            ScenarioName::Basic | ScenarioName::Soak => &[NO_QUORUM],
            _ => &["*"],
        }
    }

    /// Stops the load and records what it saw: every acknowledged write read back through
    /// member `via`, failures only in the phases [`Run::allowed_failures`] allows, at least
    /// `goal` requests/s outside them (when given), and the history's verdict (kept beside the
    /// report when it fails).
    pub(crate) fn finish_load(&mut self, via: usize, goal: Option<f64>) {
        let Some(l) = self.load.take() else { return };
        let report = l.finish();
        let t = Instant::now();
        let mut r = self.check_load(&report, via, goal);
        if r.is_err() && self.failed() {
            r = r.context("after an earlier failure");
        }
        self.record("client load: every acknowledged write is there", t, r);
        let t = Instant::now();
        let file = match self.name.contains('/') {
            true => self.out().join(format!("history-{}.json", self.name.replace('/', "-"))),
            false => self.out().join("history.json"),
        };
        let judged = super::judge_history(&report, &file);
        self.record(crate::smoke::verify::CHECK_NAME, t, judged);
        // A run that failed keeps its whole history beside the members' logs, whatever failed:
        // the directory is what a failure is handed on as.
        if self.failed() && !file.exists() {
            if let Err(e) = super::keep_history(&report, &file) {
                eprintln!("smoke: cannot keep the history of the failed run: {e:#}");
            }
        }
        self.load_report = Some(report);
    }

    /// The load's identity: the client [`Run::load_as`] names, or the operator's.
    pub(crate) fn load_dir(&self) -> std::path::PathBuf {
        match &self.load_as.client {
            Some(c) => self.pki().client_dir(c),
            None => self.client_dir(),
        }
    }

    fn check_load(&self, report: &LoadReport, via: usize, goal: Option<f64>) -> Result<String> {
        let identity = Identity::in_dir(&self.load_dir());
        let (transport, prefix) = (self.load_as.transport, self.load_as.prefix.as_str());
        let read_back = |i: usize| {
            let endpoint = self.client_url(i);
            self.as_client(|| load::verify_acknowledged(report, &endpoint, &identity, transport, prefix))
        };
        let checked = match read_back(via) {
            Ok(n) => n,
            // After a failed step that member may be gone: the data still has to be there.
            Err(e) if self.failed() => read_back(0).with_context(|| format!("via {}: {e:#}", self.name(via)))?,
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
            self.name(via)
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
        if report.requests == 0 || report.reads == 0 {
            bail!("the load made no progress: {summary}");
        }
        // Without quorum requests stall or fail; that is what the fault check proves, and that
        // phase neither counts towards the rate nor may its failures fail the load.
        let allowed = self.allowed_failures();
        if let Some(goal) = goal {
            let rate = report.rate_except(allowed);
            if rate < goal {
                bail!("the load reached {rate:.0} requests/s, below the goal of {goal}: {summary}");
            }
            if self.scenario == ScenarioName::Basic {
                summary.push_str(&format!("; {rate:.0}/s outside the phase without quorum"));
            }
        }
        let unexplained =
            report.failed_by_phase.keys().any(|p| !allowed.contains(&"*") && !allowed.contains(&p.as_str()));
        if unexplained {
            bail!("requests failed where none may: {summary}");
        }
        Ok(summary)
    }

    /// A write through member 1, read back linearizably through member 3.
    pub(crate) fn check_replication(&self) -> Result<String> {
        self.etcdctl_ok(&[0], &["put", "smoke/linearizable", "from-node-1"])?;
        let got = self.etcdctl_ok(&[2], &["get", "--print-value-only", "--consistency=l", "smoke/linearizable"])?;
        if got.trim() != "from-node-1" {
            bail!("node 3 returned {:?}", got.trim());
        }
        Ok("put via node 1, linearizable get via node 3 returned it".into())
    }

    /// etcd's own lines about refused connections in member `i`'s log so far.
    pub(crate) fn rejections(&self, i: usize) -> Result<Vec<String>> {
        Ok(self
            .log(i)?
            .lines()
            .filter(|l| l.contains("rejected connection") || l.contains("TLS handshake error"))
            .map(str::to_string)
            .collect())
    }

    /// A connection member 1 must refuse: made with curl, it gets no answer, and etcd says why
    /// (the new rejection in its log, which may take a moment).
    pub(crate) fn check_refused(&self, case: Refusal) -> Result<String> {
        let before = self.rejections(0)?.len();
        let (client, rogue) = (self.client_dir(), self.rogue_pki().client_dir("etcdctl"));
        let file = |dir: &std::path::Path, f: &str| dir.join(f).display().to_string();
        let ca = vec!["--cacert".to_string(), file(&client, "ca.crt")];
        let pair = |dir: &std::path::Path| {
            vec!["--cert".to_string(), file(dir, "client.crt"), "--key".to_string(), file(dir, "client.key")]
        };
        let range = format!("{}/v3/kv/range", self.client_url(0));
        let (mut args, url) = match case {
            Refusal::NoCert => (ca, range),
            Refusal::OtherCa => ([ca, pair(&rogue)].concat(), range),
            Refusal::PlainHttp => (vec![], range.replacen("https://", "http://", 1)),
            Refusal::ClientOnPeer => {
                let peer_ca = file(&self.pki().node_dir(self.name(0)), "peer-ca.crt");
                (
                    [vec!["--cacert".to_string(), peer_ca], pair(&client)].concat(),
                    format!("{}/members", self.peer_url(0)),
                )
            }
        };
        args.extend(["-X".into(), "POST".into(), "-d".into(), "{\"key\":\"YQ==\"}".into(), url.clone()]);
        let out = self.curl(&args)?;
        let body = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() && (body.contains("\"header\"") || body.contains("\"id\"")) {
            bail!("{url} answered: {}", body.trim());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lines = self.rejections(0)?;
            if let Some(line) = lines.get(before..).and_then(|l| l.last()) {
                return Ok(format!("{url}: {}: {}", self.log_name(), server_reason(line)));
            }
            if Instant::now() > deadline {
                bail!(
                    "the request failed ({}) but {} shows no rejection",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    self.log_name()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A write through member 1, retried for up to `secs` (a new leader may be elected first);
    /// the seconds it took.
    pub(crate) fn put_soon(&self, key: &str, value: &str, secs: u64) -> Result<f64> {
        let t = Instant::now();
        let deadline = t + Duration::from_secs(secs);
        loop {
            self.interrupt().check()?;
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

    /// Polls a linearizable read of `smoke/before-faults` through member `i` until it answers,
    /// which must be `kept` (a member back after a fault serves its data): the seconds since `t`,
    /// and the attempts made.
    pub(crate) fn first_read(&self, i: usize, t: Instant, timeout: Duration) -> Result<(f64, u32)> {
        let read = ["get", "--print-value-only", "--command-timeout=1s", "--consistency=l", "smoke/before-faults"];
        let (got, tries) =
            self.poll(&format!("{} answered no read", self.name(i)), timeout, Duration::from_millis(50), |run| {
                Ok(stdout_or_stderr(run.etcdctl(&[i], &read)?))
            })?;
        if got != "kept" {
            bail!("{} serves {got:?} for smoke/before-faults", self.name(i));
        }
        Ok((t.elapsed().as_secs_f64(), tries))
    }

    /// Member `first` taken down (SIGKILLed where it then stays down, else stopped): the others
    /// elect a leader and take a write. Then `second` stopped too: a write is refused (its
    /// outcome is unknown, never asserted). Both started again: 3/3 healthy, and the earlier
    /// writes read back through `first`. With Prometheus watching, the alerts meant for each
    /// step must fire, and resolve after the heal (a check of their own).
    pub(crate) fn lose_and_regain_quorum(&mut self, first: usize, second: usize) -> Result<QuorumStory> {
        let mut notes = Vec::new();
        self.etcdctl_ok(&[0], &["put", "smoke/before-faults", "kept"])?;
        let others: Vec<usize> = (0..self.len()).filter(|o| *o != first).collect();
        let one_down = Instant::now();
        // Kubernetes' static pods and systemd restart a killed etcd by themselves: those are
        // stopped instead.
        let how = if self.can(Capability::KillStaysDown) {
            self.phase(&format!("node {} SIGKILLed", first + 1));
            self.kill(first)?;
            "SIGKILLed"
        } else {
            self.phase(&format!("node {} stopped", first + 1));
            self.stop(first)?;
            "stopped"
        };
        // A killed leader hands nothing over (a stopped one transfers its leadership): the two
        // others elect one first, which on a starved machine can outlast etcdctl's 5 s.
        self.wait_healthy(&others, Duration::from_secs(30)).context("the two other members did not recover")?;
        let survivors = one_down.elapsed().as_secs_f64();
        self.put_soon("smoke/one-down", "ok", 15).context("a write with one node down must succeed")?;
        notes.push(format!("one down ({how}): the other two healthy after {survivors:.1} s, write ok"));
        // With Prometheus watching, each step lasts until the alerts meant for it fire
        // (bounded): a member down (while the quorum holds), then the quorum lost.
        let mut fired = Vec::new();
        // Its TLS port stops answering too: the probe fails, and the alert that says its
        // certificate expiry is no longer watched fires (etcdCertificateExpiresSoon cannot).
        fired.extend(self.alerts_fire(&["etcdMembersDown", "etcdCertificateExpiryUnknown"], one_down));
        // ... and only that: two of three up is a quorum (a rule that split its sums per member
        // once said otherwise).
        fired.extend(self.alerts_quiet(&["etcdInsufficientMembers", "etcdNoLeader"]));
        self.phase(NO_QUORUM);
        let no_quorum = Instant::now();
        self.stop(second)?;
        let t = Instant::now();
        let out = self.etcdctl(&[0], &["put", "--command-timeout=3s", "smoke/two-down", "unknown"])?;
        if out.status.success() {
            bail!("a write with two of three nodes down succeeded; quorum is not enforced");
        }
        notes.push(format!(
            "two down: write failed after {:.1} s ({}; outcome unknown)",
            t.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default().trim()
        ));
        fired.extend(self.alerts_fire(&["etcdNoLeader", "etcdInsufficientMembers"], no_quorum));
        let restarted_unix =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let t = Instant::now();
        self.start_many(&[second, first])?;
        self.wait_healthy(&[0, 1, 2], Duration::from_secs(90)).context("the cluster did not heal")?;
        self.phase("healed");
        let heal_s = t.elapsed().as_secs_f64();
        fired.extend(self.alerts_resolve(
            &["etcdNoLeader", "etcdInsufficientMembers", "etcdMembersDown", "etcdCertificateExpiryUnknown"],
            t,
        ));
        self.record_alerts(QUORUM_ALERTS, one_down, fired);
        notes.push(format!("healed in {heal_s:.2} s"));
        for (key, want) in [("smoke/before-faults", "kept"), ("smoke/one-down", "ok")] {
            let got = self.etcdctl_ok(&[first], &["get", "--print-value-only", "--consistency=l", key])?;
            if got.trim() != want {
                bail!("after healing, {key} is {:?} on node {}, expected {want:?}", got.trim(), first + 1);
            }
        }
        notes.push(format!("earlier data intact, read back via {}", self.name(first)));
        Ok(QuorumStory { notes, heal_s, restarted_unix })
    }

    /// The serial of every member's server and peer certificate in the run's PKI, by
    /// `<node>/<file>`.
    pub(crate) fn leaf_serials(&self) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for i in 0..self.len() {
            for file in ["server.crt", "peer.crt"] {
                let path = self.pki().node_dir(self.name(i)).join(file);
                let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
                out.insert(format!("{}/{file}", self.name(i)), crate::pki::cert::first_cert(&text)?.serial);
            }
        }
        Ok(out)
    }

    /// The serial and issuer of the certificate member `i` serves on its client port (`peer`:
    /// its peer port), read with `openssl s_client` over a new connection from where the
    /// clients are (retried for up to 10 s while the member comes up).
    pub(crate) fn served_cert(&self, i: usize, peer: bool) -> Result<(String, String)> {
        let node_dir = self.pki().node_dir(self.name(i));
        let (url, ca, cert, key) = if peer {
            (self.peer_url(i), node_dir.join("peer-ca.crt"), node_dir.join("peer.crt"), node_dir.join("peer.key"))
        } else {
            let c = self.client_dir();
            (self.client_url(i), c.join("ca.crt"), c.join("client.crt"), c.join("client.key"))
        };
        let address = url.trim_start_matches("https://").to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self
                .client_command("openssl")
                .args(["s_client", "-connect", &address])
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
            let (begin, end) = (text.find("-----BEGIN CERTIFICATE-----"), text.find("-----END CERTIFICATE-----"));
            if let (Some(b), Some(e)) = (begin, end) {
                let info = crate::pki::cert::first_cert(&text[b..e + "-----END CERTIFICATE-----".len()])?;
                return Ok((info.serial, info.issuer_cn.unwrap_or(info.issuer)));
            }
            if Instant::now() > deadline {
                bail!(
                    "openssl s_client to {} at {address} printed no certificate: {}",
                    self.name(i),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Member `i` serves, on both ports, the certificates now in the PKI directory (read over
    /// new connections); a note of its peer certificate's serial and issuer.
    pub(crate) fn check_served_by(&self, i: usize) -> Result<String> {
        let mut note = String::new();
        for (peer, file) in [(false, "server.crt"), (true, "peer.crt")] {
            let path = self.pki().node_dir(self.name(i)).join(file);
            let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let want = crate::pki::cert::first_cert(&text)?;
            let (serial, issuer) = self.served_cert(i, peer)?;
            if serial != want.serial {
                bail!(
                    "{} serves serial {serial} on its {} port, not {} of the renewed {file}",
                    self.name(i),
                    if peer { "peer" } else { "client" },
                    want.serial
                );
            }
            if peer {
                note = format!("{} {}…/{}…", self.name(i), &want.serial[..8.min(want.serial.len())], issuer);
            }
        }
        Ok(note)
    }

    /// Every member serves, on both ports, the certificates now in the PKI directory.
    pub(crate) fn check_served(&self) -> Result<String> {
        Ok((0..self.len()).map(|i| self.check_served_by(i)).collect::<Result<Vec<_>>>()?.join(", "))
    }

    /// The members as `member list -w json` through `from` lists them.
    pub(crate) fn members(&self, from: &[usize]) -> Result<Vec<serde_json::Value>> {
        let v: serde_json::Value = serde_json::from_str(&self.etcdctl_ok(from, &["member", "list", "-w", "json"])?)
            .context("member list printed no JSON")?;
        Ok(v["members"].as_array().cloned().unwrap_or_default())
    }

    /// The ID of the member named `name`, asked through `from`.
    pub(crate) fn member_id(&self, name: &str, from: &[usize]) -> Result<u64> {
        self.members(from)?
            .iter()
            .find(|m| m["name"] == name)
            .and_then(|m| m["ID"].as_u64())
            .with_context(|| format!("{name} is not in the member list"))
    }

    /// `member add NAME --learner --peer-urls=URL` through `from`, retried while etcd answers
    /// `unhealthy cluster` (it refuses a reconfiguration until every voting member has been
    /// connected for 5 s: --strict-reconfig-check); etcdctl's output.
    pub(crate) fn add_learner(&self, name: &str, peer_url: &str, from: &[usize]) -> Result<String> {
        let add = ["member", "add", name, "--learner", &format!("--peer-urls={peer_url}")];
        let (added, _) = self.poll(
            &format!("etcdctl {} still answered `unhealthy cluster`", add.join(" ")),
            Duration::from_secs(30),
            Duration::from_millis(500),
            |run| match stdout_or_stderr(run.etcdctl(from, &add)?) {
                Err(e) if !e.contains("unhealthy cluster") => bail!("etcdctl {} failed: {e}", add.join(" ")),
                r => Ok(r),
            },
        )?;
        Ok(added)
    }

    /// `member promote ID` through `from`, retried until the learner has caught up ("can only
    /// promote a learner member which is in sync with leader" until then); the attempts made.
    pub(crate) fn promote(&self, id: &str, from: &[usize], timeout: Duration) -> Result<u32> {
        let (_, tries) =
            self.poll(&format!("the learner {id} was not promoted"), timeout, Duration::from_millis(250), |run| {
                Ok(stdout_or_stderr(run.etcdctl(from, &["member", "promote", id])?))
            })?;
        Ok(tries)
    }

    /// Before an upgrade, as etcd's upgrade guide says: 3/3 healthy, no alarm raised, a snapshot
    /// kept beside the report.
    pub(crate) fn upgrade_preflight(&mut self) -> Result<String> {
        self.phase("upgrade preflight");
        self.wait_healthy(&[0, 1, 2], Duration::from_secs(60))?;
        let alarms = self.etcdctl_ok(&[0], &["alarm", "list"])?;
        if !alarms.trim().is_empty() {
            bail!("alarms raised, resolve them first: {}", alarms.trim());
        }
        let dir = self.out().join("backup");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let snap = dir.join("before-upgrade.db");
        self.etcdctl_ok(&[0], &["snapshot", "save", "--command-timeout=60s", &snap.to_string_lossy()])?;
        let size = std::fs::metadata(&snap).map(|m| m.len()).unwrap_or(0);
        Ok(format!("3/3 healthy, no alarms, snapshot of {size} bytes kept in {}", crate::util::display_rel(&snap)))
    }

    /// After an upgrade to `to`: every member reports it, and the leader raises the cluster
    /// version once every member runs the new release.
    pub(crate) fn check_upgraded(&mut self, to: &str) -> Result<String> {
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
        if versions.len() != 3 || versions.iter().any(|v| v != to) {
            bail!("members report {versions:?}, expected {to} three times");
        }
        let want = crate::definition::release_line(to) + ".0";
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

    /// `GET /version` of member `i` with the client certificate.
    pub(crate) fn version_json(&self, i: usize) -> Result<serde_json::Value> {
        let url = format!("{}/version", self.client_url(i));
        let mut args = self.client_tls_args();
        args.push(url.clone());
        let out = self.curl(&args)?;
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("{url}: not JSON: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }

    /// `GET /metrics` of member `i` (its client port) with the client certificate: Prometheus's
    /// text exposition.
    pub(crate) fn metrics(&self, i: usize) -> Result<String> {
        let url = format!("{}/metrics", self.client_url(i));
        let mut args = self.client_tls_args();
        args.push(url.clone());
        let out = self.curl(&args)?;
        if !out.status.success() {
            bail!("{url}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcds_reason_is_read_from_its_log_line() {
        let zap = r#"2024-01-01T00:00:00Z WARN embed/config_logging.go:169 rejected connection {"remote-addr": "127.0.0.1:5", "error": "tls: first record does not look like a TLS handshake"}"#;
        assert_eq!(server_reason(zap), "tls: first record does not look like a TLS handshake");
        assert_eq!(server_reason("  plain line  "), "plain line");
    }

    #[test]
    fn one_leader_is_the_member_that_names_itself() {
        let status = |member: u64, leader: u64| serde_json::json!({ "Status": { "header": { "member_id": member }, "leader": leader } });
        assert_eq!(leaders(&[status(1, 2), status(2, 2), status(3, 2)]), 1);
        assert_eq!(leaders(&[status(1, 1), status(2, 2)]), 2, "a split brain is counted");
        assert_eq!(leaders(&[status(1, 0)]), 0);
    }
}
