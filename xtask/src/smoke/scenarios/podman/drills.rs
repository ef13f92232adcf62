//! `cargo xtask smoke --scenario drills`: the faults that break etcd clusters in production,
//! injected and healed while the client load runs, each timed. Partitions and packet loss are
//! made inside the members' own network namespaces (the host's iptables run with `nsenter -n`
//! into a container's namespace: the image stays as it is, the host's firewall is not touched);
//! delays hold the leader's peer packets in a netfilter queue (`xtask delay-packets`: the
//! kernel may lack `sch_netem`); pauses are SIGSTOP/SIGCONT of etcd; NOSPACE is a small
//! `--quota-backend-bytes` filled by one key overwritten with large values, then etcd's runbook
//! (compact, defragment one member at a time with the leader last, disarm). Every drill ends with 3/3 healthy and one leader;
//! the load's history (checked for linearizability at the end) and acknowledged writes cover
//! what clients saw. Per drill the reason gives the time to a new leader, the leader changes
//! (raft terms), and the phase's requests, failures and worst latency (final figures per phase
//! in the report's `load.phases`). Last, node 3's data disk (a small tmpfs) is filled from outside
//! etcd and freed again. In: a fresh podman cluster with a small quota. Out: one check per drill.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::smoke::engine::cluster::Cluster;
use crate::smoke::engine::Members;
use crate::smoke::faults::disk;
use crate::smoke::scenarios::recovery::{Leader, Status, SETTLE};
use crate::smoke::scenarios::run::Run;
use crate::smoke::workload::load::{Gateway, Identity};

/// The drill cluster's quota: small enough to fill in seconds with 1 MiB values, large enough
/// for the load's own writes over the whole scenario.
pub(super) const QUOTA_BYTES: u64 = 48 * 1024 * 1024;
/// The size of node 3's data disk (a tmpfs): etcd preallocates its WAL segment and the next one
/// (64 MiB each), and the NOSPACE drill's database takes up to twice the quota while it is
/// defragmented.
const DISK_BYTES: u64 = 320 * 1024 * 1024;
/// A soak member's disk: etcd's two preallocated WAL segments and a database the schedule's
/// compactions keep small, with room for hours (the image file is sparse).
const SOAK_DISK_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// How long a fault lasts: several election timeouts (etcd's default is 1 s).
const FAULT: Duration = Duration::from_secs(4);
/// The writes a second node 3's disk takes in the slow-disk drill: each WAL fsync then waits
/// for several, far past the fsync alert's 0.5 s.
const SLOW_IOPS: u32 = 4;
/// How long the disk stays slow when no Prometheus watches for the alerts.
const SLOW_HOLD: Duration = Duration::from_secs(10);

impl Run<Cluster> {
    /// The drills, in order, on one cluster with a small quota.
    pub(super) fn drills(&mut self) -> Result<()> {
        for n in &mut self.nodes {
            n.env.insert("ETCD_QUOTA_BACKEND_BYTES".into(), QUOTA_BYTES.to_string());
        }
        let disk = self.own_disk(2, DISK_BYTES)?;
        if !self.start_cluster()? {
            return Ok(());
        }
        self.etcdctl_ok(&[0], &["put", "smoke/before-drills", "kept"])?;
        self.run_check("partition: the leader cut off from both followers, then healed", |c| c.isolate(true));
        self.run_check("partition: a follower cut off from both peers, then healed", |c| c.isolate(false));
        self.run_check("one-way loss: 40% of the leader's packets to a follower dropped", |c| c.one_way_loss());
        let (heartbeat, election) = self.timing();
        self.run_check(
            &format!("delay: the leader's peer traffic held {heartbeat} ms (one heartbeat interval)"),
            |c| c.delay(heartbeat),
        );
        let twice = 2 * election;
        self.run_check(
            &format!("delay: the leader's peer traffic held {twice} ms (twice the election timeout)"),
            |c| c.delay(twice),
        );
        self.run_check("pause: a follower SIGSTOPped past the election timeout", |c| c.pause_drill(false));
        self.run_check("pause: the leader SIGSTOPped past the election timeout", |c| c.pause_drill(true));
        self.run_check("NOSPACE: quota filled, writes refused, reads served; compact, defrag, disarm", |c| c.nospace());
        self.run_check("full disk: a member's data disk filled from outside, then freed; no data lost", |c| {
            c.full_disk(&disk)
        });
        self.run_check(
            &format!("slow disk: a follower's writes held to {SLOW_IOPS} a second, then released; no data lost"),
            |c| c.slow_disk(),
        );
        Ok(())
    }

