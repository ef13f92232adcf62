//! `cargo xtask smoke --scenario disaster`: the two ways back from a lost quorum, under the
//! client load, as `docs/day-2.md`'s runbooks do them (issue 35). First a snapshot taken and
//! shipped the way users do (the image's `etcdctl snapshot save`, `snapshot status`, rsync over
//! ssh to a backup host restricted with rrsync) while writes go on. Then:
//!
//! - the survivor path: two members destroyed with their volumes (writes refused), the leader
//!   (in sync) forced into a one-member cluster (`--force-new-cluster`, once), the others added
//!   back as learners on fresh volumes and promoted; it must lose nothing;
//! - the snapshot path: a new backup under load, writes going on a few seconds, then all three
//!   destroyed; the newest good snapshot fetched from the backup host, checked, restored on all
//!   three with a new cluster token (the same names, addresses and certificates). It loses the
//!   writes acknowledged after the snapshot's revision, and those only.
//!
//! After each: `endpoint hashkv` equal on all members, the restored keys compared with the
//! load's history (`verify/restored.rs`: the store at one revision R), the loss measured (the
//! acknowledged writes after R and the seconds they span) and the RTO (from the decision to
//! restore to 3/3 healthy and a write taken). The load starts a new epoch at each decision, so
//! each stretch of its history is judged for linearizability alone. Bad input is refused with
//! the file or member named and the fix: a truncated snapshot, one of another cluster (by its
//! name) or differing from what was shipped, a restore while a member of that name still runs.
//! In: a fresh podman cluster. Out: the checks, and the figures in the report's timings.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};

use super::day2::HEALTHY_TIMEOUT;
use crate::smoke::engine::cluster::Cluster;
use crate::smoke::engine::cluster_members::{restore_to, SnapshotStatus};
use crate::smoke::engine::Members;
use crate::smoke::scenarios::run::Run;
use crate::smoke::verify::restored;
use crate::smoke::workload::backup_host::{backup_client_key, public_key, BackupHost, Remote};

/// How long writes go on after the second backup before all three members are destroyed.
const WRITES_AFTER_BACKUP: Duration = Duration::from_secs(5);
/// The RTO goal of each path (issue 35).
const RTO_GOAL_S: f64 = 60.0;

/// One backup shipped to the backup host.
struct Backup {
    /// The file's name there (`<cluster>-<node>-<unix seconds>.db`), with
    /// `<name>.status.json` beside it: `snapshot status -w json` when it was taken.
    name: String,
    status: SnapshotStatus,
    bytes: u64,
    take_s: f64,
    check_s: f64,
    ship_s: f64,
}

/// The backup host and how the nodes reach it.
struct OffHost {
    /// Kept running until the scenario ends (dropped: sshd killed).
    _host: BackupHost,
    remote: Remote,
}

impl Run<Cluster> {
    pub(super) fn disaster(&mut self) -> Result<()> {
        if !self.start_cluster()? {
            return Ok(());
        }
        let dir = self.out.join("backup");
        let t = Instant::now();
        let off = match self.backup_host(&dir) {
            Ok(off) => off,
            Err(e) => {
                self.record("backup host: sshd with rrsync on loopback", t, Err(e));
                return Ok(());
            }
        };
        std::thread::sleep(Duration::from_secs(3));
        let mut first = None;
        self.run_check("backup: snapshot saved by the image's etcdctl, checked, shipped with rsync over ssh", |c| {
            let b = c.backup(&off, &dir, 0)?;
            let why = c.describe_backup(&b, "first");
            first = Some(b);
            Ok(why)
        });
        let Some(first) = first else { return Ok(()) };
        self.run_check("bad input: truncated snapshot, another cluster's, a restore while the member runs", |c| {
            c.bad_input(&off, &dir, &first)
        });
        if !self.run_check("survivor path: two members lost, the leader forced into a new cluster, two learners", |c| {
            c.survivor_path()
        }) {
            return Ok(());
        }
        self.run_check("snapshot path: all three lost, the newest good snapshot restored on all three", |c| {
            c.snapshot_path(&off, &dir)
        });
        // The load goes on on the restored cluster before it is judged.
        std::thread::sleep(WRITES_AFTER_BACKUP);
        Ok(())
    }

