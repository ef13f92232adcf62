//! The basic scenario's checks: health, linearizable reads, the JSON gateway, refused
//! connections (with the server's own reason), non-root and no capabilities, faults with a
//! SIGKILL restart, and backup and restore. Each returns what it saw, or why it failed.
//! In: a fresh podman cluster. Out: its checks in the run.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::pki::cluster::{ClusterSpec, NodeSpec};
use crate::render::config::{node_env, PkiFacts, TargetPaths};

use crate::smoke::engine::cluster::{chown_tree, Cluster, PKI_MOUNT};
use crate::smoke::engine::podman::{podman, podman_checked};
use crate::smoke::local::{free_port, stdout_or_stderr};
use crate::smoke::scenarios::checks::{server_reason, Refusal, REFUSALS};
use crate::smoke::scenarios::run::Run;
use crate::smoke::scenarios::NO_QUORUM;

impl Run<Cluster> {
    pub(super) fn basic(&mut self) -> Result<()> {
        if !self.start_cluster()? {
            return Ok(());
        }
        self.run_check("one leader, three started members, 3/3 healthy (etcdctl --cluster)", |c| c.check_members());
        self.run_check("write via node 1 reads back linearizably via node 3", |c| c.check_linearizable());
        self.run_check("JSON gateway /v3/kv/range answers with the client certificate", |c| c.check_gateway());
        for (name, case) in REFUSALS {
            self.interrupt.check()?;
            self.run_check(name, |c| c.check_refused(case));
        }
        self.run_check("TLS policy: testssl.sh on node 1's client and peer ports", |c| c.check_tls_scan());
        self.run_check("etcd runs as the etcd uid with no capabilities; data dir 0700", |c| c.check_identity());
        self.run_check("faults: one down writes, two down no quorum, heal, SIGKILL restart", |c| c.check_faults());
        self.run_check("backup: snapshot save, restore into a fresh node, data read back", |c| c.check_backup());
        Ok(())
    }

    pub(super) fn check_members(&self) -> Result<String> {
        let (out, err) = self.exec_etcdctl_full(0, &["endpoint", "health", "--cluster"])?;
        let health = out + &err;
        let healthy = health.lines().filter(|l| l.contains("is healthy")).count();
        if healthy != 3 {
            bail!("{healthy}/3 healthy: {}", health.trim());
        }
        let status: serde_json::Value =
            serde_json::from_str(&self.exec_etcdctl(0, &["endpoint", "status", "--cluster", "-w", "json"])?)
                .context("endpoint status printed no JSON")?;
        let list = status.as_array().context("endpoint status is not a list")?;
        let leaders = list
            .iter()
            .filter(|s| {
                s["Status"]["leader"].as_u64().is_some() && s["Status"]["leader"] == s["Status"]["header"]["member_id"]
            })
            .count();
        if leaders != 1 {
            bail!("{leaders} members say they lead; expected exactly one");
        }
        let members: serde_json::Value =
            serde_json::from_str(&self.exec_etcdctl(0, &["member", "list", "-w", "json"])?)
                .context("member list printed no JSON")?;
        let members = members["members"].as_array().context("member list has no members")?;
        let started = members.iter().filter(|m| m["name"].as_str().is_some_and(|n| !n.is_empty())).count();
        if members.len() != 3 || started != 3 {
            bail!("{} members, {started} started; expected 3 and 3", members.len());
        }
        Ok(format!("3/3 healthy, 1 leader, {started} started members"))
    }

    pub(super) fn check_linearizable(&self) -> Result<String> {
        self.etcdctl_ok(&[0], &["put", "smoke/linearizable", "from-node-1"])?;
        let got = self.etcdctl_ok(&[2], &["get", "--print-value-only", "--consistency=l", "smoke/linearizable"])?;
        if got.trim() != "from-node-1" {
            bail!("node 3 returned {:?}", got.trim());
        }
        Ok("put via node 1, linearizable get via node 3 returned it".into())
    }

    pub(super) fn curl(&self, extra: &[String], url: &str) -> Result<Output> {
        Command::new("curl").args(["-sS", "--max-time", "5"]).args(extra).arg(url).output().context("cannot run curl")
    }