    /// Node 3's writes to its own disk throttled by the kernel (the leadership moved away
    /// first: a slow follower is the case the alerts are for; a slow leader is an election),
    /// until etcd's fsync and commit alerts fire (bounded; with Prometheus watching), or for
    /// [`SLOW_HOLD`] without; then released. The majority keeps serving throughout, and node 3
    /// catches up with the same key-value history.
    fn slow_disk(&mut self) -> Result<String> {
        let phase = "drill: node 3's disk slowed";
        let mut notes = Vec::new();
        let lead = self.leader()?;
        if lead.index == 2 {
            let to = self.statuses(&[0]).first().cloned().flatten().context("no status of node 1")?.member;
            self.etcdctl_ok(&[2], &["move-leader", &format!("{to:x}")])?;
            notes.push("node 3 led: leadership moved to node 1 first".to_string());
        }
        let fsync = |c: &Self| -> Result<(f64, f64)> {
            let m = c.metrics(2)?;
            Ok((
                histogram_count(&m, "etcd_disk_wal_fsync_duration_seconds", None),
                histogram_count(&m, "etcd_disk_wal_fsync_duration_seconds", Some("0.512")),
            ))
        };
        let (count0, fast0) = fsync(self)?;
        self.phase(phase);
        let t = Instant::now();
        self.throttle_disk(2, Some(SLOW_IOPS))?;
        const ALERTS: [&str; 2] = ["etcdHighFsyncDurations", "etcdHighCommitDurations"];
        let fired = self.alerts_fire(&ALERTS, t);
        if fired.is_none() {
            std::thread::sleep(SLOW_HOLD);
        }
        let held = t.elapsed().as_secs_f64();
        let (count1, fast1) = fsync(self)?;
        // Writes through node 1 go on meanwhile: the leader and node 2 are a quorum.
        let majority = self.etcdctl_ok(&[0], &["put", "--command-timeout=5s", "smoke/drill-slow-disk", "ok"]);
        self.throttle_disk(2, None)?;
        let released = Instant::now();
        self.phase(&format!("{phase}: released"));
        majority.context("a write through node 1 while node 3's disk was slow")?;
        let slow = (count1 - count0) - (fast1 - fast0);
        if slow < 1.0 {
            bail!(
                "{:.0} WAL fsyncs on node 3 in {held:.1} s at {SLOW_IOPS} writes/s, none slower than 0.512 s: the throttle did not hold",
                count1 - count0
            );
        }
        notes.push(format!(
            "{SLOW_IOPS} writes/s on node 3's disk for {held:.1} s: {:.0} of its {:.0} WAL fsyncs took over 0.512 s \
             (etcd_disk_wal_fsync_duration_seconds); a write through node 1 meanwhile accepted",
            slow,
            count1 - count0
        ));
        self.wait_healthy(&[0, 1, 2], Duration::from_secs(60)).context("node 3 did not catch up once released")?;
        notes.push(format!("3/3 healthy {:.1} s after the release", released.elapsed().as_secs_f64()));
        let mut alerts: Vec<Result<String>> = fired.into_iter().collect();
        alerts.extend(self.alerts_resolve(&ALERTS, released));
        self.record_alerts(
            "alerts: a slow disk fires etcdHighFsyncDurations and etcdHighCommitDurations; both resolve",
            t,
            alerts,
        );
        let stats = self.load.as_ref().map(|l| l.phase_stats(phase)).unwrap_or_default();
        notes.push(format!(
            "meanwhile {} requests, {} failed, worst latency {:.0} ms",
            stats.requests, stats.failed, stats.worst_latency_ms
        ));
        notes.push(self.same_hashes()?);
        Ok(notes.join("; "))
    }