    /// The backup host (sshd of the run's own on loopback) and node 1's key for it (the PKI's).
    fn backup_host(&self, dir: &Path) -> Result<OffHost> {
        let key = backup_client_key(self.pki(), self.name(0))?;
        let host = BackupHost::start(&dir.join("host"), "127.0.0.1".parse()?, None, None, &[public_key(&key)?])?;
        let remote = Remote::of(&host, &key, &dir.join("known_hosts"))?;
        Ok(OffHost { _host: host, remote })
    }

    /// The documented backup from member `i`: `etcdctl snapshot save` of the image, copied out,
    /// `snapshot status` by the image's etcdctl, and the file with its status shipped with
    /// rsync over ssh; each step timed.
    fn backup(&mut self, off: &OffHost, dir: &Path, i: usize) -> Result<Backup> {
        let stamp = SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let name = format!("{}-{}-{stamp}.db", self.spec.name, self.name(i));
        let file = dir.join("local").join(&name);
        let t = Instant::now();
        self.snapshot_save_in_image(i, &file)?;
        let take_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let status = self.snapshot_status(&file)?;
        let check_s = t.elapsed().as_secs_f64();
        let status_file = dir.join("local").join(format!("{name}.status.json"));
        crate::util::write_atomic(&status_file, status_json(&status).as_bytes(), 0o600)?;
        let t = Instant::now();
        off.remote.push(&[&file, &status_file])?;
        let ship_s = t.elapsed().as_secs_f64();
        let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        Ok(Backup { name, status, bytes, take_s, check_s, ship_s })
    }

    fn describe_backup(&mut self, b: &Backup, which: &str) -> String {
        for (k, v) in [
            ("bytes", b.bytes as f64),
            ("take_s", b.take_s),
            ("check_s", b.check_s),
            ("ship_s", b.ship_s),
            ("revision", b.status.revision as f64),
        ] {
            self.timings.insert(format!("disaster_{which}_backup_{k}"), v);
        }
        format!(
            "{} ({} bytes, revision {}, {} keys, hash {:x}): taken in {:.2} s, checked in {:.2} s, shipped in {:.2} s; \
             writes go on",
            b.name, b.bytes, b.status.revision, b.status.total_keys, b.status.hash, b.take_s, b.check_s, b.ship_s
        )
    }

    /// The runbook's checks before a restore, on the file `snap` fetched from the backup host:
    /// its name says it is of this cluster, `snapshot status` reads it, and it is what was
    /// shipped (the status recorded beside it then).
    fn check_snapshot(&self, snap: &Path, recorded: &Path) -> Result<SnapshotStatus> {
        let name = snap.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let mine = format!("{}-", self.spec.name);
        if !name.starts_with(&mine) {
            bail!(
                "{}: not a snapshot of cluster {} (its name does not start with {mine}): restore only {mine}*.db \
                 from this cluster's backups",
                snap.display(),
                self.spec.name
            );
        }
        let bytes = std::fs::read(snap).with_context(|| format!("cannot read {}", snap.display()))?;
        if !restored::checksum_matches(&bytes) {
            bail!(
                "{}: it does not end with the SHA-256 etcdctl appended to it: truncated or damaged; take the previous \
                 good snapshot",
                snap.display()
            );
        }
        let status = self.snapshot_status(snap)?;
        let text = std::fs::read_to_string(recorded)
            .with_context(|| format!("{}: no status recorded when it was shipped", recorded.display()))?;
        if text.trim() != status_json(&status).trim() {
            bail!(
                "{}: its status ({}) is not the one recorded when it was shipped ({}): it was replaced or damaged; take \
                 the previous good snapshot",
                snap.display(),
                status_json(&status).trim(),
                text.trim()
            );
        }
        Ok(status)
    }