    /// curl's arguments for the operator's identity (CA, certificate, key).
    pub(super) fn client_tls_args(&self) -> Vec<String> {
        [("--cacert", "ca.crt"), ("--cert", "client.crt"), ("--key", "client.key")]
            .iter()
            .flat_map(|(flag, file)| [flag.to_string(), self.client.join(file).display().to_string()])
            .collect()
    }

    pub(super) fn check_gateway(&self) -> Result<String> {
        let url = format!("https://127.0.0.1:{}/v3/kv/range", self.nodes[0].client_port);
        // base64("smoke/linearizable")
        let key = "c21va2UvbGluZWFyaXphYmxl";
        let mut args = self.client_tls_args();
        args.extend(["-X".into(), "POST".into(), "-d".into(), format!("{{\"key\":\"{key}\"}}")]);
        let out = self.curl(&args, &url)?;
        let body = String::from_utf8_lossy(&out.stdout);
        // base64("from-node-1")
        if !out.status.success() || !body.contains("ZnJvbS1ub2RlLTE=") {
            bail!("{url}: {} {}", body.trim(), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(format!("POST {url} returned the value"))
    }

    /// Count of "rejected connection" lines in a node's log so far.
    pub(super) fn rejections(&self, node: usize) -> Result<Vec<String>> {
        let text = self.logs(node, &[])?;
        Ok(text
            .lines()
            .filter(|l| l.contains("rejected connection") || l.contains("TLS handshake error"))
            .map(str::to_string)
            .collect())
    }

    pub(super) fn check_refused(&self, case: Refusal) -> Result<String> {
        let before = self.rejections(0)?.len();
        let n = &self.nodes[0];
        let rogue = self.rogue.client_dir("etcdctl");
        let ca = || vec!["--cacert".to_string(), self.client.join("ca.crt").display().to_string()];
        let pair = |dir: &Path| {
            vec![
                "--cert".to_string(),
                dir.join("client.crt").display().to_string(),
                "--key".to_string(),
                dir.join("client.key").display().to_string(),
            ]
        };
        let (args, url): (Vec<String>, String) = match case {
            Refusal::NoCert => (ca(), format!("https://127.0.0.1:{}/v3/kv/range", n.client_port)),
            Refusal::OtherCa => {
                ([ca(), pair(&rogue)].concat(), format!("https://127.0.0.1:{}/v3/kv/range", n.client_port))
            }
            Refusal::PlainHttp => (vec![], format!("http://127.0.0.1:{}/v3/kv/range", n.client_port)),
            Refusal::ClientOnPeer => (
                [
                    vec![
                        "--cacert".to_string(),
                        self.pki.node_dir(&n.spec.name).join("peer-ca.crt").display().to_string(),
                    ],
                    pair(&self.client),
                ]
                .concat(),
                format!("https://127.0.0.1:{}/members", n.peer_port),
            ),
        };
        let mut args = args;
        args.extend(["-X".into(), "POST".into(), "-d".into(), "{\"key\":\"YQ==\"}".into()]);
        let out = self.curl(&args, &url)?;
        let body = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() && (body.contains("\"header\"") || body.contains("\"id\"")) {
            bail!("{url} answered: {}", body.trim());
        }
        // The server's reason: the new rejection lines in its log (they may take a moment).
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let lines = self.rejections(0)?;
            if let Some(line) = lines.get(before..).and_then(|l| l.last()) {
                return Ok(format!("server: {}", server_reason(line)));
            }
            if Instant::now() > deadline {
                bail!(
                    "the request failed ({}) but the server logged no rejection",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Debian's testssl.sh scans node 1's published client and peer ports side by side; its JSON
    /// is kept beside the report, and any finding against the TLS policy fails the check.
    pub(super) fn check_tls_scan(&self) -> Result<String> {
        let n = &self.nodes[0];
        let peer_ca = self.pki.node_dir(&n.spec.name).join("peer-ca.crt");
        let jobs = [("client", n.client_port, self.client.join("ca.crt")), ("peer", n.peer_port, peer_ca)];
        let results = crate::util::each_in_thread(&jobs, "a testssl.sh scan", |_, (port_name, port, ca)| {
            let json = self.out.join(format!("testssl-{port_name}.json"));
            crate::tls_check::scan(&format!("127.0.0.1:{port}"), Some(ca), Some(&json))
        });
        let mut notes = Vec::new();
        let mut violations = Vec::new();
        for ((port_name, _, _), r) in jobs.iter().zip(results) {
            let scan = r.with_context(|| format!("the {port_name} port"))?;
            violations.extend(scan.violations.iter().map(|v| format!("{port_name} port: {v}")));
            notes.push(format!("{port_name} port: {}", scan.summary()));
        }
        if !violations.is_empty() {
            bail!("{} (testssl-*.json beside the report)", violations.join("; "));
        }
        Ok(notes.join(" | "))
    }

    pub(super) fn check_identity(&self) -> Result<String> {
        let mut seen = Vec::new();
        for n in &self.nodes {
            let pid = podman(&["inspect", "--format", "{{.State.Pid}}", &n.container])?;
            let status = fs::read_to_string(format!("/proc/{}/status", pid.trim()))
                .with_context(|| format!("cannot read the status of {}'s etcd (pid {})", n.container, pid.trim()))?;
            let field = |name: &str| {
                status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.split_whitespace().collect::<Vec<_>>())
            };
            let uids = field("Uid:").context("no Uid line")?;
            let cap_eff = field("CapEff:").context("no CapEff line")?;
            let cap_prm = field("CapPrm:").context("no CapPrm line")?;
            if uids.iter().any(|u| *u != self.uid.to_string()) {
                bail!("{}: etcd runs with uids {:?}, expected {}", n.container, uids, self.uid);
            }
            let no_caps = |set: &Vec<&str>| set.first().is_some_and(|c| c.trim_start_matches('0').is_empty());
            if !no_caps(&cap_eff) || !no_caps(&cap_prm) {
                bail!("{}: capabilities effective {:?} permitted {:?}, expected none", n.container, cap_eff, cap_prm);
            }
            let mount = match &n.host_data {
                Some(dir) => dir.display().to_string(),
                None => podman(&["volume", "inspect", "--format", "{{.Mountpoint}}", &n.volume])?,
            };
            let meta =
                fs::metadata(mount.trim()).with_context(|| format!("cannot stat the data volume {}", mount.trim()))?;
            let mode = meta.permissions().mode() & 0o7777;
            if mode != 0o700 || meta.uid() != self.uid {
                bail!(
                    "{}: data dir mode {mode:04o} owner {}, expected 0700 owner {}",
                    n.container,
                    meta.uid(),
                    self.uid
                );
            }
            seen.push(n.spec.name.clone());
        }
        Ok(format!("uid {} (all ids), CapEff=0, CapPrm=0, data dir 0700 on {}", self.uid, seen.join(", ")))
    }

    pub(super) fn check_faults(&mut self) -> Result<String> {
        let mut notes = Vec::new();
        self.etcdctl_ok(&[0], &["put", "smoke/before-faults", "kept"])?;
        // A member dies: SIGKILLed. Kubernetes' static pods restart a killed container by
        // themselves (podman kube play keeps their restart policy), so those are stopped.
        let one_down = Instant::now();
        let how = if self.kube_manifests.is_none() {
            self.phase("node 3 SIGKILLed");
            self.kill(2)?;
            "SIGKILLed"
        } else {
            self.phase("node 3 stopped");
            self.stop(2)?;
            "stopped"
        };
        // A killed leader hands nothing over (a stopped one transfers its leadership): the two
        // others elect one first, which on a starved machine can outlast etcdctl's 5 s.
        self.wait_healthy(&[0, 1], Duration::from_secs(30)).context("the two other members did not recover")?;
        let survivors = one_down.elapsed().as_secs_f64();
        self.etcdctl_ok(&[0], &["put", "smoke/one-down", "ok"]).context("a write with one node down must succeed")?;
        notes.push(format!("one down ({how}): the other two healthy after {survivors:.1} s, write ok"));
        // With Prometheus watching, each step lasts until the alerts meant for it fire
        // (bounded): a member down (while the quorum holds), then the quorum lost.
        let mut alerts = Vec::new();
        // Its TLS port stops answering too: the probe fails, and the alert that says its
        // certificate expiry is no longer watched fires (etcdCertificateExpiresSoon cannot).
        alerts.extend(self.alerts_fire(&["etcdMembersDown", "etcdCertificateExpiryUnknown"], one_down));
        // ... and only that: two of three up is a quorum (a rule that split its sums per member
        // once said otherwise).
        alerts.extend(self.alerts_quiet(&["etcdInsufficientMembers", "etcdNoLeader"]));
        self.phase(NO_QUORUM);
        let no_quorum = Instant::now();
        self.stop(1)?;
        let t = Instant::now();
        let out = self.etcdctl(&[0], &["put", "--command-timeout=3s", "smoke/two-down", "unknown"])?;
        if out.status.success() {
            bail!("a write with two of three nodes down succeeded; quorum is not enforced");
        }
        // Its outcome is unknown: it may still commit once the cluster heals. Never asserted absent.
        notes.push(format!("two down: write failed after {:.1} s (outcome unknown)", t.elapsed().as_secs_f64()));
        alerts.extend(self.alerts_fire(&["etcdNoLeader", "etcdInsufficientMembers"], no_quorum));
        let since =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let t = Instant::now();
        self.start(1)?;
        self.start(2)?;
        self.wait_healthy(&[0, 1, 2], Duration::from_secs(60)).context("the cluster did not heal")?;
        self.phase("healed");
        let heal = t.elapsed().as_secs_f64();
        alerts.extend(self.alerts_resolve(
            &["etcdNoLeader", "etcdInsufficientMembers", "etcdMembersDown", "etcdCertificateExpiryUnknown"],
            t,
        ));
        self.record_alerts(
            "alerts: a SIGKILLed member fires etcdMembersDown and etcdCertificateExpiryUnknown, no quorum etcdNoLeader \
             and etcdInsufficientMembers; all resolve",
            one_down,
            alerts,
        );
        self.timings.insert("heal_after_restart".into(), heal);
        notes.push(format!("healed in {heal:.2} s"));
        if heal > 3.0 {
            // The whole story beside the report, and etcd's own account in the reason.
            self.record_logs();
            notes.push(format!(
                "[slow: node 2's log since its restart: {}; node 3's: {}]",
                self.restart_log(1, since),
                self.restart_log(2, since)
            ));
        }
        for (key, want, node) in [("smoke/before-faults", "kept", 2usize), ("smoke/one-down", "ok", 2)] {
            let got = self.etcdctl_ok(&[node], &["get", "--print-value-only", key])?;
            if got.trim() != want {
                bail!("after healing, {key} is {:?} on node {}, expected {want:?}", got.trim(), node + 1);
            }
        }
        notes.push("earlier data intact".into());
        self.phase("node 1 SIGKILLed");
        self.kill(0)?;
        let recovery = self.sigkill_recovery()?;
        notes.push(recovery);
        Ok(notes.join("; "))
    }

    /// Restarts the SIGKILLed node 1 and times what a client sees: `podman start`, the first
    /// linearizable read node 1 answers (the client-visible recovery), and 3/3 healthy. When
    /// recovery is slow, etcd's own account of the restart (node 1's log) goes into the reason.
    pub(super) fn sigkill_recovery(&mut self) -> Result<String> {
        let since =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let t = Instant::now();
        self.start(0)?;
        let started = t.elapsed().as_secs_f64();
        let read = ["get", "--print-value-only", "--command-timeout=1s", "--consistency=l", "smoke/before-faults"];
        let (got, attempts) = self.poll(
            "node 1 answered no read after its restart",
            Duration::from_secs(60),
            Duration::from_millis(50),
            |run| Ok(stdout_or_stderr(run.etcdctl(&[0], &read)?)),
        )?;
        let answered = t.elapsed().as_secs_f64();
        if got != "kept" {
            bail!("after SIGKILL, node 1 serves {got:?} for smoke/before-faults");
        }
        self.wait_healthy(&[0, 1, 2], Duration::from_secs(60))
            .context("the cluster was not healthy after node 1's SIGKILL restart")?;
        let healthy = t.elapsed().as_secs_f64();
        self.timings.insert("sigkill_podman_start".into(), started);
        self.timings.insert("sigkill_first_read".into(), answered);
        self.timings.insert("sigkill_healthy".into(), healthy);
        let mut note = format!(
            "SIGKILLed node 1: podman start {started:.2} s, first linearizable read with its data {answered:.2} s \
             ({attempts} tries), 3/3 healthy {healthy:.2} s"
        );
        if answered > 3.0 {
            note.push_str(&format!(" [node 1's log since the restart: {}]", self.restart_log(0, since)));
        }
        Ok(note)
    }

    pub(super) fn check_backup(&mut self) -> Result<String> {
        let backup = self.out.join("backup");
        fs::create_dir_all(&backup).with_context(|| format!("cannot create {}", backup.display()))?;
        let snap = backup.join("snapshot.db");
        self.etcdctl_ok(&[0], &["snapshot", "save", &snap.to_string_lossy()])?;
        // Restore into a fresh single node on the next address of the subnet.
        let first = match crate::render::config::primary_ip(&self.nodes[0].spec)? {
            IpAddr::V4(v4) => v4.octets(),
            IpAddr::V6(_) => bail!("IPv4 only"),
        };
        let ip: IpAddr = format!("{}.{}.{}.{}", first[0], first[1], first[2], first[3].wrapping_add(3)).parse()?;
        let node = NodeSpec { name: "restored".into(), ips: vec![ip], dns: Vec::new(), kube_dns: Vec::new() };
        let data = backup.join("data");
        let facts = PkiFacts::read(&self.pki.root)?;
        let single = ClusterSpec { token: None, clients: Vec::new(), nodes: vec![node.clone()], ..self.spec.clone() };
        let env = node_env(&single, &node, &facts, &TargetPaths::standard(), &self.etcd_version)?;
        let out = Command::new(&self.etcdctl)
            .env_clear()
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore", &snap.to_string_lossy()])
            .arg(format!("--data-dir={}", data.display()))
            .arg("--name=restored")
            .arg(format!("--initial-cluster={}", env["ETCD_INITIAL_CLUSTER"]))
            .arg(format!("--initial-advertise-peer-urls={}", env["ETCD_INITIAL_ADVERTISE_PEER_URLS"]))
            .arg(format!("--initial-cluster-token={}", facts.token))
            .output()
            .context("cannot run etcdctl snapshot restore")?;
        if !out.status.success() {
            bail!("snapshot restore failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        chown_tree(&data, self.uid, self.gid)?;
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700))?;
        // Node 1's certificates serve it: clients reach it on loopback, which they cover.
        let container = crate::smoke::engine::podman::resource_name(&self.spec.name, "restored");
        let port = free_port()?;
        let extra = vec![
            "-v".into(),
            format!("{}:/var/lib/etcd", data.display()),
            "-v".into(),
            format!("{}:{PKI_MOUNT}:ro", self.mounts.join(&self.nodes[0].spec.name).display()),
            "-p".into(),
            format!("127.0.0.1:{port}:2379"),
        ];
        let args = self.run_command(&container, &ip.to_string(), extra, &env, &self.tag);
        podman_checked(&args).context("cannot start the restored node")?;
        self.res.containers.push(container.clone());
        let (value, _) = self.poll(
            "the restored node never answered",
            Duration::from_secs(30),
            Duration::from_millis(200),
            |run| Ok(stdout_or_stderr(run.etcdctl_at(&[port], &["get", "--print-value-only", "smoke/before-faults"])?)),
        )?;
        if value != "kept" {
            bail!("the restored node returned {value:?} for smoke/before-faults");
        }
        let size = fs::metadata(&snap).map(|m| m.len()).unwrap_or(0);
        Ok(format!("snapshot of {size} bytes restored into a fresh node; data read back"))
    }
}