    /// A soak (`scenarios/soak.rs`) on a fresh cluster under the load.
    /// Each member on a disk of its own, so that the schedule may slow any of them down.
    pub(super) fn soak_run(&mut self, plan: &crate::smoke::scenarios::soak::SoakPlan) -> Result<()> {
        for i in 0..self.nodes.len() {
            self.own_disk(i, SOAK_DISK_BYTES)?;
        }
        // The load runs through the whole soak, with room for the last heal and the checks.
        let lasts = Duration::from_secs_f64(plan.duration_s) + Duration::from_secs(300);
        let bounds = crate::smoke::workload::load::Bounds { max_requests: lasts.as_secs() * 200, max_duration: lasts };
        if !self.start_cluster_with(bounds)? {
            return Ok(());
        }
        let version = self.etcd_version.clone();
        self.soak(plan, &version)
    }

    /// Fills node 3's disk with a file written as root until ENOSPC, writes large values until
    /// node 3 fails, checks that the others go on, frees the space, restarts node 3 if it
    /// exited, and compares the members' key-value hashes at one revision.
    fn full_disk(&mut self, disk: &Path) -> Result<String> {
        let phase = "drill: node 3's disk full";
        self.phase(phase);
        let (filler, filled) = disk::fill(disk)?;
        let mut notes = vec![format!("{} MiB written beside etcd's data until ENOSPC", filled / (1024 * 1024))];
        // Large writes through node 1 until node 3 fails to store them.
        let gw = Gateway::new(&Identity::in_dir(&self.client), Duration::from_secs(10))?;
        let endpoint = self.client_url(0);
        let big = "d".repeat(512 * 1024);
        let t = Instant::now();
        let mut writes = 0;
        // When node 3 leads, its failure costs an election: the write in flight may time out.
        let Leader { index: lead, member: lead_id, .. } = self.leader()?;
        let failed = loop {
            self.interrupt.check()?;
            let put = gw.put(&endpoint, "smoke/drill-disk", &big);
            writes += 1;
            let health = self.etcdctl(&[2], &["endpoint", "health", "--command-timeout=1s"])?;
            if self.state(2)? != "running" || !health.status.success() {
                break t.elapsed().as_secs_f64();
            }
            put.context("a write through node 1 with node 3's disk full, node 3 still healthy")?;
            if t.elapsed() > SETTLE {
                bail!("{writes} writes of 512 KiB with node 3's disk full, and node 3 is still healthy");
            }
        };
        if lead == 2 {
            // The two others elect a leader of their own before they can take a write.
            let (new, secs) = self.new_leader(&[0, 1], lead_id, Instant::now())?;
            notes.push(format!("node 3 led: new leader {} after {secs:.2} s", self.nodes[new].spec.name));
        }
        // Unhealthy may come first: give etcd time to exit (it does on ENOSPC), bounded.
        let (state, _) = self.poll(
            "node 3 neither exited nor recovered",
            Duration::from_secs(15),
            Duration::from_millis(200),
            |c| Ok(Some(c.state(2)?).filter(|s| s != "running").ok_or_else(|| "running".to_string())),
        )?;
        let log = self.logs(2, &["--tail".into(), "40".into()]).unwrap_or_default();
        let why = log
            .lines()
            .rev()
            .find(|l| l.contains("no space left on device"))
            .map(|l| l.chars().take(240).collect::<String>())
            .unwrap_or_else(|| "(no \"no space left on device\" in its last 40 log lines)".into());
        notes.push(format!(
            "node 3 failed after {writes} writes of 512 KiB ({failed:.1} s): container {state}; its log: {why}"
        ));
        // The majority goes on.
        self.etcdctl_ok(&[0, 1], &["put", "smoke/drill-disk-majority", "ok"])
            .context("a write to the two other members with node 3's disk full")?;
        notes.push("the other two members accept writes".into());
        // Space freed: node 3 started again, healthy, with all the data.
        std::fs::remove_file(&filler).with_context(|| format!("cannot remove {}", filler.display()))?;
        let t = Instant::now();
        self.start(2)?;
        self.phase(&format!("{phase}: freed"));
        self.wait_healthy(&[0, 1, 2], Duration::from_secs(60))
            .context("node 3 did not come back after the space was freed")?;
        notes.push(format!("space freed: 3/3 healthy after {:.2} s", t.elapsed().as_secs_f64()));
        let got =
            self.etcdctl_ok(&[2], &["get", "--consistency=s", "--print-value-only", "smoke/drill-disk-majority"])?;
        if got.trim() != "ok" {
            bail!("node 3 serves {:?} for a key written while its disk was full", got.trim());
        }
        notes.push(self.same_hashes()?);
        Ok(notes.join("; "))
    }