    /// A truncated snapshot, one of another cluster and one that differs from what was shipped
    /// are refused before anything is restored, naming the file; a restore while the member of
    /// that name still runs is refused naming it, and the member keeps serving.
    fn bad_input(&mut self, off: &OffHost, dir: &Path, good: &Backup) -> Result<String> {
        let bad = dir.join("bad");
        let fetched = off.remote.pull(&good.name, &bad)?;
        let recorded = off.remote.pull(&format!("{}.status.json", good.name), &bad)?;
        let mut notes = Vec::new();
        // Truncated: half the file.
        let truncated = bad.join(format!("{}-truncated.db", self.spec.name));
        let bytes = std::fs::read(&fetched).with_context(|| format!("cannot read {}", fetched.display()))?;
        std::fs::write(&truncated, &bytes[..bytes.len() / 2])
            .with_context(|| format!("cannot write {}", truncated.display()))?;
        let e = match self.check_snapshot(&truncated, &recorded) {
            Ok(_) => bail!("a truncated snapshot passed the check"),
            Err(e) => format!("{e:#}"),
        };
        if !e.contains(&truncated.display().to_string()) {
            bail!("the truncated snapshot's error does not name the file: {e}");
        }
        let scratch = bad.join("restore-truncated");
        let env = self.nodes[0].env.clone();
        match restore_to(&self.etcdctl, &truncated, &scratch, self.name(0), &env) {
            Ok(()) => bail!("etcdctl snapshot restore took a truncated snapshot"),
            Err(_) if scratch.exists() => bail!("a failed restore left {}", scratch.display()),
            Err(_) => {}
        }
        notes.push(format!("truncated: {}", first_line(&e)));
        // Another cluster's: named for it.
        let other = bad.join(format!("other-{}", good.name));
        std::fs::copy(&fetched, &other).with_context(|| format!("cannot write {}", other.display()))?;
        let e = match self.check_snapshot(&other, &recorded) {
            Ok(_) => bail!("another cluster's snapshot passed the check"),
            Err(e) => format!("{e:#}"),
        };
        notes.push(format!("another cluster's: {}", first_line(&e)));
        // This cluster's name, not what was shipped (another status recorded).
        let swapped = bad.join("swapped.status.json");
        let mut other_status = good.status.clone();
        other_status.hash ^= 1;
        crate::util::write_atomic(&swapped, status_json(&other_status).as_bytes(), 0o600)?;
        let e = match self.check_snapshot(&fetched, &swapped) {
            Ok(_) => bail!("a snapshot that differs from what was shipped passed the check"),
            Err(e) => format!("{e:#}"),
        };
        notes.push(format!("not what was shipped: {}", first_line(&e)));
        // A restore while the member runs.
        let e = match self.restore_member(0, &fetched, "never-used") {
            Ok(()) => bail!("a restore of {} was started while it ran", self.name(0)),
            Err(e) => format!("{e:#}"),
        };
        if !e.contains(&self.nodes[0].container) {
            bail!("the refusal does not name the container: {e}");
        }
        self.wait_healthy(&[0, 1, 2], HEALTHY_TIMEOUT).context("after the refused restore")?;
        notes.push(format!("restore while running: {}", first_line(&e)));
        Ok(notes.join("; ") + "; the cluster kept serving")
    }