    /// `etcdctl endpoint hashkv` of each member at one revision all have applied: equal hashes
    /// mean the same key-value history, i.e. nothing corrupted.
    fn same_hashes(&self) -> Result<String> {
        let statuses = self.statuses(&[0, 1, 2]);
        let rev = statuses.iter().flatten().map(|s| s.revision).min().context("no member answered its status")?;
        let mut hashes = Vec::new();
        for i in 0..3 {
            let out = self.etcdctl_ok(&[i], &["endpoint", "hashkv", "-w", "json", &format!("--rev={rev}")])?;
            let v: serde_json::Value = serde_json::from_str(&out).context("endpoint hashkv's JSON")?;
            hashes.push(v[0]["HashKV"]["hash"].as_u64().context("no hash in endpoint hashkv's answer")?);
        }
        if hashes.iter().any(|h| *h != hashes[0]) {
            bail!("the members' key-value hashes at revision {rev} differ: {hashes:?}");
        }
        Ok(format!("the three members' key-value hashes at revision {rev} are equal ({})", hashes[0]))
    }

    /// Waits until `among` agree on a leader other than `old`; returns it and the seconds taken.
    fn new_leader(&self, among: &[usize], old: u64, since: Instant) -> Result<(usize, f64)> {
        let (i, _) = self.poll("no new leader", SETTLE, Duration::from_millis(50), |c| {
            let all = c.statuses(among);
            let leaders: BTreeSet<u64> = all.iter().flatten().map(|s| s.leader).collect();
            match leaders.iter().next() {
                Some(&l) if leaders.len() == 1 && l != old && l != 0 && all.iter().all(Option::is_some) => Ok(c
                    .statuses(&[0, 1, 2])
                    .iter()
                    .position(|s| s.as_ref().is_some_and(|s| s.member == l))
                    .ok_or_else(|| "the new leader is unknown".to_string())),
                _ => Ok(Err(format!("leaders seen: {leaders:?}"))),
            }
        })?;
        Ok((i, since.elapsed().as_secs_f64()))
    }

    /// After a fault: rules gone, 3/3 healthy, one leader; the phase's figures.
    fn settle(&self, phase: &str) -> Result<String> {
        let t = Instant::now();
        self.wait_healthy(&[0, 1, 2], SETTLE).context("the cluster did not heal")?;
        let healthy = t.elapsed().as_secs_f64();
        let term = self.leader()?.term;
        let stats = self.load.as_ref().map(|l| l.phase_stats(phase)).unwrap_or_default();
        Ok(format!(
            "3/3 healthy {healthy:.2} s after the heal (term {term}); during the fault {} requests, {} failed, worst \
             latency {:.0} ms",
            stats.requests, stats.failed, stats.worst_latency_ms
        ))
    }

    fn isolate(&mut self, leader: bool) -> Result<String> {
        let Leader { index: lead, term, member: old_id } = self.leader()?;
        let victim = if leader { lead } else { (lead + 1) % 3 };
        let phase = format!("drill: {} cut off", self.nodes[victim].spec.name);
        self.phase(&phase);
        let t = Instant::now();
        let mut notes = vec![format!("{} (the {}) cut off from its peers", self.nodes[victim].spec.name, role(leader))];
        let result = (|| -> Result<()> {
            self.cut_off(victim)?;
            let others: Vec<usize> = (0..3).filter(|o| *o != victim).collect();
            if leader {
                let (new, secs) = self.new_leader(&others, old_id, t)?;
                notes.push(format!("new leader {} after {secs:.2} s", self.nodes[new].spec.name));
                // The cut-off side cannot serve a linearizable read or a write.
                let read =
                    self.etcdctl(&[victim], &["get", "--consistency=l", "--command-timeout=2s", "smoke/drill-probe"])?;
                if read.status.success() {
                    bail!("the cut-off old leader served a linearizable read without a quorum");
                }
                notes.push(format!(
                    "the old leader refuses linearizable reads ({})",
                    String::from_utf8_lossy(&read.stderr).lines().last().unwrap_or_default().trim()
                ));
            } else {
                // The majority keeps its leader and keeps serving.
                let put = self.etcdctl(&others, &["put", "--command-timeout=3s", "smoke/drill-follower-cut", "ok"])?;
                if !put.status.success() {
                    bail!("a write to the majority failed: {}", String::from_utf8_lossy(&put.stderr).trim());
                }
                notes.push("writes to the majority succeed".into());
            }
            let left = FAULT.saturating_sub(t.elapsed());
            std::thread::sleep(left);
            Ok(())
        })();
        let healed = self.heal(victim);
        self.phase(&format!("{phase}: healed"));
        result?;
        healed?;
        notes.push(format!("healed after {:.1} s", t.elapsed().as_secs_f64()));
        notes.push(self.settle(&phase)?);
        let after = self.leader()?.term;
        notes.push(format!("raft term {term} -> {after}"));
        Ok(notes.join("; "))
    }

    fn one_way_loss(&mut self) -> Result<String> {
        let Leader { index: lead, term, .. } = self.leader()?;
        let follower = (lead + 1) % 3;
        let phase = format!("drill: 40% loss {} -> {}", self.nodes[lead].spec.name, self.nodes[follower].spec.name);
        self.phase(&phase);
        let t = Instant::now();
        let result = self.lose(lead, follower, "0.4").map(|_| std::thread::sleep(FAULT));
        let healed = self.heal(follower);
        self.phase(&format!("{phase}: healed"));
        result?;
        healed?;
        let settled = self.settle(&phase)?;
        let Leader { index: now, term: after, .. } = self.leader()?;
        Ok(format!(
            "{:.1} s of 40% loss from leader {} to {}; leader after: {} (raft term {term} -> {after}, {} election(s)); \
             {settled}",
            t.elapsed().as_secs_f64(),
            self.nodes[lead].spec.name,
            self.nodes[follower].spec.name,
            self.nodes[now].spec.name,
            after - term
        ))
    }

    /// The members' heartbeat interval and election timeout in ms (etcd's defaults unless set).
    fn timing(&self) -> (u64, u64) {
        let ms = |key: &str, default: u64| self.nodes[0].env.get(key).and_then(|v| v.parse().ok()).unwrap_or(default);
        (ms("ETCD_HEARTBEAT_INTERVAL", 100), ms("ETCD_ELECTION_TIMEOUT", 1000))
    }