    /// The survivor path, with the leader as the survivor.
    fn survivor_path(&mut self) -> Result<String> {
        let s = self.leader()?.index;
        let lost: Vec<usize> = (0..3).filter(|i| *i != s).collect();
        let old_ids: Vec<u64> = self.members(&[s])?.iter().filter_map(|m| m["ID"].as_u64()).collect();
        self.phase("survivor path: two members lost");
        for i in &lost {
            self.destroy(*i)?;
        }
        let out = self.etcdctl(&[s], &["put", "--command-timeout=3s", "smoke/two-lost", "unknown"])?;
        if out.status.success() {
            bail!("a write with two of three members lost succeeded");
        }
        let refused = String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default().trim().to_string();
        // The survivor's revision: it cannot commit anything more; what it had applied is R.
        let r = self.stable_revision(s)?;
        // The decision to restore.
        let t = Instant::now();
        let before = self.load.as_ref().map(|l| l.current_epoch()).unwrap_or(0);
        if let Some(l) = &self.load {
            l.epoch("between: after the survivor path");
        }
        self.phase("survivor path: restore");
        let survivor = self.name(s).to_string();
        let mut env = self.nodes[s].env.clone();
        env.insert("ETCD_FORCE_NEW_CLUSTER".into(), "true".into());
        self.recreate(s, env, None)?;
        self.wait_healthy(&[s], HEALTHY_TIMEOUT).with_context(|| format!("{survivor} after --force-new-cluster"))?;
        let forced_s = t.elapsed().as_secs_f64();
        // Once only: started again with the flag, it would drop the members added since.
        let mut env = self.nodes[s].env.clone();
        env.remove("ETCD_FORCE_NEW_CLUSTER");
        self.recreate(s, env, None)?;
        self.wait_healthy(&[s], HEALTHY_TIMEOUT).with_context(|| format!("{survivor} restarted without the flag"))?;
        let mut notes = vec![format!(
            "{survivor} (the leader) survives; writes refused with two lost ({refused}); forced into a one-member \
             cluster at revision {r} in {forced_s:.1} s"
        )];
        let mut voting = vec![s];
        for i in lost {
            let (id, tries) = self.add_member_back(i, &voting)?;
            notes.push(format!("{} added back as learner {id}, promoted after {tries} tries", self.name(i)));
            voting.push(i);
        }
        self.wait_healthy(&[0, 1, 2], HEALTHY_TIMEOUT)?;
        self.put_soon("smoke/after-survivor", "ok", 15)?;
        let rto = t.elapsed().as_secs_f64();
        self.phase("after the survivor path");
        let failed = self.load.as_ref().map(|l| l.phase_stats("survivor path: restore").failed).unwrap_or(0);
        let members = self.members(&[0, 1, 2])?;
        let new_ids: Vec<u64> = members.iter().filter_map(|m| m["ID"].as_u64()).collect();
        let started = members.iter().filter(|m| m["isLearner"].as_bool() != Some(true) && m["name"] != "").count();
        if members.len() != 3 || started != 3 {
            bail!("after the survivor path: {} members, {started} started voting ones: {members:?}", members.len());
        }
        let changed = new_ids.iter().filter(|id| !old_ids.contains(id)).count();
        notes.push(format!("3 voting members, {changed} with new IDs"));
        notes.push(self.hashkv_equal()?);
        let loss = self.judge_restore(before, r)?;
        if loss.lost > 0 {
            bail!("the survivor was the leader, in sync, yet {} acknowledged writes are lost", loss.lost);
        }
        notes.push(loss.summary(r));
        self.record_rto("survivor", rto, &loss, failed);
        notes.push(format!("RTO {rto:.1} s (goal {RTO_GOAL_S} s); {failed} requests failed during the restore"));
        if rto > RTO_GOAL_S {
            bail!("RTO {rto:.1} s above the goal of {RTO_GOAL_S} s: {}", notes.join("; "));
        }
        Ok(notes.join("; "))
    }