    /// Every packet the leader sends its peers held `ms` milliseconds (netem's delay, made with a
    /// netfilter queue served by `xtask delay-packets` in the leader's namespace), for
    /// [`FAULT`]; the leader changes it caused.
    fn delay(&mut self, ms: u64) -> Result<String> {
        let Leader { index: lead, term, .. } = self.leader()?;
        let phase = format!("drill: {} delayed {ms} ms", self.nodes[lead].spec.name);
        self.phase(&phase);
        let (delayer, lasted) = self.hold_peer_traffic(lead, ms, FAULT)?;
        let lasted = lasted.as_secs_f64();
        self.phase(&format!("{phase}: healed"));
        let summary = delayer.finish()?;
        let settled = self.settle(&phase)?;
        let Leader { index: now, term: after, .. } = self.leader()?;
        Ok(format!(
            "{lasted:.1} s of {ms} ms delay on leader {}'s peer traffic ({summary}); leader after: {} (raft term \
             {term} -> {after}, {} election(s)); {settled}",
            self.nodes[lead].spec.name,
            self.nodes[now].spec.name,
            after - term
        ))
    }

    fn pause_drill(&mut self, leader: bool) -> Result<String> {
        let Leader { index: lead, term, member: old_id } = self.leader()?;
        let victim = if leader { lead } else { (lead + 2) % 3 };
        let phase = format!("drill: {} paused", self.nodes[victim].spec.name);
        self.phase(&phase);
        let t = Instant::now();
        self.pause(victim)?;
        let mut notes = vec![format!("{} (the {}) stopped with SIGSTOP", self.nodes[victim].spec.name, role(leader))];
        let result = (|| -> Result<()> {
            let others: Vec<usize> = (0..3).filter(|o| *o != victim).collect();
            if leader {
                let (new, secs) = self.new_leader(&others, old_id, t)?;
                notes.push(format!("new leader {} after {secs:.2} s", self.nodes[new].spec.name));
            }
            std::thread::sleep(FAULT.saturating_sub(t.elapsed()));
            Ok(())
        })();
        let resumed = self.resume(victim);
        self.phase(&format!("{phase}: resumed"));
        result?;
        resumed?;
        notes.push(format!("resumed after {:.1} s", t.elapsed().as_secs_f64()));
        notes.push(self.settle(&phase)?);
        let after = self.leader()?.term;
        notes.push(format!("raft term {term} -> {after}"));
        Ok(notes.join("; "))
    }

    /// Fills the quota with one key overwritten by 1 MiB values (history that only compaction
    /// frees, the usual cause), checks the alarm, then runs etcd's runbook.
    fn nospace(&mut self) -> Result<String> {
        let phase = "drill: NOSPACE alarm until disarmed";
        self.phase(phase);
        let gw = Gateway::new(&Identity::in_dir(&self.client), Duration::from_secs(10))?;
        let endpoint = self.client_url(0);
        let big = "x".repeat(1024 * 1024);
        let t = Instant::now();
        let mut writes = 0;
        let refusal = loop {
            self.interrupt.check()?;
            match gw.put(&endpoint, "smoke/drill-fill", &big) {
                Ok(_) => writes += 1,
                Err(e) => break format!("{e:#}"),
            }
            if writes > 4 * QUOTA_BYTES / (1024 * 1024) {
                bail!("{writes} writes of 1 MiB and no NOSPACE alarm with a quota of {QUOTA_BYTES} bytes");
            }
        };
        if !refusal.contains("database space exceeded") {
            bail!("after {writes} writes of 1 MiB the write failed, but not with NOSPACE: {refusal}");
        }
        let filled = t.elapsed().as_secs_f64();
        let refused = Instant::now();
        let alarms = self.etcdctl_ok(&[0, 1, 2], &["alarm", "list"])?;
        if !alarms.contains("NOSPACE") {
            bail!("writes are refused but `etcdctl alarm list` shows no NOSPACE: {alarms:?}");
        }
        let small = self.etcdctl(&[0, 1, 2], &["put", "--command-timeout=3s", "smoke/drill-small", "x"])?;
        if small.status.success() {
            bail!("a small write succeeded under the NOSPACE alarm");
        }
        self.etcdctl_ok(&[0, 1, 2], &["get", "--consistency=l", "smoke/before-drills"])
            .context("a linearizable read under the NOSPACE alarm")?;
        let mut notes = vec![format!(
            "{writes} writes of 1 MiB to one key raised NOSPACE after {filled:.1} s (quota {} MiB): \"{}\"; reads served",
            QUOTA_BYTES / (1024 * 1024),
            refusal.rsplit(": ").next().unwrap_or(&refusal)
        )];
        // With Prometheus watching, the alarm stays until its alerts fire (bounded).
        const ALERTS: [&str; 2] = ["etcdNoSpace", "etcdDatabaseQuotaLowSpace"];
        let mut alerts: Vec<Result<String>> = self.alerts_fire(&ALERTS, refused).into_iter().collect();
        // The runbook: compact to the current revision, defragment each member with the leader
        // last, disarm.
        let rt = Instant::now();
        let before = self.statuses(&[0, 1, 2]);
        let revision = before.iter().flatten().map(|s| s.revision).max().context("no member answered its status")?;
        self.etcdctl_ok(&[0, 1, 2], &["compact", &revision.to_string()])?;
        let lead = self.leader()?.index;
        let order: Vec<usize> = (0..3).filter(|i| *i != lead).chain([lead]).collect();
        for i in &order {
            self.etcdctl_ok(&[*i], &["defrag", "--command-timeout=30s"])
                .with_context(|| format!("defragmenting {}", self.nodes[*i].spec.name))?;
        }
        let after = self.statuses(&[0, 1, 2]);
        self.etcdctl_ok(&[0, 1, 2], &["alarm", "disarm"])?;
        let alarms = self.etcdctl_ok(&[0, 1, 2], &["alarm", "list"])?;
        if !alarms.trim().is_empty() {
            bail!("alarms left after disarm: {alarms}");
        }
        self.etcdctl_ok(&[0, 1, 2], &["put", "smoke/drill-after-nospace", "ok"])
            .context("a write after the runbook")?;
        self.phase("drill: after NOSPACE");
        alerts.extend(self.alerts_resolve(&ALERTS, rt));
        self.record_alerts(
            "alerts: NOSPACE fires etcdNoSpace and etcdDatabaseQuotaLowSpace; both resolve",
            refused,
            alerts,
        );
        let sizes = |s: &[Option<Status>]| -> String {
            s.iter()
                .map(|s| s.as_ref().map_or("?".into(), |s| format!("{:.1}", mib(s.db_size))))
                .collect::<Vec<_>>()
                .join("/")
        };
        notes.push(format!(
            "runbook in {:.1} s: compacted at revision {revision}, defragmented {} (leader last), disarmed; database \
             MiB before {} after {}; writes accepted again",
            rt.elapsed().as_secs_f64(),
            order.iter().map(|i| self.nodes[*i].spec.name.as_str()).collect::<Vec<_>>().join(", "),
            sizes(&before),
            sizes(&after)
        ));
        let stats = self.load.as_ref().map(|l| l.phase_stats(phase)).unwrap_or_default();
        notes.push(format!(
            "during the alarm {} requests, {} failed (writes refused), worst latency {:.0} ms",
            stats.requests, stats.failed, stats.worst_latency_ms
        ));
        Ok(notes.join("; "))
    }
}

fn role(leader: bool) -> &'static str {
    if leader {
        "leader"
    } else {
        "follower"
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The observations of histogram `name` in a Prometheus text exposition: all of them, or those
/// no larger than the bucket `le`.
fn histogram_count(metrics: &str, name: &str, le: Option<&str>) -> f64 {
    let bucket = format!("{name}_bucket{{le=\"{}\"}} ", le.unwrap_or("+Inf"));
    metrics.lines().find_map(|l| l.strip_prefix(bucket.as_str())).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}