    /// The snapshot path: a new backup under load, writes going on, all three lost, the newest
    /// good snapshot from the backup host restored on all three with a new token.
    fn snapshot_path(&mut self, off: &OffHost, dir: &Path) -> Result<String> {
        self.phase("snapshot path: backup");
        let leader = self.leader()?.index;
        let b = self.backup(off, dir, leader)?;
        let mut notes = vec![self.describe_backup(&b, "second")];
        std::thread::sleep(WRITES_AFTER_BACKUP);
        self.phase("snapshot path: all three lost");
        for i in 0..3 {
            self.destroy(i)?;
        }
        // The decision to restore.
        let t = Instant::now();
        let epochs = self.load.as_ref().map(|l| l.current_epoch() + 1).unwrap_or(0);
        if let Some(l) = &self.load {
            l.epoch("after: restored from the snapshot");
        }
        self.phase("snapshot path: restore");
        let fetched = dir.join("fetched");
        let (snap, status) = self.newest_good(off, &fetched)?;
        let fetch_s = t.elapsed().as_secs_f64();
        let stamp = SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let token = format!("{}-restored-{stamp}", self.spec.name);
        for i in 0..3 {
            self.restore_member(i, &snap, &token)?;
        }
        self.wait_healthy(&[0, 1, 2], HEALTHY_TIMEOUT).context("after the restore")?;
        self.put_soon("smoke/after-snapshot", "ok", 15)?;
        let rto = t.elapsed().as_secs_f64();
        self.phase("after the snapshot path");
        let failed = self.load.as_ref().map(|l| l.phase_stats("snapshot path: restore").failed).unwrap_or(0);
        let r = status.revision;
        notes.push(format!(
            "{} fetched and checked in {fetch_s:.1} s (revision {r}); restored on all three with token {token}",
            file_name(&snap)
        ));
        let members = self.members(&[0, 1, 2])?;
        if members.len() != 3 || members.iter().any(|m| m["isLearner"].as_bool() == Some(true)) {
            bail!("after the restore: {members:?}");
        }
        notes.push(self.hashkv_equal()?);
        // Every epoch before the disaster held to the snapshot's revision.
        let lost = self.judge_epochs(epochs, r, &mut notes)?;
        self.record_rto("snapshot", rto, &lost, failed);
        notes.push(format!(
            "lost {} acknowledged writes over {:.1} s (after the snapshot's revision: while it was checked and \
             shipped, the {} s after, until the members were destroyed); RTO {rto:.1} s (goal {RTO_GOAL_S} \
             s); {failed} requests failed during the restore; clients see new member IDs and the revision back at {r}",
            lost.lost,
            lost.span_s(),
            WRITES_AFTER_BACKUP.as_secs()
        ));
        if rto > RTO_GOAL_S {
            bail!("RTO {rto:.1} s above the goal of {RTO_GOAL_S} s: {}", notes.join("; "));
        }
        Ok(notes.join("; "))
    }

    /// The newest snapshot of this cluster on the backup host that passes the checks, fetched
    /// into `dest`; older ones are tried when a newer one fails (each failure named).
    fn newest_good(&self, off: &OffHost, dest: &Path) -> Result<(PathBuf, SnapshotStatus)> {
        let mut names: Vec<String> = off
            .remote
            .list()?
            .into_iter()
            .filter(|n| n.starts_with(&format!("{}-", self.spec.name)) && n.ends_with(".db"))
            .collect();
        names.sort_by_key(|n| {
            std::cmp::Reverse(n.rsplit('-').next().and_then(|s| s.trim_end_matches(".db").parse::<u64>().ok()))
        });
        let mut refused = Vec::new();
        for name in names {
            let snap = off.remote.pull(&name, dest)?;
            let recorded = off.remote.pull(&format!("{name}.status.json"), dest)?;
            match self.check_snapshot(&snap, &recorded) {
                Ok(status) => return Ok((snap, status)),
                Err(e) => refused.push(format!("{e:#}")),
            }
        }
        bail!("no good snapshot of cluster {} on the backup host: {}", self.spec.name, refused.join("; "))
    }
}

/// `snapshot status -w json`'s fields, as recorded beside a shipped snapshot.
fn status_json(s: &SnapshotStatus) -> String {
    serde_json::json!({"hash": s.hash, "revision": s.revision, "totalKey": s.total_keys, "totalSize": s.total_size})
        .to_string()
        + "\n"
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
}
